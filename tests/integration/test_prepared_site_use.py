"""A prepared site (official Training/Test CSVs) used by `train`, `evaluate` and `gan train`:
each reader takes its own split from the manifest, a run never trains on the site's test
patients, and a test set sharing a (site, patient) with training is refused unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import common.runs.run_data as run_data
import simulations.gan_cli as gan_cli
from common.config.compose import compose_config
from common.data.images import LoadedPatches
from common.data.patch_set import PatchSet
from common.data.phantom.sites import write_phantom_site
from common.errors import SplitLeakageError
from common.runs.run_data import read_run_patch_sets
from common.runs.single_node import run_cell
from simulations.cli import main
from simulations.evaluate import evaluate_run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    write_phantom_site(
        root / "raw", "site-a", patients=12, long_side=400, seed=4, split="both", test_patients=6
    )
    out = root / "prepared"
    args = ["prepare", "source=cbis-ddsm", f"root={root / 'raw'}", f"out_dir={out}"]
    assert main([*args, "site=hospital-a", "val_fraction=0.25"]) == 0
    return out


def _patients(prepared: Path, *splits: str) -> set[str]:
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    return set(manifest.loc[manifest["split"].isin(splits), "patient_id"])


def _recording(monkeypatch: pytest.MonkeyPatch, module: object) -> list[PatchSet]:
    """Every patch set whose pixels the module loads."""
    loaded: list[PatchSet] = []
    original = module.load_patches  # type: ignore[attr-defined]

    def record(patch_set: PatchSet, *args: object, **kwargs: object) -> LoadedPatches:
        loaded.append(patch_set)
        return original(patch_set, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(module, "load_patches", record)
    return loaded


def _config(prepared: Path, out: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return compose_config(
        [
            "experiment=tiny",
            f"data.real.path={prepared}",
            f"data.tests.phantom_test.path={prepared}",
            "train.epochs=1",
            "train.batch_size=8",
            f"out_dir={out}",
            *overrides,
        ]
    )


def test_train_and_evaluate_keep_the_test_patients_out(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_patients = _patients(prepared, "test")
    assert test_patients and not test_patients & _patients(prepared, "train", "val")
    loaded = _recording(monkeypatch, run_data)
    run_cell(_config(prepared, tmp_path / "run"), tmp_path / "run", progress=False)
    train, validation, test = loaded
    assert not {r.patient_id for r in train.records + validation.records} & test_patients
    assert {r.patient_id for r in test.records} == test_patients
    assert {r.site for r in train.records} == {"hospital-a"}

    scored = evaluate_run(str(tmp_path / "run"), str(prepared), name="site_test")
    assert scored["metrics"]["n"] == len(test.records) and "patient_overlap" not in scored
    # the whole record stays at the site; the shareable one has metrics, no path or count
    folder = tmp_path / "run" / "evaluation_site_test"
    shared = (folder / "evaluation_site_test.shareable.json").read_text()
    assert str(prepared) not in shared and '"n"' not in shared and "hospital-a" not in shared
    # rounded to 3 decimals: a full-precision AUROC gives the class counts away (test_metrics)
    exact = scored["metrics"]["auroc"]["value"]
    assert json.loads(shared)["metrics"]["auroc"]["value"] == round(exact, 3)
    with pytest.raises(SplitLeakageError, match=r"allow_patient_overlap=true"):
        evaluate_run(str(tmp_path / "run"), str(prepared), split="train", name="leak")
    allowed = evaluate_run(
        str(tmp_path / "run"), str(prepared), split="train", allow_patient_overlap=True
    )
    assert allowed["patient_overlap"] and all(
        p.startswith("hospital-a/") for p in allowed["patient_overlap"]
    )


def test_train_refuses_a_test_set_that_shares_patients_unless_allowed(
    prepared: Path, tmp_path: Path
) -> None:
    leaky = _config(prepared, tmp_path / "x", "data.tests.phantom_test.split=all")
    with pytest.raises(SplitLeakageError, match=r"data\.allow_patient_overlap=true"):
        read_run_patch_sets(leaky.data)
    allowed = _config(
        prepared,
        tmp_path / "y",
        "data.tests.phantom_test.split=all",
        "data.allow_patient_overlap=true",
    )
    sets = read_run_patch_sets(allowed.data)
    assert sets.overlap and all("phantom_test" in pair for pair in sets.overlap)


def test_patient_identity_is_site_and_patient(prepared: Path, tmp_path: Path) -> None:
    """The same id at two sites is two patients: no leakage is claimed between them."""
    other = tmp_path / "other"
    other.mkdir()
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["site"] = "hospital-b"
    manifest["path"] = [str((prepared / p).resolve()) for p in manifest["path"]]
    manifest.to_csv(other / "manifest.csv", index=False)
    config = _config(prepared, tmp_path / "z", f"data.tests.phantom_test.path={other}")
    sets = read_run_patch_sets(config.data)
    assert len(sets.tests["phantom_test"]) == len(manifest[manifest["split"] == "test"])


def test_gan_train_reads_only_the_train_rows(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _recording(monkeypatch, gan_cli)
    args = ["gan", "train", "gan_preset=tiny", "train.epochs=1", "data.format=patchset"]
    assert main([*args, f"data.path={prepared}", f"out_dir={tmp_path / 'gan'}"]) == 0
    (used,) = loaded
    assert {r.patient_id for r in used.records} == _patients(prepared, "train")
