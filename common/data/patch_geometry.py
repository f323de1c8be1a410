"""Where a lesion patch is cut from a mammogram: pure functions of the box and the image size.

Default (corrected): a square of side max(max(w, h) + 2 * margin, min_side) pixels of the stored
image, centred on the lesion, kept inside the image by shifting (`border="inside"`; when the side
exceeds the image it shrinks to the image's shorter side) or zero-padded (`border="pad"`).
`compat` reproduces the reference code's jitter-free geometry (PAPER.md), quirks included:
the side comes from the width only, the y margin is subtracted twice, and no padding is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from common.errors import DataError

BORDERS = ("inside", "pad")


@dataclass(frozen=True)
class Box:
    """Lesion bounding box in pixels of the stored image: top-left (x, y), width, height."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.w <= 0 or self.h <= 0:
            raise DataError(f"box {self.text()} has no area")

    def text(self) -> str:
        """As a manifest's box column writes it: 'x,y,w,h' (pixels)."""
        return f"{self.x},{self.y},{self.w},{self.h}"

    def check_inside(self, height: int, width: int) -> None:
        if self.x >= width or self.y >= height or self.x + self.w <= 0 or self.y + self.h <= 0:
            raise DataError(
                f"box x,y,w,h={self.text()} lies outside the image (width x height "
                f"{width}x{height} pixels)"
            )


@dataclass(frozen=True)
class Crop:
    """A square window [y0, y0 + side) x [x0, x0 + side); may extend past the image when padded."""

    x0: int
    y0: int
    side: int


def corrected_crop(
    box: Box,
    height: int,
    width: int,
    *,
    margin: int = 60,
    min_side: int = 128,
    border: str = "inside",
) -> Crop:
    if border not in BORDERS:
        raise DataError(f"border={border!r}: choose inside or pad")
    box.check_inside(height, width)
    side = max(max(box.w, box.h) + 2 * margin, min_side)
    if border == "inside":
        side = min(side, height, width)
    centre_x, centre_y = box.x + box.w / 2, box.y + box.h / 2
    x0 = int(np.floor(centre_x - side / 2 + 0.5))
    y0 = int(np.floor(centre_y - side / 2 + 0.5))
    if border == "inside":
        x0 = min(max(x0, 0), width - side)
        y0 = min(max(y0, 0), height - side)
    return Crop(x0, y0, side)


def compat_crop(
    box: Box, height: int, width: int, *, margin: int = 60, min_side: int = 128
) -> tuple[slice, slice]:
    """The reference code's (row slice, column slice), step by step as PAPER.md states it.

    Starts may end up negative when the side exceeds the image; Python slicing then counts
    from the end, exactly as the reference code's numpy indexing did.
    """
    side = box.w + 2 * margin
    if side < min_side:
        x_start = max(0, box.x) - (min_side - box.w) // 2
        side = min_side
    else:
        x_start = max(0, box.x) - margin
    x_start = max(0, x_start)
    x_start -= max(0, x_start + side - width)
    centre = max(0, box.y - (side - box.h) // 2)
    y_start = centre - margin
    y_start = max(0, y_start)
    y_start -= max(0, y_start + side - height)
    return slice(y_start, y_start + side), slice(x_start, x_start + side)


def cut(image: np.ndarray, crop: Crop) -> np.ndarray:
    """The crop's pixels, zero where it extends past the image."""
    height, width = image.shape[:2]
    out = np.zeros((crop.side, crop.side), dtype=image.dtype)
    ys, ye = max(crop.y0, 0), min(crop.y0 + crop.side, height)
    xs, xe = max(crop.x0, 0), min(crop.x0 + crop.side, width)
    out[ys - crop.y0 : ye - crop.y0, xs - crop.x0 : xe - crop.x0] = image[ys:ye, xs:xe]
    return out


def extract_patch(
    image: np.ndarray,
    box: Box,
    *,
    mode: str = "corrected",
    out_size: int = 128,
    margin: int = 60,
    min_side: int = 128,
    border: str = "inside",
) -> np.ndarray:
    """Cut the lesion patch and resize it to out_size x out_size with INTER_AREA."""
    if out_size not in (128, 224):
        raise DataError(f"out_size={out_size}: patches are 128 or 224 px")
    height, width = image.shape[:2]
    if mode == "compat":
        rows, cols = compat_crop(box, height, width, margin=margin, min_side=min_side)
        patch = image[rows, cols]
    elif mode == "corrected":
        patch = cut(
            image,
            corrected_crop(box, height, width, margin=margin, min_side=min_side, border=border),
        )
    else:
        raise DataError(f"mode={mode!r}: choose corrected or compat")
    if patch.size == 0:
        raise DataError(f"box {box} gives an empty patch in a {width}x{height} image")
    return cv2.resize(patch, (out_size, out_size), interpolation=cv2.INTER_AREA)
