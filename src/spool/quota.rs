//! Quota roots as stored: the quotalegacy tree of small files, or a quota database
//! (twoskip, skiplist, flat) keyed by root name, per `quota_db`.
//!
//! Owns: listing roots, which root owns a mailbox ([`owning_root`]), what a mailbox charges
//! ([`mailbox_usage`]), and locked read-modify-write of one root ([`QuotaStore`],
//! [`RootLock`]) with Cyrus's locking: quotalegacy locks each root file with fcntl and
//! replaces it through `<file>.NEW` + rename (`lib/cyrusdb_quotalegacy.c`); twoskip locks the
//! database file and appends one transaction (`lib/cyrusdb_twoskip.c`). Writing skiplist or
//! flat quota databases is not supported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::cyrusdb::{KeyOrder, LevelRng, Op};
use crate::format::quota::{self, QuotaRecord};
use crate::format::twoskip::{self, TwoskipDb};
use crate::spool::config::{Config, DbBackend};
use crate::spool::db::{self, SpoolDbError};
use crate::spool::lock::{self, FileLock, LockMode};
use crate::spool::paths::Layout;

/// One stored quota root.
#[derive(Debug)]
pub struct StoredRoot {
    /// Where it lives: its quotalegacy file, or the database file.
    pub file: PathBuf,
    /// The record, or why it could not be read.
    pub record: Result<QuotaRecord, String>,
}

/// Every stored quota root by internal root name.
pub fn load_roots(
    config: &Config,
    layout: &Layout,
    timeout: Duration,
) -> Result<BTreeMap<Vec<u8>, StoredRoot>, SpoolDbError> {
    let mut out = BTreeMap::new();
    if config.quota_db() == DbBackend::QuotaLegacy {
        let dir = layout.quotalegacy_dir().to_path_buf();
        load_legacy_tree(&dir.join("quota"), None, &mut out);
        // Virtual domains: domain/<h>/<domain>/quota/...
        for hash in read_dir_sorted(&dir.join("domain")) {
            for domain_dir in read_dir_sorted(&hash) {
                let domain = domain_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                load_legacy_tree(&domain_dir.join("quota"), Some(domain.as_bytes()), &mut out);
            }
        }
        return Ok(out);
    }
    let path = layout.quotas_db().to_path_buf();
    if let Some(file) = db::read_db(&path, config.quota_db(), timeout)? {
        for (k, v) in file.pairs {
            let record = quota::parse_value(&v).map_err(|e| e.to_string());
            out.insert(
                k,
                StoredRoot {
                    file: path.clone(),
                    record,
                },
            );
        }
    }
    Ok(out)
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn load_legacy_tree(
    quota_dir: &Path,
    domain: Option<&[u8]>,
    out: &mut BTreeMap<Vec<u8>, StoredRoot>,
) {
    use std::os::unix::ffi::OsStrExt;
    for entry in read_dir_sorted(quota_dir) {
        let files = if entry.is_dir() {
            read_dir_sorted(&entry)
        } else if entry.file_name().is_some_and(|n| n == "root") {
            vec![entry]
        } else {
            continue;
        };
        for f in files {
            let Some(name) = f.file_name().map(|n| n.as_bytes().to_vec()) else {
                continue;
            };
            if name.ends_with(b".NEW") || !f.is_file() {
                continue;
            }
            let mut root = Vec::new();
            if let Some(d) = domain {
                root.extend_from_slice(d);
                root.push(b'!');
            }
            if !(domain.is_some() && name == b"root" && f.parent() == Some(quota_dir)) {
                root.extend_from_slice(&name);
            }
            let record = std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| quota::parse_legacy_file(&b).map_err(|e| e.to_string()));
            out.insert(root, StoredRoot { file: f, record });
        }
    }
}

/// Usage of the four resources, indexed by [`Resource::index`](crate::format::quota::Resource::index).
pub type Usage = [u64; 4];

/// The root Cyrus assigns a mailbox: the longest root that equals the internal name or is a
/// prefix of it followed by `.` (imap/quota.c `findroot` with `mboxname_is_prefix`, and
/// `mboxlist_findquota`), else the whole-domain root `domain!` of the mailbox's domain.
///
/// The domain root is where Cyrus 3.6 puts a new mailbox in the domain that has no other
/// root (`quota_findroot`); `quota -f`'s prefix test never matches it (it wants a `.` after
/// the root) and so deletes every domain root. We assign as mailbox creation does.
pub fn owning_root<'r>(roots: &'r [Vec<u8>], name: &[u8]) -> Option<&'r [u8]> {
    roots
        .iter()
        .filter(|r| {
            name == r.as_slice()
                || (name.len() > r.len()
                    && name.starts_with(r)
                    && (name.get(r.len()) == Some(&b'.') || r.ends_with(b"!")))
        })
        .max_by_key(|r| r.len())
        .map(Vec::as_slice)
}

/// What one mailbox charges its root (`mailbox_get_usage`): STORAGE `quota_mailbox_used`,
/// MESSAGE `exists`, X-ANNOTATION-STORAGE `quota_annot_used`, X-NUM-FOLDERS 1; nothing
/// while the mailbox is being deleted (`OPT_MAILBOX_DELETED`).
pub fn mailbox_usage(h: &crate::format::index::IndexHeader) -> Usage {
    if h.options & crate::format::index::OPT_MAILBOX_DELETED != 0 {
        return [0; 4];
    }
    [
        h.quota_mailbox_used,
        u64::from(h.exists),
        h.quota_annot_used,
        1,
    ]
}

/// Add `b` to `a`, saturating (values come from disk).
pub fn add_usage(a: &mut Usage, b: &Usage) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_add(*y);
    }
}

/// Why a quota root could not be locked, read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuotaStoreError {
    #[error("quota_db {0} cannot be written by cyrkit (quotalegacy and twoskip can)")]
    UnsupportedBackend(&'static str),
    #[error(transparent)]
    Path(#[from] crate::spool::paths::PathError),
    // Not `transparent`: the lock error must be a cause of its own, so that `main` finds a
    // timeout in the chain and exits 75.
    #[error("{0}")]
    Lock(#[from] crate::spool::lock::LockError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: quota root {root}: {why}")]
    Record {
        path: PathBuf,
        root: String,
        why: String,
    },
    #[error("{path}: {source}")]
    Db {
        path: PathBuf,
        source: crate::format::cyrusdb::DbError,
    },
    #[error(transparent)]
    Atomic(#[from] crate::spool::atomic::AtomicWriteError),
}

/// Where quota roots are written: one file per root, or one twoskip database.
#[derive(Debug, Clone)]
pub enum QuotaStore {
    Legacy(Layout),
    Twoskip(PathBuf),
}

impl QuotaStore {
    /// The store `quota_db` names, if cyrkit can write it.
    pub fn open(config: &Config, layout: &Layout) -> Result<QuotaStore, QuotaStoreError> {
        match config.quota_db() {
            DbBackend::QuotaLegacy => Ok(QuotaStore::Legacy(layout.clone())),
            DbBackend::Twoskip => Ok(QuotaStore::Twoskip(layout.quotas_db().to_path_buf())),
            other => Err(QuotaStoreError::UnsupportedBackend(other.name())),
        }
    }

    /// Lock root `root` for update (quotalegacy: its file; twoskip: the database) and read
    /// it. `record` is `None` when the root does not exist; a record that does not parse is
    /// an error.
    pub fn lock_root(&self, root: &[u8], timeout: Duration) -> Result<RootLock, QuotaStoreError> {
        let rl = self.lock_root_for_repair(root, timeout)?;
        match &rl.damaged {
            Some(d) => Err(QuotaStoreError::Record {
                path: rl.path.clone(),
                root: String::from_utf8_lossy(root).into_owned(),
                why: d.why.clone(),
            }),
            None => Ok(rl),
        }
    }

    /// [`lock_root`](Self::lock_root), but a record that does not parse is returned as
    /// [`RootLock::damaged`] (with `record` `None`) so that it can be rebuilt under the lock.
    pub fn lock_root_for_repair(
        &self,
        root: &[u8],
        timeout: Duration,
    ) -> Result<RootLock, QuotaStoreError> {
        let path = match self {
            QuotaStore::Legacy(layout) => layout.quotalegacy_file(root)?,
            QuotaStore::Twoskip(p) => p.clone(),
        };
        let Some(held) = lock_current(&path, timeout)? else {
            return Ok(RootLock {
                store: self.clone(),
                root: root.to_vec(),
                path,
                held: None,
                record: None,
                damaged: None,
            });
        };
        let io = |source| QuotaStoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = {
            let map = db::map_file(held.file()).map_err(io)?;
            map.to_vec()
        };
        let mut damaged = None;
        let mut check = |parsed: Result<QuotaRecord, quota::QuotaError>, raw: &[u8]| match parsed {
            Ok(q) => Some(q),
            Err(e) => {
                damaged = Some(DamagedRecord {
                    why: e.to_string(),
                    raw: raw.to_vec(),
                });
                None
            }
        };
        let record = match self {
            QuotaStore::Legacy(_) => check(quota::parse_legacy_file(&bytes), &bytes),
            QuotaStore::Twoskip(_) => {
                let db = TwoskipDb::open(&bytes).map_err(|source| QuotaStoreError::Db {
                    path: path.clone(),
                    source,
                })?;
                match db.get(root).map_err(|source| QuotaStoreError::Db {
                    path: path.clone(),
                    source,
                })? {
                    Some(v) => check(quota::parse_value(v), v),
                    None => None,
                }
            }
        };
        Ok(RootLock {
            store: self.clone(),
            root: root.to_vec(),
            path,
            held: Some((held, bytes)),
            record,
            damaged,
        })
    }
}

/// Open `path` read-write and lock it exclusively, reopening when the file was replaced
/// while we waited (Cyrus's `lock_reopen` inode check). `None` if it does not exist.
fn lock_current(path: &Path, timeout: Duration) -> Result<Option<FileLock>, QuotaStoreError> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..100 {
        let held = match lock::lock_existing(path, LockMode::Exclusive, timeout) {
            Ok(h) => h,
            Err(lock::LockError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let fd_ino = held.file().metadata().map(|m| (m.dev(), m.ino()));
        let path_ino = std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
        match (fd_ino, path_ino) {
            (Ok(a), Ok(b)) if a == b => return Ok(Some(held)),
            (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => continue,
        }
    }
    Err(QuotaStoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("file keeps being replaced while locking it"),
    })
}

/// One quota root held locked for update; the lock is released on drop.
pub struct RootLock {
    store: QuotaStore,
    root: Vec<u8>,
    path: PathBuf,
    /// The lock and the file's bytes as read under it; `None` when the root is absent.
    held: Option<(FileLock, Vec<u8>)>,
    /// The record as read under the lock.
    pub record: Option<QuotaRecord>,
    /// The stored record when it does not parse (only from
    /// [`QuotaStore::lock_root_for_repair`]).
    pub damaged: Option<DamagedRecord>,
}

/// A stored quota record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    /// What the parser said.
    pub why: String,
    /// The stored bytes (file contents or database value).
    pub raw: Vec<u8>,
}

impl RootLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store `q` as the root's record (3.6 dlist layout). quotalegacy: `<file>.NEW`,
    /// fsync, rename (`mystore`); twoskip: one appended transaction under the lock.
    /// Never creates a root that does not exist.
    pub fn write(&mut self, q: &QuotaRecord) -> Result<(), QuotaStoreError> {
        let mut q = q.clone();
        q.format = quota::QuotaFormat::Dlist;
        q.modseq.get_or_insert(0);
        let value = quota::write_value(&q);
        let Some((_, bytes)) = &self.held else {
            return Err(self.missing());
        };
        match &self.store {
            QuotaStore::Legacy(_) => {
                let mut file = value;
                file.push(b'\n');
                crate::spool::atomic::replace(&self.path, &file)?;
            }
            QuotaStore::Twoskip(_) => {
                let (existing, root) = (bytes.clone(), self.root.clone());
                self.twoskip_apply(existing, &[Op::Set(&root, &value)])?;
            }
        }
        self.record = Some(q);
        self.damaged = None;
        Ok(())
    }

    /// Delete the root's record.
    pub fn delete(&mut self) -> Result<(), QuotaStoreError> {
        let Some((_, bytes)) = &self.held else {
            return Ok(());
        };
        match &self.store {
            QuotaStore::Legacy(_) => {
                std::fs::remove_file(&self.path).map_err(|source| QuotaStoreError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                if let Some(dir) = self.path.parent() {
                    let _ = crate::spool::atomic::fsync_dir(dir);
                }
            }
            QuotaStore::Twoskip(_) => {
                let (existing, root) = (bytes.clone(), self.root.clone());
                self.twoskip_apply(existing, &[Op::Delete(&root)])?;
            }
        }
        self.record = None;
        Ok(())
    }

    fn missing(&self) -> QuotaStoreError {
        QuotaStoreError::Record {
            path: self.path.clone(),
            root: String::from_utf8_lossy(&self.root).into_owned(),
            why: "does not exist".into(),
        }
    }

    /// Run one twoskip transaction in place, in `mycommit`'s order: dirty header + fsync,
    /// records + fsync, committed header + fsync. A file a killed writer left dirty (or
    /// longer than its committed size) is first recovered: see [`Self::twoskip_rewrite`].
    fn twoskip_apply(&mut self, existing: Vec<u8>, ops: &[Op<'_>]) -> Result<(), QuotaStoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.path.clone();
        let dberr = |source| QuotaStoreError::Db {
            path: path.clone(),
            source,
        };
        let io = |source| QuotaStoreError::Io {
            path: path.clone(),
            source,
        };
        let db = TwoskipDb::open_with_order(&existing, KeyOrder::Raw).map_err(dberr)?;
        if !db.is_clean() {
            let generation = db.header().generation;
            let pairs = db
                .iter()
                .map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(dberr)?;
            return self.twoskip_rewrite(pairs, generation, ops);
        }
        let mut rng = LevelRng::new(level_seed());
        let Some(txn) =
            twoskip::append_transaction(&existing, ops, KeyOrder::Raw, &mut rng).map_err(dberr)?
        else {
            return Ok(());
        };
        let Some((held, bytes)) = &mut self.held else {
            return Err(self.missing());
        };
        let f = held.file();
        f.write_all_at(&txn.dirty_header, 0).map_err(io)?;
        f.sync_data().map_err(io)?;
        crate::spool::atomic::crash_point("twoskip-dirty");
        for (off, w) in &txn.writes {
            f.write_all_at(w, *off).map_err(io)?;
        }
        f.sync_data().map_err(io)?;
        crate::spool::atomic::crash_point("twoskip-records");
        f.write_all_at(&txn.commit_header, 0).map_err(io)?;
        f.sync_data().map_err(io)?;
        crate::spool::atomic::crash_point("twoskip-commit");
        *bytes = txn.apply(&existing);
        Ok(())
    }

    /// Recovery of a twoskip file a killed writer left dirty: the committed pairs (what
    /// every reader sees: records past `current_size` and pointers to them are ignored)
    /// with `ops` applied, written as a new file of the next generation and renamed over
    /// the old one, as Cyrus's checkpoint (`mycheckpoint`) replaces the file; a Cyrus
    /// process that locks the old file sees the inode change and reopens. The lock is then
    /// taken again on the new file.
    fn twoskip_rewrite(
        &mut self,
        mut pairs: Vec<(Vec<u8>, Vec<u8>)>,
        generation: u64,
        ops: &[Op<'_>],
    ) -> Result<(), QuotaStoreError> {
        let path = self.path.clone();
        for op in ops {
            match op {
                Op::Set(k, v) => match pairs.iter_mut().find(|(pk, _)| pk.as_slice() == *k) {
                    Some(slot) => slot.1 = v.to_vec(),
                    None => pairs.push((k.to_vec(), v.to_vec())),
                },
                Op::Delete(k) => pairs.retain(|(pk, _)| pk.as_slice() != *k),
            }
        }
        pairs.sort_by(|a, b| KeyOrder::Raw.compare(&a.0, &b.0));
        let opts = twoskip::FreshOptions {
            generation: generation.saturating_add(1),
            order: KeyOrder::Raw,
            seed: level_seed(),
        };
        let fresh = twoskip::write_fresh(&pairs, &opts).map_err(|source| QuotaStoreError::Db {
            path: path.clone(),
            source,
        })?;
        crate::spool::atomic::replace(&path, &fresh)?;
        let held = lock_current(&path, RELOCK_TIMEOUT)?.ok_or_else(|| self.missing())?;
        let bytes = db::map_file(held.file())
            .map(|m| m.to_vec())
            .map_err(|source| QuotaStoreError::Io { path, source })?;
        self.held = Some((held, bytes));
        Ok(())
    }
}

/// How long to wait for the lock on a twoskip file just replaced by recovery.
const RELOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// A seed for twoskip node levels (any odd number will do; varied so files differ).
fn level_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}

/// Adds one mailbox's change of usage (`new - old`) to its quota root under the root's
/// lock, as `quota_update_useds` does: never below zero, and into the `SCAN` totals too
/// when a `quota -f` is counting the root and has passed this mailbox already. User roots
/// get the next `MODSEQ`, as `quota_write` gives them. Returns false when there is no
/// such root (Cyrus then changes nothing either).
pub fn charge_root(
    store: &QuotaStore,
    root: &[u8],
    mailbox: &[u8],
    old: &Usage,
    new: &Usage,
    timeout: Duration,
) -> Result<bool, QuotaStoreError> {
    let mut rl = store.lock_root(root, timeout)?;
    let Some(mut q) = rl.record.clone() else {
        return Ok(false);
    };
    let apply = |v: u64, i: usize| -> u64 {
        let (o, n) = (
            old.get(i).copied().unwrap_or(0),
            new.get(i).copied().unwrap_or(0),
        );
        if n >= o {
            v.saturating_add(n - o)
        } else {
            v.saturating_sub(o - n)
        }
    };
    for res in crate::format::quota::Resource::ALL {
        let u = &mut q.get_mut(res).used;
        *u = apply(*u, res.index());
    }
    if let Some(scan) = q.scan.as_mut() {
        if mailbox <= scan.mbox.as_slice() {
            for (i, u) in scan.used.iter_mut().enumerate() {
                *u = apply(*u, i);
            }
        }
    }
    let local = match root.iter().position(|&b| b == b'!') {
        Some(i) => root.get(i + 1..).unwrap_or_default(),
        None => root,
    };
    if local.starts_with(b"user.") {
        q.modseq = Some(q.modseq.unwrap_or(0).saturating_add(1));
    }
    rl.write(&q)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::{IndexHeader, OPT_MAILBOX_DELETED};

    #[test]
    fn owning_root_is_longest_prefix_at_a_dot() {
        let roots = vec![
            b"user.alice".to_vec(),
            b"user.alice.Sub".to_vec(),
            b"user.al".to_vec(),
        ];
        assert_eq!(owning_root(&roots, b"user.alice"), Some(&b"user.alice"[..]));
        assert_eq!(
            owning_root(&roots, b"user.alice.Sub.Deep"),
            Some(&b"user.alice.Sub"[..])
        );
        assert_eq!(
            owning_root(&roots, b"user.alice.Subway"),
            Some(&b"user.alice"[..])
        );
        assert_eq!(owning_root(&roots, b"user.alan"), None);
    }

    #[test]
    fn domain_root_owns_the_rest_of_its_domain() {
        let roots = vec![b"example.com!".to_vec(), b"example.com!user.bob".to_vec()];
        assert_eq!(
            owning_root(&roots, b"example.com!user.bob.Sent"),
            Some(&b"example.com!user.bob"[..])
        );
        assert_eq!(
            owning_root(&roots, b"example.com!user.carol"),
            Some(&b"example.com!"[..])
        );
        assert_eq!(owning_root(&roots, b"example.org!user.carol"), None);
        assert_eq!(owning_root(&roots, b"user.carol"), None);
    }

    #[test]
    fn mailbox_being_deleted_charges_nothing() {
        let mut h = IndexHeader {
            quota_mailbox_used: 100,
            exists: 3,
            quota_annot_used: 7,
            ..Default::default()
        };
        assert_eq!(mailbox_usage(&h), [100, 3, 7, 1]);
        h.options |= OPT_MAILBOX_DELETED;
        assert_eq!(mailbox_usage(&h), [0; 4]);
    }

    fn legacy_layout(dir: &Path) -> (Config, Layout) {
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\n",
            dir.display()
        );
        let c = Config::parse(conf.as_bytes(), dir).unwrap();
        let l = Layout::from_config(&c).unwrap();
        (c, l)
    }

    #[test]
    fn legacy_root_read_modify_write_keeps_limits_and_upgrades_2x_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, l) = legacy_layout(tmp.path());
        let file = l.quotalegacy_file(b"user.alice").unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"12345\n2000\n").unwrap();
        let store = QuotaStore::open(&c, &l).unwrap();
        let mut held = store
            .lock_root(b"user.alice", Duration::from_secs(1))
            .unwrap();
        let mut q = held.record.clone().unwrap();
        assert_eq!(q.get(quota::Resource::Storage).used, 12345);
        q.get_mut(quota::Resource::Storage).used = 99;
        held.write(&q).unwrap();
        drop(held);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"%(S (99 2000) M (0) AS (0) NF (0) MODSEQ 0)\n"
        );
        // A root that does not exist is never created.
        let mut none = store
            .lock_root(b"user.bob", Duration::from_secs(1))
            .unwrap();
        assert!(none.record.is_none());
        assert!(none.write(&QuotaRecord::new()).is_err());
        assert!(!l.quotalegacy_file(b"user.bob").unwrap().exists());
    }

    /// A config with `quota_db: twoskip` below `dir`, its config directory made.
    fn twoskip_layout(dir: &Path) -> (Config, Layout) {
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\nquota_db: twoskip\n",
            dir.display()
        );
        let c = Config::parse(conf.as_bytes(), dir).unwrap();
        let l = Layout::from_config(&c).unwrap();
        std::fs::create_dir_all(l.quotas_db().parent().unwrap()).unwrap();
        (c, l)
    }

    /// A writer killed inside its transaction (dirty header written, some or all of its
    /// records, no commit) leaves a file the in-place writer refuses; the next write
    /// recovers it: the committed state plus the new value, in a clean file.
    #[test]
    fn twoskip_left_dirty_by_a_killed_writer_is_recovered_on_write() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, l) = twoskip_layout(tmp.path());
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..20)
            .map(|i| {
                let v = format!("%(S ({i} 100) M (1) AS (0) NF (1) MODSEQ 3)");
                (format!("user.u{i:02}").into_bytes(), v.into_bytes())
            })
            .collect();
        let file = twoskip::write_fresh(&pairs, &Default::default()).unwrap();
        let newv = b"%(S (999 100) M (1) AS (0) NF (1) MODSEQ 4)";
        let txn = twoskip::append_transaction(
            &file,
            &[Op::Set(b"user.u07", newv), Op::Delete(b"user.u03")],
            KeyOrder::Raw,
            &mut LevelRng::new(7),
        )
        .unwrap()
        .unwrap();
        for done in 0..=txn.writes.len() {
            // The killed writer's leftovers: dirty header and the first `done` writes.
            let mut crashed = file.clone();
            crashed.resize(crashed.len().max(txn.new_len as usize), 0);
            crashed[..txn.dirty_header.len()].copy_from_slice(&txn.dirty_header);
            for (off, w) in txn.writes.iter().take(done) {
                let off = *off as usize;
                crashed[off..off + w.len()].copy_from_slice(w);
            }
            if done < txn.writes.len() {
                crashed.truncate(
                    file.len().max(
                        txn.writes
                            .iter()
                            .take(done)
                            .map(|(o, w)| *o as usize + w.len())
                            .max()
                            .unwrap_or(0),
                    ),
                );
            }
            std::fs::write(l.quotas_db(), &crashed).unwrap();
            let store = QuotaStore::open(&c, &l).unwrap();
            let mut held = store
                .lock_root(b"user.u11", Duration::from_secs(1))
                .unwrap();
            let mut q = held.record.clone().unwrap();
            assert_eq!(q.get(quota::Resource::Storage).used, 11, "committed view");
            q.get_mut(quota::Resource::Storage).used = 5;
            held.write(&q).unwrap();
            // A second write through the same lock goes to the new file.
            q.get_mut(quota::Resource::Storage).used = 6;
            held.write(&q).unwrap();
            drop(held);
            let bytes = std::fs::read(l.quotas_db()).unwrap();
            assert!(
                TwoskipDb::open(&bytes).unwrap().is_clean(),
                "after {done} writes"
            );
            let got = db::read_db(l.quotas_db(), DbBackend::Twoskip, Duration::from_secs(1))
                .unwrap()
                .unwrap();
            assert!(got.problems.is_empty(), "{:?}", got.problems);
            let mut want = pairs.clone();
            want[11].1 = b"%(S (6 100) M (1) AS (0) NF (1) MODSEQ 3)".to_vec();
            assert_eq!(
                got.pairs, want,
                "after {done} of the killed writer's writes"
            );
        }
    }

    #[test]
    fn twoskip_root_update_and_delete_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, l) = twoskip_layout(tmp.path());
        let v1 = b"%(S (10 100) M (1) AS (0) NF (1) MODSEQ 3)".to_vec();
        let v2 = b"%(S (5) M (1) AS (0) NF (1) MODSEQ 0)".to_vec();
        let pairs = vec![(b"shared".to_vec(), v2.clone()), (b"user.a".to_vec(), v1)];
        let file = twoskip::write_fresh(&pairs, &Default::default()).unwrap();
        std::fs::write(l.quotas_db(), file).unwrap();
        let store = QuotaStore::open(&c, &l).unwrap();
        let mut held = store.lock_root(b"user.a", Duration::from_secs(1)).unwrap();
        let mut q = held.record.clone().unwrap();
        q.get_mut(quota::Resource::Storage).used = 42;
        held.write(&q).unwrap();
        drop(held);
        let mut shared = store.lock_root(b"shared", Duration::from_secs(1)).unwrap();
        shared.delete().unwrap();
        drop(shared);
        let got = db::read_db(l.quotas_db(), DbBackend::Twoskip, Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert_eq!(
            got.pairs,
            vec![(
                b"user.a".to_vec(),
                b"%(S (42 100) M (1) AS (0) NF (1) MODSEQ 3)".to_vec()
            )]
        );
    }
}
