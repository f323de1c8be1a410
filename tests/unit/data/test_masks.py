import numpy as np
import pytest

from common.data.masks import mask_boxes
from common.data.patch_geometry import Box
from common.errors import DataError


def test_two_blobs_give_two_boxes() -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[40:80, 40:100] = 255
    mask[200:300, 240:280] = 255
    assert mask_boxes(mask, (400, 400)) == [Box(40, 40, 60, 40), Box(240, 200, 40, 100)]


def test_close_joins_a_blob_split_by_a_thin_gap() -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[100:140, 100:140] = 1
    mask[100:140, 144:180] = 1  # 4 px gap
    assert mask_boxes(mask, (400, 400)) == [Box(100, 100, 80, 40)]


def test_mask_of_another_size_is_resized_nearest() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[10:20, 30:50] = 1
    assert mask_boxes(mask, (400, 400)) == [Box(120, 40, 80, 40)]


def test_empty_mask_is_an_error() -> None:
    with pytest.raises(DataError, match="empty ROI mask"):
        mask_boxes(np.zeros((50, 50), np.uint8), (50, 50))
