//! `cyrkit quota`: report quota roots, and with `-f` recompute their usage from the
//! mailboxes' index headers, fix each mailbox's quota-root pointer, and store the result.
//!
//! Flags, report layout and fix messages follow Cyrus 3.6's `quota` (imap/quota.c). Where we
//! differ on purpose (see the man page): unused roots are kept unless `--remove-unused`,
//! domain roots (`example.com!`) own the mailboxes of their domain that have no other root
//! instead of being deleted, and `-n` writes nothing at all.
//!
//! Live safety. Cyrus's `$QUOTACHANGE` name lock is held for the run, as Cyrus's `quota`
//! does; it excludes only SETQUOTA and root removal, never deliveries. Deliveries (lmtpd,
//! APPEND, EXPUNGE) update a root while they hold the mailbox's `cyrus.index` lock
//! (`mailbox_commit` → `quota_update_useds`), so per root we:
//! - hold the mailbox locks (user namespace, name, index: shared) of up to [`CHUNK`] of its
//!   mailboxes at once while reading their index headers, then lock the root and write it:
//!   no delivery to those mailboxes can be half-way, so the sum is exact at that instant;
//! - for a root with more mailboxes, use Cyrus's own SCAN protocol (imap/quota_db.c
//!   `quota_update_useds`): each chunk adds its sum to the record's SCAN counters and sets
//!   SCAN.MBOX to the last mailbox read; a running Cyrus then adds the changes to mailboxes
//!   already counted (name ≤ SCAN.MBOX) to the SCAN counters too, so the final value is
//!   exact without holding anything across chunks;
//! - with `-n` (no writes), read the root before and after its scan and rescan it when a
//!   delivery changed it meanwhile.
//!
//! A delivery waits at most for one chunk of index headers to be read and one root to be
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::{Common, Outcome, UsageError};
use crate::format::header::{self, MailboxHeader};
use crate::format::index::{self, IndexHeader};
use crate::format::quota::{salvage_limits, QuotaRecord, QuotaScan, Resource};
use crate::spool::config::Config;
use crate::spool::lock::{self, FileLock, LockError, LockMode};
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::{Layout, MailboxDir, MetaFile};
use crate::spool::quota::{
    add_usage, load_roots, mailbox_usage, owning_root, QuotaStore, RootLock, Usage,
};

/// How long to wait for a lock a running Cyrus holds before giving up (exit 75).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for one more mailbox lock while already holding others; past this all
/// are released and the chunk is retried (so we never deadlock with a Cyrus process that
/// holds one of them and waits for another).
const CHUNK_LOCK_WAIT: Duration = Duration::from_millis(500);
/// How often a chunk is retried after giving its locks back.
const CHUNK_RETRIES: u32 = 100;
/// Mailboxes whose locks are held together while their index headers are read.
pub const CHUNK: usize = 128;
/// `-n`: how often a root that changed during its scan is rescanned.
const DRY_RESCANS: u32 = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Fix: recompute usage from the mailboxes, fix quota-root pointers, store the result
    #[arg(short = 'f')]
    pub fix: bool,
    /// With -f: report what would change and write nothing
    #[arg(short = 'n')]
    pub dry_run: bool,
    /// Only quota roots in this virtual domain
    #[arg(short = 'd', value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// The arguments are user ids: the roots those users own
    #[arg(short = 'u')]
    pub users: bool,
    /// Cyrus's spelling of --json
    #[arg(short = 'J')]
    pub cyrus_json: bool,
    /// With -f: delete quota roots that no mailbox uses (Cyrus's quota -f always does)
    #[arg(long)]
    pub remove_unused: bool,
    /// Root name prefixes (external names, as Cyrus's quota takes them), or user ids with -u
    #[arg(value_name = "PREFIX")]
    pub prefixes: Vec<String>,
}

/// One change `-f` made (or, with `-n`, would make).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// A mailbox's quota-root pointer (internal names).
    Pointer {
        mailbox: String,
        old: Option<String>,
        new: Option<String>,
    },
    Usage {
        root: String,
        resource: &'static str,
        was: u64,
        now: u64,
    },
    Removed {
        root: String,
    },
    /// A root no mailbox uses, kept (no `--remove-unused`).
    Unused {
        root: String,
    },
    /// The index did not record the CRC of the mailbox's `cyrus.header` (a run killed
    /// between rewriting the header and the index): the index header is corrected.
    HeaderCrc {
        mailbox: String,
    },
    /// A root whose stored record does not parse, rebuilt: the limits that could still be
    /// read (as stored: STORAGE in KiB), usage recounted from the mailboxes.
    Rebuilt {
        root: String,
        why: String,
        limits: BTreeMap<&'static str, u64>,
    },
}

impl Change {
    /// Cyrus's wording (imap/quota.c `fixquota_fixroot`, `fixquota_finish`).
    pub fn line(&self) -> String {
        match self {
            Change::Pointer { mailbox, old, new } => format!(
                "{mailbox}: quota root {} --> {}",
                old.as_deref().unwrap_or("(none)"),
                new.as_deref().unwrap_or("(none)")
            ),
            Change::Usage {
                root,
                resource,
                was,
                now,
            } => format!("{root}: {resource} usage was {was}, now {now}"),
            Change::Removed { root } => format!("{root}: removed"),
            Change::Unused { root } => {
                format!("{root}: used by no mailbox (kept; --remove-unused deletes it)")
            }
            Change::HeaderCrc { mailbox } => {
                format!("{mailbox}: header file CRC mismatch, correcting")
            }
            Change::Rebuilt { root, why, limits } => {
                let kept = if limits.is_empty() {
                    "no limit could be read: unlimited".to_string()
                } else {
                    let l: Vec<String> = limits.iter().map(|(r, l)| format!("{r} {l}")).collect();
                    format!("limits kept: {}", l.join(", "))
                };
                format!("{root}: quota record unreadable ({why}); rebuilt, {kept}; usage recounted")
            }
        }
    }
}

/// One mailbox of the store, as `-f` needs it.
struct Mbox<'m> {
    rec: &'m MboxRecord,
    name: Vec<u8>,
    dir: MailboxDir<'m>,
    header_path: PathBuf,
    index_path: PathBuf,
}

struct Fixer<'a> {
    layout: &'a Layout,
    store: QuotaStore,
    dry_run: bool,
    quiet_changes: bool,
    changes: Vec<Change>,
    errors: Vec<String>,
    /// Roots whose damaged record was (with `-n`: would be) rebuilt, as rebuilt.
    rebuilt: BTreeMap<Vec<u8>, QuotaRecord>,
}

/// The record `-f` puts in place of one that does not parse: the limits that can still be
/// read, no usage (recounted next), MODSEQ 0.
fn rebuilt_record(raw: &[u8]) -> QuotaRecord {
    let mut q = QuotaRecord::new();
    for (rq, limit) in q.resources.iter_mut().zip(salvage_limits(raw)) {
        rq.limit = limit;
    }
    q
}

pub fn run(common: &Common, args: &QuotaArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&common.config)?;
    let layout = Layout::from_config(&config).context("laying out the spool")?;
    let nc = NameConfig::from_config(&config).context("reading the namespace options")?;
    let json = common.json || args.cyrus_json;
    let writes = args.fix && !args.dry_run;
    // Root acting as the spool owner, so lock files and rewritten files stay Cyrus's.
    crate::spool::atomic::become_owner_of(&layout.config_dir).with_context(|| {
        format!(
            "configdirectory {} (check `configdirectory` in {})",
            layout.config_dir.display(),
            common.config.display()
        )
    })?;

    // Cyrus's quota takes $QUOTACHANGE for the whole run: SETQUOTA and root removal wait,
    // deliveries do not.
    let _qc = if args.fix {
        let path = layout.quota_change_lock_file()?;
        Some(lock::lock_path(&path, LockMode::Exclusive, LOCK_TIMEOUT)?)
    } else {
        None
    };
    let stored = load_roots(&config, &layout, LOCK_TIMEOUT)?;
    let all_roots: Vec<Vec<u8>> = stored.keys().cloned().collect();
    let selected = select_roots(&all_roots, args, &nc)?;

    let mut outcome = Outcome::Clean;
    let mut changes = Vec::new();
    if args.fix {
        let mut fx = Fixer {
            layout: &layout,
            store: QuotaStore::open(&config, &layout)?,
            dry_run: args.dry_run,
            quiet_changes: json,
            changes: Vec::new(),
            errors: Vec::new(),
            rebuilt: BTreeMap::new(),
        };
        let mboxlist = Mboxlist::load(&config, &nc, LOCK_TIMEOUT)?;
        fx.fix(&mboxlist, &all_roots, &selected, args, &nc, common)?;
        for e in &fx.errors {
            eprintln!("cyrkit: error: {e}");
        }
        if !fx.errors.is_empty() {
            outcome = Outcome::Partial;
        } else if args.dry_run && !fx.changes.is_empty() {
            outcome = Outcome::Findings;
        }
        changes = fx.changes;
    }
    // -f rebuilds (-f -n reports) a record that does not parse; without -f it is an error.
    for (root, s) in &stored {
        if let (true, false, Err(e)) = (selected.contains(root), args.fix, &s.record) {
            eprintln!(
                "cyrkit: error: {}: quota root {}: {e} (quota -f rebuilds it)",
                s.file.display(),
                String::from_utf8_lossy(root)
            );
            outcome = Outcome::Partial;
        }
    }
    if common.quiet && !json {
        return Ok(outcome);
    }
    // The report reads the roots again: it shows what is stored now.
    let now = if writes {
        load_roots(&config, &layout, LOCK_TIMEOUT)?
    } else {
        stored
    };
    let rows: Vec<(String, QuotaRecord)> = now
        .into_iter()
        .filter(|(r, _)| selected.contains(r))
        .filter_map(|(r, s)| s.record.ok().map(|q| (root_external(&r, &nc), q)))
        .collect();
    if json {
        let mut doc = report_json(&rows);
        if args.fix {
            if let Some(obj) = doc.as_object_mut() {
                // Our field next to Cyrus's roots; `-` cannot start a root name.
                obj.insert("-changes".into(), serde_json::to_value(&changes)?);
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("{}", report_table(&rows));
    } else {
        print!("{}", report_cyrus(&rows));
    }
    Ok(outcome)
}

/// The internal-name prefixes the arguments select, as Cyrus's `buildquotalist` forms them:
/// `-d DOMAIN` puts `DOMAIN!` in front; `-u` takes user ids and keeps roots the user owns.
fn select_roots(
    all: &[Vec<u8>],
    args: &QuotaArgs,
    nc: &NameConfig,
) -> anyhow::Result<BTreeSet<Vec<u8>>> {
    let domain_prefix = args
        .domain
        .as_ref()
        .map(|d| format!("{d}!").into_bytes())
        .unwrap_or_default();
    if args.prefixes.is_empty() {
        return Ok(all
            .iter()
            .filter(|r| r.starts_with(&domain_prefix))
            .cloned()
            .collect());
    }
    let mut out = BTreeSet::new();
    for spec in &args.prefixes {
        if args.users {
            let inbox = MboxName::user_inbox(spec.as_bytes(), nc)
                .map_err(|e| UsageError(format!("user id {spec:?}: {e}")))?
                .to_internal();
            for r in all {
                let owned =
                    r == &inbox || (r.starts_with(&inbox) && r.get(inbox.len()) == Some(&b'.'));
                if owned {
                    out.insert(r.clone());
                }
            }
        } else {
            let mut prefix = domain_prefix.clone();
            prefix.extend_from_slice(&spec_internal(spec, nc));
            out.extend(all.iter().filter(|r| r.starts_with(&prefix)).cloned());
        }
    }
    Ok(out)
}

/// A prefix argument as an internal name. Prefixes need not be mailbox names (`user.al`,
/// `user`), so when the name conversion refuses one, the hierarchy separator is translated
/// by hand.
fn spec_internal(spec: &str, nc: &NameConfig) -> Vec<u8> {
    if let Ok(n) = MboxName::from_external(spec.as_bytes(), nc) {
        return n.to_internal();
    }
    let (local, domain) = match spec.rfind('@') {
        Some(i) if nc.virtdomains.enabled() => (&spec[..i], Some(&spec[i + 1..])),
        _ => (spec, None),
    };
    let local: Vec<u8> = if nc.unixhierarchysep {
        local
            .bytes()
            .map(|b| match b {
                b'/' => b'.',
                b'.' => b'^',
                b => b,
            })
            .collect()
    } else {
        local.as_bytes().to_vec()
    };
    match domain {
        Some(d) => [d.as_bytes(), b"!", &local].concat(),
        None => local,
    }
}

/// A root's name as Cyrus's report prints it (the admin namespace); the whole-domain root
/// `example.com!` as is (Cyrus prints `(null)`).
fn root_external(root: &[u8], nc: &NameConfig) -> String {
    if root.ends_with(b"!") {
        return String::from_utf8_lossy(root).into_owned();
    }
    MboxName::from_internal(root, nc)
        .and_then(|n| n.to_external(nc))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(root).into_owned())
}

/// Percent used as Cyrus computes it: `(used / unit) * 100 / limit`, integer math.
fn percent(used: u64, unit: u64, limit: u64) -> u64 {
    (used / unit.max(1)).saturating_mul(100) / limit.max(1)
}

/// Cyrus's `reportquota` layout, byte for byte.
pub fn report_cyrus(rows: &[(String, QuotaRecord)]) -> String {
    let mut out = String::from("   Quota   % Used     Used             Resource Root\n");
    for (ext, q) in rows {
        for res in Resource::ALL {
            let rq = q.get(res);
            match rq.limit {
                Some(0) => out.push_str("       0         "),
                Some(l) => out.push_str(&format!(" {l:7} {:8}", percent(rq.used, res.unit(), l))),
                None => out.push_str("                 "),
            }
            out.push_str(&format!(
                " {:8} {:>20} {ext}\n",
                rq.used / res.unit(),
                res.imap_name()
            ));
        }
    }
    out
}

fn report_table(rows: &[(String, QuotaRecord)]) -> comfy_table::Table {
    let mut t = crate::ui::table(&["Root", "Resource", "Quota", "% Used", "Used"]);
    for (ext, q) in rows {
        for res in Resource::ALL {
            let rq = q.get(res);
            let (limit, pct) = match rq.limit {
                Some(l) if l > 0 => (l.to_string(), percent(rq.used, res.unit(), l).to_string()),
                Some(_) => ("0".into(), String::new()),
                None => (String::new(), String::new()),
            };
            // Full roots in red, nearly full ones (90 %) in yellow, on a terminal.
            let pct_cell = match pct.parse::<u64>() {
                Ok(p) if p >= 100 => crate::ui::paint_cell(crate::ui::Colour::Red, pct),
                Ok(p) if p >= 90 => crate::ui::paint_cell(crate::ui::Colour::Yellow, pct),
                _ => comfy_table::Cell::new(pct),
            };
            t.add_row(vec![
                comfy_table::Cell::new(ext),
                comfy_table::Cell::new(res.imap_name()),
                comfy_table::Cell::new(limit),
                pct_cell,
                comfy_table::Cell::new(rq.used / res.unit()),
            ]);
        }
    }
    t
}

/// Cyrus's `quota -J` document (usage and limits in bytes/counts; limit only when > 0),
/// with our `percent` next to each limit.
pub fn report_json(rows: &[(String, QuotaRecord)]) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    for (ext, q) in rows {
        let mut root = serde_json::Map::new();
        for res in Resource::ALL {
            let rq = q.get(res);
            let mut o = serde_json::Map::new();
            o.insert("used".into(), rq.used.into());
            if let Some(l) = rq.limit.filter(|l| *l > 0) {
                o.insert("limit".into(), l.saturating_mul(res.unit()).into());
                o.insert("percent".into(), percent(rq.used, res.unit(), l).into());
            }
            root.insert(res.imap_name().into(), o.into());
        }
        doc.insert(ext.clone(), root.into());
    }
    doc.into()
}

/// Locks of a set of mailboxes held together; `*U*` locks are shared between mailboxes of
/// one user (never opened twice: closing any descriptor of a file drops our POSIX lock).
#[derive(Default)]
struct HeldMailboxes {
    namespace: BTreeMap<PathBuf, FileLock>,
    /// Name lock and index lock per mailbox, in the order taken.
    each: Vec<(FileLock, FileLock)>,
}

impl Drop for HeldMailboxes {
    fn drop(&mut self) {
        // Reverse order of acquisition: index, name, then the namespace locks.
        while let Some((name, idx)) = self.each.pop() {
            drop(idx);
            drop(name);
        }
        self.namespace.clear();
    }
}

fn path_string(p: &Path) -> String {
    p.display().to_string()
}

impl Fixer<'_> {
    fn note(&mut self, c: Change) {
        if !self.quiet_changes {
            eprintln!("{}", c.line());
        }
        self.changes.push(c);
    }

    fn mbox<'m>(&self, rec: &'m MboxRecord) -> Result<Mbox<'m>, String> {
        let dir = if rec.entry.legacy_dirs() {
            MailboxDir::Legacy(&rec.name)
        } else {
            rec.entry
                .uniqueid
                .as_deref()
                .and_then(|u| std::str::from_utf8(u).ok())
                .map(MailboxDir::Uuid)
                .ok_or_else(|| "uuid-layout entry without a usable unique id".to_string())?
        };
        let part = rec
            .entry
            .partition
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let file = |f| {
            self.layout
                .meta_file(&part, dir, f, false)
                .map_err(|e| e.to_string())
        };
        Ok(Mbox {
            rec,
            name: rec.name.to_internal(),
            dir,
            header_path: file(MetaFile::Header)?,
            index_path: file(MetaFile::Index)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fix(
        &mut self,
        mboxlist: &Mboxlist,
        all_roots: &[Vec<u8>],
        selected: &BTreeSet<Vec<u8>>,
        args: &QuotaArgs,
        nc: &NameConfig,
        common: &Common,
    ) -> anyhow::Result<()> {
        // Records that do not parse: rebuilt before anything is counted, so deliveries from
        // here on update a record Cyrus reads (Cyrus's quota -f skips such a root, and so
        // loses it: `do_onequota` ignores what `quota_parseval` refuses). Stale SCAN data
        // from an interrupted run goes (Cyrus's fixquota_addroot drops it).
        for root in selected {
            let mut rl = self.store.lock_root_for_repair(root, LOCK_TIMEOUT)?;
            if let Some(d) = rl.damaged.clone() {
                let q = rebuilt_record(&d.raw);
                let limits = Resource::ALL
                    .iter()
                    .filter_map(|r| q.get(*r).limit.map(|l| (r.imap_name(), l)))
                    .collect();
                self.note(Change::Rebuilt {
                    root: String::from_utf8_lossy(root).into_owned(),
                    why: d.why,
                    limits,
                });
                if !self.dry_run {
                    rl.write(&q)?;
                }
                self.rebuilt.insert(root.clone(), q);
                continue;
            }
            if let (false, Some(mut q)) =
                (self.dry_run, rl.record.clone().filter(|q| q.scan.is_some()))
            {
                q.scan = None;
                rl.write(&q)?;
            }
        }
        let filter = mailbox_filter(args, nc)?;
        // Mailboxes by the root that owns them (sorted by internal name: the SCAN order).
        let mut by_root: BTreeMap<Vec<u8>, Vec<Mbox<'_>>> = BTreeMap::new();
        let mut unrooted = Vec::new();
        let mut failed_roots: BTreeSet<Vec<u8>> = BTreeSet::new();
        for rec in mboxlist.live() {
            if rec.entry.mbtype.intermediate {
                continue;
            }
            let name = rec.name.to_internal();
            let owner = owning_root(all_roots, &name).map(<[u8]>::to_vec);
            let in_scope = match &owner {
                Some(o) => selected.contains(o),
                None => filter(&name),
            };
            if !in_scope {
                continue;
            }
            let m = match self.mbox(rec) {
                Ok(m) => m,
                Err(e) => {
                    self.errors
                        .push(format!("{}: {e}", String::from_utf8_lossy(&name)));
                    if let Some(o) = owner {
                        failed_roots.insert(o);
                    }
                    continue;
                }
            };
            match owner {
                Some(o) => by_root.entry(o).or_default().push(m),
                None => unrooted.push(m),
            }
        }
        for v in by_root.values_mut() {
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }

        // Pass 1: quota-root pointers, before any counting, so that deliveries from here on
        // charge the right root.
        let bar = crate::ui::progress_for("quota", !common.no_progress && !common.quiet);
        let total: usize = by_root.values().map(Vec::len).sum::<usize>() + unrooted.len();
        bar.set_length(total as u64 * 2);
        for (root, ms) in by_root.iter() {
            for m in ms {
                if let Err(e) = self.fix_pointer(m, Some(root)) {
                    self.errors.push(e);
                    failed_roots.insert(root.clone());
                }
                bar.inc(1);
            }
        }
        for m in &unrooted {
            if let Err(e) = self.fix_pointer(m, None) {
                self.errors.push(e);
            }
            bar.inc(1);
        }

        // Pass 2: usage, root by root.
        for root in selected {
            let ms: &[Mbox<'_>] = by_root.get(root).map(Vec::as_slice).unwrap_or(&[]);
            if failed_roots.contains(root) {
                self.errors.push(format!(
                    "{}: usage not changed (a mailbox of it could not be processed)",
                    String::from_utf8_lossy(root)
                ));
                bar.inc(ms.len() as u64);
                continue;
            }
            if ms.is_empty() {
                self.unused_root(root, args.remove_unused)?;
                continue;
            }
            if let Err(e) = self.count_root(root, ms) {
                self.errors
                    .push(format!("{}: {e:#}", String::from_utf8_lossy(root)));
            }
            bar.inc(ms.len() as u64);
        }
        bar.finish();
        Ok(())
    }

    /// A root no mailbox uses: deleted with `--remove-unused`, else its usage goes to 0.
    fn unused_root(&mut self, root: &[u8], remove: bool) -> anyhow::Result<()> {
        let ext = String::from_utf8_lossy(root).into_owned();
        if remove {
            self.note(Change::Removed { root: ext });
            if !self.dry_run {
                self.store.lock_root(root, LOCK_TIMEOUT)?.delete()?;
            }
            return Ok(());
        }
        self.note(Change::Unused { root: ext });
        let mut rl = self.store.lock_root_for_repair(root, LOCK_TIMEOUT)?;
        self.store_usage(root, &mut rl, [0; 4])
    }

    /// Set a mailbox's quota-root pointer to `want` when it differs: `cyrus.header`
    /// replaced atomically and the index header's `header_file_crc` rewritten, under the
    /// mailbox's write locks (Cyrus's `mailbox_commit_header` + `mailbox_commit_index`).
    ///
    /// A run killed between those two writes leaves the new header with the old CRC in the
    /// index (Cyrus's own commit has the same window; Cyrus opens such a mailbox with a
    /// warning). So a pointer that is already right but whose header CRC the index does
    /// not record is finished here: the CRC is rewritten, in reconstruct's words.
    fn fix_pointer(&mut self, m: &Mbox<'_>, want: Option<&[u8]>) -> Result<(), String> {
        let ext = String::from_utf8_lossy(&m.name).into_owned();
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{ext}: {what}: {e}");
        let read_header = |p: &Path| -> Result<(MailboxHeader, Vec<u8>), String> {
            let bytes = std::fs::read(p).map_err(|e| fail(&path_string(p), &e))?;
            let h = header::parse(&bytes).map_err(|e| fail(&path_string(p), &e))?;
            Ok((h, bytes))
        };
        // Index CRC 0 means "not recorded" (mailbox_read_header checks only non-zero CRCs).
        let crc_differs = |ih: &IndexHeader, bytes: &[u8]| {
            ih.header_file_crc != 0 && ih.header_file_crc != header::header_file_crc(bytes)
        };
        let (h, bytes) = read_header(&m.header_path)?;
        let pointer_wrong = h.quotaroot.as_deref() != want;
        let crc_wrong = std::fs::File::open(&m.index_path)
            .ok()
            .and_then(|f| read_index_header(&f, &m.index_path).ok())
            .is_some_and(|(ih, _)| crc_differs(&ih, &bytes));
        if !pointer_wrong && !crc_wrong {
            return Ok(());
        }
        let show = |r: Option<&[u8]>| r.map(|r| String::from_utf8_lossy(r).into_owned());
        if pointer_wrong {
            self.note(Change::Pointer {
                mailbox: ext.clone(),
                old: show(h.quotaroot.as_deref()),
                new: show(want),
            });
        } else {
            self.note(Change::HeaderCrc {
                mailbox: ext.clone(),
            });
        }
        if self.dry_run {
            return Ok(());
        }
        let held = self
            .lock_mailboxes(&[m], LockMode::Exclusive)
            .map_err(|e| fail("locking", &e))?;
        let Some((_, idx)) = held.each.first() else {
            return Err(fail("locking", &"no index lock"));
        };
        // Re-read under the lock: another process may have fixed it meanwhile.
        let (mut h, mut bytes) = read_header(&m.header_path)?;
        let (mut ih, version) = read_index_header(idx.file(), &m.index_path)?;
        let new_header = h.quotaroot.as_deref() != want;
        if !new_header && !crc_differs(&ih, &bytes) {
            return Ok(());
        }
        if new_header {
            h.quotaroot = want.map(<[u8]>::to_vec);
            bytes = h.write().map_err(|e| fail("writing cyrus.header", &e))?;
        }
        ih.header_file_crc = header::header_file_crc(&bytes);
        let ibytes = index::write_header(&ih, version).map_err(|e| fail("cyrus.index", &e))?;
        if new_header {
            crate::spool::atomic::replace(&m.header_path, &bytes)
                .map_err(|e| fail("cyrus.header", &e))?;
        }
        idx.file()
            .write_all_at(&ibytes, 0)
            .and_then(|()| idx.file().sync_data())
            .map_err(|e| fail(&path_string(&m.index_path), &e))?;
        crate::spool::atomic::crash_point("index-header");
        Ok(())
    }

    /// Take the locks of `ms` in Cyrus's order (`*U*user`, name, `cyrus.index`), the index
    /// locks in `index_mode` (shared to read usage, exclusive to rewrite). While holding
    /// some, waits only briefly for the next; on a miss gives everything back and retries.
    fn lock_mailboxes(
        &self,
        ms: &[&Mbox<'_>],
        index_mode: LockMode,
    ) -> Result<HeldMailboxes, LockError> {
        let ns_mode = index_mode;
        let mut attempt = 0;
        loop {
            let mut held = HeldMailboxes::default();
            let mut missed = None;
            for m in ms {
                let wait = if held.each.is_empty() && held.namespace.is_empty() {
                    LOCK_TIMEOUT
                } else {
                    CHUNK_LOCK_WAIT
                };
                match self.lock_one(m, &mut held, ns_mode, index_mode, wait) {
                    Ok(()) => {}
                    Err(LockError::Timeout { path, waited }) if wait == CHUNK_LOCK_WAIT => {
                        missed = Some(LockError::Timeout { path, waited });
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            match missed {
                None => return Ok(held),
                Some(e) if attempt >= CHUNK_RETRIES => return Err(e),
                Some(_) => {
                    drop(held);
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 * u64::from(attempt.min(20))));
                }
            }
        }
    }

    fn lock_one(
        &self,
        m: &Mbox<'_>,
        held: &mut HeldMailboxes,
        ns_mode: LockMode,
        index_mode: LockMode,
        wait: Duration,
    ) -> Result<(), LockError> {
        let path_err = |e: crate::spool::paths::PathError| LockError::Open {
            path: m.index_path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        // mailbox_open_advanced: the user namespace lock for user mailboxes (shared to read,
        // exclusive to write), then the name lock shared, then the index lock.
        if let Some(user) = m.rec.name.userid() {
            let ns = self
                .layout
                .user_namespace_lock_file(Some(&user))
                .map_err(path_err)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = held.namespace.entry(ns) {
                let l = lock::lock_path(slot.key(), ns_mode, wait)?;
                slot.insert(l);
            }
        }
        let name_lock = self.layout.mailbox_lock_file(m.dir).map_err(path_err)?;
        let name = lock::lock_path(&name_lock, LockMode::Shared, wait)?;
        let idx = lock::lock_existing(&m.index_path, index_mode, wait)?;
        held.each.push((name, idx));
        Ok(())
    }

    /// Sum the usage of `ms` (all of one root) and store it in `root`.
    fn count_root(&mut self, root: &[u8], ms: &[Mbox<'_>]) -> anyhow::Result<()> {
        if self.dry_run {
            return self.count_root_dry(root, ms);
        }
        if ms.len() <= CHUNK {
            let refs: Vec<&Mbox<'_>> = ms.iter().collect();
            let held = self.lock_mailboxes(&refs, LockMode::Shared)?;
            let sum = sum_usage(&held, &refs)?;
            // Deliveries to these mailboxes are blocked now, so no change to them is
            // half-way: the stored value can be replaced by the sum.
            let mut rl = self.store.lock_root(root, LOCK_TIMEOUT)?;
            self.store_usage(root, &mut rl, sum)?;
            drop(rl);
            drop(held);
            return Ok(());
        }
        // Cyrus's SCAN protocol, one locked root write per chunk.
        for chunk in ms.chunks(CHUNK) {
            let refs: Vec<&Mbox<'_>> = chunk.iter().collect();
            let held = self.lock_mailboxes(&refs, LockMode::Shared)?;
            let sum = sum_usage(&held, &refs)?;
            let mut rl = self.store.lock_root(root, LOCK_TIMEOUT)?;
            let Some(mut q) = rl.record.clone() else {
                anyhow::bail!("the quota root disappeared during the scan");
            };
            let mut scan = q.scan.take().unwrap_or_default();
            add_usage(&mut scan.used, &sum);
            scan.mbox = refs.last().map(|m| m.name.clone()).unwrap_or_default();
            q.scan = Some(scan);
            rl.write(&q)?;
        }
        let mut rl = self.store.lock_root(root, LOCK_TIMEOUT)?;
        let scanned = rl
            .record
            .as_ref()
            .and_then(|q| q.scan.as_ref())
            .map(|s: &QuotaScan| s.used)
            .context("the SCAN data disappeared during the scan")?;
        self.store_usage(root, &mut rl, scanned)
    }

    /// `-n`: the same sums without writing; a root that changed while it was scanned is
    /// scanned again.
    fn count_root_dry(&mut self, root: &[u8], ms: &[Mbox<'_>]) -> anyhow::Result<()> {
        let read = |s: &QuotaStore| -> anyhow::Result<Option<QuotaRecord>> {
            Ok(s.lock_root_for_repair(root, LOCK_TIMEOUT)?.record)
        };
        for _ in 0..DRY_RESCANS {
            let before = read(&self.store)?;
            let mut sum = [0u64; 4];
            for chunk in ms.chunks(CHUNK) {
                let refs: Vec<&Mbox<'_>> = chunk.iter().collect();
                let held = self.lock_mailboxes(&refs, LockMode::Shared)?;
                add_usage(&mut sum, &sum_usage(&held, &refs)?);
            }
            let mut rl = self.store.lock_root_for_repair(root, LOCK_TIMEOUT)?;
            if rl.record == before {
                return self.store_usage(root, &mut rl, sum);
            }
        }
        anyhow::bail!("its usage kept changing during {DRY_RESCANS} scans; not checked")
    }

    /// Compare the root's stored usage with `now`, report each difference in Cyrus's words,
    /// and (unless `-n`) store it with the SCAN data removed. Limits are never touched.
    fn store_usage(&mut self, root: &[u8], rl: &mut RootLock, now: Usage) -> anyhow::Result<()> {
        // -n: a damaged record is compared as it would be rebuilt.
        let stored = rl.record.clone();
        let Some(mut q) = stored.or_else(|| self.rebuilt.get(root).cloned()) else {
            anyhow::bail!("{}: the quota root disappeared", rl.path().display());
        };
        let mut changed = false;
        for res in Resource::ALL {
            let new = now.get(res.index()).copied().unwrap_or_default();
            let was = q.get(res).used;
            if was != new {
                self.note(Change::Usage {
                    root: String::from_utf8_lossy(root).into_owned(),
                    resource: res.imap_name(),
                    was,
                    now: new,
                });
                q.get_mut(res).used = new;
                changed = true;
            }
        }
        if self.dry_run || (!changed && q.scan.is_none()) {
            return Ok(());
        }
        q.scan = None;
        // quota_write bumps MODSEQ on every write of a user's root (3.6 without
        // conversations: +1); shared roots keep theirs.
        if changed && is_user_root(root) {
            q.modseq = Some(q.modseq.unwrap_or(0).saturating_add(1));
        }
        rl.write(&q)?;
        Ok(())
    }
}

fn is_user_root(root: &[u8]) -> bool {
    let local = match root.iter().position(|&b| b == b'!') {
        Some(i) => root.get(i + 1..).unwrap_or_default(),
        None => root,
    };
    local.starts_with(b"user.")
}

/// Which mailboxes without a root a partial run may clear the pointer of: those the
/// arguments name, as Cyrus's `fixquota_dopass` walks them.
type NameFilter = Box<dyn Fn(&[u8]) -> bool>;

fn mailbox_filter(args: &QuotaArgs, nc: &NameConfig) -> anyhow::Result<NameFilter> {
    let domain_prefix = args
        .domain
        .as_ref()
        .map(|d| format!("{d}!").into_bytes())
        .unwrap_or_default();
    if args.prefixes.is_empty() {
        return Ok(Box::new(move |n: &[u8]| n.starts_with(&domain_prefix)));
    }
    let mut prefixes: Vec<(Vec<u8>, bool)> = Vec::new();
    for spec in &args.prefixes {
        if args.users {
            let inbox = MboxName::user_inbox(spec.as_bytes(), nc)
                .map_err(|e| UsageError(format!("user id {spec:?}: {e}")))?
                .to_internal();
            prefixes.push((inbox, true));
        } else {
            let mut p = domain_prefix.clone();
            p.extend_from_slice(&spec_internal(spec, nc));
            prefixes.push((p, false));
        }
    }
    Ok(Box::new(move |n: &[u8]| {
        prefixes.iter().any(|(p, tree)| {
            n.starts_with(p) && (!tree || n.len() == p.len() || n.get(p.len()) == Some(&b'.'))
        })
    }))
}

/// The index header of a locked `cyrus.index`, read through the locked descriptor, with its
/// CRC checked (Cyrus refuses to open a mailbox whose header CRC is wrong).
fn read_index_header(f: &std::fs::File, path: &Path) -> Result<(IndexHeader, u32), String> {
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    buf.truncate(got);
    let h = index::parse_header(&buf).map_err(|e| format!("{}: {e}", path.display()))?;
    let version = h.minor_version;
    let size = index::header_size(version).unwrap_or(0);
    let ok = size >= 4 && buf.get(..size - 4).map(crate::format::crc::crc32) == Some(h.header_crc);
    if !ok {
        return Err(format!(
            "{}: index header CRC mismatch (run cyrkit reconstruct on the mailbox)",
            path.display()
        ));
    }
    Ok((h, version))
}

/// Sum of the usage of the locked mailboxes.
fn sum_usage(held: &HeldMailboxes, ms: &[&Mbox<'_>]) -> anyhow::Result<Usage> {
    let mut sum = [0u64; 4];
    for ((_, idx), m) in held.each.iter().zip(ms) {
        let (h, _) = read_index_header(idx.file(), &m.index_path).map_err(anyhow::Error::msg)?;
        add_usage(&mut sum, &mailbox_usage(&h));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::quota::ResourceQuota;

    fn rec(storage: (u64, Option<u64>), msgs: (u64, Option<u64>)) -> QuotaRecord {
        let mut q = QuotaRecord::new();
        q.resources[0] = ResourceQuota {
            used: storage.0,
            limit: storage.1,
        };
        q.resources[1] = ResourceQuota {
            used: msgs.0,
            limit: msgs.1,
        };
        q.resources[3].used = 5;
        q
    }

    #[test]
    fn cyrus_report_layout_matches_real_output() {
        // Real Cyrus 3.6.1 output (db-format doc §3.4).
        let rows = vec![(
            "user.alice".to_string(),
            rec((0, Some(1000)), (1, Some(50))),
        )];
        assert_eq!(
            report_cyrus(&rows),
            "   Quota   % Used     Used             Resource Root\n\
            \x20   1000        0        0              STORAGE user.alice\n\
            \x20     50        2        1              MESSAGE user.alice\n\
            \x20                        0 X-ANNOTATION-STORAGE user.alice\n\
            \x20                        5        X-NUM-FOLDERS user.alice\n"
        );
    }

    #[test]
    fn zero_limit_and_kib_units() {
        let rows = vec![(
            "shared".to_string(),
            rec((10 * 1024 + 5, Some(0)), (3, None)),
        )];
        let out = report_cyrus(&rows);
        let line = out.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "       0                10              STORAGE shared"
        );
        let json = report_json(&rows);
        assert_eq!(json["shared"]["STORAGE"]["used"], 10 * 1024 + 5);
        assert!(json["shared"]["STORAGE"].get("limit").is_none());
        assert!(json["shared"]["MESSAGE"].get("limit").is_none());
    }

    #[test]
    fn json_limits_in_bytes_with_percent() {
        let rows = vec![(
            "user.bob".to_string(),
            rec((6297, Some(5)), (13, Some(100))),
        )];
        let json = report_json(&rows);
        assert_eq!(json["user.bob"]["STORAGE"]["limit"], 5 * 1024);
        assert_eq!(json["user.bob"]["STORAGE"]["percent"], 120);
        assert_eq!(json["user.bob"]["MESSAGE"]["limit"], 100);
        assert_eq!(json["user.bob"]["MESSAGE"]["percent"], 13);
    }

    #[test]
    fn change_lines_use_cyrus_wording() {
        let c = Change::Usage {
            root: "user.bob".into(),
            resource: "STORAGE",
            was: 1,
            now: 6297,
        };
        assert_eq!(c.line(), "user.bob: STORAGE usage was 1, now 6297");
        let p = Change::Pointer {
            mailbox: "user.bob.Sent".into(),
            old: None,
            new: Some("user.bob".into()),
        };
        assert_eq!(p.line(), "user.bob.Sent: quota root (none) --> user.bob");
        assert_eq!(
            Change::Removed {
                root: "shared.x".into()
            }
            .line(),
            "shared.x: removed"
        );
    }

    #[test]
    fn prefixes_select_like_cyrus() {
        let nc = NameConfig {
            unixhierarchysep: false,
            ..NameConfig::default()
        };
        let all: Vec<Vec<u8>> = [
            "shared.folder",
            "user.alan",
            "user.alice",
            "user.alice.Sub",
            "user.bob",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let args = |p: &[&str], users: bool| QuotaArgs {
            fix: false,
            dry_run: false,
            domain: None,
            users,
            cyrus_json: false,
            remove_unused: false,
            prefixes: p.iter().map(|s| s.to_string()).collect(),
        };
        let got = select_roots(&all, &args(&["user.al"], false), &nc).unwrap();
        assert_eq!(got.len(), 3);
        let got = select_roots(&all, &args(&["alice"], true), &nc).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![b"user.alice".to_vec(), b"user.alice.Sub".to_vec()]
        );
        assert_eq!(select_roots(&all, &args(&[], false), &nc).unwrap().len(), 5);
        // With unixhierarchysep (3.6's default) the argument is `user/al`.
        let unix = NameConfig::default();
        let got = select_roots(&all, &args(&["user/al"], false), &unix).unwrap();
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn percent_is_integer_math_on_limit_units() {
        assert_eq!(percent(10802, 1024, 10000), 0);
        assert_eq!(percent(6297, 1024, 5), 120);
        assert_eq!(percent(u64::MAX, 1, 1), u64::MAX);
    }
}
