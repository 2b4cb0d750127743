//! The admin listener: `POST /publish` and `POST /publish/batch`, and `/metrics` (Prometheus text
//! format), `/healthz` and `/info` (JSON).
//!
//! It runs on its own thread with its own small monoio runtime (epoll: a handful of connections
//! does not need a ring), away from the workers: publishing hands events to the workers through
//! the hub, scraping only reads their single-writer counters. Each admin connection is a task
//! with deadlines, so many keep-alive publishers are served at once, a silent or trickling client
//! only ever holds its own connection (and is cut off at `--header-timeout`), and stopping the
//! listener drops every connection at once: shutdown never waits for an admin client.
//!
//! It binds a separate address (`--admin-listen`, loopback by default), never the public
//! listener; on any other address publishing requires `--publish-token`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::config::{Config, Cors};
use crate::engine::{self, Engine};
use crate::event::EventId;
use crate::hub::{Hub, PublishError};
use crate::metrics::{HistogramSnapshot, Snapshot, WorkerStats, BUCKETS_US};
use crate::net::FdLimit;
use crate::publish::{self, Refusal};
use crate::streams::StreamCap;
use crate::worker::Started;

/// What the endpoints report on and publish to.
pub(crate) struct State {
    pub cfg: Arc<Config>,
    pub listen: SocketAddr,
    pub kernel: String,
    pub fd_limit: FdLimit,
    pub workers: Vec<Started>,
    pub stats: Vec<Arc<WorkerStats>>,
    pub cap: Arc<StreamCap>,
    pub hub: Arc<Hub>,
    /// Cluster mode: publishes go to Redis.
    pub engine: Option<Arc<Engine>>,
    /// Worker threads still running.
    pub alive: Arc<AtomicUsize>,
    pub started_at: SystemTime,
    pub counters: AdminCounters,
}

/// The admin listener's own counters (one writer: its thread).
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub publish_requests: AtomicU64,
    /// Publishes refused, by status.
    pub publish_refused: [AtomicU64; 6],
    pub connections_refused: AtomicU64,
}

/// The statuses `publish_refused` counts, in order.
const REFUSED: [u16; 6] = [400, 401, 411, 413, 503, 405];

impl AdminCounters {
    fn refused(&self, status: u16) {
        if let Some(i) = REFUSED.iter().position(|&s| s == status) {
            self.publish_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running admin listener.
pub(crate) struct Admin {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Largest admin request head.
const MAX_HEAD: usize = 8 * 1024;

impl Admin {
    pub fn start(addr: SocketAddr, state: State) -> io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("ringcast-admin".into())
            .spawn(move || {
                let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build();
                let mut rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let accepting = std::pin::pin!(accept_loop(listener, Rc::new(state)));
                    // Stopping drops the accept loop; the connection tasks go with the runtime.
                    let _ = futures::future::select(stop_rx, accepting).await;
                });
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("the admin thread did not start")),
        }
        Ok(Admin {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drops every admin connection; waits at most 500 ms for the thread.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("the admin thread did not stop within 500 ms; leaving it");
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Rc<State>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                if open.get() >= state.cfg.admin_max_connections {
                    state
                        .counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    monoio::spawn(refuse(conn));
                    continue;
                }
                open.set(open.get() + 1);
                // Request/response: answers leave at once, never behind Nagle.
                let _ = conn.set_nodelay(true);
                let (state, open) = (state.clone(), open.clone());
                monoio::spawn(async move {
                    serve(conn, &state).await;
                    open.set(open.get() - 1);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Over `--admin-max-connections`: a short 503, bounded in time.
async fn refuse(mut conn: TcpStream) {
    let reply = response(
        503,
        "text/plain",
        &[("Retry-After", "1")],
        b"too many admin connections\n",
        true,
    );
    let _ = monoio::time::timeout(Duration::from_secs(1), conn.write_all(reply)).await;
}

/// An admin request head, parsed.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_length: usize,
    pub authorization: Option<Vec<u8>>,
    pub close: bool,
    pub head_len: usize,
}

/// Why a head cannot be served (yet).
#[derive(Debug)]
pub enum BadHead {
    Partial,
    /// Answer with this status and text, then close.
    Bad(u16, &'static str),
}

/// Parses an admin request head at the start of `buf` (fuzzed with the publish checks).
pub fn parse_head(buf: &[u8]) -> Result<Head, BadHead> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(BadHead::Bad(431, "request header section too large\n"))
        }
        Ok(httparse::Status::Partial) => return Err(BadHead::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadHead::Bad(431, "too many header fields\n"))
        }
        Err(_) => return Err(BadHead::Bad(400, "bad request\n")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(BadHead::Bad(400, "bad request\n"));
    };
    let mut content_length = None;
    let mut close = version == 0;
    let mut authorization = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(h.value).ok().map(str::trim);
            match v.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())) {
                Some(v) if content_length.is_none() => {
                    content_length = Some(v.parse::<usize>().unwrap_or(usize::MAX))
                }
                _ => return Err(BadHead::Bad(400, "bad Content-Length\n")),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(BadHead::Bad(
                411,
                "chunked request bodies are not accepted; send Content-Length\n",
            ));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(h.value.to_vec());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        content_length: content_length.unwrap_or(0),
        authorization,
        close,
        head_len,
    })
}

/// Reads into `buf` until it holds `want` bytes, by `deadline`. `false`: closed or timed out.
async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, want: usize, deadline: Instant) -> bool {
    while buf.len() < want {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(want.max(buf.len() + 4096) - buf.len());
        }
        let start = buf.len();
        let end = buf.capacity();
        let left = deadline.saturating_duration_since(Instant::now());
        let read = conn.read(std::mem::take(buf).slice_mut(start..end));
        let Ok((res, slice)) = monoio::time::timeout(left, read).await else {
            return false;
        };
        *buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Serves one admin connection: requests one after another (keep-alive), each within
/// `--header-timeout` from its first byte (and an idle connection closed after it).
async fn serve(mut conn: TcpStream, state: &State) {
    let timeout = state.cfg.header_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let deadline = Instant::now() + timeout;
        let head = loop {
            match parse_head(&buf) {
                Ok(head) => break head,
                Err(BadHead::Bad(status, why)) => {
                    let reply = response(status, "text/plain", &[], why.as_bytes(), true);
                    let _ = monoio::time::timeout(timeout, conn.write_all(reply)).await;
                    return;
                }
                Err(BadHead::Partial) => {
                    let want = buf.len() + 1;
                    if !fill(&mut conn, &mut buf, want, deadline).await {
                        return;
                    }
                }
            }
        };
        let (reply, close) = answer(&mut conn, &mut buf, head, deadline, state).await;
        let Ok((Ok(_), _)) = monoio::time::timeout(timeout, conn.write_all(reply)).await else {
            return;
        };
        if close {
            return;
        }
    }
}

/// Handles one request whose head is at the start of `buf`; consumes it (and its body) from
/// `buf`. Returns the response and whether to close afterwards.
async fn answer(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: Head,
    deadline: Instant,
    state: &State,
) -> (Vec<u8>, bool) {
    let close = head.close;
    let batch = head.path == "/publish/batch";
    if head.path == "/publish" || batch {
        state
            .counters
            .publish_requests
            .fetch_add(1, Ordering::Relaxed);
        let refuse = |r: Refusal, close: bool| {
            state.counters.refused(r.status());
            let extra: &[(&str, &str)] = match r {
                Refusal::Unauthorized => &[("WWW-Authenticate", "Bearer realm=\"ringcast\"")],
                _ => &[],
            };
            let body = serde_json::json!({ "error": r.message() }).to_string() + "\n";
            let close = close || r.status() == 413;
            (
                response(
                    r.status(),
                    "application/json",
                    extra,
                    body.as_bytes(),
                    close,
                ),
                close,
            )
        };
        if head.method != "POST" {
            state.counters.refused(405);
            let reply = response(
                405,
                "text/plain",
                &[("Allow", "POST")],
                b"publish with POST\n",
                close,
            );
            return skip_body(conn, buf, &head, deadline, reply, close).await;
        }
        let cfg = &state.cfg;
        if !publish::authorized(head.authorization.as_deref(), cfg.publish_token.as_deref()) {
            let (reply, close) = refuse(Refusal::Unauthorized, close);
            return skip_body(conn, buf, &head, deadline, reply, close).await;
        }
        let too_large = if batch {
            let max = publish::batch_body_limit(cfg.max_event_bytes);
            (head.content_length > max).then_some(Refusal::BatchTooLarge(max))
        } else {
            (head.content_length > cfg.max_event_bytes)
                .then_some(Refusal::TooLarge(cfg.max_event_bytes))
        };
        if let Some(r) = too_large {
            // The body is not read: answer and close.
            return refuse(r, true);
        }
        let end = head.head_len + head.content_length;
        if !fill(conn, buf, end, deadline).await {
            return (Vec::new(), true);
        }
        let limits = publish::Limits {
            token: cfg.publish_token.as_deref(),
            max_channels: cfg.max_channels,
            max_event_bytes: cfg.max_event_bytes,
        };
        let body = &buf[head.head_len..end];
        let checked = if batch {
            publish::check_batch(body, limits)
        } else {
            publish::check(head.query.as_bytes(), body, limits).map(|p| vec![p])
        };
        buf.drain(..end);
        let events = match checked {
            Ok(events) => events,
            Err(r) => return refuse(r, close),
        };
        // The answer to a single publish names its channels; a batch's lists the ids in order.
        let single_channels = (!batch).then(|| events[0].channels.clone());
        let published = publish_events(state, events).await;
        let body = match (&published, single_channels) {
            (Ok(ids), Some(channels)) => {
                serde_json::json!({ "id": ids[0].to_string(), "channels": channels })
            }
            (Ok(ids), None) => serde_json::json!({
                "ids": ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()
            }),
            (Err((why, ids)), _) => {
                state.counters.refused(503);
                let mut body = serde_json::json!({ "error": why });
                if batch && !ids.is_empty() {
                    // In cluster mode a batch can fail part-way: per event, its id if it was
                    // taken, null if not.
                    body["ids"] = ids
                        .iter()
                        .map(|id| id.map_or(serde_json::Value::Null, |id| id.to_string().into()))
                        .collect();
                }
                body
            }
        };
        let body = body.to_string() + "\n";
        return match published {
            Ok(_) => (
                response(201, "application/json", &[], body.as_bytes(), close),
                close,
            ),
            Err(_) => (
                response(
                    503,
                    "application/json",
                    &[("Retry-After", "1")],
                    body.as_bytes(),
                    close,
                ),
                close,
            ),
        };
    }
    if head.method != "GET" && head.method != "HEAD" {
        let reply = response(
            405,
            "text/plain",
            &[("Allow", "GET, HEAD")],
            b"only GET\n",
            close,
        );
        return skip_body(conn, buf, &head, deadline, reply, close).await;
    }
    let (status, ctype, body) = match head.path.as_str() {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(state),
        ),
        "/healthz" => healthz(state),
        "/info" => (200, "application/json", info(state)),
        _ => (
            404,
            "text/plain",
            "try /metrics, /healthz, /info, POST /publish or POST /publish/batch\n".to_owned(),
        ),
    };
    let mut reply = response(status, ctype, &[], body.as_bytes(), close);
    if head.method == "HEAD" {
        let head_end = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(reply.len(), |i| i + 4);
        reply.truncate(head_end);
    }
    skip_body(conn, buf, &head, deadline, reply, close).await
}

/// Publishes checked events in order: through the hub (all or none), or through the engine
/// (Redis), all queued before the first answer is awaited so that they go out in one pipeline.
/// On failure: why (the first failure's reason), and per event its id if it was taken anyway
/// (`None` if not), so that a client can tell what to publish again.
async fn publish_events(
    state: &State,
    events: Vec<publish::Publish>,
) -> Result<Vec<EventId>, (String, Vec<Option<EventId>>)> {
    let Some(engine) = &state.engine else {
        return state.hub.publish_batch(events).map_err(|e| {
            let why = match e {
                PublishError::Overloaded => "the workers cannot keep up; retry shortly",
                PublishError::ShuttingDown | PublishError::NotLocal => {
                    "the server is shutting down"
                }
            };
            (why.to_owned(), Vec::new())
        });
    };
    let answers: Vec<_> = events
        .into_iter()
        .map(|p| engine.publish(p.channels, p.event, p.data))
        .collect();
    let mut ids = Vec::with_capacity(answers.len());
    let mut failure: Option<String> = None;
    for answer in answers {
        let id = match answer.await {
            Ok(Ok(id)) => Some(id),
            Ok(Err(engine::PublishError::Unavailable(why))) => {
                failure.get_or_insert_with(|| {
                    format!("the event store (redis) is unavailable: {why}")
                });
                None
            }
            Err(_) => {
                failure.get_or_insert_with(|| "the server is shutting down".into());
                None
            }
        };
        ids.push(id);
    }
    match failure {
        None => Ok(ids.into_iter().flatten().collect()),
        Some(why) => Err((why, ids)),
    }
}

/// `/healthz`: 200 while every worker runs (the streams are served), 503 otherwise; the JSON
/// also says what the engine is doing, which does not change the status: a node whose Redis is
/// down still serves its streams, ticks and heartbeats.
fn healthz(state: &State) -> (u16, &'static str, String) {
    let alive = state.alive.load(Ordering::Acquire);
    let total = state.workers.len();
    let ok = alive == total;
    let engine = match &state.engine {
        None => serde_json::json!({ "kind": "local", "state": "up" }),
        Some(e) => {
            let (st, epoch) = e.state();
            let (name, error) = match st {
                engine::State::Up => ("up", None),
                engine::State::Connecting => ("connecting", None),
                engine::State::Down(why) => ("down", Some(why)),
            };
            serde_json::json!({
                "kind": "redis",
                "state": name,
                "error": error,
                "epoch": epoch,
                "url": e.settings().redacted_url(),
                "stream": e.settings().stream,
            })
        }
    };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "workers": { "running": alive, "total": total },
        "streams_open": state.cap.open(),
        "engine": engine,
    });
    (
        if ok { 200 } else { 503 },
        "application/json",
        body.to_string() + "\n",
    )
}

/// Drops a request's body (up to 64 KiB; larger closes the connection) before answering.
async fn skip_body(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
    deadline: Instant,
    reply: Vec<u8>,
    close: bool,
) -> (Vec<u8>, bool) {
    if head.content_length > 64 * 1024 {
        return (reply, true);
    }
    let end = head.head_len + head.content_length;
    if !fill(conn, buf, end, deadline).await {
        return (reply, true);
    }
    buf.drain(..end);
    (reply, close)
}

fn response(status: u16, ctype: &str, extra: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The plain per-worker series: (name, type, help, value).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> f64,
);
const FAMILIES: &[Family] = &[
    ("streams_open", "gauge", "Streams open now.", |s| {
        s.streams_open as f64
    }),
    ("streams_opened_total", "counter", "Streams opened.", |s| {
        s.streams_opened as f64
    }),
    (
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        |s| s.connections_accepted as f64,
    ),
    (
        "accept_errors_total",
        "counter",
        "Failed accepts (EMFILE and friends).",
        |s| s.accept_errors as f64,
    ),
    (
        "ok_requests_total",
        "counter",
        "Plain requests answered (ok, HEAD, OPTIONS).",
        |s| s.ok_requests as f64,
    ),
    (
        "frames_sent_total",
        "counter",
        "Frames written to streams.",
        |s| s.frames_sent as f64,
    ),
    (
        "frames_sent_direct_total",
        "counter",
        "Frames of short event hand-outs written with a direct send rather than a ring write (also in frames_sent_total).",
        |s| s.frames_sent_direct as f64,
    ),
    (
        "bytes_sent_total",
        "counter",
        "Frame bytes written to streams.",
        |s| s.bytes_sent as f64,
    ),
    (
        "frames_skipped_total",
        "counter",
        "Ticks a stream skipped: its previous write was still pending.",
        |s| s.frames_skipped as f64,
    ),
    ("ticks_total", "counter", "Tick walks.", |s| s.ticks as f64),
    (
        "ticks_missed_total",
        "counter",
        "Ticks not walked because the core was over an interval late.",
        |s| s.ticks_missed as f64,
    ),
    (
        "channel_streams_open",
        "gauge",
        "Channel streams open now (also counted in streams_open).",
        |s| s.channel_streams_open as f64,
    ),
    (
        "events_delivered_total",
        "counter",
        "Published events queued on channel streams (one per stream reached).",
        |s| s.events_delivered as f64,
    ),
    (
        "event_handouts_total",
        "counter",
        "Times a core took published events from its inbox and handed them out (several can go at once, see --publish-batch).",
        |s| s.event_handouts as f64,
    ),
    (
        "events_replayed_total",
        "counter",
        "Events replayed from the history to resuming streams.",
        |s| s.events_replayed as f64,
    ),
    (
        "replay_resets_total",
        "counter",
        "Resumes the history could not complete (ringcast-reset sent).",
        |s| s.replay_resets as f64,
    ),
    (
        "heartbeats_skipped_total",
        "counter",
        "Heartbeats a channel stream skipped: a write was still pending.",
        |s| s.heartbeats_skipped as f64,
    ),
    (
        "heartbeats_not_needed_total",
        "counter",
        "Heartbeats not sent: the channel stream had an event since the last heartbeat walk.",
        |s| s.heartbeats_not_needed as f64,
    ),
    (
        "reclaim_sweeps_total",
        "counter",
        "Sweeps for streams whose clients had gone, run when the stream cap or the fd limit was reached.",
        |s| s.reclaim_sweeps as f64,
    ),
    (
        "streams_reclaimed_total",
        "counter",
        "Streams those sweeps removed (also counted in streams_closed_total{reason=\"client_gone\"}).",
        |s| s.streams_reclaimed as f64,
    ),
    (
        "stuck_writes_reaped_total",
        "counter",
        "Streams shut down for skips whose parked write never returned, removed at the next walk.",
        |s| s.stuck_writes_reaped as f64,
    ),
    (
        "tick_walk_seconds_max",
        "gauge",
        "Longest tick walk.",
        |s| s.walk_us_max as f64 / 1e6,
    ),
];

/// The Prometheus text exposition: one series per worker (`worker="0"`, …) and one summed over
/// the workers (`worker="total"`; leave it out when aggregating yourself).
pub(crate) fn metrics(state: &State) -> String {
    let per: Vec<(String, Snapshot)> = state
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| (i.to_string(), s.snapshot()))
        .collect();
    let mut total = Snapshot::default();
    for (_, s) in &per {
        total += *s;
    }
    let rows: Vec<(&str, &Snapshot)> = per
        .iter()
        .map(|(w, s)| (w.as_str(), s))
        .chain(std::iter::once(("total", &total)))
        .collect();

    let mut out = String::with_capacity(8192);
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(
            out,
            "# HELP ringcast_{name} {help}\n# TYPE ringcast_{name} {kind}"
        );
        for (w, s) in &rows {
            let _ = writeln!(out, "ringcast_{name}{{worker=\"{w}\"}} {}", value(s));
        }
    }

    let _ = writeln!(
        out,
        "# HELP ringcast_streams_closed_total Streams closed, by reason.\n# TYPE ringcast_streams_closed_total counter"
    );
    for (w, s) in &rows {
        for (reason, v) in [
            ("client_gone", s.closed_client_gone),
            ("write_error", s.closed_write_error),
            ("skips_exceeded", s.closed_skips),
            ("shutdown", s.closed_shutdown),
            ("queue_full", s.closed_queue_full),
        ] {
            let _ = writeln!(
                out,
                "ringcast_streams_closed_total{{worker=\"{w}\",reason=\"{reason}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_connections_rejected_total Requests refused with an error status, by reason.\n# TYPE ringcast_connections_rejected_total counter"
    );
    for (w, s) in &rows {
        for (reason, v) in [
            ("cap", s.rejected_busy),
            ("timeout", s.rejected_timeout),
            ("bad_request", s.rejected_bad_request),
            ("too_large", s.rejected_too_large),
            ("other", s.rejected_other),
        ] {
            let _ = writeln!(
                out,
                "ringcast_connections_rejected_total{{worker=\"{w}\",reason=\"{reason}\"}} {v}"
            );
        }
    }

    for (name, help, pick) in [
        (
            "tick_walk_seconds",
            "Time to start a write on every stream of a core, per tick.",
            (|s: &WorkerStats| s.walk.snapshot()) as fn(&WorkerStats) -> HistogramSnapshot,
        ),
        (
            "tick_lateness_seconds",
            "How late a tick walk started after its wall-clock boundary.",
            |s: &WorkerStats| s.lateness.snapshot(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP ringcast_{name} {help}\n# TYPE ringcast_{name} histogram"
        );
        let mut sum = HistogramSnapshot::default();
        let mut hist: Vec<(String, HistogramSnapshot)> = Vec::new();
        for (i, s) in state.stats.iter().enumerate() {
            let h = pick(s);
            sum += h;
            hist.push((i.to_string(), h));
        }
        hist.push(("total".into(), sum));
        for (w, h) in &hist {
            for (i, le) in BUCKETS_US.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ringcast_{name}_bucket{{worker=\"{w}\",le=\"{}\"}} {}",
                    *le as f64 / 1e6,
                    h.cumulative[i]
                );
            }
            let _ = writeln!(
                out,
                "ringcast_{name}_bucket{{worker=\"{w}\",le=\"+Inf\"}} {}",
                h.count()
            );
            let _ = writeln!(
                out,
                "ringcast_{name}_sum{{worker=\"{w}\"}} {}",
                h.sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "ringcast_{name}_count{{worker=\"{w}\"}} {}", h.count());
        }
    }

    let _ = writeln!(
        out,
        "# HELP ringcast_info Build and runtime facts.\n# TYPE ringcast_info gauge"
    );
    for w in &state.workers {
        let _ = writeln!(
            out,
            "ringcast_info{{worker=\"{}\",version=\"{}\",kernel=\"{}\",driver=\"{}\",uring_flags=\"{}\"}} 1",
            w.id,
            env!("CARGO_PKG_VERSION"),
            state.kernel,
            w.driver,
            w.uring_flags.map_or("none".to_string(), |f| f.to_string())
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_max_streams Stream cap over all workers.\n# TYPE ringcast_max_streams gauge\nringcast_max_streams {}",
        state.cap.max()
    );
    let _ = writeln!(
        out,
        "# HELP ringcast_fd_limit Open-files soft limit.\n# TYPE ringcast_fd_limit gauge\nringcast_fd_limit {}",
        state.fd_limit.soft
    );
    let (h_events, h_bytes, h_channels) = state.hub.history_size();
    let c = &state.counters;
    // Series without a worker label: the hub's, the admin listener's, and the engine's.
    let mut plain: Vec<(&str, &str, &str, f64)> = vec![
        (
            "events_published_total",
            "counter",
            "Events published (sequenced and handed to every core).",
            state.hub.published() as f64,
        ),
        (
            "history_events",
            "gauge",
            "Events held in the replay history.",
            h_events as f64,
        ),
        (
            "history_bytes",
            "gauge",
            "Bytes the replay history holds (frames and bookkeeping).",
            h_bytes as f64,
        ),
        (
            "history_channels",
            "gauge",
            "Channels with events in the replay history.",
            h_channels as f64,
        ),
        (
            "publish_requests_total",
            "counter",
            "Requests to /publish.",
            c.publish_requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "admin_connections_refused_total",
            "counter",
            "Admin connections refused at --admin-max-connections.",
            c.connections_refused.load(Ordering::Relaxed) as f64,
        ),
    ];
    if let Some(e) = &state.engine {
        let ec = &e.counters;
        plain.extend([
            (
                "engine_up",
                "gauge",
                "1 while the event store (redis) is reachable.",
                ec.up.load(Ordering::Relaxed) as u64 as f64,
            ),
            (
                "engine_reader_lag_seconds",
                "gauge",
                "How far the last event read is behind the stream's newest entry.",
                ec.lag_ms.load(Ordering::Relaxed) as f64 / 1e3,
            ),
            (
                "engine_reader_lag_entries",
                "gauge",
                "Stream entries not read yet (measured once a second, capped at 10000).",
                ec.lag_entries.load(Ordering::Relaxed) as f64,
            ),
            (
                "engine_reconnects_total",
                "counter",
                "Reconnections of the stream reader.",
                ec.reconnects.load(Ordering::Relaxed) as f64,
            ),
            (
                "engine_events_read_total",
                "counter",
                "Events read from the stream (from every node).",
                ec.events_read.load(Ordering::Relaxed) as f64,
            ),
            (
                "engine_publish_errors_total",
                "counter",
                "Publishes the event store did not take (answered 503).",
                ec.publish_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "engine_replays_total",
                "counter",
                "Replays asked of the event store (the history did not cover the id).",
                ec.replays.load(Ordering::Relaxed) as f64,
            ),
            (
                "engine_epoch_changes_total",
                "counter",
                "Times the event store came back without its data (a new epoch).",
                ec.epoch_changes.load(Ordering::Relaxed) as f64,
            ),
        ]);
    }
    for (name, kind, help, value) in plain {
        let _ = writeln!(
            out,
            "# HELP ringcast_{name} {help}\n# TYPE ringcast_{name} {kind}\nringcast_{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_publish_refused_total Publishes refused, by status.\n# TYPE ringcast_publish_refused_total counter"
    );
    for (status, n) in REFUSED.iter().zip(&c.publish_refused) {
        let _ = writeln!(
            out,
            "ringcast_publish_refused_total{{status=\"{status}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_workers_running Worker threads running.\n# TYPE ringcast_workers_running gauge\nringcast_workers_running {}",
        state.alive.load(Ordering::Acquire)
    );
    out
}

/// `/info`: what is running, as JSON.
pub(crate) fn info(state: &State) -> String {
    let cfg = &state.cfg;
    let workers: Vec<serde_json::Value> = state
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "id": w.id,
                "driver": w.driver.to_string(),
                "core": w.core,
                "fallback_reason": w.fallback,
                "uring_flags": w.uring_flags.map(|f| f.to_string()),
                "uring_flags_refused": w.flags_refused,
            })
        })
        .collect();
    let cors = match &cfg.cors {
        Cors::Any => serde_json::json!("*"),
        Cors::List(l) => serde_json::json!(l),
    };
    let started = state
        .started_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    serde_json::json!({
        "name": "ringcast",
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": state.kernel,
        "started_unix": started,
        "listen": state.listen.to_string(),
        "workers": workers,
        "socket_options_inherited": cfg.inherited.to_json(),
        "interval_ms": cfg.interval.as_millis() as u64,
        "event": cfg.event,
        "data": cfg.data,
        "limits": {
            "fd_soft": state.fd_limit.soft,
            "fd_hard": state.fd_limit.hard,
            "max_streams": state.cap.max(),
            "max_skips": cfg.max_skips,
            "header_timeout_ms": cfg.header_timeout.as_millis() as u64,
            "max_body": cfg.max_body,
            "max_inflight": cfg.max_inflight,
            "user_timeout_ms": cfg.user_timeout.as_millis() as u64,
            "max_channels_per_stream": cfg.max_channels,
            "max_event_bytes": cfg.max_event_bytes,
            "max_queued_bytes": cfg.max_queued_bytes,
            "admin_max_connections": cfg.admin_max_connections,
        },
        "channels": {
            "heartbeat_ms": cfg.heartbeat.map(|d| d.as_millis() as u64),
            "history_per_channel": cfg.history,
            "history_bytes": cfg.history_bytes,
            "history_age_ms": cfg.history_age.as_millis() as u64,
            "publish_token": cfg.publish_token.is_some(),
            "engine": match &state.engine {
                None => serde_json::json!("local"),
                Some(e) => serde_json::json!({
                    "kind": "redis",
                    "url": e.settings().redacted_url(),
                    "stream": e.settings().stream,
                    "maxlen": e.settings().maxlen,
                    "epoch": e.state().1,
                }),
            },
            "start_id": state.hub.start().to_string(),
            "last_id": state.hub.last_id().to_string(),
        },
        "config": {
            "driver_requested": format!("{:?}", cfg.driver).to_lowercase(),
            "ring_entries": cfg.ring_entries,
            "uring_flags_requested": format!("{:?}", cfg.uring_flags).to_lowercase(),
            "pin": cfg.pin,
            "retry_ms": cfg.retry,
            "cors_origins": cors,
            "backlog": cfg.backlog,
        },
        "streams_open": state.cap.open(),
    })
    .to_string()
}
