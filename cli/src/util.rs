//! Small helpers shared by the subcommands.

use crate::CliResult;
use std::str::FromStr;
use taskloom::{Device, DeviceChoice};

/// clap value parser for `--device auto|cpu|gpu`, through the core's own parser so the CLI and
/// the JS surface accept the same spellings.
pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    DeviceChoice::from_str(s).map_err(|e| e.to_string())
}

/// `Auto` falls back to the CPU; `Gpu` with no adapter is an error (NoAdapter), never a fallback.
pub fn open_device(choice: DeviceChoice) -> CliResult<Device> {
    Ok(pollster::block_on(Device::from_choice(choice))?)
}

/// "cpu x86_64 (cpu, 2 threads)" / "gpu NVIDIA H100 (vulkan)".
pub fn describe(dev: &Device) -> String {
    let i = dev.info();
    if i.kind == "cpu" {
        format!("cpu {} ({} threads)", i.name, i.threads)
    } else {
        format!("gpu {} ({}, {})", i.name, i.backend, i.device_type)
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Deterministic values in [-1, 1) (a 32-bit LCG): benchmarks and the demo need no rand crate.
pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> CliResult {
    let s = serde_json::to_string_pretty(value).map_err(|e| crate::CliError::Msg(format!("JSON output: {e}")))?;
    use std::io::Write;
    // A closed stdout (piped into `head`) is the reader's choice, not an error.
    match writeln!(std::io::stdout(), "{s}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(crate::CliError::Msg(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        let v = pseudo_random(1000, 7);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert_ne!(v[0], v[1]);
        assert!(parse_device("webgpu").is_ok() && parse_device("tpu").is_err());
    }
}
