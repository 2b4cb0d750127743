#!/usr/bin/env bash
# bench/storm.sh (also `bench/run.sh --scenario storm`): the reconnect storm of issue 14. N tick
# streams (default 19,000) are open; the loadgen closes all of them at once and every one
# reconnects at once with its Last-Event-ID, as the browsers of a site do when a load balancer or
# a network blip drops them together. What is measured is how long until every stream receives
# ticks again: ringcast on io_uring, ringcast on epoll, nginx+nchan and axum (bench/axum-sse).
#
# Why it is shaped this way:
# - interleaved rounds (default 3), each server in its turn against a fresh server, the order
#   rotated from round to round: this VM moves ±10 % from run to run, so only figures from the
#   same round compare, and the medians over rounds are what the page reports;
# - the loadgen ramps N at --rate, holds, storms at --storm-at after the end of the ramp and holds
#   again (the rest of --duration, at least 3 tick intervals, checked by the loadgen). It moves the
#   storm on to the midpoint between two ticks (ticks fall on wall-clock multiples of --interval
#   for all four servers), so every run drops its streams at the same phase of the tick cycle;
# - "back" is the first event after the reconnection, so the headline time is quantized by the
#   tick interval: a short one (default 1 s here, against 2 s elsewhere) keeps the steps small
#   without outrunning the fan-out of one tick at 19,000 streams. The time until every stream had
#   its new response head (not quantized) is reported beside it;
# - the loadgen closes first, so each old connection sits in TIME_WAIT on its side while the new
#   one is open: the source addresses (--source-addrs 127.0.0.2-...) are sized for 2N ports, and
#   every failed reconnection attempt is counted by kind, not hidden;
# - the servers run under the same open-files limit as in the other scenarios (in the host
#   facts): a server that notices the closed streams late briefly needs up to 2N descriptors, and
#   a reconnection it answers with a non-200 status (ringcast's 503 over --max-streams, which
#   defaults to what the limit allows) fails that stream for good, as EventSource does: it shows
#   as not back, and the headline as never.
# Results: RESULTS/<kernel>/<date>-<host>-storm-<label>-r<round>.json (the loadgen's result) and
# .bench.json (this script's sidecar: how it was run, server driver, host facts, server log head),
# then bench/storm_summary.py writes RESULTS/<kernel>/<date>-<host>-storm-summary.json and
# RESULTS/README.md (RESULTS: results/storm). Every step has a time limit: the script stops by
# itself.
#
# Usage: bench/storm.sh [--connections N] [--rounds R] [--rate R] [--interval D] [--storm-at D]
#                       [--duration D] [--storm-rate R] [--servers "uring epoll nchan axum"]
#                       [--results DIR] [--no-build] [--no-sysctl]
#   --connections N   streams (default 19000; capped by the open-files limit)
#   --rounds R        interleaved rounds (default 3)
#   --rate R          new connections per second during the ramp (default 2000)
#   --interval D      tick interval of every server (default 1s)
#   --storm-at D      the storm, after the end of the ramp (default 10s)
#   --duration D      the whole hold, storm included (default 30s)
#   --storm-rate R    reopen at most R streams per second instead of all at once (default: at once)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
n=19000
rounds=3
rate=2000
interval=1s
storm_at=10s
duration=30s
storm_rate=
servers="uring epoll nchan axum"
results=$root/results/storm
build=1
sysctl_apply=1
while [ $# -gt 0 ]; do
    case $1 in
        --connections) n=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --rate) rate=$2; shift ;;
        --interval) interval=$2; shift ;;
        --storm-at) storm_at=$2; shift ;;
        --duration) duration=$2; shift ;;
        --storm-rate) storm_rate=$2; shift ;;
        --servers) servers=$2; shift ;;
        --results) results=$2; shift ;;
        --no-build) build=0 ;;
        --no-sysctl) sysctl_apply=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "storm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
secs() {
    case $1 in
        *ms) awk -v v="${1%ms}" 'BEGIN{printf "%.3f", v/1000}' ;;
        *s) awk -v v="${1%s}" 'BEGIN{printf "%.3f", v}' ;;
        *m) awk -v v="${1%m}" 'BEGIN{printf "%.3f", v*60}' ;;
        *) awk -v v="$1" 'BEGIN{printf "%.3f", v}' ;;
    esac
}
duration_s=$(secs "$duration")
# The loadgen's own rule (it would refuse each run): up to one interval of alignment, then at
# least 3 intervals of the hold after the storm.
awk -v a="$(secs "$storm_at")" -v i="$(secs "$interval")" -v d="$duration_s" 'BEGIN{exit !(a + 4*i <= d)}' ||
    { echo "storm.sh: --duration $duration is too short for --storm-at $storm_at (needs --storm-at + 4 x --interval)" >&2; exit 2; }
probe() { python3 "$bench/sysprobe.py" "$@"; }
say() { printf '\n== %s\n' "$*"; }

cd "$root"
if [ $build = 1 ]; then
    say "building release"
    timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen -p axum-sse
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
for b in ringcast ringcast-loadgen axum-sse; do
    [ -x "$bin/$b" ] || { echo "storm.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done
rel() { local s=${1//$target_dir\//target/}; printf '%s' "${s//$root\//}"; }
ulimit -Sn "$(ulimit -Hn)"
cap=$(( $(ulimit -Hn) - 500 ))
[ "$n" -gt "$cap" ] && n=$cap && echo "connections capped to $n (open-files hard limit $(ulimit -Hn) per process)"

if [ $sysctl_apply = 1 ]; then
    say "sysctls for a storm (only raised, never lowered)"
    want() { # name value: applies when the current value is lower (both ends for the port range)
        local name=$1 value=$2 cur
        cur=$(sysctl -n "$name" 2>/dev/null | tr -s ' \t' ' ') || { echo "unknown  $name"; return 0; }
        set -- $cur; local c1=$1 c2=${2:-}; set -- $value
        if [ "$name" = net.ipv4.ip_local_port_range ]; then
            [ "$c1" -le "$1" ] && [ "$c2" -ge "$2" ] && { echo "ok       $name = $cur"; return 0; }
        else
            [ "$c1" -ge "$1" ] && { echo "ok       $name = $cur"; return 0; }
        fi
        if sysctl -q -w "$name=$value" >/dev/null 2>&1; then echo "applied  $name = $value (was $cur)"
        else echo "FAILED   $name = $value (is $cur; not allowed here: reconnections may fail)"; fi
    }
    want net.core.somaxconn 65535
    want net.ipv4.tcp_max_syn_backlog 65535
    want net.ipv4.ip_local_port_range "1024 65535"
fi

kernel=$(uname -r)
host=$(hostname -s 2>/dev/null || hostname)
date_tag=$(date -u +%Y%m%dT%H%M%SZ)
run_id=$date_tag-$host
outdir=$results/$kernel
mkdir -p "$outdir"
work=$(mktemp -d /tmp/ringcast-storm.XXXXXX)
probe facts > "$work/facts.json"
cores=$(nproc)
git_commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$([ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ] && echo true || echo false)

# Each source address holds one port per stream and one per TIME_WAIT left by the storm.
read -r port_lo port_hi < <(sysctl -n net.ipv4.ip_local_port_range)
ports=$(( port_hi - port_lo - 1000 ))
k=$(( 2 * n / ports + 1 ))
src=(--source-addrs "127.0.0.2-127.0.0.$(( k + 1 ))")
echo "source addresses: ${src[1]} (2 x $n ports over a range of $ports usable)"

have_nchan=0
[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] && have_nchan=1
run_list=()
for s in $servers; do
    case $s in
        nchan) if [ $have_nchan = 1 ]; then run_list+=(nchan); else
                   echo "nchan: not installed (apt-get install -y nginx-light libnginx-mod-nchan); skipped"; fi ;;
        uring|epoll|axum) run_list+=("$s") ;;
        *) echo "storm.sh: unknown server $s (uring epoll nchan axum)" >&2; exit 2 ;;
    esac
done
[ ${#run_list[@]} -gt 0 ] || { echo "storm.sh: no server to run" >&2; exit 2; }

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
trap 'echo "storm.sh: interrupted" >&2; exit 130' INT TERM

# start_server LABEL: a fresh server on a free loopback port, as bench/run.sh starts them; sets
# server_pid, measured_pid (nginx's master for nchan), port, server_cmd, server_driver, server_log.
start_server() {
    local label=$1
    port=$(probe free-port)
    server_log=$work/server-$label-$port.log
    server_info=()
    case $label in
        uring|epoll)
            local info_port
            info_port=$(probe free-port)
            server_info=(--server-info "http://127.0.0.1:$info_port/info")
            server_driver=$([ "$label" = uring ] && echo io_uring || echo epoll)
            server_cmd="$bin/ringcast --listen 127.0.0.1:$port --interval $interval --driver $label --admin-listen 127.0.0.1:$info_port" ;;
        axum)
            server_driver="epoll (tokio)"
            server_cmd="$bin/axum-sse --listen 127.0.0.1:$port --interval $interval --workers $cores" ;;
        nchan)
            server_driver="epoll (nginx)"
            server_cmd="$bench/nchan/start.sh $port $interval $cores 127.0.0.1" ;;
    esac
    $server_cmd > "$server_log" 2>&1 &
    server_pid=$!
    measured_pid=$server_pid
    for _ in $(seq 100); do
        if grep -q "listening on http://" "$server_log" 2>/dev/null &&
            curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/"; then
            [ "$label" = nchan ] && measured_pid=$(cat "/tmp/ringcast-nchan.$port/nginx.pid")
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "storm.sh: $label did not start; its log:" >&2
    cat "$server_log" >&2
    stop_server
    return 1
}

storm_flags=(--storm-at "$storm_at")
[ -n "$storm_rate" ] && storm_flags+=(--storm-rate "$storm_rate")
limit=$(awk -v n="$n" -v r="$rate" -v d="$duration_s" 'BEGIN{printf "%d", n/r+d+60}')
written=()
failed_runs=()
count=${#run_list[@]}
for round in $(seq "$rounds"); do
    for i in $(seq 0 $(( count - 1 ))); do
        label=${run_list[$(( (i + round - 1) % count ))]}
        say "round $round: $label, $n streams, storm at $storm_at"
        start_server "$label" || { failed_runs+=("$label-r$round (server did not start)"); continue; }
        base=$outdir/$run_id-storm-$label-r$round
        lg_cmd=("$bin/ringcast-loadgen" --url "http://127.0.0.1:$port/" --connections "$n"
            --rate "$rate" --duration "$duration" --interval "$interval" "${storm_flags[@]}"
            "${src[@]}" --server-pid "$measured_pid" --label "storm-$label" --out "$base.json" -q
            "${server_info[@]}")
        lg_rc=0
        timeout --signal=INT --kill-after=10 "$limit" "${lg_cmd[@]}" \
            > "$work/lg-$label-r$round.out" 2> "$work/lg-$label-r$round.err" || lg_rc=$?
        stop_server
        grep -E "^(storm|connections|  other error)" "$work/lg-$label-r$round.out" | sed 's/^/  /' || true
        if [ ! -f "$base.json" ]; then
            echo "  no result (loadgen exit $lg_rc): $work/lg-$label-r$round.{out,err}"
            failed_runs+=("$label-r$round (loadgen exit $lg_rc)")
            continue
        fi
        head -n 40 "$server_log" > "$work/server-head.txt"
        probe sidecar "$base.bench.json" --str scenario=storm --str run_id="$run_id" \
            --str label="$label" --str server_driver="$server_driver" --str kernel="$kernel" \
            round="$round" connections="$n" rate="$rate" --str interval="$interval" \
            --str storm_at="$storm_at" --str duration="$duration" --str storm_rate="$storm_rate" \
            cores="$cores" --str git_commit="$git_commit" git_dirty="$git_dirty" \
            --str server_command="$(rel "$server_cmd")" --str loadgen_command="$(rel "${lg_cmd[*]}")" \
            loadgen_exit="$lg_rc" measured_pid="$measured_pid" \
            --json host="$work/facts.json" --text server_log_head="$work/server-head.txt"
        written+=("$base.json")
    done
done

say "summary"
if [ ${#written[@]} -gt 0 ]; then
    timeout 120 python3 "$bench/storm_summary.py" --run "$run_id" "$outdir" "$results/README.md"
fi
if [ ${#failed_runs[@]} -gt 0 ]; then
    echo "runs without a result: ${failed_runs[*]}"
fi
echo "logs of this run: $work"
