//! The reconnect storm (`--storm-at`), end to end: every stream open at the storm instant is
//! closed by the loadgen and reopened with its Last-Event-ID, and the storm section of the
//! result counts and times the way back. Against the throwaway fixture (ticks every 100 ms,
//! two source addresses, once all at once and once paced with `--storm-rate`), against the
//! real `ringcast` server on both of its drivers (skipped with a message when the binary is
//! not built), and the refusal of a storm too late in the hold.
//!
//! Counts are asserted, never timings; the one time bound checked (`--storm-rate`) is a
//! lower bound the loadgen imposes itself. The holds are long (many intervals after the
//! storm) so that a slow machine makes the run no less complete.

mod support;

use std::time::Duration;

use support::{counter, ringcast_binary, run_loadgen, Fixture, Mode, Ringcast};

const LIMIT: Duration = Duration::from_secs(120);

fn storm(r: &serde_json::Value) -> &serde_json::Value {
    let s = &r["storm"];
    assert!(s.is_object(), "no storm section: {r}");
    s
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// What every storm run must show: each connection was either dropped or not open at the
/// storm, every dropped one reconnected and received an event again, each time recorded.
fn every_dropped_stream_came_back(r: &serde_json::Value, connections: u64, stdout: &str) {
    let s = storm(r);
    let dropped = n(&s["dropped"]);
    assert!(dropped > 0, "{stdout}");
    assert_eq!(dropped + n(&s["not_open"]), connections, "{stdout}");
    assert_eq!(n(&s["reconnected"]), dropped, "{stdout}");
    assert_eq!(n(&s["back"]), dropped, "{stdout}");
    assert_eq!(n(&s["not_back"]), 0, "{stdout}");
    assert_eq!(n(&s["failed_attempts"]), 0, "{stdout}");
    assert_eq!(n(&s["recovery"]["count"]), dropped, "{stdout}");
    assert_eq!(n(&s["reconnect"]["count"]), dropped, "{stdout}");
    assert_eq!(r["percentiles"]["storm_recovery"]["count"], dropped);
    assert!(r["histograms"]["storm_recovery"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    // every one back: the headline is the latest of them
    let all_back = n(&s["all_back_after_us"]);
    assert_eq!(s["last_back_after_us"], all_back, "{stdout}");
    assert_eq!(
        s["all_reconnected_after_us"], s["last_reconnect_after_us"],
        "{stdout}"
    );
    // an event comes after its stream's head, which comes after its drop
    assert!(n(&s["all_reconnected_after_us"]) <= all_back, "{stdout}");
    assert!(n(&s["last_drop_after_us"]) <= all_back, "{stdout}");
    assert_eq!(counter(r, "reconnects"), dropped, "{stdout}");
    assert_eq!(counter(r, "opened"), connections + dropped, "{stdout}");
    assert_eq!(r["schema_version"], 4);
    assert!(stdout.contains("storm at "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "every stream back (an event received) after {:.3} ms",
            all_back as f64 / 1e3
        )),
        "{stdout}"
    );
}

#[test]
fn a_storm_drops_every_open_stream_and_each_comes_back_with_its_last_event_id() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "200",
            "--rate",
            "2000",
            "--interval",
            "100ms",
            // Ten ticks after the ramp: every open stream has had events by then.
            "--storm-at",
            "1s",
            "--duration",
            "4s",
            "--source-addrs",
            "127.0.0.2-127.0.0.3",
        ],
        LIMIT,
    );
    every_dropped_stream_came_back(&r, 200, &stdout);
    let dropped = n(&storm(&r)["dropped"]) as usize;
    assert!(storm(&r)["rate"].is_null());
    // Each reconnection resumed from the stream's last tick id.
    let ids = fixture.last_event_ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 200 + dropped, "{ids:?}");
    let resumed: Vec<&String> = ids.iter().flatten().collect();
    assert_eq!(resumed.len(), dropped, "{ids:?}");
    assert!(
        resumed.iter().all(|id| id.parse::<u64>().is_ok()),
        "{resumed:?}"
    );
    // The reconnections used the source addresses too.
    let peers = fixture.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 200 + dropped);
    let of = |a: &str| {
        let a: std::net::IpAddr = a.parse().unwrap();
        peers.iter().filter(|p| **p == a).count()
    };
    assert_eq!(
        of("127.0.0.2") + of("127.0.0.3"),
        200 + dropped,
        "{peers:?}"
    );
    assert!(of("127.0.0.2") > 100 && of("127.0.0.3") > 100, "{peers:?}");
}

#[test]
fn storm_rate_paces_the_reopenings() {
    let fixture = Fixture::start(Mode::Ticks {
        interval_ms: 100,
        chunked: false,
    });
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &fixture.url(),
            "-c",
            "100",
            "--rate",
            "2000",
            "--interval",
            "100ms",
            "--storm-at",
            "1s",
            "--storm-rate",
            "200",
            "--duration",
            "4s",
        ],
        LIMIT,
    );
    every_dropped_stream_came_back(&r, 100, &stdout);
    let s = storm(&r);
    assert_eq!(s["rate"], 200.0);
    assert!(stdout.contains("reopened at most 200/s"), "{stdout}");
    // Connection k may reopen only k / 200 s after the storm: the last of 100 after 495 ms.
    if n(&s["dropped"]) == 100 {
        assert!(n(&s["all_reconnected_after_us"]) >= 495_000, "{stdout}");
    }
}

#[test]
fn a_storm_against_ringcast_brings_every_stream_back_on_both_drivers() {
    let Some(bin) = ringcast_binary() else {
        eprintln!("a_storm_against_ringcast_brings_every_stream_back_on_both_drivers: skipped, the ringcast binary is not built (cargo build -p ringcast --bin ringcast)");
        return;
    };
    for driver in ["uring", "epoll"] {
        let server = Ringcast::start(
            &bin,
            0,
            &["--interval", "250ms", "--workers", "2", "--driver", driver],
        );
        let url = server.url();
        let (r, stdout) = run_loadgen(
            &[
                "--url",
                &url,
                "-c",
                "300",
                "--rate",
                "3000",
                "--interval",
                "250ms",
                "--storm-at",
                "1s",
                "--duration",
                "5s",
            ],
            LIMIT,
        );
        every_dropped_stream_came_back(&r, 300, &stdout);
        assert_eq!(counter(&r, "duplicates"), 0, "{driver}: {stdout}");
    }
}

#[test]
fn a_storm_too_late_in_the_hold_is_refused_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args([
            "--url",
            "http://127.0.0.1:1/",
            "--interval",
            "1s",
            "--storm-at",
            "8s",
            "--duration",
            "10s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--storm-at 8s leaves less than 3 intervals"),
        "{stderr}"
    );
    assert!(stderr.contains("at least 12s"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["--url", "http://127.0.0.1:1/", "--storm-rate", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--storm-at"),
        "{out:?}"
    );
}
