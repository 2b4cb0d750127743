#!/usr/bin/env python3
"""cluster_probe: the readings bench/cluster.sh takes besides the loadgen's (Python 3 standard
library only; process samples come from bench/sysprobe.py, so both scenarios measure alike).

cluster.sh is bash for orchestration; what needs sockets, JSON or arithmetic lives here:

- Redis's own view: `INFO cpu stats commandstats` over a plain RESP socket (no redis-cli
  needed): how many XADDs ran in a window (the events published, counted where they were
  stored) and the microseconds Redis spent in each command;
- the CPU of the redis-server process and of each node over the same instants as the loadgen's
  window, from /proc (stat, and schedstat, whose nanoseconds resolve the few milliseconds
  Redis spends on a few hundred events, where stat's 10 ms ticks cannot);
- a node's admin /metrics: wait until a gauge reaches a value (streams subscribed before the
  kill, all streams back on the survivor after it), timing how long that took.

Commands:
  ping PORT TIMEOUT                 wait until Redis on 127.0.0.1:PORT answers PING
  redis-info PORT                   INFO cpu stats commandstats, parsed, as JSON
  window OUT T1 T2 ... [--pid NAME=PID]... [--redis PORT]
                                    at each unix time Ti (in order) sample every named process
                                    tree and Redis's INFO; write the list of samples to OUT
  wait-metric URL NAME MIN TIMEOUT  poll URL (/metrics) every 50 ms until the sample NAME (its
                                    unlabelled or {worker="total"} line) is >= MIN; print JSON
                                    {"reached", "value", "seconds", "start_unix", "end_unix"}
"""

import json
import os
import socket
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sysprobe  # noqa: E402


def redis_command(port, *words, timeout=5.0):
    """One command as a RESP array; returns the reply's payload (bulk string or status)."""
    req = f"*{len(words)}\r\n".encode()
    for w in words:
        b = w.encode()
        req += f"${len(b)}\r\n".encode() + b + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            buf += chunk
        head, rest = buf.split(b"\r\n", 1)
        if head[:1] in (b"+", b"-", b":"):
            return head[1:].decode()
        if head[:1] != b"$":
            raise OSError(f"unexpected reply {head[:20]!r}")
        n = int(head[1:])
        while len(rest) < n + 2:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            rest += chunk
        return rest[:n].decode()


def parse_info(text):
    """INFO text -> {"cpu": {...}, "stats": {...}, "commandstats": {"xadd": {"calls":..,"usec":..}}}."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# "):
            section = line[2:].strip().lower()
            out.setdefault(section, {})
            continue
        if not line or ":" not in line or section is None:
            continue
        k, v = line.split(":", 1)
        if section == "commandstats" and k.startswith("cmdstat_"):
            fields = {}
            for part in v.split(","):
                if "=" in part:
                    fk, fv = part.split("=", 1)
                    try:
                        fields[fk] = float(fv) if "." in fv else int(fv)
                    except ValueError:
                        fields[fk] = fv
            out[section][k[len("cmdstat_"):]] = fields
        else:
            try:
                out[section][k] = float(v) if "." in v else int(v)
            except ValueError:
                out[section][k] = v
    return out


def redis_info(port):
    try:
        return parse_info(redis_command(port, "INFO", "cpu", "stats", "commandstats"))
    except OSError as e:
        return {"error": str(e)}


def window(out, times, pids, redis_port):
    samples = []
    for t in times:
        time.sleep(max(0.0, t - time.time()))
        s = {"unix_time": time.time(), "procs": {}}
        for name, pid in pids.items():
            s["procs"][name] = sysprobe.sample(pid) if os.path.exists(f"/proc/{pid}") else None
        if redis_port:
            s["redis"] = redis_info(redis_port)
        samples.append(s)
    with open(out, "w") as f:
        json.dump(samples, f)


def metric(url, name):
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        for prefix in (name + " ", name + '{worker="total"} '):
            if line.startswith(prefix):
                return float(line[len(prefix):].strip())
    return None


def wait_metric(url, name, least, timeout):
    start = time.time()
    value = None
    while True:
        try:
            value = metric(url, name)
        except OSError:
            value = None
        now = time.time()
        if value is not None and value >= least:
            return {"reached": True, "value": value, "seconds": now - start,
                    "start_unix": start, "end_unix": now}
        if now - start >= timeout:
            return {"reached": False, "value": value, "seconds": now - start,
                    "start_unix": start, "end_unix": now}
        time.sleep(0.05)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "ping":
        port, limit = int(argv[2]), float(argv[3])
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                if redis_command(port, "PING", timeout=1.0) == "PONG":
                    return 0
            except OSError:
                pass
            time.sleep(0.05)
        print(f"redis on port {port} did not answer PING", file=sys.stderr)
        return 1
    if cmd == "redis-info":
        print(json.dumps(redis_info(int(argv[2])), indent=2))
        return 0
    if cmd == "window":
        out, rest = argv[2], argv[3:]
        times, pids, redis_port = [], {}, None
        it = iter(rest)
        for a in it:
            if a == "--pid":
                name, pid = next(it).split("=", 1)
                pids[name] = int(pid)
            elif a == "--redis":
                redis_port = int(next(it))
            else:
                times.append(float(a))
        window(out, times, pids, redis_port)
        return 0
    if cmd == "wait-metric":
        url, name, least, limit = argv[2], argv[3], float(argv[4]), float(argv[5])
        r = wait_metric(url, name, least, limit)
        print(json.dumps(r))
        return 0 if r["reached"] else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
