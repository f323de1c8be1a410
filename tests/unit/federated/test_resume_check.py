"""A resume continues the same run: the composed settings are compared (not the overrides'
order or spelling), and a mismatch is refused before the simulation starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config.compose import compose_federated_config
from common.errors import ConfigError
from server.checkpoint import ServerState, check_same_run, save_checkpoint
from simulations.federate import check_fresh

FIRST = ["experiment=federated/tiny", "privacy.target_epsilon=3", "sites.1.epsilon_cap=2"]


def test_order_and_spelling_do_not_matter_settings_do() -> None:
    again = ["sites.1.epsilon_cap=2", "privacy.target_epsilon=3.0", "experiment=federated/tiny"]
    check_same_run(FIRST, [*again, "federation.resume=true", "federation.rounds=5"])
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.01 -> 0\.5\. Repeat the first run"):
        check_same_run(FIRST, [*again, "train.lr=0.5"])
    with pytest.raises(ConfigError, match=r"sites\.1\.epsilon_cap: 2\.0 -> None"):
        check_same_run(FIRST, ["experiment=federated/tiny", "privacy.target_epsilon=3"])


def test_a_folder_written_with_a_trailing_slash_is_the_same_folder() -> None:
    check_same_run([*FIRST, "out_dir=/runs/f0"], [*FIRST, "out_dir=/runs/f0/"])
    with pytest.raises(ConfigError, match="out_dir"):
        check_same_run([*FIRST, "out_dir=/runs/f0"], [*FIRST, "out_dir=/runs/f1"])


def test_a_resume_is_checked_before_the_simulation_starts(tmp_path: Path) -> None:
    overrides = [*FIRST, f"out_dir={tmp_path}", "federation.resume=true"]
    config = compose_federated_config(overrides)
    with pytest.raises(ConfigError, match="does not exist: nothing to resume"):
        check_fresh(config, False, overrides)
    state = ServerState(0, {}, "", {}, {}, {}, {}, overrides=[*FIRST, f"out_dir={tmp_path}"])
    save_checkpoint(tmp_path, state)
    check_fresh(config, False, overrides)
    other = [*overrides, "federation.local_epochs=9"]
    with pytest.raises(ConfigError, match=r"federation\.local_epochs"):
        check_fresh(compose_federated_config(other), False, other)


def test_a_folder_whose_run_charged_nothing_is_used_again(tmp_path: Path) -> None:
    """A run stopped before any charge (empty ledgers, no checkpoint) left nothing to protect;
    one whose ledgers record a use is refused, and resume is offered only with a checkpoint."""
    import json

    overrides = [*FIRST, f"out_dir={tmp_path}"]
    config = compose_federated_config(overrides)
    ledger = tmp_path / "sites" / "site-a" / "state" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"events": [], "non_dp_uses": []}))
    check_fresh(config, False, overrides)
    ledger.write_text(json.dumps({"events": [], "non_dp_uses": [{"kind": "mcgan"}]}))
    with pytest.raises(ConfigError, match="record their data's use\\): start elsewhere"):
        check_fresh(config, False, overrides)
