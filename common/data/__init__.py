"""Patch sets: the one on-disk form every reader produces and everything downstream reads."""

from common.data.patch_set import PatchRecord, PatchSet
from common.data.readers import read_patch_source
from common.data.splits import assert_disjoint_patients, split_by_patient

__all__ = [
    "PatchRecord",
    "PatchSet",
    "assert_disjoint_patients",
    "read_patch_source",
    "split_by_patient",
]
