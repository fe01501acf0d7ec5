//! `cyrkit mbcheck` end to end: the real binary on fresh copies of the real-Cyrus fixtures
//! (clean, and with one precise damage each), on spools a real Cyrus 3.6 has just written
//! (running and stopped), its exit codes and mailbox selection, and that it changes nothing.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cyrkit::format::index::{self, IndexHeader, IndexRecord};
use cyrkit::format::quota::{self, Resource};
use cyrkit::format::{header, twoskip};
use serde_json::Value;
use support::cli::{self, fixture_src, Run};
use support::cyrus::{copy_tree, crlf, require_cyrus, CyrusInstance, CyrusOptions};

// ---------------------------------------------------------------------------------------------
// Running the binary

fn mbcheck(conf: &Path, args: &[&str]) -> Run {
    cli::run(&["mbcheck"], Some(conf), args, &[])
}

/// The human and the `--json` run of the same check; they must agree on the exit code.
struct Check {
    code: i32,
    human: String,
    json: Value,
}

impl Check {
    fn findings(&self) -> &[Value] {
        self.json["findings"].as_array().map_or(&[], Vec::as_slice)
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\n--- human ---\n{}\n--- json ---\n{}",
            self.code,
            self.human,
            serde_json::to_string_pretty(&self.json).unwrap_or_default()
        )
    }
}

fn check(conf: &Path, args: &[&str]) -> Check {
    let human = mbcheck(conf, args);
    let mut jargs = args.to_vec();
    jargs.push("--json");
    let json = mbcheck(conf, &jargs);
    assert_eq!(
        human.code, json.code,
        "human and --json runs disagree\n{}\n{}{}",
        human.stdout, json.stdout, json.stderr
    );
    let parsed: Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "--json output is not JSON ({e}):\n{}\n{}",
            json.stdout, json.stderr
        )
    });
    Check {
        code: human.code,
        human: human.stdout,
        json: parsed,
    }
}

/// What one finding must say.
struct Expect<'a> {
    kind: &'a str,
    mailbox: Option<&'a str>,
    file: Option<&'a Path>,
    /// A piece of the problem text.
    problem: String,
    /// A piece of the repair command.
    repair: String,
}

impl<'a> Expect<'a> {
    /// A finding about `mailbox` in `file` that `cyrkit reconstruct <mailbox>` repairs.
    fn reconstruct(
        kind: &'a str,
        mailbox: &'a str,
        file: &'a Path,
        problem: impl Into<String>,
    ) -> Self {
        Expect {
            kind,
            mailbox: Some(mailbox),
            file: Some(file),
            problem: problem.into(),
            repair: reconstruct(mailbox),
        }
    }

    /// The same with another repair command.
    fn repaired_by(self, repair: impl Into<String>) -> Self {
        Expect {
            repair: repair.into(),
            ..self
        }
    }
}

/// Asserts exit 1 and that both outputs hold a finding as `want` describes; returns the
/// JSON finding.
fn assert_finding<'c>(c: &'c Check, want: &Expect<'_>) -> &'c Value {
    assert_eq!(c.code, 1, "findings must exit 1\n{}", c.describe());
    assert_eq!(c.json["clean"], Value::Bool(false), "{}", c.describe());
    let found = c.findings().iter().find(|f| {
        f["kind"] == want.kind
            && f["mailbox"].as_str() == want.mailbox
            && f["file"].as_str().map(PathBuf::from).as_deref() == want.file
            && f["problem"]
                .as_str()
                .is_some_and(|p| p.contains(&want.problem))
            && f["repair"]
                .as_str()
                .is_some_and(|r| r.contains(&want.repair))
    });
    let Some(found) = found else {
        panic!(
            "no {} finding for {:?} / {:?} with problem ~ {:?} and repair ~ {:?}\n{}",
            want.kind,
            want.mailbox,
            want.file,
            want.problem,
            want.repair,
            c.describe()
        );
    };
    assert!(
        want.repair.starts_with("cyrkit ") || want.repair.contains("cyrkit "),
        "expectations must name a cyrkit repair command"
    );
    // The human line: mailbox, file, problem and repair on one line.
    let mut prefix = String::new();
    if let Some(m) = want.mailbox {
        prefix.push_str(m);
        prefix.push_str(": ");
    }
    if let Some(f) = want.file {
        prefix.push_str(&f.display().to_string());
        prefix.push_str(": ");
    }
    let line = c.human.lines().find(|l| {
        l.starts_with(&prefix)
            && l.contains(&want.problem)
            && l.contains("(repair: ")
            && l.contains(&want.repair)
    });
    assert!(
        line.is_some(),
        "no human line `{prefix}...{}... (repair: ...{}...)`\n{}",
        want.problem,
        want.repair,
        c.describe()
    );
    // The summary table counts the finding's kind.
    assert!(
        c.json["summary"][want.kind].as_u64().unwrap_or(0) >= 1,
        "summary lacks {}\n{}",
        want.kind,
        c.describe()
    );
    assert!(
        c.human.contains("problems: "),
        "no summary table\n{}",
        c.describe()
    );
    found
}

/// [`assert_finding`], and that it is the only finding (the damage has no knock-on effects).
fn assert_only_finding(c: &Check, want: &Expect<'_>) {
    assert_finding(c, want);
    assert_eq!(c.findings().len(), 1, "{}", c.describe());
}

fn assert_clean(c: &Check, what: &str) {
    assert_eq!(c.code, 0, "{what}: expected clean\n{}", c.describe());
    assert_eq!(
        c.json["clean"],
        Value::Bool(true),
        "{what}\n{}",
        c.describe()
    );
    assert!(c.findings().is_empty(), "{what}\n{}", c.describe());
    assert!(c.human.contains("| problems"), "{what}: no summary table");
}

// ---------------------------------------------------------------------------------------------
// Fixture copies and damages

const LEGACY: &str = "legacy";
const UUID: &str = "uuid";

/// A fresh private copy of a fixture (its `imapd.conf` uses paths relative to itself).
struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    fixture: &'static str,
}

impl Store {
    fn new(fixture: &'static str) -> Store {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-mbcheck-");
        Store {
            _tmp: tmp,
            root,
            fixture,
        }
    }

    fn conf(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn check(&self, args: &[&str]) -> Check {
        check(&self.conf(), args)
    }

    /// `ctl_mboxlist -d` as Cyrus printed it when the fixture was made.
    fn mboxlist_dump(&self) -> serde_json::Map<String, Value> {
        let text = std::fs::read(fixture_src(self.fixture).join("expected/ctl_mboxlist-d.json"))
            .expect("ctl_mboxlist-d.json");
        match serde_json::from_slice(&text).expect("ctl_mboxlist-d.json parses") {
            Value::Object(m) => m,
            other => panic!("unexpected dump {other}"),
        }
    }

    /// The mailbox directory of a database name (`example.com!user.alice`): the uuid
    /// layout's `spool/uuid/x/y/<uniqueid>`, from the unique id Cyrus recorded.
    fn uuid_dir(&self, dbname: &str) -> PathBuf {
        let dump = self.mboxlist_dump();
        let id = dump[dbname]["uniqueid"]
            .as_str()
            .unwrap_or_else(|| panic!("{dbname}: no uniqueid in the dump"));
        let c: Vec<char> = id.chars().collect();
        self.root
            .join("spool/uuid")
            .join(c[0].to_string())
            .join(c[1].to_string())
            .join(id)
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    let i = usize::try_from(offset).unwrap();
    assert!(
        i < b.len(),
        "{}: offset {offset} past the end",
        path.display()
    );
    b[i] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

fn read_index_header(path: &Path) -> IndexHeader {
    index::parse_header(&std::fs::read(path).unwrap()).expect("index header")
}

/// Rewrites the index header through the crate's writer (CRC recomputed), so only the
/// edited field is wrong.
fn edit_index_header(path: &Path, edit: impl FnOnce(&mut IndexHeader)) {
    let mut buf = std::fs::read(path).unwrap();
    let mut h = index::parse_header(&buf).unwrap();
    let version = h.minor_version;
    edit(&mut h);
    let bytes = index::write_header(&h, version).unwrap();
    buf[..bytes.len()].copy_from_slice(&bytes);
    std::fs::write(path, buf).unwrap();
}

/// Record `i` of an index and its byte offset.
fn index_record(path: &Path, i: u32) -> (IndexRecord, u64) {
    let buf = std::fs::read(path).unwrap();
    let h = index::parse_header(&buf).unwrap();
    let off = u64::from(h.start_offset) + u64::from(i) * u64::from(h.record_size);
    let start = usize::try_from(off).unwrap();
    let r = index::parse_record(&buf[start..], h.minor_version).unwrap();
    (r, off)
}

/// Rewrites record `i` of an index through the crate's writer (CRC recomputed), so only the
/// edited field differs; returns the edited record.
fn edit_index_record(path: &Path, i: u32, edit: impl FnOnce(&mut IndexRecord)) -> IndexRecord {
    let (mut r, off) = index_record(path, i);
    edit(&mut r);
    let bytes = index::write_record(&r, read_index_header(path).minor_version).unwrap();
    let mut buf = std::fs::read(path).unwrap();
    let at = usize::try_from(off).unwrap();
    buf[at..at + bytes.len()].copy_from_slice(&bytes);
    std::fs::write(path, buf).unwrap();
    r
}

/// Flips a byte inside `r`'s entry of `cache` and expects mbcheck to name the entry and
/// recommend reconstruct.
fn assert_flipped_cache_entry_is_reported(s: &Store, mailbox: &str, cache: &Path, r: &IndexRecord) {
    flip_byte(cache, r.cache_offset + 10);
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "cache",
            mailbox,
            cache,
            format!("uid {}: cache entry at offset {}", r.uid, r.cache_offset),
        ),
    );
}

fn edit_cyrus_header(path: &Path, edit: impl FnOnce(&mut header::MailboxHeader)) {
    let mut h = header::parse(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut h);
    std::fs::write(path, h.write().unwrap()).unwrap();
}

/// Number of message files (`N.`) under the spool: every one has a record and every
/// non-unlinked record has one, so on a clean store this is what mbcheck checks.
fn message_files(spool: &Path) -> u64 {
    walkdir::WalkDir::new(spool)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            cyrkit::spool::paths::parse_message_file_name(e.file_name().as_encoded_bytes())
                .is_some()
        })
        .count() as u64
}

// ---------------------------------------------------------------------------------------------
// 1. Clean fixtures

#[test]
fn clean_fixtures_exit_0_with_expected_counts() {
    for fixture in [LEGACY, UUID] {
        let s = Store::new(fixture);
        let c = s.check(&[]);
        assert_clean(&c, fixture);
        // Every live entry is checked: tombstones (mbtype with `d`) have no directory.
        let live = s
            .mboxlist_dump()
            .values()
            .filter(|v| !v["mbtype"].as_str().unwrap_or_default().contains('d'))
            .count() as u64;
        assert!(live >= 10, "{fixture}: {live} mailboxes");
        assert_eq!(
            c.json["mailboxes_checked"].as_u64(),
            Some(live),
            "{fixture}"
        );
        assert_eq!(
            c.json["messages_checked"].as_u64(),
            Some(message_files(&s.path("spool"))),
            "{fixture}"
        );
        assert!(
            c.human.contains(&format!("| mailboxes | {live}")),
            "{}",
            c.human
        );
        // With GUIDs re-read, still clean.
        assert_clean(&s.check(&["-G"]), fixture);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Read-only

/// Every path under `root` with its type, size, mode, mtime and content hash.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    use sha1::{Digest, Sha1};
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let content = if md.is_file() {
                format!("{:x}", Sha1::digest(std::fs::read(e.path()).unwrap()))
            } else {
                String::new()
            };
            let desc = format!(
                "{:?} size={} mode={:o} mtime={}.{:09} ino={} nlink={} {content}",
                md.file_type(),
                md.size(),
                md.mode(),
                md.mtime(),
                md.mtime_nsec(),
                md.ino(),
                md.nlink()
            );
            (e.path().to_path_buf(), desc)
        })
        .collect()
}

fn assert_unchanged(root: &Path, what: &str, run: impl FnOnce()) {
    let before = snapshot(root);
    run();
    let after = snapshot(root);
    for (p, d) in &before {
        assert_eq!(Some(d), after.get(p), "{what}: {} changed", p.display());
    }
    for p in after.keys() {
        assert!(before.contains_key(p), "{what}: {} appeared", p.display());
    }
}

#[test]
fn never_changes_a_byte_or_an_mtime() {
    for fixture in [LEGACY, UUID] {
        let clean = Store::new(fixture);
        assert_unchanged(&clean.root, fixture, || {
            assert_eq!(clean.check(&[]).code, 0);
            assert_eq!(clean.check(&["-G"]).code, 0);
        });
    }
    // A damaged store: problems of every layer, so every reporting path runs.
    let s = Store::new(LEGACY);
    let bob = s.path("spool/b/user/bob");
    std::fs::remove_file(bob.join("1.")).unwrap();
    std::fs::write(bob.join("77."), b"no record\r\n").unwrap();
    flip_byte(&bob.join("2."), 10);
    flip_byte(&s.path("spool/b/user/bob/Archive/cyrus.index"), 24);
    let (r, _) = index_record(&s.path("spool/c/user/carol/cyrus.index"), 0);
    flip_byte(
        &s.path("spool/c/user/carol/cyrus.cache"),
        r.cache_offset + 8,
    );
    std::fs::remove_file(s.path("spool/f/shared/folder/cyrus.header")).unwrap();
    std::fs::write(s.path("conf/quota/a/user.alice"), b"%(S (1) M (1))\n").unwrap();
    copy_tree(&bob, &s.path("spool/b/user/bobcopy")).unwrap();
    assert_unchanged(&s.root, "damaged", || {
        for args in [&[][..], &["-G"], &["-r", "user.bob"], &["shared.folder"]] {
            let c = s.check(args);
            assert_eq!(c.code, 1, "{args:?}\n{}", c.describe());
            assert!(!c.findings().is_empty(), "{}", c.describe());
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Damages, one per test (legacy fixture unless named)

const BOB: &str = "spool/b/user/bob";

fn reconstruct(mailbox: &str) -> String {
    format!("cyrkit reconstruct {mailbox}")
}

#[test]
fn missing_message_file() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("2.");
    std::fs::remove_file(&file).unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "message-file",
            "user.bob",
            &file,
            "uid 2: message file is missing",
        ),
    );
}

#[test]
fn extra_message_file_without_record() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("42.");
    std::fs::copy(s.path(BOB).join("1."), &file).unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "message-file",
            "user.bob",
            &file,
            "without an index record (uid 42)",
        ),
    );
}

#[test]
fn message_changed_same_size_is_found_only_with_guids() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("3.");
    let len = std::fs::metadata(&file).unwrap().len();
    flip_byte(&file, len - 5);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    assert_clean(&s.check(&[]), "same size, no -G");
    let c = s.check(&["-G"]);
    assert_only_finding(
        &c,
        &Expect::reconstruct("message-file", "user.bob", &file, "uid 3: content GUID")
            .repaired_by("cyrkit reconstruct -G -R user.bob"),
    );
}

#[test]
fn message_file_with_other_size() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("4.");
    let (r, _) = index_record(&s.path(BOB).join("cyrus.index"), 3);
    assert_eq!(r.uid, 4, "fixture: bob's fourth record is uid 4");
    let mut body = std::fs::read(&file).unwrap();
    body.extend_from_slice(b"appended behind Cyrus's back\r\n");
    std::fs::write(&file, &body).unwrap();
    let c = s.check(&[]);
    let mut want = Expect::reconstruct(
        "message-file",
        "user.bob",
        &file,
        format!(
            "uid 4: size is {} bytes, the index says {}",
            body.len(),
            r.size
        ),
    );
    want.repair = "cyrkit reconstruct -R user.bob".into();
    assert_only_finding(&c, &want);
}

#[test]
fn flipped_byte_in_index_header() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("cyrus.index");
    // pop3_last_login: no count or pointer depends on it, only the CRC breaks.
    flip_byte(&file, index::OFFSET_POP3_LAST_LOGIN as u64 + 3);
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct("index", "user.bob", &file, "index header CRC mismatch"),
    );
}

#[test]
fn flipped_byte_in_index_record_names_its_offset() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/c/user/carol/cyrus.index");
    let (r, off) = index_record(&file, 1);
    // The sentdate: checked by nothing but the record CRC.
    flip_byte(&file, off + index::OFFSET_SENTDATE as u64 + 2);
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "index",
            "user.carol",
            &file,
            format!("record 1 (uid {}) at offset {off}: CRC mismatch", r.uid),
        ),
    );
}

/// A record marked archived in a store without an archive partition: its cache entry is in
/// the mailbox's own `cyrus.cache` (Cyrus's archive paths fall back to the spool's), so it
/// is checked there, not reported as a missing cache.
#[test]
fn archived_record_without_archive_partition_uses_cyrus_cache() {
    let s = Store::new(LEGACY);
    let index_path = s.path("spool/a/user/alice/Sent/cyrus.index");
    let cache = s.path("spool/a/user/alice/Sent/cyrus.cache");
    let r = edit_index_record(&index_path, 0, |r| {
        r.internal_flags |= index::FLAG_INTERNAL_ARCHIVED;
    });
    let c = s.check(&[]);
    assert!(
        !c.findings().iter().any(|f| f["kind"] == "cache"),
        "{}",
        c.describe()
    );
    assert_flipped_cache_entry_is_reported(&s, "user.alice.Sent", &cache, &r);
}

#[test]
fn flipped_byte_in_cache_entry() {
    let s = Store::new(LEGACY);
    let index_path = s.path("spool/a/user/alice/Sent/cyrus.index");
    let cache = s.path("spool/a/user/alice/Sent/cyrus.cache");
    let (r, _) = index_record(&index_path, 0);
    assert_flipped_cache_entry_is_reported(&s, "user.alice.Sent", &cache, &r);
}

#[test]
fn truncated_index() {
    let s = Store::new(LEGACY);
    let file = s.path(BOB).join("cyrus.index");
    let h = read_index_header(&file);
    let keep = u64::from(h.start_offset) + 2 * u64::from(h.record_size) + 7;
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(keep).unwrap();
    drop(f);
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "index",
            "user.bob",
            &file,
            format!(
                "header claims {} records but the file holds only 2",
                h.num_records
            ),
        ),
    );
    // A file cut inside the header is unreadable as an index, and said so.
    f_truncate(&file, 20);
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct("index", "user.bob", &file, "truncated"),
    );
}

fn f_truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn missing_cyrus_header() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/c/user/carol/Lists/cyrus.header");
    std::fs::remove_file(&file).unwrap();
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct("header", "user.carol.Lists", &file, "cannot read"),
    );
    // The mailbox is still charged to its quota root: no knock-on quota finding.
    assert!(
        !c.findings().iter().any(|f| f["kind"] == "quota"),
        "{}",
        c.describe()
    );
}

#[test]
fn stale_database_entry_whose_directory_is_gone() {
    let s = Store::new(LEGACY);
    let dir = s.path("spool/a/user/alice/to-do");
    assert!(
        dir.join("cyrus.header").exists(),
        "fixture has user.alice.to-do"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "missing-directory",
            "user.alice.to-do",
            &dir,
            "mailbox directory is missing",
        ),
    );
}

#[test]
fn orphan_directory() {
    let s = Store::new(LEGACY);
    let dir = s.path("spool/b/user/bob/Archive-copy");
    copy_tree(&s.path("spool/b/user/bob/Archive"), &dir).unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect {
            kind: "orphan-directory",
            mailbox: None,
            file: Some(&dir),
            problem: "no mailboxes database entry".into(),
            repair: "cyrkit reconstruct -m".into(),
        },
    );
}

#[test]
fn wrong_quota_usage_quotalegacy() {
    let s = Store::new(LEGACY);
    let file = s.path("conf/quota/b/user.bob");
    let mut q = quota::parse_legacy_file(&std::fs::read(&file).unwrap()).unwrap();
    let right = q.get(Resource::Storage).used;
    q.get_mut(Resource::Storage).used = right + 4096;
    std::fs::write(&file, quota::write_legacy_file(&q)).unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "quota",
            "user.bob",
            &file,
            format!(
                "STORAGE usage is {}, the mailboxes hold {right}",
                right + 4096
            ),
        )
        .repaired_by("cyrkit quota -f user.bob"),
    );
}

#[test]
fn wrong_counts_in_index_header() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/a/user/alice/Sent/cyrus.index");
    let before = read_index_header(&file);
    edit_index_header(&file, |h| h.exists += 1);
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "index",
            "user.alice.Sent",
            &file,
            format!(
                "header exists is {} but the records give {}",
                before.exists + 1,
                before.exists
            ),
        ),
    );
    // The header CRC was rewritten: only the count is wrong in the index.
    assert!(
        !c.findings()
            .iter()
            .any(|f| f["problem"].as_str().unwrap_or_default().contains("CRC")),
        "{}",
        c.describe()
    );
}

#[test]
fn odd_file_in_mailbox_directory() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/f/shared/folder/notes.txt");
    std::fs::write(&file, b"left here by an admin\n").unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct("odd-file", "shared.folder", &file, "odd file")
            .repaired_by("cyrkit reconstruct -O shared.folder"),
    );
}

#[test]
fn uidvalidity_differs_from_database() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/s/shared/cyrus.index");
    let db = s.mboxlist_dump()["shared"]["uidvalidity"]
        .as_str()
        .unwrap()
        .parse::<u32>()
        .unwrap();
    edit_index_header(&file, |h| h.uidvalidity = db + 7);
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "index",
            "shared",
            &file,
            format!(
                "uidvalidity {} differs from the mailboxes database's {db}",
                db + 7
            ),
        ),
    );
}

#[test]
fn header_acl_differs_from_database() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/a/user/alice/Sent/cyrus.header");
    edit_cyrus_header(&file, |h| {
        let acl = h.acl.as_mut().expect("header has an ACL");
        acl.entries.push(header::AclEntry {
            identifier: b"mallory".to_vec(),
            rights: b"lrswipkxtecda".to_vec(),
        });
    });
    let c = s.check(&[]);
    let f = assert_finding(
        &c,
        &Expect::reconstruct(
            "header",
            "user.alice.Sent",
            &file,
            "differs from the database's",
        ),
    );
    assert!(
        f["problem"]
            .as_str()
            .unwrap()
            .contains("mallory lrswipkxtecda"),
        "{f}"
    );
}

/// Regression: Cyrus 3.6's legacy-layout RENAME (mailbox_rename_copy) leaves the old name
/// in the new directory's cyrus.header (a fresh spool with a rename showed it), so a former
/// name there is no problem; in the uuid layout the header's name is the mailbox's identity
/// outside the database, and a wrong one is reported.
#[test]
fn header_name_is_checked_only_in_the_uuid_layout() {
    let s = Store::new(LEGACY);
    let file = s.path("spool/a/user/alice/Sent/cyrus.header");
    edit_cyrus_header(&file, |h| h.name = Some(b"user.alice.Outbox".to_vec()));
    // Cyrus records the header's CRC in the index whenever it writes the header.
    let crc = header::header_file_crc(&std::fs::read(&file).unwrap());
    edit_index_header(&s.path("spool/a/user/alice/Sent/cyrus.index"), |h| {
        h.header_file_crc = crc
    });
    assert_clean(&s.check(&[]), "legacy header with a former name");

    let s = Store::new(UUID);
    let dir = s.uuid_dir("example.com!user.alice.Archive");
    let file = dir.join("cyrus.header");
    edit_cyrus_header(&file, |h| {
        h.name = Some(b"example.com!user.alice.Elsewhere".to_vec())
    });
    let crc = header::header_file_crc(&std::fs::read(&file).unwrap());
    edit_index_header(&dir.join("cyrus.index"), |h| h.header_file_crc = crc);
    let ext = "user/alice/Archive@example.com";
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "header",
            ext,
            &file,
            "names mailbox \"example.com!user.alice.Elsewhere\"",
        ),
    );
}

/// Moves every cyrus.header and cyrus.index of a fixture copy into a metapartition `meta/`
/// and says so in its imapd.conf, as Cyrus lays a store out with
/// `metapartition_files: header index`.
fn move_to_metapartition(s: &Store) {
    let spool = s.path("spool");
    let meta_files: Vec<PathBuf> = walkdir::WalkDir::new(&spool)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "cyrus.header" || e.file_name() == "cyrus.index")
        .map(|e| e.path().to_path_buf())
        .collect();
    for f in meta_files {
        let to = s.path("meta").join(f.strip_prefix(&spool).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(&f, &to).unwrap();
    }
    let mut conf = std::fs::read_to_string(s.conf()).unwrap();
    conf.push_str("metapartition-default: meta\nmetapartition_files: header index\n");
    std::fs::write(s.conf(), conf).unwrap();
}

/// Regression: with a metapartition, Cyrus 3.6 creates an empty mailbox's data directory
/// only with the first file written there (a fresh spool showed mailboxes without one), so
/// the mailbox's directory is the one holding cyrus.header; a missing data directory shows
/// as the files its records need.
#[test]
fn metapartition_mailbox_exists_where_its_header_is() {
    let s = Store::new(LEGACY);
    move_to_metapartition(&s);
    assert_clean(&s.check(&[]), "legacy fixture with a metapartition");

    let data = s.path("spool/a/user/alice/to-do");
    std::fs::remove_dir_all(&data).unwrap();
    let c = s.check(&[]);
    let (r, _) = index_record(&s.path("meta/a/user/alice/to-do/cyrus.index"), 0);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "message-file",
            "user.alice.to-do",
            &data.join(format!("{}.", r.uid)),
            format!("uid {}: message file is missing", r.uid),
        ),
    );
    assert_finding(
        &c,
        &Expect::reconstruct(
            "cache",
            "user.alice.to-do",
            &data.join("cyrus.cache"),
            "missing, but the index has records",
        ),
    );
    assert!(
        !c.findings()
            .iter()
            .any(|f| f["kind"] == "missing-directory"),
        "{}",
        c.describe()
    );

    let meta = s.path("meta/a/user/alice/Sub/Deep");
    std::fs::remove_dir_all(&meta).unwrap();
    assert_finding(
        &s.check(&[]),
        &Expect::reconstruct(
            "missing-directory",
            "user.alice.Sub.Deep",
            &meta,
            "mailbox directory is missing",
        ),
    );
}

// ------------------------------------------------------------------------- uuid fixture

#[test]
fn uuid_missing_message_file_and_flipped_record() {
    let s = Store::new(UUID);
    let dbname = "example.com!user.alice";
    let dir = s.uuid_dir(dbname);
    let file = dir.join("1.");
    std::fs::remove_file(&file).unwrap();
    let (r, off) = index_record(&dir.join("cyrus.index"), 0);
    flip_byte(&dir.join("cyrus.index"), off + index::OFFSET_GMTIME as u64);
    let c = s.check(&[]);
    // External names: unixhierarchysep, virtual domain.
    let ext = "user/alice@example.com";
    assert_finding(
        &c,
        &Expect::reconstruct("message-file", ext, &file, "uid 1: message file is missing"),
    );
    assert_finding(
        &c,
        &Expect::reconstruct(
            "index",
            ext,
            &dir.join("cyrus.index"),
            format!("record 0 (uid {}) at offset {off}: CRC mismatch", r.uid),
        ),
    );
}

#[test]
fn uuid_missing_header_and_odd_file() {
    let s = Store::new(UUID);
    let dir = s.uuid_dir("user.john^doe.Sent^Items");
    let ext = "user/john.doe/Sent.Items";
    std::fs::remove_file(dir.join("cyrus.header")).unwrap();
    std::fs::write(dir.join("core"), b"\x7fELF").unwrap();
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct("header", ext, &dir.join("cyrus.header"), "cannot read"),
    );
    assert_finding(
        &c,
        &Expect::reconstruct("odd-file", ext, &dir.join("core"), "odd file")
            .repaired_by(format!("cyrkit reconstruct -O {ext}")),
    );
}

#[test]
fn uuid_stale_entry_and_orphan_directory() {
    let s = Store::new(UUID);
    // Move the mailbox directory to a unique id nobody has: one entry without a
    // directory, one directory without an entry.
    let old = s.uuid_dir("example.org!user.carol.Work");
    let new = s.root.join("spool/uuid/z/z/zzzzzzzzzzzzzzzzzzzzzzzz");
    std::fs::create_dir_all(new.parent().unwrap()).unwrap();
    std::fs::rename(&old, &new).unwrap();
    let c = s.check(&[]);
    assert_finding(
        &c,
        &Expect::reconstruct(
            "missing-directory",
            "user/carol/Work@example.org",
            &old,
            "mailbox directory is missing",
        ),
    );
    assert_finding(
        &c,
        &Expect {
            kind: "orphan-directory",
            mailbox: None,
            file: Some(&new),
            problem: "no mailboxes database entry".into(),
            repair: "cyrkit reconstruct -m".into(),
        },
    );
}

#[test]
fn uuid_wrong_quota_usage_in_twoskip_quotas_db() {
    let s = Store::new(UUID);
    let file = s.path("conf/quotas.db");
    let buf = std::fs::read(&file).unwrap();
    let db = twoskip::TwoskipDb::open(&buf).unwrap();
    let root = b"example.org!user.carol";
    let mut right = None;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = db
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            if k == root {
                let mut q = quota::parse_value(v).unwrap();
                right = Some(q.get(Resource::Message).used);
                q.get_mut(Resource::Message).used += 2;
                (k.to_vec(), quota::write_value(&q))
            } else {
                (k.to_vec(), v.to_vec())
            }
        })
        .collect();
    let right = right.expect("fixture has a quota root on carol@example.org");
    let out = twoskip::write_fresh(
        &pairs,
        &twoskip::FreshOptions {
            generation: db.header().generation + 1,
            order: db.order(),
            seed: 1,
        },
    )
    .unwrap();
    std::fs::write(&file, out).unwrap();
    let c = s.check(&[]);
    assert_only_finding(
        &c,
        &Expect::reconstruct(
            "quota",
            "user/carol@example.org",
            &file,
            format!("MESSAGE usage is {}, the mailboxes hold {right}", right + 2),
        )
        .repaired_by("cyrkit quota -f user/carol@example.org"),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Usage errors and mailbox selection

#[test]
fn usage_errors_exit_2() {
    let s = Store::new(LEGACY);
    let r = mbcheck(&s.conf(), &["--no-such-flag"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let r = mbcheck(&s.path("nonexistent/imapd.conf"), &[]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("imapd.conf"), "{}", r.stderr);
    // A malformed mailbox name is a usage error, not an unprocessed mailbox.
    let r = mbcheck(&s.conf(), &["bad..name"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("bad..name"), "{}", r.stderr);
}

#[test]
fn mailbox_arguments_limit_the_check() {
    let s = Store::new(LEGACY);
    let archive_file = s.path("spool/b/user/bob/Archive/2.");
    std::fs::remove_file(&archive_file).unwrap();
    // Damage only under user.bob: alice alone is clean.
    let c = s.check(&["user.alice"]);
    assert_clean(&c, "user.alice");
    assert_eq!(c.json["mailboxes_checked"].as_u64(), Some(1));
    assert_clean(&s.check(&["-r", "user.alice"]), "-r user.alice");
    // user.bob itself is fine; its child is not.
    assert_clean(&s.check(&["user.bob"]), "user.bob without -r");
    for args in [
        &["user.bob.Archive"][..],
        &["-r", "user.bob"],
        &["-r", "user"],
    ] {
        let c = s.check(args);
        assert_finding(
            &c,
            &Expect::reconstruct(
                "message-file",
                "user.bob.Archive",
                &archive_file,
                "uid 2: message file is missing",
            ),
        );
    }
    let c = s.check(&["-r", "user"]);
    let users = s
        .mboxlist_dump()
        .iter()
        .filter(|(k, v)| {
            k.starts_with("user.") && !v["mbtype"].as_str().unwrap_or_default().contains('d')
        })
        .count() as u64;
    assert_eq!(c.json["mailboxes_checked"].as_u64(), Some(users));
}

/// A mailbox argument that names nothing must not pass as a clean check: exit 3 (the
/// mailbox could not be processed), said on stderr, listed under `not_found`.
#[test]
fn nonexistent_mailbox_argument_is_not_clean() {
    let s = Store::new(LEGACY);
    let r = mbcheck(&s.conf(), &["user.alice", "user.nobody"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("user.nobody"), "{}", r.stderr);
    let r = mbcheck(&s.conf(), &["--json", "-r", "user.nobody"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["not_found"], serde_json::json!(["user.nobody"]));
    assert_eq!(v["mailboxes_checked"].as_u64(), Some(0));
    // A bare prefix is a name only with -r (as Cyrus's `reconstruct -r user`).
    let r = mbcheck(&s.conf(), &["user"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("user"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// 4. Spools a real Cyrus has just written

fn message(subject: &str, body: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: sender@example.org\nTo: someone@example.com\nSubject: {subject}\n\
             Message-ID: <{subject}@example.org>\n\n{body}\n"
        )
        .as_bytes(),
    )
}

/// Names in one instance's namespace.
struct Names {
    /// LMTP recipients for alice and bob.
    alice: &'static str,
    bob: &'static str,
    /// External names as the admin sees them.
    alice_inbox: &'static str,
    alice_sub: &'static str,
    /// alice's own name for it.
    alice_sub_own: &'static str,
    /// A folder of alice's that gets renamed, and its new name.
    alice_old: &'static str,
    alice_renamed: &'static str,
    bob_inbox: &'static str,
    bob_trash: &'static str,
    shared: &'static str,
}

/// Fills a fresh instance: mailboxes, quota, multi-recipient LMTP, APPEND with flags, an
/// expunge, a delayed delete. Returns how many live mailboxes the database holds.
fn fill(cy: &CyrusInstance, n: &Names) -> u64 {
    let mut admin = cy.imap_admin().unwrap();
    for mb in [
        n.alice_inbox,
        n.alice_sub,
        n.bob_inbox,
        n.bob_trash,
        n.shared,
    ] {
        admin.create(mb).unwrap();
    }
    admin
        .setquota(n.alice_inbox, &[("STORAGE", 1000), ("MESSAGE", 50)])
        .unwrap();
    admin.setquota(n.alice_sub, &[("MESSAGE", 10)]).unwrap();
    admin.setacl(n.shared, "anyone", "lrsp").unwrap();
    admin.setacl(n.shared, "cyrus", "lrswipkxtecda").unwrap();
    admin
        .append(
            n.shared,
            &["\\Flagged"],
            None,
            &message("shared", "for all"),
        )
        .unwrap();
    admin.setacl(n.bob_trash, "cyrus", "lrswipkxtecda").unwrap();
    admin.delete(n.bob_trash).unwrap();

    let mut lmtp = cy.lmtp().unwrap();
    for i in 0..3 {
        let replies = lmtp
            .deliver(
                "sender@example.org",
                &[n.alice, n.bob],
                &message(&format!("lmtp{i}"), "to both"),
            )
            .unwrap();
        assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    }
    lmtp.quit().unwrap();

    let mut alice = cy.imap_login(n.alice).unwrap();
    alice
        .append(
            "INBOX",
            &["\\Seen", "\\Answered", "$Label1"],
            Some("01-Jan-2020 12:34:56 +0200"),
            &message("appended", "with flags"),
        )
        .unwrap();
    alice
        .append(
            n.alice_sub_own,
            &["NonJunk"],
            None,
            &message("sub", "in a folder"),
        )
        .unwrap();
    alice.select("INBOX").unwrap();
    alice.store("2", "+FLAGS", &["\\Deleted"]).unwrap();
    alice.expunge().unwrap();
    alice
        .store("1", "+FLAGS", &["\\Flagged", "project-x"])
        .unwrap();
    // Annotations: one on a message (cyrus.annotations, annotation sync CRC and quota),
    // one on the mailbox (annotations.db, annotation quota).
    alice
        .ok("STORE 1 ANNOTATION (/comment (value.priv \"a note\"))")
        .unwrap();
    alice
        .ok("SETMETADATA INBOX (/private/comment \"mailbox note\")")
        .unwrap();
    alice.logout().unwrap();

    // A rename: the entry moves, the directory moves (legacy) or stays (uuid).
    let mut admin = cy.imap_admin().unwrap();
    admin.create(n.alice_old).unwrap();
    admin.setacl(n.alice_old, "cyrus", "lrswipkxtecda").unwrap();
    admin
        .append(n.alice_old, &[], None, &message("old", "before the rename"))
        .unwrap();
    admin
        .ok(&format!(
            "RENAME \"{}\" \"{}\"",
            n.alice_old, n.alice_renamed
        ))
        .unwrap();
    admin.logout().unwrap();

    live_entries(cy)
}

/// Live (non-tombstone) entries of the mailboxes database, as `ctl_mboxlist -d` shows them.
fn live_entries(cy: &CyrusInstance) -> u64 {
    let out = cy.run_tool("ctl_mboxlist", &["-d"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Map<String, Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ctl_mboxlist -d: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    dump.values()
        .filter(|v| !v["mbtype"].as_str().unwrap_or_default().contains('d'))
        .count() as u64
}

fn assert_fresh_spool_clean(cy: &CyrusInstance, mailboxes: u64, what: &str) {
    let files = message_files(&cy.spool_dir());
    assert!(files >= 10, "{what}: only {files} message files");
    let c = check(&cy.conf_path(), &[]);
    assert_clean(&c, what);
    assert_eq!(
        c.json["mailboxes_checked"].as_u64(),
        Some(mailboxes),
        "{what}\n{}",
        c.describe()
    );
    assert_eq!(c.json["messages_checked"].as_u64(), Some(files), "{what}");
    assert_clean(&check(&cy.conf_path(), &["-G"]), what);
}

fn fresh_spool(opts: &CyrusOptions, n: &Names, what: &str) {
    let mut cy = CyrusInstance::start(opts).expect("start Cyrus");
    let mailboxes = fill(&cy, n);
    assert!(mailboxes >= 5, "{what}: admin lists {mailboxes}");
    // Cyrus still running (imapd/lmtpd children may hold the files).
    assert_fresh_spool_clean(&cy, mailboxes, &format!("{what}, Cyrus running"));
    cy.stop().unwrap();
    let before = snapshot(cy.root());
    assert_fresh_spool_clean(&cy, mailboxes, &format!("{what}, Cyrus stopped"));
    assert_eq!(
        before,
        snapshot(cy.root()),
        "{what}: mbcheck changed the spool"
    );
    // Cyrus's own maintenance: cyr_expire unlinks the expunged message (record kept,
    // file gone) and removes the delayed-deleted mailbox; still clean.
    let out = cy
        .run_tool("cyr_expire", &["-X", "0", "-D", "0", "-E", "0"])
        .unwrap();
    assert!(
        out.status.success(),
        "cyr_expire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = message_files(&cy.spool_dir());
    let c = check(&cy.conf_path(), &["-G"]);
    assert_clean(&c, &format!("{what}, after cyr_expire"));
    assert_eq!(c.json["messages_checked"].as_u64(), Some(files));
    assert_eq!(
        c.json["mailboxes_checked"].as_u64(),
        Some(live_entries(&cy)),
        "{what}, after cyr_expire"
    );
}

#[test]
fn fresh_cyrus_spool_legacy_layout_is_clean() {
    if !require_cyrus() {
        return;
    }
    fresh_spool(
        &CyrusOptions::default(),
        &Names {
            alice: "alice",
            bob: "bob",
            alice_inbox: "user.alice",
            alice_sub: "user.alice.Sub",
            alice_sub_own: "INBOX.Sub",
            alice_old: "user.alice.Old",
            alice_renamed: "user.alice.Renamed",
            bob_inbox: "user.bob",
            bob_trash: "user.bob.Trash",
            shared: "shared.box",
        },
        "legacy, virtdomains off",
    );
}

#[test]
fn fresh_cyrus_spool_uuid_layout_virtdomains_is_clean() {
    if !require_cyrus() {
        return;
    }
    // Unlike the uuid fixture (`/` separator, skiplist): `.` separator, twoskip mailboxes
    // and quotas, and a metapartition holding cyrus.header and cyrus.index.
    let opts = CyrusOptions {
        legacy_dirs: false,
        virtdomains: "userid".into(),
        quota_db: "twoskip".into(),
        metapartition: true,
        ..CyrusOptions::default()
    };
    fresh_spool(
        &opts,
        &Names {
            alice: "alice@example.com",
            bob: "bob@example.org",
            alice_inbox: "user.alice@example.com",
            alice_sub: "user.alice.Sub@example.com",
            alice_sub_own: "INBOX.Sub",
            alice_old: "user.alice.Old@example.com",
            alice_renamed: "user.alice.Renamed@example.com",
            bob_inbox: "user.bob@example.org",
            bob_trash: "user.bob.Trash@example.org",
            shared: "shared.box@example.org",
        },
        "uuid, virtdomains userid, metapartition",
    );
}
