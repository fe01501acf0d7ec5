//! `cyrus.index`: the per-mailbox index header and fixed-size message records.
//!
//! Owns the byte layouts of index minor versions 12 to 20 (reading all of them, writing all
//! of them; Cyrus 3.6 itself reads and writes up to 17, which is the default here), the header
//! and record CRCs, the values Cyrus derives from the records (counts, quota, sync CRCs), the
//! system/internal flag and option bits, the message GUID helpers, and version conversion as
//! `reconstruct -V` performs it. No file I/O: readers take `&[u8]`, writers return `Vec<u8>`.
//!
//! # Conventions
//! * [`IndexHeader`] and [`IndexRecord`] are supersets: every field of any version. Parsing a
//!   version leaves the fields it does not have at zero; writing a version ignores them.
//! * **Times hold the raw on-disk value**: seconds since the epoch for versions ≤ 19,
//!   nanoseconds for version 20. [`convert_header`]/[`convert_record`] rescale when crossing
//!   19 ↔ 20; [`time_secs`] turns a raw value into seconds.
//! * Record numbers (`record(i)`, problems) are **0-based** indexes into the record array;
//!   Cyrus's `recno` is `i + 1`.
//! * Writers compute the CRCs, and take `minor_version`, `start_offset` and `record_size` from
//!   the version they are asked to write, never from the struct.
//! * Offsets are named after `imap/mailbox.h` of Cyrus 3.6 (`OFFSET_*`, valid for v12–v18);
//!   v19 and v20 moved fields and get `V19_OFFSET_*` / `V20_OFFSET_*`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::format::crc::crc32;

// ---------------------------------------------------------------------------------------------
// Versions and sizes

/// Oldest minor version cyrkit reads or writes (Cyrus 2.4).
pub const MIN_VERSION: u32 = 12;
/// Newest minor version cyrkit reads or writes (Cyrus master / 3.13).
pub const MAX_VERSION: u32 = 20;
/// The version Cyrus 3.4–3.8 writes, and cyrkit's default.
pub const DEFAULT_VERSION: u32 = 17;
/// Newest version Cyrus 3.6 itself can open; 18–20 are written for completeness only.
pub const MAX_CYRUS36_VERSION: u32 = 17;

/// Largest cache offset an index record can hold (32 low bits + 16 bits in the version word).
pub const MAX_CACHE_OFFSET: u64 = (1 << 48) - 1;
/// Number of user flags a record can carry (`MAX_USER_FLAGS`).
pub const MAX_USER_FLAGS: usize = 128;

// ---------------------------------------------------------------------------------------------
// Header offsets, v12–v18 (Cyrus 3.6 `imap/mailbox.h`)

pub const OFFSET_GENERATION_NO: usize = 0;
pub const OFFSET_FORMAT: usize = OFFSET_GENERATION_NO + 4;
pub const OFFSET_MINOR_VERSION: usize = OFFSET_FORMAT + 4;
pub const OFFSET_START_OFFSET: usize = OFFSET_MINOR_VERSION + 4;
pub const OFFSET_RECORD_SIZE: usize = OFFSET_START_OFFSET + 4;
pub const OFFSET_NUM_RECORDS: usize = OFFSET_RECORD_SIZE + 4;
pub const OFFSET_LAST_APPENDDATE: usize = OFFSET_NUM_RECORDS + 4;
pub const OFFSET_LAST_UID: usize = OFFSET_LAST_APPENDDATE + 4;
pub const OFFSET_QUOTA_MAILBOX_USED: usize = OFFSET_LAST_UID + 4;
pub const OFFSET_POP3_LAST_LOGIN: usize = OFFSET_QUOTA_MAILBOX_USED + 8;
pub const OFFSET_UIDVALIDITY: usize = OFFSET_POP3_LAST_LOGIN + 4;
pub const OFFSET_DELETED: usize = OFFSET_UIDVALIDITY + 4;
pub const OFFSET_ANSWERED: usize = OFFSET_DELETED + 4;
pub const OFFSET_FLAGGED: usize = OFFSET_ANSWERED + 4;
pub const OFFSET_MAILBOX_OPTIONS: usize = OFFSET_FLAGGED + 4;
pub const OFFSET_LEAKED_CACHE: usize = OFFSET_MAILBOX_OPTIONS + 4;
pub const OFFSET_HIGHESTMODSEQ: usize = OFFSET_LEAKED_CACHE + 4;
pub const OFFSET_DELETEDMODSEQ: usize = OFFSET_HIGHESTMODSEQ + 8;
pub const OFFSET_EXISTS: usize = OFFSET_DELETEDMODSEQ + 8;
pub const OFFSET_FIRST_EXPUNGED: usize = OFFSET_EXISTS + 4;
pub const OFFSET_LAST_REPACK_TIME: usize = OFFSET_FIRST_EXPUNGED + 4;
pub const OFFSET_HEADER_FILE_CRC: usize = OFFSET_LAST_REPACK_TIME + 4;
pub const OFFSET_SYNCCRCS_BASIC: usize = OFFSET_HEADER_FILE_CRC + 4;
pub const OFFSET_RECENTUID: usize = OFFSET_SYNCCRCS_BASIC + 4;
pub const OFFSET_RECENTTIME: usize = OFFSET_RECENTUID + 4;
/// v13+; zero bytes in v12.
pub const OFFSET_POP3_SHOW_AFTER: usize = OFFSET_RECENTTIME + 4;
/// v13+, 32 bits on disk.
pub const OFFSET_QUOTA_ANNOT_USED: usize = OFFSET_POP3_SHOW_AFTER + 4;
/// v13+.
pub const OFFSET_SYNCCRCS_ANNOT: usize = OFFSET_QUOTA_ANNOT_USED + 4;
/// v14+ (in v12/v13 the header CRC sits here).
pub const OFFSET_UNSEEN: usize = OFFSET_SYNCCRCS_ANNOT + 4;
/// v16+ (zero in v14/v15).
pub const OFFSET_MAILBOX_CREATEDMODSEQ: usize = OFFSET_UNSEEN + 4;
/// v17+.
pub const OFFSET_CHANGES_EPOCH: usize = OFFSET_MAILBOX_CREATEDMODSEQ + 8;
/// v18 only (spare in v14–v17).
pub const OFFSET_QUOTA_DELETED_USED: usize = OFFSET_CHANGES_EPOCH + 4;
/// v18 only.
pub const OFFSET_QUOTA_EXPUNGED_USED: usize = OFFSET_QUOTA_DELETED_USED + 8;
/// Header CRC of v14–v19.
pub const OFFSET_HEADER_CRC: usize = OFFSET_QUOTA_EXPUNGED_USED + 8;
/// Header CRC of v12/v13 (the header was 128 bytes).
pub const V12_OFFSET_HEADER_CRC: usize = OFFSET_UNSEEN;

pub const V12_HEADER_SIZE: usize = V12_OFFSET_HEADER_CRC + 4;
pub const V14_HEADER_SIZE: usize = OFFSET_HEADER_CRC + 4;

// Header offsets, v19 (3.10, 3.12): `exists` moved up to 60, the rest shifted.
pub const V19_OFFSET_EXISTS: usize = OFFSET_FLAGGED + 4;
pub const V19_OFFSET_MAILBOX_OPTIONS: usize = V19_OFFSET_EXISTS + 4;
pub const V19_OFFSET_LEAKED_CACHE: usize = V19_OFFSET_MAILBOX_OPTIONS + 4;
pub const V19_OFFSET_HIGHESTMODSEQ: usize = V19_OFFSET_LEAKED_CACHE + 4;
pub const V19_OFFSET_DELETEDMODSEQ: usize = V19_OFFSET_HIGHESTMODSEQ + 8;
pub const V19_OFFSET_FIRST_EXPUNGED: usize = V19_OFFSET_DELETEDMODSEQ + 8;
pub const V19_OFFSET_LAST_REPACK_TIME: usize = V19_OFFSET_FIRST_EXPUNGED + 4;
pub const V19_OFFSET_HEADER_FILE_CRC: usize = V19_OFFSET_LAST_REPACK_TIME + 4;
pub const V19_OFFSET_SYNCCRCS_BASIC: usize = V19_OFFSET_HEADER_FILE_CRC + 4;
pub const V19_OFFSET_RECENTUID: usize = V19_OFFSET_SYNCCRCS_BASIC + 4;
pub const V19_OFFSET_RECENTTIME: usize = V19_OFFSET_RECENTUID + 4;
pub const V19_OFFSET_POP3_SHOW_AFTER: usize = V19_OFFSET_RECENTTIME + 4;
pub const V19_OFFSET_QUOTA_ANNOT_USED: usize = V19_OFFSET_POP3_SHOW_AFTER + 4;
pub const V19_OFFSET_SYNCCRCS_ANNOT: usize = V19_OFFSET_QUOTA_ANNOT_USED + 4;
pub const V19_OFFSET_UNSEEN: usize = V19_OFFSET_SYNCCRCS_ANNOT + 4;
pub const V19_OFFSET_MAILBOX_CREATEDMODSEQ: usize = V19_OFFSET_UNSEEN + 4;
pub const V19_OFFSET_QUOTA_DELETED_USED: usize = V19_OFFSET_MAILBOX_CREATEDMODSEQ + 8;
pub const V19_OFFSET_QUOTA_EXPUNGED_USED: usize = V19_OFFSET_QUOTA_DELETED_USED + 8;
pub const V19_OFFSET_CHANGES_EPOCH: usize = V19_OFFSET_QUOTA_EXPUNGED_USED + 8;
pub const V19_OFFSET_HEADER_CRC: usize = V19_OFFSET_CHANGES_EPOCH + 4;
pub const V19_HEADER_SIZE: usize = V19_OFFSET_HEADER_CRC + 4;

// Header offsets, v20 (master): 64-bit nanosecond times.
pub const V20_OFFSET_LAST_APPENDDATE: usize = OFFSET_NUM_RECORDS + 4;
pub const V20_OFFSET_QUOTA_MAILBOX_USED: usize = V20_OFFSET_LAST_APPENDDATE + 8;
pub const V20_OFFSET_POP3_LAST_LOGIN: usize = V20_OFFSET_QUOTA_MAILBOX_USED + 8;
pub const V20_OFFSET_DELETED: usize = V20_OFFSET_POP3_LAST_LOGIN + 8;
pub const V20_OFFSET_ANSWERED: usize = V20_OFFSET_DELETED + 4;
pub const V20_OFFSET_FLAGGED: usize = V20_OFFSET_ANSWERED + 4;
pub const V20_OFFSET_EXISTS: usize = V20_OFFSET_FLAGGED + 4;
pub const V20_OFFSET_MAILBOX_OPTIONS: usize = V20_OFFSET_EXISTS + 4;
pub const V20_OFFSET_LEAKED_CACHE: usize = V20_OFFSET_MAILBOX_OPTIONS + 4;
pub const V20_OFFSET_HIGHESTMODSEQ: usize = V20_OFFSET_LEAKED_CACHE + 4;
pub const V20_OFFSET_DELETEDMODSEQ: usize = V20_OFFSET_HIGHESTMODSEQ + 8;
pub const V20_OFFSET_LAST_UID: usize = V20_OFFSET_DELETEDMODSEQ + 8;
pub const V20_OFFSET_UIDVALIDITY: usize = V20_OFFSET_LAST_UID + 4;
pub const V20_OFFSET_HEADER_FILE_CRC: usize = V20_OFFSET_UIDVALIDITY + 4;
pub const V20_OFFSET_SYNCCRCS_BASIC: usize = V20_OFFSET_HEADER_FILE_CRC + 4;
pub const V20_OFFSET_RECENTTIME: usize = V20_OFFSET_SYNCCRCS_BASIC + 4;
pub const V20_OFFSET_POP3_SHOW_AFTER: usize = V20_OFFSET_RECENTTIME + 8;
pub const V20_OFFSET_SYNCCRCS_ANNOT: usize = V20_OFFSET_POP3_SHOW_AFTER + 8;
pub const V20_OFFSET_UNSEEN: usize = V20_OFFSET_SYNCCRCS_ANNOT + 4;
pub const V20_OFFSET_MAILBOX_CREATEDMODSEQ: usize = V20_OFFSET_UNSEEN + 4;
pub const V20_OFFSET_QUOTA_DELETED_USED: usize = V20_OFFSET_MAILBOX_CREATEDMODSEQ + 8;
pub const V20_OFFSET_QUOTA_EXPUNGED_USED: usize = V20_OFFSET_QUOTA_DELETED_USED + 8;
pub const V20_OFFSET_QUOTA_ANNOT_USED: usize = V20_OFFSET_QUOTA_EXPUNGED_USED + 8;
pub const V20_OFFSET_CHANGES_EPOCH: usize = V20_OFFSET_QUOTA_ANNOT_USED + 8;
pub const V20_OFFSET_FIRST_EXPUNGED: usize = V20_OFFSET_CHANGES_EPOCH + 8;
pub const V20_OFFSET_LAST_REPACK_TIME: usize = V20_OFFSET_FIRST_EXPUNGED + 8;
pub const V20_OFFSET_RECENTUID: usize = V20_OFFSET_LAST_REPACK_TIME + 8;
pub const V20_OFFSET_HEADER_CRC: usize = V20_OFFSET_RECENTUID + 4;
pub const V20_HEADER_SIZE: usize = V20_OFFSET_HEADER_CRC + 4;

// ---------------------------------------------------------------------------------------------
// Record offsets, v12–v19 (Cyrus 3.6 `imap/mailbox.h`)

pub const OFFSET_UID: usize = 0;
pub const OFFSET_INTERNALDATE: usize = OFFSET_UID + 4;
pub const OFFSET_SENTDATE: usize = OFFSET_INTERNALDATE + 4;
pub const OFFSET_SIZE: usize = OFFSET_SENTDATE + 4;
pub const OFFSET_HEADER_SIZE: usize = OFFSET_SIZE + 4;
pub const OFFSET_GMTIME: usize = OFFSET_HEADER_SIZE + 4;
/// Low 32 bits of the cache offset.
pub const OFFSET_CACHE_OFFSET: usize = OFFSET_GMTIME + 4;
pub const OFFSET_LAST_UPDATED: usize = OFFSET_CACHE_OFFSET + 4;
/// System flags (low 16 bits) and internal flags (high 16 bits) in one word.
pub const OFFSET_SYSTEM_FLAGS: usize = OFFSET_LAST_UPDATED + 4;
pub const OFFSET_USER_FLAGS: usize = OFFSET_SYSTEM_FLAGS + 4;
/// v15+; before v15 the same word held the legacy `content_lines`.
pub const OFFSET_SAVEDATE: usize = OFFSET_USER_FLAGS + 16;
/// v12–v14 name of [`OFFSET_SAVEDATE`].
pub const OFFSET_CONTENT_LINES: usize = OFFSET_SAVEDATE;
/// Cache version (low 16 bits) and cache offset bits 32–47 (high 16 bits).
pub const OFFSET_CACHE_VERSION: usize = OFFSET_SAVEDATE + 4;
pub const OFFSET_MESSAGE_GUID: usize = OFFSET_CACHE_VERSION + 4;
pub const OFFSET_MODSEQ: usize = OFFSET_MESSAGE_GUID + 20;
/// Conversation id, v13+.
pub const OFFSET_THRID: usize = OFFSET_MODSEQ + 8;
/// v16+.
pub const OFFSET_CREATEDMODSEQ: usize = OFFSET_THRID + 8;
pub const OFFSET_CACHE_CRC: usize = OFFSET_CREATEDMODSEQ + 8;
pub const OFFSET_RECORD_CRC: usize = OFFSET_CACHE_CRC + 4;
pub const V16_RECORD_SIZE: usize = OFFSET_RECORD_CRC + 4;

// v12: no thrid, CRCs right after the modseq.
pub const V12_OFFSET_CACHE_CRC: usize = OFFSET_MODSEQ + 8;
pub const V12_OFFSET_RECORD_CRC: usize = V12_OFFSET_CACHE_CRC + 4;
pub const V12_RECORD_SIZE: usize = V12_OFFSET_RECORD_CRC + 4;
// v13–v15: thrid, no createdmodseq.
pub const V13_OFFSET_CACHE_CRC: usize = OFFSET_THRID + 8;
pub const V13_OFFSET_RECORD_CRC: usize = V13_OFFSET_CACHE_CRC + 4;
pub const V13_RECORD_SIZE: usize = V13_OFFSET_RECORD_CRC + 4;

// Record offsets, v20 (master): 64-bit nanosecond times and size.
pub const V20_OFFSET_UID: usize = 0;
pub const V20_OFFSET_CACHE_OFFSET: usize = V20_OFFSET_UID + 4;
pub const V20_OFFSET_INTERNALDATE: usize = V20_OFFSET_CACHE_OFFSET + 4;
pub const V20_OFFSET_SENTDATE: usize = V20_OFFSET_INTERNALDATE + 8;
pub const V20_OFFSET_SIZE: usize = V20_OFFSET_SENTDATE + 8;
pub const V20_OFFSET_HEADER_SIZE: usize = V20_OFFSET_SIZE + 8;
pub const V20_OFFSET_SYSTEM_FLAGS: usize = V20_OFFSET_HEADER_SIZE + 4;
pub const V20_OFFSET_USER_FLAGS: usize = V20_OFFSET_SYSTEM_FLAGS + 4;
pub const V20_OFFSET_CACHE_VERSION: usize = V20_OFFSET_USER_FLAGS + 16;
pub const V20_OFFSET_MESSAGE_GUID: usize = V20_OFFSET_CACHE_VERSION + 4;
pub const V20_OFFSET_MODSEQ: usize = V20_OFFSET_MESSAGE_GUID + 20;
pub const V20_OFFSET_THRID: usize = V20_OFFSET_MODSEQ + 8;
pub const V20_OFFSET_CREATEDMODSEQ: usize = V20_OFFSET_THRID + 8;
pub const V20_OFFSET_GMTIME: usize = V20_OFFSET_CREATEDMODSEQ + 8;
pub const V20_OFFSET_LAST_UPDATED: usize = V20_OFFSET_GMTIME + 8;
pub const V20_OFFSET_SAVEDATE: usize = V20_OFFSET_LAST_UPDATED + 8;
pub const V20_OFFSET_BASECID: usize = V20_OFFSET_SAVEDATE + 8;
pub const V20_OFFSET_CACHE_CRC: usize = V20_OFFSET_BASECID + 8;
pub const V20_OFFSET_RECORD_CRC: usize = V20_OFFSET_CACHE_CRC + 4;
pub const V20_RECORD_SIZE: usize = V20_OFFSET_RECORD_CRC + 4;

// The sizes `imap/mailbox.c` `mailbox_buf_to_index_header` / `mailbox_repack_setup` expect.
const _: () = assert!(V12_HEADER_SIZE == 128);
const _: () = assert!(V14_HEADER_SIZE == 160);
const _: () = assert!(V19_HEADER_SIZE == 160);
const _: () = assert!(V20_HEADER_SIZE == 192);
/// The largest header of any version: what a reader takes from the start of a file to
/// open an index of unknown version.
pub const MAX_HEADER_SIZE: usize = V20_HEADER_SIZE;
const _: () = assert!(MAX_HEADER_SIZE >= V14_HEADER_SIZE && MAX_HEADER_SIZE >= V19_HEADER_SIZE);
const _: () = assert!(V12_RECORD_SIZE == 96);
const _: () = assert!(V13_RECORD_SIZE == 104);
const _: () = assert!(V16_RECORD_SIZE == 112);
const _: () = assert!(V20_RECORD_SIZE == 144);
const _: () = assert!(OFFSET_MAILBOX_OPTIONS == 60 && OFFSET_DELETEDMODSEQ == 76);
const _: () = assert!(V20_OFFSET_MESSAGE_GUID == OFFSET_MESSAGE_GUID);

/// Header size (= `start_offset`) of a minor version, `None` if cyrkit does not handle it.
pub fn header_size(version: u32) -> Option<usize> {
    match version {
        12 | 13 => Some(V12_HEADER_SIZE),
        14..=18 => Some(V14_HEADER_SIZE),
        19 => Some(V19_HEADER_SIZE),
        20 => Some(V20_HEADER_SIZE),
        _ => None,
    }
}

/// Record size of a minor version, `None` if cyrkit does not handle it.
pub fn record_size(version: u32) -> Option<usize> {
    match version {
        12 => Some(V12_RECORD_SIZE),
        13..=15 => Some(V13_RECORD_SIZE),
        16..=19 => Some(V16_RECORD_SIZE),
        20 => Some(V20_RECORD_SIZE),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Flags and options (`imap/mailbox.h`)

pub const FLAG_ANSWERED: u32 = 1 << 0;
pub const FLAG_FLAGGED: u32 = 1 << 1;
pub const FLAG_DELETED: u32 = 1 << 2;
pub const FLAG_DRAFT: u32 = 1 << 3;
pub const FLAG_SEEN: u32 = 1 << 4;
/// Union of the system flags (`FLAGS_SYSTEM`).
pub const FLAGS_SYSTEM: u32 = FLAG_ANSWERED | FLAG_FLAGGED | FLAG_DELETED | FLAG_DRAFT | FLAG_SEEN;

pub const FLAG_INTERNAL_SNOOZED: u32 = 1 << 26;
pub const FLAG_INTERNAL_SPLITCONVERSATION: u32 = 1 << 27;
pub const FLAG_INTERNAL_NEEDS_CLEANUP: u32 = 1 << 28;
pub const FLAG_INTERNAL_ARCHIVED: u32 = 1 << 29;
pub const FLAG_INTERNAL_UNLINKED: u32 = 1 << 30;
pub const FLAG_INTERNAL_EXPUNGED: u32 = 1 << 31;
/// The stored flag word's low half holds system flags, the high half internal flags.
pub const SYSTEM_FLAGS_MASK: u32 = 0x0000_ffff;
pub const INTERNAL_FLAGS_MASK: u32 = 0xffff_0000;

pub const OPT_POP3_NEW_UIDL: u32 = 1 << 0;
/// Obsolete; Cyrus 3.x masks it out when writing.
pub const OPT_IMAP_CONDSTORE: u32 = 1 << 1;
pub const OPT_IMAP_SHAREDSEEN: u32 = 1 << 2;
pub const OPT_IMAP_DUPDELIVER: u32 = 1 << 3;
pub const OPT_IMAP_HAS_ALARMS: u32 = 1 << 4;
pub const OPT_MAILBOX_NEEDS_UNLINK: u32 = 1 << 29;
pub const OPT_MAILBOX_NEEDS_REPACK: u32 = 1 << 30;
pub const OPT_MAILBOX_DELETED: u32 = 1 << 31;
/// Options Cyrus 3.6 keeps when it writes a header (`MAILBOX_OPT_VALID`).
pub const MAILBOX_OPT_VALID: u32 = OPT_POP3_NEW_UIDL
    | OPT_IMAP_SHAREDSEEN
    | OPT_IMAP_DUPDELIVER
    | OPT_IMAP_HAS_ALARMS
    | OPT_MAILBOX_NEEDS_UNLINK
    | OPT_MAILBOX_NEEDS_REPACK
    | OPT_MAILBOX_DELETED;

/// Initial value of the annotation sync CRC (`CRC_INIT_ANNOT`).
pub const CRC_INIT_ANNOT: u32 = 12_345_678;
/// Namespace of Cyrus's own annotations (`IMAP_ANNOT_NS`).
pub const IMAP_ANNOT_NS: &str = "/vendor/cmu/cyrus-imapd/";

const NSEC_PER_SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// Errors and problems

/// Why an index (or part of one) could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IndexError {
    #[error(
        "cyrus.index is {len} bytes, shorter than the {need}-byte header; the file is truncated"
    )]
    TooShort { len: usize, need: usize },
    #[error("cyrus.index minor version {0} is not supported (cyrkit handles 12 to 20)")]
    UnsupportedVersion(u32),
    #[error("cyrus.index format field is {0}, expected 0; this is not a Cyrus index")]
    BadFormat(u32),
    #[error("cyrus.index v{version} start_offset is {got}, expected {expected}")]
    BadStartOffset {
        version: u32,
        expected: usize,
        got: u32,
    },
    #[error("cyrus.index v{version} record_size is {got}, expected {expected}")]
    BadRecordSize {
        version: u32,
        expected: usize,
        got: u32,
    },
    #[error("record index {index} is out of range: the header claims {num_records} records")]
    RecordOutOfRange { index: u32, num_records: u32 },
    #[error(
        "record index {index} at offset {offset} is truncated: the file ends at {len} \
         (header claims {num_records} records)"
    )]
    RecordTruncated {
        index: u32,
        offset: u64,
        len: usize,
        num_records: u32,
    },
    #[error("a v{version} record needs {need} bytes, got {got}")]
    RecordBufferSize {
        version: u32,
        need: usize,
        got: usize,
    },
    #[error("{field} = {value} does not fit in a v{version} index")]
    ValueTooLarge {
        field: &'static str,
        value: u64,
        version: u32,
    },
    #[error("{count} records do not fit in one index (at most 2^32-1)")]
    TooManyRecords { count: usize },
}

/// One problem found by [`Index::verify`]. `record` is the 0-based record index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IndexProblem {
    #[error("index header CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("nonzero spare byte in the index header at offset {offset}")]
    HeaderSpare { offset: usize },
    #[error(
        "header claims {num_records} records but the file holds only {present} \
         (file truncated)"
    )]
    RecordsTruncated { num_records: u32, present: u32 },
    #[error(
        "record {record} (uid {uid}) at offset {offset}: CRC mismatch, stored {stored:08x}, \
         computed {computed:08x}"
    )]
    RecordCrc {
        record: u32,
        uid: u32,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "record {record} at offset {offset}: uid {uid} is not above the previous uid {prev_uid}"
    )]
    UidNotIncreasing {
        record: u32,
        offset: u64,
        uid: u32,
        prev_uid: u32,
    },
    #[error("last_uid {last_uid} is below the highest record uid {max_uid}")]
    LastUidTooLow { last_uid: u32, max_uid: u32 },
    #[error("highestmodseq {highestmodseq} is below record {record} (uid {uid}) modseq {modseq}")]
    HighestModseqTooLow {
        highestmodseq: u64,
        record: u32,
        uid: u32,
        modseq: u64,
    },
    #[error("header {field} is {stored} but the records give {computed}")]
    CountMismatch {
        field: &'static str,
        stored: u64,
        computed: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// The structs

/// Every field of an index header of any version 12–20 (see the module docs for units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexHeader {
    pub generation_no: u32,
    pub format: u32,
    pub minor_version: u32,
    pub start_offset: u32,
    pub record_size: u32,
    pub num_records: u32,
    pub last_appenddate: u64,
    pub last_uid: u32,
    pub quota_mailbox_used: u64,
    pub pop3_last_login: u64,
    pub uidvalidity: u32,
    pub deleted: u32,
    pub answered: u32,
    pub flagged: u32,
    pub options: u32,
    pub leaked_cache_records: u32,
    pub highestmodseq: u64,
    pub deletedmodseq: u64,
    pub exists: u32,
    pub first_expunged: u64,
    pub last_repack_time: u64,
    pub header_file_crc: u32,
    pub sync_crc_basic: u32,
    pub recentuid: u32,
    pub recenttime: u64,
    pub pop3_show_after: u64,
    /// 32 bits on disk before v20.
    pub quota_annot_used: u64,
    pub sync_crc_annot: u32,
    pub unseen: u32,
    pub createdmodseq: u64,
    pub changes_epoch: u64,
    pub quota_deleted_used: u64,
    pub quota_expunged_used: u64,
    /// The CRC as stored; writers recompute it.
    pub header_crc: u32,
}

/// Every field of an index record of any version 12–20 (see the module docs for units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexRecord {
    pub uid: u32,
    pub internaldate: u64,
    pub sentdate: u64,
    /// 32 bits on disk before v20.
    pub size: u64,
    pub header_size: u32,
    pub gmtime: u64,
    /// Full 48-bit offset into cyrus.cache (0 = no entry).
    pub cache_offset: u64,
    pub last_updated: u64,
    /// Low 16 bits of the stored flag word (`FLAG_*`).
    pub system_flags: u32,
    /// High 16 bits of the stored flag word (`FLAG_INTERNAL_*`).
    pub internal_flags: u32,
    /// Bit `i % 32` of word `i / 32` = user flag `i`.
    pub user_flags: [u32; 4],
    /// Legacy line count at the savedate position of v12–v14 (Cyrus 3.x writes 0).
    pub content_lines: u32,
    pub savedate: u64,
    pub cache_version: u16,
    pub guid: [u8; 20],
    pub modseq: u64,
    /// Conversation id (`thrid`), v13+.
    pub cid: u64,
    pub createdmodseq: u64,
    /// v20 only.
    pub basecid: u64,
    pub cache_crc: u32,
    /// The CRC as stored; writers recompute it.
    pub record_crc: u32,
}

impl IndexRecord {
    pub fn is_expunged(&self) -> bool {
        self.internal_flags & FLAG_INTERNAL_EXPUNGED != 0
    }

    pub fn is_unlinked(&self) -> bool {
        self.internal_flags & FLAG_INTERNAL_UNLINKED != 0
    }

    /// Whether user flag `i` (0..128) is set.
    pub fn has_user_flag(&self, i: usize) -> bool {
        self.user_flags
            .get(i / 32)
            .is_some_and(|w| w & (1 << (i % 32)) != 0)
    }
}

/// A raw time value of `version` in whole seconds (v20 stores nanoseconds).
pub fn time_secs(raw: u64, version: u32) -> u64 {
    if version >= 20 {
        raw / NSEC_PER_SEC
    } else {
        raw
    }
}

// ---------------------------------------------------------------------------------------------
// Layout tables: (offset, width, field, first version, last version)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hf {
    GenerationNo,
    Format,
    MinorVersion,
    StartOffset,
    RecordSize,
    NumRecords,
    LastAppenddate,
    LastUid,
    QuotaMailboxUsed,
    Pop3LastLogin,
    Uidvalidity,
    Deleted,
    Answered,
    Flagged,
    Options,
    LeakedCache,
    HighestModseq,
    DeletedModseq,
    Exists,
    FirstExpunged,
    LastRepackTime,
    HeaderFileCrc,
    SyncCrcBasic,
    RecentUid,
    RecentTime,
    Pop3ShowAfter,
    QuotaAnnotUsed,
    SyncCrcAnnot,
    Unseen,
    CreatedModseq,
    ChangesEpoch,
    QuotaDeletedUsed,
    QuotaExpungedUsed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rf {
    Uid,
    InternalDate,
    SentDate,
    Size,
    HeaderSize,
    Gmtime,
    /// Low 32 bits of `cache_offset`.
    CacheOffsetLow,
    LastUpdated,
    /// `system_flags | internal_flags`.
    FlagWord,
    UserFlags(usize),
    ContentLines,
    SaveDate,
    /// `cache_version | (cache_offset >> 32) << 16`.
    CacheVersionWord,
    Guid,
    Modseq,
    Cid,
    CreatedModseq,
    BaseCid,
    CacheCrc,
}

#[derive(Debug, Clone, Copy)]
struct Slot<F> {
    off: usize,
    width: usize,
    field: F,
    first: u32,
    last: u32,
}

const fn s<F>(off: usize, width: usize, field: F, first: u32, last: u32) -> Slot<F> {
    Slot {
        off,
        width,
        field,
        first,
        last,
    }
}

/// v12–v18 headers: one table, fields present from the version Cyrus added them
/// (`mailbox_buf_to_index_header` in 3.6.1 `imap/mailbox.c`).
const HEADER_V12_18: &[Slot<Hf>] = &[
    s(OFFSET_GENERATION_NO, 4, Hf::GenerationNo, 12, 18),
    s(OFFSET_FORMAT, 4, Hf::Format, 12, 18),
    s(OFFSET_MINOR_VERSION, 4, Hf::MinorVersion, 12, 18),
    s(OFFSET_START_OFFSET, 4, Hf::StartOffset, 12, 18),
    s(OFFSET_RECORD_SIZE, 4, Hf::RecordSize, 12, 18),
    s(OFFSET_NUM_RECORDS, 4, Hf::NumRecords, 12, 18),
    s(OFFSET_LAST_APPENDDATE, 4, Hf::LastAppenddate, 12, 18),
    s(OFFSET_LAST_UID, 4, Hf::LastUid, 12, 18),
    s(OFFSET_QUOTA_MAILBOX_USED, 8, Hf::QuotaMailboxUsed, 12, 18),
    s(OFFSET_POP3_LAST_LOGIN, 4, Hf::Pop3LastLogin, 12, 18),
    s(OFFSET_UIDVALIDITY, 4, Hf::Uidvalidity, 12, 18),
    s(OFFSET_DELETED, 4, Hf::Deleted, 12, 18),
    s(OFFSET_ANSWERED, 4, Hf::Answered, 12, 18),
    s(OFFSET_FLAGGED, 4, Hf::Flagged, 12, 18),
    s(OFFSET_MAILBOX_OPTIONS, 4, Hf::Options, 12, 18),
    s(OFFSET_LEAKED_CACHE, 4, Hf::LeakedCache, 12, 18),
    s(OFFSET_HIGHESTMODSEQ, 8, Hf::HighestModseq, 12, 18),
    s(OFFSET_DELETEDMODSEQ, 8, Hf::DeletedModseq, 12, 18),
    s(OFFSET_EXISTS, 4, Hf::Exists, 12, 18),
    s(OFFSET_FIRST_EXPUNGED, 4, Hf::FirstExpunged, 12, 18),
    s(OFFSET_LAST_REPACK_TIME, 4, Hf::LastRepackTime, 12, 18),
    s(OFFSET_HEADER_FILE_CRC, 4, Hf::HeaderFileCrc, 12, 18),
    s(OFFSET_SYNCCRCS_BASIC, 4, Hf::SyncCrcBasic, 12, 18),
    s(OFFSET_RECENTUID, 4, Hf::RecentUid, 12, 18),
    s(OFFSET_RECENTTIME, 4, Hf::RecentTime, 12, 18),
    s(OFFSET_POP3_SHOW_AFTER, 4, Hf::Pop3ShowAfter, 13, 18),
    s(OFFSET_QUOTA_ANNOT_USED, 4, Hf::QuotaAnnotUsed, 13, 18),
    s(OFFSET_SYNCCRCS_ANNOT, 4, Hf::SyncCrcAnnot, 13, 18),
    s(OFFSET_UNSEEN, 4, Hf::Unseen, 14, 18),
    s(OFFSET_MAILBOX_CREATEDMODSEQ, 8, Hf::CreatedModseq, 16, 18),
    s(OFFSET_CHANGES_EPOCH, 4, Hf::ChangesEpoch, 17, 18),
    s(OFFSET_QUOTA_DELETED_USED, 8, Hf::QuotaDeletedUsed, 18, 18),
    s(OFFSET_QUOTA_EXPUNGED_USED, 8, Hf::QuotaExpungedUsed, 18, 18),
];

const HEADER_V19: &[Slot<Hf>] = &[
    s(OFFSET_GENERATION_NO, 4, Hf::GenerationNo, 19, 19),
    s(OFFSET_FORMAT, 4, Hf::Format, 19, 19),
    s(OFFSET_MINOR_VERSION, 4, Hf::MinorVersion, 19, 19),
    s(OFFSET_START_OFFSET, 4, Hf::StartOffset, 19, 19),
    s(OFFSET_RECORD_SIZE, 4, Hf::RecordSize, 19, 19),
    s(OFFSET_NUM_RECORDS, 4, Hf::NumRecords, 19, 19),
    s(OFFSET_LAST_APPENDDATE, 4, Hf::LastAppenddate, 19, 19),
    s(OFFSET_LAST_UID, 4, Hf::LastUid, 19, 19),
    s(OFFSET_QUOTA_MAILBOX_USED, 8, Hf::QuotaMailboxUsed, 19, 19),
    s(OFFSET_POP3_LAST_LOGIN, 4, Hf::Pop3LastLogin, 19, 19),
    s(OFFSET_UIDVALIDITY, 4, Hf::Uidvalidity, 19, 19),
    s(OFFSET_DELETED, 4, Hf::Deleted, 19, 19),
    s(OFFSET_ANSWERED, 4, Hf::Answered, 19, 19),
    s(OFFSET_FLAGGED, 4, Hf::Flagged, 19, 19),
    s(V19_OFFSET_EXISTS, 4, Hf::Exists, 19, 19),
    s(V19_OFFSET_MAILBOX_OPTIONS, 4, Hf::Options, 19, 19),
    s(V19_OFFSET_LEAKED_CACHE, 4, Hf::LeakedCache, 19, 19),
    s(V19_OFFSET_HIGHESTMODSEQ, 8, Hf::HighestModseq, 19, 19),
    s(V19_OFFSET_DELETEDMODSEQ, 8, Hf::DeletedModseq, 19, 19),
    s(V19_OFFSET_FIRST_EXPUNGED, 4, Hf::FirstExpunged, 19, 19),
    s(V19_OFFSET_LAST_REPACK_TIME, 4, Hf::LastRepackTime, 19, 19),
    s(V19_OFFSET_HEADER_FILE_CRC, 4, Hf::HeaderFileCrc, 19, 19),
    s(V19_OFFSET_SYNCCRCS_BASIC, 4, Hf::SyncCrcBasic, 19, 19),
    s(V19_OFFSET_RECENTUID, 4, Hf::RecentUid, 19, 19),
    s(V19_OFFSET_RECENTTIME, 4, Hf::RecentTime, 19, 19),
    s(V19_OFFSET_POP3_SHOW_AFTER, 4, Hf::Pop3ShowAfter, 19, 19),
    s(V19_OFFSET_QUOTA_ANNOT_USED, 4, Hf::QuotaAnnotUsed, 19, 19),
    s(V19_OFFSET_SYNCCRCS_ANNOT, 4, Hf::SyncCrcAnnot, 19, 19),
    s(V19_OFFSET_UNSEEN, 4, Hf::Unseen, 19, 19),
    s(
        V19_OFFSET_MAILBOX_CREATEDMODSEQ,
        8,
        Hf::CreatedModseq,
        19,
        19,
    ),
    s(
        V19_OFFSET_QUOTA_DELETED_USED,
        8,
        Hf::QuotaDeletedUsed,
        19,
        19,
    ),
    s(
        V19_OFFSET_QUOTA_EXPUNGED_USED,
        8,
        Hf::QuotaExpungedUsed,
        19,
        19,
    ),
    s(V19_OFFSET_CHANGES_EPOCH, 4, Hf::ChangesEpoch, 19, 19),
];

const HEADER_V20: &[Slot<Hf>] = &[
    s(OFFSET_GENERATION_NO, 4, Hf::GenerationNo, 20, 20),
    s(OFFSET_FORMAT, 4, Hf::Format, 20, 20),
    s(OFFSET_MINOR_VERSION, 4, Hf::MinorVersion, 20, 20),
    s(OFFSET_START_OFFSET, 4, Hf::StartOffset, 20, 20),
    s(OFFSET_RECORD_SIZE, 4, Hf::RecordSize, 20, 20),
    s(OFFSET_NUM_RECORDS, 4, Hf::NumRecords, 20, 20),
    s(V20_OFFSET_LAST_APPENDDATE, 8, Hf::LastAppenddate, 20, 20),
    s(
        V20_OFFSET_QUOTA_MAILBOX_USED,
        8,
        Hf::QuotaMailboxUsed,
        20,
        20,
    ),
    s(V20_OFFSET_POP3_LAST_LOGIN, 8, Hf::Pop3LastLogin, 20, 20),
    s(V20_OFFSET_DELETED, 4, Hf::Deleted, 20, 20),
    s(V20_OFFSET_ANSWERED, 4, Hf::Answered, 20, 20),
    s(V20_OFFSET_FLAGGED, 4, Hf::Flagged, 20, 20),
    s(V20_OFFSET_EXISTS, 4, Hf::Exists, 20, 20),
    s(V20_OFFSET_MAILBOX_OPTIONS, 4, Hf::Options, 20, 20),
    s(V20_OFFSET_LEAKED_CACHE, 4, Hf::LeakedCache, 20, 20),
    s(V20_OFFSET_HIGHESTMODSEQ, 8, Hf::HighestModseq, 20, 20),
    s(V20_OFFSET_DELETEDMODSEQ, 8, Hf::DeletedModseq, 20, 20),
    s(V20_OFFSET_LAST_UID, 4, Hf::LastUid, 20, 20),
    s(V20_OFFSET_UIDVALIDITY, 4, Hf::Uidvalidity, 20, 20),
    s(V20_OFFSET_HEADER_FILE_CRC, 4, Hf::HeaderFileCrc, 20, 20),
    s(V20_OFFSET_SYNCCRCS_BASIC, 4, Hf::SyncCrcBasic, 20, 20),
    s(V20_OFFSET_RECENTTIME, 8, Hf::RecentTime, 20, 20),
    s(V20_OFFSET_POP3_SHOW_AFTER, 8, Hf::Pop3ShowAfter, 20, 20),
    s(V20_OFFSET_SYNCCRCS_ANNOT, 4, Hf::SyncCrcAnnot, 20, 20),
    s(V20_OFFSET_UNSEEN, 4, Hf::Unseen, 20, 20),
    s(
        V20_OFFSET_MAILBOX_CREATEDMODSEQ,
        8,
        Hf::CreatedModseq,
        20,
        20,
    ),
    s(
        V20_OFFSET_QUOTA_DELETED_USED,
        8,
        Hf::QuotaDeletedUsed,
        20,
        20,
    ),
    s(
        V20_OFFSET_QUOTA_EXPUNGED_USED,
        8,
        Hf::QuotaExpungedUsed,
        20,
        20,
    ),
    s(V20_OFFSET_QUOTA_ANNOT_USED, 8, Hf::QuotaAnnotUsed, 20, 20),
    s(V20_OFFSET_CHANGES_EPOCH, 8, Hf::ChangesEpoch, 20, 20),
    s(V20_OFFSET_FIRST_EXPUNGED, 8, Hf::FirstExpunged, 20, 20),
    s(V20_OFFSET_LAST_REPACK_TIME, 8, Hf::LastRepackTime, 20, 20),
    s(V20_OFFSET_RECENTUID, 4, Hf::RecentUid, 20, 20),
];

/// v12–v19 records (`mailbox_buf_to_index_record` in 3.6.1 `imap/mailbox.c`): v13 inserted
/// the thrid before the CRCs, v15 reused content_lines for savedate, v16 inserted
/// createdmodseq before the CRCs.
const RECORD_V12_19: &[Slot<Rf>] = &[
    s(OFFSET_UID, 4, Rf::Uid, 12, 19),
    s(OFFSET_INTERNALDATE, 4, Rf::InternalDate, 12, 19),
    s(OFFSET_SENTDATE, 4, Rf::SentDate, 12, 19),
    s(OFFSET_SIZE, 4, Rf::Size, 12, 19),
    s(OFFSET_HEADER_SIZE, 4, Rf::HeaderSize, 12, 19),
    s(OFFSET_GMTIME, 4, Rf::Gmtime, 12, 19),
    s(OFFSET_CACHE_OFFSET, 4, Rf::CacheOffsetLow, 12, 19),
    s(OFFSET_LAST_UPDATED, 4, Rf::LastUpdated, 12, 19),
    s(OFFSET_SYSTEM_FLAGS, 4, Rf::FlagWord, 12, 19),
    s(OFFSET_USER_FLAGS, 4, Rf::UserFlags(0), 12, 19),
    s(OFFSET_USER_FLAGS + 4, 4, Rf::UserFlags(1), 12, 19),
    s(OFFSET_USER_FLAGS + 8, 4, Rf::UserFlags(2), 12, 19),
    s(OFFSET_USER_FLAGS + 12, 4, Rf::UserFlags(3), 12, 19),
    s(OFFSET_CONTENT_LINES, 4, Rf::ContentLines, 12, 14),
    s(OFFSET_SAVEDATE, 4, Rf::SaveDate, 15, 19),
    s(OFFSET_CACHE_VERSION, 4, Rf::CacheVersionWord, 12, 19),
    s(OFFSET_MESSAGE_GUID, 20, Rf::Guid, 12, 19),
    s(OFFSET_MODSEQ, 8, Rf::Modseq, 12, 19),
    s(V12_OFFSET_CACHE_CRC, 4, Rf::CacheCrc, 12, 12),
    s(OFFSET_THRID, 8, Rf::Cid, 13, 19),
    s(V13_OFFSET_CACHE_CRC, 4, Rf::CacheCrc, 13, 15),
    s(OFFSET_CREATEDMODSEQ, 8, Rf::CreatedModseq, 16, 19),
    s(OFFSET_CACHE_CRC, 4, Rf::CacheCrc, 16, 19),
];

const RECORD_V20: &[Slot<Rf>] = &[
    s(V20_OFFSET_UID, 4, Rf::Uid, 20, 20),
    s(V20_OFFSET_CACHE_OFFSET, 4, Rf::CacheOffsetLow, 20, 20),
    s(V20_OFFSET_INTERNALDATE, 8, Rf::InternalDate, 20, 20),
    s(V20_OFFSET_SENTDATE, 8, Rf::SentDate, 20, 20),
    s(V20_OFFSET_SIZE, 8, Rf::Size, 20, 20),
    s(V20_OFFSET_HEADER_SIZE, 4, Rf::HeaderSize, 20, 20),
    s(V20_OFFSET_SYSTEM_FLAGS, 4, Rf::FlagWord, 20, 20),
    s(V20_OFFSET_USER_FLAGS, 4, Rf::UserFlags(0), 20, 20),
    s(V20_OFFSET_USER_FLAGS + 4, 4, Rf::UserFlags(1), 20, 20),
    s(V20_OFFSET_USER_FLAGS + 8, 4, Rf::UserFlags(2), 20, 20),
    s(V20_OFFSET_USER_FLAGS + 12, 4, Rf::UserFlags(3), 20, 20),
    s(V20_OFFSET_CACHE_VERSION, 4, Rf::CacheVersionWord, 20, 20),
    s(V20_OFFSET_MESSAGE_GUID, 20, Rf::Guid, 20, 20),
    s(V20_OFFSET_MODSEQ, 8, Rf::Modseq, 20, 20),
    s(V20_OFFSET_THRID, 8, Rf::Cid, 20, 20),
    s(V20_OFFSET_CREATEDMODSEQ, 8, Rf::CreatedModseq, 20, 20),
    s(V20_OFFSET_GMTIME, 8, Rf::Gmtime, 20, 20),
    s(V20_OFFSET_LAST_UPDATED, 8, Rf::LastUpdated, 20, 20),
    s(V20_OFFSET_SAVEDATE, 8, Rf::SaveDate, 20, 20),
    s(V20_OFFSET_BASECID, 8, Rf::BaseCid, 20, 20),
    s(V20_OFFSET_CACHE_CRC, 4, Rf::CacheCrc, 20, 20),
];

fn header_slots(version: u32) -> impl Iterator<Item = &'static Slot<Hf>> {
    let table = match version {
        19 => HEADER_V19,
        20 => HEADER_V20,
        _ => HEADER_V12_18,
    };
    table
        .iter()
        .filter(move |sl| sl.first <= version && version <= sl.last)
}

fn record_slots(version: u32) -> impl Iterator<Item = &'static Slot<Rf>> {
    let table = if version == 20 {
        RECORD_V20
    } else {
        RECORD_V12_19
    };
    table
        .iter()
        .filter(move |sl| sl.first <= version && version <= sl.last)
}

fn header_is_time(f: Hf) -> bool {
    matches!(
        f,
        Hf::LastAppenddate
            | Hf::Pop3LastLogin
            | Hf::FirstExpunged
            | Hf::LastRepackTime
            | Hf::RecentTime
            | Hf::Pop3ShowAfter
            | Hf::ChangesEpoch
    )
}

fn record_is_time(f: Rf) -> bool {
    matches!(
        f,
        Rf::InternalDate | Rf::SentDate | Rf::Gmtime | Rf::LastUpdated | Rf::SaveDate
    )
}

/// Bytes `[0, crc_offset)` of a layout that belong to no field (must be zero).
fn spare_ranges<F>(slots: impl Iterator<Item = &'static Slot<F>>, crc_offset: usize) -> Vec<bool>
where
    F: 'static,
{
    let mut covered = vec![false; crc_offset];
    for sl in slots {
        for b in covered.iter_mut().skip(sl.off).take(sl.width) {
            *b = true;
        }
    }
    covered
}

fn first_nonzero_spare(buf: &[u8], covered: &[bool]) -> Option<usize> {
    buf.iter()
        .zip(covered)
        .position(|(byte, cov)| !cov && *byte != 0)
}

// ---------------------------------------------------------------------------------------------
// Field access

impl IndexHeader {
    /// Store the values [`derive`] recomputed, each only where `version` has the field
    /// (`unseen` from v14, `sync_crc_annot` from v13, the deleted/expunged sums from v18).
    pub fn apply_derived(&mut self, d: &Derived, version: u32) {
        self.exists = d.exists;
        self.answered = d.answered;
        self.flagged = d.flagged;
        self.deleted = d.deleted;
        self.quota_mailbox_used = d.quota_mailbox_used;
        self.sync_crc_basic = d.sync_crc_basic;
        if version >= 13 {
            self.sync_crc_annot = d.sync_crc_annot;
        }
        if version >= 14 {
            self.unseen = d.unseen;
        }
        if version >= 18 {
            self.quota_deleted_used = d.quota_deleted_used;
            self.quota_expunged_used = d.quota_expunged_used;
        }
    }

    fn get(&self, f: Hf) -> u64 {
        match f {
            Hf::GenerationNo => self.generation_no.into(),
            Hf::Format => self.format.into(),
            Hf::MinorVersion => self.minor_version.into(),
            Hf::StartOffset => self.start_offset.into(),
            Hf::RecordSize => self.record_size.into(),
            Hf::NumRecords => self.num_records.into(),
            Hf::LastAppenddate => self.last_appenddate,
            Hf::LastUid => self.last_uid.into(),
            Hf::QuotaMailboxUsed => self.quota_mailbox_used,
            Hf::Pop3LastLogin => self.pop3_last_login,
            Hf::Uidvalidity => self.uidvalidity.into(),
            Hf::Deleted => self.deleted.into(),
            Hf::Answered => self.answered.into(),
            Hf::Flagged => self.flagged.into(),
            Hf::Options => self.options.into(),
            Hf::LeakedCache => self.leaked_cache_records.into(),
            Hf::HighestModseq => self.highestmodseq,
            Hf::DeletedModseq => self.deletedmodseq,
            Hf::Exists => self.exists.into(),
            Hf::FirstExpunged => self.first_expunged,
            Hf::LastRepackTime => self.last_repack_time,
            Hf::HeaderFileCrc => self.header_file_crc.into(),
            Hf::SyncCrcBasic => self.sync_crc_basic.into(),
            Hf::RecentUid => self.recentuid.into(),
            Hf::RecentTime => self.recenttime,
            Hf::Pop3ShowAfter => self.pop3_show_after,
            Hf::QuotaAnnotUsed => self.quota_annot_used,
            Hf::SyncCrcAnnot => self.sync_crc_annot.into(),
            Hf::Unseen => self.unseen.into(),
            Hf::CreatedModseq => self.createdmodseq,
            Hf::ChangesEpoch => self.changes_epoch,
            Hf::QuotaDeletedUsed => self.quota_deleted_used,
            Hf::QuotaExpungedUsed => self.quota_expunged_used,
        }
    }

    /// Sets a field. 32-bit struct fields only ever sit in 4-byte slots (checked by a unit
    /// test), so the value always fits; `lo32` is only reached with such values.
    fn set(&mut self, f: Hf, v: u64) {
        let w = lo32(v);
        match f {
            Hf::GenerationNo => self.generation_no = w,
            Hf::Format => self.format = w,
            Hf::MinorVersion => self.minor_version = w,
            Hf::StartOffset => self.start_offset = w,
            Hf::RecordSize => self.record_size = w,
            Hf::NumRecords => self.num_records = w,
            Hf::LastAppenddate => self.last_appenddate = v,
            Hf::LastUid => self.last_uid = w,
            Hf::QuotaMailboxUsed => self.quota_mailbox_used = v,
            Hf::Pop3LastLogin => self.pop3_last_login = v,
            Hf::Uidvalidity => self.uidvalidity = w,
            Hf::Deleted => self.deleted = w,
            Hf::Answered => self.answered = w,
            Hf::Flagged => self.flagged = w,
            Hf::Options => self.options = w,
            Hf::LeakedCache => self.leaked_cache_records = w,
            Hf::HighestModseq => self.highestmodseq = v,
            Hf::DeletedModseq => self.deletedmodseq = v,
            Hf::Exists => self.exists = w,
            Hf::FirstExpunged => self.first_expunged = v,
            Hf::LastRepackTime => self.last_repack_time = v,
            Hf::HeaderFileCrc => self.header_file_crc = w,
            Hf::SyncCrcBasic => self.sync_crc_basic = w,
            Hf::RecentUid => self.recentuid = w,
            Hf::RecentTime => self.recenttime = v,
            Hf::Pop3ShowAfter => self.pop3_show_after = v,
            Hf::QuotaAnnotUsed => self.quota_annot_used = v,
            Hf::SyncCrcAnnot => self.sync_crc_annot = w,
            Hf::Unseen => self.unseen = w,
            Hf::CreatedModseq => self.createdmodseq = v,
            Hf::ChangesEpoch => self.changes_epoch = v,
            Hf::QuotaDeletedUsed => self.quota_deleted_used = v,
            Hf::QuotaExpungedUsed => self.quota_expunged_used = v,
        }
    }
}

fn header_field_name(f: Hf) -> &'static str {
    match f {
        Hf::GenerationNo => "generation_no",
        Hf::Format => "format",
        Hf::MinorVersion => "minor_version",
        Hf::StartOffset => "start_offset",
        Hf::RecordSize => "record_size",
        Hf::NumRecords => "num_records",
        Hf::LastAppenddate => "last_appenddate",
        Hf::LastUid => "last_uid",
        Hf::QuotaMailboxUsed => "quota_mailbox_used",
        Hf::Pop3LastLogin => "pop3_last_login",
        Hf::Uidvalidity => "uidvalidity",
        Hf::Deleted => "deleted",
        Hf::Answered => "answered",
        Hf::Flagged => "flagged",
        Hf::Options => "options",
        Hf::LeakedCache => "leaked_cache_records",
        Hf::HighestModseq => "highestmodseq",
        Hf::DeletedModseq => "deletedmodseq",
        Hf::Exists => "exists",
        Hf::FirstExpunged => "first_expunged",
        Hf::LastRepackTime => "last_repack_time",
        Hf::HeaderFileCrc => "header_file_crc",
        Hf::SyncCrcBasic => "sync_crc_basic",
        Hf::RecentUid => "recentuid",
        Hf::RecentTime => "recenttime",
        Hf::Pop3ShowAfter => "pop3_show_after",
        Hf::QuotaAnnotUsed => "quota_annot_used",
        Hf::SyncCrcAnnot => "sync_crc_annot",
        Hf::Unseen => "unseen",
        Hf::CreatedModseq => "createdmodseq",
        Hf::ChangesEpoch => "changes_epoch",
        Hf::QuotaDeletedUsed => "quota_deleted_used",
        Hf::QuotaExpungedUsed => "quota_expunged_used",
    }
}

impl IndexRecord {
    fn get(&self, f: Rf) -> u64 {
        match f {
            Rf::Uid => self.uid.into(),
            Rf::InternalDate => self.internaldate,
            Rf::SentDate => self.sentdate,
            Rf::Size => self.size,
            Rf::HeaderSize => self.header_size.into(),
            Rf::Gmtime => self.gmtime,
            Rf::CacheOffsetLow => self.cache_offset & 0xffff_ffff,
            Rf::LastUpdated => self.last_updated,
            Rf::FlagWord => u64::from(self.system_flags | self.internal_flags),
            Rf::UserFlags(i) => self.user_flags.get(i).copied().unwrap_or(0).into(),
            Rf::ContentLines => self.content_lines.into(),
            Rf::SaveDate => self.savedate,
            // `mailbox_index_record_to_buf`: offset bits 32–47 go to the version's top half.
            Rf::CacheVersionWord => {
                u64::from(self.cache_version) | ((self.cache_offset >> 32) & 0xffff) << 16
            }
            Rf::Guid => 0,
            Rf::Modseq => self.modseq,
            Rf::Cid => self.cid,
            Rf::CreatedModseq => self.createdmodseq,
            Rf::BaseCid => self.basecid,
            Rf::CacheCrc => self.cache_crc.into(),
        }
    }

    /// See [`IndexHeader::set`] for why `lo32` never truncates here.
    fn set(&mut self, f: Rf, v: u64) {
        let w = lo32(v);
        match f {
            Rf::Uid => self.uid = w,
            Rf::InternalDate => self.internaldate = v,
            Rf::SentDate => self.sentdate = v,
            Rf::Size => self.size = v,
            Rf::HeaderSize => self.header_size = w,
            Rf::Gmtime => self.gmtime = v,
            Rf::CacheOffsetLow => self.cache_offset = (self.cache_offset & !0xffff_ffff) | v,
            Rf::LastUpdated => self.last_updated = v,
            Rf::FlagWord => {
                self.system_flags = w & SYSTEM_FLAGS_MASK;
                self.internal_flags = w & INTERNAL_FLAGS_MASK;
            }
            Rf::UserFlags(i) => {
                if let Some(word) = self.user_flags.get_mut(i) {
                    *word = w;
                }
            }
            Rf::ContentLines => self.content_lines = w,
            Rf::SaveDate => self.savedate = v,
            Rf::CacheVersionWord => {
                self.cache_version = (w & 0xffff) as u16;
                self.cache_offset = (self.cache_offset & 0xffff_ffff) | (v >> 16 & 0xffff) << 32;
            }
            Rf::Guid => {}
            Rf::Modseq => self.modseq = v,
            Rf::Cid => self.cid = v,
            Rf::CreatedModseq => self.createdmodseq = v,
            Rf::BaseCid => self.basecid = v,
            Rf::CacheCrc => self.cache_crc = w,
        }
    }
}

fn record_field_name(f: Rf) -> &'static str {
    match f {
        Rf::Uid => "uid",
        Rf::InternalDate => "internaldate",
        Rf::SentDate => "sentdate",
        Rf::Size => "size",
        Rf::HeaderSize => "header_size",
        Rf::Gmtime => "gmtime",
        Rf::CacheOffsetLow => "cache_offset",
        Rf::LastUpdated => "last_updated",
        Rf::FlagWord => "system_flags",
        Rf::UserFlags(_) => "user_flags",
        Rf::ContentLines => "content_lines",
        Rf::SaveDate => "savedate",
        Rf::CacheVersionWord => "cache_version",
        Rf::Guid => "guid",
        Rf::Modseq => "modseq",
        Rf::Cid => "cid",
        Rf::CreatedModseq => "createdmodseq",
        Rf::BaseCid => "basecid",
        Rf::CacheCrc => "cache_crc",
    }
}

/// The low 32 bits of `v`: only called where `v` came from a 4-byte read or was range-checked.
fn lo32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

fn be32(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = buf.get(off..off.saturating_add(4)) {
        b.copy_from_slice(src);
    }
    u32::from_be_bytes(b)
}

fn be64(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = buf.get(off..off.saturating_add(8)) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}

fn read_slot(buf: &[u8], off: usize, width: usize) -> u64 {
    if width == 8 {
        be64(buf, off)
    } else {
        be32(buf, off).into()
    }
}

/// Writes `v` into `out[off..off+width]`; `out` is sized by the caller from the same layout.
fn write_slot(out: &mut [u8], off: usize, width: usize, v: u64) {
    let bytes = v.to_be_bytes();
    let src = if width == 8 { &bytes[..] } else { &bytes[4..] };
    if let Some(dst) = out.get_mut(off..off + width) {
        dst.copy_from_slice(src);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and writing headers and records

fn layout(version: u32) -> Result<(usize, usize), IndexError> {
    match (header_size(version), record_size(version)) {
        (Some(h), Some(r)) => Ok((h, r)),
        _ => Err(IndexError::UnsupportedVersion(version)),
    }
}

/// Reads the minor version at `OFFSET_MINOR_VERSION` and decodes the header of that version.
/// Checks only that the version is supported and the buffer holds the whole header; the
/// other sanity checks are [`Index::open`]'s, the CRC check is [`Index::verify`]'s.
pub fn parse_header(buf: &[u8]) -> Result<IndexHeader, IndexError> {
    let need = OFFSET_MINOR_VERSION + 4;
    if buf.len() < need {
        return Err(IndexError::TooShort {
            len: buf.len(),
            need,
        });
    }
    let version = be32(buf, OFFSET_MINOR_VERSION);
    let (hsize, _) = layout(version)?;
    if buf.len() < hsize {
        return Err(IndexError::TooShort {
            len: buf.len(),
            need: hsize,
        });
    }
    let mut h = IndexHeader::default();
    for sl in header_slots(version) {
        h.set(sl.field, read_slot(buf, sl.off, sl.width));
    }
    h.header_crc = be32(buf, hsize - 4);
    Ok(h)
}

/// Decodes one record of `version` from `buf` (exactly the record's bytes, or more).
/// The CRC is not checked (see [`record_crc_ok`]).
pub fn parse_record(buf: &[u8], version: u32) -> Result<IndexRecord, IndexError> {
    let (_, rsize) = layout(version)?;
    if buf.len() < rsize {
        return Err(IndexError::RecordBufferSize {
            version,
            need: rsize,
            got: buf.len(),
        });
    }
    let mut r = IndexRecord::default();
    for sl in record_slots(version) {
        if sl.field == Rf::Guid {
            if let Some(g) = buf.get(sl.off..sl.off + 20) {
                r.guid.copy_from_slice(g);
            }
        } else {
            r.set(sl.field, read_slot(buf, sl.off, sl.width));
        }
    }
    r.record_crc = be32(buf, rsize - 4);
    Ok(r)
}

/// Whether the stored CRC of a record's bytes (of `version`) matches its content.
pub fn record_crc_ok(buf: &[u8], version: u32) -> bool {
    match record_size(version).and_then(|n| buf.get(..n)) {
        Some(rec) => crc32(&rec[..rec.len() - 4]) == be32(rec, rec.len() - 4),
        None => false,
    }
}

fn check_fits(field: &'static str, v: u64, width: usize, version: u32) -> Result<(), IndexError> {
    if width == 4 && v > u64::from(u32::MAX) {
        return Err(IndexError::ValueTooLarge {
            field,
            value: v,
            version,
        });
    }
    Ok(())
}

/// Serialises a header as `version` (12–20), computing its CRC. `minor_version`,
/// `start_offset` and `record_size` are those of `version`; every other field is written
/// as is (no masking: a file Cyrus wrote re-serialises byte-identically). Fields `version`
/// lacks are ignored; a value too large for its on-disk width is an error, not truncated.
pub fn write_header(h: &IndexHeader, version: u32) -> Result<Vec<u8>, IndexError> {
    let (hsize, rsize) = layout(version)?;
    let mut h = h.clone();
    h.minor_version = version;
    h.start_offset = hsize as u32;
    h.record_size = rsize as u32;
    let mut out = vec![0u8; hsize];
    for sl in header_slots(version) {
        let v = h.get(sl.field);
        check_fits(header_field_name(sl.field), v, sl.width, version)?;
        write_slot(&mut out, sl.off, sl.width, v);
    }
    let crc = crc32(&out[..hsize - 4]);
    out[hsize - 4..].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Serialises a record as `version` (12–20), computing its CRC. Fields `version` lacks are
/// ignored; values too large for their on-disk width (e.g. a size ≥ 4 GiB before v20, a cache
/// offset ≥ 2^48) are an error.
pub fn write_record(r: &IndexRecord, version: u32) -> Result<Vec<u8>, IndexError> {
    let (_, rsize) = layout(version)?;
    if r.cache_offset > MAX_CACHE_OFFSET {
        return Err(IndexError::ValueTooLarge {
            field: "cache_offset",
            value: r.cache_offset,
            version,
        });
    }
    let mut out = vec![0u8; rsize];
    for sl in record_slots(version) {
        if sl.field == Rf::Guid {
            out[sl.off..sl.off + 20].copy_from_slice(&r.guid);
            continue;
        }
        let v = r.get(sl.field);
        check_fits(record_field_name(sl.field), v, sl.width, version)?;
        write_slot(&mut out, sl.off, sl.width, v);
    }
    let crc = crc32(&out[..rsize - 4]);
    out[rsize - 4..].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Serialises a whole `cyrus.index`: header (with `num_records = records.len()`) and records.
pub fn write_index(
    header: &IndexHeader,
    records: &[IndexRecord],
    version: u32,
) -> Result<Vec<u8>, IndexError> {
    let num_records = u32::try_from(records.len()).map_err(|_| IndexError::TooManyRecords {
        count: records.len(),
    })?;
    let mut h = header.clone();
    h.num_records = num_records;
    let mut out = write_header(&h, version)?;
    let (_, rsize) = layout(version)?;
    out.reserve_exact(records.len().saturating_mul(rsize));
    for r in records {
        out.extend_from_slice(&write_record(r, version)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Version conversion

fn rescale_time(v: u64, from: u32, to: u32, field: &'static str) -> Result<u64, IndexError> {
    match (from >= 20, to >= 20) {
        (false, true) => v
            .checked_mul(NSEC_PER_SEC)
            .ok_or(IndexError::ValueTooLarge {
                field,
                value: v,
                version: to,
            }),
        (true, false) => Ok(v / NSEC_PER_SEC),
        _ => Ok(v),
    }
}

/// The header as `reconstruct -V to` would carry it over (`mailbox_repack_setup`): every field
/// the target version has keeps its value (times rescaled across v20), fields it lacks are
/// zeroed, options are masked with [`MAILBOX_OPT_VALID`], and going from below v17 to v17+
/// `changes_epoch` takes `last_repack_time` (the 3.6 reader's default; Cyrus uses the current
/// time when that is 0 — pass your own clock by setting it afterwards).
///
/// Not done here, because it is the repack's job: `generation_no + 1`, `last_repack_time`,
/// dropping unlinked records, recounting.
pub fn convert_header(h: &IndexHeader, to: u32) -> Result<IndexHeader, IndexError> {
    let from = h.minor_version;
    layout(from)?;
    let (hsize, rsize) = layout(to)?;
    let mut src = h.clone();
    if from < 17 && src.changes_epoch == 0 {
        src.changes_epoch = src.last_repack_time;
    }
    src.options &= MAILBOX_OPT_VALID;
    let mut out = IndexHeader::default();
    for sl in header_slots(to) {
        let mut v = src.get(sl.field);
        if header_is_time(sl.field) {
            v = rescale_time(v, from, to, header_field_name(sl.field))?;
        }
        out.set(sl.field, v);
    }
    out.minor_version = to;
    out.start_offset = hsize as u32;
    out.record_size = rsize as u32;
    out.header_crc = 0;
    Ok(out)
}

/// The record as `reconstruct -V to` writes it (`mailbox_index_record_to_buf`): fields the
/// target has keep their value (times rescaled across v20), others are zeroed, and the legacy
/// `content_lines` is always blanked (3.x never writes it). Moving cid/savedate/createdmodseq
/// into or out of `cyrus.annotations` when a version lacks them is the caller's job.
pub fn convert_record(r: &IndexRecord, from: u32, to: u32) -> Result<IndexRecord, IndexError> {
    layout(from)?;
    layout(to)?;
    let mut out = IndexRecord::default();
    for sl in record_slots(to) {
        if sl.field == Rf::Guid {
            out.guid = r.guid;
            continue;
        }
        let mut v = r.get(sl.field);
        if record_is_time(sl.field) {
            v = rescale_time(v, from, to, record_field_name(sl.field))?;
        }
        out.set(sl.field, v);
    }
    // Both halves of the cache offset must survive whatever order the slots were set in.
    out.cache_offset = r.cache_offset;
    out.content_lines = 0;
    Ok(out)
}

/// A whole `cyrus.index` converted to version `to` with [`convert_header`] and
/// [`convert_record`] (no repack: same records, generation and counts). Fails on a file whose
/// records are not all present.
pub fn convert_index(buf: &[u8], to: u32) -> Result<Vec<u8>, IndexError> {
    let idx = Index::open(buf)?;
    let from = idx.version();
    let header = convert_header(idx.header(), to)?;
    let records = idx
        .records()
        .map(|r| convert_record(&r?, from, to))
        .collect::<Result<Vec<_>, _>>()?;
    write_index(&header, &records, to)
}

// ---------------------------------------------------------------------------------------------
// GUIDs and sync CRCs

/// The message GUID Cyrus stores: SHA-1 of the message file's bytes.
pub fn guid_of(message: &[u8]) -> [u8; 20] {
    Sha1::digest(message).into()
}

/// Lowercase hex of a GUID, as `message_guid_encode` prints it.
pub fn guid_hex(guid: &[u8; 20]) -> String {
    let mut s = String::with_capacity(40);
    for b in guid {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 40 hex digits (either case) into a GUID.
pub fn parse_guid_hex(hex: &str) -> Option<[u8; 20]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// `crc_annot` of `imap/mailbox.c`: CRC-32 of `"<uid> <entry> <userid> "` followed by the value.
pub fn crc_annot(uid: u32, entry: &str, userid: &str, value: &[u8]) -> u32 {
    let prefix = format!("{uid} {entry} {userid} ");
    crate::format::crc::crc32_parts(&[prefix.as_bytes(), value])
}

/// Whether an annotation `entry` is held in the record at `version` (and therefore must not
/// be counted again from cyrus.annotations), per `mailbox_is_virtannot`.
pub fn is_virtual_annot(entry: &str, version: u32) -> bool {
    let Some(name) = entry.strip_prefix(IMAP_ANNOT_NS) else {
        return false;
    };
    match name {
        "thrid" => version >= 13,
        "savedate" => version >= 15,
        "createdmodseq" => version >= 16,
        "internaldate.nsec" | "basethrid" => version >= 20,
        _ => false,
    }
}

/// `crc_basic` of `imap/mailbox.c` (unchanged since 2.4): 0 for an expunged record.
/// `flag_names[i]` is user flag `i`'s name (from cyrus.header), `None` for an undefined slot.
pub fn crc_basic<N: AsRef<[u8]>>(r: &IndexRecord, version: u32, flag_names: &[Option<N>]) -> u32 {
    if r.is_expunged() {
        return 0;
    }
    let mut flagcrc = 0u32;
    for (bit, name) in [
        (FLAG_DELETED, "\\deleted"),
        (FLAG_ANSWERED, "\\answered"),
        (FLAG_FLAGGED, "\\flagged"),
        (FLAG_DRAFT, "\\draft"),
        (FLAG_SEEN, "\\seen"),
    ] {
        if r.system_flags & bit != 0 {
            flagcrc ^= crc32(name.as_bytes());
        }
    }
    for (i, name) in flag_names.iter().enumerate().take(MAX_USER_FLAGS) {
        if let Some(name) = name {
            if r.has_user_flag(i) {
                // `lcase` is ASCII-only; the name is cut at a NUL as the C string would be.
                let name = name.as_ref();
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                flagcrc ^= crc32(&name[..end].to_ascii_lowercase());
            }
        }
    }
    let line = format!(
        "{} {} {} ({}) {} {}",
        r.uid,
        r.modseq,
        time_secs(r.last_updated, version),
        flagcrc,
        time_secs(r.internaldate, version),
        guid_hex(&r.guid)
    );
    crc32(line.as_bytes())
}

/// `crc_virtannot`: the annotation sync CRC contribution of the fields a `version` record holds
/// instead of cyrus.annotations. 0 for an expunged record.
pub fn crc_virtannot(r: &IndexRecord, version: u32) -> u32 {
    if r.is_expunged() {
        return 0;
    }
    let ns = |name: &str| format!("{IMAP_ANNOT_NS}{name}");
    let mut crc = 0;
    if version >= 20 {
        let nsec = r.internaldate % NSEC_PER_SEC;
        if nsec > 0 {
            crc ^= crc_annot(
                r.uid,
                &ns("internaldate.nsec"),
                "",
                nsec.to_string().as_bytes(),
            );
        }
        if r.basecid != 0 {
            let v = format!("{:016x}", r.basecid);
            crc ^= crc_annot(r.uid, &ns("basethrid"), "", v.as_bytes());
        }
    }
    if version >= 16 && r.createdmodseq != 0 {
        let v = r.createdmodseq.to_string();
        crc ^= crc_annot(r.uid, &ns("createdmodseq"), "", v.as_bytes());
    }
    let savedate = time_secs(r.savedate, version);
    if version >= 15 && savedate != 0 {
        crc ^= crc_annot(r.uid, &ns("savedate"), "", savedate.to_string().as_bytes());
    }
    if version >= 13 && r.cid != 0 {
        // 3.6–3.12 print `%llx`; master (v20) prints CONV_FMT `%016llx`.
        let v = if version >= 20 {
            format!("{:016x}", r.cid)
        } else {
            format!("{:x}", r.cid)
        };
        crc ^= crc_annot(r.uid, &ns("thrid"), "", v.as_bytes());
    }
    crc
}

/// Header values Cyrus derives from the records (`mailbox_index_recalc`, §3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Derived {
    pub exists: u32,
    pub answered: u32,
    pub flagged: u32,
    pub deleted: u32,
    pub unseen: u32,
    pub quota_mailbox_used: u64,
    /// Σ size of `\Deleted` records (stored from v18).
    pub quota_deleted_used: u64,
    /// Σ size of expunged, not yet unlinked records (stored from v18).
    pub quota_expunged_used: u64,
    pub sync_crc_basic: u32,
    /// Includes only the per-record annotation contributions passed in `annot_crcs`
    /// (`quota_annot_used` cannot be derived from the index and is not computed).
    pub sync_crc_annot: u32,
    /// Highest record uid (0 if none).
    pub max_uid: u32,
    /// Highest record modseq (0 if none).
    pub max_modseq: u64,
}

/// Recomputes the derived header values over `records` of `version`.
///
/// `annot_crcs` maps a uid to the XOR of [`crc_annot`] over that message's real annotations
/// in cyrus.annotations (leaving out those [`is_virtual_annot`] names for this version); it is
/// only applied to non-expunged records, as Cyrus does. Pass `None` when there is no
/// cyrus.annotations: `sync_crc_annot` then covers the record fields only.
pub fn derive<'r, N: AsRef<[u8]>>(
    records: impl IntoIterator<Item = &'r IndexRecord>,
    version: u32,
    flag_names: &[Option<N>],
    annot_crcs: Option<&BTreeMap<u32, u32>>,
) -> Derived {
    let mut d = Derived::start();
    for r in records {
        d.add(r, version, flag_names, annot_crcs);
    }
    d
}

impl Derived {
    /// The values over no records; [`Derived::add`] each record in turn (what [`derive`]
    /// does, for a caller that streams the records instead of holding them).
    pub fn start() -> Derived {
        Derived {
            sync_crc_annot: CRC_INIT_ANNOT,
            ..Derived::default()
        }
    }

    /// Adds one record (see [`derive`] for the arguments).
    pub fn add<N: AsRef<[u8]>>(
        &mut self,
        r: &IndexRecord,
        version: u32,
        flag_names: &[Option<N>],
        annot_crcs: Option<&BTreeMap<u32, u32>>,
    ) {
        let d = self;
        d.max_uid = d.max_uid.max(r.uid);
        d.max_modseq = d.max_modseq.max(r.modseq);
        if r.is_expunged() {
            if !r.is_unlinked() {
                d.quota_expunged_used = d.quota_expunged_used.saturating_add(r.size);
            }
            return;
        }
        d.exists = d.exists.saturating_add(1);
        d.quota_mailbox_used = d.quota_mailbox_used.saturating_add(r.size);
        let count = |c: &mut u32, yes: bool| {
            if yes {
                *c = c.saturating_add(1);
            }
        };
        count(&mut d.answered, r.system_flags & FLAG_ANSWERED != 0);
        count(&mut d.flagged, r.system_flags & FLAG_FLAGGED != 0);
        count(&mut d.deleted, r.system_flags & FLAG_DELETED != 0);
        count(&mut d.unseen, r.system_flags & FLAG_SEEN == 0);
        if r.system_flags & FLAG_DELETED != 0 {
            d.quota_deleted_used = d.quota_deleted_used.saturating_add(r.size);
        }
        d.sync_crc_basic ^= crc_basic(r, version, flag_names);
        d.sync_crc_annot ^= crc_virtannot(r, version);
        if let Some(extra) = annot_crcs.and_then(|m| m.get(&r.uid)) {
            d.sync_crc_annot ^= extra;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An opened index

/// What [`Index::open`] checks and learns from the header alone: enough to read an index's
/// records from a file without holding it (see [`IndexShape::open`] and [`Verifier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexShape {
    pub header: IndexHeader,
    /// Bytes before the first record (`start_offset`).
    pub header_size: usize,
    pub record_size: usize,
    /// How many of the `num_records` the header claims the file holds whole.
    pub present: u32,
}

impl IndexShape {
    /// The checks of [`Index::open`] on `head`, the first bytes of a `file_len`-byte index
    /// (at least the header, or the whole file when it is shorter; `file_len` counts the
    /// records that are not in `head`).
    pub fn open(head: &[u8], file_len: u64) -> Result<IndexShape, IndexError> {
        let header = parse_header(head)?;
        let version = header.minor_version;
        let (hsize, rsize) = layout(version)?;
        if header.format != 0 {
            return Err(IndexError::BadFormat(header.format));
        }
        if header.start_offset as usize != hsize {
            return Err(IndexError::BadStartOffset {
                version,
                expected: hsize,
                got: header.start_offset,
            });
        }
        if header.record_size as usize != rsize {
            return Err(IndexError::BadRecordSize {
                version,
                expected: rsize,
                got: header.record_size,
            });
        }
        let file_len = file_len.max(head.len() as u64);
        let fit = file_len.saturating_sub(hsize as u64) / rsize as u64;
        let present = header
            .num_records
            .min(u32::try_from(fit).unwrap_or(u32::MAX));
        Ok(IndexShape {
            header,
            header_size: hsize,
            record_size: rsize,
            present,
        })
    }

    pub fn version(&self) -> u32 {
        self.header.minor_version
    }

    /// File offset of record `i` (0-based).
    pub fn record_offset(&self, i: u32) -> u64 {
        self.header_size as u64 + u64::from(i) * self.record_size as u64
    }
}

/// A `cyrus.index` held in memory (a Vec or a memory map), opened cheaply.
#[derive(Debug, Clone)]
pub struct Index<'a> {
    buf: &'a [u8],
    shape: IndexShape,
}

/// What [`Index::verify`] needs besides the index. The default checks neither sync CRC.
#[derive(Debug, Clone)]
pub struct VerifyContext<'a, N: AsRef<[u8]> = Vec<u8>> {
    /// User flag names (index = flag number) from cyrus.header; `None`: skip `sync_crc_basic`.
    pub flag_names: Option<&'a [Option<N>]>,
    /// Per-uid annotation CRCs (see [`derive`]); `None`: skip `sync_crc_annot`.
    pub annot_crcs: Option<&'a BTreeMap<u32, u32>>,
}

impl<N: AsRef<[u8]>> Default for VerifyContext<'_, N> {
    fn default() -> Self {
        VerifyContext {
            flag_names: None,
            annot_crcs: None,
        }
    }
}

impl<'a> Index<'a> {
    /// Checks the fixed fields (format 0, minor version 12–20, `start_offset` and
    /// `record_size` of that version, the whole header present) and nothing else: CRCs and
    /// record contents are [`Index::verify`]'s. A `num_records` larger than the buffer holds
    /// is accepted here (only the records present are served) and reported by `verify`.
    pub fn open(buf: &'a [u8]) -> Result<Self, IndexError> {
        let shape = IndexShape::open(buf, buf.len() as u64)?;
        Ok(Index { buf, shape })
    }

    pub fn header(&self) -> &IndexHeader {
        &self.shape.header
    }

    /// The header facts (sizes, records present).
    pub fn shape(&self) -> &IndexShape {
        &self.shape
    }

    pub fn version(&self) -> u32 {
        self.shape.version()
    }

    /// The header's bytes (the CRC included).
    pub fn header_bytes(&self) -> &'a [u8] {
        &self.buf[..self.shape.header_size]
    }

    /// `num_records` as the header claims it.
    pub fn num_records(&self) -> u32 {
        self.shape.header.num_records
    }

    /// How many of the claimed records the buffer actually holds.
    pub fn records_present(&self) -> u32 {
        self.shape.present
    }

    /// File offset of record `i` (0-based).
    pub fn record_offset(&self, i: u32) -> u64 {
        self.shape.record_offset(i)
    }

    /// The raw bytes of record `i` (0-based).
    pub fn record_bytes(&self, i: u32) -> Result<&'a [u8], IndexError> {
        let num_records = self.num_records();
        if i >= num_records {
            return Err(IndexError::RecordOutOfRange {
                index: i,
                num_records,
            });
        }
        let offset = self.record_offset(i);
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.buf.get(o..o.checked_add(self.shape.record_size)?))
            .ok_or(IndexError::RecordTruncated {
                index: i,
                offset,
                len: self.buf.len(),
                num_records,
            })
    }

    /// Record `i` (0-based), decoded without checking its CRC.
    pub fn record(&self, i: u32) -> Result<IndexRecord, IndexError> {
        parse_record(self.record_bytes(i)?, self.version())
    }

    /// Every claimed record in order; a truncated file yields one error and stops.
    pub fn records(&self) -> Records<'_, 'a> {
        Records {
            index: self,
            next: 0,
            done: false,
        }
    }

    /// Every problem, not just the first: header CRC and spares, truncation, each record's CRC
    /// (records have no spare bytes in any version), UID order, last_uid, highestmodseq, and
    /// the derived counts and sync CRCs (the latter only when `ctx` supplies what they need).
    /// This is [`Verifier`] fed every record present.
    pub fn verify<N: AsRef<[u8]>>(&self, ctx: &VerifyContext<'_, N>) -> Vec<IndexProblem> {
        let mut out = Vec::new();
        let mut v = Verifier::new(&self.shape, self.buf, ctx, &mut out);
        for i in 0..self.shape.present {
            let Ok(bytes) = self.record_bytes(i) else {
                break;
            };
            if v.record(bytes, &mut out).is_none() {
                break;
            }
        }
        v.finish(&mut out);
        out
    }
}

/// [`Index::verify`] over records given one at a time, so that an index can be checked
/// while it is read through a small window: [`Verifier::new`] judges the header,
/// [`Verifier::record`] each record in order, [`Verifier::finish`] what only all of them
/// show (last_uid, the counts, the sync CRCs). The problems come in the order `verify`
/// lists them. Holds one header and the running totals, nothing per record.
#[derive(Debug)]
pub struct Verifier<'c, N: AsRef<[u8]> = Vec<u8>> {
    shape: IndexShape,
    flag_names: Option<&'c [Option<N>]>,
    annot_crcs: Option<&'c BTreeMap<u32, u32>>,
    /// The 0-based number of the next record.
    next: u32,
    prev_uid: u32,
    derived: Derived,
}

impl<'c, N: AsRef<[u8]>> Verifier<'c, N> {
    /// Starts on an index of `shape` whose first bytes (the header at least) are `head`,
    /// pushing the header's problems to `out`: its CRC, a nonzero spare byte, records the
    /// header claims but the file does not hold.
    pub fn new(
        shape: &IndexShape,
        head: &[u8],
        ctx: &VerifyContext<'c, N>,
        out: &mut Vec<IndexProblem>,
    ) -> Self {
        let h = &shape.header;
        let hcrc = shape.header_size.saturating_sub(4);
        let covered_bytes = head.get(..hcrc).unwrap_or(head);
        let computed = crc32(covered_bytes);
        if computed != h.header_crc {
            out.push(IndexProblem::HeaderCrc {
                stored: h.header_crc,
                computed,
            });
        }
        let covered = spare_ranges(header_slots(shape.version()), hcrc);
        if let Some(offset) = first_nonzero_spare(covered_bytes, &covered) {
            out.push(IndexProblem::HeaderSpare { offset });
        }
        if shape.present < h.num_records {
            out.push(IndexProblem::RecordsTruncated {
                num_records: h.num_records,
                present: shape.present,
            });
        }
        Verifier {
            shape: shape.clone(),
            flag_names: ctx.flag_names,
            annot_crcs: ctx.annot_crcs,
            next: 0,
            prev_uid: 0,
            derived: Derived::start(),
        }
    }

    /// Judges the next record (`bytes`: its bytes, from the file in record order), pushing
    /// its problems to `out` (CRC, a UID not above the previous one, a modseq above
    /// `highestmodseq`), and returns it decoded. `None`, with nothing judged: `bytes` is
    /// shorter than a record, or all the records present were given already.
    pub fn record(&mut self, bytes: &[u8], out: &mut Vec<IndexProblem>) -> Option<IndexRecord> {
        if self.next >= self.shape.present {
            return None;
        }
        let v = self.shape.version();
        let r = parse_record(bytes, v).ok()?;
        let covered = bytes.get(..self.shape.record_size.saturating_sub(4))?;
        let i = self.next;
        self.next += 1;
        let h = &self.shape.header;
        let offset = self.shape.record_offset(i);
        let computed = crc32(covered);
        if computed != r.record_crc {
            out.push(IndexProblem::RecordCrc {
                record: i,
                uid: r.uid,
                offset,
                stored: r.record_crc,
                computed,
            });
        }
        // `mailbox_reconstruct` wipes a record whose uid is not above the previous one.
        if r.uid <= self.prev_uid {
            out.push(IndexProblem::UidNotIncreasing {
                record: i,
                offset,
                uid: r.uid,
                prev_uid: self.prev_uid,
            });
        }
        self.prev_uid = self.prev_uid.max(r.uid);
        if r.modseq > h.highestmodseq {
            out.push(IndexProblem::HighestModseqTooLow {
                highestmodseq: h.highestmodseq,
                record: i,
                uid: r.uid,
                modseq: r.modseq,
            });
        }
        let no_names: &[Option<N>] = &[];
        self.derived
            .add(&r, v, self.flag_names.unwrap_or(no_names), self.annot_crcs);
        Some(r)
    }

    /// Pushes the problems of the records given as a whole: `last_uid` below the highest
    /// UID, and every stored count and sync CRC that differs from the records'.
    pub fn finish(self, out: &mut Vec<IndexProblem>) {
        let v = self.shape.version();
        let h = &self.shape.header;
        let d = &self.derived;
        if h.last_uid < d.max_uid {
            out.push(IndexProblem::LastUidTooLow {
                last_uid: h.last_uid,
                max_uid: d.max_uid,
            });
        }
        let mut check = |field: &'static str, stored: u64, computed: u64| {
            if stored != computed {
                out.push(IndexProblem::CountMismatch {
                    field,
                    stored,
                    computed,
                });
            }
        };
        check("exists", h.exists.into(), d.exists.into());
        check("answered", h.answered.into(), d.answered.into());
        check("flagged", h.flagged.into(), d.flagged.into());
        check("deleted", h.deleted.into(), d.deleted.into());
        if v >= 14 {
            check("unseen", h.unseen.into(), d.unseen.into());
        }
        check(
            "quota_mailbox_used",
            h.quota_mailbox_used,
            d.quota_mailbox_used,
        );
        if v >= 18 {
            check(
                "quota_deleted_used",
                h.quota_deleted_used,
                d.quota_deleted_used,
            );
            check(
                "quota_expunged_used",
                h.quota_expunged_used,
                d.quota_expunged_used,
            );
        }
        if self.flag_names.is_some() {
            check(
                "sync_crc_basic",
                h.sync_crc_basic.into(),
                d.sync_crc_basic.into(),
            );
        }
        if v >= 13 && self.annot_crcs.is_some() {
            check(
                "sync_crc_annot",
                h.sync_crc_annot.into(),
                d.sync_crc_annot.into(),
            );
        }
    }
}

/// Iterator over an index's records, see [`Index::records`].
#[derive(Debug)]
pub struct Records<'i, 'a> {
    index: &'i Index<'a>,
    next: u32,
    done: bool,
}

impl Iterator for Records<'_, '_> {
    type Item = Result<IndexRecord, IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.index.num_records() {
            return None;
        }
        let r = self.index.record(self.next);
        self.next += 1;
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(uid: u32) -> IndexRecord {
        IndexRecord {
            uid,
            internaldate: 1_700_000_000 + u64::from(uid),
            sentdate: 1_699_990_000,
            size: 1000 + u64::from(uid),
            header_size: 400,
            gmtime: 1_700_000_100,
            cache_offset: 4 + 200 * u64::from(uid),
            last_updated: 1_700_000_500,
            system_flags: if uid % 2 == 0 {
                FLAG_SEEN | FLAG_ANSWERED
            } else {
                FLAG_FLAGGED
            },
            internal_flags: 0,
            user_flags: [if uid % 3 == 0 { 0b101 } else { 0 }, 0, 0, 0],
            content_lines: 0,
            savedate: 1_700_000_200,
            cache_version: 11,
            guid: guid_of(format!("message {uid}").as_bytes()),
            modseq: 10 + u64::from(uid),
            cid: 0x1234_5678_9abc_def0 + u64::from(uid),
            createdmodseq: 5 + u64::from(uid),
            basecid: 0,
            cache_crc: 0xdead_beef ^ uid,
            record_crc: 0,
        }
    }

    const NAMES: &[Option<&str>] = &[Some("$Forwarded"), None, Some("Junk")];

    /// A consistent mailbox of `version` with `n` records, written with real counts.
    fn sample_index(version: u32, n: u32) -> (IndexHeader, Vec<IndexRecord>, Vec<u8>) {
        let records: Vec<IndexRecord> = (1..=n)
            .map(|u| {
                let r = sample_record(u);
                let w = write_record(&r, version).unwrap();
                parse_record(&w, version).unwrap()
            })
            .collect();
        let d = derive(&records, version, NAMES, None);
        let mut h = IndexHeader {
            generation_no: 3,
            last_appenddate: 1_700_000_600,
            last_uid: n + 2,
            uidvalidity: 1_699_999_999,
            options: OPT_POP3_NEW_UIDL,
            highestmodseq: 100,
            deletedmodseq: 7,
            header_file_crc: 0x0102_0304,
            recentuid: 1,
            recenttime: 1_700_000_700,
            createdmodseq: 1,
            changes_epoch: 1_700_000_800,
            ..IndexHeader::default()
        };
        h.apply_derived(&d, version);
        let h = convert_header(
            &IndexHeader {
                minor_version: 17,
                ..h
            },
            version,
        )
        .unwrap();
        let bytes = write_index(&h, &records, version).unwrap();
        (h, records, bytes)
    }

    fn ctx<'a>(annots: &'a BTreeMap<u32, u32>) -> VerifyContext<'a, &'static str> {
        VerifyContext {
            flag_names: Some(NAMES),
            annot_crcs: Some(annots),
        }
    }

    #[test]
    fn every_version_round_trips_and_verifies_clean() {
        let none = BTreeMap::new();
        for version in MIN_VERSION..=MAX_VERSION {
            let (_, records, bytes) = sample_index(version, 5);
            let idx = Index::open(&bytes).unwrap();
            assert_eq!(idx.version(), version);
            assert_eq!(idx.num_records(), 5);
            assert_eq!(idx.verify(&ctx(&none)), vec![], "v{version}");
            let got: Vec<IndexRecord> = idx.records().map(Result::unwrap).collect();
            assert_eq!(got, records, "v{version}");
            let again = write_index(idx.header(), &got, version).unwrap();
            assert_eq!(again, bytes, "v{version}");
            assert_eq!(
                bytes.len(),
                header_size(version).unwrap() + 5 * record_size(version).unwrap()
            );
        }
    }

    #[test]
    fn v17_field_offsets_match_cyrus() {
        let mut r = sample_record(7);
        r.cache_offset = 0x0000_1234_5678_9abc;
        r.internal_flags = FLAG_INTERNAL_ARCHIVED;
        let b = write_record(&r, 17).unwrap();
        assert_eq!(b.len(), 112);
        assert_eq!(be32(&b, 0), 7);
        assert_eq!(be32(&b, 24), 0x5678_9abc);
        assert_eq!(be32(&b, 56), 0x1234_0000 | 11);
        assert_eq!(be32(&b, 32), FLAG_FLAGGED | FLAG_INTERNAL_ARCHIVED);
        assert_eq!(&b[60..80], &r.guid);
        assert_eq!(be64(&b, 88), r.cid);
        assert_eq!(be64(&b, 96), r.createdmodseq);
        assert_eq!(be32(&b, 104), r.cache_crc);
        assert_eq!(be32(&b, 108), crc32(&b[..108]));
        let back = parse_record(&b, 17).unwrap();
        assert_eq!(back.cache_offset, r.cache_offset);
        assert_eq!(back.cache_version, 11);
        assert_eq!(back.internal_flags, FLAG_INTERNAL_ARCHIVED);
    }

    #[test]
    fn old_records_keep_their_own_fields_only() {
        let mut r = sample_record(4);
        r.content_lines = 33;
        let b12 = write_record(&r, 12).unwrap();
        assert_eq!(
            (b12.len(), be32(&b12, 52), be32(&b12, 88)),
            (96, 33, r.cache_crc)
        );
        let p12 = parse_record(&b12, 12).unwrap();
        assert_eq!(
            (p12.cid, p12.savedate, p12.createdmodseq, p12.content_lines),
            (0, 0, 0, 33)
        );
        let b15 = write_record(&r, 15).unwrap();
        assert_eq!(
            (b15.len(), be32(&b15, 52), be32(&b15, 96)),
            (104, 1_700_000_200, r.cache_crc)
        );
        let p14 = parse_record(&write_record(&r, 14).unwrap(), 14).unwrap();
        assert_eq!((p14.cid, p14.savedate, p14.content_lines), (r.cid, 0, 33));
    }

    #[test]
    fn header_v12_leaves_v13_fields_as_zero_bytes() {
        let h = IndexHeader {
            pop3_show_after: 9,
            sync_crc_annot: 9,
            unseen: 9,
            ..Default::default()
        };
        let b = write_header(&h, 12).unwrap();
        assert_eq!(b.len(), 128);
        assert!(b[112..124].iter().all(|&x| x == 0));
        assert_eq!(be32(&b, 124), crc32(&b[..124]));
        let b13 = write_header(&h, 13).unwrap();
        assert_eq!(
            (be32(&b13, 112), be32(&b13, 120), be32(&b13, 124)),
            (9, 9, crc32(&b13[..124]))
        );
    }

    #[test]
    fn v19_and_v20_header_offsets() {
        let h = IndexHeader {
            exists: 0x11,
            options: 0x22,
            last_uid: 0x33,
            changes_epoch: 5,
            recentuid: 0x44,
            ..Default::default()
        };
        let b19 = write_header(&h, 19).unwrap();
        assert_eq!(
            (
                be32(&b19, 60),
                be32(&b19, 64),
                be32(&b19, 28),
                be32(&b19, 152)
            ),
            (0x11, 0x22, 0x33, 5)
        );
        let h = IndexHeader {
            quota_annot_used: 0x1_0000_0000,
            ..h
        };
        assert!(matches!(
            write_header(&h, 19),
            Err(IndexError::ValueTooLarge {
                field: "quota_annot_used",
                ..
            })
        ));
        let b20 = write_header(&h, 20).unwrap();
        assert_eq!(b20.len(), 192);
        assert_eq!(
            (be32(&b20, 88), be32(&b20, 184), be64(&b20, 160)),
            (0x33, 0x44, 5)
        );
        assert_eq!(be64(&b20, 152), 0x1_0000_0000);
    }

    #[test]
    fn thirty_two_bit_fields_never_sit_in_wide_slots() {
        // `set` narrows with `lo32`; this is only sound if every u32 field has a 4-byte slot.
        for v in MIN_VERSION..=MAX_VERSION {
            for sl in header_slots(v).filter(|sl| sl.width == 8) {
                let mut h = IndexHeader::default();
                h.set(sl.field, u64::MAX - 1);
                assert_eq!(h.get(sl.field), u64::MAX - 1, "{:?}", sl.field);
            }
            for sl in record_slots(v).filter(|sl| sl.width == 8) {
                let mut r = IndexRecord::default();
                r.set(sl.field, u64::MAX - 1);
                assert_eq!(r.get(sl.field), u64::MAX - 1, "{:?}", sl.field);
            }
        }
    }

    #[test]
    fn layouts_do_not_overlap_and_fit() {
        for v in MIN_VERSION..=MAX_VERSION {
            let hs = header_size(v).unwrap();
            let mut used = vec![0u8; hs];
            for sl in header_slots(v) {
                for b in &mut used[sl.off..sl.off + sl.width] {
                    *b += 1;
                }
            }
            assert!(used[..hs - 4].iter().all(|&c| c <= 1), "header v{v}");
            let rs = record_size(v).unwrap();
            let mut used = vec![0u8; rs];
            for sl in record_slots(v) {
                for b in &mut used[sl.off..sl.off + sl.width] {
                    *b += 1;
                }
            }
            assert!(
                used[..rs - 4].iter().all(|&c| c == 1),
                "record v{v} has gaps or overlaps"
            );
        }
    }

    #[test]
    fn open_rejects_bad_magic_fields() {
        let (_, _, bytes) = sample_index(17, 1);
        assert!(matches!(
            Index::open(&bytes[..100]),
            Err(IndexError::TooShort { need: 160, .. })
        ));
        assert!(matches!(
            Index::open(&bytes[..8]),
            Err(IndexError::TooShort { need: 12, .. })
        ));
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&11u32.to_be_bytes());
        assert_eq!(
            Index::open(&b).unwrap_err(),
            IndexError::UnsupportedVersion(11)
        );
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(Index::open(&b).unwrap_err(), IndexError::BadFormat(1));
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&128u32.to_be_bytes());
        assert!(matches!(
            Index::open(&b),
            Err(IndexError::BadStartOffset { got: 128, .. })
        ));
        let mut b = bytes.clone();
        b[16..20].copy_from_slice(&104u32.to_be_bytes());
        assert!(matches!(
            Index::open(&b),
            Err(IndexError::BadRecordSize { got: 104, .. })
        ));
    }

    #[test]
    fn huge_num_records_is_reported_not_trusted() {
        let (mut h, records, _) = sample_index(17, 2);
        h.num_records = u32::MAX;
        let mut bytes = write_header(&h, 17).unwrap();
        for r in &records {
            bytes.extend_from_slice(&write_record(r, 17).unwrap());
        }
        let idx = Index::open(&bytes).unwrap();
        assert_eq!(idx.records_present(), 2);
        let items: Vec<_> = idx.records().collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(
            items[2],
            Err(IndexError::RecordTruncated {
                index: 2,
                offset: 384,
                ..
            })
        ));
        let problems = idx.verify(&VerifyContext::<Vec<u8>>::default());
        assert!(problems.contains(&IndexProblem::RecordsTruncated {
            num_records: u32::MAX,
            present: 2
        }));
        assert!(matches!(
            idx.record(5),
            Err(IndexError::RecordTruncated { index: 5, .. })
        ));
    }

    #[test]
    fn verify_reports_every_problem() {
        let (_, _, mut bytes) = sample_index(17, 4);
        let none = BTreeMap::new();
        // Record 1's CRC, record 2's uid going backwards, a header spare byte, a record spare
        // byte (fixed up to keep its CRC valid) and a modseq above highestmodseq.
        bytes[160 + 112 + 3] ^= 0x01; // record 1 uid 2 -> 3: CRC now bad
        let r2 = 160 + 2 * 112;
        let mut rec = parse_record(&bytes[r2..r2 + 112], 17).unwrap();
        rec.uid = 1;
        rec.modseq = 1000;
        bytes[r2..r2 + 112].copy_from_slice(&write_record(&rec, 17).unwrap());
        bytes[150] = 7; // header spare (v17: 140..156)
        let idx = Index::open(&bytes).unwrap();
        let p = idx.verify(&ctx(&none));
        assert!(p.contains(&IndexProblem::HeaderSpare { offset: 150 }));
        assert!(p
            .iter()
            .any(|x| matches!(x, IndexProblem::HeaderCrc { .. })));
        assert!(p.iter().any(|x| matches!(
            x,
            IndexProblem::RecordCrc {
                record: 1,
                uid: 3,
                offset: 272,
                ..
            }
        )));
        assert!(p.contains(&IndexProblem::UidNotIncreasing {
            record: 2,
            offset: 384,
            uid: 1,
            prev_uid: 3
        }));
        assert!(p.iter().any(|x| matches!(
            x,
            IndexProblem::HighestModseqTooLow {
                record: 2,
                modseq: 1000,
                ..
            }
        )));
        assert!(p.iter().any(|x| matches!(
            x,
            IndexProblem::CountMismatch {
                field: "sync_crc_basic",
                ..
            }
        )));
        assert!(p.iter().any(|x| matches!(
            x,
            IndexProblem::CountMismatch {
                field: "sync_crc_annot",
                ..
            }
        )));
        // Without names/annotations the sync CRCs are not judged.
        let p = idx.verify(&VerifyContext::<Vec<u8>>::default());
        assert!(!p.iter().any(|x| matches!(
            x,
            IndexProblem::CountMismatch {
                field: "sync_crc_basic",
                ..
            }
        )));
    }

    #[test]
    fn verify_reports_counts_and_truncation() {
        let (mut h, mut records, _) = sample_index(16, 3);
        records[0].internal_flags = FLAG_INTERNAL_EXPUNGED;
        h.last_uid = 1;
        let mut bytes = write_index(&h, &records, 16).unwrap();
        let idx = Index::open(&bytes).unwrap();
        let p = idx.verify(&VerifyContext::<Vec<u8>>::default());
        assert!(p.contains(&IndexProblem::LastUidTooLow {
            last_uid: 1,
            max_uid: 3
        }));
        assert!(p.contains(&IndexProblem::CountMismatch {
            field: "exists",
            stored: 3,
            computed: 2
        }));
        assert!(p.iter().any(|x| matches!(
            x,
            IndexProblem::CountMismatch {
                field: "quota_mailbox_used",
                ..
            }
        )));
        bytes.truncate(bytes.len() - 1);
        let idx = Index::open(&bytes).unwrap();
        assert_eq!(idx.records_present(), 2);
    }

    #[test]
    fn derived_values_follow_cyrus_rules() {
        let mut a = sample_record(1); // flagged, unseen
        let mut b = sample_record(2); // seen, answered
        b.system_flags |= FLAG_DELETED;
        let mut c = sample_record(3);
        c.internal_flags = FLAG_INTERNAL_EXPUNGED;
        a.user_flags = [0b100, 0, 0, 0]; // "Junk"
        let d = derive([&a, &b, &c], 17, NAMES, None);
        assert_eq!(
            (d.exists, d.answered, d.flagged, d.deleted, d.unseen),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(d.quota_mailbox_used, a.size + b.size);
        assert_eq!(d.quota_deleted_used, b.size);
        assert_eq!(d.quota_expunged_used, c.size);
        assert_eq!((d.max_uid, d.max_modseq), (3, c.modseq));
        assert_eq!(
            d.sync_crc_basic,
            crc_basic(&a, 17, NAMES) ^ crc_basic(&b, 17, NAMES)
        );
        assert_eq!(crc_basic(&c, 17, NAMES), 0);
        // The flag name is lowercased and the user flag contributes.
        let line = format!(
            "1 {} {} ({}) {} {}",
            a.modseq,
            a.last_updated,
            crc32(b"\\flagged") ^ crc32(b"junk"),
            a.internaldate,
            guid_hex(&a.guid)
        );
        assert_eq!(crc_basic(&a, 17, NAMES), crc32(line.as_bytes()));
        let mut extra = BTreeMap::new();
        extra.insert(1, 0x1111);
        extra.insert(3, 0x2222); // expunged: must not count
        let d2 = derive([&a, &b, &c], 17, NAMES, Some(&extra));
        assert_eq!(d2.sync_crc_annot, d.sync_crc_annot ^ 0x1111);
        let empty: [&IndexRecord; 0] = [];
        let e = derive(empty, 17, NAMES, None);
        assert_eq!((e.sync_crc_basic, e.sync_crc_annot), (0, CRC_INIT_ANNOT));
    }

    #[test]
    fn virtual_annotations_by_version() {
        let r = sample_record(5);
        let ns = |n: &str| format!("{IMAP_ANNOT_NS}{n}");
        let thrid = crc_annot(5, &ns("thrid"), "", format!("{:x}", r.cid).as_bytes());
        let save = crc_annot(5, &ns("savedate"), "", b"1700000200");
        let cms = crc_annot(5, &ns("createdmodseq"), "", b"10");
        assert_eq!(crc_virtannot(&r, 12), 0);
        assert_eq!(crc_virtannot(&r, 13), thrid);
        assert_eq!(crc_virtannot(&r, 15), thrid ^ save);
        assert_eq!(crc_virtannot(&r, 17), thrid ^ save ^ cms);
        assert!(is_virtual_annot(&ns("savedate"), 15));
        assert!(!is_virtual_annot(&ns("savedate"), 14));
        assert!(!is_virtual_annot("/comment", 17));
        assert_eq!(
            crc_annot(7, "/comment", "alice", b"hi"),
            crc32(b"7 /comment alice hi")
        );
    }

    #[test]
    fn conversion_down_and_up_through_v17() {
        for n in MIN_VERSION..=17 {
            let (_, _, bytes) = sample_index(n, 3);
            let f17 = convert_index(&bytes, 17).unwrap();
            assert_eq!(Index::open(&f17).unwrap().version(), 17);
            assert_eq!(convert_index(&f17, n).unwrap(), bytes, "v{n}");
        }
    }

    #[test]
    fn conversion_rules() {
        let mut r = sample_record(9);
        r.content_lines = 12;
        let r12 = convert_record(&r, 17, 12).unwrap();
        assert_eq!(
            (r12.cid, r12.savedate, r12.createdmodseq, r12.content_lines),
            (0, 0, 0, 0)
        );
        assert_eq!(r12.cache_offset, r.cache_offset);
        let r20 = convert_record(&r, 17, 20).unwrap();
        assert_eq!(r20.internaldate, r.internaldate * 1_000_000_000);
        assert_eq!(
            convert_record(&r20, 20, 17).unwrap().internaldate,
            r.internaldate
        );
        let h = IndexHeader {
            minor_version: 15,
            last_repack_time: 77,
            options: OPT_IMAP_CONDSTORE | OPT_IMAP_SHAREDSEEN,
            unseen: 4,
            ..Default::default()
        };
        let h17 = convert_header(&h, 17).unwrap();
        assert_eq!(
            (h17.changes_epoch, h17.options, h17.unseen),
            (77, OPT_IMAP_SHAREDSEEN, 4)
        );
        assert_eq!(
            (h17.start_offset, h17.record_size, h17.minor_version),
            (160, 112, 17)
        );
        let h13 = convert_header(&h, 13).unwrap();
        assert_eq!(
            (h13.unseen, h13.start_offset, h13.record_size),
            (0, 128, 104)
        );
        assert_eq!(
            convert_header(&h, 21).unwrap_err(),
            IndexError::UnsupportedVersion(21)
        );
    }

    #[test]
    fn writers_refuse_values_that_do_not_fit() {
        let mut r = sample_record(1);
        r.size = 1 << 32;
        assert!(matches!(
            write_record(&r, 17),
            Err(IndexError::ValueTooLarge { field: "size", .. })
        ));
        assert!(write_record(&r, 20).is_ok());
        r.size = 1;
        r.cache_offset = 1 << 48;
        assert!(matches!(
            write_record(&r, 20),
            Err(IndexError::ValueTooLarge {
                field: "cache_offset",
                ..
            })
        ));
        assert_eq!(
            write_record(&r, 11).unwrap_err(),
            IndexError::UnsupportedVersion(11)
        );
    }

    #[test]
    fn guid_helpers() {
        let g = guid_of(b"abc");
        assert_eq!(guid_hex(&g), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            parse_guid_hex("A9993E364706816ABA3E25717850C26C9CD0D89D"),
            Some(g)
        );
        assert_eq!(parse_guid_hex("a9993e"), None);
        assert_eq!(parse_guid_hex(&"zz".repeat(20)), None);
        assert_eq!(time_secs(5_500_000_000, 20), 5);
        assert_eq!(time_secs(5_500_000_000, 17), 5_500_000_000);
    }

    // -----------------------------------------------------------------------------------------
    // Files written by real Cyrus 3.6.1 (fixtures/, see fixtures/README.md)

    use crate::format::cache;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }

    fn find_indexes(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                find_indexes(&p, out);
            } else if p.file_name().is_some_and(|n| n == "cyrus.index") {
                out.push(p);
            }
        }
    }

    /// User flag names from a 3.6 dlist `cyrus.header` (`U (...)`; `NIL` = hole). A test-only
    /// reader: the real one is `format::header`'s.
    fn flag_names(header: &[u8]) -> Vec<Option<Vec<u8>>> {
        let text = String::from_utf8_lossy(header);
        let Some(start) = text.find(" U (") else {
            return vec![];
        };
        let rest = &text[start + 4..];
        let end = rest.find(')').unwrap();
        rest[..end]
            .split(' ')
            .map(|t| (t != "NIL").then(|| t.as_bytes().to_vec()))
            .collect()
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn every_fixture_index_parses_verifies_and_rewrites_identically() {
        let mut paths = Vec::new();
        find_indexes(&fixtures(), &mut paths);
        assert!(
            paths.len() >= 30,
            "fixtures missing: found {} cyrus.index",
            paths.len()
        );
        let no_annots = BTreeMap::new();
        let mut records_seen = 0;
        for path in &paths {
            let dir = path.parent().unwrap();
            let bytes = read(path);
            let idx = Index::open(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let v = idx.version();
            let names = flag_names(&read(&dir.join("cyrus.header")));
            // Sync CRC of the annotations: v17 mailboxes have no per-message annotations in
            // these fixtures; the v12–v16 copies keep cid/savedate/createdmodseq in their
            // (not saved) cyrus.annotations, checked in `index_versions_*` below.
            let annots = (v == 17).then_some(&no_annots);
            let ctx = VerifyContext {
                flag_names: Some(&names[..]),
                annot_crcs: annots,
            };
            let problems = idx.verify(&ctx);
            assert_eq!(problems, vec![], "{}", path.display());
            let records: Vec<IndexRecord> = idx.records().map(Result::unwrap).collect();
            records_seen += records.len();
            let again = write_index(idx.header(), &records, v).unwrap();
            assert_eq!(
                again,
                bytes,
                "{} does not re-serialise identically",
                path.display()
            );

            // Every record's cache entry is in range, parses, matches cache_crc and
            // re-serialises to its own bytes.
            let cache_path = dir.join("cyrus.cache");
            if records.is_empty() && !cache_path.exists() {
                continue; // Cyrus creates cyrus.cache on the first append.
            }
            let cache_bytes = read(&cache_path);
            for r in &records {
                let e = cache::check_record_entry(&cache_bytes, r.cache_offset, r.cache_crc)
                    .unwrap_or_else(|e| panic!("{} uid {}: {e}", path.display(), r.uid));
                assert_eq!(cache::write_entry(&e.items).unwrap(), e.raw);
            }
            // The file is nothing but entries; with no repack leaks every record's entry is
            // one of them.
            let offsets: Vec<u64> = cache::entries(&cache_bytes)
                .map(|e| e.unwrap().offset)
                .collect();
            for r in &records {
                assert!(
                    offsets.contains(&r.cache_offset),
                    "{} uid {}",
                    path.display(),
                    r.uid
                );
            }
        }
        assert!(
            records_seen >= 100,
            "only {records_seen} records in the fixtures"
        );
    }

    fn version_dir(v: u32) -> PathBuf {
        fixtures().join(format!("index-versions/v{v}"))
    }

    fn load(v: u32) -> (IndexHeader, Vec<IndexRecord>, Vec<u8>) {
        let bytes = read(&version_dir(v).join("cyrus.index"));
        let idx = Index::open(&bytes).unwrap();
        assert_eq!(idx.version(), v);
        let recs = idx.records().map(Result::unwrap).collect();
        (idx.header().clone(), recs, bytes)
    }

    #[test]
    fn index_versions_round_trip_through_v17() {
        for n in 12..=16 {
            let (_, _, bytes) = load(n);
            let f17 = convert_index(&bytes, 17).unwrap();
            assert_eq!(
                convert_index(&f17, n).unwrap(),
                bytes,
                "v{n} -> v17 -> v{n}"
            );
        }
    }

    #[test]
    fn index_versions_conversion_matches_reconstruct_v() {
        // `reconstruct -V N` repacks: generation_no, last_repack_time and the recounted
        // quota_annot_used are the repack's; everything else must be what converting the v17
        // file gives.
        let (h17, r17, _) = load(17);
        for n in 12..=16 {
            let (hn, _, bytes) = load(n);
            let mut h = convert_header(&h17, n).unwrap();
            h.generation_no = hn.generation_no;
            h.last_repack_time = hn.last_repack_time;
            // The recount after the repack adds the bytes of the values moved into
            // cyrus.annotations (createdmodseq below v16, savedate below v15, thrid below v13).
            let moved: usize = r17
                .iter()
                .map(|r| {
                    let mut len = 0;
                    if n < 16 && r.createdmodseq != 0 {
                        len += r.createdmodseq.to_string().len();
                    }
                    if n < 15 && r.savedate != 0 {
                        len += r.savedate.to_string().len();
                    }
                    if n < 13 && r.cid != 0 {
                        len += format!("{:x}", r.cid).len();
                    }
                    len
                })
                .sum();
            if n >= 13 {
                // (v12 has no quota_annot_used field.)
                assert_eq!(
                    hn.quota_annot_used,
                    h17.quota_annot_used + moved as u64,
                    "v{n}"
                );
            }
            h.quota_annot_used = hn.quota_annot_used;
            // v16 was made from the original v17; the v17 fixture came back up from v12 and,
            // like any trip through v12–v15, lost the mailbox createdmodseq (Cyrus keeps it
            // nowhere else).
            assert_eq!(h17.createdmodseq, 0);
            h.createdmodseq = hn.createdmodseq;
            let recs: Vec<IndexRecord> = r17
                .iter()
                .map(|r| convert_record(r, 17, n).unwrap())
                .collect();
            assert_eq!(write_index(&h, &recs, n).unwrap(), bytes, "v17 -> v{n}");
        }
    }

    #[test]
    fn index_versions_sync_crcs_with_fields_moved_to_annotations() {
        // Below v16/v15/v13 Cyrus keeps createdmodseq/savedate/thrid in cyrus.annotations,
        // where they count as ordinary annotations: the header CRC stays the same.
        let (h17, r17, _) = load(17);
        let names = flag_names(&read(&version_dir(17).join("cyrus.header")));
        for n in 12..=17 {
            let (hn, rn, _) = load(n);
            let extra: BTreeMap<u32, u32> = r17
                .iter()
                .map(|r| (r.uid, crc_virtannot(r, 17) ^ crc_virtannot(r, n)))
                .collect();
            let d = derive(&rn, n, &names, Some(&extra));
            assert_eq!(d.sync_crc_basic, hn.sync_crc_basic, "v{n}");
            assert_eq!(d.sync_crc_basic, h17.sync_crc_basic);
            if n >= 13 {
                assert_eq!(d.sync_crc_annot, hn.sync_crc_annot, "v{n}");
            }
            assert_eq!(d.sync_crc_annot, h17.sync_crc_annot, "v{n}");
            let idx_bytes = read(&version_dir(n).join("cyrus.index"));
            let idx = Index::open(&idx_bytes).unwrap();
            let ctx = VerifyContext {
                flag_names: Some(&names[..]),
                annot_crcs: Some(&extra),
            };
            assert_eq!(idx.verify(&ctx), vec![], "v{n}");
        }
    }

    /// `Index::verify` as it was before it was built on [`Verifier`] (all records collected,
    /// then derived): the reference the streaming verifier must agree with.
    fn whole_buffer_verify<N: AsRef<[u8]>>(
        idx: &Index<'_>,
        ctx: &VerifyContext<'_, N>,
    ) -> Vec<IndexProblem> {
        let mut out = Vec::new();
        let v = idx.version();
        let h = idx.header();
        let hb = idx.header_bytes();
        let hcrc = hb.len() - 4;
        let computed = crc32(&hb[..hcrc]);
        if computed != h.header_crc {
            out.push(IndexProblem::HeaderCrc {
                stored: h.header_crc,
                computed,
            });
        }
        let covered = spare_ranges(header_slots(v), hcrc);
        if let Some(offset) = first_nonzero_spare(&hb[..hcrc], &covered) {
            out.push(IndexProblem::HeaderSpare { offset });
        }
        if idx.records_present() < h.num_records {
            out.push(IndexProblem::RecordsTruncated {
                num_records: h.num_records,
                present: idx.records_present(),
            });
        }
        let rcrc = record_size(v).unwrap() - 4;
        let mut records = Vec::new();
        let mut prev_uid = 0u32;
        for i in 0..idx.records_present() {
            let bytes = idx.record_bytes(i).unwrap();
            let r = parse_record(bytes, v).unwrap();
            let offset = idx.record_offset(i);
            let computed = crc32(&bytes[..rcrc]);
            if computed != r.record_crc {
                out.push(IndexProblem::RecordCrc {
                    record: i,
                    uid: r.uid,
                    offset,
                    stored: r.record_crc,
                    computed,
                });
            }
            if r.uid <= prev_uid {
                out.push(IndexProblem::UidNotIncreasing {
                    record: i,
                    offset,
                    uid: r.uid,
                    prev_uid,
                });
            }
            prev_uid = prev_uid.max(r.uid);
            if r.modseq > h.highestmodseq {
                out.push(IndexProblem::HighestModseqTooLow {
                    highestmodseq: h.highestmodseq,
                    record: i,
                    uid: r.uid,
                    modseq: r.modseq,
                });
            }
            records.push(r);
        }
        let no_names: &[Option<N>] = &[];
        let d = derive(
            &records,
            v,
            ctx.flag_names.unwrap_or(no_names),
            ctx.annot_crcs,
        );
        if h.last_uid < d.max_uid {
            out.push(IndexProblem::LastUidTooLow {
                last_uid: h.last_uid,
                max_uid: d.max_uid,
            });
        }
        let mut check = |field: &'static str, stored: u64, computed: u64| {
            if stored != computed {
                out.push(IndexProblem::CountMismatch {
                    field,
                    stored,
                    computed,
                });
            }
        };
        check("exists", h.exists.into(), d.exists.into());
        check("answered", h.answered.into(), d.answered.into());
        check("flagged", h.flagged.into(), d.flagged.into());
        check("deleted", h.deleted.into(), d.deleted.into());
        if v >= 14 {
            check("unseen", h.unseen.into(), d.unseen.into());
        }
        check(
            "quota_mailbox_used",
            h.quota_mailbox_used,
            d.quota_mailbox_used,
        );
        if v >= 18 {
            check(
                "quota_deleted_used",
                h.quota_deleted_used,
                d.quota_deleted_used,
            );
            check(
                "quota_expunged_used",
                h.quota_expunged_used,
                d.quota_expunged_used,
            );
        }
        if ctx.flag_names.is_some() {
            check(
                "sync_crc_basic",
                h.sync_crc_basic.into(),
                d.sync_crc_basic.into(),
            );
        }
        if v >= 13 && ctx.annot_crcs.is_some() {
            check(
                "sync_crc_annot",
                h.sync_crc_annot.into(),
                d.sync_crc_annot.into(),
            );
        }
        out
    }

    /// The streaming verifier as a file reader drives it: the shape from the header bytes
    /// alone and the file's length, then each record from its own copy of the bytes.
    fn streamed_verify<N: AsRef<[u8]>>(
        bytes: &[u8],
        ctx: &VerifyContext<'_, N>,
    ) -> Result<(Vec<IndexProblem>, Vec<IndexRecord>), IndexError> {
        let head = &bytes[..bytes.len().min(MAX_HEADER_SIZE)];
        let shape = IndexShape::open(head, bytes.len() as u64)?;
        let mut out = Vec::new();
        let mut v = Verifier::new(&shape, head, ctx, &mut out);
        let mut records = Vec::new();
        for i in 0..shape.present {
            let at = shape.record_offset(i) as usize;
            let rec = bytes[at..at + shape.record_size].to_vec();
            records.push(v.record(&rec, &mut out).expect("a whole record"));
        }
        // Nothing past the records present is taken.
        assert!(v.record(&[0u8; V20_RECORD_SIZE], &mut out).is_none());
        v.finish(&mut out);
        Ok((out, records))
    }

    /// The same problems, in the same order, from the whole-buffer verify, `Index::verify`
    /// and the streaming verifier fed from a file's head; and the same open errors.
    fn assert_verifiers_agree(bytes: &[u8], what: &str) -> Vec<IndexProblem> {
        let none = BTreeMap::new();
        let with = ctx(&none);
        let without = VerifyContext::<Vec<u8>>::default();
        let idx = match Index::open(bytes) {
            Ok(i) => i,
            Err(e) => {
                assert_eq!(streamed_verify(bytes, &with).unwrap_err(), e, "{what}");
                return Vec::new();
            }
        };
        assert_eq!(
            streamed_verify(bytes, &without).unwrap().0,
            whole_buffer_verify(&idx, &without),
            "{what} (no context)"
        );
        let old = whole_buffer_verify(&idx, &with);
        assert_eq!(idx.verify(&with), old, "{what}");
        let (streamed, records) = streamed_verify(bytes, &with).unwrap();
        assert_eq!(streamed, old, "{what} (streamed)");
        let held: Vec<IndexRecord> = idx.records().filter_map(Result::ok).collect();
        assert_eq!(records, held, "{what}");
        old
    }

    #[test]
    fn streaming_verifier_agrees_with_the_whole_buffer_verify() {
        let has = |p: &[IndexProblem], f: &dyn Fn(&IndexProblem) -> bool| p.iter().any(f);
        for version in MIN_VERSION..=MAX_VERSION {
            let (h, records, clean) = sample_index(version, 6);
            let hs = header_size(version).unwrap();
            let rs = record_size(version).unwrap();
            assert_eq!(assert_verifiers_agree(&clean, "clean"), vec![]);

            // Bad header CRC (a counted field changed behind the CRC's back).
            let mut b = clean.clone();
            b[OFFSET_LAST_UID + 3] ^= 0x40;
            let p = assert_verifiers_agree(&b, "header crc");
            assert!(has(&p, &|x| matches!(x, IndexProblem::HeaderCrc { .. })));

            // Truncated: the last record cut short, then the header claiming more.
            let b = &clean[..clean.len() - rs / 2];
            let p = assert_verifiers_agree(b, "truncated");
            assert!(p.contains(&IndexProblem::RecordsTruncated {
                num_records: 6,
                present: 5
            }));
            assert!(has(&p, &|x| matches!(
                x,
                IndexProblem::CountMismatch {
                    field: "exists",
                    ..
                }
            )));
            assert_eq!(
                assert_verifiers_agree(&clean[..hs - 1], "no header"),
                vec![]
            );
            let p = assert_verifiers_agree(&clean[..hs], "no records");
            assert!(p.contains(&IndexProblem::RecordsTruncated {
                num_records: 6,
                present: 0
            }));

            // Out-of-order UIDs, each record's CRC kept valid; and a bad record CRC.
            let mut swapped = records.clone();
            swapped.swap(1, 4);
            let mut b = write_index(&h, &swapped, version).unwrap();
            let p = assert_verifiers_agree(&b, "uid order");
            assert!(has(&p, &|x| matches!(
                x,
                IndexProblem::UidNotIncreasing { record: 2, .. }
            )));
            b[hs + 3 * rs + 20] ^= 0xff;
            let p = assert_verifiers_agree(&b, "record crc");
            assert!(has(&p, &|x| matches!(
                x,
                IndexProblem::RecordCrc { record: 3, .. }
            )));

            // Wrong counts, last_uid and highestmodseq, written with a valid header CRC.
            let mut wrong = h.clone();
            wrong.exists += 1;
            wrong.deleted = 9;
            wrong.unseen = 9;
            wrong.quota_mailbox_used = 1;
            wrong.quota_deleted_used = 5;
            wrong.sync_crc_basic ^= 1;
            wrong.sync_crc_annot ^= 1;
            wrong.last_uid = 2;
            wrong.highestmodseq = 12;
            let b = write_index(&wrong, &records, version).unwrap();
            let p = assert_verifiers_agree(&b, "counts");
            assert!(p.contains(&IndexProblem::LastUidTooLow {
                last_uid: 2,
                max_uid: 6
            }));
            assert!(p.contains(&IndexProblem::CountMismatch {
                field: "exists",
                stored: 7,
                computed: 6
            }));
            assert!(has(&p, &|x| matches!(
                x,
                IndexProblem::HighestModseqTooLow { record: 5, .. }
            )));

            // Every single byte flipped in turn, and the file cut at every length.
            for at in 0..clean.len() {
                let mut b = clean.clone();
                b[at] ^= 0x5a;
                assert_verifiers_agree(&b, &format!("v{version} flip {at}"));
            }
            for len in (0..clean.len()).step_by(7) {
                assert_verifiers_agree(&clean[..len], &format!("v{version} cut {len}"));
            }
        }
    }

    #[test]
    fn fixture_guids_are_sha1_of_the_message_files() {
        let (_, r17, _) = load(17);
        for r in &r17 {
            let msg = read(&version_dir(17).join(format!("{}.", r.uid)));
            assert_eq!(guid_of(&msg), r.guid, "uid {}", r.uid);
            assert_eq!(msg.len() as u64, r.size);
        }
    }
}
