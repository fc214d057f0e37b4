"""One forward pass on an example input, recorded: what each module took and returned.

`call_model` is the one way the project calls a model on ``example_input``: a tensor is
the one positional argument, a tuple (or list) the positional arguments, a dict the keyword
arguments (wrap a tuple or dict that is itself the one input in a 1-tuple: ``(inputs,)``).
`describe`, `SearchSpace.for_model`, the pre-flight check, the baselines and `run_search`
all go through it. `search_space.probe` reads the record (`_record`) to find the sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from search_space.errors import user_error
from search_space.evidence import tensor_key
from search_space.insertion import _named_modules

#: Modules whose output is a tuple whose first tensor is the site's output.
_FIRST_OF_TUPLE = (nn.RNNBase, nn.MultiheadAttention)


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model`` called on ``example_input``: a tensor (or any other single value) as the one
    argument, a tuple or list as positional arguments, a dict as keyword arguments."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def example_batch(example_input: Any) -> Any:
    """A batch of at least 2 (BatchNorm in training refuses one sample per channel): a tensor
    with one example is repeated; other forms are used as they are."""
    if isinstance(example_input, torch.Tensor) and example_input.dim() >= 1 and example_input.shape[0] == 1:
        return torch.cat([example_input, example_input])
    return example_input


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _form_hint(example_input: Any) -> str:
    if isinstance(example_input, Mapping):
        return "a dict is passed as keyword arguments: wrap it in a 1-tuple, (d,), to pass it as one argument"
    if isinstance(example_input, (tuple, list)):
        return "a tuple is passed as positional arguments: wrap it in a 1-tuple, (t,), to pass it as one argument"
    return ""


def _batch_size(example_input: Any) -> int | None:
    """The first axis of the example's first tensor (the batch axis of most models)."""
    values = list(example_input.values()) if isinstance(example_input, Mapping) else example_input
    values = values if isinstance(values, (tuple, list)) else [values]
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return int(v.shape[0])
    return None


# ------------------------------------------------------------------ the record
@dataclass
class _Call:
    path: str
    module: nn.Module
    in_key: Any
    in_shape: tuple[int, ...]
    out_key: Any
    out_shape: tuple[int, ...]
    out_what: str  # "" for a tensor (or the tensor of a recurrent/attention tuple), else what it was


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for v in list(args) + [kwargs.get(k) for k in ("input", "query", "x", "src", "hidden_states")]:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _output_tensor(module: nn.Module, out: Any) -> tuple[torch.Tensor | None, str]:
    if isinstance(out, torch.Tensor):
        return out, ""
    if isinstance(out, tuple) and out and isinstance(module, _FIRST_OF_TUPLE):
        if isinstance(out[0], torch.Tensor):
            return out[0], ""
        return None, f"output {type(out[0]).__name__} (e.g. a packed sequence), not a tensor"
    return None, f"output is a {type(out).__name__}, not a tensor"


def _record(model: nn.Module, example_input: Any, virtual: Sequence[str]) -> tuple[list[_Call], dict, Any]:
    """Every module call of one eval forward (completion order), the q/k/v shapes of
    ``virtual`` attention sites, and the model's output."""
    calls: list[_Call] = []
    qkv: dict[str, tuple[int, ...]] = {}
    alive: list[torch.Tensor] = []  # keeps ids unique while the record is read
    named = dict(_named_modules(model))

    def hook(path: str):
        def fn(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = _first_tensor(args, kwargs)
            y, what = _output_tensor(m, out)
            alive.extend(t for t in (x, y) if t is not None)
            calls.append(
                _Call(
                    path,
                    m,
                    None if x is None else tensor_key(x),
                    () if x is None else tuple(x.shape),
                    None if y is None else tensor_key(y),
                    () if y is None else tuple(y.shape),
                    what,
                )
            )

        return fn

    handles = [m.register_forward_hook(hook(p), with_kwargs=True) for p, m in named.items()]
    for site in virtual:

        def qkv_hook(m: nn.Module, args: tuple, kwargs: dict, _out: Any, site: str = site) -> None:
            q = args[0] if args else kwargs["query"]
            qkv.setdefault(site, tuple(q.shape) if m.batch_first else (q.shape[1], q.shape[0], *q.shape[2:]))

        handles.append(named[site.rsplit(":", 1)[0]].register_forward_hook(qkv_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, example_batch(example_input))
    except Exception as exc:  # noqa: BLE001 - the user's model or input: say which
        raise user_error(
            "example_input",
            detail=f"the model's forward pass failed on it ({type(exc).__name__}: {first_line(exc)})",
            allowed="one input batch the model accepts: a tensor, a tuple of positional arguments or a dict of "
            "keyword arguments",
            hint=_form_hint(example_input),
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    alive.clear()
    return calls, qkv, out
