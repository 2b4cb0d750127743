//! The SSE side of the server: the handshake byte for byte, the frames and their wall-clock ids,
//! CORS, many concurrent streams, closed and non-reading clients, the stream cap. Every test runs
//! under both drivers (io_uring and epoll).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

both_drivers!(
    handshake_is_exact,
    frames_carry_consecutive_wall_clock_ids,
    event_and_multiline_data_flags,
    http10_and_last_event_id_get_the_stream,
    cors_origin_list,
    closed_clients_are_removed_and_free_their_place,
    a_reconnect_storm_at_the_cap_is_served_without_refusals,
    a_full_server_refuses_after_a_short_wait_without_sweeping_over_and_over,
    non_reading_client_is_dropped_after_skips,
);

/// The handshake, spelled out on purpose: this is the wire format the test pins down (the benchmark
/// floor takes the head from `ringcast::sse::stream_head`, so it follows any change made here).
const HEAD_ANY: &str = "HTTP/1.1 200 OK\r\n\
    Content-Type: text/event-stream\r\n\
    Cache-Control: no-cache\r\n\
    Connection: keep-alive\r\n\
    X-Accel-Buffering: no\r\n\
    Access-Control-Allow-Origin: *\r\n\
    Access-Control-Allow-Methods: *\r\n\
    Access-Control-Allow-Headers: *\r\n\
    \r\n";

fn handshake_is_exact(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "100ms", "--retry", "1500"]);
    let mut c = SseClient::open(server.addr, "");
    assert_eq!(c.head, HEAD_ANY);
    // `retry:` comes once, right after the head, before any tick.
    let first = c.next_event().unwrap();
    assert_eq!(first.retry.as_deref(), Some("1500"));
    assert_eq!(first.id, None);
    let tick = c.next_event().unwrap();
    assert!(tick.retry.is_none() && tick.id.is_some(), "{tick:?}");

    // Accept with parameters and other types, in any case.
    let c = SseClient::open(
        server.addr,
        "Accept: text/html;q=0.9, TEXT/Event-Stream; charset=utf-8\r\n",
    );
    assert_eq!(c.head, HEAD_ANY);
}

fn frames_carry_consecutive_wall_clock_ids(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "100ms"]);
    let mut c = SseClient::open(server.addr, "");
    let events = c.ticks(6);
    let now_tick = now_ms() / 100;
    for e in &events {
        assert_eq!(e.event.as_deref(), Some("message"));
        assert_eq!(e.data, vec!["hello".to_string()]);
    }
    server.assert_no_gaps(&events);
    // ids count whole intervals since the Unix epoch: the last one is due by now, and not long ago.
    let last = events.last().unwrap().id_num();
    assert!(
        last <= now_tick,
        "id {last} is in the future (now {now_tick})"
    );
    assert!(
        now_tick - last < 100,
        "id {last} is far behind the clock ({now_tick})"
    );
    // the raw frame, byte for byte
    let mut raw = SseClient::open(server.addr, "");
    let mut buf = [0u8; 256];
    let n = raw.stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    let id = text
        .strip_prefix("id: ")
        .unwrap()
        .split('\n')
        .next()
        .unwrap();
    assert_eq!(text, format!("id: {id}\nevent: message\ndata: hello\n\n"));
}

fn event_and_multiline_data_flags(driver: &str) {
    let server = TestServer::start(
        driver,
        &[
            "--interval",
            "100ms",
            "--event",
            "tick",
            "--data",
            "one\ntwo\r\nthree",
        ],
    );
    let mut c = SseClient::open(server.addr, "");
    let e = &c.ticks(1)[0];
    assert_eq!(e.event.as_deref(), Some("tick"));
    assert_eq!(e.data, vec!["one", "two", "three"]);
}

fn http10_and_last_event_id_get_the_stream(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "100ms"]);
    let mut c = SseClient::open_with(
        connect(server.addr),
        "GET / HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    );
    assert_eq!(c.head, HEAD_ANY);
    server.assert_no_gaps(&c.ticks(2));
    // Last-Event-ID (header or query) is accepted; the stream continues with the next tick.
    let mut c = SseClient::open(server.addr, "Last-Event-ID: 12345\r\n");
    let e = c.ticks(2);
    assert!(e[0].id_num() > 12345);
    server.assert_no_gaps(&e);
    let mut c = SseClient::open_with(
        connect(server.addr),
        "GET /?lastEventId=7 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    );
    server.assert_no_gaps(&c.ticks(2));
}

fn cors_origin_list(driver: &str) {
    let server = TestServer::start(
        driver,
        &[
            "--interval",
            "100ms",
            "--cors-origin",
            "http://allowed.example",
            "--cors-origin",
            "http://other.example:3000",
        ],
    );
    let mut c = SseClient::open(server.addr, "Origin: http://allowed.example\r\n");
    assert!(c.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", c.head);
    assert!(c
        .head
        .contains("\r\nAccess-Control-Allow-Origin: http://allowed.example\r\n"));
    assert!(c
        .head
        .contains("\r\nAccess-Control-Allow-Credentials: true\r\n"));
    assert!(!c.head.contains("Allow-Origin: *"));
    c.ticks(1);

    let refused = request(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nOrigin: http://evil.example\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    assert!(!refused.contains("Access-Control-Allow-Origin"));

    let pre = request(
        server.addr,
        b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: http://other.example:3000\r\n\
          Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: last-event-id\r\n\r\n",
    );
    assert!(pre.starts_with("HTTP/1.1 204 "), "{pre}");
    assert!(pre.contains("\r\nAccess-Control-Allow-Origin: http://other.example:3000\r\n"));
    assert!(pre.contains("\r\nAccess-Control-Allow-Credentials: true\r\n"));
    assert!(pre.contains("\r\nAccess-Control-Allow-Headers: last-event-id\r\n"));

    // Without an Origin (not a browser), the stream is served.
    let c = SseClient::open(server.addr, "");
    assert!(c.head.starts_with("HTTP/1.1 200 OK\r\n"));
}

fn closed_clients_are_removed_and_free_their_place(driver: &str) {
    let mut server = TestServer::start(driver, &["--interval", "100ms", "--max-streams", "10"]);
    let mut clients: Vec<SseClient> = (0..10).map(|_| SseClient::open(server.addr, "")).collect();
    for c in &mut clients {
        c.ticks(1);
    }
    // At the cap: 503 with Retry-After.
    let busy = request(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    );
    assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
    assert!(busy.contains("\r\nRetry-After: 1\r\n"), "{busy}");

    // Four clients leave; their places come back once the server notices (within two ticks).
    for c in clients.drain(..4) {
        drop(c);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut reopened = Vec::new();
    while reopened.len() < 4 {
        assert!(Instant::now() < deadline, "closed streams were not removed");
        let c = SseClient::open(server.addr, "");
        if c.head.starts_with("HTTP/1.1 200") {
            reopened.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The six that stayed kept receiving without a gap.
    for c in &mut clients {
        server.assert_no_gaps(&c.ticks(3));
    }
    // Everyone leaves: every stream is noticed gone (within two ticks each).
    drop(reopened);
    drop(clients);
    wait_for_series(&server, "ringcast_streams_open{worker=\"total\"}", 0.0);
    let s = server.stop_and_summary();
    assert_eq!(s.get("streams_served"), 14);
    assert_eq!(s.get("dropped_client_gone"), 14, "{}", s.0);
}

fn non_reading_client_is_dropped_after_skips(driver: &str) {
    // Big frames fill a non-reader's socket buffers within a tick. The interval is long enough
    // that the reader, on its own thread, is never the one that falls --max-skips ticks behind,
    // however loaded the machine.
    let data = "x".repeat(100_000);
    let mut server = TestServer::start(
        driver,
        &["--interval", "500ms", "--data", &data, "--max-skips", "3"],
    );
    let reader = ReaderThread::start(SseClient::open(server.addr, ""));
    reader.wait_for(1);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let mut stuck: std::net::TcpStream = sock.into();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    // The server drops the non-reader, counted as closed for skips.
    wait_for_series(
        &server,
        "ringcast_streams_closed_total{worker=\"total\",reason=\"skips_exceeded\"}",
        1.0,
    );
    // Its connection was reset: reading on ends in an error or EOF, not in more events forever.
    stuck.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let reset = loop {
        match stuck.read(&mut sink) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(reset, "the server resets a dropped non-reader");
    // The reader kept receiving, without a gap, and still does.
    reader.wait_for(reader.count() + 2);
    assert_eq!(metric(&server, "streams_open"), 1.0);
    let received = reader.stop();
    server.assert_no_gaps(&received);
    assert_eq!(received[0].data[0].len(), 100_000);
    drop(stuck);
    let s = server.stop_and_summary();
    assert_eq!(s.get("dropped_skips"), 1, "{}", s.0);
    assert!(s.get("frames_skipped") >= 3, "{}", s.0);
}

/// Every client drops at once and reconnects before any write could notice (ticks a minute
/// apart): the server is at its cap with streams whose clients are gone, and must reclaim those
/// places rather than refuse the reconnections (a 503 ends an EventSource for good).
fn a_reconnect_storm_at_the_cap_is_served_without_refusals(driver: &str) {
    const N: usize = 40;
    let server = TestServer::start(driver, &["--interval", "60s", "--max-streams", "40"]);
    let open = |path: &str| {
        let mut s = connect(server.addr);
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        SseClient::open_with(s, "")
    };
    // Half tick streams, half channel streams.
    let path = |i: usize| {
        if i.is_multiple_of(2) {
            "/"
        } else {
            "/events?channel=storm"
        }
    };
    let first: Vec<SseClient> = (0..N).map(|i| open(path(i))).collect();
    assert!(first.iter().all(|c| c.head.starts_with("HTTP/1.1 200")));
    wait_for_series(&server, "ringcast_streams_open{worker=\"total\"}", N as f64);
    drop(first);
    let second: Vec<SseClient> = (0..N).map(|i| open(path(i))).collect();
    let refused = second
        .iter()
        .filter(|c| !c.head.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(refused, 0, "reconnections refused during the storm");
    assert_eq!(metric(&server, "streams_reclaimed_total"), N as f64);
    wait_for_series(&server, "ringcast_streams_open{worker=\"total\"}", N as f64);
}

/// At the cap with live clients there is nothing to reclaim: an over-cap stream request is
/// refused with 503 after its short wait, and the sweeps back off instead of running every few
/// milliseconds for as long as requests keep coming.
fn a_full_server_refuses_after_a_short_wait_without_sweeping_over_and_over(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "60s", "--max-streams", "10"]);
    let live: Vec<SseClient> = (0..10).map(|_| SseClient::open(server.addr, "")).collect();
    assert!(live.iter().all(|c| c.head.starts_with("HTTP/1.1 200")));
    let over = 20;
    for _ in 0..over {
        let busy = request(
            server.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        );
        assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
    }
    assert_eq!(metric(&server, "streams_reclaimed_total"), 0.0);
    // Each refusal waited ~250 ms: without the back-off, every core would have swept every
    // 20 ms of that (and asked the other to), hundreds of sweeps in all.
    let sweeps = metric(&server, "reclaim_sweeps_total");
    assert!(
        (1.0..=60.0).contains(&sweeps),
        "{sweeps} sweeps for {over} refused requests"
    );
    drop(live);
}
