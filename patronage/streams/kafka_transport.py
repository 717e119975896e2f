"""Faust's aiokafka transport, reading only committed records.

Faust reads `read_uncommitted` unless the app itself uses transactions, so
records a transactional producer aborted (a shop's exactly-once pipeline that
failed half-way) would reach the profiles. patronage applies only committed
ones: the worker's consumer is created with `isolation_level=read_committed`.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka when the consumer starts its fetcher.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class App(faust.App):
    """A faust.App whose consumer reads committed records only."""

    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)
