//! `cyrkit singleinstance-dedupe`: restore single-instance-store hard links that a backup,
//! an `rsync` without `-H` or a per-user migration broke.
//!
//! 1. Scan: every selected mailbox's `cyrus.index` (under a shared lock, as Cyrus's readers
//!    take it) gives each message's GUID and size. Only records whose (partition, GUID, size)
//!    occurs more than once are looked at further: no file is hashed or even stat'ed for a
//!    unique message.
//! 2. Plan ([`crate::spool::dedupe::plan`]): group by file system and inode, choose the kept
//!    inode per group.
//! 3. Confirm: the kept file's SHA-1 must be its records' GUID (else another copy is tried);
//!    every copy must have the kept file's owner, group and mode.
//! 4. Apply, mailbox by mailbox under the mailbox's lock (`OpenMode::Write`: files are
//!    replaced, the index is not touched): each duplicate is stat'ed again (same inode as
//!    planned), compared byte for byte with the kept file, then replaced by a link
//!    ([`crate::spool::dedupe::replace_with_link`]). Each file system is synced once at the
//!    end. With `-n` the comparison is done without locks and nothing is changed.
//!
//! Expunged records whose files Cyrus has not yet removed, and `DELETED.*` mailboxes, are
//! left out unless asked for: they are on their way out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::{Common, Outcome};
use crate::format::index::{self, Index};
use crate::spool::atomic::{self, crash_point};
use crate::spool::config::Config;
use crate::spool::db::map_file;
use crate::spool::dedupe::{self, Group, GroupKey, MessageFile, Owner};
use crate::spool::lock::{self, LockMode};
use crate::spool::mailbox_lock::{lock_mailbox, OpenMode};
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::{Layout, MailboxDir, MetaFile};

/// How long to wait for a lock a running Cyrus holds before giving up (exit 75).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct DedupeArgs {
    /// Report what would be linked; change nothing
    #[arg(short = 'n')]
    pub dry_run: bool,
    /// Only mailboxes on this partition
    #[arg(short = 'p', value_name = "PART")]
    pub partition: Option<String>,
    /// Also link files of expunged records that Cyrus has not removed yet
    #[arg(long)]
    pub include_expunged: bool,
    /// Also link files of deleted mailboxes (`DELETED.*`, delayed delete)
    #[arg(long)]
    pub include_deleted: bool,
    /// Mailbox name prefixes (external names; a prefix covers the mailbox and its children);
    /// none: every mailbox
    #[arg(value_name = "PREFIX")]
    pub prefixes: Vec<String>,
}

/// What kind of problem a finding is; stable names for `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The file's bytes are not what its index record's GUID says (changed on disk).
    Content,
    /// A copy's owner, group or mode differs from the kept file's.
    Ownership,
    /// Something could not be read or replaced.
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub mailbox: Option<String>,
    #[serde(serialize_with = "super::json_path::option::serialize")]
    pub file: Option<PathBuf>,
    pub problem: String,
}

/// One path replaced (or, with `-n`, to be replaced) by a link to `kept`.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    #[serde(serialize_with = "super::json_path::serialize")]
    pub file: PathBuf,
    #[serde(serialize_with = "super::json_path::serialize")]
    pub kept: PathBuf,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub mailboxes_scanned: u64,
    pub messages_scanned: u64,
    /// Message files whose GUID occurs more than once (the only ones looked at on disk).
    pub candidates: u64,
    /// Groups of copies that were (would be) linked.
    pub groups: u64,
    pub files_linked: u64,
    pub inodes_freed: u64,
    pub bytes_saved: u64,
    /// Copies left alone because they changed between the scan and the lock (expunged and
    /// cleaned up, already linked by someone else).
    pub skipped: u64,
    pub findings: Vec<Finding>,
    pub links: Vec<Link>,
}

/// A selected mailbox, owned (paths are derived again under the lock).
struct Mailbox {
    name: MboxName,
    external: String,
    partition: String,
    /// Index of `partition` among the selected mailboxes' partitions (cheap grouping key).
    part_no: usize,
    legacy: bool,
    uniqueid: String,
}

impl Mailbox {
    fn dir(&self) -> MailboxDir<'_> {
        if self.legacy {
            MailboxDir::Legacy(&self.name)
        } else {
            MailboxDir::Uuid(&self.uniqueid)
        }
    }
}

/// One record's file, before it is stat'ed.
struct Record {
    mailbox: usize,
    uid: u32,
    guid: [u8; 20],
    size: u64,
    path: PathBuf,
}

/// A duplicate to replace, with what it must be replaced by.
struct Action {
    group: usize,
    dup: MessageFile,
    kept: PathBuf,
    kept_ino: u64,
    dev: u64,
    size: u64,
}

pub fn run(common: &Common, args: &DedupeArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&common.config)?;
    // As root, act as the spool's owner: lock files and links are made as Cyrus makes them.
    atomic::become_owner_of(&config.config_directory()).with_context(|| {
        format!(
            "cannot switch to the owner of {}",
            config.config_directory().display()
        )
    })?;
    let progress = !common.no_progress && !common.quiet && !common.json;
    let report = dedupe(&config, args, progress)?;
    let problems = report.findings.iter().any(|f| f.kind != Kind::Error);
    let errors = report.findings.iter().any(|f| f.kind == Kind::Error);
    let outcome = if errors {
        Outcome::Partial
    } else if problems || (report.dry_run && report.files_linked > 0) {
        Outcome::Findings
    } else {
        Outcome::Clean
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report, common.quiet);
    }
    Ok(outcome)
}

fn print_human(report: &Report, quiet: bool) {
    for f in &report.findings {
        let file = f.file.as_ref().map(|p| p.display().to_string());
        let place: Vec<&str> = [f.mailbox.as_deref(), file.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        println!("{}: {}", place.join(": "), f.problem);
    }
    if quiet {
        return;
    }
    let verb = if report.dry_run {
        "would link"
    } else {
        "linked"
    };
    let mut t = crate::ui::table(&["mode", if report.dry_run { "dry run" } else { "real" }]);
    for (what, n) in [
        ("mailboxes", report.mailboxes_scanned),
        ("messages", report.messages_scanned),
        ("candidates", report.candidates),
        ("groups", report.groups),
        (&format!("files {verb}") as &str, report.files_linked),
        ("inodes freed", report.inodes_freed),
        ("skipped (changed meanwhile)", report.skipped),
        ("problems", report.findings.len() as u64),
    ] {
        t.add_row(vec![what.to_string(), n.to_string()]);
    }
    t.add_row(vec![
        "bytes saved".to_string(),
        format!(
            "{} ({})",
            report.bytes_saved,
            human_bytes(report.bytes_saved)
        ),
    ]);
    println!("{t}");
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units.get(u).copied().unwrap_or("B"))
}

/// Scan, plan, confirm and (without `-n`) apply; the report says what was done.
pub fn dedupe(config: &Config, args: &DedupeArgs, progress: bool) -> anyhow::Result<Report> {
    let layout = Layout::from_config(config).context("laying out the spool")?;
    let nc = NameConfig::from_config(config).context("reading the namespace options")?;
    if let Some(p) = &args.partition {
        layout
            .partition(p)
            .map_err(|e| super::UsageError(format!("-p {p}: {e}")))?;
    }
    let mboxlist = Mboxlist::load(config, &nc, LOCK_TIMEOUT)?;
    let mut d = Deduper {
        layout,
        nc,
        args,
        report: Report {
            dry_run: args.dry_run,
            ..Report::default()
        },
        mailboxes: Vec::new(),
    };
    d.select(&mboxlist)?;
    let records = d.scan(progress)?;
    let groups = d.plan(records);
    let actions = d.confirm(groups);
    if args.dry_run {
        d.report_dry_run(&actions);
    } else {
        d.apply(actions, progress)?;
    }
    Ok(d.report)
}

struct Deduper<'a> {
    layout: Layout,
    nc: NameConfig,
    args: &'a DedupeArgs,
    report: Report,
    mailboxes: Vec<Mailbox>,
}

impl Deduper<'_> {
    fn finding(
        &self,
        kind: Kind,
        mailbox: Option<usize>,
        file: Option<&Path>,
        problem: String,
    ) -> Finding {
        Finding {
            kind,
            mailbox: mailbox
                .and_then(|i| self.mailboxes.get(i))
                .map(|m| m.external.clone()),
            file: file.map(Path::to_path_buf),
            problem,
        }
    }

    fn find(&mut self, kind: Kind, mailbox: Option<usize>, file: Option<&Path>, problem: String) {
        let f = self.finding(kind, mailbox, file, problem);
        self.report.findings.push(f);
    }

    fn external(&self, name: &MboxName) -> String {
        name.to_external(&self.nc)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&name.to_internal()).into_owned())
    }

    /// The internal-name prefix an argument stands for. A prefix that is no mailbox name by
    /// itself (`user`) is converted with a dummy child added and removed again.
    fn prefix(&self, arg: &str) -> anyhow::Result<Vec<u8>> {
        if let Ok(n) = MboxName::from_external(arg.as_bytes(), &self.nc) {
            return Ok(n.to_internal());
        }
        const DUMMY: &str = "cyrkit-prefix";
        let sep = if self.nc.unixhierarchysep { '/' } else { '.' };
        let (local, domain) = match arg.rfind('@') {
            Some(i) if self.nc.virtdomains.enabled() => arg.split_at(i),
            _ => (arg, ""),
        };
        MboxName::from_external(format!("{local}{sep}{DUMMY}{domain}").as_bytes(), &self.nc)
            .ok()
            .and_then(|n| {
                n.to_internal()
                    .strip_suffix(format!(".{DUMMY}").as_bytes())
                    .map(<[u8]>::to_vec)
            })
            .ok_or_else(|| super::UsageError(format!("not a mailbox name prefix: {arg:?}")).into())
    }

    fn select(&mut self, mboxlist: &Mboxlist) -> anyhow::Result<()> {
        let prefixes = self
            .args
            .prefixes
            .iter()
            .map(|a| self.prefix(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let covers = |p: &[u8], int: &[u8]| {
            int == p
                || (int.len() > p.len() && int.starts_with(p) && int.get(p.len()) == Some(&b'.'))
        };
        let wanted = |m: &MboxRecord| -> bool {
            if m.name.deleted().is_some() && !self.args.include_deleted {
                return false;
            }
            let part = m.entry.partition.as_deref().unwrap_or_default();
            if let Some(p) = &self.args.partition {
                if part != p.as_bytes() {
                    return false;
                }
            }
            let int = m.name.undeleted().to_internal();
            prefixes.is_empty() || prefixes.iter().any(|p| covers(p, &int))
        };
        let chosen: Vec<&MboxRecord> = mboxlist.live().filter(|m| wanted(m)).collect();
        let mut partitions: Vec<String> = Vec::new();
        for m in chosen {
            let partition = lossy(m.entry.partition.as_deref());
            let part_no = match partitions.iter().position(|p| *p == partition) {
                Some(n) => n,
                None => {
                    partitions.push(partition.clone());
                    partitions.len() - 1
                }
            };
            let uniqueid = lossy(m.entry.uniqueid.as_deref());
            self.mailboxes.push(Mailbox {
                external: self.external(&m.name),
                name: m.name.clone(),
                partition,
                part_no,
                legacy: m.entry.legacy_dirs(),
                uniqueid,
            });
        }
        Ok(())
    }

    /// Every usable record of every selected mailbox.
    fn scan(&mut self, progress: bool) -> anyhow::Result<Vec<Record>> {
        let bar = crate::ui::progress_for("scan", progress);
        bar.set_length(self.mailboxes.len() as u64);
        let mut out = Vec::new();
        for i in 0..self.mailboxes.len() {
            if let Some(m) = self.mailboxes.get(i) {
                bar.set_message(&m.external);
            }
            self.scan_mailbox(i, &mut out)?;
            bar.inc(1);
        }
        bar.finish();
        Ok(out)
    }

    fn scan_mailbox(&mut self, i: usize, out: &mut Vec<Record>) -> anyhow::Result<()> {
        let Some(m) = self.mailboxes.get(i) else {
            return Ok(());
        };
        let index_path = match self
            .layout
            .meta_file(&m.partition, m.dir(), MetaFile::Index, false)
        {
            Ok(p) => p,
            Err(e) => {
                self.find(Kind::Error, Some(i), None, format!("cannot locate: {e}"));
                return Ok(());
            }
        };
        let held = match lock::lock_existing(&index_path, LockMode::Shared, LOCK_TIMEOUT) {
            Ok(l) => l,
            Err(lock::LockError::Open { source, .. }) => {
                let what = format!("cannot read: {source}");
                self.find(Kind::Error, Some(i), Some(&index_path), what);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let map = map_file(held.file()).with_context(|| index_path.display().to_string())?;
        let idx = match Index::open(&map) {
            Ok(x) => x,
            Err(e) => {
                let what = format!("unreadable, skipped (run cyrkit reconstruct): {e}");
                self.find(Kind::Error, Some(i), Some(&index_path), what);
                return Ok(());
            }
        };
        self.report.mailboxes_scanned += 1;
        let dir = m.dir();
        for r in idx.records().filter_map(Result::ok) {
            if r.is_unlinked() || (r.is_expunged() && !self.args.include_expunged) {
                continue;
            }
            // Records from before Cyrus 2.4 may have no GUID: nothing to group them by.
            if r.guid == [0u8; 20] {
                continue;
            }
            self.report.messages_scanned += 1;
            let path = if r.internal_flags & index::FLAG_INTERNAL_ARCHIVED != 0 {
                self.layout.archived_message_file(&m.partition, dir, r.uid)
            } else {
                self.layout.message_file(&m.partition, dir, r.uid)
            };
            if let Ok(path) = path {
                out.push(Record {
                    mailbox: i,
                    uid: r.uid,
                    guid: r.guid,
                    size: r.size,
                    path,
                });
            }
        }
        Ok(())
    }

    /// Stat the records whose GUID repeats, and group them.
    fn plan(&mut self, records: Vec<Record>) -> Vec<Group> {
        let mut count: HashMap<(usize, [u8; 20], u64), u32> = HashMap::new();
        let part_no = |d: &Self, r: &Record| -> usize {
            d.mailboxes.get(r.mailbox).map_or(usize::MAX, |m| m.part_no)
        };
        for r in &records {
            *count.entry((part_no(self, r), r.guid, r.size)).or_default() += 1;
        }
        let candidates: Vec<Record> = records
            .into_iter()
            .filter(|r| count.get(&(part_no(self, r), r.guid, r.size)).copied() >= Some(2))
            .collect();
        self.report.candidates = candidates.len() as u64;
        let metas: Vec<_> = {
            use rayon::prelude::*;
            candidates
                .par_iter()
                .map(|r| std::fs::symlink_metadata(&r.path))
                .collect()
        };
        let mut files = Vec::new();
        for (r, md) in candidates.into_iter().zip(metas) {
            // A missing file is mbcheck's business; there is nothing to link.
            let Ok(md) = md else { continue };
            if !md.is_file() {
                continue;
            }
            if md.size() != r.size {
                let what = format!(
                    "uid {}: size is {} bytes, the index says {}: changed on disk, left alone",
                    r.uid,
                    md.size(),
                    r.size
                );
                self.find(Kind::Content, Some(r.mailbox), Some(&r.path), what);
                continue;
            }
            let partition = self
                .mailboxes
                .get(r.mailbox)
                .map(|m| m.partition.clone())
                .unwrap_or_default();
            files.push((
                GroupKey {
                    partition,
                    dev: md.dev(),
                    guid: r.guid,
                    size: r.size,
                },
                MessageFile {
                    path: r.path,
                    mailbox: r.mailbox,
                    uid: r.uid,
                    ino: md.ino(),
                    nlink: md.nlink(),
                    owner: Owner::of(&md),
                },
            ));
        }
        dedupe::plan(files)
    }

    /// Confirm each group's kept file against its GUID and each copy's ownership; returns
    /// the replacements to make. With `-n`, also compares each copy's bytes now.
    fn confirm(&mut self, groups: Vec<Group>) -> Vec<Action> {
        use rayon::prelude::*;
        let hash = |g: &Group| -> (PathBuf, std::io::Result<[u8; 20]>) {
            let path = g
                .kept()
                .and_then(|k| k.files.first())
                .map(|f| f.path.clone())
                .unwrap_or_default();
            let h = File::open(&path).and_then(dedupe::sha1_reader);
            (path, h)
        };
        // Hashing the kept files is the bulk of the reading: done in parallel, read-only.
        let first: Vec<_> = groups.par_iter().map(hash).collect();
        let mut actions = Vec::new();
        for (gi, (mut g, first)) in groups.into_iter().zip(first).enumerate() {
            // The kept inode: the first whose bytes hash to the GUID.
            let mut hashed = Some(first);
            while let Some(kept) = g.kept() {
                let (path, h) = hashed.take().unwrap_or_else(|| hash(&g));
                match h {
                    Ok(h) if h == g.key.guid => break,
                    Ok(h) => {
                        for f in kept.files.clone() {
                            self.content_mismatch(&f, &g.key.guid, &h);
                        }
                    }
                    Err(e) => {
                        let what = format!("cannot read: {e}");
                        self.find(
                            Kind::Error,
                            kept.files.first().map(|f| f.mailbox),
                            Some(&path),
                            what,
                        );
                    }
                }
                g.drop_inode(0);
            }
            if !g.actionable() {
                continue;
            }
            let Some(kept) = g.kept() else { continue };
            let (kept_path, kept_ino, kept_owner) = match kept.files.first() {
                Some(f) => (f.path.clone(), kept.ino, kept.owner),
                None => continue,
            };
            for inode in g.replaced() {
                if inode.owner != kept_owner {
                    for f in &inode.files {
                        let what = ownership_problem(f.uid, inode.owner, kept_owner, &kept_path);
                        self.find(Kind::Ownership, Some(f.mailbox), Some(&f.path), what);
                    }
                    continue;
                }
                if self.args.dry_run {
                    let Some(first) = inode.files.first() else {
                        continue;
                    };
                    match compare(&first.path, &kept_path) {
                        Ok(true) => {}
                        Ok(false) => {
                            for f in &inode.files {
                                self.differs_from_kept(f, &kept_path);
                            }
                            continue;
                        }
                        Err(e) => {
                            let what = format!("cannot compare: {e}");
                            self.find(Kind::Error, Some(first.mailbox), Some(&first.path), what);
                            continue;
                        }
                    }
                }
                for f in &inode.files {
                    actions.push(Action {
                        group: gi,
                        dup: f.clone(),
                        kept: kept_path.clone(),
                        kept_ino,
                        dev: g.key.dev,
                        size: g.key.size,
                    });
                }
            }
        }
        actions
    }

    fn content_mismatch(&mut self, f: &MessageFile, guid: &[u8; 20], got: &[u8; 20]) {
        let what = format!(
            "uid {}: content GUID {} differs from the index's {}: changed on disk, left alone",
            f.uid,
            index::guid_hex(got),
            index::guid_hex(guid)
        );
        self.find(Kind::Content, Some(f.mailbox), Some(&f.path), what);
    }

    fn differs_from_kept(&mut self, f: &MessageFile, kept: &Path) {
        let what = differs_text(f, kept);
        self.find(Kind::Content, Some(f.mailbox), Some(&f.path), what);
    }

    fn report_dry_run(&mut self, actions: &[Action]) {
        let mut groups = BTreeSet::new();
        // Links each duplicate inode would lose, to know which ones would be freed.
        let mut lost: HashMap<u64, (u64, u64, u64)> = HashMap::new();
        for a in actions {
            groups.insert(a.group);
            self.report.files_linked += 1;
            let e = lost.entry(a.dup.ino).or_insert((0, a.dup.nlink, a.size));
            e.0 += 1;
            self.report.links.push(Link {
                file: a.dup.path.clone(),
                kept: a.kept.clone(),
            });
        }
        for (n, nlink, size) in lost.values() {
            if n >= nlink {
                self.report.inodes_freed += 1;
                self.report.bytes_saved = self.report.bytes_saved.saturating_add(*size);
            }
        }
        self.report.groups = groups.len() as u64;
    }

    fn apply(&mut self, mut actions: Vec<Action>, progress: bool) -> anyhow::Result<()> {
        use rayon::prelude::*;
        actions.sort_by_key(|a| (a.dup.mailbox, a.dup.uid));
        let bar = crate::ui::progress_for("link", progress);
        bar.set_length(actions.len() as u64);
        // Mailboxes are worked on in parallel, split by lock owner: fcntl locks belong to
        // the process, so two threads must never take the same lock file, and all of a
        // user's mailboxes share the user's namespace lock. One user's mailboxes therefore
        // go to one thread, in order; a shared mailbox is its own unit.
        let mut units: BTreeMap<(Vec<u8>, usize), Vec<Action>> = BTreeMap::new();
        for a in actions {
            let owner = self
                .mailboxes
                .get(a.dup.mailbox)
                .and_then(|m| m.name.userid());
            let key = match owner {
                Some(u) => (u, usize::MAX),
                None => (Vec::new(), a.dup.mailbox),
            };
            units.entry(key).or_default().push(a);
        }
        let units: Vec<Vec<Action>> = units.into_values().collect();
        let this = &*self;
        let bar = &bar;
        let results: Vec<anyhow::Result<Applied>> = units
            .par_iter()
            .map(|unit| {
                let mut out = Applied::default();
                let mut rest = unit.as_slice();
                while let Some(first) = rest.first() {
                    let n = rest
                        .iter()
                        .position(|a| a.dup.mailbox != first.dup.mailbox)
                        .unwrap_or(rest.len());
                    let (batch, tail) = rest.split_at(n);
                    this.apply_mailbox(batch, &mut out)?;
                    bar.inc(batch.len() as u64);
                    rest = tail;
                }
                Ok(out)
            })
            .collect();
        bar.finish();
        let mut groups = BTreeSet::new();
        let mut synced: BTreeMap<u64, PathBuf> = BTreeMap::new();
        for r in results {
            let r = r?;
            self.report.files_linked += r.files_linked;
            self.report.inodes_freed += r.inodes_freed;
            self.report.bytes_saved = self.report.bytes_saved.saturating_add(r.bytes_saved);
            self.report.skipped += r.skipped;
            self.report.findings.extend(r.findings);
            self.report.links.extend(r.links);
            groups.extend(r.groups);
            for (dev, dir) in r.synced {
                synced.entry(dev).or_insert(dir);
            }
        }
        // Durability once per file system at the end, not an fsync per directory: each
        // directory fsync is a journal commit (tens of milliseconds on a busy disk, a minute
        // for a thousand mailboxes). Safety does not depend on it: a crash before this point
        // loses at most some renames, and each path then still holds its old copy.
        for (_, dir) in synced {
            let res = File::open(&dir).and_then(|d| {
                nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)).map_err(Into::into)
            });
            if let Err(e) = res {
                let what = format!("cannot sync the file system: {e}");
                self.find(Kind::Error, None, Some(&dir), what);
            }
            crash_point("dedupe-syncfs");
        }
        self.report.groups = groups.len() as u64;
        Ok(())
    }

    /// Replace one mailbox's duplicates while holding its lock.
    fn apply_mailbox(&self, batch: &[Action], out: &mut Applied) -> anyhow::Result<()> {
        let Some(mb) = batch.first().map(|a| a.dup.mailbox) else {
            return Ok(());
        };
        let Some(m) = self.mailboxes.get(mb) else {
            return Ok(());
        };
        let index_path = self
            .layout
            .meta_file(&m.partition, m.dir(), MetaFile::Index, false)?;
        let held = match lock_mailbox(
            &self.layout,
            &m.name,
            m.dir(),
            &index_path,
            OpenMode::Write,
            LOCK_TIMEOUT,
        ) {
            Ok(l) => l,
            Err(crate::spool::mailbox_lock::MailboxLockError::Lock(lock::LockError::Open {
                source,
                ..
            })) => {
                // Deleted since the scan: nothing of it to link.
                let what = format!("cannot lock: {source}");
                out.findings
                    .push(self.finding(Kind::Error, Some(mb), Some(&index_path), what));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for a in batch {
            let problem = match relink(a) {
                Ok(Relinked::Done { freed }) => {
                    out.groups.insert(a.group);
                    out.files_linked += 1;
                    if freed {
                        out.inodes_freed += 1;
                        out.bytes_saved = out.bytes_saved.saturating_add(a.size);
                    }
                    out.links.push(Link {
                        file: a.dup.path.clone(),
                        kept: a.kept.clone(),
                    });
                    if let Some(d) = a.dup.path.parent() {
                        out.synced.entry(a.dev).or_insert_with(|| d.to_path_buf());
                    }
                    None
                }
                Ok(Relinked::Skipped) => {
                    out.skipped += 1;
                    None
                }
                Ok(Relinked::Differs) => Some((Kind::Content, differs_text(&a.dup, &a.kept))),
                Ok(Relinked::Ownership(got, want)) => Some((
                    Kind::Ownership,
                    ownership_problem(a.dup.uid, got, want, &a.kept),
                )),
                Err(e) => Some((Kind::Error, format!("uid {}: {e}", a.dup.uid))),
            };
            if let Some((kind, what)) = problem {
                out.findings
                    .push(self.finding(kind, Some(mb), Some(&a.dup.path), what));
            }
        }
        drop(held);
        Ok(())
    }
}

/// What one worker did (merged into the report in a fixed order).
#[derive(Default)]
struct Applied {
    files_linked: u64,
    inodes_freed: u64,
    bytes_saved: u64,
    skipped: u64,
    findings: Vec<Finding>,
    links: Vec<Link>,
    groups: BTreeSet<usize>,
    /// One directory per file system touched, to sync it at the end.
    synced: BTreeMap<u64, PathBuf>,
}

/// Re-check one duplicate (its mailbox's lock is held) and replace it.
fn relink(a: &Action) -> anyhow::Result<Relinked> {
    use std::os::unix::fs::OpenOptionsExt;
    let dup = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&a.dup.path)
    {
        Ok(f) => f,
        // Gone (expunged and cleaned up meanwhile), or no longer a plain file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Relinked::Skipped),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Relinked::Skipped),
        Err(e) => return Err(e.into()),
    };
    let md = dup.metadata()?;
    if md.ino() != a.dup.ino || md.dev() != a.dev || !md.is_file() {
        return Ok(Relinked::Skipped);
    }
    if md.size() != a.size {
        return Ok(Relinked::Differs);
    }
    let mut kept = match File::open(&a.kept) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Relinked::Skipped),
        Err(e) => return Err(e.into()),
    };
    let kmd = kept.metadata()?;
    if kmd.ino() != a.kept_ino || kmd.dev() != a.dev {
        return Ok(Relinked::Skipped);
    }
    let owner = Owner::of(&md);
    if owner != Owner::of(&kmd) {
        return Ok(Relinked::Ownership(owner, Owner::of(&kmd)));
    }
    // The kept file was confirmed against the GUID; equal bytes make the duplicate match
    // it too.
    if !dedupe::same_bytes(&mut kept, dup)? {
        return Ok(Relinked::Differs);
    }
    let freed = md.nlink() <= 1;
    let tmp = dedupe::temp_link_path(&a.dup.path, a.dup.uid);
    match dedupe::replace_with_link(&a.kept, a.kept_ino, &a.dup.path, &tmp) {
        Ok(()) => Ok(Relinked::Done { freed }),
        Err(dedupe::RelinkError::KeptChanged { .. }) => Ok(Relinked::Skipped),
        Err(e) => Err(e.into()),
    }
}

enum Relinked {
    Done { freed: bool },
    Skipped,
    Differs,
    Ownership(Owner, Owner),
}

fn differs_text(f: &MessageFile, kept: &Path) -> String {
    format!(
        "uid {}: content differs from {} although the GUIDs are equal: changed on disk, left alone",
        f.uid,
        kept.display()
    )
}

fn lossy(b: Option<&[u8]>) -> String {
    String::from_utf8_lossy(b.unwrap_or_default()).into_owned()
}

fn ownership_problem(uid: u32, got: Owner, want: Owner, kept: &Path) -> String {
    format!(
        "uid {uid}: owner {}:{} mode {:o} differs from {}:{} mode {:o} of {}: not linked (fix the ownership first)",
        got.uid,
        got.gid,
        got.mode,
        want.uid,
        want.gid,
        want.mode,
        kept.display()
    )
}

fn compare(a: &Path, b: &Path) -> std::io::Result<bool> {
    dedupe::same_bytes(File::open(a)?, File::open(b)?)
}
