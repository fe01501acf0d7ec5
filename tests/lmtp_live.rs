//! `cyrkit serve --lmtp` delivering into a spool while Cyrus runs on it: threads deliver
//! through Cyrus's lmtpd and through cyrkit, and an IMAP client APPENDs, flags `\Deleted`
//! and EXPUNGEs in the same mailboxes at the same time (1000 messages in all). Afterwards
//! every message is there exactly once (by Message-ID, less the expunged ones), UIDs are
//! unique, Cyrus's `reconstruct -n` is clean and quota usage is the sum of the sizes
//! (Cyrus's `quota -f -n` finds nothing to change).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use support::cyrus::{
    crlf, free_port, require_cyrus, CyrusInstance, CyrusOptions, LmtpClient, Token,
};
use support::serve::CyrkitServe;

const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
/// Delivering threads per LMTP server.
const THREADS: usize = 2;
/// Messages per delivering thread (4 threads) and IMAP APPENDs: 1000 in all.
const PER_THREAD: usize = 175;
const APPENDS: usize = 300;
/// Every this many APPENDs, the two oldest messages of a mailbox are expunged.
const EXPUNGE_EVERY: usize = 10;

/// (mailbox, Message-ID) → how many copies should be there.
type Expected = Arc<Mutex<BTreeMap<(String, String), i64>>>;

fn message(id: &str, n: usize) -> Vec<u8> {
    let body = "a line of text that makes the message a few hundred bytes long\n".repeat(1 + n % 7);
    crlf(
        format!(
            "From: <load@example.org>\nSubject: load {id}\nMessage-ID: <{id}@live.test>\n\
             Date: Mon, 01 Jan 2024 10:00:00 +0000\n\n{body}"
        )
        .as_bytes(),
    )
}

fn expect(expected: &Expected, user: &str, id: &str, delta: i64) {
    *expected
        .lock()
        .unwrap()
        .entry((format!("user.{user}"), format!("<{id}@live.test>")))
        .or_default() += delta;
}

/// One delivering thread: every fifth message goes to two users (one file, two links).
fn deliver(port: u16, tag: &str, expected: Expected) {
    let mut c = LmtpClient::connect(port).unwrap();
    for n in 0..PER_THREAD {
        let id = format!("{tag}-{n}");
        let mut rcpts = vec![USERS[n % USERS.len()]];
        if n % 5 == 0 {
            rcpts.push(USERS[(n + 1) % USERS.len()]);
        }
        let replies = c
            .deliver("load@example.org", &rcpts, &message(&id, n))
            .unwrap();
        for (r, u) in replies.iter().zip(&rcpts) {
            assert_eq!(r.code, 250, "{tag} {id} to {u}: {r:?}");
            expect(&expected, u, &id, 1);
        }
    }
    c.quit().unwrap();
}

/// The Message-IDs of a mailbox by UID.
fn message_ids(c: &mut support::cyrus::ImapClient) -> Vec<(u64, String, u64)> {
    let r = c
        .ok("UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        .unwrap();
    let mut out = Vec::new();
    for toks in r.tokens() {
        let Some(Token::List(items)) = toks.get(3) else {
            continue;
        };
        let (mut uid, mut id, mut size) = (0, String::new(), 0);
        for pair in items.chunks(2) {
            match (pair.first().and_then(Token::text).as_deref(), pair.get(1)) {
                (Some("UID"), Some(v)) => uid = v.text().unwrap().parse().unwrap(),
                (Some("RFC822.SIZE"), Some(v)) => size = v.text().unwrap().parse().unwrap(),
                (Some(_), Some(Token::Str(h))) => {
                    let h = String::from_utf8_lossy(h);
                    id = h.split_once(':').map_or("", |x| x.1).trim().to_string();
                }
                _ => {}
            }
        }
        out.push((uid, id, size));
    }
    out
}

/// APPENDs round-robin into the users' INBOXes; every [`EXPUNGE_EVERY`] APPENDs expunges
/// the two oldest messages of the mailbox just appended to.
fn append_and_expunge(cy: &CyrusInstance, expected: Expected) -> usize {
    let mut c = cy.imap_admin().unwrap();
    let mut expunged = 0;
    for n in 0..APPENDS {
        let user = USERS[n % USERS.len()];
        let mbox = format!("user.{user}");
        let id = format!("imap-{n}");
        c.append(&mbox, &[], None, &message(&id, n)).unwrap();
        expect(&expected, user, &id, 1);
        if n % EXPUNGE_EVERY == EXPUNGE_EVERY - 1 {
            c.select(&mbox).unwrap();
            let victims: Vec<(u64, String, u64)> =
                message_ids(&mut c).into_iter().take(2).collect();
            let uids: Vec<String> = victims.iter().map(|v| v.0.to_string()).collect();
            c.ok(&format!(
                "UID STORE {} +FLAGS.SILENT (\\Deleted)",
                uids.join(",")
            ))
            .unwrap();
            c.expunge().unwrap();
            for (_, id, _) in &victims {
                let id = id.trim_start_matches('<').trim_end_matches("@live.test>");
                expect(&expected, user, id, -1);
                expunged += 1;
            }
            c.ok("UNSELECT").unwrap();
        }
    }
    c.logout().unwrap();
    expunged
}

#[test]
fn deliveries_through_both_lmtpds_with_imap_changes_at_the_same_time() {
    if !require_cyrus() {
        return;
    }
    let started = Instant::now();
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for u in USERS {
        let mbox = format!("user.{u}");
        admin.create(&mbox).unwrap();
        admin.setacl(&mbox, "cyrus", "lrswipkxtecda").unwrap();
        admin.setquota(&mbox, &[("STORAGE", 1_000_000)]).unwrap();
    }
    admin.logout().unwrap();
    let port = free_port().unwrap();
    let mut server = CyrkitServe::lmtp_inet(&cy, port).expect("start cyrkit serve");

    let expected: Expected = Arc::default();
    let expunged = thread::scope(|s| {
        let mut delivering = Vec::new();
        for t in 0..THREADS {
            for (tag, p) in [("cyrus", cy.lmtp_port), ("cyrkit", port)] {
                let e = expected.clone();
                delivering.push(s.spawn(move || deliver(p, &format!("{tag}{t}"), e)));
            }
        }
        let e = expected.clone();
        let imap = s.spawn(|| append_and_expunge(&cy, e));
        for d in delivering {
            d.join().unwrap();
        }
        imap.join().unwrap()
    });
    server.assert_clean_stop();
    let delivered_at = started.elapsed();

    // Every message exactly once, less the expunged ones; UIDs unique and ascending.
    let mut got: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut c = cy.imap_admin().unwrap();
    for u in USERS {
        let mbox = format!("user.{u}");
        c.examine(&mbox).unwrap();
        let ids = message_ids(&mut c);
        let uids: Vec<u64> = ids.iter().map(|m| m.0).collect();
        assert!(
            uids.windows(2).all(|w| w[0] < w[1]),
            "{mbox}: UIDs {uids:?}"
        );
        for (_, id, size) in ids {
            *got.entry((mbox.clone(), id)).or_default() += 1;
            *sizes.entry(mbox.clone()).or_default() += size;
        }
    }
    c.logout().unwrap();
    let want: BTreeMap<(String, String), i64> = expected
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(got.len(), want.len(), "messages present");
    assert_eq!(got, want, "each message exactly once");
    let total_in: usize = 2 * THREADS * PER_THREAD + APPENDS;
    assert_eq!(total_in, 1000);
    assert_eq!(expunged, 2 * APPENDS / EXPUNGE_EVERY);

    // Indexes as reconstruct would leave them.
    let o = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "reconstruct -n: {report}");
    for line in report.lines() {
        assert!(line.trim().starts_with("user."), "reconstruct -n: {report}");
    }

    // Quota usage = the sum of the sizes; quota -f finds nothing to change.
    let o = cy.run_tool("quota", &["-J"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (mbox, size) in &sizes {
        assert_eq!(
            v[mbox]["STORAGE"]["used"].as_u64(),
            Some(*size),
            "{mbox}: {v}"
        );
    }
    let o = cy.run_tool("quota", &["-f", "-n"]).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("usage was"),
        "quota -f -n: {err}"
    );
    eprintln!(
        "lmtp_live: 1000 messages ({expunged} expunged) in {delivered_at:?}, checked in {:?}",
        started.elapsed()
    );
}
