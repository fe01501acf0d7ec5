//! The FROM/TO/CC/BCC "search form" items (`message_write_searchaddr`) and the SUBJECT item
//! (docs: cyrus-mailbox-format.md §4.9).

use super::address::is_space;
use super::envelope::{address_field, string_field};
use super::rfc2047::decode_header;
use super::write_nstring;

/// RFC 5322 atext specials: a decoded display name made only of these, ASCII letters,
/// digits and whitespace is written bare.
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

/// The search-form item for an address header (`raw` as in [`super::envelope::EnvelopeFields`]);
/// empty when the header is absent or holds no address.
pub fn write_search_addrs(raw: Option<&[u8]>, utf8: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prevaddr = false;
    for a in address_field(raw) {
        let Some(domain) = &a.domain else {
            if let Some(group) = &a.mailbox {
                if prevaddr {
                    out.push(b',');
                }
                out.extend_from_slice(&decode_header(group, utf8));
                out.push(b':');
                prevaddr = false;
            } else {
                out.push(b';');
                prevaddr = true;
            }
            continue;
        };
        if prevaddr {
            out.push(b',');
        }
        if let Some(name) = &a.name {
            let name = decode_header(name, utf8);
            let bare = name
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || is_space(c) || ATEXT_SPECIALS.contains(&c));
            if bare {
                out.extend_from_slice(&name);
            } else {
                out.push(b'"');
                for &c in &name {
                    if c == b'\\' || c == b'"' {
                        out.push(b'\\');
                    }
                    out.push(c);
                }
                out.push(b'"');
            }
            out.push(b' ');
        }
        out.push(b'<');
        if let Some(route) = &a.route {
            out.extend(route.iter().map(u8::to_ascii_lowercase));
            out.push(b':');
        }
        if let Some(mailbox) = &a.mailbox {
            out.extend(mailbox.iter().map(u8::to_ascii_lowercase));
        }
        out.push(b'@');
        out.extend(domain.iter().map(u8::to_ascii_lowercase));
        out.push(b'>');
        prevaddr = true;
    }
    out
}

/// The SUBJECT item: nstring of the RFC 2047-decoded unstructured Subject (`NIL` if absent).
pub fn write_subject(raw: Option<&[u8]>, utf8: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let decoded = string_field(raw).map(|s| decode_header(&s, utf8));
    write_nstring(&mut out, decoded.as_deref());
    out
}
