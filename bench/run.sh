#!/usr/bin/env bash
# bench/run.sh: one command for comparable benchmark results (issue 4).
#
# Builds release, prints the host facts, applies the sysctls a large run needs (when allowed; it
# says which it could not), then for each size N of a ladder runs, side by side in one session
# because this machine is noisy and only ratios measured together mean anything:
#   floor  bench/floor   (plain send() per stream per tick: the kernel's own cost per frame)
#   uring  ringcast --driver uring (ring setup flags: auto, the best the kernel takes)
#   uring-defer, uring-coop, uring-none   ringcast --driver uring --uring-flags defer|coop|none
#          (opt-in through --servers: one ring setup flag set each, for the flags comparison)
#   epoll  ringcast --driver epoll
#   axum   bench/axum-sse (tokio + axum Sse + broadcast channel)
#   nchan  nginx + nchan (bench/nchan), when installed
# each against a fresh server, measured by ringcast-loadgen with --server-pid, into
#   RESULTS/<kernel-release>/<date>-<host>-<label>-<N>.json   (the loadgen's result)
#   RESULTS/<kernel-release>/<date>-<host>-<label>-<N>.bench.json (this script's sidecar: how it
#       was run, host facts, and the CPU of the ksoftirqd threads and of the server's whole process
#       tree over the loadgen's measuring window, which the loadgen does not see)
# then the plain `ok` path with wrk (ringcast on both drivers, axum, nginx) into
#   RESULTS/<kernel-release>/<date>-<host>-wrk-<label>-c<C>.json
# and finally prints the comparison table (bench/compare) and regenerates RESULTS/README.md.
# Every step has a time limit: the whole run stops by itself.
#
# Usage: bench/run.sh [options]
#   --ladder "N ..."       stream counts (default "1000 5000 10000 19000"; capped by the fd limit)
#   --duration D           hold per run after the ramp (default 30s)
#   --warmup D             start of the hold left out of the figures (default 6s)
#   --interval D           tick interval of every server (default 2s)
#   --rate R               new connections per second during the ramp (default 2000)
#   --servers "L ..."      which of floor uring epoll axum nchan (default: all; nchan when installed)
#   --wrk-duration D       wrk run length (default 10s); --wrk-connections C (default 64); --no-wrk
#   --results DIR          results tree (default <repo>/results)
#   --no-build             use the binaries already built
#   --no-sysctl            do not try to change sysctls
#   --no-readme            do not regenerate DIR/README.md
#   --scenario NAME        another scenario instead of the ladder, with its own options after it:
#                          `publish` (bench/publish.sh: published events vs nchan, intake, flood),
#                          `cluster` (bench/cluster.sh: two nodes through Redis vs one, failover),
#                          `fastpath` (bench/fastpath.sh: ring flags, memory, connect, ok path in
#                          interleaved rounds),
#                          `storm` (bench/storm.sh: every stream dropped at once and reconnecting,
#                          time until all receive ticks again: ringcast uring/epoll, nchan, axum)
set -euo pipefail

if [ "${1:-}" = --scenario ]; then
    case ${2:-} in
        publish) shift 2; exec "$(dirname "$0")/publish.sh" "$@" ;;
        cluster) shift 2; exec "$(dirname "$0")/cluster.sh" "$@" ;;
        fastpath) shift 2; exec "$(dirname "$0")/fastpath.sh" "$@" ;;
        storm) shift 2; exec "$(dirname "$0")/storm.sh" "$@" ;;
        *) echo "run.sh: unknown scenario ${2:-} (publish, cluster, fastpath, storm)" >&2; exit 2 ;;
    esac
fi

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
ladder="1000 5000 10000 19000"
duration=30s
warmup=6s
interval=2s
rate=2000
servers="floor uring epoll axum nchan"
wrk_duration=10s
wrk_conns=64
do_wrk=1
results=$root/results
build=1
sysctl_apply=1
readme=1

while [ $# -gt 0 ]; do
    case $1 in
        --ladder) ladder=$2; shift ;;
        --duration) duration=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --interval) interval=$2; shift ;;
        --rate) rate=$2; shift ;;
        --servers) servers=$2; shift ;;
        --wrk-duration) wrk_duration=$2; shift ;;
        --wrk-connections) wrk_conns=$2; shift ;;
        --no-wrk) do_wrk=0 ;;
        --results) results=$2; shift ;;
        --no-build) build=0 ;;
        --no-sysctl) sysctl_apply=0 ;;
        --no-readme) readme=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# Durations as seconds (accepts 250ms, 2s, 1m, or a bare number of seconds).
secs() {
    case $1 in
        *ms) awk -v v="${1%ms}" 'BEGIN{printf "%.3f", v/1000}' ;;
        *s) awk -v v="${1%s}" 'BEGIN{printf "%.3f", v}' ;;
        *m) awk -v v="${1%m}" 'BEGIN{printf "%.3f", v*60}' ;;
        *) awk -v v="$1" 'BEGIN{printf "%.3f", v}' ;;
    esac
}
interval_s=$(secs "$interval")
duration_s=$(secs "$duration")
warmup_s=$(secs "$warmup")
awk -v w="$warmup_s" -v d="$duration_s" 'BEGIN{exit !(w < d)}' ||
    { echo "run.sh: --warmup must be shorter than --duration" >&2; exit 2; }

say() { printf '\n== %s\n' "$*"; }
# Commands as recorded in the results: repository paths relative, the cargo target dir as target/.
rel() { local s=${1//$target_dir\//target/}; printf '%s' "${s//$root\//}"; }
probe() { python3 "$bench/sysprobe.py" "$@"; }

work=$(mktemp -d /tmp/ringcast-bench.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- build
cd "$root"
if [ $build = 1 ]; then
    say "building release"
    timeout 1800 cargo build --release -p ringcast -p ringcast-loadgen -p ringcast-floor -p axum-sse
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
for b in ringcast ringcast-loadgen ringcast-floor axum-sse; do
    [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done
git_commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$([ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ] && echo true || echo false)

# ---------------------------------------------------------------- host
ulimit -Sn "$(ulimit -Hn)"
say "host"
probe facts-text

if [ $sysctl_apply = 1 ]; then
    say "sysctls for large runs (only raised, never lowered)"
    not_applied=()
    want() { # name value: applies when the current value is lower (first field for tuples)
        local name=$1 value=$2 cur
        cur=$(sysctl -n "$name" 2>/dev/null | tr -s ' \t' ' ') || { not_applied+=("$name (unknown here)"); return; }
        case $name in
            net.ipv4.ip_local_port_range)
                # wider range: lower first port or higher last port
                set -- $cur; local lo=$1 hi=$2; set -- $value
                [ "$lo" -le "$1" ] && [ "$hi" -ge "$2" ] && { echo "ok       $name = $cur"; return; } ;;
            *)
                set -- $cur; local c=$1; set -- $value
                [ "$c" -ge "$1" ] && { echo "ok       $name = $cur"; return; } ;;
        esac
        if sysctl -q -w "$name=$value" >/dev/null 2>&1; then
            echo "applied  $name = $value (was $cur)"
        else
            echo "FAILED   $name = $value (is $cur; not allowed here)"
            not_applied+=("$name")
        fi
    }
    want net.core.somaxconn 65535
    want net.ipv4.tcp_max_syn_backlog 65535
    want net.ipv4.ip_local_port_range "1024 65535"
    want net.ipv4.tcp_mem "786432 1048576 1572864"
    if [ ${#not_applied[@]} -gt 0 ]; then
        echo "could not apply: ${not_applied[*]} (results are still written; large runs may fail to connect)"
    fi
fi

kernel=$(uname -r)
host=$(hostname -s 2>/dev/null || hostname)
date_tag=$(date -u +%Y%m%dT%H%M%SZ)
outdir=$results/$kernel
mkdir -p "$outdir"
probe facts > "$work/facts.json"
cores=$(nproc)

# The ladder, capped by what the open-files limit allows each process (server and loadgen alike).
hard=$(ulimit -Hn)
cap=$(( hard - 500 ))
sizes=()
for n in $ladder; do
    if [ "$n" -gt "$cap" ]; then
        echo "ladder: $n capped to $cap (open-files hard limit $hard per process)"
        n=$cap
    fi
    sizes+=("$n")
done
# One source address holds at most the ephemeral port range per destination.
read -r port_lo port_hi < <(sysctl -n net.ipv4.ip_local_port_range)
ports=$(( port_hi - port_lo - 1000 ))

have_nchan=0
[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] && have_nchan=1
run_list=()
for s in $servers; do
    case $s in
        nchan) if [ $have_nchan = 1 ]; then run_list+=(nchan); else
                   echo "nchan: not installed (apt-get install -y nginx-light libnginx-mod-nchan); skipped"; fi ;;
        floor|uring|uring-defer|uring-coop|uring-none|epoll|axum) run_list+=("$s") ;;
        *) echo "run.sh: unknown server $s" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- servers
# start_server LABEL: starts a fresh server on a free loopback port; sets server_pid (the process
# this script started), measured_pid (the pid the loadgen samples: nginx's master for nchan),
# port, server_cmd and server_log.
start_server() {
    local label=$1
    port=$(probe free-port)
    server_log=$work/server-$label-$port.log
    server_info=()
    case $label in
        uring|epoll|uring-*)
            # The admin listener only answers /info (the loadgen stores it via --server-info,
            # which is where the result names the ring flags that ran).
            info_port=$(probe free-port)
            server_info=(--server-info "http://127.0.0.1:$info_port/info")
            local driver=${label%%-*} flags=auto
            [ "$label" != "${label#uring-}" ] && flags=${label#uring-}
            server_cmd="$bin/ringcast --listen 127.0.0.1:$port --interval $interval --driver $driver --uring-flags $flags --admin-listen 127.0.0.1:$info_port" ;;
        floor) server_cmd="$bin/ringcast-floor --listen 127.0.0.1:$port --interval $interval --workers $cores" ;;
        axum) server_cmd="$bin/axum-sse --listen 127.0.0.1:$port --interval $interval --workers $cores" ;;
        nchan) server_cmd="$bench/nchan/start.sh $port $interval $cores 127.0.0.1" ;;
    esac
    $server_cmd > "$server_log" 2>&1 &
    server_pid=$!
    measured_pid=$server_pid
    local i
    for i in $(seq 100); do
        if grep -q "listening on http://" "$server_log" 2>/dev/null &&
            curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/"; then
            if [ "$label" = nchan ]; then
                measured_pid=$(cat "/tmp/ringcast-nchan.$port/nginx.pid")
            fi
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "run.sh: $label did not start; its log:" >&2
    cat "$server_log" >&2
    stop_server
    return 1
}

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    local i
    for i in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# ---------------------------------------------------------------- ladder
written=()
failed_runs=()
for n in "${sizes[@]}"; do
    for label in "${run_list[@]}"; do
        say "$label, $n streams"
        start_server "$label" || { failed_runs+=("$label-$n (server did not start)"); continue; }
        base=$outdir/$date_tag-$host-$label-$n
        src=()
        if [ "$n" -gt "$ports" ]; then
            k=$(( n / ports + 1 ))
            src=(--source-addrs "127.0.0.2-127.0.0.$(( k + 1 ))")
        fi
        lg_cmd=("$bin/ringcast-loadgen" --url "http://127.0.0.1:$port/" --connections "$n"
            --rate "$rate" --duration "$duration" --warmup "$warmup" --interval "$interval"
            --server-pid "$measured_pid" --label "$label" --out "$base.json" --hgrm "$base.hgrm"
            "${src[@]}" "${server_info[@]}")
        probe sample "$measured_pid" > "$work/baseline.json"
        t0=$(date +%s.%N)
        # The loadgen's measuring window (see loadgen/src/main.rs): from start (+0.2 s) + ramp +
        # warmup to the end - 0.6 s. The sidecar samples at the same instants.
        read -r t1 t2 < <(awk -v t0="$t0" -v n="$n" -v r="$rate" -v w="$warmup_s" -v d="$duration_s" \
            'BEGIN{s=t0+0.2+n/r; printf "%.3f %.3f\n", s+w, s+d-0.6}')
        probe window "$measured_pid" "$t1" "$t2" "$work/window.json" &
        sampler=$!
        limit=$(awk -v n="$n" -v r="$rate" -v d="$duration_s" 'BEGIN{printf "%d", n/r+d+60}')
        lg_rc=0
        timeout --signal=INT --kill-after=10 "$limit" "${lg_cmd[@]}" \
            > "$work/loadgen-$label-$n.out" 2> "$work/loadgen-$label-$n.err" || lg_rc=$?
        wait "$sampler" 2>/dev/null || true
        tail -n 3 "$work/loadgen-$label-$n.err" | sed 's/^/  /'
        stop_server
        if [ ! -f "$base.json" ]; then
            echo "  no result (loadgen exit $lg_rc); its output is in $work/loadgen-$label-$n.{out,err}"
            failed_runs+=("$label-$n (loadgen exit $lg_rc)")
            continue
        fi
        head -n 40 "$server_log" > "$work/server-head.txt"
        probe sidecar "$base.bench.json" \
            --str run_id="$date_tag-$host" --str label="$label" connections="$n" \
            --str interval="$interval" --str duration="$duration" --str warmup="$warmup" rate="$rate" \
            cores="$cores" --str git_commit="$git_commit" git_dirty="$git_dirty" \
            --str server_command="$(rel "$server_cmd")" --str loadgen_command="$(rel "${lg_cmd[*]}")" \
            loadgen_exit="$lg_rc" measured_pid="$measured_pid" \
            --json host="$work/facts.json" --json server_baseline="$work/baseline.json" \
            --json window="$work/window.json" --text server_log_head="$work/server-head.txt"
        written+=("$base.json")
        echo "  wrote $base.json (+ .bench.json, .hgrm)"
    done
done

# ---------------------------------------------------------------- ok path (wrk)
if [ $do_wrk = 1 ]; then
    if ! command -v wrk >/dev/null; then
        echo "wrk: not installed (apt-get install -y wrk); ok-path throughput skipped"
    else
        for label in uring uring-defer uring-coop uring-none epoll axum nchan; do
            case " ${run_list[*]} " in *" $label "*) ;; *) continue ;; esac
            say "ok path: wrk -t1 -c$wrk_conns -d$wrk_duration against $label"
            start_server "$label" || { failed_runs+=("wrk-$label (server did not start)"); continue; }
            wrk_cmd=(wrk -t1 "-c$wrk_conns" "-d$wrk_duration" --latency "http://127.0.0.1:$port/")
            probe sample "$measured_pid" > "$work/wrk-before.json"
            wrk_rc=0
            timeout --kill-after=5 "$(( $(secs "$wrk_duration" | cut -d. -f1) + 30 ))" "${wrk_cmd[@]}" \
                > "$work/wrk-$label.txt" 2>&1 || wrk_rc=$?
            probe sample "$measured_pid" > "$work/wrk-after.json"
            stop_server
            sed 's/^/  /' "$work/wrk-$label.txt"
            out=$outdir/$date_tag-$host-wrk-$label-c$wrk_conns.json
            probe wrk "$out" --str run_id="$date_tag-$host" --str label="$label" \
                --str date="$date_tag" --str command="${wrk_cmd[*]}" --str server_command="$(rel "$server_cmd")" \
                wrk_exit="$wrk_rc" connections="$wrk_conns" --str git_commit="$git_commit" git_dirty="$git_dirty" \
                --json host="$work/facts.json" --json server_before="$work/wrk-before.json" \
                --json server_after="$work/wrk-after.json" < "$work/wrk-$label.txt"
            written+=("$out")
            echo "  wrote $out"
        done
    fi
fi

# ---------------------------------------------------------------- compare
say "results of this run"
if [ ${#written[@]} -gt 0 ]; then
    "$bench/compare" --plots "$outdir/plots/$date_tag-$host" "${written[@]}" || echo "compare failed (results are kept)"
fi
if [ $readme = 1 ]; then
    "$bench/compare" --readme "$results" > /dev/null && echo "regenerated $results/README.md" ||
        echo "compare --readme failed (results are kept)"
fi
if [ ${#failed_runs[@]} -gt 0 ]; then
    echo "runs without a result: ${failed_runs[*]}"
fi
echo "logs of this run: $work"
