//! `cyrkit serve --pop3` against Cyrus 3.6's pop3d on the same spool: the same answers for
//! the same commands (greeting shape, CAPA, STAT, LIST, UIDL, RETR, TOP, errors), then a DELE +
//! QUIT on cyrkit that Cyrus's IMAP and quota see and `reconstruct -n` finds clean.

mod support;

use std::process::{Child, Command, Stdio};

use support::cyrus::{chown_cyrus, crlf, free_port, require_cyrus, CyrusInstance, CyrusOptions};
use support::pop3::{quota_used, shape, Pop};

struct Cyrkit(Child);

impl Drop for Cyrkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_cyrkit(cy: &CyrusInstance, port: u16) -> Cyrkit {
    let passwd = cy.root().join("pop3.passwd");
    std::fs::write(&passwd, "alice:{PLAIN}secret\nbob:{PLAIN}secret\n").unwrap();
    chown_cyrus(&passwd).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(["serve", "-C"])
        .arg(cy.conf_path())
        .args(["--pop3", &format!("127.0.0.1:{port}"), "--passwd-file"])
        .arg(&passwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cyrkit serve");
    Cyrkit(child)
}

fn message(i: usize) -> Vec<u8> {
    let mut body = String::new();
    for n in 0..(i * 7 + 3) {
        body.push_str(&format!("body line {n} of message {i}\n"));
        if n % 5 == 1 {
            body.push_str(".a line with a leading dot\n");
        }
    }
    crlf(
        format!(
            "From: sender@example.org\nTo: alice@example.com\nSubject: pop3 test {i}\n\
             Message-ID: <pop3-{i}@example.org>\n\n{body}"
        )
        .as_bytes(),
    )
}

/// Log in with USER/PASS and run the read-only commands; the transcript.
fn transcript(port: u16) -> Vec<String> {
    let mut p = Pop::connect(port);
    let mut t = vec![shape(&p.line())];
    t.push(shape(&p.cmd("CAPA", true)));
    for bad in ["STAT", "LIST", "PASS x", "USER ", "FOO"] {
        t.push(p.cmd(bad, false));
    }
    t.push(p.cmd("USER alice", false));
    t.push(shape(&p.cmd("PASS secret", false)));
    t.push(shape(&p.cmd("CAPA", true)));
    for c in [
        "STAT",
        "LIST",
        "LIST 2",
        "UIDL",
        "UIDL 3",
        "RETR 1",
        "RETR 3",
        "TOP 2 0",
        "TOP 2 3",
        "TOP 3 100",
        "LIST 0",
        "LIST 9",
        "LIST x",
        "LIST 1 2",
        "RETR",
        "TOP 1",
        "TOP 1 x",
        "TOP x 1",
        "DELE 1",
        "LIST 1",
        "STAT",
        "RSET",
        "STAT",
        "NOOP",
        "LAST",
        "USER bob",
    ] {
        let multi =
            ["LIST", "UIDL"].contains(&c) || c.starts_with("RETR ") || c.starts_with("TOP ");
        t.push(format!("{c} => {}", p.cmd(c, multi)));
    }
    // Leave without QUIT: nothing must change.
    t
}

fn reconstruct_report(cy: &CyrusInstance) -> String {
    let r = cy
        .run_tool("reconstruct", &["-n", "-r", "user.alice"])
        .unwrap();
    String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr)
}

#[test]
fn cyrkit_pop3_answers_as_cyrus_pop3d() {
    if !require_cyrus() {
        return;
    }
    let opts = CyrusOptions::default().with("servername", "pop3.test");
    let mut cy = CyrusInstance::start(&opts).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    admin.create("user.alice").unwrap();
    admin
        .command("SETQUOTA user.alice (STORAGE 100000)")
        .unwrap();
    admin.logout().unwrap();
    let mut lmtp = cy.lmtp().unwrap();
    for i in 1..=4 {
        let m = message(i);
        let r = lmtp.deliver("sender@example.org", &["alice"], &m).unwrap();
        assert!(r.iter().all(|r| r.code == 250), "{r:?}");
    }
    lmtp.quit().unwrap();

    let port = free_port().unwrap();
    let _ck = start_cyrkit(&cy, port);
    let theirs = transcript(cy.pop3_port);
    let ours = transcript(port);
    for (a, b) in theirs.iter().zip(&ours) {
        assert_eq!(a, b, "Cyrus pop3d vs cyrkit");
    }
    assert_eq!(theirs.len(), ours.len());

    // Each uidl_format, Cyrus restarted with it.
    for fmt in ["uidonly", "dovecot", "courier"] {
        cy.stop().unwrap();
        let conf = cy.conf_path();
        let text = std::fs::read_to_string(&conf).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("uidl_format:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &format!("uidl_format: {fmt}\n");
        std::fs::write(&conf, text).unwrap();
        cy.start_master().unwrap();
        let port = free_port().unwrap();
        let _ck = start_cyrkit(&cy, port);
        let mut a = Pop::connect(cy.pop3_port);
        let mut b = Pop::connect(port);
        for p in [&mut a, &mut b] {
            p.line();
            p.cmd("USER alice", false);
            p.cmd("PASS secret", false);
        }
        assert_eq!(
            a.cmd("UIDL", true),
            b.cmd("UIDL", true),
            "uidl_format {fmt}"
        );
    }

    // DELE 2 and 4 + QUIT on cyrkit: Cyrus sees them gone and the quota lowered.
    let mut imap = cy.imap_login("alice").unwrap();
    imap.examine("INBOX").unwrap();
    assert_eq!(imap.fetch_summary().unwrap().len(), 4);
    imap.logout().unwrap();
    let port = free_port().unwrap();
    let _ck = start_cyrkit(&cy, port);
    let used_before = quota_used(&cy, "user.alice");
    let baseline = reconstruct_report(&cy);
    let mut p = Pop::connect(port);
    p.line();
    p.cmd("USER alice", false);
    assert!(p
        .cmd("PASS secret", false)
        .starts_with("+OK Mailbox locked and ready"));
    let size_of = |reply: String| -> u64 {
        reply
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let gone = size_of(p.cmd("LIST 2", false)) + size_of(p.cmd("LIST 4", false));
    assert_eq!(p.cmd("DELE 2", false), "+OK message deleted\r\n");
    assert_eq!(p.cmd("DELE 4", false), "+OK message deleted\r\n");
    assert_eq!(p.cmd("QUIT", false), "+OK\r\n");
    let mut imap = cy.imap_login("alice").unwrap();
    imap.examine("INBOX").unwrap();
    let uids: Vec<u64> = imap
        .fetch_summary()
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, vec![1, 3]);
    imap.logout().unwrap();
    assert_eq!(
        quota_used(&cy, "user.alice"),
        used_before - gone,
        "quota usage lowered by the sizes"
    );
    // reconstruct -n names each mailbox it visits; any repair it would make adds lines.
    assert_eq!(
        reconstruct_report(&cy),
        baseline,
        "reconstruct -n after the QUIT"
    );
    assert_eq!(baseline.trim(), "user.alice");

    // user_deny.db written by cyr_deny: both servers refuse alice for pop3 after USER.
    let r = cy
        .run_tool(
            "cyr_deny",
            &["-s", "pop3", "-m", "POP is off for you", "alice"],
        )
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    for port in [cy.pop3_port, port] {
        let mut p = Pop::connect(port);
        p.line();
        assert_eq!(
            p.cmd("USER alice", false),
            "+OK Name is a valid mailbox\r\n"
        );
        assert_eq!(
            p.cmd("PASS secret", false),
            "-ERR [SYS/TEMP] POP is off for you\r\n",
            "port {port}"
        );
    }
    // Python's poplib fetches the same from cyrkit (bob is not denied).
    let mut admin = cy.imap_admin().unwrap();
    admin.create("user.bob").unwrap();
    admin.logout().unwrap();
    let mut lmtp = cy.lmtp().unwrap();
    lmtp.deliver("sender@example.org", &["bob"], &message(1))
        .unwrap();
    lmtp.quit().unwrap();
    let py = |port: u16| {
        let script = format!(
            "import poplib\nm = poplib.POP3('127.0.0.1', {port})\nm.user('bob')\nm.pass_('secret')\n\
             print(m.stat(), m.uidl()[1])\nprint(b'\\n'.join(m.retr(1)[1]).decode())\nm.quit()\n"
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(py(cy.pop3_port), py(port), "poplib: Cyrus pop3d vs cyrkit");
}
