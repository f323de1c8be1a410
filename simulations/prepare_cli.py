"""`mammofl prepare`: command-line options -> `common.data.prepare` (thin)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from common.config.option_values import flag, number, seed_number, whole_number
from common.data.prepare import PrepareOptions, prepare
from common.errors import ConfigError
from simulations.cli import split_options

TEXT = (
    "source",
    "root",
    "out_dir",
    "split",
    "mode",
    "border",
    "y_origin",
    "site",
    "csv",
    "abnormality",
)
NUMBERS = {
    "test_fraction": float,
    "val_fraction": float,
    "seed": int,
    "out_size": int,
    "workers": int,
}
FLAGS = ("allow_for_processing", "fresh")
USAGE = (
    "usage: mammofl prepare source=cbis-ddsm|bcdr|manifest|released root=PATH out_dir=DIR "
    "[split=official|random] [test_fraction=] [val_fraction=] [seed=] [abnormality=mass|calc|all] "
    "[csv=] [site=] [columns.<name>=<your column>] [allow_for_processing=true] [fresh=true] "
    "[mode=] [out_size=] [border=] [y_origin=] [workers=]"
)


def prepare_options(args: Sequence[str]) -> PrepareOptions:
    """Parse `name=value` options. `test_fraction=` without `split=` asks for a seeded random
    split (as before the official split was kept); `columns.cx=center_col` maps a manifest's
    own column names."""
    columns = tuple(
        (arg.partition("=")[0].removeprefix("columns."), arg.partition("=")[2])
        for arg in args
        if arg.startswith("columns.")
    )
    options, rest = split_options(
        [a for a in args if not a.startswith("columns.")], (*TEXT, *NUMBERS, *FLAGS)
    )
    missing = [k for k in ("source", "root", "out_dir") if k not in options]
    if rest or missing:
        problem = f"not understood: {' '.join(rest)}" if rest else f"missing {', '.join(missing)}="
        raise ConfigError(f"{USAGE}\n({problem})")
    typed: dict[str, object] = {k: v for k, v in options.items() if k in TEXT}
    typed["root"], typed["out_dir"] = Path(options["root"]), Path(options["out_dir"])
    for key, kind in NUMBERS.items():
        if key in options:
            parse = number if kind is float else seed_number if key == "seed" else whole_number
            typed[key] = parse(key, options[key])
    for key in FLAGS:
        if key in options:
            typed[key] = flag(key, options[key])
    if "test_fraction" in options and "split" not in options:
        typed["split"] = "random"
    if columns:
        if options["source"] != "manifest":
            raise ConfigError("columns.<name>= maps a lesion manifest's columns (source=manifest)")
        typed["columns"] = columns
    return PrepareOptions(**typed)  # type: ignore[arg-type]


def cmd_prepare(args: Sequence[str]) -> int:
    report = prepare(prepare_options(args))
    summary = {k: report[k] for k in ("split_rule", "counts", "patients")}
    print(json.dumps(summary | {"skipped": report["skip_summary"]}, indent=2))
    return 0
