#![no_main]
use cyrkit::format::quota;
use libfuzzer_sys::fuzz_target;

// Database values and quotalegacy files: no panics; whatever parses is written back to
// something that parses to the same record and writes identically.
fuzz_target!(|data: &[u8]| {
    if let Ok(q) = quota::parse_value(data) {
        let v = quota::write_value(&q);
        let back = quota::parse_value(&v).expect("writer output must parse");
        assert_eq!(quota::write_value(&back), v);
        if q.format == quota::QuotaFormat::Dlist {
            assert_eq!(back, q);
        }
    }
    // What a damaged record still yields must never panic; from a record as Cyrus writes
    // it, it reads every limit.
    let _ = quota::salvage_limits(data);
    if let Ok(mut q) = quota::parse_value(data) {
        q.format = quota::QuotaFormat::Dlist;
        let want: Vec<_> = q.resources.iter().map(|r| r.limit).collect();
        assert_eq!(quota::salvage_limits(&quota::write_value(&q)).to_vec(), want);
    }
    if let Ok(q) = quota::parse_legacy_file(data) {
        let f = quota::write_legacy_file(&q);
        let back = quota::parse_legacy_file(&f).expect("writer output must parse");
        assert_eq!(quota::write_legacy_file(&back), f);
    }
});
