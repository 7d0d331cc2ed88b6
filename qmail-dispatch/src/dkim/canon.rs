//! DKIM canonicalization (RFC 6376 §3.4): the header algorithms over whole fields, and the body
//! algorithms as a streaming state machine, so a body of any size is hashed in bounded memory
//! and the result does not depend on where the chunks of the spool file were cut.

use sha2::{Digest, Sha256};

/// One canonicalization algorithm (RFC 6376 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Canon {
    /// §3.4.1 / §3.4.3: the bytes as they are, but for trailing empty lines of the body.
    Simple,
    /// §3.4.2 / §3.4.4: tolerant of whitespace changes and header unfolding.
    Relaxed,
}

impl Canon {
    /// The name used in the `c=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends one header field, canonicalized, to `out`. `raw` is the whole field as it appears in
/// the message: name, colon, value, folding and the final CRLF.
///
/// - simple (RFC 6376 §3.4.1): unchanged.
/// - relaxed (§3.4.2): the name lower-cased, the value unfolded (every CRLF removed), each run
///   of SP/HTAB turned into one SP, whitespace at the end of the value and around the colon
///   removed, then `name:value CRLF`.
///
/// With `crlf = false` the final CRLF is left out (the `DKIM-Signature` field itself is hashed
/// that way, RFC 6376 §3.7).
pub fn header_field(canon: Canon, raw: &[u8], crlf: bool, out: &mut Vec<u8>) {
    match canon {
        Canon::Simple => {
            let body = raw.strip_suffix(b"\r\n").unwrap_or(raw);
            out.extend_from_slice(body);
        }
        Canon::Relaxed => {
            let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
            let name = &raw[..colon];
            let end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |i| i + 1);
            out.extend(name[..end].iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let value = raw.get(colon + 1..).unwrap_or(&[]);
            let mut ws = false;
            let mut started = false;
            for &b in value {
                if b == b'\r' || b == b'\n' || is_wsp(b) {
                    // unfolding removes the CRLF; the WSP that follows it is a WSP like any
                    ws |= is_wsp(b);
                    continue;
                }
                if ws && started {
                    out.push(b' ');
                }
                ws = false;
                started = true;
                out.push(b);
            }
        }
    }
    if crlf {
        out.extend_from_slice(b"\r\n");
    }
}

/// The body canonicalizer (RFC 6376 §3.4.3, §3.4.4) feeding a SHA-256, fed in chunks.
///
/// Lines end at CRLF; a CR or LF alone is an ordinary byte (the spool re-check refuses such
/// messages before they get here). The body is hashed as the relay receives it: when it does
/// not end with CRLF, the SMTP layer adds one before the end-of-data, so one is assumed here.
///
/// - simple: trailing empty lines are dropped; an empty body is one CRLF.
/// - relaxed: whitespace at the end of each line is dropped, each other run of SP/HTAB becomes
///   one SP, trailing empty lines are dropped; an empty body stays empty.
///
/// Memory: a 16 KiB output buffer, whatever the body size.
pub struct BodyHasher {
    canon: Canon,
    hash: Sha256,
    out: Vec<u8>,
    /// CRLFs seen but not yet hashed: they are dropped if only empty lines follow.
    pending_crlf: u64,
    /// A run of SP/HTAB seen (relaxed) and not yet written.
    pending_ws: bool,
    /// The last byte fed was a CR (its LF may start the next chunk).
    pending_cr: bool,
    /// Something was fed since the last CRLF.
    mid_line: bool,
    /// Some line is not empty (after canonicalization).
    content: bool,
    /// Bytes fed (for the tests and the benchmark).
    fed: u64,
}

const OUT: usize = 16 * 1024;

impl BodyHasher {
    /// A hasher for one body canonicalization.
    pub fn new(canon: Canon) -> BodyHasher {
        BodyHasher {
            canon,
            hash: Sha256::new(),
            out: Vec::with_capacity(OUT),
            pending_crlf: 0,
            pending_ws: false,
            pending_cr: false,
            mid_line: false,
            content: false,
            fed: 0,
        }
    }

    /// The canonicalization of this hasher.
    pub fn canon(&self) -> Canon {
        self.canon
    }

    fn emit(&mut self, bytes: &[u8]) {
        if bytes.len() >= 256 || self.out.len() + bytes.len() > OUT {
            // long runs go to the hash directly; short ones (a space, a CRLF) are gathered
            if !self.out.is_empty() {
                self.hash.update(&self.out);
                self.out.clear();
            }
            if bytes.len() >= 256 {
                self.hash.update(bytes);
                return;
            }
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes what is owed before a non-empty run: the held CRLFs, the held whitespace.
    fn before_content(&mut self) {
        while self.pending_crlf > 0 {
            let n = self.pending_crlf.min(512) as usize;
            self.emit(&CRLFS[..2 * n]);
            self.pending_crlf -= n as u64;
        }
        if self.pending_ws {
            self.pending_ws = false;
            self.emit(b" ");
        }
        self.content = true;
    }

    fn end_line(&mut self) {
        self.pending_ws = false;
        self.pending_crlf += 1;
        self.mid_line = false;
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, mut data: &[u8]) {
        self.fed += data.len() as u64;
        if data.is_empty() {
            return;
        }
        if self.pending_cr {
            self.pending_cr = false;
            if data[0] == b'\n' {
                self.end_line();
                data = &data[1..];
            } else {
                self.before_content();
                self.emit(b"\r");
            }
        }
        let relaxed = self.canon == Canon::Relaxed;
        let mut i = 0;
        while i < data.len() {
            // a run of bytes the canonicalization leaves as they are, hashed as one slice: up
            // to a CR (simple), or (relaxed) to a CR or whitespace other than one SP between
            // two ordinary bytes
            let start = i;
            if relaxed {
                while i < data.len() {
                    let b = data[i];
                    if b == b'\r' {
                        break;
                    }
                    if is_wsp(b) {
                        let lone = b == b' '
                            && i > start
                            && data.get(i + 1).is_some_and(|&n| n != b'\r' && !is_wsp(n));
                        if !lone {
                            break;
                        }
                    }
                    i += 1;
                }
            } else {
                i = memchr::memchr(b'\r', &data[i..]).map_or(data.len(), |p| i + p);
            }
            if i > start {
                self.mid_line = true;
                self.before_content();
                self.emit(&data[start..i]);
            }
            if i == data.len() {
                break;
            }
            let b = data[i];
            i += 1;
            self.mid_line = true;
            if b == b'\r' {
                match data.get(i) {
                    Some(b'\n') => {
                        i += 1;
                        self.end_line();
                    }
                    Some(_) => {
                        self.before_content();
                        self.emit(b"\r");
                    }
                    None => self.pending_cr = true,
                }
            } else {
                // relaxed whitespace: held until we know whether the line goes on
                while i < data.len() && is_wsp(data[i]) {
                    i += 1;
                }
                self.pending_ws = true;
            }
        }
    }

    /// Ends the body; returns the SHA-256 of the canonical body (the `bh=` value).
    pub fn finish(mut self) -> [u8; 32] {
        if self.pending_cr {
            self.pending_cr = false;
            self.before_content();
            self.emit(b"\r");
        }
        if self.mid_line {
            // the CRLF the SMTP layer adds to a message that does not end with one
            self.end_line();
        }
        if self.content {
            // the last non-empty line keeps its CRLF; the empty lines after it go
            self.emit(b"\r\n");
        } else if self.canon == Canon::Simple {
            // RFC 6376 §3.4.3: an empty body is one CRLF (relaxed: empty)
            self.emit(b"\r\n");
        }
        let out = std::mem::take(&mut self.out);
        self.hash.update(&out);
        self.hash.finalize().into()
    }

    /// Bytes fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }
}

static CRLFS: [u8; 1024] = {
    let mut a = [0u8; 1024];
    let mut i = 0;
    while i < 1024 {
        a[i] = if i % 2 == 0 { b'\r' } else { b'\n' };
        i += 1;
    }
    a
};

/// The canonical body in one piece: the reference the tests hold the streaming hasher to
/// (written as RFC 6376 §3.4.3/§3.4.4 read, line by line).
#[cfg(test)]
pub(crate) fn body_oneshot(canon: Canon, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut rest = &body[..];
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(rest[..p].to_vec());
        rest = &rest[p + 2..];
    }
    if canon == Canon::Relaxed {
        for l in &mut lines {
            let mut o = Vec::new();
            let mut ws = false;
            for &b in l.iter() {
                if is_wsp(b) {
                    ws = true;
                } else {
                    if ws {
                        o.push(b' ');
                    }
                    ws = false;
                    o.push(b);
                }
            }
            *l = o;
        }
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        return if canon == Canon::Simple {
            b"\r\n".to_vec()
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(&l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn streamed(canon: Canon, body: &[u8], cuts: &[usize]) -> [u8; 32] {
        let mut h = BodyHasher::new(canon);
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            h.update(&body[last..c]);
            last = c;
        }
        h.update(&body[last..]);
        h.finish()
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn rfc6376_examples() {
        // RFC 6376 §3.4.5
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(body_oneshot(Canon::Relaxed, body), b" C\r\nD E\r\n");
        assert_eq!(body_oneshot(Canon::Simple, body), b" C \r\nD \t E\r\n");
        let mut h = Vec::new();
        header_field(Canon::Relaxed, b"A: X\r\n", true, &mut h);
        header_field(Canon::Relaxed, b"B : Y\t\r\n\tZ  \r\n", true, &mut h);
        assert_eq!(h, b"a:X\r\nb:Y Z\r\n");
        let mut h = Vec::new();
        header_field(Canon::Simple, b"B : Y\t\r\n\tZ  \r\n", true, &mut h);
        assert_eq!(h, b"B : Y\t\r\n\tZ  \r\n");
    }

    #[test]
    fn empty_and_trailing_lines() {
        for (body, simple, relaxed) in [
            (&b""[..], &b"\r\n"[..], &b""[..]),
            (b"\r\n", b"\r\n", b""),
            (b"\r\n\r\n\r\n", b"\r\n", b""),
            (b"  \r\n\t\r\n", b"  \r\n\t\r\n", b""),
            (b"a", b"a\r\n", b"a\r\n"),
            (b"a  ", b"a  \r\n", b"a\r\n"),
            (b"a\r\n\r\n", b"a\r\n", b"a\r\n"),
            (b"\r\n\r\na\r\n", b"\r\n\r\na\r\n", b"\r\n\r\na\r\n"),
            (b"a\rb\r\n", b"a\rb\r\n", b"a\rb\r\n"),
        ] {
            assert_eq!(body_oneshot(Canon::Simple, body), simple, "{body:?}");
            assert_eq!(body_oneshot(Canon::Relaxed, body), relaxed, "{body:?}");
            assert_eq!(streamed(Canon::Simple, body, &[]), sha(simple), "{body:?}");
            assert_eq!(
                streamed(Canon::Relaxed, body, &[]),
                sha(relaxed),
                "{body:?}"
            );
        }
    }

    #[test]
    fn many_empty_lines_and_large_runs() {
        let mut body = b"x\r\n".to_vec();
        body.extend(std::iter::repeat_n(b"\r\n".iter().copied(), 5000).flatten());
        body.extend_from_slice(b"y \t \r\n");
        body.extend(std::iter::repeat_n(b' ', 70_000));
        body.extend_from_slice(b"z");
        body.extend(std::iter::repeat_n(b'q', 70_000));
        body.extend(std::iter::repeat_n(b"\r\n".iter().copied(), 3000).flatten());
        for canon in [Canon::Simple, Canon::Relaxed] {
            let want = sha(&body_oneshot(canon, &body));
            assert_eq!(streamed(canon, &body, &[]), want);
            assert_eq!(
                streamed(canon, &body, &[1, 3, 4, 9999, 10_003, 80_001]),
                want
            );
        }
    }

    fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
        // a small alphabet so CR, LF, CRLF, SP, HTAB and their runs are frequent
        proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'.'),
                Just(b' '),
                Just(b'\t'),
                Just(b'\r'),
                Just(b'\n'),
                Just(0xc3u8),
            ],
            0..300,
        )
        .prop_map(|v| {
            // mostly CRLF-clean bodies, as the spool re-check lets through; some not
            let mut out = Vec::with_capacity(v.len() * 2);
            for (i, b) in v.iter().enumerate() {
                match b {
                    b'\n' if i % 7 != 0 => out.extend_from_slice(b"\r\n"),
                    _ => out.push(*b),
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn any_chunk_split_equals_one_shot(
            body in body_bytes(),
            cuts in proptest::collection::vec(0usize..1000, 0..12),
        ) {
            for canon in [Canon::Simple, Canon::Relaxed] {
                let want = sha(&body_oneshot(canon, &body));
                prop_assert_eq!(streamed(canon, &body, &cuts), want);
                // one byte at a time: every boundary at once
                let every: Vec<usize> = (0..body.len()).collect();
                prop_assert_eq!(streamed(canon, &body, &every), want);
            }
        }
    }
}
