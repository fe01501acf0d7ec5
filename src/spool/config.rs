//! `imapd.conf`, read the way Cyrus 3.6 reads it (`lib/libconfig.c`, `config_read_file`).
//!
//! This module owns the syntax of the file, the typed view of the options cyrkit uses and their
//! Cyrus 3.6.1 defaults (from `lib/imapoptions` of tag `cyrus-imapd-3.6.1`). It does not know
//! about mailbox names or spool paths (see [`super::names`] and [`super::paths`]).
//!
//! Syntax, as in `config_read_file`:
//! * a line whose first non-blank byte is `#`, or a blank line, is ignored; there are no
//!   trailing comments (`key: a # b` has the value `a # b`);
//! * a line ending in `\` (immediately before the newline) continues on the next line;
//! * `key: value`: the key is `[A-Za-z0-9_-]*` (an optional leading `@` marks a directive),
//!   case-insensitive (stored lower-cased) and must be followed directly by `:`; blanks around
//!   the value are removed; an empty value is an error;
//! * `@include: FILE` reads another file in place; a file read twice is an error;
//! * any key given twice is an error (Cyrus: "option 'x' was specified twice"), including
//!   across included files;
//! * switches accept what `config_parse_switch` accepts: a value starting with `1`, `y`, `t`
//!   or `on` is true, one starting with `0`, `n`, `f` or `of` is false (case-sensitive, so
//!   `Yes` is an error, and `nonsense` is false, as in Cyrus);
//! * enum options take their exact (case-sensitive) names; `1 yes t true` mean `on` and
//!   `0 no f false` mean `off`; integers are read like C `strtol(.., 0)` (`0x` hex, leading-0
//!   octal) and must use the whole value;
//! * `<service>_<option>` overrides `<option>` for that service only ([`Config::with_service`]).
//!
//! Our extensions: a relative path value (configdirectory, `partition-*`, ...) is taken
//! relative to the directory of the file it is written in, so fixture spools can carry
//! portable configs (Cyrus would use its working directory), and `@include` paths likewise.
//! `{configdirectory}` at the start of a path value is replaced as Cyrus does in `config_read`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Maximum nesting of `@include` files (Cyrus has none but detects a file read twice).
const MAX_INCLUDE_DEPTH: usize = 16;

/// The placeholder Cyrus replaces with the configuration directory (`config_read`).
const CONFIGDIRECTORY_PLACEHOLDER: &str = "{configdirectory}";

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: invalid option name (a line must be `name: value`)", file.display())]
    InvalidOptionName { file: PathBuf, line: usize },
    #[error("{}:{line}: empty value for option `{key}`", file.display())]
    EmptyValue {
        file: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: unknown directive `{directive}` (only @include exists)", file.display())]
    InvalidDirective {
        file: PathBuf,
        line: usize,
        directive: String,
    },
    #[error("{}:{line}: value of `{key}` is not UTF-8", file.display())]
    NotUtf8 {
        file: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: NUL byte in line", file.display())]
    NulByte { file: PathBuf, line: usize },
    #[error(
        "{}:{line}: option `{key}` given twice (first at {}:{first_line})",
        file.display(),
        first_file.display()
    )]
    Duplicate {
        file: PathBuf,
        line: usize,
        key: String,
        first_file: PathBuf,
        first_line: usize,
    },
    #[error("{}:{line}: invalid value `{value}` for `{key}`: expected {expected}", file.display())]
    InvalidValue {
        file: PathBuf,
        line: usize,
        key: String,
        value: String,
        expected: String,
    },
    #[error("{}:{line}: configuration file {} included twice", file.display(), included.display())]
    IncludedTwice {
        file: PathBuf,
        line: usize,
        included: PathBuf,
    },
    #[error("{}:{line}: @include nested more than {MAX_INCLUDE_DEPTH} deep", file.display())]
    IncludeTooDeep { file: PathBuf, line: usize },
    #[error("{}: `configdirectory` is not set (Cyrus refuses such a file)", file.display())]
    MissingConfigDirectory { file: PathBuf },
}

/// One `key: value` line as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, blanks trimmed, continuation lines joined.
    pub value: String,
    /// The file the line is in.
    pub file: PathBuf,
    /// 1-based number of the (first physical) line.
    pub line: usize,
    /// Directory relative paths in this entry are resolved against.
    base_dir: PathBuf,
}

/// The type of a known option, as declared in `lib/imapoptions`.
#[derive(Debug, Clone, Copy)]
enum OptKind {
    String,
    /// A STRING option holding a file system path (gets `{configdirectory}` and relative
    /// path resolution).
    Path,
    Switch,
    Int,
    Enum(&'static [&'static str]),
    StringList(&'static [&'static str]),
    Bitfield(&'static [&'static str]),
}

/// A known option: name, type, Cyrus 3.6.1 default (`None` = NULL).
struct OptSpec {
    name: &'static str,
    kind: OptKind,
    default: Option<&'static str>,
}

const DB_BACKENDS: &[&str] = &["flat", "skiplist", "sql", "twoskip", "zeroskip"];
const QUOTA_BACKENDS: &[&str] = &[
    "flat",
    "skiplist",
    "sql",
    "quotalegacy",
    "twoskip",
    "zeroskip",
];
/// `metapartition_files` values, in the order of their bits in Cyrus.
const METAPARTITION_FILE_NAMES: &[&str] = &[
    "header",
    "index",
    "cache",
    "expunge",
    "squat",
    "annotations",
    "lock",
    "dav",
    "archivecache",
];

/// The options cyrkit reads, with the defaults of Cyrus 3.6.1's `lib/imapoptions`.
const OPTIONS: &[OptSpec] = &[
    opt("admins", OptKind::String, Some("")),
    opt("altnamespace", OptKind::Switch, Some("1")),
    opt("archive_enabled", OptKind::Switch, Some("0")),
    opt("configdirectory", OptKind::Path, None),
    opt(
        "conversations_db",
        OptKind::StringList(&["skiplist", "sql", "twoskip", "zeroskip"]),
        Some("skiplist"),
    ),
    opt("defaultdomain", OptKind::String, Some("internal")),
    opt("defaultpartition", OptKind::String, None),
    opt(
        "delete_mode",
        OptKind::Enum(&["immediate", "delayed"]),
        Some("delayed"),
    ),
    opt("deletedprefix", OptKind::String, Some("DELETED")),
    opt(
        "expunge_mode",
        OptKind::Enum(&["immediate", "semidelayed", "delayed"]),
        Some("delayed"),
    ),
    opt("fulldirhash", OptKind::Switch, Some("0")),
    opt("hashimapspool", OptKind::Switch, Some("0")),
    opt("improved_mboxlist_sort", OptKind::Switch, Some("0")),
    opt("mailbox_legacy_dirs", OptKind::Switch, Some("0")),
    opt("maxheaderlines", OptKind::Int, Some("1000")),
    opt(
        "mboxlist_db",
        OptKind::StringList(DB_BACKENDS),
        Some("twoskip"),
    ),
    opt("mboxlist_db_path", OptKind::Path, None),
    opt("mboxname_lockpath", OptKind::Path, None),
    opt(
        "metapartition_files",
        OptKind::Bitfield(METAPARTITION_FILE_NAMES),
        Some(""),
    ),
    opt("munge8bit", OptKind::Switch, Some("1")),
    opt("popuseimapflags", OptKind::Switch, Some("0")),
    opt(
        "quota_db",
        OptKind::StringList(QUOTA_BACKENDS),
        Some("quotalegacy"),
    ),
    opt("quota_db_path", OptKind::Path, None),
    opt("rfc2047_utf8", OptKind::Switch, Some("0")),
    opt(
        "seenstate_db",
        OptKind::StringList(&["flat", "skiplist", "twoskip", "zeroskip"]),
        Some("twoskip"),
    ),
    opt("singleinstancestore", OptKind::Switch, Some("1")),
    opt(
        "subscription_db",
        OptKind::StringList(&["flat", "skiplist", "twoskip", "zeroskip"]),
        Some("flat"),
    ),
    opt(
        "uidl_format",
        OptKind::Enum(&["uidonly", "cyrus", "dovecot", "courier"]),
        Some("cyrus"),
    ),
    opt("unixhierarchysep", OptKind::Switch, Some("1")),
    opt(
        "virtdomains",
        OptKind::Enum(&["off", "userid", "on"]),
        Some("off"),
    ),
];

const fn opt(name: &'static str, kind: OptKind, default: Option<&'static str>) -> OptSpec {
    OptSpec {
        name,
        kind,
        default,
    }
}

fn spec(key: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.name == key)
}

/// `virtdomains`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtDomains {
    Off,
    /// Domain taken from the userid (`alice@example.com`).
    Userid,
    /// Also from the server address the client connected to.
    On,
}

impl VirtDomains {
    /// Whether domains are in use at all (Cyrus's `config_virtdomains` is non-zero).
    pub fn enabled(self) -> bool {
        self != VirtDomains::Off
    }
}

/// `delete_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    Immediate,
    Delayed,
}

/// `expunge_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpungeMode {
    Immediate,
    SemiDelayed,
    Delayed,
}

/// `uidl_format` (POP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidlFormat {
    UidOnly,
    Cyrus,
    Dovecot,
    Courier,
}

/// A cyrusdb backend name (`mboxlist_db`, `quota_db`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbBackend {
    Flat,
    Skiplist,
    Sql,
    Twoskip,
    Zeroskip,
    QuotaLegacy,
}

impl DbBackend {
    fn from_name(name: &str) -> Option<DbBackend> {
        Some(match name {
            "flat" => DbBackend::Flat,
            "skiplist" => DbBackend::Skiplist,
            "sql" => DbBackend::Sql,
            "twoskip" => DbBackend::Twoskip,
            "zeroskip" => DbBackend::Zeroskip,
            "quotalegacy" => DbBackend::QuotaLegacy,
            _ => return None,
        })
    }

    /// The name as written in imapd.conf.
    pub fn name(self) -> &'static str {
        match self {
            DbBackend::Flat => "flat",
            DbBackend::Skiplist => "skiplist",
            DbBackend::Sql => "sql",
            DbBackend::Twoskip => "twoskip",
            DbBackend::Zeroskip => "zeroskip",
            DbBackend::QuotaLegacy => "quotalegacy",
        }
    }
}

/// The set of `metapartition_files` (Cyrus's `IMAP_ENUM_METAPARTITION_FILES_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaPartitionFiles(u16);

impl MetaPartitionFiles {
    pub const HEADER: MetaPartitionFiles = MetaPartitionFiles(1 << 0);
    pub const INDEX: MetaPartitionFiles = MetaPartitionFiles(1 << 1);
    pub const CACHE: MetaPartitionFiles = MetaPartitionFiles(1 << 2);
    pub const EXPUNGE: MetaPartitionFiles = MetaPartitionFiles(1 << 3);
    pub const SQUAT: MetaPartitionFiles = MetaPartitionFiles(1 << 4);
    pub const ANNOTATIONS: MetaPartitionFiles = MetaPartitionFiles(1 << 5);
    pub const LOCK: MetaPartitionFiles = MetaPartitionFiles(1 << 6);
    pub const DAV: MetaPartitionFiles = MetaPartitionFiles(1 << 7);
    pub const ARCHIVECACHE: MetaPartitionFiles = MetaPartitionFiles(1 << 8);

    /// No file on the metapartition (the default).
    pub const fn empty() -> MetaPartitionFiles {
        MetaPartitionFiles(0)
    }

    /// Whether every file of `other` is in `self`.
    pub const fn contains(self, other: MetaPartitionFiles) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both sets.
    pub const fn union(self, other: MetaPartitionFiles) -> MetaPartitionFiles {
        MetaPartitionFiles(self.0 | other.0)
    }

    fn parse(value: &str) -> Option<MetaPartitionFiles> {
        let mut bits = 0u16;
        for word in value.split(is_c_space).filter(|w| !w.is_empty()) {
            let pos = METAPARTITION_FILE_NAMES.iter().position(|n| *n == word)?;
            bits |= 1 << pos;
        }
        Some(MetaPartitionFiles(bits))
    }
}

/// A parsed imapd.conf.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lower-cased key → entry, every line of every included file.
    entries: BTreeMap<String, Entry>,
    /// The top-level file (for messages).
    file: PathBuf,
    /// Service name whose `<service>_<key>` entries override `<key>`.
    service: Option<String>,
}

/// Reads the file an `@include` names.
pub type IncludeLoader<'a> = dyn FnMut(&Path) -> std::io::Result<Vec<u8>> + 'a;

impl Config {
    /// Reads and parses `path`; relative values are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut loader = |p: &Path| std::fs::read(p);
        Config::parse_with_loader(&text, path, &base, &mut loader)
    }

    /// Parses `text`; relative paths (values and `@include`s) are resolved against `base_dir`.
    /// `@include`d files are read from disk.
    pub fn parse(text: &[u8], base_dir: &Path) -> Result<Config, ConfigError> {
        let mut loader = |p: &Path| std::fs::read(p);
        let name = base_dir.join("imapd.conf");
        Config::parse_with_loader(text, &name, base_dir, &mut loader)
    }

    /// Parses `text` (named `file` in messages), reading includes through `loader`: lets tests
    /// and fuzzers parse without touching the file system.
    pub fn parse_with_loader(
        text: &[u8],
        file: &Path,
        base_dir: &Path,
        loader: &mut IncludeLoader<'_>,
    ) -> Result<Config, ConfigError> {
        let mut reader = Reader {
            entries: BTreeMap::new(),
            included: Vec::new(),
            loader,
        };
        reader.included.push(file.to_path_buf());
        reader.read(text, file, base_dir, 0)?;
        let mut config = Config {
            entries: reader.entries,
            file: file.to_path_buf(),
            service: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// The same configuration as seen by service `ident` (`imap`, `lmtp`, `pop3`,
    /// `reconstruct`, ...): `ident_key` entries override `key`, as `config_getoverflowstring`
    /// and `config_read_file` do for `config_ident`.
    pub fn with_service(mut self, ident: &str) -> Result<Config, ConfigError> {
        self.service = Some(ident.to_ascii_lowercase());
        self.validate()?;
        Ok(self)
    }

    /// The file this configuration was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Checks the value of every known option and of `defaultpartition`, as `config_read`
    /// does when it reads the file.
    fn validate(&mut self) -> Result<(), ConfigError> {
        for spec in OPTIONS {
            if let Some(entry) = self.entry(spec.name) {
                check_value(spec, entry)?;
            }
        }
        if self.entry("configdirectory").is_none() {
            return Err(ConfigError::MissingConfigDirectory {
                file: self.file.clone(),
            });
        }
        // config_read: defaultpartition must be alphanumeric and is lower-cased.
        if let Some(entry) = self.entry("defaultpartition") {
            if !entry.value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(
                    entry,
                    "defaultpartition",
                    "letters and digits only",
                ));
            }
            let key = self.effective_key("defaultpartition");
            if let Some(e) = self.entries.get_mut(&key) {
                e.value.make_ascii_lowercase();
            }
        }
        Ok(())
    }

    /// The key actually used for `key`: the service-specific one when present.
    fn effective_key(&self, key: &str) -> String {
        if let Some(service) = &self.service {
            let specific = format!("{service}_{key}");
            if self.entries.contains_key(&specific) {
                return specific;
            }
        }
        key.to_string()
    }

    /// The entry in force for `key` (lower-case), honouring the service override.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(&self.effective_key(key))
    }

    /// Raw value of `key` (lower-case), if written in the file.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| e.value.as_str())
    }

    /// Every entry, keyed by lower-cased key as written (service prefixes not applied).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A switch: the value in the file, else the Cyrus default of a known option, else
    /// `default`. Errors name the file and line of a value that is not a switch.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.entry(key) {
            Some(e) => parse_switch(&e.value).ok_or_else(|| invalid(e, key, "a switch (yes/no)")),
            None => Ok(known_default(key).and_then(parse_switch).unwrap_or(default)),
        }
    }

    /// An integer read like C `strtol(value, .., 0)`; default as for [`Config::get_bool`].
    pub fn get_int(&self, key: &str, default: i64) -> Result<i64, ConfigError> {
        match self.entry(key) {
            Some(e) => parse_c_long(&e.value).ok_or_else(|| invalid(e, key, "an integer")),
            None => Ok(known_default(key).and_then(parse_c_long).unwrap_or(default)),
        }
    }

    /// A duration in seconds, written as Cyrus's DURATION options are (`90`, `3s`, `1h30m`;
    /// a bare number is in `default_unit`, one of `d h m s`); `default` when not set.
    pub fn get_duration(
        &self,
        key: &str,
        default_unit: u8,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match self.entry(key) {
            Some(e) => parse_duration(&e.value, default_unit)
                .ok_or_else(|| invalid(e, key, "a duration such as 30s, 5m or 1h30m")),
            None => Ok(default),
        }
    }

    /// A path: `{configdirectory}` expanded and, if relative, resolved against the
    /// directory of the file that sets it. `None` if the key is not set.
    pub fn get_path(&self, key: &str) -> Option<PathBuf> {
        let entry = self.entry(key)?;
        Some(self.resolve_path(entry))
    }

    fn resolve_path(&self, entry: &Entry) -> PathBuf {
        let value = entry.value.as_str();
        let prefix = value.get(..CONFIGDIRECTORY_PLACEHOLDER.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(CONFIGDIRECTORY_PLACEHOLDER)) {
            let rest = &value[CONFIGDIRECTORY_PLACEHOLDER.len()..];
            let mut s = self.config_directory().into_os_string();
            s.push(rest);
            return PathBuf::from(s);
        }
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            entry.base_dir.join(p)
        }
    }

    fn known_value(&self, key: &str) -> &str {
        self.get(key)
            .or_else(|| known_default(key))
            .unwrap_or_default()
    }

    fn known_bool(&self, key: &str) -> bool {
        parse_switch(self.known_value(key)).unwrap_or(false)
    }

    /// An ENUM value with Cyrus's on/off aliases applied.
    fn known_enum(&self, key: &str) -> &str {
        normalize_enum(self.known_value(key))
    }

    /// `configdirectory` (required; checked when parsing).
    pub fn config_directory(&self) -> PathBuf {
        match self.entry("configdirectory") {
            Some(entry) => {
                let p = Path::new(&entry.value);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    entry.base_dir.join(p)
                }
            }
            None => PathBuf::new(),
        }
    }

    /// Every `partition-<name>`, name → directory.
    pub fn partitions(&self) -> BTreeMap<String, PathBuf> {
        let mut names: Vec<&str> = self
            .entries
            .keys()
            .filter_map(|k| k.strip_prefix("partition-"))
            .collect();
        if let Some(service) = &self.service {
            let prefix = format!("{service}_partition-");
            names.extend(self.entries.keys().filter_map(|k| k.strip_prefix(&prefix)));
        }
        names
            .into_iter()
            .filter_map(|n| Some((n.to_string(), self.partition_dir(n)?)))
            .collect()
    }

    /// `partition-<name>` (`config_partitiondir`).
    pub fn partition_dir(&self, name: &str) -> Option<PathBuf> {
        self.get_path(&format!("partition-{name}"))
    }

    /// `metapartition-<name>` (`config_metapartitiondir`).
    pub fn metapartition_dir(&self, name: &str) -> Option<PathBuf> {
        self.get_path(&format!("metapartition-{name}"))
    }

    /// `archivepartition-<name>`, only when `archive_enabled` is on
    /// (`config_archivepartitiondir` ignores the key otherwise).
    pub fn archivepartition_dir(&self, name: &str) -> Option<PathBuf> {
        if !self.archive_enabled() {
            return None;
        }
        self.get_path(&format!("archivepartition-{name}"))
    }

    /// `metadir-<file>-<partition>` overflow key (`mboxname_metapath`); `file` is one of
    /// `header index cache squat dav archivecache`.
    pub fn metadir(&self, file: &str, partition: &str) -> Option<PathBuf> {
        self.get_path(&format!("metadir-{file}-{partition}"))
    }

    /// `defaultpartition` (NULL by default: Cyrus then picks a partition by free space).
    pub fn default_partition(&self) -> Option<&str> {
        self.get("defaultpartition")
    }

    /// `metapartition_files` (default: none).
    pub fn metapartition_files(&self) -> MetaPartitionFiles {
        MetaPartitionFiles::parse(self.known_value("metapartition_files")).unwrap_or_default()
    }

    /// `hashimapspool` (default off).
    pub fn hashimapspool(&self) -> bool {
        self.known_bool("hashimapspool")
    }

    /// `fulldirhash` (default off).
    pub fn fulldirhash(&self) -> bool {
        self.known_bool("fulldirhash")
    }

    /// `mailbox_legacy_dirs` (default off: new mailboxes use the uuid layout).
    pub fn mailbox_legacy_dirs(&self) -> bool {
        self.known_bool("mailbox_legacy_dirs")
    }

    /// `unixhierarchysep` (default on in 3.x).
    pub fn unixhierarchysep(&self) -> bool {
        self.known_bool("unixhierarchysep")
    }

    /// `altnamespace` (default on in 3.x; only affects client names).
    pub fn altnamespace(&self) -> bool {
        self.known_bool("altnamespace")
    }

    /// `virtdomains` (default off).
    pub fn virtdomains(&self) -> VirtDomains {
        match self.known_enum("virtdomains") {
            "userid" => VirtDomains::Userid,
            "on" => VirtDomains::On,
            _ => VirtDomains::Off,
        }
    }

    /// `defaultdomain` (default `internal`).
    pub fn defaultdomain(&self) -> &str {
        self.known_value("defaultdomain")
    }

    /// `deletedprefix` (default `DELETED`).
    pub fn deletedprefix(&self) -> &str {
        self.known_value("deletedprefix")
    }

    /// `delete_mode` (default delayed).
    pub fn delete_mode(&self) -> DeleteMode {
        match self.known_enum("delete_mode") {
            "immediate" => DeleteMode::Immediate,
            _ => DeleteMode::Delayed,
        }
    }

    /// `expunge_mode` (default delayed).
    pub fn expunge_mode(&self) -> ExpungeMode {
        match self.known_enum("expunge_mode") {
            "immediate" => ExpungeMode::Immediate,
            "semidelayed" => ExpungeMode::SemiDelayed,
            _ => ExpungeMode::Delayed,
        }
    }

    fn backend(&self, key: &str) -> DbBackend {
        DbBackend::from_name(self.known_value(key)).unwrap_or(DbBackend::Twoskip)
    }

    /// `mboxlist_db` (default twoskip).
    pub fn mboxlist_db(&self) -> DbBackend {
        self.backend("mboxlist_db")
    }

    /// `mboxlist_db_path` (default `<configdirectory>/mailboxes.db`).
    pub fn mboxlist_db_path(&self) -> PathBuf {
        self.get_path("mboxlist_db_path")
            .unwrap_or_else(|| self.config_directory().join("mailboxes.db"))
    }

    /// `quota_db` (default quotalegacy).
    pub fn quota_db(&self) -> DbBackend {
        self.backend("quota_db")
    }

    /// `quota_db_path` (default `<configdirectory>/quotas.db`; quotalegacy uses the
    /// directory holding that name).
    pub fn quota_db_path(&self) -> PathBuf {
        self.get_path("quota_db_path")
            .unwrap_or_else(|| self.config_directory().join("quotas.db"))
    }

    /// `subscription_db` (default flat).
    pub fn subscription_db(&self) -> DbBackend {
        self.backend("subscription_db")
    }

    /// `seenstate_db` (default twoskip).
    pub fn seenstate_db(&self) -> DbBackend {
        self.backend("seenstate_db")
    }

    /// `conversations_db` (default skiplist).
    pub fn conversations_db(&self) -> DbBackend {
        self.backend("conversations_db")
    }

    /// `mboxname_lockpath` (default `<configdirectory>/lock`, `mboxname_lockpath_suffix`).
    pub fn mboxname_lockpath(&self) -> PathBuf {
        self.get_path("mboxname_lockpath")
            .unwrap_or_else(|| self.config_directory().join("lock"))
    }

    /// `singleinstancestore` (default on).
    pub fn singleinstancestore(&self) -> bool {
        self.known_bool("singleinstancestore")
    }

    /// `admins`, split on blanks (default none).
    pub fn admins(&self) -> Vec<&str> {
        self.known_value("admins")
            .split(is_c_space)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// `munge8bit` (default on).
    pub fn munge8bit(&self) -> bool {
        self.known_bool("munge8bit")
    }

    /// `maxheaderlines` (default 1000).
    pub fn maxheaderlines(&self) -> i64 {
        parse_c_long(self.known_value("maxheaderlines")).unwrap_or(1000)
    }

    /// `rfc2047_utf8` (default off).
    pub fn rfc2047_utf8(&self) -> bool {
        self.known_bool("rfc2047_utf8")
    }

    /// `uidl_format` (default cyrus).
    pub fn uidl_format(&self) -> UidlFormat {
        match self.known_enum("uidl_format") {
            "uidonly" => UidlFormat::UidOnly,
            "dovecot" => UidlFormat::Dovecot,
            "courier" => UidlFormat::Courier,
            _ => UidlFormat::Cyrus,
        }
    }

    /// `popuseimapflags` (default off).
    pub fn popuseimapflags(&self) -> bool {
        self.known_bool("popuseimapflags")
    }

    /// `archive_enabled` (default off).
    pub fn archive_enabled(&self) -> bool {
        self.known_bool("archive_enabled")
    }

    /// `improved_mboxlist_sort` (default off).
    pub fn improved_mboxlist_sort(&self) -> bool {
        self.known_bool("improved_mboxlist_sort")
    }
}

fn known_default(key: &str) -> Option<&'static str> {
    spec(key).and_then(|s| s.default)
}

fn invalid(entry: &Entry, key: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        file: entry.file.clone(),
        line: entry.line,
        key: key.to_string(),
        value: entry.value.clone(),
        expected: expected.to_string(),
    }
}

/// Checks one value of a known option against its type (`config_read_file`).
fn check_value(spec: &OptSpec, entry: &Entry) -> Result<(), ConfigError> {
    let v = entry.value.as_str();
    let ok = match spec.kind {
        OptKind::String | OptKind::Path => true,
        OptKind::Switch => parse_switch(v).is_some(),
        OptKind::Int => parse_c_long(v).is_some(),
        OptKind::Enum(names) => names.contains(&normalize_enum(v)),
        OptKind::StringList(names) => names.contains(&v),
        OptKind::Bitfield(_) => MetaPartitionFiles::parse(v).is_some(),
    };
    if ok {
        return Ok(());
    }
    let expected = match spec.kind {
        OptKind::Switch => "a switch (1/0, yes/no, on/off, true/false)".to_string(),
        OptKind::Int => "an integer".to_string(),
        OptKind::Enum(names) | OptKind::StringList(names) => {
            format!("one of: {}", names.join(", "))
        }
        OptKind::Bitfield(names) => format!("a list of: {}", names.join(", ")),
        OptKind::String | OptKind::Path => String::new(),
    };
    Err(invalid(entry, spec.name, &expected))
}

/// `config_parse_switch`: only the first one or two bytes count.
fn parse_switch(v: &str) -> Option<bool> {
    let b = v.as_bytes();
    match (b.first(), b.get(1)) {
        (Some(b'0' | b'n' | b'f'), _) | (Some(b'o'), Some(b'f')) => Some(false),
        (Some(b'1' | b'y' | b't'), _) | (Some(b'o'), Some(b'n')) => Some(true),
        _ => None,
    }
}

/// The on/off aliases `config_read_file` accepts for ENUM options.
fn normalize_enum(v: &str) -> &str {
    match v {
        "1" | "yes" | "t" | "true" => "on",
        "0" | "no" | "f" | "false" => "off",
        other => other,
    }
}

/// C `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// C `strtol(s, &end, 0)` that must consume all of `s` (`config_read_file`, OPT_INT).
/// Out-of-range values are refused rather than clamped.
/// `config_parseduration` (lib/libconfig.c): an optional `-`, then runs of digits each
/// followed by a unit `d`, `h`, `m` or `s`, summed; a trailing run without a unit takes
/// `default_unit`. The empty string is 0, as in Cyrus. `None` on anything else or overflow.
pub fn parse_duration(s: &str, default_unit: u8) -> Option<i64> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) if r.bytes().next().is_some_and(|b| b.is_ascii_digit()) => (true, r),
        Some(_) => return None,
        None => (false, s),
    };
    let mut total: i64 = 0;
    let mut accum: i64 = 0;
    let mut saw_digit = false;
    let unit_of = |u: u8| match u {
        b'd' => Some(86_400),
        b'h' => Some(3_600),
        b'm' => Some(60),
        b's' => Some(1),
        _ => None,
    };
    let bytes = rest.bytes().chain(
        rest.bytes()
            .last()
            .filter(u8::is_ascii_digit)
            .map(|_| default_unit),
    );
    for b in bytes {
        if b.is_ascii_digit() {
            accum = accum.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
            saw_digit = true;
        } else {
            if !saw_digit {
                return None;
            }
            saw_digit = false;
            total = total.checked_add(accum.checked_mul(unit_of(b)?)?)?;
            accum = 0;
        }
    }
    // Cyrus keeps durations in an int.
    let total = if neg { -total } else { total };
    i32::try_from(total).ok().map(i64::from)
}

fn parse_c_long(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(h) = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))
        .filter(|h| h.bytes().next().is_some_and(|b| b.is_ascii_hexdigit()))
    {
        (16, h)
    } else if rest.len() > 1 && rest.starts_with('0') {
        (8, &rest[1..])
    } else {
        (10, rest)
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let value = if neg { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

/// State while reading a file and its includes.
struct Reader<'l, 'a> {
    entries: BTreeMap<String, Entry>,
    /// Files read so far, to refuse a second read (`config_read_file`'s includehash).
    included: Vec<PathBuf>,
    loader: &'l mut IncludeLoader<'a>,
}

impl Reader<'_, '_> {
    fn read(
        &mut self,
        text: &[u8],
        file: &Path,
        base_dir: &Path,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (line_no, line) in logical_lines(text) {
            if line.contains(&0) {
                return Err(ConfigError::NulByte {
                    file: file.to_path_buf(),
                    line: line_no,
                });
            }
            let Some((key, value)) = split_line(&line, file, line_no)? else {
                continue;
            };
            let value = std::str::from_utf8(value)
                .map_err(|_| ConfigError::NotUtf8 {
                    file: file.to_path_buf(),
                    line: line_no,
                    key: key.clone(),
                })?
                .to_string();
            if let Some(directive) = key.strip_prefix('@') {
                if directive != "include" {
                    return Err(ConfigError::InvalidDirective {
                        file: file.to_path_buf(),
                        line: line_no,
                        directive: key,
                    });
                }
                self.include(&value, file, line_no, base_dir, depth)?;
                continue;
            }
            if let Some(first) = self.entries.get(&key) {
                return Err(ConfigError::Duplicate {
                    file: file.to_path_buf(),
                    line: line_no,
                    key,
                    first_file: first.file.clone(),
                    first_line: first.line,
                });
            }
            self.entries.insert(
                key,
                Entry {
                    value,
                    file: file.to_path_buf(),
                    line: line_no,
                    base_dir: base_dir.to_path_buf(),
                },
            );
        }
        Ok(())
    }

    fn include(
        &mut self,
        value: &str,
        file: &Path,
        line: usize,
        base_dir: &Path,
        depth: usize,
    ) -> Result<(), ConfigError> {
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(ConfigError::IncludeTooDeep {
                file: file.to_path_buf(),
                line,
            });
        }
        let path = normalize_lexically(&base_dir.join(value));
        if self.included.contains(&path) {
            return Err(ConfigError::IncludedTwice {
                file: file.to_path_buf(),
                line,
                included: path,
            });
        }
        self.included.push(path.clone());
        let text = (self.loader)(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        self.read(&text, &path, &dir, depth + 1)
    }
}

/// Removes `.` and resolves `..` components without touching the file system, so that an
/// include loop through `a/../b.conf` is recognised.
fn normalize_lexically(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Splits `text` into logical lines (continuations joined), each with the number of its first
/// physical line. A `\` right before a newline joins the next line; at end of file without a
/// newline it stays (as with Cyrus's `fgets` loop).
fn logical_lines(text: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut start = 1usize;
    let mut physical = 0usize;
    let mut rest = text;
    while !rest.is_empty() {
        physical += 1;
        let (line, terminated, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        rest = next;
        if current.is_empty() {
            start = physical;
        }
        if terminated && line.last() == Some(&b'\\') {
            current.extend_from_slice(&line[..line.len() - 1]);
            continue;
        }
        current.extend_from_slice(line);
        out.push((start, std::mem::take(&mut current)));
    }
    if !current.is_empty() {
        out.push((start, current));
    }
    out
}

/// One logical line → `(lower-case key, value)`, or `None` for blanks and comments.
fn split_line<'t>(
    line: &'t [u8],
    file: &Path,
    line_no: usize,
) -> Result<Option<(String, &'t [u8])>, ConfigError> {
    let is_space = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    let start = line.iter().position(|b| !is_space(b));
    let Some(start) = start else {
        return Ok(None);
    };
    let line = &line[start..];
    if line.first() == Some(&b'#') {
        return Ok(None);
    }
    let key_start = usize::from(line.first() == Some(&b'@'));
    let key_len = line[key_start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
        .count();
    let key_end = key_start + key_len;
    if line.get(key_end) != Some(&b':') {
        return Err(ConfigError::InvalidOptionName {
            file: file.to_path_buf(),
            line: line_no,
        });
    }
    // The key bytes are ASCII by construction.
    let key = String::from_utf8_lossy(&line[..key_end]).to_ascii_lowercase();
    let value = &line[key_end + 1..];
    let v_start = value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len());
    let v_end = value
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(0, |i| i + 1);
    if v_start >= v_end {
        return Err(ConfigError::EmptyValue {
            file: file.to_path_buf(),
            line: line_no,
            key,
        });
    }
    Ok(Some((key, &value[v_start..v_end])))
}

impl fmt::Display for VirtDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VirtDomains::Off => "off",
            VirtDomains::Userid => "userid",
            VirtDomains::On => "on",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut no_files = |p: &Path| -> std::io::Result<Vec<u8>> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                p.display().to_string(),
            ))
        };
        Config::parse_with_loader(
            text.as_bytes(),
            Path::new("/etc/imapd.conf"),
            Path::new("/etc"),
            &mut no_files,
        )
    }

    const MINIMAL: &str = "configdirectory: /var/lib/cyrus\npartition-default: /var/spool/cyrus\n";

    #[test]
    fn defaults_are_cyrus_3_6_1() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.config_directory(), Path::new("/var/lib/cyrus"));
        assert!(!c.hashimapspool());
        assert!(!c.fulldirhash());
        assert!(!c.mailbox_legacy_dirs());
        assert!(c.unixhierarchysep());
        assert!(c.altnamespace());
        assert_eq!(c.virtdomains(), VirtDomains::Off);
        assert_eq!(c.defaultdomain(), "internal");
        assert_eq!(c.deletedprefix(), "DELETED");
        assert_eq!(c.delete_mode(), DeleteMode::Delayed);
        assert_eq!(c.expunge_mode(), ExpungeMode::Delayed);
        assert_eq!(c.mboxlist_db(), DbBackend::Twoskip);
        assert_eq!(c.quota_db(), DbBackend::QuotaLegacy);
        assert_eq!(c.subscription_db(), DbBackend::Flat);
        assert_eq!(c.conversations_db(), DbBackend::Skiplist);
        assert_eq!(
            c.mboxlist_db_path(),
            Path::new("/var/lib/cyrus/mailboxes.db")
        );
        assert_eq!(c.quota_db_path(), Path::new("/var/lib/cyrus/quotas.db"));
        assert_eq!(c.mboxname_lockpath(), Path::new("/var/lib/cyrus/lock"));
        assert!(c.singleinstancestore());
        assert!(c.admins().is_empty());
        assert!(c.munge8bit());
        assert_eq!(c.maxheaderlines(), 1000);
        assert!(!c.rfc2047_utf8());
        assert_eq!(c.uidl_format(), UidlFormat::Cyrus);
        assert!(!c.popuseimapflags());
        assert_eq!(c.metapartition_files(), MetaPartitionFiles::empty());
        assert_eq!(c.default_partition(), None);
        assert!(!c.archive_enabled());
    }

    #[test]
    fn syntax_comments_blanks_case_and_whitespace() {
        let c = parse(
            "# comment\n\n   \t# indented comment\nConfigDirectory:/conf  \n  HASHIMAPSPOOL :x\n",
        );
        // "HASHIMAPSPOOL :x" has a blank before the colon: invalid option name on line 5.
        match c {
            Err(ConfigError::InvalidOptionName { line, file }) => {
                assert_eq!(line, 5);
                assert_eq!(file, Path::new("/etc/imapd.conf"));
            }
            other => panic!("{other:?}"),
        }
        let c = parse("ConfigDirectory:/conf  \n\tAdmins:  cyrus  admin \r\nfoo: a # b\n").unwrap();
        assert_eq!(c.config_directory(), Path::new("/conf"));
        assert_eq!(c.admins(), vec!["cyrus", "admin"]);
        assert_eq!(c.get("foo"), Some("a # b"));
    }

    #[test]
    fn continuation_lines_join() {
        let c = parse("configdirectory: /co\\\nnf\nadmins: a \\\n b\nlast: x\\").unwrap();
        assert_eq!(c.config_directory(), Path::new("/conf"));
        assert_eq!(c.get("admins"), Some("a  b"));
        assert_eq!(c.get("last"), Some("x\\"));
        // line numbers: the first physical line of the logical line
        assert_eq!(c.entry("last").unwrap().line, 5);
    }

    #[test]
    fn switches_follow_config_parse_switch() {
        for (v, want) in [
            ("yes", true),
            ("y", true),
            ("on", true),
            ("true", true),
            ("t", true),
            ("1", true),
            ("no", false),
            ("off", false),
            ("false", false),
            ("f", false),
            ("0", false),
            ("nonsense", false),
            ("tomato", true),
        ] {
            let c = parse(&format!("{MINIMAL}hashimapspool: {v}\n")).unwrap();
            assert_eq!(c.hashimapspool(), want, "{v}");
        }
        for v in ["Yes", "TRUE", "o", "2", "enabled"] {
            let err = parse(&format!("{MINIMAL}fulldirhash: {v}\n")).unwrap_err();
            match err {
                ConfigError::InvalidValue { key, line, .. } => {
                    assert_eq!(key, "fulldirhash");
                    assert_eq!(line, 3);
                }
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn enums_take_exact_names_and_on_off_aliases() {
        for (v, want) in [
            ("off", VirtDomains::Off),
            ("userid", VirtDomains::Userid),
            ("on", VirtDomains::On),
            ("yes", VirtDomains::On),
            ("1", VirtDomains::On),
            ("true", VirtDomains::On),
            ("t", VirtDomains::On),
            ("no", VirtDomains::Off),
            ("0", VirtDomains::Off),
            ("false", VirtDomains::Off),
            ("f", VirtDomains::Off),
        ] {
            let c = parse(&format!("{MINIMAL}virtdomains: {v}\n")).unwrap();
            assert_eq!(c.virtdomains(), want, "{v}");
        }
        for v in ["Userid", "y", "ON", "userid extra"] {
            assert!(
                matches!(
                    parse(&format!("{MINIMAL}virtdomains: {v}\n")),
                    Err(ConfigError::InvalidValue { .. })
                ),
                "{v}"
            );
        }
        // STRINGLIST has no aliases.
        assert!(parse(&format!("{MINIMAL}mboxlist_db: Twoskip\n")).is_err());
        let c = parse(&format!(
            "{MINIMAL}mboxlist_db: skiplist\nquota_db: twoskip\n"
        ))
        .unwrap();
        assert_eq!(c.mboxlist_db(), DbBackend::Skiplist);
        assert_eq!(c.quota_db(), DbBackend::Twoskip);
        assert!(parse(&format!("{MINIMAL}quota_db: quota\n")).is_err());
    }

    #[test]
    fn metapartition_files_bitfield() {
        let c = parse(&format!(
            "{MINIMAL}metapartition_files: header  index\tcache\n"
        ))
        .unwrap();
        let f = c.metapartition_files();
        assert!(f.contains(MetaPartitionFiles::HEADER));
        assert!(f.contains(MetaPartitionFiles::INDEX));
        assert!(f.contains(MetaPartitionFiles::CACHE));
        assert!(!f.contains(MetaPartitionFiles::SQUAT));
        assert!(parse(&format!("{MINIMAL}metapartition_files: header bogus\n")).is_err());
    }

    #[test]
    fn integers_read_like_strtol_base_0() {
        for (v, want) in [
            ("10", 10),
            ("0x10", 16),
            ("010", 8),
            ("-5", -5),
            ("+7", 7),
            ("0", 0),
        ] {
            let c = parse(&format!("{MINIMAL}maxheaderlines: {v}\n")).unwrap();
            assert_eq!(c.maxheaderlines(), want, "{v}");
        }
        for v in ["08", "0x", "12k", "-", "1 2", "99999999999999999999"] {
            assert!(
                parse(&format!("{MINIMAL}maxheaderlines: {v}\n")).is_err(),
                "{v}"
            );
        }
        let c = parse(&format!("{MINIMAL}lmtp_max: 0x1F\nbad: x\n")).unwrap();
        assert_eq!(c.get_int("lmtp_max", 0).unwrap(), 31);
        assert_eq!(c.get_int("absent", 42).unwrap(), 42);
        assert!(c.get_int("bad", 0).is_err());
        assert!(c.get_bool("bad", false).is_err());
        assert!(c.get_bool("absent", true).unwrap());
        // a known option's Cyrus default wins over the caller's
        assert!(c.get_bool("singleinstancestore", false).unwrap());
    }

    #[test]
    fn duplicates_are_errors() {
        let err = parse(&format!("{MINIMAL}admins: a\nADMINS: b\n")).unwrap_err();
        match err {
            ConfigError::Duplicate {
                key,
                line,
                first_line,
                ..
            } => {
                assert_eq!(key, "admins");
                assert_eq!(line, 4);
                assert_eq!(first_line, 3);
            }
            other => panic!("{other:?}"),
        }
        // overflow keys too (config_add_overflowstring)
        assert!(matches!(
            parse(&format!("{MINIMAL}partition-default: /x\n")),
            Err(ConfigError::Duplicate { .. })
        ));
    }

    #[test]
    fn malformed_lines() {
        assert!(matches!(
            parse(&format!("{MINIMAL}novalue:   \n")),
            Err(ConfigError::EmptyValue { line: 3, .. })
        ));
        assert!(matches!(
            parse(&format!("{MINIMAL}just words\n")),
            Err(ConfigError::InvalidOptionName { line: 3, .. })
        ));
        assert!(matches!(
            parse(&format!("{MINIMAL}key.dot: x\n")),
            Err(ConfigError::InvalidOptionName { .. })
        ));
        assert!(matches!(
            parse(&format!("{MINIMAL}@define: x\n")),
            Err(ConfigError::InvalidDirective { .. })
        ));
        assert!(matches!(
            parse("partition-default: /x\n"),
            Err(ConfigError::MissingConfigDirectory { .. })
        ));
        assert!(matches!(
            parse(&format!("{MINIMAL}defaultpartition: my-part\n")),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            Config::parse_with_loader(
                b"configdirectory: /c\nx: a\0b\n",
                Path::new("f"),
                Path::new(""),
                &mut |_| Ok(Vec::new())
            ),
            Err(ConfigError::NulByte { line: 2, .. })
        ));
        let msg = parse(&format!("{MINIMAL}x\n")).unwrap_err().to_string();
        assert!(msg.contains("/etc/imapd.conf:3"), "{msg}");
    }

    #[test]
    fn defaultpartition_is_lowercased() {
        let c = parse(&format!("{MINIMAL}defaultpartition: Default\n")).unwrap();
        assert_eq!(c.default_partition(), Some("default"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c = Config::parse(
            b"configdirectory: conf\npartition-default: spool\npartition-Two: /abs\n\
              metapartition-default: meta\narchivepartition-default: archive\n\
              mboxname_lockpath: {configdirectory}/mylock\nmetadir-index-default: idx\n",
            Path::new("/fixtures/legacy"),
        )
        .unwrap();
        assert_eq!(c.config_directory(), Path::new("/fixtures/legacy/conf"));
        let parts = c.partitions();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts["default"], Path::new("/fixtures/legacy/spool"));
        // keys are lower-cased
        assert_eq!(parts["two"], Path::new("/abs"));
        assert_eq!(
            c.metapartition_dir("default").unwrap(),
            Path::new("/fixtures/legacy/meta")
        );
        // archive partition only counts with archive_enabled
        assert_eq!(c.archivepartition_dir("default"), None);
        assert_eq!(
            c.mboxname_lockpath(),
            Path::new("/fixtures/legacy/conf/mylock")
        );
        assert_eq!(
            c.metadir("index", "default").unwrap(),
            Path::new("/fixtures/legacy/idx")
        );
        assert_eq!(
            c.mboxlist_db_path(),
            Path::new("/fixtures/legacy/conf/mailboxes.db")
        );
    }

    #[test]
    fn includes_are_read_relative_and_once() {
        let mut files = |p: &Path| -> std::io::Result<Vec<u8>> {
            match p.to_str() {
                Some("/etc/sub/extra.conf") => {
                    Ok(b"hashimapspool: yes\n@include: ../loop.conf\n".to_vec())
                }
                Some("/etc/loop.conf") => Ok(b"@include: sub/extra.conf\n".to_vec()),
                Some("/etc/dup.conf") => Ok(b"admins: x\n".to_vec()),
                Some("/etc/ok.conf") => Ok(b"fulldirhash: 1\npartition-p: rel\n".to_vec()),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }
        };
        let c = Config::parse_with_loader(
            b"configdirectory: /c\n@Include: ok.conf\n",
            Path::new("/etc/imapd.conf"),
            Path::new("/etc"),
            &mut files,
        )
        .unwrap();
        assert!(c.fulldirhash());
        assert_eq!(c.partition_dir("p").unwrap(), Path::new("/etc/rel"));
        assert_eq!(
            c.entry("fulldirhash").unwrap().file,
            Path::new("/etc/ok.conf")
        );
        let err = Config::parse_with_loader(
            b"configdirectory: /c\n@include: sub/extra.conf\n",
            Path::new("/etc/imapd.conf"),
            Path::new("/etc"),
            &mut files,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::IncludedTwice { .. }), "{err:?}");
        let err = Config::parse_with_loader(
            b"configdirectory: /c\nadmins: y\n@include: dup.conf\n",
            Path::new("/etc/imapd.conf"),
            Path::new("/etc"),
            &mut files,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Duplicate { .. }), "{err:?}");
        let err = Config::parse_with_loader(
            b"configdirectory: /c\n@include: missing.conf\n",
            Path::new("/etc/imapd.conf"),
            Path::new("/etc"),
            &mut files,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    }

    #[test]
    fn service_prefixed_keys_override_for_that_service_only() {
        let c = parse(&format!(
            "{MINIMAL}lmtp_singleinstancestore: no\nimap_admins: root\nadmins: cyrus\n\
             pop3_partition-default: /pop\n"
        ))
        .unwrap();
        assert!(c.singleinstancestore());
        assert_eq!(c.admins(), vec!["cyrus"]);
        assert_eq!(c.get("lmtp_singleinstancestore"), Some("no"));
        let lmtp = c.clone().with_service("lmtp").unwrap();
        assert!(!lmtp.singleinstancestore());
        let imap = c.clone().with_service("IMAP").unwrap();
        assert_eq!(imap.admins(), vec!["root"]);
        let pop = c.with_service("pop3").unwrap();
        assert_eq!(pop.partition_dir("default").unwrap(), Path::new("/pop"));
        // a bad service-specific value is only an error for that service
        let c = parse(&format!("{MINIMAL}lmtp_hashimapspool: maybe\n")).unwrap();
        assert!(c.clone().with_service("imap").is_ok());
        assert!(matches!(
            c.with_service("lmtp"),
            Err(ConfigError::InvalidValue { .. })
        ));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imapd.conf");
        std::fs::write(&path, "configdirectory: conf\npartition-default: spool\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.config_directory(), dir.path().join("conf"));
        assert_eq!(c.file(), path);
        let err = Config::load(&dir.path().join("nope.conf")).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
    }

    #[test]
    fn durations_as_config_parseduration_reads_them() {
        assert_eq!(parse_duration("3", b's'), Some(3));
        assert_eq!(parse_duration("3", b'm'), Some(180));
        assert_eq!(parse_duration("3s", b'm'), Some(3));
        assert_eq!(parse_duration("1h30m", b's'), Some(5400));
        assert_eq!(parse_duration("1d2", b'h'), Some(86_400 + 7200));
        assert_eq!(parse_duration("-10m", b's'), Some(-600));
        assert_eq!(parse_duration("", b's'), Some(0));
        for bad in [
            "m",
            "3x",
            "-",
            "-m",
            "1hh",
            "3 s",
            "99999999999s",
            "1000000d",
        ] {
            assert_eq!(parse_duration(bad, b's'), None, "{bad:?}");
        }
        let c = Config::parse(
            b"configdirectory: /var/lib/cyrus\nfailedloginpause: 2m\npoptimeout: bogus\n",
            Path::new("/etc"),
        )
        .unwrap();
        assert_eq!(c.get_duration("failedloginpause", b's', 3).unwrap(), 120);
        assert_eq!(c.get_duration("unset", b's', 3).unwrap(), 3);
        assert!(c.get_duration("poptimeout", b'm', 10).is_err());
    }
}
