//! `cyrkit reconstruct -m`: rebuild the mailboxes database from the spool.
//!
//! Cyrus has answered this flag with "reconstructing mailboxes.db currently not supported"
//! since 2.0. Here: walk every partition (and metapartition) in both directory layouts
//! ([`crate::spool::scan`]), read each `cyrus.header` (name, unique id, ACL, type) and the
//! `cyrus.index` header (uidvalidity, createdmodseq, highestmodseq), and write the 3.6
//! `N`/`I` key families in the configured backend, sorted as that backend sorts.
//!
//! Where the name comes from: in the legacy layout the path is the truth (Cyrus 3.6 does not
//! rewrite `N` in `cyrus.header` on RENAME or delayed delete, `mailbox_rename_copy`); in the
//! uuid layout the header is all there is, and Cyrus keeps it right (`mailbox_rename_nocopy`
//! rewrites `N`, the delayed delete included).
//!
//! Values Cyrus keeps only in mailboxes.db, and how they are rebuilt:
//! * `F` foldermodseq and `M` mtime: taken from the current database when it still holds
//!   a live entry for the same name and unique id (so `-n` on an intact store shows
//!   nothing); otherwise `F` = the index's highestmodseq (an upper bound of the true
//!   value: every folder change bumps the mailbox modseq, `mailbox_modseq_dirty`, so a
//!   client comparing against it sees "maybe changed", never "unchanged" wrongly) and `M` =
//!   the deletion time for a `DELETED.*` mailbox (exact: the delete wrote `M` in the same
//!   second it named the mailbox), else the `cyrus.header` mtime (the header is rewritten
//!   together with the entry on CREATE and SETACL).
//! * `H` name history: from the current database's `I` record; without one, a `DELETED.*`
//!   mailbox gets the one former name its own name records (as `mboxlist_deletemailbox`
//!   writes it: `N M V C F T`, no `P`).
//! * Tombstones (`T …d`, no `P`, no `A`): the current database's are kept when no live
//!   mailbox took their name; without them a `DELETED.*` mailbox leaves one at its old
//!   name, as Cyrus's delayed delete does. `I` records of mailboxes the current database
//!   itself calls gone (finally expunged `DELETED.*`) are kept too.
//! * Missing parents of user mailboxes get an intermediate entry (`T …i`, fresh unique id,
//!   no partition), the entry 3.6 leaves for a parent that exists only as one
//!   (`mboxlist_deletemailbox` with children, `mboxlist_update_intermediaries`).
//! * Reverse-ACL `A` keys are not written: Cyrus's `ctl_cyrusdb -r` adds them at start
//!   when `reverseacls` is on.
//!
//! Safety: the new file is written as `mailboxes.db.NEW`, fsynced and renamed over the old
//! one while the old file's fcntl lock is held exclusively; the old file is first hard-linked
//! to `mailboxes.db.<UTC time>`, so there is never a moment without a `mailboxes.db`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use super::{Common, Outcome, UsageError};
use crate::format::cyrusdb::{self, Backend};
use crate::format::header::{self, Acl, AclEntry, MbType};
use crate::format::index;
use crate::format::mboxlist::{FormerName, MboxEntry, MboxKey, KEY_TYPE_ID, KEY_TYPE_NAME};
use crate::format::{dlist, flat, skiplist, twoskip};
use crate::spool::atomic;
use crate::spool::config::Config;
use crate::spool::db::{self, Pairs};
use crate::spool::lock::{self, FileLock, LockMode};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::Layout;
use crate::spool::scan::{self, FoundDir};

/// How long to wait for the mailboxes.db lock a running Cyrus holds (then exit 75).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Rights of an owner on a mailbox Cyrus creates (`ACL_ALL` printed, 3.6).
const OWNER_RIGHTS: &[u8] = b"lrswipkxtecdan";
/// `defaultacl` default (3.6 imapoptions).
const DEFAULT_ACL: &str = "anyone lrs";
/// Enough for the largest index header (v20) without reading the records.
const INDEX_HEADER_READ: u64 = 1024;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReconstructMArgs {
    /// Print the difference against the current database and write nothing
    #[arg(short = 'n')]
    pub dry_run: bool,
    /// Rescan only this partition; the current database's entries on other partitions are kept
    #[arg(short = 'p', value_name = "PART")]
    pub partition: Option<String>,
    /// Take nothing from the current database (foldermodseq, mtime, name history,
    /// tombstones): rebuild from the spool alone
    #[arg(long)]
    pub ignore_old: bool,
}

/// What kind of problem a directory or the old database had; stable names for `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Two directories claim one name: the one with the newer index is in the database.
    DuplicateName,
    /// Two directories claim one unique id: the one with the newer index is in the database.
    DuplicateUniqueid,
    /// No (readable) cyrus.header; legacy layout: named from its path.
    HeaderMissing,
    /// The uuid-layout directory has no usable cyrus.header, so no name: left out.
    NoName,
    /// The header's unique id differs from the uuid directory it is in.
    UniqueidMismatch,
    /// No readable cyrus.index: uidvalidity and modseqs are unknown.
    IndexMissing,
    /// A directory with Cyrus metadata at a path no mailbox name gives: left out.
    UnrecognisedDirectory,
    /// The partition walk could not read something.
    Walk,
    /// The current database could not be read; nothing was taken from it.
    OldDatabase,
    /// A parent that exists only as a parent got an intermediate entry.
    Intermediate,
}

/// One problem; `error` ones mean a directory is not (fully) in the new database.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub error: bool,
    pub mailbox: Option<String>,
    #[serde(serialize_with = "super::json_path::option::serialize")]
    pub path: Option<PathBuf>,
    pub message: String,
}

/// One mailbox as the spool describes it (also what `reconstruct -f/-p` adopt).
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) name: MboxName,
    pub(super) partition: String,
    pub(super) uniqueid: Option<Vec<u8>>,
    pub(super) mbtype: MbType,
    pub(super) acl: Option<Acl>,
    pub(super) uidvalidity: u32,
    pub(super) createdmodseq: u64,
    pub(super) highestmodseq: u64,
    pub(super) header_mtime: Option<u64>,
    /// Whether `cyrus.header` was read: without it, the ACL is a default and the unique id
    /// is unknown, and the current database's entry is the better source of both.
    pub(super) header_read: bool,
    /// (seconds, nanoseconds) of cyrus.index: "newer index" decides duplicates.
    index_mtime: Option<(i64, i64)>,
    pub(super) dir: PathBuf,
}

impl Found {
    fn newer_than(&self, other: &Found) -> bool {
        (self.index_mtime, self.highestmodseq) > (other.index_mtime, other.highestmodseq)
    }
}

/// One changed field of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

/// One key that differs between the current and the rebuilt database.
#[derive(Debug, Clone, Serialize)]
pub struct EntryDiff {
    /// `name` (N record), `id` (I record) or `other`.
    pub family: &'static str,
    /// Internal mailbox name (N), unique id (I), or the key (lossy).
    pub key: String,
    /// The whole value, for added and removed entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// The difference between two databases.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub added: Vec<EntryDiff>,
    pub removed: Vec<EntryDiff>,
    pub changed: Vec<EntryDiff>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The rebuilt database, before it is written.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every key and value, sorted as the backend sorts.
    pub pairs: Pairs,
    pub mailboxes: usize,
    pub tombstones: usize,
    pub intermediates: usize,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    database: &'a Path,
    backend: &'static str,
    dry_run: bool,
    written: bool,
    backup: Option<&'a Path>,
    mailboxes: usize,
    tombstones: usize,
    intermediates: usize,
    entries: usize,
    difference: &'a Diff,
    problems: &'a [Problem],
}

pub fn run(common: &Common, args: &ReconstructMArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&common.config)?;
    let layout = Layout::from_config(&config).context("laying out the spool")?;
    let nc = layout.names.clone();
    if !args.dry_run {
        // Root acts as the spool's owner, so every file it creates belongs to Cyrus.
        atomic::become_owner_of(&layout.config_dir).with_context(|| {
            format!(
                "{}: cannot take the owner's identity",
                layout.config_dir.display()
            )
        })?;
    }
    let parts: Vec<String> = match &args.partition {
        Some(p) if !layout.partitions.contains_key(p) => {
            return Err(
                UsageError(format!("no partition-{p} in {}", common.config.display())).into(),
            )
        }
        Some(p) => vec![p.clone()],
        None => Vec::new(),
    };
    let backend = db::codec_for(config.mboxlist_db()).ok_or_else(|| {
        UsageError(format!(
            "mboxlist_db: {} is not a backend cyrkit writes (twoskip, skiplist, flat)",
            config.mboxlist_db().name()
        ))
    })?;
    let progress = !common.no_progress && !common.quiet && !common.json;

    let mut problems = Vec::new();
    let found = read_spool(&layout, &parts, &config, progress, &mut problems);

    // From here on the current database is locked (exclusively when it will be replaced).
    let db_path = layout.mboxlist_db_path.clone();
    let mode = if args.dry_run {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let (held, old) = read_old_db(&db_path, backend, mode, &mut problems)?;
    let use_old = if args.ignore_old { None } else { old.as_ref() };
    if args.partition.is_some() && use_old.is_none() {
        return Err(UsageError(
            "-p keeps the other partitions' entries from the current database, and there is none to keep them from (it is missing, unreadable, or --ignore-old was given): run without -p".into(),
        )
        .into());
    }
    let mut plan = build_plan(found, use_old, args.partition.as_deref(), backend, &nc);
    problems.append(&mut plan.problems);
    plan.problems = problems;
    let empty = Vec::new();
    let diff = diff_pairs(old.as_ref().unwrap_or(&empty), &plan.pairs, &nc);

    let mut backup = None;
    if !args.dry_run {
        let bytes = encode(&plan.pairs, backend)?;
        backup = write_db(&db_path, &bytes, held.is_some())?;
    }
    drop(held);

    let report = Report {
        database: &db_path,
        backend: backend.name(),
        dry_run: args.dry_run,
        written: !args.dry_run,
        backup: backup.as_deref(),
        mailboxes: plan.mailboxes,
        tombstones: plan.tombstones,
        intermediates: plan.intermediates,
        entries: plan.pairs.len(),
        difference: &diff,
        problems: &plan.problems,
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report, common.quiet);
    }
    let outcome = if plan.problems.iter().any(|p| p.error) {
        Outcome::Partial
    } else if args.dry_run && !diff.is_empty() {
        Outcome::Findings
    } else {
        Outcome::Clean
    };
    Ok(outcome)
}

fn print_human(r: &Report<'_>, quiet: bool) {
    for p in r.problems {
        let mut line = String::from(if p.error { "error: " } else { "warning: " });
        if let Some(m) = &p.mailbox {
            line.push_str(m);
            line.push_str(": ");
        }
        if let Some(path) = &p.path {
            line.push_str(&path.display().to_string());
            line.push_str(": ");
        }
        line.push_str(&p.message);
        eprintln!("cyrkit: {line}");
    }
    if r.dry_run {
        for (sign, list) in [("+", &r.difference.added), ("-", &r.difference.removed)] {
            for d in list {
                println!(
                    "{sign} {} {}: {}",
                    d.family,
                    d.key,
                    d.value.as_deref().unwrap_or("")
                );
            }
        }
        for d in &r.difference.changed {
            let fields: Vec<String> = d
                .fields
                .iter()
                .map(|f| format!("{} {} -> {}", f.field, f.old, f.new))
                .collect();
            println!("~ {} {}: {}", d.family, d.key, fields.join("; "));
        }
    }
    if quiet {
        return;
    }
    let diff = r.difference;
    let verb = if r.written {
        "rebuilt"
    } else {
        "would rebuild"
    };
    println!(
        "{verb} {} ({}): {} mailboxes, {} tombstones, {} intermediates, {} entries; {} added, {} removed, {} changed",
        r.database.display(),
        r.backend,
        r.mailboxes,
        r.tombstones,
        r.intermediates,
        r.entries,
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    );
    if let Some(b) = r.backup {
        println!("the previous database is kept as {}", b.display());
    }
}

// ---------------------------------------------------------------------------------------
// Reading the spool

fn problem(
    problems: &mut Vec<Problem>,
    kind: ProblemKind,
    error: bool,
    mailbox: Option<&MboxName>,
    path: Option<&Path>,
    message: String,
) {
    problems.push(Problem {
        kind,
        error,
        mailbox: mailbox.map(MboxName::to_string),
        path: path.map(Path::to_path_buf),
        message,
    });
}

fn mtime_of(path: &Path) -> Option<std::fs::Metadata> {
    std::fs::metadata(path).ok()
}

/// Every mailbox directory of the partitions, read.
fn read_spool(
    layout: &Layout,
    parts: &[String],
    config: &Config,
    progress: bool,
    problems: &mut Vec<Problem>,
) -> Vec<Found> {
    let walked = scan::scan(layout, parts);
    for p in walked.problems {
        problem(
            problems,
            ProblemKind::Walk,
            true,
            None,
            Some(&p.path),
            p.what,
        );
    }
    let bar = crate::ui::progress_for("reconstruct -m", progress);
    bar.set_length(walked.dirs.len() as u64);
    let mut out = Vec::with_capacity(walked.dirs.len());
    for d in &walked.dirs {
        if let Some(f) = read_dir(d, &layout.names, config, problems) {
            out.push(f);
        }
        bar.inc(1);
    }
    bar.finish();
    out
}

/// The index values `reconstruct -m` needs, read under a shared lock as Cyrus's readers do.
fn read_index_header(path: &Path) -> Result<index::IndexHeader, String> {
    let held = lock::lock_existing(path, LockMode::Shared, LOCK_TIMEOUT).map_err(|e| match e {
        lock::LockError::Open { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    let mut buf = Vec::new();
    held.file()
        .take(INDEX_HEADER_READ)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    index::parse_header(&buf).map_err(|e| e.to_string())
}

pub(super) fn read_dir(
    d: &FoundDir,
    nc: &NameConfig,
    config: &Config,
    problems: &mut Vec<Problem>,
) -> Option<Found> {
    let header = if d.has_header {
        match std::fs::read(&d.header_path)
            .map_err(|e| e.to_string())
            .and_then(|b| header::parse(&b).map_err(|e| e.to_string()))
        {
            Ok(h) => Some(h),
            Err(e) => {
                problem(
                    problems,
                    ProblemKind::HeaderMissing,
                    false,
                    None,
                    Some(&d.header_path),
                    format!("unreadable: {e}"),
                );
                None
            }
        }
    } else {
        None
    };
    let dir = d
        .header_path
        .parent()
        .unwrap_or(Path::new(""))
        .to_path_buf();
    // Which layout: the uuid shape wins when the header (if any) agrees with it.
    let uuid_layout = d.uuid.as_ref().is_some_and(|id| match &header {
        Some(h) => h.uniqueid.as_deref() == Some(id.as_bytes()) || d.legacy_name.is_none(),
        None => true,
    });
    let (name, uniqueid) = if uuid_layout {
        let id = d.uuid.clone().unwrap_or_default();
        let name = header
            .as_ref()
            .and_then(|h| h.name.as_deref())
            .map(|n| MboxName::from_internal(n, nc));
        let name = match name {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                problem(
                    problems,
                    ProblemKind::NoName,
                    true,
                    None,
                    Some(&dir),
                    format!("cyrus.header names no valid mailbox ({e}); left out of the database"),
                );
                return None;
            }
            None => {
                problem(
                    problems,
                    ProblemKind::NoName,
                    true,
                    None,
                    Some(&dir),
                    format!("mailbox {id} has no readable cyrus.header, so no name (uuid layout); left out of the database: restore its cyrus.header, or find its name and run `cyrkit reconstruct` on it"),
                );
                return None;
            }
        };
        if let Some(hid) = header.as_ref().and_then(|h| h.uniqueid.as_deref()) {
            if hid != id.as_bytes() {
                problem(
                    problems,
                    ProblemKind::UniqueidMismatch,
                    false,
                    Some(&name),
                    Some(&d.header_path),
                    format!(
                        "cyrus.header says unique id {}, the directory is {id}; the directory wins (Cyrus looks there)",
                        String::from_utf8_lossy(hid)
                    ),
                );
            }
        }
        (name, Some(id.into_bytes()))
    } else if let Some(name) = &d.legacy_name {
        if header.is_none() {
            problem(
                problems,
                ProblemKind::HeaderMissing,
                false,
                Some(name),
                Some(&d.header_path),
                format!("no cyrus.header: name taken from the path; unique id and ACL from the current database's entry, else a new unique id (as Cyrus's reconstruct makes one for a header it cannot read) and Cyrus's default ACL for a new mailbox; run `cyrkit reconstruct {name}` to recreate the header"),
            );
        }
        (
            name.clone(),
            header.as_ref().and_then(|h| h.uniqueid.clone()),
        )
    } else {
        problem(
            problems,
            ProblemKind::UnrecognisedDirectory,
            true,
            None,
            Some(&dir),
            "holds Cyrus metadata but its path names no mailbox in this configuration; left out of the database".into(),
        );
        return None;
    };

    let mut mbtype = MbType {
        kind: header.as_ref().map(|h| h.mbtype.kind).unwrap_or_default(),
        ..MbType::default()
    };
    mbtype.legacy_dirs = !uuid_layout;
    let acl = match &header {
        Some(h) => h.acl.clone(),
        None => Some(default_acl(&name, config)),
    };
    let idx = if d.has_index {
        read_index_header(&d.index_path)
    } else {
        Err("missing".into())
    };
    let (uidvalidity, createdmodseq, highestmodseq) = match &idx {
        Ok(h) => (h.uidvalidity, h.createdmodseq, h.highestmodseq),
        Err(e) => {
            problem(
                problems,
                ProblemKind::IndexMissing,
                false,
                Some(&name),
                Some(&d.index_path),
                format!("{e}: uidvalidity and modseqs unknown; run `cyrkit reconstruct {name}` to rebuild the index"),
            );
            (0, 0, 0)
        }
    };
    let index_mtime = mtime_of(&d.index_path).map(|m| (m.mtime(), m.mtime_nsec()));
    let header_mtime = mtime_of(&d.header_path).and_then(|m| u64::try_from(m.mtime()).ok());
    Some(Found {
        name,
        partition: d.partition.clone(),
        uniqueid,
        mbtype,
        acl,
        uidvalidity,
        createdmodseq,
        highestmodseq,
        header_mtime,
        header_read: header.is_some(),
        index_mtime,
        dir,
    })
}

/// The ACL Cyrus gives a new mailbox (`mboxlist_create_acl`): the owner gets all rights on
/// a user's mailbox; a shared one gets `defaultacl`.
pub(super) fn default_acl(name: &MboxName, config: &Config) -> Acl {
    if let Some(owner) = name.userid() {
        return Acl {
            entries: vec![AclEntry {
                identifier: owner,
                rights: OWNER_RIGHTS.to_vec(),
            }],
        };
    }
    let text = config.get("defaultacl").unwrap_or(DEFAULT_ACL);
    let words: Vec<&str> = text.split_whitespace().collect();
    Acl {
        entries: words
            .chunks_exact(2)
            .map(|w| AclEntry {
                identifier: w[0].as_bytes().to_vec(),
                rights: w[1].as_bytes().to_vec(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// The current database

/// Lock and read the current database through one descriptor (a second open and close in
/// this process would drop the fcntl lock). `Ok((None, None))` when there is none.
fn read_old_db(
    path: &Path,
    configured: Backend,
    mode: LockMode,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<(Option<FileLock>, Option<Pairs>)> {
    let held = match lock::lock_existing(path, mode, LOCK_TIMEOUT) {
        Ok(h) => h,
        Err(lock::LockError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok((None, None))
        }
        Err(e) => return Err(e.into()),
    };
    let map = db::map_file(held.file()).with_context(|| path.display().to_string())?;
    // A database in another backend (Cyrus converts on start) is still read for what it
    // holds; the new one is written in the configured backend.
    let backend = cyrusdb::detect(&map).unwrap_or(configured);
    let pairs = match db::read_pairs(&map, backend) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(Problem {
                kind: ProblemKind::OldDatabase,
                error: false,
                mailbox: None,
                path: Some(path.to_path_buf()),
                message: format!(
                    "unreadable ({e}); nothing taken from it, it is kept as the backup"
                ),
            });
            None
        }
    };
    drop(map);
    Ok((Some(held), pairs))
}

/// The decoded 3.5+ records of a database (pre-3.5 keys are left out).
#[derive(Default)]
struct OldDb {
    names: BTreeMap<Vec<u8>, MboxEntry>,
    ids: BTreeMap<Vec<u8>, MboxEntry>,
    raw: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl OldDb {
    fn decode(pairs: &[(Vec<u8>, Vec<u8>)]) -> OldDb {
        let mut out = OldDb::default();
        for (k, v) in pairs {
            let Some(entry) = decode_entry(v) else {
                continue;
            };
            match MboxKey::decode(k) {
                Ok(MboxKey::Name(n)) => {
                    out.names.insert(n, entry);
                }
                Ok(MboxKey::Id(id)) => {
                    out.ids.insert(id, entry);
                }
                _ => continue,
            }
            out.raw.insert(k.clone(), v.clone());
        }
        out
    }
}

fn decode_entry(v: &[u8]) -> Option<MboxEntry> {
    let d = dlist::parse(v).ok()?;
    MboxEntry::from_v36_dlist(&d).ok()
}

// ---------------------------------------------------------------------------------------
// Building the new database

fn key(family: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(family);
    k.extend_from_slice(rest);
    k
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh unique id in the form Cyrus 3.6 without libuuid makes (`makeuuid`: 24
/// characters of `[0-9a-z]`), from /dev/urandom (time and pid if that cannot be read).
pub(super) fn new_uniqueid(taken: &BTreeSet<Vec<u8>>) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut seed = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
    let mut state =
        u64::from_le_bytes(seed) ^ now().rotate_left(32) ^ u64::from(std::process::id());
    // splitmix64
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    loop {
        let id: Vec<u8> = (0..24)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        if !taken.contains(&id) {
            return id;
        }
    }
}

/// Build the new database from the mailboxes found and (unless ignored) the current one.
fn build_plan(
    found: Vec<Found>,
    old: Option<&Pairs>,
    only_partition: Option<&str>,
    backend: Backend,
    nc: &NameConfig,
) -> Plan {
    let mut plan = Plan::default();
    let old = old.map(|p| OldDb::decode(p)).unwrap_or_default();

    // One directory per name, then one per unique id: the newer index wins, the other is
    // reported with its path (it stays on disk untouched).
    let mut by_name: BTreeMap<Vec<u8>, Found> = BTreeMap::new();
    for f in found {
        let dbname = f.name.to_dbname();
        let (keep, drop) = match by_name.remove(&dbname) {
            None => (f, None),
            Some(prev) if f.newer_than(&prev) => (f, Some(prev)),
            Some(prev) => (prev, Some(f)),
        };
        if let Some(d) = drop {
            problem(
                &mut plan.problems,
                ProblemKind::DuplicateName,
                true,
                Some(&keep.name),
                Some(&d.dir),
                format!(
                    "claims the same name as {} (partition {}), whose index is newer and which is in the database; this directory is not",
                    keep.dir.display(),
                    keep.partition
                ),
            );
        }
        by_name.insert(dbname, keep);
    }
    let mut by_id: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut dropped = Vec::new();
    for (dbname, f) in &by_name {
        let Some(id) = &f.uniqueid else { continue };
        match by_id.get(id) {
            None => {
                by_id.insert(id.clone(), dbname.clone());
            }
            Some(prev) => {
                let prev_f = &by_name[prev];
                let (keep, lose) = if f.newer_than(prev_f) {
                    (dbname.clone(), prev.clone())
                } else {
                    (prev.clone(), dbname.clone())
                };
                by_id.insert(id.clone(), keep.clone());
                dropped.push((keep, lose));
            }
        }
    }
    for (keep, lose) in dropped {
        if let (Some(k), Some(l)) = (by_name.get(&keep), by_name.get(&lose)) {
            problem(
                &mut plan.problems,
                ProblemKind::DuplicateUniqueid,
                true,
                Some(&l.name),
                Some(&l.dir),
                format!(
                    "has the unique id {} of {} ({}), whose index is newer and which is in the database; this directory is not",
                    String::from_utf8_lossy(k.uniqueid.as_deref().unwrap_or_default()),
                    k.name,
                    k.dir.display()
                ),
            );
        }
        by_name.remove(&lose);
    }
    // Legacy directories without a unique id (no readable cyrus.header, or a header older
    // than 2.4): the current database's entry for the name lends its unique id (and, with
    // no header, its ACL); otherwise a new id, as `mailbox_reconstruct_create` makes one
    // (`mailbox_make_uniqueid`) for a header it cannot read.
    let mut taken: BTreeSet<Vec<u8>> = by_id.keys().cloned().collect();
    taken.extend(old.ids.keys().cloned());
    for (dbname, f) in by_name.iter_mut() {
        let prior = old.names.get(dbname).filter(|e| {
            !e.is_tombstone() && e.partition.as_deref() == Some(f.partition.as_bytes())
        });
        if !f.header_read {
            if let Some(acl) = prior.and_then(|e| e.acl.clone()) {
                f.acl = Some(acl);
            }
        }
        if f.uniqueid.is_some() {
            continue;
        }
        let id = prior
            .and_then(|e| e.uniqueid.clone())
            .filter(|id| !by_id.contains_key(id))
            .unwrap_or_else(|| new_uniqueid(&taken));
        taken.insert(id.clone());
        by_id.insert(id.clone(), dbname.clone());
        f.uniqueid = Some(id);
    }

    let mut names: BTreeMap<Vec<u8>, MboxEntry> = BTreeMap::new();
    let mut ids: BTreeMap<Vec<u8>, MboxEntry> = BTreeMap::new();
    let mut verbatim: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Deleted mailboxes in deletion order, so the newest deletion leaves the tombstone.
    let mut deletions: Vec<(u32, Vec<u8>, MboxEntry)> = Vec::new();

    for (dbname, f) in &by_name {
        let prior = old
            .names
            .get(dbname)
            .filter(|e| !e.is_tombstone() && e.uniqueid == f.uniqueid);
        let stamp = f.name.deleted().map(|d| u64::from(d.stamp));
        let foldermodseq = prior
            .map(|e| e.foldermodseq)
            .unwrap_or(f.highestmodseq.max(f.createdmodseq));
        let mtime = prior
            .and_then(|e| e.mtime)
            .or(stamp)
            .or(f.header_mtime)
            .unwrap_or_else(now);
        let entry = MboxEntry {
            mbtype: f.mbtype,
            uniqueid: f.uniqueid.clone(),
            partition: Some(f.partition.clone().into_bytes()),
            uidvalidity: f.uidvalidity,
            createdmodseq: f.createdmodseq,
            foldermodseq,
            mtime: Some(mtime),
            acl: f.acl.clone(),
            ..MboxEntry::default()
        };
        if let Some(id) = &f.uniqueid {
            let history = match old.ids.get(id).and_then(|e| e.name_history.clone()) {
                Some(h) => h,
                None => match (f.name.deleted(), stamp) {
                    (Some(_), Some(stamp)) => vec![FormerName {
                        dbname: Some(f.name.undeleted().to_dbname()),
                        mtime: stamp,
                        uidvalidity: f.uidvalidity,
                        createdmodseq: f.createdmodseq,
                        foldermodseq,
                        mbtype: MbType {
                            deleted: true,
                            ..f.mbtype
                        },
                        partition: None,
                    }],
                    _ => Vec::new(),
                },
            };
            ids.insert(
                id.clone(),
                MboxEntry {
                    dbname: Some(dbname.clone()),
                    name_history: Some(history),
                    ..entry.clone()
                },
            );
        }
        if let (Some(d), Some(stamp)) = (f.name.deleted(), stamp) {
            let tomb = MboxEntry {
                mbtype: MbType {
                    deleted: true,
                    ..f.mbtype
                },
                uniqueid: f.uniqueid.clone(),
                uidvalidity: f.uidvalidity,
                createdmodseq: f.createdmodseq,
                foldermodseq,
                mtime: Some(stamp),
                ..MboxEntry::default()
            };
            deletions.push((d.stamp, f.name.undeleted().to_dbname(), tomb));
        }
        names.insert(dbname.clone(), entry);
        plan.mailboxes += 1;
    }

    // With -p, the other partitions' live entries (and their I records) stay as they are.
    if let Some(part) = only_partition {
        for (dbname, e) in &old.names {
            let elsewhere =
                !e.is_tombstone() && e.partition.as_deref().is_some_and(|p| p != part.as_bytes());
            if elsewhere && !names.contains_key(dbname) {
                verbatim.insert(
                    key(KEY_TYPE_NAME, dbname),
                    old.raw[&key(KEY_TYPE_NAME, dbname)].clone(),
                );
                if let Some(id) = e.uniqueid.as_ref().filter(|id| !ids.contains_key(*id)) {
                    if let Some(v) = old.raw.get(&key(KEY_TYPE_ID, id)) {
                        verbatim.insert(key(KEY_TYPE_ID, id), v.clone());
                    }
                }
            }
        }
    }
    fn live_name(
        dbname: &[u8],
        names: &BTreeMap<Vec<u8>, MboxEntry>,
        verbatim: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> bool {
        names.contains_key(dbname) || verbatim.contains_key(&key(KEY_TYPE_NAME, dbname))
    }

    // The current database's tombstones and the I records of mailboxes it calls gone.
    let mut tombs: BTreeMap<Vec<u8>, MboxEntry> = BTreeMap::new();
    for (dbname, e) in &old.names {
        if e.is_tombstone() && !live_name(dbname, &names, &verbatim) {
            verbatim.insert(
                key(KEY_TYPE_NAME, dbname),
                old.raw[&key(KEY_TYPE_NAME, dbname)].clone(),
            );
            tombs.insert(dbname.clone(), e.clone());
        }
    }
    for (id, e) in &old.ids {
        let k = key(KEY_TYPE_ID, id);
        if ids.contains_key(id) || verbatim.contains_key(&k) {
            continue;
        }
        let gone = e.dbname.as_ref().map_or(true, |n| match old.names.get(n) {
            None => true,
            Some(cur) => cur.is_tombstone() || cur.uniqueid.as_ref() != Some(id),
        });
        if gone {
            verbatim.insert(k, old.raw[&key(KEY_TYPE_ID, id)].clone());
        }
    }
    // Delayed deletes leave a tombstone at the old name, unless something holds it.
    deletions.sort_by_key(|d| d.0);
    for (_, dbname, tomb) in deletions {
        if live_name(&dbname, &names, &verbatim) {
            continue;
        }
        if old.names.contains_key(&dbname) && verbatim.contains_key(&key(KEY_TYPE_NAME, &dbname)) {
            continue; // the current database's own tombstone is more exact
        }
        tombs.insert(dbname.clone(), tomb.clone());
        names.insert(dbname, tomb);
    }
    plan.tombstones = tombs.len();

    // Parents of user mailboxes that exist only as parents.
    taken.extend(ids.keys().cloned());
    let children: Vec<(MboxName, MbType, u64)> = by_name
        .values()
        .filter(|f| f.name.is_user_mailbox())
        .map(|f| {
            let fm = names
                .get(&f.name.to_dbname())
                .map(|e| e.foldermodseq)
                .unwrap_or_default();
            (f.name.clone(), f.mbtype, fm)
        })
        .collect();
    for (child, mbtype, modseq) in children {
        let mut cur = child.parent(nc);
        while let Some(p) = cur.filter(|p| p.is_user_mailbox() && !p.boxes().is_empty()) {
            let dbname = p.to_dbname();
            let held = names.get(&dbname).is_some_and(|e| !e.mbtype.deleted)
                || verbatim
                    .get(&key(KEY_TYPE_NAME, &dbname))
                    .and_then(|v| decode_entry(v))
                    .is_some_and(|e| !e.mbtype.deleted);
            if !held {
                let id = new_uniqueid(&taken);
                taken.insert(id.clone());
                let entry = MboxEntry {
                    mbtype: MbType {
                        intermediate: true,
                        deleted: false,
                        ..mbtype
                    },
                    uniqueid: Some(id.clone()),
                    createdmodseq: modseq,
                    foldermodseq: modseq,
                    mtime: Some(now()),
                    ..MboxEntry::default()
                };
                ids.insert(
                    id,
                    MboxEntry {
                        dbname: Some(dbname.clone()),
                        name_history: Some(Vec::new()),
                        ..entry.clone()
                    },
                );
                verbatim.remove(&key(KEY_TYPE_NAME, &dbname));
                problem(
                    &mut plan.problems,
                    ProblemKind::Intermediate,
                    false,
                    Some(&p),
                    None,
                    "exists only as the parent of other mailboxes: intermediate entry created, as Cyrus does".into(),
                );
                names.insert(dbname, entry);
                plan.intermediates += 1;
            }
            cur = p.parent(nc);
        }
    }

    let mut pairs: Pairs = Vec::with_capacity(names.len() + ids.len() + verbatim.len());
    for (dbname, e) in &names {
        pairs.push((
            key(KEY_TYPE_NAME, dbname),
            dlist::write(&e.to_v36_name_dlist()),
        ));
    }
    for (id, e) in &ids {
        pairs.push((key(KEY_TYPE_ID, id), dlist::write(&e.to_v36_id_dlist())));
    }
    let written: BTreeSet<Vec<u8>> = pairs.iter().map(|p| p.0.clone()).collect();
    pairs.extend(verbatim.into_iter().filter(|(k, _)| !written.contains(k)));
    let order = backend.default_order();
    pairs.sort_by(|a, b| order.compare(&a.0, &b.0));
    plan.pairs = pairs;
    plan
}

// ---------------------------------------------------------------------------------------
// Difference

fn show_key(k: &[u8], nc: &NameConfig) -> (&'static str, String) {
    match MboxKey::decode(k) {
        Ok(MboxKey::Name(n)) => (
            "name",
            MboxName::from_dbname(&n, nc)
                .map(|m| m.to_string())
                .unwrap_or_else(|_| String::from_utf8_lossy(&n).into_owned()),
        ),
        Ok(MboxKey::Id(id)) => ("id", String::from_utf8_lossy(&id).into_owned()),
        _ => ("other", String::from_utf8_lossy(k).into_owned()),
    }
}

fn show_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).replace(['\x1f', '\x1d'], ".")
}

/// Field-by-field differences of two entries.
fn field_changes(old: &MboxEntry, new: &MboxEntry) -> Vec<FieldChange> {
    let opt = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(show_value)
            .unwrap_or_else(|| "(none)".into())
    };
    let acl = |a: &Option<Acl>| {
        a.as_ref()
            .map(|a| show_value(&dlist::write(&a.to_dlist())))
            .unwrap_or_else(|| "(none)".into())
    };
    let history = |h: &Option<Vec<FormerName>>| {
        let e = MboxEntry {
            name_history: h.clone(),
            ..MboxEntry::default()
        };
        match e.to_v36_id_dlist().get(b"H") {
            Some(d) if h.is_some() => show_value(&dlist::write(d)),
            _ => "(none)".into(),
        }
    };
    let fields: [(&'static str, String, String); 11] = [
        (
            "type",
            show_value(&old.mbtype.to_string_bytes()),
            show_value(&new.mbtype.to_string_bytes()),
        ),
        ("uniqueid", opt(&old.uniqueid), opt(&new.uniqueid)),
        ("name", opt(&old.dbname), opt(&new.dbname)),
        ("partition", opt(&old.partition), opt(&new.partition)),
        ("server", opt(&old.server), opt(&new.server)),
        (
            "uidvalidity",
            old.uidvalidity.to_string(),
            new.uidvalidity.to_string(),
        ),
        (
            "createdmodseq",
            old.createdmodseq.to_string(),
            new.createdmodseq.to_string(),
        ),
        (
            "foldermodseq",
            old.foldermodseq.to_string(),
            new.foldermodseq.to_string(),
        ),
        (
            "mtime",
            old.mtime.map(|m| m.to_string()).unwrap_or_default(),
            new.mtime.map(|m| m.to_string()).unwrap_or_default(),
        ),
        ("acl", acl(&old.acl), acl(&new.acl)),
        (
            "history",
            history(&old.name_history),
            history(&new.name_history),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, o, n)| o != n)
        .map(|(field, old, new)| FieldChange { field, old, new })
        .collect()
}

/// What differs between the current database and the rebuilt one, key by key.
pub fn diff_pairs(old: &[(Vec<u8>, Vec<u8>)], new: &[(Vec<u8>, Vec<u8>)], nc: &NameConfig) -> Diff {
    let o: BTreeMap<&[u8], &[u8]> = old.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let n: BTreeMap<&[u8], &[u8]> = new.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let mut diff = Diff::default();
    let whole = |k: &[u8], v: &[u8]| {
        let (family, key) = show_key(k, nc);
        EntryDiff {
            family,
            key,
            value: Some(show_value(v)),
            fields: Vec::new(),
        }
    };
    for (k, v) in &o {
        // Reverse-ACL keys are Cyrus's to rebuild (ctl_cyrusdb -r), not a difference.
        if k.first() == Some(&b'A') {
            continue;
        }
        match n.get(k) {
            None => diff.removed.push(whole(k, v)),
            Some(nv) if nv != v => {
                let (family, key) = show_key(k, nc);
                let fields = match (decode_entry(v), decode_entry(nv)) {
                    (Some(a), Some(b)) => field_changes(&a, &b),
                    _ => Vec::new(),
                };
                let fields = if fields.is_empty() {
                    vec![FieldChange {
                        field: "value",
                        old: show_value(v),
                        new: show_value(nv),
                    }]
                } else {
                    fields
                };
                diff.changed.push(EntryDiff {
                    family,
                    key,
                    value: None,
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for (k, v) in &n {
        if !o.contains_key(k) {
            diff.added.push(whole(k, v));
        }
    }
    diff
}

// ---------------------------------------------------------------------------------------
// Writing

/// The database file for `pairs` (sorted by the backend's order).
pub(super) fn encode(pairs: &Pairs, backend: Backend) -> anyhow::Result<Vec<u8>> {
    let bytes = match backend {
        Backend::Twoskip => twoskip::write_fresh(
            pairs,
            &twoskip::FreshOptions {
                order: backend.default_order(),
                ..Default::default()
            },
        )?,
        Backend::Skiplist => skiplist::write_fresh(
            pairs,
            &skiplist::FreshOptions {
                order: backend.default_order(),
                ..Default::default()
            },
        )?,
        Backend::Flat => flat::write_fresh(pairs)?,
    };
    Ok(bytes)
}

/// `YYYYMMDDTHHMMSSZ` of a unix time (UTC; civil-from-days, H. Hinnant's algorithm).
fn utc_stamp(t: u64) -> String {
    let days = t / 86_400;
    let secs = t % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Keep the old file under a new name (a hard link: the same inode, never a moment
/// without `mailboxes.db`), then replace it atomically. Returns the backup's path.
fn write_db(path: &Path, bytes: &[u8], had_old: bool) -> anyhow::Result<Option<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let own = atomic::Ownership::for_path(path).with_context(|| path.display().to_string())?;
    let mut backup = None;
    if had_old {
        let base = format!("{}.{}", path.display(), utc_stamp(now()));
        let mut candidate = PathBuf::from(&base);
        let mut n = 1;
        while candidate.symlink_metadata().is_ok() {
            candidate = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        std::fs::hard_link(path, &candidate)
            .with_context(|| format!("keeping the old database as {}", candidate.display()))?;
        atomic::crash_point("link");
        atomic::fsync_dir(dir).with_context(|| dir.display().to_string())?;
        backup = Some(candidate);
    }
    atomic::replace_with_ownership(path, bytes, own)?;
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_698_651), "20261126T131051Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn unique_ids_look_like_cyrus_ones() {
        let mut taken = BTreeSet::new();
        for _ in 0..50 {
            let id = new_uniqueid(&taken);
            assert_eq!(id.len(), 24);
            assert!(id
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
            assert!(taken.insert(id));
        }
    }

    #[test]
    fn field_changes_name_each_field() {
        let a = MboxEntry {
            foldermodseq: 3,
            acl: Some(Acl::parse_cyrus_string(b"alice\tlrs\t")),
            ..MboxEntry::default()
        };
        let b = MboxEntry {
            foldermodseq: 5,
            acl: Some(Acl::parse_cyrus_string(b"alice\tlr\t")),
            ..MboxEntry::default()
        };
        let ch = field_changes(&a, &b);
        let fields: Vec<&str> = ch.iter().map(|c| c.field).collect();
        assert_eq!(fields, ["foldermodseq", "acl"]);
        assert_eq!(ch[0].old, "3");
        assert_eq!(ch[1].new, "%(alice lr)");
        assert!(field_changes(&a, &a).is_empty());
    }
}
