"""Faust's worker set the root logger to DEBUG at log level warn (for its
terminal spinner), so every library debug call built a log record: aiokafka
logs each send and fetch. The worker class the app uses must not."""

from __future__ import annotations

import asyncio
import logging

import faust

from patronage.streams.settings import Settings
from patronage.streams.worker import _app_options


def test_the_worker_leaves_the_root_logger_at_the_configured_level() -> None:
    app = faust.App("patronage-logging-test", **_app_options(Settings(log_level="warn")))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = app.conf.Worker(app, loglevel="warn", quiet=True)
        logger = logging.Logger("root-under-test", logging.WARNING)  # as the log config left it
        logger.addHandler(logging.StreamHandler())
        worker.on_setup_root_logger(logger, logging.WARNING)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert not logger.isEnabledFor(logging.DEBUG)
    assert [type(h).__name__ for h in logger.handlers] == ["StreamHandler"]
