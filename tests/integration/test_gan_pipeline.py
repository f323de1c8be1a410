"""MCGAN pipeline on the released patches: train -> generate -> Syn row; score; DP epsilon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config.compose import compose_config
from common.privacy.ledger import PrivacyLedger
from common.runs.single_node import run_cell
from simulations.cli import main

TINY_GAN = ["gan_preset=tiny", "data.limit=48"]  # + train.epochs=N: each key once


@pytest.mark.slow
def test_syn_row_runs_from_gan_generate_output(release_dir: Path, tmp_path: Path) -> None:
    assert main(["gan", "train", *TINY_GAN, "train.epochs=1", f"out_dir={tmp_path / 'gan'}"]) == 0
    checkpoint = tmp_path / "gan" / "checkpoints" / "epoch_00001.pt"
    generate = ["gan", "generate", f"checkpoint={checkpoint}", f"out_dir={tmp_path / 'syn'}"]
    assert main([*generate, "n=40"]) == 0
    # a second set into the same folder would mix with the first: refused, or replaced whole
    assert main([*generate, "n=6"]) == 2
    # a mistyped checkpoint or count with overwrite=true must not cost the old set
    wrong = [*generate[:2], f"checkpoint={checkpoint}.typo", *generate[3:]]
    assert main([*wrong, "n=6", "overwrite=true"]) == 2
    assert main([*generate, "n=abc", "overwrite=true"]) == 2
    assert len(list((tmp_path / "syn" / "images").glob("*.png"))) == 40
    assert main([*generate, "n=6", "overwrite=true"]) == 0
    assert len(list((tmp_path / "syn" / "images").glob("*.png"))) == 6
    assert main([*generate, "n=40", "overwrite=true"]) == 0
    config = compose_config(
        [
            "experiment=table1/syn",
            "data=release_dev",
            "model=tiny_swin",
            "data.image_size=32",
            "data.synthetic.format=patchset",
            f"data.synthetic.path={tmp_path / 'syn'}",
            "data.real.limit=40",
            "data.tests.cbis_ddsm_val.limit=24",
            "train.epochs=1",
            "train.batch_size=16",
            "eval.bootstrap=20",
            f"out_dir={tmp_path / 'cell'}",
        ]
    )
    record = run_cell(config, tmp_path / "cell", progress=False)
    assert record["data"]["train"]["total"] == 40  # trained on the generated patches only
    assert record["tests"]["cbis_ddsm_val"]["n"] == 24  # the site's record (site_only.json)
    assert (
        not record["privacy"]["formal_guarantee"]
        and "no formal guarantee" in record["privacy"]["note"]
    )


@pytest.mark.slow
def test_dp_mcgan_reports_epsilon_from_the_shared_accountant(
    release_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dp"
    assert (
        main(
            [
                "gan",
                "train",
                *TINY_GAN,
                "train.epochs=2",
                "dp.enabled=true",
                "dp.target_epsilon=10",
                f"out_dir={out}",
            ]
        )
        == 0
    )
    import torch

    state = torch.load(out / "checkpoints" / "epoch_00002.pt", weights_only=False)
    ledger = PrivacyLedger.from_state_dict(state["ledger"])
    assert 7.5 < ledger.epsilon() <= 10.0  # planned over both epochs, all spent
    assert state["plan"]["steps"] == ledger.events[0].steps
    assert (
        main(
            [
                "gan",
                "generate",
                f"checkpoint={out / 'checkpoints' / 'epoch_00002.pt'}",
                f"out_dir={tmp_path / 'dpsyn'}",
                "n=4",
            ]
        )
        == 0
    )
    provenance = json.loads((tmp_path / "dpsyn" / "provenance.json").read_text())
    assert provenance["dp"] and provenance["epsilon"] == pytest.approx(ledger.epsilon())


@pytest.mark.slow
def test_score_reports_fig2_rows(release_dir: Path, effnet_weights: Path, tmp_path: Path) -> None:
    base = release_dir / "dataset16062024" / "cbis-ddsm"
    syn = release_dir / "extension" / "synthetic_data" / "cbis-ddsm" / "c-dcgan"
    # a small real folder: the score command reads whole folders, so build one from a subset
    from common.data.patch_set import write_manifest
    from common.data.readers import read_released, read_released_synthetic, stratified_limit

    write_manifest(stratified_limit(read_released(base, "train"), 60), tmp_path / "real")
    write_manifest(stratified_limit(read_released_synthetic(syn), 60), tmp_path / "syn")
    out = tmp_path / "score.json"
    assert (
        main(
            [
                "gan",
                "score",
                f"real={tmp_path / 'real'}",
                "real_format=patchset",
                f"synthetic={tmp_path / 'syn'}",
                f"out={out}",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    for metric in ("fd_backbone", "kid_backbone", "fd_texture_first_order_glcm"):
        assert set(report[metric]) == {"real_vs_real", "syn_vs_syn", "real_vs_syn"}
        assert report[metric]["real_vs_syn"]["n"] == 3
    assert 0 <= report["precision_recall_coverage"]["coverage"] <= 1
    assert 0 <= report["conditional"]["auroc"] <= 1
    assert "not installed" in report["frd"] and "inception_weights" in report["fid_inception"]


@pytest.mark.slow
def test_gan_train_with_seeds_trains_one_mcgan_per_seed_as_one_program(
    release_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`mammofl gan train seeds=[..]`: one GAN per seed in out_dir/seed<k>, trained as one
    batched program without DP, each resumable on its own checkpoints like a single GAN; a
    seed added later trains on its own from its own epoch."""
    import torch

    from common.training.gan_grid import GanGrid

    programs: list[int] = []
    fit = GanGrid.fit

    def counted(grid: GanGrid, progress: bool = True) -> list[Path | None]:
        programs.append(len(grid.trainers))
        return fit(grid, progress)

    monkeypatch.setattr(GanGrid, "fit", counted)
    out = tmp_path / "grid"
    assert main(["gan", "train", *TINY_GAN, "train.epochs=1", "seeds=[1,2]", f"out_dir={out}"]) == 0
    assert programs == [2]  # both seeds in one program
    first_epoch = [out / f"seed{s}" / "checkpoints" / "epoch_00001.pt" for s in (1, 2)]
    states = [torch.load(path, weights_only=False) for path in first_epoch]
    first, second = (s["generator"] for s in states)
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # seeds differ
    written = [path.stat().st_mtime_ns for path in first_epoch]
    # more epochs and a third seed: 1 and 2 resume from epoch 1, 3 starts from scratch
    more = [*TINY_GAN, "train.epochs=2"]
    assert main(["gan", "train", *more, "seeds=[1,2,3]", f"out_dir={out}"]) == 0
    assert sorted(programs[1:]) == [1, 2]
    assert [path.stat().st_mtime_ns for path in first_epoch] == written  # resumed, not redone
    for s in (1, 2, 3):
        state = torch.load(out / f"seed{s}" / "checkpoints" / "epoch_00002.pt", weights_only=False)
        assert state["epoch"] == 2
    assert (out / "seed3" / "checkpoints" / "epoch_00001.pt").is_file()
    capsys.readouterr()
    # nothing left to train: the output names the checkpoints it resumed from
    assert main(["gan", "train", *more, "seeds=[1,2,3]", f"out_dir={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [g["checkpoint"] for g in printed["gans"]] == [
        str(out / f"seed{s}" / "checkpoints" / "epoch_00002.pt") for s in (1, 2, 3)
    ]
    # a resume with other training settings is refused, naming them
    assert main(["gan", "train", *more, "train.batch_size=4", "seeds=[1]", f"out_dir={out}"]) == 2
    assert "train.batch_size: 8 -> 4" in capsys.readouterr().err
    for bad in ("seeds=[1,x]", "seeds=[]", "seeds=[-1]"):
        assert main(["gan", "train", *TINY_GAN, "train.epochs=1", bad, f"out_dir={out}"]) == 2


def test_gan_scores_read_only_the_training_rows_of_a_prepared_set(tmp_path: Path) -> None:
    """A prepared folder holds its test patients too, which the GAN never saw: `gan score` and
    `gan memorisation` compare against its train rows unless real_split= says otherwise; a
    prepared folder read as the released layout says which format it is."""
    from common.data.readers import read_patch_source
    from common.errors import DataError
    from simulations.gan_cli import _source

    real = _source({"real": "x", "real_format": "patchset"}, "real", "released")
    assert real.split == "train"
    assert (
        _source(
            {"real": "x", "real_split": "all", "real_format": "patchset"}, "real", "released"
        ).split
        == "all"
    )
    assert _source({"synthetic": "y"}, "synthetic", "patchset").split is None
    (tmp_path / "manifest.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"holds a manifest\.csv, so it is a prepared patch set"):
        read_patch_source(_source({"real": str(tmp_path)}, "real", "released"))


def test_a_backbone_built_for_small_patches_gets_them_at_its_size(tmp_path: Path) -> None:
    """`backbone=tiny_swin` (a 32 px model, a listed group) was an AssertionError: the
    patches went in at 224 px."""
    pp = tmp_path / "pp"
    assert main(["phantom-patches", f"out_dir={pp}", "patients=4", "test_patients=2"]) == 0
    args = ["gan", "memorisation", f"real={pp / 'train'}", "real_format=patchset"]
    args += [f"synthetic={pp / 'test'}", f"out_dir={tmp_path / 'm'}", "backbone=tiny_swin"]
    assert main(args) == 0
