//! A connection from accept until it becomes a stream or closes.
//!
//! This is the only place a connection has a task and a read buffer: while its request head is
//! arriving. Bytes are read in place into a pooled buffer (1 KiB, grown to the 8 KiB head limit
//! only when needed) that a [`Session`] parses zero-copy and decides on; this module only moves
//! bytes and keeps time. `ok` requests are answered and the connection is kept for the next
//! (pipelined requests are answered in one write); an SSE request gets its response head, and the
//! socket moves into the core's slab while the buffer goes back to the pool. Refused requests get
//! their status, then a lingering close so the client can read it even if it was still sending;
//! so does an `ok` that closes while its request's body may still be arriving.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::config::Config;
use crate::http::{Reject, Responses, Subscription, MAX_HEAD};
use crate::metrics::WorkerStats;
use crate::net;
use crate::session::{Next, Session};
use crate::streams::{sweep_gone, Permit, StreamCap, Streams};
use crate::subs::Subs;

/// A connection's read buffer starts this small (an EventSource request is a few hundred bytes)
/// and grows to `MAX_HEAD` only for a larger head.
const BUFFER: usize = 1024;
/// Read buffers kept for reuse per core. A connection takes one only when bytes are ready to read
/// and gives it back as soon as everything buffered is answered, so few are in use at once.
const POOLED_BUFFERS: usize = 64;
/// How long, and how much, a refused client may keep sending before we close on it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// What a core's connection tasks share.
pub struct Core {
    pub cfg: Arc<Config>,
    pub responses: Responses,
    pub streams: Rc<Streams>,
    pub subs: Rc<Subs>,
    pub cap: Arc<StreamCap>,
    pub stats: Arc<WorkerStats>,
    pool: RefCell<Vec<Vec<u8>>>,
    /// When this core last swept its streams for gone clients, and the gap before the next
    /// sweep may run (see `reclaim`).
    swept: std::cell::Cell<Option<Instant>>,
    sweep_gap: std::cell::Cell<Duration>,
    /// This core's id among the cap's sweepers.
    sweeper: usize,
}

/// The shortest gap between two sweeps of one core for gone clients (a sweep is a `recv` per
/// idle stream); it doubles after each sweep that found nothing, up to `SWEEP_GAP_MAX`, so a
/// server that is genuinely full does not sweep over and over.
const SWEEP_GAP: Duration = Duration::from_millis(20);
const SWEEP_GAP_MAX: Duration = Duration::from_secs(1);
/// How long a stream request at the cap waits for a place before it is refused: long enough for
/// the other cores to sweep their own gone clients in a reconnect storm.
const PLACE_WAIT: Duration = Duration::from_millis(250);

impl Core {
    pub fn new(
        cfg: Arc<Config>,
        streams: Rc<Streams>,
        subs: Rc<Subs>,
        cap: Arc<StreamCap>,
        stats: Arc<WorkerStats>,
        sweeper: usize,
    ) -> Self {
        Core {
            responses: Responses::new(&cfg),
            cfg,
            streams,
            subs,
            cap,
            stats,
            pool: RefCell::new(Vec::new()),
            swept: std::cell::Cell::new(None),
            sweep_gap: std::cell::Cell::new(SWEEP_GAP),
            sweeper,
        }
    }

    /// Frees the places of this core's streams whose clients have gone but have not been
    /// written to since (a dead stream is otherwise noticed by its second write after the FIN,
    /// up to two ticks later). Called when a new stream finds the cap reached or an accept finds
    /// the fd table full, which is what a reconnect storm looks like: every client drops and
    /// comes back at once, and without this the new connections would be refused while the
    /// old ones still hold their places. Returns how many streams were removed.
    pub fn reclaim(&self) -> usize {
        let now = Instant::now();
        if self
            .swept
            .get()
            .is_some_and(|t| now - t < self.sweep_gap.get())
        {
            return 0;
        }
        self.swept.set(Some(now));
        let n = sweep_gone(
            &self.streams,
            &self.subs,
            &self.stats,
            "at the stream cap or fd limit",
        );
        self.sweep_gap.set(if n > 0 {
            SWEEP_GAP
        } else {
            (self.sweep_gap.get() * 2).min(SWEEP_GAP_MAX)
        });
        // The places may be held on other cores, which only sweep their own.
        self.cap.ask_others_to_sweep(self.sweeper);
        n
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER))
    }

    /// Gives a buffer back (a grown or empty one is freed instead).
    fn put_buffer(&self, mut buf: Vec<u8>) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOLED_BUFFERS && buf.capacity() == BUFFER {
            buf.clear();
            pool.push(buf);
        }
    }
}

/// Serves one accepted connection (its own task).
pub async fn serve(core: Rc<Core>, mut stream: TcpStream) {
    core.stats.inc(&core.stats.connections_accepted);
    let mut session = Session::default();
    // The session's decision, acted on here: the request phase has ended.
    let next = requests(&core, &mut stream, &mut session).await;
    core.put_buffer(std::mem::take(&mut session.buf));
    let next = match next {
        Next::Stream(head, sub) => {
            let permit = match core.cap.try_reserve() {
                Some(p) => Some(p),
                // Boxed: the rarer, larger states must not size every connection's task.
                None => Box::pin(wait_for_place(&core)).await,
            };
            match permit {
                Some(permit) => {
                    return Box::pin(open_stream(&core, stream, head, sub, permit)).await
                }
                None => Next::Reject(Reject::Busy),
            }
        }
        other => other,
    };
    match next {
        Next::NeedMore | Next::Close | Next::Stream(..) => {}
        Next::Linger => Box::pin(linger(&core, &mut stream)).await,
        Next::Reject(r) => {
            let stats = &core.stats;
            stats.inc(match r {
                Reject::Busy => &stats.rejected_busy,
                Reject::Timeout => &stats.rejected_timeout,
                Reject::BadRequest
                | Reject::BadTransferEncoding
                | Reject::BadHost
                | Reject::BadChannel
                | Reject::TooManyChannels => &stats.rejected_bad_request,
                Reject::HeadTooLarge | Reject::BodyTooLarge | Reject::UriTooLong => {
                    &stats.rejected_too_large
                }
                Reject::LengthRequired
                | Reject::OriginRefused
                | Reject::MethodNotAllowed
                | Reject::NotImplemented => &stats.rejected_other,
            });
            tracing::debug!(status = r.status(), "request refused");
            Box::pin(async {
                let (_, _) = stream.write_all(core.responses.reject(r)).await;
                linger(&core, &mut stream).await;
            })
            .await;
        }
    }
}

/// A place under the cap for a stream request that found it full: clients that went away may
/// still hold places, on this core (swept here) or on another (swept by that core's own requests
/// at the cap), so sweep and retry for up to `PLACE_WAIT` before refusing with 503.
async fn wait_for_place(core: &Core) -> Option<Permit> {
    let deadline = Instant::now() + PLACE_WAIT;
    loop {
        core.reclaim();
        if let Some(p) = core.cap.try_reserve() {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        monoio::time::sleep(SWEEP_GAP).await;
    }
}

/// Why more bytes did not come.
enum NoMore {
    Timeout,
    Closed,
}

/// Reads and answers requests until the connection closes, is refused, or asks for a stream;
/// returns that decision (never `NeedMore`). The decisions are the [`Session`]'s; this only
/// moves bytes and keeps time.
async fn requests(core: &Core, stream: &mut TcpStream, s: &mut Session) -> Next {
    // The header timeout runs from the first moment we wait for a request until it is answered.
    let mut deadline: Option<Instant> = None;
    loop {
        let served = s.served();
        let out = s.process(&core.responses, core.cfg.max_body);
        if s.served() > served {
            core.stats.add(&core.stats.ok_requests, s.served() - served);
            deadline = None;
        }
        if !flush(stream, out.replies).await {
            return Next::Close;
        }
        if out.next != Next::NeedMore {
            return out.next;
        }
        // A connection that answered a request keeps its buffer for the next one (a kept-alive
        // client is busy); only a fresh connection waits for bytes without one (see read_more).
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + core.cfg.header_timeout);
        let idle = s.idle();
        let room = s.room();
        match read_more(core, stream, &mut s.buf, room, deadline).await {
            Ok(()) => {}
            Err(NoMore::Closed) => return Next::Close,
            // A kept-alive connection that stays silent is closed without a word.
            Err(NoMore::Timeout) if idle => return Next::Close,
            Err(NoMore::Timeout) => return Next::Reject(Reject::Timeout),
        }
    }
}

/// Appends at most `room` bytes from the client to `buf`, by `deadline`. A fresh connection holds
/// no buffer while silent: we wait for readability first and take a buffer from the pool only when
/// its bytes are there. A kept-alive connection keeps its buffer between requests (one ring op per
/// request fewer on io_uring).
async fn read_more(
    core: &Core,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
    deadline: Instant,
) -> Result<(), NoMore> {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    if buf.capacity() == 0 {
        // Nothing read yet on this connection: an SSE client will send one request and then
        // live in the slab, so do not hand it a buffer until its bytes are there. On io_uring,
        // bytes that are already there are read directly (no poll and recv round trips through
        // the ring); only a connection that is still silent waits on a poll.
        let uring = !monoio::utils::is_legacy();
        if uring {
            if let Some(r) = try_recv(core, stream, buf, room) {
                return r;
            }
        }
        match monoio::time::timeout(remaining(), stream.readable(true)).await {
            Err(_) => return Err(NoMore::Timeout),
            Ok(Err(_)) => return Err(NoMore::Closed),
            Ok(Ok(())) => {}
        }
        if uring {
            if let Some(r) = try_recv(core, stream, buf, room) {
                return r;
            }
        }
        *buf = core.take_buffer();
    }
    if buf.len() == buf.capacity() {
        // A head larger than the pooled buffer: grow, up to the head limit.
        buf.reserve_exact(room.min(MAX_HEAD));
    }
    let (start, end) = (buf.len(), buf.capacity().min(buf.len() + room));
    let read = stream.read(std::mem::take(buf).slice_mut(start..end));
    // On a timeout the cancelled read keeps the buffer; `buf` stays empty.
    let (res, slice) = monoio::time::timeout(remaining(), read)
        .await
        .map_err(|_| NoMore::Timeout)?;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => Err(NoMore::Closed),
        Ok(_) => Ok(()),
    }
}

/// One direct non-blocking read into a pooled buffer (io_uring only, see `net::try_recv`):
/// `Some` with the outcome if bytes came or the peer closed, `None` (no buffer kept) if nothing
/// is there yet.
fn try_recv(
    core: &Core,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
) -> Option<Result<(), NoMore>> {
    let mut b = core.take_buffer();
    match net::try_recv(stream.as_raw_fd(), &mut b, room) {
        net::Recv::Got(_) => {
            *buf = b;
            Some(Ok(()))
        }
        net::Recv::Closed => {
            core.put_buffer(b);
            Some(Err(NoMore::Closed))
        }
        net::Recv::WouldBlock => {
            core.put_buffer(b);
            None
        }
    }
}

/// Writes queued responses; `false` if the connection broke.
async fn flush(stream: &mut TcpStream, out: Vec<Bytes>) -> bool {
    match out.len() {
        0 => true,
        1 => {
            let reply = out.into_iter().next().unwrap_or_default();
            stream.write_all(reply).await.0.is_ok()
        }
        _ => {
            let joined: Vec<u8> = out.concat();
            stream.write_all(joined).await.0.is_ok()
        }
    }
}

/// Sends the stream head and hands the socket, with its place under the cap, to the core's tick
/// slab or to its channel streams. If the head cannot be sent, the permit is dropped here.
async fn open_stream(
    core: &Core,
    mut stream: TcpStream,
    head: Bytes,
    sub: Option<Subscription>,
    permit: Permit,
) {
    // The head normally fits the empty send buffer at once: send it directly, and only what
    // did not go (if anything) through the runtime.
    let sent = net::try_send(stream.as_raw_fd(), &head);
    if sent < head.len() {
        let write = stream.write_all(head.slice(sent..));
        let Ok((Ok(_), _)) = monoio::time::timeout(core.cfg.header_timeout, write).await else {
            return;
        };
    }
    net::tune_stream(
        stream.as_raw_fd(),
        core.cfg.stream_options(),
        core.cfg.inherited,
    );
    match sub {
        None => {
            core.streams.insert(stream, permit);
        }
        Some(sub) => core.subs.open(stream, sub, permit),
    }
}

/// A lingering close: stop sending, then read (and drop) what the client is still sending for a
/// short while, so that our response is not destroyed by a reset.
async fn linger(core: &Core, stream: &mut TcpStream) {
    net::shutdown_write(stream.as_raw_fd());
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = core.take_buffer();
    let mut total = 0;
    while total < LINGER_BYTES {
        buf.clear();
        let remaining = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(remaining, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
                buf = b;
            }
            Ok((_, b)) => {
                core.put_buffer(b);
                return;
            }
            Err(_) => return,
        }
    }
    core.put_buffer(buf);
}
