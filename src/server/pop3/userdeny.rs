//! Cyrus's per-user service access list, `user_deny.db` (imap/userdeny_db.c, managed by
//! `cyr_deny`): key = user id, value = `version TAB services [TAB message]`, `services` a
//! comma-separated wildmat list tried in order (first match wins, `!` negates).
//! A denied user gets `-ERR [SYS/TEMP] <message>` (default "Access to this service has been
//! blocked") and the connection is closed.
//!
//! Database: `userdeny_db` (default `flat`) at `userdeny_db_path` (default
//! `{configdirectory}/user_deny.db`). A missing or unreadable database denies no one, as
//! in Cyrus.

use std::path::PathBuf;
use std::time::Duration;

use crate::spool::config::{Config, DbBackend};
use crate::spool::db;

/// `USERDENY_VERSION`.
const USERDENY_VERSION: u64 = 2;
/// `default_message`.
pub const DEFAULT_MESSAGE: &str = "Access to this service has been blocked";

/// Cyrus's `wildmat`: `*`, `?`, `[set]` (with ranges and `^`/`!` negation) and `\` escapes.
pub fn wildmat(text: &[u8], pat: &[u8]) -> bool {
    fn m(t: &[u8], p: &[u8], depth: u32) -> bool {
        if depth > 64 {
            return false;
        }
        let (mut ti, mut pi) = (0usize, 0usize);
        while let Some(&pc) = p.get(pi) {
            match pc {
                b'*' => {
                    while p.get(pi) == Some(&b'*') {
                        pi += 1;
                    }
                    let rest = p.get(pi..).unwrap_or(&[]);
                    if rest.is_empty() {
                        return true;
                    }
                    return (ti..=t.len()).any(|k| m(t.get(k..).unwrap_or(&[]), rest, depth + 1));
                }
                b'?' => {
                    if ti >= t.len() {
                        return false;
                    }
                }
                b'[' => {
                    let Some(&c) = t.get(ti) else { return false };
                    let mut j = pi + 1;
                    let neg = matches!(p.get(j), Some(b'^') | Some(b'!'));
                    if neg {
                        j += 1;
                    }
                    let mut matched = false;
                    let mut first = true;
                    loop {
                        let Some(&s) = p.get(j) else { return false };
                        if s == b']' && !first {
                            break;
                        }
                        first = false;
                        if p.get(j + 1) == Some(&b'-') && p.get(j + 2).is_some_and(|&e| e != b']') {
                            let e = p.get(j + 2).copied().unwrap_or(s);
                            matched |= s <= c && c <= e;
                            j += 3;
                        } else {
                            matched |= s == c;
                            j += 1;
                        }
                    }
                    if matched == neg {
                        return false;
                    }
                    pi = j;
                }
                b'\\' => {
                    pi += 1;
                    let Some(&lit) = p.get(pi) else { return false };
                    if t.get(ti) != Some(&lit) {
                        return false;
                    }
                }
                lit => {
                    if t.get(ti) != Some(&lit) {
                        return false;
                    }
                }
            }
            pi += 1;
            ti += 1;
        }
        ti == t.len()
    }
    m(text, pat, 0)
}

/// `userdeny` on one stored value: `Some(message)` when `service` is denied.
/// A malformed value denies nothing (Cyrus logs `DENYDB_ERROR` and allows).
pub fn denied(value: &[u8], service: &str) -> Option<String> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let version: u64 = std::str::from_utf8(value.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    if !(1..=USERDENY_VERSION).contains(&version) || value.get(digits) != Some(&b'\t') {
        return None;
    }
    let rest = value.get(digits + 1..)?;
    let (wild, msg) = match rest.iter().position(|&b| b == b'\t') {
        Some(i) if version == USERDENY_VERSION => (
            rest.get(..i)?,
            String::from_utf8_lossy(rest.get(i + 1..)?).into_owned(),
        ),
        _ => (rest, DEFAULT_MESSAGE.to_string()),
    };
    for pat in wild.split(|&b| b == b',').filter(|p| !p.is_empty()) {
        let (not, pat) = match pat.strip_prefix(b"!") {
            Some(p) => (true, p),
            None => (false, pat),
        };
        if wildmat(service.as_bytes(), pat) {
            return (!not).then_some(msg);
        }
    }
    None
}

/// The configured database.
#[derive(Debug, Clone)]
pub struct UserDeny {
    pub path: PathBuf,
    pub backend: DbBackend,
}

impl UserDeny {
    pub fn from_config(config: &Config) -> UserDeny {
        let backend = match config.get("userdeny_db").unwrap_or("flat") {
            "skiplist" => DbBackend::Skiplist,
            "twoskip" => DbBackend::Twoskip,
            "zeroskip" => DbBackend::Zeroskip,
            "sql" => DbBackend::Sql,
            _ => DbBackend::Flat,
        };
        let path = config
            .get_path("userdeny_db_path")
            .unwrap_or_else(|| config.config_directory().join("user_deny.db"));
        UserDeny { path, backend }
    }

    /// `Some(message)` when `userid` may not use `service`. Read fresh on every call: the
    /// admin changes the database while the server runs.
    pub fn check(&self, userid: &str, service: &str) -> Option<String> {
        let file = match db::read_db(&self.path, self.backend, Duration::from_secs(5)) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("DENYDB_ERROR: {e}");
                return None;
            }
        };
        let (_, value) = file.pairs.iter().find(|(k, _)| k == userid.as_bytes())?;
        denied(value, service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildmat_patterns() {
        assert!(wildmat(b"pop3", b"pop3"));
        assert!(wildmat(b"pop3", b"*"));
        assert!(wildmat(b"pop3", b"pop*"));
        assert!(wildmat(b"pop3", b"p?p3"));
        assert!(wildmat(b"pop3", b"pop[0-9]"));
        assert!(!wildmat(b"pop3", b"pop[^0-9]"));
        assert!(!wildmat(b"imap", b"pop*"));
        assert!(!wildmat(b"pop3s", b"pop3"));
        assert!(wildmat(b"a*b", b"a\\*b"));
        assert!(!wildmat(b"x", b"["));
    }

    #[test]
    fn deny_entries_as_cyr_deny_writes_them() {
        assert_eq!(denied(b"2\t*\tgo away", "pop3").as_deref(), Some("go away"));
        assert_eq!(
            denied(b"2\tpop3,imap", "pop3").as_deref(),
            Some(DEFAULT_MESSAGE)
        );
        assert_eq!(denied(b"1\tpop3\tnot a message", "imap"), None);
        assert_eq!(denied(b"2\t!pop3,*\tx", "pop3"), None);
        assert_eq!(denied(b"2\t!pop3,*\tx", "imap").as_deref(), Some("x"));
        assert_eq!(denied(b"3\t*\tx", "pop3"), None);
        assert_eq!(denied(b"x\t*", "pop3"), None);
        assert_eq!(denied(b"", "pop3"), None);
    }
}
