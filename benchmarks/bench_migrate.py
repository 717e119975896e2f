"""How long `patronage store migrate` takes from layout 2 (workers stopped).

    python -m benchmarks.bench_migrate [--customers 20000] [--days 90]

Applies a simulated population through the real apply script, turns every
customer back into layout 2 in the server (the profile as a hash of text
under the short names, the trail's five parts under keys of their own: the
DOWNGRADE script below, one call per customer), marks the prefix as layout
2, then times `ProfileStore.migrate_layout` (what the command runs) and
checks that a sample of customers reads back exactly as before. Prints the
customers, the seconds, customers per second and `used_memory` before and
after. The keys it wrote are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from patronage.models.batch import Record, prepare_batch
from patronage.models.layout import (
    LAYOUT_5_NAMES,
    STORED_NAMES,
    STORED_PREFIXES,
    layout_2_trail_keys,
    layout_4_trail_key,
    layout_key,
)
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.settings import settings_with
from patronage.streams.store import ProfileStore, redis_for

# Layout 2 kept fixed fields under two-letter names, layout 7 under codes;
# layout 2 spelled prefixes out, layout 7 stores a byte for each.
_TWO_LETTER = (
    "local TWO_LETTER = {"
    + ", ".join(f"[{STORED_NAMES[name]}] = '{short}'" for name, short in LAYOUT_5_NAMES.items())
    + "}\nlocal PREFIX = {"
    + ", ".join(f"['\\{ord(byte)}'] = '{prefix}'" for prefix, byte in STORED_PREFIXES.items())
    + "}\n"
)
# KEYS: profile (its map, then the trail), layouts 3-4's trail key (unused
# here), then layout 2's days, sessions, event ids, natural keys, unjudged days.
# ARGV: topic code, topic name pairs (layout 2 named the topic in an offset
# field, and wrote an attribute's time in decimal).
DOWNGRADE = (
    _TWO_LETTER
    + """
local function fmt(x)
  local short = string.format('%.15g', x)
  if tonumber(short) == x then return short end
  return string.format('%.17g', x)
end
local topic = {}
for i = 1, #ARGV, 2 do topic[ARGV[i]] = ARGV[i + 1] end
local blob = redis.call('GET', KEYS[1])
local after, h = cmsgpack.unpack_one(blob)
local args = {}
for name, value in pairs(h) do
  local old = TWO_LETTER[name] or name
  if type(name) == 'string' then
    local mark, bare = '', name
    if string.sub(name, 1, 1) == '#' then mark, bare = '#', string.sub(name, 2) end
    local prefix = PREFIX[string.sub(bare, 1, 1)]
    if prefix then
      local rest = string.sub(bare, 2)
      if prefix == 'o:' then
        local code, tail = string.match(rest, '^([^:]*)(.*)$')
        rest = topic[code] .. tail
      elseif prefix == 'a:' then
        local ts, tail = string.match(value, '^(%w+)(|.*)$')
        value = string.format('%d', tonumber(ts, 36)) .. tail
      end
      old = mark .. prefix .. rest
    end
  end
  args[#args + 1] = old
  args[#args + 1] = type(value) == 'number' and fmt(value) or value
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(args))
if after <= 0 then return 0 end
local trail = string.sub(blob, after + 1)
local _, n_days, n_sess, n_eids, n_edges, at = struct.unpack('>BI3I3I3I3', trail)
local bitmap = string.sub(trail, at, at + n_days - 1); at = at + n_days
local sess = string.sub(trail, at, at + n_sess - 1); at = at + n_sess
local eids = string.sub(trail, at, at + n_eids - 1); at = at + n_eids
local edges = string.sub(trail, at, at + n_edges - 1); at = at + n_edges
local orders = string.sub(trail, at)
if #bitmap > 0 then redis.call('SET', KEYS[3], bitmap) end
for i = 1, #sess, 10 do
  redis.call('ZADD', KEYS[4], fmt((struct.unpack('>I6', sess, i + 4))), string.sub(sess, i, i + 3))
end
-- Layout 2's 64-bit tokens (the 48 bits and two bytes more, as the hash
-- went on): event ids with a 4-byte hour, natural keys.
local records = {}
for i = 1, #eids, 9 do
  local hour = struct.unpack('>I3', eids, i + 6)
  records[#records + 1] = string.sub(eids, i, i + 5) .. 'ZZ' .. struct.pack('>I4', hour)
end
if #eids > 0 then redis.call('SET', KEYS[5], table.concat(records)) end
local keys = {}
for i = 1, #orders, 6 do keys[#keys + 1] = string.sub(orders, i, i + 5) .. 'ZZ' end
if #orders > 0 then redis.call('SET', KEYS[6], table.concat(keys)) end
for i = 1, #edges, 16 do
  local day, lo, hi = struct.unpack('>i4I6I6', edges, i)
  redis.call('HSET', KEYS[7], fmt(day), fmt(lo) .. ':' .. fmt(hi))
end
redis.call('DEL', KEYS[2])
return 1
"""
)


async def run(customers: int, days: int) -> None:
    prefix = f"migrate{uuid.uuid4().hex[:6]}"
    settings = settings_with({"PATRONAGE_KEY_PREFIX": prefix})
    client = redis_for(settings)
    store = ProfileStore(client, prefix, settings.profile_config)
    try:
        now_ms = int(time.time() * 1000)
        start_ms = (now_ms // DAY_MS - days) * DAY_MS
        chunk = 5000
        ids: list[str] = []
        for first in range(0, customers, chunk):
            stream, _ = generate(
                min(chunk, customers - first), days, seed=first + 1, start_ms=start_ms
            )
            records = []
            for offset, event in enumerate(stream):
                event["customer_id"] = f"m{first + int(event['customer_id'][1:]):07d}"
                topic = settings.topic_for_kind[event["type"]]
                records.append(Record(topic, 0, offset, None, json.dumps(event).encode()))
            batch = prepare_batch(
                records, settings.input_topics, settings.rules, now_ms, settings.zone
            )
            part_ids = list(batch.by_customer)
            for i in range(0, len(part_ids), 500):
                part = {c: batch.by_customer[c] for c in part_ids[i : i + 500]}
                await store.apply_batch(part, dict.fromkeys(part, 0), {0: float(now_ms)})
            ids += part_ids
        sample = ids[:: max(1, len(ids) // 500)]
        before = [await store.stored_state(c) for c in sample]
        downgrade = client.register_script(DOWNGRADE)
        topics = [p for code, topic in store.topics.topic_of.items() for p in (code, topic)]
        for i in range(0, len(ids), 1000):
            async with client.pipeline(transaction=False) as pipe:
                for c in ids[i : i + 1000]:
                    old = layout_2_trail_keys(prefix, c)
                    beside = layout_4_trail_key(prefix, c)
                    keys = [store.profile_key(c), beside, *old]
                    await downgrade(keys=keys, args=topics, client=pipe)
                await pipe.execute()
        await client.set(layout_key(prefix), 2)
        await client.delete(store.topics_key)  # layout 2 gave topics no codes
        memory_before = int((await client.info("memory"))["used_memory"])
        migrating = ProfileStore(client, prefix, settings.profile_config)
        started = time.perf_counter()
        seen, renamed, packed, merged, folded, _, compacted = await migrating.migrate_layout()
        seconds = time.perf_counter() - started
        memory_after = int((await client.info("memory"))["used_memory"])
        after = [await migrating.stored_state(c) for c in sample]
        print(
            json.dumps(
                {
                    "customers": len(ids),
                    "profiles_seen": seen,
                    "fields_renamed": renamed,
                    "profiles_packed": packed,
                    "trails_merged": merged,
                    "trails_moved_into_profiles": folded,
                    "trails_compacted": compacted,
                    "seconds": round(seconds, 2),
                    "customers_per_second": round(len(ids) / seconds),
                    "used_memory_before": memory_before,
                    "used_memory_after": memory_after,
                    "sample_checked": len(sample),
                    "sample_same": sum(a == b for a, b in zip(after, before, strict=True)),
                }
            )
        )
    finally:
        await store.delete_prefix()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_migrate")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.days))


if __name__ == "__main__":
    main()
