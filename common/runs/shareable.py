"""Split a cell's record into what may leave the site and what stays there.

`site_only.json` keeps everything (exact counts, skipped file paths, manifest hashes, data
paths, the seed of a seeded-noise run): useful at the site, never to be sent. `result.json` is
the shareable part: metrics, the privacy record and the recipe, with every data path, hash,
exact count and (in seeded-noise mode) seed taken out. Rule of thumb (DESIGN.md privacy model):
nothing that identifies or counts the private records leaves a site.
"""

from __future__ import annotations

import copy
from typing import Any

from common.eval.metrics import released

REDACTED = "<kept at the site>"
# an epoch record's values computed from private records (EpochRecord)
HISTORY_METRICS = ("train_loss", "val_loss", "val_auprc")
# per-test-set metrics: exact counts of private test records
COUNT_KEYS = ("n", "n_patients", "n_positive", "n_negative")
# config keys that hold paths at the site (data.*.path, folders derived from them, a start model)
PATH_KEYS = ("path", "shared_dir", "feature_cache_dir", "out_dir", "init_from")


def shareable_record(record: dict[str, Any], *, seeded_noise: bool) -> dict[str, Any]:
    """The part of a cell's `record` that may leave the site (a deep copy; `record` unchanged).

    Keeps `tests.<name>.auroc` (and the other metrics), `privacy.*` (epsilon spent, unit, the
    guarantee flag, sigma, q, steps) and the recipe. Drops `data` (counts, skipped paths,
    manifest hashes), per-test counts and wall times (under DP an epoch's time tracks the number
    of sampled records); data paths and `model.init_from` in `config` become REDACTED; in
    seeded-noise mode the seed too (whoever knows it can replay the noise).
    """
    shared = copy.deepcopy(record)
    shared.pop("data", None)
    shared.pop("frozen_checksum", None)  # a hash of public weights, but no use off the site
    shared.pop("start_model_sha256", None)  # a hash of a model trained at the site
    # wall times: under DP an epoch's time grows with the number of Poisson-sampled records,
    # an un-noised side channel
    shared.pop("seconds", None)
    for epoch in shared.get("history", []):
        epoch.pop("seconds", None)
    for metrics in shared.get("tests", {}).values():
        for key in COUNT_KEYS:
            metrics.pop(key, None)
        for value in metrics.values():  # resamples with one class: a function of the labels
            if isinstance(value, dict):
                value.pop("bootstrap_dropped", None)
    # metrics and losses of private sets, rounded: a full-precision AUROC's denominator is
    # n_malignant * n_benign (`released`); an epoch's epsilon is accounting, not data: kept
    if "tests" in shared:
        shared["tests"] = released(shared["tests"])
    for epoch in shared.get("history", []):
        epoch.update({k: released(epoch[k]) for k in HISTORY_METRICS if k in epoch})
    privacy = shared.get("privacy", {})
    if privacy.get("delta_note"):  # its text names the exact N
        privacy["delta_note"] = "delta above 1/(10 N) (N in site_only.json)"
    if "config" in shared:
        _redact_paths(shared["config"].get("data", {}))
        _redact_paths(shared["config"].get("model", {}))
        for key in ("shared_dir", "out_dir"):
            if key in shared["config"]:
                shared["config"][key] = REDACTED
        train = shared["config"].get("train", {})
        if train.get("feature_cache_dir") is not None:
            train["feature_cache_dir"] = REDACTED
    if seeded_noise:
        shared["seed"] = REDACTED
        if "config" in shared:
            shared["config"]["seed"] = REDACTED
    shared["site_only"] = "site_only.json (counts, paths, hashes: never to leave the site)"
    return shared


def _redact_paths(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PATH_KEYS and isinstance(value, str) and value:
                node[key] = REDACTED
            else:
                _redact_paths(value)
    elif isinstance(node, list):
        for item in node:
            _redact_paths(item)
