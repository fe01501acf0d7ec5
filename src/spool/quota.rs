//! Quota roots as stored: the quotalegacy tree of small files, or a quota database
//! (twoskip, skiplist, flat) keyed by root name, per `quota_db`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::quota::{self, QuotaRecord};
use crate::spool::config::{Config, DbBackend};
use crate::spool::db::{self, SpoolDbError};
use crate::spool::paths::Layout;

/// One stored quota root.
#[derive(Debug)]
pub struct StoredRoot {
    /// Where it lives: its quotalegacy file, or the database file.
    pub file: PathBuf,
    /// The record, or why it could not be read.
    pub record: Result<QuotaRecord, String>,
}

/// Every stored quota root by internal root name.
pub fn load_roots(
    config: &Config,
    layout: &Layout,
    timeout: Duration,
) -> Result<BTreeMap<Vec<u8>, StoredRoot>, SpoolDbError> {
    let mut out = BTreeMap::new();
    if config.quota_db() == DbBackend::QuotaLegacy {
        let dir = layout.quotalegacy_dir().to_path_buf();
        load_legacy_tree(&dir.join("quota"), None, &mut out);
        // Virtual domains: domain/<h>/<domain>/quota/...
        for hash in read_dir_sorted(&dir.join("domain")) {
            for domain_dir in read_dir_sorted(&hash) {
                let domain = domain_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                load_legacy_tree(&domain_dir.join("quota"), Some(domain.as_bytes()), &mut out);
            }
        }
        return Ok(out);
    }
    let path = layout.quotas_db().to_path_buf();
    if let Some(file) = db::read_db(&path, config.quota_db(), timeout)? {
        for (k, v) in file.pairs {
            let record = quota::parse_value(&v).map_err(|e| e.to_string());
            out.insert(
                k,
                StoredRoot {
                    file: path.clone(),
                    record,
                },
            );
        }
    }
    Ok(out)
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn load_legacy_tree(
    quota_dir: &Path,
    domain: Option<&[u8]>,
    out: &mut BTreeMap<Vec<u8>, StoredRoot>,
) {
    use std::os::unix::ffi::OsStrExt;
    for entry in read_dir_sorted(quota_dir) {
        let files = if entry.is_dir() {
            read_dir_sorted(&entry)
        } else if entry.file_name().is_some_and(|n| n == "root") {
            vec![entry]
        } else {
            continue;
        };
        for f in files {
            let Some(name) = f.file_name().map(|n| n.as_bytes().to_vec()) else {
                continue;
            };
            if name.ends_with(b".NEW") || !f.is_file() {
                continue;
            }
            let mut root = Vec::new();
            if let Some(d) = domain {
                root.extend_from_slice(d);
                root.push(b'!');
            }
            if !(domain.is_some() && name == b"root" && f.parent() == Some(quota_dir)) {
                root.extend_from_slice(&name);
            }
            let record = std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| quota::parse_legacy_file(&b).map_err(|e| e.to_string()));
            out.insert(root, StoredRoot { file: f, record });
        }
    }
}
