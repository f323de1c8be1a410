"""Which split each prepared patient belongs to: the source's official split, or a seeded one.

CBIS-DDSM's description CSVs say which patients are Training and which Test: the per-patient
split every paper uses, kept by default. A validation split is always carved from train only
(seeded, per patient, label-stratified), never from test. A source of Test rows only (a
Test-only download) is all test. When the source holds no official split or Training rows only
(a Training-only download, BCDR, a lesion manifest without a split column) or a random split is
asked for, the test patients are a seeded per-patient split of all patients, and the rule says
so. Records with an official split beside records without one are refused, by name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace

from common.data.patch_set import PatchSet, show_patient
from common.data.splits import split_by_patient
from common.errors import ConfigError, DataError

SPLIT_MODES = ("official", "random")


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    """ConfigError unless both fractions are in [0, 1)."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value}: use a fraction in [0, 1)")


def assign_splits(
    patch_set: PatchSet, *, mode: str, test_fraction: float, val_fraction: float, seed: int
) -> tuple[PatchSet, str]:
    """The patch set with every record's `split` set to train, val or test, and the rule used
    (for the report). Records may arrive with an official split ('train'/'test') or none.

    Raises ConfigError for a bad mode or fraction, DataError when the official split puts a
    patient on both sides (the ids are named; `split=random` re-splits on purpose).
    """
    if mode not in SPLIT_MODES:
        raise ConfigError(f"split={mode!r}: choose one of {', '.join(SPLIT_MODES)}")
    check_fractions(test_fraction, val_fraction)
    official = {r.split for r in patch_set.records}
    if mode == "official":
        refuse_partly_marked([(r.split, r.provenance_file or r.path) for r in patch_set.records])
    if mode == "official" and official == {"test"}:
        # a Test-only download (the usual way to build the test set): every patient is test;
        # a seeded split would send most official test patients to train and val
        records = [replace(record, split="test") for record in patch_set.records]
        rule = "official split (the source holds only Test rows: all test)"
        return PatchSet(records, patch_set.skipped, patch_set.name), rule
    if mode == "official" and official == {"train", "test"}:
        _refuse_patients_on_both_sides(patch_set)
        train_idx = [i for i, r in enumerate(patch_set.records) if r.split == "train"]
        test_idx = [i for i, r in enumerate(patch_set.records) if r.split == "test"]
        train, test = patch_set.subset(train_idx), patch_set.subset(test_idx)
        rule = "official split (the source's Training / Test rows)"
    else:
        train, test = _seeded(patch_set, test_fraction, seed)
        why = (
            "split=random asked for"
            if mode == "random"
            else f"the source holds only {', '.join(sorted(official - {''}))} rows"
            if official - {""}
            else "the source has no official split"
        )
        rule = f"seeded per-patient split, test_fraction {test_fraction}, seed {seed} ({why})"
    train, val = _seeded(train, val_fraction, seed)
    rule += f"; val: seeded per-patient {val_fraction} of train, seed {seed}"
    records = [
        replace(record, split=split)
        for split, part in (("train", train), ("val", val), ("test", test))
        for record in part.records
    ]
    return PatchSet(records, patch_set.skipped, patch_set.name), rule


def _seeded(patch_set: PatchSet, fraction: float, seed: int) -> tuple[PatchSet, PatchSet]:
    if fraction == 0.0 or len(patch_set) == 0:
        return patch_set, patch_set.subset([])
    return split_by_patient(patch_set, fraction, seed)


def refuse_partly_marked(marks: Sequence[tuple[str, str]]) -> None:
    """DataError when some records have an official split and others none, naming the latter
    (`marks`: (official split or '', where the record comes from)). A seeded split of them all
    would move official Test patients into train (a Test-only download plus one unmarked table
    would no longer be all test)."""
    unmarked = sorted({where for split, where in marks if not split})
    marked = Counter(split for split, _ in marks if split)
    if not unmarked or not marked:
        return
    shown = ", ".join(unmarked[:3]) + (", ..." if len(unmarked) > 3 else "")
    raise DataError(
        f"{sum(1 for split, _ in marks if not split)} records have no official split "
        f"({shown}) while {', '.join(f'{n} are {s}' for s, n in sorted(marked.items()))}: "
        "prepare them apart (CBIS-DDSM: a description CSV or folders without Training/Test in "
        "their names; a manifest: fill its split column), or re-split every patient at random "
        "on purpose with split=random"
    )


def _refuse_patients_on_both_sides(patch_set: PatchSet) -> None:
    sides: dict[str, set[str]] = defaultdict(set)
    for record in patch_set.records:
        sides[record.patient_key].add(record.split)
    both = sorted(p for p, s in sides.items() if len(s) > 1)
    if both:
        shown = ", ".join(show_patient(p) for p in both[:10])
        raise DataError(
            f"{len(both)} patients are in both the official Training and Test rows ({shown}"
            f"{', ...' if len(both) > 10 else ''}), as happens when mass and calc files are "
            "combined: prepare one abnormality type (abnormality=mass or calc), or re-split at "
            "random on purpose with split=random"
        )
