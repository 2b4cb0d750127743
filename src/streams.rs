//! One core's SSE streams and the tick walk that writes to all of them.
//!
//! An idle stream is one slab slot: the socket and a skip count. It has no task, no timer and no
//! read buffer. Once per tick the core's walker encodes the frame once and starts a write of that
//! shared `Bytes` on every stream, up to `--max-inflight` writes at a time, so io_uring submits
//! them in large batches while the memory of in-flight write futures stays bounded.
//!
//! While a write is in flight its socket lives inside the write future and the slot holds only the
//! fd. A stream whose write is still pending when the next tick comes skips that tick; after
//! `--max-skips` consecutive skips the socket is shut down under the pending write (which then
//! fails with EPIPE) and the stream is removed. Any write error removes the stream too, which is
//! how a client that went away is noticed: the second write after its FIN fails.
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
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::sse::{FrameEncoder, TickClock};
use crate::subs::Subs;

/// The stream count over all workers, checked against `--max-streams` when a stream opens.
#[derive(Debug)]
pub struct StreamCap {
    open: AtomicUsize,
    max: usize,
}

impl StreamCap {
    pub fn new(max: usize) -> Self {
        StreamCap {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place for a new stream, or `false` at the cap.
    pub fn try_reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

struct Slot {
    /// `None` while a write is in flight (the socket is inside the write future).
    stream: Option<TcpStream>,
    fd: RawFd,
    /// Consecutive ticks skipped because the previous write was still pending.
    skips: u8,
    /// Shut down after too many skips; remove when the pending write returns.
    aborted: bool,
}

/// The streams of one core.
pub struct Streams {
    slab: RefCell<Slab<Slot>>,
    cap: Arc<StreamCap>,
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
    pub fn new(cap: Arc<StreamCap>, stats: Arc<WorkerStats>) -> Self {
        Streams {
            slab: RefCell::new(Slab::new()),
            cap,
            stats,
        }
    }

    /// Adds an established stream; its place in the cap must already be reserved.
    pub fn insert(&self, stream: TcpStream) -> usize {
        let fd = stream.as_raw_fd();
        let key = self.slab.borrow_mut().insert(Slot {
            stream: Some(stream),
            fd,
            skips: 0,
            aborted: false,
        });
        self.stats.stream_opened();
        key
    }

    /// Closes every stream (at shutdown). Writes still in flight are dropped by their owner.
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self.slab.borrow_mut().drain().collect();
        for _ in slots {
            self.stats.stream_closed(CloseReason::Shutdown);
            self.cap.release();
        }
    }

    fn remove(&self, slab: &mut Slab<Slot>, key: usize, why: CloseReason) {
        slab.remove(key);
        self.stats.stream_closed(why);
        self.cap.release();
    }

    /// Puts a socket back after its write, or removes the stream if the write failed.
    fn complete(&self, key: usize, stream: TcpStream, result: io::Result<usize>) {
        let mut slab = self.slab.borrow_mut();
        let Some(slot) = slab.get_mut(key) else {
            return; // closed at shutdown while the write was in flight
        };
        match result {
            Ok(n) if !slot.aborted => {
                slot.stream = Some(stream);
                slot.skips = 0;
                self.stats.inc(&self.stats.frames_sent);
                self.stats.add(&self.stats.bytes_sent, n as u64);
            }
            Ok(_) => self.remove(&mut slab, key, CloseReason::SkipsExceeded),
            Err(e) => {
                let why = if slot.aborted {
                    CloseReason::SkipsExceeded
                } else {
                    CloseReason::from_write_error(&e)
                };
                tracing::debug!(key, error = %e, ?why, "stream closed");
                self.remove(&mut slab, key, why);
            }
        }
        // `stream` (if not put back) is dropped here, after the borrow: that closes it.
    }
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

/// What woke the core loop between ticks.
enum Wake {
    Tick,
    Heartbeat,
    Event(Arc<Event>),
    InboxClosed,
    Replayed(ReplayDone),
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
    /// How long a full batch may wait for a completion before the walk widens it.
    stall: Duration,
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
            stall: (clock.interval() / 8)
                .clamp(Duration::from_millis(1), Duration::from_millis(20)),
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
    ) {
        // One concrete future type (no box per write): the write of `write_frame`.
        let mut inflight = FuturesUnordered::new();
        let make = write_frame;
        let mut last_tick: Option<(u64, Instant)> = None;
        let heartbeat_frame = Bytes::from_static(HEARTBEAT);
        let mut heartbeat = self.heartbeat.map(|d| Box::pin(monoio::time::sleep(d)));
        let mut inbox_open = true;
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
                    if inbox_open {
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
                        inbox.took();
                        self.subs.deliver(&ev);
                    }
                    Wake::InboxClosed => inbox_open = false,
                    Wake::Replayed(done) => self.subs.finish_replay(done),
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
        if tick <= last {
            tracing::warn!(
                tick,
                last,
                "the wall clock stepped back; tick ids continue from the last one sent"
            );
            return last + 1;
        }
        if tick > last + 1 {
            let missed = tick - last - 1;
            self.stats.add(&self.stats.ticks_missed, missed);
            let wall = self.clock.interval() * (tick - last) as u32;
            let mono = at.elapsed();
            if mono + self.clock.interval() < wall {
                tracing::warn!(
                    from = last + 1,
                    to = tick - 1,
                    step_ms = (wall - mono).as_millis() as u64,
                    "ticks missed: the wall clock stepped forward"
                );
            } else {
                tracing::warn!(
                    from = last + 1,
                    to = tick - 1,
                    behind_ms = (mono.saturating_sub(self.clock.interval())).as_millis() as u64,
                    "ticks missed: this core was busy or descheduled for over an interval"
                );
            }
        }
        tick
    }

    /// Starts the writes of every channel stream that has a frame waiting, at most
    /// `max_inflight` more than are in flight now, waiting for completions in between.
    async fn pump<F, M>(&self, inflight: &mut FuturesUnordered<F>, make: M)
    where
        F: Future<Output = Done>,
        M: Fn(Key, TcpStream, Bytes) -> F,
    {
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
        let mut cursor = 0;
        // Writes parked from earlier walks (clients that stopped reading) do not count against
        // this walk's batch.
        let mut limit = inflight.len() + self.max_inflight;
        loop {
            let end = {
                let mut slab = self.streams.slab.borrow_mut();
                let end = slab.capacity();
                while cursor < end && inflight.len() < limit {
                    if let Some(slot) = slab.get_mut(cursor) {
                        if let Some(stream) = slot.stream.take() {
                            inflight.push(make(Key::Tick(cursor), stream, frame.clone()));
                        } else if !slot.aborted {
                            self.skip(slot);
                        }
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
        // in this thread's heap; hand them back to the OS once per walk so an idle stream's RSS
        // is what it holds, not the high-water mark of the last connect burst.
        // SAFETY: mi_collect only touches the calling thread's heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
        let took = started.elapsed().as_micros() as u64;
        self.stats.max(&self.stats.walk_us_max, took);
        self.stats.walk.record_us(took);
    }

    fn skip(&self, slot: &mut Slot) {
        slot.skips = slot.skips.saturating_add(1);
        self.stats.inc(&self.stats.frames_skipped);
        if slot.skips >= self.max_skips {
            // The write is parked on a full send buffer: shut the socket under it. The write then
            // fails, comes back through `complete`, and the stream is removed there.
            slot.aborted = true;
            net::abort(slot.fd);
        }
    }
}
