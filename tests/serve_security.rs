//! Security of `cyrkit serve` over a real Cyrus 3.6 spool:
//! - recipients and POP3 login names that try to leave the partition (`../x`, `a/b`,
//!   `a%00b`, a NUL, 10 KB names, `user..x`, `+../..` folders) are refused and create nothing;
//! - symlinks planted in the spool (the next message file, the stage directory) are never
//!   followed for a write;
//! - started as root, the server acts as the spool's owner: every file it creates in the
//!   spool and the config directory belongs to cyrus;
//! - no plaintext authentication without TLS unless `allowplaintext`;
//! - unknown user and wrong password get byte-identical replies.

#[path = "serve_rel/common.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use support::cyrus::{cyrus_ids, require_cyrus, CyrusInstance, CyrusOptions};

fn all_paths(dir: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .map(|e| e.path().to_path_buf())
        .filter(|p| {
            let s = p.to_string_lossy();
            // Logs and Cyrus's own runtime state change by themselves.
            !s.contains("/run/")
                && !s.ends_with(".log")
                && !s.contains("/conf/log")
                // Seen state Cyrus's imapd writes for the checking admin.
                && !s.contains("/conf/user/")
        })
        .collect()
}

#[test]
fn names_that_escape_the_partition_are_refused_and_create_nothing() {
    if !require_cyrus() {
        return;
    }
    let cy = cyrus_with_users(
        CyrusOptions::default()
            .with("allowplaintext", "yes")
            .with("popsubfolders", "yes")
            .with("failedloginpause", "0"),
        &["victim".to_string()],
    );
    let tag = format!("esc{}", std::process::id());
    let outside = std::env::temp_dir().join(&tag);
    let long = "a".repeat(10 * 1024);
    let evil: Vec<String> = vec![
        "../x".into(),
        format!("../../../../../../../..{}", outside.display()),
        "a/b".into(),
        "victim/../../x".into(),
        "a%00b".into(),
        "user..x".into(),
        "..".into(),
        ".".into(),
        "victim+../../x".into(),
        "victim+..".into(),
        format!("victim+{long}"),
        long.clone(),
        "/etc/passwd".into(),
        "victim\\..\\x".into(),
    ];
    // Every evil name has the password "pw", so POP3 gets as far as opening the maildrop.
    let creds: Vec<(&str, &str)> = evil
        .iter()
        .map(|n| (n.as_str(), "pw"))
        .chain([("victim", "pw")])
        .collect();
    let passwd = passwd_file(&cy, &creds);
    let [lport, pport] = free_ports(2)[..] else {
        unreachable!()
    };
    let server = Server::start(
        &cy,
        &serve_args(lport, pport, &passwd, true),
        &[],
        RunAs::Cyrus,
        &[lport, pport],
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = all_paths(cy.root());

    let mut l = lmtp(lport).unwrap();
    assert_eq!(
        l.cmd("MAIL FROM:<a@example.org>").unwrap().get(..3),
        Some("250")
    );
    let mut rcpts: Vec<Vec<u8>> = evil.iter().map(|n| n.clone().into_bytes()).collect();
    rcpts.push(b"a\0b".to_vec());
    rcpts.push(b"victim\0/../x".to_vec());
    let mut accepted = 0;
    for r in &rcpts {
        let mut line = b"RCPT TO:<".to_vec();
        line.extend_from_slice(r);
        line.extend_from_slice(b">\r\n");
        l.send(&line).unwrap();
        let reply = l.reply().unwrap();
        // `victim+DETAIL` names victim's INBOX whatever the detail (a folder that does not
        // exist falls back to the INBOX, as Cyrus): accepted, and delivered there only.
        if r.starts_with(b"victim+") && reply.starts_with("250") {
            accepted += 1;
            continue;
        }
        assert!(
            reply.starts_with("550") || reply.starts_with("501") || reply.starts_with("500"),
            "RCPT {:?}: {reply:?}",
            String::from_utf8_lossy(&r[..r.len().min(40)])
        );
    }
    assert!(l.cmd("DATA").unwrap().starts_with("354"));
    l.send(&message("detail", 2)).unwrap();
    l.send(b".\r\n").unwrap();
    for _ in 0..accepted {
        assert_eq!(l.reply().unwrap().get(..3), Some("250"));
    }
    drop(l);
    let ids = imap_message_ids(&cy, "victim");
    assert!(
        !ids.is_empty() && ids.iter().all(|(id, _)| id == "detail"),
        "{ids:?}"
    );
    let inbox = mailbox_dir(&cy, "victim");
    let before: BTreeSet<PathBuf> = before
        .into_iter()
        .chain(all_paths(&inbox))
        .chain(all_paths(&cy.spool_dir().join("stage.")))
        .chain([cy.config_dir().join("deliver.db")])
        .collect();

    // In parallel: a name that passes the password check waits before "Unable to open
    // maildrop", as Cyrus does.
    let names: Vec<Vec<u8>> = evil
        .iter()
        .map(|n| n.clone().into_bytes())
        .chain([b"a\0b".to_vec()])
        .collect();
    let logins: Vec<_> = names
        .into_iter()
        .map(|n| {
            std::thread::spawn(move || {
                let mut c = Client::connect(pport).unwrap();
                c.line().unwrap();
                let mut line = b"USER ".to_vec();
                line.extend_from_slice(&n);
                line.extend_from_slice(b"\r\n");
                c.send(&line).unwrap();
                let u = c.line().unwrap();
                let p = c.cmd("PASS pw").unwrap();
                assert!(
                    u.starts_with("-ERR") || p.starts_with("-ERR"),
                    "POP3 login {:?}: {u:?} {p:?}",
                    String::from_utf8_lossy(&n[..n.len().min(40)])
                );
                // AUTH PLAIN with the same name.
                let mut resp = vec![0u8];
                resp.extend_from_slice(&n);
                resp.extend_from_slice(b"\0pw");
                let r = c
                    .cmd(&format!("AUTH PLAIN {}", base64_encode(&resp)))
                    .unwrap();
                assert!(
                    r.starts_with("-ERR"),
                    "AUTH PLAIN {:?}: {r:?}",
                    String::from_utf8_lossy(&n[..n.len().min(40)])
                );
            })
        })
        .collect();
    for h in logins {
        h.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = all_paths(cy.root());
    let created: Vec<_> = after.difference(&before).collect();
    assert!(created.is_empty(), "created by hostile names: {created:?}");
    assert!(!outside.exists(), "{} was created", outside.display());
    assert!(!cy.root().join("x").exists() && !cy.spool_dir().join("x").exists());
    drop(server);
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The directory of `user.NAME` (legacy hashed layout: spool/<h>/user/NAME).
fn mailbox_dir(cy: &CyrusInstance, user: &str) -> PathBuf {
    walkdir::WalkDir::new(cy.spool_dir())
        .into_iter()
        .flatten()
        .find(|e| {
            e.file_type().is_dir()
                && e.file_name() == user
                && e.path().parent().and_then(|p| p.file_name()) == Some("user".as_ref())
        })
        .unwrap_or_else(|| panic!("no mailbox directory for {user}"))
        .into_path()
}

#[test]
fn planted_symlinks_are_never_followed_for_a_write() {
    if !require_cyrus() {
        return;
    }
    let Served {
        server, cy, lport, ..
    } = serve_lmtp_pop3(
        CyrusOptions::default(),
        &["victim"],
        &[("victim", "pw")],
        true,
        &[],
        RunAs::Cyrus,
    );
    let deliver = |id: &str| -> Vec<u16> {
        let mut c = lmtp(lport).unwrap();
        let mut acked = Vec::new();
        let _ = lmtp_deliver(&mut c, &["victim"], &message(id, 3), &mut acked);
        acked
    };
    assert_eq!(deliver("first"), [250]);
    let outside = tempfile::tempdir().unwrap();
    let (uid, gid) = cyrus_ids().unwrap();
    std::os::unix::fs::chown(outside.path(), Some(uid), Some(gid)).unwrap();
    let precious = outside.path().join("precious");
    fs::write(&precious, b"precious bytes\n").unwrap();
    std::os::unix::fs::chown(&precious, Some(uid), Some(gid)).unwrap();

    // 1. The next message file (uid 2) is a symlink to a file outside the spool.
    let mdir = mailbox_dir(&cy, "victim");
    let next = mdir.join("2.");
    std::os::unix::fs::symlink(&precious, &next).unwrap();
    let acked = deliver("second");
    assert_eq!(fs::read(&precious).unwrap(), b"precious bytes\n");
    let m = fs::symlink_metadata(&next).unwrap();
    if acked == [250] {
        assert!(
            m.file_type().is_file(),
            "2. is still a symlink after delivery"
        );
        assert!(fs::read_to_string(&next).unwrap().contains("second@test"));
    }

    // 2. The stage directory is a symlink to a directory outside.
    let stage = cy.spool_dir().join("stage.");
    let _ = fs::remove_dir_all(&stage);
    let elsewhere = outside.path().join("stage-elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::chown(&elsewhere, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &stage).unwrap();
    let acked = deliver("third");
    assert_ne!(
        acked,
        [250],
        "delivered through a symlinked stage directory"
    );
    let written: Vec<_> = fs::read_dir(&elsewhere).unwrap().flatten().collect();
    assert!(written.is_empty(), "wrote through the symlink: {written:?}");
    fs::remove_file(&stage).unwrap();
    // Cleared: delivery works again (the stage directory is made anew).
    assert_eq!(deliver("fourth"), [250]);
    assert!(fs::symlink_metadata(&stage).unwrap().is_dir());
    drop(server);
    let rn = reconstruct_n(&cy);
    assert!(!rn.contains("ERROR") && !rn.contains("found"), "{rn}");
}

#[test]
fn run_as_root_every_file_created_belongs_to_cyrus() {
    if !require_cyrus() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let cy = cyrus_with_users(
        CyrusOptions::default().with("allowplaintext", "yes"),
        &["rooty".to_string(), "fresh".to_string()],
    );
    let passwd = passwd_file(&cy, &[("rooty", "pw")]);
    // Files the server must create itself: the stage directory, deliver.db, the cache of
    // a mailbox never delivered to.
    let _ = fs::remove_dir_all(cy.spool_dir().join("stage."));
    let _ = fs::remove_file(cy.config_dir().join("deliver.db"));
    let (uid, _) = cyrus_ids().unwrap();
    let [lport, pport] = free_ports(2)[..] else {
        unreachable!()
    };
    let mut server = Server::start(
        &cy,
        &serve_args(lport, pport, &passwd, true),
        &[],
        RunAs::Root,
        &[lport, pport],
    );
    let status = fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    assert_eq!(
        euid,
        uid.to_string(),
        "server did not become cyrus: {status}"
    );
    let mut c = lmtp(lport).unwrap();
    for i in 0..3 {
        let mut acked = Vec::new();
        lmtp_deliver(
            &mut c,
            &["rooty", "fresh"],
            &message(&format!("root-{i}"), 3),
            &mut acked,
        )
        .unwrap();
        assert_eq!(acked, [250, 250]);
    }
    drop(c);
    let mut p = pop3_login(pport, "rooty", "pw").unwrap();
    assert!(p.cmd("DELE 1").unwrap().starts_with("+OK"));
    assert_eq!(p.cmd("QUIT").unwrap(), "+OK\r\n");
    assert!(
        server.stop().is_some_and(|s| s.success()),
        "{}",
        server.output()
    );
    assert!(cy.config_dir().join("deliver.db").exists());
    assert!(cy.spool_dir().join("stage.").is_dir());
    for dir in [cy.spool_dir(), cy.config_dir()] {
        let wrong = not_owned_by(&dir, uid);
        assert!(wrong.is_empty(), "not owned by cyrus: {wrong:?}");
    }
}

#[test]
fn no_plaintext_auth_without_tls_unless_allowed() {
    if !require_cyrus() {
        return;
    }
    // LMTP over TCP without --lmtp-trust-loopback: clients must authenticate.
    // `_cy` keeps Cyrus (and the spool) alive as long as the server.
    let Served {
        server,
        cy: _cy,
        lport,
        pport,
    } = serve_lmtp_pop3(
        CyrusOptions::default()
            // Cyrus's imapd (the harness's admin login) keeps plaintext; cyrkit's services not.
            .with("pop3_allowplaintext", "no")
            .with("lmtp_allowplaintext", "no")
            .with("failedloginpause", "0"),
        &["alice"],
        &[("alice", "pw"), ("cyrus", "pw")],
        false,
        &[],
        RunAs::Cyrus,
    );
    let plain = base64_encode(b"\0alice\0pw");
    let mut c = Client::connect(pport).unwrap();
    c.line().unwrap();
    c.send(b"CAPA\r\n").unwrap();
    let capa = String::from_utf8(c.multi().unwrap()).unwrap();
    assert!(
        !capa.contains("\r\nUSER\r\n"),
        "USER offered in clear: {capa}"
    );
    assert!(!capa.contains("PLAIN"), "PLAIN offered in clear: {capa}");
    assert_eq!(
        c.cmd("USER alice").unwrap(),
        "-ERR [AUTH] USER command only available under a layer\r\n"
    );
    let r = c.cmd(&format!("AUTH PLAIN {plain}")).unwrap();
    assert!(r.starts_with("-ERR"), "AUTH PLAIN in clear: {r:?}");
    assert!(
        c.cmd("STAT").unwrap().starts_with("-ERR"),
        "logged in anyway"
    );

    let mut l = Client::connect(lport).unwrap();
    l.reply().unwrap();
    let lhlo = l.cmd("LHLO x").unwrap();
    assert!(
        !lhlo.contains("PLAIN"),
        "LMTP offers PLAIN in clear: {lhlo}"
    );
    let r = l
        .cmd(&format!("AUTH PLAIN {}", base64_encode(b"\0cyrus\0pw")))
        .unwrap();
    assert_eq!(r, "504 Unrecognized authentication type.\r\n");
    let r = l.cmd("MAIL FROM:<a@example.org>").unwrap();
    assert!(r.starts_with("430") || r.starts_with("530"), "{r:?}");
    drop(server);
}

/// Byte-identical replies (and both delayed by failedloginpause) for an unknown user and
/// a wrong password, over USER/PASS, AUTH PLAIN (POP3) and AUTH PLAIN (LMTP).
#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    if !require_cyrus() {
        return;
    }
    // `_cy` keeps Cyrus (and the spool) alive as long as the server.
    let Served {
        server,
        cy: _cy,
        lport,
        pport,
    } = serve_lmtp_pop3(
        CyrusOptions::default()
            .with("allowplaintext", "yes")
            .with("failedloginpause", "1"),
        &["alice"],
        &[("alice", "pw"), ("cyrus", "pw")],
        false,
        &[],
        RunAs::Cyrus,
    );
    let pop = |user: &str, pass: &str| -> (Vec<u8>, Duration, Vec<u8>, Duration) {
        let mut c = Client::connect(pport).unwrap();
        c.line().unwrap();
        c.send(format!("USER {user}\r\n").as_bytes()).unwrap();
        let mut r = c.line_bytes().unwrap();
        let t = Instant::now();
        c.send(format!("PASS {pass}\r\n").as_bytes()).unwrap();
        r.extend(c.line_bytes().unwrap());
        let d1 = t.elapsed();
        let t = Instant::now();
        let b = base64_encode(format!("\0{user}\0{pass}").as_bytes());
        c.send(format!("AUTH PLAIN {b}\r\n").as_bytes()).unwrap();
        let r2 = c.line_bytes().unwrap();
        (r, d1, r2, t.elapsed())
    };
    let wrong = pop("alice", "nope");
    let unknown = pop("mallory", "nope");
    assert_eq!(wrong.0, unknown.0, "USER/PASS replies differ");
    assert_eq!(wrong.2, unknown.2, "AUTH PLAIN replies differ");
    for d in [wrong.1, wrong.3, unknown.1, unknown.3] {
        assert!(d >= Duration::from_millis(950), "failure answered in {d:?}");
    }
    let lm = |user: &str| -> Vec<u8> {
        let mut c = Client::connect(lport).unwrap();
        c.reply().unwrap();
        c.cmd("LHLO x").unwrap();
        let b = base64_encode(format!("\0{user}\0nope").as_bytes());
        c.send(format!("AUTH PLAIN {b}\r\n").as_bytes()).unwrap();
        c.line_bytes().unwrap()
    };
    assert_eq!(lm("cyrus"), lm("mallory"), "LMTP AUTH replies differ");
    drop(server);
}
