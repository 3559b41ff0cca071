//! A Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`, and for
//! sentence-transformers `modules.json` + `1_Pooling/config.json`), from disk natively or from a
//! map of file names to bytes (wasm, tests).

use super::bert::{pool, Bert, EncoderInput, Pooling};
use super::config::ModelConfig;
use super::{Progress, Tracked, Weights};
use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::formats::safetensors::SafeTensors;
use crate::lora::runtime::Mix;
use crate::tensor::TensorData;
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;

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
}

/// Files handed over as bytes (wasm `ArrayBuffer`s, tests).
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
