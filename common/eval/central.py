"""Central evaluation: the global model on named test sets that belong to no site.

Test images are loaded once; with a frozen backbone their features are cached (keyed on the
backbone's weights), so each round costs one pass of the head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.schema import PatchSourceConfig
from common.data.images import LoadedPatches, load_patches
from common.data.readers import read_patch_source
from common.eval.metrics import METRICS, evaluate_scores
from common.eval.predict import predict_probabilities
from common.models.classifier import Classifier


class CentralEvaluator:
    def __init__(
        self,
        tests: dict[str, PatchSourceConfig],
        image_size: int,
        device: torch.device,
        cache_dir: Path | None = None,
        batch_size: int = 64,
    ) -> None:
        self.tests: dict[str, LoadedPatches] = {
            name: load_patches(read_patch_source(source, default_split="test"), image_size)
            for name, source in tests.items()
        }
        self.device = device
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size

    def scores(self, model: Classifier) -> dict[str, np.ndarray]:
        return {
            name: predict_probabilities(model, loaded, self.device, self.batch_size, self.cache_dir)
            for name, loaded in self.tests.items()
        }

    def evaluate(self, model: Classifier, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
        """{test name: {auroc, auprc_malignant, auprc_benign}} (values, and CIs when
        `bootstrap` > 0, patient-clustered)."""
        results = {}
        for name, scores in self.scores(model).items():
            loaded = self.tests[name]
            metrics = evaluate_scores(
                loaded.patch_set.labels,
                scores,
                loaded.patch_set.patient_keys,
                bootstrap=bootstrap,
                seed=seed,
            )
            results[name] = metrics
        return results

    def point_values(self, model: Classifier) -> dict[str, dict[str, float]]:
        """{test name: {auroc, auprc_malignant, auprc_benign}}: the values only, per round."""
        return {
            name: {metric: results[metric]["value"] for metric in METRICS}
            for name, results in self.evaluate(model).items()
        }
