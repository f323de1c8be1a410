"""The site runtime: a hospital's side of mammofl, free of Flower.

Lifecycle (after MONAI's ClientAlgo): `initialize` (prepare or load the site's data, open its
ledger), `synthesize` (train or load its MCGAN, send checked synthetic patches), `set_base_model`
(the server's pretrained model), `train_round` (one round of local DP-SGD from given global
trainable weights), `evaluate` (on the site's local validation patients), `finalize`. The
ClientApp, the single-node "site alone" arm and the tests all call this class.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.atomic_io import atomic_torch_save
from common.config.federated_schema import FederatedRunConfig
from common.errors import ConfigError, PrivacyError, SitePolicyError
from common.eval.metrics import (
    MIN_RELEASED_CLASS_COUNT,
    counts_hidden_by_rounding,
    point_metrics,
    released,
)
from common.eval.predict import predict_probabilities
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy, backbone_has_batchnorm
from common.privacy.delta import check_delta
from common.privacy.dp_sgd import RecordGroups
from common.privacy.ledger import PrivacyLedger
from common.privacy.ledger_store import LedgerStore
from common.privacy.randomness import SEEDED_NOISE_NOTE, seeded_stream
from common.site.budget import SitePlan, load_or_plan, site_budget
from common.site.data import SiteData, load_site_data
from common.site.facts import SiteFacts
from common.site.lock import site_lock
from common.site.synthetic import SyntheticSet, generate_checked, train_site_gan
from common.training.engine import load_trainable, state_fingerprint, trainable_state
from common.training.fit import fit
from common.training.settings import (
    DPSettings,
    EngineSettings,
    recipe_options,
    resolve_backbone_train_mode,
    resolve_device,
)

log = logging.getLogger(__name__)
LOCAL_EVALUATION = (
    "AUROC/AUPRC of the site's validation patients sent to the server each round: not covered "
    "by DP (as the paper's selection set)"
)


@dataclass
class RoundResult:
    trainable: dict[str, np.ndarray]  # float32, the trainable parameters after the round
    event: dict[str, Any]  # the settled ledger event (sigma, q, steps, round, kind, status)
    epsilon: float  # the site's total epsilon after the round (from its whole ledger)
    weight: float  # aggregation weight: 1.0, or the exact N when the site opted in


class SiteRuntime:
    def __init__(self, facts: SiteFacts, config: FederatedRunConfig) -> None:
        self.facts = facts
        self.config = config
        state = facts.state_dir
        # written only after the ledger was: with either there, a missing ledger was lost
        traces = (state / "dp_plan.json", state / "gan" / "checkpoints")
        self.store = LedgerStore(state / "ledger.json", spending_traces=traces)
        self.device = resolve_device(facts.device)
        self.data: SiteData | None = None
        self.model: Classifier | None = None
        self.base_sha: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def initialize(self) -> dict[str, Any]:
        """Load data and ledger (idempotent); returns the public status. A state dir's ledger
        is written at its first use, before any plan or MCGAN checkpoint (LedgerStore's
        spending traces: with one of those present, a missing ledger was lost)."""
        self._load()
        if not self.store.path.is_file():
            with site_lock(self.facts.state_dir, wait=True):
                self._keep_ledger(self._ledger())
        return self.status()

    def _load(self) -> None:
        if self.data is None:
            self.facts.state_dir.mkdir(parents=True, exist_ok=True)
            data = load_site_data(self.facts, self.config.site_data)
            privacy = self.config.privacy
            check_delta(privacy.delta, self._records(data), privacy.unit)  # before any use
            self._check_delta_cap(privacy.delta, "privacy.delta")
            if self.config.gan.enabled and self.config.gan.dp.enabled:
                self._check_delta_cap(self.config.gan.dp.delta, "gan.dp.delta")
            self.data = data

    def _check_delta_cap(self, delta: float, key: str) -> None:
        """The site's own delta cap (node_config delta-cap), before anything is spent."""
        cap = self.facts.delta_cap
        if cap is not None and delta > cap:
            raise SitePolicyError(
                f"the run asks for {key}={delta:g}, above this site's delta-cap={cap:g} "
                "(node_config): the server must lower it"
            )

    def finalize(self) -> None:
        self.data, self.model, self.base_sha = None, None, None

    @property
    def budget(self) -> float:
        return site_budget(self.config, self.facts.epsilon_cap)

    def _ledger(self) -> PrivacyLedger:
        """The ledger as the state dir holds it now: the file is the only truth (another
        process of this site, e.g. another simulation actor, may have charged it since)."""
        privacy = self.config.privacy
        return self.store.load(
            delta=privacy.delta, accountant=privacy.accountant, unit=privacy.unit
        )

    def _records(self, data: SiteData) -> int:
        """N for the privacy plan: training patches, or patients under patient-level DP."""
        patients = data.train.patch_set.patient_keys
        return RecordGroups.for_unit(self.config.privacy.unit, patients).records

    def _data(self) -> SiteData:
        self._load()
        assert self.data is not None
        return self.data

    def _persist(self, ledger: PrivacyLedger) -> None:
        self.store.save(ledger)

    def _keep_ledger(self, ledger: PrivacyLedger) -> None:
        """Write the ledger if the state dir has none yet (under the site's lock: another
        process may be writing its own); a process that never saw `initialize` (a round in a
        fresh worker) writes it before its plan."""
        if not self.store.path.is_file():
            self._persist(ledger)

    def plan(self, ledger: PrivacyLedger | None = None) -> SitePlan:
        """The site's saved plan, or a new one over what `ledger` (default: as on disk) holds."""
        ledger = ledger if ledger is not None else self._ledger()
        self._keep_ledger(ledger)  # on disk before the plan, a trace of spending, is
        return load_or_plan(
            self.facts.state_dir / "dp_plan.json",
            self.config,
            ledger,
            self._records(self._data()),
            self.budget,
        )

    def status(self) -> dict[str, Any]:
        """What the server may know: name, budget, ledger events, the guarantee of the
        synthetic data. No counts, paths or hashes of the private data."""
        ledger = self._ledger()
        plan_path = self.facts.state_dir / "dp_plan.json"
        plan = self.plan(ledger) if plan_path.is_file() else None
        gan = [e for e in ledger.events if e.kind == "dp-gan"]
        synthetic = "not generated"
        if gan:
            synthetic = "formal (DP-MCGAN)"
        elif any(use["kind"] == "mcgan" for use in ledger.non_dp_uses):
            synthetic = "no formal guarantee (MCGAN without DP)"
        return {
            "site": self.facts.name,
            "budget": self.budget,
            "delta": ledger.delta,
            "unit": ledger.unit,
            "accountant": ledger.accountant,
            "ledger": ledger.state_dict(),
            "epsilon": ledger.epsilon(),
            "epsilon_dp_sgd": ledger.epsilon(kind="dp-sgd"),
            "gan_epsilon": ledger.epsilon(kind="dp-gan") if gan else None,
            "synthetic_guarantee": synthetic,
            "noise": SEEDED_NOISE_NOTE if self.config.seeded_noise else "os-entropy",
            "plan": None
            if plan is None
            else {
                "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate,
                "steps_per_round": plan.steps_per_round,
            },
        }

    # ---- synthetic data ------------------------------------------------------------------
    def synthesize(self, count: int) -> SyntheticSet:
        """Train (or reuse) the site's MCGAN and draw `count` patches, under the site's lock.

        Refused (PrivacyError) when the GAN would run without DP and the site did not allow
        synthetic data without a formal guarantee, or with seeded noise it did not allow."""
        gan = self.config.gan
        if not gan.enabled:
            raise ConfigError("gan.enabled=false: this run has no synthetic data")
        if not gan.dp.enabled and not self.facts.allow_non_dp_synthetic:
            raise SitePolicyError(
                "the run asks for synthetic patches of an MCGAN without DP; this site did not "
                "allow data without a formal guarantee (node_config allow-non-dp-synthetic)"
            )
        if gan.dp.enabled and gan.dp.seeded_noise:
            self._seed_allowed()
        if gan.dp.enabled and self.config.privacy.unit != "patch":
            raise ConfigError(
                f"privacy.unit={self.config.privacy.unit}: the DP-MCGAN samples and clips per "
                "patch, so its charge cannot enter a per-patient ledger; use privacy.unit=patch"
            )
        with site_lock(self.facts.state_dir, wait=False):
            train = self._data().train.at_size(gan.model.image_size)
            trainer = train_site_gan(
                self.facts, self.config, train, self._ledger(), self.budget, self._persist
            )
            seed = self.config.seed + zlib.crc32(self.facts.name.encode())
            return generate_checked(trainer, train, count, seed=seed, check=gan.memorisation_check)

    def _seed_allowed(self) -> int:
        if self.facts.noise_seed is None:
            raise SitePolicyError(
                "the run asks for seeded noise (reproducible, no guarantee against whoever knows "
                "the seed); this site did not allow it (node_config seeded-noise, noise-seed)"
            )
        return self.facts.noise_seed

    # ---- the model -----------------------------------------------------------------------
    def set_base_model(
        self, state: Mapping[str, np.ndarray], expected_sha: str | None = None
    ) -> str:
        """Keep the server's full model (e.g. after SynPre); returns its fingerprint. With
        `expected_sha`, a model with another fingerprint is refused (ConfigError) before it
        replaces the one the site holds."""
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        sha = state_fingerprint(tensors)
        if expected_sha is not None and sha != expected_sha:
            raise ConfigError(
                f"the base model sent has fingerprint {sha[:12]}, the message names "
                f"{expected_sha[:12]}"
            )
        self._install(tensors, sha)
        with site_lock(self.facts.state_dir, wait=True):  # its only writer (lock.GUARDED)
            atomic_torch_save(self.facts.state_dir / "base_model.pt", tensors)
        assert self.base_sha is not None
        return self.base_sha

    def _install(self, tensors: dict[str, torch.Tensor], sha: str | None = None) -> None:
        """`sha`: the tensors' fingerprint when the caller has it (hashing a full model once)."""
        model = self._new_model()
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as error:
            raise ConfigError(f"the server's model does not fit this site's: {error}") from error
        apply_trainable_policy(model, self.config.model.trainable)
        self.model, self.base_sha = model, sha or state_fingerprint(tensors)

    def _new_model(self) -> Classifier:
        model = build_classifier(self.config.model)
        apply_trainable_policy(model, self.config.model.trainable)
        return model.to(self.device)

    def _base_model(self, expected_sha: str) -> Classifier:
        if self.model is None or self.base_sha != expected_sha:
            path = self.facts.state_dir / "base_model.pt"
            if not path.is_file():
                raise ConfigError("no base model at this site: the server must send it first")
            self._install(torch.load(path, weights_only=True))  # another process got it
        if self.base_sha != expected_sha:
            raise ConfigError(
                f"this site holds base model {str(self.base_sha)[:12]}, the round expects "
                f"{expected_sha[:12]}: the server must send its model again"
            )
        assert self.model is not None
        return self.model

    # ---- one round -----------------------------------------------------------------------
    def train_round(
        self,
        round_number: int,
        trainable: Mapping[str, np.ndarray],
        base_sha: str,
        *,
        proximal_mu: float = 0.0,
        weighting: str = "equal",
    ) -> RoundResult:
        """One round of local DP-SGD. Refused before any step (nothing charged) when it would
        take the site past its budget: PrivacyBudgetExceeded."""
        if weighting == "examples" and not self.facts.share_exact_count:
            raise SitePolicyError(
                "the server asks for exact-count weighting; this site did not opt in "
                "(node_config share-exact-count=true)"
            )
        with site_lock(self.facts.state_dir, wait=False):
            return self._train_round(round_number, trainable, base_sha, proximal_mu, weighting)

    def _train_round(
        self,
        round_number: int,
        trainable: Mapping[str, np.ndarray],
        base_sha: str,
        proximal_mu: float,
        weighting: str,
    ) -> RoundResult:
        model = self._base_model(base_sha)
        load_trainable(model, {k: torch.as_tensor(np.asarray(v)) for k, v in trainable.items()})
        ledger = self._ledger()  # read under the lock: no other process charges it meanwhile
        plan, data = self.plan(ledger), self._data()
        result = fit(
            model,
            self.config.train.engine,
            data.train,
            None,
            self._engine_settings(model, plan, round_number, history=len(ledger.events)),
            epochs=plan.local_epochs,
            ledger=ledger,
            selection="last",
            epsilon_cap=self.budget,
            round_number=round_number,
            persist=self._persist,
            proximal_mu=proximal_mu,
        )
        if result.mechanism_steps != result.steps or result.event is None:
            raise PrivacyError(
                f"mechanism ran {result.mechanism_steps} times for {result.steps} steps"
            )
        state = {k: v.numpy().astype(np.float32) for k, v in trainable_state(model).items()}
        weight = float(len(data.train.patch_set)) if weighting == "examples" else 1.0
        event = {**result.event.__dict__}
        return RoundResult(state, event, ledger.epsilon(), weight)

    def _engine_settings(
        self, model: Classifier, plan: SitePlan, round_number: int, *, history: int
    ) -> EngineSettings:
        config = self.config
        noise_seed = None
        if config.privacy.seeded_noise:  # research mode, with the site's consent and seed
            # keyed by the ledger's length too: a later run on the same state dir (a second
            # federation) never replays round r's batches and noise, which the server could
            # then subtract from one another
            noise_seed = seeded_stream(self._seed_allowed(), "dp-sgd", history, round_number)
        return EngineSettings(
            batch_size=config.train.batch_size,
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            label_smoothing=config.train.label_smoothing,
            flips=config.train.flips,
            seed=config.seed + round_number,
            device=self.device,
            backbone_train_mode=resolve_backbone_train_mode(
                config.train.engine,
                config.train.backbone_mode,
                backbone_has_batchnorm(model.backbone),
            ),
            feature_batch_size=config.train.feature_batch_size,
            feature_cache_dir=str(self.facts.state_dir / "features"),
            dp=DPSettings(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                max_grad_norm=config.privacy.max_grad_norm,
                steps_per_epoch=plan.steps_per_epoch,
                unit=config.privacy.unit,
            ),
            noise_seed=noise_seed,
            **recipe_options(config.train),
        )

    # ---- local evaluation ----------------------------------------------------------------
    def evaluate(self, trainable: Mapping[str, np.ndarray], base_sha: str) -> dict[str, float]:
        """AUROC / AUPRC of the given weights on the site's local validation patients
        (not covered by DP, as the paper's selection; a few numbers, no counts). Nothing (an
        empty dict, the model not even loaded) for a set too small for the rounding to hide its
        class counts (`counts_hidden_by_rounding`), unless the site consents
        (share-small-set-metrics)."""
        validation = self._data().validation
        labels = np.asarray(validation.patch_set.labels)
        if not (self.facts.share_small_set_metrics or counts_hidden_by_rounding(labels)):
            logging.getLogger(f"mammofl.site.{self.facts.name}").warning(  # its site.log
                "local scores withheld: a validation class has fewer than %d patches, too few "
                "for rounded metrics to keep its count hidden (node_config "
                "share-small-set-metrics=true sends them)",
                MIN_RELEASED_CLASS_COUNT,
            )
            return {}
        model = self._base_model(base_sha)
        load_trainable(model, {k: torch.as_tensor(np.asarray(v)) for k, v in trainable.items()})
        with site_lock(self.facts.state_dir, wait=True):
            ledger = self._ledger()
            if ledger.record_non_dp_use("local-evaluation", LOCAL_EVALUATION):
                self._persist(ledger)  # once, not every round
        scores = predict_probabilities(
            model,
            validation,
            self.device,
            self.config.train.feature_batch_size,
            str(self.facts.state_dir / "features"),
        )
        # rounded: full-precision AUROC/AUPRC would give the validation class counts away
        return released(point_metrics(labels, scores))
