//! The publish path: any bytes as an admin request, through the head parser, the token check and
//! the publish checks (a single publish, or a JSON batch on `/publish/batch`), and, when they
//! pass, through the hub into the history.
//!
//! Nothing may panic; a publish that passes must come out of the hub as a frame that an SSE
//! parser reads back as the same event type and the same data (line ends normalised to LF), with
//! an id above the previous one.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringcast::admin::{parse_head, BadHead};
use ringcast::history::Limits;
use ringcast::hub::{Hub, Inbox};
use ringcast::publish::{self, Refusal};

fn hub() -> &'static (Arc<Hub>, Mutex<Vec<Inbox>>) {
    static H: OnceLock<(Arc<Hub>, Mutex<Vec<Inbox>>)> = OnceLock::new();
    H.get_or_init(|| {
        let (hub, inboxes) = Hub::new(
            Limits {
                per_channel: 16,
                bytes: 1 << 20,
                age: Duration::from_secs(60),
            },
            1,
        );
        (hub, Mutex::new(inboxes))
    })
}

/// The event type and data an EventSource would dispatch for `frame` (one event).
fn read_back(frame: &[u8]) -> (String, String, String) {
    let text = std::str::from_utf8(frame).expect("frames are UTF-8");
    assert!(text.ends_with("\n\n"), "{text:?}");
    let (mut id, mut ty, mut data) = (String::new(), String::new(), Vec::new());
    for line in text[..text.len() - 2].split('\n') {
        let (k, v) = line.split_once(": ").unwrap_or((line, ""));
        match k {
            "id" => id = v.to_owned(),
            "event" => ty = v.to_owned(),
            "data" => data.push(v),
            _ => panic!("unexpected line {line:?} in {text:?}"),
        }
    }
    (id, ty, data.join("\n"))
}

fuzz_target!(|input: &[u8]| {
    let (hub, inboxes) = hub();
    let head = match parse_head(input) {
        Ok(h) => h,
        Err(BadHead::Partial) => return,
        Err(BadHead::Bad(status, _)) => {
            assert!(matches!(status, 400 | 411 | 431));
            return;
        }
    };
    assert!(head.head_len <= input.len());
    if !publish::authorized(head.authorization.as_deref(), Some("t0ken")) {
        assert!(!head
            .authorization
            .as_deref()
            .is_some_and(|a| a == b"Bearer t0ken"));
    }
    let end = head.head_len.saturating_add(head.content_length).min(input.len());
    let body = &input[head.head_len..end];
    let limits = publish::Limits {
        token: None,
        max_channels: 32,
        max_event_bytes: 4096,
    };
    // `/publish/batch` takes a JSON array of events; anything else is a single publish.
    let events = if head.path == "/publish/batch" {
        match publish::check_batch(body, limits) {
            Ok(events) => events,
            Err(Refusal::TooLarge(_)) | Err(Refusal::BatchTooLarge(_)) => return,
            Err(r) => {
                assert_eq!(r.status(), 400);
                return;
            }
        }
    } else {
        match publish::check(head.query.as_bytes(), body, limits) {
            Ok(p) => vec![p],
            Err(Refusal::TooLarge(_)) => {
                assert!(body.len() > 4096);
                return;
            }
            Err(r) => {
                assert!(matches!(r.status(), 400 | 401 | 411));
                return;
            }
        }
    };
    let before = hub.last_id();
    let ids = hub.publish_batch(events.clone()).expect("published");
    assert_eq!(ids.len(), events.len());
    assert!(ids[0] > before);
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    for (p, id) in events.iter().zip(ids) {
        // Drain the inbox so it does not grow; the frame is the event's.
        let ev = loop {
            match inboxes.lock().unwrap()[0].try_take() {
                Some(ev) if ev.id == id => break ev,
                Some(_) => {}
                None => panic!("event {id} never reached the core's inbox"),
            }
        };
        let (got_id, ty, data) = read_back(&ev.frame);
        assert_eq!(got_id, id.to_string());
        assert_eq!(ty, p.event);
        let normalised = p.data.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(data, normalised);
    }
});
