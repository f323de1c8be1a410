"""A folder a command writes into is checked before any work: `mammofl train` found an
out_dir that was a file only after training (the run and, under DP, its epsilon lost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.cli import main


@pytest.mark.parametrize(
    "command",
    [
        ["train", "experiment=tiny"],
        ["table1", "rows=[real]"],
        ["federate", "prepare_only=true"],
        ["phantom-patches"],
        ["certs", "sites=[a,b]"],
        ["loopback"],
    ],
)
def test_an_output_folder_that_cannot_be_written_stops_the_command_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    key = "work_dir" if command[0] == "loopback" else "out_dir"
    assert main([*command, f"{key}={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"{key}={blocker / 'run'} cannot be written" in err and "is a file" in err
    assert list(tmp_path.iterdir()) == [blocker]  # nothing created, nothing trained


def test_a_broken_result_json_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "result.json").write_text("{oops")
    assert main(["train", "experiment=tiny", f"out_dir={tmp_path}"]) == 2
    assert "result.json cannot be read" in capsys.readouterr().err


def test_table1_without_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table1", "rows=[]", f"out_dir={tmp_path / 't'}"]) == 2
    assert "rows=[]: name at least one row" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{oops", "not a readable run record"), ('{"tests": {}}', "holds no run config")],
)
def test_evaluate_names_a_run_folder_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    (tmp_path / "result.json").write_text(content)
    assert main(["evaluate", f"run_dir={tmp_path}", f"patches={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_refuses_a_name_that_leaves_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", f"run_dir={tmp_path}", f"patches={tmp_path}", "name=../../x"]) == 2
    assert "name='../../x'" in capsys.readouterr().err


def test_gan_generate_names_a_file_that_is_no_mcgan_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    for path, payload in ((tmp_path / "a.pt", {"weights": 1}), (tmp_path / "b.pt", None)):
        if payload is None:
            path.write_bytes(b"not a pickle")
        else:
            torch.save(payload, path)
        assert main(["gan", "generate", f"checkpoint={path}", f"out_dir={tmp_path / 'o'}"]) == 2
        assert "is not an MCGAN checkpoint" in capsys.readouterr().err
