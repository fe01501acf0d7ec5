//! Structured MIME header values as Cyrus 3.6 parses them (imap/message.c
//! `message_parse_type`, `_params`, `_fold_params`, `_disposition`, `_language`,
//! `_encoding`, `_rfc822space`).
//!
//! Cyrus runs these over a C string that starts at the field's value and runs to the end of
//! the whole header block; a field ends where a line break is not followed by SP/TAB. The
//! functions here take the same view: `s` is the rest of the header block from the value on
//! (already cut at the first NUL, as the C string would be), and the end of the slice plays
//! the part of the NUL. They never fail: a malformed value yields what Cyrus keeps.

use super::rfc2047;

/// One `attribute=value` pair; the attribute is uppercased, the value kept as written
/// (unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub attribute: Vec<u8>,
    pub value: Vec<u8>,
}

impl Param {
    pub fn new(attribute: &[u8], value: &[u8]) -> Self {
        Param {
            attribute: attribute.to_vec(),
            value: value.to_vec(),
        }
    }
}

/// A parsed Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Uppercased type, e.g. `TEXT`.
    pub typ: Vec<u8>,
    /// Uppercased subtype, e.g. `PLAIN`.
    pub subtype: Vec<u8>,
    pub params: Vec<Param>,
}

/// A parsed Content-Disposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// Uppercased disposition, e.g. `ATTACHMENT`.
    pub value: Vec<u8>,
    pub params: Vec<Param>,
}

/// `MIME_TSPECIALS` (imap/message.h).
const TSPECIALS: &[u8] = b"()<>@,;:\\\"/[]?=";

/// The byte at `i`, or NUL past the end (the C string's terminator).
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// C-locale `isspace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_wsp(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// `*p < ' '` on a signed `char`: control characters and every byte ≥ 0x80.
fn lt_space(c: u8) -> bool {
    !(b' '..0x80).contains(&c)
}

fn bad_token_char(c: u8) -> bool {
    lt_space(c) || TSPECIALS.contains(&c)
}

fn ucase(s: &[u8]) -> Vec<u8> {
    s.to_ascii_uppercase()
}

/// `message_parse_rfc822space`: skip whitespace, folds and (nested) comments from `p`.
/// `None` when the field (or the string) ends first.
pub(crate) fn skip_space(s: &[u8], mut p: usize) -> Option<usize> {
    loop {
        let c = at(s, p);
        if !(is_space(c) || c == b'(') {
            break;
        }
        if c == b'\n' {
            p += 1;
            if !is_wsp(at(s, p)) {
                return None;
            }
        } else if c == b'(' {
            p += 1;
            let mut level: usize = 1;
            while level > 0 {
                match at(s, p) {
                    b'\n' => {
                        p += 1;
                        if !is_wsp(at(s, p)) {
                            return None;
                        }
                    }
                    0 => return None,
                    b'\\' => p += 1,
                    b'(' => level += 1,
                    b')' => level -= 1,
                    _ => {}
                }
                p += 1;
            }
        } else {
            p += 1;
        }
    }
    if at(s, p) == 0 {
        None
    } else {
        Some(p)
    }
}

/// The end of a token starting at `p`: the first byte in `stop`, whitespace or the end.
/// `None` if a control/8-bit byte or tspecial comes first.
fn token_end(s: &[u8], mut p: usize, stop: &[u8]) -> Option<usize> {
    loop {
        let c = at(s, p);
        if c == 0 || is_space(c) || stop.contains(&c) {
            return Some(p);
        }
        if bad_token_char(c) {
            return None;
        }
        p += 1;
    }
}

/// What may follow a type or disposition token at `p`: the end of the field, or `;` and
/// parameters (folded per RFC 2231). `None` (header ignored) for anything else.
fn params_after(s: &[u8], p: usize) -> Option<Vec<Param>> {
    match skip_space(s, p) {
        None => Some(Vec::new()),
        Some(a) if at(s, a) == b';' => {
            let mut params = parse_params(s, a + 1);
            fold_params(&mut params);
            Some(params)
        }
        Some(_) => None,
    }
}

/// `message_parse_type`. `field_raw` is the field's value up to its final line end; it is
/// only used for the RFC 2047 pre-decode of a value starting with `=?` (old Mail.app).
pub fn parse_content_type(s: &[u8], field_raw: &[u8]) -> Option<ContentType> {
    let start = skip_space(s, 0)?;
    let decoded: Vec<u8>;
    let mut s = s;
    let mut p = start;
    let mut predecoded = false;
    let rest = &s[start..];
    if rest.len() > 2 && rest[0] == b'=' && rest[1] == b'?' {
        // Cyrus decodes the C string from here to the end of the header block
        // (charset_decode_mimeheader, KEEPCASE, no rfc2047_utf8); we decode the field itself,
        // which is all the type parser reads unless a quoted string runs over a bare LF.
        let value = field_raw.get(start..).unwrap_or(&[]);
        let mut d = rfc2047::decode_header(value, false);
        if let Some(nul) = d.iter().position(|&b| b == 0) {
            d.truncate(nul);
        }
        predecoded = true;
        if d.as_slice() != value {
            decoded = d;
            s = &decoded;
            p = 0;
        }
    }
    let type_start = p;
    let type_end = token_end(s, p, b"/(")?;
    let mut p = skip_space(s, type_end)?;
    if at(s, p) != b'/' {
        return None;
    }
    p += 1;
    let sub_start = skip_space(s, p)?;
    let sub_end = token_end(s, sub_start, b";(")?;
    let mut params = params_after(s, sub_end)?;
    if predecoded {
        // the decoded values may now hold 8-bit text: Cyrus re-encodes all but extended ones
        for param in &mut params {
            if param.attribute.last().map_or(true, |&c| c == b'*') {
                continue;
            }
            if param.value.iter().any(|&b| b >= 0x80) {
                param.value = rfc2047::encode_nonascii_param(&param.value);
            }
        }
    }
    Some(ContentType {
        typ: ucase(&s[type_start..type_end]),
        subtype: ucase(&s[sub_start..sub_end]),
        params,
    })
}

/// `message_parse_disposition`.
pub fn parse_disposition(s: &[u8]) -> Option<Disposition> {
    let start = skip_space(s, 0)?;
    let end = token_end(s, start, b";(")?;
    let params = params_after(s, end)?;
    Some(Disposition {
        value: ucase(&s[start..end]),
        params,
    })
}

/// `message_parse_encoding`: one token, uppercased; `None` if absent or followed by garbage.
pub fn parse_encoding(s: &[u8]) -> Option<Vec<u8>> {
    let start = skip_space(s, 0)?;
    let mut p = start;
    loop {
        let c = at(s, p);
        if c == 0 || is_space(c) || c == b'(' {
            break;
        }
        if bad_token_char(c) {
            return None;
        }
        p += 1;
    }
    if skip_space(s, p).is_some() {
        return None;
    }
    Some(ucase(&s[start..p]))
}

/// `message_parse_language`: comma-separated alpha/`-` tags, uppercased; parsing stops (keeping
/// what it has) at anything else.
pub fn parse_language(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut p = 0;
    loop {
        let Some(start) = skip_space(s, p) else {
            return out;
        };
        let mut q = start;
        loop {
            let c = at(s, q);
            if c == 0 || is_space(c) || c == b',' || c == b'(' {
                break;
            }
            if c != b'-' && !c.is_ascii_alphabetic() {
                return out;
            }
            q += 1;
        }
        let value = ucase(&s[start..q]);
        match skip_space(s, q) {
            None => {
                out.push(value);
                return out;
            }
            Some(a) => {
                if at(s, a) != b',' {
                    return out;
                }
                out.push(value);
                p = a + 1;
            }
        }
    }
}

/// `message_parse_params`, from just after a `;`.
pub fn parse_params(s: &[u8], mut p: usize) -> Vec<Param> {
    let mut out = Vec::new();
    loop {
        let Some(q) = skip_space(s, p) else {
            return out;
        };
        p = q;
        match parse_one_param(s, &mut p) {
            ParamStep::Param(param) => out.push(param),
            ParamStep::End => return out,
            ParamStep::End1(param) => {
                out.push(param);
                return out;
            }
            ParamStep::Skip => {
                while !matches!(at(s, p), 0 | b';' | b'\r' | b'\n') {
                    p += 1;
                }
                if at(s, p) == b';' {
                    p += 1;
                }
            }
        }
    }
}

enum ParamStep {
    /// A parameter; `p` is past its `;`.
    Param(Param),
    /// A parameter, and the field ended after it.
    End1(Param),
    /// Stop parsing (Cyrus `return`).
    End,
    /// Malformed: skip to the next `;` from `p`.
    Skip,
}

fn parse_one_param(s: &[u8], p: &mut usize) -> ParamStep {
    let attr_start = *p;
    loop {
        let c = at(s, *p);
        if c == 0 || is_space(c) || c == b'=' || c == b'(' {
            break;
        }
        if bad_token_char(c) {
            return ParamStep::Skip;
        }
        *p += 1;
    }
    let attr_end = *p;
    let Some(q) = skip_space(s, *p) else {
        return ParamStep::End;
    };
    *p = q;
    let c = at(s, *p);
    *p += 1;
    if c != b'=' {
        return ParamStep::Skip;
    }
    let Some(q) = skip_space(s, *p) else {
        return ParamStep::End;
    };
    *p = q;
    let value_start = *p;
    let value: Vec<u8>;
    if at(s, *p) == b'"' {
        *p += 1;
        loop {
            let c = at(s, *p);
            if c == 0 || c == b'"' {
                break;
            }
            if c == b'\\' {
                *p += 1;
                if at(s, *p) == 0 {
                    return ParamStep::End;
                }
            }
            if at(s, *p) == b'\r' {
                if at(s, *p + 1) == b'\n' && is_wsp(at(s, *p + 2)) {
                    *p += 2;
                } else {
                    return ParamStep::End;
                }
            }
            *p += 1;
        }
        let close = *p;
        if at(s, *p) == 0 {
            return ParamStep::End;
        }
        *p += 1;
        value = unquote(s, value_start + 1, close);
    } else {
        let mut endval = *p;
        loop {
            let c = at(s, *p);
            if c == 0 || c == b';' || c == b'(' {
                break;
            }
            if c == b'\r' {
                if at(s, *p + 1) == b'\n' && is_wsp(at(s, *p + 2)) {
                    *p += 2;
                    continue;
                }
                break;
            }
            if c < b' ' && c != b'\t' {
                return ParamStep::Skip;
            }
            if !is_wsp(c) {
                endval = *p;
            }
            *p += 1;
        }
        *p = endval + 1;
        value = s.get(value_start..*p).unwrap_or(&[]).to_vec();
    }
    let param = Param {
        attribute: ucase(&s[attr_start..attr_end]),
        value,
    };
    match skip_space(s, *p) {
        None => ParamStep::End1(param),
        Some(q) => {
            *p = q + 1;
            if at(s, q) != b';' {
                ParamStep::Skip
            } else {
                ParamStep::Param(param)
            }
        }
    }
}

/// The unquoting copy loop of `message_parse_params`: `\x` → `x`, CR LF dropped (the WSP of
/// the fold kept). `close` is the closing quote found by the scanning loop.
fn unquote(s: &[u8], mut v: usize, close: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(close.saturating_sub(v));
    while v < close && at(s, v) != b'"' {
        if at(s, v) == b'\\' {
            v += 1;
        } else if at(s, v) == b'\r' {
            v += 2;
        }
        if v >= s.len() {
            break;
        }
        out.push(at(s, v));
        v += 1;
    }
    out
}

/// `%XX`-encode a simple RFC 2231 section for joining to an extended one.
fn pct_encode(out: &mut Vec<u8>, v: &[u8]) {
    for &c in v {
        if c <= b' ' || c >= 0x7f || matches!(c, b'*' | b'\'' | b'%') || TSPECIALS.contains(&c) {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        } else {
            out.push(c);
        }
    }
}

/// `message_fold_params`: join RFC 2231 sections `NAME*0`, `NAME*1`, … (each possibly
/// extended, `NAME*1*`) into one `NAME` or `NAME*` parameter, up to section 99.
pub fn fold_params(params: &mut Vec<Param>) {
    let mut i = 0;
    while i < params.len() {
        let attr = &params[i].attribute;
        let Some(ast) = attr.iter().position(|&c| c == b'*') else {
            i += 1;
            continue;
        };
        let tail = &attr[ast + 1..];
        let initial = tail.first() == Some(&b'0') && (tail.len() == 1 || tail == b"0*");
        if !initial {
            i += 1;
            continue;
        }
        let mut is_extended = tail.len() == 2;
        let prefix = attr[..ast].to_vec();
        let mut value = std::mem::take(&mut params[i].value);
        // the initial section no longer matches its own name while we search
        params[i].attribute.truncate(ast);
        for section in 1..100u32 {
            let sect = format!("*{section}");
            let found = params.iter().position(|c| {
                c.attribute.starts_with(&prefix)
                    && c.attribute[prefix.len()..].starts_with(sect.as_bytes())
                    && matches!(&c.attribute[prefix.len() + sect.len()..], b"" | b"*")
            });
            let Some(j) = found else {
                break;
            };
            let cont = params.remove(j);
            if j < i {
                i -= 1;
            }
            let cont_extended = cont.attribute.last() == Some(&b'*');
            if !cont_extended {
                if is_extended {
                    pct_encode(&mut value, &cont.value);
                } else {
                    value.extend_from_slice(&cont.value);
                }
            } else if is_extended {
                value.extend_from_slice(&cont.value);
            } else {
                let mut joined = b"''".to_vec();
                pct_encode(&mut joined, &value);
                joined.extend_from_slice(&cont.value);
                value = joined;
                is_extended = true;
            }
        }
        let p = &mut params[i];
        p.value = value;
        if is_extended {
            p.attribute.push(b'*');
        }
        i += 1;
    }
}

/// `charset_parse_mimexvalue`: decode an RFC 2231 extended value `charset'lang'%XX…` to
/// UTF-8; `None` if it is not one (or the charset is unknown), as for `BOUNDARY*`.
pub fn decode_extended_value(s: &[u8]) -> Option<Vec<u8>> {
    let q1 = s.iter().position(|&c| c == b'\'')?;
    let cs = &s[..q1];
    if !super::charset::is_known(cs) {
        return None;
    }
    let rest = &s[q1 + 1..];
    let q2 = rest.iter().position(|&c| c == b'\'')?;
    let enc = &rest[q2 + 1..];
    let mut raw = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        if enc[i] == b'%' {
            let (Some(&h), Some(&l)) = (enc.get(i + 1), enc.get(i + 2)) else {
                return None;
            };
            // hex_to_bin masks with 0x7f before its table lookup
            let hv = (h & 0x7f) as char;
            let lv = (l & 0x7f) as char;
            let (Some(h), Some(l)) = (hv.to_digit(16), lv.to_digit(16)) else {
                return None;
            };
            raw.push(((h << 4) | l) as u8);
            i += 3;
        } else {
            raw.push(enc[i]);
            i += 1;
        }
    }
    let mut out = super::charset::decoder(cs)?.decode(&raw);
    // the boundary is kept as a C string
    if let Some(nul) = out.iter().position(|&b| b == 0) {
        out.truncate(nul);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(s: &[u8]) -> Option<ContentType> {
        parse_content_type(s, s)
    }

    fn p(a: &str, v: &str) -> Param {
        Param::new(a.as_bytes(), v.as_bytes())
    }

    #[test]
    fn content_type_basic() {
        let c = ct(b" text/plain; charset=\"utf-8\"\r\n").unwrap();
        assert_eq!(c.typ, b"TEXT");
        assert_eq!(c.subtype, b"PLAIN");
        assert_eq!(c.params, vec![p("CHARSET", "utf-8")]);
        assert_eq!(ct(b" text\r\n"), None);
        assert_eq!(ct(b" te@xt/plain\r\n"), None);
        assert_eq!(ct(b" text/plain garbage\r\n"), None);
        let c = ct(b" (c) multipart / mixed (x);\r\n\tboundary = abc ; x=\"a\\\"b\"\r\nNext: y")
            .unwrap();
        assert_eq!(c.typ, b"MULTIPART");
        assert_eq!(c.params, vec![p("BOUNDARY", "abc"), p("X", "a\"b")]);
    }

    #[test]
    fn params_quirks() {
        // token values keep folds and inner spaces, lose trailing spaces
        let c = ct(b" a/b; name=x y \r\n z\r\n").unwrap();
        assert_eq!(c.params, vec![p("NAME", "x y \r\n z")]);
        // a malformed parameter is skipped to the next ';'
        let c = ct(b" a/b; bad; ok=1\r\n").unwrap();
        assert_eq!(c.params, vec![p("OK", "1")]);
        // an unterminated quoted string ends parsing
        let c = ct(b" a/b; ok=1; q=\"abc\r\n").unwrap();
        assert_eq!(c.params, vec![p("OK", "1")]);
        // an empty token value takes the ';' and then garbage follows: both dropped
        let c = ct(b" a/b; e=; x=y\r\n").unwrap();
        assert_eq!(c.params, vec![]);
    }

    #[test]
    fn rfc2231_folding() {
        let mut v = vec![
            p("TITLE*0*", "us-ascii'en'This%20is%20"),
            p("TITLE*1", "***fun"),
            p("TITLE*2*", "%20stuff"),
        ];
        fold_params(&mut v);
        assert_eq!(
            v,
            vec![p("TITLE*", "us-ascii'en'This%20is%20%2A%2A%2Afun%20stuff")]
        );
        let mut v = vec![p("N*1", "b"), p("N*0", "a c"), p("N*2*", "%41")];
        fold_params(&mut v);
        assert_eq!(v, vec![p("N*", "''a%20cb%41")]);
        let mut v = vec![p("N*0", "a"), p("N*1", "b"), p("M*1", "x")];
        fold_params(&mut v);
        assert_eq!(v, vec![p("N", "ab"), p("M*1", "x")]);
    }

    #[test]
    fn disposition_language_encoding() {
        let d = parse_disposition(b" attachment; filename=a.txt\r\n").unwrap();
        assert_eq!(d.value, b"ATTACHMENT");
        assert_eq!(d.params, vec![p("FILENAME", "a.txt")]);
        assert_eq!(
            parse_language(b" en, de-CH\r\n"),
            vec![b"EN".to_vec(), b"DE-CH".to_vec()]
        );
        assert_eq!(parse_language(b" en, d1\r\n"), vec![b"EN".to_vec()]);
        assert_eq!(parse_encoding(b" base64 (x)\r\n"), Some(b"BASE64".to_vec()));
        assert_eq!(parse_encoding(b" base64;\r\n"), None);
        assert_eq!(parse_encoding(b" \r\n"), None);
    }

    #[test]
    fn comments_and_folds() {
        assert_eq!(skip_space(b" (a (b) \\) c) x", 0), Some(14));
        assert_eq!(skip_space(b" \r\nX", 0), None);
        assert_eq!(skip_space(b" \r\n x", 0), Some(4));
        assert_eq!(skip_space(b" (open\r\nX", 0), None);
    }
}
