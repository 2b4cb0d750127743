//! Frame encoding against the load generator's WHATWG parser: for whatever `--event` and
//! `--data` the CLI accepts, the parser must read back exactly one event with that type, that data
//! (line ends normalised to LF, as the spec joins `data:` lines) and the tick id, however the
//! frame is split across reads.

#![no_main]

use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use ringcast::sse::FrameEncoder;
use ringcast::Args;

// The loadgen is a binary crate; its parser module is self-contained.
#[path = "../../loadgen/src/parser.rs"]
#[allow(dead_code)]
mod parser;

fuzz_target!(|input: (String, String, u64, u8)| {
    let (event, data, id, split) = input;
    let (e, d) = (format!("--event={event}"), format!("--data={data}"));
    let Ok(args) = Args::try_parse_from(["ringcast", &e, &d]) else {
        return; // the CLI refuses it: never sent
    };
    let frame = FrameEncoder::new(&args.event, &args.data).encode(id);
    let cut = (split as usize).min(frame.len());
    let mut p = parser::Parser::new(1 << 20);
    let mut got = Vec::new();
    for part in [&frame[..cut], &frame[cut..]] {
        p.feed(part, |e| {
            got.push((e.event_type.to_owned(), e.data.to_owned(), e.last_event_id.to_owned()))
        })
        .expect("within the parser's limit");
    }
    let want_data = args.data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(got, vec![(args.event.clone(), want_data, id.to_string())]);
});
