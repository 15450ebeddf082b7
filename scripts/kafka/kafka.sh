#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) on loopback.
#
#   scripts/kafka/kafka.sh fetch   resolve the broker jars with Maven into the cache
#   scripts/kafka/kafka.sh start   format a fresh data dir, start, wait until ready
#   scripts/kafka/kafka.sh start-secure   the same, in secure mode (below)
#   scripts/kafka/kafka.sh stop    clean shutdown (SIGTERM, then SIGKILL after a grace period)
#   scripts/kafka/kafka.sh status  exit 0 when the broker answers
#   scripts/kafka/kafka.sh start-cluster          LETHE_KAFKA_BROKERS (3) nodes, each broker +
#                                                 controller, on ports port, port+2, … (their
#                                                 controllers on port+1, port+3, …)
#   scripts/kafka/kafka.sh stop-cluster | kill-node N | restart-node N   (N from 1)
#
# Settings (environment): LETHE_KAFKA_HOST (127.0.0.1), LETHE_KAFKA_PORT (9092),
# LETHE_KAFKA_CONTROLLER_PORT (port+1), LETHE_KAFKA_CACHE (~/.cache/lethe/kafka),
# LETHE_KAFKA_RUN (run dir: data, logs, certificates; $cache/run-$port),
# LETHE_KAFKA_HEAP (512m), LETHE_KAFKA_JVM_OPTS (extra JVM flags), LETHE_KAFKA_KEEP_RUNS
# (20: stopped run and cluster dirs kept for post-mortems; older ones are removed at each
# start, since tests and demos use a new port, so a new dir, every time). Jars never enter
# the repository.
#
# Secure mode (LETHE_KAFKA_SECURE=1): the client listener is SASL_SSL with SCRAM-SHA-512,
# ACLs are enforced (StandardAuthorizer, deny when no ACL matches) and "admin" is the super
# user. A CA and a broker certificate for 127.0.0.1/localhost are made (keytool) at each start in
# $run/tls (clients trust $run/tls/ca.pem). SCRAM credentials are written at format time:
# admin's from LETHE_KAFKA_ADMIN_PASSWORD (else a random one, saved in $run/admin.password),
# more from LETHE_KAFKA_SCRAM_USERS="name=password name2=password2". Passwords are
# [A-Za-z0-9._~+/=-]+ (they go into the JAAS line and the format tool's syntax). The
# controller listener stays PLAINTEXT on loopback: KRaft cannot check SCRAM there (the
# credentials live in the metadata it serves), so its principal ANONYMOUS is a super user
# too; that is for this local broker only, never a shared host.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
host="${LETHE_KAFKA_HOST:-127.0.0.1}"
port="${LETHE_KAFKA_PORT:-9092}"
cport="${LETHE_KAFKA_CONTROLLER_PORT:-$((port + 1))}"
cache="${LETHE_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/kafka}"
jars="$cache/jars-$version"
run="${LETHE_KAFKA_RUN:-$cache/run-$port}"
secure="${LETHE_KAFKA_SECURE:-0}"
pidfile="$run/kafka.pid"
log="$run/server.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

write_log4j() {  # write_log4j CONFIG_FILE LOG_FILE
  cat > "$1" <<LOG
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $2
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
LOG
}

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

# remove all but the newest LETHE_KAFKA_KEEP_RUNS stopped run-<port> / cluster-<port> dirs
prune_runs() {
  local keep="${LETHE_KAFKA_KEEP_RUNS:-20}" dir live pidf
  [ -d "$cache" ] || return 0
  ls -1dt "$cache"/run-[0-9]* "$cache"/cluster-[0-9]* 2>/dev/null | tail -n +"$((keep + 1))" |
    while IFS= read -r dir; do
      live=0
      while IFS= read -r pidf; do
        kill -0 "$(cat "$pidf" 2>/dev/null)" 2>/dev/null && live=1
      done < <(find "$dir" -maxdepth 2 -name kafka.pid 2>/dev/null)
      [ "$live" = 0 ] && rm -rf -- "$dir"
    done || true
  return 0
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  fetch
  prune_runs
  if pid="$(running_pid)"; then echo "kafka.sh: already running (pid $pid) on $host:$port"; return 0; fi
  if answers; then die "something else already listens on $host:$port"; fi
  mkdir -p "$run"
  # Keep the previous run's log for post-mortems; the data dir starts fresh.
  [ -f "$log" ] && mv -f "$log" "$log.prev"
  rm -rf "$run/data"
  local format_args=()
  if [ "$secure" = 1 ]; then
    secure_setup  # certificates, server.properties' security half, SCRAM credentials
  else
    cat > "$run/server.properties" <<PROPS
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport
advertised.listeners=PLAINTEXT://$host:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
PROPS
  fi
  cat >> "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$cport
controller.listener.names=CONTROLLER
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
  write_log4j "$run/log4j2.properties" "$log"
  local cp="$jars/*"
  local jvm=(-Xms256m "-Xmx${LETHE_KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
             "-Dlog4j2.configurationFile=$run/log4j2.properties")
  # extra JVM flags, e.g. LETHE_KAFKA_JVM_OPTS="-Xlog:gc:file=/tmp/kafka-gc.log"
  # shellcheck disable=SC2206
  [ -n "${LETHE_KAFKA_JVM_OPTS:-}" ] && jvm+=(${LETHE_KAFKA_JVM_OPTS})
  local cluster_id
  cluster_id="$(java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
       -c "$run/server.properties" "${format_args[@]}" >"$run/format.log" 2>&1 \
       || { cat "$run/format.log" >&2; die "format failed"; }
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
  if [ "$secure" = 1 ]; then
    echo "kafka.sh: Apache Kafka $version ready on $host:$port, SASL_SSL (SCRAM-SHA-512)," \
         "ACLs enforced, CA $run/tls/ca.pem (logs: $run)"
  else
    echo "kafka.sh: Apache Kafka $version ready on $host:$port (logs: $run)"
  fi
}

random_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

check_password() {
  [[ "$2" =~ ^[A-Za-z0-9._~+/=-]+$ ]] || die "password of SCRAM user $1 must match [A-Za-z0-9._~+/=-]+"
}

# Secure mode: writes $run/tls/{ca.pem,broker.p12}, the listener half of server.properties
# and the format tool's --add-scram arguments (format_args, declared by start).
secure_setup() {
  command -v keytool >/dev/null || die "keytool (it comes with the JDK) is needed for LETHE_KAFKA_SECURE=1"
  local mask; mask="$(umask)"
  umask 077  # keys, the JAAS line and passwords are readable by this user only
  local tls="$run/tls"
  rm -rf "$tls" && mkdir -p "$tls"
  # keytool, not openssl: it comes with the Java that runs the broker, so nothing else is
  # needed. A throwaway CA, and a broker certificate it signs whose SAN covers how clients
  # dial it: librdkafka and Python both check the host name against the certificate.
  local store_pw; store_pw="$(random_hex)"
  # seven short JVMs: the quick JIT tier and EC keys take ~1 s each instead of ~2.5 s
  local kt=(keytool -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC
            -storetype PKCS12 -storepass "$store_pw" -keypass "$store_pw")
  local key=(-keyalg EC -groupname secp256r1)
  local san="IP:127.0.0.1,DNS:localhost"
  [[ "$host" =~ ^[0-9.]+$ ]] && [ "$host" != 127.0.0.1 ] && san+=",IP:$host"
  {
    "${kt[@]}" -genkeypair -alias ca "${key[@]}" -validity 2 \
        -dname "CN=lethe-local-ca" -ext bc:c -keystore "$tls/ca.p12" &&
    "${kt[@]}" -exportcert -rfc -alias ca -keystore "$tls/ca.p12" -file "$tls/ca.pem" &&
    "${kt[@]}" -genkeypair -alias broker "${key[@]}" -validity 2 \
        -dname "CN=$host" -keystore "$tls/broker.p12" &&
    "${kt[@]}" -certreq -alias broker -keystore "$tls/broker.p12" -file "$tls/broker.csr" &&
    "${kt[@]}" -gencert -alias ca -keystore "$tls/ca.p12" -infile "$tls/broker.csr" -rfc \
        -validity 2 -ext "SAN=$san" -outfile "$tls/broker.crt" &&
    "${kt[@]}" -importcert -noprompt -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" &&
    "${kt[@]}" -importcert -alias broker -file "$tls/broker.crt" -keystore "$tls/broker.p12"
  } >"$tls/keytool.log" 2>&1 || { cat "$tls/keytool.log" >&2; die "keytool: making the certificates failed"; }
  rm -f "$tls/broker.csr" "$tls/ca.p12"  # the CA key is not needed once the broker's is signed
  chmod 644 "$tls/ca.pem"

  local admin_pw="${LETHE_KAFKA_ADMIN_PASSWORD:-}"
  if [ -z "$admin_pw" ]; then
    admin_pw="$(random_hex)"
    printf '%s\n' "$admin_pw" > "$run/admin.password"
  fi
  check_password admin "$admin_pw"
  format_args+=(--add-scram "SCRAM-SHA-512=[name=admin,password=$admin_pw]")
  local entry name pw
  for entry in ${LETHE_KAFKA_SCRAM_USERS:-}; do
    name="${entry%%=*}"; pw="${entry#*=}"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] && [ "$name" != "$entry" ] \
      || die "LETHE_KAFKA_SCRAM_USERS entries are name=password"
    check_password "$name" "$pw"
    format_args+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$pw]")
  done

  cat > "$run/server.properties" <<PROPS
listeners=SASL_SSL://$host:$port,CONTROLLER://$host:$cport
advertised.listeners=SASL_SSL://$host:$port
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$store_pw
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
PROPS
  umask "$mask"
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

# -- a cluster of LETHE_KAFKA_BROKERS nodes on loopback (replication tests) -------------------
brokers="${LETHE_KAFKA_BROKERS:-3}"
cluster_dir="${LETHE_KAFKA_RUN:-$cache/cluster-$port}"
node_dir() { echo "$cluster_dir/node-$1"; }
node_port() { echo $((port + 2 * ($1 - 1))); }
node_cport() { echo $((port + 2 * ($1 - 1) + 1)); }
node_pid() {
  local f; f="$(node_dir "$1")/kafka.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}
node_answers() { (exec 3<>"/dev/tcp/$host/$(node_port "$1")") 2>/dev/null; }

cluster_jvm() {
  jvm=(-Xms128m "-Xmx${LETHE_KAFKA_HEAP:-384m}" -XX:+UseG1GC -XX:TieredStopAtLevel=1
       -Djava.awt.headless=true "-Dlog4j2.configurationFile=$(node_dir "$1")/log4j2.properties")
}

launch_node() {  # start node N on its existing data dir and wait until it serves
  local k="$1" dir; dir="$(node_dir "$1")"
  local jvm; cluster_jvm "$k"
  nohup java -cp "$jars/*" "${jvm[@]}" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 &
  echo $! > "$dir/kafka.pid"
}

wait_node() {
  local k="$1" dir; dir="$(node_dir "$1")"
  local deadline=$((SECONDS + ${LETHE_KAFKA_START_TIMEOUT:-120}))
  until node_answers "$k" && grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
    node_pid "$k" >/dev/null || { tail -n 40 "$dir/server.log" >&2 || true; die "node $k exited"; }
    [ $SECONDS -lt $deadline ] || die "node $k not ready in time; logs in $dir"
    sleep 0.5
  done
}

start_cluster() {
  fetch
  prune_runs
  local voters="" k bootstrap=""
  for k in $(seq 1 "$brokers"); do
    voters="${voters:+$voters,}$k@$host:$(node_cport "$k")"
    bootstrap="${bootstrap:+$bootstrap,}$host:$(node_port "$k")"
    if node_pid "$k" >/dev/null; then die "node $k already running; stop-cluster first"; fi
    if node_answers "$k"; then die "something else listens on $host:$(node_port "$k")"; fi
  done
  local rf=$(( brokers < 3 ? brokers : 3 )) isr=$(( brokers < 3 ? 1 : 2 ))
  local jvm; cluster_jvm 1
  local cluster_id
  cluster_id="$(java -cp "$jars/*" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  for k in $(seq 1 "$brokers"); do
    local dir; dir="$(node_dir "$k")"
    mkdir -p "$dir"; rm -rf "$dir/data"
    [ -f "$dir/server.log" ] && mv -f "$dir/server.log" "$dir/server.log.prev"
    write_log4j "$dir/log4j2.properties" "$dir/server.log"
    cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$k
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$host:$(node_port "$k"),CONTROLLER://$host:$(node_cport "$k")
advertised.listeners=PLAINTEXT://$host:$(node_port "$k")
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
auto.create.topics.enable=true
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
message.max.bytes=2097152
unclean.leader.election.enable=false
PROPS
    java -cp "$jars/*" "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "format of node $k failed"; }
  done
  for k in $(seq 1 "$brokers"); do launch_node "$k"; done
  for k in $(seq 1 "$brokers"); do wait_node "$k"; done
  echo "kafka.sh: Apache Kafka $version cluster of $brokers ready on $bootstrap (logs: $cluster_dir)"
}

kill_node() {
  local pid; pid="$(node_pid "$1")" || die "node $1 is not running"
  kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$(node_dir "$1")/kafka.pid"
  echo "kafka.sh: node $1 killed"
}

restart_node() {
  node_pid "$1" >/dev/null && die "node $1 is running"
  launch_node "$1"; wait_node "$1"
  echo "kafka.sh: node $1 back on $host:$(node_port "$1")"
}

stop_cluster() {
  local k pid
  for k in $(seq 1 "$brokers"); do
    if pid="$(node_pid "$k")"; then kill "$pid"; fi
  done
  for k in $(seq 1 "$brokers"); do
    if pid="$(node_pid "$k")"; then
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$(node_dir "$k")/kafka.pid"; rm -rf "$(node_dir "$k")/data"
  done
  echo "kafka.sh: cluster stopped (logs kept in $cluster_dir)"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) answers && running_pid >/dev/null ;;
  version) echo "$version" ;;
  start-secure) secure=1; start ;;
  start-cluster) start_cluster ;;
  stop-cluster) stop_cluster ;;
  kill-node) kill_node "${2:?node number}" ;;
  restart-node) restart_node "${2:?node number}" ;;
  *) die "usage: kafka.sh {fetch|start|start-secure|stop|status|version|start-cluster|stop-cluster|kill-node N|restart-node N}" ;;
esac
