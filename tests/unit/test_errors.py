"""The error policy as a table: Redis reply -> transient, fatal or poison.

Replies are parsed by redis-py's own parser, so the table sees the exception
classes (and stripped messages) the worker really gets: a check on the
message text, as MOVED handling once had, would fail here."""

from __future__ import annotations

import pytest
import redis.exceptions as rex
from redis._parsers.base import BaseParser

from patronage.streams.errors import classify, fatal_message, needs_slot_refresh
from patronage.streams.store import StoredLayoutError

REPLIES = [
    ("MOVED 3999 127.0.0.1:6381", "transient", True),
    ("ASK 3999 127.0.0.1:6381", "transient", True),
    ("TRYAGAIN Multiple keys request during rehashing of slot", "transient", False),
    ("CLUSTERDOWN The cluster is down", "transient", True),
    ("MASTERDOWN Link with MASTER is down", "transient", True),
    ("LOADING Redis is loading the dataset in memory", "transient", False),
    ("BUSY Redis is busy running a script. You can only call SCRIPT KILL", "transient", False),
    ("OOM command not allowed when used memory > 'maxmemory'.", "transient", False),
    ("READONLY You can't write against a read only replica.", "transient", False),
    ("NOSCRIPT No matching script. Please use EVAL.", "transient", False),
    ("WRONGPASS invalid username-password pair or user is disabled.", "fatal", False),
    ("NOAUTH Authentication required.", "fatal", False),
    ("NOPERM this user has no permissions to run the 'evalsha' command", "fatal", False),
    ("ERR user_script:12: Script attempted to access nonexistent global variable", "poison", False),
    ("ERR Error running script: attempt to compare nil with number", "poison", False),
]


@pytest.mark.parametrize(("reply", "kind", "refresh"), REPLIES)
def test_redis_replies_are_classified(reply: str, kind: str, refresh: bool) -> None:
    exc = BaseParser.parse_error(reply)
    assert classify(exc) == kind
    assert needs_slot_refresh(exc) == refresh


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (rex.ConnectionError("Connection refused"), "transient"),
        (rex.TimeoutError("Timeout reading from socket"), "transient"),
        (ConnectionResetError(), "transient"),
        (rex.SlotNotCoveredError("slot 7 not covered"), "transient"),
        (rex.AuthenticationError("invalid password"), "fatal"),
        (StoredLayoutError("run `patronage store migrate`"), "fatal"),
        (ValueError("a bug"), "poison"),
    ],
)
def test_client_side_errors_are_classified(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind
    if isinstance(exc, StoredLayoutError):  # its own message, not the credentials one
        assert fatal_message(exc) == str(exc)
