//! Content-Transfer-Encodings (RFC 2045 §6) and line-break normalisation.
//!
//! Text parts are normalised first: every line break (LF, CRLF or a lone CR) becomes CRLF
//! (RFC 5322 §2.3 forbids bare CR and LF). Then a part is `7bit` when it is ASCII with lines of
//! at most 76 characters, else `quoted-printable` (§6.7) with lines of at most 76 characters.
//! Binary content is `base64` (§6.8) in 76-character lines, streamed in bounded chunks.

use std::io::{self, Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// RFC 2045 §6.7 rule 5 / §6.8: encoded lines are at most 76 characters.
pub const ENCODED_LINE: usize = 76;
/// Raw bytes per base64 line (57 * 4 / 3 = 76).
const B64_LINE_RAW: usize = 57;
/// Raw bytes per streamed chunk: 1024 lines, 58,368 bytes.
pub const B64_CHUNK_RAW: usize = B64_LINE_RAW * 1024;

/// A transfer encoding chosen for a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// ASCII text with short lines, written as is.
    SevenBit,
    /// RFC 2045 §6.7.
    QuotedPrintable,
    /// RFC 2045 §6.8.
    Base64,
}

impl Encoding {
    /// The Content-Transfer-Encoding value.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::SevenBit => "7bit",
            Encoding::QuotedPrintable => "quoted-printable",
            Encoding::Base64 => "base64",
        }
    }
}

/// Normalises every line break (LF, CRLF, lone CR) to CRLF.
pub fn normalise_line_breaks(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Chooses 7bit or quoted-printable for CRLF-normalised text.
pub fn choose_text_encoding(crlf_text: &[u8]) -> Encoding {
    let short = crlf_text
        .split(|&b| b == b'\n')
        .all(|l| l.len() <= ENCODED_LINE + 1);
    let clean = crlf_text
        .iter()
        .all(|&b| b == b'\r' || b == b'\n' || b == b'\t' || (32..127).contains(&b));
    if short && clean {
        Encoding::SevenBit
    } else {
        Encoding::QuotedPrintable
    }
}

/// Quoted-printable encoding of CRLF-normalised text: CRLF stays a hard line break; every
/// output line is at most 76 characters (soft breaks `=` CRLF); '=' , controls, 8-bit bytes and
/// whitespace before a line end are `=XX`.
pub fn quoted_printable(crlf_text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crlf_text.len() * 11 / 10 + 16);
    let lines: Vec<&[u8]> = split_crlf(crlf_text);
    for (n, line) in lines.iter().enumerate() {
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let lit = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece_len = if lit { 1 } else { 3 };
            // room for the piece plus a soft-break '=' unless this is the line's last byte
            let need = if last { piece_len } else { piece_len + 1 };
            if col + need > ENCODED_LINE {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if lit {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += piece_len;
        }
        if n + 1 < lines.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn split_crlf(text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < text.len() {
        if text[i] == b'\r' && text[i + 1] == b'\n' {
            lines.push(&text[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    lines.push(&text[start..]);
    lines
}

/// Base64 of `data` in 76-character CRLF-terminated lines.
pub fn base64_lines(data: &[u8], out: &mut impl Write) -> io::Result<()> {
    for line in data.chunks(B64_LINE_RAW) {
        let mut buf = [0u8; ENCODED_LINE];
        let n = STANDARD
            .encode_slice(line, &mut buf)
            .map_err(io::Error::other)?;
        out.write_all(&buf[..n])?;
        out.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Streams `src` as base64 lines into `out`, reading at most [`B64_CHUNK_RAW`] bytes at a time:
/// memory does not grow with the size of `src`. Returns the raw byte count.
///
/// Read errors come back as `Err(Ok(e))`, write errors as `Err(Err(e))`, so the caller can
/// tell a bad attachment from a failing spool.
pub fn base64_stream(
    src: &mut impl Read,
    out: &mut impl Write,
) -> Result<u64, Result<io::Error, io::Error>> {
    let mut buf = vec![0u8; B64_CHUNK_RAW];
    let mut enc = vec![0u8; B64_CHUNK_RAW / B64_LINE_RAW * (ENCODED_LINE + 2)];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Ok(e)),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        total += filled as u64;
        let mut w = 0;
        for line in buf[..filled].chunks(B64_LINE_RAW) {
            let n = STANDARD
                .encode_slice(line, &mut enc[w..w + ENCODED_LINE])
                .map_err(|e| Err(io::Error::other(e)))?;
            w += n;
            enc[w] = b'\r';
            enc[w + 1] = b'\n';
            w += 2;
        }
        out.write_all(&enc[..w]).map_err(Err)?;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(
            normalise_line_breaks(b"a\nb\r\nc\rd\r"),
            b"a\r\nb\r\nc\r\nd\r\n"
        );
    }

    #[test]
    fn qp_lines_and_trailing_space() {
        let text = normalise_line_breaks(format!("{}\nend \n", "x".repeat(200)).as_bytes());
        let q = quoted_printable(&text);
        for line in q.split(|&b| b == b'\n') {
            assert!(line.len() <= ENCODED_LINE + 1);
        }
        assert!(String::from_utf8_lossy(&q).contains("end=20\r\n"));
    }

    #[test]
    fn stream_matches_slice() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = Vec::new();
        base64_lines(&data, &mut a).unwrap();
        let mut b = Vec::new();
        base64_stream(&mut &data[..], &mut b).unwrap();
        assert_eq!(a, b);
    }
}
