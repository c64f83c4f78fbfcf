"""M copies of one MIL head trained as one model: stacked weights, one Adam step.

:class:`StackedHeads` takes M initialised heads of the same class and
hyperparameters and replaces every ``nn.Linear`` of a template copy by a
:class:`FoldedLinear` holding the M weight matrices ``(M, out, in)``. The
models' bags are *folded into the batch*: the template's unchanged
``forward`` receives ``x (M * B, N, D)`` (model m owns rows ``m*B:(m+1)*B``),
every per-bag operation (masked softmax, top-k, pooling) runs on the M * B
bags as usual, and each folded Linear reshapes its input to ``(M, B * ..., in)``
for one batched matmul with its own model's weights. Nothing else of a head
needs to change, and a stacked model gives each copy's outputs to float
rounding (checked against the heads themselves in the tests). Heads with a
``forward_packed`` (ABMIL, Chowder, DSMIL) also take the models' bags
without padding, ``x (M, T, D)`` (see :class:`~wsi_mil.models.layers.Packing`):
the folded Linears see the same ``(M, T, in)`` layout.

A head is stackable when all its parameters belong to ``nn.Linear`` layers
and it has no buffers (MeanPool, Chowder, ABMIL, DSMIL); the others
(TransMIL's convolutions and class token, HIPT-MIL's multi-head attention and
layer norms) are trained one at a time by the loop engine.

:class:`StackedAdam` is ``torch.optim.Adam`` (L2 weight decay added to the
gradient, bias-corrected moments) with a learning rate, a weight decay and a
step count per model, and a per-step mask of the models that take the step.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import MILHead
from wsi_mil.models.layers import Packing


class FoldedLinear(nn.Module):
    """M linear layers applied to the M model blocks of a folded batch.

    ``weight (M, out, in)``, ``bias (M, out)`` (the ``nn.Linear`` layout per
    model). ``forward(x (M' * B, ..., in)) -> (M' * B, ..., out)`` where M' is
    the number of models of the active range (see :meth:`StackedHeads.models`).

    The weights are held transposed, as the parameter ``weight_t (M, in, out)``
    (``weight`` is its transposed view): the batched matmul takes it as its
    contiguous right operand, and its backward returns a contiguous gradient
    that autograd keeps as ``.grad``; with ``(M, out, in)`` parameters the
    gradient came out transposed and was copied into the parameter's layout
    every step (~1 ms per 100 x 128 x 128 weight on the README's CPU).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight.transpose(1, 2).contiguous())  # (M, in, out)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.active = slice(None)

    @property
    def weight(self) -> Tensor:
        """``(M, out, in)``, the ``nn.Linear`` layout per model (a view of ``weight_t``)."""
        return self.weight_t.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        # all models: the parameters themselves (a slice's backward would zero-fill and copy a full-size gradient)
        every = self.active == slice(None)
        weight_t = self.weight_t if every else self.weight_t[self.active]  # (M', in, out)
        bias = self.bias if every or self.bias is None else self.bias[self.active]  # (M', out)
        m = weight_t.shape[0]
        lead = x.shape[:-1]
        if m == 1:  # one model (large bags): one plain matmul (what nn.Linear runs), gradient in weight_t's layout
            x2 = x.reshape(-1, x.shape[-1])  # (B * ..., in)
            out = torch.mm(x2, weight_t[0]) if bias is None else torch.addmm(bias[0], x2, weight_t[0])
            return out.reshape(*lead, weight_t.shape[2])  # (B, ..., out)
        xm = x.reshape(m, -1, x.shape[-1])  # (M', T, in)
        if bias is None:
            out = torch.bmm(xm, weight_t)  # (M', T, out)
        else:
            out = torch.baddbmm(bias.unsqueeze(1), xm, weight_t)
        return out.reshape(*lead, weight_t.shape[2])  # (M' * B, ..., out)

    def extra_repr(self) -> str:
        m, out_f, in_f = self.weight.shape
        return f"models={m}, in_features={in_f}, out_features={out_f}, bias={self.bias is not None}"


def stackable(head: nn.Module) -> tuple[bool, str]:
    """(True, "") if every parameter of ``head`` is a Linear's and it has no buffer, else (False, why)."""
    linear_params = {id(p) for mod in head.modules() if isinstance(mod, nn.Linear) for p in mod.parameters()}
    others = [n for n, p in head.named_parameters() if id(p) not in linear_params]
    if others:
        return False, f"parameters outside Linear layers ({', '.join(others[:3])})"
    buffers = [n for n, _ in head.named_buffers()]
    if buffers:
        return False, f"buffers ({', '.join(buffers[:3])})"
    return True, ""


class StackedHeads(nn.Module):
    """M heads of one class and hyperparameters as one module (see the module docstring).

    ``forward(x (M * B, N, D), mask (M * B, N)) -> (M * B, C)``, or
    :meth:`forward_packed` on a packed batch (heads that have one); inside
    ``with stacked.models(lo, hi)`` only models ``lo..hi-1`` run and the
    batch holds ``(hi - lo) * B`` bags (so a large batch can be processed in
    chunks of models, gradients accumulating into the same stacked weights).
    """

    def __init__(self, heads: Sequence[MILHead]) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("StackedHeads needs at least one head")
        first = heads[0]
        for h in heads[1:]:
            if type(h) is not type(first) or h.hparams != first.hparams or h.in_dim != first.in_dim \
                    or h.n_outputs != first.n_outputs:
                raise ConfigError("stacked heads must share their class, dimensions and hyperparameters")
        ok, why = stackable(first)
        if not ok:
            raise ConfigError(f"{first.name} cannot be stacked: {why}")
        self.n_models = len(heads)
        self.template = copy.deepcopy(first)
        self._folded: dict[str, FoldedLinear] = {}
        for name, mod in list(first.named_modules()):
            if isinstance(mod, nn.Linear):
                weight = torch.stack([h.get_submodule(name).weight.detach() for h in heads]).clone()
                bias = None
                if mod.bias is not None:
                    bias = torch.stack([h.get_submodule(name).bias.detach() for h in heads]).clone()
                folded = FoldedLinear(weight, bias)
                _set_submodule(self.template, name, folded)
                self._folded[name] = folded

    @property
    def head(self) -> MILHead:
        return self.template

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.template(x, mask)

    @property
    def packable(self) -> bool:
        """Whether the head has a packed forward (:meth:`forward_packed`)."""
        return hasattr(self.template, "forward_packed")

    def forward_packed(self, x: Tensor, packing: Packing) -> Tensor:
        """``x (M', T, D)`` packed as ``packing`` (one row of the stack per model) -> ``(M' * B, C)``."""
        return self.template.forward_packed(x, packing)

    @contextlib.contextmanager
    def models(self, lo: int, hi: int) -> Iterator[None]:
        """Run only models ``lo..hi-1`` inside the context."""
        active = slice(None) if (lo, hi) == (0, self.n_models) else slice(lo, hi)
        for f in self._folded.values():
            f.active = active
        try:
            yield
        finally:
            for f in self._folded.values():
                f.active = slice(None)

    def state_dict_of(self, m: int) -> dict[str, Tensor]:
        """Model m's state dict in the layout of the original head (loadable by it)."""
        out = {}
        for name, f in self._folded.items():
            out[f"{name}.weight"] = f.weight[m].detach().clone(memory_format=torch.contiguous_format)  # row-major
            if f.bias is not None:
                out[f"{name}.bias"] = f.bias[m].detach().clone()
        return out


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class StackedAdam:
    """Adam over stacked parameters (leading dim = model), per-model lr / weight decay.

    Same arithmetic as ``torch.optim.Adam`` (L2 decay added to the gradient).
    ``step(active)`` updates the models where ``active (M,)`` is True and
    leaves the others, their moments and step counts untouched. When every
    model steps and all have taken the same number of steps (the inner fits
    of an outer fold, every step), it runs torch's fused Adam kernel
    (``torch._fused_adam_``, what ``Adam(fused=True)`` runs) once per run of
    models sharing a learning rate and weight decay; otherwise the
    single-tensor arithmetic, per model.
    """

    def __init__(self, params: Sequence[Tensor], lr: Tensor, weight_decay: Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        n = self.params[0].shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).reshape(n)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64).reshape(n)
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.steps = torch.zeros(n, dtype=torch.float64)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # runs of consecutive models with one lr and weight decay (a grid row of the engine's stack)
        pairs = list(zip(self.lr.tolist(), self.weight_decay.tolist(), strict=True))
        cuts = [0] + [m for m in range(1, n) if pairs[m] != pairs[m - 1]] + [n]
        self._runs = [(lo, hi, *pairs[lo]) for lo, hi in zip(cuts, cuts[1:], strict=False)]
        self._fused = _has_fused_adam(self.params[0])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        active = torch.as_tensor(active, dtype=torch.bool)
        if not bool(active.any()):
            return
        self.steps += active.to(torch.float64)
        if bool(active.all()) and self._fused and bool((self.steps == self.steps[0]).all()):
            self._fused_step(float(self.steps[0]))
            return
        steps = self.steps.clamp(min=1.0)
        bc1 = 1.0 - self.beta1 ** steps
        bc2_sqrt = (1.0 - self.beta2 ** steps).sqrt()
        step_size = (self.lr / bc1).to(self.params[0].dtype)
        bc2_sqrt = bc2_sqrt.to(self.params[0].dtype)
        wd = self.weight_decay.to(self.params[0].dtype)
        any_decay = bool((self.weight_decay != 0).any())
        all_active = bool(active.all())
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            grad = p.grad
            if any_decay:
                grad = grad + p * wd.view(shape)
            if all_active:
                m.lerp_(grad, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
                p.addcdiv_(m * step_size.view(shape), denom, value=-1.0)
                continue
            idx = active.nonzero().flatten()
            g = grad[idx]
            mi = m[idx].lerp_(g, 1 - self.beta1)
            vi = v[idx].mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            m[idx], v[idx] = mi, vi
            denom = (vi.sqrt() / bc2_sqrt[idx].view(shape)).add_(self.eps)
            p[idx] = p[idx].addcdiv(mi * step_size[idx].view(shape), denom, value=-1.0)

    def _fused_step(self, step: float) -> None:
        """Every model steps and all share their step count: torch's fused Adam kernel (one pass
        over parameter, gradient and moments instead of ~10) per run of models with one lr / decay."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        state_step = torch.tensor(step, dtype=torch.float32, device=self.params[0].device)
        for lo, hi, lr, wd in self._runs:
            torch._fused_adam_(
                [self.params[i][lo:hi] for i in live], [self.params[i].grad[lo:hi] for i in live],
                [self.exp_avg[i][lo:hi] for i in live], [self.exp_avg_sq[i][lo:hi] for i in live], [],
                [state_step] * len(live), lr=lr, beta1=self.beta1, beta2=self.beta2, weight_decay=wd,
                eps=self.eps, amsgrad=False, maximize=False)


def _has_fused_adam(p: Tensor) -> bool:
    """Whether torch has a fused Adam kernel for ``p``'s device and dtype (CPU since torch 2.4, CUDA)."""
    if not hasattr(torch, "_fused_adam_") or p.dtype not in (torch.float32, torch.float64, torch.float16,
                                                               torch.bfloat16):
        return False
    return p.device.type in ("cpu", "cuda")
