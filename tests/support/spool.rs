//! Editing fixture copies the way a damage or an interrupted writer leaves them.
#![allow(dead_code)]

use std::path::Path;

use cyrkit::format::{header, index};

/// Point a mailbox's cyrus.header at another quota root, keeping the index's header CRC in
/// step (as a buggy Cyrus release would have left it).
pub fn set_pointer(dir: &Path, root: Option<&[u8]>) {
    let hp = dir.join("cyrus.header");
    let mut h = header::parse(&std::fs::read(&hp).unwrap()).unwrap();
    h.quotaroot = root.map(<[u8]>::to_vec);
    let bytes = h.write().unwrap();
    std::fs::write(&hp, &bytes).unwrap();
    let ip = dir.join("cyrus.index");
    let mut buf = std::fs::read(&ip).unwrap();
    let mut ih = index::parse_header(&buf).unwrap();
    ih.header_file_crc = header::header_file_crc(&bytes);
    let hb = index::write_header(&ih, ih.minor_version).unwrap();
    buf[..hb.len()].copy_from_slice(&hb);
    std::fs::write(&ip, buf).unwrap();
}
