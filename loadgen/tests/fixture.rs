//! End-to-end tests of the loadgen binary against the throwaway fixture server: a ticking
//! stream (plain and chunked) with every section of the result file checked, reconnection
//! with Last-Event-ID after the server closes streams, and the failure classification of a
//! closed port, a 404 and a non-SSE 200, and `--reconnect-every` on tick streams.
//! Assertions are on counts, never on timings.

mod support;

use std::time::Duration;

use support::{closed_port, counter, failed, run_loadgen, Fixture, Mode};

const LIMIT: Duration = Duration::from_secs(60);

fn ticking(chunked: bool, driver: &str) {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "40",
            "--rate",
            "400",
            "--duration",
            "1500ms",
            "--warmup",
            "300ms",
            "--interval",
            "100ms",
            "--driver",
            driver,
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "opened"), 40, "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
    assert_eq!(counter(&r, "missed_ids"), 0, "{stdout}");
    assert_eq!(counter(&r, "duplicates"), 0, "{stdout}");
    assert_eq!(counter(&r, "unnumbered_events"), 0);
    assert_eq!(counter(&r, "stalled_streams"), 0, "{stdout}");
    assert!(counter(&r, "events") >= 40, "{stdout}");
    assert!(r["percentiles"]["delivery"]["count"].as_u64().unwrap() > 0);
    assert_eq!(r["percentiles"]["connect"]["count"].as_u64(), Some(40));
    assert_eq!(r["percentiles"]["headers"]["count"].as_u64(), Some(40));
    assert_eq!(r["percentiles"]["first_event"]["count"].as_u64(), Some(40));
    for name in ["connect", "headers", "first_event", "delivery", "gap"] {
        assert!(
            r["histograms"][name]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "histogram {name}"
        );
    }
    let run = &r["runs"][0];
    assert_eq!(run["server"]["banner"], "fixture");
    assert_eq!(run["config"]["connections"], 40);
    assert_eq!(
        run["environment"]["loadgen_driver"],
        if driver == "epoll" { "epoll" } else { "uring" }
    );
    assert!(run["environment"]["kernel_release"].is_string());
    assert!(
        run["resources"]["hold_end"]["open"].as_u64() == Some(40),
        "{stdout}"
    );
    assert_eq!(r["schema"], "ringcast-loadgen/result");
    assert!(
        stdout.contains("delivery") && stdout.contains("p99.99"),
        "{stdout}"
    );
}

#[test]
fn ticking_stream_uring() {
    ticking(false, "uring");
}

#[test]
fn ticking_stream_epoll() {
    ticking(false, "epoll");
}

#[test]
fn ticking_chunked_stream() {
    ticking(true, "auto");
}

#[test]
fn reconnects_with_last_event_id_after_the_server_closes() {
    let fixture = Fixture::start(Mode::CloseAfter {
        events: 3,
        retry_ms: 50,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "4",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--retry-default",
            "10s",
        ],
        LIMIT,
    );
    // retry: 50 overrides the 10 s default, so several reconnections fit in the hold.
    assert!(counter(&r, "reconnects") >= 4, "{stdout}");
    assert!(counter(&r, "streams_ended") >= 4, "{stdout}");
    assert_eq!(counter(&r, "missed_ids"), 0, "{stdout}");
    assert_eq!(counter(&r, "duplicates"), 0, "{stdout}");
    assert_eq!(failed(&r, "refused") + failed(&r, "bad_status"), 0);
    let ids = fixture.last_event_ids.lock().unwrap().clone();
    let closed = fixture.closed_with.lock().unwrap().clone();
    assert_eq!(
        ids.iter().filter(|i| i.is_none()).count(),
        4,
        "first requests carry no id: {ids:?}"
    );
    let resumed: Vec<u64> = ids.iter().flatten().map(|i| i.parse().unwrap()).collect();
    assert!(!resumed.is_empty());
    for id in &resumed {
        assert!(
            closed.contains(id),
            "Last-Event-ID {id} was never the last id of a closed stream"
        );
    }
}

#[test]
fn closed_port_is_refused_and_not_retried() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let (r, _) = run_loadgen(
        &[
            "--url",
            &url,
            "-c",
            "5",
            "--duration",
            "300ms",
            "--retry-default",
            "10ms",
        ],
        LIMIT,
    );
    assert_eq!(failed(&r, "refused"), 5);
    assert_eq!(counter(&r, "attempted"), 5);
    assert_eq!(counter(&r, "opened"), 0);
}

#[test]
fn not_found_is_a_bad_status() {
    let fixture = Fixture::start(Mode::NotFound);
    let (r, stdout) = run_loadgen(
        &["--url", &fixture.url(), "-c", "5", "--duration", "300ms"],
        LIMIT,
    );
    assert_eq!(failed(&r, "bad_status"), 5, "{stdout}");
    assert_eq!(counter(&r, "attempted"), 5);
    assert_eq!(counter(&r, "opened"), 0);
}

#[test]
fn plain_200_is_a_bad_content_type() {
    let fixture = Fixture::start(Mode::Plain);
    let (r, stdout) = run_loadgen(
        &["--url", &fixture.url(), "-c", "5", "--duration", "300ms"],
        LIMIT,
    );
    assert_eq!(failed(&r, "bad_content_type"), 5, "{stdout}");
    assert_eq!(counter(&r, "attempted"), 5);
}

#[test]
fn merge_adds_result_files() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let args = [
        "--url",
        &fixture.url(),
        "-c",
        "6",
        "--duration",
        "500ms",
        "--interval",
        "100ms",
    ];
    let (a, _) = run_loadgen(&args, LIMIT);
    let (b, _) = run_loadgen(&args, LIMIT);
    let (pa, pb, out) = (
        support::temp_path("a.json"),
        support::temp_path("b.json"),
        support::temp_path("m.json"),
    );
    let hgrm = support::temp_path("m.hgrm");
    std::fs::write(&pa, a.to_string()).unwrap();
    std::fs::write(&pb, b.to_string()).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .arg("merge")
        .args([&pa, &pb])
        .arg("--out")
        .arg(&out)
        .arg("--hgrm")
        .arg(&hgrm)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(m["runs"].as_array().unwrap().len(), 2);
    assert_eq!(
        counter(&m, "events"),
        counter(&a, "events") + counter(&b, "events")
    );
    let count = |v: &serde_json::Value| v["percentiles"]["delivery"]["count"].as_u64().unwrap();
    assert_eq!(count(&m), count(&a) + count(&b));
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(
        text.contains("Percentile")
            && text.contains(&format!("Total count    = {:>12}]", count(&m))),
        "{text}"
    );
    for p in [pa, pb, out, hgrm] {
        let _ = std::fs::remove_file(p);
    }
}

fn source_addresses(driver: &str) {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "6",
            "--duration",
            "600ms",
            "--interval",
            "100ms",
            "--source-addrs",
            "127.0.0.2-127.0.0.3",
            "--driver",
            driver,
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "opened"), 6, "{stdout}");
    assert_eq!(counter(&r, "missed_ids"), 0, "{stdout}");
    let peers = fixture.peers.lock().unwrap().clone();
    for source in ["127.0.0.2", "127.0.0.3"] {
        let ip: std::net::IpAddr = source.parse().unwrap();
        assert_eq!(peers.iter().filter(|p| **p == ip).count(), 3, "{peers:?}");
    }
}

#[test]
fn source_addresses_round_robin_uring() {
    source_addresses("uring");
}

#[test]
fn source_addresses_round_robin_epoll() {
    source_addresses("epoll");
}

#[test]
fn silent_server_is_a_timeout() {
    let fixture = Fixture::start(Mode::Silent);
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "3",
            "--duration",
            "1s",
            "--connect-timeout",
            "200ms",
        ],
        LIMIT,
    );
    assert_eq!(failed(&r, "timeout"), 3, "{stdout}");
    assert_eq!(counter(&r, "opened"), 0);
}

#[test]
fn the_end_interrupts_a_pending_handshake_without_counting_it() {
    let fixture = Fixture::start(Mode::Silent);
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "3",
            "--duration",
            "300ms",
            "--connect-timeout",
            "30s",
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "attempted"), 3, "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
    assert_eq!(r["runs"][0]["unfinished_connections"], 0, "{stdout}");
}

#[test]
fn several_urls_share_the_connections() {
    let mode = Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    };
    let (a, b) = (Fixture::start(mode), Fixture::start(mode));
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &a.url(),
            "--target",
            &b.url(),
            "-c",
            "6",
            "--duration",
            "500ms",
            "--interval",
            "100ms",
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "opened"), 6, "{stdout}");
    assert_eq!(a.peers.lock().unwrap().len(), 3);
    assert_eq!(b.peers.lock().unwrap().len(), 3);
}

#[test]
fn a_stream_that_goes_quiet_is_stalled() {
    let fixture = Fixture::start(Mode::Stall);
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "3",
            "--duration",
            "1500ms",
            "--interval",
            "100ms",
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "opened"), 3, "{stdout}");
    assert_eq!(counter(&r, "events"), 3, "{stdout}");
    assert_eq!(counter(&r, "missed_ids"), 0, "{stdout}");
    assert_eq!(counter(&r, "stalled_streams"), 3, "{stdout}");
}

#[test]
fn ctrl_c_ends_the_run_early_with_a_report() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let out = support::temp_path("interrupted.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args([
            "--url",
            &fixture.url(),
            "-c",
            "4",
            "--duration",
            "10m",
            "--interval",
            "100ms",
            "-q",
        ])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the streams are open (the fixture has seen all four requests).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fixture.peers.lock().unwrap().len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status =
        support::wait_bounded(&mut child, Duration::from_secs(30)).expect("exits after Ctrl-C");
    assert!(status.success(), "{status}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(counter(&r, "opened"), 4);
    assert_eq!(counter(&r, "stalled_streams"), 0);
    assert!(r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("interrupted")));
}

#[test]
fn auto_falls_back_to_epoll_when_the_ring_cannot_be_built_and_uring_does_not() {
    // More entries than io_uring_setup accepts: the ring build fails even though the kernel
    // has io_uring, which is the case monoio's own fallback misses.
    let too_many = "4000000";
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let (r, _) = run_loadgen(
        &[
            "--url",
            &url,
            "-c",
            "1",
            "--duration",
            "200ms",
            "--ring-entries",
            too_many,
        ],
        LIMIT,
    );
    assert_eq!(r["runs"][0]["environment"]["loadgen_driver"], "epoll");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args([
            "--url",
            &url,
            "-c",
            "1",
            "--duration",
            "200ms",
            "--driver",
            "uring",
        ])
        .args(["--ring-entries", too_many])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("io_uring runtime"));
}

#[test]
fn server_info_is_stored_and_its_interval_checked() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let info = support::serve_json_once(r#"{"name": "fixture", "interval_ms": 500}"#);
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "2",
            "--duration",
            "300ms",
            "--interval",
            "100ms",
            "--server-info",
            &info,
        ],
        LIMIT,
    );
    assert_eq!(
        r["runs"][0]["server"]["info"]["name"], "fixture",
        "{stdout}"
    );
    let notes = r["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("server's interval is 500 ms")),
        "{notes:?}"
    );
    assert!(stdout.contains("server info: {"), "{stdout}");
}

#[test]
fn reconnect_every_works_on_tick_streams_too() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "6",
            "--duration",
            "1500ms",
            "--interval",
            "100ms",
            "--reconnect-every",
            "300ms",
        ],
        LIMIT,
    );
    assert!(counter(&r, "scheduled_reconnects") > 0, "{stdout}");
    assert_eq!(
        counter(&r, "reconnects"),
        counter(&r, "scheduled_reconnects"),
        "{stdout}"
    );
    assert_eq!(counter(&r, "streams_ended"), 0, "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
    // ticks are not replayed: a resumed stream may have missed some, never repeated one
    assert_eq!(counter(&r, "duplicates"), 0, "{stdout}");
    let resumed = fixture
        .last_event_ids
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .count();
    assert!(resumed > 0, "resumptions carry Last-Event-ID");
    assert!(!stdout.contains("published events"), "{stdout}");
}
