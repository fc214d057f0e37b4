"""One voice for every error a user can cause: one base class, one helper, one wording."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from child_trainer.data import DataError
from launch_search import UsageError
from results.run import RunError, open_run
from search_space import Plan
from search_space.errors import FieldError, UserError, say, user_error
from search_space.layers import SequenceDropout, SpatialDropout
from search_space.plan import PlanError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls", [FieldError, PlanError, RunError, UsageError, DataError])
def test_every_user_error_class_shares_the_base_and_is_a_value_error(cls: type) -> None:
    assert issubclass(cls, UserError) and issubclass(cls, ValueError)


def test_the_helper_words_field_detail_sentence_and_hint() -> None:
    assert say("epochs", 0, "an integer >= 1") == "epochs: bad value 0; allowed: an integer >= 1"
    assert say("plan.x", allowed="[a]", detail="unknown field") == "plan.x: unknown field; allowed: [a]"
    assert say("", detail="run directory not found: r", hint="pass a run") == "run directory not found: r; pass a run"
    assert say("v", "x" * 100).startswith("v: bad value 'xxx") and len(say("v", "x" * 100)) < 100
    err = user_error("epochs", 0, "an integer >= 1", hint="try --epochs 30")
    assert type(err) is FieldError and str(err) == "epochs: bad value 0; allowed: an integer >= 1; try --epochs 30"
    flag = err.renamed("--epochs")
    assert str(flag) == "--epochs: bad value 0; allowed: an integer >= 1; try --epochs 30" and flag.field == "--epochs"
    run = user_error(detail="not a search run: x", cls=RunError)
    assert isinstance(run, RunError) and str(run) == "not a search run: x" and run.field == ""
    plan = user_error("plan.model", 3, "a string", cls=PlanError)
    assert isinstance(plan, PlanError) and (plan.field, plan.value, plan.allowed) == ("plan.model", 3, "a string")
    with pytest.raises(TypeError):
        user_error()  # neither a field nor a sentence: a bug in the caller, not the user's


def test_the_python_api_raises_user_errors_in_the_one_wording(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"^plan\.ramp_fraction: bad value 2; allowed: a number in \[0, 1\]$"):
        Plan({}, ramp_fraction=2)
    with pytest.raises(PlanError, match=r"^sites\['a'\]\.method: bad value 'drop'; allowed: \["):
        Plan.from_dict({"format_version": 1, "sites": {"a": {"method": "drop", "params": {}}}})
    with pytest.raises(FieldError, match=r"^algorithm: bad value 'fast'; allowed: one of \['auto', 'reference'\]$"):
        SpatialDropout(algorithm="fast")
    with pytest.raises(UserError, match=r"^SequenceDropout input: bad value rank 2 \(shape \(4, 4\)\); allowed: rank"):
        SequenceDropout()(__import__("torch").zeros(4, 4))
    with pytest.raises(RunError, match=r"^run directory not found: .*; pass the folder launch_search\.py wrote"):
        open_run(tmp_path / "nope")


# Where every raise of a user error goes through `user_error`: every module but the helper
# itself (search_space/errors.py); see CONTRIBUTING.md.
CONVERTED = [
    *(p for p in sorted((ROOT / "search_space").glob("*.py")) if p.name != "errors.py"),  # errors.py: the helper
    *sorted((ROOT / "search_space" / "layers").glob("*.py")),
    *sorted((ROOT / "child_trainer").glob("*.py")),
    *sorted((ROOT / "controller").glob("*.py")),
    *sorted((ROOT / "controller" / "run_folder").glob("*.py")),
    *sorted((ROOT / "results").glob("*.py")),
    ROOT / "launch_search.py",
]
HAND_MADE = re.compile(r"raise (ValueError|TypeError|FieldError|PlanError|RunError|UserError)\(")


@pytest.mark.parametrize("path", CONVERTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_converted_modules_raise_only_through_the_helper(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not HAND_MADE.findall(text), f"{path.name}: raise user errors with search_space.errors.user_error"
