#!/usr/bin/env bash
# bench/publish.sh (also `bench/run.sh --scenario publish`): published events at scale, ringcast
# against nginx+nchan, in one session with interleaved rounds (this VM moves ±10 % from run to
# run: only ratios from the same round mean anything).
#
# Each round runs, each against a fresh server, measured by ringcast-loadgen (--server-pid) plus
# a sidecar that samples the server's whole process tree and the ksoftirqd threads over the
# loadgen's measuring window:
#   tick     ringcast uring, N tick streams (the reference: CPU per tick frame, fan-out spread);
#            and bench/floor (plain send() per stream per tick): the kernel's own cost per frame
#            on this host, so that every server's CPU per frame can be read against it
#   one      N streams on 1 channel, 1 event/s           (ringcast uring; nchan)
#   many     N streams over 1,000 channels, 1,000 events/s in total (ringcast uring; nchan)
# then, once:
#   intake   wrk POSTing to ringcast's /publish over keep-alive, 5 subscribers on the channel
#   flood    a 4 KiB-event publish flood over 1,000 channels with --history-bytes 16MiB: RSS
# and writes RESULTS/<kernel>/<date>-<host>-publish-*.json (RESULTS: results/publish), then
# bench/publish_summary.py turns them into RESULTS/<kernel>/<date>-<host>-publish-summary.json and
# RESULTS/README.md (medians of same-round ratios). Every step has a time limit.
#
# Usage: bench/publish.sh [--connections N] [--rounds R] [--duration D] [--warmup W]
#                         [--servers "floor uring nchan"] [--results DIR] [--no-build]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
n=19000
rounds=3
duration=30s
warmup=6s
rate=2000
servers="floor uring nchan"
results=$root/results/publish
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --connections) n=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --duration) duration=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --servers) servers=$2; shift ;;
        --results) results=$2; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "publish.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
secs() { case $1 in *ms) awk -v v="${1%ms}" 'BEGIN{print v/1000}' ;; *s) echo "${1%s}" ;; *m) echo $(( ${1%m} * 60 )) ;; *) echo "$1" ;; esac; }
duration_s=$(secs "$duration")
warmup_s=$(secs "$warmup")
probe() { python3 "$bench/sysprobe.py" "$@"; }
say() { printf '\n== %s\n' "$*"; }

cd "$root"
if [ $build = 1 ]; then
    say "building release"
    timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen -p ringcast-floor
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
ulimit -Sn "$(ulimit -Hn)"
[ "$n" -gt $(( $(ulimit -Hn) - 500 )) ] && n=$(( $(ulimit -Hn) - 500 )) && echo "connections capped to $n (fd limit)"
kernel=$(uname -r)
host=$(hostname -s 2>/dev/null || hostname)
date_tag=$(date -u +%Y%m%dT%H%M%SZ)
outdir=$results/$kernel
mkdir -p "$outdir"
work=$(mktemp -d /tmp/ringcast-publish.XXXXXX)
probe facts > "$work/facts.json"
git_commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
have_nchan=0
[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] && have_nchan=1
case " $servers " in *" nchan "*) [ $have_nchan = 1 ] ||
    { echo "nchan: not installed (apt-get install -y nginx-light libnginx-mod-nchan); skipped"; servers=${servers/nchan/}; } ;; esac

server_pid=
stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
trap stop_server EXIT

# start_server LABEL [ringcast flags...]: port, admin (ringcast) or pubport (nchan), measured_pid.
start_server() {
    local label=$1; shift
    port=$(probe free-port)
    admin=$(probe free-port)
    log=$work/server-$label-$port.log
    case $label in
        uring) server_cmd="$bin/ringcast --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --driver uring $*" ;;
        nchan) server_cmd="$bench/nchan/start-channels.sh $port $admin $(nproc) 127.0.0.1" ;;
        floor) server_cmd="$bin/ringcast-floor --listen 127.0.0.1:$port --interval 2s --workers $(nproc)" ;;
    esac
    $server_cmd > "$log" 2>&1 &
    server_pid=$!
    measured_pid=$server_pid
    for _ in $(seq 100); do
        if grep -q "listening on http://" "$log" 2>/dev/null; then
            [ "$label" = nchan ] && measured_pid=$(cat "/tmp/ringcast-nchan.$port/nginx.pid")
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "publish.sh: $label did not start:" >&2; cat "$log" >&2; stop_server; return 1
}

# run_case ROUND CASE LABEL: one loadgen run and its sidecar.
run_case() {
    local round=$1 case=$2 label=$3 args=()
    case $case in
        tick) args=(--url "http://127.0.0.1:$port/") ;;
        one|many)
            local k=1 r=1
            [ "$case" = many ] && k=1000 && r=1000
            local url="http://127.0.0.1:$port/events" pub="http://127.0.0.1:$admin/publish"
            [ "$label" = nchan ] && url="http://127.0.0.1:$port/" && args+=(--timestamp-in-data)
            args+=(--url "$url" --channels "$k" --publish "$pub" --publish-rate "$r") ;;
    esac
    local base=$outdir/$date_tag-$host-publish-$case-$label-r$round
    probe sample "$measured_pid" > "$work/baseline.json"
    local t0 t1 t2
    t0=$(date +%s.%N)
    read -r t1 t2 < <(awk -v t0="$t0" -v n="$n" -v r="$rate" -v w="$warmup_s" -v d="$duration_s" \
        'BEGIN{s=t0+0.2+n/r; printf "%.3f %.3f\n", s+w, s+d-0.6}')
    probe window "$measured_pid" "$t1" "$t2" "$work/window.json" &
    local sampler=$!
    local lg_rc=0
    timeout --signal=INT --kill-after=10 $(( n / rate + ${duration_s%.*} + 60 )) \
        "$bin/ringcast-loadgen" "${args[@]}" --connections "$n" --rate "$rate" \
        --duration "$duration" --warmup "$warmup" --interval 2s --server-pid "$measured_pid" \
        --label "publish-$case-$label" --out "$base.json" -q \
        > "$work/lg-$case-$label-$round.out" 2> "$work/lg-$case-$label-$round.err" || lg_rc=$?
    wait "$sampler" 2>/dev/null || true
    grep -E "^(events|publish|server|connections)" "$work/lg-$case-$label-$round.out" | sed 's/^/  /' || true
    if [ ! -f "$base.json" ]; then
        echo "  no result (loadgen exit $lg_rc): $work/lg-$case-$label-$round.err"; return 0
    fi
    probe sidecar "$base.bench.json" --str scenario=publish --str case="$case" --str label="$label" \
        round="$round" connections="$n" --str git_commit="$git_commit" loadgen_exit="$lg_rc" \
        --str server_command="${server_cmd//$root\//}" --json host="$work/facts.json" \
        --json server_baseline="$work/baseline.json" --json window="$work/window.json"
}

for round in $(seq "$rounds"); do
    for case in tick one many; do
        for label in $servers; do
            # the tick case is ringcast's and the floor's; the floor has no channels
            case $case:$label in tick:uring|tick:floor|one:uring|one:nchan|many:uring|many:nchan) ;; *) continue ;; esac
            say "round $round: $case, $label, $n streams"
            start_server "$label" || continue
            run_case "$round" "$case" "$label"
            stop_server
        done
    done
done

# ---------------------------------------------------------------- intake and flood (ringcast)
if command -v wrk >/dev/null; then
    say "publish intake: wrk over keep-alive, 5 subscribers on the channel"
    start_server uring
    subs=()
    for _ in 1 2 3 4 5; do
        curl -sN -H 'Accept: text/event-stream' "http://127.0.0.1:$port/?channel=intake" > /dev/null &
        subs+=($!)
    done
    sleep 1
    probe sample "$measured_pid" > "$work/intake-before.json"
    wrk -t2 -c32 -d20s -s "$bench/publish.lua" "http://127.0.0.1:$admin/publish?channel=intake" \
        > "$work/intake.txt" 2>&1 || true
    probe sample "$measured_pid" > "$work/intake-after.json"
    curl -s "http://127.0.0.1:$admin/metrics" > "$work/intake-metrics.txt"
    kill "${subs[@]}" 2>/dev/null || true
    stop_server
    sed 's/^/  /' "$work/intake.txt"
    probe wrk "$outdir/$date_tag-$host-publish-intake-uring.json" --str scenario=publish \
        --str case=intake --str command="wrk -t2 -c32 -d20s -s bench/publish.lua http://127.0.0.1:ADMIN/publish?channel=intake" \
        --str git_commit="$git_commit" --json host="$work/facts.json" \
        --json server_before="$work/intake-before.json" --json server_after="$work/intake-after.json" \
        --text server_metrics="$work/intake-metrics.txt" < "$work/intake.txt"

    say "history under a publish flood: --history-bytes 16MiB, 4 KiB events over 1,000 channels"
    start_server uring --history-bytes 16MiB
    probe sample "$measured_pid" > "$work/flood-before.json"
    wrk -t2 -c16 -d20s -s "$bench/flood.lua" "http://127.0.0.1:$admin/publish" > "$work/flood.txt" 2>&1 || true
    probe sample "$measured_pid" > "$work/flood-after.json"
    curl -s "http://127.0.0.1:$admin/metrics" > "$work/flood-metrics.txt"
    stop_server
    sed 's/^/  /' "$work/flood.txt"
    probe wrk "$outdir/$date_tag-$host-publish-flood-uring.json" --str scenario=publish \
        --str case=flood --str command="wrk -t2 -c16 -d20s -s bench/flood.lua http://127.0.0.1:ADMIN/publish" \
        history_bytes_limit=16777216 --str git_commit="$git_commit" --json host="$work/facts.json" \
        --json server_before="$work/flood-before.json" --json server_after="$work/flood-after.json" \
        --text server_metrics="$work/flood-metrics.txt" < "$work/flood.txt"
else
    echo "wrk: not installed (apt-get install -y wrk); intake and flood skipped"
fi

say "summary"
python3 "$bench/publish_summary.py" --run "$date_tag-$host" "$outdir" "$results/README.md"
echo "logs of this run: $work"
