//! Differential test of `cyrkit serve --lmtp` against Cyrus 3.6's own lmtpd.
//!
//! One real Cyrus spool (users, folders, ACLs and quotas made over IMAP) is copied; the same
//! messages are delivered through Cyrus's lmtpd into one copy and through cyrkit into the
//! other. Then every per-recipient reply must match (apart from the SESSIONID text), and
//! Cyrus's imapd must serve both copies alike: UIDs, FLAGS, ENVELOPE, BODYSTRUCTURE and
//! BODY[TEXT] identical; headers identical once the lines each server writes for itself are
//! set aside (Return-Path, Received, X-Cyrus-Session-Id, X-Sieve, and the Message-ID and Date
//! added to a message without them); RFC822.SIZE and quota usage differing by exactly the
//! size of those lines; the same single-instance link groups on disk; and Cyrus's
//! `reconstruct -n` finding nothing on cyrkit's copy.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use support::cyrus::{
    copy_tree, crlf, free_port, render_imapd_conf, require_cyrus, CyrusInstance, CyrusOptions,
    LmtpClient, LmtpReply, Token,
};
use support::serve::CyrkitServe;

/// Mailboxes the deliveries reach (admin namespace).
const MAILBOXES: [&str; 8] = [
    "user.alice",
    "user.bob",
    "user.bob.lists",
    "user.bob.private",
    "user.carol",
    "user.dave",
    "shared",
    "shared.folder",
];
/// Quota roots (dave's is tiny: one message puts him over).
const ROOTS: [(&str, u64); 4] = [
    ("user.alice", 100_000),
    ("user.bob", 100_000),
    ("user.carol", 100_000),
    ("user.dave", 1),
];
/// Header fields a delivering server writes for itself.
const SET_ASIDE: [&str; 4] = ["return-path", "received", "x-cyrus-session-id", "x-sieve"];

/// One transaction: a message and its recipients.
struct Case {
    what: &'static str,
    rcpts: &'static [&'static str],
    message: Vec<u8>,
}

fn message(id: Option<&str>, subject: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = b"From: Sender <sender@example.org>\nTo: list@example.org\nSubject: ".to_vec();
    m.extend_from_slice(subject);
    m.push(b'\n');
    if let Some(id) = id {
        m.extend_from_slice(
            format!("Message-ID: <{id}@example.org>\nDate: Mon, 01 Jan 2024 10:00:00 +0000\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n");
    m.extend_from_slice(body);
    crlf(&m)
}

fn case(what: &'static str, rcpts: &'static [&'static str], message: Vec<u8>) -> Case {
    Case {
        what,
        rcpts,
        message,
    }
}

fn cases() -> Vec<Case> {
    let mut big = Vec::new();
    let mut n = 0;
    while big.len() < 1_500_000 {
        big.extend_from_slice(
            format!("line {n:07} of a big message, padded out to width\n").as_bytes(),
        );
        n += 1;
    }
    let filler = "x".repeat(70);
    let over = (0..40).map(|_| format!("{filler}\n")).collect::<String>();
    vec![
        case(
            "three users on one partition",
            &["alice", "bob", "carol"],
            message(Some("multi"), b"to three", b"one file, three links\n.dot\n"),
        ),
        case(
            "+detail with and without p",
            &["bob+lists", "bob+private", "carol+nonexist"],
            message(Some("detail"), b"details", b"detail\n"),
        ),
        case(
            "shared folder and unknown user",
            &["+shared.folder", "nobody", "alice"],
            message(Some("shared"), b"shared", b"shared\n"),
        ),
        case(
            "dave's first message (puts him over quota)",
            &["dave"],
            message(Some("quota1"), b"fills the quota", over.as_bytes()),
        ),
        case(
            "dave over quota",
            &["dave", "alice"],
            message(Some("quota2"), b"over quota", b"refused for dave\n"),
        ),
        case(
            "8-bit headers",
            &["alice"],
            message(
                Some("eightbit"),
                b"caf\xe9 \xc3\xa9t\xc3\xa9",
                b"8-bit header\n",
            ),
        ),
        case(
            "no Message-ID and Date",
            &["alice", "carol"],
            message(None, b"bare", b"no id, no date\n"),
        ),
        case(
            "1.5 MB message",
            &["bob", "alice"],
            message(Some("big"), b"big", &big),
        ),
        case(
            "first of a duplicate",
            &["carol"],
            message(Some("dup"), b"dup", b"duplicate\n"),
        ),
        case(
            "second of a duplicate (suppressed)",
            &["carol"],
            message(Some("dup"), b"dup", b"duplicate\n"),
        ),
    ]
}

/// `code text` with the session id blanked.
fn normalize(r: &LmtpReply) -> String {
    let mut t = r.text.clone();
    if let Some(i) = t.find("SESSIONID=<") {
        if let Some(j) = t[i..].find('>') {
            t.replace_range(i + 11..i + j, "");
        }
    }
    format!("{} {t}", r.code)
}

fn deliver_all(port: u16, cases: &[Case]) -> Vec<Vec<String>> {
    let mut c = LmtpClient::connect(port).expect("LMTP connect");
    let out = cases
        .iter()
        .map(|case| {
            c.deliver("sender@example.org", case.rcpts, &case.message)
                .unwrap_or_else(|e| panic!("{}: {e}", case.what))
                .iter()
                .map(normalize)
                .collect()
        })
        .collect();
    c.quit().unwrap();
    out
}

/// The Cyrus instance the deliveries start from, stopped, and a directory holding a copy
/// of its store that `CyrusInstance::from_spool_copy` takes.
fn prepare() -> (CyrusInstance, tempfile::TempDir) {
    let mut cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for m in MAILBOXES {
        admin.create(m).unwrap();
        admin.setacl(m, "cyrus", "lrswipkxtecda").unwrap();
    }
    admin.create("user.erin").unwrap();
    admin.setacl("user.erin", "cyrus", "lrswipkxtecda").unwrap();
    admin.setacl("user.bob.lists", "anyone", "p").unwrap();
    admin.setacl("shared.folder", "anyone", "lp").unwrap();
    for (root, kib) in ROOTS {
        admin.setquota(root, &[("STORAGE", kib)]).unwrap();
    }
    admin.logout().unwrap();
    cy.stop().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&cy.root().join("conf"), &copy.path().join("conf")).unwrap();
    copy_tree(&cy.root().join("spool"), &copy.path().join("spool")).unwrap();
    fs::write(
        copy.path().join("imapd.conf"),
        render_imapd_conf(&cy.relative_store_keys()),
    )
    .unwrap();
    (cy, copy)
}

/// What Cyrus's imapd serves for one message, with the set-aside lines taken out.
#[derive(Debug)]
struct Served {
    uid: u64,
    flags: Vec<String>,
    size: u64,
    envelope: Token,
    bodystructure: Token,
    header: Vec<u8>,
    text: Vec<u8>,
    /// Bytes of the set-aside header lines.
    set_aside: u64,
    /// Whether it has an `X-Sieve` line.
    x_sieve: bool,
}

/// Splits a header block into fields (each with its continuation lines).
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let lines: Vec<(usize, &[u8])> = header
        .split_inclusive(|&b| b == b'\n')
        .scan(0, |pos, l| {
            let at = *pos;
            *pos += l.len();
            Some((at, l))
        })
        .collect();
    for (i, (at, line)) in lines.iter().enumerate() {
        let next_is_continuation = lines
            .get(i + 1)
            .is_some_and(|(_, l)| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'));
        if !next_is_continuation {
            out.push(&header[start..at + line.len()]);
            start = at + line.len();
        }
    }
    out
}

fn field_name(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == b':').unwrap_or(0);
    String::from_utf8_lossy(&field[..end]).to_ascii_lowercase()
}

/// Whether a Message-ID was made up by the delivering server.
fn generated_id(field: &[u8]) -> bool {
    let v = String::from_utf8_lossy(field);
    v.contains("<cmu-lmtpd-") || v.contains("<cyrkit-lmtpd-")
}

fn item<'a>(items: &'a [Token], name: &str) -> &'a Token {
    items
        .chunks(2)
        .find(|p| p.first() == Some(&Token::Atom(name.into())))
        .and_then(|p| p.get(1))
        .unwrap_or_else(|| panic!("no {name} in {items:?}"))
}

fn served(cy: &CyrusInstance, mailbox: &str) -> Vec<Served> {
    let mut c = cy.imap_admin().unwrap();
    let st = c.examine_status(mailbox).unwrap();
    if st.messages == 0 {
        return Vec::new();
    }
    let r = c
        .ok("UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER] BODY.PEEK[TEXT])")
        .unwrap();
    c.logout().unwrap();
    let mut out = Vec::new();
    for toks in r.tokens() {
        let Some(Token::List(items)) = toks.get(3) else {
            continue;
        };
        let text = |name| match item(items, name) {
            Token::Str(s) => s.clone(),
            t => panic!("{name}: {t:?}"),
        };
        let raw_header = text("BODY[HEADER]");
        let all = fields(&raw_header);
        let generated = all
            .iter()
            .any(|f| field_name(f) == "message-id" && generated_id(f));
        let mut header = Vec::new();
        let mut set_aside = 0;
        let x_sieve = all.iter().any(|f| field_name(f) == "x-sieve");
        for f in all {
            let name = field_name(f);
            let added = generated && (name == "message-id" || name == "date");
            if SET_ASIDE.contains(&name.as_str()) || added {
                set_aside += f.len() as u64;
            } else {
                header.extend_from_slice(f);
            }
        }
        let mut envelope = item(items, "ENVELOPE").clone();
        if generated {
            // ENVELOPE's date (0) and message-id (9) are the generated ones.
            if let Token::List(e) = &mut envelope {
                for i in [0, 9] {
                    if let Some(t) = e.get_mut(i) {
                        *t = Token::Atom("GENERATED".into());
                    }
                }
            }
        }
        let number = |name| item(items, name).text().unwrap().parse::<u64>().unwrap();
        let mut flags: Vec<String> = match item(items, "FLAGS") {
            Token::List(f) => f.iter().filter_map(Token::text).collect(),
            t => panic!("FLAGS {t:?}"),
        };
        flags.sort();
        out.push(Served {
            uid: number("UID"),
            flags,
            size: number("RFC822.SIZE"),
            envelope,
            bodystructure: item(items, "BODYSTRUCTURE").clone(),
            header,
            text: text("BODY[TEXT]"),
            set_aside,
            x_sieve,
        });
    }
    out.sort_by_key(|m| m.uid);
    out
}

/// Message files grouped by inode: the set of link groups (paths relative to the spool).
fn link_groups(spool: &Path) -> BTreeSet<BTreeSet<String>> {
    let mut by_inode: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(spool) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_file()
            && name.ends_with('.')
            && name[..name.len() - 1].parse::<u32>().is_ok()
        {
            let rel = e.path().strip_prefix(spool).unwrap().display().to_string();
            by_inode
                .entry(e.metadata().unwrap().ino())
                .or_default()
                .insert(rel);
        }
    }
    by_inode.into_values().collect()
}

/// `quota -J`: (STORAGE bytes, MESSAGE count) per root.
fn quota_usage(cy: &CyrusInstance) -> BTreeMap<String, (u64, u64)> {
    let o = cy.run_tool("quota", &["-J"]).unwrap();
    assert!(o.status.success(), "quota -J: {o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(root, r)| {
            let used = |res: &str| r[res]["used"].as_u64().unwrap_or(0);
            (root.clone(), (used("STORAGE"), used("MESSAGE")))
        })
        .collect()
}

fn reconstruct_report(cy: &CyrusInstance) -> Vec<String> {
    let o = cy.run_tool("reconstruct", &["-n"]).unwrap();
    assert!(o.status.success(), "reconstruct -n: {o:?}");
    let mut lines: Vec<String> = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .lines()
    .map(str::to_string)
    .collect();
    lines.sort();
    lines
}

fn add_conf(cy: &CyrusInstance, line: &str) {
    let mut text = fs::read_to_string(cy.conf_path()).unwrap();
    text.push_str(line);
    fs::write(cy.conf_path(), text).unwrap();
}

#[test]
fn cyrkit_delivers_as_cyrus_lmtpd_does() {
    if !require_cyrus() {
        return;
    }
    let (mut theirs, copy) = prepare();
    theirs.start_master().unwrap();
    let ours = CyrusInstance::from_spool_copy(copy.path()).expect("start Cyrus on the copy");
    let port = free_port().unwrap();
    let mut server = CyrkitServe::lmtp_inet(&ours, port).expect("start cyrkit serve");

    let cases = cases();
    let cyrus_replies = deliver_all(theirs.lmtp_port, &cases);
    let cyrkit_replies = deliver_all(port, &cases);
    for ((case, a), b) in cases.iter().zip(&cyrus_replies).zip(&cyrkit_replies) {
        assert_eq!(a, b, "{}: replies (Cyrus left, cyrkit right)", case.what);
    }
    // The replies are the ones the cases are about (both sides agree, so check one).
    let codes: Vec<Vec<u16>> = cyrus_replies
        .iter()
        .map(|r| r.iter().map(|s| s[..3].parse().unwrap()).collect())
        .collect();
    assert_eq!(
        codes,
        [
            vec![250, 250, 250],
            vec![250, 250, 250],
            vec![250, 550, 250],
            vec![250],
            vec![452, 250],
            vec![250],
            vec![250, 250],
            vec![250, 250],
            vec![250],
            vec![250],
        ]
    );

    // Over quota as a permanent failure.
    server.assert_clean_stop();
    theirs.stop().unwrap();
    for cy in [&theirs, &ours] {
        add_conf(
            cy,
            "lmtp_over_quota_perm_failure: yes\nlmtp_fuzzy_mailbox_match: yes\n",
        );
    }
    theirs.start_master().unwrap();
    let mut server = CyrkitServe::lmtp_inet(&ours, port).expect("restart cyrkit serve");
    let perm = [
        case(
            "dave over quota, permanent",
            &["dave"],
            message(Some("quota3"), b"over quota", b"refused for dave\n"),
        ),
        case(
            "fuzzy +detail",
            &["bob+Lists"],
            message(Some("fuzzy"), b"fuzzy", b"into user.bob.lists\n"),
        ),
    ];
    let a = deliver_all(theirs.lmtp_port, &perm);
    let b = deliver_all(port, &perm);
    assert_eq!(a, b, "over quota with lmtp_over_quota_perm_failure");
    assert!(a[0][0].starts_with("552 5.2.2 Over quota"), "{a:?}");
    server.assert_clean_stop();

    // What Cyrus's imapd serves.
    let mut set_aside_a: BTreeMap<&str, u64> = BTreeMap::new();
    let mut set_aside_b: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0;
    for mbox in MAILBOXES {
        let (a, b) = (served(&theirs, mbox), served(&ours, mbox));
        assert_eq!(a.len(), b.len(), "{mbox}: message count");
        total += a.len();
        for (x, y) in a.iter().zip(&b) {
            let ctx = format!("{mbox} uid {}", x.uid);
            assert_eq!(x.uid, y.uid, "{ctx}");
            assert_eq!(x.flags, y.flags, "{ctx}");
            assert_eq!(x.envelope, y.envelope, "{ctx}");
            assert_eq!(x.bodystructure, y.bodystructure, "{ctx}");
            assert!(x.text == y.text, "{ctx}: BODY[TEXT] differs");
            assert_eq!(
                String::from_utf8_lossy(&x.header),
                String::from_utf8_lossy(&y.header),
                "{ctx}: headers"
            );
            assert_eq!(x.size - x.set_aside, y.size - y.set_aside, "{ctx}: size");
            // Cyrus (built with Sieve) names its interpreter; cyrkit runs none, says none.
            assert!(x.x_sieve && !y.x_sieve, "{ctx}: X-Sieve");
            let root = ROOTS
                .iter()
                .map(|r| r.0)
                .find(|r| mbox == *r || mbox.starts_with(&format!("{r}.")));
            if let Some(root) = root {
                *set_aside_a.entry(root).or_default() += x.set_aside;
                *set_aside_b.entry(root).or_default() += y.set_aside;
            }
        }
    }
    // alice 6, bob 3 + lists 2 (one by fuzzy match), carol 4, dave 1, shared.folder 1.
    assert_eq!(total, 17, "messages delivered");

    // The same files share inodes (3 links for the message to three users).
    let (ga, gb) = (
        link_groups(&theirs.spool_dir()),
        link_groups(&ours.spool_dir()),
    );
    assert_eq!(ga, gb, "single-instance link groups");
    assert!(ga.iter().any(|g| g.len() == 3), "{ga:?}");

    // Quota usage per root, the set-aside lines accounted for.
    let (qa, qb) = (quota_usage(&theirs), quota_usage(&ours));
    assert_eq!(qa.keys().collect::<Vec<_>>(), qb.keys().collect::<Vec<_>>());
    for (root, (sa, ma)) in &qa {
        let (sb, mb) = qb[root];
        assert_eq!(*ma, mb, "{root}: MESSAGE usage");
        let (xa, xb) = (
            set_aside_a.get(root.as_str()).copied().unwrap_or(0),
            set_aside_b.get(root.as_str()).copied().unwrap_or(0),
        );
        assert_eq!(
            sa - xa,
            sb - xb,
            "{root}: STORAGE usage less set-aside lines"
        );
    }

    let (ra, rb) = (reconstruct_report(&theirs), reconstruct_report(&ours));
    assert_eq!(
        ra, rb,
        "reconstruct -n (Cyrus's delivery left, cyrkit's right)"
    );
    for line in &rb {
        let t = line.trim();
        assert!(
            t.starts_with("user.") || t.starts_with("shared"),
            "reconstruct -n on cyrkit's copy: {rb:?}"
        );
    }

    sieve_recipient(&theirs, &ours, port);
}

/// Gives erin an active Sieve script that flags every message, where Cyrus looks for it
/// (`{sievedir}/e/erin/defaultbc`, legacy directories).
fn install_sieve_script(cy: &CyrusInstance) {
    let dir = cy.root().join("sieve/e/erin");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("flag.script"),
        "require [\"imap4flags\"];\naddflag \"\\\\Flagged\";\nkeep;\n",
    )
    .unwrap();
    support::cyrus::chown_cyrus(&cy.root().join("sieve")).unwrap();
    let (src, bc) = (dir.join("flag.script"), dir.join("flag.bc"));
    let o = cy
        .run_tool("sievec", &[src.to_str().unwrap(), bc.to_str().unwrap()])
        .unwrap();
    assert!(o.status.success(), "sievec: {o:?}");
    std::os::unix::fs::symlink("flag.bc", dir.join("defaultbc")).unwrap();
    support::cyrus::chown_cyrus(&dir).unwrap();
}

/// FLAGS of erin's messages.
fn erin_flags(cy: &CyrusInstance) -> Vec<Vec<String>> {
    let mut c = cy.imap_admin().unwrap();
    c.examine("user.erin").unwrap();
    let s = c.fetch_summary().unwrap();
    c.logout().unwrap();
    s.into_iter().map(|m| m.flags).collect()
}

/// A user with an active Sieve script: Cyrus runs it; cyrkit, which cannot, refuses the
/// recipient with 451 4.3.0 so the MTA keeps the message.
fn sieve_recipient(theirs: &CyrusInstance, ours: &CyrusInstance, port: u16) {
    for cy in [theirs, ours] {
        install_sieve_script(cy);
    }
    let mut server = CyrkitServe::lmtp_inet(ours, port).expect("restart cyrkit serve");
    let case = [case(
        "erin has a Sieve script",
        &["erin", "alice"],
        message(Some("sieve"), b"sieve", b"for a user with a script\n"),
    )];
    let a = deliver_all(theirs.lmtp_port, &case);
    let b = deliver_all(port, &case);
    assert!(
        a[0][0].starts_with("250 ") && a[0][1].starts_with("250 "),
        "{a:?}"
    );
    assert_eq!(
        b[0],
        [
            "451 4.3.0 Recipient has a Sieve script this server cannot run",
            a[0][1].as_str()
        ],
        "cyrkit"
    );
    server.assert_clean_stop();
    assert!(
        server.output().contains("erin has an active Sieve script"),
        "{}",
        server.output()
    );
    // Cyrus ran the script found where cyrkit looked.
    assert_eq!(erin_flags(theirs), [["\\Flagged", "\\Recent"]]);
    assert!(erin_flags(ours).is_empty());
}
