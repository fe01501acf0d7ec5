//! `cyrkit serve --lmtp-unix` against a real Cyrus 3.6 spool: Python's smtplib.LMTP
//! delivers; Cyrus's imapd reads the mail back and `reconstruct -n` finds nothing to fix.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cyrus::{require_cyrus, CyrusInstance, CyrusOptions};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn serve(cy: &CyrusInstance, socket: &std::path::Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .arg("serve")
        .arg("-C")
        .arg(cy.conf_path())
        .arg("--lmtp-unix")
        .arg(socket)
        .arg("--lmtp-unix-mode")
        .arg("666")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cyrkit serve");
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

const PY: &str = r#"
import smtplib, sys, json
c = smtplib.LMTP(sys.argv[1])
c.ehlo_or_helo_if_needed = lambda: None
code, _ = c.docmd("LHLO", "tester")
rcpts = sys.argv[2:]
c.mail("sender@example.org")
accepted = []
out = {}
for r in rcpts:
    code, msg = c.rcpt(r)
    out[r] = [code]
    if code == 250:
        accepted.append(r)
msg = ("From: a@example.org\r\nTo: bob@example.org\r\nSubject: caf\xe9 test\r\n"
       "Message-ID: <lmtp-e2e-1@example.org>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n"
       "hello\r\n.dot line\r\n").encode("latin-1")
c.putcmd("data")
code, _ = c.getreply()
assert code == 354, code
c.send(smtplib.quotedata(msg.decode("latin-1")).encode("latin-1") + b"\r\n.\r\n")
for r in accepted:
    code, m = c.getreply()
    out[r].append(code)
c.quit()
print(json.dumps(out))
"#;

#[test]
fn python_lmtp_delivers_into_a_real_cyrus_spool() {
    if !require_cyrus() {
        return;
    }
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for m in ["user.bob", "user.bob.lists", "user.carol", "shared"] {
        admin.create(m).unwrap();
    }
    admin.setacl("user.bob.lists", "anyone", "p").unwrap();
    admin.setacl("shared", "anyone", "lp").unwrap();
    // Mailboxes Cyrus just created have no cyrus.cache yet: the first delivery creates it.
    for m in ["user.bob", "user.bob.lists", "user.carol", "shared"] {
        admin.setacl(m, "cyrus", "lrswipkxtecda").unwrap();
    }
    admin.logout().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp.sock");
    let server = serve(&cy, &socket);
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .arg(&socket)
        .args([
            "bob",
            "bob+lists",
            "carol+nonexist",
            "nobody",
            "+shared",
            "bob@example.org",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"bob": [250, 250], "bob+lists": [250, 250], "carol+nonexist": [250, 250],
            "nobody": [550], "+shared": [250, 250], "bob@example.org": [250, 250]})
    );
    drop(server);
    let mut admin = cy.imap_admin().unwrap();
    // bob's INBOX got one copy: the second recipient `bob@example.org` is a duplicate.
    for (mbox, n) in [
        ("user.bob", 1),
        ("user.bob.lists", 1),
        ("user.carol", 1),
        ("shared", 1),
    ] {
        admin.examine(mbox).unwrap();
        let raw =
            String::from_utf8_lossy(&admin.fetch("1:*", "(UID BODY.PEEK[])").unwrap()).into_owned();
        assert_eq!(raw.matches(" FETCH ").count(), n, "{mbox}: {raw}");
        assert!(raw.contains("Subject: cafX test\r\n"), "{raw}");
        assert!(raw.contains("\r\n\r\nhello\r\n.dot line\r\n"), "{raw}");
        assert!(
            raw.contains(
                "Return-Path: <sender@example.org>\r\nReceived: from tester ([unix socket])"
            ),
            "{raw}"
        );
    }
    admin.logout().unwrap();
    let r = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    for line in text.lines() {
        assert!(
            line.trim().starts_with("user.") || line.trim() == "shared",
            "reconstruct -n: {text}"
        );
    }
}

const PY_RCPT: &str = r#"
import smtplib, sys
c = smtplib.LMTP(sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 3 else smtplib.LMTP(sys.argv[1])
c.docmd("LHLO", "tester")
c.mail("sender@example.org")
code, msg = c.rcpt(sys.argv[-1])
print(code, msg.decode())
c.quit()
"#;

fn rcpt_reply(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_RCPT)
        .args(args)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A user an admin switched off for LMTP with Cyrus's `cyr_deny -s lmtp` is refused by
/// cyrkit exactly as by Cyrus's lmtpd (`verify_user`: IMAP_MAILBOX_DISABLED, 451 4.2.1),
/// while other users and other services are unaffected.
#[test]
fn user_denied_for_lmtp_is_refused_as_cyrus_refuses() {
    if !require_cyrus() {
        return;
    }
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for m in ["user.dora", "user.emil"] {
        admin.create(m).unwrap();
    }
    admin.logout().unwrap();
    let r = cy
        .run_tool("cyr_deny", &["-s", "lmtp", "-m", "no mail", "dora"])
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp.sock");
    let _server = serve(&cy, &socket);
    let sock = socket.to_str().unwrap();
    let port = cy.lmtp_port.to_string();
    let cyrus = rcpt_reply(&["127.0.0.1", &port, "-", "dora"]);
    let ours = rcpt_reply(&[sock, "dora"]);
    assert_eq!(cyrus, "451 4.2.1 Delivery to mailbox is disabled");
    assert_eq!(ours, cyrus);
    assert!(rcpt_reply(&[sock, "emil"]).starts_with("250 "));
}

fn highestmodseq(raw: &str) -> u64 {
    let i = raw.find("HIGHESTMODSEQ ").expect("HIGHESTMODSEQ in SELECT");
    raw[i + 14..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A CONDSTORE/QRESYNC client of Cyrus's imapd sees a delivery cyrkit made: the mailbox's
/// HIGHESTMODSEQ grows and `FETCH ... (CHANGEDSINCE m)` returns exactly the new message,
/// whose MODSEQ is above m (the modseq and header fields Cyrus's own append sets).
#[test]
fn condstore_clients_see_cyrkit_deliveries() {
    if !require_cyrus() {
        return;
    }
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    admin.create("user.fred").unwrap();
    admin.setacl("user.fred", "cyrus", "lrswipkxtecda").unwrap();
    admin.logout().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp.sock");
    let _server = serve(&cy, &socket);
    let sock = socket.to_str().unwrap();
    let deliver = |id: &str| {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import smtplib,sys\nc=smtplib.LMTP(sys.argv[1])\nc.docmd('LHLO','t')\n\
                 r=c.sendmail('s@example.org',['fred'],('Message-ID: <%s@x>\\r\\nSubject: s\\r\\n\\r\\nbody\\r\\n' % sys.argv[2]).encode())\n\
                 assert not r, r\nc.quit()\n",
            )
            .arg(sock)
            .arg(id)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    deliver("one");
    let mut imap = cy.imap_admin().unwrap();
    let sel = imap.ok("SELECT user.fred (CONDSTORE)").unwrap();
    let m1 = highestmodseq(&String::from_utf8_lossy(&sel.raw()));
    imap.ok("UNSELECT").unwrap();
    deliver("two");
    let sel = imap.ok("SELECT user.fred (CONDSTORE)").unwrap();
    let raw = String::from_utf8_lossy(&sel.raw()).into_owned();
    assert!(raw.contains("* 2 EXISTS"), "{raw}");
    let m2 = highestmodseq(&raw);
    assert!(m2 > m1, "HIGHESTMODSEQ {m1} -> {m2}");
    let changed = imap
        .ok(&format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m1})"))
        .unwrap();
    let text = String::from_utf8_lossy(&changed.raw()).into_owned();
    assert_eq!(text.matches(" FETCH ").count(), 1, "{text}");
    assert!(text.contains("UID 2 ") || text.contains("UID 2)"), "{text}");
    let modseq: u64 = text
        .split("MODSEQ (")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MODSEQ in {text}"));
    assert!(modseq > m1 && modseq <= m2, "{m1} < {modseq} <= {m2}");
    let r = cy.run_tool("reconstruct", &["-n", "user.fred"]).unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    assert_eq!(out.trim(), "user.fred", "{out}");
}
