//! One mailbox on disk, found from its mailboxes.db record: where its files live (both
//! layouts, metapartitions), taking Cyrus's locks on it, reading its header, index, cache
//! and message files, and committing a new set of metadata files crash-safely.
//!
//! Owns the file-level policy shared by `mbcheck` (read-only) and `reconstruct` (repair):
//! which directory entries are messages and which are "odd" (`mailbox_parse_datafilename`
//! and the directory walk of `mailbox_reconstruct` in Cyrus 3.6.1 imap/mailbox.c), and the
//! order in which a repair's files become durable ([`commit`]). It does not decide what a
//! repair changes; that is the command's plan.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::format::cache::{CacheEntry, CacheError};
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

/// A message file found in the data directory: 40 bytes (a big mailbox lists 100 000s,
/// twice per repair), its name not stored but rebuilt from the UID and the name's length
/// ([`MessageFile::name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFile {
    pub uid: u32,
    /// The length of the file's name, which with the UID determines it: `0123.` and `123.`
    /// are both UID 123.
    pub name_len: u16,
    pub size: u64,
    /// Modification time in seconds (Cyrus sets it to the internaldate on append).
    pub mtime: i64,
    pub dev: u64,
    pub ino: u64,
}

impl MessageFile {
    /// The file's name in the data directory: the UID zero-padded to the listed length, and
    /// a dot.
    pub fn name(&self) -> String {
        let width = usize::from(self.name_len).saturating_sub(1);
        format!("{:0width$}.", self.uid)
    }
}

/// The message files of a data directory, sorted by UID (one per UID), in a flat vector:
/// a tree of them would cost twice the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Messages(Vec<MessageFile>);

impl Messages {
    pub fn get(&self, uid: &u32) -> Option<&MessageFile> {
        self.0.get(self.position(*uid)?)
    }

    /// Where the file of `uid` is in UID order (the order of [`Messages::values`]).
    pub fn position(&self, uid: u32) -> Option<usize> {
        self.0.binary_search_by_key(&uid, |f| f.uid).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> + '_ {
        self.0.iter().map(|f| &f.uid)
    }

    pub fn values(&self) -> std::slice::Iter<'_, MessageFile> {
        self.0.iter()
    }
}

/// Collects files in any order; of two names of one UID (`0123.`, `123.`) the later one is
/// kept, as inserting both into a map by UID would.
impl FromIterator<MessageFile> for Messages {
    fn from_iter<I: IntoIterator<Item = MessageFile>>(iter: I) -> Messages {
        let mut v: Vec<MessageFile> = iter.into_iter().collect();
        v.sort_by_key(|f| f.uid); // stable: equal UIDs stay in arrival order
        v.dedup_by(|later, kept| {
            if later.uid == kept.uid {
                std::mem::swap(later, kept);
                true
            } else {
                false
            }
        });
        v.shrink_to_fit();
        Messages(v)
    }
}

type MessageEntry<'a> = (&'a u32, &'a MessageFile);

impl<'a> IntoIterator for &'a Messages {
    type Item = MessageEntry<'a>;
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, MessageFile>, fn(&'a MessageFile) -> MessageEntry<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|f| (&f.uid, f))
    }
}

/// What a mailbox data directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirListing {
    /// Message files (`^[0-9]+\.$`) by UID.
    pub messages: Messages,
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

/// How many directory entries [`list_dir`] stats at a time.
const LIST_BATCH: usize = 4096;

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
    // Names are stat'ed in batches as they are read (in parallel within a batch): holding
    // every name and every stat result before keeping the 40 bytes a file needs would cost
    // ~150 bytes per message at the peak (150 MB for a 1M-message mailbox).
    let mut messages = Vec::new();
    let mut names = Vec::with_capacity(LIST_BATCH);
    let mut rd = rd.peekable();
    while rd.peek().is_some() {
        names.clear();
        for e in rd.by_ref() {
            let name = e?.file_name();
            let b = name.as_bytes();
            if b.starts_with(b".") || b.starts_with(b"cyrus.") {
                continue;
            }
            names.push(name);
            if names.len() == LIST_BATCH {
                break;
            }
        }
        // An entry that vanished meanwhile is ignored.
        // Only the fields kept (a `FileStat` is 144 bytes).
        let stats: Vec<Option<EntryStat>> = names
            .par_iter()
            .map(|n| {
                let st = dfd.stat(n).ok()?;
                Some((st.st_mode, st.st_size, st.st_mtime, st.st_dev, st.st_ino))
            })
            .collect();
        for (name, st) in names.iter().zip(stats) {
            let Some((mode, size, mtime, dev, ino)) = st else {
                continue;
            };
            let fmt = mode & libc::S_IFMT;
            if fmt == libc::S_IFDIR {
                continue; // child mailboxes (legacy layout)
            }
            let uid = paths::parse_message_file_name(name.as_bytes());
            match (uid, u16::try_from(name.len())) {
                (Some(uid), Ok(name_len)) if fmt == libc::S_IFREG => messages.push(MessageFile {
                    uid,
                    name_len,
                    size: u64::try_from(size).unwrap_or(0),
                    mtime,
                    dev,
                    ino,
                }),
                _ => out.odd.push(dir.join(name)),
            }
        }
    }
    out.messages = messages.into_iter().collect();
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
    /// `cyrus.index` is not held either (104 bytes per message at version 17): it is kept
    /// open, identified by its length and digest, and read through a window
    /// ([`IndexFile::window`]).
    pub index: Option<IndexFile>,
    /// `cyrus.cache` is not read whole (it is ~1.5 KB per message): it is kept open and its
    /// entries are read as they are checked ([`CacheFile::entry_ok`]).
    pub cache: Option<CacheFile>,
    pub listing: DirListing,
}

impl Snapshot {
    /// Reads the header, index, cache and data directory of a mailbox. Under the mailbox's
    /// locks it is what Cyrus sees; without them it may be stale (compare a later snapshot).
    pub fn read(files: &MailboxFiles) -> io::Result<Snapshot> {
        Ok(Snapshot {
            header: read_optional(&files.header)?,
            index: IndexFile::open(&files.index)?,
            cache: CacheFile::open(&files.cache)?,
            listing: list_dir(&files.data_dir)?,
        })
    }
}

/// An open `cyrus.index` as it was when read: its length and the SHA-1 of its bytes (read
/// once, through a window, when it is opened) decide whether it changed — Cyrus rewrites
/// records and the header in place, so neither the length nor the inode would tell — and
/// its bytes are read again through a window ([`IndexFile::window`]) as a plan needs them,
/// instead of holding the file (104 bytes per message at version 17: 100 MB for a
/// 1M-message mailbox). The digest is of this host's own file, read back by the same
/// descriptor the plan reads; a change while it is read makes the digest differ from the
/// one taken again under the mailbox's lock, which then re-plans.
#[derive(Debug, Clone)]
pub struct IndexFile {
    source: IndexSource,
    len: u64,
    /// `None` for a file opened by [`IndexFile::unhashed`]: equality then only compares
    /// lengths, so such files are not for telling changes apart.
    digest: Option<[u8; 20]>,
}

#[derive(Debug, Clone)]
enum IndexSource {
    File(Arc<File>),
    /// Bytes given directly (unit tests, tools that already hold them).
    Bytes(Arc<Vec<u8>>),
}

/// How much of an index file is read at a time (~10 000 version-17 records).
const INDEX_WINDOW: usize = 1 << 20;

impl PartialEq for IndexFile {
    fn eq(&self, o: &IndexFile) -> bool {
        self.len == o.len && self.digest == o.digest
    }
}

impl Eq for IndexFile {}

impl IndexFile {
    /// Opens `path` and digests its bytes; `None` when it does not exist.
    pub fn open(path: &Path) -> io::Result<Option<IndexFile>> {
        match File::open(path) {
            Ok(f) => IndexFile::from_file(f).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and digests an index through a descriptor already open, from its start (by
    /// `pread`, so the descriptor's offset is left alone).
    pub fn from_file(file: File) -> io::Result<IndexFile> {
        let (len, digest) = sha1_to_end(&file)?;
        Ok(IndexFile {
            source: IndexSource::File(Arc::new(file)),
            len,
            digest: Some(digest),
        })
    }

    /// An index read through `file` without digesting it first (one read of the whole file
    /// less), for a reader that holds a lock on it and so has nothing to compare: its
    /// length is the file's length now. Pass a duplicate (`try_clone`) of the locked
    /// descriptor, so that what is read is the file locked even if the name now points to
    /// another: the locks are open-file-description locks, so closing the duplicate keeps
    /// them.
    pub fn unhashed(file: File) -> io::Result<IndexFile> {
        Ok(IndexFile {
            len: file.metadata()?.len(),
            source: IndexSource::File(Arc::new(file)),
            digest: None,
        })
    }

    /// An index held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> IndexFile {
        use sha1::{Digest, Sha1};
        IndexFile {
            len: bytes.len() as u64,
            digest: Some(Sha1::digest(&bytes).into()),
            source: IndexSource::Bytes(Arc::new(bytes)),
        }
    }

    /// Length in bytes when read.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-1 of the bytes when read (`None`: opened [`IndexFile::unhashed`]).
    pub fn digest(&self) -> Option<[u8; 20]> {
        self.digest
    }

    /// Bytes `[off, off + len)`, cut at the length the file had when read.
    pub fn read_at(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = off.saturating_add(len as u64).min(self.len);
        let want = usize::try_from(end.saturating_sub(off)).unwrap_or(0);
        let mut buf = vec![0u8; want];
        match &self.source {
            IndexSource::File(f) => {
                let mut got = 0usize;
                while got < want {
                    let at = off.saturating_add(got as u64);
                    match f.read_at(buf.get_mut(got..).unwrap_or_default(), at) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(got);
            }
            IndexSource::Bytes(b) => {
                let from = usize::try_from(off).unwrap_or(usize::MAX);
                buf = b
                    .get(from..from.saturating_add(want))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
            }
        }
        Ok(buf)
    }

    /// A reader of this file through a window of about 1 MB.
    pub fn window(&self) -> IndexWindow<'_> {
        IndexWindow {
            file: self,
            start: 0,
            buf: Vec::new(),
        }
    }
}

/// Length and SHA-1 of a file's bytes up to its end, read now by `pread` from its start
/// (the descriptor's offset, shared with the locked one it duplicates, is left alone).
fn sha1_to_end(file: &File) -> io::Result<(u64, [u8; 20])> {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    let mut buf = vec![0u8; INDEX_WINDOW];
    let mut len = 0u64;
    loop {
        let n = match file.read_at(&mut buf, len) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    Ok((len, h.finalize().into()))
}

/// Sequential reads of an [`IndexFile`] through a window refilled on a miss.
#[derive(Debug)]
pub struct IndexWindow<'a> {
    file: &'a IndexFile,
    start: u64,
    buf: Vec<u8>,
}

impl IndexWindow<'_> {
    /// Bytes `[off, off + len)`: `None` when they reach past the file's length (as read).
    pub fn get(&mut self, off: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = off.checked_add(len as u64).filter(|&e| e <= self.file.len) else {
            return Ok(None);
        };
        let have = off >= self.start && end <= self.start.saturating_add(self.buf.len() as u64);
        if !have {
            self.buf = self.file.read_at(off, len.max(INDEX_WINDOW))?;
            self.start = off;
            if (self.buf.len() as u64) < len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("cyrus.index shrank while it was read (offset {off})"),
                ));
            }
        }
        let from = usize::try_from(off - self.start).unwrap_or(usize::MAX);
        Ok(self.buf.get(from..from.saturating_add(len)))
    }
}

/// An open `cyrus.cache` as it was when opened: its identity and length decide whether it
/// changed (Cyrus only appends to a cache file or replaces it by rename: either changes the
/// length, the inode or the change time; the inode cannot be reused while the file is held
/// open here), and its entries are read through a window ([`CacheFile::entry_ok`]) instead of
/// holding the whole file.
#[derive(Debug, Clone)]
pub struct CacheFile {
    file: Arc<File>,
    len: u64,
    /// dev, ino, mtime (s, ns), ctime (s, ns).
    id: (u64, u64, i64, i64, i64, i64),
    /// The generation number, when the file is long enough to hold one.
    generation: Option<u32>,
    window: Arc<Mutex<Window>>,
}

/// Bytes `[start, start + buf.len())` of a file.
#[derive(Debug, Default)]
struct Window {
    start: u64,
    buf: Vec<u8>,
}

/// How much of a cache file is read at a time.
const CACHE_WINDOW: u64 = 1 << 20;

impl PartialEq for CacheFile {
    fn eq(&self, o: &CacheFile) -> bool {
        self.len == o.len && self.id == o.id
    }
}

impl Eq for CacheFile {}

impl CacheFile {
    /// Opens `path`; `None` when it does not exist.
    pub fn open(path: &Path) -> io::Result<Option<CacheFile>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = file.metadata()?;
        let mut g = [0u8; 4];
        let generation = match file.read_exact_at(&mut g, 0) {
            Ok(()) => Some(u32::from_be_bytes(g)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(e),
        };
        Ok(Some(CacheFile {
            file: Arc::new(file),
            len: m.len(),
            id: (
                m.dev(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ),
            generation,
            window: Arc::default(),
        }))
    }

    /// Length in bytes when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The generation number (`None`: shorter than 4 bytes).
    pub fn generation(&self) -> Option<u32> {
        self.generation
    }

    /// Whether the entry at `offset` is intact and has CRC `crc`: exactly
    /// [`cache::check_record_entry`](crate::format::cache::check_record_entry) on the whole
    /// file, read through a window of [`CACHE_WINDOW`] bytes (see [`CacheFile::check_entry`]).
    /// A read error counts as a damaged entry.
    pub fn entry_ok(&self, offset: u64, crc: u32) -> bool {
        matches!(self.check_entry(offset, crc), Ok(Ok(())))
    }

    /// What [`cache::check_record_entry`](crate::format::cache::check_record_entry) on the
    /// whole file says of the entry at `offset` with CRC `crc` (the same error, facts and
    /// all), read through a window of [`CACHE_WINDOW`] bytes: an entry longer than that gets
    /// a window of its own size, never more than the file holds. The outer error is a failed
    /// read.
    pub fn check_entry(&self, offset: u64, crc: u32) -> io::Result<Result<(), CacheError>> {
        use crate::format::cache::CACHE_HEADER_SIZE;
        if offset == 0 {
            return Ok(Err(CacheError::NoEntry));
        }
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        if offset < CACHE_HEADER_SIZE as u64 || offset >= self.len {
            return Ok(Err(CacheError::OffsetOutOfRange { offset, len }));
        }
        let mut w = self
            .window
            .lock()
            .map_err(|_| io::Error::other("cache window lock poisoned"))?;
        let rest = self.len - offset;
        let mut want = rest.min(4096);
        loop {
            let bytes = w.get(&self.file, offset, want, self.len)?;
            let at_eof = bytes.len() as u64 == rest;
            match entry_extent(bytes, at_eof) {
                // `bytes` holds the whole entry, or the rest of the file when the entry runs
                // past its end: what the whole-file parse sees of it.
                Extent::Entry(_) | Extent::Truncated => {
                    return Ok(CacheEntry::parse_tail(bytes, offset, len)
                        .and_then(|e| e.check_crc(crc))
                        .map(drop));
                }
                Extent::Needs(n) => {
                    let n = (n as u64).max(want.saturating_mul(2)).min(rest);
                    if n <= want {
                        return Err(io::Error::other(format!(
                            "cache entry at offset {offset} does not fit in the file"
                        )));
                    }
                    want = n;
                }
            }
        }
    }

    /// Copies the first `len` bytes to `out` (at its position), by `copy_file_range`.
    fn copy_prefix_to(&self, len: u64, mut out: &File) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut src: &File = &self.file;
        src.seek(SeekFrom::Start(0))?;
        let n = io::copy(&mut src.take(len), &mut out)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cyrus.cache holds {n} of the {len} bytes it had"),
            ));
        }
        Ok(())
    }
}

impl Window {
    /// Up to `n` bytes at `off` (fewer only at the end of a file of `len` bytes).
    fn get(&mut self, f: &File, off: u64, n: u64, len: u64) -> io::Result<&[u8]> {
        let end = off.saturating_add(n).min(len);
        let have = self.start.saturating_add(self.buf.len() as u64);
        if off < self.start || end > have {
            let size = end.max(off.saturating_add(CACHE_WINDOW).min(len)) - off;
            let size = usize::try_from(size).map_err(|_| io::Error::other("entry too long"))?;
            self.buf.clear();
            self.buf.resize(size, 0);
            f.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let a = usize::try_from(off - self.start).unwrap_or(usize::MAX);
        let b = usize::try_from(end - self.start).unwrap_or(usize::MAX);
        self.buf
            .get(a..b)
            .ok_or_else(|| io::Error::other("window out of range"))
    }
}

/// Where a cache entry starting at `bytes[0]` ends.
#[derive(Debug, PartialEq, Eq)]
enum Extent {
    /// It ends at this index (its last padding may be cut by the end of the file).
    Entry(usize),
    /// More bytes are needed than `bytes` holds: at least this many.
    Needs(usize),
    /// It runs past the end of the file.
    Truncated,
}

/// The extent of the entry at the start of `bytes` (ten items: a big-endian u32 length, the
/// data, NUL padding to 4 bytes), as `CacheEntry::parse` frames it; `at_eof`: `bytes` reaches
/// the end of the file.
fn entry_extent(bytes: &[u8], at_eof: bool) -> Extent {
    use crate::format::cache::NUM_CACHE_FIELDS;
    let mut p: usize = 0;
    let short = |need: usize| {
        if at_eof {
            Extent::Truncated
        } else {
            Extent::Needs(need)
        }
    };
    for _ in 0..NUM_CACHE_FIELDS {
        let Some(w) = p.checked_add(4).and_then(|e| bytes.get(p..e)) else {
            return short(p.saturating_add(4));
        };
        let len = u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize;
        let data_end = p.saturating_add(4).saturating_add(len);
        if data_end > bytes.len() {
            return short(data_end);
        }
        p = data_end.saturating_add(3) & !3;
    }
    if p > bytes.len() && !at_eof {
        return Extent::Needs(p);
    }
    Extent::Entry(p.min(bytes.len()))
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

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from offset `off` (which must lie within what was appended).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::other("read outside the spill"))?;
        match &self.store {
            SpillStore::File(f) => f.read_exact_at(buf, off),
            SpillStore::Memory(m) => {
                let v = m
                    .lock()
                    .map_err(|_| io::Error::other("spill lock poisoned"))?;
                let r = usize::try_from(off).ok().zip(usize::try_from(end).ok());
                let src = r
                    .and_then(|(a, b)| v.get(a..b))
                    .ok_or_else(|| io::Error::other("read outside the spill"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            SpillStore::Discard => Err(io::Error::other("a discarding spill cannot be read")),
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
    pub prefix: Prefix,
    /// `(offset, length)` ranges of the spill; adjacent ranges are merged.
    ranges: Vec<(u64, u64)>,
    len: u64,
    spill: Arc<Spill>,
}

/// The start of a [`NewCache`].
#[derive(Debug, Clone)]
pub enum Prefix {
    Bytes(Vec<u8>),
    /// The first `len` bytes of an old cache file (copied from it at commit, under the
    /// lock that keeps it as it was).
    Old(CacheFile, u64),
}

impl Prefix {
    pub fn len(&self) -> u64 {
        match self {
            Prefix::Bytes(b) => b.len() as u64,
            Prefix::Old(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Prefix {
    fn eq(&self, o: &Prefix) -> bool {
        match (self, o) {
            (Prefix::Bytes(a), Prefix::Bytes(b)) => a == b,
            (Prefix::Old(a, n), Prefix::Old(b, m)) => Arc::ptr_eq(&a.file, &b.file) && n == m,
            _ => false,
        }
    }
}

impl PartialEq for NewCache {
    fn eq(&self, o: &NewCache) -> bool {
        self.prefix == o.prefix && self.ranges == o.ranges && Arc::ptr_eq(&self.spill, &o.spill)
    }
}

impl Eq for NewCache {}

impl NewCache {
    pub fn new(prefix: Prefix, spill: Arc<Spill>) -> NewCache {
        NewCache {
            len: prefix.len(),
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
        match &self.prefix {
            Prefix::Bytes(b) => out.write_all(b)?,
            Prefix::Old(c, n) => c.copy_prefix_to(*n, out)?,
        }
        for &(off, len) in &self.ranges {
            self.spill.copy_to(off, len, out)?;
        }
        Ok(())
    }
}

/// A new `cyrus.index`: its header, then `len` bytes of records held in a [`Spill`] from
/// offset 0 (a big mailbox's records are not held in memory).
#[derive(Debug, Clone)]
pub struct NewIndex {
    pub header: Vec<u8>,
    records: Option<(Arc<Spill>, u64)>,
}

impl PartialEq for NewIndex {
    fn eq(&self, o: &NewIndex) -> bool {
        self.header == o.header
            && match (&self.records, &o.records) {
                (None, None) => true,
                (Some((a, n)), Some((b, m))) => Arc::ptr_eq(a, b) && n == m,
                _ => false,
            }
    }
}

impl Eq for NewIndex {}

impl NewIndex {
    /// A file held whole in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> NewIndex {
        NewIndex {
            header: bytes,
            records: None,
        }
    }

    /// `header`, then the first `len` bytes of `records`.
    pub fn streamed(header: Vec<u8>, records: Arc<Spill>, len: u64) -> NewIndex {
        NewIndex {
            header,
            records: Some((records, len)),
        }
    }

    /// Writes the whole file to `out`, from its position.
    pub fn write_to(&self, mut out: &File) -> io::Result<()> {
        out.write_all(&self.header)?;
        if let Some((spill, len)) = &self.records {
            spill.copy_to(0, *len, out)?;
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
    pub index: Option<NewIndex>,
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
        replace_streamed(&files.cache, |f| c.write_to(f))?;
    }
    write(&files.header, &changes.header)?;
    if let Some(ix) = &changes.index {
        if let Some(dir) = files.index.parent() {
            std::fs::create_dir_all(dir).map_err(cerr(dir, "cannot create directory"))?;
        }
        replace_streamed(&files.index, |f| ix.write_to(f))?;
    }
    for p in &changes.removals {
        match std::fs::remove_file(p) {
            Ok(()) => crash_point("remove"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(cerr(p, "cannot remove")(e)),
        }
    }
    Ok(())
}

/// [`atomic::replace`] for a file streamed by `write` (a [`NewCache`], a [`NewIndex`]): the
/// same steps (`NAME.NEW` with the old file's owner and mode, write, fsync, rename, fsync the
/// directory) and the same crash points, without the whole file in memory.
fn replace_streamed(
    path: &Path,
    write: impl FnOnce(&File) -> io::Result<()>,
) -> Result<(), CommitError> {
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
        write(&f).map_err(cerr(&tmp, "cannot write"))?;
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

    /// More entries than one batch of [`list_dir`]: every message, odd file and size found.
    #[test]
    fn listing_spans_several_batches() {
        let d = tempfile::tempdir().unwrap();
        let n = LIST_BATCH as u32 * 2 + 17;
        for uid in 1..=n {
            std::fs::write(
                d.path().join(format!("{uid}.")),
                vec![b'x'; (uid % 7) as usize],
            )
            .unwrap();
        }
        for i in 0..5 {
            std::fs::write(d.path().join(format!("odd{i}")), b"").unwrap();
        }
        std::fs::write(d.path().join("cyrus.cache"), b"").unwrap();
        let l = list_dir(d.path()).unwrap();
        assert_eq!(l.messages.len(), n as usize);
        for (f, uid) in l.messages.values().zip(1..) {
            assert_eq!((f.uid, f.size), (uid, u64::from(uid % 7)));
            assert_eq!(l.messages.position(uid), Some(uid as usize - 1));
        }
        assert_eq!(l.odd.len(), 5);
    }

    #[test]
    fn listing_separates_messages_odd_files_and_ignored_entries() {
        let d = tempfile::tempdir().unwrap();
        for n in ["1.", "22.", "cyrus.index", ".hidden", "x.", "1", "junk"] {
            std::fs::write(d.path().join(n), b"a").unwrap();
        }
        std::fs::create_dir(d.path().join("Sub")).unwrap();
        let l = list_dir(d.path()).unwrap();
        assert_eq!(l.messages.keys().copied().collect::<Vec<_>>(), vec![1, 22]);
        let names: Vec<String> = l.messages.values().map(MessageFile::name).collect();
        assert_eq!(names, vec!["1.", "22."]);
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

    #[test]
    fn messages_rebuild_padded_names_and_keep_the_later_of_two_names() {
        let f = |uid, name_len, ino| MessageFile {
            uid,
            name_len,
            size: 1,
            mtime: 0,
            dev: 0,
            ino,
        };
        let m: Messages = vec![f(7, 4, 1), f(0, 2, 2), f(7, 2, 3), f(3, 2, 4)]
            .into_iter()
            .collect();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![0, 3, 7]);
        assert_eq!(m.get(&7).map(|f| f.ino), Some(3));
        assert_eq!(m.get(&0).map(MessageFile::name).as_deref(), Some("0."));
        assert!(m.get(&5).is_none());
        assert_eq!(f(7, 4, 1).name(), "007.");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("0042."), b"a").unwrap();
        let l = list_dir(d.path()).unwrap();
        let got = l.messages.get(&42).unwrap();
        assert_eq!(got.name(), "0042.");
        assert!(d.path().join(got.name()).is_file());
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
            let mut nc = NewCache::new(Prefix::Bytes(b"old!".to_vec()), spill.clone());
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
    fn cache_file_entry_check_agrees_with_the_whole_file_check() {
        use crate::format::cache::{check_record_entry, write_entry};
        let d = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 3 * CACHE_WINDOW as usize];
        let mut file = 7u32.to_be_bytes().to_vec();
        let mut entries = Vec::new();
        for (i, item) in [&b"a"[..], b"hello", &big, b"", b"tail!"]
            .iter()
            .enumerate()
        {
            let mut items: [&[u8]; 10] = [b"abc"; 10];
            items[i % 10] = item;
            let e = write_entry(&items).unwrap();
            entries.push((file.len() as u64, crate::format::crc::crc32(&e)));
            file.extend_from_slice(&e);
        }
        // The last entry without its final padding, then a truncated one.
        file.truncate(file.len() - 3);
        let cut = file.len() as u64;
        file.extend_from_slice(&[0, 0, 0, 9, b'z']);
        let path = d.path().join("cyrus.cache");
        std::fs::write(&path, &file).unwrap();
        let c = CacheFile::open(&path).unwrap().unwrap();
        assert_eq!(c.generation(), Some(7));
        let mut offsets: Vec<u64> = (0..file.len() as u64 + 2).step_by(997).collect();
        offsets.extend((0..12).chain(entries.iter().flat_map(|e| e.0 - 4..e.0 + 9)));
        offsets.push(cut);
        // The last entry lost its padding and is followed by other bytes: not intact.
        for &(off, crc) in entries.iter().take(entries.len() - 1) {
            assert!(c.entry_ok(off, crc), "entry at {off}");
        }
        for off in offsets {
            for crc in entries.iter().map(|e| e.1).chain([0, 1]) {
                let whole = check_record_entry(&file, off, crc).map(drop);
                assert_eq!(
                    c.entry_ok(off, crc),
                    whole.is_ok(),
                    "offset {off} crc {crc:x}"
                );
                // The same verdict with the same facts, for the messages built from it.
                assert_eq!(c.check_entry(off, crc).unwrap(), whole, "offset {off}");
            }
        }
        let short = d.path().join("short");
        std::fs::write(&short, b"ab").unwrap();
        assert_eq!(CacheFile::open(&short).unwrap().unwrap().generation(), None);
        assert!(CacheFile::open(&d.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn dry_run_spill_counts_but_cannot_be_committed() {
        let spill = Arc::new(Spill::discard());
        assert_eq!(spill.append(b"xyz").unwrap(), 0);
        assert_eq!(spill.append(b"w").unwrap(), 3);
        let mut nc = NewCache::new(Prefix::Bytes(Vec::new()), spill);
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
        let old = CacheFile::open(&files.cache).unwrap().unwrap();
        let mut nc = NewCache::new(Prefix::Old(old, 8), spill);
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
            index: Some(NewIndex::from_bytes(b"idx".to_vec())),
            ..Changes::default()
        };
        commit(&files, &ch).unwrap();
        assert!(!files.message(3).exists());
        assert_eq!(std::fs::read(files.message(9)).unwrap(), b"msg");
        assert_eq!(std::fs::read(&files.index).unwrap(), b"idx");
    }
}
