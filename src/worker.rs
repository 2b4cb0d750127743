//! One worker: a thread pinned to a core, running its own monoio runtime, accepting on its own
//! SO_REUSEPORT listener and walking its own streams. Workers share nothing on the hot path but
//! the stream cap (touched when a stream opens or closes, never per tick).
//!
//! The driver is chosen here, per worker, because a ring can fail to build on one thread even
//! after the probe passed (monoio's FusionDriver only falls back when its probe fails).

use std::fmt;
use std::io;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::{Config, DriverChoice};
use crate::conn::{self, Core};
use crate::engine::Engine;
use crate::hub::{Hub, Inbox};
use crate::metrics::WorkerStats;
use crate::ring_flags::{self, Flags};
use crate::streams::{StreamCap, Streams, Walker};
use crate::subs::Subs;

type Runtime = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// The io driver a worker actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// What a worker reports once it is serving.
#[derive(Clone, Debug)]
pub struct Started {
    pub id: usize,
    pub driver: Driver,
    pub core: Option<usize>,
    /// Why `--driver auto` fell back to epoll, if it did.
    pub fallback: Option<String>,
    /// The ring's setup flags (io_uring only), and the sets the kernel refused before it.
    pub uring_flags: Option<Flags>,
    pub flags_refused: Vec<String>,
}

/// Everything a worker thread needs.
pub struct Spec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub listener: std::net::TcpListener,
    pub cfg: Arc<Config>,
    pub cap: Arc<StreamCap>,
    pub stats: Arc<WorkerStats>,
    pub hub: Arc<Hub>,
    pub engine: Option<Arc<Engine>>,
    pub inbox: Inbox,
    pub started: mpsc::Sender<Result<Started, String>>,
    pub stop: oneshot::Receiver<()>,
}

/// Why io_uring cannot be used here, if it cannot.
pub fn uring_unavailable() -> Option<String> {
    if let Err(e) = io_uring::IoUring::new(8) {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => {
                " (blocked: seccomp, e.g. Docker >= 25, or kernel.io_uring_disabled)"
            }
            Some(libc::ENOSYS) => " (not in this kernel, or blocked by seccomp, e.g. podman)",
            _ => "",
        };
        let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|v| format!("; kernel.io_uring_disabled={}", v.trim()))
            .unwrap_or_default();
        return Some(format!("io_uring_setup failed: {e}{why}{sysctl}"));
    }
    if !monoio::utils::detect_uring() {
        return Some(
            "the kernel lacks io_uring opcodes monoio needs (kernel >= 5.7 required)".into(),
        );
    }
    None
}

fn build_uring_with(entries: u32, flags: Flags) -> io::Result<Runtime> {
    RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(flags.builder())
        .with_entries(entries)
        .enable_timer()
        .build()
        .map(Into::into)
}

/// A ring with the first flag set of `choice` the kernel accepts: (runtime, flags, the sets
/// refused with EINVAL before it). Any other error ends the chain.
fn build_uring(
    entries: u32,
    choice: ring_flags::Choice,
) -> Result<(Runtime, Flags, Vec<String>), io::Error> {
    let mut refused = Vec::new();
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for &flags in Flags::chain(choice) {
        match build_uring_with(entries, flags) {
            Ok(rt) => return Ok((rt, flags, refused)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                refused.push(format!("{flags}: {e}"));
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// What a built runtime is.
type Built = (
    Runtime,
    Driver,
    Option<String>,
    Option<(Flags, Vec<String>)>,
);

fn build_epoll() -> io::Result<Runtime> {
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .map(Into::into)
}

/// Builds the runtime `choice` asks for: (runtime, driver, why auto fell back, ring flags).
fn build_runtime(
    choice: DriverChoice,
    entries: u32,
    flags: ring_flags::Choice,
) -> Result<Built, String> {
    let epoll = |fallback: Option<String>| {
        build_epoll()
            .map(|rt| (rt, Driver::Epoll, fallback, None))
            .map_err(|e| format!("cannot build the epoll runtime: {e}"))
    };
    match choice {
        DriverChoice::Epoll => epoll(None),
        DriverChoice::Uring => {
            if let Some(why) = uring_unavailable() {
                return Err(format!("--driver uring: io_uring is unavailable: {why}"));
            }
            build_uring(entries, flags)
                .map(|(rt, f, refused)| (rt, Driver::IoUring, None, Some((f, refused))))
                .map_err(|e| {
                    format!("--driver uring: cannot build a ring of {entries} entries (--uring-flags {flags:?}): {e}")
                })
        }
        DriverChoice::Auto => match uring_unavailable() {
            Some(why) => epoll(Some(why)),
            None => match build_uring(entries, flags) {
                Ok((rt, f, refused)) => Ok((rt, Driver::IoUring, None, Some((f, refused)))),
                Err(e) => epoll(Some(format!(
                    "cannot build a ring of {entries} entries: {e}"
                ))),
            },
        },
    }
}

/// Runs a worker on the current thread until told to stop.
pub fn run(spec: Spec) {
    let Spec {
        id,
        core,
        listener,
        cfg,
        cap,
        stats,
        hub,
        engine,
        inbox,
        started,
        stop,
    } = spec;
    let pinned = core
        .filter(|c| core_affinity::set_for_current(*c))
        .map(|c| c.id);
    if core.is_some() && pinned.is_none() {
        tracing::warn!(worker = id, "could not pin to a core; running unpinned");
    }
    let (mut rt, driver, fallback, flags) =
        match build_runtime(cfg.driver, cfg.ring_entries, cfg.uring_flags) {
            Ok(r) => r,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
    rt.block_on(async move {
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = started.send(Err(format!(
                    "worker {id}: cannot register the listener: {e}"
                )));
                return;
            }
        };
        let running = if monoio::utils::is_legacy() {
            Driver::Epoll
        } else {
            Driver::IoUring
        };
        debug_assert_eq!(running, driver);
        let (uring_flags, flags_refused) = match flags {
            Some((f, refused)) => (Some(f), refused),
            None => (None, Vec::new()),
        };
        let _ = started.send(Ok(Started {
            id,
            driver: running,
            core: pinned,
            fallback,
            uring_flags,
            flags_refused,
        }));

        let streams = Rc::new(Streams::new(stats.clone()));
        let (engine, replays) = match engine {
            Some(e) => {
                let (tx, rx) = futures::channel::mpsc::unbounded();
                (Some((e, tx)), Some(rx))
            }
            None => (None, None),
        };
        let subs = Rc::new(Subs::new(
            hub,
            engine,
            stats.clone(),
            cfg.max_queued_bytes,
            cfg.max_skips,
        ));
        let sweeps = cap.register_sweeper();
        let core = Rc::new(Core::new(
            cfg.clone(),
            streams.clone(),
            subs.clone(),
            cap,
            stats.clone(),
            sweeps.id,
        ));
        let walker = Walker::new(streams.clone(), subs.clone(), stats.clone(), &cfg);
        // Several accepts in flight on io_uring, so a burst of connections is taken in one
        // ring round trip instead of one round trip each; one on epoll, whose readiness
        // tracking wakes a single waiter per socket.
        let depth = match running {
            Driver::IoUring => ACCEPTS_IN_FLIGHT,
            Driver::Epoll => 1,
        };
        let listener = Rc::new(listener);
        let warn = Rc::new(AcceptWarn::default());
        let accepting = std::pin::pin!(futures::future::join_all((0..depth).map(|_| accept_loop(
            id,
            listener.clone(),
            core.clone(),
            warn.clone()
        ))));
        let walking = std::pin::pin!(walker.run(inbox, replays, Some(sweeps)));
        let serving = select(accepting, walking);
        // Shutdown drops the accept loop, the listener and every in-flight write with it.
        if let Either::Right(_) = select(stop, serving).await {
            tracing::error!(worker = id, "worker stopped serving unexpectedly");
        }
        streams.close_all();
        subs.close_all();
    });
}

/// Accept operations each io_uring worker keeps in flight on its listener.
const ACCEPTS_IN_FLIGHT: usize = 4;

/// Rate limit of the accept-failure warning, shared by a worker's accept loops.
#[derive(Default)]
struct AcceptWarn {
    last: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

/// Accepts forever. Never wrapped in a timeout: monoio 0.2.4 can leak the fd of an accept that is
/// cancelled as it completes. Resource errors (EMFILE and friends) back off and retry, so a full
/// fd table degrades service instead of spinning.
async fn accept_loop(
    id: usize,
    listener: Rc<monoio::net::TcpListener>,
    core: Rc<Core>,
    warn: Rc<AcceptWarn>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                monoio::spawn(conn::serve(core.clone(), stream));
            }
            Err(e) => {
                core.stats.inc(&core.stats.accept_errors);
                let resource = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if warn
                    .last
                    .get()
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(
                        worker = id,
                        error = %e,
                        suppressed = warn.suppressed.get(),
                        streams = core.cap.open(),
                        "accept failed{}",
                        if resource { "; backing off (raise `ulimit -n` or lower --max-streams)" } else { "" }
                    );
                    warn.last.set(Some(std::time::Instant::now()));
                    warn.suppressed.set(0);
                } else {
                    warn.suppressed.set(warn.suppressed.get() + 1);
                }
                // A full fd table may be held by streams whose clients have gone (a reconnect
                // storm): free those and accept again at once.
                if resource && core.reclaim() > 0 {
                    continue;
                }
                let pause = match e.raw_os_error() {
                    _ if resource => 50,
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => 0,
                    _ => 5, // unknown: never spin on it
                };
                if pause > 0 {
                    monoio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }
}
