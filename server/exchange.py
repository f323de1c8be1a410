"""One exchange with the sites: push messages, then collect their replies until all are in or
the reply timeout passes.

Flower's `Grid.send_and_receive` does the same but looks for replies every 3 s on a deployed
SuperLink (flwr 1.42's `HttpGrid`), which adds up to 3 s to every exchange, and waits out the
whole timeout for a message the SuperLink did not accept. Here the look is a cheap call every
`pull_interval_s`, and a message that was not pushed is reported at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger("mammofl.server")


def send_and_collect(
    grid: Grid, messages: Sequence[Message], timeout: float, pull_interval_s: float
) -> list[Message]:
    """Push `messages`, then pull replies every `pull_interval_s` seconds until each pushed
    message has one or `timeout` seconds have passed since the push.

    Returns the replies in arrival order; a message without a reply by the deadline has none
    there, as does one the SuperLink did not accept (flwr gives it no id; it is logged with its
    destination node).
    """
    if not messages:
        return []
    waiting = {i for i in grid.push_messages(messages) if i}
    # a grid gives each message its id before pushing it; one it did not accept has no id in
    # the answer (None in its place for HttpGrid, left out by InMemoryGrid)
    for message in (m for m in messages if m.metadata.message_id not in waiting):
        log.warning(
            "the SuperLink did not accept a %s message for node %d (see its log)",
            message.metadata.message_type,
            message.metadata.dst_node_id,
        )
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(r.metadata.reply_to_message_id for r in pulled)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(min(pull_interval_s, max(0.0, deadline - time.monotonic())))
    return replies
