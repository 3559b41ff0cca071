//! naga parses and validates every shader, then every entry point under every specialisation the
//! runtime uses (override constants substituted, module re-validated). No GPU needed.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use taskloom::gpu::kernels::{Shader, MATMUL_TILES};

fn validator() -> Validator {
    Validator::new(ValidationFlags::all(), Capabilities::empty())
}

#[test]
fn every_shader_and_specialisation_validates() {
    let mut checked = 0;
    for shader in Shader::ALL {
        let module = naga::front::wgsl::parse_str(shader.source())
            .unwrap_or_else(|e| panic!("{}.wgsl: {}", shader.name(), e.emit_to_string(shader.source())));
        let info = validator()
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}.wgsl: {}", shader.name(), e.emit_to_string(shader.source())));
        let declared: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(declared, shader.entries(), "{}.wgsl entry points", shader.name());
        for entry in shader.entries() {
            for consts in shader.specialisations() {
                let mut pc = naga::back::PipelineConstants::default();
                for (k, v) in &consts {
                    pc.insert(k.to_string(), *v);
                }
                let (m, _) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, entry)),
                    &pc,
                )
                .unwrap_or_else(|e| panic!("{}::{entry} with {consts:?}: {e}", shader.name()));
                validator()
                    .validate(&m)
                    .unwrap_or_else(|e| panic!("{}::{entry} with {consts:?}: {}", shader.name(), e.emit_to_string(shader.source())));
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} specialisations checked");
}

#[test]
fn matmul_tiles_fit_webgpu_default_limits() {
    // WebGPU guarantees 256 invocations and 16 KiB of workgroup memory; every tiling must fit both,
    // and the register block must fit the shader's 16-accumulator array.
    for t in MATMUL_TILES {
        assert!(t.wg_x * t.wg_y <= 256, "{t:?}");
        assert!((t.bm() * t.tk + t.tk * t.bn()) * 4 <= 16384, "{t:?}");
        assert!(t.tm * t.tn <= 16, "{t:?}");
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    // The check above must be able to fail: an undefined identifier and a type error.
    assert!(naga::front::wgsl::parse_str("@compute @workgroup_size(1) fn f() { let x: u32 = y; }").is_err());
    let m = naga::front::wgsl::parse_str(
        "@group(0) @binding(0) var<storage, read> a: array<f32>;\n@compute @workgroup_size(1) fn f() { a[0] = 1.0; }",
    );
    assert!(m.is_err() || validator().validate(&m.unwrap()).is_err());
}

#[test]
fn float_literals_fit_f32_exactly() {
    // naga rounds an out-of-range literal such as -3.4028235e38 to f32::MAX, but Chrome's Tint
    // rejects it ("cannot be represented as 'f32'"): every literal must already be within range.
    for shader in Shader::ALL {
        let src = shader.source();
        for tok in src.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')) {
            let t = tok.trim_start_matches('-').trim_end_matches('f');
            if !t.contains('e') || !t.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(v) = t.parse::<f64>() {
                assert!(v <= f32::MAX as f64, "{}.wgsl: literal {tok} exceeds f32::MAX", shader.name());
            }
        }
    }
}
