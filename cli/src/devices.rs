//! `taskloom devices [--json]`: the adapters wgpu enumerates, the device `--device auto` picks, and
//! the limits that decide what fits (binding size caps the largest weight matrix).

use crate::util::{bytes, describe, print_json};
use crate::CliResult;
use taskloom::{Device, DeviceInfo};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    adapters: Vec<DeviceInfo>,
    /// What `--device auto` (Device::best) chooses.
    chosen: DeviceInfo,
    cpu: DeviceInfo,
}

/// Every adapter wgpu can see natively (also those `auto` would not pick, such as lavapipe next
/// to a real GPU).
fn adapters() -> Vec<DeviceInfo> {
    taskloom::gpu::adapters()
}

pub fn run(a: Args) -> CliResult {
    let chosen = pollster::block_on(Device::best());
    let report = Report {
        adapters: adapters(),
        chosen: chosen.info(),
        cpu: Device::cpu().info(),
    };
    if a.json {
        return print_json(&report);
    }
    println!("GPU adapters ({}):", report.adapters.len());
    if report.adapters.is_empty() {
        println!("  none (install a Vulkan/Metal/DX12 driver, or Mesa lavapipe for a software one)");
    }
    for (i, d) in report.adapters.iter().enumerate() {
        println!("  [{i}] {} ({}, {})", d.name, d.backend, d.device_type);
        println!("      {}", limits(d));
    }
    println!("auto picks: {}", describe(&chosen));
    if report.chosen.kind == "gpu" {
        println!("      {}", limits(&report.chosen));
    }
    println!("cpu: {} ({} threads)", report.cpu.name, report.cpu.threads);
    Ok(())
}

fn limits(d: &DeviceInfo) -> String {
    format!(
        "max binding {}, max buffer {}, workgroup storage {}, {} invocations/workgroup, shader-f16 {}",
        bytes(d.max_storage_buffer_binding_size),
        bytes(d.max_buffer_size),
        bytes(d.max_compute_workgroup_storage_size as u64),
        d.max_compute_invocations_per_workgroup,
        if d.shader_f16 { "yes" } else { "no" },
    )
}
