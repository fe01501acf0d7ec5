#![no_main]
//! Fuzz `cyrus.cache` entry parsing: every entry from the start and one at an offset taken
//! from the input. A parsed entry re-serialises to the same framing (only padding bytes, which
//! Cyrus writes as NULs but never reads, and a last padding cut at EOF may differ), and the
//! rewritten entry parses back to the same items.
use cyrkit::format::cache::{self, CacheEntry};
use libfuzzer_sys::fuzz_target;

fn check(e: &CacheEntry<'_>) {
    let w = cache::write_entry(&e.items).expect("items from a file fit");
    assert!(w.len() >= e.len() && w.len() - e.len() <= 3);
    let mut file = vec![0, 0, 0, 0];
    file.extend_from_slice(&w);
    let back = CacheEntry::parse(&file, 4).expect("own output parses");
    assert_eq!(back.items, e.items);
    assert_eq!(back.len(), w.len());
}

fuzz_target!(|data: &[u8]| {
    let _ = cache::generation(data);
    for e in cache::entries(data).take(1000).flatten() {
        check(&e);
    }
    if data.len() >= 8 {
        let off = u64::from(u32::from_be_bytes([data[4], data[5], data[6], data[7]]));
        if let Ok(e) = CacheEntry::parse(data, off) {
            check(&e);
            cache::check_record_entry(data, off, e.crc()).expect("own CRC matches");
        }
    }
});
