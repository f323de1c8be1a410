"""A bounded, rerunnable recipe search on the training data only (`mammofl tune`).

A search space (configs/tune/<name>.yaml) names base overrides, axes (each value one or more
hydra overrides) and how many candidates to draw: `trials` distinct points of the axes'
product, drawn with `draw_seed` (random search, the procedure Papernot & Steinke 2022 analyse).
Every candidate runs at its full epoch budget for each seed, on the config's training data with
its selection hold-out; the score is the hold-out AUROC of the model the run returns. The
config's test sets are dropped before any data is loaded, so a search never reads a test image.

The hold-out also selects each run's epoch (as in every mammofl cell), so the scores are
optimistic alike for every candidate; the search ranks candidates, it does not report utility.
Each finished (candidate, seed) is written at once (atomic JSON), so an interrupted search
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.config.compose import compose_config
from common.config.schema import MammoflConfig
from common.errors import ConfigError, NonFiniteError
from common.eval.metrics import point_metrics
from common.eval.predict import predict_probabilities
from common.eval.records import write_json
from common.runs.grid import shared_loader
from common.runs.single_node import fit_cell, prepare_cell
from common.training.fit import check_fit_consistency

log = logging.getLogger(__name__)
SPACES_DIR = Path(__file__).resolve().parents[2] / "configs" / "tune"


@dataclass(frozen=True)
class SearchSpace:
    """`axes`: override group name -> values, each value a space-separated list of overrides."""

    name: str
    base: tuple[str, ...]
    axes: dict[str, tuple[str, ...]]
    trials: int
    seeds: tuple[int, ...]
    draw_seed: int = 0

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())


# the search's own privacy cost (Papernot & Steinke, ICLR 2022): never in a run's epsilon
SEARCH_NOT_ACCOUNTED = (
    "each run's epsilon covers that run only: this search read the same records in {runs} "
    "runs and released the best, which no ledger accounts; a run trained afterwards with the "
    "chosen settings on these records should say so (privacy.tuned_on=...), and "
    "common/privacy/tuning_cost.py bounds a random search's cost (docs/recipes.md)"
)


def load_space(name_or_path: str) -> SearchSpace:
    """A search space by name (configs/tune/<name>.yaml) or path; ConfigError names the file
    and field of any fault."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise ConfigError(f"search space {name_or_path!r}: no file {path}; known: {known}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a mapping with base, axes, trials, seeds expected")
    try:
        axes = {str(k): tuple(str(v) for v in values) for k, values in raw["axes"].items()}
        space = SearchSpace(
            name=path.stem,
            base=tuple(str(o) for o in raw.get("base", [])),
            axes=axes,
            trials=int(raw["trials"]),
            seeds=tuple(int(s) for s in raw["seeds"]),
            draw_seed=int(raw.get("draw_seed", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: {error!r}; fields: base, axes, trials, seeds") from error
    if not space.axes or any(not v for v in space.axes.values()) or space.trials < 1:
        raise ConfigError(f"{path}: every axis needs values and trials must be >= 1")
    if not space.seeds:
        raise ConfigError(f"{path}: seeds must list at least one seed")
    return space


def candidates(space: SearchSpace) -> list[dict[str, str]]:
    """`trials` distinct points of the axes' product (all of it when smaller), seeded."""
    names = list(space.axes)
    points = list(itertools.product(*(space.axes[n] for n in names)))
    chosen = random.Random(space.draw_seed).sample(points, min(space.trials, len(points)))
    return [dict(zip(names, point, strict=True)) for point in chosen]


def candidate_overrides(candidate: dict[str, str]) -> list[str]:
    return [o for value in candidate.values() for o in value.split()]


def candidate_id(candidate: dict[str, str]) -> str:
    text = json.dumps(candidate, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def trial_config(
    space: SearchSpace, candidate: dict[str, str], seed: int, overrides: Sequence[str]
) -> MammoflConfig:
    """The cell of one (candidate, seed), with every test set removed."""
    config = compose_config(
        [*space.base, *candidate_overrides(candidate), *overrides, f"seed={seed}"]
    )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, tests={}))


def run_trial(config: MammoflConfig, out_dir: Path, load: Any) -> dict[str, Any]:
    """Train one cell and score its returned model on the selection hold-out."""
    started = time.time()
    cell = prepare_cell(config, out_dir, progress=False, load=load)
    validation = cell.data.validation
    if validation is None:
        raise ConfigError("mammofl tune scores on the selection hold-out: set data.validation")
    result = fit_cell(cell)
    check_fit_consistency(result)
    scores = predict_probabilities(
        cell.model,
        validation,
        cell.device,
        config.train.feature_batch_size,
        config.train.feature_cache_dir,
    )
    metrics = point_metrics(validation.labels.numpy(), scores)
    return {
        "seed": config.seed,
        "holdout_auroc": metrics["auroc"],
        "holdout_auprc_benign": metrics["auprc_benign"],
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "epsilon_spent": result.epsilon_spent,
        "target_epsilon": cell.plan.target_epsilon,
        "noise_multiplier": cell.plan.noise_multiplier,
        "seconds": round(time.time() - started, 1),
    }


def comparable_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides as compared between a search and its resume: the feature cache is where, not
    what; order does not matter unless a key repeats or holds another (hydra applies value
    overrides in order; config-group choices are placed by the defaults list)."""
    kept = [o for o in overrides if not o.startswith("train.feature_cache_dir=")]
    keys = [o.partition("=")[0].lstrip("+~") for o in kept]
    # a key that repeats, or one inside another (data.real= and data.real.path=): order counts
    nested = len(set(keys)) < len(keys) or any(b.startswith(f"{a}.") for a in keys for b in keys)
    return kept if nested else sorted(kept)


def _check_same_search(out_dir: Path, space: SearchSpace, overrides: Sequence[str]) -> None:
    """A resumed search must be the same search: its trials are reused only then. Raises
    ConfigError naming what differs."""
    stamp = {"base": list(space.base), "axes": {k: list(v) for k, v in space.axes.items()}}
    stamp["overrides"] = comparable_overrides(overrides)
    path = out_dir / "search.json"
    # a search that wrote no trial (it stopped on its first: a data or setting error) has
    # nothing to protect: the corrected command starts it afresh in the same out_dir
    if path.is_file() and any((out_dir / "trials").glob("*/seed*.json")):
        before = json.loads(path.read_text())
        before["overrides"] = comparable_overrides(before.get("overrides", []))
        differ = [k for k in stamp if before.get(k) != stamp[k]]
        if differ:
            shown = "; ".join(f"{k}: {before.get(k)} -> {stamp[k]}" for k in differ)
            raise ConfigError(
                f"{out_dir} holds another search ({shown}); use a new out_dir, or the same "
                "space and overrides to resume"
            )
    else:
        write_json(path, stamp)


def run_search(
    space: SearchSpace, overrides: Sequence[str], out_dir: Path, seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Run (or resume) every (candidate, seed); write trials/<id>/seed<s>.json, tune.csv
    (candidates ranked by mean hold-out AUROC; failed ones last) and tune.json; returns the
    summary. A candidate whose overrides do not compose (a misspelt key or value) stops the
    search before any trial (ConfigError naming it); one that composes but cannot run on the
    data (a ConfigError such as a batch larger than the set) or diverges (NonFiniteError) is
    recorded as failed, with the reason, and the search goes on. Raises ConfigError when
    out_dir holds another search."""
    chosen_seeds = tuple(seeds) if seeds else space.seeds
    found = candidates(space)
    for candidate in found:  # a typo in an axis or override is the search's fault: say so now
        try:
            trial_config(space, candidate, chosen_seeds[0], overrides)
        except ConfigError as error:
            raise ConfigError(
                f"search space {space.name}, candidate {' '.join(candidate_overrides(candidate))}"
                f": {error}"
            ) from error
    _check_same_search(out_dir, space, overrides)  # writes search.json: after the checks
    if not any(o.startswith("train.feature_cache_dir=") for o in overrides):
        overrides = [*overrides, f"train.feature_cache_dir={out_dir / '_features'}"]
    load = shared_loader()
    log.info(
        "%s: %d of %d candidates x %d seeds", space.name, len(found), space.size, len(chosen_seeds)
    )
    started, ran = time.time(), 0
    rows = []
    for number, candidate in enumerate(found, 1):
        cid = candidate_id(candidate)
        results = []
        for seed in chosen_seeds:
            target = out_dir / "trials" / cid / f"seed{seed}.json"
            if target.is_file():
                results.append(json.loads(target.read_text()))
                continue
            started_trial = time.time()
            try:
                config = trial_config(space, candidate, seed, overrides)
                outcome = run_trial(config, target.parent, load)
            except (ConfigError, NonFiniteError) as error:
                outcome = {"seed": seed, "failed": str(error), "holdout_auroc": math.nan}
                outcome["seconds"] = round(time.time() - started_trial, 1)
            record = {"candidate": candidate, **outcome}
            write_json(target, record)
            results.append(record)
            ran += 1
            log.info(
                "[%d/%d] %s seed %d: %s (%.0f s)",
                number,
                len(found),
                " ".join(candidate_overrides(candidate)),
                seed,
                f"failed: {record['failed']}"
                if "failed" in record
                else f"hold-out AUROC {record['holdout_auroc']:.3f}, eps {record['epsilon_spent']}",
                record["seconds"],
            )
        rows.append(_candidate_row(cid, candidate, results))
    return _write_summary(space, overrides, out_dir, rows, chosen_seeds, ran, started)


def _candidate_row(
    cid: str, candidate: dict[str, str], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """One line of tune.csv: mean and std over the seeds that ran (NaN AUROC: a failed seed,
    or a one-class hold-out), the failures, the largest epsilon spent (empty without DP)."""
    aurocs = np.array([float(r.get("holdout_auroc", math.nan)) for r in results])
    spent = [r["epsilon_spent"] for r in results if r.get("epsilon_spent") is not None]
    failed = [r["failed"] for r in results if "failed" in r]
    ok = aurocs[~np.isnan(aurocs)]
    return {
        "candidate": cid,
        **candidate,
        "holdout_auroc_mean": float(ok.mean()) if len(ok) == len(aurocs) else math.nan,
        "holdout_auroc_std": float(ok.std()) if len(ok) == len(aurocs) else math.nan,
        "seeds": len(results),
        "failed": "; ".join(sorted(set(failed))),
        "epsilon_spent_max": max(spent) if spent else None,
        "seconds": float(sum(r["seconds"] for r in results)),
    }


def _write_summary(
    space: SearchSpace,
    overrides: Sequence[str],
    out_dir: Path,
    rows: list[dict[str, Any]],
    seeds: Sequence[int],
    ran: int,
    started: float,
) -> dict[str, Any]:
    import pandas as pd

    from common.atomic_io import atomic_write_text

    # a candidate with any failed (or undefined) seed ranks last: never "best"
    ranked = sorted(
        rows,
        key=lambda r: (
            math.isnan(r["holdout_auroc_mean"]),
            -np.nan_to_num(r["holdout_auroc_mean"]),
        ),
    )
    atomic_write_text(out_dir / "tune.csv", pd.DataFrame(ranked).to_csv(index=False))
    summary = {
        "space": dataclasses.asdict(space),
        "overrides": list(overrides),
        "seeds": list(seeds),
        "candidates": len(rows),
        "cell_runs": int(sum(r["seeds"] for r in rows)),
        "cell_runs_this_call": ran,
        "train_seconds_all_runs": round(sum(r["seconds"] for r in rows), 1),
        "wall_seconds_this_call": round(time.time() - started, 1),
        "score": "hold-out AUROC of the returned model (the hold-out also selected its epoch)",
        "failed_candidates": sum(bool(r["failed"]) for r in rows),
        "best": ranked[0] if ranked and not math.isnan(ranked[0]["holdout_auroc_mean"]) else None,
    }
    summary["privacy_note"] = SEARCH_NOT_ACCOUNTED.format(runs=summary["cell_runs"])
    write_json(out_dir / "tune.json", summary)
    return summary
