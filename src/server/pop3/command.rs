//! POP3 command lines, parsed as Cyrus 3.6's `cmdloop` (imap/pop3d.c) splits them: the
//! keyword up to the first blank, case-insensitive; the argument after it with leading blanks
//! skipped (except for PASS, whose password may start with a blank); an empty argument after a
//! blank is `-ERR Syntax error` (except `AUTH `, Outlook's habit). Message numbers and TOP's
//! arguments are read as `parse_msgno` / `parseuint32` read them.
//!
//! Pure functions over bytes: no I/O, nothing that can panic on any input.

/// C `isspace` (Cyrus's `Uisspace`) in the C locale.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The command keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Quit,
    Capa,
    User,
    Pass,
    Apop,
    Auth,
    Stls,
    Utf8,
    Stat,
    List,
    Retr,
    Dele,
    Noop,
    Rset,
    Top,
    Uidl,
    Unknown,
}

impl Verb {
    fn from_keyword(k: &[u8]) -> Verb {
        let lower: Vec<u8> = k.iter().map(u8::to_ascii_lowercase).collect();
        match lower.as_slice() {
            b"quit" => Verb::Quit,
            b"capa" => Verb::Capa,
            b"user" => Verb::User,
            b"pass" => Verb::Pass,
            b"apop" => Verb::Apop,
            b"auth" => Verb::Auth,
            b"stls" => Verb::Stls,
            b"utf8" => Verb::Utf8,
            b"stat" => Verb::Stat,
            b"list" => Verb::List,
            b"retr" => Verb::Retr,
            b"dele" => Verb::Dele,
            b"noop" => Verb::Noop,
            b"rset" => Verb::Rset,
            b"top" => Verb::Top,
            b"uidl" => Verb::Uidl,
            _ => Verb::Unknown,
        }
    }
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    Command {
        verb: Verb,
        arg: Option<&'a [u8]>,
    },
    /// A blank after the keyword but nothing after it: `-ERR Syntax error`.
    SyntaxError,
}

/// Split a command line (without its line ending) as `cmdloop` does.
pub fn parse_line(line: &[u8]) -> Parsed<'_> {
    // prot_fgets + strlen: a NUL ends the line as far as Cyrus is concerned.
    let line = match line.iter().position(|&b| b == 0) {
        Some(n) => line.get(..n).unwrap_or(&[]),
        None => line,
    };
    // Cyrus strips one trailing CR and LF; the channel removed the ending already, but a
    // stray CR before it (`\r\r\n`) is stripped too.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let kw_end = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
    let keyword = line.get(..kw_end).unwrap_or(&[]);
    let verb = Verb::from_keyword(keyword);
    if kw_end >= line.len() {
        return Parsed::Command { verb, arg: None };
    }
    let mut arg = line.get(kw_end + 1..).unwrap_or(&[]);
    if verb != Verb::Pass {
        let skip = arg.iter().position(|&b| !is_space(b)).unwrap_or(arg.len());
        arg = arg.get(skip..).unwrap_or(&[]);
    }
    if arg.is_empty() {
        if verb == Verb::Auth {
            return Parsed::Command { verb, arg: None };
        }
        return Parsed::SyntaxError;
    }
    Parsed::Command {
        verb,
        arg: Some(arg),
    }
}

/// `parseuint32`: decimal digits, at least one, no overflow past u32. Returns the value and
/// the rest of the input.
pub fn parse_u32(p: &[u8]) -> Option<(u32, &[u8])> {
    let n = p.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let mut v: u32 = 0;
    for &b in p.get(..n)? {
        v = v.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some((v, p.get(n..)?))
}

fn skip_space(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|&&b| is_space(b)).count();
    p.get(n..).unwrap_or(&[])
}

/// Why a message-number argument was refused (the reply text follows `-ERR `).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError {
    NotANumber,
    ExtraArgument,
    MissingArgument,
    InvalidLines,
}

impl ArgError {
    pub fn reply(self) -> &'static [u8] {
        match self {
            ArgError::NotANumber => b"-ERR Not a number\r\n",
            ArgError::ExtraArgument => b"-ERR Unexpected extra argument\r\n",
            ArgError::MissingArgument => b"-ERR Missing argument\r\n",
            ArgError::InvalidLines => b"-ERR Invalid number of lines\r\n",
        }
    }
}

/// `parse_msgno` without the existence check: a number and nothing after it.
pub fn parse_msgno(arg: &[u8]) -> Result<u32, ArgError> {
    let (n, rest) = parse_u32(skip_space(arg)).ok_or(ArgError::NotANumber)?;
    if !rest.is_empty() {
        return Err(ArgError::ExtraArgument);
    }
    Ok(n)
}

/// TOP's two numbers, with Cyrus's replies: anything wrong with the message number
/// (including a missing line count) is "Missing argument".
pub fn parse_top(arg: Option<&[u8]>) -> Result<(u32, u32), ArgError> {
    let p = skip_space(arg.unwrap_or(&[]));
    let (msgno, rest) = parse_u32(p).ok_or(ArgError::MissingArgument)?;
    if rest.is_empty() {
        return Err(ArgError::MissingArgument);
    }
    let (lines, rest) = parse_u32(skip_space(rest)).ok_or(ArgError::InvalidLines)?;
    if !rest.is_empty() {
        return Err(ArgError::ExtraArgument);
    }
    Ok((msgno, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(verb: Verb, arg: Option<&[u8]>) -> Parsed<'_> {
        Parsed::Command { verb, arg }
    }

    #[test]
    fn keyword_and_argument() {
        assert_eq!(parse_line(b"QUIT"), cmd(Verb::Quit, None));
        assert_eq!(parse_line(b"qUiT"), cmd(Verb::Quit, None));
        assert_eq!(parse_line(b"USER  alice"), cmd(Verb::User, Some(b"alice")));
        assert_eq!(parse_line(b"LIST\t2"), cmd(Verb::List, Some(b"2")));
        assert_eq!(
            parse_line(b"PASS  secret"),
            cmd(Verb::Pass, Some(b" secret"))
        );
        assert_eq!(parse_line(b"PASS "), Parsed::SyntaxError);
        assert_eq!(parse_line(b"LIST "), Parsed::SyntaxError);
        assert_eq!(parse_line(b"AUTH "), cmd(Verb::Auth, None));
        assert_eq!(
            parse_line(b"AUTH PLAIN xyz"),
            cmd(Verb::Auth, Some(b"PLAIN xyz"))
        );
        assert_eq!(parse_line(b"LAST"), cmd(Verb::Unknown, None));
        assert_eq!(parse_line(b""), cmd(Verb::Unknown, None));
        assert_eq!(parse_line(b"NOOP\x00junk"), cmd(Verb::Noop, None));
        assert_eq!(parse_line(b"STAT\r"), cmd(Verb::Stat, None));
        assert_eq!(parse_line(b"\xff\xfe"), cmd(Verb::Unknown, None));
    }

    #[test]
    fn message_numbers() {
        assert_eq!(parse_msgno(b"1"), Ok(1));
        assert_eq!(parse_msgno(b"  42"), Ok(42));
        assert_eq!(parse_msgno(b"4294967295"), Ok(u32::MAX));
        assert_eq!(parse_msgno(b"4294967296"), Err(ArgError::NotANumber));
        assert_eq!(parse_msgno(b"x"), Err(ArgError::NotANumber));
        assert_eq!(parse_msgno(b"-1"), Err(ArgError::NotANumber));
        assert_eq!(parse_msgno(b"1 2"), Err(ArgError::ExtraArgument));
        assert_eq!(parse_msgno(b"1x"), Err(ArgError::ExtraArgument));
    }

    #[test]
    fn top_arguments() {
        assert_eq!(parse_top(Some(b"1 0")), Ok((1, 0)));
        assert_eq!(parse_top(Some(b"1   10")), Ok((1, 10)));
        assert_eq!(parse_top(None), Err(ArgError::MissingArgument));
        assert_eq!(parse_top(Some(b"1")), Err(ArgError::MissingArgument));
        assert_eq!(parse_top(Some(b"x 1")), Err(ArgError::MissingArgument));
        assert_eq!(parse_top(Some(b"1 x")), Err(ArgError::InvalidLines));
        assert_eq!(parse_top(Some(b"1x 2")), Err(ArgError::InvalidLines));
        assert_eq!(parse_top(Some(b"1 2 3")), Err(ArgError::ExtraArgument));
    }
}
