#![no_main]
//! Name conversions must never panic, and every accepted name must round-trip through the
//! internal, dbname and (where representable) external spellings.
use cyrkit::spool::config::VirtDomains;
use cyrkit::spool::names::{MboxName, NameConfig};
use cyrkit::spool::paths::{legacy_rel_path, HashMode};
use libfuzzer_sys::fuzz_target;

fn check(name: &MboxName, nc: &NameConfig) {
    let internal = name.to_internal();
    assert_eq!(&MboxName::from_internal(&internal, nc).unwrap(), name);
    let db = name.to_dbname();
    assert_eq!(&MboxName::from_dbname(&db, nc).unwrap(), name);
    if let Ok(ext) = name.to_external(nc) {
        assert_eq!(&MboxName::from_external(&ext, nc).unwrap(), name);
    }
    let rel = legacy_rel_path(name, HashMode { hashimapspool: true, fulldirhash: true });
    for c in rel.components() {
        assert!(matches!(c, std::path::Component::Normal(_)), "{rel:?}");
    }
    if let Some(p) = name.parent(nc) {
        let _ = p.child(b"x", nc);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let nc = NameConfig {
        unixhierarchysep: flags & 1 != 0,
        virtdomains: match flags >> 1 & 3 {
            0 => VirtDomains::Off,
            1 => VirtDomains::Userid,
            _ => VirtDomains::On,
        },
        ..NameConfig::default()
    };
    for parsed in [
        MboxName::from_internal(input, &nc),
        MboxName::from_dbname(input, &nc),
        MboxName::from_external(input, &nc),
        MboxName::user_inbox(input, &nc),
    ] {
        if let Ok(name) = parsed {
            check(&name, &nc);
        }
    }
});
