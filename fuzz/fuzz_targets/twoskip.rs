#![no_main]
//! twoskip: the reader, get, verify and the raw layer on arbitrary bytes; the raw layer
//! must reproduce any input it accepts, and a transaction planned on a file that opens
//! clean must leave a file that still opens and verifies the same way.
use cyrkit::format::cyrusdb::{KeyOrder, LevelRng, Op};
use cyrkit::format::twoskip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = twoskip::parse_raw(data) {
        assert_eq!(raw.to_bytes(), data);
    }
    for order in [KeyOrder::Raw, KeyOrder::Mbox] {
        let Ok(db) = twoskip::TwoskipDb::open_with_order(data, order) else {
            continue;
        };
        let pairs: Vec<_> = db.iter().take(10_000).collect();
        if !db.verify().is_empty() {
            continue;
        }
        // A sound file (in this order): get must find every key iteration found.
        for (k, v) in pairs.iter().filter_map(|r| r.as_ref().ok()) {
            if let Ok(got) = db.get(k) {
                assert_eq!(got, Some(*v));
            }
        }
        if order == KeyOrder::Raw {
            let ops = [Op::Set(b"fuzz", b"value"), Op::Delete(b"user.a")];
            if let Ok(Some(txn)) = twoskip::append_transaction(data, &ops, order, &mut LevelRng::new(1)) {
                let after = txn.apply(data);
                let db2 = twoskip::TwoskipDb::open(&after).expect("our transaction must open");
                assert_eq!(db2.verify(), vec![]);
                assert_eq!(db2.get(b"fuzz").unwrap(), Some(&b"value"[..]));
            }
        }
    }
});
