"""One error policy for every Redis call the agents and timers make.

* transient — the server or cluster recovers by itself (connection lost,
  timeout, a slot moved or being migrated, the cluster down, a node loading
  its data, a script running too long, out of memory under `noeviction`):
  back off, report not ready, commit nothing, try again;
* fatal — retrying cannot help (credentials, permissions): stop with a
  message naming the setting to fix;
* poison — Redis refused this one update (a script error on one customer's
  data): the records behind it go to the DLQ with the reason, the rest of the
  batch is applied.
"""

from __future__ import annotations

from typing import Literal

import redis.exceptions as rex

Kind = Literal["transient", "fatal", "poison"]


class FatalRedisError(RuntimeError):
    """Retrying cannot help; the message names the setting to fix."""


FATAL: tuple[type[BaseException], ...] = (
    FatalRedisError,  # ours, e.g. a key prefix in an older stored layout
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.AuthenticationWrongNumberOfArgsError,
    rex.NoPermissionError,
)

TRANSIENT: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # incl. LOADING while a restarted node reads its data
    rex.TimeoutError,
    rex.ClusterError,  # CLUSTERDOWN, MASTERDOWN
    rex.TryAgainError,  # a multi-key command on a slot being migrated
    rex.AskError,  # MOVED (a subclass) and ASK: the slot map changed
    rex.ReadOnlyError,  # a failover demoted the node we wrote to
    rex.SlotNotCoveredError,
    rex.RedisClusterException,
    rex.OutOfMemoryError,  # maxmemory with noeviction: wait for room
    rex.NoScriptError,  # a node restarted and forgot the scripts: load them again
    OSError,
)

# Error codes redis-py leaves as a plain ResponseError (it strips the code
# from the message, so the code is read from `status_code` where it has one).
TRANSIENT_CODES = ("BUSY", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "OOM", "MASTERDOWN")


def classify(exc: BaseException) -> Kind:
    if isinstance(exc, FATAL):
        return "fatal"
    if isinstance(exc, TRANSIENT):
        return "transient"
    if isinstance(exc, rex.ResponseError):
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        if code in TRANSIENT_CODES:
            return "transient"
        return "poison"
    if isinstance(exc, rex.RedisError):
        return "transient"
    return "poison"


def needs_slot_refresh(exc: BaseException) -> bool:
    return isinstance(exc, rex.AskError | rex.ClusterDownError | rex.SlotNotCoveredError)


def fatal_message(exc: BaseException) -> str:
    if isinstance(exc, FatalRedisError):  # already names what to do
        return str(exc)
    return (
        f"Redis refused our credentials or permissions ({type(exc).__name__}: {exc}); "
        "check PATRONAGE_REDIS_USERNAME, PATRONAGE_REDIS_PASSWORD and the ACL of that user "
        "(it needs the key prefix PATRONAGE_KEY_PREFIX and EVALSHA/SCRIPT LOAD; "
        "FCALL/FUNCTION LOAD where allowed)"
    )
