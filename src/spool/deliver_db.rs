//! `deliver.db`: lmtpd's duplicate delivery suppression (imap/duplicate.c, 3.6.1).
//!
//! * File: `duplicate_db_path`, default `{configdirectory}/deliver.db`; backend
//!   `duplicate_db` (default twoskip; only twoskip is written here).
//! * Key: `<Message-ID>\0<mailbox uniqueid>\0<Date header>\0` (each part cut at a NUL, as
//!   the C strings are; 2.4 used the mailbox name instead of the uniqueid).
//! * Value: the host's `time_t` then `unsigned long` uid, 8 + 8 bytes little-endian on
//!   x86-64 (the only such value in Cyrus's databases that is not big-endian).
//!   `duplicate_check` treats a stored time of 0 as "not seen".
//!
//! Writes are one twoskip transaction under the file's exclusive lock, in `mycommit`'s
//! order (dirty header, records, committed header, each fsynced), planned over the mapped
//! file (only the records it touches are read; the file holds days of deliveries). Marks
//! of concurrent deliveries in this process share one transaction (group commit, see
//! [`mark_at`]). A file left dirty by a crash, or one asking for a checkpoint, is
//! rewritten whole (the committed pairs plus the new ones) and renamed over the old under
//! the lock, as Cyrus's recovery/checkpoint would.
//! A missing file is created empty first, in the form Cyrus's `cyrusdb_open(CREATE)`
//! accepts, with the configuration directory's owner.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::format::cyrusdb::{KeyOrder, LevelRng, Op};
use crate::format::twoskip::{self, FreshOptions, TwoskipDb};
use crate::spool::append::{AppendError, SpoolContext};
use crate::spool::atomic::crash_point;
use crate::spool::db::map_file;
use crate::spool::lock::{self, FileLock, LockMode};

/// Threads of one process take this before the file's fcntl lock: every delivery reads and
/// writes this one database, and `lock::lock_file` waits for a busy lock by polling with
/// pauses of up to 50 ms, far longer than a mark holds it (three fdatasyncs). Waiting here
/// instead wakes the next thread as soon as the holder is done; the fcntl lock is then only
/// contended by other processes (Cyrus's lmtpd).
static IN_PROCESS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The database file.
pub fn path(ctx: &SpoolContext) -> PathBuf {
    ctx.config
        .get_path("duplicate_db_path")
        .unwrap_or_else(|| ctx.config.config_directory().join("deliver.db"))
}

fn check_backend(ctx: &SpoolContext) -> Result<(), AppendError> {
    match ctx.config.get("duplicate_db").unwrap_or("twoskip") {
        "twoskip" => Ok(()),
        other => Err(AppendError::Unsupported {
            what: format!("duplicate_db {other} (cyrkit writes twoskip only)"),
        }),
    }
}

/// `make_key`: the three parts, each cut at its first NUL and terminated by one.
pub fn key(message_id: &[u8], uniqueid: &str, date: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(message_id.len() + uniqueid.len() + date.len() + 3);
    for part in [message_id, uniqueid.as_bytes(), date] {
        let end = part.iter().position(|&b| b == 0).unwrap_or(part.len());
        k.extend_from_slice(part.get(..end).unwrap_or_default());
        k.push(0);
    }
    k
}

/// The stored value: native `time_t` + native `unsigned long`.
pub fn value(mark: i64, uid: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&(mark as libc::time_t).to_ne_bytes());
    v.extend_from_slice(&(uid as libc::c_ulong).to_ne_bytes());
    v
}

/// The time in a stored value (`duplicate_check` reads the first `time_t`).
pub fn mark_time(value: &[u8]) -> Option<i64> {
    const N: usize = std::mem::size_of::<libc::time_t>();
    let b: [u8; N] = value.get(..N)?.try_into().ok()?;
    Some(libc::time_t::from_ne_bytes(b))
}

/// Whether a delivery of this message to this mailbox is recorded (`duplicate_check`
/// returning a nonzero time). A missing database has seen nothing.
pub fn seen(
    ctx: &SpoolContext,
    message_id: &[u8],
    uniqueid: &str,
    date: &[u8],
) -> Result<bool, AppendError> {
    Ok(lookup(ctx, message_id, uniqueid, date)?.is_some_and(|t| t != 0))
}

/// The mark time stored for the key, if any.
pub fn lookup(
    ctx: &SpoolContext,
    message_id: &[u8],
    uniqueid: &str,
    date: &[u8],
) -> Result<Option<i64>, AppendError> {
    check_backend(ctx)?;
    let path = path(ctx);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let _local = IN_PROCESS.read().unwrap_or_else(|e| e.into_inner());
    let held = lock::lock_file(file, &path, LockMode::Shared, ctx.lock_timeout)?;
    // Mapped, not read: a lookup touches O(log n) records of a file that grows with every
    // delivery (Cyrus maps it too). The shared lock keeps writers out while we look.
    let bytes = map_file(held.file()).map_err(io_err(&path))?;
    let db = TwoskipDb::open(&bytes).map_err(|e| corrupt(&path, e))?;
    let k = key(message_id, uniqueid, date);
    Ok(db
        .get(&k)
        .map_err(|e| corrupt(&path, e))?
        .and_then(mark_time))
}

/// Record a delivery (`duplicate_mark`, with the current time) of the first new `uid`.
pub fn mark(
    ctx: &SpoolContext,
    message_id: &[u8],
    uniqueid: &str,
    date: &[u8],
    uid: u32,
) -> Result<(), AppendError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    mark_at(ctx, message_id, uniqueid, date, now, u64::from(uid))
}

/// [`mark`] with an explicit time.
///
/// Group commit: marks that arrive while another thread of this process is writing the
/// database wait for it and then go in together, as one twoskip transaction of several
/// `Set`s (a file Cyrus writes the same way from a multi-store transaction). Each caller
/// returns only once the transaction holding its mark is committed (its header fsynced),
/// so what a return promises is unchanged; only the number of fsyncs per mark falls
/// when deliveries overlap.
pub fn mark_at(
    ctx: &SpoolContext,
    message_id: &[u8],
    uniqueid: &str,
    date: &[u8],
    time: i64,
    uid: u64,
) -> Result<(), AppendError> {
    check_backend(ctx)?;
    let path = path(ctx);
    let k = key(message_id, uniqueid, date);
    let v = value(time, uid);
    let lock_groups = || GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let mut groups = lock_groups();
    let ticket = {
        let g = groups.entry(path.clone()).or_default();
        g.next_ticket = g.next_ticket.wrapping_add(1);
        g.pending.push((g.next_ticket, k, v));
        g.next_ticket
    };
    loop {
        let g = groups.entry(path.clone()).or_default();
        if let Some(r) = g.results.remove(&ticket) {
            // The last waiter to collect its result leaves an idle group: remove it, as the
            // leader does when nobody waits.
            if !g.busy && g.pending.is_empty() && g.results.is_empty() {
                groups.remove(&path);
            }
            return r.map_err(|detail| AppendError::Io {
                path: path.clone(),
                source: io::Error::other(format!("the shared transaction failed: {detail}")),
            });
        }
        if !g.busy {
            // Leader: write everything pending (our own mark is among it).
            g.busy = true;
            let batch = std::mem::take(&mut g.pending);
            drop(groups);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                commit_marks(ctx, &path, &batch)
            }))
            .unwrap_or_else(|_| {
                Err(AppendError::Invalid(
                    "deliver.db writer panicked".to_string(),
                ))
            });
            let mut groups = lock_groups();
            let g = groups.entry(path.clone()).or_default();
            g.busy = false;
            let shared = r.as_ref().map(|_| ()).map_err(|e| e.to_string());
            for (t, _, _) in &batch {
                if *t != ticket {
                    g.results.insert(*t, shared.clone());
                }
            }
            if g.pending.is_empty() && g.results.is_empty() {
                groups.remove(&path);
            }
            DONE.notify_all();
            return r;
        }
        groups = DONE.wait(groups).unwrap_or_else(|e| e.into_inner());
    }
}

/// Marks of one database waiting to be written, by ticket.
#[derive(Default)]
struct Group {
    pending: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// A thread is writing a transaction for this database now.
    busy: bool,
    next_ticket: u64,
    /// Outcomes for waiting callers whose marks a leader wrote.
    results: std::collections::HashMap<u64, Result<(), String>>,
}

static GROUPS: std::sync::Mutex<std::collections::BTreeMap<PathBuf, Group>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static DONE: std::sync::Condvar = std::sync::Condvar::new();

/// Write `marks` (ticket, key, value) in one transaction under the exclusive lock, with
/// `mycommit`'s syncs: dirty header, fdatasync; records and pointer updates, fdatasync;
/// committed header, fdatasync (Cyrus's middle sync is an `fsync` because the file grew;
/// `fdatasync` also persists a size change, which is all that sync needs).
fn commit_marks(
    ctx: &SpoolContext,
    path: &Path,
    marks: &[(u64, Vec<u8>, Vec<u8>)],
) -> Result<(), AppendError> {
    let _local = IN_PROCESS.write().unwrap_or_else(|e| e.into_inner());
    let held = lock_creating(path, ctx)?;
    let bytes = map_file(held.file()).map_err(io_err(path))?;
    let db = TwoskipDb::open(&bytes).map_err(|e| corrupt(path, e))?;
    if db.header().is_dirty() || !db.is_clean() || db.header().wants_checkpoint() {
        return rewrite(path, &db, marks);
    }
    let ops: Vec<Op<'_>> = marks.iter().map(|(_, k, v)| Op::Set(k, v)).collect();
    let mut rng = LevelRng::new(seed());
    // Planned over the mapping: only the records the transaction touches are read.
    let Some(txn) = twoskip::append_transaction(&bytes, &ops, KeyOrder::Raw, &mut rng)
        .map_err(|e| corrupt(path, e))?
    else {
        return Ok(());
    };
    let f = held.file();
    let io = io_err(path);
    f.write_all_at(&txn.dirty_header, 0).map_err(&io)?;
    f.sync_data().map_err(&io)?;
    crash_point("deliverdb-dirty");
    for (off, w) in &txn.writes {
        f.write_all_at(w, *off).map_err(&io)?;
    }
    f.sync_data().map_err(&io)?;
    crash_point("deliverdb-records");
    f.write_all_at(&txn.commit_header, 0).map_err(&io)?;
    f.sync_data().map_err(&io)?;
    crash_point("deliverdb-commit");
    Ok(())
}

/// Replace the whole file with its committed pairs plus `marks` (a checkpoint).
fn rewrite(
    path: &Path,
    db: &TwoskipDb<'_>,
    marks: &[(u64, Vec<u8>, Vec<u8>)],
) -> Result<(), AppendError> {
    let mut pairs: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for p in db.iter() {
        let (pk, pv) = p.map_err(|e| corrupt(path, e))?;
        pairs.insert(pk.to_vec(), pv.to_vec());
    }
    for (_, k, v) in marks {
        pairs.insert(k.clone(), v.clone());
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs.into_iter().collect();
    let bytes = twoskip::write_fresh(
        &pairs,
        &FreshOptions {
            generation: db.header().generation.saturating_add(1),
            order: KeyOrder::Raw,
            seed: seed(),
        },
    )
    .map_err(|e| corrupt(path, e))?;
    crate::spool::atomic::replace(path, &bytes).map_err(|e| io_err(&e.path)(e.source))
}

/// Lock the database exclusively, creating it empty when missing, and re-open when it was
/// replaced while we waited (Cyrus's `lock_reopen` inode check).
fn lock_creating(path: &Path, ctx: &SpoolContext) -> Result<FileLock, AppendError> {
    for _ in 0..100 {
        let held = match lock::lock_existing(path, LockMode::Exclusive, ctx.lock_timeout) {
            Ok(h) => h,
            Err(lock::LockError::Open { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                create_empty(path)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let a = held.file().metadata().map(|m| (m.dev(), m.ino()));
        let b = std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
        if let (Ok(a), Ok(b)) = (a, b) {
            if a == b {
                return Ok(held);
            }
        }
    }
    Err(AppendError::Io {
        path: path.to_path_buf(),
        source: io::Error::other("file keeps being replaced while locking it"),
    })
}

/// Create an empty twoskip database at `path` unless one appears meanwhile: written to a
/// private name, then hard-linked into place (which fails harmlessly if another writer
/// won the race).
fn create_empty(path: &Path) -> Result<(), AppendError> {
    let empty: [(&[u8], &[u8]); 0] = [];
    let bytes =
        twoskip::write_fresh(&empty, &FreshOptions::default()).map_err(|e| corrupt(path, e))?;
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".cyrkit-{}", std::process::id()));
        PathBuf::from(s)
    };
    let _ = std::fs::remove_file(&tmp);
    let own = crate::spool::atomic::Ownership::for_path(path).map_err(io_err(path))?;
    crate::spool::atomic::replace_with_ownership(&tmp, &bytes, own)
        .map_err(|e| io_err(&e.path)(e.source))?;
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = crate::spool::atomic::fsync_dir(dir);
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> AppendError + '_ {
    AppendError::io(path)
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> AppendError {
    AppendError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::config::Config;
    use std::sync::Arc;

    fn ctx(dir: &Path) -> SpoolContext {
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\n",
            dir.display()
        );
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        let c = Config::parse(conf.as_bytes(), dir).unwrap();
        SpoolContext::open(Arc::new(c)).unwrap()
    }

    #[test]
    fn key_is_three_nul_terminated_parts_cut_at_nul() {
        assert_eq!(key(b"<a@b>", "U1", b"Mon"), b"<a@b>\0U1\0Mon\0");
        assert_eq!(key(b"<a\0junk", "U", b""), b"<a\0U\0\0");
    }

    #[test]
    fn value_is_native_time_then_ulong() {
        let v = value(0x0102_0304, 7);
        assert_eq!(v.len(), 16);
        assert_eq!(mark_time(&v), Some(0x0102_0304));
        assert_eq!(&v[8..], &7u64.to_ne_bytes());
        assert_eq!(mark_time(b"short"), None);
    }

    #[test]
    fn mark_then_seen_creates_and_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ctx(tmp.path());
        assert!(!seen(&c, b"<m1@x>", "U1", b"d").unwrap());
        mark(&c, b"<m1@x>", "U1", b"d", 4).unwrap();
        assert!(seen(&c, b"<m1@x>", "U1", b"d").unwrap());
        assert!(!seen(&c, b"<m1@x>", "U2", b"d").unwrap());
        for i in 0..50u32 {
            mark(&c, format!("<k{i}@x>").as_bytes(), "U1", b"d", i).unwrap();
        }
        // A time of 0 reads as "not seen", as duplicate_check's caller treats it.
        mark_at(&c, b"<zero@x>", "U1", b"d", 0, 1).unwrap();
        assert!(!seen(&c, b"<zero@x>", "U1", b"d").unwrap());
        let bytes = std::fs::read(path(&c)).unwrap();
        let db = TwoskipDb::open(&bytes).unwrap();
        assert!(db.verify().is_empty());
        assert_eq!(db.iter().count(), 52);
        for i in 0..50u32 {
            assert!(seen(&c, format!("<k{i}@x>").as_bytes(), "U1", b"d").unwrap());
        }
    }

    /// Concurrent marks (sharing transactions when they overlap) all land, each is seen
    /// as soon as its mark returns, the file stays consistent, no group state is left.
    #[test]
    fn concurrent_marks_are_group_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Arc::new(ctx(tmp.path()));
        mark(&c, b"<first@x>", "U", b"d", 1).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..25u32 {
                        let id = format!("<t{t}-{i}@x>");
                        mark(&c, id.as_bytes(), "U", b"d", i).unwrap();
                        assert!(seen(&c, id.as_bytes(), "U", b"d").unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bytes = std::fs::read(path(&c)).unwrap();
        let db = TwoskipDb::open(&bytes).unwrap();
        assert_eq!(db.verify(), vec![]);
        assert_eq!(db.iter().count(), 201);
        for t in 0..8 {
            for i in 0..25 {
                assert!(seen(&c, format!("<t{t}-{i}@x>").as_bytes(), "U", b"d").unwrap());
            }
        }
        // Other tests of this process deliver meanwhile (GROUPS is process-wide): only this
        // database's group must be gone.
        assert!(!GROUPS.lock().unwrap().contains_key(&path(&c)));
    }

    #[test]
    fn a_dirty_file_is_rewritten_with_the_committed_pairs() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ctx(tmp.path());
        mark(&c, b"<a@x>", "U", b"d", 1).unwrap();
        let p = path(&c);
        let mut bytes = std::fs::read(&p).unwrap();
        let mut h = twoskip::Header::parse(&bytes).unwrap();
        h.flags |= 1;
        bytes[..twoskip::HEADER_SIZE].copy_from_slice(&h.sealed().to_bytes());
        std::fs::write(&p, &bytes).unwrap();
        mark(&c, b"<b@x>", "U", b"d", 2).unwrap();
        let after = std::fs::read(&p).unwrap();
        let db = TwoskipDb::open(&after).unwrap();
        assert!(!db.header().is_dirty());
        assert!(db.verify().is_empty());
        assert!(seen(&c, b"<a@x>", "U", b"d").unwrap());
        assert!(seen(&c, b"<b@x>", "U", b"d").unwrap());
    }
}
