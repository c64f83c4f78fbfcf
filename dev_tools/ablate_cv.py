"""``bench_cv.py --small --ablate``: the batched small-bag CV as shipped and with one speed-up
switched off at a time, in one process (each variant patched in with ``unittest.mock``), then as
shipped again (drift check). Run through ``dev_tools/bench_cv.py``, which builds the cohort.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import replace

import torch


def ablate(cohort, store, plan, settings, work) -> None:
    """The batched small-bag CV as shipped and with one speed-up switched off at a time."""
    from unittest import mock

    import wsi_mil.cv.engine as engine
    import wsi_mil.models.layers as layers
    import wsi_mil.training.stacked as stacked
    import wsi_mil.training.stacked_batches as stacked_batches
    from wsi_mil.cv.engine import run_cv

    @contextlib.contextmanager
    def no_allocator_setting():
        yield False

    @contextlib.contextmanager
    def sliced_models(self, lo, hi):  # the previous StackedHeads.models: a slice even for every model
        for f in self._folded.values():
            f.active = slice(lo, hi)
        try:
            yield
        finally:
            for f in self._folded.values():
                f.active = slice(None)

    variants = [
        ("as shipped", []),
        ("without the allocator setting", [mock.patch.object(engine, "reuse_freed_memory", no_allocator_setting)]),
        ("without the fused Adam kernel", [mock.patch.object(stacked, "_has_fused_adam", lambda p: False)]),
        ("with torch.tanh", [mock.patch.object(layers.Tanh, "forward", lambda self, x: torch.tanh(x))]),
        ("with the previous weight layout", [mock.patch.object(stacked, "FoldedLinear", _RowMajorFoldedLinear),
                                             mock.patch.object(stacked.StackedHeads, "models", sliced_models)]),
    ]
    if settings.precision == "bf16":
        variants.append(("without the one-time bf16 cast of a batch",
                         [mock.patch.object(stacked_batches.StackedBatch, "input", lambda self, precision: self.x)]))
    variants.append(("as shipped (again)", []))
    base = None
    for name, patches in variants:
        out = work / "small_ablate"
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.ExitStack() as stack:
            for p in patches:
                stack.enter_context(p)
            t = time.perf_counter()
            res = run_cv(cohort, store, plan, replace(settings, engine="batched"), out)
            wall = time.perf_counter() - t
        base = wall if base is None else base
        print(f"[small ablate] {name}: wall {wall:.1f} s ({wall / base:.2f}x the first run), "
              f"mean AUC {res.summary['mean']:.3f}", flush=True)


class _RowMajorFoldedLinear(torch.nn.Module):
    """The stacked Linear before the transposed layout (for ``--ablate``): ``weight (M, out, in)``,
    indexed by the active slice on every call; the batched matmul's weight gradient comes out
    transposed and is copied (by the slice's backward, or autograd) into the parameter's layout."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.bias = None if bias is None else torch.nn.Parameter(bias)
        self.active = slice(None)

    def forward(self, x):
        weight = self.weight[self.active]  # (M', out, in)
        m, lead = weight.shape[0], x.shape[:-1]
        if m == 1:
            bias = None if self.bias is None else self.bias[self.active][0]
            return torch.nn.functional.linear(x, weight[0], bias)
        xm = x.reshape(m, -1, x.shape[-1])
        if self.bias is None:
            out = torch.bmm(xm, weight.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias[self.active].unsqueeze(1), xm, weight.transpose(1, 2))
        return out.reshape(*lead, weight.shape[1])
