//! Any bytes from a relay: the reply parser returns a reply, "incomplete" or an error, never
//! panics, and a reply it returns is consistent with its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmail_dispatch::smtp::reply::{MAX_LINES, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((r, n))) = parse(data) {
        assert!(n <= data.len() && n > 0);
        assert_eq!(data[n - 1], b'\n');
        assert!((200..600).contains(&r.code));
        assert!(!r.lines.is_empty() && r.lines.len() <= MAX_LINES);
        // the rest parses on its own (pipelined replies)
        let _ = parse(&data[n..]);
    }
});
