#!/usr/bin/env python3
"""Connect/disconnect churn against an SSE server, for bench/soak.sh.

Keeps about STREAMS event streams open; each lives an exponentially distributed lifetime (mean
STREAMS / RATE seconds, so about RATE streams close and reopen per second), some close abruptly
mid-stream and some ask for Last-Event-ID. Prints one JSON line per second on stdout with what the
client side sees (open streams, opened, closed, events, errors) so the soak script can compare it
with the server's own gauge. Plain asyncio: the churn rates of a soak are far below what it can do.
"""

import argparse
import asyncio
import json
import random
import sys
import time

stats = {"open": 0, "opened": 0, "closed": 0, "events": 0, "errors": 0, "refused": 0}


async def one_stream(host, port, source, lifetime):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), 10
        )
    except (OSError, asyncio.TimeoutError):
        stats["errors"] += 1
        return
    try:
        extra = "Last-Event-ID: 1\r\n" if random.random() < 0.2 else ""
        writer.write(
            f"GET /soak HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            stats["refused"] += 1
            return
        stats["open"] += 1
        stats["opened"] += 1
        deadline = time.monotonic() + lifetime
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), left)
                except asyncio.TimeoutError:
                    break
                if not chunk:
                    stats["errors"] += 1
                    break
                stats["events"] += chunk.count(b"\n\n")
        finally:
            stats["open"] -= 1
            stats["closed"] += 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        stats["errors"] += 1
    finally:
        writer.close()


async def slot(args, index, stop):
    sources = [f"127.0.0.{i}" for i in range(2, 2 + args.sources)]
    mean = args.streams / args.rate
    while not stop.is_set():
        await one_stream(args.host, args.port, sources[index % len(sources)], random.expovariate(1 / mean))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--rate", type=float, default=100.0, help="stream reconnects per second")
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2..")
    args = p.parse_args()
    stop = asyncio.Event()
    tasks = []
    for i in range(args.streams):
        tasks.append(asyncio.create_task(slot(args, i, stop)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        await asyncio.sleep(1)
        print(json.dumps({"t": time.time(), **stats}), flush=True)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"t": time.time(), "final": True, **stats}), flush=True)


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
