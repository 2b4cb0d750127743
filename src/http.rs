//! HTTP/1.x request heads: zero-copy parsing with httparse, classification into what the server
//! does with the request, and the canned responses it answers with.
//!
//! The parser sees the connection's read buffer and borrows from it; nothing is copied. Every way
//! a request can be wrong maps to one status here, so the connection code only has to act on a
//! [`Verdict`]. The limits (8 KiB head, 64 headers) are those of the server card. The checks follow
//! RFC 9110 and RFC 9112: message framing (Content-Length, Transfer-Encoding), the Host field, the
//! request line's length, and the methods a plain server must not pretend to serve (CONNECT).

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
    /// Malformed request, bad or duplicate Content-Length, CL with TE, missing or several Host.
    /// 400.
    BadRequest,
    /// A Transfer-Encoding whose final coding is not `chunked` (or `chunked` twice, or TE in
    /// HTTP/1.0): the body's length cannot be determined (RFC 9112 §6.3). 400.
    BadTransferEncoding,
    /// A Host value that is not `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2). 400.
    BadHost,
    /// The client did not finish its head in time. 408.
    Timeout,
    /// CONNECT: this server opens no tunnels, and a 2xx would say it did (RFC 9110 §9.3.6). 405
    /// with `Allow`.
    MethodNotAllowed,
    /// A well-formed chunked body (Transfer-Encoding ending in `chunked`) is not accepted. 411.
    LengthRequired,
    /// Content-Length above `--max-body`. 413.
    BodyTooLarge,
    /// The request line did not end within the 8 KiB head: a request-target longer than we
    /// parse (RFC 9112 §3). 414.
    UriTooLong,
    /// Head over 8 KiB (with a complete request line) or over 64 header fields. 431.
    HeadTooLarge,
    /// A method that runs past the 8 KiB head, longer than any we implement (RFC 9112 §3). 501.
    NotImplemented,
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
            Reject::BadRequest
            | Reject::BadTransferEncoding
            | Reject::BadHost
            | Reject::BadChannel
            | Reject::TooManyChannels => 400,
            Reject::OriginRefused => 403,
            Reject::MethodNotAllowed => 405,
            Reject::Timeout => 408,
            Reject::LengthRequired => 411,
            Reject::BodyTooLarge => 413,
            Reject::UriTooLong => 414,
            Reject::HeadTooLarge => 431,
            Reject::NotImplemented => 501,
            Reject::Busy => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest
            | Reject::BadTransferEncoding
            | Reject::BadHost
            | Reject::BadChannel
            | Reject::TooManyChannels => "Bad Request",
            Reject::OriginRefused => "Forbidden",
            Reject::MethodNotAllowed => "Method Not Allowed",
            Reject::Timeout => "Request Timeout",
            Reject::LengthRequired => "Length Required",
            Reject::BodyTooLarge => "Content Too Large",
            Reject::UriTooLong => "URI Too Long",
            Reject::HeadTooLarge => "Request Header Fields Too Large",
            Reject::NotImplemented => "Not Implemented",
            Reject::Busy => "Service Unavailable",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad request\n",
            Reject::BadTransferEncoding => {
                "bad Transfer-Encoding: the final coding must be chunked (once), and HTTP/1.1\n"
            }
            Reject::BadHost => "invalid Host header: expected host[:port]\n",
            Reject::OriginRefused => "origin not allowed\n",
            Reject::MethodNotAllowed => "CONNECT is not supported: this server opens no tunnels\n",
            Reject::Timeout => "request header timeout\n",
            Reject::LengthRequired => {
                "chunked request bodies are not accepted; send Content-Length\n"
            }
            Reject::BodyTooLarge => "request body too large\n",
            Reject::UriTooLong => "request-target too long\n",
            Reject::HeadTooLarge => "request header section too large\n",
            Reject::NotImplemented => "method not implemented\n",
            Reject::Busy => "too many streams, retry later\n",
            Reject::BadChannel => {
                "invalid channel name: 1-128 bytes of letters, digits, '_', '.', ':' or '-'\n"
            }
            Reject::TooManyChannels => "too many channels for one stream\n",
        }
    }
}

/// The methods named in the `Allow` of a `405`: those the server documents (and its credentialed
/// preflights list). Any method but CONNECT is answered `ok`.
pub const ALLOW: &str = "GET, HEAD, POST, OPTIONS";

/// Parses the head at the start of `buf` and decides what it is.
///
/// Only the first [`MAX_HEAD`] bytes are looked at, so the decision never depends on how many
/// bytes past the limit happen to be buffered (the answers must not depend on how reads split).
pub fn parse(buf: &[u8], max_body: u64) -> Verdict<'_> {
    let buf = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Verdict::Reject(too_large(buf))
        }
        Ok(httparse::Status::Partial) => return Verdict::Partial,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Reject(Reject::HeadTooLarge),
        Err(_) => return Verdict::Reject(Reject::BadRequest),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Verdict::Reject(Reject::BadRequest);
    };

    let mut content_length: Option<u64> = None;
    let mut te = TransferEncoding::default();
    let mut hosts = 0;
    let mut host_ok = true;
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
            te.add(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host_ok &= valid_host(value);
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

    // Request smuggling defences (RFC 9112 §6.1, §6.3): never guess which framing the client
    // meant. With both headers, or a coding list we cannot frame by (final coding not `chunked`,
    // `chunked` twice, any TE in HTTP/1.0), the body's end is unknown: 400, and close. A list
    // that ends in `chunked` is well-formed; we just do not read chunked bodies: 411.
    if te.present {
        if content_length.is_some() {
            return Verdict::Reject(Reject::BadRequest);
        }
        if version == 0 || !te.ends_in_chunked() {
            return Verdict::Reject(Reject::BadTransferEncoding);
        }
        return Verdict::Reject(Reject::LengthRequired);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Verdict::Reject(Reject::BodyTooLarge);
    }
    // HTTP/1.1 requires exactly one Host; HTTP/1.0 allows none, never several; its value must
    // be `uri-host [":" port]` (an empty one is valid: see `valid_host`).
    if hosts > 1 || (version == 1 && hosts == 0) {
        return Verdict::Reject(Reject::BadRequest);
    }
    if !host_ok {
        return Verdict::Reject(Reject::BadHost);
    }
    // A 2xx to CONNECT means "the tunnel is open" (RFC 9110 §9.3.6): never answer it `ok`.
    if method == "CONNECT" {
        return Verdict::Reject(Reject::MethodNotAllowed);
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

/// Which limit a head that fills [`MAX_HEAD`] without ending broke (RFC 9112 §3): if the request
/// line itself has not ended, its request-target is longer than we parse (414), or, when not even
/// the method has ended, its method is longer than any we implement (501); otherwise the header
/// section is too large (431).
fn too_large(head: &[u8]) -> Reject {
    // httparse skips empty lines before the request line; so do we.
    let line = match head.iter().position(|&b| b != b'\r' && b != b'\n') {
        Some(start) => &head[start..],
        None => return Reject::BadRequest, // nothing but empty lines
    };
    if line.contains(&b'\n') {
        Reject::HeadTooLarge
    } else if line.contains(&b' ') {
        Reject::UriTooLong
    } else {
        Reject::NotImplemented
    }
}

/// The codings of every `Transfer-Encoding` field line of a request, in order (RFC 9112 §6.1:
/// several lines form one list).
#[derive(Default)]
struct TransferEncoding {
    present: bool,
    /// Codings seen (non-empty list elements).
    codings: usize,
    /// How many of them were `chunked`.
    chunked: usize,
    /// Whether the last one was exactly `chunked` (no parameters).
    last_chunked: bool,
    /// An element that is not `token *( OWS ";" OWS transfer-parameter )`.
    malformed: bool,
}

impl TransferEncoding {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // Empty list elements (`a, , b`) are allowed and ignored (RFC 9110 §5.6.1).
        for element in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if element.is_empty() {
                continue;
            }
            self.codings += 1;
            let name = element
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            self.chunked += chunked as usize;
            // `chunked` takes no parameters: `chunked;x=y` is not the coding we could frame by.
            self.last_chunked = chunked && element.len() == name.len();
        }
    }

    /// The list is well-formed and its final coding, and only that one, is `chunked`.
    fn ends_in_chunked(&self) -> bool {
        !self.malformed && self.codings > 0 && self.last_chunked && self.chunked == 1
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a Host value is `uri-host [ ":" port ]` (RFC 9112 §3.2; RFC 3986 §3.2.2–3.2.3):
/// a reg-name (unreserved, sub-delims, pct-encoded; an IPv4 address is one too) or an IP-literal
/// in brackets (IPv6 or IPvFuture), then optionally `:` and digits. No userinfo (`@`), no path,
/// no spaces.
///
/// An empty value is valid: RFC 9112 §3.2 has a client send `Host:` empty when the target URI
/// has no authority, and reg-name may be empty. This server serves the same thing whatever the
/// authority, so it accepts it (as it accepts a missing Host in HTTP/1.0).
pub fn valid_host(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let (host_ok, rest) = if let Some(literal) = value.strip_prefix(b"[") {
        match literal.iter().position(|&b| b == b']') {
            Some(end) => (valid_ip_literal(&literal[..end]), &literal[end + 1..]),
            None => return false,
        }
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        (valid_reg_name(&value[..end]), &value[end..])
    };
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// RFC 3986 reg-name: `*( unreserved / pct-encoded / sub-delims )`.
fn valid_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3).unwrap_or_default();
                if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return false;
                }
                i += 3;
            }
            b if is_unreserved(b) || is_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// The inside of `[...]`: an IPv6 address, or `v` HEXDIG+ `.` ( unreserved / sub-delims / `:` )+.
fn valid_ip_literal(literal: &[u8]) -> bool {
    if let Some(future) = literal
        .strip_prefix(b"v")
        .or_else(|| literal.strip_prefix(b"V"))
    {
        let Some(dot) = future.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, rest) = (&future[..dot], &future[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !rest.is_empty()
            && rest
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(literal)
        .ok()
        .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
        .is_some()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn is_sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
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
        match r {
            Reject::Busy => {
                b.put_slice(format!("Retry-After: {}\r\n", self.retry_after).as_bytes())
            }
            Reject::MethodNotAllowed => b.put_slice(format!("Allow: {ALLOW}\r\n").as_bytes()),
            _ => {}
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
        // a complete head past the limit is judged on its first 8 KiB, like a partial one
        assert_eq!(r(&format!("{long}\r\n\r\n")), Reject::HeadTooLarge);
    }

    #[test]
    fn transfer_encoding_must_end_in_chunked() {
        let te = |codings: &[&str]| {
            let lines: String = codings
                .iter()
                .map(|c| format!("Transfer-Encoding: {c}\r\n"))
                .collect();
            match req(&format!("POST / HTTP/1.1\r\nHost: x\r\n{lines}\r\n")) {
                Verdict::Reject(r) => r,
                v => panic!("{codings:?}: {v:?}"),
            }
        };
        // well-formed, final coding chunked: a body we do not read
        for ok in [
            &["chunked"][..],
            &["CHUNKED"],
            &["gzip, chunked"],
            &["gzip", "chunked"],
            &["gzip,, chunked ,"],
        ] {
            assert_eq!(te(ok), Reject::LengthRequired, "{ok:?}");
        }
        // the length cannot be determined: 400 (RFC 9112 §6.3 rule 4)
        for bad in [
            &["xchunked"][..],
            &["chunked, identity"],
            &["chunked", "gzip"],
            &["chunked", "identity"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["gzip"],
            &["identity"],
            &[""],
            &[" , "],
            &["chunked;x=y"],
            &["gz(ip, chunked"],
            &["\"chunked\""],
        ] {
            assert_eq!(te(bad), Reject::BadTransferEncoding, "{bad:?}");
        }
        // TE in HTTP/1.0 is faulty framing (RFC 9112 §6.1)
        assert_eq!(
            req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Verdict::Reject(Reject::BadTransferEncoding)
        );
    }

    #[test]
    fn host_is_uri_host_and_port() {
        for ok in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com:",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]",
            "[::ffff:192.0.2.1]:1",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%2Db",
            "sub-delims!$&'()*+,;=",
            "under_score~",
            "",
            "localhost",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is valid");
            assert!(
                matches!(
                    req(&format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n")),
                    Verdict::Request(_)
                ),
                "{ok:?} is served"
            );
        }
        for bad in [
            "bad host",
            "example.com/path",
            "example.com?q",
            "example.com#f",
            "user@example.com",
            "user:pw@example.com",
            "example.com:80:80",
            "example.com:8o",
            "[::1",
            "::1",
            "[::1]x",
            "[::1]:8o",
            "[not-ip]",
            "[v1]",
            "[v.x]",
            "a%2",
            "a%zz",
            "a\"b",
            "<x>",
            "\u{e9}.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is invalid");
            assert_eq!(
                req(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
                Verdict::Reject(Reject::BadHost),
                "{bad:?}"
            );
        }
        // HTTP/1.0 may omit Host, but a Host it sends must be valid
        assert_eq!(
            req("GET / HTTP/1.0\r\nHost: a b\r\n\r\n"),
            Verdict::Reject(Reject::BadHost)
        );
    }

    #[test]
    fn connect_is_refused_with_allow() {
        for raw in [
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.0\r\n\r\n",
        ] {
            assert_eq!(req(raw), Verdict::Reject(Reject::MethodNotAllowed));
        }
        // methods are case-sensitive: `connect` is some other method, answered `ok`
        assert_eq!(kind("connect / HTTP/1.1\r\nHost: x\r\n\r\n"), Kind::Ok);
        let r = Responses::new(&Config::default()).reject(Reject::MethodNotAllowed);
        let r = std::str::from_utf8(&r).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD, POST, OPTIONS\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    }

    #[test]
    fn an_unended_request_line_is_414_not_431() {
        let r = |raw: &str| match req(raw) {
            Verdict::Reject(r) => r,
            v => panic!("{v:?}"),
        };
        let target = "a".repeat(MAX_HEAD);
        assert_eq!(r(&format!("GET /{target}")), Reject::UriTooLong);
        assert_eq!(r(&format!("\r\nGET /{target}")), Reject::UriTooLong);
        // the line ends past the limit: still the target's fault
        assert_eq!(
            r(&format!("GET /{target} HTTP/1.1\r\nHost: x\r\n\r\n")),
            Reject::UriTooLong
        );
        // a target that fits, headers that do not: 431
        let header = format!("GET /{} HTTP/1.1\r\nX: {target}", "b".repeat(4000));
        assert_eq!(r(&header), Reject::HeadTooLarge);
        // not even the method ended: longer than any method we implement
        assert_eq!(r(&"M".repeat(MAX_HEAD)), Reject::NotImplemented);
        assert_eq!(r(&"\r\n".repeat(MAX_HEAD / 2)), Reject::BadRequest);
        // below the limit it is only partial
        assert_eq!(req(&format!("GET /{}", "a".repeat(8000))), Verdict::Partial);
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
