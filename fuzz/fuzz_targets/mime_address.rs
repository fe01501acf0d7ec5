#![no_main]
//! Address parsing, ENVELOPE and search-form writers must not panic on any header value, and
//! the envelope must be deterministic.
use cyrkit::mime::address::parse_list;
use cyrkit::mime::envelope::{write_envelope, EnvelopeFields};
use cyrkit::mime::headers::cached_headers;
use cyrkit::mime::search::write_search_addrs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let list = parse_list(data);
    // Every address has a mailbox unless it ends a group.
    for a in &list {
        assert!(a.mailbox.is_some() || (a.domain.is_none() && a.name.is_none()));
    }
    let f = EnvelopeFields {
        from: Some(data),
        to: Some(data),
        subject: Some(data),
        ..Default::default()
    };
    let mut a = Vec::new();
    write_envelope(&mut a, &f);
    let mut b = Vec::new();
    write_envelope(&mut b, &f);
    assert_eq!(a, b);
    let _ = write_search_addrs(Some(data), data.first().is_some_and(|b| b & 1 == 1));
    let _ = cached_headers(data, 3);
    let _ = cyrkit::mime::date::parse_date(Some(data));
});
