#![no_main]
//! The POP3 command-line parser, the login-name parser and the RETR/TOP dot-stuffer on
//! arbitrary bytes: no panic, a login name gives a non-empty user id without the `recent:`
//! prefix, and the stuffer's output is the same however the input is split.
use cyrkit::server::pop3::{command, login, stuff, Pop3Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let command::Parsed::Command { arg, .. } = command::parse_line(data) {
        if let Some(a) = arg {
            let _ = command::parse_msgno(a);
        }
        let _ = command::parse_top(arg);
    }
    for flags in 0u8..4 {
        let cfg = Pop3Config {
            popsubfolders: flags & 1 != 0,
            virtdomains: flags & 2 != 0,
            dot_separator: flags & 2 != 0,
            ..Pop3Config::default()
        };
        if let Some(t) = login::parse_login_name(data, &cfg) {
            assert!(!t.userid.is_empty() && !t.userid.starts_with('@'));
            assert!(cfg.virtdomains || !t.userid.contains('@'));
            assert!(cfg.popsubfolders || t.subfolder.is_none());
            assert!(t.userid.len() <= data.len());
        }
    }
    let limit = data.first().map(|&b| u32::from(b % 8));
    let whole = stuff::stuff_all(data, limit);
    let cut = data.len() / 2;
    let mut s = stuff::Stuffer::new(limit);
    let mut out = Vec::new();
    s.push(&data[..cut], &mut out);
    s.push(&data[cut..], &mut out);
    s.finish(&mut out);
    assert_eq!(out, whole);
    assert!(whole.ends_with(b".\r\n"));
});
