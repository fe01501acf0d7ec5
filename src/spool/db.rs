//! Reading a whole cyrusdb database file (twoskip, skiplist or flat) as Cyrus's
//! configuration names it, under a shared fcntl lock on the file as Cyrus's readers take.
//!
//! The file is memory-mapped in one place ([`map_file`]); the codecs in `format/` do the
//! parsing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::cyrusdb::{self, Backend, DbError};
use crate::format::{flat, skiplist, twoskip};
use crate::spool::config::DbBackend;
use crate::spool::lock::{self, LockMode};

#[derive(Debug, thiserror::Error)]
pub enum SpoolDbError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the configured backend `{backend}` is not one cyrkit reads (twoskip, skiplist, flat)", path.display())]
    Unsupported {
        path: PathBuf,
        backend: &'static str,
    },
    #[error("{}: configured as {configured} but the file is {found}; Cyrus's `ctl_cyrusdb -r` would convert it", path.display())]
    WrongBackend {
        path: PathBuf,
        configured: &'static str,
        found: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: DbError,
    },
    // Not `transparent`: the lock error must be a cause of its own, so that `main` finds a
    // timeout in the chain and exits 75.
    #[error("{0}")]
    Lock(#[from] lock::LockError),
}

/// A read-only memory map of a whole file, or an empty buffer for an empty file.
pub enum Mapped {
    Map(memmap2::Mmap),
    Empty,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

/// Map `file` read-only.
pub fn map_file(file: &File) -> std::io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the map is read-only. Another process may truncate or rewrite the file while
    // it is mapped; Cyrus writers only ever append to a live db or index and replace
    // files by rename (the old inode stays intact), and we hold the shared fcntl lock that
    // Cyrus's writers respect. A truncation by a foreign process could still raise SIGBUS;
    // every parser treats the bytes as untrusted, so no other invariant depends on them.
    unsafe { memmap2::Mmap::map(file) }.map(Mapped::Map)
}

/// Which codec reads a configured backend.
pub fn codec_for(backend: DbBackend) -> Option<Backend> {
    match backend {
        DbBackend::Twoskip => Some(Backend::Twoskip),
        DbBackend::Skiplist => Some(Backend::Skiplist),
        DbBackend::Flat => Some(Backend::Flat),
        _ => None,
    }
}

/// All live key/value pairs of a database, in file order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Decode the live pairs of a database held in `buf`.
pub fn read_pairs(buf: &[u8], backend: Backend) -> Result<Pairs, DbError> {
    let mut out = Vec::new();
    match backend {
        Backend::Twoskip => {
            for kv in twoskip::TwoskipDb::open(buf)?.iter() {
                let (k, v) = kv?;
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Backend::Skiplist => {
            for kv in skiplist::SkiplistDb::open(buf)?.iter() {
                let (k, v) = kv?;
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Backend::Flat => {
            for kv in flat::FlatDb::open(buf)?.iter() {
                let (k, v) = kv?;
                out.push((k.into_owned(), v.into_owned()));
            }
        }
    }
    Ok(out)
}

/// Every structural problem of the database in `buf` (CRCs, links, order).
pub fn verify(buf: &[u8], backend: Backend) -> Vec<DbError> {
    match backend {
        Backend::Twoskip => twoskip::verify(buf, backend.default_order()),
        Backend::Skiplist => skiplist::verify(buf, backend.default_order()),
        Backend::Flat => flat::verify(buf),
    }
}

/// A database file read under a shared lock.
pub struct DbFile {
    pub path: PathBuf,
    pub backend: Backend,
    pub pairs: Pairs,
    /// Problems `verify` found; the pairs are what a Cyrus reader would still see.
    pub problems: Vec<DbError>,
}

/// Read a database file, or `Ok(None)` if it does not exist.
pub fn read_db(
    path: &Path,
    configured: DbBackend,
    timeout: Duration,
) -> Result<Option<DbFile>, SpoolDbError> {
    let io = |source| SpoolDbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let backend = codec_for(configured).ok_or_else(|| SpoolDbError::Unsupported {
        path: path.to_path_buf(),
        backend: configured.name(),
    })?;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let held = lock::lock_file(file, path, LockMode::Shared, timeout)?;
    let map = map_file(held.file()).map_err(io)?;
    if let Some(found) = cyrusdb::detect(&map) {
        if found != backend {
            return Err(SpoolDbError::WrongBackend {
                path: path.to_path_buf(),
                configured: backend.name(),
                found: found.name(),
            });
        }
    }
    let problems = verify(&map, backend);
    let pairs = read_pairs(&map, backend).map_err(|source| SpoolDbError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(DbFile {
        path: path.to_path_buf(),
        backend,
        pairs,
        problems,
    }))
}
