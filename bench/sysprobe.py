#!/usr/bin/env python3
"""sysprobe: the /proc readings and small JSON chores of bench/run.sh (Python 3 standard library only).

run.sh is bash for orchestration; the parts that need arithmetic or JSON live here, so the
script stays readable and nothing beyond python3 is required. What it measures that the loadgen
does not:

- the CPU time of the kernel's `ksoftirqd/N` threads (io_uring moves part of the loopback
  receive work there, where the server's own CPU time does not show it);
- the server's whole process tree (nginx runs a master and worker processes; the loadgen samples
  only the pid it is given): CPU time, RSS and PSS summed over the pid and its descendants;

both at the start and the end of the loadgen's measuring window (run.sh computes those instants
from the loadgen's plan: start + 0.2 s + ramp + warmup, and end - 0.6 s), written beside the
result as `<result>.bench.json`. It also prints the host facts and parses wrk's output.

Commands:
  facts                      host facts as JSON (kernel, CPU, memory, fd limits, sysctls)
  facts-text                 the same, human-readable
  sample PID                 one sample as JSON
  window PID T1 T2 OUT       sample at unix times T1 and T2, write [s1, s2] to OUT
  sidecar OUT k=v ... [--json k=FILE] [--text k=FILE] [--str k=v]
                             write the sidecar JSON (k=v values are parsed as JSON when they can be)
  wrk OUT k=v ... < wrk-output               parse wrk's text output into a JSON record
  free-port                  print a free TCP port on 127.0.0.1
"""

import json
import os
import re
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    s = read(f"/proc/{pid}/stat")
    if s is None:
        return None, None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    return comm, s[s.rindex(")") + 2 :].split()


def cpu_us(pid):
    _, f = stat_fields(pid)
    if f is None:
        return None
    # utime, stime are fields 14, 15 of the line: 11, 12 after the name and state.
    return (int(f[11]) + int(f[12])) * 1_000_000 // CLK_TCK


def sched_ns(pid):
    """CPU time in ns from schedstat (finer than stat's clock ticks), summed over the threads."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        s = read(f"/proc/{pid}/task/{tid}/schedstat")
        if s:
            total += int(s.split()[0])
    return total


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ksoftirqd_cpu():
    """(CPU µs from stat, CPU ns from schedstat, thread count) of the ksoftirqd/N threads."""
    total, ns, pids = 0, 0, []
    for pid in all_pids():
        comm, f = stat_fields(pid)
        if comm and comm.startswith("ksoftirqd/") and f:
            total += (int(f[11]) + int(f[12])) * 1_000_000 // CLK_TCK
            ns += sched_ns(pid) or 0
            pids.append(pid)
    return total, ns, len(pids)


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for p in all_pids():
        _, f = stat_fields(p)
        if f:
            children.setdefault(int(f[1]), []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kb_field(text, key):
    if text is None:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def sample(pid):
    pids = tree(pid)
    cpu = rss = pss = ns = 0
    for p in pids:
        cpu += cpu_us(p) or 0
        ns += sched_ns(p) or 0
        rss += kb_field(read(f"/proc/{p}/status"), "VmRSS") or 0
        pss += kb_field(read(f"/proc/{p}/smaps_rollup"), "Pss") or 0
    ksoft, ksoft_ns, nksoft = ksoftirqd_cpu()
    return {
        "unix_time": time.time(),
        "ksoftirqd_cpu_us": ksoft,
        "ksoftirqd_sched_ns": ksoft_ns,
        "ksoftirqd_threads": nksoft,
        "server_pids": pids,
        "server_tree_cpu_us": cpu,
        "server_tree_sched_ns": ns,
        "server_tree_rss_bytes": rss,
        "server_tree_pss_bytes": pss,
    }


def sysctl(name):
    v = read("/proc/sys/" + name.replace(".", "/"))
    return " ".join(v.split()) if v is not None else None


SYSCTLS = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "fs.nr_open",
    "fs.file-max",
    "kernel.io_uring_disabled",
]


def virt():
    """What the machine runs on: systemd-detect-virt (container or VM) and the CPU's hypervisor flag."""
    import shutil
    import subprocess

    parts = []
    if shutil.which("systemd-detect-virt"):
        r = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True)
        if r.stdout.strip() and r.stdout.strip() != "none":
            parts.append(r.stdout.strip())
    vendor = (read("/sys/class/dmi/id/sys_vendor") or "").strip()
    product = (read("/sys/class/dmi/id/product_name") or "").strip()
    flags = re.search(r"^flags\s*:(.*)$", read("/proc/cpuinfo") or "", re.M)
    if flags and " hypervisor" in flags.group(1):
        detail = " ".join(x for x in (vendor, product) if x)
        parts.append(f"vm ({detail})" if detail else "vm (hypervisor flag)")
    if parts:
        return ", ".join(parts)
    return "bare metal (no hypervisor flag)" if flags else None


def facts():
    import resource

    cpuinfo = read("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "hostname": socket.gethostname(),
        "kernel_release": os.uname().release,
        "kernel_version": os.uname().version,
        "cpu_model": m.group(1).strip() if m else None,
        "cores": os.cpu_count(),
        "virt": virt(),
        "memory_bytes": kb_field(read("/proc/meminfo"), "MemTotal"),
        "nofile_soft": soft,
        "nofile_hard": hard,
        "sysctls": {k: sysctl(k) for k in SYSCTLS},
    }


def value(v):
    try:
        return json.loads(v)
    except ValueError:
        return v


def kv(args):
    out = {}
    it = iter(args)
    for a in it:
        if a == "--json":
            k, path = next(it).split("=", 1)
            text = read(path)
            out[k] = json.loads(text) if text else None
        elif a == "--text":
            k, path = next(it).split("=", 1)
            out[k] = read(path)
        elif a == "--str":
            k, v = next(it).split("=", 1)
            out[k] = v
        else:
            k, v = a.split("=", 1)
            out[k] = value(v)
    return out


def unit(num, suffix, table):
    return float(num) * table.get(suffix, 1)


TIME = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
SI = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def parse_wrk(text):
    """The figures of wrk 4's default report (with --latency)."""
    r = {}
    m = re.search(r"Latency\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", text)
    if m:
        r["latency_avg_us"] = unit(m.group(1), m.group(2), TIME)
        r["latency_stdev_us"] = unit(m.group(3), m.group(4), TIME)
        r["latency_max_us"] = unit(m.group(5), m.group(6), TIME)
    dist = {}
    for p, num, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(\w+)\s*$", text, re.M):
        dist["p" + p] = unit(num, u, TIME)
    if dist:
        r["latency_percentiles_us"] = dist
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    if m:
        r["requests"] = int(m.group(1))
        r["duration_us"] = unit(m.group(2), m.group(3), TIME)
        r["bytes_read"] = unit(m.group(4), m.group(5), BYTES)
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["requests_per_s"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    if m:
        r["transfer_bytes_per_s"] = unit(m.group(1), m.group(2), BYTES)
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    r["socket_errors"] = (
        dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups())))
        if m
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non_2xx_3xx"] = int(m.group(1)) if m else 0
    return r


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "facts":
        print(json.dumps(facts(), indent=2))
    elif cmd == "facts-text":
        f = facts()
        print(f"host       {f['hostname']}")
        print(f"kernel     {f['kernel_release']} ({f['kernel_version']})")
        print(f"cpu        {f['cpu_model']}, {f['cores']} cores, virtualization: {f['virt']}")
        print(f"memory     {f['memory_bytes'] / 2**30:.1f} GiB")
        print(f"open files soft {f['nofile_soft']}, hard {f['nofile_hard']} (per process)")
        for k, v in f["sysctls"].items():
            print(f"sysctl     {k} = {v}")
    elif cmd == "sample":
        print(json.dumps(sample(int(argv[2]))))
    elif cmd == "window":
        pid, t1, t2, out = int(argv[2]), float(argv[3]), float(argv[4]), argv[5]
        samples = []
        for t in (t1, t2):
            time.sleep(max(0.0, t - time.time()))
            samples.append(sample(pid))
        with open(out, "w") as f:
            json.dump(samples, f)
    elif cmd == "sidecar":
        out = argv[2]
        doc = {"schema": "ringcast-bench/sidecar", "schema_version": 1}
        doc.update(kv(argv[3:]))
        with open(out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    elif cmd == "wrk":
        out = argv[2]
        raw = sys.stdin.read()
        doc = {"schema": "ringcast-bench/wrk", "schema_version": 1}
        doc.update(kv(argv[3:]))
        doc["wrk"] = parse_wrk(raw)
        doc["wrk_output"] = raw
        with open(out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    elif cmd == "free-port":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
