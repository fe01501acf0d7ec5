//! Quota root records: the value stored per quota root in the quota database, and the
//! quotalegacy file holding that value.
//!
//! Owns: the dlist record of 2.5+ (`imap/quota_db.c:quota_write`, `quota_parseval`), the
//! 2.x `used limit` record, and the quotalegacy file wrapping of both
//! (`lib/cyrusdb_quotalegacy.c:myfetch`/`mystore`).
//! Does not: find quota files (`spool::paths`), lock them, or compute usage.
//!
//! Units are as stored: usage of STORAGE and X-ANNOTATION-STORAGE in bytes, their limits
//! in KiB ([`Resource::unit`]); MESSAGE and X-NUM-FOLDERS in counts.

use thiserror::Error;

use super::dlist::{self, Dlist, DlistError};

/// A quota resource, in Cyrus's order (`enum quota_resource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Storage,
    Message,
    AnnotationStorage,
    NumFolders,
}

impl Resource {
    /// All resources, in record order.
    pub const ALL: [Resource; 4] = [
        Resource::Storage,
        Resource::Message,
        Resource::AnnotationStorage,
        Resource::NumFolders,
    ];

    /// Position in [`QuotaRecord::resources`].
    pub fn index(self) -> usize {
        match self {
            Resource::Storage => 0,
            Resource::Message => 1,
            Resource::AnnotationStorage => 2,
            Resource::NumFolders => 3,
        }
    }

    /// The IMAP name (`quota_names`).
    pub fn imap_name(self) -> &'static str {
        [
            "STORAGE",
            "MESSAGE",
            "X-ANNOTATION-STORAGE",
            "X-NUM-FOLDERS",
        ][self.index()]
    }

    /// The key in the dlist record (`quota_db_names`).
    pub fn db_key(self) -> &'static [u8] {
        [&b"S"[..], b"M", b"AS", b"NF"][self.index()]
    }

    /// How many usage units one limit unit is (`quota_units`): a limit of L allows
    /// `L * unit` of usage.
    pub fn unit(self) -> u64 {
        [1024, 1, 1024, 1][self.index()]
    }
}

/// Usage and limit of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResourceQuota {
    /// Usage, in usage units (bytes or count).
    pub used: u64,
    /// Limit in limit units (KiB or count); `None` = unlimited (`QUOTA_UNLIMITED`, -1,
    /// stored by omission). 0 is a real limit.
    pub limit: Option<u64>,
}

/// Scan state that `quota -f` leaves in a record while it runs (`SCAN %(MBOX ...)`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct QuotaScan {
    /// The last mailbox counted so far.
    pub mbox: Vec<u8>,
    /// Usage counted so far, per resource.
    pub used: [u64; 4],
}

/// Which text layout a record uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaFormat {
    /// 2.5+: `%(S (used [limit]) M (...) AS (...) NF (...) [SCAN %(...)] [MODSEQ n])`.
    Dlist,
    /// 2.x: `used limit` (STORAGE only; 3.6 also reads `NAME used limit` groups after it).
    Legacy,
}

/// One quota root record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaRecord {
    /// The layout it was read in, and the one [`write_value`] produces.
    pub format: QuotaFormat,
    /// Indexed by [`Resource::index`]. Absent resources read as used 0, unlimited.
    pub resources: [ResourceQuota; 4],
    /// Present only while (or after an interrupted) `quota -f`.
    pub scan: Option<QuotaScan>,
    /// `MODSEQ` (3.1+). `None` when absent (2.5–3.0, and the legacy layout).
    pub modseq: Option<u64>,
}

impl QuotaRecord {
    /// A new 3.6-style record with everything unlimited and unused.
    pub fn new() -> QuotaRecord {
        QuotaRecord {
            format: QuotaFormat::Dlist,
            resources: [ResourceQuota::default(); 4],
            scan: None,
            modseq: Some(0),
        }
    }

    /// The usage and limit of one resource.
    pub fn get(&self, r: Resource) -> ResourceQuota {
        self.resources.get(r.index()).copied().unwrap_or_default()
    }

    /// Mutable access to one resource.
    pub fn get_mut(&mut self, r: Resource) -> &mut ResourceQuota {
        &mut self.resources[r.index() % 4]
    }
}

impl Default for QuotaRecord {
    fn default() -> Self {
        QuotaRecord::new()
    }
}

/// Why a quota record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuotaError {
    #[error("quota record is empty (Cyrus treats this as a missing quota root)")]
    Empty,
    #[error("quotalegacy file does not end with a newline (Cyrus reports an I/O error)")]
    NoFinalNewline,
    #[error("quota record: {0}")]
    Dlist(#[from] DlistError),
    #[error("quota record: field {key}: {why}")]
    BadField { key: String, why: &'static str },
    #[error("legacy quota record {text:?}: {why}")]
    BadLegacy { text: String, why: &'static str },
}

fn field_err(key: &[u8], why: &'static str) -> QuotaError {
    QuotaError::BadField {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    }
}

fn number(key: &[u8], v: &Dlist) -> Result<u64, QuotaError> {
    v.as_u64()
        .ok_or_else(|| field_err(key, "is not an unsigned decimal number"))
}

/// Parse a quota database value (what a twoskip/skiplist quota db stores, and what the
/// quotalegacy backend hands Cyrus after [`parse_legacy_file`]'s unwrapping).
pub fn parse_value(value: &[u8]) -> Result<QuotaRecord, QuotaError> {
    match value.first() {
        None => Err(QuotaError::Empty),
        Some(b'%') => parse_dlist(value),
        Some(_) => parse_legacy(value),
    }
}

fn parse_dlist(value: &[u8]) -> Result<QuotaRecord, QuotaError> {
    let v = dlist::parse(value)?;
    // A value starting with '%' that parses is always a kvlist.
    let kv = v.as_kvlist().unwrap_or_default();
    let mut q = QuotaRecord {
        format: QuotaFormat::Dlist,
        resources: [ResourceQuota::default(); 4],
        scan: None,
        modseq: None,
    };
    for (k, val) in kv {
        if let Some(r) = Resource::ALL.iter().find(|r| r.db_key() == k.as_slice()) {
            let items = val
                .as_list()
                .ok_or_else(|| field_err(k, "is not a list (used [limit])"))?;
            let rq = q.get_mut(*r);
            rq.used = match items.first() {
                Some(u) => number(k, u)?,
                None => 0,
            };
            rq.limit = items.get(1).map(|l| number(k, l)).transpose()?;
        } else if k == b"SCAN" {
            let skv = val
                .as_kvlist()
                .ok_or_else(|| field_err(k, "is not a kvlist"))?;
            let mut scan = QuotaScan::default();
            let mut have_mbox = false;
            for (sk, sv) in skv {
                if sk == b"MBOX" {
                    scan.mbox = sv
                        .as_bytes()
                        .ok_or_else(|| field_err(sk, "SCAN MBOX is not a string"))?
                        .to_vec();
                    have_mbox = true;
                } else if let Some(r) = Resource::ALL.iter().find(|r| r.db_key() == sk.as_slice()) {
                    scan.used[r.index()] = number(sk, sv)?;
                }
            }
            // quota_parseval ignores SCAN data without an MBOX.
            q.scan = have_mbox.then_some(scan);
        } else if k == b"MODSEQ" {
            q.modseq = Some(number(k, val)?);
        }
    }
    Ok(q)
}

/// 2.x `used limit`, as 3.6 `quota_parseval` reads it: whitespace-separated fields;
/// a pair, an optional stray third number (left by a failed `quota -f`), then
/// optionally `NAME used limit [n]` groups for further resources.
fn parse_legacy(value: &[u8]) -> Result<QuotaRecord, QuotaError> {
    let bad = |why| QuotaError::BadLegacy {
        text: String::from_utf8_lossy(value).into_owned(),
        why,
    };
    let fields: Vec<&[u8]> = value
        .split(|c| c.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    let mut q = QuotaRecord {
        format: QuotaFormat::Legacy,
        resources: [ResourceQuota::default(); 4],
        scan: None,
        modseq: None,
    };
    let mut i = 0;
    let mut res = Resource::Storage;
    loop {
        let (Some(used), Some(limit)) = (fields.get(i), fields.get(i + 1)) else {
            return Err(bad("expected a usage and a limit"));
        };
        let used = dlist::parse_u64(used).ok_or_else(|| bad("usage is not a number"))?;
        let limit = parse_i64(limit).ok_or_else(|| bad("limit is not a number"))?;
        *q.get_mut(res) = ResourceQuota {
            used,
            limit: u64::try_from(limit).ok(),
        };
        i += 2;
        if fields.get(i).is_some_and(|f| parse_i64(f).is_some()) {
            i += 1;
        }
        let Some(name) = fields.get(i) else {
            return Ok(q);
        };
        res = *Resource::ALL
            .iter()
            .find(|r| r.db_key().eq_ignore_ascii_case(name))
            .ok_or_else(|| bad("unknown resource name"))?;
        i += 1;
    }
}

fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.strip_prefix(b"-") {
        Some(digits) => i64::try_from(dlist::parse_u64(digits)?).ok()?.checked_neg(),
        None => i64::try_from(dlist::parse_u64(s)?).ok(),
    }
}

/// The database value of a record, in its [`QuotaRecord::format`].
pub fn write_value(q: &QuotaRecord) -> Vec<u8> {
    match q.format {
        QuotaFormat::Dlist => dlist::write(&to_dlist(q)),
        QuotaFormat::Legacy => write_legacy(q),
    }
}

/// `quota_write`: S M AS NF, each `(used [limit])`, then SCAN if any, then MODSEQ.
pub fn to_dlist(q: &QuotaRecord) -> Dlist {
    let mut kv = Vec::new();
    for r in Resource::ALL {
        let rq = q.get(r);
        let mut items = vec![Dlist::num(rq.used)];
        if let Some(l) = rq.limit {
            items.push(Dlist::num(l));
        }
        kv.push((r.db_key().to_vec(), Dlist::List(items)));
    }
    if let Some(scan) = &q.scan {
        let mut s = vec![(b"MBOX".to_vec(), Dlist::Str(scan.mbox.clone()))];
        for r in Resource::ALL {
            let n = scan.used.get(r.index()).copied().unwrap_or_default();
            s.push((r.db_key().to_vec(), Dlist::num(n)));
        }
        kv.push((b"SCAN".to_vec(), Dlist::KvList(s)));
    }
    if let Some(m) = q.modseq {
        kv.push((b"MODSEQ".to_vec(), Dlist::num(m)));
    }
    Dlist::KvList(kv)
}

/// `used limit` for STORAGE (unlimited as -1), then a `NAME used limit` group for each
/// other resource that is in use or limited, which 3.6 reads back (2.x only knew
/// STORAGE). SCAN data and MODSEQ cannot be expressed and are dropped.
fn write_legacy(q: &QuotaRecord) -> Vec<u8> {
    let pair = |rq: ResourceQuota| {
        let limit = rq.limit.map_or_else(|| "-1".to_string(), |l| l.to_string());
        format!("{} {}", rq.used, limit)
    };
    let mut out = pair(q.get(Resource::Storage));
    for r in &Resource::ALL[1..] {
        let rq = q.get(*r);
        if rq != ResourceQuota::default() {
            out.push(' ');
            out.push_str(std::str::from_utf8(r.db_key()).unwrap_or_default());
            out.push(' ');
            out.push_str(&pair(rq));
        }
    }
    out.into_bytes()
}

/// Parse the contents of a quotalegacy file: the value plus a final LF, and for the
/// 2.x layout the pair split over two lines (`used LF limit LF`).
pub fn parse_legacy_file(file: &[u8]) -> Result<QuotaRecord, QuotaError> {
    if file.is_empty() {
        return Err(QuotaError::Empty);
    }
    let mut value = file
        .strip_suffix(b"\n")
        .ok_or(QuotaError::NoFinalNewline)?
        .to_vec();
    if value.first() != Some(&b'%') {
        // myfetch: the first LF becomes the separating space.
        if let Some(nl) = value.iter_mut().find(|c| **c == b'\n') {
            *nl = b' ';
        }
    }
    parse_value(&value)
}

/// The limits that can still be read from a damaged record (a quotalegacy file or a
/// database value that [`parse_value`] refuses), per resource, indexed by
/// [`Resource::index`]; `None` where none can be read (or the limit is unlimited). Cyrus
/// skips such a record (`quota_foreach` → `do_onequota` ignores what `quota_parseval`
/// refuses), so its limits would be lost; `quota -f` rebuilds the record with these.
///
/// Lenient on purpose: in the dlist layout, the first `KEY ( used limit` of each resource
/// key whose two numbers read (the rest of the record may be cut or damaged); in the 2.x
/// layout, the leading `used limit` pair and `NAME used limit` groups.
pub fn salvage_limits(record: &[u8]) -> [Option<u64>; 4] {
    // A quotalegacy file ends with a newline whatever its content: not proof that the
    // token before it is complete.
    let record = match record.first() {
        Some(b'%') => record.strip_suffix(b"\n").unwrap_or(record),
        _ => record,
    };
    let mut out = [None; 4];
    let mut seen = [false; 4];
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut start = None;
    for (i, &c) in record.iter().enumerate() {
        let sep = c.is_ascii_whitespace() || c == b'(' || c == b')' || c == b'%';
        if sep {
            if let Some(s) = start.take() {
                tokens.extend(record.get(s..i));
            }
            if c == b'(' || c == b')' {
                tokens.extend(record.get(i..=i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    // A last token running to the end of a dlist record was cut (a complete one ends with
    // `)`), so it may be a shortened number: not trusted. 2.x values end with a number.
    if let (Some(s), false) = (start, record.first() == Some(&b'%')) {
        tokens.extend(record.get(s..));
    }
    let resource = |t: &[u8]| {
        Resource::ALL
            .iter()
            .copied()
            .find(|r| r.db_key().eq_ignore_ascii_case(t))
    };
    let mut set = |r: Resource, limit: Option<u64>| {
        if let (Some(slot), Some(done)) = (out.get_mut(r.index()), seen.get_mut(r.index())) {
            if !*done {
                *slot = limit;
                *done = true;
            }
        }
    };
    let num = |t: Option<&&[u8]>| t.and_then(|t| dlist::parse_u64(t));
    let limit = |t: Option<&&[u8]>| t.and_then(|t| parse_i64(t)).map(|l| u64::try_from(l).ok());
    if record.first() == Some(&b'%') {
        for (i, t) in tokens.iter().enumerate() {
            let Some(r) = resource(t) else { continue };
            if tokens.get(i + 1) != Some(&&b"("[..]) || num(tokens.get(i + 2)).is_none() {
                continue;
            }
            if let Some(l) = num(tokens.get(i + 3)) {
                set(r, Some(l));
            }
        }
    } else {
        let mut i = 0;
        let mut r = Resource::Storage;
        while i < tokens.len() {
            match (num(tokens.get(i)), limit(tokens.get(i + 1))) {
                (Some(_), Some(l)) => {
                    set(r, l);
                    i += 2;
                    if num(tokens.get(i)).is_some() {
                        i += 1; // a stray third number (quota_parseval skips it too)
                    }
                }
                _ => i += 1,
            }
            match tokens.get(i).and_then(|t| resource(t)) {
                Some(next) => {
                    r = next;
                    i += 1;
                }
                None => break,
            }
        }
    }
    out
}

/// The contents of a quotalegacy file for `q` (`mystore`: first space of a non-dlist
/// value becomes LF, then a final LF).
pub fn write_legacy_file(q: &QuotaRecord) -> Vec<u8> {
    let mut out = write_value(q);
    if out.first() != Some(&b'%') {
        if let Some(sp) = out.iter_mut().find(|c| **c == b' ') {
            *sp = b'\n';
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_36_record() {
        let v = b"%(S (420 1000) M (1 50) AS (0) NF (6) MODSEQ 8)";
        let q = parse_value(v).unwrap();
        assert_eq!(q.format, QuotaFormat::Dlist);
        assert_eq!(
            q.get(Resource::Storage),
            ResourceQuota {
                used: 420,
                limit: Some(1000)
            }
        );
        assert_eq!(q.get(Resource::Message).limit, Some(50));
        assert_eq!(q.get(Resource::AnnotationStorage).limit, None);
        assert_eq!(q.get(Resource::NumFolders).used, 6);
        assert_eq!(q.modseq, Some(8));
        assert_eq!(write_value(&q), v);
        let mut file = v.to_vec();
        file.push(b'\n');
        assert_eq!(parse_legacy_file(&file).unwrap(), q);
        assert_eq!(write_legacy_file(&q), file);
    }

    #[test]
    fn scan_and_no_modseq() {
        let v = b"%(S (10 0) M (1) AS (0) NF (1) SCAN %(MBOX user.alice.Sent S 5 M 1 AS 0 NF 2) MODSEQ 3)";
        let q = parse_value(v).unwrap();
        let scan = q.scan.as_ref().unwrap();
        assert_eq!(scan.mbox, b"user.alice.Sent");
        assert_eq!(scan.used, [5, 1, 0, 2]);
        assert_eq!(q.get(Resource::Storage).limit, Some(0));
        assert_eq!(write_value(&q), v);
        // 2.5-3.0: no MODSEQ.
        let v = b"%(S (0 100) M (0) AS (0) NF (1))";
        let q = parse_value(v).unwrap();
        assert_eq!(q.modseq, None);
        assert_eq!(write_value(&q), v);
        // SCAN without MBOX is ignored, as Cyrus does.
        assert_eq!(parse_value(b"%(SCAN %(S 1) MODSEQ 1)").unwrap().scan, None);
        // Domain roots and shared roots keep MODSEQ 0.
        let v = b"%(S (0) M (0) AS (0) NF (0) MODSEQ 0)";
        assert_eq!(write_value(&parse_value(v).unwrap()), v);
        assert_eq!(write_value(&QuotaRecord::new()), v);
    }

    #[test]
    fn legacy_records() {
        // The 2.4 file from the reference: 12345 bytes used, 2000 KiB limit.
        let file = b"12345\n2000\n";
        let q = parse_legacy_file(file).unwrap();
        assert_eq!(q.format, QuotaFormat::Legacy);
        assert_eq!(
            q.get(Resource::Storage),
            ResourceQuota {
                used: 12345,
                limit: Some(2000)
            }
        );
        assert_eq!(write_legacy_file(&q), file);
        assert_eq!(write_value(&q), b"12345 2000");
        // Unlimited, a stray third number, and a resource group.
        let q = parse_value(b"5 -1").unwrap();
        assert_eq!(q.get(Resource::Storage).limit, None);
        assert_eq!(write_value(&q), b"5 -1");
        let q = parse_value(b"5 100 7 M 2 10").unwrap();
        assert_eq!(q.get(Resource::Message).limit, Some(10));
        assert_eq!(write_value(&q), b"5 100 M 2 10");
        assert_eq!(parse_value(&write_value(&q)).unwrap(), q);
        // Converted to the 3.6 layout, as Cyrus does on the next write.
        let mut q = parse_legacy_file(file).unwrap();
        q.format = QuotaFormat::Dlist;
        q.modseq = Some(1);
        assert_eq!(
            write_legacy_file(&q),
            b"%(S (12345 2000) M (0) AS (0) NF (0) MODSEQ 1)\n"
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_value(b""), Err(QuotaError::Empty));
        assert_eq!(parse_legacy_file(b""), Err(QuotaError::Empty));
        assert_eq!(parse_legacy_file(b"1\n2"), Err(QuotaError::NoFinalNewline));
        assert!(matches!(
            parse_value(b"%(S (x))"),
            Err(QuotaError::BadField { .. })
        ));
        assert!(matches!(
            parse_value(b"%(S 5)"),
            Err(QuotaError::BadField { .. })
        ));
        assert!(matches!(
            parse_value(b"%(S (-1))"),
            Err(QuotaError::BadField { .. })
        ));
        // Only a leading % selects the dlist layout.
        assert!(matches!(
            parse_value(b"(1 2)"),
            Err(QuotaError::BadLegacy { .. })
        ));
        assert!(matches!(parse_value(b"%(S (1)"), Err(QuotaError::Dlist(_))));
        for bad in [&b"5"[..], b"x 1", b"1 y", b"1 2 Q 3 4", b"1 2 M 3"] {
            assert!(
                matches!(parse_value(bad), Err(QuotaError::BadLegacy { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limits_are_salvaged_from_damaged_records() {
        // Cut in the middle (no closing parens): STORAGE and MESSAGE limits still read.
        assert_eq!(
            salvage_limits(b"%(S (420 1000) M (1 50) AS (0"),
            [Some(1000), Some(50), None, None]
        );
        // An intact record: every limit, SCAN counters (after the resources) aside.
        let v = b"%(S (10 0) M (1) AS (0 7) NF (1 2) SCAN %(MBOX S S 5 M 1 AS 0 NF 2) MODSEQ 3)";
        let q = parse_value(v).unwrap();
        assert_eq!(salvage_limits(v), q.resources.map(|r| r.limit));
        assert_eq!(salvage_limits(v), [Some(0), None, Some(7), Some(2)]);
        // A number cut by the end of the record may be shortened: not taken.
        assert_eq!(
            salvage_limits(b"%(S (420 1000) M (1 5"),
            [Some(1000), None, None, None]
        );
        // The same as a quotalegacy file (its final newline proves nothing).
        assert_eq!(
            salvage_limits(b"%(S (420 1000) M (1 5\n"),
            [Some(1000), None, None, None]
        );
        // A damaged field elsewhere does not hide the others; a used-only list is unlimited.
        assert_eq!(
            salvage_limits(b"%(S (4x0 1000) M (1 50) AS (0) NF (6 9) MODSEQ 8)\n"),
            [None, Some(50), None, Some(9)]
        );
        // SCAN counters are not limits.
        assert_eq!(
            salvage_limits(b"%(S (1) SCAN %(MBOX a S 5 M 7) M (2 3))"),
            [None, Some(3), None, None]
        );
        // 2.x layouts: the pair over two lines, -1 unlimited, groups, garbage after.
        assert_eq!(
            salvage_limits(b"12345\n2000\n"),
            [Some(2000), None, None, None]
        );
        assert_eq!(
            salvage_limits(b"5 -1 M 2 10 \xff\xfe"),
            [None, Some(10), None, None]
        );
        assert_eq!(
            salvage_limits(b"5 100 7 M 2 10 Q"),
            [Some(100), Some(10), None, None]
        );
        for junk in [&b""[..], b"%", b"(((", b"\x00\x01", b"%(S (", b"S ( 1 2"] {
            let got = salvage_limits(junk);
            assert!(got.iter().all(Option::is_none), "{junk:?}");
        }
    }

    #[test]
    fn resources() {
        assert_eq!(Resource::Storage.unit(), 1024);
        assert_eq!(Resource::NumFolders.unit(), 1);
        assert_eq!(
            Resource::AnnotationStorage.imap_name(),
            "X-ANNOTATION-STORAGE"
        );
        assert_eq!(Resource::NumFolders.db_key(), b"NF");
        for (i, r) in Resource::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn real_quotalegacy_files_round_trip_byte_identically() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-samples/quota");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let q = parse_legacy_file(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(write_legacy_file(&q), data, "{}", path.display());
            n += 1;
        }
        assert_eq!(n, 4);
        let alice = parse_legacy_file(&std::fs::read(dir.join("user.alice")).unwrap()).unwrap();
        assert_eq!(
            alice.get(Resource::Storage),
            ResourceQuota {
                used: 764,
                limit: Some(1000)
            }
        );
        assert_eq!(
            alice.get(Resource::NumFolders),
            ResourceQuota {
                used: 4,
                limit: None
            }
        );
        assert_eq!(alice.modseq, Some(16));
    }

    #[test]
    fn fixture_quota_files_and_quotas_db_round_trip() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut n = 0;
        for entry in walkdir::WalkDir::new(&root).into_iter().flatten() {
            let p = entry.path();
            let in_quota_dir = p
                .parent()
                .and_then(|d| d.parent())
                .is_some_and(|d| d.ends_with("quota"));
            if entry.file_type().is_file() && in_quota_dir {
                let data = std::fs::read(p).unwrap();
                let q = parse_legacy_file(&data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(write_legacy_file(&q), data, "{}", p.display());
                n += 1;
            }
        }
        if let Ok(db) = std::fs::read(root.join("uuid/conf/quotas.db")) {
            for (key, value) in crate::format::mboxlist::test_scan::twoskip(&db) {
                let q = parse_value(&value).unwrap_or_else(|e| panic!("{key:?}: {e}"));
                assert_eq!(write_value(&q), value);
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} quota records");
    }
}
