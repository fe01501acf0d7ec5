//! Single-instance deduplication: the pure plan and the one filesystem step that acts on it.
//!
//! Cyrus's `singleinstancestore` keeps one file per partition for a message delivered to
//! several mailboxes and hard-links it into each (imap/append.c `append_fromstage`, which
//! links the staged file with `mailbox_copyfile`). A restore or an `rsync` without `-H`
//! breaks the links. The plan regroups message files by what their index records already say
//! (partition, GUID, size) and by file system (`st_dev`), and chooses, per group, one inode
//! to keep and the paths to replace with links to it. Building the plan does no I/O; the
//! command confirms content byte for byte and re-checks each file under its mailbox's lock
//! before calling [`replace_with_link`].
//!
//! Must not: link across file systems or partitions, or replace a path by any means that
//! leaves a moment where the path does not exist (`link` to a temporary name, then `rename`
//! over the duplicate).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::spool::atomic::crash_point;

/// Suffix of the temporary link made beside a duplicate before it is renamed over it. The
/// name starts with `.`, which Cyrus's directory scans (reconstruct's `find_files`) skip.
pub const TEMP_SUFFIX: &str = ".cyrkit-link";

/// What identifies copies of one message: same partition, same file system, same GUID and
/// size in their index records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub partition: String,
    pub dev: u64,
    pub guid: [u8; 20],
    pub size: u64,
}

/// Owner, group and permission bits of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Owner {
    pub fn of(md: &fs::Metadata) -> Owner {
        Owner {
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
        }
    }
}

/// One message file as the scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFile {
    pub path: PathBuf,
    /// Position of its mailbox in the mailboxes database (the order Cyrus lists them).
    pub mailbox: usize,
    pub uid: u32,
    pub ino: u64,
    pub nlink: u64,
    pub owner: Owner,
}

/// The paths of one group that share an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    /// Links the file system counts, ours and any others (a backup's, say).
    pub nlink: u64,
    pub owner: Owner,
    pub files: Vec<MessageFile>,
}

impl Inode {
    /// Whether replacing all of `files` frees the inode (no link outside the spool's
    /// records keeps it alive).
    pub fn freed_by_replacing_all(&self) -> bool {
        u64::try_from(self.files.len()).unwrap_or(u64::MAX) >= self.nlink
    }

    fn first_place(&self) -> (usize, u32) {
        self.files
            .iter()
            .map(|f| (f.mailbox, f.uid))
            .min()
            .unwrap_or((usize::MAX, u32::MAX))
    }
}

/// Copies of one message that are not all one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub key: GroupKey,
    /// Distinct inodes, in order of preference: the first is kept, the others are replaced
    /// by links to it. Always at least two.
    pub inodes: Vec<Inode>,
}

impl Group {
    /// The inode to keep.
    pub fn kept(&self) -> Option<&Inode> {
        self.inodes.first()
    }

    /// The inodes whose paths become links to the kept one.
    pub fn replaced(&self) -> &[Inode] {
        self.inodes.get(1..).unwrap_or_default()
    }

    /// Paths that would be replaced.
    pub fn files_to_link(&self) -> u64 {
        self.replaced().iter().map(|i| i.files.len() as u64).sum()
    }

    /// Inodes that replacing every path would free.
    pub fn inodes_freed(&self) -> u64 {
        self.replaced()
            .iter()
            .filter(|i| i.freed_by_replacing_all())
            .count() as u64
    }

    /// Bytes that replacing every path would free.
    pub fn bytes_saved(&self) -> u64 {
        self.inodes_freed().saturating_mul(self.key.size)
    }

    /// Stop considering the inode at `index` (its content did not confirm); returns it.
    /// The group is worth acting on only while it keeps two inodes.
    pub fn drop_inode(&mut self, index: usize) -> Option<Inode> {
        (index < self.inodes.len()).then(|| self.inodes.remove(index))
    }

    pub fn actionable(&self) -> bool {
        self.inodes.len() >= 2
    }
}

/// Group `files` by key and inode and keep the groups with more than one inode. Which inode
/// is kept: the one most of the group's paths already share (so a partly linked group is
/// finished by linking the fewest paths), then the one with the most links overall, then the
/// one appearing first in mailbox order. Groups come out in key order; deterministic.
pub fn plan(files: impl IntoIterator<Item = (GroupKey, MessageFile)>) -> Vec<Group> {
    let mut by_key: HashMap<GroupKey, BTreeMap<u64, Inode>> = HashMap::new();
    for (key, f) in files {
        let inodes = by_key.entry(key).or_default();
        let inode = inodes.entry(f.ino).or_insert_with(|| Inode {
            ino: f.ino,
            nlink: f.nlink,
            owner: f.owner,
            files: Vec::new(),
        });
        inode.files.push(f);
    }
    let mut groups: Vec<Group> = by_key
        .into_iter()
        .filter(|(_, inodes)| inodes.len() >= 2)
        .map(|(key, inodes)| {
            let mut inodes: Vec<Inode> = inodes.into_values().collect();
            for i in &mut inodes {
                i.files.sort_by_key(|f| (f.mailbox, f.uid));
            }
            inodes.sort_by_key(|i| (Reverse(i.files.len()), Reverse(i.nlink), i.first_place()));
            Group { key, inodes }
        })
        .collect();
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    groups
}

/// The temporary name beside `dup` for message `uid`: `.<uid>.cyrkit-link`.
pub fn temp_link_path(dup: &Path, uid: u32) -> PathBuf {
    let dir = dup.parent().unwrap_or(Path::new("."));
    dir.join(format!(".{uid}{TEMP_SUFFIX}"))
}

#[derive(Debug, thiserror::Error)]
pub enum RelinkError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kept path no longer names the inode that was confirmed (expunged and cleaned up
    /// meanwhile): nothing was changed.
    #[error("{path}: no longer the file that was compared (inode {expected}, now {got})")]
    KeptChanged {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> RelinkError + 'a {
    move |source| RelinkError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Make `dup` a hard link of `kept` without a moment where `dup` is missing: link `kept` to
/// `tmp` (a stale `tmp` from an interrupted run is replaced), check that the new link is
/// the inode `kept_ino` that was compared, rename it over `dup`. The caller holds `dup`'s
/// mailbox lock and fsyncs the directory. A crash leaves `dup` either as it was or as the
/// link, and at most `tmp`, a second name of the kept file that Cyrus ignores.
pub fn replace_with_link(
    kept: &Path,
    kept_ino: u64,
    dup: &Path,
    tmp: &Path,
) -> Result<(), RelinkError> {
    if let Err(e) = fs::hard_link(kept, tmp) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(io_err(tmp, "cannot link the kept file")(e));
        }
        // Left by an interrupted run: replace it.
        fs::remove_file(tmp).map_err(io_err(tmp, "cannot remove stale temporary link"))?;
        fs::hard_link(kept, tmp).map_err(io_err(tmp, "cannot link the kept file"))?;
    }
    crash_point("dedupe-link");
    let got = fs::symlink_metadata(tmp)
        .map_err(io_err(tmp, "cannot stat the new link"))?
        .ino();
    if got != kept_ino {
        let _ = fs::remove_file(tmp);
        return Err(RelinkError::KeptChanged {
            path: kept.to_path_buf(),
            expected: kept_ino,
            got,
        });
    }
    fs::rename(tmp, dup).map_err(io_err(dup, "cannot rename the link into place"))?;
    crash_point("dedupe-rename");
    Ok(())
}

/// SHA-1 of everything a reader yields (a message file's GUID, `message_guid_generate`).
pub fn sha1_reader(mut r: impl Read) -> io::Result<[u8; 20]> {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut r, &mut buf)?;
        h.update(buf.get(..n).unwrap_or_default());
        if n < buf.len() {
            return Ok(h.finalize().into());
        }
    }
}

/// Whether two readers yield the same bytes (streamed; neither is held in memory whole).
pub fn same_bytes(mut a: impl Read, mut b: impl Read) -> io::Result<bool> {
    const CHUNK: usize = 64 * 1024;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        if ba.get(..na) != bb.get(..nb) {
            return Ok(false);
        }
        if na < CHUNK {
            return Ok(true);
        }
    }
}

/// Fill `buf` as far as the reader allows; fewer bytes only at the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner = Owner {
        uid: 1,
        gid: 2,
        mode: 0o600,
    };

    fn key(guid: u8) -> GroupKey {
        GroupKey {
            partition: "default".into(),
            dev: 1,
            guid: [guid; 20],
            size: 100,
        }
    }

    fn file(mailbox: usize, uid: u32, ino: u64, nlink: u64) -> MessageFile {
        MessageFile {
            path: PathBuf::from(format!("/s/{mailbox}/{uid}.")),
            mailbox,
            uid,
            ino,
            nlink,
            owner: OWNER,
        }
    }

    #[test]
    fn unique_and_already_linked_copies_make_no_group() {
        let g = plan([
            (key(1), file(0, 1, 10, 1)),
            (key(2), file(0, 2, 11, 2)),
            (key(2), file(1, 1, 11, 2)),
        ]);
        assert!(g.is_empty(), "{g:?}");
    }

    #[test]
    fn keeps_the_inode_most_paths_share_and_finishes_a_partly_linked_group() {
        // Mailbox 0 holds a lone copy; mailboxes 1 and 2 still share one inode.
        let g = plan([
            (key(1), file(0, 5, 20, 1)),
            (key(1), file(1, 3, 21, 2)),
            (key(1), file(2, 7, 21, 2)),
        ]);
        assert_eq!(g.len(), 1);
        let g = &g[0];
        assert_eq!(g.kept().unwrap().ino, 21);
        assert_eq!(g.files_to_link(), 1);
        assert_eq!(g.replaced()[0].files[0].uid, 5);
        assert_eq!(g.inodes_freed(), 1);
        assert_eq!(g.bytes_saved(), 100);
    }

    #[test]
    fn ties_go_to_mailbox_order() {
        let g = plan([
            (key(1), file(3, 1, 30, 1)),
            (key(1), file(1, 9, 31, 1)),
            (key(1), file(2, 1, 32, 1)),
        ]);
        let kept = g[0].kept().unwrap();
        assert_eq!((kept.ino, kept.files[0].mailbox), (31, 1));
        let order: Vec<u64> = g[0].replaced().iter().map(|i| i.ino).collect();
        assert_eq!(order, vec![32, 30]);
        assert_eq!(g[0].inodes_freed(), 2);
    }

    #[test]
    fn an_inode_with_links_outside_the_spool_is_not_freed() {
        // ino 41 has three links, only one of them a message file we know.
        let g = plan([
            (key(1), file(0, 1, 40, 1)),
            (key(1), file(1, 1, 40, 1)),
            (key(1), file(2, 1, 41, 3)),
        ]);
        assert_eq!(g[0].kept().unwrap().ino, 40);
        assert_eq!(g[0].files_to_link(), 1);
        assert_eq!(g[0].inodes_freed(), 0);
        assert_eq!(g[0].bytes_saved(), 0);
    }

    #[test]
    fn different_file_systems_sizes_or_partitions_never_group() {
        let mut other_dev = key(1);
        other_dev.dev = 2;
        let mut other_size = key(1);
        other_size.size = 99;
        let mut other_part = key(1);
        other_part.partition = "p2".into();
        let g = plan([
            (key(1), file(0, 1, 50, 1)),
            (other_dev, file(1, 1, 51, 1)),
            (other_size, file(2, 1, 52, 1)),
            (other_part, file(3, 1, 53, 1)),
        ]);
        assert!(g.is_empty(), "{g:?}");
    }

    #[test]
    fn dropping_the_kept_inode_promotes_the_next() {
        let mut g = plan([
            (key(1), file(0, 1, 60, 1)),
            (key(1), file(1, 1, 61, 1)),
            (key(1), file(2, 1, 62, 1)),
        ])
        .remove(0);
        assert_eq!(g.drop_inode(0).unwrap().ino, 60);
        assert!(g.actionable());
        assert_eq!(g.kept().unwrap().ino, 61);
        g.drop_inode(1);
        assert!(!g.actionable());
        assert!(g.drop_inode(5).is_none());
    }

    #[test]
    fn same_bytes_streams_and_notices_any_difference() {
        let a = vec![7u8; 200_000];
        let mut b = a.clone();
        assert!(same_bytes(&a[..], &b[..]).unwrap());
        b[150_000] = 8;
        assert!(!same_bytes(&a[..], &b[..]).unwrap());
        assert!(!same_bytes(&a[..], &a[..199_999]).unwrap());
        assert!(same_bytes(&b""[..], &b""[..]).unwrap());
    }

    #[test]
    fn replace_with_link_links_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("1.");
        let dup = dir.path().join("2.");
        fs::write(&kept, b"same").unwrap();
        fs::write(&dup, b"same").unwrap();
        let tmp = temp_link_path(&dup, 2);
        assert_eq!(tmp, dir.path().join(".2.cyrkit-link"));
        // A stale temporary from an interrupted run is replaced.
        fs::write(&tmp, b"stale").unwrap();
        let ino = fs::metadata(&kept).unwrap().ino();
        replace_with_link(&kept, ino, &dup, &tmp).unwrap();
        assert_eq!(fs::metadata(&dup).unwrap().ino(), ino);
        assert_eq!(fs::metadata(&kept).unwrap().nlink(), 2);
        assert!(!tmp.exists());
    }

    #[test]
    fn replace_with_link_refuses_a_kept_path_that_changed_inode() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("1.");
        let dup = dir.path().join("2.");
        fs::write(&kept, b"same").unwrap();
        fs::write(&dup, b"same").unwrap();
        let dup_ino = fs::metadata(&dup).unwrap().ino();
        let tmp = temp_link_path(&dup, 2);
        let err = replace_with_link(&kept, 999_999_999, &dup, &tmp).unwrap_err();
        assert!(matches!(err, RelinkError::KeptChanged { .. }), "{err}");
        assert_eq!(fs::metadata(&dup).unwrap().ino(), dup_ino);
        assert!(!tmp.exists());
    }
}
