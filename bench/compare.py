#!/usr/bin/env python3
"""compare: benchmark result files side by side, as a markdown table and SVG plots (issue 4).

Run through `bench/compare` (which provides matplotlib from a venv under /tmp):

  bench/compare FILE...                  table of the given results on stdout (+ plots with --plots DIR)
  bench/compare --readme RESULTS_DIR     regenerate RESULTS_DIR/README.md from every result under it,
                                         with plots under RESULTS_DIR/<kernel>/plots/<run>/

It reads what the tools wrote and nothing else:
- `ringcast-loadgen/result` files (loadgen/src/result.rs), one per server and size;
- their `<stem>.bench.json` sidecars (bench/run.sh via bench/sysprobe.py): how the run was made, the
  host facts, and the ksoftirqd threads' and the server process tree's CPU and memory over the
  loadgen's measuring window;
- `ringcast-bench/wrk` records of the `ok` path.
A figure the files do not hold is shown as "n/a", never estimated. Figures derived here say how
(e.g. "+ ksoftirqd" divides the sidecar's CPU deltas by the events the loadgen counted in its own
window). Ratios to the floor use the floor result of the same run (same run id) and size.
"""

import argparse
import base64
import glob
import json
import math
import os
import re
import statistics
import struct
import sys
import zlib
from collections import defaultdict

LOADGEN = "ringcast-loadgen/result"
WRK = "ringcast-bench/wrk"
SIDECAR = "ringcast-bench/sidecar"

# What each run.sh label is, for the "server" row (unknown labels show as they are).
KNOWN = {
    "floor": ("bench/floor", "send() per stream"),
    "uring": ("ringcast", "io_uring"),
    "uring-defer": ("ringcast", "io_uring, SINGLE_ISSUER|DEFER_TASKRUN"),
    "uring-coop": ("ringcast", "io_uring, COOP_TASKRUN|TASKRUN_FLAG"),
    "uring-none": ("ringcast", "io_uring, no setup flags"),
    "epoll": ("ringcast", "epoll"),
    "axum": ("axum Sse + broadcast", "tokio (epoll)"),
    "nchan": ("nginx + nchan", "nginx (epoll)"),
}
ORDER = ["floor", "uring", "uring-defer", "uring-coop", "uring-none", "epoll", "axum", "nchan"]
KERNELS = "ringcast-kernels/result"

# ------------------------------------------------------------------ HdrHistogram V2


class Hist:
    """A decoded HdrHistogram (V2 serialization, plain or deflate-compressed), enough for
    value-at-quantile, matching the Rust hdrhistogram crate's bucket layout."""

    def __init__(self, data):
        cookie = struct.unpack(">I", data[:4])[0]
        if cookie & ~0xF0 == 0x1C849304:  # compressed wrapper
            length = struct.unpack(">I", data[4:8])[0]
            data = zlib.decompress(data[8 : 8 + length])
            cookie = struct.unpack(">I", data[:4])[0]
        if cookie & ~0xF0 != 0x1C849303:
            raise ValueError(f"not an HdrHistogram V2 serialization (cookie {cookie:#x})")
        plen, _offset, sigfig, lowest, highest, _ratio = struct.unpack(">IIIQQd", data[4:40])
        payload = data[40 : 40 + plen]
        self.unit_mag = int(math.floor(math.log2(lowest)))
        single = 2 * 10**sigfig
        sub_count_mag = int(math.ceil(math.log2(single)))
        self.half_mag = max(sub_count_mag, 1) - 1
        self.half = 1 << self.half_mag
        counts, i, pos = {}, 0, 0
        while pos < len(payload):
            v, shift = 0, 0
            while True:
                b = payload[pos]
                pos += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80 or shift >= 63:
                    if shift >= 63 and b >= 0x80:
                        v |= payload[pos] << 63
                        pos += 1
                    break
            v = (v >> 1) ^ -(v & 1)  # zig-zag
            if v < 0:
                i += -v
            else:
                if v:
                    counts[i] = v
                i += 1
        self.counts = sorted(counts.items())
        self.total = sum(c for _, c in self.counts)

    def _value(self, index):
        b = (index >> self.half_mag) - 1
        sub = (index & (self.half - 1)) + self.half
        if b < 0:
            sub -= self.half
            b = 0
        low = sub << (b + self.unit_mag)
        return low + (1 << (b + self.unit_mag)) - 1  # highest equivalent, like value_at_quantile

    def quantile(self, q):
        if not self.total:
            return None
        want = max(1, math.ceil(q * self.total)) if q < 1 else self.total
        seen = 0
        for idx, c in self.counts:
            seen += c
            if seen >= want:
                return self._value(idx)
        return self._value(self.counts[-1][0])


# ------------------------------------------------------------------ loading


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"compare: skipping {path}: {e}", file=sys.stderr)
        return None


def sidecar_of(path):
    stem = path[:-5] if path.endswith(".json") else path
    p = stem + ".bench.json"
    return load_json(p) if os.path.exists(p) else None


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    return d


class Result:
    """One loadgen result with its sidecar, and every figure the table needs (None = n/a)."""

    def __init__(self, path, doc, side):
        self.path, self.doc, self.side = path, doc, side or {}
        run = (doc.get("runs") or [{}])[0]
        env = run.get("environment") or {}
        cfg = run.get("config") or {}
        res = run.get("resources") or {}
        self.env, self.cfg, self.res = env, cfg, res
        self.label = self.side.get("label") or env.get("label") or os.path.basename(path)
        self.kernel = env.get("kernel_release") or get(self.side, "host", "kernel_release")
        self.n = cfg.get("connections") or self.side.get("connections")
        self.run_id = self.side.get("run_id") or (env.get("date", "") + "-" + (env.get("hostname") or ""))
        self.date = env.get("date")
        self.virt = get(self.side, "host", "virt")
        self.interval_ms = cfg.get("interval")
        srv = KNOWN.get(self.label)
        self.server = srv[0] if srv else (get(run, "server", "banner") or "n/a")
        self.driver = srv[1] if srv else "n/a"
        c = doc.get("counters") or {}
        self.counters = c
        pct = doc.get("percentiles") or {}
        self.pct = pct
        d = res.get("derived") or {}
        start, end = res.get("measure_start"), res.get("hold_end")
        self.events_window = (
            end["events"] - start["events"] if start and end and end.get("events") is not None else None
        )
        self.open_end = end.get("open") if end else None
        win = self.side.get("window") or []
        base = self.side.get("server_baseline")
        pids = get(win[-1], "server_pids") if win else None
        self.processes = len(pids) if pids else None
        multi = bool(self.processes and self.processes > 1)
        self.memory_note = None
        # Server memory per stream: the loadgen's RSS figure for one process; for a process tree
        # (nginx) the PSS of the whole tree from the sidecar (RSS would count shared pages twice).
        if multi and base and win and self.open_end:
            self.user_bytes = (win[-1]["server_tree_pss_bytes"] - base["server_tree_pss_bytes"]) / self.open_end
            self.memory_note = f"PSS of {self.processes} processes"
        else:
            self.user_bytes = d.get("server_rss_bytes_per_stream")
        self.kernel_bytes = d.get("kernel_bytes_per_stream")
        # CPU per delivered frame: the loadgen's for one process, the tree's for several.
        ev = self.events_window
        self.cpu_note = None
        if len(win) == 2 and ev:

            def delta(key_ns, key_us):
                a, b = win[0].get(key_ns), win[1].get(key_ns)
                if a is not None and b is not None:
                    return (b - a) / 1000.0
                a, b = win[0].get(key_us), win[1].get(key_us)
                return None if a is None or b is None else float(b - a)

            tree_us = delta("server_tree_sched_ns", "server_tree_cpu_us")
            ksoft_us = delta("ksoftirqd_sched_ns", "ksoftirqd_cpu_us")
        else:
            tree_us = ksoft_us = None
        # The sidecar's figure (schedstat: ns resolution, whole process tree) when there is one;
        # the loadgen's own (one pid, clock ticks of 10 ms) otherwise. Both are shown.
        self.cpu_loadgen = d.get("server_cpu_us_per_event")
        if tree_us is not None:
            self.cpu = tree_us / ev
            if multi:
                self.cpu_note = f"{self.processes} processes"
        else:
            self.cpu = None if multi else self.cpu_loadgen
        # + ksoftirqd: both from the sidecar's window (same clock source), over the loadgen's events.
        self.cpu_ksoft = (tree_us + ksoft_us) / ev if tree_us is not None and ksoft_us is not None else None
        self.ksoft = ksoft_us / ev if ksoft_us is not None else None
        self.loadgen_cpu = d.get("loadgen_cpu_us_per_event")
        self.loadgen_bytes = d.get("loadgen_rss_bytes_per_connection")
        self.hist = None
        h = get(doc, "histograms", "delivery")
        if h:
            try:
                self.hist = Hist(base64.b64decode(h))
            except (ValueError, struct.error, zlib.error) as e:
                print(f"compare: {path}: delivery histogram: {e}", file=sys.stderr)
        self.floor = None  # set by link_floors
        # The ring setup flags the server's workers ran (its /info, stored by --server-info).
        info = get(run, "server", "info") or {}
        flags = sorted({w.get("uring_flags") for w in info.get("workers") or [] if w.get("uring_flags")})
        self.uring_flags = ", ".join(flags) or None
        # The driver that really ran, from the server's own /info when it has one (a ringcast
        # asked for io_uring may have fallen back to epoll); the label's otherwise.
        ran = sorted({w.get("driver") for w in info.get("workers") or [] if w.get("driver")})
        if ran:
            self.driver = ", ".join(ran) + ("" if ran == ["epoll"] or not self.uring_flags else f" ({self.uring_flags})")

    def spread(self):
        """The loadgen's fan-out spread p99 (µs): first to last stream of one tick, over the
        ticks that reached (nearly) every stream; None in result files from before it was recorded."""
        return (self.doc.get("fanout") or {}).get("spread_p99_us")


class Wrk:
    def __init__(self, path, doc):
        self.path, self.doc = path, doc
        self.label = doc.get("label")
        self.run_id = doc.get("run_id")
        self.kernel = get(doc, "host", "kernel_release")
        self.w = doc.get("wrk") or {}
        b, a = doc.get("server_before"), doc.get("server_after")
        reqs = self.w.get("requests")
        self.cpu_per_req = None
        if b and a and reqs:
            if b.get("server_tree_sched_ns") is not None and a.get("server_tree_sched_ns") is not None:
                us = (a["server_tree_sched_ns"] - b["server_tree_sched_ns"]) / 1000.0
            else:
                us = a["server_tree_cpu_us"] - b["server_tree_cpu_us"]
            self.cpu_per_req = us / reqs


def load(paths):
    results, wrks = [], []
    for p in paths:
        if p.endswith(".bench.json") or not p.endswith(".json"):
            continue
        doc = load_json(p)
        if not isinstance(doc, dict):
            continue
        if doc.get("schema") == LOADGEN:
            results.append(Result(p, doc, sidecar_of(p)))
        elif doc.get("schema") == KERNELS and isinstance(doc.get("result"), dict):
            # bench/kernels.sh: a loadgen result from inside a VM, wrapped with the virt kind,
            # the guest's io_uring facts and the driver the server ran.
            virt = doc.get("virt") or "unknown"
            label = {"io_uring": "uring", "epoll": "epoll"}.get(doc.get("server_driver"), "n/a")
            side = {"label": label, "run_id": f"{virt}-matrix", "host": {"virt": virt}}
            results.append(Result(p, doc["result"], side))
        elif doc.get("schema") == WRK:
            wrks.append(Wrk(p, doc))
    results.sort(key=lambda r: (r.run_id or "", r.n or 0, ORDER.index(r.label) if r.label in ORDER else 99))
    wrks.sort(key=lambda w: (w.run_id or "", ORDER.index(w.label) if w.label in ORDER else 99))
    floors = {(r.run_id, r.n): r for r in results if r.label == "floor"}
    for r in results:
        r.floor = floors.get((r.run_id, r.n))
    return results, wrks


# ------------------------------------------------------------------ table

NA = "n/a"


def num(v, fmt="{:.0f}"):
    return NA if v is None else fmt.format(v)


def ms(us):
    return NA if us is None else f"{us / 1000:.2f}"


def ratio(a, b):
    return NA if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def errors(r):
    c = r.counters
    failed = c.get("failed") or {}
    parts = [f"{k} {v}" for k, v in sorted(failed.items()) if v]
    total = sum(failed.values())
    s = f"{total}" + (f" ({', '.join(parts)})" if parts else "")
    extra = [
        f"{name} {c[key]}"
        for key, name in (("streams_ended", "ended"), ("stalled_streams", "stalled"), ("reconnects", "reconnects"))
        if c.get(key)
    ]
    return s + ("; " + ", ".join(extra) if extra else "")


def missed(r):
    c = r.counters
    unnumbered = c.get("unnumbered_events") or 0
    if unnumbered and unnumbered >= (c.get("events") or 0):
        return f"{NA} (ids are not ticks)"
    s = f"{c.get('missed_ids', 0)}"
    if c.get("duplicates"):
        s += f" (+{c['duplicates']} dup)"
    return s


def delivery(r, q):
    p = get(r.pct, "delivery")
    if not p or not p.get("count"):
        return NA
    return ms(p.get(q))


def table(results):
    if not results:
        return "_no loadgen results_\n"
    head = ["figure"] + [f"{r.label} {r.n}" for r in results]
    rows = [
        ("label", [r.label for r in results]),
        ("kernel", [r.kernel or NA for r in results]),
        ("server", [r.server for r in results]),
        ("driver", [r.driver for r in results]),
        ("ring setup flags (ran)", [r.uring_flags or NA for r in results]),
        ("N (streams)", [num(r.n) for r in results]),
        ("open at end", [num(r.open_end) for r in results]),
        ("virt", [r.virt or NA for r in results]),
        ("run", [r.run_id or NA for r in results]),
        (
            "user bytes per stream",
            [num(r.user_bytes) + (f" ({r.memory_note})" if r.memory_note and r.user_bytes is not None else "") for r in results],
        ),
        ("kernel bytes per stream (both ends)", [num(r.kernel_bytes) for r in results]),
        (
            "server CPU µs per delivered frame",
            [num(r.cpu, "{:.2f}") + (f" ({r.cpu_note})" if r.cpu_note and r.cpu is not None else "") for r in results],
        ),
        ("… ratio to floor", [ratio(r.cpu, r.floor.cpu if r.floor else None) for r in results]),
        ("… the loadgen's figure (--server-pid only, 10 ms ticks)", [num(r.cpu_loadgen, "{:.2f}") for r in results]),
        ("server + ksoftirqd CPU µs per frame", [num(r.cpu_ksoft, "{:.2f}") for r in results]),
        ("… ratio to floor", [ratio(r.cpu_ksoft, r.floor.cpu_ksoft if r.floor else None) for r in results]),
        ("ksoftirqd CPU µs per frame", [num(r.ksoft, "{:.3f}") for r in results]),
        ("delivery latency p50 (ms)", [delivery(r, "p50") for r in results]),
        ("delivery latency p99 (ms)", [delivery(r, "p99") for r in results]),
        ("delivery latency p99.9 (ms)", [delivery(r, "p99_9") for r in results]),
        ("delivery latency max (ms)", [delivery(r, "max") for r in results]),
        ("fan-out spread p99 (ms)", [ms(r.spread()) for r in results]),
        ("… ratio to floor", [ratio(r.spread(), r.floor.spread() if r.floor else None) for r in results]),
        ("connect rate (requested, /s)", [num(r.cfg.get("rate")) for r in results]),
        ("connect time p99 (ms)", [ms(get(r.pct, "connect", "p99")) if get(r.pct, "connect", "count") else NA for r in results]),
        ("errors (failed; other)", [errors(r) for r in results]),
        ("missed ids", [missed(r) for r in results]),
        ("events received", [num(r.counters.get("events")) for r in results]),
        ("loadgen CPU µs per event", [num(r.loadgen_cpu, "{:.2f}") for r in results]),
        ("loadgen bytes per connection", [num(r.loadgen_bytes) for r in results]),
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in rows:
        out.append("| " + " | ".join([name] + [str(c).replace("|", "\\|") for c in cells]) + " |")
    return "\n".join(out) + "\n"


def wrk_table(wrks):
    if not wrks:
        return ""
    nginx = {w.run_id: w for w in wrks if w.label == "nchan"}
    head = ["ok path (wrk)"] + [w.label for w in wrks]
    rows = [
        ("command", [f"`{w.doc.get('command', NA).split(' http')[0]}`" for w in wrks]),
        ("requests/s", [num(w.w.get("requests_per_s")) for w in wrks]),
        (
            "… ratio to nginx",
            [ratio(w.w.get("requests_per_s"), nginx[w.run_id].w.get("requests_per_s") if w.run_id in nginx else None) for w in wrks],
        ),
        ("latency p50 (ms)", [ms(get(w.w, "latency_percentiles_us", "p50")) for w in wrks]),
        ("latency p99 (ms)", [ms(get(w.w, "latency_percentiles_us", "p99")) for w in wrks]),
        ("latency max (ms)", [ms(w.w.get("latency_max_us")) for w in wrks]),
        ("server CPU µs per request", [num(w.cpu_per_req, "{:.2f}") for w in wrks]),
        (
            "errors",
            [f"{sum((w.w.get('socket_errors') or {}).values())} socket, {w.w.get('non_2xx_3xx', 0)} non-2xx" for w in wrks],
        ),
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in rows:
        out.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ plots


def plots(results, outdir, title=""):
    """Writes the SVGs; returns their file names (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FixedFormatter
    except ImportError:
        print("compare: matplotlib not available: no plots (run through bench/compare)", file=sys.stderr)
        return []
    os.makedirs(outdir, exist_ok=True)
    made = []
    plt.rcParams.update({"svg.hashsalt": "ringcast", "svg.fonttype": "none", "figure.dpi": 100})
    # Delivery-latency percentile curves, one plot per size, on the HdrHistogram axis 1/(1-q).
    for n in sorted({r.n for r in results if r.n}):
        group = [r for r in results if r.n == n and r.hist and r.hist.total]
        if not group:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        qs = [1 - 10 ** (-k / 50) for k in range(0, 301)]
        for r in group:
            xs, ys = [], []
            for q in qs:
                if q > 1 - 1 / r.hist.total:
                    break
                xs.append(1 / (1 - q))
                ys.append(r.hist.quantile(q) / 1000)
            xs.append(r.hist.total)
            ys.append(r.hist.quantile(1.0) / 1000)
            ax.plot(xs, ys, label=f"{r.label} ({r.run_id})" if len({x.run_id for x in group}) > 1 else r.label)
        ax.set_xscale("log")
        ticks = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]))
        ax.set_xlim(1, max(max(r.hist.total for r in group), 10))
        ax.set_xlabel("percentile")
        ax.set_ylabel("delivery latency (ms)")
        ax.set_title(f"delivery latency by percentile, {n} streams {title}".strip())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
        name = f"latency-{n}.svg"
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, name), metadata={"Date": None})
        plt.close(fig)
        made.append(name)

    def by_n(metric, ylabel, fname, ttl, extra=None):
        series = defaultdict(list)
        for r in results:
            v = metric(r)
            if v is not None and r.n:
                series[r.label].append((r.n, v))
        if not series:
            return
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label in sorted(series, key=lambda s: ORDER.index(s) if s in ORDER else 99):
            pts = sorted(series[label])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if extra:
            extra(ax)
        ax.set_xlabel("streams (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ttl} {title}".strip())
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, fname), metadata={"Date": None})
        plt.close(fig)
        made.append(fname)

    by_n(lambda r: r.user_bytes, "server user memory per stream (bytes)", "memory-per-stream.svg", "server memory per stream vs N")
    by_n(
        lambda r: r.cpu_ksoft if r.cpu_ksoft is not None else r.cpu,
        "server (+ ksoftirqd) CPU per delivered frame (µs)",
        "cpu-per-frame.svg",
        "CPU per delivered frame vs N",
    )
    return made


# ------------------------------------------------------------------ README


def how_made(results, wrks):
    lines = []
    sides = [r.side for r in results if r.side] + [w.doc for w in wrks]
    if not sides:
        return "No sidecar files: how these results were made is not recorded.\n"
    host = next((s.get("host") for s in sides if s.get("host")), {}) or {}
    lines.append(
        f"- Host: {host.get('hostname', NA)}, kernel {host.get('kernel_release', NA)}, "
        f"{host.get('cpu_model', NA)}, {host.get('cores', NA)} cores, "
        f"{(host.get('memory_bytes') or 0) / 2**30:.1f} GiB, virtualization: {host.get('virt', NA)}, "
        f"open files {host.get('nofile_soft', NA)}/{host.get('nofile_hard', NA)}."
    )
    sc = host.get("sysctls") or {}
    if sc:
        lines.append("- Sysctls at the start: " + ", ".join(f"`{k}={v}`" for k, v in sc.items()) + ".")
    s0 = next((r.side for r in results if r.side), None)
    if s0:
        lines.append(
            f"- Loadgen: `--interval {s0.get('interval')} --duration {s0.get('duration')} --warmup {s0.get('warmup')} "
            f"--rate {s0.get('rate')}`, one loadgen process on the same host, git {s0.get('git_commit')}"
            + (" (uncommitted changes)" if s0.get("git_dirty") else "")
            + "."
        )
    for r in results:
        if r.side:
            lines.append(f"- `{os.path.basename(r.path)}`: server `{r.side.get('server_command')}`")
    for w in wrks:
        lines.append(f"- `{os.path.basename(w.path)}`: `{w.doc.get('command')}` against `{w.doc.get('server_command')}`")
    notes = sorted({n for r in results for n in (r.doc.get("notes") or [])})
    for n in notes:
        lines.append(f"- Loadgen note: {n}")
    return "\n".join(lines) + "\n"


README_HEAD = """# Benchmark results

Generated by `bench/compare --readme results` from every result file under `results/`; do not edit
by hand. Each run was made by `bench/run.sh` (see its header): for every size N, a fresh server of
each kind (the `floor`, ringcast on `uring` and `epoll`, `axum`, nginx + `nchan` when installed),
measured by `ringcast-loadgen` on the same host, side by side in one session, plus the `ok` path
with `wrk`. Only ratios measured in the same run mean much on a shared or virtual machine.

How to read the figures:
- **user bytes per stream**: growth of the server's RSS from before the ramp to the end of the
  hold, over the streams open (for nginx, the PSS of all its processes).
- **kernel bytes per stream**: growth of TCP buffer pages plus the slab over the same period, per
  stream; with the loadgen on the same host it covers both ends of each connection.
- **CPU per delivered frame**: the CPU time of the server's whole process tree (from
  `/proc/*/task/*/schedstat`, sampled by `bench/run.sh` at the start and end of the loadgen's
  measuring window, i.e. after the ramp and the warmup) divided by the events the loadgen received
  in that window; "+ ksoftirqd" adds the `ksoftirqd` threads' CPU time over the same window
  (io_uring moves loopback receive work there). The ratio is to the floor of the same run and size.
  The loadgen's own figure (only the `--server-pid` process, in 10 ms clock ticks) is shown too.
- **delivery latency**: receive time minus the tick's due time (`id × interval`), all events.
- **fan-out spread p99**: for each tick that reached (at least 99 % of the most copies any tick
  reached, i.e.) every stream, last arrival minus first arrival over all streams; p99 over those
  ticks (the loadgen's `fanout` section). Over a 30 s hold at 2 s that is ~15 ticks, so p99 is
  close to the worst tick.
- nginx + nchan numbers its events itself (`id: <unix-seconds>:<n>`), so its delivery latency and
  missed ids are n/a: the loadgen can only time events whose id is the tick.
- "n/a": the result files do not hold that figure.
"""


def target_figures(rs, ws):
    """Issue 14's figures for one run at its largest N (None = n/a): ratios to this run's floor,
    io_uring against epoll, and the `ok` path's server CPU per request against nginx's."""
    uring = [r for r in rs if r.label == "uring"]
    if not uring:
        return None
    n = max(r.n or 0 for r in uring)
    at = {r.label: r for r in rs if r.n == n}
    r, fl = at["uring"], at["uring"].floor

    def over(a, b):
        return a / b if a is not None and b else None

    def connect_p99(label):
        x = at.get(label)
        return get(x.pct, "connect", "p99") if x and get(x.pct, "connect", "count") else None

    cpu = {
        label: over(x.cpu_ksoft, fl.cpu_ksoft if fl else None)
        for label, x in at.items()
        if label.startswith("uring") or label == "epoll"
    }
    wcpu = {w.label: w.cpu_per_req for w in ws}
    return {
        "n": n,
        "flags": {label: x.uring_flags for label, x in at.items() if x.uring_flags},
        "user_bytes": r.user_bytes,
        "cpu": cpu,
        "spread": over(r.spread(), fl.spread() if fl else None),
        "connect": over(connect_p99("uring"), connect_p99("epoll")),
        "ok_cpu": over(wcpu.get("uring"), wcpu.get("nchan")),
    }


# Issue 14's limits: (key, name, limit, format).
TARGETS = [
    ("cpu", "CPU per frame (+ksoftirqd) vs floor", 0.90, "{:.2f}×"),
    ("user_bytes", "user bytes per idle stream (RSS growth over the ramp)", 200, "{:.0f}"),
    ("spread", "fan-out spread p99 vs floor", 0.85, "{:.2f}×"),
    ("connect", "connect p99, io_uring vs epoll", 1.0, "{:.2f}×"),
    ("ok_cpu", "`ok` path: server CPU per request vs nginx", 0.85, "{:.2f}×"),
]


def verdict(value, limit, fmt):
    if value is None:
        return "n/a", "n/a"
    return fmt.format(value), ("met" if value <= limit else "**missed**")


def targets(rs, ws):
    """The issue's targets for ringcast on io_uring at the largest N of a run: met, missed or n/a."""
    t = target_figures(rs, ws)
    if not t:
        return ""
    out = [
        f"\n### Targets (ringcast io_uring, {t['n']} streams; ratios to the floor of this run)\n",
        "| target | measured | limit | |",
        "|---|---|---|---|",
    ]
    for key, name, limit, fmt in TARGETS:
        if key == "cpu":
            for label, value in sorted(t["cpu"].items(), key=lambda kv: ORDER.index(kv[0])):
                m, v = verdict(value, limit, fmt)
                out.append(f"| {name}: {label} | {m} | {fmt.format(limit)} | {v if label.startswith('uring') else 'for reference'} |")
            continue
        m, v = verdict(t[key], limit, fmt)
        out.append(f"| {name} | {m} | {fmt.format(limit)} | {v} |")
    return "\n".join(out) + "\n"


def kernel_key(release):
    """Sort kernel releases numerically: 5.10 before 6.1 before 6.12."""
    parts = re.findall(r"\d+", release or "")
    return [int(p) for p in parts[:3]]


# Scenarios with their own result trees and summaries (bench/publish.sh, bench/cluster.sh): not
# ladder results, linked from the README instead of tabled in it.
SCENARIOS = {
    "publish": "published events: ringcast against nginx+nchan, publish intake, history under a flood",
    "cluster": "several nodes through Redis Streams, failover",
    "collect": "returning freed heap pages after every tick walk or less often",
    "fastpath": "io_uring fast paths: ring setup flags, memory per idle stream, connect latency, the `ok` path, in interleaved rounds",
    "storm": "reconnect storm: every stream dropped at once, time until all receive ticks again",
    "capacity": "up to a million idle streams in one emulated guest, memory per stream (virt: tcg)",
}


def rounds_summary(runs):
    """Medians over the runs of a rounds benchmark (bench/fastpath.sh): each target's figure is a
    ratio measured inside one run (one round), and the median is taken over those ratios, since
    only ratios from the same round compare on this machine."""
    per_round = [target_figures(rs, ws) for rs, ws in runs]
    per_round = [t for t in per_round if t]
    if not per_round:
        return ""
    out = [
        f"\n## Medians over {len(per_round)} rounds (ratios taken within each round)\n",
        "| target | per round | median | limit | |",
        "|---|---|---|---|---|",
    ]

    def row(name, values, limit, fmt, judge=True):
        got = [v for v in values if v is not None]
        cells = ", ".join(fmt.format(v) if v is not None else "n/a" for v in values)
        if not got:
            return f"| {name} | {cells} | n/a | {fmt.format(limit)} | n/a |"
        med = statistics.median(got)
        v = ("met" if med <= limit else "**missed**") if judge else "for reference"
        return f"| {name} | {cells} | {fmt.format(med)} | {fmt.format(limit)} | {v} |"

    for key, name, limit, fmt in TARGETS:
        if key == "cpu":
            labels = sorted({k for t in per_round for k in t["cpu"]}, key=ORDER.index)
            for label in labels:
                out.append(row(f"{name}: {label}", [t["cpu"].get(label) for t in per_round], limit, fmt,
                               judge=label.startswith("uring")))
            continue
        out.append(row(name, [t[key] for t in per_round], limit, fmt))
    flags = sorted({f"{k}: {v}" for t in per_round for k, v in t["flags"].items()})
    if flags:
        out.append("\nRing setup flags that ran (from each server's `/info`): " + "; ".join(flags) + ".")
    return "\n".join(out) + "\n"


def readme(results_dir, rounds=False):
    files = sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True))
    files = [
        f for f in files
        if os.path.relpath(f, results_dir).split(os.sep)[0] not in SCENARIOS
    ]
    results, wrks = load(files)
    out = [README_HEAD]
    linked = [
        (name, what) for name, what in SCENARIOS.items()
        if os.path.exists(os.path.join(results_dir, name, "README.md"))
    ]
    if linked:
        out.append("\nOther scenarios, each with its own page: ")
        out.append("; ".join(f"[{name}]({name}/README.md) ({what})" for name, what in linked))
        out.append(".\n")
    # Results from emulated guests (TCG) are never put beside native ones: they get their own
    # section, kernels side by side, with no ratios (there is no floor in their run).
    emulated = [r for r in results if r.virt in ("tcg", "kvm")]
    results = [r for r in results if r not in emulated]
    runs = defaultdict(lambda: ([], []))
    for r in results:
        runs[(r.kernel or "unknown", r.run_id)][0].append(r)
    for w in wrks:
        runs[(w.kernel or "unknown", w.run_id)][1].append(w)
    if not runs:
        out.append("\n_No results yet: run `bench/run.sh`._\n")
    if rounds:
        out.append(rounds_summary([runs[k] for k in sorted(runs)]))
    for (kernel, run_id) in sorted(runs, key=lambda k: (k[0], k[1] or ""), reverse=True):
        rs, ws = runs[(kernel, run_id)]
        out.append(f"\n## {kernel} — run {run_id}\n\n")
        if rs:
            out.append(table(rs))
            rel = os.path.join(kernel, "plots", run_id or "run")
            for name in plots(rs, os.path.join(results_dir, rel), title=f"({run_id})"):
                out.append(f"\n![{name}]({rel}/{name})\n")
        if ws:
            out.append("\n" + wrk_table(ws))
        out.append(targets(rs, ws))
        out.append("\n### How it was made\n\n" + how_made(rs, ws))
    if emulated:
        out.append(
            "\n## Kernels side by side (virtual machines: not comparable with the runs above)\n\n"
            "`bench/kernels.sh` boots each Debian kernel under QEMU and runs server and loadgen in the "
            "guest. **virt = tcg** is software emulation, 4–20× slower than native and noisy: these "
            "columns show behaviour and capacity (io_uring available, which driver ran, streams held, "
            "missed ids), not speed. The io_uring facts of each kernel (FEAT flags, opcodes) are in "
            "[kernels.md](kernels.md).\n"
        )
        for n in sorted({r.n or 0 for r in emulated}):
            group = sorted(
                (r for r in emulated if (r.n or 0) == n),
                key=lambda r: (kernel_key(r.kernel), ORDER.index(r.label) if r.label in ORDER else 99),
            )
            out.append(f"\n### {n} streams ({group[0].virt})\n\n")
            out.append(table(group))
    with open(os.path.join(results_dir, "README.md"), "w") as f:
        f.write("".join(out))
    return os.path.join(results_dir, "README.md")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="result files (.json; sidecars are found beside them)")
    ap.add_argument("--plots", metavar="DIR", help="write SVG plots of the given results here")
    ap.add_argument("--readme", metavar="RESULTS_DIR", help="regenerate RESULTS_DIR/README.md from everything under it")
    ap.add_argument("--rounds", action="store_true",
                    help="with --readme: the runs are rounds of one benchmark; add the medians of their targets")
    a = ap.parse_args()
    if a.readme:
        print(readme(a.readme, rounds=a.rounds))
        return 0
    if not a.files:
        ap.error("no result files given")
    results, wrks = load(a.files)
    sys.stdout.write(table(results))
    if wrks:
        sys.stdout.write("\n" + wrk_table(wrks))
    if a.plots and results:
        for name in plots(results, a.plots):
            print(f"plot: {os.path.join(a.plots, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
