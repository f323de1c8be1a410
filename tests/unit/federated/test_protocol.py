"""The reply allow-list: only trainable weights, named metrics, ledger events and checked
synthetic patches leave a site; never an exact dataset size unless opted in."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from common.federated import protocol as p
from common.federated.protocol import ReplySchemaError
from common.fl_records import (
    evaluate_reply_content,
    parse_evaluate_reply,
    parse_site_status,
    parse_status,
    parse_synthetic_reply,
    parse_train_evaluation,
    parse_train_reply,
    status_content,
    synthetic_reply_content,
    train_reply_content,
    with_site_status,
)
from tests.unit.federated.conftest import site_status

EXPECTED = {"head.weight": (2, 4), "head.bias": (2,)}
EVENT = {
    "noise_multiplier": 1.1,
    "sample_rate": 0.2,
    "steps": 10,
    "kind": "dp-sgd",
    "round": 1,
    "status": "settled",
    "label": "",
}

STATUS = site_status()
PROVENANCE = {  # of 8 px patches from an MCGAN without DP, checked for memorisation
    "generator": "mcgan",
    "dp": False,
    "epsilon": None,
    "delta": None,
    "formal_guarantee": False,
    "note": "no DP",
    "memorisation_check": "filtered",
    "noise": None,
    "image_size": 8,
}


def _arrays() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in EXPECTED.items()}


def _reply(  # type: ignore[no-untyped-def]
    arrays: dict[str, np.ndarray],
    weight: float = 1.0,
    weighting: str = "equal",
    evaluation: dict[str, float] | None = None,
):
    content = train_reply_content(
        arrays,
        EXPECTED,
        weight=weight,
        epsilon=2.0,
        event=EVENT,
        weighting=weighting,
        evaluation=evaluation,
    )
    return with_site_status(content, STATUS)


def test_a_valid_train_reply_round_trips() -> None:
    arrays, metrics, event = parse_train_reply(_reply(_arrays()), EXPECTED, "equal")
    assert sorted(arrays) == sorted(EXPECTED) and metrics[p.WEIGHT] == 1.0
    assert event["round"] == 1 and event["kind"] == "dp-sgd"


@pytest.mark.parametrize(
    "change",
    [
        lambda a: {**a, "backbone.stem.weight": np.zeros(3, np.float32)},  # a frozen weight
        lambda a: {**a, "head.bias": np.zeros(2, np.float64)},  # another dtype
        lambda a: {**a, "head.bias": np.zeros(3, np.float32)},  # another shape
        lambda a: {**a, "head.bias": np.array([np.nan, 0], np.float32)},  # not finite
        lambda a: {"head.weight": a["head.weight"]},  # a key missing
    ],
)
def test_trainable_arrays_outside_the_allow_list_are_refused(change) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReplySchemaError):
        _reply(change(_arrays()))


def test_a_train_reply_carries_the_scores_of_the_weights_received() -> None:
    scores = {"auroc": 0.7, "auprc_malignant": 0.6, "auprc_benign": float("nan")}
    content = _reply(_arrays(), evaluation=scores)
    parse_train_reply(content, EXPECTED, "equal")  # the optional record is allow-listed
    # as an evaluate reply's: named scores only, no count, non-finite ones left out
    assert parse_train_evaluation(content) == {"auroc": 0.7, "auprc_malignant": 0.6, p.WEIGHT: 1.0}
    assert parse_train_evaluation(_reply(_arrays())) is None  # not asked for, not sent


def test_scores_outside_the_allow_list_are_refused_in_a_train_reply() -> None:
    with pytest.raises(ReplySchemaError, match="not allowed"):
        _reply(_arrays(), evaluation={"auroc": 0.7, "patients": 41.0})
    content = _reply(_arrays())  # a site that adds the record by hand is refused on receipt
    content[p.EVALUATION] = MetricRecord({"auroc": 0.7, p.WEIGHT: 52.0})
    with pytest.raises(ReplySchemaError):
        parse_train_evaluation(content)
    content[p.EVALUATION] = MetricRecord({"auroc": 0.7, p.WEIGHT: 1.0})
    with pytest.raises(ReplySchemaError, match="not asked for"):
        parse_train_evaluation(content, requested=False)
    content = _reply(_arrays())
    content[p.EVALUATION] = ConfigRecord({"auroc": 0.7})  # another kind of record
    with pytest.raises(ReplySchemaError, match="MetricRecord"):
        parse_train_evaluation(content)


def test_no_exact_count_under_equal_weighting() -> None:
    with pytest.raises(ReplySchemaError, match=r"aggregation-weight must be 1\.0"):
        _reply(_arrays(), weight=73.0)
    parse_train_reply(_reply(_arrays(), 73.0, "examples"), EXPECTED, "examples")  # opt-in


def test_extra_metrics_are_refused() -> None:
    with pytest.raises(ReplySchemaError, match="not allowed"):
        p.check_train_metrics({p.WEIGHT: 1.0, "epsilon": 1.0, "num-examples": 73}, "equal")


def test_synthetic_patches_must_be_checked_uint8_and_labelled() -> None:
    pixels = np.zeros((5, 8, 8), np.uint8)
    labels = np.array([1, 0, 1, 0, 1], np.int64)
    provenance = dict(PROVENANCE)
    content = with_site_status(synthetic_reply_content(pixels, labels, provenance, 5), STATUS)
    got, got_labels, got_provenance = parse_synthetic_reply(content, 5, 8)
    assert got.shape == (5, 8, 8) and got_provenance == provenance
    assert got_labels.tolist() == labels.tolist()
    for unchecked in ("off", "skipped: DP-MCGAN"):  # skipping is for a DP-MCGAN only
        with pytest.raises(ReplySchemaError, match="memorisation check"):
            synthetic_reply_content(
                pixels, labels, {**provenance, "memorisation_check": unchecked}, 5
            )
    dp = {**provenance, "dp": True, "formal_guarantee": True, "memorisation_check": "skipped: DP"}
    synthetic_reply_content(pixels, labels, dp, 5)
    with pytest.raises(ReplySchemaError, match="requested"):
        synthetic_reply_content(pixels, labels, provenance, requested=4)
    with pytest.raises(ReplySchemaError, match="dtype"):
        synthetic_reply_content(pixels.astype(np.float32), labels, provenance, 5)
    with pytest.raises(ReplySchemaError, match="not allowed"):
        synthetic_reply_content(pixels, labels, {**provenance, "checkpoint_sha256": "ab"}, 5)


def test_status_carries_no_private_fields() -> None:
    status = dict(STATUS)
    assert json.loads(str(status_content(status)["config"][p.STATUS_JSON]))["site"] == "a"
    for private in ("dataset_size", "data_dir", "manifest_sha256"):
        with pytest.raises(ReplySchemaError):
            status_content({**status, private: 1})
    # the values are typed down to each event: nothing the mirror would choke on, no free field
    ledger = status["ledger"]
    event = {"noise_multiplier": 1.1, "sample_rate": 0.2, "steps": 10, "kind": "dp-sgd"}
    event |= {"round": 1, "status": "settled", "label": ""}
    status_content({**status, "ledger": {**ledger, "events": [event]}})  # valid
    for bad in (
        {"budget": "6"},
        {"budget": float("inf")},
        {"epsilon": True},
        {"plan": {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps_per_round": 2.5}},
        {"plan": {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps_per_round": 2, "n": 41}},
        {"site": "a" * 501},
        {"ledger": {**ledger, "events": [{**event, "steps": 10.5}]}},
        {"ledger": {**ledger, "events": [{**event, "round": "1"}]}},
        {"ledger": {**ledger, "non_dp_uses": [{"kind": "x", "note": "y", "patients": 41}]}},
        {"ledger": {**ledger, "non_dp_uses": "mcgan"}},
        {"ledger": [1, 2]},
    ):
        with pytest.raises(ReplySchemaError):
            status_content({**status, **bad})


PLAN = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps_per_round": 2}
GOOD_EVENT = {"noise_multiplier": 1.1, "sample_rate": 0.2, "steps": 10, "kind": "dp-sgd"}
GOOD_EVENT |= {"round": 1, "status": "settled"}


@pytest.mark.parametrize(
    "bad",
    [
        {"budget": 0.0},
        {"delta": -1e-5},
        {"plan": {**PLAN, "noise_multiplier": 0.0}},
        {"plan": {**PLAN, "sample_rate": 5.0}},
        {"plan": {**PLAN, "steps_per_round": -1}},
        {"ledger": {"delta": 1.0}},
        {"ledger": {"unit": "x"}},
        {"ledger": {"accountant": "gdp"}},
        {"event": {"kind": "bogus"}},
        {"event": {"status": "spent"}},
        {"event": {"noise_multiplier": 0.0}},
        {"event": {"sample_rate": 5.0}},
        {"event": {"sample_rate": 0.0}},
        {"event": {"steps": -3}},
    ],
)
def test_a_status_the_mirror_could_not_compute_with_is_refused(bad: dict[str, Any]) -> None:
    """Well typed but out of the ledger's range (LedgerEvent, PrivacyLedger): refused as a
    reply, where the server's mirror would otherwise raise and end the run."""
    status = {**STATUS, "plan": PLAN}
    ledger = {**STATUS["ledger"], "events": [GOOD_EVENT]}
    status_content({**status, "ledger": ledger})  # the valid one passes
    if "event" in bad:
        ledger = {**ledger, "events": [{**GOOD_EVENT, **bad["event"]}]}
    elif "ledger" in bad:
        ledger = {**ledger, **bad["ledger"]}
    else:
        status = {**status, **bad}
    with pytest.raises(ReplySchemaError):
        status_content({**status, "ledger": ledger})
    record = ConfigRecord({p.STATUS_JSON: json.dumps({**status, "ledger": ledger})})
    with pytest.raises(ReplySchemaError):  # and as the server reads it
        parse_status(RecordDict({p.CONFIG: record}))


def test_a_reply_that_cannot_be_read_is_a_schema_error_not_a_crash() -> None:
    """Whatever a malformed reply makes a parser raise is a ReplySchemaError: the server
    rejects that one reply and the run goes on."""
    nested = ConfigRecord({p.STATUS_JSON: "[" * 5000})  # deeper than the JSON parser goes
    with pytest.raises(ReplySchemaError, match="RecursionError"):
        parse_status(RecordDict({p.CONFIG: nested}))
    with pytest.raises(ReplySchemaError):
        parse_site_status(RecordDict({p.SITE_STATUS: nested}))
    broken = ConfigRecord({p.STATUS_JSON: "{not json"})
    with pytest.raises(ReplySchemaError, match="JSONDecodeError"):
        parse_status(RecordDict({p.CONFIG: broken}))
    # records of the wrong type under allowed names
    reply = train_reply_content(
        _arrays(), EXPECTED, weight=1.0, epsilon=2.0, event=EVENT, weighting="equal"
    )
    with_site_status(reply, STATUS)
    reply[p.ARRAYS] = ConfigRecord({"head.weight": 1.0})
    with pytest.raises(ReplySchemaError, match="parse_train_reply"):
        parse_train_reply(reply, EXPECTED, "equal")
    pixels, labels = np.zeros((2, 8, 8), np.uint8), np.array([0, 1], np.int64)
    provenance = dict(PROVENANCE)
    synthetic = with_site_status(synthetic_reply_content(pixels, labels, provenance, 2), STATUS)
    for text in ("{not json", "[" * 5000, "[1, 2]"):
        synthetic[p.PROVENANCE] = ConfigRecord({p.STATUS_JSON: text})
        with pytest.raises(ReplySchemaError):
            parse_synthetic_reply(synthetic, 2, 8)


def test_work_replies_carry_the_site_status_allow_listed_as_a_status_reply() -> None:
    """Synthesize, train and evaluate replies say what the work charged (the site's ledger):
    required, checked like a status reply, and nothing private rides along in it."""
    evaluate = with_site_status(evaluate_reply_content({"auroc": 0.7}), STATUS)
    assert parse_evaluate_reply(evaluate)["auroc"] == 0.7
    assert parse_site_status(evaluate)["site"] == "a"
    without = evaluate_reply_content({"auroc": 0.7})
    with pytest.raises(ReplySchemaError, match="missing"):
        parse_evaluate_reply(without)
    with pytest.raises(ReplySchemaError, match="missing"):
        parse_site_status(without)
    bare = train_reply_content(
        _arrays(), EXPECTED, weight=1.0, epsilon=2.0, event=EVENT, weighting="equal"
    )
    with pytest.raises(ReplySchemaError, match="site-status"):
        parse_train_reply(bare, EXPECTED, "equal")
    with pytest.raises(ReplySchemaError):
        with_site_status(bare, {**STATUS, "data_dir": "/hospital/raw"})
    evaluate[p.SITE_STATUS] = ConfigRecord({p.STATUS_JSON: json.dumps({**STATUS, "n": 41})})
    with pytest.raises(ReplySchemaError):
        parse_site_status(evaluate)
    evaluate["extra"] = ConfigRecord({"patients": 41})
    with pytest.raises(ReplySchemaError, match="not allowed"):
        parse_evaluate_reply(evaluate)


def test_a_train_reply_is_typed_as_the_ledger_keeps_it_and_weighted_at_least_one() -> None:
    """Never coerced: a string sigma passed float() here and raised in the server's mirror;
    a zero, negative or infinite weight breaks FedAvg's division by the weights' sum."""
    event = {k: EVENT[k] for k in p.EVENT_KEYS}  # as a train reply flattens it
    for bad in ({"noise_multiplier": "2"}, {"steps": 10.0}, {"round": "1"}, {"sample_rate": 2.0}):
        with pytest.raises(ReplySchemaError):
            p.check_event({**event, **bad})
    p.check_event(event)
    for weight in (0.0, -1.0, float("inf"), float("nan")):
        metrics = {p.WEIGHT: weight, "epsilon": 1.0}
        with pytest.raises(ReplySchemaError, match="aggregation-weight"):
            p.check_train_metrics(metrics, "examples")
    p.check_train_metrics({p.WEIGHT: 73.0, "epsilon": 1.0}, "examples")
