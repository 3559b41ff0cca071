//! A Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`, and for
//! sentence-transformers `modules.json` + `1_Pooling/config.json`), from disk natively, from a map
//! of file names to bytes (tests), or from a map of file names to [`RangeRead`]ers (wasm: buffers
//! kept on the JS side, so weights are read one tensor at a time and never sit whole in the heap).

use super::bert::{pool, Bert, EncoderInput, Pooling};
use super::config::ModelConfig;
use super::{Progress, Tracked, Weights};
use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::formats::gguf::is_gguf;
use crate::formats::safetensors::SafeTensors;
use crate::formats::RangeRead;
use crate::lora::runtime::Mix;
use crate::tensor::TensorData;
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::sync::Arc;

/// All the safetensors shards of one model; a name is looked up in the shard that holds it.
pub struct Shards(pub Vec<SafeTensors>);

impl Weights for Shards {
    fn tensor(&self, name: &str) -> Result<TensorData> {
        match self.0.iter().find(|s| s.contains(name)) {
            Some(s) => s.tensor(name),
            None => Err(Error::File { file: self.origin(), kind: FileError::MissingTensor(name.into()) }),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.contains(name))
    }
    fn origin(&self) -> String {
        self.0.iter().map(|s| s.file().to_string()).collect::<Vec<_>>().join(", ")
    }
    fn stored_bytes(&self, name: &str) -> u64 {
        self.0.iter().find_map(|s| s.info(name).ok().map(|i| i.bytes)).unwrap_or(0)
    }
    fn total_bytes(&self) -> u64 {
        self.0.iter().map(|s| s.total_bytes()).sum()
    }
}

/// The files of a model folder, by relative path ("config.json", "1_Pooling/config.json", ...).
pub trait Files {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>>;
    /// Safetensors shards in name order.
    fn weights(&self) -> Result<Shards>;
    fn name(&self) -> String;
    /// The safetensors file `rel` opened (its header validated; `rel` names it in messages), or
    /// `None` when absent. By default read whole; a source that can do better (ranged reads)
    /// overrides it.
    fn safetensors(&self, rel: &str) -> Result<Option<SafeTensors>> {
        self.read(rel)?.map(|b| SafeTensors::from_bytes(rel, b)).transpose()
    }
}

/// Files handed over as bytes (tests, the CLI's built-in demo). `weights()` copies each shard, so
/// for large weights use [`RangedFiles`].
pub struct MemFiles(pub BTreeMap<String, Vec<u8>>);

impl Files for MemFiles {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(rel).cloned())
    }
    fn weights(&self) -> Result<Shards> {
        let v = self
            .0
            .iter()
            .filter(|(k, _)| k.ends_with(".safetensors"))
            .map(|(k, b)| SafeTensors::from_bytes(k.clone(), b.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Shards(v))
    }
    fn name(&self) -> String {
        "(in-memory files)".into()
    }
}

/// Files handed over as [`RangeRead`]ers (wasm: `Uint8Array`s on the JS side). Weights are opened
/// with [`SafeTensors::from_reader`], so only headers are read up front and each tensor's bytes when
/// it is loaded; [`Files::read`] (config, tokenizer: small files) copies the whole file.
#[derive(Clone, Default)]
pub struct RangedFiles(pub BTreeMap<String, Arc<dyn RangeRead>>);

impl RangedFiles {
    /// The GGUF file among these, if any: the first named `*.gguf` or starting with its magic.
    pub fn gguf_name(&self) -> Option<String> {
        let magic = |r: &Arc<dyn RangeRead>| {
            let mut m = [0u8; 4];
            r.len() >= 4 && r.read_at(0, &mut m).is_ok() && is_gguf(&m)
        };
        self.0.iter().find(|(k, r)| k.ends_with(".gguf") || magic(r)).map(|(k, _)| k.clone())
    }
}

impl Files for RangedFiles {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let Some(r) = self.0.get(rel) else { return Ok(None) };
        let io = |source| Error::Io { path: rel.to_string(), source };
        let n = usize::try_from(r.len()).map_err(|_| io(std::io::Error::new(std::io::ErrorKind::OutOfMemory, "file larger than the address space")))?;
        let mut v = vec![0u8; n];
        r.read_at(0, &mut v).map_err(io)?;
        Ok(Some(v))
    }
    fn weights(&self) -> Result<Shards> {
        let v = self.0.iter().filter(|(k, _)| k.ends_with(".safetensors")).map(|(k, r)| SafeTensors::from_reader(k.clone(), r.clone())).collect::<Result<Vec<_>>>()?;
        Ok(Shards(v))
    }
    fn name(&self) -> String {
        "(in-memory files)".into()
    }
    fn safetensors(&self, rel: &str) -> Result<Option<SafeTensors>> {
        self.0.get(rel).map(|r| SafeTensors::from_reader(rel, r.clone())).transpose()
    }
}

/// A folder on disk; weights are memory-mapped.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl Files for DirFiles {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let p = self.0.join(rel);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path: p.display().to_string(), source: e }),
        }
    }
    fn weights(&self) -> Result<Shards> {
        let rd = std::fs::read_dir(&self.0).map_err(|e| Error::Io { path: self.0.display().to_string(), source: e })?;
        let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "safetensors")).collect();
        paths.sort();
        Ok(Shards(paths.iter().map(SafeTensors::open).collect::<Result<Vec<_>>>()?))
    }
    fn name(&self) -> String {
        self.0.display().to_string()
    }
}

fn required(files: &dyn Files, rel: &str) -> Result<Vec<u8>> {
    files.read(rel)?.ok_or_else(|| Error::Io {
        path: format!("{}/{rel}", files.name()),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing from the model folder"),
    })
}

/// A sentence encoder: BERT + tokenizer + the sentence-transformers pooling, when configured.
pub struct Encoder {
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    /// Pooling and whether to L2-normalise, from `1_Pooling/config.json` and `modules.json`.
    pub pooling: Option<(Pooling, bool)>,
    pub device: Device,
}

impl Encoder {
    pub fn load(files: &dyn Files, device: Device) -> Result<Encoder> {
        Encoder::load_with_progress(files, device, &|_| {})
    }

    /// [`Encoder::load`], reporting weight bytes loaded as it goes.
    pub fn load_with_progress(files: &dyn Files, device: Device, on_progress: &dyn Fn(Progress)) -> Result<Encoder> {
        Encoder::load_with_weights(files, None, device, on_progress)
    }

    /// [`Encoder::load_with_progress`] with the weights taken from `weights` instead of the
    /// folder's shards when given (e.g. a merged model switched to one task's TALL mask).
    pub fn load_with_weights(files: &dyn Files, weights: Option<&dyn Weights>, device: Device, on_progress: &dyn Fn(Progress)) -> Result<Encoder> {
        let cfg_text = String::from_utf8_lossy(&required(files, "config.json")?).into_owned();
        let cfg = match ModelConfig::parse("config.json", &cfg_text)? {
            ModelConfig::Bert(c) => c,
            _ => return Err(Error::InvalidParam { op: "encoder", reason: format!("{}: config.json describes a decoder", files.name()) }),
        };
        let tokenizer = Tokenizer::from_bytes("tokenizer.json", &required(files, "tokenizer.json")?)?;
        let pooling = match files.read("1_Pooling/config.json")? {
            None => None,
            Some(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| Error::File { file: "1_Pooling/config.json".into(), kind: FileError::BadHeader(e.to_string()) })?;
                let mode = if v["pooling_mode_cls_token"].as_bool() == Some(true) { Pooling::Cls } else { Pooling::Mean };
                let modules = files.read("modules.json")?.map(|m| String::from_utf8_lossy(&m).into_owned()).unwrap_or_default();
                Some((mode, modules.contains("Normalize")))
            }
        };
        let shards;
        let weights: &dyn Weights = match weights {
            Some(w) => w,
            None => {
                shards = files.weights()?;
                &shards
            }
        };
        let bert = Bert::load(&device, cfg, &Tracked::new(weights, on_progress))?;
        Ok(Encoder { bert, tokenizer, pooling, device })
    }

    /// Tokenizes and pads a batch of texts (truncated to the model's maximum positions).
    pub fn tokenize(&self, texts: &[&str]) -> Result<EncoderInput> {
        let encs = texts.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?;
        let (ids, type_ids, mask, tokens) = Tokenizer::batch(&encs, self.bert.cfg.max_position_embeddings);
        Ok(EncoderInput { ids, type_ids, mask, batch: texts.len(), tokens })
    }

    /// `last_hidden_state [B, T, C]` on the host.
    pub async fn hidden(&self, input: &EncoderInput) -> Result<TensorData> {
        let h = self.bert.forward(&self.device, input)?;
        self.device.download(&h).await
    }

    /// One pooled (and, if configured, normalised) embedding per text; mean pooling when the folder
    /// has no sentence-transformers config.
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(texts, None).await
    }

    /// [`Encoder::embed`] with an adapter mix per text (`None`: the active mix).
    pub async fn embed_with(&self, texts: &[&str], mixes: Option<&[Mix]>) -> Result<Vec<Vec<f32>>> {
        let input = self.tokenize(texts)?;
        let h = self.device.download(&self.bert.forward_mixed(&self.device, &input, mixes)?).await?;
        let (mode, norm) = self.pooling.unwrap_or((Pooling::Mean, false));
        pool(&h, &input.mask, mode, norm)
    }
}
