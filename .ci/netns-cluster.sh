#!/usr/bin/env bash
# .ci/netns-cluster.sh - a real multi-node Ray cluster on one Linux host: one network namespace per
# node on a private bridge, each node with its own filesystem for scratch and Ray's temp dir, and an
# S3 server (moto) in a namespace of its own, so that the bucket outlives any node, the head included.
# For tests/test_cloud_nodes.py and docs/cloud.md.
#
#   netns-cluster.sh start DIR N_WORKERS   bridge pahbr$ID (10.77.$ID.0/24, the host is .1), namespaces
#                                          pah$ID-head (.2), pah$ID-w1.. (.3..) and pah$ID-s3 (.254) with
#                                          moto on port 9000, a Ray head (GCS, dashboard on HEAD_IP:8265) and one Ray worker
#                                          per worker namespace; prints on stdout the lines
#                                            HEAD_IP=.. RAY_ADDRESS=.. DASHBOARD=http://..:8265
#                                            S3_ENDPOINT=http://10.77.$ID.254:9000 WORKERS="pah0-w1=10.77.0.3 ..."
#                                          (eval-able). Logs in DIR/logs/. Fails if pahbr$ID exists.
#   netns-cluster.sh worker DIR NAME        (re)start worker NAME (w1, w2, ... or a new one) - a node that
#                                          joins, or a lost node replaced. PAH_NETNS_S3_ENDPOINT: that node's
#                                          endpoint instead of the cluster's (e.g. one it cannot reach)
#   netns-cluster.sh kill DIR NAME          SIGKILL every process in NAME's namespace (a spot reclaim);
#                                          the namespace and its address stay
#   netns-cluster.sh head DIR               a fresh head: the head's namespace deleted with all its
#                                          processes and files, made anew (same address, as an elastic IP
#                                          or a DNS name gives), and a new Ray head started there
#   netns-cluster.sh cut DIR NAME           NAME's link to the bridge down: a partition (its processes run
#                                          on, their connections hang, nothing reaches them)
#   netns-cluster.sh heal DIR NAME          that link up again
#   netns-cluster.sh stop DIR               SIGKILL every process in every namespace of DIR's cluster,
#                                          delete the namespaces, veths and the bridge (idempotent)
#   netns-cluster.sh env DIR                print the lines of `start` again
#
# The nodes' AWS_ENDPOINT_URL is the cluster's S3 server (moto accepts any AWS_ACCESS_KEY_ID and secret).
# Knobs (environment of `start`): PAH_NETNS_ID (0..254, default 0: which bridge and subnet),
# PAH_NETNS_HEAD_CPUS (0: the head runs the driver only), PAH_NETNS_WORKER_CPUS (1), PAH_NETNS_PYTHON
# (the Python environment Ray and pah live in, default: the repository's .venv). Every other variable of
# the caller's environment reaches the nodes' processes (credentials such as AWS_ACCESS_KEY_ID, Ray's
# RAY_health_check_* settings), as an instance profile and a node image would.
#
# Isolation: a namespace has no route but its subnet, and the host does not forward (the script never
# turns ip_forward on), so nothing a node sends leaves the machine. Each node's processes run in a mount
# namespace of their own (`unshare --mount`), with a tmpfs over /tmp (scratch, TMPDIR, Ray's temp dir)
# and over /dev/shm (Ray's object store): a node cannot see another node's files, and the tmpfs goes when
# its last process does (nothing to unmount). The repository and the venv are read from the host's
# filesystem by every node (they are the image). Needs root, iproute2, util-linux.
set -euo pipefail

log() { printf 'netns-cluster: %s\n' "$*" >&2; }
die() { printf 'netns-cluster: ERROR: %s\n' "$*" >&2; exit 1; }

CMD=${1:-}; DIR=${2:-}
[ -n "$CMD" ] && [ -n "$DIR" ] || { awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, bridges and mounts)"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || die "'ip netns' is not available (iproute2)"
command -v unshare >/dev/null || die "unshare (util-linux) is not available"
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
WAIT_S=${PAH_NETNS_WAIT_S:-120}
RAY_PORT=6379 DASH_PORT=8265 S3_PORT=9000

# ---------------------------------------------------------------- the cluster's state, in DIR/cluster.env
load() {
  [ -f "$DIR/cluster.env" ] || return 1
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}
ns_name() { echo "pah$ID-$1"; }          # head, w1, w2, ...
ip_of() {                                 # head: .2, wK: .(K+2), s3: .254
  case "$1" in head) echo "$NET.2" ;; s3) echo "$NET.254" ;; w[0-9]*) echo "$NET.$(( ${1#w} + 2 ))" ;; *) die "unknown node $1" ;; esac
}

print_env() {
  local w list=""
  for w in $(ls "$DIR/nodes" 2>/dev/null | grep '^w' | sort -V); do list+="$(ns_name "$w")=$(ip_of "$w") "; done
  echo "HEAD_IP=$(ip_of head)"
  echo "RAY_ADDRESS=$(ip_of head):$RAY_PORT"
  echo "DASHBOARD=http://$(ip_of head):$DASH_PORT"
  echo "S3_ENDPOINT=http://$(ip_of s3):$S3_PORT"
  echo "BRIDGE=$BR"
  echo "WORKERS=\"${list% }\""
}

# ---------------------------------------------------------------- network
add_ns() {  # $1 = node name: its namespace, a veth pair (one end on the bridge), its address, lo up
  local ns veth; ns=$(ns_name "$1"); veth="v$ID$1"
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$BR" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$(ip_of "$1")/24" dev eth0
  ip -n "$ns" link set eth0 up
  mkdir -p "$DIR/nodes/$1"
}

# ---------------------------------------------------------------- processes
# run_in NODE LOG CMD...: CMD in NODE's network namespace and a mount namespace of its own with a private
# /tmp and /dev/shm (every process CMD starts, e.g. Ray's daemons, shares them); output appended to LOG,
# which is opened here, on the host, before the tmpfs hides what was under /tmp.
run_in() {
  local node=$1 logf=$2; shift 2
  ip netns exec "$(ns_name "$node")" unshare --mount --propagation private -- \
    env TMPDIR=/tmp PATH="$BIN:$PATH" sh -c 'mount -t tmpfs -o size=2g,mode=1777 pah-tmp /tmp &&
      mount -t tmpfs -o size=1g,mode=1777 pah-shm /dev/shm && exec "$@"' sh "$@" \
    >>"$logf" 2>&1 </dev/null
}

node_env() {  # what every node's processes get besides the caller's environment
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
  # the cluster's object store is its own S3 server (the credentials are the caller's: any for moto);
  # PAH_NETNS_S3_ENDPOINT, given to one `worker` call: that node's endpoint instead (one it cannot reach)
  export AWS_ENDPOINT_URL="${PAH_NETNS_S3_ENDPOINT:-http://$(ip_of s3):$S3_PORT}" AWS_EC2_METADATA_DISABLED=true
  unset RAY_ADDRESS AWS_ENDPOINT_URL_S3
}

ray_common() {
  echo --disable-usage-stats --object-store-memory=200000000
}

# `ray start` gives a node 30 s (fixed) to register with the GCS, which a loaded machine can miss: then
# the node's processes are killed and it is started again, 3 tries in all
start_node() {  # $1 = head or wK, then ray start's arguments
  local node=$1 try; shift
  for try in 1 2 3; do
    run_in "$node" "$DIR/logs/$node.log" "$BIN/ray" start "$@" --node-ip-address "$(ip_of "$node")" \
      --num-gpus 0 $(ray_common) && return 0
    log "Ray node $node did not start (try $try of 3): $(grep -E 'Exception|Error' "$DIR/logs/$node.log" | tail -n 1 | cut -c1-200)"
    kill_ns "$node"
  done
  tail -n 30 "$DIR/logs/$node.log" >&2
  die "Ray node $node did not start (DIR/logs/$node.log)"
}

start_head() {
  local hip; hip=$(ip_of head)
  start_node head --head --port "$RAY_PORT" --include-dashboard=true --dashboard-host "$hip" \
    --dashboard-port "$DASH_PORT" --num-cpus "$HEAD_CPUS"
}

start_s3() {  # moto, in memory: the bucket lives as long as this namespace's process
  local sip; sip=$(ip_of s3)
  # detached from our stdout: whoever reads this script's output (eval "$(...)") must not wait for moto
  ( run_in s3 "$DIR/logs/moto.log" "$BIN/python" -m moto.server -H "$sip" -p "$S3_PORT" ) \
    >/dev/null 2>&1 </dev/null &
}

start_worker() {  # $1 = wK
  start_node "$1" --address "$(ip_of head):$RAY_PORT" --num-cpus "$WORKER_CPUS"
}

kill_ns() {  # SIGKILL every process in the namespace until none is left
  local ns i pids; ns=$(ns_name "$1")
  for i in $(seq 100); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  die "processes left in $ns after SIGKILL: $(ip netns pids "$ns" | tr '\n' ' ')"
}

wait_port() {  # $1 host, $2 port, $3 what: from the host, through the bridge
  local t0=$SECONDS
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    (( SECONDS - t0 < WAIT_S )) || die "$3 not reachable at $1:$2 within $WAIT_S s"
    sleep 0.2
  done
}

# ---------------------------------------------------------------- commands
case "$CMD" in
start)
  N=${3:?start DIR N_WORKERS}
  mkdir -p "$DIR/logs"; DIR=$(cd "$DIR" && pwd -P)
  ! load || die "$DIR already holds a cluster (stop it first)"
  ID=${PAH_NETNS_ID:-0}
  [[ $ID =~ ^[0-9]+$ ]] && (( ID < 255 )) || die "PAH_NETNS_ID must be 0..254"
  (( N >= 1 && N <= 200 )) || die "N_WORKERS must be 1..200"
  NET=10.77.$ID BR=pahbr$ID
  PY=${PAH_NETNS_PYTHON:-$ROOT/.venv/bin/python}
  BIN=$(dirname "$PY")
  [ -x "$BIN/ray" ] || die "no ray next to $PY (PAH_NETNS_PYTHON)"
  if ip route show | grep -q "^$NET\.0/24 " && ! ip link show "$BR" >/dev/null 2>&1; then
    die "$NET.0/24 is already routed on this host (choose another PAH_NETNS_ID)"
  fi
  # the bridge is the lock: a second cluster with the same ID fails here, before touching anything
  ip link add "$BR" type bridge 2>/dev/null || die "bridge $BR exists (another cluster; PAH_NETNS_ID)"
  cat > "$DIR/cluster.env" <<EOF
ID=$ID
NET=$NET
BR=$BR
BIN=$BIN
HEAD_CPUS=${PAH_NETNS_HEAD_CPUS:-0}
WORKER_CPUS=${PAH_NETNS_WORKER_CPUS:-1}
EOF
  load
  up=0
  trap '[ "$up" = 1 ] || { log "start failed: tearing down"; bash "$0" stop "$DIR" >/dev/null 2>&1 || true; }' EXIT
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  node_env
  add_ns s3
  add_ns head
  for k in $(seq "$N"); do add_ns "w$k"; done
  start_s3
  start_head
  wait_port "$(ip_of s3)" "$S3_PORT" "the S3 server (moto)"
  pids=()
  for k in $(seq "$N"); do start_worker "w$k" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  wait_port "$(ip_of head)" "$DASH_PORT" "the Ray dashboard"
  up=1
  log "up: head $(ip_of head), $N worker(s), bridge $BR; stop with: $0 stop $DIR"
  print_env
  ;;
worker)
  NAME=${3:?worker DIR NAME}
  load || die "no cluster in $DIR"
  [[ $NAME =~ ^w[0-9]+$ ]] || die "a worker is named wK (w1, w2, ...)"
  node_env
  if ip netns list | grep -qw "$(ns_name "$NAME")"; then kill_ns "$NAME"; else add_ns "$NAME"; fi
  start_worker "$NAME"
  log "worker $NAME up at $(ip_of "$NAME")"
  ;;
head)
  load || die "no cluster in $DIR"
  node_env
  if ip netns list | grep -qw "$(ns_name head)"; then
    kill_ns head
    ip netns del "$(ns_name head)"
  fi
  ip link del "v${ID}head" 2>/dev/null || true
  rm -rf "$DIR/nodes/head"
  add_ns head
  # the new head has the old one's address but a new MAC: the other nodes (and the host) forget the old
  # MAC, or they send to it until their neighbour entry goes stale (a rejoining worker lost ~20 s to it)
  ip neigh flush to "$(ip_of head)" dev "$BR" 2>/dev/null || true
  for n in "$DIR"/nodes/*; do
    n=$(basename "$n")
    [ "$n" = head ] || ip -n "$(ns_name "$n")" neigh flush to "$(ip_of head)" 2>/dev/null || true
  done
  start_head
  wait_port "$(ip_of head)" "$DASH_PORT" "the Ray dashboard"
  log "a fresh head up at $(ip_of head)"
  ;;
cut|heal)
  NAME=${3:?$CMD DIR NAME}
  load || die "no cluster in $DIR"
  ip link set "v$ID$NAME" "$([ "$CMD" = cut ] && echo down || echo up)"
  log "$CMD: the link of $(ns_name "$NAME") is $([ "$CMD" = cut ] && echo down || echo up)"
  ;;
kill)
  NAME=${3:?kill DIR NAME}
  load || die "no cluster in $DIR"
  kill_ns "$NAME"
  log "killed every process in $(ns_name "$NAME")"
  ;;
env)
  load || die "no cluster in $DIR"
  print_env
  ;;
stop)
  [ -d "$DIR" ] || exit 0
  load || exit 0
  for n in $(ls "$DIR/nodes" 2>/dev/null); do
    ns=$(ns_name "$n")
    if ip netns list | grep -qw "$ns"; then
      kill_ns "$n"
      ip netns del "$ns"  # its eth0 goes with it, and with it the veth's host end
    fi
    ip link del "v$ID$n" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  rm -f "$DIR/cluster.env"
  rm -rf "$DIR/nodes"
  log "stopped (bridge $BR and its namespaces are gone)"
  ;;
*) die "unknown command $CMD (start, worker, kill, head, cut, heal, stop, env)" ;;
esac
