//! `cyrkit reconstruct` end to end: the real binary on fresh copies of the real-Cyrus fixtures
//! with one precise damage each. Every test checks the report lines, that what survived on
//! disk (UIDVALIDITY, UIDs, flags, internaldates, modseqs) is kept, and that `cyrkit mbcheck`
//! is clean afterwards; the interop test checks that Cyrus 3.6's own `reconstruct -n` finds
//! nothing to change and that imapd serves the mailboxes as before; the crash test kills the
//! process at every durable step and checks that no message is lost and a rerun completes.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cyrkit::format::cyrusdb::Backend;
use cyrkit::format::index::{self, IndexHeader, IndexRecord};
use serde_json::Value;
use support::cli::{self, fixture_src, Run};
use support::cyrus::{require_cyrus, CyrusInstance};

// ---------------------------------------------------------------------------------------------
// Running the binary

fn cyrkit(args: &[&str], env: &[(&str, &str)]) -> Run {
    cli::run(args, None, &[], env)
}

// ---------------------------------------------------------------------------------------------
// Fixture copies

struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Store {
    fn new(fixture: &str) -> Store {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-reconstruct-");
        Store { _tmp: tmp, root }
    }

    fn conf(&self) -> String {
        self.root.join("imapd.conf").display().to_string()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn reconstruct(&self, args: &[&str]) -> Run {
        self.reconstruct_env(args, &[])
    }

    fn reconstruct_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let conf = self.conf();
        let mut a = vec!["reconstruct", "-C", &conf, "--no-progress"];
        a.extend_from_slice(args);
        cyrkit(&a, env)
    }

    /// mbcheck finds nothing at all, quota usage included: reconstruct brings each
    /// changed mailbox's quota root in line, as Cyrus's does.
    fn assert_mbcheck_clean(&self, what: &str) {
        let conf = self.conf();
        let r = cyrkit(&["mbcheck", "-C", &conf, "--no-progress", "--json"], &[]);
        let doc: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{what}: mbcheck --json: {e}\n{}{}", r.stdout, r.stderr));
        let findings = doc["findings"].as_array().unwrap();
        assert!(
            findings.is_empty() && r.code == 0,
            "{what}: mbcheck after reconstruct\n{}",
            serde_json::to_string_pretty(findings).unwrap()
        );
    }

    /// Removes mailboxes' `N` and `I` records from mailboxes.db, as if their entries were
    /// lost.
    fn drop_db_entries(&self, internal: &[&str]) {
        drop_db_entries_at(&self.path("conf/mailboxes.db"), internal);
    }

    fn db_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        db_pairs_at(&self.path("conf/mailboxes.db"))
    }

    /// The decoded `N` entry of a mailbox (internal name), if any.
    fn db_entry(&self, internal: &str) -> Option<cyrkit::format::mboxlist::MboxEntry> {
        db_entry_at(&self.path("conf/mailboxes.db"), internal)
    }
}

/// The decoded `N` entry of a mailbox (internal name) in the database at `path`, if any.
fn db_entry_at(path: &Path, internal: &str) -> Option<cyrkit::format::mboxlist::MboxEntry> {
    use cyrkit::format::mboxlist::{MboxEntry, MboxKey};
    let want = internal.replace('.', "\x1f").into_bytes();
    db_pairs_at(path)
        .into_iter()
        .find_map(|(k, v)| match MboxKey::decode(&k) {
            Ok(MboxKey::Name(n)) if n == want => {
                Some(MboxEntry::from_v36_dlist(&cyrkit::format::dlist::parse(&v).unwrap()).unwrap())
            }
            _ => None,
        })
}

fn db_backend_at(path: &Path) -> Backend {
    cyrkit::format::cyrusdb::detect(&std::fs::read(path).unwrap()).unwrap()
}

fn db_pairs_at(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    cyrkit::spool::db::read_pairs(&std::fs::read(path).unwrap(), db_backend_at(path)).unwrap()
}

/// Removes mailboxes' `N` and `I` records from the database at `path` (keeping its owner).
fn drop_db_entries_at(path: &Path, internal: &[&str]) {
    use cyrkit::format::mboxlist::{MboxEntry, MboxKey};
    let pairs = db_pairs_at(path);
    let dbnames: Vec<Vec<u8>> = internal
        .iter()
        .map(|n| n.replace('.', "\x1f").into_bytes())
        .collect();
    let mut ids = Vec::new();
    for (k, v) in &pairs {
        if let Ok(MboxKey::Name(n)) = MboxKey::decode(k) {
            if dbnames.contains(&n) {
                let e =
                    MboxEntry::from_v36_dlist(&cyrkit::format::dlist::parse(v).unwrap()).unwrap();
                ids.push(e.uniqueid.unwrap());
            }
        }
    }
    assert_eq!(ids.len(), internal.len(), "entries to drop");
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(k, _)| match MboxKey::decode(k) {
            Ok(MboxKey::Name(n)) => !dbnames.contains(&n),
            Ok(MboxKey::Id(id)) => !ids.contains(&id),
            _ => true,
        })
        .collect();
    let out = match db_backend_at(path) {
        Backend::Twoskip => {
            cyrkit::format::twoskip::write_fresh(&kept, &Default::default()).unwrap()
        }
        b => cyrkit::format::skiplist::write_fresh(
            &kept,
            &cyrkit::format::skiplist::FreshOptions {
                order: b.default_order(),
                ..Default::default()
            },
        )
        .unwrap(),
    };
    std::fs::write(path, out).unwrap();
}

const ALICE: &str = "spool/a/user/alice";

fn read_index(dir: &Path) -> (IndexHeader, Vec<IndexRecord>) {
    let buf = std::fs::read(dir.join("cyrus.index")).expect("cyrus.index");
    let idx = index::Index::open(&buf).expect("index opens");
    let recs = idx.records().map(|r| r.expect("record")).collect();
    (idx.header().clone(), recs)
}

/// Rewrites an index through the crate's writer with `edit` applied to its records, the
/// counts recomputed: the only damage is what `edit` did.
fn rewrite_index(dir: &Path, edit: impl FnOnce(&mut Vec<IndexRecord>)) {
    let (mut h, mut recs) = read_index(dir);
    edit(&mut recs);
    let v = h.minor_version;
    let hdr =
        cyrkit::format::header::parse(&std::fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
    let d = index::derive(recs.iter(), v, &hdr.user_flags, None);
    h.apply_derived(&d, v);
    std::fs::write(
        dir.join("cyrus.index"),
        index::write_index(&h, &recs, v).unwrap(),
    )
    .unwrap();
}

fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

/// What a client sees of a record and must keep.
fn visible(r: &IndexRecord) -> (u32, u32, [u32; 4], u64, u64, u64, [u8; 20]) {
    (
        r.uid,
        r.system_flags,
        r.user_flags,
        r.internaldate,
        r.modseq,
        r.size,
        r.guid,
    )
}

/// Every file under `root` with its content hash, size and mtime.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u64, i64)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let b = std::fs::read(e.path()).unwrap();
            let md = e.metadata().unwrap();
            out.insert(
                e.path().to_path_buf(),
                (index::guid_hex(&index::guid_of(&b)), md.size(), md.mtime()),
            );
        }
    }
    out
}

/// Message files (`N.`) under a directory: name → content hash.
fn messages(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_file()
            && n.ends_with('.')
            && n[..n.len() - 1].bytes().all(|c| c.is_ascii_digit())
        {
            let b = std::fs::read(e.path()).unwrap();
            out.insert(
                e.path().display().to_string(),
                index::guid_hex(&index::guid_of(&b)),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Clean stores

#[test]
fn clean_fixtures_change_nothing() {
    for fx in ["legacy", "uuid"] {
        let s = Store::new(fx);
        let before = snapshot(&s.path("spool"));
        let n = s.reconstruct(&["-n"]);
        assert_eq!(n.code, 0, "{fx}: -n on a clean store\n{}", n.stdout);
        let r = s.reconstruct(&[]);
        assert_eq!(r.code, 0, "{fx}\n{}{}", r.stdout, r.stderr);
        assert!(
            r.has("user.alice") || r.has("user/alice@example.com"),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("| mailboxes_changed | 0"), "{}", r.stdout);
        assert_eq!(
            before,
            snapshot(&s.path("spool")),
            "{fx}: a clean store changed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// One damage each

#[test]
fn index_lost_keeps_uidvalidity_and_uids() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, orecs) = read_index(&dir);
    std::fs::remove_file(dir.join("cyrus.index")).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice: cyrus.index missing, rebuilding it from the message files");
    for rec in &orecs {
        r.assert_has(&format!("user.alice uid {} found - adding", rec.uid));
    }
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(nh.uidvalidity, oh.uidvalidity, "UIDVALIDITY kept");
    assert_eq!(nh.minor_version, 17);
    assert_eq!(
        nrecs
            .iter()
            .map(|r| (r.uid, r.size, r.guid))
            .collect::<Vec<_>>(),
        orecs
            .iter()
            .map(|r| (r.uid, r.size, r.guid))
            .collect::<Vec<_>>()
    );
    assert!(nh.highestmodseq >= nrecs.iter().map(|r| r.modseq).max().unwrap());
    s.assert_mbcheck_clean("index lost");
}

#[test]
fn cache_lost_is_regenerated_without_touching_records() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, orecs) = read_index(&dir);
    std::fs::remove_file(dir.join("cyrus.cache")).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for rec in &orecs {
        assert!(
            r.stdout.contains(&format!(
                "user.alice rewrote cache for {} (offset ",
                rec.uid
            )),
            "{}",
            r.stdout
        );
    }
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(
        nrecs.iter().map(visible).collect::<Vec<_>>(),
        orecs.iter().map(visible).collect::<Vec<_>>(),
        "flags, internaldates and modseqs kept"
    );
    assert_eq!(nh.highestmodseq, oh.highestmodseq);
    assert_eq!(nh.sync_crc_basic, oh.sync_crc_basic);
    s.assert_mbcheck_clean("cache lost");
}

#[test]
fn header_lost_is_rebuilt_from_the_database() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, orecs) = read_index(&dir);
    let old_hdr =
        cyrkit::format::header::parse(&std::fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
    std::fs::remove_file(dir.join("cyrus.header")).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice: cyrus.header missing, rebuilding it from the mailboxes database");
    let hdr =
        cyrkit::format::header::parse(&std::fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
    assert_eq!(hdr.uniqueid, old_hdr.uniqueid);
    assert_eq!(hdr.acl, old_hdr.acl);
    assert_eq!(hdr.quotaroot, old_hdr.quotaroot);
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(nh.uidvalidity, oh.uidvalidity);
    for (o, n) in orecs.iter().zip(&nrecs) {
        assert_eq!(
            (o.uid, o.system_flags, o.internaldate),
            (n.uid, n.system_flags, n.internaldate)
        );
        if o.user_flags == [0; 4] {
            assert_eq!(
                o.modseq, n.modseq,
                "uid {}: untouched record keeps its modseq",
                o.uid
            );
        } else {
            // Keyword names lived only in the lost header.
            r.assert_has(&format!("user.alice uid {} mismatch: userflags", o.uid));
            assert!(n.modseq > oh.highestmodseq);
        }
    }
    s.assert_mbcheck_clean("header lost");
}

#[test]
fn index_header_crc_damaged_keeps_every_record() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, orecs) = read_index(&dir);
    flip(&dir.join("cyrus.index"), index::OFFSET_EXISTS + 3);
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has(&format!(
        "user.alice: cyrus.index header damaged, recomputing it from {} intact records",
        orecs.len()
    ));
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(
        nrecs.iter().map(visible).collect::<Vec<_>>(),
        orecs.iter().map(visible).collect::<Vec<_>>()
    );
    assert_eq!(nh.uidvalidity, oh.uidvalidity);
    assert_eq!(nh.last_uid, oh.last_uid);
    assert_eq!(nh.exists, oh.exists);
    assert!(nh.highestmodseq >= oh.highestmodseq);
    s.assert_mbcheck_clean("index header CRC");
}

#[test]
fn record_crc_damaged_rediscovers_its_file() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, orecs) = read_index(&dir);
    let off = oh.start_offset as usize + 2 * oh.record_size as usize + index::OFFSET_SIZE + 3;
    flip(&dir.join("cyrus.index"), off);
    let before = std::fs::read(dir.join("3.")).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice: record corrupted 3 (maybe uid 3), wiping");
    r.assert_has("user.alice uid 3 rediscovered - appending");
    let (nh, nrecs) = read_index(&dir);
    let new_uid = oh.last_uid + 1;
    assert_eq!(nh.last_uid, new_uid);
    assert!(!dir.join("3.").exists());
    assert_eq!(
        std::fs::read(dir.join(format!("{new_uid}."))).unwrap(),
        before
    );
    let kept: Vec<_> = orecs.iter().filter(|r| r.uid != 3).map(visible).collect();
    assert_eq!(
        nrecs
            .iter()
            .filter(|r| r.uid != new_uid)
            .map(visible)
            .collect::<Vec<_>>(),
        kept
    );
    s.assert_mbcheck_clean("record CRC");
}

#[test]
fn missing_message_file_is_expunged() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (oh, _) = read_index(&dir);
    std::fs::remove_file(dir.join("7.")).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice uid 7 not found");
    r.assert_has(&format!(
        "user.alice: updating exists {} => {}",
        oh.exists,
        oh.exists - 1
    ));
    let (nh, nrecs) = read_index(&dir);
    let r7 = nrecs.iter().find(|r| r.uid == 7).unwrap();
    assert!(r7.is_expunged() && r7.is_unlinked());
    assert_eq!(r7.modseq, oh.highestmodseq + 1);
    assert_eq!(nh.highestmodseq, oh.highestmodseq + 1);
    s.assert_mbcheck_clean("missing file");
}

#[test]
fn stray_files_above_and_below_last_uid() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    // Below: the record of uid 5 is gone (its file stays); above: a restored 20.
    rewrite_index(&dir, |recs| recs.retain(|r| r.uid != 5));
    let five = std::fs::read(dir.join("5.")).unwrap();
    std::fs::copy(dir.join("1."), dir.join("20.")).unwrap();
    let (oh, orecs) = read_index(&dir);
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice uid 20 found - adding");
    r.assert_has("user.alice uid 5 rediscovered - appending");
    let lines = r.lines();
    let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    assert!(
        pos("user.alice uid 20 found - adding") < pos("user.alice uid 5 rediscovered - appending")
    );
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(nh.last_uid, 21, "20 kept its UID, 5 became 21");
    assert_eq!(std::fs::read(dir.join("21.")).unwrap(), five);
    assert!(!dir.join("5.").exists());
    for o in &orecs {
        let n = nrecs.iter().find(|n| n.uid == o.uid).unwrap();
        assert_eq!(visible(o), visible(n));
    }
    assert!(nrecs
        .iter()
        .all(|n| n.uid <= oh.last_uid || n.modseq == oh.highestmodseq + 1));
    s.assert_mbcheck_clean("stray files");
}

#[test]
fn changed_message_content_and_guid_options() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    // Same size, other bytes: invisible without -G.
    flip(&dir.join("2."), 100);
    let r = s.reconstruct(&["-n", "user.alice"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let r = s.reconstruct(&["-G", "user.alice"]);
    r.assert_has("user.alice uid 2 guid mismatch");
    r.assert_has("run reconstruct with -R to fix or -U to remove");
    // Other size: found without -G; -R re-adds the file under a new UID.
    let mut b = std::fs::read(dir.join("4.")).unwrap();
    b.extend_from_slice(b"more\r\n");
    std::fs::write(dir.join("4."), &b).unwrap();
    let (oh, _) = read_index(&dir);
    let r = s.reconstruct(&["-R", "user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice uid 4 guid mismatch");
    r.assert_has("user.alice uid 4 marking for uid upgrade");
    r.assert_has("user.alice uid 4 rediscovered - appending");
    let new = oh.last_uid + 1;
    assert_eq!(std::fs::read(dir.join(format!("{new}."))).unwrap(), b);
    let (_, nrecs) = read_index(&dir);
    assert!(nrecs.iter().find(|r| r.uid == 4).unwrap().is_unlinked());
    // -G -U removes the same-size impostor and its record.
    let r = s.reconstruct(&["-G", "-U", "user.alice"]);
    r.assert_has("user.alice uid 2 unlinking as requested with -U");
    assert!(!dir.join("2.").exists());
    s.assert_mbcheck_clean("guid options");
}

#[test]
fn odd_files_reported_ignored_or_deleted() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let odd = dir.join("notes.txt");
    std::fs::write(&odd, b"x").unwrap();
    let r = s.reconstruct(&["user.alice"]);
    r.assert_has(&format!("user.alice odd file {}", odd.display()));
    r.assert_has("run reconstruct with -O to remove odd files");
    assert!(odd.exists());
    let r = s.reconstruct(&["-o", "user.alice"]);
    assert!(!r.stdout.contains("odd file"), "{}", r.stdout);
    let r = s.reconstruct(&["-O", "user.alice"]);
    r.assert_has(&format!("user.alice odd file {}", odd.display()));
    assert!(!odd.exists());
    s.assert_mbcheck_clean("odd file");
}

#[test]
fn wrong_counts_are_recomputed() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let mut buf = std::fs::read(dir.join("cyrus.index")).unwrap();
    let mut h = index::parse_header(&buf).unwrap();
    let (exists, answered) = (h.exists, h.answered);
    h.exists += 3;
    h.answered = 0;
    let hb = index::write_header(&h, 17).unwrap();
    buf[..hb.len()].copy_from_slice(&hb);
    std::fs::write(dir.join("cyrus.index"), buf).unwrap();
    let r = s.reconstruct(&["user.alice"]);
    r.assert_has(&format!(
        "user.alice: updating exists {} => {exists}",
        exists + 3
    ));
    r.assert_has(&format!("user.alice: updating answered 0 => {answered}"));
    s.assert_mbcheck_clean("counts");
}

/// `-n` prints what a real run prints, changes nothing and exits 1; `--json` lists it.
#[test]
fn dry_run_changes_nothing_and_json_lists_every_change() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    std::fs::remove_file(dir.join("cyrus.cache")).unwrap();
    std::fs::remove_file(dir.join("9.")).unwrap();
    std::fs::write(dir.join("junk"), b"x").unwrap();
    // Lock files aside (Cyrus's -n takes the locks too), nothing may change.
    let before = (snapshot(&s.path("spool")), snapshot(&s.path("conf/quota")));
    let n = s.reconstruct(&["-n", "-r", "user.alice"]);
    assert_eq!(n.code, 1, "{}{}", n.stdout, n.stderr);
    let j = s.reconstruct(&["-n", "--json", "-r", "user.alice"]);
    assert_eq!(j.code, 1);
    assert_eq!(
        before,
        (snapshot(&s.path("spool")), snapshot(&s.path("conf/quota"))),
        "-n changed something"
    );
    let doc: Value = serde_json::from_str(&j.stdout).unwrap();
    let alice = doc["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mailbox"] == "user.alice")
        .unwrap();
    assert_eq!(alice["modified"], true);
    let lines: Vec<&str> = alice["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["line"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"user.alice uid 9 not found"), "{lines:?}");
    let real = s.reconstruct(&["-r", "user.alice"]);
    assert_eq!(real.code, 0);
    for l in &lines {
        real.assert_has(l);
    }
    assert_eq!(
        n.lines()
            .iter()
            .filter(|l| !l.starts_with('|'))
            .collect::<Vec<_>>(),
        real.lines()
            .iter()
            .filter(|l| !l.starts_with('|'))
            .collect::<Vec<_>>(),
        "-n and the real run print the same report"
    );
    std::fs::remove_file(dir.join("junk")).unwrap(); // odd files stay without -O
    s.assert_mbcheck_clean("after the real run");
    let q = s.reconstruct(&["-q", "-r", "user.alice"]);
    assert_eq!((q.code, q.stdout.as_str()), (0, ""));
}

#[test]
fn version_conversion_round_trip() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let (_, orecs) = read_index(&dir);
    let r = s.reconstruct(&["-V", "12", "user.alice"]);
    r.assert_has("Converted user.alice version 17 to 12");
    assert_eq!(read_index(&dir).0.minor_version, 12);
    s.assert_mbcheck_clean("v12");
    let r = s.reconstruct(&["-V", "max", "user.alice"]);
    r.assert_has("Converted user.alice version 12 to 17");
    let (h, nrecs) = read_index(&dir);
    assert_eq!(h.minor_version, 17);
    assert_eq!(
        nrecs.iter().map(visible).collect::<Vec<_>>(),
        orecs.iter().map(visible).collect::<Vec<_>>()
    );
    s.assert_mbcheck_clean("v17 again");
}

#[test]
fn uuid_layout_index_lost() {
    let s = Store::new("uuid");
    let conf = s.conf();
    let j = cyrkit(&["mbcheck", "-C", &conf, "--json", "--no-progress"], &[]);
    assert_eq!(j.code, 0, "{}", j.stdout);
    // Damage every index of the store: each is rebuilt in its uuid directory.
    let mut n = 0;
    for e in walkdir::WalkDir::new(s.path("spool/uuid")) {
        let e = e.unwrap();
        if e.file_name() == "cyrus.index" {
            std::fs::remove_file(e.path()).unwrap();
            n += 1;
        }
    }
    assert!(n > 5);
    let r = s.reconstruct(&["-j", "2"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.lines()
            .iter()
            .filter(|l| l.ends_with("cyrus.index missing, rebuilding it from the message files"))
            .count(),
        n
    );
    s.assert_mbcheck_clean("uuid");
}

#[test]
fn new_uidvalidity_updates_index_and_database_and_u_selects_users() {
    let s = Store::new("legacy");
    let dir = s.path("spool/b/user/bob");
    let (oh, orecs) = read_index(&dir);
    let r = s.reconstruct(&["--new-uidvalidity", "-u", "bob"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.bob");
    r.assert_has("user.bob.Archive");
    assert!(!r.has("user.alice"));
    let (nh, nrecs) = read_index(&dir);
    assert!(nh.uidvalidity > oh.uidvalidity);
    r.assert_has(&format!(
        "user.bob: new uidvalidity {} => {}",
        oh.uidvalidity, nh.uidvalidity
    ));
    assert_eq!(
        nrecs.iter().map(visible).collect::<Vec<_>>(),
        orecs.iter().map(visible).collect::<Vec<_>>()
    );
    // mbcheck compares the index with the database entry: both were changed.
    s.assert_mbcheck_clean("new uidvalidity");
    let p = s.reconstruct(&["-n", "user.%"]);
    assert_eq!(p.code, 0, "{}", p.stdout);
    for m in ["user.alice", "user.bob", "user.carol"] {
        p.assert_has(m);
    }
    assert!(!p.has("user.alice.Sent"));
}

#[test]
fn usage_errors_exit_2() {
    let s = Store::new("legacy");
    assert_eq!(s.reconstruct(&["-r"]).code, 2);
    assert_eq!(s.reconstruct(&["-V", "99", "user.alice"]).code, 2);
    assert_eq!(s.reconstruct(&["-o", "-O", "user.alice"]).code, 2);
    assert_eq!(s.reconstruct(&["user.nobody"]).code, 3);
}

// ---------------------------------------------------------------------------------------------
// Mailboxes the database lacks: -f, -p, -x, -P

/// A copy of `fixture` whose database lost the entry of `name`, and that entry.
fn store_without(fixture: &str, name: &str) -> (Store, cyrkit::format::mboxlist::MboxEntry) {
    let s = Store::new(fixture);
    let old = s.db_entry(name).unwrap();
    s.drop_db_entries(&[name]);
    (s, old)
}

/// The entry fields an adopted mailbox must keep from the lost one.
fn kept_fields(e: &cyrkit::format::mboxlist::MboxEntry) -> (Option<Vec<u8>>, u32, String, bool) {
    (
        e.uniqueid.clone(),
        e.uidvalidity,
        String::from_utf8_lossy(&e.acl.as_ref().unwrap().to_cyrus_string()).into_owned(),
        e.mbtype.legacy_dirs,
    )
}

#[test]
fn f_adopts_directories_the_database_lacks() {
    let s = Store::new("legacy");
    let sent = s.db_entry("user.alice.Sent").unwrap();
    let sub = s.db_entry("user.alice.Sub").unwrap();
    let deep = s.db_entry("user.alice.Sub.Deep").unwrap();
    s.drop_db_entries(&["user.alice.Sent", "user.alice.Sub", "user.alice.Sub.Deep"]);
    let before = s.db_pairs();
    let n = s.reconstruct(&["-n", "-f", "user.alice"]);
    assert_eq!(n.code, 1, "{}{}", n.stdout, n.stderr);
    n.assert_has("discovered user.alice.Sent");
    n.assert_has("discovered user.alice.Sub");
    // Found below a discovered one, in the next round, as Cyrus's loop finds it.
    n.assert_has("discovered user.alice.Sub.Deep");
    assert_eq!(before, s.db_pairs(), "-n wrote the database");

    let r = s.reconstruct(&["-f", "user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines = r.lines();
    let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    assert!(pos("user.alice") < pos("discovered user.alice.Sent"));
    assert!(pos("discovered user.alice.Sub") < pos("user.alice.Sub"));
    assert!(pos("user.alice.Sub") < pos("discovered user.alice.Sub.Deep"));
    r.assert_has("user.alice.Sub.Deep");
    for (name, old) in [
        ("user.alice.Sent", &sent),
        ("user.alice.Sub", &sub),
        ("user.alice.Sub.Deep", &deep),
    ] {
        let e = s.db_entry(name).unwrap();
        assert_eq!(kept_fields(&e), kept_fields(old), "{name}");
        assert_eq!(e.partition, old.partition);
        assert_eq!(e.createdmodseq, old.createdmodseq);
    }
    // The I record names the mailbox again.
    let ids = cyrkit::spool::mboxlist::Mboxlist::from_pairs(&s.db_pairs(), &Default::default());
    let id = ids.ids.get(sent.uniqueid.as_ref().unwrap()).unwrap();
    assert_eq!(id.dbname.as_deref(), Some(&b"user\x1falice\x1fSent"[..]));
    s.assert_mbcheck_clean("-f");
    let again = s.reconstruct(&["-n", "-f", "-r", "user.alice"]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(!again.stdout.contains("discovered"), "{}", again.stdout);
}

/// A legacy header without a unique id: the adopted mailbox gets a new one, in its entry
/// and in its header.
#[test]
fn f_gives_a_header_without_unique_id_one() {
    let (s, old) = store_without("legacy", "user.alice.Sent");
    let path = s.path("spool/a/user/alice/Sent/cyrus.header");
    let mut h = cyrkit::format::header::parse(&std::fs::read(&path).unwrap()).unwrap();
    h.uniqueid = None;
    std::fs::write(&path, h.write().unwrap()).unwrap();
    let r = s.reconstruct(&["-f", "user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has(
        "user.alice.Sent: cyrus.header has no unique id, setting it from the mailboxes database",
    );
    let e = s.db_entry("user.alice.Sent").unwrap();
    assert!(e.uniqueid.is_some() && e.uniqueid != old.uniqueid);
    let h = cyrkit::format::header::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(h.uniqueid, e.uniqueid);
    assert_eq!(e.uidvalidity, old.uidvalidity);
    s.assert_mbcheck_clean("header without unique id");
}

/// The header's ACL differs from the entry's: reconstruct says "update acl from header"
/// and writes the header's ACL into the entry (`N` and `I` records), so a second run has
/// nothing to say (Cyrus 3.6 prints the line and changes nothing, every run).
#[test]
fn acl_from_header_goes_into_the_database_once() {
    use cyrkit::format::header::{Acl, AclEntry};
    let s = Store::new("legacy");
    let path = s.path(ALICE).join("cyrus.header");
    let mut h = cyrkit::format::header::parse(&std::fs::read(&path).unwrap()).unwrap();
    let mut acl = h.acl.clone().unwrap();
    acl.entries.push(AclEntry {
        identifier: b"dave".to_vec(),
        rights: b"lr".to_vec(),
    });
    h.acl = Some(acl.clone());
    std::fs::write(&path, h.write().unwrap()).unwrap();
    let before = s.db_entry("user.alice").unwrap();
    assert_ne!(before.acl.as_ref(), Some(&acl));
    let show = |a: &Acl| String::from_utf8(a.to_cyrus_string()).unwrap();
    let line = format!(
        "user.alice: update acl from header {} => {}",
        show(before.acl.as_ref().unwrap()),
        show(&acl)
    );
    let dry = s.reconstruct(&["-n", "user.alice"]);
    dry.assert_has(&line);
    assert_eq!(
        s.db_entry("user.alice").unwrap().acl,
        before.acl,
        "-n wrote"
    );
    let r = s.reconstruct(&["user.alice"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    r.assert_has(&line);
    let after = s.db_entry("user.alice").unwrap();
    assert_eq!(after.acl.as_ref(), Some(&acl));
    let id = db_pairs_at(&s.path("conf/mailboxes.db"))
        .into_iter()
        .find_map(
            |(k, v)| match cyrkit::format::mboxlist::MboxKey::decode(&k) {
                Ok(cyrkit::format::mboxlist::MboxKey::Id(i))
                    if Some(&i) == after.uniqueid.as_ref() =>
                {
                    Some(
                        cyrkit::format::mboxlist::MboxEntry::from_v36_dlist(
                            &cyrkit::format::dlist::parse(&v).unwrap(),
                        )
                        .unwrap(),
                    )
                }
                _ => None,
            },
        )
        .expect("I record");
    assert_eq!(id.acl.as_ref(), Some(&acl), "I record");
    let again = s.reconstruct(&["-n", "user.alice"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert!(!again.stdout.contains("update acl"), "{}", again.stdout);
    s.assert_mbcheck_clean("acl from header");
}

#[test]
fn f_with_x_makes_new_mailboxes_over_the_old_files() {
    let (s, old) = store_without("legacy", "user.alice.Sent");
    let dir = s.path("spool/a/user/alice/Sent");
    let (oh, orecs) = read_index(&dir);
    let r = s.reconstruct(&["-x", "-f", "user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("discovered user.alice.Sent");
    r.assert_has(
        "user.alice.Sent: cyrus.index not imported (-x), rebuilding it from the message files",
    );
    let e = s.db_entry("user.alice.Sent").unwrap();
    assert_ne!(e.uniqueid, old.uniqueid, "a fresh unique id");
    assert!(e.uidvalidity > oh.uidvalidity, "a new UIDVALIDITY");
    let (nh, nrecs) = read_index(&dir);
    assert_eq!(nh.uidvalidity, e.uidvalidity);
    assert_eq!(
        nrecs.iter().map(|r| (r.uid, r.guid)).collect::<Vec<_>>(),
        orecs.iter().map(|r| (r.uid, r.guid)).collect::<Vec<_>>(),
        "every message file is in the new mailbox under its UID"
    );
    let hdr =
        cyrkit::format::header::parse(&std::fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
    assert_eq!(hdr.uniqueid, e.uniqueid);
    s.assert_mbcheck_clean("-x -f");
}

#[test]
fn p_creates_entries_on_the_partition() {
    let (s, old) = store_without("legacy", "user.alice.Sent");
    // Usage errors first: an existing mailbox, an unknown partition, a pattern, -x alone.
    assert_eq!(s.reconstruct(&["-p", "default", "user.alice"]).code, 2);
    assert_eq!(s.reconstruct(&["-p", "nosuch", "user.alice.Sent"]).code, 2);
    assert_eq!(s.reconstruct(&["-p", "default", "user.alice.*"]).code, 2);
    assert_eq!(s.reconstruct(&["-p", "default"]).code, 2);
    assert_eq!(s.reconstruct(&["-x", "user.alice.Sent"]).code, 2);
    assert!(s.db_entry("user.alice.Sent").is_none());
    let r = s.reconstruct(&["-p", "default", "user.alice.Sent", "user.alice.Brand New"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("user.alice.Sent");
    r.assert_has("user.alice.Brand New");
    assert_eq!(
        kept_fields(&s.db_entry("user.alice.Sent").unwrap()),
        kept_fields(&old)
    );
    // Nothing on disk: a new empty mailbox, laid out as the configuration says.
    let e = s.db_entry("user.alice.Brand New").unwrap();
    assert!(e.mbtype.legacy_dirs);
    let (h, recs) = read_index(&s.path("spool/a/user/alice/Brand New"));
    assert_eq!((h.exists, recs.len(), h.uidvalidity), (0, 0, e.uidvalidity));
    s.assert_mbcheck_clean("-p");
}

#[test]
fn capital_p_recreates_entries_from_header_paths() {
    let (s, old) = store_without("legacy", "user.alice.Sent");
    let path = s.path("spool/a/user/alice/Sent/cyrus.header");
    let p = path.display().to_string();
    let n = s.reconstruct(&["-n", "-P", &p]);
    assert_eq!(n.code, 1, "{}{}", n.stdout, n.stderr);
    assert!(s.db_entry("user.alice.Sent").is_none());
    let id = String::from_utf8(old.uniqueid.clone().unwrap()).unwrap();
    let want = format!("created mbentry for user.alice.Sent ({id})");
    n.assert_has(&want);
    // The directory works as well as the file.
    let dir = s.path("spool/a/user/alice/Sent").display().to_string();
    let r = s.reconstruct(&["-P", &dir]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has(&want);
    let e = s.db_entry("user.alice.Sent").unwrap();
    assert_eq!(kept_fields(&e), kept_fields(&old));
    s.assert_mbcheck_clean("-P");
    // Cyrus's messages for what cannot be used.
    let bad = s.reconstruct(&["-P", "/nonexistent/cyrus.header"]);
    assert_eq!(bad.code, 3);
    assert!(
        bad.stderr
            .contains("Can not resolve path '/nonexistent/cyrus.header'"),
        "{}",
        bad.stderr
    );
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(&path, elsewhere.path().join("cyrus.header")).unwrap();
    let bad = s.reconstruct(&["-P", &elsewhere.path().display().to_string()]);
    assert_eq!(bad.code, 3);
    assert!(
        bad.stderr
            .contains("is not located on a valid [meta]partition"),
        "{}",
        bad.stderr
    );
    assert_eq!(s.reconstruct(&["-P", "-r", &p]).code, 2);
}

#[test]
fn f_in_the_uuid_layout_finds_children_by_their_headers() {
    let (s, old) = store_without("uuid", "user.dave.Sent");
    let r = s.reconstruct(&["-f", "user/dave"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("discovered user.dave.Sent");
    r.assert_has("user/dave/Sent");
    let e = s.db_entry("user.dave.Sent").unwrap();
    assert_eq!(kept_fields(&e), kept_fields(&old));
    assert!(!e.mbtype.legacy_dirs);
    s.assert_mbcheck_clean("uuid -f");
}

// ---------------------------------------------------------------------------------------------
// Quota

fn storage_used(s: &Store, root: &str) -> u64 {
    let config = cyrkit::spool::config::Config::load(Path::new(&s.conf())).unwrap();
    let layout = cyrkit::spool::paths::Layout::from_config(&config).unwrap();
    let roots =
        cyrkit::spool::quota::load_roots(&config, &layout, std::time::Duration::from_secs(5))
            .unwrap();
    let q = roots[root.as_bytes()].record.as_ref().unwrap().clone();
    q.get(cyrkit::format::quota::Resource::Storage).used
}

/// A lost message leaves its root by the mailbox's difference (`quota_update_useds`); a
/// mailbox whose old usage is unknown (lost index) only has its root recounted; -n touches
/// nothing.
#[test]
fn quota_root_follows_the_mailbox() {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    let before = storage_used(&s, "user.alice");
    let size = std::fs::metadata(dir.join("7.")).unwrap().len();
    std::fs::remove_file(dir.join("7.")).unwrap();
    let n = s.reconstruct(&["-n", "user.alice"]);
    assert_eq!(n.code, 1);
    assert_eq!(
        storage_used(&s, "user.alice"),
        before,
        "-n changed the quota"
    );
    let r = s.reconstruct(&["--json", "user.alice"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["mailboxes"][0]["quota"], "updated");
    assert_eq!(storage_used(&s, "user.alice"), before - size);
    s.assert_mbcheck_clean("quota diff");
    std::fs::remove_file(s.path("spool/a/user/alice/Sent/cyrus.index")).unwrap();
    let r = s.reconstruct(&["--json", "user.alice.Sent"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        doc["mailboxes"][0]["quota"],
        Value::Null,
        "old usage unknown"
    );
    assert_eq!(storage_used(&s, "user.alice"), before - size);
    s.assert_mbcheck_clean("quota recount");
}

// ---------------------------------------------------------------------------------------------
// Crash safety

/// A store with a lost cache, a lost record (file rediscovered), a missing file and a
/// restored file above last_uid: every kind of durable step happens.
fn damaged_store() -> Store {
    let s = Store::new("legacy");
    let dir = s.path(ALICE);
    rewrite_index(&dir, |recs| recs.retain(|r| r.uid != 5));
    std::fs::remove_file(dir.join("cyrus.cache")).unwrap();
    std::fs::copy(dir.join("1."), dir.join("30.")).unwrap();
    std::fs::write(dir.join("odd"), b"x").unwrap();
    s
}

#[test]
fn crash_at_every_durable_step_loses_nothing() {
    let mut k = 1;
    loop {
        let s = damaged_store();
        let dir = s.path(ALICE);
        let mut before: Vec<String> = messages(&dir).into_values().collect();
        before.sort();
        before.dedup();
        let crash = k.to_string();
        let r = s.reconstruct_env(&["-O", "user.alice"], &[("CYRKIT_CRASH_AT", &crash)]);
        let mut after: Vec<String> = messages(&dir).into_values().collect();
        after.sort();
        after.dedup();
        assert_eq!(before, after, "crash at step {k}: a message was lost");
        let again = s.reconstruct(&["-O", "user.alice"]);
        assert_eq!(
            again.code, 0,
            "rerun after crash {k}\n{}{}",
            again.stdout, again.stderr
        );
        s.assert_mbcheck_clean(&format!("rerun after crash at step {k}"));
        let (_, recs) = read_index(&dir);
        let live: Vec<_> = recs.iter().filter(|r| !r.is_expunged()).collect();
        assert_eq!(
            live.len(),
            12,
            "crash {k}: 11 + the restored file, no duplicate"
        );
        if r.code != -1 && r.code != 134 {
            // The run completed: every step has been crashed at.
            assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
            assert!(k > 5, "too few durable steps: {k}");
            break;
        }
        k += 1;
        assert!(k < 60, "runaway");
    }
}

// ---------------------------------------------------------------------------------------------
// Real Cyrus

/// Cyrus's own `reconstruct -n` prints what it prints on the untouched fixture and its
/// `quota -f -n` finds every root right; then imapd is started. Returns the fixture's
/// expected IMAP view.
fn cyrus_finds_nothing_then_start(cy: &mut CyrusInstance, src: &Path) -> Value {
    let out = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    let want = std::fs::read_to_string(src.join("expected/reconstruct-n.txt")).unwrap();
    assert_eq!(got, want, "Cyrus's reconstruct -n wants changes");
    assert_cyrus_quota_agrees(cy);
    cy.start_master().unwrap();
    serde_json::from_slice(&std::fs::read(src.join("expected/imap.json")).unwrap()).unwrap()
}

/// Cyrus's `quota -f -n` (report only) finds every root's usage right.
fn assert_cyrus_quota_agrees(cy: &CyrusInstance) {
    let out = cy.run_tool("quota", &["-f", "-n"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quota -f -n: {err}");
    assert!(
        !err.contains("usage was") && !err.contains("quota root"),
        "Cyrus's quota -f -n disagrees:\n{err}"
    );
}

/// After cyrkit repaired several damages, Cyrus 3.6's own `reconstruct -n` finds nothing to
/// change, and imapd serves every mailbox whose metadata survived exactly as before.
#[test]
fn cyrus_agrees_after_repair() {
    if !require_cyrus() {
        return;
    }
    let src = fixture_src("legacy");
    let mut cy = CyrusInstance::spool_copy_offline(&src).expect("copy fixture");
    support::cyrus::relink_hardlinks(cy.root()).unwrap();
    let spool = cy.spool_dir();
    let alice = spool.join("a/user/alice");
    let bob = spool.join("b/user/bob");
    let sent = spool.join("a/user/alice/Sent");
    std::fs::remove_file(alice.join("cyrus.cache")).unwrap();
    flip(&bob.join("cyrus.index"), index::OFFSET_EXISTS + 3);
    std::fs::remove_file(sent.join("cyrus.index")).unwrap();
    let conf = cy.conf_path().display().to_string();
    let r = cyrkit(&["reconstruct", "-C", &conf, "--no-progress"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // A new UIDVALIDITY goes into the mailboxes database too (which Cyrus must still read).
    let lists = spool.join("c/user/carol/Lists");
    let r = cyrkit(
        &[
            "reconstruct",
            "-C",
            &conf,
            "--no-progress",
            "--new-uidvalidity",
            "user.carol.Lists",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let new_uv = read_index(&lists).0.uidvalidity;
    support::cyrus::chown_cyrus(cy.root()).unwrap();
    let expected = cyrus_finds_nothing_then_start(&mut cy, &src);
    let mut checked = 0;
    for mb in expected["mailboxes"].as_array().unwrap() {
        let name = mb["name"].as_str().unwrap();
        let Some(want) = mb["messages"].as_array() else {
            continue;
        };
        let mut c = cy.imap_login(mb["login"].as_str().unwrap()).unwrap();
        let st = c
            .examine_status(mb["examined_as"].as_str().unwrap())
            .unwrap();
        if name == "user.carol.Lists" {
            assert_eq!(st.uidvalidity, u64::from(new_uv), "{name}");
            assert_ne!(Some(st.uidvalidity), mb["uidvalidity"].as_u64(), "{name}");
        } else {
            assert_eq!(Some(st.uidvalidity), mb["uidvalidity"].as_u64(), "{name}");
        }
        let got = c.fetch_summary().unwrap();
        c.logout().unwrap();
        checked += 1;
        let flags_survived = name != "user.alice.Sent";
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(Some(g.uid), w["uid"].as_u64(), "{name}");
            assert_eq!(Some(g.size), w["size"].as_u64(), "{name}");
            if flags_survived {
                let mut gf: Vec<String> = g
                    .flags
                    .iter()
                    .filter(|f| *f != "\\Recent")
                    .cloned()
                    .collect();
                gf.sort();
                let wf: Vec<String> = w["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(gf, wf, "{name} uid {}", g.uid);
                assert_eq!(
                    Some(g.internaldate.as_str()),
                    w["internaldate"].as_str(),
                    "{name}"
                );
            }
        }
    }
    eprintln!("cyrus_agrees_after_repair: {checked} mailboxes compared over IMAP");
    assert!(checked >= 10);
    cy.stop().unwrap();
}

/// Entries lost from a live store's database come back with `-f` and `-P` exactly enough
/// for Cyrus: `ctl_mboxlist -d` lists them with their old unique ids, Cyrus's own
/// `reconstruct -n` finds nothing to change, and imapd serves the adopted mailboxes with
/// their UIDVALIDITY and messages.
#[test]
fn cyrus_serves_mailboxes_adopted_with_f_and_capital_p() {
    if !require_cyrus() {
        return;
    }
    let src = fixture_src("legacy");
    let mut cy = CyrusInstance::spool_copy_offline(&src).expect("copy fixture");
    support::cyrus::relink_hardlinks(cy.root()).unwrap();
    let db = cy.config_dir().join("mailboxes.db");
    let sent = db_entry_at(&db, "user.alice.Sent").unwrap();
    let archive = db_entry_at(&db, "user.bob.Archive").unwrap();
    drop_db_entries_at(&db, &["user.alice.Sent", "user.bob.Archive"]);
    let conf = cy.conf_path().display().to_string();
    let r = cyrkit(
        &[
            "reconstruct",
            "-C",
            &conf,
            "--no-progress",
            "-f",
            "user.alice",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r.assert_has("discovered user.alice.Sent");
    let header = cy.spool_dir().join("b/user/bob/Archive/cyrus.header");
    let r = cyrkit(
        &[
            "reconstruct",
            "-C",
            &conf,
            "--no-progress",
            "-P",
            &header.display().to_string(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = |e: &cyrkit::format::mboxlist::MboxEntry| {
        String::from_utf8(e.uniqueid.clone().unwrap()).unwrap()
    };
    r.assert_has(&format!(
        "created mbentry for user.bob.Archive ({})",
        id(&archive)
    ));
    support::cyrus::chown_cyrus(cy.root()).unwrap();
    let dump = cy.run_tool("ctl_mboxlist", &["-d"]).unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for (name, e) in [("user.alice.Sent", &sent), ("user.bob.Archive", &archive)] {
        assert!(
            dump.lines()
                .any(|l| l.contains(&format!("\"{name}\"")) && l.contains(&id(e))),
            "ctl_mboxlist -d lacks {name}:\n{dump}"
        );
    }
    let expected = cyrus_finds_nothing_then_start(&mut cy, &src);
    let mut checked = 0;
    for mb in expected["mailboxes"].as_array().unwrap() {
        let name = mb["name"].as_str().unwrap();
        if name != "user.alice.Sent" && name != "user.bob.Archive" {
            continue;
        }
        let mut c = cy.imap_login(mb["login"].as_str().unwrap()).unwrap();
        let st = c
            .examine_status(mb["examined_as"].as_str().unwrap())
            .unwrap();
        assert_eq!(Some(st.uidvalidity), mb["uidvalidity"].as_u64(), "{name}");
        let got = c.fetch_summary().unwrap();
        c.logout().unwrap();
        let want = mb["messages"].as_array().unwrap();
        assert_eq!(
            got.iter().map(|g| (g.uid, g.size)).collect::<Vec<_>>(),
            want.iter()
                .map(|w| (w["uid"].as_u64().unwrap(), w["size"].as_u64().unwrap()))
                .collect::<Vec<_>>(),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
    cy.stop().unwrap();
}
