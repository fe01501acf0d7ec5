//! The body of a RETR or TOP reply, produced from the message file in pieces (constant memory):
//! a `.` at the start of a line is doubled, a bare LF becomes CRLF, a missing final line end
//! is added, and TOP stops after the header, the blank line and `n` body lines — the output
//! Cyrus's `blat` (imap/pop3d.c) produces for a well-formed CRLF file, and CRLF-correct for
//! files that are not.

/// Streaming dot-stuffer. Feed the file with [`Stuffer::push`], then call [`Stuffer::finish`].
#[derive(Debug, Clone)]
pub struct Stuffer {
    /// TOP's body line count; `None` for RETR.
    limit: Option<u32>,
    /// Cyrus's `thisline`: negative while in the header, then body lines sent.
    thisline: i64,
    at_line_start: bool,
    prev_cr: bool,
    /// Bytes of the current line so far (to spot the blank line ending the header).
    line_len: u64,
    done: bool,
    wrote_any: bool,
}

impl Stuffer {
    /// `limit`: TOP's line count (`None` = whole message).
    pub fn new(limit: Option<u32>) -> Stuffer {
        Stuffer {
            limit,
            thisline: -2,
            at_line_start: true,
            prev_cr: false,
            line_len: 0,
            done: false,
            wrote_any: false,
        }
    }

    /// True once TOP has sent all it should; the rest of the file need not be read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Append the reply bytes for `input` to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if self.at_line_start {
                if input.first() == Some(&b'.') {
                    out.push(b'.');
                }
                self.at_line_start = false;
                self.line_len = 0;
            }
            let (segment, has_lf) = match input.iter().position(|&b| b == b'\n') {
                Some(i) => (input.get(..i).unwrap_or(&[]), true),
                None => (input, false),
            };
            out.extend_from_slice(segment);
            if !segment.is_empty() {
                self.wrote_any = true;
                self.prev_cr = segment.last() == Some(&b'\r');
                self.line_len = self.line_len.saturating_add(segment.len() as u64);
            }
            if !has_lf {
                return;
            }
            if !self.prev_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
            self.wrote_any = true;
            let content = self.line_len.saturating_sub(u64::from(self.prev_cr));
            self.end_line(content == 0);
            input = input.get(segment.len() + 1..).unwrap_or(&[]);
        }
    }

    fn end_line(&mut self, blank: bool) {
        self.prev_cr = false;
        self.at_line_start = true;
        if self.thisline < 0 {
            if blank {
                self.thisline = 0;
            }
        } else {
            self.thisline += 1;
        }
        if let Some(limit) = self.limit {
            if self.thisline == i64::from(limit) {
                self.done = true;
            }
        }
    }

    /// The end of the reply: a line end if the text lacks one, then the terminating `.`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.wrote_any && !self.at_line_start {
            if self.prev_cr {
                out.push(b'\n');
            } else {
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole reply body for `message` at once (tests, fuzzing).
pub fn stuff_all(message: &[u8], limit: Option<u32>) -> Vec<u8> {
    let mut s = Stuffer::new(limit);
    let mut out = Vec::new();
    s.push(message, &mut out);
    s.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a\r\nSubject: x\r\n\r\nline1\r\n.dot\r\nline3\r\n";

    #[test]
    fn retr_is_dot_stuffed() {
        assert_eq!(
            stuff_all(MSG, None),
            b"From: a\r\nSubject: x\r\n\r\nline1\r\n..dot\r\nline3\r\n.\r\n"
        );
    }

    #[test]
    fn top_counts_body_lines() {
        assert_eq!(
            stuff_all(MSG, Some(0)),
            b"From: a\r\nSubject: x\r\n\r\n.\r\n"
        );
        assert_eq!(
            stuff_all(MSG, Some(2)),
            b"From: a\r\nSubject: x\r\n\r\nline1\r\n..dot\r\n.\r\n"
        );
        assert_eq!(stuff_all(MSG, Some(99)), stuff_all(MSG, None));
    }

    #[test]
    fn bare_lf_and_missing_final_newline() {
        assert_eq!(
            stuff_all(b"A: b\n\n.x\ny", None),
            b"A: b\r\n\r\n..x\r\ny\r\n.\r\n"
        );
        assert_eq!(stuff_all(b"A: b\n\nbody\n", Some(0)), b"A: b\r\n\r\n.\r\n");
        assert_eq!(stuff_all(b"x\r", None), b"x\r\n.\r\n");
        assert_eq!(stuff_all(b"", None), b".\r\n");
        assert_eq!(stuff_all(b"a\rb\r\n", None), b"a\rb\r\n.\r\n");
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        let msg = b"H: 1\r\n.h\n\r\n.\r\nb\nc\r\n..\r\nend";
        for limit in [None, Some(0), Some(1), Some(2), Some(3)] {
            let want = stuff_all(msg, limit);
            for cut in 0..=msg.len() {
                for cut2 in cut..=msg.len() {
                    let mut s = Stuffer::new(limit);
                    let mut out = Vec::new();
                    s.push(&msg[..cut], &mut out);
                    s.push(&msg[cut..cut2], &mut out);
                    s.push(&msg[cut2..], &mut out);
                    s.finish(&mut out);
                    assert_eq!(out, want, "limit {limit:?} cuts {cut} {cut2}");
                }
            }
        }
    }
}
