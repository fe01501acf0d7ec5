//! Atomic replacement of metadata files, the way Cyrus does it: write `NAME.NEW` in the same
//! directory, fsync it, rename it over `NAME`, fsync the directory. A crash at any instant
//! leaves either the old file or the new one, and the only stray file possible is a `.NEW`
//! that Cyrus itself knows and ignores.
//!
//! Ownership: the new file takes the owner, group and mode of the file it replaces, or, for a
//! new file, the owner and group of its directory and the directory's mode without execute
//! bits. When the process runs as root it `fchown`s, so root never leaves root-owned files in
//! a spool.
//!
//! Crash testing: every durable step passes through [`crash_point`], which aborts the process
//! at the N-th step when `CYRKIT_CRASH_AT=N` is set (used by the reliability tests).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

static STEPS: AtomicU64 = AtomicU64::new(0);

/// Count one durable step (write, fsync, rename); abort if `CYRKIT_CRASH_AT` names it.
pub fn crash_point(_label: &str) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Ok(v) = std::env::var("CYRKIT_CRASH_AT") {
        if v.trim().parse::<u64>().ok() == Some(n) {
            std::process::abort();
        }
    }
}

/// Owner, group and permission bits to give a file we create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Ownership {
    /// The ownership a file at `path` should have: that of the existing file, else derived
    /// from its directory.
    pub fn for_path(path: &Path) -> io::Result<Ownership> {
        match fs::metadata(path) {
            Ok(m) => Ok(Ownership {
                uid: m.uid(),
                gid: m.gid(),
                mode: m.mode() & 0o7777,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let m = fs::metadata(dir)?;
                Ok(Ownership {
                    uid: m.uid(),
                    gid: m.gid(),
                    mode: m.mode() & 0o666,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// The temporary name Cyrus uses for a file being replaced.
pub fn new_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".NEW");
    PathBuf::from(s)
}

fn apply_ownership(file: &File, own: Ownership) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(own.mode))?;
    if nix::unistd::geteuid().is_root() {
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(file),
            Some(nix::unistd::Uid::from_raw(own.uid)),
            Some(nix::unistd::Gid::from_raw(own.gid)),
        )
        .map_err(io::Error::from)?;
    }
    Ok(())
}

/// fsync a directory so a rename or a new entry in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `contents` atomically (see the module docs).
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), AtomicWriteError> {
    let own = Ownership::for_path(path).map_err(err(path, "cannot stat"))?;
    replace_with_ownership(path, contents, own)
}

/// As [`replace`], with explicit ownership.
pub fn replace_with_ownership(
    path: &Path,
    contents: &[u8],
    own: Ownership,
) -> Result<(), AtomicWriteError> {
    let tmp = new_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(own.mode)
            .open(&tmp)
            .map_err(err(&tmp, "cannot create"))?;
        apply_ownership(&f, own).map_err(err(&tmp, "cannot set owner/mode"))?;
        f.write_all(contents).map_err(err(&tmp, "cannot write"))?;
        crash_point("write");
        f.sync_all().map_err(err(&tmp, "cannot fsync"))?;
        crash_point("fsync");
    }
    fs::rename(&tmp, path).map_err(err(path, "cannot rename into place"))?;
    crash_point("rename");
    fsync_dir(dir).map_err(err(dir, "cannot fsync directory"))?;
    crash_point("fsync-dir");
    Ok(())
}

/// When running as root, act as the owner of the spool: switch the effective group and user
/// to those of `reference` (normally the configuration directory), as Cyrus's tools run as
/// the `cyrus` user. Returns the ids switched to, or None when not root.
pub fn become_owner_of(reference: &Path) -> io::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let m = fs::metadata(reference)?;
    if m.uid() == 0 {
        return Ok(None);
    }
    nix::unistd::setegid(nix::unistd::Gid::from_raw(m.gid())).map_err(io::Error::from)?;
    nix::unistd::seteuid(nix::unistd::Uid::from_raw(m.uid())).map_err(io::Error::from)?;
    Ok(Some((m.uid(), m.gid())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cyrus.index");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        replace(&p, b"new contents").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new contents");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert!(!new_path(&p).exists());
    }

    #[test]
    fn new_file_takes_directory_mode_without_exec() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let p = dir.path().join("cyrus.header");
        replace(&p, b"x").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    }

    #[test]
    fn new_path_appends_suffix() {
        assert_eq!(
            new_path(Path::new("/a/cyrus.index")),
            PathBuf::from("/a/cyrus.index.NEW")
        );
    }

    /// Run as root (as CI does), a process that becomes the spool's owner creates files
    /// owned by that owner, never by root. The switch is per process, so it runs in a child.
    #[test]
    fn root_acts_as_the_owner_of_the_spool() {
        if let Ok(dir) = std::env::var("CYRKIT_OWNER_CHILD") {
            let dir = PathBuf::from(dir);
            let switched = become_owner_of(&dir).unwrap();
            assert_eq!(switched, Some((65534, 65534)));
            replace(&dir.join("cyrus.header"), b"x").unwrap();
            return;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::atomic::tests::root_acts_as_the_owner_of_the_spool",
            ])
            .env("CYRKIT_OWNER_CHILD", &dir)
            .status()
            .unwrap();
        assert!(status.success());
        let m = fs::metadata(dir.join("cyrus.header")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o640));
    }

    #[test]
    fn crash_at_each_step_leaves_old_or_new() {
        // Run ourselves as a child that replaces a file and aborts at step N.
        if let Ok(target) = std::env::var("CYRKIT_ATOMIC_CHILD") {
            replace(Path::new(&target), b"NEW CONTENT").unwrap();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        for n in 1..=5 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            fs::write(&p, b"OLD").unwrap();
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "spool::atomic::tests::crash_at_each_step_leaves_old_or_new",
                    "--nocapture",
                ])
                .env("CYRKIT_ATOMIC_CHILD", &p)
                .env("CYRKIT_CRASH_AT", n.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            let got = fs::read(&p).unwrap();
            assert!(got == b"OLD" || got == b"NEW CONTENT", "step {n}: {got:?}");
            if n <= 2 {
                assert!(!status.success(), "step {n} should have aborted");
                assert_eq!(got, b"OLD", "before the rename the old file stays");
            } else if n <= 4 {
                assert_eq!(got, b"NEW CONTENT");
            }
        }
    }
}
