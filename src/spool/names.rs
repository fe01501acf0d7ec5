//! Mailbox names: the one structured value [`MboxName`] and its three spellings.
//!
//! * **internal** (`cyrus.header` `N`, paths, locks, quota roots): `[domain!]` components joined
//!   by `.`, a real `.` inside a component written `^` (`user.john^doe`), deleted mailboxes
//!   `DELETED.<name>.<HEX>` (`mbname_from_intname` / `mbname_intname`, `imap/mboxname.c`);
//! * **dbname** (3.6 `mailboxes.db` keys after the `N`): `[domain 0x1D]` components with real
//!   dots joined by 0x1F (`mbname_dbname` / `mbname_from_dbname`, `imap/mboxlist.c`);
//! * **external** in the admin namespace, as Cyrus's admin tools take them on the command line
//!   (`reconstruct` uses `mboxname_init_namespace(&ns, 1)` + `mboxname_from_external`): the
//!   separator is `/` with `unixhierarchysep` (a `.` is then a real dot and `^` is refused) or
//!   `.` (a `^` is then a real dot and `/` is refused); with `virtdomains` a trailing
//!   `@domain` names the domain. `altnamespace` never applies to admins.
//!
//! Components are kept as real bytes (modified UTF-7 is not decoded). Names that Cyrus would
//! mangle or that could escape a partition directory are refused with a [`NameError`]: empty
//! components (Cyrus silently drops them), `/`, NUL, `^` as a real character, the dbname
//! separators 0x1D–0x1F, over-long names or components, bad domains, and a `DELETED.` name
//! whose last component is not a canonical hex time (Cyrus would read such a name as a
//! different mailbox). This module does not know about paths (see [`super::paths`]).

use std::fmt;

use super::config::{Config, VirtDomains};

/// `MAX_MAILBOX_BUFFER` (`imap/mailbox.h`): no internal name is longer.
pub const MAX_MAILBOX_BUFFER: usize = 1024;
/// Longest component: it becomes a directory name (`NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// The dbname domain separator (`DB_DOMAINSEP_CHAR`).
pub const DB_DOMAINSEP: u8 = 0x1D;
/// The dbname hierarchy separator (`DB_HIERSEP_CHAR`).
pub const DB_HIERSEP: u8 = 0x1F;
/// Separator used by reverse-ACL keys; refused in names so keys stay unambiguous.
const DB_RACL_SEP: u8 = 0x1E;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty mailbox name")]
    Empty,
    #[error("mailbox name `{name}` has an empty component")]
    EmptyComponent { name: String },
    #[error("mailbox name `{name}` contains forbidden byte 0x{byte:02X}")]
    ForbiddenByte { name: String, byte: u8 },
    #[error("mailbox name `{name}` is {len} bytes long (at most {max})")]
    TooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("mailbox name `{name}`: component of {len} bytes (at most {MAX_COMPONENT})")]
    ComponentTooLong { name: String, len: usize },
    #[error("mailbox name `{name}`: invalid domain `{domain}`")]
    BadDomain { name: String, domain: String },
    #[error("mailbox name `{name}`: `{stamp}` is not a deletion time (upper-case hex)")]
    BadDeletedStamp { name: String, stamp: String },
    #[error("mailbox name `{name}`: `^` is not allowed with unixhierarchysep")]
    Caret { name: String },
    #[error("mailbox name `{name}`: INBOX needs a user; use user.NAME")]
    InboxWithoutUser { name: String },
    #[error("mailbox name `{name}`: `user` needs a user name after it")]
    UserWithoutName { name: String },
    #[error("mailbox `{name}` has no external name in this configuration: {reason}")]
    NotRepresentable { name: String, reason: &'static str },
    #[error("deletedprefix `{prefix}` is not usable as a mailbox name component")]
    BadDeletedPrefix { prefix: String },
}

/// The configuration that decides how names are spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConfig {
    /// `deletedprefix` (default `DELETED`).
    pub deleted_prefix: Vec<u8>,
    /// `defaultdomain` (default `internal`): this domain is never written.
    pub default_domain: Vec<u8>,
    /// `unixhierarchysep`: external separator `/` instead of `.`.
    pub unixhierarchysep: bool,
    /// `virtdomains`: external names carry `@domain`.
    pub virtdomains: VirtDomains,
}

impl Default for NameConfig {
    /// Cyrus 3.6.1 defaults.
    fn default() -> Self {
        NameConfig {
            deleted_prefix: b"DELETED".to_vec(),
            default_domain: b"internal".to_vec(),
            unixhierarchysep: true,
            virtdomains: VirtDomains::Off,
        }
    }
}

impl NameConfig {
    /// The name settings of `config`.
    pub fn from_config(config: &Config) -> Result<NameConfig, NameError> {
        let nc = NameConfig {
            deleted_prefix: config.deletedprefix().as_bytes().to_vec(),
            default_domain: config.defaultdomain().as_bytes().to_vec(),
            unixhierarchysep: config.unixhierarchysep(),
            virtdomains: config.virtdomains(),
        };
        nc.check()?;
        Ok(nc)
    }

    /// Checks that the deleted prefix can be a component (no `.`, `^`, `/`, ...) and the
    /// default domain a directory name (quotalegacy writes it into paths).
    pub fn check(&self) -> Result<(), NameError> {
        check_domain(&self.default_domain, &self.default_domain)?;
        let p = &self.deleted_prefix;
        if p.is_empty() || p.contains(&b'.') || check_component(p, p).is_err() {
            return Err(NameError::BadDeletedPrefix { prefix: lossy(p) });
        }
        Ok(())
    }

    fn separator(&self) -> u8 {
        if self.unixhierarchysep {
            b'/'
        } else {
            b'.'
        }
    }
}

/// A mailbox name, as Cyrus's `mbname_t`: domain, owner, folder components, deletion.
///
/// Always canonical: every constructor produces the value that parsing its internal name
/// gives back, so the three spellings round-trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MboxName {
    /// `None` for the default domain.
    domain: Option<Vec<u8>>,
    /// The user of a `user.<localpart>...` name.
    localpart: Option<Vec<u8>>,
    /// Components after `user.<localpart>` (or all of them for shared names), real chars.
    boxes: Vec<Vec<u8>>,
    /// For `DELETED.` names: the prefix and the deletion time.
    deleted: Option<Deleted>,
}

/// The delayed-delete marker of a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deleted {
    /// The `deletedprefix` in force when the name was made.
    pub prefix: Vec<u8>,
    /// Deletion time (`time_t`, written as `%X`), never 0.
    pub stamp: u32,
}

impl MboxName {
    /// Parses an internal name (`mbname_from_intname`).
    pub fn from_internal(name: &[u8], nc: &NameConfig) -> Result<MboxName, NameError> {
        check_whole(name)?;
        let (domain, rest) = match name.iter().position(|&b| b == b'!') {
            Some(i) => (Some(&name[..i]), &name[i + 1..]),
            None => (None, name),
        };
        let mut comps = Vec::new();
        for raw in rest.split(|&b| b == b'.') {
            if raw.is_empty() {
                return Err(NameError::EmptyComponent { name: lossy(name) });
            }
            comps.push(
                raw.iter()
                    .map(|&b| if b == b'^' { b'.' } else { b })
                    .collect(),
            );
        }
        MboxName::from_components(name, domain, comps, nc, false)
    }

    /// Parses a 3.6 dbname (`mbname_from_dbname`). A domain equal to `defaultdomain` is
    /// dropped, as the internal name parser does.
    pub fn from_dbname(name: &[u8], nc: &NameConfig) -> Result<MboxName, NameError> {
        check_whole(name)?;
        let (domain, rest) = match name.iter().position(|&b| b == DB_DOMAINSEP) {
            Some(i) => (Some(&name[..i]), &name[i + 1..]),
            None => (None, name),
        };
        let mut comps = Vec::new();
        for raw in rest.split(|&b| b == DB_HIERSEP) {
            if raw.is_empty() {
                return Err(NameError::EmptyComponent { name: lossy(name) });
            }
            comps.push(raw.to_vec());
        }
        MboxName::from_components(name, domain, comps, nc, false)
    }

    /// Parses an external name in the admin namespace (`mbname_from_extname` with
    /// `isadmin`), as Cyrus's admin tools read their arguments.
    pub fn from_external(name: &[u8], nc: &NameConfig) -> Result<MboxName, NameError> {
        check_whole(name)?;
        let (domain, rest) = match name.iter().rposition(|&b| b == b'@') {
            Some(i) if nc.virtdomains.enabled() => (Some(&name[i + 1..]), &name[..i]),
            _ => (None, name),
        };
        let sep = nc.separator();
        let mut comps: Vec<Vec<u8>> = Vec::new();
        for raw in rest.split(|&b| b == sep) {
            if raw.is_empty() {
                return Err(NameError::EmptyComponent { name: lossy(name) });
            }
            let mut comp = Vec::with_capacity(raw.len());
            for &b in raw {
                match b {
                    b'^' if nc.unixhierarchysep => {
                        return Err(NameError::Caret { name: lossy(name) })
                    }
                    b'^' => comp.push(b'.'),
                    b'/' => {
                        return Err(NameError::ForbiddenByte {
                            name: lossy(name),
                            byte: b,
                        })
                    }
                    _ => comp.push(b),
                }
            }
            comps.push(comp);
        }
        if comps
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"INBOX"))
        {
            return Err(NameError::InboxWithoutUser { name: lossy(name) });
        }
        MboxName::from_components(name, domain, comps, nc, true)
    }

    /// The INBOX of `userid` (`mbname_from_userid`: `local@domain`, split at the last `@`).
    pub fn user_inbox(userid: &[u8], nc: &NameConfig) -> Result<MboxName, NameError> {
        check_whole(userid)?;
        let (local, domain) = match userid.iter().rposition(|&b| b == b'@') {
            Some(i) => (&userid[..i], Some(&userid[i + 1..])),
            None => (userid, None),
        };
        let mut name = MboxName {
            domain: None,
            localpart: Some(local.to_vec()),
            boxes: Vec::new(),
            deleted: None,
        };
        name.domain = normalize_domain(userid, domain, nc)?;
        name.check(userid)?;
        Ok(name)
    }

    /// Shared structure of the three parsers: domain, deleted marker, user.
    fn from_components(
        whole: &[u8],
        domain: Option<&[u8]>,
        mut comps: Vec<Vec<u8>>,
        nc: &NameConfig,
        external: bool,
    ) -> Result<MboxName, NameError> {
        let domain = normalize_domain(whole, domain, nc)?;
        let prefix = nc.deleted_prefix.as_slice();
        // Internal/db names need more than two components to be deleted; the admin external
        // parser takes any name starting with the prefix as deleted (mbname_from_extname).
        let is_deleted =
            comps.first().is_some_and(|c| c == prefix) && (comps.len() > 2 || external);
        let mut deleted = None;
        if is_deleted {
            comps.remove(0);
            let stamp = comps.pop().unwrap_or_default();
            deleted = Some(Deleted {
                prefix: prefix.to_vec(),
                stamp: parse_stamp(&stamp).ok_or_else(|| NameError::BadDeletedStamp {
                    name: lossy(whole),
                    stamp: lossy(&stamp),
                })?,
            });
            if comps.is_empty() {
                return Err(NameError::Empty);
            }
        }
        let mut localpart = None;
        if comps.first().is_some_and(|c| c == b"user") {
            if comps.len() > 1 {
                comps.remove(0);
                localpart = Some(comps.remove(0));
            } else if external {
                return Err(NameError::UserWithoutName { name: lossy(whole) });
            }
        }
        let name = MboxName {
            domain,
            localpart,
            boxes: comps,
            deleted,
        };
        name.check(whole)?;
        Ok(name)
    }

    /// Checks every component and the total length.
    fn check(&self, whole: &[u8]) -> Result<(), NameError> {
        if let Some(d) = &self.domain {
            check_domain(whole, d)?;
        }
        for c in self.localpart.iter().chain(self.boxes.iter()) {
            check_component(whole, c)?;
            // Without a domain, a `!` would be read back as the domain separator.
            if self.domain.is_none() && c.contains(&b'!') {
                return Err(NameError::ForbiddenByte {
                    name: lossy(whole),
                    byte: b'!',
                });
            }
        }
        if self.localpart.is_none() && self.boxes.is_empty() {
            return Err(NameError::Empty);
        }
        let len = self.internal_len();
        if len > MAX_MAILBOX_BUFFER {
            return Err(NameError::TooLong {
                name: lossy(whole),
                len,
                max: MAX_MAILBOX_BUFFER,
            });
        }
        Ok(())
    }

    fn internal_len(&self) -> usize {
        self.spelled(b'.', b'^', b'!').len()
    }

    /// Components in hierarchy order, deleted prefix first and stamp last (mboxname_hash).
    pub fn path_components(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(d) = &self.deleted {
            out.push(d.prefix.clone());
        }
        if let Some(l) = &self.localpart {
            out.push(b"user".to_vec());
            out.push(l.clone());
        }
        out.extend(self.boxes.iter().cloned());
        if let Some(d) = &self.deleted {
            out.push(format!("{:X}", d.stamp).into_bytes());
        }
        out
    }

    /// Joins the components with `sep`, writing a real `.` as `dot`; domain first with
    /// `domsep`.
    fn spelled(&self, sep: u8, dot: u8, domsep: u8) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(d) = &self.domain {
            out.extend_from_slice(d);
            out.push(domsep);
        }
        for (i, c) in self.path_components().iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.extend(c.iter().map(|&b| if b == b'.' { dot } else { b }));
        }
        out
    }

    /// The internal name (`mbname_intname`).
    pub fn to_internal(&self) -> Vec<u8> {
        self.spelled(b'.', b'^', b'!')
    }

    /// The 3.6 mailboxes.db name (`mbname_dbname`), without the `N` key prefix.
    pub fn to_dbname(&self) -> Vec<u8> {
        self.spelled(DB_HIERSEP, b'.', DB_DOMAINSEP)
    }

    /// The external name in the admin namespace (`mbname_extname` with `isadmin`), or why
    /// there is none (Cyrus returns NULL for the same cases, plus names that would not parse
    /// back to this one).
    pub fn to_external(&self, nc: &NameConfig) -> Result<Vec<u8>, NameError> {
        let refuse = |reason| {
            Err(NameError::NotRepresentable {
                name: self.to_string(),
                reason,
            })
        };
        if self.domain.is_some() && !nc.virtdomains.enabled() {
            return refuse("it has a domain and virtdomains is off");
        }
        let comps = self.path_components();
        if self.localpart.is_none() {
            if self
                .boxes
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"INBOX"))
            {
                return refuse("a shared mailbox named INBOX");
            }
            // Deleted or not: the admin parser reads `user` (and `DELETED.user.<stamp>`) as a
            // user name that is missing.
            if self.boxes.len() == 1 && self.boxes[0] == b"user" {
                return refuse("a shared mailbox named user");
            }
        }
        if self.deleted.is_none() && comps.first().is_some_and(|c| *c == nc.deleted_prefix) {
            return refuse("it starts with the deleted prefix");
        }
        let at_in_name = comps.iter().any(|c| c.contains(&b'@'));
        if nc.virtdomains.enabled() && self.domain.is_none() && at_in_name {
            return refuse("`@` in a name would be read as a domain");
        }
        let dot = if nc.unixhierarchysep { b'.' } else { b'^' };
        let mut out = MboxName {
            domain: None,
            ..self.clone()
        }
        .spelled(nc.separator(), dot, b'!');
        if let Some(d) = &self.domain {
            out.push(b'@');
            out.extend_from_slice(d);
        }
        Ok(out)
    }

    /// The domain, `None` for the default domain.
    pub fn domain(&self) -> Option<&[u8]> {
        self.domain.as_deref()
    }

    /// The owner's local part for `user.<localpart>...` names.
    pub fn localpart(&self) -> Option<&[u8]> {
        self.localpart.as_deref()
    }

    /// The components below the user (or all of them for shared names), real characters.
    pub fn boxes(&self) -> &[Vec<u8>] {
        &self.boxes
    }

    /// The deletion marker of a `DELETED.` name.
    pub fn deleted(&self) -> Option<&Deleted> {
        self.deleted.as_ref()
    }

    /// The owner (`localpart[@domain]`, `mbname_userid`); `None` for shared mailboxes.
    pub fn userid(&self) -> Option<Vec<u8>> {
        let mut out = self.localpart.clone()?;
        if let Some(d) = &self.domain {
            out.push(b'@');
            out.extend_from_slice(d);
        }
        Some(out)
    }

    /// A user's INBOX (`mboxname_isusermailbox(name, 1)`: not deleted, no sub-folder).
    pub fn is_user_inbox(&self) -> bool {
        self.localpart.is_some() && self.boxes.is_empty() && self.deleted.is_none()
    }

    /// Any mailbox of a user, not deleted (`mboxname_isusermailbox(name, 0)`).
    pub fn is_user_mailbox(&self) -> bool {
        self.localpart.is_some() && self.deleted.is_none()
    }

    /// The same name without its deletion marker (where it was before deletion).
    pub fn undeleted(&self) -> MboxName {
        MboxName {
            deleted: None,
            ..self.clone()
        }
    }

    /// The parent by internal name, as `mboxname_make_parent`: drop the last component
    /// (`user.alice` → `user`); `None` at the top and for deleted names (whose last component
    /// is the time stamp).
    pub fn parent(&self, nc: &NameConfig) -> Option<MboxName> {
        if self.deleted.is_some() {
            return None;
        }
        let internal = self.to_internal();
        let start = self.domain.as_ref().map_or(0, |d| d.len() + 1);
        let cut = internal[start..].iter().rposition(|&b| b == b'.')?;
        MboxName::from_internal(&internal[..start + cut], nc).ok()
    }

    /// The child mailbox `component` (real characters) of this one.
    pub fn child(&self, component: &[u8], nc: &NameConfig) -> Result<MboxName, NameError> {
        if self.deleted.is_some() {
            return Err(NameError::NotRepresentable {
                name: self.to_string(),
                reason: "a deleted mailbox has no children",
            });
        }
        check_component(component, component)?;
        let mut internal = self.to_internal();
        internal.push(b'.');
        internal.extend(component.iter().map(|&b| if b == b'.' { b'^' } else { b }));
        MboxName::from_internal(&internal, nc)
    }
}

impl fmt::Display for MboxName {
    /// The internal name (lossy UTF-8).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_internal()))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks that apply to a whole name before it is split.
fn check_whole(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_MAILBOX_BUFFER {
        return Err(NameError::TooLong {
            name: lossy(&name[..64]),
            len: name.len(),
            max: MAX_MAILBOX_BUFFER,
        });
    }
    if let Some(&byte) = name.iter().find(|&&b| b == 0) {
        return Err(NameError::ForbiddenByte {
            name: lossy(name),
            byte,
        });
    }
    Ok(())
}

/// A component in real characters: becomes one directory name (with `.` written `^`).
fn check_component(whole: &[u8], c: &[u8]) -> Result<(), NameError> {
    if c.is_empty() {
        return Err(NameError::EmptyComponent { name: lossy(whole) });
    }
    if c.len() > MAX_COMPONENT {
        return Err(NameError::ComponentTooLong {
            name: lossy(whole),
            len: c.len(),
        });
    }
    let bad = |b: u8| matches!(b, 0 | b'/' | b'^' | DB_DOMAINSEP | DB_RACL_SEP | DB_HIERSEP);
    if let Some(&byte) = c.iter().find(|&&b| bad(b)) {
        return Err(NameError::ForbiddenByte {
            name: lossy(whole),
            byte,
        });
    }
    Ok(())
}

/// A domain is written raw into paths (`domain/<h>/<domain>`), so it must be one harmless
/// directory name.
fn check_domain(whole: &[u8], d: &[u8]) -> Result<(), NameError> {
    let bad = d.is_empty()
        || d.len() > MAX_COMPONENT
        || d == b"."
        || d == b".."
        || d.iter().any(|&b| {
            matches!(
                b,
                0 | b'/' | b'!' | b'@' | DB_DOMAINSEP | DB_RACL_SEP | DB_HIERSEP
            )
        });
    if bad {
        return Err(NameError::BadDomain {
            name: lossy(whole),
            domain: lossy(d),
        });
    }
    Ok(())
}

fn normalize_domain(
    whole: &[u8],
    domain: Option<&[u8]>,
    nc: &NameConfig,
) -> Result<Option<Vec<u8>>, NameError> {
    match domain {
        Some(d) if d == nc.default_domain.as_slice() => Ok(None),
        Some(d) => {
            check_domain(whole, d)?;
            Ok(Some(d.to_vec()))
        }
        None => Ok(None),
    }
}

/// A deletion stamp as Cyrus writes it: `%X` of a non-zero 32-bit time.
fn parse_stamp(s: &[u8]) -> Option<u32> {
    let canonical = !s.is_empty()
        && s.len() <= 8
        && s[0] != b'0'
        && s.iter()
            .all(|&b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if !canonical {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
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

    fn uhs_vd() -> NameConfig {
        NameConfig {
            unixhierarchysep: true,
            virtdomains: VirtDomains::Userid,
            ..NameConfig::default()
        }
    }

    fn int(s: &str, nc: &NameConfig) -> MboxName {
        MboxName::from_internal(s.as_bytes(), nc).unwrap()
    }

    #[test]
    fn internal_names_from_the_docs() {
        let n = int("user.alice.Sent", &nc());
        assert_eq!(n.localpart(), Some(&b"alice"[..]));
        assert_eq!(n.boxes(), &[b"Sent".to_vec()]);
        assert_eq!(n.userid().unwrap(), b"alice");
        assert!(n.is_user_mailbox() && !n.is_user_inbox());

        let n = int("user.john^doe", &nc());
        assert_eq!(n.localpart(), Some(&b"john.doe"[..]));
        assert!(n.is_user_inbox());
        assert_eq!(n.to_internal(), b"user.john^doe");

        let n = int("example.com!user.carol.Work", &nc());
        assert_eq!(n.domain(), Some(&b"example.com"[..]));
        assert_eq!(n.userid().unwrap(), b"carol@example.com");

        let n = int("DELETED.user.alice.X.6B081284", &nc());
        let d = n.deleted().unwrap();
        assert_eq!(d.stamp, 0x6B08_1284);
        assert_eq!(d.prefix, b"DELETED");
        assert_eq!(n.localpart(), Some(&b"alice"[..]));
        assert_eq!(n.boxes(), &[b"X".to_vec()]);
        assert!(!n.is_user_mailbox());
        assert_eq!(n.undeleted().to_internal(), b"user.alice.X");
        assert_eq!(n.to_internal(), b"DELETED.user.alice.X.6B081284");

        // "user" alone and two-component DELETED names are plain shared names
        let n = int("user", &nc());
        assert_eq!(n.localpart(), None);
        assert_eq!(n.boxes(), &[b"user".to_vec()]);
        let n = int("DELETED.x", &nc());
        assert!(n.deleted().is_none());
        // the default domain is dropped
        assert_eq!(int("internal!user.x", &nc()).to_internal(), b"user.x");
    }

    #[test]
    fn dbnames_from_the_docs() {
        for (intname, dbname) in [
            ("user.alice", &b"user\x1Falice"[..]),
            ("user.alice.foo^bar", b"user\x1Falice\x1Ffoo.bar"),
            ("shared.folder", b"shared\x1Ffolder"),
            (
                "example.com!user.alice.Sent",
                b"example.com\x1Duser\x1Falice\x1FSent",
            ),
            (
                "DELETED.user.alice.Trash.6B081176",
                b"DELETED\x1Fuser\x1Falice\x1FTrash\x1F6B081176",
            ),
            (
                "example.com!DELETED.user.alice.Sent.6B081176",
                b"example.com\x1DDELETED\x1Fuser\x1Falice\x1FSent\x1F6B081176",
            ),
        ] {
            let n = int(intname, &nc());
            assert_eq!(n.to_dbname(), dbname, "{intname}");
            assert_eq!(MboxName::from_dbname(dbname, &nc()).unwrap(), n);
        }
    }

    #[test]
    fn external_names_in_the_admin_namespace() {
        // '.' separator: ^ means a real dot, / is refused
        let n = MboxName::from_external(b"user.john^doe.Sub", &nc()).unwrap();
        assert_eq!(n.to_internal(), b"user.john^doe.Sub");
        assert_eq!(n.to_external(&nc()).unwrap(), b"user.john^doe.Sub");
        assert!(matches!(
            MboxName::from_external(b"user.a/b", &nc()),
            Err(NameError::ForbiddenByte { byte: b'/', .. })
        ));
        // '/' separator: . is a real dot, ^ is refused
        let u = uhs_vd();
        let n = MboxName::from_external(b"user/bob.smith/Sub.Dir", &u).unwrap();
        assert_eq!(n.to_internal(), b"user.bob^smith.Sub^Dir");
        assert_eq!(n.to_external(&u).unwrap(), b"user/bob.smith/Sub.Dir");
        assert!(matches!(
            MboxName::from_external(b"user/a^b", &u),
            Err(NameError::Caret { .. })
        ));
        // virtdomains: trailing @domain
        let n = MboxName::from_external(b"user/carol/Work@example.com", &u).unwrap();
        assert_eq!(n.to_internal(), b"example.com!user.carol.Work");
        assert_eq!(n.to_external(&u).unwrap(), b"user/carol/Work@example.com");
        // without virtdomains the @ is part of the name
        let n = MboxName::from_external(b"user.a@b", &nc()).unwrap();
        assert_eq!(n.localpart(), Some(&b"a@b"[..]));
        // deleted, admin spelling
        let n = MboxName::from_external(b"DELETED.user.alice.X.6B081284", &nc()).unwrap();
        assert_eq!(n.to_internal(), b"DELETED.user.alice.X.6B081284");
        let n = MboxName::from_external(b"DELETED/user/carol/6B081284@example.com", &u).unwrap();
        assert_eq!(n.to_internal(), b"example.com!DELETED.user.carol.6B081284");
        assert_eq!(
            n.to_external(&u).unwrap(),
            b"DELETED/user/carol/6B081284@example.com"
        );
    }

    #[test]
    fn external_names_refused() {
        for bad in [
            "INBOX",
            "inbox.Sent",
            "user",
            "DELETED.x",
            "DELETED.user.a.zz",
            "a..b",
            ".a",
            "a.",
        ] {
            assert!(
                MboxName::from_external(bad.as_bytes(), &nc()).is_err(),
                "{bad}"
            );
        }
        assert!(MboxName::from_external(b"user/x@", &uhs_vd()).is_err());
        // not representable
        let n = int("example.com!user.x", &nc());
        assert!(matches!(
            n.to_external(&nc()),
            Err(NameError::NotRepresentable { .. })
        ));
        assert!(int("inbox", &nc()).to_external(&nc()).is_err());
        assert!(int("user", &nc()).to_external(&nc()).is_err());
        assert!(int("DELETED.x", &nc()).to_external(&nc()).is_err());
        assert!(int("a@b", &uhs_vd()).to_external(&uhs_vd()).is_err());
        assert_eq!(int("a@b", &nc()).to_external(&nc()).unwrap(), b"a@b");
    }

    #[test]
    fn escaping_names_are_refused() {
        let n = nc();
        for bad in [
            &b""[..],
            b"user..alice",
            b".user",
            b"user.",
            b"user.a/b",
            b"user.a\0b",
            b"user.a\x1Fb",
            b"../x!user.a",
            b"..!user.a",
            b"!user.a",
            b"a/b!user.a",
            b"example.com!",
            b"DELETED.user.alice.X.zz",
            b"DELETED.user.alice.X.06B08128",
            b"DELETED.user.alice.X.6b081284",
            b"DELETED.user.alice.X.0",
            b"DELETED.user.alice.X.123456789",
        ] {
            assert!(
                MboxName::from_internal(bad, &n).is_err(),
                "{:?}",
                lossy(bad)
            );
        }
        assert!(MboxName::from_dbname(b"user\x1Fa^b", &n).is_err());
        // regression (fuzz): a `!` without a domain would turn into one when re-read
        assert!(MboxName::user_inbox(b"!", &n).is_err());
        assert!(MboxName::from_dbname(b"user\x1Fa!b", &n).is_err());
        // with a domain, later `!`s are ordinary characters
        let d = int("d!user.a!b", &n);
        assert_eq!(d.localpart(), Some(&b"a!b"[..]));
        assert!(MboxName::from_dbname(b"user\x1F\x1Fa", &n).is_err());
        let long = format!("user.{}", "a".repeat(256));
        assert!(matches!(
            MboxName::from_internal(long.as_bytes(), &n),
            Err(NameError::ComponentTooLong { .. })
        ));
        let long = format!("user{}", ".abc".repeat(300));
        assert!(matches!(
            MboxName::from_internal(long.as_bytes(), &n),
            Err(NameError::TooLong { .. })
        ));
        // a real ".." component is harmless: it is written "^^"
        let n2 = int("user.alice.^^", &n);
        assert_eq!(n2.boxes(), &[b"..".to_vec()]);
        // regression (fuzz, 10-minute seeded run): a deleted shared mailbox named `user` has
        // no external spelling, deleted or not (the admin parser reads `user` as a user
        // without a name)
        for vd in [VirtDomains::Off, VirtDomains::Userid] {
            let n = NameConfig {
                unixhierarchysep: false,
                virtdomains: vd,
                ..NameConfig::default()
            };
            let d = int("DELETED.user.E3", &n);
            assert!(d.deleted().is_some() && d.localpart().is_none());
            assert!(d.to_external(&n).is_err());
            assert!(int("user", &n).to_external(&n).is_err());
            assert!(MboxName::from_external(b"DELETED.user.E3", &n).is_err());
        }
    }

    #[test]
    fn user_inbox_parent_child() {
        let n = nc();
        let inbox = MboxName::user_inbox(b"john.doe@example.com", &n).unwrap();
        assert_eq!(inbox.to_internal(), b"example.com!user.john^doe");
        assert_eq!(
            MboxName::user_inbox(b"bob@internal", &n)
                .unwrap()
                .to_internal(),
            b"user.bob"
        );
        let sent = inbox.child(b"Sent.2020", &n).unwrap();
        assert_eq!(sent.to_internal(), b"example.com!user.john^doe.Sent^2020");
        assert_eq!(sent.parent(&n).unwrap(), inbox);
        assert_eq!(inbox.parent(&n).unwrap().to_internal(), b"example.com!user");
        assert_eq!(int("shared", &n).parent(&n), None);
        assert_eq!(int("DELETED.user.a.1", &n).parent(&n), None);
        // child of the shared "user" becomes a user INBOX
        assert!(int("user", &n).child(b"alice", &n).unwrap().is_user_inbox());
        assert!(inbox.child(b"a/b", &n).is_err());
    }

    #[test]
    fn name_config_checks_the_prefix() {
        let mut c = nc();
        c.deleted_prefix = b"DEL.ETED".to_vec();
        assert!(c.check().is_err());
        c.deleted_prefix = b"Trash-deleted".to_vec();
        c.default_domain = b"..".to_vec();
        assert!(matches!(c.check(), Err(NameError::BadDomain { .. })));
        c.default_domain = b"example.net".to_vec();
        assert!(c.check().is_ok());
        let n = MboxName::from_internal(b"Trash-deleted.user.a.5", &c).unwrap();
        assert_eq!(n.deleted().unwrap().stamp, 5);
    }
}
