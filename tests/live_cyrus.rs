//! cyrkit beside a live Cyrus: `reconstruct` (one mailbox), `quota -f` and
//! `singleinstance-dedupe` each run again and again while Cyrus's lmtpd delivers to the
//! same mailboxes and an IMAP client flags and expunges in them. Afterwards:
//! - nothing lost: every delivery lmtpd acknowledged is in each recipient's INBOX exactly
//!   once, every seeded message the client did not expunge is still there, and every flag
//!   the client set is still set;
//! - nothing double-counted: the quota roots' usage is exact (`quota -f -n` finds nothing,
//!   nor does Cyrus's `quota -f -n`), and IMAP's message counts match;
//! - Cyrus is consistent: its `reconstruct -n` reports nothing but the mailbox names, and
//!   `mbcheck` is clean.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::cli::{self, Run};
use support::cyrus::{crlf, require_cyrus, CyrusInstance, CyrusOptions, ImapClient};

const USERS: [&str; 2] = ["dan", "eve"];
/// Seeded messages per user before the live phase (half of them `del-`, for expunging).
const SEEDED: usize = 30;
/// Deliveries to both users during the live phase (a third of them `del-`).
const LIVE: usize = 45;

fn message(id: &str, body_len: usize) -> Vec<u8> {
    crlf(
        format!(
            "From: sender@example.org\nTo: dan@example.org, eve@example.org\nSubject: {id}\nMessage-ID: <{id}@live.test>\n\n{}\n",
            "body ".repeat(body_len)
        )
        .as_bytes(),
    )
}

fn deliver(cy: &CyrusInstance, ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut lmtp = cy.lmtp().unwrap();
    let mut acked = Vec::new();
    for (i, id) in ids.enumerate() {
        let replies = lmtp
            .deliver("sender@example.org", &USERS, &message(&id, i * 13 % 700))
            .unwrap();
        assert!(replies.iter().all(|r| r.code == 250), "{id}: {replies:?}");
        acked.push(id);
    }
    lmtp.quit().unwrap();
    acked
}

/// One message as IMAP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    uid: u64,
    flags: BTreeSet<String>,
    id: String,
}

/// Every message of the selected mailbox: UID, flags and Message-ID.
fn fetch_all(c: &mut ImapClient) -> Vec<Seen> {
    let r = c
        .ok("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        .unwrap();
    let mut out = Vec::new();
    for u in &r.untagged {
        let text = String::from_utf8_lossy(u);
        if !text.contains(" FETCH ") {
            continue;
        }
        let num_after = |key: &str| -> u64 {
            let i = text.find(key).unwrap() + key.len();
            text[i..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        };
        let f = text.find("FLAGS (").unwrap() + "FLAGS (".len();
        let flags = text[f..f + text[f..].find(')').unwrap()]
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let m = text.find('<').unwrap() + 1;
        let id = text[m..m + text[m..].find('@').unwrap()].to_string();
        out.push(Seen {
            uid: num_after("UID "),
            flags,
            id,
        });
    }
    out
}

/// The IMAP client's work in dan's INBOX, repeated until `stop`: expunge every `del-`
/// message, flag every message whose UID is a multiple of 3. Returns the UIDs it flagged.
fn flag_and_expunge(cy: &CyrusInstance, stop: &AtomicBool) -> BTreeSet<u64> {
    let mut c = cy.imap_login("dan").unwrap();
    c.select("INBOX").unwrap();
    let mut flagged = BTreeSet::new();
    let mut last = false;
    while !last {
        last = stop.load(Ordering::SeqCst);
        let msgs = fetch_all(&mut c);
        let del: Vec<String> = msgs
            .iter()
            .filter(|m| m.id.starts_with("del-"))
            .map(|m| m.uid.to_string())
            .collect();
        if !del.is_empty() {
            c.ok(&format!(
                "UID STORE {} +FLAGS.SILENT (\\Deleted)",
                del.join(",")
            ))
            .unwrap();
            c.expunge().unwrap();
        }
        for m in msgs.iter().filter(|m| !m.id.starts_with("del-")) {
            if m.uid % 3 == 0 && !flagged.contains(&m.uid) {
                c.ok(&format!(
                    "UID STORE {} +FLAGS.SILENT (\\Flagged $Live)",
                    m.uid
                ))
                .unwrap();
                flagged.insert(m.uid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.logout().unwrap();
    flagged
}

/// A Cyrus with dan and eve (quota roots on both), `SEEDED` messages delivered to both.
fn live_cyrus() -> (CyrusInstance, Vec<String>) {
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for u in USERS {
        admin.create(&format!("user.{u}")).unwrap();
    }
    admin.setquota("user.dan", &[("STORAGE", 100_000)]).unwrap();
    admin
        .setquota("user.eve", &[("STORAGE", 100_000), ("MESSAGE", 10_000)])
        .unwrap();
    admin.logout().unwrap();
    let seeded = deliver(
        &cy,
        (0..SEEDED).map(|i| {
            if i % 2 == 0 {
                format!("keep-{i}")
            } else {
                format!("del-seed-{i}")
            }
        }),
    );
    (cy, seeded)
}

/// Runs `command(conf, round)` again and again while lmtpd delivers and the IMAP client
/// works; then checks that nothing was lost, nothing double-counted, Cyrus consistent.
/// `prepare` runs on the seeded store before the live phase.
fn beside_live_cyrus(
    prepare: impl FnOnce(&CyrusInstance),
    command: impl Fn(&Path, usize) -> Run,
) -> usize {
    let (mut cy, seeded) = live_cyrus();
    prepare(&cy);
    let conf = cy.conf_path();
    let stop = AtomicBool::new(false);
    let (runs, acked, flagged) = std::thread::scope(|s| {
        let cy = &cy;
        let stop = &stop;
        let deliverer = s.spawn(move || {
            deliver(
                cy,
                (0..LIVE).map(|i| {
                    if i % 3 == 1 {
                        format!("del-live-{i}")
                    } else {
                        format!("live-{i}")
                    }
                }),
            )
        });
        let client = s.spawn(move || flag_and_expunge(cy, stop));
        let mut runs = 0;
        while !deliverer.is_finished() || runs < 3 {
            let r = command(&conf, runs);
            assert_eq!(r.code, 0, "run {runs} beside live Cyrus\n{}", r.describe());
            runs += 1;
        }
        let acked = deliverer.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        let flagged = client.join().unwrap();
        (runs, acked, flagged)
    });
    // One more run with everything quiet, then the checks.
    assert_eq!(command(&conf, runs).code, 0);
    let all: Vec<&String> = seeded.iter().chain(&acked).collect();
    let mut counts = BTreeMap::new();
    for u in USERS {
        let mut c = cy.imap_login(u).unwrap();
        c.select("INBOX").unwrap();
        let msgs = fetch_all(&mut c);
        let ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
        let distinct: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "{u}: a message is there twice");
        let want: BTreeSet<&str> = all
            .iter()
            .map(|s| s.as_str())
            .filter(|id| u != "dan" || !id.starts_with("del-"))
            .collect();
        assert_eq!(distinct, want, "{u}: the messages IMAP serves");
        if u == "dan" {
            for m in &msgs {
                let want_flag = flagged.contains(&m.uid);
                assert_eq!(
                    m.flags.contains("\\Flagged") && m.flags.contains("$Live"),
                    want_flag,
                    "dan UID {}: flags {:?}",
                    m.uid,
                    m.flags
                );
            }
            assert!(!flagged.is_empty());
        }
        let st = c.status("INBOX").unwrap();
        assert_eq!(st.messages as usize, want.len(), "{u}: STATUS MESSAGES");
        counts.insert(u, want.len());
        c.logout().unwrap();
    }
    // Usage exact: our -f -n and Cyrus's find nothing to change.
    let q = cli::run(&["quota"], Some(&conf), &["-f", "-n"], &[]);
    assert_eq!(q.code, 0, "quota -f -n\n{}", q.describe());
    let out = cy.run_tool("quota", &["-f", "-n"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "Cyrus quota -f -n: {err}"
    );
    let j = cli::run(&["quota"], Some(&conf), &["--json"], &[]).json();
    assert_eq!(j["user.eve"]["MESSAGE"]["used"], counts["eve"]);
    assert_eq!(j["user.dan"]["MESSAGE"]["used"], counts["dan"]);
    cy.stop().unwrap();
    // Cyrus consistent: its reconstruct -n names the mailboxes and nothing else.
    let out = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for line in text.lines() {
        assert!(
            USERS.iter().any(|u| line.trim() == format!("user.{u}")),
            "Cyrus's reconstruct -n reports more than mailbox names:\n{text}"
        );
    }
    let m = cli::run(&["mbcheck"], Some(&conf), &[], &[]);
    assert_eq!(m.code, 0, "mbcheck\n{}", m.describe());
    eprintln!(
        "{runs} runs beside {} deliveries to 2 users; dan {} and eve {} messages at the end, {} flagged",
        acked.len(),
        counts["dan"],
        counts["eve"],
        flagged.len()
    );
    runs
}

/// `reconstruct -G` of dan's INBOX, alternating the index version so that every run
/// rewrites cyrus.index and cyrus.cache, while lmtpd appends and IMAP flags and expunges.
#[test]
fn reconstruct_beside_live_cyrus_loses_nothing() {
    if !require_cyrus() {
        return;
    }
    beside_live_cyrus(
        |_| {},
        |conf, round| {
            let v = if round % 2 == 0 { "16" } else { "17" };
            cli::run(
                &["reconstruct"],
                Some(conf),
                &["-q", "-G", "-V", v, "user.dan"],
                &[],
            )
        },
    );
}

/// `quota -f` of every root while the deliveries change them.
#[test]
fn quota_f_beside_live_cyrus_counts_exactly() {
    if !require_cyrus() {
        return;
    }
    beside_live_cyrus(
        |_| {},
        |conf, _| cli::run(&["quota"], Some(conf), &["-f", "-q"], &[]),
    );
}

/// `singleinstance-dedupe` after a restore broke the single-instance links, while Cyrus
/// delivers (making new links), flags and expunges (unlinking files).
#[test]
fn dedupe_beside_live_cyrus_loses_nothing() {
    if !require_cyrus() {
        return;
    }
    let linked = std::cell::Cell::new(0);
    beside_live_cyrus(
        |cy| {
            let n = break_links(&cy.spool_dir());
            assert!(n > 0, "no single-instance links to break");
        },
        |conf, _| {
            let r = cli::run(&["singleinstance-dedupe"], Some(conf), &["--json"], &[]);
            if r.code == 0 {
                linked.set(linked.get() + r.json()["files_linked"].as_u64().unwrap());
            }
            r
        },
    );
    assert!(linked.get() > 0, "dedupe linked nothing");
}

/// Copies every multiply-linked message file to its own inode (bytes, owner, mode kept), as
/// a restore from a backup that does not keep hard links leaves them. Returns how many.
fn break_links(spool: &Path) -> usize {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut n = 0;
    for e in walkdir::WalkDir::new(spool) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy();
        if !e.file_type().is_file() || !name.ends_with('.') {
            continue;
        }
        let m = e.metadata().unwrap();
        if m.nlink() < 2 {
            continue;
        }
        let p = e.path();
        let tmp = p.with_file_name(".restore-tmp");
        std::fs::copy(p, &tmp).unwrap();
        std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid())).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
        std::fs::rename(&tmp, p).unwrap();
        n += 1;
    }
    n
}
