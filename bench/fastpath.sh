#!/usr/bin/env bash
# bench/fastpath.sh (also `bench/run.sh --scenario fastpath`): the io_uring fast paths (issue 14)
# in interleaved rounds, because this VM moves ±10 % from run to run and only ratios measured in
# the same round compare.
#
# Each round is one `bench/run.sh` run at N streams (default 19,000, 2 s ticks, 30 s hold, ramp at
# 2,000 connections/s) of, each against a fresh server:
#   floor        plain send() per stream per tick (the kernel's own cost per frame)
#   uring        ringcast io_uring, ring setup flags auto (SINGLE_ISSUER|DEFER_TASKRUN here)
#   uring-coop   ringcast io_uring --uring-flags coop (COOP_TASKRUN|TASKRUN_FLAG)
#   uring-none   ringcast io_uring --uring-flags none (monoio's default ring)
#   epoll        ringcast epoll
#   nchan        nginx + nchan (when installed; the `ok` path's reference is its nginx)
# plus the `ok` path under wrk for ringcast (both drivers) and nginx, with the server's CPU per
# request. Results go to RESULTS (default results/fastpath/<kernel>/), and
# `bench/compare --readme RESULTS --rounds` writes RESULTS/README.md: every round's table and
# targets, then the medians of the same-round ratios against issue 14's limits (CPU per frame vs
# the floor for every flag set, user bytes per idle stream, fan-out spread vs the floor, connect
# p99 io_uring vs epoll, `ok` CPU per request vs nginx). The reconnect storm has its own
# scenario (`bench/run.sh --scenario storm`).
#
# Usage: bench/fastpath.sh [--rounds R] [--connections N] [--results DIR] [--no-build]
#                          [--servers "floor uring uring-coop uring-none epoll nchan"]
#                          [--duration D] [--warmup W] [--wrk-duration D]   (passed to run.sh)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rounds=3
n=19000
results=$root/results/fastpath
servers="floor uring uring-coop uring-none epoll nchan"
build=1
passed=()
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift ;;
        --connections) n=$2; shift ;;
        --results) results=$2; shift ;;
        --servers) servers=$2; shift ;;
        --no-build) build=0 ;;
        --duration|--warmup|--wrk-duration) passed+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "fastpath.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $rounds in ''|*[!0-9]*|0) echo "fastpath.sh: --rounds must be a positive integer" >&2; exit 2 ;; esac

failed=0
for round in $(seq "$rounds"); do
    printf '\n######## round %s of %s\n' "$round" "$rounds"
    flags=(--ladder "$n" --servers "$servers" --results "$results" --no-readme "${passed[@]}")
    # Build once, in the first round; later rounds reuse the binaries.
    if [ "$build" = 0 ] || [ "$round" -gt 1 ]; then flags+=(--no-build); fi
    "$root/bench/run.sh" "${flags[@]}" || { echo "fastpath.sh: round $round failed" >&2; failed=1; }
done
"$root/bench/compare" --readme "$results" --rounds
"$root/bench/compare" --readme "$root/results" > /dev/null
echo "regenerated $results/README.md and $root/results/README.md"
exit $failed
