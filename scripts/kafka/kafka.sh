#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) on loopback.
#
#   scripts/kafka/kafka.sh fetch   resolve the broker jars with Maven into the cache
#   scripts/kafka/kafka.sh start   format a fresh data dir, start, wait until ready
#   scripts/kafka/kafka.sh stop    clean shutdown (SIGTERM, then SIGKILL after a grace period)
#   scripts/kafka/kafka.sh status  exit 0 when the broker answers
#
# Settings (environment): LETHE_KAFKA_HOST (127.0.0.1), LETHE_KAFKA_PORT (9092),
# LETHE_KAFKA_CONTROLLER_PORT (port+1), LETHE_KAFKA_CACHE (~/.cache/lethe/kafka),
# LETHE_KAFKA_HEAP (512m), LETHE_KAFKA_JVM_OPTS (extra JVM flags). Jars never enter the
# repository.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
host="${LETHE_KAFKA_HOST:-127.0.0.1}"
port="${LETHE_KAFKA_PORT:-9092}"
cport="${LETHE_KAFKA_CONTROLLER_PORT:-$((port + 1))}"
cache="${LETHE_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/kafka}"
jars="$cache/jars-$version"
run="$cache/run-$port"
pidfile="$run/kafka.pid"
log="$run/server.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  if [ -f "$jars/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to resolve the Kafka jars"
  command -v java >/dev/null || die "Java 17+ is needed to run Kafka"
  echo "kafka.sh: resolving Apache Kafka $version jars into $jars"
  rm -rf "$jars.tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$jars.tmp"
  rm -rf "$jars" && mv "$jars.tmp" "$jars" && touch "$jars/.complete"
}

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  fetch
  if pid="$(running_pid)"; then echo "kafka.sh: already running (pid $pid) on $host:$port"; return 0; fi
  if answers; then die "something else already listens on $host:$port"; fi
  mkdir -p "$run"
  # Keep the previous run's log for post-mortems; the data dir starts fresh.
  [ -f "$log" ] && mv -f "$log" "$log.prev"
  rm -rf "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$cport
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport
advertised.listeners=PLAINTEXT://$host:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$run/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=60000
message.max.bytes=2097152
PROPS
  cat > "$run/log4j2.properties" <<LOG
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
LOG
  local cp="$jars/*"
  local jvm=(-Xms256m "-Xmx${LETHE_KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
             "-Dlog4j2.configurationFile=$run/log4j2.properties")
  # extra JVM flags, e.g. LETHE_KAFKA_JVM_OPTS="-Xlog:gc:file=/tmp/kafka-gc.log"
  # shellcheck disable=SC2206
  [ -n "${LETHE_KAFKA_JVM_OPTS:-}" ] && jvm+=(${LETHE_KAFKA_JVM_OPTS})
  local cluster_id
  cluster_id="$(java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
       -c "$run/server.properties" >"$run/format.log" 2>&1 || { cat "$run/format.log" >&2; die "format failed"; }
  nohup java -cp "$cp" "${jvm[@]}" kafka.Kafka "$run/server.properties" >"$run/stdout.log" 2>&1 &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + ${LETHE_KAFKA_START_TIMEOUT:-90}))
  until answers && grep -q "Kafka Server started" "$log" 2>/dev/null; do
    if ! running_pid >/dev/null; then
      tail -n 40 "$log" "$run/stdout.log" >&2 || true
      die "broker exited during start; logs kept in $run"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$log" >&2; die "broker not ready in time; logs in $run"; }
    sleep 0.5
  done
  echo "kafka.sh: Apache Kafka $version ready on $host:$port (logs: $run)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then echo "kafka.sh: not running"; rm -f "$pidfile"; return 0; fi
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then echo "kafka.sh: forcing stop"; kill -9 "$pid"; fi
  rm -f "$pidfile"
  rm -rf "$run/data"  # topics die with the broker; logs stay for post-mortems
  echo "kafka.sh: stopped (logs kept in $run)"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) answers && running_pid >/dev/null ;;
  version) echo "$version" ;;
  *) die "usage: kafka.sh {fetch|start|stop|status|version}" ;;
esac
