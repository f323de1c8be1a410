"""Planted copies of real patches among synthetic ones are flagged (real released patches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.images import load_patches
from common.data.readers import read_released, read_released_synthetic, stratified_limit
from common.eval.memorisation import memorisation_check


def test_planted_copies_are_all_flagged(release_dir: Path) -> None:
    real = load_patches(
        stratified_limit(
            read_released(release_dir / "dataset16062024" / "cbis-ddsm", "train"), 150
        ),
        128,
    )
    synthetic = load_patches(
        stratified_limit(
            read_released_synthetic(
                release_dir / "extension" / "synthetic_data" / "cbis-ddsm" / "c-dcgan"
            ),
            60,
        ),
        128,
    )
    pixels = real.pixels
    rng = np.random.default_rng(0)
    planted = {
        "exact": pixels[3],
        "flipped": np.ascontiguousarray(pixels[10][:, ::-1]),
        "flipped_both": np.ascontiguousarray(pixels[40][::-1, ::-1]),
        "shifted": np.roll(pixels[20], (4, -4), (0, 1)),
        "noised": np.clip(pixels[30] + rng.normal(0, 4, pixels[30].shape), 0, 255).astype(np.uint8),
    }
    sources = {"exact": 3, "flipped": 10, "flipped_both": 40, "shifted": 20, "noised": 30}
    candidates = np.concatenate([synthetic.pixels, np.stack(list(planted.values()))])
    report = memorisation_check(candidates, pixels, real.patch_set.patients)
    n = len(synthetic.pixels)
    planted_indices = list(range(n, n + len(planted)))
    assert set(planted_indices) <= set(report.flagged)
    for index, name in zip(planted_indices, planted, strict=True):
        assert report.synthetic[index].real_index == sources[name], name
    # the released MCGAN patches are not near-copies of these real patches
    assert not set(report.flagged) - set(planted_indices)
    summary = report.summary()
    assert summary["flagged"] == len(planted) and report.threshold >= 0.9
