//! `cyrkit serve --pop3` modes and options end to end, on a real Cyrus 3.6 spool with Cyrus's
//! own imapd, pop3d and tools as the witnesses:
//! - `recent:` logins list only the last 30 days (internaldates set with IMAP APPEND), a
//!   normal login of the same user still lists everything;
//! - a connection dropped after DELE changes nothing (Cyrus IMAP, quota, a new session);
//! - wrong passwords fail after `failedloginpause`, and an unknown user gets the very same
//!   bytes; a user without a mailbox is refused where Cyrus's pop3d would autocreate one;
//! - `popsubfolders` (`alice+folder`) and `popuseimapflags` (\Deleted hidden, \Seen at QUIT)
//!   answered as Cyrus's pop3d answers, with the flags seen through Cyrus IMAP;
//! - `popminpoll`: LOGIN-DELAY as Cyrus's pop3d, the last login shared between the two;
//! - saslauthd (Debian's, shadow back end) as the password store.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::cyrus::{chown_cyrus, crlf, free_port, require_cyrus, CyrusInstance, CyrusOptions};
use support::pop3::{imap_date, is_ready, now, quota_used, shape, uidl_uids, Pop};
use support::saslauthd;
use support::serve::{CyrkitServe, Ready};

const DAY: i64 = 86_400;

fn message(tag: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: sender@example.org\nTo: alice@example.com\nSubject: {tag}\n\
             Message-ID: <{tag}@example.org>\n\nbody of {tag}\n.dotted line\n"
        )
        .as_bytes(),
    )
}

/// `cyrkit serve -C conf --pop3 127.0.0.1:port` as the cyrus user, with `extra` flags.
fn serve(cy: &CyrusInstance, conf: &Path, name: &str, extra: &[String]) -> (CyrkitServe, u16) {
    let port = free_port().unwrap();
    let log_dir = cy.root().join(format!("serve-{name}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut args = vec![
        "--pop3".to_string(),
        format!("{}:{port}", Ipv4Addr::LOCALHOST),
    ];
    args.extend_from_slice(extra);
    let s = CyrkitServe::start(conf, &args, &[Ready::Tcp(port)], true, &log_dir)
        .expect("start cyrkit serve");
    (s, port)
}

/// A password file the cyrus user can read (`{PLAIN}` secrets: APOP and CRAM-MD5 work too).
fn passwd_file(cy: &CyrusInstance, lines: &str) -> Vec<String> {
    let path = cy.root().join("pop3.passwd");
    std::fs::write(&path, lines).unwrap();
    chown_cyrus(&path).unwrap();
    vec!["--passwd-file".into(), path.display().to_string()]
}

/// STAT's message count.
fn stat_count(p: &mut Pop) -> usize {
    let r = p.cmd("STAT", false);
    r.split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("STAT: {r}"))
}

/// UIDs and flags of `mailbox` as Cyrus's imapd shows them to `user` (EXAMINE: read-only).
fn imap_flags(cy: &CyrusInstance, user: &str, mailbox: &str) -> Vec<(u64, Vec<String>)> {
    let mut imap = cy.imap_login(user).unwrap();
    imap.examine(mailbox).unwrap();
    let out = imap
        .fetch_summary()
        .unwrap()
        .into_iter()
        .map(|m| (m.uid, m.flags))
        .collect();
    imap.logout().unwrap();
    out
}

/// A Cyrus instance with `mailboxes` created by the admin.
fn cyrus_with(opts: &CyrusOptions, mailboxes: &[&str]) -> CyrusInstance {
    let cy = CyrusInstance::start(opts).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for m in mailboxes {
        admin.create(m).unwrap();
    }
    admin.logout().unwrap();
    cy
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed())
}

#[test]
fn imap_dates() {
    assert_eq!(imap_date(0), "01-Jan-1970 00:00:00 +0000");
    assert_eq!(imap_date(951_782_400 + 3661), "29-Feb-2000 01:01:01 +0000");
    assert_eq!(imap_date(1_700_000_000), "14-Nov-2023 22:13:20 +0000");
}

#[test]
fn recent_mode_dropped_connection_and_failed_logins() {
    if !require_cyrus() {
        return;
    }
    let opts = CyrusOptions::default().with("failedloginpause", "1");
    let cy = cyrus_with(&opts, &["user.alice"]);
    let mut admin = cy.imap_admin().unwrap();
    admin
        .setquota("user.alice", &[("STORAGE", 100_000)])
        .unwrap();
    admin.logout().unwrap();
    // UIDs 1..4 with internaldates 60, 31, 29 days and one hour ago.
    let mut imap = cy.imap_login("alice").unwrap();
    let t = now();
    for (i, age) in [60 * DAY, 31 * DAY, 29 * DAY, 3600].iter().enumerate() {
        let date = imap_date(t - age);
        imap.append("INBOX", &[], Some(&date), &message(&format!("m{i}")))
            .unwrap();
    }
    imap.logout().unwrap();

    let args = passwd_file(&cy, "alice:{PLAIN}secret\ncarol:{PLAIN}secret\n");
    let (_ck, port) = serve(&cy, &cy.conf_path(), "recent", &args);

    // recent:alice lists the last 30 days only, numbered from 1, with the usual UIDLs.
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("recent:alice", "secret")));
    assert_eq!(stat_count(&mut p), 2);
    let recent_uidl = p.cmd("UIDL", true);
    assert_eq!(uidl_uids(&recent_uidl), vec![3, 4], "{recent_uidl}");
    assert!(p.cmd("RETR 1", true).contains("Subject: m2\r\n"));
    assert_eq!(p.cmd("QUIT", false), "+OK\r\n");
    // So does AUTH PLAIN with the prefix in the authentication id.
    let (mut p, _) = Pop::greeted(port);
    let ir = base64(b"\0recent:alice\0secret");
    assert!(is_ready(&p.cmd(&format!("AUTH PLAIN {ir}"), false)));
    assert_eq!(uidl_uids(&p.cmd("UIDL", true)), vec![3, 4]);
    p.cmd("QUIT", false);

    // A normal login sees all four, with the UIDLs Cyrus's pop3d gives them.
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice", "secret")));
    assert_eq!(stat_count(&mut p), 4);
    let ours = p.cmd("UIDL", true);
    p.cmd("QUIT", false);
    let (mut c, _) = Pop::greeted(cy.pop3_port);
    assert!(is_ready(&c.login("alice", "x")));
    assert_eq!(ours, c.cmd("UIDL", true), "UIDL: cyrkit vs Cyrus pop3d");
    c.cmd("QUIT", false);
    // The recent list's UIDLs are the full list's for the same messages.
    let uidls = |l: &str| -> Vec<String> {
        l.lines()
            .skip(1)
            .filter(|l| *l != ".")
            .filter_map(|l| Some(l.split_once(' ')?.1.to_string()))
            .collect()
    };
    assert_eq!(uidls(&recent_uidl), uidls(&ours)[2..]);

    // DELE, RETR, then the connection drops: nothing changes.
    let flags_before = imap_flags(&cy, "alice", "INBOX");
    let used_before = quota_used(&cy, "user.alice");
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice", "secret")));
    assert_eq!(p.cmd("DELE 1", false), "+OK message deleted\r\n");
    assert_eq!(p.cmd("DELE 2", false), "+OK message deleted\r\n");
    assert!(p.cmd("RETR 3", true).ends_with("\r\n.\r\n"));
    p.hang_up();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(imap_flags(&cy, "alice", "INBOX"), flags_before);
    assert_eq!(flags_before.len(), 4);
    assert_eq!(quota_used(&cy, "user.alice"), used_before);
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice", "secret")));
    assert_eq!(stat_count(&mut p), 4);
    p.cmd("QUIT", false);

    // Failed logins: at least failedloginpause (1 s), and an unknown user gets the same
    // bytes as a wrong password, for every way of logging in.
    let (mut p, _) = Pop::greeted(port);
    let chal = |g: &str| g.trim_end().rsplit(' ').next().unwrap_or("").to_string();
    for (user, pass) in [
        ("alice", "wrong"),
        ("nosuchuser", "wrong"),
        ("nosuchuser", "secret"),
    ] {
        let (r, took) = timed(|| p.login(user, pass));
        assert_eq!(r, "-ERR [AUTH] Invalid login\r\n", "{user}/{pass}");
        assert!(took >= Duration::from_secs(1), "{user}/{pass}: {took:?}");
        let ir = base64(format!("\0{user}\0{pass}").as_bytes());
        let (r, took) = timed(|| p.cmd(&format!("AUTH PLAIN {ir}"), false));
        assert_eq!(
            r, "-ERR [AUTH] authenticating: authentication failure\r\n",
            "AUTH PLAIN {user}/{pass}"
        );
        assert!(
            took >= Duration::from_secs(1),
            "AUTH {user}/{pass}: {took:?}"
        );
    }
    p.cmd("QUIT", false);
    for user in ["alice", "nosuchuser"] {
        let (mut p, greeting) = Pop::greeted(port);
        let c = chal(&greeting);
        assert!(
            c.starts_with('<') && c.ends_with('>'),
            "APOP offered: {greeting}"
        );
        let digest = md5_hex(format!("{c}wrong").as_bytes());
        let (r, took) = timed(|| p.cmd(&format!("APOP {user} {digest}"), false));
        assert_eq!(r, "-ERR [AUTH] authenticating: authentication failure\r\n");
        assert!(took >= Duration::from_secs(1), "APOP {user}: {took:?}");
        // The right digest works (the secret is the {PLAIN} one).
        let digest = md5_hex(format!("{c}secret").as_bytes());
        let r = p.cmd(&format!("APOP {user} {digest}"), false);
        assert_eq!(is_ready(&r), user == "alice", "APOP {user}: {r}");
    }

    // carol has a password but no mailbox: cyrkit refuses (no autocreate, see
    // cyrkit-serve(1)); Cyrus's pop3d creates user.carol, after which cyrkit serves it.
    let (mut p, _) = Pop::greeted(port);
    let (r, took) = timed(|| p.login("carol", "secret"));
    assert_eq!(
        r,
        "-ERR [SYS/TEMP] Unable to open maildrop: Mailbox does not exist\r\n"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    let (mut c, _) = Pop::greeted(cy.pop3_port);
    assert!(is_ready(&c.login("carol", "x")), "Cyrus pop3d autocreates");
    c.cmd("QUIT", false);
    assert!(is_ready(&p.login("carol", "secret")));
    assert_eq!(p.cmd("STAT", false), "+OK 0 0\r\n");
    p.cmd("QUIT", false);
}

#[test]
fn subfolders_and_imapflags_as_cyrus() {
    if !require_cyrus() {
        return;
    }
    let opts = CyrusOptions::default()
        .with("popsubfolders", "yes")
        .with("popuseimapflags", "yes");
    let cy = cyrus_with(&opts, &["user.alice", "user.alice.folder"]);
    let mut imap = cy.imap_login("alice").unwrap();
    imap.append("INBOX", &[], None, &message("inbox-1"))
        .unwrap();
    for i in 1..=4 {
        imap.append("INBOX.folder", &[], None, &message(&format!("folder-{i}")))
            .unwrap();
    }
    // UID 2 of the folder is \Deleted but not expunged: hidden with popuseimapflags.
    imap.select("INBOX.folder").unwrap();
    imap.command("UID STORE 2 +FLAGS (\\Deleted)").unwrap();
    imap.logout().unwrap();

    let args = passwd_file(&cy, "alice:{PLAIN}secret\n");
    let (_ck, port) = serve(&cy, &cy.conf_path(), "folders", &args);

    // The same answers from both servers for alice+folder and alice.
    let transcript = |port: u16, user: &str| -> Vec<String> {
        let (mut p, _) = Pop::greeted(port);
        let mut t = vec![shape(&p.login(user, "secret"))];
        for c in ["STAT", "LIST", "UIDL", "RETR 2", "TOP 3 0", "LIST 4"] {
            let multi = c != "STAT" && c != "LIST 4";
            t.push(format!("{c} => {}", p.cmd(c, multi)));
        }
        p.hang_up();
        t
    };
    for user in ["alice+folder", "alice"] {
        let (theirs, ours) = (transcript(cy.pop3_port, user), transcript(port, user));
        assert_eq!(theirs, ours, "{user}: Cyrus pop3d vs cyrkit");
    }
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice+folder", "secret")));
    assert_eq!(uidl_uids(&p.cmd("UIDL", true)), vec![1, 3, 4]);
    p.hang_up();
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice", "secret")));
    assert_eq!(stat_count(&mut p), 1);
    p.hang_up();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        imap_flags(&cy, "alice", "INBOX.folder")
            .iter()
            .all(|(_, f)| !f.iter().any(|f| f == "\\Seen")),
        "RETRs without QUIT set no \\Seen"
    );

    // RETR 1 and 3 (UIDs 1 and 4), TOP 2 (UID 3), QUIT: \Seen on the RETR'd ones only.
    let (mut p, _) = Pop::greeted(port);
    assert!(is_ready(&p.login("alice+folder", "secret")));
    assert!(p.cmd("RETR 1", true).contains("Subject: folder-1\r\n"));
    assert!(p.cmd("RETR 3", true).contains("Subject: folder-4\r\n"));
    assert!(p.cmd("TOP 2 0", true).contains("Subject: folder-3\r\n"));
    assert_eq!(p.cmd("QUIT", false), "+OK\r\n");
    let flags = imap_flags(&cy, "alice", "INBOX.folder");
    let has = |uid: u64, flag: &str| {
        flags
            .iter()
            .find(|(u, _)| *u == uid)
            .is_some_and(|(_, f)| f.iter().any(|f| f == flag))
    };
    assert_eq!(flags.len(), 4, "{flags:?}");
    assert!(has(1, "\\Seen") && has(4, "\\Seen"), "{flags:?}");
    assert!(!has(3, "\\Seen") && !has(2, "\\Seen"), "{flags:?}");
    assert!(has(2, "\\Deleted"), "{flags:?}");
    // The INBOX was not touched.
    let inbox = imap_flags(&cy, "alice", "INBOX");
    assert!(
        inbox.len() == 1 && !inbox[0].1.iter().any(|f| f == "\\Seen"),
        "{inbox:?}"
    );
    let r = cy
        .run_tool("reconstruct", &["-n", "-r", "user.alice"])
        .unwrap();
    let report = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        ["user.alice", "user.alice.folder"],
        "reconstruct -n: {report}{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn popminpoll_login_delay_as_cyrus() {
    if !require_cyrus() {
        return;
    }
    let opts = CyrusOptions::default().with("popminpoll", "1");
    let cy = cyrus_with(&opts, &["user.alice", "user.bob"]);
    let args = passwd_file(&cy, "alice:{PLAIN}secret\nbob:{PLAIN}secret\n");
    let (_ck, port) = serve(&cy, &cy.conf_path(), "minpoll", &args);

    let capa = |port: u16| {
        let (mut p, _) = Pop::greeted(port);
        let c = p.cmd("CAPA", true);
        p.cmd("QUIT", false);
        c.lines()
            .find(|l| l.starts_with("LOGIN-DELAY"))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(capa(port), "LOGIN-DELAY 60");
    assert_eq!(capa(port), capa(cy.pop3_port));

    // A login and QUIT on each server, then a second login on each: refused alike.
    let mut replies = Vec::new();
    for (port, user) in [(port, "alice"), (cy.pop3_port, "bob")] {
        let (mut p, _) = Pop::greeted(port);
        assert!(is_ready(&p.login(user, "secret")));
        assert_eq!(p.cmd("QUIT", false), "+OK\r\n");
        let (mut p, _) = Pop::greeted(port);
        replies.push(p.login(user, "secret"));
    }
    assert_eq!(
        replies[0],
        "-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n"
    );
    assert_eq!(replies[0], replies[1], "cyrkit vs Cyrus pop3d");
    // The last login time is the mailbox's: each server honours the other's.
    let (mut p, _) = Pop::greeted(port);
    assert_eq!(p.login("bob", "secret"), replies[0]);
    let (mut p, _) = Pop::greeted(cy.pop3_port);
    assert_eq!(p.login("alice", "x"), replies[0]);
}

#[test]
fn saslauthd_logins() {
    if !require_cyrus() || !saslauthd::require_saslauthd() {
        return;
    }
    let sa = saslauthd::Instance::start();
    let user = sa.user.clone();
    let cy = cyrus_with(&CyrusOptions::default(), &[&format!("user.{user}")]);
    let mut imap = cy.imap_login(&user).unwrap();
    imap.append("INBOX", &[], None, &message("via-saslauthd"))
        .unwrap();
    imap.logout().unwrap();
    // The socket directory is root's: this server runs as root (not as cyrus) to reach it.
    let port = free_port().unwrap();
    let log_dir = cy.root().join("serve-saslauthd");
    std::fs::create_dir_all(&log_dir).unwrap();
    let args = vec![
        "--pop3".to_string(),
        format!("{}:{port}", Ipv4Addr::LOCALHOST),
        "--saslauthd".into(),
        sa.mux().display().to_string(),
    ];
    let _ck = CyrkitServe::start(&cy.conf_path(), &args, &[Ready::Tcp(port)], false, &log_dir)
        .expect("start cyrkit serve");

    let (mut p, greeting) = Pop::greeted(port);
    assert!(
        !greeting.trim_end().ends_with('>'),
        "no APOP without cleartext secrets: {greeting}"
    );
    let (r, took) = timed(|| p.login(&user, "wrong"));
    assert_eq!(r, "-ERR [AUTH] Invalid login\r\n");
    assert!(
        took >= Duration::from_secs(3),
        "default failedloginpause: {took:?}"
    );
    let r = p.login(&user, saslauthd::PASSWORD);
    assert!(is_ready(&r), "{r}\nsaslauthd: {}", sa.log());
    assert_eq!(stat_count(&mut p), 1);
    assert!(p.cmd("RETR 1", true).contains("Subject: via-saslauthd\r\n"));
    p.cmd("QUIT", false);
    // SASL PLAIN through saslauthd too.
    let (mut p, _) = Pop::greeted(port);
    let ir = base64(format!("\0{user}\0{}", saslauthd::PASSWORD).as_bytes());
    assert!(is_ready(&p.cmd(&format!("AUTH PLAIN {ir}"), false)));
    p.cmd("QUIT", false);
}

fn base64(b: &[u8]) -> String {
    cyrkit::server::sasl::encode_challenge(b)
}

fn md5_hex(b: &[u8]) -> String {
    cyrkit::server::sasl::apop_digest(b, b"")
}
