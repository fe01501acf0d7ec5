//! RFC 2047 encoded-word decoding as Cyrus 3.6's `charset_parse_mimeheader` /
//! `mimeheader_cat` does it (lib/charset.c; docs: cyrus-mailbox-format.md §4.9).
//!
//! The pipeline is emulated stage by stage: text outside encoded words passes an unfold
//! filter (its state survives between text runs) into the default charset (us-ascii, or
//! UTF-8 with `rfc2047_utf8`); an encoded word's text passes a Q or B decoder into the
//! word's charset. Consecutive words with the same canonical charset and encoding, separated
//! only by whitespace, share one decoder (base64 groups and UTF-8 sequences continue across
//! them). The scan is a single forward pass, so time is linear.

use super::address::is_space;
use super::charset::{self, Decoder};

/// `XX` in Cyrus's decoding tables.
const INVALID: u8 = 0xff;

/// `HEXCHAR`.
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => INVALID,
    }
}

/// `CHAR64` over `index_64`: value, 64 for `=`, `None` for whitespace and invalid bytes.
fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(64),
        _ => None,
    }
}

/// Transfer decoding of an encoded word's text (`qp_init(1, ...)` / `b64_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    Q,
    B,
}

/// The transfer decoder's state; the B state survives across words sharing a decoder.
#[derive(Debug, Default)]
struct Extract {
    b64_codepoint: u32,
    b64_left: u8,
}

impl Extract {
    /// `qp2byte` + `qp_flushline` (header mode: `_` is a space) for one word's text,
    /// flushed at its end (`qp_flush`).
    fn qp(text: &[u8], bytes: &mut Vec<u8>) {
        let mut line: Vec<u8> = Vec::new();
        let flush = |line: &mut Vec<u8>, bytes: &mut Vec<u8>, mut endline: bool| {
            while matches!(line.last(), Some(b' ' | b'\t')) {
                line.pop();
            }
            let mut i = 0;
            while i < line.len() {
                match line[i] {
                    b'=' => {
                        if i + 1 >= line.len() {
                            endline = false;
                        } else {
                            let (v1, v2) = (
                                line.get(i + 1).map_or(INVALID, |&c| hex_value(c)),
                                line.get(i + 2).map_or(INVALID, |&c| hex_value(c)),
                            );
                            if i + 2 < line.len() && v1 != INVALID && v2 != INVALID {
                                bytes.push((v1 << 4) + v2);
                                i += 2;
                            } else {
                                bytes.push(b'=');
                            }
                        }
                    }
                    b'_' => bytes.push(b' '),
                    c => bytes.push(c),
                }
                i += 1;
            }
            if endline {
                bytes.extend_from_slice(b"\r\n");
            }
            line.clear();
        };
        for &c in text {
            match c {
                b'\r' => {}
                b'\n' => flush(&mut line, bytes, true),
                _ => {
                    line.push(c);
                    if line.len() > 998 {
                        flush(&mut line, bytes, false);
                    }
                }
            }
        }
        flush(&mut line, bytes, false);
    }

    /// `b64_2byte` over one word's text, continuing the current group.
    fn b64(&mut self, text: &[u8], bytes: &mut Vec<u8>) {
        for &c in text {
            let Some(b) = base64_value(c) else { continue };
            if b == 64 {
                self.b64_codepoint = 0;
                self.b64_left = 0;
                continue;
            }
            let b = u32::from(b);
            let cp = self.b64_codepoint;
            let byte = |v: u32| (v & 0xff) as u8;
            match self.b64_left {
                0 => {
                    self.b64_codepoint = b;
                    self.b64_left = 3;
                }
                3 => {
                    bytes.push(byte((cp << 2) | (b >> 4)));
                    self.b64_codepoint = b;
                    self.b64_left = 2;
                }
                2 => {
                    bytes.push(byte((cp << 4) | (b >> 2)));
                    self.b64_codepoint = b;
                    self.b64_left = 1;
                }
                _ => {
                    bytes.push(byte((cp << 6) | b));
                    self.b64_codepoint = 0;
                    self.b64_left = 0;
                }
            }
        }
    }
}

/// `unfold2uni`: drops CR LF before SP/TAB; its state persists across text runs.
#[derive(Debug, Default)]
struct Unfold {
    state: u8,
}

impl Unfold {
    fn run(&mut self, text: &[u8], out: &mut Vec<u8>) {
        for &c in text {
            match self.state {
                0 => {
                    if c == b'\r' {
                        self.state = 1;
                    } else {
                        out.push(c);
                    }
                }
                1 => {
                    if c == b'\n' {
                        self.state = 2;
                    } else {
                        out.extend_from_slice(&[b'\r', c]);
                        self.state = 0;
                    }
                }
                _ => {
                    if c != b' ' && c != b'\t' {
                        out.extend_from_slice(b"\r\n");
                    }
                    out.push(c);
                    self.state = 0;
                }
            }
        }
    }
}

/// An encoded word found by the scan: `=?charset[*lang]?E?text?=`.
struct Word {
    /// Offset of the `=` that opens it.
    start: usize,
    charset: std::ops::Range<usize>,
    enc: Enc,
    text: std::ops::Range<usize>,
    /// Offset just past the closing `?=`.
    end: usize,
}

/// The next well-formed encoded word at or after `from`, scanning as `mimeheader_cat` does.
fn next_word(s: &[u8], mut from: usize) -> Option<Word> {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    loop {
        let eq = from + s.get(from..)?.iter().position(|&b| b == b'=')?;
        let start = eq + 1;
        if at(start) != b'?' {
            from = start;
            continue;
        }
        let mut endcharset = None;
        let mut p = start + 1;
        while !matches!(at(p), 0 | b'=' | b'?') {
            if at(p) == b'*' && endcharset.is_none() {
                endcharset = Some(p);
            }
            p += 1;
        }
        if at(p) != b'?' {
            from = p;
            continue;
        }
        let encoding = p;
        let enc = match at(encoding + 1) {
            b'q' | b'Q' => Enc::Q,
            b'b' | b'B' => Enc::B,
            _ => {
                from = p;
                continue;
            }
        };
        if at(encoding + 2) != b'?' {
            from = p;
            continue;
        }
        let mut p = encoding + 3;
        while !matches!(at(p), 0 | b'?') {
            if at(p) == b'=' && at(p + 1) == b'?' && at(p + 2) != b'=' {
                break;
            }
            p += 1;
        }
        if at(p) != b'?' || at(p + 1) != b'=' {
            from = p;
            continue;
        }
        return Some(Word {
            start: eq,
            charset: start + 1..endcharset.unwrap_or(encoding),
            enc,
            text: encoding + 3..p,
            end: p + 2,
        });
    }
}

/// Decode a header value to UTF-8 (`charset_parse_mimeheader(s, charset_flags)`); `utf8`
/// is imapd.conf's `rfc2047_utf8` (text outside encoded words read as UTF-8, else
/// US-ASCII with every 8-bit byte becoming U+FFFD). Like Cyrus's C string, the input ends
/// at its first NUL and so does the result.
pub fn decode_header(raw: &[u8], utf8: bool) -> Vec<u8> {
    let s = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
    let default_name: &[u8] = if utf8 { b"utf-8" } else { b"us-ascii" };
    let Some(mut default) = charset::decoder(default_name) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(s.len());
    let mut unfold = Unfold::default();
    let mut folded = Vec::new();
    // The word pipeline shared by consecutive words: charset decoder, encoding, B state.
    let mut last: Option<(Decoder, Enc, Extract)> = None;
    let mut eatspace = false;
    let mut text_start = 0;
    let mut from = 0;
    while let Some(w) = next_word(s, from) {
        let between = &s[text_start..w.start];
        if eatspace && !between.iter().all(|&c| is_space(c)) {
            eatspace = false;
        }
        if !eatspace {
            default.reset();
            folded.clear();
            unfold.run(between, &mut folded);
            default.feed(&folded, &mut out);
            last = None;
        }
        let Some(mut cs) = charset::decoder(&s[w.charset.clone()]) else {
            // Unknown charset: one U+FFFD for the whole word, into whichever converter is
            // current (it drops any pending sequence).
            match &mut last {
                Some((d, _, _)) => d.replacement(&mut out),
                None => default.replacement(&mut out),
            }
            last = None;
            text_start = w.end;
            from = w.end;
            eatspace = true;
            continue;
        };
        let reuse =
            matches!(&last, Some((d, e, _)) if d.canonical() == cs.canonical() && *e == w.enc);
        if !reuse {
            cs.reset();
            last = Some((cs, w.enc, Extract::default()));
        }
        if let Some((dec, enc, extract)) = &mut last {
            let mut bytes = Vec::with_capacity(w.text.len());
            let text = &s[w.text.clone()];
            match enc {
                Enc::Q => Extract::qp(text, &mut bytes),
                Enc::B => extract.b64(text, &mut bytes),
            }
            dec.feed(&bytes, &mut out);
        }
        text_start = w.end;
        from = w.end;
        eatspace = true;
    }
    if text_start < s.len() {
        default.reset();
        folded.clear();
        unfold.run(&s[text_start..], &mut folded);
        default.feed(&folded, &mut out);
    }
    if let Some(nul) = out.iter().position(|&b| b == 0) {
        out.truncate(nul);
    }
    out
}

/// `ENCODED_MAX_LINE_LEN`: encoded words are split before a line would reach this.
const ENCODED_MAX_LINE_LEN: usize = 72;

/// Re-encode a non-ASCII parameter value the way `message_parse_type` does after decoding a
/// Content-Type value that started with `=?` (§4.6): `charset_encode_mimeheader(value, 0)`,
/// which for a value with an 8-bit byte is `qp_encode` in header mode — `=?UTF-8?Q?`,
/// printable ASCII except `=?_` literal, SP as `_`, other bytes `=XX`, CR LF (+WSP) splitting
/// the word, and `?=` CR LF SP `=?UTF-8?Q?` before a line would reach 72 columns (never
/// inside a UTF-8 sequence). Known difference: Cyrus first looks for an addr-spec in the
/// value (`find_addr`) and then encodes only the phrases around it; such values are
/// encoded whole here.
pub fn encode_nonascii_param(value: &[u8]) -> Vec<u8> {
    let value = &value[..value.iter().position(|&b| b == 0).unwrap_or(value.len())];
    let mut out = Vec::with_capacity(value.len() * 3 + 12);
    out.extend_from_slice(b"=?UTF-8?Q?");
    let mut cnt = 10usize;
    let mut n = 0;
    while n < value.len() {
        let this = value[n];
        let next = value.get(n + 1).copied().unwrap_or(0);
        let needbytes = match this {
            0xc0..=0xdf => 3,
            0xe0..=0xef => 6,
            0xf0..=0xf7 => 9,
            _ => 0,
        };
        if cnt + needbytes >= ENCODED_MAX_LINE_LEN {
            out.extend_from_slice(b"?=\r\n =?UTF-8?Q?");
            cnt = 11;
        }
        // QPSAFECHAR: printable ASCII except '='; in headers '?' and '_' are not safe.
        if (33..=126).contains(&this) && !matches!(this, b'=' | b'?' | b'_') {
            out.push(this);
            cnt += 1;
        } else if this == b' ' {
            out.push(b'_');
            cnt += 1;
        } else if this == b'\r' && next == b'\n' {
            if n + 2 < value.len() {
                if matches!(value[n + 2], b' ' | b'\t') {
                    n += 1;
                }
                out.extend_from_slice(b"?=\r\n =?UTF-8?Q?");
                cnt = 12;
            }
            n += 1;
        } else {
            out.extend_from_slice(format!("={this:02X}").as_bytes());
            cnt += 3;
        }
        n += 1;
    }
    out.extend_from_slice(b"?=");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> String {
        String::from_utf8(decode_header(s.as_bytes(), false)).unwrap()
    }

    #[test]
    fn verified_examples() {
        // cyrus-mailbox-format.md §4.9, checked against Cyrus 3.6.1 cache entries.
        assert_eq!(
            d("=?utf-8?q?a?= =?utf-8?q?b?=  c =?unknown-cs?q?zz?= d=?utf-8?q?e?=f =?utf-8?b?!!!?= =?iso-8859-1?q?caf=E9?="),
            "ab  c \u{fffd} def café"
        );
        assert_eq!(d("=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?="), "テスト");
        assert_eq!(d("caf\u{e9}"), "caf\u{fffd}\u{fffd}");
        assert_eq!(
            String::from_utf8(decode_header("café".as_bytes(), true)).unwrap(),
            "café"
        );
    }

    #[test]
    fn shared_decoders_and_edges() {
        // A UTF-8 sequence and a base64 group split across words sharing a decoder.
        assert_eq!(d("=?utf-8?q?=C3?= =?utf-8?q?=A9?="), "é");
        assert_eq!(d("=?utf-8?b?w6?= =?utf-8?b?k=?="), "é");
        // Different encodings do not share: the pending byte is dropped.
        assert_eq!(d("=?utf-8?q?=C3?= =?utf-8?b?qQ==?="), "\u{fffd}");
        // Non-space text between words is kept and resets the pipeline.
        assert_eq!(d("=?utf-8?q?a?= x =?utf-8?q?b?="), "a x b");
        // Q: `_` is a space, trailing blanks are stripped, a lone `=` is literal.
        assert_eq!(d("=?us-ascii?q?a_b__?="), "a b  ");
        assert_eq!(d("=?us-ascii?q?a_b \t?="), "a b");
        assert_eq!(d("=?us-ascii?q?a=4?="), "a=4");
        assert_eq!(d("=?us-ascii?q?a=?="), "a");
        // Not encoded words.
        assert_eq!(d("=?utf-8?x?a?="), "=?utf-8?x?a?=");
        assert_eq!(d("=?utf-8?q?a"), "=?utf-8?q?a");
        assert_eq!(d("=??q?a?="), "\u{fffd}");
        // Folds outside words are unfolded; a decoded NUL ends the string.
        assert_eq!(d("a\r\n b"), "a b");
        assert_eq!(d("=?utf-8?q?a=00b?="), "a");
        assert_eq!(d(""), "");
    }

    #[test]
    fn param_reencoding() {
        assert_eq!(
            encode_nonascii_param("café noir?.txt".as_bytes()),
            b"=?UTF-8?Q?caf=C3=A9_noir=3F.txt?="
        );
        let long = "é".repeat(40);
        let enc = encode_nonascii_param(long.as_bytes());
        let first = enc.split(|&b| b == b'\r').next().unwrap();
        assert!(first.len() < ENCODED_MAX_LINE_LEN + 2, "{}", first.len());
        assert_eq!(decode_header(&unfold_for_test(&enc), true), long.as_bytes());
    }

    fn unfold_for_test(v: &[u8]) -> Vec<u8> {
        crate::mime::unstructured(v)
    }

    #[test]
    fn hostile_input_is_linear_and_safe() {
        let mut s = Vec::new();
        for _ in 0..20000 {
            s.extend_from_slice(b"=?=?utf-8?q?");
        }
        let t = std::time::Instant::now();
        let _ = decode_header(&s, false);
        let _ = decode_header(&[b'='; 100_000], true);
        assert!(t.elapsed().as_secs() < 5);
    }
}
