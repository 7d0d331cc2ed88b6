//! The dispatcher's use of the signer: the `prefix` of one attempt's SMTP transaction.

use std::io::{self, Read};

use qmail_core::spool::now_secs;

use super::{Outcome, SignError};
use crate::dispatcher::Shared;

impl Shared {
    /// The `DKIM-Signature` fields to send before the message (empty when unsigned), computed
    /// now from the claimed message (`open` streams it; `small`: the message already in memory). An unsigned message
    /// is counted in `dkim_unsigned` when some key is configured.
    ///
    /// # Errors
    /// The spool file could not be read, or the key operation failed: defer the attempt.
    // the reader borrows what `open` borrows: one lifetime, spelt out
    #[allow(clippy::needless_lifetimes)]
    pub(crate) fn dkim_prefix<'a>(
        &self,
        message_id: &str,
        open: &'a dyn Fn() -> io::Result<Box<dyn Read + 'a>>,
        body_len: u64,
        small: Option<&[u8]>,
    ) -> Result<Vec<u8>, SignError> {
        if self.dkim.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_secs().max(0) as u64;
        let outcome = match small {
            Some(b) => self.dkim.sign(b, now)?,
            None => {
                let r = open().map_err(SignError::Io)?;
                self.dkim.sign(r.take(body_len), now)?
            }
        };
        match outcome {
            Outcome::Signed { fields, signatures } => {
                for s in &signatures {
                    tracing::debug!(message_id, domain = %s.domain, selector = %s.selector,
                        algorithm = %s.algorithm, "DKIM-signed");
                }
                Ok(fields)
            }
            Outcome::Unsigned(why) => {
                self.metrics.add(&self.metrics.dkim_unsigned, 1);
                if matches!(why, super::Unsigned::NoKey { .. }) {
                    tracing::debug!(message_id, reason = %why, "sent without a DKIM signature");
                } else {
                    tracing::warn!(message_id, reason = %why, "sent without a DKIM signature");
                }
                Ok(Vec::new())
            }
        }
    }
}
