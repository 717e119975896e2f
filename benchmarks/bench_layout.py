"""What packing the profile saved, and what one value per customer would.

    python -m benchmarks.bench_layout [--customers 1000] [--days 90] [--rounds 3]

Applies a simulated population through the real apply script, then builds
beside each customer its profile as layout 2 stored it (a hash of text
values under the short names), as layout 4 did (the packed map and the
trail under two keys) and one value holding both the packed profile (its
length first) and the trail; layout 5, which this measured into being,
stores the map and then the trail in one value. Printed:

* MEMORY USAGE per customer: layout 2's hash + the trail, today's packed
  profile + the trail (layout 3), the one value;
* Redis microseconds per call (INFO commandstats) of the fixed part of an
  apply on each, in alternating rounds: read everything, update the fifteen
  fields a typical order or click touches, write back, reply with the
  profile. Hash: HGETALL into a table, numbers parsed and formatted, HSET, a
  cjson reply. Packed: GET, cmsgpack.unpack, the same updates,
  cmsgpack.pack, SET. Each also reads and writes back the trail (the one
  value holds it).

None of the skeletons does the per-event work (dedupe scans, lapse judging,
decoding the trail), which is the same on all. The keys it wrote are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from patronage.models.batch import Record, prepare_batch
from patronage.models.layout import STORED_NAMES, CustomerKeys
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.settings import settings_with
from patronage.streams.store import ProfileStore, redis_for

# The fifteen fields an order or a click typically changes (stored keys:
# codes in the packed map, their text in the hash).
_TOUCHED_FIELDS = [
    "events_applied",
    "last_seen",
    "freq_decayed",
    "monetary_decayed",
    "clicks",
    "visits",
    "gap_sumsq",
    "last_day",
    "spend_total",
    "spend_online",
    "orders",
    "orders_online",
    "basket_sum",
    "max_basket",
    "last_order_at",
]
TOUCHED = "{" + ",".join(str(STORED_NAMES[f]) for f in _TOUCHED_FIELDS) + "}"
TOUCHED_TEXT = "{" + ",".join(f"'{STORED_NAMES[f]}'" for f in _TOUCHED_FIELDS) + "}"

HASH = f"""
local h = {{}}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local function fmt(x)
  local short = string.format('%.15g', x)
  if tonumber(short) == x then return short end
  return string.format('%.17g', x)
end
local args = {{}}
for _, f in ipairs({TOUCHED_TEXT}) do
  h[f] = fmt(tonumber(h[f] or '0') + 1.5)
  args[#args + 1] = f
  args[#args + 1] = h[f]
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('SET', KEYS[2], redis.call('GET', KEYS[2]) or '', 'KEEPTTL')
return {{1, 0, 0, {{}}, cjson.encode(h), ''}}
"""

PACKED = f"""
local blob = redis.call('GET', KEYS[1])
local h = blob and cmsgpack.unpack(blob) or {{}}
for _, f in ipairs({TOUCHED}) do h[f] = (h[f] or 0) + 1.5 end
local fields = cmsgpack.pack(h)
redis.call('SET', KEYS[1], fields, 'KEEPTTL')
redis.call('SET', KEYS[2], redis.call('GET', KEYS[2]) or '', 'KEEPTTL')
return {{1, 0, 0, {{}}, fields, ''}}
"""

ONE_VALUE = f"""
local blob = redis.call('GET', KEYS[1])
local h, trail = {{}}, ''
if blob then
  local n = struct.unpack('>I4', blob)
  h, trail = cmsgpack.unpack(string.sub(blob, 5, 4 + n)), string.sub(blob, 5 + n)
end
for _, f in ipairs({TOUCHED}) do h[f] = (h[f] or 0) + 1.5 end
local fields = cmsgpack.pack(h)
redis.call('SET', KEYS[1], struct.pack('>I4', #fields) .. fields .. trail, 'KEEPTTL')
return {{1, 0, 0, {{}}, fields, ''}}
"""

# A customer's stored value (layout 5: the map, then the trail) -> layout 4's
# trail alone (KEYS[2]) and packed map alone (KEYS[5]), layout 2's profile
# hash (KEYS[3]: text values under the short names) and one value holding
# both after the map's length (KEYS[4]).
PREPARE = """
local blob = redis.call('GET', KEYS[1])
local after, h = cmsgpack.unpack_one(blob)
local trail = after > 0 and string.sub(blob, after + 1) or ''
redis.call('SET', KEYS[2], trail)
local text = {}
for name, value in pairs(h) do
  text[#text + 1] = name
  if type(value) == 'number' then
    local short = string.format('%.15g', value)
    if tonumber(short) ~= value then short = string.format('%.17g', value) end
    value = short
  end
  text[#text + 1] = value
end
redis.call('HSET', KEYS[3], unpack(text))
local fields = cmsgpack.pack(h)
redis.call('SET', KEYS[5], fields)
redis.call('SET', KEYS[4], struct.pack('>I4', #fields) .. fields .. trail)
return 1
"""


def _prepared(k: CustomerKeys) -> list[str]:
    """PREPARE's keys: the stored value, then what it builds beside it."""
    return [k.profile, *(k.profile + suffix for suffix in ("T", "H", "B", "M"))]


async def run(customers: int, days: int, rounds: int) -> None:
    prefix = f"layout{uuid.uuid4().hex[:6]}"
    settings = settings_with({"PATRONAGE_KEY_PREFIX": prefix})
    client = redis_for(settings)
    store = ProfileStore(client, prefix, settings.profile_config)
    try:
        now_ms = int(time.time() * 1000)
        stream, _ = generate(customers, days, seed=3, start_ms=(now_ms // DAY_MS - days) * DAY_MS)
        records = [
            Record(settings.topic_for_kind[e["type"]], 0, i, None, json.dumps(e).encode())
            for i, e in enumerate(stream)
        ]
        batch = prepare_batch(records, settings.input_topics, settings.rules, now_ms, settings.zone)
        ids = list(batch.by_customer)
        for i in range(0, len(ids), 500):
            part = {c: batch.by_customer[c] for c in ids[i : i + 500]}
            await store.apply_batch(part, dict.fromkeys(part, 0), {0: float(now_ms)})
        prepare = client.register_script(PREPARE)
        sizes = {"hash": 0, "packed": 0, "one_value": 0}
        for c in ids:
            k = store.keys(c)
            await prepare(keys=_prepared(k))
            trail, as_hash, one_value, profile = [
                int(await client.memory_usage(key) or 0) for key in _prepared(k)[1:]
            ]
            sizes["hash"] += as_hash + trail
            sizes["packed"] += profile + trail
            sizes["one_value"] += one_value
        summary = {f"{name}_bytes_per_customer": round(b / len(ids)) for name, b in sizes.items()}
        print(json.dumps({"customers": len(ids), "events": len(records), **summary}))
        layouts = {
            "hash": (client.register_script(HASH), lambda k: [k.profile + "H", k.profile + "T"]),
            "packed": (
                client.register_script(PACKED),
                lambda k: [k.profile + "M", k.profile + "T"],
            ),
            "one_value": (client.register_script(ONE_VALUE), lambda k: [k.profile + "B"]),
        }
        for round_ in range(1, rounds + 1):
            for name, (script, keys_of) in layouts.items():
                await script(keys=keys_of(store.keys(ids[0])))  # loaded before the reset
                await client.config_resetstat()
                for c in ids:
                    await script(keys=keys_of(store.keys(c)))
                stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "layout": name,
                            "calls": stats.get("calls"),
                            "redis_us_per_call": stats.get("usec_per_call"),
                        }
                    )
                )
    finally:
        await store.delete_prefix()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_layout")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.days, args.rounds))


if __name__ == "__main__":
    main()
