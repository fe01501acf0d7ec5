//! The ENVELOPE cache item (`message_write_envelope`, `message_write_address`;
//! docs: cyrus-mailbox-format.md §4.7).

use super::address::{parse_list, Address};
use super::{unstructured, write_nstring};

/// The raw values of the header fields the envelope is built from: for each field, the bytes
/// after the colon up to, not including, the field's final line end (`None` if absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeFields<'a> {
    pub date: Option<&'a [u8]>,
    pub subject: Option<&'a [u8]>,
    pub from: Option<&'a [u8]>,
    pub sender: Option<&'a [u8]>,
    pub reply_to: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    pub cc: Option<&'a [u8]>,
    pub bcc: Option<&'a [u8]>,
    pub in_reply_to: Option<&'a [u8]>,
    pub message_id: Option<&'a [u8]>,
}

/// The bytes of `raw` up to its first NUL: Cyrus holds header values as C strings.
pub(crate) fn c_str(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}

/// An unstructured field as `message_parse_string` stores it (NUL ends the value).
pub(crate) fn string_field(raw: Option<&[u8]>) -> Option<Vec<u8>> {
    raw.map(|r| unstructured(c_str(r)))
}

/// An address field as `message_parse_address` stores it; an empty list is "no header".
pub(crate) fn address_field(raw: Option<&[u8]>) -> Vec<Address> {
    raw.map(parse_list).unwrap_or_default()
}

/// `message_write_address`: `NIL` or `((name route mailbox domain)...)`.
fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        write_nstring(out, None);
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        write_nstring(out, a.name.as_deref());
        out.push(b' ');
        write_nstring(out, a.route.as_deref());
        out.push(b' ');
        write_nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        write_nstring(out, a.domain.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// Append the ENVELOPE text for these fields. Sender and Reply-To fall back to From when
/// they are absent or yield no address.
pub fn write_envelope(out: &mut Vec<u8>, f: &EnvelopeFields<'_>) {
    let from = address_field(f.from);
    let sender = address_field(f.sender);
    let reply_to = address_field(f.reply_to);
    out.push(b'(');
    write_nstring(out, string_field(f.date).as_deref());
    out.push(b' ');
    write_nstring(out, string_field(f.subject).as_deref());
    out.push(b' ');
    write_addresses(out, &from);
    out.push(b' ');
    write_addresses(out, if sender.is_empty() { &from } else { &sender });
    out.push(b' ');
    write_addresses(
        out,
        if reply_to.is_empty() {
            &from
        } else {
            &reply_to
        },
    );
    for list in [f.to, f.cc, f.bcc] {
        out.push(b' ');
        write_addresses(out, &address_field(list));
    }
    out.push(b' ');
    write_nstring(out, string_field(f.in_reply_to).as_deref());
    out.push(b' ');
    write_nstring(out, string_field(f.message_id).as_deref());
    out.push(b')');
}

/// Byte-identity tests against the cache entries real Cyrus 3.6.1 wrote for every message
/// of the store fixtures (items ENVELOPE, HEADERS, FROM..BCC, SUBJECT; sentdate, gmtime).
#[cfg(test)]
pub(crate) mod fixture_tests {
    use super::*;
    use crate::format::cache::CacheEntry;
    use crate::format::index::Index;
    use crate::mime::headers::{cached_headers, field_end};
    use crate::mime::search::{write_search_addrs, write_subject};
    use crate::mime::{
        ITEM_BCC, ITEM_CC, ITEM_ENVELOPE, ITEM_FROM, ITEM_HEADERS, ITEM_SUBJECT, ITEM_TO,
    };
    use std::path::{Path, PathBuf};

    /// One message with what Cyrus cached for it.
    pub struct Case {
        pub path: PathBuf,
        pub message: Vec<u8>,
        pub items: Vec<Vec<u8>>,
        pub sentdate: u64,
        pub gmtime: u64,
        pub internaldate: u64,
    }

    /// Every message file with a live index record and cache entry under `root`.
    pub fn cases(root: &Path) -> Vec<Case> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
        {
            if e.file_name() != "cyrus.index" {
                continue;
            }
            let dir = e.path().parent().unwrap();
            let index_buf = std::fs::read(e.path()).unwrap();
            let Ok(cache_buf) = std::fs::read(dir.join("cyrus.cache")) else {
                continue;
            };
            let index = Index::open(&index_buf).unwrap();
            for i in 0..index.num_records() {
                let r = index.record(i).unwrap();
                let path = dir.join(format!("{}.", r.uid));
                let Ok(message) = std::fs::read(&path) else {
                    continue;
                };
                if r.cache_offset == 0 || message.len() as u64 != r.size {
                    continue;
                }
                let entry = CacheEntry::parse(&cache_buf, r.cache_offset).unwrap();
                out.push(Case {
                    path,
                    message,
                    items: entry.items.iter().map(|i| i.to_vec()).collect(),
                    sentdate: r.sentdate,
                    gmtime: r.gmtime,
                    internaldate: r.internaldate,
                });
            }
        }
        out
    }

    /// The top-level header block as `message_parse_headers` slurps it.
    pub fn header_block(msg: &[u8]) -> &[u8] {
        let mut pos = 0;
        while pos < msg.len() {
            let end = msg[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(msg.len(), |p| pos + p + 1);
            let line = &msg[pos..end];
            pos = end;
            if line == b"\r\n" {
                break;
            }
        }
        &msg[..pos]
    }

    /// Raw value (after the colon, without the final line end) of the last field `name`.
    pub fn field<'a>(block: &'a [u8], name: &str, maxlines: usize) -> Option<&'a [u8]> {
        let block = &block[..block.iter().position(|&b| b == 0).unwrap_or(block.len())];
        let mut found = None;
        let mut start = 0;
        let mut k = 0;
        while start < block.len() && (maxlines == 0 || k <= maxlines) {
            k += 1;
            let line = &block[start..];
            let len = line.iter().position(|&b| matches!(b, b':' | b'\r' | b'\n'));
            if let Some(len) = len {
                if line[len] == b':' && line[..len].eq_ignore_ascii_case(name.as_bytes()) {
                    let v = start + len + 1;
                    found = Some(&block[v..field_end(block, v - 1).max(v)]);
                }
            }
            match line.iter().position(|&b| b == b'\n') {
                Some(p) => start += p + 1,
                None => break,
            }
        }
        found
    }

    pub fn fixture_cases() -> Vec<Case> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut all = cases(&root.join("legacy/spool"));
        all.extend(cases(&root.join("uuid/spool")));
        all
    }

    /// Compare our items with Cyrus's; returns the mismatches as text.
    pub fn check(c: &Case, utf8: bool, maxlines: usize) -> Vec<String> {
        let block = header_block(&c.message);
        let f = |n| field(block, n, maxlines);
        let fields = EnvelopeFields {
            date: f("date"),
            subject: f("subject"),
            from: f("from"),
            sender: f("sender"),
            reply_to: f("reply-to"),
            to: f("to"),
            cc: f("cc"),
            bcc: f("bcc"),
            in_reply_to: f("in-reply-to"),
            message_id: f("message-id"),
        };
        let mut env = Vec::new();
        write_envelope(&mut env, &fields);
        let ours = [
            (ITEM_ENVELOPE, env),
            (ITEM_HEADERS, cached_headers(block, maxlines)),
            (ITEM_FROM, write_search_addrs(fields.from, utf8)),
            (ITEM_TO, write_search_addrs(fields.to, utf8)),
            (ITEM_CC, write_search_addrs(fields.cc, utf8)),
            (ITEM_BCC, write_search_addrs(fields.bcc, utf8)),
            (ITEM_SUBJECT, write_subject(fields.subject, utf8)),
        ];
        let mut bad = Vec::new();
        for (i, ours) in ours {
            if ours != c.items[i] {
                bad.push(format!(
                    "{} item {i}:\n  ours:  {:?}\n  cyrus: {:?}",
                    c.path.display(),
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&c.items[i])
                ));
            }
        }
        let (sent, gm) = crate::mime::date::parse_date(fields.date);
        // Unparsable: Cyrus substitutes the internaldate (and its local midnight).
        // Record fields are 32 bits wide (v17): later dates are truncated.
        let ok = if gm == 0 {
            sent == 0 && c.gmtime == c.internaldate
        } else {
            (sent as u32, gm as u32) == (c.sentdate as u32, c.gmtime as u32)
        };
        if !ok {
            bad.push(format!(
                "{} date {:?}: ours ({sent}, {gm}), cyrus ({}, {}) internaldate {}",
                c.path.display(),
                fields.date.map(String::from_utf8_lossy),
                c.sentdate,
                c.gmtime,
                c.internaldate
            ));
        }
        bad
    }

    #[test]
    fn store_fixtures_match_cyrus() {
        let cases = fixture_cases();
        assert!(
            cases.len() > 20,
            "only {} fixture messages found",
            cases.len()
        );
        let bad: Vec<String> = crate::mime::date::tests::with_tz("UTC0", || {
            cases.iter().flat_map(|c| check(c, false, 1000)).collect()
        });
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    /// Hex or text item from a corpus json.
    fn item_bytes(v: &serde_json::Value) -> Vec<u8> {
        match v {
            serde_json::Value::String(s) => s.as_bytes().to_vec(),
            other => {
                let hex = other["hex"].as_str().unwrap();
                (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect()
            }
        }
    }

    /// Cases of fixtures/mime where our items are known to differ from Cyrus's (see the
    /// module docs of charset.rs / rfc2047.rs); the test fails if one of them starts passing.
    const CORPUS_KNOWN_DIFFERENCES: &[&str] = &[];

    #[test]
    fn mime_corpus_matches_cyrus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mime");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        let mut bad = Vec::new();
        let mut failing_cases = Vec::new();
        crate::mime::date::tests::with_tz("UTC0", || {
            for json_path in &names {
                let j: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(json_path).unwrap()).unwrap();
                let name = j["case"].as_str().unwrap().to_string();
                let message = std::fs::read(json_path.with_extension("eml")).unwrap();
                let order = [
                    "ENVELOPE",
                    "BODYSTRUCTURE",
                    "BODY",
                    "SECTION",
                    "HEADERS",
                    "FROM",
                    "TO",
                    "CC",
                    "BCC",
                    "SUBJECT",
                ];
                let case = Case {
                    path: json_path.clone(),
                    message,
                    items: order.iter().map(|k| item_bytes(&j["items"][k])).collect(),
                    sentdate: j["record"]["sentdate"].as_u64().unwrap(),
                    gmtime: j["record"]["gmtime"].as_u64().unwrap(),
                    internaldate: j["record"]["internaldate"].as_u64().unwrap(),
                };
                let utf8 = j["options"]["rfc2047_utf8"].as_bool().unwrap();
                let maxlines = j["options"]["maxheaderlines"].as_u64().unwrap() as usize;
                let problems = check(&case, utf8, maxlines);
                if !problems.is_empty() {
                    failing_cases.push(name.clone());
                    if !CORPUS_KNOWN_DIFFERENCES.contains(&name.as_str()) {
                        bad.extend(problems);
                    }
                }
            }
        });
        assert!(names.len() > 100, "corpus has {} cases", names.len());
        let fixed: Vec<_> = CORPUS_KNOWN_DIFFERENCES
            .iter()
            .filter(|n| !failing_cases.iter().any(|f| f == *n))
            .collect();
        assert!(
            fixed.is_empty(),
            "now matching, remove from the allow-list: {fixed:?}"
        );
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}
