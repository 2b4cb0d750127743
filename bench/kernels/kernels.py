#!/usr/bin/env python3
"""bench/kernels/kernels.py: the host-side half of bench/kernels.sh (no dependencies but python3).

Three subcommands, kept in one file so the wrapper format is written and read in one place:

  decode SERIAL_FILE OUTDIR   split what the guest wrote on its second serial port into files
                              (sections framed "@@ringcast begin NAME" / "@@ringcast end NAME",
                              base64); prints "complete" when the guest reached its "done" line
  wrap OUT.json key=value...  write one kernel-matrix result: a wrapper object around the
                              loadgen's result file, because the loadgen schema
                              (ringcast-loadgen/result v1) has no field for the virtualisation
                              kind or the guest's io_uring facts (Environment has fixed fields;
                              `notes` holds strings only). Top-level keys: schema
                              "ringcast-kernels/result", virt, kernel_release, uring_facts,
                              server_driver, driver_requested, status, result (the loadgen
                              result, unmodified, or null) and how it was run.
  table RESULTS_DIR OUT.md    the kernels table (markdown) from every wrapper under RESULTS_DIR,
                              newest result per (kernel, driver, virt, streams) first
                              (capacity runs left out: they have their own table).
  capacity-table DIR OUT.md   the capacity table (bench/kernels.sh --capacity, issue 13) from
                              the wrappers under DIR whose mode is "capacity".

A capacity run's wrapper also holds "capacity": the per-stream figures computed here from the
guest's memory snapshots (see capacity_analysis for how kernel memory is split between the
server and the loadgen).

Everything in the table is read from the files: nothing is typed in by hand.
"""

import base64
import datetime
import glob
import io
import json
import os
import re
import sys
import tarfile

SCHEMA = "ringcast-kernels/result"
SCHEMA_VERSION = 1

# Opcodes worth naming in the table: when they arrived tells the kernel's io_uring generation.
NOTABLE_OPCODES = [
    ("PROVIDE_BUFFERS", "5.7"),
    ("SHUTDOWN", "5.11"),
    ("MSG_RING", "5.18"),
    ("SOCKET", "5.19"),
    ("SEND_ZC", "6.0"),
    ("READ_MULTISHOT", "6.7"),
    ("FUTEX_WAIT", "6.7"),
    ("BIND", "6.11"),
    ("RECV_ZC", "6.15"),
    ("EPOLL_WAIT", "6.15"),
]


def decode(serial, outdir):
    os.makedirs(outdir, exist_ok=True)
    try:
        text = open(serial, "rb").read().decode("latin-1").replace("\r", "")
    except FileNotFoundError:
        text = ""
    names = []
    for m in re.finditer(r"@@ringcast begin (\S+)\n(.*?)@@ringcast end \1", text, re.S):
        name, body = m.group(1), m.group(2)
        try:
            data = base64.b64decode("".join(body.split()), validate=True)
        except Exception as e:  # a torn section: keep what we can say about it
            data = f"undecodable section: {e}".encode()
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
        names.append(name)
    complete = "@@ringcast done" in text
    print("complete" if complete else "incomplete", " ".join(names))
    return 0


def read_text(path, limit=None):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError, TypeError):
        return None
    if limit is not None and len(data) > limit:
        data = data[-limit:]
    return data


def read_json(path):
    text = read_text(path)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_meta(text):
    meta = {}
    for line in (text or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k.strip()] = v.strip()
    return meta


def server_workers(log):
    """The driver each worker actually runs, from the server's banner."""
    workers = []
    fallback = []
    for line in (log or "").splitlines():
        m = re.search(r"\bworker=(\d+)\b.*?\bcore=(\S+).*?\bdriver=(\S+)", line)
        if m and "worker" in line:
            w = {"worker": int(m.group(1)), "core": m.group(2), "driver": m.group(3)}
            f = re.search(r"\buring_flags=(\S+)", line)
            if f:
                w["uring_flags"] = f.group(1)
            workers.append(w)
            if " WARN " in line:
                fallback.append(line.split(" WARN ", 1)[1].strip())
    drivers = sorted({w["driver"] for w in workers})
    driver = drivers[0] if len(drivers) == 1 else ("mixed" if drivers else None)
    return driver, workers, fallback


def wrap(out, pairs):
    a = dict(p.split("=", 1) for p in pairs)
    sec = a.get("sections", "")
    path = lambda n: os.path.join(sec, n) if sec else None  # noqa: E731
    meta = parse_meta(read_text(path("meta")))
    server_log = read_text(path("server_log"))
    driver, workers, fallback = server_workers(server_log)
    result = read_json(path("result"))
    facts = read_json(path("probe"))
    status = a.get("status", "ok")
    if status == "ok" and result is None:
        status = "no-result" if meta.get("server_up") == "1" else "server-did-not-start"
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "virt": a["virt"],
        "kernel_release": meta.get("kernel_release") or a.get("kernel_release"),
        "kernel_package": a.get("kernel_package"),
        "kernel_spec": a.get("kernel_spec"),
        "driver_requested": a.get("driver"),
        "server_driver": driver,
        "server_workers": workers,
        "server_fallback": fallback,
        "uring_facts": facts,
        "status": status,
        # Why the run failed; for a run that succeeded on its second boot, why the first failed
        # (under TCG some kernels now and then oops during early boot) and that boot's console.
        "failure": (a.get("failure") or None) if status != "ok" else None,
        "earlier_attempts": (
            [
                {
                    "failure": a.get("failure"),
                    "console_tail": read_text(a.get("earlier_console"), 6000),
                }
            ]
            if status == "ok" and a.get("failure")
            else []
        ),
        "streams_requested": int(a["streams"]) if a.get("streams") else None,
        "interval": a.get("interval"),
        "hold": a.get("hold"),
        "rate": a.get("rate"),
        "guest": meta,
        "host": {
            "hostname": a.get("host"),
            "kernel_release": os.uname().release,
            "cpu_model": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in (read_text("/proc/cpuinfo") or "").splitlines()
                    if line.startswith("model name")
                ),
                None,
            ),
            "cores": os.cpu_count(),
        },
        "date": a.get("date"),
        "git_commit": a.get("git_commit"),
        "git_dirty": a.get("git_dirty") == "1",
        "qemu": {
            "command": a.get("qemu_command"),
            "attempts": int(a.get("attempts", "1")),
            "elapsed_s": float(a["elapsed"]) if a.get("elapsed") else None,
        },
        "server_log": server_log,
        "loadgen_log": read_text(path("loadgen_log"), 8000),
        "console_tail": read_text(a.get("console"), 6000) if status != "ok" else None,
        "result": result,
    }
    if a.get("mode") == "capacity":
        doc["mode"] = "capacity"
        doc["guest_memory"] = a.get("mem")
        doc["guest_cpus"] = int(a["smp"]) if a.get("smp") else None
        doc["capacity"] = capacity_analysis(
            path("snapshots"), meta, result, read_text(a.get("console")), doc["streams_requested"]
        )
        # The console of a capacity run says what the kernel thought (OOM, socket limits): keep
        # its end even when the run is ok.
        doc["console_tail"] = read_text(a.get("console"), 6000)
    if status != "ok" and not out.endswith(".failed.json"):
        out = out[: -len(".json")] + ".failed.json" if out.endswith(".json") else out + ".failed.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(out + ".tmp", out)
    print(status, driver or "-", out)
    return 0


def vkey(release):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", release or "")]


def cell_facts(f):
    if not f:
        return "no probe", "-", "-"
    if f.get("setup") != "ok":
        dis = f.get("io_uring_disabled")
        return f"failed: {f.get('setup_error', '?')} (io_uring_disabled {dis})", "-", "-"
    feats = f.get("features") or {}
    on = sum(1 for v in feats.values() if v)
    ops = f.get("opcodes") or []
    notable = [f"{o}" for o, _ in NOTABLE_OPCODES if o in ops]
    newest = notable[-3:] if notable else []
    missing = [o for o, _ in NOTABLE_OPCODES if o not in ops]
    ops_cell = f"{len(ops)}" + (f"; newest: {', '.join(newest)}" if newest else "")
    if missing:
        ops_cell += f"; lacks {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}"
    dis = f.get("io_uring_disabled")
    setup = "ok" + ("" if f.get("monoio_usable", True) else ", monoio: unusable")
    setup += "; io_uring_disabled " + ("absent" if dis is None else f"= {dis}")
    return setup, f"{on}/{len(feats)}", ops_cell


def cell_flags(d):
    """Ring setup flags: what the probe says `auto` takes, and what the server's workers ran."""
    f = d.get("uring_facts") or {}
    auto = f.get("uring_flags_auto") or ("-" if f.get("setup") == "ok" else "n/a")
    if "setup_flags" not in f:
        auto = "-"  # a probe from before the flag chain
    _, workers, _ = server_workers(d.get("server_log"))
    ran = sorted({w["uring_flags"] for w in workers if w.get("driver") == "io_uring" and w.get("uring_flags")})
    ran_cell = ", ".join(ran) if ran else "-"
    # "|" joins the flag names and would split a table cell.
    return f"{auto} → {ran_cell}".replace("|", "\\|")


def cell_inherited(d):
    """Which TCP options accepted sockets inherit from the listener (the probe's check)."""
    t = (d.get("uring_facts") or {}).get("tcp_options_inherited")
    if not isinstance(t, dict):
        return "-"
    got = [k for k in ("nodelay", "keepalive", "user_timeout") if t.get(k)]
    return "all" if len(got) == 3 else (", ".join(got) or "none")


def table(results_dir, out):
    docs = []
    for p in glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True):
        d = read_json(p)
        if isinstance(d, dict) and d.get("schema") == SCHEMA and d.get("mode") != "capacity":
            d["_path"] = os.path.relpath(p, os.path.dirname(os.path.abspath(out)))
            docs.append(d)
    # Newest per (kernel, requested driver, virt, streams).
    latest = {}
    for d in sorted(docs, key=lambda d: d.get("date") or ""):
        k = (d.get("kernel_release"), d.get("driver_requested"), d.get("virt"), d.get("streams_requested"))
        latest[k] = d
    groups = {}
    for d in latest.values():
        g = (d.get("virt") or "", d.get("streams_requested") or 0, d.get("interval"), d.get("hold"), d.get("rate"))
        groups.setdefault(g, []).append(d)
    lines = [
        "# Kernels",
        "",
        "Generated by `bench/kernels/kernels.py table` from the `ringcast-kernels/result` files under",
        "`results/` (written by `bench/kernels.sh`). Each row is one guest boot: the Debian kernel",
        "booted under QEMU, `ringcast --probe-uring` run inside it, the server started with the",
        "requested driver, and `ringcast-loadgen` run against it in the same guest (2 vCPUs, 4 GiB).",
        "",
        "**virt = tcg** means software emulation: 4–20× slower than native and noisy. These rows",
        "show behaviour and capacity (does io_uring set up, which driver runs, are streams held and",
        "every event delivered), not speed; never rank them against native results.",
    ]
    for g in sorted(groups, key=lambda g: (g[0], g[1])):
        virt, n, interval, hold, rate = g
        rows = sorted(groups[g], key=lambda d: (vkey(d.get("kernel_release")), d.get("driver_requested") or ""))
        lines += [
            "",
            f"## {n} streams, {virt}: interval {interval}, hold {hold}, ramp {rate}/s",
            "",
            "| kernel | virt | io_uring setup | FEAT flags | opcodes | driver asked → ran | ring flags: auto → ran | TCP options inherited | streams held / asked | events | missed ids | failures | delivery p99 (ms) | result |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for d in rows:
            setup, feats, ops = cell_facts(d.get("uring_facts"))
            r = d.get("result") or {}
            c = r.get("counters") or {}
            held = "-"
            runs = r.get("runs") or []
            if runs:
                end = (runs[0].get("resources") or {}).get("hold_end") or {}
                held = end.get("open", c.get("peak_open", "-"))
            asked = d.get("streams_requested") or "-"
            failed = c.get("failed") or {}
            fails = sum(failed.values()) if c else None
            fail_cell = "-" if fails is None else str(fails)
            extra = []
            if c.get("streams_ended"):
                extra.append(f"{c['streams_ended']} ended")
            if c.get("stalled_streams"):
                extra.append(f"{c['stalled_streams']} stalled")
            if fails:
                extra.append(", ".join(f"{k} {v}" for k, v in failed.items() if v))
            if extra:
                fail_cell += " (" + "; ".join(extra) + ")"
            if d.get("status") != "ok":
                fail_cell = f"**{d.get('status')}**" + (f": {d['failure']}" if d.get("failure") else "")
            for e in d.get("earlier_attempts") or []:
                why = e.get("failure") or "?"
                why = why.split("console: ", 1)[1].split(";")[0] if "console: " in why else why.split(",")[0]
                fail_cell += f"; ok on boot 2 (boot 1: {why})"
            p99 = ((r.get("percentiles") or {}).get("delivery") or {}).get("p99")
            ran = d.get("server_driver") or "none"
            lines.append(
                "| {k} | {v} | {s} | {f} | {o} | {a} → {ran} | {rf} | {ti} | {h} / {n} | {e} | {m} | {fl} | {p} | [json]({path}) |".format(
                    rf=cell_flags(d),
                    ti=cell_inherited(d),
                    k=d.get("kernel_release"),
                    v=d.get("virt"),
                    s=setup,
                    f=feats,
                    o=ops,
                    a=d.get("driver_requested"),
                    ran=ran,
                    h=held,
                    n=asked,
                    e=c.get("events", "-"),
                    m=c.get("missed_ids", "-"),
                    fl=fail_cell,
                    p="-" if p99 is None else f"{p99 / 1000:.1f}",
                    path=d["_path"],
                )
            )
    lines += [
        "",
        "Columns: *FEAT flags* is the IORING_FEAT bits the kernel reported out of those the probe",
        "knows; *opcodes* is how many opcodes `IORING_REGISTER_PROBE` lists, with the newest of a",
        "few landmark opcodes (PROVIDE_BUFFERS 5.7, MSG_RING 5.18, SEND_ZC 6.0, READ_MULTISHOT 6.7,",
        "BIND 6.11, RECV_ZC/EPOLL_WAIT 6.15) and the first ones it lacks; *driver ran* is what the",
        "server's banner said every worker runs; *ring flags* is the io_uring setup flag set the probe",
        "found `--uring-flags auto` takes (SINGLE_ISSUER|DEFER_TASKRUN from 6.1, COOP_TASKRUN|",
        "TASKRUN_FLAG from 5.19, none before) and what the io_uring workers' banner said they ran",
        "(\"-\": a result from before the flag chain); *TCP options inherited* is the probe's check",
        "that a socket accepted from a listener carrying TCP_NODELAY, keepalive and TCP_USER_TIMEOUT",
        "has them too (the server then sets none per stream); *streams held* is the loadgen's open streams at the",
        "end of the hold; *events* counts every event received, the ramp's included, so it depends",
        "on where the ramp fell on the wall-clock tick grid (compare *missed ids* and *streams held*,",
        "not events); *failures* is failed connection attempts (plus streams that ended or",
        "stalled), and a guest that needed a second boot says why the first failed; *delivery p99*",
        "is receive time minus the event's scheduled time, inside the guest.",
        "",
        f"Regenerated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {out} ({len(latest)} rows)")
    return 0


# ------------------------------------------------------------------ capacity (issue 13)

# Slab caches that only the connecting side (the loadgen) has: port bindings (the accepted
# sockets share the listener's), and what its closed sockets leave behind (timewait sockets).
# They stay in the server-only snapshot, so they are named here rather than inferred.
LOADGEN_ONLY_CACHES = {"tcp_bind_bucket", "tcp_bind2_bucket", "tw_sock_TCP", "request_sock_TCP"}
PAGE = 4096


def parse_slabinfo(text):
    caches = {}
    for line in (text or "").splitlines():
        if line.startswith(("slabinfo", "#")) or ":" not in line:
            continue
        w = line.split()
        try:
            name, active, num, size, perslab, pps = w[0], *map(int, w[1:6])
            slabs = int(line.split("slabdata")[1].split()[1])
        except (ValueError, IndexError):
            continue
        caches[name] = {"active": active, "num": num, "size": size, "bytes": slabs * pps * PAGE}
    return caches


def parse_kb(text):
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def parse_sockstat(text):
    for line in (text or "").splitlines():
        if line.startswith("TCP:"):
            w = line.split()[1:]
            return {w[i]: int(w[i + 1]) for i in range(0, len(w) - 1, 2)}
    return {}


def read_snapshots(path):
    snaps, progress = {}, None
    try:
        tar = tarfile.open(path)
    except (OSError, tarfile.TarError, TypeError):
        return snaps, progress
    with tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            data = tar.extractfile(m).read().decode("utf-8", "replace")
            base = os.path.basename(m.name)
            if base == "progress.txt":
                progress = data
                continue
            name, _, kind = base.partition(".")
            snaps.setdefault(name, {})[kind] = data
    for s in snaps.values():
        s["slab"] = parse_slabinfo(s.get("slabinfo"))
        s["mem"] = parse_kb(s.get("meminfo"))
        s["tcp"] = parse_sockstat(s.get("sockstat"))
        s["server"] = parse_kb(s.get("server_status"))
        s["loadgen"] = parse_kb(s.get("loadgen_status"))
    return snaps, progress


def used(mem):
    try:
        return mem["MemTotal"] - mem["MemFree"] - mem.get("Buffers", 0) - mem.get("Cached", 0)
    except KeyError:
        return None


def capacity_analysis(snap_path, meta, result, console, asked):
    """Per-stream figures from the guest's snapshots (init.sh's capacity flow).

    Streams held: the loadgen's open streams at the end of its hold. User memory: the server's
    VmRSS growth from "up" (no streams) to "hold", and the loadgen's RSS at "hold" (it did not
    exist at "up"), over the streams held; the loadgen's own samples (derived) are kept too.

    Kernel memory, both sides: every slab cache's growth from "up" to "hold" (slab pages held,
    so slack is included) and, as a cross-check that also sees non-slab kernel memory (fd tables,
    page tables, vmalloc), the growth of MemTotal-MemFree-Buffers-Cached less both processes'
    RSS growth. On loopback both ends of a stream are sockets in this one kernel, so those
    figures hold two sockets per stream.

    Kernel memory, server side alone: at "server_only" the server is stopped and the loadgen
    has exited, so the server's half of every connection is still allocated (socket, file,
    inode, dentry, epoll item or pending io_uring request) and the loadgen's is gone. Per cache,
    the server's objects are min(growth at hold, growth at server_only) objects: what appeared
    only after the loadgen left (the FIN each server socket received, timewait sockets) is
    excluded by the min; caches only the connecting side has (LOADGEN_ONLY_CACHES) are left out
    by name. Objects rather than slab pages are counted here because the freed half leaves the
    slabs fragmented; each cache's bytes per object include its slab overhead at "hold". The
    loadgen's kernel share is the rest of the both-sides slab growth.
    """
    snaps, progress = read_snapshots(snap_path)
    res = result or {}
    runs = res.get("runs") or [{}]
    resources = runs[0].get("resources") or {}
    end = resources.get("hold_end") or {}
    c = res.get("counters") or {}
    held = end.get("open") if end else None
    out = {
        "streams_asked": asked,
        "streams_held": held,
        "peak_open": c.get("peak_open"),
        "snapshots": sorted(snaps),
        "progress": (progress or "").splitlines(),
        "loadgen_derived": resources.get("derived"),
        "stopped_by": None,
    }
    up, hold, so = snaps.get("up"), snaps.get("hold"), snaps.get("server_only")
    if up and hold and held:
        d_server_rss = (hold["server"].get("VmRSS") or 0) - (up["server"].get("VmRSS") or 0)
        lg_rss = hold["loadgen"].get("VmRSS")
        out["server_rss_bytes"] = {"up": up["server"].get("VmRSS"), "hold": hold["server"].get("VmRSS")}
        out["loadgen_rss_bytes_hold"] = lg_rss
        out["server_user_bytes_per_stream"] = d_server_rss / held
        out["loadgen_user_bytes_per_stream"] = lg_rss / held if lg_rss else None
        caches = set(up["slab"]) | set(hold["slab"])
        d_hold = {
            k: (hold["slab"].get(k, {}).get("bytes", 0) - up["slab"].get(k, {}).get("bytes", 0))
            for k in caches
        }
        slab_total = sum(d_hold.values())
        out["kernel_slab_bytes_per_stream_both"] = slab_total / held
        u0, u1 = used(up["mem"]), used(hold["mem"])
        if u0 is not None and u1 is not None and lg_rss is not None:
            out["kernel_meminfo_bytes_per_stream_both"] = (u1 - u0 - d_server_rss - lg_rss) / held
        out["meminfo_delta_hold"] = {
            k: hold["mem"].get(k, 0) - up["mem"].get(k, 0)
            for k in ("MemFree", "Slab", "SUnreclaim", "SReclaimable", "PageTables", "KernelStack",
                      "VmallocUsed", "Percpu")
            if k in hold["mem"]
        }
        out["tcp"] = {"up": up["tcp"], "hold": hold["tcp"], "server_only": so["tcp"] if so else None}
        out["tcp_mem_bytes_per_stream_hold"] = (
            (hold["tcp"].get("mem", 0) - up["tcp"].get("mem", 0)) * PAGE / held
        )
        top = sorted(d_hold.items(), key=lambda kv: -kv[1])[:14]
        per_cache = []
        server_total = 0.0
        for k in caches:
            h, u = hold["slab"].get(k), up["slab"].get(k, {"active": 0, "bytes": 0, "num": 0})
            if not h:
                continue
            dh = h["active"] - u["active"]
            ds = (so["slab"].get(k, {}).get("active", 0) - u["active"]) if so else None
            per_obj = h["bytes"] / h["num"] if h["num"] else h["size"]
            mine = 0.0
            if ds is not None and k not in LOADGEN_ONLY_CACHES:
                mine = max(0, min(dh, ds)) * per_obj
            server_total += mine
            if d_hold.get(k, 0) > 0 or mine > 0:
                per_cache.append({
                    "cache": k, "object_size": h["size"], "bytes_per_object": round(per_obj, 1),
                    "objects_hold": dh, "objects_server_only": ds,
                    "bytes_hold": d_hold.get(k, 0), "server_bytes": round(mine),
                })
        per_cache.sort(key=lambda e: -e["bytes_hold"])
        out["slab_caches"] = per_cache[:30]
        out["slab_top_caches_hold"] = [k for k, _ in top]
        if so:
            out["server_kernel_bytes_per_stream"] = server_total / held
            out["loadgen_kernel_bytes_per_stream"] = (slab_total - server_total) / held
            out["server_only_tcp_inuse"] = so["tcp"].get("inuse")
            out["server_rss_bytes"]["server_only"] = so["server"].get("VmRSS")
    # Tick delivery: ticks inside the measuring window that reached every held stream.
    fan = res.get("fanout") or {}
    per_tick = fan.get("per_tick") or {}
    counts = [t.get("count", 0) for _, t in sorted(per_tick.items(), key=lambda kv: int(kv[0]))]
    out["ticks_seen"] = len(counts)
    out["ticks_complete"] = sum(1 for n in counts if held and n >= held)
    out["tick_counts"] = counts
    out["spread_p99_us"] = fan.get("spread_p99_us")
    out["missed_ids"] = c.get("missed_ids")
    out["failed"] = c.get("failed")
    out["server_cpu_us_per_frame_emulated"] = (resources.get("derived") or {}).get("server_cpu_us_per_event")
    out["loadgen_cpu_us_per_frame_emulated"] = (resources.get("derived") or {}).get("loadgen_cpu_us_per_event")
    # What stopped a run short: read from the console and the counters, never assumed.
    why = []
    for pat, what in ((r"Out of memory|oom-kill|invoked oom-killer", "out of memory (OOM killer)"),
                      (r"page allocation failure", "kernel page allocation failure"),
                      (r"TCP: out of memory", "TCP memory limit (tcp_mem)"),
                      (r"too many orphaned sockets", "too many orphaned sockets"),
                      (r"VFS: file-max limit", "fs.file-max"),
                      (r"loadgen over its limit", "the loadgen ran over its time limit")):
        if console and re.search(pat, console):
            why.append(what)
    failed = c.get("failed") or {}
    if any(failed.values()):
        why.append("connection failures: " + ", ".join(f"{k} {v}" for k, v in failed.items() if v))
    if held is not None and asked and held < asked and not why:
        why.append("streams not all open at the end of the hold (ramp ran late)")
    out["stopped_by"] = "; ".join(why) or None
    return out


def fmt_bytes(v):
    return "-" if v is None else f"{v:,.0f}"


def capacity_table(results_dir, out):
    docs = []
    for p in glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True):
        d = read_json(p)
        if isinstance(d, dict) and d.get("schema") == SCHEMA and d.get("mode") == "capacity":
            d["_path"] = os.path.relpath(p, os.path.dirname(os.path.abspath(out)))
            docs.append(d)
    # Every run is a row (each is an hour of emulation, and one that fell short says why), newest
    # kernel first, then by streams asked, driver and date.
    rows = sorted(docs, key=lambda d: (d.get("date") or ""))
    rows.sort(key=lambda d: (d.get("driver_requested") or ""))
    rows.sort(key=lambda d: -(d.get("streams_requested") or 0))
    rows.sort(key=lambda d: vkey(d.get("kernel_release")), reverse=True)
    lines = [
        "# Capacity: idle streams past the host's fd limit (issue 13)",
        "",
        "Generated by `bench/kernels/kernels.py capacity-table` from the `ringcast-kernels/result`",
        "files in this directory (mode `capacity`, written by `bench/kernels.sh --capacity N`). Each",
        "row is one QEMU guest holding the server and the loadgen together (loopback, the loadgen",
        "spread over many 127.0.0.x source addresses), with `ulimit -n 1048576` and the socket",
        "sysctls raised inside it (the values are in each file's `guest`).",
        "",
        "**virt = tcg: software emulation, 4–20× slower than native and noisy.** Memory figures are",
        "what the guest's kernel and processes really allocated and carry over to native hosts with",
        "the same kernel; CPU figures are emulated CPU time and only show the shape (never rank them",
        "against native results). The tick interval is long (60 s and more) because the emulated",
        "CPUs need tens of seconds to deliver one tick to every stream.",
        "",
        "| kernel | virt | driver asked → ran | streams asked / held | interval | ticks complete / seen | missed ids | failures | spread p99 (s) | response head p99 (s) | server user B/stream | server kernel B/stream | loadgen user B/stream | loadgen kernel B/stream | kernel both sides B/stream (slab; meminfo) | server CPU µs/frame (emulated) | guest memory | stopped by | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        cap = d.get("capacity") or {}
        fails = cap.get("failed") or {}
        nfail = sum(fails.values()) if isinstance(fails, dict) else None
        spread = cap.get("spread_p99_us")
        cpu = cap.get("server_cpu_us_per_frame_emulated")
        stopped = cap.get("stopped_by") or ("-" if d.get("status") == "ok" else "")
        if d.get("status") != "ok":
            stopped = f"**{d.get('status')}**" + (f": {d['failure']}" if d.get("failure") else "") + (f"; {cap.get('stopped_by')}" if cap.get("stopped_by") else "")
        heads = (((d.get("result") or {}).get("percentiles") or {}).get("headers") or {}).get("p99")
        both = "{}; {}".format(fmt_bytes(cap.get("kernel_slab_bytes_per_stream_both")),
                               fmt_bytes(cap.get("kernel_meminfo_bytes_per_stream_both")))
        lines.append(
            "| {k} | {v} | {a} → {ran} | {n} / {h} | {i} | {tc} / {ts} | {m} | {f} | {sp} | {hd} | {su} | {sk} | {lu} | {lk} | {both} | {cpu} | {mem} | {st} | [json]({path}) |".format(
                k=d.get("kernel_release"), v=d.get("virt"), a=d.get("driver_requested"),
                ran=d.get("server_driver") or "none", n=d.get("streams_requested"),
                h=cap.get("streams_held", "-"), i=d.get("interval"),
                tc=cap.get("ticks_complete", "-"), ts=cap.get("ticks_seen", "-"),
                m=cap.get("missed_ids", "-"), f="-" if nfail is None else nfail,
                sp="-" if spread is None else f"{spread / 1e6:.1f}",
                hd="-" if heads is None else f"{heads / 1e6:.1f}",
                su=fmt_bytes(cap.get("server_user_bytes_per_stream")),
                sk=fmt_bytes(cap.get("server_kernel_bytes_per_stream")),
                lu=fmt_bytes(cap.get("loadgen_user_bytes_per_stream")),
                lk=fmt_bytes(cap.get("loadgen_kernel_bytes_per_stream")),
                both=both, cpu="-" if cpu is None else f"{cpu:.0f}",
                mem=d.get("guest_memory") or "-", st=stopped, path=d["_path"],
            )
        )
    lines += [
        "",
        "How each column is measured (the code is `capacity_analysis` in bench/kernels/kernels.py):",
        "",
        "- *streams held*: the loadgen's open streams at the end of its hold. *ticks complete / seen*:",
        "  ticks the loadgen saw in its measuring window (after the ramp) that reached every held",
        "  stream, out of all it saw there (the window's last tick can be cut short by its end).",
        "  *missed ids*: gaps in a stream's event ids. *spread p99*: first to last arrival of one",
        "  tick over all streams. *response head p99*: connect to the response head, the ramp's",
        "  queueing under emulation shows here (the loadgen gives up on a connection after its",
        "  `--connect-timeout`, 60 s in the first run, 600 s after it).",
        "- *server user*: the server's VmRSS growth from before the ramp to the idle hold, over the",
        "  streams held. *loadgen user*: the loadgen's whole VmRSS at the hold over the streams.",
        "- *kernel both sides*: slab growth over all caches from before the ramp to the idle hold",
        "  (slab pages, so slack included); after the `;`, the same from /proc/meminfo (MemTotal −",
        "  MemFree − Buffers − Cached) less both processes' RSS growth, which also sees fd tables,",
        "  page tables and vmalloc. On loopback each stream is two sockets in one kernel.",
        "- *server kernel*: the guest stops the server (SIGSTOP) just before the loadgen's end and",
        "  snapshots again once the loadgen has exited: the server still holds its half of every",
        "  connection (socket, file, inode, dentry, epoll item or io_uring request), the loadgen's",
        "  half is gone. Per slab cache the server's share is min(objects grown at the hold, objects",
        "  grown at that server-only point) × the cache's bytes per object; what only appears after",
        "  the loadgen left (the FIN each server socket received, timewait sockets) is cut off by the",
        "  min, and the connecting side's port bindings (`tcp_bind_bucket`, `tcp_bind2_bucket`) are",
        "  left out by name. *loadgen kernel* is the rest of the slab growth. The per-cache figures",
        "  are in each file's `capacity.slab_caches`. Guests boot with `slab_nomerge` so that caches",
        "  are not merged and can be told apart.",
        "- *server CPU per frame*: the server's CPU time during the hold over the events received",
        "  then (the loadgen's `server_cpu_us_per_event`), **emulated**.",
        "",
        f"Regenerated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {out} ({len(rows)} rows)")
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "decode":
        return decode(argv[2], argv[3])
    if len(argv) >= 2 and argv[1] == "wrap":
        return wrap(argv[2], argv[3:])
    if len(argv) >= 4 and argv[1] == "table":
        return table(argv[2], argv[3])
    if len(argv) >= 4 and argv[1] == "capacity-table":
        return capacity_table(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
