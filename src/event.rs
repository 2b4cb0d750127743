//! Published events: their ids, their names, and their frames encoded once.
//!
//! An id is `<unix-ms>-<seq>`: the millisecond the event was sequenced and a sequence within that
//! millisecond. That is Redis's stream-entry id on purpose, so an engine that sequences events
//! elsewhere can hand its ids through unchanged, and a client can read the publish time from the
//! id alone. Ids compare as `(ms, seq)` tuples, never as strings.
//!
//! An [`Event`] is encoded into its SSE frame once, when it is sequenced; the history and every
//! core share that `Bytes`, so neither a replay nor a fan-out copies it.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// A position in the event sequence of a server (or, later, of an engine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// The position of a server that starts now, before any event: `<now-ms>-0`.
    pub fn now() -> Self {
        EventId::new(unix_ms(SystemTime::now()), 0)
    }

    /// The next id after `self` at wall-clock millisecond `ms`: strictly greater than `self`
    /// even when the clock stepped back (then it continues `self`'s millisecond).
    pub fn next_at(self, ms: u64) -> Self {
        if ms > self.ms {
            EventId::new(ms, 0)
        } else {
            EventId::new(self.ms, self.seq + 1)
        }
    }

    /// Parses `<ms>-<seq>` (both decimal, no sign, no spaces).
    pub fn parse(s: &[u8]) -> Result<EventId, IdError> {
        let dash = s.iter().position(|&b| b == b'-');
        let (ms, seq) = match dash {
            Some(i) => (&s[..i], &s[i + 1..]),
            None if !s.is_empty() && s.iter().all(u8::is_ascii_digit) => {
                return Err(IdError::TickId)
            }
            None => return Err(IdError::Malformed),
        };
        Ok(EventId::new(number(ms)?, number(seq)?))
    }
}

fn number(s: &[u8]) -> Result<u64, IdError> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return Err(IdError::Malformed);
    }
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(IdError::Malformed)
}

/// Why a Last-Event-ID is not a channel event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    /// A plain number: the id of a tick, not of a published event.
    TickId,
    Malformed,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// A channel name is 1–128 bytes of `[A-Za-z0-9_.:-]`.
pub fn valid_channel(name: &[u8]) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// An event type (the `event:` field) must not end its field early: no CR, LF or NUL.
pub fn valid_event_type(name: &str) -> bool {
    !name.is_empty() && !name.contains(['\r', '\n', '\0'])
}

/// One published event, as every core and the history hold it.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    /// The channels it was published to (valid names, no duplicates).
    pub channels: Box<[Box<str>]>,
    /// `id: …\nevent: …\ndata: …\n\n`, encoded once.
    pub frame: Bytes,
}

impl Event {
    pub fn new(id: EventId, channels: Box<[Box<str>]>, event: &str, data: &str) -> Self {
        Event {
            id,
            channels,
            frame: encode(id, event, data),
        }
    }

    /// What the event costs the history: its frame and its channel names, plus bookkeeping.
    pub fn cost(&self) -> usize {
        const OVERHEAD: usize = 96;
        OVERHEAD + self.frame.len() + self.channels.iter().map(|c| c.len() + 16).sum::<usize>()
    }
}

/// `id: <id>\nevent: <type>\ndata: <line>\n…\n`: each line of `data` (split on CRLF, CR or LF)
/// becomes its own `data:` field, which a client joins back with LF.
pub fn encode(id: EventId, event: &str, data: &str) -> Bytes {
    let lines = crate::sse::split_lines(data);
    let mut b = BytesMut::with_capacity(48 + event.len() + data.len() + 7 * lines.len());
    b.put_slice(format!("id: {id}\nevent: {event}\n").as_bytes());
    for line in lines {
        b.put_slice(b"data: ");
        b.put_slice(line.as_bytes());
        b.put_u8(b'\n');
    }
    b.put_u8(b'\n');
    b.freeze()
}

/// `id: <id>\n\n`: sets the client's last event id without dispatching an event.
pub fn position_frame(id: EventId) -> Bytes {
    Bytes::from(format!("id: {id}\n\n"))
}

/// The heartbeat: a comment line and the blank line.
pub const HEARTBEAT: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order_as_numbers() {
        let a = EventId::parse(b"1700000000000-9").unwrap();
        let b = EventId::parse(b"1700000000000-10").unwrap();
        assert!(a < b, "compared as numbers, not strings");
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(EventId::parse(b"123"), Err(IdError::TickId));
        for bad in [
            &b""[..],
            b"-",
            b"1-",
            b"-1",
            b"a-1",
            b"1-2-3",
            b"1 -2",
            b"+1-2",
        ] {
            assert_eq!(EventId::parse(bad), Err(IdError::Malformed), "{bad:?}");
        }
        assert_eq!(
            EventId::parse(b"99999999999999999999999-0"),
            Err(IdError::Malformed)
        );
    }

    #[test]
    fn next_is_strictly_increasing_even_when_the_clock_steps_back() {
        let a = EventId::new(1000, 0);
        assert_eq!(a.next_at(1000), EventId::new(1000, 1));
        assert_eq!(a.next_at(1005), EventId::new(1005, 0));
        assert_eq!(EventId::new(1000, 4).next_at(900), EventId::new(1000, 5));
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel(b"news"));
        assert!(valid_channel(b"a.b:c-d_E9"));
        assert!(valid_channel("x".repeat(128).as_bytes()));
        assert!(!valid_channel("x".repeat(129).as_bytes()));
        for bad in [&b""[..], b"a b", b"a/b", b"a%3Ab", b"\xc3\xa9", b"a\nb"] {
            assert!(!valid_channel(bad), "{bad:?}");
        }
    }

    #[test]
    fn frames_split_data_into_lines() {
        let id = EventId::new(5, 1);
        assert_eq!(
            &encode(id, "message", "hello")[..],
            b"id: 5-1\nevent: message\ndata: hello\n\n"
        );
        assert_eq!(
            &encode(id, "score", "a\r\nb\rc\nd")[..],
            b"id: 5-1\nevent: score\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(&position_frame(id)[..], b"id: 5-1\n\n");
    }
}
