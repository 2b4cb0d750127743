//! The event source: sequences published events, keeps the history, hands each event to every
//! core.
//!
//! One hub per server, shared by the admin thread (which publishes) and the workers (which ask
//! it for replays). Publishing takes one short lock: assign the next id, encode the frame once,
//! keep it in the history, push it into every core's inbox. Pushing under the lock is what makes
//! every inbox strictly id-ordered, which the cores rely on to join a replay and the live events
//! without a gap or a duplicate (see `subs.rs`).
//!
//! This is the seam for other engines: today the [`Sequencer`] is local (ids from the wall
//! clock); an engine such as Redis Streams would assign the ids itself and feed events in through
//! [`Hub::ingest`], with the history and the hand-off to the cores unchanged.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::event::{unix_ms, Event, EventId};
use crate::history::{History, Limits, Replay};
use crate::publish::Publish;

/// Where event ids come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequencer {
    /// This process: `<wall-clock ms>-<seq>`, strictly increasing even if the clock steps back.
    Local,
    /// An engine (Redis Streams) assigns them; events come in through [`Hub::ingest`].
    Engine,
}

struct State {
    last: EventId,
    history: History,
    inboxes: Vec<(UnboundedSender<Arc<Event>>, Arc<AtomicUsize>)>,
}

/// Events a core may have waiting before publishes are refused (503): a core that cannot keep
/// up must not let its inbox grow without bound.
pub const MAX_INBOX: usize = 65_536;

/// See the module docs.
pub struct Hub {
    state: Mutex<State>,
    sequencer: Sequencer,
    start: EventId,
    published: AtomicU64,
}

/// A core's end of the hand-off: every event, in id order.
pub struct Inbox {
    pub events: UnboundedReceiver<Arc<Event>>,
    /// Events sent and not yet taken (the core decrements it as it takes them).
    pub depth: Arc<AtomicUsize>,
}

impl Inbox {
    /// Counts an event as taken.
    pub fn took(&self) {
        self.depth.fetch_sub(1, Relaxed);
    }

    /// Takes the next event if one is waiting (outside a runtime: tools and the fuzzer).
    pub fn try_take(&mut self) -> Option<Arc<Event>> {
        let ev = self.events.try_recv().ok()?;
        self.took();
        Some(ev)
    }
}

/// Why a publish was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The server is stopping (no core takes events any more).
    ShuttingDown,
    /// A core has `MAX_INBOX` events waiting: it cannot keep up.
    Overloaded,
    /// Ids come from an engine: publish through it.
    NotLocal,
}

impl Hub {
    /// A hub for `cores` cores; returns each core's inbox.
    pub fn new(limits: Limits, cores: usize) -> (Arc<Hub>, Vec<Inbox>) {
        Self::with_sequencer(limits, cores, Sequencer::Local)
    }

    /// A hub whose ids come from `sequencer`.
    pub fn with_sequencer(
        limits: Limits,
        cores: usize,
        sequencer: Sequencer,
    ) -> (Arc<Hub>, Vec<Inbox>) {
        let start = EventId::now();
        let (inboxes, receivers) = (0..cores)
            .map(|_| {
                let (tx, rx) = futures::channel::mpsc::unbounded();
                let depth = Arc::new(AtomicUsize::new(0));
                ((tx, depth.clone()), Inbox { events: rx, depth })
            })
            .unzip();
        let hub = Hub {
            state: Mutex::new(State {
                last: start,
                history: History::new(limits, start),
                inboxes,
            }),
            sequencer,
            start,
            published: AtomicU64::new(0),
        };
        (Arc::new(hub), receivers)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position before any event: what a fresh stream starts from.
    pub fn start(&self) -> EventId {
        self.start
    }

    /// Sequences one event on `channels` and hands it to every core; returns its id once it is
    /// in the history and in every core's inbox.
    pub fn publish(
        &self,
        channels: Box<[Box<str>]>,
        event: &str,
        data: &str,
    ) -> Result<EventId, PublishError> {
        let mut st = self.lock();
        self.room_for(&st, 1)?;
        self.sequence_locked(&mut st, channels, event, data)
    }

    /// Publishes `events` together, in order, under one lock: every one is taken or none is
    /// (the inboxes are checked for room for all of them first). Returns their ids.
    pub fn publish_batch(&self, events: Vec<Publish>) -> Result<Vec<EventId>, PublishError> {
        let mut st = self.lock();
        self.room_for(&st, events.len())?;
        events
            .into_iter()
            .map(|p| self.sequence_locked(&mut st, p.channels, &p.event, &p.data))
            .collect()
    }

    /// `Overloaded` unless every core's inbox can take `n` more events within [`MAX_INBOX`];
    /// `NotLocal` when an engine assigns the ids.
    fn room_for(&self, st: &State, n: usize) -> Result<(), PublishError> {
        if self.sequencer != Sequencer::Local {
            return Err(PublishError::NotLocal);
        }
        if st
            .inboxes
            .iter()
            .any(|(_, d)| d.load(Relaxed) + n > MAX_INBOX)
        {
            return Err(PublishError::Overloaded);
        }
        Ok(())
    }

    fn sequence_locked(
        &self,
        st: &mut State,
        channels: Box<[Box<str>]>,
        event: &str,
        data: &str,
    ) -> Result<EventId, PublishError> {
        let id = st.last.next_at(unix_ms(SystemTime::now()));
        let ev = Arc::new(Event::new(id, channels, event, data));
        self.ingest_locked(st, ev)?;
        Ok(id)
    }

    /// Takes an event sequenced elsewhere. An id at or below the last one taken was delivered
    /// already (or cannot be delivered in order) and is skipped.
    pub fn ingest(&self, ev: Arc<Event>) -> Result<(), PublishError> {
        let mut st = self.lock();
        if ev.id <= st.last {
            tracing::debug!(id = %ev.id, last = %st.last, "event at or below the last id: skipped");
            return Ok(());
        }
        self.ingest_locked(&mut st, ev)
    }

    /// Which sequencer assigns ids.
    pub fn sequencer(&self) -> Sequencer {
        self.sequencer
    }

    /// The engine lost its data: resumes from ids below `start` get `ringcast-reset`.
    pub fn set_epoch_floor(&self, start: EventId) {
        self.lock().history.new_epoch(start);
    }

    fn ingest_locked(&self, st: &mut State, ev: Arc<Event>) -> Result<(), PublishError> {
        let mut delivered = false;
        for (inbox, depth) in &st.inboxes {
            // Counted before the send, so the core's decrement never comes first.
            depth.fetch_add(1, Relaxed);
            if inbox.unbounded_send(ev.clone()).is_ok() {
                delivered = true;
            } else {
                depth.fetch_sub(1, Relaxed);
            }
        }
        if !delivered {
            return Err(PublishError::ShuttingDown);
        }
        st.last = ev.id;
        st.history.push(ev, Instant::now());
        self.published.fetch_add(1, Relaxed);
        Ok(())
    }

    /// What a stream on `channels` resuming from `last_event_id` receives before live events,
    /// given that its core has handed out every event up to `upto`.
    pub fn replay(&self, channels: &[Box<str>], last_event_id: &[u8], upto: EventId) -> Replay {
        let mut st = self.lock();
        st.history.trim(Instant::now());
        st.history.replay(channels, last_event_id, upto)
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.published.load(Relaxed)
    }

    /// (events, bytes, channels) held in the history now.
    pub fn history_size(&self) -> (usize, usize, usize) {
        let mut st = self.lock();
        st.history.trim(Instant::now());
        let (events, bytes) = st.history.size();
        (events, bytes, st.history.channel_count())
    }

    /// The newest id sequenced.
    pub fn last_id(&self) -> EventId {
        self.lock().last
    }

    /// Closes every inbox: cores stop taking events, later publishes fail.
    pub fn close(&self) {
        for (inbox, _) in &self.lock().inboxes {
            inbox.close_channel();
        }
    }
}
