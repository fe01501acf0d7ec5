//! What the three cyrusdb key/value backends (twoskip, skiplist, flat) share:
//! backend detection by magic, the key orders Cyrus sorts by, the typed error every
//! backend reports, the write operations of a transaction, and the deterministic level
//! generator the skip-list writers use.
//!
//! Which order a database uses (doc §1.2) is decided by who opened it, not stored in the
//! file, so readers take it as a parameter:
//! - [`KeyOrder::Raw`]: twoskip's default; 3.6 `mailboxes.db` and the quota db.
//! - [`KeyOrder::Signed`]: skiplist's default (`compare_signed` in `lib/cyrusdb_skiplist.c`).
//! - [`KeyOrder::Mbox`]: flat always (over the *escaped* key), and twoskip/skiplist opened
//!   with `CYRUSDB_MBOXSORT` (2.4–3.4 `mailboxes.db` and quota db with
//!   `improved_mboxlist_sort: yes`; in 3.6 only `cyr_dbtool -M`).

use std::cmp::Ordering;

use thiserror::Error;

/// A cyrusdb backend whose files cyrkit can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Twoskip,
    Skiplist,
    Flat,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Twoskip => "twoskip",
            Backend::Skiplist => "skiplist",
            Backend::Flat => "flat",
        }
    }

    /// The order Cyrus uses for this backend unless the db is opened MBOXSORT.
    pub fn default_order(self) -> KeyOrder {
        match self {
            Backend::Twoskip => KeyOrder::Raw,
            Backend::Skiplist => KeyOrder::Signed,
            Backend::Flat => KeyOrder::Mbox,
        }
    }
}

/// Detect twoskip or skiplist by their 20-byte magic. Flat files have no magic (any
/// text is a flat file), so `None` means "not twoskip/skiplist", and the caller decides
/// from the configured backend, as Cyrus does.
pub fn detect(buf: &[u8]) -> Option<Backend> {
    if buf.starts_with(&super::twoskip::MAGIC) {
        Some(Backend::Twoskip)
    } else if buf.starts_with(&super::skiplist::MAGIC) {
        Some(Backend::Skiplist)
    } else {
        None
    }
}

/// A key order (comparator) of Cyrus's cyrusdb layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Unsigned `memcmp`, shorter key first on a common prefix (`bsearch_ncompare_raw`).
    Raw,
    /// Bytes compared as C `signed char`, so 0x80..0xFF sort before 0x00..0x7F
    /// (`compare_signed` in `lib/cyrusdb_skiplist.c`).
    Signed,
    /// Bytes mapped through `convert_to_compare[]` (`lib/bsearch.c`), then unsigned,
    /// shorter first: `.` sorts before every printable character.
    Mbox,
}

/// `convert_to_compare[]` from `lib/bsearch.c`: identity except 0x01..0x08 → 0x03..0x0A,
/// TAB and LF → 0x01, `.` → 0x02.
pub const fn mbox_weight(b: u8) -> u8 {
    match b {
        0x01..=0x08 => b + 2,
        b'\t' | b'\n' => 0x01,
        b'.' => 0x02,
        _ => b,
    }
}

impl KeyOrder {
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        let by_byte = match self {
            KeyOrder::Raw => return a.cmp(b),
            KeyOrder::Signed => a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as i8).cmp(&(*y as i8)))
                .find(|o| o.is_ne()),
            KeyOrder::Mbox => a
                .iter()
                .zip(b)
                .map(|(x, y)| mbox_weight(*x).cmp(&mbox_weight(*y)))
                .find(|o| o.is_ne()),
        };
        by_byte.unwrap_or_else(|| a.len().cmp(&b.len()))
    }

    /// Whether `pairs` is strictly ascending under this order; returns the index of
    /// the first key that is not greater than its predecessor.
    pub fn first_unsorted<K: AsRef<[u8]>, V>(self, pairs: &[(K, V)]) -> Option<usize> {
        pairs
            .windows(2)
            .position(|w| self.compare(w[0].0.as_ref(), w[1].0.as_ref()) != Ordering::Less)
            .map(|i| i + 1)
    }
}

/// One change inside a write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Create or overwrite `key`.
    Set(&'a [u8], &'a [u8]),
    /// Delete `key`; deleting a missing key is a no-op (Cyrus's `force` delete).
    Delete(&'a [u8]),
}

/// Deterministic replacement for the `rand()` Cyrus uses to pick node levels
/// (`randlvl`: start at 1, add one while a fair coin says so, stop at the maximum).
/// Seeded, so a writer's output is reproducible.
#[derive(Debug, Clone)]
pub struct LevelRng {
    state: u64,
}

impl LevelRng {
    pub fn new(seed: u64) -> Self {
        LevelRng { state: seed }
    }

    /// splitmix64: small, well distributed, and good enough for coin flips.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A level in `1..=max` with P(level > k) = 2^-k, like Cyrus's `randlvl(1, max)`.
    pub fn level(&mut self, max: u8) -> u8 {
        let heads = self.next_u64().trailing_ones();
        let level = 1u32.saturating_add(heads);
        level.min(u32::from(max.max(1))) as u8
    }
}

/// Everything that can be wrong with a cyrusdb file. Offsets are absolute byte offsets
/// in the file; [`DbError::offset`] gives the one to report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DbError {
    #[error("{backend}: file is {len} bytes, too short for the {need}-byte {what} at offset {offset:#x}")]
    Truncated {
        backend: &'static str,
        what: &'static str,
        offset: u64,
        need: u64,
        len: u64,
    },
    #[error("{backend}: bad magic at offset 0; this is not a {backend} file")]
    BadMagic { backend: &'static str },
    #[error("{backend}: unsupported {field} {got} at offset {offset:#x} (expected {expected})")]
    BadHeaderField {
        backend: &'static str,
        field: &'static str,
        offset: u64,
        expected: &'static str,
        got: u64,
    },
    #[error("{backend}: header CRC mismatch at offset {offset:#x}: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc {
        backend: &'static str,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("{backend}: record at offset {offset:#x}: {which} CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    RecordCrc {
        backend: &'static str,
        offset: u64,
        which: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{backend}: record at offset {offset:#x}: {problem}")]
    BadRecord {
        backend: &'static str,
        offset: u64,
        problem: &'static str,
    },
    #[error("{backend}: record at offset {offset:#x}: unknown record type {kind:#x}")]
    BadRecordType {
        backend: &'static str,
        offset: u64,
        kind: u32,
    },
    #[error("{backend}: record at offset {offset:#x}: level-{level} pointer {target:#x} is outside the valid range (end {end:#x})")]
    BadPointer {
        backend: &'static str,
        offset: u64,
        level: u32,
        target: u64,
        end: u64,
    },
    #[error("{backend}: walk of the level-{level} list does not terminate (loop reached at offset {offset:#x})")]
    Loop {
        backend: &'static str,
        offset: u64,
        level: u32,
    },
    #[error("{backend}: key at offset {offset:#x} does not sort after the key before it; the file is out of order")]
    OutOfOrder { backend: &'static str, offset: u64 },
    #[error("{backend}: level-{level} list is broken at offset {offset:#x}: expected the next node at {expected:#x}, found {found:#x}")]
    BrokenLink {
        backend: &'static str,
        offset: u64,
        level: u32,
        expected: u64,
        found: u64,
    },
    #[error("{backend}: header says {stored} records but {counted} are live")]
    RecordCount {
        backend: &'static str,
        stored: u64,
        counted: u64,
    },
    #[error("{backend}: bytes from offset {offset:#x} to {end:#x} are an uncommitted transaction; Cyrus recovery will discard them")]
    Uncommitted {
        backend: &'static str,
        offset: u64,
        end: u64,
    },
    #[error("{backend}: DIRTY flag set at offset {offset:#x}: a writer died mid-transaction; Cyrus recovery will run on next open")]
    Dirty { backend: &'static str, offset: u64 },
    #[error("{backend}: database needs recovery before it can be written: {reason}")]
    NeedsRecovery {
        backend: &'static str,
        reason: &'static str,
    },
    #[error("{backend}: input key #{index} is not strictly greater than the one before it under the {order:?} order")]
    UnsortedInput {
        backend: &'static str,
        index: usize,
        order: KeyOrder,
    },
    #[error("{backend}: input key #{index} is empty; cyrusdb keys must not be empty")]
    EmptyKey { backend: &'static str, index: usize },
    #[error("{backend}: {what} at offset {offset:#x} does not fit this format")]
    TooLarge {
        backend: &'static str,
        what: &'static str,
        offset: u64,
    },
}

impl DbError {
    /// The byte offset the problem was found at (0 for whole-file facts).
    pub fn offset(&self) -> u64 {
        match self {
            DbError::Truncated { offset, .. }
            | DbError::BadHeaderField { offset, .. }
            | DbError::HeaderCrc { offset, .. }
            | DbError::RecordCrc { offset, .. }
            | DbError::BadRecord { offset, .. }
            | DbError::BadRecordType { offset, .. }
            | DbError::BadPointer { offset, .. }
            | DbError::Loop { offset, .. }
            | DbError::OutOfOrder { offset, .. }
            | DbError::BrokenLink { offset, .. }
            | DbError::Uncommitted { offset, .. }
            | DbError::Dirty { offset, .. }
            | DbError::TooLarge { offset, .. } => *offset,
            DbError::BadMagic { .. }
            | DbError::RecordCount { .. }
            | DbError::NeedsRecovery { .. }
            | DbError::UnsortedInput { .. }
            | DbError::EmptyKey { .. } => 0,
        }
    }
}

/// Big-endian readers that return `None` instead of panicking past the end.
pub(crate) fn be_u16(buf: &[u8], off: u64) -> Option<u16> {
    let s = slice(buf, off, 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub(crate) fn be_u32(buf: &[u8], off: u64) -> Option<u32> {
    let s = slice(buf, off, 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn be_u64(buf: &[u8], off: u64) -> Option<u64> {
    let s = slice(buf, off, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// `buf[off..off+len]`, or `None` if any part is outside `buf`.
pub(crate) fn slice(buf: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    buf.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_order_is_unsigned_shorter_first() {
        assert_eq!(KeyOrder::Raw.compare(b"a\xe9", b"ab"), Ordering::Greater);
        assert_eq!(KeyOrder::Raw.compare(b"ab", b"abc"), Ordering::Less);
        assert_eq!(KeyOrder::Raw.compare(b"ab", b"ab"), Ordering::Equal);
    }

    #[test]
    fn signed_order_puts_high_bytes_first() {
        // Doc §1.2 [verified]: `a\xe9` sorts before `ab` in a skiplist file.
        assert_eq!(KeyOrder::Signed.compare(b"a\xe9", b"ab"), Ordering::Less);
        assert_eq!(KeyOrder::Signed.compare(b"\xff", b"\x00"), Ordering::Less);
        assert_eq!(KeyOrder::Signed.compare(b"a", b"a\x80"), Ordering::Less);
    }

    #[test]
    fn mbox_order_puts_dot_before_printables() {
        assert_eq!(
            KeyOrder::Mbox.compare(b"user.a.x", b"user.a-b"),
            Ordering::Less
        );
        assert_eq!(
            KeyOrder::Raw.compare(b"user.a.x", b"user.a-b"),
            Ordering::Greater
        );
        assert_eq!(KeyOrder::Mbox.compare(b"a\t", b"a\n"), Ordering::Equal);
        assert_eq!(KeyOrder::Mbox.compare(b"\x01", b"\x09"), Ordering::Greater);
    }

    #[test]
    fn first_unsorted_finds_duplicates_and_inversions() {
        let ok: [(&[u8], ()); 3] = [(b"a", ()), (b"b", ()), (b"c", ())];
        assert_eq!(KeyOrder::Raw.first_unsorted(&ok), None);
        let dup: [(&[u8], ()); 3] = [(b"a", ()), (b"b", ()), (b"b", ())];
        assert_eq!(KeyOrder::Raw.first_unsorted(&dup), Some(2));
    }

    #[test]
    fn level_rng_is_deterministic_and_bounded() {
        let mut a = LevelRng::new(7);
        let mut b = LevelRng::new(7);
        let la: Vec<u8> = (0..1000).map(|_| a.level(31)).collect();
        let lb: Vec<u8> = (0..1000).map(|_| b.level(31)).collect();
        assert_eq!(la, lb);
        assert!(la.iter().all(|l| (1..=31).contains(l)));
        // Roughly half the nodes are level 1 and some are higher.
        let ones = la.iter().filter(|l| **l == 1).count();
        assert!((400..600).contains(&ones), "{ones}");
        assert!(la.iter().any(|l| *l >= 4));
        assert!((0..100).all(|_| a.level(3) <= 3));
    }

    #[test]
    fn slice_helpers_never_panic() {
        assert_eq!(be_u32(b"\x00\x00\x01", 0), None);
        assert_eq!(be_u32(b"\x00\x00\x00\x01", 0), Some(1));
        assert_eq!(slice(b"abc", u64::MAX, 2), None);
        assert_eq!(be_u16(b"\x01\x02", 0), Some(0x0102));
        assert_eq!(be_u64(&[0xFF; 8], 0), Some(u64::MAX));
    }
}
