//! Differential test of `cyrkit reconstruct` against Cyrus 3.6's own `reconstruct`.
//!
//! A real Cyrus instance is populated (LMTP deliveries to several recipients at once, IMAP
//! APPENDs of the MIME corpus with flags, keywords and dates, a STORE, an expunge) and stopped.
//! Every damage lives in its own user's INBOX, so one copy of the store holds them all:
//! copy A is repaired by Cyrus's `reconstruct`, copy B by `cyrkit reconstruct` (run as root; it
//! acts as the spool owner). Then Cyrus serves A, B and the undamaged original side by side and
//! the test compares what IMAP shows: UIDs, FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE,
//! BODYSTRUCTURE, the body bytes and STATUS.
//!
//! Where Cyrus keeps the data, A and B must agree. Where Cyrus loses it (index lost, index
//! header CRC bad, header lost: it creates a new mailbox and re-adds the files), B must equal
//! the original for everything that survived on disk: UIDVALIDITY always; UIDs, system flags
//! and internaldates wherever the index records survived.
//!
//! After cyrkit's repair Cyrus's own `reconstruct -n` must report exactly what it reports after
//! its own repair (nothing but what no reconstruct changes: odd files left in place, a message
//! file whose GUID no longer matches), and `cyrkit mbcheck` must be clean. A third copy with
//! every `cyrus.cache` deleted checks cache fidelity: each regenerated entry is byte-identical
//! to the one Cyrus wrote. A uuid-layout instance repeats a few damages.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cyrkit::format::cache::CacheEntry;
use cyrkit::format::index::{self, IndexHeader, IndexRecord};
use serde_json::Value;
use support::cyrus::{
    chown_cyrus, crlf, cyrus_ids, render_imapd_conf, require_cyrus, CyrusInstance, CyrusOptions,
    Token,
};

// ---------------------------------------------------------------------------------------------
// Damages

/// One damage, applied to one user's INBOX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// Control: no damage at all.
    None,
    IndexLost,
    /// A count in the index header changed: the header CRC fails.
    IndexHeaderCrc,
    HeaderLost,
    CacheLost,
    /// One byte of one record flipped: that record fails its CRC.
    RecordCrc,
    MessageFileMissing,
    /// A message file above last_uid, and one below whose record was removed.
    StrayFiles,
    /// One message file changed with the same size, another with a different size.
    ContentChanged,
    /// Files that are neither messages nor `cyrus.*`.
    OddFiles,
}

const LEGACY_DAMAGES: [Damage; 10] = [
    Damage::None,
    Damage::IndexLost,
    Damage::IndexHeaderCrc,
    Damage::HeaderLost,
    Damage::CacheLost,
    Damage::RecordCrc,
    Damage::MessageFileMissing,
    Damage::StrayFiles,
    Damage::ContentChanged,
    Damage::OddFiles,
];

const UUID_DAMAGES: [Damage; 4] = [
    Damage::None,
    Damage::IndexLost,
    Damage::RecordCrc,
    Damage::CacheLost,
];

/// The UID expunged (delayed expunge: record and file stay) in every mailbox.
const EXPUNGED_UID: u32 = 3;

impl Damage {
    fn apply(self, dir: &Path) {
        let index_path = dir.join("cyrus.index");
        match self {
            Damage::None => {}
            Damage::IndexLost => fs::remove_file(&index_path).unwrap(),
            Damage::IndexHeaderCrc => flip(&index_path, index::OFFSET_EXISTS + 3),
            Damage::HeaderLost => fs::remove_file(dir.join("cyrus.header")).unwrap(),
            Damage::CacheLost => fs::remove_file(dir.join("cyrus.cache")).unwrap(),
            Damage::RecordCrc => {
                let (h, _) = read_index(dir);
                let off = h.start_offset as usize
                    + 4 * h.record_size as usize
                    + index::OFFSET_INTERNALDATE
                    + 1;
                flip(&index_path, off);
            }
            Damage::MessageFileMissing => fs::remove_file(dir.join("5.")).unwrap(),
            Damage::StrayFiles => {
                let (h, _) = read_index(dir);
                rewrite_index(dir, |recs| recs.retain(|r| r.uid != 6));
                let above = h.last_uid + 3;
                copy_keep_mtime(&dir.join("2."), &dir.join(format!("{above}.")));
            }
            Damage::ContentChanged => {
                // Same size: a body byte (the last one before the final CRLF).
                let p = dir.join("4.");
                let mut b = fs::read(&p).unwrap();
                let at = b.len() - 3;
                b[at] ^= 0x01;
                write_keep_mtime(&p, &b);
                // Other size.
                let p = dir.join("6.");
                let mut b = fs::read(&p).unwrap();
                b.extend_from_slice(b"appended line\r\n");
                write_keep_mtime(&p, &b);
            }
            Damage::OddFiles => {
                fs::write(dir.join("notes.txt"), b"not a message").unwrap();
                fs::write(dir.join("5.orig"), b"From: x\r\n\r\nbackup\r\n").unwrap();
                fs::write(dir.join(".hidden"), b"x").unwrap();
            }
        }
    }
}

fn flip(path: &Path, offset: usize) {
    let mut b = fs::read(path).unwrap();
    b[offset] ^= 0x20;
    fs::write(path, b).unwrap();
}

fn mtime_of(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

fn set_mtime(p: &Path, t: std::time::SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn write_keep_mtime(p: &Path, bytes: &[u8]) {
    let t = mtime_of(p);
    fs::write(p, bytes).unwrap();
    set_mtime(p, t);
}

fn copy_keep_mtime(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap();
    set_mtime(to, mtime_of(from));
}

fn read_index(dir: &Path) -> (IndexHeader, Vec<IndexRecord>) {
    let buf = fs::read(dir.join("cyrus.index")).expect("cyrus.index");
    let idx = index::Index::open(&buf).expect("index opens");
    let recs = idx.records().map(|r| r.expect("record")).collect();
    (idx.header().clone(), recs)
}

/// Rewrites an index through the crate's writer with `edit` applied to its records and the
/// counts recomputed, so the only damage is what `edit` did.
fn rewrite_index(dir: &Path, edit: impl FnOnce(&mut Vec<IndexRecord>)) {
    let (mut h, mut recs) = read_index(dir);
    edit(&mut recs);
    let v = h.minor_version;
    let hdr = cyrkit::format::header::parse(&fs::read(dir.join("cyrus.header")).unwrap()).unwrap();
    let d = index::derive(recs.iter(), v, &hdr.user_flags, None);
    h.apply_derived(&d, v);
    let bytes = index::write_index(&h, &recs, v).unwrap();
    fs::write(dir.join("cyrus.index"), bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Populating a store

fn user(i: usize) -> String {
    format!("u{i}")
}

/// The MIME corpus messages Cyrus stored by APPEND on a default instance (byte for byte).
fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mime");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for json in names {
        let meta: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        let default = meta["options"]["munge8bit"] == true
            && meta["options"]["rfc2047_utf8"] == false
            && meta["options"]["maxheaderlines"] == 1000;
        if meta["stored_by"] == "append" && default {
            out.push(fs::read(json.with_extension("eml")).unwrap());
        }
    }
    assert!(out.len() > 100, "MIME corpus: {} messages", out.len());
    out
}

/// Messages for LMTP: plain, multipart with an attachment, nested, dot-stuffing.
fn lmtp_messages() -> Vec<Vec<u8>> {
    let attachment: String = (0..40)
        .map(|i| {
            format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2{i:04}\n")
        })
        .collect();
    let texts = [
        "From: Sender One <one@example.org>\nTo: u0@example.com, u1@example.com\n\
         Cc: \"Team, All\" <team@example.com>\nSubject: Delivered to everyone\n\
         Date: Tue, 14 Mar 2023 10:00:00 +0100\nMessage-ID: <lmtp-1@example.org>\n\n\
         Hello all,\n.a line starting with a dot\nbye\n"
            .to_string(),
        format!(
            "From: two@example.org\nTo: undisclosed-recipients:;\n\
             Subject: =?UTF-8?Q?Rapport_f=C3=BCr?= March\nDate: Wed, 15 Mar 2023 23:59:59 -0800\n\
             Message-ID: <lmtp-2@example.org>\nMIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\n\npreamble\n--b1\n\
             Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
             Gr\u{fc}\u{df}e, the report is attached.\n--b1\n\
             Content-Type: application/pdf; name=\"report.pdf\"\n\
             Content-Disposition: attachment; filename=\"report.pdf\"\n\
             Content-Transfer-Encoding: base64\n\n{attachment}--b1--\nepilogue\n"
        ),
        "From: three@example.org\nTo: u2@example.com\nSubject: nested\n\
         Date: Thu, 16 Mar 2023 08:15:30 +0000\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\n\n--outer\n\
         Content-Type: multipart/alternative; boundary=\"inner\"\n\n--inner\n\
         Content-Type: text/plain\n\nplain\n--inner\nContent-Type: text/html\n\n\
         <p>html</p>\n--inner--\n--outer\nContent-Type: message/rfc822\n\n\
         From: inner@example.org\nSubject: forwarded\n\nforwarded body\n--outer--\n"
            .to_string(),
        "From: four@example.org\nSubject: short\n\nshort body\n".to_string(),
    ];
    texts.iter().map(|t| crlf(t.as_bytes())).collect()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Flags and INTERNALDATE of the n-th APPEND.
fn append_meta(n: usize) -> (Vec<&'static str>, String) {
    let mut flags = Vec::new();
    if n % 2 == 0 {
        flags.push("\\Seen");
    }
    if n % 3 == 0 {
        flags.extend(["\\Flagged", "$Label1"]);
    }
    if n % 4 == 1 {
        flags.extend(["\\Answered", "work"]);
    }
    if n % 7 == 2 {
        flags.push("\\Draft");
    }
    if n % 5 == 3 {
        flags.push("$Forwarded");
    }
    let date = format!(
        "{:02}-{}-20{:02} {:02}:{:02}:{:02} {}",
        1 + n % 28,
        MONTHS[n % 12],
        10 + n % 14,
        n % 24,
        (n * 7) % 60,
        (n * 13) % 60,
        if n % 2 == 0 { "+0200" } else { "-0530" }
    );
    (flags, date)
}

/// An exported store: `imapd.conf` (relative paths), `conf/`, `spool/`, written by Cyrus.
struct Store {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    users: Vec<String>,
}

/// Populates a fresh instance with `damages.len()` users and exports it.
fn populate(opts: &CyrusOptions, users: usize, corpus: &[Vec<u8>]) -> Store {
    let mut cy = CyrusInstance::start(opts).expect("start Cyrus");
    let names: Vec<String> = (0..users).map(user).collect();
    let sep = if opts.unixhierarchysep { "/" } else { "." };
    let mut admin = cy.imap_admin().unwrap();
    for u in &names {
        admin.create(&format!("user{sep}{u}")).unwrap();
    }
    admin.logout().unwrap();
    // LMTP: every message to every user at once (single-instance store: hard links), one
    // message to a single recipient.
    let mut l = cy.lmtp().unwrap();
    let rcpts: Vec<String> = names.iter().map(|u| format!("{u}@example.com")).collect();
    let all: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msgs = lmtp_messages();
    for (i, m) in msgs.iter().enumerate() {
        let to: &[&str] = if i == 3 { &all[..1] } else { &all };
        for r in l.deliver("sender@example.org", to, m).unwrap() {
            assert!(r.is_positive(), "LMTP: {r:?}");
        }
    }
    l.quit().unwrap();
    // APPENDs: the corpus spread over the mailboxes, every one with a few.
    let per = corpus.len().div_ceil(users);
    for (i, u) in names.iter().enumerate() {
        let mut c = cy.imap_login(u).unwrap();
        for n in 0..per {
            let k = (i * per + n) % corpus.len();
            let (flags, date) = append_meta(k);
            c.append("INBOX", &flags, Some(&date), &corpus[k]).unwrap();
        }
        c.select("INBOX").unwrap();
        c.store("2", "+FLAGS", &["\\Deleted"]).unwrap();
        c.ok(&format!("UID STORE {EXPUNGED_UID} +FLAGS (\\Deleted)"))
            .unwrap();
        c.ok(&format!("UID EXPUNGE {EXPUNGED_UID}")).unwrap();
        c.store("7:9", "+FLAGS", &["\\Answered", "$Junk"]).unwrap();
        c.logout().unwrap();
    }
    cy.stop().unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("cyrkit-recdiff-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("store");
    fs::create_dir_all(&dir).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(cy.config_dir())
        .arg(cy.spool_dir())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let keys = cy.relative_store_keys();
    fs::write(dir.join("imapd.conf"), render_imapd_conf(&keys)).unwrap();
    assert_eq!(
        (cy.config_dir().file_name(), cy.spool_dir().file_name()),
        (Some("conf".as_ref()), Some("spool".as_ref()))
    );
    Store {
        _tmp: tmp,
        dir,
        users: names,
    }
}

impl Store {
    /// Mailbox directory (relative to the store) of each user's INBOX, found by reading every
    /// `cyrus.header` (works for both layouts).
    fn inbox_dirs(&self, sep: char) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(self.dir.join("spool")) {
            let e = e.unwrap();
            if e.file_name() != "cyrus.header" {
                continue;
            }
            let h = cyrkit::format::header::parse(&fs::read(e.path()).unwrap()).unwrap();
            let name = String::from_utf8(h.name.expect("header has a name")).unwrap();
            if let Some(u) = name.strip_prefix(&format!("user{sep}")) {
                let rel = e.path().parent().unwrap().strip_prefix(&self.dir).unwrap();
                out.insert(u.to_string(), rel.to_path_buf());
            }
        }
        assert_eq!(out.len(), self.users.len(), "{out:?}");
        out
    }

    /// A fresh offline Cyrus instance on a copy (message mtimes kept: they are the fallback
    /// internaldate).
    fn copy(&self) -> CyrusInstance {
        let cy = CyrusInstance::spool_copy_offline(&self.dir).unwrap();
        let src = self.dir.join("spool");
        for e in walkdir::WalkDir::new(&src) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                let to = cy.spool_dir().join(e.path().strip_prefix(&src).unwrap());
                set_mtime(&to, e.metadata().unwrap().modified().unwrap());
            }
        }
        cy
    }
}

// ---------------------------------------------------------------------------------------------
// Running the repairs

fn cyrkit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(args)
        .output()
        .expect("run cyrkit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cyrkit_reconstruct(cy: &CyrusInstance) -> String {
    let conf = cy.conf_path().display().to_string();
    let (code, out, err) = cyrkit(&["reconstruct", "-C", &conf, "--no-progress"]);
    assert_eq!(code, 0, "cyrkit reconstruct\n{out}{err}");
    out
}

fn cyrus_reconstruct(cy: &CyrusInstance, args: &[&str]) -> String {
    let out = cy.run_tool("reconstruct", args).unwrap();
    assert!(
        out.status.success(),
        "Cyrus reconstruct {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Paths in `odd file` lines name the instance.
    String::from_utf8_lossy(&out.stdout).replace(&cy.root().display().to_string(), "ROOT")
}

/// `cyrkit mbcheck --json` findings other than quota usage (reconstruct does not recount quota
/// roots; `cyrkit quota -f` does).
fn mbcheck_findings(cy: &CyrusInstance) -> Vec<Value> {
    let conf = cy.conf_path().display().to_string();
    let (code, out, err) = cyrkit(&["mbcheck", "-C", &conf, "--no-progress", "--json"]);
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("mbcheck --json: {e}\n{out}{err}"));
    assert!(code <= 1, "mbcheck exit {code}\n{out}{err}");
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] != "quota")
        .cloned()
        .collect()
}

/// Every file under the spool and the config directory belongs to cyrus (cyrkit ran as root).
fn assert_owned_by_cyrus(cy: &CyrusInstance) {
    let (uid, _) = cyrus_ids().unwrap();
    for top in [cy.spool_dir(), cy.config_dir()] {
        for e in walkdir::WalkDir::new(top) {
            let e = e.unwrap();
            assert_eq!(
                e.metadata().unwrap().uid(),
                uid,
                "{} not owned by cyrus",
                e.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What IMAP shows

#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    /// Sorted, without `\Recent`.
    flags: Vec<String>,
    internaldate: String,
    size: String,
    envelope: Token,
    bodystructure: Token,
    body: Vec<u8>,
}

impl Msg {
    fn content(&self) -> (&str, &Token, &Token, &[u8]) {
        (&self.size, &self.envelope, &self.bodystructure, &self.body)
    }
}

#[derive(Clone, Debug)]
struct Dump {
    messages: u64,
    uidnext: u64,
    uidvalidity: u64,
    highestmodseq: u64,
    msgs: BTreeMap<u32, Msg>,
}

/// What each user sees of their INBOX.
fn dump(cy: &CyrusInstance, users: &[String]) -> BTreeMap<String, Dump> {
    let mut out = BTreeMap::new();
    for u in users {
        let mut c = cy.imap_login(u).unwrap();
        let st = c.status("INBOX").unwrap();
        c.examine("INBOX").unwrap();
        let r = c
            .ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[])")
            .unwrap();
        let mut msgs = BTreeMap::new();
        for toks in r.tokens() {
            let Some(Token::List(items)) = toks.get(3) else {
                continue;
            };
            let mut fields: BTreeMap<String, Token> = BTreeMap::new();
            for pair in items.chunks(2) {
                if let (Some(Token::Atom(k)), Some(v)) = (pair.first(), pair.get(1)) {
                    fields.insert(k.to_ascii_uppercase(), v.clone());
                }
            }
            let text = |k: &str| fields.get(k).and_then(Token::text).unwrap_or_default();
            let mut flags: Vec<String> = match fields.get("FLAGS") {
                Some(Token::List(l)) => l.iter().filter_map(Token::text).collect(),
                _ => Vec::new(),
            };
            flags.retain(|f| f != "\\Recent");
            flags.sort();
            let body = match fields.get("BODY[]") {
                Some(Token::Str(b)) => b.clone(),
                other => panic!("{u}: BODY[] is {other:?}"),
            };
            let uid: u32 = text("UID").parse().unwrap();
            msgs.insert(
                uid,
                Msg {
                    flags,
                    internaldate: text("INTERNALDATE"),
                    size: text("RFC822.SIZE"),
                    envelope: fields["ENVELOPE"].clone(),
                    bodystructure: fields["BODYSTRUCTURE"].clone(),
                    body,
                },
            );
        }
        c.logout().unwrap();
        assert_eq!(st.messages as usize, msgs.len(), "{u}");
        out.insert(
            u.clone(),
            Dump {
                messages: st.messages,
                uidnext: st.uidnext,
                uidvalidity: st.uidvalidity,
                highestmodseq: st.highestmodseq,
                msgs,
            },
        );
    }
    out
}

/// Starts Cyrus on `cy`, dumps, stops.
fn serve_and_dump(mut cy: CyrusInstance, users: &[String]) -> BTreeMap<String, Dump> {
    cy.start_master().unwrap();
    let d = dump(&cy, users);
    cy.stop().unwrap();
    d
}

fn uids(d: &Dump) -> Vec<u32> {
    d.msgs.keys().copied().collect()
}

/// Same messages, same contents (by UID).
fn assert_same_content(what: &str, x: &Dump, y: &Dump) {
    assert_eq!(uids(x), uids(y), "{what}: UIDs");
    for (uid, m) in &x.msgs {
        assert_eq!(m.content(), y.msgs[uid].content(), "{what}: uid {uid}");
    }
}

/// Same messages with the same contents, flags and dates; same UIDNEXT and UIDVALIDITY.
fn assert_same(what: &str, x: &Dump, y: &Dump) {
    assert_same_content(what, x, y);
    for (uid, m) in &x.msgs {
        assert_eq!(m, &y.msgs[uid], "{what}: uid {uid}");
    }
    assert_eq!(
        (x.messages, x.uidnext, x.uidvalidity),
        (y.messages, y.uidnext, y.uidvalidity),
        "{what}: STATUS"
    );
}

fn is_keyword(f: &str) -> bool {
    !f.starts_with('\\')
}

/// The comparison of one damaged mailbox: O the undamaged original, A repaired by Cyrus, B by
/// cyrkit. Returns a line for the report when A and B legitimately differ.
fn compare(damage: Damage, u: &str, o: &Dump, a: &Dump, b: &Dump) -> Option<String> {
    let what = format!("{u} ({damage:?})");
    assert_eq!(b.uidvalidity, o.uidvalidity, "{what}: UIDVALIDITY kept");
    if damage != Damage::IndexLost {
        assert!(b.highestmodseq >= o.highestmodseq, "{what}: HIGHESTMODSEQ");
    }
    match damage {
        Damage::None | Damage::CacheLost => {
            assert_same(&format!("{what} cyrkit vs original"), o, b);
            assert_same(&format!("{what} cyrkit vs Cyrus"), a, b);
            None
        }
        Damage::IndexLost => {
            // No record survived: both re-add every file under its own UID, internaldate from
            // the file's mtime, no flags. The expunged message's file is still there (delayed
            // expunge), so it comes back in both.
            assert_same_content(&format!("{what} cyrkit vs Cyrus"), a, b);
            for (uid, m) in &b.msgs {
                let am = &a.msgs[uid];
                assert_eq!((&m.flags, &m.internaldate), (&am.flags, &am.internaldate));
                if let Some(om) = o.msgs.get(uid) {
                    assert_eq!(m.content(), om.content(), "{what}: uid {uid}");
                    assert_eq!(m.internaldate, om.internaldate, "{what}: uid {uid} date");
                }
            }
            let mut extra: Vec<u32> = uids(b);
            extra.retain(|u| !o.msgs.contains_key(u));
            assert_eq!(extra, vec![EXPUNGED_UID], "{what}: resurrected");
            assert_eq!(b.uidnext, o.uidnext, "{what}: UIDNEXT");
            // No surviving record holds the old HIGHESTMODSEQ: with UIDVALIDITY kept, cyrkit
            // must not report a lower one than a client may have seen (RFC 7162).
            assert!(
                b.highestmodseq > o.highestmodseq,
                "{what}: HIGHESTMODSEQ went back from {} to {}",
                o.highestmodseq,
                b.highestmodseq
            );
            Some(format!(
                "{what}: Cyrus UIDVALIDITY {} (original {}), cyrkit kept it; HIGHESTMODSEQ \
                 original {}, Cyrus {}, cyrkit {}",
                a.uidvalidity, o.uidvalidity, o.highestmodseq, a.highestmodseq, b.highestmodseq
            ))
        }
        Damage::IndexHeaderCrc | Damage::HeaderLost => {
            // Every record survived: cyrkit keeps UIDs, flags, dates and expunged state;
            // Cyrus starts a new mailbox from the files.
            for (uid, m) in &b.msgs {
                assert_eq!(m.content(), a.msgs[uid].content(), "{what}: uid {uid}");
            }
            let mut want = o.clone();
            if damage == Damage::HeaderLost {
                // Keyword names lived only in the lost header.
                for m in want.msgs.values_mut() {
                    m.flags.retain(|f| !is_keyword(f));
                }
            }
            assert_same(&format!("{what} cyrkit vs original"), &want, b);
            Some(format!(
                "{what}: Cyrus UIDVALIDITY {} (original {}), {} messages, flags {}; cyrkit kept \
                 UIDVALIDITY, flags{} and the expunge",
                a.uidvalidity,
                o.uidvalidity,
                a.messages,
                if a.msgs.values().all(|m| m.flags.is_empty()) {
                    "lost"
                } else {
                    "kept"
                },
                if damage == Damage::HeaderLost {
                    " (not the keywords)"
                } else {
                    ""
                },
            ))
        }
        Damage::RecordCrc
        | Damage::MessageFileMissing
        | Damage::StrayFiles
        | Damage::ContentChanged
        | Damage::OddFiles => {
            assert_same(&format!("{what} cyrkit vs Cyrus"), a, b);
            // What the damage did not touch is as it was.
            for (uid, om) in &o.msgs {
                if let Some(bm) = b.msgs.get(uid) {
                    if damage != Damage::ContentChanged || ![4, 6].contains(uid) {
                        assert_eq!(om, bm, "{what}: untouched uid {uid}");
                    }
                }
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cache fidelity

/// For every record of `orig` whose message file is unchanged, the entry cyrkit regenerated in
/// `new` is byte-identical to Cyrus's. Returns the number of entries compared.
fn compare_caches(orig: &Path, new: &Path) -> usize {
    let (_, orecs) = read_index(orig);
    let (_, nrecs) = read_index(new);
    let ocache = fs::read(orig.join("cyrus.cache")).unwrap();
    let ncache = fs::read(new.join("cyrus.cache")).unwrap();
    let mut n = 0;
    for o in &orecs {
        let nr = nrecs
            .iter()
            .find(|r| r.uid == o.uid)
            .unwrap_or_else(|| panic!("{}: uid {} gone", new.display(), o.uid));
        let oe = CacheEntry::parse(&ocache, o.cache_offset).unwrap();
        let ne = CacheEntry::parse(&ncache, nr.cache_offset).unwrap();
        assert_eq!(
            oe.raw,
            ne.raw,
            "{}: cache entry of uid {} differs",
            new.display(),
            o.uid
        );
        assert_eq!(
            (o.cache_crc, o.cache_version),
            (nr.cache_crc, nr.cache_version)
        );
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// The test

struct Outcome {
    notes: Vec<String>,
    cache_entries: usize,
}

fn run_differential(store: &Store, damages: &[Damage], sep: char) -> Outcome {
    let dirs = store.inbox_dirs(sep);
    let users = &store.users;
    let damage_of = |u: &str| damages[u[1..].parse::<usize>().unwrap()];
    let a = store.copy();
    let b = store.copy();
    for (u, rel) in &dirs {
        damage_of(u).apply(&a.root().join(rel));
        damage_of(u).apply(&b.root().join(rel));
    }
    // Files the damages created belong to cyrus, as a restore from backup would.
    chown_cyrus(a.root()).unwrap();
    chown_cyrus(b.root()).unwrap();
    let cyrus_out = cyrus_reconstruct(&a, &[]);
    let cyrkit_out = cyrkit_reconstruct(&b);
    eprintln!("--- Cyrus reconstruct ---\n{cyrus_out}--- cyrkit reconstruct ---\n{cyrkit_out}");
    assert_owned_by_cyrus(&b);

    // Cyrus's -n after cyrkit's repair reports what it reports after its own.
    let a_n = cyrus_reconstruct(&a, &["-n"]);
    let b_n = cyrus_reconstruct(&b, &["-n"]);
    assert_eq!(b_n, a_n, "Cyrus reconstruct -n after cyrkit vs after Cyrus");
    let leftovers: Vec<&str> = b_n
        .lines()
        .filter(|l| !users.iter().any(|u| *l == format!("user{sep}{u}")))
        .collect();
    for l in &leftovers {
        let expected = l.contains(" odd file ")
            || l.starts_with("run reconstruct with")
            || l.ends_with(" guid mismatch");
        assert!(expected, "Cyrus reconstruct -n wants a change: {l}");
    }
    // What no reconstruct changes without -R/-O: the grown message file and the odd files.
    let inherent = |f: &Value| {
        let user = |d: Damage| {
            let i = damages.iter().position(|x| *x == d);
            i.map(|i| Value::from(format!("user{sep}{}", user(i))))
        };
        let mailbox = Some(&f["mailbox"]);
        (f["kind"] == "odd-file" && mailbox == user(Damage::OddFiles).as_ref())
            || (f["kind"] == "message-file"
                && mailbox == user(Damage::ContentChanged).as_ref()
                && f["problem"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("uid 6: size is ")))
    };
    let findings: Vec<Value> = mbcheck_findings(&b)
        .into_iter()
        .filter(|f| !inherent(f))
        .collect();
    assert!(
        findings.is_empty(),
        "cyrkit mbcheck after cyrkit reconstruct:\n{}",
        serde_json::to_string_pretty(&findings).unwrap()
    );

    // Cache fidelity: every cyrus.cache of a copy deleted, regenerated by cyrkit.
    let c = store.copy();
    for rel in dirs.values() {
        fs::remove_file(c.root().join(rel).join("cyrus.cache")).unwrap();
    }
    cyrkit_reconstruct(&c);
    let mut cache_entries = 0;
    for rel in dirs.values() {
        cache_entries += compare_caches(&store.dir.join(rel), &c.root().join(rel));
    }

    let o = store.copy();
    let (od, ad, bd) = std::thread::scope(|s| {
        let ho = s.spawn(|| serve_and_dump(o, users));
        let ha = s.spawn(|| serve_and_dump(a, users));
        let bd = serve_and_dump(b, users);
        (ho.join().unwrap(), ha.join().unwrap(), bd)
    });
    let mut notes = Vec::new();
    for u in users {
        notes.extend(compare(damage_of(u), u, &od[u], &ad[u], &bd[u]));
    }
    Outcome {
        notes,
        cache_entries,
    }
}

#[test]
fn cyrkit_and_cyrus_reconstruct_agree_over_imap() {
    if !require_cyrus() {
        return;
    }
    let corpus = corpus();
    let legacy_opts = CyrusOptions::default();
    let uuid_opts = CyrusOptions {
        legacy_dirs: false,
        ..CyrusOptions::default()
    };
    let (legacy, uuid) = std::thread::scope(|s| {
        let h = s.spawn(|| populate(&uuid_opts, UUID_DAMAGES.len(), &corpus[..40]));
        let legacy = populate(&legacy_opts, LEGACY_DAMAGES.len(), &corpus);
        (legacy, h.join().unwrap())
    });
    let (l, u) = std::thread::scope(|s| {
        let h = s.spawn(|| run_differential(&uuid, &UUID_DAMAGES, '.'));
        let l = run_differential(&legacy, &LEGACY_DAMAGES, '.');
        (l, h.join().unwrap())
    });
    for n in l.notes.iter().chain(&u.notes) {
        eprintln!("difference (cyrkit keeps what Cyrus loses): {n}");
    }
    eprintln!(
        "cache entries byte-identical to Cyrus's: {} legacy, {} uuid",
        l.cache_entries, u.cache_entries
    );
    assert!(l.cache_entries > 150 && u.cache_entries > 40);
    assert_eq!(l.notes.len(), 3, "{:?}", l.notes);
}
