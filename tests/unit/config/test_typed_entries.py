"""`+data.tests.NAME.path=DIR` adds a test set (hydra alone refuses it: the dict is typed);
its keys and values are checked against PatchSourceConfig like any other setting."""

from __future__ import annotations

import pytest

from common.config.compose import compose_config, compose_federated_config
from common.config.schema import PatchSourceConfig
from common.errors import ConfigError


def test_a_test_set_is_added_beside_the_data_groups_own() -> None:
    config = compose_config(["data=release_dev", "+data.tests.mine.path=/data/mine"])
    assert sorted(config.data.tests) == ["cbis_ddsm_val", "mine"]
    assert config.data.tests["mine"] == PatchSourceConfig(path="/data/mine")


def test_emptying_first_keeps_only_the_added_test_set() -> None:
    config = compose_config(
        [
            "data=paper",
            "data.tests={}",
            "+data.tests.mine.path=/data/mine",
            "+data.tests.mine.split=all",
        ]
    )
    assert config.data.tests == {"mine": PatchSourceConfig(path="/data/mine", split="all")}


def test_a_whole_entry_in_hydra_dict_syntax() -> None:
    config = compose_config(["data=release_dev", "+data.tests.mine={path:/data/mine,limit:3}"])
    assert config.data.tests["mine"] == PatchSourceConfig(path="/data/mine", limit=3)


def test_a_plain_override_still_edits_the_groups_own_entry() -> None:
    config = compose_config(["data=paper", "data.tests.bcdr.path=/data/bcdr"])
    assert config.data.tests["bcdr"] == PatchSourceConfig(path="/data/bcdr", split="all")


def test_the_federated_central_test_sets_take_the_same_form() -> None:
    config = compose_federated_config(["experiment=federated/tiny", "+tests.extra.path=/data/x"])
    assert config.tests["extra"] == PatchSourceConfig(path="/data/x")
    assert "phantom_test" in config.tests


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+data.tests.mine.pathh=/x",
            r"data.tests.mine has no 'pathh'.*did you mean data\.tests\.mine\.path\?",
        ),
        (
            "+data.tests.mine.limit=abc",
            r"(?s)abc.*could not be converted.*data\.tests\.mine\.limit",
        ),
        ("+data.tests.mine.format=nope", r"format='nope' is not valid"),
        ("+data.tests.mine={pathh:/x}", r"(?s)pathh.*data\.tests\.mine"),
    ],
)
def test_a_wrong_key_or_value_is_refused_by_name(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose_config(["data=release_dev", override])
