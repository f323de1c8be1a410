"""The simulated hospitals' archives: phantom raw downloads per site and a central test set of
separate patients (prepared by the launcher: it belongs to no site)."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from common.config.federated_schema import FederatedRunConfig
from common.data.patch_set import PatchSet, write_manifest
from common.data.phantom.sites import SPLITS, write_phantom_site
from common.data.prepare import PrepareOptions, prepare
from common.data.splits import read_prepared_split
from common.parent_watch import watched_by_this_process

log = logging.getLogger(__name__)
CENTRAL_TEST = "central-test"


@dataclass(frozen=True)
class DownloadJob:
    root: Path
    style: str
    patients: int
    long_side: int
    seed: int
    ambiguity: float
    conspicuity: float
    split: str
    prepared: Path | None = None  # central test: prepared here too (it belongs to no site)


def _write(job: DownloadJob) -> None:
    if not (job.root / SPLITS[job.split][1]).is_file():  # the CSV is written last, atomically
        write_phantom_site(
            job.root,
            job.style,
            patients=job.patients,
            long_side=job.long_side,
            seed=job.seed,
            ambiguity=job.ambiguity,
            split=job.split,
            conspicuity=job.conspicuity,
        )
    if job.prepared is not None and not (job.prepared / "report.json").is_file():
        options = PrepareOptions("cbis-ddsm", job.root, job.prepared, site=CENTRAL_TEST)
        prepare(options, progress=False)


def prepare_workspace(config: FederatedRunConfig, workers: int = 2) -> None:
    """Write every phantom site's raw download and the central phantom test set (idempotent)."""
    phantom = config.phantom
    if phantom is None:
        return
    out = Path(config.out_dir)
    styles = sorted({s.phantom_style for s in config.sites if s.phantom_style})
    jobs = [
        DownloadJob(
            root=out / "raw" / site.name,
            style=site.phantom_style,
            patients=phantom.patients,
            long_side=phantom.long_side,
            seed=phantom.seed + 10 * index,  # two sites of one style: different patients
            ambiguity=phantom.ambiguity,
            conspicuity=phantom.conspicuity,
            split="train",
        )
        for index, site in enumerate(config.sites)
        if site.phantom_style
    ]
    jobs += [
        DownloadJob(
            root=out / "raw" / CENTRAL_TEST / style,
            style=style,
            patients=phantom.test_patients,
            long_side=phantom.long_side,
            seed=phantom.seed + 7,
            ambiguity=phantom.ambiguity,
            conspicuity=phantom.conspicuity,
            split="test",
            prepared=out / CENTRAL_TEST / style,
        )
        for style in styles
    ]
    log.info("phantom: %d downloads in %s", len(jobs), out / "raw")
    # watched: a killed command's forked workers would otherwise wait for ever; fork named
    # (Python 3.14's default is forkserver, whose workers are not this process's children)
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=fork, **watched_by_this_process()) as pool:
        list(pool.map(_write, jobs))
    combine_central_test(out / CENTRAL_TEST, styles)


def combine_central_test(folder: Path, styles: list[str]) -> None:
    """One patch set of every style's test patients (all rows of each test-only download: it
    belongs to no site); patient ids qualified by style, since every style numbers its
    patients from P_100001."""
    records = []
    for style in styles:
        for record in read_prepared_split(folder / style, "all").records:
            records.append(replace(record, patient_id=f"{style}:{record.patient_id}", split="test"))
    write_manifest(PatchSet(records, name=CENTRAL_TEST), folder)
