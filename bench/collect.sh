#!/usr/bin/env bash
# bench/collect.sh: is returning freed heap pages after every tick walk (mi_collect) worth its
# cost? Runs ringcast with --collect-every 1 (after every walk, the default), 8 and 0 (never),
# in interleaved rounds, each against a fresh server with N idle tick streams, and compares the
# server's user memory per stream (RSS growth over the ramp, the loadgen's figure) and CPU per
# frame (the loadgen's --server-pid figure) within each round. Prints the table; result files go
# to RESULTS/<kernel>/<date>-<host>-collect-<every>-r<round>.json.
#
# Usage: bench/collect.sh [--connections N] [--rounds R] [--duration D] [--results DIR] [--no-build]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=19000 rounds=3 duration=30s results=$root/results build=1
while [ $# -gt 0 ]; do
    case $1 in
        --connections) n=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --duration) duration=$2; shift ;;
        --results) results=$2; shift ;;
        --no-build) build=0 ;;
        *) echo "collect.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$root"
[ $build = 1 ] && timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
ulimit -Sn "$(ulimit -Hn)"
outdir=$results/$(uname -r)
mkdir -p "$outdir"
tag=$(date -u +%Y%m%dT%H%M%SZ)-$(hostname -s 2>/dev/null || hostname)
port=$(python3 bench/sysprobe.py free-port)
for round in $(seq "$rounds"); do
    for every in 1 8 0; do
        "$bin/ringcast" --listen "127.0.0.1:$port" --admin-listen none --collect-every "$every" 2> /tmp/collect-server.log &
        pid=$!
        for _ in $(seq 100); do grep -q "listening on" /tmp/collect-server.log && break; sleep 0.1; done
        out=$outdir/$tag-collect-$every-r$round.json
        timeout --signal=INT 200 "$bin/ringcast-loadgen" --url "http://127.0.0.1:$port/" -c "$n" -r 2000 \
            -d "$duration" --warmup 6s --server-pid "$pid" --label "collect-every-$every" --out "$out" -q > /dev/null 2>&1 || true
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
        python3 - "$out" "$round" "$every" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["runs"][0]["resources"]["derived"]
print(f"round {sys.argv[2]}  --collect-every {sys.argv[3]:>2}:  {d['server_rss_bytes_per_stream']:7.0f} B RSS per stream,"
      f"  {d['server_cpu_us_per_event']:5.2f} us CPU per frame")
PY
    done
done
