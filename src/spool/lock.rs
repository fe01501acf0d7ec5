//! Cyrus's lock protocol: POSIX `fcntl` whole-file record locks.
//!
//! Cyrus 3.6 (lib/lock_fcntl.c, imap/mboxname.c `mboxname_lock`, imap/mailbox.c
//! `mailbox_open_advanced`) takes, in this order: the user namespace lock
//! (`<lockpath>/<hash>/*U*<userid>.lock`), the mailbox name lock, then an fcntl lock on
//! `cyrus.index` itself for the duration of one operation. Lock files are opened
//! `O_CREAT|O_TRUNC|O_RDWR` mode 0666 with parent directories created on demand, and are
//! never deleted. Locks are released in reverse order; dropping a [`FileLock`] releases it.
//!
//! This module owns only the primitive and the ordering helper; which files to lock is
//! decided by `spool::paths`.
//!
//! On Linux the locks are open-file-description locks (`F_OFD_SETLK`): they conflict with
//! Cyrus's classic POSIX locks exactly as those conflict with each other, but belong to the
//! descriptor, not the process. So two threads of one `cyrkit serve` exclude each other,
//! and closing some other descriptor of a locked file (a reader in another thread) does not
//! silently release the lock, as it would with per-process POSIX locks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Shared (F_RDLCK) or exclusive (F_WRLCK), as Cyrus's `lock_shared` / `lock_blocking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: lock held by another process for more than {waited:?} (is Cyrus busy with this mailbox?)")]
    Timeout { path: PathBuf, waited: Duration },
    #[error("{path}: cannot open lock file: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: fcntl lock failed: {source}")]
    Fcntl { path: PathBuf, source: io::Error },
}

/// A held fcntl lock; released when dropped (closing the descriptor releases it too).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
    mode: LockMode,
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn mode(&self) -> LockMode {
        self.mode
    }
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Errors on unlock cannot be acted upon; closing the fd releases the lock anyway.
        let _ = set_lock(&self.file, libc::F_UNLCK as libc::c_short, false);
    }
}

fn set_lock(file: &File, kind: libc::c_short, wait: bool) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct; zeroed is a valid value for every field, and
    // l_start = l_len = 0 with SEEK_SET means "the whole file", as Cyrus's lock_fcntl.c uses.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    #[cfg(target_os = "linux")]
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    #[cfg(not(target_os = "linux"))]
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: the descriptor is valid for the lifetime of `file`, and `fl` outlives the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl as *const libc::flock) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(err);
    }
}

fn is_busy(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

/// Environment variable capping every lock wait, in whole seconds: a cron job can give up
/// (exit 75) sooner than the commands' one-minute default, and the tests can reach exit 75
/// without waiting a minute. A cap, not a replacement, so the short waits that avoid lock-order
/// deadlocks (quota's chunk locking) stay short.
pub const LOCK_TIMEOUT_ENV: &str = "CYRKIT_LOCK_TIMEOUT";

/// `timeout`, capped by `CYRKIT_LOCK_TIMEOUT` when it is set to a number of seconds.
pub fn effective_timeout(timeout: Duration) -> Duration {
    std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(timeout, |cap| timeout.min(Duration::from_secs(cap)))
}

/// Take an fcntl lock on an already open file, polling until `timeout` passes
/// (at most the time `CYRKIT_LOCK_TIMEOUT` names).
pub fn lock_file(
    file: File,
    path: &Path,
    mode: LockMode,
    timeout: Duration,
) -> Result<FileLock, LockError> {
    let timeout = effective_timeout(timeout);
    let kind = match mode {
        LockMode::Shared => libc::F_RDLCK,
        LockMode::Exclusive => libc::F_WRLCK,
    } as libc::c_short;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match set_lock(&file, kind, false) {
            Ok(()) => {
                return Ok(FileLock {
                    file,
                    path: path.to_path_buf(),
                    mode,
                })
            }
            Err(e) if is_busy(&e) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(LockError::Timeout {
                        path: path.to_path_buf(),
                        waited,
                    });
                }
                std::thread::sleep(pause.min(timeout - waited));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(LockError::Fcntl {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Open (creating as Cyrus does) a lock file under `mboxname_lockpath` and lock it.
pub fn lock_path(path: &Path, mode: LockMode, timeout: Duration) -> Result<FileLock, LockError> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| LockError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    lock_file(file, path, mode, timeout)
}

/// Lock an existing data file in place (e.g. `cyrus.index`), without creating it.
/// A shared lock only needs read access, so read-only runs never open for writing.
pub fn lock_existing(
    path: &Path,
    mode: LockMode,
    timeout: Duration,
) -> Result<FileLock, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(mode == LockMode::Exclusive)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    lock_file(file, path, mode, timeout)
}

/// Locks held for one mailbox, released in reverse order of acquisition on drop.
#[derive(Debug, Default)]
pub struct LockStack {
    held: Vec<FileLock>,
}

impl LockStack {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, lock: FileLock) {
        self.held.push(lock);
    }
    pub fn len(&self) -> usize {
        self.held.len()
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
    /// The lock taken last (for a mailbox: the one on `cyrus.index`).
    pub fn last(&self) -> Option<&FileLock> {
        self.held.last()
    }
}

impl Drop for LockStack {
    fn drop(&mut self) {
        while let Some(lock) = self.held.pop() {
            drop(lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// fcntl locks are per process, so contention must be shown from a second process.
    /// `flock(1)` uses flock(2), not fcntl; python's fcntl.lockf uses fcntl, so use it.
    fn other_process_holds(path: &Path, exclusive: bool, secs: f32) -> std::process::Child {
        let op = if exclusive { "LOCK_EX" } else { "LOCK_SH" };
        let script = format!(
            "import fcntl,time,sys\nf=open({:?},'r+')\nfcntl.lockf(f,fcntl.{op})\nprint('locked',flush=True)\ntime.sleep({secs})\n",
            path.to_str().unwrap()
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for the lock tests");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        child
    }

    #[test]
    fn creates_parent_dirs_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q/user/alice.lock");
        let l = lock_path(&p, LockMode::Exclusive, Duration::from_secs(1)).unwrap();
        assert!(p.exists());
        assert_eq!(l.mode(), LockMode::Exclusive);
    }

    #[test]
    fn exclusive_lock_times_out_while_another_process_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        std::fs::write(&p, b"").unwrap();
        let mut child = other_process_holds(&p, true, 5.0);
        let err = lock_path(&p, LockMode::Shared, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Once the holder is gone the lock is ours.
        lock_path(&p, LockMode::Exclusive, Duration::from_secs(2)).unwrap();
    }

    #[test]
    fn shared_locks_coexist_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cyrus.index");
        std::fs::write(&p, b"data").unwrap();
        let mut child = other_process_holds(&p, false, 5.0);
        lock_existing(&p, LockMode::Shared, Duration::from_millis(200)).unwrap();
        let err = lock_existing(&p, LockMode::Exclusive, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// OFD locks: a second descriptor in the same process (another server thread) is
    /// excluded, and closing an unrelated descriptor of the file keeps the lock.
    #[cfg(target_os = "linux")]
    #[test]
    fn threads_of_one_process_exclude_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f.lock");
        let held = lock_path(&p, LockMode::Exclusive, Duration::from_secs(1)).unwrap();
        drop(File::open(&p).unwrap());
        let again = lock_path(&p, LockMode::Shared, Duration::from_millis(50));
        assert!(matches!(again, Err(LockError::Timeout { .. })));
        drop(held);
        lock_path(&p, LockMode::Shared, Duration::from_millis(50)).unwrap();
    }
}
