//! `cyrkit serve` under load, against a real Cyrus 3.6 spool: 1000 concurrent sessions on one
//! server (500 POP3 logged in and RETR-ing, 500 LMTP delivering into the same mailboxes), all
//! open at the same moment; the connection cap answers the documented busy reply. Afterwards
//! every acknowledged delivery is in its mailbox exactly once (Cyrus's imapd), Cyrus's
//! `reconstruct -n` finds nothing to fix, and the server's peak RSS stayed bounded.
//!
//! The same with TLS: a few hundred concurrent sessions mixing POP3S (implicit TLS), POP3
//! STLS and LMTP STARTTLS, while clients that stall mid-handshake hold their connections,
//! and a SIGTERM at the end that the server obeys at once.

#[path = "serve_rel/common.rs"]
mod common;
mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use support::cyrus::{chown_cyrus, require_cyrus, CyrusOptions};

const POP3_SESSIONS: usize = 500;
const LMTP_SESSIONS: usize = 500;
const USERS: usize = 10;
const PRELOADED: usize = 3;
/// Peak resident memory allowed for the server with 1000 sessions open.
const MAX_HWM_KB: u64 = 256 * 1024;

/// All clients hold their session open until every one has one and the watcher has counted
/// the server's threads ([`run_sessions`] opens the gate), or until the deadline.
struct Gate {
    /// Sessions arrived, and whether the gate is open.
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    want: usize,
}

impl Gate {
    fn new(want: usize) -> Gate {
        Gate {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            want,
        }
    }

    fn arrive_and_wait(&self, deadline: Instant) {
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        self.cv.notify_all();
        while !st.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
    }

    fn arrived(&self) -> usize {
        self.state.lock().unwrap().0
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
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
    preload(&mut lmtp(lport).unwrap(), &users);
    let base_kb = server.status_kb("VmRSS");
    reset_hwm(server.pid);

    let gate = Arc::new(Gate::new(POP3_SESSIONS + LMTP_SESSIONS));
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
    let (peak_threads, acked) = run_sessions(&mut server, &gate, deadline, handles);
    let elapsed = started.elapsed();
    let hwm_kb = server.status_kb("VmHWM");
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
    assert_spool(&cy, &users, |u_i| {
        let lmtp = POP3_SESSIONS..POP3_SESSIONS + LMTP_SESSIONS;
        lmtp.filter(|i| i % USERS == u_i)
            .map(|i| {
                assert_eq!(acked[i], [250u16], "delivery {i}");
                format!("load-{i}")
            })
            .collect()
    });
}

/// Something to RETR: `PRELOADED` messages of ~20 KB per user, delivered over `c`.
fn preload(c: &mut Client, users: &[String]) {
    for u in users {
        for k in 0..PRELOADED {
            let mut acked = Vec::new();
            let m = message(&format!("pre-{u}-{k}"), 600);
            lmtp_deliver(c, &[u], &m, &mut acked).unwrap();
            assert_eq!(acked, [250]);
        }
    }
}

/// Watch the server's thread count until every session has arrived at the gate (or the
/// deadline), count the threads once more while they all wait there, open the gate, then
/// join them all: the peak thread count and each session's result. Panics when the
/// server died, a session failed, or the sessions were never all open at once.
fn run_sessions<T>(
    server: &mut Server,
    gate: &Gate,
    deadline: Instant,
    handles: Vec<std::thread::JoinHandle<Result<T, String>>>,
) -> (u64, Vec<T>) {
    let total = handles.len();
    let mut peak_threads = 0;
    while gate.arrived() < gate.want && Instant::now() < deadline {
        peak_threads = peak_threads.max(server.threads());
        std::thread::sleep(Duration::from_millis(20));
    }
    peak_threads = peak_threads.max(server.threads());
    gate.open();
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join().unwrap() {
            Ok(r) => results.push(r),
            Err(e) => failures.push(format!("session {i}: {e}")),
        }
    }
    assert!(
        server.try_wait().is_none(),
        "server died:\n{}",
        server.output()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} sessions failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        server.output()
    );
    assert!(
        peak_threads > total as u64,
        "the {total} sessions were not open at once: {peak_threads} server threads at most"
    );
    (peak_threads, results)
}

/// Each user's INBOX holds exactly its preloaded messages and `delivered(user index)`
/// (Cyrus's imapd), Cyrus's `reconstruct -n` finds nothing, no stage file is left.
fn assert_spool(
    cy: &support::cyrus::CyrusInstance,
    users: &[String],
    delivered: impl Fn(usize) -> Vec<String>,
) {
    for (u_i, u) in users.iter().enumerate() {
        let mut want: Vec<String> = (0..PRELOADED).map(|k| format!("pre-{u}-{k}")).collect();
        want.extend(delivered(u_i));
        let ids = imap_message_ids(cy, u);
        let mut got: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "mailbox user.{u}");
    }
    let rn = reconstruct_n(cy);
    assert!(
        !rn.contains("found") && !rn.contains("ERROR") && !rn.contains("mismatch"),
        "reconstruct -n after the load:\n{rn}"
    );
    let left = stage_files(&cy.spool_dir());
    assert!(left.is_empty(), "stage files left: {left:?}");
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

// ---------------------------------------------------------------------------------------
// TLS under load

/// Sessions of each kind: POP3S, POP3 STLS, LMTP STARTTLS.
const TLS_EACH: usize = 200;
/// Clients that stop in the middle of their TLS handshake, of each kind.
const TLS_STALLED: usize = 2;
/// Peak resident memory allowed for the server with the TLS sessions open.
const MAX_TLS_HWM_KB: u64 = 192 * 1024;

/// A test CA and a `localhost` certificate it signed (so the client verifies as a real one
/// does), readable by the cyrus user; returns (CA certificate, server certificate, key).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the openssl CLI is needed (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=cyrkit test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        f("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    for n in ["server.pem", "server.key"] {
        chown_cyrus(&f(n)).unwrap();
    }
    (f("ca.pem"), f("server.pem"), f("server.key"))
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One line read a byte at a time, so nothing after it is consumed (before STARTTLS).
fn plain_line(s: &mut TcpStream) -> io::Result<String> {
    let mut l = Vec::new();
    let mut b = [0u8];
    while !l.ends_with(b"\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        l.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&l).into_owned())
}

/// An SMTP-style reply read with [`plain_line`].
fn plain_reply(s: &mut TcpStream) -> io::Result<String> {
    reply_from(|| plain_line(s))
}

fn plain_cmd(s: &mut TcpStream, line: &str) -> io::Result<String> {
    s.write_all(format!("{line}\r\n").as_bytes())?;
    plain_reply(s)
}

/// A line-oriented client over TLS.
struct TlsClient {
    s: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// The TLS handshake (as `localhost`) on `tcp`, completed before returning.
    fn start(mut tcp: TcpStream, cfg: &Arc<rustls::ClientConfig>) -> io::Result<TlsClient> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn =
            rustls::ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(TlsClient {
            s: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        })
    }

    fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        if self.s.read_line(&mut l)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(l)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.s.get_mut();
        w.write_all(bytes)?;
        w.flush()
    }

    /// A command and its (SMTP-style, possibly multi-line) reply.
    fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        reply_from(|| self.line())
    }

    /// A POP3 multi-line answer (the `+OK` line included).
    fn multi(&mut self) -> io::Result<String> {
        let mut out = self.line()?;
        if !out.starts_with("+OK") {
            return Ok(out);
        }
        loop {
            let l = self.line()?;
            out.push_str(&l);
            if l == ".\r\n" {
                return Ok(out);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TlsKind {
    Pop3s,
    Stls,
    LmtpStarttls,
}

/// `reply` when it starts with `prefix`, else an error naming `what`.
fn want(what: &str, prefix: &str, reply: String) -> io::Result<String> {
    if reply.starts_with(prefix) {
        Ok(reply)
    } else {
        Err(io::Error::other(format!("{what}: {reply:?}")))
    }
}

/// Up to the TLS handshake: the plain greeting and STLS/STARTTLS where the kind has them.
fn tls_connect(kind: TlsKind, ports: (u16, u16, u16)) -> io::Result<TcpStream> {
    let (lport, pport, sport) = ports;
    match kind {
        TlsKind::Pop3s => connect(sport),
        TlsKind::Stls => {
            let mut s = connect(pport)?;
            want("greeting", "+OK", plain_line(&mut s)?)?;
            want("STLS", "+OK", plain_cmd(&mut s, "STLS")?)?;
            Ok(s)
        }
        TlsKind::LmtpStarttls => {
            let mut s = connect(lport)?;
            want("greeting", "220", plain_reply(&mut s)?)?;
            let l = want("LHLO", "250", plain_cmd(&mut s, "LHLO test")?)?;
            if !l.contains("STARTTLS") {
                return Err(io::Error::other(format!("LHLO without STARTTLS: {l:?}")));
            }
            want("STARTTLS", "220", plain_cmd(&mut s, "STARTTLS")?)?;
            Ok(s)
        }
    }
}

/// One full TLS session of `kind`: handshake, login (or LHLO), wait at the gate, then RETR
/// every preloaded message (POP3) or deliver `id` (LMTP), QUIT. Returns the LMTP reply
/// code (0 for POP3).
fn tls_session(
    kind: TlsKind,
    ports: (u16, u16, u16),
    cfg: &Arc<rustls::ClientConfig>,
    user: &str,
    id: &str,
    gate: &Gate,
    deadline: Instant,
) -> Result<u16, String> {
    let ready = (|| -> io::Result<TlsClient> {
        let mut c = TlsClient::start(tls_connect(kind, ports)?, cfg)?;
        if kind == TlsKind::LmtpStarttls {
            want("LHLO after STARTTLS", "250", c.cmd("LHLO test")?)?;
            want("AUTH after STARTTLS", "235", c.cmd(&lmtp_auth())?)?;
            return Ok(c);
        }
        if kind == TlsKind::Pop3s {
            want("greeting", "+OK", c.line()?)?;
        }
        c.cmd(&format!("USER {user}"))?;
        want("PASS", "+OK", c.cmd("PASS pw")?)?;
        Ok(c)
    })();
    gate.arrive_and_wait(deadline);
    let mut c = ready.map_err(|e| format!("{kind:?} set-up: {e}"))?;
    let e = |what: &'static str| move |err: io::Error| format!("{kind:?} {what}: {err}");
    let mut code = 0;
    if kind == TlsKind::LmtpStarttls {
        for (cmd, prefix) in [
            ("MAIL FROM:<sender@example.org>".to_string(), "250"),
            (format!("RCPT TO:<{user}>"), "250"),
            ("DATA".to_string(), "354"),
        ] {
            let r = c.cmd(&cmd).map_err(e("command"))?;
            want(&cmd, prefix, r).map_err(|err| err.to_string())?;
        }
        c.send(&message(id, 20)).map_err(e("data"))?;
        let r = c.cmd(".").map_err(e("final dot"))?;
        code = r.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    } else {
        for k in 1..=PRELOADED {
            c.send(format!("RETR {k}\r\n").as_bytes())
                .map_err(e("RETR"))?;
            let m = c.multi().map_err(e("RETR"))?;
            let id = format!("pre-{user}-{}@test", k - 1);
            if !m.contains(&id) || m.len() < 10_000 {
                return Err(format!("{kind:?} RETR {k} of {user}: wrong message"));
            }
        }
    }
    let q = c.cmd("QUIT").map_err(e("QUIT"))?;
    if !q.starts_with("+OK") && !q.starts_with("221") {
        return Err(format!("{kind:?} QUIT {q:?}"));
    }
    Ok(code)
}

/// LMTP over TCP from a host that is not trusted: an admin authenticates (`admins: cyrus`).
fn lmtp_auth() -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(b"\0cyrus\0pw");
    format!("AUTH PLAIN {b}")
}

/// A client that starts its TLS handshake and stops: a TLS record header announcing a
/// 512-byte ClientHello, and 4 bytes of it.
fn stalled_handshake(kind: TlsKind, ports: (u16, u16, u16)) -> TcpStream {
    let mut s = tls_connect(kind, ports).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .unwrap();
    s
}

#[test]
fn hundreds_of_concurrent_tls_sessions() {
    if !require_cyrus() {
        return;
    }
    raise_nofile();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path());
    let cfg = client_config(&ca);
    let users: Vec<String> = (0..USERS).map(|i| format!("tls{i}")).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut creds: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), "pw")).collect();
    creds.push(("cyrus", "pw"));
    let sport = free_ports(1)[0];
    let pop3s = format!("127.0.0.1:{sport}");
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let Served {
        mut server,
        cy,
        lport,
        pport,
    } = serve_lmtp_pop3(
        CyrusOptions::default().with("allowplaintext", "yes"),
        &user_refs,
        &creds,
        // LMTP on TCP from an untrusted client: STARTTLS, then AUTH (as an MTA elsewhere).
        false,
        &[
            "--pop3s",
            &pop3s,
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
            "--max-connections",
            "1100",
            "--log-level",
            "warn",
        ],
        RunAs::Cyrus,
    );
    let ports = (lport, pport, sport);
    let mut c = lmtp(lport).unwrap();
    assert!(c.cmd(&lmtp_auth()).unwrap().starts_with("235"));
    preload(&mut c, &users);
    let base_kb = server.status_kb("VmRSS");
    reset_hwm(server.pid);

    // Slow clients first: they hold their half-done handshakes through the whole run.
    let kinds = [TlsKind::Pop3s, TlsKind::Stls, TlsKind::LmtpStarttls];
    let stalled: Vec<TcpStream> = kinds
        .iter()
        .flat_map(|&k| (0..TLS_STALLED).map(move |_| k))
        .map(|k| stalled_handshake(k, ports))
        .collect();

    let total = 3 * TLS_EACH;
    let gate = Arc::new(Gate::new(total));
    let deadline = Instant::now() + Duration::from_secs(40);
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..total {
        let (gate, cfg) = (gate.clone(), cfg.clone());
        let user = users[i % USERS].clone();
        let kind = kinds[i % 3];
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let id = format!("tls-{i}");
                tls_session(kind, ports, &cfg, &user, &id, &gate, deadline)
            })
            .unwrap();
        handles.push(h);
    }
    let (peak_threads, codes) = run_sessions(&mut server, &gate, deadline, handles);
    let elapsed = started.elapsed();
    let hwm_kb = server.status_kb("VmHWM");
    eprintln!(
        "load: {total} TLS sessions ({TLS_EACH} each POP3S, STLS, LMTP STARTTLS; \
         {} stalled handshakes held) done in {elapsed:?}; server \
         threads at peak {peak_threads}; RSS before {base_kb} kB, peak (VmHWM) {hwm_kb} kB",
        stalled.len()
    );
    assert!(
        hwm_kb < MAX_TLS_HWM_KB,
        "peak RSS {hwm_kb} kB with {total} TLS sessions (limit {MAX_TLS_HWM_KB} kB)"
    );

    // The stalled handshakes are still held open by the server (no timeout has fired).
    for s in &stalled {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = s.peek(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a stalled handshake was not held: {r:?}"
        );
        s.set_nonblocking(false).unwrap();
    }

    // SIGTERM with the stalled handshakes still connected: the server exits at once, 0.
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = server.wait_exit(Duration::from_secs(5));
    let drain = t.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM with stalled handshakes: {status:?}\n{}",
        server.output()
    );
    eprintln!("load: SIGTERM to exit 0 in {drain:?} with the stalled handshakes connected");
    // ... and it closed them.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(
            r.is_ok()
                || r.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "a stalled connection not closed at exit: {r:?}"
        );
    }

    // Every delivery exactly once, in the right mailbox.
    assert_spool(&cy, &users, |u_i| {
        (0..total)
            .filter(|i| kinds[i % 3] == TlsKind::LmtpStarttls && i % USERS == u_i)
            .map(|i| {
                assert_eq!(codes[i], 250, "delivery {i}");
                format!("tls-{i}")
            })
            .collect()
    });
}
