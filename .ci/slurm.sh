#!/usr/bin/env bash
# .ci/slurm.sh - start/stop a throwaway, real single-node SLURM cluster on this host
# (Debian 12 packages, Slurm 22.05), without systemd, for `pytest -m slurm`.
# Adapted from the team recipe (shared/recipes/local-slurm.sh, proven on the CI host); the
# project carries its own copy because CI runs from a clean clone. Everything it creates (config,
# munge key, state, spool, logs, PID files, the accounting database) lives in one folder.
#
#   slurm.sh [start] [DIR]       install missing apt packages, write config into DIR
#                                 (default /tmp/pah-slurm), start munged, mariadbd,
#                                 slurmdbd, slurmctld and slurmd as root (idempotent: daemons
#                                 already running from DIR are kept), wait until the node is
#                                 idle, then print the env var(s) to use on stdout:
#                                     eval "$(bash .ci/slurm.sh start)"
#   slurm.sh stop [DIR]           cancel all jobs, then stop exactly the daemons started from
#                                 DIR (PID files checked against /proc) - never by name
#   slurm.sh status [DIR]         show the daemons' PIDs and `sinfo`
#   slurm.sh env [DIR]            print the env var(s) only
#
# Knobs (environment):
#   LOCAL_SLURM_ACCOUNTING=1   1: slurmdbd + MariaDB so `sacct` works (submitit needs it to
#                              notice jobs that die without a result); 0: no accounting
#   LOCAL_SLURM_CPUS=<nproc, at least 4>  CPUs the node advertises (may exceed the real
#                              count; 4 lets the tests' 2-task jobs run beside another job)
#   LOCAL_SLURM_MEM_MB=<85% of RAM>
#   LOCAL_SLURM_PORT_BASE=     TCP ports BASE..BASE+3: slurmctld, slurmd, slurmdbd, mariadb
#                              (mariadb binds 127.0.0.1; slurmctld/slurmd too when the host
#                              name resolves to loopback; slurmdbd listens on all addresses).
#                              Unset: the first 4 free ports from 6817 up, in steps of 4 (a
#                              restart while daemons of DIR run keeps the ports in DIR/ports);
#                              set: exactly those, and an error if one is taken.
#   LOCAL_SLURM_PROCTRACK=linuxproc  or cgroup (needs a writable cgroup v1 freezer/v2 fs)
#   LOCAL_SLURM_CRED_EXPIRE=20 seconds; also the delay before a requeued job may restart
#                              (Slurm's default is 120)
#   LOCAL_SLURM_EXTRA_CONF=    extra slurm.conf lines, appended (later keys win)
#   LOCAL_SLURM_WAIT_S=60      bound on every wait
#   LOCAL_SLURM_NO_INSTALL=1   never call apt-get
# Needs root. Jobs run as the submitting user; the partition is `debug` (default).
set -euo pipefail

log() { printf 'slurm.sh: %s\n' "$*" >&2; }
die() { printf 'slurm.sh: ERROR: %s\n' "$*" >&2; exit 1; }

CMD=start
case "${1:-}" in
  start|stop|status|env) CMD=$1; shift ;;
  -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
esac
DIR=${1:-/tmp/pah-slurm}
[ "$CMD" = start ] && mkdir -p "$DIR"
[ -d "$DIR" ] && DIR=$(cd "$DIR" && pwd -P)

ACCT=${LOCAL_SLURM_ACCOUNTING:-1}
PROCTRACK=${LOCAL_SLURM_PROCTRACK:-linuxproc}
CRED_EXPIRE=${LOCAL_SLURM_CRED_EXPIRE:-20}
WAIT_S=${LOCAL_SLURM_WAIT_S:-60}
PORT_BASE=${LOCAL_SLURM_PORT_BASE:-}  # chosen in do_start when unset
NODE=$(hostname -s)
CLUSTER=local
PARTITION=debug
CONF=$DIR/slurm.conf
SOCK=$DIR/run/munge.socket.2
DBSOCK=$DIR/run/mysqld.sock
export SLURM_CONF=$CONF

case "$CMD" in start|stop) [ "$(id -u)" = 0 ] || die "must run as root" ;; esac
[ ${#SOCK} -lt 100 ] || die "DIR path too long for unix sockets: $DIR"

# ---------- PID helpers: a daemon is "ours" only if its PID file is in DIR, the process
# has the expected name, and its command line or environment mentions DIR.
pidfile() { echo "$DIR/run/$1.pid"; }
our_pid() {  # $1 = daemon name; prints PID and returns 0 if that daemon from DIR is alive
  local f pid; f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f"); [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat 2>/dev/null < "/proc/$pid/comm")" = "$1" ] || return 1
  if tr '\0' '\n' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$DIR" ||
     tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "SLURM_CONF=$CONF"; then
    echo "$pid"; return 0
  fi
  return 1
}
port_busy() {  # $1 = TCP port: bound on any address (/proc/net/tcp*), or answering on 127.0.0.1
  local hex; hex=$(printf ':%04X' "$1")
  awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p {found = 1} END {exit !found}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
set_ports() {  # $1 = base: slurmctld, slurmd, slurmdbd, mariadb
  PORT_BASE=$1; CTLD_PORT=$1; SLURMD_PORT=$(($1 + 1)); DBD_PORT=$(($1 + 2)); DB_PORT=$(($1 + 3))
}
pick_ports() {
  local name base p busy
  if [ -n "$PORT_BASE" ]; then set_ports "$PORT_BASE"; return 0; fi
  for name in munged mariadbd slurmdbd slurmctld slurmd; do  # a restart keeps the running daemons' ports
    our_pid "$name" >/dev/null || continue
    base=
    [ -s "$DIR/ports" ] && base=$(tr -dc '0-9' < "$DIR/ports")
    [ -n "$base" ] || base=$(sed -n 's/^SlurmctldPort=\([0-9]*\)$/\1/p' "$CONF" 2>/dev/null | head -n1)
    if [ -n "$base" ]; then set_ports "$base"; echo "$base" > "$DIR/ports"; return 0; fi
    break
  done
  for base in $(seq 6817 4 7213); do
    busy=
    for p in $base $((base + 1)) $((base + 2)) $((base + 3)); do port_busy "$p" && { busy=$p; break; }; done
    if [ -z "$busy" ]; then
      set_ports "$base"; echo "$base" > "$DIR/ports"
      log "ports $base-$((base + 3)) (slurmctld, slurmd, slurmdbd, mariadb)"
      return 0
    fi
  done
  die "no 4 consecutive free TCP ports between 6817 and 7216; set LOCAL_SLURM_PORT_BASE"
}
wait_for() {  # $1 = description, rest = command; bounded by WAIT_S
  local what=$1; shift; local t=0
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1)); [ "$t" -le $((WAIT_S * 2)) ] || return 1
    sleep 0.5
  done
}
show_logs() { for f in "$DIR"/log/*.log; do [ -f "$f" ] && { echo "==> $f" >&2; tail -n 15 "$f" >&2; }; done; }
start_daemon() {  # $1 = name, $2 = port ('' = none), rest = command line
  local name=$1 port=$2; shift 2
  if pid=$(our_pid "$name"); then log "$name already running (pid $pid)"; return 0; fi
  rm -f "$(pidfile "$name")"
  if [ -n "$port" ] && port_busy "$port"; then
    die "port $port (for $name) is already in use by something else; unset LOCAL_SLURM_PORT_BASE to pick free ports, or choose another"
  fi
  log "starting $name"
  STARTED+=("$name")
  # own log for early errors; never inherit our stdout (eval "$(...)" would wait on it)
  "$@" </dev/null >>"$DIR/log/$name.start.log" 2>&1 || { show_logs; die "$name failed to start"; }
  wait_for "$name" our_pid "$name" || { show_logs; die "$name did not come up (no live PID in $(pidfile "$name"))"; }
}

env_lines() { echo "export SLURM_CONF=$CONF"; }

# ---------- stop
do_stop() {
  [ -d "$DIR/run" ] || { log "nothing to stop in $DIR"; return 0; }
  if our_pid slurmctld >/dev/null; then
    if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
      log "cancelling all jobs"
      scancel --partition="$PARTITION" 2>/dev/null || true
      wait_for jobs-gone bash -c '[ -z "$(squeue -h -o %i)" ]' || log "warning: some jobs still listed"
    fi
  fi
  local name pid i
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(our_pid "$name") || { rm -f "$(pidfile "$name")"; continue; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((WAIT_S * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "$name ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$(pidfile "$name")"
  done
  # Job processes that outlived their job (SLURM_JOB_ID + this SLURM_CONF in their
  # environment): report them, do not kill them.
  local left=() e
  for p in /proc/[0-9]*; do
    p=${p#/proc/}; [ "$p" = $$ ] && continue
    e=$(tr '\0' '\n' 2>/dev/null < "/proc/$p/environ") || continue
    grep -qxF "SLURM_CONF=$CONF" <<< "$e" && grep -q '^SLURM_JOB_ID=' <<< "$e" && left+=("$p")
  done
  [ ${#left[@]} -eq 0 ] || log "warning: job processes outlived their jobs: pids ${left[*]} (not touched)"
  if grep -q '^ProctrackType=proctrack/cgroup' "$CONF" 2>/dev/null; then  # empty cgroup dirs
    find /sys/fs/cgroup -depth -type d -name "slurm_$NODE" -prune 2>/dev/null |
      while read -r c; do find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done || true
  fi
  log "stopped (config, logs and state kept in $DIR)"
}

do_status() {
  local name pid
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(our_pid "$name"); then echo "$name: running (pid $pid)"; else echo "$name: not running"; fi
  done
  our_pid slurmctld >/dev/null && sinfo || true
}

# ---------- install
install_pkgs() {
  local pkgs=(slurmctld slurmd slurm-client munge) missing=() p
  [ "$ACCT" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${LOCAL_SLURM_NO_INSTALL:-0}" = 1 ] && die "missing packages: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  # Keep the packages' init scripts from starting distro-wide daemons during install.
  local guard=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1
  fi
  local rc=0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } || rc=$?
  [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
  [ $rc -eq 0 ] || die "apt-get install failed"
}

# ---------- config
write_slurm_conf() {
  local cpus=${LOCAL_SLURM_CPUS:-$(( $(nproc) < 4 ? 4 : $(nproc) ))}
  local mem=${LOCAL_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)}
  local acct comm
  # bind slurmctld/slurmd to the node's own address if the host name resolves to loopback
  case "$(getent hosts "$NODE" | awk '{print $1; exit}')" in
    127.*|::1) comm="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny" ;;
    *) comm="# $NODE does not resolve to loopback: slurmctld/slurmd listen on all addresses" ;;
  esac
  if [ "$ACCT" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# slurmctld/sacct talk to slurmdbd through this munge socket (AuthInfo is not used there)
AccountingStoragePass=$SOCK
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat > "$CONF.new" <<EOF
# Generated by .ci/slurm.sh - single-node test cluster, all daemons run as root.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
$comm
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
# kills what a finished job left behind (daemons that escaped proctrack/linuxproc)
Epilog=$DIR/epilog.sh
MpiDefault=none
SwitchType=switch/none
$acct
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
# use the CPUs/RealMemory below even if they differ from the hardware
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
${LOCAL_SLURM_EXTRA_CONF:-}
EOF
  if [ "$PROCTRACK" = cgroup ]; then
    printf '%s\n' 'CgroupPlugin=autodetect' 'ConstrainCores=no' 'ConstrainRAMSpace=no' 'ConstrainDevices=no' > "$DIR/cgroup.conf"
  fi
  if our_pid slurmctld >/dev/null || our_pid slurmd >/dev/null; then
    cmp -s "$CONF.new" "$CONF" || log "note: slurm daemons already running; keeping the existing $CONF"
    rm -f "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
  fi
}

write_dbd_conf() {
  [ -s "$DIR/mysql/pass" ] || { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/mysql/pass"; chmod 600 "$DIR/mysql/pass"; }
  umask 077
  cat > "$DIR/slurmdbd.conf" <<EOF
# Generated by .ci/slurm.sh (slurmdbd finds it next to \$SLURM_CONF)
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DIR/mysql/pass")
StorageLoc=slurm_acct_db
EOF
  umask 022
  chmod 600 "$DIR/slurmdbd.conf"
}

write_epilog() {
  cat > "$DIR/epilog.sh.new" <<EOF
#!/bin/bash
# Generated by .ci/slurm.sh. Runs as root after each job and SIGKILLs what the job left
# behind (e.g. daemons it forked, which proctrack/linuxproc loses track of): every process
# whose environment has this job's SLURM_JOB_ID and this cluster's SLURM_CONF, and every
# process in the same session as one of those (covers processes that overwrite their
# environ, like Ray's setproctitle'd agents). Bash builtins only; always exits 0.
[ -n "\${SLURM_JOB_ID:-}" ] || exit 0
job="SLURM_JOB_ID=\$SLURM_JOB_ID"; conf="SLURM_CONF=$CONF"
# session id of PID \$1 into \$SID, without forking (a forked copy of us would match too)
sid_of() { local l f; SID=; read -r l 2>/dev/null < "/proc/\$1/stat" || return 1; read -r -a f <<< "\${l##*) }"; SID=\${f[3]}; }
sid_of \$\$; mine=\$SID; declare -A sids=()
for d in /proc/[0-9]*; do
  pid=\${d#/proc/}; [ "\$pid" = "\$\$" ] && continue
  a=; b=
  while IFS= read -r -d '' kv; do
    [ "\$kv" = "\$job" ] && a=1
    [ "\$kv" = "\$conf" ] && b=1
  done 2>/dev/null < "\$d/environ"
  if [ -n "\$a" ] && [ -n "\$b" ]; then
    sid_of "\$pid" && [ "\$SID" -gt 1 ] && [ "\$SID" != "\$mine" ] && sids[\$SID]=1
    kill -KILL "\$pid" 2>/dev/null
  fi
done
if [ \${#sids[@]} -gt 0 ]; then
  for d in /proc/[0-9]*; do
    pid=\${d#/proc/}; [ "\$pid" = "\$\$" ] && continue
    sid_of "\$pid" && [ -n "\${sids[\$SID]:-}" ] && kill -KILL "\$pid" 2>/dev/null
  done
fi
exit 0
EOF
  chmod 755 "$DIR/epilog.sh.new"; mv "$DIR/epilog.sh.new" "$DIR/epilog.sh"
}

# ---------- start
STARTED=()
undo_start() {  # a failed start stops the daemons this call started (not those it found running)
  local i name pid
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    name=${STARTED[$i]}
    pid=$(our_pid "$name") || continue
    log "start failed: stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$(pidfile "$name")"
  done
}

do_start() {
  trap 'rc=$?; [ $rc -eq 0 ] || undo_start; exit $rc' EXIT
  install_pkgs
  mkdir -p "$DIR"/{run,log,state,spool,munge,mysql}
  chmod 755 "$DIR" "$DIR/run" "$DIR/log"; chmod 700 "$DIR/munge" "$DIR/mysql"
  pick_ports
  if [ ! -s "$DIR/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"
  fi
  write_epilog
  write_slurm_conf

  # munged (own key and socket; --force clears a stale socket left by a killed munged)
  our_pid munged >/dev/null || rm -f "$SOCK" "$SOCK.lock"
  start_daemon munged '' munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCK" \
    --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for munge bash -c "munge -n -S '$SOCK' | unmunge -S '$SOCK'" || { show_logs; die "munge round trip failed"; }

  if [ "$ACCT" = 1 ]; then
    if [ ! -d "$DIR/mysql/data/mysql" ]; then
      log "initialising MariaDB data dir"
      mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" \
        --auth-root-authentication-method=socket --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 ||
        { tail -n 20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    start_daemon mariadbd "$DB_PORT" setsid -f mariadbd --no-defaults --user=root \
      --datadir="$DIR/mysql/data" --socket="$DBSOCK" --pid-file="$(pidfile mariadbd)" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --log-error="$DIR/log/mariadbd.log" \
      --skip-log-bin --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900
    wait_for mariadb mariadb-admin --no-defaults --socket="$DBSOCK" -uroot ping || { show_logs; die "mariadb not answering"; }
    write_dbd_conf
    local pw; pw=$(cat "$DIR/mysql/pass")
    mariadb --no-defaults --socket="$DBSOCK" -uroot -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "could not create the database user"
    start_daemon slurmdbd "$DBD_PORT" slurmdbd
    wait_for slurmdbd sacctmgr -n show cluster || { show_logs; die "slurmdbd not answering"; }
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
      sacctmgr -i add cluster "$CLUSTER" >&2 || die "sacctmgr add cluster failed"
    fi
  fi

  start_daemon slurmctld "$CTLD_PORT" slurmctld -f "$CONF"
  start_daemon slurmd "$SLURMD_PORT" slurmd -f "$CONF" -N "$NODE"

  # bounded wait until the node is usable (idle; mixed/allocated if jobs survived a restart)
  local t=0 state resumed=
  while :; do
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mixed|allocated|completing) break ;;
      down|drained|draining|down\*|drained\*)
        [ -z "$resumed" ] && { scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true; resumed=1; } ;;
    esac
    t=$((t + 1))
    if [ "$t" -gt $((WAIT_S * 2)) ]; then
      show_logs; sinfo >&2 || true
      die "node $NODE not idle after ${WAIT_S}s (state: '${state:-none}')"
    fi
    sleep 0.5
  done
  log "cluster '$CLUSTER' up: node $NODE is $state, partition $PARTITION, dir $DIR"
  trap - EXIT
  env_lines
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  env) env_lines ;;
esac
