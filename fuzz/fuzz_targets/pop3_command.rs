#![no_main]
//! The POP3 command-line parser and the RETR/TOP dot-stuffer on arbitrary bytes: no panic,
//! and the stuffer's output is the same however the input is split.
use cyrkit::server::pop3::{command, stuff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let command::Parsed::Command { arg, .. } = command::parse_line(data) {
        if let Some(a) = arg {
            let _ = command::parse_msgno(a);
        }
        let _ = command::parse_top(arg);
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
