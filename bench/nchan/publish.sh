#!/usr/bin/env bash
# Publishes `hello` to the nchan channel at every wall-clock multiple of the interval, like
# ringcast's ticks. Usage: publish.sh SOCKET INTERVAL_MS. nchan numbers its messages itself
# (`id: <unix-seconds>:<n>`), so the tick cannot be the event id: see bench/nchan/README.md.
set -u
sock=$1 interval_ms=$2
while :; do
    now_ms=$(( $(date +%s%N) / 1000000 ))
    next=$(( (now_ms / interval_ms + 1) * interval_ms ))
    wait_ms=$(( next - now_ms ))
    sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
    curl -s -o /dev/null --max-time 1 --unix-socket "$sock" -X POST --data-binary 'hello' \
        -H 'X-EventSource-Event: message' http://localhost/ || true
done
