#![no_main]
//! Fuzz `cyrus.index` parsing: open, read every record, verify, and check that
//! re-serialising what was read reproduces the input bytes whenever the CRCs were valid;
//! and that a reader holding only the header bytes (IndexShape + Verifier, as mbcheck reads
//! through a window) sees the same shape, records and problems.
use cyrkit::format::index::{self, Index, IndexShape, Verifier, VerifyContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(index::MAX_HEADER_SIZE)];
    let shape = IndexShape::open(head, data.len() as u64);
    let idx = match Index::open(data) {
        Ok(i) => i,
        Err(e) => {
            assert_eq!(shape, Err(e));
            return;
        }
    };
    assert_eq!(shape.as_ref(), Ok(idx.shape()));
    let v = idx.version();
    let names: Vec<Option<Vec<u8>>> = vec![Some(b"Junk".to_vec()), None, Some(b"$X".to_vec())];
    let annots = std::collections::BTreeMap::new();
    let problems = idx.verify(&VerifyContext {
        flag_names: Some(&names),
        annot_crcs: Some(&annots),
    });
    let records: Vec<_> = idx.records().filter_map(Result::ok).collect();
    let ctx = VerifyContext {
        flag_names: Some(&names[..]),
        annot_crcs: Some(&annots),
    };
    let mut streamed = Vec::new();
    let mut verifier = Verifier::new(idx.shape(), head, &ctx, &mut streamed);
    for (i, r) in records.iter().enumerate() {
        let at = idx.shape().record_offset(i as u32) as usize;
        let rec = data[at..at + idx.shape().record_size].to_vec();
        assert_eq!(verifier.record(&rec, &mut streamed).as_ref(), Some(r));
    }
    verifier.finish(&mut streamed);
    assert_eq!(streamed, problems);
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
