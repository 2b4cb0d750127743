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
                              newest result per (kernel, driver, virt, streams) first.

Everything in the table is read from the files: nothing is typed in by hand.
"""

import base64
import datetime
import glob
import json
import os
import re
import sys

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
        if isinstance(d, dict) and d.get("schema") == SCHEMA:
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


def main(argv):
    if len(argv) >= 3 and argv[1] == "decode":
        return decode(argv[2], argv[3])
    if len(argv) >= 2 and argv[1] == "wrap":
        return wrap(argv[2], argv[3:])
    if len(argv) >= 4 and argv[1] == "table":
        return table(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
