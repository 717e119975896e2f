#!/usr/bin/env bash
# `make demo`: a worker in the background, simulated shops publishing in three
# waves, and the profiles changing after each wave. `make demo-stop` ends it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PATRONAGE_PYTHON:-$ROOT/.venv/bin/python}"
STATE="${PATRONAGE_SERVICES_DIR:-$ROOT/.services}/demo"
PIDFILE="$STATE/worker.pid"
PORT="${PATRONAGE_WEB_PORT:-6066}"
mkdir -p "$STATE"
# The demo keeps to its own topics, consumer group and Redis keys.
export PATRONAGE_TOPIC_PREFIX="${PATRONAGE_TOPIC_PREFIX:-demo.}"
export PATRONAGE_GROUP_ID="${PATRONAGE_GROUP_ID:-patronage-demo}"
export PATRONAGE_KEY_PREFIX="${PATRONAGE_KEY_PREFIX:-demo}"
# The demo replays four months of history in a minute: judge lapses by event
# time, and publish in time order, letting the worker keep up every two days.
export PATRONAGE_LAPSE_CLOCK="${PATRONAGE_LAPSE_CLOCK:-event}"
export PATRONAGE_LAPSE_SWEEP_INTERVAL_S="${PATRONAGE_LAPSE_SWEEP_INTERVAL_S:-1}"
# A paced replay moves every topic together: a quiet topic is idle after 5 s.
export PATRONAGE_LAPSE_INPUT_IDLE_S="${PATRONAGE_LAPSE_INPUT_IDLE_S:-5}"
export PATRONAGE_COMMIT_INTERVAL_S="${PATRONAGE_COMMIT_INTERVAL_S:-0.2}"
export PATRONAGE_SEGMENT_PROMOTE_INTERVAL_S="${PATRONAGE_SEGMENT_PROMOTE_INTERVAL_S:-5}"
# 300 simulated customers: the first model once half of them are sampled.
export PATRONAGE_SEGMENT_WARMUP="${PATRONAGE_SEGMENT_WARMUP:-150}"
cli() { "$PY" -m patronage.streams.cli "$@"; }

worker_alive() {
  [[ -f "$PIDFILE" ]] && [[ -r "/proc/$(cat "$PIDFILE")/cmdline" ]] \
    && tr '\0' ' ' <"/proc/$(cat "$PIDFILE")/cmdline" | grep -q "patronage.streams.cli worker run"
}

if [[ "${1:-}" == "stop" ]]; then
  if worker_alive; then
    kill -TERM "$(cat "$PIDFILE")" && echo "[demo] worker stopped"
  else
    echo "[demo] no demo worker running"
  fi
  rm -f "$PIDFILE"
  exit 0
fi

if worker_alive; then
  echo "[demo] stopping the previous demo worker (pid $(cat "$PIDFILE"))"
  kill -TERM "$(cat "$PIDFILE")"
  while worker_alive; do sleep 0.2; done
fi
# Each run starts from empty profiles; the group's committed offsets skip the
# previous run's events, so nothing is counted twice.
cli topics create >/dev/null
cli store reset --yes
{
  echo "[demo] starting worker (log: $STATE/worker.log, web: http://127.0.0.1:$PORT)"
  PATRONAGE_LOG_LEVEL="${PATRONAGE_LOG_LEVEL:-warn}" nohup "$PY" -m patronage.streams.cli worker run \
    >"$STATE/worker.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
}
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done

demo_started_ms=$(($(date +%s%N) / 1000000))
# One sample history (seeded, so every run tells the same story), cut into waves.
cli events simulate --customers 300 --days 120 --seed 7 --out "$STATE/sample.jsonl" >/dev/null
total=$(wc -l <"$STATE/sample.jsonl")
wave=$(( (total + 2) / 3 ))
split -l "$wave" -d "$STATE/sample.jsonl" "$STATE/wave-"

show() {
  "$PY" - "$PORT" <<'PYEOF'
import json, sys, urllib.request
port = sys.argv[1]
print(f"  {'customer':<9} {'visits':>6} {'orders':>6} {'online':>6} {'store':>6} {'spend':>9} {'gap(d)':>7}  last seen")
for cid in ["c000001", "c000002", "c000003", "c000004", "c000005", "c000006"]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/profiles/{cid}", timeout=5) as r:
            p = json.load(r)
    except Exception:
        print(f"  {cid:<9} (no profile yet)")
        continue
    gap = p["visit_gap_mean_days"]
    print(f"  {cid:<9} {p['visits']:>6} {p['orders']:>6} {p['orders_online']:>6} {p['orders_store']:>6}"
          f" {p['spend_total']:>9.2f} {gap if gap is None else round(gap, 1)!s:>7}  {p['last_seen']}")
PYEOF
}

n=0
for file in "$STATE"/wave-*; do
  n=$((n + 1))
  echo "[demo] wave $n: $(cli events publish --pace-days 2 "$file")"
  show
done
rm -f "$STATE"/wave-*
echo
echo "[demo] one customer across web and store (cookie before login, loyalty card linked later):"
"$PY" - "$PORT" "$STATE/sample.jsonl" <<'PYEOF'
import json, sys, urllib.parse, urllib.request
port, sample = sys.argv[1], sys.argv[2]
links = {}
for line in open(sample):
    doc = json.loads(line)
    if doc.get("type") == "link":
        links.setdefault(doc["customer_id"], {})[doc["identifier"]["kind"]] = doc["identifier"]["value"]
both = sorted(c for c, kinds in links.items() if {"anonymous_id", "loyalty_card"} <= kinds.keys())
if both:
    cookie = "anonymous_id:" + links[both[0]]["anonymous_id"]
    url = f"http://127.0.0.1:{port}/profiles/{urllib.parse.quote(cookie)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        p = json.load(r)
    print(f"  GET /profiles/{cookie[:26]}... -> customer {p['customer_id']}")
    print(f"  identifiers: {', '.join(p['identifiers'])}")
    print(f"  clicks {p['clicks']}, orders online {p['orders_online']}, in store {p['orders_store']},"
          f" spend {p['spend_total']:.2f}")
PYEOF
echo
echo "[demo] segments (k-means on a sample of customers, the promoted model):"
cli segments show | sed 's/^/  /'
echo
echo "[demo] segment changes (a few):"
cli alerts tail --only segments --since "$demo_started_ms" --timeout 3 --limit 6 | sed 's/^/  /'
echo
echo "[demo] lapse alerts (regulars who stopped coming, judged by their own rhythm):"
# Once every topic is idle the event clock reaches the newest event: the
# lapses at the end of the history are judged on the next sweep.
sleep "$(( ${PATRONAGE_LAPSE_INPUT_IDLE_S%.*} + 2 ))"
cli alerts tail --only lapse --since "$demo_started_ms" --timeout 3 --limit 12 | sed 's/^/  /'
echo
echo "[demo] follow alerts live: .venv/bin/patronage alerts tail"
echo "[demo] the worker keeps running: http://127.0.0.1:$PORT/profiles/c000001, /metrics"
echo "[demo] more events: .venv/bin/patronage events simulate --customers 500 --seed 8"
echo "[demo] stop it with: make demo-stop   (services: make services-down)"
