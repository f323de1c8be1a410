"""What mammofl hands to Flower's command lines: node configs flwr parses back exactly (paths
with spaces and quotes, numbers, flags), and process trees that are stopped whole."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest
from flwr.common.config import parse_config_args

from common.errors import ConfigError
from simulations.flower_processes import ManagedProcess, node_config_arg, supernode_args


def test_node_config_round_trips_through_flwrs_parser() -> None:
    values = {
        "site-name": "site-a",
        "data-dir": "/data/St. Mary's hospital/patches",
        "state-dir": '/state/with "quotes"',
        "epsilon-cap": 6.0,
        "allow-non-dp-synthetic": True,
        "share-exact-count": False,
    }
    assert parse_config_args([node_config_arg(values)]) == values


def test_supernode_retries_are_bounded_and_tls_is_on_by_default(tmp_path: Path) -> None:
    args = supernode_args(
        "127.0.0.1:9092", 9093, {"site-name": "a"}, ca_certificate=tmp_path, private_key=None
    )
    assert args[args.index("--max-retries") + 1] == "30"
    assert args[args.index("--max-wait-time") + 1] == "300.0"
    assert "--insecure" not in args and "--root-certificates" in args


def test_stop_ends_the_whole_tree_even_detached_children(tmp_path: Path) -> None:
    """A child in its own session (as flwr's SuperExec) is still found and stopped."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    process = ManagedProcess(
        "tree", [sys.executable, "-c", script], tmp_path / "tree.log", env={}
    ).start()
    deadline = time.monotonic() + 20
    while len(process.tree()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = process.tree()
    assert len(tree) == 2
    process.stop(timeout=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)


def test_values_flwr_cannot_carry_are_refused() -> None:
    with pytest.raises(ConfigError, match="state-dir"):
        node_config_arg({"state-dir": "/a'b\"c"})
