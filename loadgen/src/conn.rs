//! One EventSource connection's life, as a browser would live it: connect, send the GET,
//! check the response head, parse the stream, and after the stream ends wait the
//! reconnection time and reconnect with `Last-Event-ID`. Failures are classified and
//! counted on the core's recorder; HTTP-level ones end the connection for good.
//!
//! Memory per connection is what this task holds: the socket, a small read buffer (it grows
//! only while a response head does not fit, and shrinks back), the parser and a few
//! fields. Every timestamp is taken once per read, not per event.
//!
//! In publish mode connection k asks for channel `c{(k / U) mod K}` (U URLs, so every
//! server gets subscribers of every channel) and its events go to the channel accounting
//! (its `Tally`, kept in the core's slot table rather than in this task);
//! `--reconnect-every` closes the stream from the core's schedule and this task reopens it
//! at once with `Last-Event-ID`.
//!
//! Failover, with several `--url`s: connection k starts on URL `k mod U`. When a
//! reconnection (after a stream ended, broke or was closed on schedule) fails at the
//! network level, the connection moves to the next URL at once, as a load balancer would
//! send it to another backend, trying each URL at most once before it waits the
//! reconnection delay again. The parser, and so the Last-Event-ID and the exactness
//! accounting, go with it. The time from the break to the head on the other URL is the
//! `failover` histogram. A first attempt that fails is not moved (nor retried): the
//! initial spread is the plan, and a server that is not up should show as failures.
//!
//! A reconnect storm (`--storm-at`) closes the stream from the core's storm task; this task
//! reopens it at once (or at its `--storm-rate` turn) with `Last-Event-ID`, like
//! `--reconnect-every`, and notes the new response head and the first event after it in the
//! connection's slot (`StormState`), timed from the drop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::channels::{Channels, EventId, Tally, RESET_EVENT};
use crate::engine::{Core, StormState};
use crate::http::{self, Framing, HeadError, Target};
use crate::metrics::{record, FailureKind, Recorder};
use crate::parser::{Dispatch, Event, Parser};
use crate::publish;

/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Per-connection state that survives reconnections.
struct Conn {
    parser: Parser,
    /// Highest numeric id seen.
    last_id: Option<u64>,
    last_event_at: Option<Instant>,
    ever_open: bool,
    /// Index in the core's slot table (publish mode, scheduled reconnections).
    slot: Option<usize>,
    /// The `--url` in use: `k mod U` at first, moved on by failover.
    at: u32,
    /// When the last open stream ended, and on which URL; taken when a stream opens again.
    broke: Option<(Instant, u32)>,
}

enum AttemptEnd {
    Failed(FailureKind, Option<String>),
    /// The stream ended after a 200: reconnect.
    StreamEnded,
    /// The run is over.
    Stopped,
}

fn failed_io(e: io::Error) -> AttemptEnd {
    let kind = FailureKind::of_io(&e);
    let message = (kind == FailureKind::Other).then(|| e.to_string());
    AttemptEnd::Failed(kind, message)
}

/// Runs connection number `k` of the plan until the end or a final failure.
pub async fn run(core: Rc<Core>, k: usize) {
    let plan = core.plan.clone();
    let urls = plan.targets.len();
    let source = (!plan.sources.is_empty()).then(|| plan.sources[(k / urls) % plan.sources.len()]);
    let slot = core.slot_of(k);
    if let Some(j) = slot {
        core.slots.borrow_mut()[j].alive = true;
    }
    let mut conn = Conn {
        parser: Parser::default(),
        last_id: None,
        last_event_at: None,
        ever_open: false,
        slot,
        at: (k % urls) as u32,
        broke: None,
    };
    let mut buf = Vec::with_capacity(plan.read_buffer);
    // URLs whose reconnection failed since the last stream or the last wait.
    let mut tried = 0;
    loop {
        let target = &plan.targets[conn.at as usize];
        let end = attempt(&core, target, source, &mut conn, &mut buf).await;
        if core.stopping.get() {
            break;
        }
        let scheduled = slot
            .is_some_and(|j| std::mem::take(&mut core.slots.borrow_mut()[j].reconnect_requested));
        if scheduled {
            // --reconnect-every closed it: reopen at once, as a page that calls close() and
            // opens a new EventSource (with the last event id) would.
            let c = &mut core.rec.borrow_mut().counters;
            c.reconnects += 1;
            c.scheduled_reconnects += 1;
            tried = 0;
            continue;
        }
        let storm =
            slot.is_some_and(|j| std::mem::take(&mut core.slots.borrow_mut()[j].storm_reopen));
        if storm {
            // The storm closed it: reopen at once (or at this connection's turn under
            // --storm-rate), as a page whose connection dropped would.
            core.rec.borrow_mut().counters.reconnects += 1;
            tried = 0;
            if let Some(storm) = plan.storm.filter(|s| s.rate.is_some()) {
                // Boxed: a rare wait should not grow every connection's resident future.
                Box::pin(monoio::time::sleep_until(monoio::time::Instant::from_std(
                    storm.reopen_of(k),
                )))
                .await;
                if core.stopping.get() {
                    break;
                }
            }
            continue;
        }
        match end {
            AttemptEnd::Stopped => break,
            AttemptEnd::StreamEnded => {
                core.rec.borrow_mut().counters.streams_ended += 1;
                tried = 0;
            }
            AttemptEnd::Failed(kind, message) => {
                let mut rec = core.rec.borrow_mut();
                rec.counters.fail(kind, message);
                if slot.is_some_and(|j| core.slots.borrow()[j].storm != StormState::Untouched) {
                    *rec.counters.storm_failed.entry(kind).or_default() += 1;
                }
                drop(rec);
                if kind.is_final() || !conn.ever_open {
                    break;
                }
                // Failover: the next URL at once, until each has failed once this round.
                tried += 1;
                conn.at = ((conn.at as usize + 1) % urls) as u32;
                if tried < urls {
                    if Instant::now() >= plan.hard_end() {
                        break;
                    }
                    core.rec.borrow_mut().counters.reconnects += 1;
                    continue;
                }
                tried = 0;
            }
        }
        let delay = conn
            .parser
            .retry_ms()
            .map_or(plan.retry_default, Duration::from_millis);
        let hard_end = plan.hard_end();
        let at = Instant::now()
            .checked_add(delay)
            .unwrap_or(hard_end)
            .min(hard_end);
        // Boxed: a rare wait should not grow every connection's resident future.
        Box::pin(monoio::time::sleep_until(monoio::time::Instant::from_std(
            at,
        )))
        .await;
        if core.stopping.get() || Instant::now() >= hard_end {
            break;
        }
        core.rec.borrow_mut().counters.reconnects += 1;
    }
    if let Some(j) = slot {
        let slot = &mut core.slots.borrow_mut()[j];
        slot.alive = false;
        if !core.stopping.get() {
            // Given up before the end: its failure is counted; nothing later is owed to it.
            slot.tally.on_gone();
        }
    }
    core.tasks.set(core.tasks.get() - 1);
}

/// Keeps a socket in the core's slab while it is open, so the end can shut it down.
struct Registered<'a> {
    core: &'a Core,
    key: usize,
}

impl<'a> Registered<'a> {
    fn new(core: &'a Core, fd: RawFd) -> Self {
        let key = core.sockets.borrow_mut().insert(fd);
        Registered { core, key }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.core.sockets.borrow_mut().remove(self.key);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A stream whose response head was accepted.
struct Opened<'a> {
    registered: Registered<'a>,
    stream: TcpStream,
    head: http::Head,
}

/// One connection attempt: the handshake runs in its own boxed future, so its large state
/// (connect, write, timeouts) is freed once the stream is open and the connection's resident
/// future only holds what reading the stream needs.
async fn attempt(
    core: &Core,
    target: &Target,
    source: Option<IpAddr>,
    conn: &mut Conn,
    buf: &mut Vec<u8>,
) -> AttemptEnd {
    let started = Instant::now();
    let Opened {
        registered,
        mut stream,
        head,
    } = match Box::pin(handshake(core, target, source, conn, buf, started)).await {
        Ok(opened) => opened,
        Err(end) => return end,
    };
    let opened_at = Instant::now();
    if let Some(j) = conn.slot {
        let slot = &mut core.slots.borrow_mut()[j];
        slot.fd = Some(stream.as_raw_fd());
        slot.tally.on_head();
    }
    let mut stream_state = StreamState {
        framing: head.framing,
        started,
        first_event_pending: true,
    };
    let mut done = feed(core, conn, &mut stream_state, &buf[head.len..]);
    if buf.capacity() > core.plan.read_buffer {
        *buf = Vec::with_capacity(core.plan.read_buffer);
    }
    while !done {
        buf.clear();
        let (res, b) = stream.read(std::mem::take(buf)).await;
        *buf = b;
        done = match res {
            Ok(0) | Err(_) => true,
            Ok(n) => feed(core, conn, &mut stream_state, &buf[..n]),
        };
    }
    conn.broke = Some((Instant::now(), conn.at));
    if let Some(j) = conn.slot {
        core.slots.borrow_mut()[j].fd = None;
    }
    drop(registered);
    drop(stream);
    let mut rec = core.rec.borrow_mut();
    rec.counters.open -= 1;
    conn.parser.end_of_stream();
    // In publish mode the missed events show a stream that went quiet; the interval says
    // nothing about when published events come.
    if core.stopping.get() && core.plan.channels.is_some() {
        AttemptEnd::Stopped
    } else if core.stopping.get() {
        // A stream that went quiet never shows a gap in its ids: catch it here.
        let last_activity = conn.last_event_at.map_or(opened_at, |t| t.max(opened_at));
        let quiet = core
            .stopped_at
            .get()
            .saturating_duration_since(last_activity);
        if quiet > core.plan.stall_after() {
            rec.counters.stalled_streams += 1;
        }
        AttemptEnd::Stopped
    } else {
        AttemptEnd::StreamEnded
    }
}

async fn handshake<'a>(
    core: &'a Core,
    target: &Target,
    source: Option<IpAddr>,
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    started: Instant,
) -> Result<Opened<'a>, AttemptEnd> {
    let plan = &core.plan;
    core.rec.borrow_mut().counters.attempted += 1;
    let stream =
        match monoio::time::timeout(plan.connect_timeout, connect(target.addr, source)).await {
            Err(_) => return Err(AttemptEnd::Failed(FailureKind::Timeout, None)),
            Ok(Err(e)) => return Err(failed_io(e)),
            Ok(Ok(s)) => s,
        };
    record(
        &mut core.rec.borrow_mut().histograms.connect,
        micros(started.elapsed()),
    );
    let registered = Registered::new(core, stream.as_raw_fd());
    let mut stream = stream;
    if core.stopping.get() {
        return Err(AttemptEnd::Stopped);
    }
    let _ = stream.set_nodelay(true);
    let request = match (&plan.channels, conn.slot) {
        (Some(channels), Some(j)) => {
            let channel = core.slots.borrow()[j].tally.channel as usize;
            let path = http::with_query(&target.path, "channel", &channels.names[channel]);
            target.request_to(&path, conn.parser.last_event_id())
        }
        _ => target.request(conn.parser.last_event_id()),
    };
    let (res, _) = stream.write_all(request).await;
    if let Err(e) = res {
        return Err(failed_io(e));
    }

    let head_deadline = monoio::time::Instant::from_std(Instant::now() + plan.connect_timeout);
    buf.clear();
    let head = loop {
        if buf.len() == buf.capacity() {
            if buf.capacity() >= MAX_HEAD {
                return Err(AttemptEnd::Failed(FailureKind::Protocol, None));
            }
            buf.reserve(buf.capacity().max(64));
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let read = stream.read(std::mem::take(buf).slice_mut(len..cap));
        let (res, slice) = match monoio::time::timeout_at(head_deadline, read).await {
            Ok(r) => r,
            Err(_) => {
                *buf = Vec::with_capacity(plan.read_buffer);
                return Err(AttemptEnd::Failed(FailureKind::Timeout, None));
            }
        };
        *buf = slice.into_inner();
        match res {
            Ok(0) if core.stopping.get() => return Err(AttemptEnd::Stopped),
            Ok(0) => return Err(AttemptEnd::Failed(FailureKind::Closed, None)),
            Ok(_) => {}
            Err(e) => return Err(failed_io(e)),
        }
        let kind = match http::parse_head(buf) {
            Ok(head) => break head,
            Err(HeadError::Partial) => continue,
            Err(HeadError::Status(_)) => FailureKind::BadStatus,
            Err(HeadError::ContentType) => FailureKind::BadContentType,
            Err(HeadError::Malformed) => FailureKind::Protocol,
        };
        return Err(AttemptEnd::Failed(kind, None));
    };
    {
        let mut rec = core.rec.borrow_mut();
        record(&mut rec.histograms.headers, micros(started.elapsed()));
        if let Some((at, from)) = conn.broke.take() {
            if from != conn.at {
                record(&mut rec.histograms.failover, micros(at.elapsed()));
                let urls = &plan.targets;
                rec.counters
                    .failover(&urls[from as usize].url, &urls[conn.at as usize].url);
            }
        }
        if let (Some(j), Some(storm)) = (conn.slot, plan.storm) {
            let slot = &mut core.slots.borrow_mut()[j];
            if let StormState::Dropped(at) = slot.storm {
                slot.storm = StormState::Reopened(at);
                record(&mut rec.histograms.storm_reconnect, micros(at.elapsed()));
                rec.counters.storm_reconnected += 1;
                let after = storm.after(Instant::now());
                rec.storm.last_reconnect_us = rec.storm.last_reconnect_us.max(Some(after));
            }
        }
        let c = &mut rec.counters;
        c.opened += 1;
        c.open += 1;
        c.peak_open = c.peak_open.max(c.open);
    }
    if let Some(server) = &head.server {
        core.server_banner
            .borrow_mut()
            .get_or_insert_with(|| server.clone());
    }
    conn.ever_open = true;
    Ok(Opened {
        registered,
        stream,
        head,
    })
}

struct StreamState {
    framing: Framing,
    started: Instant,
    first_event_pending: bool,
}

/// Hands one read's bytes to the framing and the parser; returns whether the stream is over
/// (body complete or unusable).
fn feed(core: &Core, conn: &mut Conn, st: &mut StreamState, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        // Nothing to parse; only an empty `Content-Length: 0` body is already complete.
        return matches!(st.framing, Framing::Length(0));
    }
    let plan = &core.plan;
    let now = Instant::now();
    let wall_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, micros);
    let measuring = now >= plan.measure_from;
    let mut rec = core.rec.borrow_mut();
    let rec = &mut *rec;
    let Conn {
        parser,
        last_id,
        last_event_at,
        slot,
        ..
    } = conn;
    let first_event_pending = &mut st.first_event_pending;
    let events_before = rec.counters.events;
    let started = st.started;
    let channels = plan.channels.as_deref();
    let mut slots = slot.map(|_| core.slots.borrow_mut());
    let mut tally = match (&mut slots, *slot, channels) {
        (Some(slots), Some(j), Some(_)) => Some(&mut slots[j].tally),
        _ => None,
    };
    let result = st.framing.decode(bytes, |body| {
        rec.counters.bytes += body.len() as u64;
        parser.feed_dispatches(body, |d| {
            let e = match d {
                Dispatch::Id(position) => {
                    if let Some(t) = tally.as_deref_mut() {
                        t.on_position(position);
                    }
                    return;
                }
                Dispatch::Event(e) => e,
            };
            let published = match (channels, tally.as_deref_mut()) {
                (Some(ch), Some(t)) => on_channel_event(
                    rec,
                    e,
                    now,
                    wall_us,
                    measuring,
                    plan.timestamp_in_data,
                    ch,
                    t,
                    last_event_at,
                ),
                _ => false,
            };
            if !published {
                on_event(
                    rec,
                    e,
                    now,
                    wall_us,
                    measuring,
                    plan.interval_us,
                    last_id,
                    last_event_at,
                );
            }
            if *first_event_pending {
                *first_event_pending = false;
                record(&mut rec.histograms.first_event, micros(now - started));
            }
        })
    });
    if let (Some(slots), Some(j), Some(storm)) = (&mut slots, *slot, plan.storm) {
        // The first event after the storm's drop: this stream is back.
        if let StormState::Reopened(at) = slots[j].storm {
            if rec.counters.events > events_before {
                slots[j].storm = StormState::Untouched;
                record(&mut rec.histograms.storm_recovery, micros(now - at));
                rec.counters.storm_recovered += 1;
                rec.storm.last_back_us = rec.storm.last_back_us.max(Some(storm.after(now)));
            }
        }
    }
    // A body error or an over-long line ends the stream like a network error would.
    result.unwrap_or(true)
}

#[allow(clippy::too_many_arguments)]
fn on_event(
    rec: &mut Recorder,
    e: Event<'_>,
    now: Instant,
    wall_us: u64,
    measuring: bool,
    interval_us: u64,
    last_id: &mut Option<u64>,
    last_event_at: &mut Option<Instant>,
) {
    let c = &mut rec.counters;
    c.events += 1;
    let own_id = if e.has_own_id {
        e.last_event_id.parse::<u64>().ok()
    } else {
        None
    };
    match own_id {
        Some(id) => {
            let scheduled = id.saturating_mul(interval_us);
            let latency = wall_us.checked_sub(scheduled).unwrap_or_else(|| {
                c.early_events += 1;
                0
            });
            if measuring {
                record(&mut rec.histograms.delivery, latency);
                crate::metrics::record_tick(&mut rec.ticks, id, wall_us);
            }
            match *last_id {
                Some(prev) if id == prev + 1 => {}
                Some(prev) if id > prev => c.missed_ids += id - prev - 1,
                Some(_) => c.duplicates += 1,
                None => {}
            }
            if last_id.is_none_or(|prev| id > prev) {
                *last_id = Some(id);
            }
        }
        None => c.unnumbered_events += 1,
    }
    if let (Some(prev), true) = (*last_event_at, measuring) {
        record(&mut rec.histograms.gap, micros(now - prev));
    }
    *last_event_at = Some(now);
}

/// A channel stream's event in publish mode. Returns false when it is no published event
/// (no `<ms>-<seq>` id, without `--timestamp-in-data`): the tick accounting takes it then.
#[allow(clippy::too_many_arguments)]
fn on_channel_event(
    rec: &mut Recorder,
    e: Event<'_>,
    now: Instant,
    wall_us: u64,
    measuring: bool,
    timestamp_in_data: bool,
    channels: &Channels,
    tally: &mut Tally,
    last_event_at: &mut Option<Instant>,
) -> bool {
    let c = &mut rec.counters;
    if e.event_type == RESET_EVENT {
        c.events += 1;
        c.publish_resets += 1;
        tally.on_reset();
        return true;
    }
    let id = if e.has_own_id {
        EventId::parse(e.last_event_id)
    } else {
        None
    };
    let sent_us = if timestamp_in_data {
        publish::timestamp_of(e.data)
    } else {
        id.map(|id| id.ms.saturating_mul(1000))
    };
    if !timestamp_in_data && id.is_none() {
        return false;
    }
    c.events += 1;
    c.publish_events += 1;
    match sent_us {
        Some(sent) => {
            let latency = wall_us.checked_sub(sent).unwrap_or_else(|| {
                c.early_events += 1;
                0
            });
            if measuring {
                record(&mut rec.histograms.publish_delivery, latency);
            }
        }
        None => c.unnumbered_events += 1,
    }
    if let (Some(prev), true) = (*last_event_at, measuring) {
        record(&mut rec.histograms.gap, micros(now - prev));
    }
    *last_event_at = Some(now);
    if let Some(id) = id {
        let list = channels.list(tally.channel as usize);
        tally.on_event(id, &list);
    }
    true
}

/// TCP connect, bound to `source` when given. monoio's own connect is used when no source
/// is needed; otherwise the socket is made, bound and connected non-blocking by hand and
/// handed to monoio once writable (io_uring wants blocking sockets, epoll non-blocking).
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_addr(addr).await;
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_nonblocking(true)?;
    // Let the kernel pick the port at connect time, per (source, destination) pair, so
    // one source address serves several destinations.
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = socket.into();
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    if !monoio::utils::is_legacy() {
        set_blocking(stream.as_raw_fd())?;
    }
    Ok(stream)
}

fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every open connection holds one of these futures: keep it well inside the
    /// per-connection memory budget (2 KiB with the read buffer and the parser's strings).
    #[test]
    fn connection_future_stays_small() {
        use std::sync::Arc;
        let plan = Arc::new(crate::engine::Plan {
            targets: vec![crate::http::Target::parse("http://127.0.0.1:1/").unwrap()],
            sources: vec![],
            connections: 1,
            rate: 1.0,
            threads: 1,
            driver: crate::cli::Driver::Epoll,
            ring_entries: 64,
            start: std::time::Instant::now(),
            ramp_end: std::time::Instant::now(),
            measure_from: std::time::Instant::now(),
            end: std::time::Instant::now(),
            interval_us: 1,
            retry_default: std::time::Duration::from_secs(1),
            connect_timeout: std::time::Duration::from_secs(1),
            read_buffer: 512,
            channels: Some(std::sync::Arc::new(crate::channels::Channels::new(3))),
            timestamp_in_data: false,
            reconnect_every: Some(std::time::Duration::from_secs(1)),
            drain: std::time::Duration::from_secs(2),
            storm: Some(crate::engine::StormPlan {
                at: std::time::Instant::now(),
                rate: Some(10.0),
            }),
        });
        let core = std::rc::Rc::new(crate::engine::Core {
            plan,
            rec: Default::default(),
            sockets: Default::default(),
            stopping: Default::default(),
            stopped_at: std::cell::Cell::new(std::time::Instant::now()),
            tasks: Default::default(),
            server_banner: Default::default(),
            slots: std::cell::RefCell::new(vec![Default::default()]),
        });
        let future = super::run(core, 0);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "connection future is {size} bytes");
    }
}

#[cfg(test)]
mod event_tests {
    use std::time::{Duration, Instant};

    use super::on_event;
    use crate::metrics::Recorder;
    use crate::parser::Event;

    const INTERVAL_US: u64 = 100_000;

    struct Stream {
        rec: Recorder,
        last_id: Option<u64>,
        last_event_at: Option<Instant>,
        t0: Instant,
    }

    impl Stream {
        fn new() -> Self {
            Stream {
                rec: Recorder::default(),
                last_id: None,
                last_event_at: None,
                t0: Instant::now(),
            }
        }

        /// Event `id` arriving `late_us` after its scheduled time.
        fn event(&mut self, id: &str, late_us: i64, measuring: bool) {
            let scheduled = id.parse::<u64>().map_or(0, |n| n * INTERVAL_US);
            let wall_us = scheduled.saturating_add_signed(late_us);
            let now = self.t0 + Duration::from_micros(wall_us % 10_000_000_000);
            let e = Event {
                event_type: "message",
                data: "hello",
                last_event_id: id,
                has_own_id: !id.is_empty(),
            };
            on_event(
                &mut self.rec,
                e,
                now,
                wall_us,
                measuring,
                INTERVAL_US,
                &mut self.last_id,
                &mut self.last_event_at,
            );
        }
    }

    #[test]
    fn sequence_gaps_duplicates_and_latency() {
        let mut s = Stream::new();
        s.event("10", 1500, true);
        s.event("11", 2500, true);
        s.event("14", 500, true); // 12 and 13 never came
        s.event("13", 500, true); // late and out of order: not above 14
        s.event("15", -200, true); // before its time: clock skew
        s.event("abc", 0, true);
        let c = &s.rec.counters;
        assert_eq!(c.events, 6);
        assert_eq!(c.missed_ids, 2);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.early_events, 1);
        assert_eq!(c.unnumbered_events, 1);
        let h = &s.rec.histograms;
        assert_eq!(h.delivery.len(), 5);
        assert_eq!(h.delivery.max(), h.delivery.highest_equivalent(2500));
        assert_eq!(h.gap.len(), 5);
    }

    #[test]
    fn warmup_events_count_but_are_not_recorded() {
        let mut s = Stream::new();
        s.event("1", 1000, false);
        s.event("2", 1000, false);
        s.event("4", 1000, true);
        assert_eq!(s.rec.counters.events, 3);
        assert_eq!(s.rec.counters.missed_ids, 1);
        assert_eq!(s.rec.histograms.delivery.len(), 1);
        assert_eq!(s.rec.histograms.gap.len(), 1);
    }
}

#[cfg(test)]
mod channel_event_tests {
    use std::time::Instant;

    use super::on_channel_event;
    use crate::channels::{Channels, EventId, Tally};
    use crate::metrics::Recorder;
    use crate::parser::Event;

    const MS: u64 = 1_700_000_000_000;

    fn event<'a>(event_type: &'a str, data: &'a str, id: &'a str, own: bool) -> Event<'a> {
        Event {
            event_type,
            data,
            last_event_id: id,
            has_own_id: own,
        }
    }

    #[test]
    fn latency_from_the_id_accounting_resets_and_ticks() {
        let channels = Channels::new(1);
        for seq in 0..3 {
            channels.record(0, EventId { ms: MS, seq });
        }
        let mut tally = Tally::new(0);
        tally.on_head();
        tally.on_position(&format!("{}-0", MS - 1));
        let mut rec = Recorder::default();
        let mut at = None;
        let now = Instant::now();
        let wall = MS * 1000 + 2500;
        let id0 = format!("{MS}-0");
        let e = event("message", "e0", &id0, true);
        assert!(on_channel_event(
            &mut rec, e, now, wall, true, false, &channels, &mut tally, &mut at
        ));
        let h = &rec.histograms.publish_delivery;
        assert_eq!(
            (h.len(), h.max()),
            (1, h.highest_equivalent(2500)),
            "receive time minus the id's milliseconds"
        );
        assert_eq!(rec.histograms.delivery.len(), 0);
        // a reset (no id line of its own) is counted, not taken as a published event
        let reset = event("ringcast-reset", "{\"reason\":\"evicted\"}", &id0, false);
        assert!(on_channel_event(
            &mut rec, reset, now, wall, true, false, &channels, &mut tally, &mut at
        ));
        assert_eq!(rec.counters.publish_resets, 1);
        assert_eq!((rec.counters.events, rec.counters.publish_events), (2, 1));
        // a tick on a channel stream is left to the tick accounting
        let tick = event("message", "hello", "850000000", true);
        assert!(!on_channel_event(
            &mut rec, tick, now, wall, true, false, &channels, &mut tally, &mut at
        ));
        // after the reset, the next event starts the expectation again
        let id2 = format!("{MS}-2");
        let e = event("message", "e2", &id2, true);
        on_channel_event(
            &mut rec, e, now, wall, false, false, &channels, &mut tally, &mut at,
        );
        assert_eq!(
            rec.histograms.publish_delivery.len(),
            1,
            "warmup: not recorded"
        );
        let f = tally.finish(&channels.list(0));
        assert_eq!((f.expected, f.received, f.missed), (2, 2, 0));
    }

    #[test]
    fn latency_from_the_data_when_ids_are_the_servers_own() {
        let channels = Channels::new(1);
        let mut tally = Tally::new(0);
        tally.on_head();
        let mut rec = Recorder::default();
        let mut at = None;
        let sent = MS * 1000;
        let data = format!("{sent} e7");
        let e = event("message", &data, "1450755280:0", true);
        assert!(on_channel_event(
            &mut rec,
            e,
            Instant::now(),
            sent + 700,
            true,
            true,
            &channels,
            &mut tally,
            &mut at
        ));
        let h = &rec.histograms.publish_delivery;
        assert_eq!((h.len(), h.max()), (1, h.highest_equivalent(700)));
        // data without a timestamp: counted, no latency
        let e = event("message", "hello", "1450755280:1", true);
        on_channel_event(
            &mut rec,
            e,
            Instant::now(),
            sent,
            true,
            true,
            &channels,
            &mut tally,
            &mut at,
        );
        assert_eq!(rec.counters.publish_events, 2);
        assert_eq!(rec.counters.unnumbered_events, 1);
        assert_eq!(tally.finish(&channels.list(0)).expected, 0);
    }
}
