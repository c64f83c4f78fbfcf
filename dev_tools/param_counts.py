"""Print the parameter count of every MIL head next to the reference's.

Usage: python dev_tools/param_counts.py [--in-dim 768] [--n-outputs 1]

Reference figures: owkin/HistoSSLscaling ``rl_benchmarks/models/slide_models``
with its shipped configs (``conf/slide_level_task/cross_validation/model``),
at D = 768, C = 1. The reference TransMIL figure is computed from its code
(no count is published).
"""
from __future__ import annotations

import argparse

from wsi_mil.models import create_model, list_models

REFERENCE_768_1 = {
    "meanpool": 769,
    "chowder": 109_570,
    "abmil": 156_418,
    "dsmil": 549_742,
    "hipt_mil": 705_410,
}

WHY = {
    "dsmil": (
        "the reference builds tiles_values (Linear 768->32, 24,608 params) even with "
        "passing_values=False, where it is never used; we build it only with "
        "project_values=True"
    ),
    "transmil": (
        "the reference default has no input projection (768-d tokens), exact softmax attention "
        "and dense, not depth-wise, PPEG convolutions (48.96M of its 53.68M params); transmil "
        "follows the paper's code (Linear 768->512 + ReLU, Nystrom attention, depth-wise 7/5/3 "
        "PPEG); transmil_ref is the reference's"
    ),
}


def reference_transmil(d: int, c: int) -> int:
    """Parameters of the reference TransMIL(in_features=d, out_features=c) with its defaults:
    no projection, attention_type="original" (qkv without bias, output projection), dense PPEG."""
    block = 3 * d * d + (d * d + d) + 2 * d  # qkv, out projection, norm1
    ppeg = sum(d * d * k * k + d for k in (3, 5, 7))  # groups missing: dense convs
    return d + 2 * block + ppeg + 2 * d + (d * c + c)  # cls, blocks, ppeg, norm, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-dim", type=int, default=768)
    parser.add_argument("--n-outputs", type=int, default=1)
    args = parser.parse_args()
    d, c = args.in_dim, args.n_outputs
    reference = dict(REFERENCE_768_1) if (d, c) == (768, 1) else {}
    reference["transmil"] = reference["transmil_ref"] = reference_transmil(d, c)
    print(f"parameter counts at D={d}, C={c}")
    print(f"{'model':<10} {'wsi_mil':>12} {'reference':>12} {'difference':>12}")
    for name in list_models():
        ours = sum(p.numel() for p in create_model(name, d, c).parameters())
        ref = reference.get(name)
        diff = "" if ref is None else f"{ours - ref:+,}"
        ref_s = "n/a" if ref is None else f"{ref:,}"
        print(f"{name:<10} {ours:>12,} {ref_s:>12} {diff:>12}")
    print()
    for name, why in WHY.items():
        print(f"{name}: {why}")


if __name__ == "__main__":
    main()
