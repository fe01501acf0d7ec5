//! The message of one DATA/BDAT transaction written into a stage file as Cyrus 3.6
//! lmtpd writes it (`savemsg` in `imap/lmtpengine.c`, `parseheader` and
//! `spool_copy_msg` in `imap/spool.c`): the headers Cyrus adds first, the client's header
//! block (incoming `Return-Path` dropped, 8-bit bytes in values munged to `X` or refused),
//! `Message-ID`/`Date` appended when absent, then the body.
//!
//! Sans I/O on the input side: the session hands over lines that are already
//! dot-unstuffed (DATA) or split from raw chunks (BDAT, see [`LineSplitter`]), and the
//! writer streams them to any `Write` — only the `Message-ID` and `Date` values are kept.
//! Unlike Cyrus 3.6, which silently turns bare LF into CRLF and drops bare CR, a bare CR
//! or LF anywhere makes the message invalid (`Message contains bare newlines`): those are
//! the ingredients of SMTP smuggling.

use std::io::{self, Write};

/// Longest line accepted in DATA or BDAT (RFC 5321 allows 1000; real mail is sloppier).
pub const DATA_LINE_MAX: usize = 256 * 1024;
/// Longest `Message-ID` / `Date` value kept for duplicate suppression.
const KEPT_VALUE_MAX: usize = 16 * 1024;

/// Why a message is refused (one `554 5.6.0 <text>` per recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    Nul,
    BareNewline,
    EightBitHeader,
    BadHeader,
    LineTooLong,
}

impl MessageError {
    /// Cyrus's error text (`imap/imap_err.et`).
    pub fn text(self) -> &'static str {
        match self {
            MessageError::Nul => "Message contains NUL characters",
            MessageError::BareNewline => "Message contains bare newlines",
            MessageError::EightBitHeader => "Message contains non-ASCII characters in headers",
            MessageError::BadHeader => "Message contains invalid header",
            MessageError::LineTooLong => "Message contains a line longer than 262144 bytes",
        }
    }
}

/// Header options (`munge8bit`, `reject8bit`) and the size limit.
#[derive(Debug, Clone, Copy)]
pub struct MessageOptions {
    pub munge8bit: bool,
    pub reject8bit: bool,
    /// `maxmessagesize` (bytes of the stage file, added headers included).
    pub max_size: u64,
}

/// What the writer learnt about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size of the stage file (or the size it would have had, when over the limit).
    pub size: u64,
    pub over_limit: bool,
    /// The `Message-ID` value (the client's, or the one added).
    pub message_id: Vec<u8>,
    /// The `Date` value (the client's, or the one added).
    pub date: Vec<u8>,
}

/// The end state of a writer.
#[derive(Debug)]
pub enum Outcome {
    Ok(Written),
    Invalid(MessageError),
    Io(io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    None,
    MessageId,
    Date,
}

enum State {
    /// In the header block; `current` is the field being continued.
    Headers {
        current: Option<Current>,
    },
    Body,
}

#[derive(Clone, Copy)]
struct Current {
    skip: bool,
    kept: Kept,
}

/// Streams one message into `out`.
pub struct StageWriter<W: Write> {
    out: W,
    opts: MessageOptions,
    size: u64,
    error: Option<MessageError>,
    io_error: Option<io::Error>,
    state: State,
    message_id: Option<Vec<u8>>,
    date: Option<Vec<u8>>,
    /// Values to add when the client's header block has none.
    new_message_id: Vec<u8>,
    new_date: Vec<u8>,
}

impl<W: Write> StageWriter<W> {
    /// `prefix`: the header lines Cyrus puts first (Return-Path, Received,
    /// X-Cyrus-Session-Id), CRLF-terminated.
    pub fn new(
        out: W,
        prefix: &[u8],
        opts: MessageOptions,
        new_message_id: Vec<u8>,
        new_date: Vec<u8>,
    ) -> StageWriter<W> {
        let mut w = StageWriter {
            out,
            opts,
            size: 0,
            error: None,
            io_error: None,
            state: State::Headers { current: None },
            message_id: None,
            date: None,
            new_message_id,
            new_date,
        };
        w.emit(prefix);
        w
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.error.is_some() || self.io_error.is_some() || self.size > self.opts.max_size {
            return;
        }
        if let Err(e) = self.out.write_all(bytes) {
            self.io_error = Some(e);
        }
    }

    fn fail(&mut self, e: MessageError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// A line that could not be read whole (longer than [`DATA_LINE_MAX`]).
    pub fn line_too_long(&mut self) {
        self.fail(MessageError::LineTooLong);
    }

    /// One line of content, without its ending; `crlf` false when it ended in a bare LF.
    pub fn line(&mut self, bytes: &[u8], crlf: bool) {
        if bytes.contains(&0) {
            self.fail(MessageError::Nul);
        }
        if !crlf || bytes.contains(&b'\r') || bytes.contains(&b'\n') {
            self.fail(MessageError::BareNewline);
        }
        if self.error.is_some() {
            return;
        }
        match self.state {
            State::Body => {
                self.emit(bytes);
                self.emit(b"\r\n");
            }
            State::Headers { current } => self.header_line(bytes, current),
        }
    }

    fn header_line(&mut self, bytes: &[u8], current: Option<Current>) {
        if bytes.is_empty() {
            self.end_headers();
            self.emit(b"\r\n");
            self.state = State::Body;
            return;
        }
        if matches!(bytes.first(), Some(b' ' | b'\t')) {
            let Some(cur) = current else {
                return self.fail(MessageError::BadHeader);
            };
            let value = match self.munged(bytes) {
                Some(v) => v,
                None => return,
            };
            self.keep(cur.kept, &value);
            if !cur.skip {
                self.emit(&value);
                self.emit(b"\r\n");
            }
            return;
        }
        // field-name = 1*ftext, optional blanks, then the colon (parseheader).
        let is_ftext = |b: u8| (33..=126).contains(&b) && b != b':';
        let name_len = bytes.iter().take_while(|&&b| is_ftext(b)).count();
        let blanks = bytes
            .get(name_len..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let colon = name_len + blanks;
        if name_len == 0 || bytes.get(colon) != Some(&b':') {
            return self.fail(MessageError::BadHeader);
        }
        let name = bytes.get(..name_len).unwrap_or_default();
        let value = match self.munged(bytes.get(colon + 1..).unwrap_or_default()) {
            Some(v) => v,
            None => return,
        };
        let kept = if name.eq_ignore_ascii_case(b"message-id") && self.message_id.is_none() {
            Kept::MessageId
        } else if name.eq_ignore_ascii_case(b"date") && self.date.is_none() {
            Kept::Date
        } else {
            Kept::None
        };
        match kept {
            Kept::MessageId => self.message_id = Some(Vec::new()),
            Kept::Date => self.date = Some(Vec::new()),
            Kept::None => {}
        }
        self.keep(kept, &value);
        let skip = name.eq_ignore_ascii_case(b"return-path");
        if !skip {
            self.emit(bytes.get(..=colon).unwrap_or_default());
            self.emit(&value);
            self.emit(b"\r\n");
        }
        self.state = State::Headers {
            current: Some(Current { skip, kept }),
        };
    }

    /// The value with 8-bit bytes handled as `munge8bit`/`reject8bit` say; `None` when
    /// refused.
    fn munged(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        if !value.iter().any(|&b| b >= 0x80) {
            return Some(value.to_vec());
        }
        if self.opts.reject8bit {
            self.fail(MessageError::EightBitHeader);
            return None;
        }
        if !self.opts.munge8bit {
            return Some(value.to_vec());
        }
        Some(
            value
                .iter()
                .map(|&b| if b >= 0x80 { b'X' } else { b })
                .collect(),
        )
    }

    /// Cyrus keeps a header's body with leading blanks (across folds) removed and the
    /// fold line breaks dropped.
    fn keep(&mut self, kept: Kept, piece: &[u8]) {
        let slot = match kept {
            Kept::None => return,
            Kept::MessageId => self.message_id.get_or_insert_with(Vec::new),
            Kept::Date => self.date.get_or_insert_with(Vec::new),
        };
        let piece = if slot.is_empty() {
            let start = piece
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            piece.get(start..).unwrap_or_default()
        } else {
            piece
        };
        let room = KEPT_VALUE_MAX.saturating_sub(slot.len());
        slot.extend_from_slice(piece.get(..piece.len().min(room)).unwrap_or_default());
    }

    /// After the client's header block: the Message-ID and Date lines Cyrus adds.
    fn end_headers(&mut self) {
        if self.message_id.is_none() {
            let id = std::mem::take(&mut self.new_message_id);
            self.emit(b"Message-ID: ");
            self.emit(&id);
            self.emit(b"\r\n");
            self.message_id = Some(id);
        }
        if self.date.is_none() {
            let d = std::mem::take(&mut self.new_date);
            self.emit(b"Date: ");
            self.emit(&d);
            self.emit(b"\r\n");
            self.date = Some(d);
        }
    }

    /// The message ended (final dot, or BDAT LAST).
    pub fn finish(mut self) -> (W, Outcome) {
        if matches!(self.state, State::Headers { .. }) && self.error.is_none() {
            // The message ended inside the header block: Cyrus still appends the fields.
            self.end_headers();
        }
        if self.message_id.as_ref().is_some_and(Vec::is_empty) {
            self.fail(MessageError::BadHeader);
        }
        if let Err(e) = self.out.flush() {
            self.io_error.get_or_insert(e);
        }
        let outcome = if let Some(e) = self.error {
            Outcome::Invalid(e)
        } else if let Some(e) = self.io_error {
            Outcome::Io(e)
        } else {
            Outcome::Ok(Written {
                size: self.size,
                over_limit: self.size > self.opts.max_size,
                message_id: self.message_id.unwrap_or_default(),
                date: self.date.unwrap_or_default(),
            })
        };
        (self.out, outcome)
    }
}

/// Splits raw BDAT chunks into lines for [`StageWriter::line`], keeping at most
/// [`DATA_LINE_MAX`] bytes of an unfinished line.
#[derive(Default)]
pub struct LineSplitter {
    carry: Vec<u8>,
    too_long: bool,
}

impl LineSplitter {
    pub fn push<W: Write>(&mut self, mut data: &[u8], w: &mut StageWriter<W>) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let piece = data.get(..nl).unwrap_or_default();
            data = data.get(nl + 1..).unwrap_or_default();
            self.add(piece);
            self.emit_line(w);
        }
        self.add(data);
    }

    fn add(&mut self, piece: &[u8]) {
        if self.too_long || self.carry.len() + piece.len() > DATA_LINE_MAX + 1 {
            self.too_long = true;
            self.carry.clear();
        } else {
            self.carry.extend_from_slice(piece);
        }
    }

    fn emit_line<W: Write>(&mut self, w: &mut StageWriter<W>) {
        if std::mem::take(&mut self.too_long) {
            w.line_too_long();
        } else {
            let crlf = self.carry.last() == Some(&b'\r');
            if crlf {
                self.carry.pop();
            }
            w.line(&self.carry, crlf);
        }
        self.carry.clear();
    }

    /// The last chunk was read: a final line without an ending is taken as a line (the
    /// stored message always ends with CRLF).
    pub fn finish<W: Write>(self, w: &mut StageWriter<W>) {
        if self.too_long {
            w.line_too_long();
        } else if !self.carry.is_empty() {
            if self.carry.last() == Some(&b'\r') {
                // A CR at the very end, with no LF after it.
                w.line(&self.carry, false);
            } else {
                w.line(&self.carry, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: MessageOptions = MessageOptions {
        munge8bit: true,
        reject8bit: false,
        max_size: u64::MAX,
    };

    fn write(lines: &[&[u8]], opts: MessageOptions) -> (Vec<u8>, Outcome) {
        let mut w = StageWriter::new(
            Vec::new(),
            b"P: 1\r\n",
            opts,
            b"<new@id>".to_vec(),
            b"NOW".to_vec(),
        );
        for l in lines {
            w.line(l, true);
        }
        w.finish()
    }

    fn ok(o: Outcome) -> Written {
        match o {
            Outcome::Ok(w) => w,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headers_added_and_return_path_dropped() {
        let (out, o) = write(
            &[
                b"Return-Path: <evil>",
                b"\tcontinued",
                b"Subject: hi",
                b"",
                b"body",
            ],
            OPTS,
        );
        assert_eq!(
            out,
            b"P: 1\r\nSubject: hi\r\nMessage-ID: <new@id>\r\nDate: NOW\r\n\r\nbody\r\n"
        );
        let w = ok(o);
        assert_eq!(w.message_id, b"<new@id>");
        assert_eq!(w.size, out.len() as u64);
    }

    #[test]
    fn client_ids_are_kept_with_folds_and_8bit_munged() {
        let (out, o) = write(
            &[
                b"Message-ID:",
                b"  <a@b>",
                b"Date: Mon, 1 Jan 2024",
                b"X: caf\xc3\xa9",
                b"",
            ],
            OPTS,
        );
        assert_eq!(
            out,
            b"P: 1\r\nMessage-ID:\r\n  <a@b>\r\nDate: Mon, 1 Jan 2024\r\nX: cafXX\r\n\r\n"
        );
        let w = ok(o);
        assert_eq!(w.message_id, b"<a@b>");
        assert_eq!(w.date, b"Mon, 1 Jan 2024");
    }

    #[test]
    fn headers_only_message_gets_fields_without_separator() {
        let (out, o) = write(&[b"Subject: x"], OPTS);
        assert_eq!(
            out,
            b"P: 1\r\nSubject: x\r\nMessage-ID: <new@id>\r\nDate: NOW\r\n"
        );
        ok(o);
    }

    #[test]
    fn invalid_messages() {
        let bad = |lines: &[&[u8]], opts| match write(lines, opts).1 {
            Outcome::Invalid(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(&[b"From bob Mon", b""], OPTS), MessageError::BadHeader);
        assert_eq!(bad(&[b" leading", b""], OPTS), MessageError::BadHeader);
        assert_eq!(bad(&[b"Message-ID:  ", b""], OPTS), MessageError::BadHeader);
        assert_eq!(bad(&[b"S: a", b"", b"x\0y"], OPTS), MessageError::Nul);
        assert_eq!(
            bad(&[b"S: a", b"", b"x\ry"], OPTS),
            MessageError::BareNewline
        );
        let reject = MessageOptions {
            reject8bit: true,
            ..OPTS
        };
        assert_eq!(
            bad(&[b"S: \xe9", b""], reject),
            MessageError::EightBitHeader
        );
        // 8-bit bytes in the body are fine.
        ok(write(&[b"S: a", b"", b"\xe9"], reject).1);
        // Blanks between name and colon are allowed.
        ok(write(&[b"S : a", b""], OPTS).1);
    }

    #[test]
    fn size_limit_counts_everything_and_stops_writing() {
        let opts = MessageOptions {
            max_size: 20,
            ..OPTS
        };
        let (out, o) = write(&[b"Subject: 0123456789", b"", b"body"], opts);
        let w = ok(o);
        assert!(w.over_limit);
        assert!(out.len() <= 20);
        assert_eq!(w.size, 6 + 21 + 22 + 11 + 2 + 6);
    }

    #[test]
    fn splitter_is_chunking_independent() {
        let input: &[u8] = b"S: a\r\n\r\nline1\r\nline2\r\nend";
        let want = {
            let mut w = StageWriter::new(Vec::new(), b"", OPTS, b"<i>".to_vec(), b"D".to_vec());
            let mut s = LineSplitter::default();
            s.push(input, &mut w);
            s.finish(&mut w);
            w.finish().0
        };
        assert!(want.ends_with(b"line2\r\nend\r\n"));
        for chunk in [1, 2, 3, 7, 64] {
            let mut w = StageWriter::new(Vec::new(), b"", OPTS, b"<i>".to_vec(), b"D".to_vec());
            let mut s = LineSplitter::default();
            for c in input.chunks(chunk) {
                s.push(c, &mut w);
            }
            s.finish(&mut w);
            assert_eq!(w.finish().0, want, "chunk {chunk}");
        }
        let mut w = StageWriter::new(Vec::new(), b"", OPTS, b"<i>".to_vec(), b"D".to_vec());
        let mut s = LineSplitter::default();
        s.push(b"S: a\n\r\n", &mut w);
        s.finish(&mut w);
        assert!(matches!(
            w.finish().1,
            Outcome::Invalid(MessageError::BareNewline)
        ));
    }
}
