#![no_main]
use cyrkit::format::header::{self, HeaderFormat};
use libfuzzer_sys::fuzz_target;

// Parse must never panic; a parsed header written in either layout must read back to
// the same fields (the text layout may refuse unrepresentable fields, and has no name
// or type).
fuzz_target!(|data: &[u8]| {
    let Ok(h) = header::parse(data) else { return };
    let _ = header::header_file_crc(data);
    // Only fields that would need a literal (which breaks the one-line layout) may fail.
    let d = match h.write_as(HeaderFormat::Dlist) {
        Ok(d) => d,
        Err(e) => {
            assert_eq!(e, header::HeaderError::LiteralInDlistLine);
            return;
        }
    };
    let hd = header::parse(&d).expect("dlist output must parse");
    assert_eq!(hd.uniqueid, h.uniqueid);
    assert_eq!(hd.name, h.name);
    assert_eq!(hd.mbtype, h.mbtype);
    assert_eq!(hd.quotaroot, h.quotaroot);
    assert_eq!(hd.acl, h.acl);
    assert_eq!(hd.user_flags, h.user_flags);
    assert_eq!(hd.write_as(HeaderFormat::Dlist).unwrap(), d);
    if let Ok(t) = h.write_as(HeaderFormat::Text) {
        let ht = header::parse(&t).expect("text output must parse");
        assert_eq!(ht.uniqueid, h.uniqueid);
        assert_eq!(ht.user_flags, h.user_flags);
        assert_eq!(ht.write_as(HeaderFormat::Text).unwrap(), t);
    }
});
