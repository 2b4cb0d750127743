//! A connection from accept until it becomes a stream or closes.
//!
//! This is the only place a connection has a task and a read buffer: while its request head is
//! arriving. Requests are parsed in place (zero-copy) from a pooled 8 KiB buffer; `ok` requests
//! are answered and the connection is kept for the next (pipelined requests are answered in one
//! write); an SSE request gets its response head, and the socket moves into the core's slab while
//! the buffer goes back to the pool. Refused requests get their status, then a lingering close
//! so the client can read it even if it was still sending.

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
use crate::http::{self, Kind, Reject, Responses, Verdict, MAX_HEAD};
use crate::metrics::WorkerStats;
use crate::net;
use crate::streams::{StreamCap, Streams};

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
    pub cap: Arc<StreamCap>,
    pub stats: Arc<WorkerStats>,
    pool: RefCell<Vec<Vec<u8>>>,
}

impl Core {
    pub fn new(
        cfg: Arc<Config>,
        streams: Rc<Streams>,
        cap: Arc<StreamCap>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        Core {
            responses: Responses::new(&cfg),
            cfg,
            streams,
            cap,
            stats,
            pool: RefCell::new(Vec::new()),
        }
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

/// How a connection's request phase ended.
enum End {
    /// Closed (by either side, or after an `ok` with `Connection: close`).
    Closed,
    /// Refuse with this status and close.
    Reject(Reject),
    /// Asked for a stream, which has a place under the cap: send it this head.
    Stream(Bytes),
}

/// Serves one accepted connection (its own task).
pub async fn serve(core: Rc<Core>, mut stream: TcpStream) {
    core.stats.inc(&core.stats.connections_accepted);
    let mut buf = Vec::new();
    let end = requests(&core, &mut stream, &mut buf).await;
    core.put_buffer(std::mem::take(&mut buf));
    match end {
        End::Closed => {}
        // Boxed: the rarer, larger states must not size every connection's task.
        End::Stream(head) => Box::pin(open_stream(&core, stream, head)).await,
        End::Reject(r) => {
            let stats = &core.stats;
            stats.inc(match r {
                Reject::Busy => &stats.rejected_busy,
                Reject::Timeout => &stats.rejected_timeout,
                Reject::BadRequest => &stats.rejected_bad_request,
                Reject::HeadTooLarge | Reject::BodyTooLarge => &stats.rejected_too_large,
                Reject::LengthRequired | Reject::OriginRefused => &stats.rejected_other,
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

/// Why more bytes did not come.
enum NoMore {
    Timeout,
    Closed,
}

/// Reads and answers requests until the connection closes, is refused, or becomes a stream.
/// `buf` holds the bytes received and not yet consumed; it is empty (no allocation) whenever the
/// connection has nothing pending.
async fn requests(core: &Core, stream: &mut TcpStream, buf: &mut Vec<u8>) -> End {
    let cfg = &core.cfg;
    let mut served: u64 = 0;
    // Body bytes of the last request still to be read and discarded.
    let mut discard: u64 = 0;
    loop {
        // Answer every complete request already buffered (pipelining), in one write.
        let mut out: Vec<Bytes> = Vec::new();
        let mut close_after = false;
        while discard == 0 && !close_after {
            let (consumed, reply) = match http::parse(buf, cfg.max_body) {
                Verdict::Partial => break,
                Verdict::Reject(r) => {
                    flush(stream, out).await;
                    return End::Reject(r);
                }
                Verdict::Request(req) if req.kind == Kind::Stream => {
                    flush(stream, out).await;
                    if !core.responses.origin_allowed(req.origin) {
                        return End::Reject(Reject::OriginRefused);
                    }
                    if !core.cap.try_reserve() {
                        return End::Reject(Reject::Busy);
                    }
                    if let Some(id) = req.last_event_id {
                        tracing::debug!(last_event_id = %String::from_utf8_lossy(id),
                            "stream resumes; tick events are not stored, it continues with the next tick");
                    }
                    return End::Stream(core.responses.stream_head(req.origin));
                }
                Verdict::Request(req) => {
                    let reply = match req.kind {
                        Kind::Preflight => core.responses.preflight(&req),
                        _ => core.responses.ok_for(&req).clone(),
                    };
                    core.stats.inc(&core.stats.ok_requests);
                    close_after = !req.keep_alive;
                    let buffered_body = (buf.len() - req.head_len) as u64;
                    let body = req.body_len.min(buffered_body);
                    discard = req.body_len - body;
                    (req.head_len + body as usize, reply)
                }
            };
            buf.drain(..consumed);
            out.push(reply);
            served += 1;
        }
        if !flush(stream, out).await || close_after {
            return End::Closed;
        }
        if buf.is_empty() {
            core.put_buffer(std::mem::take(buf));
        }

        // Need more bytes: the rest of a body to throw away, or the next request head.
        let deadline = Instant::now() + cfg.header_timeout;
        loop {
            let idle = buf.is_empty() && discard == 0;
            match read_more(core, stream, buf, deadline).await {
                Ok(()) => {}
                Err(NoMore::Closed) => return End::Closed,
                // A kept-alive connection that stays silent is closed without a word.
                Err(NoMore::Timeout) if idle && served > 0 => return End::Closed,
                Err(NoMore::Timeout) => return End::Reject(Reject::Timeout),
            }
            if discard > 0 {
                let n = (buf.len() as u64).min(discard);
                buf.drain(..n as usize);
                discard -= n;
                if discard > 0 {
                    continue;
                }
            }
            break;
        }
    }
}

/// Appends what the client sends next to `buf`, by `deadline`. A silent client holds no buffer:
/// we wait for readability first and take a buffer from the pool only when bytes are there.
async fn read_more(
    core: &Core,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), NoMore> {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    if buf.is_empty() {
        match monoio::time::timeout(remaining(), stream.readable(true)).await {
            Err(_) => return Err(NoMore::Timeout),
            Ok(Err(_)) => return Err(NoMore::Closed),
            Ok(Ok(())) => {}
        }
        if buf.capacity() == 0 {
            *buf = core.take_buffer();
        }
    }
    if buf.len() == buf.capacity() {
        // Only a head that is still incomplete gets here (parse refuses one at MAX_HEAD).
        buf.reserve_exact(MAX_HEAD.saturating_sub(buf.len()).max(1));
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let read = stream.read(std::mem::take(buf).slice_mut(len..cap));
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

/// Sends the stream head and hands the socket to the core's slab. The cap place is reserved.
async fn open_stream(core: &Core, mut stream: TcpStream, head: Bytes) {
    let write = stream.write_all(head);
    match monoio::time::timeout(core.cfg.header_timeout, write).await {
        Ok((Ok(_), _)) => {}
        _ => {
            core.cap.release();
            return;
        }
    }
    net::tune_stream(stream.as_raw_fd(), core.cfg.user_timeout);
    core.streams.insert(stream);
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
