//! Writing a model folder with adapters fused in (`taskloom lora fuse`): the source folder's
//! files copied, and its safetensors rewritten with the fused tensors replaced (in the source
//! tensor's dtype). Tensors the runtime does not load (integer buffers) are copied byte for byte.

use crate::error::{Error, Result};
use crate::formats::safetensors::{write_raw, RawTensor, SafeTensors};
use crate::tensor::TensorData;
use std::collections::BTreeMap;
use std::path::Path;

fn io(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: p.display().to_string(), source }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let p = e.path();
        let q = dst.join(e.file_name());
        if p.is_dir() {
            // sentence-transformers module folders ("1_Pooling", "2_Normalize"); not other folders
            // (adapters kept beside a model, caches).
            let name = e.file_name().to_string_lossy().into_owned();
            if name.split_once('_').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
                copy_tree(&p, &q)?;
            }
        } else if p.extension().is_none_or(|x| x != "safetensors") {
            std::fs::copy(&p, &q).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Copies `src` to `out` with `replace` (tensor name → new value) applied to its safetensors.
/// Every name in `replace` must exist in the source. Returns the number of tensors replaced.
pub fn write_folder(src: &Path, out: &Path, replace: &BTreeMap<String, TensorData>) -> Result<usize> {
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(src).ok() {
        return Err(Error::InvalidParam { op: "lora fuse", reason: "the output folder must differ from the model folder".into() });
    }
    copy_tree(src, out)?;
    let mut shards: Vec<_> = std::fs::read_dir(src)
        .map_err(io(src))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    let mut done = 0;
    for p in &shards {
        let st = SafeTensors::open(p)?;
        let mut owned: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
        for info in st.tensors() {
            match replace.get(&info.name) {
                Some(t) => {
                    if t.dims() != info.shape.as_slice() {
                        return Err(Error::ShapeMismatch { op: "lora fuse", expected: format!("{:?} ({})", info.shape, info.name), got: format!("{:?}", t.dims()) });
                    }
                    let dt = info.runtime_dtype().ok_or_else(|| Error::InvalidParam { op: "lora fuse", reason: format!("tensor '{}' has dtype {}", info.name, info.dtype) })?;
                    let conv = TensorData::from_f32_as(t.dims(), &t.to_f32_vec(), dt)?;
                    owned.push((info.name.clone(), info.dtype.clone(), info.shape.clone(), conv.data().as_bytes().to_vec()));
                    done += 1;
                }
                None => owned.push((info.name.clone(), info.dtype.clone(), info.shape.clone(), st.bytes(&info.name)?.to_vec())),
            }
        }
        let raw: Vec<RawTensor> = owned.iter().map(|(n, d, s, b)| RawTensor { name: n, dtype: d, shape: s, bytes: b }).collect();
        let dst = out.join(p.file_name().unwrap_or_default());
        write_raw(&dst, &raw, Some(st.metadata()))?;
    }
    if done != replace.len() {
        let missing: Vec<&String> = replace.keys().filter(|k| !shards.iter().any(|p| SafeTensors::open(p).is_ok_and(|s| s.contains(k)))).collect();
        return Err(Error::InvalidParam { op: "lora fuse", reason: format!("tensors {missing:?} are not in the model's files") });
    }
    Ok(done)
}
