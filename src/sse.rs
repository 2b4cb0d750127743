//! The Server-Sent-Events wire format: the tick clock, the per-tick frame and the stream's
//! response head.
//!
//! A frame is encoded once per tick into a shared [`Bytes`] that every stream's write borrows;
//! nothing here runs per stream. Tick ids are whole intervals since the Unix epoch, so every core
//! (and every restart) agrees on them and a client can tell when an event was due from its id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// The wall clock, cut into intervals.
#[derive(Clone, Copy, Debug)]
pub struct TickClock {
    interval_ms: u64,
}

impl TickClock {
    pub fn new(interval: Duration) -> Self {
        let interval_ms = (interval.as_millis() as u64).max(1);
        TickClock { interval_ms }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The first tick strictly after `now`, and how long until it is due.
    pub fn next_after(&self, now: SystemTime) -> (u64, Duration) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = since.as_millis() as u64;
        let tick = ms / self.interval_ms + 1;
        let due = Duration::from_millis(tick * self.interval_ms);
        (tick, due.saturating_sub(since))
    }

    /// When tick `id` was due.
    pub fn due(&self, tick: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(tick * self.interval_ms)
    }

    /// The tick to send now, given the wall clock's `tick`, the `last` one sent and the
    /// monotonic time since `last` was scheduled: never at or below `last` (a wall clock that
    /// stepped back must not re-send ids), and ticks skipped over are told apart by cause (the
    /// monotonic clock did not see that much time pass: the wall clock stepped forward).
    pub fn follow(&self, tick: u64, last: u64, since_last: Duration) -> (u64, ClockStep) {
        if tick <= last {
            return (last + 1, ClockStep::SteppedBack);
        }
        if tick == last + 1 {
            return (tick, ClockStep::OnTime);
        }
        let missed = tick - last - 1;
        let interval = self.interval();
        let wall = Duration::from_millis((tick - last) * self.interval_ms);
        let step = if since_last + interval < wall {
            ClockStep::SteppedForward {
                missed,
                step_ms: (wall - since_last).as_millis() as u64,
            }
        } else {
            ClockStep::Busy {
                missed,
                behind_ms: since_last.saturating_sub(interval).as_millis() as u64,
            }
        };
        (tick, step)
    }
}

/// How the wall clock moved between two ticks of a core (see [`TickClock::follow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockStep {
    OnTime,
    SteppedBack,
    SteppedForward { missed: u64, step_ms: u64 },
    Busy { missed: u64, behind_ms: u64 },
}

/// Encodes the events of one configured payload.
#[derive(Clone, Debug)]
pub struct FrameEncoder {
    event: String,
    data_lines: Vec<String>,
}

impl FrameEncoder {
    /// `event` must not contain CR, LF or NUL (the config checks it); `data` may span lines.
    pub fn new(event: &str, data: &str) -> Self {
        FrameEncoder {
            event: event.to_owned(),
            data_lines: split_lines(data).into_iter().map(str::to_owned).collect(),
        }
    }

    /// `id: <id>\nevent: <event>\ndata: <line>\n…\n`.
    pub fn encode(&self, id: u64) -> Bytes {
        let data_len: usize = self.data_lines.iter().map(|l| l.len() + 7).sum();
        let mut b = BytesMut::with_capacity(32 + self.event.len() + data_len);
        b.put_slice(b"id: ");
        b.put_slice(id.to_string().as_bytes());
        b.put_slice(b"\nevent: ");
        b.put_slice(self.event.as_bytes());
        b.put_u8(b'\n');
        for line in &self.data_lines {
            b.put_slice(b"data: ");
            b.put_slice(line.as_bytes());
            b.put_u8(b'\n');
        }
        b.put_u8(b'\n');
        b.freeze()
    }
}

/// Splits data on CRLF, CR and LF, the three line ends an SSE parser recognises, so that each
/// line becomes its own `data:` field and the client joins them back with LF.
pub fn split_lines(data: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = data;
    loop {
        match rest.find(['\r', '\n']) {
            None => {
                lines.push(rest);
                return lines;
            }
            Some(i) => {
                lines.push(&rest[..i]);
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// The response head of a stream, ended by the blank line (which workerman 4.x forgot), plus the
/// optional `retry:` field that the stream opens with.
pub fn stream_head(allow_origin: Option<&str>, credentials: bool, retry: Option<u64>) -> Bytes {
    let mut b = BytesMut::with_capacity(320);
    b.put_slice(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/event-stream\r\n\
          Cache-Control: no-cache\r\n\
          Connection: keep-alive\r\n\
          X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = allow_origin {
        b.put_slice(b"Access-Control-Allow-Origin: ");
        b.put_slice(origin.as_bytes());
        b.put_slice(b"\r\n");
    }
    if credentials {
        b.put_slice(b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
    }
    b.put_slice(b"Access-Control-Allow-Methods: *\r\nAccess-Control-Allow-Headers: *\r\n\r\n");
    if let Some(ms) = retry {
        b.put_slice(format!("retry: {ms}\n\n").as_bytes());
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_the_seeds_event_with_a_tick_id() {
        let f = FrameEncoder::new("message", "hello").encode(881_234);
        assert_eq!(&f[..], b"id: 881234\nevent: message\ndata: hello\n\n");
    }

    #[test]
    fn multi_line_data_becomes_several_data_fields() {
        let f = FrameEncoder::new("e", "a\nb\r\nc\rd").encode(1);
        assert_eq!(
            &f[..],
            b"id: 1\nevent: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let f = FrameEncoder::new("e", "").encode(2);
        assert_eq!(&f[..], b"id: 2\nevent: e\ndata: \n\n");
        let f = FrameEncoder::new("e", "x\n").encode(3);
        assert_eq!(&f[..], b"id: 3\nevent: e\ndata: x\ndata: \n\n");
    }

    #[test]
    fn ticks_are_whole_intervals_since_the_epoch() {
        let c = TickClock::new(Duration::from_millis(250));
        let now = UNIX_EPOCH + Duration::from_millis(1_000_100);
        let (tick, wait) = c.next_after(now);
        assert_eq!(tick, 4001);
        assert_eq!(wait, Duration::from_millis(150));
        assert_eq!(c.due(tick), UNIX_EPOCH + Duration::from_millis(1_000_250));
        // exactly on a boundary: the next one, a whole interval away
        let (tick, wait) = c.next_after(UNIX_EPOCH + Duration::from_millis(1_000_000));
        assert_eq!((tick, wait), (4001, Duration::from_millis(250)));
    }

    #[test]
    fn clock_steps_never_repeat_an_id_and_are_told_from_a_busy_core() {
        let c = TickClock::new(Duration::from_secs(2));
        let s = Duration::from_secs;
        assert_eq!(c.follow(101, 100, s(2)), (101, ClockStep::OnTime));
        // stepped back an hour: the next id anyway
        assert_eq!(c.follow(10, 100, s(2)), (101, ClockStep::SteppedBack));
        assert_eq!(c.follow(100, 100, s(2)), (101, ClockStep::SteppedBack));
        // stepped forward a minute while 2 s passed
        assert_eq!(
            c.follow(131, 100, s(2)),
            (
                131,
                ClockStep::SteppedForward {
                    missed: 30,
                    step_ms: 60_000
                }
            )
        );
        // the core itself was away for 6 s
        assert_eq!(
            c.follow(104, 100, s(8)),
            (
                104,
                ClockStep::Busy {
                    missed: 3,
                    behind_ms: 6_000
                }
            )
        );
    }

    #[test]
    fn head_ends_with_a_blank_line_and_carries_retry_after_it() {
        let h = stream_head(Some("*"), false, Some(1500));
        let s = std::str::from_utf8(&h).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("\r\nAccess-Control-Allow-Origin: *"));
        assert!(!head.contains("Credentials"));
        assert_eq!(body, "retry: 1500\n\n");
        let h = stream_head(Some("https://a"), true, None);
        assert!(h.ends_with(b"Access-Control-Allow-Headers: *\r\n\r\n"));
        assert!(std::str::from_utf8(&h)
            .unwrap()
            .contains("Access-Control-Allow-Credentials: true\r\n"));
    }
}
