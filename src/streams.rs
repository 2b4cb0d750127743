//! One core's SSE streams and the tick walk that writes to all of them.
//!
//! An idle stream is one slab slot: the socket and its fd. It has no task, no timer and no read
//! buffer. Once per tick the core's walker encodes the frame once and starts a write of that
//! shared `Bytes` on every stream, up to `--max-inflight` writes at a time, so io_uring submits
//! them in large batches while the memory of in-flight write futures stays bounded.
//!
//! While a write is in flight its socket lives inside the write future and the slot holds only the
//! fd and a skip count. A stream whose write is still pending when the next tick comes skips that
//! tick; after `--max-skips` consecutive skips the socket is shut down under the pending write
//! (which then fails with EPIPE) and the stream is removed. Should that write not come back by the
//! next tick, the walk removes the stream anyway, so a stuck write never holds a slot or a place
//! under the cap for longer than a tick (`stuck_writes_reaped` counts those). Any write error
//! removes the stream too, which is how a client that went away is noticed: the second write
//! after its FIN fails.
//!
//! The same loop serves the core's channel streams (`subs.rs`): it takes published events from
//! the core's inbox, queues them on their channels' members, and starts those writes in the same
//! bounded batches; it walks the heartbeat over them; and it collects every write's completion.
//! One task per core does all of this, so nothing here needs a lock.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use slab::Slab;

use crate::config::Config;
use crate::engine::ReplayDone;
use crate::event::{Event, HEARTBEAT};
use crate::hub::Inbox;
use crate::metrics::{CloseReason, WorkerStats};
use crate::net;
use crate::parked::Parked;
use crate::sse::{ClockStep, FrameEncoder, TickClock};
use crate::subs::Subs;

/// The stream count over all workers, checked against `--max-streams` when a stream opens; and
/// the way a core at the cap asks the others to sweep for streams whose clients have gone.
#[derive(Debug)]
pub struct StreamCap {
    open: AtomicUsize,
    max: usize,
    sweepers: std::sync::Mutex<Vec<(futures::channel::mpsc::UnboundedSender<()>, Arc<AtomicBool>)>>,
}

/// A core's end of the sweep requests other cores send it (see [`StreamCap::ask_others_to_sweep`]).
pub struct SweepRequests {
    pub id: usize,
    rx: futures::channel::mpsc::UnboundedReceiver<()>,
    pending: Arc<AtomicBool>,
}

impl StreamCap {
    pub fn new(max: usize) -> Self {
        StreamCap {
            open: AtomicUsize::new(0),
            max,
            sweepers: Default::default(),
        }
    }

    /// Registers a core that sweeps when asked.
    pub fn register_sweeper(&self) -> SweepRequests {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let pending = Arc::new(AtomicBool::new(false));
        let mut all = self.sweepers.lock().unwrap_or_else(|p| p.into_inner());
        all.push((tx, pending.clone()));
        SweepRequests {
            id: all.len() - 1,
            rx,
            pending,
        }
    }

    /// Asks every other core to sweep its streams for gone clients (once until it has): a core
    /// at the cap can only sweep its own, while the places may be held on another.
    pub fn ask_others_to_sweep(&self, me: usize) {
        let all = self.sweepers.lock().unwrap_or_else(|p| p.into_inner());
        for (id, (tx, pending)) in all.iter().enumerate() {
            if id != me && !pending.swap(true, Ordering::AcqRel) {
                let _ = tx.unbounded_send(());
            }
        }
    }

    /// Takes a place for a new stream, or `None` at the cap. The place is given back when the
    /// permit is dropped: with the stream's slot, or at once if the stream never opens.
    pub fn try_reserve(self: &Arc<Self>) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One stream's place under `--max-streams` (as mini-redis holds its connection semaphore's
/// permit): held by the stream's slot, released when dropped, so it can neither leak nor be
/// released twice.
#[derive(Debug)]
pub struct Permit(Arc<StreamCap>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a tick stream's socket is.
enum State {
    /// In the slot, ready for the next write.
    Idle(Parked),
    /// Inside a write future; `skips` ticks have come and gone since the write started.
    Writing { skips: u8 },
    /// Shut down under its parked write after `--max-skips` skips. Removed when the write
    /// returns, or by the next walk if it has not returned by then.
    Aborted,
}

struct Slot {
    state: State,
    /// The socket's fd, also while it is inside a write future. A write that comes back to a key
    /// whose slot has another fd belongs to a stream that was removed (its fd is still open, so
    /// no newer stream can have it).
    fd: RawFd,
    /// Its place under the cap, given back with the slot.
    _permit: Permit,
}
/// The streams of one core.
pub struct Streams {
    slab: RefCell<Slab<Slot>>,
    stats: Arc<WorkerStats>,
}

/// Which slab a write belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    Tick(usize),
    Channel(usize),
}

/// A finished write: the socket comes back to its slot (or is dropped) with the outcome.
pub struct Done {
    key: Key,
    stream: TcpStream,
    result: io::Result<usize>,
}

impl Streams {
    pub fn new(stats: Arc<WorkerStats>) -> Self {
        Streams {
            slab: RefCell::new(Slab::new()),
            stats,
        }
    }

    /// Adds an established stream with its place under the cap.
    pub fn insert(&self, stream: TcpStream, permit: Permit) -> usize {
        let fd = stream.as_raw_fd();
        let key = self.slab.borrow_mut().insert(Slot {
            state: State::Idle(Parked::new(stream)),
            fd,
            _permit: permit,
        });
        self.stats.stream_opened();
        key
    }

    /// Closes every stream (at shutdown). Writes still in flight are dropped by their owner.
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self.slab.borrow_mut().drain().collect();
        for _ in slots {
            self.stats.stream_closed(CloseReason::Shutdown);
        }
    }

    fn remove(&self, slab: &mut Slab<Slot>, key: usize, why: CloseReason) {
        slab.remove(key); // and its permit with it
        self.stats.stream_closed(why);
    }

    /// Removes every idle stream whose client has gone (a FIN or reset is waiting on its socket),
    /// without waiting for the writes that would notice it; returns how many. Used when the cap or
    /// the fd limit is reached, e.g. when every client reconnects at once.
    pub fn reap_gone(&self) -> usize {
        let mut slab = self.slab.borrow_mut();
        let gone: Vec<usize> = slab
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Idle(_)) && net::peer_gone(s.fd))
            .map(|(k, _)| k)
            .collect();
        for &key in &gone {
            self.remove(&mut slab, key, CloseReason::ClientGone);
        }
        gone.len()
    }

    /// Removes an aborted stream whose write has not returned: its slot and its place under the
    /// cap are freed now, counted as closed for skips and in `stuck_writes_reaped`. The socket
    /// lives in the write future, already shut down; it is closed when the write returns
    /// (`complete` then finds the slot gone, or holding another fd) or when the core stops.
    fn reap(&self, slab: &mut Slab<Slot>, key: usize) {
        self.stats.inc(&self.stats.stuck_writes_reaped);
        self.remove(slab, key, CloseReason::SkipsExceeded);
    }

    /// Puts a socket back after its write, or removes the stream if the write failed or the
    /// stream was aborted meanwhile.
    fn complete(&self, key: usize, stream: TcpStream, result: io::Result<usize>) {
        let mut slab = self.slab.borrow_mut();
        let Some(slot) = slab.get_mut(key).filter(|s| s.fd == stream.as_raw_fd()) else {
            // Closed at shutdown, or aborted and removed by a walk while the write was parked
            // (the key may hold a newer stream by now): dropping the socket closes it.
            return;
        };
        match (&slot.state, result) {
            (State::Writing { .. }, Ok(n)) => {
                slot.state = State::Idle(Parked::new(stream));
                self.stats.inc(&self.stats.frames_sent);
                self.stats.add(&self.stats.bytes_sent, n as u64);
            }
            (State::Writing { .. }, Err(e)) => {
                let why = CloseReason::from_write_error(&e);
                tracing::debug!(key, error = %e, ?why, "stream closed");
                self.remove(&mut slab, key, why);
            }
            (State::Aborted, _) => self.remove(&mut slab, key, CloseReason::SkipsExceeded),
            (State::Idle(_), _) => {
                // A write came back for a socket that is in its slot: cannot happen (a stream has
                // at most one write in flight). Keep the slot; drop the stray socket.
                debug_assert!(false, "a write returned for an idle tick stream");
            }
        }
        // `stream` (if not put back) is dropped after the borrow: that closes it.
    }
}

/// Removes this core's idle streams (tick and channel) whose clients have gone, counts them and
/// says so; returns how many. See `conn::Core::reclaim` for when.
pub fn sweep_gone(streams: &Streams, subs: &Subs, stats: &WorkerStats, why: &str) -> usize {
    let started = Instant::now();
    let n = streams.reap_gone() + subs.reap_gone();
    stats.inc(&stats.reclaim_sweeps);
    stats.add(&stats.streams_reclaimed, n as u64);
    if n > 0 {
        tracing::info!(
            streams = n,
            took_us = started.elapsed().as_micros() as u64,
            "{why}: removed streams whose clients had gone"
        );
    }
    n
}

/// Writes one frame to one stream; the future owns the socket until the write ends.
async fn write_frame(key: Key, mut stream: TcpStream, frame: Bytes) -> Done {
    let (result, _) = stream.write_all(frame).await;
    Done {
        key,
        stream,
        result,
    }
}

/// Most ready channel streams a hand-out writes with direct sends rather than ring writes
/// (`Subs::write_direct`). A ring write pays for its future, submission and completion, which
/// a batch of hundreds amortises and a handful does not; large hand-outs (a busy channel, a
/// heartbeat walk) keep the ring's bounded batches.
const DIRECT_MAX: usize = 64;

/// What woke the core loop between ticks.
enum Wake {
    Tick,
    Heartbeat,
    Event(Arc<Event>),
    InboxClosed,
    Replayed(ReplayDone),
    Sweep,
    Ready,
    Done(Done),
}

/// The per-core loop: the tick walk, published events, heartbeats, completions.
pub struct Walker {
    streams: Rc<Streams>,
    subs: Rc<Subs>,
    stats: Arc<WorkerStats>,
    clock: TickClock,
    encoder: FrameEncoder,
    heartbeat: Option<Duration>,
    max_inflight: usize,
    max_skips: u8,
    /// Return freed heap pages to the OS every this many walks (0: never).
    collect_every: u32,
    walks: std::cell::Cell<u32>,
    /// How long a full batch may wait for a completion before the walk widens it.
    stall: Duration,
    /// `--publish-batch`: how long the inbox rests after a hand-out.
    batch: Duration,
}

impl Walker {
    pub fn new(
        streams: Rc<Streams>,
        subs: Rc<Subs>,
        stats: Arc<WorkerStats>,
        cfg: &Config,
    ) -> Self {
        let clock = TickClock::new(cfg.interval);
        Walker {
            streams,
            subs,
            stats,
            clock,
            encoder: FrameEncoder::new(&cfg.event, &cfg.data),
            heartbeat: cfg.heartbeat,
            max_inflight: cfg.max_inflight.max(1),
            max_skips: cfg.max_skips,
            collect_every: cfg.collect_every,
            walks: std::cell::Cell::new(0),
            stall: (clock.interval() / 8)
                .clamp(Duration::from_millis(1), Duration::from_millis(20)),
            batch: cfg.publish_batch,
        }
    }

    fn complete(&self, done: Done) {
        match done.key {
            Key::Tick(k) => self.streams.complete(k, done.stream, done.result),
            Key::Channel(k) => self.subs.complete(k, done.stream, done.result),
        }
    }

    /// Runs the core forever: between ticks, hand published events and heartbeats to the
    /// channel streams and collect completions; at each wall-clock boundary, walk the ticks.
    /// Never busy-yields (monoio 0.2.4 fires timers only when idle).
    pub async fn run(
        &self,
        mut inbox: Inbox,
        mut replays: Option<futures::channel::mpsc::UnboundedReceiver<ReplayDone>>,
        mut sweeps: Option<SweepRequests>,
    ) {
        // One concrete future type (no box per write): the write of `write_frame`.
        let mut inflight = FuturesUnordered::new();
        let make = write_frame;
        let mut last_tick: Option<(u64, Instant)> = None;
        let heartbeat_frame = Bytes::from_static(HEARTBEAT);
        let mut heartbeat = self.heartbeat.map(|d| Box::pin(monoio::time::sleep(d)));
        let mut inbox_open = true;
        // After a hand-out the inbox rests for `--publish-batch`: it is not polled, so the hub's
        // sends do not wake this core (the waker was used up by the wake that started the
        // hand-out), and what arrives meanwhile is taken in one go when the rest ends. An event
        // after a quiet spell still wakes the core at once.
        let mut rest = std::pin::pin!(monoio::time::sleep(Duration::ZERO));
        let mut resting = false;
        loop {
            let (mut tick, wait) = self.clock.next_after(SystemTime::now());
            if let Some((last, at)) = last_tick {
                tick = self.check_clock(tick, last, at);
            }
            last_tick = Some((tick, Instant::now()));
            let mut sleep = std::pin::pin!(monoio::time::sleep(wait));
            loop {
                let wake = std::future::poll_fn(|cx| {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Tick);
                    }
                    if let Some(hb) = heartbeat.as_mut() {
                        if hb.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Heartbeat);
                        }
                    }
                    if resting && rest.as_mut().poll(cx).is_ready() {
                        resting = false;
                    }
                    if inbox_open && !resting {
                        match inbox.events.poll_next_unpin(cx) {
                            Poll::Ready(Some(ev)) => return Poll::Ready(Wake::Event(ev)),
                            Poll::Ready(None) => return Poll::Ready(Wake::InboxClosed),
                            Poll::Pending => {}
                        }
                    }
                    if let Some(r) = replays.as_mut() {
                        if let Poll::Ready(Some(done)) = r.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Replayed(done));
                        }
                    }
                    if let Some(sw) = sweeps.as_mut() {
                        if let Poll::Ready(Some(())) = sw.rx.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Sweep);
                        }
                    }
                    if self.subs.notify.poll_notified(cx).is_ready() {
                        return Poll::Ready(Wake::Ready);
                    }
                    match inflight.poll_next_unpin(cx) {
                        Poll::Ready(Some(done)) => Poll::Ready(Wake::Done(done)),
                        _ => Poll::Pending,
                    }
                })
                .await;
                match wake {
                    Wake::Tick => break,
                    Wake::Heartbeat => {
                        if let (Some(hb), Some(every)) = (heartbeat.as_mut(), self.heartbeat) {
                            hb.set(monoio::time::sleep(every));
                        }
                        self.subs.heartbeat(&heartbeat_frame);
                    }
                    Wake::Event(ev) => {
                        self.stats.inc(&self.stats.event_handouts);
                        inbox.took();
                        self.subs.deliver(&ev);
                        // Take what else has arrived before starting writes: one batch of
                        // writes for several events (bounded, so completions are not starved).
                        for _ in 0..1024 {
                            let Ok(ev) = inbox.events.try_recv() else {
                                break;
                            };
                            inbox.took();
                            self.subs.deliver(&ev);
                        }
                        if !self.batch.is_zero() {
                            rest.as_mut()
                                .reset(monoio::time::Instant::now() + self.batch);
                            resting = true;
                        }
                    }
                    Wake::InboxClosed => inbox_open = false,
                    Wake::Replayed(done) => self.subs.finish_replay(done),
                    Wake::Sweep => {
                        if let Some(sw) = sweeps.as_ref() {
                            sw.pending.store(false, Ordering::Release);
                        }
                        sweep_gone(
                            &self.streams,
                            &self.subs,
                            &self.stats,
                            "another core is at the stream cap",
                        );
                    }
                    Wake::Ready => {}
                    Wake::Done(done) => self.complete(done),
                }
                if self.subs.has_ready() {
                    self.pump(&mut inflight, make).await;
                }
            }
            let late = SystemTime::now()
                .duration_since(self.clock.due(tick))
                .unwrap_or_default();
            self.stats.lateness.record_us(late.as_micros() as u64);
            self.stats.inc(&self.stats.ticks);
            self.walk(self.encoder.encode(tick), &mut inflight, make)
                .await;
            if self.subs.has_ready() {
                self.pump(&mut inflight, make).await;
            }
        }
    }

    /// The tick due now, given the last one walked (at monotonic time `at`): never at or below
    /// the last (a wall clock that stepped back must not re-send ids), and ticks skipped over
    /// are counted and logged with their cause.
    fn check_clock(&self, tick: u64, last: u64, at: Instant) -> u64 {
        let (tick, step) = self.clock.follow(tick, last, at.elapsed());
        match step {
            ClockStep::OnTime => {}
            ClockStep::SteppedBack => tracing::warn!(
                tick,
                last,
                "the wall clock stepped back; tick ids continue from the last one sent"
            ),
            ClockStep::SteppedForward { missed, step_ms } => {
                self.stats.add(&self.stats.ticks_missed, missed);
                tracing::warn!(
                    from = tick - missed,
                    to = tick - 1,
                    step_ms,
                    "ticks missed: the wall clock stepped forward"
                );
            }
            ClockStep::Busy { missed, behind_ms } => {
                self.stats.add(&self.stats.ticks_missed, missed);
                tracing::warn!(
                    from = tick - missed,
                    to = tick - 1,
                    behind_ms,
                    "ticks missed: this core was busy or descheduled for over an interval"
                );
            }
        }
        tick
    }

    /// Starts the writes of every channel stream that has a frame waiting, at most
    /// `max_inflight` more than are in flight now, waiting for completions in between. A short
    /// hand-out (at most [`DIRECT_MAX`] streams ready) is first written with direct sends.
    async fn pump<F, M>(&self, inflight: &mut FuturesUnordered<F>, make: M)
    where
        F: Future<Output = Done>,
        M: Fn(Key, TcpStream, Bytes) -> F,
    {
        self.subs.write_direct(DIRECT_MAX);
        let mut limit = inflight.len() + self.max_inflight;
        loop {
            while inflight.len() < limit {
                match self.subs.next_write() {
                    Some((key, stream, frame)) => {
                        inflight.push(make(Key::Channel(key), stream, frame))
                    }
                    None => return,
                }
            }
            let stall = std::pin::pin!(monoio::time::sleep(self.stall));
            match select(inflight.next(), stall).await {
                Either::Left((Some(done), _)) => self.complete(done),
                Either::Left((None, _)) => {}
                Either::Right(_) => limit += self.max_inflight,
            }
        }
    }

    /// Starts a write of `frame` on every stream of this core (at most `max_inflight` at once)
    /// and returns when the last one has been started. Completions are collected here and by
    /// [`Walker::run`] between ticks.
    async fn walk<F, M>(&self, frame: Bytes, inflight: &mut FuturesUnordered<F>, make: M)
    where
        F: Future<Output = Done>,
        M: Fn(Key, TcpStream, Bytes) -> F,
    {
        let started = Instant::now();
        // Writes that returned while the core was busy (the tick's timer can win over their
        // wake-ups): put their sockets back first, so that they are written to rather than counted
        // as skips, and an aborted stream whose write did return is not taken for a stuck one.
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(done)) = inflight.poll_next_unpin(cx) {
                self.complete(done);
            }
            Poll::Ready(())
        })
        .await;
        let mut cursor = 0;
        // Writes parked from earlier walks (clients that stopped reading) do not count against
        // this walk's batch.
        let mut limit = inflight.len() + self.max_inflight;
        let mut reaped = 0;
        loop {
            let end = {
                let mut slab = self.streams.slab.borrow_mut();
                let end = slab.capacity();
                while cursor < end && inflight.len() < limit {
                    let mut failed = None;
                    if let Some(slot) = slab.get_mut(cursor) {
                        match std::mem::replace(&mut slot.state, State::Writing { skips: 0 }) {
                            State::Idle(parked) => match parked.take() {
                                Ok(stream) => {
                                    inflight.push(make(Key::Tick(cursor), stream, frame.clone()))
                                }
                                Err(e) => failed = Some(CloseReason::from_write_error(&e)),
                            },
                            State::Writing { skips } => slot.state = self.skip(slot.fd, skips),
                            State::Aborted => {
                                // Shut down a whole tick ago and its write has not returned: do
                                // not hold its place any longer (see `reap`).
                                self.streams.reap(&mut slab, cursor);
                                reaped += 1;
                            }
                        }
                    }
                    if let Some(why) = failed {
                        self.streams.remove(&mut slab, cursor, why);
                    }
                    cursor += 1;
                }
                end
            };
            if cursor >= end {
                break;
            }
            // The batch is full: wait for one write to finish (this yields to the runtime, which
            // submits the batch in one go), then top it up. Writes that stay parked on full send
            // buffers must not stall the walk: if none finishes for a while, widen the batch.
            let stall = std::pin::pin!(monoio::time::sleep(self.stall));
            match select(inflight.next(), stall).await {
                Either::Left((Some(done), _)) => self.complete(done),
                Either::Left((None, _)) => {}
                Either::Right(_) => limit += self.max_inflight,
            }
        }
        // The request phase's short-lived tasks and buffers (accept bursts) leave freed pages
        // in this thread's heap; hand them back to the OS every `--collect-every` walks so an
        // idle stream's RSS is what it holds, not the high-water mark of the last connect burst.
        let walks = self.walks.get().wrapping_add(1);
        self.walks.set(walks);
        if self.collect_every > 0 && walks.is_multiple_of(self.collect_every) {
            // SAFETY: mi_collect only touches the calling thread's heap.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
        if reaped > 0 {
            tracing::warn!(
                streams = reaped,
                "removed streams whose write had not returned a tick after they were shut down \
                 for not reading; each socket closes when its write returns"
            );
        }
        let took = started.elapsed().as_micros() as u64;
        self.stats.max(&self.stats.walk_us_max, took);
        self.stats.walk.record_us(took);
    }

    /// A stream whose write is still in flight at a tick skips it; at `--max-skips` in a row it
    /// is aborted. Returns its new state.
    fn skip(&self, fd: RawFd, skips: u8) -> State {
        let skips = skips.saturating_add(1);
        self.stats.inc(&self.stats.frames_skipped);
        if skips < self.max_skips {
            return State::Writing { skips };
        }
        // The write is parked on a full send buffer: shut the socket under it. The write then
        // fails, comes back through `complete`, and the stream is removed there; if it has not
        // come back by the next walk (the shutdown failed, or the write never wakes), that walk
        // removes the stream anyway.
        net::abort(fd);
        State::Aborted
    }
}

/// The tick slab and the walk on their own, on real loopback sockets, under each driver. The
/// writes are either real (`write_frame`) or stand-ins whose completion the test releases, so
/// nothing here depends on timing: every wait is on a completion the test caused.
#[cfg(test)]
mod permit_tests {
    use super::*;

    #[test]
    fn an_idle_tick_stream_slot_is_four_words() {
        // With its socket parked as a bare fd (parked.rs), a slot is the fd, the state and the
        // permit: what the memory benchmark's per-stream figure is built on.
        assert!(std::mem::size_of::<Slot>() <= 32);
    }

    #[test]
    fn a_place_under_the_cap_is_given_back_exactly_once_when_its_permit_drops() {
        let cap = Arc::new(StreamCap::new(2));
        let a = cap.try_reserve().expect("first place");
        let b = cap.try_reserve().expect("second place");
        assert!(cap.try_reserve().is_none(), "at the cap");
        assert_eq!(cap.open(), 2);
        drop(a);
        assert_eq!(cap.open(), 1);
        let c = cap.try_reserve().expect("a freed place is taken again");
        drop((b, c));
        assert_eq!(cap.open(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Limits;
    use crate::hub::Hub;
    use futures::channel::oneshot;
    use futures::FutureExt;

    /// Bound for anything that must happen "soon" (a loaded 2-core machine).
    const PATIENCE: Duration = Duration::from_secs(20);

    /// Runs the scenario on an epoll runtime, and on an io_uring one where the kernel has it.
    fn each_driver<F: Future<Output = ()>>(scenario: impl Fn() -> F) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(scenario());
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(scenario());
        }
    }

    struct Core {
        walker: Walker,
        streams: Rc<Streams>,
        cap: Arc<StreamCap>,
        stats: Arc<WorkerStats>,
        /// The client ends, kept open.
        clients: Vec<std::net::TcpStream>,
    }

    impl Core {
        fn new(max_inflight: usize, max_skips: u8) -> Core {
            let cfg = Config {
                max_inflight,
                max_skips,
                ..Config::default()
            };
            let cap = Arc::new(StreamCap::new(1000));
            let stats = Arc::new(WorkerStats::default());
            let streams = Rc::new(Streams::new(stats.clone()));
            let limits = Limits {
                per_channel: 16,
                bytes: 1 << 20,
                age: Duration::from_secs(60),
            };
            let (hub, _) = Hub::new(limits, 1);
            let subs = Rc::new(Subs::new(hub, None, stats.clone(), 1 << 20, max_skips));
            Core {
                walker: Walker::new(streams.clone(), subs, stats.clone(), &cfg),
                streams,
                cap,
                stats,
                clients: Vec::new(),
            }
        }

        /// A connected loopback socket, server end; small buffers, and the client never reads.
        fn socket(&mut self) -> TcpStream {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            client.set_recv_buffer_size(4096).unwrap();
            client
                .connect(&listener.local_addr().unwrap().into())
                .unwrap();
            let (server, _) = listener.accept().unwrap();
            socket2::SockRef::from(&server)
                .set_send_buffer_size(4096)
                .unwrap();
            server.set_nonblocking(true).unwrap();
            self.clients.push(client.into());
            TcpStream::from_std(server).unwrap()
        }

        /// Opens a stream the way `conn.rs` does: a place under the cap, then the slab.
        fn open(&mut self) -> usize {
            let s = self.socket();
            let permit = self.cap.try_reserve().expect("room under the cap");
            self.streams.insert(s, permit)
        }

        fn state(&self, key: usize) -> Option<&'static str> {
            self.streams.slab.borrow().get(key).map(|s| match s.state {
                State::Idle(_) => "idle",
                State::Writing { .. } => "writing",
                State::Aborted => "aborted",
            })
        }

        fn skips(&self, key: usize) -> Option<u8> {
            match self.streams.slab.borrow().get(key)?.state {
                State::Writing { skips } => Some(skips),
                _ => None,
            }
        }
    }

    /// Stand-in writes: each one returns only when the test sends its result through the gate
    /// recorded for it (in the order the writes were started).
    #[derive(Clone, Default)]
    struct Gates(Rc<RefCell<Vec<Gate>>>);

    /// A started write's key, and the sender that makes it return.
    type Gate = (usize, oneshot::Sender<io::Result<usize>>);

    impl Gates {
        fn make(&self) -> impl Fn(Key, TcpStream, Bytes) -> GatedWrite + '_ {
            move |key, stream, _frame| {
                let Key::Tick(k) = key else {
                    panic!("a channel write in a tick walk")
                };
                let (tx, rx) = oneshot::channel();
                self.0.borrow_mut().push((k, tx));
                Box::pin(async move {
                    let result = rx
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::Other.into()));
                    Done {
                        key,
                        stream,
                        result,
                    }
                })
            }
        }

        /// Keys of the writes started so far, in order.
        fn keys(&self) -> Vec<usize> {
            self.0.borrow().iter().map(|(k, _)| *k).collect()
        }

        /// Lets every write started so far return `Ok`.
        fn release_all(&self) -> usize {
            let gates: Vec<_> = self.0.borrow_mut().drain(..).collect();
            let n = gates.len();
            for (_, tx) in gates {
                let _ = tx.send(Ok(1));
            }
            n
        }
    }

    type GatedWrite = std::pin::Pin<Box<dyn Future<Output = Done>>>;

    /// Collects `n` completions (each one released by the test) and applies them.
    async fn collect<F: Future<Output = Done>>(
        core: &Core,
        inflight: &mut FuturesUnordered<F>,
        n: usize,
    ) {
        for _ in 0..n {
            let done = monoio::time::timeout(PATIENCE, inflight.next())
                .await
                .expect("a released write returns")
                .expect("a write in flight");
            core.walker.complete(done);
        }
    }

    fn frame() -> Bytes {
        Bytes::from_static(b"id: 1\nevent: message\ndata: hello\n\n")
    }

    #[test]
    fn skips_count_consecutive_ticks_and_reset_when_a_write_returns() {
        each_driver(|| async {
            let mut core = Core::new(64, 3);
            let key = core.open();
            let gates = Gates::default();
            let make = gates.make();
            let mut inflight = FuturesUnordered::new();
            core.walker.walk(frame(), &mut inflight, &make).await;
            assert_eq!(
                (core.state(key), core.skips(key)),
                (Some("writing"), Some(0))
            );
            core.walker.walk(frame(), &mut inflight, &make).await;
            assert_eq!(core.skips(key), Some(1));
            assert_eq!(core.stats.frames_skipped.load(Ordering::Relaxed), 1);
            // The write returns: the socket is back, and the count starts over.
            assert_eq!(gates.release_all(), 1);
            collect(&core, &mut inflight, 1).await;
            assert_eq!(core.state(key), Some("idle"));
            for skips in [0, 1, 2] {
                core.walker.walk(frame(), &mut inflight, &make).await;
                assert_eq!(core.skips(key), Some(skips), "not carried over");
            }
            assert_eq!(core.stats.frames_skipped.load(Ordering::Relaxed), 3);
            assert_eq!(gates.keys(), vec![key]);
            // The third skip in a row aborts it.
            core.walker.walk(frame(), &mut inflight, &make).await;
            assert_eq!(core.state(key), Some("aborted"));
            assert_eq!(core.stats.frames_skipped.load(Ordering::Relaxed), 4);
            // An aborted stream is not skipped again: its write's return removes it.
            gates.release_all();
            collect(&core, &mut inflight, 1).await;
            assert_eq!(core.state(key), None);
            let s = core.stats.snapshot();
            assert_eq!((s.closed_skips, s.streams_open, s.frames_sent), (1, 0, 1));
            assert_eq!(s.stuck_writes_reaped, 0);
            assert_eq!(core.cap.open(), 0);
        });
    }

    #[test]
    fn a_write_that_returned_before_the_tick_is_not_a_skip() {
        each_driver(|| async {
            let mut core = Core::new(64, 2);
            let key = core.open();
            let gates = Gates::default();
            let make = gates.make();
            let mut inflight = FuturesUnordered::new();
            core.walker.walk(frame(), &mut inflight, &make).await;
            for _ in 0..3 {
                // The write returns, but the core loop has not collected it when the tick comes.
                gates.release_all();
                core.walker.walk(frame(), &mut inflight, &make).await;
                assert_eq!(
                    (core.state(key), core.skips(key)),
                    (Some("writing"), Some(0))
                );
            }
            let s = core.stats.snapshot();
            assert_eq!((s.frames_sent, s.frames_skipped, s.closed_skips), (3, 0, 0));
        });
    }

    #[test]
    fn a_non_reader_is_shut_down_under_its_parked_write_and_removed() {
        let mut clients = std::cell::RefCell::new(Vec::new());
        each_driver(|| async {
            let mut core = Core::new(64, 3);
            let key = core.open();
            // Far more than the two small socket buffers hold: the write parks.
            let big = Bytes::from(vec![b'x'; 1 << 20]);
            let mut inflight = FuturesUnordered::new();
            core.walker
                .walk(big.clone(), &mut inflight, write_frame)
                .await;
            assert!(inflight.next().now_or_never().is_none(), "the write parks");
            for _ in 0..3 {
                core.walker
                    .walk(big.clone(), &mut inflight, write_frame)
                    .await;
            }
            assert_eq!(core.state(key), Some("aborted"));
            // The shutdown wakes the parked write with an error; its return removes the stream.
            let done = monoio::time::timeout(PATIENCE, inflight.next())
                .await
                .expect("the aborted write returns")
                .expect("a write in flight");
            assert!(done.result.is_err(), "{:?}", done.result);
            core.walker.complete(done);
            assert_eq!(core.state(key), None);
            let s = core.stats.snapshot();
            assert_eq!(
                (s.closed_skips, s.frames_skipped, s.streams_open),
                (1, 3, 0)
            );
            assert_eq!(s.stuck_writes_reaped, 0);
            assert_eq!(core.cap.open(), 0);
            clients.borrow_mut().append(&mut core.clients);
        });
        // The runtimes are gone and every server socket with them: each client's stream ends
        // (reset, or EOF), however slowly it reads.
        for mut c in clients.get_mut().drain(..) {
            use std::io::Read;
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        assert_ne!(e.kind(), io::ErrorKind::WouldBlock, "the stream ended");
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn an_aborted_write_that_never_returns_is_removed_at_the_next_walk() {
        each_driver(|| async {
            let mut core = Core::new(64, 2);
            let stuck = core.open();
            let other = core.open();
            let gates = Gates::default();
            let make = gates.make();
            let mut inflight = FuturesUnordered::new();
            core.walker.walk(frame(), &mut inflight, &make).await;
            // `other` reads; `stuck` does not, and its write never returns, not even after the
            // abort.
            let release_other = |gates: &Gates| {
                let mut g = gates.0.borrow_mut();
                let i = g.iter().position(|(k, _)| *k == other).unwrap();
                let (_, tx) = g.remove(i);
                let _ = tx.send(Ok(1));
            };
            release_other(&gates);
            collect(&core, &mut inflight, 1).await;
            for _ in 0..2 {
                core.walker.walk(frame(), &mut inflight, &make).await;
                release_other(&gates);
                collect(&core, &mut inflight, 1).await;
            }
            assert_eq!(core.state(stuck), Some("aborted"));
            assert_eq!(core.cap.open(), 2);
            // The next walk removes it: slot, place under the cap, counted.
            core.walker.walk(frame(), &mut inflight, &make).await;
            assert_eq!(core.state(stuck), None);
            assert_eq!(core.state(other), Some("writing"));
            assert_eq!(core.cap.open(), 1);
            let s = core.stats.snapshot();
            assert_eq!(
                (s.closed_skips, s.stuck_writes_reaped, s.streams_open),
                (1, 1, 1)
            );
            // A new stream takes the freed key. When the old write does come back at last, it
            // must not touch the new stream's slot.
            let fresh = core.open();
            assert_eq!(fresh, stuck, "the slab reuses the key");
            assert_eq!(core.state(fresh), Some("idle"));
            gates.release_all();
            collect(&core, &mut inflight, 2).await;
            assert_eq!(core.state(fresh), Some("idle"));
            assert_eq!(core.state(other), Some("idle"));
            let s = core.stats.snapshot();
            assert_eq!((s.closed_skips, s.streams_open), (1, 2));
            assert_eq!(core.cap.open(), 2);
            // ...and it is written to at the next tick like any other.
            core.walker.walk(frame(), &mut inflight, &make).await;
            assert_eq!(core.state(fresh), Some("writing"));
            assert_eq!(gates.keys().len(), 2);
        });
    }

    #[test]
    fn a_full_batch_that_never_completes_is_widened_until_every_write_started() {
        each_driver(|| async {
            let mut core = Core::new(2, 3);
            let keys: Vec<usize> = (0..7).map(|_| core.open()).collect();
            let gates = Gates::default();
            let make = gates.make();
            let mut inflight = FuturesUnordered::new();
            // No write ever completes: the walk must still start every one.
            monoio::time::timeout(PATIENCE, core.walker.walk(frame(), &mut inflight, &make))
                .await
                .expect("the walk does not wait for parked writes forever");
            assert_eq!(gates.keys(), keys);
            assert_eq!(inflight.len(), keys.len());
            // Writes parked from that walk do not shrink the next one's batch.
            let more: Vec<usize> = (0..3).map(|_| core.open()).collect();
            monoio::time::timeout(PATIENCE, core.walker.walk(frame(), &mut inflight, &make))
                .await
                .expect("the second walk ends too");
            assert_eq!(gates.keys()[keys.len()..], more[..]);
            assert_eq!(core.stats.frames_skipped.load(Ordering::Relaxed), 7);
        });
    }

    #[test]
    fn streams_that_arrive_mid_walk_get_at_most_one_write_per_tick() {
        each_driver(|| async {
            let mut core = Core::new(1, 3);
            for _ in 0..5 {
                core.open();
            }
            // Key 1 leaves: a hole the slab will fill first.
            {
                let mut slab = core.streams.slab.borrow_mut();
                core.streams.remove(&mut slab, 1, CloseReason::ClientGone);
            }
            // Two connections become streams while the walk waits on its batch of one: the
            // first arrives behind the cursor (in the hole), the second ahead of it.
            let arriving: RefCell<Vec<TcpStream>> =
                RefCell::new((0..2).map(|_| core.socket()).collect());
            let written = RefCell::new(Vec::new());
            let streams = core.streams.clone();
            let cap = core.cap.clone();
            let make = |key: Key, stream: TcpStream, _frame: Bytes| {
                let Key::Tick(k) = key else { panic!() };
                written.borrow_mut().push(k);
                let arrive = (k == 2 || k == 3)
                    .then(|| arriving.borrow_mut().pop())
                    .flatten();
                let (streams, cap) = (streams.clone(), cap.clone());
                async move {
                    // Runs while the walk is suspended, like a connection task would.
                    if let Some(s) = arrive {
                        let permit = cap.try_reserve().expect("room under the cap");
                        streams.insert(s, permit);
                    }
                    Done {
                        key,
                        stream,
                        result: Ok(1),
                    }
                }
            };
            let mut inflight = FuturesUnordered::new();
            core.walker.walk(frame(), &mut inflight, &make).await;
            while let Some(done) = inflight.next().await {
                core.walker.complete(done);
            }
            assert_eq!(
                *written.borrow(),
                vec![0, 2, 3, 4, 5],
                "key 1 arrived behind the cursor"
            );
            assert_eq!(core.streams.slab.borrow().len(), 6);
            assert_eq!(core.stats.frames_skipped.load(Ordering::Relaxed), 0);
            written.borrow_mut().clear();
            core.walker.walk(frame(), &mut inflight, &make).await;
            while let Some(done) = inflight.next().await {
                core.walker.complete(done);
            }
            assert_eq!(*written.borrow(), vec![0, 1, 2, 3, 4, 5]);
            assert_eq!(core.stats.frames_sent.load(Ordering::Relaxed), 11);
        });
    }
}
