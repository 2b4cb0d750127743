//! Publish mode's exactness accounting: channel event ids (`<unix-ms>-<seq>`, compared as
//! numbers), the shared per-channel lists of the ids the publishers' `201` answers returned,
//! and each connection's `Tally`, which checks what it receives against its channel's list
//! with a cursor, so it holds O(1) state however many events go by.
//!
//! A connection's expectation is a set of segments of its channel's list. A fresh
//! subscription starts a segment after the position the server announced right after the
//! response head (`id: <position>` with no data), or, from a server that announces none,
//! just before the first id received. Reconnections with `Last-Event-ID` continue the
//! segment (the server must replay what was missed); a `ringcast-reset` event closes it at
//! the last id received, and the next position or event starts a new one; a connection
//! that gives up closes its segment the same way. At the end, expected = the list's ids in
//! the segments, received = the distinct expected ids that arrived, missed = the
//! difference. An id not above the connection's previous one is a duplicate (in-order
//! delivery makes a repeat show up that way). An id received before its publisher's answer
//! came back waits in a short pending list and is looked up again later.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// The event type of ringcast's "your Last-Event-ID could not be resumed" event.
pub const RESET_EVENT: &str = "ringcast-reset";

/// Most ids one connection keeps waiting for their publish answer; beyond it an id that is
/// not (yet) in the list counts as unexpected at once.
pub const MAX_PENDING: usize = 256;

/// A channel event id, `<unix-ms>-<seq>` (the Redis stream id format), ordered as the
/// number pair: `1-10` is after `1-9`, which string order gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EventId {
    /// Parses `<ms>-<seq>`: two runs of ASCII digits (each fitting a u64) and one dash.
    pub fn parse(s: &str) -> Option<EventId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EventId {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }

    /// The id just before this one, so that "after pred(x)" includes x.
    pub fn pred(self) -> EventId {
        match (self.ms, self.seq) {
            (ms, seq) if seq > 0 => EventId { ms, seq: seq - 1 },
            (ms, _) if ms > 0 => EventId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            _ => self,
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The channels of a run, `c0` … `cK-1`, with the ids published on each (kept sorted: the
/// publishers' answers can come back out of id order).
#[derive(Debug)]
pub struct Channels {
    pub names: Vec<String>,
    lists: Vec<RwLock<Vec<EventId>>>,
    /// Publish answers with a 2xx status so far (for the status line).
    pub published_ok: AtomicU64,
    /// Publisher threads still running; the last one to finish marks the lists final.
    pub publishers_running: AtomicUsize,
    done: AtomicBool,
}

impl Channels {
    pub fn new(count: usize) -> Channels {
        Channels {
            names: (0..count).map(|k| format!("c{k}")).collect(),
            lists: (0..count).map(|_| RwLock::new(Vec::new())).collect(),
            published_ok: AtomicU64::new(0),
            publishers_running: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Notes that a publish on `channel` was answered with `id`.
    pub fn record(&self, channel: usize, id: EventId) {
        let mut list = self.lists[channel]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Almost always at the end; a few places back when answers overtook each other.
        let at = list.partition_point(|x| *x < id);
        if list.get(at) != Some(&id) {
            list.insert(at, id);
        }
    }

    pub fn list(&self, channel: usize) -> RwLockReadGuard<'_, Vec<EventId>> {
        self.lists[channel]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The newest id published on each channel.
    pub fn newest(&self) -> Vec<Option<EventId>> {
        (0..self.len())
            .map(|c| self.list(c).last().copied())
            .collect()
    }

    /// Every publisher has finished: the lists are final.
    pub fn mark_done(&self) {
        self.done.store(true, Ordering::Release);
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Ids of `list` (sorted) in `(after, upto]`.
fn count_between(list: &[EventId], after: EventId, upto: Option<EventId>) -> u64 {
    let lo = list.partition_point(|x| *x <= after);
    let hi = upto.map_or(list.len(), |u| list.partition_point(|x| *x <= u));
    hi.saturating_sub(lo) as u64
}

/// How one received id was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In the channel's list and inside the connection's expectation.
    Expected,
    /// Not in the list yet: looked up again later (its publish answer may still be coming).
    Pending,
    /// Not above the previous id the connection received.
    Duplicate,
    /// At or before the segment's start: the server should not have sent it.
    Unexpected,
}

/// One connection's accounting (lives in its core's slot table, not in its task).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub channel: u32,
    /// The current segment covers ids after this one; None between segments.
    start: Option<EventId>,
    /// The next position announcement or event starts a segment.
    awaiting: bool,
    /// End of the last closed segment: a new segment never starts before it.
    floor: Option<EventId>,
    /// Highest id received.
    last: Option<EventId>,
    /// Index in the channel list just after the last id found there.
    hint: u32,
    matched: u64,
    duplicated: u64,
    unexpected: u64,
    closed: Vec<(EventId, EventId)>,
    pending: Vec<EventId>,
}

/// A connection's final figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Final {
    pub expected: u64,
    pub received: u64,
    pub missed: u64,
    /// Of the missed, those after the last id the connection received: still due when the
    /// run ended (late past the drain, or the stream stopped delivering), not holes.
    pub outstanding: u64,
    pub duplicated: u64,
    pub unexpected: u64,
}

impl Tally {
    pub fn new(channel: usize) -> Tally {
        Tally {
            channel: u32::try_from(channel).unwrap_or(u32::MAX),
            ..Tally::default()
        }
    }

    /// A response head arrived: without a segment in progress this is a fresh subscription,
    /// which starts at the position the server announces (or the first event).
    pub fn on_head(&mut self) {
        if self.start.is_none() {
            self.awaiting = true;
        }
    }

    /// An id-only block (`id: <position>` and a blank line): the server's position. Only a
    /// subscription waiting for its start takes it; on a resumed stream it is ignored.
    pub fn on_position(&mut self, id: &str) {
        if self.awaiting {
            if let Some(position) = EventId::parse(id) {
                self.begin(position);
            }
        }
    }

    fn begin(&mut self, after: EventId) {
        self.start = Some(self.floor.map_or(after, |f| after.max(f)));
        self.awaiting = false;
    }

    /// Finds `x` in `list`, trying the cursor first.
    fn find(&mut self, x: EventId, list: &[EventId]) -> bool {
        let hint = self.hint as usize;
        let at = if list.get(hint) == Some(&x) {
            Some(hint)
        } else {
            list.binary_search(&x).ok()
        };
        if let Some(i) = at {
            self.hint = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
        at.is_some()
    }

    fn resolve_pending(&mut self, list: &[EventId]) {
        if self.pending.is_empty() {
            return;
        }
        let before = self.pending.len();
        self.pending.retain(|p| list.binary_search(p).is_err());
        self.matched += (before - self.pending.len()) as u64;
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// A published event with id `x` arrived; `list` is the channel's list now.
    pub fn on_event(&mut self, x: EventId, list: &[EventId]) -> Seen {
        self.resolve_pending(list);
        if self.awaiting || self.start.is_none() {
            self.begin(x.pred());
        }
        if self.last.is_some_and(|last| x <= last) {
            self.duplicated += 1;
            return Seen::Duplicate;
        }
        self.last = Some(x);
        if self.start.is_some_and(|s| x <= s) {
            self.unexpected += 1;
            return Seen::Unexpected;
        }
        if self.find(x, list) {
            self.matched += 1;
            Seen::Expected
        } else if self.pending.len() < MAX_PENDING {
            self.pending.push(x);
            Seen::Pending
        } else {
            self.unexpected += 1;
            Seen::Unexpected
        }
    }

    fn close(&mut self) {
        if let Some(start) = self.start.take() {
            let end = self.last.map_or(start, |l| l.max(start));
            self.closed.push((start, end));
            self.floor = Some(end);
        }
        self.awaiting = false;
    }

    /// `ringcast-reset`: the server could not resume; what was missed while disconnected is
    /// not expected, and the next position or event starts a new segment.
    pub fn on_reset(&mut self) {
        self.close();
        self.awaiting = true;
    }

    /// The connection gave up for good (its failure is counted elsewhere): nothing after
    /// the last id it received is expected.
    pub fn on_gone(&mut self) {
        self.close();
    }

    /// Whether the connection has everything up to `newest`, the last id of its channel.
    pub fn caught_up(&self, newest: Option<EventId>) -> bool {
        match (self.start, newest) {
            (Some(start), Some(newest)) if newest > start => self.last.is_some_and(|l| l >= newest),
            _ => true,
        }
    }

    /// The final count against the channel's final list.
    pub fn finish(&mut self, list: &[EventId]) -> Final {
        self.resolve_pending(list);
        self.unexpected += self.pending.len() as u64;
        self.pending = Vec::new();
        let mut expected: u64 = self
            .closed
            .iter()
            .map(|&(a, b)| count_between(list, a, Some(b)))
            .sum();
        let mut outstanding = 0;
        if let Some(start) = self.start {
            expected += count_between(list, start, None);
            outstanding = count_between(list, self.last.map_or(start, |l| l.max(start)), None);
        }
        let missed = expected.saturating_sub(self.matched);
        Final {
            expected,
            received: self.matched,
            missed,
            outstanding: outstanding.min(missed),
            duplicated: self.duplicated,
            unexpected: self.unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        EventId::parse(s).unwrap()
    }

    fn ids(list: &[&str]) -> Vec<EventId> {
        list.iter().map(|s| id(s)).collect()
    }

    #[test]
    fn ids_parse_and_compare_as_number_pairs() {
        assert_eq!(
            EventId::parse("1764500000123-4"),
            Some(EventId {
                ms: 1_764_500_000_123,
                seq: 4
            })
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            "+1-2",
            "1- 2",
            "1450755280:0",
            "99999999999999999999-0",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
        // As strings "5-10" < "5-9" and "10-0" < "9-0"; as ids they are not.
        assert!(id("5-10") > id("5-9"));
        assert!(id("10-0") > id("9-99"));
        assert!(id("1764500000123-0") > id("1764500000122-18446744073709551615"));
        assert_eq!(id("7-0").pred(), id("6-18446744073709551615"));
        assert_eq!(id("7-3").pred(), id("7-2"));
        assert_eq!(id("0-0").pred(), id("0-0"));
        assert_eq!(id("12-3").to_string(), "12-3");
    }

    #[test]
    fn channel_lists_stay_sorted_when_answers_cross() {
        let ch = Channels::new(2);
        for s in ["5-1", "5-3", "5-2", "6-0", "5-10", "5-3"] {
            ch.record(1, id(s));
        }
        assert_eq!(*ch.list(1), ids(&["5-1", "5-2", "5-3", "5-10", "6-0"]));
        assert!(ch.list(0).is_empty());
        assert_eq!(ch.newest(), vec![None, Some(id("6-0"))]);
        assert_eq!(ch.names, ["c0", "c1"]);
    }

    #[test]
    fn in_order_delivery_from_the_announced_position() {
        // 1-0 and 1-1 were published before the subscription; 2-0.. after.
        let list = ids(&["1-0", "1-1", "2-0", "2-1", "3-0"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-1");
        for s in ["2-0", "2-1", "3-0"] {
            assert_eq!(t.on_event(id(s), &list), Seen::Expected, "{s}");
        }
        assert_eq!(t.hint, 5, "the cursor followed the list");
        assert!(t.caught_up(Some(id("3-0"))));
        let f = t.finish(&list);
        assert_eq!(
            f,
            Final {
                expected: 3,
                received: 3,
                ..Final::default()
            }
        );
    }

    #[test]
    fn missed_and_duplicated_are_counted() {
        let list = ids(&["2-0", "2-1", "2-2", "2-3", "2-4"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("2-0"), &list);
        t.on_event(id("2-2"), &list); // 2-1 never comes
        assert_eq!(t.on_event(id("2-2"), &list), Seen::Duplicate);
        assert_eq!(t.on_event(id("2-0"), &list), Seen::Duplicate);
        t.on_event(id("2-3"), &list); // and 2-4 never comes either
        assert!(!t.caught_up(Some(id("2-4"))));
        let f = t.finish(&list);
        assert_eq!((f.expected, f.received, f.missed), (5, 3, 2));
        assert_eq!(
            f.outstanding, 1,
            "2-4 may still be on its way; 2-1 is a hole"
        );
        assert_eq!((f.duplicated, f.unexpected), (2, 0));
    }

    #[test]
    fn an_event_ahead_of_its_publish_answer_waits_then_counts() {
        let mut list = ids(&["1-0"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        // 1-1 arrives before the publisher recorded it.
        assert_eq!(t.on_event(id("1-1"), &list), Seen::Pending);
        list.push(id("1-1"));
        list.push(id("1-2"));
        assert_eq!(t.on_event(id("1-2"), &list), Seen::Expected);
        assert!(t.pending.is_empty());
        // one more early one, resolved only at the end
        assert_eq!(t.on_event(id("1-3"), &list), Seen::Pending);
        list.push(id("1-3"));
        let f = t.finish(&list);
        assert_eq!(
            (f.expected, f.received, f.missed, f.unexpected),
            (3, 3, 0, 0)
        );
    }

    #[test]
    fn ids_nobody_published_and_ids_before_the_start_are_unexpected() {
        let list = ids(&["1-0", "3-0"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("2-0");
        assert_eq!(t.on_event(id("1-0"), &list), Seen::Unexpected);
        assert_eq!(t.on_event(id("2-5"), &list), Seen::Pending); // never published by us
        assert_eq!(t.on_event(id("3-0"), &list), Seen::Expected);
        let f = t.finish(&list);
        assert_eq!(
            (f.expected, f.received, f.missed, f.unexpected),
            (1, 1, 0, 2)
        );
    }

    #[test]
    fn without_a_position_the_first_event_starts_the_subscription() {
        let list = ids(&["1-0", "1-1", "1-2"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_event(id("1-1"), &list);
        t.on_event(id("1-2"), &list);
        let f = t.finish(&list);
        assert_eq!((f.expected, f.received, f.missed), (2, 2, 0));
        // a position not in <ms>-<seq> form is no position
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1450755280:0");
        t.on_event(id("1-2"), &list);
        assert_eq!(t.finish(&list).expected, 1);
    }

    #[test]
    fn publishes_racing_the_subscription_head() {
        // 4-0 was published just before the head: the position covers it, so it is not
        // expected even though its 201 came back after the subscriber was set up; 4-1 was
        // published just after and arrives before its 201.
        let mut list = ids(&["3-0"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("4-0");
        list.push(id("4-0"));
        assert_eq!(t.on_event(id("4-1"), &list), Seen::Pending);
        list.push(id("4-1"));
        let f = t.finish(&list);
        assert_eq!((f.expected, f.received, f.missed), (1, 1, 0));
    }

    #[test]
    fn resumed_streams_continue_and_replay_fills_the_gap() {
        let list = ids(&["1-1", "1-2", "1-3", "1-4", "1-5"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-1"), &list);
        t.on_event(id("1-2"), &list);
        // reconnect with Last-Event-ID 1-2: the head, the resume position, the replay
        t.on_head();
        t.on_position("1-4"); // a position on a resumed stream changes nothing
        for s in ["1-3", "1-4", "1-5"] {
            assert_eq!(t.on_event(id(s), &list), Seen::Expected);
        }
        let f = t.finish(&list);
        assert_eq!(
            (f.expected, f.received, f.missed, f.duplicated),
            (5, 5, 0, 0)
        );
        // a replay that repeats what was already received shows as duplicates
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-1"), &list);
        t.on_event(id("1-2"), &list);
        t.on_head();
        for s in ["1-2", "1-3", "1-4", "1-5"] {
            t.on_event(id(s), &list);
        }
        let f = t.finish(&list);
        assert_eq!((f.missed, f.duplicated), (0, 1));
    }

    #[test]
    fn a_reset_excuses_what_was_lost_while_disconnected() {
        let list = ids(&["1-1", "1-2", "1-3", "1-4", "1-5", "1-6", "1-7"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-1"), &list);
        t.on_event(id("1-3"), &list); // 1-2 missed before the reset: still missed
        t.on_head();
        t.on_reset(); // 1-4 was lost while away
        assert!(
            t.caught_up(Some(id("1-7"))),
            "between segments nothing is owed"
        );
        t.on_event(id("1-5"), &list);
        t.on_event(id("1-6"), &list);
        t.on_event(id("1-7"), &list);
        let f = t.finish(&list);
        assert_eq!((f.expected, f.received, f.missed), (6, 5, 1));
        assert_eq!((f.duplicated, f.unexpected), (0, 0));

        // after a reset the server's new position starts the segment
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-1"), &list);
        t.on_head();
        t.on_reset();
        t.on_position("1-4");
        t.on_event(id("1-5"), &list);
        t.on_event(id("1-7"), &list); // 1-6 missed after the reset
        let f = t.finish(&list);
        assert_eq!((f.expected, f.received, f.missed), (4, 3, 1));

        // a new segment never reaches back before the old one's end
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-3"), &list);
        t.on_reset();
        t.on_position("1-1");
        assert_eq!(t.on_event(id("1-2"), &list), Seen::Duplicate);
        t.on_event(id("1-4"), &list);
        let f = t.finish(&list);
        // (1-0, 1-3] got 1-3 of three; (1-3, ..] got 1-4 of four
        assert_eq!((f.expected, f.received, f.missed), (7, 2, 5), "{f:?}");
    }

    #[test]
    fn a_connection_that_gave_up_owes_nothing_after_its_last_event() {
        let list = ids(&["1-1", "1-2", "1-3"]);
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("1-0");
        t.on_event(id("1-1"), &list);
        t.on_gone();
        assert!(t.caught_up(Some(id("1-3"))));
        let f = t.finish(&list);
        assert_eq!((f.expected, f.missed), (1, 0));
        // one that never subscribed owes nothing at all
        assert_eq!(Tally::new(0).finish(&list), Final::default());
    }

    #[test]
    fn pending_ids_are_bounded() {
        let list: Vec<EventId> = Vec::new();
        let mut t = Tally::new(0);
        t.on_head();
        t.on_position("0-0");
        for n in 1..=(MAX_PENDING as u64 + 10) {
            t.on_event(EventId { ms: 1, seq: n }, &list);
        }
        assert_eq!(t.pending.len(), MAX_PENDING);
        assert_eq!(t.finish(&list).unexpected, MAX_PENDING as u64 + 10);
    }
}
