//! ringcast-floor: the floor every SSE server is measured against in `bench/run.sh`.
//!
//! It does what ringcast does on the wire and nothing more, with no async runtime at all: per
//! worker, one `SO_REUSEPORT` listener served by a blocking accept thread that answers the
//! handshake, and one tick thread (pinned to core *i*) that at every wall-clock multiple of
//! `--interval` sends the frame `id: <tick>\nevent: message\ndata: hello\n\n` to each of its
//! streams with one plain non-blocking `send()`. What that costs is the kernel's own price per
//! frame (syscall, fd lookup, TCP/loopback path), so a server's CPU per delivered frame divided by
//! the floor's in the same run says what the server adds (or saves, by batching) on top.
//!
//! Deliberately minimal: a stream is just its fd in a `Vec`; a send error drops the stream; EAGAIN
//! (or a short write, which would leave a torn frame) counts as a skip, and a short write drops the
//! stream so no torn frame is ever followed by another. Anything that is not a `GET` naming
//! `text/event-stream` in `Accept` gets `ok` and is closed. The handshake bytes are ringcast's
//! (`src/sse.rs` `stream_head` with the default CORS), the ids are ringcast's (whole intervals since
//! the Unix epoch), so the loadgen measures it exactly as it measures ringcast.
//!
//! Flags: `--listen ADDR` (default 0.0.0.0:8080; port 0 picks one, printed as
//! `listening on http://ADDR`), `--interval DURATION` (default 2s), `--workers N` (default: cores).
//! SIGINT/SIGTERM print the totals and exit 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

/// ringcast's stream head for the default CORS, taken from ringcast itself so the floor sends
/// exactly what the server sends, whatever it becomes.
fn stream_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| ringcast::sse::stream_head(Some("*"), false, None))
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

const MAX_HEAD: usize = 8 * 1024;

struct Opts {
    listen: SocketAddr,
    interval_ms: u64,
    workers: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "ringcast-floor: {msg}\nusage: ringcast-floor [--listen ADDR] [--interval DURATION] [--workers N]"
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
            usage("the benchmark floor (see bench/floor/src/main.rs)");
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

#[derive(Default)]
struct Stats {
    streams: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    skips: AtomicU64,
    drops: AtomicU64,
    ticks_missed: AtomicU64,
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

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn pin(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Reads a request head (blocking, bounded by size and a read timeout) and says whether it is a
/// GET whose Accept names text/event-stream.
fn wants_stream(conn: &mut TcpStream) -> Option<bool> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = conn.read(&mut buf[len..]).ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let get = head.starts_with("get ");
            let sse = head.lines().skip(1).any(|l| {
                l.strip_prefix("accept:")
                    .is_some_and(|v| v.contains("text/event-stream"))
            });
            return Some(get && sse);
        }
        if len == buf.len() {
            return None;
        }
    }
}

fn accept_loop(listener: TcpListener, pending: Arc<Mutex<Vec<RawFd>>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else {
            // EMFILE and friends: back off briefly instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_nodelay(true);
        match wants_stream(&mut conn) {
            Some(true) => {
                if conn.write_all(stream_head()).is_err() || conn.set_nonblocking(true).is_err() {
                    continue;
                }
                pending
                    .lock()
                    .expect("pending list")
                    .push(conn.into_raw_fd());
            }
            Some(false) => {
                let _ = conn.write_all(OK);
            }
            None => {}
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn tick_loop(core: usize, interval_ms: u64, pending: Arc<Mutex<Vec<RawFd>>>, stats: Arc<Stats>) {
    pin(core);
    let mut streams: Vec<RawFd> = Vec::new();
    let mut tick = now_ms() / interval_ms + 1;
    loop {
        let now = now_ms();
        let due = tick * interval_ms;
        if due > now {
            std::thread::sleep(Duration::from_millis(due - now));
            continue;
        }
        // Due (or late): a tick more than an interval late is skipped, like ringcast does.
        let current = now / interval_ms;
        if current > tick {
            stats
                .ticks_missed
                .fetch_add(current - tick, Ordering::Relaxed);
            tick = current;
        }
        streams.append(&mut pending.lock().expect("pending list"));
        let frame = format!("id: {tick}\nevent: message\ndata: hello\n\n").into_bytes();
        let (mut frames, mut skips, mut drops) = (0u64, 0u64, 0u64);
        let mut i = 0;
        while i < streams.len() {
            let fd = streams[i];
            // SAFETY: fd is an open socket owned by this list; the buffer outlives the call.
            let n = unsafe {
                libc::send(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            let keep = if n == frame.len() as isize {
                frames += 1;
                true
            } else if n < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EAGAIN) || e == Some(libc::EINTR) {
                    skips += 1;
                    true
                } else {
                    false
                }
            } else {
                // A short write: the stream now holds a torn frame; count the skip and drop it.
                skips += 1;
                false
            };
            if keep {
                i += 1;
            } else {
                drops += 1;
                // SAFETY: the fd is ours and removed from the list right after.
                unsafe { libc::close(fd) };
                streams.swap_remove(i);
            }
        }
        stats.streams.store(streams.len() as u64, Ordering::Relaxed);
        stats.frames.fetch_add(frames, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(frames * frame.len() as u64, Ordering::Relaxed);
        stats.skips.fetch_add(skips, Ordering::Relaxed);
        stats.drops.fetch_add(drops, Ordering::Relaxed);
        tick += 1;
    }
}

fn main() {
    let o = parse_opts();
    let fd_limit = raise_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Bind once to learn the port (port 0), then every worker binds the same one.
    let first = bind(o.listen).unwrap_or_else(|e| {
        eprintln!("ringcast-floor: cannot bind {}: {e}", o.listen);
        std::process::exit(1)
    });
    let addr = first.local_addr().expect("bound listener has an address");
    let mut listeners = vec![first];
    for _ in 1..o.workers {
        listeners.push(bind(addr).unwrap_or_else(|e| {
            eprintln!("ringcast-floor: cannot bind {addr}: {e}");
            std::process::exit(1)
        }));
    }
    let stats: Vec<Arc<Stats>> = (0..o.workers).map(|_| Arc::default()).collect();
    for (i, listener) in listeners.into_iter().enumerate() {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let p = pending.clone();
        std::thread::Builder::new()
            .name(format!("floor-accept-{i}"))
            .spawn(move || accept_loop(listener, p))
            .expect("spawn accept thread");
        let s = stats[i].clone();
        std::thread::Builder::new()
            .name(format!("floor-tick-{i}"))
            .spawn(move || tick_loop(i % cores, o.interval_ms, pending, s))
            .expect("spawn tick thread");
    }
    eprintln!(
        "ringcast-floor {}: {} workers, interval {} ms, fd limit {fd_limit}, listening on http://{addr}",
        env!("CARGO_PKG_VERSION"),
        o.workers,
        o.interval_ms
    );

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).expect("register signal");
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sum = |f: fn(&Stats) -> &AtomicU64| -> u64 {
        stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    eprintln!(
        "ringcast-floor: streams {} frames {} bytes {} skips {} drops {} ticks_missed {}",
        sum(|s| &s.streams),
        sum(|s| &s.frames),
        sum(|s| &s.bytes),
        sum(|s| &s.skips),
        sum(|s| &s.drops),
        sum(|s| &s.ticks_missed)
    );
    let _ = std::io::stderr().flush();
    std::process::exit(0)
}
