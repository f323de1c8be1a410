"""A site's own data: prepared once from its raw download, then only its training patients.

The site's test patients (the prepare split) are never read here. Its training patients are
split again per patient into a DP training set and a local validation set (for the site's own
evaluation); with a shared patch source (`patches` + `partition`), the site holds one
per-patient share of it and all of that share counts as training patients.
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
    if (facts.data_dir / "split.csv").is_file():
        return
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
            seed=config.split_seed,
            site=facts.name,
        ),
        progress=False,
    )


def training_patients(facts: SiteFacts, config: SiteDataConfig) -> PatchSet:
    """Every patch of the site's training patients (never its test patients)."""
    if facts.patches is not None:
        patch_set = read_patch_source(facts.patches)
        if facts.partition is not None:
            patch_set = patient_partition(patch_set, *facts.partition, seed=config.split_seed)
    else:
        ensure_prepared(facts, config)
        patch_set = read_prepared_split(facts.data_dir, "train")
    records = with_site(patch_set.records, facts.name)  # identity is (site, patient)
    return PatchSet(records, patch_set.skipped, f"{facts.name}:train")


def load_site_data(facts: SiteFacts, config: SiteDataConfig) -> SiteData:
    patients = training_patients(facts, config)
    train, validation = split_by_patient(patients, config.validation_fraction, config.split_seed)
    assert_disjoint_patients({"train": train, "validation": validation})
    if len(set(train.labels)) < 2:
        raise DataError(f"site {facts.name}: its training patches hold a single class")
    return SiteData(
        train=load_patches(train, config.image_size),
        validation=load_patches(validation, config.image_size),
    )
