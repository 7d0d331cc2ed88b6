//! The spool file format, version 1 (documented in `docs/spool-format.md`).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "QMAILSPL"
//! 8       2     format version, u16 little-endian (1)
//! 10      4     header length H, u32 little-endian (at most 1 MiB)
//! 14      H     header: postcard encoding of SpoolHeader (fields in declaration order)
//! 14+H    B     the message: RFC 5322 bytes, CRLF line ends, not dot-stuffed
//! 14+H+B  8     trailer magic "QMAILEND"
//! 22+H+B  8     B, u64 little-endian
//! ```
//! The trailer is the commit marker: a file without it (or whose B does not match its size) is
//! truncated and is treated as corrupt. Readers accept every version up to
//! [`FORMAT_VERSION`]; a new version only ever adds a new header struct.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};

/// First 8 bytes of every spool file.
pub const MAGIC: &[u8; 8] = b"QMAILSPL";
/// The trailer's magic.
pub const END_MAGIC: &[u8; 8] = b"QMAILEND";
/// The version this library writes.
pub const FORMAT_VERSION: u16 = 1;
/// Upper bound on the header length, in bytes.
pub const MAX_HEADER: u32 = 1 << 20;
/// Bytes before the header: magic, version, length.
pub const PREFIX_LEN: u64 = 14;
/// Bytes of the trailer.
pub const TRAILER_LEN: u64 = 16;

/// The envelope and metadata stored before the message (format version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolHeader {
    /// MAIL FROM, RCPT TO, SMTPUTF8/8BITMIME needs.
    pub envelope: Envelope,
    /// When the message was submitted, Unix seconds.
    pub created: i64,
    /// Hold until this Unix time (seconds), if set.
    pub not_before: Option<i64>,
    /// 1 (highest) ..= 5 (lowest); 3 is normal.
    pub priority: u8,
    /// The Message-ID header value, `<left@right>`.
    pub message_id: String,
}

/// Encodes a header, checking it fits [`MAX_HEADER`].
///
/// # Errors
/// [`ErrorKind::InvalidMessage`] naming `to` when the envelope is too large (about 20,000
/// long recipients): split the recipients over several messages.
pub fn encode_header(h: &SpoolHeader) -> Result<Vec<u8>> {
    let bytes = postcard::to_stdvec(h).map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("header does not encode: {e}"),
        )
    })?;
    if bytes.len() > MAX_HEADER as usize {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "the envelope takes {} bytes; a spool file header holds at most {MAX_HEADER} \
                 (split the recipients over several messages)",
                bytes.len()
            ),
        )
        .with_field("to"));
    }
    Ok(bytes)
}

/// Writes the prefix and a header made by [`encode_header`]; returns the bytes written.
pub fn write_encoded_header(out: &mut impl Write, encoded: &[u8]) -> io::Result<u64> {
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(encoded.len() as u32).to_le_bytes())?;
    out.write_all(encoded)?;
    Ok(PREFIX_LEN + encoded.len() as u64)
}

/// Encodes and writes the prefix and header (see [`encode_header`]).
pub fn write_header(out: &mut impl Write, h: &SpoolHeader) -> io::Result<u64> {
    let encoded =
        encode_header(h).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    write_encoded_header(out, &encoded)
}

/// Writes the trailer after `body_len` message bytes.
pub fn write_trailer(out: &mut impl Write, body_len: u64) -> io::Result<()> {
    out.write_all(END_MAGIC)?;
    out.write_all(&body_len.to_le_bytes())
}

/// An open, verified spool file: its header, and where its message lies.
#[derive(Debug)]
pub struct SpoolFile {
    /// The header.
    pub header: SpoolHeader,
    /// The format version it was written in.
    pub version: u16,
    /// Offset of the message's first byte.
    pub body_offset: u64,
    /// Length of the message, in bytes.
    pub body_len: u64,
    file: File,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

/// What [`frame`] finds: the header, the format version, the message's offset and length.
type Framing = (SpoolHeader, u16, u64, u64);

/// Checks a spool file's framing (magic, version, header, trailer) through `read_at(offset,
/// buf)`, which fills `buf` from `offset` or fails; returns the header, the format version,
/// and the message's offset and length.
fn frame(size: u64, mut read_at: impl FnMut(u64, &mut [u8]) -> Result<()>) -> Result<Framing> {
    let mut prefix = [0u8; PREFIX_LEN as usize];
    if size < PREFIX_LEN + TRAILER_LEN {
        return Err(corrupt(format!("spool file is {size} bytes: too short")));
    }
    read_at(0, &mut prefix)?;
    if &prefix[..8] != MAGIC {
        return Err(corrupt("bad magic: not a qmail spool file"));
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version} is not known (this reader knows 1..={FORMAT_VERSION})"
        )));
    }
    let hlen = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]);
    if hlen > MAX_HEADER || PREFIX_LEN + hlen as u64 + TRAILER_LEN > size {
        return Err(corrupt(format!(
            "header length {hlen} does not fit the file"
        )));
    }
    let mut hbuf = vec![0u8; hlen as usize];
    read_at(PREFIX_LEN, &mut hbuf)?;
    let header: SpoolHeader =
        postcard::from_bytes(&hbuf).map_err(|e| corrupt(format!("header does not decode: {e}")))?;
    let body_offset = PREFIX_LEN + hlen as u64;
    let mut trailer = [0u8; TRAILER_LEN as usize];
    read_at(size - TRAILER_LEN, &mut trailer)?;
    if &trailer[..8] != END_MAGIC {
        return Err(corrupt("no trailer: the file is truncated"));
    }
    let body_len = u64::from_le_bytes(trailer[8..16].try_into().unwrap_or_default());
    if body_offset
        .checked_add(body_len)
        .and_then(|e| e.checked_add(TRAILER_LEN))
        != Some(size)
    {
        return Err(corrupt(format!(
            "trailer says {body_len} message bytes; the file holds {}",
            size - body_offset - TRAILER_LEN
        )));
    }
    Ok((header, version, body_offset, body_len))
}

impl SpoolFile {
    /// Opens and verifies a spool file: magic, version, header, trailer.
    ///
    /// # Errors
    /// [`ErrorKind::Corrupt`] for a file that is not a complete spool file;
    /// [`ErrorKind::Io`] when it cannot be read.
    pub fn open(path: &Path) -> Result<SpoolFile> {
        // never open a FIFO, device, directory or symlink found in a queue directory
        let meta = std::fs::symlink_metadata(path).map_err(|e| {
            Error::io(
                ErrorKind::Io,
                format_args!("cannot stat {}", path.display()),
                e,
            )
        })?;
        if !meta.file_type().is_file() {
            return Err(corrupt(format!("{} is not a regular file", path.display())));
        }
        let file = File::open(path).map_err(|e| {
            Error::io(
                ErrorKind::Io,
                format_args!("cannot open {}", path.display()),
                e,
            )
        })?;
        SpoolFile::from_file(file)
    }

    /// As [`SpoolFile::open`], from an open file.
    ///
    /// # Errors
    /// As [`SpoolFile::open`].
    pub fn from_file(file: File) -> Result<SpoolFile> {
        let io = |e: io::Error| Error::io(ErrorKind::Io, "cannot read spool file", e);
        let size = file.metadata().map_err(io)?.len();
        // positional reads (`pread(2)`): the file position is left for `body_reader`
        let read_at = |off: u64, buf: &mut [u8]| {
            std::os::unix::fs::FileExt::read_exact_at(&file, buf, off).map_err(io)
        };
        let framed = frame(size, read_at)?;
        Ok(SpoolFile::framed(file, framed))
    }

    /// As [`SpoolFile::from_file`], when the caller already read the whole file into `whole`
    /// (one `pread(2)` of its size): the framing is checked on those bytes, with no further
    /// system call. `whole` must be the file's complete content (its length is taken as the
    /// file's size).
    ///
    /// # Errors
    /// As [`SpoolFile::open`].
    pub fn from_file_with_bytes(file: File, whole: &[u8]) -> Result<SpoolFile> {
        let read_at = |off: u64, buf: &mut [u8]| {
            let from = usize::try_from(off).map_err(|_| corrupt("offset out of range"))?;
            let part = whole
                .get(from..from.saturating_add(buf.len()))
                .ok_or_else(|| corrupt("the spool file is shorter than its framing says"))?;
            buf.copy_from_slice(part);
            Ok(())
        };
        let framed = frame(whole.len() as u64, read_at)?;
        Ok(SpoolFile::framed(file, framed))
    }

    fn framed(file: File, (header, version, body_offset, body_len): Framing) -> SpoolFile {
        SpoolFile {
            header,
            version,
            body_offset,
            body_len,
            file,
        }
    }

    /// A buffered reader over exactly the message bytes.
    ///
    /// # Errors
    /// [`ErrorKind::Io`].
    pub fn body_reader(&self) -> Result<impl Read + use<>> {
        let mut f = self
            .file
            .try_clone()
            .map_err(|e| Error::io(ErrorKind::Io, "cannot read spool file", e))?;
        f.seek(SeekFrom::Start(self.body_offset))
            .map_err(|e| Error::io(ErrorKind::Io, "cannot read spool file", e))?;
        Ok(BufReader::with_capacity(64 * 1024, f).take(self.body_len))
    }

    /// The whole message in memory (tests, small messages).
    ///
    /// # Errors
    /// [`ErrorKind::Io`].
    pub fn read_body(&self) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.body_len as usize);
        self.body_reader()?
            .read_to_end(&mut v)
            .map_err(|e| Error::io(ErrorKind::Io, "cannot read spool file", e))?;
        Ok(v)
    }
}
