// MoE bucketing by prefix sums (Edge-MoE's "patch reordering"): the picks idx [R*K] grouped by
// expert into offsets [E+2] (exclusive prefix sum of the per-bucket counts) and order [R*K] (pick
// ids, ascending within a bucket). Bucket b < E is expert b; bucket E collects ids >= E (invalid).
//
// One workgroup of WG threads does it all, so no host readback and no second dispatch:
//   1. counts: the picks are staged WG at a time in workgroup memory; thread t owns buckets
//      t, t + WG, ... and counts their occurrences in the stage (no atomics: exact and deterministic);
//   2. thread 0 turns the counts into the exclusive prefix sum (E + 1 <= 1025 adds) and writes offsets;
//   3. the picks are staged again and each thread appends its buckets' picks in pick order, so the
//      order is stable without any sorting.
// Cost: every thread reads every staged pick once per pass per bucket it owns, i.e.
// 2 * R*K * ceil((E+1) / WG) workgroup-memory reads per thread. That is nothing next to the expert
// matmuls at MoE sizes (R*K up to tens of thousands, E <= 256 for one bucket per thread) and keeps the
// kernel exact; for much larger R*K a multi-workgroup scan would pay off. The runtime keeps
// E <= 1024 (MAX_BUCKETS); loops stay under lavapipe's ~65k-iteration cap for R*K < 2^24.

struct Params {
    picks: u32,     // R * K
    experts: u32,   // E
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;            // [R*K] expert per pick
@group(0) @binding(2) var<storage, read_write> offsets: array<u32>;  // [E+2]
@group(0) @binding(3) var<storage, read_write> order: array<u32>;    // [R*K] pick ids by bucket

const WG: u32 = 256u;
const MAX_BUCKETS: u32 = 1025u;   // E <= 1024 experts + the invalid bucket
const NONE: u32 = 0xffffffffu;    // a stage slot past the last pick

var<workgroup> stage: array<u32, WG>;             // bucket of each staged pick
var<workgroup> cursor: array<u32, MAX_BUCKETS>;   // counts, then each bucket's next free slot

fn stage_picks(c0: u32, lid: u32) {
    let i = c0 + lid;
    var b = NONE;
    if (i < p.picks) {
        b = min(idx[i], p.experts);
    }
    stage[lid] = b;
}

@compute @workgroup_size(WG)
fn moe_bucket(@builtin(local_invocation_index) lid: u32) {
    let e = min(p.experts, MAX_BUCKETS - 1u);
    for (var b = lid; b <= e; b += WG) {
        cursor[b] = 0u;
    }
    for (var c0 = 0u; c0 < p.picks; c0 += WG) {
        stage_picks(c0, lid);
        workgroupBarrier();
        let m = min(WG, p.picks - c0);
        for (var b = lid; b <= e; b += WG) {
            var c = 0u;
            for (var t = 0u; t < m; t++) {
                c += u32(stage[t] == b);
            }
            cursor[b] += c;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var s = 0u;
        for (var b = 0u; b <= e; b++) {
            let c = cursor[b];
            offsets[b] = s;
            cursor[b] = s;
            s += c;
        }
        offsets[e + 1u] = s;
    }
    workgroupBarrier();
    for (var c0 = 0u; c0 < p.picks; c0 += WG) {
        stage_picks(c0, lid);
        workgroupBarrier();
        let m = min(WG, p.picks - c0);
        for (var b = lid; b <= e; b += WG) {
            var c = cursor[b];
            for (var t = 0u; t < m; t++) {
                if (stage[t] == b) {
                    order[c] = c0 + t;
                    c++;
                }
            }
            cursor[b] = c;
        }
        workgroupBarrier();
    }
}
