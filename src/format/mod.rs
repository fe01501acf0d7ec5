//! Pure codecs over bytes for every Cyrus on-disk format cyrkit reads or writes.
//!
//! Nothing in here opens a file, prints, or knows about clap: readers take `&[u8]`,
//! writers return `Vec<u8>`. Every reader treats its input as hostile (lengths and
//! offsets are bounds-checked, nothing panics, nothing allocates from an unchecked length).

pub mod cache;
pub mod crc;
pub mod cyrusdb;
pub mod dlist;
pub mod flat;
pub mod header;
pub mod index;
pub mod mboxlist;
pub mod quota;
pub mod skiplist;
pub mod twoskip;
