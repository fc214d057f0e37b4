"""The columns of every CSV file in the run folder, in their order.

Writers and readers (the ledgers, ``final.csv``, ``python -m results``) take the columns from
here; the ones that name the metric are functions of the run's `Objective`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.run_folder.objective import Objective

#: ``trials``: the trial ids whose rewards this update used (JSON list).
HISTORY_COLUMNS = ["update", "step", "trials_seen", "mean_reward", "baseline", "entropy", "loss", "time", "trials"]
FINAL_COLUMNS = [
    "label",
    "kind",
    "trial_id",
    "seeds",
    "mean",
    "se",
    "values",
    "complete",
    "best_baseline",
    "diff_vs_best_baseline",
    "diff_se",
    "diff_ci95_low",
    "diff_ci95_high",
    "p_value",
    "paired_seeds",
    "comparison",
    "chosen",
    # the race (controller.race; empty for a final stage of fixed seeds): how the plan left the
    # race, then the confirmation on fresh seeds against best_baseline, which decides the export
    "left",
    "left_reason",
    "confirm_seeds",
    "confirm_values",
    "confirm_mean",
    "confirm_vs",
    "confirm_diff",
    "confirm_ci95_low",
    "confirm_ci95_high",
    "confirm_p",
    "confirm_p_holm",
    "confirm_word",
    "methods",
    "plan_json",
]
#: final_trials.csv: one final re-training (one finalist, one fresh seed).
FINAL_TRIAL_COLUMNS = [
    "trial_id",
    "order",
    "label",
    "seed",
    "source",
    "searcher",
    "status",
    "value",
    "error",
    "seconds",
    "node",
    "precision",
    "epochs",
    "plan_json",
    "methods",
]


def trial_columns(objective: Objective) -> list[str]:
    """trials.csv's columns before the per-site ones.

    ``kind`` is baseline (hand-set), tuned (a global recipe's grid point) or searched;
    ``baseline`` names a baseline's label (``tuned-<method>`` for tuned ones; empty for
    searched plans); ``reference`` is 1 for both (they never enter a controller update; which
    update a searched trial reached is in controller_history.csv's ``trials``). The metric's
    column holds the final value (mean over the reward seeds), ``<metric>_se`` its standard
    error and ``<metric>_seeds`` every seed's value (JSON list); ``learned_rates`` the rate per
    site of the ``learned`` baseline (JSON; ``controller.learned``), empty for the others.
    """
    m = objective
    return [
        "trial_id",
        "order",
        "searcher",
        "kind",
        "baseline",
        "status",
        m.metric,
        m.se_column,
        m.seeds_column,
        m.best_column,
        "reward",
        "error",
        "seconds",
        "node",
        "precision",
        "epochs",
        "plan_json",
        "methods",
        "reference",
        "tokens",
        "learned_rates",
    ]


def test_metric(objective: Objective) -> str:
    """The test split's name for the search metric: val_acc -> test_acc, val_ppl -> test_ppl."""
    return "test_" + objective.metric.removeprefix("val_")


def retrain_trial_columns(objective: Objective) -> list[str]:
    """retrain_trials.csv, the retrain's ledger: one finished training per line, in the order
    they finished. A training is known by ``plan_hash`` (of ``search_space.plan.plan_key``) and
    ``seed`` under the ``recipe`` (a hash of retrain_recipe.json); ``plan`` and ``kind`` are
    the label it was trained under. ``status`` is the child's (ok, diverged, failed); ``task_id``
    and ``node``: the Ray task that trained it and where."""
    return [
        "plan_hash",
        "seed",
        "recipe",
        "plan",
        "kind",
        "status",
        test_metric(objective),
        objective.metric,
        "epochs",
        "seconds",
        "message",
        "train_size",
        "task_id",
        "node",
        "time",
        "plan_json",
    ]


def retrain_columns(objective: Objective) -> list[str]:
    """retrain.csv: one row per plan and seed of the retrain, plans in their order, then seeds.
    ``same_as``: the plan's other names (trained once); ``fresh``: a seed the search never used."""
    return [
        "plan",
        "kind",
        "same_as",
        "fresh",
        "seed",
        "train_size",
        "status",
        test_metric(objective),
        objective.metric,
        "epochs",
        "seconds",
        "message",
        "summary",
    ]


#: retrain_summary.csv's comparison with the best baseline, after ``best_baseline``.
COMPARISON_COLUMNS = (
    "diff_vs_best_baseline",
    "diff_ci95_low",
    "diff_ci95_high",
    "p_value",
    "paired_seeds",
    "comparison_uncorrected",
    "holm_family",
    "holm_rejected",
    "comparison",
)


def retrain_summary_columns(objective: Objective) -> list[str]:
    """retrain_summary.csv: one row per plan. ``<test>`` is "mean +- se"; the paired comparison
    with the best baseline on test (positive = better) gives ``diff_*``, ``p_value`` and
    ``comparison_uncorrected`` (that comparison alone); ``comparison`` is the word after Holm's
    correction over the ``holm_family`` comparisons the retrain made (``holm_rejected``)."""
    test = test_metric(objective)
    return [
        "plan",
        test,
        "kind",
        "seeds",
        "ok",
        f"{test}_mean",
        f"{test}_std",
        f"{test}_se",
        f"{objective.metric}_mean",
        "summary",
        "best_baseline",
        *COMPARISON_COLUMNS,
    ]
