// Scaled dot-product attention, one workgroup per (query row i, query head h, batch b) =
// workgroup_id (x, y, z). Keys are visited in chunks of WG: each thread scores one key of the
// chunk into workgroup memory, then every thread folds the chunk into the online softmax
// (running max m, running sum l) and into its own output columns c = lid + WG * r (r < 4, so
// Dv <= 4 * WG). Masked keys score -inf; a row that sees no key outputs 0.
// Grouped-query: head h reads kv head h / (Hq / Hkv). Causal: query i sits at Tk - Tq + i.

struct Params {
    hq: u32,
    hkv: u32,
    tq: u32,
    tk: u32,
    d: u32,
    dv: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;         // [B, Hq, Tq, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;         // [B, Hkv, Tk, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;         // [B, Hkv, Tk, Dv]
@group(0) @binding(4) var<storage, read> mask: array<u32>;      // [B, Tk], 0 = padding (dummy if none)
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [B, Hq, Tq, Dv]

override WG: u32 = 64u;
const NEG_INF: f32 = -3.402823466e38;
var<workgroup> scores: array<f32, WG>;

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wg.x;
    let h = wg.y;
    let b = wg.z;
    let kh = h / (p.hq / p.hkv);
    let q_base = ((b * p.hq + h) * p.tq + i) * p.d;
    let kv_row0 = (b * p.hkv + kh) * p.tk;
    var limit = p.tk;
    if (p.causal != 0u) {
        // Keys j <= Tk - Tq + i, written without u32 underflow when Tq > Tk.
        limit = min(p.tk, select(0u, p.tk + i + 1u - p.tq, p.tk + i + 1u > p.tq));
    }

    var m = NEG_INF;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = 0u; j0 < p.tk; j0 += WG) {
        let j = j0 + lid;
        var s = NEG_INF;
        if (j < limit && (p.has_mask == 0u || mask[b * p.tk + j] != 0u)) {
            var dot = 0.0;
            let k_base = (kv_row0 + j) * p.d;
            for (var c = 0u; c < p.d; c++) {
                dot += q[q_base + c] * k[k_base + c];
            }
            s = dot * p.scale;
        }
        scores[lid] = s;
        workgroupBarrier();
        let n = min(WG, p.tk - j0);
        var cm = m;
        for (var t = 0u; t < n; t++) { cm = max(cm, scores[t]); }
        if (cm > NEG_INF) {
            let corr = exp(m - cm);
            l *= corr;
            for (var r = 0u; r < 4u; r++) { acc[r] *= corr; }
            for (var t = 0u; t < n; t++) {
                let st = scores[t];
                if (st > NEG_INF) {
                    let w = exp(st - cm);
                    l += w;
                    let v_base = (kv_row0 + j0 + t) * p.dv;
                    for (var r = 0u; r < 4u; r++) {
                        let c = lid + r * WG;
                        if (c < p.dv) { acc[r] += w * v[v_base + c]; }
                    }
                }
            }
            m = cm;
        }
        workgroupBarrier();
    }
    let o_base = ((b * p.hq + h) * p.tq + i) * p.dv;
    for (var r = 0u; r < 4u; r++) {
        let c = lid + r * WG;
        if (c < p.dv) {
            out[o_base + c] = select(0.0, acc[r] / l, l > 0.0);
        }
    }
}
