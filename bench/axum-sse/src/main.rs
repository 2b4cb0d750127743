//! axum-sse: the idiomatic alternative a Rust user would write, as a baseline for `bench/run.sh`.
//!
//! tokio's multi-threaded runtime (`--workers` threads) and axum: any `GET` whose `Accept` names
//! `text/event-stream` gets an `Sse` response whose stream is a `tokio::sync::broadcast` receiver;
//! one interval task sends the tick at every wall-clock multiple of `--interval` and each
//! connection's task turns it into `Event::default().id(tick).event("message").data("hello")`.
//! That is one task and one encoding per connection per tick: the shape most tutorials give, kept
//! as plain as they are (no `keep_alive` comments, which would add bytes ringcast does not send).
//! The ids are ringcast's (whole intervals since the Unix epoch), and the response carries the same
//! CORS and `X-Accel-Buffering` headers, so the loadgen measures it exactly as it measures ringcast.
//! Everything else is answered `ok`.
//!
//! Flags: `--listen ADDR` (default 0.0.0.0:8080; port 0 picks one, printed as
//! `listening on http://ADDR`), `--interval DURATION` (default 2s), `--workers N` (default: cores).
//! SIGINT/SIGTERM exit at once (streams never end, so a graceful shutdown would wait forever).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

struct Opts {
    listen: SocketAddr,
    interval_ms: u64,
    workers: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "axum-sse: {msg}\nusage: axum-sse [--listen ADDR] [--interval DURATION] [--workers N]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        listen: "0.0.0.0:8080".parse().expect("literal address"),
        interval_ms: 2000,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "--help" || name == "-h" {
            usage("the axum baseline (see bench/axum-sse/src/main.rs)");
        }
        let value = inline
            .or_else(|| args.next())
            .unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match name.as_str() {
            "--listen" => {
                o.listen = value
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("--listen {value}: {e}")))
            }
            "--interval" => {
                let d = humantime::parse_duration(&value)
                    .unwrap_or_else(|e| usage(&format!("--interval {value}: {e}")));
                o.interval_ms = (d.as_millis() as u64).max(1);
            }
            "--workers" => {
                o.workers = value
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .unwrap_or_else(|| usage(&format!("--workers {value}: not a positive number")))
            }
            _ => usage(&format!("unknown flag {name}")),
        }
    }
    o
}

/// Raises the soft open-files limit to the hard one (each stream is an fd).
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

async fn handler(
    State(tx): State<broadcast::Sender<u64>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let wants_stream = method == Method::GET
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if !wants_stream {
        return "ok".into_response();
    }
    let stream = BroadcastStream::new(tx.subscribe()).filter_map(|tick| {
        // A lagging receiver skips what it missed, like ringcast's skipped ticks.
        tick.ok().map(|tick| {
            Ok::<_, Infallible>(
                Event::default()
                    .id(tick.to_string())
                    .event("message")
                    .data("hello"),
            )
        })
    });
    let mut resp = Sse::new(stream).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("connection", "keep-alive"),
        ("x-accel-buffering", "no"),
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "*"),
        ("access-control-allow-headers", "*"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn ticker(tx: broadcast::Sender<u64>, interval_ms: u64) {
    let mut tick = now_ms() / interval_ms + 1;
    loop {
        let now = now_ms();
        let due = tick * interval_ms;
        if due > now {
            tokio::time::sleep(Duration::from_millis(due - now)).await;
            continue;
        }
        // More than an interval late: go on with the current tick instead of stale ones.
        tick = tick.max(now / interval_ms);
        // No receivers is not an error here: nobody listens yet.
        let _ = tx.send(tick);
        tick += 1;
    }
}

fn main() {
    let o = parse_opts();
    let fd_limit = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.listen)
            .await
            .unwrap_or_else(|e| {
                eprintln!("axum-sse: cannot bind {}: {e}", o.listen);
                std::process::exit(1)
            });
        let addr = listener.local_addr().expect("bound listener has an address");
        let (tx, _) = broadcast::channel(16);
        tokio::spawn(ticker(tx.clone(), o.interval_ms));
        let app = Router::new().fallback(handler).with_state(tx);
        eprintln!(
            "axum-sse {}: {} workers, interval {} ms, fd limit {fd_limit}, listening on http://{addr}",
            env!("CARGO_PKG_VERSION"),
            o.workers,
            o.interval_ms
        );
        let serve = axum::serve(listener, app);
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        tokio::select! {
            r = serve => if let Err(e) = r { eprintln!("axum-sse: {e}"); std::process::exit(1) },
            _ = stop => {}
        }
    });
    std::process::exit(0)
}
