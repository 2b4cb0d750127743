//! The seed's client, for real: headless Chromium (Debian's `chromium`, driven over WebDriver by
//! Debian's `chromedriver` through fantoccini) loads a page from one origin, served by a tiny
//! HTTP server in this test, and opens `new EventSource(url)` to ringcast on another port. The
//! page records what its EventSources see (open, messages with their `lastEventId` and origin,
//! errors with `readyState`) and the test reads that record back with WebDriver's script
//! execution; assertions are on what the browser saw, the server's log only confirms which
//! `Last-Event-ID` arrived. Chromium runs with a fresh profile and background networking off (this
//! network refuses anything but loopback). One browser at a time per test binary: Chromium is the
//! heaviest thing in the suite and CI has two cores. Without chromium or chromedriver the tests
//! skip with a message, unless RINGCAST_REQUIRE_CLIENTS is set (CI sets it, and installs them).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

both_drivers!(
    cross_origin_eventsource_receives_hello_and_cors_is_enforced,
    eventsource_reconnects_with_last_event_id_after_restart,
    channel_subscriber_cut_off_gets_what_was_published_meanwhile,
);

#[test]
fn an_event_published_on_node_b_reaches_a_browser_on_node_a() {
    let test = "an_event_published_on_node_b_reaches_a_browser_on_node_a";
    let Some(redis) = RedisServer::start(test, false) else {
        return;
    };
    let page = PageServer::start();
    let url = redis.url();
    let a = browser_safe_server("auto", &["--redis", &url]);
    let b = browser_safe_server("auto", &["--redis", &url]);
    let Some(browser) = Browser::start(test) else {
        return;
    };
    browser.goto(&format!("{}/", page.origin()));
    browser.watch(
        "s",
        &format!("http://{}/events?channel=news", a.addr),
        false,
    );
    browser.wait_for("s", "open", |log| {
        (!of_type(log, "open").is_empty()).then_some(())
    });
    let deadline = Instant::now() + PATIENCE;
    while metric(&a, "channel_streams_open") < 1.0 {
        assert!(Instant::now() < deadline, "the stream never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = publish_retrying_on(&b, "from node b");
    let log = browser.wait_for("s", "the event from node b", |log| {
        (!of_type(log, "message").is_empty()).then(|| log.to_vec())
    });
    let m = of_type(&log, "message")[0];
    assert_eq!(m["data"], "from node b", "{log:?}");
    assert_eq!(m["lastEventId"], id.as_str(), "{log:?}");
}

/// Publishes `data` on channel `news` of `server`, retrying while Redis is not joined yet (503).
fn publish_retrying_on(server: &TestServer, data: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = publish(server, "channel=news", data);
        if status == 201 {
            let v: Value = serde_json::from_str(&body).unwrap();
            return v["id"].as_str().unwrap().to_owned();
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "{status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Messages a stream must deliver before a test moves on.
const WANTED: usize = 4;

/// The page: `watch(name, url, withCredentials)` opens an EventSource and keeps a record of
/// everything it fires in `streams[name].log`.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ringcast EventSource test page</title>
<script>
window.streams = {};
function watch(name, url, withCredentials) {
  const log = [];
  const es = new EventSource(url, { withCredentials });
  es.onopen = () => log.push({ type: "open" });
  es.onmessage = (e) =>
    log.push({ type: "message", data: e.data, lastEventId: e.lastEventId, origin: e.origin });
  es.onerror = () => log.push({ type: "error", readyState: es.readyState });
  es.addEventListener("ringcast-reset", (e) => log.push({ type: "reset", data: e.data }));
  streams[name] = { es, log };
}
</script>
"#;

// ---- the page's origin ----

/// Ports Chromium refuses to load from (`ERR_UNSAFE_PORT`, net/base/port_util.cc). A listener on
/// port 0 can get one of those that lie in the ephemeral range (the benchmarks widen it to
/// 1024-65535), and the page or stream then fails in the browser for a reason that is not ours.
const CHROMIUM_UNSAFE_PORTS: &[u16] = &[
    1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669,
    6679, 6697, 10080,
];

/// A loopback listener on a port the browser will connect to.
fn browser_safe_listener() -> TcpListener {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if !CHROMIUM_UNSAFE_PORTS.contains(&l.local_addr().unwrap().port()) {
            return l;
        }
    }
}

/// A server on a port the browser will connect to (started again if it got an unsafe one).
fn browser_safe_server(driver: &str, args: &[&str]) -> TestServer {
    loop {
        let server = TestServer::start(driver, args);
        if !CHROMIUM_UNSAFE_PORTS.contains(&server.addr.port()) {
            return server;
        }
    }
}

/// Serves `PAGE` to any request, one connection at a time, until dropped.
struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    fn start() -> PageServer {
        let listener = browser_safe_listener();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve_page(conn);
                }
            }
        });
        PageServer { addr, stop }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn serve_page(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(PATIENCE))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let (status, body) = if head.starts_with(b"GET / ") {
        ("200 OK", PAGE)
    } else {
        ("404 Not Found", "")
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ---- the browser ----

static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Starts chromedriver on a port of its choosing and returns it with that port.
///
/// With `--port=0`, chromedriver takes a free port on one address family and then binds the
/// same number on the other; when another test's connection holds that number there, it says
/// "IPv4 port not available. Exiting..." and quits. That is a lost race, not a broken driver,
/// so it is started again (a few times, each time saying so).
fn start_chromedriver(chromedriver: &Path) -> (ChildLines, u16) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        // Its own process group, for drop to stop; Chromium moves to groups of its own, and
        // `Browser`'s drop finds those processes by the profile directory instead.
        let driver = ChildLines::spawn(
            Command::new(chromedriver)
                .arg("--port=0")
                .stderr(Stdio::null())
                .process_group(0),
        );
        // Several browser tests start their chromedriver and Chromium at once on two loaded
        // cores: give the start-up more room than a single step gets.
        let started = driver.wait_until(PATIENCE * 3, |lines| {
            lines.iter().find_map(|l| {
                if l.contains("port not available") {
                    return Some(None);
                }
                l.split("started successfully on port ")
                    .nth(1)?
                    .trim_end_matches('.')
                    .parse()
                    .ok()
                    .map(Some)
            })
        });
        match started {
            Some(Some(port)) => return (driver, port),
            Some(None) if attempt < ATTEMPTS => {
                eprintln!(
                    "chromedriver lost the race for its port (attempt {attempt}): {:?}",
                    driver.lines()
                );
            }
            _ => panic!("chromedriver did not start: {:?}", driver.lines()),
        }
    }
    unreachable!()
}

/// Headless Chromium under chromedriver, with a fresh profile; all of it is stopped on drop.
struct Browser {
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    driver: ChildLines,
    profile: PathBuf,
    _one: MutexGuard<'static, ()>,
}

impl Browser {
    /// `None` (after saying why) when chromium or chromedriver is missing and not required.
    fn start(test: &str) -> Option<Browser> {
        let chromium = client_or_skip(
            test,
            find_program(&["chromium", "chromium-browser"]),
            "chromium is not on PATH (Debian: apt-get install chromium chromium-driver)",
        )?;
        let chromedriver = client_or_skip(
            test,
            find_program(&["chromedriver"]),
            "chromedriver is not on PATH (Debian: apt-get install chromium-driver)",
        )?;
        let one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());

        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "ringcast-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();

        let (driver, port) = start_chromedriver(&chromedriver);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        // From here on, drop cleans up whatever happens (a failed start included).
        let mut browser = Browser {
            client: None,
            rt,
            driver,
            profile,
            _one: one,
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = browser
            .block("starting chromium", builder.connect(&webdriver))
            .unwrap_or_else(|e| panic!("a WebDriver session with headless chromium: {e}"));
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Runs a WebDriver command to completion, bounded by `PATIENCE`.
    fn block<F: std::future::Future>(&self, what: &str, f: F) -> F::Output {
        self.rt
            .block_on(async { tokio::time::timeout(PATIENCE, f).await })
            .unwrap_or_else(|_| panic!("{what}: no answer from chromedriver in {PATIENCE:?}"))
    }

    fn goto(&self, url: &str) {
        self.block("loading the page", self.client().goto(url))
            .unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.block(script, self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    fn watch(&self, name: &str, url: &str, with_credentials: bool) {
        self.run(
            "watch(arguments[0], arguments[1], arguments[2])",
            vec![json!(name), json!(url), json!(with_credentials)],
        );
    }

    /// What stream `name` has seen so far.
    fn log(&self, name: &str) -> Vec<Value> {
        match self.run("return streams[arguments[0]].log", vec![json!(name)]) {
            Value::Array(v) => v,
            other => panic!("a log array, got {other}"),
        }
    }

    /// Polls stream `name`'s record until `done` returns something; panics with the record on
    /// timeout.
    fn wait_for<T>(
        &self,
        name: &str,
        what: &str,
        mut done: impl FnMut(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log(name);
            if let Some(v) = done(&log) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what}; the page saw: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the session, which quits Chromium (bounded; best effort while panicking).
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(PATIENCE, client.close()).await });
        }
        // chromedriver, then any Chromium process left behind: Chromium puts itself in process
        // groups of its own, but every one of its processes names our unique profile directory.
        unsafe { libc::kill(-(self.driver.pid() as i32), libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = processes_mentioning(&self.profile.to_string_lossy());
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Pids of processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(needle)
            .then_some(pid)
    })
    .collect()
}

// ---- reading the record ----

/// The messages as the harness's events, for `assert_no_gaps`.
fn as_events(messages: &[&Value]) -> Vec<Event> {
    messages
        .iter()
        .map(|m| Event {
            id: Some(message_id(m).to_string()),
            event: Some("message".into()),
            data: vec![m["data"].as_str().unwrap_or_default().into()],
            retry: None,
        })
        .collect()
}

/// Every message is `hello` from `server`, and ids strictly increase.
fn assert_hello_from(server: &TestServer, messages: &[&Value]) {
    for m in messages {
        assert_eq!(m["origin"], format!("http://{}", server.addr), "{m}");
    }
    assert_hello_with_increasing_ids(messages);
}

fn stream_url(server: &TestServer) -> String {
    format!("http://{}/events", server.addr)
}

// ---- the tests ----

fn cross_origin_eventsource_receives_hello_and_cors_is_enforced(driver: &str) {
    let test = "cross_origin_eventsource_receives_hello_and_cors_is_enforced";
    let page = PageServer::start();
    let tick = ["--interval", "100ms"];
    // The seed's server: any origin.
    let any = browser_safe_server(driver, &tick);
    // An origin list naming the page: its origin is echoed, credentials allowed.
    let listed = browser_safe_server(
        driver,
        &[&tick[..], &["--cors-origin", &page.origin()]].concat(),
    );
    // An origin list without the page: a stream request from it gets 403.
    let elsewhere = browser_safe_server(
        driver,
        &[&tick[..], &["--cors-origin", "http://allowed.example"]].concat(),
    );
    let Some(browser) = Browser::start(test) else {
        return;
    };
    browser.goto(&format!("{}/", page.origin()));
    assert_eq!(browser.run("return location.origin", vec![]), page.origin());

    browser.watch("any", &stream_url(&any), false);
    browser.watch("listed", &stream_url(&listed), true);
    browser.watch("elsewhere", &stream_url(&elsewhere), false);

    for (name, server) in [("any", &any), ("listed", &listed)] {
        let log = browser.wait_for(name, "several messages", |log| {
            (of_type(log, "message").len() >= WANTED).then(|| log.to_vec())
        });
        assert_eq!(log[0]["type"], "open", "{name}: {log:?}");
        assert!(of_type(&log, "error").is_empty(), "{name}: {log:?}");
        let messages = of_type(&log, "message");
        assert_hello_from(server, &messages);
        server.assert_no_gaps(&as_events(&messages));
    }

    // The unlisted origin: the EventSource fails for good (CLOSED), having seen nothing.
    let log = browser.wait_for("elsewhere", "an error that closes it", |log| {
        of_type(log, "error")
            .iter()
            .any(|e| e["readyState"] == 2)
            .then(|| log.to_vec())
    });
    assert!(
        of_type(&log, "open").is_empty() && of_type(&log, "message").is_empty(),
        "{log:?}"
    );
    // ... because the server refused that origin, as the same request shows at the HTTP level.
    let raw = format!(
        "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nOrigin: {}\r\n\r\n",
        elsewhere.addr,
        page.origin()
    );
    let refused = request(elsewhere.addr, raw.as_bytes());
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
}

fn eventsource_reconnects_with_last_event_id_after_restart(driver: &str) {
    let test = "eventsource_reconnects_with_last_event_id_after_restart";
    let page = PageServer::start();
    // `retry:` brings the browser back quickly; debug logs the Last-Event-ID received.
    let args = [
        "--interval",
        "100ms",
        "--retry",
        "200",
        "--log",
        "info,ringcast=debug",
    ];
    let mut first = browser_safe_server(driver, &args);
    let Some(browser) = Browser::start(test) else {
        return;
    };
    browser.goto(&format!("{}/", page.origin()));
    browser.watch("s", &stream_url(&first), false);
    let before = browser.wait_for("s", "several messages", |log| {
        (of_type(log, "message").len() >= WANTED).then(|| log.to_vec())
    });
    assert_hello_from(&first, &of_type(&before, "message"));
    assert!(
        first
            .log_text()
            .lines()
            .all(|l| !l.contains("last_event_id=")),
        "a first connection sends no Last-Event-ID; log:\n{}",
        first.log_text()
    );

    // The server goes away: the browser sees the stream end and will retry (CONNECTING).
    first.stop_and_summary();
    let at_error = browser.wait_for("s", "an error once the server stopped", |log| {
        log.iter()
            .position(|e| e["type"] == "error")
            .map(|i| log[..=i].to_vec())
    });
    assert_eq!(at_error.last().unwrap()["readyState"], 0, "{at_error:?}");
    let last_seen = message_id(of_type(&at_error, "message").last().unwrap());

    // The same port again: the browser comes back by itself and the stream goes on.
    let second = TestServer::start_on(driver, &first.addr.to_string(), &args);
    let log = browser.wait_for("s", "messages from the restarted server", |log| {
        let resumed = of_type(log, "message")
            .iter()
            .filter(|m| message_id(m) > last_seen)
            .count();
        (resumed >= WANTED).then(|| log.to_vec())
    });
    let after = &log[at_error.len()..];
    assert!(
        !of_type(after, "open").is_empty(),
        "it reopened after the error: {log:?}"
    );
    assert_hello_from(&second, &of_type(&log, "message"));
    assert!(
        second
            .wait_log(&format!("last_event_id={last_seen}"), PATIENCE)
            .is_some(),
        "the browser sent Last-Event-ID {last_seen}; server log:\n{}",
        second.log_text()
    );
}

// ---- a cut in the network, with the server still up ----

/// A TCP relay between the browser and ringcast that can cut every connection and refuse new
/// ones for a while: the server keeps running (and keeps its history) while the browser is
/// disconnected, as when a phone changes networks.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    paused: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = browser_safe_listener();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let (conns, refusing) = (open.clone(), paused.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                if refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the browser sees the connection fail
                }
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(down.try_clone().unwrap());
                list.push(up.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, open, paused }
    }

    /// Cuts every relayed connection and refuses new ones until `resume`.
    fn cut(&self) {
        self.paused.store(true, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

fn channel_subscriber_cut_off_gets_what_was_published_meanwhile(driver: &str) {
    let test = "channel_subscriber_cut_off_gets_what_was_published_meanwhile";
    let page = PageServer::start();
    let server = browser_safe_server(driver, &["--retry", "200", "--heartbeat", "off"]);
    let relay = Relay::start(server.addr);
    let Some(browser) = Browser::start(test) else {
        return;
    };
    let publish = |data: &str| publish_ok(&server, "channel=news", data);
    browser.goto(&format!("{}/", page.origin()));
    browser.watch(
        "s",
        &format!("http://{}/events?channel=news", relay.addr),
        false,
    );
    browser.wait_for("s", "open", |log| {
        (!of_type(log, "open").is_empty()).then_some(())
    });
    // The stream is registered once the server counts it; then publish.
    let deadline = Instant::now() + PATIENCE;
    while metric(&server, "channel_streams_open") < 1.0 {
        assert!(Instant::now() < deadline, "the stream never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ids: Vec<String> = (0..3).map(|i| publish(&format!("before {i}"))).collect();
    browser.wait_for("s", "the first events", |log| {
        (of_type(log, "message").len() >= 3).then_some(())
    });

    // Cut off: the browser errors and keeps retrying (refused) while events are published.
    relay.cut();
    let errors_then = browser.wait_for("s", "an error after the cut", |log| {
        (!of_type(log, "error").is_empty()).then_some(log.len())
    });
    // (The server notices the dead stream only when a write to it fails: the first events below
    // are written into the cut connection and lost there; the replay must make up for them.)
    ids.extend((0..4).map(|i| publish(&format!("while away {i}"))));
    relay.resume();

    // It comes back by itself with Last-Event-ID and gets what it missed, then live events.
    browser.wait_for("s", "the missed events", |log| {
        (of_type(log, "message").len() >= 7).then_some(())
    });
    ids.push(publish("live"));
    let log = browser.wait_for("s", "the live event", |log| {
        (of_type(log, "message").len() >= 8).then(|| log.to_vec())
    });
    assert!(
        !of_type(&log[errors_then..], "open").is_empty(),
        "it reopened: {log:?}"
    );
    let messages = of_type(&log, "message");
    let got: Vec<&str> = messages
        .iter()
        .map(|m| m["lastEventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        got, ids,
        "every event once, in order, lastEventId continuous: {log:?}"
    );
    assert_eq!(messages[3]["data"], "while away 0");
    assert!(of_type(&log, "reset").is_empty(), "{log:?}");
    assert!(metric(&server, "events_replayed_total") >= 4.0);
}
