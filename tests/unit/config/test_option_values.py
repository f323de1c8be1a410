"""Command options are read strictly: a bad value is a clear error (exit 2, the option named,
a valid value shown) before any work, never a Python traceback and never read as the default
(`fresh=ture` was taken as false; `table1 seeds=abc` ended in a ValueError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config.option_values import flag, number, whole_number, whole_numbers
from common.errors import ConfigError
from simulations.cli import main


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("YES", True), ("1", True), (True, True), ("false", False), ("0", False)],
)
def test_a_flag_takes_yes_and_no(value: object, expected: bool) -> None:
    assert flag("fresh", value) is expected


@pytest.mark.parametrize("value", ["ture", "2", "", "y"])
def test_a_mistyped_flag_is_refused_not_read_as_no(value: str) -> None:
    with pytest.raises(ConfigError, match=f"fresh={value}: expected true or false"):
        flag("fresh", value)


def test_numbers() -> None:
    assert whole_number("n", "12", minimum=1) == 12
    assert number("t", "2.5", positive=True) == 2.5
    assert whole_numbers("seeds", "[42, 43,44]") == [42, 43, 44]
    assert whole_numbers("seeds", "42,43") == [42, 43]
    for call, message in [
        (lambda: whole_number("n", "7.5"), "n=7.5: expected a whole number"),
        (lambda: whole_number("n", "0", minimum=1), "n=0: expected a whole number >= 1"),
        (lambda: number("t", "inf"), "t=inf: expected a finite number"),
        (lambda: number("t", "0", positive=True), "t=0: expected a number > 0"),
        (lambda: whole_numbers("seeds", "[]"), "give at least one"),
        (lambda: whole_numbers("seeds", "[42,x]"), "expected whole numbers"),
        (lambda: whole_numbers("seeds", "[-1]", minimum=0), "each must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["table1", "seeds=abc"], "seeds=abc: expected whole numbers"),
        (["table1", "seeds=[42,-1]"], "seeds=[42,-1]: each must be >= 0"),
        (["table1", "grid=maybe"], "grid=maybe: expected true or false"),
        (["tune", "space=dp_eps6", "seeds=[x]"], "seeds=[x]: expected whole numbers"),
        (["federate", "fresh=ture"], "fresh=ture: expected true or false"),
        (["loopback", "fresh=2"], "fresh=2: expected true or false"),
        (["train", "experiment=tiny", "overwrite=ture"], "overwrite=ture: expected true or false"),
        (["phantom", "sites=x"], "sites=x: expected a whole number"),
        (["phantom", "ambiguity=nan"], "ambiguity=nan: expected a finite number"),
        (["phantom-patches", "size=big"], "size=big: expected a whole number"),
        (["gan", "generate", "checkpoint=/c", "n=many"], "n=many: expected a whole number"),
        (["gan", "train", "seeds=[1,1]"], "seeds=[1,1]: each once"),
        (["table1", "seeds=[42,42]"], "seeds=[42,42]: each once"),
        (["tune", "space=dp_eps6", "seeds=[1,1]"], "seeds=[1,1]: each once"),
        (["phantom", "seed=-1"], "seed=-1: expected a whole number >= 0"),
        (["phantom-patches", "seed=-1"], "seed=-1: expected a whole number >= 0"),
        (["audit", "k=[a]"], "k=[a]: expected whole numbers"),
        (
            ["evaluate", "run_dir=/r", "patches=/p", "allow_patient_overlap=yes please"],
            "allow_patient_overlap=yes please: expected true or false",
        ),
        (["submit", "timeout_s=-1"], "timeout_s=-1: expected a number > 0"),
    ],
)
def test_a_bad_command_option_is_a_clear_error_before_any_work(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    where = f"out={out}" if args[0] == "evaluate" else f"out_dir={out}"
    assert main([*args, where]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing was started
