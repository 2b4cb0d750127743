//! Failover with several `--url`s, against the fixture: two channel servers on one shared
//! event state (as ringcast nodes share a Redis stream, so ids are the same on both), one of
//! which dies mid-run while publishing continues through the other. Its connections must
//! come back on the survivor with their Last-Event-ID and end with nothing missed and
//! nothing repeated, and the failover must be counted and timed. Also: a first attempt that
//! fails is not moved to another URL (the documented rule).
//!
//! The kill waits on the fixture's own state (every stream subscribed, events flowing), and
//! the loadgen's drain waits until every connection has the newest event, so a slow machine
//! makes the run longer, not wrong.

mod support;

use std::time::{Duration, Instant};

use support::{closed_port, counter, failed, run_loadgen, ChannelOpts, Fixture};

const LIMIT: Duration = Duration::from_secs(180);

/// Polls `ready` until it holds (or panics after a generous minute).
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_of_a_dead_server_move_to_the_other_and_miss_nothing() {
    let mut nodes = Fixture::cluster(ChannelOpts::default(), 2);
    let (a_url, b_url, publish) = (nodes[0].url(), nodes[1].url(), nodes[1].publish_url());
    let args: Vec<String> = [
        "--url",
        &a_url,
        "--url",
        &b_url,
        "-c",
        "40",
        "--rate",
        "500",
        "--channels",
        "4",
        "--publish",
        &publish,
        "--publishers",
        "2",
        "--publish-rate",
        "50",
        // Long enough for the kill to land inside it however slow the machine; the drain
        // ends as soon as every connection has the newest event.
        "--duration",
        "8s",
        "--drain",
        "60s",
        "--retry-default",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let loadgen = std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_loadgen(&refs, LIMIT)
    });
    let hub = nodes[0].hub.clone();
    wait_for("20 streams on each node and events flowing", || {
        let published = nodes[0].publishes();
        let h = hub.lock().unwrap();
        h.streams_on(0) == 20 && h.streams_on(1) == 20 && published >= 10
    });
    // Connection k is on URL k mod 2 with channel (k / 2) mod 4: each node has every channel.
    assert_eq!(hub.lock().unwrap().channels_on(0), 4);
    assert_eq!(hub.lock().unwrap().channels_on(1), 4);
    let ended = nodes[0].kill();
    assert_eq!(ended, 20);
    let (r, stdout) = loadgen.join().unwrap();

    // Every stream of the dead node came back on the other one, once.
    assert_eq!(counter(&r, "failovers"), 20, "{stdout}");
    assert_eq!(r["counters"]["failovers_from"][&a_url], 20, "{stdout}");
    assert_eq!(r["counters"]["failovers_to"][&b_url], 20, "{stdout}");
    assert_eq!(
        r["counters"]["failovers_from"].as_object().unwrap().len(),
        1
    );
    assert_eq!(r["percentiles"]["failover"]["count"], 20, "{stdout}");
    assert!(
        r["histograms"]["failover"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{stdout}"
    );
    // The failover includes the reconnection delay the connection waited first.
    assert!(
        r["percentiles"]["failover"]["min"].as_u64().unwrap() >= 200_000,
        "{stdout}"
    );
    assert_eq!(counter(&r, "streams_ended"), 20, "{stdout}");
    // Each tried the dead node once more (refused) and moved on at once.
    assert_eq!(failed(&r, "refused"), 20, "{stdout}");
    assert_eq!(
        r["counters"]["failed"].as_object().unwrap().len(),
        1,
        "{stdout}"
    );
    assert_eq!(counter(&r, "opened"), 60, "{stdout}");
    assert_eq!(
        counter(&r, "attempted"),
        counter(&r, "opened") + 20,
        "{stdout}"
    );
    assert_eq!(counter(&r, "reconnects"), 40, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "failover: 20 streams came back on another URL (from {a_url} x20; to {b_url} x20)"
        )),
        "{stdout}"
    );

    // Exactly once, across the move: the survivor replayed from their Last-Event-ID.
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
    let resumed: Vec<String> = nodes[1]
        .last_event_ids
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(resumed.len(), 20, "{resumed:?}");
    assert!(
        resumed.iter().all(|id| id
            .split_once('-')
            .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())),
        "{resumed:?}"
    );
    assert_eq!(r["schema_version"], 4);
}

#[test]
fn a_first_attempt_that_fails_is_not_moved() {
    let nodes = Fixture::cluster(ChannelOpts::default(), 1);
    let dead = format!("http://127.0.0.1:{}/", closed_port());
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &dead,
            "--url",
            &nodes[0].url(),
            "-c",
            "10",
            "--rate",
            "500",
            "--channels",
            "2",
            "--duration",
            "500ms",
        ],
        LIMIT,
    );
    // The five connections planned for the closed port failed once each and gave up.
    assert_eq!(failed(&r, "refused"), 5, "{stdout}");
    assert_eq!(counter(&r, "attempted"), 10, "{stdout}");
    assert_eq!(counter(&r, "opened"), 5, "{stdout}");
    assert_eq!(counter(&r, "failovers"), 0, "{stdout}");
    assert_eq!(counter(&r, "reconnects"), 0, "{stdout}");
    assert!(
        stdout.contains("failover: 0 streams came back on another URL"),
        "{stdout}"
    );
}
