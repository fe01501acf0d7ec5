//! Login names and credential checks for POP3.
//!
//! Login names as Cyrus's pop3d reads them (`popd_canon_user`, `cmd_user`): `user@domain`
//! with virtdomains, `user+folder` with `popsubfolders`, lower-cased with `username_tolower`;
//! plus cyrkit's "recent mode": `recent:alice` logs in as alice and lists only the last 30
//! days' messages (a second device that must not miss mail).
//!
//! The checks: SASL PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195) and APOP (RFC 1939 §7),
//! against a [`Credentials`] store. Pure functions; the exchange itself is in `session`.

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use super::{LoginTarget, Pop3Config};

/// Prefix of a login name asking for the recent mode.
pub const RECENT_PREFIX: &str = "recent:";
/// How far back the recent mode reaches.
pub const RECENT_WINDOW_SECS: i64 = 30 * 86_400;
/// Cyrus's `MAX_MAILBOX_BUFFER`: `strlen(userid) + 6 >= 1024` is "Invalid user".
const MAX_MAILBOX_BUFFER: usize = 1024;

/// Where passwords are checked (the auth module's `Authenticator`, or a test fake).
pub trait Credentials: Send + Sync {
    /// Ok(false) for a wrong password and for an unknown user alike.
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, String>;
    /// The cleartext secret (APOP, CRAM-MD5), when the store has them.
    fn secret(&self, user: &str) -> Option<Vec<u8>>;
    /// Whether [`Credentials::secret`] can ever answer (offer APOP and CRAM-MD5).
    fn has_secrets(&self) -> bool;
}

/// The server's password stores ([`crate::server::auth`]) as POP3 credentials.
pub struct AuthCredentials(pub std::sync::Arc<dyn crate::server::auth::Authenticator>);

impl Credentials for AuthCredentials {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, String> {
        self.0
            .check_password(user, password)
            .map_err(|e| e.to_string())
    }
    fn secret(&self, user: &str) -> Option<Vec<u8>> {
        self.0.secret(user)
    }
    fn has_secrets(&self) -> bool {
        self.0.has_secrets()
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

/// The SASL mechanisms offered, in Cyrus SASL's order (strongest first).
pub fn mechanisms(plaintext_ok: bool, secrets: bool) -> Vec<&'static str> {
    let mut m = Vec::new();
    if secrets {
        m.push("CRAM-MD5");
    }
    if plaintext_ok {
        m.push("PLAIN");
        m.push("LOGIN");
    }
    m
}

/// SASL result codes and `sasl_errstring` texts, as Cyrus puts them after
/// `-ERR [AUTH] authenticating: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    NoMech,
    BadProt,
    BadAuth,
    NoAuthz,
    Encrypt,
}

impl SaslError {
    pub fn text(self) -> &'static str {
        match self {
            SaslError::NoMech => "no mechanism available",
            SaslError::BadProt => "bad protocol / cancel",
            SaslError::BadAuth => "authentication failure",
            SaslError::NoAuthz => "authorization failure",
            SaslError::Encrypt => "encryption needed to use mechanism",
        }
    }
}

/// Decode a base64 client response (`=` is the empty response).
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line == b"=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::BadProt)
}

pub fn encode_challenge(c: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(c)
}

/// The three fields of a PLAIN response.
pub type PlainFields<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// PLAIN: `authzid NUL authcid NUL password` → (authzid, authcid, password).
pub fn parse_plain(resp: &[u8]) -> Result<PlainFields<'_>, SaslError> {
    let mut parts = resp.splitn(3, |&b| b == 0);
    let authz = parts.next().ok_or(SaslError::BadProt)?;
    let authc = parts.next().ok_or(SaslError::BadProt)?;
    let pass = parts.next().ok_or(SaslError::BadProt)?;
    if authc.is_empty() {
        return Err(SaslError::BadProt);
    }
    Ok((authz, authc, pass))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CRAM-MD5: the response is `user SP hex(HMAC-MD5(secret, challenge))`.
/// Returns the user name when the digest matches.
pub fn check_cram_md5<'r>(
    challenge: &[u8],
    response: &'r [u8],
    secret: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<&'r str, SaslError> {
    let sp = response
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(SaslError::BadProt)?;
    let user =
        std::str::from_utf8(response.get(..sp).unwrap_or(&[])).map_err(|_| SaslError::BadProt)?;
    let digest = response.get(sp + 1..).unwrap_or(&[]);
    let key = secret(user).ok_or(SaslError::BadAuth)?;
    let mut mac = Hmac::<Md5>::new_from_slice(&key).map_err(|_| SaslError::BadAuth)?;
    mac.update(challenge);
    let want = hex(&mac.finalize().into_bytes());
    if same(want.as_bytes(), &digest.to_ascii_lowercase()) {
        Ok(user)
    } else {
        Err(SaslError::BadAuth)
    }
}

/// APOP: `name SP hex(MD5(challenge secret))` (Cyrus SASL splits at the last blank).
pub fn check_apop<'r>(
    challenge: &str,
    response: &'r [u8],
    secret: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<&'r [u8], SaslError> {
    let sp = response
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(SaslError::BadProt)?;
    let user = response.get(..sp).unwrap_or(&[]);
    let digest = response.get(sp + 1..).unwrap_or(&[]);
    let name = std::str::from_utf8(user).map_err(|_| SaslError::BadAuth)?;
    let key = secret(name).ok_or(SaslError::BadAuth)?;
    let mut h = Md5::new();
    h.update(challenge.as_bytes());
    h.update(&key);
    let want = hex(&h.finalize());
    if same(want.as_bytes(), &digest.to_ascii_lowercase()) {
        Ok(user)
    } else {
        Err(SaslError::BadAuth)
    }
}

/// A challenge `<random.time@host>` as `sasl_mkchal` makes it (APOP greeting, CRAM-MD5).
pub fn make_challenge(host: &str) -> String {
    let r: u64 = rand::random();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("<{r}.{now}@{host}>")
}

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

    #[test]
    fn plain_and_base64() {
        assert_eq!(decode_response(b"="), Ok(Vec::new()));
        assert_eq!(decode_response(b"!!"), Err(SaslError::BadProt));
        let r = decode_response(b"AGFsaWNlAHNlY3JldA==").unwrap();
        assert_eq!(
            parse_plain(&r),
            Ok((&b""[..], &b"alice"[..], &b"secret"[..]))
        );
        assert_eq!(parse_plain(b"x"), Err(SaslError::BadProt));
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        let chal = b"<1896.697170952@postoffice.reston.mci.net>";
        let resp = b"tim b913a602c7eda7a495b4e6e7334d3890";
        let secret = |u: &str| (u == "tim").then(|| b"tanstaaftanstaaf".to_vec());
        assert_eq!(check_cram_md5(chal, resp, &secret), Ok("tim"));
        let bad = b"tim b913a602c7eda7a495b4e6e7334d3891";
        assert_eq!(check_cram_md5(chal, bad, &secret), Err(SaslError::BadAuth));
        assert_eq!(
            check_cram_md5(chal, b"nobody 00", &secret),
            Err(SaslError::BadAuth)
        );
    }

    #[test]
    fn apop_rfc1939_example() {
        let chal = "<1896.697170952@dbc.mtview.ca.us>";
        let secret = |u: &str| (u == "mrose").then(|| b"tanstaaf".to_vec());
        let resp = b"mrose c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(check_apop(chal, resp, &secret), Ok(&b"mrose"[..]));
        let bad = b"mrose c4c9334bac560ecc979e58001b3e22fc";
        assert_eq!(check_apop(chal, bad, &secret), Err(SaslError::BadAuth));
    }
}
