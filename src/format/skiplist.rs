//! skiplist, the 2.x default cyrusdb backend, still used by 3.x for some databases
//! (`lib/cyrusdb_skiplist.c`; doc §1.4). All integers are big-endian u32; no checksums.
//!
//! A file is a sorted INORDER region written by the last checkpoint, followed by an
//! append-only log of ADD/DELETE records, each transaction closed by a COMMIT. Unlike
//! twoskip, pointers of existing nodes are overwritten in place, so a crash can leave
//! them pointing into a torn tail. The reader therefore computes the live set the way
//! Cyrus's `recovery` does — INORDER records in file order, then every committed log
//! transaction replayed, a partial last transaction ignored — and [`SkiplistDb::verify`]
//! additionally walks the on-disk pointers and reports where they disagree.
//! (A Cyrus process that does not run recovery — the file's `last_recovery` is newer
//! than `db/skipstamp` — follows those pointers and *does* see a torn transaction,
//! verified with `cyr_dbtool damage`; recovery at the next master start drops it.)
//!
//! Owns: reader ([`SkiplistDb`]), byte-exact raw layer ([`RawFile`]) and the fresh
//! (checkpoint-shaped) writer ([`write_fresh`]). No I/O.

use std::cmp::Ordering;

use super::cyrusdb::{be_u32, slice, DbError, KeyOrder, LevelRng};

const BACKEND: &str = "skiplist";

/// `HEADER_MAGIC`: `A1 02 8B 0D "skiplist file" 00 00 00`.
pub const MAGIC: [u8; 20] = *b"\xa1\x02\x8b\x0dskiplist file\0\0\0";
pub const OFFSET_VERSION: usize = MAGIC.len();
pub const OFFSET_VERSION_MINOR: usize = OFFSET_VERSION + 4;
pub const OFFSET_MAXLEVEL: usize = OFFSET_VERSION_MINOR + 4;
pub const OFFSET_CURLEVEL: usize = OFFSET_MAXLEVEL + 4;
pub const OFFSET_LISTSIZE: usize = OFFSET_CURLEVEL + 4;
pub const OFFSET_LOGSTART: usize = OFFSET_LISTSIZE + 4;
pub const OFFSET_LASTRECOVERY: usize = OFFSET_LOGSTART + 4;
pub const HEADER_SIZE: usize = OFFSET_LASTRECOVERY + 4;
const _: () = assert!(HEADER_SIZE == 48);

/// `SKIPLIST_VERSION`; `read_header` rejects any other major version.
pub const VERSION: u32 = 1;
pub const VERSION_MINOR: u32 = 2;
/// `SKIPLIST_MAXLEVEL`: the most pointers a node (and the DUMMY) may have.
pub const MAXLEVEL: u32 = 20;
pub const DUMMY_OFFSET: u64 = HEADER_SIZE as u64;
/// Terminates a node's pointer list.
pub const PADDING: u32 = 0xFFFF_FFFF;

/// Record types.
pub const INORDER: u32 = 1;
pub const ADD: u32 = 2;
pub const DELETE: u32 = 4;
pub const COMMIT: u32 = 255;
pub const DUMMY: u32 = 257;

/// The 48-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub version_minor: u32,
    pub maxlevel: u32,
    /// Highest level in use; searches start here.
    pub curlevel: u32,
    /// Record count; only refreshed by checkpoint/recovery, stale in between.
    pub listsize: u32,
    /// End of the INORDER region, start of the log.
    pub logstart: u32,
    /// Unix time of the last recovery.
    pub last_recovery: u32,
}

impl Header {
    pub fn parse(buf: &[u8]) -> Result<Header, DbError> {
        if buf.len() < HEADER_SIZE {
            return Err(DbError::Truncated {
                backend: BACKEND,
                what: "header",
                offset: 0,
                need: HEADER_SIZE as u64,
                len: buf.len() as u64,
            });
        }
        if !buf.starts_with(&MAGIC) {
            return Err(DbError::BadMagic { backend: BACKEND });
        }
        let at = |o: usize| be_u32(buf, o as u64).unwrap_or(0);
        Ok(Header {
            version: at(OFFSET_VERSION),
            version_minor: at(OFFSET_VERSION_MINOR),
            maxlevel: at(OFFSET_MAXLEVEL),
            curlevel: at(OFFSET_CURLEVEL),
            listsize: at(OFFSET_LISTSIZE),
            logstart: at(OFFSET_LOGSTART),
            last_recovery: at(OFFSET_LASTRECOVERY),
        })
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..OFFSET_VERSION].copy_from_slice(&MAGIC);
        let fields = [
            self.version,
            self.version_minor,
            self.maxlevel,
            self.curlevel,
            self.listsize,
            self.logstart,
            self.last_recovery,
        ];
        for (i, f) in fields.iter().enumerate() {
            let o = OFFSET_VERSION + 4 * i;
            b[o..o + 4].copy_from_slice(&f.to_be_bytes());
        }
        b
    }
}

/// A DUMMY, INORDER or ADD record: a key/value node with forward pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub offset: u64,
    pub kind: u32,
    pub key: &'a [u8],
    /// Bytes after the key up to the 4-byte boundary (zeros when Cyrus wrote them).
    pub key_pad: &'a [u8],
    pub value: &'a [u8],
    pub value_pad: &'a [u8],
    /// Forward pointers, one per level; the node's level is their count.
    pub ptrs: Vec<u32>,
}

impl Node<'_> {
    pub fn len(&self) -> u64 {
        (12 + self.key.len() + self.key_pad.len() + self.value.len() + self.value_pad.len()) as u64
            + 4 * self.ptrs.len() as u64
            + 4
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn level(&self) -> u32 {
        self.ptrs.len() as u32
    }
}

/// One physical record of a skiplist file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Node(Node<'a>),
    /// Removes the node at `target` from the list.
    Delete {
        offset: u64,
        target: u32,
    },
    Commit {
        offset: u64,
    },
}

impl Record<'_> {
    pub fn offset(&self) -> u64 {
        match self {
            Record::Node(n) => n.offset,
            Record::Delete { offset, .. } | Record::Commit { offset } => *offset,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Record::Node(n) => n.len(),
            Record::Delete { .. } => 8,
            Record::Commit { .. } => 4,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Record::Node(n) => {
                out.extend_from_slice(&n.kind.to_be_bytes());
                out.extend_from_slice(&(n.key.len() as u32).to_be_bytes());
                out.extend_from_slice(n.key);
                out.extend_from_slice(n.key_pad);
                out.extend_from_slice(&(n.value.len() as u32).to_be_bytes());
                out.extend_from_slice(n.value);
                out.extend_from_slice(n.value_pad);
                for p in &n.ptrs {
                    out.extend_from_slice(&p.to_be_bytes());
                }
                out.extend_from_slice(&PADDING.to_be_bytes());
            }
            Record::Delete { target, .. } => {
                out.extend_from_slice(&DELETE.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
            }
            Record::Commit { .. } => out.extend_from_slice(&COMMIT.to_be_bytes()),
        }
    }
}

fn roundup4(n: u64) -> u64 {
    (n + 3) & !3
}

/// Parse the record at `offset` (`RECSIZE_safe`): it must fit in `buf`, a node's
/// pointer list must end in 0xFFFFFFFF.
pub fn parse_record(buf: &[u8], offset: u64) -> Result<Record<'_>, DbError> {
    let len = buf.len() as u64;
    let truncated = |what, need| DbError::Truncated {
        backend: BACKEND,
        what,
        offset,
        need,
        len,
    };
    let kind = be_u32(buf, offset).ok_or_else(|| truncated("record type", 4))?;
    match kind {
        DUMMY | INORDER | ADD => {}
        DELETE => {
            let target = be_u32(buf, offset + 4).ok_or_else(|| truncated("DELETE record", 8))?;
            return Ok(Record::Delete { offset, target });
        }
        COMMIT => return Ok(Record::Commit { offset }),
        _ => {
            return Err(DbError::BadRecordType {
                backend: BACKEND,
                offset,
                kind,
            })
        }
    }
    let keylen = u64::from(be_u32(buf, offset + 4).ok_or_else(|| truncated("node", 8))?);
    let key_at = offset + 8;
    let key = slice(buf, key_at, keylen).ok_or_else(|| truncated("node key", 8 + keylen))?;
    let vlen_at = key_at + roundup4(keylen);
    let key_pad = slice(buf, key_at + keylen, vlen_at - key_at - keylen)
        .ok_or_else(|| truncated("node key", vlen_at - offset))?;
    let vallen =
        u64::from(be_u32(buf, vlen_at).ok_or_else(|| truncated("node", vlen_at + 4 - offset))?);
    let val_at = vlen_at + 4;
    let value = slice(buf, val_at, vallen)
        .ok_or_else(|| truncated("node value", val_at + vallen - offset))?;
    let mut p = val_at + roundup4(vallen);
    let value_pad = slice(buf, val_at + vallen, p - val_at - vallen)
        .ok_or_else(|| truncated("node value", p - offset))?;
    let mut ptrs = Vec::new();
    loop {
        let v = be_u32(buf, p).ok_or_else(|| truncated("node pointers", p + 4 - offset))?;
        p += 4;
        if v == PADDING {
            break;
        }
        ptrs.push(v);
    }
    Ok(Record::Node(Node {
        offset,
        kind,
        key,
        key_pad,
        value,
        value_pad,
        ptrs,
    }))
}

fn parse_node(buf: &[u8], offset: u64) -> Result<Node<'_>, DbError> {
    match parse_record(buf, offset)? {
        Record::Node(n) => Ok(n),
        _ => Err(DbError::BadRecord {
            backend: BACKEND,
            offset,
            problem: "expected a key/value node here",
        }),
    }
}

/// A live pair and the node that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry<'a> {
    offset: u64,
    key: &'a [u8],
    value: &'a [u8],
}

/// A skiplist file, with its live set computed as Cyrus recovery would.
#[derive(Debug, Clone)]
pub struct SkiplistDb<'a> {
    buf: &'a [u8],
    header: Header,
    order: KeyOrder,
    dummy: Node<'a>,
    entries: Vec<Entry<'a>>,
    /// Non-fatal findings of the replay (reported by `verify`).
    replay_problems: Vec<DbError>,
    /// Where the replay stopped: the end of the last committed transaction.
    committed_end: u64,
}

impl<'a> SkiplistDb<'a> {
    /// Open with skiplist's default (signed) order.
    pub fn open(buf: &'a [u8]) -> Result<Self, DbError> {
        Self::open_with_order(buf, KeyOrder::Signed)
    }

    /// Open and replay. Fails like `read_header` (magic, version, maxlevel, curlevel,
    /// DUMMY shape) and like `recovery` on a log record that is neither ADD, DELETE
    /// nor COMMIT before the last commit.
    pub fn open_with_order(buf: &'a [u8], order: KeyOrder) -> Result<Self, DbError> {
        let header = Header::parse(buf)?;
        let bad_field = |field, offset: usize, expected, got: u32| DbError::BadHeaderField {
            backend: BACKEND,
            field,
            offset: offset as u64,
            expected,
            got: u64::from(got),
        };
        if header.version != VERSION {
            return Err(bad_field("version", OFFSET_VERSION, "1", header.version));
        }
        if header.maxlevel > MAXLEVEL {
            return Err(bad_field(
                "maxlevel",
                OFFSET_MAXLEVEL,
                "at most 20",
                header.maxlevel,
            ));
        }
        if header.curlevel > header.maxlevel {
            return Err(bad_field(
                "curlevel",
                OFFSET_CURLEVEL,
                "at most maxlevel",
                header.curlevel,
            ));
        }
        let dummy = parse_node(buf, DUMMY_OFFSET)?;
        if dummy.kind != DUMMY
            || !dummy.key.is_empty()
            || !dummy.value.is_empty()
            || dummy.level() != header.maxlevel
        {
            return Err(DbError::BadRecord {
                backend: BACKEND,
                offset: DUMMY_OFFSET,
                problem: "the record at 0x30 is not an empty DUMMY with maxlevel pointers",
            });
        }
        let mut db = SkiplistDb {
            buf,
            header,
            order,
            dummy,
            entries: Vec::new(),
            replay_problems: Vec::new(),
            committed_end: 0,
        };
        db.replay()?;
        Ok(db)
    }

    /// Cyrus `recovery`, minus the writes.
    fn replay(&mut self) -> Result<(), DbError> {
        let len = self.buf.len() as u64;
        let mut off = DUMMY_OFFSET + self.dummy.len();
        // The INORDER region, which recovery trusts to be sorted.
        while off < len && be_u32(self.buf, off) == Some(INORDER) {
            match parse_node(self.buf, off) {
                Ok(node) => {
                    if let Some(last) = self.entries.last() {
                        if self.order.compare(last.key, node.key) != Ordering::Less {
                            self.replay_problems.push(DbError::OutOfOrder {
                                backend: BACKEND,
                                offset: off,
                            });
                        }
                    }
                    self.insert(&node);
                    off += node.len();
                }
                Err(e) => {
                    // "damaged record, truncating here"
                    self.replay_problems.push(e);
                    self.committed_end = off;
                    return Ok(());
                }
            }
        }
        if off != u64::from(self.header.logstart) {
            self.replay_problems.push(DbError::BadHeaderField {
                backend: BACKEND,
                field: "logstart",
                offset: OFFSET_LOGSTART as u64,
                expected: "the end of the INORDER region",
                got: u64::from(self.header.logstart),
            });
        }
        // The log: whole transactions only.
        while off < len {
            if be_u32(self.buf, off) == Some(0) {
                // "bugs in recovery truncates could have left some bogus zeros here"
                let start = off;
                while off < len && be_u32(self.buf, off) == Some(0) {
                    off += 4;
                }
                self.replay_problems.push(DbError::BadRecord {
                    backend: BACKEND,
                    offset: start,
                    problem: "zero bytes in the log (skipped, as Cyrus recovery does)",
                });
                continue;
            }
            let first = parse_record(self.buf, off);
            match first {
                Ok(Record::Commit { .. }) => {
                    off += 4;
                    continue;
                }
                Ok(Record::Node(Node { kind: ADD, .. })) | Ok(Record::Delete { .. }) => {}
                Ok(_) => {
                    return Err(DbError::BadRecord {
                        backend: BACKEND,
                        offset: off,
                        problem: "log record is neither ADD, DELETE nor COMMIT",
                    })
                }
                Err(DbError::BadRecordType { offset, kind, .. }) => {
                    return Err(DbError::BadRecordType {
                        backend: BACKEND,
                        offset,
                        kind,
                    })
                }
                Err(_) => break,
            }
            let Some(txn) = self.transaction_at(off) else {
                self.replay_problems.push(DbError::Uncommitted {
                    backend: BACKEND,
                    offset: off,
                    end: len,
                });
                break;
            };
            for rec in txn {
                self.apply(&rec);
                off = rec.offset() + rec.len();
            }
        }
        self.committed_end = off.min(len);
        if self.committed_end < len
            && !self
                .replay_problems
                .iter()
                .any(|e| matches!(e, DbError::Uncommitted { .. }))
        {
            self.replay_problems.push(DbError::Uncommitted {
                backend: BACKEND,
                offset: self.committed_end,
                end: len,
            });
        }
        Ok(())
    }

    /// The records from `off` up to (excluding) the next COMMIT, or `None` when no
    /// COMMIT follows (a partial transaction).
    fn transaction_at(&self, mut off: u64) -> Option<Vec<Record<'a>>> {
        let mut recs = Vec::new();
        loop {
            match parse_record(self.buf, off).ok()? {
                Record::Commit { .. } => return Some(recs),
                rec => {
                    off += rec.len();
                    recs.push(rec);
                }
            }
        }
    }

    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| self.order.compare(e.key, key))
    }

    fn insert(&mut self, node: &Node<'a>) {
        let e = Entry {
            offset: node.offset,
            key: node.key,
            value: node.value,
        };
        match self.search(node.key) {
            Ok(i) => self.entries[i] = e,
            Err(i) => self.entries.insert(i, e),
        }
    }

    fn apply(&mut self, rec: &Record<'a>) {
        match rec {
            Record::Node(node) => {
                if self.search(node.key).is_ok() {
                    self.replay_problems.push(DbError::BadRecord {
                        backend: BACKEND,
                        offset: node.offset,
                        problem:
                            "ADD of a key that already exists (replaced, as Cyrus recovery does)",
                    });
                }
                self.insert(node);
            }
            Record::Delete { offset, target } => {
                let found = parse_node(self.buf, u64::from(*target))
                    .ok()
                    .and_then(|n| self.search(n.key).ok());
                match found {
                    Some(i) => {
                        self.entries.remove(i);
                    }
                    None => self.replay_problems.push(DbError::BadRecord {
                        backend: BACKEND,
                        offset: *offset,
                        problem:
                            "DELETE of a record that is not live (skipped, as Cyrus recovery does)",
                    }),
                }
            }
            Record::Commit { .. } => {}
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn order(&self) -> KeyOrder {
        self.order
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live pairs in key order. The replay happened at open, so every item is `Ok`;
    /// the `Result` keeps the shape of the other backends' iterators.
    pub fn iter(&self) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8]), DbError>> + '_ {
        self.entries.iter().map(|e| Ok((e.key, e.value)))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<&'a [u8]>, DbError> {
        Ok(self.search(key).ok().map(|i| self.entries[i].value))
    }

    /// Replay findings, plus a walk of the on-disk pointers at every level, which must
    /// agree with the replay (they do in any file Cyrus left committed).
    pub fn verify(&self) -> Vec<DbError> {
        let mut problems = self.replay_problems.clone();
        self.verify_pointers(&mut problems);
        problems
    }

    fn verify_pointers(&self, problems: &mut Vec<DbError>) {
        let maxlevel = self.dummy.ptrs.len();
        let mut fwd: Vec<u32> = self.dummy.ptrs.clone();
        let mut from = DUMMY_OFFSET;
        let mut expected = self.entries.iter();
        let max_steps = self.buf.len() as u64 / 16 + 1;
        let mut steps = 0u64;
        while fwd.first().copied().unwrap_or(0) != 0 {
            steps += 1;
            let target = u64::from(fwd[0]);
            if steps > max_steps {
                problems.push(DbError::Loop {
                    backend: BACKEND,
                    offset: from,
                    level: 0,
                });
                return;
            }
            let node = match parse_node(self.buf, target) {
                Ok(n) if n.kind == INORDER || n.kind == ADD => n,
                _ => {
                    problems.push(DbError::BadPointer {
                        backend: BACKEND,
                        offset: from,
                        level: 0,
                        target,
                        end: self.buf.len() as u64,
                    });
                    return;
                }
            };
            let want = expected.next();
            if want.map(|e| e.offset) != Some(target) {
                problems.push(DbError::BrokenLink {
                    backend: BACKEND,
                    offset: from,
                    level: 0,
                    expected: want.map_or(0, |e| e.offset),
                    found: target,
                });
                return;
            }
            for (l, p) in node.ptrs.iter().enumerate().take(maxlevel) {
                if l > 0 && u64::from(fwd[l]) != target {
                    problems.push(DbError::BrokenLink {
                        backend: BACKEND,
                        offset: from,
                        level: l as u32,
                        expected: target,
                        found: u64::from(fwd[l]),
                    });
                }
                fwd[l] = *p;
            }
            if node.ptrs.len() > maxlevel {
                problems.push(DbError::BadRecord {
                    backend: BACKEND,
                    offset: target,
                    problem: "node has more pointers than maxlevel",
                });
            }
            from = target;
        }
        if let Some(missing) = expected.next() {
            problems.push(DbError::BrokenLink {
                backend: BACKEND,
                offset: from,
                level: 0,
                expected: missing.offset,
                found: 0,
            });
        }
        for (l, f) in fwd.iter().enumerate().skip(1) {
            if *f != 0 {
                problems.push(DbError::BrokenLink {
                    backend: BACKEND,
                    offset: from,
                    level: l as u32,
                    expected: 0,
                    found: u64::from(*f),
                });
            }
        }
    }
}

/// Open `buf` and verify it; an open failure is the single problem reported.
pub fn verify(buf: &[u8], order: KeyOrder) -> Vec<DbError> {
    match SkiplistDb::open_with_order(buf, order) {
        Ok(db) => db.verify(),
        Err(e) => vec![e],
    }
}

// ------------------------------------------------------------------ raw layer

/// A whole skiplist file: header, every physical record in file order, and any bytes
/// after the last record that parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile<'a> {
    pub header: Header,
    pub records: Vec<Record<'a>>,
    pub trailing: &'a [u8],
}

pub fn parse_raw(buf: &[u8]) -> Result<RawFile<'_>, DbError> {
    let header = Header::parse(buf)?;
    let len = buf.len() as u64;
    let mut records = Vec::new();
    let mut off = DUMMY_OFFSET;
    while off < len {
        match parse_record(buf, off) {
            Ok(r) => {
                off += r.len();
                records.push(r);
            }
            Err(_) => break,
        }
    }
    Ok(RawFile {
        header,
        records,
        trailing: slice(buf, off, len.saturating_sub(off)).unwrap_or_default(),
    })
}

impl RawFile<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_bytes().to_vec();
        for r in &self.records {
            r.write_to(&mut out);
        }
        out.extend_from_slice(self.trailing);
        out
    }
}

// ------------------------------------------------------------------ writer

/// Options for [`write_fresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshOptions {
    pub order: KeyOrder,
    pub seed: u64,
    /// Header `last_recovery`. A value older than the server's `db/skipstamp` makes
    /// Cyrus recover (and checkpoint) the file on first open, which is harmless.
    pub last_recovery: u32,
}

impl Default for FreshOptions {
    fn default() -> Self {
        FreshOptions {
            order: KeyOrder::Signed,
            seed: 0,
            last_recovery: 0,
        }
    }
}

/// A freshly checkpointed skiplist holding `pairs` (strictly ascending under
/// `opts.order`, no empty key): header (1.2, maxlevel 20, listsize = count, logstart =
/// file length), DUMMY with 20 pointers, INORDER nodes with random levels, no log.
pub fn write_fresh<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    pairs: &[(K, V)],
    opts: &FreshOptions,
) -> Result<Vec<u8>, DbError> {
    if let Some(index) = pairs.iter().position(|(k, _)| k.as_ref().is_empty()) {
        return Err(DbError::EmptyKey {
            backend: BACKEND,
            index,
        });
    }
    if let Some(index) = opts.order.first_unsorted(pairs) {
        return Err(DbError::UnsortedInput {
            backend: BACKEND,
            index,
            order: opts.order,
        });
    }
    let mut rng = LevelRng::new(opts.seed);
    let levels: Vec<u32> = pairs
        .iter()
        .map(|_| u32::from(rng.level(MAXLEVEL as u8)))
        .collect();
    let dummy_len = 4 * (3 + u64::from(MAXLEVEL) + 1);
    let mut offsets = Vec::with_capacity(pairs.len());
    let mut off = DUMMY_OFFSET + dummy_len;
    for ((k, v), level) in pairs.iter().zip(&levels) {
        offsets.push(off);
        off += 12
            + roundup4(k.as_ref().len() as u64)
            + roundup4(v.as_ref().len() as u64)
            + 4 * u64::from(*level)
            + 4;
    }
    let end = u32::try_from(off).map_err(|_| DbError::TooLarge {
        backend: BACKEND,
        what: "file (skiplist offsets are 32-bit)",
        offset: off,
    })?;
    let mut next_at = [0u32; MAXLEVEL as usize];
    let mut ptrs = vec![Vec::new(); pairs.len()];
    for i in (0..pairs.len()).rev() {
        let level = levels[i] as usize;
        ptrs[i] = next_at[..level].to_vec();
        for n in next_at.iter_mut().take(level) {
            *n = offsets[i] as u32;
        }
    }
    let header = Header {
        version: VERSION,
        version_minor: VERSION_MINOR,
        maxlevel: MAXLEVEL,
        curlevel: levels.iter().copied().max().unwrap_or(1),
        listsize: pairs.len() as u32,
        logstart: end,
        last_recovery: opts.last_recovery,
    };
    let mut out = Vec::with_capacity(end as usize);
    out.extend_from_slice(&header.to_bytes());
    let node = |kind, key, value, ptrs| {
        Record::Node(Node {
            offset: 0,
            kind,
            key,
            key_pad: &[0u8; 3][..(roundup4(key.len() as u64) as usize - key.len())],
            value,
            value_pad: &[0u8; 3][..(roundup4(value.len() as u64) as usize - value.len())],
            ptrs,
        })
    };
    node(DUMMY, b"", b"", next_at.to_vec()).write_to(&mut out);
    for ((k, v), p) in pairs.iter().zip(ptrs) {
        node(INORDER, k.as_ref(), v.as_ref(), p).write_to(&mut out);
    }
    debug_assert_eq!(out.len() as u64, off);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_sorted(mut p: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        p.sort_by(|a, b| KeyOrder::Signed.compare(&a.0, &b.0));
        p
    }

    fn pairs(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut p: Vec<_> = (0..n)
            .map(|i| {
                (
                    format!("key{i:04}").into_bytes(),
                    format!("v{i}").into_bytes(),
                )
            })
            .collect();
        p.push((b"key\xe9".to_vec(), b"high".to_vec()));
        p.push((b"a\x00b".to_vec(), Vec::new()));
        signed_sorted(p)
    }

    fn live(db: &SkiplistDb) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    /// A log transaction, written the way `mystore`/`mydelete` do (without updating
    /// pointers, which the replay does not need).
    fn log_add(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> u32 {
        let at = out.len() as u32;
        Record::Node(Node {
            offset: 0,
            kind: ADD,
            key,
            key_pad: &[0u8; 3][..(roundup4(key.len() as u64) as usize - key.len())],
            value,
            value_pad: &[0u8; 3][..(roundup4(value.len() as u64) as usize - value.len())],
            ptrs: vec![0],
        })
        .write_to(out);
        at
    }

    #[test]
    fn fresh_reads_back_in_signed_order() {
        let p = pairs(300);
        // `key\xe9` sorts before `key0000` under the signed order.
        let pos_hi = p.iter().position(|(k, _)| k == b"key\xe9").unwrap();
        let pos_0 = p.iter().position(|(k, _)| k == b"key0000").unwrap();
        assert!(pos_hi < pos_0);
        let buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let db = SkiplistDb::open(&buf).unwrap();
        assert_eq!(live(&db), p);
        assert_eq!(db.verify(), vec![]);
        assert_eq!(db.get(b"key0123").unwrap(), Some(&b"v123"[..]));
        assert_eq!(db.get(b"nope").unwrap(), None);
        let raw = parse_raw(&buf).unwrap();
        assert!(raw
            .records
            .iter()
            .any(|r| matches!(r, Record::Node(n) if n.level() > 3)));
        assert_eq!(raw.to_bytes(), buf);
        // Raw-ordered input is rejected.
        let mut unsorted = p.clone();
        unsorted.sort();
        assert!(matches!(
            write_fresh(&unsorted, &FreshOptions::default()),
            Err(DbError::UnsortedInput { .. })
        ));
    }

    #[test]
    fn log_replay_and_partial_transaction() {
        let p = pairs(10);
        let mut buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let target = parse_raw(&buf)
            .unwrap()
            .records
            .iter()
            .find_map(|r| match r {
                Record::Node(n) if n.key == b"key0003" => Some(n.offset as u32),
                _ => None,
            })
            .unwrap();
        // Transaction 1: delete key0003, add "new"; commit.
        Record::Delete { offset: 0, target }.write_to(&mut buf);
        log_add(&mut buf, b"new", b"value");
        Record::Commit { offset: 0 }.write_to(&mut buf);
        let committed = buf.len() as u64;
        // Transaction 2, never committed.
        log_add(&mut buf, b"ghost", b"boo");
        let db = SkiplistDb::open(&buf).unwrap();
        let mut want: Vec<_> = p.into_iter().filter(|(k, _)| k != b"key0003").collect();
        want.push((b"new".to_vec(), b"value".to_vec()));
        let want = signed_sorted(want);
        assert_eq!(live(&db), want);
        let problems = db.verify();
        assert!(problems.contains(&DbError::Uncommitted {
            backend: BACKEND,
            offset: committed,
            end: buf.len() as u64
        }));
        // The on-disk pointers were not updated by our hand-made log: verify says so.
        assert!(problems
            .iter()
            .any(|e| matches!(e, DbError::BrokenLink { .. })));
        let raw = parse_raw(&buf).unwrap();
        assert_eq!(raw.to_bytes(), buf);
        assert!(raw
            .records
            .iter()
            .any(|r| matches!(r, Record::Delete { .. })));
    }

    #[test]
    fn header_checks() {
        let buf = write_fresh(&pairs(3), &FreshOptions::default()).unwrap();
        let mut b = buf.clone();
        b[OFFSET_VERSION + 3] = 2;
        assert!(matches!(
            SkiplistDb::open(&b),
            Err(DbError::BadHeaderField {
                field: "version",
                ..
            })
        ));
        let mut b = buf.clone();
        b[OFFSET_MAXLEVEL + 3] = 21;
        assert!(matches!(
            SkiplistDb::open(&b),
            Err(DbError::BadHeaderField {
                field: "maxlevel",
                ..
            })
        ));
        assert!(matches!(
            SkiplistDb::open(&buf[..47]),
            Err(DbError::Truncated { .. })
        ));
        assert!(matches!(
            SkiplistDb::open(&buf[..60]),
            Err(DbError::Truncated { .. })
        ));
        let mut b = buf.clone();
        b[DUMMY_OFFSET as usize + 2] = 0;
        assert!(matches!(
            SkiplistDb::open(&b),
            Err(DbError::BadRecord { .. })
        ));
    }

    #[test]
    fn hostile_bytes_do_not_panic_and_raw_round_trips() {
        let buf = write_fresh(&pairs(3), &FreshOptions::default()).unwrap();
        for i in HEADER_SIZE..buf.len() {
            for v in [0x00, 0xFF, 0x01, 0x80] {
                let mut b = buf.clone();
                b[i] = v;
                if let Ok(db) = SkiplistDb::open(&b) {
                    let _ = db.iter().count();
                    let _ = db.get(b"key0001");
                    let _ = db.verify();
                }
                assert_eq!(parse_raw(&b).unwrap().to_bytes(), b);
            }
        }
    }

    #[test]
    fn pointer_loop_is_reported() {
        let p = pairs(3);
        let mut buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let raw = parse_raw(&buf).unwrap();
        let first = raw.records[1].offset() as u32;
        let last = match raw.records.last().unwrap() {
            Record::Node(n) => n.clone(),
            _ => unreachable!(),
        };
        // Point the last node's level-0 pointer at the first node.
        let p0 = last.offset as usize
            + 12
            + last.key.len()
            + last.key_pad.len()
            + last.value.len()
            + last.value_pad.len();
        buf[p0..p0 + 4].copy_from_slice(&first.to_be_bytes());
        let db = SkiplistDb::open(&buf).unwrap();
        assert!(!db.verify().is_empty());
    }
}
