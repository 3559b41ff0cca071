//! `mergeModels(recipe, sources, opts, onProgress, onWrite)`: a mergekit recipe run in the page (see
//! `taskloom::merge`), reading each input tensor's byte range when it is merged and handing each
//! piece of the output to JS as it is written. The JS facade (`pkg/merge.js`) turns every kind of
//! source (URL, `File`s, buffers) into the readers below and assembles the output Blobs, so the wasm
//! heap holds about one tensor × inputs, never whole checkpoints nor the merged model.

use crate::model::to_js;
use crate::{bad_input, choose_device, core_err};
use std::rc::Rc;
use taskloom::merge::source::LocalFuture;
use taskloom::merge::{self, ByteSource, LazyShard, Options, Recipe, Shard, Sink, Source};
use taskloom::{Error, FileError};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

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

/// The message of a JS exception (an `Error`'s `message`, else its string form).
fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| "failed".into())
}

fn io_err(path: &str, e: &JsValue) -> Error {
    Error::Io { path: path.to_string(), source: std::io::Error::other(js_message(e)) }
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Calls `f(args...)` and awaits the result when it is a promise.
async fn call(f: &js_sys::Function, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let arr: js_sys::Array = args.iter().collect();
    let v = f.apply(&JsValue::NULL, &arr)?;
    JsFuture::from(js_sys::Promise::resolve(&v)).await
}

/// One file read by ranges through JS: `read(start, end)` resolves to a `Uint8Array` of those bytes.
struct JsBytes {
    name: String,
    len: u64,
    read: js_sys::Function,
}

impl ByteSource for JsBytes {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read<'a>(&'a self, start: u64, out: &'a mut [u8]) -> LocalFuture<'a, taskloom::Result<()>> {
        Box::pin(async move {
            if out.is_empty() {
                return Ok(());
            }
            let end = start + out.len() as u64;
            let v = call(&self.read, &[JsValue::from_f64(start as f64), JsValue::from_f64(end as f64)]).await.map_err(|e| io_err(&self.name, &e))?;
            let a = v.dyn_into::<js_sys::Uint8Array>().map_err(|_| io_err(&self.name, &JsValue::from_str("the range reader did not give a Uint8Array")))?;
            if a.length() as usize != out.len() {
                return Err(Error::File {
                    file: self.name.clone(),
                    kind: FileError::Truncated(format!("bytes {start}..{end} asked, {} read (the file has {} bytes)", a.length(), self.len)),
                });
            }
            a.copy_to(out);
            Ok(())
        })
    }
}

/// One model as `pkg/merge.js` describes it: `{ name, readFile(rel) -> Promise<Uint8Array | null>,
/// shards: [{ name, size, read(start, end) -> Promise<Uint8Array> }] }`.
struct JsSource {
    name: String,
    read_file: js_sys::Function,
    shards: Vec<Rc<dyn ByteSource>>,
}

impl JsSource {
    fn from_js(model: &str, v: &JsValue) -> Result<JsSource, JsError> {
        let bad = |what: &str| bad_input(format!("model '{model}': {what}"));
        let name = get(v, "name").as_string().unwrap_or_else(|| model.to_string());
        let read_file = get(v, "readFile").dyn_into::<js_sys::Function>().map_err(|_| bad("readFile is not a function"))?;
        let list = get(v, "shards");
        if !js_sys::Array::is_array(&list) {
            return Err(bad("shards is not an array"));
        }
        let mut shards: Vec<Rc<dyn ByteSource>> = Vec::new();
        for s in js_sys::Array::from(&list).iter() {
            let name = get(&s, "name").as_string().ok_or_else(|| bad("a shard has no name"))?;
            let len = get(&s, "size").as_f64().filter(|x| *x >= 0.0 && x.fract() == 0.0).ok_or_else(|| bad(&format!("shard {name}: size is not a byte count")))?;
            let read = get(&s, "read").dyn_into::<js_sys::Function>().map_err(|_| bad(&format!("shard {name}: read is not a function")))?;
            shards.push(Rc::new(JsBytes { name, len: len as u64, read }));
        }
        Ok(JsSource { name, read_file, shards })
    }
}

impl Source for JsSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read<'a>(&'a self, rel: &'a str) -> LocalFuture<'a, taskloom::Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = format!("{}/{rel}", self.name);
            let v = call(&self.read_file, &[JsValue::from_str(rel)]).await.map_err(|e| io_err(&path, &e))?;
            if v.is_null() || v.is_undefined() {
                return Ok(None);
            }
            let a = v.dyn_into::<js_sys::Uint8Array>().map_err(|_| io_err(&path, &JsValue::from_str("readFile did not give a Uint8Array")))?;
            Ok(Some(a.to_vec()))
        })
    }
    fn shards(&self) -> LocalFuture<'_, taskloom::Result<Vec<Shard>>> {
        Box::pin(async move {
            let mut v = Vec::with_capacity(self.shards.len());
            for s in &self.shards {
                v.push(Shard::Lazy(LazyShard::open(s.clone()).await?));
            }
            Ok(v)
        })
    }
}

/// Hands every written piece to JS as its own `Uint8Array` (a copy out of the wasm heap):
/// `onWrite(file, bytes)`; a file is announced by a call with empty bytes when it begins.
struct JsSink {
    on_write: js_sys::Function,
    current: String,
}

impl JsSink {
    fn send(&self, bytes: &[u8]) -> taskloom::Result<()> {
        self.on_write
            .call2(&JsValue::NULL, &JsValue::from_str(&self.current), &js_sys::Uint8Array::from(bytes))
            .map(|_| ())
            .map_err(|e| io_err(&self.current, &e))
    }
}

impl Sink for JsSink {
    fn begin(&mut self, file: &str) -> taskloom::Result<()> {
        self.current = file.to_string();
        self.send(&[])
    }
    fn write(&mut self, bytes: &[u8]) -> taskloom::Result<()> {
        self.send(bytes)
    }
    fn commit(&mut self) -> taskloom::Result<()> {
        Ok(())
    }
}

/// `recipe`: the YAML text. `sources`: `{ [model reference in the recipe]: { name, readFile, shards } }`
/// (see [`JsSource`]; `pkg/merge.js` builds them). `opts.device` ("auto" | "webgpu" | "cpu"),
/// `opts.maxBindingBytes` (lowers the WebGPU binding limit: a tensor whose merge would not fit one
/// binding merges on the CPU), `opts.randomSeed` (DARE / DELLA). Each output piece goes to `onWrite(file, Uint8Array)` in order.
/// Returns the summary `{ tensors, bytesRead, bytesWritten, files, tallMasks, peakBytes, device }`.
#[wasm_bindgen(js_name = mergeModels)]
pub async fn merge_models(recipe: String, sources: JsValue, opts: JsValue, on_progress: Option<js_sys::Function>, on_write: js_sys::Function) -> Result<JsValue, JsError> {
    let recipe = Recipe::parse("recipe.yml", &recipe).map_err(core_err)?;
    if !sources.is_object() {
        return Err(bad_input("merge sources must be an object { [model]: source }"));
    }
    let mut srcs = Vec::new();
    for name in &recipe.models {
        let v = get(&sources, name);
        if v.is_undefined() || v.is_null() {
            return Err(bad_input(format!("the recipe names model '{name}' but no files were given for it")));
        }
        srcs.push(JsSource::from_js(name, &v)?);
    }
    let device = choose_device(&opts).await?;
    let mut o = Options::default();
    if let Some(x) = get(&opts, "randomSeed").as_f64() {
        if x < 0.0 || x.fract() != 0.0 || x > 9.007_199_254_740_991e15 {
            return Err(bad_input(format!("options.randomSeed must be a non-negative integer, got {x}")));
        }
        o.random_seed = Some(x as u64);
    }
    let mut sink = JsSink { on_write, current: String::new() };
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
    let refs: Vec<&dyn Source> = srcs.iter().map(|s| s as &dyn Source).collect();
    let s = merge::merge_sources(&recipe, &refs, &device, &o, &mut sink, &mut report).await.map_err(core_err)?;
    to_js(&Summary {
        tensors: s.tensors,
        bytes_read: s.bytes_read,
        bytes_written: s.bytes_written,
        files: s.files,
        tall_masks: s.tall_masks,
        peak_bytes: s.peak_bytes,
        device: if device.kind() == "cpu" { "cpu" } else { "webgpu" },
    })
}
