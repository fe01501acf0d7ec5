//! The SECTION cache item: the binary part table with per-part charset, content GUID,
//! decoded size and line count (`message_write_section`, `_charset`, `_nocharset`; docs:
//! cyrus-mailbox-format.md §4.10). Written for a synthetic MESSAGE/RFC822 wrapper around the
//! whole message, walking the tree with an explicit stack.

use super::message::{Body, Tree};

/// A node of the section walk: the wrapper around the message, or a part.
#[derive(Clone, Copy)]
enum Node {
    Wrapper,
    Part(usize),
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_offsets(out: &mut Vec<u8>, b: &Body<'_>) {
    put32(out, b.header_offset);
    put32(out, b.header_size);
    put32(out, b.content_offset);
}

/// `message_write_nocharset`: `0x0000FFFF`, GUID, decoded size, lines (zeros for no body).
fn write_nocharset(out: &mut Vec<u8>, b: Option<&Body<'_>>) {
    put32(out, 0x0000_ffff);
    match b {
        Some(b) => {
            out.extend_from_slice(&b.content_guid);
            put32(out, b.decoded_size);
            put32(out, b.content_lines);
        }
        None => out.extend_from_slice(&[0; 28]),
    }
}

/// `message_write_charset`: encoding and charset name (as spelled, NUL-padded to a multiple
/// of 4 with at least one NUL), then GUID, decoded size, lines.
fn write_charset(out: &mut Vec<u8>, b: &Body<'_>) {
    let encoding = b.transfer_encoding().number();
    let name = b.charset_name();
    let padlen = name.map_or(0, |n| {
        let l = (n.len() / 4 + 1) * 4;
        if l > 0xffff {
            0
        } else {
            l
        }
    });
    put32(out, ((padlen as u32 & 0xffff) << 16) | (encoding & 0xff));
    if let (Some(n), true) = (name, padlen > 0) {
        out.extend_from_slice(n);
        out.resize(out.len() + padlen - n.len(), 0);
    }
    out.extend_from_slice(&b.content_guid);
    put32(out, b.decoded_size);
    put32(out, b.content_lines);
}

fn is_zero_part_multipart(b: &Body<'_>) -> bool {
    b.is_type(b"MULTIPART") && b.parts.is_empty()
}

/// The SECTION item of a parsed message.
pub fn write_section(tree: &Tree<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![Node::Wrapper];
    while let Some(node) = stack.pop() {
        let sub = match node {
            Node::Wrapper => Some(0),
            Node::Part(i) => {
                let b = tree.body(i);
                if b.is(b"MESSAGE", b"RFC822") {
                    b.subpart
                } else {
                    if b.parts.is_empty() {
                        put32(&mut out, 0);
                        continue;
                    }
                    // a multipart: no part 0
                    put32(&mut out, b.parts.len() as u32 + 1);
                    out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
                    out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
                    write_nocharset(&mut out, None);
                    for &p in &b.parts {
                        let pb = tree.body(p);
                        put_offsets(&mut out, pb);
                        if is_zero_part_multipart(pb) {
                            put32(&mut out, 0);
                            write_nocharset(&mut out, Some(pb));
                        } else {
                            put32(&mut out, pb.content_size);
                            write_charset(&mut out, pb);
                        }
                    }
                    stack.extend(b.parts.iter().rev().map(|&p| Node::Part(p)));
                    continue;
                }
            }
        };
        let Some(sub) = sub else {
            put32(&mut out, 0);
            continue;
        };
        let m = tree.body(sub);
        if !m.parts.is_empty() {
            // part 0 is the message; its multipart's parts are numbered from 1
            put32(&mut out, m.parts.len() as u32 + 1);
            put_offsets(&mut out, m);
            put32(&mut out, m.content_size);
            write_nocharset(&mut out, Some(m));
            for &p in &m.parts {
                let pb = tree.body(p);
                put_offsets(&mut out, pb);
                put32(
                    &mut out,
                    if is_zero_part_multipart(pb) {
                        0
                    } else {
                        pb.content_size
                    },
                );
                write_charset(&mut out, pb);
            }
            stack.extend(m.parts.iter().rev().map(|&p| Node::Part(p)));
        } else {
            put32(&mut out, 2);
            put_offsets(&mut out, m);
            put32(&mut out, m.content_size);
            write_nocharset(&mut out, Some(m));
            put_offsets(&mut out, m);
            if m.is_type(b"MULTIPART") {
                put32(&mut out, 0);
                write_nocharset(&mut out, None);
            } else {
                put32(&mut out, m.content_size);
                write_charset(&mut out, m);
            }
            stack.push(Node::Part(sub));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::message::parse_tree;
    use crate::mime::ParseOptions;

    #[test]
    fn single_part_layout() {
        let m = b"Subject: x\r\n\r\nhello\r\n";
        let t = parse_tree(m, &ParseOptions::default()).unwrap();
        let s = write_section(&t);
        // 2 entries of 16 + 32 + charset name, then the leaf's 0
        let mut want = Vec::new();
        for v in [2u32, 0, 14, 14, 7, 0xffff] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        let g = t.body(0).content_guid;
        want.extend_from_slice(&g);
        for v in [7u32, 1, 0, 14, 14, 7, 0x000c_0000] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        want.extend_from_slice(b"us-ascii\0\0\0\0");
        want.extend_from_slice(&g);
        for v in [7u32, 1, 0] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(s, want);
    }
}
