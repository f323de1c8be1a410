"""Structured config of `mammofl federate`: the sites, the federation, the per-site DP budget.

One composed `FederatedRunConfig` is what the launcher, the ServerApp and every ClientApp read
(from the run config's `experiment` and `overrides`). Site-local facts (data, state dir, local
epsilon cap, device) are not here in a deployment: they come from each SuperNode's node_config;
in a simulation `sites` is the launcher-side site table, one row per simulated SuperNode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from common.config.gan_schema import (
    GanDPConfig,
    GanModelConfig,
    GanTrainConfig,
    check_fast_with_dp,
)
from common.config.option_values import is_folder_name
from common.config.schema import (
    EvalConfig,
    ModelConfig,
    PatchSourceConfig,
    PrivacyConfig,
    TrainConfig,
    _choice,
    _device,
    _finite,
    _positive_epsilon,
    check_dp_trainable,
)
from common.errors import ConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam")
WEIGHTINGS = ("equal", "examples")
COMPARISON_ARMS = ("no_synpre", "site_alone")
PHANTOM_STYLES = ("site-a", "site-b", "site-c")


@dataclass
class SiteEntry:
    """One simulated site (a SuperNode's node_config in deployment)."""

    name: str = "site"
    phantom_style: str | None = None  # a built-in phantom acquisition style (site-a|b|c)
    raw: str | None = None  # a raw CBIS-DDSM-layout download the site prepares
    patches: PatchSourceConfig | None = None  # or a patch source used as it is
    partition: int | None = None  # with `patches`: this site's share of a per-patient split
    partitions: int | None = None
    epsilon_cap: float | None = None  # the site's own cap (None: the run's per-site budget)
    device: str = "cpu"
    share_exact_count: bool = False  # opt-in for federation.weighting=examples
    # a simulated site's researcher is every party: its small validation sets may be scored
    share_small_set_metrics: bool = True
    allow_non_dp_synthetic: bool = True  # a simulated site accepts the paper's non-DP MCGAN

    def __post_init__(self) -> None:
        if not is_folder_name(self.name):
            raise ConfigError(
                f"sites.name={self.name!r}: a folder name (its archive and state go under it): "
                "non-empty, no / or \\, not . or .."
            )
        sources = [self.phantom_style is not None, self.raw is not None, self.patches is not None]
        if sum(sources) != 1:
            raise ConfigError(f"site {self.name!r}: set exactly one of phantom_style, raw, patches")
        if self.phantom_style is not None:
            _choice(f"sites.{self.name}.phantom_style", self.phantom_style, PHANTOM_STYLES)
        if (self.partition is None) != (self.partitions is None):
            raise ConfigError(f"site {self.name!r}: set both partition and partitions, or neither")
        _positive_epsilon(f"sites.{self.name}.epsilon_cap", self.epsilon_cap)
        _device(f"sites.{self.name}.device", self.device)


@dataclass
class PhantomDataConfig:
    """Built-in phantom sites (`mammofl phantom`) and their separate central test patients."""

    patients: int = 40
    test_patients: int = 20
    long_side: int = 800
    ambiguity: float = 0.1
    conspicuity: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patients < 2 or self.test_patients < 2 or self.long_side < 256:
            raise ConfigError(
                "phantom: patients >= 2, test_patients >= 2 (both classes) and long_side >= "
                "256 (e.g. phantom.patients=40)"
            )
        if not (math.isfinite(self.ambiguity) and 0 <= self.ambiguity < 0.5):
            raise ConfigError(f"phantom.ambiguity={self.ambiguity} must be in [0, 0.5)")
        _finite("phantom.conspicuity", self.conspicuity, low=0, strict=True, example="1.0")


@dataclass
class SiteDataConfig:
    image_size: int = 32
    validation_fraction: float = 0.25  # of a site's training patients, for local evaluation
    test_fraction: float = 0.2  # prepare's per-patient split: the site's own test patients
    split_seed: int = 42

    def __post_init__(self) -> None:
        for key in ("validation_fraction", "test_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"site_data.{key} must be in (0, 1)")


@dataclass
class SiteGanConfig:
    """Each site's MCGAN (trained on its own training patients) and what it sends."""

    enabled: bool = True
    model: GanModelConfig = field(default_factory=GanModelConfig)
    train: GanTrainConfig = field(default_factory=GanTrainConfig)
    dp: GanDPConfig = field(default_factory=GanDPConfig)
    per_site: int = 200  # synthetic patches each site sends (half per class)
    memorisation_check: bool = True

    def __post_init__(self) -> None:
        if self.per_site < 2:
            raise ConfigError("gan.per_site >= 2 (one per class)")
        # refused when the federation is composed, not rounds later at the site's GAN step
        check_fast_with_dp(self.train, self.dp)


@dataclass
class SynPreConfig:
    """Shared synthetic pretraining at the server: all parameters, pooled synthetic data, no DP
    (the paper's SynPre)."""

    enabled: bool = True
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("synpre.epochs and synpre.batch_size must be >= 1")
        _finite("synpre.lr", self.lr, low=0, strict=True, example="1e-3")
        _finite("synpre.weight_decay", self.weight_decay, low=0, strict=False, example="1e-4")


@dataclass
class ClientDPConfig:
    """Client-level DP (a whole site is the unit): the server clips nothing itself; each site
    clips its round update to `clipping_norm` (Flower's fixedclipping_mod) and the server adds
    Gaussian noise of std `noise_multiplier * clipping_norm / sites` to their mean (Flower 1.42's
    DifferentialPrivacyClientSideFixedClipping, after McMahan et al. 2018). Accounted with
    Flower's RdpAccountant (dp-accounting) without sampling amplification: every selected site
    takes part in every round. Beside, not instead of, each site's sample-level DP-SGD."""

    enabled: bool = False
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-2  # must be < 1 / the number of sites
    max_epsilon: float | None = None  # the consortium's client-level budget (None: report only)

    def __post_init__(self) -> None:
        if self.enabled:
            for key in ("noise_multiplier", "clipping_norm"):
                _finite(f"federation.client_dp.{key}", getattr(self, key), low=0, strict=True,
                        example="1.0")  # fmt: skip
        if not 0 < self.delta < 1:
            raise ConfigError("federation.client_dp.delta must be in (0, 1)")
        _positive_epsilon("federation.client_dp.max_epsilon", self.max_epsilon)


@dataclass
class FederationConfig:
    rounds: int = 3
    local_epochs: int = 5
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox
    server_learning_rate: float = 0.1  # fedadam's eta
    weighting: str = "equal"  # "examples" sends exact counts: a site must opt in
    min_sites: int = 2
    reply_timeout_s: float = 900.0
    node_wait_timeout_s: float = 120.0
    stop_after_round: int | None = None
    resume: bool = False
    # each round the sites score the global model on their local validation patients and send
    # AUROC/AUPRC: a use of private data without DP (recorded in their ledgers); false: never
    site_evaluation: bool = True
    # the sites score round r's global model when round r+1's train message brings it, in the
    # same exchange (the last round's: an evaluate exchange of its own), so a round costs one
    # exchange, not two (reply_timeout_s then covers scoring and training); false: an evaluate
    # exchange after every round (Flower's pattern)
    evaluate_with_train: bool = True
    client_dp: ClientDPConfig = field(default_factory=ClientDPConfig)
    # fault drill: the ServerApp kills itself (SIGKILL) right after round N's checkpoint is
    # written and before round N+1 is dispatched; `federation.resume=true` then continues
    kill_after_round: int | None = None

    def __post_init__(self) -> None:
        _choice("federation.strategy", self.strategy, STRATEGIES)
        _choice("federation.weighting", self.weighting, WEIGHTINGS)
        if self.rounds < 1 or self.local_epochs < 1 or self.min_sites < 1:
            raise ConfigError("federation.rounds, local_epochs and min_sites must be >= 1")
        for key in ("reply_timeout_s", "node_wait_timeout_s"):
            _finite(f"federation.{key}", getattr(self, key), low=0, strict=True, example="900")
        _finite("federation.proximal_mu", self.proximal_mu, low=0, strict=False, example="0.01")
        _finite("federation.server_learning_rate", self.server_learning_rate, low=0,
                strict=True, example="0.1")  # fmt: skip
        for key in ("stop_after_round", "kill_after_round"):
            value = getattr(self, key)
            if value is not None and not 1 <= value <= self.rounds:
                raise ConfigError(
                    f"federation.{key}={value} must be a round of the run, 1 to "
                    f"federation.rounds={self.rounds} (or null): past the last round it would "
                    "never act"
                )
        if self.client_dp.enabled and self.strategy == "fedadam":
            raise ConfigError(
                "federation.client_dp needs FedAvg's own aggregation (fedavg or fedprox): "
                "Flower 1.42 accounts client-level DP only for it, so fedadam is refused"
            )
        if self.client_dp.enabled and self.weighting != "equal":
            raise ConfigError("federation.client_dp needs equal weights (weighting=equal)")


@dataclass
class SimulationConfig:
    """Flower simulation backend: resources per simulated ClientApp, and comparison arms."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # comparison arms run after the main one, each in its own state dirs and ledgers
    compare: list[str] = field(default_factory=lambda: list(COMPARISON_ARMS))

    def __post_init__(self) -> None:
        for arm in self.compare:
            _choice("simulation.compare", arm, COMPARISON_ARMS)
        _finite("simulation.num_cpus", self.num_cpus, low=0, strict=True, example="1")
        _finite("simulation.num_gpus", self.num_gpus, low=0, strict=False, example="0.5")


@dataclass
class FederatedRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # local DP-SGD at each site
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # target = per-site budget
    gan: SiteGanConfig = field(default_factory=SiteGanConfig)
    synpre: SynPreConfig = field(default_factory=SynPreConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    site_data: SiteDataConfig = field(default_factory=SiteDataConfig)
    sites: list[SiteEntry] = field(default_factory=list)
    phantom: PhantomDataConfig | None = None
    tests: dict[str, PatchSourceConfig] = field(default_factory=dict)  # central, no site's
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "federated"
    seed: int = 42
    out_dir: str = "runs/federated"  # the workspace: raw downloads, prepared patches, test set
    run_dir: str | None = None  # this run's outputs and site states (default: out_dir)
    shared_dir: str = "../shared"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or self.out_dir)

    @property
    def seeded_noise(self) -> bool:
        """Whether any DP mechanism of the run (DP-SGD rounds or the sites' DP-MCGAN) uses the
        seeded research mode: its records then carry SEEDED_NOISE_NOTE."""
        gan = self.gan
        return self.privacy.seeded_noise or (gan.enabled and gan.dp.enabled and gan.dp.seeded_noise)

    def __post_init__(self) -> None:
        if not self.out_dir.strip():
            raise ConfigError("out_dir is empty: give the run's folder (out_dir=runs/federated)")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ConfigError(f"site names must be unique: {names}")
        if self.sites and len(self.sites) < self.federation.min_sites:
            raise ConfigError(
                f"{len(self.sites)} sites < federation.min_sites={self.federation.min_sites}"
            )
        if any(s.phantom_style for s in self.sites) and self.phantom is None:
            raise ConfigError("phantom sites need the phantom: section")
        if not self.privacy.enabled or self.privacy.target_epsilon is None:
            raise ConfigError("federated rounds are DP-SGD: privacy.target_epsilon is the budget")
        check_dp_trainable(self.model, dp=True)
        if self.model.feature_centring != "none":
            raise ConfigError(
                f"model.feature_centring={self.model.feature_centring} is single-node only: a "
                "site would release a new centre every round (set model.feature_centring=none)"
            )
        client_dp = self.federation.client_dp
        if client_dp.enabled and self.sites and client_dp.delta >= 1 / len(self.sites):
            raise ConfigError(
                f"federation.client_dp.delta={client_dp.delta} >= 1/{len(self.sites)} sites: "
                "releasing one site's update verbatim would meet that definition"
            )
        if client_dp.enabled and not self.sites:
            raise ConfigError("federation.client_dp needs the site table (the population)")
        if self.gan.model.image_size != self.site_data.image_size and self.synpre.enabled:
            raise ConfigError(
                f"gan.model.image_size={self.gan.model.image_size} must equal "
                f"site_data.image_size={self.site_data.image_size}"
            )
