//! The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`), rebuilt as a `tokenizers`
//! tokenizer equal to the Hugging Face `tokenizer.json` it was converted from.
//!
//! Only `tokenizer.ggml.model` = "gpt2" (byte-level BPE) is handled. The pre-tokenizer depends on
//! `tokenizer.ggml.pre`, which names the splitting regex llama.cpp uses for the model: "gpt2" /
//! "default" is the GPT-2 regex alone; "smollm" first splits every digit on its own (HF `Digits`
//! with `individual_digits`), as SmolLM's own `tokenizer.json` does. Other names (llama-bpe,
//! qwen2, ...) use regexes not reproduced here and are refused rather than tokenised wrongly.

use super::Gguf;
use crate::error::{Error, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

impl Gguf {
    /// The tokenizer in this file's metadata, wrapped for the runtime (padding and truncation off).
    pub fn tokenizer(&self) -> Result<crate::tokenizer::Tokenizer> {
        crate::tokenizer::Tokenizer::from_inner(self.file(), self.hf_tokenizer()?)
    }

    /// The same tokenizer as a bare `tokenizers::Tokenizer` (e.g. to save as `tokenizer.json`).
    pub fn hf_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let unsupported = |what: String| Error::InvalidParam { op: "gguf tokenizer", reason: format!("{}: {what}", self.file()) };
        let model = self.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(unsupported(format!("tokenizer model '{model}' is not supported (only 'gpt2' byte-level BPE)")));
        }
        let pre = match self.get("tokenizer.ggml.pre") {
            Some(_) => self.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        let digits_apart = match pre {
            "gpt2" | "default" => false,
            "smollm" => true,
            other => return Err(unsupported(format!("pre-tokenizer '{other}' is not supported (gpt2, default, smollm)"))),
        };
        let tokens = self.get_str_array("tokenizer.ggml.tokens")?;
        let types = match self.get("tokenizer.ggml.token_type") {
            Some(_) => self.get_int_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(self.bad(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let merges = self
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| self.bad(format!("merge #{i} '{m}' is not two tokens separated by a space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let id = |i: usize| u32::try_from(i).map_err(|_| self.bad("more than 2^32 tokens".into()));
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert((*t).to_owned(), id(i)?);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| self.bad(format!("tokenizer: {e}")))?;

        let mut tok = tokenizers::Tokenizer::new(bpe);
        let add_prefix_space = self.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(false);
        let byte_level = ByteLevel::new(add_prefix_space, true, true);
        let pre_tok: PreTokenizerWrapper = if digits_apart {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        tok.with_pre_tokenizer(Some(pre_tok));
        tok.with_decoder(Some(ByteLevel::default()));

        let flag = |k: &str| self.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let special = |field: &str| -> Result<(String, u32)> {
            let i = self.get_u32(&format!("tokenizer.ggml.{field}_token_id"))?;
            let t = tokens.get(i as usize).ok_or_else(|| self.bad(format!("{field} token id {i} is beyond the vocabulary")))?;
            Ok(((*t).to_owned(), i))
        };
        let bos = if flag("tokenizer.ggml.add_bos_token") { Some(special("bos")?) } else { None };
        let eos = if flag("tokenizer.ggml.add_eos_token") { Some(special("eos")?) } else { None };
        if bos.is_none() && eos.is_none() {
            // What HF's byte-level tokenizer.json files carry: it only adjusts offsets.
            tok.with_post_processor(Some(ByteLevel::new(true, false, true)));
        } else {
            let single: Vec<&str> =
                bos.iter().map(|b| b.0.as_str()).chain(["$A"]).chain(eos.iter().map(|e| e.0.as_str())).collect();
            let bad = |e: String| self.bad(format!("tokenizer template: {e}"));
            let post = TemplateProcessing::builder()
                .try_single(single.join(" "))
                .map_err(bad)?
                .special_tokens(bos.iter().chain(&eos).cloned().collect::<Vec<_>>())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            tok.with_post_processor(Some(post));
        }

        // Control tokens (<|im_start|>, <|endoftext|>, ...) must come out as one id each and be
        // skippable when decoding; user-defined ones are single ids but ordinary text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(t, &ty)| AddedToken::from((*t).to_owned(), ty == TOKEN_CONTROL).normalized(false))
            .collect();
        let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        tok.add_special_tokens(&special);
        tok.add_tokens(&plain);
        Ok(tok)
    }
}
