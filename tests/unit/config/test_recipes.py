"""Recipe presets (configs/experiment/recipe): training, privacy and head only, so the same
preset runs under the paper's data and the development data, beside Table 1's rows, and a
federated preset can name one for its rounds."""

from __future__ import annotations

import pytest

from common.config.compose import compose_config, compose_federated_config
from common.runs.single_node import guarantee_caveats

RECIPES = [
    "dp_eps1",
    "dp_eps6",
    "dp_syn_eps1",
    "dp_syn_eps6",
    "dp_synhead_eps1",
    "dp_synhead_eps6",
    "no_dp",
    "syn_head",
]
BACKBONE = "model=efficientnet_lite0"  # the model group is the caller's too


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_sets_training_never_the_data_group(recipe: str) -> None:
    paper = compose_config([f"experiment=recipe/{recipe}", "data=paper", BACKBONE])
    dev = compose_config([f"experiment=recipe/{recipe}", "data=release_dev", BACKBONE])
    assert paper.data.tests != dev.data.tests  # the data group is the caller's
    assert (paper.train, paper.privacy, paper.model) == (dev.train, dev.privacy, dev.model)
    assert paper.train.engine == "cached"
    if recipe in ("no_dp", "syn_head"):
        assert not paper.privacy.enabled
        assert (paper.data.train_on == ["synthetic"]) == (recipe == "syn_head")
        return
    epsilon = float(recipe.rsplit("eps", 1)[1])
    assert paper.privacy.enabled and paper.privacy.target_epsilon == epsilon
    assert paper.privacy.accountant == "prv"  # stage 4 of the search: less noise, same guarantee
    synthetic = "synthetic" in paper.data.train_on
    assert synthetic == recipe.startswith("dp_syn_")
    pretrained = paper.start_from_row == "recipe/syn_head"
    assert pretrained == recipe.startswith("dp_synhead")
    # formal guarantee for the real-only family; both synthetic families are marked
    caveats = guarantee_caveats(paper)
    assert bool(caveats) == (synthetic or pretrained)
    if synthetic:
        assert "no formal guarantee covers them" in caveats[0]
    if pretrained:
        assert "starts from a model" in caveats[0]


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
    # the recipe's feature centre is single-node only: the federated preset turns it off
    assert recipe.model.feature_centring == "train_mean"
    assert federated.model.feature_centring == "none"


def test_every_shipped_search_space_composes_every_candidate() -> None:
    """The searches behind the presets (docs/recipes.md) can be rerun as documented: each space
    in configs/tune loads and each of its candidates composes, without any test set."""
    from common.runs.tuning import SPACES_DIR, candidates, load_space, trial_config

    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    stages = {"dp_eps6", "dp_eps1", "blocks_eps6", "blocks_eps1", "recipes_prv", "centring_eps1"}
    assert stages <= set(names)
    for name in names:
        space = load_space(name)
        for candidate in candidates(space):
            config = trial_config(space, candidate, 42, [])
            assert config.data.tests == {} and config.privacy.enabled
            # stages 1-4 ran without the feature centre; stage 5 is the one that added it
            centred = "train_mean" if name == "centring_eps1" else "none"
            assert config.model.feature_centring == centred, name
