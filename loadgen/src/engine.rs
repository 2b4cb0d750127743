//! The connection engine: one OS thread per core, each running its own monoio runtime
//! (io_uring, or epoll as a fallback) that owns a share of the connections. Nothing is
//! shared between cores on the hot path: each core has its own recorder and its own slab
//! of open sockets; it publishes a copy of its counters and delivery histogram twice a
//! second for the status line and hands its recorder back when it ends.
//!
//! Time plan: connection k starts at `start + k / rate`; the hold runs from the ramp's
//! nominal end for `duration`; the first `warmup` of the hold is left out of the delivery
//! and gap histograms. At the end each core shuts its sockets down (which completes the
//! pending reads) and waits a bounded grace for its tasks.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use slab::Slab;

use crate::cli::Driver;
use crate::conn;
use crate::http::Target;
use crate::metrics::{new_histogram, Counters, Recorder};

/// Everything the cores need to know, fixed before they start.
#[derive(Debug)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    pub rate: f64,
    pub threads: usize,
    pub driver: Driver,
    pub ring_entries: u32,
    pub start: Instant,
    pub ramp_end: Instant,
    pub measure_from: Instant,
    pub end: Instant,
    pub interval_us: u64,
    pub retry_default: Duration,
    pub connect_timeout: Duration,
    pub read_buffer: usize,
}

/// How long a core waits for its connections to wind down after the end.
pub const GRACE: Duration = Duration::from_secs(2);
/// How often a core looks for an early stop request.
pub const STOP_POLL: Duration = Duration::from_millis(100);
/// How often a core publishes its live snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

impl Plan {
    /// An open stream that received nothing for this long when the run ended is stalled:
    /// two tick intervals plus a second of slack for a loaded machine.
    pub fn stall_after(&self) -> Duration {
        Duration::from_micros(self.interval_us.saturating_mul(2)) + Duration::from_secs(1)
    }

    /// When connection `k` is due to start.
    pub fn start_of(&self, k: usize) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// What a core shows while running.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub delivery: Histogram<u64>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counters: Counters::default(),
            delivery: new_histogram(),
        }
    }
}

/// The cores' live snapshots, one slot each.
#[derive(Debug)]
pub struct Live {
    slots: Vec<Mutex<Snapshot>>,
    /// Set to end the run before its planned end (Ctrl-C).
    stop: AtomicBool,
}

impl Live {
    pub fn new(cores: usize) -> Live {
        Live {
            slots: (0..cores)
                .map(|_| Mutex::new(Snapshot::default()))
                .collect(),
            stop: AtomicBool::new(false),
        }
    }

    pub fn total(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for slot in &self.slots {
            let s = slot.lock().unwrap_or_else(|e| e.into_inner());
            total.counters.add(&s.counters);
            total
                .delivery
                .add(&s.delivery)
                .expect("histograms share bounds");
        }
        total
    }

    /// Ends the run early: the cores stop within a tenth of a second.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn publish(&self, core: usize, snapshot: Snapshot) {
        *self.slots[core].lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

/// What a core hands back.
#[derive(Debug)]
pub struct CoreResult {
    pub recorder: Recorder,
    /// "uring" or "epoll".
    pub driver: &'static str,
    pub server_banner: Option<String>,
    /// Connection tasks still running when the grace ran out.
    pub unfinished: usize,
}

/// One core's state, shared by its tasks (single-threaded).
pub struct Core {
    pub plan: Arc<Plan>,
    pub rec: RefCell<Recorder>,
    /// Sockets of the core's open connections, to shut down at the end.
    pub sockets: RefCell<Slab<RawFd>>,
    pub stopping: Cell<bool>,
    /// When the core began stopping (the planned end, or earlier when interrupted).
    pub stopped_at: Cell<Instant>,
    pub tasks: Cell<usize>,
    pub server_banner: RefCell<Option<String>>,
}

type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

fn build_runtime(driver: Driver, entries: u32) -> Result<Runtime, String> {
    let uring = || {
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
            .map(Runtime::from)
    };
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(Runtime::from)
            .map_err(|e| format!("epoll runtime: {e}"))
    };
    match driver {
        Driver::Uring => uring().map_err(|e| format!("io_uring runtime: {e}")),
        Driver::Epoll => epoll(),
        // The fusion builder trusts detection even when building the ring then fails
        // (e.g. RLIMIT_MEMLOCK or a seccomp filter), so try the ring and fall back here.
        Driver::Auto if monoio::utils::detect_uring() => uring().or_else(|e| {
            say_fallback(&format!("building an io_uring runtime failed ({e})"));
            epoll()
        }),
        Driver::Auto => {
            say_fallback("the kernel does not offer io_uring");
            epoll()
        }
    }
}

/// Tells once per process why `--driver auto` ended up on epoll.
fn say_fallback(why: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("ringcast-loadgen: {why}; using epoll"));
}

/// Starts the cores; returns once every runtime is built (or the first failed to build).
pub fn start(plan: Arc<Plan>, live: Arc<Live>) -> Result<Vec<JoinHandle<CoreResult>>, String> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(plan.threads);
    for core in 0..plan.threads {
        let (plan, live, ready) = (plan.clone(), live.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-core-{core}"))
            .spawn(move || {
                let mut rt = match build_runtime(plan.driver, plan.ring_entries) {
                    Ok(rt) => {
                        let _ = ready.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return CoreResult {
                            recorder: Recorder::default(),
                            driver: "none",
                            server_banner: None,
                            unfinished: 0,
                        };
                    }
                };
                rt.block_on(run_core(core, plan, live))
            })
            .map_err(|e| format!("spawning core thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..plan.threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread died while starting".into()),
        }
    }
    Ok(handles)
}

async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
    }
}

async fn run_core(index: usize, plan: Arc<Plan>, live: Arc<Live>) -> CoreResult {
    let core = Rc::new(Core {
        plan: plan.clone(),
        rec: RefCell::new(Recorder::default()),
        sockets: RefCell::new(Slab::new()),
        stopping: Cell::new(false),
        stopped_at: Cell::new(plan.end),
        tasks: Cell::new(0),
        server_banner: RefCell::new(None),
    });
    {
        let (core, live) = (core.clone(), live.clone());
        monoio::spawn(async move {
            while !core.stopping.get() {
                monoio::time::sleep(PUBLISH_EVERY).await;
                publish(&live, index, &core);
            }
        });
    }

    // Ramp: this core owns connections index, index + threads, ...
    let mut k = index;
    while k < plan.connections {
        let now = Instant::now();
        if now >= plan.end || live.stop_requested() {
            break;
        }
        while k < plan.connections && plan.start_of(k) <= now {
            core.tasks.set(core.tasks.get() + 1);
            monoio::spawn(conn::run(core.clone(), k));
            k += plan.threads;
        }
        if k < plan.connections {
            let next = plan.start_of(k).min(plan.end).min(now + STOP_POLL);
            sleep_until(next).await;
        }
    }

    loop {
        let now = Instant::now();
        if now >= plan.end || live.stop_requested() {
            break;
        }
        sleep_until(plan.end.min(now + STOP_POLL)).await;
    }
    core.stopped_at.set(Instant::now().min(plan.end));
    core.stopping.set(true);
    for (_, &fd) in core.sockets.borrow().iter() {
        // SAFETY: the fd belongs to a live connection; it is unregistered before it closes.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let grace_end = Instant::now() + GRACE;
    while core.tasks.get() > 0 && Instant::now() < grace_end {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    publish(&live, index, &core);
    let recorder = core.rec.borrow().clone();
    let server_banner = core.server_banner.borrow().clone();
    CoreResult {
        recorder,
        driver: if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "uring"
        },
        server_banner,
        unfinished: core.tasks.get(),
    }
}

fn publish(live: &Live, index: usize, core: &Core) {
    let rec = core.rec.borrow();
    live.publish(
        index,
        Snapshot {
            counters: rec.counters.clone(),
            delivery: rec.histograms.delivery.clone(),
        },
    );
}
