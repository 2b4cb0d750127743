//! HTTP/1.x request heads: zero-copy parsing with httparse, classification into what the server
//! does with the request, and the canned responses it answers with.
//!
//! The parser sees the connection's read buffer and borrows from it; nothing is copied. Every way
//! a request can be wrong maps to one status here, so the connection code only has to act on a
//! [`Verdict`]. The limits (8 KiB head, 64 headers) are those of the server card.

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::{Config, Cors};
use crate::sse;

/// Largest request head (request line + headers + blank line) we accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The head is not complete yet.
    Partial,
    /// A complete, valid request.
    Request(Request<'a>),
    /// A request we refuse; answer with this status and close.
    Reject(Reject),
}

/// The parts of a request the server acts on. Borrows from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: Kind,
    /// Length of the head in bytes (where the body, if any, begins).
    pub head_len: usize,
    /// Declared body length (Content-Length), 0 if none.
    pub body_len: u64,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// HTTP/1.0 (a kept-alive connection must then be announced).
    pub http10: bool,
    pub origin: Option<&'a [u8]>,
    /// `Last-Event-ID` header, or the `lastEventId` / `last_event_id` query parameter (raw).
    pub last_event_id: Option<&'a [u8]>,
    /// The request-target's query (after `?`), raw.
    pub query: Option<&'a [u8]>,
    /// `Access-Control-Request-Headers` of a preflight.
    pub request_headers: Option<&'a [u8]>,
}

/// What a stream request asked to subscribe to (validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Distinct, valid channel names, in the order asked.
    pub channels: Vec<Box<str>>,
    /// `Last-Event-ID` (header or query), raw; `None` when absent or empty.
    pub last_event_id: Option<Box<[u8]>>,
}

/// The channels a stream request names with `channel` query parameters (percent-decoded), or
/// `None` for a tick stream (no `channel` parameter: the seed's behaviour).
pub fn subscription(
    req: &Request<'_>,
    max_channels: usize,
) -> Result<Option<Subscription>, Reject> {
    let Some(query) = req.query else {
        return Ok(None);
    };
    let mut channels: Vec<Box<str>> = Vec::new();
    for (k, v) in form_urlencoded::parse(query) {
        if k != "channel" {
            continue;
        }
        if !crate::event::valid_channel(v.as_bytes()) {
            return Err(Reject::BadChannel);
        }
        if channels.iter().any(|c| **c == *v) {
            continue;
        }
        if channels.len() == max_channels {
            return Err(Reject::TooManyChannels);
        }
        channels.push(v.into());
    }
    if channels.is_empty() {
        return Ok(None);
    }
    let last_event_id = req
        .last_event_id
        .filter(|id| !id.is_empty())
        .map(Box::<[u8]>::from);
    Ok(Some(Subscription {
        channels,
        last_event_id,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A GET that asks for `text/event-stream`.
    Stream,
    /// A CORS preflight (OPTIONS).
    Preflight,
    /// HEAD: the `ok` response without its body.
    Head,
    /// Anything else: `ok`.
    Ok,
}

/// Why a request is refused; each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Malformed request, bad or duplicate Content-Length, CL with TE, missing Host. 400.
    BadRequest,
    /// The client did not finish its head in time. 408.
    Timeout,
    /// Transfer-Encoding (a chunked body) is not accepted. 411.
    LengthRequired,
    /// Content-Length above `--max-body`. 413.
    BodyTooLarge,
    /// Head over 8 KiB or over 64 headers. 431.
    HeadTooLarge,
    /// SSE request from an Origin the CORS list does not allow. 403.
    OriginRefused,
    /// At the stream cap. 503 with Retry-After.
    Busy,
    /// A `channel` parameter that is not 1–128 bytes of `[A-Za-z0-9_.:-]`. 400.
    BadChannel,
    /// More distinct channels than `--max-channels-per-stream`. 400.
    TooManyChannels,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest | Reject::BadChannel | Reject::TooManyChannels => 400,
            Reject::OriginRefused => 403,
            Reject::Timeout => 408,
            Reject::LengthRequired => 411,
            Reject::BodyTooLarge => 413,
            Reject::HeadTooLarge => 431,
            Reject::Busy => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest | Reject::BadChannel | Reject::TooManyChannels => "Bad Request",
            Reject::OriginRefused => "Forbidden",
            Reject::Timeout => "Request Timeout",
            Reject::LengthRequired => "Length Required",
            Reject::BodyTooLarge => "Content Too Large",
            Reject::HeadTooLarge => "Request Header Fields Too Large",
            Reject::Busy => "Service Unavailable",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad request\n",
            Reject::OriginRefused => "origin not allowed\n",
            Reject::Timeout => "request header timeout\n",
            Reject::LengthRequired => {
                "chunked request bodies are not accepted; send Content-Length\n"
            }
            Reject::BodyTooLarge => "request body too large\n",
            Reject::HeadTooLarge => "request header section too large\n",
            Reject::Busy => "too many streams, retry later\n",
            Reject::BadChannel => {
                "invalid channel name: 1-128 bytes of letters, digits, '_', '.', ':' or '-'\n"
            }
            Reject::TooManyChannels => "too many channels for one stream\n",
        }
    }
}

/// Parses the head at the start of `buf` and decides what it is.
pub fn parse(buf: &[u8], max_body: u64) -> Verdict<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Verdict::Reject(Reject::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Verdict::Partial,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Reject(Reject::HeadTooLarge),
        Err(_) => return Verdict::Reject(Reject::BadRequest),
    };
    if head_len > MAX_HEAD {
        return Verdict::Reject(Reject::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Verdict::Reject(Reject::BadRequest);
    };

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut wants_stream = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut origin = None;
    let mut last_event_id = None;
    let mut request_headers = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Verdict::Reject(Reject::BadRequest);
            }
            match parse_content_length(value) {
                Some(n) => content_length = Some(n),
                None => return Verdict::Reject(Reject::BadRequest),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"accept") {
            wants_stream |= accepts_event_stream(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case(b"last-event-id") {
            last_event_id = Some(value);
        } else if name.eq_ignore_ascii_case(b"access-control-request-headers") {
            request_headers = Some(value);
        }
    }

    // Request smuggling defences (RFC 9112 §6.3): never guess which framing the client meant.
    if transfer_encoding && content_length.is_some() {
        return Verdict::Reject(Reject::BadRequest);
    }
    if transfer_encoding {
        return Verdict::Reject(Reject::LengthRequired);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Verdict::Reject(Reject::BodyTooLarge);
    }
    // HTTP/1.1 requires exactly one Host; HTTP/1.0 allows none, never several.
    if hosts > 1 || (version == 1 && hosts == 0) {
        return Verdict::Reject(Reject::BadRequest);
    }

    let keep_alive = if version == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    let kind = match method {
        "GET" if wants_stream => Kind::Stream,
        "OPTIONS" => Kind::Preflight,
        "HEAD" => Kind::Head,
        _ => Kind::Ok,
    };
    let query = path
        .bytes()
        .position(|b| b == b'?')
        .map(|q| &path.as_bytes()[q + 1..]);
    if kind == Kind::Stream && last_event_id.is_none_or(<[u8]>::is_empty) {
        last_event_id = query.and_then(|q| {
            query_param(q, b"lastEventId").or_else(|| query_param(q, b"last_event_id"))
        });
    }
    Verdict::Request(Request {
        kind,
        head_len,
        body_len,
        keep_alive,
        http10: version == 0,
        origin,
        last_event_id,
        query,
        request_headers,
    })
}

/// Content-Length is 1*DIGIT; no sign, no spaces inside, no overflow.
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether an Accept value names `text/event-stream` (case-insensitive, parameters allowed,
/// among other media ranges). A range with `q=0` means "not acceptable" and does not count;
/// wildcards such as `*/*` do not name it.
pub fn accepts_event_stream(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|range| {
        let mut parts = range.split(|&b| b == b';');
        let media = parts.next().unwrap_or_default().trim_ascii();
        if !media.eq_ignore_ascii_case(b"text/event-stream") {
            return false;
        }
        !parts.any(|p| {
            let p = p.trim_ascii();
            p.len() >= 2
                && p[..2].eq_ignore_ascii_case(b"q=")
                && p[2..].iter().all(|&b| b == b'0' || b == b'.')
        })
    })
}

/// The raw value of a query parameter (not percent-decoded).
fn query_param<'a>(query: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    query
        .split(|&b| b == b'&')
        .find_map(|kv| match kv.iter().position(|&b| b == b'=') {
            Some(i) if &kv[..i] == key => Some(&kv[i + 1..]),
            _ => None,
        })
}

/// Every response the server sends, encoded once at start-up. Cloning a `Bytes` is a reference
/// count, so the connection code never formats anything on the common paths.
#[derive(Clone, Debug)]
pub struct Responses {
    pub ok: Bytes,
    pub ok_close: Bytes,
    /// For HTTP/1.0 clients that asked to keep the connection.
    pub ok_keep_alive: Bytes,
    pub head: Bytes,
    pub head_close: Bytes,
    pub head_keep_alive: Bytes,
    /// Stream head for `Cors::Any` (or a request without Origin).
    pub stream_any: Bytes,
    pub preflight_any: Bytes,
    cors: Cors,
    retry: Option<u64>,
    retry_after: u64,
    pub max_channels: usize,
}

impl Responses {
    pub fn new(cfg: &Config) -> Self {
        let ok = |conn: &str, body: bool| -> Bytes {
            let mut s = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n{conn}\r\n"
            );
            if body {
                s.push_str("ok");
            }
            Bytes::from(s)
        };
        let any_origin = match cfg.cors {
            Cors::Any => Some("*"),
            Cors::List(_) => None,
        };
        Responses {
            ok: ok("", true),
            ok_close: ok("Connection: close\r\n", true),
            ok_keep_alive: ok("Connection: keep-alive\r\n", true),
            head: ok("", false),
            head_close: ok("Connection: close\r\n", false),
            head_keep_alive: ok("Connection: keep-alive\r\n", false),
            stream_any: sse::stream_head(any_origin, false, cfg.retry),
            preflight_any: preflight(any_origin, false, None, true),
            cors: cfg.cors.clone(),
            retry: cfg.retry,
            retry_after: cfg.retry_after_secs(),
            max_channels: cfg.max_channels,
        }
    }

    /// The `ok` (or HEAD) response for a request.
    pub fn ok_for(&self, req: &Request<'_>) -> &Bytes {
        match (req.kind == Kind::Head, req.keep_alive, req.http10) {
            (false, false, _) => &self.ok_close,
            (false, true, true) => &self.ok_keep_alive,
            (false, true, false) => &self.ok,
            (true, false, _) => &self.head_close,
            (true, true, true) => &self.head_keep_alive,
            (true, true, false) => &self.head,
        }
    }

    /// Is this Origin allowed to open a stream? (`None` = no Origin header: not a CORS request.)
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        match (&self.cors, origin) {
            (Cors::Any, _) | (_, None) => true,
            (Cors::List(list), Some(o)) => list.iter().any(|l| l.as_bytes() == o),
        }
    }

    /// The stream head for a request whose origin is allowed.
    pub fn stream_head(&self, origin: Option<&[u8]>) -> Bytes {
        match (&self.cors, origin) {
            (Cors::List(_), Some(o)) => {
                let o = String::from_utf8_lossy(o);
                sse::stream_head(Some(&o), true, self.retry)
            }
            _ => self.stream_any.clone(),
        }
    }

    /// 204 for an OPTIONS preflight.
    pub fn preflight(&self, req: &Request<'_>) -> Bytes {
        match (&self.cors, req.origin) {
            (Cors::List(_), Some(o)) if self.origin_allowed(Some(o)) => {
                let o = String::from_utf8_lossy(o);
                let h = req.request_headers.map(String::from_utf8_lossy);
                preflight(Some(&o), true, h.as_deref(), req.keep_alive)
            }
            (Cors::List(_), _) => preflight(None, false, None, req.keep_alive),
            (Cors::Any, _) if req.keep_alive => self.preflight_any.clone(),
            (Cors::Any, _) => preflight(Some("*"), false, None, false),
        }
    }

    /// The response for a refused request; the connection is closed after it.
    pub fn reject(&self, r: Reject) -> Bytes {
        let limit;
        let body = match r {
            Reject::TooManyChannels => {
                limit = format!(
                    "too many channels for one stream: at most {} (--max-channels-per-stream)\n",
                    self.max_channels
                );
                &limit
            }
            _ => r.body(),
        };
        let mut b = BytesMut::with_capacity(160 + body.len());
        b.put_slice(format!("HTTP/1.1 {} {}\r\n", r.status(), r.reason()).as_bytes());
        b.put_slice(b"Content-Type: text/plain\r\nConnection: close\r\n");
        if r == Reject::Busy {
            b.put_slice(format!("Retry-After: {}\r\n", self.retry_after).as_bytes());
        }
        b.put_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        b.freeze()
    }
}

fn preflight(origin: Option<&str>, credentials: bool, headers: Option<&str>, keep: bool) -> Bytes {
    let mut s = String::from("HTTP/1.1 204 No Content\r\n");
    if let Some(o) = origin {
        s.push_str(&format!("Access-Control-Allow-Origin: {o}\r\n"));
    }
    if credentials {
        // `*` is not a wildcard for credentialed requests: name what we allow.
        s.push_str("Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
        s.push_str("Access-Control-Allow-Methods: GET, HEAD, POST, OPTIONS\r\n");
        if let Some(h) = headers {
            s.push_str(&format!("Access-Control-Allow-Headers: {h}\r\n"));
        }
    } else {
        s.push_str("Access-Control-Allow-Methods: *\r\nAccess-Control-Allow-Headers: *\r\n");
    }
    s.push_str("Access-Control-Max-Age: 86400\r\n");
    if !keep {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Verdict<'_> {
        parse(raw.as_bytes(), 1 << 20)
    }

    fn kind(raw: &str) -> Kind {
        match req(raw) {
            Verdict::Request(r) => r.kind,
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn accept_names_event_stream() {
        for v in [
            "text/event-stream",
            "TEXT/Event-Stream",
            "text/event-stream; charset=utf-8",
            "text/html, text/event-stream;q=0.9, */*;q=0.1",
            " text/event-stream ;q=1",
        ] {
            assert!(accepts_event_stream(v.as_bytes()), "{v}");
        }
        for v in [
            "*/*",
            "text/*",
            "text/event-streams",
            "text/event-stream;q=0",
            "",
            "text/plain",
        ] {
            assert!(!accepts_event_stream(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn classifies_requests() {
        let h = "Host: x\r\n";
        assert_eq!(
            kind(&format!(
                "GET / HTTP/1.1\r\n{h}Accept: text/event-stream\r\n\r\n"
            )),
            Kind::Stream
        );
        assert_eq!(
            kind(&format!("GET / HTTP/1.1\r\n{h}Accept: text/html\r\n\r\n")),
            Kind::Ok
        );
        assert_eq!(
            kind(&format!(
                "POST / HTTP/1.1\r\n{h}Accept: text/event-stream\r\n\r\n"
            )),
            Kind::Ok
        );
        assert_eq!(
            kind(&format!("OPTIONS / HTTP/1.1\r\n{h}\r\n")),
            Kind::Preflight
        );
        assert_eq!(kind(&format!("HEAD / HTTP/1.1\r\n{h}\r\n")), Kind::Head);
        assert_eq!(
            kind("GET / HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"),
            Kind::Stream
        );
    }

    #[test]
    fn keep_alive_follows_the_version() {
        let ka = |raw: &str| match req(raw) {
            Verdict::Request(r) => r.keep_alive,
            v => panic!("{v:?}"),
        };
        assert!(ka("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn partial_until_the_blank_line() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r\n"), Verdict::Partial);
        assert_eq!(req("GE"), Verdict::Partial);
    }

    #[test]
    fn rejects_bad_framing_and_oversize() {
        let r = |raw: &str| match req(raw) {
            Verdict::Reject(r) => r,
            v => panic!("{raw:?}: {v:?}"),
        };
        assert_eq!(
            r("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Reject::LengthRequired
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"),
            Reject::BodyTooLarge
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            r("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Reject::BadRequest);
        assert_eq!(
            r("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r("GET / HTTP/1.1\rHost: x\r\n\r\n"), Reject::BadRequest);
        assert_eq!(r("G\0T / HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            r(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            Reject::HeadTooLarge
        );
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(r(&long), Reject::HeadTooLarge);
    }

    #[test]
    fn last_event_id_from_header_or_query() {
        let id = |raw: &str| match req(raw) {
            Verdict::Request(r) => r.last_event_id.map(|v| v.to_vec()),
            v => panic!("{v:?}"),
        };
        let sse = "Accept: text/event-stream\r\nHost: x\r\n";
        assert_eq!(
            id(&format!("GET / HTTP/1.1\r\n{sse}Last-Event-ID: 42\r\n\r\n")),
            Some(b"42".to_vec())
        );
        assert_eq!(
            id(&format!("GET /?a=1&lastEventId=7 HTTP/1.1\r\n{sse}\r\n")),
            Some(b"7".to_vec())
        );
        assert_eq!(id(&format!("GET / HTTP/1.1\r\n{sse}\r\n")), None);
    }

    #[test]
    fn responses_are_well_formed() {
        let cfg = Config::default();
        let r = Responses::new(&cfg);
        assert_eq!(
            &r.ok[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
        );
        assert!(r.head.ends_with(b"\r\n\r\n"));
        let busy = r.reject(Reject::Busy);
        assert!(busy.starts_with(b"HTTP/1.1 503 "));
        assert!(std::str::from_utf8(&busy)
            .unwrap()
            .contains("\r\nRetry-After: 2\r\n"));
    }

    #[test]
    fn origin_list_is_enforced() {
        let cfg = Config {
            cors: Cors::List(vec!["https://a.example".into()]),
            ..Config::default()
        };
        let r = Responses::new(&cfg);
        assert!(r.origin_allowed(Some(b"https://a.example")));
        assert!(!r.origin_allowed(Some(b"https://evil.example")));
        assert!(r.origin_allowed(None));
        let h = r.stream_head(Some(b"https://a.example"));
        let s = std::str::from_utf8(&h).unwrap();
        assert!(s.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(s.contains("Access-Control-Allow-Credentials: true\r\n"));
    }
}
