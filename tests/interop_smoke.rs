//! Smoke test of the real-Cyrus harness: an instance starts, takes a two-recipient LMTP
//! delivery (single-instance store: one file, two links), serves it over IMAP, and stops with
//! its ports closed.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use support::cyrus::{crlf, inode, require_cyrus, CyrusInstance, CyrusOptions};

const BODY: &str = "Hello from the smoke test.\n.leading dot survives dot-stuffing\n";

fn message() -> Vec<u8> {
    crlf(
        format!(
            "From: sender@example.org\nTo: alice@example.com, bob@example.com\n\
             Subject: smoke\nMessage-ID: <smoke@example.org>\n\n{BODY}"
        )
        .as_bytes(),
    )
}

#[test]
fn lmtp_two_recipients_share_one_file_and_imap_serves_it() {
    if !require_cyrus() {
        return;
    }
    let mut cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().expect("admin login");
    admin.create("user.alice").unwrap();
    admin.create("user.bob").unwrap();
    admin.logout().unwrap();

    let mut lmtp = cy.lmtp().unwrap();
    let replies = lmtp
        .deliver("sender@example.org", &["alice", "bob"], &message())
        .unwrap();
    lmtp.quit().unwrap();
    assert_eq!(replies.len(), 2, "one reply per recipient: {replies:?}");
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");

    let mut alice = cy.imap_login("alice").unwrap();
    alice.examine("INBOX").unwrap();
    let raw = alice.fetch("1", "(BODY.PEEK[TEXT])").unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains(&String::from_utf8(crlf(BODY.as_bytes())).unwrap()),
        "{raw}"
    );
    let summary = alice.fetch_summary().unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].uid, 1);
    alice.logout().unwrap();

    let spool = cy.spool_dir();
    let a = inode(&spool.join("a/user/alice/1.")).unwrap();
    let b = inode(&spool.join("b/user/bob/1.")).unwrap();
    assert_eq!(
        a, b,
        "singleinstancestore: the two message files must be one inode"
    );

    let ports = [cy.imap_port, cy.pop3_port, cy.lmtp_port];
    cy.stop().unwrap();
    for p in ports {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "port {p} still open after stop"
        );
    }
}

/// The committed fixtures are usable as they come out of git: Cyrus started on a copy (paths
/// made absolute, hard links restored) reports the same mailboxes, UIDs, flags, sizes and
/// counters as when the fixture was made.
#[test]
fn fixtures_round_trip_through_real_cyrus() {
    if !require_cyrus() {
        return;
    }
    for name in ["legacy", "uuid"] {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let mut cy = CyrusInstance::spool_copy_offline(&src).expect("copy fixture");
        let links = support::cyrus::relink_hardlinks(cy.root()).unwrap();
        assert!(
            links > 0,
            "{name}: the fixture records single-instance hard links"
        );
        support::cyrus::chown_cyrus(cy.root()).unwrap();
        cy.start_master().unwrap();

        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("expected/imap.json")).unwrap())
                .unwrap();
        let boxes = expected["mailboxes"].as_array().unwrap();
        assert!(boxes.len() >= 10, "{name}: {} mailboxes", boxes.len());
        support::cyrus::assert_imap_as_recorded(&cy, &src, name);
        cy.stop().unwrap();
        let recon = cy.run_tool("reconstruct", &["-n"]).unwrap();
        let want = std::fs::read(src.join("expected/reconstruct-n.txt")).unwrap();
        let mut got = recon.stdout.clone();
        got.extend_from_slice(&recon.stderr);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{name}"
        );
    }
}
