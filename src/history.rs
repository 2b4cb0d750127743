//! The bounded history that replays what a reconnecting client missed.
//!
//! Events are kept in id order, once (an `Arc` shared by every channel they were published to
//! and by every core), within three bounds: `--history` events per channel, `--history-bytes`
//! over all channels, `--history-age`. Each channel remembers its *floor*: the newest id it lost
//! to eviction. A resume from id `L` is complete exactly when `L` is at or above the floor of
//! every channel asked for; otherwise the client is told (`ringcast-reset`) and gets what is
//! retained. The server's own start position is the first floor, so an id from before a restart
//! is never mistaken for a complete resume.
//!
//! This is plain data behind the hub's lock: no I/O, no clock of its own (callers pass `now`),
//! which keeps it unit-testable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::{Event, EventId, IdError};

/// The history's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_channel: usize,
    pub bytes: usize,
    pub age: Duration,
}

struct Retained {
    event: Arc<Event>,
    at: Instant,
    cost: usize,
}

#[derive(Default)]
struct Channel {
    events: VecDeque<Arc<Event>>,
    /// Newest id this channel lost to its per-channel bound.
    floor: EventId,
}

pub struct History {
    limits: Limits,
    /// Every retained event, in id order, with its cost and arrival time.
    all: VecDeque<Retained>,
    bytes: usize,
    channels: HashMap<Box<str>, Channel>,
    /// Newest id lost to the byte or age bound (or the position the server started at).
    floor: EventId,
    start: EventId,
    /// Ids below this are from an earlier epoch of the engine.
    epoch: EventId,
}

/// Why a resume cannot be complete; the client gets `event: ringcast-reset` with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after the id were evicted from the history.
    Evicted,
    /// The id is from before this server (or engine) started.
    BeforeStart,
    /// Not an id at all.
    Malformed,
    /// A tick id (a plain number), not a published event's.
    TickId,
    /// An id ahead of this server's position: from somewhere else.
    Unknown,
    /// An id from before the engine lost its data (a new epoch).
    Epoch,
    /// The history does not cover the id and the engine that could cannot be reached.
    Unavailable,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Evicted => "evicted",
            ResetReason::BeforeStart => "before-start",
            ResetReason::Malformed => "malformed",
            ResetReason::TickId => "tick-id",
            ResetReason::Unknown => "unknown",
            ResetReason::Epoch => "epoch",
            ResetReason::Unavailable => "unavailable",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            ResetReason::Evicted => "events after this id are no longer in the history",
            ResetReason::BeforeStart => "this id is from before the server started",
            ResetReason::Malformed => "this is not an event id (<unix-ms>-<seq>)",
            ResetReason::TickId => "this is a tick id, not a published event's id",
            ResetReason::Unknown => "this id is ahead of the server's position",
            ResetReason::Epoch => "the event store lost its data after this id (new epoch)",
            ResetReason::Unavailable => {
                "events after this id are not in this node's history and the event store is unavailable"
            }
        }
    }
}

/// What a resuming stream receives before live events.
#[derive(Debug, Default)]
pub struct Replay {
    pub reset: Option<ResetReason>,
    /// Retained events after the id, up to the core's position, in id order, each once.
    pub events: Vec<Arc<Event>>,
}

impl History {
    pub fn new(limits: Limits, start: EventId) -> Self {
        History {
            limits,
            all: VecDeque::new(),
            bytes: 0,
            channels: HashMap::new(),
            floor: start,
            start,
            epoch: EventId::ZERO,
        }
    }

    /// The engine lost its data: ids below `start` can no longer be resumed exactly.
    pub fn new_epoch(&mut self, start: EventId) {
        self.epoch = self.epoch.max(start);
        self.floor = self.floor.max(start);
    }

    /// Retained events and their cost in bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.all.len(), self.bytes)
    }

    /// Channels with retained events.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Keeps `event` (its id must be above every retained id), then enforces the bounds.
    pub fn push(&mut self, event: Arc<Event>, now: Instant) {
        let per_channel = self.limits.per_channel;
        for name in event.channels.iter() {
            // Look up first: the name is cloned only for a channel the history does not hold.
            if !self.channels.contains_key(name) {
                self.channels.insert(name.clone(), Channel::default());
            }
            let Some(ch) = self.channels.get_mut(name) else {
                continue;
            };
            ch.events.push_back(event.clone());
            if ch.events.len() > per_channel {
                if let Some(old) = ch.events.pop_front() {
                    ch.floor = old.id;
                }
            }
        }
        let cost = event.cost();
        self.bytes += cost;
        self.all.push_back(Retained {
            event,
            at: now,
            cost,
        });
        self.trim(now);
    }

    /// Drops the oldest events while over the byte bound or older than the age bound, and any
    /// event at the front that every channel has already dropped by count.
    pub fn trim(&mut self, now: Instant) {
        while let Some(front) = self.all.front() {
            let expired = now.saturating_duration_since(front.at) > self.limits.age;
            let orphan = Arc::strong_count(&front.event) == 1;
            if self.bytes <= self.limits.bytes && !expired && !orphan {
                break;
            }
            let Some(old) = self.all.pop_front() else {
                break;
            };
            self.bytes -= old.cost;
            for name in old.event.channels.iter() {
                let Some(ch) = self.channels.get_mut(name) else {
                    continue;
                };
                if ch.events.front().is_some_and(|e| e.id == old.event.id) {
                    ch.events.pop_front();
                    ch.floor = ch.floor.max(old.event.id);
                }
                if ch.events.is_empty() {
                    // Forget the channel (names must not pile up); the global floor keeps
                    // what it lost, so a resume on it is never called complete by mistake.
                    self.floor = self.floor.max(ch.floor);
                    self.channels.remove(name);
                }
            }
        }
    }

    /// What a stream on `channels` resuming from `last` (the raw Last-Event-ID) gets, up to
    /// `upto` (the position of the core it is on: later events reach it live).
    pub fn replay(&self, channels: &[Box<str>], last: &[u8], upto: EventId) -> Replay {
        let (after, reset) = match EventId::parse(last) {
            Err(IdError::TickId) => (None, Some(ResetReason::TickId)),
            Err(IdError::Malformed) => (None, Some(ResetReason::Malformed)),
            Ok(id) if id > upto => {
                return Replay {
                    reset: Some(ResetReason::Unknown),
                    events: Vec::new(),
                }
            }
            Ok(id) if id < self.epoch => (Some(id), Some(ResetReason::Epoch)),
            Ok(id) if id < self.start => (Some(id), Some(ResetReason::BeforeStart)),
            Ok(id) => {
                let floor = channels
                    .iter()
                    .filter_map(|c| self.channels.get(c).map(|ch| ch.floor))
                    .fold(self.floor, EventId::max);
                (Some(id), (id < floor).then_some(ResetReason::Evicted))
            }
        };
        let mut events: Vec<Arc<Event>> = Vec::new();
        for name in channels {
            let Some(ch) = self.channels.get(name) else {
                continue;
            };
            let from = match after {
                Some(id) => ch.events.partition_point(|e| e.id <= id),
                None => 0,
            };
            events.extend(
                ch.events
                    .range(from..)
                    .take_while(|e| e.id <= upto)
                    .cloned(),
            );
        }
        if channels.len() > 1 {
            events.sort_unstable_by_key(|e| e.id);
            events.dedup_by_key(|e| e.id);
        }
        Replay { reset, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_channel: usize, bytes: usize) -> Limits {
        Limits {
            per_channel,
            bytes,
            age: Duration::from_secs(600),
        }
    }

    fn ev(ms: u64, channels: &[&str]) -> Arc<Event> {
        let channels = channels.iter().map(|c| Box::<str>::from(*c)).collect();
        Arc::new(Event::new(EventId::new(ms, 0), channels, "message", "x"))
    }

    fn ids(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|e| e.id.ms).collect()
    }

    fn chans(c: &[&str]) -> Vec<Box<str>> {
        c.iter().map(|c| Box::<str>::from(*c)).collect()
    }

    #[test]
    fn replays_what_came_after_the_id_on_the_asked_channels_once() {
        let now = Instant::now();
        let mut h = History::new(limits(100, 1 << 20), EventId::new(100, 0));
        h.push(ev(101, &["a"]), now);
        h.push(ev(102, &["b"]), now);
        h.push(ev(103, &["a", "b"]), now);
        h.push(ev(104, &["c"]), now);
        let upto = EventId::new(104, 0);
        let r = h.replay(&chans(&["a", "b"]), b"101-0", upto);
        assert_eq!((r.reset, ids(&r)), (None, vec![102, 103]));
        let r = h.replay(&chans(&["a"]), b"100-0", upto);
        assert_eq!((r.reset, ids(&r)), (None, vec![101, 103]));
        // only up to the core's position: later events reach the stream live
        let r = h.replay(&chans(&["a", "b"]), b"100-0", EventId::new(102, 0));
        assert_eq!(ids(&r), vec![101, 102]);
        let r = h.replay(&chans(&["zzz"]), b"100-0", upto);
        assert_eq!((r.reset, ids(&r)), (None, vec![]));
    }

    #[test]
    fn a_resume_past_the_floor_is_a_reset_with_what_is_retained() {
        let now = Instant::now();
        let mut h = History::new(limits(2, 1 << 20), EventId::new(100, 0));
        for ms in 101..=105 {
            h.push(ev(ms, &["a"]), now);
        }
        h.push(ev(106, &["b"]), now);
        let upto = EventId::new(106, 0);
        // a keeps 104, 105: its floor is 103
        let r = h.replay(&chans(&["a"]), b"103-0", upto);
        assert_eq!((r.reset, ids(&r)), (None, vec![104, 105]));
        let r = h.replay(&chans(&["a"]), b"102-0", upto);
        assert_eq!(
            (r.reset, ids(&r)),
            (Some(ResetReason::Evicted), vec![104, 105])
        );
        // b never lost anything
        let r = h.replay(&chans(&["b"]), b"100-0", upto);
        assert_eq!((r.reset, ids(&r)), (None, vec![106]));
        // from before this server started
        let r = h.replay(&chans(&["b"]), b"99-0", upto);
        assert_eq!(r.reset, Some(ResetReason::BeforeStart));
        // not ids of ours
        assert_eq!(
            h.replay(&chans(&["a"]), b"12345", upto).reset,
            Some(ResetReason::TickId)
        );
        let r = h.replay(&chans(&["a"]), b"garbage", upto);
        assert_eq!(
            (r.reset, ids(&r)),
            (Some(ResetReason::Malformed), vec![104, 105])
        );
        let r = h.replay(&chans(&["a"]), b"107-0", upto);
        assert_eq!((r.reset, ids(&r)), (Some(ResetReason::Unknown), vec![]));
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_raises_the_floor() {
        let now = Instant::now();
        let one = ev(1, &["a"]).cost();
        let mut h = History::new(limits(1000, 3 * one), EventId::new(0, 0));
        for ms in 1..=10 {
            h.push(ev(ms, &["a", "b"][..(ms as usize % 2) + 1]), now);
            assert!(h.size().1 <= 3 * one + 64, "{:?}", h.size());
        }
        let r = h.replay(&chans(&["a"]), b"8-0", EventId::new(10, 0));
        assert_eq!((r.reset, ids(&r)), (None, vec![9, 10]));
        let r = h.replay(&chans(&["a"]), b"5-0", EventId::new(10, 0));
        assert_eq!(r.reset, Some(ResetReason::Evicted));
    }

    #[test]
    fn old_events_age_out() {
        let t0 = Instant::now();
        let mut h = History::new(
            Limits {
                per_channel: 10,
                bytes: 1 << 20,
                age: Duration::from_secs(10),
            },
            EventId::new(0, 0),
        );
        h.push(ev(1, &["a"]), t0);
        h.push(ev(2, &["a"]), t0 + Duration::from_secs(5));
        h.trim(t0 + Duration::from_secs(12));
        assert_eq!(h.size().0, 1);
        let r = h.replay(&chans(&["a"]), b"0-0", EventId::new(2, 0));
        assert_eq!((r.reset, ids(&r)), (Some(ResetReason::Evicted), vec![2]));
        h.trim(t0 + Duration::from_secs(20));
        assert_eq!(h.size(), (0, 0));
        assert_eq!(h.channel_count(), 0);
        let r = h.replay(&chans(&["a"]), b"2-0", EventId::new(2, 0));
        assert_eq!((r.reset, ids(&r)), (None, vec![]));
    }

    #[test]
    fn events_every_channel_dropped_do_not_hold_memory() {
        let now = Instant::now();
        let mut h = History::new(limits(1, 1 << 20), EventId::new(0, 0));
        for ms in 1..=100 {
            h.push(ev(ms, &["a"]), now);
        }
        assert_eq!(h.size().0, 1);
    }
}
