//! `cyrkit serve` under load, against a real Cyrus 3.6 spool: 1000 concurrent sessions on one
//! server (500 POP3 logged in and RETR-ing, 500 LMTP delivering into the same mailboxes), all
//! open at the same moment; the connection cap answers the documented busy reply. Afterwards
//! every acknowledged delivery is in its mailbox exactly once (Cyrus's imapd), Cyrus's
//! `reconstruct -n` finds nothing to fix, and the server's peak RSS stayed bounded.

#[path = "serve_rel/common.rs"]
mod common;
mod support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use support::cyrus::{require_cyrus, CyrusOptions};

const POP3_SESSIONS: usize = 500;
const LMTP_SESSIONS: usize = 500;
const USERS: usize = 10;
const PRELOADED: usize = 3;
/// Peak resident memory allowed for the server with 1000 sessions open.
const MAX_HWM_KB: u64 = 256 * 1024;

/// All clients hold their session open until every one has one (or the deadline).
struct Gate {
    n: Mutex<usize>,
    cv: Condvar,
    want: usize,
}

impl Gate {
    fn arrive_and_wait(&self, deadline: Instant) {
        let mut n = self.n.lock().unwrap();
        *n += 1;
        self.cv.notify_all();
        while *n < self.want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = self.cv.wait_timeout(n, left).unwrap().0;
        }
    }
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 16384 {
            lim.rlim_cur = lim.rlim_max.min(16384);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn thousand_concurrent_pop3_and_lmtp_sessions() {
    if !require_cyrus() {
        return;
    }
    raise_nofile();
    let users: Vec<String> = (0..USERS).map(|i| format!("load{i}")).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let creds: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), "pw")).collect();
    let Served {
        mut server,
        cy,
        lport,
        pport,
    } = serve_lmtp_pop3(
        CyrusOptions::default().with("allowplaintext", "yes"),
        &user_refs,
        &creds,
        true,
        &["--max-connections", "1100", "--log-level", "warn"],
        RunAs::Cyrus,
    );
    // Something to RETR: 3 messages of ~20 KB per user.
    let mut c = lmtp(lport).unwrap();
    for u in &users {
        for k in 0..PRELOADED {
            let mut acked = Vec::new();
            lmtp_deliver(
                &mut c,
                &[u],
                &message(&format!("pre-{u}-{k}"), 600),
                &mut acked,
            )
            .unwrap();
            assert_eq!(acked, [250]);
        }
    }
    drop(c);
    let base_kb = server.status_kb("VmRSS");
    reset_hwm(server.pid);

    let gate = Arc::new(Gate {
        n: Mutex::new(0),
        cv: Condvar::new(),
        want: POP3_SESSIONS + LMTP_SESSIONS,
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..POP3_SESSIONS + LMTP_SESSIONS {
        let gate = gate.clone();
        let user = users[i % USERS].clone();
        let h = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || -> Result<Vec<u16>, String> {
                if i < POP3_SESSIONS {
                    let r = pop3_login(pport, &user, "pw").map_err(|e| e.to_string());
                    gate.arrive_and_wait(deadline);
                    let mut c = r?;
                    for k in 1..=PRELOADED {
                        c.send(format!("RETR {k}\r\n").as_bytes()).unwrap();
                        let m = c.multi().map_err(|e| format!("RETR {k}: {e}"))?;
                        let want = format!("pre-{user}-{}@test", k - 1);
                        if !String::from_utf8_lossy(&m).contains(&want) || m.len() < 10_000 {
                            return Err(format!("RETR {k} of {user}: wrong message"));
                        }
                    }
                    let q = c.cmd("QUIT").map_err(|e| e.to_string())?;
                    if !q.starts_with("+OK") {
                        return Err(format!("QUIT {q:?}"));
                    }
                    Ok(Vec::new())
                } else {
                    let r = lmtp(lport).map_err(|e| e.to_string());
                    gate.arrive_and_wait(deadline);
                    let mut c = r?;
                    let mut acked = Vec::new();
                    lmtp_deliver(
                        &mut c,
                        &[&user],
                        &message(&format!("load-{i}"), 20),
                        &mut acked,
                    )
                    .map_err(|e| format!("delivery {i}: {e}"))?;
                    let _ = c.cmd("QUIT");
                    Ok(acked)
                }
            })
            .unwrap();
        handles.push(h);
    }
    // The server's thread count while every session is open.
    let mut peak_threads = 0;
    while *gate.n.lock().unwrap() < gate.want && Instant::now() < deadline {
        peak_threads = peak_threads.max(server.threads());
        std::thread::sleep(Duration::from_millis(20));
    }
    peak_threads = peak_threads.max(server.threads());
    let mut failures = Vec::new();
    let mut acked = vec![None; POP3_SESSIONS + LMTP_SESSIONS];
    for (i, h) in handles.into_iter().enumerate() {
        match h.join().unwrap() {
            Ok(codes) => acked[i] = Some(codes),
            Err(e) => failures.push(format!("session {i}: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let hwm_kb = server.status_kb("VmHWM");
    assert!(
        server.try_wait().is_none(),
        "server died:\n{}",
        server.output()
    );
    assert!(
        failures.is_empty(),
        "{} of 1000 sessions failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        server.output()
    );
    assert!(
        peak_threads > (POP3_SESSIONS + LMTP_SESSIONS) as u64,
        "the 1000 sessions were not open at once: {peak_threads} server threads at most"
    );
    eprintln!(
        "load: 1000 sessions in {elapsed:?}; server threads at peak {peak_threads}; \
         RSS before {base_kb} kB, peak (VmHWM) {hwm_kb} kB"
    );
    assert!(
        hwm_kb < MAX_HWM_KB,
        "peak RSS {hwm_kb} kB with 1000 sessions (limit {MAX_HWM_KB} kB)"
    );
    let status = server.stop();
    assert!(status.is_some_and(|s| s.success()), "{}", server.output());

    // Every acknowledged delivery exactly once, in the right mailbox.
    for (u_i, u) in users.iter().enumerate() {
        let ids = imap_message_ids(&cy, u);
        let mut want: Vec<String> = (0..PRELOADED).map(|k| format!("pre-{u}-{k}")).collect();
        for i in (POP3_SESSIONS..POP3_SESSIONS + LMTP_SESSIONS).filter(|i| i % USERS == u_i) {
            assert_eq!(acked[i].as_deref(), Some(&[250u16][..]), "delivery {i}");
            want.push(format!("load-{i}"));
        }
        let mut got: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "mailbox user.{u}");
    }
    let rn = reconstruct_n(&cy);
    assert!(
        !rn.contains("found") && !rn.contains("ERROR") && !rn.contains("mismatch"),
        "reconstruct -n after the load:\n{rn}"
    );
    assert!(
        stage_files(&cy.spool_dir()).is_empty(),
        "stage files left: {:?}",
        stage_files(&cy.spool_dir())
    );
}

/// Above `--max-connections` a client gets the busy reply (LMTP `421 4.3.2`, POP3
/// `-ERR [SYS/TEMP]`) and is closed; the sessions in progress are unaffected and a slot that
/// frees up is usable at once.
#[test]
fn connection_cap_answers_busy_and_frees_slots() {
    if !require_cyrus() {
        return;
    }
    let cap = 20;
    let Served {
        server,
        cy: _cy,
        lport,
        pport,
    } = serve_lmtp_pop3(
        CyrusOptions::default().with("allowplaintext", "yes"),
        &["cap0"],
        &[("cap0", "pw")],
        true,
        &["--max-connections", "20"],
        RunAs::Cyrus,
    );
    // The readiness probe connects and leaves: wait until its slots are free again.
    std::thread::sleep(Duration::from_millis(300));
    let mut held = Vec::new();
    for i in 0..cap {
        held.push(if i % 2 == 0 {
            lmtp(lport).unwrap()
        } else {
            pop3_login(pport, "cap0", "pw").unwrap()
        });
    }
    let mut extra = Client::connect(lport).unwrap();
    assert_eq!(extra.line().unwrap(), "421 4.3.2 Too many connections\r\n");
    assert!(extra.rest().is_empty(), "connection not closed after 421");
    let mut extra = Client::connect(pport).unwrap();
    assert_eq!(
        extra.line().unwrap(),
        "-ERR [SYS/TEMP] Too many connections\r\n"
    );
    assert!(extra.rest().is_empty());
    // Held sessions still work.
    let mut acked = Vec::new();
    lmtp_deliver(&mut held[0], &["cap0"], &message("cap-1", 3), &mut acked).unwrap();
    assert_eq!(acked, [250]);
    assert!(held[1].cmd("STAT").unwrap().starts_with("+OK"));
    // Free one slot: the next client is served.
    let mut gone = held.pop().unwrap();
    assert!(gone.cmd("QUIT").unwrap().starts_with("+OK"));
    drop(gone);
    let t = Instant::now();
    let mut again = loop {
        let mut c = Client::connect(lport).unwrap();
        let g = c.line().unwrap();
        if g.starts_with("220") {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slot never freed: {g:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(again.cmd("LHLO x").unwrap().starts_with("250"));
    drop(server);
}
