"""The ClientApp: one hospital's side. Glue only: message -> SiteRuntime call -> reply.

A site never crashes on a refusal: a round beyond its budget, a data or config problem, or any
other error becomes an error reply with a short reason; the full message stays in the site's
log (`state_dir/site.log`), since it may name private files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from client.gpu_memory import cap_gpu_memory
from client.sites import cached_runtimes, site_runtime
from common.errors import ConfigError, DataError, MammoflError, PrivacyError, SitePolicyError
from common.federated import protocol as p
from common.federated.run_config import federated_config
from common.federated.timing import TIMING_FILE, append_timing, message_record
from common.fl_records import (
    error_reply,
    evaluate_reply_content,
    from_array_record,
    status_content,
    synthetic_reply_content,
    train_reply_content,
    with_site_status,
)
from common.privacy.ledger import PrivacyBudgetExceeded
from common.site.runtime import SiteRuntime

log = logging.getLogger("mammofl.site")
CLIPPING_NORM = "clipping_norm"  # the key Flower's client-side fixed clipping sends


def client_level_clipping(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Under client-level DP the server asks each site to clip its round update (new minus
    sent weights) to an L2 norm; Flower's `fixedclipping_mod` does it after the site trained.
    Other messages, and rounds without client-level DP, pass through untouched."""
    if message.metadata.message_type == p.TRAIN and any(
        CLIPPING_NORM in record for record in message.content.config_records.values()
    ):
        # Flower's mod takes one ArrayRecord (the weights it clips the update against): a
        # base model the message brings waits outside it and is back for the site's handler
        base = message.content.array_records.get(p.BASE)
        if base is None:
            reply: Message = fixedclipping_mod(message, context, call_next)
            return reply
        del message.content[p.BASE]

        def with_base(inner: Message, inner_context: Context) -> Message:
            inner.content[p.BASE] = base
            return call_next(inner, inner_context)

        reply = fixedclipping_mod(message, context, with_base)
        return reply
    return call_next(message, context)


app = ClientApp(mods=[client_level_clipping])


class BaseModelError(ConfigError):
    """The base model a message brought could not be installed (before any work: nothing
    charged); the server stops selecting the site until it reports again."""


Handler = Callable[[SiteRuntime, RecordDict], RecordDict]
REFUSALS: tuple[tuple[type[Exception], int, str], ...] = (
    (BaseModelError, p.ErrorCode.BASE_MODEL, "base model"),
    (PrivacyBudgetExceeded, p.ErrorCode.BUDGET_EXCEEDED, "privacy budget"),
    (PrivacyError, p.ErrorCode.PRIVACY, "privacy check"),
    (DataError, p.ErrorCode.DATA, "data error"),
    (ConfigError, p.ErrorCode.CONFIG, "configuration error"),
)


def _handle(message: Message, context: Context, handler: Handler) -> Message:
    name = "?"
    started = time.monotonic()
    try:
        config = federated_config(context.run_config)
        torch.set_num_threads(max(1, int(config.simulation.num_cpus)))
        held = cached_runtimes()
        runtime = site_runtime(context.node_config, config)
        name = runtime.facts.name
        simulated = "site-name" not in context.node_config
        cap_gpu_memory(config.simulation.num_gpus, runtime.device, simulated=simulated)
        content = handler(runtime, message.content)
        if message.metadata.message_type != p.STATUS:  # what the work charged, said at once
            content = with_site_status(content, runtime.status())
        reply = Message(content, reply_to=message)
        finished = time.monotonic()
        kind = message.metadata.message_type
        # the site's own seconds, kept in its state dir (never sent): `mammofl bench federated`
        record = message_record(name, kind, started, finished, cold=cached_runtimes() > held)
        append_timing(runtime.facts.state_dir / TIMING_FILE, record)
        logging.getLogger(f"mammofl.site.{name}").info(
            "%s answered in %.1f s (process up %.1f s before)",
            kind,
            finished - started,
            time.time() - psutil.Process().create_time() - (finished - started),
        )
        return reply
    except Exception as error:  # every failure becomes a reply; the details stay here
        site_log = logging.getLogger(f"mammofl.site.{name}")
        if isinstance(error, MammoflError):  # the site's data or settings: its message says
            site_log.error("%s failed: %s", message.metadata.message_type, error)
        else:  # mammofl's own fault: the stack, for a bug report
            site_log.exception("%s failed", message.metadata.message_type)
        for kind, code, summary in REFUSALS:
            if isinstance(error, kind):
                # a budget refusal's text holds only ledger figures the server mirrors anyway,
                # a policy refusal's only the run's setting and the site's rule
                public = isinstance(error, (PrivacyBudgetExceeded, SitePolicyError))
                # before the runtime (a refused node config) the site's log is not open yet
                where = (
                    "see the site's log"
                    if name != "?"
                    else "see the SuperNode's output (its node config was refused before the "
                    "site's log opened)"
                )
                reason = str(error) if public else where
                return error_reply(message, code, f"site {name}: {summary}: {reason}")
        return error_reply(
            message, p.ErrorCode.INTERNAL, f"site {name}: internal error {type(error).__name__}"
        )


def _status(runtime: SiteRuntime, content: RecordDict) -> RecordDict:
    return status_content(runtime.initialize())


def _install_sent_base(runtime: SiteRuntime, content: RecordDict) -> None:
    """A message that brings the run's base model (the site's first of the run, or its first
    after it came back under a new node id) installs it before its work; its fingerprint must
    be the one the message names."""
    if p.BASE not in content.array_records:
        return
    expected = str(content.config_records[p.CONFIG][p.BASE_SHA])
    try:  # checked against the fingerprint before it replaces the model the site holds
        runtime.set_base_model(from_array_record(content.array_records[p.BASE]), expected)
    except Exception as error:
        raise BaseModelError(f"the base model sent does not install here: {error}") from error


def _base_model(runtime: SiteRuntime, content: RecordDict) -> RecordDict:
    if p.BASE not in content.array_records:
        raise BaseModelError("a base model message without the model")
    _install_sent_base(runtime, content)
    return RecordDict()  # the reply: the site's status alone


def _synthesize(runtime: SiteRuntime, content: RecordDict) -> RecordDict:
    count = int(str(content.config_records[p.CONFIG][p.COUNT]))
    synthetic = runtime.synthesize(count)
    return synthetic_reply_content(synthetic.pixels, synthetic.labels, synthetic.provenance, count)


def _train(runtime: SiteRuntime, content: RecordDict) -> RecordDict:
    _install_sent_base(runtime, content)
    arrays = from_array_record(content.array_records[p.ARRAYS])
    config = content.config_records[p.CONFIG]
    weighting = str(config.get(p.WEIGHTING, "equal"))
    result = runtime.train_round(  # its budget check and lock refuse before any DP step
        int(str(config[p.ROUND])),
        arrays,
        str(config[p.BASE_SHA]),
        proximal_mu=float(str(config.get(p.PROXIMAL_MU, 0.0))),
        weighting=weighting,
    )
    evaluation = None
    if bool(config.get(p.EVALUATE_RECEIVED, False)):  # the weights received: last round's model
        evaluation = _scores_or_none(runtime, arrays, str(config[p.BASE_SHA]))
    return train_reply_content(
        result.trainable,
        {k: tuple(np.shape(v)) for k, v in arrays.items()},
        weight=result.weight,
        epsilon=result.epsilon,
        event=result.event,
        weighting=weighting,
        evaluation=evaluation,
    )


def _scores_or_none(
    runtime: SiteRuntime, arrays: dict[str, np.ndarray], base_sha: str
) -> dict[str, float] | None:
    """The scores a train reply carries; a scoring failure costs only them (logged here), never
    the round the site has trained and charged."""
    try:
        return runtime.evaluate(arrays, base_sha)
    except Exception:
        logging.getLogger(f"mammofl.site.{runtime.facts.name}").exception(
            "scoring the weights received failed; the train reply carries no scores"
        )
        return None


def _evaluate(runtime: SiteRuntime, content: RecordDict) -> RecordDict:
    _install_sent_base(runtime, content)
    arrays = from_array_record(content.array_records[p.ARRAYS])
    sha = str(content.config_records[p.CONFIG][p.BASE_SHA])
    return evaluate_reply_content(runtime.evaluate(arrays, sha))


@app.query("status")
def status(message: Message, context: Context) -> Message:
    return _handle(message, context, _status)


@app.query("base_model")
def base_model(message: Message, context: Context) -> Message:
    return _handle(message, context, _base_model)


@app.query("synthesize")
def synthesize(message: Message, context: Context) -> Message:
    return _handle(message, context, _synthesize)


@app.train()
def train(message: Message, context: Context) -> Message:
    return _handle(message, context, _train)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return _handle(message, context, _evaluate)
