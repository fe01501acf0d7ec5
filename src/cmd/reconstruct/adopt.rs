//! Mailboxes the database lacks: the entries `reconstruct -p`, `-f`, `-x` and `-P` create
//! (Cyrus 3.6.1 imap/reconstruct.c: the `start_part` loop, the `discovered` list of
//! `do_reconstruct`, `reconstruct_mbentry`).
//!
//! Where Cyrus creates a database-only entry with no unique id and then crashes on it (`-f`
//! in 3.6.1), the entry here is made as `reconstruct -m` makes one
//! ([`super::super::reconstruct_m::read_dir`]): unique id, ACL and type from `cyrus.header`,
//! UIDVALIDITY and modseqs from the `cyrus.index` header, so an adopted mailbox keeps what
//! its clients know. `-x` instead makes a new mailbox as `mailbox_create` would: a fresh
//! unique id (legacy layout; in the uuid layout the directory *is* the unique id, so it is
//! kept), a new UIDVALIDITY, the default ACL, and no old index or header used.
//!
//! The database is written under its exclusive fcntl lock with `N` and `I` records
//! together: as one appended twoskip transaction when the file is clean, else as a fresh
//! file replacing the old one atomically (`.NEW` + rename).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::cyrusdb::{self, Backend, KeyOrder, LevelRng, Op};
use crate::format::header::{MbKind, MbType};
use crate::format::mboxlist::{write_dlist_value, MboxEntry, MboxKey};
use crate::format::{dlist, twoskip};
use crate::spool::config::Config;
use crate::spool::lock::{self, LockMode};
use crate::spool::mboxlist::{MboxRecord, Mboxlist};
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::{Layout, MailboxDir, MetaFile};
use crate::spool::scan::{self, FoundDir};

use super::super::reconstruct_m::{self, Found, Problem};
use super::{now_secs, LOCK_TIMEOUT};

/// How a mailbox came to be reconstructed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// It was in the database.
    Existing,
    /// Its entry was created from its old header and index (`-p`, `-f`).
    Imported,
    /// A new mailbox over the old files (`-x`, or `-p` with nothing on disk): the old
    /// header, index and cache are not used.
    Fresh,
}

/// What entry creation needs.
pub(super) struct AdoptEnv<'a> {
    pub config: &'a Config,
    pub layout: &'a Layout,
    pub nc: &'a NameConfig,
}

/// The names and unique ids the database (plus what this run adds) holds live.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub names: BTreeSet<Vec<u8>>,
    pub ids: BTreeSet<Vec<u8>>,
    /// Every unique id ever seen (I records included), so a new one never clashes.
    pub all_ids: BTreeSet<Vec<u8>>,
    /// uuid-layout directories by partition, read once (for `-f`).
    uuid_dirs: Option<Vec<Found>>,
}

impl Known {
    pub fn from_mboxlist(m: &Mboxlist) -> Known {
        let mut k = Known::default();
        for r in m.live() {
            k.names.insert(r.dbname.clone());
            if let Some(id) = &r.entry.uniqueid {
                k.ids.insert(id.clone());
            }
        }
        k.all_ids.extend(m.ids.keys().cloned());
        k.all_ids.extend(k.ids.iter().cloned());
        k
    }

    fn add(&mut self, r: &MboxRecord) {
        self.names.insert(r.dbname.clone());
        if let Some(id) = &r.entry.uniqueid {
            self.ids.insert(id.clone());
            self.all_ids.insert(id.clone());
        }
    }
}

/// The place of a mailbox directory on `part`, with what it holds.
fn found_dir(layout: &Layout, dir: MailboxDir<'_>, part: &str) -> Option<FoundDir> {
    let header_path = layout.meta_file(part, dir, MetaFile::Header, false).ok()?;
    let index_path = layout.meta_file(part, dir, MetaFile::Index, false).ok()?;
    let (legacy_name, uuid) = match dir {
        MailboxDir::Legacy(n) => (Some(n.clone()), None),
        MailboxDir::Uuid(id) => (None, Some(id.to_string())),
    };
    Some(FoundDir {
        partition: part.to_string(),
        rel: dir.rel_path(layout.hash).ok()?,
        has_header: header_path.is_file(),
        has_index: index_path.is_file(),
        header_path,
        index_path,
        legacy_name,
        uuid,
    })
}

fn found_dir_legacy(layout: &Layout, name: &MboxName, part: &str) -> Option<FoundDir> {
    found_dir(layout, MailboxDir::Legacy(name), part)
}

fn found_dir_uuid(layout: &Layout, id: &str, part: &str) -> Option<FoundDir> {
    found_dir(layout, MailboxDir::Uuid(id), part)
}

/// Every uuid-layout mailbox directory of `part` (`uuid/<a>/<b>/<id>` under the header
/// root), read: the walk stops at that depth, so message files are never listed.
fn uuid_dirs(env: &AdoptEnv<'_>, part: &str, problems: &mut Vec<Problem>) -> Vec<Found> {
    let Ok(root) = env.layout.meta_root(part, MetaFile::Header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(root.join("uuid"))
        .min_depth(3)
        .max_depth(3)
        .sort_by_file_name();
    for e in walker.into_iter().filter_map(Result::ok) {
        if !e.file_type().is_dir() {
            continue;
        }
        let Some(id) = e.file_name().to_str() else {
            continue;
        };
        let Some(d) = found_dir_uuid(env.layout, id, part) else {
            continue;
        };
        if scan::uuid_from_rel_path(&d.rel).is_none() || !(d.has_header || d.has_index) {
            continue;
        }
        if let Some(f) = reconstruct_m::read_dir(&d, env.nc, env.config, problems) {
            out.push(f);
        }
    }
    out
}

/// The entry for a mailbox found on disk, its metadata imported.
fn imported_entry(f: &Found, known: &Known) -> MboxEntry {
    MboxEntry {
        mbtype: f.mbtype,
        uniqueid: Some(
            f.uniqueid
                .clone()
                .unwrap_or_else(|| reconstruct_m::new_uniqueid(&known.all_ids)),
        ),
        partition: Some(f.partition.clone().into_bytes()),
        uidvalidity: f.uidvalidity,
        createdmodseq: f.createdmodseq,
        foldermodseq: f.highestmodseq.max(f.createdmodseq),
        mtime: Some(f.header_mtime.unwrap_or_else(now_secs)),
        acl: f.acl.clone(),
        ..MboxEntry::default()
    }
}

/// The entry of a new mailbox as `mailbox_create` makes one. `old` is what is on disk
/// (its UIDVALIDITY is exceeded so no client mistakes the new mailbox for the old one; a
/// uuid directory keeps its unique id, which is its path).
fn fresh_entry(
    env: &AdoptEnv<'_>,
    name: &MboxName,
    part: &str,
    old: Option<&Found>,
    known: &Known,
) -> MboxEntry {
    let legacy = match old {
        Some(f) => f.mbtype.legacy_dirs,
        None => env.config.mailbox_legacy_dirs(),
    };
    let uniqueid = match old {
        Some(f) if !legacy => f.uniqueid.clone(),
        _ => None,
    }
    .unwrap_or_else(|| reconstruct_m::new_uniqueid(&known.all_ids));
    let now = now_secs();
    let uidvalidity = (now as u32).max(old.map_or(0, |f| f.uidvalidity.saturating_add(1)));
    MboxEntry {
        mbtype: MbType {
            kind: MbKind::default(),
            legacy_dirs: legacy,
            ..MbType::default()
        },
        uniqueid: Some(uniqueid),
        partition: Some(part.as_bytes().to_vec()),
        uidvalidity,
        createdmodseq: 1,
        foldermodseq: 1,
        mtime: Some(now),
        acl: Some(reconstruct_m::default_acl(name, env.config)),
        ..MboxEntry::default()
    }
}

fn record(name: MboxName, entry: MboxEntry) -> MboxRecord {
    MboxRecord {
        dbname: name.to_dbname(),
        name,
        entry,
    }
}

/// `-p PART`: entries for the named mailboxes (none of which may exist) on `part`, from the
/// directory there (the name's legacy directory, or a uuid directory whose header names
/// it); a name with nothing on disk becomes a new empty mailbox.
pub(super) fn for_partition(
    env: &AdoptEnv<'_>,
    known: &mut Known,
    part: &str,
    names: &[MboxName],
    fresh: bool,
    problems: &mut Vec<Problem>,
) -> Vec<(MboxRecord, Origin)> {
    let mut out = Vec::new();
    let mut uuids: Option<Vec<Found>> = None;
    for name in names {
        let legacy = found_dir_legacy(env.layout, name, part)
            .filter(|d| d.has_header || d.has_index)
            .and_then(|d| reconstruct_m::read_dir(&d, env.nc, env.config, problems));
        let found = legacy.or_else(|| {
            uuids
                .get_or_insert_with(|| uuid_dirs(env, part, problems))
                .iter()
                .find(|f| &f.name == name)
                .cloned()
        });
        let (entry, origin) = match (&found, fresh) {
            (Some(f), false) => (imported_entry(f, known), Origin::Imported),
            _ => (
                fresh_entry(env, name, part, found.as_ref(), known),
                Origin::Fresh,
            ),
        };
        let r = record(name.clone(), entry);
        known.add(&r);
        out.push((r, origin));
    }
    out
}

/// `-f`: the mailboxes below `m` that have a directory but no entry: sub-directories of
/// its legacy directory with a `cyrus.header` or `cyrus.index` (as Cyrus looks), and
/// uuid-layout directories of its partition whose header names a child of it.
pub(super) fn discover(
    env: &AdoptEnv<'_>,
    known: &mut Known,
    m: &MboxRecord,
    fresh: bool,
    problems: &mut Vec<Problem>,
) -> Vec<(MboxRecord, Origin)> {
    let part = crate::spool::mailbox::partition(m);
    let mut found: Vec<Found> = Vec::new();
    if m.entry.legacy_dirs() {
        if let Ok(dir) = env
            .layout
            .meta_dir(&part, MailboxDir::Legacy(&m.name), MetaFile::Header)
        {
            for e in read_dir_sorted(&dir) {
                let Some(comp) = e.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                // Mailbox directories never have a dot in them (`do_reconstruct`).
                if comp.contains('.') || !e.is_dir() {
                    continue;
                }
                let mut internal = m.name.to_internal();
                internal.push(b'.');
                internal.extend_from_slice(comp.as_bytes());
                let Ok(child) = MboxName::from_internal(&internal, env.nc) else {
                    continue;
                };
                let Some(d) = found_dir_legacy(env.layout, &child, &part) else {
                    continue;
                };
                if (d.has_header || d.has_index) && d.header_path.parent() == Some(e.as_path()) {
                    if let Some(f) = reconstruct_m::read_dir(&d, env.nc, env.config, problems) {
                        found.push(f);
                    }
                }
            }
        }
    }
    let uuids = known.uuid_dirs.get_or_insert_with(|| {
        let mut all = Vec::new();
        for p in env.layout.partitions.keys() {
            all.extend(uuid_dirs(env, p, problems));
        }
        all
    });
    found.extend(
        uuids
            .iter()
            .filter(|f| f.name.parent(env.nc).as_ref() == Some(&m.name))
            .cloned(),
    );
    let mut out = Vec::new();
    for f in found {
        let dbname = f.name.to_dbname();
        if known.names.contains(&dbname) {
            continue; // in the database: reconstructed with -r
        }
        if let Some(id) = f.uniqueid.as_ref().filter(|id| known.ids.contains(*id)) {
            problems.push(Problem {
                kind: reconstruct_m::ProblemKind::DuplicateUniqueid,
                error: true,
                mailbox: Some(f.name.to_string()),
                path: Some(f.dir.clone()),
                message: format!(
                    "has the unique id {} of a mailbox in the database; not adopted",
                    String::from_utf8_lossy(id)
                ),
            });
            continue;
        }
        let (entry, origin) = if fresh {
            (
                fresh_entry(env, &f.name, &f.partition, Some(&f), known),
                Origin::Fresh,
            )
        } else {
            (imported_entry(&f, known), Origin::Imported)
        };
        let r = record(f.name.clone(), entry);
        known.add(&r);
        out.push((r, origin));
    }
    out
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// -P: entries from cyrus.header paths

/// `-P PATH`: the entry a `cyrus.header` (and the `cyrus.index` beside it) describes, as
/// `reconstruct_mbentry` builds it; the error is Cyrus's message for the path.
pub(super) fn entry_from_header_path(
    env: &AdoptEnv<'_>,
    mboxlist: &Mboxlist,
    known: &Known,
    arg: &str,
) -> Result<MboxRecord, String> {
    let real = std::fs::canonicalize(arg).map_err(|_| format!("Can not resolve path '{arg}'"))?;
    let header_path = if arg.ends_with(MetaFile::Header.file_name()) {
        real
    } else {
        real.join(MetaFile::Header.file_name())
    };
    let shown = header_path.display().to_string();
    let invalid = || format!("Invalid/missing cyrus.header at '{shown}'");
    let bytes = std::fs::read(&header_path).map_err(|_| invalid())?;
    let hdr = crate::format::header::parse(&bytes).map_err(|_| invalid())?;
    let hname = hdr
        .name
        .as_deref()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    // Which partition's header root holds it, and where below it.
    let dir = header_path.parent().unwrap_or(Path::new("/"));
    let located = env.layout.partitions.keys().find_map(|p| {
        let root = env.layout.meta_root(p, MetaFile::Header).ok()?;
        let root = std::fs::canonicalize(root).ok()?;
        let rel = dir.strip_prefix(&root).ok()?;
        Some((p.clone(), rel.to_path_buf()))
    });
    let Some((part, rel)) = located else {
        return Err(format!(
            "Header for mailbox '{hname}' is not located on a valid [meta]partition"
        ));
    };
    let uuid = scan::uuid_from_rel_path(&rel);
    let d = match &uuid {
        Some(id) => found_dir_uuid(env.layout, id, &part),
        None => scan::legacy_name_from_rel_path(&rel, env.layout.hash, env.nc)
            .and_then(|n| found_dir_legacy(env.layout, &n, &part)),
    };
    let mut problems = Vec::new();
    let f = d
        .as_ref()
        .and_then(|d| reconstruct_m::read_dir(d, env.nc, env.config, &mut problems))
        .ok_or_else(|| {
            format!("Header for mailbox '{hname}' is not located in proper location: '{shown}'")
        })?;
    // The header's own name must lay out to this place (Cyrus's path sanity check); the
    // legacy layout takes its name from the path.
    if let (Some(n), None) = (&hdr.name, &uuid) {
        if n.as_slice() != f.name.to_internal().as_slice() {
            return Err(format!(
                "Header for mailbox '{hname}' ({}) is not located in proper location: '{shown}'",
                String::from_utf8_lossy(hdr.uniqueid.as_deref().unwrap_or_default())
            ));
        }
    }
    if let Some(p) = problems.iter().find(|p| {
        matches!(
            p.kind,
            reconstruct_m::ProblemKind::IndexMissing | reconstruct_m::ProblemKind::HeaderMissing
        )
    }) {
        return Err(format!(
            "failed to open mailbox {} ({}): {}",
            f.name,
            String::from_utf8_lossy(f.uniqueid.as_deref().unwrap_or_default()),
            p.message
        ));
    }
    let mut entry = imported_entry(&f, known);
    // No unique id in a legacy header: the current entry's, else a new one.
    if f.uniqueid.is_none() {
        if let Some(id) = mboxlist
            .mailboxes
            .iter()
            .find(|m| m.name == f.name)
            .and_then(|m| m.entry.uniqueid.clone())
        {
            entry.uniqueid = Some(id);
        }
    }
    entry.foldermodseq = f.highestmodseq;
    entry.mtime = Some(now_secs());
    Ok(record(f.name, entry))
}

// ---------------------------------------------------------------------------------------
// Writing the database

/// Adds (or with `overwrite`, replaces) the `N` and `I` records of `recs`, under the
/// database's exclusive lock. A name the database already holds live is refused unless
/// `overwrite` (returned as an error message for that record); the others are written.
pub(super) fn write_entries(
    config: &Config,
    recs: &[MboxRecord],
    overwrite: bool,
) -> anyhow::Result<Vec<Result<(), String>>> {
    let path = config.mboxlist_db_path();
    let configured = crate::spool::db::codec_for(config.mboxlist_db())
        .ok_or_else(|| anyhow::anyhow!("unsupported mailboxes database backend"))?;
    let held = lock::lock_existing(&path, LockMode::Exclusive, LOCK_TIMEOUT)?;
    let bytes = crate::spool::db::map_file(held.file())?.to_vec();
    let backend = cyrusdb::detect(&bytes).unwrap_or(configured);
    let mut pairs = crate::spool::db::read_pairs(&bytes, backend)?;
    let v36 = pairs
        .iter()
        .any(|(k, _)| matches!(k.first(), Some(b'N' | b'I')));
    if !v36 && !pairs.is_empty() {
        anyhow::bail!("the mailboxes database predates Cyrus 3.5; not updated");
    }
    let mut results = Vec::new();
    let mut new_pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for r in recs {
        let nkey = MboxKey::Name(r.dbname.clone()).encode();
        let old = pairs
            .iter()
            .find(|(k, _)| *k == nkey)
            .and_then(|(_, v)| dlist::parse(v).ok())
            .and_then(|d| MboxEntry::from_v36_dlist(&d).ok());
        if !overwrite && old.as_ref().is_some_and(|e| !e.is_tombstone()) {
            results.push(Err("the mailboxes database has it already".to_string()));
            continue;
        }
        let Some(id) = r.entry.uniqueid.clone() else {
            results.push(Err("no unique id".to_string()));
            continue;
        };
        let ikey = MboxKey::Id(id).encode();
        // The I record keeps the name history of a former entry of the same mailbox.
        let history = pairs
            .iter()
            .find(|(k, _)| *k == ikey)
            .and_then(|(_, v)| dlist::parse(v).ok())
            .and_then(|d| MboxEntry::from_v36_dlist(&d).ok())
            .and_then(|e| e.name_history)
            .unwrap_or_default();
        let ientry = MboxEntry {
            dbname: Some(r.dbname.clone()),
            name_history: Some(history),
            ..r.entry.clone()
        };
        new_pairs.push((nkey, write_dlist_value(&r.entry.to_v36_name_dlist())));
        new_pairs.push((ikey, write_dlist_value(&ientry.to_v36_id_dlist())));
        results.push(Ok(()));
    }
    if new_pairs.is_empty() {
        return Ok(results);
    }
    let clean_twoskip = backend == Backend::Twoskip
        && configured == Backend::Twoskip
        && twoskip::TwoskipDb::open(&bytes).is_ok_and(|db| db.is_clean());
    if clean_twoskip {
        let ops: Vec<Op<'_>> = new_pairs
            .iter()
            .map(|(k, v)| Op::Set(k.as_slice(), v.as_slice()))
            .collect();
        let seed = now_secs() ^ u64::from(std::process::id()) | 1;
        let txn =
            twoskip::append_transaction(&bytes, &ops, KeyOrder::Raw, &mut LevelRng::new(seed))?;
        if let Some(txn) = txn {
            let f = held.file();
            f.write_all_at(&txn.dirty_header, 0)?;
            f.sync_data()?;
            crate::spool::atomic::crash_point("twoskip-dirty");
            for (off, w) in &txn.writes {
                f.write_all_at(w, *off)?;
            }
            f.sync_data()?;
            crate::spool::atomic::crash_point("twoskip-records");
            f.write_all_at(&txn.commit_header, 0)?;
            f.sync_data()?;
            crate::spool::atomic::crash_point("twoskip-commit");
        }
    } else {
        for (k, v) in new_pairs {
            match pairs.iter_mut().find(|(pk, _)| *pk == k) {
                Some(slot) => slot.1 = v,
                None => pairs.push((k, v)),
            }
        }
        let order = configured.default_order();
        pairs.sort_by(|a, b| order.compare(&a.0, &b.0));
        let out = reconstruct_m::encode(&pairs, configured)?;
        let own = crate::spool::atomic::Ownership::for_path(&path)?;
        crate::spool::atomic::replace_with_ownership(&path, &out, own)?;
    }
    drop(held);
    Ok(results)
}
