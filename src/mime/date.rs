//! Date header → the record's `sentdate` (the date at local midnight) and `gmtime` (the UTC
//! instant), as `message_create_record` derives them with `time_from_rfc5322`
//! (lib/times.c; docs: cyrus-mailbox-format.md §3.4, §9).
//!
//! The tokeniser follows `tokenise_str_and_create_tm` step by step, including its
//! leniencies: any weekday-like 3-letter word, any single separator byte after the day and
//! month, an optional seconds field, `.` for `:`, military/US zones, and an unsigned 4-digit
//! zone taken as negative. Calendar arithmetic is libc's, as in Cyrus: `mktime` (process
//! time zone, so `TZ` is honoured) for sentdate and `timegm` for gmtime; both normalise
//! out-of-range fields (31 Feb ⇒ 3 Mar).

use super::envelope::string_field;

/// `RFC5322_DATETIME_MAX`: longest token kept.
const DATETIME_MAX: usize = 32;

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `rfc5322_special`: FWS bytes.
fn is_special(c: Option<u8>) -> bool {
    matches!(c, Some(b' ' | b'\t' | b'\r' | b'\n'))
}

/// The C string being tokenised; `None` is `EOB`, the terminating NUL reads as `Some(0)`.
struct Buf<'a> {
    s: &'a [u8],
    off: usize,
}

impl Buf<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        if i < self.s.len() {
            Some(self.s[i])
        } else if i == self.s.len() {
            Some(0)
        } else {
            None
        }
    }

    /// `get_next_char`: advance (up to the NUL) and return the new current byte.
    fn next_char(&mut self) -> Option<u8> {
        if self.off < self.s.len() {
            self.off += 1;
            self.at(self.off)
        } else {
            None
        }
    }

    /// `get_current_char`.
    fn current(&self) -> Option<u8> {
        if self.off < self.s.len() {
            Some(self.s[self.off])
        } else {
            None
        }
    }

    /// `skip_ws`.
    fn skip_ws(&mut self) {
        let mut c = self.at(self.off);
        while is_special(c) {
            c = self.next_char();
        }
    }

    /// `get_next_token`: a run of ASCII letters/digits (at most 32); `None` at end of input.
    fn token(&mut self) -> Option<Vec<u8>> {
        let mut c = self.current()?;
        let mut tok = Vec::new();
        loop {
            if !c.is_ascii_alphanumeric() || tok.len() >= DATETIME_MAX {
                return Some(tok);
            }
            tok.push(c);
            c = self.next_char()?;
        }
    }
}

/// `to_int`: decimal value with C `int` wrap-around; `None` (−9999) if a non-digit.
fn to_int(tok: &[u8]) -> Option<i32> {
    let mut n: i32 = 0;
    for &c in tok {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.wrapping_mul(10).wrapping_add(i32::from(c - b'0'));
    }
    (n != -9999).then_some(n)
}

/// A 1–2 digit number token starting with a digit (day, hour, minute, second).
fn small_number(tok: &[u8]) -> Option<i32> {
    if tok.is_empty() || tok.len() > 2 || !tok[0].is_ascii_digit() {
        return None;
    }
    to_int(tok)
}

/// `compute_tzoffset`, in minutes east of UTC; `sign` is the byte before the token.
fn tz_offset(tok: &[u8], sign: Option<u8>) -> i64 {
    let up = |c: u8| i64::from(c.to_ascii_uppercase());
    let raw = |i: usize| i64::from(tok[i]);
    match tok.len() {
        1 => {
            let ch = up(tok[0]);
            if ch < i64::from(b'J') {
                (raw(0) - i64::from(b'A') + 1) * 60
            } else if ch == i64::from(b'J') {
                0
            } else if ch <= i64::from(b'M') {
                (raw(0) - i64::from(b'A')) * 60
            } else if ch < i64::from(b'Z') {
                (i64::from(b'M') - raw(0)) * 60
            } else {
                0
            }
        }
        2 if tok.eq_ignore_ascii_case(b"UT") => 0,
        3 => {
            if !tok[2].eq_ignore_ascii_case(&b'T') {
                return 0;
            }
            const ZONES: &[u8] = b"AECMPYHB";
            let Some(pos) = ZONES.iter().position(|&z| i64::from(z) == up(tok[0])) else {
                return 0;
            };
            let offset = (ZONES.len() - pos) as i64 * 60 - 12 * 60;
            match tok[1].to_ascii_uppercase() {
                b'D' => offset + 60,
                b'S' => offset,
                _ => 0,
            }
        }
        4 if tok.iter().all(u8::is_ascii_digit) => {
            let d = |i: usize| i64::from(tok[i] - b'0');
            let offset = (d(0) * 10 + d(1)) * 60 + d(2) * 10 + d(3);
            if sign == Some(b'+') {
                offset
            } else {
                -offset
            }
        }
        _ => 0,
    }
}

/// The parsed fields: `(mday, mon, year-1900, hour, min, sec, zone offset in seconds)`.
struct Parsed {
    tm: libc::tm,
    zone: i64,
}

/// `tokenise_str_and_create_tm`; `date_only` stops after the year.
fn tokenise(s: &[u8], date_only: bool) -> Option<Parsed> {
    // SAFETY: libc::tm is plain old data; all-zero is a valid value (memset in Cyrus).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let mut b = Buf { s, off: 0 };
    b.skip_ws();
    let c = b.current()?;
    if c.is_ascii_alphabetic() {
        // A weekday: any 3-letter word, which must be followed by ','.
        if b.token()?.len() != 3 || b.current() != Some(b',') {
            return None;
        }
        b.next_char();
        b.skip_ws();
    }
    tm.tm_mday = small_number(&b.token()?)?;
    if is_special(b.next_char()) {
        b.skip_ws();
    }
    let month = b.token()?;
    if month.len() != 3 || !month[0].is_ascii_alphabetic() {
        return None;
    }
    let norm = [
        month[0].to_ascii_uppercase(),
        month[1].to_ascii_lowercase(),
        month[2].to_ascii_lowercase(),
    ];
    tm.tm_mon = MONTHS.iter().position(|m| **m == norm)? as i32;
    if is_special(b.next_char()) {
        b.skip_ws();
    }
    let year_tok = b.token()?;
    let year = to_int(&year_tok)?;
    tm.tm_year = if year_tok.len() == 2 {
        if year < 70 {
            year + 100
        } else {
            year
        }
    } else if year < 1900 {
        return None;
    } else {
        year - 1900
    };
    tm.tm_isdst = -1;
    if date_only {
        return Some(Parsed { tm, zone: 0 });
    }
    b.skip_ws();
    tm.tm_hour = small_number(&b.token()?)?;
    if !matches!(b.current(), Some(b':' | b'.')) {
        return None;
    }
    b.next_char();
    tm.tm_min = small_number(&b.token()?)?;
    if matches!(b.current(), Some(b':' | b'.')) {
        b.next_char();
        tm.tm_sec = small_number(&b.token()?)?;
    }
    b.skip_ws();
    let sign = b.current();
    if matches!(sign, Some(b'+' | b'-')) {
        b.next_char();
    }
    let zone = b.token().map_or(0, |t| tz_offset(&t, sign));
    Some(Parsed {
        tm,
        zone: zone * 60,
    })
}

/// Local midnight of a time (Cyrus's sentdate default: `localtime`, truncate, `mktime`).
pub fn local_midnight(t: u64) -> u64 {
    let Ok(tt) = libc::time_t::try_from(t) else {
        return t;
    };
    // SAFETY: localtime_r only reads and writes the structs passed in.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&tt, &mut tm).is_null() {
            return t;
        }
        // The day's midnight, with the DST flag of `t` itself, as Cyrus passes it to mktime.
        let m = local_midnight_of(tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_isdst);
        u64::try_from(m).unwrap_or(0)
    }
}

/// A record's `sentdate` and `gmtime` from the Date header's values ([`parse_date`]; 0 =
/// none) with Cyrus's fallbacks (`mailbox_append_index_record`, `message_create_record`):
/// sentdate = local midnight of `internaldate`, gmtime = `internaldate`.
pub fn record_dates(sentdate: u64, gmtime: u64, internaldate: u64) -> (u64, u64) {
    (
        if sentdate != 0 {
            sentdate
        } else {
            local_midnight(internaldate)
        },
        if gmtime != 0 { gmtime } else { internaldate },
    )
}

/// Entries kept per thread by [`local_midnight_of`] before it starts afresh.
const MIDNIGHT_MEMO_MAX: usize = 4096;

/// `mktime` of midnight of a day (`tm_year`, `tm_mon`, `tm_mday` as in `struct tm`, out of
/// range values normalised) in the process time zone, with the given `tm_isdst` (-1: let
/// `mktime` decide). glibc's `mktime`
/// re-reads the zone (a `stat` of /etc/localtime) under a process-wide lock on every call,
/// which parallel parsing of many messages would contend on, so results are memoised per
/// thread, keyed by the day and the value of `TZ` (which tests change).
pub fn local_midnight_of(year: i32, mon: i32, mday: i32, isdst: i32) -> libc::time_t {
    use std::cell::RefCell;
    use std::collections::HashMap;
    type Memo = (
        Option<std::ffi::OsString>,
        HashMap<(i32, i32, i32, i32), libc::time_t>,
    );
    thread_local! {
        static MEMO: RefCell<Memo> = RefCell::new((None, HashMap::new()));
    }
    let tz = std::env::var_os("TZ");
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != tz || m.1.len() >= MIDNIGHT_MEMO_MAX {
            m.0 = tz;
            m.1.clear();
        }
        *m.1.entry((year, mon, mday, isdst)).or_insert_with(|| {
            // SAFETY: libc::tm is plain old data; all-zero is a valid value.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            tm.tm_year = year;
            tm.tm_mon = mon;
            tm.tm_mday = mday;
            tm.tm_isdst = isdst;
            // SAFETY: `tm` is a fully initialised struct tm owned by this frame.
            unsafe { libc::mktime(&mut tm) }
        })
    })
}

/// `time_from_rfc5322` on an unstructured Date value; `None` where Cyrus fails.
fn time_from_rfc5322(s: &[u8], date_only: bool) -> Option<u64> {
    let mut p = tokenise(s, date_only)?;
    let t = if date_only {
        local_midnight_of(p.tm.tm_year, p.tm.tm_mon, p.tm.tm_mday, p.tm.tm_isdst)
    } else {
        // SAFETY: `p.tm` is a fully initialised struct tm owned by this frame.
        unsafe { libc::timegm(&mut p.tm) }
    };
    if t < 0 {
        return None;
    }
    // Cyrus stores `t - zone` even if that dips below 0; such a value cannot be an unsigned
    // record time, so it is treated as unparsable here.
    // time_t is i32 on some targets.
    #[allow(clippy::useless_conversion)]
    let t = i64::from(t);
    u64::try_from(t.checked_sub(p.zone)?).ok()
}

/// `(sentdate, gmtime)` for a raw Date header value (bytes after the colon, without the
/// final line end); each is 0 when absent or unparsable (the caller substitutes the
/// internaldate as Cyrus does).
pub fn parse_date(raw: Option<&[u8]>) -> (u64, u64) {
    let Some(value) = string_field(raw) else {
        return (0, 0);
    };
    (
        time_from_rfc5322(&value, true).unwrap_or(0),
        time_from_rfc5322(&value, false).unwrap_or(0),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    static TZ_LOCK: Mutex<()> = Mutex::new(());

    /// Run `f` with the process time zone set to `tz` (glibc's mktime re-reads `TZ`).
    pub(crate) fn with_tz<R>(tz: &str, f: impl FnOnce() -> R) -> R {
        let _guard = TZ_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::env::var_os("TZ");
        std::env::set_var("TZ", tz);
        let r = f();
        match old {
            Some(v) => std::env::set_var("TZ", v),
            None => std::env::remove_var("TZ"),
        }
        r
    }

    fn utc(s: &str) -> (u64, u64) {
        with_tz("UTC0", || parse_date(Some(s.as_bytes())))
    }

    #[test]
    fn common_forms() {
        // 2023-03-14 10:00 +0100 = 09:00 UTC.
        assert_eq!(
            utc(" Tue, 14 Mar 2023 10:00:00 +0100"),
            (1678752000, 1678784400)
        );
        assert_eq!(utc(" 21 Nov 97 09:55:06 GMT"), (880070400, 880106106));
        assert_eq!(
            utc("Tue, 14 Mar 2023 10:00 -0000"),
            (1678752000, 1678788000)
        );
        // Unknown weekday names are accepted; a missing comma is not.
        assert_eq!(utc("Xyz, 14 Mar 2023 10:00:00 +0000").1, 1678788000);
        assert_eq!(utc("Tue 14 Mar 2023 10:00:00 +0000"), (0, 0));
        // US zones, an unsigned numeric zone counts as negative.
        assert_eq!(utc("14 Mar 2023 10:00:00 EST").1, 1678788000 + 5 * 3600);
        assert_eq!(utc("14 Mar 2023 10:00:00 PDT").1, 1678788000 + 7 * 3600);
        assert_eq!(utc("14 Mar 2023 10:00:00 0100").1, 1678788000 + 3600);
        // Dashes as separators; without a time there is a sentdate but no gmtime.
        assert_eq!(utc("14-mar-2023"), (1678752000, 0));
        // Pre-1970 and garbage.
        assert_eq!(utc("1 Jan 1969 00:00:00 +0000"), (0, 0));
        assert_eq!(utc("yesterday"), (0, 0));
        assert_eq!(utc(""), (0, 0));
        assert_eq!(parse_date(None), (0, 0));
        // Out-of-range days roll over as mktime does.
        assert_eq!(
            utc("31 Feb 2023 00:00:00 +0000").1,
            utc("3 Mar 2023 00:00 +0000").1
        );
    }

    #[test]
    fn sentdate_is_local_midnight() {
        let v = Some(&b"Wed, 15 Mar 2023 23:59:59 -0800"[..]);
        let (sent_utc, gm) = with_tz("UTC0", || parse_date(v));
        let (sent_ny, gm_ny) = with_tz("EST5EDT,M3.2.0,M11.1.0", || parse_date(v));
        assert_eq!(gm, gm_ny);
        assert_eq!(sent_utc, 1678838400);
        // New York is on EDT (UTC-4) on 15 March 2023.
        assert_eq!(sent_ny, 1678838400 + 4 * 3600);
    }

    #[test]
    fn midnight_memo_follows_tz_and_the_dst_flag() {
        // 15 March 2023 (tm_year 123, tm_mon 2).
        let utc = with_tz("UTC0", || local_midnight_of(123, 2, 15, -1));
        let ny = with_tz("EST5EDT,M3.2.0,M11.1.0", || {
            local_midnight_of(123, 2, 15, -1)
        });
        assert_eq!(utc, 1678838400);
        assert_eq!(ny, 1678838400 + 4 * 3600);
        // Midnight read as daylight time is an hour earlier than as standard time.
        let (std_t, dst_t) = with_tz("EST5EDT,M3.2.0,M11.1.0", || {
            (
                local_midnight_of(123, 0, 15, 0),
                local_midnight_of(123, 0, 15, 1),
            )
        });
        assert_eq!(std_t - dst_t, 3600);
        // Same answer as a direct mktime, out-of-range days included.
        with_tz("UTC0", || {
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            tm.tm_year = 123;
            tm.tm_mon = 1;
            tm.tm_mday = 31;
            tm.tm_isdst = -1;
            assert_eq!(local_midnight_of(123, 1, 31, -1), unsafe {
                libc::mktime(&mut tm)
            });
        });
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for s in [
            &b"Mon, 99 Xyz 99999999999999999999 99:99:99 +9999"[..],
            b"1 Jan 2147483647 00:00:00 +0000",
            b"\xff\xfe, 1 Jan 2000",
            b"1\x00 Jan 2000",
            b"Mon,",
            b"1 Jan 2000 1",
            b"1 Jan 2000 1:",
        ] {
            let _ = utc(std::str::from_utf8(s).unwrap_or("x"));
            let _ = parse_date(Some(s));
        }
    }
}
