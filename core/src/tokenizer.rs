//! Tokenization through the `tokenizers` crate (the same `tokenizer.json` files Hugging Face
//! ships; built with its pure-Rust regex backend so it also runs in wasm).

use crate::error::{Error, FileError, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: String,
}

/// Ids of one text, with the attention mask and token-type ids the encoder takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub mask: Vec<u32>,
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes. Padding and truncation settings in the file are switched off:
    /// batches are padded by the caller to their longest row.
    pub fn from_bytes(file: &str, json: &[u8]) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::File { file: file.into(), kind: FileError::BadHeader(format!("tokenizer: {e}")) })?;
        Tokenizer::from_inner(file, inner)
    }

    /// Wraps a tokenizer built in code (e.g. rebuilt from GGUF metadata); `file` names its origin
    /// in messages. Padding and truncation are switched off, as in [`Tokenizer::from_bytes`].
    pub fn from_inner(file: &str, mut inner: tokenizers::Tokenizer) -> Result<Tokenizer> {
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::InvalidParam { op: "tokenizer", reason: e.to_string() })?;
        Ok(Tokenizer { inner, file: file.into() })
    }

    /// Encodes one text, adding the model's special tokens (`[CLS] … [SEP]`, BOS, ...).
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::InvalidParam { op: "tokenize", reason: format!("{}: {e}", self.file) })?;
        Ok(Encoding { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec(), mask: e.get_attention_mask().to_vec() })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::InvalidParam { op: "detokenize", reason: e.to_string() })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Pads encodings to the longest one (id 0, mask 0) and truncates to `max_len`:
    /// `(ids, type_ids, mask)` each `[B, T]` row-major, and T.
    pub fn batch(encs: &[Encoding], max_len: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>, usize) {
        let t = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0).min(max_len);
        let (mut ids, mut types, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for e in encs {
            for i in 0..t {
                ids.push(e.ids.get(i).copied().unwrap_or(0));
                types.push(e.type_ids.get(i).copied().unwrap_or(0));
                mask.push(e.mask.get(i).copied().unwrap_or(0));
            }
        }
        (ids, types, mask, t)
    }
}
