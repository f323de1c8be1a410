"""`mammofl evaluate`: score a saved run's model on any patch set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.config.schema import MammoflConfig, PatchSourceConfig
from common.data.images import load_patches
from common.data.readers import read_patch_source
from common.errors import ConfigError
from common.eval.metrics import evaluate_scores
from common.eval.predict import predict_probabilities
from common.eval.records import write_json, write_predictions
from common.models.classifier import build_classifier
from common.models.weights import load_classifier_checkpoint
from common.training.settings import resolve_device


def load_run_config(run_dir: Path) -> MammoflConfig:
    # the site's own record holds the data paths that result.json (shareable) leaves out
    result = run_dir / "site_only.json"
    if not result.is_file():
        result = run_dir / "result.json"
    if not result.is_file():
        raise ConfigError(f"{result} not found: run_dir must be a `mammofl train` output folder")
    stored = json.loads(result.read_text())["config"]
    merged = OmegaConf.merge(OmegaConf.structured(MammoflConfig), stored)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, MammoflConfig)
    return config


def evaluate_run(
    run_dir: str,
    patches: str,
    format: str = "patchset",
    split: str | None = None,
    name: str = "custom",
    out: str | None = None,
) -> dict[str, Any]:
    folder = Path(run_dir)
    config = load_run_config(folder)
    config.model.weights, config.model.init_from = "none", None
    model = build_classifier(config.model)
    load_classifier_checkpoint(model, folder / "model.pt")
    source = PatchSourceConfig(format=format, path=patches, split=split)
    loaded = load_patches(read_patch_source(source), config.data.image_size)
    device = resolve_device(config.train.device)
    scores = predict_probabilities(model, loaded, device, config.train.feature_batch_size)
    target = Path(out) if out else folder / f"evaluation_{name}"
    write_predictions(target / f"predictions_{name}.csv", loaded, scores)
    metrics = evaluate_scores(
        loaded.patch_set.labels,
        scores,
        loaded.patch_set.patients,
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
    }
    write_json(target / f"evaluation_{name}.json", record)
    return record
