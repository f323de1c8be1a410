"""Recipe presets (configs/experiment/recipe): training, privacy and head only, so the same
preset runs under the paper's data and the development data, beside Table 1's rows, and a
federated preset can name one for its rounds."""

from __future__ import annotations

import pytest

from common.config.compose import compose_config, compose_federated_config
from common.runs.single_node import guarantee_caveats

RECIPES = ["dp_eps1", "dp_eps6", "dp_syn_eps1", "dp_syn_eps6", "no_dp"]
BACKBONE = "model=efficientnet_lite0"  # the model group is the caller's too


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_sets_training_never_the_data_group(recipe: str) -> None:
    paper = compose_config([f"experiment=recipe/{recipe}", "data=paper", BACKBONE])
    dev = compose_config([f"experiment=recipe/{recipe}", "data=release_dev", BACKBONE])
    assert paper.data.tests != dev.data.tests  # the data group is the caller's
    assert (paper.train, paper.privacy, paper.model) == (dev.train, dev.privacy, dev.model)
    assert paper.train.engine == "cached"
    if recipe == "no_dp":
        assert not paper.privacy.enabled
        return
    epsilon = float(recipe.rsplit("eps", 1)[1])
    assert paper.privacy.enabled and paper.privacy.target_epsilon == epsilon
    synthetic = "synthetic" in paper.data.train_on
    assert synthetic == recipe.startswith("dp_syn")
    # formal guarantee for the real-only family; the dp_syn family is marked
    caveats = guarantee_caveats(paper)
    assert bool(caveats) == synthetic
    if synthetic:
        assert "no formal guarantee covers them" in caveats[0]


def test_multi_stage_features_name_what_they_need() -> None:
    """no_dp pools several stages: a timm backbone (the paper's torchvision Swin-T is not)."""
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a timm backbone"):
        compose_config(["experiment=recipe/no_dp", "model=swin_t_torchvision"])
    assert compose_config(["experiment=recipe/no_dp", "model=swin_t_timm"]).model.feature_stages


def test_a_federated_preset_names_a_recipe_for_its_rounds() -> None:
    recipe = compose_config(["experiment=recipe/dp_eps6"])
    federated = compose_federated_config(["experiment=federated/phantom_recipe"])
    assert federated.train.lr == recipe.train.lr
    assert federated.privacy.max_grad_norm == recipe.privacy.max_grad_norm
    assert federated.model.head == recipe.model.head
    assert federated.privacy.target_epsilon == 6
    assert federated.train.batch_size == 16  # the phantom sites' batch, not the recipe's 128
    assert federated.name == "federated_phantom_recipe"
