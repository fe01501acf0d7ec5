//! Password checking for the POP3 and LMTP sessions: one [`Authenticator`] trait with two
//! back ends a Cyrus site already has — the saslauthd socket ([`Saslauthd`]) and a file of
//! hashed passwords ([`PasswdFile`]) — and [`from_args`], which picks one from the flags and
//! imapd.conf.
//!
//! This module checks secrets; it never says whether a user exists (an unknown user and a
//! wrong password are the same `Ok(false)`), and it does not sleep after a failure: the
//! session applies [`failed_login_pause`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::serve::ServeArgs;
use crate::spool::config::Config;

/// Why a password could not be checked (as opposed to: it was checked and is wrong).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("saslauthd at {path}: {source}")]
    Saslauthd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saslauthd at {path} sent a malformed reply: {detail}")]
    SaslauthdReply { path: PathBuf, detail: String },
    #[error("password file {path}: {source}")]
    PasswdIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("password file {path} line {line}: {detail}")]
    PasswdSyntax {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{0}")]
    Config(String),
}

/// A password store the sessions check logins against.
pub trait Authenticator: Send + Sync {
    /// Check a plaintext password. Ok(false) for a wrong password AND for an unknown user
    /// (no hint which).
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError>;
    /// The cleartext shared secret when the store has one (APOP, CRAM-MD5); None otherwise.
    fn secret(&self, user: &str) -> Option<Vec<u8>>;
}

/// The back end the flags and imapd.conf ask for; `None` when none is configured.
pub fn from_args(
    _args: &ServeArgs,
    _config: &Config,
) -> Result<Option<Arc<dyn Authenticator>>, AuthError> {
    Err(AuthError::Config("authentication is not built yet".into()))
}

/// imapd.conf `failedloginpause` (default 3 s): how long a session waits before it answers a
/// failed login.
pub fn failed_login_pause(_config: &Config) -> Duration {
    Duration::from_secs(3)
}
