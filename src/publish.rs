//! The publish request, without I/O: what `POST /publish?channel=a[&channel=b…][&event=TYPE]`
//! asks for, and every way it can be refused, each with its status. `POST /publish/batch` takes
//! several events in one JSON body ([`check_batch`]): the same checks per event, all or nothing.
//!
//! The admin listener reads the head and body and calls [`check`]; the fuzzer calls it on any
//! bytes. Validation happens here once, so the hub only ever sees valid channel names, a valid
//! event type and UTF-8 data.

use std::borrow::Cow;

use subtle::ConstantTimeEq;

use crate::event::{valid_channel, valid_event_type};

/// A publish that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// 413: a batch body is over [`batch_body_limit`].
    BatchTooLarge(usize),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized => 401,
            Refusal::LengthRequired => 411,
            Refusal::TooLarge(_) | Refusal::BatchTooLarge(_) => 413,
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
            Refusal::BatchTooLarge(max) => {
                format!("batch body over {max} bytes: split it, or publish large events one by one")
                    .into()
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
            "channel" => add_channel(&mut channels, &v, limits)?,
            "event" => {
                if event.is_some() {
                    return Err(Refusal::BadRequest("more than one event parameter".into()));
                }
                event = Some(event_type(&v)?.to_owned());
            }
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(Refusal::BadRequest(
            "no channel: POST /publish?channel=NAME".into(),
        ));
    }
    let Ok(data) = std::str::from_utf8(body) else {
        return Err(Refusal::BadRequest("event data is not UTF-8".into()));
    };
    Ok(Publish {
        channels: channels.into_boxed_slice(),
        event: event.unwrap_or_else(|| "message".into()),
        data: event_data(data)?.to_owned(),
    })
}

/// Events one `POST /publish/batch` may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// The largest batch body taken: 4 MiB, or one `--max-event-bytes` event if that is larger.
pub fn batch_body_limit(max_event_bytes: usize) -> usize {
    (4 << 20).max(max_event_bytes + 1024)
}

/// Checks a batch body: a JSON array of 1 to [`MAX_BATCH_EVENTS`] objects, each
/// `{"channels": ["a", …]}` or `{"channel": "a"}`, with `"data": "…"` and an optional
/// `"event": "TYPE"`. Every event passes the checks of a single publish, or none is taken: the
/// refusal names the first bad event by its index.
pub fn check_batch(body: &[u8], limits: Limits<'_>) -> Result<Vec<Publish>, Refusal> {
    if body.len() > batch_body_limit(limits.max_event_bytes) {
        return Err(Refusal::BatchTooLarge(batch_body_limit(
            limits.max_event_bytes,
        )));
    }
    let bad = |m: String| Refusal::BadRequest(m.into());
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the batch is not JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(bad(
            "the batch must be a JSON array of events: [{\"channel\": \"a\", \"data\": \"…\"}, …]"
                .into(),
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
        return Err(bad(format!(
            "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            batch_event(item, limits).map_err(|r| match r {
                Refusal::BadRequest(m) => bad(format!("event {i}: {m}")),
                other => other,
            })
        })
        .collect()
}

/// One event of a batch.
fn batch_event(item: &serde_json::Value, limits: Limits<'_>) -> Result<Publish, Refusal> {
    use serde_json::Value;
    let bad = |m: &'static str| Refusal::BadRequest(m.into());
    let Value::Object(fields) = item else {
        return Err(bad("not a JSON object"));
    };
    if let Some(k) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "channel" | "channels" | "event" | "data"))
    {
        return Err(Refusal::BadRequest(
            format!(
                "unknown field {:?} (channel, channels, event, data)",
                truncate(k)
            )
            .into(),
        ));
    }
    let mut channels: Vec<Box<str>> = Vec::new();
    match (fields.get("channel"), fields.get("channels")) {
        (Some(Value::String(c)), None) => add_channel(&mut channels, c, limits)?,
        (None, Some(Value::Array(cs))) => {
            for c in cs {
                let Value::String(c) = c else {
                    return Err(bad("\"channels\" must be an array of strings"));
                };
                add_channel(&mut channels, c, limits)?;
            }
            if channels.is_empty() {
                return Err(bad("\"channels\" is empty"));
            }
        }
        (Some(_), Some(_)) => return Err(bad("give \"channel\" or \"channels\", not both")),
        (None, None) => return Err(bad("no \"channel\" or \"channels\"")),
        _ => return Err(bad("\"channel\" must be a string, \"channels\" an array")),
    }
    let event = match fields.get("event") {
        None => "message",
        Some(Value::String(t)) => event_type(t)?,
        Some(_) => return Err(bad("\"event\" must be a string")),
    };
    let Some(Value::String(data)) = fields.get("data") else {
        return Err(bad("\"data\" must be a string"));
    };
    if data.len() > limits.max_event_bytes {
        return Err(Refusal::TooLarge(limits.max_event_bytes));
    }
    Ok(Publish {
        channels: channels.into_boxed_slice(),
        event: event.to_owned(),
        data: event_data(data)?.to_owned(),
    })
}

/// Adds a channel name to a publish's list: valid, not yet listed, within `max_channels`.
fn add_channel(
    channels: &mut Vec<Box<str>>,
    name: &str,
    limits: Limits<'_>,
) -> Result<(), Refusal> {
    if !valid_channel(name.as_bytes()) {
        return Err(Refusal::BadRequest(
            format!(
                "invalid channel name {:?}: 1-128 bytes of letters, digits, '_', '.', ':' or '-'",
                truncate(name)
            )
            .into(),
        ));
    }
    if channels.iter().any(|c| **c == *name) {
        return Ok(());
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
    channels.push(name.into());
    Ok(())
}

/// A valid `event:` type.
fn event_type(t: &str) -> Result<&str, Refusal> {
    if !valid_event_type(t) || t.len() > 128 {
        return Err(Refusal::BadRequest(
            "invalid event type: 1-128 bytes without CR, LF or NUL".into(),
        ));
    }
    Ok(t)
}

/// Event data: not empty, no NUL (its size is checked by the caller, before it is read).
fn event_data(data: &str) -> Result<&str, Refusal> {
    if data.is_empty() {
        return Err(Refusal::BadRequest("empty event data".into()));
    }
    if data.contains('\0') {
        return Err(Refusal::BadRequest("event data contains NUL".into()));
    }
    Ok(data)
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
    fn a_batch_is_a_json_array_of_events_checked_like_single_publishes() {
        let b = check_batch(
            br#"[{"channel": "a", "data": "x"},
                 {"channels": ["b", "c", "b"], "event": "score", "data": "1\n2"}]"#,
            L,
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            (&*b[0].channels, b[0].event.as_str()),
            (&["a".into()][..], "message")
        );
        let bc: [Box<str>; 2] = ["b".into(), "c".into()];
        assert_eq!(&*b[1].channels, &bc);
        assert_eq!((b[1].event.as_str(), b[1].data.as_str()), ("score", "1\n2"));
    }

    #[test]
    fn a_bad_batch_is_refused_whole_naming_the_event() {
        let refuse = |body: &str| check_batch(body.as_bytes(), L).unwrap_err();
        let message = |body: &str| refuse(body).message().into_owned();
        assert!(message("{").starts_with("the batch is not JSON"));
        assert!(message(r#"{"channel": "a"}"#).contains("JSON array"));
        assert!(message("[]").contains("1 to 1000"));
        let ok = r#"{"channel": "a", "data": "x"}"#;
        let many = format!("[{}]", vec![ok; MAX_BATCH_EVENTS + 1].join(","));
        assert_eq!(
            check_batch(
                many.as_bytes(),
                Limits {
                    max_event_bytes: 1 << 20,
                    ..L
                }
            )
            .unwrap_err()
            .status(),
            400
        );
        for (event, why) in [
            (r#"{"channel": "a b", "data": "x"}"#, "invalid channel name"),
            (r#"{"data": "x"}"#, "no \"channel\""),
            (
                r#"{"channel": "a", "channels": ["b"], "data": "x"}"#,
                "not both",
            ),
            (r#"{"channels": [], "data": "x"}"#, "is empty"),
            (r#"{"channels": ["a", 1], "data": "x"}"#, "array of strings"),
            (r#"{"channel": 1, "data": "x"}"#, "must be a string"),
            (
                r#"{"channels": ["a", "b", "c", "d"], "data": "x"}"#,
                "too many channels",
            ),
            (
                r#"{"channel": "a", "event": "a\nb", "data": "x"}"#,
                "invalid event type",
            ),
            (
                r#"{"channel": "a", "event": 3, "data": "x"}"#,
                "\"event\" must be a string",
            ),
            (r#"{"channel": "a"}"#, "\"data\" must be a string"),
            (r#"{"channel": "a", "data": ""}"#, "empty event data"),
            (r#"{"channel": "a", "data": "x\u0000"}"#, "contains NUL"),
            (
                r#"{"chanel": "a", "data": "x"}"#,
                "unknown field \"chanel\"",
            ),
            ("3", "not a JSON object"),
        ] {
            let m = message(&format!("[{ok}, {event}]"));
            assert!(
                m.starts_with("event 1: ") && m.contains(why),
                "{event}: {m}"
            );
            assert_eq!(refuse(&format!("[{ok}, {event}]")).status(), 400);
        }
        let big = format!(r#"[{{"channel": "a", "data": "{}"}}]"#, "x".repeat(17));
        assert_eq!(refuse(&big).status(), 413);
        let huge = vec![b' '; batch_body_limit(L.max_event_bytes) + 1];
        assert_eq!(check_batch(&huge, L).unwrap_err().status(), 413);
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
