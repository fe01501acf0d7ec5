//! Byte-identity of the MIME parser against real Cyrus: for every case in `fixtures/mime/`
//! (made by `scripts/make-mime-corpus` with Cyrus 3.6.1, TZ=UTC; see its README.md),
//! `parse_message` on `<case>.eml` must give exactly the ten cache items and the record fields
//! Cyrus wrote (`<case>.json`). Failures are collected over the whole corpus and reported per
//! case and item with the first difference shown.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use cyrkit::format::cache::CACHE_ITEM_NAMES as ITEM_NAMES;
use cyrkit::mime::message::parse_message;
use cyrkit::mime::ParseOptions;
use serde_json::Value;

/// The corpus must not shrink unnoticed (the generator writes 143 cases).
const MIN_CASES: usize = 60;
/// Failing cases printed in full; the rest are only named.
const MAX_REPORTED: usize = 25;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mime")
}

/// Case names (json stems), sorted.
fn case_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(corpus_dir())
        .expect("fixtures/mime exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// An item as stored in the json: a string (UTF-8 bytes) or `{"hex": ...}`.
fn item_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) => unhex(o["hex"].as_str().expect("hex is a string")),
        other => panic!("bad item value {other}"),
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("record.{key} missing"))
}

/// Bytes shown readably: UTF-8 text as is, CR/LF/backslash/controls and invalid bytes escaped.
fn show(mut b: &[u8]) -> String {
    let mut s = String::new();
    while !b.is_empty() {
        let (valid, bad) = match std::str::from_utf8(b) {
            Ok(text) => (text, 0),
            Err(e) => {
                let text = std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default();
                (text, e.error_len().unwrap_or(b.len() - e.valid_up_to()))
            }
        };
        for c in valid.chars() {
            match c {
                '\r' => s.push_str("\\r"),
                '\n' => s.push_str("\\n"),
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        let rest = &b[valid.len()..];
        for x in &rest[..bad] {
            let _ = write!(s, "\\x{x:02x}");
        }
        b = &rest[bad..];
    }
    s
}

/// Where two byte strings first differ, with context; SECTION in 4-byte words.
fn diff(name: &str, want: &[u8], got: &[u8]) -> String {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let mut out = format!(
        "  {name}: lengths want {} got {}, first difference at byte {at}\n",
        want.len(),
        got.len()
    );
    if name == "SECTION" {
        let words = |b: &[u8]| -> String {
            b.chunks(4)
                .enumerate()
                .map(|(i, w)| {
                    let mark = if i * 4 <= at && at < i * 4 + 4 {
                        ">"
                    } else {
                        ""
                    };
                    format!(
                        "{mark}{}",
                        w.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(out, "    want: {}\n    got:  {}", words(want), words(got));
    } else {
        let from = at.saturating_sub(60);
        let ctx = |b: &[u8]| {
            let (start, end) = (from.min(b.len()), (at + 60).min(b.len()));
            let pre = if start > 0 { "…" } else { "" };
            let post = if end < b.len() { "…" } else { "" };
            format!("{pre}{}{post}", show(&b[start..end]))
        };
        let _ = writeln!(out, "    want: {}\n    got:  {}", ctx(want), ctx(got));
        if want.len() + got.len() < 600 {
            let _ = writeln!(
                out,
                "    want full: {}\n    got full:  {}",
                show(want),
                show(got)
            );
        }
    }
    out
}

/// Checks one case; returns the differences (empty when it matches).
fn check_case(name: &str) -> String {
    let dir = corpus_dir();
    let doc: Value =
        serde_json::from_slice(&fs::read(dir.join(format!("{name}.json"))).expect("read json"))
            .expect("valid json");
    let eml = fs::read(dir.join(format!("{name}.eml"))).expect("every json has its .eml");
    let o = &doc["options"];
    let opts = ParseOptions {
        rfc2047_utf8: o["rfc2047_utf8"].as_bool().expect("options.rfc2047_utf8"),
        maxheaderlines: o["maxheaderlines"].as_u64().expect("maxheaderlines") as usize,
        boundary_limit: o["boundary_limit"].as_u64().expect("boundary_limit") as usize,
    };
    let parsed = match parse_message(&eml, &opts) {
        Ok(p) => p,
        Err(e) => return format!("  parse_message failed: {e:?}\n"),
    };
    let rec = &doc["record"];
    let mut out = String::new();
    for (i, item) in ITEM_NAMES.iter().enumerate() {
        let want = item_bytes(&doc["items"][*item]);
        let got = &parsed.items[i];
        if &want != got {
            out.push_str(&diff(item, &want, got));
        }
    }
    // Cyrus replaces a 0 from message_parse by the internaldate (gmtime) and its local
    // midnight (sentdate) in mailbox_append_index_record; the corpus was made with TZ=UTC.
    let internaldate = num(rec, "internaldate");
    let gmtime = match parsed.gmtime {
        0 => internaldate,
        t => t,
    };
    let sentdate = match parsed.sentdate {
        0 => internaldate - internaldate % 86_400,
        t => t,
    };
    let fields = [
        ("size", num(rec, "size"), parsed.size),
        (
            "header_size",
            num(rec, "header_size"),
            u64::from(parsed.header_size),
        ),
        ("gmtime", num(rec, "gmtime"), gmtime),
        ("sentdate", num(rec, "sentdate"), sentdate),
    ];
    for (field, want, got) in fields {
        if want != got {
            let _ = writeln!(out, "  record.{field}: want {want} got {got}");
        }
    }
    let guid: String = parsed.guid.iter().map(|b| format!("{b:02x}")).collect();
    if rec["guid"].as_str() != Some(guid.as_str()) {
        let _ = writeln!(out, "  record.guid: want {} got {guid}", rec["guid"]);
    }
    out
}

#[test]
fn corpus_is_complete() {
    let names = case_names();
    assert!(
        names.len() >= MIN_CASES,
        "fixtures/mime holds {} cases, expected at least {MIN_CASES}",
        names.len()
    );
    let dir = corpus_dir();
    for name in &names {
        assert!(
            dir.join(format!("{name}.eml")).is_file(),
            "{name}.eml missing"
        );
        let doc: Value =
            serde_json::from_slice(&fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(
            doc["case"].as_str(),
            Some(name.as_str()),
            "{name}: case name"
        );
        assert_eq!(doc["tz"].as_str(), Some("UTC"), "{name}: made with TZ=UTC");
        assert_eq!(doc["record"]["cache_version"].as_u64(), Some(11), "{name}");
        for item in ITEM_NAMES {
            assert!(!doc["items"][item].is_null(), "{name}: item {item} missing");
        }
        let eml = fs::read(dir.join(format!("{name}.eml"))).unwrap();
        assert_eq!(
            doc["record"]["size"].as_u64(),
            Some(eml.len() as u64),
            "{name}: size"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with("-rfc2047-utf8")),
        "the rfc2047_utf8 twins are part of the corpus"
    );
}

#[test]
fn parser_matches_cyrus_on_every_case() {
    // sentdate is the Date's local midnight: the corpus was made with TZ=UTC.
    std::env::set_var("TZ", "UTC");
    let names = case_names();
    assert!(
        names.len() >= MIN_CASES,
        "corpus has only {} cases",
        names.len()
    );
    let mut failed = Vec::new();
    let mut report = String::new();
    for name in &names {
        let d = check_case(name);
        if !d.is_empty() {
            if failed.len() < MAX_REPORTED {
                let _ = write!(report, "case {name}:\n{d}");
            }
            failed.push(name.as_str());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} corpus cases differ from Cyrus:\n{report}\nall failing: {}",
        failed.len(),
        names.len(),
        failed.join(" ")
    );
}
