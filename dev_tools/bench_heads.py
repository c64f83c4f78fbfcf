"""Time and peak memory of each MIL head on one big bag, on CPU.

Usage: python dev_tools/bench_heads.py [--n-tiles 20000] [--in-dim 1536] [--threads 1]
       [--repeats 2] [--train]

For each head: eval-mode forward under no_grad (``--train``: train-mode
forward + backward) of one bag ``(1, n_tiles, in_dim)``. Prints the best
wall time over ``--repeats`` runs, its ratio to MeanPool's in the same run,
and the peak resident memory added on top of the input (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs`` before each head; covers torch's C++
allocations, which tracemalloc does not see).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from wsi_mil.models import create_model, list_models

STATUS = Path("/proc/self/status")


def _rss_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _run(model: torch.nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tiles", type=int, default=20_000)
    parser.add_argument("--in-dim", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="forward + backward in train mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, args.n_tiles, args.in_dim)
    mode = "train fwd+bwd" if args.train else "eval forward"
    print(
        f"bag (1, {args.n_tiles}, {args.in_dim}) float32 = {x.numel() * 4 / 2**20:.0f} MiB, "
        f"{mode}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    rows = []
    for name in list_models():
        model = create_model(name, args.in_dim, 1)
        _run(model, x[:, :64], args.train)  # warm-up on a small bag
        _reset_peak()
        base = _rss_kib("VmRSS")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _run(model, x, args.train)
            times.append(time.perf_counter() - t0)
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
        rows.append((name, min(times), peak_mib))
        del model
    ref = dict((n, t) for n, t, _ in rows)["meanpool"]
    print(f"{'model':<10} {'time_s':>8} {'x meanpool':>11} {'peak_extra_MiB':>15}")
    for name, t, peak in rows:
        print(f"{name:<10} {t:>8.3f} {t / ref:>11.1f} {peak:>15.0f}")


if __name__ == "__main__":
    main()
