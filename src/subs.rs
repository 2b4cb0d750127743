//! One core's channel streams: who is subscribed to what, and the frames each one still has to
//! receive.
//!
//! A channel stream is a slab slot like a tick stream, plus its channels and a queue. The core
//! keeps a channel → members index, so a publish costs work in proportion to that channel's
//! subscribers on this core, not to all streams. A published event is *queued* (a clone of its
//! shared `Bytes`, never a copy) on every member, and members with no write in flight go on the
//! core's ready list; the core loop (`streams.rs`) starts their writes in bounded batches, as the
//! tick walk does. A member whose write is still pending keeps queuing, up to
//! `--max-queued-bytes`; past that it is closed (its reconnect replays from the history, so
//! nothing is lost while the history holds). Ticks skip, events never do.
//!
//! Joining without a gap or a duplicate: events reach a core through its inbox in id order, and
//! the core handles each one completely (queues it on every member) before it looks at anything
//! else. A stream that opens on this core reads the history up to the core's *position* (the last
//! event it handled) and joins the index in the same synchronous step, so everything after the
//! position reaches it live and nothing at or before it does.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures::channel::mpsc as fmpsc;
use monoio::net::TcpStream;
use slab::Slab;

use crate::engine::{Engine, ReplayDone, ReplayJob};
use crate::event::{position_frame, Event, EventId};
use crate::history::{Replay, ResetReason};
use crate::http::Subscription;
use crate::hub::Hub;
use crate::metrics::{CloseReason, WorkerStats};
use crate::net;
use crate::parked::Parked;
use crate::streams::Permit;

/// Why a stream is being closed while its write is still pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abort {
    Open,
    Closing(CloseReason),
}

struct Sub {
    /// `None` while a write is in flight.
    stream: Option<Parked>,
    fd: RawFd,
    state: Abort,
    /// On the core's ready list.
    ready: bool,
    /// Waiting for its replay from the engine: live events queue, nothing is written yet.
    held: bool,
    /// Tells a reused slab key from the stream an engine replay was asked for.
    serial: u64,
    /// Consecutive heartbeats skipped because a write was pending.
    skips: u8,
    /// An event (or its opening frames) was queued since the last heartbeat walk: the stream
    /// was not silent, so that walk passes it by.
    active: bool,
    /// The last event queued here (one event on several of its channels is queued once).
    stamp: u32,
    /// Bytes queued, and how many of them are the replay it opened with (which does not count
    /// against `--max-queued-bytes`).
    queued: usize,
    replay_left: usize,
    queue: Frames,
    /// (channel key, member key in that channel) for each subscribed channel.
    member_of: Membership,
    /// Its place under the cap, given back with the slot.
    _permit: Permit,
}

/// A stream's frames still to write. None or one need no allocation (the common case: an event
/// arrives while the stream is idle); a deque only exists while frames wait behind a pending
/// write, and is freed as soon as it is down to one.
#[derive(Default)]
enum Frames {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl Frames {
    fn is_empty(&self) -> bool {
        matches!(self, Frames::Empty)
    }

    fn push_back(&mut self, f: Bytes) {
        *self = match std::mem::take(self) {
            Frames::Empty => Frames::One(f),
            Frames::One(a) => Frames::Many(VecDeque::from([a, f])),
            Frames::Many(mut q) => {
                q.push_back(f);
                Frames::Many(q)
            }
        }
    }

    fn push_front(&mut self, f: Bytes) {
        *self = match std::mem::take(self) {
            Frames::Empty => Frames::One(f),
            Frames::One(a) => Frames::Many(VecDeque::from([f, a])),
            Frames::Many(mut q) => {
                q.push_front(f);
                Frames::Many(q)
            }
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Frames::Empty => None,
            Frames::One(a) => Some(a),
            Frames::Many(mut q) => {
                let f = q.pop_front();
                *self = match q.len() {
                    0 => Frames::Empty,
                    1 => Frames::One(q.pop_front().unwrap_or_default()),
                    _ => Frames::Many(q),
                };
                f
            }
        }
    }
}

impl From<VecDeque<Bytes>> for Frames {
    fn from(mut q: VecDeque<Bytes>) -> Self {
        match q.len() {
            0 => Frames::Empty,
            1 => Frames::One(q.pop_front().unwrap_or_default()),
            _ => Frames::Many(q),
        }
    }
}

/// Where a stream sits in the channel index: (channel key, member key) per channel. One channel
/// (the common case) is held inline, so a stream has no heap allocation of its own.
enum Membership {
    One([(u32, u32); 1]),
    Many(Box<[(u32, u32)]>),
}

impl Membership {
    fn as_slice(&self) -> &[(u32, u32)] {
        match self {
            Membership::One(one) => one,
            Membership::Many(many) => many,
        }
    }
}

struct Channel {
    name: Box<str>,
    members: Slab<u32>,
}

#[derive(Default)]
struct Index {
    by_name: HashMap<Box<str>, u32>,
    channels: Slab<Channel>,
}

/// A wake-up from the core's connection tasks to its loop (same thread).
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ready once `notify` was called since the last time it was.
    pub fn poll_notified(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.set.replace(false) {
            Poll::Ready(())
        } else {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// The channel streams of one core.
pub struct Subs {
    slab: RefCell<Slab<Sub>>,
    index: RefCell<Index>,
    ready: RefCell<VecDeque<usize>>,
    /// The last event this core handled (the hub's start before any), and its `id:` frame,
    /// made once per position rather than once per stream.
    position: Cell<EventId>,
    position_frame: RefCell<(EventId, Bytes)>,
    stamp: Cell<u32>,
    serial: Cell<u64>,
    pub notify: Notify,
    hub: Arc<Hub>,
    /// Cluster mode: the engine completes replays the history cannot, answering on `replies`.
    engine: Option<(Arc<Engine>, fmpsc::UnboundedSender<ReplayDone>)>,
    stats: Arc<WorkerStats>,
    max_queued: usize,
    max_skips: u8,
    /// Streams resuming from an id this core has not reached yet (it was sequenced, and another
    /// core already delivered it): they join once this core's position reaches it, so that
    /// nothing at or before it is sent again. Rare and short-lived.
    waiting: RefCell<Vec<(EventId, TcpStream, Subscription, Permit)>>,
}

impl Subs {
    pub fn new(
        hub: Arc<Hub>,
        engine: Option<(Arc<Engine>, fmpsc::UnboundedSender<ReplayDone>)>,
        stats: Arc<WorkerStats>,
        max_queued: usize,
        max_skips: u8,
    ) -> Self {
        Subs {
            serial: Cell::new(0),
            engine,
            slab: RefCell::new(Slab::new()),
            index: RefCell::new(Index::default()),
            ready: RefCell::new(VecDeque::new()),
            position: Cell::new(hub.start()),
            position_frame: RefCell::new((hub.start(), position_frame(hub.start()))),
            stamp: Cell::new(0),
            notify: Notify::default(),
            hub,
            stats,
            max_queued,
            max_skips,
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// Adds a stream whose head was sent, with its place under the cap. It first gets
    /// the replay (if it resumes), then `id: <position>`, then live events. When this node's
    /// history cannot complete the replay and an engine can, the stream joins now (so live events
    /// queue on it) but is held until the engine's replay comes back to be put in front of them.
    pub fn open(&self, stream: TcpStream, sub: Subscription, permit: Permit) {
        let position = self.position.get();
        if let Some(after) = sub
            .last_event_id
            .as_deref()
            .and_then(|l| EventId::parse(l).ok())
            .filter(|&id| id > position && id <= self.hub.last_id())
        {
            // The client saw an event this core's inbox has not handed over yet: wait for it.
            self.waiting.borrow_mut().push((after, stream, sub, permit));
            return;
        }
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        let mut held = None;
        let mut queue = VecDeque::new();
        if let Some(last) = sub.last_event_id.as_deref() {
            let replay = self.hub.replay(&sub.channels, last, position);
            let after = EventId::parse(last).ok();
            match (&self.engine, replay.reset, after) {
                (
                    Some((engine, reply)),
                    Some(ResetReason::Evicted | ResetReason::BeforeStart),
                    Some(after),
                ) => {
                    held = Some((engine.clone(), reply.clone(), after, replay));
                }
                _ => queue = self.opening(replay, last, position),
            }
        } else {
            queue.push_back(self.position_frame(position));
        }
        let queued: usize = queue.iter().map(Bytes::len).sum();

        let mut slab = self.slab.borrow_mut();
        let entry = slab.vacant_entry();
        let key = entry.key();
        let member_of = self.index.borrow_mut().join(&sub.channels, key);
        let ready = held.is_none();
        entry.insert(Sub {
            fd: stream.as_raw_fd(),
            stream: Some(Parked::new(stream)),
            state: Abort::Open,
            ready,
            held: !ready,
            serial,
            skips: 0,
            active: true,
            stamp: self.stamp.get(),
            queued,
            replay_left: queued,
            queue: queue.into(),
            member_of,
            _permit: permit,
        });
        drop(slab);
        self.stats.stream_opened();
        self.stats.inc(&self.stats.channel_streams_open);
        match held {
            None => {
                self.ready.borrow_mut().push_back(key);
                self.notify.notify();
            }
            Some((engine, reply, after, local)) => engine.replay(ReplayJob {
                channels: sub.channels,
                after,
                upto: position,
                local,
                key,
                serial,
                reply,
            }),
        }
    }

    /// The frames a resuming stream opens with: the reset (if any), the replay, the position.
    fn opening(&self, replay: Replay, last: &[u8], position: EventId) -> VecDeque<Bytes> {
        let mut queue = VecDeque::new();
        if let Some(why) = replay.reset {
            self.stats.inc(&self.stats.replay_resets);
            tracing::debug!(reason = why.as_str(), last_event_id = %String::from_utf8_lossy(last),
                "resume incomplete: ringcast-reset");
            queue.push_back(reset_frame(why, last, position, replay.events.len()));
        }
        self.stats
            .add(&self.stats.events_replayed, replay.events.len() as u64);
        queue.extend(replay.events.iter().map(|e| e.frame.clone()));
        queue.push_back(self.position_frame(position));
        queue
    }

    /// `id: <position>`, shared by every stream that opens at the current position.
    fn position_frame(&self, position: EventId) -> Bytes {
        if position != self.position.get() {
            return position_frame(position); // an older one (an engine replay's)
        }
        let mut cached = self.position_frame.borrow_mut();
        if cached.0 != position {
            *cached = (position, position_frame(position));
        }
        cached.1.clone()
    }

    /// The engine's answer for a held stream: its replay goes in front of the live events that
    /// queued meanwhile, and the stream is released.
    pub fn finish_replay(&self, done: ReplayDone) {
        let mut slab = self.slab.borrow_mut();
        let Some(sub) = slab.get_mut(done.key) else {
            return;
        };
        if sub.serial != done.serial || !sub.held {
            return; // that stream is gone (its key was reused)
        }
        sub.held = false;
        if sub.state != Abort::Open {
            return;
        }
        let last = done.after.to_string();
        let opening = self.opening(done.replay, last.as_bytes(), done.upto);
        let bytes: usize = opening.iter().map(Bytes::len).sum();
        for frame in opening.into_iter().rev() {
            sub.queue.push_front(frame);
        }
        sub.queued += bytes;
        sub.replay_left += bytes;
        if sub.stream.is_some() && !sub.ready {
            sub.ready = true;
            self.ready.borrow_mut().push_back(done.key);
            self.notify.notify();
        }
    }

    /// Queues a published event on every stream of its channels on this core (once per stream).
    /// Synchronous on purpose: see the module docs.
    pub fn deliver(&self, event: &Event) {
        self.position.set(event.id);
        let stamp = self.stamp.get().wrapping_add(1);
        self.stamp.set(stamp);
        let index = self.index.borrow();
        let mut slab = self.slab.borrow_mut();
        let mut ready = self.ready.borrow_mut();
        let mut reached = 0;
        for name in event.channels.iter() {
            let Some(&ch) = index.by_name.get(name) else {
                continue;
            };
            for (_, &key) in index.channels[ch as usize].members.iter() {
                let key = key as usize;
                let sub = &mut slab[key];
                if sub.stamp == stamp {
                    continue;
                }
                sub.stamp = stamp;
                sub.active = true;
                self.enqueue(sub, key, event.frame.clone(), &mut ready);
                reached += 1;
            }
        }
        self.stats.add(&self.stats.events_delivered, reached);
        drop((index, slab, ready));
        self.release_waiting();
    }

    /// Opens the waiting streams whose resume id this core has now reached.
    fn release_waiting(&self) {
        let position = self.position.get();
        let due: Vec<_> = {
            let mut waiting = self.waiting.borrow_mut();
            if waiting.is_empty() {
                return;
            }
            let (due, rest) = std::mem::take(&mut *waiting)
                .into_iter()
                .partition(|(after, ..)| *after <= position);
            *waiting = rest;
            due
        };
        for (_, stream, sub, permit) in due {
            self.open(stream, sub, permit);
        }
    }

    fn enqueue(&self, sub: &mut Sub, key: usize, frame: Bytes, ready: &mut VecDeque<usize>) {
        if sub.state != Abort::Open {
            return;
        }
        if sub.queued - sub.replay_left + frame.len() > self.max_queued {
            self.abort(sub, key, CloseReason::QueueFull, ready);
            return;
        }
        sub.queued += frame.len();
        sub.queue.push_back(frame);
        if sub.stream.is_some() && !sub.ready && !sub.held {
            sub.ready = true;
            ready.push_back(key);
        }
    }

    /// Closes a stream that must go: at once if it is idle, else by shutting its socket down
    /// under the pending write, which then fails and comes back through `complete`.
    fn abort(&self, sub: &mut Sub, key: usize, why: CloseReason, ready: &mut VecDeque<usize>) {
        sub.state = Abort::Closing(why);
        sub.queue = Frames::Empty;
        sub.queued = 0;
        sub.replay_left = 0;
        net::abort(sub.fd);
        if sub.stream.is_some() && !sub.ready {
            // Idle (its next write not started yet): `next_write` sees the state and removes it.
            sub.ready = true;
            ready.push_back(key);
        }
    }

    /// Queues the heartbeat on every stream that has been silent since the last heartbeat walk
    /// (one that was sent an event meanwhile needs none: no stream is silent for longer than
    /// two heartbeat intervals). A stream whose write is still pending skips it, and is closed
    /// after `--max-skips` consecutive skips (it does not read).
    pub fn heartbeat(&self, frame: &Bytes) {
        let mut slab = self.slab.borrow_mut();
        let mut ready = self.ready.borrow_mut();
        let mut closing = Vec::new();
        for (key, sub) in slab.iter_mut() {
            if sub.state != Abort::Open {
                continue;
            }
            if sub.stream.is_none() {
                sub.skips = sub.skips.saturating_add(1);
                self.stats.inc(&self.stats.heartbeats_skipped);
                if sub.skips >= self.max_skips {
                    closing.push(key);
                }
            } else if std::mem::take(&mut sub.active) {
                self.stats.inc(&self.stats.heartbeats_not_needed);
            } else if sub.queue.is_empty() {
                self.enqueue(sub, key, frame.clone(), &mut ready);
            }
        }
        for key in closing {
            self.abort(&mut slab[key], key, CloseReason::SkipsExceeded, &mut ready);
        }
    }

    /// Whether some stream waits for its next write to start.
    pub fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Writes the ready frames with direct non-blocking `send`s when at most `max` streams are
    /// ready. A few frames cost less this way than through
    /// the ring: no write future, no submission, no completion to collect (bench/publish.sh's
    /// `many` case, a core handing out about ten frames per event, measured it). What does not
    /// go whole (a full send buffer, a partial send, an error) stays ready, with the rest of
    /// its frame in front, for a ring write, whose completion or error is then handled as
    /// always. Only parked sockets are written: never one with a write in flight.
    pub fn write_direct(&self, max: usize) {
        if self.ready.borrow().len() > max {
            return;
        }
        let mut slab = self.slab.borrow_mut();
        let mut ready = self.ready.borrow_mut();
        let mut for_ring = Vec::new();
        while let Some(key) = ready.pop_front() {
            let Some(sub) = slab.get_mut(key) else {
                continue;
            };
            if !sub.ready || sub.stream.is_none() || sub.state != Abort::Open || sub.held {
                // Stale, in flight, closing or held: `next_write` sorts these out.
                for_ring.push(key);
                continue;
            }
            while let Some(frame) = sub.queue.pop_front() {
                let n = net::try_send(sub.fd, &frame);
                sub.queued -= n;
                sub.replay_left = sub.replay_left.saturating_sub(n);
                if n < frame.len() {
                    sub.queue.push_front(frame.slice(n..));
                    break;
                }
                self.stats.inc(&self.stats.frames_sent);
                self.stats.inc(&self.stats.frames_sent_direct);
                self.stats.add(&self.stats.bytes_sent, n as u64);
                sub.skips = 0;
            }
            if sub.queue.is_empty() {
                sub.ready = false;
            } else {
                for_ring.push(key);
            }
        }
        ready.extend(for_ring);
    }

    /// The next write to start: (key, socket, frame). Streams closed meanwhile are removed here.
    pub fn next_write(&self) -> Option<(usize, TcpStream, Bytes)> {
        let mut slab = self.slab.borrow_mut();
        loop {
            let key = self.ready.borrow_mut().pop_front()?;
            let Some(sub) = slab.get_mut(key) else {
                continue;
            };
            if !sub.ready {
                continue; // a stale entry of a key that was reused
            }
            sub.ready = false;
            if sub.held && sub.state == Abort::Open {
                continue; // released by `finish_replay`
            }
            if let Abort::Closing(why) = sub.state {
                if sub.stream.is_some() {
                    self.remove(&mut slab, key, why);
                }
                continue;
            }
            let Some(frame) = sub.queue.pop_front() else {
                continue;
            };
            sub.queued -= frame.len();
            sub.replay_left = sub.replay_left.saturating_sub(frame.len());
            let Some(parked) = sub.stream.take() else {
                continue;
            };
            match parked.take() {
                Ok(stream) => return Some((key, stream, frame)),
                Err(e) => self.remove(&mut slab, key, CloseReason::from_write_error(&e)),
            }
        }
    }

    /// A write ended: the socket goes back (and the next frame, if any, is ready), or the
    /// stream is removed.
    pub fn complete(&self, key: usize, stream: TcpStream, result: io::Result<usize>) {
        let mut slab = self.slab.borrow_mut();
        let Some(sub) = slab.get_mut(key) else {
            return; // closed at shutdown while the write was in flight
        };
        match (result, sub.state) {
            (Ok(n), Abort::Open) => {
                self.stats.inc(&self.stats.frames_sent);
                self.stats.add(&self.stats.bytes_sent, n as u64);
                sub.stream = Some(Parked::new(stream));
                sub.skips = 0;
                if !sub.queue.is_empty() && !sub.held {
                    sub.ready = true;
                    self.ready.borrow_mut().push_back(key);
                }
            }
            (_, Abort::Closing(why)) => self.remove(&mut slab, key, why),
            (Err(e), Abort::Open) => {
                let why = CloseReason::from_write_error(&e);
                tracing::debug!(key, error = %e, ?why, "channel stream closed");
                self.remove(&mut slab, key, why);
            }
        }
    }

    fn remove(&self, slab: &mut Slab<Sub>, key: usize, why: CloseReason) {
        let sub = slab.remove(key); // its permit goes with it
        self.index.borrow_mut().leave(&sub.member_of);
        self.stats.stream_closed(why);
        self.stats.dec(&self.stats.channel_streams_open);
    }

    /// Removes every idle channel stream whose client has gone (see `Streams::reap_gone`).
    pub fn reap_gone(&self) -> usize {
        let mut slab = self.slab.borrow_mut();
        let gone: Vec<usize> = slab
            .iter()
            .filter(|(_, s)| s.stream.is_some() && s.state == Abort::Open && net::peer_gone(s.fd))
            .map(|(k, _)| k)
            .collect();
        for &key in &gone {
            self.remove(&mut slab, key, CloseReason::ClientGone);
        }
        gone.len()
    }

    /// Closes every stream (at shutdown).
    pub fn close_all(&self) {
        for _ in self.waiting.borrow_mut().drain(..) {
            self.stats.stream_closed(CloseReason::Shutdown);
        }
        let mut slab = self.slab.borrow_mut();
        let keys: Vec<usize> = slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove(&mut slab, key, CloseReason::Shutdown);
        }
    }
}

impl Index {
    fn join(&mut self, names: &[Box<str>], key: usize) -> Membership {
        let places: Vec<(u32, u32)> = names
            .iter()
            .map(|name| {
                let ch = match self.by_name.get(name) {
                    Some(&ch) => ch,
                    None => {
                        let ch = self.channels.insert(Channel {
                            name: name.clone(),
                            members: Slab::new(),
                        }) as u32;
                        self.by_name.insert(name.clone(), ch);
                        ch
                    }
                };
                let member = self.channels[ch as usize].members.insert(key as u32) as u32;
                (ch, member)
            })
            .collect();
        match places[..] {
            [one] => Membership::One([one]),
            _ => Membership::Many(places.into_boxed_slice()),
        }
    }

    fn leave(&mut self, member_of: &Membership) {
        for &(ch, member) in member_of.as_slice() {
            let channel = &mut self.channels[ch as usize];
            channel.members.remove(member as usize);
            if channel.members.is_empty() {
                let channel = self.channels.remove(ch as usize);
                self.by_name.remove(&channel.name);
            }
        }
    }
}

/// `event: ringcast-reset` with JSON data saying why and where the server is. No `id:` line:
/// the client's last event id stays what it was until a retained event (or the position) comes.
fn reset_frame(why: ResetReason, last: &[u8], position: EventId, retained: usize) -> Bytes {
    let last = String::from_utf8_lossy(&last[..last.len().min(128)]);
    let data = serde_json::json!({
        "reason": why.as_str(),
        "message": format!("{}; {retained} retained events follow", why.explain()),
        "last_event_id": last,
        "current_id": position.to_string(),
    });
    Bytes::from(format!("event: ringcast-reset\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Limits;
    use crate::streams::StreamCap;
    use std::time::Duration;

    /// A channel stream's server end on loopback (the client end is kept open by the caller).
    fn socket() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (TcpStream::from_std(server).unwrap(), client)
    }

    /// One core's channel streams on a one-core hub, with a small cap.
    struct Core {
        hub: Arc<Hub>,
        inboxes: Vec<crate::hub::Inbox>,
        stats: Arc<WorkerStats>,
        subs: Subs,
        cap: Arc<StreamCap>,
    }

    impl Core {
        fn new() -> Core {
            let limits = Limits {
                per_channel: 16,
                bytes: 1 << 20,
                age: Duration::from_secs(60),
            };
            let (hub, inboxes) = Hub::new(limits, 1);
            let stats = Arc::new(WorkerStats::default());
            let subs = Subs::new(hub.clone(), None, stats.clone(), 1 << 20, 3);
            Core {
                hub,
                inboxes,
                stats,
                subs,
                cap: Arc::new(StreamCap::new(10)),
            }
        }
    }

    /// Completes every write that is ready as if it had succeeded; returns (key, frame) pairs.
    fn drain(subs: &Subs) -> Vec<(usize, Bytes)> {
        let mut out = Vec::new();
        while let Some((key, stream, frame)) = subs.next_write() {
            subs.complete(key, stream, Ok(frame.len()));
            out.push((key, frame));
        }
        out
    }

    /// A client that saw an event on another core and resumes on this one before this core has
    /// handled it waits for it: no reset, nothing it already has, then what follows.
    #[test]
    fn a_resume_from_an_event_this_core_has_not_reached_waits_for_it() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(async {
                let Core {
                    hub,
                    mut inboxes,
                    stats,
                    subs,
                    cap,
                } = Core::new();
                let ch: Box<[Box<str>]> = vec!["a".into()].into();
                let first = hub.publish(ch.clone(), "", "one").unwrap();
                let second = hub.publish(ch.clone(), "", "two").unwrap();
                // The client had both (from another core); this core has handled neither.
                let (stream, _client) = socket();
                let sub = Subscription {
                    channels: vec!["a".into()],
                    last_event_id: Some(second.to_string().into_bytes().into()),
                };
                subs.open(stream, sub, cap.try_reserve().unwrap());
                assert!(
                    drain(&subs).is_empty(),
                    "nothing before this core reaches it"
                );
                let inbox = &mut inboxes[0];
                let mut next = || inbox.events.try_recv().expect("an event in the inbox");
                let e1 = next();
                assert_eq!(e1.id, first);
                subs.deliver(&e1);
                assert!(drain(&subs).is_empty(), "still waiting");
                subs.deliver(&next());
                let opened = drain(&subs);
                assert_eq!(opened.len(), 1, "only the position frame: {opened:?}");
                assert_eq!(opened[0].1, position_frame(second));
                let third = hub.publish(ch, "", "three").unwrap();
                subs.deliver(&next());
                let live = drain(&subs);
                assert_eq!(live.len(), 1);
                assert!(live[0].1.starts_with(format!("id: {third}\n").as_bytes()));
                assert_eq!(stats.snapshot().replay_resets, 0);
            });
    }

    #[test]
    fn the_heartbeat_passes_by_streams_that_were_sent_an_event_since_the_last_one() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(async {
                let Core {
                    stats, subs, cap, ..
                } = Core::new();
                let mut clients = Vec::new();
                for ch in ["a", "b"] {
                    let (stream, client) = socket();
                    clients.push(client);
                    let sub = Subscription {
                        channels: vec![ch.into()],
                        last_event_id: None,
                    };
                    subs.open(stream, sub, cap.try_reserve().unwrap());
                }
                assert_eq!(
                    drain(&subs).len(),
                    2,
                    "each stream's opening position frame"
                );
                let hb = Bytes::from_static(crate::event::HEARTBEAT);
                let heartbeats = |subs: &Subs| -> Vec<usize> {
                    subs.heartbeat(&hb);
                    let frames = drain(subs);
                    assert!(
                        frames.iter().all(|(_, f)| f == &hb),
                        "only heartbeats queued"
                    );
                    frames.into_iter().map(|(k, _)| k).collect()
                };
                // Both just opened (their position frame went out): neither was silent.
                assert_eq!(heartbeats(&subs), Vec::<usize>::new());
                // Stream 0 gets an event; stream 1 stays silent.
                let ev = Event::new(EventId::new(1, 1), vec!["a".into()].into(), "", "x");
                subs.deliver(&ev);
                assert_eq!(drain(&subs).len(), 1);
                assert_eq!(heartbeats(&subs), vec![1], "only the silent stream");
                // Now both have been silent for a whole interval.
                let mut both = heartbeats(&subs);
                both.sort();
                assert_eq!(both, vec![0, 1]);
                let snap = stats.snapshot();
                assert_eq!(snap.heartbeats_not_needed, 3);
                assert_eq!(snap.heartbeats_skipped, 0);
            });
    }

    #[test]
    fn a_channel_stream_slot_stays_small() {
        // The slot is most of what an idle channel stream costs (its parked socket is a bare fd
        // on io_uring, see parked.rs): keep it within the budget the memory benchmark measured.
        assert!(std::mem::size_of::<super::Sub>() <= 128);
        assert!(std::mem::size_of::<super::Frames>() <= 40);
    }
}
