//! `cyrkit mbcheck`: a read-only check of a whole mail store.
//!
//! Checks the mailboxes database against the partitions (entries without directories,
//! directories without entries), each `cyrus.header` (readable, name, unique id, ACL against
//! the database), each `cyrus.index` (version, CRCs, UID order, counts, sync CRCs, the header
//! CRC it records, uidvalidity against the database), each record's `cyrus.cache` entry,
//! message files (present, size, GUID with `-G`, files without records, odd files) and quota
//! usage against the index totals.
//!
//! Read-only means read-only: files are opened for reading, the index is locked with a shared
//! fcntl lock (which needs no write access and creates nothing), and Cyrus's name lock files
//! are not created. Not a byte or an mtime changes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::{Common, Outcome};
use crate::format::header::{self, MailboxHeader};
use crate::format::index::{self, IndexProblem, IndexRecord, IndexShape, Verifier, VerifyContext};
use crate::format::quota::Resource;
use crate::spool::config::Config;
use crate::spool::lock::{self, LockMode};
use crate::spool::mailbox::{self, CacheFile, IndexFile};
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::{self, Layout, MailboxDir, MetaFile};
use crate::spool::quota::{add_usage, load_roots, mailbox_usage, owning_root, StoredRoot};

/// How long to wait for a lock a running Cyrus holds before giving up (exit 75).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct MbcheckArgs {
    /// Also check every child of the named mailboxes
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Re-read every message file and compare its SHA-1 with the GUID in its index record
    #[arg(short = 'G')]
    pub guids: bool,
    /// Mailboxes to check (external names, as Cyrus's tools take them); none: all of them
    #[arg(value_name = "MAILBOX")]
    pub mailboxes: Vec<String>,
}

/// What kind of problem a finding is; stable names for `--json` and the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Database,
    MissingDirectory,
    OrphanDirectory,
    Header,
    Index,
    Cache,
    MessageFile,
    OddFile,
    Quota,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Database => "mailboxes database",
            Kind::MissingDirectory => "missing mailbox directory",
            Kind::OrphanDirectory => "directory without entry",
            Kind::Header => "cyrus.header",
            Kind::Index => "cyrus.index",
            Kind::Cache => "cyrus.cache",
            Kind::MessageFile => "message files",
            Kind::OddFile => "odd files",
            Kind::Quota => "quota",
        }
    }
}

/// One problem, with the command that repairs it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// External mailbox name (or quota root), if the finding belongs to one.
    pub mailbox: Option<String>,
    #[serde(serialize_with = "super::json_path::option::serialize")]
    pub file: Option<PathBuf>,
    pub problem: String,
    pub repair: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mailboxes_checked: u64,
    pub messages_checked: u64,
    pub findings: Vec<Finding>,
    /// Mailbox arguments that name no mailbox in the database (the check is incomplete).
    pub not_found: Vec<String>,
}

struct Checker<'a> {
    config: &'a Config,
    layout: Layout,
    nc: NameConfig,
    guids: bool,
    report: Report,
    /// Per quota root (as the headers name it): usage summed from the index headers.
    quota_usage: BTreeMap<Vec<u8>, [u64; 4]>,
    /// Directories (holding cyrus.header) that the database accounts for.
    expected_dirs: BTreeSet<PathBuf>,
    /// Names of the stored quota roots (internal), to charge a mailbox whose header cannot
    /// be read to the root Cyrus would give it.
    quota_roots: Vec<Vec<u8>>,
}

pub fn run(common: &Common, args: &MbcheckArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&common.config)?;
    let report = check(
        &config,
        args,
        !common.no_progress && !common.quiet && !common.json,
    )?;
    for a in &report.not_found {
        let line = super::hints::mailbox_not_found(a, &config.mboxlist_db_path(), &common.config);
        eprintln!("{line}");
    }
    // A named mailbox that does not exist was not checked: never report that as clean.
    let outcome = if !report.not_found.is_empty() {
        Outcome::Partial
    } else if report.findings.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&json_report(&report))?);
    } else {
        print_human(&report, common.quiet);
    }
    Ok(outcome)
}

fn json_report(report: &Report) -> serde_json::Value {
    let mut by_kind: BTreeMap<Kind, u64> = BTreeMap::new();
    for f in &report.findings {
        *by_kind.entry(f.kind).or_default() += 1;
    }
    serde_json::json!({
        "clean": report.findings.is_empty() && report.not_found.is_empty(),
        "mailboxes_checked": report.mailboxes_checked,
        "messages_checked": report.messages_checked,
        "findings": report.findings,
        "not_found": report.not_found,
        "summary": by_kind,
    })
}

fn print_human(report: &Report, quiet: bool) {
    use crate::ui::{paint, Colour, Stream};
    for f in &report.findings {
        let mut line = String::new();
        if let Some(m) = &f.mailbox {
            line.push_str(&paint(Stream::Stdout, Colour::Bold, m));
            line.push_str(": ");
        }
        if let Some(p) = &f.file {
            line.push_str(&p.display().to_string());
            line.push_str(": ");
        }
        line.push_str(&paint(Stream::Stdout, Colour::Red, &f.problem));
        let repair = paint(Stream::Stdout, Colour::Green, &f.repair);
        println!("{line} (repair: {repair})");
    }
    if quiet {
        return;
    }
    let mut by_kind: BTreeMap<Kind, u64> = BTreeMap::new();
    for f in &report.findings {
        *by_kind.entry(f.kind).or_default() += 1;
    }
    let mut t = crate::ui::table(&["checked", "count"]);
    t.add_row(vec![
        "mailboxes".to_string(),
        report.mailboxes_checked.to_string(),
    ]);
    t.add_row(vec![
        "messages".to_string(),
        report.messages_checked.to_string(),
    ]);
    for (k, n) in &by_kind {
        t.add_row(vec![
            comfy_table::Cell::new(format!("problems: {}", k.label())),
            crate::ui::paint_cell(Colour::Red, n.to_string()),
        ]);
    }
    if by_kind.is_empty() {
        t.add_row(vec![
            comfy_table::Cell::new("problems"),
            crate::ui::paint_cell(Colour::Green, "0"),
        ]);
    }
    println!("{t}");
}

/// Run every check; the report lists what was found.
pub fn check(config: &Config, args: &MbcheckArgs, progress: bool) -> anyhow::Result<Report> {
    let layout = Layout::from_config(config).context("laying out the spool")?;
    let nc = NameConfig::from_config(config).context("reading the namespace options")?;
    let mboxlist = Mboxlist::load(config, &nc, LOCK_TIMEOUT)?;
    let stored_quota = load_roots(config, &layout, LOCK_TIMEOUT)?;
    let mut c = Checker {
        config,
        layout,
        nc,
        guids: args.guids,
        report: Report::default(),
        quota_usage: BTreeMap::new(),
        expected_dirs: BTreeSet::new(),
        quota_roots: stored_quota.keys().cloned().collect(),
    };
    c.check_database(&mboxlist);

    let (selected, not_found) = c.select(&mboxlist, args)?;
    c.report.not_found = not_found;
    let bar = crate::ui::progress_for("mbcheck", progress);
    bar.set_length(selected.len() as u64);
    for m in &selected {
        bar.set_message(&c.external(&m.name));
        c.check_mailbox(m, &mboxlist)?;
        bar.inc(1);
    }
    bar.finish();

    let whole_store = args.mailboxes.is_empty();
    if whole_store {
        // Directories that no database entry accounts for; every entry's directory is
        // expected, checked or not (tombstones have none).
        for m in mboxlist.live() {
            if let Some(dir) = c.header_dir(m) {
                c.expected_dirs.insert(dir);
            }
        }
        c.check_orphan_dirs();
    }
    c.check_quota(&stored_quota, args, &selected);
    Ok(c.report)
}

impl Checker<'_> {
    fn external(&self, name: &MboxName) -> String {
        name.to_external(&self.nc)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&name.to_internal()).into_owned())
    }

    fn find(
        &mut self,
        kind: Kind,
        mailbox: Option<String>,
        file: Option<&Path>,
        problem: String,
        repair: String,
    ) {
        self.report.findings.push(Finding {
            kind,
            mailbox,
            file: file.map(Path::to_path_buf),
            problem,
            repair,
        });
    }

    fn reconstruct_cmd(&self, ext: &str, extra: &str) -> String {
        format!("cyrkit reconstruct {extra}{ext}")
    }

    /// The mailboxes the arguments name (external names; `-r` adds children), and the
    /// arguments that match no mailbox at all.
    fn select<'m>(
        &self,
        mboxlist: &'m Mboxlist,
        args: &MbcheckArgs,
    ) -> anyhow::Result<(Vec<&'m MboxRecord>, Vec<String>)> {
        if args.mailboxes.is_empty() {
            return Ok((mboxlist.live().collect(), Vec::new()));
        }
        let mut wanted = Vec::new();
        for a in &args.mailboxes {
            wanted.push((a, self.internal_arg(a, args.recursive)?));
        }
        let covers = |w: &[u8], int: &[u8]| {
            int == w
                || (args.recursive
                    && int.len() > w.len()
                    && int.starts_with(w)
                    && int.get(w.len()) == Some(&b'.'))
        };
        let selected = mboxlist
            .live()
            .filter(|m| {
                let int = m.name.to_internal();
                wanted.iter().any(|(_, w)| covers(w, &int))
            })
            .collect::<Vec<_>>();
        let not_found = wanted
            .iter()
            .filter(|(_, w)| !selected.iter().any(|m| covers(w, &m.name.to_internal())))
            .map(|(a, _)| a.to_string())
            .collect();
        Ok((selected, not_found))
    }

    fn internal_arg(&self, arg: &str, recursive: bool) -> anyhow::Result<Vec<u8>> {
        mailbox::internal_arg(arg, &self.nc, recursive).map_err(|e| super::UsageError(e).into())
    }

    fn mailbox_dir<'n>(&self, m: &'n MboxRecord) -> Option<MailboxDir<'n>> {
        mailbox::mailbox_dir(m)
    }

    fn partition(m: &MboxRecord) -> String {
        mailbox::partition(m)
    }

    fn header_dir(&self, m: &MboxRecord) -> Option<PathBuf> {
        let dir = self.mailbox_dir(m)?;
        self.layout
            .meta_dir(&Self::partition(m), dir, MetaFile::Header)
            .ok()
    }

    fn check_database(&mut self, mboxlist: &Mboxlist) {
        let repair = "cyrkit reconstruct -m".to_string();
        for p in &mboxlist.problems {
            let what = match &p.key {
                Some(k) => format!("entry {k:?}: {}", p.what),
                None => p.what.clone(),
            };
            self.find(
                Kind::Database,
                None,
                Some(&mboxlist.path),
                what,
                repair.clone(),
            );
        }
        if !mboxlist.v36 {
            return;
        }
        let path = mboxlist.path.clone();
        for m in mboxlist.live() {
            let ext = self.external(&m.name);
            let Some(id) = &m.entry.uniqueid else {
                self.find(
                    Kind::Database,
                    Some(ext),
                    Some(&path),
                    "entry has no unique id".into(),
                    repair.clone(),
                );
                continue;
            };
            match mboxlist.ids.get(id) {
                None => self.find(
                    Kind::Database,
                    Some(ext),
                    Some(&path),
                    format!("no I record for unique id {}", String::from_utf8_lossy(id)),
                    repair.clone(),
                ),
                Some(ie) if ie.dbname.as_deref() != Some(&m.dbname[..]) => self.find(
                    Kind::Database,
                    Some(ext),
                    Some(&path),
                    format!(
                        "I record for unique id {} names another mailbox ({})",
                        String::from_utf8_lossy(id),
                        ie.dbname
                            .as_deref()
                            .map(|d| String::from_utf8_lossy(d).replace(['\x1f', '\x1d'], "."))
                            .unwrap_or_else(|| "none".into())
                    ),
                    repair.clone(),
                ),
                Some(_) => {}
            }
        }
    }

    fn check_mailbox(&mut self, m: &MboxRecord, mboxlist: &Mboxlist) -> anyhow::Result<()> {
        let _ = mboxlist;
        self.report.mailboxes_checked += 1;
        let ext = self.external(&m.name);
        let part = Self::partition(m);
        let Some(dir) = self.mailbox_dir(m) else {
            self.find(
                Kind::Database,
                Some(ext.clone()),
                None,
                "uuid-layout entry without a usable unique id".into(),
                "cyrkit reconstruct -m".into(),
            );
            return Ok(());
        };
        let paths = (|| -> Result<_, paths::PathError> {
            Ok((
                self.layout.data_dir(&part, dir)?,
                self.layout.meta_file(&part, dir, MetaFile::Header, false)?,
                self.layout.meta_file(&part, dir, MetaFile::Index, false)?,
                self.layout.meta_file(&part, dir, MetaFile::Cache, false)?,
                self.layout
                    .meta_file(&part, dir, MetaFile::ArchiveCache, false)?,
            ))
        })();
        let (data_dir, header_path, index_path, cache_path, archive_cache_path) = match paths {
            Ok(p) => p,
            Err(e) => {
                self.find(
                    Kind::Database,
                    Some(ext),
                    None,
                    format!("cannot locate the mailbox: {e}"),
                    "cyrkit reconstruct -m".into(),
                );
                return Ok(());
            }
        };
        // The mailbox exists where its cyrus.header lives. With a metapartition holding the
        // header, the data directory is a separate one that Cyrus 3.6 creates only with the
        // first file it writes there (cyrus.cache, a message): an empty mailbox has none.
        // Files the records need that are missing there are reported one by one below.
        let meta_dir = header_path.parent().unwrap_or(&data_dir).to_path_buf();
        if !meta_dir.is_dir() {
            self.find(
                Kind::MissingDirectory,
                Some(ext.clone()),
                Some(&meta_dir),
                "mailbox directory is missing".into(),
                format!(
                    "restore it from backup, or `{}` to recreate it empty",
                    self.reconstruct_cmd(&ext, "")
                ),
            );
            return Ok(());
        }

        // cyrus.header
        let header_bytes = match std::fs::read(&header_path) {
            Ok(b) => Some(b),
            Err(e) => {
                self.find(
                    Kind::Header,
                    Some(ext.clone()),
                    Some(&header_path),
                    format!("cannot read: {e}"),
                    self.reconstruct_cmd(&ext, ""),
                );
                None
            }
        };
        let header = header_bytes
            .as_deref()
            .and_then(|b| match header::parse(b) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.find(
                        Kind::Header,
                        Some(ext.clone()),
                        Some(&header_path),
                        format!("unreadable: {e}"),
                        self.reconstruct_cmd(&ext, ""),
                    );
                    None
                }
            });
        if let Some(h) = &header {
            self.check_header(m, h, &ext, &header_path);
        }

        // cyrus.index, under a shared lock as Cyrus's readers take it.
        let held = match lock::lock_existing(&index_path, LockMode::Shared, LOCK_TIMEOUT) {
            Ok(l) => l,
            Err(lock::LockError::Open { source, .. }) => {
                self.find(
                    Kind::Index,
                    Some(ext.clone()),
                    Some(&index_path),
                    format!("cannot read: {source}"),
                    self.reconstruct_cmd(&ext, ""),
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        // Read through the locked descriptor a window at a time: mapped, every page read
        // would stay in the process's memory (100 MB of index for a 1M-message mailbox).
        let at = || index_path.display().to_string();
        let file = held
            .file()
            .try_clone()
            .and_then(IndexFile::unhashed)
            .with_context(at)?;
        let head = file.read_at(0, index::MAX_HEADER_SIZE).with_context(at)?;
        let shape = match IndexShape::open(&head, file.len()) {
            Ok(s) => s,
            Err(e) => {
                self.find(
                    Kind::Index,
                    Some(ext.clone()),
                    Some(&index_path),
                    e.to_string(),
                    self.reconstruct_cmd(&ext, ""),
                );
                return Ok(());
            }
        };
        let flag_names: Option<Vec<Option<Vec<u8>>>> =
            header.as_ref().map(|h| h.user_flags.clone());
        let annot_crcs = self.annotation_crcs(&data_dir, &part, dir);
        let ctx = VerifyContext {
            flag_names: flag_names.as_deref(),
            annot_crcs: annot_crcs.as_ref(),
        };
        // One pass over the records: the index's problems are reported first, then those of
        // the records' cache entries and message files, which wait in the report's place.
        let earlier = std::mem::take(&mut self.report.findings);
        let scanned = self.scan_records(
            &ext,
            &file,
            &shape,
            &head,
            &ctx,
            &RecordFiles {
                cache: &cache_path,
                archive_cache: &archive_cache_path,
                part: &part,
                dir,
            },
        );
        let record_findings = std::mem::replace(&mut self.report.findings, earlier);
        let (problems, uids) = scanned.with_context(at)?;
        for p in problems {
            self.find(
                Kind::Index,
                Some(ext.clone()),
                Some(&index_path),
                p.to_string(),
                self.reconstruct_cmd(&ext, ""),
            );
        }
        let ih = &shape.header;
        if let Some(hb) = &header_bytes {
            let crc = header::header_file_crc(hb);
            if crc != ih.header_file_crc {
                self.find(
                    Kind::Header,
                    Some(ext.clone()),
                    Some(&header_path),
                    format!("CRC {crc:08x} differs from the {:08x} recorded in cyrus.index (the header was changed behind Cyrus's back)", ih.header_file_crc),
                    self.reconstruct_cmd(&ext, ""),
                );
            }
        }
        if m.entry.uidvalidity != 0 && ih.uidvalidity != m.entry.uidvalidity {
            self.find(
                Kind::Index,
                Some(ext.clone()),
                Some(&index_path),
                format!(
                    "uidvalidity {} differs from the mailboxes database's {}",
                    ih.uidvalidity, m.entry.uidvalidity
                ),
                self.reconstruct_cmd(&ext, ""),
            );
        }

        // Quota usage, as Cyrus charges it: from the index header, to the root the
        // cyrus.header names; when the header cannot be read, to the root Cyrus would give
        // the mailbox (a missing header must not also show up as wrong quota usage).
        let root = match &header {
            Some(h) => h.quotaroot.clone(),
            None => owning_root(&self.quota_roots, &m.name.to_internal()).map(<[u8]>::to_vec),
        };
        if let Some(root) = root {
            let u = self.quota_usage.entry(root).or_default();
            add_usage(u, &mailbox_usage(ih));
        }

        self.report.findings.extend(record_findings);
        self.check_unrecorded_files(&ext, &data_dir, &uids);
        // The lock is held until the index has been read (the duplicate descriptor goes
        // first: with classic fcntl locks, closing any descriptor would release it).
        drop(file);
        drop(held);
        Ok(())
    }

    fn check_header(&mut self, m: &MboxRecord, h: &MailboxHeader, ext: &str, path: &Path) {
        let repair = self.reconstruct_cmd(ext, "");
        // The name in the header is checked only in the uuid layout. In the legacy layout the
        // path names the mailbox and Cyrus 3.6 never corrects `N`: a rename
        // (mailbox_rename_copy) copies the old cyrus.header into the new directory, re-reads
        // it and commits it with the old name, so after any RENAME the header names a former
        // name of the mailbox. In the uuid layout mailbox_rename_nocopy rewrites `N`, and
        // rebuilding the database from the spool takes the name from there.
        if let Some(n) = h.name.as_ref().filter(|_| !m.entry.legacy_dirs()) {
            // A delayed delete renames the mailbox without rewriting its header (3.6
            // mboxlist_renamemailbox), so a DELETED mailbox's header keeps the old name.
            let deleted_ok = m.name.deleted().is_some() && *n == m.name.undeleted().to_internal();
            if *n != m.name.to_internal() && !deleted_ok {
                self.find(
                    Kind::Header,
                    Some(ext.into()),
                    Some(path),
                    format!(
                        "names mailbox {:?}, the database entry is {:?}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(&m.name.to_internal())
                    ),
                    repair.clone(),
                );
            }
        }
        if h.uniqueid.is_some() && m.entry.uniqueid.is_some() && h.uniqueid != m.entry.uniqueid {
            self.find(
                Kind::Header,
                Some(ext.into()),
                Some(path),
                format!(
                    "unique id {} differs from the database's {}",
                    String::from_utf8_lossy(h.uniqueid.as_deref().unwrap_or_default()),
                    String::from_utf8_lossy(m.entry.uniqueid.as_deref().unwrap_or_default())
                ),
                repair.clone(),
            );
        }
        let hacl = h.acl.as_ref().map(|a| a.to_cyrus_string());
        let dacl = m.entry.acl.as_ref().map(|a| a.to_cyrus_string());
        if hacl.is_some() && dacl.is_some() && hacl != dacl {
            self.find(
                Kind::Header,
                Some(ext.into()),
                Some(path),
                format!(
                    "ACL {:?} differs from the database's {:?}",
                    String::from_utf8_lossy(&hacl.unwrap_or_default()).replace('\t', " "),
                    String::from_utf8_lossy(&dacl.unwrap_or_default()).replace('\t', " ")
                ),
                repair,
            );
        }
    }

    /// Per-uid CRCs of cyrus.annotations, when they can be known: only an empty or absent
    /// annotations database gives an exact answer without decoding annotation keys, so
    /// otherwise the annotation sync CRC is not checked.
    fn annotation_crcs(
        &self,
        _data_dir: &Path,
        part: &str,
        dir: MailboxDir<'_>,
    ) -> Option<BTreeMap<u32, u32>> {
        let path = self
            .layout
            .meta_file(part, dir, MetaFile::Annotations, false)
            .ok()?;
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(BTreeMap::new()),
            Ok(buf) => {
                let pairs =
                    crate::spool::db::read_pairs(&buf, crate::format::cyrusdb::Backend::Twoskip)
                        .ok()?;
                pairs.is_empty().then(BTreeMap::new)
            }
            Err(_) => None,
        }
    }

    /// Reads the records through a window, feeding each to the index verifier and checking
    /// its cache entry and message file (those findings go to the report); returns the
    /// index's problems and the records' UIDs.
    fn scan_records(
        &mut self,
        ext: &str,
        file: &IndexFile,
        shape: &IndexShape,
        head: &[u8],
        ctx: &VerifyContext<'_, Vec<u8>>,
        files: &RecordFiles<'_>,
    ) -> std::io::Result<(Vec<IndexProblem>, Uids)> {
        let open = |p: &Path| CacheFile::open(p).ok().flatten();
        let cache = open(files.cache);
        // Without an archive partition Cyrus's archive paths are the spool's: an archived
        // record's entry is in the same cyrus.cache.
        let archive_cache = if files.archive_cache != files.cache {
            open(files.archive_cache)
        } else {
            cache.clone()
        };
        let mut problems = Vec::new();
        let mut verifier = Verifier::new(shape, head, ctx, &mut problems);
        let mut uids = Uids::with_capacity(shape.present);
        let mut missing_cache_reported = false;
        let mut window = file.window();
        for i in 0..shape.present {
            let Some(bytes) = window.get(shape.record_offset(i), shape.record_size)? else {
                break;
            };
            let Some(r) = verifier.record(bytes, &mut problems) else {
                break;
            };
            uids.push(r.uid);
            if r.is_unlinked() {
                continue;
            }
            self.report.messages_checked += 1;
            let archived = r.internal_flags & index::FLAG_INTERNAL_ARCHIVED != 0;
            let (cache, cache_path) = if archived {
                (&archive_cache, files.archive_cache)
            } else {
                (&cache, files.cache)
            };
            let problem = match cache {
                None if missing_cache_reported => None,
                None => {
                    missing_cache_reported = true;
                    Some("missing, but the index has records".to_string())
                }
                Some(c) => match c.check_entry(r.cache_offset, r.cache_crc) {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("uid {}: {e}", r.uid)),
                    Err(e) => Some(format!(
                        "uid {}: cannot read the entry at offset {}: {e}",
                        r.uid, r.cache_offset
                    )),
                },
            };
            if let Some(problem) = problem {
                let repair = self.reconstruct_cmd(ext, "");
                self.find(
                    Kind::Cache,
                    Some(ext.into()),
                    Some(cache_path),
                    problem,
                    repair,
                );
            }
            self.check_message_file(ext, &r, archived, files);
        }
        verifier.finish(&mut problems);
        Ok((problems, uids.finish()))
    }

    fn check_message_file(
        &mut self,
        ext: &str,
        r: &IndexRecord,
        archived: bool,
        files: &RecordFiles<'_>,
    ) {
        let repair = self.reconstruct_cmd(ext, "");
        let file = if archived {
            self.layout
                .archived_message_file(files.part, files.dir, r.uid)
        } else {
            self.layout.message_file(files.part, files.dir, r.uid)
        };
        let Ok(file) = file else { return };
        match std::fs::symlink_metadata(&file) {
            Err(_) => self.find(
                Kind::MessageFile,
                Some(ext.into()),
                Some(&file),
                format!("uid {}: message file is missing", r.uid),
                repair,
            ),
            Ok(md) if !md.is_file() => self.find(
                Kind::MessageFile,
                Some(ext.into()),
                Some(&file),
                format!("uid {}: not a regular file", r.uid),
                repair,
            ),
            Ok(md) if md.size() != r.size => self.find(
                Kind::MessageFile,
                Some(ext.into()),
                Some(&file),
                format!(
                    "uid {}: size is {} bytes, the index says {}",
                    r.uid,
                    md.size(),
                    r.size
                ),
                // A plain reconstruct only reports a changed file; -R re-adds it under
                // a new UID (-U would drop the record).
                self.reconstruct_cmd(ext, "-R "),
            ),
            Ok(_) if self.guids => match mailbox::sha1_file(&file) {
                Ok(g) if g != r.guid => self.find(
                    Kind::MessageFile,
                    Some(ext.into()),
                    Some(&file),
                    format!(
                        "uid {}: content GUID {} differs from the index's {}",
                        r.uid,
                        index::guid_hex(&g),
                        index::guid_hex(&r.guid)
                    ),
                    self.reconstruct_cmd(ext, "-G -R "),
                ),
                Ok(_) => {}
                Err(e) => self.find(
                    Kind::MessageFile,
                    Some(ext.into()),
                    Some(&file),
                    format!("uid {}: cannot read: {e}", r.uid),
                    repair,
                ),
            },
            Ok(_) => {}
        }
    }

    /// Files in the data directory that no record accounts for, and odd files, by name.
    /// The directory is read as a stream: only the entries reported are kept (to be sorted).
    fn check_unrecorded_files(&mut self, ext: &str, data_dir: &Path, uids: &Uids) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(rd) = std::fs::read_dir(data_dir) else {
            return;
        };
        let mut found = Vec::new();
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name();
            let b = name.as_bytes();
            if b.starts_with(b".") || b.starts_with(b"cyrus.") {
                continue;
            }
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                continue; // child mailboxes (legacy layout)
            }
            let (kind, problem, repair) = match paths::parse_message_file_name(b) {
                Some(uid) if !uids.contains(uid) => (
                    Kind::MessageFile,
                    format!("message file without an index record (uid {uid})"),
                    self.reconstruct_cmd(ext, ""),
                ),
                Some(_) => continue,
                None => (
                    Kind::OddFile,
                    "odd file in the mailbox directory".to_string(),
                    self.reconstruct_cmd(ext, "-O "),
                ),
            };
            let finding = Finding {
                kind,
                mailbox: Some(ext.into()),
                file: Some(e.path()),
                problem,
                repair,
            };
            found.push((name, finding));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        self.report
            .findings
            .extend(found.into_iter().map(|(_, f)| f));
    }

    /// Every directory holding a `cyrus.header` that no database entry accounts for.
    fn check_orphan_dirs(&mut self) {
        let mut roots = BTreeSet::new();
        for (name, _) in self.config.partitions() {
            if let Ok(r) = self.layout.meta_root(&name, MetaFile::Header) {
                roots.insert(r.to_path_buf());
            }
        }
        for root in roots {
            // Walked as the directories list themselves (a walk sorted by name would hold
            // each directory's entries: a million for a big mailbox's data directory), the
            // few found then sorted: component by component, which is the order of a
            // depth-first walk by name.
            let walker = walkdir::WalkDir::new(&root).follow_links(false);
            let mut orphans = Vec::new();
            for e in walker.into_iter().filter_map(Result::ok) {
                if e.file_type().is_file() && e.file_name() == "cyrus.header" {
                    let dir = e.path().parent().map(Path::to_path_buf).unwrap_or_default();
                    if !self.expected_dirs.contains(&dir) {
                        orphans.push(dir);
                    }
                }
            }
            orphans.sort();
            for dir in orphans {
                self.find(
                    Kind::OrphanDirectory,
                    None,
                    Some(&dir),
                    "mailbox directory with no mailboxes database entry".into(),
                    "cyrkit reconstruct -m (rebuilds the mailboxes database from the spool)".into(),
                );
            }
        }
    }

    fn check_quota(
        &mut self,
        stored: &BTreeMap<Vec<u8>, StoredRoot>,
        args: &MbcheckArgs,
        selected: &[&MboxRecord],
    ) {
        let whole = args.mailboxes.is_empty();
        // With mailbox arguments, only roots whose whole subtree was checked can be summed.
        let checked: BTreeSet<Vec<u8>> = selected.iter().map(|m| m.name.to_internal()).collect();
        let root_covered =
            |root: &[u8]| -> bool { whole || (args.recursive && checked.contains(root)) };
        let root_ext = |c: &Self, root: &[u8]| -> String {
            MboxName::from_internal(root, &c.nc)
                .map(|n| c.external(&n))
                .unwrap_or_else(|_| String::from_utf8_lossy(root).into_owned())
        };
        // Each mailbox's quota-root pointer against the root Cyrus would assign.
        let roots: Vec<Vec<u8>> = stored.keys().cloned().collect();
        for m in selected {
            let Some(dir) = self.header_dir(m) else {
                continue;
            };
            let Ok(bytes) = std::fs::read(dir.join("cyrus.header")) else {
                continue;
            };
            let Ok(h) = header::parse(&bytes) else {
                continue;
            };
            let want = owning_root(&roots, &m.name.to_internal());
            if h.quotaroot.as_deref() != want {
                let ext = self.external(&m.name);
                let show = |r: Option<&[u8]>| {
                    r.map(|r| String::from_utf8_lossy(r).into_owned())
                        .unwrap_or_else(|| "(none)".into())
                };
                self.find(
                    Kind::Quota,
                    Some(ext),
                    Some(&dir.join("cyrus.header")),
                    format!(
                        "quota root is {}, should be {}",
                        show(h.quotaroot.as_deref()),
                        show(want)
                    ),
                    format!(
                        "cyrkit quota -f {}",
                        want.map(|r| root_ext(self, r)).unwrap_or_default()
                    )
                    .trim_end()
                    .to_string(),
                );
            }
        }
        for (root, s) in stored {
            if !root_covered(root) {
                continue;
            }
            let ext = root_ext(self, root);
            let rec = match &s.record {
                Ok(r) => r,
                Err(e) => {
                    self.find(
                        Kind::Quota,
                        Some(ext.clone()),
                        Some(&s.file),
                        format!("unreadable quota record: {e}"),
                        format!("cyrkit quota -f {ext}"),
                    );
                    continue;
                }
            };
            let used = self.quota_usage.get(root).copied();
            let Some(used) = used else {
                if !root.ends_with(b"!") {
                    self.find(
                        Kind::Quota,
                        Some(ext.clone()),
                        Some(&s.file),
                        "quota root is used by no mailbox".into(),
                        format!("cyrkit quota -f {ext}"),
                    );
                }
                continue;
            };
            for res in [
                Resource::Storage,
                Resource::Message,
                Resource::AnnotationStorage,
                Resource::NumFolders,
            ] {
                let stored_used = rec.get(res).used;
                let actual = used[res.index()];
                if stored_used != actual {
                    self.find(
                        Kind::Quota,
                        Some(ext.clone()),
                        Some(&s.file),
                        format!(
                            "{} usage is {stored_used}, the mailboxes hold {actual}",
                            res.imap_name()
                        ),
                        format!("cyrkit quota -f {ext}"),
                    );
                }
            }
        }
        if whole {
            for root in self.quota_usage.keys().cloned().collect::<Vec<_>>() {
                if !stored.contains_key(&root) {
                    let ext = root_ext(self, &root);
                    self.find(
                        Kind::Quota,
                        Some(ext.clone()),
                        None,
                        "mailboxes name this quota root but it does not exist".into(),
                        format!("cyrkit quota -f {ext}"),
                    );
                }
            }
        }
    }
}

/// Where a mailbox's records keep their cache entries and message files.
struct RecordFiles<'a> {
    cache: &'a Path,
    archive_cache: &'a Path,
    part: &'a str,
    dir: MailboxDir<'a>,
}

/// The UIDs of an index's records, 4 bytes each, to be looked up by binary search. A sane
/// index lists its records in increasing UID order, so they arrive sorted; a damaged one
/// (its records out of order, reported as such) gets them sorted once at the end.
#[derive(Debug, Default)]
struct Uids {
    list: Vec<u32>,
    sorted: bool,
}

impl Uids {
    /// Room for `n` UIDs: the records the index file holds, so bounded by its size.
    fn with_capacity(n: u32) -> Uids {
        Uids {
            list: Vec::with_capacity(usize::try_from(n).unwrap_or(0)),
            sorted: true,
        }
    }

    fn push(&mut self, uid: u32) {
        if self.list.last().is_some_and(|&last| uid < last) {
            self.sorted = false;
        }
        self.list.push(uid);
    }

    fn finish(mut self) -> Uids {
        if !self.sorted {
            self.list.sort_unstable();
            self.sorted = true;
        }
        self
    }

    fn contains(&self, uid: u32) -> bool {
        debug_assert!(self.sorted);
        self.list.binary_search(&uid).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Uids;

    #[test]
    fn uids_are_found_in_order_or_not() {
        let mut u = Uids::with_capacity(4);
        for uid in [1, 5, 9, 9] {
            u.push(uid);
        }
        let u = u.finish();
        assert!(u.contains(5) && u.contains(9) && !u.contains(2) && !u.contains(10));
        // Out of order (a damaged index): still every one found, and no other.
        let mut u = Uids::with_capacity(0);
        for uid in [7, 3, 12, 1, 3] {
            u.push(uid);
        }
        let u = u.finish();
        for uid in 0..14 {
            assert_eq!(u.contains(uid), [1, 3, 7, 12].contains(&uid), "uid {uid}");
        }
    }
}
