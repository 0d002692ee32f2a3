#!/usr/bin/env bash
# Run a pytest selection K times with one busy process per core (or N), and report each run.
#
#   tests/load/under_load.sh [-n BUSY] [-r TIMES] PYTEST_ARGS...
#   e.g. tests/load/under_load.sh -r 5 tests/test_sweep_e2e.py -k quickstart
#
# The busy processes run at normal priority (nice 0), as other work on a shared machine does;
# they are this script's own children and are killed by their ids when it exits. Prints one
# line per run (pass/fail, seconds) and a summary; exits 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
busy=$(getconf _NPROCESSORS_ONLN)  # not nproc: it honours OMP_NUM_THREADS, which the tests set to 1
times=5
while [ $# -gt 0 ]; do
  case "$1" in
    -n) busy=$2; shift 2 ;;
    -r) times=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [-n BUSY] [-r TIMES] PYTEST_ARGS..." >&2; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM  # stop the loop (EXIT then stops the busy processes)
for _ in $(seq "$busy"); do
  ( while :; do :; done ) &
  pids+=($!)
done
echo "under_load: $busy busy process(es) (pids ${pids[*]}), $times run(s) of: pytest $*" >&2

failed=0
log_dir=$(mktemp -d /tmp/under_load.XXXXXX)
for i in $(seq "$times"); do
  t0=$(date +%s.%N)
  if .venv/bin/python -m pytest -q -p no:cacheprovider "$@" >"$log_dir/run$i.txt" 2>&1; then
    status=pass
  else
    status=FAIL; failed=$((failed + 1))
  fi
  dt=$(echo "$(date +%s.%N) - $t0" | bc)
  printf 'under_load: run %d/%d %s %.0f s  (%s)\n' "$i" "$times" "$status" "$dt" "$(tail -n 1 "$log_dir/run$i.txt")"
done
echo "under_load: $((times - failed))/$times passed; logs in $log_dir"
[ "$failed" = 0 ]
