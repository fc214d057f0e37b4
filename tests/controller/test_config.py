"""One SearchConfig from the command line to the run folder: the flags are its fields, it
round-trips through search_config.json, a resume takes only code from its caller, and a
setting added in one place (max_redraws) reaches --help, run_search, the file and a resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import pytest

from controller.config import RunConfig, SearchConfig
from controller.run_folder.settings import config_json, read_config, resume_settings, write_config
from search_space import Plan, SearchSpace

SPACE = SearchSpace([("s1", ["s1"]), ("s2", ["s2"])], model="m")
#: A value other than the default for every setting.
OTHER = dict(
    num_samples=9, search="tpe", reward_seeds=2, baselines=("none", "dropout"), learned_rates=False, tuned_trials=4,
    final_top_k=1, final_stage="fixed", final_budget=40, final_seeds=4, race_start_seeds=3, race_growth="x2",
    race_alpha=0.1, confirm_seeds=6, confirm_baselines=1, confirm_max=2, seed=7, max_concurrent=2,
    cpus_per_trial=0.5, gpus_per_trial=0.25, scheduler="asha",
    max_epochs=5, trial_timeout=60.0, max_failures=1, penalty_reward=0.1, controller_batch=3, controller_lr=0.02,
    controller_kwargs={"hidden_size": 16}, max_redraws=3, metric="val_loss", mode="min", reward_transform="negate",
    sites=("a", "b.*"), layouts={"b.*": "NHWC"}, methods=("none", "dropout"), model_name="mine", child="my.py:train",
    train={"model": "digits_cnn", "epochs": 5}, extra={"note": "hello"},
)  # fmt: skip


def test_every_setting_round_trips_through_search_config_json():
    assert set(OTHER) == {f.name for f in dataclasses.fields(SearchConfig)}  # OTHER covers them all
    config = SearchConfig(**OTHER)
    assert all(getattr(config, k) != f.default for k, f in SearchConfig.__dataclass_fields__.items())
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    plans = SearchConfig(baselines={"mine": Plan.none(SPACE.sites, model="m")})  # from Python: plans
    assert SearchConfig.from_dict(json.loads(json.dumps(plans.to_dict()))) == plans
    with pytest.raises(ValueError, match="bogus: not a setting of this version"):
        SearchConfig.from_dict({"bogus": 1})


def test_the_command_flags_are_the_fields_with_their_help():
    import launch_search

    parser = launch_search.build_parser()
    text = re.sub(r"\s+", "", parser.format_help())  # argparse wraps lines, also at hyphens
    own = {"-h", "--help", "--resume", "--describe", *(f"--{k.replace('_', '-')}" for k in launch_search.TRAIN_FLAGS)}
    fields = [f for cls in (SearchConfig, RunConfig) for f in dataclasses.fields(cls) if f.metadata["flag"]]
    assert parser.flags - own == {"--" + f.name.replace("_", "-") for f in fields}
    for f in fields:
        assert re.sub(r"\s+", "", f.metadata["help"]) in text, f.name
    args = parser.parse_args(["--baselines", "none, dropout", "--tuned-trials", "4", "--sites", "a,b"])
    assert (args.baselines, args.tuned_trials, args.sites, args.final_top_k) == (("none", "dropout"), 4, "a,b", 3)
    assert (args.final_stage, args.final_budget) == ("race", "auto")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples: bad value 0; allowed: an integer in [1, 1000000]"),
        ({"baselines": ("none", "none")}, "baselines: bad value 'none,none'; allowed: distinct names"),
        ({"baselines": ("cutout",)}, "baselines: bad value 'cutout'; allowed: none, dropout, dropblock, disout"),
        ({"tuned_trials": 16}, "tuned_trials: bad value 16; allowed: an integer in [0, 15]"),
        ({"scheduler": "asha"}, "max_epochs: bad value None"),
        ({"max_redraws": -1}, "max_redraws: bad value -1"),
        (
            {"final_top_k": 2, "final_stage": "fixed", "final_seeds": 0},
            "final_seeds: bad value 0; allowed: at least 1 when final_top_k > 0",
        ),
        ({"final_stage": "top-k"}, "final_stage: bad value 'top-k'; allowed: race, fixed"),
        ({"final_budget": -1}, "final_budget: bad value -1"),
        ({"race_growth": "x1"}, "race_growth: bad value 'x1'"),
        ({"race_start_seeds": 1}, "race_start_seeds: bad value 1; allowed: an integer >= 2"),
        ({"race_alpha": 1.5}, "race_alpha: bad value 1.5"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SearchConfig(**kwargs)


def test_a_setting_added_in_one_place_reaches_help_run_search_the_file_and_a_resume(tmp_path):
    """max_redraws is one field of SearchConfig (it was the constant MAX_REDRAWS)."""
    import launch_search
    from controller import run_search
    from controller.api import _configs
    from controller.policies import RandomSearcher
    from controller.run_folder.resume import check_resumable, searcher_from_config

    parser = launch_search.build_parser()
    assert (
        "--max-redraws MAX_REDRAWS" in parser.format_help()
        and parser.parse_args(["--max-redraws", "3"]).max_redraws == 3
    )
    with pytest.raises(ValueError, match="max_redraws: bad value -1"):  # run_search takes it (and checks it)
        run_search(lambda: None, lambda *a: None, max_redraws=-1, storage_path=tmp_path)
    config, _, given = _configs(None, None, {"max_redraws": 3, "seed": 2})
    assert config.max_redraws == 3 and given == {"max_redraws": 3, "seed": 2}
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, config_json(config, space=SPACE, baselines={}, tuned={}))
    assert json.loads((run / "search_config.json").read_text())["settings"]["max_redraws"] == 3
    resumed = resume_settings(check_resumable(run), {})
    assert resumed.max_redraws == 3
    searcher = searcher_from_config(resumed, json.loads((run / "search_config.json").read_text()), run)
    assert searcher.settings.max_redraws == 3 and searcher.sampled.settings is searcher.settings
    # and what it does: with 0 redraws the policy's repeat is trained at once, with 3 it is drawn again
    for redraws, expect in ((0, 1), (3, 2)):
        s = RandomSearcher(SPACE, num_samples=2, seed=0, settings=SearchConfig(max_redraws=redraws))
        a, b = (SPACE.encode(SPACE.uniform_plan("dropout", drop_prob=p, ramp=0.0)) for p in (0.1, 0.2))
        draws = iter([a, a, b])
        s._sample_tokens = lambda trial_id, draws=draws: next(draws)
        plans = {s.suggest(t)["plan"].to_json() for t in ("a", "b")}
        assert len(plans) == expect


def test_a_resume_takes_only_code_from_its_caller(caplog):
    saved = SearchConfig(child="mine.py:train", train={"model": "pkg.nets:build", "epochs": 2}, num_samples=5)
    with pytest.raises(ValueError, match=r"child: bad value None; allowed: the child this run was started with"):
        resume_settings(saved, {})
    with pytest.raises(ValueError, match=r"model: bad value None; allowed: the model this run was started with"):
        resume_settings(saved, {"child": "mine.py:train"})
    with caplog.at_level(logging.WARNING):
        got = resume_settings(
            saved,
            {"child": "/abs/mine.py:train", "train": {"model": "pkg.nets:build", "epochs": 9}, "num_samples": 99},
        )
    assert got.child == "/abs/mine.py:train" and got.train == saved.train and got.num_samples == 5
    assert "ignoring epochs, num_samples" in caplog.text  # told, not silently dropped
    assert resume_settings(SearchConfig(num_samples=5), {"num_samples": 5}) == SearchConfig(num_samples=5)


def test_keywords_build_the_configs_over_given_ones():
    from controller.api import _configs

    config, run, given = _configs(
        SearchConfig(num_samples=4), None, {"search": "tpe", "resources_per_trial": {"cpu": 2}, "name": "x"}
    )
    assert (config.num_samples, config.search, config.cpus_per_trial, run.name) == (4, "tpe", 2, "x")
    assert given == {"num_samples": 4, "search": "tpe", "cpus_per_trial": 2, "gpus_per_trial": None}
    with pytest.raises(TypeError, match="bogus: not a setting of run_search"):
        _configs(None, None, {"bogus": 1})
    with pytest.raises(ValueError, match="resources_per_trial: bad value 'tpu'"):
        _configs(None, None, {"resources_per_trial": {"tpu": 1}})


def test_a_version_4_folder_reads_back_what_was_written(tmp_path):
    config = SearchConfig(**{**OTHER, "child": None, "train": None})
    started = config_json(config, space=SPACE, baselines={"none": Plan.none(SPACE.sites, model="m")}, tuned={})
    assert read_config(json.loads(json.dumps(started))) == config
    # a fixed stage: its finalists (none, searched#1) each on final_seeds seeds
    assert started["reward_seeds"] == [7, 8] and started["final_seeds"] == [1007, 1008, 1009, 1010]
    race = config_json(config.replace(final_stage="race"), space=SPACE, baselines={"none": Plan.none(SPACE.sites)},
                       tuned={})  # fmt: skip
    assert race["final_seeds"] == list(range(1007, 1007 + 40))  # the race's pool: its budget
    assert started["objective"] == {"metric": "val_loss", "mode": "min", "transform": "negate"}


def test_flags_of_any_config_dataclass_parse_by_type():
    """What the next settings will get: a bool is --x / --no-x, an int is checked as one."""
    from controller.config import add_flags, setting
    from search_space.errors import OneLineParser

    @dataclasses.dataclass(frozen=True)
    class Extra:
        learned: bool = setting(True, "a switch")
        rounds: int = setting(3, "a count")
        hidden: int = setting(0, "not on the command line", flag=False)

    parser = OneLineParser(prog="p")
    assert add_flags(parser, Extra) == ["learned", "rounds"]
    args = parser.parse_args(["--no-learned", "--rounds", "5"])
    assert (args.learned, args.rounds) == (False, 5) and parser.parse_args([]).learned is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--rounds", "x"])
