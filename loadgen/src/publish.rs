//! Publish mode's publishers: `--publishers` threads, each with one keep-alive HTTP/1.1
//! connection to the `--publish` URL, sending `POST <path>?channel=cN` at `--publish-rate`
//! events per second in total. Event i is due at `start + i / rate` and goes to channel
//! `i mod K`; a publisher takes the next event when it is free, so a slow server makes the
//! events late rather than fewer, and the request latency is taken from the due time
//! (free of coordinated omission) as well as from the send time. A 2xx answer's JSON `id`
//! goes into the channel's list for the subscribers' accounting; other answers are counted
//! by status and not retried.
//!
//! With `--publish-batch N`, a publisher takes N consecutive events at once and sends them as
//! one JSON array (`[{"channel": "cN", "data": "…"}, …]`, ringcast's `POST /publish/batch`)
//! when the last of them is due; the answer's `ids` are matched to the events in order.
//!
//! Plain blocking sockets on their own threads: a few requests per millisecond at most,
//! kept away from the cores that hold the streams.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::channels::{Channels, EventId};
use crate::engine::Live;
use crate::http::{self, Framing, Target};
use crate::metrics::{record, FailureKind, Recorder};

/// Largest publish answer (head and body each) accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// What the publishers do, fixed before they start.
#[derive(Debug)]
pub struct PublishPlan {
    pub target: Target,
    pub rate: f64,
    pub publishers: usize,
    /// Events per request (1: a plain publish with `?channel=`; more: a JSON batch).
    pub batch: u64,
    pub token: Option<String>,
    /// Write the send time (unix µs) at the start of the data.
    pub timestamp_in_data: bool,
    /// Publishing runs from `start` (the end of the ramp) to `end` (the end of the hold).
    pub start: Instant,
    pub end: Instant,
    /// Requests due before this are left out of the histograms (the warmup).
    pub measure_from: Instant,
    pub timeout: Duration,
}

impl PublishPlan {
    /// When event `i` is due.
    pub fn due(&self, i: u64) -> Option<Instant> {
        let after = Duration::try_from_secs_f64(i as f64 / self.rate).ok()?;
        self.start.checked_add(after)
    }

    /// Events due in `[start, until)`.
    pub fn due_before(&self, until: Instant) -> u64 {
        let secs = until.saturating_duration_since(self.start).as_secs_f64();
        (secs * self.rate).ceil() as u64
    }
}

/// The request for one event.
pub fn request(target: &Target, channel: &str, body: &[u8], token: Option<&str>) -> Vec<u8> {
    let path = http::with_query(&target.path, "channel", channel);
    post(&path, &target.host, "text/plain", body, token)
}

/// The request for several events, (channel, data) each, as one JSON batch.
pub fn batch_request(target: &Target, events: &[(&str, &str)], token: Option<&str>) -> Vec<u8> {
    let items: Vec<serde_json::Value> = events
        .iter()
        .map(|(channel, data)| serde_json::json!({ "channel": channel, "data": data }))
        .collect();
    let body = serde_json::Value::Array(items).to_string();
    post(
        &target.path,
        &target.host,
        "application/json",
        body.as_bytes(),
        token,
    )
}

fn post(path: &str, host: &str, content_type: &str, body: &[u8], token: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        req.push_str("Authorization: Bearer ");
        req.push_str(token);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}

/// The data of event `i`: with `--timestamp-in-data` it starts with the send time.
pub fn body(i: u64, timestamp_in_data: bool) -> String {
    if timestamp_in_data {
        format!("{} e{i}", unix_us())
    } else {
        format!("e{i}")
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The send time a `--timestamp-in-data` publisher wrote: the data's leading digits.
pub fn timestamp_of(data: &str) -> Option<u64> {
    let end = data
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(data.len());
    data[..end].parse().ok()
}

/// A publish answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The `id` of a JSON body (`{"id":"<ms>-<seq>","channels":[...]}`), or a batch's `ids`.
    pub ids: Vec<String>,
    /// The server will close the connection after it.
    pub close: bool,
}

/// A failed exchange: the kind's name, and whether nothing of an answer had arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    kind: &'static str,
    nothing_read: bool,
}

fn io_failure(e: &io::Error, nothing_read: bool) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::WouldBlock => "timeout",
        _ => FailureKind::of_io(e).name(),
    };
    Failure { kind, nothing_read }
}

const PROTOCOL: Failure = Failure {
    kind: "protocol",
    nothing_read: false,
};

/// Parses a complete answer head from `buf`: None while incomplete.
fn parse_answer_head(buf: &[u8]) -> Result<Option<(usize, u16, Framing, bool)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER => return Err(PROTOCOL),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(PROTOCOL),
    };
    let status = resp.code.ok_or(PROTOCOL)?;
    let mut framing = Framing::Close;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if !matches!(framing, Framing::Chunked(_)) {
                framing = Framing::Length(value.parse().map_err(|_| PROTOCOL)?);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                framing = Framing::Chunked(Default::default());
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    if matches!(framing, Framing::Close) {
        close = true;
    }
    Ok(Some((len, status, framing, close)))
}

/// The ids of a JSON answer body: its `id`, or its `ids` in order (a batch); none otherwise.
pub fn answer_ids(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    if let Some(id) = v.get("id").and_then(|id| id.as_str()) {
        return vec![id.to_owned()];
    }
    v.get("ids")
        .and_then(|ids| ids.as_array())
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One keep-alive connection to the publish endpoint.
struct Client {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            timeout,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `req` and reads the answer. A kept-alive connection the server closed while
    /// idle (it fails before any byte of an answer) is replaced and the request sent once
    /// more on a new one; nothing else is retried.
    fn post(&mut self, req: &[u8]) -> Result<Answer, &'static str> {
        let reused = self.stream.is_some();
        let mut result = self.exchange(req);
        if let Err(f) = result {
            self.stream = None;
            if reused && f.nothing_read && matches!(f.kind, "closed" | "reset") {
                result = self.exchange(req);
                if result.is_err() {
                    self.stream = None;
                }
            }
        }
        match result {
            Ok(answer) => {
                if answer.close {
                    self.stream = None;
                }
                Ok(answer)
            }
            Err(f) => Err(f.kind),
        }
    }

    fn exchange(&mut self, req: &[u8]) -> Result<Answer, Failure> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)
                .map_err(|e| io_failure(&e, true))?;
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(self.timeout))
                .and_then(|()| s.set_write_timeout(Some(self.timeout)))
                .map_err(|e| io_failure(&e, true))?;
            self.stream = Some(s);
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(PROTOCOL);
        };
        s.write_all(req).map_err(|e| io_failure(&e, true))?;
        let buf = &mut self.buf;
        buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_len, status, mut framing, close) = loop {
            let n = s
                .read(&mut chunk)
                .map_err(|e| io_failure(&e, buf.is_empty()))?;
            if n == 0 {
                return Err(Failure {
                    kind: "closed",
                    nothing_read: buf.is_empty(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse_answer_head(buf)? {
                break head;
            }
        };
        let mut body = Vec::new();
        let mut sink = |b: &[u8]| {
            if body.len() + b.len() > MAX_ANSWER {
                return Err(());
            }
            body.extend_from_slice(b);
            Ok(())
        };
        let mut done = matches!(framing, Framing::Length(0))
            || framing
                .decode(&buf[head_len..], &mut sink)
                .map_err(|_| PROTOCOL)?;
        while !done {
            let n = s.read(&mut chunk).map_err(|e| io_failure(&e, false))?;
            if n == 0 {
                if matches!(framing, Framing::Close) {
                    break;
                }
                return Err(Failure {
                    kind: "closed",
                    nothing_read: false,
                });
            }
            done = framing
                .decode(&chunk[..n], &mut sink)
                .map_err(|_| PROTOCOL)?;
        }
        Ok(Answer {
            status,
            ids: answer_ids(&body),
            close,
        })
    }
}

/// Marks the channel lists final when the last publisher ends (however it ends).
struct Finish<'a>(&'a Channels);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.0.publishers_running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mark_done();
        }
    }
}

/// The running publishers and what they record together (one recorder for all of them:
/// its histograms are a fixed cost, not to be paid per thread).
pub struct Publishers {
    handles: Vec<JoinHandle<()>>,
    recorder: Arc<Mutex<Recorder>>,
}

impl Publishers {
    /// Waits for the publishers to finish; returns the publish counters and the
    /// `publish_request` / `publish_send` histograms.
    pub fn join(self) -> Result<Recorder, String> {
        for h in self.handles {
            h.join()
                .map_err(|_| "a publisher thread panicked".to_string())?;
        }
        let rec = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        Ok(rec.clone())
    }
}

/// Starts the publisher threads (they wait for the plan's start).
pub fn start(
    plan: Arc<PublishPlan>,
    channels: Arc<Channels>,
    live: Arc<Live>,
) -> Result<Publishers, String> {
    let next = Arc::new(AtomicU64::new(0));
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    channels
        .publishers_running
        .store(plan.publishers, Ordering::SeqCst);
    let mut handles = Vec::with_capacity(plan.publishers);
    for p in 0..plan.publishers {
        let (pp, ch, lv, next, rec) = (
            plan.clone(),
            channels.clone(),
            live.clone(),
            next.clone(),
            recorder.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-publisher-{p}"))
            .spawn(move || publisher(&pp, &ch, &next, &lv, &rec));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The threads never started do not count as running.
                let missing = plan.publishers - p;
                if channels
                    .publishers_running
                    .fetch_sub(missing, Ordering::AcqRel)
                    == missing
                {
                    channels.mark_done();
                }
                live.request_stop();
                return Err(format!("spawning publisher thread: {e}"));
            }
        }
    }
    Ok(Publishers { handles, recorder })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn publisher(
    plan: &PublishPlan,
    channels: &Channels,
    next: &AtomicU64,
    live: &Live,
    recorder: &Mutex<Recorder>,
) {
    let _finish = Finish(channels);
    let mut client = Client::new(plan.target.addr, plan.timeout);
    let count = channels.len().max(1) as u64;
    loop {
        // Events first..first + n; the request goes when the last of them is due.
        let first = next.fetch_add(plan.batch, Ordering::Relaxed);
        let n = (0..plan.batch)
            .take_while(|k| plan.due(first + k).is_some_and(|d| d < plan.end))
            .count() as u64;
        let Some(due) = n.checked_sub(1).and_then(|last| plan.due(first + last)) else {
            break;
        };
        loop {
            let now = Instant::now();
            if live.stop_requested() {
                return;
            }
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
        }
        // Behind schedule at the end of the hold: what is left stays unsent.
        if Instant::now() >= plan.end {
            break;
        }
        let events: Vec<(usize, String)> = (first..first + n)
            .map(|i| ((i % count) as usize, body(i, plan.timestamp_in_data)))
            .collect();
        let req = if plan.batch == 1 {
            let (channel, data) = &events[0];
            request(
                &plan.target,
                &channels.names[*channel],
                data.as_bytes(),
                plan.token.as_deref(),
            )
        } else {
            let named: Vec<(&str, &str)> = events
                .iter()
                .map(|(channel, data)| (channels.names[*channel].as_str(), data.as_str()))
                .collect();
            batch_request(&plan.target, &named, plan.token.as_deref())
        };
        let sent = Instant::now();
        let outcome = client.post(&req);
        let done = Instant::now();
        let mut with_ids = 0;
        if let Ok(answer) = &outcome {
            if (200..300).contains(&answer.status) {
                channels.published_ok.fetch_add(n, Ordering::Relaxed);
                for ((channel, _), id) in events.iter().zip(&answer.ids) {
                    if let Some(id) = EventId::parse(id) {
                        channels.record(*channel, id);
                        with_ids += 1;
                    }
                }
            }
        }
        let mut rec = recorder.lock().unwrap_or_else(|e| e.into_inner());
        let rec = &mut *rec;
        let c = &mut rec.counters;
        c.publish_attempted += n;
        match outcome {
            Ok(answer) if (200..300).contains(&answer.status) => {
                c.published_ok += n;
                c.published_without_id += n - with_ids;
                if due >= plan.measure_from {
                    record(&mut rec.histograms.publish_request, micros(done - due));
                    record(&mut rec.histograms.publish_send, micros(done - sent));
                }
            }
            Ok(answer) => {
                *c.publish_errors
                    .entry(answer.status.to_string())
                    .or_default() += n;
            }
            Err(kind) => *c.publish_errors.entry(kind.to_string()).or_default() += n,
        }
    }
}

/// The publish errors as a printable list, e.g. `401 x3, timeout x1`.
pub fn describe_errors(errors: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_requests() {
        let t = Target::parse("http://127.0.0.1:9090/publish").unwrap();
        let r = String::from_utf8(request(&t, "c2", b"e7", Some("s3cret"))).unwrap();
        assert!(
            r.starts_with("POST /publish?channel=c2 HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nContent-Length: 2\r\n"));
        assert!(r.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(r.ends_with("\r\n\r\ne7"));
        let t = Target::parse("http://127.0.0.1:9090/publish?event=tick").unwrap();
        let r = String::from_utf8(request(&t, "c0", b"", None)).unwrap();
        assert!(r.starts_with("POST /publish?event=tick&channel=c0 HTTP/1.1\r\n"));
        assert!(!r.contains("Authorization"));
    }

    #[test]
    fn batch_requests_are_a_json_array_in_order() {
        let t = Target::parse("http://127.0.0.1:9090/publish/batch").unwrap();
        let r = String::from_utf8(batch_request(
            &t,
            &[("c0", "e0"), ("c1", "e\"1")],
            Some("s3cret"),
        ))
        .unwrap();
        assert!(r.starts_with("POST /publish/batch HTTP/1.1\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Type: application/json\r\n"));
        assert!(r.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        let body = r.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"channel": "c0", "data": "e0"}, {"channel": "c1", "data": "e\"1"}])
        );
        assert!(r.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }

    #[test]
    fn bodies_and_timestamps() {
        assert_eq!(body(12, false), "e12");
        let b = body(12, true);
        let ts = timestamp_of(&b).unwrap();
        assert!(ts > 1_600_000_000_000_000 && b.ends_with(" e12"), "{b}");
        assert_eq!(
            timestamp_of("1700000000000000"),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(timestamp_of("hello"), None);
        assert_eq!(timestamp_of(""), None);
    }

    #[test]
    fn schedule() {
        let start = Instant::now();
        let plan = PublishPlan {
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            rate: 4.0,
            publishers: 1,
            batch: 1,
            token: None,
            timestamp_in_data: false,
            start,
            end: start + Duration::from_secs(1),
            measure_from: start,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(plan.due(0), Some(start));
        assert_eq!(plan.due(6), Some(start + Duration::from_millis(1500)));
        assert_eq!(plan.due_before(start + Duration::from_secs(1)), 4);
        assert_eq!(plan.due_before(start + Duration::from_millis(1100)), 5);
    }

    #[test]
    fn answers() {
        let ok =
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n";
        let (len, status, framing, close) = parse_answer_head(ok).unwrap().unwrap();
        assert_eq!((len, status, close), (ok.len(), 201, false));
        assert!(matches!(framing, Framing::Length(45)));
        assert!(matches!(parse_answer_head(&ok[..20]), Ok(None)));
        let closing =
            b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (_, status, _, close) = parse_answer_head(closing).unwrap().unwrap();
        assert_eq!((status, close), (401, true));
        let old = b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_answer_head(old).unwrap().unwrap().3);
        let unframed = b"HTTP/1.1 201 Created\r\n\r\n";
        assert!(parse_answer_head(unframed).unwrap().unwrap().3);
        assert!(parse_answer_head(b"nonsense\r\n\r\n").is_err());
        assert_eq!(
            answer_ids(br#"{"id":"1764500000123-4","channels":["c1"]}"#),
            vec!["1764500000123-4"]
        );
        assert_eq!(answer_ids(br#"{"ids":["5-1","5-2"]}"#), vec!["5-1", "5-2"]);
        assert!(answer_ids(b"queued messages: 1").is_empty());
        assert!(answer_ids(br#"{"channels":["c1"]}"#).is_empty());
    }

    fn serve(answers: Vec<&'static str>) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut requests = Vec::new();
            let (mut s, _) = l.accept().unwrap();
            for answer in answers {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(answer.as_bytes()).unwrap();
            }
            requests
        });
        (addr, h)
    }

    #[test]
    fn a_client_keeps_its_connection_and_reads_framed_answers() {
        let (addr, server) = serve(vec![
            "HTTP/1.1 201 Created\r\nContent-Length: 30\r\n\r\n{\"id\":\"5-1\",\"channels\":[\"c0\"]}",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"id\":\"5-2\"\r\n1\r\n}\r\n0\r\n\r\n",
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nslow",
        ]);
        let t = Target::parse(&format!("http://{addr}/publish")).unwrap();
        let mut c = Client::new(addr, Duration::from_secs(10));
        let a = c.post(&request(&t, "c0", b"x", None)).unwrap();
        assert_eq!((a.status, a.ids), (201, vec!["5-1".to_owned()]));
        let a = c.post(&request(&t, "c1", b"y", None)).unwrap();
        assert_eq!((a.status, a.ids), (201, vec!["5-2".to_owned()]));
        let a = c.post(&request(&t, "c2", b"z", None)).unwrap();
        assert_eq!((a.status, a.ids), (429, Vec::<String>::new()));
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 3, "one connection for all three");
        assert!(requests[1].starts_with("POST /publish?channel=c1 "));
    }

    #[test]
    fn an_idle_connection_the_server_closed_is_replaced_once() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // first connection: one answer, then closed while idle
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            drop(s);
            // second connection: the retried request
            let (mut s, _) = l.accept().unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"id\":\"1-1\"}")
                .unwrap();
        });
        let t = Target::parse(&format!("http://{addr}/p")).unwrap();
        let mut c = Client::new(addr, Duration::from_secs(10));
        assert_eq!(c.post(&request(&t, "c0", b"a", None)).unwrap().status, 201);
        // Whether the close reaches the client before or after it sends (EOF or a reset),
        // the second request goes out again on a new connection.
        let a = c.post(&request(&t, "c0", b"b", None)).unwrap();
        assert_eq!(a.ids, vec!["1-1"]);
        server.join().unwrap();
        // a refused connection is an error, not retried
        let mut c = Client::new(addr, Duration::from_secs(10));
        assert_eq!(c.post(&request(&t, "c0", b"c", None)), Err("refused"));
    }
}
