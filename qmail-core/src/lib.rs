/*!
qmail's core: everything an initiator needs to turn a message into a durable spool file, and
the spool format a dispatcher reads back.

# Brief overview
- [`Message`] / [`MessageBuilder`]: the message model. Building validates every field
  (addresses per RFC 5322 §3.4 / RFC 5321 §4.1.2, headers per RFC 5322 §2.2) and fixes Date and
  Message-ID, so a built message always renders.
- [`Message::render`]: RFC 5322 bytes with CRLF line ends, MIME structure per RFC 2046,
  encoded-words per RFC 2047, file names per RFC 2231; file attachments are streamed.
- [`Spool`]: a directory of queue states; [`Spool::submit`] writes a message durably and
  atomically and returns its [`QueueId`].
- [`Initiator`]: several spools with round-robin and fail-over; [`submit`] uses the process
  default ([`set_default_spool`] or `QMAIL_SPOOL`).
- [`RawMessage`]: spools a message composed by another library.

The dispatcher engine (claims, relays, SMTP) is the `qmail-dispatch` crate; this crate links no
SMTP, TLS or filesystem-notification code, so the C library and the bindings stay small.

```no_run
use qmail_core::{Message, Spool};
let spool = Spool::open("/var/spool/qmail")?;
let msg = Message::builder()
    .from("Shop <noreply@example.com>")
    .to("customer@example.org")
    .subject("Your order")
    .text("Thanks!")
    .build()?;
let id = spool.submit(&msg)?; // durable once this returns
println!("queued as {id}");
# Ok::<(), qmail_core::Error>(())
```
*/
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub mod envelope;
pub mod error;
pub mod initiator;
pub mod message;
pub mod mime;
pub mod raw;
mod render;
pub mod spool;
pub mod unsubscribe;

pub use address::{EmailAddress, Mailbox, ReversePath};
pub use envelope::Envelope;
pub use error::{Error, ErrorKind, Result};
pub use initiator::{
    Initiator, Target, check_spool_path, default_initiator, route, set_default_spool,
    set_default_spool_with, submit,
};
pub use message::{AddressInput, Attachment, AttachmentSource, Message, MessageBuilder, Priority};
pub use raw::{RawMessage, RawStream};
pub use spool::{
    MessageId, PendingSubmit, QueueId, QueueState, Spool, SpoolFile, SpoolHeader, SpoolOptions,
};
pub use unsubscribe::ListUnsubscribe;

/// `n` random bytes from the OS, as lowercase hex (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // no OS randomness: fall back to time and a counter (still unique per process)
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The library version (Cargo package version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
