"""How often Flower's simulation engine hands queued messages to its ClientApps.

Flower 1.42's simulation engine (`flwr.server.superlink.fleet.vce.vce_api`) moves the
server's messages to its worker queue in a loop that looks at every SuperNode's inbox, then
sleeps 0.1 s (`add_messages_to_queue`, not configurable). Every exchange therefore waits
0-0.1 s before its first ClientApp starts: on `federated/phantom`'s rounds (a few tenths of a
second of local compute) that is a large share of the round (docs/benchmarks.md).

`dispatch_interval(s)` runs the same loop with a sleep of `s` seconds for the simulations
started in its block (in this process: `mammofl federate` runs Flower's simulation in-process).
It replaces Flower's function only when that function is the loop it expects (the Flower
versions in `CHECKED_VERSIONS`, and the loop's source as read here); otherwise it leaves
Flower's alone and logs why. A deployment (SuperLink and SuperNodes) is not affected.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

log = logging.getLogger("mammofl.federate")

FLOWER_DISPATCH_INTERVAL_S = 0.1  # Flower 1.42's own
# mammofl's: a look costs one scan of the in-memory inbox per SuperNode, microseconds
SIMULATION_DISPATCH_INTERVAL_S = 0.01
CHECKED_VERSIONS = ("1.42.",)
# what Flower's loop must contain for ours to be the same loop with another sleep
EXPECTED_SOURCE = (
    "while not f_stop.is_set():",
    "for node_id in nodes_mapping.keys():",
    "state.get_message_ins(node_id=node_id, limit=1)",
    "queue.put(msg)",
    f"f_stop.wait({FLOWER_DISPATCH_INTERVAL_S})",
)

Loop = Callable[[Any, "Queue[Any]", Any, threading.Event], None]


def message_loop(interval: float) -> Loop:
    """Flower's `add_messages_to_queue` with a sleep of `interval` seconds between looks: each
    look takes at most one undelivered message per SuperNode (marking it delivered) and queues
    it for the workers, until the simulation stops.

    Raises ValueError for an interval that is not > 0.
    """
    if not interval > 0:
        raise ValueError(f"dispatch interval {interval} s: must be > 0")

    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: Any, f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(interval)

    return add_messages_to_queue


def why_not_replaceable(flower_version: str, loop: Callable[..., Any]) -> str | None:
    """None when Flower's loop is the one `message_loop` reproduces, else the reason."""
    if not flower_version.startswith(CHECKED_VERSIONS):
        return f"flwr {flower_version} is not a checked version ({', '.join(CHECKED_VERSIONS)}x)"
    try:
        source = inspect.getsource(loop)
    except (OSError, TypeError) as error:
        return f"its source cannot be read ({error})"
    missing = [line for line in EXPECTED_SOURCE if line not in source]
    return f"its loop changed (no {missing[0]!r})" if missing else None


@contextmanager
def dispatch_interval(seconds: float) -> Iterator[float]:
    """Flower's simulation dispatch loop sleeps `seconds` in this block; yields the interval
    in force (Flower's 0.1 s when its loop is not the expected one, logged)."""
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    reason = why_not_replaceable(flwr.__version__, original)
    if reason is not None:
        log.warning("Flower's dispatch interval stays %g s: %s", FLOWER_DISPATCH_INTERVAL_S, reason)
        yield FLOWER_DISPATCH_INTERVAL_S
        return
    vce_api.add_messages_to_queue = message_loop(seconds)
    try:
        yield seconds
    finally:
        vce_api.add_messages_to_queue = original
