//! MIME: encoded-words (RFC 2047), parameters (RFC 2231), transfer encodings (RFC 2045) and
//! header folding (RFC 5322 §2.2.3), used by the renderer.
//!
//! Lines are limited to 78 characters where we can fold and never exceed 998 octets
//! (RFC 5322 §2.1.1); every line ends in CRLF.

pub mod encoded_word;
pub mod header;
pub mod rfc2231;
pub mod transfer;

/// RFC 5322 §2.1.1: hard limit of a line, in octets, excluding CRLF.
pub const MAX_LINE: usize = 998;
/// RFC 5322 §2.1.1: recommended limit of a line, in characters, excluding CRLF.
pub const FOLD_AT: usize = 78;
