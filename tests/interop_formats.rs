//! cyrkit's codecs against a running Cyrus 3.6, in both directions.
//!
//! * Written by Cyrus, read by cyrkit: a fresh instance (legacy layout; uuid layout with
//!   `virtdomains: userid`) is populated over IMAP and LMTP; then every mailbox as the library
//!   reads it from the spool (`Config::load` of the instance's imapd.conf, `Mboxlist::load`,
//!   `Layout`, `format::header`/`format::index`) must agree with what Cyrus reports over IMAP
//!   (EXAMINE, STATUS, FETCH, GETACL, GETQUOTAROOT), with `ctl_mboxlist -d`, `quota -J` and
//!   `mbexamine`.
//! * Written by cyrkit, read by Cyrus: on a stopped instance the library changes a record's
//!   flags, rewrites indexes at older minor versions, rewrites mailboxes.db (twoskip and
//!   skiplist) and quota files; Cyrus's tools and imapd must accept the result, and every
//!   written file keeps its owner and mode.
//!
//! Skips without Cyrus or root unless `CYRKIT_REQUIRE_CYRUS=1`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cyrkit::format::header::{self, Acl, MailboxHeader};
use cyrkit::format::index::{self, Index, IndexHeader, IndexRecord};
use cyrkit::format::{quota, skiplist, twoskip};
use cyrkit::spool::config::Config;
use cyrkit::spool::mboxlist::{MboxRecord, Mboxlist};
use cyrkit::spool::names::{MboxName, NameConfig};
use cyrkit::spool::paths::{Layout, MailboxDir, MetaFile};
use cyrkit::spool::{atomic, db};
use serde_json::Value;
use support::cyrus::{
    crlf, cyrus_ids, require_cyrus, CyrusInstance, CyrusOptions, FetchedMessage, ImapClient, Token,
};

const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Scenarios

/// What to do to a fresh instance. Mailbox names are the admin's (external) names; logins
/// name a user (`cyrus` is the admin), mailboxes after a login are that user's view.
struct Scenario {
    opts: CyrusOptions,
    sep: char,
    create: &'static [&'static str],
    /// Mailboxes the admin appends to (gets full rights on).
    admin_appends: &'static [&'static str],
    acls: &'static [(&'static str, &'static str, &'static str)],
    quotas: &'static [(&'static str, &'static [(&'static str, u64)])],
    deliveries: &'static [&'static [&'static str]],
    appends: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// (login, mailbox, sequence set, flags) for `+FLAGS`.
    stores: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    )],
    expunges: &'static [(&'static str, &'static str)],
    deletes: &'static [(&'static str, &'static str)],
}

fn legacy_scenario() -> Scenario {
    Scenario {
        opts: CyrusOptions::default(),
        sep: '.',
        create: &[
            "user.alice",
            "user.alice.Sent",
            "user.alice.Sub",
            "user.alice.Sub.Deep",
            "user.alice.Trash",
            "user.bob",
            "user.bob.Archive",
            "user.carol",
            "shared",
            "shared.proj",
        ],
        admin_appends: &["shared", "shared.proj"],
        acls: &[
            ("user.alice.Sent", "bob", "lrs"),
            ("shared", "anyone", "lr"),
            ("shared.proj", "anyone", "lrs"),
            ("shared.proj", "alice", "lrswipkxtecd"),
            ("shared.proj", "bob", "lrswi"),
        ],
        quotas: &[
            ("user.alice", &[("STORAGE", 10000), ("MESSAGE", 500)]),
            ("user.alice.Sub", &[("STORAGE", 2000)]),
            ("user.bob", &[("MESSAGE", 100)]),
            ("shared.proj", &[("STORAGE", 1000), ("MESSAGE", 50)]),
        ],
        deliveries: &[
            &["alice", "bob", "carol"],
            &["alice", "bob", "carol"],
            &["alice"],
            &["alice"],
            &["bob", "carol"],
        ],
        appends: &[
            ("alice", "INBOX.Sent", &["\\Seen", "$Forwarded"]),
            ("alice", "INBOX.Sub.Deep", &["\\Flagged", "project-x"]),
            ("alice", "INBOX.Sub", &["\\Draft"]),
            ("alice", "INBOX.Trash", &["\\Seen"]),
            (
                "bob",
                "INBOX.Archive",
                &["\\Seen", "\\Answered", "Junk", "$Label1"],
            ),
            ("bob", "INBOX.Archive", &[]),
            ("cyrus", "shared.proj", &["\\Seen", "NonJunk"]),
            ("cyrus", "shared", &[]),
        ],
        stores: &[
            ("alice", "INBOX", "1", &["\\Seen", "\\Answered", "$Label2"]),
            ("alice", "INBOX", "2", &["\\Deleted"]),
            ("bob", "INBOX", "1", &["\\Deleted"]),
        ],
        expunges: &[("bob", "INBOX")],
        deletes: &[("alice", "INBOX.Trash")],
    }
}

fn uuid_scenario() -> Scenario {
    Scenario {
        opts: CyrusOptions {
            legacy_dirs: false,
            fulldirhash: true,
            unixhierarchysep: true,
            virtdomains: "userid".into(),
            defaultdomain: Some("example.net".into()),
            mboxlist_db: "skiplist".into(),
            quota_db: "twoskip".into(),
            ..CyrusOptions::default()
        },
        sep: '/',
        create: &[
            "user/dave",
            "user/dave/Sent",
            "user/dave/Trash",
            "user/john.doe",
            "user/alice@example.com",
            "user/alice/Archive@example.com",
            "user/carol@example.org",
            "shared",
            "shared/sub",
            "shared@example.org",
        ],
        admin_appends: &["shared", "shared/sub", "shared@example.org"],
        acls: &[
            ("shared", "anyone", "lrs"),
            ("shared/sub", "john.doe", "lrswi"),
            ("shared@example.org", "carol@example.org", "lrswipkxtecd"),
            ("user/alice/Archive@example.com", "bob@example.com", "lr"),
        ],
        quotas: &[
            ("user/john.doe", &[("STORAGE", 1000), ("MESSAGE", 100)]),
            ("user/dave", &[("MESSAGE", 50)]),
            ("user/alice@example.com", &[("STORAGE", 2000)]),
            (
                "user/carol@example.org",
                &[("STORAGE", 3000), ("MESSAGE", 10)],
            ),
        ],
        deliveries: &[
            &["john.doe", "dave", "alice@example.com", "carol@example.org"],
            &["dave", "john.doe"],
            &["alice@example.com"],
            &["john.doe"],
        ],
        appends: &[
            ("john.doe", "INBOX", &["\\Seen", "$Forwarded"]),
            ("dave", "INBOX/Sent", &["\\Seen"]),
            ("dave", "INBOX/Trash", &["\\Seen"]),
            (
                "alice@example.com",
                "INBOX/Archive",
                &["\\Seen", "project-x"],
            ),
            ("carol@example.org", "INBOX", &["\\Flagged", "\\Draft"]),
            ("cyrus", "shared", &[]),
            ("cyrus", "shared/sub", &["\\Seen", "Junk"]),
            ("cyrus", "shared@example.org", &["\\Answered"]),
        ],
        stores: &[
            ("john.doe", "INBOX", "1", &["\\Flagged", "$Label1"]),
            ("john.doe", "INBOX", "2", &["\\Deleted"]),
        ],
        expunges: &[("john.doe", "INBOX")],
        deletes: &[("dave", "INBOX/Trash")],
    }
}

fn message(n: usize, to: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: sender{n}@example.org\nTo: {to}\nSubject: interop message {n}\n\
             Date: Mon, 1 May 2023 12:{:02}:00 +0000\nMessage-ID: <interop{n}@example.org>\n\
             MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n\
             body of message {n}\n{}",
            n % 60,
            "filler line\n".repeat(n * 7 % 40)
        )
        .as_bytes(),
    )
}

fn populate(cy: &CyrusInstance, s: &Scenario) {
    let mut a = cy.imap_admin().unwrap();
    for mb in s.create {
        a.create(mb).unwrap();
    }
    for mb in s.admin_appends {
        a.setacl(mb, "cyrus", "lrswipkxtecda").unwrap();
    }
    for (mb, who, rights) in s.acls {
        a.setacl(mb, who, rights).unwrap();
    }
    for (root, limits) in s.quotas {
        a.setquota(root, limits).unwrap();
    }
    a.logout().unwrap();
    let mut n = 0;
    for rcpts in s.deliveries {
        n += 1;
        let mut l = cy.lmtp().unwrap();
        let replies = l
            .deliver("sender@example.org", rcpts, &message(n, &rcpts.join(", ")))
            .unwrap();
        l.quit().unwrap();
        assert!(
            replies.len() == rcpts.len() && replies.iter().all(|r| r.is_positive()),
            "LMTP to {rcpts:?}: {replies:?}"
        );
    }
    for (login, mb, flags) in s.appends {
        n += 1;
        let mut c = cy.imap_login(login).unwrap();
        c.append(
            mb,
            flags,
            Some("02-May-2023 10:11:12 +0200"),
            &message(n, login),
        )
        .unwrap();
        c.logout().unwrap();
    }
    for (login, mb, set, flags) in s.stores {
        let mut c = cy.imap_login(login).unwrap();
        c.select(mb).unwrap();
        c.store(set, "+FLAGS", flags).unwrap();
        c.logout().unwrap();
    }
    for (login, mb) in s.expunges {
        let mut c = cy.imap_login(login).unwrap();
        c.select(mb).unwrap();
        c.expunge().unwrap();
        c.logout().unwrap();
    }
    for (login, mb) in s.deletes {
        let mut c = cy.imap_login(login).unwrap();
        c.delete(mb).unwrap();
        c.logout().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The spool as the library reads it

struct Spool {
    config: Config,
    nc: NameConfig,
    layout: Layout,
    mboxlist: Mboxlist,
}

/// One mailbox as cyrkit reads it from the spool.
struct Mailbox {
    rec: MboxRecord,
    header: MailboxHeader,
    index_path: PathBuf,
    index: IndexHeader,
    records: Vec<IndexRecord>,
}

impl Spool {
    fn load(cy: &CyrusInstance) -> Spool {
        let config = Config::load(&cy.conf_path()).unwrap();
        let nc = NameConfig::from_config(&config).unwrap();
        let layout = Layout::from_config(&config).unwrap();
        let mboxlist = Mboxlist::load(&config, &nc, LOCK_TIMEOUT).unwrap();
        assert!(mboxlist.problems.is_empty(), "{:?}", mboxlist.problems);
        Spool {
            config,
            nc,
            layout,
            mboxlist,
        }
    }

    fn external(&self, name: &MboxName) -> String {
        String::from_utf8(name.to_external(&self.nc).unwrap()).unwrap()
    }

    fn meta_path(&self, rec: &MboxRecord, file: MetaFile) -> PathBuf {
        let part = String::from_utf8(rec.entry.partition.clone().unwrap()).unwrap();
        let id = rec
            .entry
            .uniqueid
            .as_deref()
            .map(|u| std::str::from_utf8(u).unwrap());
        let dir = if rec.entry.legacy_dirs() {
            MailboxDir::Legacy(&rec.name)
        } else {
            MailboxDir::Uuid(id.unwrap())
        };
        self.layout.meta_file(&part, dir, file, false).unwrap()
    }

    fn mailbox(&self, rec: &MboxRecord) -> Mailbox {
        let hbuf = std::fs::read(self.meta_path(rec, MetaFile::Header)).unwrap();
        let header = header::parse(&hbuf).unwrap();
        let index_path = self.meta_path(rec, MetaFile::Index);
        let ibuf = std::fs::read(&index_path).unwrap();
        let idx = Index::open(&ibuf).unwrap();
        let problems = idx.verify(&index::VerifyContext {
            flag_names: Some(&header.user_flags),
            annot_crcs: None,
        });
        assert!(problems.is_empty(), "{}: {problems:?}", rec.name);
        let records = idx.records().map(|r| r.unwrap()).collect();
        Mailbox {
            rec: rec.clone(),
            index: idx.header().clone(),
            header,
            index_path,
            records,
        }
    }

    fn mailboxes(&self) -> Vec<Mailbox> {
        self.mboxlist.live().map(|r| self.mailbox(r)).collect()
    }

    fn find(&self, external: &str) -> Mailbox {
        let name = MboxName::from_external(external.as_bytes(), &self.nc).unwrap();
        let rec = self
            .mboxlist
            .live()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{external} is not in mailboxes.db"));
        self.mailbox(rec)
    }

    /// Who can EXAMINE the mailbox, under which name: the owner (`INBOX...`) for user
    /// mailboxes, the owner with the admin name for delayed-delete ones (STATUS only), the admin
    /// for shared ones.
    fn view(&self, name: &MboxName, sep: char) -> (String, String) {
        let ext = self.external(name);
        match (name.userid(), name.deleted()) {
            (Some(u), Some(_)) => (String::from_utf8(u).unwrap(), ext),
            (Some(u), None) => {
                let mut view = "INBOX".to_string();
                for b in name.boxes() {
                    view.push(sep);
                    let b = String::from_utf8(b.clone()).unwrap();
                    view.push_str(&if sep == '.' { b.replace('.', "^") } else { b });
                }
                (String::from_utf8(u).unwrap(), view)
            }
            (None, _) => ("cyrus".to_string(), ext),
        }
    }
}

fn acl_map(acl: &Acl) -> BTreeMap<String, String> {
    acl.entries
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.identifier).into_owned(),
                String::from_utf8_lossy(&e.rights).into_owned(),
            )
        })
        .collect()
}

const SYSTEM_FLAGS: [(u32, &str); 5] = [
    (index::FLAG_ANSWERED, "\\Answered"),
    (index::FLAG_FLAGGED, "\\Flagged"),
    (index::FLAG_DELETED, "\\Deleted"),
    (index::FLAG_DRAFT, "\\Draft"),
    (index::FLAG_SEEN, "\\Seen"),
];

/// The flags of a record as IMAP spells them, sorted (user flag names from cyrus.header).
fn record_flags(r: &IndexRecord, h: &MailboxHeader) -> Vec<String> {
    let mut out: Vec<String> = SYSTEM_FLAGS
        .iter()
        .filter(|(bit, _)| r.system_flags & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    for (i, name) in h.user_flags.iter().enumerate() {
        if r.has_user_flag(i) {
            let name = name.as_ref().expect("a set user flag has a name");
            out.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    out.sort();
    out
}

/// Seconds since the epoch of an IMAP date-time (`01-May-2023 12:00:00 +0200`).
fn imap_date_secs(s: &str) -> i64 {
    let s = s.trim();
    let (date, rest) = s.split_once(' ').unwrap();
    let (time, zone) = rest.split_once(' ').unwrap();
    let d: Vec<&str> = date.trim().split('-').collect();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let day: i64 = d[0].trim().parse().unwrap();
    let month = months.iter().position(|m| *m == d[1]).unwrap() as i64 + 1;
    let year: i64 = d[2].parse().unwrap();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let z: i64 = zone[1..].parse().unwrap();
    let offset = sign * ((z / 100) * 3600 + (z % 100) * 60);
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2] - offset
}

#[test]
fn imap_dates_convert_to_epoch_seconds() {
    assert_eq!(imap_date_secs("01-Jan-1970 00:00:00 +0000"), 0);
    assert_eq!(imap_date_secs("02-May-2023 10:11:12 +0200"), 1_683_015_072);
    assert_eq!(imap_date_secs(" 2-May-2023 08:11:12 +0000"), 1_683_015_072);
    assert_eq!(imap_date_secs("29-Feb-2024 23:59:59 -0130"), 1_709_256_599);
}

fn run_ok(cy: &CyrusInstance, tool: &str, args: &[&str]) -> String {
    let o = cy.run_tool(tool, args).unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

fn tool_json(cy: &CyrusInstance, tool: &str, args: &[&str]) -> Value {
    let o = cy.run_tool(tool, args).unwrap();
    assert!(o.status.success(), "{tool} {args:?}: {}", o.status);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{tool} {args:?}: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `(uid, guid hex, system flag names)` of every record `mbexamine` prints.
fn mbexamine_records(out: &str) -> Vec<(u32, String, String)> {
    let mut recs: Vec<(u32, String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line
            .split("UID:")
            .nth(1)
            .filter(|_| line.contains("> UID:"))
        {
            let uid = rest.split_whitespace().next().unwrap().parse().unwrap();
            recs.push((uid, String::new(), String::new()));
        }
        if let (Some(g), Some(last)) = (line.split("GUID:").nth(1), recs.last_mut()) {
            last.1 = g.split_whitespace().next().unwrap().to_string();
        }
        if let (Some(f), Some(last)) = (line.split("> SYSTEMFLAGS:").nth(1), recs.last_mut()) {
            last.2 = f.trim().to_string();
        }
    }
    recs
}

// ---------------------------------------------------------------------------------------------
// Written by Cyrus, read by cyrkit

/// Every mailbox: header/index vs EXAMINE, STATUS, FETCH, GETACL, GETQUOTAROOT.
fn compare_over_imap(cy: &CyrusInstance, spool: &Spool, sep: char) -> usize {
    let mut admin = cy.imap_admin().unwrap();
    let mut messages = 0;
    let boxes = spool.mailboxes();
    for mb in &boxes {
        let name = &mb.rec.name;
        let ext = spool.external(name);
        let h = &mb.index;
        let uniqueid = mb.rec.entry.uniqueid.clone().unwrap();
        assert_eq!(mb.header.uniqueid.as_ref(), Some(&uniqueid), "{ext}");
        assert_eq!(
            mb.header.acl, mb.rec.entry.acl,
            "{ext}: header vs mailboxes.db ACL"
        );
        assert_eq!(h.uidvalidity, mb.rec.entry.uidvalidity, "{ext}");

        let (login, view) = spool.view(name, sep);
        let mut c = cy.imap_login(&login).unwrap();
        let st = c.status(&view).unwrap();
        assert_eq!(st.messages, u64::from(h.exists), "{ext}: STATUS MESSAGES");
        assert_eq!(st.uidnext, u64::from(h.last_uid) + 1, "{ext}: UIDNEXT");
        assert_eq!(
            st.uidvalidity,
            u64::from(h.uidvalidity),
            "{ext}: UIDVALIDITY"
        );
        assert_eq!(st.highestmodseq, h.highestmodseq, "{ext}: HIGHESTMODSEQ");
        if name.deleted().is_none() {
            let ex = c.examine_status(&view).unwrap();
            assert_eq!(ex.messages, u64::from(h.exists), "{ext}: EXISTS");
            assert_eq!(ex.uidnext, st.uidnext, "{ext}");
            assert_eq!(ex.highestmodseq, st.highestmodseq, "{ext}");
            assert_eq!(
                ex.mailboxid.as_bytes(),
                uniqueid.as_slice(),
                "{ext}: MAILBOXID"
            );
            let got = c.fetch_summary().unwrap();
            let live: Vec<&IndexRecord> = mb.records.iter().filter(|r| !r.is_expunged()).collect();
            assert_eq!(got.len(), live.len(), "{ext}: FETCH 1:*");
            // \Seen of a mailbox nobody owns lives in the reader's seen db, not the index.
            let owner_reads = name.userid().is_some();
            for (g, r) in got.iter().zip(&live) {
                assert_eq!(g.uid, u64::from(r.uid), "{ext}");
                assert_eq!(g.size, r.size, "{ext} uid {}", r.uid);
                assert_eq!(
                    imap_date_secs(&g.internaldate),
                    index::time_secs(r.internaldate, 17) as i64,
                    "{ext} uid {}: INTERNALDATE {}",
                    r.uid,
                    g.internaldate
                );
                let keep = |f: &&String| *f != "\\Recent" && (owner_reads || *f != "\\Seen");
                let imap: Vec<&String> = g.flags.iter().filter(keep).collect();
                let ours = record_flags(r, &mb.header);
                let ours: Vec<&String> = ours.iter().filter(keep).collect();
                assert_eq!(imap, ours, "{ext} uid {}: FLAGS", r.uid);
                messages += 1;
            }
        }
        c.logout().unwrap();

        if name.deleted().is_some() {
            continue; // the admin sees no ACL or quota root of a delayed-delete mailbox
        }
        let r = admin
            .ok(&format!("GETACL {}", support::cyrus::quote(&ext)))
            .unwrap();
        let mut imap_acl = BTreeMap::new();
        for toks in r.tokens() {
            if toks.get(1) == Some(&Token::Atom("ACL".into())) {
                for pair in toks[3..].chunks(2) {
                    imap_acl.insert(pair[0].text().unwrap(), pair[1].text().unwrap());
                }
            }
        }
        assert_eq!(
            imap_acl,
            acl_map(mb.header.acl.as_ref().unwrap()),
            "{ext}: GETACL"
        );
        compare_quotaroot(&mut admin, spool, mb, &boxes, &ext);
    }
    admin.logout().unwrap();
    messages
}

/// GETQUOTAROOT: the root is the header's, the usage the stored one (and the sum of the
/// index headers of the mailboxes under it), the limits the stored ones.
fn compare_quotaroot(
    admin: &mut ImapClient,
    spool: &Spool,
    mb: &Mailbox,
    boxes: &[Mailbox],
    ext: &str,
) {
    let r = admin.getquotaroot(ext).unwrap();
    let mut roots = Vec::new();
    let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for toks in r.tokens() {
        match toks.get(1) {
            Some(Token::Atom(a)) if a == "QUOTAROOT" => {
                roots.extend(toks[3..].iter().filter_map(Token::text));
            }
            Some(Token::Atom(a)) if a == "QUOTA" => {
                if let Some(Token::List(items)) = toks.get(3) {
                    for t in items.chunks(3) {
                        let n = |i: usize| t[i].text().unwrap().parse::<u64>().unwrap();
                        usage.insert(t[0].text().unwrap(), (n(1), n(2)));
                    }
                }
            }
            _ => {}
        }
    }
    let Some(root) = &mb.header.quotaroot else {
        assert!(roots.is_empty(), "{ext}: Cyrus names quota roots {roots:?}");
        return;
    };
    let root_name = MboxName::from_internal(root, &spool.nc).unwrap();
    assert_eq!(roots, vec![spool.external(&root_name)], "{ext}: QUOTAROOT");
    let stored =
        cyrkit::spool::quota::load_roots(&spool.config, &spool.layout, LOCK_TIMEOUT).unwrap();
    let q = stored[root].record.as_ref().unwrap();
    for res in quota::Resource::ALL {
        let rq = q.get(res);
        let Some(limit) = rq.limit else {
            assert!(
                !usage.contains_key(res.imap_name()),
                "{ext}: {}",
                res.imap_name()
            );
            continue;
        };
        let used = if res == quota::Resource::Storage {
            rq.used / 1024
        } else {
            rq.used
        };
        assert_eq!(
            usage.get(res.imap_name()),
            Some(&(used, limit)),
            "{ext}: QUOTA {}",
            res.imap_name()
        );
    }
    // The usage is what the index headers of the mailboxes under this root add up to.
    let under: Vec<&Mailbox> = boxes
        .iter()
        .filter(|b| b.rec.name.deleted().is_none() && b.header.quotaroot.as_ref() == Some(root))
        .collect();
    let bytes: u64 = under.iter().map(|b| b.index.quota_mailbox_used).sum();
    let count: u64 = under.iter().map(|b| u64::from(b.index.exists)).sum();
    assert_eq!(
        q.get(quota::Resource::Storage).used,
        bytes,
        "{ext}: STORAGE"
    );
    assert_eq!(
        q.get(quota::Resource::Message).used,
        count,
        "{ext}: MESSAGE"
    );
    assert_eq!(
        q.get(quota::Resource::NumFolders).used,
        under.len() as u64,
        "{ext}: X-NUM-FOLDERS"
    );
}

/// `ctl_mboxlist -d` against spool::mboxlist: the same names, ids, partitions, uidvalidities,
/// types and ACLs.
fn compare_ctl_mboxlist(cy: &CyrusInstance, spool: &Spool) {
    let dump = tool_json(cy, "ctl_mboxlist", &["-d"]);
    let dump = dump.as_object().unwrap();
    let ours: BTreeMap<String, &MboxRecord> = spool
        .mboxlist
        .mailboxes
        .iter()
        .map(|m| (String::from_utf8(m.name.to_internal()).unwrap(), m))
        .collect();
    assert_eq!(
        dump.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "ctl_mboxlist -d names"
    );
    for (name, m) in &ours {
        let d = &dump[name.as_str()];
        let e = &m.entry;
        let text =
            |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            d["uniqueid"].as_str().map(String::from),
            text(&e.uniqueid),
            "{name}"
        );
        assert_eq!(
            d["partition"].as_str().map(String::from),
            text(&e.partition),
            "{name}"
        );
        assert_eq!(
            d["uidvalidity"].as_str(),
            Some(e.uidvalidity.to_string().as_str()),
            "{name}"
        );
        let sorted = |s: &[u8]| s.iter().copied().collect::<BTreeSet<u8>>();
        assert_eq!(
            sorted(d["mbtype"].as_str().unwrap().as_bytes()),
            sorted(&e.mbtype.to_string_bytes()),
            "{name}: mbtype"
        );
        let acl: BTreeMap<String, String> = d["acl"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            acl,
            e.acl.as_ref().map(acl_map).unwrap_or_default(),
            "{name}: acl"
        );
    }
}

/// `quota -J` against spool::quota::load_roots: the same roots, usage and limits.
fn compare_quota_json(cy: &CyrusInstance, spool: &Spool) -> Value {
    let json = tool_json(cy, "quota", &["-J"]);
    let stored =
        cyrkit::spool::quota::load_roots(&spool.config, &spool.layout, LOCK_TIMEOUT).unwrap();
    let mut ours = BTreeMap::new();
    for (root, s) in &stored {
        let q = s.record.as_ref().unwrap();
        let name = MboxName::from_internal(root, &spool.nc).unwrap();
        let mut res = serde_json::Map::new();
        for r in quota::Resource::ALL {
            let rq = q.get(r);
            let mut o = serde_json::Map::new();
            o.insert("used".into(), rq.used.into());
            if let Some(l) = rq.limit {
                o.insert("limit".into(), (l * r.unit()).into());
            }
            res.insert(r.imap_name().into(), Value::Object(o));
        }
        ours.insert(spool.external(&name), Value::Object(res));
    }
    assert_eq!(json, serde_json::to_value(&ours).unwrap(), "quota -J");
    json
}

/// `mbexamine` of one mailbox: every live record (it skips expunged ones) with the GUID the
/// index holds.
fn compare_mbexamine(cy: &CyrusInstance, spool: &Spool, ext: &str) {
    let mb = spool.find(ext);
    let out = run_ok(cy, "mbexamine", &[ext]);
    let recs = mbexamine_records(&out);
    let live: Vec<&IndexRecord> = mb.records.iter().filter(|r| !r.is_expunged()).collect();
    assert_eq!(recs.len(), live.len(), "{ext}: {out}");
    for ((uid, guid, _), r) in recs.iter().zip(&live) {
        assert_eq!(*uid, r.uid, "{ext}");
        assert_eq!(*guid, index::guid_hex(&r.guid), "{ext} uid {uid}");
    }
}

fn cyrus_written_store_reads_the_same(s: &Scenario) {
    let cy = CyrusInstance::start(&s.opts).unwrap();
    populate(&cy, s);
    let spool = Spool::load(&cy);
    assert!(spool.mboxlist.live().count() >= s.create.len());
    let messages = compare_over_imap(&cy, &spool, s.sep);
    assert!(messages >= 12, "{messages} messages compared");
    compare_ctl_mboxlist(&cy, &spool);
    let quotas = compare_quota_json(&cy, &spool);
    assert_eq!(quotas.as_object().unwrap().len(), s.quotas.len());
    let mut deleted = 0;
    for m in spool.mboxlist.live() {
        deleted += usize::from(m.name.deleted().is_some());
        compare_mbexamine(&cy, &spool, &spool.external(&m.name));
    }
    assert_eq!(
        deleted,
        s.deletes.len(),
        "delayed-delete mailboxes compared"
    );
    // The mailboxes with an expunge keep the expunged records (delayed expunge).
    for (login, view) in s.expunges {
        let inbox = MboxName::user_inbox(login.as_bytes(), &spool.nc).unwrap();
        assert_eq!(*view, "INBOX");
        let mb = spool.find(&spool.external(&inbox));
        assert!(mb.records.iter().any(|r| r.is_expunged()), "{login}");
    }
}

#[test]
fn legacy_store_written_by_cyrus_reads_the_same_in_cyrkit() {
    if require_cyrus() {
        cyrus_written_store_reads_the_same(&legacy_scenario());
    }
}

#[test]
fn uuid_virtdomains_store_written_by_cyrus_reads_the_same_in_cyrkit() {
    if require_cyrus() {
        cyrus_written_store_reads_the_same(&uuid_scenario());
    }
}

// ---------------------------------------------------------------------------------------------
// Written by cyrkit, read by Cyrus

/// Owner, group and mode of a file.
fn ownership(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Replaces a spool file through spool::atomic and checks it kept owner and mode, which must
/// be cyrus:mail.
fn replace_in_spool(path: &Path, bytes: &[u8]) {
    let before = ownership(path);
    let (uid, gid) = cyrus_ids().unwrap();
    assert_eq!((before.0, before.1), (uid, gid), "{}", path.display());
    atomic::replace(path, bytes).unwrap();
    assert_eq!(
        ownership(path),
        before,
        "{}: owner/mode after",
        path.display()
    );
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    assert!(!atomic::new_path(path).exists());
}

/// Stores the derived counts and sync CRCs of `records` in `h`.
fn rederive(h: &mut IndexHeader, records: &[IndexRecord], version: u32, m: &MailboxHeader) {
    let d = index::derive(records, version, &m.user_flags, None);
    h.apply_derived(&d, version);
}

/// What `reconstruct -n` says about one mailbox (Cyrus prints just the name when all is well).
fn reconstruct_n(cy: &CyrusInstance, ext: &str) -> String {
    run_ok(cy, "reconstruct", &["-n", ext])
}

/// The FETCH summary of a mailbox as `login` sees it.
fn summary(cy: &CyrusInstance, login: &str, view: &str) -> Vec<FetchedMessage> {
    let mut c = cy.imap_login(login).unwrap();
    c.examine(view).unwrap();
    let s = c.fetch_summary().unwrap();
    c.logout().unwrap();
    s
}

/// Sets `\Flagged` on one unflagged live record of `ext` with the library (record CRC, modseq,
/// header counts and sync CRCs), returns its uid.
fn flag_one_record(spool: &Spool, ext: &str) -> u32 {
    let mb = spool.find(ext);
    let mut h = mb.index.clone();
    let mut recs = mb.records.clone();
    // The library derives exactly what Cyrus stored.
    let mut check = h.clone();
    rederive(&mut check, &recs, 17, &mb.header);
    assert_eq!(check, h, "{ext}: derived counts/CRCs differ from Cyrus's");

    let r = recs
        .iter_mut()
        .find(|r| !r.is_expunged() && r.system_flags & index::FLAG_FLAGGED == 0)
        .expect("an unflagged message");
    r.system_flags |= index::FLAG_FLAGGED;
    h.highestmodseq += 1;
    r.modseq = h.highestmodseq;
    r.last_updated = h.last_appenddate.max(r.last_updated) + 1;
    let uid = r.uid;
    rederive(&mut h, &recs, 17, &mb.header);
    assert_eq!(h.flagged, mb.index.flagged + 1);
    let bytes = index::write_index(&h, &recs, 17).unwrap();
    replace_in_spool(&mb.index_path, &bytes);
    uid
}

/// Rewrites the index of `ext` at minor version `to` (from the v17 Cyrus wrote).
fn rewrite_index_version(spool: &Spool, ext: &str, to: u32) {
    let mb = spool.find(ext);
    assert_eq!(mb.index.minor_version, 17);
    let mut h = index::convert_header(&mb.index, to).unwrap();
    let recs: Vec<IndexRecord> = mb
        .records
        .iter()
        .map(|r| index::convert_record(r, 17, to).unwrap())
        .collect();
    rederive(&mut h, &recs, to, &mb.header);
    let bytes = index::write_index(&h, &recs, to).unwrap();
    replace_in_spool(&mb.index_path, &bytes);
    let again = spool.find(ext);
    assert_eq!(again.index.minor_version, to);
}

/// `cyr_dbtool DB BACKEND show`.
fn dbtool_show(cy: &CyrusInstance, path: &Path, backend: &str) -> String {
    run_ok(cy, "cyr_dbtool", &[path.to_str().unwrap(), backend, "show"])
}

/// Rewrites mailboxes.db as a fresh file of its backend holding the same pairs.
fn rewrite_mailboxes_db(spool: &Spool) {
    let path = spool.config.mboxlist_db_path();
    let file = db::read_db(&path, spool.config.mboxlist_db(), LOCK_TIMEOUT)
        .unwrap()
        .unwrap();
    assert!(file.problems.is_empty(), "{:?}", file.problems);
    let bytes = match file.backend {
        cyrkit::format::cyrusdb::Backend::Twoskip => {
            twoskip::write_fresh(&file.pairs, &twoskip::FreshOptions::default()).unwrap()
        }
        cyrkit::format::cyrusdb::Backend::Skiplist => {
            skiplist::write_fresh(&file.pairs, &skiplist::FreshOptions::default()).unwrap()
        }
        other => panic!("unexpected mailboxes.db backend {other:?}"),
    };
    assert_ne!(
        bytes,
        std::fs::read(&path).unwrap(),
        "a fresh file, not a copy"
    );
    replace_in_spool(&path, &bytes);
}

/// Every mailbox of the admin's LIST can be opened by who may read it.
fn every_mailbox_opens(cy: &CyrusInstance, spool: &Spool, sep: char, list: &[String]) {
    let mut admin = cy.imap_admin().unwrap();
    let mut now = admin.list("", "*").unwrap();
    admin.logout().unwrap();
    now.sort();
    assert_eq!(now, list, "LIST after the rewrite");
    for mb in spool.mailboxes() {
        if mb.rec.name.deleted().is_some() {
            continue;
        }
        let (login, view) = spool.view(&mb.rec.name, sep);
        let mut c = cy.imap_login(&login).unwrap();
        let st = support::cyrus::MailboxStatus::from_select(&c.select(&view).unwrap());
        assert_eq!(st.messages, u64::from(mb.index.exists), "{view} as {login}");
        c.logout().unwrap();
    }
}

fn sorted_list(cy: &CyrusInstance) -> Vec<String> {
    let mut a = cy.imap_admin().unwrap();
    let mut l = a.list("", "*").unwrap();
    a.logout().unwrap();
    l.sort();
    l
}

#[test]
fn legacy_files_written_by_cyrkit_are_accepted_by_cyrus() {
    if !require_cyrus() {
        return;
    }
    let s = legacy_scenario();
    let mut cy = CyrusInstance::start(&s.opts).unwrap();
    populate(&cy, &s);
    let list = sorted_list(&cy);
    let sent_before = summary(&cy, "alice", "INBOX.Sent");
    let deep_before = summary(&cy, "alice", "INBOX.Sub.Deep");
    cy.stop().unwrap();

    let spool = Spool::load(&cy);
    let quiet = |cy: &CyrusInstance, ext: &str| {
        assert_eq!(
            reconstruct_n(cy, ext),
            format!("{ext}\n"),
            "reconstruct -n {ext}"
        );
    };
    for ext in ["user.bob.Archive", "user.alice.Sent", "user.alice.Sub.Deep"] {
        quiet(&cy, ext);
    }

    // 1. \Flagged on one record.
    let uid = flag_one_record(&spool, "user.bob.Archive");
    let out = run_ok(
        &cy,
        "mbexamine",
        &["-u", &uid.to_string(), "user.bob.Archive"],
    );
    let recs = mbexamine_records(&out);
    assert_eq!(recs.len(), 1, "{out}");
    assert!(recs[0].2.contains("FLAG_FLAGGED"), "{out}");
    quiet(&cy, "user.bob.Archive");

    // 2. Indexes written at older minor versions.
    rewrite_index_version(&spool, "user.alice.Sent", 16);
    rewrite_index_version(&spool, "user.alice.Sub.Deep", 13);
    for (ext, v) in [("user.alice.Sent", 16), ("user.alice.Sub.Deep", 13)] {
        let out = run_ok(&cy, "mbexamine", &[ext]);
        assert!(
            out.contains(&format!("Minor Version: {v}\n")),
            "{ext}: {out}"
        );
        quiet(&cy, ext);
    }

    // 3. mailboxes.db as a fresh twoskip file.
    let db_path = spool.config.mboxlist_db_path();
    let show = dbtool_show(&cy, &db_path, "twoskip");
    let ctl = run_ok(&cy, "ctl_mboxlist", &["-d"]);
    rewrite_mailboxes_db(&spool);
    assert_eq!(dbtool_show(&cy, &db_path, "twoskip"), show);
    assert_eq!(run_ok(&cy, "ctl_mboxlist", &["-d"]), ctl);

    // 4. A quotalegacy file: unchanged, and with a new limit.
    let quota_before = tool_json(&cy, "quota", &["-J"]);
    let qpath = spool.layout.quotalegacy_file(b"user.bob").unwrap();
    let q = quota::parse_legacy_file(&std::fs::read(&qpath).unwrap()).unwrap();
    replace_in_spool(&qpath, &quota::write_legacy_file(&q));
    assert_eq!(tool_json(&cy, "quota", &["-J"]), quota_before);
    let mut q2 = q.clone();
    q2.get_mut(quota::Resource::Storage).limit = Some(7777);
    replace_in_spool(&qpath, &quota::write_legacy_file(&q2));
    let mut want = quota_before.clone();
    want["user.bob"]["STORAGE"]["limit"] = (7777u64 * 1024).into();
    assert_eq!(tool_json(&cy, "quota", &["-J"]), want);

    // Cyrus serves all of it.
    cy.start_master().unwrap();
    let mut bob = cy.imap_login("bob").unwrap();
    bob.examine("INBOX.Archive").unwrap();
    let got = bob.fetch_summary().unwrap();
    bob.logout().unwrap();
    let m = got.iter().find(|m| m.uid == u64::from(uid)).unwrap();
    assert!(m.flags.iter().any(|f| f == "\\Flagged"), "{m:?}");
    assert_eq!(summary(&cy, "alice", "INBOX.Sent"), sent_before);
    assert_eq!(summary(&cy, "alice", "INBOX.Sub.Deep"), deep_before);
    let spool = Spool::load(&cy);
    every_mailbox_opens(&cy, &spool, s.sep, &list);
    let mut admin = cy.imap_admin().unwrap();
    let r = admin.getquotaroot("user.bob").unwrap();
    assert!(
        String::from_utf8_lossy(&r.raw()).contains("7777"),
        "{}",
        String::from_utf8_lossy(&r.raw())
    );
    admin.logout().unwrap();
    cy.stop().unwrap();
}

#[test]
fn uuid_files_written_by_cyrkit_are_accepted_by_cyrus() {
    if !require_cyrus() {
        return;
    }
    let s = uuid_scenario();
    let mut cy = CyrusInstance::start(&s.opts).unwrap();
    populate(&cy, &s);
    let list = sorted_list(&cy);
    let inbox_before = summary(&cy, "carol@example.org", "INBOX");
    cy.stop().unwrap();

    let spool = Spool::load(&cy);
    let ext = "user/carol@example.org";
    assert_eq!(reconstruct_n(&cy, ext), format!("{ext}\n"));
    rewrite_index_version(&spool, ext, 16);
    assert_eq!(reconstruct_n(&cy, ext), format!("{ext}\n"));

    // mailboxes.db as a fresh skiplist file.
    let db_path = spool.config.mboxlist_db_path();
    let show = dbtool_show(&cy, &db_path, "skiplist");
    let ctl = run_ok(&cy, "ctl_mboxlist", &["-d"]);
    rewrite_mailboxes_db(&spool);
    assert_eq!(dbtool_show(&cy, &db_path, "skiplist"), show);
    assert_eq!(run_ok(&cy, "ctl_mboxlist", &["-d"]), ctl);

    // quotas.db (twoskip) rewritten with one limit changed.
    let quota_before = tool_json(&cy, "quota", &["-J"]);
    let qpath = spool.layout.quotas_db().to_path_buf();
    let file = db::read_db(&qpath, spool.config.quota_db(), LOCK_TIMEOUT)
        .unwrap()
        .unwrap();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = file
        .pairs
        .iter()
        .map(|(k, v)| {
            let mut q = quota::parse_value(v).unwrap();
            if k == b"user.dave" {
                q.get_mut(quota::Resource::Message).limit = Some(77);
            }
            (k.clone(), quota::write_value(&q))
        })
        .collect();
    let bytes = twoskip::write_fresh(&pairs, &twoskip::FreshOptions::default()).unwrap();
    replace_in_spool(&qpath, &bytes);
    let mut want = quota_before.clone();
    want["user/dave"]["MESSAGE"]["limit"] = 77.into();
    assert_eq!(tool_json(&cy, "quota", &["-J"]), want);

    cy.start_master().unwrap();
    assert_eq!(summary(&cy, "carol@example.org", "INBOX"), inbox_before);
    let spool = Spool::load(&cy);
    every_mailbox_opens(&cy, &spool, s.sep, &list);
    cy.stop().unwrap();
}
