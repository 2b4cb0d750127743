//! The request path: any bytes, in any chunking, through the connection's Session.
//!
//! The first bytes of the input choose a chunking (sizes of the successive reads) and a body
//! limit; the rest is what the client sends. The session must never panic, never hold more than
//! the 8 KiB head limit, and give the same answers and the same decision whether the bytes arrive
//! in those chunks or in reads as large as it allows.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringcast::http::Responses;
use ringcast::session::drive;
use ringcast::Config;

fn responses() -> &'static Responses {
    static R: OnceLock<Responses> = OnceLock::new();
    R.get_or_init(|| Responses::new(&Config::default()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let chunks: Vec<usize> = data[..3].iter().map(|&b| b as usize % 64 + 1).collect();
    let max_body = [0, 10, 1 << 20][data[3] as usize % 3];
    let input = &data[4..];
    let whole = drive(responses(), max_body, input, &[0]);
    let chunked = drive(responses(), max_body, input, &chunks);
    assert_eq!(whole, chunked, "answers depend on chunking {chunks:?}");
});
