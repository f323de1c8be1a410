"""The one module in `common` that imports Flower: records <-> plain Python for the protocol.

Everything here converts; what is allowed in a reply is decided in
`common.federated.protocol`, and both sides call those checks.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.federated import protocol as p

P = ParamSpec("P")
R = TypeVar("R")


def _reads_a_reply(parse: Callable[P, R]) -> Callable[P, R]:
    """A parser of a site's reply: whatever a malformed reply makes it raise (a record of the
    wrong type, a value that is no number, JSON nested past the parser's depth) is a
    ReplySchemaError, so the server rejects that one reply; a site's reply never ends the run."""

    @functools.wraps(parse)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return parse(*args, **kwargs)
        except p.ReplySchemaError:
            raise
        except Exception as error:  # any failure to read what a site sent: that reply rejected
            raise p.ReplySchemaError(
                f"{parse.__name__}: unreadable ({type(error).__name__}: {error})"
            ) from error

    return checked


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


# ---- status ------------------------------------------------------------------------------
def status_content(status: Mapping[str, Any]) -> RecordDict:
    p.check_status(status)
    return RecordDict({p.CONFIG: ConfigRecord({p.STATUS_JSON: json.dumps(status)})})


@_reads_a_reply
def parse_status(content: RecordDict) -> dict[str, Any]:
    """A status reply's status; ReplySchemaError for anything that is not one."""
    if p.CONFIG not in content.config_records:
        raise p.ReplySchemaError(f"status reply: {p.CONFIG} (a ConfigRecord) is missing")
    return _parse_status_record(content.config_records[p.CONFIG])


def _parse_status_record(record: ConfigRecord) -> dict[str, Any]:
    status = json.loads(str(record[p.STATUS_JSON]))
    if not isinstance(status, dict):
        raise p.ReplySchemaError("status: not a JSON object")
    p.check_status(status)
    return dict(status)


def with_site_status(content: RecordDict, status: Mapping[str, Any]) -> RecordDict:
    """A synthesize, train or evaluate reply with the site's status beside its work, so the
    server learns what the work charged without an exchange of its own."""
    p.check_status(status)
    content[p.SITE_STATUS] = ConfigRecord({p.STATUS_JSON: json.dumps(dict(status))})
    return content


@_reads_a_reply
def check_base_model_reply(content: RecordDict) -> None:
    """A base model reply holds the site's status alone (`parse_site_status` reads it)."""
    keys = frozenset({p.SITE_STATUS})
    p.check_keys("base model reply", content.keys(), keys, keys)


@_reads_a_reply
def parse_site_status(content: RecordDict) -> dict[str, Any]:
    """The status a synthesize, train or evaluate reply carries (allow-listed as a status
    reply's); ReplySchemaError when it is missing or not a ConfigRecord."""
    if p.SITE_STATUS not in content.config_records:
        raise p.ReplySchemaError(f"reply: {p.SITE_STATUS} (a ConfigRecord) is missing")
    return _parse_status_record(content.config_records[p.SITE_STATUS])


# ---- train -------------------------------------------------------------------------------
def train_reply_content(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    *,
    weight: float,
    epsilon: float,
    event: Mapping[str, Any],
    weighting: str,
    evaluation: Mapping[str, float] | None = None,
) -> RecordDict:
    """The trained weights, the round's ledger event and, when the message asked for it
    (`protocol.EVALUATE_RECEIVED`), the scores of the weights received, as an evaluate reply's."""
    metrics = {p.WEIGHT: float(weight), "epsilon": float(epsilon)}
    flat_event = {k: event[k] for k in p.EVENT_KEYS}
    flat_event["round"] = -1 if flat_event["round"] is None else int(flat_event["round"])
    p.check_trainable(arrays, expected)
    p.check_train_metrics(metrics, weighting)
    p.check_event({**flat_event})
    records: dict[str, Any] = {
        p.ARRAYS: to_array_record(arrays),
        p.METRICS: MetricRecord(metrics),
        p.EVENT: ConfigRecord(flat_event),
    }
    if evaluation is not None:
        records[p.EVALUATION] = _evaluation_record(evaluation)
    return RecordDict(records)


@_reads_a_reply
def parse_train_reply(
    content: RecordDict, expected: Mapping[str, tuple[int, ...]], weighting: str
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    p.check_keys(
        "train reply",
        content.keys(),
        frozenset({p.ARRAYS, p.METRICS, p.EVENT, p.EVALUATION, p.SITE_STATUS}),
        frozenset({p.ARRAYS, p.METRICS, p.EVENT, p.SITE_STATUS}),
    )
    arrays = from_array_record(content.array_records[p.ARRAYS])
    metrics = {k: float(v) for k, v in content.metric_records[p.METRICS].items()}
    event = dict(content.config_records[p.EVENT])
    p.check_trainable(arrays, expected)
    p.check_train_metrics(metrics, weighting)
    p.check_event(event)
    event["round"] = None if int(event["round"]) < 0 else int(event["round"])
    return arrays, metrics, event


@_reads_a_reply
def parse_train_evaluation(content: RecordDict, requested: bool = True) -> dict[str, float] | None:
    """The scores a train reply carries of the weights it received (allow-listed as an
    evaluate reply's), or None when it carries none (not asked for, or scoring failed at the
    site). Raises ReplySchemaError for scores not asked for or not a MetricRecord."""
    if p.EVALUATION not in content:
        return None
    if not requested:
        raise p.ReplySchemaError(f"train reply: {p.EVALUATION} was not asked for")
    if p.EVALUATION not in content.metric_records:
        raise p.ReplySchemaError(f"train reply: {p.EVALUATION} must be a MetricRecord")
    return _parse_evaluation(content.metric_records[p.EVALUATION])


# ---- evaluate ----------------------------------------------------------------------------
def _evaluation_record(metrics: Mapping[str, float]) -> MetricRecord:
    clean = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
    clean[p.WEIGHT] = 1.0
    p.check_evaluate_metrics(clean)
    return MetricRecord(clean)


def _parse_evaluation(record: MetricRecord) -> dict[str, float]:
    metrics = {k: float(v) for k, v in record.items()}
    p.check_evaluate_metrics(metrics)
    return metrics


def evaluate_reply_content(metrics: Mapping[str, float]) -> RecordDict:
    return RecordDict({p.METRICS: _evaluation_record(metrics)})


@_reads_a_reply
def parse_evaluate_reply(content: RecordDict) -> dict[str, float]:
    keys = frozenset({p.METRICS, p.SITE_STATUS})
    p.check_keys("evaluate reply", content.keys(), keys, keys)
    if p.METRICS not in content.metric_records:
        raise p.ReplySchemaError(f"evaluate reply: {p.METRICS} must be a MetricRecord")
    return _parse_evaluation(content.metric_records[p.METRICS])


# ---- synthetic patches -------------------------------------------------------------------
def synthetic_reply_content(
    pixels: np.ndarray, labels: np.ndarray, provenance: Mapping[str, Any], requested: int
) -> RecordDict:
    chunks = [
        (pixels[i : i + p.SYNTHETIC_CHUNK], labels[i : i + p.SYNTHETIC_CHUNK])
        for i in range(0, len(pixels), p.SYNTHETIC_CHUNK)
    ]
    p.check_synthetic(chunks, provenance, requested, int(pixels.shape[-1]))
    records: dict[str, Any] = {
        f"{p.SYNTHETIC_PREFIX}{k:03d}": to_array_record({"pixels": x, "labels": y})
        for k, (x, y) in enumerate(chunks)
    }
    records[p.PROVENANCE] = ConfigRecord({p.STATUS_JSON: json.dumps(dict(provenance))})
    return RecordDict(records)


@_reads_a_reply
def parse_synthetic_reply(
    content: RecordDict, requested: int, image_size: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    names = sorted(k for k in content.array_records if k.startswith(p.SYNTHETIC_PREFIX))
    p.check_keys(
        "synthetic reply",
        content.keys(),
        frozenset({*names, p.PROVENANCE, p.SITE_STATUS}),
        frozenset({p.PROVENANCE, p.SITE_STATUS}),
    )
    chunks = []
    for name in names:
        arrays = from_array_record(content.array_records[name])
        p.check_keys(name, arrays, frozenset({"pixels", "labels"}), frozenset({"pixels", "labels"}))
        chunks.append((arrays["pixels"], arrays["labels"]))
    provenance = json.loads(str(content.config_records[p.PROVENANCE][p.STATUS_JSON]))
    p.check_synthetic(chunks, provenance, requested, image_size)
    return (
        np.concatenate([c[0] for c in chunks]),
        np.concatenate([c[1] for c in chunks]),
        provenance,
    )
