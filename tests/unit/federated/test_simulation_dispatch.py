"""The simulation dispatch loop: Flower's loop with another sleep, swapped in only for the loop
it reproduces and put back afterwards."""

from __future__ import annotations

import threading
from queue import Queue
from typing import Any

import flwr
import pytest
from flwr.server.superlink.fleet.vce import vce_api

from common.federated.simulation_dispatch import (
    FLOWER_DISPATCH_INTERVAL_S,
    dispatch_interval,
    message_loop,
    why_not_replaceable,
)


class Inboxes:
    """A LinkState's `get_message_ins` over per-node lists; stops the loop once all are out."""

    def __init__(self, inboxes: dict[int, list[str]], stop: threading.Event) -> None:
        self.inboxes, self.stop, self.looks = inboxes, stop, 0

    def get_message_ins(self, node_id: int, limit: int | None) -> list[str]:
        self.looks += 1
        taken = self.inboxes[node_id][:limit]
        del self.inboxes[node_id][: len(taken)]
        if not any(self.inboxes.values()):
            self.stop.set()
        return taken


def test_each_look_takes_one_message_per_node_until_stopped() -> None:
    stop = threading.Event()
    state = Inboxes({1: ["a1", "a2"], 2: ["b1"]}, stop)
    queue: Queue[Any] = Queue()
    message_loop(0.001)(state, queue, {1: 0, 2: 1}, stop)
    assert [queue.get_nowait() for _ in range(3)] == ["a1", "b1", "a2"]
    assert queue.empty() and state.looks == 4  # two looks at each node: the loop then stops


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        message_loop(0.0)


def test_flowers_loop_is_the_one_reproduced_and_put_back() -> None:
    original = vce_api.add_messages_to_queue
    assert why_not_replaceable(flwr.__version__, original) is None
    with dispatch_interval(0.005) as interval:
        assert interval == 0.005 and vce_api.add_messages_to_queue is not original
    assert vce_api.add_messages_to_queue is original


def test_another_loop_or_version_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
        f_stop.wait(0.5)  # a future Flower's loop: not the one mammofl reproduces

    assert why_not_replaceable("1.43.0", vce_api.add_messages_to_queue) is not None
    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    assert "loop changed" in str(why_not_replaceable(flwr.__version__, changed))
    with dispatch_interval(0.005) as interval:
        assert interval == FLOWER_DISPATCH_INTERVAL_S
        assert vce_api.add_messages_to_queue is changed
    assert "dispatch interval stays 0.1 s" in caplog.text
