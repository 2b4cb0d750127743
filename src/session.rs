//! The request phase of one connection as a state machine without I/O.
//!
//! [`Session`] owns the bytes received and not yet consumed. The connection code reads into
//! [`Session::buf`] (in place, no copy) and calls [`Session::process`], which answers every complete
//! request buffered (pipelining), drops request bodies, and says what to do next. Keeping the
//! decisions here, apart from sockets and timers, is what lets the fuzzer and the unit tests feed
//! it bytes in any chunking and check that the answers never depend on how the bytes arrived and
//! that the buffer never grows past the head limit.

use bytes::Bytes;

use crate::http::{self, Kind, Reject, Responses, Subscription, Verdict, MAX_HEAD};

/// What the connection should do after writing [`Outcome::replies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read more bytes into `buf` (at most [`Session::room`] of them) and call `process` again.
    NeedMore,
    /// Close the connection (the client asked to, with `Connection: close` or HTTP/1.0).
    Close,
    /// Close in stages, as after a refusal: the client asked to close, but its last request
    /// declared a body, which may still be arriving. Closing a socket with unread bytes sends a
    /// reset that can destroy the answer in flight (RFC 9112 §9.6), so stop sending, then read and
    /// drop what still comes for a short while. Decided from the request alone (a declared
    /// body), never from how much of the body happens to be buffered.
    Linger,
    /// Answer with this refusal, then close.
    Reject(Reject),
    /// The request asks for a stream from an allowed origin: send this head (if the stream cap
    /// has room) and hand the socket over; with a subscription it is a channel stream, without
    /// one a tick stream.
    Stream(Bytes, Option<Subscription>),
}

/// The result of one `process` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Responses to write, in order, before acting on `next`.
    pub replies: Vec<Bytes>,
    pub next: Next,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Session {
    /// Received, not yet consumed bytes. Empty (and may hold no allocation) between requests.
    pub buf: Vec<u8>,
    /// Body bytes of the last request still to arrive and be dropped.
    discard: u64,
    /// Requests answered on this connection.
    served: u64,
}

impl Session {
    /// How many more bytes may be read into `buf` now; never zero while `process` says NeedMore.
    pub fn room(&self) -> usize {
        if self.discard > 0 {
            // Body bytes are dropped as they come; read a buffer's worth at a time.
            return MAX_HEAD.max(self.buf.capacity()) - self.buf.len();
        }
        MAX_HEAD - self.buf.len()
    }

    /// Nothing pending and at least one request answered: a kept-alive connection at rest.
    pub fn idle(&self) -> bool {
        self.buf.is_empty() && self.discard == 0 && self.served > 0
    }

    /// Consumes what `buf` holds: drops body bytes, answers complete requests, decides.
    pub fn process(&mut self, responses: &Responses, max_body: u64) -> Outcome {
        let mut replies = Vec::new();
        loop {
            if self.discard > 0 {
                let n = (self.buf.len() as u64).min(self.discard);
                self.buf.drain(..n as usize);
                self.discard -= n;
                if self.discard > 0 {
                    return Outcome {
                        replies,
                        next: Next::NeedMore,
                    };
                }
            }
            let (consumed, close, body) = match http::parse(&self.buf, max_body) {
                Verdict::Partial => {
                    return Outcome {
                        replies,
                        next: Next::NeedMore,
                    }
                }
                Verdict::Reject(r) => {
                    return Outcome {
                        replies,
                        next: Next::Reject(r),
                    }
                }
                Verdict::Request(req) if req.kind == Kind::Stream => {
                    let next = match http::subscription(&req, responses.max_channels) {
                        _ if !responses.origin_allowed(req.origin) => {
                            Next::Reject(Reject::OriginRefused)
                        }
                        Err(r) => Next::Reject(r),
                        Ok(sub) => {
                            if let (None, Some(id)) = (&sub, req.last_event_id) {
                                tracing::debug!(last_event_id = %String::from_utf8_lossy(id),
                                    "tick stream resumes; ticks are not stored, it continues with the next tick");
                            }
                            Next::Stream(responses.stream_head(req.origin), sub)
                        }
                    };
                    return Outcome { replies, next };
                }
                Verdict::Request(req) => {
                    replies.push(match req.kind {
                        Kind::Preflight => responses.preflight(&req),
                        _ => responses.ok_for(&req).clone(),
                    });
                    let buffered_body = (self.buf.len() - req.head_len) as u64;
                    self.discard = req.body_len;
                    let in_buf = req.body_len.min(buffered_body) as usize;
                    self.discard -= in_buf as u64;
                    (req.head_len + in_buf, !req.keep_alive, req.body_len > 0)
                }
            };
            self.buf.drain(..consumed);
            self.served += 1;
            if close {
                return Outcome {
                    replies,
                    next: if body { Next::Linger } else { Next::Close },
                };
            }
        }
    }

    /// Requests answered so far (for the `ok` counter).
    pub fn served(&self) -> u64 {
        self.served
    }
}

/// Feeds `input` to a fresh session in chunks of the given sizes (cycled; 0 means "as much as
/// fits"), the way the connection's reads would, until it decides something other than NeedMore
/// or the input runs out. Returns every reply and the final decision (`None`: input ran out while
/// the session wanted more). Panics if the buffer would ever exceed the head limit.
pub fn drive(
    responses: &Responses,
    max_body: u64,
    input: &[u8],
    chunks: &[usize],
) -> (Vec<Bytes>, Option<Next>) {
    let mut s = Session::default();
    let mut replies = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let room = s.room();
        assert!(room > 0, "NeedMore with no room to read into");
        let want = match sizes.next() {
            Some(0) | None => room,
            Some(n) => n.min(room),
        };
        let n = want.min(rest.len());
        s.buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        assert!(
            s.buf.len() <= MAX_HEAD.max(s.buf.capacity()),
            "buffer grew past the limit"
        );
        let out = s.process(responses, max_body);
        assert!(
            s.buf.len() <= MAX_HEAD,
            "buffer kept more than the head limit"
        );
        replies.extend(out.replies);
        if out.next != Next::NeedMore {
            return (replies, Some(out.next));
        }
    }
    (replies, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn corpus() -> Vec<Vec<u8>> {
        let mut c: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /3 HTTP/1.1\r\n\r\n".to_vec(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldHEAD / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\nGET /s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".to_vec(),
            b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            b"\r\n\r\n\r\n".to_vec(),
        ];
        c.push(
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            )
            .into_bytes(),
        );
        c.push(
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /{} HTTP/1.1\r\n",
                "b".repeat(8200)
            )
            .into_bytes(),
        );
        c.push(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n{}GET / HTTP/1.1\r\nHost: x\r\n\r\n", "z".repeat(20000)).into_bytes());
        // a body larger than a read, then a request whose line runs past the head limit
        c.push(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n{}GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "z".repeat(9000), "t".repeat(9000)).into_bytes());
        c.push(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody"
                .to_vec(),
        );
        c.push(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec());
        c.push(
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\nGET / HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(),
        );
        c.push(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nCONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n".to_vec(),
        );
        c
    }

    #[test]
    fn answers_do_not_depend_on_chunking() {
        let r = Responses::new(&Config::default());
        for input in corpus() {
            let whole = drive(&r, 1 << 20, &input, &[0]);
            for chunks in [&[1usize][..], &[2], &[3, 7], &[1, 100], &[4096]] {
                assert_eq!(
                    drive(&r, 1 << 20, &input, chunks),
                    whole,
                    "{chunks:?} of {:?}",
                    String::from_utf8_lossy(&input[..input.len().min(80)])
                );
            }
            if input.len() < 400 {
                for split in 1..input.len() {
                    assert_eq!(drive(&r, 1 << 20, &input, &[split, 0]), whole);
                }
            }
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let r = Responses::new(&Config::default());
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        let (replies, next) = drive(&r, 1 << 20, input, &[0]);
        assert_eq!(replies, vec![r.ok.clone(), r.head.clone()]);
        assert_eq!(next, Some(Next::Stream(r.stream_any.clone(), None)));
        let (replies, next) = drive(
            &r,
            1 << 20,
            b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0],
        );
        assert_eq!(replies, vec![r.ok_close.clone()]);
        assert_eq!(next, Some(Next::Close));
    }

    #[test]
    fn bodies_are_dropped_even_when_larger_than_the_buffer() {
        let r = Responses::new(&Config::default());
        let mut input = b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'G', 50_000)); // looks like a request; is body
        input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (replies, next) = drive(&r, 1 << 20, &input, &[1000]);
        assert_eq!(replies, vec![r.ok.clone(), r.ok_close.clone()]);
        assert_eq!(next, Some(Next::Close));
    }

    #[test]
    fn closing_after_a_body_lingers_however_the_body_arrives() {
        let r = Responses::new(&Config::default());
        let close = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\n";
        // the body not sent yet, half of it, or all of it: the same decision
        for body in [&b""[..], b"he", b"hello"] {
            let input = [&close[..], body].concat();
            let (replies, next) = drive(&r, 1 << 20, &input, &[0]);
            assert_eq!(replies, vec![r.ok_close.clone()]);
            assert_eq!(next, Some(Next::Linger), "{body:?}");
        }
        // HTTP/1.0 closes by default: a body makes it linger too
        let (_, next) = drive(
            &r,
            1 << 20,
            b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
            &[0],
        );
        assert_eq!(next, Some(Next::Linger));
        // without a body there is nothing to wait for
        let (_, next) = drive(
            &r,
            1 << 20,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            &[0],
        );
        assert_eq!(next, Some(Next::Close));
    }

    #[test]
    fn refusals_of_round_two_do_not_depend_on_chunking() {
        let r = Responses::new(&Config::default());
        let target = "a".repeat(MAX_HEAD + 100);
        for (input, want) in [
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                    .to_owned(),
                Reject::BadTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: bad host\r\n\r\n".to_owned(),
                Reject::BadHost,
            ),
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_owned(),
                Reject::MethodNotAllowed,
            ),
            (
                format!("GET /{target} HTTP/1.1\r\nHost: x\r\n\r\n"),
                Reject::UriTooLong,
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /{target} HTTP/1.1\r\n\r\n"),
                Reject::UriTooLong,
            ),
        ] {
            for chunks in [&[0usize][..], &[1], &[3, 7], &[4096], &[MAX_HEAD - 1, 1]] {
                let (_, next) = drive(&r, 1 << 20, input.as_bytes(), chunks);
                assert_eq!(next, Some(Next::Reject(want)), "{chunks:?} of {input:.60}");
            }
        }
    }

    #[test]
    fn a_silent_connection_is_idle_only_after_a_request() {
        let r = Responses::new(&Config::default());
        let mut s = Session::default();
        assert!(!s.idle());
        s.buf
            .extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(s.process(&r, 0).next, Next::NeedMore);
        assert!(s.idle());
        s.buf.extend_from_slice(b"GET");
        assert_eq!(s.process(&r, 0).next, Next::NeedMore);
        assert!(!s.idle());
    }
}
