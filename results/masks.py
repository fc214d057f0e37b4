"""Draw what a plan's regularizers actually drop, on a real image of the run's dataset.

Each regularizer is run (train mode, fixed seed) on a tensor of ones with the exact shape
of its real input inside the model: kept units come out rescaled (>= 1), dropped or
distorted ones ~0 (Disout's distortion scales with the input's variance, zero here).
The mask of channel 0 is stretched over the image and overlaid, so block size and
pattern geometry are seen at the scale the network sees. Sequence sites of Transformers
((N, T, C) states) are drawn as tokens x channels grids instead, where AutoDropout's
sequence patterns show as vertical bands (blocks of tokens) that are full height when
channels share the mask.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from search_space.baselines import site_shapes

from .plots import save_figure

__all__ = ["regularizer_masks", "plot_masks"]

log = logging.getLogger(__name__)


def regularizer_masks(
    model: nn.Module, x: Any, seed: int = 0, layouts: dict[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Boolean mask of the dropped/distorted units of one example, per site: (C, H, W) for
    image sites, (T, C) for sequence sites and 1-D maps (L, C). ``x`` is one example (a batch
    of 1 in the model's own layout: (1, C, H, W) images, (1, T) token ids). ``layouts``: the
    plan's site layouts (`search_space.layouts`); a layer told its layout knows it anyway, and
    otherwise a 4-D site is N,C,H,W and a 3-D one N,T,C (T,N,C for ``batch_first=False``).

    ``model`` must already carry a plan (``apply_plan`` without ``total_steps`` so the layers sit
    at their target probability). Sites of other layouts (volumes, features) are skipped.
    """
    from search_space.apply import regularizers, unwrap_regularizer
    from search_space.layouts import get_layout

    # The regularizers see the site's output; apply_plan's hook only runs them in training,
    # so shapes come from the site modules themselves. "<site>:residual" extras are not drawn.
    regs = {
        site: unwrap_regularizer(layer) for site, layer in regularizers(model).items() if not site.endswith(":residual")
    }
    inputs = site_shapes(model, list(regs), x)  # one example (a batch of 1, in the model's layout)
    masks: dict[str, np.ndarray] = {}
    for i, (site, layer) in enumerate(regs.items()):
        shape = inputs.get(site)
        name = (layouts or {}).get(site) or getattr(layer, "layout", None)
        if name is None and shape is not None:
            tokens = "NTC" if getattr(layer, "batch_first", True) else "TNC"
            name = {4: "NCHW", 3: tokens}.get(len(shape))
        lay = get_layout(name) if name else None
        if shape is None or lay is None or lay.rank != len(shape) or len(lay.spatial) not in (1, 2):
            log.info("site %s: output %s in layout %s is not a 2-D map or a sequence; not drawn", site, shape, name)
            continue
        shape = tuple(1 if a == lay.batch else d for a, d in enumerate(shape))  # one example
        torch.manual_seed(seed + i)
        layer.train()
        with torch.no_grad():
            out = lay.to_channels_first(layer(torch.ones(shape)))[0]  # (C, *spatial)
        layer.eval()
        out = out.T if len(lay.spatial) == 1 else out  # sequences as (T, C)
        # kept units come out >= 1 (ones rescaled by 1/kept fraction, whatever granularity the
        # layer rescales at); dropped ones ~0 (Disout's distortion is ~0 on a zero-variance input)
        masks[site] = (out.abs() < 0.5).numpy()
    return masks


def plot_masks(
    plan: Any, train_config: dict[str, Any], path: Path, seed: int = 0, max_sites: int = 11, image_index: int = 0
) -> Path | None:
    """Figure: the input image, then the image with each regularized site's mask overlaid (red = dropped).

    ``plan`` is a ``search_space.Plan``; ``train_config`` the run's TrainConfig dict (model, dataset).
    """
    from search_space import apply_plan

    active = {s: spec for s, spec in plan.sites.items() if spec.method != "none"}
    if not active:
        log.info("the plan regularizes no site: skipping the mask figure")
        return None
    from child_trainer.trial import model_and_example

    model, x, label, dataset = model_and_example(train_config, image_index, seed)
    apply_plan(model, plan)
    masks = regularizer_masks(model, x, seed=seed, layouts=plan.layouts)
    if masks and all(m.ndim == 2 for m in masks.values()):
        return _plot_sequence_masks(plan, active, masks, dataset, path, max_sites)
    img = x[0].permute(1, 2, 0).numpy()
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    gray = img.mean(axis=2) if img.shape[2] != 3 else None
    sites = [s for s in plan.sites if s in masks and masks[s].ndim == 3][:max_sites]
    n = len(sites) + 1
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.1 * ncols, 3.3 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    show = (
        (lambda ax: ax.imshow(gray, cmap="gray", interpolation="nearest"))
        if gray is not None
        else (lambda ax: ax.imshow(img, interpolation="nearest"))
    )
    show(axes[0])
    axes[0].set_title(f"input ({dataset}, label {label})", fontsize=9)
    for ax, site in zip(axes[1:], sites):
        mask = masks[site][0]
        show(ax)
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask] = (1.0, 0.1, 0.1, 0.6)
        # same extent as the image: a feature map of another resolution is stretched onto it
        ax.imshow(overlay, extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5), interpolation="nearest")
        ax.set_title(
            f"{site}\n"
            + "\n".join(textwrap.wrap(_compact(plan, site, active), 44))
            + f"\n{mask.shape[0]}x{mask.shape[1]} map, "
            f"{masks[site].mean():.0%} of units dropped (all channels)",
            fontsize=7,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(
        "Best plan's regularizer masks (channel 0) on a validation image; red = dropped/distorted", fontsize=10
    )
    return save_figure(fig, path)


def _compact(plan: Any, site: str, active: dict[str, Any]) -> str:
    return type(plan)({site: active[site]}).summary().split("=", 1)[1]  # e.g. dropout(p=.1)


_SEQ_COLORS = np.array([(0.93, 0.93, 0.93), (0.85, 0.1, 0.1)])  # kept, dropped


def _plot_sequence_masks(
    plan: Any, active: dict[str, Any], masks: dict[str, np.ndarray], dataset: str, path: Path, max_sites: int
) -> Path | None:
    """One panel per site: channels (rows) x tokens (columns) of one example, red = dropped.

    A sequence pattern shows as vertical bands every ``stride`` tokens, ``size`` wide, full
    height when channels share the mask (share_c); element-wise dropout as salt noise.
    """
    sites = [s for s in plan.sites if s in masks][:max_sites]
    ncols = min(3, len(sites))
    nrows = -(-len(sites) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.7))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, site in zip(axes, sites):
        mask = masks[site]  # (T, C)
        t, c = mask.shape
        ax.imshow(
            _SEQ_COLORS[mask.T.astype(int)],
            aspect="auto",
            interpolation="nearest",
            extent=(-0.5, t - 0.5, c - 0.5, -0.5),
        )
        ax.set_xlabel("token", fontsize=7)
        ax.set_ylabel("channel", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(
            f"{site}\n"
            + "\n".join(textwrap.wrap(_compact(plan, site, active), 52))
            + f"\n{t} tokens x {c} channels, {mask.mean():.0%} dropped",
            fontsize=7,
        )
    for ax in axes[len(sites) :]:
        ax.set_visible(False)
    fig.suptitle(f"Best plan's sequence masks on one {dataset} validation example; red = dropped", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path)
