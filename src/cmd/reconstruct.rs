//! `cyrkit reconstruct`: rebuild mailboxes' `cyrus.index`, `cyrus.cache` and `cyrus.header`
//! from the message files and whatever metadata survives, with Cyrus 3.6's flags and report
//! lines (docs: cyrus-mailbox-format.md §6), but keeping what survives where Cyrus throws it
//! away:
//! * UIDVALIDITY is kept (mailboxes.db entry, else the index) even when `cyrus.index` or
//!   `cyrus.header` is lost or the index header fails its CRC (Cyrus mints a new one);
//! * every index record whose own CRC is good keeps its UID, flags, internaldate and modseq,
//!   whatever the index header's state (its fields are then recomputed from the records);
//! * a lost `cyrus.header` is rebuilt from the database entry (only keyword names are lost);
//! * a cache entry that fails its CRC is regenerated (Cyrus leaves it);
//! * modseqs only move forward; nothing is deleted unless `-O`/`-U`/`-R` say so.
//!
//! Each mailbox is planned first (a pure computation over a [`Snapshot`]: the report lines
//! and the new files, which is all `-n` prints), outside the exclusive lock; the exclusive
//! locks are then taken, the snapshot re-read and, if it changed meanwhile, re-planned
//! (re-using the message parses), and the new files are committed by
//! [`mailbox::commit`] in a crash-safe order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use super::{Common, Outcome, UsageError};
use crate::format::cache::{CACHE_HEADER_SIZE, CACHE_VERSION_36};
use crate::format::crc::crc32;
use crate::format::header::{self, HeaderFormat, MailboxHeader};
use crate::format::index::{self, IndexHeader, IndexRecord};
use crate::spool::config::Config;
use crate::spool::mailbox::{
    self, CacheFile, Changes, DirFd, IndexFile, MailboxFiles, MessageFile, NewCache, NewIndex,
    Prefix, Snapshot, Spill,
};
use crate::spool::mailbox_lock::OpenMode;
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::Layout;
use crate::spool::quota::{mailbox_usage, Usage};

mod adopt;

use adopt::{AdoptEnv, Known, Origin};

/// How long to wait for a lock a running Cyrus holds before giving up (exit 75).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct ReconstructArgs {
    /// Also reconstruct every child of the named mailboxes
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Also adopt mailbox directories below the named ones that the database lacks
    #[arg(short = 'f')]
    pub filesystem: bool,
    /// Change nothing; print what a real run would change (exit 1 if anything)
    #[arg(short = 'n')]
    pub dry_run: bool,
    /// With -f/-p: create new empty mailboxes instead of importing metadata
    #[arg(short = 'x')]
    pub no_import: bool,
    /// Re-parse every message file (checks its GUID, rebuilds its cache entry)
    #[arg(short = 'G')]
    pub always_parse: bool,
    /// Trust sizes: do not stat message files
    #[arg(short = 's')]
    pub no_stat: bool,
    /// On a GUID mismatch, expunge the record and re-add the file under a new UID
    #[arg(short = 'R')]
    pub guid_rewrite: bool,
    /// On a GUID mismatch, expunge the record and DELETE the message file
    #[arg(short = 'U')]
    pub guid_unlink: bool,
    /// Ignore odd files in mailbox directories
    #[arg(short = 'o', conflicts_with = "delete_odd")]
    pub ignore_odd: bool,
    /// Delete odd files in mailbox directories
    #[arg(short = 'O')]
    pub delete_odd: bool,
    /// Prefer the mailboxes database over the mailbox for UIDVALIDITY
    #[arg(short = 'M')]
    pub prefer_db: bool,
    /// The named mailboxes do not exist: create their entries on PART (from what is there)
    #[arg(short = 'p', value_name = "PART")]
    pub partition: Option<String>,
    /// Write this cyrus.index minor version (12..17, or `max`)
    #[arg(short = 'V', value_name = "VER")]
    pub version: Option<String>,
    /// Arguments are user ids: all of their mailboxes
    #[arg(short = 'u')]
    pub users: bool,
    /// Arguments are cyrus.header paths: only (re)create database entries
    #[arg(short = 'P')]
    pub header_paths: bool,
    /// Give the mailbox a new UIDVALIDITY (Cyrus's behaviour after metadata loss): every
    /// client resynchronises
    #[arg(long)]
    pub new_uidvalidity: bool,
    /// Rebuild the mailboxes database itself from every partition's mailbox directories
    /// (with -n: print the difference against the current database; with -p: rescan only PART)
    #[arg(short = 'm')]
    pub mailboxes_db: bool,
    /// With -m: take nothing from the current database (foldermodseq, mtime, name history,
    /// tombstones), rebuild from the spool alone
    #[arg(long, requires = "mailboxes_db")]
    pub ignore_old: bool,
    /// Mailboxes reconstructed in parallel (default: the number of cores)
    #[arg(short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Mailboxes (external names; `*` and `%` patterns as Cyrus takes them)
    #[arg(value_name = "MAILBOX")]
    pub mailboxes: Vec<String>,
}

/// What to do about odd files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OddFiles {
    Report,
    Ignore,
    Delete,
}

/// The options a plan depends on.
#[derive(Debug, Clone)]
struct Opts {
    make_changes: bool,
    always_parse: bool,
    do_stat: bool,
    guid_rewrite: bool,
    guid_unlink: bool,
    odd: OddFiles,
    prefer_db: bool,
    version: Option<u32>,
    new_uidvalidity: bool,
    parse: crate::mime::ParseOptions,
}

/// One change (or finding) in a mailbox: the Cyrus-style line and its facts.
///
/// Fields in alphabetical order: the `--json` report is serialised straight to the output
/// (see [`JsonReport`]) and must come out as the sorted maps of a `serde_json::Value` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: &'static str,
    /// The report line as printed.
    pub line: Line,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// The changes of one mailbox, in order. A run of "found" changes (one per message added to
/// a mailbox whose index is lost, with no other change between them) is kept as the shared
/// mailbox name and the UIDs' differences as LEB128 varints (a byte per message, instead of
/// a 48-byte [`Change`] each); [`ChangeLog::iter`] and the serialisation (a JSON array of
/// the changes) expand it into the same changes.
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    items: Vec<Logged>,
    len: usize,
}

#[derive(Debug, Clone)]
enum Logged {
    One(Change),
    /// `{name} uid {uid} found - adding` for `first` and the UIDs `deltas` step to.
    Found {
        name: Arc<str>,
        first: u32,
        last: u32,
        count: u64,
        deltas: Vec<u8>,
    },
}

fn found_change(name: &Arc<str>, uid: u32) -> Change {
    Change {
        kind: "found",
        line: Line::Found(name.clone(), uid),
        uid: Some(uid),
    }
}

impl ChangeLog {
    pub fn push(&mut self, c: Change) {
        self.items.push(Logged::One(c));
        self.len += 1;
    }

    /// Pushes `{name} uid {uid} found - adding` (kind `found`).
    pub fn push_found(&mut self, name: &Arc<str>, uid: u32) {
        self.len += 1;
        if let Some(Logged::Found {
            name: n,
            last,
            count,
            deltas,
            ..
        }) = self.items.last_mut()
        {
            if (Arc::ptr_eq(n, name) || n == name) && uid >= *last {
                let mut d = uid - *last;
                while d >= 0x80 {
                    deltas.push((d & 0x7f) as u8 | 0x80);
                    d >>= 7;
                }
                deltas.push(d as u8);
                *last = uid;
                *count += 1;
                return;
            }
        }
        self.items.push(Logged::Found {
            name: name.clone(),
            first: uid,
            last: uid,
            count: 1,
            deltas: Vec::new(),
        });
    }

    /// How many changes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The changes in order (a run of "found" ones made one at a time).
    pub fn iter(&self) -> ChangeIter<'_> {
        ChangeIter {
            items: self.items.iter(),
            run: None,
        }
    }

    /// Each change's kind with a count (a run of "found" changes once, with its length).
    fn kind_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.items.iter().map(|l| match l {
            Logged::One(c) => (c.kind, 1),
            Logged::Found { count, .. } => ("found", *count),
        })
    }
}

/// The changes of a [`ChangeLog`] in order.
pub struct ChangeIter<'a> {
    items: std::slice::Iter<'a, Logged>,
    /// Within a run of "found" changes: its name, the next UID, the differences after it.
    run: Option<(&'a Arc<str>, u32, &'a [u8])>,
}

impl<'a> Iterator for ChangeIter<'a> {
    type Item = std::borrow::Cow<'a, Change>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((name, uid, rest)) = self.run.take() {
            // The next UID, if the run goes on: a varint of 7-bit groups, low group first.
            let mut d = 0u32;
            let mut shift = 0u32;
            let mut used = 0usize;
            for &b in rest {
                used += 1;
                d |= u32::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if used > 0 {
                let rest = rest.get(used..).unwrap_or_default();
                self.run = Some((name, uid.saturating_add(d), rest));
            }
            return Some(std::borrow::Cow::Owned(found_change(name, uid)));
        }
        match self.items.next()? {
            Logged::One(c) => Some(std::borrow::Cow::Borrowed(c)),
            Logged::Found {
                name,
                first,
                deltas,
                ..
            } => {
                self.run = Some((name, *first, deltas));
                self.next()
            }
        }
    }
}

impl Serialize for ChangeLog {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for c in self.iter() {
            seq.serialize_element(&*c)?;
        }
        seq.end()
    }
}

/// The `--json` document, serialised field by field to the output (a `serde_json::Value`
/// of it would hold every change of a mailbox whose index is lost, a few hundred bytes per
/// message). Fields in alphabetical order, as the maps of a `Value` are.
#[derive(Serialize)]
struct JsonReport<'a> {
    dry_run: bool,
    mailboxes: &'a [MailboxReport],
    not_found: &'a [String],
    summary: serde_json::Value,
}

/// A report line. The one printed per message added to a mailbox whose index is lost is kept
/// as its facts (the mailbox name shared), not as a `String` each (~50 bytes per message);
/// it prints and serialises to the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// `{name} uid {uid} found - adding`
    Found(Arc<str>, u32),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Text(t) => f.write_str(t),
            Line::Found(name, uid) => write!(f, "{name} uid {uid} found - adding"),
        }
    }
}

impl Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The outcome for one mailbox.
///
/// Serialised fields in alphabetical order: the `--json` report is serialised straight to
/// the output ([`JsonReport`]) and must come out as the sorted maps of a `serde_json::Value`
/// did.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxReport {
    pub changes: ChangeLog,
    /// The entry was created by this run (`-p`, `-f`): `imported` or `new` (`-x`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<&'static str>,
    /// The ACL the mailboxes database entry must get (the header's), when it differs.
    #[serde(skip)]
    db_acl: Option<header::Acl>,
    /// The UIDVALIDITY the mailboxes database entry must get, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_uidvalidity: Option<u32>,
    /// `-f`: mailboxes found below this one without a database entry (internal names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub discovered: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Internal name (what Cyrus's report lines use).
    pub internal: String,
    /// External name.
    pub mailbox: String,
    pub messages: u64,
    /// Whether files were (or, with -n, would be) written.
    pub modified: bool,
    /// `updated` when the mailbox's change of usage was added to its quota root at once
    /// (its previous usage known); every root is recounted at the end of a run anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<&'static str>,
    /// The root to recount at the end of the run.
    #[serde(skip)]
    recount_root: Option<Vec<u8>>,
    #[serde(skip)]
    tempfail: bool,
}

pub fn run(common: &Common, args: &ReconstructArgs) -> anyhow::Result<Outcome> {
    if args.mailboxes_db {
        if !args.mailboxes.is_empty() {
            return Err(UsageError("-m takes no mailbox arguments".into()).into());
        }
        let m = super::reconstruct_m::ReconstructMArgs {
            dry_run: args.dry_run,
            partition: args.partition.clone(),
            ignore_old: args.ignore_old,
        };
        return super::reconstruct_m::run(common, &m);
    }
    if args.header_paths
        && (args.users || args.recursive || args.filesystem || args.partition.is_some())
    {
        return Err(UsageError("-P takes none of -u, -r, -f, -p".into()).into());
    }
    if args.header_paths && args.mailboxes.is_empty() {
        return Err(UsageError("-P: give the paths of cyrus.header files".into()).into());
    }
    if args.no_import && !args.filesystem && args.partition.is_none() {
        return Err(UsageError("-x goes with -p or -f".into()).into());
    }
    if args.partition.is_some() && args.mailboxes.is_empty() {
        return Err(UsageError(
            "When using -p, you must specify a mailbox to attempt to reconstruct.".into(),
        )
        .into());
    }
    if args.partition.is_some() && args.mailboxes.iter().any(|a| a.contains(['*', '%'])) {
        return Err(UsageError("Using wildcards with -p is not supported.".into()).into());
    }
    if args.recursive && args.mailboxes.is_empty() {
        return Err(UsageError("please specify a mailbox to recurse from".into()).into());
    }
    let version = match args.version.as_deref() {
        None => None,
        Some("max") => Some(index::MAX_CYRUS36_VERSION),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (index::MIN_VERSION..=index::MAX_VERSION).contains(&n) => Some(n),
            _ => {
                return Err(UsageError(format!(
                    "-V {v}: cyrus.index versions {} to {} (or max)",
                    index::MIN_VERSION,
                    index::MAX_VERSION
                ))
                .into())
            }
        },
    };
    let config = Config::load(&common.config)?;
    let layout = Layout::from_config(&config).context("laying out the spool")?;
    let nc = NameConfig::from_config(&config).context("reading the namespace options")?;
    if !args.dry_run {
        // Root acts as the spool's owner so every file is created as Cyrus would.
        crate::spool::atomic::become_owner_of(&config.config_directory())
            .context("switching to the owner of the configuration directory")?;
    }
    let mut mboxlist = Mboxlist::load(&config, &nc, LOCK_TIMEOUT)?;
    let aenv = AdoptEnv {
        config: &config,
        layout: &layout,
        nc: &nc,
    };
    if args.header_paths {
        return run_header_paths(common, args, &aenv, &mboxlist);
    }
    let mut known = Known::from_mboxlist(&mboxlist);
    let mut problems: Vec<super::reconstruct_m::Problem> = Vec::new();
    let mut created: HashMap<Vec<u8>, Origin> = HashMap::new();
    if let Some(part) = &args.partition {
        if !layout.partitions.contains_key(part) {
            return Err(UsageError(format!(
                "no partition-{part} in {}",
                common.config.display()
            ))
            .into());
        }
        let mut names = Vec::new();
        for a in &args.mailboxes {
            let n = MboxName::from_external(a.as_bytes(), &nc)
                .map_err(|e| UsageError(format!("mailbox name {a:?}: {e}")))?;
            if mboxlist.live().any(|m| m.name == n) {
                return Err(
                    UsageError(format!("Mailbox {a} already exists.  Cannot specify -p.")).into(),
                );
            }
            names.push(n);
        }
        let new = adopt::for_partition(
            &aenv,
            &mut known,
            part,
            &names,
            args.no_import,
            &mut problems,
        );
        let recs: Vec<MboxRecord> = new.iter().map(|(r, _)| r.clone()).collect();
        let ok = add_entries(&config, &recs, args.dry_run)?;
        for ((r, origin), res) in new.into_iter().zip(ok) {
            match res {
                Ok(()) => {
                    created.insert(r.dbname.clone(), origin);
                    mboxlist.mailboxes.push(r);
                }
                Err(e) => eprintln!("cyrkit: could not create {}: {e}", r.name),
            }
        }
    }
    let (selected, not_found) = select(&mboxlist, &nc, args)?;
    let mut batch: Vec<(MboxRecord, Origin)> = selected
        .into_iter()
        .map(|m| {
            let origin = created.get(&m.dbname).copied().unwrap_or(Origin::Existing);
            (m.clone(), origin)
        })
        .collect();
    let opts = Opts {
        make_changes: !args.dry_run,
        always_parse: args.always_parse,
        do_stat: !args.no_stat,
        guid_rewrite: args.guid_rewrite,
        guid_unlink: args.guid_unlink,
        odd: if args.delete_odd {
            OddFiles::Delete
        } else if args.ignore_odd {
            OddFiles::Ignore
        } else {
            OddFiles::Report
        },
        prefer_db: args.prefer_db,
        version,
        new_uidvalidity: args.new_uidvalidity,
        parse: crate::mime::ParseOptions {
            rfc2047_utf8: config.rfc2047_utf8(),
            maxheaderlines: usize::try_from(config.maxheaderlines()).unwrap_or(1000),
            ..Default::default()
        },
    };
    let quota_roots = quota_roots(&config, &layout);
    let quota_store = crate::spool::quota::QuotaStore::open(&config, &layout).ok();
    let progress = crate::ui::progress_for(
        "reconstruct",
        !common.no_progress && !common.quiet && !common.json,
    );
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .context("starting worker threads")?;
    let env = Env {
        layout: &layout,
        nc: &nc,
        opts: &opts,
        quota_roots: &quota_roots,
        quota_store: quota_store.as_ref(),
    };
    let mut reports: Vec<MailboxReport> = Vec::new();
    let mut db_updates: Vec<(Vec<u8>, DbFix)> = Vec::new();
    let mut total = 0u64;
    // -f: each round's mailboxes may reveal directories below them for the next round.
    while !batch.is_empty() {
        total += batch.len() as u64;
        progress.set_length(total);
        let mut round: Vec<MailboxReport> = pool.install(|| {
            use rayon::prelude::*;
            batch
                .par_iter()
                .map(|(m, origin)| {
                    let r = env.mailbox(m, *origin);
                    progress.inc(1);
                    progress.set_message(&r.mailbox);
                    r
                })
                .collect()
        });
        db_updates.extend(
            batch
                .iter()
                .zip(&round)
                .filter(|(_, r)| r.db_uidvalidity.is_some() || r.db_acl.is_some())
                .map(|((m, _), r)| {
                    let fix = DbFix {
                        uidvalidity: r.db_uidvalidity,
                        acl: r.db_acl.clone(),
                    };
                    (m.dbname.clone(), fix)
                }),
        );
        let mut next: Vec<(MboxRecord, Origin)> = Vec::new();
        if args.filesystem {
            for ((m, _), r) in batch.iter().zip(round.iter_mut()) {
                let found = adopt::discover(&aenv, &mut known, m, args.no_import, &mut problems);
                r.discovered = found.iter().map(|(f, _)| f.name.to_string()).collect();
                next.extend(found);
            }
            let recs: Vec<MboxRecord> = next.iter().map(|(r, _)| r.clone()).collect();
            let ok = add_entries(&config, &recs, args.dry_run)?;
            next = next
                .into_iter()
                .zip(ok)
                .filter_map(|(n, res)| match res {
                    Ok(()) => Some(n),
                    Err(e) => {
                        eprintln!("cyrkit: createmailbox {}: {e}", n.0.name);
                        None
                    }
                })
                .collect();
        }
        reports.append(&mut round);
        batch = next;
    }
    progress.finish();

    if !args.dry_run && !db_updates.is_empty() {
        let mboxlist = Mboxlist::load(&config, &nc, LOCK_TIMEOUT)?;
        update_db_entries(&config, &mboxlist, &db_updates)
            .context("updating the mailboxes database")?;
    }
    let recount: BTreeSet<Vec<u8>> = reports
        .iter()
        .filter_map(|r| r.recount_root.clone())
        .collect();
    let mut quota_failed = false;
    if !args.dry_run && !recount.is_empty() {
        quota_failed = !recount_roots(common, &nc, &recount);
    }
    for a in &not_found {
        let line = super::hints::mailbox_not_found(a, &config.mboxlist_db_path(), &common.config);
        eprintln!("{line}");
    }
    for p in &problems {
        let mut line = String::new();
        if let Some(m) = &p.mailbox {
            line.push_str(&format!("{m}: "));
        }
        if let Some(path) = &p.path {
            line.push_str(&format!("{}: ", path.display()));
        }
        eprintln!("cyrkit: {line}{}", p.message);
    }
    for r in &reports {
        if let Some(e) = &r.error {
            eprintln!("cyrkit: {}: {e}", r.mailbox);
        }
    }
    if common.json {
        let doc = JsonReport {
            dry_run: args.dry_run,
            mailboxes: &reports,
            not_found: &not_found,
            summary: summary(&reports),
        };
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        out.flush()?;
    } else if !common.quiet {
        for r in &reports {
            for c in r.changes.iter() {
                println!("{}", c.line);
            }
            println!("{}", r.mailbox);
            for d in &r.discovered {
                println!("discovered {d}");
            }
        }
        print_table(&reports);
    }
    if reports.iter().any(|r| r.tempfail) {
        return Err(crate::spool::lock::LockError::Timeout {
            path: PathBuf::from("(a mailbox lock)"),
            waited: LOCK_TIMEOUT,
        }
        .into());
    }
    Ok(
        if !not_found.is_empty()
            || quota_failed
            || problems.iter().any(|p| p.error)
            || reports.iter().any(|r| r.error.is_some())
        {
            Outcome::Partial
        } else if args.dry_run
            && reports
                .iter()
                .any(|r| !r.changes.is_empty() || r.modified || r.created.is_some())
        {
            Outcome::Findings
        } else {
            Outcome::Clean
        },
    )
}

/// Creates the database entries of `recs` (with `-n`, only checks nothing is in the way).
fn add_entries(
    config: &Config,
    recs: &[MboxRecord],
    dry_run: bool,
) -> anyhow::Result<Vec<Result<(), String>>> {
    if recs.is_empty() {
        return Ok(Vec::new());
    }
    if dry_run {
        return Ok(recs.iter().map(|_| Ok(())).collect());
    }
    adopt::write_entries(config, recs, false).context("adding entries to the mailboxes database")
}

/// `-P`: (re)create the database entries the given `cyrus.header` files describe.
fn run_header_paths(
    common: &Common,
    args: &ReconstructArgs,
    aenv: &AdoptEnv<'_>,
    mboxlist: &Mboxlist,
) -> anyhow::Result<Outcome> {
    let known = Known::from_mboxlist(mboxlist);
    let mut failed = false;
    let mut done = Vec::new();
    for a in &args.mailboxes {
        match adopt::entry_from_header_path(aenv, mboxlist, &known, a) {
            Ok(r) => done.push(r),
            Err(e) => {
                eprintln!("cyrkit: {e}");
                failed = true;
            }
        }
    }
    let results = if args.dry_run {
        done.iter().map(|_| Ok(())).collect()
    } else {
        adopt::write_entries(aenv.config, &done, true).context("writing the mailboxes database")?
    };
    let mut lines = Vec::new();
    for (r, res) in done.iter().zip(results) {
        let id = String::from_utf8_lossy(r.entry.uniqueid.as_deref().unwrap_or_default());
        match res {
            Ok(()) => lines.push(format!("created mbentry for {} ({id})", r.name)),
            Err(e) => {
                eprintln!(
                    "cyrkit: failed to create mbentry for {} ({id}): {e}",
                    r.name
                );
                failed = true;
            }
        }
    }
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": args.dry_run,
                "created": lines,
            }))?
        );
    } else if !common.quiet {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(if failed {
        Outcome::Partial
    } else if args.dry_run && !lines.is_empty() {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// Recounts quota roots whose mailboxes' previous usage is unknown (a lost or damaged
/// index, an adopted mailbox), as `cyrkit quota -f ROOT` does. Returns false on failure.
fn recount_roots(common: &Common, nc: &NameConfig, roots: &BTreeSet<Vec<u8>>) -> bool {
    let mut prefixes = Vec::new();
    let mut domains = Vec::new();
    for r in roots {
        if let Some(d) = r.strip_suffix(b"!") {
            domains.push(String::from_utf8_lossy(d).into_owned());
            continue;
        }
        match MboxName::from_internal(r, nc).and_then(|n| n.to_external(nc)) {
            Ok(e) => prefixes.push(String::from_utf8_lossy(&e).into_owned()),
            Err(e) => {
                eprintln!(
                    "cyrkit: quota root {}: {e}; not recounted",
                    String::from_utf8_lossy(r)
                );
                return false;
            }
        }
    }
    let quiet = Common {
        config: common.config.clone(),
        json: false,
        quiet: true,
        no_progress: true,
    };
    let mut ok = true;
    let mut runs: Vec<super::quota::QuotaArgs> = Vec::new();
    let base = super::quota::QuotaArgs {
        fix: true,
        dry_run: false,
        domain: None,
        users: false,
        cyrus_json: false,
        remove_unused: false,
        prefixes: Vec::new(),
    };
    if !prefixes.is_empty() {
        runs.push(super::quota::QuotaArgs {
            prefixes,
            ..base.clone()
        });
    }
    for d in domains {
        runs.push(super::quota::QuotaArgs {
            domain: Some(d),
            ..base.clone()
        });
    }
    for q in runs {
        match super::quota::run(&quiet, &q) {
            Ok(Outcome::Clean) | Ok(Outcome::Findings) => {}
            Ok(_) => ok = false,
            Err(e) => {
                eprintln!("cyrkit: recounting quota: {}", super::error_chain(&e));
                ok = false;
            }
        }
    }
    ok
}

/// What a mailbox's database entry must get from its files.
#[derive(Debug, Clone)]
struct DbFix {
    uidvalidity: Option<u32>,
    acl: Option<header::Acl>,
}

impl DbFix {
    fn apply(&self, e: &mut crate::format::mboxlist::MboxEntry) {
        if let Some(uv) = self.uidvalidity {
            e.uidvalidity = uv;
        }
        if let Some(acl) = &self.acl {
            e.acl = Some(acl.clone());
        }
    }
}

/// Sets the UIDVALIDITY and ACL of the `N` and `I` records of the given mailboxes (by
/// dbname), under the database's exclusive lock: the pairs are re-read, changed, and written
/// as a fresh file of the configured backend that replaces the old one atomically.
fn update_db_entries(
    config: &Config,
    mboxlist: &Mboxlist,
    updates: &[(Vec<u8>, DbFix)],
) -> anyhow::Result<()> {
    use crate::format::cyrusdb::Backend;
    use crate::format::mboxlist::{write_dlist_value, MboxEntry, MboxKey};
    use crate::format::{dlist, flat, skiplist, twoskip};
    if !mboxlist.v36 {
        anyhow::bail!("the mailboxes database predates Cyrus 3.5; not updated");
    }
    let path = config.mboxlist_db_path();
    let backend = crate::spool::db::codec_for(config.mboxlist_db())
        .ok_or_else(|| anyhow::anyhow!("unsupported mailboxes database backend"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let held = crate::spool::lock::lock_file(
        file,
        &path,
        crate::spool::lock::LockMode::Exclusive,
        LOCK_TIMEOUT,
    )?;
    let map = crate::spool::db::map_file(held.file())?;
    let mut pairs = crate::spool::db::read_pairs(&map, backend)?;
    drop(map);
    let by_name: HashMap<&[u8], &DbFix> = updates.iter().map(|(n, f)| (n.as_slice(), f)).collect();
    let mut ids: HashMap<Vec<u8>, &DbFix> = HashMap::new();
    for (k, v) in pairs.iter_mut() {
        if let Ok(MboxKey::Name(n)) = MboxKey::decode(k) {
            if let Some(&fix) = by_name.get(n.as_slice()) {
                let mut e = MboxEntry::from_v36_dlist(&dlist::parse(v)?)?;
                fix.apply(&mut e);
                if let Some(id) = &e.uniqueid {
                    ids.insert(id.clone(), fix);
                }
                *v = write_dlist_value(&e.to_v36_name_dlist());
            }
        }
    }
    for (k, v) in pairs.iter_mut() {
        if let Ok(MboxKey::Id(id)) = MboxKey::decode(k) {
            if let Some(&fix) = ids.get(&id) {
                let mut e = MboxEntry::from_v36_dlist(&dlist::parse(v)?)?;
                fix.apply(&mut e);
                *v = write_dlist_value(&e.to_v36_id_dlist());
            }
        }
    }
    let bytes = match backend {
        Backend::Twoskip => twoskip::write_fresh(
            &pairs,
            &twoskip::FreshOptions {
                order: backend.default_order(),
                ..Default::default()
            },
        )?,
        Backend::Skiplist => skiplist::write_fresh(
            &pairs,
            &skiplist::FreshOptions {
                order: backend.default_order(),
                seed: 0,
                last_recovery: 0,
            },
        )?,
        Backend::Flat => flat::write_fresh(&pairs)?,
    };
    crate::spool::atomic::replace(&path, &bytes)?;
    drop(held);
    Ok(())
}

fn summary(reports: &[MailboxReport]) -> serde_json::Value {
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (kind, n) in reports.iter().flat_map(|r| r.changes.kind_counts()) {
        *by_kind.entry(kind).or_default() += n;
    }
    serde_json::json!({
        "mailboxes": reports.len(),
        "mailboxes_changed": reports.iter().filter(|r| r.modified).count(),
        "messages": reports.iter().map(|r| r.messages).sum::<u64>(),
        "errors": reports.iter().filter(|r| r.error.is_some()).count(),
        "changes": by_kind,
    })
}

fn print_table(reports: &[MailboxReport]) {
    let mut t = crate::ui::table(&["reconstruct", "count"]);
    let s = summary(reports);
    let row = |t: &mut comfy_table::Table, k: &str, v: &serde_json::Value| {
        t.add_row(vec![k.to_string(), v.to_string()]);
    };
    for k in ["mailboxes", "mailboxes_changed", "messages", "errors"] {
        row(&mut t, k, &s[k]);
    }
    if let Some(m) = s["changes"].as_object() {
        for (k, v) in m {
            row(&mut t, k, v);
        }
    }
    println!("{t}");
}

/// Quota roots by internal name (to give a rebuilt cyrus.header its `Q`).
fn quota_roots(config: &Config, layout: &Layout) -> Vec<Vec<u8>> {
    crate::spool::quota::load_roots(config, layout, LOCK_TIMEOUT)
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

/// Cyrus's mailbox patterns: `*` matches anything, `%` anything but the separator.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            (0..=name.len()).any(|i| glob(rest, name.get(i..).unwrap_or_default()))
        }
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name.get(i - 1) != Some(&b'.'))
            .any(|i| glob(rest, name.get(i..).unwrap_or_default())),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, nr)| n == c && glob(rest, nr)),
    }
}

/// The mailboxes the arguments name, and the arguments that name none.
fn select<'m>(
    mboxlist: &'m Mboxlist,
    nc: &NameConfig,
    args: &ReconstructArgs,
) -> anyhow::Result<(Vec<&'m MboxRecord>, Vec<String>)> {
    if args.mailboxes.is_empty() {
        return Ok((mboxlist.live().collect(), Vec::new()));
    }
    let mut wanted: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for a in &args.mailboxes {
        if args.users {
            let n = MboxName::user_inbox(a.as_bytes(), nc)
                .map_err(|e| UsageError(format!("user {a:?}: {e}")))?;
            wanted.push((a.clone(), n.to_internal(), true));
        } else if a.contains(['*', '%']) {
            // Patterns are matched on the internal name with the external separator mapped.
            let p = if nc.unixhierarchysep {
                a.replace('.', "^").replace('/', ".")
            } else {
                a.clone()
            };
            wanted.push((a.clone(), p.into_bytes(), false));
        } else {
            let n = mailbox::internal_arg(a, nc, args.recursive).map_err(UsageError)?;
            wanted.push((a.clone(), n, args.recursive));
        }
    }
    let covers = |(arg, w, rec): &(String, Vec<u8>, bool), int: &[u8]| {
        if arg.contains(['*', '%']) && !args.users {
            return glob(w, int);
        }
        int == w.as_slice()
            || (*rec
                && int.len() > w.len()
                && int.starts_with(w)
                && int.get(w.len()) == Some(&b'.'))
    };
    let selected: Vec<&MboxRecord> = mboxlist
        .live()
        .filter(|m| {
            let int = m.name.to_internal();
            wanted.iter().any(|w| covers(w, &int))
        })
        .collect();
    let not_found = wanted
        .iter()
        .filter(|w| !selected.iter().any(|m| covers(w, &m.name.to_internal())))
        .map(|w| w.0.clone())
        .collect();
    Ok((selected, not_found))
}

struct Env<'a> {
    layout: &'a Layout,
    nc: &'a NameConfig,
    opts: &'a Opts,
    quota_roots: &'a [Vec<u8>],
    /// Where quota usage is written (`None`: a backend cyrkit cannot write).
    quota_store: Option<&'a crate::spool::quota::QuotaStore>,
}

/// A parsed message file, remembered across re-plans by file identity.
type ParseKey = (u64, u64, u64, i64);

/// A multiply-rotate hasher for [`ParseKey`]s (Firefox's "Fx" hash): the keys are file
/// identities from this host's own directory listing, not chosen by an attacker, and
/// SipHash over 100 000s of them is a noticeable part of the serial planning phase.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(K);
    }

    fn write_i64(&mut self, x: i64) {
        self.write_u64(x as u64);
    }
}

type ParseMap = HashMap<ParseKey, Parsed, std::hash::BuildHasherDefault<KeyHasher>>;

/// Parse results by file. The bulk (from [`Parser::prefetch`]) is not held in memory: each
/// prefetch writes its results to a [`SlotTable`] file, one slot per file in the order of its
/// list (ascending UIDs), and only that list's UIDs are kept (4 bytes per file, against 104
/// for a key and its result) to find a file's slot; a slot read back counts only if the key
/// stored in it is the file's identity now (a re-plan under the lock may list a changed
/// file under the same UID). The few files parsed one at a time, and every result when the
/// table cannot be written, go to a small map.
#[derive(Default)]
struct ParseResults {
    table: Option<SlotTable>,
    /// Per prefetch: its first slot and the UIDs of its files, ascending.
    runs: Vec<(u64, Vec<u32>)>,
    more: ParseMap,
}

impl ParseResults {
    /// The result for `f` as it is listed now; `None`: not parsed (or its parse failed).
    fn get(&mut self, f: &MessageFile) -> Option<Parsed> {
        let key = parse_key(f);
        if let Some(table) = &mut self.table {
            for (first, uids) in self.runs.iter().rev() {
                let Ok(i) = uids.binary_search(&f.uid) else {
                    continue;
                };
                let slot = first.saturating_add(i as u64);
                if let Some((k, p)) = table.read(slot) {
                    if k == key {
                        return Some(p);
                    }
                }
            }
        }
        self.more.get(&key).copied()
    }
}

/// Bytes of a [`SlotTable`] slot: the file's [`ParseKey`] (dev, ino, size, mtime), the
/// [`Parsed`] fields in declaration order, and [`SLOT_VALID`] (zeros in a slot whose parse
/// failed, or that was never written), all little-endian.
const SLOT: usize = 104;
/// Offset of the valid mark in a slot.
const SLOT_OFFSET_VALID: usize = 100;
/// The valid mark ("SLOT").
const SLOT_VALID: u32 = 0x544f_4c53;
/// Slots a [`SlotTable`] reads at once (256 KB).
const SLOT_WINDOW: usize = 256 * 1024 / SLOT;

/// Packs `key` and `p` (`None`: a failed parse, an invalid slot) as one slot onto `out`.
fn pack_slot(key: &ParseKey, p: Option<&Parsed>, out: &mut Vec<u8>) {
    let start = out.len();
    let (dev, ino, size, mtime) = *key;
    for v in [dev, ino, size] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&mtime.to_le_bytes());
    match p {
        Some(p) => {
            out.extend_from_slice(&p.guid);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&p.header_size.to_le_bytes());
            for v in [p.sentdate, p.gmtime, p.entry_off, p.entry_len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&p.entry_crc.to_le_bytes());
            out.extend_from_slice(&SLOT_VALID.to_le_bytes());
        }
        None => out.resize(start + SLOT, 0),
    }
    debug_assert_eq!(out.len() - start, SLOT);
}

/// The key and result [`pack_slot`] packed into `b` (`None`: invalid or short).
fn unpack_slot(b: &[u8]) -> Option<(ParseKey, Parsed)> {
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?)) };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    if u32_at(SLOT_OFFSET_VALID)? != SLOT_VALID {
        return None;
    }
    let key = (u64_at(0)?, u64_at(8)?, u64_at(16)?, u64_at(24)? as i64);
    Some((
        key,
        Parsed {
            guid: b.get(32..52)?.try_into().ok()?,
            size: u64_at(52)?,
            header_size: u32_at(60)?,
            sentdate: u64_at(64)?,
            gmtime: u64_at(72)?,
            entry_off: u64_at(80)?,
            entry_len: u64_at(88)?,
            entry_crc: u32_at(96)?,
        },
    ))
}

/// Fixed-size slots of parse results in an unnamed file, read back through a window: the
/// plan asks for them mostly in the order they were written (old records by UID, then the
/// files found, then those rediscovered), so a miss refills the window from the slot asked
/// for onwards.
struct SlotTable {
    file: std::fs::File,
    /// Slots allotted so far (a slot never written reads as zeros, or past the end: absent).
    len: u64,
    window: Vec<u8>,
    /// The first slot in `window`, and how many it holds.
    win_first: u64,
    win_count: u64,
}

impl SlotTable {
    /// An unnamed file in `dir` (where the plan's other spills go), else in the temporary
    /// directory.
    fn create(dir: &std::path::Path) -> std::io::Result<SlotTable> {
        use std::os::unix::fs::OpenOptionsExt;
        let unnamed = |d: &std::path::Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(d)
        };
        let file = unnamed(dir).or_else(|_| unnamed(&std::env::temp_dir()))?;
        Ok(SlotTable {
            file,
            len: 0,
            window: Vec::new(),
            win_first: 0,
            win_count: 0,
        })
    }

    /// Writes packed slots from slot `first` on (callable from several threads at once, for
    /// slots that do not overlap).
    fn write(&self, first: u64, slots: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let off = first
            .checked_mul(SLOT as u64)
            .ok_or_else(|| std::io::Error::other("slot offset overflows"))?;
        self.file.write_all_at(slots, off)
    }

    /// The key and result in `slot`, through the window (`None`: invalid, unwritten,
    /// unreadable).
    fn read(&mut self, slot: u64) -> Option<(ParseKey, Parsed)> {
        use std::os::unix::fs::FileExt;
        if slot >= self.len {
            return None;
        }
        if !(self.win_first..self.win_first.saturating_add(self.win_count)).contains(&slot) {
            let n = usize::try_from((self.len - slot).min(SLOT_WINDOW as u64)).ok()?;
            self.window.resize(n * SLOT, 0);
            self.win_first = slot;
            self.win_count = 0;
            let mut got = 0usize;
            let off = slot.checked_mul(SLOT as u64)?;
            while got < self.window.len() {
                match self
                    .file
                    .read_at(self.window.get_mut(got..)?, off.saturating_add(got as u64))
                {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            self.win_count = (got / SLOT) as u64;
        }
        let i = slot
            .checked_sub(self.win_first)
            .filter(|&i| i < self.win_count)?;
        let i = usize::try_from(i).ok()?;
        unpack_slot(self.window.get(i * SLOT..(i + 1) * SLOT)?)
    }
}

/// What a plan needs of a parsed message file: the record's fields, and where its cache
/// entry waits in the mailbox's [`Spill`] (entries are not kept in memory).
#[derive(Debug, Clone, Copy)]
struct Parsed {
    guid: [u8; 20],
    size: u64,
    header_size: u32,
    sentdate: u64,
    gmtime: u64,
    entry_off: u64,
    entry_len: u64,
    entry_crc: u32,
}

/// Parses message files for one mailbox's plans: the files a plan will need are parsed in
/// parallel up front ([`Parser::prefetch`], on the current rayon pool, so `-j` bounds all
/// threads), and every result is remembered by file identity for a re-plan under the lock.
struct Parser<'a> {
    opts: &'a crate::mime::ParseOptions,
    spill: Arc<Spill>,
    /// The data directory, and an open descriptor of it when it could be opened: message
    /// files (all from its listing) are opened relative to it.
    dir: (&'a std::path::Path, Option<DirFd>),
    /// Where the [`SlotTable`] of results goes (the plan's spill directory).
    table_dir: PathBuf,
    done: ParseResults,
    buf: Vec<u8>,
}

/// Files parsed by one task of [`Parser::prefetch`]; their entries (a few hundred KB) are
/// spilled with one write.
const PREFETCH_CHUNK: usize = 256;

fn parse_key(f: &MessageFile) -> ParseKey {
    (f.dev, f.ino, f.size, f.mtime)
}

impl Parser<'_> {
    /// Reads (into `buf`, reused: it only grows, so its bytes are zeroed once), parses and
    /// hashes one file, and appends its cache entry to `entries` (the returned `entry_off` is
    /// its offset there; the caller spills `entries` and rebases it). The file is opened
    /// relative to the data directory and read to its end without the `fstat` of
    /// `read_to_end`: its size is known from the listing (only as a hint: the bytes read are
    /// what count).
    fn parse_file(
        opts: &crate::mime::ParseOptions,
        dir: (&std::path::Path, Option<&DirFd>),
        f: &MessageFile,
        buf: &mut Vec<u8>,
        entries: &mut Vec<u8>,
    ) -> std::io::Result<Parsed> {
        use std::io::Read;
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let name = f.name();
        let mut file = match dir {
            (_, Some(d)) => d.open_file(std::ffi::OsStr::new(&name))?,
            (path, None) => std::fs::File::open(path.join(&name))?,
        };
        let want = usize::try_from(f.size).unwrap_or(0).saturating_add(1);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut len = 0usize;
        loop {
            if len == buf.len() {
                buf.resize(buf.len().saturating_mul(2).max(64 * 1024), 0);
            }
            let n = match file.read(buf.get_mut(len..).unwrap_or_default()) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            len += n;
        }
        drop(file);
        let data = buf.get(..len).unwrap_or_default();
        let msg = crate::mime::message::parse_message(data, opts)
            .map_err(|e| invalid(format!("failed to parse: {e}")))?;
        let entry = msg.cache_entry().map_err(|e| invalid(e.to_string()))?;
        let entry_off = entries.len() as u64;
        entries.extend_from_slice(&entry);
        Ok(Parsed {
            guid: msg.guid,
            size: msg.size,
            header_size: msg.header_size,
            sentdate: msg.sentdate,
            gmtime: msg.gmtime,
            entry_off,
            entry_len: entry.len() as u64,
            entry_crc: crc32(&entry),
        })
    }

    /// Parses `files` in parallel (those not parsed already), in runs of
    /// [`PREFETCH_CHUNK`] consecutive files whose entries are spilled with one write: a run's
    /// entries lie in the spill in the order of `files` (the order the plan pushes them), so
    /// the new cache is copied from the spill in long ranges, not one range per message.
    /// Each run's results go to the [`SlotTable`] with one write too (none is held for the
    /// whole prefetch). Failures are not kept: the plan meets them again through
    /// [`Parser::parse`], which reports them. `files` is taken to be filtered in place (a
    /// copy would be another 8 bytes per file).
    fn prefetch(&mut self, files: Vec<&MessageFile>) {
        use rayon::prelude::*;
        let mut todo = files;
        todo.retain(|f| self.done.get(f).is_none());
        if todo.is_empty() {
            return;
        }
        // Slots are found by binary search over the UIDs (the plan lists them ascending).
        todo.sort_by_key(|f| f.uid);
        if self.done.table.is_none() {
            self.done.table = SlotTable::create(&self.table_dir).ok();
        }
        let first = self.done.table.as_ref().map_or(0, |t| t.len);
        let (opts, spill, dir) = (self.opts, &*self.spill, (self.dir.0, self.dir.1.as_ref()));
        let table = self.done.table.as_ref();
        // Only the results whose slots could not be written come back.
        let unsaved: Vec<Vec<(ParseKey, Parsed)>> = todo
            .par_chunks(PREFETCH_CHUNK)
            .enumerate()
            .map_init(Vec::new, |buf, (c, chunk)| {
                let mut entries = Vec::new();
                let mut ps: Vec<Option<Parsed>> = chunk
                    .iter()
                    .map(|f| Self::parse_file(opts, dir, f, buf, &mut entries).ok())
                    .collect();
                match spill.append(&entries) {
                    Ok(base) => ps
                        .iter_mut()
                        .flatten()
                        .for_each(|p| p.entry_off = p.entry_off.saturating_add(base)),
                    Err(_) => ps.iter_mut().for_each(|p| *p = None),
                }
                let mut slots = Vec::with_capacity(chunk.len() * SLOT);
                for (f, p) in chunk.iter().zip(&ps) {
                    pack_slot(&parse_key(f), p.as_ref(), &mut slots);
                }
                let at = first.saturating_add((c * PREFETCH_CHUNK) as u64);
                match table.map(|t| t.write(at, &slots)) {
                    Some(Ok(())) => Vec::new(),
                    _ => chunk
                        .iter()
                        .zip(ps)
                        .filter_map(|(f, p)| Some((parse_key(f), p?)))
                        .collect(),
                }
            })
            .collect();
        self.done.more.extend(unsaved.into_iter().flatten());
        if let Some(t) = &mut self.done.table {
            t.len = first.saturating_add(todo.len() as u64);
            self.done
                .runs
                .push((first, todo.iter().map(|f| f.uid).collect()));
        }
    }

    fn parse(&mut self, f: &MessageFile) -> std::io::Result<Parsed> {
        if let Some(p) = self.done.get(f) {
            return Ok(p);
        }
        let mut entry = Vec::new();
        let mut p = Self::parse_file(
            self.opts,
            (self.dir.0, self.dir.1.as_ref()),
            f,
            &mut self.buf,
            &mut entry,
        )?;
        p.entry_off = self.spill.append(&entry)?;
        self.done.more.insert(parse_key(f), p);
        Ok(p)
    }
}

impl Env<'_> {
    fn mailbox(&self, m: &MboxRecord, origin: Origin) -> MailboxReport {
        let internal = String::from_utf8_lossy(&m.name.to_internal()).into_owned();
        let ext = m
            .name
            .to_external(self.nc)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| internal.clone());
        let mut report = MailboxReport {
            mailbox: ext,
            internal,
            changes: ChangeLog::default(),
            modified: false,
            messages: 0,
            error: None,
            db_uidvalidity: None,
            db_acl: None,
            created: match origin {
                Origin::Existing => None,
                Origin::Imported => Some("imported"),
                Origin::Fresh => Some("new"),
            },
            discovered: Vec::new(),
            quota: None,
            recount_root: None,
            tempfail: false,
        };
        if let Err(e) = self.mailbox_inner(m, origin, &mut report) {
            report.tempfail = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<crate::spool::lock::LockError>(),
                    Some(crate::spool::lock::LockError::Timeout { .. })
                )
            });
            report.error = Some(super::error_chain(&e));
        }
        report
    }

    fn mailbox_inner(
        &self,
        m: &MboxRecord,
        origin: Origin,
        report: &mut MailboxReport,
    ) -> anyhow::Result<()> {
        let files = MailboxFiles::locate(self.layout, m)?;
        // A dry run only needs the entries' sizes and CRCs.
        let spill = if self.opts.make_changes {
            Spill::near(files.cache.parent().unwrap_or(&files.data_dir))
        } else {
            Spill::discard()
        };
        let ctx = PlanCtx {
            name: &report.internal,
            ext: &report.mailbox,
            m,
            files: &files,
            opts: self.opts,
            now: now_secs(),
            quotaroot: crate::spool::quota::owning_root(self.quota_roots, &m.name.to_internal())
                .map(<[u8]>::to_vec),
            fresh: origin == Origin::Fresh,
        };
        let mut parse = Parser {
            opts: &self.opts.parse,
            spill: Arc::new(spill),
            dir: (&files.data_dir, DirFd::open(&files.data_dir).ok()),
            table_dir: ctx.spill_dir(),
            done: ParseResults::default(),
            buf: Vec::new(),
        };
        // A new mailbox (-x) is built from the message files alone.
        let read = |files: &MailboxFiles| -> std::io::Result<Snapshot> {
            let mut s = Snapshot::read(files)?;
            if origin == Origin::Fresh {
                s.header = None;
                s.index = None;
                s.cache = None;
            }
            Ok(s)
        };
        if !self.opts.make_changes {
            let _locks = mailbox::lock(self.layout, m, &files, OpenMode::Read, LOCK_TIMEOUT)?;
            let snap = read(&files)?;
            let plan = plan(&ctx, &snap, &mut parse)?;
            report.changes = plan.changes;
            report.modified = !plan.files.is_empty();
            report.messages = plan.messages;
            report.db_uidvalidity = plan.db_uidvalidity;
            report.db_acl = plan.db_acl;
            return Ok(());
        }
        // Parse outside the exclusive lock, then lock, re-read, re-plan if anything moved.
        let first = read(&files)?;
        let first_plan = plan(&ctx, &first, &mut parse)?;
        // Only what the comparison needs of the first snapshot is kept: its listing (a
        // `PathBuf` and a tree node per file) would be held next to the second one.
        let first = SnapshotKey::of(first);
        let locks = mailbox::lock(self.layout, m, &files, OpenMode::Exclusive, LOCK_TIMEOUT)?;
        let snap = read(&files)?;
        let p = if first.matches(&snap) {
            first_plan
        } else {
            drop(first_plan);
            plan(&ctx, &snap, &mut parse)?
        };
        mailbox::commit(&files, &p.files)?;
        // Quota, as `mailbox_commit` → `quota_update_useds` does, under the mailbox's lock:
        // the change is added to the root at once, so deliveries meanwhile see the right
        // usage. The root is recounted at the end of the run too (`quota -f` for it): that
        // also covers a mailbox whose previous usage is unknown (lost or inconsistent
        // index, adopted mailbox), drift that predates this run, and a run that crashed
        // between the mailbox and its root.
        if let Some(root) = &p.quotaroot {
            if let (Origin::Existing, Some(old)) = (origin, p.old_usage) {
                if old != p.new_usage {
                    let store = self.quota_store.ok_or_else(|| {
                        anyhow::anyhow!("quota_db is not a backend cyrkit writes")
                    })?;
                    let name = m.name.to_internal();
                    if crate::spool::quota::charge_root(
                        store,
                        root,
                        &name,
                        &old,
                        &p.new_usage,
                        LOCK_TIMEOUT,
                    )
                    .with_context(|| format!("quota root {}", String::from_utf8_lossy(root)))?
                    {
                        report.quota = Some("updated");
                    }
                }
            }
            report.recount_root = Some(root.clone());
        }
        drop(locks);
        report.changes = p.changes;
        report.modified = !p.files.is_empty();
        report.messages = p.messages;
        report.db_uidvalidity = p.db_uidvalidity;
        report.db_acl = p.db_acl;
        Ok(())
    }
}

/// A [`Snapshot`] reduced to what decides whether a plan made from it still holds: the
/// header's bytes, the cache's identity, the odd files as they are, and SHA-1 digests (with
/// lengths) of the index's bytes and of the listing: per message file its UID, name length
/// (which, with the UID, determines the name: `0123.` and `123.` are both UID 123), size,
/// mtime and identity. Digests, not copies: the index (104 bytes per message) and the listing
/// keys (40 bytes per message) would otherwise be held next to the second snapshot. The data
/// digested is this host's own files, not chosen to collide by whoever could also change
/// them under the lock's nose: a collision would need a SHA-1 chosen-prefix attack on bytes
/// the attacker does not control.
#[derive(Debug)]
struct SnapshotKey {
    header: Option<Vec<u8>>,
    index: Option<(u64, Option<[u8; 20]>)>,
    cache: Option<CacheFile>,
    messages: (usize, [u8; 20]),
    odd: Vec<PathBuf>,
}

/// The digest of the message files of a listing, in UID order: for each, uid, name length,
/// size, mtime, dev and ino as fixed-width little-endian fields.
fn listing_digest(listing: &mailbox::DirListing) -> (usize, [u8; 20]) {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    for f in listing.messages.values() {
        h.update(f.uid.to_le_bytes());
        h.update(f.name_len.to_le_bytes());
        h.update(f.size.to_le_bytes());
        h.update(f.mtime.to_le_bytes());
        h.update(f.dev.to_le_bytes());
        h.update(f.ino.to_le_bytes());
    }
    (listing.messages.len(), h.finalize().into())
}

impl SnapshotKey {
    fn of(s: Snapshot) -> SnapshotKey {
        SnapshotKey {
            messages: listing_digest(&s.listing),
            odd: s.listing.odd,
            header: s.header,
            index: s.index.as_ref().map(|f| (f.len(), f.digest())),
            cache: s.cache,
        }
    }

    /// Whether `s` is the snapshot this key was made of (same bytes, same files).
    fn matches(&self, s: &Snapshot) -> bool {
        self.header == s.header
            && self.index == s.index.as_ref().map(|f| (f.len(), f.digest()))
            && self.cache == s.cache
            && self.odd == s.listing.odd
            && self.messages == listing_digest(&s.listing)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The plan

struct PlanCtx<'a> {
    /// Internal name, as Cyrus's report lines print it.
    name: &'a str,
    ext: &'a str,
    m: &'a MboxRecord,
    files: &'a MailboxFiles,
    opts: &'a Opts,
    now: u64,
    /// The quota root Cyrus would give the mailbox (for a rebuilt cyrus.header).
    quotaroot: Option<Vec<u8>>,
    /// A new mailbox (-x): its old metadata files are ignored.
    fresh: bool,
}

/// What a reconstruct of one mailbox changes.
#[derive(Debug, Default)]
struct Plan {
    changes: ChangeLog,
    files: Changes,
    messages: u64,
    db_uidvalidity: Option<u32>,
    db_acl: Option<header::Acl>,
    /// The quota root the new header names.
    quotaroot: Option<Vec<u8>>,
    /// What the mailbox charged its root before, when that is known: the old index header
    /// passed its CRC and its counts agree with its own records.
    old_usage: Option<Usage>,
    /// What it charges now.
    new_usage: Usage,
}

impl Plan {
    fn say(&mut self, kind: &'static str, uid: Option<u32>, line: String) {
        self.changes.push(Change {
            kind,
            line: Line::Text(line),
            uid,
        });
    }
}

/// What survives of a `cyrus.index`, found by one pass over it. The good records are not
/// held: [`OldIndex::each`] reads them again through a window, with the same tests, so every
/// pass sees the same records (the file read is the one the snapshot digested).
#[derive(Debug, Default)]
struct OldIndex {
    file: Option<IndexFile>,
    /// Version and sizes the records were read with.
    version: Option<u32>,
    /// The header, only when its CRC is good.
    header: Option<IndexHeader>,
    /// The header as parsed even if its CRC is bad (values not trusted).
    raw: Option<IndexHeader>,
    /// Header and record sizes of `version`.
    hsize: usize,
    rsize: usize,
    /// Record slots to look at.
    slots: usize,
    /// How many records have a good CRC and a UID above the previous good one.
    good: usize,
    /// The highest modseq and UID among them.
    max_modseq: u64,
    max_uid: u32,
    /// Records wiped (bad CRC or out of order): (record number, uid as read).
    wiped: Vec<(u32, u32)>,
}

/// One record slot of an old index, as [`OldIndex::scan`] judges it.
enum Slot {
    Good(IndexRecord),
    Wiped(u32, u32),
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads what survives of an index: the header if its CRC holds, and every record whose
/// own CRC holds. When the header is damaged the version is taken from it if plausible,
/// else guessed from the sizes it records, else 17.
fn read_old_index(file: Option<&IndexFile>) -> anyhow::Result<OldIndex> {
    let mut out = OldIndex::default();
    let Some(file) = file else { return Ok(out) };
    let largest = (12..=20).filter_map(index::header_size).max().unwrap_or(0);
    let head = file
        .read_at(0, largest)
        .context("reading the header of cyrus.index")?;
    let fits = |v: u32| match (index::header_size(v), index::record_size(v)) {
        (Some(h), Some(r)) => {
            be32(&head, index::OFFSET_START_OFFSET) == Some(h as u32)
                && be32(&head, index::OFFSET_RECORD_SIZE) == Some(r as u32)
        }
        _ => false,
    };
    let stated = be32(&head, index::OFFSET_MINOR_VERSION).filter(|&v| fits(v));
    let version = stated
        .or_else(|| {
            [17, 16, 15, 14, 13, 12, 19, 20]
                .into_iter()
                .find(|&v| fits(v))
        })
        .unwrap_or(index::DEFAULT_VERSION);
    let (Some(hsize), Some(rsize)) = (index::header_size(version), index::record_size(version))
    else {
        return Ok(out);
    };
    if head.len() < hsize {
        return Ok(out);
    }
    out.file = Some(file.clone());
    out.version = Some(version);
    (out.hsize, out.rsize) = (hsize, rsize);
    let header_ok = stated.is_some()
        && be32(&head, hsize - 4) == Some(crc32(head.get(..hsize - 4).unwrap_or_default()));
    let mut raw = head.get(..hsize).map(<[u8]>::to_vec).unwrap_or_default();
    if stated.is_none() {
        raw[index::OFFSET_MINOR_VERSION..index::OFFSET_MINOR_VERSION + 4]
            .copy_from_slice(&version.to_be_bytes());
    }
    out.raw = index::parse_header(&raw).ok();
    if header_ok {
        out.header = out.raw.clone();
    }
    let present = usize::try_from((file.len() - hsize as u64) / rsize as u64).unwrap_or(0);
    out.slots = match &out.header {
        Some(h) => present.min(h.num_records as usize),
        None => present,
    };
    let (mut good, mut max_modseq, mut max_uid, mut wiped) = (0, 0, 0, Vec::new());
    out.scan(|slot| {
        match slot {
            Slot::Good(r) => {
                good += 1;
                max_modseq = max_modseq.max(r.modseq);
                max_uid = max_uid.max(r.uid);
            }
            Slot::Wiped(recno, uid) => wiped.push((recno, uid)),
        }
        Ok(())
    })?;
    (out.good, out.max_modseq, out.max_uid, out.wiped) = (good, max_modseq, max_uid, wiped);
    Ok(out)
}

impl OldIndex {
    /// Reads every record slot in order and judges it: good (its CRC holds and its UID is
    /// above the previous good one) or wiped. Zeroed slots past the records of a damaged
    /// header are skipped.
    fn scan(&self, mut f: impl FnMut(Slot) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let (Some(version), hsize, rsize) = (self.version, self.hsize, self.rsize) else {
            return Ok(());
        };
        let mut window = file.window();
        let mut prev = 0u32;
        for i in 0..self.slots {
            let at = (hsize as u64).saturating_add((i as u64).saturating_mul(rsize as u64));
            let Some(rb) = window
                .get(at, rsize)
                .context("reading the records of cyrus.index")?
            else {
                break;
            };
            let recno = u32::try_from(i).unwrap_or(u32::MAX);
            let uid = be32(rb, index::OFFSET_UID).unwrap_or(0);
            if rb.iter().all(|&b| b == 0) && self.header.is_none() {
                continue; // zeroed space past the records of a damaged header
            }
            if !index::record_crc_ok(rb, version) || uid <= prev {
                f(Slot::Wiped(recno, uid))?;
                continue;
            }
            match index::parse_record(rb, version) {
                Ok(r) => {
                    prev = r.uid;
                    f(Slot::Good(r))?;
                }
                Err(_) => f(Slot::Wiped(recno, uid))?,
            }
        }
        Ok(())
    }

    /// The good records, in UID order, with their position among them.
    fn each(
        &self,
        mut f: impl FnMut(usize, IndexRecord) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut i = 0usize;
        self.scan(|slot| match slot {
            Slot::Good(r) => {
                i += 1;
                f(i - 1, r)
            }
            Slot::Wiped(..) => Ok(()),
        })
    }
}

/// Whether a user flag name is an IMAP atom (`mailbox_reconstruct`'s "bogus flag name").
fn is_atom(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&c| c > 0x20 && c < 0x7f && !b"(){%*\"\\]".contains(&c))
}

fn plan(ctx: &PlanCtx<'_>, snap: &Snapshot, parse: &mut Parser<'_>) -> anyhow::Result<Plan> {
    let mut p = Plan::default();
    let name = ctx.name;
    let opts = ctx.opts;
    let entry = &ctx.m.entry;

    // cyrus.header: keep it if it reads; otherwise rebuild it from the database entry.
    let old_header = snap.header.as_deref().and_then(|b| header::parse(b).ok());
    let mut hdr = match &old_header {
        Some(h) => h.clone(),
        None => {
            let why = if ctx.fresh {
                "not imported (-x)"
            } else if snap.header.is_some() {
                "unreadable"
            } else {
                "missing"
            };
            p.say(
                "header-rebuilt",
                None,
                format!("{name}: cyrus.header {why}, rebuilding it from the mailboxes database"),
            );
            MailboxHeader {
                format: HeaderFormat::Dlist,
                mbtype: entry.mbtype,
                name: Some(ctx.m.name.to_internal()),
                uniqueid: entry.uniqueid.clone(),
                quotaroot: ctx.quotaroot.clone(),
                acl: entry.acl.clone(),
                user_flags: Vec::new(),
                trailing: Vec::new(),
            }
        }
    };
    // A header without a unique id (written before 2.4, or by hand): the entry's.
    if hdr.uniqueid.is_none() && entry.uniqueid.is_some() {
        p.say(
            "header-uniqueid",
            None,
            format!(
                "{name}: cyrus.header has no unique id, setting it from the mailboxes database"
            ),
        );
        hdr.uniqueid = entry.uniqueid.clone();
    }
    // Cyrus 3.6 prints this and changes nothing ("XXX - this is a noop right now",
    // `mailbox_reconstruct_acl`), so every later run prints it again; the entry takes the
    // header's ACL here, as the message says (and as 2.x's reconstruct did).
    if let (Some(hacl_v), Some(dacl)) =
        (old_header.as_ref().and_then(|h| h.acl.as_ref()), &entry.acl)
    {
        let hacl = hacl_v.to_cyrus_string();
        let dacl = dacl.to_cyrus_string();
        if hacl != dacl {
            p.db_acl = Some(hacl_v.clone());
            p.say(
                "acl",
                None,
                format!(
                    "{name}: update acl from header {} => {}",
                    String::from_utf8_lossy(&dacl),
                    String::from_utf8_lossy(&hacl)
                ),
            );
        }
    }
    for (i, f) in hdr.user_flags.iter_mut().enumerate() {
        if let Some(n) = f {
            if !is_atom(n) {
                p.say(
                    "bogus-flag",
                    None,
                    format!("{name}: bogus flag name {i}:{}", String::from_utf8_lossy(n)),
                );
                *f = None;
            }
        }
    }
    while hdr.user_flags.last() == Some(&None) {
        hdr.user_flags.pop();
    }
    let mut valid_flags = [0u32; 4];
    for (i, f) in hdr.user_flags.iter().enumerate() {
        if f.is_some() {
            if let Some(w) = valid_flags.get_mut(i / 32) {
                *w |= 1 << (i % 32);
            }
        }
    }

    // cyrus.index
    let old = read_old_index(snap.index.as_ref())?;
    if snap.index.is_none() {
        p.say(
            "index-missing",
            None,
            format!(
                "{name}: cyrus.index {}, rebuilding it from the message files",
                if ctx.fresh {
                    "not imported (-x)"
                } else {
                    "missing"
                }
            ),
        );
    } else if old.header.is_none() {
        p.say(
            "index-header",
            None,
            format!(
                "{name}: cyrus.index header damaged, recomputing it from {} intact records",
                old.good
            ),
        );
    }
    for (recno, uid) in &old.wiped {
        p.say(
            "record-wiped",
            Some(*uid),
            format!(
                "{name}: record corrupted {} (maybe uid {uid}), wiping",
                recno + 1
            ),
        );
    }
    let from_version = old.version.unwrap_or(index::DEFAULT_VERSION);
    let version = opts.version.unwrap_or(from_version);

    // The cache: old bytes kept as a prefix when they are a cache file at all.
    let old_cache = snap
        .cache
        .as_ref()
        .filter(|c| c.generation().is_some() && c.len() >= CACHE_HEADER_SIZE as u64);

    let (max_rec_modseq, max_rec_uid) = (old.max_modseq, old.max_uid);
    let trusted = old.header.is_some();
    let mut ih = match &old.header {
        Some(h) => h.clone(),
        None => fresh_header(ctx, &old, max_rec_modseq, max_rec_uid, old_cache),
    };

    // UIDVALIDITY: the database's when the index is lost; Cyrus's rules otherwise.
    let db_uv = entry.uidvalidity;
    if trusted && ih.uidvalidity != db_uv && db_uv != 0 {
        if ih.uidvalidity == 0 || opts.prefer_db {
            p.say(
                "uidvalidity",
                None,
                format!(
                    "Wrong uidvalidity in mailbox, fixing {name} ({} -> {db_uv})",
                    ih.uidvalidity
                ),
            );
            ih.uidvalidity = db_uv;
        } else {
            p.say(
                "uidvalidity-db",
                None,
                format!(
                    "Wrong uidvalidity in mbentry, fixing {name} ({db_uv} -> {})",
                    ih.uidvalidity
                ),
            );
            p.db_uidvalidity = Some(ih.uidvalidity);
        }
    }
    if ih.uidvalidity == 0 || opts.new_uidvalidity {
        let new = (ctx.now as u32).max(ih.uidvalidity.saturating_add(1));
        p.say(
            "uidvalidity-new",
            None,
            format!("{name}: new uidvalidity {} => {new}", ih.uidvalidity),
        );
        ih.uidvalidity = new;
    }
    if ih.uidvalidity != db_uv
        && p.db_uidvalidity.is_none()
        && (!trusted || opts.new_uidvalidity || db_uv == 0)
    {
        p.db_uidvalidity = Some(ih.uidvalidity);
    }

    let base_modseq = ih.highestmodseq.max(1);
    let mut highest = base_modseq;
    let mut last_uid = ih.last_uid;

    // Message files: odd ones first, as Cyrus reports them.
    for odd in &snap.listing.odd {
        match opts.odd {
            OddFiles::Ignore => {}
            OddFiles::Report => {
                p.say(
                    "odd-file",
                    None,
                    format!("{name} odd file {}", odd.display()),
                );
                p.say(
                    "odd-file-hint",
                    None,
                    "run reconstruct with -O to remove odd files".into(),
                );
            }
            OddFiles::Delete => {
                p.say(
                    "odd-file",
                    None,
                    format!("{name} odd file {}", odd.display()),
                );
                p.files.removals.push(odd.clone());
            }
        }
    }

    let files = &snap.listing.messages;
    // Which files (by position in `files`) have a record: one bit per file.
    let mut matched = vec![0u64; files.len().div_ceil(64)];
    let is_matched = |matched: &[u64], pos: usize| get_bit(matched, pos as u64);
    let mut discovered: Vec<u32> = Vec::new();
    let mut new_cache = NewCache::new(
        match old_cache {
            Some(c) => Prefix::Old(c.clone(), c.len()),
            None => Prefix::Bytes(ih.generation_no.to_be_bytes().to_vec()),
        },
        parse.spill.clone(),
    );
    let old_cache_len = new_cache.len();

    // Which records' files the loop below re-parses; those and every file without a record
    // are parsed now, in parallel. One pass over the old records, merged with the listing
    // (both in UID order).
    let mut reparse_of: Vec<bool> = Vec::with_capacity(old.good);
    let mut wanted: Vec<&MessageFile> = Vec::new();
    {
        let mut rest = files.values().peekable();
        old.each(|_, r| {
            while let Some(f) = rest.next_if(|f| f.uid < r.uid) {
                if f.size > 0 {
                    wanted.push(f); // no record
                }
            }
            let file = rest.next_if(|f| f.uid == r.uid);
            let reparse = needs_reparse(opts, &r, file, old_cache);
            reparse_of.push(reparse);
            if let Some(f) = file {
                if reparse && (!opts.do_stat || f.size > 0) {
                    wanted.push(f);
                }
            }
            Ok(())
        })?;
        wanted.extend(rest.filter(|f| f.size > 0));
    }
    parse.prefetch(wanted);
    // The new records go to a spill as they are decided (see [`RecordSink`]); records that
    // change get one new modseq at the end, as one Cyrus session would give them.
    let mut records = RecordSink::new(from_version, &ctx.spill_dir())?;

    // What the mailbox charged its root, from the old records (see `old_usage` below).
    let mut old_derived = index::Derived::start();
    old.each(|i, rec| {
        let rec = &rec;
        if old.header.is_some() {
            old_derived.add(rec, from_version, &hdr.user_flags, None);
        }
        let uid = rec.uid;
        let pos = files.position(uid);
        let file = pos.and_then(|pos| files.values().as_slice().get(pos));
        if let Some(pos) = pos {
            set_bit(&mut matched, pos as u64);
        }
        let mut r = rec.clone();
        let have = match file {
            Some(f) => !opts.do_stat || f.size > 0,
            None => !opts.do_stat,
        };
        if r.is_unlinked() {
            // Done with, file or not: Cyrus unlinks the file when it marks the record
            // ("already expunged, unlinking"), cyrkit keeps it (removals only with -U/-O),
            // so a later run must not re-check it and report the same change again.
            records.push(&r, false)?;
            return Ok(());
        }
        if !have {
            p.say(
                "not-found",
                Some(uid),
                format!("{name} uid {uid} not found"),
            );
            r.internal_flags |= index::FLAG_INTERNAL_EXPUNGED | index::FLAG_INTERNAL_UNLINKED;
            records.push(&r, true)?;
            return Ok(());
        }
        let reparse = reparse_of.get(i).copied().unwrap_or(true);
        let mut new_entry: Option<Parsed> = None;
        if reparse {
            let Some(f) = file else {
                records.push(&r, false)?;
                return Ok(()); // -s: nothing to parse
            };
            let parsed = parse.parse(f).with_context(|| {
                format!("reading {}", ctx.files.data_dir.join(f.name()).display())
            })?;
            p.messages += 1;
            if parsed.guid != r.guid {
                let mut changed = false;
                p.say(
                    "guid-mismatch",
                    Some(uid),
                    format!("{name} uid {uid} guid mismatch"),
                );
                if r.is_expunged() {
                    p.say(
                        "unlink-expunged",
                        Some(uid),
                        format!("{name} uid {uid} already expunged, unlinking"),
                    );
                    r.internal_flags |= index::FLAG_INTERNAL_UNLINKED;
                    changed = true;
                } else if opts.guid_rewrite {
                    p.say(
                        "uid-upgrade",
                        Some(uid),
                        format!("{name} uid {uid} marking for uid upgrade"),
                    );
                    r.internal_flags |=
                        index::FLAG_INTERNAL_EXPUNGED | index::FLAG_INTERNAL_UNLINKED;
                    changed = true;
                    discovered.push(uid);
                } else if opts.guid_unlink {
                    p.say(
                        "unlink",
                        Some(uid),
                        format!("{name} uid {uid} unlinking as requested with -U"),
                    );
                    r.internal_flags |=
                        index::FLAG_INTERNAL_EXPUNGED | index::FLAG_INTERNAL_UNLINKED;
                    changed = true;
                    p.files.removals.push(ctx.files.data_dir.join(f.name()));
                } else {
                    p.say(
                        "guid-mismatch-hint",
                        Some(uid),
                        "run reconstruct with -R to fix or -U to remove".into(),
                    );
                }
                records.push(&r, changed)?;
                return Ok(());
            }
            let m = &parsed;
            r.size = m.size;
            r.header_size = m.header_size;
            if r.internaldate == 0 {
                r.internaldate = file.map_or(ctx.now, |f| u64::try_from(f.mtime).unwrap_or(0));
            }
            (r.sentdate, r.gmtime) =
                crate::mime::date::record_dates(m.sentdate, m.gmtime, r.internaldate);
            if parsed.entry_crc != r.cache_crc || !cache_entry_ok(old_cache, &r) {
                new_entry = Some(parsed);
            }
        }
        if trusted && r.modseq > highest {
            p.say(
                "future-modseq",
                Some(uid),
                format!("{name} uid {uid} future modseq {} found", r.modseq),
            );
            highest = r.modseq;
        }
        if uid > last_uid {
            if trusted {
                p.say(
                    "future-uid",
                    Some(uid),
                    format!("{name} future uid {uid} found"),
                );
            }
            last_uid = uid;
        }
        for (w, v) in r.user_flags.iter_mut().zip(valid_flags) {
            *w &= v;
        }
        let mut differs = false;
        for (field, a, b) in [
            ("internaldate", rec.internaldate, r.internaldate),
            ("sentdate", rec.sentdate, r.sentdate),
            ("size", rec.size, r.size),
            ("header_size", rec.header_size.into(), r.header_size.into()),
            ("gmtime", rec.gmtime, r.gmtime),
            (
                "systemflags",
                rec.system_flags.into(),
                r.system_flags.into(),
            ),
            (
                "internalflags",
                rec.internal_flags.into(),
                r.internal_flags.into(),
            ),
        ] {
            if a != b {
                p.say(
                    "mismatch",
                    Some(uid),
                    format!("{name} uid {uid} mismatch: {field}"),
                );
                differs = true;
            }
        }
        if rec.user_flags != r.user_flags {
            p.say(
                "mismatch",
                Some(uid),
                format!("{name} uid {uid} mismatch: userflags"),
            );
            differs = true;
        }
        if let Some(e) = new_entry {
            let off = new_cache.len();
            let crc = e.entry_crc;
            p.say(
                "cache",
                Some(uid),
                format!(
                    "{name} rewrote cache for {uid} (offset {} to {off}, crc {} to {crc}/{crc})",
                    if reparse { 0 } else { rec.cache_offset },
                    rec.cache_crc
                ),
            );
            new_cache.push(e.entry_off, e.entry_len);
            r.cache_offset = off;
            r.cache_crc = crc;
            r.cache_version = CACHE_VERSION_36;
        }
        // Only what a client can see takes a new modseq; a regenerated cache entry does
        // not (Cyrus bumps it anyway, making every client refetch flags for nothing).
        records.push(&r, differs)?;
        Ok(())
    })?;

    // Files without a record: above last_uid they keep their UID, below they are appended.
    // A file below last_uid may be another name of a kept message: the identities of those
    // are only gathered when there is such a file (with the index lost there is none, and
    // the map would cost ~40 bytes per message).
    let twins_possible = files
        .values()
        .enumerate()
        .any(|(pos, f)| f.uid <= last_uid && !is_matched(&matched, pos));
    let inode_of: HashMap<(u64, u64), u32> = if twins_possible {
        files
            .values()
            .enumerate()
            .filter(|(pos, f)| is_matched(&matched, *pos) || f.uid > last_uid)
            .map(|(_, f)| ((f.dev, f.ino), f.uid))
            .collect()
    } else {
        HashMap::new()
    };
    let mut found: Vec<u32> = Vec::new();
    for (pos, f) in files.values().enumerate() {
        let uid = f.uid;
        if is_matched(&matched, pos) {
            continue;
        }
        if uid > last_uid {
            found.push(uid);
        } else if let Some(&twin) = inode_of.get(&(f.dev, f.ino)).filter(|&&t| t != uid) {
            // An interrupted rename (link done, unlink not): the message has its new name.
            p.say(
                "duplicate-name",
                Some(uid),
                format!("{name} uid {uid} is another name of uid {twin}, removing this name"),
            );
            p.files.removals.push(ctx.files.data_dir.join(f.name()));
        } else {
            discovered.push(uid);
        }
    }
    discovered.sort_unstable();
    discovered.dedup();
    drop(inode_of);
    // New records go straight after the old ones (their UIDs are above every old UID), not
    // into a second vector copied over later: for a mailbox whose index is lost that would
    // hold every record twice.
    let first_appended = records.start_appending();
    let mut add = |uid: u32,
                   new_uid: u32,
                   p: &mut Plan,
                   new_cache: &mut NewCache,
                   records: &mut RecordSink|
     -> anyhow::Result<bool> {
        let Some(f) = files.get(&uid) else {
            return Ok(false);
        };
        if f.size == 0 {
            p.say(
                "not-found",
                Some(uid),
                format!("{name} uid {uid} not found"),
            );
            return Ok(false);
        }
        let parsed = parse
            .parse(f)
            .with_context(|| format!("reading {}", ctx.files.data_dir.join(f.name()).display()))?;
        p.messages += 1;
        let m = &parsed;
        let internaldate = u64::try_from(f.mtime).unwrap_or(0);
        let off = new_cache.len();
        new_cache.push(parsed.entry_off, parsed.entry_len);
        let (sentdate, gmtime) =
            crate::mime::date::record_dates(m.sentdate, m.gmtime, internaldate);
        records.push(
            &IndexRecord {
                uid: new_uid,
                internaldate,
                sentdate,
                size: m.size,
                header_size: m.header_size,
                gmtime,
                cache_offset: off,
                last_updated: ctx.now,
                savedate: ctx.now,
                cache_version: CACHE_VERSION_36,
                guid: m.guid,
                cache_crc: parsed.entry_crc,
                ..IndexRecord::default()
            },
            false,
        )?;
        Ok(true)
    };
    let shared_name: Arc<str> = Arc::from(name);
    for uid in found {
        p.changes.push_found(&shared_name, uid);
        if add(uid, uid, &mut p, &mut new_cache, &mut records)? {
            last_uid = last_uid.max(uid);
        }
    }
    for uid in discovered {
        p.say(
            "rediscovered",
            Some(uid),
            format!("{name} uid {uid} rediscovered - appending"),
        );
        let new_uid = last_uid.saturating_add(1);
        if add(uid, new_uid, &mut p, &mut new_cache, &mut records)? {
            last_uid = new_uid;
            p.files
                .renames
                .push((ctx.files.message(uid), ctx.files.message(new_uid)));
        }
    }
    let any_appended = records.len() > first_appended;
    let new_modseq = if records.any_changed() || any_appended {
        highest = highest.saturating_add(1);
        Some(highest)
    } else {
        None
    };

    // The header: counts and CRCs from the records, as they are serialised (in the new
    // version) into the spill the commit copies; compared with the old file meanwhile.
    let mut nh = ih.clone();
    nh.last_uid = last_uid;
    nh.highestmodseq = highest;
    if any_appended {
        nh.last_appenddate = ctx.now;
    }
    let flag_names = hdr.user_flags.clone();
    let done = records.finish(
        new_modseq,
        ctx.now,
        version,
        &flag_names,
        snap.index.as_ref(),
    )?;
    let mut derived = nh.clone();
    derived.apply_derived(&done.derived, version);
    if trusted && version >= 13 && snap_annotations_nonempty(ctx) {
        // Per-message annotations cannot be summed here: keep the stored annotation CRC.
        derived.sync_crc_annot = ih.sync_crc_annot;
    }
    if trusted {
        report_counts(&mut p, name, &ih, &derived);
    }
    nh = derived;
    nh.first_expunged = done.first_expunged;

    // Serialise: header file (new or as it was), then the index header with its CRC.
    let header_bytes = match (&old_header, &snap.header) {
        (Some(h), Some(b)) if *h == hdr => b.clone(),
        _ => hdr.write().context("writing cyrus.header")?,
    };
    if snap.header.as_deref() != Some(&header_bytes[..]) {
        p.files.header = Some(header_bytes.clone());
    }
    nh.header_file_crc = header::header_file_crc(&header_bytes);
    let nh = if version != from_version {
        p.say(
            "version",
            None,
            format!("Converted {} version {from_version} to {version}", ctx.ext),
        );
        index::convert_header(
            &IndexHeader {
                minor_version: from_version,
                ..nh
            },
            version,
        )?
    } else {
        nh
    };
    p.quotaroot = hdr.quotaroot.clone();
    p.new_usage = mailbox_usage(&nh);
    p.old_usage = old
        .header
        .as_ref()
        .filter(|oh| {
            old_derived.exists == oh.exists
                && old_derived.quota_mailbox_used == oh.quota_mailbox_used
        })
        .map(mailbox_usage);
    let header_bytes = index::write_header(
        &IndexHeader {
            num_records: done.count,
            ..nh
        },
        version,
    )?;
    let same = match snap.index.as_ref() {
        Some(old) => {
            done.records_match
                && old.len() == header_bytes.len() as u64 + done.len
                && old
                    .read_at(0, header_bytes.len())
                    .context("reading cyrus.index")?
                    == header_bytes
        }
        None => false,
    };
    if !same {
        p.files.index = Some(NewIndex::streamed(header_bytes, done.spill, done.len));
    }
    if new_cache.len() != old_cache_len || (old_cache.is_none() && snap.cache.is_some()) {
        p.files.cache = Some(new_cache);
    }
    Ok(p)
}

impl PlanCtx<'_> {
    /// Where a plan's spill files go: next to `cyrus.cache` (same file system as the files
    /// they are copied into), or the temporary directory for a dry run.
    fn spill_dir(&self) -> PathBuf {
        if self.opts.make_changes {
            self.files
                .cache
                .parent()
                .unwrap_or(&self.files.data_dir)
                .to_path_buf()
        } else {
            std::env::temp_dir()
        }
    }
}

/// Size of an [`IndexRecord`] packed by [`pack_record`].
const PACKED_RECORD: usize = 156;

/// Every field of a record, little-endian, in declaration order (a private format: any
/// version's fields survive, unlike a serialisation as one index version).
fn pack_record(r: &IndexRecord, out: &mut Vec<u8>) {
    let start = out.len();
    for v in [
        r.internaldate,
        r.sentdate,
        r.size,
        r.gmtime,
        r.cache_offset,
        r.last_updated,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [r.savedate, r.modseq, r.cid, r.createdmodseq, r.basecid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [
        r.uid,
        r.header_size,
        r.system_flags,
        r.internal_flags,
        r.user_flags[0],
        r.user_flags[1],
        r.user_flags[2],
        r.user_flags[3],
        r.content_lines,
        r.cache_crc,
        r.record_crc,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&r.cache_version.to_le_bytes());
    out.extend_from_slice(&r.guid);
    out.extend_from_slice(&[0u8; 2]);
    debug_assert_eq!(out.len() - start, PACKED_RECORD);
}

/// The record [`pack_record`] packed into `b` (`None` if `b` is too short).
fn unpack_record(b: &[u8]) -> Option<IndexRecord> {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            b.get(88 + i * 4..92 + i * 4)?.try_into().ok()?,
        ))
    };
    Some(IndexRecord {
        internaldate: u64_at(0)?,
        sentdate: u64_at(1)?,
        size: u64_at(2)?,
        gmtime: u64_at(3)?,
        cache_offset: u64_at(4)?,
        last_updated: u64_at(5)?,
        savedate: u64_at(6)?,
        modseq: u64_at(7)?,
        cid: u64_at(8)?,
        createdmodseq: u64_at(9)?,
        basecid: u64_at(10)?,
        uid: u32_at(0)?,
        header_size: u32_at(1)?,
        system_flags: u32_at(2)?,
        internal_flags: u32_at(3)?,
        user_flags: [u32_at(4)?, u32_at(5)?, u32_at(6)?, u32_at(7)?],
        content_lines: u32_at(8)?,
        cache_crc: u32_at(9)?,
        record_crc: u32_at(10)?,
        cache_version: u16::from_le_bytes(b.get(132..134)?.try_into().ok()?),
        guid: b.get(134..154)?.try_into().ok()?,
    })
}

/// Bytes of records a [`RecordSink`] gathers before it writes them to its spill.
const SINK_BATCH: usize = 256 * 1024;

/// The records of the new index as the plan decides them, in order, packed into a spill file
/// instead of held (a 1M-message mailbox's records are ~160 MB as `IndexRecord`s). Which of
/// them changed and which were appended is a bit each: their new modseq is only known after
/// the last record ([`RecordSink::finish`] sets it).
struct RecordSink {
    spill: Spill,
    dir: PathBuf,
    from: u32,
    buf: Vec<u8>,
    count: u64,
    /// Bit `i`: record `i` changed (takes the new modseq and `last_updated`).
    changed: Vec<u64>,
    any_changed: bool,
    /// Bit `i`: record `i` was appended (takes the new modseq as createdmodseq too).
    appended: Vec<u64>,
    appending: bool,
    last_uid: u32,
    in_order: bool,
}

fn set_bit(bits: &mut Vec<u64>, i: u64) {
    let w = usize::try_from(i / 64).unwrap_or(usize::MAX);
    if bits.len() <= w {
        bits.resize(w.saturating_add(1), 0);
    }
    if let Some(word) = bits.get_mut(w) {
        *word |= 1 << (i % 64);
    }
}

fn get_bit(bits: &[u64], i: u64) -> bool {
    let w = usize::try_from(i / 64).unwrap_or(usize::MAX);
    bits.get(w).is_some_and(|word| word & (1 << (i % 64)) != 0)
}

/// What [`RecordSink::finish`] made: the new records as the new version serialises them, in
/// a spill from offset 0, and what the header needs of them.
struct SinkDone {
    spill: Arc<Spill>,
    len: u64,
    count: u32,
    derived: index::Derived,
    first_expunged: u64,
    /// Every record is byte-identical to the old index's record at the same place.
    records_match: bool,
}

impl RecordSink {
    fn new(from: u32, dir: &std::path::Path) -> anyhow::Result<RecordSink> {
        Ok(RecordSink {
            spill: Spill::near(dir),
            dir: dir.to_path_buf(),
            from,
            buf: Vec::new(),
            count: 0,
            changed: Vec::new(),
            any_changed: false,
            appended: Vec::new(),
            appending: false,
            last_uid: 0,
            in_order: true,
        })
    }

    fn len(&self) -> u64 {
        self.count
    }

    fn any_changed(&self) -> bool {
        self.any_changed
    }

    /// Marks the records pushed from now on as appended; returns the count so far.
    fn start_appending(&mut self) -> u64 {
        self.appending = true;
        self.count
    }

    fn push(&mut self, r: &IndexRecord, changed: bool) -> anyhow::Result<()> {
        let appended = self.appending;
        self.push_marked(r, changed, appended)
    }

    fn push_marked(
        &mut self,
        r: &IndexRecord,
        changed: bool,
        appended: bool,
    ) -> anyhow::Result<()> {
        if changed {
            set_bit(&mut self.changed, self.count);
            self.any_changed = true;
        }
        if appended {
            set_bit(&mut self.appended, self.count);
        }
        if self.count > 0 && r.uid <= self.last_uid {
            self.in_order = false;
        }
        self.last_uid = r.uid;
        pack_record(r, &mut self.buf);
        self.count += 1;
        if self.buf.len() >= SINK_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.spill
                .append(&self.buf)
                .context("writing index records to a spill file")?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Calls `f` with each record in order, whether it changed and whether it was appended.
    fn each(
        &self,
        mut f: impl FnMut(IndexRecord, bool, bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let per = SINK_BATCH / PACKED_RECORD;
        let mut chunk = vec![0u8; per * PACKED_RECORD];
        let mut i = 0u64;
        while i < self.count {
            let n = usize::try_from((self.count - i).min(per as u64)).unwrap_or(per);
            let bytes = chunk.get_mut(..n * PACKED_RECORD).unwrap_or_default();
            self.spill
                .read_at(bytes, i * PACKED_RECORD as u64)
                .context("reading index records back from a spill file")?;
            for b in bytes.chunks_exact(PACKED_RECORD) {
                let r = unpack_record(b)
                    .ok_or_else(|| anyhow::anyhow!("short record in a spill file"))?;
                f(r, get_bit(&self.changed, i), get_bit(&self.appended, i))?;
                i += 1;
            }
        }
        Ok(())
    }

    /// The records sorted by UID (only when they were pushed out of order, which takes a
    /// damaged index: an unlinked record above the header's `last_uid` with a file below it).
    fn sorted(mut self) -> anyhow::Result<RecordSink> {
        self.flush()?;
        let mut all: Vec<(IndexRecord, bool, bool)> = Vec::with_capacity(0);
        self.each(|r, c, a| {
            all.push((r, c, a));
            Ok(())
        })?;
        all.sort_by_key(|x| x.0.uid);
        let mut out = RecordSink::new(self.from, &self.dir)?;
        for (r, c, a) in all {
            out.push_marked(&r, c, a)?;
        }
        Ok(out)
    }

    /// Gives the changed and appended records the new modseq (when there is one: any change),
    /// and serialises every record as `version` into a new spill, deriving the header's
    /// values and comparing with the old index meanwhile.
    fn finish<N: AsRef<[u8]>>(
        mut self,
        new_modseq: Option<u64>,
        now: u64,
        version: u32,
        flag_names: &[Option<N>],
        old: Option<&IndexFile>,
    ) -> anyhow::Result<SinkDone> {
        self.flush()?;
        if !self.in_order {
            self = self.sorted()?;
            self.flush()?;
        }
        let from = self.from;
        let hsize = index::header_size(version).unwrap_or(0);
        let rsize = index::record_size(version).unwrap_or(0);
        let out = Spill::near(&self.dir);
        let mut derived = index::Derived::start();
        let mut first_expunged: Option<u64> = None;
        let mut records_match = old.is_some();
        let mut old_window = old.map(IndexFile::window);
        let mut buf: Vec<u8> = Vec::with_capacity(SINK_BATCH + rsize);
        let mut written = 0u64;
        let mut i = 0usize;
        self.each(|mut r, changed, appended| {
            if let Some(m) = new_modseq {
                if changed {
                    r.modseq = m;
                    r.last_updated = now;
                }
                if appended {
                    r.modseq = m;
                    r.createdmodseq = m;
                }
            }
            derived.add(&r, version, flag_names, None);
            if r.is_expunged() && !r.is_unlinked() {
                first_expunged =
                    Some(first_expunged.map_or(r.last_updated, |f| f.min(r.last_updated)));
            }
            let bytes = if version != from {
                index::write_record(&index::convert_record(&r, from, version)?, version)?
            } else {
                index::write_record(&r, version)?
            };
            if records_match {
                let at = hsize.saturating_add(i.saturating_mul(rsize));
                records_match = match old_window.as_mut() {
                    Some(w) => w
                        .get(at as u64, bytes.len())
                        .context("reading cyrus.index")?
                        .is_some_and(|o| o == &bytes[..]),
                    None => false,
                };
            }
            i += 1;
            buf.extend_from_slice(&bytes);
            if buf.len() >= SINK_BATCH {
                out.append(&buf)
                    .context("writing the new index to a spill file")?;
                written += buf.len() as u64;
                buf.clear();
            }
            Ok(())
        })?;
        out.append(&buf)
            .context("writing the new index to a spill file")?;
        written += buf.len() as u64;
        Ok(SinkDone {
            spill: Arc::new(out),
            len: written,
            count: u32::try_from(self.count).map_err(|_| index::IndexError::TooManyRecords {
                count: usize::try_from(self.count).unwrap_or(usize::MAX),
            })?,
            derived,
            first_expunged: first_expunged.unwrap_or(0),
            records_match,
        })
    }
}

/// Whether a record's cache entry in the old cache is intact.
fn cache_entry_ok(old_cache: Option<&CacheFile>, r: &IndexRecord) -> bool {
    old_cache.is_some_and(|c| c.entry_ok(r.cache_offset, r.cache_crc))
}

/// Whether the record's message file must be parsed again: `-G`, its size changed, its cache
/// entry is damaged, or it has no internaldate.
fn needs_reparse(
    opts: &Opts,
    r: &IndexRecord,
    file: Option<&MessageFile>,
    old_cache: Option<&CacheFile>,
) -> bool {
    let size_differs = opts.do_stat && file.is_some_and(|f| f.size != r.size);
    opts.always_parse || size_differs || r.internaldate == 0 || !cache_entry_ok(old_cache, r)
}

/// Whether the mailbox has per-message annotations (their CRCs are not recomputed).
fn snap_annotations_nonempty(ctx: &PlanCtx<'_>) -> bool {
    match std::fs::read(&ctx.files.annotations) {
        Ok(b) => crate::spool::db::read_pairs(&b, crate::format::cyrusdb::Backend::Twoskip)
            .map_or(true, |p| !p.is_empty()),
        Err(_) => false,
    }
}

/// An index header for a mailbox whose header is lost or damaged: every value Cyrus derives
/// is recomputed later; the others come from the database entry, the surviving records and
/// the cache, never lower than what a client may have seen.
fn fresh_header(
    ctx: &PlanCtx<'_>,
    old: &OldIndex,
    max_rec_modseq: u64,
    max_rec_uid: u32,
    old_cache: Option<&CacheFile>,
) -> IndexHeader {
    let entry = &ctx.m.entry;
    let raw = old.raw.as_ref();
    // A damaged header's values are believed only when they are plausible.
    let plausible_modseq = raw
        .map(|h| h.highestmodseq)
        .filter(|&v| v >= max_rec_modseq && v <= max_rec_modseq.saturating_add(1 << 32))
        .unwrap_or(0);
    let uidvalidity = if entry.uidvalidity != 0 {
        entry.uidvalidity
    } else {
        raw.map_or(0, |h| h.uidvalidity)
    };
    IndexHeader {
        generation_no: old_cache.and_then(CacheFile::generation).unwrap_or(0),
        minor_version: old.version.unwrap_or(index::DEFAULT_VERSION),
        last_uid: max_rec_uid,
        uidvalidity,
        highestmodseq: max_rec_modseq
            .max(plausible_modseq)
            .max(entry.foldermodseq)
            .max(entry.createdmodseq)
            .max(unknown_modseq_floor(plausible_modseq, ctx.now)),
        options: raw.map_or(index::OPT_POP3_NEW_UIDL, |h| {
            h.options
                & (index::OPT_POP3_NEW_UIDL
                    | index::OPT_IMAP_SHAREDSEEN
                    | index::OPT_IMAP_DUPDELIVER)
        }),
        createdmodseq: if entry.createdmodseq != 0 {
            entry.createdmodseq
        } else {
            1
        },
        recentuid: max_rec_uid,
        changes_epoch: ctx.now,
        ..IndexHeader::default()
    }
}

/// When no trustworthy old HIGHESTMODSEQ survives (index lost, header implausible), the
/// mailbox keeps its UIDVALIDITY, so its HIGHESTMODSEQ must not drop below any value a
/// CONDSTORE/QRESYNC client may have seen (RFC 7162 §3.1.2.2). Per-mailbox modseqs count
/// changes, so the current time in microseconds is above any of them in practice, grows with
/// every later reconstruct, and stays far below 2^63 (and 2^53, for clients that keep it in
/// a double). Clients only see "everything may have changed" and refetch flags.
fn unknown_modseq_floor(plausible_old: u64, now_secs: u64) -> u64 {
    if plausible_old != 0 {
        1
    } else {
        now_secs.saturating_mul(1_000_000).max(1)
    }
}

fn report_counts(p: &mut Plan, name: &str, old: &IndexHeader, new: &IndexHeader) {
    if old.quota_mailbox_used != new.quota_mailbox_used {
        p.say(
            "count",
            None,
            format!(
                "{name} updating quota_mailbox_used: {} => {}",
                old.quota_mailbox_used, new.quota_mailbox_used
            ),
        );
    }
    for (field, a, b) in [
        ("answered", old.answered, new.answered),
        ("flagged", old.flagged, new.flagged),
        ("deleted", old.deleted, new.deleted),
        ("exists", old.exists, new.exists),
        ("sync_crc", old.sync_crc_basic, new.sync_crc_basic),
        ("sync_crc_annot", old.sync_crc_annot, new.sync_crc_annot),
    ] {
        if a != b {
            p.say(
                "count",
                None,
                format!("{name}: updating {field} {a} => {b}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_key_sees_every_change_of_the_listing() {
        let file = |uid: u32, name: &str, size: u64| mailbox::MessageFile {
            uid,
            name_len: u16::try_from(name.len()).unwrap(),
            size,
            mtime: 7,
            dev: 1,
            ino: u64::from(uid),
        };
        let snap = |files: Vec<mailbox::MessageFile>| Snapshot {
            header: Some(b"h".to_vec()),
            index: None,
            cache: None,
            listing: mailbox::DirListing {
                messages: files.into_iter().collect(),
                odd: Vec::new(),
            },
        };
        let base = || snap(vec![file(1, "1.", 10), file(2, "2.", 20)]);
        let key = SnapshotKey::of(base());
        assert!(key.matches(&base()));
        assert!(!key.matches(&snap(vec![file(1, "1.", 10)])));
        assert!(!key.matches(&snap(vec![file(1, "1.", 10), file(2, "2.", 21)])));
        assert!(!key.matches(&snap(vec![file(1, "1.", 10), file(2, "02.", 20)])));
        assert!(!key.matches(&snap(vec![file(1, "1.", 10), file(3, "3.", 20)])));
        let mut other = base();
        other.index = Some(IndexFile::from_bytes(Vec::new()));
        assert!(!key.matches(&other));
        let indexed = |bytes: &[u8]| {
            let mut s = base();
            s.index = Some(IndexFile::from_bytes(bytes.to_vec()));
            s
        };
        let key = SnapshotKey::of(indexed(b"abcd"));
        assert!(key.matches(&indexed(b"abcd")));
        assert!(!key.matches(&indexed(b"abce")));
        assert!(!key.matches(&indexed(b"abc")));
        assert!(!key.matches(&base()));
        let mut odd = base();
        odd.listing.odd.push(PathBuf::from("/d/x"));
        assert!(!key.matches(&odd));
    }

    #[test]
    fn found_lines_print_and_serialise_as_text() {
        let found = Line::Found(Arc::from("user.bob"), 7);
        let text = Line::Text("user.bob uid 7 found - adding".into());
        assert_eq!(found.to_string(), text.to_string());
        assert_eq!(
            serde_json::to_string(&found).unwrap(),
            "\"user.bob uid 7 found - adding\""
        );
        assert_eq!(
            serde_json::to_string(&Line::Found(Arc::from("a\"b"), 1)).unwrap(),
            serde_json::to_string("a\"b uid 1 found - adding").unwrap()
        );
    }

    #[test]
    fn found_runs_expand_to_the_changes_they_replace() {
        let bob: Arc<str> = Arc::from("user.bob");
        let other: Arc<str> = Arc::from("user.bob"); // equal name, another allocation
        let text = |kind: &'static str, uid: u32, line: String| Change {
            kind,
            line: Line::Text(line),
            uid: Some(uid),
        };
        let mut log = ChangeLog::default();
        let mut plain: Vec<Change> = Vec::new();
        let header = Change {
            kind: "index-missing",
            line: Line::Text("user.bob: cyrus.index missing".into()),
            uid: None,
        };
        log.push(header.clone());
        plain.push(header);
        // Gaps of every varint width, an empty file's line between two runs, a UID going
        // down (a new run), the largest UID.
        let uids = [1u32, 2, 3, 130, 131, 20_000, 3_000_000, 3_000_001];
        for &u in &uids {
            log.push_found(&bob, u);
            plain.push(found_change(&bob, u));
        }
        let nf = text(
            "not-found",
            3_000_002,
            "user.bob uid 3000002 not found".into(),
        );
        log.push(nf.clone());
        plain.push(nf);
        for u in [3_000_003, 7, 7, u32::MAX - 1, u32::MAX] {
            log.push_found(&other, u);
            plain.push(found_change(&other, u));
        }
        assert_eq!(log.len(), plain.len());
        assert_eq!(log.items.len(), 5, "runs: {:?}", log.items);
        let expanded: Vec<Change> = log.iter().map(|c| c.into_owned()).collect();
        assert_eq!(expanded, plain);
        let lines = |cs: &mut dyn Iterator<Item = String>| cs.collect::<Vec<_>>().join("\n");
        assert_eq!(
            lines(&mut log.iter().map(|c| c.line.to_string())),
            lines(&mut plain.iter().map(|c| c.line.to_string()))
        );
        assert_eq!(
            serde_json::to_string_pretty(&log).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap()
        );
        let kinds: Vec<(&str, u64)> = log.kind_counts().collect();
        assert_eq!(
            kinds,
            [
                ("index-missing", 1),
                ("found", 8),
                ("not-found", 1),
                ("found", 1),
                ("found", 4)
            ]
        );
        assert!(ChangeLog::default().iter().next().is_none());
    }

    fn blank_report(mailbox: &str, internal: &str) -> MailboxReport {
        MailboxReport {
            changes: ChangeLog::default(),
            created: None,
            db_acl: None,
            db_uidvalidity: None,
            discovered: Vec::new(),
            error: None,
            internal: internal.into(),
            mailbox: mailbox.into(),
            messages: 0,
            modified: false,
            quota: None,
            recount_root: None,
            tempfail: false,
        }
    }

    #[test]
    fn json_report_streams_the_bytes_a_sorted_value_printed() {
        let name: Arc<str> = Arc::from("user.a");
        let mut full = blank_report("a", "user.a");
        for u in 1..=3 {
            full.changes.push_found(&name, u);
        }
        full.changes.push(Change {
            kind: "not-found",
            line: Line::Text("user.a uid 4 not found".into()),
            uid: Some(4),
        });
        full.changes.push_found(&name, 5);
        full.created = Some("imported");
        full.db_uidvalidity = Some(9);
        full.discovered = vec!["user.a.b".into()];
        full.error = Some("bad \"x\"".into());
        full.quota = Some("updated");
        full.messages = 4;
        full.modified = true;
        let reports = vec![full, blank_report("b", "user.b")];
        let not_found = vec!["user.c".to_string()];
        let doc = JsonReport {
            dry_run: true,
            mailboxes: &reports,
            not_found: &not_found,
            summary: summary(&reports),
        };
        let streamed = serde_json::to_string_pretty(&doc).unwrap();
        // What the report was: a `Value` (sorted maps) of the same facts, changes one by one.
        let plain = |r: &MailboxReport| {
            let mut v = serde_json::to_value(r).unwrap();
            let cs: Vec<Change> = r.changes.iter().map(|c| c.into_owned()).collect();
            v["changes"] = serde_json::to_value(cs).unwrap();
            v
        };
        let old = serde_json::json!({
            "dry_run": true,
            "mailboxes": reports.iter().map(plain).collect::<Vec<_>>(),
            "not_found": not_found,
            "summary": summary(&reports),
        });
        assert_eq!(streamed, serde_json::to_string_pretty(&old).unwrap());
        assert!(streamed.contains("\"line\": \"user.a uid 5 found - adding\""));
        assert_eq!(doc.summary["changes"]["found"], 4);
    }

    fn parsed(off: u64) -> Parsed {
        Parsed {
            guid: [7; 20],
            size: off + 1,
            header_size: 3,
            sentdate: 4,
            gmtime: 5,
            entry_off: off,
            entry_len: 6,
            entry_crc: 8,
        }
    }

    fn listed(uid: u32, ino: u64, size: u64) -> MessageFile {
        MessageFile {
            uid,
            name_len: 3,
            size,
            mtime: -1,
            dev: 1,
            ino,
        }
    }

    #[test]
    fn parse_results_find_batches_and_single_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = ParseResults {
            table: Some(SlotTable::create(tmp.path()).unwrap()),
            ..ParseResults::default()
        };
        // Two prefetches (the second as a re-plan's, which saw uid 9 changed), a failed
        // parse (uid 4), a single file.
        let mut slots = Vec::new();
        for (uid, p) in [(2, Some(parsed(2))), (4, None), (9, Some(parsed(9)))] {
            pack_slot(
                &parse_key(&listed(uid, u64::from(uid), 10)),
                p.as_ref(),
                &mut slots,
            );
        }
        let t = r.table.as_mut().unwrap();
        t.write(0, &slots).unwrap();
        slots.clear();
        pack_slot(&parse_key(&listed(9, 9, 11)), Some(&parsed(90)), &mut slots);
        t.write(3, &slots).unwrap();
        t.len = 4;
        r.runs = vec![(0, vec![2, 4, 9]), (3, vec![9])];
        r.more.insert(parse_key(&listed(5, 5, 10)), parsed(5));
        let off = |r: &mut ParseResults, f: MessageFile| r.get(&f).map(|p| p.entry_off);
        assert_eq!(off(&mut r, listed(2, 2, 10)), Some(2));
        assert_eq!(r.get(&listed(2, 2, 10)).map(|p| p.size), Some(3));
        assert_eq!(
            off(&mut r, listed(4, 4, 10)),
            None,
            "a failed parse is parsed again"
        );
        assert_eq!(off(&mut r, listed(9, 9, 10)), Some(9));
        assert_eq!(off(&mut r, listed(9, 9, 11)), Some(90));
        assert_eq!(off(&mut r, listed(5, 5, 10)), Some(5));
        // Same UID, another file: not the stored result.
        assert_eq!(off(&mut r, listed(2, 3, 10)), None);
        assert_eq!(off(&mut r, listed(2, 2, 12)), None);
        assert_eq!(off(&mut r, listed(3, 3, 10)), None);
    }

    #[test]
    fn slot_table_round_trips_through_its_window() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = SlotTable::create(tmp.path()).unwrap();
        let n = 2 * SLOT_WINDOW as u64 + 10;
        let failed = SLOT_WINDOW as u64; // the first slot of the second window
        let key = |i: u64| (3, i, i * 2, -(i as i64));
        // Written in chunks out of order, as parallel tasks do.
        let chunk = 100u64;
        let mut starts: Vec<u64> = (0..n.div_ceil(chunk)).map(|c| c * chunk).collect();
        starts.reverse();
        for s in starts {
            let mut slots = Vec::new();
            for i in s..(s + chunk).min(n) {
                let p = (i != failed).then(|| parsed(i));
                pack_slot(&key(i), p.as_ref(), &mut slots);
            }
            t.write(s, &slots).unwrap();
        }
        t.len = n;
        let check = |t: &mut SlotTable, i: u64| {
            let got = t.read(i);
            if i == failed {
                assert!(got.is_none(), "slot {i}");
            } else {
                let (k, p) = got.unwrap_or_else(|| panic!("slot {i}"));
                assert_eq!(k, key(i));
                assert_eq!((p.entry_off, p.size, p.guid), (i, i + 1, [7; 20]));
                assert_eq!((p.header_size, p.sentdate, p.gmtime), (3, 4, 5));
                assert_eq!((p.entry_len, p.entry_crc), (6, 8));
            }
        };
        for i in 0..n {
            check(&mut t, i);
        }
        assert_eq!(t.win_first, 2 * SLOT_WINDOW as u64);
        for i in (0..n).rev().step_by(7) {
            check(&mut t, i);
        }
        for i in [SLOT_WINDOW as u64 - 1, SLOT_WINDOW as u64 + 1, 0, n - 1] {
            check(&mut t, i);
        }
        assert!(t.read(n).is_none());
        // Allotted but never written (a chunk whose write failed): absent.
        t.len = n + 5;
        assert!(t.read(n + 2).is_none());
        check(&mut t, 5);
    }

    #[test]
    fn prefetched_files_are_read_back_and_changed_ones_parsed_again() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let put = |uid: u32, text: &str| {
            let path = tmp.path().join(format!("{uid}."));
            std::fs::write(&path, text).unwrap();
            let m = std::fs::metadata(&path).unwrap();
            MessageFile {
                uid,
                name_len: u16::try_from(format!("{uid}.").len()).unwrap(),
                size: m.len(),
                mtime: m.mtime(),
                dev: m.dev(),
                ino: m.ino(),
            }
        };
        let text = |uid: u32| format!("Subject: {uid}\r\nFrom: a@b\r\n\r\nbody {uid}\r\n");
        let mut files: Vec<MessageFile> = (1..=600).map(|u| put(u, &text(u))).collect();
        // Listed, then gone: its parse fails.
        files.push(MessageFile {
            ino: 1 << 40,
            ..files[0].clone()
        });
        files.last_mut().unwrap().uid = 700;
        let opts = crate::mime::ParseOptions::default();
        let mut parser = Parser {
            opts: &opts,
            spill: Arc::new(Spill::memory()),
            dir: (tmp.path(), None),
            table_dir: tmp.path().to_path_buf(),
            done: ParseResults::default(),
            buf: Vec::new(),
        };
        let refs: Vec<&MessageFile> = files.iter().collect();
        parser.prefetch(refs);
        assert_eq!(parser.done.runs.len(), 1);
        assert!(parser.done.more.is_empty());
        let fresh = |f: &MessageFile| {
            let mut entries = Vec::new();
            Parser::parse_file(&opts, (tmp.path(), None), f, &mut Vec::new(), &mut entries)
        };
        for f in &files[..600] {
            let (a, b) = (parser.parse(f).unwrap(), fresh(f).unwrap());
            assert_eq!(
                (a.guid, a.size, a.header_size),
                (b.guid, b.size, b.header_size)
            );
            assert_eq!((a.entry_len, a.entry_crc), (b.entry_len, b.entry_crc));
        }
        assert!(parser.done.more.is_empty(), "all read back from the table");
        assert!(parser.parse(&files[600]).is_err());
        // A re-plan sees uid 5 rewritten: parsed again, by itself or by a second prefetch.
        files[4] = put(5, &format!("{}and more\r\n", text(5)));
        let new5 = fresh(&files[4]).unwrap();
        let refs: Vec<&MessageFile> = files.iter().collect();
        parser.prefetch(refs);
        assert_eq!(parser.done.runs.len(), 2);
        assert_eq!(parser.done.runs[1].1, vec![5, 700]);
        let got = parser.parse(&files[4]).unwrap();
        assert_eq!((got.guid, got.size), (new5.guid, new5.size));
        assert_ne!(got.guid, parser.parse(&files[3]).unwrap().guid);
        files[5] = put(6, &format!("{}changed\r\n", text(6)));
        let got = parser.parse(&files[5]).unwrap();
        assert_eq!(got.guid, fresh(&files[5]).unwrap().guid);
        assert_eq!(parser.done.more.len(), 1);
    }

    #[test]
    fn parallel_charges_to_one_root_are_all_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\n",
            tmp.path().display()
        );
        let c = Config::parse(conf.as_bytes(), tmp.path()).unwrap();
        let l = Layout::from_config(&c).unwrap();
        let file = l.quotalegacy_file(b"user.alice").unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"0\n2000\n").unwrap();
        let store = crate::spool::quota::QuotaStore::open(&c, &l).unwrap();
        let (old, new): (Usage, Usage) = ([0, 0, 0, 0], [10, 1, 0, 0]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = &store;
                s.spawn(move || {
                    let name = format!("user.alice.f{t}");
                    for _ in 0..25 {
                        assert!(crate::spool::quota::charge_root(
                            store,
                            b"user.alice",
                            name.as_bytes(),
                            &old,
                            &new,
                            Duration::from_secs(30)
                        )
                        .unwrap());
                    }
                });
            }
        });
        let q = store
            .lock_root(b"user.alice", Duration::from_secs(1))
            .unwrap()
            .record
            .unwrap();
        assert_eq!(q.get(crate::format::quota::Resource::Storage).used, 1000);
        assert_eq!(q.get(crate::format::quota::Resource::Message).used, 100);
    }

    #[test]
    fn packed_records_keep_every_field() {
        let r = IndexRecord {
            uid: 1,
            internaldate: 2,
            sentdate: 3,
            size: 4,
            header_size: 5,
            gmtime: 6,
            cache_offset: 7,
            last_updated: 8,
            system_flags: 9,
            internal_flags: 10,
            user_flags: [11, 12, 13, 14],
            content_lines: 15,
            savedate: 16,
            cache_version: 17,
            guid: [18; 20],
            modseq: 19,
            cid: 20,
            createdmodseq: 21,
            basecid: 22,
            cache_crc: 23,
            record_crc: 24,
        };
        let mut b = Vec::new();
        pack_record(&r, &mut b);
        assert_eq!(b.len(), PACKED_RECORD);
        assert_eq!(unpack_record(&b), Some(r));
        assert_eq!(unpack_record(&b[..PACKED_RECORD - 3]), None);
    }

    #[test]
    fn record_sink_sorts_and_marks_like_the_vector_it_replaces() {
        let d = tempfile::tempdir().unwrap();
        let rec = |uid: u32| IndexRecord {
            uid,
            modseq: 3,
            ..Default::default()
        };
        let mut sink = RecordSink::new(17, d.path()).unwrap();
        sink.push(&rec(1), false).unwrap();
        sink.push(&rec(9), true).unwrap();
        sink.start_appending();
        sink.push(&rec(5), false).unwrap();
        assert!(sink.any_changed());
        let done = sink
            .finish(Some(7), 100, 17, &[] as &[Option<Vec<u8>>], None)
            .unwrap();
        assert_eq!(done.count, 3);
        let rsize = index::record_size(17).unwrap();
        let mut bytes = vec![0u8; done.len as usize];
        done.spill.read_at(&mut bytes, 0).unwrap();
        let got: Vec<IndexRecord> = bytes
            .chunks(rsize)
            .map(|b| index::parse_record(b, 17).unwrap())
            .collect();
        let summary: Vec<_> = got
            .iter()
            .map(|r| (r.uid, r.modseq, r.createdmodseq, r.last_updated))
            .collect();
        assert_eq!(summary, vec![(1, 3, 0, 0), (5, 7, 7, 0), (9, 7, 0, 100)]);
        assert_eq!(
            done.derived,
            index::derive(got.iter(), 17, &[] as &[Option<Vec<u8>>], None)
        );
        assert!(!done.records_match);
    }

    #[test]
    fn glob_matches_like_cyrus() {
        assert!(glob(b"user.*", b"user.alice.Sent"));
        assert!(glob(b"user.%", b"user.alice"));
        assert!(!glob(b"user.%", b"user.alice.Sent"));
        assert!(glob(b"*", b"shared"));
        assert!(!glob(b"user.b*", b"user.alice"));
    }

    #[test]
    fn old_index_keeps_good_records_when_the_header_crc_fails() {
        let recs: Vec<IndexRecord> = (1..=3)
            .map(|u| IndexRecord {
                uid: u,
                modseq: u64::from(u) + 4,
                ..Default::default()
            })
            .collect();
        let h = IndexHeader {
            last_uid: 3,
            highestmodseq: 7,
            ..Default::default()
        };
        let mut buf = index::write_index(&h, &recs, 17).unwrap();
        buf[50] ^= 1; // header damaged
        let rs = index::V14_HEADER_SIZE + index::V16_RECORD_SIZE + 5;
        buf[rs] ^= 1; // record 2 damaged
        let old = read_old_index(Some(&IndexFile::from_bytes(buf))).unwrap();
        assert!(old.header.is_none());
        assert_eq!(old.version, Some(17));
        assert_eq!(uids_of(&old), vec![1, 3]);
        assert_eq!((old.good, old.max_uid, old.max_modseq), (2, 3, 7));
        assert_eq!(old.wiped, vec![(1, 2)]);
    }

    fn uids_of(old: &OldIndex) -> Vec<u32> {
        let mut uids = Vec::new();
        old.each(|i, r| {
            assert_eq!(i, uids.len());
            uids.push(r.uid);
            Ok(())
        })
        .unwrap();
        uids
    }

    /// An index larger than the read window, from a file: the same records, counts and
    /// digest as from memory; a file cut after it was read is an error, not a panic.
    #[test]
    fn old_index_is_read_through_a_window_from_the_file() {
        let n = 25_000u32; // 2.6 MB of version-17 records: three windows
        let recs: Vec<IndexRecord> = (1..=n)
            .map(|u| IndexRecord {
                uid: u * 2,
                modseq: u64::from(u % 977) + 1,
                size: u64::from(u),
                ..Default::default()
            })
            .collect();
        let h = IndexHeader {
            last_uid: n * 2,
            highestmodseq: 977,
            num_records: n,
            ..Default::default()
        };
        let mut buf = index::write_index(&h, &recs, 17).unwrap();
        let bad = index::V14_HEADER_SIZE + 10_081 * index::V16_RECORD_SIZE + 9;
        buf[bad] ^= 0x40; // record 10 082 (uid 20 164), across the first window's end
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cyrus.index");
        std::fs::write(&path, &buf).unwrap();
        let file = IndexFile::open(&path).unwrap().unwrap();
        let mem = IndexFile::from_bytes(buf.clone());
        assert_eq!(file, mem);
        assert_eq!(file.len(), buf.len() as u64);
        let (a, b) = (
            read_old_index(Some(&file)).unwrap(),
            read_old_index(Some(&mem)).unwrap(),
        );
        assert!(a.header.is_some());
        assert_eq!(a.wiped, vec![(10_081, 20_164)]);
        assert_eq!(
            (a.good, a.max_uid, a.max_modseq),
            (n as usize - 1, n * 2, 977)
        );
        let want: Vec<u32> = (1..=n).map(|u| u * 2).filter(|&u| u != 20_164).collect();
        assert_eq!(uids_of(&a), want);
        assert_eq!(uids_of(&b), want);
        assert_eq!(
            file.read_at(0, index::V14_HEADER_SIZE).unwrap(),
            buf[..index::V14_HEADER_SIZE]
        );
        // Cut behind the reader's back: a clear error.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(buf.len() as u64 / 2)
            .unwrap();
        let err = a.each(|_, _| Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("shrank"), "{err:#}");
    }
}
