#![no_main]
use cyrkit::format::dlist;
use cyrkit::format::mboxlist::{self, MboxEntry, MboxKey};
use libfuzzer_sys::fuzz_target;

// Keys, dlist values (3.6 and 3.4 readings) and 2.4 text values: nothing may panic, and
// every typed entry must survive its own writer.
fuzz_target!(|data: &[u8]| {
    if let Ok(k) = MboxKey::decode(data) {
        assert_eq!(MboxKey::decode(&k.encode()).unwrap(), k);
    }
    if let Ok(tree) = mboxlist::parse_dlist_value(data) {
        assert_eq!(
            mboxlist::parse_dlist_value(&mboxlist::write_dlist_value(&tree)).unwrap(),
            tree
        );
        if let Ok(e) = MboxEntry::from_v36_dlist(&tree) {
            // Each record form re-reads to an entry that writes the same form again (the
            // I-record form has no `I`: the uniqueid is its key).
            let name = dlist::write(&e.to_v36_name_dlist());
            let back = MboxEntry::from_v36_dlist(&dlist::parse(&name).unwrap()).unwrap();
            assert_eq!(dlist::write(&back.to_v36_name_dlist()), name);
            let id = dlist::write(&e.to_v36_id_dlist());
            let back = MboxEntry::from_v36_dlist(&dlist::parse(&id).unwrap()).unwrap();
            assert_eq!(dlist::write(&back.to_v36_id_dlist()), id);
        }
        if let Ok(e) = MboxEntry::from_v34_dlist(&tree) {
            if let Ok(v) = e.to_v34_dlist() {
                let back = MboxEntry::from_v34_dlist(&v).unwrap();
                assert_eq!(back.to_v34_dlist().unwrap(), v);
            }
        }
    }
    if let Ok(e) = MboxEntry::parse_v24(data) {
        if let Ok(text) = e.to_v24() {
            let back = MboxEntry::parse_v24(&text).expect("2.4 writer output must parse");
            assert_eq!(back.to_v24().unwrap(), text);
        }
    }
});
