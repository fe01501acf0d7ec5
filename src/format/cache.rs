//! `cyrus.cache`: a u32 generation number followed by cache entries, one per index record.
//!
//! Owns the entry framing (ten length-prefixed items, each padded with NULs to 4 bytes), the
//! entry CRC Cyrus stores in the record's `cache_crc`, and the check mbcheck runs on a record's
//! entry. It does not interpret the items (ENVELOPE text, SECTION tables, ...): that is the
//! MIME parser's business. No file I/O: readers take `&[u8]`, writers return `Vec<u8>`.
//!
//! Source: `message_write_xdrstring` / `cache_parserecord` in Cyrus 3.6.1 `imap/message.c`
//! and `imap/mailbox.c`.

use thiserror::Error;

use crate::format::crc::crc32;

/// Number of items in an entry (`NUM_CACHE_FIELDS`).
pub const NUM_CACHE_FIELDS: usize = 10;

pub const CACHE_ENVELOPE: usize = 0;
pub const CACHE_BODYSTRUCTURE: usize = 1;
pub const CACHE_BODY: usize = 2;
pub const CACHE_SECTION: usize = 3;
pub const CACHE_HEADERS: usize = 4;
pub const CACHE_FROM: usize = 5;
pub const CACHE_TO: usize = 6;
pub const CACHE_CC: usize = 7;
pub const CACHE_BCC: usize = 8;
pub const CACHE_SUBJECT: usize = 9;

/// Item names, index = item number.
pub const CACHE_ITEM_NAMES: [&str; NUM_CACHE_FIELDS] = [
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "SECTION",
    "HEADERS",
    "FROM",
    "TO",
    "CC",
    "BCC",
    "SUBJECT",
];

/// Offset of the generation number; entries start right after it.
pub const OFFSET_CACHE_GENERATION: usize = 0;
/// Size of the file header (the generation number).
pub const CACHE_HEADER_SIZE: usize = OFFSET_CACHE_GENERATION + 4;
/// The cache version Cyrus 3.6 writes (stored in each index record's `cache_version`).
pub const CACHE_VERSION_36: u16 = 11;

/// Why a cache entry could not be read, written or accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheError {
    #[error("cyrus.cache is {len} bytes, too short for the 4-byte generation number")]
    TooShort { len: usize },
    #[error("cache offset {offset} is outside the entries of a {len}-byte cyrus.cache")]
    OffsetOutOfRange { offset: u64, len: usize },
    #[error(
        "cache entry at offset {offset}: item {item} ({name}) at offset {item_offset} runs past \
         the end of cyrus.cache ({len} bytes)",
        name = CACHE_ITEM_NAMES[*item]
    )]
    Truncated {
        offset: u64,
        item: usize,
        item_offset: u64,
        len: usize,
    },
    #[error("cache entry at offset {offset}: CRC {computed:08x} does not match the record's cache_crc {expected:08x}")]
    CrcMismatch {
        offset: u64,
        expected: u32,
        computed: u32,
    },
    #[error("record has no cache entry (cache_offset 0)")]
    NoEntry,
    #[error("cache item {item} is {len} bytes, more than a u32 length can say")]
    ItemTooLong { item: usize, len: usize },
}

/// The generation number at the start of a cache file.
pub fn generation(buf: &[u8]) -> Result<u32, CacheError> {
    buf.get(OFFSET_CACHE_GENERATION..CACHE_HEADER_SIZE)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(CacheError::TooShort { len: buf.len() })
}

/// One cache entry, borrowed from the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry<'a> {
    /// File offset of the entry (the record's `cache_offset`).
    pub offset: u64,
    /// The ten items, without their length words and padding.
    pub items: [&'a [u8]; NUM_CACHE_FIELDS],
    /// The whole entry: length words, items, padding.
    pub raw: &'a [u8],
}

fn padded(len: usize) -> Option<usize> {
    len.checked_add(3).map(|n| n & !3)
}

impl<'a> CacheEntry<'a> {
    /// Parses the entry at `offset` of a whole cache file `buf`, checking every length
    /// against the end of the file. An offset inside the generation number is out of range.
    /// As in Cyrus (`cache_parserecord`), the last item's padding need not be present.
    pub fn parse(buf: &'a [u8], offset: u64) -> Result<CacheEntry<'a>, CacheError> {
        let tail = usize::try_from(offset)
            .ok()
            .filter(|&o| o >= CACHE_HEADER_SIZE)
            .and_then(|o| buf.get(o..))
            .filter(|t| !t.is_empty())
            .ok_or(CacheError::OffsetOutOfRange {
                offset,
                len: buf.len(),
            })?;
        Self::parse_tail(tail, offset, buf.len())
    }

    /// [`CacheEntry::parse`] given only the file's bytes from `offset` to its end (`tail`,
    /// `file_len` bytes in all, for the errors): how a reader that does not hold the whole
    /// file judges an entry that runs into the end of the file.
    pub fn parse_tail(
        tail: &'a [u8],
        offset: u64,
        file_len: usize,
    ) -> Result<CacheEntry<'a>, CacheError> {
        let mut items: [&[u8]; NUM_CACHE_FIELDS] = [&[]; NUM_CACHE_FIELDS];
        let mut p = 0usize;
        for (item, slot) in items.iter_mut().enumerate() {
            let truncated = CacheError::Truncated {
                offset,
                item,
                item_offset: offset.saturating_add(p as u64),
                len: file_len,
            };
            let len_bytes = tail.get(p..p.saturating_add(4)).ok_or(truncated.clone())?;
            let mut w = [0u8; 4];
            w.copy_from_slice(len_bytes);
            let len = usize::try_from(u32::from_be_bytes(w)).map_err(|_| truncated.clone())?;
            let data_start = p + 4;
            let data_end = data_start.checked_add(len).ok_or(truncated.clone())?;
            *slot = tail.get(data_start..data_end).ok_or(truncated.clone())?;
            p = data_start
                .checked_add(padded(len).ok_or(truncated.clone())?)
                .ok_or(truncated)?;
        }
        // The final padding may be missing at the very end of the file.
        let end = p.min(tail.len());
        Ok(CacheEntry {
            offset,
            items,
            raw: &tail[..end],
        })
    }

    /// Length of the entry in bytes (what Cyrus adds to the offset to reach the next entry).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true: an entry always holds ten length words.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The entry CRC as Cyrus stores it in `cache_crc`: CRC-32 of the whole entry.
    pub fn crc(&self) -> u32 {
        crc32(self.raw)
    }

    /// The entry, if its CRC is `expected` (a record's `cache_crc`).
    pub fn check_crc(self, expected: u32) -> Result<CacheEntry<'a>, CacheError> {
        let computed = self.crc();
        if computed != expected {
            return Err(CacheError::CrcMismatch {
                offset: self.offset,
                expected,
                computed,
            });
        }
        Ok(self)
    }

    /// Item `i` (see the `CACHE_*` constants), `None` past the tenth.
    pub fn item(&self, i: usize) -> Option<&'a [u8]> {
        self.items.get(i).copied()
    }
}

/// Serialises one entry from its ten items, as `message_write_xdrstring` does.
pub fn write_entry(items: &[&[u8]; NUM_CACHE_FIELDS]) -> Result<Vec<u8>, CacheError> {
    let mut total = 0usize;
    for (item, it) in items.iter().enumerate() {
        if u32::try_from(it.len()).is_err() {
            return Err(CacheError::ItemTooLong {
                item,
                len: it.len(),
            });
        }
        total = total
            .saturating_add(4)
            .saturating_add(padded(it.len()).unwrap_or(usize::MAX));
    }
    let mut out = Vec::with_capacity(total);
    for it in items {
        out.extend_from_slice(&(it.len() as u32).to_be_bytes());
        out.extend_from_slice(it);
        let pad = padded(it.len()).unwrap_or(it.len()) - it.len();
        out.extend_from_slice(&[0u8; 3][..pad]);
    }
    Ok(out)
}

/// mbcheck's test of a record's cache entry: `cache_offset` is nonzero and inside the file,
/// the entry parses, and its CRC equals `cache_crc`. Returns the entry when all holds.
///
/// A `cache_crc` of 0 is held to the same rule: Cyrus's read path
/// (`mailbox_cacherecord_internal`) lets 0 pass as an "old-style record" unchecked, but
/// reconstruct re-parses such records, and no 3.x writer leaves a 0 there.
pub fn check_record_entry(
    cache: &[u8],
    cache_offset: u64,
    cache_crc: u32,
) -> Result<CacheEntry<'_>, CacheError> {
    if cache_offset == 0 {
        return Err(CacheError::NoEntry);
    }
    CacheEntry::parse(cache, cache_offset)?.check_crc(cache_crc)
}

/// Every entry of a file in order from the first one, as a repack would have written them.
/// Stops at the first entry that does not parse (returning its error last). Unreferenced
/// ("leaked") entries are included; entries reachable only through records are not skipped.
pub fn entries(buf: &[u8]) -> impl Iterator<Item = Result<CacheEntry<'_>, CacheError>> {
    let mut next = Some(CACHE_HEADER_SIZE as u64);
    std::iter::from_fn(move || {
        let off = next?;
        if usize::try_from(off).map_or(true, |o| o >= buf.len()) {
            return None;
        }
        match CacheEntry::parse(buf, off) {
            Ok(e) => {
                next = Some(off + e.len() as u64);
                Some(Ok(e))
            }
            Err(err) => {
                next = None;
                Some(Err(err))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: [&[u8]; NUM_CACHE_FIELDS] = [
        b"(\"Mon, 1 Jan 2024\" \"hi\" NIL NIL NIL NIL NIL NIL NIL NIL)",
        b"(\"TEXT\" \"PLAIN\")",
        b"",
        b"\x00\x00\x00\x00",
        b"Message-ID: <a@b>\r\n",
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        b"\"hi\"",
    ];

    fn file_with(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut f = 7u32.to_be_bytes().to_vec();
        for e in entries {
            f.extend_from_slice(e);
        }
        f
    }

    #[test]
    fn write_then_parse_round_trips() {
        let e = write_entry(&ITEMS).unwrap();
        assert_eq!(e.len() % 4, 0);
        // item 2 is empty: a bare zero length word; item 5 "a" gets 3 NULs.
        let f = file_with(&[e.clone(), e.clone()]);
        assert_eq!(generation(&f).unwrap(), 7);
        let p = CacheEntry::parse(&f, 4).unwrap();
        assert_eq!(p.items, ITEMS);
        assert_eq!(p.len(), e.len());
        assert_eq!(p.raw, &e[..]);
        assert_eq!(p.crc(), crc32(&e));
        assert_eq!(write_entry(&p.items).unwrap(), e);
        let second = CacheEntry::parse(&f, 4 + e.len() as u64).unwrap();
        assert_eq!(second.item(CACHE_SUBJECT), Some(&b"\"hi\""[..]));
        let all: Vec<_> = entries(&f).collect();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(Result::is_ok));
    }

    #[test]
    fn padding_bytes_are_exact() {
        let mut items: [&[u8]; NUM_CACHE_FIELDS] = [b""; NUM_CACHE_FIELDS];
        items[0] = b"a";
        let e = write_entry(&items).unwrap();
        assert_eq!(&e[..8], &[0, 0, 0, 1, b'a', 0, 0, 0]);
        assert_eq!(e.len(), 8 + 9 * 4);
    }

    #[test]
    fn bad_offsets_and_lengths_are_errors_naming_the_offset() {
        let e = write_entry(&ITEMS).unwrap();
        let f = file_with(std::slice::from_ref(&e));
        assert_eq!(
            CacheEntry::parse(&f, 0).unwrap_err(),
            CacheError::OffsetOutOfRange {
                offset: 0,
                len: f.len()
            }
        );
        assert!(matches!(
            CacheEntry::parse(&f, f.len() as u64),
            Err(CacheError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            CacheEntry::parse(&f, u64::MAX),
            Err(CacheError::OffsetOutOfRange { .. })
        ));
        // A length that runs past the end of the file.
        let mut g = f.clone();
        g[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert_eq!(
            CacheEntry::parse(&g, 4).unwrap_err(),
            CacheError::Truncated {
                offset: 4,
                item: 0,
                item_offset: 4,
                len: g.len()
            }
        );
        // A file cut inside the last length word.
        let cut = &f[..f.len() - 6];
        assert!(matches!(
            CacheEntry::parse(cut, 4),
            Err(CacheError::Truncated { item: 9, .. })
        ));
        assert_eq!(
            generation(&f[..3]).unwrap_err(),
            CacheError::TooShort { len: 3 }
        );
    }

    #[test]
    fn last_item_padding_may_be_missing_at_eof() {
        let mut items = ITEMS;
        items[9] = b"x";
        let e = write_entry(&items).unwrap();
        let f = file_with(std::slice::from_ref(&e));
        let cut = &f[..f.len() - 3];
        let p = CacheEntry::parse(cut, 4).unwrap();
        assert_eq!(p.item(9), Some(&b"x"[..]));
        assert_eq!(p.len(), e.len() - 3);
    }

    #[test]
    fn record_check() {
        let e = write_entry(&ITEMS).unwrap();
        let f = file_with(std::slice::from_ref(&e));
        let crc = crc32(&e);
        assert!(check_record_entry(&f, 4, crc).is_ok());
        assert_eq!(
            check_record_entry(&f, 4, crc ^ 1).unwrap_err(),
            CacheError::CrcMismatch {
                offset: 4,
                expected: crc ^ 1,
                computed: crc
            }
        );
        assert_eq!(
            check_record_entry(&f, 0, crc).unwrap_err(),
            CacheError::NoEntry
        );
        assert!(matches!(
            check_record_entry(&f, 9999, crc),
            Err(CacheError::OffsetOutOfRange { offset: 9999, .. })
        ));
    }
}
