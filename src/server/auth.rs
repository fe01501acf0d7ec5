//! Password checking for the POP3 and LMTP sessions: one [`Authenticator`] trait with two
//! back ends a Cyrus site already has — the saslauthd socket ([`Saslauthd`]) and a file of
//! hashed passwords ([`PasswdFile`]) — and [`from_args`], which picks one from the flags and
//! imapd.conf.
//!
//! This module checks secrets; it never says whether a user exists (an unknown user and a
//! wrong password are the same `Ok(false)`, and cost the same time in the password file),
//! and it does not sleep after a failure: the session applies [`failed_login_pause`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
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
    /// Whether [`Authenticator::secret`] can ever answer, i.e. whether APOP and CRAM-MD5
    /// are worth offering.
    fn has_secrets(&self) -> bool {
        false
    }
}

/// Compare two byte strings in time that depends only on their lengths, not on where they
/// differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------------------
// saslauthd
// ---------------------------------------------------------------------------------------

/// Debian's saslauthd socket (`/run/saslauthd/mux`); Cyrus's own default is libsasl's
/// `PATH_SASLAUTHD_RUNDIR "/mux"`, which Debian builds as this path.
pub const SASLAUTHD_DEFAULT_PATH: &str = "/run/saslauthd/mux";

/// saslauthd refuses any field longer than this (`MAX_REQ_LEN` in saslauthd-main.h) with
/// an empty `NO`.
const SASLAUTHD_MAX_FIELD: usize = 256;

/// Longest reply read; libsasl's `saslauthd_verify_password` keeps 1023 bytes.
const SASLAUTHD_MAX_REPLY: usize = 1024;

/// How long one question to saslauthd may take (a PAM back end may itself wait seconds
/// after a wrong password; libsasl has no timeout at all).
pub const SASLAUTHD_TIMEOUT: Duration = Duration::from_secs(30);

/// The saslauthd socket protocol, as libsasl2's `saslauthd_verify_password`
/// (lib/checkpw.c) speaks it: one connection per question; four counted strings (a 16-bit
/// big-endian length, then the bytes) — login, password, service, realm; one counted
/// string back that starts `OK` or `NO`.
pub struct Saslauthd {
    path: PathBuf,
    service: String,
    realm: String,
    timeout: Duration,
}

impl Saslauthd {
    /// `service` is the SASL service name Cyrus passes (`pop` for pop3d, `lmtp` for lmtpd;
    /// a PAM back end picks `/etc/pam.d/<service>` by it); `realm` the default realm
    /// (usually empty).
    pub fn new(socket_path: impl Into<PathBuf>, service: &str, realm: &str) -> Saslauthd {
        Saslauthd {
            path: socket_path.into(),
            service: service.to_string(),
            realm: realm.to_string(),
            timeout: SASLAUTHD_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Saslauthd {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, source: std::io::Error) -> AuthError {
        AuthError::Saslauthd {
            path: self.path.clone(),
            source,
        }
    }

    fn ask(&self, request: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut s = UnixStream::connect(&self.path).map_err(|e| self.io_err(e))?;
        s.set_read_timeout(Some(self.timeout))
            .and_then(|_| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.io_err(e))?;
        s.write_all(request).map_err(|e| self.io_err(e))?;
        let mut count = [0u8; 2];
        s.read_exact(&mut count).map_err(|e| self.io_err(e))?;
        let count = usize::from(u16::from_be_bytes(count));
        if count < 2 {
            return Err(AuthError::SaslauthdReply {
                path: self.path.clone(),
                detail: format!("reply of {count} bytes (want at least OK or NO)"),
            });
        }
        let mut reply = vec![0u8; count.min(SASLAUTHD_MAX_REPLY)];
        s.read_exact(&mut reply).map_err(|e| self.io_err(e))?;
        Ok(reply)
    }
}

/// The request bytes: `user@realm` is split at the last `@` as libsasl does; `None` when a
/// field cannot be sent (NUL inside, which C strings cannot carry, or over saslauthd's
/// limit, which it answers with `NO` anyway).
fn saslauthd_request(
    user: &str,
    password: &[u8],
    service: &str,
    default_realm: &str,
) -> Option<Vec<u8>> {
    let (login, realm) = match user.rfind('@') {
        Some(at) => (&user[..at], &user[at + 1..]),
        None => (user, default_realm),
    };
    let mut out = Vec::new();
    for field in [
        login.as_bytes(),
        password,
        service.as_bytes(),
        realm.as_bytes(),
    ] {
        if field.len() > SASLAUTHD_MAX_FIELD || field.contains(&0) {
            return None;
        }
        let len = u16::try_from(field.len()).ok()?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    Some(out)
}

impl Authenticator for Saslauthd {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
        // saslauthd answers an empty login or password with NO; so do we, without asking.
        if user.is_empty() || password.is_empty() {
            return Ok(false);
        }
        let Some(request) = saslauthd_request(user, password, &self.service, &self.realm) else {
            return Ok(false);
        };
        let reply = self.ask(&request)?;
        Ok(reply.starts_with(b"OK"))
    }

    fn secret(&self, _user: &str) -> Option<Vec<u8>> {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Password file
// ---------------------------------------------------------------------------------------

/// A stored password, parsed enough at load time that a bad line is reported then.
#[derive(Debug, Clone)]
enum Hash {
    /// `$6$[rounds=N$]salt$hash` (SHA512-CRYPT) or `$5$...` (SHA256-CRYPT).
    ShaCrypt {
        sha512: bool,
        rounds: Option<usize>,
        salt: String,
        hash: String,
    },
    /// `$2a$`, `$2b$`, `$2x$`, `$2y$` (bcrypt).
    Bcrypt(String),
    /// `$argon2id$v=19$m=...,t=...,p=...$salt$hash` (PHC string; also argon2i, argon2d).
    Argon2(String),
    /// `{PLAIN}secret`: usable for APOP and CRAM-MD5.
    Plain(Vec<u8>),
    /// `!...` or `*...`: a locked account, as in /etc/shadow.
    Locked,
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if let Some(secret) = text.strip_prefix("{PLAIN}") {
            return Ok(Hash::Plain(secret.as_bytes().to_vec()));
        }
        if text.starts_with('!') || text.starts_with('*') {
            return Ok(Hash::Locked);
        }
        // Dovecot writes the scheme before the crypt string: {SHA512-CRYPT}$6$...
        let text = match text.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((_, rest)) if rest.starts_with('$') => rest,
            _ => text,
        };
        // A Dovecot passwd-file has more fields after the hash (uid:gid:...): crypt strings
        // never hold a colon.
        let text = text.split(':').next().unwrap_or(text);
        if text.starts_with("$6$") || text.starts_with("$5$") {
            return parse_sha_crypt(text);
        }
        if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            text.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("bad bcrypt hash: {e}"))?;
            return Ok(Hash::Bcrypt(text.to_string()));
        }
        if text.starts_with("$argon2") {
            let parsed =
                argon2::PasswordHash::new(text).map_err(|e| format!("bad argon2 hash: {e}"))?;
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err("argon2 hash without salt or hash".into());
            }
            return Ok(Hash::Argon2(text.to_string()));
        }
        Err(
            "unknown password scheme (want $6$ SHA512-CRYPT, $2b$ bcrypt, $argon2id$ or {PLAIN})"
                .into(),
        )
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::ShaCrypt {
                sha512,
                rounds,
                salt,
                hash,
            } => {
                let computed = if *sha512 {
                    sha_crypt::Sha512Params::new(rounds.unwrap_or(sha_crypt::ROUNDS_DEFAULT))
                        .ok()
                        .and_then(|p| {
                            sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &p).ok()
                        })
                } else {
                    sha_crypt::Sha256Params::new(rounds.unwrap_or(sha_crypt::ROUNDS_DEFAULT))
                        .ok()
                        .and_then(|p| {
                            sha_crypt::sha256_crypt_b64(password, salt.as_bytes(), &p).ok()
                        })
                };
                computed.is_some_and(|c| ct_eq(c.as_bytes(), hash.as_bytes()))
            }
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok()
                })
            }
            Hash::Plain(secret) => ct_eq(secret, password),
            Hash::Locked => false,
        }
    }
}

/// `$6$[rounds=N$]salt$hash`, with glibc's rules: rounds clamped to 1000..=999999999, the
/// salt cut to 16 characters.
fn parse_sha_crypt(text: &str) -> Result<Hash, String> {
    let sha512 = text.starts_with("$6$");
    let mut parts = text.get(3..).unwrap_or("").split('$');
    let mut first = parts.next().unwrap_or("");
    let mut rounds = None;
    if let Some(n) = first.strip_prefix("rounds=") {
        let n: usize = n.parse().map_err(|_| format!("bad rounds= value {n:?}"))?;
        rounds = Some(n.clamp(sha_crypt::ROUNDS_MIN, sha_crypt::ROUNDS_MAX));
        first = parts.next().unwrap_or("");
    }
    let salt: String = first.chars().take(16).collect();
    let hash = parts.next().ok_or("no hash after the salt")?;
    if parts.next().is_some() {
        return Err("too many $-separated fields".into());
    }
    let want = if sha512 { 86 } else { 43 };
    if hash.len() != want {
        return Err(format!("hash of {} characters (want {want})", hash.len()));
    }
    Ok(Hash::ShaCrypt {
        sha512,
        rounds,
        salt,
        hash: hash.to_string(),
    })
}

/// The parsed file and what it was read from.
struct Table {
    users: HashMap<String, Hash>,
    /// Verified against when the user is unknown, so an unknown user costs what a known one
    /// does: the first hashed entry of the file.
    dummy: Option<Hash>,
    /// (mtime seconds, mtime nanoseconds, size, inode) when read.
    stamp: (i64, i64, u64, u64),
}

/// A file of `user:hash` lines (`#` comments and blank lines ignored), re-read when it
/// changes.
pub struct PasswdFile {
    path: PathBuf,
    table: RwLock<Table>,
}

fn stamp_of(m: &std::fs::Metadata) -> (i64, i64, u64, u64) {
    (m.mtime(), m.mtime_nsec(), m.size(), m.ino())
}

/// Parse the text of a password file.
fn parse_passwd(
    text: &[u8],
    path: &Path,
) -> Result<(HashMap<String, Hash>, Option<Hash>), AuthError> {
    let mut users = HashMap::new();
    let mut dummy = None;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let syntax = |detail: String| AuthError::PasswdSyntax {
            path: path.to_path_buf(),
            line,
            detail,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| syntax("not UTF-8".into()))?;
        if text.trim().is_empty() || text.trim_start().starts_with('#') {
            continue;
        }
        let (user, hash) = text
            .split_once(':')
            .ok_or_else(|| syntax("want user:hash".into()))?;
        if user.is_empty() {
            return Err(syntax("empty user name".into()));
        }
        let hash = Hash::parse(hash).map_err(syntax)?;
        if dummy.is_none() && !matches!(hash, Hash::Plain(_) | Hash::Locked) {
            dummy = Some(hash.clone());
        }
        if users.insert(user.to_string(), hash).is_some() {
            return Err(syntax(format!("user {user:?} listed twice")));
        }
    }
    Ok((users, dummy))
}

impl PasswdFile {
    pub fn load(path: impl Into<PathBuf>) -> Result<PasswdFile, AuthError> {
        let path = path.into();
        let table = Self::read(&path)?;
        Ok(PasswdFile {
            path,
            table: RwLock::new(table),
        })
    }

    fn read(path: &Path) -> Result<Table, AuthError> {
        let io = |source| AuthError::PasswdIo {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        let mut text = Vec::new();
        f.read_to_end(&mut text).map_err(io)?;
        let (users, dummy) = parse_passwd(&text, path)?;
        if meta.mode() & 0o004 != 0 {
            ::log::warn!(
                "{}: readable by every user; password hashes should be private (chmod o-r)",
                path.display()
            );
        }
        Ok(Table {
            users,
            dummy,
            stamp: stamp_of(&meta),
        })
    }

    /// Re-read the file if it changed since it was read. A file that has become unreadable
    /// or malformed is reported and the old table kept: an editing mistake must not lock
    /// every user out or let anyone in.
    fn refresh(&self) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        let stamp = stamp_of(&meta);
        let current = self.table.read().map(|t| t.stamp).unwrap_or_default();
        if stamp == current {
            return;
        }
        match Self::read(&self.path) {
            Ok(t) => {
                if let Ok(mut w) = self.table.write() {
                    ::log::info!("{}: reloaded, {} users", self.path.display(), t.users.len());
                    *w = t;
                }
            }
            Err(e) => {
                ::log::error!("{e}; keeping the previous contents");
                if let Ok(mut w) = self.table.write() {
                    // Do not retry (and log) on every login until the file changes again.
                    w.stamp = stamp;
                }
            }
        }
    }

    /// Number of users listed.
    pub fn len(&self) -> usize {
        self.table.read().map(|t| t.users.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Authenticator for PasswdFile {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
        self.refresh();
        let table = self
            .table
            .read()
            .map_err(|_| AuthError::Config("password table poisoned".into()))?;
        match table.users.get(user) {
            Some(hash) => Ok(hash.verify(password)),
            None => {
                if let Some(d) = &table.dummy {
                    std::hint::black_box(d.verify(password));
                }
                Ok(false)
            }
        }
    }

    fn secret(&self, user: &str) -> Option<Vec<u8>> {
        self.refresh();
        let table = self.table.read().ok()?;
        match table.users.get(user)? {
            Hash::Plain(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn has_secrets(&self) -> bool {
        self.refresh();
        self.table
            .read()
            .is_ok_and(|t| t.users.values().any(|h| matches!(h, Hash::Plain(_))))
    }
}

// ---------------------------------------------------------------------------------------
// Choosing a back end
// ---------------------------------------------------------------------------------------

/// The back end the flags and imapd.conf ask for, for Cyrus's POP3 SASL service name `pop`;
/// `None` when none is configured. See [`from_args_for_service`].
pub fn from_args(
    args: &ServeArgs,
    config: &Config,
) -> Result<Option<Arc<dyn Authenticator>>, AuthError> {
    from_args_for_service(args, config, "pop")
}

/// The back end for SASL service `service` (`pop`, `lmtp`: the names Cyrus's pop3d and
/// lmtpd give `sasl_server_new`): `--passwd-file`, else `--saslauthd`, else saslauthd when
/// imapd.conf's `sasl_pwcheck_method` lists it (at `sasl_saslauthd_path`, default
/// [`SASLAUTHD_DEFAULT_PATH`]); else `None`.
pub fn from_args_for_service(
    args: &ServeArgs,
    config: &Config,
    service: &str,
) -> Result<Option<Arc<dyn Authenticator>>, AuthError> {
    if let Some(p) = &args.passwd_file {
        return Ok(Some(Arc::new(PasswdFile::load(p)?)));
    }
    if let Some(p) = &args.saslauthd {
        return Ok(Some(Arc::new(Saslauthd::new(p, service, ""))));
    }
    let uses_saslauthd = config
        .get("sasl_pwcheck_method")
        .is_some_and(|m| m.split_ascii_whitespace().any(|m| m == "saslauthd"));
    if uses_saslauthd {
        let path = config
            .get_path("sasl_saslauthd_path")
            .unwrap_or_else(|| PathBuf::from(SASLAUTHD_DEFAULT_PATH));
        return Ok(Some(Arc::new(Saslauthd::new(path, service, ""))));
    }
    Ok(None)
}

/// imapd.conf `failedloginpause` (a Cyrus duration, default 3 s): how long a session waits
/// before it answers a failed login. A malformed value is reported and the default used.
pub fn failed_login_pause(config: &Config) -> Duration {
    const DEFAULT: i64 = 3;
    let secs = config
        .get_duration("failedloginpause", b's', DEFAULT)
        .unwrap_or_else(|e| {
            ::log::warn!("{e}; using {DEFAULT}s");
            DEFAULT
        });
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -6 -salt saltsalt secret`
    const SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("passwd");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"abc\0", b"abc"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn sha512_crypt_matches_openssl() {
        let h = Hash::parse(SHA512).unwrap();
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"secreT"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn sha_crypt_rounds_and_sha256() {
        // `openssl passwd -5 -salt saltsalt secret` and the rounds= form of -6.
        let h = Hash::parse("$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA").unwrap();
        assert!(h.verify(b"secret"));
        let p = sha_crypt::Sha512Params::new(2000).unwrap();
        let b64 = sha_crypt::sha512_crypt_b64(b"pw", b"abc", &p).unwrap();
        let h = Hash::parse(&format!("$6$rounds=2000$abc${b64}")).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pW"));
        // glibc clamps rounds below the minimum instead of refusing.
        let p = sha_crypt::Sha512Params::new(1000).unwrap();
        let b64 = sha_crypt::sha512_crypt_b64(b"pw", b"abc", &p).unwrap();
        assert!(Hash::parse(&format!("$6$rounds=10$abc${b64}"))
            .unwrap()
            .verify(b"pw"));
    }

    #[test]
    fn bcrypt_and_argon2() {
        let b = bcrypt::hash("pw", 4).unwrap();
        let h = Hash::parse(&b).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        let b2y = b.replacen("$2b$", "$2y$", 1);
        assert!(Hash::parse(&b2y).unwrap().verify(b"pw"));
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let a = argon2::Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(a.starts_with("$argon2id$"));
        let h = Hash::parse(&a).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
    }

    #[test]
    fn bad_hashes_are_reported() {
        for bad in [
            "",
            "plaintext",
            "$6$salt",
            "$6$salt$short",
            "$6$rounds=x$salt$hash",
            "$2b$04$tooshort",
            "$argon2id$garbage",
            "$1$md5crypt$abcdefghijklmnopqrstuv",
        ] {
            assert!(Hash::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwd_file_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!(
                "# comment\n\nalice:{SHA512}\nbob:{{PLAIN}}pa:ss\r\nlocked:!{SHA512}\ndove:{{SHA512-CRYPT}}{SHA512}:1000:1000::/home/dove::\n"
            ),
        );
        let f = PasswdFile::load(&p).unwrap();
        assert_eq!(f.len(), 4);
        assert!(f.check_password("alice", b"secret").unwrap());
        assert!(!f.check_password("alice", b"wrong").unwrap());
        assert!(!f.check_password("nobody", b"secret").unwrap());
        assert!(!f.check_password("Alice", b"secret").unwrap());
        assert!(f.check_password("bob", b"pa:ss").unwrap());
        assert!(!f.check_password("locked", b"secret").unwrap());
        assert!(f.check_password("dove", b"secret").unwrap());
        assert_eq!(f.secret("bob").as_deref(), Some(&b"pa:ss"[..]));
        assert_eq!(f.secret("alice"), None);
        assert_eq!(f.secret("nobody"), None);
        assert!(f.has_secrets());
    }

    #[test]
    fn passwd_file_syntax_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        for (text, line) in [
            ("alice:{PLAIN}x\nnocolon\n", 2),
            ("# c\n:{PLAIN}x\n", 2),
            ("a:{PLAIN}x\na:{PLAIN}y\n", 2),
            ("a:md5:xyz\n", 1),
        ] {
            let p = write(dir.path(), text);
            match PasswdFile::load(&p) {
                Err(AuthError::PasswdSyntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                Err(e) => panic!("{text:?}: {e}"),
                Ok(_) => panic!("{text:?} accepted"),
            }
        }
        assert!(matches!(
            PasswdFile::load(dir.path().join("missing")),
            Err(AuthError::PasswdIo { .. })
        ));
    }

    #[test]
    fn passwd_file_reloads_on_change_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "alice:{PLAIN}one\n");
        let f = PasswdFile::load(&p).unwrap();
        assert!(f.check_password("alice", b"one").unwrap());
        // Same size, so only the mtime (or inode, after the rename) tells.
        let tmp = dir.path().join("passwd.new");
        let mut w = std::fs::File::create(&tmp).unwrap();
        w.write_all(b"alice:{PLAIN}two\n").unwrap();
        drop(w);
        std::fs::rename(&tmp, &p).unwrap();
        assert!(f.check_password("alice", b"two").unwrap());
        assert!(!f.check_password("alice", b"one").unwrap());
        // A broken edit keeps the previous table.
        std::fs::write(&p, "alice two\n").unwrap();
        assert!(f.check_password("alice", b"two").unwrap());
        std::fs::write(&p, "alice:{PLAIN}three\ncarol:{PLAIN}c\n").unwrap();
        assert!(f.check_password("carol", b"c").unwrap());
    }

    #[test]
    fn unknown_user_costs_a_hash_verification() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("plain:{{PLAIN}}x\nalice:{SHA512}\n"));
        let f = PasswdFile::load(&p).unwrap();
        let table = f.table.read().unwrap();
        assert!(matches!(table.dummy, Some(Hash::ShaCrypt { .. })));
    }

    #[test]
    fn saslauthd_request_bytes() {
        let r = saslauthd_request("bob@example.com", b"pw", "pop", "").unwrap();
        assert_eq!(
            r,
            b"\x00\x03bob\x00\x02pw\x00\x03pop\x00\x0bexample.com".to_vec()
        );
        let r = saslauthd_request("a@b@c", b"pw", "lmtp", "dflt").unwrap();
        assert!(r.starts_with(b"\x00\x03a@b\x00\x02pw\x00\x04lmtp\x00\x01c"));
        let r = saslauthd_request("bob", b"pw", "pop", "dflt").unwrap();
        assert!(r.ends_with(b"\x00\x04dflt"));
        assert!(saslauthd_request("bob", b"p\0w", "pop", "").is_none());
        assert!(saslauthd_request("bob", &[b'x'; 257], "pop", "").is_none());
        assert!(saslauthd_request("bob", &[b'x'; 256], "pop", "").is_some());
    }

    /// A fake saslauthd answering one connection with `reply`, recording the request.
    fn fake_saslauthd(
        dir: &Path,
        reply: &'static [u8],
    ) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let path = dir.join("mux");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            for _ in 0..4 {
                let mut n = [0u8; 2];
                s.read_exact(&mut n).unwrap();
                let mut f = vec![0u8; usize::from(u16::from_be_bytes(n))];
                s.read_exact(&mut f).unwrap();
                req.extend_from_slice(&n);
                req.extend_from_slice(&f);
            }
            s.write_all(reply).unwrap();
            req
        });
        (path, t)
    }

    #[test]
    fn saslauthd_protocol_against_a_fake() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = fake_saslauthd(dir.path(), b"\x00\x02OK");
        let a = Saslauthd::new(&path, "pop", "");
        assert!(a.check_password("bob", b"pw").unwrap());
        assert_eq!(
            t.join().unwrap(),
            b"\x00\x03bob\x00\x02pw\x00\x03pop\x00\x00"
        );
        std::fs::remove_file(&path).unwrap();
        let (path, t) = fake_saslauthd(dir.path(), b"\x00\x1dNO authentication failed.....");
        assert!(!a.check_password("bob", b"pw").unwrap());
        t.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let (path, t) = fake_saslauthd(dir.path(), b"\x00\x01O");
        assert!(matches!(
            a.check_password("bob", b"pw"),
            Err(AuthError::SaslauthdReply { .. })
        ));
        t.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        // Nobody listening: an error, not a wrong password.
        assert!(matches!(
            a.check_password("bob", b"pw"),
            Err(AuthError::Saslauthd { .. })
        ));
        // Empty password: NO without asking.
        assert!(!a.check_password("bob", b"").unwrap());
    }

    #[test]
    fn saslauthd_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mux");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let a = Saslauthd::new(&path, "pop", "").with_timeout(Duration::from_millis(200));
        let start = std::time::Instant::now();
        assert!(matches!(
            a.check_password("bob", b"pw"),
            Err(AuthError::Saslauthd { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    fn args(extra: &[&str]) -> ServeArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct A {
            #[command(flatten)]
            a: ServeArgs,
        }
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        A::parse_from(v).a
    }

    fn conf_in(dir: &Path, extra: &str) -> Config {
        Config::parse(
            format!("configdirectory: /var/lib/cyrus\n{extra}").as_bytes(),
            dir,
        )
        .unwrap()
    }

    #[test]
    fn from_args_picks_the_back_end() {
        let dir = tempfile::tempdir().unwrap();
        let conf = |extra: &str| conf_in(dir.path(), extra);
        assert!(from_args(&args(&[]), &conf("")).unwrap().is_none());
        let a = from_args(&args(&[]), &conf("sasl_pwcheck_method: saslauthd\n"))
            .unwrap()
            .unwrap();
        // The saslauthd at the default path does not exist here: an error, never `true`.
        assert!(!matches!(a.check_password("u", b"p"), Ok(true)));
        assert!(
            from_args(&args(&[]), &conf("sasl_pwcheck_method: auxprop\n"))
                .unwrap()
                .is_none()
        );
        let (path, t) = fake_saslauthd(dir.path(), b"\x00\x02OK");
        let c = conf(&format!(
            "sasl_pwcheck_method: auxprop saslauthd\nsasl_saslauthd_path: {}\n",
            path.display()
        ));
        let a = from_args_for_service(&args(&[]), &c, "lmtp")
            .unwrap()
            .unwrap();
        assert!(a.check_password("u", b"p").unwrap());
        assert!(t.join().unwrap().ends_with(b"\x00\x04lmtp\x00\x00"));
        let p = write(dir.path(), "u:{PLAIN}p\n");
        let a = from_args(&args(&["--passwd-file", p.to_str().unwrap()]), &conf(""))
            .unwrap()
            .unwrap();
        assert!(a.check_password("u", b"p").unwrap());
        assert!(from_args(&args(&["--passwd-file", "/nonexistent"]), &conf("")).is_err());
    }

    #[test]
    fn failed_login_pause_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let conf = |extra: &str| conf_in(dir.path(), extra);
        assert_eq!(failed_login_pause(&conf("")), Duration::from_secs(3));
        assert_eq!(
            failed_login_pause(&conf("failedloginpause: 1m\n")),
            Duration::from_secs(60)
        );
        assert_eq!(
            failed_login_pause(&conf("failedloginpause: 0\n")),
            Duration::ZERO
        );
        assert_eq!(
            failed_login_pause(&conf("failedloginpause: soon\n")),
            Duration::from_secs(3)
        );
    }
}
