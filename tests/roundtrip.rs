//! Parse → write → byte-identical, for every metadata file of the real-Cyrus 3.6.1 fixtures
//! (`fixtures/legacy`, `fixtures/uuid`, `fixtures/index-versions`). No Cyrus needed.
//!
//! Every file of those trees is classified (index, header, cache, cyrusdb, quotalegacy, message
//! file, or one of the few known non-Cyrus files such as `expected/*`); a file nobody claims
//! fails the walk, and every kind's count is compared with what the fixture says it holds
//! (`expected/ctl_mboxlist-d.json`, `expected/quota-J.json`, `expected/imap.json`), so the walk
//! can never silently check nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use cyrkit::format::cache::{self, CacheEntry, NUM_CACHE_FIELDS};
use cyrkit::format::cyrusdb::{detect, Backend};
use cyrkit::format::index::{self, Index, IndexRecord};
use cyrkit::format::mboxlist::{self, MboxEntry, MboxKey};
use cyrkit::format::{header, quota, skiplist, twoskip};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

const TREES: [&str; 3] = ["legacy", "uuid", "index-versions"];
const STORES: [&str; 2] = ["legacy", "uuid"];

/// What a fixture file is, by its name and place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Index,
    Header,
    Cache,
    /// A cyrusdb file (twoskip or skiplist): per-mailbox `cyrus.annotations` and the
    /// databases of the config directory.
    Db,
    QuotaLegacy,
    Message,
    /// Files of the fixture itself (`imapd.conf`, `expected/*`, `mbexamine.txt`).
    FixtureMeta,
}

fn classify(rel: &Path) -> Option<Kind> {
    let name = rel.file_name()?.to_str()?;
    let s = rel.to_str()?;
    let in_conf = s.contains("/conf/");
    Some(match name {
        "cyrus.index" => Kind::Index,
        "cyrus.header" => Kind::Header,
        "cyrus.cache" => Kind::Cache,
        "cyrus.annotations" => Kind::Db,
        "imapd.conf" | "mbexamine.txt" => Kind::FixtureMeta,
        _ if s.contains("/expected/") => Kind::FixtureMeta,
        _ if in_conf && s.contains("/conf/quota/") => Kind::QuotaLegacy,
        _ if in_conf
            && (name.ends_with(".db")
                || name.ends_with(".seen")
                || name.ends_with(".conversations")) =>
        {
            Kind::Db
        }
        _ if !in_conf
            && cyrkit::spool::paths::parse_message_file_name(name.as_bytes()).is_some() =>
        {
            Kind::Message
        }
        _ => return None,
    })
}

/// Every file of the three trees, by kind (paths relative to `fixtures/`). Panics on a file
/// no kind claims.
fn walk() -> BTreeMap<Kind, Vec<PathBuf>> {
    let root = fixtures();
    let mut out: BTreeMap<Kind, Vec<PathBuf>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for tree in TREES {
        let dir = root.join(tree);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        for e in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let e = e.unwrap();
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e.path().strip_prefix(&root).unwrap().to_path_buf();
            match classify(&rel) {
                Some(k) => out.entry(k).or_default().push(rel),
                None => unknown.push(rel),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "fixture files of no known kind: {unknown:?}"
    );
    out
}

fn files(kind: Kind) -> Vec<PathBuf> {
    walk().remove(&kind).unwrap_or_default()
}

fn read(rel: &Path) -> Vec<u8> {
    fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read(Path::new(rel))).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Number of mailboxes `ctl_mboxlist -d` listed that exist on disk: every entry (the
/// `DELETED.*` ones included) but the tombstones (type letter `d`).
fn mailbox_count(store: &str) -> usize {
    json(&format!("{store}/expected/ctl_mboxlist-d.json"))
        .as_object()
        .unwrap()
        .values()
        .filter(|m| !m["mbtype"].as_str().unwrap().contains('d'))
        .count()
}

/// Mailbox directories the fixture holds: one per mailbox of each store, one per version of
/// `index-versions`.
fn expected_mailbox_dirs() -> usize {
    let versions = fs::read_dir(fixtures().join("index-versions"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(versions, 6, "index-versions holds v12..v17");
    STORES.iter().map(|s| mailbox_count(s)).sum::<usize>() + versions
}

fn records(idx: &Index<'_>) -> Vec<IndexRecord> {
    idx.records().map(|r| r.unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// cyrus.index

/// Every index re-serialises byte-identically, record by record and as a whole, and verifies
/// clean.
#[test]
fn every_index_round_trips() {
    let paths = files(Kind::Index);
    assert_eq!(paths.len(), expected_mailbox_dirs(), "{paths:?}");
    let mut versions = BTreeSet::new();
    let mut nrecords = 0;
    for rel in &paths {
        let buf = read(rel);
        let name = rel.display();
        let idx = Index::open(&buf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = idx.version();
        versions.insert(v);
        assert_eq!(idx.records_present(), idx.num_records(), "{name}");
        let problems = idx.verify::<Vec<u8>>(&Default::default());
        assert!(problems.is_empty(), "{name}: {problems:?}");
        assert_eq!(
            index::write_header(idx.header(), v).unwrap(),
            idx.header_bytes(),
            "{name}: header"
        );
        let recs = records(&idx);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(
                index::write_record(r, v).unwrap(),
                idx.record_bytes(i as u32).unwrap(),
                "{name}: record {i} (uid {})",
                r.uid
            );
        }
        assert_eq!(
            index::write_index(idx.header(), &recs, v).unwrap(),
            buf,
            "{name}: whole file"
        );
        nrecords += recs.len();
    }
    assert_eq!(
        versions,
        (12..=17).collect::<BTreeSet<u32>>(),
        "every 3.6 index version is represented"
    );
    // The legacy fixture's README: 54 index records; more in uuid and index-versions.
    assert!(nrecords > 54, "{nrecords} records");
}

/// Every message Cyrus served over IMAP when the fixture was made is a live record of its
/// mailbox's index with the same uid and size (ties the walk to `expected/imap.json`).
#[test]
fn index_records_cover_every_message_imap_served() {
    for store in STORES {
        let dbs = json(&format!("{store}/expected/ctl_mboxlist-d.json"));
        let imap = json(&format!("{store}/expected/imap.json"));
        let by_id: BTreeMap<String, &serde_json::Value> = dbs
            .as_object()
            .unwrap()
            .values()
            .map(|m| (m["uniqueid"].as_str().unwrap().to_string(), m))
            .collect();
        // uniqueid -> index path, from the headers.
        let mut index_of = BTreeMap::new();
        for rel in files(Kind::Header).iter().filter(|p| p.starts_with(store)) {
            let h = header::parse(&read(rel)).unwrap();
            let id = String::from_utf8(h.uniqueid.unwrap()).unwrap();
            index_of.insert(id, rel.with_file_name("cyrus.index"));
        }
        assert_eq!(
            index_of.len(),
            by_id.len(),
            "{store}: one header per mailbox"
        );
        let mut checked = 0;
        for mb in imap["mailboxes"].as_array().unwrap() {
            let Some(msgs) = mb["messages"].as_array() else {
                continue;
            };
            let id = mb["mailboxid"].as_str().unwrap();
            let rel = index_of
                .get(id)
                .unwrap_or_else(|| panic!("{store}: no cyrus.header for mailbox id {id}"));
            let buf = fs::read(fixtures().join(rel)).unwrap();
            let idx = Index::open(&buf).unwrap();
            assert_eq!(
                Some(u64::from(idx.header().uidvalidity)),
                mb["uidvalidity"].as_u64(),
                "{}",
                rel.display()
            );
            let live: BTreeMap<u64, u64> = records(&idx)
                .iter()
                .filter(|r| !r.is_expunged())
                .map(|r| (u64::from(r.uid), r.size))
                .collect();
            let served: BTreeMap<u64, u64> = msgs
                .iter()
                .map(|m| (m["uid"].as_u64().unwrap(), m["size"].as_u64().unwrap()))
                .collect();
            assert_eq!(live, served, "{}", rel.display());
            checked += served.len();
        }
        assert!(checked > 10, "{store}: {checked} messages");
    }
}

/// `reconstruct -V` wrote v12..v16 from v17; converting each of them up to v17 and back
/// reproduces the real file exactly.
#[test]
fn index_versions_convert_up_to_v17_and_back_identically() {
    let mut converted = 0;
    for v in 12..=16u32 {
        let rel = PathBuf::from(format!("index-versions/v{v}/cyrus.index"));
        let buf = read(&rel);
        let idx = Index::open(&buf).unwrap();
        assert_eq!(idx.version(), v);
        let up_h = index::convert_header(idx.header(), 17).unwrap();
        let up_r: Vec<IndexRecord> = records(&idx)
            .iter()
            .map(|r| index::convert_record(r, v, 17).unwrap())
            .collect();
        // The v17 file must itself be a valid index.
        let v17 = index::write_index(&up_h, &up_r, 17).unwrap();
        let reopened = Index::open(&v17).unwrap();
        assert_eq!(reopened.version(), 17);
        let down_h = index::convert_header(reopened.header(), v).unwrap();
        let down_r: Vec<IndexRecord> = records(&reopened)
            .iter()
            .map(|r| index::convert_record(r, 17, v).unwrap())
            .collect();
        let back = index::write_index(&down_h, &down_r, v).unwrap();
        assert_eq!(back.len(), buf.len(), "v{v}: length");
        if let Some(at) = back.iter().zip(&buf).position(|(a, b)| a != b) {
            panic!("v{v} -> v17 -> v{v}: first difference at byte {at}");
        }
        converted += 1;
    }
    assert_eq!(converted, 5);
}

// ---------------------------------------------------------------------------------------------
// cyrus.header

#[test]
fn every_header_round_trips() {
    let paths = files(Kind::Header);
    assert_eq!(paths.len(), expected_mailbox_dirs(), "{paths:?}");
    for rel in &paths {
        let buf = read(rel);
        let h = header::parse(&buf).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        assert_eq!(h.format, header::HeaderFormat::Dlist, "{}", rel.display());
        assert!(h.trailing.is_empty(), "{}", rel.display());
        assert_eq!(h.write().unwrap(), buf, "{}", rel.display());
    }
}

// ---------------------------------------------------------------------------------------------
// cyrus.cache

/// Every cache entry a record references re-serialises from its ten items to the bytes at its
/// offset (and its CRC is the record's `cache_crc`), and the whole file is its generation
/// number followed by its entries, end to end.
#[test]
fn every_cache_round_trips() {
    let paths = files(Kind::Cache);
    assert_eq!(paths.len(), expected_mailbox_dirs(), "{paths:?}");
    let mut referenced = 0;
    for rel in &paths {
        let name = rel.display();
        let buf = read(rel);
        let ibuf = read(&rel.with_file_name("cyrus.index"));
        let idx = Index::open(&ibuf).unwrap();
        let gen = cache::generation(&buf).unwrap();
        assert_eq!(gen, idx.header().generation_no, "{name}: generation");

        let mut whole = gen.to_be_bytes().to_vec();
        let mut offsets = BTreeSet::new();
        for e in cache::entries(&buf) {
            let e = e.unwrap_or_else(|err| panic!("{name}: {err}"));
            let items: [&[u8]; NUM_CACHE_FIELDS] = e.items;
            let rewritten = cache::write_entry(&items).unwrap();
            // The last entry's final padding may be absent at the end of the file.
            assert!(
                rewritten.starts_with(e.raw),
                "{name}: entry at {}",
                e.offset
            );
            whole.extend_from_slice(e.raw);
            offsets.insert(e.offset);
        }
        assert_eq!(whole, buf, "{name}: generation + entries");

        for r in records(&idx) {
            if r.cache_offset == 0 {
                assert!(r.is_unlinked(), "{name}: uid {} has no cache entry", r.uid);
                continue;
            }
            let e = cache::check_record_entry(&buf, r.cache_offset, r.cache_crc)
                .unwrap_or_else(|err| panic!("{name}: uid {}: {err}", r.uid));
            assert!(offsets.contains(&r.cache_offset), "{name}: uid {}", r.uid);
            let at = usize::try_from(r.cache_offset).unwrap();
            let rewritten = cache::write_entry(&e.items).unwrap();
            assert_eq!(
                Some(rewritten.as_slice()),
                buf.get(at..at + rewritten.len()),
                "{name}: uid {} entry",
                r.uid
            );
            assert_eq!(
                CacheEntry::parse(&rewritten, 0).err(),
                Some(cache::CacheError::OffsetOutOfRange {
                    offset: 0,
                    len: rewritten.len()
                }),
                "an entry alone is not a cache file"
            );
            referenced += 1;
        }
    }
    assert!(referenced > 54, "{referenced} referenced entries");
}

// ---------------------------------------------------------------------------------------------
// cyrusdb files (twoskip, skiplist)

/// The raw layer of every database file re-serialises byte-identically.
#[test]
fn every_cyrusdb_file_round_trips_raw() {
    let paths = files(Kind::Db);
    let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for rel in &paths {
        let buf = read(rel);
        let name = rel.display();
        let backend = detect(&buf).unwrap_or_else(|| panic!("{name}: not a cyrusdb file"));
        let again = match backend {
            Backend::Twoskip => {
                let raw = twoskip::parse_raw(&buf).unwrap();
                assert!(raw.trailing.is_empty(), "{name}: trailing bytes");
                raw.to_bytes()
            }
            Backend::Skiplist => {
                let raw = skiplist::parse_raw(&buf).unwrap();
                assert!(raw.trailing.is_empty(), "{name}: trailing bytes");
                raw.to_bytes()
            }
            Backend::Flat => panic!("{name}: no flat database in these fixtures"),
        };
        assert_eq!(again, buf, "{name}");
        *by_backend.entry(backend.name()).or_default() += 1;
    }
    // One cyrus.annotations per mailbox directory of the stores, plus the config databases.
    let annotations = paths
        .iter()
        .filter(|p| p.ends_with("cyrus.annotations"))
        .count();
    let stores: usize = STORES.iter().map(|s| mailbox_count(s)).sum();
    assert_eq!(annotations, stores);
    for must in [
        "legacy/conf/mailboxes.db",
        "legacy/conf/annotations.db",
        "legacy/conf/deliver.db",
        "legacy/conf/user/a/alice.seen",
        "uuid/conf/mailboxes.db",
        "uuid/conf/quotas.db",
        "uuid/conf/annotations.db",
        "uuid/conf/deliver.db",
    ] {
        assert!(
            paths.iter().any(|p| p == Path::new(must)),
            "{must} not checked"
        );
    }
    // The uuid store keeps mailboxes.db in skiplist; everything else is twoskip.
    assert!(
        by_backend.get("skiplist").copied().unwrap_or(0) >= 1,
        "{by_backend:?}"
    );
    assert_eq!(
        by_backend.values().sum::<usize>(),
        paths.len(),
        "{by_backend:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// quotalegacy

#[test]
fn every_quotalegacy_file_round_trips() {
    let paths = files(Kind::QuotaLegacy);
    let roots = json("legacy/expected/quota-J.json");
    let roots = roots.as_object().unwrap();
    assert_eq!(paths.len(), roots.len(), "{paths:?}");
    for rel in &paths {
        let buf = read(rel);
        let q = quota::parse_legacy_file(&buf).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        assert_eq!(quota::write_legacy_file(&q), buf, "{}", rel.display());
        let root = rel.file_name().unwrap().to_str().unwrap();
        let want = &roots[root];
        assert_eq!(
            Some(q.get(quota::Resource::Storage).used),
            want["STORAGE"]["used"].as_u64(),
            "{root}"
        );
        assert_eq!(
            Some(q.get(quota::Resource::Message).used),
            want["MESSAGE"]["used"].as_u64(),
            "{root}"
        );
    }
}

/// quotas.db values (uuid store, twoskip) re-serialise identically too.
#[test]
fn every_quotas_db_value_round_trips() {
    let buf = read(Path::new("uuid/conf/quotas.db"));
    let db = twoskip::TwoskipDb::open(&buf).unwrap();
    let roots = json("uuid/expected/quota-J.json");
    let mut n = 0;
    for kv in db.iter() {
        let (k, v) = kv.unwrap();
        let q = quota::parse_value(v).unwrap();
        assert_eq!(quota::write_value(&q), v, "{}", String::from_utf8_lossy(k));
        n += 1;
    }
    assert_eq!(n, roots.as_object().unwrap().len());
}

// ---------------------------------------------------------------------------------------------
// mailboxes.db values

fn db_pairs(buf: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    cyrkit::spool::db::read_pairs(buf, detect(buf).unwrap()).unwrap()
}

/// Every N- and I-record value of both stores' mailboxes.db goes value → MboxEntry → value
/// unchanged, and its key decodes and re-encodes unchanged.
#[test]
fn every_mailboxes_db_record_round_trips() {
    for store in STORES {
        let buf = read(Path::new(&format!("{store}/conf/mailboxes.db")));
        let (mut names, mut ids, mut tombstones) = (0, 0, 0);
        for (k, v) in db_pairs(&buf) {
            let key = MboxKey::decode(&k).unwrap();
            assert_eq!(key.encode(), k);
            let d = mboxlist::parse_dlist_value(&v).unwrap();
            let e = MboxEntry::from_v36_dlist(&d).unwrap();
            let out = match key {
                MboxKey::Name(_) => {
                    if e.is_tombstone() {
                        tombstones += 1;
                    } else {
                        names += 1;
                    }
                    e.to_v36_name_dlist()
                }
                MboxKey::Id(_) => {
                    ids += 1;
                    e.to_v36_id_dlist()
                }
                other => panic!("{store}: unexpected key {other:?}"),
            };
            assert_eq!(
                String::from_utf8_lossy(&mboxlist::write_dlist_value(&out)),
                String::from_utf8_lossy(&v),
                "{store}: {}",
                String::from_utf8_lossy(&k)
            );
        }
        let n = mailbox_count(store);
        assert_eq!(names, n, "{store}: N-records of live mailboxes");
        assert_eq!(ids, n, "{store}: I-records");
        assert_eq!(
            tombstones, 1,
            "{store}: the deleted Trash leaves one tombstone"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The walk itself

/// How many files of each kind the walk hands to the tests above, against what the fixture
/// says it holds; and every message file is the file of a record of its mailbox's index
/// (records expunged but not unlinked keep theirs), and every such record has its file.
#[test]
fn the_walk_counts_every_kind_the_fixture_holds() {
    let all = walk();
    let count = |k: Kind| all.get(&k).map_or(0, Vec::len);
    let dirs = expected_mailbox_dirs();
    assert_eq!(count(Kind::Index), dirs);
    assert_eq!(count(Kind::Header), dirs);
    assert_eq!(count(Kind::Cache), dirs);
    let stores: usize = STORES.iter().map(|s| mailbox_count(s)).sum();
    let conf_dbs = all[&Kind::Db]
        .iter()
        .filter(|p| !p.ends_with("cyrus.annotations"))
        .count();
    assert_eq!(count(Kind::Db), stores + conf_dbs);
    // legacy: mailboxes, annotations, deliver, 2 seen, 3 conversations;
    // uuid: mailboxes, annotations, deliver, quotas, cyrus.seen, 6 conversations, 1 seen.
    assert_eq!(conf_dbs, 8 + 12, "{:?}", all[&Kind::Db]);
    assert_eq!(
        count(Kind::QuotaLegacy),
        json("legacy/expected/quota-J.json")
            .as_object()
            .unwrap()
            .len()
    );
    // imapd.conf + 7 expected/* per store, mbexamine.txt per index version.
    assert_eq!(count(Kind::FixtureMeta), 2 * 8 + 6);

    let mut files_by_dir: BTreeMap<PathBuf, BTreeSet<u32>> = BTreeMap::new();
    for rel in &all[&Kind::Message] {
        let uid = cyrkit::spool::paths::parse_message_file_name(
            rel.file_name().unwrap().to_str().unwrap().as_bytes(),
        )
        .unwrap();
        files_by_dir
            .entry(rel.parent().unwrap().to_path_buf())
            .or_default()
            .insert(uid);
    }
    let mut messages = 0;
    for rel in &all[&Kind::Index] {
        let dir = rel.parent().unwrap().to_path_buf();
        // index-versions keeps message files only for v17.
        if dir.starts_with("index-versions") && !dir.ends_with("v17") {
            continue;
        }
        let buf = read(rel);
        let idx = Index::open(&buf).unwrap();
        let want: BTreeSet<u32> = records(&idx)
            .iter()
            .filter(|r| !r.is_unlinked())
            .map(|r| r.uid)
            .collect();
        let got = files_by_dir.remove(&dir).unwrap_or_default();
        assert_eq!(got, want, "{}", dir.display());
        messages += got.len();
    }
    assert!(
        files_by_dir.is_empty(),
        "message files outside mailboxes: {files_by_dir:?}"
    );
    assert_eq!(messages, count(Kind::Message));
}
