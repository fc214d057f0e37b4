"""Figures of a search (matplotlib, Agg, no pyplot state): reward curves, entropy, method heatmap.

Figures use the object API (``Figure`` + ``savefig``) so plotting never changes a user's
backend or leaks open figures. The mask figure lives in ``masks.py`` (it needs torch).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .run import FAILED_STATUSES, SITE_PREFIX, Run

__all__ = ["plot_rewards", "plot_controller", "plot_method_heatmap", "plot_retrain", "moving_mean"]

log = logging.getLogger(__name__)
_DPI = 120


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (shorter at the start), NaNs ignored."""
    s = pd.Series(np.asarray(values, dtype=float))
    return s.rolling(window, min_periods=1).mean().to_numpy()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG at the results' common resolution (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def plot_rewards(df: pd.DataFrame, path: Path) -> Path:
    """Reward of every trial in completion order plus a moving mean, one colour per searcher."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    n_max = 0
    is_ref = df["reference"].astype(bool) if "reference" in df.columns else pd.Series(False, index=df.index)
    for j, (group, part) in enumerate(df[is_ref].groupby("group", sort=True)):
        ax.axhline(
            float(part["reward"].mean()),
            color=f"C{7 + j % 3}",
            ls=(":", "--", "-.")[j % 3],
            lw=1.2,
            label=f"{group} (hand-set)",
        )
    for i, (group, part) in enumerate(df[~is_ref].groupby("group", sort=True)):
        part = part.sort_values("order", kind="stable")
        x = np.arange(1, len(part) + 1)
        n_max = max(n_max, len(part))
        reward = part["reward"].astype(float).to_numpy()
        color = f"C{i}"
        window = max(3, len(part) // 8)
        ax.scatter(x, reward, s=14, alpha=0.45, color=color, label=f"{group}: reward per trial")
        ax.plot(x, moving_mean(reward, window), color=color, lw=2, label=f"{group}: moving mean ({window} trials)")
        failed = part["status"].isin(FAILED_STATUSES).to_numpy()
        if failed.any():
            ax.scatter(
                x[failed],
                np.nan_to_num(reward[failed], nan=0.0),
                marker="x",
                s=40,
                color="red",
                label=f"{group}: failed/diverged",
            )
    ax.set_title(f"Reward per trial ({_reward_words(df)})")
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel("reward")
    if n_max:
        ax.set_xlim(0.5, n_max + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides points
    return save_figure(fig, path)


def _reward_words(df: pd.DataFrame) -> str:
    o = df.attrs.get("objective")
    if o is None or o.transform == "identity":
        return o.metric if o is not None else "val_acc"
    return f"-{o.metric}" if o.transform == "negate" else f"-ln {o.metric}"


def plot_controller(runs: list[Run], path: Path) -> Path | None:
    """Controller entropy, and mean reward against the REINFORCE baseline, per update."""
    runs = [r for r in runs if r.searcher != "random" and len(r.history) and "entropy" in r.history.columns]
    if not runs:
        log.info("no controller_history.csv with entries: skipping the controller figure")
        return None
    fig = Figure(figsize=(8, 6.5))
    ax_ent, ax_rew = fig.subplots(2, 1, sharex=True)
    for i, run in enumerate(runs):
        h = run.history.sort_values("update", kind="stable")
        x = h["update"].to_numpy() if h["update"].notna().all() else np.arange(len(h))
        label = run.name if len(runs) > 1 else "controller"
        ax_ent.plot(x, h["entropy"], marker="o", ms=3, color=f"C{i}", label=f"{label}: entropy")
        ax_rew.plot(x, h["mean_reward"], marker="o", ms=3, color=f"C{i}", label=f"{label}: batch mean reward")
        if "baseline" in h.columns:
            ax_rew.plot(x, h["baseline"], ls="--", color=f"C{i}", label=f"{label}: baseline (EMA)")
    ax_ent.set_title("Controller policy entropy over updates")
    ax_ent.set_ylabel("policy entropy (nats)")
    ax_rew.set_title("Batch mean reward vs REINFORCE baseline")
    ax_rew.set_xlabel("controller update")
    ax_rew.set_ylabel("reward")
    for ax in (ax_ent, ax_rew):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_method_heatmap(df: pd.DataFrame, sites: list[str], path: Path, bins: int = 8) -> Path | None:
    """How often each method was chosen at each site over time: one heatmap panel per method.

    Rows are sites (model order), columns are equal-size chunks of the trials in completion
    order, colour is the share of the chunk's trials that chose the method at the site.
    """
    cols = [f"{SITE_PREFIX}{s}" for s in sites if f"{SITE_PREFIX}{s}" in df.columns]
    if "reference" in df.columns:  # the baselines are not a searcher's choice
        df = df[~df["reference"].astype(bool)]
    if not cols or not len(df):
        log.info("no per-site methods in trials.csv: skipping the method heatmap")
        return None
    df = df.sort_values("order", kind="stable")
    n_bins = max(1, min(bins, len(df)))
    chunk = np.array_split(np.arange(len(df)), n_bins)
    methods = sorted({str(m) for c in cols for m in df[c].dropna().unique()})
    fig = Figure(figsize=(2.2 * len(methods) + 1.5, 0.32 * len(cols) + 2.2))
    axes = np.atleast_1d(fig.subplots(1, len(methods), sharey=True))
    values = df[cols].astype(str).to_numpy()
    image = None
    for ax, method in zip(axes, methods):
        share = np.stack([(values[idx] == method).mean(axis=0) for idx in chunk], axis=1)
        image = ax.imshow(share, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("trials (chunk)")
        ax.set_xticks(range(n_bins), [f"{c[0] + 1}-{c[-1] + 1}" for c in chunk], rotation=90, fontsize=7)
    axes[0].set_yticks(range(len(cols)), [c[len(SITE_PREFIX) :] for c in cols], fontsize=8)
    axes[0].set_ylabel("site")
    fig.suptitle("Share of trials choosing each method, per site, over the search")
    fig.colorbar(image, ax=list(axes), label="share of trials in chunk", shrink=0.9)
    return save_figure(fig, path)


def plot_retrain(summary: pd.DataFrame, path: Path, test: str = "test_acc") -> Path:
    """Bar per plan: the mean test metric with one-standard-error bars over seeds."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(summary) + 2), 4.5))
    ax = fig.subplots()
    x = np.arange(len(summary))
    colors = ["C0" if str(p).startswith("searched") else "C7" for p in summary["plan"]]
    mean, err = summary[f"{test}_mean"], summary[f"{test}_se"].fillna(0.0)
    words = {"test_acc": "test accuracy", "test_ppl": "test perplexity"}.get(test, test)
    ax.bar(
        x,
        mean,
        yerr=err,
        capsize=5,
        color=colors,
        edgecolor="black",
        label=f"mean {words} +- 1 standard error over seeds",
    )
    for xi, m in zip(x, mean):
        ax.annotate(f"{m:.4g}", (xi, m), xytext=(0, 3), textcoords="offset points", ha="left", fontsize=8)
    lo, hi = float((mean - err).min()), float((mean + err).max())
    pad = max(0.01 * max(abs(hi), 1e-9), (hi - lo) * 0.3)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if test == "test_acc" else hi + pad)
    ax.set_xticks(x, summary["plan"], rotation=20, ha="right")
    ax.set_ylabel(words)
    ax.set_xlabel("plan")
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    ax.set_title(f"Retrained plans vs baselines ({seeds} seeds each, held-out test set)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
