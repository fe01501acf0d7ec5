//! `cyrkit quota` end to end against the real Cyrus 3.6 `quota`: the same damage applied to two
//! copies of a real-Cyrus fixture, Cyrus's `quota -f` on one and `cyrkit quota -f` on the
//! other, then Cyrus's `quota -J` must print the same on both and the fix messages must match;
//! a second `-f` changes nothing; `-n` writes nothing; Cyrus started on each repaired copy
//! answers GETQUOTAROOT the same for every mailbox (as admin and as owner); `-d` and `-u`
//! select and print as Cyrus's `quota` does; and deliveries through Cyrus's lmtpd while
//! `cyrkit quota -f` runs all succeed and leave exact usage.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cyrkit::format::cyrusdb::{Backend, KeyOrder};
use cyrkit::format::quota::{self, Resource};
use cyrkit::format::{header, index, twoskip};
use serde_json::Value;
use support::cli::{self, Run};
use support::cyrus::{
    chown_cyrus, crlf, quote, require_cyrus, run_cyrus_tool, CyrusInstance, CyrusOptions,
};
use support::spool::set_pointer;

fn cyrkit(conf: &Path, args: &[&str]) -> Run {
    cli::run(&["quota"], Some(conf), args, &[])
}

/// A private copy of a fixture, owned by cyrus so Cyrus's tools can work on it.
struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Store {
    fn new(fixture: &str) -> Store {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-quota-");
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        chown_cyrus(&root).expect("chown");
        Store { _tmp: tmp, root }
    }

    fn conf(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Runs a Cyrus tool on this copy; returns (exit ok, stdout, stderr).
    fn cyrus(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        let out = run_cyrus_tool(&self.conf(), &self.root, tool, args).expect("run Cyrus tool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Cyrus's `quota -J` as JSON.
    fn cyrus_quota_json(&self) -> Value {
        let (ok, out, err) = self.cyrus("quota", &["-J"]);
        assert!(ok, "cyrus quota -J failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("quota -J output {out:?}: {e}"))
    }
}

/// Our fix messages: the stderr lines in Cyrus's wording.
fn change_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.contains(": quota root ") || l.contains(" usage was ") || l.ends_with(": removed")
        })
        .map(str::to_string)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn edit_legacy_quota(path: &Path, edit: impl FnOnce(&mut quota::QuotaRecord)) {
    let mut q = quota::parse_legacy_file(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut q);
    std::fs::write(path, quota::write_legacy_file(&q)).unwrap();
}

fn damage_legacy(s: &Store) {
    // Wrong numbers, on a user root and on a shared-folder root.
    edit_legacy_quota(&s.path("conf/quota/b/user.bob"), |q| {
        q.get_mut(Resource::Storage).used = 1;
        q.get_mut(Resource::Message).used = 500;
    });
    edit_legacy_quota(&s.path("conf/quota/f/shared.folder"), |q| {
        q.get_mut(Resource::NumFolders).used = 9;
    });
    // A deleted quota file of a nested root: its mailboxes go back to user.alice.
    std::fs::remove_file(s.path("conf/quota/a/user.alice.Sub")).unwrap();
    // A stale root nobody uses.
    std::fs::create_dir_all(s.path("conf/quota/z")).unwrap();
    std::fs::write(
        s.path("conf/quota/z/user.zed"),
        b"%(S (5 100) M (1) AS (0) NF (1) MODSEQ 2)\n",
    )
    .unwrap();
    // A mailbox with a wrong quota-root pointer.
    set_pointer(&s.path("spool/c/user/carol/Lists"), Some(b"user.bob"));
    chown_cyrus(&s.root).unwrap();
}

#[test]
fn legacy_damage_fixed_as_cyrus_fixes_it() {
    if !require_cyrus() {
        return;
    }
    let ours = Store::new("legacy");
    let theirs = Store::new("legacy");
    damage_legacy(&ours);
    damage_legacy(&theirs);

    let (ok, _, cyrus_err) = theirs.cyrus("quota", &["-f", "-q"]);
    assert!(ok, "cyrus quota -f: {cyrus_err}");
    let r = cyrkit(&ours.conf(), &["-f", "--remove-unused"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    assert_eq!(
        ours.cyrus_quota_json(),
        theirs.cyrus_quota_json(),
        "quota -J after cyrkit (left) and Cyrus (right) -f"
    );
    let cyrus_lines: Vec<String> = cyrus_err.lines().map(str::to_string).collect();
    assert!(!cyrus_lines.is_empty());
    assert_eq!(
        sorted(change_lines(&r.stderr)),
        sorted(cyrus_lines),
        "fix messages"
    );
    // Our report (not a terminal) is Cyrus's report.
    let (_, cyrus_report, _) = theirs.cyrus("quota", &[]);
    assert_eq!(r.stdout, cyrus_report);

    // Idempotent: a second -f (ours, then Cyrus's) changes nothing.
    let again = cyrkit(&ours.conf(), &["-f", "-q"]);
    assert_eq!(again.code, 0);
    assert!(change_lines(&again.stderr).is_empty(), "{}", again.stderr);
    let (ok, _, err) = ours.cyrus("quota", &["-f", "-q"]);
    assert!(
        ok && err.trim().is_empty(),
        "Cyrus finds more to fix: {err}"
    );
    // mbcheck agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(["mbcheck", "--json", "--no-progress", "-C"])
        .arg(ours.conf())
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let quota_findings: Vec<&Value> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "quota")
        .collect();
    assert!(quota_findings.is_empty(), "{quota_findings:?}");
}

/// A quotalegacy file that does not parse (cut short; overwritten with zeros): without -f
/// an error naming the file and the fix; `-f -n` reports the rebuild and writes nothing;
/// `-f` rebuilds each root with the limits that could still be read and usage recounted
/// from the mailboxes, so Cyrus reads every root again, with the fixture's usage.
#[test]
fn damaged_quotalegacy_records_are_rebuilt_by_minus_f() {
    if !require_cyrus() {
        return;
    }
    let s = Store::new("legacy");
    let want = s.cyrus_quota_json();
    let bob = s.path("conf/quota/b/user.bob");
    let folder = s.path("conf/quota/f/shared.folder");
    // Cut inside MESSAGE's limit: STORAGE's survives, MESSAGE's may be shortened: dropped.
    std::fs::write(&bob, b"%(S (6297 5000) M (13 10").unwrap();
    std::fs::write(&folder, [0u8; 40]).unwrap();
    let r = cyrkit(&s.conf(), &[]);
    assert_eq!(r.code, 3, "{}", r.describe());
    assert!(r.stderr.contains("user.bob") && r.stderr.contains("quota -f rebuilds it"));

    let before = snapshot(&s.root);
    let dry = cyrkit(&s.conf(), &["-f", "-n"]);
    assert_eq!(dry.code, 1, "{}", dry.describe());
    assert_eq!(snapshot(&s.root), before, "-f -n wrote");
    let rebuilt = |out: &str, root: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("{root}: quota record unreadable (")))
    };
    assert!(rebuilt(&dry.stderr, "user.bob") && rebuilt(&dry.stderr, "shared.folder"));

    let r = cyrkit(&s.conf(), &["-f", "--json"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let j = r.json();
    let changes = j["-changes"].as_array().unwrap();
    let bob_change = changes
        .iter()
        .find(|c| c["change"] == "rebuilt" && c["root"] == "user.bob")
        .unwrap();
    assert_eq!(bob_change["limits"], serde_json::json!({"STORAGE": 5000}));
    let folder_change = changes
        .iter()
        .find(|c| c["change"] == "rebuilt" && c["root"] == "shared.folder")
        .unwrap();
    assert_eq!(folder_change["limits"], serde_json::json!({}));
    // Cyrus reads both again: usage exactly as before the damage; limits as recovered.
    let got = s.cyrus_quota_json();
    for root in ["user.bob", "shared.folder"] {
        for res in [
            "STORAGE",
            "MESSAGE",
            "X-ANNOTATION-STORAGE",
            "X-NUM-FOLDERS",
        ] {
            assert_eq!(
                got[root][res]["used"], want[root][res]["used"],
                "{root} {res}"
            );
        }
    }
    assert_eq!(got["user.bob"]["STORAGE"]["limit"], 5000 * 1024);
    assert!(got["user.bob"]["MESSAGE"].get("limit").is_none());
    assert!(got["shared.folder"]["STORAGE"].get("limit").is_none());
    for root in ["user.alice", "user.alice.Sub", "user.carol"] {
        assert_eq!(got[root], want[root], "{root} untouched");
    }
    // Done: a second -f finds nothing, nor does Cyrus's.
    let again = cyrkit(&s.conf(), &["-f", "-n"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    let (ok, _, err) = s.cyrus("quota", &["-f", "-n"]);
    assert!(ok && err.trim().is_empty(), "Cyrus quota -f -n: {err}");
}

/// The same in a twoskip quotas.db: one value that does not parse is rebuilt in place.
#[test]
fn damaged_twoskip_quota_record_is_rebuilt_by_minus_f() {
    if !require_cyrus() {
        return;
    }
    let s = Store::new("uuid");
    let want = s.cyrus_quota_json();
    let path = s.path("conf/quotas.db");
    let mut pairs =
        cyrkit::spool::db::read_pairs(&std::fs::read(&path).unwrap(), Backend::Twoskip).unwrap();
    let v = &mut pairs
        .iter_mut()
        .find(|(k, _)| k.as_slice() == b"example.org!user.carol")
        .unwrap()
        .1;
    *v = b"%(S (1957 3000) M (3 10) AS (0) NF (2) MODSEQ x6)".to_vec();
    let opts = twoskip::FreshOptions {
        order: KeyOrder::Raw,
        ..Default::default()
    };
    std::fs::write(&path, twoskip::write_fresh(&pairs, &opts).unwrap()).unwrap();
    chown_cyrus(&s.root).unwrap();
    assert_eq!(cyrkit(&s.conf(), &[]).code, 3);
    let r = cyrkit(&s.conf(), &["-f"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(r.stderr.lines().any(|l| l
        == "example.org!user.carol: quota record unreadable (quota record: field MODSEQ: is not an unsigned decimal number); rebuilt, limits kept: MESSAGE 10, STORAGE 3000; usage recounted"), "{}", r.stderr);
    assert_eq!(
        s.cyrus_quota_json(),
        want,
        "every root as before the damage"
    );
    assert_eq!(cyrkit(&s.conf(), &["-f", "-n"]).code, 0);
}

/// A run killed between replacing a mailbox's cyrus.header (new pointer) and rewriting its
/// index header leaves the right pointer with a stale header CRC in the index; the next
/// `-f` finishes the job (`-n` reports it), so mbcheck and Cyrus's reconstruct are content.
#[test]
fn pointer_written_but_index_crc_stale_is_finished_by_the_next_run() {
    let s = Store::new("legacy");
    let dir = s.path("spool/b/user/bob");
    let hp = dir.join("cyrus.header");
    // Before: the pointer wrong, the index in step with the header.
    set_pointer(&dir, None);
    // The interrupted run replaced the header, and was killed before the index.
    let mut h = header::parse(&std::fs::read(&hp).unwrap()).unwrap();
    h.quotaroot = Some(b"user.bob".to_vec());
    std::fs::write(&hp, h.write().unwrap()).unwrap();
    let dry = cyrkit(&s.conf(), &["-f", "-n"]);
    assert_eq!(dry.code, 1, "{}", dry.describe());
    assert!(dry
        .stderr
        .lines()
        .any(|l| l == "user.bob: header file CRC mismatch, correcting"));
    let r = cyrkit(&s.conf(), &["-f"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let again = cyrkit(&s.conf(), &["-f", "-n"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    let ih = index::parse_header(&std::fs::read(s.path("spool/b/user/bob/cyrus.index")).unwrap())
        .unwrap();
    assert_eq!(
        ih.header_file_crc,
        header::header_file_crc(&std::fs::read(&hp).unwrap())
    );
}

#[test]
fn unused_root_is_kept_without_the_flag() {
    if !require_cyrus() {
        return;
    }
    let s = Store::new("legacy");
    damage_legacy(&s);
    let r = cyrkit(&s.conf(), &["-f", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("user.zed: used by no mailbox (kept"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("user.zed: STORAGE usage was 5, now 0"));
    let q =
        quota::parse_legacy_file(&std::fs::read(s.path("conf/quota/z/user.zed")).unwrap()).unwrap();
    assert_eq!(q.get(Resource::Storage).limit, Some(100), "limit kept");
    assert_eq!(q.get(Resource::Storage).used, 0);
}

/// Every file under `root` with its content hash, mode and mtime.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    use sha1::{Digest, Sha1};
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
    {
        let md = e.metadata().unwrap();
        if !md.is_file() {
            // Directory mtimes change when the lock directory is created.
            continue;
        }
        let content = if md.is_file() {
            format!("{:x}", Sha1::digest(std::fs::read(e.path()).unwrap()))
        } else {
            String::new()
        };
        // Lock files are created (empty) by taking locks, as every Cyrus tool does.
        if e.path().to_string_lossy().contains("/conf/lock/") {
            continue;
        }
        out.insert(
            e.path().to_path_buf(),
            format!(
                "{content} {:o} {}",
                md.mode(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000
            ),
        );
    }
    out
}

#[test]
fn dry_run_writes_nothing_and_reports_what_minus_f_does() {
    if !require_cyrus() {
        return;
    }
    let s = Store::new("legacy");
    damage_legacy(&s);
    let before = snapshot(&s.root);
    let dry = cyrkit(&s.conf(), &["-f", "-n", "--remove-unused"]);
    assert_eq!(dry.code, 1, "{}", dry.stderr);
    let after = snapshot(&s.root);
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .collect();
    assert!(
        changed.is_empty() && before.len() == after.len(),
        "-n changed {changed:?}"
    );
    let real = cyrkit(&s.conf(), &["-f", "--remove-unused", "-q"]);
    assert_eq!(real.code, 0);
    assert_eq!(change_lines(&dry.stderr), change_lines(&real.stderr));
    let clean = cyrkit(&s.conf(), &["-f", "-n"]);
    assert_eq!(clean.code, 0, "{}", clean.stderr);
}

fn damage_uuid(s: &Store) {
    let path = s.path("conf/quotas.db");
    let pairs =
        cyrkit::spool::db::read_pairs(&std::fs::read(&path).unwrap(), Backend::Twoskip).unwrap();
    assert!(pairs.len() >= 2, "fixture has quota roots");
    let mut out = Vec::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        let mut q = quota::parse_value(&v).unwrap();
        match i {
            0 => q.get_mut(Resource::Storage).used += 777,
            1 => q.get_mut(Resource::Message).used = 0,
            _ => {}
        }
        out.push((k, quota::write_value(&q)));
    }
    let opts = twoskip::FreshOptions {
        order: KeyOrder::Raw,
        ..Default::default()
    };
    std::fs::write(&path, twoskip::write_fresh(&out, &opts).unwrap()).unwrap();
    chown_cyrus(&s.root).unwrap();
}

#[test]
fn twoskip_virtual_domains_fixed_as_cyrus_fixes_it() {
    if !require_cyrus() {
        return;
    }
    let ours = Store::new("uuid");
    let theirs = Store::new("uuid");
    damage_uuid(&ours);
    damage_uuid(&theirs);
    let (ok, _, cyrus_err) = theirs.cyrus("quota", &["-f", "-q"]);
    assert!(ok, "cyrus quota -f: {cyrus_err}");
    let r = cyrkit(&ours.conf(), &["-f", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ours.cyrus_quota_json(), theirs.cyrus_quota_json());
    assert_eq!(
        sorted(change_lines(&r.stderr)),
        sorted(cyrus_err.lines().map(str::to_string).collect()),
    );
    let again = cyrkit(&ours.conf(), &["-f", "-n"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    // Our --json has Cyrus's -J shape.
    let j = cyrkit(&ours.conf(), &["--json"]);
    let mine: Value = serde_json::from_str(&j.stdout).unwrap();
    let cyrus = ours.cyrus_quota_json();
    for (root, res) in cyrus.as_object().unwrap() {
        for (name, v) in res.as_object().unwrap() {
            assert_eq!(mine[root][name]["used"], v["used"], "{root} {name}");
            assert_eq!(
                mine[root][name].get("limit"),
                v.get("limit"),
                "{root} {name}"
            );
        }
    }
}

#[test]
fn deliveries_during_quota_f_all_succeed_and_usage_stays_exact() {
    if !require_cyrus() {
        return;
    }
    let cy = CyrusInstance::start(&CyrusOptions::default()).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for mb in ["user.dan", "user.dan.Sub", "user.eve", "shared.list"] {
        admin.create(mb).unwrap();
    }
    admin.setquota("user.dan", &[("STORAGE", 100000)]).unwrap();
    admin.setquota("user.eve", &[("MESSAGE", 100000)]).unwrap();
    admin.logout().unwrap();
    let conf = cy.conf_path();
    let lmtp_port_client = cy.lmtp().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let deliverer = std::thread::spawn(move || {
        let mut lmtp = lmtp_port_client;
        let mut n = 0u32;
        let mut failures = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) || n < 20 {
            let msg = crlf(
                format!(
                    "From: a@example.org\nSubject: m{n}\nMessage-ID: <m{n}@x>\n\n{}\n",
                    "x".repeat((n as usize * 37) % 900)
                )
                .as_bytes(),
            );
            let replies = lmtp
                .deliver("a@example.org", &["dan", "eve", "dan+Sub"], &msg)
                .unwrap();
            failures.extend(replies.into_iter().filter(|r| r.code != 250));
            n += 1;
        }
        (n, failures)
    });
    for _ in 0..4 {
        let r = cyrkit(&conf, &["-f", "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, failures) = deliverer.join().unwrap();
    assert!(failures.is_empty(), "failed deliveries: {failures:?}");
    assert!(n >= 20);
    let check = cyrkit(&conf, &["-f", "-n"]);
    assert_eq!(check.code, 0, "usage drifted: {}", check.stderr);
    assert!(change_lines(&check.stderr).is_empty(), "{}", check.stderr);
    // Cyrus agrees: its -f finds nothing to change, and reports the same.
    let out = cy.run_tool("quota", &["-f", "-q"]).unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "Cyrus quota -f changed: {err}");
    let cyrus_report = cy.run_tool("quota", &[]).unwrap();
    let ours = cyrkit(&conf, &[]);
    assert_eq!(ours.stdout, String::from_utf8_lossy(&cyrus_report.stdout));
}

/// Two copies of `fixture` with the same damage; Cyrus's `quota -f` fixed the first, ours
/// (with `--remove-unused`, which Cyrus always does) the second.
fn fixed_by_each(fixture: &str, damage: fn(&Store)) -> (Store, Store) {
    let theirs = Store::new(fixture);
    let ours = Store::new(fixture);
    damage(&theirs);
    damage(&ours);
    let (ok, _, err) = theirs.cyrus("quota", &["-f", "-q"]);
    assert!(ok, "cyrus quota -f: {err}");
    let r = cyrkit(&ours.conf(), &["-f", "-q", "--remove-unused"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    (theirs, ours)
}

/// The user id owning an admin-namespace mailbox name (`user.bob.Sub`, `user/alice@dom`).
fn owner_of(name: &str) -> Option<String> {
    let rest = name.strip_prefix("user.").or(name.strip_prefix("user/"))?;
    let (local_and_boxes, domain) = match rest.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (rest, None),
    };
    let sep = if name.starts_with("user.") { '.' } else { '/' };
    let local = local_and_boxes.split(sep).next()?;
    Some(match domain {
        Some(d) => format!("{local}@{d}"),
        None => local.to_string(),
    })
}

/// Starts Cyrus on a copy of `store` and asks GETQUOTAROOT for every mailbox: as the admin
/// for every mailbox its LIST shows, and as each owner for every mailbox the owner's LIST
/// shows. Returns the untagged answers keyed by "who mailbox".
fn getquotaroot_answers(store: &Store) -> BTreeMap<String, Vec<String>> {
    let cy = CyrusInstance::from_spool_copy(&store.root).expect("start Cyrus on the copy");
    let mut out = BTreeMap::new();
    let mut ask = |who: &str, client: &mut support::cyrus::ImapClient| {
        let names = client.list("", "*").unwrap();
        assert!(!names.is_empty(), "{who} sees no mailbox");
        for n in names {
            // Not `getquotaroot`: a NO (a pointer to a missing root) is an answer too.
            let r = client
                .command(&format!("GETQUOTAROOT {}", quote(&n)))
                .unwrap();
            let mut lines: Vec<String> = r
                .untagged
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            if !r.is_ok() {
                lines.push(format!("{} {}", r.status, r.text));
            }
            out.insert(format!("{who} {n}"), lines);
        }
    };
    let mut admin = cy.imap_admin().unwrap();
    let names = admin.list("", "*").unwrap();
    ask("cyrus", &mut admin);
    admin.logout().unwrap();
    let owners: BTreeSet<String> = names.iter().filter_map(|n| owner_of(n)).collect();
    assert!(!owners.is_empty(), "no user mailboxes in {names:?}");
    for user in owners {
        let mut c = cy.imap_login(&user).unwrap();
        ask(&user, &mut c);
        c.logout().unwrap();
    }
    out
}

/// The GETQUOTAROOT answer for `key` must name `root` with exactly these usage numbers.
fn assert_quota_line(answers: &BTreeMap<String, Vec<String>>, key: &str, want: &str) {
    let lines = answers
        .get(key)
        .unwrap_or_else(|| panic!("no GETQUOTAROOT answer for {key}: {answers:#?}"));
    assert!(
        lines.iter().any(|l| l == want),
        "{key}: want {want:?} in {lines:?}"
    );
}

/// Damages `fixture` twice, fixes one copy with Cyrus's `quota -f` and one with ours, and
/// asserts that Cyrus answers GETQUOTAROOT identically on both, and differently on an
/// unrepaired copy (so the comparison has teeth). Returns the answers.
fn getquotaroot_same_after_either_fix(
    fixture: &str,
    damage: fn(&Store),
) -> BTreeMap<String, Vec<String>> {
    let (theirs, ours) = fixed_by_each(fixture, damage);
    let cyrus = getquotaroot_answers(&theirs);
    let mine = getquotaroot_answers(&ours);
    assert_eq!(
        mine, cyrus,
        "{fixture}: GETQUOTAROOT after cyrkit (left) and Cyrus (right) -f"
    );
    let damaged = Store::new(fixture);
    damage(&damaged);
    assert_ne!(
        getquotaroot_answers(&damaged),
        cyrus,
        "{fixture} unrepaired"
    );
    mine
}

#[test]
fn legacy_getquotaroot_same_after_either_fix() {
    if !require_cyrus() {
        return;
    }
    let mine = getquotaroot_same_after_either_fix("legacy", damage_legacy);
    // The answers carry the repaired numbers (bob's damaged MESSAGE usage was 500) and the
    // repaired pointer (carol's Lists had been pointed at user.bob; an owner sees their own
    // root as INBOX).
    assert_quota_line(
        &mine,
        "cyrus user.bob",
        "* QUOTA user.bob (STORAGE 6 5000 MESSAGE 13 100)",
    );
    assert_quota_line(&mine, "bob INBOX", "* QUOTAROOT INBOX INBOX");
    assert_quota_line(&mine, "carol INBOX.Lists", "* QUOTAROOT INBOX.Lists INBOX");
}

#[test]
fn uuid_getquotaroot_same_after_either_fix() {
    if !require_cyrus() {
        return;
    }
    let mine = getquotaroot_same_after_either_fix("uuid", damage_uuid);
    let owners: BTreeSet<&str> = mine.keys().filter_map(|k| k.split(' ').next()).collect();
    assert!(
        owners.contains("alice@example.com") && owners.contains("dave"),
        "users in a virtual domain and in the default domain asked: {owners:?}"
    );
    assert!(
        mine.values().flatten().any(|l| l.starts_with("* QUOTA ")),
        "{mine:#?}"
    );
}

/// `quota -d DOMAIN`, `quota -u USER...` and prefixes: our report is Cyrus's, byte for byte,
/// on the same spool, and selects the roots listed.
#[test]
fn domain_and_user_selection_report_as_cyrus() {
    if !require_cyrus() {
        return;
    }
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("uuid", &["-d", "example.com"], &["user/alice@example.com"]),
        ("uuid", &["-d", "example.org"], &["user/carol@example.org"]),
        // The default domain's users are stored without a domain.
        ("uuid", &["-d", "example.net"], &[]),
        (
            "uuid",
            &["-u", "alice@example.com"],
            &["user/alice@example.com"],
        ),
        ("uuid", &["-u", "john.doe"], &["user/john.doe"]),
        (
            "uuid",
            &["-u", "carol@example.org", "dave"],
            &["user/carol@example.org", "user/dave"],
        ),
        // -d prefixes the domain to prefixes, not to user ids.
        (
            "uuid",
            &["-d", "example.com", "user/al"],
            &["user/alice@example.com"],
        ),
        ("uuid", &["-d", "example.com", "-u", "alice"], &[]),
        ("uuid", &["-u", "nobody"], &[]),
        (
            "legacy",
            &["-u", "alice"],
            &["user.alice", "user.alice.Sub"],
        ),
        (
            "legacy",
            &["-u", "bob", "carol"],
            &["user.bob", "user.carol"],
        ),
        // -u takes whole user ids.
        ("legacy", &["-u", "al"], &[]),
        ("legacy", &["-u", "alice.Sub"], &[]),
        ("legacy", &["user.al"], &["user.alice", "user.alice.Sub"]),
        ("legacy", &["-d", "example.com"], &[]),
    ];
    let stores: BTreeMap<&str, Store> = [
        ("uuid", Store::new("uuid")),
        ("legacy", Store::new("legacy")),
    ]
    .into_iter()
    .collect();
    for (fixture, args, roots) in cases {
        let s = &stores[fixture];
        let (ok, cyrus_out, cyrus_err) = s.cyrus("quota", args);
        assert!(ok, "cyrus quota {args:?}: {cyrus_err}");
        let r = cyrkit(&s.conf(), args);
        assert_eq!(r.code, 0, "{fixture} {args:?}: {}", r.stderr);
        assert_eq!(r.stdout, cyrus_out, "{fixture} quota {args:?}");
        let got: BTreeSet<&str> = r
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        let want: BTreeSet<&str> = roots.iter().copied().collect();
        assert_eq!(got, want, "{fixture} quota {args:?} selects");
        // -J agrees too.
        let mut jargs = vec!["-J"];
        jargs.extend_from_slice(args);
        let (ok, cyrus_json, err) = s.cyrus("quota", &jargs);
        assert!(ok, "{err}");
        let mine: Value = serde_json::from_str(&cyrkit(&s.conf(), &jargs).stdout).unwrap();
        let cyrus: Value = serde_json::from_str(&cyrus_json).unwrap();
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(keys(&mine), keys(&cyrus), "{fixture} quota -J {args:?}");
    }
}
