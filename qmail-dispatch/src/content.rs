//! The content check run on every message read from a spool, whoever wrote the file: the
//! message must be CRLF-clean (no bare CR, no bare LF: SMTP smuggling), have no NUL and no line
//! over 998 octets (RFC 5322 §2.1.1). A message that fails is refused for good, never sent.
//!
//! The check runs twice per attempt: once over the whole file before MAIL FROM (so a refused
//! message never opens a transaction), and again over the very bytes streamed into DATA (so a
//! file changed in between cannot slip through).

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
        for &b in chunk {
            match b {
                b'\r' => {
                    if self.prev_cr {
                        return Err(format!("bare CR at byte {}", self.offset - 1));
                    }
                    self.prev_cr = true;
                }
                b'\n' => {
                    if !self.prev_cr {
                        return Err(format!("bare LF at byte {}", self.offset));
                    }
                    self.prev_cr = false;
                    self.line_len = 0;
                }
                _ => {
                    if self.prev_cr {
                        return Err(format!("bare CR at byte {}", self.offset - 1));
                    }
                    if b == 0 {
                        return Err(format!("NUL byte at byte {}", self.offset));
                    }
                    if b >= 0x80 {
                        self.eight_bit = true;
                    }
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(format!(
                            "line longer than {MAX_LINE} octets at byte {}",
                            self.offset
                        ));
                    }
                }
            }
            self.last_two = [self.last_two[1], b];
            self.offset += 1;
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
        all
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
