//! flat, the text cyrusdb backend (`lib/cyrusdb_flat.c`; doc §1.5): one
//! `escaped-key TAB escaped-value LF` line per record, sorted by the mbox order of the
//! escaped key (lookups are binary searches over lines, `bsearch_mem_mbox`).
//!
//! Escaping (2.5+): NUL, TAB, CR and LF are written as `FF (byte|0x80)`, and `FF` as
//! `FF FF`; everything else is literal.
//!
//! Owns: reader ([`FlatDb`]), raw line layer ([`RawFile`]) and writer ([`write_fresh`]).
//! Cyrus replaces the whole file on every write (`<file>.NEW` + rename), so there is no
//! transaction format and nothing uncommitted. No I/O here.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::cyrusdb::{DbError, KeyOrder};

const BACKEND: &str = "flat";

/// `ESCAPE`: an invalid UTF-8 byte, unlikely in textual keys.
pub const ESCAPE: u8 = 0xFF;

/// Cyrus `encode`.
pub fn encode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw
        .iter()
        .any(|b| matches!(*b, 0 | b'\t' | b'\r' | b'\n' | ESCAPE))
    {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + 8);
    for &b in raw {
        match b {
            0 | b'\t' | b'\r' | b'\n' => out.extend_from_slice(&[ESCAPE, 0x80 | b]),
            ESCAPE => out.extend_from_slice(&[ESCAPE, ESCAPE]),
            _ => out.push(b),
        }
    }
    Cow::Owned(out)
}

/// Cyrus `decode`: `FF FF` → `FF`, `FF x` → `x & 0x7F`, a lone trailing `FF` is
/// dropped ("invalid encoding, silently ignore").
pub fn decode(escaped: &[u8]) -> Cow<'_, [u8]> {
    if !escaped.contains(&ESCAPE) {
        return Cow::Borrowed(escaped);
    }
    let mut out = Vec::with_capacity(escaped.len());
    let mut it = escaped.iter();
    while let Some(&b) = it.next() {
        if b != ESCAPE {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(&ESCAPE) => out.push(ESCAPE),
            Some(&x) => out.push(x & !0x80),
            None => {}
        }
    }
    Cow::Owned(out)
}

/// One line, fields still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub offset: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A flat file as lines plus anything from the first malformed line on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile<'a> {
    pub lines: Vec<Line<'a>>,
    /// The first malformed line (no TAB, no final LF, or a raw NUL, which Cyrus's
    /// `strchr`-based `getentry` cannot read) and everything after it.
    pub trailing: &'a [u8],
    /// Why `trailing` is not empty.
    pub trailing_problem: Option<DbError>,
}

/// Split into lines; never fails.
pub fn parse_raw(buf: &[u8]) -> RawFile<'_> {
    let mut lines = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        let bad = |problem| DbError::BadRecord {
            backend: BACKEND,
            offset: off as u64,
            problem,
        };
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            return RawFile {
                lines,
                trailing: rest,
                trailing_problem: Some(bad("last line has no LF")),
            };
        };
        let line = &rest[..nl];
        let problem = if line.contains(&0) {
            Some(bad("raw NUL byte in a line"))
        } else if !line.contains(&b'\t') {
            Some(bad("line has no TAB between key and value"))
        } else {
            None
        };
        if problem.is_some() {
            return RawFile {
                lines,
                trailing: rest,
                trailing_problem: problem,
            };
        }
        let tab = line.iter().position(|b| *b == b'\t').unwrap_or(0);
        lines.push(Line {
            offset: off as u64,
            key: &line[..tab],
            value: &line[tab + 1..],
        });
        off += nl + 1;
    }
    RawFile {
        lines,
        trailing: &[],
        trailing_problem: None,
    }
}

impl RawFile<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.lines {
            out.extend_from_slice(l.key);
            out.push(b'\t');
            out.extend_from_slice(l.value);
            out.push(b'\n');
        }
        out.extend_from_slice(self.trailing);
        out
    }
}

/// The order of lines: mbox order of the escaped keys (a key is followed by TAB,
/// which weighs less than any byte an escaped key can hold, so shorter sorts first).
fn line_order(a: &[u8], b: &[u8]) -> Ordering {
    KeyOrder::Mbox.compare(a, b)
}

/// A decoded (or escaped) key/value pair.
pub type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// A parsed flat file.
#[derive(Debug, Clone)]
pub struct FlatDb<'a> {
    lines: Vec<Line<'a>>,
}

impl<'a> FlatDb<'a> {
    /// Parse every line. Fails at the first malformed line, where Cyrus's `foreach`
    /// stops with an I/O error.
    pub fn open(buf: &'a [u8]) -> Result<Self, DbError> {
        let raw = parse_raw(buf);
        if let Some(e) = raw.trailing_problem {
            return Err(e);
        }
        Ok(FlatDb { lines: raw.lines })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Decoded pairs in file order (which is key order in a sound file). Every item is
    /// `Ok`; the `Result` keeps the shape of the other backends' iterators.
    #[allow(clippy::type_complexity)]
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = Result<(Cow<'a, [u8]>, Cow<'a, [u8]>), DbError>> + '_ {
        self.lines
            .iter()
            .map(|l| Ok((decode(l.key), decode(l.value))))
    }

    /// Binary search, as `bsearch_mem_mbox` does.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cow<'a, [u8]>>, DbError> {
        let k = encode(key);
        Ok(self
            .lines
            .binary_search_by(|l| line_order(l.key, &k))
            .ok()
            .map(|i| decode(self.lines[i].value)))
    }

    /// Lines out of order or duplicated, and keys not escaped the way `encode` would
    /// (e.g. a lone trailing 0xFF, or `FF 01` for 0x01): binary search, which encodes
    /// the key it looks for, would miss them — in Cyrus as here.
    pub fn verify(&self) -> Vec<DbError> {
        let noncanonical = self
            .lines
            .iter()
            .filter(|l| *encode(&decode(l.key)) != *l.key)
            .map(|l| DbError::BadRecord {
                backend: BACKEND,
                offset: l.offset,
                problem: "key is not canonically escaped, so lookups cannot find it",
            });
        let unordered = self
            .lines
            .windows(2)
            .filter(|w| line_order(w[0].key, w[1].key) != Ordering::Less)
            .map(|w| DbError::OutOfOrder {
                backend: BACKEND,
                offset: w[1].offset,
            });
        noncanonical.chain(unordered).collect()
    }
}

/// Every problem of a flat file: the malformed tail, if any, and ordering.
pub fn verify(buf: &[u8]) -> Vec<DbError> {
    let raw = parse_raw(buf);
    let mut problems = FlatDb { lines: raw.lines }.verify();
    problems.extend(raw.trailing_problem);
    problems
}

/// The file Cyrus would hold for `pairs` (any order; no duplicates, no empty key):
/// escaped lines sorted by the mbox order of the escaped key.
pub fn write_fresh<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Result<Vec<u8>, DbError> {
    if let Some(index) = pairs.iter().position(|(k, _)| k.as_ref().is_empty()) {
        return Err(DbError::EmptyKey {
            backend: BACKEND,
            index,
        });
    }
    let mut enc: Vec<Pair> = pairs
        .iter()
        .map(|(k, v)| (encode(k.as_ref()), encode(v.as_ref())))
        .collect();
    enc.sort_by(|a, b| line_order(&a.0, &b.0));
    if let Some(index) = KeyOrder::Mbox.first_unsorted(&enc) {
        return Err(DbError::UnsortedInput {
            backend: BACKEND,
            index,
            order: KeyOrder::Mbox,
        });
    }
    let mut out = Vec::new();
    for (k, v) in &enc {
        out.extend_from_slice(k);
        out.push(b'\t');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let e = encode(&all);
        assert!(
            !e.contains(&b'\t') && !e.contains(&b'\n') && !e.contains(&0) && !e.contains(&b'\r')
        );
        assert_eq!(decode(&e), &all[..]);
        assert_eq!(
            &*encode(b"a\x00\t\r\n\xff\x1f"),
            b"a\xff\x80\xff\x89\xff\x8d\xff\x8a\xff\xff\x1f"
        );
        assert!(matches!(encode(b"plain"), Cow::Borrowed(_)));
        // A lone trailing escape is dropped, as Cyrus does.
        assert_eq!(&*decode(b"ab\xff"), b"ab");
    }

    #[test]
    fn writes_sorted_lines_and_reads_back() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"user.a-b", b"2"),
            (b"user.a.x", b"1"),
            (b"tab\tkey", b"v\nv"),
            (b"\xffkey", b""),
        ];
        let buf = write_fresh(&pairs).unwrap();
        assert_eq!(
            buf,
            b"tab\xff\x89key\tv\xff\x8av\nuser.a.x\t1\nuser.a-b\t2\n\xff\xffkey\t\n".to_vec()
        );
        let db = FlatDb::open(&buf).unwrap();
        assert_eq!(db.verify(), vec![]);
        let got: Vec<_> = db.iter().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(&*got[0].0, b"tab\tkey");
        assert_eq!(&*got[0].1, b"v\nv");
        for (k, v) in &pairs {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(*v));
        }
        assert_eq!(db.get(b"user.a").unwrap(), None);
        assert_eq!(parse_raw(&buf).to_bytes(), buf);
        let dup: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"a", b"2")];
        assert!(matches!(
            write_fresh(&dup),
            Err(DbError::UnsortedInput { .. })
        ));
    }

    #[test]
    fn malformed_and_unsorted_files() {
        assert!(matches!(
            FlatDb::open(b"a\t1\nb 2\n"),
            Err(DbError::BadRecord { offset: 4, .. })
        ));
        assert!(matches!(
            FlatDb::open(b"a\t1\nb\t2"),
            Err(DbError::BadRecord { offset: 4, .. })
        ));
        assert!(matches!(
            FlatDb::open(b"a\x00\t1\n"),
            Err(DbError::BadRecord { offset: 0, .. })
        ));
        let raw = parse_raw(b"a\t1\nb 2\n");
        assert_eq!(raw.to_bytes(), b"a\t1\nb 2\n");
        let v = verify(b"b\t1\na\t2\nno tab\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].offset(), 4);
        assert_eq!(FlatDb::open(b"").unwrap().len(), 0);
    }

    /// Fuzz find: a key ending in a lone 0xFF decodes to something that encodes
    /// differently, so get() cannot find it; verify must say so.
    #[test]
    fn noncanonical_escape_is_reported() {
        let buf = b"a\t1\nb\xff\t2\nc\xff\x01\t3\n";
        let db = FlatDb::open(buf).unwrap();
        assert_eq!(db.get(b"b").unwrap(), None);
        let v = db.verify();
        assert_eq!(
            v.iter().map(DbError::offset).collect::<Vec<_>>(),
            vec![4, 9]
        );
        assert_eq!(
            FlatDb::open(b"a\t1\nb\xff\xff\t2\n").unwrap().verify(),
            vec![]
        );
    }
}
