"""Redis profile store: one round trip per batch, one atomic script per customer.

Key layout (all keys of a customer share the hash tag {customer_id}, so the
script never crosses slots on Redis Cluster):

    <prefix>:{<customer_id>}:p     hash   profile fields (see README)
    <prefix>:{<customer_id>}:d     string visit-day bitmap
    <prefix>:{<customer_id>}:s     zset   recent sessions (session hash -> first ts)
    <prefix>:{<customer_id>}:e     string recent event-id hashes (dedupe window)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis

from patronage.models.profile import Delta, ProfileConfig, profile_view

APPLY_LUA = resources.files("patronage.streams").joinpath("lua/apply.lua").read_text("utf-8")


@dataclass(frozen=True)
class ApplyResult:
    applied: int = 0
    duplicate_offsets: int = 0
    duplicate_events: int = 0

    def __add__(self, other: ApplyResult) -> ApplyResult:
        return ApplyResult(
            self.applied + other.applied,
            self.duplicate_offsets + other.duplicate_offsets,
            self.duplicate_events + other.duplicate_events,
        )


class ProfileStore:
    def __init__(self, client: aioredis.Redis, prefix: str, cfg: ProfileConfig) -> None:
        self.client = client
        self.prefix = prefix
        self.cfg = cfg
        self._apply = client.register_script(APPLY_LUA)

    def keys(self, customer_id: str) -> list[str]:
        base = f"{self.prefix}:{{{customer_id}}}:"
        return [base + "p", base + "d", base + "s", base + "e"]

    async def apply_batch(self, by_customer: dict[str, list[Delta]]) -> ApplyResult:
        """Apply every customer's deltas in one pipelined round trip."""
        if not by_customer:
            return ApplyResult()
        static_args = [
            self.cfg.half_life_ms,
            self.cfg.map_cap,
            self.cfg.session_window,
            self.cfg.dedupe_window,
        ]
        async with self.client.pipeline(transaction=False) as pipe:
            for customer_id, deltas in by_customer.items():
                payload = json.dumps([d.to_wire() for d in deltas], separators=(",", ":"))
                await self._apply(
                    keys=self.keys(customer_id), args=[*static_args, payload], client=pipe
                )
            replies = await pipe.execute()
        total = ApplyResult()
        for reply in replies:
            total = total + ApplyResult(int(reply[0]), int(reply[1]), int(reply[2]))
        return total

    async def profile(self, customer_id: str) -> dict[str, object] | None:
        fields = await self.client.hgetall(self.keys(customer_id)[0])
        if not fields:
            return None
        return profile_view(customer_id, _decode(fields))

    async def customer_ids(self, count: int = 1000) -> AsyncIterator[str]:
        pattern = f"{self.prefix}:{{*}}:p"
        async for key in self.client.scan_iter(match=pattern, count=count, _type="hash"):
            name = key.decode() if isinstance(key, bytes) else key
            yield name[len(self.prefix) + 2 : -3]

    async def profiles(self, customer_ids: Sequence[str]) -> list[dict[str, object] | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for customer_id in customer_ids:
                pipe.hgetall(self.keys(customer_id)[0])
            replies = await pipe.execute()
        return [
            profile_view(cid, _decode(fields)) if fields else None
            for cid, fields in zip(customer_ids, replies, strict=True)
        ]

    async def export(self, chunk: int = 500) -> AsyncIterator[dict[str, object]]:
        batch: list[str] = []
        async for customer_id in self.customer_ids():
            batch.append(customer_id)
            if len(batch) >= chunk:
                for view in await self.profiles(batch):
                    if view is not None:
                        yield view
                batch = []
        if batch:
            for view in await self.profiles(batch):
                if view is not None:
                    yield view

    async def memory_usage(self, customer_id: str) -> int:
        total = 0
        for key in self.keys(customer_id):
            used = await self.client.memory_usage(key)
            total += int(used or 0)
        return total

    async def delete_prefix(self) -> int:
        """Remove every key under this prefix (tests and `patronage reset`)."""
        removed = 0
        async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            removed += int(await self.client.delete(key))
        return removed


def _decode(fields: Mapping[bytes | str, bytes | str]) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for key, value in fields.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        out[name] = text
    return out


def group_by_customer(pairs: Iterable[tuple[str, Delta]]) -> dict[str, list[Delta]]:
    grouped: dict[str, list[Delta]] = {}
    for customer_id, delta in pairs:
        grouped.setdefault(customer_id, []).append(delta)
    return grouped


def make_redis(url: str, password: str | None = None) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
    )
