//! The publish request, without I/O: what `POST /publish?channel=a[&channel=b…][&event=TYPE]`
//! asks for, and every way it can be refused, each with its status.
//!
//! The admin listener reads the head and body and calls [`check`]; the fuzzer calls it on any
//! bytes. Validation happens here once, so the hub only ever sees valid channel names, a valid
//! event type and UTF-8 data.

use std::borrow::Cow;

use subtle::ConstantTimeEq;

use crate::event::{valid_channel, valid_event_type};

/// A publish that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish {
    /// Distinct channel names, in the order given.
    pub channels: Box<[Box<str>]>,
    pub event: String,
    pub data: String,
}

/// Why a publish is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with what is wrong.
    BadRequest(Cow<'static, str>),
    /// 401: the `Authorization: Bearer` token is missing or wrong.
    Unauthorized,
    /// 411: a chunked body (send Content-Length).
    LengthRequired,
    /// 413: the body is over `--max-event-bytes`.
    TooLarge(usize),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized => 401,
            Refusal::LengthRequired => 411,
            Refusal::TooLarge(_) => 413,
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Refusal::BadRequest(m) => m.clone(),
            Refusal::Unauthorized => "missing or wrong Authorization: Bearer token".into(),
            Refusal::LengthRequired => {
                "chunked request bodies are not accepted; send Content-Length".into()
            }
            Refusal::TooLarge(max) => {
                format!("event data over {max} bytes (--max-event-bytes)").into()
            }
        }
    }
}

/// The limits a publish is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    pub token: Option<&'a str>,
    pub max_channels: usize,
    pub max_event_bytes: usize,
}

/// Checks the token (before anything else, so an unauthorized client learns nothing more).
pub fn authorized(authorization: Option<&[u8]>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(given) = authorization.and_then(|a| {
        let a = a.trim_ascii();
        (a.len() > 7 && a[..7].eq_ignore_ascii_case(b"bearer ")).then(|| a[7..].trim_ascii())
    }) else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

/// Checks a publish whose head was parsed: the query (after `?`, raw) and the body.
pub fn check(query: &[u8], body: &[u8], limits: Limits<'_>) -> Result<Publish, Refusal> {
    if body.len() > limits.max_event_bytes {
        return Err(Refusal::TooLarge(limits.max_event_bytes));
    }
    let mut channels: Vec<Box<str>> = Vec::new();
    let mut event: Option<String> = None;
    for (k, v) in form_urlencoded::parse(query) {
        match &*k {
            "channel" => {
                if !valid_channel(v.as_bytes()) {
                    return Err(Refusal::BadRequest(
                        format!(
                            "invalid channel name {:?}: 1-128 bytes of letters, digits, '_', '.', ':' or '-'",
                            truncate(&v)
                        )
                        .into(),
                    ));
                }
                if channels.iter().any(|c| **c == *v) {
                    continue;
                }
                if channels.len() == limits.max_channels {
                    return Err(Refusal::BadRequest(
                        format!(
                            "too many channels: at most {} per publish",
                            limits.max_channels
                        )
                        .into(),
                    ));
                }
                channels.push(v.into());
            }
            "event" => {
                if event.is_some() {
                    return Err(Refusal::BadRequest("more than one event parameter".into()));
                }
                if !valid_event_type(&v) || v.len() > 128 {
                    return Err(Refusal::BadRequest(
                        "invalid event type: 1-128 bytes without CR, LF or NUL".into(),
                    ));
                }
                event = Some(v.into_owned());
            }
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(Refusal::BadRequest(
            "no channel: POST /publish?channel=NAME".into(),
        ));
    }
    if body.is_empty() {
        return Err(Refusal::BadRequest("empty event data".into()));
    }
    let Ok(data) = std::str::from_utf8(body) else {
        return Err(Refusal::BadRequest("event data is not UTF-8".into()));
    };
    if data.contains('\0') {
        return Err(Refusal::BadRequest("event data contains NUL".into()));
    }
    Ok(Publish {
        channels: channels.into_boxed_slice(),
        event: event.unwrap_or_else(|| "message".into()),
        data: data.to_owned(),
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits<'static> = Limits {
        token: None,
        max_channels: 3,
        max_event_bytes: 16,
    };

    #[test]
    fn a_publish_names_channels_and_an_optional_type() {
        let p = check(b"channel=a&channel=b%3Ax&channel=a", b"hi", L).unwrap();
        let want: [Box<str>; 2] = ["a".into(), "b:x".into()];
        assert_eq!(&*p.channels, &want);
        assert_eq!((p.event.as_str(), p.data.as_str()), ("message", "hi"));
        let p = check(b"event=score&channel=a", b"1\n2", L).unwrap();
        assert_eq!(p.event, "score");
    }

    #[test]
    fn every_bad_input_has_its_status() {
        let status = |q: &[u8], b: &[u8]| check(q, b, L).unwrap_err().status();
        assert_eq!(status(b"", b"x"), 400);
        assert_eq!(status(b"channel=", b"x"), 400);
        assert_eq!(status(b"channel=a+b", b"x"), 400);
        assert_eq!(
            status(b"channel=a&channel=b&channel=c&channel=d", b"x"),
            400
        );
        assert_eq!(status(b"channel=a&event=a%0Ab", b"x"), 400);
        assert_eq!(status(b"channel=a&event=", b"x"), 400);
        assert_eq!(status(b"channel=a&event=x&event=y", b"x"), 400);
        assert_eq!(status(b"channel=a", b""), 400);
        assert_eq!(status(b"channel=a", b"\xff"), 400);
        assert_eq!(status(b"channel=a", b"a\0"), 400);
        assert_eq!(status(b"channel=a", &[b'x'; 17]), 413);
    }

    #[test]
    fn the_token_is_a_bearer_token() {
        assert!(authorized(None, None));
        assert!(!authorized(None, Some("s3cret")));
        assert!(authorized(Some(b"Bearer s3cret"), Some("s3cret")));
        assert!(authorized(Some(b"bearer  s3cret "), Some("s3cret")));
        assert!(!authorized(Some(b"Bearer s3cre"), Some("s3cret")));
        assert!(!authorized(Some(b"Basic s3cret"), Some("s3cret")));
        assert!(!authorized(Some(b"Bearer"), Some("s3cret")));
    }
}
