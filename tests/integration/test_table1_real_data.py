"""The documented real-data Table 1 command on a small subset (CI keeps the path alive).

Needs ../shared/data and ../shared/weights: fails under CI=true when they are missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from simulations.table1 import run_table1

SUBSET = [
    "model=efficientnet_lite0",
    "train.engine=cached",
    "data=release_dev",
    "data.real.limit=48",
    "data.synthetic.limit=24",
    "data.tests.cbis_ddsm_val.limit=24",
    "train.epochs=2",
    "train.batch_size=16",  # under DP a batch may not exceed N (about 40 after the hold-out)
    "eval.bootstrap=50",
]


@pytest.mark.slow
def test_table1_subset_on_released_patches(
    release_dir: Path, effnet_weights: Path, tmp_path: Path
) -> None:
    # recipe presets run beside the paper's rows (docs/recipes.md)
    rows = ["real", "real_eps1", "real_eps6", "real_syn_eps6", "recipe/dp_eps1", "recipe/no_dp"]
    paths = run_table1(tmp_path, rows, [42], SUBSET)
    table = pd.read_csv(paths["csv"])
    assert list(table["row"]) == rows and set(table["test_set"]) == {"cbis_ddsm_val"}
    spent = dict(zip(table["row"], table["epsilon_spent"], strict=True))
    assert (
        math.isnan(spent["real"])
        and 0.75 < spent["real_eps1"] <= 1.0
        and 4.5 < spent["real_eps6"] <= 6.0
        and 0.75 < spent["recipe/dp_eps1"] <= 1.0
    )
    guarantee = dict(zip(table["row"], table["guarantee"], strict=True))
    assert guarantee == {
        "real": "none (no DP)",
        "real_eps1": "formal",
        "real_eps6": "formal",
        "real_syn_eps6": "partial",  # its synthetic patches come from a non-DP GAN
        "recipe/dp_eps1": "formal",
        "recipe/no_dp": "none (no DP)",
    }
    settings = dict(zip(table["row"], table["settings"], strict=True))
    assert settings["real_eps1"] == "paper" and settings["recipe/dp_eps1"] == "recipe"
    assert dict(zip(table["row"], table["epsilon"], strict=True))["recipe/dp_eps1"] == 1
    markdown = paths["md"].read_text()
    assert "efficientnet_lite0" in markdown and "not the paper's" in markdown
    assert "data.real.limit=48" in markdown
    assert paths["plot"].stat().st_size > 1000
    # resume: a second call trains nothing and rewrites the same table
    before = {p: p.stat().st_mtime for p in tmp_path.glob("cells/**/result.json")}
    run_table1(tmp_path, rows, [42], SUBSET)
    assert before == {p: p.stat().st_mtime for p in tmp_path.glob("cells/**/result.json")}
    assert len(before) == len(rows)


@pytest.mark.slow
def test_a_recipe_starts_from_the_row_it_names(
    release_dir: Path, effnet_weights: Path, tmp_path: Path
) -> None:
    """recipe/dp_synhead_eps6 fine-tunes each seed's recipe/syn_head model (trained first,
    without DP, on the synthetic patches): its record claims no formal guarantee."""
    import json

    from common.config.compose import compose_config
    from common.errors import ConfigError
    from common.runs.single_node import run_cell

    row = "recipe/dp_synhead_eps6"
    paths = run_table1(tmp_path, [row], [42], SUBSET)
    head = json.loads((tmp_path / "cells/recipe/syn_head/seed42/result.json").read_text())
    assert head["config"]["data"]["train_on"] == ["synthetic"] and not head["privacy"]["enabled"]
    cell = tmp_path / "cells" / row / "seed42"
    site = json.loads((cell / "site_only.json").read_text())
    assert site["config"]["model"]["init_from"].endswith("recipe/syn_head/seed42/model.pt")
    record = json.loads((cell / "result.json").read_text())
    assert not record["privacy"]["formal_guarantee"] and "starts from" in record["privacy"]["note"]
    table = pd.read_csv(paths["csv"])
    assert table["row"].tolist() == [row] and table["guarantee"].tolist() == ["partial"]
    assert "starts from each seed's `recipe/syn_head` model" in paths["md"].read_text()
    before = {p: p.stat().st_mtime for p in tmp_path.glob("cells/**/result.json")}
    run_table1(tmp_path, [row], [42], SUBSET)  # resume: nothing trains again
    assert before == {p: p.stat().st_mtime for p in tmp_path.glob("cells/**/result.json")}
    alone = compose_config([f"experiment={row}", *SUBSET, f"out_dir={tmp_path / 'alone'}"])
    with pytest.raises(ConfigError, match="starts from the model of the recipe/syn_head row"):
        run_cell(alone, tmp_path / "alone", progress=False)


@pytest.mark.slow
def test_synpre_then_realft_chain(release_dir: Path, tmp_path: Path) -> None:
    """SynPre (all parameters, synthetic only) feeds SynPre+RealFT (head only, DP)."""
    overrides = [
        "model=tiny_swin",
        "data=release_dev",
        "data.image_size=32",
        "train.epochs=1",
        "data.real.limit=32",
        "data.synthetic.limit=16",
        "data.tests.cbis_ddsm_val.limit=16",
        "train.batch_size=16",
        "eval.bootstrap=20",
    ]
    paths = run_table1(tmp_path, ["synpre_realft_eps6"], [42], overrides)
    assert (tmp_path / "cells" / "synpre" / "seed42" / "result.json").is_file()
    import json

    cell = tmp_path / "cells" / "synpre_realft_eps6" / "seed42"
    ft = json.loads((cell / "result.json").read_text())
    site = json.loads((cell / "site_only.json").read_text())
    assert site["config"]["model"]["init_from"].endswith("synpre/seed42/model.pt")
    assert ft["config"]["model"]["init_from"] == "<kept at the site>"  # a path at the site
    assert ft["trainable_count"] == 32 * 2 + 2  # Linear(32 features, 2) of the tiny Swin
    # its start point saw non-DP synthetic data: the record must not claim a formal guarantee
    assert not ft["privacy"]["formal_guarantee"] and "starts from" in ft["privacy"]["note"]
    assert pd.read_csv(paths["csv"])["row"].tolist() == ["synpre_realft_eps6"]


@pytest.mark.slow
def test_the_complete_table_on_cpu(release_dir: Path, effnet_weights: Path, tmp_path: Path) -> None:
    """`rows=cpu`: all 18 rows of the paper with SynPre's CPU variant (last stage + head on
    cached trunk maps), which the SynPre+RealFT rows fine-tune; every row lists its spent
    epsilon and guarantee (issue #11)."""
    import json

    from common.errors import ConfigError
    from simulations.table1 import CPU_ROWS

    paths = run_table1(tmp_path, ["cpu"], [42], SUBSET)
    table = pd.read_csv(paths["csv"])
    assert table["row"].tolist() == list(CPU_ROWS) and len(CPU_ROWS) == 18
    rows = table.set_index("row")
    for epsilon in (1, 6, 12, 20, 60):
        for kind in ("real", "real_syn", "synpre_realft"):
            row = rows.loc[f"{kind}_eps{epsilon}"]
            assert 0.7 * epsilon < row["epsilon_spent"] <= epsilon
        assert rows.loc[f"real_eps{epsilon}", "guarantee"] == "formal"
        assert rows.loc[f"synpre_realft_eps{epsilon}", "guarantee"] == "partial"
    assert rows.loc["synpre_cpu", "guarantee"] == "none (no DP)"
    synpre = json.loads((tmp_path / "cells/synpre_cpu/seed42/result.json").read_text())
    assert synpre["trainable_policy"] == "last_stage"
    assert any(n.startswith("backbone.conv_head.") for n in synpre["trainable_parameters"])
    site = json.loads((tmp_path / "cells/synpre_realft_eps1/seed42/site_only.json").read_text())
    assert site["config"]["model"]["init_from"].endswith("synpre_cpu/seed42/model.pt")
    markdown = paths["md"].read_text()
    assert "- synpre_cpu: CPU variant" in markdown
    assert "fine-tune each seed's `synpre_cpu` model" in markdown
    # a fine-tuned cell never silently mixes with the other SynPre variant in one out_dir
    with pytest.raises(ConfigError, match="two SynPre variants"):
        run_table1(tmp_path, ["synpre", "synpre_realft_eps1"], [42], SUBSET)


@pytest.mark.slow
def test_grid_equals_cell_by_cell_in_seeded_mode(
    release_dir: Path, effnet_weights: Path, tmp_path: Path
) -> None:
    """`mammofl table1` trains compatible cells as one grid; in the seeded research mode each
    cell matches the cell-by-cell run: same steps and epsilon, weights to 1e-5, AUROC within
    0.01 (issue #12's equivalence)."""
    import json

    import torch

    rows, seeds = ["real", "real_eps1", "real_eps6"], [42, 43]
    seeded = [*SUBSET, "train.epochs=3", "privacy.seeded_noise=true"]
    # lanes=2: the 2 grids (non-DP; DP, split in two) train side by side on threads
    run_table1(tmp_path / "grid", rows, seeds, seeded, grid=True, lanes=2)
    run_table1(tmp_path / "alone", rows, seeds, seeded, grid=False)
    for row in rows:
        for seed in seeds:
            cell = Path("cells") / row / f"seed{seed}"
            a, b = (
                json.loads((tmp_path / m / cell / "result.json").read_text())
                for m in ("alone", "grid")
            )
            assert b["privacy"]["steps"] == a["privacy"]["steps"] > 0
            assert b["privacy"]["epsilon_spent"] == a["privacy"]["epsilon_spent"]
            assert b["best_epoch"] == a["best_epoch"]
            auroc = [r["tests"]["cbis_ddsm_val"]["auroc"]["value"] for r in (a, b)]
            assert abs(auroc[0] - auroc[1]) <= 0.01
            wa, wb = (torch.load(tmp_path / m / cell / "model.pt") for m in ("alone", "grid"))
            for name in (k for k in wa if k.startswith("head.")):
                torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5, msg=name)
