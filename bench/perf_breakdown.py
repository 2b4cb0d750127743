#!/usr/bin/env python3
"""perf_breakdown: where a server's CPU goes, by thread and by system call, from `perf script`.

bench/profile.sh records the server with `perf record -g` during a loadgen window and pipes
`perf script -F comm,ip,sym,dso` through this. Each sample is put under its thread (the workers
`ringcast-wN` together, the admin thread, the rest) and under the outermost system call on its
stack (`sendto`, `io_uring_enter`, `epoll_wait`, ...), or `user` when it was in user space with
no system call below it, or `kernel (no syscall)` for interrupts and softirqs that landed on the
thread. Shares are of all the server's samples; given the loadgen's CPU per delivered frame
(`--us-per-frame`), each share is also turned into microseconds per frame, so two cases (one
channel, 1,000 channels) can be compared part by part. A last row per thread counts the samples,
in any part, that were waking a loopback reader (`sock_def_readable` on the stack): the kernel
charges the receiving side's processing to the sender on loopback, and that wake-up depends on
how the reader sleeps, not on the server.

Usage: perf script -F comm,ip,sym,dso -i perf.data | perf_breakdown.py --label CASE
           [--us-per-frame X] [--top N] [--json OUT]
"""

import argparse
import collections
import json
import re
import sys

# A TCP socket's data-ready callback: on loopback the sender runs the receiver's side too, and
# this is where it wakes the reading task (an IPI when that task sleeps on another CPU).
WAKE = "sock_def_readable"
SYSCALL = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|__ia32_sys_)(\w+)")


def thread_group(comm):
    if re.fullmatch(r"ringcast-w\d+", comm):
        return "workers"
    if comm == "ringcast-admin":
        return "admin"
    if comm.startswith("ringcast-redis") or comm.startswith("ringcast-engine"):
        return "engine"
    return "other"


def samples(lines):
    """Yields (comm, [(symbol, in the kernel) innermost first]) per sample of `perf script`."""
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line[0].isspace():
            if comm is not None:
                yield comm, frames
            comm, frames = line.split()[0], []
        else:
            parts = line.split(None, 1)
            if len(parts) > 1:
                sym, _, dso = parts[1].strip().rpartition(" (")
                frames.append((sym.split("+")[0], dso.startswith("[kernel")))
    if comm is not None:
        yield comm, frames


def category(frames):
    """The outermost system call on the stack, else where the sample landed."""
    for sym, _ in reversed(frames):  # outermost first
        m = SYSCALL.match(sym)
        if m:
            return m.group(1)
    if frames and frames[0][1]:
        return "kernel (no syscall)"
    return "user"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--us-per-frame", type=float)
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--json")
    a = ap.parse_args(argv[1:])

    by_thread = collections.Counter()
    by_cat = collections.defaultdict(collections.Counter)
    waking = collections.Counter()
    for comm, frames in samples(sys.stdin):
        g = thread_group(comm)
        by_thread[g] += 1
        by_cat[g][category(frames)] += 1
        if any(sym == WAKE for sym, _ in frames):
            waking[g] += 1
    total = sum(by_thread.values())
    if total == 0:
        print(f"perf_breakdown: no samples for {a.label}", file=sys.stderr)
        return 1

    def us(n):
        return None if a.us_per_frame is None else a.us_per_frame * n / total

    out = {"label": a.label, "samples": total, "us_per_frame": a.us_per_frame, "threads": {}}
    print(f"### {a.label}: {total} samples" + (f", {a.us_per_frame:.2f} µs CPU per frame" if a.us_per_frame else ""))
    print()
    print("| thread | part | share of the server's samples | µs per frame |")
    print("|---|---|---|---|")
    for g, n in by_thread.most_common():
        parts = by_cat[g].most_common()
        out["threads"][g] = {"samples": n, "parts": dict(parts), "waking_reader": waking[g]}
        u = us(n)
        print(f"| {g} | all | {100 * n / total:.1f} % | {'' if u is None else f'{u:.2f}'} |")
        shown = parts[: a.top]
        rest = sum(c for _, c in parts[a.top :])
        for cat, c in shown + ([("(rest)", rest)] if rest else []):
            u = us(c)
            print(f"| | {cat} | {100 * c / total:.1f} % | {'' if u is None else f'{u:.2f}'} |")
        if waking[g]:
            u = us(waking[g])
            print(
                f"| | of all these: waking a reader (`{WAKE}` on the stack) | "
                f"{100 * waking[g] / total:.1f} % | {'' if u is None else f'{u:.2f}'} |"
            )
    print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
