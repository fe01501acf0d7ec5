//! Builds the MIME parser corpus with a real Cyrus IMAP 3.6: `cargo run --example
//! make_mime_corpus -- OUTDIR` (see `scripts/make-mime-corpus` and `fixtures/mime/README.md`).
//!
//! Each case is one small message. It is stored by real Cyrus — IMAP APPEND where Cyrus
//! accepts it (APPEND, unlike lmtpd, adds no headers), else placed as a raw file and indexed by
//! `reconstruct` (bare LF, NUL, 8-bit headers that APPEND would munge, header lines APPEND
//! refuses) — and then the stored file (`<case>.eml`) and what Cyrus derived from it (`<case>.json`:
//! the ten cache items and the record fields) are extracted with the crate's own codecs.
//!
//! Three instances run with `TZ=UTC`: the default one (`rfc2047_utf8: no`, `munge8bit: yes`);
//! one with `rfc2047_utf8: yes` and `munge8bit: no`, which gets a `-rfc2047-utf8` twin of every
//! case that holds a byte ≥ 0x80; and one with `maxheaderlines: 10`, `boundary_limit: 3` for the
//! `limits-*` cases.

#[path = "../tests/support/cyrus.rs"]
mod cyrus;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use cyrkit::format::cache::{CacheEntry, CACHE_ITEM_NAMES};
use cyrkit::format::index::{self, Index, IndexRecord};
use cyrus::{crlf, CyrusInstance, CyrusOptions};

/// INTERNALDATE given to every APPEND and mtime of every raw file: a day no Date header of the
/// corpus uses, so a fallback to it (unparsable or pre-1970 Date) is recognisable.
const INTERNALDATE: &str = "17-Jul-2011 11:22:33 +0000";
const INTERNALDATE_UNIX: u64 = 1_310_901_753;
const MAILBOX: &str = "user.corpus";
const LOGIN: &str = "corpus";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    /// APPEND, or a raw file if APPEND refuses it or (default instance) it has 8-bit headers.
    Auto,
    /// APPEND even when Cyrus rewrites it (munge8bit).
    Append,
    /// Always a raw file.
    Raw,
}

/// The imapd.conf options of one instance that change what `message_parse` produces.
struct Settings {
    rfc2047_utf8: bool,
    munge8bit: bool,
    maxheaderlines: usize,
    boundary_limit: usize,
}

const DEFAULT: Settings = Settings {
    rfc2047_utf8: false,
    munge8bit: true,
    maxheaderlines: 1000,
    boundary_limit: 1000,
};
const UTF8: Settings = Settings {
    rfc2047_utf8: true,
    munge8bit: false,
    ..DEFAULT
};
/// Small limits, so that their edges can be tested with small messages.
const LIMITS: Settings = Settings {
    maxheaderlines: 10,
    boundary_limit: 3,
    ..DEFAULT
};

struct Case {
    name: String,
    what: String,
    data: Vec<u8>,
    store: Store,
}

/// `\xHH` in `s` becomes the byte 0xHH (the case texts are raw strings).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"\\x") {
            if let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[derive(Default)]
struct Cases(Vec<Case>);

impl Cases {
    /// A CRLF message (`\n` in `text` becomes CRLF).
    fn add(&mut self, name: &str, what: &str, text: &str) {
        self.push(name, what, crlf(&unescape(text)), Store::Auto);
    }
    /// Bytes exactly as given, stored as a raw file.
    fn raw(&mut self, name: &str, what: &str, data: Vec<u8>) {
        self.push(name, what, data, Store::Raw);
    }
    fn push(&mut self, name: &str, what: &str, data: Vec<u8>, store: Store) {
        assert!(
            !self.0.iter().any(|c| c.name == name),
            "duplicate case {name}"
        );
        self.0.push(Case {
            name: name.into(),
            what: what.into(),
            data,
            store,
        });
    }
}

fn main() -> Result<()> {
    // sentdate is local midnight of the Date (mktime): pin the zone for Cyrus and its tools.
    std::env::set_var("TZ", "UTC");
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fixtures/mime".into()),
    );
    ensure!(
        Path::new(cyrus::CYRUS_BIN).join("master").exists(),
        "Cyrus is not installed in {}",
        cyrus::CYRUS_BIN
    );
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (Cyrus runs as the cyrus user)"
    );
    let version = cyrus_version();
    let cases = all_cases();
    let utf8_twins: Vec<Case> = cases
        .0
        .iter()
        .filter(|c| c.data.iter().any(|&b| b >= 0x80) && c.store != Store::Append)
        .map(|c| Case {
            name: format!("{}-rfc2047-utf8", c.name),
            what: format!("{} (rfc2047_utf8: yes)", c.what),
            data: c.data.clone(),
            store: c.store,
        })
        .collect();

    fs::create_dir_all(&out)?;
    for e in fs::read_dir(&out)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "eml" || x == "json") {
            fs::remove_file(p)?;
        }
    }
    let n1 = run_instance(&DEFAULT, &cases.0, &out, &version).context("default instance")?;
    let n2 = run_instance(&UTF8, &utf8_twins, &out, &version).context("rfc2047_utf8")?;
    let n3 = run_instance(&LIMITS, &limit_cases().0, &out, &version).context("limits instance")?;
    eprintln!("{} cases written to {}", n1 + n2 + n3, out.display());
    Ok(())
}

fn cyrus_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "cyrus-imapd"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The top-level header block (up to the first CRLF CRLF, or all of it).
fn header_block(data: &[u8]) -> &[u8] {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data, |p| &data[..p])
}

fn run_instance(set: &Settings, cases: &[Case], out: &Path, version: &str) -> Result<usize> {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let opts = CyrusOptions::default()
        .with("rfc2047_utf8", yes_no(set.rfc2047_utf8))
        .with("munge8bit", yes_no(set.munge8bit))
        .with("maxheaderlines", &set.maxheaderlines.to_string())
        .with("boundary_limit", &set.boundary_limit.to_string());
    let munge8bit = set.munge8bit;
    let mut cy = CyrusInstance::start(&opts)?;
    let mut admin = cy.imap_admin()?;
    admin.create(MAILBOX)?;
    admin.logout()?;

    // uid of each case, and whether it went in by APPEND
    let mut placed: Vec<(u32, bool)> = Vec::with_capacity(cases.len());
    let mut raw_pending: Vec<usize> = Vec::new();
    let mut c = cy.imap_login(LOGIN)?;
    let mut last_uid = 0u32;
    for (i, case) in cases.iter().enumerate() {
        let eight_bit_head = header_block(&case.data).iter().any(|&b| b >= 0x80);
        let try_append = match case.store {
            Store::Raw => false,
            Store::Append => true,
            Store::Auto => !(munge8bit && eight_bit_head),
        };
        placed.push((0, false));
        if !try_append {
            raw_pending.push(i);
            continue;
        }
        let r = c.command_parts(&[
            cyrus::Part::Text(&format!("APPEND INBOX \"{INTERNALDATE}\" ")),
            cyrus::Part::Literal(&case.data),
        ])?;
        if r.is_ok() {
            let uid = appenduid(&r.text)
                .with_context(|| format!("{}: no APPENDUID in {:?}", case.name, r.text))?;
            last_uid = last_uid.max(uid);
            placed[i] = (uid, true);
        } else if case.store == Store::Auto {
            eprintln!(
                "{}: APPEND refused ({}), placing a raw file",
                case.name, r.text
            );
            raw_pending.push(i);
        } else {
            bail!("{}: APPEND refused: {} {}", case.name, r.status, r.text);
        }
    }
    c.logout()?;
    cy.stop()?;

    let mbox_dir = find_mailbox_dir(&cy.spool_dir())?;
    if !raw_pending.is_empty() {
        for &i in &raw_pending {
            last_uid += 1;
            let path = mbox_dir.join(format!("{last_uid}."));
            fs::write(&path, &cases[i].data)?;
            let f = fs::File::options().write(true).open(&path)?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(INTERNALDATE_UNIX))?;
            cyrus::chown_cyrus(&path)?;
            placed[i] = (last_uid, false);
        }
        let o = cy.run_tool("reconstruct", &[MAILBOX])?;
        ensure!(
            o.status.success(),
            "reconstruct failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    let index_buf = fs::read(mbox_dir.join("cyrus.index"))?;
    let cache_buf = fs::read(mbox_dir.join("cyrus.cache"))?;
    let idx = Index::open(&index_buf).map_err(|e| anyhow::anyhow!("cyrus.index: {e}"))?;
    let iversion = idx.version();
    let mut records = Vec::new();
    for r in idx.records() {
        records.push(r.map_err(|e| anyhow::anyhow!("cyrus.index record: {e}"))?);
    }
    let mut written = 0;
    for (case, &(uid, appended)) in cases.iter().zip(&placed) {
        let Some(rec) = records.iter().find(|r| r.uid == uid && !r.is_expunged()) else {
            eprintln!(
                "WARNING: {}: Cyrus did not index it (uid {uid}); left out",
                case.name
            );
            continue;
        };
        let stored = fs::read(mbox_dir.join(format!("{uid}.")))?;
        let entry = CacheEntry::parse(&cache_buf, rec.cache_offset)
            .map_err(|e| anyhow::anyhow!("{}: cache entry: {e}", case.name))?;
        let doc = case_json(case, rec, &entry, iversion, appended, set, version);
        if stored != case.data {
            eprintln!("note: {}: Cyrus stored different bytes", case.name);
        }
        fs::write(out.join(format!("{}.eml", case.name)), &stored)?;
        fs::write(
            out.join(format!("{}.json", case.name)),
            serde_json::to_string_pretty(&doc)? + "\n",
        )?;
        written += 1;
    }
    Ok(written)
}

/// `[APPENDUID <validity> <uid>] ...` → uid.
fn appenduid(text: &str) -> Option<u32> {
    let rest = &text[text.find("[APPENDUID ")? + 11..];
    let end = rest.find(']')?;
    rest[..end].split_whitespace().nth(1)?.parse().ok()
}

/// The directory holding `cyrus.index` of the one mailbox in the spool.
fn find_mailbox_dir(spool: &Path) -> Result<PathBuf> {
    let mut stack = vec![spool.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join("cyrus.index").exists() && d.ends_with("corpus") {
            return Ok(d);
        }
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    bail!(
        "no mailbox directory for {MAILBOX} under {}",
        spool.display()
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A text item as a JSON string when it is UTF-8, else `{"hex": ...}`; SECTION always hex.
fn item_value(name: &str, data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(s) if name != "SECTION" => Value::String(s.to_string()),
        _ => json!({ "hex": hex(data) }),
    }
}

#[allow(clippy::too_many_arguments)]
fn case_json(
    case: &Case,
    rec: &IndexRecord,
    entry: &CacheEntry<'_>,
    iversion: u32,
    appended: bool,
    set: &Settings,
    version: &str,
) -> Value {
    let mut items = Map::new();
    for (name, data) in CACHE_ITEM_NAMES.iter().zip(entry.items.iter()) {
        items.insert((*name).to_string(), item_value(name, data));
    }
    json!({
        "case": case.name,
        "description": case.what,
        "cyrus_version": version,
        "stored_by": if appended { "append" } else { "reconstruct" },
        "tz": "UTC",
        "options": {
            "rfc2047_utf8": set.rfc2047_utf8,
            "munge8bit": set.munge8bit,
            "maxheaderlines": set.maxheaderlines,
            "boundary_limit": set.boundary_limit,
        },
        "record": {
            "size": rec.size,
            "header_size": rec.header_size,
            "sentdate": index::time_secs(rec.sentdate, iversion),
            "gmtime": index::time_secs(rec.gmtime, iversion),
            "internaldate": index::time_secs(rec.internaldate, iversion),
            "guid": index::guid_hex(&rec.guid),
            "cache_version": rec.cache_version,
        },
        "items": Value::Object(items),
    })
}

// ------------------------------------------------------------------------------------------
// The cases. Texts are raw strings: `\xHH` is a byte, `\n` becomes CRLF (except raw cases).

fn all_cases() -> Cases {
    let mut c = Cases::default();
    basic_and_dates(&mut c);
    subjects(&mut c);
    addresses(&mut c);
    mime_structure(&mut c);
    params(&mut c);
    header_blocks(&mut c);
    c
}

fn basic_and_dates(c: &mut Cases) {
    c.add(
        "plain-text",
        "ordinary single-part text message",
        r#"From: Alice Sender <alice@example.org>
To: Bob <bob@example.com>
Subject: Hello there
Date: Tue, 14 Mar 2023 10:00:00 +0100
Message-ID: <plain-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Hello Bob,
just a plain message.
"#,
    );
    c.add(
        "no-date",
        "no Date header: gmtime/sentdate fall back to the internaldate",
        "From: a@example.org\nSubject: no date\n\nbody\n",
    );
    let dates: &[(&str, &str, &str)] = &[
        ("date-garbage", "unparsable Date", "garbage date"),
        ("date-empty", "empty Date", ""),
        (
            "date-pre-1970",
            "Date before the epoch",
            "Thu, 13 Feb 1969 23:32:00 -0330",
        ),
        (
            "date-epoch",
            "Date exactly at the epoch (gmtime 0)",
            "Thu, 1 Jan 1970 00:00:00 +0000",
        ),
        (
            "date-far-future",
            "Date past 2106 (beyond 32 bits)",
            "Mon, 1 Jan 2110 00:00:00 +0000",
        ),
        (
            "date-year-2038",
            "Date after 2038",
            "Tue, 19 Jan 2038 03:14:08 +0000",
        ),
        (
            "date-zone-name",
            "obsolete zone name EDT",
            "Tue, 14 Mar 2023 10:00:00 EDT",
        ),
        (
            "date-zone-military",
            "military zone letter",
            "Tue, 14 Mar 2023 10:00:00 A",
        ),
        (
            "date-zone-unknown",
            "unknown zone name",
            "Tue, 14 Mar 2023 10:00:00 XYZ",
        ),
        (
            "date-no-zone",
            "no zone at all",
            "Tue, 14 Mar 2023 10:00:00",
        ),
        (
            "date-two-digit-year",
            "2-digit year, GMT",
            "21 Nov 97 09:55:06 GMT",
        ),
        (
            "date-three-digit-year",
            "3-digit year (obsolete: +1900)",
            "Fri, 21 Nov 103 09:55:06 +0000",
        ),
        (
            "date-no-seconds",
            "no seconds",
            "Tue, 14 Mar 2023 10:00 +0100",
        ),
        (
            "date-no-weekday",
            "no weekday, single-digit day",
            "4 Mar 2023 10:00:00 +0100",
        ),
        (
            "date-crosses-day",
            "offset moves the UTC day",
            "Wed, 15 Mar 2023 23:59:59 -0800",
        ),
        (
            "date-crosses-day-east",
            "positive offset moves the UTC day back",
            "Thu, 16 Mar 2023 00:30:00 +1400",
        ),
        (
            "date-odd-offset",
            "offset +9959",
            "Sun, 2 Apr 2023 01:00:00 +9959",
        ),
        (
            "date-lowercase",
            "lower-case weekday and month",
            "tue, 14 mar 2023 10:00:00 +0100",
        ),
        (
            "date-iso8601",
            "ISO 8601 instead of RFC 5322",
            "2023-03-14T10:00:00Z",
        ),
        (
            "date-bad-day",
            "day 31 of February",
            "Fri, 31 Feb 2023 10:00:00 +0000",
        ),
        (
            "date-comments",
            "comments around the parts",
            "(c1) Tue, (c2) 14 Mar 2023 10:00:00 (c3) +0100 (CET)",
        ),
    ];
    for (name, what, date) in dates {
        c.add(
            name,
            what,
            &format!("From: d@example.org\nSubject: {name}\nDate: {date}\n\nbody\n"),
        );
    }
    c.add(
        "date-folded",
        "folded Date with a trailing comment",
        "From: d@example.org\nSubject: folded date\nDate: Thu,\n      13\n        Feb\n          2020\n      23:32\n               -0330 (Newfoundland Time)\n\nbody\n",
    );
    c.add(
        "date-duplicate",
        "two Date headers: the last wins",
        "Date: Mon, 1 May 2023 12:00:00 +0000\nFrom: d@example.org\nDate: Tue, 2 May 2023 13:00:00 +0000\nSubject: two dates\n\nbody\n",
    );
}

fn subjects(c: &mut Cases) {
    let subjects: &[(&str, &str, &str)] = &[
        ("subject-2047-b-utf8", "RFC 2047 B, UTF-8", "=?UTF-8?B?SGVsbG8gV8O2cmxk?="),
        ("subject-2047-q-latin1", "RFC 2047 Q, ISO-8859-1", "=?iso-8859-1?q?Caf=E9_cr=E8me?="),
        ("subject-2047-iso-2022-jp", "RFC 2047 ISO-2022-JP (ICU)", "=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?= test"),
        ("subject-2047-unknown-charset", "unknown charset: one U+FFFD", "before =?x-unknown-cs?q?zz?= after"),
        ("subject-2047-invalid-base64", "invalid base64 characters skipped", "=?utf-8?b?!!!?= x =?utf-8?b?SGV*sbG8?= =?utf-8?b?SGVsbG8?"),
        ("subject-2047-inside-words", "encoded words inside words", "d=?utf-8?q?e?=f abc=?utf-8?q?X?= =?utf-8?q?Y?=xyz"),
        ("subject-2047-whitespace-between", "whitespace between encoded words dropped", "=?utf-8?q?a?= =?utf-8?q?b?=\t=?utf-8?q?c?=   =?utf-8?q?d?= e =?utf-8?q?f?="),
        ("subject-2047-split-multibyte", "a UTF-8 character split across two words", "=?UTF-8?Q?caf=C3?= =?UTF-8?Q?=A9?= and =?utf-8?B?4oI=?= =?utf-8?B?rA==?="),
        ("subject-2047-case-and-lang", "lower-case q/b and RFC 2231 language", "=?Utf-8?q?lower?= =?UTF-8*en?B?bGFuZw==?= =?utf-8*de-CH?Q?Gr=C3=BC=C3=9Fe?="),
        ("subject-2047-malformed", "broken encoded words stay text", "=?utf-8?x?abc?= =??q?x?= =?utf-8?q?no end =?utf-8?q??= =?utf-8?q?a?b?= =?=?utf-8?q?ok?="),
        ("subject-2047-legacy-charsets", "windows-1252, koi8-r, gb2312, big5", "=?windows-1252?q?=80_=93q=94?= =?koi8-r?b?8NLJ18XU?= =?gb2312?B?xOO6ww==?= =?big5?B?pKSk5Q==?="),
        ("subject-2047-q-specials", "Q: underscore, =XX lower case, literal =", "=?utf-8?q?a_b=3Dc=5F=c3=a9_=ZZ_=4?= end"),
        ("subject-2047-mixed-charsets", "adjacent words in different charsets", "=?iso-8859-1?q?=E9?= =?utf-8?q?=C3=A9?= =?iso-8859-15?q?=A4?= =?us-ascii?q?plain?="),
        ("subject-2047-utf7", "UTF-7 charset", "=?utf-7?q?Hi_+AOk-?="),
        ("subject-specials", "%, \", \\ force a literal", r#"50% off "quoted" back\slash"#),
        ("subject-empty", "empty Subject: \"\" not NIL", ""),
        ("subject-whitespace-only", "Subject of blanks", " \t "),
        ("subject-trailing-space", "trailing whitespace kept", "trailing   "),
        ("subject-brackets", "IMAP-looking text", "Re: [list] (no) {3} NIL *"),
    ];
    for (name, what, subject) in subjects {
        c.add(
            name,
            what,
            &format!(
                "From: s@example.org\nTo: t@example.org\nSubject: {subject}\nDate: Wed, 1 Mar 2023 09:00:00 +0000\n\nbody\n"
            ),
        );
    }
    for (name, len) in [
        ("subject-1023", 1023usize),
        ("subject-1024", 1024),
        ("subject-long-2000", 2000),
    ] {
        let words = "abcdefghi ".repeat(len / 10 + 1);
        let subject = &words[..len];
        c.add(
            name,
            "quoted below 1024 bytes, literal from 1024",
            &format!("From: s@example.org\nSubject: {subject}\n\nbody\n"),
        );
    }
    c.add(
        "subject-folded",
        "folded Subject: CRLF removed, whitespace kept",
        "From: s@example.org\nSubject: group\n  syntax and folded\n\tsubject =?utf-8?q?enc?=\n =?utf-8?q?oded?= end\n\nbody\n",
    );
    c.add(
        "header-8bit-latin1",
        "raw ISO-8859-1 bytes in Subject and From",
        r#"From: Ren\xE9 <rene@example.org>
To: Fran\xE7ois <f@example.org>
Subject: caf\xE9 cr\xE8me =?utf-8?q?ok?=
Date: Wed, 1 Mar 2023 09:00:00 +0000

8bit body caf\xE9
"#,
    );
    c.add(
        "header-8bit-utf8",
        "raw UTF-8 bytes in Subject, From, To",
        r#"From: Jos\xC3\xA9 M\xC3\xBCller <jose@example.org>
To: "\xE6\x97\xA5\xE6\x9C\xAC" <jp@example.org>, plain@example.org
Subject: Gr\xC3\xBC\xC3\x9Fe \xE2\x82\xAC =?utf-8?q?=C3=A9?= mixed
Date: Wed, 1 Mar 2023 09:00:00 +0000

body
"#,
    );
    c.add(
        "header-8bit-params",
        "raw UTF-8 in Content-Type/Content-Disposition params and a group name",
        r#"From: p@example.org
To: Gr\xC3\xBCppe: a@example.org;
Subject: 8bit params
Content-Type: multipart/mixed; boundary=p

--p
Content-Type: text/plain; charset=utf-8; name="caf\xC3\xA9.txt"
Content-Disposition: attachment; filename="\xE2\x82\xAC rates.txt"
Content-Description: d\xC3\xA9scription

x
--p--
"#,
    );
    c.add(
        "header-8bit-invalid-utf8",
        "8-bit bytes that are not valid UTF-8, next to encoded words",
        r#"From: "Bad \xC3 Seq" <bad@example.org>
Subject: trunc \xE2\x82 x \xF0\x9F\x98 y \xC3\xA9=?utf-8?q?=C3=A9?= \xFF\xFE
Date: Wed, 1 Mar 2023 09:00:00 +0000

body
"#,
    );
    c.push(
        "header-8bit-munged",
        "8-bit header bytes APPENDed with munge8bit: stored as X",
        crlf(&unescape(
            "From: Ren\\xE9 <rene@example.org>\nSubject: caf\\xE9 \\xC3\\xA9\nX-Tag: \\xFF\n\nbody caf\\xE9\n",
        )),
        Store::Append,
    );
    c.add(
        "duplicate-headers",
        "Subject, From, To, Message-ID twice (last wins); Received twice (first wins)",
        r#"Received: from first.example (first.example [192.0.2.1]) by mx; Mon, 1 May 2023 12:00:00 +0000
Subject: first subject
From: a@b.test
To: first@to.test
Message-ID: <first@id>
Received: from second.example by mx; Mon, 1 May 2023 13:00:00 +0000
Subject:second subject
From: "Last, First" <c@d.test>
To: second@to.test
Message-ID: <second@id>
Date: Mon, 1 May 2023 12:00:00 +0000

x
"#,
    );
}

fn addresses(c: &mut Cases) {
    let addrs: &[(&str, &str, &str)] = &[
        (
            "addr-group",
            "groups with members, empty groups",
            "From: Pete <pete@silly.example>\nTo: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;\nCc: Undisclosed recipients:;\nBcc: undisclosed-recipients:;, after@group.test\n",
        ),
        (
            "addr-group-odd",
            "group with a comment name, nested colon, unterminated group",
            "From: x@y.test\nTo: \"Quoted Group\": a@b.test;, (c) Team (d): m@n.test\nCc: Open Group: o@p.test, q@r.test\n",
        ),
        (
            "addr-route",
            "source routes in angle addresses",
            "From: Route <@a.test,@b.test:user@c.test>\nTo: <@relay.test:Joe@Example.COM>, plain@x.test\n",
        ),
        (
            "addr-route-quirk",
            "@route1,@route2:user@host without angle brackets",
            "From: f@x.test\nSender: @route1,@route2:user@host.test\nReply-To: @r.test:u@h.test\n",
        ),
        (
            "addr-comment-as-name",
            "trailing comment becomes the name",
            "From: plain@n.test (comment name)\nTo: (leading) lead@n.test, nested@n.test (outer (inner) text), \"Q\" <q@n.test> (ignored)\nCc: two@n.test (a) (b)\n",
        ),
        (
            "addr-quoted-escapes",
            "quoted names with escapes",
            r#"From: "\"escaped\" name" <e@n.test>
To: "back\\slash" <b@n.test>, "a\,b" <ab@n.test>, "semi; colon: <x>" <s@n.test>
Cc: "folded
 name" <f@n.test>, "" <empty@n.test>
"#,
        ),
        (
            "addr-missing-domain",
            "local part only, empty domain",
            "From: user\nTo: local-only, other <bracket>, trailing@\nCc: @only.domain\n",
        ),
        (
            "addr-domain-odd",
            "domain literal, dots, case, comments inside",
            "From: USER@EXAMPLE.COM\nTo: user@[192.0.2.1], a@b..c.test, d@e.test., f@ (c) g.test, h @ i.test\nCc: \"Mixed\" <MiXeD@ExAmPlE.oRg>\n",
        ),
        (
            "addr-sender-replyto-absent",
            "Sender and Reply-To fall back to From",
            "From: Only From <only@from.test>\nTo: t@x.test\n",
        ),
        (
            "addr-sender-replyto-present",
            "Sender and Reply-To present (and cached)",
            "From: Author <author@x.test>\nSender: Secretary <sec@x.test>\nReply-To: List <list@x.test>, other@x.test\nTo: t@x.test\n",
        ),
        (
            "addr-empty-fields",
            "empty From, To, Cc, Bcc",
            "From:\nTo: \nCc:\t\nBcc:\nSender:\nReply-To:\n",
        ),
        (
            "addr-2047-names",
            "encoded names, encoded group name",
            "From: =?ISO-8859-1?Q?Andr=E9_Pirard?= <PIRARD@vm1.ulg.ac.be>\nTo: =?utf-8?q?=22Quoted=22_Name?= <q@n.test>, =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?= <jp@n.test>\nCc: =?utf-8?q?Gr=C3=BCppe?=: m@n.test;\nBcc: \"=?utf-8?q?inside_quotes?=\" <iq@n.test>\n",
        ),
        (
            "addr-malformed",
            "unbalanced brackets and quotes, missing commas",
            "From: <a@b.test\nTo: \"unterminated <u@n.test>, a@b c@d, ;;; , <>, ,,\nCc: x@y.test>, (open comment x@z.test\n",
        ),
        (
            "addr-name-quoting",
            "names that need quotes in the search form",
            "From: J. Smith <j@x.test>\nTo: O'Brien <o@x.test>, Who? <w@x.test>, \"a.b\" <ab@x.test>, \"Tab\there\" <t@x.test>, Mr (Dr) Jones <mj@x.test>\n",
        ),
    ];
    for (name, what, head) in addrs {
        c.add(
            name,
            what,
            &format!("{head}Subject: {name}\nDate: Wed, 1 Mar 2023 09:00:00 +0000\n\nbody\n"),
        );
    }
    let many: Vec<String> = (0..60)
        .map(|i| format!("Person {i} <p{i}@many.test>"))
        .collect();
    c.add(
        "addr-many",
        "60 recipients, folded",
        &format!(
            "From: f@many.test\nTo: {}\nSubject: many\n\nbody\n",
            many.join(",\n ")
        ),
    );
}

fn mime_structure(c: &mut Cases) {
    c.add(
        "mime-alternative",
        "multipart/alternative text + html",
        r#"From: News <news@example.org>
Subject: alternative
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt-1"

--alt-1
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 news
--alt-1
Content-Type: text/html; charset=utf-8

<html><body><p>Caf news</p></body></html>
--alt-1--
"#,
    );
    c.add(
        "mime-mixed-base64",
        "multipart/mixed with base64 attachments (whitespace, invalid characters, bad padding)",
        r#"From: r@example.org
Subject: attachments
Content-Type: multipart/mixed; boundary="mix-42"

--mix-42
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

SGVsbG8gV8O2cmxkIQo=
--mix-42
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK JcOkw7zD
tsOfCjIg!!MCBv*YmoK
PDwvTGVu Z3Ro=IDMg
MCBS
--mix-42
Content-Type: image/png
Content-Transfer-Encoding: BASE64

iVBORw0KGgo=AAAA
=
abc
--mix-42--
"#,
    );
    c.add(
        "mime-qp",
        "quoted-printable: soft breaks, trailing blanks, = in odd places",
        "From: q@example.org\nSubject: qp\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nsoft=\n break and =3D sign and lower =c3=a9\ntrailing spaces   \ntrailing tab\t\n=20\nbad =ZZ and =4 and = alone\nends with equals space= \n_underscore_ =\n=\nlast=",
    );
    let long = "x".repeat(1200);
    let long_qp = format!("{}=\n{}", "y".repeat(990), "z".repeat(1500));
    c.add(
        "mime-qp-long-lines",
        "quoted-printable lines longer than 998 bytes",
        &format!(
            "From: q@example.org\nSubject: long qp\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n{long}\n{long_qp}\nshort\n"
        ),
    );
    c.add(
        "mime-nested",
        "three levels of multipart with preamble and epilogue",
        r#"From: d@e.test
Subject: deep
Content-Type: multipart/mixed; boundary=L1

--L1
Content-Type: multipart/related; boundary=L2

preamble of L2
--L2
Content-Type: multipart/alternative; boundary=L3

--L3
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

aGVs bG8K
--L3
Content-Type: text/html
Content-Transfer-Encoding: quoted-printable

<p>soft=
break</p>
--L3--
epilogue of L3
--L2
Content-Type: image/gif
Content-ID: <img@x>

GIF89a
--L2--
--L1
Content-Type: text/plain

last
--L1--
"#,
    );
    c.add(
        "mime-rfc822",
        "message/rfc822 part with a single-part message",
        r#"From: fwd@example.org
Subject: Fwd: forwarded
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: message/rfc822
Content-Disposition: inline

From: inner@example.org
To: someone@example.net
Subject: inner message
Date: Mon, 13 Mar 2023 09:00:00 -0500
Message-ID: <inner@example.org>

inner body
--b1--
"#,
    );
    c.add(
        "mime-rfc822-multipart",
        "message/rfc822 holding a multipart",
        r#"From: fwd@example.org
Subject: Fwd: multipart
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: message/rfc822

From: inner@example.org
Subject: inner multipart
Content-Type: multipart/mixed; boundary="b2"

--b2
Content-Type: text/plain; charset=utf-8

inner text
--b2
Content-Type: image/png; name=x.png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--b2--

--b1--
"#,
    );
    c.add(
        "mime-rfc822-base64",
        "message/rfc822 with a Content-Transfer-Encoding (ignored by 3.6)",
        r#"From: fwd@example.org
Subject: encoded rfc822
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: message/rfc822
Content-Transfer-Encoding: base64

U3ViamVjdDogaW5uZXIKCmJvZHkK
--b1
Content-Type: message/rfc822
Content-Transfer-Encoding: quoted-printable

Subject: qp =3D inner

body=
--b1--
"#,
    );
    c.add(
        "mime-rfc822-top-level",
        "top-level message/rfc822 nested twice",
        r#"Subject: nested rfc822
From: n@r.test
Content-Type: message/rfc822

Subject: level 1
From: l1@r.test
Content-Type: message/rfc822

Subject: level 2
From: l2@r.test

deep body
"#,
    );
    c.add(
        "mime-rfc822-empty",
        "message/rfc822 with no content",
        "Subject: empty rfc822\nContent-Type: message/rfc822\n\n",
    );
    c.add(
        "mime-digest",
        "multipart/digest: parts default to message/rfc822",
        r#"From: digest@example.org
Subject: digest
Content-Type: multipart/digest; boundary="dd"

--dd

From: d1@example.org
Subject: digest part 1

part one
--dd
Content-Type: text/plain

explicitly typed
--dd
Content-Type: multipart/mixed; boundary=in

--in

inside mixed inside digest: text/plain default
--in--
--dd--
"#,
    );
    c.add(
        "mime-no-boundary",
        "multipart without boundary parameter",
        "From: bad@example.org\nSubject: multipart without boundary\nContent-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nno boundary here\n--x--\n",
    );
    c.add(
        "mime-boundary-prefix",
        "--abcdef is not boundary abc; --abc followed by blanks is",
        r#"Subject: boundary trap
From: b@t.test
Content-Type: multipart/mixed; boundary="abc"

--abcdef not a boundary
--abc  
Content-Type: text/plain; charset=us-ascii

part one
--abcdef inside part
--abc	tab
Content-Type: text/plain; charset=ISO-8859-15

part two
--abc--
"#,
    );
    c.add(
        "mime-boundary-prefix-nested",
        "inner boundary is a prefix of the outer one",
        r#"Subject: prefix boundaries
Content-Type: multipart/mixed; boundary="outer-abc"

--outer-abc
Content-Type: multipart/alternative; boundary="outer"

--outer
Content-Type: text/plain

one
--outer-abc
Content-Type: text/plain

two
--outer-abc--
"#,
    );
    c.add(
        "mime-outer-close-inside-inner",
        "outer closing boundary while the inner multipart is still open",
        r#"Subject: outer closes inner
Content-Type: multipart/mixed; boundary=OUT

--OUT
Content-Type: multipart/alternative; boundary=IN

--IN
Content-Type: text/plain

inner one
--IN
Content-Type: text/html

inner two, never closed
--OUT--
epilogue
"#,
    );
    c.add(
        "mime-outer-boundary-inside-inner",
        "outer separator boundary inside an inner part",
        r#"Subject: outer separates inner
Content-Type: multipart/mixed; boundary=OUT

--OUT
Content-Type: multipart/alternative; boundary=IN

--IN
Content-Type: text/plain

inner one
--OUT
Content-Type: text/plain

outer two
--OUT--
"#,
    );
    c.add(
        "mime-preamble-epilogue",
        "long preamble and epilogue",
        r#"Subject: preamble
Content-Type: multipart/mixed; boundary="pe"

This is the preamble.
It has two lines.
--pe
Content-Type: text/plain

part
--pe--
This is the epilogue.
It has
three lines.
"#,
    );
    c.add(
        "mime-missing-final-boundary",
        "no closing boundary: last part runs to EOF",
        "Subject: unterminated\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain\n\nfirst\n--zz\nContent-Type: text/plain\n\nsecond and last\n",
    );
    c.add(
        "mime-boundary-specials",
        "quoted boundary with specials",
        "Subject: specials\nContent-Type: multipart/mixed;\n boundary=\"----=_Part_0_12.34/5:6?\"\n\n------=_Part_0_12.34/5:6?\nContent-Type: text/plain\n\na\n------=_Part_0_12.34/5:6?--\n",
    );
    c.add(
        "mime-empty-parts",
        "part with no headers, empty part, adjacent boundaries",
        "Subject: empty parts\nContent-Type: multipart/mixed; boundary=e\n\n--e\n\nno headers\n--e\n--e\nContent-Type: text/plain\n\n--e\nContent-Type: text/plain\n--e--\n",
    );
    c.add(
        "mime-only-close",
        "multipart holding only a closing boundary",
        "Subject: only close\nContent-Type: multipart/mixed; boundary=oc\n\n--oc--\n",
    );
    c.add(
        "mime-boundary-in-headers",
        "a boundary line while a part's headers are read",
        "Subject: boundary in headers\nContent-Type: multipart/mixed; boundary=bh\n\n--bh\nContent-Type: text/plain\n--bh\nContent-Type: text/html\n\nhtml\n--bh--\n",
    );
    c.add(
        "mime-message-other",
        "message/delivery-status, message/partial, message/global",
        r#"Subject: other message types
Content-Type: multipart/report; report-type=delivery-status; boundary=r

--r
Content-Type: text/plain

failed
--r
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
--r
Content-Type: message/partial; id="abc"; number=1

Subject: partial
--r
Content-Type: message/global

Subject: global

body
--r
Content-Type: text/rfc822-headers

Subject: headers only
--r--
"#,
    );
    c.add(
        "mime-non-text-charset",
        "charset on non-text types",
        "Subject: non-text charset\nContent-Type: multipart/mixed; boundary=n\n\n--n\nContent-Type: application/json; charset=utf-8\n\n{}\n--n\nContent-Type: TEXT/X-Custom; CHARSET=UTF-8\n\ncustom\n--n--\n",
    );
    c.add("mime-deep-nesting", "twenty nested multiparts", &{
        let mut s = String::from("Subject: deep nesting\n");
        for i in 0..20 {
            s.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        s.push_str("Content-Type: text/plain\n\ncore\n");
        for i in (0..20).rev() {
            s.push_str(&format!("--b{i}--\n"));
        }
        s
    });
    c.raw(
        "mime-short-lines-before-boundary",
        "parts of 0, 1 and 2 bytes before a boundary, bare LF and CRLF",
        b"Subject: short\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\n\r\n\n--s\r\n\r\nx\n--s\r\n\r\n\r\n--s\r\n\r\n--s\r\n\r\nab\r\n--s\r\n\r\nc\r--s--\r\n"
            .to_vec(),
    );
    c.raw(
        "mime-bare-lf-body",
        "CRLF headers, bare-LF multipart body",
        b"Subject: mixed eol\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\nContent-Type: text/plain\n\nA\n--zz--\n".to_vec(),
    );
}

fn params(c: &mut Cases) {
    let ct: &[(&str, &str, &str)] = &[
        ("param-rfc2231-continuations", "name*0, name*1 continuations", "text/plain; charset=us-ascii;\n name*0=\"very long \";\n name*1=\"file \";\n name*2=name.txt"),
        ("param-rfc2231-extended", "extended value with charset and language", "text/plain; name*=utf-8'en'%E2%82%AC%20rates.csv; charset*=us-ascii''utf-8"),
        ("param-rfc2231-mixed", "extended and simple sections mixed", "text/plain; title*0*=us-ascii'en'This%20is; title*1*=%20%2A%2A%2Afun; title*2=\" stuff\"; other*0=plain; other*1*=%41"),
        ("param-rfc2231-out-of-order", "sections out of order and a gap", "text/plain; n*2=c; n*0=a; n*1=b; g*0=x; g*2=z"),
        ("param-quoting", "quoted values with escapes, folds, comments, empty", "text/plain; a=\"q\\\"uote\"; b=\"fold\n ed\"; c=tok (comment); d=\"\"; e=; =novalue; f"),
        ("ct-2047-encoded", "Content-Type starting with =?", "=?utf-8?q?text/plain;_name=3D=22caf=C3=A9=22?="),
        ("ct-no-params", "Content-Type without params", "text/plain"),
        ("ct-no-slash", "type without subtype: header ignored", "text"),
        ("ct-bad-token", "tspecials in the type: header ignored", "te(x)t/pl@in; charset=utf-8"),
        ("ct-comments-folding", "comments and folding around tokens", "(lead) text (c1) / (c2) html (c3) ;\n\tcharset = \"utf-8\" (c4) ; format=\"fixed\""),
        ("ct-uppercase", "upper-case type and params", "TEXT/PLAIN; CHARSET=US-ASCII; FORMAT=Flowed"),
        ("charset-unknown", "unknown charset: us-ascii in SECTION, verbatim in params", "text/plain; charset=\"x-unknown-cs\""),
        ("charset-duplicate", "charset twice", "text/plain; charset=x-unknown; charset=UTF-8; charset=bogus"),
    ];
    for (name, what, value) in ct {
        c.add(
            name,
            what,
            &format!(
                "From: p@example.org\nSubject: {name}\nContent-Type: {value}\n\nbody =C3=A9\n"
            ),
        );
    }
    c.add(
        "param-boundary-rfc2231",
        "boundary given by RFC 2231 sections",
        "Subject: 2231 boundary\nContent-Type: multipart/mixed; boundary*0=\"part\"; boundary*1=\"two\"\n\n--parttwo\nContent-Type: text/plain\n\nx\n--parttwo--\n",
    );
    let charsets = [
        "UTF-8",
        "utf8",
        "US-ASCII",
        "us-ascii",
        "iso-8859-1",
        "ISO_8859-1:1987",
        "latin1",
        "cp1252",
        "windows-1252",
        "\"utf-8\"",
        "\" utf-8 \"",
        "koi8-r",
        "iso-2022-jp",
        "gb2312",
        "x-mac-roman",
        "utf-16",
    ];
    let mut s = String::from(
        "From: p@example.org\nSubject: charset spellings\nContent-Type: multipart/mixed; boundary=cs\n\n",
    );
    for cs in charsets {
        s.push_str(&format!(
            "--cs\nContent-Type: text/plain; charset={cs}\n\ntext in {cs}\n"
        ));
    }
    s.push_str("--cs--\n");
    c.add("charset-spellings", "one part per charset spelling", &s);
    c.add(
        "disposition-params",
        "Content-Disposition with params, RFC 2231 filename, bad forms",
        r#"Subject: dispositions
Content-Type: multipart/mixed; boundary=d

--d
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="a\"b.txt"; size=12;
 creation-date="Wed, 12 Feb 1997 16:29:51 -0500"

x
--d
Content-Type: application/octet-stream
Content-Disposition: INLINE; filename*0="long "; filename*1="name.bin"

y
--d
Content-Type: application/octet-stream
Content-Disposition: (comment) x-custom

z
--d
Content-Type: application/octet-stream
Content-Disposition: ; filename=bad

w
--d--
"#,
    );
    c.add(
        "content-language",
        "Content-Language lists",
        "Subject: languages\nContent-Language: en, de-CH (Swiss) ,fr\nContent-Type: multipart/mixed; boundary=l\n\n--l\nContent-Type: text/plain\nContent-Language: i-klingon\n\nx\n--l\nContent-Type: text/plain\nContent-Language: en_US, 12\n\ny\n--l--\n",
    );
    c.add(
        "content-misc-fields",
        "Content-Location, -ID, -Description, -MD5",
        r#"Subject: misc content fields
Content-Type: multipart/mixed; boundary=m

--m
Content-Type: text/plain
Content-ID: <part1@example.org>
Content-Description: a "described" part 100%
Content-Location: http://example.org/a b
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

x
--m
Content-Type: text/plain
Content-ID:
Content-Description: =?utf-8?q?encoded_description?=
Content-Location: (comment) folded
 location

y
--m--
"#,
    );
    c.add(
        "cte-variants",
        "transfer encodings: 8bit, binary, x-uuencode, mixed case, comment, missing",
        r#"Subject: encodings
Content-Type: multipart/mixed; boundary=t

--t
Content-Transfer-Encoding: 8bit

a
--t
Content-Transfer-Encoding: binary

b
--t
Content-Type: application/octet-stream
Content-Transfer-Encoding: x-uuencode

begin 644 x
--t
Content-Transfer-Encoding: Quoted-Printable (comment)

c=3D
--t
Content-Transfer-Encoding: base64 extra

ZA==
--t
Content-Transfer-Encoding:

e
--t--
"#,
    );
}

fn header_blocks(c: &mut Cases) {
    c.add(
        "header-only",
        "headers without blank line or body",
        "Subject: headers only\nFrom: h@o.test\n",
    );
    c.raw(
        "header-only-no-final-newline",
        "header block without any line end at the end",
        b"Subject: headers only\r\nFrom: h@o.test".to_vec(),
    );
    c.add(
        "no-trailing-newline",
        "body without final CRLF",
        "Subject: no trailing newline\nFrom: n@t.test\n\nfirst\nlast line without CRLF",
    );
    c.push(
        "no-trailing-newline-exact",
        "body without final CRLF",
        b"Subject: x\r\n\r\nx".to_vec(),
        Store::Auto,
    );
    c.add(
        "empty-body",
        "blank line, then nothing",
        "Subject: empty body\nFrom: e@b.test\n\n",
    );
    c.add(
        "blank-line-first",
        "message starting with the blank line: no headers",
        "\nSubject: this is body\n",
    );
    c.raw(
        "bare-lf",
        "bare LF line ends everywhere: all header",
        b"From: lf@x.test\nSubject: bare LF\nDate: Wed, 3 May 2023 01:02:03 +0000\n\nline1\nline2\n"
            .to_vec(),
    );
    c.raw(
        "bare-lf-blank-line",
        "CRLF headers, bare-LF blank line",
        b"From: lf@x.test\r\nSubject: bare LF blank\r\n\nline1\r\n\r\nline2\r\n".to_vec(),
    );
    c.raw(
        "nul-in-body",
        "NUL bytes in the body",
        b"Subject: nul\r\nContent-Type: text/plain\r\n\r\na\x00b\r\n\x00\r\n".to_vec(),
    );
    c.raw(
        "nul-in-header",
        "NUL byte in a header value",
        b"Subject: nul\x00inside\r\nFrom: a\x00b@x.test\r\n\r\nbody\r\n".to_vec(),
    );
    c.add(
        "bare-cr",
        "bare CR in header and body",
        "Subject: bare\rCR\nFrom: c@r.test\n\nline\rwith CR\n\r\n",
    );
    let name31 = format!("X{}", "n".repeat(30));
    let name32 = format!("L{}", "n".repeat(31));
    let name33 = format!("L{}", "n".repeat(32));
    let name30 = format!("L{}", "n".repeat(29));
    c.add(
        "header-name-lengths",
        "header names of 30 to 33 bytes (>= 32 never cached)",
        &format!(
            "Subject: names\n{name30}: thirty\n{name31}: thirty-one x\nL{}: thirty-one\n{name32}: thirty-two\n{name33}: thirty-three\n\nbody\n",
            "n".repeat(30)
        ),
    );
    c.add(
        "x-headers",
        "x- headers: the cached ones and not",
        r#"Subject: x headers
X-Mailer: Mailer 1.0
x-mailer: second lower-case
X-Priority: 3
X-MSMail-Priority: Normal
X-Spam-Score: 5.0
X-Resolved-To: r@x.test
X-Delivered-To: d@x.test
X-Mail-From: m@x.test
X-Cyrus-Session-Id: sess-1
X-Universally-Unique-Identifier: uuid
X-Apple-Base-Url: x
X-Not-Cached: no
X-Spam-Status: not cached
X-Trace: trace
X-Ref: ref
X-Me-Message-Id: <me@x>
Xnot-dash: cached (no x- prefix)

body
"#,
    );
    c.add(
        "cached-header-table",
        "names from the never-cached and cached lists",
        r#"Return-Path: <r@x.test>
Received: from x by y; Wed, 1 Mar 2023 09:00:00 +0000
Delivery-Date: Wed, 1 Mar 2023 09:00:00 +0000
Envelope-To: e@x.test
DKIM-Signature: v=1; a=rsa-sha256; d=x.test
DomainKey-Signature: a=rsa-sha1
ARC-Seal: i=1
ARC-Message-Signature: i=1
ARC-Authentication-Results: i=1
Authentication-Results: mx; spf=pass
Received-SPF: pass
Archived-At: <http://x/1>
Listbox-Message-Date: 1
Topicbox-Message-UUID: 2
Topicbox-Policy-Reasoning: 3
MIME-Version: 1.0
In-Reply-To: <irt@x>
Message-ID: <id@x>
Subject: table
From: f@x.test
To: t@x.test
Cc: c@x.test
Bcc: b@x.test
Date: Wed, 1 Mar 2023 09:00:00 +0000
Priority: urgent
References: <a@x> <b@x>
Resent-From: rf@x.test
Resent-To: rt@x.test
Newsgroups: comp.mail
Followup-To: poster
Reply-To: rt@x.test
Sender: s@x.test
List-Id: <list.x.test>
Content-Type: text/plain
Content-Language: en
Organization: Org
User-Agent: UA 1.0

body
"#,
    );
    let mut many = String::from("Subject: first subject\nFrom: f@x.test\n");
    for i in 0..1100 {
        many.push_str(&format!("Comment: header line {i}\n"));
    }
    many.push_str("Subject: after the limit\nTo: late@x.test\nContent-Type: text/html\n\nbody\n");
    c.add(
        "many-header-lines",
        "1100+ header lines: fields past maxheaderlines ignored",
        &many,
    );
    let mut edge = String::new();
    for i in 0..997 {
        edge.push_str(&format!("Comment: {i}\n"));
    }
    edge.push_str("Subject: line 998\nFrom: line999@x.test\nTo: line1000@x.test\nCc: line1001@x.test\nKeywords: line 1002\n\nbody\n");
    c.add(
        "header-lines-limit-edge",
        "fields at header lines 998..1002",
        &edge,
    );
    let mut folded = String::from("Subject: folded limit\n");
    for i in 0..995 {
        folded.push_str(&format!("Comment: {i}\n"));
    }
    folded.push_str("To: a@x.test,\n b@x.test,\n c@x.test,\n d@x.test,\n e@x.test,\n f@x.test\nCc: cc@x.test\n\nbody\n");
    c.add(
        "header-lines-limit-folded",
        "folded field straddling maxheaderlines",
        &folded,
    );
    c.add(
        "folded-headers",
        "folded structured and cached headers",
        "From: Folded\n Name <folded@x.test>\nTo: a@x.test,\n\tb@x.test\nSubject: folded\n  subject\nREFERENCES: <a@x>\n  <b@x>\n\t<c@x>\nContent-Type: text/plain;\n charset=utf-8;\n\tformat=flowed\nMessage-ID:\n <folded@x.test>\nIn-Reply-To: <one@x>\n <two@x>\n\nbody\n",
    );
    c.add(
        "header-spacing",
        "no space after colon, tab after colon, lower-case names",
        "subject:no space\nfrom:\tf@x.test\nTO:   t@x.test\ncontent-type:text/plain;charset=utf-8\nmessage-id:<x@y>\ndate:Wed, 1 Mar 2023 09:00:00 +0000\n\nbody\n",
    );
    c.add(
        "header-continuation-first",
        "first header line starts with whitespace",
        " leading continuation\nSubject: after continuation\nFrom: f@x.test\n\nbody\n",
    );
    c.raw(
        "header-line-without-colon",
        "a header line without a colon",
        b"Subject: before\r\nThis line has no colon\r\nFrom: f@x.test\r\n\r\nbody\r\n".to_vec(),
    );
    c.raw(
        "header-space-before-colon",
        "space between field name and colon",
        b"Subject : spaced name\r\nFrom: f@x.test\r\nX-Custom : v\r\nCustom : v\r\n\r\nbody\r\n"
            .to_vec(),
    );
    c.add(
        "mbox-from-line",
        "mbox \"From \" line first",
        "From sender@x.test Wed Mar  1 09:00:00 2023\nFrom: f@x.test\nSubject: mbox line\n\nbody\n",
    );
    let refs: Vec<String> = (0..200).map(|i| format!("<{i}@x>")).collect();
    c.add(
        "header-long-lines",
        "References > 1024 bytes (cached), very long unfolded header",
        &format!(
            "Subject: long lines\nReferences: {}\nIn-Reply-To: {}\nX-Long: {}\nLong-Cached: {}\n\nbody\n",
            refs.join(" "),
            refs[..150].join(""),
            "y".repeat(3000),
            "z".repeat(1500)
        ),
    );
    c.add(
        "message-id-odd",
        "Message-ID and In-Reply-To with spaces, comments, specials",
        "Subject: ids\nMessage-ID: (comment) <a b@x> trailing\nIn-Reply-To: <one@x> (c) <two@x> \"q\"\n\nbody\n",
    );
}

/// Cases for the instance with `maxheaderlines: 10` and `boundary_limit: 3`.
fn limit_cases() -> Cases {
    let mut c = Cases::default();
    let mut s = String::from("Subject: limit nesting\n");
    for i in 0..6 {
        s.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
        ));
    }
    s.push_str("Content-Type: text/plain\n\ncore\n");
    for i in (0..6).rev() {
        s.push_str(&format!("--b{i}--\nepilogue {i}\n"));
    }
    c.add(
        "limits-deep-nesting",
        "six nested multiparts, boundary_limit 3",
        &s,
    );
    c.add(
        "limits-nesting-siblings",
        "three levels plus siblings at the limit",
        r#"Subject: siblings at the limit
Content-Type: multipart/mixed; boundary=A

--A
Content-Type: multipart/mixed; boundary=B

--B
Content-Type: multipart/mixed; boundary=C

--C
Content-Type: multipart/mixed; boundary=D

--D
Content-Type: text/plain

deepest
--D--
--C
Content-Type: text/plain

c2
--C--
--B
Content-Type: text/plain

b2
--B--
--A
Content-Type: message/rfc822

Subject: inner
Content-Type: multipart/mixed; boundary=E

--E

e1
--E--
--A--
"#,
    );
    c.add(
        "limits-header-lines",
        "fields at header lines 8..13 with maxheaderlines 10",
        "Comment: 1\nComment: 2\nComment: 3\nComment: 4\nComment: 5\nComment: 6\nComment: 7\nSubject: line 8\nFrom: line9@x.test\nTo: line10@x.test,\n folded11@x.test\nCc: line12@x.test\nContent-Type: text/html\n\nbody\n",
    );
    c.add(
        "limits-part-header-lines",
        "maxheaderlines on a part's header block",
        "Subject: part headers\nContent-Type: multipart/mixed; boundary=p\n\n--p\nComment: 1\nComment: 2\nComment: 3\nComment: 4\nComment: 5\nComment: 6\nComment: 7\nComment: 8\nComment: 9\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\nPGI+\n--p--\n",
    );
    c
}
