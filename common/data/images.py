"""Patch pixels as the classifier sees them: 8-bit gray, INTER_AREA resize, 3 channels, 0.5/0.5.

These are the reference code's settings (not ImageNet statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from common.data.patch_set import PatchSet

FLIP_VARIANTS = ("none", "h", "v", "hv")


@dataclass
class LoadedPatches:
    """Pixels of the readable records of a patch set, in record order."""

    patch_set: PatchSet
    pixels: np.ndarray  # uint8, [N, size, size]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.patch_set.labels, dtype=torch.long)

    def at_size(self, size: int) -> LoadedPatches:
        """These patches at size x size (INTER_AREA, as loaded): e.g. for a backbone built for
        one input size (tiny_swin: 32 px) or an MCGAN's resolution; itself when already so."""
        if self.pixels.shape[-1] == size:
            return self
        return LoadedPatches(self.patch_set, resized(self.pixels, size))


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W] -> [N, size, size], each as load_patches resizes it (`area_resize`)."""
    if len(pixels) == 0:
        return np.zeros((0, size, size), pixels.dtype)
    return np.stack([area_resize(p, size) for p in pixels])


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """One image [H, W] -> [size, size] with INTER_AREA (averaging: no aliasing downwards)."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def read_gray(path: str) -> np.ndarray:
    """Read an 8-bit grayscale image; raise ValueError with the reason when unusable."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("unreadable image (missing, truncated or unknown format)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, found {image.dtype}")
    return image


def load_patches(patch_set: PatchSet, size: int, progress: bool = False) -> LoadedPatches:
    """Load and resize every patch; unreadable ones are skipped and reported in `skipped`."""
    kept, pixels = [], []
    skipped = list(patch_set.skipped)
    for index, record in enumerate(tqdm(patch_set.records, disable=not progress, desc="load")):
        try:
            image = read_gray(record.path)
        except ValueError as error:
            skipped.append((record.path, str(error)))
            continue
        if image.shape != (size, size):
            image = area_resize(image, size)
        kept.append(index)
        pixels.append(image)
    subset = patch_set.subset(kept)
    subset.skipped = skipped
    array = np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8)
    return LoadedPatches(subset, array)


def to_model_input(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W] -> float [B, 3, H, W] normalised with mean 0.5, std 0.5."""
    tensor = torch.as_tensor(pixels).float().div_(255.0)
    tensor = tensor.sub_(0.5).div_(0.5)
    return tensor.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def apply_flips(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each image [B, C, H, W] by its variant index (0 none, 1 h, 2 v, 3 hv)."""
    out = images.clone()
    horizontal = (flips == 1) | (flips == 3)
    vertical = (flips == 2) | (flips == 3)
    out[horizontal] = out[horizontal].flip(-1)
    out[vertical] = out[vertical].flip(-2)
    return out
