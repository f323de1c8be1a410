"""Hardening (issue 8): a typo must never drop privacy; every refusal names the key and a fix.

Epsilon <= 0 (or inf/NaN, or set with DP off), batch > N under DP, unknown choice names, and
DP on a policy that trains window attention (per-window gradients) are all refused before any
data is read or any budget reserved.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config.compose import compose_config
from common.config.federated_schema import (
    ClientDPConfig,
    FederatedRunConfig,
    FederationConfig,
    SimulationConfig,
    SiteEntry,
)
from common.config.gan_schema import GanDPConfig, GanTrainConfig
from common.config.schema import (
    DataConfig,
    MammoflConfig,
    ModelConfig,
    PaperRowConfig,
    PatchSourceConfig,
    PrivacyConfig,
    TrainConfig,
)
from common.errors import ConfigError, UnsupportedDPModelError
from common.models.policies import check_no_per_window_gradients, per_window_parameters
from common.privacy.ledger import PrivacyLedger
from common.privacy.plan import plan_privacy
from simulations.cli import main
from tests.unit.gan.helpers import tiny_config
from tests.unit.training.helpers import random_patches, settings, tiny_model

DP6 = PrivacyConfig(enabled=True, target_epsilon=6)
SWIN_T = ("swin_tiny_patch4_window7_224", "swin_t", "swinv2_tiny_window8_256", "swin_v2_t")


# ---- epsilon <= 0, or past any meaning --------------------------------------------------------
@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("inf"), float("nan"), 1e9])
@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda e: PrivacyConfig(enabled=True, target_epsilon=e), "privacy.target_epsilon"),
        (lambda e: GanDPConfig(enabled=True, target_epsilon=e), "gan.dp.target_epsilon"),
        (
            lambda e: ClientDPConfig(enabled=True, max_epsilon=e),
            "federation.client_dp.max_epsilon",
        ),
        (lambda e: SiteEntry(name="a", raw="/x", epsilon_cap=e), "sites.a.epsilon_cap"),
    ],
)
def test_a_budget_must_be_a_finite_positive_epsilon(
    make: Callable[[float], object], key: str, epsilon: float
) -> None:
    with pytest.raises(
        ConfigError, match=rf"{key}=.*finite number > 0 and at most 100000 \(e\.g\. {key}=6"
    ):
        make(epsilon)


def test_dp_needs_a_target_and_a_target_needs_dp() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.target_epsilon=6"):
        PrivacyConfig(enabled=True)
    # a target with DP off would silently train without DP: refused, both fixes named
    with pytest.raises(ConfigError, match=r"privacy\.enabled=false.*privacy\.enabled=true"):
        PrivacyConfig(enabled=False, target_epsilon=6)
    assert PrivacyConfig(enabled=False).target_epsilon is None


def test_cli_plan_refuses_epsilon_zero_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "experiment=table1/real_eps6", "privacy.target_epsilon=0"]) == 2
    err = capsys.readouterr().err
    assert "privacy.target_epsilon=0" in err and "Traceback" not in err


# ---- batch > N -------------------------------------------------------------------------------
def test_dp_plan_refuses_a_batch_larger_than_the_training_set() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size=16 .*N=10 .*at most 10"):
        plan_privacy(dataset_size=10, batch_size=16, epochs=1, target_epsilon=1.0, delta=1e-3)
    plan = plan_privacy(dataset_size=16, batch_size=16, epochs=1, target_epsilon=8.0, delta=1e-3)
    assert plan.sample_rate == 1.0  # B == N is allowed
    # without DP a batch larger than N is only one full batch per epoch: no privacy at stake
    assert (
        plan_privacy(
            dataset_size=10, batch_size=16, epochs=1, target_epsilon=None, delta=1e-3
        ).steps
        == 1
    )


def test_cli_plan_names_batch_size_and_n(capsys: pytest.CaptureFixture[str]) -> None:
    # without the data, plan counts the preset's paper sizes (N = 1104)
    code = main(["plan", "experiment=table1/real_eps6", "train.batch_size=5000"])
    err = capsys.readouterr().err
    assert code == 2 and "train.batch_size=5000" in err and "N=1104" in err


def test_dp_gan_refuses_a_batch_larger_than_its_data(tmp_path: Path) -> None:
    from common.training.gan_trainer import GanTrainer

    pixels = np.zeros((6, 32, 32), np.uint8)
    labels = np.arange(6) % 2
    with pytest.raises(ConfigError, match=r"^train\.batch_size=8 .*N=6"):
        GanTrainer(tiny_config(dp=True), pixels, labels, tmp_path, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^gan\.train\.batch_size=8 .*N=6"):  # a site's
        GanTrainer(tiny_config(dp=True), pixels, labels, tmp_path, torch.device("cpu"), "gan.")
    GanTrainer(tiny_config(dp=False), pixels, labels, tmp_path, torch.device("cpu"))


# ---- unknown names ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: ModelConfig(trainable="heads"), "model.trainable"),
        (lambda: ModelConfig(head="mlp3"), "model.head"),
        (lambda: ModelConfig(library="keras"), "model.library"),
        (lambda: TrainConfig(engine="fast"), "train.engine"),
        (lambda: TrainConfig(backbone_mode="frozen"), "train.backbone_mode"),
        (lambda: TrainConfig(selection_positive="malign"), "train.selection_positive"),
        (lambda: TrainConfig(device="gpu"), "train.device"),
        (lambda: PrivacyConfig(accountant="rpd"), "privacy.accountant"),
        (lambda: PrivacyConfig(unit="image"), "privacy.unit"),
        (lambda: GanDPConfig(accountant="gdp"), "gan.dp.accountant"),
        (lambda: GanTrainConfig(device="cuda0"), "gan.train.device"),
        (lambda: FederationConfig(strategy="fedavgm"), "federation.strategy"),
        (lambda: FederationConfig(weighting="samples"), "federation.weighting"),
        (lambda: SimulationConfig(compare=["alone"]), "simulation.compare"),
        (lambda: SiteEntry(name="a", phantom_style="site-d"), "sites.a.phantom_style"),
        (lambda: SiteEntry(name="a", raw="/x", device="gpu"), "sites.a.device"),
        (lambda: PatchSourceConfig(format="folder"), "format"),
        (lambda: DataConfig(train_on=["synth"]), "data.train_on"),
        (lambda: PaperRowConfig(setting="SynPre+RealFt"), "paper_row.setting"),
    ],
)
def test_unknown_names_are_refused_with_the_choices(make: Callable[[], object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* (choose one of|use) "):
        make()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_devices_pass(device: str) -> None:
    assert TrainConfig(device=device).device == device


def test_cli_names_an_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "model.trainable=norm"]) == 2
    err = capsys.readouterr().err
    assert "model.trainable='norm'" in err and "head, head_last, norm_head, last_stage, all" in err


# ---- per-window gradients --------------------------------------------------------------------
@pytest.mark.parametrize("name", SWIN_T)
def test_dp_on_window_attention_is_refused_at_config_time(name: str) -> None:
    model = ModelConfig(name=name, trainable="all")
    with pytest.raises(ConfigError, match=r"model\.trainable=all .*per window, not per image"):
        MammoflConfig(model=model, privacy=DP6)
    with pytest.raises(ConfigError, match="per window"):
        FederatedRunConfig(model=model, privacy=DP6)
    MammoflConfig(model=model)  # without DP (SynPre trains all of Swin): fine
    # Swin's last stage holds window attention too (SynPre's CPU variant: no DP)
    last = ModelConfig(name=name, trainable="last_stage")
    with pytest.raises(ConfigError, match=r"model\.trainable=last_stage .*per window"):
        MammoflConfig(model=last, privacy=DP6)
    MammoflConfig(model=last)
    # norm layers sit outside the windows (per-image gradients: test_per_sample_gradients.py)
    for policy in ("head", "head_last", "norm_head"):
        MammoflConfig(model=ModelConfig(name=name, trainable=policy), privacy=DP6)


def test_window_attention_is_found_in_the_built_model() -> None:
    assert per_window_parameters(tiny_model("swin", policy="norm_head")) == []
    trained = tiny_model("swin", policy="all")
    inside = per_window_parameters(trained)
    assert inside and all(".attn." in name for name in inside)
    with pytest.raises(UnsupportedDPModelError, match="window attention"):
        check_no_per_window_gradients(trained)


def test_fit_refuses_per_window_dp_before_reserving(tmp_path: Path) -> None:
    """A model built by hand (no config) still meets the refusal before any step or charge."""
    from common.training.fit import fit

    model = tiny_model("swin", policy="all")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ledger = PrivacyLedger(delta=1e-3)
    with pytest.raises(UnsupportedDPModelError, match="window attention"):
        fit(
            model,
            "naive",
            random_patches(8),
            None,
            settings(train_mode=False),
            epochs=1,
            ledger=ledger,
            selection="last",
            target_epsilon=6.0,
        )
    assert ledger.events == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_override_inside_a_null_node_is_a_config_error() -> None:
    """omegaconf fails with AttributeError/AssertionError there: a one-line ConfigError with
    the way out instead of a traceback."""
    for override in (
        "data.validation.source.path=/tmp/x",
        "data.validation.source={format:patchset,path:/tmp/x}",
    ):
        with pytest.raises(ConfigError, match="node that is null"):
            compose_config(["experiment=tiny", override])


def test_an_empty_dict_override_empties_the_node() -> None:
    from common.config.compose import compose_config

    """Hydra merges `key={}` into the dict (a no-op): `data.tests={}` kept every test set, so
    a tuning run meant to read no test set still scored one. It now means "none"."""
    assert compose_config(["data=release_dev"]).data.tests  # the preset has a test set
    assert compose_config(["data=release_dev", "data.tests={}"]).data.tests == {}
    assert compose_config(["data=release_dev", "data.tests= {} "]).data.tests == {}
    assert compose_config(["data=release_dev", "data.tests={ }"]).data.tests == {}
    assert compose_config(["data=release_dev", "++data.tests={}"]).data.tests == {}
    with pytest.raises(ConfigError, match="would be lost"):
        compose_config(["data=release_dev", "data.tests={}", "data.tests.cbis_ddsm_val.limit=3"])
    with pytest.raises(ConfigError, match=r"no data\.nothere"):
        compose_config(["data=release_dev", "data.nothere={}"])


def test_a_federated_site_gan_refuses_inexact_fast_options_under_dp_at_compose_time() -> None:
    """The site GAN's DP refusals hold when `mammofl federate` composes its config, before any
    round: the same rule as `mammofl gan` (gan_schema.check_fast_with_dp)."""
    from common.config.compose import compose_federated_config

    for option in ("gan.train.channels_last=true", "gan.train.precision=bf16"):
        with pytest.raises(ConfigError, match=option.split("=")[0]):
            compose_federated_config(["gan.dp.enabled=true", option])
    assert compose_federated_config(["gan.train.channels_last=true"]).gan.train.channels_last


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("privacy.target_epsilom=3", "did you mean privacy.target_epsilon?"),
        ("+privacy.target_epsilom=3", "did you mean privacy.target_epsilon?"),  # hydra's advice
        ("++trian.epochs=5", "did you mean train?"),
        ("trian.epochs=5", "did you mean train?"),
    ],
)
def test_a_key_that_is_no_setting_is_refused_with_the_nearest(override: str, hint: str) -> None:
    """Hydra answers a typo'd key with 'To append to your config use +key=value'; followed,
    that added a key the run silently ignored (the plan kept epsilon 6)."""
    with pytest.raises(ConfigError, match="is not a setting") as refused:
        compose_config(["experiment=recipe/dp_eps6", override])
    assert hint in str(refused.value) and "To append" not in str(refused.value)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("train.epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("train.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("privacy.target_epsilon=[1]", "Value '[1]' of type 'list' could not be converted"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_the_reason(override: str, reason: str) -> None:
    """Hydra's own message ("Error merging override train.epochs=abc") kept the reason in its
    cause: a user saw the override refused but not why."""
    with pytest.raises(ConfigError) as refused:
        compose_config([override])
    assert f"override {override}" in str(refused.value) and reason in str(refused.value)


def test_added_keys_stay_allowed_in_free_dicts() -> None:
    assert compose_config(["+model.kwargs.global_pool=max"]).model.kwargs == {"global_pool": "max"}
    from common.config.compose import compose_federated_config

    with pytest.raises(ConfigError, match=r"did you mean sites\.0\.epsilon_cap\?"):
        compose_federated_config(["+sites.0.epsilon_capp=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.client_dp.noise_multiplier=nan", "noise_multiplier=nan: expected a finite"),
        ("federation.client_dp.clipping_norm=inf", "clipping_norm=inf: expected a finite"),
        ("federation.reply_timeout_s=nan", "reply_timeout_s=nan"),
        ("federation.proximal_mu=-1", "proximal_mu=-1.0: expected a finite number >= 0"),
        ("federation.server_learning_rate=0", "server_learning_rate=0.0"),
        ("federation.stop_after_round=9", "stop_after_round=9 must be a round of the run"),
        ("federation.kill_after_round=4", "kill_after_round=4 must be a round of the run"),
        ("simulation.num_cpus=0", "simulation.num_cpus=0.0"),
        ("train.weight_decay=nan", "train.weight_decay=nan"),
        ("synpre.lr=inf", "synpre.lr=inf"),
        ("synpre.weight_decay=-1", "synpre.weight_decay=-1.0"),
        ("phantom.patients=0", "phantom: patients >= 2"),
        ("phantom.ambiguity=0.7", "phantom.ambiguity=0.7 must be in [0, 0.5)"),
        ("phantom.test_patients=1", "test_patients >= 2"),
        ("sites.0.name=..", "sites.name='..'"),
        ("out_dir=", "out_dir is empty"),
    ],
)
def test_federated_settings_that_would_act_as_nonsense_are_refused(
    override: str, message: str
) -> None:
    """NaN passes every `<= 0` test; a stop past the last round never acts; a site named ..
    writes its archive beside the run: each refused by name."""
    from common.config.compose import compose_federated_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_federated_config(
            ["experiment=federated/tiny", "federation.client_dp.enabled=true", override]
        )
