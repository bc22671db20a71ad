"""The parameter update every training loop here shares: AdamW, gradient clipping, EMA.

The trainer and ``experiments/benchmark.py`` both call these, so the benchmark times exactly
the step that training runs.

Speed, not semantics, is the reason this module exists. On CPU, ``torch.optim.AdamW``
defaults to a Python loop over parameters (``foreach`` is only the default on CUDA), about a
dozen passes over the weights per step; ``fused=True`` runs one kernel that reads parameter,
gradient and both moments once (DiT-S/2, 32.5M parameters, on this project's 2-core machine:
79 ms for-loop, 130 ms foreach, 25 ms fused). Gradient clipping and the EMA use the
multi-tensor (``foreach``) kernels. The update rule is AdamW's either way (tested against the
closed-form update in ``tests/shared/test_optim.py``).

``fused=True`` is :class:`FusedAdamW`, not ``torch.optim.AdamW(fused=True)``: it steps through
torch's public functional AdamW (``torch.optim.adamw.adamw(..., fused=True)``, the function the
class's ``step`` calls, so parameters, moments and the state dict are equal bit for bit;
tested), but without ``torch.optim.Optimizer``. That class
imports ``torch._dynamo`` when it is built (``add_param_group`` is wrapped in
``torch._disable_dynamo``) and again in every ``step``: 1.2–1.9 CPU-s per process on this
project's machine, a quarter of what the process tests spend (py-spy, 2026-12-03). Nothing
here compiles the optimizer, so that import buys nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.optim.adamw import adamw

# the hyperparameters torch.optim.AdamW(fused=True) records in each param group, in its order
_TORCH_GROUP = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
}


class FusedAdamW:
    """AdamW through torch's fused kernel, with ``torch.optim.AdamW``'s interface as the
    trainer uses it (``param_groups``, ``step``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``) and its state-dict layout, so checkpoints load in either class.
    One param group; no amsgrad, maximize, closure or gradient scaler (none is used here)."""

    def __init__(
        self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        params = list(params)
        if not params:
            raise ValueError("FusedAdamW got an empty parameter list")
        for name, ok in (
            ("lr", lr >= 0),
            ("eps", eps >= 0),
            ("weight_decay", weight_decay >= 0),
            ("betas", all(0 <= b < 1 for b in betas)),
        ):
            if not ok:
                raise ValueError(f"FusedAdamW: invalid {name}")
        for p in params:
            if not (p.is_floating_point() and p.device.type in ("cpu", "cuda", "mps", "xpu")):
                raise RuntimeError(
                    f"FusedAdamW needs floating-point parameters on cpu/cuda/mps/xpu, got "
                    f"{p.dtype} on {p.device}; use optim.fused=false"
                )
        group = {
            "lr": lr,
            "betas": (float(betas[0]), float(betas[1])),
            "eps": eps,
            "weight_decay": weight_decay,
            **_TORCH_GROUP,
        }
        if _torch_records_decoupled_weight_decay():
            group["decoupled_weight_decay"] = True
        group["params"] = params
        self.param_groups = [group]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        by_device: dict[tuple, list[list[torch.Tensor]]] = {}
        for p in g["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FusedAdamW does not support sparse gradients")
            s = self.state.get(p)
            if not s:  # torch's lazy initialisation: step is a float32 scalar on p's device
                s = self.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
            lists = by_device.setdefault((p.device, p.dtype), [[], [], [], [], []])
            for lst, t in zip(
                lists, (p, p.grad, s["exp_avg"], s["exp_avg_sq"], s["step"]), strict=True
            ):
                lst.append(t)
        beta1, beta2 = g["betas"]
        for ps, grads, m, v, steps in by_device.values():
            # torch's public functional AdamW: with fused=True it adds 1 to every step count
            # and runs the fused kernel, as torch.optim.AdamW(fused=True).step does
            adamw(
                ps,
                grads,
                m,
                v,
                [],
                steps,
                foreach=False,
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=g["lr"],
                weight_decay=g["weight_decay"],
                eps=g["eps"],
                maximize=False,
            )

    def state_dict(self) -> dict:
        """torch.optim's layout: parameters by their index, tensors by reference."""
        g = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(g["params"])}
        packed = {k: v for k, v in g.items() if k != "params"}
        packed["params"] = list(range(len(g["params"])))
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": dict(sorted(state.items())), "param_groups": [packed]}

    def load_state_dict(self, sd: dict) -> None:
        """Loads a state dict of this class or of ``torch.optim.AdamW`` (any ``fused``)."""
        groups = sd.get("param_groups", [])
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0].get("params", ())) != len(params):
            raise ValueError(
                f"optimizer state has {[len(x.get('params', ())) for x in groups]} parameters "
                f"per group; this model has one group of {len(params)}"
            )
        saved = groups[0]
        for key in ("amsgrad", "maximize"):
            if saved.get(key, False):
                raise ValueError(f"optimizer state was saved with {key}=True; FusedAdamW has none")
        group = dict(self.param_groups[0])
        group.update({k: v for k, v in saved.items() if k != "params"})
        group["betas"] = tuple(group["betas"])
        state = {}
        for i, s in sd.get("state", {}).items():
            p = params[saved["params"].index(i)]
            step = torch.as_tensor(s["step"], dtype=torch.float32)
            state[p] = {  # copies: a live optimizer's state dict is never shared
                "step": step.to(p.device, copy=True),
                "exp_avg": s["exp_avg"].to(device=p.device, dtype=p.dtype, copy=True),
                "exp_avg_sq": s["exp_avg_sq"].to(device=p.device, dtype=p.dtype, copy=True),
            }
        self.param_groups = [group]
        self.state = state


def _torch_records_decoupled_weight_decay() -> bool:
    """Whether this torch's AdamW records ``decoupled_weight_decay`` in its param groups (it
    does since the Adam/AdamW merge), read from Adam's signature without building one."""
    import inspect

    return "decoupled_weight_decay" in inspect.signature(torch.optim.Adam.__init__).parameters


def build_adamw(
    params: Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    fused: bool = True,
):
    """AdamW; ``fused`` selects the single-kernel implementation (CPU and CUDA),
    :class:`FusedAdamW`; ``fused=False`` is torch's for-loop ``torch.optim.AdamW``."""
    if fused:
        return FusedAdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kw)


def clip_and_step(model: nn.Module, opt, grad_clip: float) -> None:
    """Clips the global gradient norm to ``grad_clip`` (0 = no clipping), then steps ``opt``."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    opt.step()


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay at optimiser step ``step`` (0-based): torch_ema's min(d, (1+n)/(10+n))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, over parameters (buffers are not averaged)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
