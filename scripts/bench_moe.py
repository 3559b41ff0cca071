#!/usr/bin/env python3
"""The PyTorch reference for core/examples/bench_moe.rs (issue 6): one MoE layer, top-2 of 8 experts,
128 tokens, C = 512, F = 2048, f32 on the CPU with torch.set_num_threads(2), the standard block of
transformers' Mixtral (MixtralSparseMoeBlock before fused kernels): router -> softmax -> topk ->
renormalise -> one_hot expert mask -> for each expert with picks: torch.where, index_select of its
tokens, the expert MLP, times the routing weight, index_add_ back. Experts are ViT-style GELU MLPs
(fc1 + bias, GELU, fc2 + bias) or SwiGLU (w2(silu(w1 x) * w3 x)); the dense MLP of hidden 2F has
the same active FLOPs. Prints `anchor=moe_layer mlp=... moe_ms=... dense_ms=...` (medians).

    .refstack/bin/python scripts/bench_moe.py [--runs N] [--tokens T]
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class GeluExpert(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, f), nn.Linear(f, c)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGluExpert(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(c, f, bias=False), nn.Linear(c, f, bias=False), nn.Linear(f, c, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    """MixtralSparseMoeBlock.forward, written out (transformers 4.4x, the loop over experts)."""

    def __init__(self, expert, c, f, e, k):
        super().__init__()
        self.k, self.e = k, e
        self.gate = nn.Linear(c, e, bias=False)
        self.experts = nn.ModuleList([expert(c, f) for _ in range(e)])

    def forward(self, h):
        logits = self.gate(h)
        weights = F.softmax(logits, dim=1, dtype=torch.float)
        weights, selected = torch.topk(weights, self.k, dim=-1)
        weights /= weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(h)
        mask = F.one_hot(selected, num_classes=self.e).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for ex in hit:
            idx, top_x = torch.where(mask[ex].squeeze(0))
            cur = h.index_select(0, top_x)
            y = self.experts[ex](cur) * weights[top_x, idx, None]
            out.index_add_(0, top_x, y)
        return out


def median_ms(f, runs):
    for _ in range(2):
        f()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        t.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--c", type=int, default=512)
    ap.add_argument("--f", type=int, default=2048)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    h = torch.randn(a.tokens, a.c)
    for name, expert in [("gelu", GeluExpert), ("swiglu", SwiGluExpert)]:
        moe = SparseMoe(expert, a.c, a.f, a.experts, a.k).eval()
        dense = expert(a.c, 2 * a.f).eval()
        with torch.inference_mode():
            moe_ms = median_ms(lambda: moe(h), a.runs)
            dense_ms = median_ms(lambda: dense(h), a.runs)
        print(f"anchor=moe_layer mlp={name} tokens={a.tokens} experts={a.experts} k={a.k} c={a.c} f={a.f} runs={a.runs} "
              f"torch={torch.__version__} moe_ms={moe_ms:.3f} dense_ms={dense_ms:.3f}")


if __name__ == "__main__":
    main()
