"""Table 1 reports carry each row's guarantee: a DP epsilon is never printed as covering
synthetic data from a GAN trained without DP."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from simulations.table1_report import open_markers, write_reports

SYN_NOTE = "synthetic patches come from a GAN trained on real data without DP"


def _cell(out_dir: Path, row: str, setting: str, epsilon: float | None, **privacy) -> None:
    folder = out_dir / "cells" / row / "seed42"
    folder.mkdir(parents=True)
    record = {
        "config": {
            "paper_row": {"setting": setting, "epsilon": epsilon},
            "model": {"library": "timm", "name": "efficientnet_lite0", "weights": "x.safetensors"},
        },
        "tests": {"val": {m: {"value": 0.6} for m in ("auroc", "auprc_malignant", "auprc_benign")}},
        "privacy": {
            "enabled": epsilon is not None,
            "epsilon_spent": None if epsilon is None else 0.99 * epsilon,
            "unit": "patch",
            "formal_guarantee": epsilon is not None,
            "note": "",
            "noise": None if epsilon is None else "os-entropy",
            **privacy,
        },
    }
    (folder / "result.json").write_text(json.dumps(record))


def test_reports_name_each_rows_guarantee(tmp_path: Path) -> None:
    _cell(tmp_path, "real", "Real", None)
    _cell(tmp_path, "real_eps6", "Real", 6.0)
    _cell(tmp_path, "real_syn_eps6", "Real+Syn", 6.0, formal_guarantee=False, note=SYN_NOTE)
    _cell(tmp_path, "seeded", "Real", 1.0, noise="seeded noise: reproducible; no guarantee")
    rows = ["real", "real_eps6", "real_syn_eps6", "seeded"]
    paths = write_reports(tmp_path, rows, [42], [])
    table = pd.read_csv(paths["csv"]).set_index("row")
    assert table["guarantee"].to_dict() == {
        "real": "none (no DP)",
        "real_eps6": "formal",
        "real_syn_eps6": "partial",
        "seeded": "seeded noise",
    }
    assert table.loc["real_syn_eps6", "guarantee_note"] == SYN_NOTE
    assert table.loc["real_eps6", "unit"] == "patch"
    markdown = paths["md"].read_text()
    assert "| real_syn_eps6 | 6 |" in markdown and "partial *" in markdown
    assert f"- real_syn_eps6: {SYN_NOTE}" in markdown
    assert "- seeded: seeded noise: reproducible; no guarantee" in markdown
    assert open_markers(pd.read_csv(paths["csv"])).tolist() == [False, False, True, True]
    assert paths["plot"].stat().st_size > 1000
