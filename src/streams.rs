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
//! [`Walker::walk`] takes any frame, not only a tick's, so a future publish path can reuse it.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use slab::Slab;

use crate::config::Config;
use crate::metrics::{CloseReason, WorkerStats};
use crate::net;
use crate::sse::{FrameEncoder, TickClock};

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

/// A finished write: the socket comes back to its slot (or is dropped) with the outcome.
pub struct Done {
    key: usize,
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
    fn complete(&self, done: Done) {
        let mut slab = self.slab.borrow_mut();
        let Some(slot) = slab.get_mut(done.key) else {
            return; // closed at shutdown while the write was in flight
        };
        match done.result {
            Ok(n) if !slot.aborted => {
                slot.stream = Some(done.stream);
                slot.skips = 0;
                self.stats.inc(&self.stats.frames_sent);
                self.stats.add(&self.stats.bytes_sent, n as u64);
            }
            Ok(_) => self.remove(&mut slab, done.key, CloseReason::SkipsExceeded),
            Err(e) => {
                let why = if slot.aborted {
                    CloseReason::SkipsExceeded
                } else {
                    match e.kind() {
                        io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted => CloseReason::ClientGone,
                        _ => CloseReason::WriteError,
                    }
                };
                tracing::debug!(key = done.key, error = %e, ?why, "stream closed");
                self.remove(&mut slab, done.key, why);
            }
        }
        // `done.stream` (if not put back) is dropped here, after the borrow: that closes it.
    }
}

/// Writes one frame to one stream; the future owns the socket until the write ends.
async fn write_frame(key: usize, mut stream: TcpStream, frame: Bytes) -> Done {
    let (result, _) = stream.write_all(frame).await;
    Done {
        key,
        stream,
        result,
    }
}

/// The per-core tick walk.
pub struct Walker {
    streams: Rc<Streams>,
    stats: Arc<WorkerStats>,
    clock: TickClock,
    encoder: FrameEncoder,
    max_inflight: usize,
    max_skips: u8,
    /// How long a full batch may wait for a completion before the walk widens it.
    stall: std::time::Duration,
}

impl Walker {
    pub fn new(streams: Rc<Streams>, stats: Arc<WorkerStats>, cfg: &Config) -> Self {
        let clock = TickClock::new(cfg.interval);
        Walker {
            streams,
            stats,
            clock,
            encoder: FrameEncoder::new(&cfg.event, &cfg.data),
            max_inflight: cfg.max_inflight.max(1),
            max_skips: cfg.max_skips,
            stall: (clock.interval() / 8).clamp(
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(20),
            ),
        }
    }

    /// Ticks forever: sleep to the next wall-clock boundary while finishing the previous walk's
    /// writes, then walk. Never busy-yields (monoio 0.2.4 fires timers only when idle).
    pub async fn run(&self) {
        let mut inflight = FuturesUnordered::new();
        let mut last_tick: Option<u64> = None;
        loop {
            let (tick, wait) = self.clock.next_after(SystemTime::now());
            if let Some(last) = last_tick {
                if tick > last + 1 {
                    self.stats.add(&self.stats.ticks_missed, tick - last - 1);
                    tracing::warn!(
                        from = last + 1,
                        to = tick - 1,
                        "ticks missed: this core was busy or descheduled for over an interval"
                    );
                }
            }
            last_tick = Some(tick);
            let mut sleep = std::pin::pin!(monoio::time::sleep(wait));
            loop {
                if inflight.is_empty() {
                    sleep.as_mut().await;
                    break;
                }
                match futures::future::select(sleep.as_mut(), inflight.next()).await {
                    futures::future::Either::Left(_) => break,
                    futures::future::Either::Right((Some(done), _)) => self.streams.complete(done),
                    futures::future::Either::Right((None, _)) => {}
                }
            }
            let late = SystemTime::now()
                .duration_since(self.clock.due(tick))
                .unwrap_or_default();
            self.stats.lateness.record_us(late.as_micros() as u64);
            self.stats.inc(&self.stats.ticks);
            self.walk(self.encoder.encode(tick), &mut inflight, write_frame)
                .await;
        }
    }

    /// Starts a write of `frame` on every stream of this core (at most `max_inflight` at once)
    /// and returns when the last one has been started. Completions are collected here and by
    /// [`Walker::run`] between ticks.
    pub async fn walk<F, M>(&self, frame: Bytes, inflight: &mut FuturesUnordered<F>, make: M)
    where
        F: Future<Output = Done>,
        M: Fn(usize, TcpStream, Bytes) -> F,
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
                            inflight.push(make(cursor, stream, frame.clone()));
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
            match futures::future::select(inflight.next(), stall).await {
                futures::future::Either::Left((Some(done), _)) => self.streams.complete(done),
                futures::future::Either::Left((None, _)) => {}
                futures::future::Either::Right(_) => limit += self.max_inflight,
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
