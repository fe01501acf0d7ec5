//! `cyrkit::server::auth::Saslauthd` against Debian's real saslauthd (package `sasl2-bin`),
//! run by `support::saslauthd` (shadow back end, throw-away user, private socket).

mod support;

use std::sync::Arc;

use cyrkit::server::auth::{Authenticator, Saslauthd};
use cyrkit::server::sasl::{encode_challenge, Mechanism, ProxyPolicy, SaslServer, SaslStep};
use support::saslauthd::{require_saslauthd, Instance, PASSWORD};

#[test]
fn saslauthd_checks_passwords() {
    if !require_saslauthd() {
        return;
    }
    let mut inst = Instance::start();
    let auth = Saslauthd::new(inst.mux(), "pop", "");
    let user = inst.user.clone();
    assert!(
        auth.check_password(&user, PASSWORD.as_bytes()).unwrap(),
        "right password refused: {}",
        inst.log()
    );
    assert!(!auth.check_password(&user, b"wrong").unwrap());
    assert!(!auth
        .check_password(&user, &PASSWORD.as_bytes()[1..])
        .unwrap());
    assert!(!auth
        .check_password("cyrkit-no-such-user", PASSWORD.as_bytes())
        .unwrap());
    // saslauthd refuses fields over 256 bytes; the client answers `false` without asking.
    assert!(!auth.check_password(&user, &[b'x'; 300]).unwrap());
    assert_eq!(auth.secret(&user), None);

    // Several sessions at once, each on its own connection.
    let auth: Arc<dyn Authenticator> = Arc::new(auth);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (auth, user) = (auth.clone(), user.clone());
            std::thread::spawn(move || {
                let pw: &[u8] = if i % 2 == 0 {
                    PASSWORD.as_bytes()
                } else {
                    b"nope"
                };
                auth.check_password(&user, pw).unwrap() == (i % 2 == 0)
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }

    // A whole SASL PLAIN exchange as a POP3 session would run it.
    let mut sasl = SaslServer::new(
        Mechanism::Plain,
        auth.clone(),
        Arc::new(ProxyPolicy::default()),
        "localhost",
    );
    let ir = encode_challenge(format!("\0{user}\0{PASSWORD}").as_bytes());
    match sasl.start(Some(ir.as_bytes())) {
        SaslStep::Done { authcid, authzid } => {
            assert_eq!(
                (authcid.as_str(), authzid.as_str()),
                (user.as_str(), user.as_str())
            )
        }
        other => panic!("{other:?}"),
    }

    assert!(inst.stop(), "saslauthd did not stop on SIGTERM");
    // Gone: an error (temporary failure), never a yes or a plain no.
    assert!(auth.check_password(&user, PASSWORD.as_bytes()).is_err());
}
