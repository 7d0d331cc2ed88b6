//! Delivery status notifications (RFC 3464): when recipients fail for good and `dsn.enabled`
//! is set, a `multipart/report; report-type=delivery-status` message is submitted into the
//! same spool, from `<>` (so it can never cause another DSN) to the envelope sender. A
//! message whose sender is `<>` never gets one.

use std::fmt::Write;
use std::io::Read;
use std::path::Path;

use qmail_core::RawMessage;
use qmail_core::spool::{Spool, SpoolFile, SpoolHeader};

use super::config::DispatchConfig;
use super::state::FailedRcpt;

/// Builds the DSN's bytes (CRLF, 7-bit: the original's headers only, as text/rfc822-headers).
pub fn build(file: &SpoolFile, failed: &[FailedRcpt], cfg: &DispatchConfig) -> Vec<u8> {
    match file.body_reader() {
        Ok(mut r) => build_for(&file.header, &mut r, failed, cfg),
        Err(_) => build_for(&file.header, &mut std::io::empty(), failed, cfg),
    }
}

/// As [`build`] for a message of any queue: its spool header and a stream over its bytes
/// (only the header section is read, at most 64 KiB of it).
pub fn build_for(
    header: &SpoolHeader,
    body: &mut dyn Read,
    failed: &[FailedRcpt],
    cfg: &DispatchConfig,
) -> Vec<u8> {
    let host = cfg.ehlo();
    let from = cfg
        .dsn
        .from
        .clone()
        .unwrap_or_else(|| format!("MAILER-DAEMON@{host}"));
    let to = &header.envelope.mail_from;
    let boundary = format!("qmail-dsn-{}", qmail_core::random_hex(8));
    let date = qmail_core::message::format_date(qmail_core::spool::now_secs());
    let mut s = String::new();
    let _ = write!(
        s,
        "From: Mail Delivery System <{from}>\r\nTo: <{to}>\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: {date}\r\n\
         Message-ID: {mid}\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n\
         This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Your message {orig} could not be delivered to these recipients:\r\n\r\n",
        mid = qmail_core::message::generate_message_id(host),
        orig = header.message_id,
    );
    for f in failed {
        let _ = write!(s, "<{}>: {}\r\n", f.rcpt, ascii_line(&f.reply.to_string()));
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {host}\r\n"
    );
    for f in failed {
        let status = match f.reply.code {
            Some(c) if (500..600).contains(&c) => "5.0.0",
            _ => "4.4.7",
        };
        let _ = write!(
            s,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {status}\r\n",
            f.rcpt
        );
        if let Some(c) = f.reply.code {
            let _ = write!(
                s,
                "Diagnostic-Code: smtp; {c} {}\r\n",
                ascii_line(&f.reply.text)
            );
        }
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut headers = Vec::new();
    {
        use std::io::BufRead;
        let mut br = std::io::BufReader::new(body);
        let mut line = Vec::new();
        while br.read_until(b'\n', &mut line).unwrap_or(0) > 0
            && line != b"\r\n"
            && headers.len() < 64 * 1024
        {
            headers.extend(line.iter().map(|&b| if b < 0x80 { b } else { b'?' }));
            line.clear();
        }
    }
    let mut out = s.into_bytes();
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn ascii_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .take(900)
        .collect()
}

/// Submits a DSN for `failed` into `spool` (logged, never fatal).
pub fn submit(spool: &Path, file: &SpoolFile, failed: &[FailedRcpt], cfg: &DispatchConfig) {
    let sender = &file.header.envelope.mail_from;
    if sender.is_empty() || failed.is_empty() {
        return;
    }
    let bytes = build(file, failed, cfg);
    let result = RawMessage::parse(&bytes, Some("<>"), Some(std::slice::from_ref(sender)))
        .and_then(|m| Spool::open(spool)?.submit_raw(&m));
    match result {
        Ok(id) => tracing::info!(dsn = %id, to = %sender, "delivery status notification queued"),
        Err(e) => tracing::error!(error = %e, "cannot queue a delivery status notification"),
    }
}
