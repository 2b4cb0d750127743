#!/usr/bin/env python3
"""cluster_summary: the tables of a bench/cluster.sh run (Python 3 standard library only).

Reads RESULTS/<kernel>/<run>-cluster-<case>-r<round>.json (the loadgen's result) and its
.bench.json sidecar (cluster_probe samples at ti = --idle before the loadgen's launch, t0 = its
launch, t1 = its window's start, t2 = its window's end; and the kill), writes <run>-cluster-summary.json beside them and a markdown
page (results/cluster/README.md).

Figures, per run:
- publish→receive p50/p99 (the loadgen's publish_delivery, warmup left out) and the publish
  request p50/p99 (publishers' due time to the 201: in cluster mode it includes Redis's XADD);
- exactness: expected, received, missed, duplicated, unexpected, resets;
- Redis per event: redis-server's CPU from t1 to t2 (schedstat: ns; stat's 10 ms ticks are also
  kept) divided by the XADDs Redis counted in that window (INFO commandstats: the events
  published, counted where they were stored), raw and with Redis's idle rate (ti to t0: nodes
  connected, nothing published) taken out; and Redis's own microseconds in the stream commands (XADD, XREAD,
  XRANGE) per event;
- nodes' CPU per published event delivered (both nodes' process trees, t1 to t2, over the
  published events the loadgen received between its own samples);
- failover: the loadgen's failover histogram (break to head on node 2, the `retry:` delay
  included), the streams moved, the server-side time from the kill until node 2 held every
  stream, missed and duplicated.
Ratios are taken within a round, then the median over rounds is reported: single runs on this
VM move ±10 %.

Usage: cluster_summary.py --run RUN_ID OUTDIR MARKDOWN
"""

import glob
import json
import os
import re
import statistics
import sys

STREAM_COMMANDS = ("xadd", "xread", "xrange", "xrevrange", "xinfo", "xlen")


def load(path):
    with open(path) as f:
        return json.load(f)


def ms(us):
    return us / 1e3 if us is not None else None


def sched_us(sample, name):
    p = ((sample or {}).get("procs") or {}).get(name)
    if not p:
        return None
    return p.get("server_tree_sched_ns", 0) / 1e3


def stat_us(sample, name):
    p = ((sample or {}).get("procs") or {}).get(name)
    return p.get("server_tree_cpu_us") if p else None


def cmd(sample, name, field):
    c = ((sample or {}).get("redis") or {}).get("commandstats") or {}
    return (c.get(name) or {}).get(field, 0)


def delta(a, b):
    return b - a if a is not None and b is not None else None


def per(x, n):
    return x / n if x is not None and n else None


def redis_figures(samples):
    if len(samples) != 4 or not samples[2].get("redis"):
        return {}
    ti, t0, t1, t2 = samples
    events = cmd(t2, "xadd", "calls") - cmd(t1, "xadd", "calls")
    window_s = t2["unix_time"] - t1["unix_time"]
    cpu = delta(sched_us(t1, "redis"), sched_us(t2, "redis"))
    idle = delta(sched_us(ti, "redis"), sched_us(t0, "redis"))
    idle_s = t0["unix_time"] - ti["unix_time"]
    idle_rate = idle / idle_s if idle is not None and idle_s > 0 else None
    usec = sum(cmd(t2, c, "usec") - cmd(t1, c, "usec") for c in STREAM_COMMANDS)
    return {
        "window_s": window_s,
        "events_stored": events,
        "redis_cpu_us": cpu,
        "redis_cpu_us_per_s": cpu / window_s if cpu is not None and window_s > 0 else None,
        "redis_cpu_us_per_event": per(cpu, events),
        "redis_stat_cpu_us_per_event": per(delta(stat_us(t1, "redis"), stat_us(t2, "redis")), events),
        "redis_idle_cpu_us_per_s": idle_rate,
        "redis_cpu_us_per_event_net": per(
            cpu - idle_rate * window_s if cpu is not None and idle_rate is not None else None, events
        ),
        "redis_command_us_per_event": per(usec, events),
        "xread_calls_per_event": per(cmd(t2, "xread", "calls") - cmd(t1, "xread", "calls"), events),
    }


def figures(case, result, side):
    c = result["counters"]
    p = result["percentiles"]
    pd, pr, fo = p.get("publish_delivery") or {}, p.get("publish_request") or {}, p.get("failover") or {}
    out = {
        "streams": side.get("streams"),
        "streams_per_node": side.get("streams_per_node"),
        "nodes": side.get("nodes"),
        "opened": c.get("opened"),
        "publish_delivery_p50_ms": ms(pd.get("p50")) if pd.get("count") else None,
        "publish_delivery_p99_ms": ms(pd.get("p99")) if pd.get("count") else None,
        "publish_delivery_count": pd.get("count", 0),
        "publish_request_p50_ms": ms(pr.get("p50")) if pr.get("count") else None,
        "publish_request_p99_ms": ms(pr.get("p99")) if pr.get("count") else None,
        "published_ok": c.get("published_ok"),
        "publish_errors": c.get("publish_errors"),
        "failed": c.get("failed"),
    }
    for k in ("publish_expected", "publish_received", "publish_missed", "publish_duplicated",
              "publish_unexpected", "publish_resets", "connections_missing_events"):
        out[k] = c.get(k)
    samples = side.get("samples") or []
    out.update(redis_figures(samples))
    res = result["runs"][0]["resources"]
    delivered = (res.get("hold_end") or {}).get("publish_events", 0) - (
        (res.get("measure_start") or {}).get("publish_events", 0)
    )
    if len(samples) == 4 and case != "failover":
        nodes = [n for n in ("n1", "n2") if (samples[2].get("procs") or {}).get(n)]
        cpu = sum(delta(sched_us(samples[2], n), sched_us(samples[3], n)) or 0 for n in nodes)
        out["nodes_cpu_us_per_delivered_event"] = per(cpu, delivered)
    if case == "failover":
        kill = side.get("kill") or {}
        before = kill.get("node1_streams_before_kill") or {}
        out.update({
            "failovers": c.get("failovers"),
            "failovers_from": c.get("failovers_from"),
            "failovers_to": c.get("failovers_to"),
            "node1_streams_at_kill": before.get("value"),
            "failover_p50_ms": ms(fo.get("p50")) if fo.get("count") else None,
            "failover_p99_ms": ms(fo.get("p99")) if fo.get("count") else None,
            "failover_max_ms": ms(fo.get("max")) if fo.get("count") else None,
            "kill_to_all_back_s": kill.get("kill_to_all_back_s"),
            "retry_ms": side.get("retry_ms"),
        })
    return out


def main(argv):
    if len(argv) != 5 or argv[1] != "--run":
        print(__doc__, file=sys.stderr)
        return 2
    run, outdir, md = argv[2], argv[3], argv[4]
    runs = {}
    commit, redis_version, host = "unknown", None, {}
    pat = re.compile(rf"^{re.escape(run)}-cluster-(single|cluster|small|failover)-r(\d+)\.json$")
    for path in sorted(glob.glob(os.path.join(outdir, f"{run}-cluster-*-r*.json"))):
        m = pat.match(os.path.basename(path))
        side_path = path[: -len(".json")] + ".bench.json"
        if not m or not os.path.exists(side_path):
            continue
        case, rnd = m.group(1), int(m.group(2))
        side = load(side_path)
        commit = side.get("git_commit", commit)
        redis_version = side.get("redis_version", redis_version)
        host = side.get("host") or host
        runs.setdefault(rnd, {})[case] = figures(case, load(path), side)
    ratios = {}

    def ratio(name, rnd, a, b, field):
        x, y = rnd.get(a, {}).get(field), rnd.get(b, {}).get(field)
        if x is not None and y:
            ratios.setdefault(name, []).append(x / y)

    for rnd in runs.values():
        ratio("cluster_vs_single_publish_p50", rnd, "cluster", "single", "publish_delivery_p50_ms")
        ratio("cluster_vs_single_publish_p99", rnd, "cluster", "single", "publish_delivery_p99_ms")
        ratio("redis_cpu_per_event_cluster_vs_small", rnd, "cluster", "small", "redis_cpu_us_per_event")
        ratio("redis_cpu_per_event_net_cluster_vs_small", rnd, "cluster", "small", "redis_cpu_us_per_event_net")
        ratio("redis_command_us_per_event_cluster_vs_small", rnd, "cluster", "small", "redis_command_us_per_event")
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    fo = [r["failover"] for r in runs.values() if "failover" in r]
    summary = {
        "schema": "ringcast-bench/cluster-summary",
        "schema_version": 1,
        "run_id": run,
        "git_commit": commit,
        "redis_version": redis_version,
        "host": {k: host.get(k) for k in ("hostname", "kernel_release", "cpu_model", "cores", "virt")},
        "rounds": {str(k): r for k, r in sorted(runs.items())},
        "ratios_per_round": ratios,
        "ratio_medians": medians,
        "failover": {
            "runs": len(fo),
            "all_streams_moved": all(
                f.get("failovers") is not None and f.get("failovers") == f.get("streams_per_node") for f in fo
            ) if fo else None,
            "missed_total": sum(f.get("publish_missed") or 0 for f in fo),
            "duplicated_total": sum(f.get("publish_duplicated") or 0 for f in fo),
            "failover_max_ms_median": median([f.get("failover_max_ms") for f in fo]),
            "failover_p50_ms_median": median([f.get("failover_p50_ms") for f in fo]),
            "kill_to_all_back_s_median": median([f.get("kill_to_all_back_s") for f in fo]),
        },
    }
    with open(os.path.join(outdir, f"{run}-cluster-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    text = markdown(summary, outdir)
    with open(md, "w") as f:
        f.write(text)
    print(text)
    return 0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit="", digits=2):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def markdown(s, outdir):
    rel = os.path.relpath(outdir, os.path.dirname(outdir))
    h = s["host"]
    rounds = s["rounds"]
    any_run = next((r for rr in rounds.values() for r in rr.values()), {})
    lines = [
        "# Several nodes through Redis Streams, and failover (bench/cluster.sh)",
        "",
        f"Run `{s['run_id']}` of commit `{s['git_commit']}` (files `{rel}/{s['run_id']}-cluster-*`), "
        f"Redis {s['redis_version'] or '?'} without persistence, on {h.get('hostname')} "
        f"({h.get('cores')} cores, {h.get('virt') or 'unknown virtualization'}, kernel {h.get('kernel_release')}): "
        "two ringcast nodes, Redis and the loadgen all share these cores. "
        "Generated by `bench/cluster_summary.py`.",
        "",
        "- **single**: one node, no Redis, the same total streams; **cluster**: two nodes and Redis, "
        "half the streams on each (every node serves every channel), events published through node 2; "
        "**small**: the same as cluster with fewer streams; **failover**: as cluster, node 1 SIGKILLed "
        "mid-hold while publishing continues through node 2.",
        "- publish→receive is receive time minus the event id's milliseconds (Redis's clock when it "
        "stored the event in cluster mode, the node's when it sequenced it alone: one host, one clock); "
        "the publish request runs from the event's due time to its `201` (in cluster mode after Redis's XADD).",
        "- Redis CPU per event: redis-server's CPU (schedstat) over the loadgen's measuring window ÷ the "
        "XADDs Redis counted in it; *net* takes out Redis's idle rate (measured before the loadgen "
        "starts: nodes connected, nothing published); *cmd* is Redis's own time in the stream commands "
        "(INFO commandstats). The failover rows' latency includes the events that waited for the "
        "failover (delivered by replay on node 2).",
        "",
        "| round | case | streams | publish→receive p50 / p99 | publish request p50 / p99 | Redis CPU µs/event (net, cmd) | nodes CPU µs/delivered event | missed | duplicated | resets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rnd, cases in rounds.items():
        for case in ("single", "cluster", "small", "failover"):
            f = cases.get(case)
            if not f:
                continue
            streams = f"{f.get('nodes')}×{f.get('streams_per_node')}"
            redis = (
                f"{fmt(f.get('redis_cpu_us_per_event'), '', 1)} ({fmt(f.get('redis_cpu_us_per_event_net'), '', 1)}, "
                f"{fmt(f.get('redis_command_us_per_event'), '', 1)})"
                if f.get("events_stored") is not None
                else "–"
            )
            lines.append(
                f"| {rnd} | {case} | {streams} | {fmt(f.get('publish_delivery_p50_ms'), ' ms', 1)} / "
                f"{fmt(f.get('publish_delivery_p99_ms'), ' ms', 1)} | {fmt(f.get('publish_request_p50_ms'), ' ms', 1)} / "
                f"{fmt(f.get('publish_request_p99_ms'), ' ms', 1)} | {redis} | "
                f"{fmt(f.get('nodes_cpu_us_per_delivered_event'))} | {f.get('publish_missed')} | "
                f"{f.get('publish_duplicated')} | {f.get('publish_resets')} |"
            )
    lines += ["", "Medians of same-round ratios:", "", "| ratio | median | per round |", "|---|---|---|"]
    for k in (
        "cluster_vs_single_publish_p50",
        "cluster_vs_single_publish_p99",
        "redis_cpu_per_event_cluster_vs_small",
        "redis_cpu_per_event_net_cluster_vs_small",
        "redis_command_us_per_event_cluster_vs_small",
    ):
        per = ", ".join(fmt(v) for v in s["ratios_per_round"].get(k, []))
        lines.append(f"| {k} | {fmt(s['ratio_medians'].get(k))} | {per or 'n/a'} |")
    fo = [(rnd, cases["failover"]) for rnd, cases in rounds.items() if "failover" in cases]
    if fo:
        retry = fo[0][1].get("retry_ms")
        lines += [
            "",
            f"Failover: node 1 SIGKILLed mid-hold; its streams wait the nodes' `retry: {retry}` "
            "before reconnecting (part of every figure below), are refused by the dead node and "
            "move to node 2 with their Last-Event-ID. *failover* is the loadgen's histogram, from the "
            "moment a stream broke to its head on node 2; *all back* is node 2's own gauge reaching "
            "every stream, timed from the kill.",
            "",
            "| round | streams on node 1 at the kill | moved to node 2 | failover p50 / p99 / max | all back after the kill | missed | duplicated | resets |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rnd, f in fo:
            at_kill = f.get("node1_streams_at_kill")
            lines.append(
                f"| {rnd} | {int(at_kill) if at_kill is not None else 'n/a'} | {f.get('failovers')} | "
                f"{fmt(f.get('failover_p50_ms'), ' ms', 0)} / {fmt(f.get('failover_p99_ms'), ' ms', 0)} / "
                f"{fmt(f.get('failover_max_ms'), ' ms', 0)} | {fmt(f.get('kill_to_all_back_s'), ' s', 2)} | "
                f"{f.get('publish_missed')} | {f.get('publish_duplicated')} | {f.get('publish_resets')} |"
            )
    if any_run:
        lines += ["", "Command lines and samples are in each run's `.bench.json`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
