#![no_main]
//! Fuzz `cyrus.index` parsing: open, read every record, verify, and check that
//! re-serialising what was read reproduces the input bytes whenever the CRCs were valid.
use cyrkit::format::index::{self, Index, VerifyContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = Index::open(data) else { return };
    let v = idx.version();
    let names: Vec<Option<Vec<u8>>> = vec![Some(b"Junk".to_vec()), None, Some(b"$X".to_vec())];
    let annots = std::collections::BTreeMap::new();
    let problems = idx.verify(&VerifyContext {
        flag_names: Some(&names),
        annot_crcs: Some(&annots),
    });
    let records: Vec<_> = idx.records().filter_map(Result::ok).collect();
    let header_ok = !problems.iter().any(|p| {
        matches!(
            p,
            index::IndexProblem::HeaderCrc { .. } | index::IndexProblem::HeaderSpare { .. }
        )
    });
    if header_ok {
        let h = index::write_header(idx.header(), v).expect("a parsed header re-serialises");
        assert_eq!(h, idx.header_bytes());
    }
    for (i, r) in records.iter().enumerate() {
        let bytes = idx.record_bytes(i as u32).unwrap();
        let w = index::write_record(r, v).expect("a parsed record re-serialises");
        if index::record_crc_ok(bytes, v) {
            assert_eq!(w, bytes);
        }
        for to in index::MIN_VERSION..=index::MAX_VERSION {
            if let Ok(c) = index::convert_record(r, v, to) {
                let _ = index::write_record(&c, to);
            }
        }
    }
    let _ = index::derive(&records, v, &names, None);
});
