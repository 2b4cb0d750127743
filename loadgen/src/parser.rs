//! Streaming `text/event-stream` parser following the WHATWG HTML "event stream
//! interpretation" rules.
//!
//! It is fed arbitrary byte chunks exactly as they come off the socket and calls back once
//! per dispatched event, so it keeps only what must outlive a read: a partial line, the
//! event being built and the last event ID. Lines are split on the ASCII bytes CR and LF,
//! which never occur inside a multi-byte UTF-8 sequence, so decoding each field value on
//! its own (with U+FFFD for invalid bytes, like the spec's UTF-8 decode) gives the same
//! text as decoding the whole stream first. A CR ends a line at once; an LF right after
//! it (even in the next read) is skipped. In the steady state it allocates nothing: the
//! buffers are cleared, never dropped.

/// One dispatched event, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event` field, or `message` when it was absent or empty.
    pub event_type: &'a str,
    /// The `data` lines joined by LF, without the trailing LF.
    pub data: &'a str,
    /// The event source's last event ID string at dispatch (persists across events).
    pub last_event_id: &'a str,
    /// Whether this event's own lines set the id (not part of the DOM event; a load
    /// generator checks id sequences only on events that carry an id).
    pub has_own_id: bool,
}

/// What a blank line dispatches: an event, or, when the block had no data but set an id (a
/// server announcing its position, e.g. ringcast's `id: <position>` right after the head),
/// just the new last event ID. The latter is no DOM event; a load generator wants it anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch<'a> {
    Event(Event<'a>),
    /// An `id` field without data: the last event ID is now this.
    Id(&'a str),
}

/// The stream broke a limit the parser enforces to keep a hostile server from growing a
/// connection's memory without bound (the spec sets no limit; real clients do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub limit: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event stream line or event longer than {} bytes",
            self.limit
        )
    }
}

impl std::error::Error for TooLong {}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Buffers that grew past this for one long line or event are freed rather than kept, so a
/// rare big event does not raise every connection's memory for good.
const KEEP_CAPACITY: usize = 1024;

#[derive(Debug)]
pub struct Parser {
    /// How many bytes of a leading BOM have been seen; `None` once the question is settled.
    bom_seen: Option<u8>,
    /// The previous line ended with CR, so an LF at the next byte belongs to it.
    skip_lf: bool,
    /// Bytes of a line not yet terminated by the end of the last chunk.
    line: Vec<u8>,
    data: String,
    event_type: String,
    id_buffer: String,
    /// An `id` field was processed since the last dispatch.
    id_in_event: bool,
    last_event_id: String,
    retry_ms: Option<u64>,
    limit: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(Self::DEFAULT_LIMIT)
    }
}

impl Parser {
    /// Default cap on one line and on one event's data.
    pub const DEFAULT_LIMIT: usize = 64 * 1024;

    pub fn new(limit: usize) -> Self {
        Parser {
            bom_seen: Some(0),
            skip_lf: false,
            line: Vec::new(),
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            id_in_event: false,
            last_event_id: String::new(),
            retry_ms: None,
            limit,
        }
    }

    /// The reconnection time the stream asked for with `retry:`, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The last event ID string, as sent in `Last-Event-ID` on reconnection.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The stream ended (or broke): discard the unterminated line and event, and get ready
    /// for the next response body. The last event ID string and the reconnection time are
    /// kept, as an EventSource keeps them across reconnections.
    pub fn end_of_stream(&mut self) {
        self.bom_seen = Some(0);
        self.skip_lf = false;
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
        self.id_in_event = false;
    }

    /// Feed the next chunk of the response body; `on_event` runs once per dispatched event.
    /// (The connections use `feed_dispatches`; the conformance tests use this.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn feed<F: FnMut(Event<'_>)>(
        &mut self,
        input: &[u8],
        mut on_event: F,
    ) -> Result<(), TooLong> {
        self.feed_dispatches(input, |d| {
            if let Dispatch::Event(e) = d {
                on_event(e);
            }
        })
    }

    /// Like `feed`, but also reports blocks that set an id without data (`Dispatch::Id`).
    pub fn feed_dispatches<F: FnMut(Dispatch<'_>)>(
        &mut self,
        mut input: &[u8],
        mut on_event: F,
    ) -> Result<(), TooLong> {
        if let Some(seen) = self.bom_seen {
            let mut seen = seen as usize;
            while seen < BOM.len() {
                match input.first() {
                    None => {
                        self.bom_seen = Some(seen as u8);
                        return Ok(());
                    }
                    Some(&b) if b == BOM[seen] => {
                        seen += 1;
                        input = &input[1..];
                    }
                    Some(_) => break,
                }
            }
            self.bom_seen = None;
            if seen < BOM.len() {
                // Not a BOM after all: the held bytes are ordinary (invalid UTF-8) text.
                self.feed_lines(&BOM[..seen], &mut on_event)?;
            }
        }
        self.feed_lines(input, &mut on_event)
    }

    fn feed_lines<F: FnMut(Dispatch<'_>)>(
        &mut self,
        mut input: &[u8],
        on_event: &mut F,
    ) -> Result<(), TooLong> {
        if self.skip_lf {
            if let Some((&first, rest)) = input.split_first() {
                self.skip_lf = false;
                if first == b'\n' {
                    input = rest;
                }
            }
        }
        while let Some(end) = memchr::memchr2(b'\r', b'\n', input) {
            let (head, tail) = input.split_at(end);
            if self.line.is_empty() {
                self.process_line(head, on_event)?;
            } else {
                self.push_partial(head)?;
                let mut line = std::mem::take(&mut self.line);
                let result = self.process_line(&line, on_event);
                if line.capacity() <= KEEP_CAPACITY {
                    line.clear();
                    self.line = line;
                }
                result?;
            }
            input = &tail[1..];
            if tail[0] == b'\r' {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        self.push_partial(input)
    }

    fn push_partial(&mut self, bytes: &[u8]) -> Result<(), TooLong> {
        if self.line.len() + bytes.len() > self.limit {
            return Err(TooLong { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line<F: FnMut(Dispatch<'_>)>(
        &mut self,
        line: &[u8],
        on_event: &mut F,
    ) -> Result<(), TooLong> {
        if line.is_empty() {
            self.dispatch(on_event);
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return Ok(()), // comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(TooLong { limit: self.limit });
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer.clear();
                self.id_buffer.push_str(&String::from_utf8_lossy(value));
                self.id_in_event = true;
            }
            // "Consists of only ASCII digits": an empty value sets nothing (as browsers do);
            // digits beyond u64 saturate rather than wrap.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry_ms = Some(ms);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<F: FnMut(Dispatch<'_>)>(&mut self, on_event: &mut F) {
        self.last_event_id.clone_from(&self.id_buffer);
        let has_own_id = std::mem::take(&mut self.id_in_event);
        if self.data.is_empty() {
            self.event_type.clear();
            if has_own_id {
                on_event(Dispatch::Id(&self.last_event_id));
            }
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event_type = if self.event_type.is_empty() {
            "message"
        } else {
            &self.event_type
        };
        on_event(Dispatch::Event(Event {
            event_type,
            data: &self.data,
            last_event_id: &self.last_event_id,
            has_own_id,
        }));
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = String::new();
        }
        self.data.clear();
        self.event_type.clear();
    }
}

#[cfg(test)]
mod tests;
