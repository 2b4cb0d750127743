#!/usr/bin/env python3
"""storm_summary: the table of a bench/storm.sh run (Python 3 standard library only).

Reads RESULTS/<kernel>/<run>-storm-<label>-r<round>.json (the loadgen's result, with its `storm`
section) and its .bench.json sidecar, and writes <run>-storm-summary.json beside them and a
markdown page (results/storm/README.md).

Figures, per round and server (from the loadgen's `storm` section):
- all back: from the storm instant until the last dropped stream received an event again (the
  headline; none when a stream never came back within the hold);
- all reconnected: until the last dropped stream had its new response head;
- recovery p50 / p99: per stream, from its drop to its first event after the reconnection;
- dropped, not back, failed reconnection attempts (by kind).
Then per server the median over rounds (a round where a stream never came back counts as
"never", above every time), the rounds each server was first in, and which server was first by
the median. Single runs on this VM move ±10 %: only the medians of interleaved rounds mean much.

Usage: storm_summary.py --run RUN_ID OUTDIR MARKDOWN
"""

import json
import os
import re
import statistics
import sys

ORDER = ["uring", "epoll", "nchan", "axum"]
NAMES = {
    "uring": "ringcast, io_uring",
    "epoll": "ringcast, epoll",
    "nchan": "nginx + nchan",
    "axum": "axum-sse (tokio)",
}


def load(path):
    with open(path) as f:
        return json.load(f)


def ms(us):
    return None if us is None else us / 1e3


def figures(result, side):
    s = result.get("storm") or {}
    env = result["runs"][0]["environment"]
    info = (result["runs"][0].get("server") or {}).get("info") or {}
    rec, con = s.get("recovery") or {}, s.get("reconnect") or {}
    # ringcast's /info says which driver each worker really runs (after any fallback).
    workers = info.get("workers") or []
    drivers = sorted({w["driver"] for w in workers if w.get("driver")})
    flags = sorted({w["uring_flags"] for w in workers if w.get("uring_flags")})
    return {
        "server_driver": ", ".join(drivers) if drivers else side.get("server_driver"),
        "uring_flags": ", ".join(flags) or None,
        "kernel": env.get("kernel_release") or side.get("kernel"),
        "loadgen_driver": env.get("loadgen_driver"),
        "connections": result["runs"][0]["config"].get("connections"),
        "storm_at_ms": s.get("at_ms"),
        "dropped": s.get("dropped"),
        "not_open": s.get("not_open"),
        "back": s.get("back"),
        "not_back": s.get("not_back"),
        "failed_attempts": s.get("failed_attempts"),
        "failed": s.get("failed") or {},
        "last_drop_ms": ms(s.get("last_drop_after_us")),
        "all_reconnected_ms": ms(s.get("all_reconnected_after_us")),
        "all_back_ms": ms(s.get("all_back_after_us")),
        "last_back_ms": ms(s.get("last_back_after_us")),
        "reconnect_p50_ms": ms(con.get("p50")) if con.get("count") else None,
        "reconnect_p99_ms": ms(con.get("p99")) if con.get("count") else None,
        "recovery_p50_ms": ms(rec.get("p50")) if rec.get("count") else None,
        "recovery_p99_ms": ms(rec.get("p99")) if rec.get("count") else None,
        "missed_ids": result["counters"].get("missed_ids"),
        "loadgen_exit": side.get("loadgen_exit"),
    }


def median_or_never(values):
    """Median where None (never all back) sorts above every time; None when that is the median."""
    if not values:
        return None
    inf = float("inf")
    m = statistics.median([inf if v is None else v for v in values])
    return None if m == inf else m


def main(argv):
    if len(argv) != 5 or argv[1] != "--run":
        print(__doc__, file=sys.stderr)
        return 2
    run, outdir, md = argv[2], argv[3], argv[4]
    pat = re.compile(rf"^{re.escape(run)}-storm-(\w+)-r(\d+)\.json$")
    rounds = {}
    commit, dirty, side0 = "unknown", None, {}
    for name in sorted(os.listdir(outdir)):
        m = pat.match(name)
        side_path = os.path.join(outdir, name[: -len(".json")] + ".bench.json")
        if not m or not os.path.exists(side_path):
            continue
        label, rnd = m.group(1), int(m.group(2))
        side = load(side_path)
        side0 = side0 or side
        commit, dirty = side.get("git_commit", commit), side.get("git_dirty", dirty)
        rounds.setdefault(rnd, {})[label] = figures(load(os.path.join(outdir, name)), side)
    if not rounds:
        print(f"storm_summary: no results of run {run} in {outdir}", file=sys.stderr)
        return 1
    labels = sorted({l for r in rounds.values() for l in r}, key=lambda l: (ORDER + [l]).index(l))
    servers = {}
    wins = {l: 0 for l in labels}
    for rnd in rounds.values():
        done = [(f["all_back_ms"], l) for l, f in rnd.items() if f["all_back_ms"] is not None]
        if done:
            wins[min(done)[1]] += 1
    for l in labels:
        per = [rounds[r][l] for r in sorted(rounds) if l in rounds[r]]
        servers[l] = {
            "name": NAMES.get(l, l),
            "rounds": len(per),
            "median_all_back_ms": median_or_never([f["all_back_ms"] for f in per]),
            "median_all_reconnected_ms": median_or_never([f["all_reconnected_ms"] for f in per]),
            "median_recovery_p50_ms": median_or_never([f["recovery_p50_ms"] for f in per]),
            "median_recovery_p99_ms": median_or_never([f["recovery_p99_ms"] for f in per]),
            "failed_attempts": sum(f["failed_attempts"] or 0 for f in per),
            "not_back": sum(f["not_back"] or 0 for f in per),
            "rounds_first": wins[l],
        }
    ranked = sorted(
        (s["median_all_back_ms"], l) for l, s in servers.items() if s["median_all_back_ms"] is not None
    )
    summary = {
        "schema": "ringcast-bench/storm-summary",
        "schema_version": 1,
        "run_id": run,
        "git_commit": commit,
        "git_dirty": dirty,
        "kernel": side0.get("kernel"),
        "setup": {k: side0.get(k) for k in ("connections", "rate", "interval", "storm_at", "duration", "storm_rate", "cores")},
        "rounds": {str(r): rounds[r] for r in sorted(rounds)},
        "servers": servers,
        "first": ranked[0][1] if ranked else None,
    }
    with open(os.path.join(outdir, f"{run}-storm-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    text = markdown(summary, outdir)
    with open(md, "w") as f:
        f.write(text)
    print(text)
    return 0


def fmt(v, unit=" ms", digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def never(v, not_back):
    return fmt(v) if v is not None else f"never ({not_back} not back)"


def failures(f):
    if not f["failed_attempts"]:
        return "0"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(f["failed"].items()))
    return f"{f['failed_attempts']} ({kinds})"


def markdown(s, outdir):
    rel = os.path.relpath(outdir, os.path.dirname(outdir))
    st = s["setup"]
    storm_rate = f"at most {st['storm_rate']}/s" if st.get("storm_rate") else "all at once"
    first = s["first"]
    lines = [
        "# Reconnect storm (bench/storm.sh)",
        "",
        f"Run `{s['run_id']}` of commit `{s['git_commit']}`{' (uncommitted changes)' if s['git_dirty'] else ''} "
        f"on kernel `{s['kernel']}` (files `{rel}/{s['run_id']}-storm-*`), {st['cores']} cores shared by "
        f"the server and the loadgen. Generated by `bench/storm_summary.py`.",
        "",
        f"{st['connections']} tick streams ({st['interval']} ticks) were opened at {st['rate']}/s; "
        f"{st['storm_at']} after the ramp (moved on to the midpoint between two ticks) the loadgen "
        f"closed every open stream at once and reopened them {storm_rate}, each with its "
        f"Last-Event-ID, within a {st['duration']} hold. **All back** is the time from the storm "
        "until the last stream received an event again (the headline); **all reconnected** until "
        "the last one had its new response head. A stream is back with the next tick after its "
        "reconnection, so *all back* moves in steps of the tick interval; *all reconnected* does "
        "not. nginx+nchan replays the messages after a Last-Event-ID from its buffer, ringcast and "
        "axum-sse do not replay ticks: a stream reconnected after a tick waits for the next one there. "
        "The listen backlogs differ too: 4,096 per worker listener for ringcast and nginx, tokio's "
        "default of 128 on axum-sse's one listener (bench/README.md, storm.sh). A reconnection "
        "answered with a non-200 status (`bad_status`, e.g. ringcast's 503 over --max-streams) "
        "fails that stream for good, as EventSource does: it is not back.",
        "",
        "| round | server | driver | dropped | all back | all reconnected | recovery p50 / p99 | failed reconnects | not back |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rnd, servers in s["rounds"].items():
        for label in sorted(servers, key=lambda l: (ORDER + [l]).index(l)):
            f = servers[label]
            # `|` would end the table cell
            flags = f" ({f['uring_flags']})".replace("|", "\\|") if f.get("uring_flags") else ""
            lines.append(
                f"| {rnd} | {NAMES.get(label, label)} | {f['server_driver']}{flags} | {f['dropped']} | "
                f"{never(f['all_back_ms'], f['not_back'])} | {fmt(f['all_reconnected_ms'])} | "
                f"{fmt(f['recovery_p50_ms'])} / {fmt(f['recovery_p99_ms'])} | {failures(f)} | {f['not_back']} |"
            )
    lines += [
        "",
        "Medians over the rounds (a round in which a stream never came back counts as never):",
        "",
        "| server | all back | all reconnected | recovery p50 | recovery p99 | failed reconnects (all rounds) | first in rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, v in s["servers"].items():
        name = f"**{v['name']}**" if label == first else v["name"]
        lines.append(
            f"| {name} | {fmt(v['median_all_back_ms']) if v['median_all_back_ms'] is not None else 'never'} | "
            f"{fmt(v['median_all_reconnected_ms'])} | {fmt(v['median_recovery_p50_ms'])} | "
            f"{fmt(v['median_recovery_p99_ms'])} | {v['failed_attempts']} | {v['rounds_first']} of {v['rounds']} |"
        )
    lines.append("")
    if first:
        lines.append(f"First by the median all-back time: **{s['servers'][first]['name']}**.")
    else:
        lines.append("No server had every stream back in the median round.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
