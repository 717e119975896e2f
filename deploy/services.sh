#!/usr/bin/env bash
# Local real services for patronage: Apache Kafka (KRaft, from Maven Central
# jars, run with `java -cp`) and redis-server (Debian package), on 127.0.0.1.
#
#   deploy/services.sh up      install what is missing, start, wait, create topics
#   deploy/services.sh down    stop exactly the processes this script started
#   deploy/services.sh status  show what runs
#
# Idempotent: `up` twice leaves one broker and one Redis running.
# Settings (environment):
#   PATRONAGE_SERVICES_DIR        state, logs, pid files (default .services)
#   PATRONAGE_KAFKA_PORT          broker port (9092)
#   PATRONAGE_KAFKA_CONTROLLER_PORT  KRaft controller port (9093)
#   PATRONAGE_KAFKA_DATA_DIR      log.dirs (default $SERVICES_DIR/kafka/data)
#   PATRONAGE_KAFKA_HEAP          JVM heap (default 1g)
#   PATRONAGE_REDIS_PORT          Redis port (6379)
#   PATRONAGE_REDIS_DATA_DIR      Redis dir (default $SERVICES_DIR/redis)
#   PATRONAGE_PYTHON              python with patronage installed (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${PATRONAGE_SERVICES_DIR:-$ROOT/.services}"
KAFKA_PORT="${PATRONAGE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${PATRONAGE_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DIR="$SERVICES_DIR/kafka"
KAFKA_DATA_DIR="${PATRONAGE_KAFKA_DATA_DIR:-$KAFKA_DIR/data}"
KAFKA_HEAP="${PATRONAGE_KAFKA_HEAP:-1g}"
KAFKA_LIBS="$KAFKA_DIR/libs"
REDIS_PORT="${PATRONAGE_REDIS_PORT:-6379}"
REDIS_DATA_DIR="${PATRONAGE_REDIS_DATA_DIR:-$SERVICES_DIR/redis}"
PYTHON="${PATRONAGE_PYTHON:-$ROOT/.venv/bin/python}"
POM="$ROOT/deploy/kafka/pom.xml"

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A pid file counts only if that pid is alive and is the program we started.
alive() {
  local pidfile="$1" pattern="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"
}

wait_port() {
  local port="$1" what="$2" seconds="$3" logfile="$4"
  for ((i = 0; i < seconds * 4; i++)); do
    port_open "$port" && return 0
    sleep 0.25
  done
  [[ -f "$logfile" ]] && tail -n 40 "$logfile" >&2
  die "$what did not answer on 127.0.0.1:$port within ${seconds}s (log: $logfile)"
}

as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

ensure_redis_installed() {
  command -v redis-server >/dev/null && return 0
  log "installing redis-server (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null || die "redis-server still missing after apt-get install"
}

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"; }

ensure_kafka_jars() {
  local version marker
  version="$(kafka_version)"
  marker="$KAFKA_LIBS/.complete-$version"
  [[ -f "$marker" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found: Maven is needed to fetch Kafka's jars"
  command -v java >/dev/null || die "java not found: a JDK 17+ is needed to run Kafka"
  log "fetching Apache Kafka $version jars from Maven Central (cached in ~/.m2)"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIBS" -DincludeScope=runtime >"$KAFKA_DIR/mvn.log" 2>&1 \
    || { tail -n 30 "$KAFKA_DIR/mvn.log" >&2; die "mvn could not fetch Kafka $version"; }
  touch "$marker"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DIR" "$KAFKA_DATA_DIR"
  cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA_DIR
num.partitions=8
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
EOF
}

kafka_java() {
  java -Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC \
    "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

start_kafka() {
  if alive "$KAFKA_DIR/kafka.pid" "kafka.Kafka"; then
    log "kafka already running (pid $(cat "$KAFKA_DIR/kafka.pid")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if port_open "$KAFKA_PORT"; then
    log "something not started by this script already listens on 127.0.0.1:$KAFKA_PORT; using it"
    return 0
  fi
  ensure_kafka_jars
  write_kafka_config
  if [[ ! -f "$KAFKA_DATA_DIR/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    log "formatting KRaft storage in $KAFKA_DATA_DIR (cluster $cluster_id)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$KAFKA_DIR/server.properties" --standalone >"$KAFKA_DIR/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/format.log" >&2; die "kafka storage format failed"; }
  fi
  log "starting kafka $(kafka_version) on 127.0.0.1:$KAFKA_PORT"
  nohup java -Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC \
    "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/kafka.log" 2>&1 </dev/null &
  echo $! >"$KAFKA_DIR/kafka.pid"
  wait_port "$KAFKA_PORT" kafka 240 "$KAFKA_DIR/kafka.log"
}

start_redis() {
  mkdir -p "$REDIS_DATA_DIR"
  if alive "$REDIS_DATA_DIR/redis.pid" "redis-server"; then
    log "redis already running (pid $(cat "$REDIS_DATA_DIR/redis.pid")) on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  if port_open "$REDIS_PORT"; then
    log "something not started by this script already listens on 127.0.0.1:$REDIS_PORT; using it"
    return 0
  fi
  ensure_redis_installed
  log "starting redis-server on 127.0.0.1:$REDIS_PORT"
  # appendonly: profiles survive a Redis restart, as they would in production.
  nohup redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DATA_DIR" \
    --appendonly yes --appendfsync everysec --save '' --protected-mode yes \
    >"$REDIS_DATA_DIR/redis.log" 2>&1 </dev/null &
  echo $! >"$REDIS_DATA_DIR/redis.pid"
  wait_port "$REDIS_PORT" redis 30 "$REDIS_DATA_DIR/redis.log"
  # The port opens before the append-only file is loaded (a big one takes
  # seconds; every command meanwhile fails with LOADING): ready means loaded.
  local tries=0
  until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
    tries=$((tries + 1))
    [ "$tries" -le 1200 ] || die "redis still loading after 120 s (see $REDIS_DATA_DIR/redis.log)"
    sleep 0.1
  done
}

create_topics() {
  [[ -x "$PYTHON" ]] || die "$PYTHON not found: run 'make install' first"
  PATRONAGE_KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT" "$PYTHON" -m patronage.streams.cli topics create
}

stop_one() {
  local pidfile="$1" pattern="$2" name="$3" pid
  if ! alive "$pidfile" "$pattern"; then
    rm -f "$pidfile"
    log "$name: not running (nothing of ours to stop)"
    return 0
  fi
  pid="$(cat "$pidfile")"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do
    [[ -d "/proc/$pid" ]] || break
    sleep 0.25
  done
  if [[ -d "/proc/$pid" ]]; then
    log "$name did not stop in 30s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

case "${1:-up}" in
  up)
    mkdir -p "$SERVICES_DIR"
    start_redis
    start_kafka
    create_topics
    log "ready: kafka 127.0.0.1:$KAFKA_PORT, redis 127.0.0.1:$REDIS_PORT"
    ;;
  down)
    stop_one "$KAFKA_DIR/kafka.pid" "kafka.Kafka" kafka
    stop_one "$REDIS_DATA_DIR/redis.pid" "redis-server" redis
    ;;
  status)
    alive "$KAFKA_DIR/kafka.pid" "kafka.Kafka" && log "kafka: running (pid $(cat "$KAFKA_DIR/kafka.pid"))" || log "kafka: not started by us"
    alive "$REDIS_DATA_DIR/redis.pid" "redis-server" && log "redis: running (pid $(cat "$REDIS_DATA_DIR/redis.pid"))" || log "redis: not started by us"
    port_open "$KAFKA_PORT" && log "127.0.0.1:$KAFKA_PORT answers" || log "127.0.0.1:$KAFKA_PORT closed"
    port_open "$REDIS_PORT" && log "127.0.0.1:$REDIS_PORT answers" || log "127.0.0.1:$REDIS_PORT closed"
    ;;
  *) die "usage: $0 up|down|status" ;;
esac
