#![no_main]
//! Fuzz the MIME parser that produces cache entries: any bytes parse without panicking
//! (or fail only with a typed error), with small `maxheaderlines` / `boundary_limit` taken
//! from the first byte so the limits are exercised too. The items frame into a cache entry
//! that the cache codec reads back unchanged.
use cyrkit::format::cache::{self, CacheEntry};
use cyrkit::mime::message::{parse_message, MimeError};
use cyrkit::mime::ParseOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, msg)) = data.split_first() else {
        return;
    };
    let opts = ParseOptions {
        rfc2047_utf8: knobs & 1 != 0,
        maxheaderlines: usize::from((knobs >> 1) & 7),
        boundary_limit: usize::from(knobs >> 4),
    };
    match parse_message(msg, &opts) {
        Ok(p) => {
            assert_eq!(p.size, msg.len() as u64);
            assert!(u64::from(p.header_size) <= p.size);
            let items: [&[u8]; 10] = std::array::from_fn(|i| p.items[i].as_slice());
            let entry = cache::write_entry(&items).expect("items fit");
            let mut file = vec![0, 0, 0, 0];
            file.extend_from_slice(&entry);
            let back = CacheEntry::parse(&file, 4).expect("own entry parses");
            assert_eq!(back.items, items);
        }
        Err(MimeError::Empty) => assert!(msg.is_empty()),
        Err(MimeError::TooDeep { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
});
