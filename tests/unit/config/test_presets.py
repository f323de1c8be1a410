from pathlib import Path

import pytest

from common.config.compose import (
    compose_config,
    compose_federated_config,
    config_dir,
    experiment_names,
)
from common.config.federated_schema import FederatedRunConfig
from common.config.schema import MammoflConfig
from common.errors import ConfigError

TABLE1 = [f"table1/{n}" for n in ["real", "syn", "synpre"]] + [
    f"table1/{k}_eps{e}" for e in (1, 6, 12, 20, 60) for k in ("real", "real_syn", "synpre_realft")
]


def test_all_18_table1_presets_exist() -> None:
    # and synpre_cpu, SynPre's CPU variant (`mammofl table1 rows=cpu`)
    found = sorted(n for n in experiment_names() if n.startswith("table1/"))
    assert found == sorted([*TABLE1, "table1/synpre_cpu"])


SINGLE_NODE = [n for n in experiment_names() if not n.startswith("federated/")]
FEDERATED = [n for n in experiment_names() if n.startswith("federated/")]


def test_the_federated_presets_exist() -> None:
    assert FEDERATED == [
        "federated/paper_sites",
        "federated/phantom",
        "federated/phantom_recipe",  # the main job's federation with recipe/dp_eps6's rounds
        "federated/tiny",
    ]


@pytest.mark.parametrize("name", FEDERATED)
def test_federated_preset_composes_and_overrides_base(name: str) -> None:
    config = compose_federated_config([f"experiment={name}"])
    assert isinstance(config, FederatedRunConfig) and config.name == name.replace("/", "_")
    assert config.privacy.enabled and config.privacy.target_epsilon == 6
    assert config.sites and config.tests
    header = (config_dir() / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_" and header[1].startswith("#")


def test_federated_default_is_phantom_and_a_typo_is_refused() -> None:
    assert compose_federated_config([]).name == "federated_phantom"
    with pytest.raises(ConfigError, match="federated/phantm"):
        compose_federated_config(["experiment=federated/phantm"])


@pytest.mark.parametrize("name", SINGLE_NODE)
def test_preset_composes_and_overrides_base(name: str) -> None:
    base = compose_config([])
    # recipe/no_dp pools several stages and synpre_cpu cuts the backbone: a timm backbone (the
    # same Swin-T, from timm)
    model = ["model=swin_t_timm"] if name in ("recipe/no_dp", "table1/synpre_cpu") else []
    config = compose_config([f"experiment={name}", *model])
    assert isinstance(config, MammoflConfig)
    assert config.name != base.name == "run"  # the preset really overrides the base
    header = (config_dir() / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert header[1].startswith("#")


@pytest.mark.parametrize("name", [n for n in TABLE1 if "eps" in n])
def test_dp_presets_enable_privacy(name: str) -> None:
    config = compose_config([f"experiment={name}"])
    assert config.privacy.enabled and config.privacy.target_epsilon == float(
        name.rsplit("eps", 1)[1]
    )
    assert config.model.library == "torchvision" and config.model.name == "swin_t"
    assert config.train.epochs == 300 and config.train.batch_size == 128


def test_rows_train_the_paper_parameters() -> None:
    real = compose_config(["experiment=table1/real"])
    assert (real.model.head, real.model.trainable, real.data.train_on) == ("mlp2", "head", ["real"])
    synpre = compose_config(["experiment=table1/synpre"])
    assert (synpre.model.head, synpre.model.trainable, synpre.data.train_on) == (
        "linear",
        "all",
        ["synthetic"],
    )
    ft = compose_config(["experiment=table1/synpre_realft_eps6"])
    assert (ft.model.head, ft.model.trainable) == ("linear", "head")
    mixed = compose_config(["experiment=table1/real_syn_eps1"])
    assert mixed.data.train_on == ["real", "synthetic"]


def test_command_line_overrides_the_preset() -> None:
    config = compose_config(
        ["experiment=table1/real_eps6", "privacy.target_epsilon=3", "model=efficientnet_lite0"]
    )
    assert config.privacy.target_epsilon == 3 and config.model.name == "efficientnet_lite0"


def test_a_federated_run_takes_a_model_file_over_its_presets_model() -> None:
    """`federate model=efficientnet_lite0` was refused ("no match in the defaults list": the
    federated config had no model group); a misspelt name must name the known files."""
    config = compose_federated_config(["experiment=federated/tiny", "model=efficientnet_lite0"])
    assert (config.model.name, config.model.head) == ("efficientnet_lite0", "mlp2")
    assert compose_federated_config(["experiment=federated/tiny"]).model.name == "test_resnet"
    with pytest.raises(ConfigError, match="model/efficientnet_lit") as error:
        compose_federated_config(["model=efficientnet_lit"])
    assert "efficientnet_lite0" in str(error.value)


def test_no_preset_writes_a_noise_multiplier() -> None:
    """DP-SGD's sigma is always planned from the target epsilon. The one noise multiplier a
    preset may set is the feature centre's (privacy.centring_noise_multiplier): its share of the
    budget, which the plan composes with the steps."""
    for path in (config_dir()).rglob("*.yaml"):
        text = path.read_text().replace("centring_noise_multiplier", "")
        assert "noise_multiplier" not in text, path


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.engine"):
        compose_config(["train.engine=fast"])
    with pytest.raises(ConfigError, match="target_epsilon"):
        compose_config(["privacy=dp"])
    with pytest.raises(ConfigError):
        compose_config(["model.nonexistent=1"])


def test_config_dir_is_the_projects() -> None:
    assert config_dir() == Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize(
    ("compose", "name"),
    [
        (compose_config, "table1/real_ep6"),  # the typo that used to plan a run without DP
        (compose_config, "federated/tiny"),  # a federated preset is not a single-node one
        (compose_federated_config, "federated/tinny"),
        (compose_federated_config, "tiny"),
    ],
)
def test_unknown_presets_are_refused_with_the_known_ones(compose, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="Known presets") as error:
        compose([f"experiment={name}"])
    known = FEDERATED if compose is compose_federated_config else SINGLE_NODE
    assert all(k in str(error.value) for k in known)


def test_a_mistyped_gan_preset_is_refused_not_dropped() -> None:
    """`gan_preset=dpp` (meant: dp) composed as no preset: the non-DP MCGAN trained."""
    from common.config.compose import compose_gan_config

    with pytest.raises(ConfigError, match="gan_preset=dpp: no such preset") as error:
        compose_gan_config(["gan_preset=dpp"])
    assert all(k in str(error.value) for k in ("dp", "fast", "reduced", "tiny"))
    assert compose_gan_config(["gan_preset=dp"]).dp.enabled


def test_a_seeded_dp_mcgan_alone_marks_the_federated_run_seeded() -> None:
    """The run's records say "seeded noise" when any DP mechanism of it is seeded, the sites'
    DP-MCGAN included (it was marked only by privacy.seeded_noise)."""
    from common.config.compose import compose_federated_config

    assert not compose_federated_config([]).seeded_noise
    gan_only = compose_federated_config(["gan.dp.enabled=true", "gan.dp.seeded_noise=true"])
    assert gan_only.seeded_noise and not gan_only.privacy.seeded_noise
    assert compose_federated_config(["privacy.seeded_noise=true"]).seeded_noise
