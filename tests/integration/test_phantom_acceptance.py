"""The default phantom: shape and margin carry the label, size and brightness do not, and the
sites differ. Cross-validated over patients (no patient in both a fold's train and test part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.config.compose import compose_config
from common.data.cbis_ddsm import full_image, index_dicoms, read_description_csv, series_key
from common.data.images import load_patches
from common.data.mammogram_io import read_dicom_pixels, read_mammogram
from common.data.phantom.sites import write_phantom_sites
from common.data.prepare import PrepareOptions, prepare
from common.data.readers import read_manifest
from common.models.classifier import build_classifier
from common.training.features import extract_features


def _held_out_auroc(features: np.ndarray, target: np.ndarray, groups: list[str]) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    scores = cross_val_predict(
        model, features, target, groups=groups, cv=GroupKFold(5), method="predict_proba"
    )
    return float(roc_auc_score(target, scores[:, 1]))


def _mask_area_and_intensity(site_root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    index, _ = index_dicoms(site_root)
    rows = read_description_csv(site_root / "mass_case_description_train_set.csv").to_dict(
        "records"
    )
    values, labels, patients = [], [], []
    for row in rows:
        image = read_mammogram(full_image(row, index))
        candidates = [read_dicom_pixels(p) for p in index[series_key(row["mask_path"])]]
        mask = next(c for c in candidates if c.shape[0] > 0.5 * image.shape[0]) > 0
        values.append((mask.sum(), image[mask].mean()))
        labels.append(int(row["pathology"] == "MALIGNANT"))
        patients.append(f"{site_root.name}:{row['patient_id']}")
    return np.array(values, float), np.array(labels), patients


@pytest.mark.slow
def test_default_phantom_label_lives_in_shape_not_size(
    effnet_weights: Path, tmp_path: Path
) -> None:
    sites = write_phantom_sites(tmp_path / "raw")  # the defaults: 3 sites x 30 patients, 2000 px
    model = build_classifier(compose_config(["model=efficientnet_lite0"]).model)
    features, labels, patients, site_of = [], [], [], []
    simple, simple_labels, simple_patients = [], [], []
    for k, name in enumerate(sites):
        prepare(PrepareOptions("cbis-ddsm", tmp_path / "raw" / name, tmp_path / "patches" / name))
        loaded = load_patches(read_manifest(tmp_path / "patches" / name), 224)
        features.append(
            extract_features(model.backbone, loaded, (0,), 16, torch.device("cpu"))[0].numpy()
        )
        labels += loaded.patch_set.labels
        patients += [f"{name}:{p}" for p in loaded.patch_set.patients]
        site_of += [k] * len(loaded.patch_set)
        values, site_labels, site_patients = _mask_area_and_intensity(tmp_path / "raw" / name)
        simple.append(values)
        simple_labels.append(site_labels)
        simple_patients += site_patients
    x, y = np.concatenate(features), np.array(labels)
    assert _held_out_auroc(x, y, patients) >= 0.8
    area_intensity = _held_out_auroc(
        np.concatenate(simple), np.concatenate(simple_labels), simple_patients
    )
    assert area_intensity <= 0.65
    for k in range(len(sites)):
        assert _held_out_auroc(x, (np.array(site_of) == k).astype(int), patients) >= 0.9
