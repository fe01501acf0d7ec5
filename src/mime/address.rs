//! RFC 822 address-list parser reproducing Cyrus 3.6's `parseaddr_list` (lib/parseaddr.c),
//! quirks included (docs: cyrus-mailbox-format.md §4.5).
//!
//! Cyrus parses a NUL-terminated copy of the raw header value in place; here the input is
//! read up to its first NUL (as the C string would end there) and each piece is copied out.
//! In-place writes in Cyrus only ever land behind the read position, so copying is exact.
//! Every loop moves forward (one step back at most once per `<@`), so time is linear, and
//! comment nesting is a counter, not recursion.

/// What Cyrus substitutes for an empty or missing domain (`unspecified_domain`).
const UNSPECIFIED_DOMAIN: &[u8] = b"unspecified-domain";

/// One parsed address (`struct address`). A group start has `domain == None` and the group
/// name in `mailbox`; a group end has every field `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    pub name: Option<Vec<u8>>,
    pub route: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub domain: Option<Vec<u8>>,
}

/// `isspace` in the C locale.
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `iscntrl` in the C locale.
fn is_cntrl(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

/// Cursor over the value; reading at or past the end yields NUL like the C string.
struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    /// Read the byte at the cursor and advance (`c = *src++`); past the end stays put.
    fn next(&mut self) -> u8 {
        let c = self.at(self.pos);
        if self.pos < self.s.len() {
            self.pos += 1;
        } else {
            // Cyrus steps past the terminating NUL; every caller stops on 0, so staying
            // at the end is equivalent and keeps the cursor in range.
            self.pos = self.s.len() + 1;
        }
        c
    }

    /// `SKIPWHITESPACE`: skip C-locale whitespace and (nested, backslash-escaped) comments.
    fn skip_whitespace(&mut self) {
        loop {
            let c = self.at(self.pos);
            if c == b'(' {
                let mut depth = 1usize;
                self.pos += 1;
                while depth > 0 {
                    let c = self.at(self.pos);
                    if c == 0 {
                        break;
                    }
                    self.pos += 1;
                    if c == b'\\' && self.at(self.pos) != 0 {
                        self.pos += 1;
                    } else if c == b'(' {
                        depth += 1;
                    } else if c == b')' {
                        depth -= 1;
                    }
                }
                // Cyrus backs up one and then steps forward again: net effect none.
            } else if c == 0 || !is_space(c) {
                return;
            } else {
                self.pos += 1;
            }
        }
    }

    /// `parseaddr_phrase`: returns the stop token (0 at end or on a malformed quoted
    /// string, in which case the phrase is empty) and the phrase.
    fn phrase(&mut self, specials: &[u8]) -> (u8, Vec<u8>) {
        self.skip_whitespace();
        let mut out = Vec::new();
        loop {
            let c = self.next();
            if c == b'"' {
                let mut c;
                loop {
                    let q = self.at(self.pos);
                    if q == 0 {
                        c = 0;
                        break;
                    }
                    c = q;
                    self.pos += 1;
                    if c == b'\\' && self.at(self.pos) == b'\r' && self.at(self.pos + 1) == b'\n' {
                        // Backslash right before CR LF is ignored.
                        c = b'\r';
                        self.pos += 1;
                    }
                    if c == b'\r' && self.at(self.pos) == b'\n' {
                        self.pos += 1;
                        if matches!(self.at(self.pos), b' ' | b'\t') {
                            // Folded: drop only the CR LF.
                            continue;
                        }
                        // CR LF ending the field: unbalanced quote.
                        return (0, Vec::new());
                    } else if is_cntrl(c) {
                        if c == b'\r' || c == b'\n' {
                            c = b' ';
                        } else if c != b'\t' {
                            continue;
                        }
                    }
                    if c == b'"' {
                        break;
                    }
                    if c == b'\\' {
                        c = self.at(self.pos);
                        if c == 0 {
                            return (0, Vec::new());
                        }
                        self.pos += 1;
                    }
                    out.push(c);
                }
                if c != b'"' {
                    return (0, Vec::new());
                }
            } else if is_space(c) || c == b'(' {
                self.pos -= 1;
                self.skip_whitespace();
                out.push(b' ');
            } else if c == 0 || specials.contains(&c) {
                if out.last() == Some(&b' ') {
                    out.pop();
                }
                return (c, out);
            } else {
                out.push(c);
            }
        }
    }

    /// `parseaddr_domain`; with `want_comment`, also returns the trailing comment.
    fn domain(&mut self, want_comment: bool) -> (u8, Vec<u8>, Option<Vec<u8>>) {
        let mut comment: Option<Vec<u8>> = None;
        self.skip_whitespace();
        let mut out = Vec::new();
        loop {
            let c = self.next();
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'[' | b']' | b':') {
                out.push(c);
                comment = None;
            } else if c == b'.' {
                if out.last().is_some_and(|&l| l != b'.') {
                    out.push(c);
                }
                comment = None;
            } else if c == b'(' {
                if want_comment {
                    let mut text = Vec::new();
                    let mut depth = 1usize;
                    while depth > 0 {
                        let mut c = self.at(self.pos);
                        if c == 0 {
                            break;
                        }
                        self.pos += 1;
                        if c == b'(' {
                            depth += 1;
                        } else if c == b')' {
                            depth -= 1;
                        } else if c == b'\\' {
                            c = self.at(self.pos);
                            if c != 0 {
                                self.pos += 1;
                            }
                        }
                        // A NUL written here would end the C string: drop it.
                        if depth > 0 && c != 0 {
                            text.push(c);
                        }
                    }
                    comment = Some(text);
                } else {
                    self.pos -= 1;
                    self.skip_whitespace();
                }
            } else if c == b'@' {
                // Garbage domain; Cyrus marks it invalid and keeps eating.
                out.push(c);
                comment = None;
            } else if c == 0 || !is_space(c) {
                if out.last() == Some(&b'.') {
                    out.pop();
                }
                return (c, out, comment);
            }
        }
    }

    /// `parseaddr_route`: an at-domain-list up to its terminating token.
    fn route(&mut self) -> (u8, Vec<u8>) {
        self.skip_whitespace();
        let mut out = Vec::new();
        loop {
            let c = self.next();
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'[' | b']' | b',' | b'@') {
                out.push(c);
            } else if c == b'.' {
                if out.last().is_some_and(|&l| l != b'.') {
                    out.push(c);
                }
            } else if c != 0 && (is_space(c) || c == b'(') {
                self.pos -= 1;
                self.skip_whitespace();
            } else {
                while out.last().is_some_and(|&l| matches!(l, b'.' | b',' | b'@')) {
                    out.pop();
                }
                return (c, out);
            }
        }
    }

    /// `while (tok && tok != '>') tok = *src++;`
    fn skip_to_close(&mut self, mut tok: u8) -> u8 {
        while tok != 0 && tok != b'>' {
            tok = self.next();
        }
        tok
    }
}

/// `parseaddr_append`: empty name/route become absent, an empty domain becomes
/// `unspecified-domain`.
fn push(
    list: &mut Vec<Address>,
    name: Option<Vec<u8>>,
    route: Option<Vec<u8>>,
    mailbox: Option<Vec<u8>>,
    domain: Option<Vec<u8>>,
) {
    let non_empty = |v: Option<Vec<u8>>| v.filter(|v| !v.is_empty());
    let domain = domain.map(|d| {
        if d.is_empty() {
            UNSPECIFIED_DOMAIN.to_vec()
        } else {
            d
        }
    });
    list.push(Address {
        name: non_empty(name),
        route: non_empty(route),
        mailbox,
        domain,
    });
}

/// Parse an address-list header value (`raw`: the bytes after the colon, folds included,
/// without the final line end) as `parseaddr_list` does.
pub fn parse_list(raw: &[u8]) -> Vec<Address> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut sc = Scanner {
        s: &raw[..end],
        pos: 0,
    };
    let mut list = Vec::new();
    let mut ingroup = false;
    let mut tok = b' ';
    let group_end = |list: &mut Vec<Address>| push(list, None, None, None, None);
    while tok != 0 {
        let (t, phrase) = sc.phrase(if ingroup { b",@<;" } else { b",@<:" });
        tok = t;
        match tok {
            b',' | 0 | b';' => {
                if !phrase.is_empty() {
                    push(&mut list, None, None, Some(phrase), Some(Vec::new()));
                }
                if tok == b';' {
                    group_end(&mut list);
                    ingroup = false;
                }
            }
            b':' => {
                push(&mut list, None, None, Some(phrase), None);
                ingroup = true;
            }
            b'@' => {
                let (t, domain, comment) = sc.domain(true);
                tok = t;
                push(&mut list, comment, None, Some(phrase), Some(domain));
                if tok == b';' {
                    group_end(&mut list);
                    ingroup = false;
                }
            }
            b'<' => {
                let (t, mut mailbox) = sc.phrase(b"@>");
                tok = t;
                if tok != b'@' {
                    push(
                        &mut list,
                        Some(phrase),
                        None,
                        Some(mailbox),
                        Some(Vec::new()),
                    );
                    continue;
                }
                let mut route = None;
                if mailbox.is_empty() {
                    // `*--s = '@'`: re-read the '@' as the start of a source route.
                    sc.pos -= 1;
                    let (t, r) = sc.route();
                    tok = t;
                    if tok != b':' {
                        push(
                            &mut list,
                            Some(phrase),
                            Some(r),
                            Some(Vec::new()),
                            Some(Vec::new()),
                        );
                        tok = sc.skip_to_close(tok);
                        continue;
                    }
                    route = Some(r);
                    let (t, m) = sc.phrase(b"@>");
                    tok = t;
                    mailbox = m;
                    if tok != b'@' {
                        push(
                            &mut list,
                            Some(phrase),
                            route,
                            Some(mailbox),
                            Some(Vec::new()),
                        );
                        continue;
                    }
                }
                let (t, domain, _) = sc.domain(false);
                tok = t;
                push(&mut list, Some(phrase), route, Some(mailbox), Some(domain));
                tok = sc.skip_to_close(tok);
            }
            _ => {}
        }
    }
    if ingroup {
        group_end(&mut list);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, route, mailbox, domain) with `None` shown as "NIL".
    fn parse(s: &str) -> Vec<[String; 4]> {
        let f = |v: &Option<Vec<u8>>| {
            v.as_ref().map_or("NIL".to_string(), |v| {
                String::from_utf8_lossy(v).into_owned()
            })
        };
        parse_list(s.as_bytes())
            .iter()
            .map(|a| [f(&a.name), f(&a.route), f(&a.mailbox), f(&a.domain)])
            .collect()
    }

    fn one(n: &str, r: &str, m: &str, d: &str) -> [String; 4] {
        [n.into(), r.into(), m.into(), d.into()]
    }

    #[test]
    fn verified_examples() {
        assert_eq!(
            parse(" plain@n.test (comment name)"),
            vec![one("comment name", "NIL", "plain", "n.test")]
        );
        assert_eq!(
            parse(" @route1,@route2:user@host.test"),
            vec![
                one("NIL", "NIL", "", "route1"),
                one("NIL", "NIL", "", "route2:user@host.test")
            ]
        );
        assert_eq!(
            parse(" A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;"),
            vec![
                one("NIL", "NIL", "A Group", "NIL"),
                one("Ed Jones", "NIL", "c", "a.test"),
                one("NIL", "NIL", "joe", "where.test"),
                one("John", "NIL", "jdoe", "one.test"),
                one("NIL", "NIL", "NIL", "NIL"),
            ]
        );
        assert_eq!(
            parse(" \"Bob, Jr.\" <bob@example.com>, <@a.test,@b.test:x@c..test.>"),
            vec![
                one("Bob, Jr.", "NIL", "bob", "example.com"),
                one("NIL", "@a.test,@b.test", "x", "c.test"),
            ]
        );
    }

    #[test]
    fn quirks() {
        assert_eq!(
            parse(" justname"),
            vec![one("NIL", "NIL", "justname", "unspecified-domain")]
        );
        assert_eq!(parse(""), Vec::<[String; 4]>::new());
        assert_eq!(parse(" \"unbalanced"), Vec::<[String; 4]>::new());
        assert_eq!(
            parse(" Open: a@b"),
            vec![
                one("NIL", "NIL", "Open", "NIL"),
                one("NIL", "NIL", "a", "b"),
                one("NIL", "NIL", "NIL", "NIL")
            ]
        );
        assert_eq!(
            parse(" <a>"),
            vec![one("NIL", "NIL", "a", "unspecified-domain")]
        );
        assert_eq!(parse(" x@y\0z@w"), vec![one("NIL", "NIL", "x", "y")]);
        assert_eq!(
            parse(" \"a\\\"b\r\n c\" <m@d>"),
            vec![one("a\"b c", "NIL", "m", "d")]
        );
    }

    #[test]
    fn hostile_input() {
        let deep = "(".repeat(100_000);
        assert!(parse_list(deep.as_bytes()).is_empty());
        let many = "<@".repeat(50_000);
        let _ = parse_list(many.as_bytes());
        for s in [
            &b"<"[..],
            b"<@",
            b"<@a",
            b"<@a:",
            b"<@a:b@",
            b"a@(",
            b"a@(\\",
            b"\"\\",
            b"@",
            b":;",
            b";",
        ] {
            let _ = parse_list(s);
        }
    }
}
