//! Login names and credential checks for POP3.
//!
//! Login names as Cyrus's pop3d reads them (`popd_canon_user`, `cmd_user`): `user@domain`
//! with virtdomains, `user+folder` with `popsubfolders`, lower-cased with `username_tolower`;
//! plus cyrkit's "recent mode": `recent:alice` logs in as alice and lists only the last 30
//! days' messages (a second device that must not miss mail).
//!
//! The checks themselves are [`crate::server::sasl`]'s (PLAIN, LOGIN, CRAM-MD5, APOP), run
//! against [`LoginNames`], which strips what is not part of the user id before asking the
//! password store.

use std::sync::Arc;

use super::{LoginTarget, Pop3Config};
use crate::server::auth::{AuthError, Authenticator};
use crate::server::sasl::{self, Mechanism, SaslError};

/// Prefix of a login name asking for the recent mode.
pub const RECENT_PREFIX: &str = "recent:";
/// How far back the recent mode reaches.
pub const RECENT_WINDOW_SECS: i64 = 30 * 86_400;
/// Cyrus's `MAX_MAILBOX_BUFFER`: `strlen(userid) + 6 >= 1024` is "Invalid user".
const MAX_MAILBOX_BUFFER: usize = 1024;

/// The server's password store asked with POP3 login names: `recent:alice+Sent` is checked
/// as `alice` (the prefix and the `+folder` name a mailbox, not a user). A name that is no
/// valid login, or no store at all, is a wrong password. [`crate::server::sasl::SaslServer`]
/// and [`sasl::apop_check`] run against this, so they see the names the client sent.
pub struct LoginNames {
    store: Option<Arc<dyn Authenticator>>,
    cfg: Arc<Pop3Config>,
}

impl LoginNames {
    pub fn new(store: Option<Arc<dyn Authenticator>>, cfg: Arc<Pop3Config>) -> LoginNames {
        LoginNames { store, cfg }
    }

    /// The store and the user id a login name checks against.
    fn resolve(&self, name: &str) -> Option<(&dyn Authenticator, String)> {
        let store = self.store.as_deref()?;
        let target = parse_login_name(name.as_bytes(), &self.cfg)?;
        Some((store, target.userid))
    }
}

impl Authenticator for LoginNames {
    fn check_password(&self, name: &str, password: &[u8]) -> Result<bool, AuthError> {
        match self.resolve(name) {
            Some((store, userid)) => store.check_password(&userid, password),
            None => Ok(false),
        }
    }
    fn secret(&self, name: &str) -> Option<Vec<u8>> {
        let (store, userid) = self.resolve(name)?;
        store.secret(&userid)
    }
    fn has_secrets(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.has_secrets())
    }
}

/// Turn a login name into the user and mailbox it names; `None` = `-ERR [AUTH] Invalid user`.
pub fn parse_login_name(raw: &[u8], cfg: &Pop3Config) -> Option<LoginTarget> {
    let raw = std::str::from_utf8(raw).ok()?;
    let (recent, rest) = match raw.strip_prefix(RECENT_PREFIX) {
        Some(r) => (true, r),
        None => (false, raw),
    };
    let mut user = rest.to_string();
    let mut subfolder = None;
    if cfg.popsubfolders {
        if let Some(p) = user.find('+') {
            let tail = &user[p..];
            let n = if cfg.virtdomains {
                tail.find('@').unwrap_or(tail.len())
            } else {
                tail.len()
            };
            let folder = tail.get(1..n).unwrap_or_default().to_string();
            user.replace_range(p..p + n, "");
            subfolder = Some(folder);
        }
    }
    if cfg.username_tolower {
        user.make_ascii_lowercase();
    }
    if !cfg.virtdomains {
        // Without virtdomains an `@` is just a character Cyrus refuses in user ids.
        if user.contains('@') {
            return None;
        }
    }
    let bad_byte = user
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\x7f');
    let dot_in_local = cfg.dot_separator && {
        match (user.find('.'), user.find('@')) {
            (Some(dot), Some(at)) => dot < at,
            (Some(_), None) => true,
            _ => false,
        }
    };
    if user.is_empty()
        || user.starts_with('@')
        || bad_byte
        || dot_in_local
        || user.len() + 6 >= MAX_MAILBOX_BUFFER
    {
        return None;
    }
    Some(LoginTarget {
        userid: user,
        subfolder,
        recent,
    })
}

/// The mechanisms offered: those of the store ([`sasl::mechanisms`]: CRAM-MD5 only with
/// cleartext secrets), without PLAIN and LOGIN unless plaintext is allowed (Cyrus's
/// `allowplaintext: no` outside TLS).
pub fn mechanisms(auth: &dyn Authenticator, plaintext_ok: bool) -> Vec<Mechanism> {
    sasl::mechanisms(auth)
        .into_iter()
        .filter(|m| plaintext_ok || !m.is_plaintext())
        .collect()
}

/// The `sasl_errstring` text Cyrus puts after `-ERR [AUTH] authenticating: ` for a failed
/// exchange (a cancel has its own reply).
pub fn sasl_error_text(e: &SaslError) -> &'static str {
    match e {
        // `mysasl_proxy_policy` refuses a proxy login with SASL_BADAUTH, not SASL_NOAUTHZ.
        SaslError::AuthFailed { .. } | SaslError::Backend(_) | SaslError::NotAuthorized { .. } => {
            AUTH_FAILURE
        }
        SaslError::Cancelled
        | SaslError::BadBase64
        | SaslError::TooLong
        | SaslError::Malformed { .. }
        | SaslError::Finished => BAD_PROTOCOL,
    }
}

/// `sasl_errstring(SASL_NOMECH)`.
pub const NO_MECHANISM: &str = "no mechanism available";
/// `sasl_errstring(SASL_BADAUTH)`.
pub const AUTH_FAILURE: &str = "authentication failure";
/// `sasl_errstring(SASL_BADPROT)`.
pub const BAD_PROTOCOL: &str = "bad protocol / cancel";

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Pop3Config {
        Pop3Config::default()
    }

    #[test]
    fn login_names() {
        let t = parse_login_name(b"Alice", &cfg()).unwrap();
        assert_eq!(t.userid, "alice");
        assert!(!t.recent && t.subfolder.is_none());
        let t = parse_login_name(b"recent:bob", &cfg()).unwrap();
        assert_eq!((t.userid.as_str(), t.recent), ("bob", true));
        // Without popsubfolders `+` stays in the name; without virtdomains `@` is refused.
        assert_eq!(parse_login_name(b"a+b", &cfg()).unwrap().userid, "a+b");
        assert!(parse_login_name(b"a@example.com", &cfg()).is_none());
        assert!(parse_login_name(b"", &cfg()).is_none());
        assert!(parse_login_name(&[b'a'; 1018], &cfg()).is_none());
        assert!(parse_login_name(&[b'a'; 1017], &cfg()).is_some());

        let mut c = cfg();
        c.popsubfolders = true;
        c.virtdomains = true;
        c.dot_separator = true;
        let t = parse_login_name(b"recent:carol+Lists.x@Example.com", &c).unwrap();
        assert_eq!(t.userid, "carol@example.com");
        assert_eq!(t.subfolder.as_deref(), Some("Lists.x"));
        assert!(t.recent);
        assert!(parse_login_name(b"car.ol@example.com", &c).is_none());
        let t = parse_login_name(b"carol+Sent@example.com", &c).unwrap();
        assert_eq!(t.userid, "carol@example.com");
        assert_eq!(t.subfolder.as_deref(), Some("Sent"));
        assert!(parse_login_name(b"a.b", &c).is_none());
        assert_eq!(
            parse_login_name(b"ab@ex.com", &c).unwrap().userid,
            "ab@ex.com"
        );
    }

    /// A store that knows alice (password and cleartext secret `secret`).
    struct Alice;

    impl Authenticator for Alice {
        fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
            Ok(user == "alice" && password == b"secret")
        }
        fn secret(&self, user: &str) -> Option<Vec<u8>> {
            (user == "alice").then(|| b"secret".to_vec())
        }
        fn has_secrets(&self) -> bool {
            true
        }
    }

    #[test]
    fn login_names_strip_prefix_and_folder_before_the_store() {
        let mut c = cfg();
        c.popsubfolders = true;
        let names = LoginNames::new(Some(Arc::new(Alice)), Arc::new(c));
        for name in [
            "alice",
            "Alice",
            "recent:alice",
            "alice+Sent",
            "recent:ALICE+a.b",
        ] {
            assert!(names.check_password(name, b"secret").unwrap(), "{name}");
            assert_eq!(
                names.secret(name).as_deref(),
                Some(&b"secret"[..]),
                "{name}"
            );
        }
        assert!(!names.check_password("alice", b"wrong").unwrap());
        assert!(!names.check_password("bob", b"secret").unwrap());
        // Not a login name at all: a wrong password, not an error.
        assert!(!names.check_password("", b"secret").unwrap());
        assert!(!names.check_password("a\u{1}b", b"secret").unwrap());
        assert_eq!(names.secret("recent:"), None);
        assert!(names.has_secrets());
        // APOP through the wrapper (RFC 1939 §7 digest over this store's secret).
        let chal = b"<1.2@x>";
        let digest = sasl::apop_digest(chal, b"secret");
        assert!(sasl::apop_check(
            &names,
            "recent:alice",
            chal,
            digest.as_bytes()
        ));
        assert!(!sasl::apop_check(&names, "bob", chal, digest.as_bytes()));

        let none = LoginNames::new(None, Arc::new(cfg()));
        assert!(!none.check_password("alice", b"secret").unwrap());
        assert!(!none.has_secrets());
        // Without a store that has secrets, no CRAM-MD5; PLAIN and LOGIN only with plaintext.
        assert_eq!(
            mechanisms(&none, true),
            [Mechanism::Plain, Mechanism::Login]
        );
        assert!(mechanisms(&none, false).is_empty());
        assert_eq!(mechanisms(&names, false), [Mechanism::CramMd5]);
    }
}
