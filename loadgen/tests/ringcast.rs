//! End-to-end tests against the real `ringcast` server of this workspace, started on
//! port 0 with a short interval (250 ms for 2,000 streams: at 100 ms two debug builds
//! sharing two cores can fall behind, and the server then rightly skips ticks), and a
//! publish run (200 streams on 5 channels, 50 events/s through the admin `POST /publish`, and
//! again in batches of 10 through `POST /publish/batch`, every stream reconnecting each second)
//! that must see every event exactly once, and a
//! failover run: two nodes in cluster mode on a real `redis-server` (started here on a free
//! port, persistence off), one SIGKILLed mid-hold while publishing goes on through the
//! other, whose streams must all come back on the survivor with nothing missed or repeated.
//! They need the server binary next to the loadgen's (`cargo build --workspace` or
//! `cargo build -p ringcast --bin ringcast` builds it) and skip with a message when it is
//! missing; the failover run also skips without redis-server, unless
//! `RINGCAST_REQUIRE_CLIENTS` is set.

mod support;

use std::time::{Duration, Instant};

use support::{counter, failed, ringcast_binary, run_loadgen, RedisServer, Ringcast};

const LIMIT: Duration = Duration::from_secs(120);

/// The tests run one at a time: the restart test reuses a port number, which the other
/// test's thousands of outgoing connections could otherwise take as an ephemeral port.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn server_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let bin = ringcast_binary();
    if bin.is_none() {
        eprintln!("{test}: skipped, the ringcast binary is not built (cargo build -p ringcast --bin ringcast)");
    }
    bin
}

#[test]
fn two_thousand_streams_get_every_event() {
    let Some(bin) = server_or_skip("two_thousand_streams_get_every_event") else {
        return;
    };
    let _serial = serial();
    let server = Ringcast::start(&bin, 0, &["--interval", "250ms", "--workers", "2"]);
    let pid = server.pid().to_string();
    let url = server.url();
    let mut args = vec![
        "--url",
        &url,
        "-c",
        "2000",
        "--rate",
        "4000",
        "--duration",
        "3s",
        "--warmup",
        "500ms",
        "--interval",
        "250ms",
        "--server-pid",
        &pid,
    ];
    if let Some(info) = &server.info_url {
        args.extend(["--server-info", info.as_str()]);
    }
    let (r, stdout) = run_loadgen(&args, LIMIT);
    assert_eq!(counter(&r, "opened"), 2000, "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
    // Zero gaps, except for ticks the server itself logged as missed (a loaded machine can
    // deschedule a server core for over an interval; that is the server's to report).
    let skipped = server.skipped_ticks();
    assert!(
        counter(&r, "missed_ids") <= skipped * 2000,
        "skipped {skipped}: {stdout}"
    );
    assert_eq!(counter(&r, "duplicates"), 0, "{stdout}");
    assert_eq!(counter(&r, "streams_ended"), 0, "{stdout}");
    assert_eq!(counter(&r, "stalled_streams"), 0, "{stdout}");
    assert!(counter(&r, "events") >= 2000, "{stdout}");
    let run = &r["runs"][0];
    for section in ["environment", "config", "server", "resources"] {
        assert!(run[section].is_object(), "missing {section}");
    }
    for section in ["counters", "percentiles", "histograms", "notes"] {
        assert!(!r[section].is_null(), "missing {section}");
    }
    assert!(
        run["resources"]["hold_end"]["server_rss_bytes"]
            .as_u64()
            .is_some(),
        "{stdout}"
    );
    assert!(
        run["resources"]["derived"]["server_cpu_us_per_event"]
            .as_f64()
            .is_some(),
        "{stdout}"
    );
    assert_eq!(r["percentiles"]["connect"]["count"].as_u64(), Some(2000));
    // every stream got each counted tick: the fan-out spread covers whole ticks
    let fanout = &r["fanout"];
    assert!(fanout["ticks"].as_u64().unwrap_or(0) >= 1, "{fanout}");
    assert!(fanout["spread_max_us"].as_u64().is_some(), "{fanout}");
    let full = fanout["per_tick"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["count"].as_u64() == Some(2000))
        .count();
    assert!(full >= 1, "some tick reached all 2000 streams: {fanout}");
    if server.info_url.is_some() {
        // The server described itself, and its interval matched ours (no warning note).
        assert_eq!(run["server"]["info"]["name"], "ringcast", "{stdout}");
        assert_eq!(r["notes"].as_array().map(Vec::len), Some(1), "{stdout}");
    }
}

#[test]
fn published_events_reach_every_subscriber_once_across_reconnects() {
    published_events_reach_every_subscriber_once(
        "published_events_reach_every_subscriber_once_across_reconnects",
        1,
    );
}

#[test]
fn batched_events_reach_every_subscriber_once_across_reconnects() {
    published_events_reach_every_subscriber_once(
        "batched_events_reach_every_subscriber_once_across_reconnects",
        10,
    );
}

/// The publish run, with `batch` events per request (more than 1: `POST /publish/batch`).
fn published_events_reach_every_subscriber_once(test: &str, batch: u64) {
    let Some(bin) = server_or_skip(test) else {
        return;
    };
    let _serial = serial();
    let server = Ringcast::start(&bin, 0, &["--workers", "2"]);
    let Some(mut publish) = server.publish_url() else {
        eprintln!("{test}: skipped, this ringcast build has no publish API");
        return;
    };
    if batch > 1 {
        publish.push_str("/batch");
    }
    let batch = batch.to_string();
    let pid = server.pid().to_string();
    let url = format!("{}events", server.url());
    let (r, stdout) = run_loadgen(
        &[
            "--publish-batch",
            &batch,
            "--url",
            &url,
            "-c",
            "200",
            "--rate",
            "1000",
            "--duration",
            "4s",
            "--warmup",
            "500ms",
            "--channels",
            "5",
            "--publish",
            &publish,
            "--publish-rate",
            "50",
            "--reconnect-every",
            "1s",
            // ends as soon as every stream has the newest event of its channel
            "--drain",
            "30s",
            "--server-pid",
            &pid,
        ],
        LIMIT,
    );
    // every attempt, first ones and reconnections, opened a stream
    assert!(counter(&r, "opened") >= 200, "{stdout}");
    assert_eq!(counter(&r, "opened"), counter(&r, "attempted"), "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
    let ok = counter(&r, "published_ok");
    assert!(ok > 0, "{stdout}");
    assert!(
        r["counters"]["publish_errors"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{stdout}"
    );
    assert_eq!(counter(&r, "published_without_id"), 0, "{stdout}");
    assert!(counter(&r, "scheduled_reconnects") > 0, "{stdout}");
    assert!(counter(&r, "publish_expected") > 0, "{stdout}");
    assert_eq!(counter(&r, "publish_missed"), 0, "{stdout}");
    assert_eq!(counter(&r, "publish_duplicated"), 0, "{stdout}");
    assert_eq!(counter(&r, "publish_unexpected"), 0, "{stdout}");
    assert_eq!(
        counter(&r, "publish_received"),
        counter(&r, "publish_expected"),
        "{stdout}"
    );
    // 4 s at 50/s over 5 channels stays far inside the history: nothing to reset
    assert_eq!(counter(&r, "publish_resets"), 0, "{stdout}");
    assert!(
        r["percentiles"]["publish_delivery"]["count"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{stdout}"
    );
    assert!(
        r["runs"][0]["resources"]["derived"]["server_cpu_us_per_publish_event"]
            .as_f64()
            .is_some(),
        "{stdout}"
    );
}

#[test]
fn streams_come_back_after_a_server_restart() {
    let Some(bin) = server_or_skip("streams_come_back_after_a_server_restart") else {
        return;
    };
    let _serial = serial();
    let mut server = Ringcast::start(
        &bin,
        0,
        &["--interval", "100ms", "--workers", "1", "--retry", "100"],
    );
    let port = server.port;
    let url = server.url();
    let loadgen = std::thread::spawn(move || {
        run_loadgen(
            &[
                "--url",
                &url,
                "-c",
                "20",
                "--rate",
                "200",
                "--duration",
                "4s",
                "--interval",
                "100ms",
            ],
            LIMIT,
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let _ = server.child.kill();
    let _ = server.child.wait();
    // Same port again so the streams can come back (retry: 100 ms).
    let _server = Ringcast::restart(
        &bin,
        port,
        &["--interval", "100ms", "--workers", "1", "--retry", "100"],
    );
    let (r, stdout) = loadgen.join().unwrap();
    assert!(counter(&r, "streams_ended") >= 20, "{stdout}");
    assert!(counter(&r, "reconnects") >= 20, "{stdout}");
    assert!(counter(&r, "opened") >= 40, "{stdout}");
    assert_eq!(counter(&r, "duplicates"), 0, "{stdout}");
}

#[test]
fn streams_of_a_killed_cluster_node_come_back_on_the_other_without_loss() {
    let test = "streams_of_a_killed_cluster_node_come_back_on_the_other_without_loss";
    let Some(bin) = server_or_skip(test) else {
        return;
    };
    if !Ringcast::has_cluster_mode(&bin) {
        eprintln!("{test}: skipped, this ringcast build has no cluster mode (--redis)");
        return;
    }
    let Some(redis) = RedisServer::start(test) else {
        return;
    };
    let _serial = serial();
    let redis_url = redis.url();
    let node_args = ["--workers", "1", "--redis", &redis_url, "--heartbeat", "1s"];
    let mut a = Ringcast::start(&bin, 0, &node_args);
    let b = Ringcast::start(&bin, 0, &node_args);
    let wait_for = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "{test}: timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("both engines up", &|| {
        a.metric("ringcast_engine_up") == Some(1.0) && b.metric("ringcast_engine_up") == Some(1.0)
    });
    let publish = b.publish_url().expect("publish API");
    let (a_url, b_url) = (format!("{}events", a.url()), format!("{}events", b.url()));
    let args: Vec<String> = [
        "--url",
        &a_url,
        "--url",
        &b_url,
        "-c",
        "200",
        "--rate",
        "1000",
        "--channels",
        "10",
        "--publish",
        &publish,
        "--publish-rate",
        "50",
        // The kill lands early in the hold however slow the machine; the drain ends as soon
        // as every stream has the newest event of its channel.
        "--duration",
        "8s",
        "--drain",
        "60s",
        "--retry-default",
        "300ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let loadgen = std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_loadgen(&refs, LIMIT)
    });
    wait_for("100 streams on each node and events flowing", &|| {
        a.metric("ringcast_channel_streams_open") == Some(100.0)
            && b.metric("ringcast_channel_streams_open") == Some(100.0)
            && b.metric("ringcast_engine_events_read_total")
                .is_some_and(|n| n >= 20.0)
    });
    let _ = a.child.kill(); // SIGKILL
    let _ = a.child.wait();
    let (r, stdout) = loadgen.join().unwrap();

    // Every stream of the dead node came back on the other one.
    assert_eq!(counter(&r, "failovers"), 100, "{stdout}");
    assert_eq!(r["counters"]["failovers_from"][&a_url], 100, "{stdout}");
    assert_eq!(r["counters"]["failovers_to"][&b_url], 100, "{stdout}");
    assert_eq!(r["percentiles"]["failover"]["count"], 100, "{stdout}");
    assert_eq!(counter(&r, "streams_ended"), 100, "{stdout}");
    assert_eq!(counter(&r, "opened"), 300, "{stdout}");
    // What failed is the dead node's port, at the network level (refused, or reset or timed
    // out while the kernel released a killed io_uring listener): nothing that gives up.
    let failures: u64 = ["refused", "reset", "closed", "timeout"]
        .iter()
        .map(|k| failed(&r, k))
        .sum();
    assert!(failures >= 100, "{stdout}");
    assert_eq!(
        failures,
        r["counters"]["failed"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        "{stdout}"
    );
    // Exactly once across the move: the survivor replayed after each Last-Event-ID, from its
    // own history or from Redis.
    let ok = counter(&r, "published_ok");
    assert!(ok > 0, "{stdout}");
    assert!(
        r["counters"]["publish_errors"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{stdout}"
    );
    assert!(counter(&r, "publish_expected") > 0, "{stdout}");
    assert_eq!(
        counter(&r, "publish_received"),
        counter(&r, "publish_expected"),
        "{stdout}"
    );
    for zero in [
        "publish_missed",
        "publish_duplicated",
        "publish_unexpected",
        "publish_resets",
        "connections_missing_events",
    ] {
        assert_eq!(counter(&r, zero), 0, "{zero}: {stdout}");
    }
    drop(b);
    drop(redis);
}
