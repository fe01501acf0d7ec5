//! Corruption campaign: damaged input must never make cyrkit panic, hang, allocate without
//! bound or lose a message file.
//!
//! For each case: copy a real-Cyrus fixture (`fixtures/legacy` and `fixtures/uuid` in turn,
//! hard links re-made) to a fresh directory, apply 1–3 random damages (byte flips, truncation,
//! a zero-filled block, deletion, a duplicate copied over another file, two files swapped) to
//! randomly chosen `cyrus.index`, `cyrus.cache`, `cyrus.header`, `mailboxes.db`, quota and
//! message files, then run the commands of [`STEPS`] in order, each with a timeout and under an
//! address-space limit (so an allocation sized from a damaged length fails loudly instead of
//! swapping). Everything is derived from `(seed, case)` by a small PRNG, so any case can be
//! re-run on its own (`--case N --keep`).
//!
//! Checked for every command: no exit by signal, no timeout, no `panicked at` on stderr, an
//! exit code in {0, 1, 2, 3, 75}, a non-empty stderr when the code is 2 or 3, JSON on stdout
//! when `--json` was asked and the code is 0 or 1, and an unchanged tree after the read-only
//! ones. After all commands: every message file (`<digits>.`) that existed after the damage
//! still exists with the same bytes in the same directory — under its own name or, when
//! reconstruct gave a stray file a new UID, another `<uid>.` name (compared as a multiset of
//! content hashes per directory). A second `reconstruct -n` right after `reconstruct` should
//! find nothing to change; cases where it does are counted as "not idempotent" (not failures)
//! with what it said.
//!
//! Usage: `corruption_campaign --bin PATH [--seed S] [--count N] [--case K] [--keep]
//! [-j THREADS] [--timeout SECS] [--as-limit-mib MIB] [-v]`. Exit 0 when no case violated
//! anything, 1 otherwise. `tests/corruption.rs` includes this file and runs a small campaign.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two fixtures, used in turn (even cases legacy, odd cases uuid).
pub const FIXTURES: [&str; 2] = ["legacy", "uuid"];

/// Exit codes a command may end with (docs/cli.md): clean, problems, usage/config error,
/// something not processed, lock timeout.
pub const ALLOWED_CODES: [i32; 5] = [0, 1, 2, 3, 75];

/// Whether a step may change the tree.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    Writes,
}

/// One command run on every case: a label, the arguments after `cyrkit`, and its mode.
pub struct Step {
    pub label: &'static str,
    pub args: &'static [&'static str],
    pub mode: Mode,
}

/// The commands, in the order they run. The fourth is the idempotency probe.
pub const STEPS: [Step; 11] = [
    Step {
        label: "mbcheck",
        args: &["mbcheck"],
        mode: Mode::ReadOnly,
    },
    Step {
        label: "reconstruct -n",
        args: &["reconstruct", "-n"],
        mode: Mode::ReadOnly,
    },
    Step {
        label: "reconstruct",
        args: &["reconstruct"],
        mode: Mode::Writes,
    },
    Step {
        label: "reconstruct -n (again)",
        args: &["reconstruct", "-n", "--json"],
        mode: Mode::ReadOnly,
    },
    Step {
        label: "mbcheck (after)",
        args: &["mbcheck", "--json"],
        mode: Mode::ReadOnly,
    },
    Step {
        label: "quota",
        args: &["quota"],
        mode: Mode::ReadOnly,
    },
    Step {
        label: "quota -f",
        args: &["quota", "-f"],
        mode: Mode::Writes,
    },
    Step {
        label: "reconstruct -m -n",
        args: &["reconstruct", "-m", "-n"],
        mode: Mode::ReadOnly,
    },
    // Beyond the minimum: the database rebuilt for real, then the mailboxes again, so the
    // repairs that damaged databases need are exercised too (and must keep every message).
    Step {
        label: "reconstruct -m",
        args: &["reconstruct", "-m"],
        mode: Mode::Writes,
    },
    Step {
        label: "reconstruct (after -m)",
        args: &["reconstruct"],
        mode: Mode::Writes,
    },
    Step {
        label: "mbcheck (final)",
        args: &["mbcheck", "--json"],
        mode: Mode::ReadOnly,
    },
];
const IDEMPOTENCY_STEP: usize = 3;
const MBCHECK_AFTER_STEP: usize = 4;
const MBCHECK_FINAL_STEP: usize = 10;

// ---------------------------------------------------------------------------------------------
// Configuration and results

/// What to run.
#[derive(Clone)]
pub struct Config {
    /// The `cyrkit` binary under test.
    pub bin: PathBuf,
    /// The directory holding `legacy/` and `uuid/`.
    pub fixtures: PathBuf,
    pub seed: u64,
    /// Cases `0..count` (ignored when `only_case` is set).
    pub count: u64,
    pub only_case: Option<u64>,
    /// Keep each case's directory (printed) instead of removing it.
    pub keep: bool,
    pub threads: usize,
    pub timeout: Duration,
    /// RLIMIT_AS for every command, in bytes.
    pub as_limit: u64,
    pub verbose: bool,
}

impl Config {
    pub fn new(bin: PathBuf) -> Config {
        Config {
            bin,
            fixtures: Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
            seed: 1,
            count: 1000,
            only_case: None,
            keep: false,
            threads: 2,
            timeout: Duration::from_secs(20),
            as_limit: 2 << 30,
            verbose: false,
        }
    }
}

/// A violated guarantee, reproducible from `seed` and `case`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub case: u64,
    pub fixture: &'static str,
    pub damages: Vec<String>,
    pub what: String,
}

/// A case where `reconstruct -n` still found changes after `reconstruct`.
#[derive(Debug, Clone)]
pub struct NotIdempotent {
    pub case: u64,
    pub fixture: &'static str,
    pub damages: Vec<String>,
    pub lines: Vec<String>,
}

/// The campaign's figures.
#[derive(Default)]
pub struct Report {
    pub seed: u64,
    pub cases: u64,
    pub runs: u64,
    /// `damage kind / file kind` → count.
    pub damages: BTreeMap<String, u64>,
    /// `(step label, exit code)` → count.
    pub outcomes: BTreeMap<(usize, i32), u64>,
    /// Change kinds a second `reconstruct -n` still reported → count (all cases).
    pub leftover_changes: BTreeMap<String, u64>,
    /// Finding kinds mbcheck still reported after reconstruct → count of cases.
    pub mbcheck_after: BTreeMap<String, u64>,
    pub mbcheck_after_clean: u64,
    /// The same for the last mbcheck, after reconstruct -m and a second reconstruct.
    pub mbcheck_final: BTreeMap<String, u64>,
    pub mbcheck_final_clean: u64,
    /// The first few case numbers behind each of the two maps above (for investigation).
    pub case_examples: BTreeMap<String, Vec<u64>>,
    /// The error messages behind exit 2 and 3 (numbers and the case path masked) → count.
    pub error_messages: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    pub not_idempotent: Vec<NotIdempotent>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn merge(&mut self, c: CaseResult) {
        self.cases += 1;
        self.runs += c.codes.len() as u64;
        for d in &c.damage_kinds {
            *self.damages.entry(d.clone()).or_default() += 1;
        }
        for m in c.error_messages {
            *self.error_messages.entry(m).or_default() += 1;
        }
        for (i, code) in c.codes.iter().enumerate() {
            *self.outcomes.entry((i, *code)).or_default() += 1;
        }
        for k in c.leftover {
            self.note_example(format!("reconstruct -n again: {k}"), c.case);
            *self.leftover_changes.entry(k).or_default() += 1;
        }
        if c.mbcheck_after.is_empty() {
            self.mbcheck_after_clean += 1;
        }
        if c.mbcheck_final.is_empty() {
            self.mbcheck_final_clean += 1;
        }
        for k in c.mbcheck_final {
            self.note_example(format!("mbcheck final: {k}"), c.case);
            *self.mbcheck_final.entry(k).or_default() += 1;
        }
        for k in c.mbcheck_after {
            self.note_example(format!("mbcheck after: {k}"), c.case);
            *self.mbcheck_after.entry(k).or_default() += 1;
        }
        self.failures.extend(c.failures);
        self.not_idempotent.extend(c.not_idempotent);
    }

    fn note_example(&mut self, key: String, case: u64) {
        let v = self.case_examples.entry(key).or_default();
        if v.len() < 8 {
            v.push(case);
            v.sort_unstable();
        }
    }

    /// The summary printed at the end of a campaign.
    pub fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "corruption campaign: seed {}, {} cases, {} command runs, {:.1} s",
            self.seed,
            self.cases,
            self.runs,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(out, "\ndamages (damage / file kind):")?;
        let total: u64 = self.damages.values().sum();
        for (k, n) in &self.damages {
            writeln!(out, "  {n:6}  {k}")?;
        }
        writeln!(out, "  {total:6}  total")?;
        writeln!(
            out,
            "\noutcomes (command: exit code x count; -1 = killed/signal):"
        )?;
        for (i, step) in STEPS.iter().enumerate() {
            let codes: Vec<String> = self
                .outcomes
                .iter()
                .filter(|((s, _), _)| *s == i)
                .map(|((_, c), n)| format!("{c} x{n}"))
                .collect();
            writeln!(out, "  {:24} {}", step.label, codes.join(", "))?;
        }
        writeln!(
            out,
            "\nmbcheck after reconstruct: clean in {} of {} cases; cases per remaining finding kind:",
            self.mbcheck_after_clean, self.cases
        )?;
        for (k, n) in &self.mbcheck_after {
            writeln!(out, "  {n:6}  {k}")?;
        }
        writeln!(
            out,
            "\nmbcheck at the end (after reconstruct -m and reconstruct): clean in {} of {} cases:",
            self.mbcheck_final_clean, self.cases
        )?;
        for (k, n) in &self.mbcheck_final {
            writeln!(out, "  {n:6}  {k}")?;
        }
        writeln!(
            out,
            "\nsecond reconstruct -n, change kinds still reported (all cases):"
        )?;
        for (k, n) in &self.leftover_changes {
            writeln!(out, "  {n:6}  {k}")?;
        }
        writeln!(
            out,
            "\nmessages of exit 2/3 (last stderr line; N = a number):"
        )?;
        let mut msgs: Vec<_> = self.error_messages.iter().collect();
        msgs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (m, n) in msgs.iter().take(40) {
            writeln!(out, "  {n:6}  {m}")?;
        }
        if msgs.len() > 40 {
            writeln!(out, "  ... and {} more distinct messages", msgs.len() - 40)?;
        }
        writeln!(out, "\nexample cases:")?;
        for (k, v) in &self.case_examples {
            let v: Vec<String> = v.iter().map(u64::to_string).collect();
            writeln!(out, "  {k}: {}", v.join(" "))?;
        }
        writeln!(
            out,
            "\nnot idempotent (second reconstruct -n would still modify): {}",
            self.not_idempotent.len()
        )?;
        for n in &self.not_idempotent {
            writeln!(
                out,
                "  case {} ({}): {}",
                n.case,
                n.fixture,
                n.damages.join("; ")
            )?;
            for l in n.lines.iter().take(6) {
                writeln!(out, "      {l}")?;
            }
        }
        writeln!(out, "\nfailures: {}", self.failures.len())?;
        for f in &self.failures {
            writeln!(
                out,
                "  seed {} case {} ({}): {}\n      damages: {}",
                f.seed,
                f.case,
                f.fixture,
                f.what,
                f.damages.join("; ")
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The PRNG: splitmix64, seeded per case so every case stands alone.

pub struct Rng(u64);

impl Rng {
    pub fn for_case(seed: u64, case: u64) -> Rng {
        let mut r = Rng(seed ^ case.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Files and damages

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileKind {
    Index,
    Cache,
    Header,
    MailboxesDb,
    Quota,
    Message,
}

const FILE_KINDS: [FileKind; 6] = [
    FileKind::Index,
    FileKind::Cache,
    FileKind::Header,
    FileKind::MailboxesDb,
    FileKind::Quota,
    FileKind::Message,
];

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Index => "cyrus.index",
            FileKind::Cache => "cyrus.cache",
            FileKind::Header => "cyrus.header",
            FileKind::MailboxesDb => "mailboxes.db",
            FileKind::Quota => "quota",
            FileKind::Message => "message",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DamageKind {
    ByteFlip,
    Truncate,
    ZeroBlock,
    Delete,
    Duplicate,
    Swap,
}

const DAMAGE_KINDS: [DamageKind; 6] = [
    DamageKind::ByteFlip,
    DamageKind::Truncate,
    DamageKind::ZeroBlock,
    DamageKind::Delete,
    DamageKind::Duplicate,
    DamageKind::Swap,
];

impl DamageKind {
    fn name(self) -> &'static str {
        match self {
            DamageKind::ByteFlip => "byte-flip",
            DamageKind::Truncate => "truncate",
            DamageKind::ZeroBlock => "zero-block",
            DamageKind::Delete => "delete",
            DamageKind::Duplicate => "duplicate",
            DamageKind::Swap => "swap",
        }
    }
}

/// Whether a file name is a message file's: `<digits>.`.
pub fn is_message_name(name: &str) -> bool {
    name.len() > 1
        && name.ends_with('.')
        && name[..name.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

/// The kind of a file (path relative to the fixture root), if damages may target it.
fn classify(rel: &Path) -> Option<FileKind> {
    let name = rel.file_name()?.to_str()?;
    let s = rel.to_str()?;
    match name {
        "cyrus.index" => Some(FileKind::Index),
        "cyrus.cache" => Some(FileKind::Cache),
        "cyrus.header" => Some(FileKind::Header),
        "mailboxes.db" if s == "conf/mailboxes.db" => Some(FileKind::MailboxesDb),
        "quotas.db" if s == "conf/quotas.db" => Some(FileKind::Quota),
        _ if s.starts_with("conf/quota/") => Some(FileKind::Quota),
        _ if s.starts_with("spool/") && is_message_name(name) => Some(FileKind::Message),
        _ => None,
    }
}

/// Every regular file below `root`, relative, sorted (so choices are deterministic).
fn walk(root: &Path) -> Vec<PathBuf> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => rec(root, &p, out),
                Ok(t) if t.is_file() => {
                    if let Ok(rel) = p.strip_prefix(root) {
                        out.push(rel.to_path_buf());
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    rec(root, root, &mut out);
    out.sort();
    out
}

fn targets(root: &Path) -> Vec<(PathBuf, FileKind)> {
    walk(root)
        .into_iter()
        .filter_map(|p| classify(&p).map(|k| (p, k)))
        .collect()
}

/// Applies one random damage; returns (`damage/kind` label, description), or None when the
/// chosen kind has no file left.
fn damage(root: &Path, rng: &mut Rng) -> io::Result<Option<(String, String)>> {
    let all = targets(root);
    let fkind = FILE_KINDS[rng.index(FILE_KINDS.len())];
    let dkind = DAMAGE_KINDS[rng.index(DAMAGE_KINDS.len())];
    let of_kind: Vec<&PathBuf> = all
        .iter()
        .filter(|(_, k)| *k == fkind)
        .map(|(p, _)| p)
        .collect();
    if of_kind.is_empty() {
        return Ok(None);
    }
    let rel = of_kind[rng.index(of_kind.len())].clone();
    let path = root.join(&rel);
    let label = format!("{} / {}", dkind.name(), fkind.name());
    let desc = match dkind {
        DamageKind::ByteFlip => {
            let mut data = fs::read(&path)?;
            if data.is_empty() {
                data.push(rng.next_u64() as u8);
                fs::write(&path, &data)?;
                format!("{}: empty file given one byte", rel.display())
            } else {
                let flips = 1 + rng.below(8);
                let mut offs = Vec::new();
                for _ in 0..flips {
                    let off = rng.index(data.len());
                    data[off] ^= 1 << rng.below(8);
                    offs.push(off.to_string());
                }
                fs::write(&path, &data)?;
                format!("{}: bits flipped at {}", rel.display(), offs.join(","))
            }
        }
        DamageKind::Truncate => {
            let len = fs::metadata(&path)?.len();
            let to = rng.below(len);
            fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(to)?;
            format!("{}: truncated {} -> {}", rel.display(), len, to)
        }
        DamageKind::ZeroBlock => {
            let mut data = fs::read(&path)?;
            if data.is_empty() {
                return Ok(Some((
                    label,
                    format!("{}: empty, nothing to zero", rel.display()),
                )));
            }
            let n = 1 + rng.index(data.len().min(4096));
            let off = rng.index(data.len() - n + 1);
            data[off..off + n].fill(0);
            fs::write(&path, &data)?;
            format!("{}: {} bytes zeroed at {}", rel.display(), n, off)
        }
        DamageKind::Delete => {
            fs::remove_file(&path)?;
            format!("{}: deleted", rel.display())
        }
        DamageKind::Duplicate => {
            let dest = duplicate_target(root, &rel, fkind, &all, rng);
            fs::copy(&path, root.join(&dest))?;
            format!("{} copied over {}", rel.display(), dest.display())
        }
        DamageKind::Swap => {
            let others: Vec<&PathBuf> = all
                .iter()
                .filter(|(p, k)| *p != rel && (rng.below(2) == 0 || *k == fkind))
                .map(|(p, _)| p)
                .collect();
            if others.is_empty() {
                return Ok(Some((
                    label,
                    format!("{}: nothing to swap with", rel.display()),
                )));
            }
            let other = others[rng.index(others.len())].clone();
            let tmp = root.join(".swap-tmp");
            fs::rename(&path, &tmp)?;
            fs::rename(root.join(&other), &path)?;
            fs::rename(&tmp, root.join(&other))?;
            format!("{} swapped with {}", rel.display(), other.display())
        }
    };
    Ok(Some((label, desc)))
}

/// Where a duplicate goes: a message file to a `<uid>.` name (existing or not, below or above
/// the directory's highest) in its own or another message directory; any other file over
/// another file of its kind, or of any kind when it is the only one.
fn duplicate_target(
    root: &Path,
    rel: &Path,
    fkind: FileKind,
    all: &[(PathBuf, FileKind)],
    rng: &mut Rng,
) -> PathBuf {
    if fkind == FileKind::Message {
        let dirs: Vec<&Path> = all
            .iter()
            .filter(|(_, k)| *k == FileKind::Message)
            .filter_map(|(p, _)| p.parent())
            .collect();
        let own = rel.parent().unwrap_or(Path::new(""));
        let dir = if rng.below(3) == 0 {
            dirs[rng.index(dirs.len())]
        } else {
            own
        };
        let highest = walk(&root.join(dir))
            .iter()
            .filter_map(|p| {
                p.to_str()
                    .and_then(|s| s.strip_suffix('.'))
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0);
        let mut uid = 1 + rng.below(highest + 3);
        if dir.join(format!("{uid}.")) == rel {
            uid = highest + 1;
        }
        return dir.join(format!("{uid}."));
    }
    let same: Vec<&PathBuf> = all
        .iter()
        .filter(|(p, k)| *k == fkind && p != rel)
        .map(|(p, _)| p)
        .collect();
    let pool: Vec<&PathBuf> = if same.is_empty() {
        all.iter()
            .filter(|(p, _)| p != rel)
            .map(|(p, _)| p)
            .collect()
    } else {
        same
    };
    pool[rng.index(pool.len())].clone()
}

// ---------------------------------------------------------------------------------------------
// Copying a fixture, snapshots

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// Re-makes the hard links listed in `expected/hardlinks.txt` (git does not keep them), so
/// a damage to a single-instance message file hits every mailbox sharing it, as on a real
/// spool.
fn relink(root: &Path) -> io::Result<()> {
    let Ok(list) = fs::read_to_string(root.join("expected/hardlinks.txt")) else {
        return Ok(());
    };
    for line in list.lines() {
        let mut paths = line.split('\t').filter(|p| !p.is_empty());
        let Some(first) = paths.next() else { continue };
        for p in paths {
            let p = root.join(p);
            fs::remove_file(&p)?;
            fs::hard_link(root.join(first), &p)?;
        }
    }
    Ok(())
}

fn hash(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// Path → content hash of every file (lock files left out: taking a lock may create one).
fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, u64> {
    walk(root)
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            !s.starts_with("conf/lock/") && !s.ends_with(".lock") && !s.starts_with("conf/socket")
        })
        .map(|p| {
            let h = fs::read(root.join(&p)).map(|d| hash(&d)).unwrap_or(0);
            (p, h)
        })
        .collect()
}

/// Directory → content hash → number of message files with that content.
type MessageSnapshot = BTreeMap<PathBuf, HashMap<u64, Vec<String>>>;

fn message_snapshot(root: &Path) -> MessageSnapshot {
    let mut out: MessageSnapshot = BTreeMap::new();
    for p in walk(root) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !is_message_name(name) {
            continue;
        }
        let Ok(data) = fs::read(root.join(&p)) else {
            continue;
        };
        let dir = p.parent().unwrap_or(Path::new("")).to_path_buf();
        out.entry(dir)
            .or_default()
            .entry(hash(&data))
            .or_default()
            .push(name.to_string());
    }
    out
}

fn lost_messages(before: &MessageSnapshot, after: &MessageSnapshot) -> Vec<String> {
    let mut lost = Vec::new();
    for (dir, hashes) in before {
        for (h, names) in hashes {
            let now = after.get(dir).and_then(|m| m.get(h)).map_or(0, Vec::len);
            if now < names.len() {
                lost.push(format!(
                    "{}: content of {} ({} file(s)) now in {} file(s)",
                    dir.display(),
                    names.join(","),
                    names.len(),
                    now
                ));
            }
        }
    }
    lost
}

fn tree_diff(a: &BTreeMap<PathBuf, u64>, b: &BTreeMap<PathBuf, u64>) -> Vec<String> {
    let mut d = Vec::new();
    for (p, h) in a {
        match b.get(p) {
            None => d.push(format!("removed {}", p.display())),
            Some(h2) if h2 != h => d.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        d.push(format!("created {}", p.display()));
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Running a command

struct Outcome {
    /// Exit code; -1 when killed by a signal or the timeout.
    code: i32,
    signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

fn run_command(
    cfg: &Config,
    case_dir: &Path,
    conf: &Path,
    args: &[&str],
    n: usize,
) -> io::Result<Outcome> {
    let out_path = case_dir.join(format!("out.{n}"));
    let err_path = case_dir.join(format!("err.{n}"));
    let limit = cfg.as_limit;
    let mut cmd = Command::new(&cfg.bin);
    cmd.args(args)
        .arg("-C")
        .arg(conf)
        .arg("--no-progress")
        .current_dir(case_dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path)?)
        .stderr(fs::File::create(&err_path)?);
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > cfg.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Ok(Outcome {
        code: status.code().unwrap_or(-1),
        signal: status.signal(),
        timed_out,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// Violations of the per-command contract.
fn check_outcome(step: &Step, o: &Outcome) -> Vec<String> {
    let mut v = Vec::new();
    let tail = || {
        o.stderr
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if o.timed_out {
        v.push(format!("{}: timed out", step.label));
    } else if let Some(sig) = o.signal {
        v.push(format!(
            "{}: killed by signal {sig}: {}",
            step.label,
            tail()
        ));
    }
    if o.stderr.contains("panicked at") {
        v.push(format!("{}: panic: {}", step.label, tail()));
    }
    if o.signal.is_none() && !ALLOWED_CODES.contains(&o.code) {
        v.push(format!("{}: exit code {}", step.label, o.code));
    }
    if (o.code == 2 || o.code == 3) && o.stderr.trim().is_empty() {
        v.push(format!(
            "{}: exit {} with nothing on stderr",
            step.label, o.code
        ));
    }
    if step.args.contains(&"--json")
        && (o.code == 0 || o.code == 1)
        && serde_json::from_str::<serde_json::Value>(&o.stdout).is_err()
    {
        v.push(format!("{}: --json output is not JSON", step.label));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// One case

/// An error line with the case directory and every number masked, so alike messages count
/// together.
fn mask(line: &str, case_dir: &Path) -> String {
    let line = line.replace(&*case_dir.to_string_lossy(), "CASE");
    let mut out = String::new();
    let mut in_num = false;
    let mut prev = ' ';
    for ch in line.chars() {
        if in_num && (ch == 'x' && prev == '0' || ch.is_ascii_hexdigit()) {
            prev = ch;
            continue;
        }
        prev = ch;
        if ch.is_ascii_digit() {
            if !in_num {
                out.push('N');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(ch);
        }
    }
    out.chars().take(160).collect()
}

struct CaseResult {
    case: u64,
    error_messages: Vec<String>,
    damage_kinds: Vec<String>,
    codes: Vec<i32>,
    leftover: Vec<String>,
    mbcheck_after: Vec<String>,
    mbcheck_final: Vec<String>,
    failures: Vec<Failure>,
    not_idempotent: Vec<NotIdempotent>,
}

fn json_kinds(v: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for item in v[list].as_array().into_iter().flatten() {
        if let Some(k) = item[field].as_str() {
            if !kinds.iter().any(|x| x == k) {
                kinds.push(k.to_string());
            }
        }
    }
    kinds
}

fn run_case(cfg: &Config, case: u64) -> io::Result<(CaseResult, Option<PathBuf>)> {
    let fixture = FIXTURES[(case % 2) as usize];
    let mut rng = Rng::for_case(cfg.seed, case);
    let tmp = tempfile::Builder::new()
        .prefix("cyrkit-corrupt-")
        .tempdir()?;
    let root = tmp.path().join(fixture);
    copy_tree(&cfg.fixtures.join(fixture), &root)?;
    relink(&root)?;
    let conf = root.join("imapd.conf");

    let mut damages = Vec::new();
    let mut damage_kinds = Vec::new();
    let wanted = 1 + rng.below(3);
    let mut tries = 0;
    while (damages.len() as u64) < wanted && tries < 20 {
        tries += 1;
        if let Some((kind, desc)) = damage(&root, &mut rng)? {
            damage_kinds.push(kind);
            damages.push(desc);
        }
    }
    let _ = fs::remove_file(root.join(".swap-tmp"));

    let fail = |what: String| Failure {
        seed: cfg.seed,
        case,
        fixture,
        damages: damages.clone(),
        what,
    };
    let mut failures = Vec::new();
    let mut not_idempotent = Vec::new();
    let mut codes = Vec::new();
    let mut leftover = Vec::new();
    let mut mbcheck_after = Vec::new();
    let mut mbcheck_final = Vec::new();
    let messages_before = message_snapshot(&root);
    let mut error_messages = Vec::new();

    for (i, step) in STEPS.iter().enumerate() {
        let before = (step.mode == Mode::ReadOnly).then(|| tree_snapshot(&root));
        let o = run_command(cfg, tmp.path(), &conf, step.args, i)?;
        codes.push(o.code);
        if o.code == 2 || o.code == 3 {
            let last = o.stderr.lines().rev().find(|l| !l.trim().is_empty());
            error_messages.push(mask(last.unwrap_or(""), tmp.path()));
        }
        for v in check_outcome(step, &o) {
            failures.push(fail(v));
        }
        if let Some(before) = before {
            let diff = tree_diff(&before, &tree_snapshot(&root));
            if !diff.is_empty() {
                failures.push(fail(format!(
                    "{} (read-only) changed the tree: {}",
                    step.label,
                    diff.join(", ")
                )));
            }
        }
        if cfg.verbose {
            eprintln!("case {case} {}: exit {}", step.label, o.code);
        }
        let json = serde_json::from_str::<serde_json::Value>(&o.stdout).ok();
        if i == IDEMPOTENCY_STEP {
            if let Some(doc) = &json {
                let mut lines = Vec::new();
                for mb in doc["mailboxes"].as_array().into_iter().flatten() {
                    for c in mb["changes"].as_array().into_iter().flatten() {
                        if let Some(k) = c["kind"].as_str() {
                            if !leftover.iter().any(|x| x == k) {
                                leftover.push(k.to_string());
                            }
                        }
                        if mb["modified"].as_bool() == Some(true) {
                            lines.push(c["line"].as_str().unwrap_or("").to_string());
                        }
                    }
                }
                if doc["summary"]["mailboxes_changed"].as_u64().unwrap_or(0) > 0 {
                    not_idempotent.push(NotIdempotent {
                        case,
                        fixture,
                        damages: damages.clone(),
                        lines,
                    });
                }
            }
        }
        if i == MBCHECK_AFTER_STEP || i == MBCHECK_FINAL_STEP {
            let kinds = match &json {
                Some(doc) => json_kinds(doc, "findings", "kind"),
                None => vec![format!("(no report, exit {})", o.code)],
            };
            if i == MBCHECK_AFTER_STEP {
                mbcheck_after = kinds;
            } else {
                mbcheck_final = kinds;
            }
        }
    }

    for l in lost_messages(&messages_before, &message_snapshot(&root)) {
        failures.push(fail(format!("message file lost or changed: {l}")));
    }

    let kept = if cfg.keep { Some(tmp.keep()) } else { None };
    Ok((
        CaseResult {
            case,
            error_messages,
            damage_kinds,
            codes,
            leftover,
            mbcheck_after,
            mbcheck_final,
            failures,
            not_idempotent,
        },
        kept,
    ))
}

/// Runs the campaign.
pub fn run(cfg: &Config) -> io::Result<Report> {
    let start = Instant::now();
    let cases: Vec<u64> = match cfg.only_case {
        Some(c) => vec![c],
        None => (0..cfg.count).collect(),
    };
    let next = AtomicU64::new(0);
    let report = Mutex::new(Report {
        seed: cfg.seed,
        ..Default::default()
    });
    let error: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..cfg.threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&case) = cases.get(i) else { break };
                match run_case(cfg, case) {
                    Ok((r, kept)) => {
                        if let Some(dir) = kept {
                            eprintln!("case {case}: kept {}", dir.display());
                        }
                        report.lock().unwrap().merge(r);
                    }
                    Err(e) => {
                        *error.lock().unwrap() =
                            Some(io::Error::other(format!("case {case}: {e}")));
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    let mut report = report.into_inner().unwrap();
    report.failures.sort_by_key(|f| f.case);
    report.not_idempotent.sort_by_key(|n| n.case);
    report.elapsed = start.elapsed();
    Ok(report)
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut cfg = Config::new(PathBuf::new());
    let usage = "usage: corruption_campaign --bin PATH [--seed S] [--count N] [--case K] [--keep] \
                 [-j THREADS] [--timeout SECS] [--as-limit-mib MIB] [-v]";
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value\n{usage}");
                std::process::exit(2)
            })
        };
        let num = |s: String| {
            s.parse::<u64>().unwrap_or_else(|_| {
                eprintln!("not a number: {s}\n{usage}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--bin" => cfg.bin = PathBuf::from(val("--bin")),
            "--seed" => cfg.seed = num(val("--seed")),
            "--count" => cfg.count = num(val("--count")),
            "--case" => cfg.only_case = Some(num(val("--case"))),
            "--keep" => cfg.keep = true,
            "-j" => cfg.threads = num(val("-j")) as usize,
            "--timeout" => cfg.timeout = Duration::from_secs(num(val("--timeout"))),
            "--as-limit-mib" => cfg.as_limit = num(val("--as-limit-mib")) << 20,
            "-v" => cfg.verbose = true,
            _ => {
                eprintln!("unknown argument {a}\n{usage}");
                std::process::exit(2)
            }
        }
    }
    if cfg.bin.as_os_str().is_empty() {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    // Commands run in each case's directory: a relative binary path would not be found.
    cfg.bin = fs::canonicalize(&cfg.bin).unwrap_or_else(|e| {
        eprintln!("{}: {e}", cfg.bin.display());
        std::process::exit(2)
    });
    match run(&cfg) {
        Ok(r) => {
            r.print(&mut io::stdout()).expect("write summary");
            if !r.ok() {
                println!(
                    "\nreproduce one: target/release/examples/corruption_campaign --bin {} --seed {} --case N --keep",
                    cfg.bin.display(),
                    cfg.seed
                );
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("corruption_campaign: {e}");
            std::process::exit(2);
        }
    }
}
