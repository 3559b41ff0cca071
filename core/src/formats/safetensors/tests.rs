use super::*;
use crate::tensor::HostData;
use half::{bf16, f16};
use std::sync::Arc;

/// A file with the given raw header JSON and `data_len` zero bytes of data.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

fn kind(r: Result<SafeTensors>) -> FileError {
    match r {
        Err(Error::File { file, kind }) => {
            assert_eq!(file, "t.safetensors");
            kind
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

fn open_raw(header: &str, data_len: usize) -> Result<SafeTensors> {
    SafeTensors::from_bytes("t.safetensors", raw(header, data_len))
}

fn sample() -> Vec<(String, TensorData)> {
    let f = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
    vec![
        ("a.f32".into(), TensorData::f32(&[2, 3], f.to_vec()).unwrap()),
        ("b.f16".into(), TensorData::new(&[3], HostData::F16(f[..3].iter().map(|&x| f16::from_f32(x)).collect())).unwrap()),
        ("c.bf16".into(), TensorData::new(&[1, 2], HostData::BF16(vec![bf16::from_f32(1.0), bf16::from_f32(-3.0)])).unwrap()),
        ("d.u32".into(), TensorData::u32(&[4], vec![0, 1, u32::MAX, 7]).unwrap()),
        ("e.i32".into(), TensorData::new(&[2, 1, 1, 1], HostData::I32(vec![-5, 9])).unwrap()),
        ("scalar".into(), TensorData::f32(&[], vec![42.0]).unwrap()),
        ("empty".into(), TensorData::f32(&[0, 3], vec![]).unwrap()),
    ]
}

#[test]
fn round_trip_every_dtype_and_metadata() {
    let s = sample();
    let list: Vec<(&str, &TensorData)> = s.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = serialize(&list, Some(&meta)).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(header_len % 8, 0, "data section must start 8-byte aligned");
    let st = SafeTensors::from_bytes("mem", bytes).unwrap();
    assert_eq!(st.names(), s.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "file order = write order");
    for (name, t) in &s {
        assert_eq!(&st.tensor(name).unwrap(), t, "{name}");
    }
    assert_eq!(st.metadata(), &meta);
    assert_eq!(st.info("a.f32").unwrap().bytes, 24);
    assert!(matches!(st.tensor("nope"), Err(Error::File { kind: FileError::MissingTensor(n), .. }) if n == "nope"));
}

#[test]
fn reference_crate_reads_our_files_and_we_read_its() {
    let s = sample();
    let list: Vec<(&str, &TensorData)> = s.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let ours = serialize(&list, None).unwrap();
    let theirs = ::safetensors::SafeTensors::deserialize(&ours).unwrap();
    let view = theirs.tensor("a.f32").unwrap();
    assert_eq!((view.shape(), view.data()), (&[2usize, 3][..], s[0].1.data().as_bytes()));

    // The reference writer, with an I64 tensor we cannot compute in.
    let ids: Vec<u8> = [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let w: Vec<u8> = [0.5f32, 1.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = [
        ("position_ids", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::I64, vec![1, 3], &ids).unwrap()),
        ("w", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![2], &w).unwrap()),
    ];
    let file = ::safetensors::serialize(views, &None).unwrap();
    let st = SafeTensors::from_bytes("ref", file).unwrap();
    assert_eq!(st.info("position_ids").unwrap().dtype, "I64");
    assert_eq!(st.bytes("position_ids").unwrap(), &ids[..]);
    assert!(matches!(
        st.tensor("position_ids"),
        Err(Error::File { kind: FileError::UnsupportedDType { ref tensor, ref dtype }, .. }) if tensor == "position_ids" && dtype == "I64"
    ));
    assert_eq!(st.tensor("w").unwrap().as_f32().unwrap(), &[0.5, 1.5]);
}

#[test]
fn header_defects_are_typed() {
    assert!(matches!(kind(SafeTensors::from_bytes("t.safetensors", vec![1, 2, 3])), FileError::Truncated(_)));
    let mut huge = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(matches!(kind(SafeTensors::from_bytes("t.safetensors", huge)), FileError::HeaderTooLarge { .. }));
    let mut beyond = 1000u64.to_le_bytes().to_vec();
    beyond.extend_from_slice(b"{}");
    assert_eq!(kind(SafeTensors::from_bytes("t.safetensors", beyond)), FileError::HeaderBeyondFile { len: 1000, file_size: 10 });
    assert!(matches!(kind(open_raw("not json", 0)), FileError::BadHeader(_)));
    assert!(matches!(kind(open_raw("[1, 2]", 0)), FileError::BadHeader(_)));
    assert!(matches!(kind(open_raw(r#"{"__metadata__": {"a": 1}}"#, 0)), FileError::BadHeader(_)));
    let no_shape = kind(open_raw(r#"{"x": {"dtype": "F32", "data_offsets": [0, 4]}}"#, 4));
    assert!(matches!(no_shape, FileError::BadHeader(ref m) if m.contains("'x'")), "{no_shape:?}");
    let neg = kind(open_raw(r#"{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, 4));
    assert!(matches!(neg, FileError::BadHeader(_)));
}

#[test]
fn entry_defects_are_typed() {
    let e = |h: &str, n| kind(open_raw(h, n));
    assert_eq!(
        e(r#"{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, 4),
        FileError::OffsetsOutOfRange { tensor: "x".into(), start: 0, end: 8, data_len: 4 }
    );
    assert!(matches!(e(r#"{"x": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}"#, 4), FileError::OffsetsOutOfRange { .. }));
    assert!(matches!(
        e(r#"{"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, 8),
        FileError::ByteLength { expected: 12, got: 8, .. }
    ));
    assert!(matches!(
        e(r#"{"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}"#, 4),
        FileError::AbsurdShape { .. }
    ));
    assert!(matches!(e(r#"{"x": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}"#, 4), FileError::AbsurdShape { .. }));
    let overlap = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#;
    assert_eq!(e(overlap, 12), FileError::Overlap { a: "a".into(), b: "b".into() });
    // A long tensor covering a short one further on is found too.
    let covering = r#"{"a": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
                       "b": {"dtype": "U8", "shape": [1], "data_offsets": [5, 6]},
                       "c": {"dtype": "U8", "shape": [1], "data_offsets": [7, 8]}}"#;
    assert!(matches!(e(covering, 10), FileError::Overlap { .. }));
}

#[test]
fn empty_tensors_gaps_and_odd_shapes_are_accepted() {
    let h = r#"{"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "five": {"dtype": "U8", "shape": [1,1,1,1,2], "data_offsets": [6, 8]},
                "f4": {"dtype": "F4", "shape": [4], "data_offsets": [8, 10]}}"#;
    let st = open_raw(h, 10).unwrap();
    assert_eq!(st.names(), ["b", "a", "five", "f4"]);
    assert_eq!(st.total_bytes(), 8);
    assert!(matches!(st.tensor("f4"), Err(Error::File { kind: FileError::UnsupportedDType { .. }, .. })));
    let rank5 = r#"{"x": {"dtype": "F32", "shape": [1,1,1,1,1], "data_offsets": [0, 4]}}"#;
    let st = open_raw(rank5, 4).unwrap();
    assert!(matches!(st.tensor("x"), Err(Error::File { kind: FileError::AbsurdShape { .. }, .. })));
}

#[test]
fn writer_refuses_duplicate_and_reserved_names() {
    let t = TensorData::f32(&[1], vec![1.0]).unwrap();
    assert!(matches!(serialize(&[("x", &t), ("x", &t)], None), Err(Error::InvalidParam { .. })));
    assert!(matches!(serialize(&[("__metadata__", &t)], None), Err(Error::InvalidParam { .. })));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn write_then_open_mapped() {
    let dir = std::env::temp_dir().join(format!("taskloom-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let t = TensorData::f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    write(&path, &[("w", &t)], None).unwrap();
    let st = SafeTensors::open(&path).unwrap();
    assert_eq!(st.tensor("w").unwrap(), t);
    assert!(st.metadata().is_empty());
    std::fs::write(&path, [0u8; 3]).unwrap();
    assert!(matches!(SafeTensors::open(&path), Err(Error::File { kind: FileError::Truncated(_), .. })));
    assert!(matches!(SafeTensors::open(&dir), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A [`RangeRead`] over bytes that records every read (start, length).
struct Counting {
    bytes: Vec<u8>,
    reads: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl Counting {
    fn new(bytes: Vec<u8>) -> Arc<Counting> {
        Arc::new(Counting { bytes, reads: Default::default() })
    }
    fn reads(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

impl RangeRead for Counting {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, start: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.reads.lock().unwrap().push((start, out.len()));
        self.bytes.read_at(start, out)
    }
}

fn ranged(bytes: Vec<u8>) -> Result<SafeTensors> {
    SafeTensors::from_reader("t.safetensors", Arc::new(bytes))
}

#[test]
fn ranged_reader_reads_the_header_then_one_tensor_at_a_time() {
    let s = sample();
    let list: Vec<(&str, &TensorData)> = s.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = serialize(&list, Some(&meta)).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let whole = SafeTensors::from_bytes("mem", bytes.clone()).unwrap();
    let src = Counting::new(bytes);
    let st = SafeTensors::from_reader("mem", src.clone()).unwrap();
    // Opening read the length prefix and the header, nothing of the data.
    assert!(src.reads().iter().all(|&(s, n)| s + n as u64 <= header_end));
    assert_eq!(st.names(), whole.names());
    assert_eq!(st.tensors(), whole.tensors());
    assert_eq!(st.metadata(), whole.metadata());
    assert_eq!(st.total_bytes(), whole.total_bytes());
    for (name, t) in &s {
        assert_eq!(&st.tensor(name).unwrap(), t, "{name}");
        assert_eq!(st.bytes(name).unwrap(), whole.bytes(name).unwrap(), "{name}");
        assert!(st.in_memory(name).unwrap().is_none());
        // Each tensor is exactly one read of its own bytes (the empty one may be none).
        let info = st.info(name).unwrap();
        let reads = src.reads();
        assert!(reads.iter().all(|&(_, n)| n as u64 == info.bytes), "{name}: {reads:?}");
        assert!(!reads.is_empty() || info.bytes == 0, "{name}");
    }
    assert!(matches!(st.tensor("nope"), Err(Error::File { kind: FileError::MissingTensor(n), .. }) if n == "nope"));
}

#[test]
fn ranged_header_defects_are_the_same_typed_errors() {
    let mut files = vec![vec![], vec![1, 2, 3], (MAX_HEADER_LEN + 1).to_le_bytes().to_vec(), 1000u64.to_le_bytes().to_vec()];
    files[2].extend_from_slice(b"{}");
    files[3].extend_from_slice(b"{}");
    for (h, n) in [
        ("not json", 0),
        (r#"{"__metadata__": {"a": 1}}"#, 0),
        (r#"{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, 4),
        (r#"{"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, 8),
        (r#"{"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}"#, 4),
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, 12),
    ] {
        files.push(raw(h, n));
    }
    // A valid file cut short anywhere: in the prefix, the header or the data.
    let t = TensorData::f32(&[4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let good = serialize(&[("w", &t)], None).unwrap();
    for cut in [4, 12, good.len() - 20, good.len() - 1] {
        files.push(good[..cut].to_vec());
    }
    for f in files {
        let want = kind(SafeTensors::from_bytes("t.safetensors", f.clone()));
        let src = Counting::new(f.clone());
        let got = kind(SafeTensors::from_reader("t.safetensors", src.clone()));
        assert_eq!(got, want, "{f:?}");
        // A lying length is never followed: nothing past the file, nothing past the cap.
        assert!(src.reads().iter().all(|&(s, n)| s + n as u64 <= (f.len() as u64).min(8 + MAX_HEADER_LEN)));
    }
    assert_eq!(kind(ranged(1000u64.to_le_bytes().to_vec())), FileError::HeaderBeyondFile { len: 1000, file_size: 8 });
}

#[test]
fn ranged_read_failures_name_the_file() {
    /// Claims more bytes than it can give (a buffer detached on the JS side).
    struct Gone;
    impl RangeRead for Gone {
        fn len(&self) -> u64 {
            100
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "detached"))
        }
    }
    match SafeTensors::from_reader("gone.safetensors", Arc::new(Gone)) {
        Err(Error::Io { path, .. }) => assert_eq!(path, "gone.safetensors"),
        other => panic!("expected an IO error, got {other:?}"),
    }
}
