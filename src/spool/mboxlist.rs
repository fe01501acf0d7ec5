//! The mailboxes database as a list of mailboxes: the 3.5+ `N`/`I` key families (and the
//! older layouts keyed by internal name), decoded into names and entries.
//!
//! Decoding problems do not stop the load: an entry that cannot be read is kept as a
//! [`MboxlistProblem`] so a checker can report it and go on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::format::dlist;
use crate::format::mboxlist::{MboxEntry, MboxKey};
use crate::spool::config::Config;
use crate::spool::db::{self, SpoolDbError};
use crate::spool::names::{MboxName, NameConfig};

/// One mailbox of the database.
#[derive(Debug, Clone)]
pub struct MboxRecord {
    pub name: MboxName,
    /// The key's name part: the 3.5+ dbname, or the internal name of older layouts.
    pub dbname: Vec<u8>,
    pub entry: MboxEntry,
}

/// Something in the database that is not as Cyrus writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxlistProblem {
    /// The key concerned (lossy text), if any.
    pub key: Option<String>,
    pub what: String,
}

/// The decoded database.
#[derive(Debug, Default)]
pub struct Mboxlist {
    pub path: PathBuf,
    /// Mailboxes (tombstones included) in database order.
    pub mailboxes: Vec<MboxRecord>,
    /// `I` records by unique id.
    pub ids: BTreeMap<Vec<u8>, MboxEntry>,
    pub problems: Vec<MboxlistProblem>,
    /// True when the database uses the 3.5+ key families.
    pub v36: bool,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace(['\x1f', '\x1d'], ".")
}

impl Mboxlist {
    /// Load the configured mailboxes database. A missing file is an error: every command
    /// needs it (`reconstruct -m` rebuilds it).
    pub fn load(
        config: &Config,
        nc: &NameConfig,
        timeout: Duration,
    ) -> Result<Mboxlist, SpoolDbError> {
        let path = config.mboxlist_db_path();
        let file =
            db::read_db(&path, config.mboxlist_db(), timeout)?.ok_or_else(|| SpoolDbError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "mailboxes database not found (rebuild it with `cyrkit reconstruct -m`)",
                ),
            })?;
        let mut out = Mboxlist::from_pairs(&file.pairs, nc);
        out.path = path;
        for p in file.problems {
            out.problems.push(MboxlistProblem {
                key: None,
                what: p.to_string(),
            });
        }
        Ok(out)
    }

    /// Decode key/value pairs in database order.
    pub fn from_pairs(pairs: &[(Vec<u8>, Vec<u8>)], nc: &NameConfig) -> Mboxlist {
        let mut out = Mboxlist {
            v36: pairs
                .iter()
                .any(|(k, _)| k.first() == Some(&b'N') || k.first() == Some(&b'I')),
            ..Default::default()
        };
        for (k, v) in pairs {
            if out.v36 {
                out.add_v36(k, v, nc);
            } else {
                out.add_legacy(k, v, nc);
            }
        }
        out
    }

    fn problem(&mut self, key: &[u8], what: String) {
        self.problems.push(MboxlistProblem {
            key: Some(lossy(key)),
            what,
        });
    }

    fn add_v36(&mut self, key: &[u8], value: &[u8], nc: &NameConfig) {
        let decoded = match MboxKey::decode(key) {
            Ok(k) => k,
            Err(e) => return self.problem(key, e.to_string()),
        };
        let entry = || -> Result<MboxEntry, String> {
            let d = dlist::parse(value).map_err(|e| e.to_string())?;
            MboxEntry::from_v36_dlist(&d).map_err(|e| e.to_string())
        };
        match decoded {
            MboxKey::Name(dbname) => match (entry(), MboxName::from_dbname(&dbname, nc)) {
                (Ok(entry), Ok(name)) => self.mailboxes.push(MboxRecord {
                    name,
                    dbname,
                    entry,
                }),
                (Err(e), _) => self.problem(key, format!("unreadable entry: {e}")),
                (_, Err(e)) => self.problem(key, format!("bad mailbox name: {e}")),
            },
            MboxKey::Id(id) => match entry() {
                Ok(entry) => {
                    self.ids.insert(id, entry);
                }
                Err(e) => self.problem(key, format!("unreadable entry: {e}")),
            },
            MboxKey::RaclMarker | MboxKey::Racl { .. } => {}
        }
    }

    fn add_legacy(&mut self, key: &[u8], value: &[u8], nc: &NameConfig) {
        let entry = match dlist::parse(value) {
            Ok(d) => MboxEntry::from_v34_dlist(&d).map_err(|e| e.to_string()),
            Err(_) => MboxEntry::parse_v24(value).map_err(|e| e.to_string()),
        };
        match (entry, MboxName::from_internal(key, nc)) {
            (Ok(entry), Ok(name)) => self.mailboxes.push(MboxRecord {
                name,
                dbname: key.to_vec(),
                entry,
            }),
            (Err(e), _) => self.problem(key, format!("unreadable entry: {e}")),
            (_, Err(e)) => self.problem(key, format!("bad mailbox name: {e}")),
        }
    }

    /// Live mailboxes: not tombstones, not remote.
    pub fn live(&self) -> impl Iterator<Item = &MboxRecord> {
        self.mailboxes
            .iter()
            .filter(|m| !m.entry.is_tombstone() && !m.entry.mbtype.remote)
    }
}
