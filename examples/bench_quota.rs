//! Generates a legacy-layout store for `scripts/bench-quota`, written by cyrkit's own
//! writers: a twoskip `mailboxes.db`, and per mailbox a `cyrus.header` naming its quota root,
//! a `cyrus.index` with R records (valid record CRCs, counts, sync CRCs and quota usage
//! derived from the records) and a `cyrus.cache` holding only its generation number. Ten
//! mailboxes per user (INBOX and nine folders); each user's INBOX is a quota root whose
//! quotalegacy file holds wrong usage. No message files are written: Cyrus's `quota -f`
//! (imap/quota.c `fixquota_dombox`) only opens each mailbox's header and index, and neither
//! it nor `cyrkit quota -f` reads messages or the cache. The true usage of each root is
//! written to `OUTDIR/expected.json` in Cyrus's `quota -J` shape (usage only).
//!
//! Usage: `cargo run --release --example bench_quota -- OUTDIR [MAILBOXES] [RECORDS] [MSGDIR]`
//! (default 1,000 mailboxes x 100 records).
//!
//! With MSGDIR (a directory of message files `1.` .. `N.`, N >= MAILBOXES x RECORDS, as
//! `bench_reconstruct` writes them), every mailbox gets RECORDS real messages instead:
//! mailbox k's `1.` .. `R.` are hard links to MSGDIR's `kR+1.` .. `(k+1)R.` (no extra disk),
//! and its `cyrus.index` has no records, so a reconstruct adds every file and builds the
//! index and cache (`scripts/bench` does that with cyrkit). `expected.json` is not written
//! then (the usage is only known after that reconstruct).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cyrkit::format::header::{Acl, AclEntry, HeaderFormat, MailboxHeader, MbType};
use cyrkit::format::index::{self, IndexHeader, IndexRecord, FLAG_FLAGGED, FLAG_SEEN};
use cyrkit::format::mboxlist::{MboxEntry, MboxKey};
use cyrkit::format::quota::{self, QuotaRecord, Resource};
use cyrkit::format::{cache, cyrusdb::Backend, dlist, twoskip};
use cyrkit::spool::config::Config;
use cyrkit::spool::names::{MboxName, NameConfig};
use cyrkit::spool::paths::{Layout, MailboxDir, MetaFile};

type Error = Box<dyn std::error::Error>;

/// Mailboxes per user: INBOX and nine folders.
const PER_USER: usize = 10;
/// Every mailbox's creation time, uidvalidity base and message dates.
const EPOCH: u64 = 1_700_000_000;
/// The users' STORAGE limit, KiB.
const STORAGE_LIMIT: u64 = 10_000_000;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: bench_quota OUTDIR [MAILBOXES] [RECORDS]")?,
    );
    let mut num = |default: usize| -> Result<usize, Error> {
        Ok(args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let mailboxes = num(1_000)?;
    let records = num(100)?;
    let msgdir: Option<PathBuf> = args.next().map(PathBuf::from);
    std::fs::create_dir_all(out.join("conf"))?;
    std::fs::create_dir_all(out.join("spool"))?;
    let out = out.canonicalize()?;
    let conf = out.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\npartition-default: {d}/spool\n\
             defaultpartition: default\nmailbox_legacy_dirs: yes\nhashimapspool: yes\n\
             fulldirhash: no\nunixhierarchysep: no\naltnamespace: no\nvirtdomains: off\n\
             mboxlist_db: twoskip\nquota_db: quotalegacy\n",
            d = out.display()
        ),
    )?;
    let config = Config::load(&conf)?;
    let layout = Layout::from_config(&config)?;
    let nc = NameConfig::from_config(&config)?;

    let mut pairs = Vec::with_capacity(2 * mailboxes);
    let mut expected: BTreeMap<String, [u64; 2]> = BTreeMap::new();
    for i in 0..mailboxes {
        let user = format!("u{:05}", i / PER_USER);
        let root = format!("user.{user}");
        let internal = match i % PER_USER {
            0 => root.clone(),
            f => format!("{root}.Folder {f}"),
        };
        let name = MboxName::from_internal(internal.as_bytes(), &nc)?;
        let uniqueid = format!("bench{i:019}").into_bytes();
        let acl = Acl {
            entries: vec![AclEntry {
                identifier: user.clone().into_bytes(),
                rights: b"lrswipkxtecdan".to_vec(),
            }],
        };
        let dir = layout.meta_dir("default", MailboxDir::Legacy(&name), MetaFile::Header)?;
        let usage = match &msgdir {
            Some(src) => {
                write_mailbox(&dir, &internal, &root, &uniqueid, &acl, i, 0)?;
                link_messages(src, &dir, i * records, records)?;
                0
            }
            None => write_mailbox(&dir, &internal, &root, &uniqueid, &acl, i, records)?,
        };
        let e = expected.entry(root.clone()).or_default();
        e[0] += usage;
        e[1] += records as u64;

        let entry = MboxEntry {
            mbtype: MbType::EMAIL_LEGACY,
            uniqueid: Some(uniqueid.clone()),
            dbname: Some(name.to_dbname()),
            partition: Some(b"default".to_vec()),
            uidvalidity: uidvalidity(i),
            createdmodseq: 1,
            foldermodseq: 1,
            mtime: Some(EPOCH),
            acl: Some(acl),
            name_history: Some(Vec::new()),
            ..MboxEntry::default()
        };
        pairs.push((
            MboxKey::Name(name.to_dbname()).encode(),
            dlist::write(&entry.to_v36_name_dlist()),
        ));
        pairs.push((
            MboxKey::Id(uniqueid).encode(),
            dlist::write(&entry.to_v36_id_dlist()),
        ));

        if i % PER_USER == 0 {
            // The root, with usage that is wrong (Cyrus's quota -f and ours must fix it).
            let mut q = QuotaRecord::new();
            q.get_mut(Resource::Storage).used = 1;
            q.get_mut(Resource::Storage).limit = Some(STORAGE_LIMIT);
            q.get_mut(Resource::Message).used = 1;
            q.get_mut(Resource::NumFolders).used = 1;
            q.modseq = Some(1);
            let path = layout.quotalegacy_file(root.as_bytes())?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, quota::write_legacy_file(&q))?;
        }
    }
    let order = Backend::Twoskip.default_order();
    pairs.sort_by(|a, b| order.compare(&a.0, &b.0));
    let db = twoskip::write_fresh(
        &pairs,
        &twoskip::FreshOptions {
            order,
            ..Default::default()
        },
    )?;
    std::fs::write(out.join("conf/mailboxes.db"), db)?;

    // Cyrus's `quota -J` shape, usage only.
    let json: serde_json::Map<String, serde_json::Value> = expected
        .iter()
        .map(|(root, [storage, messages])| {
            (
                root.clone(),
                serde_json::json!({
                    "STORAGE": {"used": storage},
                    "MESSAGE": {"used": messages},
                    "X-ANNOTATION-STORAGE": {"used": 0},
                    "X-NUM-FOLDERS": {"used": PER_USER.min(mailboxes)},
                }),
            )
        })
        .collect();
    if msgdir.is_none() {
        std::fs::write(out.join("expected.json"), serde_json::to_vec_pretty(&json)?)?;
    }
    eprintln!(
        "{mailboxes} mailboxes x {records} records, {} quota roots, under {}",
        expected.len(),
        out.display()
    );
    Ok(())
}

/// Hard-links `src/{first+1}.` .. `src/{first+n}.` as `dir/1.` .. `dir/n.`.
fn link_messages(src: &Path, dir: &Path, first: usize, n: usize) -> Result<(), Error> {
    for uid in 1..=n {
        let from = src.join(format!("{}.", first + uid));
        std::fs::hard_link(&from, dir.join(format!("{uid}.")))
            .map_err(|e| format!("linking {}: {e}", from.display()))?;
    }
    Ok(())
}

fn uidvalidity(i: usize) -> u32 {
    (EPOCH as u32).wrapping_add(i as u32)
}

/// Writes one mailbox's header, index and cache; returns its STORAGE usage in bytes.
fn write_mailbox(
    dir: &Path,
    internal: &str,
    root: &str,
    uniqueid: &[u8],
    acl: &Acl,
    i: usize,
    records: usize,
) -> Result<u64, Error> {
    std::fs::create_dir_all(dir)?;
    let header = MailboxHeader {
        format: HeaderFormat::Dlist,
        mbtype: MbType::EMAIL_LEGACY,
        name: Some(internal.as_bytes().to_vec()),
        uniqueid: Some(uniqueid.to_vec()),
        quotaroot: Some(root.as_bytes().to_vec()),
        acl: Some(acl.clone()),
        user_flags: Vec::new(),
        trailing: Vec::new(),
    };
    let hbytes = header.write()?;
    let version = index::DEFAULT_VERSION;
    let recs: Vec<IndexRecord> = (1..=records as u32)
        .map(|uid| {
            let size = 200 + u64::from((uid * 7919 + i as u32 * 104_729) % 3800);
            let date = EPOCH + u64::from(uid) * 60;
            let mut flags = 0;
            if uid % 3 != 0 {
                flags |= FLAG_SEEN;
            }
            if uid % 10 == 0 {
                flags |= FLAG_FLAGGED;
            }
            IndexRecord {
                uid,
                internaldate: date,
                sentdate: date - date % 86_400,
                gmtime: date,
                last_updated: date,
                savedate: date,
                size,
                header_size: 120,
                system_flags: flags,
                cache_version: cache::CACHE_VERSION_36,
                guid: index::guid_of(format!("{internal} {uid}").as_bytes()),
                modseq: u64::from(uid),
                createdmodseq: u64::from(uid),
                ..IndexRecord::default()
            }
        })
        .collect();
    let derived = index::derive(&recs, version, &[] as &[Option<Vec<u8>>], None);
    let mut ih = IndexHeader {
        uidvalidity: uidvalidity(i),
        last_uid: derived.max_uid,
        last_appenddate: EPOCH + records as u64 * 60,
        highestmodseq: derived.max_modseq.max(1),
        createdmodseq: 1,
        changes_epoch: EPOCH,
        recentuid: derived.max_uid,
        recenttime: EPOCH,
        header_file_crc: cyrkit::format::header::header_file_crc(&hbytes),
        ..IndexHeader::default()
    };
    ih.apply_derived(&derived, version);
    let ibytes = index::write_index(&ih, &recs, version)?;
    std::fs::write(dir.join("cyrus.header"), hbytes)?;
    std::fs::write(dir.join("cyrus.index"), ibytes)?;
    // Generation 0 (the index's generation_no), no entries.
    std::fs::write(dir.join("cyrus.cache"), [0u8; cache::CACHE_HEADER_SIZE])?;
    Ok(derived.quota_mailbox_used)
}
