//! `mergeModels(recipe, sources, opts, onProgress)`: a mergekit recipe run in the page (see
//! `taskloom::merge`), from the models' files in memory into merged files in memory. The JS facade
//! (`pkg/merge.js`) fetches the sources, hands the result back as Blobs or loads it as a Model.

use crate::model::{files_from_js, to_js};
use crate::{bad_input, choose_device, core_err};
use taskloom::merge::{self, MemSink, Options, Recipe};
use taskloom::models::hf::{Files, MemFiles};
use wasm_bindgen::prelude::*;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    tensors: usize,
    bytes_read: u64,
    bytes_written: u64,
    files: Vec<String>,
    tall_masks: usize,
    peak_bytes: u64,
    device: &'static str,
}

/// `recipe`: the YAML text. `sources`: `{ [model reference in the recipe]: { path: Uint8Array } }`.
/// `opts.device` ("auto" | "webgpu" | "cpu"), `opts.randomSeed` (DARE / DELLA). Returns
/// `{ files: { name: Uint8Array }, summary: { tensors, bytesRead, bytesWritten, files, tallMasks, peakBytes } }`.
#[wasm_bindgen(js_name = mergeModels)]
pub async fn merge_models(recipe: String, sources: JsValue, opts: JsValue, on_progress: Option<js_sys::Function>) -> Result<JsValue, JsError> {
    let recipe = Recipe::parse("recipe.yml", &recipe).map_err(core_err)?;
    if !sources.is_object() {
        return Err(bad_input("merge sources must be an object { [model]: { path: Uint8Array } }"));
    }
    let mut files: Vec<Box<dyn Files>> = Vec::new();
    for name in &recipe.models {
        let v = js_sys::Reflect::get(&sources, &JsValue::from_str(name)).map_err(|_| bad_input(format!("no files for model '{name}'")))?;
        if v.is_undefined() || v.is_null() {
            return Err(bad_input(format!("the recipe names model '{name}' but no files were given for it")));
        }
        files.push(Box::new(MemFiles(files_from_js(&v)?)));
    }
    let device = choose_device(&opts).await?;
    let mut o = Options::default();
    if let Ok(s) = js_sys::Reflect::get(&opts, &JsValue::from_str("randomSeed")) {
        if let Some(x) = s.as_f64() {
            if x < 0.0 || x.fract() != 0.0 || x > 9.007_199_254_740_991e15 {
                return Err(bad_input(format!("options.randomSeed must be a non-negative integer, got {x}")));
            }
            o.random_seed = Some(x as u64);
        }
    }
    let mut sink = MemSink::default();
    let mut report = |p: merge::Progress| {
        if let Some(f) = &on_progress {
            let obj = js_sys::Object::new();
            let set = |k: &str, v: JsValue| _ = js_sys::Reflect::set(&obj, &JsValue::from_str(k), &v);
            set("tensors", (p.tensors as f64).into());
            set("totalTensors", (p.total_tensors as f64).into());
            set("bytes", (p.bytes as f64).into());
            set("totalBytes", (p.total_bytes as f64).into());
            set("tensor", p.tensor.as_str().into());
            _ = f.call1(&JsValue::NULL, &obj);
        }
    };
    let s = merge::merge(&recipe, &files, &device, &o, &mut sink, &mut report).await.map_err(core_err)?;
    let out = js_sys::Object::new();
    for (name, bytes) in &sink.files {
        js_sys::Reflect::set(&out, &JsValue::from_str(name), &js_sys::Uint8Array::from(bytes.as_slice())).map_err(|_| crate::js_err("INTERNAL", "building the result"))?;
    }
    let summary = to_js(&Summary {
        tensors: s.tensors,
        bytes_read: s.bytes_read,
        bytes_written: s.bytes_written,
        files: s.files,
        tall_masks: s.tall_masks,
        peak_bytes: s.peak_bytes,
        device: if device.kind() == "cpu" { "cpu" } else { "webgpu" },
    })?;
    let res = js_sys::Object::new();
    js_sys::Reflect::set(&res, &JsValue::from_str("files"), &out).map_err(|_| crate::js_err("INTERNAL", "building the result"))?;
    js_sys::Reflect::set(&res, &JsValue::from_str("summary"), &summary).map_err(|_| crate::js_err("INTERNAL", "building the result"))?;
    Ok(res.into())
}
