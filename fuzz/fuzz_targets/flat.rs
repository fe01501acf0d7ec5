#![no_main]
//! flat: escaping, line parsing, lookup and the raw layer on arbitrary bytes; a file
//! re-written from what was read must read back the same.
use cyrkit::format::flat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(flat::parse_raw(data).to_bytes(), data);
    assert_eq!(&*flat::decode(&flat::encode(data)), data);
    let _ = flat::verify(data);
    let Ok(db) = flat::FlatDb::open(data) else {
        return;
    };
    let pairs: Vec<_> = db.iter().filter_map(Result::ok).collect();
    if db.verify().is_empty() {
        for (k, v) in &pairs {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
        }
    }
    if let Ok(again) = flat::write_fresh(&pairs) {
        let db2 = flat::FlatDb::open(&again).unwrap();
        assert_eq!(db2.verify(), vec![]);
        assert_eq!(db2.len(), pairs.len());
    }
});
