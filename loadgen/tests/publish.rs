//! End-to-end tests of publish mode against the fixture's channel server (`Mode::Channels`,
//! a stand-in for ringcast's publish API): exact delivery under both drivers, round-robin
//! channel subscriptions, resumption with Last-Event-ID on `--reconnect-every`, resets,
//! deliberately dropped and duplicated events being caught, the bearer token and refusals
//! counted by status, and `--timestamp-in-data` against nchan-like ids. Assertions are on
//! counts; the drain waits on the loadgen's own observation (every connection has the
//! newest id), so a slow machine makes a run longer, not wrong.

mod support;

use std::time::Duration;

use support::{counter, run_loadgen, ChannelOpts, Fault, Fixture, Mode};

const LIMIT: Duration = Duration::from_secs(120);

/// The loadgen's arguments for a publish run against `fixture`, plus `extra`.
fn args(fixture: &Fixture, connections: usize, channels: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--url",
        &fixture.url(),
        "-c",
        &connections.to_string(),
        "--rate",
        "500",
        "--channels",
        &channels.to_string(),
        "--publish",
        &fixture.publish_url(),
        "--publishers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--drain") {
        // Generous: the drain ends as soon as every connection has the newest event.
        a.extend(["--drain".to_string(), "30s".to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(args: &[String]) -> (serde_json::Value, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_loadgen(&refs, LIMIT)
}

fn no_failures(r: &serde_json::Value, stdout: &str) {
    assert_eq!(
        r["counters"]["failed"].as_object().map_or(0, |m| m.len()),
        0,
        "{stdout}"
    );
}

/// Every event a connection was owed arrived, once.
fn exact(r: &serde_json::Value, stdout: &str) {
    assert!(counter(r, "publish_expected") > 0, "{stdout}");
    assert_eq!(
        counter(r, "publish_received"),
        counter(r, "publish_expected"),
        "{stdout}"
    );
    assert_eq!(counter(r, "publish_missed"), 0, "{stdout}");
    assert_eq!(counter(r, "publish_duplicated"), 0, "{stdout}");
    assert_eq!(counter(r, "publish_unexpected"), 0, "{stdout}");
    assert_eq!(counter(r, "connections_missing_events"), 0, "{stdout}");
}

fn exact_delivery(driver: &str) {
    let fixture = Fixture::start(Mode::Channels(ChannelOpts::default()));
    let hgrm = support::temp_path("publish.hgrm");
    let hgrm_arg = hgrm.to_string_lossy().into_owned();
    let (r, stdout) = run(&args(
        &fixture,
        30,
        3,
        &[
            "--duration",
            "2s",
            "--publish-rate",
            "40",
            "--driver",
            driver,
            "--publish-hgrm",
            &hgrm_arg,
        ],
    ));
    assert_eq!(counter(&r, "opened"), 30, "{stdout}");
    no_failures(&r, &stdout);
    let ok = counter(&r, "published_ok");
    assert!(ok > 0, "{stdout}");
    assert_eq!(ok, fixture.publishes(), "{stdout}");
    assert_eq!(counter(&r, "publish_attempted"), ok);
    assert!(r["counters"]["publish_errors"]
        .as_object()
        .unwrap()
        .is_empty());
    assert_eq!(counter(&r, "published_without_id"), 0);
    exact(&r, &stdout);
    // ten connections per channel, each owed at most every event of its channel
    assert!(counter(&r, "publish_expected") <= ok * 10, "{stdout}");
    assert_eq!(
        counter(&r, "publish_events"),
        counter(&r, "publish_received")
    );
    assert_eq!(counter(&r, "publish_resets"), 0);
    let pct = &r["percentiles"];
    let delivered = pct["publish_delivery"]["count"].as_u64().unwrap();
    assert!(
        delivered > 0 && delivered <= counter(&r, "publish_events"),
        "{stdout}"
    );
    assert_eq!(pct["publish_request"]["count"].as_u64(), Some(ok));
    assert_eq!(pct["publish_send"]["count"].as_u64(), Some(ok));
    for name in ["publish_delivery", "publish_request", "publish_send"] {
        assert!(
            r["histograms"][name]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
    }
    assert_eq!(r["schema_version"], 4);
    let publish = &r["runs"][0]["publish"];
    assert_eq!(publish["channels"], 3);
    assert_eq!(publish["publishers"], 2);
    assert_eq!(publish["target_rate"], 40.0);
    assert!(
        publish["achieved_rate"].as_f64().unwrap() > 0.0,
        "{publish}"
    );
    // connection k asked for channel c{k mod 3}: ten each
    let paths = fixture.paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 30, "{paths:?}");
    for c in 0..3 {
        let want = format!("/?channel=c{c}");
        assert_eq!(
            paths.iter().filter(|p| **p == want).count(),
            10,
            "{paths:?}"
        );
    }
    assert!(
        stdout.contains("publish_delivery")
            && stdout.contains("missed 0 (in 0 connections, 0 still outstanding at the end)"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let _ = std::fs::remove_file(&hgrm);
    assert!(
        text.contains(&format!("Total count    = {delivered:>12}]")),
        "{text}"
    );
}

#[test]
fn every_published_event_reaches_its_subscribers_once_uring() {
    exact_delivery("uring");
}

#[test]
fn every_published_event_reaches_its_subscribers_once_epoll() {
    exact_delivery("epoll");
}

#[test]
fn reconnect_every_resumes_with_last_event_id_without_gaps_or_duplicates() {
    let fixture = Fixture::start(Mode::Channels(ChannelOpts::default()));
    let (r, stdout) = run(&args(
        &fixture,
        20,
        4,
        &[
            "--duration",
            "3s",
            "--publish-rate",
            "50",
            "--reconnect-every",
            "400ms",
        ],
    ));
    no_failures(&r, &stdout);
    assert!(counter(&r, "scheduled_reconnects") > 0, "{stdout}");
    assert!(counter(&r, "reconnects") >= counter(&r, "scheduled_reconnects"));
    assert_eq!(counter(&r, "streams_ended"), 0, "{stdout}");
    exact(&r, &stdout);
    assert_eq!(counter(&r, "publish_resets"), 0, "{stdout}");
    // The resumptions carried the last id seen: an event's or the position's.
    let ids = fixture.last_event_ids.lock().unwrap().clone();
    let resumed: Vec<&String> = ids.iter().flatten().collect();
    assert!(!resumed.is_empty(), "{ids:?}");
    for id in resumed {
        let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
        assert!(
            ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
            "{id}"
        );
    }
}

#[test]
fn resets_are_counted_and_excuse_what_was_lost_while_away() {
    // Nothing is kept for replay and every resume is reset: what was published while a
    // connection was away is gone, and not owed.
    let fixture = Fixture::start(Mode::Channels(ChannelOpts {
        history: 0,
        reset_on_resume: true,
        ..ChannelOpts::default()
    }));
    let (r, stdout) = run(&args(
        &fixture,
        12,
        3,
        &[
            "--duration",
            "3s",
            "--publish-rate",
            "60",
            "--reconnect-every",
            "300ms",
        ],
    ));
    no_failures(&r, &stdout);
    let resets = counter(&r, "publish_resets");
    assert!(resets > 0, "{stdout}");
    assert!(resets <= counter(&r, "reconnects"), "{stdout}");
    exact(&r, &stdout);
}

#[test]
fn dropped_events_are_missed_and_repeated_ones_duplicated() {
    let dropping = Fixture::start(Mode::Channels(ChannelOpts {
        fault: Fault::DropEvery(5),
        ..ChannelOpts::default()
    }));
    // The dropped events never come: the drain's limit ends the run.
    let (r, stdout) = run(&args(
        &dropping,
        9,
        3,
        &["--duration", "2s", "--publish-rate", "40", "--drain", "2s"],
    ));
    no_failures(&r, &stdout);
    let missed = counter(&r, "publish_missed");
    assert!(missed > 0, "{stdout}");
    assert_eq!(
        counter(&r, "publish_received") + missed,
        counter(&r, "publish_expected")
    );
    assert!(
        counter(&r, "publish_outstanding") < missed,
        "most drops are holes: {stdout}"
    );
    let lossy = counter(&r, "connections_missing_events");
    assert!(
        (1..=3).contains(&lossy),
        "only first subscribers lose: {stdout}"
    );
    assert_eq!(counter(&r, "publish_duplicated"), 0, "{stdout}");

    let repeating = Fixture::start(Mode::Channels(ChannelOpts {
        fault: Fault::DuplicateEvery(5),
        ..ChannelOpts::default()
    }));
    let (r, stdout) = run(&args(
        &repeating,
        9,
        3,
        &["--duration", "2s", "--publish-rate", "40"],
    ));
    assert!(counter(&r, "publish_duplicated") > 0, "{stdout}");
    assert_eq!(counter(&r, "publish_missed"), 0, "{stdout}");
    assert_eq!(
        counter(&r, "publish_events"),
        counter(&r, "publish_received") + counter(&r, "publish_duplicated")
    );
}

#[test]
fn the_token_is_sent_and_refusals_are_counted_by_status() {
    let fixture = Fixture::start(Mode::Channels(ChannelOpts {
        token: Some("s3cret"),
        ..ChannelOpts::default()
    }));
    let base = ["--duration", "1s", "--publish-rate", "20"];
    let (r, stdout) = run(&args(&fixture, 4, 2, &base));
    let attempted = counter(&r, "publish_attempted");
    assert!(attempted > 0, "{stdout}");
    assert_eq!(counter(&r, "published_ok"), 0);
    assert_eq!(
        r["counters"]["publish_errors"]["401"].as_u64(),
        Some(attempted)
    );
    assert_eq!(counter(&r, "publish_expected"), 0);
    assert_eq!(counter(&r, "publish_missed"), 0);
    assert_eq!(fixture.publishes(), 0);
    assert!(stdout.contains("401 x"), "{stdout}");

    let mut with_token = base.to_vec();
    with_token.extend(["--publish-token", "s3cret"]);
    let (r, stdout) = run(&args(&fixture, 4, 2, &with_token));
    assert!(counter(&r, "published_ok") > 0, "{stdout}");
    assert!(r["counters"]["publish_errors"]
        .as_object()
        .unwrap()
        .is_empty());
    exact(&r, &stdout);
    assert_eq!(r["runs"][0]["config"]["publish_token"], "(set)");
    assert!(!r.to_string().contains("s3cret"));
}

#[test]
fn timestamp_in_data_measures_latency_when_ids_are_the_servers_own() {
    let fixture = Fixture::start(Mode::Channels(ChannelOpts {
        nchan_ids: true,
        ..ChannelOpts::default()
    }));
    let (r, stdout) = run(&args(
        &fixture,
        6,
        2,
        &[
            "--duration",
            "1500ms",
            "--publish-rate",
            "20",
            "--timestamp-in-data",
            "--drain",
            "500ms",
        ],
    ));
    no_failures(&r, &stdout);
    let ok = counter(&r, "published_ok");
    assert!(ok > 0, "202 counts as published: {stdout}");
    assert_eq!(counter(&r, "published_without_id"), ok);
    assert!(counter(&r, "publish_events") > 0, "{stdout}");
    assert!(
        r["percentiles"]["publish_delivery"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{stdout}"
    );
    // No ids to account with: nothing expected, nothing flagged.
    assert_eq!(counter(&r, "publish_expected"), 0);
    assert_eq!(counter(&r, "publish_unexpected"), 0);
    assert_eq!(counter(&r, "unnumbered_events"), 0, "{stdout}");
    assert!(r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("no <ms>-<seq> id")));
}

#[test]
fn channels_without_publishing_only_subscribe() {
    let fixture = Fixture::start(Mode::Channels(ChannelOpts::default()));
    let (r, stdout) = run_loadgen(
        &[
            "--url",
            &format!("{}events?x=1", fixture.url()),
            "-c",
            "4",
            "--channels",
            "2",
            "--duration",
            "300ms",
        ],
        LIMIT,
    );
    assert_eq!(counter(&r, "opened"), 4, "{stdout}");
    assert_eq!(counter(&r, "publish_attempted"), 0);
    assert_eq!(counter(&r, "publish_expected"), 0);
    assert!(r["runs"][0]["publish"].is_null());
    let mut paths = fixture.paths.lock().unwrap().clone();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/events?x=1&channel=c0",
            "/events?x=1&channel=c0",
            "/events?x=1&channel=c1",
            "/events?x=1&channel=c1"
        ]
    );
}
