"""The federation's wire contract, free of Flower: message types, record keys, error codes, and
the allow-list schema of every reply a site may send.

A site checks its own reply against the allow-list before sending and the server checks it
again on receipt: trainable weights (the keys, dtypes and shapes the server sent), a few named
metrics, ledger events, synthetic patches that passed the memorisation check; never an exact
dataset size unless `federation.weighting=examples` and the site opted in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.config.schema import ACCOUNTANTS
from common.errors import MammoflError, PrivacyError
from common.privacy.ledger import UNITS, LedgerEvent

# message types (Flower's "<category>.<action>")
STATUS = "query.status"
# the base model in an exchange of its own: only under client-level DP, where a site that
# could not install it with its round-1 message would void round 1 for every site
BASE_MODEL = "query.base_model"
SYNTHESIZE = "query.synthesize"
TRAIN = "train"
EVALUATE = "evaluate"

# record keys
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
EVENT = "ledger-event"
STATUS_JSON = "status-json"
PROVENANCE = "provenance"
EVALUATION = "evaluation"  # a train reply's scores of the weights it received (optional)
# a train or evaluate message to a site that does not hold the run's base model yet (its first
# of the run, or after it came back) brings the full model: no exchange of its own for it
BASE = "base-model"
# every synthesize, train and evaluate reply carries the site's status (its ledger as it holds
# it after the work): the server needs no status exchange to learn what the work charged
SITE_STATUS = "site-status"
SYNTHETIC_PREFIX = "synthetic-"
SYNTHETIC_CHUNK = 256

# config keys the server sends
ROUND = "server-round"
BASE_SHA = "base-model-sha256"
PROXIMAL_MU = "proximal-mu"  # Flower's FedProx key
WEIGHTING = "weighting"
COUNT = "count"
# a train message asks the site to score the weights it brings (the previous round's global
# model) on its validation patients before training on them: one exchange a round, not two
EVALUATE_RECEIVED = "evaluate-received"

WEIGHT = "aggregation-weight"
TRAIN_METRICS = frozenset({WEIGHT, "epsilon"})
EVALUATE_METRICS = frozenset({WEIGHT, "auroc", "auprc_malignant", "auprc_benign"})
EVENT_KEYS = frozenset({"noise_multiplier", "sample_rate", "steps", "kind", "round", "status"})
PROVENANCE_KEYS = frozenset(
    {
        "generator",
        "dp",
        "epsilon",
        "delta",
        "formal_guarantee",
        "note",
        "memorisation_check",
        "noise",
        "image_size",
    }
)
STATUS_KEYS = frozenset(
    {
        "site",
        "budget",
        "delta",
        "unit",
        "accountant",
        "ledger",
        "epsilon",
        "epsilon_dp_sgd",
        "gan_epsilon",
        "synthetic_guarantee",
        "plan",
        "noise",
    }
)
LEDGER_KEYS = frozenset({"schema_version", "delta", "accountant", "unit", "events", "non_dp_uses"})


class ErrorCode:
    """Codes of the error replies a site sends instead of crashing."""

    BUDGET_EXCEEDED = 4001
    PRIVACY = 4002
    DATA = 4003
    CONFIG = 4004
    BASE_MODEL = 4005  # the base model sent could not be installed: nothing was charged
    INTERNAL = 5000


class ReplySchemaError(MammoflError, ValueError):
    """A reply holds something the allow-list does not (a key, a dtype, a shape, a count)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ReplySchemaError(message)


def check_keys(what: str, keys: Any, allowed: frozenset[str], required: frozenset[str]) -> None:
    keys = set(keys)
    _require(keys <= allowed, f"{what}: keys {sorted(keys - allowed)} are not allowed")
    _require(required <= keys, f"{what}: keys {sorted(required - keys)} are missing")


def check_trainable(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Exactly the trainable parameters sent, float32, same shapes, finite."""
    _require(set(arrays) == set(expected), "trainable keys differ from the ones sent")
    for name, array in arrays.items():
        _require(array.dtype == np.float32, f"{name}: dtype {array.dtype}, float32 expected")
        _require(tuple(array.shape) == tuple(expected[name]), f"{name}: shape {array.shape}")
        _require(bool(np.isfinite(array).all()), f"{name}: non-finite values")


def check_event(event: Mapping[str, Any]) -> None:
    """A train reply's round: a settled DP-SGD event, typed as the ledger keeps it (never
    coerced: a string sigma would pass float() here and fail in the server's mirror)."""
    check_keys("ledger event", event, EVENT_KEYS, EVENT_KEYS)
    _require(event["kind"] == "dp-sgd" and event["status"] == "settled", "a settled dp-sgd event")
    _require(_whole(event["round"]), "ledger event: round must be whole")
    _check_ledger_event("ledger event", event)


def check_train_metrics(metrics: Mapping[str, float], weighting: str) -> None:
    check_keys("train metrics", metrics, TRAIN_METRICS, TRAIN_METRICS)
    if weighting == "equal":  # an exact N may only leave a site that opted in
        _require(metrics[WEIGHT] == 1.0, "equal weighting: aggregation-weight must be 1.0")
    # FedAvg divides by the weights' sum: a zero, negative or infinite weight breaks it
    weight = float(metrics[WEIGHT])
    _require(math.isfinite(weight) and weight >= 1, "aggregation-weight must be >= 1")
    _require(math.isfinite(float(metrics["epsilon"])), "epsilon must be finite")


def check_evaluate_metrics(metrics: Mapping[str, float]) -> None:
    check_keys("evaluate metrics", metrics, EVALUATE_METRICS, frozenset({WEIGHT}))
    _require(metrics[WEIGHT] == 1.0, "evaluate replies carry no counts: weight 1.0")


def check_synthetic(
    chunks: list[tuple[np.ndarray, np.ndarray]],
    provenance: Mapping[str, Any],
    requested: int,
    image_size: int,
) -> None:
    """uint8 [n, S, S] patches with labels in {0, 1}, at most `requested`; without DP filtered
    by the memorisation check (a DP-MCGAN's are covered by its guarantee instead)."""
    check_keys("provenance", provenance, PROVENANCE_KEYS, PROVENANCE_KEYS)
    checked = provenance["memorisation_check"] == "filtered" or (
        provenance["dp"] is True and str(provenance["memorisation_check"]).startswith("skipped")
    )
    _require(checked, "synthetic patches without DP must pass the memorisation check")
    _require(int(provenance["image_size"]) == image_size, "synthetic image size")
    total = 0
    for pixels, labels in chunks:
        _require(pixels.dtype == np.uint8, f"synthetic pixels dtype {pixels.dtype}")
        _require(pixels.ndim == 3 and pixels.shape[1:] == (image_size, image_size), "shape")
        _require(labels.dtype == np.int64 and labels.shape == (len(pixels),), "labels")
        _require(bool(np.isin(labels, (0, 1)).all()), "labels must be 0 or 1")
        total += len(pixels)
    _require(0 < total <= requested, f"{total} synthetic patches for {requested} requested")


PLAN_KEYS = frozenset({"noise_multiplier", "sample_rate", "steps_per_round"})
NON_DP_USE_KEYS = frozenset({"kind", "note"})
MAX_TEXT = 500  # a status string longer than this is no name or note: refused


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _check_ledger_event(what: str, fields: Mapping[str, Any]) -> None:
    """Typed as the ledger keeps it (never coerced), then the ledger's own rules
    (`LedgerEvent`: sigma > 0, 0 < q <= 1, steps >= 0, a known kind and status)."""
    sigma, q, steps = fields["noise_multiplier"], fields["sample_rate"], fields["steps"]
    _require(_number(sigma) and _number(q) and _whole(steps), f"{what}: sigma, q, whole steps")
    rules = {k: fields[k] for k in ("kind", "status") if k in fields}
    try:
        LedgerEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, **rules)
    except PrivacyError as error:
        raise ReplySchemaError(f"{what}: {error}") from error


def _delta(value: Any) -> bool:
    return _number(value) and 0 < value < 1


def check_status(status: Mapping[str, Any]) -> None:
    """Names, types and ranges of a site's status, down to each ledger event: what the
    server's mirror computes with, each value one the mirror's ledger accepts (a site's reply
    must never stop the run), and nothing else (no free-form field to carry private data)."""
    _require(isinstance(status, Mapping), "status: not an object")
    check_keys("status", status, STATUS_KEYS, STATUS_KEYS)
    for key in ("site", "unit", "accountant", "synthetic_guarantee", "noise"):
        _require(_text(status[key]), f"status: {key} must be a short string")
    for key in ("budget", "delta", "epsilon", "epsilon_dp_sgd"):
        _require(_number(status[key]), f"status: {key} must be a finite number")
    _require(status["budget"] > 0 and _delta(status["delta"]), "status: budget > 0, 0 < delta < 1")
    _require(status["gan_epsilon"] is None or _number(status["gan_epsilon"]), "gan_epsilon")
    plan = status["plan"]
    if plan is not None:
        _require(isinstance(plan, Mapping), "status: plan must be an object or null")
        check_keys("plan", plan, PLAN_KEYS, PLAN_KEYS)
        _check_ledger_event("plan", {**plan, "steps": plan["steps_per_round"]})
    ledger = status["ledger"]
    _require(isinstance(ledger, Mapping), "status: ledger must be an object")
    check_keys("ledger", ledger, LEDGER_KEYS, LEDGER_KEYS)
    _require(_whole(ledger["schema_version"]) and _delta(ledger["delta"]), "ledger values")
    _require(ledger["accountant"] in ACCOUNTANTS, f"ledger: accountant one of {ACCOUNTANTS}")
    _require(ledger["unit"] in UNITS, f"ledger: unit one of {UNITS}")
    _require(isinstance(ledger["events"], list), "ledger: events must be a list")
    _require(isinstance(ledger["non_dp_uses"], list), "ledger: non_dp_uses must be a list")
    for event in ledger["events"]:
        _require(isinstance(event, Mapping), "ledger event: not an object")
        check_keys("ledger event", event, EVENT_KEYS | {"label"}, EVENT_KEYS)
        _require(event["round"] is None or _whole(event["round"]), "ledger event: round")
        for key in ("kind", "status", "label"):
            _require(_text(event.get(key, "")), f"ledger event: {key} must be a short string")
        _check_ledger_event("ledger event", event)
    for use in ledger["non_dp_uses"]:
        _require(isinstance(use, Mapping), "non-DP use: not an object")
        check_keys("non-DP use", use, NON_DP_USE_KEYS, NON_DP_USE_KEYS)
        _require(_text(use["kind"]) and _text(use["note"]), "non-DP use: short strings")
