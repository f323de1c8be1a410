"""One exchange: replies collected as they come, a message the SuperLink refused reported at
once instead of waited for, and the timeout kept."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict

from server.exchange import send_and_collect

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages need a run id


class SlowLink:
    """Flower's Grid interface as `send_and_collect` uses it: node n replies on the n-th look
    for replies, a node in `silent` never; a message to a node in `refuse` is not accepted."""

    def __init__(
        self, refuse: Iterable[int] = (), silent: Iterable[int] = (), *, omit: bool = False
    ) -> None:
        self.refuse, self.silent, self.omit = set(refuse), set(silent), omit
        self.pushed: dict[str, Message] = {}
        self.looks = 0

    def push_messages(self, messages: Iterable[Message]) -> list[str | None]:
        ids: list[str | None] = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            if message.metadata.dst_node_id in self.refuse:
                if not self.omit:  # HttpGrid: None in its place; InMemoryGrid: left out
                    ids.append(None)
                continue
            self.pushed[message.object_id] = message
            ids.append(message.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.looks += 1
        nodes = {i: self.pushed[i].metadata.dst_node_id for i in message_ids}
        due = [self.pushed[i] for i, n in nodes.items() if n == self.looks and n not in self.silent]
        return [Message(RecordDict(), reply_to=m) for m in due]


def _messages(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), message_type="query", dst_node_id=n) for n in nodes]


def test_every_reply_is_collected_as_it_comes() -> None:
    link = SlowLink()
    messages = _messages(1, 2, 3)
    replies = send_and_collect(link, messages, timeout=10, pull_interval_s=0.001)  # type: ignore[arg-type]
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in messages
    ]
    assert link.looks == 3  # no look after the last reply


@pytest.mark.parametrize("omit", [False, True])
def test_a_refused_message_is_logged_and_not_waited_for(
    omit: bool, caplog: pytest.LogCaptureFixture
) -> None:
    link = SlowLink(refuse=[2], omit=omit)
    replies = send_and_collect(link, _messages(1, 2), timeout=30, pull_interval_s=0.001)  # type: ignore[arg-type]
    assert len(replies) == 1 and replies[0].metadata.src_node_id == 1
    assert link.looks == 1  # done with node 1's reply (Flower's send_and_receive waits 30 s)
    assert "did not accept a query message for node 2" in caplog.text


def test_a_silent_node_ends_the_exchange_at_the_timeout() -> None:
    link = SlowLink(silent=[2])
    started = time.monotonic()
    replies = send_and_collect(link, _messages(1, 2), timeout=0.3, pull_interval_s=0.01)  # type: ignore[arg-type]
    assert [r.metadata.src_node_id for r in replies] == [1]
    assert time.monotonic() - started >= 0.3  # waited for node 2 until the deadline


def test_nothing_to_send_sends_nothing() -> None:
    link = SlowLink()
    assert send_and_collect(link, [], timeout=10, pull_interval_s=0.001) == []  # type: ignore[arg-type]
    assert link.looks == 0
