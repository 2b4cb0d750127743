//! The admin listener: `/metrics` agrees with what the test did to the server, per worker and in
//! total; `/healthz` and `/info`; and the admin endpoints are never served on the public port.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;

both_drivers!(metrics_count_what_happened);

fn get(addr: SocketAddr, path: &str) -> String {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

fn metrics_count_what_happened(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "100ms"]);
    let admin = server.admin.expect("admin listener");
    let mut clients: Vec<SseClient> = (0..6).map(|_| SseClient::open(server.addr, "")).collect();
    for c in &mut clients {
        c.ticks(2);
    }
    for _ in 0..3 {
        assert!(request(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ends_with("ok"));
    }
    let bad = request(server.addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400"));
    drop(clients.drain(..2));

    // Closed clients are noticed within two ticks; wait (bounded) for the gauge to follow.
    let deadline = Instant::now() + PATIENCE;
    let m = loop {
        let m = get(admin, "/metrics");
        if series(&m, "ringcast_streams_open{worker=\"total\"}") == 4.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "streams_open never came down to 4:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(m.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"));
    let total = |name: &str| series(&m, &format!("ringcast_{name}{{worker=\"total\"}}"));
    let per_worker = |name: &str| {
        (0..2)
            .map(|w| series(&m, &format!("ringcast_{name}{{worker=\"{w}\"}}")))
            .sum::<f64>()
    };
    for name in [
        "streams_open",
        "streams_opened_total",
        "ok_requests_total",
        "frames_sent_total",
        "ticks_total",
    ] {
        assert_eq!(
            total(name),
            per_worker(name),
            "{name}: total is the workers' sum"
        );
    }
    assert_eq!(total("streams_opened_total"), 6.0);
    assert_eq!(total("ok_requests_total"), 3.0);
    assert!(total("frames_sent_total") >= 12.0);
    assert!(total("bytes_sent_total") > total("frames_sent_total"));
    assert_eq!(
        series(
            &m,
            "ringcast_streams_closed_total{worker=\"total\",reason=\"client_gone\"}"
        ),
        2.0
    );
    assert_eq!(
        series(
            &m,
            "ringcast_connections_rejected_total{worker=\"total\",reason=\"bad_request\"}"
        ),
        1.0
    );
    let walks = series(&m, "ringcast_tick_walk_seconds_count{worker=\"total\"}");
    assert!(walks >= 2.0 && walks == total("ticks_total"), "{walks}");
    assert_eq!(
        series(
            &m,
            "ringcast_tick_lateness_seconds_bucket{worker=\"total\",le=\"+Inf\"}"
        ),
        walks
    );
    let want_driver = if driver == "uring" {
        "io_uring"
    } else {
        "epoll"
    };
    let want_flags = if driver == "uring" {
        // this kernel (and CI's) takes the best set
        "single_issuer|defer_taskrun"
    } else {
        "none"
    };
    assert!(
        m.contains(&format!(
            ",driver=\"{want_driver}\",uring_flags=\"{want_flags}\"}} 1"
        )),
        "{m}"
    );
    assert!(m.contains(",kernel=\""));

    let h = get(admin, "/healthz");
    assert!(h.starts_with("HTTP/1.1 200 "), "{h}");
    let health: serde_json::Value =
        serde_json::from_str(h.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(health["status"], "ok", "{h}");
    assert_eq!(health["workers"]["running"], 2, "{h}");
    assert_eq!(health["engine"]["kind"], "local", "{h}");
    let info = get(admin, "/info");
    let body = &info[info.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["interval_ms"], 100);
    assert_eq!(v["workers"].as_array().unwrap().len(), 2);
    assert_eq!(v["workers"][0]["driver"], want_driver);
    assert_eq!(v["listen"], server.addr.to_string());
    assert_eq!(v["streams_open"], 4);
    assert!(v["limits"]["max_streams"].as_u64().unwrap() > 0);
    // Linux hands the listener's TCP options to accepted sockets; the start-up probe found so,
    // which is why new streams are not tuned one by one.
    for opt in ["nodelay", "keepalive", "user_timeout"] {
        assert_eq!(v["socket_options_inherited"][opt], true, "{opt}: {body}");
    }
    assert!(get(admin, "/nope").starts_with("HTTP/1.1 404 "));

    // The public listener knows nothing of the admin paths: they are `ok` there.
    assert!(get(server.addr, "/metrics").ends_with("\r\n\r\nok"));
}

#[test]
fn admin_must_not_share_the_public_port() {
    // The clash needs a fixed port (port 0 twice gives two different ports).
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let listen = format!("127.0.0.1:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "--listen",
            &listen,
            "--admin-listen",
            &listen,
            "--workers",
            "1",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--admin-listen") && err.contains("public listener"),
        "{err}"
    );
}

/// Many keep-alive publishers at once, beside a client that sends nothing and one that trickles
/// a byte at a time: every publish is answered, `/metrics` answers meanwhile, and SIGTERM ends
/// the server promptly although both stalled clients are still connected (the old admin thread
/// served one client at a time and waited on it at shutdown).
#[test]
fn stalled_admin_clients_block_neither_publishers_nor_shutdown() {
    use std::io::Write;
    let mut server = TestServer::start("auto", &["--header-timeout", "60s"]);
    let admin = server.admin.expect("admin listener");
    let silent = connect(admin);
    let mut trickle = connect(admin);
    trickle.write_all(b"GET /metr").unwrap();
    let stop_trickling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop_trickling.clone();
        std::thread::spawn(move || {
            // one byte every 300 ms, never finishing the head (60 s would not be enough)
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if trickle.write_all(b"i").is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        })
    };
    let publishers: Vec<_> = (0..16)
        .map(|p| {
            std::thread::spawn(move || {
                let mut conn = connect(admin);
                for i in 0..50 {
                    let body = format!("p{p} e{i}");
                    let req = format!(
                        "POST /publish?channel=c{p} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(req.as_bytes()).unwrap();
                    let resp = read_response(&mut conn);
                    assert!(resp.starts_with("HTTP/1.1 201 "), "{resp}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let m = get(admin, "/metrics");
    assert_eq!(series(&m, "ringcast_events_published_total"), 800.0);
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE).expect("exits after SIGTERM");
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    // Generous for a loaded machine, far below what a blocked shutdown would take (the trickler
    // keeps going until the end of the test).
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    stop_trickling.store(true, std::sync::atomic::Ordering::Release);
    let _ = trickler.join();
    drop(silent);
}

#[test]
fn a_public_admin_listener_needs_a_publish_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .env_remove("RINGCAST_PUBLISH_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--admin-listen 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
    assert!(err.contains("--publish-token"), "{err}");
    // with a token (here from the environment) it starts
    let mut server = TestServer::start_with_env(
        "auto",
        &["--admin-listen", "0.0.0.0:0"],
        &[("RINGCAST_PUBLISH_TOKEN", "t0ken")],
    );
    let s = server.stop_and_summary();
    assert_eq!(s.get("streams_served"), 0);
}

/// `--probe-uring` reports the ring setup flags `auto` would take and which TCP options
/// accepted sockets inherit (the kernel matrix reads both from it).
#[test]
fn probe_uring_reports_ring_flags_and_inherited_socket_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--probe-uring")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for opt in ["nodelay", "keepalive", "user_timeout"] {
        assert_eq!(v["tcp_options_inherited"][opt], true, "{opt}: {v}");
    }
    if v["setup"] == "ok" {
        assert!(v["uring_flags_auto"].is_string(), "{v}");
        assert!(
            v["setup_flags"].as_object().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}
