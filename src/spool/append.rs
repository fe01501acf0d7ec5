//! Writing a mailbox in place, under Cyrus's locks, while Cyrus runs: the spool side of
//! delivery (lmtpd's `deliver_mailbox` → `append_fromstage` → `append_commit`) and of
//! POP3's QUIT (`mailbox_rewrite_index_record` + `mailbox_commit`).
//!
//! # What a commit changes, and in which order
//! As `mailbox_append_index_record` and `mailbox_commit` (imap/mailbox.c, 3.6.1) do, never
//! replacing `cyrus.index` or `cyrus.cache` (a running imapd has them mapped):
//! 1. message files: hard-linked from the stage file (`singleinstancestore`, same
//!    filesystem) or copied, atime/mtime set to the internaldate (`utime`); at commit each
//!    is fsynced, then the data directory;
//! 2. `cyrus.cache`: the new entries are appended at the file's end, fsync;
//! 3. the quota root: usage now − usage at open added under the root's lock
//!    (`quota_update_useds`, with the `SCAN` totals of a running `quota -f` and the next
//!    `MODSEQ` of a user root) — before the index, as Cyrus does, so a crash can only leave
//!    the root counting too much, never too little;
//! 4. `cyrus.index` records: appended at `start_offset + recno × record_size`, changed
//!    ones rewritten in place, fsync;
//! 5. the `cyrus.index` header, rewritten last (counts, `num_records`, `last_uid`,
//!    `highestmodseq`, `last_appenddate`, both sync CRCs, header CRC), fsync.
//!
//! A crash before 5 leaves records past `num_records` (Cyrus ignores them and overwrites
//! them on its next append), cache entries nothing points at (harmless; a repack drops
//! them) and message files without a record (uid > `last_uid`; Cyrus's `reconstruct`
//! adopts them). A crash in 4 with changed records (not appends) leaves records newer than
//! the header, whose counts still include the old records (Cyrus has the same window):
//! the next open for writing or POP3 login repairs it, under the exclusive index lock,
//! from the records ([`repair_torn_commit`]).
//!
//! # What a Cyrus 3.6 delivery touches, and what is kept here
//! With the Debian defaults (`conversations: no`, `statuscache: no`, `sync_log: no`):
//! message file, `cyrus.cache`, `cyrus.index`, the quota root, `deliver.db`
//! ([`deliver_db`](crate::spool::deliver_db)). Per-user `counters` are only written with
//! conversations on (`mboxname_domodseq` returns `last + 1` otherwise), `cyrus.annotations`
//! is untouched by a plain delivery, seen state is not set by lmtpd. Those settings are
//! refused ([`AppendError::Unsupported`]) rather than half done: `conversations: yes`
//! (conversations db, per-user modseq counters, thread ids), `statuscache: yes` (the
//! status cache would go stale), `sync_log: yes` (replication would miss the change).
//! Not done: the per-mailbox message-count limits `mailbox_maxmessages_*` (default
//! unlimited), and on an expunge the removal of the message's own annotations from
//! `sync_crc_annot`/`quota_annot_used` (delivered and POP3-read messages have none; a
//! warning is logged when `cyrus.annotations` holds entries for the uid).
//!
//! # Threads
//! The locks are fcntl locks on open file descriptions (see [`crate::spool::lock`]), so two
//! writers in one process exclude each other like two Cyrus processes do.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::cache::CACHE_VERSION_36;
use crate::format::crc::crc32;
use crate::format::header::{self as mbheader, MailboxHeader};
use crate::format::index::{
    self, IndexHeader, IndexRecord, FLAG_ANSWERED, FLAG_DELETED, FLAG_FLAGGED,
    FLAG_INTERNAL_NEEDS_CLEANUP, FLAG_INTERNAL_UNLINKED, FLAG_SEEN,
};
use crate::mime::ParseOptions;
use crate::spool::atomic::crash_point;
use crate::spool::config::{Config, ExpungeMode};
use crate::spool::lock::{LockError, LockStack};
use crate::spool::mailbox::{self, MailboxFiles};
use crate::spool::mailbox_lock::{MailboxLockError, OpenMode};
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::Layout;
use crate::spool::quota::{mailbox_usage, QuotaStore, QuotaStoreError};

/// How long to wait for a lock Cyrus holds before giving up with [`AppendError::Locked`].
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a delivery or an update failed; each maps to one LMTP/POP3 reply.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// LMTP 550 5.1.1.
    #[error("mailbox {name} does not exist")]
    MailboxUnknown { name: String },
    /// LMTP 452 4.2.2 (or 552 5.2.2 with `lmtp_over_quota_perm_failure`).
    #[error("over quota (root {root})")]
    OverQuota { root: String },
    /// LMTP 451 4.3.0: a lock was held too long (Cyrus busy with the mailbox).
    #[error("{path}: lock held too long by another process")]
    Locked { path: PathBuf },
    /// LMTP 451 4.3.1: ENOSPC or EDQUOT.
    #[error("{path}: no space left: {source}")]
    NoSpace { path: PathBuf, source: io::Error },
    /// LMTP 451 4.3.0.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// LMTP 451 4.3.0: tell the admin to run reconstruct.
    #[error("{path}: {detail} (run `cyrkit reconstruct` on the mailbox)")]
    Corrupt { path: PathBuf, detail: String },
    /// LMTP 451 4.3.0: a setting or mailbox kind this writer does not keep consistent.
    #[error("cannot deliver here: {what}")]
    Unsupported { what: String },
    /// A caller error (bad record number, forbidden record change).
    #[error("{0}")]
    Invalid(String),
}

impl AppendError {
    /// An I/O error at `path`: [`AppendError::NoSpace`] for ENOSPC/EDQUOT, else `Io`.
    pub(crate) fn io(path: &Path) -> impl Fn(io::Error) -> AppendError + '_ {
        move |source| {
            let path = path.to_path_buf();
            match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => AppendError::NoSpace { path, source },
                _ => AppendError::Io { path, source },
            }
        }
    }

    fn corrupt(path: &Path, detail: impl Into<String>) -> AppendError {
        AppendError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

impl From<LockError> for AppendError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Timeout { path, .. } => AppendError::Locked { path },
            LockError::Open { path, source } | LockError::Fcntl { path, source } => {
                AppendError::io(&path)(source)
            }
        }
    }
}

impl From<MailboxLockError> for AppendError {
    fn from(e: MailboxLockError) -> Self {
        match e {
            MailboxLockError::Lock(l) => l.into(),
            MailboxLockError::Path(p) => AppendError::Unsupported {
                what: p.to_string(),
            },
        }
    }
}

impl From<QuotaStoreError> for AppendError {
    fn from(e: QuotaStoreError) -> Self {
        match e {
            QuotaStoreError::Lock(l) => l.into(),
            QuotaStoreError::Io { path, source } => AppendError::io(&path)(source),
            QuotaStoreError::Atomic(a) => AppendError::io(&a.path)(a.source),
            QuotaStoreError::Record { path, root, why } => {
                AppendError::corrupt(&path, format!("quota root {root}: {why}"))
            }
            QuotaStoreError::Db { path, source } => AppendError::corrupt(&path, source.to_string()),
            other => AppendError::Unsupported {
                what: other.to_string(),
            },
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds in the time unit of index `version` (v20 stores nanoseconds).
fn version_time(secs: u64, version: u32) -> u64 {
    if version >= 20 {
        secs.saturating_mul(1_000_000_000)
    } else {
        secs
    }
}

// ---------------------------------------------------------------------------------------------
// The context

/// What every delivery needs of the server's configuration; cheap to clone.
#[derive(Debug, Clone)]
pub struct SpoolContext {
    pub config: Arc<Config>,
    pub layout: Layout,
    pub names: NameConfig,
    /// How long to wait for Cyrus's locks.
    pub lock_timeout: Duration,
    parse: ParseOptions,
    quota: Option<QuotaStore>,
}

impl SpoolContext {
    pub fn open(config: Arc<Config>) -> Result<SpoolContext, AppendError> {
        let unsupported = |what: String| AppendError::Unsupported { what };
        let layout = Layout::from_config(&config).map_err(|e| unsupported(e.to_string()))?;
        let names = NameConfig::from_config(&config).map_err(|e| unsupported(e.to_string()))?;
        let parse = ParseOptions {
            rfc2047_utf8: config.rfc2047_utf8(),
            maxheaderlines: usize::try_from(config.maxheaderlines()).unwrap_or(1000),
            ..Default::default()
        };
        let quota = QuotaStore::open(&config, &layout).ok();
        Ok(SpoolContext {
            config,
            layout,
            names,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            parse,
            quota,
        })
    }

    /// The message parser settings of this configuration (`rfc2047_utf8`, `maxheaderlines`).
    pub fn parse_options(&self) -> &ParseOptions {
        &self.parse
    }

    /// The settings under which this writer would leave Cyrus's state inconsistent (see the
    /// module docs), as a message for the log; `None` when delivery is possible.
    pub fn unsupported_settings(&self) -> Option<String> {
        for key in ["conversations", "statuscache", "sync_log"] {
            if self.config.get_bool(key, false).unwrap_or(true) {
                return Some(format!(
                    "imapd.conf sets {key}: yes, which cyrkit's delivery does not maintain \
                     (deliver with Cyrus's lmtpd, or turn {key} off)"
                ));
            }
        }
        None
    }

    /// Fresh lookup in mailboxes.db (the db changes while a server runs). Only local,
    /// usable mailboxes are returned (no tombstones, remote, intermediate or reserved
    /// entries), as `mboxlist_lookup` answers lmtpd.
    pub fn lookup(&self, internal_name: &[u8]) -> Result<Option<MboxRecord>, AppendError> {
        let Ok(name) = MboxName::from_internal(internal_name, &self.names) else {
            return Ok(None);
        };
        if let Some(found) = self.lookup_twoskip(&name, internal_name)? {
            return Ok(Some(found));
        }
        let list = Mboxlist::load(&self.config, &self.names, self.lock_timeout).map_err(|e| {
            AppendError::Io {
                path: self.config.mboxlist_db_path(),
                source: io::Error::other(e.to_string()),
            }
        })?;
        Ok(Self::usable(&list, internal_name))
    }

    /// The fast path of [`lookup`](Self::lookup): one skip-list search of a twoskip
    /// `mailboxes.db` for the mailbox's `N` key (what Cyrus's `mboxlist_lookup` does), under
    /// the shared lock, instead of decoding every entry of the database. Every delivery
    /// looks its mailbox up several times, so the full load made each one cost O(mailboxes).
    /// `None` whenever it cannot give the answer the full load would (no such key, an older
    /// key format, another backend, any error): the caller then loads the whole database,
    /// which also reports the problem.
    fn lookup_twoskip(
        &self,
        name: &MboxName,
        internal_name: &[u8],
    ) -> Result<Option<MboxRecord>, AppendError> {
        use crate::format::mboxlist::MboxKey;
        use crate::spool::config::DbBackend;
        use crate::spool::lock::{lock_file, LockMode};
        if self.config.mboxlist_db() != DbBackend::Twoskip {
            return Ok(None);
        }
        let path = self.config.mboxlist_db_path();
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        let held = lock_file(file, &path, LockMode::Shared, self.lock_timeout)?;
        let Ok(map) = crate::spool::db::map_file(held.file()) else {
            return Ok(None);
        };
        let Ok(db) = crate::format::twoskip::TwoskipDb::open(&map) else {
            return Ok(None);
        };
        let key = MboxKey::Name(name.to_dbname()).encode();
        let Ok(Some(value)) = db.get(&key) else {
            return Ok(None);
        };
        let list = Mboxlist::from_pairs(&[(key, value.to_vec())], &self.names);
        Ok(Self::usable(&list, internal_name))
    }

    /// The entry `lookup` answers with: live, not intermediate, reserved or deleted.
    fn usable(list: &Mboxlist, internal_name: &[u8]) -> Option<MboxRecord> {
        list.live()
            .find(|m| {
                let t = &m.entry.mbtype;
                !t.intermediate && !t.reserve && !t.deleted && m.name.to_internal() == internal_name
            })
            .cloned()
    }

    fn lookup_required(&self, internal_name: &[u8]) -> Result<MboxRecord, AppendError> {
        self.lookup(internal_name)?
            .ok_or_else(|| AppendError::MailboxUnknown {
                name: lossy(internal_name),
            })
    }

    /// Quota check as Cyrus's lmtpd does: Err(OverQuota) if the root of `internal_name`,
    /// with `storage_delta` bytes and `message_delta` messages added, exceeds a limit
    /// (deltas 0 = "already over" check; all resources checked at RCPT time).
    ///
    /// `quota_check`: a resource fails when `used + delta > limit × unit` (STORAGE and
    /// X-ANNOTATION-STORAGE limits are KiB, usage bytes); X-ANNOTATION-STORAGE and
    /// X-NUM-FOLDERS are checked with delta 0. The root is the mailbox's `cyrus.header`
    /// `Q` (the only link Cyrus uses); no root, or a root without a record, never fails.
    pub fn check_quota(
        &self,
        internal_name: &[u8],
        storage_delta: u64,
        message_delta: u64,
    ) -> Result<(), AppendError> {
        let deltas = [Some(storage_delta), Some(message_delta), Some(0), Some(0)];
        self.check_quota_resources(internal_name, deltas)
    }

    /// [`check_quota`](Self::check_quota) with a delta per resource (STORAGE, MESSAGE,
    /// X-ANNOTATION-STORAGE, X-NUM-FOLDERS); `None` skips the resource, as Cyrus's
    /// `QUOTA_DIFFS_DONTCARE` (-1) does: LMTP's IGNOREQUOTA still checks the last two.
    pub fn check_quota_resources(
        &self,
        internal_name: &[u8],
        deltas: [Option<u64>; 4],
    ) -> Result<(), AppendError> {
        let m = self.lookup_required(internal_name)?;
        let files =
            MailboxFiles::locate(&self.layout, &m).map_err(|e| AppendError::Unsupported {
                what: e.to_string(),
            })?;
        let header = read_mailbox_header(&files.header)?;
        let Some(root) = header.quotaroot.filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let Some(store) = &self.quota else {
            return Ok(());
        };
        let record = store.lock_root(&root, self.lock_timeout)?.record;
        let Some(q) = record else {
            return Ok(());
        };
        for res in crate::format::quota::Resource::ALL {
            let rq = q.get(res);
            let Some(limit) = rq.limit else { continue };
            let lim = limit.saturating_mul(res.unit());
            let Some(delta) = deltas.get(res.index()).copied().flatten() else {
                continue;
            };
            if rq.used.saturating_add(delta) > lim {
                return Err(AppendError::OverQuota { root: lossy(&root) });
            }
        }
        Ok(())
    }

    /// Remove the stage files a killed delivery process left behind: `<pid>-<time>-<n>`
    /// in every partition's `stage.` directory whose `<pid>` is no longer running (Cyrus's
    /// lmtpd names its stage files the same way, so a live Cyrus process keeps its own).
    /// A stage file is only a staging link: every mailbox copy is its own hard link, so
    /// removing it never removes mail. Returns how many were removed.
    pub fn remove_orphan_stage_files(&self) -> usize {
        let mut removed = 0;
        for root in self.config.partitions().values() {
            let dir = root.join("stage.");
            let Ok(m) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            if !m.is_dir() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse::<i32>().ok())
                    .filter(|p| *p > 0)
                else {
                    continue;
                };
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    .map_or_else(|e| e == nix::errno::Errno::EPERM, |()| true);
                if !alive && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Directory for stage files on a partition (`<partition>/stage./`, created on demand
    /// with the partition directory's owner, as lmtpd's `append_newstage` does).
    pub fn stage_dir(&self, partition: &str) -> Result<PathBuf, AppendError> {
        let root =
            self.config
                .partition_dir(partition)
                .ok_or_else(|| AppendError::Unsupported {
                    what: format!("partition {partition} is not configured"),
                })?;
        let dir = root.join("stage.");
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                log::info!("created stage directory {}", dir.display());
                if let Ok(m) = std::fs::metadata(&root) {
                    if nix::unistd::geteuid().is_root() {
                        let _ = std::os::unix::fs::chown(&dir, Some(m.uid()), Some(m.gid()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AppendError::io(&dir)(e)),
        }
        // Never through a symlink: stage files are written as the spool's owner (or as
        // root), and a `stage.` link planted to /tmp or /etc would make delivery write
        // mail (and remove files) wherever it points.
        let m = std::fs::symlink_metadata(&dir).map_err(AppendError::io(&dir))?;
        if !m.is_dir() {
            return Err(AppendError::io(&dir)(io::Error::other(
                "not a directory (a symbolic link is never followed)",
            )));
        }
        Ok(dir)
    }
}

fn read_mailbox_header(path: &Path) -> Result<MailboxHeader, AppendError> {
    let bytes = std::fs::read(path).map_err(AppendError::io(path))?;
    mbheader::parse(&bytes).map_err(|e| AppendError::corrupt(path, e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The staged message

/// A message file already written in full (in a stage directory), parsed once.
#[derive(Debug)]
pub struct StagedMessage {
    pub path: PathBuf,
    pub size: u64,
    pub guid: [u8; 20],
    /// The first `Message-ID` header's value (leading blanks and the final line end
    /// removed), as lmtpd's header cache holds it.
    pub message_id: Option<Vec<u8>>,
    /// The first `Date` header's value, likewise.
    pub date_header: Option<Vec<u8>>,
    /// Seconds since the epoch.
    pub internaldate: i64,
    header_size: u32,
    sentdate: u64,
    gmtime: u64,
    entry: Vec<u8>,
    parsed_with: ParseOptions,
    /// Copies made on other filesystems (device → path), linked from by later mailboxes
    /// there, removed when the message is dropped.
    copies: Mutex<Vec<(u64, PathBuf)>>,
}

impl StagedMessage {
    /// `internaldate`: seconds since the epoch (LMTP: the date of the Received header it added).
    pub fn from_file(path: &Path, internaldate: i64) -> Result<StagedMessage, AppendError> {
        Self::from_file_with(path, internaldate, &ParseOptions::default())
    }

    /// As [`StagedMessage::from_file`], parsing with the configuration's options
    /// ([`SpoolContext::parse_options`]); an append re-parses when they differ.
    pub fn from_file_with(
        path: &Path,
        internaldate: i64,
        opts: &ParseOptions,
    ) -> Result<StagedMessage, AppendError> {
        let data = std::fs::read(path).map_err(AppendError::io(path))?;
        if data.is_empty() {
            return Err(AppendError::Invalid(format!(
                "{}: message file is empty",
                path.display()
            )));
        }
        let msg = crate::mime::message::parse_message(&data, opts)
            .map_err(|e| AppendError::Invalid(format!("{}: {e}", path.display())))?;
        let entry = msg
            .cache_entry()
            .map_err(|e| AppendError::Invalid(format!("{}: {e}", path.display())))?;
        let headers = data
            .get(..usize::try_from(msg.header_size).unwrap_or(0))
            .unwrap_or_default();
        Ok(StagedMessage {
            path: path.to_path_buf(),
            size: msg.size,
            guid: msg.guid,
            message_id: header_value(headers, b"message-id"),
            date_header: header_value(headers, b"date"),
            internaldate,
            header_size: msg.header_size,
            sentdate: msg.sentdate,
            gmtime: msg.gmtime,
            entry,
            parsed_with: opts.clone(),
            copies: Mutex::new(Vec::new()),
        })
    }

    /// The record fields of this message (everything but uid, flags, modseqs, dates of
    /// the change and the cache offset), in index version 17 units.
    fn base_record(&self) -> IndexRecord {
        let internaldate = u64::try_from(self.internaldate).unwrap_or(0);
        let (sentdate, gmtime) =
            crate::mime::date::record_dates(self.sentdate, self.gmtime, internaldate);
        IndexRecord {
            internaldate,
            sentdate,
            gmtime,
            size: self.size,
            header_size: self.header_size,
            cache_version: CACHE_VERSION_36,
            guid: self.guid,
            cache_crc: crc32(&self.entry),
            ..IndexRecord::default()
        }
    }
}

impl Drop for StagedMessage {
    fn drop(&mut self) {
        if let Ok(copies) = self.copies.lock() {
            for (_, p) in copies.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The value of the first header `name` (lower case) in a header block, as Cyrus's
/// `spool_fill_hdrcache` keeps it: leading blanks skipped, folded lines kept, the final
/// line end removed.
pub fn header_value(block: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0usize;
    while pos < block.len() {
        let rest = block.get(pos..)?;
        // The logical line: up to a line end not followed by a blank.
        let mut end = 0usize;
        loop {
            let nl = rest.get(end..)?.iter().position(|&c| c == b'\n');
            let Some(nl) = nl else {
                end = rest.len();
                break;
            };
            end += nl + 1;
            match rest.get(end) {
                Some(b' ') | Some(b'\t') => continue,
                _ => break,
            }
        }
        let line = rest.get(..end)?;
        pos += end.max(1);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let field = line.get(..colon)?;
        let field = field.strip_suffix(b" ").unwrap_or(field);
        if !field.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut v = line.get(colon + 1..)?;
        while let Some((&c, r)) = v.split_first() {
            if c == b' ' || c == b'\t' {
                v = r;
            } else {
                break;
            }
        }
        let v = v.strip_suffix(b"\n").unwrap_or(v);
        let v = v.strip_suffix(b"\r").unwrap_or(v);
        return Some(v.to_vec());
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The writer

/// One mailbox opened for writing with Cyrus's locks (*U*user namelock, mailbox namelock,
/// cyrus.index fcntl write lock), changed in place as Cyrus's mailbox_append/commit do
/// (records appended to cyrus.index, entries to cyrus.cache, header rewritten last).
pub struct MailboxWriter {
    ctx: SpoolContext,
    mbox: MboxRecord,
    files: MailboxFiles,
    /// Held until the writer is committed or dropped; the last is `cyrus.index`'s.
    locks: LockStack,
    version: u32,
    start_offset: u64,
    record_size: u64,
    header: IndexHeader,
    /// The header as read at open: the quota delta is taken against it.
    old_header: IndexHeader,
    /// `cyrus.index` as it was at open, mapped (a delivery reads only the header; POP3 and
    /// `update_record` read the records they need), stable under our exclusive lock.
    index_bytes: crate::spool::db::Mapped,
    mbheader: MailboxHeader,
    uniqueid: String,
    acl: String,
    cache: File,
    cache_len: u64,
    cache_pending: Vec<u8>,
    appended: Vec<IndexRecord>,
    updated: BTreeMap<u32, IndexRecord>,
    new_files: Vec<PathBuf>,
    /// `mailbox->last_updated`: fixed at the first change (`mailbox_modseq_dirty`).
    change_time: Option<u64>,
    dirty: bool,
    committed: bool,
}

impl std::fmt::Debug for MailboxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxWriter")
            .field("mailbox", &self.mbox.name.to_string())
            .field("num_records", &self.header.num_records)
            .finish_non_exhaustive()
    }
}

impl MailboxWriter {
    pub fn open(ctx: &SpoolContext, internal_name: &[u8]) -> Result<MailboxWriter, AppendError> {
        if let Some(what) = ctx.unsupported_settings() {
            return Err(AppendError::Unsupported { what });
        }
        let mbox = ctx.lookup_required(internal_name)?;
        if mbox.entry.mbtype.kind != crate::format::header::MbKind::Email {
            return Err(AppendError::Unsupported {
                what: format!("{} is not an email mailbox", lossy(internal_name)),
            });
        }
        let files =
            MailboxFiles::locate(&ctx.layout, &mbox).map_err(|e| AppendError::Unsupported {
                what: e.to_string(),
            })?;
        if !files.index.exists() {
            return Err(AppendError::corrupt(&files.index, "cyrus.index is missing"));
        }
        let locks = mailbox::lock(
            &ctx.layout,
            &mbox,
            &files,
            OpenMode::Write,
            ctx.lock_timeout,
        )?;
        let index_file = locks
            .last()
            .ok_or_else(|| AppendError::corrupt(&files.index, "cyrus.index is not locked"))?
            .file();
        let index_bytes =
            crate::spool::db::map_file(index_file).map_err(AppendError::io(&files.index))?;
        let mut header = index::parse_header(&index_bytes)
            .map_err(|e| AppendError::corrupt(&files.index, e.to_string()))?;
        let version = header.minor_version;
        let (Some(hsize), Some(rsize)) = (index::header_size(version), index::record_size(version))
        else {
            return Err(AppendError::corrupt(
                &files.index,
                format!("unknown minor version {version}"),
            ));
        };
        if header.start_offset as usize != hsize || header.record_size as usize != rsize {
            return Err(AppendError::corrupt(
                &files.index,
                format!(
                    "start_offset {} / record_size {} do not match version {version}",
                    header.start_offset, header.record_size
                ),
            ));
        }
        let need = (hsize as u64).saturating_add(u64::from(header.num_records) * rsize as u64);
        if (index_bytes.len() as u64) < need {
            return Err(AppendError::corrupt(
                &files.index,
                format!(
                    "{} records need {need} bytes, the file has {}",
                    header.num_records,
                    index_bytes.len()
                ),
            ));
        }
        if header.options & index::OPT_MAILBOX_DELETED != 0 {
            return Err(AppendError::MailboxUnknown {
                name: lossy(internal_name),
            });
        }
        // The map is shared: it shows the repaired header as well.
        if let Some(r) = repair_torn_commit(ctx, internal_name, &files, index_file, &index_bytes)? {
            header = r.new;
        }
        let mbh = read_mailbox_header(&files.header)?;
        let uniqueid = mbh
            .uniqueid
            .as_deref()
            .or(mbox.entry.uniqueid.as_deref())
            .map(lossy)
            .unwrap_or_default();
        if let (Some(a), Some(b)) = (mbh.uniqueid.as_deref(), mbox.entry.uniqueid.as_deref()) {
            if a != b {
                return Err(AppendError::corrupt(
                    &files.header,
                    format!(
                        "uniqueid {} differs from mailboxes.db's {}",
                        lossy(a),
                        lossy(b)
                    ),
                ));
            }
        }
        let acl = mbox
            .entry
            .acl
            .as_ref()
            .or(mbh.acl.as_ref())
            .map(|a| lossy(&a.to_cyrus_string()))
            .unwrap_or_default();
        if mbh.quotaroot.as_deref().is_some_and(|r| !r.is_empty()) && ctx.quota.is_none() {
            return Err(AppendError::Unsupported {
                what: format!(
                    "quota_db {} cannot be updated by cyrkit",
                    ctx.config.quota_db().name()
                ),
            });
        }
        let cache = open_cache(&files.cache, header.generation_no)?;
        let cache_len = cache
            .metadata()
            .map_err(AppendError::io(&files.cache))?
            .len();
        Ok(MailboxWriter {
            ctx: ctx.clone(),
            mbox,
            files,
            locks,
            version,
            start_offset: hsize as u64,
            record_size: rsize as u64,
            old_header: header.clone(),
            header,
            index_bytes,
            mbheader: mbh,
            uniqueid,
            acl,
            cache,
            cache_len,
            cache_pending: Vec::new(),
            appended: Vec::new(),
            updated: BTreeMap::new(),
            new_files: Vec::new(),
            change_time: None,
            dirty: false,
            committed: false,
        })
    }

    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    /// For fields the caller owns (e.g. `pop3_last_login`); marks the header dirty.
    pub fn header_mut(&mut self) -> &mut IndexHeader {
        self.dirty = true;
        &mut self.header
    }

    pub fn uniqueid(&self) -> &str {
        &self.uniqueid
    }

    pub fn acl(&self) -> &str {
        &self.acl
    }

    /// The mailboxes.db record the mailbox was opened from.
    pub fn mailbox(&self) -> &MboxRecord {
        &self.mbox
    }

    /// The index minor version records are written in.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether the mailbox asks for duplicates to be delivered (`OPT_IMAP_DUPDELIVER`,
    /// the `duplicatedeliver` annotation): lmtpd then skips deliver.db.
    pub fn dup_deliver(&self) -> bool {
        self.header.options & index::OPT_IMAP_DUPDELIVER != 0
    }

    pub fn num_records(&self) -> u32 {
        self.header.num_records
    }

    /// Record `recno` (0-based), with the changes made so far.
    pub fn record(&self, recno: u32) -> Result<IndexRecord, AppendError> {
        let on_disk = self.old_header.num_records;
        if recno >= self.header.num_records {
            return Err(AppendError::Invalid(format!(
                "record {recno} out of range ({} records)",
                self.header.num_records
            )));
        }
        if recno >= on_disk {
            let i = (recno - on_disk) as usize;
            return self
                .appended
                .get(i)
                .cloned()
                .ok_or_else(|| AppendError::Invalid(format!("record {recno} out of range")));
        }
        if let Some(r) = self.updated.get(&recno) {
            return Ok(r.clone());
        }
        let off = self.record_offset(recno) as usize;
        let bytes = self
            .index_bytes
            .get(off..off.saturating_add(self.record_size as usize))
            .ok_or_else(|| AppendError::corrupt(&self.files.index, "record beyond the file"))?;
        index::parse_record(bytes, self.version)
            .map_err(|e| AppendError::corrupt(&self.files.index, e.to_string()))
    }

    pub fn message_path(&self, uid: u32) -> PathBuf {
        self.files.message(uid)
    }

    fn record_offset(&self, recno: u32) -> u64 {
        self.start_offset + u64::from(recno) * self.record_size
    }

    /// `mailbox_modseq_dirty`: the next modseq, and the time of this round of changes.
    fn next_modseq(&mut self) -> (u64, u64) {
        let now = *self.change_time.get_or_insert_with(now_secs);
        self.dirty = true;
        self.header.highestmodseq = self.header.highestmodseq.saturating_add(1);
        (self.header.highestmodseq, now)
    }

    /// `mailbox_index_update_counts`: counts, quota, and both sync CRCs for a record
    /// entering (`add`) or leaving the mailbox's state.
    fn count(&mut self, r: &IndexRecord, add: bool) {
        let h = &mut self.header;
        let v = self.version;
        h.sync_crc_basic ^= index::crc_basic(r, v, &self.mbheader.user_flags);
        if v >= 13 {
            h.sync_crc_annot ^= index::crc_virtannot(r, v);
        }
        let step = |c: &mut u32, yes: bool| {
            if yes {
                *c = if add {
                    c.saturating_add(1)
                } else {
                    c.saturating_sub(1)
                };
            }
        };
        let step64 = |c: &mut u64, yes: bool, by: u64| {
            if yes {
                *c = if add {
                    c.saturating_add(by)
                } else {
                    c.saturating_sub(by)
                };
            }
        };
        if v >= 18 {
            step64(
                &mut h.quota_expunged_used,
                r.is_expunged() && !r.is_unlinked(),
                r.size,
            );
        }
        if r.is_expunged() {
            return;
        }
        step(&mut h.answered, r.system_flags & FLAG_ANSWERED != 0);
        step(&mut h.flagged, r.system_flags & FLAG_FLAGGED != 0);
        step(&mut h.deleted, r.system_flags & FLAG_DELETED != 0);
        if v >= 14 {
            step(&mut h.unseen, r.system_flags & FLAG_SEEN == 0);
        }
        step(&mut h.exists, true);
        step64(&mut h.quota_mailbox_used, true, r.size);
        if v >= 18 {
            step64(
                &mut h.quota_deleted_used,
                r.system_flags & FLAG_DELETED != 0,
                r.size,
            );
        }
    }

    /// Link (singleinstancestore) or copy the staged file in as uid last_uid+1, append the
    /// index record and cache entry. Returns the new UID.
    pub fn append(&mut self, msg: &StagedMessage, system_flags: u32) -> Result<u32, AppendError> {
        let reparsed;
        let msg = if msg.parsed_with == self.ctx.parse {
            msg
        } else {
            reparsed = StagedMessage::from_file_with(&msg.path, msg.internaldate, &self.ctx.parse)?;
            &reparsed
        };
        let uid = self
            .header
            .last_uid
            .checked_add(1)
            .ok_or_else(|| AppendError::Invalid("the mailbox has used up its UIDs".into()))?;
        let recno = self.header.num_records;
        let target = self.files.message(uid);
        self.place_file(msg, &target)?;
        self.new_files.push(target.clone());
        let t = u64::try_from(msg.internaldate).unwrap_or(0);
        let time = nix::sys::time::TimeVal::new(libc::time_t::try_from(t).unwrap_or(0), 0);
        nix::sys::stat::utimes(&target, &time, &time)
            .map_err(|e| AppendError::io(&target)(io::Error::from(e)))?;

        let (modseq, now) = self.next_modseq();
        let cache_offset = self
            .cache_len
            .saturating_add(self.cache_pending.len() as u64);
        if cache_offset > index::MAX_CACHE_OFFSET {
            return Err(AppendError::corrupt(
                &self.files.cache,
                "cyrus.cache is too large",
            ));
        }
        let base = IndexRecord {
            uid,
            system_flags: system_flags & 0xffff,
            cache_offset,
            modseq,
            createdmodseq: modseq,
            last_updated: now,
            savedate: now,
            ..msg.base_record()
        };
        let r = index::convert_record(&base, index::DEFAULT_VERSION, self.version)
            .map_err(|e| AppendError::Invalid(e.to_string()))?;
        self.cache_pending.extend_from_slice(&msg.entry);
        self.count(&r, true);
        self.header.last_uid = uid;
        self.header.num_records = recno.saturating_add(1);
        self.appended.push(r);
        Ok(uid)
    }

    /// Put the staged file at `target`: a hard link when `singleinstancestore` allows and
    /// the filesystem is the same (else via one copy per filesystem, kept with the message),
    /// or a private copy. A stale file at `target` (uid above `last_uid`: left by a crashed
    /// append, never acknowledged) is replaced.
    fn place_file(&self, msg: &StagedMessage, target: &Path) -> Result<(), AppendError> {
        match std::fs::remove_file(target) {
            Ok(()) => log::warn!("replacing stray message file {}", target.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AppendError::io(target)(e)),
        }
        if self.ctx.config.singleinstancestore() {
            let dev = std::fs::metadata(&self.files.data_dir)
                .map_err(AppendError::io(&self.files.data_dir))?
                .dev();
            let src_dev = std::fs::metadata(&msg.path)
                .map_err(AppendError::io(&msg.path))?
                .dev();
            let source = if dev == src_dev {
                Some(msg.path.clone())
            } else {
                self.partition_copy(msg, dev).ok()
            };
            if let Some(source) = source {
                if std::fs::hard_link(&source, target).is_ok() {
                    crash_point("append-link");
                    return Ok(());
                }
            }
        }
        copy_file(&msg.path, target)?;
        crash_point("append-copy");
        Ok(())
    }

    /// The staged message's copy on the filesystem `dev` (the partition's `stage.`
    /// directory), made once and then linked from, as lmtpd stages once per partition.
    fn partition_copy(&self, msg: &StagedMessage, dev: u64) -> Result<PathBuf, AppendError> {
        let mut copies = msg
            .copies
            .lock()
            .map_err(|_| AppendError::Invalid("stage copy list poisoned".into()))?;
        if let Some((_, p)) = copies.iter().find(|(d, _)| *d == dev) {
            return Ok(p.clone());
        }
        let dir = self.ctx.stage_dir(&mailbox::partition(&self.mbox))?;
        let name = msg
            .path
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_else(|| "message".into());
        let path = dir.join(name);
        copy_file(&msg.path, &path)?;
        copies.push((dev, path.clone()));
        Ok(path)
    }

    /// Change a record (flags, EXPUNGED...); counts, modseq, quota delta kept right.
    ///
    /// As `mailbox_rewrite_index_record`: the uid and GUID may not change, an expunged
    /// record may not come back; the record gets the next modseq and the change time; with
    /// `expunge_mode: immediate` or `semidelayed` a new expunge is also marked UNLINKED
    /// and NEEDS_CLEANUP, and the mailbox NEEDS_UNLINK (Cyrus removes the file when it
    /// next cleans the mailbox up).
    pub fn update_record(
        &mut self,
        recno: u32,
        f: &mut dyn FnMut(&mut IndexRecord),
    ) -> Result<(), AppendError> {
        let old = self.record(recno)?;
        let mut new = old.clone();
        f(&mut new);
        if new.uid != old.uid || new.guid != old.guid {
            return Err(AppendError::Invalid(format!(
                "record {recno}: uid and GUID cannot change"
            )));
        }
        if old.is_expunged() && !new.is_expunged() {
            return Err(AppendError::Invalid(format!(
                "record {recno} (uid {}) is expunged and cannot come back",
                old.uid
            )));
        }
        let newly_expunged = new.is_expunged() && !old.is_expunged();
        let mode = self.ctx.config.expunge_mode();
        if newly_expunged && mode != ExpungeMode::Delayed {
            new.internal_flags |= FLAG_INTERNAL_UNLINKED | FLAG_INTERNAL_NEEDS_CLEANUP;
        }
        if new.is_unlinked() && !old.is_unlinked() {
            if mode == ExpungeMode::Immediate {
                self.header.options |= index::OPT_MAILBOX_NEEDS_REPACK;
            }
            self.header.options |= index::OPT_MAILBOX_NEEDS_UNLINK;
        }
        let (modseq, now) = self.next_modseq();
        new.modseq = modseq;
        new.last_updated = version_time(now, self.version);
        self.count(&old, false);
        self.count(&new, true);
        if newly_expunged {
            if self.header.first_expunged == 0 || self.header.first_expunged > new.last_updated {
                self.header.first_expunged = new.last_updated;
            }
            if self.has_message_annotations(new.uid) {
                log::warn!(
                    "{}: uid {} expunged with annotations; sync_crc_annot and \
                     quota_annot_used not adjusted (reconstruct recomputes them)",
                    self.mbox.name,
                    new.uid
                );
            }
        }
        let on_disk = self.old_header.num_records;
        if recno >= on_disk {
            if let Some(slot) = self.appended.get_mut((recno - on_disk) as usize) {
                *slot = new;
            }
        } else {
            self.updated.insert(recno, new);
        }
        Ok(())
    }

    /// Whether `cyrus.annotations` has an entry for message `uid` (key `<uid>\0...`).
    fn has_message_annotations(&self, uid: u32) -> bool {
        let Ok(bytes) = std::fs::read(&self.files.annotations) else {
            return false;
        };
        let Ok(db) = crate::format::twoskip::TwoskipDb::open(&bytes) else {
            return false;
        };
        let prefix = format!("{uid}\0");
        db.iter()
            .flatten()
            .any(|(k, _)| k.starts_with(prefix.as_bytes()))
    }

    /// Durable: message files, cache, index fsynced; header written; quota usage at the
    /// root changed by the delta (under the quota lock). Only after this may a 250 be sent.
    pub fn commit(mut self) -> Result<(), AppendError> {
        let r = self.commit_inner();
        if r.is_ok() {
            self.committed = true;
        }
        r
    }

    fn commit_inner(&mut self) -> Result<(), AppendError> {
        if !self.dirty {
            return Ok(());
        }
        // 1. Message files and their directory entries.
        for path in &self.new_files {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(AppendError::io(path))?;
            crash_point("append-message-fsync");
        }
        if !self.new_files.is_empty() {
            crate::spool::atomic::fsync_dir(&self.files.data_dir)
                .map_err(AppendError::io(&self.files.data_dir))?;
            crash_point("append-dir-fsync");
        }
        // 2. Cache entries at the end of cyrus.cache.
        if !self.cache_pending.is_empty() {
            let path = self.files.cache.clone();
            self.cache
                .write_all_at(&self.cache_pending, self.cache_len)
                .map_err(AppendError::io(&path))?;
            crash_point("append-cache-write");
            self.cache.sync_data().map_err(AppendError::io(&path))?;
            crash_point("append-cache-fsync");
        }
        if !self.appended.is_empty() {
            self.header.last_appenddate =
                version_time(self.change_time.unwrap_or_else(now_secs), self.version);
        }
        // 3. Quota. A growing mailbox is charged before its index (as mailbox_commit
        // does), a shrinking one after: a crash in between then leaves the quota above
        // the messages present, never below (which would let a user past the limit until
        // `quota -f`).
        let (old_use, new_use) = (mailbox_usage(&self.old_header), mailbox_usage(&self.header));
        let grows = old_use.iter().zip(&new_use).any(|(o, n)| n > o);
        if grows {
            self.charge_quota()?;
        }
        // 4. Records, 5. header.
        let index_path = self.files.index.clone();
        let bad = |e: index::IndexError| AppendError::corrupt(&index_path, e.to_string());
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        for (recno, r) in &self.updated {
            writes.push((
                self.record_offset(*recno),
                index::write_record(r, self.version).map_err(bad)?,
            ));
        }
        for (i, r) in self.appended.iter().enumerate() {
            let recno = self.old_header.num_records.saturating_add(i as u32);
            writes.push((
                self.record_offset(recno),
                index::write_record(r, self.version).map_err(bad)?,
            ));
        }
        let header_bytes = index::write_header(&self.header, self.version).map_err(bad)?;
        let file = self
            .locks
            .last()
            .ok_or_else(|| AppendError::corrupt(&index_path, "cyrus.index is not locked"))?
            .file();
        if !writes.is_empty() {
            for (off, bytes) in &writes {
                file.write_all_at(bytes, *off)
                    .map_err(AppendError::io(&index_path))?;
            }
            crash_point("append-index-records");
            file.sync_data().map_err(AppendError::io(&index_path))?;
            crash_point("append-index-records-fsync");
        }
        file.write_all_at(&header_bytes, 0)
            .map_err(AppendError::io(&index_path))?;
        crash_point("append-index-header");
        file.sync_data().map_err(AppendError::io(&index_path))?;
        crash_point("append-index-header-fsync");
        if !grows {
            // The change is durable: a failed quota update is logged (LOSTQUOTA) and left
            // to `quota -f`, as Cyrus leaves it, rather than reported as a failed commit.
            let _ = self.charge_quota();
        }
        Ok(())
    }

    fn charge_quota(&self) -> Result<(), AppendError> {
        let Some(root) = self.mbheader.quotaroot.as_deref().filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let (old, new) = (mailbox_usage(&self.old_header), mailbox_usage(&self.header));
        if old == new {
            return Ok(());
        }
        let Some(store) = &self.ctx.quota else {
            return Ok(());
        };
        let name = self.mbox.name.to_internal();
        let r =
            crate::spool::quota::charge_root(store, root, &name, &old, &new, self.ctx.lock_timeout);
        if let Err(e) = &r {
            log::error!(
                "LOSTQUOTA: unable to record change of {} bytes and {} messages in quota {}: {e}",
                new[0] as i128 - old[0] as i128,
                new[1] as i128 - old[1] as i128,
                lossy(root)
            );
        }
        r.map(|_| ()).map_err(AppendError::from)
    }
}

impl Drop for MailboxWriter {
    /// An uncommitted writer removes the message files it placed (`append_abort`).
    fn drop(&mut self) {
        if !self.committed {
            for p in &self.new_files {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A commit cut short between its records and its header

/// What [`repair_torn_commit`] found and changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornRepair {
    /// Records within `num_records` whose modseq is above the header's `highestmodseq`.
    pub torn_records: u32,
    /// The header as it was (stale).
    pub old: IndexHeader,
    /// The header written, recomputed from the records.
    pub new: IndexHeader,
    /// Whether the quota root was charged the usage change (see [`repair_torn_commit`]).
    pub quota_charged: bool,
}

/// Repair a `cyrus.index` whose last commit was killed after step 4 (records rewritten in
/// place) and before step 5 (the header) — see the module docs. `index` is the file, locked
/// exclusively (with the *U* and mailbox namelocks), `bytes` its contents.
///
/// The torn state is a record within `num_records` whose modseq is above the header's
/// `highestmodseq`: every rewritten record gets a new modseq, and only the header that was not
/// written would have raised `highestmodseq` to it (Cyrus's `reconstruct` reports it as
/// "uid N future modseq M found"). Appended records past `num_records` are ignored, as Cyrus
/// ignores them. Only the modseq field of each record is read unless the state is found, so
/// the check costs an open next to nothing.
///
/// The repair recounts the header from the records as `mailbox_index_recalc` does (counts,
/// quota sums, `sync_crc_basic`, `sync_crc_annot` — kept as stored when `cyrus.annotations`
/// holds entries, which the index alone cannot sum — `highestmodseq` = the highest record
/// modseq, `first_expunged` and the unlink/repack options the killed commit would have set),
/// writes it and fsyncs. Then the quota root is charged the change from the stale header's
/// usage to the recounted one: the killed commit shrank the mailbox and charges a shrinking
/// mailbox only after its header, so the root still holds the old usage. A growing change is
/// charged before the header, as a commit does, so that a kill in between leaves the root
/// counting too much, never too little. When records past `num_records` are also newer than
/// the header (a commit that appended too, which charges before its records), the root may
/// already hold the change and is not charged: it stays above the messages until `quota -f`.
///
/// `Ok(None)`: nothing to repair, or a record that does not pass its CRC (then the header is
/// left alone and the mailbox needs `reconstruct`; logged).
pub fn repair_torn_commit(
    ctx: &SpoolContext,
    internal_name: &[u8],
    files: &MailboxFiles,
    index: &File,
    bytes: &[u8],
) -> Result<Option<TornRepair>, AppendError> {
    let path = &files.index;
    let bad = |e: index::IndexError| AppendError::corrupt(path, e.to_string());
    let old = index::parse_header(bytes).map_err(bad)?;
    let version = old.minor_version;
    let (Some(hsize), Some(rsize)) = (index::header_size(version), index::record_size(version))
    else {
        return Ok(None);
    };
    let modseq_at = if version >= 20 {
        index::V20_OFFSET_MODSEQ
    } else {
        index::OFFSET_MODSEQ
    };
    let record = |recno: u32| -> Option<&[u8]> {
        let off = (hsize as u64).checked_add(u64::from(recno).checked_mul(rsize as u64)?)?;
        let off = usize::try_from(off).ok()?;
        bytes.get(off..off.checked_add(rsize)?)
    };
    let modseq = |rec: &[u8]| -> u64 {
        rec.get(modseq_at..modseq_at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    let mut torn = 0u32;
    for recno in 0..old.num_records {
        let Some(rec) = record(recno) else {
            return Ok(None);
        };
        if modseq(rec) > old.highestmodseq {
            torn = torn.saturating_add(1);
        }
    }
    if torn == 0 {
        return Ok(None);
    }
    let name = lossy(internal_name);
    let mut records = Vec::with_capacity(old.num_records as usize);
    for recno in 0..old.num_records {
        let rec = record(recno).unwrap_or_default();
        if !index::record_crc_ok(rec, version) {
            log::error!(
                "{name}: cyrus.index has records newer than its header (an interrupted \
                 commit) but record {recno} fails its CRC: not repaired, run reconstruct"
            );
            return Ok(None);
        }
        records.push(index::parse_record(rec, version).map_err(bad)?);
    }
    // A commit that appended as well was charged before its records (see the docs).
    let appended_too = (old.num_records..)
        .map_while(record)
        .any(|rec| modseq(rec) > old.highestmodseq);
    let mbh = read_mailbox_header(&files.header)?;
    let d = index::derive(&records, version, &mbh.user_flags, None);
    let mut new = old.clone();
    new.apply_derived(&d, version);
    if version >= 13 && annotations_nonempty(&files.annotations) {
        new.sync_crc_annot = old.sync_crc_annot;
    }
    new.highestmodseq = old.highestmodseq.max(d.max_modseq);
    new.last_uid = old.last_uid.max(d.max_uid);
    for r in records.iter().filter(|r| r.modseq > old.highestmodseq) {
        // What update_record set on the header for these records.
        if r.is_expunged() && (new.first_expunged == 0 || new.first_expunged > r.last_updated) {
            new.first_expunged = r.last_updated;
        }
        if r.is_unlinked() {
            if ctx.config.expunge_mode() == ExpungeMode::Immediate {
                new.options |= index::OPT_MAILBOX_NEEDS_REPACK;
            }
            new.options |= index::OPT_MAILBOX_NEEDS_UNLINK;
        }
    }
    let header_bytes = index::write_header(&new, version).map_err(bad)?;
    // With the header CRC as written.
    let new = index::parse_header(&header_bytes).map_err(bad)?;
    let (old_use, new_use) = (mailbox_usage(&old), mailbox_usage(&new));
    let root = mbh.quotaroot.as_deref().filter(|r| !r.is_empty());
    let charge = || -> bool {
        let (Some(root), Some(store)) = (root, &ctx.quota) else {
            return false;
        };
        if appended_too || old_use == new_use {
            return false;
        }
        let r = crate::spool::quota::charge_root(
            store,
            root,
            internal_name,
            &old_use,
            &new_use,
            ctx.lock_timeout,
        );
        if let Err(e) = &r {
            log::error!(
                "LOSTQUOTA: {name}: unable to record change of {} bytes and {} messages in \
                 quota {} after repairing the index header: {e}",
                new_use[0] as i128 - old_use[0] as i128,
                new_use[1] as i128 - old_use[1] as i128,
                lossy(root)
            );
        }
        r.is_ok_and(|found| found)
    };
    let grows = old_use.iter().zip(&new_use).any(|(o, n)| n > o);
    let mut charged = grows && charge();
    index
        .write_all_at(&header_bytes, 0)
        .map_err(AppendError::io(path))?;
    crash_point("repair-index-header");
    index.sync_data().map_err(AppendError::io(path))?;
    crash_point("repair-index-header-fsync");
    if !grows {
        charged = charge();
    }
    let quota = match root {
        Some(r) if charged => format!(
            "; quota root {} charged {:+} bytes, {:+} messages",
            lossy(r),
            new_use[0] as i128 - old_use[0] as i128,
            new_use[1] as i128 - old_use[1] as i128
        ),
        Some(r) if appended_too => format!(
            "; quota root {} not charged (appended records too: run quota -f)",
            lossy(r)
        ),
        _ => String::new(),
    };
    log::warn!(
        "{name}: repaired cyrus.index header left stale by an interrupted commit ({torn} \
         records above highestmodseq {}): highestmodseq {} => {}, exists {} => {}, \
         deleted {} => {}, quota_mailbox_used {} => {}{quota}",
        old.highestmodseq,
        old.highestmodseq,
        new.highestmodseq,
        old.exists,
        new.exists,
        old.deleted,
        new.deleted,
        old.quota_mailbox_used,
        new.quota_mailbox_used,
    );
    Ok(Some(TornRepair {
        torn_records: torn,
        old,
        new,
        quota_charged: charged,
    }))
}

/// Whether `cyrus.annotations` may hold an entry: false only when it is absent or holds none.
fn annotations_nonempty(path: &Path) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return e.kind() != io::ErrorKind::NotFound,
    };
    crate::format::twoskip::TwoskipDb::open(&bytes).map_or(true, |db| db.iter().next().is_some())
}

/// Open `cyrus.cache` for appending. A mailbox that never held a message may have none
/// (Cyrus creates it on the first append, `mailbox_append_cache`): it is then created
/// holding just the generation number of the index, with the directory's ownership.
fn open_cache(path: &Path, generation: u32) -> Result<File, AppendError> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(AppendError::io(path)(e)),
    }
    let own = crate::spool::atomic::Ownership::for_path(path).map_err(AppendError::io(path))?;
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(own.mode)
            .open(path)
            .map_err(AppendError::io(path))?
    };
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(&f, Some(own.uid), Some(own.gid))
            .map_err(AppendError::io(path))?;
    }
    f.write_all_at(&generation.to_be_bytes(), 0)
        .and_then(|_| f.sync_all())
        .map_err(AppendError::io(path))?;
    crash_point("append-cache-create");
    Ok(f)
}

/// Copy `from` to a new file `to` with the directory's ownership, fsynced.
fn copy_file(from: &Path, to: &Path) -> Result<(), AppendError> {
    let own = crate::spool::atomic::Ownership::for_path(to).map_err(AppendError::io(to))?;
    let mut src = File::open(from).map_err(AppendError::io(from))?;
    let mut dst = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(own.mode)
            .open(to)
            .map_err(AppendError::io(to))?
    };
    let r = io::copy(&mut src, &mut dst)
        .and_then(|_| {
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(&dst, Some(own.uid), Some(own.gid))?;
            }
            dst.sync_all()
        })
        .map_err(AppendError::io(to));
    if r.is_err() {
        let _ = std::fs::remove_file(to);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_files_of_dead_processes_are_removed_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\n",
            tmp.path().display()
        );
        std::fs::create_dir_all(tmp.path().join("conf")).unwrap();
        let stage = tmp.path().join("spool/stage.");
        std::fs::create_dir_all(&stage).unwrap();
        // A pid above the kernel's pid_max cannot be running.
        let dead = stage.join("99999999-1700000000-0");
        let live = stage.join(format!("{}-1700000000-0", std::process::id()));
        let other = stage.join("not-a-stage-file");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        let c = Config::parse(conf.as_bytes(), tmp.path()).unwrap();
        let ctx = SpoolContext::open(Arc::new(c)).unwrap();
        assert_eq!(ctx.remove_orphan_stage_files(), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    /// A copy of the `legacy` fixture (real Cyrus 3.6.1 files) and a context on it.
    fn fixture_copy() -> (tempfile::TempDir, SpoolContext) {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                let target = to.join(e.file_name());
                if e.file_type().unwrap().is_dir() {
                    copy(&e.path(), &target);
                } else {
                    std::fs::copy(e.path(), &target).unwrap();
                }
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        copy(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/legacy"),
            tmp.path(),
        );
        let config = Config::load(&tmp.path().join("imapd.conf")).unwrap();
        let ctx = SpoolContext::open(Arc::new(config)).unwrap();
        (tmp, ctx)
    }

    /// STORAGE and MESSAGE usage of quota root `root`.
    fn root_used(ctx: &SpoolContext, root: &[u8]) -> (u64, u64) {
        use crate::format::quota::Resource;
        let store = ctx.quota.as_ref().unwrap();
        let q = store
            .lock_root(root, ctx.lock_timeout)
            .unwrap()
            .record
            .unwrap();
        (q.get(Resource::Storage).used, q.get(Resource::Message).used)
    }

    /// The records `recnos` of mailbox `name`'s index, as bytes.
    fn record_bytes(ctx: &SpoolContext, name: &[u8], recnos: &[u32]) -> Vec<(u64, Vec<u8>)> {
        let w = MailboxWriter::open(ctx, name).unwrap();
        let index = std::fs::read(&w.files.index).unwrap();
        recnos
            .iter()
            .map(|&n| {
                let off = w.record_offset(n);
                let at = off as usize;
                (off, index[at..at + w.record_size as usize].to_vec())
            })
            .collect()
    }

    #[test]
    fn torn_commit_is_repaired_at_open_and_charged_once() {
        const NAME: &[u8] = b"user.alice";
        // A: a QUIT-like commit (two expunges, one \Seen) that completes.
        let (_a_dir, a) = fixture_copy();
        let (_b_dir, b) = fixture_copy();
        let before = root_used(&a, NAME);
        let mut w = MailboxWriter::open(&a, NAME).unwrap();
        let stale = w.header().clone();
        for recno in [1, 4] {
            w.update_record(recno, &mut |r: &mut IndexRecord| {
                r.system_flags |= FLAG_DELETED;
                r.internal_flags |= index::FLAG_INTERNAL_EXPUNGED;
            })
            .unwrap();
        }
        w.update_record(2, &mut |r: &mut IndexRecord| r.system_flags |= FLAG_SEEN)
            .unwrap();
        let expunged_size = w.record(1).unwrap().size + w.record(4).unwrap().size;
        w.commit().unwrap();
        let committed = MailboxWriter::open(&a, NAME).unwrap().header().clone();
        let after = root_used(&a, NAME);
        assert_eq!(after, (before.0 - expunged_size, before.1 - 2));

        // B: the same commit killed after its records were rewritten in place (crash point
        // append-index-records): A's records in B's index, B's header untouched.
        let index_path = MailboxWriter::open(&b, NAME).unwrap().files.index.clone();
        let f = OpenOptions::new().write(true).open(&index_path).unwrap();
        for (off, bytes) in record_bytes(&a, NAME, &[1, 2, 4]) {
            f.write_all_at(&bytes, off).unwrap();
        }
        drop(f);
        let torn = std::fs::read(&index_path).unwrap();
        assert_eq!(index::parse_header(&torn).unwrap(), stale);

        // The first open repairs: the header the commit would have written, the root
        // charged the expunges.
        let w = MailboxWriter::open(&b, NAME).unwrap();
        assert_eq!(w.header(), &committed);
        assert_eq!(w.header().exists, stale.exists - 2);
        assert_eq!(w.header().highestmodseq, stale.highestmodseq + 3);
        drop(w);
        let on_disk = index::parse_header(&std::fs::read(&index_path).unwrap()).unwrap();
        assert_eq!(on_disk, committed);
        assert_eq!(root_used(&b, NAME), after);

        // A second open (writer or the repair alone) changes nothing.
        let w = MailboxWriter::open(&b, NAME).unwrap();
        assert_eq!(w.header(), &committed);
        let bytes = std::fs::read(&index_path).unwrap();
        let files = w.files.clone();
        let r = repair_torn_commit(&b, NAME, &files, w.locks.last().unwrap().file(), &bytes);
        assert_eq!(r.unwrap(), None);
        drop(w);
        assert_eq!(root_used(&b, NAME), after);
        assert_eq!(std::fs::read(&index_path).unwrap(), bytes);
    }

    #[test]
    fn torn_records_failing_their_crc_are_left_to_reconstruct() {
        const NAME: &[u8] = b"user.alice";
        let (_dir, ctx) = fixture_copy();
        let before = root_used(&ctx, NAME);
        let w = MailboxWriter::open(&ctx, NAME).unwrap();
        let stale = w.header().clone();
        let (off, path) = (w.record_offset(0), w.files.index.clone());
        drop(w);
        // A modseq above the header's, without the record CRC matching.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let modseq = (stale.highestmodseq + 5).to_be_bytes();
        f.write_all_at(&modseq, off + index::OFFSET_MODSEQ as u64)
            .unwrap();
        drop(f);
        let w = MailboxWriter::open(&ctx, NAME).unwrap();
        assert_eq!(w.header(), &stale);
        drop(w);
        assert_eq!(root_used(&ctx, NAME), before);
    }

    #[test]
    fn header_value_takes_the_first_unfolded_value() {
        let block = b"Received: x\r\n\ty\r\nMessage-ID:  <a@b>\r\nDATE: Mon, 1 Jan 2024\r\n \
                      00:00 +0000\r\nMessage-Id: <second@b>\r\n\r\n";
        assert_eq!(header_value(block, b"message-id").unwrap(), b"<a@b>");
        assert_eq!(
            header_value(block, b"date").unwrap(),
            b"Mon, 1 Jan 2024\r\n 00:00 +0000"
        );
        assert_eq!(header_value(block, b"subject"), None);
        assert_eq!(header_value(b"", b"date"), None);
        assert_eq!(header_value(b"garbage without colon", b"date"), None);
        assert_eq!(header_value(b"Date:", b"date").unwrap(), b"");
    }

    #[test]
    fn version_time_scales_only_v20() {
        assert_eq!(version_time(5, 17), 5);
        assert_eq!(version_time(5, 20), 5_000_000_000);
    }

    #[test]
    fn io_errors_map_enospc_to_no_space() {
        let p = Path::new("/x");
        assert!(matches!(
            AppendError::io(p)(io::Error::from_raw_os_error(libc::ENOSPC)),
            AppendError::NoSpace { .. }
        ));
        assert!(matches!(
            AppendError::io(p)(io::Error::from_raw_os_error(libc::EDQUOT)),
            AppendError::NoSpace { .. }
        ));
        assert!(matches!(
            AppendError::io(p)(io::Error::from_raw_os_error(libc::EIO)),
            AppendError::Io { .. }
        ));
    }
}
