//! Server-side SASL, sans I/O: the mechanisms PLAIN (RFC 4616), LOGIN and CRAM-MD5
//! (RFC 2195), the base64 framing both POP3 (RFC 5034) and LMTP/SMTP (RFC 4954) use for
//! client responses, and the APOP digest (RFC 1939 §7).
//!
//! A session creates a [`SaslServer`] for the mechanism the client named, calls
//! [`SaslServer::start`] with the initial response if the command carried one, then feeds
//! every client line to [`SaslServer::step`] until it answers [`SaslStep::Done`] or
//! [`SaslStep::Failed`]. Challenges are raw bytes: the session base64-encodes them with
//! [`encode_challenge`] and frames them (`+ ` for POP3, `334 ` for LMTP). Passwords are
//! checked through the [`Authenticator`]; this module does no network I/O and does not
//! sleep after a failure (the session applies `failedloginpause`).

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use crate::server::auth::{ct_eq, AuthError, Authenticator};

/// Longest decoded client response accepted: PLAIN carries three fields of at most 255
/// bytes each in practice (RFC 4616 allows any length; Cyrus's own buffer is 8 KiB).
pub const MAX_RESPONSE: usize = 8192;

/// A SASL mechanism this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
}

impl Mechanism {
    /// The mechanism a client named (case-insensitive, RFC 4422 §3.1).
    pub fn parse(name: &[u8]) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case(b"PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case(b"LOGIN") {
            Some(Mechanism::Login)
        } else if name.eq_ignore_ascii_case(b"CRAM-MD5") {
            Some(Mechanism::CramMd5)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }

    /// Whether the mechanism sends the password in the clear (and so, as Cyrus's
    /// `allowplaintext: no` demands, is offered only under TLS).
    pub fn is_plaintext(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

/// The mechanisms `auth` supports, in the order Cyrus lists them: CRAM-MD5 only when the
/// store holds cleartext secrets.
pub fn mechanisms(auth: &dyn Authenticator) -> Vec<Mechanism> {
    let mut m = Vec::new();
    if auth.has_secrets() {
        m.push(Mechanism::CramMd5);
    }
    m.push(Mechanism::Plain);
    m.push(Mechanism::Login);
    m
}

#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    /// The client answered `*` (RFC 4422 §3.5).
    #[error("client cancelled the authentication")]
    Cancelled,
    #[error("client response is not valid base64")]
    BadBase64,
    #[error("client response longer than {MAX_RESPONSE} bytes")]
    TooLong,
    #[error("malformed {mechanism} response: {detail}")]
    Malformed {
        mechanism: &'static str,
        detail: &'static str,
    },
    /// Wrong password, unknown user, or no secret for CRAM-MD5: the client is not told which.
    #[error("authentication failed for {user:?}")]
    AuthFailed { user: String },
    /// A user authenticated but may not act as another (only admins may).
    #[error("{authcid:?} may not authorize as {authzid:?}")]
    NotAuthorized { authcid: String, authzid: String },
    /// The password store could not be asked (saslauthd down): a temporary failure.
    #[error(transparent)]
    Backend(#[from] AuthError),
    #[error("the exchange is already over")]
    Finished,
}

/// What the session does next.
#[derive(Debug)]
pub enum SaslStep {
    /// Send this challenge (raw; encode with [`encode_challenge`]) and read a response line.
    Challenge(Vec<u8>),
    /// Authenticated as `authcid`, acting as `authzid` (equal to `authcid` unless an admin
    /// asked to act as another user).
    Done {
        authcid: String,
        authzid: String,
    },
    Failed(SaslError),
}

/// A decoded client response line.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Data(Vec<u8>),
    /// `*`: the client gives up.
    Cancel,
}

/// Decode one client response line (its ending already removed): `*` cancels, `=` is an
/// empty response (RFC 4954 §4, RFC 5034 §4), anything else must be padded standard
/// base64 (RFC 4648 §4), as Cyrus's `sasl_decode64` wants it.
pub fn decode_response(line: &[u8]) -> Result<Response, SaslError> {
    match line {
        b"*" => return Ok(Response::Cancel),
        b"=" | b"" => return Ok(Response::Data(Vec::new())),
        _ => {}
    }
    // base64 of MAX_RESPONSE bytes is 4/3 as long; refuse before decoding.
    if line.len() > MAX_RESPONSE.div_ceil(3).saturating_mul(4) {
        return Err(SaslError::TooLong);
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::BadBase64)?;
    if data.len() > MAX_RESPONSE {
        return Err(SaslError::TooLong);
    }
    Ok(Response::Data(data))
}

/// A challenge as sent on the wire (base64; empty for an empty challenge).
pub fn encode_challenge(challenge: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(challenge)
}

/// The three fields of a PLAIN response.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainResponse {
    /// Empty when the client did not ask to act as someone else.
    pub authzid: String,
    pub authcid: String,
    pub password: Vec<u8>,
}

/// Split a decoded PLAIN response: `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
pub fn parse_plain(data: &[u8]) -> Result<PlainResponse, SaslError> {
    let malformed = |detail| SaslError::Malformed {
        mechanism: "PLAIN",
        detail,
    };
    let mut fields = data.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(malformed("want authzid NUL authcid NUL password"));
    };
    if password.contains(&0) {
        return Err(malformed("NUL inside the password"));
    }
    if authcid.is_empty() {
        return Err(malformed("empty authentication identity"));
    }
    if password.is_empty() {
        return Err(malformed("empty password"));
    }
    let utf8 =
        |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| malformed("identity is not UTF-8"));
    Ok(PlainResponse {
        authzid: utf8(authzid)?,
        authcid: utf8(authcid)?,
        password: password.to_vec(),
    })
}

/// Who may act as another user: Cyrus's `mysasl_proxy_policy` lets the `admins` (and
/// `proxyservers`) of the service do so; everyone else only as themselves.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    pub admins: Vec<String>,
}

impl ProxyPolicy {
    fn allows(&self, authcid: &str, authzid: &str) -> bool {
        authcid == authzid || self.admins.iter().any(|a| a == authcid)
    }
}

enum State {
    /// Waiting for the initial response (PLAIN) or the first answer.
    Start,
    LoginUser,
    LoginPassword {
        user: String,
    },
    CramResponse {
        challenge: Vec<u8>,
    },
    Over,
}

/// One SASL exchange.
pub struct SaslServer {
    mechanism: Mechanism,
    auth: Arc<dyn Authenticator>,
    policy: Arc<ProxyPolicy>,
    /// For CRAM-MD5's challenge.
    hostname: String,
    state: State,
}

impl SaslServer {
    pub fn new(
        mechanism: Mechanism,
        auth: Arc<dyn Authenticator>,
        policy: Arc<ProxyPolicy>,
        hostname: &str,
    ) -> SaslServer {
        SaslServer {
            mechanism,
            auth,
            policy,
            hostname: hostname.to_string(),
            state: State::Start,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Begin the exchange. `initial` is the initial response exactly as the command carried
    /// it (still base64, `=` for empty), or `None` when the command had none.
    pub fn start(&mut self, initial: Option<&[u8]>) -> SaslStep {
        if !matches!(self.state, State::Start) {
            return self.fail(SaslError::Finished);
        }
        match (self.mechanism, initial) {
            (Mechanism::Plain, None) => SaslStep::Challenge(Vec::new()),
            (Mechanism::Plain, Some(ir)) => self.step(ir),
            (Mechanism::Login, None) => {
                self.state = State::LoginUser;
                SaslStep::Challenge(b"Username:".to_vec())
            }
            (Mechanism::Login, Some(ir)) => {
                // Clients that send the user name as an initial response (Outlook, and
                // draft-murchison-sasl-login) skip the first challenge.
                self.state = State::LoginUser;
                self.step(ir)
            }
            // CRAM-MD5 has no initial response (RFC 2195 §2): the server speaks first.
            (Mechanism::CramMd5, Some(_)) => self.fail(SaslError::Malformed {
                mechanism: "CRAM-MD5",
                detail: "no initial response allowed",
            }),
            (Mechanism::CramMd5, None) => {
                let challenge = make_challenge(&self.hostname).into_bytes();
                self.state = State::CramResponse {
                    challenge: challenge.clone(),
                };
                SaslStep::Challenge(challenge)
            }
        }
    }

    /// Feed one client response line (without its line ending).
    pub fn step(&mut self, line: &[u8]) -> SaslStep {
        if matches!(self.state, State::Over) {
            return SaslStep::Failed(SaslError::Finished);
        }
        let data = match decode_response(line) {
            Ok(Response::Data(d)) => d,
            Ok(Response::Cancel) => return self.fail(SaslError::Cancelled),
            Err(e) => return self.fail(e),
        };
        match std::mem::replace(&mut self.state, State::Over) {
            State::Over => SaslStep::Failed(SaslError::Finished),
            State::Start => match parse_plain(&data) {
                Ok(p) => self.finish(p.authcid, p.authzid, |a, u| {
                    a.check_password(u, &p.password)
                }),
                Err(e) => self.fail(e),
            },
            State::LoginUser => match String::from_utf8(data) {
                Ok(user) if !user.is_empty() => {
                    self.state = State::LoginPassword { user };
                    SaslStep::Challenge(b"Password:".to_vec())
                }
                _ => self.fail(SaslError::Malformed {
                    mechanism: "LOGIN",
                    detail: "empty or non-UTF-8 user name",
                }),
            },
            State::LoginPassword { user } => {
                self.finish(user, String::new(), |a, u| a.check_password(u, &data))
            }
            State::CramResponse { challenge } => {
                // "user SP 32 lower-case hex digits" (RFC 2195 §2); the user may hold spaces.
                let Some(sp) = data.iter().rposition(|&b| b == b' ') else {
                    return self.fail(SaslError::Malformed {
                        mechanism: "CRAM-MD5",
                        detail: "want user SP digest",
                    });
                };
                let (user, digest) = (&data[..sp], &data[sp + 1..]);
                let Ok(user) = String::from_utf8(user.to_vec()) else {
                    return self.fail(SaslError::Malformed {
                        mechanism: "CRAM-MD5",
                        detail: "user name is not UTF-8",
                    });
                };
                self.finish(user, String::new(), |a, u| {
                    Ok(cram_md5_check(a.secret(u).as_deref(), &challenge, digest))
                })
            }
        }
    }

    /// Check the credentials with `check`, then the proxy policy.
    fn finish(
        &mut self,
        authcid: String,
        authzid: String,
        check: impl FnOnce(&dyn Authenticator, &str) -> Result<bool, AuthError>,
    ) -> SaslStep {
        self.state = State::Over;
        match check(self.auth.as_ref(), &authcid) {
            Err(e) => return SaslStep::Failed(SaslError::Backend(e)),
            Ok(false) => return SaslStep::Failed(SaslError::AuthFailed { user: authcid }),
            Ok(true) => {}
        }
        let authzid = if authzid.is_empty() {
            authcid.clone()
        } else {
            authzid
        };
        if !self.policy.allows(&authcid, &authzid) {
            return SaslStep::Failed(SaslError::NotAuthorized { authcid, authzid });
        }
        SaslStep::Done { authcid, authzid }
    }

    fn fail(&mut self, e: SaslError) -> SaslStep {
        self.state = State::Over;
        SaslStep::Failed(e)
    }
}

/// A challenge unique to this session: `<random.time@hostname>`, the shape Cyrus's
/// `sasl_mkchal` gives both the POP3 greeting (APOP) and CRAM-MD5.
pub fn make_challenge(hostname: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("<{}.{now}@{hostname}>", rand::random::<u64>())
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    out
}

/// A digest as a client writes it: hex, compared case-insensitively.
fn digest_matches(expected_hex: &[u8], got: &[u8]) -> bool {
    let got: Vec<u8> = got.iter().map(u8::to_ascii_lowercase).collect();
    ct_eq(expected_hex, &got)
}

/// A secret that matches nothing, so an unknown user costs the same digest as a known one.
const NO_SECRET: &[u8] = b"\0no secret\0";

/// CRAM-MD5: `digest` must be the hex HMAC-MD5 of `challenge` keyed with the secret.
fn cram_md5_check(secret: Option<&[u8]>, challenge: &[u8], digest: &[u8]) -> bool {
    let key = secret.unwrap_or(NO_SECRET);
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(key) else {
        return false;
    };
    mac.update(challenge);
    let expected = hex(&mac.finalize().into_bytes());
    digest_matches(&expected, digest) && secret.is_some()
}

/// The APOP digest (RFC 1939 §7): lower-case hex MD5 of the greeting's timestamp (with its
/// angle brackets) followed by the secret.
pub fn apop_digest(challenge: &[u8], secret: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(challenge);
    md5.update(secret);
    // Hex digits are ASCII.
    String::from_utf8_lossy(&hex(&md5.finalize())).into_owned()
}

/// Check an `APOP user digest` command against the store's cleartext secret. False for an
/// unknown user, a user without a cleartext secret, or a wrong digest.
pub fn apop_check(auth: &dyn Authenticator, user: &str, challenge: &[u8], digest: &[u8]) -> bool {
    let secret = auth.secret(user);
    let expected = apop_digest(challenge, secret.as_deref().unwrap_or(NO_SECRET));
    digest_matches(expected.as_bytes(), digest) && secret.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A store with cleartext secrets; `down` simulates saslauthd being unreachable.
    struct Mock {
        users: HashMap<String, Vec<u8>>,
        down: bool,
    }

    impl Authenticator for Mock {
        fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
            if self.down {
                return Err(AuthError::Config("down".into()));
            }
            Ok(self.users.get(user).is_some_and(|p| ct_eq(p, password)))
        }
        fn secret(&self, user: &str) -> Option<Vec<u8>> {
            self.users.get(user).cloned()
        }
        fn has_secrets(&self) -> bool {
            true
        }
    }

    fn server(mech: Mechanism) -> SaslServer {
        server_with(mech, false)
    }

    fn server_with(mech: Mechanism, down: bool) -> SaslServer {
        let users = [
            ("alice", "wonder"),
            ("admin", "root pw"),
            ("bob smith", "pw"),
        ]
        .into_iter()
        .map(|(u, p)| (u.to_string(), p.as_bytes().to_vec()))
        .collect();
        let policy = ProxyPolicy {
            admins: vec!["admin".into()],
        };
        SaslServer::new(
            mech,
            Arc::new(Mock { users, down }),
            Arc::new(policy),
            "mail.example",
        )
    }

    fn b64(b: &[u8]) -> Vec<u8> {
        encode_challenge(b).into_bytes()
    }

    fn done(step: SaslStep) -> (String, String) {
        match step {
            SaslStep::Done { authcid, authzid } => (authcid, authzid),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn failed(step: SaslStep) -> SaslError {
        match step {
            SaslStep::Failed(e) => e,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn decode_response_framing() {
        assert_eq!(decode_response(b"*").unwrap(), Response::Cancel);
        assert_eq!(decode_response(b"=").unwrap(), Response::Data(vec![]));
        assert_eq!(
            decode_response(b"AGFsaWNlAHdvbmRlcg==").unwrap(),
            Response::Data(b"\0alice\0wonder".to_vec())
        );
        for bad in [&b"AGFsaWNlAHdvbmRlcg"[..], b"!!!!", b"AGF saWNl", b"a==="] {
            assert!(
                matches!(decode_response(bad), Err(SaslError::BadBase64)),
                "{bad:?}"
            );
        }
        let long = vec![b'A'; MAX_RESPONSE * 2];
        assert!(matches!(decode_response(&long), Err(SaslError::TooLong)));
    }

    #[test]
    fn plain_initial_response() {
        let mut s = server(Mechanism::Plain);
        let (c, z) = done(s.start(Some(&b64(b"\0alice\0wonder"))));
        assert_eq!((c.as_str(), z.as_str()), ("alice", "alice"));
        // A second step after the end is refused, not re-run.
        assert!(matches!(failed(s.step(b"=")), SaslError::Finished));
    }

    #[test]
    fn plain_without_initial_response_sends_empty_challenge() {
        let mut s = server(Mechanism::Plain);
        match s.start(None) {
            SaslStep::Challenge(c) => assert!(c.is_empty()),
            other => panic!("{other:?}"),
        }
        let (c, _) = done(s.step(&b64(b"alice\0alice\0wonder")));
        assert_eq!(c, "alice");
    }

    #[test]
    fn plain_wrong_password_and_unknown_user_fail_alike() {
        for resp in [&b"\0alice\0wrong"[..], b"\0nobody\0wonder"] {
            let mut s = server(Mechanism::Plain);
            assert!(matches!(
                failed(s.start(Some(&b64(resp)))),
                SaslError::AuthFailed { .. }
            ));
        }
    }

    #[test]
    fn plain_proxy_only_for_admins() {
        let mut s = server(Mechanism::Plain);
        let (c, z) = done(s.start(Some(&b64(b"alice\0admin\0root pw"))));
        assert_eq!((c.as_str(), z.as_str()), ("admin", "alice"));
        let mut s = server(Mechanism::Plain);
        match failed(s.start(Some(&b64(b"admin\0alice\0wonder")))) {
            SaslError::NotAuthorized { authcid, authzid } => {
                assert_eq!((authcid.as_str(), authzid.as_str()), ("alice", "admin"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_malformed() {
        for resp in [
            &b"alice"[..],
            b"\0alice",
            b"\0\0pw",
            b"\0alice\0",
            b"\0al\xffice\0pw",
            b"\0alice\0pw\0more",
        ] {
            let mut s = server(Mechanism::Plain);
            assert!(
                matches!(
                    failed(s.start(Some(&b64(resp)))),
                    SaslError::Malformed { .. }
                ),
                "{resp:?}"
            );
        }
    }

    #[test]
    fn cancel_and_bad_base64() {
        let mut s = server(Mechanism::Login);
        assert!(matches!(s.start(None), SaslStep::Challenge(_)));
        assert!(matches!(failed(s.step(b"*")), SaslError::Cancelled));
        let mut s = server(Mechanism::Plain);
        assert!(matches!(
            failed(s.start(Some(b"not base64!"))),
            SaslError::BadBase64
        ));
    }

    #[test]
    fn backend_failure_is_not_a_wrong_password() {
        let mut s = server_with(Mechanism::Plain, true);
        assert!(matches!(
            failed(s.start(Some(&b64(b"\0alice\0wonder")))),
            SaslError::Backend(_)
        ));
    }

    #[test]
    fn login_exchange() {
        let mut s = server(Mechanism::Login);
        match s.start(None) {
            SaslStep::Challenge(c) => assert_eq!(c, b"Username:"),
            other => panic!("{other:?}"),
        }
        match s.step(&b64(b"alice")) {
            SaslStep::Challenge(c) => assert_eq!(c, b"Password:"),
            other => panic!("{other:?}"),
        }
        assert_eq!(done(s.step(&b64(b"wonder"))).0, "alice");
        // User name as initial response; then a wrong password.
        let mut s = server(Mechanism::Login);
        assert!(matches!(
            s.start(Some(&b64(b"alice"))),
            SaslStep::Challenge(_)
        ));
        assert!(matches!(
            failed(s.step(&b64(b"nope"))),
            SaslError::AuthFailed { .. }
        ));
    }

    #[test]
    fn cram_md5_rfc2195_digest() {
        // The example of RFC 2195 §2.
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        assert!(cram_md5_check(
            Some(b"tanstaaftanstaaf"),
            challenge,
            b"b913a602c7eda7a495b4e6e7334d3890"
        ));
        assert!(cram_md5_check(
            Some(b"tanstaaftanstaaf"),
            challenge,
            b"B913A602C7EDA7A495B4E6E7334D3890"
        ));
        assert!(!cram_md5_check(
            Some(b"tanstaaftanstaaf"),
            challenge,
            b"b913a602c7eda7a495b4e6e7334d3891"
        ));
        assert!(!cram_md5_check(
            None,
            challenge,
            b"b913a602c7eda7a495b4e6e7334d3890"
        ));
    }

    #[test]
    fn cram_md5_exchange() {
        let mut s = server(Mechanism::CramMd5);
        let SaslStep::Challenge(challenge) = s.start(None) else {
            panic!("no challenge")
        };
        assert!(challenge.starts_with(b"<") && challenge.ends_with(b"@mail.example>"));
        let mut mac = Hmac::<Md5>::new_from_slice(b"pw").unwrap();
        mac.update(&challenge);
        let mut resp = b"bob smith ".to_vec();
        resp.extend(hex(&mac.finalize().into_bytes()));
        let (c, z) = done(s.step(&b64(&resp)));
        assert_eq!((c.as_str(), z.as_str()), ("bob smith", "bob smith"));
        let mut s = server(Mechanism::CramMd5);
        assert!(matches!(s.start(None), SaslStep::Challenge(_)));
        assert!(matches!(
            failed(s.step(&b64(b"alice 00000000000000000000000000000000"))),
            SaslError::AuthFailed { .. }
        ));
        let mut s = server(Mechanism::CramMd5);
        assert!(matches!(
            failed(s.start(Some(b"="))),
            SaslError::Malformed { .. }
        ));
    }

    #[test]
    fn apop_rfc1939_example() {
        // RFC 1939 §7.
        let challenge = b"<1896.697170952@dbc.mtview.ca.us>";
        assert_eq!(
            apop_digest(challenge, b"tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
        let mut users = HashMap::new();
        users.insert("mrose".to_string(), b"tanstaaf".to_vec());
        let auth = Mock { users, down: false };
        assert!(apop_check(
            &auth,
            "mrose",
            challenge,
            b"c4c9334bac560ecc979e58001b3e22fb"
        ));
        assert!(!apop_check(
            &auth,
            "mrose",
            challenge,
            b"c4c9334bac560ecc979e58001b3e22fc"
        ));
        assert!(!apop_check(&auth, "nobody", challenge, b""));
    }

    #[test]
    fn mechanism_names() {
        for m in [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5] {
            assert_eq!(
                Mechanism::parse(m.name().to_lowercase().as_bytes()),
                Some(m)
            );
        }
        assert_eq!(Mechanism::parse(b"GSSAPI"), None);
        let mock = Mock {
            users: HashMap::new(),
            down: false,
        };
        assert_eq!(mechanisms(&mock)[0], Mechanism::CramMd5);
    }
}
