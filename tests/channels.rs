//! Channels, publish and replay, end to end against the real binary under both drivers:
//! subscribe and publish round trips, one event on several channels delivered once, strictly
//! increasing ids, tick streams unchanged, heartbeats, Last-Event-ID replay across a disconnect,
//! eviction answered with `ringcast-reset`, replay racing a publisher, a non-reading channel
//! stream closed at its queue limit while the others keep receiving, auth, every bad input, and
//! batches (`POST /publish/batch`): in order, all or nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

both_drivers!(
    subscribe_publish_round_trip,
    an_event_on_two_channels_reaches_a_stream_on_both_once,
    ids_strictly_increase_over_all_channels,
    tick_streams_are_unchanged_byte_for_byte,
    channel_streams_get_heartbeats,
    replay_after_a_disconnect_delivers_what_was_missed,
    eviction_is_announced_with_a_reset_then_what_is_retained,
    replay_racing_a_publisher_is_complete_and_duplicate_free,
    a_non_reading_channel_stream_is_closed_at_its_queue_limit,
    publishing_needs_the_token_when_one_is_set,
    bad_subscribe_and_publish_requests_get_their_status,
    back_to_back_events_are_handed_out_together_and_written_directly,
    a_batch_is_published_in_order_in_one_request,
    a_bad_batch_publishes_nothing,
);

fn subscribe_publish_round_trip(driver: &str) {
    let server = TestServer::start(driver, &[]);
    let mut s = Sub::open(server.addr, "channel=news", None);
    let pos = s.position();
    id_key(&pos);
    let id = publish_ok(&server, "channel=news&event=score", "1:0\nsecond line");
    assert!(id_key(&id) > id_key(&pos));
    let e = s.next_event();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(e.event.as_deref(), Some("score"));
    assert_eq!(e.data, vec!["1:0", "second line"]);
    // default type, and the 201 body names the channels
    let (status, body) = publish(&server, "channel=news", "plain");
    assert_eq!(status, 201);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["channels"], serde_json::json!(["news"]));
    let e = s.next_event();
    assert_eq!(
        (e.event.as_deref(), e.data),
        (Some("message"), vec!["plain".into()])
    );
    // the publish time is readable from the id
    let ms = id_key(v["id"].as_str().unwrap()).0;
    assert!(ms.abs_diff(now_ms()) < 60_000, "{ms}");
    assert_eq!(metric(&server, "events_delivered_total"), 2.0);
    assert_eq!(
        series(
            &admin_get(&server, "/metrics"),
            "ringcast_events_published_total"
        ),
        2.0
    );
}

fn an_event_on_two_channels_reaches_a_stream_on_both_once(driver: &str) {
    let server = TestServer::start(driver, &[]);
    let mut both = Sub::open(server.addr, "channel=a&channel=b", None);
    let mut only_b = Sub::open(server.addr, "channel=b", None);
    both.position();
    only_b.position();
    let ab = publish_ok(&server, "channel=a&channel=b", "ab");
    let a = publish_ok(&server, "channel=a", "a");
    let b = publish_ok(&server, "channel=b", "b");
    let got: Vec<String> = (0..3).map(|_| both.next_event().id.unwrap()).collect();
    assert_eq!(got, vec![ab.clone(), a, b.clone()]);
    let got: Vec<String> = (0..2).map(|_| only_b.next_event().id.unwrap()).collect();
    assert_eq!(got, vec![ab, b]);
    // nothing else (a duplicate would come next): the next block is a later event
    let c = publish_ok(&server, "channel=a&channel=b", "c");
    assert_eq!(both.next_event().id.unwrap(), c);
}

fn ids_strictly_increase_over_all_channels(driver: &str) {
    let server = TestServer::start(driver, &[]);
    let mut s = Sub::open(server.addr, "channel=x&channel=y&channel=z", None);
    s.position();
    let chans = ["x", "y", "z"];
    let ids: Vec<String> = (0..150)
        .map(|i| publish_ok(&server, &format!("channel={}", chans[i % 3]), "v"))
        .collect();
    for w in ids.windows(2) {
        assert!(id_key(&w[1]) > id_key(&w[0]), "{w:?}");
    }
    let got: Vec<String> = (0..150).map(|_| s.next_event().id.unwrap()).collect();
    assert_eq!(got, ids);
}

fn tick_streams_are_unchanged_byte_for_byte(driver: &str) {
    let server = TestServer::start(driver, &["--interval", "100ms", "--heartbeat", "50ms"]);
    let mut tick = SseClient::open(server.addr, "");
    let mut sub = Sub::open(server.addr, "channel=news", None);
    sub.position();
    publish_ok(&server, "channel=news", "published");
    sub.next_event();
    // Raw bytes after the head: only the seed's frames, no position, heartbeat or event.
    let mut raw = String::from_utf8(tick.take_pending()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while raw.matches("\n\n").count() < 4 && Instant::now() < deadline {
        let mut b = [0u8; 4096];
        let n = tick.stream.read(&mut b).unwrap();
        raw.push_str(std::str::from_utf8(&b[..n]).unwrap());
    }
    for frame in raw.split_terminator("\n\n").take(4) {
        let lines: Vec<&str> = frame.split('\n').collect();
        assert_eq!(lines.len(), 3, "{raw:?}");
        let id = lines[0].strip_prefix("id: ").expect("id line");
        assert!(id.bytes().all(|b| b.is_ascii_digit()), "{raw:?}");
        assert_eq!(&lines[1..], ["event: message", "data: hello"], "{raw:?}");
    }
}

fn channel_streams_get_heartbeats(driver: &str) {
    let server = TestServer::start(driver, &["--heartbeat", "100ms"]);
    let mut s = Sub::open(server.addr, "channel=quiet", None);
    s.position();
    for _ in 0..3 {
        let e = s.next();
        assert_eq!(
            (e.id, e.event, e.data.len()),
            (None, None, 0),
            "a heartbeat comment"
        );
    }
    let mut raw = String::new();
    while !raw.contains(":\n\n") {
        let mut b = [0u8; 64];
        let n = s.c.stream.read(&mut b).unwrap();
        raw.push_str(std::str::from_utf8(&b[..n]).unwrap());
    }
    assert!(raw.starts_with(":\n\n"), "{raw:?}");
}

fn replay_after_a_disconnect_delivers_what_was_missed(driver: &str) {
    // The checks below place the seam (the position frame) after every event published before
    // the reconnect, which needs the core to have taken them: a 201 only promises they are in
    // every core's inbox, and `--publish-batch` lets an inbox rest for a while after a hand-out,
    // so a stream opening in that window starts from an earlier position (and receives the rest
    // live). Without the rest, the cores take events as they come.
    let server = TestServer::start(driver, &["--publish-batch", "0"]);
    let mut s = Sub::open(server.addr, "channel=news", None);
    let pos = s.position();
    let first = publish_ok(&server, "channel=news", "before");
    assert_eq!(s.next_event().id.unwrap(), first);
    drop(s);
    // published while away: on our channel and on another
    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(publish_ok(&server, "channel=news", &format!("away {i}")));
        publish_ok(&server, "channel=other", "not ours");
    }
    let mut s = Sub::open(server.addr, "channel=news", Some(&first));
    let got: Vec<Event> = (0..5).map(|_| s.next_event()).collect();
    assert_eq!(
        got.iter()
            .map(|e| e.id.clone().unwrap())
            .collect::<Vec<_>>(),
        missed
    );
    assert_eq!(got[4].data, vec!["away 4"]);
    // then the position (the last event handed out, on any channel), then live events
    let position = s.next();
    assert!(position.data.is_empty());
    assert!(id_key(position.id.as_deref().unwrap()) > id_key(&missed[4]));
    let live = publish_ok(&server, "channel=news", "live");
    assert_eq!(s.next_event().id.unwrap(), live);
    // the query parameter works too, and a resume from the start position replays everything
    let mut q = Sub::open(
        server.addr,
        &format!("channel=news&lastEventId={pos}"),
        None,
    );
    assert_eq!(q.next_event().id.unwrap(), first);
    assert_eq!(metric(&server, "replay_resets_total"), 0.0);
    assert!(metric(&server, "events_replayed_total") >= 6.0);
}

fn eviction_is_announced_with_a_reset_then_what_is_retained(driver: &str) {
    // The reset names the core's position as the current id: `--publish-batch 0` so that the
    // cores have taken every published event when the stream opens (see the test above).
    let server = TestServer::start(driver, &["--history", "3", "--publish-batch", "0"]);
    let ids: Vec<String> = (0..6)
        .map(|i| publish_ok(&server, "channel=c", &format!("e{i}")))
        .collect();
    let mut s = Sub::open(server.addr, "channel=c", Some(&ids[0]));
    let reset = s.next_event();
    assert_eq!(reset.event.as_deref(), Some("ringcast-reset"));
    assert_eq!(
        reset.id, None,
        "a reset does not move the client's position"
    );
    let why: serde_json::Value = serde_json::from_str(&reset.data[0]).unwrap();
    assert_eq!(why["reason"], "evicted");
    assert_eq!(why["last_event_id"], ids[0].as_str());
    assert_eq!(why["current_id"], ids[5].as_str());
    let got: Vec<String> = (0..3).map(|_| s.next_event().id.unwrap()).collect();
    assert_eq!(got, ids[3..]);
    // a resume the history covers is not a reset
    let mut ok = Sub::open(server.addr, "channel=c", Some(&ids[2]));
    assert_eq!(ok.next_event().id.unwrap(), ids[3]);
    // ids that are not ours: a tick id, garbage, one from before this server started
    for (bad, reason) in [
        ("12345", "tick-id"),
        ("nonsense", "malformed"),
        ("1-0", "before-start"),
    ] {
        let mut s = Sub::open(server.addr, "channel=c", Some(bad));
        let reset = s.next_event();
        assert_eq!(reset.event.as_deref(), Some("ringcast-reset"), "{bad}");
        let why: serde_json::Value = serde_json::from_str(&reset.data[0]).unwrap();
        assert_eq!(why["reason"], reason, "{bad}");
    }
    assert_eq!(metric(&server, "replay_resets_total"), 4.0);
}

fn replay_racing_a_publisher_is_complete_and_duplicate_free(driver: &str) {
    const CLIENTS: usize = 100;
    const CHANNELS: usize = 4;
    const EVENTS: usize = 800;
    let server = TestServer::start(driver, &[]);
    let admin = server.admin.unwrap();
    let published: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); CHANNELS]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients first take their start position, then the publisher hammers while they drop and
    // reconnect (with Last-Event-ID) again and again.
    let starts: Vec<(usize, Sub, String)> = (0..CLIENTS)
        .map(|i| {
            let ch = i % CHANNELS;
            let mut s = Sub::open(server.addr, &format!("channel=c{ch}"), None);
            let pos = s.position();
            (ch, s, pos)
        })
        .collect();
    let publisher = {
        let published = published.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut conn = connect(admin);
            for i in 0..EVENTS {
                let ch = i % CHANNELS;
                let body = format!("event {i}");
                let req = format!(
                    "POST /publish?channel=c{ch} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(req.as_bytes()).unwrap();
                let resp = read_response(&mut conn);
                assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
                let body = resp.split_once("\r\n\r\n").unwrap().1;
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                published.lock().unwrap()[ch].push(v["id"].as_str().unwrap().to_owned());
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        })
    };
    let addr = server.addr;
    let clients: Vec<_> = starts
        .into_iter()
        .enumerate()
        .map(|(i, (ch, mut s, pos))| {
            let published = published.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut got: Vec<String> = Vec::new();
                let mut n = 0usize;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let last = published.lock().unwrap()[ch].last().cloned();
                    if finished && got.last() == last.as_ref() {
                        return (ch, pos, got);
                    }
                    let e = s.next();
                    if !e.data.is_empty() {
                        assert_ne!(e.event.as_deref(), Some("ringcast-reset"), "{e:?}");
                        got.push(e.id.unwrap());
                    }
                    n += 1;
                    // drop the connection every few blocks, at different points per client
                    if n.is_multiple_of(3 + i % 5) {
                        let last = s.last_id.clone();
                        drop(s);
                        s = Sub::open(addr, &format!("channel=c{ch}"), last.as_deref());
                    }
                }
            })
        })
        .collect();
    publisher.join().unwrap();
    let published = published.lock().unwrap().clone();
    for c in clients {
        let (ch, pos, got) = c.join().unwrap();
        let expected: Vec<&String> = published[ch]
            .iter()
            .filter(|id| id_key(id) > id_key(&pos))
            .collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            expected,
            "channel c{ch}: complete, in order, none twice"
        );
    }
    assert!(metric(&server, "events_replayed_total") > 0.0);
}

fn a_non_reading_channel_stream_is_closed_at_its_queue_limit(driver: &str) {
    let server = TestServer::start(
        driver,
        &["--max-event-bytes", "8KiB", "--max-queued-bytes", "32KiB"],
    );
    // A client that never reads, with a small receive buffer so the server's send buffer fills.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let mut stalled: TcpStream = sock.into();
    stalled
        .write_all(b"GET /?channel=flood HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut reader = Sub::open(server.addr, "channel=flood", None);
    reader.position();
    let payload = "x".repeat(8000);
    let closed = "ringcast_streams_closed_total{worker=\"total\",reason=\"queue_full\"}";
    let deadline = Instant::now() + PATIENCE * 3;
    let mut sent = 0;
    // Publish in lockstep with the reader (each event read before the next is published), so
    // only the non-reader can fall behind, however slowly this machine runs.
    while series(&admin_get(&server, "/metrics"), closed) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "non-reader never closed after {sent} events"
        );
        let id = publish_ok(&server, "channel=flood", &payload);
        assert_eq!(reader.next_event().id.unwrap(), id);
        sent += 1;
    }
    // The reader is still served.
    let id = publish_ok(&server, "channel=flood", "after");
    assert_eq!(reader.next_event().id.unwrap(), id);
    assert_eq!(metric(&server, "channel_streams_open"), 1.0);
    drop(stalled);
}

/// `--publish-batch`: events that arrive while a core's inbox rests after a hand-out are all
/// delivered, in order, and taken together (fewer hand-outs than events); a hand-out to a few
/// streams goes out with direct sends rather than ring writes.
fn back_to_back_events_are_handed_out_together_and_written_directly(driver: &str) {
    let server = TestServer::start(driver, &["--publish-batch", "1s"]);
    let mut s = Sub::open(server.addr, "channel=burst", None);
    s.position();
    let ids: Vec<String> = (0..20)
        .map(|i| publish_ok(&server, "channel=burst", &format!("e{i}")))
        .collect();
    let got: Vec<String> = (0..20).map(|_| s.next_event().id.unwrap()).collect();
    assert_eq!(got, ids, "every event, in order, none twice");
    // Every core takes every event. Without the rest, 20 events published one after another
    // would mostly be 20 hand-outs per core; with a 1 s rest, only publishes slower than 50 ms
    // each could keep it above 10 per core.
    let workers = series(&admin_get(&server, "/metrics"), "ringcast_workers_running");
    let handouts = metric(&server, "event_handouts_total");
    assert!(handouts >= 1.0, "the stream's core handed the events out");
    assert!(
        handouts <= 10.0 * workers,
        "{handouts} hand-outs for 20 events on {workers} cores"
    );
    assert!(
        metric(&server, "frames_sent_direct_total") >= 20.0,
        "the events to one stream went out with direct sends"
    );
}

fn a_batch_is_published_in_order_in_one_request(driver: &str) {
    let server = TestServer::start(driver, &[]);
    let admin = server.admin.unwrap();
    let mut a = Sub::open(server.addr, "channel=a", None);
    let mut both = Sub::open(server.addr, "channel=a&channel=b", None);
    a.position();
    let before = both.position();
    let before_requests = series(
        &admin_get(&server, "/metrics"),
        "ringcast_publish_requests_total",
    );
    let ids = publish_batch_ok(
        admin,
        r#"[{"channel": "a", "data": "one"},
            {"channels": ["b"], "event": "score", "data": "2\n3"},
            {"channels": ["a", "b"], "data": "four"}]"#,
    );
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(id_key(&ids[0]) > id_key(&before));
    for w in ids.windows(2) {
        assert!(id_key(&w[1]) > id_key(&w[0]), "{w:?}");
    }
    // Each stream gets the events on its channels, in the batch's order, once.
    let got: Vec<_> = (0..3).map(|_| both.next_event()).collect();
    let seen: Vec<_> = got
        .iter()
        .map(|e| (e.id.clone().unwrap(), e.event.clone(), e.data.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (ids[0].clone(), Some("message".into()), vec!["one".into()]),
            (
                ids[1].clone(),
                Some("score".into()),
                vec!["2".into(), "3".into()]
            ),
            (ids[2].clone(), Some("message".into()), vec!["four".into()]),
        ]
    );
    let got: Vec<String> = (0..2).map(|_| a.next_event().id.unwrap()).collect();
    assert_eq!(got, vec![ids[0].clone(), ids[2].clone()]);
    // One request, three events.
    let metrics = admin_get(&server, "/metrics");
    assert_eq!(series(&metrics, "ringcast_events_published_total"), 3.0);
    assert_eq!(
        series(&metrics, "ringcast_publish_requests_total"),
        before_requests + 1.0
    );
    // A stream that comes back with the first id is replayed the rest from the history.
    let mut again = Sub::open(server.addr, "channel=a&channel=b", Some(&ids[0]));
    let got: Vec<String> = (0..2).map(|_| again.next_event().id.unwrap()).collect();
    assert_eq!(got, vec![ids[1].clone(), ids[2].clone()]);
}

fn a_bad_batch_publishes_nothing(driver: &str) {
    let server = TestServer::start(
        driver,
        &["--publish-token", "s3cret", "--max-event-bytes", "1KiB"],
    );
    let admin = server.admin.unwrap();
    let auth = "Authorization: Bearer s3cret\r\n";
    let ok = r#"{"channel": "a", "data": "x"}"#;
    let (status, body) = publish_batch(admin, &format!("[{ok}]"), "");
    assert_eq!(status, 401, "{body}");
    for (batch, status, says) in [
        ("[".to_owned(), 400, "not JSON"),
        ("[]".to_owned(), 400, "1 to 1000 events"),
        (
            format!("[{ok}, {{\"channel\": \"a b\", \"data\": \"x\"}}]"),
            400,
            "event 1: invalid channel name",
        ),
        (
            format!("[{ok}, {ok}, {{\"chanel\": \"a\", \"data\": \"x\"}}]"),
            400,
            "event 2: unknown field",
        ),
        (
            format!(
                "[{ok}, {{\"channel\": \"a\", \"data\": \"{}\"}}]",
                "x".repeat(1025)
            ),
            413,
            "over 1024 bytes",
        ),
    ] {
        let (got, body) = publish_batch(admin, &batch, auth);
        assert_eq!(got, status, "{batch}: {body}");
        assert!(body.contains(says), "{batch}: {body}");
    }
    let resp = request(admin, b"GET /publish/batch HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");
    assert_eq!(
        series(
            &admin_get(&server, "/metrics"),
            "ringcast_events_published_total"
        ),
        0.0
    );
    // The listener is still there, and a good batch after the bad ones goes through.
    let (status, body) = publish_batch(admin, &format!("[{ok}, {ok}]"), auth);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        series(
            &admin_get(&server, "/metrics"),
            "ringcast_events_published_total"
        ),
        2.0
    );
}

fn publishing_needs_the_token_when_one_is_set(driver: &str) {
    let server = TestServer::start(driver, &["--publish-token", "s3cret"]);
    let admin = server.admin.unwrap();
    let raw = |auth: &str| {
        format!("POST /publish?channel=a HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 1\r\n\r\nx")
    };
    let resp = request(admin, raw("").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
    assert!(resp.contains("WWW-Authenticate: Bearer"), "{resp}");
    let (status, _) = publish_raw(admin, raw("Authorization: Bearer wrong\r\n").as_bytes());
    assert_eq!(status, 401);
    let (status, body) = publish_raw(admin, raw("Authorization: Bearer s3cret\r\n").as_bytes());
    assert_eq!(status, 201, "{body}");
    // scraping needs no token
    assert!(admin_get(&server, "/healthz").starts_with("HTTP/1.1 200"));
}

fn bad_subscribe_and_publish_requests_get_their_status(driver: &str) {
    let server = TestServer::start(
        driver,
        &[
            "--max-channels-per-stream",
            "2",
            "--max-event-bytes",
            "1KiB",
        ],
    );
    let mut watcher = Sub::open(server.addr, "channel=w", None);
    watcher.position();
    let get = |target: &str| {
        request(
            server.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
    };
    for (target, says) in [
        ("/?channel=", "invalid channel name"),
        ("/?channel=a%20b", "invalid channel name"),
        ("/?channel=a/b", "invalid channel name"),
        (
            &format!("/?channel={}", "x".repeat(129)),
            "invalid channel name",
        ),
        ("/?channel=a&channel=b&channel=c", "at most 2"),
    ] {
        let resp = get(target);
        assert!(resp.starts_with("HTTP/1.1 400 "), "{target}: {resp}");
        assert!(resp.contains(says), "{target}: {resp}");
    }
    // repeated names count once; percent-encoding is decoded
    let mut ok = Sub::open(server.addr, "channel=a%3Ab&channel=a:b&channel=c", None);
    ok.position();
    let id = publish_ok(&server, "channel=a:b", "decoded");
    assert_eq!(ok.next_event().id.unwrap(), id);

    let admin = server.admin.unwrap();
    let post = |query: &str, body: &[u8]| {
        let mut raw = format!(
            "POST /publish?{query} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        publish_raw(admin, &raw)
    };
    for (query, body, status) in [
        ("", &b"x"[..], 400),
        ("channel=bad%20name", b"x", 400),
        ("channel=a&event=x%0Dy", b"x", 400),
        ("channel=a&event=x%00y", b"x", 400),
        ("channel=a", b"", 400),
        ("channel=a", b"\xff\xfe", 400),
        ("channel=a", &[b'z'; 1025], 413),
    ] {
        let (got, resp) = post(query, body);
        assert_eq!(got, status, "{query} {body:?}: {resp}");
        assert!(resp.contains("\"error\""), "{resp}");
    }
    let (status, _) = publish_raw(admin, b"GET /publish?channel=a HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _) = publish_raw(
        admin,
        b"POST /publish?channel=a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    assert_eq!(status, 411);
    // the watcher saw none of it, and still receives
    let id = publish_ok(&server, "channel=w", "still here");
    assert_eq!(watcher.next_event().id.unwrap(), id);
    let m = admin_get(&server, "/metrics");
    assert!(series(&m, "ringcast_publish_refused_total{status=\"400\"}") >= 6.0);
}
