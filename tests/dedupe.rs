//! `cyrkit singleinstance-dedupe` end to end: the real binary on copies of the real-Cyrus
//! fixtures (which git stores without hard links: exactly a spool after a restore), with a
//! file changed on disk, mismatched ownership, mailbox selection, a kill at every durable
//! step, and on spools a running Cyrus 3.6 has written (multi-recipient LMTP deliveries,
//! links broken, then restored while lmtpd keeps delivering).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::cli::{self, fixture_src, Run};
use support::cyrus::{crlf, require_cyrus, CyrusInstance, CyrusOptions};

// ---------------------------------------------------------------------------------------------
// Running the binary

fn dedupe_env(conf: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cli::run(&["singleinstance-dedupe"], Some(conf), args, &env)
}

fn dedupe(conf: &Path, args: &[&str]) -> Run {
    dedupe_env(conf, args, &[])
}

/// A private copy of a fixture: every message file its own inode, as git stores it.
struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Store {
    fn new(fixture: &str) -> Store {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-dedupe-");
        Store { _tmp: tmp, root }
    }
    fn conf(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at a spool

/// Every message file (`<uid>.`) under `dir`, relative to `root`.
fn message_files(root: &Path, dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let n = e.file_name().to_string_lossy();
            n.ends_with('.') && n.trim_end_matches('.').parse::<u32>().is_ok()
        })
        .map(|e| e.path().strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

type Groups = BTreeSet<BTreeSet<PathBuf>>;

/// Groups (two or more) of message files under `spool` sharing what `key` returns.
fn groups_by<K: Ord>(root: &Path, spool: &Path, key: impl Fn(&Path) -> K) -> Groups {
    let mut by: BTreeMap<K, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in message_files(root, spool) {
        by.entry(key(&root.join(&f))).or_default().insert(f);
    }
    by.into_values().filter(|g| g.len() >= 2).collect()
}

fn inode_groups(root: &Path, spool: &Path) -> Groups {
    groups_by(root, spool, |p| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    })
}

fn content_groups(root: &Path, spool: &Path) -> Groups {
    groups_by(root, spool, |p| std::fs::read(p).unwrap())
}

/// Path, bytes and inode of every message file (to prove a run changed nothing).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u64)> {
    message_files(root, root)
        .into_iter()
        .map(|f| {
            let p = root.join(&f);
            let ino = std::fs::metadata(&p).unwrap().ino();
            (f, (std::fs::read(&p).unwrap(), ino))
        })
        .collect()
}

fn temp_links(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cyrkit-link"))
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// The groups of `expected/hardlinks.txt`.
fn recorded_groups(fixture: &str) -> Groups {
    std::fs::read_to_string(fixture_src(fixture).join("expected/hardlinks.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(PathBuf::from).collect())
        .collect()
}

fn files_linked(groups: &Groups) -> u64 {
    groups.iter().map(|g| g.len() as u64 - 1).sum()
}

fn bytes_saved(root: &Path, groups: &Groups) -> u64 {
    groups
        .iter()
        .map(|g| {
            let first = g.iter().next().unwrap();
            std::fs::metadata(root.join(first)).unwrap().len() * (g.len() as u64 - 1)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 1. Fixtures after a restore

fn restores_the_single_instance_groups(fixture: &str) {
    let s = Store::new(fixture);
    let spool = s.path("spool");
    assert!(
        inode_groups(&s.root, &spool).is_empty(),
        "the copy has no links"
    );
    // Every set of identical live message files; the fixture's recorded single-instance
    // groups are among them (the others are identical APPENDs, equally linkable).
    let want = content_groups(&s.root, &spool);
    let recorded = recorded_groups(fixture);
    for g in &recorded {
        assert!(
            want.contains(g),
            "{fixture}: recorded group {g:?} not identical"
        );
    }
    assert!(want.len() >= recorded.len() && !recorded.is_empty());

    // -n: reports exactly the work, changes nothing, exits 1.
    let before = snapshot(&s.root);
    let dry = dedupe(&s.conf(), &["-n", "--json"]);
    assert_eq!(dry.code, 1, "{}", dry.describe());
    let d = dry.json();
    assert_eq!(d["dry_run"], true);
    assert_eq!(d["files_linked"].as_u64(), Some(files_linked(&want)));
    assert_eq!(d["groups"].as_u64(), Some(want.len() as u64));
    assert_eq!(d["inodes_freed"].as_u64(), Some(files_linked(&want)));
    assert_eq!(d["bytes_saved"].as_u64(), Some(bytes_saved(&s.root, &want)));
    assert_eq!(snapshot(&s.root), before, "{fixture}: -n changed the spool");

    let real = dedupe(&s.conf(), &["--json"]);
    assert_eq!(real.code, 0, "{}", real.describe());
    let r = real.json();
    for k in ["files_linked", "groups", "inodes_freed", "bytes_saved"] {
        assert_eq!(r[k], d[k], "{fixture}: {k} of -n and the real run");
    }
    assert_eq!(inode_groups(&s.root, &spool), want, "{fixture}");
    // Same bytes at every path, nothing else touched, no temporary left.
    let after = snapshot(&s.root);
    assert_eq!(
        after.iter().map(|(p, (b, _))| (p, b)).collect::<Vec<_>>(),
        before.iter().map(|(p, (b, _))| (p, b)).collect::<Vec<_>>()
    );
    assert!(temp_links(&s.root).is_empty());

    // The store is still consistent for cyrkit's checker, GUIDs included.
    let check = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(["mbcheck", "-G", "--no-progress", "-C"])
        .arg(s.conf())
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Idempotent: nothing to do the second time, and -n agrees.
    let again = dedupe(&s.conf(), &["--json"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert_eq!(again.json()["files_linked"].as_u64(), Some(0));
    assert_eq!(snapshot(&s.root), after);
    assert_eq!(dedupe(&s.conf(), &["-n"]).code, 0);
}

#[test]
fn legacy_fixture_gets_its_hard_links_back() {
    restores_the_single_instance_groups("legacy");
}

#[test]
fn uuid_fixture_gets_its_hard_links_back() {
    restores_the_single_instance_groups("uuid");
}

#[test]
fn human_report_reads_like_hardlinks_summary() {
    let s = Store::new("legacy");
    let r = dedupe(&s.conf(), &["-n"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    for want in [
        "dry run",
        "groups",
        "files would link",
        "inodes freed",
        "bytes saved",
    ] {
        assert!(r.stdout.contains(want), "{want}:\n{}", r.stdout);
    }
    let q = dedupe(&s.conf(), &["-q"]);
    assert_eq!((q.code, q.stdout.as_str()), (0, ""), "{}", q.describe());
}

// ---------------------------------------------------------------------------------------------
// 2. Files that must not be linked

/// Flip one byte of a message body, keeping the size.
fn corrupt_same_size(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let last = b.len() - 3;
    b[last] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_file_changed_on_disk_is_never_linked() {
    let s = Store::new("legacy");
    // bob's copy of the three-recipient delivery changes (same size, other bytes).
    let bob = s.path("spool/b/user/bob/1.");
    corrupt_same_size(&bob);
    let bob_bytes = std::fs::read(&bob).unwrap();
    let r = dedupe(&s.conf(), &["--json"]);
    assert_eq!(r.code, 1, "problems found: {}", r.describe());
    let j = r.json();
    let findings = j["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{}", r.describe());
    assert_eq!(findings[0]["kind"], "content");
    assert_eq!(findings[0]["file"].as_str(), bob.to_str());
    assert_eq!(std::fs::read(&bob).unwrap(), bob_bytes);
    assert_eq!(std::fs::metadata(&bob).unwrap().nlink(), 1);
    let alice = std::fs::metadata(s.path("spool/a/user/alice/1.")).unwrap();
    let carol = std::fs::metadata(s.path("spool/c/user/carol/1.")).unwrap();
    assert_eq!(alice.ino(), carol.ino(), "the intact copies are linked");

    // The copy that would have been kept is the changed one: another copy is kept instead.
    let s = Store::new("legacy");
    let alice = s.path("spool/a/user/alice/1.");
    corrupt_same_size(&alice);
    let r = dedupe(&s.conf(), &["--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    let j = r.json();
    assert_eq!(j["findings"][0]["file"].as_str(), alice.to_str());
    assert_eq!(std::fs::metadata(&alice).unwrap().nlink(), 1);
    let bob = std::fs::metadata(s.path("spool/b/user/bob/1.")).unwrap();
    let carol = std::fs::metadata(s.path("spool/c/user/carol/1.")).unwrap();
    assert_eq!(bob.ino(), carol.ino());

    // A different size is caught before any read.
    let s = Store::new("legacy");
    let carol = s.path("spool/c/user/carol/3.");
    let mut b = std::fs::read(&carol).unwrap();
    b.extend_from_slice(b"x");
    std::fs::write(&carol, &b).unwrap();
    let r = dedupe(&s.conf(), &["--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    assert!(r.stdout.contains("the index says"), "{}", r.stdout);
    assert_eq!(std::fs::read(&carol).unwrap(), b);
}

#[test]
fn copies_with_another_mode_are_reported_not_linked() {
    let s = Store::new("legacy");
    let carol = s.path("spool/c/user/carol/3.");
    let alice = s.path("spool/a/user/alice/10.");
    let mode = std::fs::metadata(&alice).unwrap().mode() & 0o7777;
    std::fs::set_permissions(&carol, std::fs::Permissions::from_mode(mode ^ 0o004)).unwrap();
    let r = dedupe(&s.conf(), &["--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    let j = r.json();
    let f = &j["findings"].as_array().unwrap()[0];
    assert_eq!(f["kind"], "ownership", "{}", r.describe());
    assert_eq!(f["file"].as_str(), carol.to_str());
    assert_ne!(
        std::fs::metadata(&carol).unwrap().ino(),
        std::fs::metadata(&alice).unwrap().ino()
    );
    // The other groups are done.
    assert_eq!(j["files_linked"].as_u64(), Some(7));
}

#[test]
fn an_already_partly_linked_group_is_finished() {
    let s = Store::new("legacy");
    // bob and carol share an inode already; alice's copy is separate.
    let bob = s.path("spool/b/user/bob/1.");
    let carol = s.path("spool/c/user/carol/1.");
    std::fs::remove_file(&carol).unwrap();
    std::fs::hard_link(&bob, &carol).unwrap();
    let r = dedupe(&s.conf(), &["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let j = r.json();
    let links = j["links"].as_array().unwrap();
    let alice = s.path("spool/a/user/alice/1.");
    let for_alice: Vec<&Value> = links
        .iter()
        .filter(|l| l["file"].as_str() == alice.to_str())
        .collect();
    assert_eq!(for_alice.len(), 1, "alice's copy is the one replaced");
    assert_eq!(for_alice[0]["kept"].as_str(), bob.to_str());
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&alice), ino(&bob));
    assert_eq!(ino(&carol), ino(&bob));
    assert_eq!(std::fs::metadata(&bob).unwrap().nlink(), 3);
}

// ---------------------------------------------------------------------------------------------
// 3. Selection

#[test]
fn prefixes_and_partitions_select_mailboxes() {
    // `user` covers every user's mailboxes but not `shared.folder`, so bob's Archive copy of
    // a message also in shared.folder stays separate.
    let s = Store::new("legacy");
    let r = dedupe(&s.conf(), &["--json", "user"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let j = r.json();
    let archive3 = s.path("spool/b/user/bob/Archive/3.");
    assert_eq!(std::fs::metadata(&archive3).unwrap().nlink(), 1);
    assert_eq!(j["files_linked"].as_u64(), Some(7));

    // One user alone has no duplicates of its own.
    let s = Store::new("legacy");
    let r = dedupe(&s.conf(), &["--json", "user.bob"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(r.json()["files_linked"].as_u64(), Some(0));
    assert!(r.json()["mailboxes_scanned"].as_u64() == Some(2));

    let r = dedupe(&s.conf(), &["-n", "-p", "default", "--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    assert_eq!(r.json()["files_linked"].as_u64(), Some(8));
    let r = dedupe(&s.conf(), &["-n", "-p", "nosuchpart"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    assert!(r.stderr.contains("nosuchpart"), "{}", r.stderr);
}

#[test]
fn deleted_mailboxes_and_expunged_records_only_with_flags() {
    let s = Store::new("legacy");
    let base = dedupe(&s.conf(), &["-n", "--json"]).json();
    let more = dedupe(
        &s.conf(),
        &["-n", "--json", "--include-deleted", "--include-expunged"],
    )
    .json();
    // user.alice's DELETED Trash (2 records) and bob's two expunged records.
    assert_eq!(base["mailboxes_scanned"].as_u64(), Some(13));
    assert_eq!(more["mailboxes_scanned"].as_u64(), Some(14));
    assert_eq!(
        more["messages_scanned"].as_u64(),
        base["messages_scanned"].as_u64().map(|n| n + 4)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Killed at every durable step

#[test]
fn killed_at_any_step_no_message_file_is_ever_missing() {
    let src = fixture_src("legacy");
    let reference = snapshot(&src);
    let want = content_groups(&src, &src.join("spool"));
    let mut n = 1;
    loop {
        let s = Store::new("legacy");
        let r = dedupe_env(&s.conf(), &["-q"], &[("CYRKIT_CRASH_AT", n.to_string())]);
        // Every path Cyrus knows is there with its bytes, whatever step we died at.
        let now = snapshot(&s.root);
        assert_eq!(now.len(), reference.len(), "step {n}");
        for (p, (bytes, _)) in &reference {
            assert_eq!(now.get(p).map(|x| &x.0), Some(bytes), "step {n}: {p:?}");
        }
        // A rerun finishes the job and leaves no temporary link.
        let again = dedupe(&s.conf(), &["-q"]);
        assert_eq!(again.code, 0, "step {n}: {}", again.describe());
        assert_eq!(inode_groups(&s.root, &s.path("spool")), want, "step {n}");
        assert!(temp_links(&s.root).is_empty(), "step {n}");
        if r.code == 0 {
            // Ran to the end: n is past the last step.
            assert!(n > 16, "only {n} steps for 8 links");
            break;
        }
        assert_ne!(r.code, 1, "step {n}: {}", r.describe());
        n += 1;
        assert!(n < 200, "never ran to the end");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Real Cyrus

fn message(subject: &str, body: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: sender@example.org\nTo: list@example.com\nSubject: {subject}\n\
             Message-ID: <{subject}@example.org>\n\n{body}\n"
        )
        .as_bytes(),
    )
}

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Deliveries to several recipients at once: single-instance groups of 2 to 4 links.
fn deliver_batch(cy: &CyrusInstance, tag: &str, n: usize) {
    let mut lmtp = cy.lmtp().unwrap();
    for i in 0..n {
        let rcpts: Vec<&str> = USERS
            .iter()
            .enumerate()
            .filter(|(u, _)| (i + u) % 3 != 0 || i % 4 == 0)
            .map(|(_, u)| *u)
            .collect();
        let body = format!("message {i} of {tag}\n{}", "x".repeat(i * 37));
        let replies = lmtp
            .deliver(
                "sender@example.org",
                &rcpts,
                &message(&format!("{tag}{i}"), &body),
            )
            .unwrap();
        assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    }
    lmtp.quit().unwrap();
}

/// Copy every multiply-linked message file to its own inode, keeping bytes, owner, mode and
/// mtime: what a restore without hard links does.
fn break_links(spool: &Path) -> usize {
    let mut n = 0;
    for f in message_files(spool, spool) {
        let p = spool.join(&f);
        let m = std::fs::metadata(&p).unwrap();
        if m.nlink() < 2 {
            continue;
        }
        let tmp = p.with_file_name(".restore-tmp");
        std::fs::copy(&p, &tmp).unwrap();
        std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid())).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
        let mtime = std::fs::File::options().write(true).open(&tmp).unwrap();
        mtime.set_modified(m.modified().unwrap()).unwrap();
        drop(mtime);
        std::fs::rename(&tmp, &p).unwrap();
        n += 1;
    }
    n
}

/// Every message of every user's INBOX, bytes and flags, as IMAP serves it.
fn imap_dump(cy: &CyrusInstance) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for u in USERS {
        let mut c = cy.imap_login(u).unwrap();
        c.examine("INBOX").unwrap();
        let raw = c.fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])").unwrap();
        // The tagged status line says how long the command took: leave it out.
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body: String = text
            .split_inclusive('\n')
            .filter(|l| !l.contains("OK Completed"))
            .collect();
        out.insert(u.to_string(), body);
        c.logout().unwrap();
    }
    out
}

fn real_cyrus(opts: &CyrusOptions) -> CyrusInstance {
    let cy = CyrusInstance::start(opts).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for u in USERS {
        admin.create(&format!("user.{u}")).unwrap();
    }
    admin.logout().unwrap();
    cy
}

fn reconstruct_quiet(cy: &CyrusInstance) {
    let out = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let names: BTreeSet<String> = USERS.iter().map(|u| format!("user.{u}")).collect();
    for line in text.lines() {
        assert!(
            names.contains(line.trim()),
            "reconstruct -n reports more than mailbox names:\n{text}"
        );
    }
}

#[test]
fn real_cyrus_spool_with_broken_links_gets_its_groups_back() {
    if !require_cyrus() {
        return;
    }
    let mut cy = real_cyrus(&CyrusOptions::default());
    deliver_batch(&cy, "restore", 24);
    let spool = cy.spool_dir();
    let original = inode_groups(&spool, &spool);
    assert!(original.len() >= 20, "{original:?}");
    let dump = imap_dump(&cy);
    let broken = break_links(&spool);
    assert!(broken >= 40, "{broken}");
    assert!(inode_groups(&spool, &spool).is_empty());

    // While Cyrus runs: the locks are Cyrus's own.
    let r = dedupe(&cy.conf_path(), &["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(inode_groups(&spool, &spool), original);
    let j = r.json();
    assert_eq!(j["files_linked"].as_u64(), Some(files_linked(&original)));
    assert_eq!(
        j["bytes_saved"].as_u64(),
        Some(bytes_saved(&spool, &original))
    );
    assert!(
        imap_dump(&cy) == dump,
        "IMAP serves something else after dedupe"
    );
    assert!(temp_links(cy.root()).is_empty());
    // Files keep the cyrus owner: root acted as the spool's owner.
    let (uid, _) = support::cyrus::cyrus_ids().unwrap();
    for f in message_files(&spool, &spool) {
        assert_eq!(std::fs::metadata(spool.join(f)).unwrap().uid(), uid);
    }
    let again = dedupe(&cy.conf_path(), &["--json"]);
    assert_eq!(again.json()["files_linked"].as_u64(), Some(0));
    cy.stop().unwrap();
    // What a kill between link and rename leaves: a temporary link Cyrus must ignore.
    let inbox = spool.join("a/user/alice");
    std::fs::hard_link(inbox.join("1."), inbox.join(".2.cyrkit-link")).unwrap();
    reconstruct_quiet(&cy);
    assert!(inbox.join(".2.cyrkit-link").exists());
}

#[test]
fn real_cyrus_deliveries_during_dedupe_lose_nothing() {
    if !require_cyrus() {
        return;
    }
    let mut cy = real_cyrus(&CyrusOptions::default());
    deliver_batch(&cy, "before", 120);
    let spool = cy.spool_dir();
    break_links(&spool);
    let conf = cy.conf_path();
    let deliveries = 3usize;
    let per = 25usize;
    std::thread::scope(|s| {
        let cy = &cy;
        let writer = s.spawn(move || {
            for k in 0..deliveries {
                deliver_batch(cy, &format!("during{k}-"), per);
            }
        });
        let mut runs = 0;
        let mut linked = 0;
        while !writer.is_finished() || runs < 2 {
            let r = dedupe(&conf, &["--json"]);
            assert_eq!(r.code, 0, "{}", r.describe());
            linked += r.json()["files_linked"].as_u64().unwrap();
            runs += 1;
        }
        writer.join().unwrap();
        eprintln!("{runs} runs during the deliveries linked {linked} files");
        assert!(linked > 0);
    });
    let before_final = imap_dump(&cy);
    let r = dedupe(&conf, &["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(
        imap_dump(&cy) == before_final,
        "IMAP serves something else after dedupe"
    );
    // Everything identical is linked, nothing missing.
    assert_eq!(inode_groups(&spool, &spool), content_groups(&spool, &spool));
    let mut total = 0;
    for u in USERS {
        let mut c = cy.imap_login(u).unwrap();
        total += c.examine_status("INBOX").unwrap().messages;
        c.logout().unwrap();
    }
    // Every delivery is there for each recipient.
    let want = expected_messages(120) + deliveries * expected_messages(per);
    assert_eq!(total as usize, want);
    cy.stop().unwrap();
    reconstruct_quiet(&cy);
}

/// How many mailbox copies `deliver_batch(n)` makes.
fn expected_messages(n: usize) -> usize {
    (0..n)
        .map(|i| {
            (0..USERS.len())
                .filter(|u| (i + u) % 3 != 0 || i % 4 == 0)
                .count()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 6. Benchmark spool (scripts/bench-dedupe)

/// Writes a spool "after a restore" for `scripts/bench-dedupe`, with the crate's own writers:
/// `CYRKIT_BENCH_FILES` message files (default 100000) spread over users of 100 messages,
/// `CYRKIT_BENCH_DUP_PCT` percent of them (default 30) byte-identical copies of a message
/// in another user's INBOX, each its own inode. Sizes follow a rough mail distribution
/// (1 KiB to 200 KiB, most under 20 KiB). Run with
/// `CYRKIT_BENCH_DIR=DIR cargo test --test dedupe -- --ignored --exact generate_bench_spool`.
#[test]
#[ignore = "writes a large spool; used by scripts/bench-dedupe"]
fn generate_bench_spool() {
    use cyrkit::format::cyrusdb::KeyOrder;
    use cyrkit::format::mboxlist::{write_dlist_value, MboxEntry, MboxKey};
    use cyrkit::format::{dlist, header, index, twoskip};
    use cyrkit::spool::names::{MboxName, NameConfig};

    let env_num = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let out = PathBuf::from(std::env::var("CYRKIT_BENCH_DIR").expect("CYRKIT_BENCH_DIR"));
    let files = env_num("CYRKIT_BENCH_FILES", 100_000);
    let dup_pct = env_num("CYRKIT_BENCH_DUP_PCT", 30);
    const PER_USER: u64 = 100;
    let users = files.div_ceil(PER_USER);

    let src = fixture_src("legacy");
    std::fs::create_dir_all(out.join("conf")).unwrap();
    std::fs::create_dir_all(out.join("spool")).unwrap();
    std::fs::copy(src.join("imapd.conf"), out.join("imapd.conf")).unwrap();

    // Templates from the real-Cyrus fixture: alice's entry, header and index header.
    let nc = NameConfig::default();
    let db = std::fs::read(src.join("conf/mailboxes.db")).unwrap();
    let pairs =
        cyrkit::spool::db::read_pairs(&db, cyrkit::format::cyrusdb::Backend::Twoskip).unwrap();
    let alice = MboxName::user_inbox(b"alice", &nc).unwrap();
    let name_key = MboxKey::Name(alice.to_dbname()).encode();
    let (_, v) = pairs.iter().find(|(k, _)| *k == name_key).unwrap();
    let entry = MboxEntry::from_v36_dlist(&dlist::parse(v).unwrap()).unwrap();
    let hdr_bytes = std::fs::read(src.join("spool/a/user/alice/cyrus.header")).unwrap();
    let hdr = header::parse(&hdr_bytes).unwrap();
    let idx_bytes = std::fs::read(src.join("spool/a/user/alice/cyrus.index")).unwrap();
    let ihdr = index::Index::open(&idx_bytes).unwrap().header().clone();
    let version = ihdr.minor_version;
    let config = cyrkit::spool::config::Config::load(&out.join("imapd.conf")).unwrap();
    let layout = cyrkit::spool::paths::Layout::from_config(&config).unwrap();
    let data_dir = |name: &MboxName| {
        layout
            .data_dir("default", cyrkit::spool::paths::MailboxDir::Legacy(name))
            .unwrap()
    };

    // A small deterministic generator (xorshift), so every run writes the same spool.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut db_pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Every message written, to copy from.
    let mut written: Vec<PathBuf> = Vec::new();
    let mut total = 0u64;
    for u in 0..users {
        let userid = format!("u{u:06}");
        let name = MboxName::user_inbox(userid.as_bytes(), &nc).unwrap();
        let uniqueid = format!("bench{u:010}");
        let mut e = entry.clone();
        e.uniqueid = Some(uniqueid.clone().into_bytes());
        e.uidvalidity = 1_600_000_000 + u as u32;
        db_pairs.push((
            MboxKey::Name(name.to_dbname()).encode(),
            write_dlist_value(&e.to_v36_name_dlist()),
        ));
        let mut ie = e.clone();
        ie.dbname = Some(name.to_dbname());
        db_pairs.push((
            MboxKey::Id(uniqueid.clone().into_bytes()).encode(),
            write_dlist_value(&ie.to_v36_id_dlist()),
        ));
        let dir = data_dir(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = hdr.clone();
        h.name = Some(name.to_internal());
        h.uniqueid = Some(uniqueid.into_bytes());
        h.quotaroot = None;
        std::fs::write(dir.join("cyrus.header"), h.write().unwrap()).unwrap();

        let mut records = Vec::new();
        for uid in 1..=PER_USER as u32 {
            if total >= files {
                break;
            }
            total += 1;
            let copy = !written.is_empty() && rnd() % 100 < dup_pct;
            let bytes = if copy {
                let from = &written[(rnd() % written.len() as u64) as usize];
                std::fs::read(from).unwrap()
            } else {
                let size = match rnd() % 100 {
                    0..=59 => 1024 + rnd() % 7168,
                    60..=89 => 8192 + rnd() % 24576,
                    _ => 32768 + rnd() % 172_032,
                } as usize;
                let mut m = format!(
                    "From: sender{}@example.org\r\nTo: {userid}@example.com\r\n\
                     Subject: bench {u} {uid}\r\nMessage-ID: <{}.{u}.{uid}@example.org>\r\n\r\n",
                    rnd() % 1000,
                    rnd()
                )
                .into_bytes();
                while m.len() < size {
                    let line = format!(
                        "{:016x}{:016x}{:016x}{:016x}\r\n",
                        rnd(),
                        rnd(),
                        rnd(),
                        rnd()
                    );
                    m.extend_from_slice(line.as_bytes());
                }
                written.push(dir.join(format!("{uid}.")));
                m
            };
            std::fs::write(dir.join(format!("{uid}.")), &bytes).unwrap();
            records.push(index::IndexRecord {
                uid,
                internaldate: 1_700_000_000 + u64::from(uid),
                sentdate: 1_700_000_000,
                size: bytes.len() as u64,
                header_size: 0,
                gmtime: 1_700_000_000,
                last_updated: 1_700_000_000,
                guid: index::guid_of(&bytes),
                modseq: u64::from(uid),
                ..Default::default()
            });
        }
        let mut ih = ihdr.clone();
        ih.last_uid = records.len() as u32;
        ih.exists = records.len() as u32;
        ih.quota_mailbox_used = records.iter().map(|r| r.size).sum();
        ih.highestmodseq = records.len() as u64;
        std::fs::write(
            dir.join("cyrus.index"),
            index::write_index(&ih, &records, version).unwrap(),
        )
        .unwrap();
    }
    db_pairs.sort_by(|a, b| KeyOrder::Mbox.compare(&a.0, &b.0));
    let opts = twoskip::FreshOptions {
        order: KeyOrder::Mbox,
        ..Default::default()
    };
    std::fs::write(
        out.join("conf/mailboxes.db"),
        twoskip::write_fresh(&db_pairs, &opts).unwrap(),
    )
    .unwrap();
    eprintln!(
        "{} message files in {users} mailboxes under {}",
        total,
        out.display()
    );
}

#[test]
fn real_cyrus_expunged_and_deleted_copies_only_with_flags() {
    if !require_cyrus() {
        return;
    }
    let mut cy = real_cyrus(&CyrusOptions::default());
    deliver_batch(&cy, "flags", 8);
    // bob expunges his copy of message 1 (delayed expunge: record and file stay).
    let mut bob = cy.imap_login("bob").unwrap();
    bob.select("INBOX").unwrap();
    bob.store("1", "+FLAGS", &["\\Deleted"]).unwrap();
    bob.expunge().unwrap();
    bob.logout().unwrap();
    // alice copies message 2 to a folder (Cyrus links it) and deletes the folder (delayed).
    let mut alice = cy.imap_login("alice").unwrap();
    alice.create("INBOX.Trash").unwrap();
    alice.select("INBOX").unwrap();
    alice.ok("COPY 2 INBOX.Trash").unwrap();
    alice.ok("CLOSE").unwrap();
    alice.delete("INBOX.Trash").unwrap();
    alice.logout().unwrap();
    cy.stop().unwrap();

    let spool = cy.spool_dir();
    let original = inode_groups(&spool, &spool);
    let bob1 = PathBuf::from("b/user/bob/1.");
    let deleted: Vec<PathBuf> = message_files(&spool, &spool)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("DELETED"))
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(original.iter().any(|g| g.contains(&bob1)));
    assert!(original.iter().any(|g| g.contains(&deleted[0])));
    break_links(&spool);

    let nlink = |p: &Path| std::fs::metadata(spool.join(p)).unwrap().nlink();
    let r = dedupe(&cy.conf_path(), &["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(nlink(&bob1), 1, "expunged copy left alone");
    assert_eq!(nlink(&deleted[0]), 1, "deleted mailbox left alone");
    let r = dedupe(&cy.conf_path(), &["--json", "--include-expunged"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(nlink(&bob1) > 1);
    assert_eq!(nlink(&deleted[0]), 1);
    let r = dedupe(
        &cy.conf_path(),
        &["--json", "--include-deleted", "user.alice"],
    );
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(nlink(&deleted[0]) > 1);
    assert_eq!(inode_groups(&spool, &spool), original);
}
