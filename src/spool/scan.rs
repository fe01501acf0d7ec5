//! Walking partitions for mailbox directories: every directory under a partition (or
//! metapartition) root that holds a `cyrus.header` or a `cyrus.index`, with what its path
//! says about the mailbox in each of Cyrus 3.6's two directory layouts.
//!
//! A path is read both ways and the caller decides which applies (the `l` flag that would
//! tell is in the mailboxes database, which is what `reconstruct -m` is rebuilding):
//! * legacy (`mboxname_hash`): the path maps back to an internal name only if laying that
//!   name out again gives the same path (hash letters included), so a stray directory is
//!   never mistaken for a mailbox;
//! * uuid (`mboxname_id_hash`): `uuid/<id[0]>/<id[1]>/<id>`.
//!
//! Owns only the walk and the path ↔ name inversion; it reads no file contents.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::names::{MboxName, NameConfig};
use super::paths::{legacy_rel_path, uuid_rel_path, HashMode, Layout, MetaFile};

/// One directory that holds Cyrus mailbox metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDir {
    /// The partition whose root it was found under.
    pub partition: String,
    /// Path relative to the partition's roots (the same for data and metadata roots).
    pub rel: PathBuf,
    /// Where its `cyrus.header` is (or would be).
    pub header_path: PathBuf,
    /// Where its `cyrus.index` is (or would be).
    pub index_path: PathBuf,
    pub has_header: bool,
    pub has_index: bool,
    /// The mailbox the path names in the legacy layout, if it names one.
    pub legacy_name: Option<MboxName>,
    /// The unique id the path names in the uuid layout, if it has that shape.
    pub uuid: Option<String>,
}

/// An I/O problem met while walking (the walk goes on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkProblem {
    pub path: PathBuf,
    pub what: String,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Scan {
    /// In partition order, then path order.
    pub dirs: Vec<FoundDir>,
    pub problems: Vec<WalkProblem>,
}

fn components(rel: &Path) -> Option<Vec<&[u8]>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(s) => Some(s.as_bytes()),
            _ => None,
        })
        .collect()
}

/// The unique id a relative path names in the uuid layout (`uuid/a/b/<id>`), if any.
pub fn uuid_from_rel_path(rel: &Path) -> Option<String> {
    let comps = components(rel)?;
    let [b"uuid", a, b, id] = comps.as_slice() else {
        return None;
    };
    let id = std::str::from_utf8(id).ok()?;
    let back = uuid_rel_path(id).ok()?;
    (a.len() == 1 && b.len() == 1 && back == rel).then(|| id.to_string())
}

/// The mailbox a relative path names in the legacy layout (the inverse of
/// [`legacy_rel_path`]), if laying that name out again gives exactly this path.
pub fn legacy_name_from_rel_path(rel: &Path, hash: HashMode, nc: &NameConfig) -> Option<MboxName> {
    let comps = components(rel)?;
    let mut rest = comps.as_slice();
    let mut internal = Vec::new();
    if let [b"domain", tail @ ..] = rest {
        let tail = if hash.hashimapspool {
            tail.get(1..)?
        } else {
            tail
        };
        let (domain, tail) = tail.split_first()?;
        internal.extend_from_slice(domain);
        internal.push(b'!');
        rest = tail;
    }
    if hash.hashimapspool {
        rest = rest.get(1..)?;
    }
    if rest.is_empty() {
        return None;
    }
    // Directory names write a real `.` as `^`, exactly as internal names do.
    for (i, c) in rest.iter().enumerate() {
        if i > 0 {
            internal.push(b'.');
        }
        internal.extend_from_slice(c);
    }
    let name = MboxName::from_internal(&internal, nc).ok()?;
    (legacy_rel_path(&name, hash) == rel).then_some(name)
}

fn file_under(root: &Path, rel: &Path, file: MetaFile) -> PathBuf {
    root.join(rel).join(file.file_name())
}

/// Walk the header and index roots of `partitions` (all of the layout's when empty).
/// A directory counts when it holds `cyrus.header` or `cyrus.index`; the same directory
/// under roots shared by two partitions is reported once, for the first partition.
pub fn scan(layout: &Layout, partitions: &[String]) -> Scan {
    let mut out = Scan::default();
    let wanted: Vec<&String> = layout
        .partitions
        .keys()
        .filter(|p| partitions.is_empty() || partitions.contains(p))
        .collect();
    let mut seen_header_paths = std::collections::BTreeSet::new();
    for part in wanted {
        let (Ok(hroot), Ok(iroot)) = (
            layout.meta_root(part, MetaFile::Header),
            layout.meta_root(part, MetaFile::Index),
        ) else {
            continue;
        };
        // rel → (has header, has index)
        let mut found: BTreeMap<PathBuf, (bool, bool)> = BTreeMap::new();
        walk_root(hroot, &mut found, hroot, iroot, &mut out.problems);
        if hroot != iroot {
            walk_root(iroot, &mut found, hroot, iroot, &mut out.problems);
        }
        for (rel, (has_header, has_index)) in found {
            let header_path = file_under(hroot, &rel, MetaFile::Header);
            if !seen_header_paths.insert(header_path.clone()) {
                continue;
            }
            out.dirs.push(FoundDir {
                partition: part.clone(),
                legacy_name: legacy_name_from_rel_path(&rel, layout.hash, &layout.names),
                uuid: uuid_from_rel_path(&rel),
                index_path: file_under(iroot, &rel, MetaFile::Index),
                header_path,
                rel,
                has_header,
                has_index,
            });
        }
    }
    out
}

fn walk_root(
    root: &Path,
    found: &mut BTreeMap<PathBuf, (bool, bool)>,
    hroot: &Path,
    iroot: &Path,
    problems: &mut Vec<WalkProblem>,
) {
    if !root.exists() {
        problems.push(WalkProblem {
            path: root.to_path_buf(),
            what: "partition directory does not exist (check the partition-* and metapartition-* lines of imapd.conf)".into(),
        });
        return;
    }
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let e = match entry {
            Ok(e) => e,
            Err(err) => {
                problems.push(WalkProblem {
                    path: err.path().unwrap_or(root).to_path_buf(),
                    what: format!("cannot read: {err}"),
                });
                continue;
            }
        };
        if !e.file_type().is_file() {
            continue;
        }
        let name = e.file_name();
        let is_header = name == OsStr::new(MetaFile::Header.file_name()) && root == hroot;
        let is_index = name == OsStr::new(MetaFile::Index.file_name()) && root == iroot;
        if !is_header && !is_index {
            continue;
        }
        let Some(rel) = e
            .path()
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .filter(|r| !r.as_os_str().is_empty())
        else {
            continue;
        };
        let slot = found.entry(rel.to_path_buf()).or_default();
        slot.0 |= is_header;
        slot.1 |= is_index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nc() -> NameConfig {
        NameConfig {
            unixhierarchysep: false,
            ..NameConfig::default()
        }
    }

    const HASHED: HashMode = HashMode {
        hashimapspool: true,
        fulldirhash: false,
    };

    #[test]
    fn legacy_paths_invert() {
        let nc = nc();
        for (internal, hash) in [
            (&b"user.alice"[..], HASHED),
            (b"user.alice.Old Mail", HASHED),
            (b"user.john^doe.Sent^Items", HASHED),
            (b"shared.folder", HASHED),
            (b"DELETED.user.alice.Trash.6B082FDB", HASHED),
            (b"example.com!user.carol.Work", HASHED),
            (
                b"example.com!user.carol.Work",
                HashMode {
                    hashimapspool: true,
                    fulldirhash: true,
                },
            ),
            (b"user.alice.Entw&APw-rfe", HashMode::default()),
            (b"example.org!shared", HashMode::default()),
        ] {
            let name = MboxName::from_internal(internal, &nc).unwrap();
            let rel = legacy_rel_path(&name, hash);
            assert_eq!(
                legacy_name_from_rel_path(&rel, hash, &nc),
                Some(name),
                "{rel:?}"
            );
        }
    }

    #[test]
    fn wrong_hash_letter_or_stray_paths_name_nothing() {
        let nc = nc();
        for rel in [
            "b/user/alice",
            "user/alice",
            "a",
            "domain/e/example.com",
            "",
        ] {
            assert_eq!(
                legacy_name_from_rel_path(Path::new(rel), HASHED, &nc),
                None,
                "{rel}"
            );
        }
        assert_eq!(
            legacy_name_from_rel_path(Path::new("x/../a/user/alice"), HASHED, &nc),
            None
        );
    }

    #[test]
    fn uuid_paths() {
        assert_eq!(
            uuid_from_rel_path(Path::new("uuid/q/w/qwlcy13pa19i9g6alz441c2f")).as_deref(),
            Some("qwlcy13pa19i9g6alz441c2f")
        );
        for rel in [
            "uuid/w/q/qwlcy13pa19i9g6alz441c2f",
            "uuid/q/qwlcy13pa19i9g6alz441c2f",
            "a/user/alice",
            "uuid/q/w/q",
        ] {
            assert_eq!(uuid_from_rel_path(Path::new(rel)), None, "{rel}");
        }
    }

    #[test]
    fn scan_finds_header_and_index_dirs_on_fixture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/legacy");
        let config = crate::spool::config::Config::load(&root.join("imapd.conf")).unwrap();
        let layout = Layout::from_config(&config).unwrap();
        let s = scan(&layout, &[]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let names: Vec<String> = s
            .dirs
            .iter()
            .map(|d| d.legacy_name.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 14, "{names:?}");
        assert!(names.contains(&"DELETED.user.alice.Trash.6B082FDB".to_string()));
        assert!(names.contains(&"user.alice.Old Mail".to_string()));
        assert!(s.dirs.iter().all(|d| d.has_header && d.has_index));
    }
}
