"""A site's own data: prepared once from its raw download, then only its training patients.

The site's test patients (the prepare split) are never read here: its DP training set is the
prepared `train` rows and its local validation set (for the site's own evaluation) the `val`
rows, both read through `read_prepared_split`. With a shared patch source (`patches` +
`partition`), the site holds one per-patient share of it, split here per patient into training
and validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.config.federated_schema import SiteDataConfig
from common.data.images import LoadedPatches, load_patches
from common.data.patch_set import PatchSet, with_site
from common.data.prepare import PrepareOptions, prepare
from common.data.readers import read_patch_source
from common.data.splits import (
    assert_disjoint_patients,
    patient_partition,
    read_prepared_split,
    split_by_patient,
)
from common.errors import DataError
from common.site.facts import SiteFacts

log = logging.getLogger(__name__)


@dataclass
class SiteData:
    train: LoadedPatches  # the DP-SGD records (privacy unit: one patch)
    validation: LoadedPatches  # local evaluation only


def ensure_prepared(facts: SiteFacts, config: SiteDataConfig) -> None:
    """Run `mammofl prepare` on the site's raw download once (resumable, atomic writes)."""
    if (facts.data_dir / "report.json").is_file() and (facts.data_dir / "manifest.csv").is_file():
        return  # report.json is written last
    if facts.raw_dir is None:
        raise DataError(
            f"site {facts.name}: {facts.data_dir} holds no prepared patch set and no raw-dir "
            "was given; run `mammofl prepare` there or set raw-dir"
        )
    log.info("site %s: preparing %s", facts.name, facts.raw_dir)
    prepare(
        PrepareOptions(
            source="cbis-ddsm",
            root=facts.raw_dir,
            out_dir=facts.data_dir,
            test_fraction=config.test_fraction,
            val_fraction=config.validation_fraction,
            seed=config.split_seed,
            site=facts.name,
        ),
        progress=False,
    )


def shared_source_patients(facts: SiteFacts, config: SiteDataConfig) -> PatchSet:
    """The site's per-patient share of a shared patch source (its train rows if prepared)."""
    assert facts.patches is not None
    patch_set = read_patch_source(facts.patches, default_split="train")
    if facts.partition is not None:
        patch_set = patient_partition(patch_set, *facts.partition, seed=config.split_seed)
    return patch_set


def site_splits(facts: SiteFacts, config: SiteDataConfig) -> tuple[PatchSet, PatchSet]:
    """(DP training patches, local validation patches), never a test patient; identity is
    (site, patient)."""
    if facts.patches is not None:
        train, validation = split_by_patient(
            shared_source_patients(facts, config), config.validation_fraction, config.split_seed
        )
    else:
        ensure_prepared(facts, config)
        train = read_prepared_split(facts.data_dir, "train")
        validation = read_prepared_split(facts.data_dir, "val")
    return _as_site(train, facts.name, "train"), _as_site(validation, facts.name, "validation")


def _as_site(part: PatchSet, site: str, name: str) -> PatchSet:
    return PatchSet(with_site(part.records, site), part.skipped, f"{site}:{name}")


def load_site_data(facts: SiteFacts, config: SiteDataConfig) -> SiteData:
    train, validation = site_splits(facts, config)
    assert_disjoint_patients({"train": train, "validation": validation})
    if len(set(train.labels)) < 2:
        raise DataError(f"site {facts.name}: its training patches hold a single class")
    return SiteData(
        train=load_patches(train, config.image_size),
        validation=load_patches(validation, config.image_size),
    )
