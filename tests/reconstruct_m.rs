//! `cyrkit reconstruct -m` end to end: the real binary on copies of the real-Cyrus fixtures
//! (legacy layout + twoskip, uuid layout + virtdomains + skiplist, and flat), with the
//! database deleted, intact (`-n`), and with one precise damage each; and against a real
//! Cyrus 3.6 that must serve the store exactly as before from the rebuilt database.
//!
//! What is compared exactly and what only plausibly, when the database is rebuilt from the
//! spool alone (nothing in the old database to take values from):
//! * exactly: the set of keys (N and I records, tombstones included), and per entry the type
//!   (`T`), unique id, `N` of I records, partition, server, uidvalidity, createdmodseq and
//!   ACL; the name history's names, types, uidvalidity and createdmodseq; for `DELETED.*`
//!   mailboxes and their tombstones also `M` (the deletion time is in the name);
//! * plausibly: foldermodseq (Cyrus keeps it only in mailboxes.db; rebuilt as the index's
//!   highestmodseq, so it must lie between the old value and that), and mtime (rebuilt from
//!   the cyrus.header mtime: not before the old value, not after the run).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cyrkit::format::cyrusdb::Backend;
use cyrkit::format::mboxlist::{MboxEntry, MboxKey};
use cyrkit::format::{dlist, header};
use cyrkit::spool::db::read_pairs;
use serde_json::Value;
use support::cli::{self, fixture_src, Run};
use support::cyrus::{copy_tree, crlf, require_cyrus, CyrusInstance};

// ---------------------------------------------------------------------------------------------
// Running the binary

/// The subcommand words; switch here when `cyrkit reconstruct -m` is wired up.
const SUBCOMMAND: &[&str] = &["reconstruct", "-m"];

fn recm(conf: &Path, args: &[&str]) -> Run {
    cli::run(SUBCOMMAND, Some(conf), args, &[])
}

// ---------------------------------------------------------------------------------------------
// Stores

struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    backend: Backend,
}

impl Store {
    fn new(fixture: &str) -> Store {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-recm-");
        let backend = if fixture == "uuid" {
            Backend::Skiplist
        } else {
            Backend::Twoskip
        };
        Store {
            _tmp: tmp,
            root,
            backend,
        }
    }

    /// The same store with `mboxlist_db: flat` and its database converted by cyrkit's writer.
    fn new_flat(fixture: &str) -> Store {
        let mut s = Store::new(fixture);
        let pairs = s.pairs();
        let conf = std::fs::read_to_string(s.conf()).unwrap();
        let conf = conf
            .lines()
            .map(|l| {
                if l.starts_with("mboxlist_db:") {
                    "mboxlist_db: flat"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(s.conf(), conf + "\n").unwrap();
        s.backend = Backend::Flat;
        std::fs::write(s.db(), cyrkit::format::flat::write_fresh(&pairs).unwrap()).unwrap();
        s
    }

    fn conf(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }
    fn db(&self) -> PathBuf {
        self.root.join("conf/mailboxes.db")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn run(&self, args: &[&str]) -> Run {
        recm(&self.conf(), args)
    }
    fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let buf = std::fs::read(self.db()).expect("mailboxes.db");
        read_pairs(&buf, self.backend).expect("mailboxes.db decodes")
    }
    fn entries(&self) -> BTreeMap<Vec<u8>, MboxEntry> {
        entries(&self.pairs())
    }
    fn conf_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("conf"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn entries(pairs: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<Vec<u8>, MboxEntry> {
    pairs
        .iter()
        .map(|(k, v)| {
            let e = MboxEntry::from_v36_dlist(&dlist::parse(v).expect("dlist")).expect("entry");
            (k.clone(), e)
        })
        .collect()
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).replace(['\x1f', '\x1d'], ".")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn is_deleted_key(k: &[u8]) -> bool {
    matches!(MboxKey::decode(k), Ok(MboxKey::Name(n)) if n.starts_with(b"DELETED\x1f"))
}

/// The rebuilt entries against Cyrus's own: exact and plausible fields (module docs).
fn assert_rebuilt_like(
    old: &BTreeMap<Vec<u8>, MboxEntry>,
    new: &BTreeMap<Vec<u8>, MboxEntry>,
    what: &str,
) {
    let ok: Vec<String> = old.keys().map(|k| show(k)).collect();
    let nk: Vec<String> = new.keys().map(|k| show(k)).collect();
    assert_eq!(ok, nk, "{what}: the same keys");
    let until = now() + 1;
    for (k, o) in old {
        let n = &new[k];
        let ctx = format!("{what}: {}", show(k));
        assert_eq!(o.mbtype, n.mbtype, "{ctx}: type");
        assert_eq!(o.uniqueid, n.uniqueid, "{ctx}: unique id");
        assert_eq!(o.dbname, n.dbname, "{ctx}: N");
        assert_eq!(o.partition, n.partition, "{ctx}: partition");
        assert_eq!(o.server, n.server, "{ctx}: server");
        assert_eq!(o.uidvalidity, n.uidvalidity, "{ctx}: uidvalidity");
        assert_eq!(o.createdmodseq, n.createdmodseq, "{ctx}: createdmodseq");
        assert_eq!(o.acl, n.acl, "{ctx}: ACL");
        assert!(
            n.foldermodseq >= o.foldermodseq && n.foldermodseq >= n.createdmodseq,
            "{ctx}: foldermodseq {} (Cyrus had {})",
            n.foldermodseq,
            o.foldermodseq
        );
        let (om, nm) = (o.mtime.unwrap(), n.mtime.unwrap());
        if o.mbtype.deleted || is_deleted_key(k) {
            assert_eq!(om, nm, "{ctx}: mtime of a deletion is its time stamp");
        } else {
            assert!(
                om <= nm && nm <= until,
                "{ctx}: mtime {nm} (Cyrus had {om})"
            );
        }
        let (oh, nh) = (
            o.name_history.clone().unwrap_or_default(),
            n.name_history.clone().unwrap_or_default(),
        );
        assert_eq!(oh.len(), nh.len(), "{ctx}: name history");
        for (a, b) in oh.iter().zip(&nh) {
            assert_eq!(
                (&a.dbname, a.mbtype, a.uidvalidity, a.createdmodseq, a.mtime),
                (&b.dbname, b.mbtype, b.uidvalidity, b.createdmodseq, b.mtime),
                "{ctx}: former name"
            );
            assert!(b.foldermodseq >= a.foldermodseq, "{ctx}: former F");
        }
    }
}

fn rebuild_from_spool_alone(s: &Store, what: &str) {
    let before = s.entries();
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&[]);
    assert_eq!(r.code, 0, "{what}: {}", r.describe());
    assert!(
        !s.conf_files().iter().any(|f| f.ends_with(".NEW")),
        "{what}: no .NEW left"
    );
    assert_rebuilt_like(&before, &s.entries(), what);
    let buf = std::fs::read(s.db()).unwrap();
    assert!(
        cyrkit::spool::db::verify(&buf, s.backend).is_empty(),
        "{what}: the written file verifies"
    );
    // Rebuilt once more, with the rebuilt database as the current one: nothing changes.
    let again = s.run(&["-n", "--json"]);
    assert_eq!(again.code, 0, "{what}: {}", again.describe());
}

// ---------------------------------------------------------------------------------------------
// Fixtures

#[test]
fn intact_store_shows_no_difference() {
    for s in [
        Store::new("legacy"),
        Store::new("uuid"),
        Store::new_flat("legacy"),
    ] {
        let before = std::fs::read(s.db()).unwrap();
        let human = s.run(&["-n"]);
        assert_eq!(human.code, 0, "{}", human.describe());
        assert!(!human.stdout.contains("\n+ ") && !human.stdout.contains("~ "));
        assert!(
            human.stdout.contains("0 added, 0 removed, 0 changed"),
            "{}",
            human.stdout
        );
        let json = s.run(&["-n", "--json"]).json();
        let d = &json["difference"];
        for k in ["added", "removed", "changed"] {
            assert_eq!(d[k], Value::Array(vec![]), "{k}: {json}");
        }
        assert_eq!(json["mailboxes"], 14);
        assert_eq!(json["written"], false);
        assert_eq!(std::fs::read(s.db()).unwrap(), before, "-n writes nothing");
    }
}

#[test]
fn legacy_twoskip_rebuilt_from_spool_alone() {
    rebuild_from_spool_alone(&Store::new("legacy"), "legacy/twoskip");
}

#[test]
fn uuid_virtdomains_skiplist_rebuilt_from_spool_alone() {
    rebuild_from_spool_alone(&Store::new("uuid"), "uuid/skiplist");
}

#[test]
fn legacy_flat_rebuilt_from_spool_alone() {
    rebuild_from_spool_alone(&Store::new_flat("legacy"), "legacy/flat");
}

#[test]
fn ignore_old_differs_only_in_foldermodseq_and_mtime() {
    let s = Store::new("uuid");
    let r = s.run(&["-n", "--ignore-old", "--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    let j = r.json();
    assert_eq!(j["difference"]["added"], Value::Array(vec![]));
    assert_eq!(j["difference"]["removed"], Value::Array(vec![]));
    let changed = j["difference"]["changed"].as_array().unwrap();
    assert!(!changed.is_empty());
    for c in changed {
        for f in c["fields"].as_array().unwrap() {
            let field = f["field"].as_str().unwrap();
            assert!(field == "foldermodseq" || field == "mtime", "{c}");
        }
    }
}

#[test]
fn old_database_is_kept_as_a_hard_link_and_replaced() {
    let s = Store::new("legacy");
    let old_bytes = std::fs::read(s.db()).unwrap();
    let old_ino = std::fs::metadata(s.db()).unwrap().ino();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let j = r.json();
    let backup = PathBuf::from(j["backup"].as_str().expect("backup path"));
    assert_eq!(backup.parent(), s.db().parent());
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mailboxes.db.2") && name.ends_with('Z'),
        "{name}"
    );
    assert_eq!(std::fs::read(&backup).unwrap(), old_bytes);
    assert_eq!(
        std::fs::metadata(&backup).unwrap().ino(),
        old_ino,
        "the old inode"
    );
    assert_ne!(std::fs::metadata(s.db()).unwrap().ino(), old_ino);
    // Merged with the old database, the rebuilt one holds the same records.
    let kept = read_pairs(&std::fs::read(&backup).unwrap(), s.backend).unwrap();
    assert_eq!(s.entries(), entries(&kept));
    // A second run keeps a second backup rather than overwriting the first.
    let r2 = s.run(&["--json"]).json();
    assert_ne!(r2["backup"], j["backup"]);
    assert!(backup.exists());
}

#[test]
fn legacy_missing_header_is_named_from_its_path() {
    let s = Store::new("legacy");
    std::fs::remove_file(s.path("spool/a/user/alice/Sent/cyrus.header")).unwrap();
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let j = r.json();
    let p = problem(&j, "header-missing");
    assert_eq!(p["mailbox"], "user.alice.Sent");
    let e = &s.entries()[&b"Nuser\x1falice\x1fSent".to_vec()];
    assert_eq!(e.partition.as_deref(), Some(&b"default"[..]));
    assert!(e.mbtype.legacy_dirs);
    // No database to take it from: a new unique id, as Cyrus's reconstruct makes one for a
    // header it cannot read, with its I record.
    let id = e.uniqueid.clone().expect("a new unique id");
    assert!(
        id.len() == 24
            && id
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    );
    let by_id = &s.entries()[&[b"I".as_slice(), &id].concat()];
    assert_eq!(by_id.dbname.as_deref(), Some(&b"user\x1falice\x1fSent"[..]));
    assert_eq!(
        e.acl.as_ref().unwrap().to_cyrus_string(),
        b"alice\tlrswipkxtecdan\t"
    );
    assert!(e.uidvalidity != 0, "uidvalidity still from the index");
    // reconstruct then rebuilds the header with that id, and everything is consistent.
    let conf = s.conf();
    let conf = conf.to_str().unwrap();
    let r = cli::run(
        &[
            "reconstruct",
            "-C",
            conf,
            "--no-progress",
            "user.alice.Sent",
        ],
        None,
        &[],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.describe());
    let h = cyrkit::format::header::parse(
        &std::fs::read(s.path("spool/a/user/alice/Sent/cyrus.header")).unwrap(),
    )
    .unwrap();
    assert_eq!(h.uniqueid.as_deref(), Some(id.as_slice()));
    let m = cli::run(&["mbcheck", "-C", conf, "--no-progress"], None, &[], &[]);
    assert_eq!(m.code, 0, "{}", m.describe());
}

/// The header is lost but the database still has the entry: its unique id and ACL are
/// kept (not a new id, not the default ACL), so `-m` changes nothing about the mailbox.
#[test]
fn legacy_missing_header_keeps_the_entry_id_and_acl() {
    let s = Store::new("legacy");
    let before = s.entries()[&b"Nuser\x1falice\x1fSent".to_vec()].clone();
    std::fs::remove_file(s.path("spool/a/user/alice/Sent/cyrus.header")).unwrap();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(
        problem(&r.json(), "header-missing")["mailbox"],
        "user.alice.Sent"
    );
    let e = &s.entries()[&b"Nuser\x1falice\x1fSent".to_vec()];
    assert!(before.uniqueid.is_some());
    assert_eq!(e.uniqueid, before.uniqueid);
    assert_eq!(e.acl, before.acl);
    // Twice in a row (the header still missing): the same id again.
    assert_eq!(s.run(&[]).code, 0);
    assert_eq!(
        s.entries()[&b"Nuser\x1falice\x1fSent".to_vec()].uniqueid,
        before.uniqueid
    );
}

#[test]
fn uuid_missing_header_is_reported_and_left_out() {
    let s = Store::new("uuid");
    let dir = s.path("spool/uuid/t/q/tqsjv8fshqce8fzb45ichr09");
    std::fs::remove_file(dir.join("cyrus.header")).unwrap();
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 3, "{}", r.describe());
    let j = r.json();
    let p = problem(&j, "no-name");
    assert_eq!(p["path"].as_str(), Some(dir.to_str().unwrap()));
    assert!(p["message"]
        .as_str()
        .unwrap()
        .contains("tqsjv8fshqce8fzb45ichr09"));
    let e = s.entries();
    assert!(!e.contains_key(b"Nuser\x1fdave\x1fSent".as_slice()));
    assert!(e.contains_key(b"Nuser\x1fdave".as_slice()));
    assert_eq!(j["mailboxes"], 13);
}

#[test]
fn two_directories_with_one_unique_id_keep_the_newer_index() {
    let s = Store::new("legacy");
    let copy = s.path("spool/b/user/bob/Copy");
    copy_tree(&s.path("spool/b/user/bob/Archive"), &copy).unwrap();
    // The copy's index is older than the original's.
    let old = std::fs::File::options()
        .write(true)
        .open(copy.join("cyrus.index"))
        .unwrap();
    old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 3, "{}", r.describe());
    let j = r.json();
    let p = problem(&j, "duplicate-uniqueid");
    assert_eq!(p["mailbox"], "user.bob.Copy");
    assert_eq!(p["path"].as_str(), Some(copy.to_str().unwrap()));
    let e = s.entries();
    assert!(e.contains_key(b"Nuser\x1fbob\x1fArchive".as_slice()));
    assert!(!e.contains_key(b"Nuser\x1fbob\x1fCopy".as_slice()));
    assert!(copy.join("cyrus.header").exists(), "never touched on disk");
}

#[test]
fn parent_that_exists_only_as_a_parent_gets_an_intermediate_entry() {
    let s = Store::new("legacy");
    let sub = s.path("spool/a/user/alice/Sub");
    for e in std::fs::read_dir(&sub).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let e = s.entries();
    let n = &e[&b"Nuser\x1falice\x1fSub".to_vec()];
    assert!(n.mbtype.intermediate && n.mbtype.legacy_dirs && !n.mbtype.deleted);
    assert_eq!(n.partition, None);
    let id = n.uniqueid.clone().expect("an intermediate has a unique id");
    assert_eq!(id.len(), 24);
    let mut ikey = b"I".to_vec();
    ikey.extend_from_slice(&id);
    assert_eq!(
        e[&ikey].dbname.as_deref(),
        Some(&b"user\x1falice\x1fSub"[..])
    );
    assert!(e.contains_key(b"Nuser\x1falice\x1fSub\x1fDeep".as_slice()));
    assert_eq!(r.json()["intermediates"], 1);
}

#[test]
fn dry_run_reports_removed_added_and_changed_fields() {
    let s = Store::new("legacy");
    // A mailbox gone from disk, one new on disk (a copy with a fresh unique id), one ACL
    // changed in its header.
    std::fs::remove_dir_all(s.path("spool/c/user/carol/Lists")).unwrap();
    let hp = s.path("spool/s/shared/cyrus.header");
    let mut h = header::parse(&std::fs::read(&hp).unwrap()).unwrap();
    h.acl.as_mut().unwrap().entries[0].rights = b"lrs".to_vec();
    std::fs::write(&hp, h.write().unwrap()).unwrap();
    let r = s.run(&["-n", "--json"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    let j = r.json();
    let keys = |k: &str| -> Vec<String> {
        j["difference"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["family"].as_str().unwrap(),
                    e["key"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        keys("removed"),
        ["id btmybpnxd04zf7t5j8kqjqzh", "name user.carol.Lists"]
    );
    assert!(keys("added").is_empty());
    let changed = j["difference"]["changed"].as_array().unwrap();
    let acl: Vec<&Value> = changed
        .iter()
        .flat_map(|c| c["fields"].as_array().unwrap())
        .collect();
    assert!(acl.iter().all(|f| f["field"] == "acl"), "{j}");
    assert_eq!(acl[0]["old"], "%(anyone lr cyrus lrswipkxtecda)");
    assert_eq!(acl[0]["new"], "%(anyone lrs cyrus lrswipkxtecda)");
    let human = s.run(&["-n"]);
    assert!(
        human.stdout.contains("- name user.carol.Lists"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("~ name shared: acl"),
        "{}",
        human.stdout
    );
}

#[test]
fn unknown_partition_is_a_usage_error() {
    let s = Store::new("legacy");
    let r = s.run(&["-n", "-p", "nosuch"]);
    assert_eq!(r.code, 2, "{}", r.describe());
}

// ---------------------------------------------------------------------------------------------
// Real Cyrus

/// What Cyrus's `ctl_mboxlist -d` prints, by name.
fn ctl_mboxlist(cy: &CyrusInstance) -> serde_json::Map<String, Value> {
    let out = cy.run_tool("ctl_mboxlist", &["-d"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("ctl_mboxlist -d prints JSON") {
        Value::Object(m) => m,
        other => panic!("{other}"),
    }
}

fn real_cyrus_round_trip(fixture: &str, backend: Option<&str>, users: &[&str]) {
    let src = fixture_src(fixture);
    let what = format!("{fixture}/{}", backend.unwrap_or("as made"));
    let mut cy = CyrusInstance::spool_copy_offline(&src).expect("copy fixture");
    support::cyrus::relink_hardlinks(cy.root()).unwrap();
    let conf = cy.conf_path();
    if let Some(b) = backend {
        // Let Cyrus itself convert the database to the backend under test.
        let text = std::fs::read_to_string(&conf).unwrap();
        let old = text
            .lines()
            .find(|l| l.starts_with("mboxlist_db:"))
            .unwrap()
            .to_string();
        let db = cy.config_dir().join("mailboxes.db");
        let from = old.trim_start_matches("mboxlist_db:").trim().to_string();
        support::cyrus::chown_cyrus(cy.root()).unwrap();
        let tmp = cy.root().join("conf/mailboxes.db.cvt");
        let out = cy
            .run_tool(
                "cvt_cyrusdb",
                &[db.to_str().unwrap(), &from, tmp.to_str().unwrap(), b],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &db).unwrap();
        std::fs::write(&conf, text.replace(&old, &format!("mboxlist_db: {b}"))).unwrap();
    }
    support::cyrus::chown_cyrus(cy.root()).unwrap();
    let before = ctl_mboxlist(&cy);

    // -n on the intact store: nothing to do.
    let intact = recm(&conf, &["-n"]);
    assert_eq!(intact.code, 0, "{what}: {}", intact.describe());

    std::fs::remove_file(cy.config_dir().join("mailboxes.db")).unwrap();
    let r = recm(&conf, &[]);
    assert_eq!(r.code, 0, "{what}: {}", r.describe());
    let db = cy.config_dir().join("mailboxes.db");
    let (uid, _) = support::cyrus::cyrus_ids().unwrap();
    assert_eq!(
        std::fs::metadata(&db).unwrap().uid(),
        uid,
        "{what}: written as the cyrus user"
    );

    let after = ctl_mboxlist(&cy);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: ctl_mboxlist -d lists the same mailboxes"
    );
    for (name, b) in &before {
        let a = &after[name];
        for field in [
            "name",
            "partition",
            "acl",
            "uniqueid",
            "uidvalidity",
            "mbtype",
            "createdmodseq",
        ] {
            assert_eq!(b[field], a[field], "{what}: {name} {field}");
        }
        let num = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        assert!(
            num(&a["foldermodseq"]) >= num(&b["foldermodseq"]),
            "{what}: {name} foldermodseq"
        );
        assert!(num(&a["mtime"]) >= num(&b["mtime"]), "{what}: {name} mtime");
    }

    // Cyrus's own reconstruct finds nothing to fix.
    let recon = cy.run_tool("reconstruct", &["-n"]).unwrap();
    let mut got = recon.stdout.clone();
    got.extend_from_slice(&recon.stderr);
    let want = std::fs::read(src.join("expected/reconstruct-n.txt")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "{what}: reconstruct -n"
    );

    cy.start_master().unwrap();
    support::cyrus::assert_imap_as_recorded(&cy, &src, &what);
    let msg = crlf(b"From: a@example.org\nTo: x\nSubject: after reconstruct -m\n\nhello\n");
    let mut lmtp = cy.lmtp().unwrap();
    let replies = lmtp.deliver("a@example.org", users, &msg).unwrap();
    lmtp.quit().unwrap();
    assert_eq!(replies.len(), users.len(), "{what}");
    assert!(
        replies.iter().all(|r| r.code == 250),
        "{what}: LMTP through Cyrus's lmtpd: {replies:?}"
    );
    cy.stop().unwrap();
}

const LEGACY_USERS: &[&str] = &["alice", "bob", "carol"];
const UUID_USERS: &[&str] = &[
    "dave",
    "john.doe",
    "alice@example.com",
    "bob@example.com",
    "carol@example.org",
    "john.doe@example.org",
];

#[test]
fn real_cyrus_serves_legacy_twoskip_store_from_rebuilt_database() {
    if require_cyrus() {
        real_cyrus_round_trip("legacy", None, LEGACY_USERS);
    }
}

#[test]
fn real_cyrus_serves_uuid_skiplist_store_from_rebuilt_database() {
    if require_cyrus() {
        real_cyrus_round_trip("uuid", None, UUID_USERS);
    }
}

#[test]
fn real_cyrus_serves_legacy_flat_store_from_rebuilt_database() {
    if require_cyrus() {
        real_cyrus_round_trip("legacy", Some("flat"), LEGACY_USERS);
    }
}

#[test]
fn real_cyrus_serves_uuid_twoskip_store_from_rebuilt_database() {
    if require_cyrus() {
        real_cyrus_round_trip("uuid", Some("twoskip"), UUID_USERS);
    }
}

#[test]
fn partition_option_keeps_other_partitions_and_needs_a_database() {
    let s = Store::new("legacy");
    // A second partition holding nothing: rescanning it alone changes nothing.
    std::fs::create_dir_all(s.path("spool2")).unwrap();
    let conf = std::fs::read_to_string(s.conf()).unwrap() + "partition-other: spool2\n";
    std::fs::write(s.conf(), conf).unwrap();
    let r = s.run(&["-n", "-p", "other"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let r = s.run(&["-n", "-p", "default"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let r = s.run(&["-n", "-p", "default", "--ignore-old"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    std::fs::remove_file(s.db()).unwrap();
    let r = s.run(&["-p", "other"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    assert!(!s.db().exists(), "nothing written");
}

/// The first problem of `kind` in a `--json` document.
fn problem<'a>(j: &'a Value, kind: &str) -> &'a Value {
    j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} problem in {j}"))
}
