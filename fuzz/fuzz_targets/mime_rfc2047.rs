#![no_main]
//! RFC 2047 decoding and charset lookup must not panic and must produce valid UTF-8 when
//! the input holds no raw 8-bit text (the us-ascii default replaces 8-bit bytes).
use cyrkit::mime::charset;
use cyrkit::mime::rfc2047::{decode_header, encode_nonascii_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ascii = decode_header(data, false);
    let _ = decode_header(data, true);
    // Cyrus's lenient UTF-8 decoder only yields valid UTF-8 (surrogates become U+FFFD);
    // encoding_rs output is valid too; only a decoded NUL truncates.
    assert!(std::str::from_utf8(&ascii).is_ok(), "{ascii:?}");
    if let Some(d) = charset::decoder(data.get(..data.len().min(20)).unwrap_or(&[])) {
        let _ = d.decode(data);
    }
    let enc = encode_nonascii_param(data);
    assert!(enc.starts_with(b"=?UTF-8?Q?") && enc.ends_with(b"?="));
});
