//! One mailbox on disk, found from its mailboxes.db record: where its files live (both
//! layouts, metapartitions), taking Cyrus's locks on it, reading its header, index, cache
//! and message files, and committing a new set of metadata files crash-safely.
//!
//! Owns the file-level policy shared by `mbcheck` (read-only) and `reconstruct` (repair):
//! which directory entries are messages and which are "odd" (`mailbox_parse_datafilename`
//! and the directory walk of `mailbox_reconstruct` in Cyrus 3.6.1 imap/mailbox.c), and the
//! order in which a repair's files become durable ([`commit`]). It does not decide what a
//! repair changes; that is the command's plan.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spool::atomic::{self, crash_point};
use crate::spool::lock::{self, LockMode, LockStack};
use crate::spool::mailbox_lock::{self, MailboxLockError, OpenMode};
use crate::spool::mboxlist::MboxRecord;
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::{self, Layout, MailboxDir, MetaFile, PathError};

/// The directory identity of a mailbox: its name in the legacy layout, its unique id in the
/// uuid layout (the `l` flag of its mailboxes.db entry decides, not the configuration).
pub fn mailbox_dir(m: &MboxRecord) -> Option<MailboxDir<'_>> {
    if m.entry.legacy_dirs() {
        Some(MailboxDir::Legacy(&m.name))
    } else {
        m.entry
            .uniqueid
            .as_deref()
            .and_then(|u| std::str::from_utf8(u).ok())
            .map(MailboxDir::Uuid)
    }
}

/// The partition a mailboxes.db entry names (empty if none).
pub fn partition(m: &MboxRecord) -> String {
    m.entry
        .partition
        .as_deref()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

/// The internal name of a mailbox argument (an external name, as Cyrus's tools take it).
/// With `recursive` the argument may be a hierarchy prefix that is no mailbox name by
/// itself (`-r user`), as Cyrus's reconstruct takes it (it appends `.*` to whatever the
/// argument converts to): such a prefix is converted with a dummy child component added and
/// removed again. The error is a message for a usage error.
pub fn internal_arg(arg: &str, nc: &NameConfig, recursive: bool) -> Result<Vec<u8>, String> {
    let err = match MboxName::from_external(arg.as_bytes(), nc) {
        Ok(n) => return Ok(n.to_internal()),
        Err(e) => e,
    };
    const DUMMY: &str = "cyrkit-prefix";
    let sep = if nc.unixhierarchysep { '/' } else { '.' };
    let (local, domain) = match arg.rfind('@') {
        Some(i) if nc.virtdomains.enabled() => arg.split_at(i),
        _ => (arg, ""),
    };
    let child = format!("{local}{sep}{DUMMY}{domain}");
    MboxName::from_external(child.as_bytes(), nc)
        .ok()
        .filter(|_| recursive)
        .and_then(|n| {
            n.to_internal()
                .strip_suffix(format!(".{DUMMY}").as_bytes())
                .map(<[u8]>::to_vec)
        })
        .ok_or_else(|| format!("mailbox name {arg:?}: {err}"))
}

/// Every path of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxFiles {
    pub data_dir: PathBuf,
    pub header: PathBuf,
    pub index: PathBuf,
    pub cache: PathBuf,
    pub annotations: PathBuf,
}

impl MailboxFiles {
    /// The paths of `m` under `layout`.
    pub fn locate(layout: &Layout, m: &MboxRecord) -> Result<MailboxFiles, PathError> {
        let part = partition(m);
        let dir = mailbox_dir(m).ok_or_else(|| {
            PathError::BadUniqueId(
                m.entry
                    .uniqueid
                    .as_deref()
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                    .unwrap_or_default(),
            )
        })?;
        Ok(MailboxFiles {
            data_dir: layout.data_dir(&part, dir)?,
            header: layout.meta_file(&part, dir, MetaFile::Header, false)?,
            index: layout.meta_file(&part, dir, MetaFile::Index, false)?,
            cache: layout.meta_file(&part, dir, MetaFile::Cache, false)?,
            annotations: layout.meta_file(&part, dir, MetaFile::Annotations, false)?,
        })
    }

    /// The spool file of message `uid`.
    pub fn message(&self, uid: u32) -> PathBuf {
        self.data_dir.join(paths::message_file_name(uid))
    }
}

/// A message file found in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFile {
    pub uid: u32,
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in seconds (Cyrus sets it to the internaldate on append).
    pub mtime: i64,
    pub dev: u64,
    pub ino: u64,
}

/// What a mailbox data directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirListing {
    /// Message files (`^[0-9]+\.$`) by UID.
    pub messages: BTreeMap<u32, MessageFile>,
    /// Entries that are neither messages, nor `cyrus.*`, nor dot files, nor directories
    /// (Cyrus's "odd files"), sorted by name.
    pub odd: Vec<PathBuf>,
}

/// A directory opened once, so that its entries are stat'ed and opened by name relative to it
/// (`fstatat`/`openat`): one path walk for the directory instead of one per file.
#[derive(Debug)]
pub struct DirFd(File);

impl DirFd {
    pub fn open(dir: &Path) -> io::Result<DirFd> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map(DirFd)
    }

    /// `stat` (not `lstat`, as Cyrus does) of the entry `name`.
    pub fn stat(&self, name: &std::ffi::OsStr) -> io::Result<nix::sys::stat::FileStat> {
        use std::os::fd::AsRawFd;
        nix::sys::stat::fstatat(Some(self.0.as_raw_fd()), name, nix::fcntl::AtFlags::empty())
            .map_err(io::Error::from)
    }

    /// Opens the entry `name` for reading.
    pub fn open_file(&self, name: &std::ffi::OsStr) -> io::Result<File> {
        use nix::fcntl::OFlag;
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd = nix::fcntl::openat(
            Some(self.0.as_raw_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else; the File
        // takes sole ownership and closes it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// What [`list_dir`] keeps of an entry's `stat`: mode, size, mtime, dev, ino.
type EntryStat = (libc::mode_t, i64, i64, u64, u64);

/// Lists a data directory as Cyrus's reconstruct walks it; a missing directory is empty.
/// The entries are stat'ed relative to the directory, in parallel on the current rayon pool
/// (a big mailbox has 100 000s of them, and this runs twice per repair: before and under the
/// lock).
pub fn list_dir(dir: &Path) -> io::Result<DirListing> {
    use rayon::prelude::*;
    let mut out = DirListing::default();
    let (dfd, rd) = match DirFd::open(dir).and_then(|d| Ok((d, std::fs::read_dir(dir)?))) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in rd {
        let name = e?.file_name();
        let b = name.as_bytes();
        if b.starts_with(b".") || b.starts_with(b"cyrus.") {
            continue;
        }
        names.push(name);
    }
    // An entry that vanished meanwhile is ignored.
    // Only the fields kept (a `FileStat` is 144 bytes; 100 000s of them add up).
    let stats: Vec<Option<EntryStat>> = names
        .par_iter()
        .map(|n| {
            let st = dfd.stat(n).ok()?;
            Some((st.st_mode, st.st_size, st.st_mtime, st.st_dev, st.st_ino))
        })
        .collect();
    for (name, st) in names.into_iter().zip(stats) {
        let Some((mode, size, mtime, dev, ino)) = st else {
            continue;
        };
        let fmt = mode & libc::S_IFMT;
        if fmt == libc::S_IFDIR {
            continue; // child mailboxes (legacy layout)
        }
        let path = dir.join(&name);
        match paths::parse_message_file_name(name.as_bytes()) {
            Some(uid) if fmt == libc::S_IFREG => {
                out.messages.insert(
                    uid,
                    MessageFile {
                        uid,
                        path,
                        size: u64::try_from(size).unwrap_or(0),
                        mtime,
                        dev,
                        ino,
                    },
                );
            }
            _ => out.odd.push(path),
        }
    }
    out.odd.sort();
    Ok(out)
}

/// SHA-1 of a file's bytes (the message GUID), read in chunks.
pub fn sha1_file(path: &Path) -> io::Result<[u8; 20]> {
    use sha1::{Digest, Sha1};
    let mut f = File::open(path)?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(h.finalize().into())
}

/// A whole file, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The metadata files and the directory listing of a mailbox at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub header: Option<Vec<u8>>,
    pub index: Option<Vec<u8>>,
    pub cache: Option<Vec<u8>>,
    pub listing: DirListing,
}

impl Snapshot {
    /// Reads the header, index, cache and data directory of a mailbox. Under the mailbox's
    /// locks it is what Cyrus sees; without them it may be stale (compare a later snapshot).
    pub fn read(files: &MailboxFiles) -> io::Result<Snapshot> {
        Ok(Snapshot {
            header: read_optional(&files.header)?,
            index: read_optional(&files.index)?,
            cache: read_optional(&files.cache)?,
            listing: list_dir(&files.data_dir)?,
        })
    }
}

/// Takes Cyrus's locks on a mailbox (see [`mailbox_lock`]). A mailbox whose `cyrus.index`
/// is missing cannot have its index locked: then only the namespace and name locks are
/// taken, exclusively, which is what Cyrus requires for creating or replacing the files.
pub fn lock(
    layout: &Layout,
    m: &MboxRecord,
    files: &MailboxFiles,
    mode: OpenMode,
    timeout: Duration,
) -> Result<LockStack, MailboxLockError> {
    let dir = mailbox_dir(m).ok_or_else(|| PathError::BadUniqueId(String::new()))?;
    if files.index.exists() {
        return mailbox_lock::lock_mailbox(layout, &m.name, dir, &files.index, mode, timeout);
    }
    let mut stack = LockStack::new();
    let ns = layout.user_namespace_lock_file(m.name.userid().as_deref())?;
    stack.push(lock::lock_path(&ns, LockMode::Exclusive, timeout)?);
    let name_lock = layout.mailbox_lock_file(dir)?;
    stack.push(lock::lock_path(&name_lock, LockMode::Exclusive, timeout)?);
    Ok(stack)
}

/// Where new cache entries wait between parsing and [`commit`], so that a mailbox's entries
/// (hundreds of MB for a big mailbox) are not all held in memory: an unnamed file
/// (`O_TMPFILE`, gone when closed, even after a crash) next to `cyrus.cache`, else in the
/// temporary directory, else memory. Appends may come from several threads at once.
pub struct Spill {
    store: SpillStore,
    len: AtomicU64,
}

enum SpillStore {
    File(File),
    Memory(Mutex<Vec<u8>>),
    /// `-n`: only offsets and lengths matter; the bytes are dropped.
    Discard,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store {
            SpillStore::File(_) => "file",
            SpillStore::Memory(_) => "memory",
            SpillStore::Discard => "discard",
        };
        write!(
            f,
            "Spill({kind}, {} bytes)",
            self.len.load(Ordering::Relaxed)
        )
    }
}

impl Spill {
    /// A spill file in `dir` (the directory of `cyrus.cache`, so its pages are on the same
    /// device), else in the temporary directory, else in memory.
    pub fn near(dir: &Path) -> Spill {
        let unnamed = |d: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(d)
        };
        let store = match unnamed(dir).or_else(|_| unnamed(&std::env::temp_dir())) {
            Ok(f) => SpillStore::File(f),
            Err(_) => SpillStore::Memory(Mutex::new(Vec::new())),
        };
        Spill {
            store,
            len: AtomicU64::new(0),
        }
    }

    /// A spill kept in memory.
    pub fn memory() -> Spill {
        Spill {
            store: SpillStore::Memory(Mutex::new(Vec::new())),
            len: AtomicU64::new(0),
        }
    }

    /// A spill that only counts (for a dry run: nothing is committed).
    pub fn discard() -> Spill {
        Spill {
            store: SpillStore::Discard,
            len: AtomicU64::new(0),
        }
    }

    /// Appends `bytes`; returns the offset they start at.
    pub fn append(&self, bytes: &[u8]) -> io::Result<u64> {
        match &self.store {
            SpillStore::File(f) => {
                let off = self.len.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                f.write_all_at(bytes, off)?;
                Ok(off)
            }
            SpillStore::Memory(m) => {
                let mut v = m
                    .lock()
                    .map_err(|_| io::Error::other("spill lock poisoned"))?;
                let off = v.len() as u64;
                v.extend_from_slice(bytes);
                self.len.store(v.len() as u64, Ordering::SeqCst);
                Ok(off)
            }
            SpillStore::Discard => Ok(self.len.fetch_add(bytes.len() as u64, Ordering::SeqCst)),
        }
    }

    /// Copies `len` bytes at `off` to `out` (at its position). From a spill file this is
    /// `copy_file_range` (std's `io::copy` between files): the kernel copies the pages, they
    /// do not pass through a buffer here.
    fn copy_to(&self, off: u64, len: u64, mut out: &File) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let end = off
            .checked_add(len)
            .filter(|&e| e <= self.len.load(Ordering::SeqCst))
            .ok_or_else(|| io::Error::other("cache entry range outside the spill"))?;
        match &self.store {
            SpillStore::File(f) => {
                let mut src = f;
                src.seek(SeekFrom::Start(off))?;
                let n = io::copy(&mut src.take(len), &mut out)?;
                if n != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("spill holds {n} of {len} bytes at {off}"),
                    ));
                }
                Ok(())
            }
            SpillStore::Memory(m) => {
                let v = m
                    .lock()
                    .map_err(|_| io::Error::other("spill lock poisoned"))?;
                let r = usize::try_from(off).ok().zip(usize::try_from(end).ok());
                let bytes = r.and_then(|(a, b)| v.get(a..b)).unwrap_or_default();
                out.write_all(bytes)
            }
            SpillStore::Discard => Err(io::Error::other(
                "cache entries of a dry run were not kept; nothing to commit",
            )),
        }
    }
}

/// A new `cyrus.cache`: the old file's bytes (or a new file's header), then entries held in
/// a [`Spill`], in the order they were pushed.
#[derive(Debug, Clone)]
pub struct NewCache {
    /// The first bytes: the old file, so the old index's offsets stay valid until the new
    /// index is in place (or the generation number of a new file).
    pub prefix: Vec<u8>,
    /// `(offset, length)` ranges of the spill; adjacent ranges are merged.
    ranges: Vec<(u64, u64)>,
    len: u64,
    spill: Arc<Spill>,
}

impl PartialEq for NewCache {
    fn eq(&self, o: &NewCache) -> bool {
        self.prefix == o.prefix && self.ranges == o.ranges && Arc::ptr_eq(&self.spill, &o.spill)
    }
}

impl Eq for NewCache {}

impl NewCache {
    pub fn new(prefix: Vec<u8>, spill: Arc<Spill>) -> NewCache {
        NewCache {
            len: prefix.len() as u64,
            prefix,
            ranges: Vec::new(),
            spill,
        }
    }

    /// Size of the file in bytes (the offset the next entry gets).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the entry at `off`, `len` bytes long, of the spill.
    pub fn push(&mut self, off: u64, len: u64) {
        self.len = self.len.saturating_add(len);
        match self.ranges.last_mut() {
            Some((o, l)) if o.checked_add(*l) == Some(off) => *l = l.saturating_add(len),
            _ => self.ranges.push((off, len)),
        }
    }

    /// Writes the whole file to `out`, from its position.
    pub fn write_to(&self, mut out: &File) -> io::Result<()> {
        out.write_all(&self.prefix)?;
        for &(off, len) in &self.ranges {
            self.spill.copy_to(off, len, out)?;
        }
        Ok(())
    }
}

/// A set of new metadata files and file operations for one mailbox, applied by [`commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Message files to rename (new UID), each done as link new name, then unlink old.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// The whole new `cyrus.cache`; it must start with the old file's bytes so the old
    /// index's offsets stay valid until the new index is in place.
    pub cache: Option<NewCache>,
    pub header: Option<Vec<u8>>,
    pub index: Option<Vec<u8>>,
    /// Files to delete after the new index is in place (odd files with -O, message files
    /// with -U, and extra names of a message that another name keeps).
    pub removals: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self == &Changes::default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {what}: {source}", path.display())]
pub struct CommitError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

fn cerr<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |source| CommitError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Applies `changes` (the caller holds the exclusive locks). Every step is durable before
/// the next starts, so a crash at any instant leaves a state from which a rerun completes
/// and no message is ever without a name:
/// 1. renamed messages: link the new name, fsync the directory, unlink the old name, fsync;
/// 2. `cyrus.cache` (old bytes + new entries) via `.NEW` and rename: the old index still
///    reads it;
/// 3. `cyrus.header` via `.NEW`, 4. `cyrus.index` via `.NEW` (its `header_file_crc` matches
///    the new header, as in Cyrus's `mailbox_commit`);
/// 5. removals.
pub fn commit(files: &MailboxFiles, changes: &Changes) -> Result<(), CommitError> {
    for (from, to) in &changes.renames {
        let dir = to.parent().unwrap_or(Path::new("."));
        match std::fs::hard_link(from, to) {
            Ok(()) => {}
            // A rerun after a crash between link and unlink: the new name exists already.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(from, to) => {}
            Err(e) => return Err(cerr(to, "cannot link")(e)),
        }
        crash_point("link");
        atomic::fsync_dir(dir).map_err(cerr(dir, "cannot fsync directory"))?;
        std::fs::remove_file(from).map_err(cerr(from, "cannot unlink the old name"))?;
        crash_point("unlink");
        atomic::fsync_dir(dir).map_err(cerr(dir, "cannot fsync directory"))?;
    }
    let write = |path: &Path, bytes: &Option<Vec<u8>>| -> Result<(), CommitError> {
        if let Some(b) = bytes {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(cerr(dir, "cannot create directory"))?;
            }
            atomic::replace(path, b).map_err(|e| CommitError {
                path: e.path,
                what: e.what,
                source: e.source,
            })?;
        }
        Ok(())
    };
    if let Some(c) = &changes.cache {
        if let Some(dir) = files.cache.parent() {
            std::fs::create_dir_all(dir).map_err(cerr(dir, "cannot create directory"))?;
        }
        replace_streamed(&files.cache, c)?;
    }
    write(&files.header, &changes.header)?;
    write(&files.index, &changes.index)?;
    for p in &changes.removals {
        match std::fs::remove_file(p) {
            Ok(()) => crash_point("remove"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(cerr(p, "cannot remove")(e)),
        }
    }
    Ok(())
}

/// [`atomic::replace`] for a file streamed from a [`NewCache`]: the same steps (`NAME.NEW`
/// with the old file's owner and mode, write, fsync, rename, fsync the directory) and the same
/// crash points, without the whole file in memory.
fn replace_streamed(path: &Path, cache: &NewCache) -> Result<(), CommitError> {
    let own = atomic::Ownership::for_path(path).map_err(cerr(path, "cannot stat"))?;
    let tmp = atomic::new_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(own.mode)
            .open(&tmp)
            .map_err(cerr(&tmp, "cannot create"))?;
        f.set_permissions(std::fs::Permissions::from_mode(own.mode))
            .map_err(cerr(&tmp, "cannot set owner/mode"))?;
        if nix::unistd::geteuid().is_root() {
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                Some(nix::unistd::Uid::from_raw(own.uid)),
                Some(nix::unistd::Gid::from_raw(own.gid)),
            )
            .map_err(|e| cerr(&tmp, "cannot set owner/mode")(io::Error::from(e)))?;
        }
        cache.write_to(&f).map_err(cerr(&tmp, "cannot write"))?;
        crash_point("write");
        f.sync_all().map_err(cerr(&tmp, "cannot fsync"))?;
        crash_point("fsync");
    }
    std::fs::rename(&tmp, path).map_err(cerr(path, "cannot rename into place"))?;
    crash_point("rename");
    atomic::fsync_dir(dir).map_err(cerr(dir, "cannot fsync directory"))?;
    crash_point("fsync-dir");
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_separates_messages_odd_files_and_ignored_entries() {
        let d = tempfile::tempdir().unwrap();
        for n in ["1.", "22.", "cyrus.index", ".hidden", "x.", "1", "junk"] {
            std::fs::write(d.path().join(n), b"a").unwrap();
        }
        std::fs::create_dir(d.path().join("Sub")).unwrap();
        let l = list_dir(d.path()).unwrap();
        assert_eq!(l.messages.keys().copied().collect::<Vec<_>>(), vec![1, 22]);
        let odd: Vec<_> = l
            .odd
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(odd, vec!["1", "junk", "x."]);
        assert_eq!(
            list_dir(&d.path().join("none")).unwrap(),
            DirListing::default()
        );
    }

    fn files_in(d: &Path) -> MailboxFiles {
        MailboxFiles {
            data_dir: d.to_path_buf(),
            header: d.join("cyrus.header"),
            index: d.join("cyrus.index"),
            cache: d.join("cyrus.cache"),
            annotations: d.join("cyrus.annotations"),
        }
    }

    #[test]
    fn new_cache_is_the_prefix_then_the_pushed_entries_in_order() {
        let d = tempfile::tempdir().unwrap();
        for spill in [Spill::near(d.path()), Spill::memory()] {
            let spill = Arc::new(spill);
            let a = spill.append(b"AAAA").unwrap();
            let b = spill.append(b"BBBBBBBB").unwrap();
            let c = spill.append(b"CC").unwrap();
            assert_eq!((a, b, c), (0, 4, 12));
            let mut nc = NewCache::new(b"old!".to_vec(), spill.clone());
            nc.push(b, 8);
            nc.push(c, 2); // adjacent to b: merged
            nc.push(a, 4);
            assert_eq!(nc.ranges, vec![(4, 10), (0, 4)]);
            assert_eq!(nc.len(), 18);
            let out = tempfile::tempfile().unwrap();
            nc.write_to(&out).unwrap();
            assert_eq!(read_all(&out), b"old!BBBBBBBBCCAAAA");
            // A range the spill does not hold is an error, not a short file.
            nc.push(100, 4);
            assert!(nc.write_to(&tempfile::tempfile().unwrap()).is_err());
        }
        // An unnamed spill leaves nothing in the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn dry_run_spill_counts_but_cannot_be_committed() {
        let spill = Arc::new(Spill::discard());
        assert_eq!(spill.append(b"xyz").unwrap(), 0);
        assert_eq!(spill.append(b"w").unwrap(), 3);
        let mut nc = NewCache::new(Vec::new(), spill);
        nc.push(0, 4);
        assert!(nc.write_to(&tempfile::tempfile().unwrap()).is_err());
    }

    fn read_all(mut f: &File) -> Vec<u8> {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn commit_streams_the_cache_with_the_old_bytes_first() {
        let d = tempfile::tempdir().unwrap();
        let files = files_in(d.path());
        std::fs::write(&files.cache, b"OLDCACHE").unwrap();
        let spill = Arc::new(Spill::near(d.path()));
        let off = spill.append(b"entry").unwrap();
        let mut nc = NewCache::new(b"OLDCACHE".to_vec(), spill);
        nc.push(off, 5);
        let ch = Changes {
            cache: Some(nc),
            ..Changes::default()
        };
        assert!(!ch.is_empty());
        commit(&files, &ch).unwrap();
        assert_eq!(std::fs::read(&files.cache).unwrap(), b"OLDCACHEentry");
        assert!(!atomic::new_path(&files.cache).exists());
    }

    #[test]
    fn commit_renames_by_link_then_unlink_and_is_rerunnable() {
        let d = tempfile::tempdir().unwrap();
        let files = files_in(d.path());
        std::fs::write(files.message(3), b"msg").unwrap();
        // A crash after the link left both names.
        std::fs::hard_link(files.message(3), files.message(9)).unwrap();
        let ch = Changes {
            renames: vec![(files.message(3), files.message(9))],
            index: Some(b"idx".to_vec()),
            ..Changes::default()
        };
        commit(&files, &ch).unwrap();
        assert!(!files.message(3).exists());
        assert_eq!(std::fs::read(files.message(9)).unwrap(), b"msg");
        assert_eq!(std::fs::read(&files.index).unwrap(), b"idx");
    }
}
