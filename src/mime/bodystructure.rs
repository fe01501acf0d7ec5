//! The BODY and BODYSTRUCTURE cache items (`message_write_body`; docs:
//! cyrus-mailbox-format.md §4.7). The tree is walked with an explicit stack, so nesting depth
//! is limited by memory only.

use super::envelope::write_envelope;
use super::message::{default_text_type, Tree};
use super::params::{Disposition, Param};
use super::write_nstring;

/// Work left while writing: a part to open, or the tail of an open one.
enum Task {
    Open(usize),
    /// `" " subtype [ext] ")"` of a multipart.
    MultipartTail(usize),
    /// `" " lines [ext] ")"` of a message/rfc822 part.
    Rfc822Tail(usize),
}

/// The BODYSTRUCTURE (`ext` = true) or BODY text of part `idx` of `tree`.
pub fn write_body(tree: &Tree<'_>, idx: usize, ext: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![Task::Open(idx)];
    while let Some(task) = stack.pop() {
        match task {
            Task::Open(i) => {
                let b = tree.body(i);
                if b.is_type(b"MULTIPART") {
                    if b.parts.is_empty() {
                        // 0-part multiparts are illegal: written as an empty text part
                        write_zero_text(&mut out, ext);
                        continue;
                    }
                    out.push(b'(');
                    stack.push(Task::MultipartTail(i));
                    stack.extend(b.parts.iter().rev().map(|&p| Task::Open(p)));
                    continue;
                }
                write_leaf_head(
                    &mut out,
                    &b.content_type.typ,
                    &b.content_type.subtype,
                    &b.content_type.params,
                    b.id.as_deref(),
                    b.description.as_deref(),
                    b.encoding.as_deref(),
                    b.content_size,
                );
                if b.is_type(b"TEXT") {
                    out.extend_from_slice(format!(" {}", b.content_lines).as_bytes());
                } else if b.is(b"MESSAGE", b"RFC822") {
                    if let Some(sub) = b.subpart {
                        out.push(b' ');
                        write_envelope(&mut out, &tree.body(sub).fields);
                        out.push(b' ');
                        stack.push(Task::Rfc822Tail(i));
                        stack.push(Task::Open(sub));
                        continue;
                    }
                }
                write_leaf_tail(&mut out, tree, i, ext);
            }
            Task::MultipartTail(i) => {
                let b = tree.body(i);
                out.push(b' ');
                write_nstring(&mut out, Some(&b.content_type.subtype));
                if ext {
                    out.push(b' ');
                    write_params(&mut out, &b.content_type.params);
                    out.push(b' ');
                    write_disposition(&mut out, b.disposition.as_ref());
                    out.push(b' ');
                    write_language(&mut out, &b.language);
                    out.push(b' ');
                    write_nstring(&mut out, b.location.as_deref());
                }
                out.push(b')');
            }
            Task::Rfc822Tail(i) => {
                out.extend_from_slice(format!(" {}", tree.body(i).content_lines).as_bytes());
                write_leaf_tail(&mut out, tree, i, ext);
            }
        }
    }
    out
}

/// `"(" type SP subtype SP params SP id SP description SP encoding SP size`.
#[allow(clippy::too_many_arguments)]
fn write_leaf_head(
    out: &mut Vec<u8>,
    typ: &[u8],
    subtype: &[u8],
    params: &[Param],
    id: Option<&[u8]>,
    description: Option<&[u8]>,
    encoding: Option<&[u8]>,
    size: u32,
) {
    out.push(b'(');
    write_nstring(out, Some(typ));
    out.push(b' ');
    write_nstring(out, Some(subtype));
    out.push(b' ');
    write_params(out, params);
    out.push(b' ');
    write_nstring(out, id);
    out.push(b' ');
    write_nstring(out, description);
    out.push(b' ');
    write_nstring(out, Some(encoding.unwrap_or(b"7BIT")));
    out.extend_from_slice(format!(" {size}").as_bytes());
}

/// `[ext: SP md5 SP disposition SP language SP location] ")"` of a non-multipart part.
fn write_leaf_tail(out: &mut Vec<u8>, tree: &Tree<'_>, i: usize, ext: bool) {
    let b = tree.body(i);
    if ext {
        out.push(b' ');
        write_nstring(out, b.md5.as_deref());
        out.push(b' ');
        write_disposition(out, b.disposition.as_ref());
        out.push(b' ');
        write_language(out, &b.language);
        out.push(b' ');
        write_nstring(out, b.location.as_deref());
    }
    out.push(b')');
}

/// What a 0-part multipart is written as: an empty `TEXT/PLAIN; CHARSET=us-ascii` part.
fn write_zero_text(out: &mut Vec<u8>, ext: bool) {
    let ct = default_text_type();
    write_leaf_head(out, &ct.typ, &ct.subtype, &ct.params, None, None, None, 0);
    out.extend_from_slice(b" 0");
    if ext {
        out.extend_from_slice(b" NIL NIL NIL NIL");
    }
    out.push(b')');
}

/// `NIL` or `(attr value ...)`.
pub fn write_params(out: &mut Vec<u8>, params: &[Param]) {
    if params.is_empty() {
        write_nstring(out, None);
        return;
    }
    out.push(b'(');
    for (n, p) in params.iter().enumerate() {
        if n > 0 {
            out.push(b' ');
        }
        write_nstring(out, Some(&p.attribute));
        out.push(b' ');
        write_nstring(out, Some(&p.value));
    }
    out.push(b')');
}

fn write_disposition(out: &mut Vec<u8>, d: Option<&Disposition>) {
    let Some(d) = d else {
        write_nstring(out, None);
        return;
    };
    out.push(b'(');
    write_nstring(out, Some(&d.value));
    out.push(b' ');
    write_params(out, &d.params);
    out.push(b')');
}

fn write_language(out: &mut Vec<u8>, tags: &[Vec<u8>]) {
    if tags.is_empty() {
        write_nstring(out, None);
        return;
    }
    out.push(b'(');
    for (n, t) in tags.iter().enumerate() {
        if n > 0 {
            out.push(b' ');
        }
        write_nstring(out, Some(t));
    }
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::message::parse_tree;
    use crate::mime::ParseOptions;

    fn bs(m: &[u8], ext: bool) -> String {
        let t = parse_tree(m, &ParseOptions::default()).unwrap();
        String::from_utf8(write_body(&t, 0, ext)).unwrap()
    }

    #[test]
    fn single_text_part() {
        let m = b"Subject: x\r\n\r\nhello\r\n";
        assert_eq!(
            bs(m, false),
            r#"("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 7 1)"#
        );
        assert_eq!(
            bs(m, true),
            r#"("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)"#
        );
    }

    #[test]
    fn zero_part_multipart_is_fake_text() {
        let m = b"Content-Type: multipart/mixed\r\n\r\nraw\r\n";
        assert_eq!(
            bs(m, true),
            r#"("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)"#
        );
    }

    #[test]
    fn multipart_with_ext() {
        let m = b"Content-Type: multipart/mixed; boundary=b\r\nContent-Language: en\r\n\r\n--b\r\nContent-Type: image/png; name=a.png\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\nAAAA\r\n--b--\r\n";
        assert_eq!(
            bs(m, true),
            r#"(("IMAGE" "PNG" ("NAME" "a.png") NIL NIL "BASE64" 4 NIL ("ATTACHMENT" NIL) NIL NIL) "MIXED" ("BOUNDARY" "b") NIL ("EN") NIL)"#
        );
        assert_eq!(
            bs(m, false),
            r#"(("IMAGE" "PNG" ("NAME" "a.png") NIL NIL "BASE64" 4) "MIXED")"#
        );
    }

    #[test]
    fn message_rfc822_part() {
        let m = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n";
        assert_eq!(
            bs(m, false),
            r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 6 1) 3)"#
        );
    }
}
