//! Real LMTP clients against an LMTP server writing into a Cyrus spool: Postfix (its `lmtp`
//! transport over `lmtp:inet:` and `lmtp:unix:`), `swaks --protocol LMTP` and Python's
//! `smtplib.LMTP`. Each client reads one reply per recipient after DATA; the tests check that
//! every recipient gets its own result (unknown user 550 5.1.1, the others 250) and that the mail
//! then shows in Cyrus's IMAP exactly once.
//!
//! Each check is a function of the [`LmtpTarget`]: the `#[test]`s run it against Cyrus's own
//! lmtpd now; the `*_cyrkit_*` tests run the same functions against `cyrkit serve --lmtp`.
//! Requires root, Cyrus, Postfix, swaks and python3 (`scripts/test` installs them).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::clients::{describe, inbox_messages, require_tools, run_with_timeout, LmtpTarget};
use support::cyrus::{crlf, free_port, CyrusInstance, CyrusOptions};
use support::postfix::Postfix;
use support::serve::CyrkitServe;

const DOMAIN: &str = "example.test";
/// Users with a mailbox (carol sends); `nobody` has none.
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn addr(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// A Cyrus instance with INBOXes for [`USERS`] (and lmtpd on a UNIX socket too when asked).
fn cyrus(lmtp_unix: bool) -> CyrusInstance {
    let opts = CyrusOptions {
        lmtp_unix,
        ..CyrusOptions::default()
    };
    let cy = CyrusInstance::start(&opts).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for u in USERS {
        admin.create(&format!("user.{u}")).unwrap();
    }
    admin.logout().unwrap();
    cy
}

/// A small message whose body carries `marker` (and a line starting with a dot, which the
/// client must dot-stuff).
fn message(from: &str, subject: &str, marker: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: <{from}>\nTo: undisclosed-recipients:;\nSubject: {subject}\n\
             Message-ID: <{marker}@clients.cyrkit.test>\nDate: Thu, 26 Nov 2026 12:00:00 +0000\n\n\
             marker {marker}\n.leading dot\nend\n"
        )
        .as_bytes(),
    )
}

fn inbox(cy: &CyrusInstance, user: &str) -> Vec<Vec<u8>> {
    inbox_messages(cy, user).unwrap()
}

/// How many messages in `user`'s INBOX contain `needle`.
fn count_in_inbox(cy: &CyrusInstance, user: &str, needle: &str) -> usize {
    inbox(cy, user)
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains(needle))
        .count()
}

/// The marker arrived once in each of `users`' INBOX and not in any of `others`'.
fn assert_delivered_once(cy: &CyrusInstance, marker: &str, users: &[&str], others: &[&str]) {
    for (list, want) in [(users, 1), (others, 0)] {
        for u in list {
            assert_eq!(
                count_in_inbox(cy, u, marker),
                want,
                "{u}'s INBOX should hold {want} copy of {marker}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The checks, one per client, parameterised by the target.

/// Postfix relays one message for alice, bob and an unknown user to `target`: alice and bob
/// are `sent` (2.1.5), the unknown one `bounced` with 550 5.1.1, and the bounce notice reaches
/// the sender carol. Then Cyrus's IMAP shows the message once in alice's and bob's INBOX.
fn deliver_through_postfix(cy: &CyrusInstance, target: &LmtpTarget) {
    let pf = Postfix::start(target).expect("start Postfix");
    let marker = format!("postfix-{}", free_port().unwrap());
    let rcpts = [addr("alice"), addr("bob"), addr("nobody")];
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = message(&addr("carol"), "via postfix", &marker);
    let id = pf.submit(&addr("carol"), &rcpt_refs, &msg).unwrap();
    let results = pf.wait_results(&id, &rcpt_refs, DELIVERY_TIMEOUT).unwrap();
    let log = pf.diagnostics();
    for r in &results[..2] {
        assert_eq!(r.status, "sent", "{r:?}\n{log}");
        assert_eq!(r.dsn, "2.1.5", "{r:?}\n{log}");
        assert!(r.text.starts_with("250 2.1.5"), "{r:?}\n{log}");
    }
    let unknown = &results[2];
    assert_eq!(unknown.status, "bounced", "{unknown:?}\n{log}");
    assert_eq!(unknown.dsn, "5.1.1", "{unknown:?}\n{log}");
    assert!(unknown.text.contains("550 5.1.1"), "{unknown:?}\n{log}");
    // The bounce notice goes back over the same LMTP target, to carol.
    pf.wait_queue_empty(DELIVERY_TIMEOUT).unwrap();
    assert_delivered_once(cy, &marker, &["alice", "bob"], &[]);
    let notices: Vec<String> = inbox(cy, "carol")
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .filter(|m| m.contains(&marker))
        .collect();
    assert_eq!(notices.len(), 1, "carol should have one bounce notice");
    assert!(
        notices[0].contains("MAILER-DAEMON") && notices[0].contains(&addr("nobody")),
        "bounce notice:\n{}",
        notices[0]
    );
}

/// `swaks --protocol LMTP` to alice, bob and an unknown user: swaks shows the 550 5.1.1 at RCPT
/// and one 250 per accepted recipient after DATA; alice and bob get the message.
fn deliver_with_swaks(cy: &CyrusInstance, target: &LmtpTarget) {
    let marker = format!("swaks-{}", free_port().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("message.eml");
    std::fs::write(&data, message(&addr("carol"), "via swaks", &marker)).unwrap();
    let out = run_with_timeout(
        Command::new("swaks")
            .args(["--protocol", "LMTP", "--helo", "client.cyrkit.test"])
            .args(target.swaks_args())
            .args(["--from", &addr("carol")])
            .args([
                "--to",
                &format!("{},{},{}", addr("alice"), addr("nobody"), addr("bob")),
            ])
            .arg("--data")
            .arg(&data),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let ctx = describe(&out);
    // swaks marks server lines `<-` (accepted) and `<**` (error).
    let rcpt_rejected = transcript
        .lines()
        .filter(|l| l.starts_with("<**") && l.contains("550 5.1.1"))
        .count();
    assert_eq!(rcpt_rejected, 1, "one 550 5.1.1 for nobody\n{ctx}");
    let after_data: Vec<&str> = transcript
        .lines()
        .skip_while(|l| !l.contains(" 354 "))
        .filter(|l| l.starts_with("<-") && l.contains(" 250 2.1.5"))
        .collect();
    assert_eq!(after_data.len(), 2, "one 250 per accepted recipient\n{ctx}");
    assert_delivered_once(cy, &marker, &["alice", "bob"], &["carol"]);
}

/// What the Python script prints: `rcpt <code> <text>` per RCPT, then `data <code> <text>`
/// per accepted recipient, read with `getreply()` after the first.
const PYTHON_LMTP: &str = r#"
import smtplib, sys
host, port, sender, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rcpts = sys.argv[5:]
c = smtplib.LMTP(host, port) if not host.startswith("/") else smtplib.LMTP(host)
c.ehlo()
c.mail(sender)
accepted = []
for r in rcpts:
    code, text = c.rcpt(r)
    print("rcpt", r, code, text.decode().replace("\n", " "))
    if code // 100 == 2:
        accepted.append(r)
msg = open(data, "rb").read()
replies = [c.data(msg)]
for _ in accepted[1:]:
    replies.append(c.getreply())
for r, (code, text) in zip(accepted, replies):
    print("data", r, code, text.decode().replace("\n", " "))
c.quit()
"#;

/// Python's `smtplib.LMTP`: RCPT replies, then one reply per accepted recipient after DATA
/// (`data()` reads the first, `getreply()` the rest).
fn deliver_with_python(cy: &CyrusInstance, target: &LmtpTarget) {
    let marker = format!("python-{}", free_port().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("message.eml");
    std::fs::write(&data, message(&addr("carol"), "via python", &marker)).unwrap();
    let (host, port) = target.python_host_port();
    let out = run_with_timeout(
        Command::new("python3")
            .args(["-c", PYTHON_LMTP, &host, &port.to_string(), &addr("carol")])
            .arg(&data)
            .args([addr("bob"), addr("nobody"), addr("alice")]),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // Keep `kind rcpt code enhanced-code`: the rest (session ids) differs per run.
            l.split(' ').take(4).collect::<Vec<_>>().join(" ")
        })
        .collect();
    let want = [
        format!("rcpt {} 250 2.1.5", addr("bob")),
        format!("rcpt {} 550 Mailbox", addr("nobody")),
        format!("rcpt {} 250 2.1.5", addr("alice")),
        format!("data {} 250 2.1.5", addr("bob")),
        format!("data {} 250 2.1.5", addr("alice")),
    ];
    assert_eq!(lines, want, "{}", describe(&out));
    let nobody_line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("nobody"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(nobody_line.contains("5.1.1"), "{nobody_line}");
    assert_delivered_once(cy, &marker, &["alice", "bob"], &["carol"]);
}

// ------------------------------------------------------------------------------------------
// Against Cyrus's lmtpd.

#[test]
fn postfix_to_cyrus_lmtpd_inet() {
    if !require_tools(&["postfix", "postqueue"]) {
        return;
    }
    let cy = cyrus(false);
    deliver_through_postfix(&cy, &LmtpTarget::Inet(cy.lmtp_port));
}

#[test]
fn postfix_to_cyrus_lmtpd_unix() {
    if !require_tools(&["postfix", "postqueue"]) {
        return;
    }
    let cy = cyrus(true);
    deliver_through_postfix(&cy, &LmtpTarget::Unix(cy.lmtp_socket()));
}

#[test]
fn swaks_to_cyrus_lmtpd() {
    if !require_tools(&["swaks"]) {
        return;
    }
    let cy = cyrus(true);
    deliver_with_swaks(&cy, &LmtpTarget::Inet(cy.lmtp_port));
    deliver_with_swaks(&cy, &LmtpTarget::Unix(cy.lmtp_socket()));
}

#[test]
fn python_lmtp_to_cyrus_lmtpd() {
    if !require_tools(&["python3"]) {
        return;
    }
    let cy = cyrus(true);
    deliver_with_python(&cy, &LmtpTarget::Inet(cy.lmtp_port));
    deliver_with_python(&cy, &LmtpTarget::Unix(cy.lmtp_socket()));
}

// ------------------------------------------------------------------------------------------
// Against `cyrkit serve --lmtp` over the same kind of spool (Cyrus's imapd checks the result).

/// `cyrkit serve --lmtp` on a free port and `--lmtp-unix` in the instance's socket directory,
/// both over `cy`'s spool (two servers, as an admin might run them).
fn cyrkit_lmtp(cy: &CyrusInstance) -> (CyrkitServe, LmtpTarget, CyrkitServe, LmtpTarget) {
    let port = free_port().unwrap();
    let inet = CyrkitServe::lmtp_inet(cy, port).expect("start cyrkit serve --lmtp");
    let socket = cy.root().join("run/socket/cyrkit-lmtp");
    let unix = CyrkitServe::lmtp_unix(cy, &socket).expect("start cyrkit serve --lmtp-unix");
    (inet, LmtpTarget::Inet(port), unix, LmtpTarget::Unix(socket))
}

#[test]
fn real_clients_to_cyrkit_lmtp() {
    if !require_tools(&["postfix", "postqueue", "swaks", "python3"]) {
        return;
    }
    let cy = cyrus(true);
    let (mut inet, inet_target, mut unix, unix_target) = cyrkit_lmtp(&cy);
    for target in [&inet_target, &unix_target] {
        deliver_through_postfix(&cy, target);
        deliver_with_swaks(&cy, target);
        deliver_with_python(&cy, target);
    }
    inet.assert_clean_stop();
    unix.assert_clean_stop();
}

#[test]
fn cyrkit_serve_failure_to_start_is_reported_with_its_output() {
    // Runs anywhere: the harness must surface why `cyrkit serve` did not come up.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-imapd.conf");
    let port = free_port().unwrap();
    let err = CyrkitServe::start(
        &missing,
        &["--lmtp".into(), format!("127.0.0.1:{port}")],
        &[support::serve::Ready::Tcp(port)],
        false,
        dir.path(),
    )
    .err()
    .expect("cyrkit serve with a missing config must not start");
    let text = err.to_string();
    assert!(text.contains("exited during start-up"), "{text}");
    assert!(text.contains("no-such-imapd.conf"), "{text}");
    assert!(!Path::new(&missing).exists());
}
