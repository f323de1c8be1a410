"""ROI mask -> lesion boxes, as the reference code: a mask of another size is resized (nearest)
to the image; downscale 0.25 (nearest), close 9x9, upscale 4x, contours; each contour is its
own lesion (several blobs = several patches)."""

from __future__ import annotations

import cv2
import numpy as np

from common.data.patch_geometry import Box
from common.errors import DataError

# a mask of another size is resized to its image (CBIS-DDSM has such pairs); of another shape
# (aspect ratio off by more than this) it belongs to another image
ASPECT_TOLERANCE = 0.05
# a lesion mask covering more than this share of its image, up to every border, is taken for
# an inverted or empty-background mask (a CBIS-DDSM mass covers about 1 % of its mammogram)
MAX_FOREGROUND = 0.5


def binary_mask(mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 at the image's size (nearest-neighbour resize); nonzero = lesion."""
    height, width = image_shape
    binary = (mask > 0).astype(np.uint8)
    if binary.shape != (height, width):
        rows, columns = binary.shape
        if abs(rows / columns - height / width) > ASPECT_TOLERANCE * (height / width):
            raise DataError(
                f"ROI mask of {rows}x{columns} px does not fit an image of {height}x{width} px "
                "(another shape, not just another size): is it this image's mask?"
            )
        binary = cv2.resize(binary, (width, height), interpolation=cv2.INTER_NEAREST)
    if not binary.any():
        raise DataError("empty ROI mask (no foreground pixel)")
    _refuse_background_as_lesion(binary)
    return binary


def _refuse_background_as_lesion(binary: np.ndarray) -> None:
    """DataError for a mask whose foreground covers most of the image and touches all four
    borders: an inverted mask (lesion 0 on 255), an all-white one, or a white background that
    only an ignored channel marked as background; cut, it would be the whole mammogram."""
    share = float(binary.mean())
    borders = (binary[0].any(), binary[-1].any(), binary[:, 0].any(), binary[:, -1].any())
    if share > MAX_FOREGROUND and all(borders):
        raise DataError(
            f"ROI mask foreground covers {share:.0%} of the image and every border: an "
            "inverted mask (lesion 0 on 255) or no mask at all; export the lesion as the "
            "nonzero pixels (or give the row a box, x,y,w,h)"
        )


def mask_boxes(mask: np.ndarray, image_shape: tuple[int, int]) -> list[Box]:
    height, width = image_shape
    binary = binary_mask(mask, image_shape)
    small = cv2.resize(
        binary, (max(1, width // 4), max(1, height // 4)), interpolation=cv2.INTER_NEAREST
    )
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    large = cv2.resize(
        closed, (small.shape[1] * 4, small.shape[0] * 4), interpolation=cv2.INTER_NEAREST
    )
    contours, _ = cv2.findContours(large, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:  # a blob smaller than the 0.25 grid vanishes: fall back to the full mask
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = [Box(*cv2.boundingRect(c)) for c in contours]
    return sorted(boxes, key=lambda b: (b.y, b.x))


def cluster_box(mask: np.ndarray, image_shape: tuple[int, int]) -> Box:
    """One box around every foreground pixel: a calcification cluster is one abnormality (one
    CBIS-DDSM row), however many specks its ROI mask holds, so it gives one patch, not one per
    speck."""
    return Box(*cv2.boundingRect(binary_mask(mask, image_shape)))
