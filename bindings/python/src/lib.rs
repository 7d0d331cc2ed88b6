/*!
`qmail._qmail`: the native module behind the `qmail` Python package.

# Brief overview
The Python package (`bindings/python/python/qmail/`) re-exports everything listed in the
`#[pymodule]` below; nothing else is visible from Python. The binding converts types and errors
and nothing more: every rule (address syntax, header checks, MIME, the spool format, Bcc
stripping) lives in `qmail-core`.

- [`message::Message`]: `qmail.Message`, a wrapper of [`qmail_core::MessageBuilder`] whose
  setters report the field at fault as soon as the constructor (or `attach`) sees it.
- [`spool::Spool`]: `qmail.Spool`, one or more spool directories ([`qmail_core::Initiator`]).
- [`spool::submit_message`]: spools bytes or an `email.message.Message` through
  [`qmail_core::RawMessage`].
- [`error`]: the exception classes, one per [`qmail_core::ErrorKind`].

Rendering and writing run with the interpreter detached (`Python::detach`), so other Python
threads go on while a message is written and fsynced.
*/
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod message;
mod spool;
mod status;

use pyo3::prelude::*;

/// The native part of qmail. Import `qmail`, not this module.
#[pymodule]
mod _qmail {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::message::Message;
    #[pymodule_export]
    use crate::spool::{_read_spool_file, Spool, parse_mailbox, set_default_spool, submit_message};
    #[pymodule_export]
    use crate::status::MessageStatus;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", super::pep440_version(qmail_core::VERSION))?;
        crate::error::register(m)
    }
}

/// Cargo's semver as PEP 440: `1.2.3-alpha.1` becomes `1.2.3a1`, `-beta.N` `bN`, `-rc.N` `rcN`.
fn pep440_version(v: &str) -> String {
    match v.split_once('-') {
        None => v.to_owned(),
        Some((base, pre)) => {
            let pre = pre
                .replace("alpha", "a")
                .replace("beta", "b")
                .replace('.', "");
            format!("{base}{pre}")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pep440() {
        assert_eq!(super::pep440_version("0.1.0"), "0.1.0");
        assert_eq!(super::pep440_version("1.0.0-alpha.1"), "1.0.0a1");
        assert_eq!(super::pep440_version("1.0.0-rc.2"), "1.0.0rc2");
    }
}
