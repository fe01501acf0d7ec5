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
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// Lists a data directory as Cyrus's reconstruct walks it; a missing directory is empty.
pub fn list_dir(dir: &Path) -> io::Result<DirListing> {
    let mut out = DirListing::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let b = name.as_bytes();
        if b.starts_with(b".") || b.starts_with(b"cyrus.") {
            continue;
        }
        let path = e.path();
        // stat, not lstat, as Cyrus does; an entry that vanished meanwhile is ignored.
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            continue; // child mailboxes (legacy layout)
        }
        match paths::parse_message_file_name(b) {
            Some(uid) if md.is_file() => {
                out.messages.insert(
                    uid,
                    MessageFile {
                        uid,
                        path,
                        size: md.size(),
                        mtime: md.mtime(),
                        dev: md.dev(),
                        ino: md.ino(),
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

/// A set of new metadata files and file operations for one mailbox, applied by [`commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Message files to rename (new UID), each done as link new name, then unlink old.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// The whole new `cyrus.cache`; it must start with the old file's bytes so the old
    /// index's offsets stay valid until the new index is in place.
    pub cache: Option<Vec<u8>>,
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
    write(&files.cache, &changes.cache)?;
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

    #[test]
    fn commit_renames_by_link_then_unlink_and_is_rerunnable() {
        let d = tempfile::tempdir().unwrap();
        let files = MailboxFiles {
            data_dir: d.path().to_path_buf(),
            header: d.path().join("cyrus.header"),
            index: d.path().join("cyrus.index"),
            cache: d.path().join("cyrus.cache"),
            annotations: d.path().join("cyrus.annotations"),
        };
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
