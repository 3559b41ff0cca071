//! `taskloom run --model DIR --task a,b --input ...` for a folder holding `taskloom.json`: loads
//! only what the named tasks need, runs them in one pass and prints each task's prediction (label
//! and score, or the regression values), the expert usage with `--routing`, or JSON with `--json`.

use crate::util::{bytes, describe, open_device, print_json};
use crate::{CliError, CliResult};
use std::path::Path;
use taskloom::multitask::{spec::InputSpec, Input, MultiTask, Output, Prediction, Run};
use taskloom::DeviceChoice;

pub struct Request<'a> {
    pub model: &'a Path,
    pub tasks: &'a [&'a str],
    pub input: &'a str,
    pub routing: bool,
    pub json: bool,
    pub device: DeviceChoice,
}

/// Pixels from `s`: comma/whitespace-separated numbers (a JSON array works too), or a file of them.
pub fn pixels(s: &str) -> CliResult<Vec<f32>> {
    let parse = |t: &str| -> Option<Vec<f32>> {
        t.split(|c: char| c == ',' || c.is_whitespace() || c == '[' || c == ']').filter(|x| !x.is_empty()).map(|x| x.parse::<f32>().ok()).collect()
    };
    if let Some(v) = parse(s).filter(|v| !v.is_empty()) {
        return Ok(v);
    }
    let text = std::fs::read_to_string(s).map_err(|e| CliError::Msg(format!("--input '{s}' is neither a list of numbers nor a readable file ({e})")))?;
    parse(&text).filter(|v| !v.is_empty()).ok_or_else(|| CliError::Msg(format!("{s}: expected comma- or space-separated pixel values")))
}

pub fn run(r: &Request) -> CliResult {
    let dev = open_device(r.device)?;
    let device = describe(&dev);
    let subset = if r.tasks.is_empty() { None } else { Some(r.tasks) };
    let model = MultiTask::load_dir(r.model, dev, subset)?;
    let input = match model.spec.input {
        InputSpec::Text => Input::Text(r.input.to_string()),
        InputSpec::Image { .. } => Input::Image(pixels(r.input)?),
    };
    let t0 = std::time::Instant::now();
    let out = pollster::block_on(model.run(std::slice::from_ref(&input), None))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if r.json {
        return print_json(&serde_json::json!({
            "model": model.spec.name, "device": device, "tasks": model.tasks(),
            "outputs": out.outputs[0], "routing": if r.routing { serde_json::to_value(&out.routing).ok() } else { None },
            "deltas": out.deltas.first().map(|w| model.spec.deltas.iter().flat_map(|d| d.names.iter().cloned()).zip(w.iter().copied()).collect::<std::collections::BTreeMap<_, _>>()),
            "resident_bytes": model.resident_bytes(), "all_tasks_bytes": model.all_tasks_bytes(), "ms": ms,
        }));
    }
    println!("model {} on {device}", model.spec.name);
    println!("resident {} of {} (all tasks)", bytes(model.resident_bytes()), bytes(model.all_tasks_bytes()));
    for (task, o) in &out.outputs[0] {
        println!("{task}: {}", describe_output(o));
    }
    if r.routing {
        print_routing(&out);
    }
    if let (Some(w), Some(d)) = (out.deltas.first(), &model.spec.deltas) {
        let mix = d.names.iter().zip(w).map(|(n, x)| format!("{n}:{x:.3}")).collect::<Vec<_>>().join(" ");
        println!("task deltas (router): {mix}");
    }
    println!("{ms:.1} ms");
    Ok(())
}

pub fn describe_prediction(p: &Prediction) -> String {
    match (&p.label, p.score) {
        (Some(l), Some(s)) => format!("{l} ({s:.3})"),
        _ => format!("{:?}", p.values.iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>()),
    }
}

pub fn describe_output(o: &Output) -> String {
    match o {
        Output::Sequence(p) => describe_prediction(p),
        Output::Token(v) => v.iter().map(|p| p.label.clone().unwrap_or_else(|| describe_prediction(p))).collect::<Vec<_>>().join(" "),
    }
}

pub fn print_routing(out: &Run) {
    for (task, blocks) in &out.routing {
        for (block, counts) in blocks {
            let used = counts.iter().enumerate().map(|(e, c)| format!("e{e}:{c}")).collect::<Vec<_>>().join(" ");
            println!("routing {task} block {block}: {used}");
        }
    }
}
