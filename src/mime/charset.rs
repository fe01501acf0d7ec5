//! Charset names Cyrus 3.6 (with ICU 72) recognises, and decoders that turn bytes of such a
//! charset into Unicode the way `charset_lookupname` + the convert pipeline of lib/charset.c
//! do (docs: cyrus-mailbox-format.md §4.9, §9).

use encoding_rs::Encoding;

/// How a recognised charset is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Cyrus's us-ascii table: bytes ≥ 0x80 become U+FFFD, NUL is dropped.
    Ascii,
    /// Cyrus's own UTF-8 decoder (`utf8_2uni`).
    Utf8,
    /// An ICU converter, approximated by an encoding_rs decoder.
    Icu(&'static Encoding),
}

/// A streaming decoder for one charset (a `struct charset_charset` in a to-Unicode pipeline).
pub struct Decoder {
    kind: Kind,
}

/// Whether Cyrus 3.6 knows the charset `name` (`charset_lookupname` succeeds).
pub fn is_known(name: &[u8]) -> bool {
    decoder(name).is_some()
}

/// A decoder for `name`, or `None` when Cyrus would not recognise it.
pub fn decoder(name: &[u8]) -> Option<Decoder> {
    let lower = name.to_ascii_lowercase();
    let kind = match lower.as_slice() {
        b"us-ascii" | b"ascii" | b"usascii" | b"ansi_x3.4-1968" => Kind::Ascii,
        b"utf-8" | b"utf8" | b"unicode-1-1-utf-8" => Kind::Utf8,
        _ => Kind::Icu(Encoding::for_label_no_replacement(&lower)?),
    };
    Some(Decoder { kind })
}

impl Decoder {
    /// Decode `bytes` (a whole run) to UTF-8 into `out`.
    pub fn decode_all(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.kind {
            Kind::Ascii => {
                for &b in bytes {
                    if b >= 0x80 {
                        out.extend_from_slice("\u{fffd}".as_bytes());
                    } else if b != 0 {
                        out.push(b);
                    }
                }
            }
            Kind::Utf8 => out.extend_from_slice(String::from_utf8_lossy(bytes).as_bytes()),
            Kind::Icu(enc) => {
                let (s, _) = enc.decode_without_bom_handling(bytes);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}
