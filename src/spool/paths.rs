//! Where Cyrus 3.6 keeps things: mailbox directories and files, locks, quota files, databases,
//! per-user files. Pure functions of a [`Layout`] (derived from the configuration) and names;
//! no I/O.
//!
//! Sources: `imap/mboxname.c` (`mboxname_hash`, `mboxname_id_hash`, `mboxname_datapath`,
//! `mboxname_archivepath`, `mboxname_metapath`, `mboxname_lockpath_suffix`,
//! `mboxname_conf_getpath_legacy`, `mboxid_conf_getpath`), `lib/util.c` (`dir_hash_c`),
//! `imap/user.c` (`user_namespacelock_full`), `lib/cyrusdb_quotalegacy.c` (`hash_quota`),
//! `imap/mailbox.c` (`mailbox_parse_datafilename`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::config::{Config, MetaPartitionFiles, VirtDomains};
use super::names::{MboxName, NameConfig, NameError};

/// `MAX_MAILBOX_PATH`: Cyrus refuses (returns NULL for) longer paths.
pub const MAX_MAILBOX_PATH: usize = 4096;
/// Suffix of every name lock file.
pub const LOCK_SUFFIX: &str = ".lock";
/// Suffix of a metadata file being rewritten (`cyrus.index.NEW`).
pub const NEW_SUFFIX: &str = ".NEW";
/// Name lock taken around quota changes.
pub const QUOTACHANGE_LOCK: &[u8] = b"$QUOTACHANGE";
/// Prefix of user namespace lock names (`user_namespacelock_full`).
pub const USER_NAMESPACE_LOCK_PREFIX: &[u8] = b"*U*";

/// Why a path could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "no partition-{0} in imapd.conf (add a `partition-{0}: DIRECTORY` line naming its spool)"
    )]
    UnknownPartition(String),
    #[error("invalid mailbox unique id `{0}`")]
    BadUniqueId(String),
    #[error("invalid user id `{0}`")]
    BadUserId(String),
    #[error("invalid quota root `{0}`")]
    BadQuotaRoot(String),
    #[error("path longer than {MAX_MAILBOX_PATH} bytes: {0}")]
    TooLong(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// `hashimapspool` and `fulldirhash` together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashMode {
    /// Put a hash letter directory above each mailbox (and domain) directory.
    pub hashimapspool: bool,
    /// Use the 23-letter hash instead of the first letter.
    pub fulldirhash: bool,
}

/// `dir_hash_c` (`lib/util.c`): the hash directory letter of `name`.
///
/// Without `full`: the lower-cased first byte if it is an ASCII letter, else `q`. With
/// `full`: `'A' + h % 23` over the bytes up to the first `.`.
pub fn dir_hash_c(name: &[u8], full: bool) -> u8 {
    if full {
        let mut n: u32 = 0;
        for &b in name.iter().take_while(|&&b| b != b'.') {
            n = ((n << 3) ^ (n >> 5)) ^ u32::from(b);
        }
        // n % 23 < 23, so the sum is an upper-case letter.
        b'A' + (n % 23) as u8
    } else {
        name.first()
            .map(u8::to_ascii_lowercase)
            .filter(u8::is_ascii_lowercase)
            .unwrap_or(b'q')
    }
}

/// Which directory scheme a mailbox uses: decided by the `l` (legacy dirs) flag of its
/// mailboxes.db entry, not by the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxDir<'a> {
    /// By name: `[domain/<h>/<domain>/][<h>/]user/alice/Sent` (`mboxname_hash`).
    Legacy(&'a MboxName),
    /// By unique id: `uuid/<id0>/<id1>/<id>` (`mboxname_id_hash`).
    Uuid(&'a str),
}

/// The relative legacy path of `name` (`mboxname_hash` without the root).
pub fn legacy_rel_path(name: &MboxName, hash: HashMode) -> PathBuf {
    let mut out = Vec::new();
    if let Some(domain) = name.domain() {
        out.extend_from_slice(b"domain/");
        if hash.hashimapspool {
            out.push(dir_hash_c(domain, hash.fulldirhash));
            out.push(b'/');
        }
        out.extend_from_slice(domain);
        out.push(b'/');
    }
    let comps = name.path_components();
    if hash.hashimapspool {
        // Hashed on the second component when there are two or more ("user.alice" → a).
        if let Some(idx) = comps.get(1).or_else(|| comps.first()) {
            out.push(dir_hash_c(idx, hash.fulldirhash));
            out.push(b'/');
        }
    }
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend(c.iter().map(|&b| if b == b'.' { b'^' } else { b }));
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Checks a unique id before it becomes a path (3.x ids are `[0-9a-z]` or lower-case UUIDs).
fn check_uniqueid(id: &str) -> Result<(), PathError> {
    let ok = id.len() >= 2
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PathError::BadUniqueId(id.to_string()))
    }
}

/// The relative uuid path of a mailbox (`mboxname_id_hash` without the root).
pub fn uuid_rel_path(uniqueid: &str) -> Result<PathBuf, PathError> {
    check_uniqueid(uniqueid)?;
    let b = uniqueid.as_bytes();
    let mut out = b"uuid/".to_vec();
    out.extend_from_slice(&[b[0], b'/', b[1], b'/']);
    out.extend_from_slice(b);
    Ok(PathBuf::from(OsStr::from_bytes(&out)))
}

impl MailboxDir<'_> {
    /// The directory relative to a partition root.
    pub fn rel_path(&self, hash: HashMode) -> Result<PathBuf, PathError> {
        match self {
            MailboxDir::Legacy(name) => Ok(legacy_rel_path(name, hash)),
            MailboxDir::Uuid(id) => uuid_rel_path(id),
        }
    }
}

/// The per-mailbox metadata files (`META_*` in `imap/mailbox.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaFile {
    Header,
    Index,
    Cache,
    /// 2.3-era `cyrus.expunge`.
    Expunge,
    Squat,
    Annotations,
    Dav,
    /// `cyrus.cache` of archived records, kept with the archive.
    ArchiveCache,
}

impl MetaFile {
    /// Every metadata file.
    pub const ALL: [MetaFile; 8] = [
        MetaFile::Header,
        MetaFile::Index,
        MetaFile::Cache,
        MetaFile::Expunge,
        MetaFile::Squat,
        MetaFile::Annotations,
        MetaFile::Dav,
        MetaFile::ArchiveCache,
    ];

    /// The file name (`FNAME_*`).
    pub fn file_name(self) -> &'static str {
        match self {
            MetaFile::Header => "cyrus.header",
            MetaFile::Index => "cyrus.index",
            MetaFile::Cache | MetaFile::ArchiveCache => "cyrus.cache",
            MetaFile::Expunge => "cyrus.expunge",
            MetaFile::Squat => "cyrus.squat",
            MetaFile::Annotations => "cyrus.annotations",
            MetaFile::Dav => "cyrus.dav",
        }
    }

    /// The `metadir-<key>-<partition>` overflow key; annotations use `index` (as in
    /// `mboxname_metapath`) and expunge has none.
    pub fn metadir_key(self) -> Option<&'static str> {
        match self {
            MetaFile::Header => Some("header"),
            MetaFile::Index | MetaFile::Annotations => Some("index"),
            MetaFile::Cache => Some("cache"),
            MetaFile::Expunge => None,
            MetaFile::Squat => Some("squat"),
            MetaFile::Dav => Some("dav"),
            MetaFile::ArchiveCache => Some("archivecache"),
        }
    }

    /// Its `metapartition_files` bit.
    pub fn metapartition_flag(self) -> MetaPartitionFiles {
        match self {
            MetaFile::Header => MetaPartitionFiles::HEADER,
            MetaFile::Index => MetaPartitionFiles::INDEX,
            MetaFile::Cache => MetaPartitionFiles::CACHE,
            MetaFile::Expunge => MetaPartitionFiles::EXPUNGE,
            MetaFile::Squat => MetaPartitionFiles::SQUAT,
            MetaFile::Annotations => MetaPartitionFiles::ANNOTATIONS,
            MetaFile::Dav => MetaPartitionFiles::DAV,
            MetaFile::ArchiveCache => MetaPartitionFiles::ARCHIVECACHE,
        }
    }
}

/// Files kept per user under `<configdirectory>/user/` (`user_hash_meta` suffixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFile {
    Seen,
    Subscriptions,
    Counters,
    Conversations,
}

impl UserFile {
    /// The suffix (`FNAME_SEENSUFFIX`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            UserFile::Seen => "seen",
            UserFile::Subscriptions => "sub",
            UserFile::Counters => "counters",
            UserFile::Conversations => "conversations",
        }
    }
}

/// The roots of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRoots {
    /// `partition-<name>`: message files and, by default, everything else.
    pub data: PathBuf,
    /// `metapartition-<name>`, for the files listed in `metapartition_files`.
    pub meta: Option<PathBuf>,
    /// `archivepartition-<name>`, only with `archive_enabled`.
    pub archive: Option<PathBuf>,
    /// `metadir-<key>-<name>` overflow keys, by key (`header`, `index`, ...).
    pub metadirs: BTreeMap<&'static str, PathBuf>,
}

/// Everything paths depend on, taken from the configuration once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config_dir: PathBuf,
    pub hash: HashMode,
    pub partitions: BTreeMap<String, PartitionRoots>,
    pub metapartition_files: MetaPartitionFiles,
    /// `mboxname_lockpath`.
    pub lock_dir: PathBuf,
    pub mboxlist_db_path: PathBuf,
    pub quota_db_path: PathBuf,
    pub virtdomains: VirtDomains,
    pub names: NameConfig,
}

const METADIR_KEYS: [&str; 6] = ["header", "index", "cache", "squat", "dav", "archivecache"];

impl Layout {
    /// The layout `config` describes.
    pub fn from_config(config: &Config) -> Result<Layout, PathError> {
        let partitions = config
            .partitions()
            .into_iter()
            .map(|(name, data)| {
                let metadirs = METADIR_KEYS
                    .iter()
                    .filter_map(|k| Some((*k, config.metadir(k, &name)?)))
                    .collect();
                let roots = PartitionRoots {
                    data,
                    meta: config.metapartition_dir(&name),
                    archive: config.archivepartition_dir(&name),
                    metadirs,
                };
                (name, roots)
            })
            .collect();
        Ok(Layout {
            config_dir: config.config_directory(),
            hash: HashMode {
                hashimapspool: config.hashimapspool(),
                fulldirhash: config.fulldirhash(),
            },
            partitions,
            metapartition_files: config.metapartition_files(),
            lock_dir: config.mboxname_lockpath(),
            mboxlist_db_path: config.mboxlist_db_path(),
            quota_db_path: config.quota_db_path(),
            virtdomains: config.virtdomains(),
            names: NameConfig::from_config(config)?,
        })
    }

    /// The roots of partition `name`.
    pub fn partition(&self, name: &str) -> Result<&PartitionRoots, PathError> {
        self.partitions
            .get(name)
            .ok_or_else(|| PathError::UnknownPartition(name.to_string()))
    }

    /// The mailbox directory under the data root (`mboxname_datapath` with uid 0).
    pub fn data_dir(&self, partition: &str, dir: MailboxDir<'_>) -> Result<PathBuf, PathError> {
        join(&self.partition(partition)?.data, &dir.rel_path(self.hash)?)
    }

    /// The mailbox directory for archived messages (`mboxname_archivepath`): the archive
    /// partition, else the data partition.
    pub fn archive_dir(&self, partition: &str, dir: MailboxDir<'_>) -> Result<PathBuf, PathError> {
        let p = self.partition(partition)?;
        join(
            p.archive.as_ref().unwrap_or(&p.data),
            &dir.rel_path(self.hash)?,
        )
    }

    /// Message file `<uid>.` of a mailbox (`mboxname_datapath`).
    pub fn message_file(
        &self,
        partition: &str,
        dir: MailboxDir<'_>,
        uid: u32,
    ) -> Result<PathBuf, PathError> {
        let d = self.data_dir(partition, dir)?;
        join(&d, Path::new(&message_file_name(uid)))
    }

    /// Message file of an archived record (`mboxname_archivepath`).
    pub fn archived_message_file(
        &self,
        partition: &str,
        dir: MailboxDir<'_>,
        uid: u32,
    ) -> Result<PathBuf, PathError> {
        let d = self.archive_dir(partition, dir)?;
        join(&d, Path::new(&message_file_name(uid)))
    }

    /// The root holding metadata file `file` of this partition (`mboxname_metapath`):
    /// `metadir-*` key, else the metapartition if the file is in `metapartition_files`,
    /// else (archive cache only) the archive partition, else the data partition.
    pub fn meta_root(&self, partition: &str, file: MetaFile) -> Result<&Path, PathError> {
        let p = self.partition(partition)?;
        let metadir = file.metadir_key().and_then(|k| p.metadirs.get(k));
        let meta = p
            .meta
            .as_ref()
            .filter(|_| self.metapartition_files.contains(file.metapartition_flag()));
        let archive = p
            .archive
            .as_ref()
            .filter(|_| file == MetaFile::ArchiveCache);
        Ok(metadir.or(meta).or(archive).unwrap_or(&p.data))
    }

    /// The mailbox directory holding metadata file `file`.
    pub fn meta_dir(
        &self,
        partition: &str,
        dir: MailboxDir<'_>,
        file: MetaFile,
    ) -> Result<PathBuf, PathError> {
        join(self.meta_root(partition, file)?, &dir.rel_path(self.hash)?)
    }

    /// Path of metadata file `file`; with `new`, the `.NEW` file it is rewritten through.
    pub fn meta_file(
        &self,
        partition: &str,
        dir: MailboxDir<'_>,
        file: MetaFile,
        new: bool,
    ) -> Result<PathBuf, PathError> {
        let d = self.meta_dir(partition, dir, file)?;
        let mut name = file.file_name().to_string();
        if new {
            name.push_str(NEW_SUFFIX);
        }
        join(&d, Path::new(&name))
    }

    /// Lock file of lock name `name` (`mboxname_lockpath`): the name is laid out as a legacy
    /// mailbox path under `mboxname_lockpath`, plus `.lock`.
    pub fn lock_file(&self, name: &MboxName) -> Result<PathBuf, PathError> {
        let mut rel = legacy_rel_path(name, self.hash).into_os_string();
        rel.push(LOCK_SUFFIX);
        join(&self.lock_dir, Path::new(&rel))
    }

    /// Lock file for a raw lock name such as `$QUOTACHANGE` or `*U*alice`.
    pub fn named_lock_file(&self, lock_name: &[u8]) -> Result<PathBuf, PathError> {
        self.lock_file(&MboxName::from_internal(lock_name, &self.names)?)
    }

    /// The mailbox name lock: by internal name (legacy) or by unique id (uuid layout, where
    /// the id is hashed like a one-component name, not laid out as `uuid/x/y`).
    pub fn mailbox_lock_file(&self, dir: MailboxDir<'_>) -> Result<PathBuf, PathError> {
        match dir {
            MailboxDir::Legacy(name) => self.lock_file(name),
            MailboxDir::Uuid(id) => {
                check_uniqueid(id)?;
                self.named_lock_file(id.as_bytes())
            }
        }
    }

    /// The user namespace lock `*U*<userid with . as ^>` (`user_namespacelock_full`);
    /// `None` is the global one (`*U*`) that admin tools take for shared mailboxes.
    pub fn user_namespace_lock_file(&self, userid: Option<&[u8]>) -> Result<PathBuf, PathError> {
        let mut name = USER_NAMESPACE_LOCK_PREFIX.to_vec();
        if let Some(u) = userid {
            if u.is_empty() {
                return Err(PathError::BadUserId(String::new()));
            }
            name.extend(u.iter().map(|&b| if b == b'.' { b'^' } else { b }));
        }
        self.named_lock_file(&name)
    }

    /// `$QUOTACHANGE.lock`.
    pub fn quota_change_lock_file(&self) -> Result<PathBuf, PathError> {
        self.named_lock_file(QUOTACHANGE_LOCK)
    }

    /// `mailboxes.db`.
    pub fn mailboxes_db(&self) -> &Path {
        &self.mboxlist_db_path
    }

    /// `quotas.db` (for quotalegacy, [`Layout::quotalegacy_dir`] holds the files).
    pub fn quotas_db(&self) -> &Path {
        &self.quota_db_path
    }

    /// The directory quotalegacy works in: the one holding the `quota_db_path` name.
    pub fn quotalegacy_dir(&self) -> &Path {
        self.quota_db_path.parent().unwrap_or(Path::new(""))
    }

    /// The quotalegacy file of quota root `root` (an internal name, or `domain!` for a
    /// whole domain) (`hash_quota`): `quota/<h>/<root>` where `<h>` hashes the text after
    /// the root's first `.`; with virtdomains, `domain/<h>/<domain>/quota/...`, and
    /// `.../quota/root` for the domain root. Hashed whatever `hashimapspool` says.
    pub fn quotalegacy_file(&self, root: &[u8]) -> Result<PathBuf, PathError> {
        let bad = || PathError::BadQuotaRoot(String::from_utf8_lossy(root).into_owned());
        let mut out = Vec::new();
        let mut rest = root;
        if self.virtdomains.enabled() {
            if let Some(i) = root.iter().position(|&b| b == b'!') {
                let domain = &root[..i];
                rest = &root[i + 1..];
                if rest.is_empty() {
                    // Validate the domain as a mailbox-name domain.
                    let probe = [domain, b"!x"].concat();
                    MboxName::from_internal(&probe, &self.names).map_err(|_| bad())?;
                }
                out.extend_from_slice(b"domain/");
                out.push(dir_hash_c(domain, self.hash.fulldirhash));
                out.push(b'/');
                out.extend_from_slice(domain);
                out.push(b'/');
                if rest.is_empty() {
                    out.extend_from_slice(b"quota/root");
                    return join(self.quotalegacy_dir(), Path::new(OsStr::from_bytes(&out)));
                }
            }
        }
        // The root must be a valid name; its text (with `^`, dots) is the file name.
        MboxName::from_internal(root, &self.names).map_err(|_| bad())?;
        if rest.contains(&b'/') || rest == b"." || rest == b".." {
            return Err(bad());
        }
        let idx = match rest.iter().position(|&b| b == b'.') {
            Some(i) => &rest[i + 1..],
            None => rest,
        };
        out.extend_from_slice(b"quota/");
        out.push(dir_hash_c(idx, self.hash.fulldirhash));
        out.push(b'/');
        out.extend_from_slice(rest);
        join(self.quotalegacy_dir(), Path::new(OsStr::from_bytes(&out)))
    }

    /// A per-user file (`user_hash_meta`). If the user's INBOX uses the legacy layout
    /// (`inbox_uniqueid` is `None`): `user/<h>/<localpart>.<suffix>` under the config
    /// directory (with `domain/<h>/<domain>/` in front for a domain), hashed on the raw local
    /// part whatever `hashimapspool` says (`mboxname_conf_getpath_legacy`). Otherwise
    /// `user/uuid/<a>/<b>/<id>/<suffix>.db` (`mboxid_conf_getpath`).
    pub fn user_file(
        &self,
        userid: &[u8],
        file: UserFile,
        inbox_uniqueid: Option<&str>,
    ) -> Result<PathBuf, PathError> {
        if let Some(id) = inbox_uniqueid {
            let rel = uuid_rel_path(id)?;
            let mut p = join(&self.config_dir.join("user"), &rel)?;
            p.push(format!("{}.db", file.suffix()));
            return Ok(p);
        }
        let inbox = MboxName::user_inbox(userid, &self.names)
            .map_err(|_| PathError::BadUserId(String::from_utf8_lossy(userid).into_owned()))?;
        let full = self.hash.fulldirhash;
        let mut out = Vec::new();
        if let Some(domain) = inbox.domain() {
            out.extend_from_slice(b"domain/");
            out.push(dir_hash_c(domain, full));
            out.push(b'/');
            out.extend_from_slice(domain);
            out.push(b'/');
        }
        let local = inbox.localpart().unwrap_or_default();
        out.extend_from_slice(b"user/");
        out.push(dir_hash_c(local, full));
        out.push(b'/');
        out.extend_from_slice(local);
        out.push(b'.');
        out.extend_from_slice(file.suffix().as_bytes());
        join(&self.config_dir, Path::new(OsStr::from_bytes(&out)))
    }
}

/// `<uid>.`
pub fn message_file_name(uid: u32) -> String {
    format!("{uid}.")
}

/// The UID of a message file name `^[0-9]+\.$` that fits in 32 bits
/// (`mailbox_parse_datafilename`); anything else is not a message file.
pub fn parse_message_file_name(name: &[u8]) -> Option<u32> {
    let digits = name.strip_suffix(b".")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// `root/rel`, refusing results longer than Cyrus's `MAX_MAILBOX_PATH`.
fn join(root: &Path, rel: &Path) -> Result<PathBuf, PathError> {
    let p = root.join(rel);
    if p.as_os_str().len() >= MAX_MAILBOX_PATH {
        return Err(PathError::TooLong(p.display().to_string()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(conf: &str) -> Layout {
        let config = Config::parse(conf.as_bytes(), Path::new("/")).unwrap();
        Layout::from_config(&config).unwrap()
    }

    /// Instance 1 of the docs: legacy dirs, hashimapspool, no fulldirhash.
    fn dir1() -> Layout {
        layout(
            "configdirectory: C\npartition-default: S\nmboxname_lockpath: L\n\
             hashimapspool: true\nunixhierarchysep: no\nmailbox_legacy_dirs: yes\n",
        )
    }

    /// Instance 2: fulldirhash, unixhierarchysep, virtdomains userid, metapartition
    /// header+index, archive partition.
    fn dir2() -> Layout {
        layout(
            "configdirectory: C\npartition-default: S\nmboxname_lockpath: L\n\
             hashimapspool: true\nfulldirhash: true\nvirtdomains: userid\n\
             metapartition-default: M\nmetapartition_files: header index\n\
             archivepartition-default: A\narchive_enabled: yes\n",
        )
    }

    fn legacy(l: &Layout, intname: &str) -> String {
        let n = MboxName::from_internal(intname.as_bytes(), &l.names).unwrap();
        l.data_dir("default", MailboxDir::Legacy(&n))
            .unwrap()
            .display()
            .to_string()
    }

    #[test]
    fn dir_hash_c_both_modes() {
        assert_eq!(dir_hash_c(b"alice", false), b'a');
        assert_eq!(dir_hash_c(b"Alice", false), b'a');
        assert_eq!(dir_hash_c(b"*U*alice", false), b'q');
        assert_eq!(dir_hash_c(b"", false), b'q');
        assert_eq!(dir_hash_c(b"\xC3\xA9", false), b'q');
        // hashed on real characters: "bob.smith" hashes like "bob"
        assert_eq!(dir_hash_c(b"bob.smith", true), b'E');
        assert_eq!(dir_hash_c(b"bob^smith", true), b'F');
        // stops at the first dot
        assert_eq!(
            dir_hash_c(b"example.com", true),
            dir_hash_c(b"example", true)
        );
        assert_eq!(dir_hash_c(b"example.com", true), b'O');
        assert_eq!(dir_hash_c(b"jvjrarkz6m0io2le7qdl2oir", true), b'S');
    }

    /// Every example of cyrus-mailbox-format.md §1.3 and check_paths.py.
    #[test]
    fn legacy_paths_from_the_docs() {
        let l1 = dir1();
        for (name, want) in [
            ("user.alice", "/S/a/user/alice"),
            ("user.alice.Sub.Deep", "/S/a/user/alice/Sub/Deep"),
            ("shared", "/S/s/shared"),
            ("shared.folder", "/S/f/shared/folder"),
            (
                "DELETED.user.alice.Caf&AOk-.6B081284",
                "/S/u/DELETED/user/alice/Caf&AOk-/6B081284",
            ),
        ] {
            assert_eq!(legacy(&l1, name), want, "{name}");
        }
        let l2 = dir2();
        for (name, want) in [
            ("user.bob^smith", "/S/E/user/bob^smith"),
            ("user.bob^smith.Sub^Dir", "/S/E/user/bob^smith/Sub^Dir"),
            ("legacy^top", "/S/T/legacy^top"),
            ("legacy^top.sub", "/S/O/legacy^top/sub"),
            (
                "example.com!user.carol",
                "/S/domain/O/example.com/B/user/carol",
            ),
            (
                "example.com!user.carol.Work",
                "/S/domain/O/example.com/B/user/carol/Work",
            ),
        ] {
            assert_eq!(legacy(&l2, name), want, "{name}");
        }
        let flat = layout("configdirectory: C\npartition-default: S\n");
        assert_eq!(legacy(&flat, "user.alice"), "/S/user/alice");
        assert_eq!(
            legacy(&flat, "example.com!user.alice"),
            "/S/domain/example.com/user/alice"
        );
    }

    #[test]
    fn uuid_paths() {
        let l = dir2();
        let d = MailboxDir::Uuid("jvjrarkz6m0io2le7qdl2oir");
        assert_eq!(
            l.data_dir("default", d).unwrap(),
            Path::new("/S/uuid/j/v/jvjrarkz6m0io2le7qdl2oir")
        );
        assert!(l.data_dir("default", MailboxDir::Uuid("../x")).is_err());
        assert!(l.data_dir("default", MailboxDir::Uuid("a")).is_err());
        assert!(matches!(
            l.data_dir("nope", d),
            Err(PathError::UnknownPartition(_))
        ));
    }

    #[test]
    fn metapartition_and_archive_roots() {
        let l = dir2();
        let d = MailboxDir::Uuid("jvjrarkz6m0io2le7qdl2oir");
        let meta = |f| l.meta_file("default", d, f, false).unwrap();
        let id = "uuid/j/v/jvjrarkz6m0io2le7qdl2oir";
        assert_eq!(
            meta(MetaFile::Header),
            Path::new(&format!("/M/{id}/cyrus.header"))
        );
        assert_eq!(
            meta(MetaFile::Index),
            Path::new(&format!("/M/{id}/cyrus.index"))
        );
        assert_eq!(
            meta(MetaFile::Cache),
            Path::new(&format!("/S/{id}/cyrus.cache"))
        );
        assert_eq!(
            meta(MetaFile::Annotations),
            Path::new(&format!("/S/{id}/cyrus.annotations"))
        );
        assert_eq!(
            meta(MetaFile::ArchiveCache),
            Path::new(&format!("/A/{id}/cyrus.cache"))
        );
        assert_eq!(
            l.meta_file("default", d, MetaFile::Index, true).unwrap(),
            Path::new(&format!("/M/{id}/cyrus.index.NEW"))
        );
        assert_eq!(
            l.message_file("default", d, 12).unwrap(),
            Path::new(&format!("/S/{id}/12."))
        );
        assert_eq!(
            l.archived_message_file("default", d, 12).unwrap(),
            Path::new(&format!("/A/{id}/12."))
        );
        // metadir-* overflow keys win; annotations follow metadir-index
        let l = layout(
            "configdirectory: C\npartition-p: S\nmetapartition-p: M\n\
             metapartition_files: cache\nmetadir-index-p: I\narchivepartition-p: A\n",
        );
        let n = MboxName::from_internal(b"user.a", &l.names).unwrap();
        let d = MailboxDir::Legacy(&n);
        assert_eq!(l.meta_root("p", MetaFile::Index).unwrap(), Path::new("/I"));
        assert_eq!(
            l.meta_root("p", MetaFile::Annotations).unwrap(),
            Path::new("/I")
        );
        assert_eq!(l.meta_root("p", MetaFile::Cache).unwrap(), Path::new("/M"));
        assert_eq!(l.meta_root("p", MetaFile::Header).unwrap(), Path::new("/S"));
        // archive_enabled is off: archivepartition is ignored
        assert_eq!(
            l.meta_root("p", MetaFile::ArchiveCache).unwrap(),
            Path::new("/S")
        );
        assert_eq!(
            l.archived_message_file("p", d, 1).unwrap(),
            Path::new("/S/user/a/1.")
        );
    }

    #[test]
    fn lock_paths_from_the_docs() {
        let l1 = dir1();
        let n = MboxName::from_internal(b"user.alice.Sent", &l1.names).unwrap();
        assert_eq!(
            l1.mailbox_lock_file(MailboxDir::Legacy(&n)).unwrap(),
            Path::new("/L/a/user/alice/Sent.lock")
        );
        let n = MboxName::from_internal(b"user.alice.Sent.2020", &l1.names).unwrap();
        assert_eq!(
            l1.lock_file(&n).unwrap(),
            Path::new("/L/a/user/alice/Sent/2020.lock")
        );
        assert_eq!(
            l1.user_namespace_lock_file(Some(b"alice")).unwrap(),
            Path::new("/L/q/*U*alice.lock")
        );
        assert_eq!(
            l1.user_namespace_lock_file(None).unwrap(),
            Path::new("/L/q/*U*.lock")
        );
        assert_eq!(
            l1.quota_change_lock_file().unwrap(),
            Path::new("/L/q/$QUOTACHANGE.lock")
        );
        assert_eq!(
            l1.mailbox_lock_file(MailboxDir::Uuid("dphrns1q97o1apaycbrkjec3"))
                .unwrap(),
            Path::new("/L/d/dphrns1q97o1apaycbrkjec3.lock")
        );
        assert_eq!(
            l1.mailbox_lock_file(MailboxDir::Uuid("2tinn8o")).unwrap(),
            Path::new("/L/q/2tinn8o.lock")
        );
        let l2 = dir2();
        assert_eq!(
            l2.mailbox_lock_file(MailboxDir::Uuid("jvjrarkz6m0io2le7qdl2oir"))
                .unwrap(),
            Path::new("/L/S/jvjrarkz6m0io2le7qdl2oir.lock")
        );
        assert_eq!(
            l2.user_namespace_lock_file(None).unwrap(),
            Path::new("/L/D/*U*.lock")
        );
        assert_eq!(
            l2.user_namespace_lock_file(Some(b"bob.smith")).unwrap(),
            Path::new("/L/I/*U*bob^smith.lock")
        );
        assert_eq!(
            l2.user_namespace_lock_file(Some(b"alice@example.com"))
                .unwrap(),
            Path::new("/L/N/*U*alice@example^com.lock")
        );
        assert!(l2.user_namespace_lock_file(Some(b"a/b")).is_err());
    }

    #[test]
    fn quotalegacy_files() {
        let l1 = dir1();
        let q = |l: &Layout, r: &str| l.quotalegacy_file(r.as_bytes()).unwrap();
        assert_eq!(q(&l1, "user.alice"), Path::new("/C/quota/a/user.alice"));
        assert_eq!(
            q(&l1, "shared.folder"),
            Path::new("/C/quota/f/shared.folder")
        );
        assert_eq!(q(&l1, "shared"), Path::new("/C/quota/s/shared"));
        let vd = layout("configdirectory: C\npartition-default: S\nvirtdomains: on\n");
        assert_eq!(
            q(&vd, "example.com!user.alice"),
            Path::new("/C/domain/e/example.com/quota/a/user.alice")
        );
        assert_eq!(
            q(&vd, "example.com!"),
            Path::new("/C/domain/e/example.com/quota/root")
        );
        assert!(vd.quotalegacy_file(b"../x!").is_err());
        assert!(vd.quotalegacy_file(b"").is_err());
        assert!(l1.quotalegacy_file(b"user.a/b").is_err());
        let custom = layout("configdirectory: C\npartition-default: S\nquota_db_path: /Q/q.db\n");
        assert_eq!(q(&custom, "user.bob"), Path::new("/Q/quota/b/user.bob"));
        assert_eq!(custom.mailboxes_db(), Path::new("/C/mailboxes.db"));
        assert_eq!(custom.quotas_db(), Path::new("/Q/q.db"));
    }

    #[test]
    fn per_user_files() {
        let l1 = dir1();
        assert_eq!(
            l1.user_file(b"alice", UserFile::Seen, None).unwrap(),
            Path::new("/C/user/a/alice.seen")
        );
        assert_eq!(
            l1.user_file(b"john.doe", UserFile::Subscriptions, None)
                .unwrap(),
            Path::new("/C/user/j/john.doe.sub")
        );
        let l2 = dir2();
        assert_eq!(
            l2.user_file(b"carol@example.com", UserFile::Counters, None)
                .unwrap(),
            Path::new("/C/domain/O/example.com/user/B/carol.counters")
        );
        assert_eq!(
            l2.user_file(
                b"x",
                UserFile::Conversations,
                Some("jvjrarkz6m0io2le7qdl2oir")
            )
            .unwrap(),
            Path::new("/C/user/uuid/j/v/jvjrarkz6m0io2le7qdl2oir/conversations.db")
        );
        assert!(l1.user_file(b"a/b", UserFile::Seen, None).is_err());
    }

    #[test]
    fn message_file_names() {
        assert_eq!(parse_message_file_name(b"1."), Some(1));
        assert_eq!(parse_message_file_name(b"100."), Some(100));
        assert_eq!(parse_message_file_name(b"007."), Some(7));
        assert_eq!(parse_message_file_name(b"4294967295."), Some(u32::MAX));
        for bad in [
            &b"4294967296."[..],
            b".",
            b"1",
            b"1.a",
            b"a1.",
            b"1..",
            b"-1.",
            b"cyrus.index",
            b"",
        ] {
            assert_eq!(parse_message_file_name(bad), None, "{:?}", bad);
        }
        assert_eq!(message_file_name(42), "42.");
    }

    #[test]
    fn overlong_paths_are_refused() {
        let l = layout(&format!(
            "configdirectory: C\npartition-default: /{}\n",
            "x/".repeat(2100)
        ));
        let n = MboxName::from_internal(b"user.a", &l.names).unwrap();
        assert!(matches!(
            l.data_dir("default", MailboxDir::Legacy(&n)),
            Err(PathError::TooLong(_))
        ));
    }

    /// The fixture stores written by real Cyrus 3.6.1 (`fixtures/legacy`, `fixtures/uuid`):
    /// every mailbox of `expected/ctl_mboxlist-d.json` must map to exactly the directory that
    /// holds its `cyrus.header` (with the uniqueid in it), every header directory must be
    /// such a mailbox, and every message, quota and per-user file must be where our functions
    /// put it.
    mod real_cyrus_fixtures {
        use super::*;
        use std::collections::BTreeSet;

        fn fixture(name: &str) -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(name)
        }

        /// `N` and `I` of a dlist `cyrus.header` (4th line `%(T .. N .. I ..`): atoms or
        /// quoted strings, in the order Cyrus writes them.
        fn header_name_and_id(path: &Path) -> (Vec<u8>, String) {
            let data = std::fs::read(path).unwrap();
            let line = data.split(|&b| b == b'\n').nth(3).unwrap();
            let mut rest = line.strip_prefix(b"%(").unwrap();
            let (mut name, mut id) = (None, None);
            while name.is_none() || id.is_none() {
                let sp = rest.iter().position(|&b| b == b' ').unwrap();
                let key = &rest[..sp];
                rest = &rest[sp + 1..];
                let value = if rest[0] == b'"' {
                    let end = 1 + rest[1..].iter().position(|&b| b == b'"').unwrap();
                    let v = rest[1..end].to_vec();
                    rest = &rest[end + 2..];
                    v
                } else {
                    let end = rest.iter().position(|&b| b == b' ').unwrap();
                    let v = rest[..end].to_vec();
                    rest = &rest[end + 1..];
                    v
                };
                match key {
                    b"N" => name = Some(value),
                    b"I" => id = Some(String::from_utf8(value).unwrap()),
                    _ => {}
                }
            }
            (name.unwrap(), id.unwrap())
        }

        fn files_under(dir: &Path) -> Vec<PathBuf> {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .collect()
        }

        fn check_store(fixture_name: &str) -> usize {
            let root = fixture(fixture_name);
            let config = Config::load(&root.join("imapd.conf")).unwrap();
            let l = Layout::from_config(&config).unwrap();
            let spool = root.join("spool");
            assert_eq!(l.partition("default").unwrap().data, spool);

            let dump = std::fs::read_to_string(root.join("expected/ctl_mboxlist-d.json")).unwrap();
            let dump: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&dump).unwrap();
            let mut expected_dirs = BTreeSet::new();
            let mut tombstones = 0;
            for (intname, entry) in &dump {
                let id = entry["uniqueid"].as_str().unwrap();
                let mbtype = entry["mbtype"].as_str().unwrap();
                let name = MboxName::from_internal(intname.as_bytes(), &l.names).unwrap();
                assert_eq!(name.to_internal(), intname.as_bytes());
                if mbtype.contains('d') {
                    // a tombstone (deleted, no partition): no directory
                    tombstones += 1;
                    continue;
                }
                let legacy = mbtype.contains('l');
                let part = entry["partition"].as_str().unwrap();
                let db = name.to_dbname();
                assert_eq!(MboxName::from_dbname(&db, &l.names).unwrap(), name);
                let ext = name.to_external(&l.names).unwrap();
                assert_eq!(MboxName::from_external(&ext, &l.names).unwrap(), name);
                let dir = if legacy {
                    MailboxDir::Legacy(&name)
                } else {
                    MailboxDir::Uuid(id)
                };
                let data = l.data_dir(part, dir).unwrap();
                let header = l.meta_file(part, dir, MetaFile::Header, false).unwrap();
                assert_eq!(header, data.join("cyrus.header"));
                assert!(header.is_file(), "{intname}: no {}", header.display());
                assert!(l
                    .meta_file(part, dir, MetaFile::Index, false)
                    .unwrap()
                    .is_file());
                let (hname, hid) = header_name_and_id(&header);
                assert_eq!(hid, id, "{intname}");
                // The header N parses and round-trips (a renamed legacy mailbox, such as
                // the DELETED one, keeps its old N: mailboxes.db is authoritative).
                let hn = MboxName::from_internal(&hname, &l.names).unwrap();
                assert_eq!(hn.to_internal(), hname);
                if hn.deleted().is_none() && name.deleted().is_none() {
                    assert_eq!(hn, name);
                }
                for f in std::fs::read_dir(&data).unwrap() {
                    let f = f.unwrap();
                    let fname = f.file_name();
                    if let Some(uid) = parse_message_file_name(fname.as_bytes()) {
                        assert_eq!(l.message_file(part, dir, uid).unwrap(), f.path());
                    } else {
                        let n = fname.to_string_lossy();
                        assert!(n.starts_with("cyrus.") || f.path().is_dir(), "odd {n}");
                    }
                }
                expected_dirs.insert(data);
            }
            let header_dirs: BTreeSet<PathBuf> = files_under(&spool)
                .into_iter()
                .filter(|p| p.file_name() == Some(OsStr::new("cyrus.header")))
                .map(|p| p.parent().unwrap().to_path_buf())
                .collect();
            assert_eq!(header_dirs, expected_dirs);
            assert_eq!(expected_dirs.len() + tombstones, dump.len());
            expected_dirs.len()
        }

        #[test]
        fn legacy_store_mailbox_dirs() {
            assert_eq!(check_store("legacy"), 14);
        }

        #[test]
        fn uuid_store_mailbox_dirs() {
            assert!(check_store("uuid") >= 14);
        }

        #[test]
        fn legacy_store_quota_and_user_files() {
            let root = fixture("legacy");
            let l = Layout::from_config(&Config::load(&root.join("imapd.conf")).unwrap()).unwrap();
            let quota = files_under(&root.join("conf/quota"));
            assert_eq!(quota.len(), 5);
            for q in quota {
                let name = q.file_name().unwrap().as_bytes();
                assert_eq!(l.quotalegacy_file(name).unwrap(), q);
            }
            let users = files_under(&root.join("conf/user"));
            assert!(!users.is_empty());
            for u in users {
                let fname = u.file_name().unwrap().as_bytes();
                let dot = fname.iter().rposition(|&b| b == b'.').unwrap();
                let file = match &fname[dot + 1..] {
                    b"seen" => UserFile::Seen,
                    b"sub" => UserFile::Subscriptions,
                    b"counters" => UserFile::Counters,
                    b"conversations" => UserFile::Conversations,
                    other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
                };
                assert_eq!(l.user_file(&fname[..dot], file, None).unwrap(), u);
            }
        }

        #[test]
        fn uuid_store_user_files() {
            let root = fixture("uuid");
            let l = Layout::from_config(&Config::load(&root.join("imapd.conf")).unwrap()).unwrap();
            let mut checked = 0;
            for u in files_under(&root.join("conf/user")) {
                let rel = u.strip_prefix(root.join("conf/user")).unwrap();
                let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
                match parts.as_slice() {
                    ["uuid", _, _, id, file] => {
                        let suffix = file.strip_suffix(".db").unwrap();
                        let kind = match suffix {
                            "seen" => UserFile::Seen,
                            "sub" => UserFile::Subscriptions,
                            "counters" => UserFile::Counters,
                            "conversations" => UserFile::Conversations,
                            other => panic!("unexpected {other}"),
                        };
                        assert_eq!(l.user_file(b"ignored", kind, Some(id)).unwrap(), u);
                    }
                    // the admin `cyrus` has no INBOX: legacy per-user path, fulldirhash
                    [_, "cyrus.seen"] => {
                        assert_eq!(l.user_file(b"cyrus", UserFile::Seen, None).unwrap(), u);
                    }
                    other => panic!("unexpected {other:?}"),
                }
                checked += 1;
            }
            assert!(checked > 0);
        }
    }
}
