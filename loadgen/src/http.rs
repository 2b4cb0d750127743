//! The HTTP/1.1 side of an EventSource connection: the target URL and the request a
//! browser would send, the response head check (status 200 and a `text/event-stream`
//! MIME type essence, as the spec requires), and the body framing (close-delimited,
//! Content-Length or chunked) that is undone before the event stream parser sees bytes.
//! The head is parsed with httparse; the chunked decoder is a small state machine since it
//! sits on the hot path and must accept any split of its input.

use std::net::{SocketAddr, ToSocketAddrs};

/// Where connections go: resolved once at startup.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (names the target in the failover counters).
    pub url: String,
    pub addr: SocketAddr,
    /// `Host` header value (the URL's authority).
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: bad host"));
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: host has no address"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path,
        })
    }

    /// The request an EventSource sends; `Last-Event-ID` only when the id is not empty.
    pub fn request(&self, last_event_id: &str) -> Vec<u8> {
        self.request_to(&self.path, last_event_id)
    }

    /// The same request for another path and query on this host (a channel's stream).
    pub fn request_to(&self, path: &str, last_event_id: &str) -> Vec<u8> {
        let mut req = Vec::with_capacity(128 + path.len() + last_event_id.len());
        req.extend_from_slice(b"GET ");
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(self.host.as_bytes());
        req.extend_from_slice(b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
        if !last_event_id.is_empty() {
            req.extend_from_slice(b"Last-Event-ID: ");
            req.extend_from_slice(last_event_id.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req
    }
}

/// `path` with `name=value` added to its query (`?` or `&` as needed). Values are taken as
/// they are: the loadgen's own channel names need no escaping.
pub fn with_query(path: &str, name: &str, value: &str) -> String {
    let sep = match path.find('?') {
        None => "?",
        Some(_) if path.ends_with('?') || path.ends_with('&') => "",
        Some(_) => "&",
    };
    format!("{path}{sep}{name}={value}")
}

/// Why a response head did not open a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not yet a full head.
    Partial,
    Malformed,
    Status(u16),
    ContentType,
}

/// What a complete, acceptable head tells.
#[derive(Debug)]
pub struct Head {
    /// Bytes taken by the head; the body starts after them.
    pub len: usize,
    pub framing: Framing,
    /// `Server` header, kept as the server's banner.
    pub server: Option<String>,
}

const MAX_HEADERS: usize = 64;

pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(HeadError::Partial),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = resp.code.ok_or(HeadError::Malformed)?;
    if status != 200 {
        return Err(HeadError::Status(status));
    }
    let mut content_type_ok = false;
    let mut framing = Framing::Close;
    let mut server = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type_ok = is_event_stream(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if chunked {
                framing = Framing::Chunked(Chunked::default());
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if !matches!(framing, Framing::Chunked(_)) {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(HeadError::Malformed)?;
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("server") {
            server = Some(String::from_utf8_lossy(h.value).into_owned());
        }
    }
    if !content_type_ok {
        return Err(HeadError::ContentType);
    }
    Ok(Head {
        len,
        framing,
        server,
    })
}

/// The MIME type essence is `text/event-stream` (parameters such as charset are ignored:
/// the stream is always UTF-8).
pub fn is_event_stream(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

/// How the response body is delimited.
#[derive(Debug)]
pub enum Framing {
    /// Until the server closes (HTTP/1.0 style; what most SSE servers do without chunking).
    Close,
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Chunked framing the decoder could not follow.
    BadChunk,
}

impl Framing {
    /// Undo the framing of `input`, handing body bytes to `out`. Returns whether the body
    /// is complete (the server will send no more events on this response).
    pub fn decode<E>(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<bool, Result<BodyError, E>> {
        match self {
            Framing::Close => {
                out(input).map_err(Err)?;
                Ok(false)
            }
            Framing::Length(left) => {
                let take = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out(&input[..take]).map_err(Err)?;
                *left -= take as u64;
                Ok(*left == 0)
            }
            Framing::Chunked(c) => c.decode(input, out),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size; `digits` counts them so an empty size is caught.
    #[default]
    Size,
    /// After the size: extensions or whitespace up to the line end.
    SizeLine,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The last chunk was read; trailers and all that follows are ignored.
    Done,
}

#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

impl Chunked {
    fn decode<E>(
        &mut self,
        mut input: &[u8],
        mut out: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<bool, Result<BodyError, E>> {
        let bad = || -> Result<bool, Result<BodyError, E>> { Err(Ok(BodyError::BadChunk)) };
        while let Some((&b, rest)) = input.split_first() {
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return bad();
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                        input = rest;
                    }
                    _ if self.digits == 0 => return bad(),
                    b'\r' => {
                        self.state = ChunkState::SizeLf;
                        input = rest;
                    }
                    b'\n' => {
                        self.end_size_line();
                        input = rest;
                    }
                    _ => {
                        self.state = ChunkState::SizeLine;
                        input = rest;
                    }
                },
                ChunkState::SizeLine => {
                    match memchr::memchr(b'\n', input) {
                        Some(i) => {
                            input = &input[i + 1..];
                            self.end_size_line();
                        }
                        None => input = &[],
                    };
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return bad();
                    }
                    input = rest;
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let take = input
                        .len()
                        .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    out(&input[..take]).map_err(Err)?;
                    self.size -= take as u64;
                    input = &input[take..];
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    input = rest;
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => ChunkState::Size,
                        _ => return bad(),
                    };
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return bad();
                    }
                    input = rest;
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        if self.size == 0 {
            self.state = ChunkState::Done;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

/// Fetches a small document over plain HTTP/1.1 with blocking std sockets: used once, before
/// the ramp, for the server's self-description (`--server-info`, e.g. ringcast's admin
/// `/info`). A JSON body is kept as JSON, anything else as a string.
pub fn fetch_info(url: &str, timeout: std::time::Duration) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    const MAX_BODY: u64 = 1024 * 1024;
    let target = Target::parse(url)?;
    let mut s = std::net::TcpStream::connect_timeout(&target.addr, timeout)
        .map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("{url}: no complete HTTP response")),
    };
    if resp.code != Some(200) {
        return Err(format!("{url}: status {}", resp.code.unwrap_or(0)));
    }
    let mut body = &raw[len..];
    let declared = resp.headers.iter().find_map(|h| {
        h.name.eq_ignore_ascii_case("content-length").then(|| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })?
    });
    if let Some(n) = declared {
        body = &body[..n.min(body.len())];
    }
    Ok(serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/events?x=1").unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.path.as_str()),
            (8080, "127.0.0.1:8080", "/events?x=1")
        );
        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert!(t.addr.is_ipv6());
        let t = Target::parse("http://127.0.0.1:7?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
        assert!(Target::parse("http://u@127.0.0.1/").is_err());
    }

    #[test]
    fn request_is_an_eventsource_get() {
        let t = Target::parse("http://127.0.0.1:8080/s").unwrap();
        let r = String::from_utf8(t.request("")).unwrap();
        assert!(r.starts_with("GET /s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(
            r.contains("Accept: text/event-stream\r\n")
                && r.contains("Cache-Control: no-cache\r\n")
        );
        assert!(!r.contains("Last-Event-ID"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(t.request("42")).unwrap();
        assert!(r.contains("\r\nLast-Event-ID: 42\r\n"));
        let r = String::from_utf8(t.request_to("/s?channel=c1", "")).unwrap();
        assert!(r.starts_with("GET /s?channel=c1 HTTP/1.1\r\n"));
    }

    #[test]
    fn channel_queries_are_appended() {
        assert_eq!(with_query("/", "channel", "c3"), "/?channel=c3");
        assert_eq!(with_query("/s?a=1", "channel", "c0"), "/s?a=1&channel=c0");
        assert_eq!(with_query("/s?", "channel", "c0"), "/s?channel=c0");
        assert_eq!(with_query("/s?a=1&", "channel", "c0"), "/s?a=1&channel=c0");
    }

    #[test]
    fn mime_essence() {
        for ok in [
            "text/event-stream",
            "text/event-stream;",
            "TEXT/Event-Stream; charset=windows-1252",
            " text/event-stream ",
        ] {
            assert!(is_event_stream(ok.as_bytes()), "{ok:?}");
        }
        for bad in ["text/x-bogus", "text/event-streamx", "text/plain", ""] {
            assert!(!is_event_stream(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn heads() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nServer: ringcast/0.1\r\n\r\nid: 1\n";
        let head = parse_head(ok).unwrap();
        assert_eq!(&ok[head.len..], b"id: 1\n");
        assert!(matches!(head.framing, Framing::Close));
        assert_eq!(head.server.as_deref(), Some("ringcast/0.1"));
        assert_eq!(parse_head(&ok[..20]).unwrap_err(), HeadError::Partial);
        let r = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/event-stream\r\n\r\n");
        assert_eq!(r.unwrap_err(), HeadError::Status(404));
        let r = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok");
        assert_eq!(r.unwrap_err(), HeadError::ContentType);
        let r = parse_head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(r.unwrap_err(), HeadError::ContentType);
        assert_eq!(
            parse_head(b"garbage\r\n\r\n").unwrap_err(),
            HeadError::Malformed
        );
        let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_head(chunked).unwrap().framing,
            Framing::Chunked(_)
        ));
        let sized =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nContent-Length: 7\r\n\r\n";
        assert!(matches!(
            parse_head(sized).unwrap().framing,
            Framing::Length(7)
        ));
    }

    fn decode_all(
        framing: &mut Framing,
        wire: &[u8],
        cut: usize,
    ) -> (Vec<u8>, Result<bool, BodyError>) {
        let mut body = Vec::new();
        let mut done = false;
        for part in [&wire[..cut], &wire[cut..]] {
            match framing.decode(part, |b| {
                body.extend_from_slice(b);
                Ok::<(), ()>(())
            }) {
                Ok(d) => done = d,
                Err(Ok(e)) => return (body, Err(e)),
                Err(Err(())) => unreachable!("sink never fails"),
            }
        }
        (body, Ok(done))
    }

    #[test]
    fn chunked_bodies_in_every_two_piece_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for cut in 0..=wire.len() {
            let (body, r) = decode_all(&mut Framing::Chunked(Chunked::default()), wire, cut);
            assert_eq!(body, b"hello 0123456789", "cut {cut}");
            assert_eq!(r, Ok(true), "cut {cut}");
        }
        let open = b"4\r\nid: \r\n3\r\n7\n\n\r\n";
        for cut in 0..=open.len() {
            let (body, r) = decode_all(&mut Framing::Chunked(Chunked::default()), open, cut);
            assert_eq!(
                (body.as_slice(), r),
                (&b"id: 7\n\n"[..], Ok(false)),
                "cut {cut}"
            );
        }
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"2\r\nabX",
            b"2\rx",
            b"ffffffffffffffffff\r\n",
        ] {
            let (_, r) = decode_all(&mut Framing::Chunked(Chunked::default()), bad, 0);
            assert_eq!(r, Err(BodyError::BadChunk), "{bad:?}");
        }
    }

    fn serve_once(response: &'static str) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/info", l.local_addr().unwrap());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response.as_bytes());
        });
        url
    }

    #[test]
    fn info_documents() {
        let t = std::time::Duration::from_secs(10);
        let json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"workers\": 2}\n\ntrailing";
        let v = fetch_info(&serve_once(json), t).unwrap();
        assert_eq!(v["workers"], 2);
        let text = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nringcast 0.1";
        assert_eq!(fetch_info(&serve_once(text), t).unwrap(), "ringcast 0.1");
        let missing = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(fetch_info(&serve_once(missing), t)
            .unwrap_err()
            .contains("404"));
    }

    #[test]
    fn content_length_body_ends() {
        let (body, r) = decode_all(&mut Framing::Length(4), b"data:x\n", 2);
        assert_eq!((body.as_slice(), r), (&b"data"[..], Ok(true)));
    }
}
