"""`mammofl tune`: a bounded random search on the training data and its hold-out only.

Tiny phantom cells (tiny Swin, 32 px, 2 epochs, cached features): the search draws distinct
candidates, runs each for every seed, ranks them by hold-out AUROC, never opens a test set,
resumes without retraining, and names a faulty space file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from common.errors import ConfigError
from common.runs.tuning import (
    candidates,
    comparable_overrides,
    load_space,
    run_search,
    trial_config,
)

BASE = [
    "experiment=table1/real_eps6",
    "data=phantom",
    "model=tiny_swin",
    "data.image_size=32",
    "train.engine=cached",
    "train.epochs=2",
    "train.batch_size=16",
]


def _space(tmp_path: Path, **extra: object) -> Path:
    space = {
        "base": BASE,
        "seeds": [42, 43],
        "trials": 2,
        "draw_seed": 3,
        "axes": {
            "lr": ["train.lr=1e-3", "train.lr=1e-2"],
            "recipe": [
                "model.head=linear",
                "model.head=linear train.augmentation_multiplicity=4 train.ema_decay=0.9",
            ],
        },
        **extra,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_search_ranks_candidates_on_the_holdout_and_resumes(
    phantom_env: Path, tmp_path: Path
) -> None:
    space = load_space(str(_space(tmp_path)))
    chosen = candidates(space)
    assert len(chosen) == 2 and chosen[0] != chosen[1]
    assert candidates(space) == chosen  # the draw is seeded
    # the test set exists in the config but is dropped before any data is loaded
    config = trial_config(space, chosen[0], 42, [])
    assert config.data.tests == {}
    unreadable = ["data.tests.phantom_test.path=/nonexistent/test"]
    out = tmp_path / "search"
    summary = run_search(space, unreadable, out)
    assert summary["cell_runs"] == 4 and summary["cell_runs_this_call"] == 4
    assert summary["privacy_note"].startswith(
        "each run's epsilon covers that run only: this search read the same records in 4 runs"
    )
    table = pd.read_csv(out / "tune.csv")
    assert len(table) == 2 and table["seeds"].tolist() == [2, 2]
    assert table["holdout_auroc_mean"].is_monotonic_decreasing
    for trial in (out / "trials").rglob("seed*.json"):
        record = json.loads(trial.read_text())
        assert 0 < record["epsilon_spent"] <= 6 and 0 <= record["holdout_auroc"] <= 1
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("seed*.json")}
    again = run_search(space, unreadable, out)
    assert again["cell_runs_this_call"] == 0 and again["best"] == summary["best"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # where the feature cache lives is not part of the search
    elsewhere = run_search(space, ["train.feature_cache_dir=/x", *unreadable], out)
    assert elsewhere["cell_runs_this_call"] == 0
    # another search in the same folder would silently reuse these trials: refused, by name
    with pytest.raises(ConfigError, match=r"holds another search \(overrides: .*train\.epochs=3"):
        run_search(space, [*unreadable, "train.epochs=3"], out)


def test_a_candidate_that_cannot_run_is_recorded_and_ranked_last(
    phantom_env: Path, tmp_path: Path
) -> None:
    axes = {"batch": ["train.batch_size=100000", "train.batch_size=16"]}
    space = load_space(str(_space(tmp_path, axes=axes, seeds=[42])))
    summary = run_search(space, [], tmp_path / "search")
    table = pd.read_csv(tmp_path / "search" / "tune.csv")
    assert table["batch"].tolist() == ["train.batch_size=16", "train.batch_size=100000"]
    assert "larger than the training set" in table["failed"].iloc[1]
    assert summary["failed_candidates"] == 1
    assert summary["best"]["batch"] == "train.batch_size=16"


def test_a_search_that_wrote_no_trial_does_not_hold_its_folder(tmp_path: Path) -> None:
    """A search stopped on its first trial (a data error) kept its folder: the corrected
    command was refused as "another search"."""
    from common.runs.tuning import _check_same_search

    space = load_space(str(_space(tmp_path, seeds=[42])))
    out = tmp_path / "search"
    out.mkdir()
    _check_same_search(out, space, ["experiment=tiny"])
    _check_same_search(out, space, [])  # nothing ran: the corrected search takes the folder
    (out / "trials" / "c1").mkdir(parents=True)
    (out / "trials" / "c1" / "seed42.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds another search"):
        _check_same_search(out, space, ["experiment=tiny"])


def test_a_faulty_space_names_its_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"space\.yaml"):
        load_space(str(_space(tmp_path, trials="many")))
    with pytest.raises(ConfigError, match="known"):
        load_space("no_such_space")
    assert load_space("dp_eps6").size == 384  # the shipped space parses


def test_a_resume_compares_overrides_as_a_set_unless_a_key_repeats() -> None:
    assert comparable_overrides(["b=1", "a=2", "train.feature_cache_dir=/c"]) == ["a=2", "b=1"]
    assert comparable_overrides(["a=1", "b=2"]) == comparable_overrides(["b=2", "a=1"])
    assert comparable_overrides(["a=1", "a=2"]) != comparable_overrides(
        ["a=2", "a=1"]
    )  # the last one wins
    # a dict value merges into the node: data.real.path= before or after data.real= differs
    nested = ["data.real.path=b", "data.real={format:patchset,path:a}"]
    assert comparable_overrides(nested) != comparable_overrides(list(reversed(nested)))


def test_a_typo_in_an_axis_or_override_stops_the_search_before_any_trial(
    tmp_path: Path,
) -> None:
    """Every trial of a misspelt key failed, was saved as a failure, and the search exited 0;
    a file that is no YAML gave a yaml traceback without its name."""
    axes = {"lr": ["train.lr=1e-3", "train.lrr=1e-2"]}
    space = load_space(str(_space(tmp_path, axes=axes, seeds=[42])))
    with pytest.raises(ConfigError, match=r"candidate train\.lrr=1e-2: .*train\.lrr"):
        run_search(space, [], tmp_path / "search")
    assert not (tmp_path / "search").exists()  # no search.json: the fixed search may run there
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        run_search(load_space(str(_space(tmp_path))), ["train.epochz=3"], tmp_path / "s2")
    broken = tmp_path / "broken.yaml"
    broken.write_text("axes: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_space(str(broken))
