"""`mammofl table1` rows: the `paper` / `cpu` row sets, which SynPre row the SynPre+RealFT rows
fine-tune, and the refusal to mix the two SynPre variants in one out_dir."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.config.compose import compose_config, experiment_names
from common.errors import ConfigError
from simulations.table1 import (
    CPU_ROWS,
    DEFAULT_ROWS,
    cell_dir,
    cell_done,
    expand_rows,
    run_one,
    run_table1,
    start_of,
    start_row,
)


def _finished(out_dir: Path, row: str, seed: int, init_from: Path | None = None) -> Path:
    cell = cell_dir(out_dir, row, seed)
    cell.mkdir(parents=True)
    (cell / "result.json").write_text("{}")
    config = {"model": {"init_from": str(init_from) if init_from else None}}
    (cell / "site_only.json").write_text(json.dumps({"config": config}))
    return cell


def test_rows_cpu_are_the_paper_rows_with_the_cpu_synpre() -> None:
    assert {f"table1/{r}" for r in DEFAULT_ROWS} | {"table1/synpre_cpu"} == {
        n for n in experiment_names() if n.startswith("table1/")
    }
    assert [r for r in CPU_ROWS if r not in DEFAULT_ROWS] == ["synpre_cpu"]
    assert len(CPU_ROWS) == 18 and "synpre" not in CPU_ROWS
    assert expand_rows(["cpu", "recipe/dp_eps6", "real"]) == [*CPU_ROWS, "recipe/dp_eps6"]
    synpre = compose_config(["experiment=table1/synpre_cpu", "model=efficientnet_lite0"])
    assert (synpre.model.trainable, synpre.train.engine) == ("last_stage", "cached")
    assert synpre.paper_row.setting == "SynPre" and not synpre.privacy.enabled


def test_the_start_row_comes_from_rows_then_from_what_out_dir_holds(tmp_path: Path) -> None:
    assert start_row(CPU_ROWS) == "synpre_cpu" and start_row(DEFAULT_ROWS) == "synpre"
    assert start_row(["synpre", "synpre_cpu", "synpre_realft_eps6"]) == "synpre"
    assert start_row(["synpre_realft_eps6"], tmp_path) == "synpre"  # nothing there yet
    _finished(tmp_path, "synpre_cpu", 42)
    assert start_row(["synpre_realft_eps6"], tmp_path) == "synpre_cpu"
    _finished(tmp_path, "synpre", 42)
    assert start_row(["synpre_realft_eps6"], tmp_path) == "synpre"


def test_a_finetuned_cell_of_the_other_variant_is_refused_whatever_the_path(
    tmp_path: Path,
) -> None:
    # stored as typed elsewhere (relative, another machine): the row folder decides
    start = Path("elsewhere/runs/t1/cells/synpre_cpu/seed42/model.pt")
    _finished(tmp_path, "synpre_realft_eps6", 42, start)
    assert cell_done(tmp_path, "synpre_realft_eps6", 42, "synpre_cpu")
    assert not cell_done(tmp_path, "synpre_realft_eps6", 43, "synpre_cpu")
    with pytest.raises(ConfigError, match=r"synpre_cpu row's model, not synpre's.*rows=cpu"):
        cell_done(tmp_path, "synpre_realft_eps6", 42, "synpre")
    (cell_dir(tmp_path, "synpre_realft_eps6", 42) / "site_only.json").unlink()
    with pytest.raises(ConfigError, match=r"no site_only\.json"):
        cell_done(tmp_path, "synpre_realft_eps6", 42, "synpre_cpu")


def test_the_mix_is_refused_before_anything_trains(tmp_path: Path) -> None:
    start = tmp_path / "cells/synpre_cpu/seed42/model.pt"
    _finished(tmp_path, "synpre_realft_eps1", 42, start)
    for grid in (True, False):  # cell by cell too: refused before the paper SynPre would train
        with pytest.raises(ConfigError, match="two SynPre variants"):
            run_table1(tmp_path, ["synpre", "synpre_realft_eps1"], [42], [], grid=grid)
    assert not (tmp_path / "cells" / "synpre").exists()


def test_a_recipe_cell_must_have_started_from_the_row_it_names(tmp_path: Path) -> None:
    assert start_of("recipe/dp_synhead_eps6", "synpre") == "recipe/syn_head"
    assert start_of("synpre_realft_eps1", "synpre_cpu") == "synpre_cpu"
    assert start_of("recipe/dp_eps6", "synpre") is None and start_of("real", "synpre") is None
    head = Path("elsewhere/cells/recipe/syn_head/seed42/model.pt")
    _finished(tmp_path, "recipe/dp_synhead_eps6", 42, head)
    assert cell_done(tmp_path, "recipe/dp_synhead_eps6", 42, "synpre")
    _finished(tmp_path, "recipe/dp_synhead_eps1", 42, None)  # trained from a fresh head
    with pytest.raises(ConfigError, match=r"did not start from the recipe/syn_head row's model"):
        cell_done(tmp_path, "recipe/dp_synhead_eps1", 42, "synpre")
    other_seed = Path("elsewhere/cells/recipe/syn_head/seed43/model.pt")
    _finished(tmp_path, "recipe/dp_synhead_eps6", 44, other_seed)
    with pytest.raises(ConfigError, match="started from seed43's model, not seed44's"):
        cell_done(tmp_path, "recipe/dp_synhead_eps6", 44, "synpre")
    with pytest.raises(ConfigError, match="start_from_row loops"):
        run_one(
            tmp_path, "recipe/syn_head", 42, [], chain=("recipe/dp_synhead_eps6", "recipe/syn_head")
        )
    for bad in ("model.init_from=x.pt", "start_from_row=real"):
        with pytest.raises(ConfigError, match="per cell"):
            run_table1(tmp_path, ["recipe/dp_synhead_eps6"], [42], [bad])


def test_a_cell_trained_with_other_settings_is_refused_not_mixed_in(tmp_path: Path) -> None:
    """A preset changed since the cell ran (here the recipes' accountant, RDP -> PRV): the
    table would mix two settings in one row, so the rerun names the change and stops."""
    cell = _finished(tmp_path, "recipe/dp_eps6", 42)
    record = json.loads((cell / "site_only.json").read_text())
    record["config"]["privacy"] = {"accountant": "rdp", "target_epsilon": 6.0}
    record["config"]["train"] = {"lr": 1e-3, "feature_cache_dir": "/somewhere/else"}
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "recipe/dp_eps6", 42, "synpre")  # without overrides: not compared
    with pytest.raises(ConfigError, match=r"privacy\.accountant: 'rdp' -> 'prv'"):
        cell_done(tmp_path, "recipe/dp_eps6", 42, "synpre", [])
    record["config"]["privacy"]["accountant"] = "prv"  # the cache folder is not a setting
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "recipe/dp_eps6", 42, "synpre", [])
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 -> 0\.003"):
        cell_done(tmp_path, "recipe/dp_eps6", 42, "synpre", ["train.lr=3e-3"])


def test_every_stale_cell_is_named_at_once_and_a_table_needs_a_test_set(tmp_path: Path) -> None:
    for seed in (42, 43):
        cell = _finished(tmp_path, "recipe/dp_eps6", seed)
        record = json.loads((cell / "site_only.json").read_text())
        record["config"]["privacy"] = {"accountant": "rdp"}
        (cell / "site_only.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError) as refused:
        run_table1(tmp_path, ["recipe/dp_eps6"], [42, 43], ["data=release_dev"])
    assert "dp_eps6/seed42 was trained" in str(refused.value)
    assert "dp_eps6/seed43 was trained" in str(refused.value)
    with pytest.raises(ConfigError, match="no test set"):
        run_table1(tmp_path / "other", ["real"], [42], ["data=release_dev", "data.tests={}"])
    assert not (tmp_path / "other").exists()


def test_data_and_evaluation_settings_count_but_where_the_data_lives_does_not(
    tmp_path: Path,
) -> None:
    from simulations.table1 import cell_config

    cell = _finished(tmp_path, "real", 42)
    config = cell_config(tmp_path, "real", 42, ["data=release_dev"])
    record = json.loads((cell / "site_only.json").read_text())
    record["config"] = dataclasses.asdict(config)
    record["config"]["data"]["real"]["path"] = "/moved/elsewhere"  # a path: not a setting
    record["config"]["data"]["tests"]["cbis_ddsm_val"]["path"] = "/moved/too"
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "real", 42, "synpre", ["data=release_dev"])
    with pytest.raises(ConfigError, match=r"data\.image_size: 224 -> 128"):
        cell_done(tmp_path, "real", 42, "synpre", ["data=release_dev", "data.image_size=128"])
    with pytest.raises(ConfigError, match=r"data\.validation: .*holdout_seed"):
        cell_done(
            tmp_path, "real", 42, "synpre", ["data=release_dev", "data.validation.holdout_seed=7"]
        )
    with pytest.raises(ConfigError, match=r"eval\.bootstrap"):
        cell_done(tmp_path, "real", 42, "synpre", ["data=release_dev", "eval.bootstrap=7"])


def test_data_count_by_content_and_weights_by_file_name(tmp_path: Path) -> None:
    """A moved data folder or weights file is the same cell; other patches (the recorded
    manifest hashes) or another weights file are not."""
    from simulations.table1 import cell_config
    from simulations.table1_identity import data_hashes

    overrides = ["data=release_dev", "model=efficientnet_lite0"]
    cell = _finished(tmp_path, "real", 42)
    config = cell_config(tmp_path, "real", 42, overrides)
    record = json.loads((cell / "site_only.json").read_text())
    record["config"] = dataclasses.asdict(config)
    record["config"]["model"]["weights"] = "/moved/efficientnet_lite0_in1k_timm.safetensors"
    record["data"] = {k: {"manifest_sha256": v} for k, v in data_hashes(config.data).items()}
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "real", 42, "synpre", overrides)
    record["data"]["cbis_ddsm_val"]["manifest_sha256"] = "0" * 64  # tested on other patches
    (cell / "site_only.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="data cbis_ddsm_val: other patches"):
        cell_done(tmp_path, "real", 42, "synpre", overrides)
    record["data"]["cbis_ddsm_val"]["manifest_sha256"] = data_hashes(config.data)["cbis_ddsm_val"]
    record["config"]["model"]["weights"] = "/w/another_backbone.safetensors"
    (cell / "site_only.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"model\.weights: 'another_backbone.safetensors'"):
        cell_done(tmp_path, "real", 42, "synpre", overrides)


def test_a_cell_whose_start_model_was_retrained_is_refused(tmp_path: Path) -> None:
    """SynPre (or a start row) retrained after its fine-tuned cells ran: those cells started
    from another model, so they are refused, as they are when the start model is gone."""
    from simulations.table1 import start_model
    from simulations.table1_identity import file_sha256

    start = start_model(tmp_path, "recipe/syn_head", 42)
    _finished(tmp_path, "recipe/syn_head", 42)
    start.write_bytes(b"the first head")
    cell = _finished(tmp_path, "recipe/dp_synhead_eps6", 42, init_from=start)
    record = json.loads((cell / "site_only.json").read_text())
    record["start_model_sha256"] = file_sha256(start)
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "recipe/dp_synhead_eps6", 42, "synpre", [])
    start.write_bytes(b"a retrained head")
    with pytest.raises(ConfigError, match="has changed since"):
        cell_done(tmp_path, "recipe/dp_synhead_eps6", 42, "synpre", [])
    start.unlink()
    with pytest.raises(ConfigError, match="is gone"):
        cell_done(tmp_path, "recipe/dp_synhead_eps6", 42, "synpre", [])
    # gone, but its row does not run again: the cell's start was that model, still valid
    rows = ["recipe/dp_synhead_eps6"]
    assert cell_done(tmp_path, "recipe/dp_synhead_eps6", 42, "synpre", [], rows=rows)
    with pytest.raises(ConfigError, match="is gone"):
        cell_done(
            tmp_path, "recipe/dp_synhead_eps6", 42, "synpre", [], rows=[*rows, "recipe/syn_head"]
        )


def test_data_compares_as_read_not_as_loaded(tmp_path: Path) -> None:
    """A set with an unreadable image is recorded after loading without it; the check reads
    the data again without loading, so it compares the hash as read (older records: only
    where nothing was skipped)."""
    from simulations.table1 import cell_config
    from simulations.table1_identity import data_hashes

    overrides = ["data=release_dev", "model=efficientnet_lite0"]
    cell = _finished(tmp_path, "real", 42)
    config = cell_config(tmp_path, "real", 42, overrides)
    record = json.loads((cell / "site_only.json").read_text())
    record["config"] = dataclasses.asdict(config)
    now = data_hashes(config.data)
    skipped = {"manifest_sha256": "1" * 64, "skipped": [{"record": "x.png", "reason": "bad"}]}
    record["data"] = {"train": {**skipped, "read_manifest_sha256": now["train"]}}
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "real", 42, "synpre", overrides)
    record["data"] = {"train": skipped}  # an older record: not comparable, not refused
    (cell / "site_only.json").write_text(json.dumps(record))
    assert cell_done(tmp_path, "real", 42, "synpre", overrides)
