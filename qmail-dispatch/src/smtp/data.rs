//! The DATA content (RFC 5321 §4.1.1.4, §4.5.2): dot-stuffing that keeps its state across
//! chunk boundaries, and the terminator.
//!
//! The message is streamed from the spool in [`CHUNK`]-byte reads; each chunk is re-checked
//! ([`ContentScanner`](crate::content::ContentScanner)) and stuffed before it is written, so
//! memory does not grow with the message. A read error, or content that fails the re-check,
//! stops before the terminator: the caller drops the connection, and the relay discards the
//! transaction (an end-of-data it never saw delivers nothing).

/// Bytes read from the spool per write.
pub const CHUNK: usize = 64 * 1024;

/// Dot-stuffing state: a line that starts with `.` gets one more (RFC 5321 §4.5.2).
#[derive(Debug, Clone, Copy)]
pub struct DotStuffer {
    line_start: bool,
    prev_cr: bool,
    any: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// At the start of the message.
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            prev_cr: false,
            any: false,
        }
    }

    /// Appends `input`, stuffed, to `out`; the state carries over to the next call.
    pub fn stuff(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else {
            return;
        };
        out.reserve(input.len() + input.len() / 64 + 1);
        // a dot to double can only follow CRLF (or start the message): only the LFs are
        // visited (memchr), not every byte
        if self.line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let mut from = 0;
        for i in memchr::memchr_iter(b'\n', input) {
            let after_cr = if i == 0 {
                self.prev_cr
            } else {
                input[i - 1] == b'\r'
            };
            if after_cr && input.get(i + 1) == Some(&b'.') {
                out.extend_from_slice(&input[from..=i]);
                out.push(b'.');
                from = i + 1;
            }
        }
        out.extend_from_slice(&input[from..]);
        let cr_before_last = match input.len() {
            1 => self.prev_cr,
            n => input[n - 2] == b'\r',
        };
        self.line_start = last == b'\n' && cr_before_last;
        self.prev_cr = last == b'\r';
        self.any = true;
    }

    /// The terminator: `.CRLF` after content that ended with CRLF (or no content), else
    /// `CRLF.CRLF` (the CRLF a message must end with, RFC 5321 §4.1.1.4).
    pub fn terminator(&self) -> &'static [u8] {
        if self.line_start || !self.any {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<u8> {
        let mut d = DotStuffer::new();
        let mut out = Vec::new();
        d.stuff(input, &mut out);
        out.extend_from_slice(d.terminator());
        out
    }

    #[test]
    fn stuffing() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
            (b"a\r\n..b\r\n...\r\n", b"a\r\n...b\r\n....\r\n.\r\n"),
            (b"a.b\r\n .\r\n", b"a.b\r\n .\r\n.\r\n"),
            (b"\r\n.\r\n\r\n.", b"\r\n..\r\n\r\n..\r\n.\r\n"),
            (b"", b".\r\n"),
        ];
        for (i, o) in cases {
            assert_eq!(all(i), o, "{:?}", String::from_utf8_lossy(i));
        }
    }

    #[test]
    fn across_chunks() {
        let msg = b"a\r\n.b\r\n.\r\n..\r\nend\r\n";
        let whole = all(msg);
        for cut1 in 0..msg.len() {
            for cut2 in cut1..msg.len() {
                let mut d = DotStuffer::new();
                let mut out = Vec::new();
                d.stuff(&msg[..cut1], &mut out);
                d.stuff(&msg[cut1..cut2], &mut out);
                d.stuff(&msg[cut2..], &mut out);
                out.extend_from_slice(d.terminator());
                assert_eq!(out, whole, "cuts {cut1} {cut2}");
            }
        }
    }
}
