//! Crash consistency of `reconstruct -m` and `quota -f`, end to end: the real binary on
//! damaged copies of the real-Cyrus fixtures, killed at every durable step
//! (`CYRKIT_CRASH_AT=N`, which aborts at the N-th write, fsync, rename or link; see
//! src/spool/atomic.rs `crash_point`) and with SIGKILL at random instants of a run. After
//! every kill:
//! - every message file still exists with the same bytes;
//! - Cyrus's own tools read the store and find nothing cyrkit broke (`ctl_mboxlist -d`,
//!   `quota`, `reconstruct -n`, on every deterministic kill and a sample of the random ones);
//! - a rerun exits 0 with the result of an uninterrupted run, and `mbcheck` is clean.
//!
//! Run with `--nocapture` to see the figures each test prints.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cyrkit::format::cyrusdb::{self, Backend};
use cyrkit::format::mboxlist::{MboxEntry, MboxKey};
use cyrkit::format::{dlist, flat, header, quota, skiplist, twoskip};
use support::cli::{self, Run};
use support::cyrus::{chown_cyrus, require_cyrus, run_cyrus_tool};
use support::spool::set_pointer;

/// Kill points each test must reach (deterministic and random together), per command.
const MIN_KILLS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Spools

struct Spool {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Spool {
    /// A copy of `fixture` damaged by `prepare`, owned by cyrus (Cyrus's tools run on it).
    fn new(fixture: &str, prepare: fn(&Spool)) -> Spool {
        let (tmp, root) = cli::fixture_copy(fixture, "cyrkit-crash-");
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let s = Spool { _tmp: tmp, root };
        prepare(&s);
        chown_cyrus(&s.root).expect("chown");
        s
    }

    fn conf(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn run(&self, words: &[&str], env: &[(&str, &str)]) -> Run {
        let (cmd, args) = words.split_at(words.len().min(1));
        cli::run(cmd, Some(&self.conf()), args, env)
    }

    /// Runs `cyrkit WORDS` and kills it with SIGKILL after `after`; whether it was still
    /// running then.
    fn run_killed(&self, words: &[&str], after: Duration) -> bool {
        let (cmd, args) = words.split_at(words.len().min(1));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
            .args(cmd)
            .arg("-C")
            .arg(self.conf())
            .arg("--no-progress")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cyrkit");
        std::thread::sleep(after);
        let running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        running
    }

    /// A Cyrus tool on this copy: (exit ok, stdout, stderr).
    fn cyrus(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        let out = run_cyrus_tool(&self.conf(), &self.root, tool, args).expect("run Cyrus tool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Cyrus's `reconstruct -n` report lines.
    fn cyrus_reconstruct_n(&self) -> Vec<String> {
        let (ok, out, err) = self.cyrus("reconstruct", &["-n"]);
        assert!(ok, "Cyrus reconstruct -n failed: {err}");
        out.lines().map(str::to_string).collect()
    }

    fn assert_mbcheck_clean(&self, what: &str) {
        let r = self.run(&["mbcheck"], &[]);
        assert_eq!(r.code, 0, "{what}: mbcheck\n{}", r.describe());
    }

    /// Every file below the copy, lock files aside, by path relative to it.
    fn files(&self, skip: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(&self.root) {
            let e = e.unwrap();
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e.path().strip_prefix(&self.root).unwrap();
            let rel = rel.to_string_lossy().into_owned();
            if rel.starts_with("conf/lock/") || rel.contains("/lock/") || skip(&rel) {
                continue;
            }
            out.insert(rel, std::fs::read(e.path()).unwrap());
        }
        out
    }

    /// Every message file (`<uid>.`) with its bytes.
    fn messages(&self) -> BTreeMap<String, Vec<u8>> {
        self.files(|rel| !is_message_file(rel))
    }

    /// Mailbox directories by the internal name their cyrus.header records.
    fn header_dirs(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(self.path("spool")) {
            let e = e.unwrap();
            if e.file_name() == "cyrus.header" {
                let h = header::parse(&std::fs::read(e.path()).unwrap()).unwrap();
                let name = String::from_utf8(h.name.unwrap()).unwrap();
                out.insert(name, e.path().parent().unwrap().to_path_buf());
            }
        }
        out
    }
}

fn is_message_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or_default();
    name.len() > 1
        && name.ends_with('.')
        && name[..name.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

/// The lines of a fixture's `expected/reconstruct-n.txt`: what Cyrus's `reconstruct -n`
/// prints on the intact store.
fn cyrus_clean_lines(fixture: &str) -> Vec<String> {
    std::fs::read_to_string(cli::fixture_src(fixture).join("expected/reconstruct-n.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Deterministic pseudo-random numbers (xorshift64*) for the kill instants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The campaign

/// Damages a fresh fixture copy.
type Prepare = fn(&Spool);
/// Checks a store (`true`: with Cyrus's tools too).
type Check = Box<dyn Fn(&Spool, bool)>;

/// One command on one damaged fixture, and what to check.
struct Case<'a> {
    fixture: &'static str,
    prepare: Prepare,
    words: &'a [&'a str],
    /// Checks a killed run's leftovers.
    crashed: Check,
    /// The result to compare: an uninterrupted run's, and every rerun's.
    result: fn(&Spool) -> String,
    /// Checks after a completed rerun.
    done: Check,
}

#[derive(Debug, Default)]
struct Figures {
    /// Durable steps of one uninterrupted run (each was crashed at).
    steps: usize,
    /// Random SIGKILLs that hit a running process.
    killed: usize,
    /// Of those, how many left the store changed (killed during its writes).
    killed_mid_write: usize,
    /// Kills after which Cyrus's tools were run.
    cyrus_checked: usize,
}

impl Case<'_> {
    /// Crash at every durable step, then SIGKILLs at random instants until `kills` kills
    /// in all. Cyrus's tools check every `cyrus_every`-th kill.
    fn run(&self, kills: usize, cyrus_every: usize, rng: &mut Rng) -> Figures {
        let mut fig = Figures::default();
        // An uninterrupted run: the result every rerun must reach, and its duration.
        let reference = Spool::new(self.fixture, self.prepare);
        let before = reference.messages();
        let start = Instant::now();
        let r = reference.run(self.words, &[]);
        let took = start.elapsed();
        assert_eq!(r.code, 0, "uninterrupted run\n{}", r.describe());
        assert_eq!(reference.messages(), before);
        // Before `done`: Cyrus's `quota -f -n` there rewrites every root (and its MODSEQ).
        let want = (self.result)(&reference);
        (self.done)(&reference, true);

        let after_kill = |s: &Spool, prepared: &BTreeMap<String, Vec<u8>>, what: &str, cyrus| {
            assert_eq!(&s.messages(), prepared, "{what}: a message file changed");
            (self.crashed)(s, cyrus);
            let again = s.run(self.words, &[]);
            assert_eq!(again.code, 0, "{what}: rerun\n{}", again.describe());
            assert_eq!(
                &s.messages(),
                prepared,
                "{what}: rerun changed a message file"
            );
            assert_eq!((self.result)(s), want, "{what}: rerun's result");
            (self.done)(s, cyrus);
        };
        // Every durable step.
        for k in 1.. {
            let s = Spool::new(self.fixture, self.prepare);
            let prepared = s.messages();
            let r = s.run(self.words, &[("CYRKIT_CRASH_AT", &k.to_string())]);
            if r.code != -1 && r.code != 134 {
                assert_eq!(r.code, 0, "{}", r.describe());
                fig.steps = k - 1;
                break;
            }
            let cyrus = k % cyrus_every == 1 % cyrus_every;
            fig.cyrus_checked += usize::from(cyrus);
            after_kill(&s, &prepared, &format!("crash at step {k}"), cyrus);
            assert!(k < 500, "runaway");
        }
        // Random instants over the run's duration.
        let mut span = took.as_micros() as u64 * 11 / 10;
        for i in 0.. {
            if fig.steps + fig.killed >= kills {
                break;
            }
            assert!(i < kills * 10, "the kills keep missing the run: {fig:?}");
            let s = Spool::new(self.fixture, self.prepare);
            let prepared = s.files(|_| false);
            let msgs = s.messages();
            let after = Duration::from_micros(rng.below(span));
            if !s.run_killed(self.words, after) {
                // The run finished before the kill: on a loaded machine the first timing
                // can be far longer than later runs, so aim earlier.
                span = (span * 3 / 4).max(1_000);
                continue;
            }
            fig.killed += 1;
            if s.files(|rel| rel.ends_with(".NEW")) != prepared {
                fig.killed_mid_write += 1;
            }
            let cyrus = fig.killed % cyrus_every == 0;
            fig.cyrus_checked += usize::from(cyrus);
            after_kill(&s, &msgs, &format!("SIGKILL after {after:?}"), cyrus);
        }
        fig
    }
}

/// Runs cases until `MIN_KILLS` kills are reached, and prints the figures.
fn campaign(command: &str, cases: &[Case<'_>], cyrus_every: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut total = 0;
    for c in cases {
        let f = c.run(MIN_KILLS.div_ceil(cases.len()), cyrus_every, &mut rng);
        eprintln!(
            "{command} on {}: {} durable steps crashed at, {} random SIGKILLs hit a running process ({} during its writes); Cyrus checked after {} kills",
            c.fixture, f.steps, f.killed, f.killed_mid_write, f.cyrus_checked
        );
        assert!(f.steps >= 3, "too few durable steps: {f:?}");
        total += f.steps + f.killed;
    }
    eprintln!(
        "{command}: {total} kill points in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(total >= MIN_KILLS, "{command}: only {total} kill points");
}

// ---------------------------------------------------------------------------------------------
// reconstruct -m

fn db_path(s: &Spool) -> PathBuf {
    s.path("conf/mailboxes.db")
}

fn write_db(path: &Path, backend: Backend, pairs: &[(Vec<u8>, Vec<u8>)]) {
    let order = backend.default_order();
    let bytes = match backend {
        Backend::Twoskip => twoskip::write_fresh(
            pairs,
            &twoskip::FreshOptions {
                order,
                ..Default::default()
            },
        )
        .unwrap(),
        Backend::Skiplist => skiplist::write_fresh(
            pairs,
            &skiplist::FreshOptions {
                order,
                seed: 1,
                last_recovery: 0,
            },
        )
        .unwrap(),
        Backend::Flat => flat::write_fresh(pairs).unwrap(),
    };
    std::fs::write(path, bytes).unwrap();
}

/// Drops the `N` and `I` records of mailboxes (dbnames: `.` written as `\x1f`).
fn drop_entries(s: &Spool, dbnames: &[&[u8]]) {
    let path = db_path(s);
    let bytes = std::fs::read(&path).unwrap();
    let backend = cyrusdb::detect(&bytes).unwrap();
    let pairs = cyrkit::spool::db::read_pairs(&bytes, backend).unwrap();
    let mut ids = BTreeSet::new();
    for (k, v) in &pairs {
        if let Ok(MboxKey::Name(n)) = MboxKey::decode(k) {
            if dbnames.contains(&n.as_slice()) {
                let e = MboxEntry::from_v36_dlist(&dlist::parse(v).unwrap()).unwrap();
                ids.insert(e.uniqueid.unwrap());
            }
        }
    }
    assert_eq!(ids.len(), dbnames.len(), "entries to drop");
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(k, _)| match MboxKey::decode(k) {
            Ok(MboxKey::Name(n)) => !dbnames.contains(&n.as_slice()),
            Ok(MboxKey::Id(id)) => !ids.contains(&id),
            _ => true,
        })
        .collect();
    write_db(&path, backend, &kept);
}

/// The database's entries as text, `M` (mtime: a copy's header mtime) left out.
fn db_entries(s: &Spool) -> String {
    let bytes = std::fs::read(db_path(s)).expect("mailboxes.db");
    let backend = cyrusdb::detect(&bytes).unwrap();
    let mut out = String::new();
    for (k, v) in cyrkit::spool::db::read_pairs(&bytes, backend).unwrap() {
        let mut line = String::from_utf8_lossy(&k).into_owned();
        match MboxEntry::from_v36_dlist(&dlist::parse(&v).unwrap()) {
            Ok(mut e) => {
                e.mtime = None;
                line.push_str(&format!(" {e:?}"));
            }
            Err(_) => line.push_str(&format!(" {}", String::from_utf8_lossy(&v))),
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn recm_drop_legacy(s: &Spool) {
    drop_entries(
        s,
        &[
            b"user\x1falice\x1fSent",
            b"user\x1fbob\x1fArchive",
            b"shared",
        ],
    );
}

fn recm_drop_uuid(s: &Spool) {
    drop_entries(
        s,
        &[
            b"user\x1fdave\x1fSent",
            b"example.org\x1duser\x1fcarol\x1fWork",
        ],
    );
}

fn recm_lost_db(s: &Spool) {
    std::fs::remove_file(db_path(s)).unwrap();
}

/// `reconstruct -m` killed at every step of its database write, and at random instants, on
/// three stores: legacy with entries dropped from its twoskip database, uuid with entries
/// dropped from its skiplist database, and legacy with the database lost altogether.
/// Between kill and rerun the database is the old one (byte for byte) or the rebuilt one,
/// never absent when it existed, and Cyrus reads it.
#[test]
fn reconstruct_m_killed_anywhere_loses_nothing() {
    if !require_cyrus() {
        return;
    }
    let words = ["reconstruct", "-m"];
    let variants: [(&'static str, Prepare); 3] = [
        ("legacy", recm_drop_legacy),
        ("uuid", recm_drop_uuid),
        ("legacy", recm_lost_db),
    ];
    let mut cases = Vec::new();
    for (fixture, prepare) in variants {
        let prepared = Spool::new(fixture, prepare);
        let old_db = std::fs::read(db_path(&prepared)).ok();
        let others = prepared.files(|rel| rel.starts_with("conf/mailboxes.db"));
        let clean = cyrus_clean_lines(fixture);
        let clean2 = clean.clone();
        let crashed = move |s: &Spool, cyrus: bool| {
            assert_eq!(
                s.files(|rel| rel.starts_with("conf/mailboxes.db")),
                others,
                "reconstruct -m changed a file other than mailboxes.db"
            );
            let now = std::fs::read(db_path(s)).ok();
            if old_db.is_some() {
                assert!(now.is_some(), "mailboxes.db missing after a kill");
            }
            let Some(now) = now else { return };
            if Some(&now) != old_db.as_ref() {
                // Not the old file: then the whole new one, which decodes.
                db_entries(s);
            }
            if cyrus {
                let (ok, _, err) = s.cyrus("ctl_mboxlist", &["-d"]);
                assert!(ok, "ctl_mboxlist -d: {err}");
                let lines = s.cyrus_reconstruct_n();
                let extra: Vec<_> = lines.iter().filter(|l| !clean.contains(l)).collect();
                assert!(extra.is_empty(), "Cyrus's reconstruct -n: {extra:?}");
            }
        };
        let done = move |s: &Spool, cyrus: bool| {
            s.assert_mbcheck_clean("after reconstruct -m");
            if cyrus {
                assert_eq!(s.cyrus_reconstruct_n(), clean2, "Cyrus's reconstruct -n");
            }
        };
        cases.push(Case {
            fixture,
            prepare,
            words: &words,
            crashed: Box::new(crashed),
            result: db_entries,
            done: Box::new(done),
        });
    }
    campaign("reconstruct -m", &cases, 6);
}

// ---------------------------------------------------------------------------------------------
// quota -f

fn wrong_usage(q: &mut quota::QuotaRecord, n: u64) {
    q.get_mut(quota::Resource::Storage).used += 1000 * n + 1;
    q.get_mut(quota::Resource::Message).used = n;
}

/// quotalegacy: every root's usage wrong; pointers missing, wrong, or to a non-root.
fn quota_damage_legacy(s: &Spool) {
    for (n, rel) in [
        "conf/quota/f/shared.folder",
        "conf/quota/a/user.alice",
        "conf/quota/a/user.alice.Sub",
        "conf/quota/b/user.bob",
        "conf/quota/c/user.carol",
    ]
    .iter()
    .enumerate()
    {
        let path = s.path(rel);
        let mut q = quota::parse_legacy_file(&std::fs::read(&path).unwrap()).unwrap();
        wrong_usage(&mut q, n as u64);
        std::fs::write(&path, quota::write_legacy_file(&q)).unwrap();
    }
    let dirs = s.header_dirs();
    set_pointer(&dirs["user.alice.Sent"], None);
    set_pointer(&dirs["user.alice.Sub.Deep"], Some(b"user.alice"));
    set_pointer(&dirs["user.bob.Archive"], None);
    set_pointer(&dirs["user.carol"], Some(b"user.nobody"));
    set_pointer(&dirs["shared.folder"], None);
}

/// twoskip quotas.db: every root's usage wrong; pointers missing or wrong.
fn quota_damage_uuid(s: &Spool) {
    let path = s.path("conf/quotas.db");
    let pairs =
        cyrkit::spool::db::read_pairs(&std::fs::read(&path).unwrap(), Backend::Twoskip).unwrap();
    let pairs: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(n, (k, v))| {
            let mut q = quota::parse_value(&v).unwrap();
            wrong_usage(&mut q, n as u64);
            (k, quota::write_value(&q))
        })
        .collect();
    write_db(&path, Backend::Twoskip, &pairs);
    let dirs = s.header_dirs();
    set_pointer(&dirs["user.dave.Sent"], None);
    set_pointer(&dirs["example.org!user.carol.Work"], None);
    set_pointer(&dirs["example.com!user.alice"], Some(b"user.dave"));
}

/// What `quota -f` decides: every root's record as stored and every mailbox's pointer
/// (read in-process: the rerun is checked by mbcheck and, sampled, by Cyrus).
fn quota_result(s: &Spool) -> String {
    let config = cyrkit::spool::config::Config::load(&s.conf()).unwrap();
    let layout = cyrkit::spool::paths::Layout::from_config(&config).unwrap();
    let roots =
        cyrkit::spool::quota::load_roots(&config, &layout, Duration::from_secs(10)).unwrap();
    let mut out = String::new();
    for (root, stored) in roots {
        let q = stored.record.expect("a root Cyrus reads");
        out.push_str(&format!("{} {q:?}\n", String::from_utf8_lossy(&root)));
    }
    for (name, dir) in s.header_dirs() {
        let h = header::parse(&std::fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
        out.push_str(&format!("{name} -> {:?}\n", h.quotaroot));
    }
    out
}

/// `quota -f` killed at every durable step (each root's record, each pointer's header and
/// index) and at random instants, on a quotalegacy and a twoskip store with every root's
/// usage and several pointers wrong. Between kill and rerun, Cyrus reads every root and
/// every mailbox (a mailbox whose header was replaced just before the kill has a stale
/// header CRC in its index, which Cyrus opens with a warning, as after its own commit
/// interrupted there); the rerun finishes.
#[test]
fn quota_f_killed_anywhere_loses_nothing() {
    if !require_cyrus() {
        return;
    }
    let words = ["quota", "-f"];
    let crashed = |fixture: &'static str| {
        let clean = cyrus_clean_lines(fixture);
        move |s: &Spool, cyrus: bool| {
            if !cyrus {
                return;
            }
            let (ok, _, err) = s.cyrus("quota", &[]);
            assert!(ok && err.is_empty(), "Cyrus quota: {err}");
            for l in s.cyrus_reconstruct_n() {
                assert!(
                    clean.contains(&l) || l.ends_with(": header file CRC mismatch, correcting"),
                    "Cyrus's reconstruct -n: {l}"
                );
            }
        }
    };
    let done = |fixture: &'static str| {
        let clean = cyrus_clean_lines(fixture);
        move |s: &Spool, cyrus: bool| {
            s.assert_mbcheck_clean("after quota -f");
            if cyrus {
                assert_eq!(s.cyrus_reconstruct_n(), clean, "Cyrus's reconstruct -n");
                let (ok, _, err) = s.cyrus("quota", &["-f", "-n"]);
                assert!(ok && err.trim().is_empty(), "Cyrus quota -f -n: {err}");
            }
        }
    };
    let variants: [(&'static str, Prepare); 2] =
        [("legacy", quota_damage_legacy), ("uuid", quota_damage_uuid)];
    let cases: Vec<Case<'_>> = variants
        .into_iter()
        .map(|(fixture, prepare)| Case {
            fixture,
            prepare,
            words: &words,
            crashed: Box::new(crashed(fixture)),
            result: quota_result,
            done: Box::new(done(fixture)),
        })
        .collect();
    campaign("quota -f", &cases, 6);
}
