"""The federation, phase by phase: sites' status, shared synthetic pretraining, DP rounds.

Phase 1 collects every site's checked synthetic patches and pretrains all parameters on the
pool; each site gets that model with its first message of phase 2. Phase 2 runs
`federation.rounds` rounds of local DP-SGD on the trainable parameters, aggregated by the
strategy, with central evaluation on test data of no site after every round, a checkpoint
after every round, and budget-aware site selection.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from common.config.federated_schema import FederatedRunConfig
from common.errors import ConfigError
from common.eval.central import CentralEvaluator
from common.federated import protocol as p
from common.federated.model import initial_model
from common.federated.protocol import ReplySchemaError
from common.federated.timing import TIMING_FILE, RoundClock
from common.fl_records import (
    check_base_model_reply,
    from_array_record,
    parse_evaluate_reply,
    parse_site_status,
    parse_status,
    parse_synthetic_reply,
    parse_train_evaluation,
    parse_train_reply,
    to_array_record,
)
from common.models.classifier import Classifier
from common.privacy.randomness import seeded_stream
from common.training.engine import load_trainable, state_fingerprint, trainable_state
from common.training.settings import resolve_device
from server.checkpoint import (
    ServerState,
    ledgers_to_resume,
    load_checkpoint,
    remove_interrupted_saves,
    save_checkpoint,
    save_sent_round,
)
from server.client_dp import ClientLevelDP
from server.exchange import send_and_collect
from server.ledgers import BASE_MODEL_MISSING, MirroredLedgers
from server.outputs import write_outputs
from server.pretrain import pool_synthetic, pretrain, synthetic_summary
from server.strategy import EligibleNodes, build_strategy, load_strategy_state, strategy_state

log = logging.getLogger("mammofl.server")
# seconds between the server's checks for replies. Simulation (Flower's InMemoryGrid: 0.1 s,
# which adds up to 0.1 s to every exchange): a check is a dict lookup, so 10 ms costs next to
# nothing. Deployment (Flower's HttpGrid: 3 s): a check is one small call to the SuperLink.
SIMULATION_PULL_INTERVAL_S = 0.01
DEPLOYMENT_PULL_INTERVAL_S = 0.25


@dataclass
class TrainOutcome:
    """A train exchange's result: the aggregated trainable weights, why sites were refused,
    the sites that trained, and the scores of the weights sent that the replies carried."""

    trainable: dict[str, np.ndarray]
    refused: dict[str, str]
    trained: list[str]
    evaluations: dict[str, dict[str, float]]


class Federation:
    def __init__(self, grid: Grid, config: FederatedRunConfig, overrides: list[str]) -> None:
        self.grid, self.config, self.overrides = grid, config, overrides
        self.run_dir = config.run_path
        self.device = resolve_device(config.train.device)
        self.timeout = config.federation.reply_timeout_s
        self.mirror = MirroredLedgers()
        population = len(config.sites) or config.federation.min_sites
        seeded = config.privacy.seeded_noise
        noise_seed = seeded_stream(config.seed, "client-dp") if seeded else None
        self.strategy = build_strategy(config.federation, population, noise_seed)
        self.sites: dict[int, str] = {}
        self.stale: set[int] = set()  # nodes whose ledger may hold what they did not report
        # nodes sent work whose reply (which says what the work charged) was not adopted: the
        # only ones asked for their status before the outputs are written
        self.owes_status: set[int] = set()
        # nodes whose next train or evaluate message brings the base model (not held yet)
        self.needs_base: set[int] = set()
        self.not_started: dict[str, str] = {}  # node or site -> why its first status failed
        self.destination: dict[str, int] = {}  # message id -> node it was sent to
        self.started = time.time()
        self.clock = RoundClock(self.run_dir / "server" / TIMING_FILE)  # per-round wall times
        simulated = hasattr(grid, "pull_interval")  # only Flower's in-memory grid has it
        self.deployed = not simulated
        self.pull_interval_s = (
            SIMULATION_PULL_INTERVAL_S if simulated else DEPLOYMENT_PULL_INTERVAL_S
        )

    # ---- messaging -----------------------------------------------------------------------
    def wait_for_nodes(self) -> list[int]:
        """All configured sites (simulation) or at least min_sites (deployment), with a timeout."""
        expected = len(self.config.sites) or self.config.federation.min_sites
        deadline = time.time() + self.config.federation.node_wait_timeout_s
        while len(nodes := list(self.grid.get_node_ids())) < expected:
            if time.time() > deadline:
                wait = self.config.federation.node_wait_timeout_s
                raise ConfigError(
                    f"{len(nodes)} of {expected} sites connected within {wait} s "
                    "(federation.node_wait_timeout_s)"
                )
            time.sleep(0.2)
        return sorted(nodes)

    def ask(self, nodes: list[int], message_type: str, content: RecordDict) -> list[Message]:
        messages = [
            Message(content=content, message_type=message_type, dst_node_id=n) for n in nodes
        ]
        return self.send(messages)

    def send(self, messages: list[Message]) -> list[Message]:
        """Send and wait up to `federation.reply_timeout_s` for the replies. A message also
        expires then (Flower's default is 12 h): a SuperNode back after a crash must not pull
        and train for a round the server has already closed."""
        for message in messages:
            message.metadata.ttl = self.timeout
            self.owes_status.add(message.metadata.dst_node_id)
        kind = messages[0].metadata.message_type if messages else "none"
        with self.clock.phase(f"exchange:{kind}"):
            replies = send_and_collect(self.grid, messages, self.timeout, self.pull_interval_s)
        for message in messages:  # ids are set when sent
            self.destination[message.metadata.message_id] = message.metadata.dst_node_id
        return replies

    def site_of(self, reply: Message) -> str:
        """The site a reply is about; an error the SuperLink wrote itself (e.g. "node
        unavailable") comes from the SuperLink's node id, so go by the message it answers."""
        node = reply.metadata.src_node_id
        if node not in self.sites:
            node = self.destination.get(reply.metadata.reply_to_message_id, node)
        return self.sites.get(node, f"node {node}")

    def _failed(self, reply: Message, what: str) -> bool:
        if reply.has_error():
            log.warning("%s: %s refused: %s", self.site_of(reply), what, reply.error.reason)
            return True
        return False

    def query_status(self, nodes: list[int], *, at_start: bool = True) -> list[dict[str, Any]]:
        """Every site's status, adopted into the mirror. At the start a site that cannot start
        is left out (the run goes on while `federation.min_sites` remain); two nodes claiming
        one site name stop the run."""
        statuses = []
        for reply in self.ask(nodes, p.STATUS, RecordDict()):
            if self._failed(reply, "status"):
                if at_start:
                    self.not_started[self.site_of(reply)] = reply.error.reason
                continue
            try:
                status = parse_status(reply.content)
                self.mirror.check_computable(status)
            except ReplySchemaError as error:  # one site's bad reply must not end the run
                log.warning("%s: status reply rejected: %s", self.site_of(reply), error)
                if at_start:
                    self.not_started[self.site_of(reply)] = f"status reply rejected: {error}"
                continue
            node, name = reply.metadata.src_node_id, status["site"]
            if self.sites.get(node, name) != name:  # a node keeps its site for the whole run
                log.warning(
                    "%s: status reply names site %r: rejected", self.sites[node], name[:100]
                )
                continue
            others = [n for n, s in self.sites.items() if s == name and n != node]
            if others:
                online = set(self.grid.get_node_ids())
                if any(n in online for n in others):
                    ids = ", ".join(str(n) for n in sorted([*others, node]))
                    clash = (
                        f"two SuperNodes (node ids {ids}; `flwr supernode list` shows them) "
                        f"both claim to be site {name!r}: each site needs its own site-name"
                    )
                    if at_start:
                        raise ConfigError(clash)
                    # mid-run (e.g. a SuperNode restarted under a new key before the old node
                    # id went offline): that reply is rejected, the run goes on
                    log.warning("%s; the new node is not admitted", clash)
                    continue
                for old in others:  # the site came back under a new node id (a new key)
                    del self.sites[old]
                    if old in self.stale:
                        self.stale.discard(old)
                        self.stale.add(node)
            self.sites[node] = name
            self.adopt_reply_status(reply, status, queried=True)
            statuses.append(status)
        if at_start and len(statuses) < self.config.federation.min_sites:
            raise ConfigError(
                f"{len(statuses)} sites could start < federation.min_sites="
                f"{self.config.federation.min_sites} (the sites' logs say why)"
            )
        if statuses:
            log.info("sites: %s", ", ".join(sorted(s["site"] for s in statuses)))
        return statuses

    def reply_status(self, reply: Message) -> dict[str, Any]:
        """The status a synthesize, train or evaluate reply carries (the site's ledger after
        the work). ReplySchemaError when it is missing, malformed or names another site."""
        status = parse_site_status(reply.content)
        site = self.site_of(reply)
        if status["site"] != site:
            raise ReplySchemaError(f"{site}'s reply carries the status of {status['site']!r}")
        self.mirror.check_computable(status)
        return status

    def adopt_reply_status(
        self, reply: Message, status: dict[str, Any], *, queried: bool = False
    ) -> None:
        """Take the site's ledger from its reply. A stale node's (a round presumed) work reply
        may predate that round's reservation (e.g. a simulated site still training it in
        another worker): only its answer to a status query, asked after, replaces the
        presumed round; until then the site owes its status."""
        node = reply.metadata.src_node_id
        if node in self.stale and not queried:
            return
        self.mirror.adopt_status(status)
        self.owes_status.discard(node)

    def collect_owed_status(self, nodes: list[int]) -> None:
        """Ask the nodes among `nodes` that owe their status (a reply lost, refused or
        rejected: their ledgers may hold a charge the server never saw) for it, and the stale
        ones (a round presumed: a status they sent meanwhile may predate that round's
        reservation, e.g. a simulated site still training it in another worker); no exchange
        when there are none."""
        owing = [n for n in nodes if n in self.owes_status or n in self.stale]
        if owing:
            self.query_status(owing, at_start=False)

    # ---- phase 1 -------------------------------------------------------------------------
    def synthetic_pretraining(self, model: Classifier, nodes: list[int]) -> dict[str, Any]:
        count, size = self.config.gan.per_site, self.config.site_data.image_size
        content = RecordDict({p.CONFIG: ConfigRecord({p.COUNT: count})})
        sets = {}
        for reply in self.ask(nodes, p.SYNTHESIZE, content):
            if self._failed(reply, "synthesis"):
                continue
            try:
                synthetic = parse_synthetic_reply(reply.content, count, size)
                self.adopt_reply_status(reply, self.reply_status(reply))  # now with its GAN
                sets[self.site_of(reply)] = synthetic
                log.info("%s: %s", self.site_of(reply), synthetic_summary(synthetic))
            except ReplySchemaError as error:
                log.warning("%s: synthetic reply rejected: %s", self.site_of(reply), error)
        if not sets:
            raise ConfigError("no site sent synthetic patches: SynPre cannot run")
        pool = pool_synthetic(sets)
        log.info(
            "SynPre on %d synthetic patches from %d sites", len(pool.patches.pixels), len(sets)
        )
        history = pretrain(model, pool, self.config, self.device)
        return {"patches_per_site": count, "sites": pool.provenance, "history": history}

    def send_base_model(self, nodes: list[int], state: ServerState) -> None:
        """The base model goes with each of these nodes' next train or evaluate message (one
        exchange fewer than a message of its own), until a reply shows it installed. Under
        client-level DP it goes at once, in an exchange of its own: there any site's failure
        voids the round for every site, so a site that cannot install it is left out first."""
        self.needs_base.update(nodes)
        if isinstance(self.strategy, ClientLevelDP) and nodes:
            self.deliver_base_model(nodes, state)

    def deliver_base_model(self, nodes: list[int], state: ServerState) -> None:
        """The base model exchange: a site that does not confirm it (refused, failed, no
        reply) is not selected until it reports again."""
        config = ConfigRecord({p.BASE_SHA: state.base_sha})
        messages = [
            Message(
                content=RecordDict({p.CONFIG: config}), message_type=p.BASE_MODEL, dst_node_id=n
            )
            for n in nodes
        ]
        confirmed = set()
        for reply in self.send(self.with_base_model(messages, state)):
            if self._base_model_refused(reply) or self._failed(reply, "base model"):
                continue
            try:
                check_base_model_reply(reply.content)
                self.adopt_reply_status(reply, self.reply_status(reply))
            except ReplySchemaError as error:
                log.warning("%s: base model reply rejected: %s", self.site_of(reply), error)
                continue
            confirmed.add(reply.metadata.src_node_id)
        self.needs_base -= confirmed
        for node in nodes:
            if node not in confirmed:
                self.mirror.exclude(self.sites[node], BASE_MODEL_MISSING)

    def with_base_model(self, messages: list[Message], state: ServerState) -> list[Message]:
        """`messages`, each to a node that does not hold the base model given its own content
        with the model added (the others share theirs, untouched)."""
        record = None
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.needs_base:
                record = record or to_array_record(_numpy(state.base_state))
                content = RecordDict({**message.content, p.BASE: record})
                message = Message(
                    content=content, message_type=message.metadata.message_type, dst_node_id=node
                )
            out.append(message)
        return out

    def _base_model_refused(self, reply: Message) -> bool:
        """A site that could not install the base model its message brought (nothing
        charged: it refuses before any work) is not selected until it reports again. The
        code counts only from a node that was sent the base model: from any other it is a
        failure like any other (a round it was sent is presumed spent)."""
        node = self.destination.get(reply.metadata.reply_to_message_id, -1)
        if (
            reply.has_error()
            and reply.error.code == p.ErrorCode.BASE_MODEL
            and node in self.needs_base
        ):
            log.warning("%s: base model refused: %s", self.site_of(reply), reply.error.reason)
            self.mirror.exclude(self.site_of(reply), BASE_MODEL_MISSING)
            return True
        return False

    # ---- phase 2 -------------------------------------------------------------------------
    def train_round(
        self, round_number: int, state: ServerState, nodes: list[int], *, evaluate: bool = False
    ) -> TrainOutcome:
        """One train exchange; `evaluate`: each site also scores the weights it receives (the
        previous round's global model) before training on them."""
        config = ConfigRecord(
            {
                p.BASE_SHA: state.base_sha,
                p.WEIGHTING: self.config.federation.weighting,
                p.EVALUATE_RECEIVED: evaluate,
            }
        )
        if isinstance(self.strategy, ClientLevelDP):
            # configure_train raises PrivacyBudgetExhausted before anything is sent
            self.strategy.sample(len(nodes), round_number)
        messages = list(
            self.strategy.configure_train(
                round_number,
                to_array_record(state.trainable),
                config,
                EligibleNodes(self.grid, nodes),
            )
        )
        self.write_ahead(round_number, [m.metadata.dst_node_id for m in messages])
        replies = self.send(self.with_base_model(messages, state))
        expected = {k: tuple(v.shape) for k, v in state.trainable.items()}
        valid, refused, trained = [], {}, []
        evaluations: dict[str, dict[str, float]] = {}
        for reply in replies:
            site = self.site_of(reply)
            if reply.has_error():
                refused[site] = reply.error.reason
                if self._base_model_refused(reply):
                    continue
                if reply.error.code == p.ErrorCode.BUDGET_EXCEEDED:
                    self.mirror.exclude(site, "refused a round: budget")
                    continue
                # a crash, a failure, or a node the SuperLink found unavailable: the site may
                # have reserved the round before; count it until the site reports its ledger
                self.mirror.presume_round(site, round_number)
                self.stale.update(n for n, name in self.sites.items() if name == site)
                if isinstance(self.strategy, ClientLevelDP):
                    # a failing site voids every round under client-level DP: leave it out
                    self.mirror.exclude(site, f"failed round {round_number} (client-level DP)")
                continue
            try:
                _, _, event = parse_train_reply(
                    reply.content, expected, self.config.federation.weighting
                )
                scores = parse_train_evaluation(reply.content, requested=evaluate)
                status = self.reply_status(reply)
            except ReplySchemaError as error:
                refused[site] = f"reply rejected by the allow-list: {error}"
                self.mirror.presume_round(site, round_number)  # it may have spent the round
                self.mirror.exclude(site, "sent a reply outside the allow-list")
                continue
            if isinstance(self.strategy, ClientLevelDP) and not self._clipped(reply, state):
                refused[site] = "update not clipped to the client-level DP norm"
                self.mirror.presume_round(site, round_number)
                self.mirror.exclude(site, "sent an unclipped update under client-level DP")
                continue
            plan = {k: event[k] for k in ("noise_multiplier", "sample_rate")}
            plan["steps_per_round"] = event["steps"]
            self.mirror.record_round(site, event, plan)
            self.adopt_reply_status(reply, status)  # the site's whole ledger after the round
            self.needs_base.discard(reply.metadata.src_node_id)
            valid.append(reply)
            trained.append(site)
            if scores is not None:
                evaluations[site] = {k: v for k, v in scores.items() if k != p.WEIGHT}
                del reply.content[p.EVALUATION]  # Flower aggregates one MetricRecord a reply
        missing = set(self.sites[n] for n in nodes) - set(refused) - set(trained)
        for node in nodes:
            if self.sites[node] in missing:  # lost mid-round: presume it spent the round
                refused[self.sites[node]] = "no reply before the timeout"
                self.mirror.presume_round(self.sites[node], round_number)
                self.stale.add(node)
                if isinstance(self.strategy, ClientLevelDP):
                    self.mirror.exclude(self.sites[node], f"no reply in round {round_number}")
        aggregated, _ = self.strategy.aggregate_train(round_number, valid)
        trainable = state.trainable if aggregated is None else from_array_record(aggregated)
        return TrainOutcome(
            {k: v.astype(np.float32) for k, v in trainable.items()},
            refused,
            sorted(trained),
            evaluations,
        )

    def write_ahead(self, round_number: int, nodes: list[int]) -> None:
        """Save the mirror with round `round_number` presumed at `nodes` before it is sent
        (`save_sent_round`); the live mirror presumes it only for a site that fails it."""
        ahead = MirroredLedgers.from_state_dict(self.mirror.state_dict())  # asdict: a copy
        for node in nodes:
            ahead.presume_round(self.sites[node], round_number)
        save_sent_round(self.run_dir, round_number, ahead.state_dict())

    def _clipped(self, reply: Message, state: ServerState) -> bool:
        """Under client-level DP the guarantee needs every update (sent weights to returned
        ones) within the clipping norm; a site whose ClientApp did not clip is refused."""
        assert isinstance(self.strategy, ClientLevelDP)
        returned = from_array_record(reply.content.array_records[p.ARRAYS])
        squares = sum(
            float(np.sum((returned[k].astype(np.float64) - v.astype(np.float64)) ** 2))
            for k, v in state.trainable.items()
        )
        return squares**0.5 <= self.strategy.clipping_norm * (1 + 1e-4)

    def site_metrics(self, nodes: list[int], state: ServerState) -> dict[str, dict[str, float]]:
        content = RecordDict(
            {
                p.ARRAYS: to_array_record(state.trainable),
                p.CONFIG: ConfigRecord({p.BASE_SHA: state.base_sha}),
            }
        )
        messages = [Message(content=content, message_type=p.EVALUATE, dst_node_id=n) for n in nodes]
        metrics = {}
        for reply in self.send(self.with_base_model(messages, state)):
            if self._base_model_refused(reply) or self._failed(reply, "evaluation"):
                continue
            try:
                values = parse_evaluate_reply(reply.content)
                self.adopt_reply_status(reply, self.reply_status(reply))
            except ReplySchemaError as error:
                log.warning("%s: evaluate reply rejected: %s", self.site_of(reply), error)
                continue
            self.needs_base.discard(reply.metadata.src_node_id)
            metrics[self.site_of(reply)] = {k: v for k, v in values.items() if k != p.WEIGHT}
        return metrics

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        nodes = self.wait_for_nodes()
        statuses = self.query_status(nodes)
        nodes = [n for n in nodes if n in self.sites]
        model = initial_model(self.config, self.device)
        evaluator = CentralEvaluator(
            config.tests,
            config.site_data.image_size,
            self.device,
            self.run_dir / "server" / "features",
            config.train.feature_batch_size,
        )
        if config.federation.resume:
            state = load_checkpoint(self.run_dir, self.overrides)
            remove_interrupted_saves(self.run_dir)
            self.mirror = MirroredLedgers.from_state_dict(ledgers_to_resume(self.run_dir, state))
            for status in statuses:  # each site's own ledger, as it reports it now
                self.mirror.adopt_status(status)
            load_strategy_state(self.strategy, state.strategy)
            state.ended = ""  # why it ended (too few sites online, budgets) is asked again
            model.load_state_dict(state.base_state)
            load_trainable(model, {k: torch.as_tensor(v) for k, v in state.trainable.items()})
            log.info("resumed after round %d", state.round)
        else:
            self.refuse_a_spent_federation(nodes)
            state = self.start(model, nodes, evaluator)
        state.history.pop("not_started", None)  # this run's, not a resumed one's
        if self.not_started:  # shown in summary.md: a site missing from the table is no mystery
            state.history["not_started"] = dict(self.not_started)
        self.send_base_model(nodes, state)
        while state.round < config.federation.rounds and not state.ended:
            self.one_round(state, nodes, model, evaluator)
            if config.federation.stop_after_round == state.round:
                log.info("stopped after round %d (federation.stop_after_round)", state.round)
                break
        self.finish_site_evaluation(state, nodes)
        # the own ledgers of the sites online whose last reply did not say what they charged
        # (lost, refused or rejected; a round that failed after settling): it reaches
        # ledger.json too
        online = set(self.grid.get_node_ids())
        self.collect_owed_status([n for n in nodes if n in online])
        client_level = self.strategy.report() if isinstance(self.strategy, ClientLevelDP) else None
        return write_outputs(
            self.run_dir,
            config,
            state,
            model,
            evaluator,
            self.mirror,
            self.started,
            client_level,
            deployed=self.deployed,
        )

    def refuse_a_spent_federation(self, nodes: list[int]) -> None:
        """A new run whose first round could not run (too few sites with budget left for one
        more round by the ledgers they reported) stops before SynPre: it would otherwise
        pretrain for minutes, then end with a model no site trained."""
        selectable = set(self.mirror.selectable())
        names = [self.sites[n] for n in nodes]
        able = [name for name in names if name in selectable]
        if len(able) >= self.config.federation.min_sites:
            return
        why = "; ".join(
            f"{name}: {self.mirror.sites[name].excluded}" for name in names if name not in able
        )
        raise ConfigError(
            f"no round can run: {len(able)} of {len(names)} sites can take "
            f"one more round < federation.min_sites={self.config.federation.min_sites} ({why}). "
            "A site's budget covers its whole history (its state's ledger.json), not one run: "
            "more rounds on the same patients need the hospitals to raise their own caps "
            "(node config epsilon-cap; the new rounds compose with what they spent), their "
            "decision, never the server's; a run on other sites needs their state dirs"
        )

    def start(
        self, model: Classifier, nodes: list[int], evaluator: CentralEvaluator
    ) -> ServerState:
        history: dict[str, Any] = {"rounds": []}
        if self.config.synpre.enabled:
            history["synpre"] = self.synthetic_pretraining(model, nodes)
            self.collect_owed_status(nodes)  # a site without a synthesis reply may have charged
        base_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        history["initial"] = {"central": evaluator.point_values(model)}
        state = ServerState(
            round=0,
            base_state=base_state,
            base_sha=state_fingerprint(base_state),
            trainable={k: v.numpy() for k, v in trainable_state(model).items()},
            strategy=strategy_state(self.strategy),  # e.g. an empty client-level accountant
            ledgers=self.mirror.state_dict(),
            history=history,
            overrides=self.overrides,
        )
        save_checkpoint(self.run_dir, state)
        return state

    def one_round(
        self, state: ServerState, nodes: list[int], model: Classifier, evaluator: CentralEvaluator
    ) -> None:
        round_number = state.round + 1
        self.clock.start_round(round_number)  # the round's wall time: from here to its checkpoint
        online = self.refresh_nodes(nodes, state)
        selectable = set(self.mirror.selectable())
        chosen = [n for n in nodes if n in online and self.sites[n] in selectable]
        if len(chosen) < self.config.federation.min_sites:
            state.ended = (
                f"round {round_number}: {len(chosen)} of {len(nodes)} sites online and able "
                f"to take a round (budget left, not excluded) < "
                f"federation.min_sites={self.config.federation.min_sites}"
            )
            log.info("run ends: %s", state.ended)
            state.ledgers = self.mirror.state_dict()
            save_checkpoint(self.run_dir, state)
            return
        log.info("round %d: %s", round_number, ", ".join(self.sites[n] for n in chosen))
        pending = self.pending_site_evaluation(state)
        try:
            with self.clock.phase("train"):
                outcome = self.train_round(
                    round_number, state, chosen, evaluate=pending is not None
                )
        except PrivacyBudgetExhausted as error:
            state.ended = f"round {round_number}: client-level budget: {error}"
            log.info("run ends: %s", state.ended)
            state.ledgers = self.mirror.state_dict()
            save_checkpoint(self.run_dir, state)
            return
        if pending is not None:
            pending["sites"] = outcome.evaluations
            with self.clock.phase("site_evaluation"):  # state.trainable: still the pending model
                self.evaluate_the_rest(pending, nodes, online, state)
        state.trainable, refused, trained = outcome.trainable, outcome.refused, outcome.trained
        load_trainable(model, {k: torch.as_tensor(v) for k, v in state.trainable.items()})
        self.mirror.close_round()
        if isinstance(self.strategy, ClientLevelDP):
            self.strategy.close_round()
        with self.clock.phase("central_evaluation"):
            central = evaluator.point_values(model)
        sites: dict[str, dict[str, float]] = {}
        with self.clock.phase("site_evaluation"):
            if self.evaluates_now(round_number):  # not a node whose train failed (stale)
                sites = self.site_metrics([n for n in chosen if n not in self.stale], state)
        state.history["rounds"].append(
            {
                "round": round_number,
                "central": central,
                "sites": sites,
                "trained": trained,
                "refused": refused,
            }
        )
        state.round = round_number
        state.strategy = strategy_state(self.strategy)
        state.ledgers = self.mirror.state_dict()
        with self.clock.phase("checkpoint"):
            save_checkpoint(self.run_dir, state)
        self.clock.end_round(sites=len(chosen))
        if self.config.federation.kill_after_round == round_number:
            log.warning(
                "fault drill: killing the ServerApp after round %d's checkpoint", round_number
            )
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- the sites' scores of each round's global model ----------------------------------
    def evaluates_now(self, round_number: int) -> bool:
        """Whether round `round_number`'s own exchange scores its global model at the sites:
        always without `evaluate_with_train`, else only in the run's planned last round (the
        next round's train message carries the others)."""
        federation = self.config.federation
        if not federation.site_evaluation:
            return False
        last = round_number in (federation.rounds, federation.stop_after_round)
        return last or not federation.evaluate_with_train

    def pending_site_evaluation(self, state: ServerState) -> dict[str, Any] | None:
        """The previous round's record when its global model still awaits the sites' scores
        (which this round's train message then asks for), else None."""
        federation = self.config.federation
        rounds = state.history["rounds"]
        if not (federation.site_evaluation and federation.evaluate_with_train and rounds):
            return None
        previous: dict[str, Any] = rounds[-1]
        return None if previous["sites"] or not previous["trained"] else previous

    def evaluate_the_rest(
        self, pending: dict[str, Any], nodes: list[int], online: set[int], state: ServerState
    ) -> None:
        """The sites that trained the pending round but did not score its model on this round's
        train message (not chosen now: budget spent, offline; or their train failed) score it
        in an evaluate exchange of their own, if online."""
        trained = set(pending["trained"]) - set(pending["sites"])
        rest = [
            n
            for n in nodes  # a node that failed this round's train is stale now: not asked
            if n in online and n not in self.stale and self.sites.get(n) in trained
        ]
        if rest:
            pending["sites"].update(self.site_metrics(rest, state))

    def finish_site_evaluation(self, state: ServerState, nodes: list[int]) -> None:
        """A run that ended before its planned last round (budgets, too few sites) still
        has its last global model scored: by the sites that trained it, if online."""
        pending = self.pending_site_evaluation(state)
        if pending is None:
            return
        online = set(self.grid.get_node_ids())
        trained = set(pending["trained"])
        chosen = [n for n in nodes if n in online and self.sites.get(n) in trained]
        if chosen:
            pending["sites"] = self.site_metrics(chosen, state)
            save_checkpoint(self.run_dir, state)

    def refresh_nodes(self, nodes: list[int], state: ServerState) -> set[int]:
        """The nodes online now. A site back after a failure (same node id: its key is
        registered) reports its ledger again before it is selected; a node never seen before
        reports its status and gets the base model."""
        online = set(self.grid.get_node_ids())
        new = sorted(online - set(self.sites))
        if new:
            self.query_status(new, at_start=False)
            known = [n for n in new if n in self.sites]
            self.send_base_model(known, state)
            nodes.extend(n for n in known if n not in nodes)
        back = sorted(self.stale & online)
        if back:
            answered = {s["site"] for s in self.query_status(back, at_start=False)}
            self.stale -= {n for n in back if self.sites.get(n) in answered}
        return online - self.stale


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
