//! Conformance tests for the event stream parser: the inputs and expected outputs of the
//! web-platform-tests `eventsource/format-*` cases, recreated as byte streams (the body the
//! test's server resource sends, one body per connection when the case reconnects), each
//! fed to the parser in many chunkings: every split into two and three pieces, every fixed
//! chunk size, and every possible chunking for short inputs.

use super::{Dispatch, Event, Parser, TooLong};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    event_type: String,
    data: String,
    last_event_id: String,
}

/// What one run over all the bodies produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<Got>,
    /// `Last-Event-ID` that would be sent after each body.
    ids_after: Vec<String>,
    retry_ms: Option<u64>,
}

fn run(bodies: &[Vec<u8>], cuts: &dyn Fn(usize) -> Vec<usize>) -> Outcome {
    let mut parser = Parser::default();
    let mut events = Vec::new();
    let mut ids_after = Vec::new();
    for body in bodies {
        let mut start = 0;
        let mut points = cuts(body.len());
        points.push(body.len());
        for end in points {
            let end = end.clamp(start, body.len());
            parser
                .feed(&body[start..end], |e: Event<'_>| {
                    events.push(Got {
                        event_type: e.event_type.to_owned(),
                        data: e.data.to_owned(),
                        last_event_id: e.last_event_id.to_owned(),
                    })
                })
                .expect("within limits");
            start = end;
        }
        parser.end_of_stream();
        ids_after.push(parser.last_event_id().to_owned());
    }
    Outcome {
        events,
        ids_after,
        retry_ms: parser.retry_ms(),
    }
}

/// Runs every chunking the input size allows and checks all give the whole-input outcome,
/// which is returned for the case's own assertions.
fn every_chunking(bodies: &[Vec<u8>]) -> Outcome {
    let whole = run(bodies, &|_| Vec::new());
    let longest = bodies.iter().map(Vec::len).max().unwrap_or(0);
    let check = |label: String, cuts: &dyn Fn(usize) -> Vec<usize>| {
        let got = run(bodies, cuts);
        assert_eq!(got, whole, "chunking {label} differs from the whole input");
    };
    for size in 1..=longest {
        check(format!("size {size}"), &|len| {
            (1..len.div_ceil(size)).map(|i| i * size).collect()
        });
    }
    for a in 0..=longest {
        check(format!("[{a}]"), &|_| vec![a]);
    }
    if longest <= 256 {
        for a in 0..=longest {
            for b in a..=longest {
                check(format!("[{a},{b}]"), &|_| vec![a, b]);
            }
        }
    }
    if longest <= 16 {
        for mask in 0u32..(1 << longest.saturating_sub(1)) {
            check(format!("mask {mask:b}"), &|len| {
                (1..len).filter(|i| mask & (1 << (i - 1)) != 0).collect()
            });
        }
    }
    whole
}

fn body(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The body `resources/message.py` sends: the message, the `newline` suffix (`\n\n` unless
/// `newline=none`), then one more LF.
fn message_py(message: &[u8], newline_none: bool) -> Vec<u8> {
    let mut out = message.to_vec();
    if !newline_none {
        out.extend_from_slice(b"\n\n");
    }
    out.push(b'\n');
    out
}

fn datas(outcome: &Outcome) -> Vec<&str> {
    outcome.events.iter().map(|e| e.data.as_str()).collect()
}

fn got(event_type: &str, data: &str, last_event_id: &str) -> Got {
    Got {
        event_type: event_type.into(),
        data: data.into(),
        last_event_id: last_event_id.into(),
    }
}

#[test]
fn format_bom() {
    let out = every_chunking(&[message_py(
        "\u{FEFF}data:1\n\n\u{FEFF}data:2\n\ndata:3".as_bytes(),
        false,
    )]);
    assert_eq!(datas(&out), ["1", "3"]);
}

#[test]
fn format_bom_2() {
    let out = every_chunking(&[message_py(
        "\u{FEFF}\u{FEFF}data:1\n\ndata:2\n\ndata:3".as_bytes(),
        false,
    )]);
    assert_eq!(datas(&out), ["2", "3"]);
}

#[test]
fn partial_bom_is_text_not_stripped() {
    let out = every_chunking(&[b"\xEF\xBBdata:1\n\ndata:2\n\ndata:\xEF\xBB\n\n".to_vec()]);
    assert_eq!(datas(&out), ["2", "\u{FFFD}"]);
}

#[test]
fn format_comments() {
    let long = "x".repeat(2 * 1024);
    let message =
        format!("data:1\r:\0\n:\r\ndata:2\n:{long}\rdata:3\n:data:fail\r:{long}\ndata:4\n");
    let out = every_chunking(&[message_py(message.as_bytes(), true)]);
    assert_eq!(datas(&out), ["1\n2\n3\n4"]);
}

#[test]
fn format_data_before_final_empty_line() {
    // The unterminated `id:test`/`data:test2` event is discarded at the end of the body,
    // so the reconnection sends no id and the second event again has an empty lastEventId.
    let b = message_py(b"retry:1000\ndata:test1\n\nid:test\ndata:test2", true);
    let out = every_chunking(&[b.clone(), b]);
    assert_eq!(
        out.events,
        [got("message", "test1", ""), got("message", "test1", "")]
    );
    assert_eq!(out.ids_after, ["", ""]);
    assert_eq!(out.retry_ms, Some(1000));
}

#[test]
fn format_field_data() {
    let out = every_chunking(&[message_py(b"data:\n\ndata\ndata\n\ndata:test", false)]);
    assert_eq!(datas(&out), ["", "\n", "test"]);
}

#[test]
fn format_field_event() {
    let out = every_chunking(&[message_py(b"event:test\ndata:x\n\ndata:x", false)]);
    assert_eq!(out.events, [got("test", "x", ""), got("message", "x", "")]);
}

#[test]
fn format_field_event_empty() {
    let out = every_chunking(&[message_py(b"event: \ndata:data", false)]);
    assert_eq!(out.events, [got("message", "data", "")]);
}

#[test]
fn format_field_id_and_id_2() {
    // resources/last-event-id.py: without Last-Event-ID it sends an id, with it it echoes
    // the id as data. The id must persist for events that carry none.
    let first = body("id: \u{2026}\nretry: 200\ndata: hello\n\n");
    let echo = body("data: \u{2026}\n\n");
    let out = every_chunking(&[first, echo.clone(), echo]);
    assert_eq!(
        out.events,
        [
            got("message", "hello", "\u{2026}"),
            got("message", "\u{2026}", "\u{2026}"),
            got("message", "\u{2026}", "\u{2026}"),
        ]
    );
    assert_eq!(out.ids_after, ["\u{2026}"; 3]);
    assert_eq!(out.retry_ms, Some(200));
}

#[test]
fn format_field_id_3_persists_changes_resets() {
    let persists = every_chunking(&[body("id: 1\ndata: 1\n\ndata:2\n\n")]);
    assert_eq!(
        persists.events,
        [got("message", "1", "1"), got("message", "2", "1")]
    );

    let changes = every_chunking(&[body("id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n")]);
    let ids: Vec<_> = changes
        .events
        .iter()
        .map(|e| e.last_event_id.as_str())
        .collect();
    assert_eq!(ids, ["1", "2", "2"]);

    for reset in ["id:", "id"] {
        let out = every_chunking(&[body(&format!(
            "id: 1\ndata: 1\n\n{reset}\ndata:2\n\ndata:3\n\n"
        ))]);
        let ids: Vec<_> = out
            .events
            .iter()
            .map(|e| e.last_event_id.as_str())
            .collect();
        assert_eq!(ids, ["1", "", ""], "reset with {reset:?}");
        assert_eq!(datas(&out), ["1", "2", "3"]);
    }
}

#[test]
fn format_field_id_null() {
    for idvalue in ["\0\0", "x\0", "\0x", "x\0x", " \0"] {
        let b = body(&format!("id: {idvalue}\nretry: 200\ndata: hello\n\n"));
        // The id is ignored, so no Last-Event-ID is sent and the server says hello again.
        let out = every_chunking(&[b.clone(), b]);
        assert_eq!(
            out.events,
            [got("message", "hello", ""), got("message", "hello", "")],
            "{idvalue:?}"
        );
        assert_eq!(out.ids_after, ["", ""]);
    }
}

#[test]
fn format_field_retry() {
    let out = every_chunking(&[message_py(b"retry:02000\ndata:x", false)]);
    assert_eq!(out.retry_ms, Some(2000));
    assert_eq!(datas(&out), ["x"]);
}

#[test]
fn format_field_retry_bogus() {
    let out = every_chunking(&[message_py(b"retry:2000\nretry:1000x\ndata:x", false)]);
    assert_eq!(out.retry_ms, Some(2000));
    for bogus in [
        "retry:",
        "retry:  1",
        "retry:1 ",
        "retry:-1",
        "retry:1.5",
        "Retry:7",
    ] {
        let out = every_chunking(&[message_py(format!("{bogus}\ndata:x").as_bytes(), false)]);
        assert_eq!(out.retry_ms, None, "{bogus:?}");
    }
    let huge = every_chunking(&[message_py(b"retry:99999999999999999999999", false)]);
    assert_eq!(huge.retry_ms, Some(u64::MAX));
}

#[test]
fn format_null_character() {
    let out = every_chunking(&[message_py(b"data:\0\n\n", false)]);
    assert_eq!(datas(&out), ["\0"]);
}

#[test]
fn format_utf_8() {
    let out = every_chunking(&[message_py("data:ok\u{2026}".as_bytes(), false)]);
    assert_eq!(datas(&out), ["ok\u{2026}"]);
    let invalid = every_chunking(&[message_py(b"data:a\xFFb\xE2\x80", false)]);
    assert_eq!(datas(&invalid), ["a\u{FFFD}b\u{FFFD}"]);
}

#[test]
fn format_field_parsing() {
    let message = "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n";
    let out = every_chunking(&[message_py(message.as_bytes(), true)]);
    assert_eq!(datas(&out), ["\0\n 2\n1\n3\n\n4"]);
}

#[test]
fn format_field_unknown() {
    let message = "data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test";
    let out = every_chunking(&[message_py(message.as_bytes(), false)]);
    assert_eq!(datas(&out), ["test\n\ntest"]);
}

#[test]
fn format_newlines() {
    let out = every_chunking(&[message_py(b"data:test\r\ndata\ndata:test\r\n\r", true)]);
    assert_eq!(datas(&out), ["test\n\ntest"]);
}

#[test]
fn format_leading_space() {
    let out = every_chunking(&[message_py(b"data:\ttest\rdata: \ndata:test", false)]);
    assert_eq!(datas(&out), ["\ttest\n\ntest"]);
}

#[test]
fn format_data_parsing_lines() {
    // resources/message2.py, one round of its loop.
    let b = body("data:msg\ndata: msg\n\n:\nfalsefield:msg\n\nfalsefield:msg\nData:data\n\ndata\n\ndata:end\n\n");
    let out = every_chunking(&[b]);
    assert_eq!(datas(&out), ["msg\nmsg", "", "end"]);
}

#[test]
fn unterminated_event_is_discarded_at_end_of_stream() {
    let out = every_chunking(&[body("data:kept\n\ndata:lost\r"), body("\ndata:next\n\n")]);
    assert_eq!(datas(&out), ["kept", "next"]);
}

#[test]
fn cr_then_lf_across_reads_is_one_line_end() {
    let out = every_chunking(&[body("data:a\r\r\ndata:b\r\n\r\n")]);
    assert_eq!(datas(&out), ["a", "b"]);
}

#[test]
fn ringcast_tick_event() {
    let out = every_chunking(&[body(
        "id: 881722\nevent: message\ndata: hello\n\nid: 881723\nevent: message\ndata: hello\n\n",
    )]);
    assert_eq!(
        out.events,
        [
            got("message", "hello", "881722"),
            got("message", "hello", "881723")
        ]
    );
}

#[test]
fn events_tell_whether_they_carried_an_id() {
    let body = b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\ndata: d\n\n";
    for cut in 0..=body.len() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            p.feed(part, |e| got.push((e.data.to_owned(), e.has_own_id)))
                .unwrap();
        }
        // An id-only block (`id: 2` then a blank line) dispatches nothing and its id does
        // not count for the next event's own lines.
        let want = [("a", true), ("b", false), ("c", true), ("d", false)];
        let want: Vec<_> = want.iter().map(|(d, i)| (d.to_string(), *i)).collect();
        assert_eq!(got, want, "cut {cut}");
    }
}

#[test]
fn over_long_line_and_event_are_errors() {
    let mut p = Parser::new(8);
    assert_eq!(p.feed(b"data:1234", |_| {}), Err(TooLong { limit: 8 }));
    let mut p = Parser::new(8);
    assert_eq!(
        p.feed(b"data:1234\ndata:5678\n", |_| {}),
        Err(TooLong { limit: 8 })
    );
    let mut p = Parser::new(8);
    assert_eq!(p.feed(b"data:12\n\ndata:34\n\n", |_| {}), Ok(()));
}

#[test]
fn id_only_blocks_are_reported_as_positions() {
    // ringcast's channel stream: the position right after the head, a heartbeat, an event.
    let body =
        b"id: 1764500000123-0\n\n:\n\nid: 1764500000123-4\nevent: message\ndata: hello\n\nid\n\n";
    for cut in 0..=body.len() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            p.feed_dispatches(part, |d| {
                got.push(match d {
                    Dispatch::Id(id) => format!("id {id}"),
                    Dispatch::Event(e) => format!("event {} {}", e.last_event_id, e.data),
                })
            })
            .unwrap();
        }
        let want = ["id 1764500000123-0", "event 1764500000123-4 hello", "id "];
        assert_eq!(got, want, "cut {cut}");
        assert_eq!(p.last_event_id(), "");
    }
}
