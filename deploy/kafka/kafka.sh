#!/usr/bin/env bash
# deploy/kafka/kafka.sh — the project's own Apache Kafka (KRaft, combined broker+controller)
# on 127.0.0.1, from the Maven Central jars named in deploy/kafka/pom.xml. No Docker.
#
#   kafka.sh fetch                 resolve the jars once into <repo>/.cache/kafka/<version>/lib
#   kafka.sh start [--nodes N]     fresh cluster (N=1 default, or 3), wait until it serves
#   kafka.sh stop                  stop the brokers this script started (pid files only)
#   kafka.sh status                nodes, pids, ports; exit 0 all up, 1 some, 3 none
#   kafka.sh bootstrap             print the bootstrap servers of the running cluster
#   kafka.sh logs [N] [-f]         tail the broker log of node N (default 1)
#   kafka.sh kill|pause|resume N   kill -9 / SIGSTOP / SIGCONT node N (fault tests)
#   kafka.sh restart N             restart node N on its existing data, wait until it serves
#   kafka.sh probe [HOST:PORT]     exit 0 if a Kafka broker answers there
#   kafka.sh tool CLASS [ARGS...]  run a Kafka tool from the classpath (short names are
#                                  looked up in org.apache.kafka.tools, e.g. TopicCommand)
#   kafka.sh classpath             print the java classpath ("<lib>/*")
#
# Ports: node n (1-based) listens on broker KAFKA_PORT+2(n-1), controller KAFKA_PORT+2(n-1)+1;
# KAFKA_PORT defaults to 19092, so 1 node: 19092/19093; 3 nodes: brokers 19092,19094,19096,
# controllers 19093,19095,19097.
#
# Environment: KAFKA_PORT (base port, see above), KAFKA_READY_TIMEOUT (s, default 90),
# KAFKA_STOP_TIMEOUT (s, default 20), KAFKA_HEAP_OPTS (default -Xms256m -Xmx768m for one node,
# -Xms256m -Xmx512m each for more), KAFKA_JVM_OPTS (extra JVM flags), KAFKA_BROKER_PROPS
# (extra server.properties lines, newline separated, applied at start), KAFKA_CACHE_DIR
# (default <repo>/.cache/kafka), KAFKA_RUN_DIR (default <repo>/.run/kafka).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
POM=$HERE/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)
[[ -n $KAFKA_VERSION ]] || { echo "kafka.sh: no <kafka.version> in $POM" >&2; exit 1; }
CACHE_DIR=${KAFKA_CACHE_DIR:-$ROOT/.cache/kafka}
LIB=$CACHE_DIR/$KAFKA_VERSION/lib
RUN_DIR=${KAFKA_RUN_DIR:-$ROOT/.run/kafka}
BASE_PORT=${KAFKA_PORT:-19092}
READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-20}
TOOLS_LOG4J=$HERE/log4j2-tools.properties
BROKER_LOG4J=$HERE/log4j2.properties

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- fetch

fetch() {
  local sum marker tmp old
  sum=$(sha256sum <"$POM" | cut -d' ' -f1)
  marker=$LIB/.complete
  if [[ -f $marker && $(cat "$marker") == "$sum" ]]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found (Maven 3 is needed to fetch the Kafka jars)"
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  mkdir -p "$CACHE_DIR/$KAFKA_VERSION"
  exec 8>"$CACHE_DIR/$KAFKA_VERSION/.fetch.lock"
  flock -w 900 8 || die "timed out waiting for another fetch to finish"
  if [[ -f $marker && $(cat "$marker") == "$sum" ]]; then exec 8>&-; return 0; fi
  # leftovers of interrupted fetches (we hold the lock, nobody else is writing them)
  rm -rf "$CACHE_DIR/$KAFKA_VERSION"/lib.tmp.* "$CACHE_DIR/$KAFKA_VERSION"/lib.old.*
  tmp=$(mktemp -d "$CACHE_DIR/$KAFKA_VERSION/lib.tmp.XXXXXX")
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB ..."
  local t0; t0=$(now)
  if ! (cd "$HERE" && mvn -B -q -f "$POM" \
          org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
          -DincludeScope=runtime -DoutputDirectory="$tmp") >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "mvn could not resolve the Kafka jars"
  fi
  rm -f "$tmp.log"
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar && -f $tmp/kafka-tools-$KAFKA_VERSION.jar ]] \
    || { rm -rf "$tmp"; die "fetch finished but kafka_2.13-$KAFKA_VERSION.jar / kafka-tools is missing"; }
  echo "$sum" >"$tmp/.complete"
  if [[ -e $LIB ]]; then
    old=$CACHE_DIR/$KAFKA_VERSION/lib.old.$$
    mv "$LIB" "$old"
    mv "$tmp" "$LIB"
    rm -rf "$old"
  else
    mv "$tmp" "$LIB"
  fi
  exec 8>&-
  log "fetched $(find "$LIB" -name '*.jar' | wc -l) jars ($(du -sh "$LIB" | cut -f1)) in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------- helpers

# java command line for a Kafka CLI class: quiet (WARN+ to stderr), so stdout is the
# tool's output; a fast-starting client JVM
TOOL_JAVA=(java -Xms32m -Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIB/*")
run_tool() { "${TOOL_JAVA[@]}" "$@" 8>&- 9>&-; }

broker_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
ctrl_port() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$RUN_DIR/node-$1"; }

# something accepts TCP connections on 127.0.0.1:$1
# (timeout --foreground everywhere: the child stays in our process group, so Ctrl-C reaches
# it and bash does not mistake an interrupted wait for a handled one)
port_open() { timeout --foreground 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# state of the process recorded for node $1: prints running|paused, or fails
node_state() {
  local dir pidf pid st
  dir=$(node_dir "$1"); pidf=$dir/pid
  [[ -f $pidf ]] || return 1
  pid=$(cat "$pidf" 2>/dev/null) || return 1
  is_uint "$pid" || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  # our broker, not a recycled pid: its command line names this node's server.properties
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $dir/server.properties" || return 1
  st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  case $st in
    Z|X|'') return 1 ;;
    T|t) echo paused ;;
    *) echo running ;;
  esac
}
node_alive() { node_state "$1" >/dev/null; }
node_pid() { cat "$(node_dir "$1")/pid"; }

load_cluster() {
  [[ -f $RUN_DIR/cluster.env ]] || return 1
  # shellcheck disable=SC1091
  . "$RUN_DIR/cluster.env"   # NODES, BASE_PORT, CLUSTER_ID, STARTED_VERSION
}

require_cluster() {
  load_cluster || die "no cluster state in $RUN_DIR (run: kafka.sh start)"
}

require_node_arg() {
  if [[ $# -lt 1 ]] || ! is_uint "$1"; then die "which node? (a number 1..N)"; fi
  require_cluster
  (( $1 >= 1 && $1 <= NODES )) || die "node $1 does not exist (cluster has $NODES node(s))"
}

bootstrap_servers() {
  local n out=""
  for ((n = 1; n <= NODES; n++)); do out+="${out:+,}127.0.0.1:$(broker_port "$n")"; done
  echo "$out"
}

lock_run_dir() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  flock -w 300 9 || die "timed out waiting for another kafka.sh command on $RUN_DIR"
}

write_props() {
  local n=$1 nodes=$2 dir voters="" i rf isr
  dir=$(node_dir "$n")
  for ((i = 1; i <= nodes; i++)); do voters+="${voters:+,}$i@127.0.0.1:$(ctrl_port "$i")"; done
  if ((nodes >= 3)); then rf=3; isr=2; else rf=$nodes; isr=1; fi
  cat >"$dir/server.properties" <<EOF
# written by deploy/kafka/kafka.sh start --nodes $nodes
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(ctrl_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=1000
EOF
  if [[ -n ${KAFKA_BROKER_PROPS:-} ]]; then
    printf '# from KAFKA_BROKER_PROPS\n%s\n' "$KAFKA_BROKER_PROPS" >>"$dir/server.properties"
  fi
}

launch_node() {
  local n=$1 dir heap
  dir=$(node_dir "$n")
  if ((NODES > 1)); then heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}; else heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}; fi
  rm -f "$dir/pid"
  # own session (survives the calling shell and its Ctrl-C); the inner bash writes its pid
  # and execs java, so the pid file holds the broker JVM's pid
  # shellcheck disable=SC2086,SC2016
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/pid" \
    java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true ${KAFKA_JVM_OPTS:-} \
    -Dlog4j2.configurationFile="$BROKER_LOG4J" -Dkafka.logs.dir="$dir" \
    -cp "$LIB/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/stdout.log" 2>&1 8>&- 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do [[ -s $dir/pid ]] && break; sleep 0.1; done
  [[ -s $dir/pid ]] || die "node $n: broker process did not start"
  LAUNCHED+=("$n")
  log "node $n: started pid $(cat "$dir/pid") (broker 127.0.0.1:$(broker_port "$n"), controller 127.0.0.1:$(ctrl_port "$n"))"
}

show_log_tail() {
  local n=$1 dir; dir=$(node_dir "$n")
  log "---- node $n: last lines of $dir/broker.log ----"
  tail -n 40 "$dir/broker.log" >&2 2>/dev/null || true
  if [[ -s $dir/stdout.log ]]; then
    log "---- node $n: last lines of $dir/stdout.log ----"
    tail -n 20 "$dir/stdout.log" >&2 || true
  fi
}

# wait until every node in $1 (space separated) answers ApiVersions and appears, unfenced,
# in the cluster metadata; bootstrap through those nodes. Deadline is epoch seconds.
wait_ready() {
  local nodes=$1 deadline=$2 n bs="" out missing
  for n in $nodes; do bs+="${bs:+,}127.0.0.1:$(broker_port "$n")"; done
  while :; do
    for n in $nodes; do
      node_alive "$n" || { log "node $n exited while starting"; show_log_tail "$n"; return 1; }
    done
    if (($(date +%s) >= deadline)); then
      log "timed out after ${READY_TIMEOUT}s waiting for node(s) $nodes to serve requests"
      for n in $nodes; do show_log_tail "$n"; done
      return 1
    fi
    missing=""
    for n in $nodes; do port_open "$(broker_port "$n")" || missing+=" $n"; done
    if [[ -z $missing ]]; then
      out=$(timeout --foreground 20 "${TOOL_JAVA[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand \
              --bootstrap-server "$bs" 2>/dev/null 8>&- 9>&-) || true
      for n in $nodes; do
        # a served broker prints "127.0.0.1:PORT (id: N rack: ... isFenced: false) -> ("
        grep -qE "\(id: $n rack: [^)]*\) -> \($" <<<"$out" || missing+=" $n"
        grep -qE "\(id: $n .*isFenced: true" <<<"$out" && missing+=" $n"
      done
      [[ -z $missing ]] && return 0
      sleep 0.5
    else
      sleep 0.2
    fi
  done
}

# nodes launched by this invocation; stopped again if it is interrupted or fails
LAUNCHED=()
on_interrupt() {
  trap - INT TERM HUP
  log "interrupted"
  if ((${#LAUNCHED[@]})); then stop_nodes "${LAUNCHED[@]}"; fi
  exit 130
}

# SIGTERM the given nodes together, SIGKILL whatever is left after STOP_TIMEOUT seconds
stop_nodes() {
  local n pid deadline left
  local -a pids=() ns=()
  for n in "$@"; do
    if node_alive "$n"; then
      pid=$(node_pid "$n"); pids+=("$pid"); ns+=("$n")
      kill -CONT "$pid" 2>/dev/null || true   # a paused JVM cannot act on SIGTERM
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  ((${#ns[@]})) || return 0
  log "stopping node(s) ${ns[*]} (pid ${pids[*]}) ..."
  deadline=$(($(date +%s) + STOP_TIMEOUT))
  while :; do
    left=()
    for n in "${ns[@]}"; do node_alive "$n" && left+=("$n"); done
    ((${#left[@]})) || break
    if (($(date +%s) >= deadline)); then
      log "node(s) ${left[*]} still running after ${STOP_TIMEOUT}s: SIGKILL"
      for n in "${left[@]}"; do kill -KILL "$(node_pid "$n")" 2>/dev/null || true; done
      sleep 0.5
      deadline=$(($(date +%s) + 10))
      while :; do
        left=()
        for n in "${ns[@]}"; do node_alive "$n" && left+=("$n"); done
        ((${#left[@]})) || break
        (($(date +%s) < deadline)) || die "node(s) ${left[*]} survived SIGKILL"
        sleep 0.2
      done
      break
    fi
    sleep 0.2
  done
  for n in "${ns[@]}"; do rm -f "$(node_dir "$n")/pid"; done
  log "stopped node(s) ${ns[*]}"
}

all_node_numbers() {
  local d
  for d in "$RUN_DIR"/node-*; do
    [[ -d $d ]] && echo "${d##*/node-}"
  done | sort -n
}

# random Kafka Uuid (base64url of 16 random bytes, no padding), as StorageTool random-uuid
random_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} -eq 22 && ${id:0:1} != - && $id != AAAAAAAAAAAAAAAAAAAAAA ]] && { echo "$id"; return; }
  done
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local nodes=1
  while (($#)); do
    case $1 in
      --nodes) [[ $# -ge 2 ]] || die "--nodes needs a number"; nodes=$2; shift 2 ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  if ! is_uint "$nodes" || ((nodes < 1 || nodes > 5)); then
    die "--nodes must be 1..5 (1 and 3 are the tested sizes)"
  fi
  if ! is_uint "$BASE_PORT" || ((BASE_PORT < 1 || BASE_PORT + 2 * nodes >= 65536)); then
    die "bad KAFKA_PORT: $BASE_PORT"
  fi

  lock_run_dir
  trap on_interrupt INT TERM HUP
  local want_port=$BASE_PORT n alive=() dead=()
  if load_cluster; then
    for ((n = 1; n <= NODES; n++)); do
      if node_alive "$n"; then alive+=("$n"); else dead+=("$n"); fi
    done
    if ((${#alive[@]})); then
      if ((${#dead[@]} == 0 && NODES == nodes && BASE_PORT == want_port)); then
        log "already running: $NODES node(s), bootstrap $(bootstrap_servers)"
        return 0
      fi
      die "a $NODES-node cluster from this script is running (nodes up: ${alive[*]}; down: ${dead[*]:-none}; bootstrap $(bootstrap_servers)); use 'kafka.sh stop' first, or 'kafka.sh restart N'"
    fi
    BASE_PORT=$want_port
  fi
  # stray pid files from another layout
  for n in $(all_node_numbers); do
    node_alive "$n" && die "node $n of an earlier cluster is still running (pid $(node_pid "$n")); run 'kafka.sh stop'"
  done

  fetch
  local busy=""
  for ((n = 1; n <= nodes; n++)); do
    port_open "$(broker_port "$n")" && busy+=" $(broker_port "$n")"
    port_open "$(ctrl_port "$n")" && busy+=" $(ctrl_port "$n")"
  done
  [[ -z $busy ]] || die "port(s)$busy on 127.0.0.1 already in use by another process (not started by this script; see 'ss -ltnp'); set KAFKA_PORT to another base port"

  local t0; t0=$(now)
  rm -rf "$RUN_DIR"/node-* "$RUN_DIR/cluster.env"
  NODES=$nodes
  CLUSTER_ID=$(random_cluster_id)
  local pids=() fail=0
  for ((n = 1; n <= nodes; n++)); do
    mkdir -p "$(node_dir "$n")/data"
    write_props "$n" "$nodes"
    run_tool kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$(node_dir "$n")/server.properties" \
      >"$(node_dir "$n")/format.log" 2>&1 &
    pids+=($!)
  done
  for ((n = 1; n <= nodes; n++)); do
    if ! wait "${pids[n - 1]}"; then
      fail=1; log "formatting node $n failed:"; cat "$(node_dir "$n")/format.log" >&2
    fi
  done
  ((fail == 0)) || exit 1
  cat >"$RUN_DIR/cluster.env" <<EOF
NODES=$nodes
BASE_PORT=$BASE_PORT
CLUSTER_ID=$CLUSTER_ID
STARTED_VERSION=$KAFKA_VERSION
EOF

  # failed before ready: take down what we started (interrupts: on_interrupt)
  local all=()
  for ((n = 1; n <= nodes; n++)); do launch_node "$n"; all+=("$n"); done
  if ! wait_ready "${all[*]}" $(($(date +%s) + READY_TIMEOUT)); then
    stop_nodes "${all[@]}"
    trap - INT TERM HUP
    die "Kafka did not become ready; stopped it again"
  fi
  trap - INT TERM HUP
  log "Kafka $KAFKA_VERSION ready: $nodes node(s), cluster id $CLUSTER_ID, bootstrap $(bootstrap_servers) ($(elapsed "$t0") s)"
}

cmd_stop() {
  lock_run_dir
  local ns
  ns=$(all_node_numbers)
  if [[ -z $ns ]]; then log "nothing to stop"; return 0; fi
  local n running=()
  for n in $ns; do node_alive "$n" && running+=("$n"); done
  if ((${#running[@]} == 0)); then
    log "no broker running"
  else
    stop_nodes "${running[@]}"
  fi
  for n in $ns; do rm -f "$(node_dir "$n")/pid"; done
}

cmd_status() {
  if ! load_cluster; then
    echo "not started (no state in $RUN_DIR)"
    return 3
  fi
  local n st up=0
  echo "Kafka $STARTED_VERSION, $NODES node(s), cluster id $CLUSTER_ID, run dir $RUN_DIR"
  for ((n = 1; n <= NODES; n++)); do
    if st=$(node_state "$n"); then
      up=$((up + 1))
      echo "node $n: $st  pid $(node_pid "$n")  broker 127.0.0.1:$(broker_port "$n")  controller 127.0.0.1:$(ctrl_port "$n")"
    else
      echo "node $n: stopped  broker 127.0.0.1:$(broker_port "$n")  controller 127.0.0.1:$(ctrl_port "$n")"
    fi
  done
  ((up == NODES)) && return 0
  ((up == 0)) && return 3
  return 1
}

cmd_bootstrap() {
  require_cluster
  local n up=0
  for ((n = 1; n <= NODES; n++)); do node_alive "$n" && up=1; done
  ((up)) || { log "no broker running (run: kafka.sh start)"; return 3; }
  bootstrap_servers
}

cmd_logs() {
  local n=1 follow=0
  while (($#)); do
    case $1 in
      -f|--follow) follow=1 ;;
      *) is_uint "$1" || die "logs: expected a node number, got $1"; n=$1 ;;
    esac
    shift
  done
  local f; f=$(node_dir "$n")/broker.log
  [[ -f $f ]] || die "no log for node $n ($f)"
  if ((follow)); then exec tail -n "${KAFKA_LOG_LINES:-100}" -F "$f"; fi
  tail -n "${KAFKA_LOG_LINES:-100}" "$f"
}

cmd_signal() {
  local what=$1; shift
  require_node_arg "$@"
  local n=$1 pid
  node_alive "$n" || die "node $n is not running"
  pid=$(node_pid "$n")
  case $what in
    kill)
      kill -KILL "$pid"
      local i; for ((i = 0; i < 50; i++)); do node_alive "$n" || break; sleep 0.1; done
      node_alive "$n" && die "node $n (pid $pid) still alive after SIGKILL"
      rm -f "$(node_dir "$n")/pid"
      log "node $n: killed (SIGKILL, pid $pid)" ;;
    pause) kill -STOP "$pid"; log "node $n: paused (SIGSTOP, pid $pid)" ;;
    resume) kill -CONT "$pid"; log "node $n: resumed (SIGCONT, pid $pid)" ;;
  esac
}

cmd_restart() {
  require_node_arg "$@"
  local n=$1
  lock_run_dir
  trap on_interrupt INT TERM HUP
  [[ -f $(node_dir "$n")/server.properties && -d $(node_dir "$n")/data ]] \
    || die "node $n has no data dir to restart from (run: kafka.sh start)"
  fetch
  node_alive "$n" && stop_nodes "$n"
  local p
  for p in "$(broker_port "$n")" "$(ctrl_port "$n")"; do
    port_open "$p" && die "port $p is in use by another process; cannot restart node $n"
  done
  local t0; t0=$(now)
  launch_node "$n"
  if ! wait_ready "$n" $(($(date +%s) + READY_TIMEOUT)); then
    stop_nodes "$n"
    trap - INT TERM HUP
    die "node $n did not become ready again; stopped it"
  fi
  trap - INT TERM HUP
  log "node $n serving again at 127.0.0.1:$(broker_port "$n") ($(elapsed "$t0") s)"
}

cmd_probe() {
  local bs=${1:-127.0.0.1:$BASE_PORT} first
  first=${bs%%,*}
  port_open "${first##*:}" || return 1
  fetch
  timeout --foreground 20 "${TOOL_JAVA[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$bs" 2>/dev/null 8>&- 9>&- | grep -qE '\(id: [0-9]+ .*\) -> \($'
}

cmd_tool() {
  [[ $# -ge 1 ]] || die "tool: which class? e.g. TopicCommand, ConsoleProducer, consumer.ConsoleConsumer"
  local cls=$1; shift
  case $cls in
    org.*|kafka.*) ;;
    *) cls=org.apache.kafka.tools.$cls ;;
  esac
  fetch
  run_tool "$cls" "$@"
}

main() {
  local cmd=${1:-}
  [[ -n $cmd ]] || usage
  shift
  case $cmd in
    fetch) fetch; log "jars ready in $LIB" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    bootstrap) cmd_bootstrap ;;
    logs|log) cmd_logs "$@" ;;
    kill|pause|resume) cmd_signal "$cmd" "$@" ;;
    restart) cmd_restart "$@" ;;
    probe) cmd_probe "$@" ;;
    tool) cmd_tool "$@" ;;
    classpath) fetch; echo "$LIB/*" ;;
    version) echo "$KAFKA_VERSION" ;;
    -h|--help|help) usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
