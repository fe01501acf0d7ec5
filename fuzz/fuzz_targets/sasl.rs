#![no_main]
//! The SASL response decoder and every mechanism's state machine must never panic on
//! hostile client lines; a PLAIN response that decodes must split into fields without NUL,
//! and an exchange can only succeed with the right password.
use std::sync::Arc;

use cyrkit::server::auth::{AuthError, Authenticator};
use cyrkit::server::sasl::{
    apop_check, decode_response, parse_plain, Mechanism, ProxyPolicy, Response, SaslServer,
    SaslStep,
};
use libfuzzer_sys::fuzz_target;

/// One user `u` with the secret `pw`.
struct One;

impl Authenticator for One {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
        Ok(user == "u" && password == b"pw")
    }
    fn secret(&self, user: &str) -> Option<Vec<u8>> {
        (user == "u").then(|| b"pw".to_vec())
    }
    fn has_secrets(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    if let Ok(Response::Data(d)) = decode_response(input) {
        if let Ok(p) = parse_plain(&d) {
            assert!(!p.authcid.is_empty() && !p.password.contains(&0));
        }
    }
    let _ = apop_check(&One, "u", b"<1.2@h>", input);
    let mech = [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5][usize::from(sel % 3)];
    let policy = Arc::new(ProxyPolicy {
        admins: vec!["u".into()],
    });
    let mut s = SaslServer::new(mech, Arc::new(One), policy, "h");
    let mut lines = input.split(|&b| b == b'\n');
    let mut step = if sel & 4 != 0 {
        s.start(lines.next())
    } else {
        s.start(None)
    };
    for line in lines {
        match step {
            SaslStep::Challenge(_) => step = s.step(line),
            SaslStep::Done { ref authcid, .. } => {
                assert_eq!(authcid, "u");
                break;
            }
            SaslStep::Failed(_) => break,
        }
    }
});
