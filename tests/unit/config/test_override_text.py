"""Overrides as a shell user types them: Hydra's grammar refused non-ASCII and `~` paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config.compose import compose_config, compose_federated_config
from common.config.override_text import readable_override
from common.errors import ConfigError
from simulations.cli import main


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("out_dir=/data/hôpital", "out_dir='/data/hôpital'"),
        ("out_dir=/data/l'hôpital", 'out_dir="/data/l\'hôpital"'),
        ("out_dir=~/runs", f"out_dir='{os.path.expanduser('~')}/runs'"),
        ("out_dir=/data/a b", "out_dir=/data/a b"),  # Hydra reads it: unchanged
        ("seeds=[42,43]", "seeds=[42,43]"),
        ("name='séance'", "name='séance'"),  # quoted by the user
        ("~data.tests", "~data.tests"),  # Hydra's delete
        ("experiment=federated/tiny", "experiment=federated/tiny"),
    ],
)
def test_only_what_hydra_cannot_read_is_quoted(override: str, expected: str) -> None:
    assert readable_override(override) == expected


def test_a_hospitals_path_with_accents_and_a_home_path_compose(tmp_path: Path) -> None:
    assert compose_config(["out_dir=/data/hôpital-nord"]).out_dir == "/data/hôpital-nord"
    home = compose_federated_config(["out_dir=~/runs/fed"]).out_dir
    assert home == os.path.join(os.path.expanduser("~"), "runs/fed")
    # a value in Hydra's own syntax is still Hydra's to explain
    with pytest.raises(ConfigError, match="seeds"):
        compose_config(["seeds=[42,é]"])


def test_the_command_line_takes_an_accented_out_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hôpital"
    assert main(["plan", "experiment=tiny", f"out_dir={out}"]) == 0
    assert "error" not in capsys.readouterr().err


def test_the_output_check_probes_the_home_folder_the_run_will_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train out_dir=~/runs` checked a folder named `~` here, then wrote to the home."""
    from common.errors import OutputError
    from simulations.cli import check_output_folders

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").write_text("a file, not a folder")
    with pytest.raises(OutputError, match=str(tmp_path / "runs")):
        check_output_folders("train", ["out_dir=~/runs"])


@pytest.mark.parametrize(
    "args",
    [
        ["gan", "train", "gan_preset=dp", "gan_preset=tiny"],  # trained without DP
        ["plan", "experiment=table1/real_eps6", "experiment=table1/real"],
        ["plan", "privacy.target_epsilon=6", "+privacy.target_epsilon=600"],
        ["table1", "seeds=[1]", "seeds=[2]"],
        ["prepare", "abnormality=calc", "abnormality=mass"],
    ],
)
def test_a_key_given_twice_is_refused_not_the_last_one_taken(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert "is given twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["certs", "out_dir=", "sites=[a]"],  # wrote the CA key into the current folder
        ["prepare", "source=manifest", "root=/x", "out_dir="],
        ["train", "experiment=tiny", "data.real.path="],  # was an AssertionError
        ["phantom-patches", "out_dir=''"],
    ],
)
def test_an_empty_path_is_refused_not_the_current_folder(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # where an empty path would write
    assert main(args) == 2
    assert list(tmp_path.iterdir()) == []
    assert "is empty: give a path" in capsys.readouterr().err


def test_own_options_read_quotes_and_home_as_hydra_overrides_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`certs out_dir='~/certs'` wrote ./~/certs (CA key included); `out_dir="/a b"` made a
    folder named with its quotes."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["certs", "out_dir='~/certs'", "sites=[a]"]) == 0
    assert (tmp_path / "home" / "certs" / "ca.pem").is_file() and not (tmp_path / "~").exists()
    quoted = f'out_dir="{tmp_path / "pp q"}"'
    assert main(["phantom-patches", quoted, "patients=4", "test_patients=2", "size=16"]) == 0
    assert (tmp_path / "pp q" / "train" / "manifest.csv").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "experiment=tiny", "seed=-1"], "seed=-1: a seed is a whole number in"),
        (["plan", "seed=4294967296"], "seed=4294967296: a seed"),
        (["federate", "experiment=federated/tiny", "phantom.seed=-1"], "phantom.seed=-1"),
        (["prepare", "source=manifest", "root=/x", "seed=-1"], "seed=-1"),
        (["table1", "rows=[real]", "seeds=[-1]"], "seeds=[-1]"),
        (["gan", "train", "model.image_size=0"], "image_size=0: an image size is at least 8"),
        (["federate", "site_data.image_size=0", "gan.model.image_size=0"], "image_size=0"),
        (["prepare", "source=manifest", "root=/x", "test_fraction=1.5"], "test_fraction=1.5"),
    ],
)
def test_out_of_range_values_are_refused_before_any_work(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative seed crashed `federate` after its rounds had spent the sites' budgets;
    prepare checked its fractions after cutting every patch."""
    out = tmp_path / "out"
    assert main([*args, f"out_dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_command_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian' (did you mean train?)" in capsys.readouterr().err
