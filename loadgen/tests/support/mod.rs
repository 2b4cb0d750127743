//! Test support: a throwaway SSE server on std threads (port 0, loopback) whose behaviour
//! each test picks, the real `ringcast` server when it has been built, and a runner for
//! the loadgen binary that returns its parsed result file. Everything is bounded: servers
//! stop when dropped, and the loadgen is killed if it overruns.
//!
//! `Mode::Channels` is a small stand-in for ringcast's publish API: `POST /publish?channel=`
//! assigns `<ms>-<seq>` ids and answers `201` with JSON; `GET ?channel=` streams get the
//! replay after their Last-Event-ID (or `ringcast-reset` and what is retained), then
//! `id: <position>`, then live events and heartbeats. Subscribing and publishing take one
//! lock, so the fixture itself never loses or repeats an event, unless told to (`Fault`).
//! `Fixture::cluster` starts several such servers (nodes) on one shared event state, as
//! ringcast nodes share a Redis stream: ids are the same on every node, so a client can move
//! between them with its Last-Event-ID; `Fixture::kill` makes a node die the way a killed
//! process does (its port refuses, its streams end, half with a FIN and half with a reset).
//!
//! `RedisServer` runs a real `redis-server` on a free port for the cluster-mode tests.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the fixture answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ringcast's contract: `id: <tick>` events at wall-clock multiples of the interval.
    Ticks {
        interval_ms: u64,
        chunked: bool,
    },
    NotFound,
    /// 200 with `text/plain`.
    Plain,
    /// Reads the request and never answers (holds the socket for a few seconds).
    Silent,
    /// Answers with one event, then goes quiet (holds the socket for a few seconds).
    Stall,
    /// `retry: <retry_ms>`, then `events` numbered events continuing after the request's
    /// Last-Event-ID (or from 1), then the server closes the stream.
    CloseAfter {
        events: u64,
        retry_ms: u64,
    },
    /// Channels and a publish endpoint (`/publish` on the same port), see the module docs.
    Channels(ChannelOpts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOpts {
    /// Publishing needs `Authorization: Bearer <token>` (401 otherwise).
    pub token: Option<&'static str>,
    /// Events kept per channel for replay; a resume from before the oldest gets a reset.
    pub history: usize,
    /// Every resume gets `ringcast-reset` (then what is retained after its id).
    pub reset_on_resume: bool,
    pub fault: Fault,
    /// nchan-like: ids `<unix-s>:<n>`, no position line, publish answered `202` without an id.
    pub nchan_ids: bool,
}

impl Default for ChannelOpts {
    fn default() -> Self {
        ChannelOpts {
            token: None,
            history: 10_000,
            reset_on_resume: false,
            fault: Fault::None,
            nchan_ids: false,
        }
    }
}

/// A deliberate delivery bug, on the first subscriber of each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every n-th publish is not written to it.
    DropEvery(u64),
    /// Every n-th publish is written to it twice.
    DuplicateEvery(u64),
}

type Id = (u64, u64);

#[derive(Default)]
struct Channel {
    /// (id, frame), oldest first.
    history: VecDeque<(Id, String)>,
    /// The newest evicted id.
    floor: Id,
    /// The streams, with the node that serves each.
    subs: Vec<(usize, TcpStream)>,
}

/// The channel server's state (shared by the nodes of a `Fixture::cluster`).
#[derive(Default)]
pub struct Hub {
    last: Id,
    publishes: u64,
    channels: HashMap<String, Channel>,
    /// Nodes killed with `Fixture::kill`: their late subscriptions are dropped.
    dead: Vec<usize>,
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn parse_id(s: &str) -> Option<Id> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Hub {
    fn id_text(id: Id, nchan: bool) -> String {
        if nchan {
            format!("{}:{}", id.0 / 1000, id.1)
        } else {
            format!("{}-{}", id.0, id.1)
        }
    }

    /// Takes one event: numbers it, keeps it, writes it to the channel's streams.
    fn publish(&mut self, channel: &str, data: &str, opts: &ChannelOpts) -> Id {
        let now = now_ms();
        let id = if now > self.last.0 {
            (now, 0)
        } else {
            (self.last.0, self.last.1 + 1)
        };
        self.last = id;
        self.publishes += 1;
        let n = self.publishes;
        let frame = format!(
            "id: {}\nevent: message\ndata: {data}\n\n",
            Self::id_text(id, opts.nchan_ids)
        );
        let ch = self.channels.entry(channel.to_string()).or_default();
        ch.history.push_back((id, frame.clone()));
        while ch.history.len() > opts.history {
            if let Some((old, _)) = ch.history.pop_front() {
                ch.floor = old;
            }
        }
        let mut first = true;
        ch.subs.retain_mut(|(_, s)| {
            let copies = match opts.fault {
                Fault::DropEvery(k) if first && n.is_multiple_of(k) => 0,
                Fault::DuplicateEvery(k) if first && n.is_multiple_of(k) => 2,
                _ => 1,
            };
            first = false;
            (0..copies).all(|_| s.write_all(frame.as_bytes()).is_ok())
        });
        id
    }

    /// Opens a stream: the head, the replay (or a reset and what is retained), the
    /// position, then it joins the channel.
    fn subscribe(
        &mut self,
        node: usize,
        mut s: TcpStream,
        channel: &str,
        last: Option<&str>,
        opts: &ChannelOpts,
    ) {
        if self.dead.contains(&node) {
            // Accepted just before the node died: it dies with it.
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
        let mut out = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nServer: fixture\r\n\r\n",
        );
        let ch = self.channels.entry(channel.to_string()).or_default();
        if let Some(after) = last.and_then(parse_id) {
            if opts.reset_on_resume || after < ch.floor {
                out.push_str(&format!(
                    "event: ringcast-reset\ndata: {{\"reason\":\"evicted\",\"last_event_id\":\"{}-{}\"}}\n\n",
                    after.0, after.1
                ));
            }
            for (id, frame) in &ch.history {
                if *id > after {
                    out.push_str(frame);
                }
            }
        }
        if !opts.nchan_ids {
            out.push_str(&format!("id: {}-{}\n\n", self.last.0, self.last.1));
        }
        if s.write_all(out.as_bytes()).is_ok() {
            ch.subs.push((node, s));
        }
    }

    fn heartbeat(&mut self) {
        for ch in self.channels.values_mut() {
            ch.subs.retain_mut(|(_, s)| s.write_all(b":\n\n").is_ok());
        }
    }

    /// Streams open on `node`.
    pub fn streams_on(&self, node: usize) -> usize {
        self.channels
            .values()
            .map(|ch| ch.subs.iter().filter(|(n, _)| *n == node).count())
            .sum()
    }

    /// Channels with a stream on `node`.
    pub fn channels_on(&self, node: usize) -> usize {
        self.channels
            .values()
            .filter(|ch| ch.subs.iter().any(|(n, _)| *n == node))
            .count()
    }

    /// Ends every stream of `node`, alternately with a FIN and with a reset (SO_LINGER 0),
    /// as the kernel does for a killed process's sockets; returns how many.
    fn kill(&mut self, node: usize) -> usize {
        self.dead.push(node);
        let mut ended = 0;
        for ch in self.channels.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = ch.subs.drain(..).partition(|(n, _)| *n == node);
            ch.subs = kept;
            for (_, s) in gone {
                if ended % 2 == 0 {
                    let _ = s.shutdown(Shutdown::Both);
                } else {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                ended += 1;
            }
        }
        ended
    }
}

/// Serves the publish endpoint (keep-alive) or opens a channel stream.
fn serve_channels(
    node: usize,
    mut s: TcpStream,
    mut head: String,
    opts: ChannelOpts,
    hub: &Mutex<Hub>,
    paths: &Mutex<Vec<String>>,
    ids: &Mutex<Vec<Option<String>>>,
) {
    loop {
        let mut words = head.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let channel = query_param(target, "channel").unwrap_or("").to_string();
        if method != "POST" {
            let last = header(&head, "Last-Event-ID").map(str::to_string);
            paths.lock().unwrap().push(target.to_string());
            ids.lock().unwrap().push(last.clone());
            hub.lock()
                .unwrap()
                .subscribe(node, s, &channel, last.as_deref(), &opts);
            return;
        }
        let len: usize = header(&head, "Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let authorized = opts
            .token
            .is_none_or(|t| header(&head, "Authorization") == Some(format!("Bearer {t}").as_str()));
        let answer = if !authorized {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
        } else {
            let data = String::from_utf8_lossy(&body).replace(['\r', '\n'], " ");
            let id = hub.lock().unwrap().publish(&channel, &data, &opts);
            if opts.nchan_ids {
                let text = "queued messages: 1\n";
                format!(
                    "HTTP/1.1 202 Accepted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
            } else {
                let json = format!(
                    "{{\"id\":\"{}-{}\",\"channels\":[\"{channel}\"]}}",
                    id.0, id.1
                );
                format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                )
            }
        };
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
        match read_head(&mut s) {
            Some(next) => head = next,
            None => return,
        }
    }
}

pub struct Fixture {
    pub port: u16,
    /// This server's number in its cluster (0 for a lone one).
    pub node: usize,
    stop: Arc<AtomicBool>,
    /// Stops the accept loop only (`kill`).
    accepting: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// Last-Event-ID header of every request, in arrival order (None when absent).
    pub last_event_ids: Arc<Mutex<Vec<Option<String>>>>,
    /// Last id sent on each stream the fixture closed itself.
    pub closed_with: Arc<Mutex<Vec<u64>>>,
    /// Source address of every accepted connection.
    pub peers: Arc<Mutex<Vec<std::net::IpAddr>>>,
    /// Request target of every stream request (`Mode::Channels`).
    pub paths: Arc<Mutex<Vec<String>>>,
    /// The channel server's state (`Mode::Channels`).
    pub hub: Arc<Mutex<Hub>>,
    threads: Vec<JoinHandle<()>>,
}

impl Fixture {
    pub fn start(mode: Mode) -> Fixture {
        Self::start_node(mode, Arc::new(Mutex::new(Hub::default())), 0)
    }

    /// `nodes` channel servers on one shared event state (ids, history): a stand-in for
    /// ringcast nodes sharing a Redis stream.
    pub fn cluster(opts: ChannelOpts, nodes: usize) -> Vec<Fixture> {
        let hub = Arc::new(Mutex::new(Hub::default()));
        (0..nodes)
            .map(|node| Self::start_node(Mode::Channels(opts), hub.clone(), node))
            .collect()
    }

    /// The node dies: its listener is closed (new connections are refused), then its
    /// streams end (half with a FIN, half with a reset). Returns how many streams ended.
    pub fn kill(&mut self) -> usize {
        self.accepting.store(false, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.hub.lock().unwrap().kill(self.node)
    }

    fn start_node(mode: Mode, hub: Arc<Mutex<Hub>>, node: usize) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixture");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let last_event_ids = Arc::new(Mutex::new(Vec::new()));
        let closed_with = Arc::new(Mutex::new(Vec::new()));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let accepting = Arc::new(AtomicBool::new(true));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let acceptor = {
            let (stop, accepting, ids, closed, streams, peers, paths, hub) = (
                stop.clone(),
                accepting.clone(),
                last_event_ids.clone(),
                closed_with.clone(),
                streams.clone(),
                peers.clone(),
                paths.clone(),
                hub.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && accepting.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            peers.lock().unwrap().push(peer.ip());
                            let (ids, closed, streams, paths, hub) = (
                                ids.clone(),
                                closed.clone(),
                                streams.clone(),
                                paths.clone(),
                                hub.clone(),
                            );
                            std::thread::spawn(move || {
                                if let Mode::Channels(opts) = mode {
                                    let mut s = s;
                                    if let Some(head) = read_head(&mut s) {
                                        serve_channels(node, s, head, opts, &hub, &paths, &ids);
                                    }
                                    return;
                                }
                                serve(s, mode, ids, closed, streams)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // The listener closes here: connections are refused from now on.
            })
        };
        if let Mode::Channels(_) = mode {
            let (stop, hub) = (stop.clone(), hub.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    hub.lock().unwrap().heartbeat();
                }
            }));
        }
        if let Mode::Ticks {
            interval_ms,
            chunked,
        } = mode
        {
            let (stop, streams) = (stop.clone(), streams.clone());
            threads.push(std::thread::spawn(move || {
                tick_loop(interval_ms, chunked, &stop, &streams)
            }));
        }
        Fixture {
            port,
            node,
            stop,
            accepting,
            acceptor: Some(acceptor),
            last_event_ids,
            closed_with,
            peers,
            paths,
            hub,
            threads,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn publish_url(&self) -> String {
        format!("http://127.0.0.1:{}/publish", self.port)
    }

    /// Events the channel server took.
    pub fn publishes(&self) -> u64 {
        self.hub.lock().unwrap().publishes
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..).chain(self.acceptor.take()) {
            let _ = t.join();
        }
    }
}

fn read_head(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve(
    mut s: TcpStream,
    mode: Mode,
    ids: Arc<Mutex<Vec<Option<String>>>>,
    closed: Arc<Mutex<Vec<u64>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
) {
    let Some(head) = read_head(&mut s) else {
        return;
    };
    let last = header(&head, "Last-Event-ID").map(str::to_string);
    ids.lock().unwrap().push(last.clone());
    let sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nServer: fixture\r\n";
    match mode {
        // Served by `serve_channels`.
        Mode::Channels(_) => return,
        Mode::Stall => {
            let _ = s.write_all(format!("{sse}\r\nid: 1\ndata: only\n\n").as_bytes());
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        Mode::Silent => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        Mode::NotFound => {
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found");
        }
        Mode::Plain => {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
            );
        }
        Mode::Ticks { chunked, .. } => {
            let te = if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                ""
            };
            if s.write_all(format!("{sse}{te}\r\n").as_bytes()).is_ok() {
                streams.lock().unwrap().push(s);
            }
            return;
        }
        Mode::CloseAfter { events, retry_ms } => {
            let first = last
                .and_then(|l| l.parse::<u64>().ok())
                .map_or(1, |l| l + 1);
            let mut body = format!("{sse}\r\nretry: {retry_ms}\n\n");
            for id in first..first + events {
                body.push_str(&format!("id: {id}\nevent: message\ndata: hello\n\n"));
            }
            if s.write_all(body.as_bytes()).is_ok() {
                closed.lock().unwrap().push(first + events - 1);
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    // Let the client read everything before the socket closes.
    let mut sink = [0u8; 256];
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends every tick id in turn, each at its wall-clock time or at once when late: a thread
/// descheduled for over an interval on a loaded machine sends the ticks it owes late rather
/// than skipping ids (which the loadgen would rightly count as missed).
fn tick_loop(interval_ms: u64, chunked: bool, stop: &AtomicBool, streams: &Mutex<Vec<TcpStream>>) {
    let mut tick = now_ms() / interval_ms;
    while !stop.load(Ordering::Relaxed) {
        tick += 1;
        let now = now_ms();
        std::thread::sleep(Duration::from_millis(
            (tick * interval_ms).saturating_sub(now),
        ));
        let event = format!("id: {tick}\nevent: message\ndata: hello\n\n");
        let frame = if chunked {
            format!("{:x}\r\n{event}\r\n", event.len())
        } else {
            event
        };
        streams
            .lock()
            .unwrap()
            .retain_mut(|s| s.write_all(frame.as_bytes()).is_ok());
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn temp_path(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "loadgen-test-{}-{nanos}-{name}",
        std::process::id()
    ))
}

/// Runs the loadgen with `args` plus `--out`, waits at most `limit`, and returns the
/// parsed result file and the process's stdout.
pub fn run_loadgen(args: &[&str], limit: Duration) -> (serde_json::Value, String) {
    let out = temp_path("result.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let status =
        wait_bounded(&mut child, limit).unwrap_or_else(|| panic!("loadgen overran {limit:?}"));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "loadgen failed: {status}\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&out).expect("result file written");
    let _ = std::fs::remove_file(&out);
    (
        serde_json::from_str(&text).expect("result file is JSON"),
        stdout,
    )
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok()? {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `counters.failed.<kind>`, 0 when absent.
pub fn failed(result: &serde_json::Value, kind: &str) -> u64 {
    result["counters"]["failed"][kind].as_u64().unwrap_or(0)
}

pub fn counter(result: &serde_json::Value, name: &str) -> u64 {
    result["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing"))
}

/// The `ringcast` server binary of this workspace, if it has been built for this profile.
pub fn ringcast_binary() -> Option<PathBuf> {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_ringcast-loadgen"));
    let path = loadgen.parent()?.join("ringcast");
    path.exists().then_some(path)
}

/// Whether this ringcast build has `--admin-listen` (it came after the first servers).
fn has_admin_listener(binary: &PathBuf) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--admin-listen"))
        .unwrap_or(false)
}

/// A running `ringcast` on 127.0.0.1 (killed when dropped).
pub struct Ringcast {
    pub child: Child,
    binary: PathBuf,
    pub port: u16,
    /// The admin `/info` URL, when the server has an admin listener.
    pub info_url: Option<String>,
    /// Everything the server wrote on stderr so far.
    log: Arc<Mutex<String>>,
}

impl Ringcast {
    /// Starts the server with `args` after `--listen 127.0.0.1:<port>` (0 picks one) and
    /// waits for its "listening on" line.
    pub fn start(binary: &PathBuf, port: u16, args: &[&str]) -> Ringcast {
        Self::try_start(binary, port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, retried while the port is still held (a killed io_uring server's
    /// sockets are released by the kernel a little after the process is gone).
    pub fn restart(binary: &PathBuf, port: u16, args: &[&str]) -> Ringcast {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start(binary, port, args) {
                Ok(server) => return server,
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn try_start(binary: &PathBuf, port: u16, args: &[&str]) -> Result<Ringcast, String> {
        // Servers with an admin listener get it on an ephemeral port, never a fixed one.
        let admin: &[&str] = if has_admin_listener(binary) {
            &["--admin-listen", "127.0.0.1:0"]
        } else {
            &[]
        };
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(admin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringcast");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = Arc::new(Mutex::new(String::new()));
        let seen_by_reader = seen.clone();
        let admin_url = Arc::new(Mutex::new(None));
        let admin_by_reader = admin_url.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                seen_by_reader
                    .lock()
                    .unwrap()
                    .push_str(&format!("{line}\n"));
                if !sent {
                    if let Some(rest) = line.split("admin endpoints on http://").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        *admin_by_reader.lock().unwrap() = Some(format!("http://{addr}/info"));
                    }
                    if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = tx.send(digits.parse::<u16>().ok());
                        sent = true;
                    }
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ringcast did not report its port; its stderr:\n{}",
                    seen.lock().unwrap()
                ));
            }
        };
        let info_url = admin_url.lock().unwrap().clone();
        Ok(Ringcast {
            child,
            binary: binary.clone(),
            port,
            info_url,
            log: seen,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// A sample of the server's admin `/metrics` (see `metric`), when it has an admin listener.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let admin = self.info_url.as_deref()?.strip_suffix("/info")?;
        metric(&http_get(&format!("{admin}/metrics"))?, name)
    }

    /// Whether this build has cluster mode (`--redis`).
    pub fn has_cluster_mode(binary: &PathBuf) -> bool {
        Command::new(binary)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--redis"))
            .unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin `POST /publish` URL, when this build has the publish API.
    pub fn publish_url(&self) -> Option<String> {
        let admin = self.info_url.as_deref()?.strip_suffix("/info")?;
        let help = Command::new(&self.binary).arg("--help").output().ok()?;
        String::from_utf8_lossy(&help.stdout)
            .contains("--publish-token")
            .then(|| format!("{admin}/publish"))
    }

    /// Ticks the server logged as missed for all its streams (`ticks missed ... from=A
    /// to=B`): a core descheduled for over an interval on a loaded machine skips them.
    pub fn skipped_ticks(&self) -> u64 {
        let field = |line: &str, key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let log = self.log.lock().unwrap();
        log.lines()
            .filter(|l| l.contains("ticks missed"))
            .filter_map(|l| Some(field(l, "to=")?.saturating_sub(field(l, "from=")?) + 1))
            .sum()
    }
}

impl Drop for Ringcast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves one request with a JSON body (a stand-in for ringcast's admin `/info`).
pub fn serve_json_once(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/info", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = read_head(&mut s);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body.as_bytes());
        }
    });
    url
}

/// CI sets `RINGCAST_REQUIRE_CLIENTS=1`: a missing external program is then a failure.
pub fn clients_required() -> bool {
    std::env::var_os("RINGCAST_REQUIRE_CLIENTS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first executable called `name` on `PATH`, else Debian's place for it.
fn find_program(name: &str, fallback: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain([PathBuf::from(fallback)])
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A `redis-server` on a free loopback port, persistence off, in its own temporary
/// directory; killed (and the directory removed) when dropped, and by the kernel if the test
/// process dies first.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// `None` (after saying why on stderr) when redis-server is missing, unless
    /// `RINGCAST_REQUIRE_CLIENTS` is set: then it panics.
    pub fn start(test: &str) -> Option<RedisServer> {
        let Some(program) = find_program("redis-server", "/usr/bin/redis-server") else {
            assert!(
                !clients_required(),
                "{test}: redis-server is not installed, and RINGCAST_REQUIRE_CLIENTS is set"
            );
            // Straight to stderr: the harness shows eprintln! output only for failing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: redis-server is not installed (Debian: apt-get install redis-server; \
                 set RINGCAST_REQUIRE_CLIENTS=1 to make this a failure)"
            );
            return None;
        };
        let dir = temp_path("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let port = closed_port();
        let mut cmd = Command::new(program);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe call between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                })
            };
        }
        let child = cmd.spawn().expect("spawn redis-server");
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.ping() {
            assert!(
                Instant::now() < deadline,
                "{test}: redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `url` (http://host:port/path) with `Connection: close`: the body, or None.
pub fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(authority).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// A Prometheus sample from a `/metrics` text: the unlabelled `name`, or its
/// `{worker="total"}` line.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix(name).and_then(|r| {
            r.strip_prefix(' ')
                .or(r.strip_prefix("{worker=\"total\"} "))
        })?;
        value.trim().parse().ok()
    })
}
