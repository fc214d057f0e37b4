"""How regularizers sit inside a model without touching its parameters, and how they leave.

Mechanism: each regularizer is appended to a parameter-free ``nn.ModuleList`` named
``plan_regularizers`` registered as a child of the site module, and one forward hook on the
site module passes the site's output through that list. The layers own no parameters or
buffers, so ``state_dict()`` keys are unchanged (checkpoints load with or without a plan),
and in ``eval()`` the hook returns the output untouched, so the model is identical there.
(For container sites such as ``nn.Sequential``, where a new child would join the forward
chain, the list is kept as a plain attribute instead and follows the site's train/eval mode.)

Sites inside torch's Transformer layers switch their class (`RegularizedDropout`,
`regularized_class`) instead of taking a forward hook: a hook turns off the layer's fused
eval fast path, whose output differs.

Tuple outputs: at an ``nn.LSTM``/``GRU``/``RNN`` or ``nn.MultiheadAttention`` site the
regularizers act on the first element (the output sequence, the attention output); the state
or the attention weights pass unchanged.

What goes in (which layers, at which sites) is `search_space.apply`'s job; this module only
holds them, runs them, lists them and removes them.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn

from search_space import layers as _layers
from search_space.attention import QKV_ATTR, RegularizedMultiheadAttention, unwrap_regularizer

REG_ATTR = "plan_regularizers"
_BEHIND = "_plan_behind_conv"
_SCHEDULERS = "_plan_schedulers"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Modules whose output is a tuple whose first tensor is the site's output.
_FIRST_OF_TUPLE = (nn.RNNBase, nn.MultiheadAttention)


def _named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """named_modules() without the regularizers this module inserted."""
    for name, m in model.named_modules():
        parts = name.split(".")
        if REG_ATTR not in parts and QKV_ATTR not in parts:
            yield name, m


# ---------------------------------------------------------------------- holders and hook
def _holder(module: nn.Module) -> nn.ModuleList | None:
    holder = module._modules.get(REG_ATTR)
    return module.__dict__.get(REG_ATTR) if holder is None else holder  # type: ignore[return-value]


def _run_regularizers(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: pass the site output through its regularizers (training mode only). An
    LSTM/GRU/RNN or MultiheadAttention returns a tuple: its first tensor (the output
    sequence, the attention output) is the site's output; the state or weights pass as they are."""
    holder = _holder(module)
    if holder is None:
        return None
    if REG_ATTR in module.__dict__ and holder.training != module.training:
        holder.train(module.training)  # hidden holder: follow the site's mode
    if not module.training:
        return None
    first = isinstance(output, tuple) and output and isinstance(module, _FIRST_OF_TUPLE)
    value = output[0] if first else output
    if not isinstance(value, torch.Tensor):
        return None
    for reg in holder:
        conv = reg.__dict__.get(_BEHIND)
        if conv is not None:
            unwrap_regularizer(reg).weight_behind = conv.weight.detach()
        value = reg(value)
    return (value, *output[1:]) if first else value


def _attach(module: nn.Module, reg: nn.Module, switch_class: bool = False) -> None:
    """Add ``reg`` to the site's regularizers. ``switch_class``: run them from the site's
    own forward (its class switched, `regularized_class`) instead of a forward hook."""
    holder = _holder(module)
    if holder is None:
        holder = nn.ModuleList()
        if isinstance(module, _CONTAINERS):
            module.__dict__[REG_ATTR] = holder
        else:
            module.add_module(REG_ATTR, holder)
        if switch_class and not isinstance(module, _CONTAINERS):
            module.__class__ = regularized_class(type(module))
        else:
            module.register_forward_hook(_run_regularizers)
    holder.append(reg)


class RegularizedDropout(nn.Dropout):
    """``nn.Dropout`` that passes its output through the site's regularizers (training only).

    Sites inside torch's Transformer layers switch to such a class instead of taking a
    forward hook: ``nn.TransformerEncoderLayer`` leaves its fused fast path whenever any of
    its modules has a hook, and the unfused path differs from it by ~1e-6 in eval. With a
    class switch, eval is the plain model exactly. `remove_plan` switches the class back.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = super().forward(input)
        regularized = _run_regularizers(self, (input,), out)
        return out if regularized is None else regularized


RegularizedDropout._plan_base = nn.Dropout  # type: ignore[attr-defined]
_REGULARIZED: dict[type, type] = {nn.Dropout: RegularizedDropout}


def regularized_class(cls: type) -> type:
    """The subclass of ``cls`` whose forward runs the site's regularizers after its own
    (`RegularizedDropout` for ``nn.Dropout``, made once per class otherwise)."""
    if getattr(cls, "_plan_base", None) is not None:
        return cls
    if cls not in _REGULARIZED:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = cls.forward(self, *args, **kwargs)
            regularized = _run_regularizers(self, args, out)
            return out if regularized is None else regularized

        _REGULARIZED[cls] = type(f"Regularized{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    new = _REGULARIZED[cls]
    new._plan_base = cls  # type: ignore[attr-defined]
    return new


def _holders(model: nn.Module) -> Iterator[nn.Module]:
    for _, m in _named_modules(model):
        holder = _holder(m)
        if holder is not None:
            yield holder
        qkv = m._modules.get(QKV_ATTR)
        if qkv is not None:
            yield qkv.values()  # type: ignore[misc]


# ---------------------------------------------------------------------- public API
def regularizers(model: nn.Module) -> dict[str, nn.Module]:
    """Site -> inserted module (a LinearScheduler when ramped). The extra pattern applied
    to the enclosing block's output for ``residual=True`` is keyed "<site>:residual"."""
    return {reg.plan_site: reg for holder in _holders(model) for reg in holder}


def step_schedulers(model: nn.Module) -> None:
    """Advance every ramp by one step; call once per training iteration."""
    cached = model.__dict__.get(_SCHEDULERS)
    for scheduler in _find_schedulers(model) if cached is None else cached:
        scheduler.step()


def _find_schedulers(model: nn.Module) -> list[nn.Module]:
    found = []
    for m in model.modules():
        hidden = m.__dict__.get(REG_ATTR)
        for sub in [m] if hidden is None else [m, *hidden.modules()]:
            if isinstance(sub, _layers.LinearScheduler):
                found.append(sub)
    return found


def remove_plan(model: nn.Module) -> nn.Module:
    """Remove everything `apply_plan` inserted (hooks and regularizers)."""
    for _, m in list(_named_modules(model)):
        for key, hook in list(m._forward_hooks.items()):
            if hook is _run_regularizers:
                del m._forward_hooks[key]
        m._modules.pop(REG_ATTR, None)
        m.__dict__.pop(REG_ATTR, None)
        base = type(m).__dict__.get("_plan_base")
        if base is not None:
            m.__class__ = base
        if m._modules.pop(QKV_ATTR, None) is not None and type(m) is RegularizedMultiheadAttention:
            m.__class__ = nn.MultiheadAttention
    model.__dict__.pop(_SCHEDULERS, None)
    return model
