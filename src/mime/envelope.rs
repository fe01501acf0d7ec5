//! The ENVELOPE cache item (`message_write_envelope`, `message_write_address`;
//! docs: cyrus-mailbox-format.md §4.7).

use super::address::{parse_list, Address};
use super::{unstructured, write_nstring};

/// The raw values of the header fields the envelope is built from: for each field, the bytes
/// after the colon up to, not including, the field's final line end (`None` if absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeFields<'a> {
    pub date: Option<&'a [u8]>,
    pub subject: Option<&'a [u8]>,
    pub from: Option<&'a [u8]>,
    pub sender: Option<&'a [u8]>,
    pub reply_to: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    pub cc: Option<&'a [u8]>,
    pub bcc: Option<&'a [u8]>,
    pub in_reply_to: Option<&'a [u8]>,
    pub message_id: Option<&'a [u8]>,
}

/// The bytes of `raw` up to its first NUL: Cyrus holds header values as C strings.
pub(crate) fn c_str(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}

/// An unstructured field as `message_parse_string` stores it (NUL ends the value).
pub(crate) fn string_field(raw: Option<&[u8]>) -> Option<Vec<u8>> {
    raw.map(|r| unstructured(c_str(r)))
}

/// An address field as `message_parse_address` stores it; an empty list is "no header".
pub(crate) fn address_field(raw: Option<&[u8]>) -> Vec<Address> {
    raw.map(parse_list).unwrap_or_default()
}

/// `message_write_address`: `NIL` or `((name route mailbox domain)...)`.
fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        write_nstring(out, None);
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        write_nstring(out, a.name.as_deref());
        out.push(b' ');
        write_nstring(out, a.route.as_deref());
        out.push(b' ');
        write_nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        write_nstring(out, a.domain.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// Append the ENVELOPE text for these fields. Sender and Reply-To fall back to From when
/// they are absent or yield no address.
pub fn write_envelope(out: &mut Vec<u8>, f: &EnvelopeFields<'_>) {
    let from = address_field(f.from);
    let sender = address_field(f.sender);
    let reply_to = address_field(f.reply_to);
    out.push(b'(');
    write_nstring(out, string_field(f.date).as_deref());
    out.push(b' ');
    write_nstring(out, string_field(f.subject).as_deref());
    out.push(b' ');
    write_addresses(out, &from);
    out.push(b' ');
    write_addresses(out, if sender.is_empty() { &from } else { &sender });
    out.push(b' ');
    write_addresses(
        out,
        if reply_to.is_empty() {
            &from
        } else {
            &reply_to
        },
    );
    for list in [f.to, f.cc, f.bcc] {
        out.push(b' ');
        write_addresses(out, &address_field(list));
    }
    out.push(b' ');
    write_nstring(out, string_field(f.in_reply_to).as_deref());
    out.push(b' ');
    write_nstring(out, string_field(f.message_id).as_deref());
    out.push(b')');
}
