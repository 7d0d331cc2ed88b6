//! Rendering a [`Message`] into RFC 5322 bytes, ready for DATA.
//!
//! Structure (RFC 2046): text + HTML → `multipart/alternative` (text first, §5.1.4); inline
//! parts → `multipart/related` with its `type` parameter (RFC 2387) around that; attachments →
//! `multipart/mixed` around all; a single part is never wrapped. Every line ends in CRLF, no
//! line exceeds 998 octets (headers fold at 78; bodies are 7bit only when ASCII with lines of at
//! most 76 characters, else quoted-printable; attachments base64). Bcc is never written. A
//! message without To or Cc gets `To: undisclosed-recipients:;` (RFC 5322 §3.6.3 group).
//! File attachments are streamed in chunks of [`crate::mime::transfer::B64_CHUNK_RAW`] bytes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::address::Mailbox;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Attachment, AttachmentSource, Message};
use crate::mime::header::{fold, phrase, write_unstructured};
use crate::mime::rfc2231::encode_param;
use crate::mime::transfer::{self, Encoding};

enum Node<'a> {
    Text {
        subtype: &'static str,
        body: Vec<u8>,
        encoding: Encoding,
    },
    Part {
        att: &'a Attachment,
        inline: bool,
        field: String,
    },
    Multi {
        subtype: &'static str,
        boundary: String,
        params: Vec<String>,
        children: Vec<Node<'a>>,
    },
}

impl Node<'_> {
    fn content_type(&self) -> String {
        match self {
            Node::Text { subtype, .. } => format!("text/{subtype}"),
            Node::Part { att, .. } => att.content_type.clone(),
            Node::Multi { subtype, .. } => format!("multipart/{subtype}"),
        }
    }

    fn headers(&self, out: &mut Vec<u8>) {
        match self {
            Node::Text {
                subtype, encoding, ..
            } => {
                out.extend_from_slice(
                    format!("Content-Type: text/{subtype}; charset=utf-8\r\n").as_bytes(),
                );
                out.extend_from_slice(
                    format!("Content-Transfer-Encoding: {}\r\n", encoding.as_str()).as_bytes(),
                );
            }
            Node::Part { att, inline, .. } => {
                let mut ct = vec![att.content_type.clone()];
                let mut cd = vec![if *inline { "inline" } else { "attachment" }.to_owned()];
                if let Some(name) = &att.filename {
                    ct.extend(encode_param("name", name));
                    cd.extend(encode_param("filename", name));
                }
                fold("Content-Type", &ct, "; ", out);
                out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
                fold("Content-Disposition", &cd, "; ", out);
                if let Some(cid) = &att.content_id {
                    out.extend_from_slice(format!("Content-ID: <{cid}>\r\n").as_bytes());
                }
            }
            Node::Multi {
                subtype,
                boundary,
                params,
                ..
            } => {
                let mut ct = vec![format!("multipart/{subtype}")];
                ct.extend(params.iter().cloned());
                ct.push(format!("boundary=\"{boundary}\""));
                fold("Content-Type", &ct, "; ", out);
            }
        }
    }

    fn body(&self, out: &mut dyn Write, top: bool) -> Result<()> {
        match self {
            Node::Text { body, .. } => {
                w(out, body)?;
                if top && !body.ends_with(b"\r\n") {
                    w(out, b"\r\n")?;
                }
            }
            Node::Part { att, field, .. } => match &att.source {
                AttachmentSource::Bytes(b) => {
                    transfer::base64_lines(b, &mut WriteDyn(out)).map_err(io_err)?
                }
                AttachmentSource::Path(p) => stream_file(p, field, out)?,
            },
            Node::Multi {
                boundary, children, ..
            } => {
                for child in children {
                    w(out, format!("--{boundary}\r\n").as_bytes())?;
                    let mut h = Vec::with_capacity(256);
                    child.headers(&mut h);
                    h.extend_from_slice(b"\r\n");
                    w(out, &h)?;
                    child.body(out, false)?;
                    w(out, b"\r\n")?;
                }
                w(out, format!("--{boundary}--\r\n").as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Streams a file attachment as base64, safely against a file swapped or changed after
/// `attach()`: opened non-blocking (a FIFO swapped in cannot hang the submit), refused unless it
/// is still a regular file (a device such as /dev/zero cannot fill the spool), and read up to
/// its length as `fstat` gives it at open; a file that grows or shrinks meanwhile fails the
/// submit (which is rolled back) instead of being spooled torn.
fn stream_file(p: &Path, field: &str, out: &mut dyn Write) -> Result<()> {
    let att = |msg: String| Error::new(ErrorKind::Attachment, msg).with_field(field.to_owned());
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| {
            Error::io(
                ErrorKind::Attachment,
                format_args!("cannot open {}", p.display()),
                e,
            )
            .with_field(field.to_owned())
        })?;
    let meta = f.metadata().map_err(|e| {
        Error::io(
            ErrorKind::Attachment,
            format_args!("cannot stat {}", p.display()),
            e,
        )
        .with_field(field.to_owned())
    })?;
    if !meta.file_type().is_file() {
        return Err(att(format!(
            "{} is no longer a regular file (replaced since it was attached)",
            p.display()
        )));
    }
    let expected = meta.len();
    let read_err = |e: std::io::Error| {
        Error::io(
            ErrorKind::Attachment,
            format_args!("cannot read {}", p.display()),
            e,
        )
        .with_field(field.to_owned())
    };
    let read =
        transfer::base64_stream(&mut (&mut f).take(expected), &mut WriteDyn(out)).map_err(|e| {
            match e {
                Ok(read) => read_err(read),
                Err(write) => io_err(write),
            }
        })?;
    let mut more = [0u8; 1];
    let grew = loop {
        match f.read(&mut more) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        }
    };
    if read != expected || grew {
        return Err(att(format!(
            "{} changed size while it was read ({expected} bytes at open, {})",
            p.display(),
            if grew {
                "more on reading".to_owned()
            } else {
                format!("{read} read")
            }
        )));
    }
    Ok(())
}

struct WriteDyn<'a>(&'a mut dyn Write);
impl Write for WriteDyn<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::io(ErrorKind::Io, "cannot write the message", e)
}

fn w(out: &mut dyn Write, b: &[u8]) -> Result<()> {
    out.write_all(b).map_err(io_err)
}

fn boundary() -> String {
    format!("=_qm_{}", crate::random_hex(12))
}

fn text_node(subtype: &'static str, s: &str) -> Node<'static> {
    let crlf = transfer::normalise_line_breaks(s.as_bytes());
    let encoding = transfer::choose_text_encoding(&crlf);
    let body = match encoding {
        Encoding::SevenBit => crlf,
        _ => transfer::quoted_printable(&crlf),
    };
    Node::Text {
        subtype,
        body,
        encoding,
    }
}

fn mailbox_tokens(list: &[Mailbox]) -> Vec<String> {
    list.iter()
        .map(|m| {
            let addr = m.address().to_string();
            match m.name() {
                Some(n) => {
                    let mut t = phrase(n).join(" ");
                    t.push_str(&format!(" <{addr}>"));
                    t
                }
                None => addr,
            }
        })
        .collect()
}

fn address_field(name: &str, list: &[Mailbox], out: &mut Vec<u8>) {
    if list.is_empty() {
        return;
    }
    // each mailbox is one token; encoded-words inside a display name may fold too
    let mut toks = Vec::new();
    for t in mailbox_tokens(list) {
        toks.push(t);
    }
    // fold between mailboxes; a long phrase of several encoded-words is split on its spaces
    let mut flat: Vec<String> = Vec::new();
    let mut seps: Vec<&str> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        for (j, piece) in t.split(' ').enumerate() {
            seps.push(if i > 0 && j == 0 { ", " } else { " " });
            flat.push(piece.to_owned());
        }
    }
    fold_mixed(name, &flat, &seps, out);
}

/// Like [`fold`] with a separator per token (the first one is ignored).
fn fold_mixed(name: &str, toks: &[String], seps: &[&str], out: &mut Vec<u8>) {
    let mut line = name.len() + 1;
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    for (i, tok) in toks.iter().enumerate() {
        let lead = if i == 0 { " " } else { seps[i] };
        if i > 0 && line + lead.len() + tok.len() > crate::mime::FOLD_AT {
            out.extend_from_slice(&lead.as_bytes()[..lead.len() - 1]);
            out.extend_from_slice(b"\r\n ");
            line = 1;
        } else {
            out.extend_from_slice(lead.as_bytes());
            line += lead.len();
        }
        out.extend_from_slice(tok.as_bytes());
        line += tok.len();
    }
    out.extend_from_slice(b"\r\n");
}

impl Message {
    fn tree(&self) -> Option<Node<'_>> {
        let text = self.text.as_deref().map(|t| text_node("plain", t));
        let html = self.html.as_deref().map(|h| text_node("html", h));
        let body = match (text, html) {
            (Some(t), Some(h)) => Some(Node::Multi {
                subtype: "alternative",
                boundary: boundary(),
                params: vec![],
                children: vec![t, h],
            }),
            (t, h) => t.or(h),
        };
        let body = if self.inline.is_empty() {
            body
        } else {
            let root = body.unwrap_or_else(|| text_node("plain", ""));
            let ty = root.content_type();
            let mut children = vec![root];
            children.extend(self.inline.iter().enumerate().map(|(i, a)| Node::Part {
                att: a,
                inline: true,
                field: format!("inline[{i}]"),
            }));
            Some(Node::Multi {
                subtype: "related",
                boundary: boundary(),
                params: vec![format!("type=\"{ty}\"")],
                children,
            })
        };
        if self.attachments.is_empty() {
            return body;
        }
        let mut children: Vec<Node<'_>> = body.into_iter().collect();
        children.extend(
            self.attachments
                .iter()
                .enumerate()
                .map(|(i, a)| Node::Part {
                    att: a,
                    inline: false,
                    field: format!("attachments[{i}]"),
                }),
        );
        Some(Node::Multi {
            subtype: "mixed",
            boundary: boundary(),
            params: vec![],
            children,
        })
    }

    /// The header section's fields (without MIME headers), each folded and CRLF-terminated.
    fn write_message_headers(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("Date: {}\r\n", self.date).as_bytes());
        address_field("From", std::slice::from_ref(&self.from), out);
        if let Some(s) = &self.sender {
            address_field("Sender", std::slice::from_ref(s), out);
        }
        address_field("Reply-To", &self.reply_to, out);
        if self.to.is_empty() && self.cc.is_empty() {
            out.extend_from_slice(b"To: undisclosed-recipients:;\r\n");
        }
        address_field("To", &self.to, out);
        address_field("Cc", &self.cc, out);
        if let Some(s) = &self.subject {
            write_unstructured("Subject", s, out);
        }
        out.extend_from_slice(format!("Message-ID: {}\r\n", self.message_id).as_bytes());
        if let Some(p) = self.priority {
            let (label, importance) = match p.number() {
                1 => ("Highest", "high"),
                2 => ("High", "high"),
                3 => ("Normal", "normal"),
                4 => ("Low", "low"),
                _ => ("Lowest", "low"),
            };
            out.extend_from_slice(
                format!(
                    "X-Priority: {} ({label})\r\nImportance: {importance}\r\n",
                    p.number()
                )
                .as_bytes(),
            );
        }
        if let Some(r) = &self.read_receipt_to {
            address_field("Disposition-Notification-To", std::slice::from_ref(r), out);
        }
        for (n, v) in &self.headers {
            write_unstructured(n, v, out);
        }
        if let Some(l) = &self.list_unsubscribe {
            l.write(out);
        }
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }

    /// Writes the whole message (RFC 5322 bytes with CRLF line ends) into `out`, streaming
    /// file attachments. Returns the number of bytes written.
    ///
    /// # Errors
    /// [`ErrorKind::Attachment`] naming `attachments[N]` / `inline[N]` when a file cannot be
    /// read; [`ErrorKind::Io`] when `out` fails.
    pub fn render(&self, out: &mut impl Write) -> Result<u64> {
        let mut counter = Counting {
            inner: out,
            count: 0,
        };
        let mut head = Vec::with_capacity(1024);
        self.write_message_headers(&mut head);
        let tree = self.tree().unwrap_or_else(|| text_node("plain", ""));
        tree.headers(&mut head);
        head.extend_from_slice(b"\r\n");
        w(&mut counter, &head)?;
        tree.body(&mut counter, true)?;
        Ok(counter.count)
    }

    /// The rendered message in memory (for tests and small messages; large attachments should
    /// be streamed with [`Message::render`]).
    ///
    /// # Errors
    /// As [`Message::render`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.render(&mut v)?;
        Ok(v)
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
