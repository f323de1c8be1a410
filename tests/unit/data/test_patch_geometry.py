"""Patch geometry on hand-computed boxes; `compat` against PAPER.md's algorithm, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.patch_geometry import Box, Crop, compat_crop, corrected_crop, cut, extract_patch
from common.errors import DataError

W, H = 1000, 800


def paper_algorithm(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[slice, slice]:
    """PAPER.md, transcribed independently: m = 60, s = 128."""
    m, s = 60, 128
    length = w + 2 * m
    if length < s:
        start = max(0, x) - (s - w) // 2
        length = s
    else:
        start = max(0, x) - m
    start = max(0, start)
    start -= max(0, start + length - width)
    x0 = start
    c = max(0, y - (length - h) // 2)
    start = c - m
    start = max(0, start)
    start -= max(0, start + length - height)
    return slice(start, start + length), slice(x0, x0 + length)


CASES = {
    # name: (box, image size, compat (rows, cols) by hand, corrected inside, corrected pad)
    "ordinary": (
        (100, 200, 50, 40),
        (W, H),
        ((75, 245), (40, 210)),
        (40, 135, 170),
        (40, 135, 170),
    ),
    "tiny": ((500, 400, 4, 6), (W, H), ((279, 407), (438, 566)), (438, 339, 128), (438, 339, 128)),
    "right_top_border": (
        (980, 10, 15, 15),
        (W, H),
        ((0, 135), (865, 1000)),
        (865, 0, 135),
        (920, -50, 135),
    ),
    "taller_than_wide": (
        (300, 300, 20, 300),
        (W, H),
        ((320, 460), (240, 380)),
        (100, 240, 420),
        (100, 240, 420),
    ),
    "side_larger_than_image": (
        (10, 10, 180, 100),
        (200, 150),
        ((-150, 150), (-100, 200)),
        (25, 0, 150),
        (-50, -90, 300),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compat_matches_paper_algorithm_and_hand_values(name: str) -> None:
    (x, y, w, h), (width, height), (rows, cols), _, _ = CASES[name]
    got = compat_crop(Box(x, y, w, h), height, width)
    assert got == paper_algorithm(x, y, w, h, width, height)
    assert (got[0].start, got[0].stop) == rows and (got[1].start, got[1].stop) == cols


def test_compat_quirks_are_kept() -> None:
    rows, cols = compat_crop(Box(100, 200, 50, 40), H, W)
    assert (rows.start + rows.stop) / 2 == 220 - 60  # lesion centre 60 px below the patch centre
    image = np.zeros((150, 200), np.uint8)
    rows, cols = compat_crop(Box(10, 10, 180, 100), 150, 200)
    assert image[rows, cols].shape == (150, 100)  # side larger than the image: smaller, not square


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("border", ["inside", "pad"])
def test_corrected_crop(name: str, border: str) -> None:
    box, (width, height), _, inside, pad = CASES[name]
    crop = corrected_crop(Box(*box), height, width, border=border)
    assert crop == Crop(*(inside if border == "inside" else pad))
    if border == "inside":
        assert 0 <= crop.x0 <= width - crop.side and 0 <= crop.y0 <= height - crop.side
    else:  # padded: the lesion is centred
        x, y, w, h = box
        assert abs(crop.x0 + crop.side / 2 - (x + w / 2)) <= 0.5
        assert abs(crop.y0 + crop.side / 2 - (y + h / 2)) <= 0.5


def test_pad_fills_outside_with_zeros() -> None:
    image = np.full((10, 10), 7, np.uint8)
    patch = cut(image, Crop(-2, 8, 4))
    assert patch.shape == (4, 4)
    assert (patch[:2, 2:] == 7).all() and (patch[:, :2] == 0).all() and (patch[2:, :] == 0).all()


@pytest.mark.parametrize("mode", ["corrected", "compat"])
@pytest.mark.parametrize("size", [128, 224])
def test_extract_patch_output(mode: str, size: int) -> None:
    image = (np.arange(H * W) % 251).astype(np.uint8).reshape(H, W)
    patch = extract_patch(image, Box(100, 200, 50, 40), mode=mode, out_size=size)
    assert patch.shape == (size, size) and patch.dtype == np.uint8


def test_bad_boxes_are_clear_errors() -> None:
    with pytest.raises(DataError, match="no area"):
        Box(1, 1, 0, 5)
    with pytest.raises(DataError, match="outside"):
        corrected_crop(Box(2000, 10, 5, 5), H, W)
    with pytest.raises(DataError, match="128 or 224"):
        extract_patch(np.zeros((300, 300), np.uint8), Box(1, 1, 5, 5), out_size=64)
