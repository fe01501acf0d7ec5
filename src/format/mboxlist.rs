//! mailboxes.db keys and values, for every layout Cyrus 2.4–3.6 wrote.
//!
//! Owns: the 3.5+ key families ([`MboxKey`]: `N`+dbname, `I`+uniqueid, `A…` reverse
//! ACL), the dlist values (3.5+ N- and I-records, 2.5–3.4 records keyed by intname), the
//! 2.4 text value `mbtype partition acl`, and the typed [`MboxEntry`]
//! (`imap/mboxlist.c:mboxlist_parse_entry`, `mboxlist_entry_dlist`, 3.4
//! `mboxlist_entry_cstring`).
//! Does not: convert between intnames and dbnames (`spool::names`), or read the
//! database file (`format::twoskip` and friends). Keys and names are bytes here.
//!
//! Byte identity: a value kept as its [`Dlist`] tree round-trips exactly
//! ([`parse_dlist_value`] / [`write_dlist_value`]), unknown keys and key order included.
//! The typed [`MboxEntry`] writes Cyrus's own key order, so it reproduces any value
//! Cyrus wrote, but drops keys it does not know.

use thiserror::Error;

use super::dlist::{self, Dlist, DlistError};
use super::header::{Acl, MbType};

/// First byte of a name key (`KEY_TYPE_NAME`).
pub const KEY_TYPE_NAME: u8 = b'N';
/// First byte of a uniqueid key (`KEY_TYPE_ID`).
pub const KEY_TYPE_ID: u8 = b'I';
/// First byte of a reverse-ACL key (`KEY_TYPE_ACL`).
pub const KEY_TYPE_ACL: u8 = b'A';
/// Separator inside reverse-ACL keys (`ACL_RECORDSEP_CHAR`, ASCII RS).
pub const ACL_RECORDSEP: u8 = 0x1e;
/// Separator between hierarchy components of a dbname (`DB_HIERSEP_CHAR`, ASCII US).
pub const DB_HIERSEP: u8 = 0x1f;
/// Separator after the domain of a dbname (`DB_DOMAINSEP_CHAR`, ASCII GS).
pub const DB_DOMAINSEP: u8 = 0x1d;

/// Why a mailboxes.db key or value could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MboxlistError {
    #[error("mailboxes.db key is empty")]
    EmptyKey,
    #[error("mailboxes.db key starts with {first:?}, not N, I or A (is this a pre-3.5 database?)")]
    UnknownKeyFamily { first: char },
    #[error("mailboxes.db reverse-ACL key {key:?} is malformed")]
    BadAclKey { key: String },
    #[error("mailboxes.db value is empty")]
    EmptyValue,
    #[error("mailboxes.db value: {0}")]
    Dlist(#[from] DlistError),
    #[error("mailboxes.db value is not a dlist kvlist")]
    NotKvList,
    #[error("mailboxes.db value: field {key}: {why}")]
    BadField { key: &'static str, why: String },
    #[error("mailboxes.db 2.4 value {value:?} is malformed: {why}")]
    BadLegacyValue { value: String, why: &'static str },
    #[error("mailboxes.db entry cannot be written as {format}: {why}")]
    NotRepresentable {
        format: &'static str,
        why: &'static str,
    },
}

// ---------------------------------------------------------------------------------------
// Keys

/// A 3.5+ mailboxes.db key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MboxKey {
    /// `N` + dbname: the record of a mailbox name (tombstones included).
    Name(Vec<u8>),
    /// `I` + uniqueid: the record of a mailbox id, with its name history.
    Id(Vec<u8>),
    /// `AS` RS, empty value: marks that the reverse-ACL keys are present.
    RaclMarker,
    /// `AU` RS user RS dbname (mailbox owned by a user) or `AS` RS user RS dbname
    /// (shared mailbox): `user` has `l` or `r` rights on `dbname`.
    Racl {
        user_owned: bool,
        user: Vec<u8>,
        dbname: Vec<u8>,
    },
}

impl MboxKey {
    /// Split a key into its family (`mboxlist_dbname_to_key`, `mboxlist_racl_key`).
    pub fn decode(key: &[u8]) -> Result<MboxKey, MboxlistError> {
        let (&first, rest) = key.split_first().ok_or(MboxlistError::EmptyKey)?;
        match first {
            KEY_TYPE_NAME => Ok(MboxKey::Name(rest.to_vec())),
            KEY_TYPE_ID => Ok(MboxKey::Id(rest.to_vec())),
            KEY_TYPE_ACL => {
                let bad = || MboxlistError::BadAclKey {
                    key: String::from_utf8_lossy(key).into_owned(),
                };
                let user_owned = match rest.first() {
                    Some(b'U') => true,
                    Some(b'S') => false,
                    _ => return Err(bad()),
                };
                if rest.get(1) != Some(&ACL_RECORDSEP) {
                    return Err(bad());
                }
                let body = rest.get(2..).unwrap_or_default();
                if body.is_empty() && !user_owned {
                    return Ok(MboxKey::RaclMarker);
                }
                let sep = body
                    .iter()
                    .position(|&c| c == ACL_RECORDSEP)
                    .ok_or_else(bad)?;
                Ok(MboxKey::Racl {
                    user_owned,
                    user: body.get(..sep).unwrap_or_default().to_vec(),
                    dbname: body.get(sep + 1..).unwrap_or_default().to_vec(),
                })
            }
            _ => Err(MboxlistError::UnknownKeyFamily {
                first: char::from(first),
            }),
        }
    }

    /// The key bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MboxKey::Name(dbname) => {
                out.push(KEY_TYPE_NAME);
                out.extend_from_slice(dbname);
            }
            MboxKey::Id(id) => {
                out.push(KEY_TYPE_ID);
                out.extend_from_slice(id);
            }
            MboxKey::RaclMarker => out.extend_from_slice(&[KEY_TYPE_ACL, b'S', ACL_RECORDSEP]),
            MboxKey::Racl {
                user_owned,
                user,
                dbname,
            } => {
                out.extend_from_slice(&[
                    KEY_TYPE_ACL,
                    if *user_owned { b'U' } else { b'S' },
                    ACL_RECORDSEP,
                ]);
                out.extend_from_slice(user);
                out.push(ACL_RECORDSEP);
                out.extend_from_slice(dbname);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Dlist values

/// Parse a dlist value (3.5+ or 2.5–3.4) into its tree, which must be a kvlist.
pub fn parse_dlist_value(value: &[u8]) -> Result<Dlist, MboxlistError> {
    if value.is_empty() {
        return Err(MboxlistError::EmptyValue);
    }
    let v = dlist::parse(value)?;
    if v.as_kvlist().is_none() {
        return Err(MboxlistError::NotKvList);
    }
    Ok(v)
}

/// The bytes of a dlist value.
pub fn write_dlist_value(v: &Dlist) -> Vec<u8> {
    dlist::write(v)
}

/// One former name of a mailbox, from the `H` list of an I-record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FormerName {
    /// `N`: the old dbname.
    pub dbname: Option<Vec<u8>>,
    /// `M`; 0 = absent.
    pub mtime: u64,
    /// `V`; 0 = absent.
    pub uidvalidity: u32,
    /// `C`; 0 = absent.
    pub createdmodseq: u64,
    /// `F`; 0 = absent.
    pub foldermodseq: u64,
    /// `T`.
    pub mbtype: MbType,
    /// `P`.
    pub partition: Option<Vec<u8>>,
}

/// A mailboxes.db entry, whatever layout it came from.
///
/// Numbers use 0 for "absent", as Cyrus does: it omits V, C and F when they are 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MboxEntry {
    /// `T` (3.5+ letters; older layouts are converted, with `legacy_dirs` set).
    pub mbtype: MbType,
    /// `I` of an N-record (for an I-record it is the key, not in the value; the 2.x
    /// extended text form may carry it too).
    pub uniqueid: Option<Vec<u8>>,
    /// `N` of an I-record: the mailbox's current dbname. (An N-record's name is its key.)
    pub dbname: Option<Vec<u8>>,
    /// `P`. Absent on tombstones.
    pub partition: Option<Vec<u8>>,
    /// `S`: the server of a remote (murder) mailbox.
    pub server: Option<Vec<u8>>,
    /// `V`.
    pub uidvalidity: u32,
    /// `C`.
    pub createdmodseq: u64,
    /// `F`.
    pub foldermodseq: u64,
    /// `M`: time of the last update of the entry. `None` when absent.
    pub mtime: Option<u64>,
    /// `A`. `None` when absent (tombstones); 2.4 text values always have one.
    pub acl: Option<Acl>,
    /// `H`: former names, newest first (I-records only). `None` when absent: an
    /// I-record written by Cyrus always has `H`, possibly `()`.
    pub name_history: Option<Vec<FormerName>>,
    /// `specialuse` from the 2.x extended text form.
    pub legacy_specialuse: Option<Vec<u8>>,
}

fn bad(key: &'static str, why: impl Into<String>) -> MboxlistError {
    MboxlistError::BadField {
        key,
        why: why.into(),
    }
}

fn opt_str(key: &'static str, v: &Dlist) -> Result<Option<Vec<u8>>, MboxlistError> {
    match v {
        Dlist::Nil => Ok(None),
        Dlist::Str(s) => Ok(Some(s.clone())),
        _ => Err(bad(key, "is a list, expected a string")),
    }
}

fn num(key: &'static str, v: &Dlist) -> Result<u64, MboxlistError> {
    match v {
        Dlist::Nil => Ok(0),
        _ => v
            .as_u64()
            .ok_or_else(|| bad(key, format!("{:?} is not a decimal number", dlist_text(v)))),
    }
}

fn num32(key: &'static str, v: &Dlist) -> Result<u32, MboxlistError> {
    u32::try_from(num(key, v)?).map_err(|_| bad(key, "does not fit in 32 bits"))
}

fn dlist_text(v: &Dlist) -> String {
    String::from_utf8_lossy(&dlist::write(v)).into_owned()
}

fn mbtype36(v: &Dlist) -> Result<MbType, MboxlistError> {
    match opt_str("T", v)? {
        None => Ok(MbType::default()),
        Some(s) => MbType::parse(&s).map_err(|e| bad("T", e.to_string())),
    }
}

fn acl(v: &Dlist) -> Result<Acl, MboxlistError> {
    Acl::from_dlist(v).map_err(|e| bad("A", e.to_string()))
}

fn push_str(kv: &mut Vec<(Vec<u8>, Dlist)>, key: &[u8], v: &Option<Vec<u8>>) {
    if let Some(s) = v {
        kv.push((key.to_vec(), Dlist::str(s)));
    }
}

fn push_num(kv: &mut Vec<(Vec<u8>, Dlist)>, key: &[u8], n: u64) {
    if n != 0 {
        kv.push((key.to_vec(), Dlist::num(n)));
    }
}

impl FormerName {
    fn from_dlist(v: &Dlist) -> Result<FormerName, MboxlistError> {
        let kv = v
            .as_kvlist()
            .ok_or_else(|| bad("H", "item is not a kvlist"))?;
        let mut f = FormerName::default();
        for (k, val) in kv {
            match k.as_slice() {
                b"N" => f.dbname = opt_str("H/N", val)?,
                b"M" => f.mtime = num("H/M", val)?,
                b"V" => f.uidvalidity = num32("H/V", val)?,
                b"C" => f.createdmodseq = num("H/C", val)?,
                b"F" => f.foldermodseq = num("H/F", val)?,
                b"T" => f.mbtype = mbtype36(val)?,
                b"P" => f.partition = opt_str("H/P", val)?,
                _ => {}
            }
        }
        Ok(f)
    }

    /// `mboxlist_entry_dlist`'s history item: N M V C F T P.
    fn to_dlist(&self) -> Dlist {
        let mut kv = Vec::new();
        kv.push((
            b"N".to_vec(),
            self.dbname.as_ref().map_or(Dlist::Nil, Dlist::str),
        ));
        push_num(&mut kv, b"M", self.mtime);
        push_num(&mut kv, b"V", u64::from(self.uidvalidity));
        push_num(&mut kv, b"C", self.createdmodseq);
        push_num(&mut kv, b"F", self.foldermodseq);
        kv.push((b"T".to_vec(), Dlist::Str(self.mbtype.to_string_bytes())));
        push_str(&mut kv, b"P", &self.partition);
        Dlist::KvList(kv)
    }
}

impl MboxEntry {
    /// Interpret a 3.5+ value (N- or I-record): any key order, unknown keys ignored,
    /// later duplicates win (`parseentry_cb`).
    pub fn from_v36_dlist(v: &Dlist) -> Result<MboxEntry, MboxlistError> {
        let kv = v.as_kvlist().ok_or(MboxlistError::NotKvList)?;
        let mut e = MboxEntry::default();
        for (k, val) in kv {
            match k.as_slice() {
                b"T" => e.mbtype = mbtype36(val)?,
                b"I" => e.uniqueid = opt_str("I", val)?,
                b"N" => e.dbname = opt_str("N", val)?,
                b"P" => e.partition = opt_str("P", val)?,
                b"S" => e.server = opt_str("S", val)?,
                b"V" => e.uidvalidity = num32("V", val)?,
                b"C" => e.createdmodseq = num("C", val)?,
                b"F" => e.foldermodseq = num("F", val)?,
                b"M" => e.mtime = Some(num("M", val)?),
                b"A" => e.acl = Some(acl(val)?),
                b"H" => {
                    let items = val.as_list().ok_or_else(|| bad("H", "is not a list"))?;
                    e.name_history = Some(
                        items
                            .iter()
                            .map(FormerName::from_dlist)
                            .collect::<Result<_, _>>()?,
                    );
                }
                _ => {}
            }
        }
        Ok(e)
    }

    /// The value of the `N<dbname>` record (`mboxlist_entry_dlist(.., for_ikey=0)`):
    /// T I P S V C F M A.
    pub fn to_v36_name_dlist(&self) -> Dlist {
        self.v36_dlist(false)
    }

    /// The value of the `I<uniqueid>` record (`for_ikey=1`): T N P S V C F M A H, with
    /// `H ()` when there is no history.
    pub fn to_v36_id_dlist(&self) -> Dlist {
        self.v36_dlist(true)
    }

    fn v36_dlist(&self, for_ikey: bool) -> Dlist {
        let mut kv = vec![(b"T".to_vec(), Dlist::Str(self.mbtype.to_string_bytes()))];
        if for_ikey {
            kv.push((
                b"N".to_vec(),
                self.dbname.as_ref().map_or(Dlist::Nil, Dlist::str),
            ));
        } else {
            push_str(&mut kv, b"I", &self.uniqueid);
        }
        push_str(&mut kv, b"P", &self.partition);
        push_str(&mut kv, b"S", &self.server);
        push_num(&mut kv, b"V", u64::from(self.uidvalidity));
        push_num(&mut kv, b"C", self.createdmodseq);
        push_num(&mut kv, b"F", self.foldermodseq);
        if let Some(m) = self.mtime {
            kv.push((b"M".to_vec(), Dlist::num(m)));
        }
        if let Some(a) = &self.acl {
            kv.push((b"A".to_vec(), a.to_dlist()));
        }
        if for_ikey {
            let h = self.name_history.iter().flatten().map(FormerName::to_dlist);
            kv.push((b"H".to_vec(), Dlist::List(h.collect())));
        }
        Dlist::KvList(kv)
    }

    /// Interpret a 2.5–3.4 value (keyed by intname; 3.4 `T` letters).
    pub fn from_v34_dlist(v: &Dlist) -> Result<MboxEntry, MboxlistError> {
        let kv = v.as_kvlist().ok_or(MboxlistError::NotKvList)?;
        let mut e = MboxEntry {
            mbtype: MbType::EMAIL_LEGACY,
            ..MboxEntry::default()
        };
        for (k, val) in kv {
            match k.as_slice() {
                b"T" => {
                    e.mbtype = match opt_str("T", val)? {
                        None => MbType::EMAIL_LEGACY,
                        Some(s) => MbType::parse_v34(&s).map_err(|x| bad("T", x.to_string()))?,
                    }
                }
                b"I" => e.uniqueid = opt_str("I", val)?,
                b"P" => e.partition = opt_str("P", val)?,
                b"S" => e.server = opt_str("S", val)?,
                b"V" => e.uidvalidity = num32("V", val)?,
                b"C" => e.createdmodseq = num("C", val)?,
                b"F" => e.foldermodseq = num("F", val)?,
                b"M" => e.mtime = Some(num("M", val)?),
                b"A" => e.acl = Some(acl(val)?),
                _ => {}
            }
        }
        Ok(e)
    }

    /// A 2.5–3.4 value (3.4 `mboxlist_entry_cstring`): A I P S T V C F M, `T` omitted for
    /// plain email. (2.5 wrote neither C nor F; they are omitted when 0 anyway.)
    pub fn to_v34_dlist(&self) -> Result<Dlist, MboxlistError> {
        let t = self
            .mbtype
            .to_v34_string()
            .ok_or(MboxlistError::NotRepresentable {
                format: "a 2.5-3.4 value",
                why: "sieve mailboxes did not exist",
            })?;
        let mut kv = Vec::new();
        if let Some(a) = &self.acl {
            kv.push((b"A".to_vec(), a.to_dlist()));
        }
        push_str(&mut kv, b"I", &self.uniqueid);
        push_str(&mut kv, b"P", &self.partition);
        push_str(&mut kv, b"S", &self.server);
        if !t.is_empty() {
            kv.push((b"T".to_vec(), Dlist::Str(t)));
        }
        push_num(&mut kv, b"V", u64::from(self.uidvalidity));
        push_num(&mut kv, b"C", self.createdmodseq);
        push_num(&mut kv, b"F", self.foldermodseq);
        if let Some(m) = self.mtime {
            kv.push((b"M".to_vec(), Dlist::num(m)));
        }
        Ok(Dlist::KvList(kv))
    }

    /// Parse a 2.4 text value `mbtype SP [server!]partition SP acl`, optionally preceded
    /// by the extended `(uniqueid X specialuse Y) ` form (`mboxlist_parse_entry`).
    pub fn parse_v24(value: &[u8]) -> Result<MboxEntry, MboxlistError> {
        let malformed = |why| MboxlistError::BadLegacyValue {
            value: String::from_utf8_lossy(value).into_owned(),
            why,
        };
        if value.is_empty() {
            return Err(MboxlistError::EmptyValue);
        }
        let mut e = MboxEntry::default();
        let mut rest = value;
        if let Some(inner) = rest.strip_prefix(b"(") {
            let close = inner
                .iter()
                .position(|&c| c == b')')
                .ok_or_else(|| malformed("unterminated '(' prefix"))?;
            let mut words = inner.get(..close).unwrap_or_default().split(|&c| c == b' ');
            while let (Some(k), Some(v)) = (words.next(), words.next()) {
                match k {
                    b"uniqueid" => e.uniqueid = Some(v.to_vec()),
                    b"specialuse" => e.legacy_specialuse = Some(v.to_vec()),
                    _ => {}
                }
            }
            rest = inner.get(close + 1..).unwrap_or_default();
            rest = rest.strip_prefix(b" ").unwrap_or(rest);
        }
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| malformed("no space after the mailbox type"))?;
        let bits = dlist::parse_u64(rest.get(..sp).unwrap_or_default())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| malformed("mailbox type is not a number"))?;
        e.mbtype = MbType::from_v34_bits(bits).map_err(|_| malformed("unknown type bits"))?;
        rest = rest.get(sp + 1..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        let location = rest.get(..end).unwrap_or_default();
        match location.iter().position(|&c| c == b'!') {
            Some(bang) => {
                e.server = Some(location.get(..bang).unwrap_or_default().to_vec());
                e.partition = Some(location.get(bang + 1..).unwrap_or_default().to_vec());
            }
            None => e.partition = Some(location.to_vec()),
        }
        e.acl = Some(Acl::parse_cyrus_string(
            rest.get(end + 1..).unwrap_or_default(),
        ));
        Ok(e)
    }

    /// The 2.4 text value; the extended prefix only when a uniqueid or specialuse is set.
    pub fn to_v24(&self) -> Result<Vec<u8>, MboxlistError> {
        let not = |why| MboxlistError::NotRepresentable {
            format: "a 2.4 value",
            why,
        };
        let bits = self
            .mbtype
            .to_v34_bits()
            .ok_or(not("no such mailbox type in 2.4"))?;
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        if let Some(id) = &self.uniqueid {
            prefix.push((&b"uniqueid"[..], id));
        }
        if let Some(su) = &self.legacy_specialuse {
            prefix.push((&b"specialuse"[..], su));
        }
        if !prefix.is_empty() {
            out.push(b'(');
            for (i, (k, v)) in prefix.iter().enumerate() {
                if v.is_empty() || v.iter().any(|&c| matches!(c, b' ' | b')')) {
                    return Err(not("uniqueid/specialuse contains a space or ')'"));
                }
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(k);
                out.push(b' ');
                out.extend_from_slice(v);
            }
            out.extend_from_slice(b") ");
        }
        out.extend_from_slice(bits.to_string().as_bytes());
        out.push(b' ');
        if let Some(s) = &self.server {
            out.extend_from_slice(s);
            out.push(b'!');
        }
        let part = self.partition.as_deref().unwrap_or_default();
        if part.iter().any(|&c| matches!(c, b' ' | b'!')) {
            return Err(not("partition contains a space or '!'"));
        }
        out.extend_from_slice(part);
        out.push(b' ');
        out.extend_from_slice(
            &self
                .acl
                .as_ref()
                .map(Acl::to_cyrus_string)
                .unwrap_or_default(),
        );
        Ok(out)
    }

    /// True when the mailbox's spool uses name-based directories (`l`).
    pub fn legacy_dirs(&self) -> bool {
        self.mbtype.legacy_dirs
    }

    /// True for a tombstone (`d` or `i` with no partition): Cyrus treats it as absent.
    pub fn is_tombstone(&self) -> bool {
        self.mbtype.deleted || (self.mbtype.intermediate && self.partition.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N_ALICE: &[u8] = b"%(T el I 3r3tll9s464dvk4pqkoe0g0w P default V 1795690632 C 1 F 2 M 1795690631 A %(alice lrswipkxtecdan bob lrs))";
    const I_DAVE: &[u8] = b"%(T el N user\x1fdave\x1fOld P default V 1795690864 C 1 F 2 M 1795690863 A %(dave lrswipkxtecdan) H (%(N user\x1fdave\x1fDrafts M 1795690863 V 1795690864 C 1 F 2 T ed)))";

    #[test]
    fn keys() {
        for (key, want) in [
            (
                &b"Nuser\x1falice"[..],
                MboxKey::Name(b"user\x1falice".to_vec()),
            ),
            (
                b"I3r3tll9s464dvk4pqkoe0g0w",
                MboxKey::Id(b"3r3tll9s464dvk4pqkoe0g0w".to_vec()),
            ),
            (b"AS\x1e", MboxKey::RaclMarker),
            (
                b"AU\x1ebob\x1euser\x1falice",
                MboxKey::Racl {
                    user_owned: true,
                    user: b"bob".to_vec(),
                    dbname: b"user\x1falice".to_vec(),
                },
            ),
            (
                b"AS\x1eanyone\x1eshared\x1ffolder",
                MboxKey::Racl {
                    user_owned: false,
                    user: b"anyone".to_vec(),
                    dbname: b"shared\x1ffolder".to_vec(),
                },
            ),
        ] {
            assert_eq!(MboxKey::decode(key).unwrap(), want);
            assert_eq!(want.encode(), key);
        }
        assert_eq!(MboxKey::decode(b""), Err(MboxlistError::EmptyKey));
        assert!(matches!(
            MboxKey::decode(b"user.alice"),
            Err(MboxlistError::UnknownKeyFamily { first: 'u' })
        ));
        for bad in [&b"A"[..], b"AX\x1e", b"AU", b"AU\x1e", b"AS\x1enosep"] {
            assert!(matches!(
                MboxKey::decode(bad),
                Err(MboxlistError::BadAclKey { .. })
            ));
        }
    }

    #[test]
    fn v36_name_record_round_trips_typed_and_raw() {
        let tree = parse_dlist_value(N_ALICE).unwrap();
        assert_eq!(write_dlist_value(&tree), N_ALICE);
        let e = MboxEntry::from_v36_dlist(&tree).unwrap();
        assert!(e.legacy_dirs());
        assert_eq!(
            e.uniqueid.as_deref(),
            Some(&b"3r3tll9s464dvk4pqkoe0g0w"[..])
        );
        assert_eq!(e.partition.as_deref(), Some(&b"default"[..]));
        assert_eq!(e.uidvalidity, 1_795_690_632);
        assert_eq!((e.createdmodseq, e.foldermodseq), (1, 2));
        assert_eq!(e.mtime, Some(1_795_690_631));
        assert_eq!(e.acl.as_ref().unwrap().entries[1].identifier, b"bob");
        assert_eq!(e.name_history, None);
        assert_eq!(write_dlist_value(&e.to_v36_name_dlist()), N_ALICE);
    }

    #[test]
    fn v36_id_record_with_history_round_trips() {
        let e = MboxEntry::from_v36_dlist(&parse_dlist_value(I_DAVE).unwrap()).unwrap();
        assert_eq!(e.dbname.as_deref(), Some(&b"user\x1fdave\x1fOld"[..]));
        let h = e.name_history.as_ref().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].dbname.as_deref(), Some(&b"user\x1fdave\x1fDrafts"[..]));
        assert!(h[0].mbtype.deleted && !h[0].mbtype.legacy_dirs);
        assert_eq!(h[0].partition, None);
        assert_eq!(write_dlist_value(&e.to_v36_id_dlist()), I_DAVE);
        // Empty history is written as H ().
        let mut e2 = e.clone();
        e2.name_history = None;
        assert!(write_dlist_value(&e2.to_v36_id_dlist()).ends_with(b" H ())"));
    }

    #[test]
    fn v36_tombstone_and_quoted_names() {
        let t = b"%(T ed I 3r3tll9s464dvk4pqkoe0g0w V 1795690632 C 1 F 5 M 1795690700)";
        let e = MboxEntry::from_v36_dlist(&parse_dlist_value(t).unwrap()).unwrap();
        assert!(e.is_tombstone());
        assert_eq!(e.partition, None);
        assert_eq!(e.acl, None);
        assert_eq!(write_dlist_value(&e.to_v36_name_dlist()), t);
        let spaced = b"%(T el N \"user\x1falice\x1fa b\" P default M 5 A %() H ())";
        let e = MboxEntry::from_v36_dlist(&parse_dlist_value(spaced).unwrap()).unwrap();
        assert_eq!(e.dbname.as_deref(), Some(&b"user\x1falice\x1fa b"[..]));
        assert_eq!(write_dlist_value(&e.to_v36_id_dlist()), spaced);
    }

    #[test]
    fn v36_unknown_keys_are_kept_by_the_tree() {
        let v = b"%(T e X (1 2) I id P p M 3)";
        let tree = parse_dlist_value(v).unwrap();
        assert_eq!(write_dlist_value(&tree), v);
        let e = MboxEntry::from_v36_dlist(&tree).unwrap();
        assert_eq!(
            write_dlist_value(&e.to_v36_name_dlist()),
            b"%(T e I id P p M 3)"
        );
    }

    #[test]
    fn v34_values() {
        let v = b"%(A %(alice lrswipkxtecda anyone lrs) I 0b1e8a3c5f7d9e21 P default T c V 1600000000 C 1 F 7 M 1600000001)";
        let e = MboxEntry::from_v34_dlist(&parse_dlist_value(v).unwrap()).unwrap();
        assert_eq!(e.mbtype.kind, super::super::header::MbKind::Calendar);
        assert!(e.legacy_dirs());
        assert_eq!(write_dlist_value(&e.to_v34_dlist().unwrap()), v);
        // Plain email: no T at all.
        let v = b"%(A %(bob lrs) I 0123 P default V 1 M 2)";
        let e = MboxEntry::from_v34_dlist(&parse_dlist_value(v).unwrap()).unwrap();
        assert_eq!(e.mbtype, MbType::EMAIL_LEGACY);
        assert_eq!(write_dlist_value(&e.to_v34_dlist().unwrap()), v);
        // Converted to 3.6 the entry gets `el`.
        assert_eq!(
            write_dlist_value(&e.to_v36_name_dlist()),
            b"%(T el I 0123 P default V 1 M 2 A %(bob lrs))"
        );
    }

    #[test]
    fn v24_values() {
        let v = b"0 default alice\tlrswipcda\tanyone\tlrs\t";
        let e = MboxEntry::parse_v24(v).unwrap();
        assert_eq!(e.mbtype, MbType::EMAIL_LEGACY);
        assert_eq!(e.partition.as_deref(), Some(&b"default"[..]));
        assert_eq!(e.acl.as_ref().unwrap().entries.len(), 2);
        assert_eq!(e.to_v24().unwrap(), v);
        let v = b"1 backend1!default bob\tlrs\t";
        let e = MboxEntry::parse_v24(v).unwrap();
        assert!(e.mbtype.remote);
        assert_eq!(e.server.as_deref(), Some(&b"backend1"[..]));
        assert_eq!(e.to_v24().unwrap(), v);
        let v = b"(uniqueid 0123abcd specialuse \\Sent) 0 default alice\tlrs\t";
        let e = MboxEntry::parse_v24(v).unwrap();
        assert_eq!(e.uniqueid.as_deref(), Some(&b"0123abcd"[..]));
        assert_eq!(e.legacy_specialuse.as_deref(), Some(&b"\\Sent"[..]));
        assert_eq!(e.to_v24().unwrap(), v);
        // Empty ACL.
        assert_eq!(
            MboxEntry::parse_v24(b"16 default ")
                .unwrap()
                .to_v24()
                .unwrap(),
            b"16 default "
        );
        for bad in [&b""[..], b"x default acl", b"0", b"(uniqueid x"] {
            assert!(MboxEntry::parse_v24(bad).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn bad_values() {
        assert_eq!(parse_dlist_value(b""), Err(MboxlistError::EmptyValue));
        assert_eq!(parse_dlist_value(b"(a b)"), Err(MboxlistError::NotKvList));
        let e = |v: &[u8]| MboxEntry::from_v36_dlist(&parse_dlist_value(v).unwrap());
        assert!(matches!(
            e(b"%(V x)"),
            Err(MboxlistError::BadField { key: "V", .. })
        ));
        assert!(matches!(
            e(b"%(V 4294967296)"),
            Err(MboxlistError::BadField { key: "V", .. })
        ));
        assert!(matches!(
            e(b"%(T q)"),
            Err(MboxlistError::BadField { key: "T", .. })
        ));
        assert!(matches!(
            e(b"%(H (x))"),
            Err(MboxlistError::BadField { key: "H", .. })
        ));
        assert!(matches!(
            e(b"%(A (x))"),
            Err(MboxlistError::BadField { key: "A", .. })
        ));
        assert!(matches!(
            e(b"%(P (x))"),
            Err(MboxlistError::BadField { key: "P", .. })
        ));
    }

    /// Undo `cyrusdb_decode.py dump`'s escapes: `\t \n \r \\ \xNN`.
    fn unescape(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&c) = s.get(i) {
            if c == b'\\' {
                match s.get(i + 1) {
                    Some(b't') => out.push(b'\t'),
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'x') => {
                        let hex = std::str::from_utf8(&s[i + 2..i + 4]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 2;
                    }
                    other => panic!("bad escape {other:?}"),
                }
                i += 2;
            } else {
                out.push(c);
                i += 1;
            }
        }
        out
    }

    /// Every record of the real 3.6.1 mailboxes.db in fixtures/format-samples (dumped
    /// from the twoskip file next to it).
    #[test]
    fn every_real_record_round_trips_byte_identically() {
        let tsv = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/format-samples/mailboxes/mailboxes.tsv"),
        )
        .unwrap();
        let (mut names, mut ids, mut racls, mut history) = (0, 0, 0, 0);
        for line in tsv.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let tab = line.iter().position(|&c| c == b'\t').unwrap();
            let key = unescape(&line[..tab]);
            let value = unescape(&line[tab + 1..]);
            let k = MboxKey::decode(&key).unwrap();
            assert_eq!(k.encode(), key);
            match k {
                MboxKey::Name(_) | MboxKey::Id(_) => {
                    let tree = parse_dlist_value(&value).unwrap();
                    assert_eq!(write_dlist_value(&tree), value);
                    let e = MboxEntry::from_v36_dlist(&tree).unwrap();
                    assert!(e.legacy_dirs());
                    let typed = if matches!(k, MboxKey::Name(_)) {
                        names += 1;
                        assert!(e.uniqueid.is_some());
                        e.to_v36_name_dlist()
                    } else {
                        ids += 1;
                        history += e.name_history.as_ref().unwrap().len();
                        e.to_v36_id_dlist()
                    };
                    assert_eq!(
                        write_dlist_value(&typed),
                        value,
                        "{}",
                        String::from_utf8_lossy(&key)
                    );
                }
                MboxKey::RaclMarker | MboxKey::Racl { .. } => {
                    racls += 1;
                    assert!(value.is_empty());
                }
            }
        }
        assert_eq!((names, ids, racls, history), (14, 11, 5, 3));
    }

    #[test]
    fn every_record_of_the_fixture_databases_round_trips() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut seen = 0;
        for (file, scan) in [
            (
                "format-samples/mailboxes/mailboxes.db",
                test_scan::twoskip as fn(&[u8]) -> _,
            ),
            ("legacy/conf/mailboxes.db", test_scan::twoskip),
            ("uuid/conf/mailboxes.db", test_scan::skiplist),
        ] {
            let Ok(data) = std::fs::read(root.join(file)) else {
                continue;
            };
            for (key, value) in scan(&data) {
                let what = format!("{file} {:?}", String::from_utf8_lossy(&key));
                match MboxKey::decode(&key).expect(&what) {
                    MboxKey::Name(_) => {
                        let e = MboxEntry::from_v36_dlist(&parse_dlist_value(&value).expect(&what))
                            .expect(&what);
                        assert_eq!(write_dlist_value(&e.to_v36_name_dlist()), value, "{what}");
                    }
                    MboxKey::Id(_) => {
                        let e = MboxEntry::from_v36_dlist(&parse_dlist_value(&value).expect(&what))
                            .expect(&what);
                        assert_eq!(write_dlist_value(&e.to_v36_id_dlist()), value, "{what}");
                    }
                    _ => assert!(value.is_empty(), "{what}"),
                }
                seen += 1;
            }
        }
        assert!(seen >= 30, "only {seen} records");
    }
}

/// Test-only sequential scanners over real twoskip/skiplist files: every key/value record
/// physically present (superseded ones included, which Cyrus wrote too). The real
/// readers live in `format::twoskip` / `format::skiplist`.
#[cfg(test)]
pub(crate) mod test_scan {
    fn be32(d: &[u8], at: usize) -> usize {
        u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize
    }
    fn be64(d: &[u8], at: usize) -> usize {
        u64::from_be_bytes(d[at..at + 8].try_into().unwrap()) as usize
    }

    /// (key, value) of every `+` record of a twoskip file.
    pub(crate) fn twoskip(d: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert_eq!(&d[4..16], b"twoskip file");
        let end = be64(d, 0x30);
        let mut out = Vec::new();
        let mut at = 0x40;
        while at < end {
            if &d[at..at + 8] == b" BLANK\x07\xa0" {
                at += 8;
                continue;
            }
            let (kind, level) = (d[at], d[at + 1] as usize);
            let mut keylen = u16::from_be_bytes([d[at + 2], d[at + 3]]) as usize;
            let mut vallen = be32(d, at + 4);
            let mut head = 8;
            if keylen == 0xffff {
                keylen = be64(d, at + head);
                head += 8;
            }
            if vallen == 0xffff_ffff {
                vallen = be64(d, at + head);
                head += 8;
            }
            head += 8 * (level + 1) + 8;
            let data = at + head;
            if kind == b'+' {
                out.push((
                    d[data..data + keylen].to_vec(),
                    d[data + keylen..data + keylen + vallen].to_vec(),
                ));
            }
            at = data + (keylen + vallen).div_ceil(8) * 8;
        }
        out
    }

    /// (key, value) of every INORDER/ADD record of a skiplist file.
    pub(crate) fn skiplist(d: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert_eq!(&d[4..17], b"skiplist file");
        let mut out = Vec::new();
        let mut at = 0x30;
        while at + 4 <= d.len() {
            match be32(d, at) {
                255 => at += 4,
                4 => at += 8,
                t @ (1 | 2 | 257) => {
                    let keylen = be32(d, at + 4);
                    let k = at + 8;
                    let dl = k + keylen.div_ceil(4) * 4;
                    let vallen = be32(d, dl);
                    let v = dl + 4;
                    at = v + vallen.div_ceil(4) * 4;
                    while be32(d, at) != 0xffff_ffff {
                        at += 4;
                    }
                    at += 4;
                    if t != 257 {
                        out.push((d[k..k + keylen].to_vec(), d[v..v + vallen].to_vec()));
                    }
                }
                t => panic!("skiplist record type {t} at {at}"),
            }
        }
        out
    }
}
