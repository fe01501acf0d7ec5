//! Byte-identity of the MIME parser with real Cyrus 3.6.1: for every live record of every
//! fixture mailbox (fixtures/legacy, fixtures/uuid), parse the message file and compare each
//! of the ten cache items Cyrus wrote, plus size, header_size, GUID, sentdate and gmtime of
//! the record. (The MIME corpus, fixtures/mime, has its own test: tests/mime_corpus.rs.)
//!
//! Cases that are known to differ are listed in [`KNOWN_DIFFERENCES`] with the reason; such
//! an entry must still differ (the test fails when it starts to match, so the list shrinks).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

use cyrkit::format::cache::CacheEntry;
use cyrkit::format::index::Index;
use cyrkit::mime::message::parse_message;
use cyrkit::mime::{ParseOptions, NUM_ITEMS};

use cyrkit::format::cache::CACHE_ITEM_NAMES as ITEM_NAMES;

/// `(case, what)`: a case (spool path relative to fixtures/) and the item
/// or record field of it that is known to differ from Cyrus, with why.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[];

/// What Cyrus stored for one message.
struct Case {
    /// `legacy/spool/...` or `uuid/spool/...`.
    name: String,
    path: PathBuf,
    opts: ParseOptions,
    items: Vec<Vec<u8>>,
    size: u64,
    header_size: u32,
    guid: [u8; 20],
    sentdate: u64,
    gmtime: u64,
    internaldate: u64,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn set_tz() {
    static ONCE: Once = Once::new();
    // the fixtures were made with TZ=UTC, and sentdate is a local midnight
    ONCE.call_once(|| std::env::set_var("TZ", "UTC"));
}

/// Every record of every mailbox under `fixtures/<tree>/spool` whose message file is there.
fn spool_cases(tree: &str) -> Vec<Case> {
    let root = fixtures().join(tree).join("spool");
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let e = e.expect("walk fixtures");
        if e.file_name() != "cyrus.index" {
            continue;
        }
        let dir = e.path().parent().expect("index in a directory");
        let index_buf = std::fs::read(e.path()).expect("read cyrus.index");
        let cache_buf = std::fs::read(dir.join("cyrus.cache")).expect("read cyrus.cache");
        let index = Index::open(&index_buf).expect("fixture index opens");
        for i in 0..index.num_records() {
            let r = index.record(i).expect("fixture record");
            if r.is_unlinked() {
                continue;
            }
            // message files sit beside cyrus.header (no metapartitions in the fixtures)
            let path = dir.join(format!("{}.", r.uid));
            assert!(
                path.exists(),
                "{} missing for a live record",
                path.display()
            );
            assert_eq!(r.cache_version, 11, "{}: cache version", path.display());
            let entry = CacheEntry::parse(&cache_buf, r.cache_offset).expect("cache entry");
            out.push(Case {
                name: path
                    .strip_prefix(fixtures())
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
                path,
                opts: ParseOptions::default(),
                items: entry.items.iter().map(|i| i.to_vec()).collect(),
                size: r.size,
                header_size: r.header_size,
                guid: r.guid,
                sentdate: r.sentdate,
                gmtime: r.gmtime,
                internaldate: r.internaldate,
            });
        }
    }
    out
}

/// A readable account of how `ours` differs from `cyrus`.
fn diff(ours: &[u8], cyrus: &[u8]) -> String {
    let at = ours
        .iter()
        .zip(cyrus)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(cyrus.len()));
    let from = at.saturating_sub(40);
    let show = |s: &[u8]| {
        let end = (at + 60).min(s.len());
        format!("{:?}", String::from_utf8_lossy(&s[from.min(end)..end]))
    };
    format!(
        "lengths ours {} cyrus {}, first difference at byte {at}\n      ours:  …{}\n      cyrus: …{}",
        ours.len(),
        cyrus.len(),
        show(ours),
        show(cyrus)
    )
}

/// Local (UTC) midnight of `t`, the sentdate Cyrus falls back to.
fn midnight(t: u64) -> u64 {
    t - t % 86400
}

/// Compare one case; returns `(what, explanation)` for each mismatch.
fn check(c: &Case) -> Vec<(String, String)> {
    let data = std::fs::read(&c.path).expect("read message");
    let mut bad = Vec::new();
    let p = match parse_message(&data, &c.opts) {
        Ok(p) => p,
        Err(e) => return vec![("parse".into(), e.to_string())],
    };
    for (i, name) in ITEM_NAMES.iter().enumerate() {
        if p.items[i] != c.items[i] {
            bad.push((name.to_string(), diff(&p.items[i], &c.items[i])));
        }
    }
    let mut field = |what: &str, ours: u64, cyrus: u64| {
        if ours != cyrus {
            bad.push((what.to_string(), format!("ours {ours} cyrus {cyrus}")));
        }
    };
    field("size", p.size, c.size);
    field(
        "header_size",
        u64::from(p.header_size),
        u64::from(c.header_size),
    );
    // message_parse gives 0 for no/unparsable dates; the append path then uses the
    // internaldate (gmtime) and its local midnight (sentdate)
    let gm = if p.gmtime == 0 {
        c.internaldate
    } else {
        p.gmtime
    };
    let sent = if p.sentdate == 0 {
        midnight(c.internaldate)
    } else {
        p.sentdate
    };
    field("gmtime", gm, c.gmtime);
    field("sentdate", sent, c.sentdate);
    if p.guid != c.guid {
        bad.push(("guid".into(), "message GUID differs".into()));
    }
    bad
}

fn run(cases: &[Case]) {
    set_tz();
    assert!(!cases.is_empty());
    let known: BTreeSet<(&str, &str)> = KNOWN_DIFFERENCES.iter().map(|&(c, w, _)| (c, w)).collect();
    let mut unexpected = Vec::new();
    let mut seen_known = BTreeSet::new();
    let mut items_ok = 0usize;
    for c in cases {
        let bad = check(c);
        items_ok += NUM_ITEMS
            - bad
                .iter()
                .filter(|(w, _)| ITEM_NAMES.contains(&w.as_str()))
                .count();
        for (what, why) in bad {
            if known.contains(&(c.name.as_str(), what.as_str())) {
                seen_known.insert((c.name.clone(), what));
            } else {
                unexpected.push(format!("{} {what}: {why}", c.name));
            }
        }
    }
    let now_passing: Vec<String> = KNOWN_DIFFERENCES
        .iter()
        .filter(|(c, _, _)| cases.iter().any(|k| k.name == *c))
        .filter(|(c, w, _)| !seen_known.contains(&(c.to_string(), w.to_string())))
        .map(|(c, w, _)| format!("{c} {w}"))
        .collect();
    eprintln!(
        "{} cases, {items_ok}/{} items byte-identical, {} unexpected differences, {} known",
        cases.len(),
        cases.len() * NUM_ITEMS,
        unexpected.len(),
        seen_known.len()
    );
    assert!(
        unexpected.is_empty(),
        "{} differences from Cyrus:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(
        now_passing.is_empty(),
        "known differences that now match Cyrus (remove them from KNOWN_DIFFERENCES):\n{}",
        now_passing.join("\n")
    );
}

#[test]
fn spool_fixtures_match_cyrus() {
    let mut cases = spool_cases("legacy");
    cases.extend(spool_cases("uuid"));
    assert!(cases.len() > 20, "only {} fixture messages", cases.len());
    run(&cases);
}
