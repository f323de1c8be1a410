"""Result files: JSON records and predictions CSVs, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.atomic_io import atomic_torch_save, atomic_write_text
from common.data.images import LoadedPatches


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_clean(record), indent=2, sort_keys=False) + "\n")


def write_predictions(path: Path, loaded: LoadedPatches, scores: np.ndarray) -> None:
    frame = pd.DataFrame(
        {
            "patch": [r.path for r in loaded.patch_set.records],
            "patient_id": loaded.patch_set.patients,
            "label": loaded.patch_set.labels,
            "score_malignant": scores,
        }
    )
    atomic_write_text(path, frame.to_csv(index=False))


def save_model(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_torch_save(path, state)
