//! Crash consistency of `cyrkit serve` over a real Cyrus 3.6 spool: an LMTP delivery to three
//! recipients (single-instance store) and a POP3 session with DELEs + QUIT, each killed at
//! every durable step (`CYRKIT_CRASH_AT=N`: the server aborts at its N-th crash point in
//! `spool::append`, the quota and deliver.db writers) and at random instants (SIGKILL).
//! After every kill:
//! - every message file that was committed (or there before) exists with the same bytes;
//! - every delivery acknowledged with 250 is in its mailbox, every QUIT answered `+OK` has
//!   expunged its messages;
//! - Cyrus's imapd opens every mailbox, and its `reconstruct -n` reports nothing but
//!   "uid N found - adding" for a file of an unacknowledged delivery;
//! - quota usage is never lower than the messages present;
//! - the same delivery (or QUIT) run again completes.
//!
//! A QUIT killed between rewriting its records and writing the index header leaves the
//! header stale (a record modseq above `highestmodseq`; Cyrus's own `mailbox_commit` has the
//! same window). After every POP3 kill the next cyrkit session on the mailbox (a POP3 login +
//! QUIT, or an LMTP delivery, in turn) must repair it and log so, and only then is
//! `reconstruct -n` run, with no tolerance. The repair itself is killed at each of its
//! crash points too.

#[path = "serve_rel/common.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use cyrkit::format::index::Index;
use support::cyrus::{require_cyrus, CyrusInstance, CyrusOptions, TMPDIR_ENV};

const RCPTS: [&str; 3] = ["crash1", "crash2", "crash3"];
const POPPER: &str = "popper";

struct Rig {
    cy: CyrusInstance,
    lport: u16,
    pport: u16,
    passwd: PathBuf,
    /// Message files that must never change or go: there before, or committed since.
    known: BTreeMap<PathBuf, [u8; 20]>,
    /// (user, id) acknowledged with 250.
    acked: BTreeSet<(String, String)>,
    /// POP3 UIDLs whose DELE was acknowledged by QUIT `+OK`.
    expunged_ids: BTreeSet<String>,
    kills: usize,
    crash_point_kills: usize,
    /// Time spent in: server start-ups, file checks, imapd, reconstruct -n.
    timing: [Duration; 4],
    /// POP3 kills after the index records were rewritten but before the index header (see
    /// the module doc): counts and modseqs in the header are stale until repaired.
    torn_quit: usize,
    /// Repairs of such a header seen in a server's log.
    repaired: usize,
    /// Repair sessions run after POP3 kills (alternating POP3 and LMTP).
    repair_sessions: usize,
    /// popper's `cyrus.index`.
    popper_index: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let users: Vec<String> = RCPTS
            .iter()
            .chain([&POPPER])
            .map(|s| s.to_string())
            .collect();
        let cy = cyrus_with_users(
            CyrusOptions::default().with("allowplaintext", "yes"),
            &users,
        );
        let passwd = passwd_file(&cy, &[(POPPER, "pw")]);
        let [lport, pport] = free_ports(2)[..] else {
            unreachable!()
        };
        let popper_index = walkdir::WalkDir::new(cy.spool_dir())
            .into_iter()
            .flatten()
            .map(|e| e.into_path())
            .find(|p| p.ends_with(format!("user/{POPPER}/cyrus.index")))
            .expect("popper's cyrus.index");
        Rig {
            known: message_files(&cy.spool_dir()),
            cy,
            lport,
            pport,
            passwd,
            acked: BTreeSet::new(),
            expunged_ids: BTreeSet::new(),
            kills: 0,
            crash_point_kills: 0,
            timing: [Duration::ZERO; 4],
            torn_quit: 0,
            repaired: 0,
            repair_sessions: 0,
            popper_index,
        }
    }

    fn server(&mut self, crash_at: Option<usize>) -> Server {
        self.server_logging(crash_at, "error")
    }

    fn server_logging(&mut self, crash_at: Option<usize>, level: &str) -> Server {
        let t = Instant::now();
        let s = self.server_inner(crash_at, level);
        self.timing[0] += t.elapsed();
        s
    }

    fn server_inner(&self, crash_at: Option<usize>, level: &str) -> Server {
        let env: Vec<(&str, String)> = crash_at
            .map(|n| ("CYRKIT_CRASH_AT", n.to_string()))
            .into_iter()
            .collect();
        Server::start(
            &self.cy,
            &[
                "--lmtp".into(),
                format!("127.0.0.1:{}", self.lport),
                "--lmtp-trust-loopback".into(),
                "--pop3".into(),
                format!("127.0.0.1:{}", self.pport),
                "--passwd-file".into(),
                self.passwd.display().to_string(),
                "--log-level".into(),
                level.into(),
            ],
            &env,
            RunAs::Cyrus,
            &[self.lport, self.pport],
        )
    }

    /// Deliver `id` to the three recipients; `sent` is told when the final dot is out.
    /// Returns the reply codes read before the server went away.
    fn deliver(port: u16, id: &str, sent: Option<mpsc::Sender<()>>) -> Vec<u16> {
        let mut codes = Vec::new();
        let r = (|| -> std::io::Result<()> {
            let mut c = lmtp(port)?;
            c.cmd("MAIL FROM:<s@example.org>")?;
            for r in RCPTS {
                let rr = c.cmd(&format!("RCPT TO:<{r}>"))?;
                assert!(rr.starts_with("250"), "RCPT {r}: {rr}");
            }
            let d = c.cmd("DATA")?;
            assert!(d.starts_with("354"), "{d}");
            c.send(&message(id, 40))?;
            c.send(b".\r\n")?;
            c.w.flush()?;
            if let Some(s) = &sent {
                let _ = s.send(());
            }
            for _ in RCPTS {
                let r = c.reply()?;
                codes.push(r.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
            }
            Ok(())
        })();
        if r.is_err() {
            if let Some(s) = &sent {
                let _ = s.send(());
            }
        }
        codes
    }

    fn note_delivery(&mut self, id: &str, codes: &[u16]) {
        for (r, c) in RCPTS.iter().zip(codes) {
            if *c == 250 {
                self.acked.insert((r.to_string(), id.to_string()));
            }
        }
    }

    /// Records of popper's index (within `num_records`) whose modseq is above the header's
    /// `highestmodseq`: the state a commit killed between records and header leaves.
    fn torn_records(&self) -> usize {
        let buf = std::fs::read(&self.popper_index).unwrap();
        let idx = Index::open(&buf).unwrap();
        let h = idx.header().clone();
        idx.records()
            .take(h.num_records as usize)
            .filter(|r| r.as_ref().unwrap().modseq > h.highestmodseq)
            .count()
    }

    /// The next cyrkit session on popper after a POP3 kill: a POP3 login + QUIT or an LMTP
    /// delivery, in turn. A stale header (`torn`) must be repaired by it, and logged.
    fn repair_session(&mut self, what: &str, torn: bool) {
        let mut server = self.server_logging(None, "warn");
        if self.repair_sessions % 2 == 0 {
            let mut c = pop3_login(self.pport, POPPER, "pw").unwrap();
            let r = c.cmd("QUIT").unwrap();
            assert!(r.starts_with("+OK"), "{what}: repair QUIT: {r}");
        } else {
            let id = format!("repair{}", self.repair_sessions);
            let mut c = lmtp(self.lport).unwrap();
            let mut acked = Vec::new();
            lmtp_deliver(&mut c, &[POPPER], &message(&id, 20), &mut acked).unwrap();
            assert_eq!(acked, [250], "{what}: repair delivery");
            self.acked.insert((POPPER.into(), id));
        }
        self.repair_sessions += 1;
        assert!(server.stop().is_some_and(|s| s.success()));
        let log = server.output();
        let logged = log
            .lines()
            .filter(|l| l.contains("repaired cyrus.index header"))
            .count();
        assert_eq!(
            logged,
            usize::from(torn),
            "{what}: stale header {torn}, repair lines in the log:\n{log}"
        );
        assert!(
            log.contains(&format!("user.{POPPER}: repaired")) || !torn,
            "{what}: the repair line names the mailbox:\n{log}"
        );
        if torn && self.repaired == 0 {
            let line = log
                .lines()
                .find(|l| l.contains("repaired cyrus.index header"));
            eprintln!(
                "crash: first repair after {what}: {}",
                line.unwrap_or_default()
            );
        }
        self.repaired += logged;
        assert_eq!(
            self.torn_records(),
            0,
            "{what}: still stale after a session"
        );
    }

    /// The checks after each kill (see the module doc). `pop3`: the POP3 phase (only
    /// popper changes; a stale header is repaired by a cyrkit session before Cyrus looks).
    fn check(&mut self, what: &str, pop3: bool) {
        // Only the mailboxes the phase writes to (the others do not change).
        let users: Vec<&str> = if pop3 { vec![POPPER] } else { RCPTS.to_vec() };
        let t = Instant::now();
        let spool = self.cy.spool_dir();
        let now = message_files(&spool);
        for (p, h) in &self.known {
            match now.get(p) {
                Some(h2) if h2 == h => {}
                Some(_) => panic!("{what}: {} changed", p.display()),
                None => panic!("{what}: {} is gone", p.display()),
            }
        }
        let torn = pop3 && self.torn_records() > 0;
        if torn {
            self.torn_quit += 1;
        }
        self.timing[1] += t.elapsed();
        if pop3 {
            self.repair_session(what, torn);
        }
        // Cyrus's view: imapd opens every mailbox; acknowledged mail is there.
        let t = Instant::now();
        let listed = imap_message_ids_of(&self.cy, &users);
        for (u, msgs) in users.iter().zip(listed) {
            let present: BTreeSet<&str> = msgs.iter().map(|(id, _)| id.as_str()).collect();
            for (user, id) in self.acked.iter().filter(|(user, _)| user == u) {
                assert!(
                    present.contains(id.as_str()),
                    "{what}: acknowledged {id} missing from {user}"
                );
            }
            if *u == POPPER {
                for id in &self.expunged_ids {
                    assert!(
                        !present.contains(id.as_str()),
                        "{what}: {id} still in {u} after QUIT +OK"
                    );
                }
            }
            let size: u64 = msgs.iter().map(|(_, s)| s).sum();
            let used = quota_used(&self.cy, u);
            assert!(
                used >= size,
                "{what}: quota of user.{u} is {used}, messages present {size}"
            );
        }
        self.timing[2] += t.elapsed();
        let t = Instant::now();
        let boxes: Vec<String> = users.iter().map(|u| format!("user.{u}")).collect();
        let boxes: Vec<&str> = boxes.iter().map(String::as_str).collect();
        let rn = reconstruct_n_of(&self.cy, &boxes);
        self.timing[3] += t.elapsed();
        for line in rn.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut words = line.split_whitespace();
            let mailbox = words.next().unwrap_or_default();
            let rest: Vec<&str> = words.collect();
            let user = mailbox
                .strip_prefix("user.")
                .unwrap_or_default()
                .to_string();
            match rest[..] {
                // Progress: the mailbox name alone.
                [] => {}
                // A message file without a record: only from a delivery never acknowledged.
                ["uid", uid, "found", "-", "adding"] => {
                    let file = message_files(&spool)
                        .into_keys()
                        .find(|p| {
                            p.file_name() == Some(format!("{uid}.").as_ref())
                                && p.parent().and_then(|d| d.file_name()) == Some(user.as_ref())
                        })
                        .unwrap_or_else(|| panic!("{what}: {line}: no such file"));
                    let id = message_id(&file);
                    assert!(
                        !self.acked.contains(&(user.clone(), id.clone())),
                        "{what}: acknowledged {id} has no record in {mailbox}: {line}"
                    );
                }
                _ => panic!("{what}: reconstruct -n reports {line:?}\n{rn}"),
            }
        }
        // Files of deliveries now acknowledged, and every file a record points at, are
        // from now on known.
        for (p, h) in now {
            if self.known.contains_key(&p) {
                continue;
            }
            let user = p
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = message_id(&p);
            if self.acked.contains(&(user, id)) {
                self.known.insert(p, h);
            }
        }
    }
}

/// The local part of a message file's Message-ID.
fn message_id(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.split('@').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn lmtp_delivery_and_pop3_quit_survive_kills_at_every_step() {
    if !require_cyrus() {
        return;
    }
    // A killed process loses nothing the page cache holds, so the spool can live in memory
    // (tmpfs): the same crash states, without the hundreds of fsyncs' wait per iteration.
    // (Only this test runs in this binary, so setting the variable here is race-free.)
    if std::env::var_os(TMPDIR_ENV).is_none() && std::path::Path::new("/dev/shm").is_dir() {
        std::env::set_var(TMPDIR_ENV, "/dev/shm");
    }
    let started = Instant::now();
    let mut rig = Rig::new();

    // --- LMTP: every crash point of a 3-recipient delivery.
    let mut steps = 0;
    for n in 1..=300 {
        let id = format!("cp{n}");
        let mut server = rig.server(Some(n));
        let codes = Rig::deliver(rig.lport, &id, None);
        rig.note_delivery(&id, &codes);
        if codes == [250, 250, 250] && server.wait_exit(Duration::from_millis(300)).is_none() {
            // No crash point left: the delivery completed.
            steps = n - 1;
            assert!(server.stop().is_some_and(|s| s.success()));
            rig.check("complete delivery", false);
            break;
        }
        let st = server.wait_exit(Duration::from_secs(10));
        assert!(st.is_some(), "server did not abort at crash point {n}");
        rig.kills += 1;
        rig.crash_point_kills += 1;
        rig.check(&format!("LMTP crash point {n} (codes {codes:?})"), false);
        // The same message again, to completion.
        let mut server = rig.server(None);
        let again = Rig::deliver(rig.lport, &id, None);
        assert_eq!(again, [250, 250, 250], "re-delivery after crash point {n}");
        rig.note_delivery(&id, &again);
        // Every reply is in: stopping by SIGKILL saves the graceful drain's wait.
        server.kill9();
    }
    assert!(steps > 10, "only {steps} crash points in a delivery");
    eprintln!(
        "crash: a 3-recipient delivery has {steps} crash points ({:?})",
        started.elapsed()
    );

    // --- LMTP: SIGKILL at random instants after the final dot.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t = Instant::now();
    {
        let server = rig.server(None);
        let codes = Rig::deliver(rig.lport, "timing", None);
        rig.note_delivery("timing", &codes);
        drop(server);
    }
    let span = t.elapsed().as_micros().max(2_000) as u64;
    for k in 0..45 {
        let id = format!("rk{k}");
        let mut server = rig.server(None);
        let (tx, rx) = mpsc::channel();
        let port = rig.lport;
        let id2 = id.clone();
        let h = std::thread::spawn(move || Rig::deliver(port, &id2, Some(tx)));
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_micros(next() % span));
        server.kill9();
        let codes = h.join().unwrap();
        rig.note_delivery(&id, &codes);
        rig.kills += 1;
        rig.check(&format!("LMTP kill {k} (codes {codes:?})"), false);
        let mut server = rig.server(None);
        let again = Rig::deliver(rig.lport, &id, None);
        assert_eq!(again, [250, 250, 250], "re-delivery after kill {k}");
        rig.note_delivery(&id, &again);
        server.kill9();
    }

    eprintln!("crash: LMTP random kills done ({:?})", started.elapsed());

    // --- POP3: DELE two messages and QUIT, at every crash point, then at random instants.
    let top_up = |rig: &mut Rig, n: usize| {
        let mut server = rig.server(None);
        let mut c = lmtp(rig.lport).unwrap();
        for i in 0..n {
            let id = format!("pop{}-{i}", rig.kills);
            let mut acked = Vec::new();
            lmtp_deliver(&mut c, &[POPPER], &message(&id, 20), &mut acked).unwrap();
            assert_eq!(acked, [250]);
            rig.acked.insert((POPPER.into(), id));
        }
        server.kill9();
    };
    top_up(&mut rig, 6);
    let quit = |rig: &mut Rig, crash_at: Option<usize>, kill_after: Option<Duration>| -> bool {
        let mut server = rig.server(crash_at);
        let mut c = pop3_login(rig.pport, POPPER, "pw").unwrap();
        let mut ids = Vec::new();
        for n in 1..=2 {
            c.send(format!("TOP {n} 0\r\n").as_bytes()).unwrap();
            let head = String::from_utf8(c.multi().unwrap()).unwrap();
            let id = head
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: <"))
                .and_then(|l| l.split('@').next())
                .unwrap()
                .to_string();
            ids.push(id);
            assert!(c.cmd(&format!("DELE {n}")).unwrap().starts_with("+OK"));
        }
        // Deleted by request: present or not, either is right until QUIT says +OK.
        for id in &ids {
            rig.acked.remove(&(POPPER.to_string(), id.clone()));
        }
        c.send(b"QUIT\r\n").unwrap();
        if let Some(d) = kill_after {
            std::thread::sleep(d);
            server.kill9();
        }
        let ok = c.line().is_ok_and(|l| l == "+OK\r\n");
        if ok {
            for id in &ids {
                rig.expunged_ids.insert(id.clone());
            }
        }
        let crashed = if kill_after.is_some() {
            true
        } else {
            server.wait_exit(Duration::from_millis(300)).is_some()
        };
        if !crashed {
            assert!(server.stop().is_some_and(|s| s.success()));
        }
        crashed
    };
    let mut pop_steps = 0;
    for n in 1..=100 {
        if imap_message_ids(&rig.cy, POPPER).len() < 2 {
            top_up(&mut rig, 6);
        }
        let crashed = quit(&mut rig, Some(n), None);
        if !crashed {
            pop_steps = n - 1;
            rig.check("complete QUIT", true);
            break;
        }
        rig.kills += 1;
        rig.crash_point_kills += 1;
        rig.check(&format!("POP3 crash point {n}"), true);
    }
    assert!(pop_steps >= 4, "only {pop_steps} crash points in a QUIT");
    eprintln!(
        "crash: a QUIT with 2 DELEs has {pop_steps} crash points ({:?})",
        started.elapsed()
    );
    if imap_message_ids(&rig.cy, POPPER).len() < 2 {
        top_up(&mut rig, 6);
    }
    let t = Instant::now();
    quit(&mut rig, None, None);
    let span = t.elapsed().as_micros().max(2_000) as u64;
    for k in 0..105 {
        if imap_message_ids(&rig.cy, POPPER).len() < 2 {
            top_up(&mut rig, 10);
        }
        let d = Duration::from_micros(next() % (span / 3).max(1000));
        quit(&mut rig, None, Some(d));
        rig.kills += 1;
        rig.check(&format!("POP3 kill {k} after {d:?}"), true);
    }
    // --- The repair killed at each of its crash points: a QUIT killed at its first crash
    // point (records rewritten, header not) leaves the header stale, then a POP3 login
    // repairs it with CYRKIT_CRASH_AT=n.
    let mut repair_steps = 0;
    for n in 1..=20 {
        if imap_message_ids(&rig.cy, POPPER).len() < 2 {
            top_up(&mut rig, 6);
        }
        assert!(quit(&mut rig, Some(1), None), "QUIT crash point 1");
        assert!(
            rig.torn_records() > 0,
            "QUIT crash point 1 leaves no stale header"
        );
        rig.kills += 1;
        rig.crash_point_kills += 1;
        let mut server = rig.server(Some(n));
        let login = pop3_login(rig.pport, POPPER, "pw");
        if login.is_ok() && server.wait_exit(Duration::from_millis(300)).is_none() {
            // The login's repair ran to its end; no QUIT (that would commit).
            drop(login);
            assert!(server.stop().is_some_and(|s| s.success()));
            assert_eq!(rig.torn_records(), 0, "a completed login repairs");
            repair_steps = n - 1;
            rig.check("repair by a login", true);
            break;
        }
        assert!(
            server.wait_exit(Duration::from_secs(10)).is_some(),
            "server did not abort at repair crash point {n}"
        );
        rig.kills += 1;
        rig.crash_point_kills += 1;
        rig.check(&format!("repair crash point {n}"), true);
    }
    assert!(
        repair_steps >= 2,
        "only {repair_steps} crash points in a repair"
    );
    eprintln!(
        "crash: a repair at login has {repair_steps} crash points, each killed on a header \
         left stale by QUIT crash point 1 ({:?})",
        started.elapsed()
    );

    // A last QUIT completes.
    if imap_message_ids(&rig.cy, POPPER).len() < 2 {
        top_up(&mut rig, 6);
    }
    assert!(!quit(&mut rig, None, None));
    rig.check("final QUIT", true);
    eprintln!(
        "crash: {} kills ({} at crash points: {steps} per delivery, {pop_steps} per QUIT; \
         the rest SIGKILL at random instants) in {:?}; {} acknowledged deliveries checked",
        rig.kills,
        rig.crash_point_kills,
        started.elapsed(),
        rig.acked.len()
    );
    eprintln!(
        "crash: {} POP3 kills left the index header stale (counts, highestmodseq), {} \
         repairs logged by the next session ({} sessions: POP3 login + QUIT and LMTP \
         delivery in turn); time in server \
         start-up {:?}, file checks {:?}, imapd {:?}, reconstruct -n {:?}",
        rig.torn_quit,
        rig.repaired,
        rig.repair_sessions,
        rig.timing[0],
        rig.timing[1],
        rig.timing[2],
        rig.timing[3]
    );
    // The stale state was produced (crash point 1 of every QUIT, and random kills), so
    // the clean `reconstruct -n` after each proves the repair.
    assert!(rig.torn_quit > 0, "no kill left a stale index header");
    assert_eq!(rig.repaired, rig.torn_quit, "a stale header not repaired");
    assert!(rig.kills >= 200, "only {} kills", rig.kills);
    let left = stage_files(&rig.cy.spool_dir());
    eprintln!("crash: stage files left by killed servers: {}", left.len());
}
