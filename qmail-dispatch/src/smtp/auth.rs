//! SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, and XOAUTH2 (a bearer token, the SASL
//! profile Google and Microsoft document for SMTP).
//!
//! The XOAUTH2 token is read from `token_file` at each AUTH, so the operator's token
//! refresher (which rewrites the file before the token expires) is honoured without a
//! restart. Secrets are never logged: [`Credentials`] has no `Debug` output of them, and a
//! failure names the mechanism and the relay's reply, never what was sent.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::command::Command;
use super::session::{Connection, Phase, SmtpError};
use crate::config::RelayConfig;

/// The secret half of the credentials.
enum Secret {
    /// A password (PLAIN or LOGIN).
    Password(String),
    /// A file holding an OAuth 2.0 bearer token (first line), for XOAUTH2.
    TokenFile(PathBuf),
}

/// A user name and its secret.
pub struct Credentials {
    username: String,
    secret: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// From a relay's `username` with `token_file` (XOAUTH2) or `password`.
    pub fn from_config(cfg: &RelayConfig) -> Option<Credentials> {
        let username = cfg.username.clone()?;
        let secret = match &cfg.token_file {
            Some(f) => Secret::TokenFile(f.clone()),
            None => Secret::Password(cfg.password.clone().unwrap_or_default()),
        };
        Some(Credentials { username, secret })
    }
}

/// The PLAIN initial response: base64 of `\0user\0password` (RFC 4616 §2, no authzid).
fn plain(user: &str, pass: &str) -> String {
    B64.encode(format!("\0{user}\0{pass}"))
}

/// The XOAUTH2 initial response: base64 of `user=U^Aauth=Bearer T^A^A`.
fn xoauth2(user: &str, token: &str) -> String {
    B64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn read_token(path: &std::path::Path) -> Result<String, SmtpError> {
    let s = std::fs::read_to_string(path).map_err(|e| {
        SmtpError::Policy(format!(
            "AUTH failed: cannot read token_file {}: {e}",
            path.display()
        ))
    })?;
    let t = s.lines().next().unwrap_or("").trim().to_owned();
    if t.is_empty() || t.bytes().any(|b| b.is_ascii_control()) {
        return Err(SmtpError::Policy(format!(
            "AUTH failed: token_file {} holds no usable token on its first line",
            path.display()
        )));
    }
    Ok(t)
}

fn expect(
    conn: &mut Connection,
    cmd: Command<'_>,
    code: u16,
    t: Duration,
) -> Result<(), SmtpError> {
    let r = conn.command(cmd, Phase::Auth, t)?;
    if r.code == code {
        Ok(())
    } else {
        Err(SmtpError::Rejected {
            phase: Phase::Auth,
            response: r,
        })
    }
}

/// Authenticates with the first usable mechanism the relay offers: XOAUTH2 when a
/// `token_file` is set, else PLAIN, else LOGIN.
///
/// # Errors
/// No common mechanism, an unreadable token, or the relay's refusal (`AUTH failed: 535 …`).
pub(crate) fn authenticate(
    conn: &mut Connection,
    creds: &Credentials,
    offered: &[String],
    t: Duration,
) -> Result<(), SmtpError> {
    let has = |m: &str| offered.iter().any(|o| o == m);
    let user = creds.username.as_str();
    match &creds.secret {
        Secret::TokenFile(path) => {
            if !has("XOAUTH2") {
                return Err(SmtpError::Policy(format!(
                    "AUTH failed: a token_file is set but the relay offers no XOAUTH2 (offered: {})",
                    offered.join(" ")
                )));
            }
            let token = read_token(path)?;
            let ir = xoauth2(user, &token);
            let r = conn.command(
                Command::Auth {
                    mechanism: "XOAUTH2",
                    initial: Some(&ir),
                },
                Phase::Auth,
                t,
            )?;
            if r.code == 334 {
                // an error challenge (JSON, base64): answer empty to get the final reply
                let r2 = conn.command(Command::AuthLine(""), Phase::Auth, t)?;
                return Err(SmtpError::Rejected {
                    phase: Phase::Auth,
                    response: r2,
                });
            }
            if r.code != 235 {
                return Err(SmtpError::Rejected {
                    phase: Phase::Auth,
                    response: r,
                });
            }
            Ok(())
        }
        Secret::Password(pass) if has("PLAIN") => expect(
            conn,
            Command::Auth {
                mechanism: "PLAIN",
                initial: Some(&plain(user, pass)),
            },
            235,
            t,
        ),
        Secret::Password(pass) if has("LOGIN") => {
            expect(
                conn,
                Command::Auth {
                    mechanism: "LOGIN",
                    initial: None,
                },
                334,
                t,
            )?;
            expect(conn, Command::AuthLine(&B64.encode(user)), 334, t)?;
            expect(conn, Command::AuthLine(&B64.encode(pass)), 235, t)
        }
        Secret::Password(_) => Err(SmtpError::Policy(format!(
            "AUTH failed: the relay offers neither PLAIN nor LOGIN (offered: {})",
            if offered.is_empty() {
                "no AUTH".to_owned()
            } else {
                offered.join(" ")
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(plain("u", "p"), "AHUAcA==");
        assert_eq!(
            xoauth2(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
            ),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }
}
