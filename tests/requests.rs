//! The plain-HTTP side: `ok` with keep-alive and pipelining, HEAD, bodies, and every kind of bad
//! input answered with its status while a stream on the same server keeps receiving every tick;
//! how connections end (a lingering close after a body, a silent kept-alive connection).
//! Every test runs under both drivers.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

both_drivers!(
    ok_keep_alive_and_pipelining,
    bad_input_gets_its_status_and_streams_go_on,
    host_values_the_rfc_allows_are_served,
    connect_is_refused_with_allow_and_closed,
    close_with_an_unread_body_is_a_lingering_close,
    idle_kept_alive_connection_is_closed_without_an_answer,
);

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

fn ok_keep_alive_and_pipelining(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "1s"]);
    let mut s = connect(server.addr);
    // three pipelined requests in one write, one of them with a body, then a HEAD
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /q?x=1 HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(read_response(&mut s), OK);
    }
    // the same connection serves more requests: a body split across writes, then HEAD. The
    // answer comes once the head is in, so reading it first proves the rest of the body arrives
    // in a later read of the server's.
    s.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .unwrap();
    assert_eq!(read_response(&mut s), OK);
    s.write_all(b"56789HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 64];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &OK.as_bytes()[..64]);
    // Connection: close is honoured
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s);
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Connection: close"),
        "{r}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // HTTP/1.0: closed after the answer unless asked to keep it
    let r = request(server.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        r.ends_with("\r\n\r\nok") && r.contains("Connection: close"),
        "{r}"
    );
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).contains("Connection: keep-alive"));
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).ends_with("ok"));

    // A GET that does not ask for a stream is `ok`; a non-GET that does, too.
    let r = request(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r, OK);
}

/// Sends `raw` on a fresh connection and returns the status code of the answer, checking the
/// server closes the connection after it.
fn status_of(addr: std::net::SocketAddr, raw: &[u8]) -> u16 {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    let r = read_response(&mut s);
    let status = r[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("status in {r:?}"));
    assert!(r.contains("Connection: close\r\n"), "{r}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // EOF (or a reset) after the error response
    status
}

fn bad_input_gets_its_status_and_streams_go_on(driver: &str) {
    let mut server = TestServer::start(
        driver,
        &[
            "--interval",
            "100ms",
            "--header-timeout",
            "1s",
            "--max-body",
            "1000",
        ],
    );
    let mut watcher = SseClient::open(server.addr, "");
    let mut seen = watcher.ticks(1);
    let addr = server.addr;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        ("bad method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("bad version", b"GET / HTTP/3.7\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("http2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400),
        ("bare CR", b"GET / HTTP/1.1\rHost: x\r\n\r\n".to_vec(), 400),
        ("NUL in header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n".to_vec(), 400),
        ("no Host", b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n".to_vec(), 400),
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd".to_vec(), 400),
        ("bad CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd".to_vec(), 400),
        ("chunked body", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".to_vec(), 411),
        ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 411),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE chunked, identity", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two TE lines ending in identity", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("Host with a space", b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n".to_vec(), 400),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: example.com/x\r\n\r\n".to_vec(), 400),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: user@example.com\r\n\r\n".to_vec(), 400),
        ("Host with a bad port", b"GET / HTTP/1.1\r\nHost: example.com:80x\r\n\r\n".to_vec(), 400),
        ("Host unclosed IPv6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n".to_vec(), 400),
        ("stream with a bad Host", b"GET / HTTP/1.1\r\nHost: a b\r\nAccept: text/event-stream\r\n\r\n".to_vec(), 400),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405),
        ("body over --max-body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        ("header over 8 KiB", big_header.into_bytes(), 431),
        ("over 64 headers", many_headers.into_bytes(), 431),
        ("overlong request-target", format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000)).into_bytes(), 414),
        ("overlong request-target, head complete", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)).into_bytes(), 414),
        ("overlong method", "M".repeat(9000).into_bytes(), 501),
        ("header timeout", b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(), 408),
    ];
    for (name, raw, want) in &cases {
        let got = status_of(addr, raw);
        assert_eq!(got, *want, "{name}");
        seen.extend(watcher.ticks(1));
    }
    // A connection that sends nothing at all is answered 408 at the header timeout too.
    let started = Instant::now();
    let mut silent = connect(addr);
    let r = read_response(&mut silent);
    assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // The watcher never missed a tick.
    seen.extend(watcher.ticks(2));
    server.assert_no_gaps(&seen);
    // Nothing crashed: the server still answers and stops cleanly.
    assert_eq!(request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), OK);
    let s = server.stop_and_summary();
    assert!(s.get("rejected") >= cases.len() as u64, "{}", s.0);
}

fn host_values_the_rfc_allows_are_served(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "1s"]);
    // An empty Host is what RFC 9112 §3.2 has a client send for a target without authority;
    // IP literals, ports and percent-encoding are all uri-host [":" port].
    for host in [
        "",
        "example.com",
        "example.com:8080",
        "127.0.0.1:80",
        "[::1]:8080",
        "[2001:db8::1]",
        "xn--bcher-kva.example",
        "a%2Db",
    ] {
        let r = request(
            server.addr,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r, OK, "Host: {host:?}");
    }
    // A stream request with a valid Host is a stream.
    let c = SseClient::open_with(
        connect(server.addr),
        "GET / HTTP/1.1\r\nHost: [::1]:443\r\nAccept: text/event-stream\r\n\r\n",
    );
    assert!(c.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", c.head);
}

fn connect_is_refused_with_allow_and_closed(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "1s"]);
    let mut s = connect(server.addr);
    // The tunnel's first bytes follow at once, as a client that does not wait would send them.
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
        .unwrap();
    let r = read_response(&mut s);
    assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
    assert!(r.contains("\r\nAllow: GET, HEAD, POST, OPTIONS\r\n"), "{r}");
    assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    // Closed after the answer: nothing more, never a tunnel.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Methods are case-sensitive: `connect` is just another method, answered `ok`.
    let r = request(server.addr, b"connect / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r, OK);
    wait_for_series(
        &server,
        "ringcast_connections_rejected_total{worker=\"total\",reason=\"other\"}",
        1.0,
    );
}

fn close_with_an_unread_body_is_a_lingering_close(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "1s"]);
    for version in ["HTTP/1.1\r\nHost: x\r\nConnection: close", "HTTP/1.0"] {
        // Head and body in one write: the server answers from the head, while most of the body
        // is still unread in its socket. Closing such a socket sends a reset, which can destroy
        // the answer on its way (RFC 9112 §9.6); a lingering close half-closes instead, drops
        // the rest of the body, and the client sees the answer and then a clean end of stream.
        let body = vec![b'b'; 30_000];
        let head = format!("POST / {version}\r\nContent-Length: {}\r\n\r\n", body.len());
        let mut s = connect(server.addr);
        s.write_all(&[head.as_bytes(), &body].concat()).unwrap();
        let r = read_response(&mut s);
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok"),
            "{r}"
        );
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        assert!(
            end.is_ok() && rest.is_empty(),
            "{version:?}: expected EOF after the answer, got {end:?} and {rest:?}"
        );
    }
}

fn idle_kept_alive_connection_is_closed_without_an_answer(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "1s", "--header-timeout", "1s"]);
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s), OK);
    // Silent from now on: at the header timeout the server closes it, with no 408.
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(
        end.is_ok() && rest.is_empty(),
        "expected EOF and no answer, got {end:?} and {:?}",
        String::from_utf8_lossy(&rest)
    );
    let metrics = admin_get(&server, "/metrics");
    let timeouts = series(
        &metrics,
        "ringcast_connections_rejected_total{worker=\"total\",reason=\"timeout\"}",
    );
    assert_eq!(timeouts, 0.0, "an idle connection is not a refused request");
    // One whose request was cut off mid-head does get the 408.
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT")
        .unwrap();
    assert_eq!(read_response(&mut s), OK);
    let r = read_response(&mut s);
    assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
}
