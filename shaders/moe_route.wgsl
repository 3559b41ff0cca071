// MoE routing, one invocation per token row (row = gid.x + gid.y * num_workgroups.x * WG):
//   score  = softmax(logits) or sigmoid(logits)        choice = score + bias (selection only)
//   groups > 1: keep the topk_group groups with the largest sum of their two best choices; the
//               other experts' choice becomes 0 (DeepSeek-V3's masked_fill)
//   idx    = the k best choices (descending, lower index first on ties)
//   weight = score[idx] (/ their sum + 1e-20 when norm) * scale
// Selection walks "the best after the previous pick", so no per-row scratch beyond a group bitmask.

struct Params {
    rows: u32,
    e: u32,
    k: u32,
    sigmoid: u32,
    groups: u32,
    topk_group: u32,
    norm: u32,
    has_bias: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // [T, E]
@group(0) @binding(2) var<storage, read> bias: array<f32>;         // [E] (dummy unless has_bias)
@group(0) @binding(3) var<storage, read_write> weights: array<f32>; // [T, K]
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;     // [T, K]

override WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

var<private> base: u32;
var<private> row_max: f32;
var<private> row_sum: f32;
var<private> keep: array<u32, 8>;   // bit g set: group g is eligible (groups <= 256)

fn score(i: u32) -> f32 {
    let l = logits[base + i];
    if (p.sigmoid != 0u) {
        return 1.0 / (1.0 + exp(-l));
    }
    return exp(l - row_max) / row_sum;
}

fn raw_choice(i: u32) -> f32 {
    var c = score(i);
    if (p.has_bias != 0u) {
        c += bias[i];
    }
    return c;
}

fn choice(i: u32) -> f32 {
    let g = i / (p.e / p.groups);
    if ((keep[g / 32u] & (1u << (g % 32u))) == 0u) {
        return 0.0;
    }
    return raw_choice(i);
}

// Sum of the two best raw choices of group g (ties: either, the sum is the same).
fn group_score(g: u32) -> f32 {
    let gs = p.e / p.groups;
    var a = -3.402823466e38;
    var b = -3.402823466e38;
    for (var j = 0u; j < gs; j++) {
        let c = raw_choice(g * gs + j);
        if (c > a) { b = a; a = c; } else if (c > b) { b = c; }
    }
    return a + b;
}

@compute @workgroup_size(WG)
fn moe_route(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) { return; }
    base = row * p.e;
    row_max = -3.402823466e38;
    for (var i = 0u; i < p.e; i++) { row_max = max(row_max, logits[base + i]); }
    row_sum = 0.0;
    for (var i = 0u; i < p.e; i++) { row_sum += exp(logits[base + i] - row_max); }

    for (var w = 0u; w < 8u; w++) { keep[w] = select(0u, 0xffffffffu, p.groups <= 1u); }
    if (p.groups > 1u) {
        var prev_v = 0.0;
        var prev_g = NONE;
        for (var t = 0u; t < p.topk_group; t++) {
            var best_v = 0.0;
            var best_g = NONE;
            for (var g = 0u; g < p.groups; g++) {
                let v = group_score(g);
                let after = prev_g == NONE || v < prev_v || (v == prev_v && g > prev_g);
                if (after && (best_g == NONE || v > best_v)) { best_v = v; best_g = g; }
            }
            keep[best_g / 32u] |= 1u << (best_g % 32u);
            prev_v = best_v;
            prev_g = best_g;
        }
    }

    var prev_v = 0.0;
    var prev_i = NONE;
    var total = 0.0;
    for (var t = 0u; t < p.k; t++) {
        var best_v = 0.0;
        var best_i = NONE;
        for (var i = 0u; i < p.e; i++) {
            let v = choice(i);
            let after = prev_i == NONE || v < prev_v || (v == prev_v && i > prev_i);
            if (after && (best_i == NONE || v > best_v)) { best_v = v; best_i = i; }
        }
        let s = score(best_i);
        weights[row * p.k + t] = s;
        idx[row * p.k + t] = best_i;
        total += s;
        prev_v = best_v;
        prev_i = best_i;
    }
    let f = select(p.scale, p.scale / (total + 1e-20), p.norm != 0u);
    for (var t = 0u; t < p.k; t++) {
        weights[row * p.k + t] *= f;
    }
}
