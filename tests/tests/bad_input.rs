//! Malformed safetensors files: each defect is a typed `Error::File` with the exact `FileError`
//! variant, a message naming the file (and the tensor where one is involved), and never a panic.

use taskloom::formats::safetensors::{self, SafeTensors, MAX_HEADER_LEN};
use taskloom::{Error, FileError, TensorData};

const NAME: &str = "case.safetensors";

/// `len` as the 8-byte prefix, then `header`, then `data_len` zero bytes.
fn file_with_len(len: u64, header: &[u8], data_len: usize) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.resize(v.len() + data_len, 0);
    v
}

fn file(header: &str, data_len: usize) -> Vec<u8> {
    file_with_len(header.len() as u64, header.as_bytes(), data_len)
}

/// The FileError, after checking the rest of the contract: the file is named in the struct and in
/// the message, every `must_name` (tensor names) is in the message, and the code is BAD_INPUT.
fn file_error(bytes: Vec<u8>, must_name: &[&str]) -> FileError {
    let err = SafeTensors::from_bytes(NAME, bytes).expect_err("a malformed file must be refused");
    let msg = err.to_string();
    assert_eq!(err.code(), "BAD_INPUT", "{msg}");
    assert!(msg.starts_with(NAME), "message must name the file: {msg}");
    for n in must_name {
        assert!(msg.contains(&format!("'{n}'")), "message must name tensor '{n}': {msg}");
    }
    match err {
        Error::File { file, kind } => {
            assert_eq!(file, NAME);
            kind
        }
        other => panic!("expected Error::File, got {other:?}"),
    }
}

#[test]
fn truncated_file() {
    let k = file_error(vec![0x10, 0, 0], &[]);
    assert!(matches!(k, FileError::Truncated(_)), "{k:?}");
    assert!(matches!(file_error(Vec::new(), &[]), FileError::Truncated(_)));
}

#[test]
fn header_length_beyond_file() {
    assert_eq!(file_error(file_with_len(100, b"{}", 8), &[]), FileError::HeaderBeyondFile { len: 100, file_size: 18 });
    // A length that would overflow `8 + len` is caught by the cap first, not by arithmetic.
    assert!(matches!(file_error(file_with_len(u64::MAX, b"{}", 0), &[]), FileError::HeaderTooLarge { .. }));
}

#[test]
fn header_too_large() {
    let len = MAX_HEADER_LEN + 1;
    assert_eq!(file_error(file_with_len(len, b"{}", 0), &[]), FileError::HeaderTooLarge { len, cap: 100_000_000 });
}

#[test]
fn non_json_header() {
    assert!(matches!(file_error(file("this is not json", 0), &[]), FileError::BadHeader(_)));
    assert!(matches!(file_error(file_with_len(4, &[0xff, 0xfe, b'{', b'}'], 0), &[]), FileError::BadHeader(_)));
    assert!(matches!(file_error(file(r#"["a list"]"#, 0), &[]), FileError::BadHeader(_)));
    let k = file_error(file(r#"{"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}"#, 8), &["w"]);
    assert!(matches!(k, FileError::BadHeader(_)), "{k:?}");
}

#[test]
fn offsets_out_of_range() {
    let h = r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}"#;
    assert_eq!(
        file_error(file(h, 16), &["w"]),
        FileError::OffsetsOutOfRange { tensor: "w".into(), start: 8, end: 24, data_len: 16 }
    );
    let reversed = r#"{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}"#;
    assert!(matches!(file_error(file(reversed, 16), &["w"]), FileError::OffsetsOutOfRange { .. }));
}

#[test]
fn overlapping_offsets() {
    let h = r#"{"q": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "k": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}}"#;
    assert_eq!(file_error(file(h, 28), &["q", "k"]), FileError::Overlap { a: "q".into(), b: "k".into() });
}

#[test]
fn dtype_byte_length_mismatch() {
    // Three F16 values are 6 bytes, the offsets claim 8.
    let h = r#"{"h": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}}"#;
    let k = file_error(file(h, 8), &["h"]);
    assert_eq!(k, FileError::ByteLength { tensor: "h".into(), shape: vec![3], dtype: "F16".into(), expected: 6, got: 8 });
}

#[test]
fn absurd_shape() {
    // 2^32 x 2^32 elements: a product above 2^40, refused before any size arithmetic.
    let h = r#"{"big": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}"#;
    assert!(matches!(file_error(file(h, 4), &["big"]), FileError::AbsurdShape { ref tensor, .. } if tensor == "big"));
    // A product that overflows u64.
    let h = r#"{"wrap": {"dtype": "U8", "shape": [18446744073709551615, 2], "data_offsets": [0, 2]}}"#;
    assert!(matches!(file_error(file(h, 2), &["wrap"]), FileError::AbsurdShape { .. }));
    // Rank 5 is a real shape the runtime cannot use: listed, refused on load.
    let h = r#"{"r5": {"dtype": "F32", "shape": [1, 1, 1, 1, 2], "data_offsets": [0, 8]}}"#;
    let st = SafeTensors::from_bytes(NAME, file(h, 8)).expect("rank 5 is listed");
    let err = st.tensor("r5").expect_err("rank 5 does not load");
    assert!(matches!(err, Error::File { kind: FileError::AbsurdShape { .. }, .. }), "{err:?}");
    assert!(err.to_string().contains("'r5'"));
}

#[test]
fn unsupported_dtypes_are_listed_and_skipped() {
    let h = r#"{"__metadata__": {"format": "pt"},
                "position_ids": {"dtype": "I64", "shape": [1, 2], "data_offsets": [0, 16]},
                "mask": {"dtype": "BOOL", "shape": [3], "data_offsets": [16, 19]},
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
                "d": {"dtype": "F64", "shape": [1], "data_offsets": [32, 40]}}"#;
    let st = SafeTensors::from_bytes(NAME, file(h, 40)).expect("unsupported dtypes do not fail the file");
    assert_eq!(st.names(), ["position_ids", "mask", "w", "d"]);
    assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(st.tensor("w").expect("F32 loads").as_f32().expect("f32"), &[0.0, 0.0]);
    for (name, dtype) in [("position_ids", "I64"), ("mask", "BOOL"), ("d", "F64")] {
        let err = st.tensor(name).expect_err("unsupported dtype");
        assert!(err.to_string().contains(&format!("'{name}'")) && err.to_string().contains(NAME), "{err}");
        match err {
            Error::File { kind: FileError::UnsupportedDType { tensor, dtype: d }, .. } => assert_eq!((tensor.as_str(), d.as_str()), (name, dtype)),
            other => panic!("{name}: expected UnsupportedDType, got {other:?}"),
        }
        assert_eq!(st.info(name).expect("listed").dtype, dtype);
        assert!(st.bytes(name).is_ok(), "raw bytes stay readable");
    }
    let missing = st.tensor("nope").expect_err("missing");
    assert!(matches!(missing, Error::File { kind: FileError::MissingTensor(ref n), .. } if n == "nope"));
}

#[test]
fn errors_from_open_name_the_path() {
    let dir = std::env::temp_dir().join(format!("taskloom-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("short.safetensors");
    std::fs::write(&path, [1u8, 2]).expect("write");
    let err = SafeTensors::open(&path).expect_err("truncated");
    assert!(err.to_string().contains("short.safetensors"), "{err}");
    let missing = SafeTensors::open(dir.join("absent.safetensors")).expect_err("absent");
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("absent.safetensors"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every prefix of a valid file, and every single-byte corruption of its header, gives Ok or a
/// typed error: the reader never panics, whatever the bytes.
#[test]
fn no_panic_on_any_truncation_or_header_corruption() {
    let w = TensorData::f32(&[2, 3], vec![1.0; 6]).expect("tensor");
    let ids = TensorData::u32(&[4], vec![1, 2, 3, 4]).expect("tensor");
    let good = safetensors::serialize(&[("w", &w), ("ids", &ids)], None).expect("serialize");
    for len in 0..good.len() {
        if let Ok(st) = SafeTensors::from_bytes(NAME, good[..len].to_vec()) {
            for n in st.names() {
                let _ = st.tensor(n);
            }
        }
    }
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    for i in 0..header_end {
        for byte in [b'0', b'9', b'"', b'}', b'-', 0xff] {
            let mut bad = good.clone();
            bad[i] = byte;
            if let Ok(st) = SafeTensors::from_bytes(NAME, bad) {
                for n in st.names() {
                    let _ = st.tensor(n);
                }
            }
        }
    }
}
