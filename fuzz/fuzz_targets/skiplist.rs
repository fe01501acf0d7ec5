#![no_main]
//! skiplist: open/replay, iteration, get, verify and the raw layer on arbitrary bytes.
use cyrkit::format::cyrusdb::KeyOrder;
use cyrkit::format::skiplist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = skiplist::parse_raw(data) {
        assert_eq!(raw.to_bytes(), data);
    }
    for order in [KeyOrder::Signed, KeyOrder::Mbox] {
        let Ok(db) = skiplist::SkiplistDb::open_with_order(data, order) else {
            continue;
        };
        let _ = db.verify();
        // The live set is kept sorted in this order, so get finds every key.
        for (k, v) in db.iter().filter_map(Result::ok) {
            assert_eq!(db.get(k).unwrap(), Some(v));
        }
    }
});
