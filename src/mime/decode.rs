//! Content-transfer decoders exactly as Cyrus 3.6 runs them for the per-part content GUIDs
//! (`charset_decode_sha1` in lib/charset.c: `qp2byte`/`qp_flushline`, `b64_2byte`).
//!
//! Both are streaming: they hand decoded bytes to a sink in chunks so a large part is hashed
//! without materialising its decoded form. They never fail; invalid input is skipped or kept
//! literally the way Cyrus does.

/// Transfer encodings as `message_parse_charset` classifies a part's Content-Transfer-Encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Absent, `7BIT`, `8BIT`, `BINARY`, or any MESSAGE/* part (`ENCODING_NONE`, 0).
    None,
    /// `QUOTED-PRINTABLE` (`ENCODING_QP`, 1).
    QuotedPrintable,
    /// `BASE64` (`ENCODING_BASE64`, 2).
    Base64,
    /// Anything else (`ENCODING_UNKNOWN`, 255): nothing is decoded.
    Unknown,
}

impl Encoding {
    /// The number Cyrus stores in the SECTION charset word.
    pub fn number(self) -> u32 {
        match self {
            Encoding::None => 0,
            Encoding::QuotedPrintable => 1,
            Encoding::Base64 => 2,
            Encoding::Unknown => 255,
        }
    }
}

/// Cyrus's `index_hex`: the value of a hex digit (either case), `None` otherwise.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `qp_state.buf` holds 1000 bytes; `qp2byte` flushes (without a line break) once it holds
/// more than 998.
const QP_MAX_LINE: usize = 998;

/// Decode quoted-printable `src` (body form: `_` is literal) into `sink`, as `qp2byte` does:
/// CRs are dropped everywhere; each LF-terminated line has trailing SP/TAB stripped, a final
/// `=` is a soft break, `=XX` decodes, any other `=` is literal, and a CRLF follows each hard
/// line; a line longer than 998 bytes is flushed in pieces without a line break.
pub fn qp_decode(src: &[u8], sink: &mut dyn FnMut(&[u8])) {
    let mut line: Vec<u8> = Vec::with_capacity(QP_MAX_LINE + 2);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    for &c in src {
        match c {
            b'\r' => {}
            b'\n' => qp_flush_line(&mut line, true, &mut out),
            _ => {
                line.push(c);
                if line.len() > QP_MAX_LINE {
                    qp_flush_line(&mut line, false, &mut out);
                }
            }
        }
        if out.len() >= 4096 {
            sink(&out);
            out.clear();
        }
    }
    qp_flush_line(&mut line, false, &mut out);
    if !out.is_empty() {
        sink(&out);
    }
}

/// `qp_flushline`: decode one buffered line into `out`.
fn qp_flush_line(line: &mut Vec<u8>, mut endline: bool, out: &mut Vec<u8>) {
    while matches!(line.last(), Some(b' ' | b'\t')) {
        line.pop();
    }
    let n = line.len();
    let mut i = 0;
    while i < n {
        let b = line[i];
        if b == b'=' {
            if i + 1 >= n {
                endline = false; // soft line break
            } else if let (true, Some(hi), Some(lo)) = (
                i + 2 < n,
                line.get(i + 1).copied().and_then(hex_value),
                line.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push((hi << 4) | lo);
                i += 2;
            } else {
                out.push(b'=');
            }
        } else {
            out.push(b);
        }
        i += 1;
    }
    if endline {
        out.extend_from_slice(b"\r\n");
    }
    line.clear();
}

/// `index_64` as a table: the 6-bit value of a base64 character, [`B64_PAD`] for `=`,
/// [`B64_SKIP`] for whitespace (XS) and invalid characters (XX), which are both skipped.
/// A table rather than a `match` per byte: decoding attachments is a hot path of reconstruct.
const B64_TABLE: [u8; 256] = {
    let mut t = [B64_SKIP; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        t[c] = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => B64_PAD,
            _ => B64_SKIP,
        };
        c += 1;
    }
    t
};
const B64_PAD: u8 = 64;
const B64_SKIP: u8 = 0xff;
/// Decoded bytes handed to the sink at a time.
const B64_CHUNK: usize = 4096;

/// Decode base64 `src` into `sink`, as `b64_2byte` does: whitespace and invalid characters
/// are skipped, `=` resets the 4-character group, an incomplete trailing group is dropped.
pub fn base64_decode(src: &[u8], sink: &mut dyn FnMut(&[u8])) {
    let mut out = [0u8; B64_CHUNK];
    let mut n = 0usize;
    let mut code: u32 = 0;
    let mut left: u8 = 0;
    let mut i = 0usize;
    while i < src.len() {
        // Fast path: at a group boundary, four data characters decode to three bytes at once
        // (the same bytes the per-character steps below give; `code` is then dead).
        if left == 0 && n + 3 <= B64_CHUNK {
            if let Some(&[a, b, c, d]) = src.get(i..i.saturating_add(4)) {
                let (a, b, c, d) = (
                    B64_TABLE[usize::from(a)],
                    B64_TABLE[usize::from(b)],
                    B64_TABLE[usize::from(c)],
                    B64_TABLE[usize::from(d)],
                );
                if (a | b | c | d) < B64_PAD {
                    let w = (u32::from(a) << 18)
                        | (u32::from(b) << 12)
                        | (u32::from(c) << 6)
                        | u32::from(d);
                    if let Some(slot) = out.get_mut(n..n + 3) {
                        slot.copy_from_slice(&w.to_be_bytes()[1..]);
                    }
                    n += 3;
                    i += 4;
                    if n == B64_CHUNK {
                        sink(&out);
                        n = 0;
                    }
                    continue;
                }
            }
        }
        let Some(&c) = src.get(i) else {
            break;
        };
        i += 1;
        let v = B64_TABLE[usize::from(c)];
        if v == B64_SKIP {
            continue;
        }
        if v == B64_PAD {
            code = 0;
            left = 0;
            continue;
        }
        let b = u32::from(v);
        let byte = match left {
            0 => {
                code = b;
                left = 3;
                continue;
            }
            3 => {
                let o = (code << 2) | (b >> 4);
                left = 2;
                o
            }
            2 => {
                let o = (code << 4) | (b >> 2);
                left = 1;
                o
            }
            _ => {
                let o = (code << 6) | b;
                left = 0;
                o
            }
        };
        code = b;
        if let Some(slot) = out.get_mut(n) {
            *slot = (byte & 0xff) as u8;
            n += 1;
        }
        if n == B64_CHUNK {
            sink(&out);
            n = 0;
        }
    }
    if n > 0 {
        sink(&out[..n]);
    }
}

/// `charset_decode_sha1`: SHA-1 and length of the transfer-decoded `src`; `None` for an
/// unknown encoding (Cyrus then stores a null GUID and size 0).
pub fn decoded_sha1(src: &[u8], encoding: Encoding) -> Option<([u8; 20], u64)> {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    let mut len: u64 = 0;
    let mut sink = |chunk: &[u8]| {
        hasher.update(chunk);
        len = len.saturating_add(chunk.len() as u64);
    };
    match encoding {
        Encoding::None => sink(src),
        Encoding::QuotedPrintable => qp_decode(src, &mut sink),
        Encoding::Base64 => base64_decode(src, &mut sink),
        Encoding::Unknown => return None,
    }
    Some((hasher.finalize().into(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        qp_decode(s, &mut |c| v.extend_from_slice(c));
        v
    }

    fn b64(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        base64_decode(s, &mut |c| v.extend_from_slice(c));
        v
    }

    #[test]
    fn qp_rules() {
        assert_eq!(qp(b"a=3Db=3d\r\n"), b"a=b=\r\n");
        assert_eq!(qp(b"soft=\r\nbreak"), b"softbreak");
        assert_eq!(qp(b"trail  \t\r\nx"), b"trail\r\nx");
        assert_eq!(qp(b"bad=ZZ=4"), b"bad=ZZ=4");
        assert_eq!(qp(b"=4\n"), b"=4\r\n");
        assert_eq!(qp(b"a_b\rc"), b"a_bc");
        assert_eq!(qp(b"bare\nlf"), b"bare\r\nlf");
        // "=XX" right at the end of a line still decodes; "=X" at the end does not
        assert_eq!(qp(b"x=4"), b"x=4");
        assert_eq!(qp(b"x=41\n"), b"xA\r\n");
        assert_eq!(qp(b"x=41"), b"xA");
    }

    #[test]
    fn qp_overlong_line_flushes_without_crlf() {
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"b\r\n");
        let mut want = vec![b'a'; 999];
        want.extend_from_slice(b"b\r\n");
        assert_eq!(qp(&long), want);
        // trailing spaces at the 999-byte flush point are stripped
        let mut sp = vec![b'a'; 998];
        sp.push(b' ');
        sp.extend_from_slice(b"c\n");
        let mut want = vec![b'a'; 998];
        want.extend_from_slice(b"c\r\n");
        assert_eq!(qp(&sp), want);
    }

    #[test]
    fn base64_rules() {
        assert_eq!(b64(b"aGVsbG8="), b"hello");
        assert_eq!(b64(b"aGVs\r\nbG8h"), b"hello!");
        assert_eq!(b64(b"!!!"), b"");
        assert_eq!(b64(b"aGV=sbG8"), b"he\xb1\xb1\xbc");
        assert_eq!(b64(b"aG"), b"h");
        assert_eq!(b64(b"a"), b"");
    }

    #[test]
    fn sha1_of_decoded() {
        let (g, n) = decoded_sha1(b"aGVsbG8=", Encoding::Base64).unwrap();
        let (g2, n2) = decoded_sha1(b"hello", Encoding::None).unwrap();
        assert_eq!((g, n), (g2, n2));
        assert!(decoded_sha1(b"x", Encoding::Unknown).is_none());
    }

    /// The per-character `b64_2byte` loop alone, to check the four-at-a-time fast path
    /// against.
    fn b64_reference(src: &[u8]) -> Vec<u8> {
        let (mut out, mut code, mut left) = (Vec::new(), 0u32, 0u8);
        for &c in src {
            let v = B64_TABLE[usize::from(c)];
            if v == B64_SKIP {
                continue;
            }
            if v == B64_PAD {
                (code, left) = (0, 0);
                continue;
            }
            let b = u32::from(v);
            let byte = match left {
                0 => {
                    (code, left) = (b, 3);
                    continue;
                }
                3 => (code << 2) | (b >> 4),
                2 => (code << 4) | (b >> 2),
                _ => (code << 6) | b,
            };
            left = if left == 1 { 0 } else { left - 1 };
            code = b;
            out.push((byte & 0xff) as u8);
        }
        out
    }

    #[test]
    fn base64_fast_path_matches_the_per_character_decoder() {
        // A deterministic mix of data characters, line breaks, padding and junk, long enough
        // to cross several output chunks at every alignment.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let noise = b"\r\n =*\t-";
        let mut x: u32 = 12345;
        for round in 0..40 {
            let mut src = Vec::new();
            for _ in 0..(3000 + round * 97) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let r = (x >> 16) as usize;
                if r % (1 + round % 13) == 0 && round > 0 {
                    src.push(noise[r % noise.len()]);
                } else {
                    src.push(alphabet[r % alphabet.len()]);
                }
            }
            assert_eq!(b64(&src), b64_reference(&src), "round {round}");
            for cut in [0, 1, 2, 3, 5] {
                let s = &src[cut..];
                assert_eq!(b64(s), b64_reference(s), "round {round} cut {cut}");
            }
        }
    }
}
