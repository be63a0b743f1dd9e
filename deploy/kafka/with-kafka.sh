#!/usr/bin/env bash
# deploy/kafka/with-kafka.sh [--nodes N] COMMAND [ARGS...]
#
# Runs COMMAND with a Kafka broker available and KAFKA_BOOTSTRAP exported to it.
# - If a Kafka broker already answers on 127.0.0.1:$KAFKA_PORT (default 19092), it is used
#   as is and left running.
# - Otherwise `kafka.sh start [--nodes N]` starts one, and it is stopped again when this
#   script exits: after COMMAND succeeds, fails, or is interrupted (Ctrl-C, SIGTERM).
# Exits with COMMAND's exit status (or kafka.sh start's, if the broker could not start).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
KAFKA=$HERE/kafka.sh
PORT=${KAFKA_PORT:-19092}

log() { echo "with-kafka: $*" >&2; }

nodes=1
case ${1:-} in
  --nodes) [[ $# -ge 2 ]] || { log "--nodes needs a number"; exit 2; }; nodes=$2; shift 2 ;;
  --nodes=*) nodes=${1#--nodes=}; shift ;;
esac
[[ ${1:-} == -- ]] && shift
if [[ $# -eq 0 ]]; then
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi

if "$KAFKA" probe "127.0.0.1:$PORT"; then
  # ours (then the full list of its brokers) or someone else's
  if bs=$("$KAFKA" bootstrap 2>/dev/null) && [[ ,$bs, == *",127.0.0.1:$PORT,"* ]]; then
    export KAFKA_BOOTSTRAP=$bs
  else
    export KAFKA_BOOTSTRAP=127.0.0.1:$PORT
  fi
  log "using the Kafka broker already running at $KAFKA_BOOTSTRAP (left running)"
  exec "$@"
fi

# nothing answers on PORT; a half-running cluster of ours would make start refuse anyway
rc=0
"$KAFKA" status >/dev/null 2>&1 || rc=$?
if ((rc != 3)); then
  "$KAFKA" status >&2 || true
  log "a cluster started by kafka.sh is running but does not answer on 127.0.0.1:$PORT; run '$KAFKA stop' first"
  exit 1
fi

started=0
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if ((started)); then
    "$KAFKA" stop || log "stopping Kafka failed (see '$KAFKA status')"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

started=1
"$KAFKA" start --nodes "$nodes"
KAFKA_BOOTSTRAP=$("$KAFKA" bootstrap)
export KAFKA_BOOTSTRAP
log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP; running: $*"

set +e
"$@"
status=$?
set -e
exit "$status"
