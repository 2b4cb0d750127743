//! criterion micro-benchmarks of the ringcast library's per-request and per-tick work
//! (`cargo bench --bench micro`): what the request phase costs per request (parsing and
//! classification with `http::parse`, the whole sans-IO `Session` including the answer and buffer
//! handling) and what encoding one tick's frame costs (`FrameEncoder::encode`, done once per
//! worker per tick). They isolate the user-space pieces that the end-to-end runs of
//! `bench/run.sh` cannot separate from the kernel's TCP path; they report what they measure and
//! assert nothing. The tick walk itself needs sockets and a runtime, so it is measured end to end
//! (CPU per delivered frame against the floor), not here.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::http::{self, Responses};
use ringcast::session::Session;
use ringcast::sse::FrameEncoder;
use ringcast::Config;

/// What `new EventSource(url)` in Chromium sends.
const EVENTSOURCE: &[u8] = b"GET /events HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
Connection: keep-alive\r\n\
Accept: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Origin: http://localhost:3000\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Referer: http://localhost:3000/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\r\n";

/// What wrk sends on the `ok` path.
const PLAIN: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// The loadgen's request, which names text/event-stream among other types with q-values.
const LOADGEN: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
Accept: text/html;q=0.5, text/event-stream;q=0.9, */*;q=0.1\r\n\
Cache-Control: no-cache\r\nLast-Event-ID: 897826010\r\n\r\n";

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("http::parse");
    for (name, req) in [
        ("eventsource", EVENTSOURCE),
        ("plain_get", PLAIN),
        ("accept_list", LOADGEN),
    ] {
        g.throughput(Throughput::Bytes(req.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = http::parse(black_box(req), 1 << 20);
                black_box(matches!(v, http::Verdict::Request(_)))
            })
        });
    }
    g.finish();
}

fn session(c: &mut Criterion) {
    let cfg = Config::default();
    let responses = Responses::new(&cfg);
    let mut g = c.benchmark_group("session::process");
    // One request into a fresh session: the request phase of a stream.
    g.bench_function("eventsource_to_stream", |b| {
        b.iter_batched(
            || {
                let mut s = Session::default();
                s.buf.extend_from_slice(EVENTSOURCE);
                s
            },
            |mut s| black_box(s.process(&responses, 1 << 20)),
            BatchSize::SmallInput,
        )
    });
    // 16 pipelined `ok` requests answered in one call: the keep-alive path wrk drives.
    let pipelined: Vec<u8> = PLAIN.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("pipelined_ok_x16", |b| {
        b.iter_batched(
            || {
                let mut s = Session::default();
                s.buf.extend_from_slice(&pipelined);
                s
            },
            |mut s| black_box(s.process(&responses, 1 << 20)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse::FrameEncoder::encode");
    let hello = FrameEncoder::new("message", "hello");
    let mut tick = 897_826_010u64;
    g.bench_function("message_hello", |b| {
        b.iter(|| {
            tick += 1;
            black_box(hello.encode(black_box(tick)))
        })
    });
    let multi = FrameEncoder::new("update", "line one\nline two\r\nline three");
    g.bench_function("three_data_lines", |b| {
        b.iter(|| black_box(multi.encode(black_box(tick))))
    });
    g.finish();
}

criterion_group!(benches, parse, session, encode);
criterion_main!(benches);
