#!/usr/bin/env bash
# Soak: connect/disconnect churn against a release ringcast for a bounded time, sampling the
# server's RSS, fd count and streams gauge (admin /metrics) against what the clients see, then
# checking that everything comes back once the clients are gone. Writes
# results/soak/<kernel>/<date>-<host>-<driver>.{json,md}.
#
# Usage: bench/soak.sh [--duration SECONDS] [--streams N] [--rate PER_S] [--driver auto|uring|epoll]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=600 streams=2000 rate=100 driver=auto interval=1s
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --driver) driver=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    *) echo "unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet --bin ringcast
kernel=$(uname -r)
host=$(hostname -s)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out_dir="results/soak/$kernel"
mkdir -p "$out_dir"
work=$(mktemp -d)
trap 'kill "$srv" 2>/dev/null || true; rm -rf "$work"' EXIT

./target/release/ringcast --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --driver "$driver" \
  --interval "$interval" 2> "$work/server.log" &
srv=$!
for _ in $(seq 100); do grep -q "listening on http://" "$work/server.log" && break; sleep 0.1; done
port=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$work/server.log" | sed 's/.*://')
admin=$(grep -o 'admin endpoints on http://[0-9.]*:[0-9]*' "$work/server.log" | sed 's/.*http:\/\///')
drv=$(grep -o 'driver=[a-z_]*' "$work/server.log" | head -1 | cut -d= -f2)
echo "soak: server pid $srv on port $port (admin $admin, driver $drv), $streams streams, $rate reconnects/s, ${duration}s"

sample() { # t rss_kb fds streams_open
  local rss fds open
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$srv/status")
  fds=$(ls "/proc/$srv/fd" | wc -l)
  open=$(curl -s "http://$admin/metrics" | awk -F' ' '/^ringcast_streams_open\{worker="total"\}/{print $2}')
  echo "$(date +%s) $rss $fds $open"
}
baseline=$(sample)
python3 bench/soak_churn.py --port "$port" --streams "$streams" --rate "$rate" --duration "$duration" \
  > "$work/clients.jsonl" &
churn=$!
: > "$work/samples.txt"
while kill -0 "$churn" 2>/dev/null; do
  sleep 10
  s=$(sample); echo "$s" >> "$work/samples.txt"
  c=$(tail -1 "$work/clients.jsonl" 2>/dev/null || true)
  echo "  $(date -u +%T) server rss_kb/fds/streams: $(echo "$s" | cut -d' ' -f2-)  clients: $c"
done
wait "$churn" || true
# Clients gone: the server must come back to its baseline (within two ticks plus slack).
sleep 5
final=$(sample)
kill -TERM "$srv"; wait "$srv" || true
summary=$(grep ' stopped ' "$work/server.log" | tail -1)

python3 - "$work" "$out_dir/$stamp-$host-$drv" "$baseline" "$final" "$duration" "$streams" "$rate" "$drv" "$kernel" "$summary" <<'PY'
import json, sys, statistics
work, out, baseline, final, duration, streams, rate, drv, kernel, summary = sys.argv[1:]
samples = [list(map(int, l.split())) for l in open(f"{work}/samples.txt") if l.strip()]
clients = [json.loads(l) for l in open(f"{work}/clients.jsonl") if l.strip()]
b = list(map(int, baseline.split())); f = list(map(int, final.split()))
steady = samples[len(samples) // 5:] or samples  # skip the first fifth (ramp)
rss = [s[1] for s in steady]
# least-squares slope of RSS over the steady part, KiB per hour
ts = [s[0] for s in steady]
slope = 0.0
if len(steady) > 2:
    mt, mr = statistics.mean(ts), statistics.mean(rss)
    den = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss)) / den * 3600 if den else 0.0
last = clients[-1] if clients else {}
report = {
    "schema": "ringcast-soak/1", "kernel": kernel, "driver": drv,
    "duration_s": float(duration), "target_streams": int(streams), "reconnects_per_s": float(rate),
    "client": last,
    "server_summary": summary,
    "baseline": {"rss_kb": b[1], "fds": b[2], "streams_open": b[3]},
    "after_clients_left": {"rss_kb": f[1], "fds": f[2], "streams_open": f[3]},
    "steady_rss_kb": {"min": min(rss), "max": max(rss), "first": rss[0], "last": rss[-1],
                       "slope_kb_per_hour": round(slope, 1)} if rss else None,
    "drift": {"fds": f[2] - b[2], "streams_open": f[3] - b[3],
              "rss_kb_steady_last_minus_first": (rss[-1] - rss[0]) if rss else None},
    "samples": samples,
}
json.dump(report, open(out + ".json", "w"), indent=1)
md = f"""# Soak {kernel} {drv}

{duration} s of churn: ~{streams} streams, ~{rate} reconnects/s, `bench/soak.sh`.

| | baseline | after clients left | drift |
|---|---|---|---|
| fds | {b[2]} | {f[2]} | {f[2]-b[2]} |
| streams gauge | {b[3]} | {f[3]} | {f[3]-b[3]} |
| RSS KiB | {b[1]} | {f[1]} | |

Steady-state RSS (last 4/5 of the run): min {min(rss) if rss else 'n/a'} KiB, max {max(rss) if rss else 'n/a'} KiB,
first {rss[0] if rss else 'n/a'} → last {rss[-1] if rss else 'n/a'} KiB, slope {round(slope,1)} KiB/h.

Clients: {last.get('opened','n/a')} streams opened, {last.get('closed','n/a')} closed, {last.get('events','n/a')} events,
{last.get('errors','n/a')} errors, {last.get('refused','n/a')} refused.

Server: `{summary}`
"""
open(out + ".md", "w").write(md)
print(md)
PY
