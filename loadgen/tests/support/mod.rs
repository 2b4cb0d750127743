//! Test support: a throwaway SSE server on std threads (port 0, loopback) whose behaviour
//! each test picks, the real `ringcast` server when it has been built, and a runner for
//! the loadgen binary that returns its parsed result file. Everything is bounded: servers
//! stop when dropped, and the loadgen is killed if it overruns.

#![allow(dead_code)]

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
}

pub struct Fixture {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Last-Event-ID header of every request, in arrival order (None when absent).
    pub last_event_ids: Arc<Mutex<Vec<Option<String>>>>,
    /// Last id sent on each stream the fixture closed itself.
    pub closed_with: Arc<Mutex<Vec<u64>>>,
    /// Source address of every accepted connection.
    pub peers: Arc<Mutex<Vec<std::net::IpAddr>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Fixture {
    pub fn start(mode: Mode) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixture");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let last_event_ids = Arc::new(Mutex::new(Vec::new()));
        let closed_with = Arc::new(Mutex::new(Vec::new()));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        {
            let (stop, ids, closed, streams, peers) = (
                stop.clone(),
                last_event_ids.clone(),
                closed_with.clone(),
                streams.clone(),
                peers.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            peers.lock().unwrap().push(peer.ip());
                            let (ids, closed, streams) =
                                (ids.clone(), closed.clone(), streams.clone());
                            std::thread::spawn(move || serve(s, mode, ids, closed, streams));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
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
            stop,
            last_event_ids,
            closed_with,
            peers,
            threads,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
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

fn tick_loop(interval_ms: u64, chunked: bool, stop: &AtomicBool, streams: &Mutex<Vec<TcpStream>>) {
    while !stop.load(Ordering::Relaxed) {
        let now = now_ms();
        let tick = now / interval_ms + 1;
        std::thread::sleep(Duration::from_millis(tick * interval_ms - now));
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
            port,
            info_url,
            log: seen,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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
