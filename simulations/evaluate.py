"""`mammofl evaluate`: score a saved run's model on any patch set.

A prepared site's manifest gives its test rows (split=test unless told otherwise), and a test
set that shares a (site, patient) with the run's training or selection patients is refused:
its score would be optimistic. `allow_patient_overlap=true` scores it anyway, on purpose, and
the overlap is written into the evaluation record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.config.schema import MammoflConfig, PatchSourceConfig
from common.data.images import load_patches
from common.data.patch_set import PatchSet, show_patient
from common.data.readers import read_patch_source
from common.data.splits import shared_patients
from common.errors import ConfigError, DataError, SplitLeakageError
from common.eval.metrics import evaluate_scores
from common.eval.predict import predict_probabilities
from common.eval.records import write_json, write_predictions
from common.models.classifier import build_classifier
from common.models.weights import load_classifier_checkpoint
from common.runs.shareable import shareable_record
from common.training.settings import resolve_device


def run_record(run_dir: Path) -> dict[str, Any]:
    # the site's own record holds the data paths that result.json (shareable) leaves out
    result = run_dir / "site_only.json"
    if not result.is_file():
        result = run_dir / "result.json"
    if not result.is_file():
        raise ConfigError(f"{result} not found: run_dir must be a `mammofl train` output folder")
    try:
        record = json.loads(result.read_text())
    except ValueError as error:
        raise ConfigError(f"{result} is not a readable run record ({error})") from error
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(
            f"{result} holds no run config: run_dir must be a `mammofl train` output folder"
        )
    return record


def load_run_config(run_dir: Path, record: dict[str, Any] | None = None) -> MammoflConfig:
    """The run's config; `record` when the caller has read it already. ConfigError when the
    stored config does not fit this mammofl's (another version, an edited file)."""
    stored = (record if record is not None else run_record(run_dir))["config"]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(MammoflConfig), stored)
        config = OmegaConf.to_object(merged)
    except Exception as error:  # omegaconf's validation and conversion errors, many types
        raise ConfigError(
            f"{run_dir}: its stored config does not fit this mammofl's ({error})"
        ) from error
    assert isinstance(config, MammoflConfig)
    return config


def evaluate_run(
    run_dir: str,
    patches: str,
    format: str = "patchset",
    split: str | None = None,
    name: str = "custom",
    out: str | None = None,
    allow_patient_overlap: bool = False,
) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ConfigError(
            f"name={name!r}: letters, digits, _ . - only (it names files and a folder in the "
            "run: evaluation_<name>)"
        )
    folder = Path(run_dir)
    stored = run_record(folder)
    config = load_run_config(folder, stored)
    source = PatchSourceConfig(format=format, path=patches, split=split)
    test_set = read_patch_source(source, default_split="test")
    if "federated_config" in stored:
        # the training patients stayed at the sites: no overlap check is possible here
        overlap: list[str] | str = (
            "not checked: a federated model's training data stay at the sites"
        )
    else:
        overlap = training_overlap(config, test_set, allow_patient_overlap)
    config.model.weights, config.model.init_from = "none", None
    model = build_classifier(config.model)
    load_classifier_checkpoint(model, folder / "model.pt")
    loaded = load_patches(test_set, config.data.image_size)
    device = resolve_device(config.train.device)
    scores = predict_probabilities(model, loaded, device, config.train.feature_batch_size)
    target = Path(out) if out else folder / f"evaluation_{name}"
    write_predictions(target / f"predictions_{name}.csv", loaded, scores)
    metrics = evaluate_scores(
        loaded.patch_set.labels,
        scores,
        loaded.patch_set.patient_keys,
        bootstrap=config.eval.bootstrap,
        confidence=config.eval.confidence,
        seed=config.seed,
    )
    record = {
        "run_dir": str(folder),
        "patches": patches,
        "name": name,
        "metrics": metrics,
        "skipped": loaded.patch_set.skipped,
    } | ({"patient_overlap": overlap} if overlap else {})
    # the whole record names paths, patients and exact counts: it stays at the site; the
    # shareable file keeps the metrics only (as mammofl train's result.json)
    write_json(target / f"evaluation_{name}.json", record)
    write_json(target / f"evaluation_{name}.shareable.json", shareable_evaluation(record))
    return record


def shareable_evaluation(record: dict[str, Any]) -> dict[str, Any]:
    """What of an evaluation may leave the site: its name and metrics without exact counts
    (`common.runs.shareable`); no path, patient id or skipped file."""
    shared = shareable_record({"tests": {record["name"]: record["metrics"]}}, seeded_noise=False)
    overlap = record.get("patient_overlap")
    return {
        "name": record["name"],
        "metrics": shared["tests"][record["name"]],
        "patient_overlap": overlap
        if isinstance(overlap, str)
        else ("test patients used in training, allowed on purpose" if overlap else "none"),
        "site_only": f"evaluation_{record['name']}.json (paths, patients, counts: never to "
        "leave the site)",
    }


def training_overlap(config: MammoflConfig, test_set: PatchSet, allowed: bool) -> list[str]:
    """Patients ('site/patient') of `test_set` that the run trained or selected on.

    Raises SplitLeakageError when there are any and `allowed` is false, and DataError when
    the run's training data cannot be read to check (moved or deleted), naming the way out.
    """
    from common.runs.run_data import read_run_patch_sets

    try:
        sets = read_run_patch_sets(config.data, include_tests=False)
    except DataError as error:
        if allowed:
            return []
        raise DataError(
            f"cannot check the test set against the run's training patients ({error}); "
            "restore the training data, or pass allow_patient_overlap=true to score unchecked"
        ) from error
    used = sets.train.concat(sets.validation)
    shared = [show_patient(p) for p in shared_patients({"training": used, "test": test_set})]
    if shared and not allowed:
        raise SplitLeakageError(
            f"{len(shared)} test patients were used to train or select this model (e.g. "
            f"{', '.join(shared[:5])}): the score would be optimistic. Evaluate on the run's "
            "test split (split=test of a prepared set), or pass allow_patient_overlap=true "
            "to score it on purpose"
        )
    return shared
