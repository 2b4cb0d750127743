//! The admin listener: `/metrics` (Prometheus text format), `/healthz` and `/info` (JSON).
//!
//! It runs on its own plain thread with blocking std sockets, away from the workers: scraping it
//! never touches a worker's runtime, it only reads the workers' single-writer counters and adds
//! them up. It binds a separate address (`--admin-listen`, loopback by default), never the
//! public listener.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Cors};
use crate::metrics::{HistogramSnapshot, Snapshot, WorkerStats, BUCKETS_US};
use crate::net::FdLimit;
use crate::streams::StreamCap;
use crate::worker::Started;

/// What the endpoints report on.
pub struct State {
    pub cfg: Arc<Config>,
    pub listen: SocketAddr,
    pub kernel: String,
    pub fd_limit: FdLimit,
    pub workers: Vec<Started>,
    pub stats: Vec<Arc<WorkerStats>>,
    pub cap: Arc<StreamCap>,
    /// Worker threads still running.
    pub alive: Arc<AtomicUsize>,
    pub started_at: SystemTime,
}

/// A running admin listener.
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    pub fn start(addr: SocketAddr, state: State) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve(conn, &state);
                    }
                }
            })?;
        Ok(Admin {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, state: &State) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (method, path) = loop {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                )
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut conn, 400, "text/plain", "bad request\n"),
        }
    };
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut conn, 405, "text/plain", "only GET\n");
    }
    match path {
        "/metrics" => respond(
            &mut conn,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics(state),
        ),
        "/healthz" => {
            let alive = state.alive.load(Ordering::Acquire);
            if alive == state.workers.len() {
                respond(&mut conn, 200, "text/plain", "ok\n")
            } else {
                let body = format!("{alive} of {} workers running\n", state.workers.len());
                respond(&mut conn, 503, "text/plain", &body)
            }
        }
        "/info" => respond(&mut conn, 200, "application/json", &info(state)),
        _ => respond(
            &mut conn,
            404,
            "text/plain",
            "try /metrics, /healthz or /info\n",
        ),
    }
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
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
        "tick_walk_seconds_max",
        "gauge",
        "Longest tick walk.",
        |s| s.walk_us_max as f64 / 1e6,
    ),
];

/// The Prometheus text exposition: one series per worker (`worker="0"`, …) and one summed over
/// the workers (`worker="total"`; leave it out when aggregating yourself).
pub fn metrics(state: &State) -> String {
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
            "ringcast_info{{worker=\"{}\",version=\"{}\",kernel=\"{}\",driver=\"{}\"}} 1",
            w.id,
            env!("CARGO_PKG_VERSION"),
            state.kernel,
            w.driver
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
    let _ = writeln!(
        out,
        "# HELP ringcast_workers_running Worker threads running.\n# TYPE ringcast_workers_running gauge\nringcast_workers_running {}",
        state.alive.load(Ordering::Acquire)
    );
    out
}

/// `/info`: what is running, as JSON.
pub fn info(state: &State) -> String {
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
        },
        "config": {
            "driver_requested": format!("{:?}", cfg.driver).to_lowercase(),
            "ring_entries": cfg.ring_entries,
            "pin": cfg.pin,
            "retry_ms": cfg.retry,
            "cors_origins": cors,
            "backlog": cfg.backlog,
        },
        "streams_open": state.cap.open(),
    })
    .to_string()
}
