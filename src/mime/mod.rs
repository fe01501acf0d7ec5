//! The message parser that feeds `cyrus.cache`: it reproduces, byte for byte, the ten cache
//! items and the record fields Cyrus 3.6's `message_parse` (imap/message.c) derives from a
//! message file (docs: cyrus-mailbox-format.md §4, §5, §9).
//!
//! Pure: bytes in, bytes out; no file I/O. Everything is byte-oriented over the whole file
//! as Cyrus parses it (no charset conversion during structure parsing).
//!
//! Modules:
//! - [`message`]: the entry point [`message::parse_message`]; header blocks, bodies,
//!   multipart and message/rfc822 recursion, boundaries (`message_parse_*`).
//! - [`params`]: Content-Type / Content-Disposition / Content-Language values, RFC 2231.
//! - [`bodystructure`]: the BODY and BODYSTRUCTURE texts.
//! - [`section`]: the binary SECTION item with per-part content GUIDs.
//! - [`decode`]: quoted-printable and base64 content decoders as Cyrus implements them.
//! - [`address`]: the RFC 822 address parser (lib/parseaddr.c).
//! - [`envelope`]: the ENVELOPE text.
//! - [`search`]: the FROM/TO/CC/BCC search-form items and the SUBJECT item.
//! - [`rfc2047`]: encoded-word decoding (`charset_parse_mimeheader`).
//! - [`charset`]: charset names Cyrus (with ICU) knows, and decoders for them.
//! - [`headers`]: the HEADERS item (which raw header fields are cached).
//! - [`date`]: Date header → sentdate (local midnight) and gmtime.

pub mod address;
pub mod bodystructure;
pub mod charset;
pub mod date;
pub mod decode;
pub mod envelope;
pub mod headers;
pub mod message;
pub mod params;
pub mod rfc2047;
pub mod search;
pub mod section;

/// Cache item numbers, in file order (cyrus-mailbox-format.md §4.2).
pub const ITEM_ENVELOPE: usize = 0;
pub const ITEM_BODYSTRUCTURE: usize = 1;
pub const ITEM_BODY: usize = 2;
pub const ITEM_SECTION: usize = 3;
pub const ITEM_HEADERS: usize = 4;
pub const ITEM_FROM: usize = 5;
pub const ITEM_TO: usize = 6;
pub const ITEM_CC: usize = 7;
pub const ITEM_BCC: usize = 8;
pub const ITEM_SUBJECT: usize = 9;
pub const NUM_ITEMS: usize = 10;

/// Options of imapd.conf that change what the parser produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// `rfc2047_utf8`: text outside encoded words is read as UTF-8 instead of US-ASCII.
    pub rfc2047_utf8: bool,
    /// `maxheaderlines` (default 1000): header lines past this are neither parsed nor cached.
    pub maxheaderlines: usize,
    /// `boundary_limit` (default 1000): deepest multipart nesting followed.
    pub boundary_limit: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            rfc2047_utf8: false,
            maxheaderlines: 1000,
            boundary_limit: 1000,
        }
    }
}

/// What `message_parse` derives from one message file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    /// The ten cache items, unpadded (the cache codec pads them).
    pub items: [Vec<u8>; NUM_ITEMS],
    /// File size in bytes.
    pub size: u64,
    /// Bytes of the top-level header block, blank line included.
    pub header_size: u32,
    /// Date header's date at local midnight (server time zone), 0 if none or unparsable.
    pub sentdate: u64,
    /// Date header as a UTC instant; 0 if none or unparsable (the caller then uses the
    /// internaldate, as Cyrus does).
    pub gmtime: u64,
    /// SHA-1 of the whole file.
    pub guid: [u8; 20],
}

impl ParsedMessage {
    /// The message's `cyrus.cache` entry (the ten items, padded as Cyrus writes them).
    pub fn cache_entry(&self) -> Result<Vec<u8>, crate::format::cache::CacheError> {
        let items: [&[u8]; NUM_ITEMS] = std::array::from_fn(|i| self.items[i].as_slice());
        crate::format::cache::write_entry(&items)
    }
}

/// Append the cache's nstring form of `s` (`message_write_nstring`): `NIL`, a quoted string,
/// or a literal `{N}\r\n` + bytes when the text is 1024 bytes or longer or holds NUL, a byte
/// ≥ 0x80, CR, LF, `"`, `%` or `\`.
pub fn write_nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    let Some(s) = s else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let needs_literal = s.len() >= 1024
        || s.iter()
            .any(|&b| b == 0 || b >= 0x80 || matches!(b, b'\r' | b'\n' | b'"' | b'%' | b'\\'));
    if needs_literal {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    }
}

/// An "unstructured" header value as Cyrus stores it (`message_parse_string`): leading SP/TAB
/// skipped, then every line break (CRLF or bare LF) removed, keeping the whitespace that
/// follows it; trailing whitespace kept. `raw` is the field's bytes after the colon up to,
/// not including, the field's final line ending.
pub fn unstructured(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len() - start);
    let mut rest = &raw[start..];
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\r' && tail.first() == Some(&b'\n') {
            rest = &tail[1..];
        } else if b == b'\n' {
            rest = tail;
        } else {
            out.push(b);
            rest = tail;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstructured_unfolds() {
        assert_eq!(
            unstructured(b"  Hello\r\n world \r\n\tagain"),
            b"Hello world \tagain"
        );
        assert_eq!(unstructured(b" a\nb"), b"ab");
        assert_eq!(unstructured(b""), b"");
        assert_eq!(unstructured(b" \t "), b"");
    }

    #[test]
    fn nstring_forms() {
        let w = |s: Option<&[u8]>| {
            let mut v = Vec::new();
            write_nstring(&mut v, s);
            v
        };
        assert_eq!(w(None), b"NIL");
        assert_eq!(w(Some(b"")), b"\"\"");
        assert_eq!(w(Some(b"us-ascii")), b"\"us-ascii\"");
        assert_eq!(w(Some(b"50%")), b"{3}\r\n50%");
        assert_eq!(w(Some("é".as_bytes())), b"{2}\r\n\xc3\xa9");
        assert_eq!(w(Some(&[b'a'; 1024])).len(), 1024 + 8);
    }
}
