//! spool::append and spool::deliver_db against a real Cyrus 3.6.
//!
//! Messages appended by `MailboxWriter` must be what Cyrus serves for the same message
//! delivered by its own lmtpd (IMAP FETCH of flags, size, body, envelope, bodystructure),
//! with quota usage, `reconstruct -n`, `mbexamine` and `cyr_dbtool` agreeing; a running
//! imapd sees the new message on NOOP; and a crash at every durable step leaves a mailbox
//! Cyrus opens with every committed message in it.
//!
//! Skips without Cyrus or root unless `CYRKIT_REQUIRE_CYRUS=1`.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cyrkit::format::index::{FLAG_DELETED, FLAG_INTERNAL_EXPUNGED};
use cyrkit::spool::append::{MailboxWriter, SpoolContext, StagedMessage};
use cyrkit::spool::config::Config;
use cyrkit::spool::deliver_db;
use support::cyrus::{chown_cyrus, require_cyrus, CyrusInstance, CyrusOptions, ImapClient};

const MESSAGE: &str = "From: Alice Example <alice@example.org>\r\n\
To: bob@example.org, \"Carol\" <carol@example.org>\r\n\
Subject: =?utf-8?q?caf=C3=A9?= test\r\n\
Date: Tue, 02 May 2023 10:11:12 +0200\r\n\
Message-ID: <append-test-1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
hello\r\n\
--b1\r\n\
Content-Type: application/octet-stream; name=x.bin\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAECAwQ=\r\n\
--b1--\r\n";

fn ctx(cy: &CyrusInstance) -> SpoolContext {
    let config = Config::load(&cy.conf_path()).unwrap();
    SpoolContext::open(Arc::new(config)).unwrap()
}

/// A stage file holding `bytes`, owned by cyrus as lmtpd's would be.
fn stage(ctx: &SpoolContext, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = ctx.stage_dir("default").unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    chown_cyrus(&p).unwrap();
    p
}

/// The message files Cyrus's lmtpd wrote for uid 1 of `mailbox`.
fn delivered_file(ctx: &SpoolContext, mailbox: &[u8], uid: u32) -> PathBuf {
    let w = MailboxWriter::open(ctx, mailbox).unwrap();
    w.message_path(uid)
}

/// FETCH of one message by sequence number, without the `* N FETCH` prefix.
fn fetch_one(c: &mut ImapClient, seq: u32) -> String {
    let raw = c
        .fetch(
            &seq.to_string(),
            "(FLAGS RFC822.SIZE BODY.PEEK[] ENVELOPE BODYSTRUCTURE)",
        )
        .unwrap();
    let s = String::from_utf8_lossy(&raw).into_owned();
    let start = s.find("FETCH (").expect("a FETCH response");
    let end = s.rfind(")\r\n").unwrap_or(s.len());
    s[start..end].to_string()
}

fn quota_used(cy: &CyrusInstance, root: &str) -> (u64, u64) {
    let o = cy.run_tool("quota", &["-J"]).unwrap();
    assert!(o.status.success(), "quota -J: {o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v[root];
    (
        r["STORAGE"]["used"].as_u64().unwrap(),
        r["MESSAGE"]["used"].as_u64().unwrap(),
    )
}

fn reconstruct_n(cy: &CyrusInstance, mailbox: &str) -> String {
    let o = cy.run_tool("reconstruct", &["-n", mailbox]).unwrap();
    assert!(o.status.success(), "reconstruct -n: {o:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn exists_after_noop(c: &mut ImapClient) -> Option<u64> {
    let r = c.ok("NOOP").unwrap();
    let raw = String::from_utf8_lossy(&r.raw()).into_owned();
    raw.lines()
        .rev()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
}

fn run_scenario(opts: CyrusOptions) {
    let mut cy = CyrusInstance::start(&opts).unwrap();
    let mut admin = cy.imap_admin().unwrap();
    for mb in ["user.alice", "user.bob"] {
        admin.create(mb).unwrap();
    }
    admin
        .setquota("user.alice", &[("STORAGE", 1000), ("MESSAGE", 100)])
        .unwrap();
    admin.logout().unwrap();
    // The reference: the message delivered by Cyrus's own lmtpd.
    let mut l = cy.lmtp().unwrap();
    let replies = l
        .deliver("sender@example.org", &["alice"], MESSAGE.as_bytes())
        .unwrap();
    l.quit().unwrap();
    assert!(replies.iter().all(|r| r.is_positive()), "{replies:?}");

    let ctx = ctx(&cy);
    let cyrus_file = delivered_file(&ctx, b"user.alice", 1);
    let bytes = std::fs::read(&cyrus_file).unwrap();
    let cyrus_mtime = std::fs::metadata(&cyrus_file).unwrap().mtime();
    let (used0, msgs0) = quota_used(&cy, "user.alice");
    assert_eq!((used0, msgs0), (bytes.len() as u64, 1));

    // A running imapd with the mailbox selected.
    let mut watcher = cy.imap_login("alice").unwrap();
    watcher.select("INBOX").unwrap();

    // The same bytes, staged and appended by cyrkit to alice and bob: one inode.
    let sp = stage(&ctx, "1234-1-0", &bytes);
    let msg = StagedMessage::from_file_with(&sp, cyrus_mtime, ctx.parse_options()).unwrap();
    assert_eq!(
        msg.message_id.as_deref(),
        Some(&b"<append-test-1@example.org>"[..])
    );
    assert!(ctx.check_quota(b"user.alice", 0, 0).is_ok());
    assert!(ctx.check_quota(b"user.alice", 1000 * 1024, 1).is_err());
    let (id, date) = (
        msg.message_id.clone().unwrap(),
        msg.date_header.clone().unwrap(),
    );
    assert_eq!(date, b"Tue, 02 May 2023 10:11:12 +0200");
    let mut uids = Vec::new();
    for mb in [&b"user.alice"[..], b"user.bob"] {
        let mut w = MailboxWriter::open(&ctx, mb).unwrap();
        // Cyrus's lmtpd marked its delivery to alice under the same key.
        let cyrus_marked = mb == b"user.alice";
        assert_eq!(
            deliver_db::seen(&ctx, &id, w.uniqueid(), &date).unwrap(),
            cyrus_marked
        );
        let uid = w.append(&msg, 0).unwrap();
        let uniqueid = w.uniqueid().to_string();
        let path = w.message_path(uid);
        w.commit().unwrap();
        deliver_db::mark(&ctx, &id, &uniqueid, &date, uid).unwrap();
        assert!(deliver_db::seen(&ctx, &id, &uniqueid, &date).unwrap());
        uids.push((uid, path));
    }
    assert_eq!(uids[0].0, 2);
    assert_eq!(uids[1].0, 1);
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&uids[0].1),
        inode(&uids[1].1),
        "hard links share the inode"
    );
    assert_eq!(inode(&uids[0].1), inode(&sp));
    assert_eq!(std::fs::metadata(&uids[0].1).unwrap().mtime(), cyrus_mtime);
    drop(msg);
    std::fs::remove_file(&sp).unwrap();

    // The running imapd sees the append.
    assert_eq!(exists_after_noop(&mut watcher), Some(2));
    watcher.logout().unwrap();

    // What Cyrus serves for cyrkit's copy equals what it serves for its own delivery.
    let mut c = cy.imap_login("alice").unwrap();
    c.select("INBOX").unwrap();
    let theirs = fetch_one(&mut c, 1);
    let ours = fetch_one(&mut c, 2);
    assert_eq!(ours, theirs);
    c.logout().unwrap();

    // Quota, reconstruct, mbexamine, deliver.db through Cyrus's tools.
    assert_eq!(quota_used(&cy, "user.alice"), (2 * bytes.len() as u64, 2));
    for mb in ["user.alice", "user.bob"] {
        let out = reconstruct_n(&cy, mb);
        assert!(
            !out.contains("uid"),
            "reconstruct -n {mb} wants changes:\n{out}"
        );
        assert!(!out.to_lowercase().contains("mismatch"), "{mb}:\n{out}");
    }
    let ex = cy
        .run_tool("mbexamine", &["-u", "2", "user.alice"])
        .unwrap();
    let ex = String::from_utf8_lossy(&ex.stdout).into_owned();
    assert!(ex.contains("UID: 2"), "mbexamine:\n{ex}");
    let db = deliver_db::path(&ctx);
    let o = cy
        .run_tool("cyr_dbtool", &[db.to_str().unwrap(), "twoskip", "show"])
        .unwrap();
    assert!(o.status.success(), "cyr_dbtool: {o:?}");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        shown.matches("<append-test-1@example.org>").count(),
        2,
        "cyr_dbtool show:\n{shown}"
    );

    // Expunge cyrkit's copy in alice (POP3's QUIT): gone from IMAP, quota back down.
    let mut w = MailboxWriter::open(&ctx, b"user.alice").unwrap();
    let before = w.header().clone();
    let recno = (0..w.num_records())
        .find(|&i| w.record(i).unwrap().uid == 2)
        .unwrap();
    w.update_record(recno, &mut |r| {
        r.system_flags |= FLAG_DELETED;
        r.internal_flags |= FLAG_INTERNAL_EXPUNGED;
    })
    .unwrap();
    assert_eq!(w.header().exists, before.exists - 1);
    assert_eq!(w.header().highestmodseq, before.highestmodseq + 1);
    w.commit().unwrap();
    assert_eq!(quota_used(&cy, "user.alice"), (bytes.len() as u64, 1));
    let mut c = cy.imap_login("alice").unwrap();
    let sel = c.select("INBOX").unwrap();
    let raw = String::from_utf8_lossy(&sel.raw()).into_owned();
    assert!(raw.contains("* 1 EXISTS"), "{raw}");
    c.logout().unwrap();
    let out = reconstruct_n(&cy, "user.alice");
    assert!(!out.contains("uid"), "after expunge:\n{out}");
    cy.stop().unwrap();
}

#[test]
fn append_legacy_layout_matches_cyrus_delivery() {
    if !require_cyrus() {
        return;
    }
    run_scenario(CyrusOptions::default());
}

#[test]
fn append_uuid_layout_matches_cyrus_delivery() {
    if !require_cyrus() {
        return;
    }
    run_scenario(CyrusOptions {
        legacy_dirs: false,
        ..CyrusOptions::default()
    });
}

/// The child of [`crash_at_every_step_leaves_a_mailbox_cyrus_opens`]: one delivery to
/// alice (append, commit, deliver.db mark), aborted by `CYRKIT_CRASH_AT`.
#[test]
fn crash_child() {
    let (Ok(conf), Ok(stage)) = (
        std::env::var("CYRKIT_APPEND_CHILD_CONF"),
        std::env::var("CYRKIT_APPEND_CHILD_STAGE"),
    ) else {
        return;
    };
    let config = Config::load(Path::new(&conf)).unwrap();
    let ctx = SpoolContext::open(Arc::new(config)).unwrap();
    let msg = StagedMessage::from_file_with(Path::new(&stage), 1_683_015_072, ctx.parse_options())
        .unwrap();
    let mut w = MailboxWriter::open(&ctx, b"user.alice").unwrap();
    let uid = w.append(&msg, 0).unwrap();
    let uniqueid = w.uniqueid().to_string();
    w.commit().unwrap();
    let (id, date) = (
        msg.message_id.clone().unwrap(),
        msg.date_header.clone().unwrap(),
    );
    deliver_db::mark(&ctx, &id, &uniqueid, &date, uid).unwrap();
}

#[test]
fn crash_at_every_step_leaves_a_mailbox_cyrus_opens() {
    if !require_cyrus() {
        return;
    }
    let mut cy = CyrusInstance::start(&CyrusOptions::default()).unwrap();
    let mut admin = cy.imap_admin().unwrap();
    admin.create("user.alice").unwrap();
    admin
        .setquota("user.alice", &[("STORAGE", 100000)])
        .unwrap();
    admin.logout().unwrap();
    let ctx = ctx(&cy);
    let sp = stage(&ctx, "crash-stage", MESSAGE.as_bytes());
    let mut exists = 0u64;
    let mut completed = false;
    let mut steps = 0;
    for n in 1..100u32 {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("CYRKIT_APPEND_CHILD_CONF", cy.conf_path())
            .env("CYRKIT_APPEND_CHILD_STAGE", &sp)
            .env("CYRKIT_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        // Cyrus opens the mailbox and serves every message it lists, intact.
        let mut c = cy.imap_login("alice").unwrap();
        let sel = c.select("INBOX").unwrap();
        let raw = String::from_utf8_lossy(&sel.raw()).into_owned();
        let now: u64 = raw
            .lines()
            .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
            .unwrap_or_else(|| panic!("step {n}: no EXISTS in {raw}"));
        assert!(
            now == exists || now == exists + 1,
            "step {n}: {exists} -> {now}"
        );
        exists = now;
        for seq in 1..=now {
            let body = c.fetch(&seq.to_string(), "BODY.PEEK[]").unwrap();
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(
                body.contains("AAECAwQ="),
                "step {n}: message {seq} not served:\n{body}"
            );
        }
        c.logout().unwrap();
        // Cyrus's reconstruct may only want to adopt the file of an uncommitted append.
        let rec = reconstruct_n(&cy, "user.alice");
        let orphan = format!("user.alice uid {} found - adding", exists + 1);
        for line in rec.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line == "user.alice" || line == orphan,
                "step {n}: reconstruct -n says:\n{rec}"
            );
        }
        // Quota may count an append whose header never made it, never miss one.
        let (used, _) = quota_used(&cy, "user.alice");
        assert!(
            used >= exists * MESSAGE.len() as u64,
            "step {n}: quota {used} < {exists} messages"
        );
        if out.status.success() {
            completed = true;
            steps = n;
            break;
        }
    }
    assert!(completed, "the child never ran to its end");
    assert!(steps > 10, "only {steps} crash points on the append path");
    // Every run either committed its message or left nothing Cyrus serves; the last one
    // committed, and its deliver.db mark is there.
    assert!(exists >= 1);
    let msg = StagedMessage::from_file(&sp, 0).unwrap();
    let w = MailboxWriter::open(&ctx, b"user.alice").unwrap();
    assert!(deliver_db::seen(
        &ctx,
        msg.message_id.as_deref().unwrap(),
        w.uniqueid(),
        msg.date_header.as_deref().unwrap()
    )
    .unwrap());
    drop(w);
    cy.stop().unwrap();
}
