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
