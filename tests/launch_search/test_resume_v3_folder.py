"""A run folder written by the code before SearchConfig (search_config.json version 3,
tests/fixtures/v3-run: interrupted with 4 of its 10 final re-trainings done) still resumes,
and its settings read back as they were given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controller import run_folder as rf
from controller.config import SearchConfig
from controller.run_folder.resume import check_resumable, searcher_from_config
from controller.run_folder.settings import read_config
from tests.helpers import CHILDREN

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v3-run"
#: What the code of the fixture's own commit ran on resume (tests/fixtures/README.md).
REMAINING = [("tuned-dropout", "ec39af3b"), ("tuned-dropblock", "daea49da"), ("searched#1", "6e7abc63")]
SEEDS = [1005, 1006]


@pytest.fixture
def v3_run(tmp_path: Path) -> Path:
    """A copy of the fixture (a resume writes to its folder)."""
    shutil.copytree(FIXTURE, tmp_path / "v3-run")
    return tmp_path / "v3-run"


def test_its_settings_read_back_as_given():
    config = json.loads((FIXTURE / rf.SEARCH_CONFIG).read_text())
    assert config["version"] == 3
    s = read_config(config)
    given = dict(num_samples=8, search="random", seed=5, reward_seeds=1, final_top_k=1, final_seeds=2,
                 baselines=("none", "dropout"), tuned_trials="auto", controller_batch=2, controller_lr=0.05,
                 max_concurrent=1, max_epochs=1, sites="stage", cpus_per_trial=1.0, scheduler="fifo")  # fmt: skip
    assert {k: getattr(s, k) for k in given} == given
    assert (s.metric, s.mode, s.penalty_reward, s.model_name) == ("val_acc", "max", 0.1, "digits_cnn")
    assert s.child.endswith("tests/helpers/children.py:quick") and s.train == config["train"]
    assert s.max_redraws == SearchConfig().max_redraws  # a setting the folder predates: its default
    assert check_resumable(FIXTURE) == s


@pytest.mark.parametrize("shape", ["command", "api"])
def test_its_final_stage_resumes_where_it_stopped(v3_run, shape):
    """Without Ray: the searcher rebuilt from the folder runs exactly the final re-trainings
    the old code ran. ``api``: the same folder as run_search wrote it (no args, no train)."""
    config = json.loads((v3_run / rf.SEARCH_CONFIG).read_text())
    if shape == "api":
        config = {k: v for k, v in config.items() if k not in ("args", "train")}
        (v3_run / rf.SEARCH_CONFIG).write_text(json.dumps(config))
    settings = check_resumable(v3_run)
    if shape == "api":  # the plans run_search saved, and no code to import
        assert settings.child is None and settings.baselines.keys() == {"none", "dropout"}
    else:
        assert settings.child and settings.baselines == ("none", "dropout")
    searcher = searcher_from_config(settings, config, v3_run)
    searcher.resume()
    assert (searcher.finished, searcher.total_trials) == (14, 20)
    runs = []
    while isinstance(cfg := searcher.suggest(f"r{len(runs)}"), dict):
        runs.append((cfg["label"], searcher._pending[f"r{len(runs)}"]["source"], cfg["seeds"]))
    assert cfg == searcher.FINISHED
    assert runs == [(label, source, [seed]) for label, source in REMAINING for seed in SEEDS]


def test_the_command_resumes_it_to_the_end(ray_session, v3_run, capsys):
    import launch_search

    before = (v3_run / rf.SEARCH_CONFIG).read_text()
    argv = ["--storage-path", str(v3_run.parent), "--name", "v3-run", "--resume", "--child", f"{CHILDREN}:quick"]
    assert launch_search.main(argv) == 0
    finals = rf.read_json(v3_run / rf.RUN_STATE)
    assert finals["status"] == "finished" and finals["completed"] == 20
    assert finals["exported"] == {"label": "none", "kind": "baseline", "selected_by": "final"}
    from controller.run_folder.ledger import read_rows

    rows = read_rows(v3_run / rf.FINAL_TRIALS)
    first = read_rows(FIXTURE / rf.FINAL_TRIALS)
    assert rows[:4] == first  # appended, never rewritten
    assert [(r["label"], r["source"], int(r["seed"])) for r in rows[4:]] == [
        (label, source, seed) for label, source in REMAINING for seed in SEEDS
    ]
    assert len(read_rows(v3_run / rf.TRIALS)) == 10  # no search-stage trial ran again
    assert (v3_run / rf.SEARCH_CONFIG).read_text() == before  # a resume never rewrites how the run started
    assert "Verdict:" in capsys.readouterr().out
