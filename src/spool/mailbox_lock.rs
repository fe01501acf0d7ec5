//! Locking one mailbox the way Cyrus 3.6 does (`mailbox_open_advanced`,
//! `mailbox_lock_index_internal`, `user_namespacelock_full`): the user namespace lock, then
//! the mailbox name lock, then an fcntl lock on `cyrus.index`, released in reverse order.
//!
//! | open as | `*U*user` | name lock | `cyrus.index` |
//! |---|---|---|---|
//! | [`OpenMode::Read`] | shared (user mailboxes only) | shared | shared |
//! | [`OpenMode::Write`] | exclusive (user mailboxes only) | shared | exclusive |
//! | [`OpenMode::Exclusive`] (repack, replace files) | exclusive (global `*U*` for shared mailboxes) | exclusive | exclusive |

use std::path::Path;
use std::time::Duration;

use crate::spool::lock::{self, LockError, LockMode, LockStack};
use crate::spool::names::MboxName;
use crate::spool::paths::{Layout, MailboxDir, PathError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    Write,
    /// `mailbox_open_exclusive`: needed to replace `cyrus.index` / `cyrus.cache`.
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum MailboxLockError {
    #[error(transparent)]
    Path(#[from] PathError),
    // Not `transparent`: the lock error must be a cause of its own, so that `main` finds a
    // timeout in the chain and exits 75.
    #[error("{0}")]
    Lock(#[from] LockError),
}

/// Take the locks for `name` in Cyrus's order; the stack releases them in reverse.
pub fn lock_mailbox(
    layout: &Layout,
    name: &MboxName,
    dir: MailboxDir<'_>,
    index_path: &Path,
    mode: OpenMode,
    timeout: Duration,
) -> Result<LockStack, MailboxLockError> {
    let mut stack = LockStack::new();
    let (ns_mode, name_mode, index_mode) = match mode {
        OpenMode::Read => (LockMode::Shared, LockMode::Shared, LockMode::Shared),
        OpenMode::Write => (LockMode::Exclusive, LockMode::Shared, LockMode::Exclusive),
        OpenMode::Exclusive => (
            LockMode::Exclusive,
            LockMode::Exclusive,
            LockMode::Exclusive,
        ),
    };
    let userid = name.userid();
    if userid.is_some() || mode == OpenMode::Exclusive {
        let ns = layout.user_namespace_lock_file(userid.as_deref())?;
        stack.push(lock::lock_path(&ns, ns_mode, timeout)?);
    }
    let name_lock = layout.mailbox_lock_file(dir)?;
    stack.push(lock::lock_path(&name_lock, name_mode, timeout)?);
    stack.push(lock::lock_existing(index_path, index_mode, timeout)?);
    Ok(stack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::config::Config;
    use crate::spool::names::NameConfig;
    use crate::spool::paths::MetaFile;

    fn layout(dir: &Path) -> Layout {
        let conf = format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\nhashimapspool: yes\n",
            dir.display()
        );
        Layout::from_config(&Config::parse(conf.as_bytes(), dir).unwrap()).unwrap()
    }

    #[test]
    fn takes_namespace_name_and_index_locks_at_cyrus_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let lay = layout(tmp.path());
        let nc = NameConfig::default();
        let name = MboxName::from_internal(b"user.alice.Sent", &nc).unwrap();
        let dir = MailboxDir::Legacy(&name);
        let index = lay
            .meta_file("default", dir, MetaFile::Index, false)
            .unwrap();
        std::fs::create_dir_all(index.parent().unwrap()).unwrap();
        std::fs::write(&index, b"x").unwrap();
        let stack = lock_mailbox(
            &lay,
            &name,
            dir,
            &index,
            OpenMode::Write,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(stack.len(), 3);
        // The paths Cyrus 3.6 uses (mailbox-format §7): q/*U*alice.lock, a/user/alice/Sent.lock.
        let lockdir = tmp.path().join("conf/lock");
        assert!(lockdir.join("q/*U*alice.lock").exists());
        assert!(lockdir.join("a/user/alice/Sent.lock").exists());
        drop(stack);
        // A shared mailbox opened for reading takes no namespace lock.
        let shared = MboxName::from_internal(b"shared.folder", &nc).unwrap();
        let sdir = MailboxDir::Legacy(&shared);
        let sindex = lay
            .meta_file("default", sdir, MetaFile::Index, false)
            .unwrap();
        std::fs::create_dir_all(sindex.parent().unwrap()).unwrap();
        std::fs::write(&sindex, b"x").unwrap();
        let s = lock_mailbox(
            &lay,
            &shared,
            sdir,
            &sindex,
            OpenMode::Read,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(s.len(), 2);
    }
}
