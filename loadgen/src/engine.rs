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
//!
//! Publish mode adds, per core, a slot per connection (its exactness `Tally`, and its
//! socket while a stream is open), a task that closes streams on the `--reconnect-every`
//! schedule (connection k at `ramp_end + (n + (k+1)/N) x every`, so reconnections are
//! spread evenly), and after the hold a drain: the core waits until the publishers are
//! done and every live connection has the newest id of its channel, or `drain` runs out.
//!
//! A reconnect storm (`--storm-at`) also uses the slots: at the storm instant a task on each
//! core shuts down every open stream of the core in one pass (every core sleeps until the same
//! instant), marking each slot with its drop time; the connection reopens at once (or at
//! `storm + k / --storm-rate`), its response head and its first event after that are timed
//! from the drop (`storm_reconnect`, `storm_recovery`), and the core keeps the latest of
//! each moment after the storm instant (`StormSpan`) for the "all streams back" figure.

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

use crate::channels::{Channels, Tally};
use crate::cli::Driver;
use crate::conn;
use crate::http::Target;
use crate::metrics::{new_histogram, Counters, Recorder};

/// When the reconnect storm comes and how fast the dropped streams reopen.
#[derive(Debug, Clone, Copy)]
pub struct StormPlan {
    pub at: Instant,
    /// Reopenings per second over all cores (connection k at `at + k / rate`); None: at once.
    pub rate: Option<f64>,
}

impl StormPlan {
    /// When connection `k`, dropped by the storm, may reopen.
    pub fn reopen_of(&self, k: usize) -> Instant {
        match self.rate {
            Some(rate) => self.at + Duration::from_secs_f64(k as f64 / rate),
            None => self.at,
        }
    }

    /// Microseconds from the storm instant to `t` (0 before it).
    pub fn after(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.at).as_micros()).unwrap_or(u64::MAX)
    }
}

/// The storm instant for a nominal one: the first midpoint between two ticks at or after it,
/// ticks falling on wall-clock multiples of the interval. Every run then drops its streams
/// at the same phase of the tick cycle (half an interval after a tick, its fan-out done), so
/// the recovery times of different runs and servers compare. `wall_now_us` is the wall clock
/// at `now`.
pub fn align_storm(nominal: Instant, now: Instant, wall_now_us: u64, interval_us: u64) -> Instant {
    let interval_us = interval_us.max(1);
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let wall = match nominal.checked_duration_since(now) {
        Some(ahead) => wall_now_us.saturating_add(us(ahead)),
        None => wall_now_us.saturating_sub(us(now - nominal)),
    };
    let phase = wall % interval_us;
    let mid = interval_us / 2;
    let shift = (mid + interval_us - phase) % interval_us;
    nominal + Duration::from_micros(shift)
}

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
    /// Publish mode: connection k subscribes to channel `(k / U) mod K` of these (U URLs).
    pub channels: Option<Arc<Channels>>,
    /// Publish mode: take the publish→receive latency from the data, not the id.
    pub timestamp_in_data: bool,
    /// Close and reopen every stream this often during the hold.
    pub reconnect_every: Option<Duration>,
    /// Publish mode: after the hold, the longest wait for the last events.
    pub drain: Duration,
    /// The reconnect storm, when one is planned (inside the hold).
    pub storm: Option<StormPlan>,
}

/// How long a core waits for its connections to wind down after the end.
pub const GRACE: Duration = Duration::from_secs(2);
/// How often a core looks for an early stop request.
pub const STOP_POLL: Duration = Duration::from_millis(100);
/// How often a core publishes its live snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// How often a draining core checks whether its connections have every event.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);

impl Plan {
    /// An open stream that received nothing for this long when the run ended is stalled:
    /// two tick intervals plus a second of slack for a loaded machine.
    pub fn stall_after(&self) -> Duration {
        Duration::from_micros(self.interval_us.saturating_mul(2)) + Duration::from_secs(1)
    }

    /// When the cores stop: the end of the hold, plus the drain in publish mode.
    pub fn hard_end(&self) -> Instant {
        self.end + self.drain
    }

    /// Whether connections keep a slot (publish mode or scheduled reconnections).
    pub fn uses_slots(&self) -> bool {
        self.channels.is_some() || self.reconnect_every.is_some() || self.storm.is_some()
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
    /// The tick delivery histogram, or in publish mode the publish_delivery one.
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

    pub fn stop_requested(&self) -> bool {
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
    /// Publish mode: every connection's accounting, for the final count.
    pub tallies: Vec<Tally>,
}

/// A connection's entry in its core's slot table (publish mode, scheduled reconnections).
#[derive(Debug, Default)]
pub struct Slot {
    pub tally: Tally,
    /// The stream's socket while one is open.
    pub fd: Option<RawFd>,
    /// The reconnection schedule closed the stream: reopen at once.
    pub reconnect_requested: bool,
    /// The connection's task runs.
    pub alive: bool,
    /// The storm closed the stream: reopen at once (or at the storm rate's turn).
    pub storm_reopen: bool,
    /// Where the stream is in its storm recovery.
    pub storm: StormState,
}

/// A connection's way back from the reconnect storm.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum StormState {
    /// Not dropped by the storm, or back.
    #[default]
    Untouched,
    /// Dropped at this instant; no new response head yet.
    Dropped(Instant),
    /// Dropped at this instant; the new stream is open, no event on it yet.
    Reopened(Instant),
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
    /// One per connection of this core (k = core index + j x threads), when the plan uses
    /// slots; empty otherwise.
    pub slots: RefCell<Vec<Slot>>,
}

impl Core {
    /// Connection k's slot index, when slots are in use.
    pub fn slot_of(&self, k: usize) -> Option<usize> {
        (!self.slots.borrow().is_empty()).then(|| k / self.plan.threads)
    }
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
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return CoreResult {
                            recorder: Recorder::default(),
                            driver: "none",
                            server_banner: None,
                            unfinished: 0,
                            tallies: Vec::new(),
                        };
                    }
                };
                // The fixed allocations come before the ready signal, so the baseline
                // sample that follows it holds them.
                let recorder = Recorder::default();
                let slots = slots_for(core, &plan);
                let _ = ready.send(Ok(()));
                rt.block_on(run_core(core, plan, live, recorder, slots))
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

/// The slot table of core `index`: one slot per connection it owns, when the plan uses them.
fn slots_for(index: usize, plan: &Plan) -> Vec<Slot> {
    if !plan.uses_slots() {
        return Vec::new();
    }
    let count = plan.channels.as_ref().map_or(1, |c| c.len().max(1));
    let urls = plan.targets.len().max(1);
    (index..plan.connections)
        .step_by(plan.threads)
        .map(|k| Slot {
            // Connection k starts on URL k mod U: (k / U) mod K gives every URL subscribers
            // of every channel (k mod K would give a URL only every U-th channel when U and
            // K share a factor).
            tally: Tally::new((k / urls) % count),
            ..Slot::default()
        })
        .collect()
}

async fn run_core(
    index: usize,
    plan: Arc<Plan>,
    live: Arc<Live>,
    recorder: Recorder,
    slots: Vec<Slot>,
) -> CoreResult {
    let core = Rc::new(Core {
        plan: plan.clone(),
        rec: RefCell::new(recorder),
        sockets: RefCell::new(Slab::new()),
        stopping: Cell::new(false),
        stopped_at: Cell::new(plan.end),
        tasks: Cell::new(0),
        server_banner: RefCell::new(None),
        slots: RefCell::new(slots),
    });
    if let Some(every) = plan.reconnect_every {
        monoio::spawn(reconnect_on_schedule(core.clone(), index, every));
    }
    if let Some(storm) = plan.storm {
        monoio::spawn(storm_at(core.clone(), storm));
    }
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
    if let Some(channels) = &plan.channels {
        // The publishers stopped at the end of the hold: give the last events time to arrive.
        let drain_end = plan.hard_end();
        while !live.stop_requested() {
            if channels.is_done() && caught_up(&core, channels) {
                break;
            }
            let now = Instant::now();
            if now >= drain_end {
                break;
            }
            sleep_until((now + DRAIN_POLL).min(drain_end)).await;
        }
    }
    core.stopped_at.set(Instant::now().min(plan.hard_end()));
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
    let tallies = core
        .slots
        .borrow()
        .iter()
        .map(|s| s.tally.clone())
        .collect();
    CoreResult {
        recorder,
        driver: if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "uring"
        },
        server_banner,
        unfinished: core.tasks.get(),
        tallies,
    }
}

/// Whether every live connection of the core has the newest id of its channel.
fn caught_up(core: &Core, channels: &Channels) -> bool {
    let newest = channels.newest();
    core.slots.borrow().iter().all(|s| {
        !s.alive
            || s.tally
                .caught_up(newest.get(s.tally.channel as usize).copied().flatten())
    })
}

/// `--reconnect-every`: shuts down each open stream of the core on its schedule (the
/// connection then reopens at once with Last-Event-ID). Connection k's n-th turn comes at
/// `ramp_end + (n + (k + 1) / N) x every`; a stream not open at its turn skips it.
async fn reconnect_on_schedule(core: Rc<Core>, index: usize, every: Duration) {
    let plan = core.plan.clone();
    let n = plan.connections as f64;
    for cycle in 0u32.. {
        let Some(base) = every.checked_mul(cycle) else {
            return;
        };
        for (j, k) in (index..plan.connections).step_by(plan.threads).enumerate() {
            let offset = every.mul_f64((k + 1) as f64 / n);
            let Some(due) = plan.ramp_end.checked_add(base + offset) else {
                return;
            };
            if due >= plan.end {
                return;
            }
            sleep_until(due).await;
            if core.stopping.get() {
                return;
            }
            let mut slots = core.slots.borrow_mut();
            let slot = &mut slots[j];
            if let Some(fd) = slot.fd {
                slot.reconnect_requested = true;
                // SAFETY: the fd belongs to the connection's open stream; the slot forgets
                // it before the stream is dropped.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
    }
}

/// `--storm-at`: at the storm instant, shuts down every open stream of the core in one pass
/// (each connection then reopens with Last-Event-ID, see `conn::run`). Connections whose
/// stream is not open then (connecting, or waiting to reconnect) are counted, not dropped.
async fn storm_at(core: Rc<Core>, storm: StormPlan) {
    sleep_until(storm.at).await;
    if core.stopping.get() {
        return;
    }
    let mut slots = core.slots.borrow_mut();
    let mut rec = core.rec.borrow_mut();
    let mut last = None;
    for slot in slots.iter_mut().filter(|s| s.alive) {
        let Some(fd) = slot.fd else {
            rec.counters.storm_not_open += 1;
            continue;
        };
        let now = Instant::now();
        slot.storm = StormState::Dropped(now);
        slot.storm_reopen = true;
        // SAFETY: the fd belongs to the connection's open stream; the slot forgets it before
        // the stream is dropped.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        rec.counters.storm_dropped += 1;
        last = Some(now);
    }
    if let Some(last) = last {
        rec.storm.last_drop_us = rec.storm.last_drop_us.max(Some(storm.after(last)));
    }
}

fn publish(live: &Live, index: usize, core: &Core) {
    let rec = core.rec.borrow();
    live.publish(
        index,
        Snapshot {
            counters: rec.counters.clone(),
            delivery: if core.plan.channels.is_some() {
                rec.histograms.publish_delivery.clone()
            } else {
                rec.histograms.delivery.clone()
            },
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_falls_midway_between_two_ticks() {
        let now = Instant::now();
        let interval = 2_000_000;
        // wall clock 10.3 s at `now`; nominal storm 1 s later (11.3 s): next midpoint is 13 s
        let at = align_storm(now + Duration::from_secs(1), now, 10_300_000, interval);
        assert_eq!(at - now, Duration::from_micros(2_700_000));
        // already on a midpoint: not moved
        let at = align_storm(now + Duration::from_millis(500), now, 10_500_000, interval);
        assert_eq!(at - now, Duration::from_millis(500));
        // just after a midpoint: almost a whole interval later
        let at = align_storm(now, now, 11_000_001, interval);
        assert_eq!(at - now, Duration::from_micros(1_999_999));
        // a nominal instant in the past: wall clock 12.5 s at `now`, nominal at 12 s (a
        // tick): the midpoint after it is 13 s
        let at = align_storm(now - Duration::from_millis(500), now, 12_500_000, interval);
        assert_eq!(at - now, Duration::from_millis(500));
    }

    #[test]
    fn storm_rate_spreads_the_reopenings() {
        let at = Instant::now();
        let all_at_once = StormPlan { at, rate: None };
        assert_eq!(all_at_once.reopen_of(19_999), at);
        let paced = StormPlan {
            at,
            rate: Some(1000.0),
        };
        assert_eq!(paced.reopen_of(0), at);
        assert_eq!(paced.reopen_of(500), at + Duration::from_millis(500));
        assert_eq!(paced.after(at + Duration::from_millis(3)), 3_000);
        assert_eq!(paced.after(at - Duration::from_millis(3)), 0);
    }
}
