//! The content check run on every message read from a spool, whoever wrote the file: the
//! message must be CRLF-clean (no bare CR, no bare LF: SMTP smuggling), have no NUL and no line
//! over 998 octets (RFC 5322 §2.1.1). A message that fails is refused for good, never sent.
//!
//! The check runs once over the whole message before MAIL FROM (so a refused message never
//! opens a transaction). A large message, read again from the spool as it is streamed into
//! DATA, is checked a second time over the very bytes sent (so a file changed in between
//! cannot slip through); a small one is read once and sent from the bytes checked
//! ([`crate::smtp::Transaction::checked`]).

/// Longest line, without its CRLF (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;

/// A streaming scanner; feed chunks in order, then [`ContentScanner::finish`].
#[derive(Debug, Clone, Default)]
pub struct ContentScanner {
    offset: u64,
    prev_cr: bool,
    line_len: usize,
    eight_bit: bool,
    last_two: [u8; 2],
}

impl ContentScanner {
    /// A new scanner at offset 0.
    pub fn new() -> ContentScanner {
        ContentScanner::default()
    }

    /// Scans the next chunk.
    ///
    /// # Errors
    /// The reason, with the byte offset, at the first violation.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        // the bytes between two CR, LF or NUL are ordinary: found with memchr3 and checked a
        // run at a time (8-bit, line length), not byte by byte
        let mut i = 0;
        while i < chunk.len() {
            if self.prev_cr {
                if chunk[i] != b'\n' {
                    return Err(format!("bare CR at byte {}", self.offset - 1));
                }
                self.prev_cr = false;
                self.line_len = 0;
                self.offset += 1;
                i += 1;
                continue;
            }
            let rest = &chunk[i..];
            let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
            let seg = &rest[..run];
            if seg.iter().fold(0u8, |a, &b| a | b) & 0x80 != 0 {
                self.eight_bit = true;
            }
            if self.line_len + run > MAX_LINE {
                // the offset of the line's 999th octet
                let at = self.offset + (MAX_LINE - self.line_len) as u64;
                return Err(format!("line longer than {MAX_LINE} octets at byte {at}"));
            }
            self.line_len += run;
            self.offset += run as u64;
            i += run;
            let Some(&b) = chunk.get(i) else {
                break;
            };
            match b {
                b'\r' => self.prev_cr = true,
                b'\n' => return Err(format!("bare LF at byte {}", self.offset)),
                _ => return Err(format!("NUL byte at byte {}", self.offset)),
            }
            self.offset += 1;
            i += 1;
        }
        match chunk {
            [.., a, b] => self.last_two = [*a, *b],
            [b] => self.last_two = [self.last_two[1], *b],
            [] => {}
        }
        Ok(())
    }

    /// Ends the scan.
    ///
    /// # Errors
    /// A bare CR as the last byte.
    pub fn finish(&self) -> Result<ContentSummary, String> {
        if self.prev_cr {
            return Err(format!("bare CR at byte {}", self.offset - 1));
        }
        Ok(ContentSummary {
            eight_bit: self.eight_bit,
            ends_with_crlf: self.offset >= 2 && self.last_two == *b"\r\n",
        })
    }
}

/// What the scan found in a clean message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentSummary {
    /// Some byte is over 0x7F (needs 8BITMIME).
    pub eight_bit: bool,
    /// The last two bytes are CRLF.
    pub ends_with_crlf: bool,
}

/// Scans a message held in memory (no copy, no buffer).
///
/// # Errors
/// The reason, with the byte offset, at the first violation.
pub fn scan_bytes(b: &[u8]) -> Result<ContentSummary, String> {
    let mut s = ContentScanner::new();
    s.feed(b)?;
    s.finish()
}

/// Scans a whole reader.
///
/// # Errors
/// `Err(Ok(reason))` for refused content, `Err(Err(io))` for a read error.
pub fn scan(mut r: impl std::io::Read) -> Result<ContentSummary, Result<String, std::io::Error>> {
    let mut s = ContentScanner::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Err(e)),
        };
        s.feed(&buf[..n]).map_err(Ok)?;
    }
    s.finish().map_err(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(b: &[u8]) -> Result<ContentSummary, String> {
        // also fed one byte at a time: chunk boundaries must not matter
        let mut s = ContentScanner::new();
        for c in b.chunks(1) {
            s.feed(c)?;
        }
        let one = s.finish();
        let all = scan(b).map_err(|e| e.unwrap());
        assert_eq!(one, all);
        assert_eq!(scan_bytes(b), all);
        all
    }

    /// The byte-at-a-time rules, as written before the run-at-a-time scanner: the reference.
    fn reference(b: &[u8]) -> Result<ContentSummary, String> {
        let (mut prev_cr, mut line, mut eight) = (false, 0usize, false);
        for (off, &c) in b.iter().enumerate() {
            match c {
                b'\r' if prev_cr => return Err(format!("bare CR at byte {}", off - 1)),
                b'\r' => prev_cr = true,
                b'\n' if !prev_cr => return Err(format!("bare LF at byte {off}")),
                b'\n' => (prev_cr, line) = (false, 0),
                _ if prev_cr => return Err(format!("bare CR at byte {}", off - 1)),
                0 => return Err(format!("NUL byte at byte {off}")),
                _ => {
                    eight |= c >= 0x80;
                    line += 1;
                    if line > MAX_LINE {
                        return Err(format!("line longer than {MAX_LINE} octets at byte {off}"));
                    }
                }
            }
        }
        if prev_cr {
            return Err(format!("bare CR at byte {}", b.len() - 1));
        }
        Ok(ContentSummary {
            eight_bit: eight,
            ends_with_crlf: b.ends_with(b"\r\n"),
        })
    }

    #[test]
    fn runs_agree_with_the_byte_rules_at_every_chunk_boundary() {
        let long = [b'x'; 997];
        let mut cases: Vec<Vec<u8>> = vec![
            b"a\r\nb\r\n".to_vec(),
            b"a\r\r\n".to_vec(),
            b"\r".to_vec(),
            b"ab\nc".to_vec(),
            b"a\0b".to_vec(),
            b"\r\0".to_vec(),
            "h\u{e9}\r\n".as_bytes().to_vec(),
        ];
        for extra in 0..4 {
            let mut v = long.to_vec();
            v.extend(std::iter::repeat_n(b'y', extra));
            v.extend_from_slice(b"\r\nz");
            cases.push(v);
        }
        for c in &cases {
            let want = reference(c);
            assert_eq!(scan_bytes(c), want, "{:?}", String::from_utf8_lossy(c));
            for cut in 0..=c.len() {
                let mut s = ContentScanner::new();
                let r = s
                    .feed(&c[..cut])
                    .and_then(|()| s.feed(&c[cut..]))
                    .and_then(|()| s.finish());
                assert_eq!(r, want, "cut {cut} of {:?}", String::from_utf8_lossy(c));
            }
        }
    }

    #[test]
    fn crlf_rules() {
        assert!(check(b"a\r\nb\r\n").unwrap().ends_with_crlf);
        assert!(!check(b"a\r\nb").unwrap().ends_with_crlf);
        assert!(
            check(b"a\nb\r\n")
                .unwrap_err()
                .contains("bare LF at byte 1")
        );
        assert!(
            check(b"a\rb\r\n")
                .unwrap_err()
                .contains("bare CR at byte 1")
        );
        assert!(check(b"a\r\r\n").unwrap_err().contains("bare CR"));
        assert!(check(b"a\r").unwrap_err().contains("bare CR"));
        assert!(check(b"\n").unwrap_err().contains("bare LF"));
        assert!(check(b"a\0\r\n").unwrap_err().contains("NUL"));
        assert!(check(&[b'a'; 998]).is_ok());
        assert!(check(&[b'a'; 999]).unwrap_err().contains("998"));
        assert!(check("é\r\n".as_bytes()).unwrap().eight_bit);
    }
}
