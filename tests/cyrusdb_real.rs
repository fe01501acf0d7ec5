//! The cyrusdb codecs against files real Cyrus 3.6 wrote and reads.
//!
//! With Cyrus installed (`/usr/lib/cyrus/bin/cyr_dbtool`), each backend gets a database
//! built by `cyr_dbtool batch` (binary keys, empty and >64 KiB values, a few hundred
//! keys, overwrites and deletions in separate transactions); our reader must print
//! exactly what `cyr_dbtool show` prints and the raw layer must round-trip the file.
//! Files we write (fresh, and a twoskip transaction appended to a Cyrus file) must be
//! read back identically by `cyr_dbtool show` and pass `consistent`.
//!
//! Without Cyrus these tests skip, unless `CYRKIT_REQUIRE_CYRUS` is set, in which case
//! they fail. `CYRKIT_REGEN_FIXTURES=1` rewrites `fixtures/db/` from fresh Cyrus runs.
//! The committed fixtures are checked by `fixtures_*` tests, which need no Cyrus.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cyrkit::format::cyrusdb::{detect, Backend, KeyOrder, LevelRng, Op};
use cyrkit::format::{flat, skiplist, twoskip};

const CYR_DBTOOL: &str = "/usr/lib/cyrus/bin/cyr_dbtool";
const BACKENDS: [Backend; 3] = [Backend::Twoskip, Backend::Skiplist, Backend::Flat];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/db")
}

/// A private Cyrus configuration in a temp dir, and a way to run cyr_dbtool as cyrus.
struct Cyrus {
    dir: tempfile::TempDir,
    conf: PathBuf,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl Cyrus {
    /// `None` (skip) when Cyrus is not installed, unless CYRKIT_REQUIRE_CYRUS is set.
    fn new() -> Option<Cyrus> {
        let required = std::env::var_os("CYRKIT_REQUIRE_CYRUS").is_some();
        let user = nix::unistd::User::from_name("cyrus").ok().flatten();
        let usable = Path::new(CYR_DBTOOL).exists() && user.is_some();
        if !usable {
            assert!(
                !required,
                "CYRKIT_REQUIRE_CYRUS is set but {CYR_DBTOOL} or user cyrus is missing"
            );
            eprintln!("skipping: {CYR_DBTOOL} not installed");
            return None;
        }
        let me = nix::unistd::geteuid();
        let user = user?;
        if !me.is_root() && me != user.uid {
            assert!(
                !required,
                "CYRKIT_REQUIRE_CYRUS is set but we can run neither as root nor as cyrus"
            );
            eprintln!("skipping: need root or the cyrus user to run {CYR_DBTOOL}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("imapd.conf");
        let configdir = dir.path().join("conf");
        fs::create_dir_all(configdir.join("db")).unwrap();
        fs::create_dir_all(dir.path().join("files")).unwrap();
        fs::write(
            &conf,
            format!(
                "configdirectory: {}\npartition-default: {}\n",
                configdir.display(),
                dir.path().join("spool").display()
            ),
        )
        .unwrap();
        // A nonzero skiplist recovery epoch older than any file: skiplist files are
        // then opened as they are, not recovered and checkpointed on first open.
        let c = Cyrus {
            dir,
            conf,
            uid: user.uid,
            gid: user.gid,
        };
        c.set_skipstamp(1);
        c.chown_all();
        Some(c)
    }

    fn set_skipstamp(&self, epoch: u32) {
        let p = self.dir.path().join("conf/db/skipstamp");
        fs::write(&p, epoch.to_be_bytes()).unwrap();
        std::os::unix::fs::chown(&p, Some(self.uid.as_raw()), Some(self.gid.as_raw())).unwrap();
    }

    fn chown_all(&self) {
        for e in walkdir::WalkDir::new(self.dir.path()) {
            let e = e.unwrap();
            std::os::unix::fs::chown(e.path(), Some(self.uid.as_raw()), Some(self.gid.as_raw()))
                .unwrap();
        }
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        fs::set_permissions(self.dir.path(), mode).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("files").join(name)
    }

    /// Write `bytes` as a db file Cyrus may open.
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        self.chown_all();
        p
    }

    /// Run cyr_dbtool; returns (success, stdout, stderr).
    fn dbtool(
        &self,
        file: &Path,
        backend: Backend,
        args: &[&str],
        stdin: &[u8],
    ) -> (bool, Vec<u8>, String) {
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "cyrus", "--", CYR_DBTOOL]);
            c
        } else {
            Command::new(CYR_DBTOOL)
        };
        cmd.arg("-C")
            .arg(&self.conf)
            .arg("-n")
            .arg(file)
            .arg(backend.name())
            .args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn show(&self, file: &Path, backend: Backend) -> Vec<u8> {
        let (ok, out, err) = self.dbtool(file, backend, &["show"], b"");
        assert!(ok, "cyr_dbtool show failed: {err}");
        out
    }

    fn assert_consistent(&self, file: &Path, backend: Backend) {
        let (ok, out, err) = self.dbtool(file, backend, &["consistent"], b"");
        let out = String::from_utf8_lossy(&out);
        assert!(
            ok && out.contains("Yes, consistent"),
            "cyr_dbtool consistent: {out} {err}"
        );
    }

    /// Run one `cyr_dbtool batch` per transaction.
    fn run_transactions(&self, file: &Path, backend: Backend, txns: &[Vec<Step>]) {
        for txn in txns {
            let script = batch_script(txn);
            let (ok, _, err) = self.dbtool(file, backend, &["batch"], &script);
            assert!(ok && !err.contains("FAILED"), "cyr_dbtool batch: {err}");
        }
    }
}

#[derive(Clone)]
enum Step {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// IMAP-literal batch input (`batch_commands` reads keys and values with
/// `getbastring`, so `{N+}` literals carry any byte).
fn batch_script(steps: &[Step]) -> Vec<u8> {
    fn lit(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(format!("{{{}+}}\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    }
    let mut out = b"BEGIN\n".to_vec();
    for s in steps {
        match s {
            Step::Set(k, v) => {
                out.extend_from_slice(b"SET ");
                lit(&mut out, k);
                out.push(b' ');
                lit(&mut out, v);
            }
            Step::Delete(k) => {
                out.extend_from_slice(b"DELETE ");
                lit(&mut out, k);
            }
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"COMMIT\n");
    out
}

/// The "mixed" scenario: a bulk transaction of 200 keys plus awkward binary keys, a
/// value over 64 KiB, then small transactions that overwrite and delete (leaving obsolete
/// and DELETE records behind in twoskip/skiplist).
fn mixed_scenario() -> Vec<Vec<Step>> {
    let mut bulk: Vec<Step> = (0..200)
        .map(|i| {
            Step::Set(
                format!("user.u{i:03}").into_bytes(),
                format!("%(A %(u{i} lrswipkxtecdan) I {i:08x})").into_bytes(),
            )
        })
        .collect();
    let binary: [(&[u8], &[u8]); 12] = [
        (b"bin\x00nul", b"nul\x00value"),
        (b"tab\tkey", b"tab\tvalue"),
        (b"lf\nkey", b"lf\nvalue"),
        (b"cr\rkey", b""),
        (b"\xff\xfehigh", b"\xff"),
        (b"a\xe9", b"signed sorts me first"),
        (b"ab", b"after a\xe9 in raw order"),
        (b"dot.x", b"mbox order puts me first"),
        (b"dot-x", b""),
        (b"\x01ctl", b"\x1f\x1d"),
        (b"Nuser\x1falice", b"%(T e)"),
        (b"empty", b""),
    ];
    bulk.extend(
        binary
            .iter()
            .map(|(k, v)| Step::Set(k.to_vec(), v.to_vec())),
    );
    let big: Vec<u8> = (0..66_000u32)
        .map(|i| b"0123456789abcdef"[(i % 16) as usize])
        .collect();
    vec![
        bulk,
        vec![Step::Set(b"big".to_vec(), big)],
        vec![Step::Set(b"user.u010".to_vec(), b"overwritten".to_vec())],
        vec![
            Step::Delete(b"user.u011".to_vec()),
            Step::Delete(b"tab\tkey".to_vec()),
        ],
        vec![
            Step::Set(b"user.u012".to_vec(), b"".to_vec()),
            Step::Set(b"user.u012".to_vec(), b"twice in one txn".to_vec()),
            Step::Delete(b"user.u199".to_vec()),
        ],
        vec![Step::Set(b"tab\tkey".to_vec(), b"back again".to_vec())],
        vec![Step::Delete(b"user.u000".to_vec())],
    ]
}

/// What `cyr_dbtool show` prints for these pairs (`printer_cb`: key TAB value LF).
fn show_bytes<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(b'\t');
        out.extend_from_slice(v.as_ref());
        out.push(b'\n');
    }
    out
}

/// Our reader's view of `buf` in `show` format, plus `verify()`'s findings; also
/// checks the raw layer round-trips the file.
fn read_with_cyrkit(buf: &[u8], backend: Backend) -> (Vec<u8>, Vec<String>) {
    match backend {
        Backend::Twoskip => {
            let db = twoskip::TwoskipDb::open(buf).unwrap();
            let pairs: Vec<_> = db.iter().collect::<Result<_, _>>().unwrap();
            assert_eq!(
                twoskip::parse_raw(buf).unwrap().to_bytes(),
                buf,
                "twoskip raw round trip"
            );
            (
                show_bytes(pairs),
                db.verify().iter().map(|e| e.to_string()).collect(),
            )
        }
        Backend::Skiplist => {
            let db = skiplist::SkiplistDb::open(buf).unwrap();
            let pairs: Vec<_> = db.iter().collect::<Result<_, _>>().unwrap();
            assert_eq!(
                skiplist::parse_raw(buf).unwrap().to_bytes(),
                buf,
                "skiplist raw round trip"
            );
            (
                show_bytes(pairs),
                db.verify().iter().map(|e| e.to_string()).collect(),
            )
        }
        Backend::Flat => {
            let db = flat::FlatDb::open(buf).unwrap();
            let pairs: Vec<_> = db.iter().collect::<Result<_, _>>().unwrap();
            assert_eq!(flat::parse_raw(buf).to_bytes(), buf, "flat raw round trip");
            (
                show_bytes(pairs),
                db.verify().iter().map(|e| e.to_string()).collect(),
            )
        }
    }
}

/// The scenario's final state, sorted by the backend's order.
fn as_ops(steps: &[Step]) -> Vec<Op<'_>> {
    steps
        .iter()
        .map(|s| match s {
            Step::Set(k, v) => Op::Set(k, v),
            Step::Delete(k) => Op::Delete(k),
        })
        .collect()
}

fn model(backend: Backend, txns: &[Vec<Step>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut m = BTreeMap::new();
    for s in txns.iter().flatten() {
        match s {
            Step::Set(k, v) => m.insert(k.clone(), v.clone()),
            Step::Delete(k) => m.remove(k),
        };
    }
    let mut v: Vec<_> = m.into_iter().collect();
    match backend {
        Backend::Flat => {
            v.sort_by(|a, b| KeyOrder::Mbox.compare(&flat::encode(&a.0), &flat::encode(&b.0)))
        }
        _ => v.sort_by(|a, b| backend.default_order().compare(&a.0, &b.0)),
    }
    v
}

fn twoskip_stats(buf: &[u8]) -> (usize, usize, u8) {
    let raw = twoskip::parse_raw(buf).unwrap();
    let recs: Vec<_> = raw
        .records
        .iter()
        .filter_map(|r| match r {
            twoskip::RawRecord::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    let live = twoskip::TwoskipDb::open(buf).unwrap().iter().count();
    let records = recs.iter().filter(|r| r.kind == twoskip::RECORD).count();
    let deletes = recs.iter().filter(|r| r.kind == twoskip::DELETE).count();
    let maxlevel = recs
        .iter()
        .filter(|r| r.kind == twoskip::RECORD)
        .map(|r| r.level)
        .max()
        .unwrap_or(0);
    (records - live, deletes, maxlevel)
}

#[test]
fn cyrus_written_files_read_identically_and_round_trip() {
    let Some(cyrus) = Cyrus::new() else { return };
    let txns = mixed_scenario();
    for backend in BACKENDS {
        let file = cyrus.path(&format!("{}-mixed.db", backend.name()));
        cyrus.run_transactions(&file, backend, &txns);
        let shown = cyrus.show(&file, backend);
        let buf = fs::read(&file).unwrap();
        let (ours, problems) = read_with_cyrkit(&buf, backend);
        assert_eq!(
            ours, shown,
            "{backend:?}: our reader differs from cyr_dbtool show"
        );
        assert_eq!(
            shown,
            show_bytes(model(backend, &txns)),
            "{backend:?}: scenario not applied as intended"
        );
        assert_eq!(problems, Vec::<String>::new(), "{backend:?}");
        if backend == Backend::Twoskip {
            let (obsolete, deletes, maxlevel) = twoskip_stats(&buf);
            assert!(
                obsolete > 0 && deletes > 0 && maxlevel > 1,
                "{obsolete} {deletes} {maxlevel}"
            );
        }
        if backend == Backend::Skiplist {
            let raw = skiplist::parse_raw(&buf).unwrap();
            assert!(raw
                .records
                .iter()
                .any(|r| matches!(r, skiplist::Record::Delete { .. })));
        }
        if backend != Backend::Flat {
            check_damaged(&cyrus, backend, &buf, &shown);
        }
        if std::env::var_os("CYRKIT_REGEN_FIXTURES").is_some() {
            let name = format!("{}-mixed", backend.name());
            fs::create_dir_all(fixtures_dir()).unwrap();
            fs::write(fixtures_dir().join(format!("{name}.db")), &buf).unwrap();
            fs::write(fixtures_dir().join(format!("{name}.show")), &shown).unwrap();
        }
    }
}

/// `cyr_dbtool damage` stores `INVALID` in a transaction and dies before committing.
/// We must read the pre-crash state and report the dirty/uncommitted tail; Cyrus's own
/// recovery on the next open must then agree with us.
fn check_damaged(cyrus: &Cyrus, backend: Backend, clean: &[u8], shown: &[u8]) {
    let file = cyrus.put(&format!("damaged-{}.db", backend.name()), clean);
    let _ = cyrus.dbtool(&file, backend, &["damage"], b"");
    let buf = fs::read(&file).unwrap();
    assert!(
        buf.len() > clean.len(),
        "{backend:?}: damage appended nothing"
    );
    let (ours, problems) = read_with_cyrkit(&buf, backend);
    assert_same(&ours, shown, &format!("{backend:?}: reader after damage"));
    assert!(
        problems.iter().any(|p| p.contains("uncommitted")),
        "{backend:?}: {problems:?}"
    );
    // skiplist recovers only files older than the recovery epoch (as after a master
    // restart); until then Cyrus follows the in-place pointers into the torn tail.
    cyrus.set_skipstamp(u32::MAX);
    assert_same(
        &cyrus.show(&file, backend),
        shown,
        &format!("{backend:?}: after Cyrus recovery"),
    );
    cyrus.set_skipstamp(1);
}

/// Compare two `show` outputs, reporting the first differing line instead of
/// megabytes of bytes.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let diff = got
        .split(|b| *b == b'\n')
        .zip(want.split(|b| *b == b'\n'))
        .find(|(g, w)| g != w)
        .map(|(g, w)| {
            (
                String::from_utf8_lossy(&g[..g.len().min(200)]).into_owned(),
                String::from_utf8_lossy(&w[..w.len().min(200)]).into_owned(),
            )
        });
    panic!(
        "{what}: {} vs {} bytes; first differing line: {diff:?}",
        got.len(),
        want.len()
    );
}

/// Pairs for the writer tests, in raw order (re-sorted per backend).
fn writer_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut p: Vec<(Vec<u8>, Vec<u8>)> = (0..400)
        .map(|i| {
            (
                format!("Nuser\x1fu{i:04}").into_bytes(),
                format!("%(T e M {i})").into_bytes(),
            )
        })
        .collect();
    p.push((b"a\xe9".to_vec(), b"x".to_vec()));
    p.push((b"ab".to_vec(), Vec::new()));
    p.push((b"bin\x00\t\n\r\xff".to_vec(), b"v\x00\t\n\r\xff".to_vec()));
    p.push((b"big".to_vec(), vec![b'z'; 70_000]));
    p.push((b"long-key-".repeat(7300), b"long key".to_vec()));
    p
}

#[test]
fn cyrus_reads_our_fresh_files() {
    let Some(cyrus) = Cyrus::new() else { return };
    for backend in BACKENDS {
        let mut pairs = writer_pairs();
        pairs.sort_by(|a, b| backend.default_order().compare(&a.0, &b.0));
        let bytes = match backend {
            Backend::Twoskip => {
                twoskip::write_fresh(&pairs, &twoskip::FreshOptions::default()).unwrap()
            }
            Backend::Skiplist => {
                let opts = skiplist::FreshOptions {
                    last_recovery: 2,
                    ..Default::default()
                };
                skiplist::write_fresh(&pairs, &opts).unwrap()
            }
            Backend::Flat => {
                pairs.sort_by(|a, b| {
                    KeyOrder::Mbox.compare(&flat::encode(&a.0), &flat::encode(&b.0))
                });
                flat::write_fresh(&pairs).unwrap()
            }
        };
        let file = cyrus.put(&format!("fresh-{}.db", backend.name()), &bytes);
        let shown = cyrus.show(&file, backend);
        assert_eq!(
            shown,
            show_bytes(pairs.iter().map(|(k, v)| (k, v))),
            "{backend:?}: cyr_dbtool reads our file differently"
        );
        if backend != Backend::Flat {
            cyrus.assert_consistent(&file, backend);
        }
        assert_eq!(
            fs::read(&file).unwrap(),
            bytes,
            "{backend:?}: Cyrus rewrote our file on read"
        );
    }
}

#[test]
fn cyrus_reads_our_twoskip_transactions_and_continues_them() {
    let Some(cyrus) = Cyrus::new() else { return };
    let txns = mixed_scenario();
    let file = cyrus.path("txn.db");
    cyrus.run_transactions(&file, Backend::Twoskip, &txns[..2]);
    let mut all = txns[..2].to_vec();
    let mut rng = LevelRng::new(42);
    let ours: Vec<Vec<Step>> = vec![
        vec![
            Step::Set(b"user.u050".to_vec(), b"set by cyrkit".to_vec()),
            Step::Delete(b"user.u051".to_vec()),
            Step::Set(b"zz new".to_vec(), b"".to_vec()),
        ],
        vec![
            Step::Delete(b"big".to_vec()),
            Step::Set(b"\x00first".to_vec(), b"x".to_vec()),
        ],
        vec![
            Step::Set(b"user.u050".to_vec(), b"again".to_vec()),
            Step::Delete(b"zz new".to_vec()),
        ],
    ];
    for txn in &ours {
        let buf = fs::read(&file).unwrap();
        let ops = as_ops(txn);
        let plan = twoskip::append_transaction(&buf, &ops, KeyOrder::Raw, &mut rng)
            .unwrap()
            .unwrap();
        cyrus.put("txn.db", &plan.apply(&buf));
        all.push(txn.clone());
        assert_eq!(
            cyrus.show(&file, Backend::Twoskip),
            show_bytes(model(Backend::Twoskip, &all))
        );
        cyrus.assert_consistent(&file, Backend::Twoskip);
    }
    // Cyrus writes on top of our transactions; we read its result.
    cyrus.run_transactions(&file, Backend::Twoskip, &txns[2..]);
    all.extend_from_slice(&txns[2..]);
    let shown = cyrus.show(&file, Backend::Twoskip);
    assert_same(
        &shown,
        &show_bytes(model(Backend::Twoskip, &all)),
        "Cyrus after us",
    );
    let buf = fs::read(&file).unwrap();
    let (read, problems) = read_with_cyrkit(&buf, Backend::Twoskip);
    assert_same(&read, &shown, "our reader after Cyrus");
    assert_eq!(problems, Vec::<String>::new());
}

/// The committed fixtures (made by Cyrus, see fixtures/db/README.md): reader output
/// equals the saved `cyr_dbtool show` output, verify finds nothing, raw round-trips.
#[test]
fn fixtures_read_identically_and_round_trip() {
    let mut seen = 0;
    for backend in BACKENDS {
        let base = fixtures_dir().join(format!("{}-mixed", backend.name()));
        let buf = fs::read(base.with_extension("db")).unwrap();
        let shown = fs::read(base.with_extension("show")).unwrap();
        assert_eq!(
            detect(&buf),
            if backend == Backend::Flat {
                None
            } else {
                Some(backend)
            }
        );
        let (ours, problems) = read_with_cyrkit(&buf, backend);
        assert_same(&ours, &shown, &format!("{backend:?} fixture"));
        assert_eq!(problems, Vec::<String>::new(), "{backend:?}");
        seen += 1;
    }
    assert_eq!(seen, 3);
    let (obsolete, deletes, maxlevel) =
        twoskip_stats(&fs::read(fixtures_dir().join("twoskip-mixed.db")).unwrap());
    assert!(obsolete > 0 && deletes > 0 && maxlevel > 1);
}

/// Every twoskip/skiplist database in the spool fixtures (mailboxes.db, quotas.db,
/// annotations, deliver, conversations, seen — written by a real Cyrus instance) and
/// every flat subscription file: reads completely, `get` finds every key, verify finds
/// nothing, raw round-trips.
#[test]
fn spool_fixture_databases_read_and_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut checked = Vec::new();
    let cyrus = Cyrus::new();
    for layout in ["legacy", "uuid"] {
        let dir = root.join(layout);
        if !dir.exists() {
            continue;
        }
        for e in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let e = e.unwrap();
            if !e.file_type().is_file() {
                continue;
            }
            let buf = fs::read(e.path()).unwrap();
            let name = e.path().strip_prefix(&root).unwrap().display().to_string();
            let backend = match detect(&buf) {
                Some(b) => b,
                None if name.ends_with(".sub") => Backend::Flat,
                None => continue,
            };
            let (shown, problems) = read_with_cyrkit(&buf, backend);
            assert_eq!(problems, Vec::<String>::new(), "{name}");
            let n = match backend {
                Backend::Twoskip => {
                    let db = twoskip::TwoskipDb::open(&buf).unwrap();
                    for r in db.iter() {
                        let (k, v) = r.unwrap();
                        assert_eq!(db.get(k).unwrap(), Some(v), "{name}");
                    }
                    db.iter().count()
                }
                Backend::Skiplist => skiplist::SkiplistDb::open(&buf).unwrap().len(),
                Backend::Flat => flat::FlatDb::open(&buf).unwrap().len(),
            };
            assert!(n > 0 || buf.len() < 512, "{name}: no records read");
            if let Some(cyrus) = &cyrus {
                let copy = cyrus.put(&format!("fixture-{}.db", checked.len()), &buf);
                assert_eq!(
                    cyrus.show(&copy, backend),
                    shown,
                    "{name}: differs from cyr_dbtool show"
                );
            }
            checked.push(name);
        }
    }
    if root.join("legacy").exists() {
        for must in [
            "legacy/conf/mailboxes.db",
            "uuid/conf/mailboxes.db",
            "uuid/conf/quotas.db",
        ] {
            assert!(
                checked.iter().any(|c| c == must),
                "{must} not checked: {checked:?}"
            );
        }
    }
    eprintln!("checked {} databases", checked.len());
}

/// A transaction of ours cut short after every one of its writes (the states a crash
/// can leave between fsyncs, taken in order): Cyrus opens each, runs its recovery on the
/// dirty ones, and shows the state before the transaction until our committed header is
/// written, the state after once it is; the recovered file is consistent.
#[test]
fn cyrus_recovers_our_transaction_cut_at_every_write() {
    let Some(cyrus) = Cyrus::new() else { return };
    let txns = mixed_scenario();
    let file = cyrus.path("crash.db");
    cyrus.run_transactions(&file, Backend::Twoskip, &txns[..3]);
    let buf = fs::read(&file).unwrap();
    let before = show_bytes(model(Backend::Twoskip, &txns[..3]));
    let ours = vec![
        Step::Set(b"user.u100".to_vec(), b"set by cyrkit".to_vec()),
        Step::Delete(b"user.u101".to_vec()),
        Step::Set(b"a new key".to_vec(), vec![b'v'; 300]),
        Step::Set(b"user.u102".to_vec(), b"".to_vec()),
    ];
    let mut all = txns[..3].to_vec();
    all.push(ours.clone());
    let after = show_bytes(model(Backend::Twoskip, &all));
    let ops = as_ops(&ours);
    let plan = twoskip::append_transaction(&buf, &ops, KeyOrder::Raw, &mut LevelRng::new(3))
        .unwrap()
        .unwrap();
    let mut steps = vec![(0u64, plan.dirty_header.to_vec())];
    steps.extend(plan.writes.iter().cloned());
    steps.push((0, plan.commit_header.to_vec()));
    assert!(steps.len() > 5, "a transaction with several head rewrites");
    for cut in 1..=steps.len() {
        let mut f = buf.clone();
        for (off, bytes) in &steps[..cut] {
            let (off, end) = (*off as usize, *off as usize + bytes.len());
            if f.len() < end {
                f.resize(end, 0);
            }
            f[off..end].copy_from_slice(bytes);
        }
        let p = cyrus.put("crash.db", &f);
        let want = if cut == steps.len() { &after } else { &before };
        assert_same(
            &cyrus.show(&p, Backend::Twoskip),
            want,
            &format!("cut {cut}"),
        );
        cyrus.assert_consistent(&p, Backend::Twoskip);
        // What Cyrus left (recovered) reads the same with ours.
        let (read, problems) = read_with_cyrkit(&fs::read(&p).unwrap(), Backend::Twoskip);
        assert_same(&read, want, &format!("cyrkit after Cyrus, cut {cut}"));
        assert_eq!(problems, Vec::<String>::new(), "cut {cut}");
    }
}
