//! `taskloom`: the native edge binary. Thin on purpose: parse arguments, call the core crate, print.
//! Every failure is one line on stderr (`taskloom: <message>`) and a non-zero exit status; a panic
//! is reported the same way by the hook installed in `main`, never as a backtrace.

mod bench;
mod demo;
mod devices;
mod inspect;
mod lora;
mod multitask;
mod merge;
mod run;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "taskloom", version, about = "Multi-task / LoRA / MoE runtime on WebGPU, wgpu or the CPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List GPU adapters, the device `auto` picks, and their limits.
    Devices(devices::Args),
    /// List the tensors of a .safetensors file or of every one in a folder.
    Inspect(inspect::Args),
    /// Micro-benchmarks.
    Bench(bench::Args),
    /// The embedded digits multi-task model on its samples, then a matmul self-check.
    Demo(demo::Args),
    /// Run a Hugging Face model folder or a GGUF file (embeddings or streamed generation), or a
    /// multi-task folder (taskloom.json): each task's prediction.
    Run(run::Args),
    /// LoRA adapters: fuse into a model folder, or combine several into one.
    Lora(lora::Args),
    /// Merge models with a mergekit YAML recipe into a Hugging Face folder.
    Merge(merge::Args),
}

/// Why a command failed: a core error, or a message of the CLI's own (bad path, mismatch, ...).
#[derive(Debug)]
pub enum CliError {
    Core(taskloom::Error),
    Msg(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Core(e) => write!(f, "{e}"),
            CliError::Msg(m) => f.write_str(m),
        }
    }
}

impl From<taskloom::Error> for CliError {
    fn from(e: taskloom::Error) -> Self {
        CliError::Core(e)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("taskloom: internal error: {}{at} (please report this)", one_line(&msg));
    }));
    quiet_mesa();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let res = match cli.cmd {
        Cmd::Devices(a) => devices::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Lora(a) => lora::run(a),
        Cmd::Merge(a) => merge::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskloom: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as clap renders them; real usage errors become one line (clap's
/// own rendering adds a usage block and tips over several lines).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        // Printing can only fail on a closed stdout, where there is nobody left to tell.
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    eprintln!("taskloom: {} (see --help)", first.trim_start_matches("error: "));
    ExitCode::from(2)
}

/// Mesa's Vulkan/GL drivers print "XDG_RUNTIME_DIR is invalid" to stderr on every adapter query
/// when no login session set the variable (containers, CI, services), which breaks the one-line
/// error contract. Point it at a private directory of our own, only when it is unset.
fn quiet_mesa() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::PermissionsExt;
        // One directory for every run (not one per process): empty, and only ours can use it.
        let dir = std::env::temp_dir().join("taskloom-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok() {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

/// Messages from lower layers (serde_json, wgpu) can carry newlines; the contract is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
