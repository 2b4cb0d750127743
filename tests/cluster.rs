//! Cluster mode against a real `redis-server` (started here on a free port, persistence off
//! unless the test needs it): several nodes share one event stream; a node killed mid-run loses
//! nothing for clients that move to another; a Redis restart with its data loses nothing, one
//! without it is announced with `ringcast-reset`; a node started before Redis serves its streams
//! and joins when Redis comes up; a batch published on one node reaches the others in order.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let args = [
        &["--redis", url.as_str(), "--heartbeat", "200ms"][..],
        extra,
    ]
    .concat();
    TestServer::start("auto", &args)
}

/// A gauge without a worker label, e.g. `engine_up`.
fn gauge(server: &TestServer, name: &str) -> f64 {
    series(&admin_get(server, "/metrics"), &format!("ringcast_{name}"))
}

fn wait_engine(server: &TestServer, up: bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    while (gauge(server, "engine_up") == 1.0) != up {
        assert!(
            Instant::now() < deadline,
            "engine_up never became {up}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes, retrying while the answer is 503 (Redis still coming up); returns the id.
fn publish_retrying(server: &TestServer, query: &str, data: &str) -> String {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let (status, body) = publish(server, query, data);
        match status {
            201 => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                return v["id"].as_str().unwrap().to_owned();
            }
            503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("publish: {status} {body}"),
        }
    }
}

/// Reads events until `last` (an id) has arrived; returns the ids of the events read.
fn read_through(s: &mut Sub, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let e = s.next_event();
        assert_ne!(e.event.as_deref(), Some("ringcast-reset"), "{e:?}");
        let id = e.id.expect("published events have ids");
        let done = id == last;
        got.push(id);
        if done {
            return got;
        }
    }
}

#[test]
fn three_nodes_deliver_every_event_once_in_order() {
    let test = "three_nodes_deliver_every_event_once_in_order";
    let Some(redis) = RedisServer::start(test, false) else {
        return;
    };
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&redis, &[])).collect();
    for n in &nodes {
        wait_engine(n, true);
    }
    const CHANNELS: usize = 5;
    let mut subs: Vec<(usize, Sub)> = (0..300)
        .map(|i| {
            let ch = i % CHANNELS;
            let mut s = Sub::open(nodes[i % 3].addr, &format!("channel=c{ch}"), None);
            s.position();
            (ch, s)
        })
        .collect();
    // Round-robin over the nodes and the channels; one event on two channels too.
    let mut published: Vec<Vec<String>> = vec![Vec::new(); CHANNELS];
    for i in 0..60 {
        let ch = i % CHANNELS;
        let id = publish_ok(&nodes[i % 3], &format!("channel=c{ch}"), &format!("e{i}"));
        published[ch].push(id);
    }
    let both = publish_ok(&nodes[1], "channel=c0&channel=c1", "both");
    published[0].push(both.clone());
    published[1].push(both);
    for (ch, s) in &mut subs {
        let last = published[*ch].last().unwrap().clone();
        assert_eq!(read_through(s, &last), published[*ch], "channel c{ch}");
    }
    // Nothing extra came after: the next event is a later one.
    let sentinel = publish_ok(
        &nodes[2],
        "channel=c0&channel=c1&channel=c2&channel=c3&channel=c4",
        "end",
    );
    for (_, s) in &mut subs {
        assert_eq!(s.next_event().id.unwrap(), sentinel);
    }
    for n in &nodes {
        assert_eq!(gauge(n, "engine_events_read_total"), 62.0);
    }
}

#[test]
fn a_batch_published_on_one_node_reaches_another_in_order() {
    let test = "a_batch_published_on_one_node_reaches_another_in_order";
    let Some(redis) = RedisServer::start(test, false) else {
        return;
    };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    wait_engine(&a, true);
    wait_engine(&b, true);
    let mut sub = Sub::open(b.addr, "channel=x&channel=y", None);
    sub.position();
    let ids = publish_batch_ok(
        a.admin.unwrap(),
        r#"[{"channel": "x", "data": "1"}, {"channel": "y", "event": "t", "data": "2"},
            {"channels": ["x", "y"], "data": "3"}]"#,
    );
    assert_eq!(ids.len(), 3, "{ids:?}");
    let got: Vec<_> = (0..3).map(|_| sub.next_event()).collect();
    let seen: Vec<_> = got
        .iter()
        .map(|e| (e.id.clone().unwrap(), e.data.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (ids[0].clone(), vec!["1".to_owned()]),
            (ids[1].clone(), vec!["2".to_owned()]),
            (ids[2].clone(), vec!["3".to_owned()]),
        ]
    );
    assert_eq!(got[1].event.as_deref(), Some("t"));
    assert_eq!(gauge(&b, "engine_events_read_total"), 3.0);
    // Without Redis nothing is taken: a 503 whose ids say so, event by event.
    drop(redis);
    wait_engine(&a, false);
    let (status, body) = publish_batch(
        a.admin.unwrap(),
        r#"[{"channel": "x", "data": "4"}, {"channel": "y", "data": "5"}]"#,
        "",
    );
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ids"], serde_json::json!([null, null]), "{body}");
    assert!(v["error"].as_str().unwrap().contains("redis"), "{body}");
}

/// What a follower ends with: its channel, its start position, the ids it received, and how
/// many times it moved to another node.
type Followed = (usize, String, Vec<String>, usize);

/// Clients that follow a channel through reconnects, moving to the next node when theirs is
/// gone, as a client behind a load balancer would; each returns what it received.
fn followers(
    nodes: Vec<SocketAddr>,
    clients: usize,
    channels: usize,
    published: Arc<Mutex<Vec<Vec<String>>>>,
    done: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Followed>> {
    (0..clients)
        .map(|i| {
            let (nodes, published, done) = (nodes.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let ch = i % channels;
                let query = format!("channel=c{ch}");
                let mut at = i % nodes.len();
                let mut s = Sub::open(nodes[at], &query, None);
                let start = s.position();
                let mut got: Vec<String> = Vec::new();
                let mut moves = 0;
                loop {
                    let last = published.lock().unwrap()[ch].last().cloned();
                    if done.load(Ordering::Acquire) && got.last() == last.as_ref() {
                        return (ch, start, got, moves);
                    }
                    match s.c.next_event() {
                        Some(e) => {
                            if let Some(id) = &e.id {
                                s.last_id = Some(id.clone());
                            }
                            if !e.data.is_empty() {
                                assert_ne!(e.event.as_deref(), Some("ringcast-reset"), "{e:?}");
                                got.push(e.id.unwrap());
                            }
                        }
                        None => {
                            // The node is gone: the next one, with Last-Event-ID.
                            let last = s.last_id.clone();
                            loop {
                                at = (at + 1) % nodes.len();
                                if let Ok(c) = std::net::TcpStream::connect(nodes[at]) {
                                    drop(c);
                                    break;
                                }
                            }
                            s = Sub::open(nodes[at], &query, last.as_deref());
                            moves += 1;
                        }
                    }
                }
            })
        })
        .collect()
}

#[test]
fn clients_of_a_killed_node_resume_on_another_without_loss() {
    let test = "clients_of_a_killed_node_resume_on_another_without_loss";
    let Some(redis) = RedisServer::start(test, false) else {
        return;
    };
    let mut nodes: Vec<TestServer> = (0..3).map(|_| node(&redis, &[])).collect();
    for n in &nodes {
        wait_engine(n, true);
    }
    const CHANNELS: usize = 4;
    let published: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); CHANNELS]));
    let done = Arc::new(AtomicBool::new(false));
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let clients = followers(addrs, 90, CHANNELS, published.clone(), done.clone());
    // Wait until every client is subscribed (the streams gauge of all nodes).
    let deadline = Instant::now() + PATIENCE;
    while nodes
        .iter()
        .map(|n| metric(n, "channel_streams_open"))
        .sum::<f64>()
        < 90.0
    {
        assert!(Instant::now() < deadline, "clients did not all subscribe");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Publish through nodes 1 and 2 only; kill node 0 halfway.
    for i in 0..200 {
        if i == 100 {
            nodes[0].kill();
        }
        let ch = i % CHANNELS;
        let id = publish_ok(
            &nodes[1 + i % 2],
            &format!("channel=c{ch}"),
            &format!("e{i}"),
        );
        published.lock().unwrap()[ch].push(id);
    }
    done.store(true, Ordering::Release);
    let published = published.lock().unwrap().clone();
    let mut moved = 0;
    for c in clients {
        let (ch, start, got, moves) = c.join().unwrap();
        let expected: Vec<&String> = published[ch]
            .iter()
            .filter(|id| id_key(id) > id_key(&start))
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), expected, "channel c{ch}");
        moved += moves.min(1);
    }
    // The killed node's clients (every third) all moved; whether they needed a replay depends
    // on whether an event of their channel came while they were away, so it is not asserted.
    assert!(moved >= 30, "{moved} clients moved to another node");
}

#[test]
fn a_redis_restart_with_its_data_loses_nothing() {
    let test = "a_redis_restart_with_its_data_loses_nothing";
    let Some(mut redis) = RedisServer::start(test, true) else {
        return;
    };
    let a = node(&redis, &["--interval", "200ms"]);
    let b = node(&redis, &[]);
    wait_engine(&a, true);
    wait_engine(&b, true);
    let mut on_a = Sub::open(a.addr, "channel=news", None);
    let mut on_b = Sub::open(b.addr, "channel=news", None);
    on_a.position();
    on_b.position();
    let mut tick = SseClient::open(a.addr, "");
    let before = publish_ok(&a, "channel=news", "before");
    assert_eq!(
        read_through(&mut on_a, &before),
        std::slice::from_ref(&before)
    );
    assert_eq!(
        read_through(&mut on_b, &before),
        std::slice::from_ref(&before)
    );
    let mut ids = Vec::new();

    redis.stop(true);
    wait_engine(&a, false);
    wait_engine(&b, false);
    let (status, body) = publish(&b, "channel=news", "while down");
    assert_eq!(status, 503, "{body}");
    let resp = request(
        b.admin.unwrap(),
        b"POST /publish?channel=news HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
    );
    assert!(resp.contains("\r\nRetry-After: "), "{resp}");
    // Streams stay open: ticks go on, channel streams get heartbeats.
    tick.ticks(2);
    assert!(on_b.next().data.is_empty());
    let health = admin_get(&a, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
    assert!(health.contains("\"state\":\"down\""), "{health}");

    redis.restart();
    // Published through A as soon as A is back, while B may still be reconnecting.
    for i in 0..5 {
        ids.push(publish_retrying(&a, "channel=news", &format!("after {i}")));
    }
    wait_engine(&b, true);
    assert_eq!(read_through(&mut on_a, ids.last().unwrap()), ids);
    assert_eq!(read_through(&mut on_b, ids.last().unwrap()), ids);
    assert!(gauge(&b, "engine_reconnects_total") >= 1.0);
    assert!(
        a.log_text().contains("redis unavailable"),
        "{}",
        a.log_text()
    );
}

#[test]
fn a_redis_restart_without_its_data_is_a_reset_for_old_ids() {
    let test = "a_redis_restart_without_its_data_is_a_reset_for_old_ids";
    let Some(mut redis) = RedisServer::start(test, false) else {
        return;
    };
    let a = node(&redis, &[]);
    wait_engine(&a, true);
    let mut s = Sub::open(a.addr, "channel=news", None);
    s.position();
    let old = publish_ok(&a, "channel=news", "old");
    assert_eq!(s.next_event().id.unwrap(), old);
    drop(s);

    redis.wipe();
    redis.restart();
    let deadline = Instant::now() + PATIENCE * 2;
    while gauge(&a, "engine_epoch_changes_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no new epoch seen; log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = publish_retrying(&a, "channel=news", "new");
    let mut back = Sub::open(a.addr, "channel=news", Some(&old));
    let reset = back.next_event();
    assert_eq!(reset.event.as_deref(), Some("ringcast-reset"), "{reset:?}");
    let why: serde_json::Value = serde_json::from_str(&reset.data[0]).unwrap();
    assert_eq!(why["reason"], "epoch");
    // and it continues with what is retained
    assert_eq!(back.next_event().id.unwrap(), new);
    assert!(a.log_text().contains("redis lost its data"));
}

#[test]
fn a_node_started_before_redis_serves_and_joins_later() {
    let test = "a_node_started_before_redis_serves_and_joins_later";
    let Some(mut redis) = RedisServer::start(test, false) else {
        return;
    };
    redis.stop(false);
    let a = node(&redis, &["--interval", "200ms"]);
    assert!(
        a.wait_log("redis unavailable", PATIENCE).is_some(),
        "{}",
        a.log_text()
    );
    let mut tick = SseClient::open(a.addr, "");
    tick.ticks(2);
    let mut s = Sub::open(a.addr, "channel=news", None);
    s.position();
    assert!(s.next().data.is_empty(), "a heartbeat");
    assert_eq!(publish(&a, "channel=news", "too early").0, 503);
    let health = admin_get(&a, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");

    redis.restart();
    wait_engine(&a, true);
    let id = publish_retrying(&a, "channel=news", "joined");
    assert_eq!(s.next_event().id.unwrap(), id);
    // A node that starts later serves a resume from before its start out of Redis at once.
    let b = node(&redis, &[]);
    wait_engine(&b, true);
    let mut late = Sub::open(b.addr, "channel=news", Some(&s.last_id.clone().unwrap()));
    let later = publish_ok(&a, "channel=news", "later");
    assert_eq!(late.next_event().id.unwrap(), later);
    let mut from_start = Sub::open(b.addr, "channel=news", Some("1-0"));
    assert_eq!(
        from_start.next_event().id.unwrap(),
        id,
        "replayed from redis"
    );
    assert!(gauge(&b, "engine_replays_total") >= 1.0);
}
