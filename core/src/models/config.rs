//! `config.json` as Hugging Face writes it: which architecture, and its hyper-parameters.

use crate::error::{Error, FileError, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

/// The architectures taskloom runs, parsed from `config.json`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ModelConfig {
    Bert(BertConfig),
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

impl ModelConfig {
    /// Parses `config.json` text; `file` names it in errors.
    pub fn parse(file: &str, json: &str) -> Result<ModelConfig> {
        let bad = |e: serde_json::Error| Error::File { file: file.into(), kind: FileError::BadHeader(e.to_string()) };
        let head: Head = serde_json::from_str(json).map_err(bad)?;
        let arch = head.architectures.first().cloned().unwrap_or_default();
        let mt = head.model_type.unwrap_or_default();
        let cfg = match (arch.as_str(), mt.as_str()) {
            ("BertModel" | "BertForMaskedLM" | "BertForSequenceClassification", _) | ("", "bert") => {
                let c: BertConfig = serde_json::from_str(json).map_err(bad)?;
                if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
                    return Err(Error::File {
                        file: file.into(),
                        kind: FileError::BadHeader(format!(
                            "hidden_size {} is not a multiple of num_attention_heads {}",
                            c.hidden_size, c.num_attention_heads
                        )),
                    });
                }
                if c.position_embedding_type != "absolute" {
                    return Err(Error::InvalidParam {
                        op: "config",
                        reason: format!("{file}: position_embedding_type '{}' is not supported", c.position_embedding_type),
                    });
                }
                ModelConfig::Bert(c)
            }
            _ => {
                return Err(Error::InvalidParam {
                    op: "config",
                    reason: format!("{file}: unknown architecture '{arch}' (model_type '{mt}')"),
                })
            }
        };
        Ok(cfg)
    }
}
