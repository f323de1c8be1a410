"""`mammofl gan score`: fidelity of a synthetic patch set against a real one, as Fig. 2 of the
paper (3 patient-wise real subsets, random synthetic subsets; real-vs-real and syn-vs-syn rows
beside real-vs-syn, mean +- std), plus precision/recall/coverage and conditional accuracy.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from common.data.images import LoadedPatches
from common.errors import ConfigError
from common.eval.fidelity import (
    frechet_distance,
    kernel_inception_distance,
    precision_recall_coverage,
    standardise_pair,
    texture_features,
)

log = logging.getLogger(__name__)
Metric = Callable[[np.ndarray, np.ndarray], float]


def patient_subsets(patients: list[str], count: int, seed: int) -> list[np.ndarray]:
    """`count` disjoint subsets of record indices, each patient wholly in one."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold = {unique[p]: i % count for i, p in enumerate(order)}
    return [np.array([i for i, p in enumerate(patients) if fold[p] == k]) for k in range(count)]


def random_subsets(n: int, count: int, size: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    size = min(size, n // count)
    return [order[k * size : (k + 1) * size] for k in range(count)]


def fig2_rows(
    real: np.ndarray,
    syn: np.ndarray,
    real_sets: list[np.ndarray],
    syn_sets: list[np.ndarray],
    metric: Metric,
) -> dict[str, dict[str, float]]:
    pairs = list(itertools.combinations(range(len(real_sets)), 2))
    values = {
        "real_vs_real": [metric(real[real_sets[i]], real[real_sets[j]]) for i, j in pairs],
        "syn_vs_syn": [metric(syn[syn_sets[i]], syn[syn_sets[j]]) for i, j in pairs],
        "real_vs_syn": [
            metric(real[real_sets[k]], syn[syn_sets[k]]) for k in range(len(real_sets))
        ],
    }
    return {
        row: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
        for row, v in values.items()
    }


def inception_features(pixels: np.ndarray, weights: str, device: torch.device) -> np.ndarray:
    """pytorch-fid's TF-ported Inception (the paper's FID network) from a local weights file."""
    if not Path(weights).is_file():
        raise ConfigError(f"inception weights {weights} not found (pt_inception-2015-12-05-*.pth)")
    from unittest import mock

    from pytorch_fid import inception

    local = torch.load(weights, map_location="cpu", weights_only=True)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: local):
        model = inception.InceptionV3([3], resize_input=True, normalize_input=True)
    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), 32):
            batch = torch.as_tensor(pixels[start : start + 32]).float().div(255)
            batch = batch[:, None].expand(-1, 3, -1, -1).to(device)
            out.append(model(batch)[0].flatten(1).cpu().numpy())
    return np.concatenate(out)


def conditional_auroc(
    real_features: np.ndarray,
    real_labels: np.ndarray,
    syn_features: np.ndarray,
    syn_labels: np.ndarray,
) -> dict[str, float]:
    """A classifier trained on real patches scores the synthetic ones against their conditions."""
    scaler = StandardScaler().fit(real_features)
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit(
        scaler.transform(real_features), real_labels
    )
    scores = classifier.predict_proba(scaler.transform(syn_features))[:, 1]
    return {
        "auroc": float(roc_auc_score(syn_labels, scores)),
        "accuracy": float(((scores > 0.5) == syn_labels).mean()),
    }


def score_sets(
    real: LoadedPatches,
    syn: LoadedPatches,
    real_features: np.ndarray,
    syn_features: np.ndarray,
    *,
    subsets: int = 3,
    seed: int = 0,
    inception_weights: str | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    real_sets = patient_subsets(real.patch_set.patients, subsets, seed)
    size = min(len(s) for s in real_sets)
    syn_sets = random_subsets(len(syn.patch_set), subsets, size, seed)
    real_texture = texture_features(real.pixels)
    real_tex, syn_tex = standardise_pair(real_texture, texture_features(syn.pixels), real_texture)
    report: dict[str, Any] = {
        "subsets": {"real": [len(s) for s in real_sets], "synthetic": [len(s) for s in syn_sets]},
        "fd_backbone": fig2_rows(
            real_features, syn_features, real_sets, syn_sets, frechet_distance
        ),
        "kid_backbone": fig2_rows(
            real_features,
            syn_features,
            real_sets,
            syn_sets,
            lambda a, b: kernel_inception_distance(a, b, seed=seed)[0],
        ),
        "fd_texture_first_order_glcm": fig2_rows(
            real_tex, syn_tex, real_sets, syn_sets, frechet_distance
        ),
        "precision_recall_coverage": precision_recall_coverage(real_features, syn_features),
        "conditional": conditional_auroc(
            real_features,
            np.asarray(real.patch_set.labels),
            syn_features,
            np.asarray(syn.patch_set.labels),
        ),
    }
    if inception_weights:
        device = device or torch.device("cpu")
        real_inc = inception_features(real.pixels, inception_weights, device)
        syn_inc = inception_features(syn.pixels, inception_weights, device)
        report["fid_inception"] = fig2_rows(
            real_inc, syn_inc, real_sets, syn_sets, frechet_distance
        )
    else:
        report["fid_inception"] = "not computed: pass inception_weights=<pytorch-fid .pth file>"
    report["frd"] = frd_or_reason(real, syn, real_sets, syn_sets)
    return report


def frd_or_reason(
    real: LoadedPatches, syn: LoadedPatches, real_sets: list[np.ndarray], syn_sets: list[np.ndarray]
) -> Any:
    """The paper's FRD (version 0 of the metric) through frd-score, when it is installed."""
    try:
        from frd_score import compute_frd
    except ImportError:
        return (
            "not computed: the optional package frd-score is not installed (it needs "
            "pyradiomics, whose 3.1.0 sdist does not install from the package index here); "
            "the texture Frechet distance above is a radiomics-style substitute, not FRD"
        )
    real_paths = np.array([r.path for r in real.patch_set.records])
    syn_paths = np.array([r.path for r in syn.patch_set.records])

    def frd(a: np.ndarray, b: np.ndarray) -> float:
        return float(compute_frd([list(a), list(b)], frd_version="v0"))

    return fig2_rows(real_paths, syn_paths, real_sets, syn_sets, frd)
