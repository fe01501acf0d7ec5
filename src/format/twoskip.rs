//! twoskip, Cyrus's default cyrusdb backend since 2.5 (`lib/cyrusdb_twoskip.c`; doc §1.3).
//!
//! This module owns three views of a twoskip file, all over bytes:
//! - [`TwoskipDb`]: the reader. It sees what a Cyrus reader (after recovery) sees: the
//!   live keys reachable on level 0 from the DUMMY, ignoring everything at or past the
//!   header's `current_size` (an uncommitted transaction), checking every CRC it touches.
//!   [`TwoskipDb::verify`] walks every record and every level and lists all problems.
//! - [`RawFile`]: every physical record in file order (including DELETE, COMMIT, BLANK and
//!   records made obsolete by later writes), serialised back byte for byte.
//! - Writers: [`write_fresh`] builds the compact file Cyrus's checkpoint (repack) would;
//!   [`append_transaction`] plans one write transaction on an existing clean file the way
//!   `store_here` / `delete_here` / `mycommit` do, as a list of writes for the caller to
//!   perform under the database lock.
//!
//! Nothing here does I/O or locking; that is `spool`'s job.

use std::cmp::Ordering;

use super::crc::{crc32, crc32_parts};
use super::cyrusdb::{be_u16, be_u32, be_u64, slice, DbError, KeyOrder, LevelRng, Op};

const BACKEND: &str = "twoskip";

/// `HEADER_MAGIC`: `A1 02 8B 0D "twoskip file" 00 00 00 00`.
pub const MAGIC: [u8; 20] = *b"\xa1\x02\x8b\x0dtwoskip file\0\0\0\0";
pub const OFFSET_VERSION: usize = MAGIC.len();
pub const OFFSET_GENERATION: usize = OFFSET_VERSION + 4;
pub const OFFSET_NUM_RECORDS: usize = OFFSET_GENERATION + 8;
pub const OFFSET_REPACK_SIZE: usize = OFFSET_NUM_RECORDS + 8;
pub const OFFSET_CURRENT_SIZE: usize = OFFSET_REPACK_SIZE + 8;
pub const OFFSET_FLAGS: usize = OFFSET_CURRENT_SIZE + 8;
pub const OFFSET_CRC32: usize = OFFSET_FLAGS + 4;
pub const HEADER_SIZE: usize = OFFSET_CRC32 + 4;
const _: () = assert!(HEADER_SIZE == 64);

/// The only version Cyrus writes; `read_header` rejects anything greater.
pub const VERSION: u32 = 1;
/// Header flag: a write transaction is in progress (or its writer died).
pub const DIRTY: u32 = 1;
/// Highest node level (`MAXLEVEL`); the DUMMY has this level and 32 pointer slots.
pub const MAXLEVEL: u8 = 31;
pub const DUMMY_OFFSET: u64 = HEADER_SIZE as u64;
/// 8-byte record head + 32 pointers + two CRCs.
pub const DUMMY_SIZE: u64 = 8 + 8 * (MAXLEVEL as u64 + 1) + 8;
/// Where the first real record of a file starts.
pub const FIRST_RECORD: u64 = DUMMY_OFFSET + DUMMY_SIZE;
const _: () = assert!(FIRST_RECORD == 0x150);
/// 3.2+ padding so a record head never straddles a 512-byte block (`add_padding`).
pub const BLANK: [u8; 8] = *b" BLANK\x07\xa0";
pub const BLOCKSIZE: u64 = 512;
/// A commit schedules a checkpoint once the file is bigger than this and twice the
/// size after the last repack (`MINREWRITE`).
pub const MINREWRITE: u64 = 16834;
/// Smallest possible record (`read_onerecord`'s "absolute minimum").
const MIN_RECORD: u64 = 24;

/// Record types.
pub const DUMMY: u8 = b'=';
pub const RECORD: u8 = b'+';
pub const DELETE: u8 = b'-';
pub const COMMIT: u8 = b'$';

/// The 64-byte file header, fields as stored (the CRC is kept, not recomputed, so a
/// damaged header round-trips).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub generation: u64,
    pub num_records: u64,
    pub repack_size: u64,
    pub current_size: u64,
    pub flags: u32,
    pub crc32: u32,
}

impl Header {
    /// Parse the header fields; checks length and magic only.
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
        let u32_at = |o: usize| be_u32(buf, o as u64).unwrap_or(0);
        let u64_at = |o: usize| be_u64(buf, o as u64).unwrap_or(0);
        Ok(Header {
            version: u32_at(OFFSET_VERSION),
            generation: u64_at(OFFSET_GENERATION),
            num_records: u64_at(OFFSET_NUM_RECORDS),
            repack_size: u64_at(OFFSET_REPACK_SIZE),
            current_size: u64_at(OFFSET_CURRENT_SIZE),
            flags: u32_at(OFFSET_FLAGS),
            crc32: u32_at(OFFSET_CRC32),
        })
    }

    /// The header bytes with the stored CRC.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..OFFSET_VERSION].copy_from_slice(&MAGIC);
        b[OFFSET_VERSION..OFFSET_GENERATION].copy_from_slice(&self.version.to_be_bytes());
        b[OFFSET_GENERATION..OFFSET_NUM_RECORDS].copy_from_slice(&self.generation.to_be_bytes());
        b[OFFSET_NUM_RECORDS..OFFSET_REPACK_SIZE].copy_from_slice(&self.num_records.to_be_bytes());
        b[OFFSET_REPACK_SIZE..OFFSET_CURRENT_SIZE].copy_from_slice(&self.repack_size.to_be_bytes());
        b[OFFSET_CURRENT_SIZE..OFFSET_FLAGS].copy_from_slice(&self.current_size.to_be_bytes());
        b[OFFSET_FLAGS..OFFSET_CRC32].copy_from_slice(&self.flags.to_be_bytes());
        b[OFFSET_CRC32..].copy_from_slice(&self.crc32.to_be_bytes());
        b
    }

    /// CRC-32 of the first 60 bytes, as `write_header` computes it.
    pub fn computed_crc(&self) -> u32 {
        crc32(&self.to_bytes()[..OFFSET_CRC32])
    }

    /// This header with its CRC recomputed.
    pub fn sealed(mut self) -> Header {
        self.crc32 = self.computed_crc();
        self
    }

    pub fn is_dirty(&self) -> bool {
        self.flags & DIRTY != 0
    }

    /// Whether Cyrus would schedule a checkpoint after the commit that wrote this header.
    pub fn wants_checkpoint(&self) -> bool {
        self.current_size > MINREWRITE && self.current_size > self.repack_size.saturating_mul(2)
    }
}

/// One physical record (DUMMY, RECORD, DELETE or COMMIT), borrowed from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    /// Type byte: [`DUMMY`], [`RECORD`], [`DELETE`] or [`COMMIT`].
    pub kind: u8,
    pub level: u8,
    /// The 16-bit key length held the 0xFFFF escape and a u64 length followed.
    pub long_keylen: bool,
    /// The 32-bit value length held the 0xFFFFFFFF escape and a u64 length followed.
    pub long_vallen: bool,
    /// `nextloc[0..=level]`; slots above `level` are 0.
    pub nextloc: [u64; MAXLEVEL as usize + 1],
    pub crc32_head: u32,
    pub crc32_tail: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The bytes after the value up to the 8-byte boundary (zeros when Cyrus wrote them).
    pub padding: &'a [u8],
    /// Length of everything before the key (type … crc32_tail).
    pub head_len: u64,
}

impl<'a> Record<'a> {
    /// The pointer slots this record has (`level + 1` of them).
    pub fn slots(&self) -> &[u64] {
        &self.nextloc[..=usize::from(self.level)]
    }

    /// Total length on disk.
    pub fn len(&self) -> u64 {
        self.head_len + (self.key.len() + self.value.len() + self.padding.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The head bytes (without the CRC fields) as they would be written.
    fn head_without_crcs(&self) -> Vec<u8> {
        encode_head_fields(
            self.kind,
            self.level,
            self.key.len() as u64,
            self.value.len() as u64,
            self.long_keylen,
            self.long_vallen,
            self.slots(),
        )
    }

    pub fn computed_head_crc(&self) -> u32 {
        crc32(&self.head_without_crcs())
    }

    pub fn computed_tail_crc(&self) -> u32 {
        crc32_parts(&[self.key, self.value, self.padding])
    }

    fn check_head_crc(&self) -> Result<(), DbError> {
        let computed = self.computed_head_crc();
        if computed != self.crc32_head {
            return Err(DbError::RecordCrc {
                backend: BACKEND,
                offset: self.offset,
                which: "head",
                stored: self.crc32_head,
                computed,
            });
        }
        Ok(())
    }

    fn check_tail_crc(&self) -> Result<(), DbError> {
        let computed = self.computed_tail_crc();
        if computed != self.crc32_tail {
            return Err(DbError::RecordCrc {
                backend: BACKEND,
                offset: self.offset,
                which: "tail",
                stored: self.crc32_tail,
                computed,
            });
        }
        Ok(())
    }

    /// Append the record's bytes (with its stored CRCs) to `out`.
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head_without_crcs());
        out.extend_from_slice(&self.crc32_head.to_be_bytes());
        out.extend_from_slice(&self.crc32_tail.to_be_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        out.extend_from_slice(self.padding);
    }
}

fn roundup8(n: u64) -> Option<u64> {
    n.checked_add(7).map(|v| v & !7)
}

/// Everything of a record head before the two CRCs (`prepare_record`).
fn encode_head_fields(
    kind: u8,
    level: u8,
    keylen: u64,
    vallen: u64,
    long_keylen: bool,
    long_vallen: bool,
    slots: &[u64],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(24 + 8 * slots.len());
    h.push(kind);
    h.push(level);
    let short_key = if long_keylen { u16::MAX } else { keylen as u16 };
    let short_val = if long_vallen { u32::MAX } else { vallen as u32 };
    h.extend_from_slice(&short_key.to_be_bytes());
    h.extend_from_slice(&short_val.to_be_bytes());
    if long_keylen {
        h.extend_from_slice(&keylen.to_be_bytes());
    }
    if long_vallen {
        h.extend_from_slice(&vallen.to_be_bytes());
    }
    for p in slots {
        h.extend_from_slice(&p.to_be_bytes());
    }
    h
}

/// Parse the record at `offset`, which must lie entirely below `limit` (≤ `buf.len()`).
/// Checks structure only; CRCs are checked by the callers that need them.
pub fn parse_record(buf: &[u8], offset: u64, limit: u64) -> Result<Record<'_>, DbError> {
    let limit = limit.min(buf.len() as u64);
    let truncated = |need: u64| DbError::Truncated {
        backend: BACKEND,
        what: "record",
        offset,
        need,
        len: limit,
    };
    if offset.checked_add(MIN_RECORD).map_or(true, |e| e > limit) {
        return Err(truncated(MIN_RECORD));
    }
    let bad = |problem| DbError::BadRecord {
        backend: BACKEND,
        offset,
        problem,
    };
    let kind = slice(buf, offset, 1).map_or(0, |s| s[0]);
    let level = slice(buf, offset + 1, 1).map_or(0, |s| s[0]);
    if level > MAXLEVEL {
        return Err(bad("level above 31"));
    }
    let short_key = be_u16(buf, offset + 2).unwrap_or(0);
    let short_val = be_u32(buf, offset + 4).unwrap_or(0);
    let mut p = offset + 8;
    let long_keylen = short_key == u16::MAX;
    let long_vallen = short_val == u32::MAX;
    let read_long = |p: &mut u64| -> Result<u64, DbError> {
        let v = be_u64(&buf[..limit as usize], *p).ok_or_else(|| truncated(*p + 8 - offset))?;
        *p += 8;
        Ok(v)
    };
    let keylen = if long_keylen {
        read_long(&mut p)?
    } else {
        u64::from(short_key)
    };
    let vallen = if long_vallen {
        read_long(&mut p)?
    } else {
        u64::from(short_val)
    };
    let nslots = u64::from(level) + 1;
    let crc_at = p + 8 * nslots;
    let head_len = crc_at + 8 - offset;
    let kv = keylen.checked_add(vallen).and_then(roundup8);
    let total = kv.and_then(|kv| kv.checked_add(head_len));
    let Some(total) = total.filter(|t| offset.checked_add(*t).is_some_and(|e| e <= limit)) else {
        return Err(truncated(total.unwrap_or(u64::MAX)));
    };
    let mut nextloc = [0u64; MAXLEVEL as usize + 1];
    for (i, slot) in nextloc.iter_mut().take(nslots as usize).enumerate() {
        *slot = be_u64(buf, p + 8 * i as u64).unwrap_or(0);
    }
    let key_at = crc_at + 8;
    let val_at = key_at + keylen;
    let pad_at = val_at + vallen;
    let end = offset + total;
    Ok(Record {
        offset,
        kind,
        level,
        long_keylen,
        long_vallen,
        nextloc,
        crc32_head: be_u32(buf, crc_at).unwrap_or(0),
        crc32_tail: be_u32(buf, crc_at + 4).unwrap_or(0),
        key: slice(buf, key_at, keylen).unwrap_or_default(),
        value: slice(buf, val_at, vallen).unwrap_or_default(),
        padding: slice(buf, pad_at, end - pad_at).unwrap_or_default(),
        head_len,
    })
}

/// Cyrus `_getloc`: the successor at `level`, with level 0 choosing between its two
/// slots, ignoring any at or past `end`.
fn getloc(rec: &Record<'_>, level: u8, end: u64) -> u64 {
    if level > 0 {
        return rec
            .nextloc
            .get(usize::from(level) + 1)
            .copied()
            .unwrap_or(0);
    }
    let (a, b) = (rec.nextloc[0], rec.nextloc[1]);
    if a >= end {
        b
    } else if b >= end {
        a
    } else {
        a.max(b)
    }
}

/// A parsed, header-checked view of a twoskip file.
#[derive(Debug, Clone, Copy)]
pub struct TwoskipDb<'a> {
    buf: &'a [u8],
    header: Header,
    /// `current_size`: everything at or past it is uncommitted.
    end: u64,
    order: KeyOrder,
}

impl<'a> TwoskipDb<'a> {
    /// Open with twoskip's default (raw) key order.
    pub fn open(buf: &'a [u8]) -> Result<Self, DbError> {
        Self::open_with_order(buf, KeyOrder::Raw)
    }

    /// Open a file written with `order` (Mbox for MBOXSORT databases).
    ///
    /// Fails like Cyrus's `read_header` (length, magic, version, header CRC) and also
    /// when `current_size` lies outside the file or the DUMMY is unreadable.
    pub fn open_with_order(buf: &'a [u8], order: KeyOrder) -> Result<Self, DbError> {
        let header = Header::parse(buf)?;
        if header.version > VERSION {
            return Err(DbError::BadHeaderField {
                backend: BACKEND,
                field: "version",
                offset: OFFSET_VERSION as u64,
                expected: "1",
                got: u64::from(header.version),
            });
        }
        let computed = header.computed_crc();
        if computed != header.crc32 {
            return Err(DbError::HeaderCrc {
                backend: BACKEND,
                offset: OFFSET_CRC32 as u64,
                stored: header.crc32,
                computed,
            });
        }
        if header.current_size > buf.len() as u64 || header.current_size < FIRST_RECORD {
            return Err(DbError::BadHeaderField {
                backend: BACKEND,
                field: "current_size",
                offset: OFFSET_CURRENT_SIZE as u64,
                expected: "between 0x150 and the file length",
                got: header.current_size,
            });
        }
        let db = TwoskipDb {
            buf,
            header,
            end: header.current_size,
            order,
        };
        let dummy = db.read(DUMMY_OFFSET)?;
        if dummy.kind != DUMMY || dummy.level != MAXLEVEL || !dummy.key.is_empty() {
            return Err(DbError::BadRecord {
                backend: BACKEND,
                offset: DUMMY_OFFSET,
                problem: "the record at 0x40 is not a level-31 DUMMY",
            });
        }
        Ok(db)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn order(&self) -> KeyOrder {
        self.order
    }

    /// No DIRTY flag and nothing past `current_size`: Cyrus would not run recovery.
    pub fn is_clean(&self) -> bool {
        !self.header.is_dirty() && self.end == self.buf.len() as u64
    }

    /// Read and head-CRC-check the committed record at `offset`.
    fn read(&self, offset: u64) -> Result<Record<'a>, DbError> {
        let rec = parse_record(self.buf, offset, self.end)?;
        rec.check_head_crc()?;
        Ok(rec)
    }

    /// Follow a pointer found in `from` at `level`: 0 is the end of the list; anything
    /// else must be an 8-aligned committed record offset past the DUMMY.
    fn follow(&self, from: u64, level: u8, target: u64) -> Result<Option<Record<'a>>, DbError> {
        if target == 0 {
            return Ok(None);
        }
        if target < FIRST_RECORD || target >= self.end || target % 8 != 0 {
            return Err(DbError::BadPointer {
                backend: BACKEND,
                offset: from,
                level: u32::from(level),
                target,
                end: self.end,
            });
        }
        self.read(target).map(Some)
    }

    /// Follow a level-0 pointer, hopping over one DELETE record (`read_skipdelete`).
    fn follow_skipdelete(&self, from: u64, target: u64) -> Result<Option<Record<'a>>, DbError> {
        let Some(rec) = self.follow(from, 0, target)? else {
            return Ok(None);
        };
        if rec.kind != DELETE {
            return self.expect_keyed(rec).map(Some);
        }
        match self.follow(rec.offset, 0, rec.nextloc[0])? {
            None => Ok(None),
            Some(next) => self.expect_keyed(next).map(Some),
        }
    }

    fn expect_keyed(&self, rec: Record<'a>) -> Result<Record<'a>, DbError> {
        if rec.kind != RECORD || rec.level == 0 {
            return Err(DbError::BadRecord {
                backend: BACKEND,
                offset: rec.offset,
                problem: "a list pointer leads to a record that is not a key/value RECORD",
            });
        }
        Ok(rec)
    }

    /// An upper bound on the records any walk can visit: more steps means a loop.
    fn max_steps(&self) -> u64 {
        self.end / MIN_RECORD + 1
    }

    /// The live key/value pairs in key order (level 0 from the DUMMY). Stops after the
    /// first error.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            db: *self,
            from: DUMMY_OFFSET,
            next: self
                .read(DUMMY_OFFSET)
                .map_or(0, |d| getloc(&d, 0, self.end)),
            prev_key: None,
            steps: 0,
            done: false,
        }
    }

    /// Look `key` up through the skip levels (Cyrus `relocate`). A level ≥ 1 pointer
    /// into the uncommitted tail is treated as the end of that level, which is what
    /// recovery makes of it; level 0 alone is enough to be correct.
    pub fn get(&self, key: &[u8]) -> Result<Option<&'a [u8]>, DbError> {
        let mut cur = self.read(DUMMY_OFFSET)?;
        let mut level = MAXLEVEL;
        let mut steps = 0u64;
        let max_steps = self.max_steps().saturating_mul(u64::from(MAXLEVEL) + 1);
        while level > 0 {
            let l = level - 1;
            let mut target = getloc(&cur, l, self.end);
            if l > 0 && target >= self.end {
                target = 0;
            }
            let next = if l == 0 {
                self.follow_skipdelete(cur.offset, target)?
            } else {
                self.follow(cur.offset, l, target)?
                    .map(|r| self.expect_keyed(r))
                    .transpose()?
            };
            match next {
                Some(rec) if rec.level <= l => {
                    return Err(DbError::BadRecord {
                        backend: BACKEND,
                        offset: rec.offset,
                        problem: "record is linked into a level above its own",
                    })
                }
                Some(rec) => match self.order.compare(rec.key, key) {
                    Ordering::Less => {
                        steps += 1;
                        if steps > max_steps {
                            return Err(DbError::Loop {
                                backend: BACKEND,
                                offset: rec.offset,
                                level: u32::from(l),
                            });
                        }
                        cur = rec;
                        continue;
                    }
                    Ordering::Equal if l == 0 => {
                        rec.check_tail_crc()?;
                        return Ok(Some(rec.value));
                    }
                    _ => {}
                },
                None => {}
            }
            level -= 1;
        }
        Ok(None)
    }

    /// Every problem found: header state, CRCs of every committed physical record,
    /// ordering, linkage at every level, and the record count.
    pub fn verify(&self) -> Vec<DbError> {
        let mut problems = Vec::new();
        if self.header.is_dirty() {
            problems.push(DbError::Dirty {
                backend: BACKEND,
                offset: OFFSET_FLAGS as u64,
            });
        }
        if self.end < self.buf.len() as u64 {
            problems.push(DbError::Uncommitted {
                backend: BACKEND,
                offset: self.end,
                end: self.buf.len() as u64,
            });
        }
        self.verify_physical(&mut problems);
        self.verify_links(&mut problems);
        problems
    }

    /// Sequential scan of the committed part: every record parses, has a known type
    /// and correct CRCs.
    fn verify_physical(&self, problems: &mut Vec<DbError>) {
        let mut off = DUMMY_OFFSET;
        while off < self.end && problems.len() < MAX_PROBLEMS {
            if slice(self.buf, off, 8) == Some(&BLANK[..]) {
                off += 8;
                continue;
            }
            let rec = match parse_record(self.buf, off, self.end) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    return;
                }
            };
            if !matches!(rec.kind, DUMMY | RECORD | DELETE | COMMIT) {
                problems.push(DbError::BadRecordType {
                    backend: BACKEND,
                    offset: off,
                    kind: u32::from(rec.kind),
                });
                return;
            }
            problems.extend(rec.check_head_crc().err());
            problems.extend(rec.check_tail_crc().err());
            off += rec.len();
        }
    }

    /// The walk `myconsistent` does: level 0 in order, each level-k pointer must reach
    /// exactly the next record of level > k, every level ends in 0, the count matches.
    fn verify_links(&self, problems: &mut Vec<DbError>) {
        let Ok(dummy) = self.read(DUMMY_OFFSET) else {
            return;
        };
        let mut fwd = [0u64; MAXLEVEL as usize];
        for (l, f) in fwd.iter_mut().enumerate() {
            *f = getloc(&dummy, l as u8, self.end);
        }
        let mut count = 0u64;
        let mut prev: Option<Record<'a>> = None;
        let mut from = DUMMY_OFFSET;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > self.max_steps() {
                problems.push(DbError::Loop {
                    backend: BACKEND,
                    offset: from,
                    level: 0,
                });
                return;
            }
            let rec = match self.follow_skipdelete(from, fwd[0]) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    problems.push(e);
                    return;
                }
            };
            if let Some(p) = &prev {
                if self.order.compare(p.key, rec.key) != Ordering::Less {
                    problems.push(DbError::OutOfOrder {
                        backend: BACKEND,
                        offset: rec.offset,
                    });
                    return;
                }
            }
            for l in 1..rec.level {
                let l = usize::from(l);
                if fwd[l] != rec.offset && problems.len() < MAX_PROBLEMS {
                    problems.push(DbError::BrokenLink {
                        backend: BACKEND,
                        offset: prev.as_ref().map_or(DUMMY_OFFSET, |p| p.offset),
                        level: l as u32,
                        expected: rec.offset,
                        found: fwd[l],
                    });
                }
            }
            for l in 0..rec.level {
                let next = getloc(&rec, l, self.end);
                if l > 0 && next >= self.end && problems.len() < MAX_PROBLEMS {
                    problems.push(DbError::BadPointer {
                        backend: BACKEND,
                        offset: rec.offset,
                        level: u32::from(l),
                        target: next,
                        end: self.end,
                    });
                }
                fwd[usize::from(l)] = next;
            }
            count += 1;
            from = rec.offset;
            prev = Some(rec);
        }
        for (l, f) in fwd.iter().enumerate().skip(1) {
            if *f != 0 && problems.len() < MAX_PROBLEMS {
                problems.push(DbError::BrokenLink {
                    backend: BACKEND,
                    offset: from,
                    level: l as u32,
                    expected: 0,
                    found: *f,
                });
            }
        }
        if count != self.header.num_records {
            problems.push(DbError::RecordCount {
                backend: BACKEND,
                stored: self.header.num_records,
                counted: count,
            });
        }
    }
}

/// Cap on reported problems, so a hostile file cannot make `verify` allocate without end.
const MAX_PROBLEMS: usize = 10_000;

/// Open `buf` and verify it; an open failure is the single problem reported.
pub fn verify(buf: &[u8], order: KeyOrder) -> Vec<DbError> {
    match TwoskipDb::open_with_order(buf, order) {
        Ok(db) => db.verify(),
        Err(e) => vec![e],
    }
}

/// A live key and its value, borrowed from the file.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Iterator over live pairs; see [`TwoskipDb::iter`].
pub struct Iter<'a> {
    db: TwoskipDb<'a>,
    from: u64,
    next: u64,
    prev_key: Option<&'a [u8]>,
    steps: u64,
    done: bool,
}

impl<'a> Iter<'a> {
    fn step(&mut self) -> Result<Option<Pair<'a>>, DbError> {
        self.steps += 1;
        if self.steps > self.db.max_steps() {
            return Err(DbError::Loop {
                backend: BACKEND,
                offset: self.from,
                level: 0,
            });
        }
        let Some(rec) = self.db.follow_skipdelete(self.from, self.next)? else {
            return Ok(None);
        };
        rec.check_tail_crc()?;
        if let Some(prev) = self.prev_key {
            if self.db.order.compare(prev, rec.key) != Ordering::Less {
                return Err(DbError::OutOfOrder {
                    backend: BACKEND,
                    offset: rec.offset,
                });
            }
        }
        self.prev_key = Some(rec.key);
        self.from = rec.offset;
        self.next = getloc(&rec, 0, self.db.end);
        Ok(Some((rec.key, rec.value)))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<Pair<'a>, DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r.transpose()
    }
}

// ------------------------------------------------------------------ raw layer

/// One physical item of a twoskip file in file order.
// BLANKs are rare and small; boxing every record to shrink them is not worth it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawRecord<'a> {
    /// 8 bytes of [`BLANK`] padding.
    Blank {
        offset: u64,
    },
    Record(Record<'a>),
}

/// A whole twoskip file as header + every physical record + unparseable trailing bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile<'a> {
    pub header: Header,
    pub records: Vec<RawRecord<'a>>,
    /// Bytes after the last record that parses (a torn write, garbage); normally empty.
    pub trailing: &'a [u8],
}

/// Split the file into its physical records, scanning to the real end of the file
/// (past `current_size`, so uncommitted records are listed too). Needs only the magic.
pub fn parse_raw(buf: &[u8]) -> Result<RawFile<'_>, DbError> {
    let header = Header::parse(buf)?;
    let len = buf.len() as u64;
    let mut records = Vec::new();
    let mut off = DUMMY_OFFSET;
    while off < len {
        if slice(buf, off, 8) == Some(&BLANK[..]) {
            records.push(RawRecord::Blank { offset: off });
            off += 8;
            continue;
        }
        match parse_record(buf, off, len) {
            Ok(r) if matches!(r.kind, DUMMY | RECORD | DELETE | COMMIT) => {
                off += r.len();
                records.push(RawRecord::Record(r));
            }
            _ => break,
        }
    }
    Ok(RawFile {
        header,
        records,
        trailing: slice(buf, off, len.saturating_sub(off)).unwrap_or_default(),
    })
}

impl RawFile<'_> {
    /// Serialise exactly what was parsed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_bytes().to_vec();
        for r in &self.records {
            match r {
                RawRecord::Blank { .. } => out.extend_from_slice(&BLANK),
                RawRecord::Record(rec) => rec.write_to(&mut out),
            }
        }
        out.extend_from_slice(self.trailing);
        out
    }
}

// ------------------------------------------------------------------ writers

/// Serialise a new record the way `write_record` does: lengths escaped from 0xFFFF /
/// 0xFFFFFFFF up, both CRCs computed, key+value zero-padded to 8.
fn encode_record(kind: u8, level: u8, key: &[u8], value: &[u8], slots: &[u64]) -> Vec<u8> {
    let (klen, vlen) = (key.len() as u64, value.len() as u64);
    let mut out = encode_head_fields(
        kind,
        level,
        klen,
        vlen,
        klen >= u64::from(u16::MAX),
        vlen >= u64::from(u32::MAX),
        slots,
    );
    let head_crc = crc32(&out);
    let pad_len = roundup8(klen + vlen).unwrap_or(0) - (klen + vlen);
    let pad = [0u8; 8];
    let pad = &pad[..pad_len as usize];
    out.extend_from_slice(&head_crc.to_be_bytes());
    out.extend_from_slice(&crc32_parts(&[key, value, pad]).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.extend_from_slice(pad);
    out
}

/// Head length of a record to be written (what `add_padding` is given).
fn head_len_for(klen: usize, vlen: usize, level: u8) -> u64 {
    let mut n = 8 + 8 * (u64::from(level) + 1) + 8;
    if klen >= usize::from(u16::MAX) {
        n += 8;
    }
    if vlen as u64 >= u64::from(u32::MAX) {
        n += 8;
    }
    n
}

/// Number of BLANKs `add_padding` writes at `end` before a head of `head_len` bytes.
fn blanks_before(mut end: u64, head_len: u64) -> u64 {
    if head_len > BLOCKSIZE - 8 {
        return 0;
    }
    let mut n = 0;
    while (end + 8) % BLOCKSIZE > (end + head_len - 8) % BLOCKSIZE {
        end += 8;
        n += 1;
    }
    n
}

/// Options for [`write_fresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshOptions {
    /// 1 for a new database; a checkpoint writes the old generation + 1.
    pub generation: u64,
    /// The order the keys are sorted in (and the database will be opened with).
    pub order: KeyOrder,
    /// Seed of the level generator; the same seed gives the same file.
    pub seed: u64,
}

impl Default for FreshOptions {
    fn default() -> Self {
        FreshOptions {
            generation: 1,
            order: KeyOrder::Raw,
            seed: 0,
        }
    }
}

/// Build a compact twoskip file holding `pairs` (strictly ascending under
/// `opts.order`, no empty key), shaped like Cyrus 3.6's checkpoint output: header,
/// DUMMY, every record in order with a random level and `[0, next, …]` slots, BLANK
/// padding as `add_padding` writes it, one COMMIT pointing at 0x150; `repack_size` is
/// the end before that COMMIT.
pub fn write_fresh<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    pairs: &[(K, V)],
    opts: &FreshOptions,
) -> Result<Vec<u8>, DbError> {
    check_input(pairs, opts.order)?;
    let mut rng = LevelRng::new(opts.seed);
    let levels: Vec<u8> = pairs.iter().map(|_| rng.level(MAXLEVEL)).collect();

    // Pass 1: where every record (and its padding) lands.
    let mut offsets = Vec::with_capacity(pairs.len());
    let mut off = FIRST_RECORD;
    for ((k, v), level) in pairs.iter().zip(&levels) {
        let (k, v) = (k.as_ref(), v.as_ref());
        let head = head_len_for(k.len(), v.len(), *level);
        off += 8 * blanks_before(off, head);
        offsets.push(off);
        off += head + roundup8((k.len() + v.len()) as u64).unwrap_or(0);
    }
    let repack_size = off;
    let commit_at = off + 8 * blanks_before(off, MIN_RECORD);
    let end = commit_at + MIN_RECORD;

    // Pass 2: forward pointers, from the last record back.
    let mut next_at = [0u64; MAXLEVEL as usize];
    let mut slots: Vec<Vec<u64>> = vec![Vec::new(); pairs.len()];
    for i in (0..pairs.len()).rev() {
        let level = usize::from(levels[i]);
        let mut s = vec![0, next_at[0]];
        s.extend_from_slice(&next_at[1..level]);
        slots[i] = s;
        for n in next_at.iter_mut().take(level) {
            *n = offsets[i];
        }
    }
    let mut dummy_slots = vec![0, next_at[0]];
    dummy_slots.extend_from_slice(&next_at[1..]);

    let header = Header {
        version: VERSION,
        generation: opts.generation,
        num_records: pairs.len() as u64,
        repack_size,
        current_size: end,
        flags: 0,
        crc32: 0,
    }
    .sealed();
    let mut out = Vec::with_capacity(end as usize);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&encode_record(DUMMY, MAXLEVEL, b"", b"", &dummy_slots));
    for (i, (k, v)) in pairs.iter().enumerate() {
        while (out.len() as u64) < offsets[i] {
            out.extend_from_slice(&BLANK);
        }
        out.extend_from_slice(&encode_record(
            RECORD,
            levels[i],
            k.as_ref(),
            v.as_ref(),
            &slots[i],
        ));
    }
    while (out.len() as u64) < commit_at {
        out.extend_from_slice(&BLANK);
    }
    out.extend_from_slice(&encode_record(COMMIT, 0, b"", b"", &[FIRST_RECORD]));
    debug_assert_eq!(out.len() as u64, end);
    Ok(out)
}

fn check_input<K: AsRef<[u8]>, V>(pairs: &[(K, V)], order: KeyOrder) -> Result<(), DbError> {
    if let Some(index) = pairs.iter().position(|(k, _)| k.as_ref().is_empty()) {
        return Err(DbError::EmptyKey {
            backend: BACKEND,
            index,
        });
    }
    if let Some(index) = order.first_unsorted(pairs) {
        return Err(DbError::UnsortedInput {
            backend: BACKEND,
            index,
            order,
        });
    }
    Ok(())
}

/// One write transaction planned against a clean file: perform the writes in this order
/// under the exclusive lock, as `mycommit` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The old header with DIRTY set: write at offset 0 and fsync before anything else.
    pub dirty_header: [u8; HEADER_SIZE],
    /// Appended records (with their BLANK padding) and in-place rewrites of existing
    /// record heads, each `(offset, bytes)`, in Cyrus's order. fsync after the last.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The committed header (new `current_size`, DIRTY clear, new `num_records`): write
    /// at offset 0 and fsync. Only this makes the transaction visible.
    pub commit_header: [u8; HEADER_SIZE],
    /// File length after the transaction.
    pub new_len: u64,
}

impl Transaction {
    /// The resulting file, for tests and for writers that replace the whole file.
    pub fn apply(&self, existing: &[u8]) -> Vec<u8> {
        let mut out = existing.to_vec();
        out.resize(self.new_len as usize, 0);
        put(&mut out, 0, &self.dirty_header);
        for (off, bytes) in &self.writes {
            put(&mut out, *off, bytes);
        }
        put(&mut out, 0, &self.commit_header);
        out
    }

    /// The committed header as a struct.
    pub fn header(&self) -> Header {
        Header::parse(&self.commit_header).unwrap_or_else(|_| unreachable!("built by us"))
    }
}

fn put(buf: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let off = off as usize;
    let end = off + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[off..end].copy_from_slice(bytes);
}

/// Plan one transaction of `ops` on `existing`, which must be clean (Cyrus runs
/// recovery first otherwise, which is not done here). Levels of new records come from
/// `rng`. Returns `None` when nothing changes (only deletes of missing keys): Cyrus
/// does not dirty the file then.
///
/// `existing` is only read (typically a mapping of the locked file): the transaction's
/// own appends and head rewrites are kept in an [`Overlay`], so the cost is that of the
/// records touched, not of the file's size.
pub fn append_transaction(
    existing: &[u8],
    ops: &[Op<'_>],
    order: KeyOrder,
    rng: &mut LevelRng,
) -> Result<Option<Transaction>, DbError> {
    plan_transaction(existing, Overlay::new(existing), ops, order, rng)
}

fn plan_transaction<S: TxnStore>(
    existing: &[u8],
    store: S,
    ops: &[Op<'_>],
    order: KeyOrder,
    rng: &mut LevelRng,
) -> Result<Option<Transaction>, DbError> {
    let db = TwoskipDb::open_with_order(existing, order)?;
    if db.header.is_dirty() {
        return Err(DbError::NeedsRecovery {
            backend: BACKEND,
            reason: "the DIRTY flag is set",
        });
    }
    if !db.is_clean() {
        return Err(DbError::NeedsRecovery {
            backend: BACKEND,
            reason: "the file is longer than current_size",
        });
    }
    let mut txn = Txn {
        w: store,
        header: db.header,
        order,
        writes: Vec::new(),
        dirty: false,
    };
    for op in ops {
        match *op {
            Op::Set(key, value) => {
                if key.is_empty() {
                    return Err(DbError::EmptyKey {
                        backend: BACKEND,
                        index: 0,
                    });
                }
                let loc = txn.relocate(key)?;
                txn.store_here(loc, key, value, rng.level(MAXLEVEL))?;
            }
            Op::Delete(key) => {
                let loc = txn.relocate(key)?;
                txn.delete_here(loc)?;
            }
        }
    }
    if !txn.dirty {
        return Ok(None);
    }
    let dirty_header = Header {
        flags: db.header.flags | DIRTY,
        ..db.header
    }
    .sealed()
    .to_bytes();
    // mycommit: COMMIT points at where this transaction started.
    txn.append(COMMIT, 0, b"", b"", &[db.header.current_size]);
    let new_len = txn.end();
    let commit = Header {
        current_size: new_len,
        flags: db.header.flags & !DIRTY,
        ..txn.header
    }
    .sealed();
    Ok(Some(Transaction {
        dirty_header,
        writes: txn.writes,
        commit_header: commit.to_bytes(),
        new_len,
    }))
}

/// The file as an open transaction sees it: committed bytes plus its own writes.
trait TxnStore {
    /// Length including this transaction's appends (Cyrus's `db->end`).
    fn len(&self) -> u64;
    /// The record at `offset` as currently written (structure only, no CRC check).
    fn record(&self, offset: u64) -> Result<Record<'_>, DbError>;
    /// Append at the end.
    fn append(&mut self, bytes: &[u8]);
    /// Rewrite the head (type … CRCs) of the record at `offset`, same length.
    fn rewrite_head(&mut self, offset: u64, head: &[u8]);
}

/// A private copy of the whole file (what the planner did before [`Overlay`]; kept as
/// the reference the overlay is tested against).
impl TxnStore for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn record(&self, offset: u64) -> Result<Record<'_>, DbError> {
        parse_record(self, offset, TxnStore::len(self))
    }
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn rewrite_head(&mut self, offset: u64, head: &[u8]) {
        put(self, offset, head);
    }
}

/// The committed file, read in place, under the transaction's appended tail and its
/// rewritten heads of committed records (by offset; only the pointer slots and the head
/// CRC of those differ from the file).
struct Overlay<'a> {
    base: &'a [u8],
    tail: Vec<u8>,
    heads: std::collections::HashMap<u64, Vec<u8>>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a [u8]) -> Self {
        Overlay {
            base,
            tail: Vec::new(),
            heads: std::collections::HashMap::new(),
        }
    }

    fn base_len(&self) -> u64 {
        self.base.len() as u64
    }
}

impl TxnStore for Overlay<'_> {
    fn len(&self) -> u64 {
        self.base_len() + self.tail.len() as u64
    }

    fn record(&self, offset: u64) -> Result<Record<'_>, DbError> {
        let base_len = self.base_len();
        if let Some(rel) = offset.checked_sub(base_len) {
            // Our own append: well-formed by construction; only its offset is shifted.
            let mut rec = parse_record(&self.tail, rel, self.tail.len() as u64)?;
            rec.offset = offset;
            return Ok(rec);
        }
        // A committed record ends at or before the committed end (the file is clean).
        let mut rec = parse_record(self.base, offset, base_len)?;
        if let Some(head) = self.heads.get(&offset) {
            let at = 8 + if rec.long_keylen { 8 } else { 0 } + if rec.long_vallen { 8 } else { 0 };
            for (i, slot) in rec
                .nextloc
                .iter_mut()
                .take(usize::from(rec.level) + 1)
                .enumerate()
            {
                *slot = be_u64(head, (at + 8 * i) as u64).unwrap_or(0);
            }
            let crc_at = at + 8 * (usize::from(rec.level) + 1);
            rec.crc32_head = be_u32(head, crc_at as u64).unwrap_or(0);
        }
        Ok(rec)
    }

    fn append(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
    }

    fn rewrite_head(&mut self, offset: u64, head: &[u8]) {
        match offset.checked_sub(self.base_len()) {
            Some(rel) => put(&mut self.tail, rel, head),
            None => {
                self.heads.insert(offset, head.to_vec());
            }
        }
    }
}

/// Result of `relocate`: per level, the last record before the key and its successor;
/// plus the exact match, if any.
struct Loc {
    backloc: [u64; MAXLEVEL as usize + 1],
    forwardloc: [u64; MAXLEVEL as usize + 1],
    exact: Option<(u64, u8)>,
}

/// An in-progress transaction over the file as `w` shows it.
struct Txn<S> {
    w: S,
    /// In-memory header: `current_size` stays the committed size (the slot rule needs
    /// it); `num_records` is updated as records change.
    header: Header,
    order: KeyOrder,
    writes: Vec<(u64, Vec<u8>)>,
    dirty: bool,
}

impl<S: TxnStore> Txn<S> {
    fn end(&self) -> u64 {
        self.w.len()
    }

    /// Reads see this transaction's own appends (Cyrus reads up to `db->end`).
    fn read(&self, offset: u64) -> Result<Record<'_>, DbError> {
        if offset < DUMMY_OFFSET || offset % 8 != 0 {
            return Err(DbError::BadPointer {
                backend: BACKEND,
                offset,
                level: 0,
                target: offset,
                end: self.end(),
            });
        }
        let rec = self.w.record(offset)?;
        rec.check_head_crc()?;
        Ok(rec)
    }

    /// `read_skipdelete`, returning `(offset, level, key)` of the keyed record.
    fn read_skipdelete(&self, offset: u64) -> Result<Option<(u64, u8, Vec<u8>)>, DbError> {
        if offset == 0 {
            return Ok(None);
        }
        let mut rec = self.read(offset)?;
        if rec.kind == DELETE {
            if rec.nextloc[0] == 0 {
                return Ok(None);
            }
            rec = self.read(rec.nextloc[0])?;
        }
        if rec.kind != RECORD || rec.level == 0 {
            return Err(DbError::BadRecord {
                backend: BACKEND,
                offset: rec.offset,
                problem: "a list pointer leads to a record that is not a key/value RECORD",
            });
        }
        Ok(Some((rec.offset, rec.level, rec.key.to_vec())))
    }

    /// Cyrus `relocate`.
    fn relocate(&self, key: &[u8]) -> Result<Loc, DbError> {
        let end = self.end();
        let mut loc = Loc {
            backloc: [0; MAXLEVEL as usize + 1],
            forwardloc: [0; MAXLEVEL as usize + 1],
            exact: None,
        };
        let mut cur = self.read(DUMMY_OFFSET)?;
        let mut level = cur.level;
        loc.backloc[usize::from(level)] = cur.offset;
        let mut last: Option<(u64, u8, Vec<u8>)> = None;
        let mut old_offset = 0;
        let mut steps = 0u64;
        let max_steps = (end / MIN_RECORD + 1).saturating_mul(u64::from(MAXLEVEL) + 1);
        while level > 0 {
            let l = usize::from(level - 1);
            let offset = getloc(&cur, level - 1, end);
            loc.backloc[l] = cur.offset;
            loc.forwardloc[l] = offset;
            if offset != old_offset {
                old_offset = offset;
                last = self.read_skipdelete(offset)?;
                if let Some((off, lvl, k)) = &last {
                    if *lvl < level {
                        return Err(DbError::BadRecord {
                            backend: BACKEND,
                            offset: *off,
                            problem: "record is linked into a level above its own",
                        });
                    }
                    if self.order.compare(k, key) == Ordering::Less {
                        steps += 1;
                        if steps > max_steps {
                            return Err(DbError::Loop {
                                backend: BACKEND,
                                offset: *off,
                                level: l as u32,
                            });
                        }
                        cur = self.read(*off)?;
                        continue;
                    }
                }
            }
            level -= 1;
        }
        if let Some((off, lvl, k)) = last {
            if self.order.compare(&k, key) == Ordering::Equal {
                let rec = self.read(off)?;
                rec.check_tail_crc()?;
                for l in 0..lvl {
                    loc.forwardloc[usize::from(l)] = getloc(&rec, l, end);
                }
                loc.exact = Some((off, lvl));
            }
        }
        Ok(loc)
    }

    /// `append_record`: BLANK padding then the record, at the current end.
    fn append(&mut self, kind: u8, level: u8, key: &[u8], value: &[u8], slots: &[u64]) -> u64 {
        self.dirty = true;
        let head = head_len_for(key.len(), value.len(), level);
        let blanks = blanks_before(self.end(), head);
        let mut bytes = Vec::new();
        for _ in 0..blanks {
            bytes.extend_from_slice(&BLANK);
        }
        let at = self.end() + 8 * blanks;
        bytes.extend_from_slice(&encode_record(kind, level, key, value, slots));
        self.w.append(&bytes);
        self.writes.push((at - 8 * blanks, bytes));
        at
    }

    /// `_setloc`: level 0 overwrites the slot that is already this transaction's, else
    /// the older of the two, so the committed successor survives a crash.
    fn setloc(&self, slots: &mut [u64], level: u8, target: u64) {
        let cs = self.header.current_size;
        if level > 0 {
            if let Some(s) = slots.get_mut(usize::from(level) + 1) {
                *s = target;
            }
        } else if slots[0] >= cs {
            slots[0] = target;
        } else if slots[1] >= cs {
            slots[1] = target;
        } else if slots[1] > slots[0] {
            slots[0] = target;
        } else {
            slots[1] = target;
        }
    }

    /// `stitch`: point every predecessor up to `maxlevel` at `forwardloc`, rewriting
    /// heads in place (new head CRC, tail CRC unchanged).
    fn stitch(&mut self, loc: &Loc, maxlevel: u8) -> Result<(), DbError> {
        let mut level = 0u8;
        while level < maxlevel {
            let rec = self.read(loc.backloc[usize::from(level)])?;
            if rec.level <= level {
                return Err(DbError::BadRecord {
                    backend: BACKEND,
                    offset: rec.offset,
                    problem: "predecessor is lower than the level it precedes",
                });
            }
            let mut slots = rec.slots().to_vec();
            for l in level..maxlevel.min(rec.level) {
                self.setloc(&mut slots, l, loc.forwardloc[usize::from(l)]);
            }
            let mut head = encode_head_fields(
                rec.kind,
                rec.level,
                rec.key.len() as u64,
                rec.value.len() as u64,
                rec.long_keylen,
                rec.long_vallen,
                &slots,
            );
            let crc = crc32(&head);
            head.extend_from_slice(&crc.to_be_bytes());
            head.extend_from_slice(&rec.crc32_tail.to_be_bytes());
            let offset = rec.offset;
            level = rec.level;
            self.w.rewrite_head(offset, &head);
            self.writes.push((offset, head));
        }
        Ok(())
    }

    /// `store_here`.
    fn store_here(
        &mut self,
        mut loc: Loc,
        key: &[u8],
        value: &[u8],
        newlevel: u8,
    ) -> Result<(), DbError> {
        let mut level = 0;
        if let Some((_, old_level)) = loc.exact {
            level = old_level;
            self.header.num_records = self.header.num_records.saturating_sub(1);
        }
        let mut slots = vec![0u64; usize::from(newlevel) + 1];
        let n = usize::from(newlevel);
        slots[1..=n].copy_from_slice(&loc.forwardloc[..n]);
        level = level.max(newlevel);
        let at = self.append(RECORD, newlevel, key, value, &slots);
        for f in loc.forwardloc.iter_mut().take(usize::from(newlevel)) {
            *f = at;
        }
        self.stitch(&loc, level)?;
        self.header.num_records = self.header.num_records.saturating_add(1);
        Ok(())
    }

    /// `delete_here`: a DELETE pointing at the successor; predecessors up to the old
    /// record's level skip past it (level 0 via the DELETE).
    fn delete_here(&mut self, mut loc: Loc) -> Result<(), DbError> {
        let Some((_, old_level)) = loc.exact else {
            return Ok(());
        };
        self.header.num_records = self.header.num_records.saturating_sub(1);
        let next = self
            .read_skipdelete(loc.forwardloc[0])?
            .map_or(0, |(o, _, _)| o);
        let at = self.append(DELETE, 0, b"", b"", &[next]);
        loc.forwardloc[0] = at;
        self.stitch(&loc, old_level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    format!("key{i:05}").into_bytes(),
                    format!("value {i}").into_bytes(),
                )
            })
            .collect()
    }

    fn live(buf: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        TwoskipDb::open(buf)
            .unwrap()
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// `cyr_dbtool -n … twoskip set alpha one`, from doc §1.3.2 (levels differ: Cyrus
    /// chose level 2 there).
    #[test]
    fn documented_header_bytes() {
        let h = Header {
            version: 1,
            generation: 1,
            num_records: 1,
            repack_size: 0x150,
            current_size: 0x198,
            flags: 0,
            crc32: 0,
        }
        .sealed();
        assert_eq!(h.crc32, 0xe42b_1804);
    }

    #[test]
    fn fresh_file_reads_back_and_verifies() {
        let p = pairs(500);
        let buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let db = TwoskipDb::open(&buf).unwrap();
        assert!(db.is_clean());
        assert_eq!(db.verify(), vec![]);
        assert_eq!(live(&buf), p);
        assert_eq!(db.get(b"key00250").unwrap(), Some(&b"value 250"[..]));
        assert_eq!(db.get(b"key00250x").unwrap(), None);
        assert_eq!(db.get(b"a").unwrap(), None);
        assert_eq!(db.get(b"z").unwrap(), None);
        for (k, v) in &p {
            assert_eq!(db.get(k).unwrap(), Some(&v[..]));
        }
        // Deterministic, and uses skip levels above 1.
        assert_eq!(buf, write_fresh(&p, &FreshOptions::default()).unwrap());
        let raw = parse_raw(&buf).unwrap();
        assert!(raw
            .records
            .iter()
            .any(|r| matches!(r, RawRecord::Record(r) if r.level > 3)));
        assert!(raw
            .records
            .iter()
            .any(|r| matches!(r, RawRecord::Blank { .. })));
        assert_eq!(raw.to_bytes(), buf);
    }

    #[test]
    fn empty_fresh_file() {
        let buf = write_fresh::<&[u8], &[u8]>(&[], &FreshOptions::default()).unwrap();
        assert_eq!(buf.len(), 0x150 + 24);
        let db = TwoskipDb::open(&buf).unwrap();
        assert_eq!(db.iter().count(), 0);
        assert_eq!(db.verify(), vec![]);
    }

    #[test]
    fn fresh_rejects_unsorted_and_empty_keys() {
        let p: [(&[u8], &[u8]); 2] = [(b"b", b""), (b"a", b"")];
        assert!(matches!(
            write_fresh(&p, &FreshOptions::default()),
            Err(DbError::UnsortedInput { index: 1, .. })
        ));
        let p: [(&[u8], &[u8]); 1] = [(b"", b"")];
        assert!(matches!(
            write_fresh(&p, &FreshOptions::default()),
            Err(DbError::EmptyKey { .. })
        ));
    }

    #[test]
    fn long_keys_and_values_use_the_escape() {
        let big_key = vec![b'k'; 70_000];
        let p = vec![
            (b"a".to_vec(), vec![7u8; 0xFFFF]),
            (big_key.clone(), b"v".to_vec()),
        ];
        let buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        assert_eq!(live(&buf), p);
        let raw = parse_raw(&buf).unwrap();
        let recs: Vec<_> = raw
            .records
            .iter()
            .filter_map(|r| match r {
                RawRecord::Record(r) if r.kind == RECORD => Some(r),
                _ => None,
            })
            .collect();
        assert!(!recs[0].long_keylen && !recs[0].long_vallen);
        assert!(recs[1].long_keylen);
        assert_eq!(raw.to_bytes(), buf);
    }

    #[test]
    fn transactions_set_overwrite_delete() {
        let p = pairs(200);
        let mut buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let mut rng = LevelRng::new(99);
        let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = p.into_iter().collect();
        let rounds: Vec<Vec<Op>> = vec![
            vec![Op::Set(b"key00010", b"new"), Op::Delete(b"key00011")],
            vec![
                Op::Set(b"aaa", b"first"),
                Op::Set(b"zzz", b""),
                Op::Delete(b"key00199"),
            ],
            vec![Op::Delete(b"key00000"), Op::Set(b"key00000", b"back")],
            vec![
                Op::Set(b"key00010", b"again"),
                Op::Set(b"key00010", b"and again"),
            ],
            vec![Op::Delete(b"aaa"), Op::Delete(b"zzz"), Op::Delete(b"nope")],
        ];
        for ops in rounds {
            let before = buf.clone();
            let txn = append_transaction(&buf, &ops, KeyOrder::Raw, &mut rng)
                .unwrap()
                .unwrap();
            buf = txn.apply(&buf);
            // Committed records are only rewritten in their heads; the old file is a prefix
            // apart from those heads.
            assert!(buf.len() > before.len());
            for op in &ops {
                match op {
                    Op::Set(k, v) => model.insert(k.to_vec(), v.to_vec()),
                    Op::Delete(k) => model.remove(*k),
                };
            }
            let db = TwoskipDb::open(&buf).unwrap();
            assert_eq!(db.verify(), vec![]);
            assert_eq!(live(&buf), model.clone().into_iter().collect::<Vec<_>>());
            for (k, v) in &model {
                assert_eq!(db.get(k).unwrap(), Some(&v[..]));
            }
            assert_eq!(db.get(b"key00011").unwrap(), None);
            // The file before this transaction, with the old header, still reads as the
            // old state: the uncommitted-crash view.
            let mut crashed = buf.clone();
            crashed[..HEADER_SIZE].copy_from_slice(&txn.dirty_header);
            let cdb = TwoskipDb::open(&crashed).unwrap();
            let old: Vec<_> = TwoskipDb::open(&before)
                .unwrap()
                .iter()
                .map(|r| r.unwrap())
                .collect();
            let seen: Vec<_> = cdb.iter().map(|r| r.unwrap()).collect();
            assert_eq!(seen, old);
            assert!(cdb
                .verify()
                .iter()
                .any(|e| matches!(e, DbError::Dirty { .. })));
        }
        let raw = parse_raw(&buf).unwrap();
        assert_eq!(raw.to_bytes(), buf);
        assert!(raw
            .records
            .iter()
            .any(|r| matches!(r, RawRecord::Record(r) if r.kind == DELETE)));
    }

    /// splitmix64 for test op sequences.
    struct TestRng(u64);
    impl TestRng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random transaction: sets (new and existing keys, some long values) and deletes
    /// (present and missing keys), sometimes of the same key twice.
    fn random_ops(r: &mut TestRng) -> Vec<(bool, Vec<u8>, Vec<u8>)> {
        let n = 1 + r.below(6);
        (0..n)
            .map(|_| {
                let key = format!("key{:05}", r.below(400)).into_bytes();
                let vlen = if r.below(20) == 0 { 600 } else { r.below(40) } as usize;
                let value = vec![b'a' + r.below(26) as u8; vlen];
                (r.below(4) == 0, key, value)
            })
            .collect()
    }

    fn as_ops(ops: &[(bool, Vec<u8>, Vec<u8>)]) -> Vec<Op<'_>> {
        ops.iter()
            .map(|(del, k, v)| if *del { Op::Delete(k) } else { Op::Set(k, v) })
            .collect()
    }

    /// The plan made over the mapped file plus an overlay is the plan the whole-file copy
    /// made, write for write, over random transaction sequences; the result reads as the
    /// model and verifies.
    #[test]
    fn overlay_plans_equal_copy_plans() {
        let mut r = TestRng(7);
        for seed in 0..6u64 {
            let mut buf = write_fresh(
                &pairs(150 * seed as usize),
                &FreshOptions {
                    seed,
                    ..FreshOptions::default()
                },
            )
            .unwrap();
            let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
                live(&buf).into_iter().collect();
            for round in 0..60 {
                let ops = random_ops(&mut r);
                let ops = as_ops(&ops);
                let (mut a, mut b) = (LevelRng::new(round), LevelRng::new(round));
                let fast = append_transaction(&buf, &ops, KeyOrder::Raw, &mut a).unwrap();
                let copy =
                    plan_transaction(&buf, buf.clone(), &ops, KeyOrder::Raw, &mut b).unwrap();
                assert_eq!(fast, copy, "seed {seed} round {round}");
                for op in &ops {
                    match op {
                        Op::Set(k, v) => model.insert(k.to_vec(), v.to_vec()),
                        Op::Delete(k) => model.remove(*k),
                    };
                }
                if let Some(t) = fast {
                    buf = t.apply(&buf);
                }
                let db = TwoskipDb::open(&buf).unwrap();
                assert_eq!(db.verify(), vec![]);
                assert_eq!(live(&buf), model.clone().into_iter().collect::<Vec<_>>());
            }
        }
    }

    /// Every write of a plan, in order: dirty header, the records and head rewrites,
    /// committed header.
    fn plan_steps(t: &Transaction) -> Vec<(u64, Vec<u8>)> {
        let mut steps = vec![(0, t.dirty_header.to_vec())];
        steps.extend(t.writes.iter().cloned());
        steps.push((0, t.commit_header.to_vec()));
        steps
    }

    /// A crash after any prefix of the plan's writes — or, between the two middle
    /// fsyncs, after any subset of the record writes reaching the disk — leaves a file
    /// that reads (with Cyrus's recovery rules) as the old state until the committed
    /// header is written, and as the new state after.
    #[test]
    fn a_crash_at_any_write_leaves_the_old_or_the_new_state() {
        let mut r = TestRng(11);
        let mut buf = write_fresh(&pairs(120), &FreshOptions::default()).unwrap();
        let mut rng = LevelRng::new(5);
        for _ in 0..20 {
            let ops = random_ops(&mut r);
            let ops = as_ops(&ops);
            let Some(t) = append_transaction(&buf, &ops, KeyOrder::Raw, &mut rng).unwrap() else {
                continue;
            };
            let old = live(&buf);
            let new_buf = t.apply(&buf);
            let new = live(&new_buf);
            let steps = plan_steps(&t);
            let check = |applied: &[&(u64, Vec<u8>)], committed: bool| {
                let mut f = buf.clone();
                for (off, bytes) in applied {
                    put(&mut f, *off, bytes);
                }
                let db = TwoskipDb::open(&f).unwrap();
                assert_eq!(db.header().is_dirty(), !committed && !applied.is_empty());
                let seen: Vec<_> = db
                    .iter()
                    .map(|x| x.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(&seen, if committed { &new } else { &old });
                for (k, v) in if committed { &new } else { &old } {
                    assert_eq!(db.get(k).unwrap(), Some(&v[..]));
                }
            };
            for k in 0..=steps.len() {
                let applied: Vec<_> = steps[..k].iter().collect();
                check(&applied, k == steps.len());
            }
            // Unordered arrival of the middle group (no fsync orders them).
            let middle = &steps[1..steps.len() - 1];
            for _ in 0..16 {
                let mut applied = vec![&steps[0]];
                applied.extend(middle.iter().filter(|_| r.below(2) == 0));
                check(&applied, false);
            }
            buf = new_buf;
        }
    }

    #[test]
    fn transaction_noop_and_dirty_refusal() {
        let buf = write_fresh(&pairs(3), &FreshOptions::default()).unwrap();
        let mut rng = LevelRng::new(1);
        assert_eq!(
            append_transaction(&buf, &[Op::Delete(b"missing")], KeyOrder::Raw, &mut rng).unwrap(),
            None
        );
        let mut longer = buf.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(
            append_transaction(&longer, &[Op::Set(b"a", b"b")], KeyOrder::Raw, &mut rng),
            Err(DbError::NeedsRecovery { .. })
        ));
    }

    #[test]
    fn corruption_is_reported() {
        let p = pairs(50);
        let buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        // Header CRC.
        let mut b = buf.clone();
        b[OFFSET_GENERATION + 7] ^= 1;
        assert!(matches!(
            TwoskipDb::open(&b),
            Err(DbError::HeaderCrc { .. })
        ));
        // Bad magic, short file, version.
        assert!(matches!(
            TwoskipDb::open(&buf[..40]),
            Err(DbError::Truncated { .. })
        ));
        let mut b = buf.clone();
        b[5] = b'X';
        assert!(matches!(TwoskipDb::open(&b), Err(DbError::BadMagic { .. })));
        // A value byte: tail CRC, found by both iteration and verify.
        let mut b = buf.clone();
        let at = b.windows(8).position(|w| w == b"value 25").unwrap();
        b[at] = b'V';
        let db = TwoskipDb::open(&b).unwrap();
        assert!(db
            .iter()
            .any(|r| matches!(r, Err(DbError::RecordCrc { which: "tail", .. }))));
        let problems = db.verify();
        assert!(problems
            .iter()
            .any(|e| matches!(e, DbError::RecordCrc { offset, .. } if *offset < at as u64)));
        // Header count wrong.
        let h = Header {
            num_records: 49,
            ..Header::parse(&buf).unwrap()
        }
        .sealed();
        let mut b = buf.clone();
        b[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
        assert_eq!(
            TwoskipDb::open(&b).unwrap().verify(),
            vec![DbError::RecordCount {
                backend: BACKEND,
                stored: 49,
                counted: 50
            }]
        );
    }

    /// A level-0 pointer loop with valid CRCs: iteration must end with an error.
    #[test]
    fn pointer_loop_terminates() {
        let p = pairs(3);
        let buf = write_fresh(&p, &FreshOptions::default()).unwrap();
        let raw = parse_raw(&buf).unwrap();
        let recs: Vec<Record> = raw
            .records
            .iter()
            .filter_map(|r| match r {
                RawRecord::Record(r) if r.kind == RECORD => Some(r.clone()),
                _ => None,
            })
            .collect();
        // Make the last record point back at the first, with a valid head CRC.
        let last = recs[2].clone();
        let mut slots = last.slots().to_vec();
        slots[1] = recs[0].offset;
        let mut head = encode_head_fields(
            RECORD,
            last.level,
            last.key.len() as u64,
            last.value.len() as u64,
            false,
            false,
            &slots,
        );
        let crc = crc32(&head);
        head.extend_from_slice(&crc.to_be_bytes());
        let mut b = buf.clone();
        put(&mut b, last.offset, &head);
        let db = TwoskipDb::open(&b).unwrap();
        let items: Vec<_> = db.iter().collect();
        assert!(items.len() <= 4, "{items:?}");
        assert!(
            matches!(items.last(), Some(Err(DbError::OutOfOrder { .. }))),
            "{items:?}"
        );
        assert!(!db.verify().is_empty());
    }

    #[test]
    fn raw_round_trips_garbage_tail() {
        let mut buf = write_fresh(&pairs(5), &FreshOptions::default()).unwrap();
        buf.extend_from_slice(b"\x2b\x40junk");
        let raw = parse_raw(&buf).unwrap();
        assert_eq!(raw.trailing, b"\x2b\x40junk");
        assert_eq!(raw.to_bytes(), buf);
    }

    #[test]
    fn hostile_lengths_do_not_panic() {
        let buf = write_fresh(&pairs(2), &FreshOptions::default()).unwrap();
        for i in HEADER_SIZE..buf.len() {
            for v in [0x00, 0xFF, 0x1F, 0x80] {
                let mut b = buf.clone();
                b[i] = v;
                if let Ok(db) = TwoskipDb::open(&b) {
                    let _ = db.iter().count();
                    let _ = db.get(b"key00001");
                    let _ = db.verify();
                }
                let raw = parse_raw(&b).unwrap();
                assert_eq!(raw.to_bytes(), b);
            }
        }
    }
}
