//! The entry point of the parser: [`parse_message`] walks a message file the way Cyrus 3.6's
//! `message_parse_mapped` does (imap/message.c `message_parse_body`, `_headers`, `_content`,
//! `_multipart`, `message_pendingboundary`; docs: cyrus-mailbox-format.md §4.3, §4.4) and
//! assembles the ten cache items and the record fields.
//!
//! Cyrus recurses; this parser keeps its own stack of open multipart and message/rfc822
//! parts (and the writers walk the tree with explicit stacks), so hostile nesting cannot
//! overflow the thread stack. Multipart nesting is capped by `boundary_limit` exactly as in
//! Cyrus; message/rfc822 nesting, which Cyrus does not cap (it runs out of stack), is refused
//! past [`MAX_RFC822_DEPTH`], because every level hashes its whole content again.

use sha1::{Digest, Sha1};

use super::decode::{decoded_sha1, Encoding};
use super::envelope::{write_envelope, EnvelopeFields};
use super::params::{
    decode_extended_value, parse_content_type, parse_disposition, parse_encoding, parse_language,
    ContentType, Disposition, Param,
};
use super::{
    bodystructure, date, headers, search, section, unstructured, ParseOptions, ParsedMessage,
    ITEM_BCC, ITEM_BODY, ITEM_BODYSTRUCTURE, ITEM_CC, ITEM_ENVELOPE, ITEM_FROM, ITEM_HEADERS,
    ITEM_SECTION, ITEM_SUBJECT, ITEM_TO, NUM_ITEMS,
};

/// Deepest chain of message/rfc822 parts accepted. Each level's content GUID hashes all the
/// bytes below it, so the cost is depth × size; real mail nests a handful of levels.
pub const MAX_RFC822_DEPTH: usize = 200;

/// Why a message file cannot be parsed. Cyrus itself only refuses empty files; the other
/// cases are files on which Cyrus would overflow its 32-bit fields or its stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    #[error("the message file is empty (Cyrus refuses zero-length messages and reconstruct does not index them)")]
    Empty,
    #[error("the message file is {size} bytes; Cyrus's sizes and offsets are 32-bit, so it cannot exceed 4294967295")]
    TooLarge { size: u64 },
    #[error(
        "message/rfc822 parts nest more than {limit} deep (at offset {offset}); refusing to parse"
    )]
    TooDeep { limit: usize, offset: u64 },
}

/// One body part (`struct body`). Sizes are `u32` with wrapping arithmetic, as in Cyrus.
#[derive(Debug, Clone)]
pub struct Body<'a> {
    pub content_type: ContentType,
    pub id: Option<Vec<u8>>,
    pub description: Option<Vec<u8>>,
    pub encoding: Option<Vec<u8>>,
    pub md5: Option<Vec<u8>>,
    pub disposition: Option<Disposition>,
    pub language: Vec<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    pub header_offset: u32,
    pub header_size: u32,
    pub header_lines: u32,
    pub content_offset: u32,
    pub content_size: u32,
    pub content_lines: u32,
    pub boundary_size: u32,
    pub boundary_lines: u32,
    /// SHA-1 of the transfer-decoded content (zero when none was computed).
    pub content_guid: [u8; 20],
    pub decoded_size: u32,
    /// Multipart children, in order (`subpart[0..numparts]`).
    pub parts: Vec<usize>,
    /// The enclosed message of a message/rfc822 part.
    pub subpart: Option<usize>,
    /// Raw values of the fields the envelope and search items use (last occurrence wins).
    pub fields: EnvelopeFields<'a>,
    /// The header block as Cyrus's parsers saw it (a prefix of the part's header bytes).
    pub header_block: &'a [u8],
}

impl Body<'_> {
    fn new(content_type: ContentType) -> Self {
        Body {
            content_type,
            id: None,
            description: None,
            encoding: None,
            md5: None,
            disposition: None,
            language: Vec::new(),
            location: None,
            header_offset: 0,
            header_size: 0,
            header_lines: 0,
            content_offset: 0,
            content_size: 0,
            content_lines: 0,
            boundary_size: 0,
            boundary_lines: 0,
            content_guid: [0; 20],
            decoded_size: 0,
            parts: Vec::new(),
            subpart: None,
            fields: EnvelopeFields::default(),
            header_block: &[],
        }
    }

    pub fn is(&self, typ: &[u8], subtype: &[u8]) -> bool {
        self.content_type.typ == typ && self.content_type.subtype == subtype
    }

    pub fn is_type(&self, typ: &[u8]) -> bool {
        self.content_type.typ == typ
    }

    /// `message_parse_charset`'s encoding: from the CTE, and always none for MESSAGE/*.
    pub fn transfer_encoding(&self) -> Encoding {
        if self.is_type(b"MESSAGE") {
            return Encoding::None;
        }
        match self.encoding.as_deref() {
            None | Some(b"7BIT" | b"8BIT" | b"BINARY") => Encoding::None,
            Some(b"BASE64") => Encoding::Base64,
            Some(b"QUOTED-PRINTABLE") => Encoding::QuotedPrintable,
            Some(_) => Encoding::Unknown,
        }
    }

    /// `message_parse_charset`'s charset, as spelled in the message: TEXT parts take their
    /// last known `charset` parameter (else `us-ascii`), MESSAGE/RFC822 and non-text parts
    /// have none, other MESSAGE/* parts are `us-ascii`.
    pub fn charset_name(&self) -> Option<&[u8]> {
        if self.is_type(b"TEXT") {
            let mut name: &[u8] = b"us-ascii";
            for p in &self.content_type.params {
                if p.attribute.eq_ignore_ascii_case(b"charset")
                    && !p.value.is_empty()
                    && super::charset::is_known(&p.value)
                {
                    name = &p.value;
                }
            }
            Some(name)
        } else if self.is_type(b"MESSAGE") {
            if self.content_type.subtype == b"RFC822" {
                None
            } else {
                Some(b"us-ascii")
            }
        } else {
            None
        }
    }
}

/// The parsed tree; body 0 is the message itself.
#[derive(Debug, Clone)]
pub struct Tree<'a> {
    pub data: &'a [u8],
    pub bodies: Vec<Body<'a>>,
}

impl<'a> Tree<'a> {
    pub fn body(&self, i: usize) -> &Body<'a> {
        &self.bodies[i]
    }
}

/// `DEFAULT_CONTENT_TYPE`: `TEXT/PLAIN; CHARSET=us-ascii`.
pub fn default_text_type() -> ContentType {
    ContentType {
        typ: b"TEXT".to_vec(),
        subtype: b"PLAIN".to_vec(),
        params: vec![Param::new(b"CHARSET", b"us-ascii")],
    }
}

/// The default type of the parts of a multipart/digest.
fn digest_part_type() -> ContentType {
    ContentType {
        typ: b"MESSAGE".to_vec(),
        subtype: b"RFC822".to_vec(),
        params: Vec::new(),
    }
}

/// Header fields `message_parse_headers` acts on (`rfc822_header.st`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Bcc,
    Cc,
    ContentDescription,
    ContentDisposition,
    ContentId,
    ContentLanguage,
    ContentLocation,
    ContentMd5,
    ContentTransferEncoding,
    ContentType,
    Date,
    From,
    InReplyTo,
    MessageId,
    ReplyTo,
    Sender,
    Subject,
    To,
}

const FIELDS: &[(&[u8], Field)] = &[
    (b"bcc", Field::Bcc),
    (b"cc", Field::Cc),
    (b"content-description", Field::ContentDescription),
    (b"content-disposition", Field::ContentDisposition),
    (b"content-id", Field::ContentId),
    (b"content-language", Field::ContentLanguage),
    (b"content-location", Field::ContentLocation),
    (b"content-md5", Field::ContentMd5),
    (b"content-transfer-encoding", Field::ContentTransferEncoding),
    (b"content-type", Field::ContentType),
    (b"date", Field::Date),
    (b"from", Field::From),
    (b"in-reply-to", Field::InReplyTo),
    (b"message-id", Field::MessageId),
    (b"reply-to", Field::ReplyTo),
    (b"sender", Field::Sender),
    (b"subject", Field::Subject),
    (b"to", Field::To),
];

/// `message_header_lookup`: the field a line starts, and where its value begins.
fn lookup_field(line: &[u8]) -> Option<(Field, usize)> {
    let len = line
        .iter()
        .position(|&b| matches!(b, b':' | b'\r' | b'\n'))?;
    if line[len] != b':' {
        return None;
    }
    let name = &line[..len];
    FIELDS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, f)| (f, len + 1))
}

/// Where a field value starting at `v` ends, as the `strchr(hdrend+1, '\n')` loops of
/// `message_parse_string`/`_address` find it: the first LF after `v` not followed by SP/TAB
/// (a CR before it excluded), else the end of the block.
fn field_end(s: &[u8], v: usize) -> usize {
    let mut from = v + 1;
    while from < s.len() {
        let Some(i) = memchr(b'\n', &s[from..]).map(|i| i + from) else {
            break;
        };
        if matches!(s.get(i + 1), Some(b' ' | b'\t')) {
            from = i + 1;
            continue;
        }
        return if i > v && s[i - 1] == b'\r' { i - 1 } else { i };
    }
    s.len()
}

/// The first `needle` in `hay`. Eight bytes at a time (a word has a byte equal to `needle`
/// iff `x = word ^ needle*0x01..01` has a zero byte, which `(x - 0x01..01) & !x & 0x80..80`
/// detects): message bodies are scanned line by line, and a byte loop was a visible part of
/// reconstruct's time.
pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0usize;
    for c in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(c) else {
            break;
        };
        let x = u64::from_le_bytes(bytes) ^ pat;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return c.iter().position(|&b| b == needle).map(|i| base + i);
        }
        base += 8;
    }
    hay.get(base..)?
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

fn c_strlen(s: &[u8]) -> usize {
    memchr(0, s).unwrap_or(s.len())
}

/// C-locale `isspace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `message_pendingboundary` (with `rfc2046_strict: no`): is `line` a delimiter of one of the
/// open multiparts (outermost first)? A closing delimiter closes that multipart and all
/// inside it.
fn pending_boundary(line: &[u8], boundaries: &mut Vec<Vec<u8>>) -> bool {
    let Some(b) = line.strip_prefix(b"--") else {
        return false;
    };
    for i in 0..boundaries.len() {
        let bd = &boundaries[i];
        let len = bd.len();
        if b.len() < len || &b[..len] != bd.as_slice() {
            continue;
        }
        if b.len() >= len + 2 && b[len] == b'-' && b[len + 1] == b'-' {
            boundaries.truncate(i);
        } else if b.len() > len + 1 && b[len] != 0 && !is_space(b[len]) {
            // "--abcdef" is not a delimiter of "abc"
            continue;
        }
        return true;
    }
    false
}

/// Sizes of a preamble or epilogue (`struct body` used only for counting).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    content_size: u32,
    content_lines: u32,
    boundary_size: u32,
    boundary_lines: u32,
}

/// A multipart or message/rfc822 part whose children are being parsed.
enum Frame {
    Rfc822 {
        body: usize,
        base: usize,
    },
    Multipart {
        body: usize,
        depth: usize,
        digest: bool,
        preamble: Counts,
    },
}

struct Parser<'a, 'o> {
    data: &'a [u8],
    pos: usize,
    opts: &'o ParseOptions,
    boundaries: Vec<Vec<u8>>,
    bodies: Vec<Body<'a>>,
    rfc822_depth: usize,
}

/// What starting a part led to.
enum Begun {
    /// The part is complete.
    Done,
    /// The part has a child to parse first.
    Open(Frame, usize, bool),
}

impl<'a> Parser<'a, '_> {
    fn new_body(&mut self, ct: ContentType) -> usize {
        self.bodies.push(Body::new(ct));
        self.bodies.len() - 1
    }

    fn run(&mut self) -> Result<(), MimeError> {
        let root = self.new_body(default_text_type());
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = Some((root, false));
        loop {
            if let Some((idx, digest)) = next.take() {
                if let Begun::Open(frame, child, child_digest) = self.begin(idx, digest)? {
                    stack.push(frame);
                    next = Some((child, child_digest));
                    continue;
                }
            }
            let Some(frame) = stack.pop() else {
                return Ok(());
            };
            match frame {
                Frame::Rfc822 { body, base } => {
                    self.rfc822_depth -= 1;
                    self.finish_rfc822(body, base);
                }
                Frame::Multipart {
                    body,
                    depth,
                    digest,
                    preamble,
                } => {
                    let last = self.bodies[body].parts.last().copied();
                    if let Some(last) = last {
                        if self.pos == self.data.len() && self.bodies[last].boundary_size == 0 {
                            // end of the message ends all pending multiparts
                            self.boundaries.clear();
                        }
                    }
                    if let Some(part) = self.next_part(body, depth, digest) {
                        stack.push(Frame::Multipart {
                            body,
                            depth,
                            digest,
                            preamble,
                        });
                        next = Some((part, digest));
                    } else {
                        self.finish_multipart(body, depth, preamble);
                    }
                }
            }
        }
    }

    /// `message_parse_body` up to its recursion.
    fn begin(&mut self, idx: usize, digest: bool) -> Result<Begun, MimeError> {
        let default = if digest {
            digest_part_type()
        } else {
            default_text_type()
        };
        let saw_boundary = self.parse_headers(idx, default);
        let body = &self.bodies[idx];
        if body.is_type(b"MULTIPART") {
            if !saw_boundary {
                return Ok(self.start_multipart(idx));
            }
        } else if body.is(b"MESSAGE", b"RFC822") {
            let base = self.pos;
            let sub = self.new_body(default_text_type());
            self.bodies[idx].subpart = Some(sub);
            if !saw_boundary {
                if self.rfc822_depth >= MAX_RFC822_DEPTH {
                    return Err(MimeError::TooDeep {
                        limit: MAX_RFC822_DEPTH,
                        offset: base as u64,
                    });
                }
                self.rfc822_depth += 1;
                return Ok(Begun::Open(Frame::Rfc822 { body: idx, base }, sub, false));
            }
        } else if !saw_boundary {
            self.parse_leaf_content(idx);
        }
        Ok(Begun::Done)
    }

    fn finish_rfc822(&mut self, idx: usize, base: usize) {
        let Some(sub) = self.bodies[idx].subpart else {
            return;
        };
        let s = &self.bodies[sub];
        let (size, lines) = (
            s.header_size.wrapping_add(s.content_size),
            s.header_lines.wrapping_add(s.content_lines),
        );
        let (bsize, blines) = (s.boundary_size, s.boundary_lines);
        let b = &mut self.bodies[idx];
        b.content_size = size;
        b.content_lines = lines;
        b.boundary_size = bsize;
        b.boundary_lines = blines;
        self.add_content_guid(idx, base);
    }

    /// `message_parse_multipart` up to the first part.
    fn start_multipart(&mut self, idx: usize) -> Begun {
        let body = &self.bodies[idx];
        let digest = body.content_type.subtype == b"DIGEST";
        let boundary = body
            .content_type
            .params
            .iter()
            .find(|p| p.attribute == b"BOUNDARY" || p.attribute == b"BOUNDARY*");
        let Some(boundary) = boundary else {
            // invalid MIME: a zero-part multipart whose content is kept raw
            self.parse_leaf_content(idx);
            return Begun::Done;
        };
        let id = if boundary.attribute.len() > 8 {
            decode_extended_value(&boundary.value)
        } else {
            None
        }
        .unwrap_or_else(|| boundary.value.clone());
        self.boundaries.push(id);
        let depth = self.boundaries.len();
        let preamble = self.parse_content();
        match self.next_part(idx, depth, digest) {
            Some(part) => Begun::Open(
                Frame::Multipart {
                    body: idx,
                    depth,
                    digest,
                    preamble,
                },
                part,
                digest,
            ),
            None => {
                self.finish_multipart(idx, depth, preamble);
                Begun::Done
            }
        }
    }

    /// The multipart part loop's condition; a new part when it holds.
    fn next_part(&mut self, idx: usize, depth: usize, digest: bool) -> Option<usize> {
        let limit = self.opts.boundary_limit;
        if self.boundaries.len() != depth || (limit != 0 && self.boundaries.len() >= limit) {
            return None;
        }
        let ct = if digest {
            digest_part_type()
        } else {
            default_text_type()
        };
        let part = self.new_body(ct);
        self.bodies[idx].parts.push(part);
        Some(part)
    }

    /// `message_parse_multipart` after the part loop.
    fn finish_multipart(&mut self, idx: usize, depth: usize, mut preamble: Counts) {
        let mut epilogue = Counts::default();
        let mut bsize = 0u32;
        let mut blines = 0u32;
        if self.boundaries.len() + 1 == depth {
            epilogue = self.parse_content();
        } else if let Some(&last) = self.bodies[idx].parts.last() {
            // an enclosing boundary ended the last part: it ends us too
            let l = &mut self.bodies[last];
            bsize = l.boundary_size;
            blines = l.boundary_lines;
            l.boundary_size = 0;
            l.boundary_lines = 0;
        } else {
            bsize = preamble.boundary_size;
            blines = preamble.boundary_lines;
            preamble.boundary_size = 0;
            preamble.boundary_lines = 0;
        }
        let mut size = preamble.content_size.wrapping_add(preamble.boundary_size);
        let mut lines = preamble.content_lines.wrapping_add(preamble.boundary_lines);
        for &p in &self.bodies[idx].parts {
            let p = &self.bodies[p];
            size = size
                .wrapping_add(p.header_size)
                .wrapping_add(p.content_size)
                .wrapping_add(p.boundary_size);
            lines = lines
                .wrapping_add(p.header_lines)
                .wrapping_add(p.content_lines)
                .wrapping_add(p.boundary_lines);
        }
        let b = &mut self.bodies[idx];
        b.content_size = size.wrapping_add(epilogue.content_size);
        b.content_lines = lines.wrapping_add(epilogue.content_lines);
        b.boundary_size = bsize.wrapping_add(epilogue.boundary_size);
        b.boundary_lines = blines.wrapping_add(epilogue.boundary_lines);
    }

    /// `message_parse_content` for a part whose sizes and content GUID are kept.
    fn parse_leaf_content(&mut self, idx: usize) {
        let start = self.pos;
        let c = self.parse_content();
        let b = &mut self.bodies[idx];
        b.content_size = c.content_size;
        b.content_lines = c.content_lines;
        b.boundary_size = c.boundary_size;
        b.boundary_lines = c.boundary_lines;
        self.add_content_guid(idx, start);
    }

    /// `body_add_content_guid`: SHA-1 of the decoded content starting at `base`.
    fn add_content_guid(&mut self, idx: usize, base: usize) {
        let b = &self.bodies[idx];
        let end = base
            .saturating_add(b.content_size as usize)
            .min(self.data.len());
        let src = self.data.get(base..end).unwrap_or(&[]);
        let (guid, len) = decoded_sha1(src, b.transfer_encoding()).unwrap_or(([0; 20], 0));
        let b = &mut self.bodies[idx];
        b.content_guid = guid;
        b.decoded_size = len as u32;
    }

    /// The next line (up to and including LF; the last may lack it) and its offset.
    fn next_line(&mut self) -> Option<(usize, &'a [u8])> {
        let data = self.data;
        let start = self.pos;
        if start >= data.len() {
            return None;
        }
        let end = memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i + 1);
        self.pos = end;
        Some((start, &data[start..end]))
    }

    /// `message_parse_content`: consume lines up to a pending boundary (which it also
    /// consumes) or the end of the message. The line before a boundary gives its CRLF to it.
    fn parse_content(&mut self) -> Counts {
        let mut c = Counts::default();
        while let Some((_, line)) = self.next_line() {
            let len = line.len() as u32;
            if line.starts_with(b"--") && pending_boundary(line, &mut self.boundaries) {
                c.boundary_size = len;
                c.boundary_lines = c.boundary_lines.wrapping_add(1);
                if c.content_lines != 0 {
                    c.content_lines -= 1;
                    c.boundary_lines = c.boundary_lines.wrapping_add(1);
                }
                if c.content_size > 1 {
                    c.content_size -= 2;
                    c.boundary_size = c.boundary_size.wrapping_add(2);
                }
                break;
            }
            c.content_size = c.content_size.wrapping_add(len);
            if line.last() == Some(&b'\n') {
                c.content_lines = c.content_lines.wrapping_add(1);
            }
        }
        c
    }

    /// `message_parse_headers`: read the header block of the part at the current offset and
    /// apply the fields Cyrus looks at. Returns whether a pending boundary ended the block.
    fn parse_headers(&mut self, idx: usize, default: ContentType) -> bool {
        let data = self.data;
        let start = self.pos;
        let mut saw_boundary = false;
        let mut boundary_size = 0u32;
        let mut boundary_lines = 0u32;
        // where Cyrus's NUL cut the slurped headers, relative to `start`; `Some(None)` is the
        // cut at its priming "\n" (the boundary line follows a first line "\n")
        let mut cut: Option<Option<usize>> = None;
        while let Some((line_start, line)) = self.next_line() {
            if line.starts_with(b"\r\n") {
                break;
            }
            if line.first() == Some(&b'-') {
                let len = c_strlen(line);
                if pending_boundary(&line[..len], &mut self.boundaries) {
                    boundary_size = len as u32;
                    boundary_lines = 1;
                    let rel = line_start - start;
                    if rel > 0 {
                        boundary_size = boundary_size.wrapping_add(2);
                        boundary_lines += 1;
                        cut = Some(rel.checked_sub(2));
                    } else {
                        cut = Some(Some(0));
                    }
                    saw_boundary = true;
                    break;
                }
            }
        }
        let slurped = &data[start..self.pos];
        let (block, header_size, header_lines): (&[u8], u32, u32) = match cut {
            // the first line was "\n": Cyrus's buffer is cut before everything it scans,
            // while strlen still runs over the slurped bytes
            Some(None) => (&[], c_strlen(slurped) as u32, u32::MAX),
            Some(Some(t)) => {
                let end = t.min(c_strlen(slurped));
                let block = &slurped[..end];
                (block, end as u32, count_lf(block))
            }
            None => {
                let block = &slurped[..c_strlen(slurped)];
                (block, block.len() as u32, count_lf(block))
            }
        };
        let body = &mut self.bodies[idx];
        body.header_offset = start as u32;
        body.content_offset = self.pos as u32;
        body.header_size = header_size;
        body.header_lines = header_lines;
        body.boundary_size = boundary_size;
        body.boundary_lines = boundary_lines;
        body.header_block = block;
        // without a Content-Type that parses, the passed-in default type applies
        body.content_type = apply_fields(body, block, self.opts.maxheaderlines).unwrap_or(default);
        saw_boundary
    }
}

fn count_lf(s: &[u8]) -> u32 {
    s.iter().filter(|&&b| b == b'\n').count() as u32
}

/// The field loop of `message_parse_headers` over the (cut) header block; returns the
/// Content-Type (the last one, if it parsed).
fn apply_fields<'a>(body: &mut Body<'a>, block: &'a [u8], maxlines: usize) -> Option<ContentType> {
    let mut ct: Option<ContentType> = None;
    let mut line_start = 0usize;
    let mut k = 0usize;
    loop {
        if maxlines != 0 && k > maxlines {
            break;
        }
        let rest = &block[line_start..];
        if let Some((field, vstart)) = lookup_field(rest) {
            apply_field(body, &mut ct, field, &rest[vstart..]);
        }
        match memchr(b'\n', rest) {
            Some(i) => {
                line_start += i + 1;
                k += 1;
            }
            None => break,
        }
    }
    ct
}

/// One field: `v` is the rest of the block after the colon.
fn apply_field<'a>(body: &mut Body<'a>, ct: &mut Option<ContentType>, field: Field, v: &'a [u8]) {
    // message_parse_address: the raw value, leading whitespace included
    let address = || &v[..field_end(v, 0)];
    // message_parse_string: leading SP/TAB skipped before the end is searched for
    let string = || {
        let s = v
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(v.len());
        &v[s..field_end(v, s).max(s)]
    };
    let f = &mut body.fields;
    match field {
        Field::Bcc => f.bcc = Some(address()),
        Field::Cc => f.cc = Some(address()),
        Field::From => f.from = Some(address()),
        Field::ReplyTo => f.reply_to = Some(address()),
        Field::Sender => f.sender = Some(address()),
        Field::To => f.to = Some(address()),
        Field::Date => f.date = Some(string()),
        Field::Subject => f.subject = Some(string()),
        Field::InReplyTo => f.in_reply_to = Some(string()),
        Field::MessageId => f.message_id = Some(string()),
        Field::ContentDescription => body.description = Some(unstructured(string())),
        Field::ContentId => body.id = Some(unstructured(string())),
        Field::ContentLocation => body.location = Some(unstructured(string())),
        Field::ContentMd5 => body.md5 = Some(unstructured(string())),
        Field::ContentDisposition => body.disposition = parse_disposition(v),
        Field::ContentLanguage => body.language = parse_language(v),
        Field::ContentTransferEncoding => body.encoding = parse_encoding(v),
        Field::ContentType => *ct = parse_content_type(v, address()),
    }
}

/// Parse the tree of a message file without assembling the cache items.
pub fn parse_tree<'a>(data: &'a [u8], opts: &ParseOptions) -> Result<Tree<'a>, MimeError> {
    if data.is_empty() {
        return Err(MimeError::Empty);
    }
    if u32::try_from(data.len()).is_err() {
        return Err(MimeError::TooLarge {
            size: data.len() as u64,
        });
    }
    let mut p = Parser {
        data,
        pos: 0,
        opts,
        boundaries: Vec::new(),
        bodies: Vec::new(),
        rfc822_depth: 0,
    };
    p.run()?;
    Ok(Tree {
        data,
        bodies: p.bodies,
    })
}

/// Parse a message file into the ten cache items and the record fields, as Cyrus 3.6's
/// `message_parse` + `message_create_record` do. `sentdate` and `gmtime` are the low 32 bits,
/// as a 3.6 (v17) record stores them: a Date past 2106 wraps there.
pub fn parse_message(data: &[u8], opts: &ParseOptions) -> Result<ParsedMessage, MimeError> {
    let tree = parse_tree(data, opts)?;
    let root = tree.body(0);
    let utf8 = opts.rfc2047_utf8;
    let mut items: [Vec<u8>; NUM_ITEMS] = Default::default();
    write_envelope(&mut items[ITEM_ENVELOPE], &root.fields);
    items[ITEM_BODYSTRUCTURE] = bodystructure::write_body(&tree, 0, true);
    items[ITEM_BODY] = bodystructure::write_body(&tree, 0, false);
    items[ITEM_SECTION] = section::write_section(&tree);
    items[ITEM_HEADERS] = headers::cached_headers(root.header_block, opts.maxheaderlines);
    items[ITEM_FROM] = search::write_search_addrs(root.fields.from, utf8);
    items[ITEM_TO] = search::write_search_addrs(root.fields.to, utf8);
    items[ITEM_CC] = search::write_search_addrs(root.fields.cc, utf8);
    items[ITEM_BCC] = search::write_search_addrs(root.fields.bcc, utf8);
    items[ITEM_SUBJECT] = search::write_subject(root.fields.subject, utf8);
    let (sentdate, gmtime) = date::parse_date(root.fields.date);
    Ok(ParsedMessage {
        items,
        size: data.len() as u64,
        header_size: root.header_size,
        sentdate: sentdate & 0xffff_ffff,
        gmtime: gmtime & 0xffff_ffff,
        guid: Sha1::digest(data).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memchr_finds_the_first_needle_at_every_alignment() {
        let mut hay: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
        for needle in [b'\n', 0u8, 0x80, 0xff] {
            assert_eq!(memchr(needle, &hay), hay.iter().position(|&b| b == needle));
        }
        for at in 0..hay.len() {
            let old = hay[at];
            hay[at] = b'\n';
            for from in 0..at.min(17) + 1 {
                let want = hay[from..].iter().position(|&b| b == b'\n');
                assert_eq!(memchr(b'\n', &hay[from..]), want, "at {at} from {from}");
            }
            hay[at] = old;
        }
        assert_eq!(memchr(b'x', b""), None);
        assert_eq!(memchr(b'x', b"abcdefgx"), Some(7));
        assert_eq!(memchr(b'x', b"abcdefghx"), Some(8));
    }

    fn tree(s: &[u8]) -> Tree<'_> {
        parse_tree(s, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn simple_message_sizes() {
        let m = b"Subject: hi\r\nTo: a@b.c\r\n\r\nline1\r\nline2\r\n";
        let t = tree(m);
        let r = t.body(0);
        assert_eq!(r.header_size, 26);
        assert_eq!(r.header_lines, 3);
        assert_eq!(r.content_offset, 26);
        assert_eq!(r.content_size, 14);
        assert_eq!(r.content_lines, 2);
        assert_eq!(r.fields.subject, Some(&b"hi"[..]));
        assert_eq!(r.fields.to, Some(&b" a@b.c"[..]));
    }

    #[test]
    fn bare_lf_message_is_all_header() {
        let m = b"Subject: hi\n\nbody\n";
        let r = tree(m).bodies[0].clone();
        assert_eq!(r.header_size as usize, m.len());
        assert_eq!(r.content_size, 0);
    }

    #[test]
    fn multipart_sizes_and_boundaries() {
        let m = b"Content-Type: multipart/mixed; boundary=abc\r\n\r\npre\r\n--abc\r\n\r\none\r\n--abc \r\nContent-Type: text/html\r\n\r\ntwo\r\n--abcdef\r\n--abc--\r\nepi\r\n";
        let t = tree(m);
        let r = t.body(0);
        assert_eq!(r.parts.len(), 2);
        let p1 = t.body(r.parts[0]);
        assert_eq!(p1.header_size, 2);
        assert_eq!(p1.content_size, 3);
        assert_eq!(p1.content_lines, 0);
        assert_eq!(p1.boundary_size, 2 + 8);
        let p2 = t.body(r.parts[1]);
        assert!(p2.is(b"TEXT", b"HTML"));
        // "--abcdef" is content of part 2
        assert_eq!(p2.content_size, 5 + 10 - 2);
        assert_eq!(r.content_size as usize + r.header_size as usize, m.len());
    }

    #[test]
    fn missing_boundary_is_zero_part_multipart() {
        let m = b"Content-Type: multipart/mixed\r\n\r\nraw\r\n";
        let t = tree(m);
        assert!(t.body(0).parts.is_empty());
        assert_eq!(t.body(0).content_size, 5);
        assert_ne!(t.body(0).content_guid, [0; 20]);
    }

    #[test]
    fn digest_parts_default_to_rfc822() {
        let m = b"Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\nSubject: in\r\n\r\nx\r\n--b--\r\n";
        let t = tree(m);
        let p = t.body(t.body(0).parts[0]);
        assert!(p.is(b"MESSAGE", b"RFC822"));
        let inner = t.body(p.subpart.unwrap());
        assert_eq!(inner.fields.subject, Some(&b"in"[..]));
    }

    #[test]
    fn last_field_wins_and_bad_type_defaults() {
        let m =
            b"Subject: one\r\nSubject: two\r\nContent-Type: text/html\r\nContent-Type: bad\r\n\r\n";
        let t = tree(m);
        assert_eq!(t.body(0).fields.subject, Some(&b"two"[..]));
        assert!(t.body(0).is(b"TEXT", b"PLAIN"));
    }

    #[test]
    fn field_end_rules() {
        assert_eq!(field_end(b" a\r\n b\r\nX: y", 0), 6);
        assert_eq!(field_end(b" a", 0), 2);
        // the search starts one byte in: an empty bare-LF value runs into the next line
        assert_eq!(field_end(b"\nX: y\n", 0), 5);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut m = Vec::new();
        for _ in 0..(MAX_RFC822_DEPTH + 5) {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        m.extend_from_slice(b"x");
        let e = parse_tree(&m, &ParseOptions::default()).unwrap_err();
        assert!(matches!(e, MimeError::TooDeep { .. }));
        let mut m = Vec::new();
        for i in 0..5000 {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        let t = tree(&m);
        assert!(t.bodies.len() > 900);
        let _ = parse_message(&m, &ParseOptions::default()).unwrap();
    }

    #[test]
    fn boundary_after_bare_lf_first_header_line() {
        // message_parse_headers cuts its buffer at next[-2], here the priming "\n": nothing is
        // scanned (header_lines = -1) while strlen still counts the slurped boundary line
        let m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\n--b--\r\n";
        let t = tree(m);
        let p = t.body(t.body(0).parts[0]);
        assert_eq!(p.header_lines, u32::MAX);
        assert_eq!(p.header_size, 8);
        assert_eq!((p.boundary_size, p.boundary_lines), (9, 2));
    }

    #[test]
    fn extended_boundary_parameter() {
        let m = b"Content-Type: multipart/mixed; boundary*=us-ascii''a%20b\r\n\r\n--a b\r\n\r\nx\r\n--a b--\r\n";
        let t = tree(m);
        assert_eq!(t.body(0).parts.len(), 1);
        assert_eq!(t.body(t.body(0).parts[0]).content_size, 1);
    }

    #[test]
    fn empty_file_is_an_error() {
        assert_eq!(
            parse_tree(b"", &ParseOptions::default()).unwrap_err(),
            MimeError::Empty
        );
    }
}

/// Timing on big inputs: `cargo test --release --lib big_inputs -- --ignored --nocapture`.
#[cfg(test)]
mod perf {
    use super::*;
    use std::time::Instant;

    fn time(name: &str, m: &[u8]) {
        let t = Instant::now();
        let r = parse_message(m, &ParseOptions::default());
        eprintln!(
            "{name}: {} MB in {:?} ({})",
            m.len() >> 20,
            t.elapsed(),
            if r.is_ok() { "ok" } else { "error" }
        );
    }

    #[test]
    #[ignore]
    fn big_inputs() {
        const MB50: usize = 50 << 20;
        // a base64 attachment in a multipart
        let mut m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        while m.len() < MB50 {
            m.extend_from_slice(
                b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU2Nzg5YWJjZGVmZ2hpamts\r\n",
            );
        }
        m.extend_from_slice(b"--b--\r\n");
        time("base64 part", &m);
        // quoted-printable text with near-miss boundary lines, 900 multiparts deep
        let mut m = Vec::new();
        for i in 0..900 {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=bb{i}\r\n\r\n--bb{i}\r\n")
                    .as_bytes(),
            );
        }
        m.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        while m.len() < MB50 {
            m.extend_from_slice(b"--bb1x near miss =3D soft=\r\n");
        }
        time("deep multipart, boundary-like lines", &m);
        // all header: bare LFs, 1000 Content-Type fields with an unterminated quote
        let mut m = Vec::new();
        for _ in 0..1000 {
            m.extend_from_slice(b"Content-Type: text/plain; name=\"x\n");
        }
        while m.len() < MB50 {
            m.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz0123456789\n");
        }
        time("bare-LF header block with open quotes", &m);
        // many small parts
        let mut m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        while m.len() < MB50 {
            m.extend_from_slice(b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n");
        }
        time("many parts", &m);
    }
}
