//! Every WGSL shader, named once: its source (`include_str!` from `shaders/`), its entry points, its
//! binding layout, and the specialisations (override constants) the runtime uses, so the shader
//! validation test checks exactly what runs.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Matmul,
    Elementwise,
    Norm,
    Embedding,
    Rope,
    Attention,
    Permute,
    Concat,
    ExpertMatmul,
    MoeBucket,
    GroupedMatmul,
    MoeRoute,
    TopK,
    LoraShrink,
    LoraExpand,
    MergeSelect,
    MergeRandom,
    MergeRescale,
    MergeCombine,
}

/// How a binding is declared in the shader. Binding 0 is always the `Params` uniform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    Read,
    ReadWrite,
}

/// One matmul tiling: workgroup WG_X x WG_Y threads, each computing TM x TN outputs, TK-deep K steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulTile {
    pub wg_x: u32,
    pub wg_y: u32,
    pub tm: u32,
    pub tn: u32,
    pub tk: u32,
}

impl MatmulTile {
    pub fn bm(&self) -> u32 {
        self.wg_y * self.tm
    }
    pub fn bn(&self) -> u32 {
        self.wg_x * self.tn
    }
}

/// The tilings the runtime picks from: 64x64 tiles for large products, 16x16 for small or thin ones
/// (few rows, as in decoding), where a big tile would leave most threads idle.
pub const MATMUL_TILES: [MatmulTile; 2] = [
    MatmulTile { wg_x: 16, wg_y: 16, tm: 4, tn: 4, tk: 16 },
    MatmulTile { wg_x: 8, wg_y: 8, tm: 2, tn: 2, tk: 16 },
];

pub type Constants = Vec<(&'static str, f64)>;

/// `lora_shrink` runs 256 threads per workgroup, LANES of them summing each rank's dot product.
/// Fewer ranks than 256 / 32 get more lanes each (R = 1 uses all 256), so small ranks do not leave
/// most of the workgroup idle; 32 lanes at least, so a lane still walks contiguous weights.
pub const LORA_SHRINK_WG: u32 = 256;
pub const LORA_SHRINK_LANES: [u32; 4] = [32, 64, 128, 256];

/// The LANES for rank `r`: the most ranks per workgroup that still fill it.
pub fn lora_shrink_lanes(r: usize) -> u32 {
    let per_rank = LORA_SHRINK_WG / (r.clamp(1, 256).next_power_of_two() as u32);
    per_rank.clamp(LORA_SHRINK_LANES[0], LORA_SHRINK_WG)
}

pub fn lora_shrink_constants(w_dtype: u32, lanes: u32) -> Constants {
    vec![("W_DTYPE", w_dtype as f64), ("LANES", lanes as f64)]
}

pub fn matmul_constants(b_dtype: u32, trans_b: bool, t: &MatmulTile) -> Constants {
    vec![
        ("B_DTYPE", b_dtype as f64),
        ("TRANS_B", if trans_b { 1.0 } else { 0.0 }),
        ("WG_X", t.wg_x as f64),
        ("WG_Y", t.wg_y as f64),
        ("TM", t.tm as f64),
        ("TN", t.tn as f64),
        ("TK", t.tk as f64),
    ]
}

/// `grouped_matmul` uses the matmul tilings (its weights are always `[N, Cin]`, i.e. transposed).
pub fn grouped_matmul_constants(w_dtype: u32, t: &MatmulTile) -> Constants {
    vec![
        ("W_DTYPE", w_dtype as f64),
        ("WG_X", t.wg_x as f64),
        ("WG_Y", t.wg_y as f64),
        ("TM", t.tm as f64),
        ("TN", t.tn as f64),
        ("TK", t.tk as f64),
    ]
}

/// The tiling for a grouped matmul of `picks` rows over `experts` buckets and `n` outputs: the
/// 64-row tile once an expert averages a full tile of rows (prefill), else the 16-row one, which
/// wastes less on half-empty tiles (decode, few tokens, many experts).
pub fn grouped_matmul_tile(picks: usize, experts: usize, n: usize) -> &'static MatmulTile {
    let big = &MATMUL_TILES[0];
    if n > 16 && picks >= big.bm() as usize * experts.max(1) { big } else { &MATMUL_TILES[1] }
}

impl Shader {
    pub const ALL: [Shader; 19] = [
        Shader::Matmul,
        Shader::Elementwise,
        Shader::Norm,
        Shader::Embedding,
        Shader::Rope,
        Shader::Attention,
        Shader::Permute,
        Shader::Concat,
        Shader::ExpertMatmul,
        Shader::MoeBucket,
        Shader::GroupedMatmul,
        Shader::MoeRoute,
        Shader::TopK,
        Shader::LoraShrink,
        Shader::LoraExpand,
        Shader::MergeSelect,
        Shader::MergeRandom,
        Shader::MergeRescale,
        Shader::MergeCombine,
    ];

    /// The file stem in `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul",
            Shader::Elementwise => "elementwise",
            Shader::Norm => "norm",
            Shader::Embedding => "embedding",
            Shader::Rope => "rope",
            Shader::Attention => "attention",
            Shader::Permute => "permute",
            Shader::Concat => "concat",
            Shader::ExpertMatmul => "expert_matmul",
            Shader::MoeBucket => "moe_bucket",
            Shader::GroupedMatmul => "grouped_matmul",
            Shader::MoeRoute => "moe_route",
            Shader::TopK => "topk",
            Shader::LoraShrink => "lora_shrink",
            Shader::LoraExpand => "lora_expand",
            Shader::MergeSelect => "merge_select",
            Shader::MergeRandom => "merge_random",
            Shader::MergeRescale => "merge_rescale",
            Shader::MergeCombine => "merge_combine",
        }
    }

    /// The WGSL text; kernels that read packed f16/bf16 weights get the `packed.wgsl` prelude.
    pub fn source(self) -> &'static str {
        match self {
            Shader::Matmul => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/matmul.wgsl")),
            Shader::Elementwise => include_str!("../../../shaders/elementwise.wgsl"),
            Shader::Norm => include_str!("../../../shaders/norm.wgsl"),
            Shader::Embedding => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/embedding.wgsl")),
            Shader::Rope => include_str!("../../../shaders/rope.wgsl"),
            Shader::Attention => include_str!("../../../shaders/attention.wgsl"),
            Shader::Permute => include_str!("../../../shaders/permute.wgsl"),
            Shader::Concat => include_str!("../../../shaders/concat.wgsl"),
            Shader::MoeRoute => include_str!("../../../shaders/moe_route.wgsl"),
            Shader::ExpertMatmul => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/expert_matmul.wgsl")),
            Shader::MoeBucket => include_str!("../../../shaders/moe_bucket.wgsl"),
            Shader::GroupedMatmul => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/grouped_matmul.wgsl")),
            Shader::TopK => include_str!("../../../shaders/topk.wgsl"),
            Shader::LoraShrink => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/lora_shrink.wgsl")),
            Shader::LoraExpand => concat!(include_str!("../../../shaders/packed.wgsl"), include_str!("../../../shaders/lora_expand.wgsl")),
            Shader::MergeSelect => include_str!("../../../shaders/merge_select.wgsl"),
            Shader::MergeRandom => include_str!("../../../shaders/merge_random.wgsl"),
            Shader::MergeRescale => include_str!("../../../shaders/merge_rescale.wgsl"),
            Shader::MergeCombine => include_str!("../../../shaders/merge_combine.wgsl"),
        }
    }

    pub fn entries(self) -> &'static [&'static str] {
        match self {
            Shader::Matmul => &["matmul"],
            Shader::Elementwise => &["add", "mul", "axpy", "scale", "gelu_erf", "gelu_tanh", "silu", "sigmoid", "relu"],
            Shader::Norm => &["softmax", "layer_norm", "rms_norm"],
            Shader::Embedding => &["embedding"],
            Shader::Rope => &["rope"],
            Shader::Attention => &["attention"],
            Shader::Permute => &["permute"],
            Shader::Concat => &["concat"],
            Shader::ExpertMatmul => &["expert_matmul"],
            Shader::MoeBucket => &["moe_bucket"],
            Shader::GroupedMatmul => &["grouped_matmul"],
            Shader::MoeRoute => &["moe_route"],
            Shader::TopK => &["topk"],
            Shader::LoraShrink => &["lora_shrink"],
            Shader::LoraExpand => &["lora_expand"],
            Shader::MergeSelect => &["sel_init", "sel_hist", "sel_pick", "sel_mask"],
            Shader::MergeRandom => &["random_mask", "della_mask"],
            Shader::MergeRescale => &["rescale_partial", "rescale_factor", "rescale_apply"],
            Shader::MergeCombine => &["task_merge"],
        }
    }

    /// Storage bindings after the uniform at binding 0, in binding order.
    pub(crate) fn bindings(self) -> &'static [Bind] {
        use Bind::*;
        match self {
            Shader::Matmul => &[Read, Read, Read, ReadWrite],
            Shader::Elementwise | Shader::Embedding | Shader::Rope | Shader::Concat => &[Read, Read, ReadWrite],
            Shader::Permute => &[Read, ReadWrite],
            Shader::Norm => &[Read, Read, Read, ReadWrite],
            Shader::Attention => &[Read, Read, Read, Read, ReadWrite],
            Shader::ExpertMatmul => &[Read, Read, Read, ReadWrite],
            Shader::MoeBucket => &[Read, ReadWrite, ReadWrite],
            Shader::GroupedMatmul => &[Read, Read, Read, Read, Read, ReadWrite],
            Shader::MoeRoute => &[Read, Read, ReadWrite, ReadWrite],
            Shader::TopK => &[Read, ReadWrite, ReadWrite],
            Shader::LoraShrink => &[Read, Read, Read, ReadWrite],
            Shader::LoraExpand => &[Read, Read, Read, Read, Read, ReadWrite],
            Shader::MergeSelect => &[Read, Read, ReadWrite, ReadWrite],
            Shader::MergeRandom => &[Read, Read, ReadWrite],
            Shader::MergeRescale => &[Read, Read, Read, ReadWrite, ReadWrite],
            Shader::MergeCombine => &[Read, Read, Read, ReadWrite],
        }
    }

    /// Every set of override constants the runtime may create a pipeline with.
    pub fn specialisations(self) -> Vec<Constants> {
        match self {
            Shader::Matmul => {
                let mut v = Vec::new();
                for t in &MATMUL_TILES {
                    for dt in 0..3 {
                        for tb in [false, true] {
                            v.push(matmul_constants(dt, tb, t));
                        }
                    }
                }
                v
            }
            Shader::GroupedMatmul => MATMUL_TILES.iter().flat_map(|t| (0..3).map(move |dt| grouped_matmul_constants(dt, t))).collect(),
            Shader::Embedding => (0..3).map(|dt| vec![("T_DTYPE", dt as f64)]).collect(),
            Shader::ExpertMatmul | Shader::LoraExpand => (0..3).map(|dt| vec![("W_DTYPE", dt as f64)]).collect(),
            Shader::LoraShrink => {
                let lanes = LORA_SHRINK_LANES.iter();
                (0..3).flat_map(|dt| lanes.clone().map(move |&l| lora_shrink_constants(dt, l))).collect()
            }
            _ => vec![Vec::new()],
        }
    }
}

type PipelineKey = (Shader, &'static str, Vec<(&'static str, u64)>);

/// Pipelines cached by (shader, entry, constants); shader modules and layouts by shader.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: HashMap<Shader, (wgpu::ShaderModule, wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
}

impl PipelineCache {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        shader: Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        let (module, bgl, layout) = self.modules.entry(shader).or_insert_with(|| create_module(device, shader));
        let key = (shader, entry, constants.iter().map(|(k, v)| (*k, v.to_bits())).collect());
        let pipeline = self
            .pipelines
            .entry(key)
            .or_insert_with(|| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(layout),
                    module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                    cache: None,
                })
            })
            .clone();
        (pipeline, bgl.clone())
    }

    pub fn len(&self) -> usize {
        self.pipelines.len()
    }
}

fn create_module(device: &wgpu::Device, shader: Shader) -> (wgpu::ShaderModule, wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(shader.name()),
        source: wgpu::ShaderSource::Wgsl(shader.source().into()),
    });
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }];
    for (i, b) in shader.bindings().iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: *b == Bind::Read },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(shader.name()), entries: &entries });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(shader.name()),
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    (module, bgl, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_shrink_lanes_are_specialised_and_divide_the_workgroup() {
        for r in 0..=1024 {
            let lanes = lora_shrink_lanes(r);
            assert!(LORA_SHRINK_LANES.contains(&lanes) && LORA_SHRINK_WG.is_multiple_of(lanes), "r = {r}: {lanes}");
            // Ranks per workgroup never exceed what a small rank needs (no idle half workgroups).
            assert!(r == 0 || (LORA_SHRINK_WG / lanes) as usize <= r.next_power_of_two().max(8), "r = {r}");
        }
        assert_eq!((lora_shrink_lanes(1), lora_shrink_lanes(4), lora_shrink_lanes(16)), (256, 64, 32));
    }
}
