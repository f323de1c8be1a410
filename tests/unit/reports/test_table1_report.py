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
    assert "synpre_curves" not in paths  # no SynPre row, no curve


def test_a_cpu_variant_row_says_how_it_differs_from_the_paper(tmp_path: Path) -> None:
    _cell(tmp_path, "synpre_cpu", "SynPre", None)
    record_path = tmp_path / "cells" / "synpre_cpu" / "seed42" / "result.json"
    record = json.loads(record_path.read_text())
    record["config"]["model"]["trainable"] = "last_stage"
    record["config"]["train"] = {"epochs": 30, "lr": 1e-4}
    record["best_epoch"] = 2
    record["history"] = [
        {"epoch": e, "val_auprc": 0.6 + 0.01 * e, "val_loss": 0.7 - 0.01 * e} for e in (1, 2, 3)
    ]
    record_path.write_text(json.dumps(record))
    _cell(tmp_path, "synpre_realft_eps6", "SynPre+RealFT", 6.0)
    note = "SynPre+RealFT rows fine-tune each seed's `synpre_cpu` model"
    rows = ["synpre_cpu", "synpre_realft_eps6"]
    paths = write_reports(tmp_path, rows, [42], [], [note], cpu_variant_rows=rows)
    markdown = paths["md"].read_text()
    assert "- synpre_cpu: CPU variant: the backbone's last stage and the head" in markdown
    assert "30 epochs, lr 1e-4" in markdown
    assert f"- {note}" in markdown
    assert "synpre_realft_eps6: CPU variant" not in markdown
    assert paths["synpre_curves"].stat().st_size > 1000  # the selection-set curve of SynPre
    settings = pd.read_csv(paths["csv"]).set_index("row")["settings"].to_dict()
    assert settings == {"synpre_cpu": "cpu variant", "synpre_realft_eps6": "cpu variant"}
    # rerun without SynPre rows: the curve of the earlier run does not linger
    paths = write_reports(tmp_path, ["synpre_realft_eps6"], [42], [])
    assert "synpre_curves" not in paths
    assert not (tmp_path / "synpre_selection_curves.png").exists()


def test_a_recipe_tuned_on_its_records_is_marked(tmp_path: Path) -> None:
    """A preset whose hyperparameters were searched on these records keeps its formal label
    (the run's epsilon is exact) with a mark saying the search is not covered."""
    from common.config.compose import compose_config
    from common.runs.single_node import tuning_note

    note = tuning_note(compose_config(["experiment=recipe/dp_eps6"]))
    assert note.startswith("hyperparameters tuned on the released CBIS-DDSM train split")
    assert tuning_note(compose_config(["experiment=table1/real_eps6"])) == ""
    _cell(tmp_path, "recipe/dp_eps6", "Real", 6.0, tuning_note=note)
    _cell(tmp_path, "real_eps6", "Real", 6.0)
    paths = write_reports(tmp_path, ["recipe/dp_eps6", "real_eps6"], [42], [])
    table = pd.read_csv(paths["csv"]).set_index("row")
    assert table.loc["recipe/dp_eps6", "guarantee"] == "formal"
    markdown = paths["md"].read_text()
    assert "| formal † |" in markdown and markdown.count("†") == 2
    assert f"- recipe/dp_eps6: {note}" in markdown


def test_paper_values_only_beside_a_test_set_of_the_papers_size(tmp_path: Path) -> None:
    """A test set named cbis_ddsm_test but of another size (e.g. a seeded fifth of it) is
    another set: the paper's values are not printed beside it."""
    from simulations.paper_table1 import paper_values

    swin = ("torchvision", "swin_t", "imagenet")
    assert paper_values("Real", None, "cbis_ddsm_test", swin, 402)[0] is not None
    assert paper_values("Real", None, "cbis_ddsm_test", swin, None)[0] is not None
    values, why = paper_values("Real", None, "cbis_ddsm_test", swin, 80)
    assert values is None and why == "test set 'cbis_ddsm_test' has 80 patches, the paper's 402"
    for row, size in (("small", 80), ("whole", 402)):
        folder = tmp_path / "cells" / row / "seed42"
        folder.mkdir(parents=True)
        tests = {m: {"value": 0.6} for m in ("auroc", "auprc_malignant", "auprc_benign")}
        record = {
            "config": {
                "paper_row": {"setting": "Real", "epsilon": None},
                "model": {"library": "torchvision", "name": "swin_t", "weights": "imagenet"},
            },
            "tests": {"cbis_ddsm_test": tests},
            "privacy": {"enabled": False, "epsilon_spent": None, "note": ""},
        }
        (folder / "result.json").write_text(json.dumps(record))
        site_only = {**record, "tests": {"cbis_ddsm_test": {**tests, "n": size}}}
        (folder / "site_only.json").write_text(json.dumps(site_only))
    paths = write_reports(tmp_path, ["small", "whole"], [42], [])
    table = pd.read_csv(paths["csv"]).set_index("row")
    assert pd.isna(table.loc["small", "paper_auroc"]) and table.loc["whole", "paper_auroc"] > 0
    assert "has 80 patches, the paper's 402" in paths["md"].read_text()


def test_a_one_class_test_set_reports_nan_instead_of_crashing(tmp_path: Path) -> None:
    _cell(tmp_path, "real", "Real", None)
    path = tmp_path / "cells" / "real" / "seed42" / "result.json"
    record = json.loads(path.read_text())
    record["tests"]["val"]["auroc"]["value"] = None  # NaN is written as null
    path.write_text(json.dumps(record))
    paths = write_reports(tmp_path, ["real"], [42], [])
    assert pd.isna(pd.read_csv(paths["csv"]).loc[0, "auroc_mean"])


def test_one_seed_shows_no_spread() -> None:
    from simulations.table1_report import _fmt

    assert _fmt(0.7671, 0.0, 1) == "0.767 (1 seed)"
    assert _fmt(0.7671, 0.0123, 3) == "0.767 ± 0.012"
