"""Frozen-backbone features stored once per (backbone weights, flip variants, image pixels).

A Table 1 grid, a recipe search and an audit read the same images through different manifests
(limits, hold-outs, random halves, Real vs Real+Syn): keyed by each image's own pixels, every
image's features are computed once and reused by all of them. The bank is a folder per
(backbone checksum, variants, input format) of shards: `shard-<id>.pt` holds [V, n, F]
features (or [V, n, ...] trunk maps, keyed apart by `features.cached_features(kind=...)`)
and `shard-<id>.json` the n image hashes; the JSON is written last, so a shard whose JSON
exists is complete (atomic writes; an interrupted run leaves no half shard in the index).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from common.atomic_io import atomic_torch_save, atomic_write_text

# bump when the pixels -> model input mapping changes (common.data.images.to_model_input)
INPUT_FORMAT = "gray-uint8/255-0.5/0.5-3ch-v1"


def image_hashes(pixels: np.ndarray) -> list[str]:
    """One SHA-256 (24 hex digits) per image [N, H, W] uint8: its shape and bytes."""
    hashes = []
    for image in pixels:
        digest = hashlib.sha256(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        hashes.append(digest.hexdigest()[:24])
    return hashes


class FeatureBank:
    def __init__(self, cache_dir: Path, backbone_checksum: str, variants: tuple[int, ...]) -> None:
        digest = hashlib.sha256(
            f"{backbone_checksum}|{','.join(map(str, variants))}|{INPUT_FORMAT}".encode()
        )
        self.folder = cache_dir / f"bank-{digest.hexdigest()[:24]}"
        self._index: dict[str, tuple[Path, int]] | None = None

    def index(self) -> dict[str, tuple[Path, int]]:
        """image hash -> (shard file, row), over every complete shard."""
        if self._index is None:
            self._index = {}
            for listing in sorted(self.folder.glob("shard-*.json")):
                shard = listing.with_suffix(".pt")
                for row, image in enumerate(json.loads(listing.read_text())):
                    self._index.setdefault(image, (shard, row))
        return self._index

    def lookup(self, hashes: list[str]) -> tuple[dict[int, torch.Tensor], list[int]]:
        """Features [V, F] of the positions found, and the positions missing."""
        index = self.index()
        found: dict[int, torch.Tensor] = {}
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, image in enumerate(hashes):
            if image in index:
                shard, row = index[image]
                by_shard.setdefault(shard, []).append((position, row))
        for shard, pairs in by_shard.items():
            features = torch.load(shard, weights_only=True)
            for position, row in pairs:
                found[position] = features[:, row]
        return found, [p for p in range(len(hashes)) if p not in found]

    def add(self, hashes: list[str], features: torch.Tensor) -> None:
        """Store features [V, n, F] of n new images (one new shard)."""
        name = hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        shard = self.folder / f"shard-{name}.pt"
        atomic_torch_save(shard, features.contiguous().clone())
        atomic_write_text(shard.with_suffix(".json"), json.dumps(hashes))
        index = self.index()
        for row, image in enumerate(hashes):
            index.setdefault(image, (shard, row))
