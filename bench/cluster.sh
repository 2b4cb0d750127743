#!/usr/bin/env bash
# bench/cluster.sh (also `bench/run.sh --scenario cluster`): ringcast nodes sharing one Redis
# stream, on this machine, against one node alone, and a node killed mid-hold. One session,
# interleaved rounds (this VM moves ±10 % from run to run: only ratios from the same round mean
# anything), every run against fresh processes (a new redis-server each time, persistence off:
# the figures are the stream engine's, not a disk's).
#
# Each round runs, all with --channels 10 --publish-rate 10 and a measuring window of
# duration - warmup (>= 20 s by default), measured by ringcast-loadgen:
#   single    one node, no Redis, 2N streams: the reference (same streams, channels, events)
#   cluster   two nodes and Redis, N streams on each (connection k on node k mod 2, channel
#             (k / 2) mod 10, so both nodes serve every channel), published through node 2
#   small     the same with S streams on each node: Redis's CPU per event against `cluster`
#             shows whether the engine's cost grows with subscribers (it should not)
#   failover  as `cluster`, and node 1 is SIGKILLed --kill-after into the hold while publishing
#             goes on through node 2: the loadgen moves node 1's N streams to node 2 with their
#             Last-Event-ID (its `failover` histogram: break to head on node 2, the nodes'
#             `retry:` delay included) and counts missed and duplicated events (must be 0)
# (single and cluster swap places every other round). Beside the loadgen, bench/cluster_probe.py
# samples both nodes and redis-server (CPU from /proc stat and schedstat, Redis's INFO
# commandstats: XADD calls are the events stored) --idle before the loadgen starts and when it
# starts (Redis's idle rate, with the nodes connected and nothing published), and at the start
# and end of the loadgen's measuring window; for failover it also times, from node 2's
# /metrics, how long after the kill node 2 held all 2N streams.
#
# Writes RESULTS/<kernel>/<date>-<host>-cluster-<case>-r<round>.json (the loadgen's result),
# .bench.json (the sidecar: commands, host facts, samples, the kill) and -publish.hgrm, then
# bench/cluster_summary.py writes RESULTS/<kernel>/<date>-<host>-cluster-summary.json and
# RESULTS/README.md (RESULTS: results/cluster). Every step has a time limit.
#
# Usage: bench/cluster.sh [--connections N] [--small S] [--rounds R] [--duration D] [--warmup W]
#                         [--failover-duration D] [--kill-after D] [--retry MS] [--rate R]
#                         [--channels K] [--publish-rate R] [--idle D] [--results DIR] [--no-build]
#   --connections N      streams per node (default 9000; 2N on the single node and, after the
#                        kill, on node 2: 2N must stay below the fd limit minus ~100)
#   --small S            streams per node in `small` (default 1000)
#   --failover-duration  hold of the failover run (default 40s); --kill-after: the kill, after the
#                        ramp's end (default 12s)
#   --retry MS           the nodes' `retry:` (default 1000): the wait before a broken stream
#                        reconnects, part of the failover time
#   --idle D             Redis's idle sample before each loadgen run (default 5s)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
n=9000
small=1000
rounds=3
duration=30s
warmup=6s
failover_duration=40s
kill_after=12s
retry=1000
rate=2000
channels=10
publish_rate=10
idle=5s
results=$root/results/cluster
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --connections) n=$2; shift ;;
        --small) small=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --duration) duration=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --failover-duration) failover_duration=$2; shift ;;
        --kill-after) kill_after=$2; shift ;;
        --retry) retry=$2; shift ;;
        --rate) rate=$2; shift ;;
        --channels) channels=$2; shift ;;
        --publish-rate) publish_rate=$2; shift ;;
        --idle) idle=$2; shift ;;
        --results) results=$2; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
secs() { case $1 in *ms) awk -v v="${1%ms}" 'BEGIN{print v/1000}' ;; *s) echo "${1%s}" ;; *m) echo $(( ${1%m} * 60 )) ;; *) echo "$1" ;; esac; }
duration_s=$(secs "$duration")
warmup_s=$(secs "$warmup")
failover_s=$(secs "$failover_duration")
kill_s=$(secs "$kill_after")
idle_s=$(secs "$idle")
probe() { python3 "$bench/sysprobe.py" "$@"; }
cprobe() { python3 "$bench/cluster_probe.py" "$@"; }
say() { printf '\n== %s\n' "$*"; }
sleep_until() { python3 -c 'import time,sys; time.sleep(max(0, float(sys.argv[1]) - time.time()))' "$1"; }
awk -v k="$kill_s" -v d="$failover_s" 'BEGIN{exit !(k > 0 && k < d)}' ||
    { echo "cluster.sh: --kill-after must fall inside --failover-duration" >&2; exit 2; }
redis_bin=$(command -v redis-server || echo /usr/bin/redis-server)
[ -x "$redis_bin" ] || { echo "cluster.sh: redis-server is not installed (apt-get install -y redis-server)" >&2; exit 1; }

cd "$root"
if [ $build = 1 ]; then
    say "building release"
    timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
help=$("$bin/ringcast" --help 2>&1 || true)
[[ $help == *--redis* ]] || { echo "cluster.sh: $bin/ringcast has no cluster mode (--redis)" >&2; exit 1; }
ulimit -Sn "$(ulimit -Hn)"
cap=$(( ( $(ulimit -Hn) - 100 ) / 2 ))
[ "$n" -gt "$cap" ] && n=$cap && echo "streams per node capped to $n (2N must fit the fd limit)"
kernel=$(uname -r)
host=$(hostname -s 2>/dev/null || hostname)
date_tag=$(date -u +%Y%m%dT%H%M%SZ)
outdir=$results/$kernel
mkdir -p "$outdir"
work=$(mktemp -d /tmp/ringcast-cluster.XXXXXX)
probe facts > "$work/facts.json"
git_commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
redis_version=$("$redis_bin" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
# 2N connections from one process to one or two destinations: spread the source addresses.
sources=127.0.0.2-127.0.0.5

declare -A pid port admin
redis_pid=
redis_port=
stop_all() {
    for name in "${!pid[@]}"; do
        kill -TERM "${pid[$name]}" 2>/dev/null || true
    done
    for name in "${!pid[@]}"; do
        for _ in $(seq 50); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pid[$name]}" 2>/dev/null || true
        wait "${pid[$name]}" 2>/dev/null || true
    done
    pid=()
    if [ -n "$redis_pid" ]; then
        kill -KILL "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=
    fi
}
trap stop_all EXIT

start_redis() {
    redis_port=$(probe free-port)
    local dir=$work/redis-$1
    mkdir -p "$dir"
    "$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        > "$dir/log" 2>&1 &
    redis_pid=$!
    cprobe ping "$redis_port" 20
}

# start_node NAME [ringcast flags...]: a node on free loopback ports, listening when it returns.
start_node() {
    local name=$1; shift
    port[$name]=$(probe free-port)
    admin[$name]=$(probe free-port)
    local log=$work/$name-${port[$name]}.log
    "$bin/ringcast" --listen "127.0.0.1:${port[$name]}" --admin-listen "127.0.0.1:${admin[$name]}" \
        --driver uring --retry "$retry" "$@" > "$log" 2>&1 &
    pid[$name]=$!
    for _ in $(seq 100); do
        grep -q "listening on http://" "$log" 2>/dev/null && return 0
        kill -0 "${pid[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "cluster.sh: node $name did not start:" >&2; cat "$log" >&2; return 1
}

# start_case CASE TAG: the processes of a case; sets urls, publish, per_node, total.
start_case() {
    local case=$1 tag=$2
    urls=()
    case $case in
        single)
            per_node=$(( 2 * n ))
            start_node n1
            urls=(--url "http://127.0.0.1:${port[n1]}/events")
            publish="http://127.0.0.1:${admin[n1]}/publish" ;;
        cluster|small|failover)
            per_node=$n
            [ "$case" = small ] && per_node=$small
            start_redis "$tag"
            start_node n1 --redis "redis://127.0.0.1:$redis_port/0"
            start_node n2 --redis "redis://127.0.0.1:$redis_port/0"
            for name in n1 n2; do
                cprobe wait-metric "http://127.0.0.1:${admin[$name]}/metrics" ringcast_engine_up 1 20 > /dev/null ||
                    { echo "cluster.sh: node $name's engine is not up" >&2; return 1; }
            done
            urls=(--url "http://127.0.0.1:${port[n1]}/events" --url "http://127.0.0.1:${port[n2]}/events")
            publish="http://127.0.0.1:${admin[n2]}/publish" ;;
    esac
    total=$(( ${#urls[@]} / 2 * per_node ))
}

# run_case ROUND CASE: one loadgen run against fresh processes, its samples and its sidecar.
run_case() {
    local round=$1 case=$2
    local tag=$case-r$round
    local base=$outdir/$date_tag-$host-cluster-$tag
    start_case "$case" "$tag" || { stop_all; return 0; }
    local hold=$duration hold_s=$duration_s
    [ "$case" = failover ] && hold=$failover_duration && hold_s=$failover_s
    local server=${pid[n2]:-${pid[n1]}}
    local pids=(--pid "n1=${pid[n1]}")
    [ -n "${pid[n2]:-}" ] && pids+=(--pid "n2=${pid[n2]}")
    [ -n "$redis_pid" ] && pids+=(--pid "redis=$redis_pid" --redis "$redis_port")
    local ti t0 t1 t2 tk idle_now=$idle_s
    [ -z "$redis_pid" ] && idle_now=0
    ti=$(date +%s.%N)
    # Idle until t0, when the loadgen is launched; it starts 0.2 s later, its ramp takes
    # total/rate, publishing starts at the ramp's end, and it measures from there + warmup to
    # the hold's end - 0.6 s.
    read -r t0 t1 t2 tk < <(awk -v ti="$ti" -v i="$idle_now" -v n="$total" -v r="$rate" \
        -v w="$warmup_s" -v d="$hold_s" -v k="$kill_s" \
        'BEGIN{t0=ti+i; s=t0+0.2+n/r; printf "%.3f %.3f %.3f %.3f\n", t0, s+w, s+d-0.6, s+k}')
    cprobe window "$work/window-$tag.json" "$ti" "$t0" "$t1" "$t2" "${pids[@]}" &
    local sampler=$!
    sleep_until "$t0"
    local lg_cmd=("$bin/ringcast-loadgen" "${urls[@]}" --connections "$total" --rate "$rate"
        --duration "$hold" --warmup "$warmup" --channels "$channels" --publish "$publish"
        --publish-rate "$publish_rate" --drain 30s --source-addrs "$sources" --server-pid "$server"
        --label "cluster-$case" --out "$base.json" --publish-hgrm "$base-publish.hgrm" -q)
    local lg_rc=0
    timeout --signal=INT --kill-after=10 $(( total / rate + ${hold_s%.*} + 90 )) "${lg_cmd[@]}" \
        > "$work/lg-$tag.out" 2> "$work/lg-$tag.err" &
    local lg=$!
    local kill_json=$work/kill-$tag.json
    echo '{}' > "$kill_json"
    if [ "$case" = failover ]; then
        local before=$work/before-kill-$tag.json after=$work/after-kill-$tag.json
        # Node 1 holds its N streams (the ramp is done) before it dies ...
        cprobe wait-metric "http://127.0.0.1:${admin[n1]}/metrics" ringcast_channel_streams_open "$per_node" \
            $(( total / rate + 60 )) > "$before" || true
        sleep_until "$tk"
        local killed_at
        killed_at=$(date +%s.%N)
        kill -KILL "${pid[n1]}"
        wait "${pid[n1]}" 2>/dev/null || true
        unset 'pid[n1]'
        # ... and node 2 holds all 2N once they are back (as the server sees it).
        cprobe wait-metric "http://127.0.0.1:${admin[n2]}/metrics" ringcast_channel_streams_open "$total" \
            "$(awk -v d="$hold_s" -v k="$kill_s" 'BEGIN{print d-k+30}')" > "$after" || true
        python3 - "$kill_json" "$killed_at" "$before" "$after" <<'EOF'
import json, sys
out, killed_at, before, after = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
load = lambda p: json.load(open(p)) if open(p).read().strip() else None
a = load(after)
json.dump({
    "killed_unix": killed_at,
    "node1_streams_before_kill": load(before),
    "node2_all_streams": a,
    "kill_to_all_back_s": (a["end_unix"] - killed_at) if a and a.get("reached") else None,
}, open(out, "w"), indent=2)
EOF
    fi
    wait "$lg" || lg_rc=$?
    wait "$sampler" 2>/dev/null || true
    grep -E "^(publish|published|failover|connections|server)" "$work/lg-$tag.out" | sed 's/^/  /' || true
    if [ ! -f "$base.json" ]; then
        echo "  no result (loadgen exit $lg_rc): $work/lg-$tag.err"; stop_all; return 0
    fi
    local node_cmd="target/release/ringcast --listen 127.0.0.1:PORT --admin-listen 127.0.0.1:ADMIN --driver uring --retry $retry"
    [ -n "$redis_pid" ] && node_cmd+=" --redis redis://127.0.0.1:REDIS/0"
    probe sidecar "$base.bench.json" --str scenario=cluster --str case="$case" round="$round" \
        streams_per_node="$per_node" streams="$total" nodes="$(( ${#urls[@]} / 2 ))" \
        channels="$channels" publish_rate="$publish_rate" retry_ms="$retry" \
        --str git_commit="$git_commit" loadgen_exit="$lg_rc" --str redis_version="$redis_version" \
        --str node_command="$node_cmd" \
        --str redis_command="redis-server --port REDIS --bind 127.0.0.1 --save '' --appendonly no" \
        --str loadgen_command="$(printf '%q ' "${lg_cmd[@]}" | sed "s#$root/##g")" \
        --json host="$work/facts.json" --json samples="$work/window-$tag.json" --json kill="$kill_json"
    stop_all
}

say "cluster: $n streams per node (small: $small), $channels channels, $publish_rate events/s, $rounds rounds; logs in $work"
for round in $(seq "$rounds"); do
    order="single cluster"
    [ $(( round % 2 )) = 0 ] && order="cluster single"
    for case in $order small failover; do
        say "round $round: $case"
        run_case "$round" "$case"
    done
done

say "summary"
python3 "$bench/cluster_summary.py" --run "$date_tag-$host" "$outdir" "$results/README.md"
echo "logs of this run: $work"
