//! Test harness: runs the real `ringcast` binary on port 0 and talks to it over real sockets.
//!
//! The server's stderr is collected line by line (so its pipe never fills) and searched for the
//! `listening on http://ADDR` line of the banner. Client helpers are plain blocking sockets with
//! timeouts: every wait in the tests is bounded, and nothing asserts on speed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Generates one test per driver for each listed `fn name(driver: &str)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name("uring") } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll") } )*
        }
    };
}

pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/info`).
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the server with `--driver <driver>` and `args`, waiting for its banner.
    pub fn start(driver: &str, args: &[&str]) -> TestServer {
        Self::start_on(driver, "127.0.0.1:0", args)
    }

    /// Like `start`, on a given `--listen` address: restarting a server on the port a stopped
    /// one had (the only case where a test does not use port 0).
    pub fn start_on(driver: &str, listen: &str, args: &[&str]) -> TestServer {
        Self::launch(driver, listen, args, None, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(driver: &str, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::launch(driver, "127.0.0.1:0", args, None, env)
    }

    /// Like `start`, with the server's open-files hard (and so soft) limit set to `nofile`.
    pub fn start_with_fd_limit(driver: &str, nofile: u64, args: &[&str]) -> TestServer {
        Self::launch(driver, "127.0.0.1:0", args, Some(nofile), &[])
    }

    fn launch(
        driver: &str,
        listen: &str,
        args: &[&str],
        nofile: Option<u64>,
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Die with the test thread that started us, even if the test aborts
                    // without running destructors: no orphan servers after a crashed test.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(n) = nofile {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            };
        }
        cmd.args(["--listen", listen, "--workers", "2", "--driver", driver]);
        if !args.contains(&"--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcast");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = TestServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            log,
        };
        let line = server
            .wait_log("listening on http://", PATIENCE)
            .unwrap_or_else(|| panic!("no banner; log:\n{}", server.log_text()));
        let addr = line.rsplit("http://").next().unwrap().trim();
        server.addr = addr.parse().expect("address in banner");
        server.admin = server
            .log_lines()
            .iter()
            .find_map(|l| {
                l.split("admin endpoints on http://")
                    .nth(1)
                    .map(str::to_owned)
            })
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
            .map(|a| a.parse().expect("admin address in banner"));
        let want = match driver {
            "uring" => "io_uring",
            "epoll" => "epoll",
            _ => return server,
        };
        let workers = server
            .log_lines()
            .iter()
            .filter(|l| l.contains(&format!("driver={want}")))
            .count();
        assert_eq!(
            workers,
            2,
            "both workers run {want}; log:\n{}",
            server.log_text()
        );
        server
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ticks the server logged as missed (`ticks missed … from=A to=B`): a core that was
    /// descheduled for over an interval (a loaded CI machine) skips them for all its streams.
    pub fn skipped_ticks(&self) -> Vec<u64> {
        let field = |line: &str, key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        self.log_lines()
            .iter()
            .filter(|l| l.contains("ticks missed"))
            .filter_map(|l| Some(field(l, "from=")?..=field(l, "to=")?))
            .flatten()
            .collect()
    }

    /// Asserts that ids increase by one, except across ticks the server logged as skipped.
    pub fn assert_no_gaps(&self, events: &[Event]) {
        let skipped = self.skipped_ticks();
        let ids: Vec<u64> = events.iter().map(Event::id_num).collect();
        for w in ids.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(b > a, "ids increase: {ids:?}");
            for missing in a + 1..b {
                assert!(
                    skipped.contains(&missing),
                    "tick {missing} was neither received nor logged as skipped: {ids:?}"
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone (a node that dies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait for exit, and return the value of `key=` in the "stopped" summary line.
    pub fn stop_and_summary(&mut self) -> Summary {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(PATIENCE)
            .expect("server exits after SIGTERM");
        assert!(
            status.success(),
            "exit status {status}; log:\n{}",
            self.log_text()
        );
        let line = self
            .wait_log(" stopped ", Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no summary; log:\n{}", self.log_text()));
        Summary(line)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shutdown summary line.
pub struct Summary(pub String);

impl Summary {
    pub fn get(&self, key: &str) -> u64 {
        let pat = format!("{key}=");
        let at = self
            .0
            .find(&pat)
            .unwrap_or_else(|| panic!("{key} in {}", self.0));
        self.0[at + pat.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `raw` and reads one complete response (head + Content-Length body, or until close).
pub fn request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

/// Reads one response whose body is framed by Content-Length (or runs to EOF).
pub fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!(
                "reading a response after {:?}: {e}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    let is_head_or_204 = head.starts_with("HTTP/1.1 204");
    let mut body = vec![0u8; len.unwrap_or(0)];
    if !is_head_or_204 {
        s.read_exact(&mut body).unwrap();
    }
    head + &String::from_utf8_lossy(&body)
}

/// An SSE client: the socket plus what was read past the response head.
pub struct SseClient {
    pub stream: TcpStream,
    pub head: String,
    pending: Vec<u8>,
}

/// One event as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Vec<String>,
    pub retry: Option<String>,
}

impl Event {
    pub fn id_num(&self) -> u64 {
        self.id
            .as_deref()
            .expect("event has an id")
            .parse()
            .expect("numeric id")
    }
}

impl SseClient {
    pub fn open(addr: SocketAddr, extra_headers: &str) -> SseClient {
        let stream = connect(addr);
        let req = format!(
            "GET /events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra_headers}\r\n"
        );
        Self::open_with(stream, &req)
    }

    pub fn open_with(mut stream: TcpStream, raw_request: &str) -> SseClient {
        stream.write_all(raw_request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).expect("read the response head");
            assert!(
                n > 0,
                "closed before the head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        SseClient {
            head: String::from_utf8_lossy(&buf[..end]).to_string(),
            pending: buf[end..].to_vec(),
            stream,
        }
    }

    /// The bytes read past the head and not yet parsed (for byte-exact checks).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Reads the next event (a block ended by a blank line); `None` on EOF.
    pub fn next_event(&mut self) -> Option<Event> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(i) = find(&self.pending, b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..i + 2).collect();
                return Some(parse_block(&block[..i]));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }

    /// Reads events until `n` tick events (with an id) arrived.
    pub fn ticks(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next_event().expect("stream still open");
            if e.id.is_some() {
                out.push(e);
            }
        }
        out
    }
}

fn parse_block(block: &[u8]) -> Event {
    let mut e = Event {
        id: None,
        event: None,
        data: Vec::new(),
        retry: None,
    };
    for line in String::from_utf8_lossy(block).split('\n') {
        if line.starts_with(':') {
            continue; // a comment (channel streams' heartbeat): a block of only these is empty
        }
        let (k, v) = line.split_once(": ").unwrap_or((line, ""));
        match k {
            "id" => e.id = Some(v.into()),
            "event" => e.event = Some(v.into()),
            "data" => e.data.push(v.into()),
            "retry" => e.retry = Some(v.into()),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    e
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---- real clients from other ecosystems (tests/browser.rs, tests/clients.rs) ----

/// Set (non-empty, not `0`) in CI by `.ci/run`: a missing external client is then a failure
/// instead of a skip.
pub const REQUIRE_CLIENTS: &str = "RINGCAST_REQUIRE_CLIENTS";

pub fn clients_required() -> bool {
    std::env::var_os(REQUIRE_CLIENTS).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first of `names` found as an executable on `PATH`.
pub fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

/// `Some(value)` when the client is there. When it is not (`None`): panics if clients are
/// required, otherwise says why the test is skipped and returns `None`.
pub fn client_or_skip<T>(test: &str, found: Option<T>, missing: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    assert!(
        !clients_required(),
        "{test}: {missing}, and {REQUIRE_CLIENTS} is set"
    );
    // Straight to stderr rather than `eprintln!`, which the test harness captures and shows only
    // for failing tests: a skip must be visible in a passing run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {missing} (set {REQUIRE_CLIENTS}=1 to make this a failure)"
    );
    None
}

/// A child process whose stdout lines are collected by a thread (so its pipe never fills);
/// killed on drop. Its stdin is a pipe that stays open until drop, so a client that exits at
/// end of stdin cannot outlive the test even if the kill is missed.
pub struct ChildLines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildLines {
    pub fn spawn(cmd: &mut Command) -> ChildLines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        ChildLines { child, lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the lines so far; `None` on timeout.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = done(&self.lines()) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from the server's admin listener; returns the whole response.
pub fn admin_get(server: &TestServer, path: &str) -> String {
    let admin = server.admin.expect("admin listener");
    request(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

/// The value of one series (its exact name and labels) in a Prometheus text exposition.
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
        .parse()
        .unwrap()
}

/// A `worker="total"` series from `/metrics`, e.g. `metric(&s, "streams_open")`.
pub fn metric(server: &TestServer, name: &str) -> f64 {
    series(
        &admin_get(server, "/metrics"),
        &format!("ringcast_{name}{{worker=\"total\"}}"),
    )
}

// ---- records of EventSource clients (the browser page, the Node client): JSON objects with a
// `type` ("open", "message", "error", …) and, for messages, `data` and `lastEventId` ----

/// The records of one type.
pub fn of_type<'a>(log: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    log.iter().filter(|e| e["type"] == ty).collect()
}

/// A message's `lastEventId`, which ringcast makes the tick number.
pub fn message_id(m: &serde_json::Value) -> u64 {
    m["lastEventId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("numeric lastEventId in {m}"))
}

/// Every message is `hello` and ids strictly increase.
pub fn assert_hello_with_increasing_ids(messages: &[&serde_json::Value]) {
    for m in messages {
        assert_eq!(m["data"], "hello", "{m}");
    }
    for w in messages.windows(2) {
        assert!(
            message_id(w[1]) > message_id(w[0]),
            "ids increase: {messages:?}"
        );
    }
}

// ---- a real redis-server (Debian's), for the cluster tests ----

/// A `redis-server` on a free loopback port, in its own directory, stopped on drop. Persistence
/// is off unless asked for (`aof`). Without the program the tests skip (or fail when clients are
/// required: CI installs it).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    aof: bool,
}

impl RedisServer {
    /// `None` (after saying why) when redis-server is missing and not required.
    pub fn start(test: &str, aof: bool) -> Option<RedisServer> {
        client_or_skip(
            test,
            find_program(&["redis-server"]),
            "redis-server is not on PATH (Debian: apt-get install redis-server)",
        )?;
        static DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-redis-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            aof,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port and directory) and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
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
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.ping() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Stops it: with `SHUTDOWN` (persisting the AOF) or by SIGKILL, waiting until it is gone.
    pub fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Stops it and throws its data away (a Redis that comes back empty).
    pub fn wipe(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- channels: publishing on the admin listener, and channel streams ----

/// One admin request on a fresh connection: (status, body).
pub fn publish_raw(admin: SocketAddr, raw: &[u8]) -> (u16, String) {
    let resp = request(admin, raw);
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

/// POST /publish?{query} with `data`: (status, body).
pub fn publish(server: &TestServer, query: &str, data: &str) -> (u16, String) {
    let admin = server.admin.expect("admin listener");
    let raw = format!(
        "POST /publish?{query} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    );
    publish_raw(admin, raw.as_bytes())
}

/// POST /publish/batch with `body` (JSON) and extra head lines: (status, body).
pub fn publish_batch(admin: SocketAddr, body: &str, extra: &str) -> (u16, String) {
    let raw = format!(
        "POST /publish/batch HTTP/1.1\r\nHost: admin\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    publish_raw(admin, raw.as_bytes())
}

/// POST /publish/batch that must be taken: the ids, in the batch's order.
pub fn publish_batch_ok(admin: SocketAddr, body: &str) -> Vec<String> {
    let (status, answer) = publish_batch(admin, body, "");
    assert_eq!(status, 201, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    v["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids: {answer}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// Publishes and returns the id the server gave.
pub fn publish_ok(server: &TestServer, query: &str, data: &str) -> String {
    let (status, body) = publish(server, query, data);
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("<ms>-<seq>: {id}"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// A channel stream as a browser would keep it: the last event id it saw.
pub struct Sub {
    pub c: SseClient,
    pub last_id: Option<String>,
}

impl Sub {
    pub fn open(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> Sub {
        let lei = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /events?{query} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{lei}\r\n"
        );
        let c = SseClient::open_with(connect(addr), &req);
        assert!(c.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", c.head);
        Sub {
            c,
            last_id: last_event_id.map(str::to_owned),
        }
    }

    /// The next block: event, position (`id:` only) or heartbeat (empty). Tracks the last id.
    pub fn next(&mut self) -> Event {
        let e = self.c.next_event().expect("stream open");
        if let Some(id) = &e.id {
            self.last_id = Some(id.clone());
        }
        e
    }

    /// The next event with data (skipping positions and heartbeats).
    pub fn next_event(&mut self) -> Event {
        loop {
            let e = self.next();
            if !e.data.is_empty() {
                return e;
            }
        }
    }

    /// The position frame a fresh stream starts with.
    pub fn position(&mut self) -> String {
        let e = self.next();
        assert!(
            e.data.is_empty() && e.event.is_none(),
            "position first: {e:?}"
        );
        e.id.expect("id: <position>")
    }
}

// ---- waiting on observable state ----

/// Waits until a `/metrics` series (exact name and labels) equals `want`; panics after
/// [`PATIENCE`] with the last value seen.
pub fn wait_for_series(server: &TestServer, name: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = series(&admin_get(server, "/metrics"), name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An SSE client that reads tick events on its own thread, as fast as it can, until stopped: its
/// pace does not depend on what the test thread does meanwhile.
pub struct ReaderThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<Event>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReaderThread {
    pub fn start(mut client: SseClient) -> ReaderThread {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stopping, sink) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Acquire) {
                match client.next_event() {
                    Some(e) if e.id.is_some() => sink.lock().unwrap().push(e),
                    Some(_) => {}
                    None => break, // EOF: `stop` reports what came before it
                }
            }
        });
        ReaderThread {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Tick events received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `n` tick events in all have arrived.
    pub fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.count() < n {
            assert!(
                !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "the stream ended after {} events",
                self.count()
            );
            assert!(
                Instant::now() < deadline,
                "{} of {n} events arrived",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops reading (after the next event) and returns every tick event received.
    pub fn stop(mut self) -> Vec<Event> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        // Not joined: a reader blocked on a live stream ends when the server (and so the
        // stream) goes away with the test.
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
