//! The dlist text encoding Cyrus uses for `cyrus.header` (3.6+), mailboxes.db values (2.5+)
//! and quota records (2.5+).
//!
//! Owns: the value tree ([`Dlist`]), a parser that accepts what Cyrus's
//! `imap/dlist.c:_parsesax` accepts, and a writer that produces exactly what
//! `dlist_print` (with `prot_printastring`) produces, so every value Cyrus wrote
//! round-trips byte for byte. It knows nothing about what the keys mean: the
//! `header`, `mboxlist` and `quota` modules interpret the tree.
//!
//! Strings are kept as bytes only; whether Cyrus printed one as an atom, a quoted
//! string or a literal is a pure function of its bytes, so the writer recomputes it.

use thiserror::Error;

/// Longest string Cyrus prints as an atom or a quoted string (`lib/prot.c` `MAXQSTRING`):
/// a string of this many bytes or more is always a literal.
pub const MAX_QSTRING: usize = 1024;

/// Deepest nesting the parser accepts. Cyrus's own files nest at most three levels
/// (an I-record's `H` history); the cap keeps hostile input from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// One dlist value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dlist {
    /// The atom `NIL` (a NULL string in Cyrus).
    Nil,
    /// A string: printed as an atom, a quoted string or a literal depending on its bytes.
    Str(Vec<u8>),
    /// `( v v ... )`
    List(Vec<Dlist>),
    /// `%( k v k v ... )`, keys in file order (duplicates kept as found).
    KvList(Vec<(Vec<u8>, Dlist)>),
}

/// What went wrong while parsing a dlist, with the byte offset in the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DlistError {
    #[error("dlist is empty or ends early at byte {offset}: expected {expected}")]
    UnexpectedEnd {
        offset: usize,
        expected: &'static str,
    },
    #[error("dlist: expected {expected} at byte {offset}, found byte 0x{got:02x}")]
    Unexpected {
        offset: usize,
        expected: &'static str,
        got: u8,
    },
    #[error("dlist: quoted string starting at byte {offset} is not terminated")]
    UnterminatedQuoted { offset: usize },
    #[error("dlist: malformed literal header at byte {offset}")]
    BadLiteral { offset: usize },
    #[error(
        "dlist: literal at byte {offset} claims {len} bytes but only {remaining} remain in the input"
    )]
    LiteralTooLong {
        offset: usize,
        len: u64,
        remaining: usize,
    },
    #[error("dlist: kvlist key at byte {offset} is NIL (Cyrus rejects this)")]
    NilKey { offset: usize },
    #[error("dlist: nesting deeper than {max} levels at byte {offset}", max = MAX_DEPTH)]
    TooDeep { offset: usize },
    #[error("dlist: {len} bytes of trailing data after the value at byte {offset}")]
    TrailingData { offset: usize, len: usize },
}

impl Dlist {
    /// A string value from anything byte-like.
    pub fn str(s: impl AsRef<[u8]>) -> Dlist {
        Dlist::Str(s.as_ref().to_vec())
    }

    /// A decimal number, as Cyrus prints `DL_NUM` (`%llu`).
    pub fn num(n: u64) -> Dlist {
        Dlist::Str(n.to_string().into_bytes())
    }

    /// The string's bytes, or `None` for `NIL` and lists.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Dlist::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned decimal number (no sign, no spaces, fits in u64).
    pub fn as_u64(&self) -> Option<u64> {
        parse_u64(self.as_bytes()?)
    }

    /// The items of a list.
    pub fn as_list(&self) -> Option<&[Dlist]> {
        match self {
            Dlist::List(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a kvlist.
    pub fn as_kvlist(&self) -> Option<&[(Vec<u8>, Dlist)]> {
        match self {
            Dlist::KvList(v) => Some(v),
            _ => None,
        }
    }

    /// The value of the last entry named `key` in a kvlist (later duplicates win, as in
    /// Cyrus's SAX callbacks, which overwrite).
    pub fn get(&self, key: &[u8]) -> Option<&Dlist> {
        self.as_kvlist()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Parse an unsigned decimal as Cyrus's `parsenum` does for whole strings: digits only.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------
// Writer

/// `lib/imparse.c:imparse_isatom`: non-empty, shorter than 1024 bytes, and no byte that is
/// ≥ 0x80, < 0x1F (0x1F itself passes — Cyrus's quirk, which lets dbnames print bare),
/// DEL, SP, `{ ( ) " % * \`.
pub fn is_atom(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() < MAX_QSTRING
        && s.iter().all(|&c| {
            (0x1f..0x7f).contains(&c)
                && !matches!(c, b' ' | b'{' | b'(' | b')' | b'"' | b'%' | b'*' | b'\\')
        })
}

/// `lib/prot.c:isQCHAR`, plus NUL: Cyrus's strings are C strings, so a NUL byte can only
/// have reached its printer through `prot_printmap`, which makes it a literal.
fn is_qchar(c: u8) -> bool {
    !(c >= 0x80 || matches!(c, 0 | b'\r' | b'\n' | b'"' | b'%' | b'\\'))
}

/// Append `s` as `prot_printastring` would: `""`, a bare atom, `"quoted"` or
/// `{N}` CRLF bytes. `NIL` as a string is quoted so that it does not read back as null.
pub fn write_astring(s: &[u8], out: &mut Vec<u8>) {
    if s.is_empty() {
        out.extend_from_slice(b"\"\"");
    } else if is_atom(s) && s != b"NIL" {
        out.extend_from_slice(s);
    } else if s.len() < MAX_QSTRING && s.iter().all(|&c| is_qchar(c)) {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        // prot_printliteral on a server stream: no `+`.
        out.push(b'{');
        out.extend_from_slice(s.len().to_string().as_bytes());
        out.extend_from_slice(b"}\r\n");
        out.extend_from_slice(s);
    }
}

/// Append the text form of `v`, as `dlist_print(v, 0, out)` would.
pub fn write_into(v: &Dlist, out: &mut Vec<u8>) {
    match v {
        Dlist::Nil => out.extend_from_slice(b"NIL"),
        Dlist::Str(s) => write_astring(s, out),
        Dlist::List(items) => {
            out.push(b'(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_into(item, out);
            }
            out.push(b')');
        }
        Dlist::KvList(entries) => {
            out.extend_from_slice(b"%(");
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_astring(k, out);
                out.push(b' ');
                write_into(val, out);
            }
            out.push(b')');
        }
    }
}

/// The text form of `v`.
pub fn write(v: &Dlist) -> Vec<u8> {
    let mut out = Vec::new();
    write_into(v, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Parser

/// Parse one complete dlist value (no key), rejecting trailing bytes, like
/// `dlist_parsesax(base, len, 0, ...)`.
pub fn parse(input: &[u8]) -> Result<Dlist, DlistError> {
    let mut p = Parser { s: input, pos: 0 };
    let v = p.value(0)?;
    if p.pos < input.len() {
        return Err(DlistError::TrailingData {
            offset: p.pos,
            len: input.len() - p.pos,
        });
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// One scalar item as `_parseitem` returns it.
enum Item {
    Nil,
    Str(Vec<u8>),
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn need(&self, expected: &'static str) -> Result<u8, DlistError> {
        self.peek().ok_or(DlistError::UnexpectedEnd {
            offset: self.pos,
            expected,
        })
    }

    /// `_parsesax` without a key: list, kvlist or item.
    fn value(&mut self, depth: usize) -> Result<Dlist, DlistError> {
        if depth >= MAX_DEPTH {
            return Err(DlistError::TooDeep { offset: self.pos });
        }
        match self.need("a value")? {
            b'(' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.sequence(|p| {
                    items.push(p.value(depth + 1)?);
                    Ok(())
                })?;
                Ok(Dlist::List(items))
            }
            b'%' => {
                self.pos += 1;
                let c = self.need("'(' after '%'")?;
                if c != b'(' {
                    // No whitespace allowed between % and (; `%{` file literals are
                    // replication-only and never appear in the files cyrkit reads.
                    return Err(DlistError::Unexpected {
                        offset: self.pos,
                        expected: "'(' after '%'",
                        got: c,
                    });
                }
                self.pos += 1;
                let mut entries = Vec::new();
                self.sequence(|p| {
                    let key = p.key()?;
                    let val = p.value(depth + 1)?;
                    entries.push((key, val));
                    Ok(())
                })?;
                Ok(Dlist::KvList(entries))
            }
            _ => Ok(match self.item()? {
                Item::Nil => Dlist::Nil,
                Item::Str(s) => Dlist::Str(s),
            }),
        }
    }

    /// The body of a list or kvlist after its `(`: elements separated by exactly one SP,
    /// closed by `)`.
    fn sequence(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), DlistError>,
    ) -> Result<(), DlistError> {
        loop {
            if self.need("an element or ')'")? == b')' {
                self.pos += 1;
                return Ok(());
            }
            element(self)?;
            match self.need("' ' or ')'")? {
                b')' => {
                    self.pos += 1;
                    return Ok(());
                }
                b' ' => self.pos += 1,
                got => {
                    return Err(DlistError::Unexpected {
                        offset: self.pos,
                        expected: "' ' or ')'",
                        got,
                    })
                }
            }
        }
    }

    /// A kvlist key (any item except `NIL`) and the single SP after it.
    fn key(&mut self) -> Result<Vec<u8>, DlistError> {
        let start = self.pos;
        let key = match self.item()? {
            Item::Nil => return Err(DlistError::NilKey { offset: start }),
            Item::Str(s) => s,
        };
        match self.need("' ' after a key")? {
            b' ' => {
                self.pos += 1;
                Ok(key)
            }
            got => Err(DlistError::Unexpected {
                offset: self.pos,
                expected: "' ' after a key",
                got,
            }),
        }
    }

    /// `_parseitem`: quoted string, literal, or atom.
    fn item(&mut self) -> Result<Item, DlistError> {
        match self.need("an item")? {
            b'"' => self.quoted().map(Item::Str),
            b'{' => self.literal().map(Item::Str),
            _ => {
                // Atom: everything up to the next SP, then trailing ')' stripped (they
                // close enclosing lists). Any other byte, even '(' or '"', is kept.
                let rest = self.s.get(self.pos..).unwrap_or_default();
                let mut len = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
                while len > 0 && rest.get(len - 1) == Some(&b')') {
                    len -= 1;
                }
                let atom = rest.get(..len).unwrap_or_default();
                self.pos += len;
                if atom == b"NIL" {
                    Ok(Item::Nil)
                } else {
                    Ok(Item::Str(atom.to_vec()))
                }
            }
        }
    }

    /// `_parseqstring`: a backslash quotes whatever byte follows it.
    fn quoted(&mut self) -> Result<Vec<u8>, DlistError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => match self.peek() {
                    Some(e) => {
                        self.pos += 1;
                        out.push(e);
                    }
                    None => break,
                },
                _ => out.push(c),
            }
        }
        Err(DlistError::UnterminatedQuoted { offset: start })
    }

    /// `_parseliteral`: `{N}` or `{N+}`, CR LF, then N raw bytes.
    ///
    /// Cyrus additionally demands at least one byte after the literal data (its bounds
    /// check is `>=`); that only matters for a bare literal as the whole input, which
    /// Cyrus never writes, so it is accepted here.
    fn literal(&mut self) -> Result<Vec<u8>, DlistError> {
        let start = self.pos;
        self.pos += 1;
        let bad = DlistError::BadLiteral { offset: start };
        let mut len: u64 = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or(bad.clone())?;
            self.pos += 1;
        }
        if self.peek() == Some(b'+') {
            self.pos += 1;
        }
        if self.peek() != Some(b'}') {
            return Err(bad);
        }
        if self.s.get(self.pos + 1..self.pos + 3) != Some(b"\r\n".as_slice()) {
            return Err(bad);
        }
        self.pos += 3;
        let remaining = self.s.len().saturating_sub(self.pos);
        let too_long = DlistError::LiteralTooLong {
            offset: start,
            len,
            remaining,
        };
        let n = usize::try_from(len).map_err(|_| too_long.clone())?;
        if n > remaining {
            return Err(too_long);
        }
        let data = self.s.get(self.pos..self.pos + n).ok_or(too_long)?;
        self.pos += n;
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(text: &[u8]) -> Dlist {
        let v = parse(text).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(text)));
        assert_eq!(
            write(&v),
            text,
            "round trip of {:?}",
            String::from_utf8_lossy(text)
        );
        v
    }

    #[test]
    fn real_header_line_round_trips() {
        let v = rt(b"%(T el N user.alice I cvm8qxmjppx8c8svlet0x8dr Q user.alice A %(alice lrswipkxtecdan cyrus lrswipkxtecda) U ($Forwarded Junk NonJunk))");
        assert_eq!(v.get(b"T"), Some(&Dlist::str("el")));
        let acl = v.get(b"A").and_then(Dlist::as_kvlist).unwrap();
        assert_eq!(acl.len(), 2);
        assert_eq!(acl[1].0, b"cyrus");
        assert_eq!(v.get(b"U").and_then(Dlist::as_list).unwrap().len(), 3);
    }

    #[test]
    fn real_mboxlist_values_round_trip() {
        rt(b"%(T el I 3r3tll9s464dvk4pqkoe0g0w P default V 1795690632 C 1 F 2 M 1795690631 A %(alice lrswipkxtecdan bob lrs))");
        let v = rt(b"%(T el N user\x1fdave\x1fOld P default V 1795690864 C 1 F 2 M 1795690863 A %(dave lrswipkxtecdan) H (%(N user\x1fdave\x1fDrafts M 1795690863 V 1795690864 C 1 F 2 T ed)))");
        let h = v.get(b"H").and_then(Dlist::as_list).unwrap();
        assert_eq!(h[0].get(b"T"), Some(&Dlist::str("ed")));
        assert_eq!(v.get(b"V").and_then(Dlist::as_u64), Some(1_795_690_864));
        rt(b"%(S (420 1000) M (1 50) AS (0) NF (6) MODSEQ 8)");
    }

    #[test]
    fn writer_chooses_atom_quoted_literal_like_cyrus() {
        let w = |s: &[u8]| write(&Dlist::str(s));
        assert_eq!(w(b""), b"\"\"");
        assert_eq!(w(b"NIL"), b"\"NIL\"");
        assert_eq!(w(b"nil"), b"nil");
        assert_eq!(w(b"user.alice.My Folder"), b"\"user.alice.My Folder\"");
        // 0x1F passes as an atom, 0x1E and 0x1D do not.
        assert_eq!(w(b"user\x1falice"), b"user\x1falice");
        assert_eq!(w(b"ex.com\x1duser"), b"\"ex.com\x1duser\"");
        assert_eq!(w(b"a*b"), b"\"a*b\"");
        assert_eq!(w(b"a)"), b"\"a)\"");
        assert_eq!(w(b"x\x7fy"), b"\"x\x7fy\"");
        // '%', '\\', '"', CR, LF, 8-bit and NUL force a literal.
        assert_eq!(w(b"50%"), b"{3}\r\n50%");
        assert_eq!(w(b"a\\b"), b"{3}\r\na\\b");
        assert_eq!(w(b"a\"b"), b"{3}\r\na\"b");
        assert_eq!(w("Caf\u{e9}".as_bytes()), b"{5}\r\nCaf\xc3\xa9");
        assert_eq!(w(b"a\0b"), b"{3}\r\na\0b");
        // The 1024 limit: 1023 bytes is still an atom / quoted, 1024 is a literal.
        let a1023 = vec![b'a'; 1023];
        assert_eq!(w(&a1023), a1023);
        let mut q1023 = vec![b'a'; 1022];
        q1023.push(b' ');
        assert_eq!(w(&q1023)[0], b'"');
        let a1024 = vec![b'a'; 1024];
        assert!(w(&a1024).starts_with(b"{1024}\r\naaa"));
        assert_eq!(write(&Dlist::Nil), b"NIL");
        assert_eq!(write(&Dlist::List(vec![])), b"()");
        assert_eq!(write(&Dlist::KvList(vec![])), b"%()");
    }

    #[test]
    fn every_writer_form_parses_back() {
        for s in [
            &b""[..],
            b"NIL",
            b"a b",
            b"50%",
            b"x\r\ny",
            b"\x1f\x1d\x1e",
            b"a)",
            b"(",
            &[b'q'; 2000],
        ] {
            let v = Dlist::KvList(vec![(
                s.to_vec(),
                Dlist::List(vec![Dlist::str(s), Dlist::Nil]),
            )]);
            assert_eq!(
                parse(&write(&v)).unwrap(),
                v,
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn parser_follows_parsesax() {
        // Backslash escapes anything inside quotes.
        assert_eq!(
            parse(b"\"a\\\"b\\\\c\\x\"").unwrap(),
            Dlist::str("a\"b\\cx")
        );
        // {n+} literal.
        assert_eq!(
            parse(b"({3+}\r\nabc)").unwrap(),
            Dlist::List(vec![Dlist::str("abc")])
        );
        // Atoms end at SP; trailing ')' are stripped; other specials are kept.
        assert_eq!(
            parse(b"(a(b c\"d)").unwrap(),
            Dlist::List(vec![Dlist::str("a(b"), Dlist::str("c\"d")])
        );
        // NIL atom vs quoted NIL.
        assert_eq!(
            parse(b"(NIL \"NIL\")").unwrap(),
            Dlist::List(vec![Dlist::Nil, Dlist::str("NIL")])
        );
        // Two spaces make an empty atom between them.
        assert_eq!(
            parse(b"(a  b)").unwrap(),
            Dlist::List(vec![Dlist::str("a"), Dlist::str(""), Dlist::str("b")])
        );
        assert_eq!(parse(b"%()").unwrap(), Dlist::KvList(vec![]));
        assert_eq!(parse(b"()").unwrap(), Dlist::List(vec![]));
    }

    #[test]
    fn parser_rejects_malformed_input() {
        assert!(matches!(
            parse(b""),
            Err(DlistError::UnexpectedEnd { offset: 0, .. })
        ));
        assert!(matches!(
            parse(b"% ("),
            Err(DlistError::Unexpected { offset: 1, .. })
        ));
        assert!(matches!(
            parse(b"%(NIL x)"),
            Err(DlistError::NilKey { offset: 2 })
        ));
        assert!(matches!(
            parse(b"%(A)"),
            Err(DlistError::Unexpected { offset: 3, .. })
        ));
        assert!(matches!(
            parse(b"(a"),
            Err(DlistError::UnexpectedEnd { .. })
        ));
        assert!(matches!(
            parse(b"(a b"),
            Err(DlistError::UnexpectedEnd { .. })
        ));
        assert!(matches!(
            parse(b"\"abc"),
            Err(DlistError::UnterminatedQuoted { offset: 0 })
        ));
        assert!(matches!(
            parse(b"\"abc\\"),
            Err(DlistError::UnterminatedQuoted { .. })
        ));
        assert!(matches!(
            parse(b"{3}\nabc"),
            Err(DlistError::BadLiteral { offset: 0 })
        ));
        assert!(matches!(
            parse(b"{3x}\r\nabc"),
            Err(DlistError::BadLiteral { .. })
        ));
        assert!(matches!(
            parse(b"{99999999999999999999999}\r\n"),
            Err(DlistError::BadLiteral { .. })
        ));
        assert!(matches!(
            parse(b"({18446744073709551615}\r\nab)"),
            Err(DlistError::LiteralTooLong { remaining: 3, .. })
        ));
        assert!(matches!(
            parse(b"(a) b"),
            Err(DlistError::TrailingData { offset: 3, len: 2 })
        ));
        assert!(matches!(
            parse(b"foo)"),
            Err(DlistError::TrailingData { offset: 3, len: 1 })
        ));
        let deep = vec![b'('; 10_000];
        assert!(matches!(parse(&deep), Err(DlistError::TooDeep { .. })));
    }

    #[test]
    fn numbers() {
        assert_eq!(Dlist::num(0), Dlist::str("0"));
        assert_eq!(Dlist::str("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(Dlist::str("18446744073709551616").as_u64(), None);
        assert_eq!(Dlist::str("-1").as_u64(), None);
        assert_eq!(Dlist::str("").as_u64(), None);
        assert_eq!(Dlist::Nil.as_u64(), None);
    }
}
