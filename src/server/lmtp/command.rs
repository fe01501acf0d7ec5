//! LMTP command lines → [`Command`], sans I/O, with Cyrus 3.6 lmtpd's syntax rules
//! (`lmtpmode` and `parseaddr` in `imap/lmtpengine.c`) plus BDAT (RFC 3030).
//!
//! Cyrus dispatches on the first letter and compares prefixes case-insensitively; a
//! command it does not know, or one with the wrong shape, is `500 5.5.2 Syntax error`.
//! MAIL and RCPT keep the path even when a parameter is wrong, because Cyrus stores the
//! return path before it looks at the parameters (a rejected `MAIL ... SIZE=` leaves the
//! transaction open, so the next MAIL is "Nested").

/// Reply to a command Cyrus does not know.
pub const SYNTAX_ERROR: &[u8] = b"500 5.5.2 Syntax error\r\n";
/// Reply to a MAIL/RCPT path or parameter list that does not parse.
pub const PARAM_SYNTAX: &[u8] = b"501 5.5.4 Syntax error in parameters\r\n";

/// Longest LHLO argument Cyrus keeps (`char lhlo_param[250]`).
const LHLO_PARAM_MAX: usize = 249;
/// Longest SASL mechanism name Cyrus keeps (`char mech[128]`).
const MECH_MAX: usize = 127;

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lhlo(Vec<u8>),
    /// `MAIL FROM:<path> params`; `Err` when the path itself does not parse.
    Mail(Result<MailFrom, ParamError>),
    /// `RCPT TO:<path> params`; `Err` when the path itself does not parse.
    Rcpt(Result<RcptTo, ParamError>),
    Data,
    Bdat(Result<Bdat, ParamError>),
    Rset,
    Noop,
    Vrfy,
    Quit,
    Starttls,
    Auth {
        mech: Vec<u8>,
        initial: Option<Vec<u8>>,
    },
    /// A line starting with `M`/`m` that is not `MAIL ` (Cyrus checks authentication
    /// for every such line before looking further).
    OtherM,
    Unknown,
}

/// The path of MAIL FROM and the outcome of its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// As written, with its angle brackets (`<>` for the null path).
    pub path: Vec<u8>,
    pub params: Result<MailParams, ParamError>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `AUTH=`: `Some(None)` for `AUTH=<>`, `Some(Some(id))` for an identity.
    pub auth: Option<Option<Vec<u8>>>,
    /// `SIZE=` (saturated at `u64::MAX`).
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub path: Vec<u8>,
    pub params: Result<bool, ParamError>,
}

impl RcptTo {
    pub fn ignorequota(&self) -> bool {
        matches!(self.params, Ok(true))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdat {
    pub size: u64,
    pub last: bool,
}

/// A MAIL/RCPT/BDAT argument Cyrus refuses, with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    Syntax,
    Unrecognized,
    BadBody,
    SizeNeedsValue,
}

impl ParamError {
    pub fn reply(self) -> &'static [u8] {
        match self {
            ParamError::Syntax => PARAM_SYNTAX,
            ParamError::Unrecognized => b"501 5.5.4 Unrecognized parameters\r\n",
            ParamError::BadBody => b"501 5.5.4 Unrecognized BODY type\r\n",
            ParamError::SizeNeedsValue => b"501 5.5.2 SIZE requires a value\r\n",
        }
    }
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// Parse one command line (without its line ending). `strict_rfc2821` is
/// `lmtp_strict_rfc2821`: when off, 8-bit bytes in a local part become `X` instead of
/// making the address invalid.
pub fn parse_command(line: &[u8], strict_rfc2821: bool) -> Command {
    // Cyrus reads the line into a C string: a NUL ends it.
    let line = match line.iter().position(|&b| b == 0) {
        Some(i) => line.get(..i).unwrap_or_default(),
        None => line,
    };
    let eq = |word: &[u8]| line.eq_ignore_ascii_case(word);
    match line.first().map(u8::to_ascii_lowercase) {
        Some(b'a') if starts_with_ci(line, b"auth ") => {
            let rest = line.get(5..).unwrap_or_default();
            let (mech, initial) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (
                    rest.get(..i).unwrap_or_default(),
                    Some(rest.get(i + 1..).unwrap_or_default().to_vec()),
                ),
                None => (rest, None),
            };
            let mech = mech.get(..mech.len().min(MECH_MAX)).unwrap_or_default();
            Command::Auth {
                mech: mech.to_vec(),
                initial,
            }
        }
        Some(b'b') if starts_with_ci(line, b"bdat ") => {
            Command::Bdat(parse_bdat(line.get(5..).unwrap_or_default()))
        }
        Some(b'd') if eq(b"data") => Command::Data,
        Some(b'l') if starts_with_ci(line, b"lhlo ") => {
            let p = line.get(5..).unwrap_or_default();
            Command::Lhlo(
                p.get(..p.len().min(LHLO_PARAM_MAX))
                    .unwrap_or_default()
                    .to_vec(),
            )
        }
        Some(b'm') if starts_with_ci(line, b"mail ") => {
            Command::Mail(parse_mail(line, strict_rfc2821))
        }
        Some(b'm') => Command::OtherM,
        Some(b'n') if eq(b"noop") => Command::Noop,
        Some(b'q') if eq(b"quit") => Command::Quit,
        Some(b'r') if starts_with_ci(line, b"rcpt ") => {
            Command::Rcpt(parse_rcpt(line, strict_rfc2821))
        }
        Some(b'r') if eq(b"rset") => Command::Rset,
        Some(b's') if eq(b"starttls") => Command::Starttls,
        Some(b'v') if starts_with_ci(line, b"vrfy ") => Command::Vrfy,
        _ => Command::Unknown,
    }
}

fn parse_mail(line: &[u8], strict: bool) -> Result<MailFrom, ParamError> {
    let rest = line.get(5..).unwrap_or_default();
    if !starts_with_ci(rest, b"from:") {
        return Err(ParamError::Syntax);
    }
    let (path, used) =
        parse_addr(rest.get(5..).unwrap_or_default(), strict).ok_or(ParamError::Syntax)?;
    let params = parse_mail_params(rest.get(5 + used..).unwrap_or_default());
    Ok(MailFrom { path, params })
}

fn parse_mail_params(mut s: &[u8]) -> Result<MailParams, ParamError> {
    let mut out = MailParams::default();
    while let Some((b' ', rest)) = s.split_first() {
        s = rest;
        match s.first().map(u8::to_ascii_lowercase) {
            Some(b'a') if starts_with_ci(s, b"auth=") => {
                let (id, used) = parse_auth_eq(s.get(5..).unwrap_or_default());
                out.auth = Some(id);
                s = s.get(5 + used..).unwrap_or_default();
            }
            Some(b'b') if starts_with_ci(s, b"body=") => {
                let v = s.get(5..).unwrap_or_default();
                let used = if starts_with_ci(v, b"7bit") {
                    4
                } else if starts_with_ci(v, b"8bitmime") {
                    8
                } else {
                    return Err(ParamError::BadBody);
                };
                s = v.get(used..).unwrap_or_default();
            }
            Some(b's') if starts_with_ci(s, b"size=") => {
                let v = s.get(5..).unwrap_or_default();
                let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
                if digits == 0 {
                    return Err(ParamError::SizeNeedsValue);
                }
                let size = v
                    .get(..digits)
                    .unwrap_or_default()
                    .iter()
                    .fold(0u64, |acc, &d| {
                        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    });
                out.size = Some(size);
                s = v.get(digits..).unwrap_or_default();
            }
            _ => return Err(ParamError::Unrecognized),
        }
    }
    if s.is_empty() {
        Ok(out)
    } else {
        Err(ParamError::Syntax)
    }
}

/// `AUTH=` value (RFC 4954 xtext, `<>` for none). Returns the identity (`None` for `<>`
/// or an undecodable value, which Cyrus accepts as "no identity") and the bytes used.
fn parse_auth_eq(s: &[u8]) -> (Option<Vec<u8>>, usize) {
    if s == b"<>" || s.starts_with(b"<> ") {
        return (None, 2);
    }
    let mut i = usize::from(s.first() == Some(&b'<'));
    let mut out = Vec::new();
    loop {
        match s.get(i) {
            Some(b'+') => {
                let hex = |b: Option<&u8>| match b {
                    Some(c @ b'0'..=b'9') => Some(c - b'0'),
                    Some(c @ b'A'..=b'F') => Some(c - b'A' + 10),
                    _ => None,
                };
                match (hex(s.get(i + 1)), hex(s.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => return (None, i + 1),
                }
            }
            Some(&c) if (b'!'..=b'~').contains(&c) && c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => break,
        }
    }
    if !matches!(s.get(i), None | Some(b' ')) {
        return (None, i);
    }
    if out.last() == Some(&b'>') {
        out.pop();
    }
    (Some(out), i)
}

fn parse_rcpt(line: &[u8], strict: bool) -> Result<RcptTo, ParamError> {
    let rest = line.get(5..).unwrap_or_default();
    if !starts_with_ci(rest, b"to:") {
        return Err(ParamError::Syntax);
    }
    let (path, used) =
        parse_addr(rest.get(3..).unwrap_or_default(), strict).ok_or(ParamError::Syntax)?;
    let s = rest.get(3 + used..).unwrap_or_default();
    let params = if s.is_empty() {
        Ok(false)
    } else if s.len() == 12 && starts_with_ci(s, b" ignorequota") {
        // Cyrus compares 12 bytes including the terminating NUL: IGNOREQUOTA must be last.
        Ok(true)
    } else if s.first() == Some(&b' ') {
        Err(ParamError::Unrecognized)
    } else {
        Err(ParamError::Syntax)
    };
    Ok(RcptTo { path, params })
}

fn parse_bdat(s: &[u8]) -> Result<Bdat, ParamError> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return Err(ParamError::Syntax);
    }
    let size = std::str::from_utf8(s.get(..digits).unwrap_or_default())
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or(ParamError::Syntax)?;
    match s.get(digits..).unwrap_or_default() {
        b"" => Ok(Bdat { size, last: false }),
        rest if rest.eq_ignore_ascii_case(b" last") => Ok(Bdat { size, last: true }),
        _ => Err(ParamError::Syntax),
    }
}

/// `parseaddr`: `<[@route,@route:]local[@domain]>` followed by the end or a space.
/// Returns the address as written (brackets included, 8-bit local-part bytes turned into
/// `X` when not strict) and its length.
pub fn parse_addr(s: &[u8], strict: bool) -> Option<(Vec<u8>, usize)> {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut p = 0;
    if at(p) != b'<' {
        return None;
    }
    p += 1;
    let domain = |mut p: usize| -> Option<usize> {
        if at(p) == b'[' {
            p += 1;
            while at(p).is_ascii_digit() || at(p) == b'.' {
                p += 1;
            }
            if at(p) != b']' {
                return None;
            }
            Some(p + 1)
        } else {
            while at(p).is_ascii_alphanumeric() || at(p) == b'.' || at(p) == b'-' {
                p += 1;
            }
            Some(p)
        }
    };
    while at(p) == b'@' {
        p = domain(p + 1)?;
        if (at(p) == b',' && at(p + 1) == b'@') || (at(p) == b':' && at(p + 1) != b'@') {
            p += 1;
        } else {
            return None;
        }
    }
    out.extend_from_slice(s.get(..p).unwrap_or_default());
    if at(p) == b'"' {
        let start = p;
        p += 1;
        while at(p) != 0 && at(p) != b'"' {
            if at(p) == b'\\' {
                p += 1;
                if at(p) == 0 {
                    return None;
                }
            }
            p += 1;
        }
        if at(p) == 0 {
            return None;
        }
        p += 1;
        out.extend_from_slice(s.get(start..p).unwrap_or_default());
    } else {
        while at(p) != 0 && at(p) != b'@' && at(p) != b'>' {
            let mut c = at(p);
            if c == b'\\' {
                out.push(c);
                p += 1;
                c = at(p);
                if c == 0 {
                    return None;
                }
            } else {
                if c & 0x80 != 0 && !strict {
                    // Cyrus: keeps lmtpd from becoming a backscatter source.
                    c = b'X';
                }
                if c <= b' ' || c & 0x80 != 0 || b"<>()[]\\,;:\"".contains(&c) {
                    return None;
                }
            }
            out.push(c);
            p += 1;
        }
    }
    let start = p;
    if at(p) == b'@' {
        p = domain(p + 1)?;
    }
    if at(p) != b'>' {
        return None;
    }
    p += 1;
    if at(p) != 0 && at(p) != b' ' {
        return None;
    }
    out.extend_from_slice(s.get(start..p).unwrap_or_default());
    Some((out, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Command {
        parse_command(s.as_bytes(), true)
    }

    #[test]
    fn simple_commands_are_case_insensitive_and_exact() {
        assert_eq!(p("noop"), Command::Noop);
        assert_eq!(p("NoOp"), Command::Noop);
        assert_eq!(p("noop x"), Command::Unknown);
        assert_eq!(p("DATA"), Command::Data);
        assert_eq!(p("QUIT"), Command::Quit);
        assert_eq!(p("RSET"), Command::Rset);
        assert_eq!(p("STARTTLS"), Command::Starttls);
        assert_eq!(p("VRFY bob"), Command::Vrfy);
        assert_eq!(p("VRFY"), Command::Unknown);
        assert_eq!(p("EHLO x"), Command::Unknown);
        assert_eq!(p("LHLO"), Command::Unknown);
        assert_eq!(p("LHLO mx.example"), Command::Lhlo(b"mx.example".to_vec()));
        assert_eq!(p(""), Command::Unknown);
        assert_eq!(p("MAILX"), Command::OtherM);
        assert_eq!(p("noop\0junk"), Command::Noop);
    }

    #[test]
    fn mail_parameters() {
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a@b.c> SIZE=123 BODY=8BITMIME AUTH=<x+2Bz>")
        else {
            panic!()
        };
        assert_eq!(m.path, b"<a@b.c>");
        let params = m.params.unwrap();
        assert_eq!(params.size, Some(123));
        assert_eq!(params.auth, Some(Some(b"x+z".to_vec())));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<> BODY=9BIT") else {
            panic!()
        };
        assert_eq!(m.path, b"<>");
        assert_eq!(m.params, Err(ParamError::BadBody));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a> SIZE=x") else {
            panic!()
        };
        assert_eq!(m.params, Err(ParamError::SizeNeedsValue));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a> FOO=1") else {
            panic!()
        };
        assert_eq!(m.params, Err(ParamError::Unrecognized));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a> ") else {
            panic!()
        };
        assert_eq!(m.params, Err(ParamError::Unrecognized));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a> BODY=7BITX") else {
            panic!()
        };
        assert_eq!(m.params, Err(ParamError::Syntax));
        let Command::Mail(Ok(m)) = p("MAIL FROM:<a> AUTH=<>") else {
            panic!()
        };
        assert_eq!(m.params.unwrap().auth, Some(None));
        assert_eq!(p("MAIL FROM: <a>"), Command::Mail(Err(ParamError::Syntax)));
        assert_eq!(p("MAIL TO:<a>"), Command::Mail(Err(ParamError::Syntax)));
        assert_eq!(p("MAIL FROM:<a>x"), Command::Mail(Err(ParamError::Syntax)));
    }

    #[test]
    fn rcpt_parameters() {
        let Command::Rcpt(Ok(r)) = p("RCPT TO:<bob+box@x> IGNOREQUOTA") else {
            panic!()
        };
        assert_eq!(r.path, b"<bob+box@x>");
        assert!(r.ignorequota());
        let Command::Rcpt(Ok(r)) = p("RCPT TO:<bob> IGNOREQUOTA X") else {
            panic!()
        };
        assert_eq!(r.params, Err(ParamError::Unrecognized));
        let Command::Rcpt(Ok(r)) = p("rcpt to:<bob>") else {
            panic!()
        };
        assert_eq!(r.params, Ok(false));
        assert_eq!(p("RCPT TO:bob"), Command::Rcpt(Err(ParamError::Syntax)));
    }

    #[test]
    fn addresses_as_cyrus_parses_them() {
        let a = |s: &str, strict| {
            parse_addr(s.as_bytes(), strict).map(|(v, n)| (String::from_utf8(v).unwrap(), n))
        };
        assert_eq!(a("<@r1,@r2:u@d>", true), Some(("<@r1,@r2:u@d>".into(), 13)));
        assert_eq!(a("<\"a b\"@d> X", true), Some(("<\"a b\"@d>".into(), 9)));
        assert_eq!(a("<a b@d>", true), None);
        assert_eq!(a("<a@d", true), None);
        assert_eq!(a("<a@[1.2.3.4]>", true), Some(("<a@[1.2.3.4]>".into(), 13)));
        assert_eq!(a("<a@[x]>", true), None);
        assert_eq!(parse_addr("<b\u{e9}b@d>".as_bytes(), true), None);
        assert_eq!(
            parse_addr("<b\u{e9}b@d>".as_bytes(), false).unwrap().0,
            b"<bXXb@d>"
        );
    }

    #[test]
    fn auth_and_bdat() {
        assert_eq!(
            p("AUTH PLAIN AGJvYgBwdw=="),
            Command::Auth {
                mech: b"PLAIN".to_vec(),
                initial: Some(b"AGJvYgBwdw==".to_vec())
            }
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Command::Auth {
                mech: b"LOGIN".to_vec(),
                initial: None
            }
        );
        assert_eq!(
            p("BDAT 10"),
            Command::Bdat(Ok(Bdat {
                size: 10,
                last: false
            }))
        );
        assert_eq!(
            p("bdat 0 last"),
            Command::Bdat(Ok(Bdat {
                size: 0,
                last: true
            }))
        );
        assert_eq!(p("BDAT x"), Command::Bdat(Err(ParamError::Syntax)));
        assert_eq!(
            p("BDAT 99999999999999999999"),
            Command::Bdat(Err(ParamError::Syntax))
        );
        assert_eq!(p("BDAT 1 LASTX"), Command::Bdat(Err(ParamError::Syntax)));
    }
}
