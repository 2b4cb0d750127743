#!/usr/bin/env python3
"""publish_summary: the table of a bench/publish.sh run (Python 3 standard library only).

Reads RESULTS/<kernel>/<run>-publish-<case>-<label>-r<round>.json (the loadgen's result) and its
.bench.json sidecar, plus the intake and flood records, and writes
<run>-publish-summary.json beside them and a markdown page (results/publish/README.md).

Figures, per run:
- CPU per delivered frame: (server process tree CPU + ksoftirqd CPU) over the sidecar's window,
  divided by the frames the loadgen received in its measuring window (tick events for `tick`,
  published events for `one` and `many`). Same method for ringcast and nchan (whose work is in
  its worker processes, which the loadgen's own --server-pid sample does not see).
- Latency: the tick's fan-out spread p99 (first to last stream of each complete tick), and the
  publish→receive p50/p99 of published events.
- The floor: bench/floor (a plain send() per stream per tick, no HTTP or SSE logic) in the tick
  case of the same round, i.e. what the kernel alone spends per frame on this host; every CPU
  figure is also given as a ratio to it.
Ratios are taken within a round, then the median over rounds is reported: single runs on this
VM move ±10 %.

Usage: publish_summary.py --run RUN_ID OUTDIR MARKDOWN
"""

import glob
import json
import os
import re
import statistics
import sys

# What every CPU figure is also read against: bench/floor's plain send() per stream per tick, in
# the tick case of the same round.
FLOOR = ("tick", "floor")
AGAINST_FLOOR = (("tick", "uring"), ("one", "uring"), ("one", "nchan"), ("many", "uring"), ("many", "nchan"))


def load(path):
    with open(path) as f:
        return json.load(f)


def window_cpu_us(side):
    w = side.get("window") or []
    if len(w) != 2:
        return None
    a, b = w
    return (b["server_tree_cpu_us"] - a["server_tree_cpu_us"]) + (
        (b.get("ksoftirqd_cpu_us") or 0) - (a.get("ksoftirqd_cpu_us") or 0)
    )


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def figures(case, result, side):
    res = result["runs"][0]["resources"]
    start, end = res.get("measure_start") or {}, res.get("hold_end") or {}
    key = "events" if case == "tick" else "publish_events"
    frames = (end.get(key) or 0) - (start.get(key) or 0)
    cpu = window_cpu_us(side)
    out = {
        "frames_in_window": frames,
        "cpu_us_per_frame": cpu / frames if cpu is not None and frames > 0 else None,
        "server_rss_bytes_end": (side.get("window") or [{}, {}])[-1].get("server_tree_rss_bytes"),
    }
    c = result["counters"]
    if case == "tick":
        n = result["runs"][0]["config"]["connections"]
        spreads = [
            (t["last_us"] - t["first_us"]) / 1e3
            for t in (result.get("fanout") or {}).get("per_tick", {}).values()
            if t["count"] == n
        ]
        out["fanout_spread_p99_ms"] = pct(spreads, 0.99)
        out["missed_ids"] = c.get("missed_ids")
    else:
        p = result["percentiles"].get("publish_delivery") or {}
        out["publish_delivery_p50_ms"] = p.get("p50", 0) / 1e3 if p else None
        out["publish_delivery_p99_ms"] = p.get("p99", 0) / 1e3 if p else None
        for k in ("published_ok", "publish_expected", "publish_received", "publish_missed",
                  "publish_duplicated", "publish_resets"):
            out[k] = c.get(k)
    return out


def main(argv):
    if len(argv) != 5 or argv[1] != "--run":
        print(__doc__, file=sys.stderr)
        return 2
    run, outdir, md = argv[2], argv[3], argv[4]
    runs = {}
    commit = "unknown"
    pat = re.compile(rf"^{re.escape(run)}-publish-(tick|one|many)-(\w+)-r(\d+)\.json$")
    for path in sorted(glob.glob(os.path.join(outdir, f"{run}-publish-*-r*.json"))):
        m = pat.match(os.path.basename(path))
        side_path = path[: -len(".json")] + ".bench.json"
        if not m or not os.path.exists(side_path):
            continue
        case, label, rnd = m.group(1), m.group(2), int(m.group(3))
        side = load(side_path)
        commit = side.get("git_commit", commit)
        runs.setdefault(rnd, {})[(case, label)] = figures(case, load(path), side)
    ratios = {}

    def ratio(name, rnd, a, b, field="cpu_us_per_frame"):
        x, y = rnd.get(a, {}).get(field), rnd.get(b, {}).get(field)
        if x and y:
            ratios.setdefault(name, []).append(x / y)

    for rnd in runs.values():
        ratio("one_uring_cpu_vs_tick_cpu", rnd, ("one", "uring"), ("tick", "uring"))
        ratio("many_uring_cpu_vs_one_uring_cpu", rnd, ("many", "uring"), ("one", "uring"))
        ratio("one_uring_cpu_vs_nchan", rnd, ("one", "uring"), ("one", "nchan"))
        ratio("many_uring_cpu_vs_nchan", rnd, ("many", "uring"), ("many", "nchan"))
        for case, label in AGAINST_FLOOR:
            ratio(f"{case}_{label}_cpu_vs_floor", rnd, (case, label), FLOOR)
        a = rnd.get(("one", "uring"), {}).get("publish_delivery_p99_ms")
        b = rnd.get(("tick", "uring"), {}).get("fanout_spread_p99_ms")
        if a and b:
            ratios.setdefault("one_uring_publish_p99_vs_tick_spread_p99", []).append(a / b)
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    extra = {}
    for case in ("intake", "flood"):
        p = os.path.join(outdir, f"{run}-publish-{case}-uring.json")
        if os.path.exists(p):
            extra[case] = load(p)
    summary = {
        "schema": "ringcast-bench/publish-summary",
        "schema_version": 1,
        "run_id": run,
        "git_commit": commit,
        "rounds": {str(k): {f"{c}-{l}": v for (c, l), v in r.items()} for k, r in sorted(runs.items())},
        "ratios_per_round": ratios,
        "ratio_medians": medians,
    }
    for case, rec in extra.items():
        w = rec.get("wrk") or rec
        summary[case] = {
            "requests_per_s": w.get("requests_per_s"),
            "requests": w.get("requests"),
            "non_2xx_3xx": w.get("non_2xx_3xx"),
            "socket_errors": w.get("socket_errors"),
            "latency_percentiles_us": w.get("latency_percentiles_us"),
            "rss_before_bytes": (rec.get("server_before") or {}).get("server_tree_rss_bytes"),
            "rss_after_bytes": (rec.get("server_after") or {}).get("server_tree_rss_bytes"),
            "history_bytes_after": metric(rec.get("server_metrics"), "ringcast_history_bytes"),
            "history_bytes_limit": rec.get("history_bytes_limit"),
            "command": rec.get("command"),
        }
    with open(os.path.join(outdir, f"{run}-publish-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    text = markdown(summary, outdir)
    with open(md, "w") as f:
        f.write(text)
    print(text)
    return 0


def metric(text, name):
    if not text:
        return None
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def fmt(v, unit="", digits=2):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def markdown(s, outdir):
    rel = os.path.relpath(outdir, os.path.dirname(outdir))
    lines = [
        "# Published events at scale (bench/publish.sh)",
        "",
        f"Run `{s['run_id']}` of commit `{s['git_commit']}` (files `{rel}/{s['run_id']}-publish-*`), "
        "ringcast on io_uring (`--uring-flags auto`), 2 s ticks, the loadgen on the same 2 cores. "
        "Generated by `bench/publish_summary.py`; CPU is the server's process tree plus ksoftirqd "
        "over the loadgen's measuring window, per frame the loadgen received in that window.",
        "",
        "nchan numbers its messages itself, so its publish→receive latency comes from a send time "
        "the publisher writes into the data (`--timestamp-in-data`), and its missed/duplicated "
        "counts are not checked (0 here means not counted). A new nchan subscriber is sent the "
        "channel's newest stored message (`nchan_subscriber_first_message newest`): when that "
        "message is older than the warmup, its age shows in nchan's p99 (the seconds-long p99 "
        "rows), so compare nchan's latency by p50, and the CPU columns.",
        "",
        "| round | case | server | CPU µs/frame | fan-out spread p99 | publish→receive p50 / p99 | missed | duplicated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rnd, cases in s["rounds"].items():
        for name, f in sorted(cases.items()):
            case, label = name.split("-", 1)
            lat = (
                f"{fmt(f.get('publish_delivery_p50_ms'), ' ms', 1)} / {fmt(f.get('publish_delivery_p99_ms'), ' ms', 1)}"
                if case != "tick"
                else "–"
            )
            spread = fmt(f.get("fanout_spread_p99_ms"), " ms", 1) if case == "tick" else "–"
            lines.append(
                f"| {rnd} | {case} | {label} | {fmt(f['cpu_us_per_frame'])} | {spread} | {lat} | "
                f"{f.get('publish_missed', f.get('missed_ids', 'n/a'))} | {f.get('publish_duplicated', '–')} |"
            )
    lines += ["", "Medians of same-round ratios:", "", "| ratio | median | per round | target |", "|---|---|---|---|"]
    targets = {
        "one_uring_cpu_vs_tick_cpu": "≤ 1.1",
        "many_uring_cpu_vs_one_uring_cpu": "≤ 1.5",
        "one_uring_cpu_vs_nchan": "≤ 0.5",
        "many_uring_cpu_vs_nchan": "≤ 0.5",
        "one_uring_publish_p99_vs_tick_spread_p99": "≤ 1.0",
    }
    targets.update({f"{c}_{l}_cpu_vs_floor": "for reference" for c, l in AGAINST_FLOOR})
    for k, target in targets.items():
        per = ", ".join(fmt(v) for v in s["ratios_per_round"].get(k, []))
        lines.append(f"| {k} | {fmt(s['ratio_medians'].get(k))} | {per or 'n/a'} | {target} |")
    nf = s["ratio_medians"].get("one_nchan_cpu_vs_floor")
    if nf:
        lines += [
            "",
            f"The floor is the kernel's own cost per frame on this host (a plain send() per stream). "
            f"nchan spent {fmt(nf)}× it per delivered event on one channel (median), so the ≤ 0.5× nchan "
            f"target asks for {fmt(nf / 2)}× the floor there.",
        ]
    if "intake" in s:
        i = s["intake"]
        lines += [
            "",
            f"Publish intake: {fmt(i['requests_per_s'], '', 0)} publishes/s accepted "
            f"({i['requests']} requests, non-2xx {i['non_2xx_3xx']}, socket errors {i['socket_errors']}), "
            f"client `{i['command']}`.",
        ]
    if "flood" in s:
        f = s["flood"]
        lines += [
            "",
            f"History under a flood of 4 KiB events over 1,000 channels with --history-bytes 16 MiB: "
            f"{fmt(f['requests_per_s'], '', 0)} publishes/s, history {fmt((f['history_bytes_after'] or 0) / 2**20, ' MiB')} "
            f"afterwards, server RSS {fmt((f['rss_before_bytes'] or 0) / 2**20, ' MiB')} before and "
            f"{fmt((f['rss_after_bytes'] or 0) / 2**20, ' MiB')} after.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
