#!/usr/bin/env bash
# profile.sh: where the server's CPU goes in the publish cases, by thread and system call.
#
# bench/publish.sh says how much CPU a delivered frame costs; this says where it goes. For each
# case it starts a fresh ringcast (io_uring), runs the same loadgen as publish.sh, and records the
# server with `perf record -g` for --seconds inside the loadgen's measuring window. The samples
# are split by bench/perf_breakdown.py (workers / admin thread; outermost system call) and scaled
# by the loadgen's CPU per frame, so the cases can be compared part by part: what the 1,000-
# channel case spends beyond the one-channel case, and on which thread.
#
#   tick   N tick streams (the reference)
#   one    N streams on 1 channel, 1 publish/s
#   many   N streams over 1,000 channels, 1,000 publishes/s in total
#
# perf's own overhead is in the window's CPU figure (a few per cent at -F 1999); compare the cases
# of one run with each other, not with publish.sh's figures. Needs perf (linux-perf).
#
# --server-args adds ringcast flags (e.g. "--publish-batch 50ms") to every case; the report names
# them, with the hand-out and direct-send counters the server ended with. --events-per-request N
# makes the loadgen publish N events per request through POST /publish/batch (the one and many
# cases), as an application that batches would.
#
# Usage: bench/profile.sh [--cases "one many"] [--connections N] [--seconds S] [--results DIR]
#                         [--server-args "FLAGS"] [--events-per-request N] [--no-build]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
cases="one many"
n=19000
seconds=20
rate=2000
warmup=6
results=$root/results/publish/profile
build=1
server_args=
per_request=1
while [ $# -gt 0 ]; do
    case $1 in
        --cases) cases=$2; shift ;;
        --connections) n=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --results) results=$2; shift ;;
        --server-args) server_args=$2; shift ;;
        --events-per-request) per_request=$2; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for c in $cases; do
    case $c in tick|one|many) ;; *) echo "profile.sh: --cases: unknown case $c (tick, one, many)" >&2; exit 2 ;; esac
done
command -v perf > /dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
probe() { python3 "$bench/sysprobe.py" "$@"; }

cd "$root"
[ $build = 1 ] && timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
ulimit -Sn "$(ulimit -Hn)"
[ "$n" -gt $(( $(ulimit -Hn) - 500 )) ] && n=$(( $(ulimit -Hn) - 500 )) && echo "connections capped to $n (fd limit)"
outdir=$results/$(uname -r)
mkdir -p "$outdir"
tag=$(date -u +%Y%m%dT%H%M%SZ)-$(hostname -s 2>/dev/null || hostname)
work=$(mktemp -d /tmp/ringcast-profile.XXXXXX)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit (dirty)"
report=$outdir/$tag-profile.md

server_pid=
stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
trap stop_server EXIT

{
    echo "# Where the server's CPU goes: bench/profile.sh, run $tag"
    echo
    echo "Commit \`$commit\`, kernel $(uname -r), $(nproc) cores, ringcast \`--driver uring${server_args:+ $server_args}\`, $n streams,"
    [ "$per_request" -gt 1 ] && echo "the loadgen publishing $per_request events per request (\`POST /publish/batch\`, \`--publish-batch $per_request\`),"
    echo "\`perf record -F 1999 -g\` on the server for ${seconds} s inside each case's window. *µs per frame* is"
    echo "the part's share of the samples times the server's CPU per delivered frame that the loadgen"
    echo "measured over its window (perf running). The parts are the outermost system call on a"
    echo "sample's stack; the kernel charges a loopback receiver's processing and wake-up to the"
    echo "sender, so \`sendto\` includes waking the reader."
    echo
} > "$report"

for c in $cases; do
    port=$(probe free-port)
    admin=$(probe free-port)
    # shellcheck disable=SC2086 # the extra flags are words
    "$bin/ringcast" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --driver uring \
        $server_args > "$work/server-$c.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do grep -q "listening on http://" "$work/server-$c.log" && break; sleep 0.1; done
    grep -q "listening on http://" "$work/server-$c.log" ||
        { echo "profile.sh: ringcast did not start:" >&2; cat "$work/server-$c.log" >&2; exit 1; }
    args=(--url "http://127.0.0.1:$port/")
    if [ "$c" != tick ]; then
        k=1; [ "$c" = many ] && k=1000
        publish="http://127.0.0.1:$admin/publish"
        [ "$per_request" -gt 1 ] && publish="$publish/batch"
        args=(--url "http://127.0.0.1:$port/events" --channels "$k" --publish "$publish"
              --publish-rate "$k" --publish-batch "$per_request")
    fi
    duration=$(( seconds + 10 ))
    echo "== $c: loadgen ${duration}s window, perf ${seconds}s"
    "$bin/ringcast-loadgen" "${args[@]}" --connections "$n" --rate "$rate" --duration "${duration}s" \
        --warmup "${warmup}s" --interval 2s --server-pid "$server_pid" --label "profile-$c" -q \
        --out "$work/lg-$c.json" > "$work/lg-$c.out" 2> "$work/lg-$c.err" &
    lg=$!
    # The window opens after the ramp and the warmup; perf starts 2 s into it.
    sleep "$(awk -v n="$n" -v r="$rate" -v w="$warmup" 'BEGIN{print n/r + w + 2.2}')"
    perf record -q -F 1999 -g -p "$server_pid" -o "$work/perf-$c.data" -- sleep "$seconds" 2> "$work/perf-$c.err" || true
    wait "$lg" || { echo "profile.sh: loadgen failed:" >&2; cat "$work/lg-$c.err" >&2; exit 1; }
    grep -E "^(events|publish:|server)" "$work/lg-$c.out" | sed 's/^/  /'
    us=$(sed -n 's/^server (pid [0-9]*): .* \([0-9.]*\) us CPU per event.*/\1/p' "$work/lg-$c.out")
    counters=$(curl -s "http://127.0.0.1:$admin/metrics" |
        sed -n 's/^ringcast_\(event_handouts_total\|frames_sent_direct_total\|events_published_total\)\({worker="total"}\)\{0,1\} /\1 /p' |
        paste -sd, - | sed 's/,/, /g')
    stop_server
    perf script -i "$work/perf-$c.data" -F comm,ip,sym,dso 2> /dev/null |
        python3 "$bench/perf_breakdown.py" --label "$c" ${us:+--us-per-frame "$us"} \
            --json "$outdir/$tag-profile-$c.json" >> "$report"
    grep -E "^(\(ms\) |gap |publish_delivery |publish_request |events|publish:|published events received)" "$work/lg-$c.out" |
        sed 's/^/    /' >> "$report"
    echo "    server counters at the end: ${counters:-none}" >> "$report"
    echo >> "$report"
done
rm -rf "$work"
echo "report: $report"
cat "$report"
