//! Shared by the `serve_*` reliability tests (load, abuse, security, crash): a `cyrkit serve`
//! child started with any flags and environment (as cyrus or as root), small LMTP and POP3
//! clients that tolerate a server that dies, peak-memory figures from /proc, and spool
//! inspection (message files and their bytes, stage files, Cyrus's `reconstruct -n`).
//!
//! Must not: signal any process but the server it started (by pid), or leave it running.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha1::{Digest, Sha1};

use crate::support::cyrus::{chown_cyrus, cyrus_ids, CyrusInstance, CyrusOptions};

pub const CYRKIT: &str = env!("CARGO_BIN_EXE_cyrkit");

/// Who the server runs as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RunAs {
    Cyrus,
    Root,
}

/// A `cyrkit serve` child process.
pub struct Server {
    child: Option<Child>,
    pub pid: i32,
    log: PathBuf,
}

impl Server {
    /// `cyrkit serve -C conf ARGS` with `env` added; waits until every port in `ports`
    /// accepts a connection. Panics with the server's output if it exits first.
    pub fn start(
        cy: &CyrusInstance,
        args: &[String],
        env: &[(&str, String)],
        run_as: RunAs,
        ports: &[u16],
    ) -> Server {
        let log = cy.root().join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(CYRKIT);
        cmd.arg("serve").arg("-C").arg(cy.conf_path()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if run_as == RunAs::Cyrus {
            let (uid, gid) = cyrus_ids().unwrap();
            cmd.uid(uid).gid(gid).env("USER", "cyrus");
            chown_cyrus(&log).unwrap();
        }
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start cyrkit serve");
        let pid = child.id() as i32;
        let mut s = Server {
            child: Some(child),
            pid,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = s.try_wait() {
                panic!(
                    "cyrkit serve exited during start-up ({st}):\n{}",
                    s.output()
                );
            }
            if ports.iter().all(|p| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, *p)),
                    Duration::from_millis(100),
                )
                .is_ok()
            }) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                s.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL now and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait for the drain; the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if c.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
        }
        c.wait().ok()
    }

    /// A field of /proc/PID/status in kB (`VmHWM`, `VmRSS`), 0 when gone.
    pub fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(self.pid, field)
    }

    /// Number of threads of the server.
    pub fn threads(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Threads:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS of `pid` (`echo 5 > /proc/PID/clear_refs`), so VmHWM measures from now.
pub fn reset_hwm(pid: i32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A Cyrus instance (master running, so imapd can SELECT) with `users` INBOXes, each with
/// quota root `user.NAME` (a large storage limit) and `cyrus` holding all rights.
pub fn cyrus_with_users(opts: CyrusOptions, users: &[String]) -> CyrusInstance {
    let cy = CyrusInstance::start(&opts).expect("start Cyrus");
    let mut admin = cy.imap_admin().unwrap();
    for u in users {
        let m = format!("user.{u}");
        admin.create(&m).unwrap();
        admin.setacl(&m, "cyrus", "lrswipkxtecda").unwrap();
        admin.setquota(&m, &[("STORAGE", 10_000_000)]).unwrap();
    }
    admin.logout().unwrap();
    cy
}

/// A `--passwd-file` with `{PLAIN}` passwords (no hashing cost under load), owned by cyrus.
pub fn passwd_file(cy: &CyrusInstance, users: &[(&str, &str)]) -> PathBuf {
    let path = cy.root().join("serve.passwd");
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
        .collect();
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    chown_cyrus(&path).unwrap();
    path
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub fn connect(port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(10),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// A line-oriented client (LMTP or POP3) that reports a dead server as an error.
pub struct Client {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> io::Result<Client> {
        let s = connect(port)?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(l)
    }

    /// Raw bytes of one line (for byte-for-byte comparisons).
    pub fn line_bytes(&mut self) -> io::Result<Vec<u8>> {
        let mut l = Vec::new();
        if self.r.read_until(b'\n', &mut l)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(l)
    }

    /// An SMTP-style reply (continuation lines `NNN-`): all its lines.
    pub fn reply(&mut self) -> io::Result<String> {
        reply_from(|| self.line())
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    pub fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// A POP3 multi-line answer up to the `.` line (the `+OK` line included), raw.
    pub fn multi(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let first = self.line_bytes()?;
        let ok = first.starts_with(b"+OK");
        out.extend_from_slice(&first);
        if !ok {
            return Ok(out);
        }
        loop {
            let l = self.line_bytes()?;
            out.extend_from_slice(&l);
            if l == b".\r\n" {
                return Ok(out);
            }
        }
    }

    /// Drain whatever the server still sends until EOF (or the read timeout).
    pub fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        v
    }
}

/// An SMTP-style reply (continuation lines `NNN-`) from the lines `line` reads.
pub fn reply_from(mut line: impl FnMut() -> io::Result<String>) -> io::Result<String> {
    let mut out = String::new();
    loop {
        let l = line()?;
        out.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return Ok(out);
        }
    }
}

/// An LMTP session after greeting and LHLO.
pub fn lmtp(port: u16) -> io::Result<Client> {
    let mut c = Client::connect(port)?;
    let g = c.reply()?;
    if !g.starts_with("220") {
        return Err(io::Error::other(format!("greeting {g:?}")));
    }
    let l = c.cmd("LHLO test")?;
    if !l.starts_with("250") {
        return Err(io::Error::other(format!("LHLO {l:?}")));
    }
    Ok(c)
}

/// MAIL, RCPTs, DATA with `message` (CRLF, already dot-safe); the reply codes per
/// recipient: the RCPT reply when refused, else the one after the data. Errors when the
/// server goes away; `acked` then holds the codes read so far.
pub fn lmtp_deliver(
    c: &mut Client,
    rcpts: &[&str],
    message: &[u8],
    acked: &mut Vec<u16>,
) -> io::Result<()> {
    let code = |s: &str| s.get(..3).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
    let m = c.cmd("MAIL FROM:<sender@example.org>")?;
    if code(&m) != 250 {
        return Err(io::Error::other(format!("MAIL {m:?}")));
    }
    let mut accepted = Vec::new();
    for r in rcpts {
        let rr = c.cmd(&format!("RCPT TO:<{r}>"))?;
        if code(&rr) != 250 {
            return Err(io::Error::other(format!("RCPT {r}: {rr:?}")));
        }
        accepted.push(r);
    }
    let d = c.cmd("DATA")?;
    if code(&d) != 354 {
        return Err(io::Error::other(format!("DATA {d:?}")));
    }
    c.send(message)?;
    c.send(b".\r\n")?;
    for _ in &accepted {
        let r = c.reply()?;
        acked.push(code(&r));
    }
    Ok(())
}

/// A small test message with a unique Message-ID `<id@test>`.
pub fn message(id: &str, body_lines: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {id}\r\n\
         Message-ID: <{id}@test>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n"
    );
    for i in 0..body_lines {
        m.push_str(&format!("line {i} of {id}\r\n"));
    }
    m.into_bytes()
}

/// A POP3 session logged in with USER/PASS (needs `allowplaintext`).
pub fn pop3_login(port: u16, user: &str, pass: &str) -> io::Result<Client> {
    let mut c = Client::connect(port)?;
    let g = c.line()?;
    if !g.starts_with("+OK") {
        return Err(io::Error::other(format!("greeting {g:?}")));
    }
    let u = c.cmd(&format!("USER {user}"))?;
    let p = c.cmd(&format!("PASS {pass}"))?;
    if !p.starts_with("+OK") {
        return Err(io::Error::other(format!("login {u:?} {p:?}")));
    }
    Ok(c)
}

/// Every message file (`<digits>.`) under `dir`, with the SHA-1 of its bytes.
pub fn message_files(dir: &Path) -> BTreeMap<PathBuf, [u8; 20]> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let name = e.file_name().to_string_lossy();
        let is_msg = name.ends_with('.')
            && name.len() > 1
            && name[..name.len() - 1].bytes().all(|b| b.is_ascii_digit());
        if e.file_type().is_file() && is_msg {
            if let Ok(bytes) = fs::read(e.path()) {
                out.insert(e.path().to_path_buf(), Sha1::digest(&bytes).into());
            }
        }
    }
    out
}

/// Files left in any `stage.` directory under `spool`.
pub fn stage_files(spool: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(spool)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            e.path()
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "stage.")
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Cyrus's `reconstruct -n -r user` output lines (stdout and stderr together).
pub fn reconstruct_n(cy: &CyrusInstance) -> String {
    reconstruct_n_of(cy, &["user"])
}

/// Cyrus's `reconstruct -n -r MAILBOXES...` output (stdout and stderr together).
pub fn reconstruct_n_of(cy: &CyrusInstance, mailboxes: &[&str]) -> String {
    let mut args = vec!["-n", "-r"];
    args.extend_from_slice(mailboxes);
    let out = cy.run_tool("reconstruct", &args).unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `Message-ID` local parts of every message Cyrus's imapd shows in `user`'s INBOX,
/// with the RFC822.SIZE of each.
pub fn imap_message_ids(cy: &CyrusInstance, user: &str) -> Vec<(String, u64)> {
    imap_message_ids_of(cy, &[user]).pop().unwrap_or_default()
}

/// [`imap_message_ids`] for several users over one IMAP connection.
pub fn imap_message_ids_of(cy: &CyrusInstance, users: &[&str]) -> Vec<Vec<(String, u64)>> {
    let mut c = cy.imap_admin().unwrap();
    let mut all = Vec::new();
    for user in users {
        let st = c.examine_status(&format!("user.{user}")).unwrap();
        if st.messages == 0 {
            all.push(Vec::new());
            continue;
        }
        let raw = c
            .fetch("1:*", "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        let mut out = Vec::new();
        let mut size = 0u64;
        for l in text.lines() {
            if let Some(i) = l.find("RFC822.SIZE ") {
                size = l[i + 12..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            let lower = l.to_ascii_lowercase();
            if let Some(i) = lower.find("message-id: <") {
                let id = &l[i + 13..];
                let id = id.split('@').next().unwrap_or("").to_string();
                out.push((id, size));
            }
        }
        all.push(out);
    }
    c.logout().unwrap();
    all
}

/// Quota usage in bytes (STORAGE) of root `user.NAME`, read from its quotalegacy file
/// (Cyrus 3 dlist or the 2.4 two-line form).
pub fn quota_used(cy: &CyrusInstance, user: &str) -> u64 {
    let want = format!("user.{user}");
    let file = walkdir::WalkDir::new(cy.config_dir().join("quota"))
        .into_iter()
        .flatten()
        .find(|e| e.file_name().to_string_lossy() == want.as_str())
        .unwrap_or_else(|| panic!("no quota file for {want}"));
    let text = fs::read_to_string(file.path()).unwrap();
    let text = text.trim();
    // 3.x: `%(S (<used> <limit>) M (...) ...)`; 2.4: `used\nlimit`.
    let n = match text.strip_prefix("%(S (") {
        Some(rest) => rest.split([' ', ')']).next().unwrap_or(""),
        None => text.lines().next().unwrap_or("0"),
    };
    n.trim()
        .parse()
        .unwrap_or_else(|_| panic!("quota file {text:?}"))
}

/// Owner uid of every file and directory under `dir` that is not owned by `uid`.
pub fn not_owned_by(dir: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let m = fs::symlink_metadata(e.path()).ok()?;
            (m.uid() != uid).then(|| (e.path().to_path_buf(), m.uid()))
        })
        .collect()
}

/// `--lmtp` and `--pop3` on loopback `lport`/`pport` with a `--passwd-file`; loopback LMTP
/// clients pre-authenticated when `trust`.
pub fn serve_args(lport: u16, pport: u16, passwd: &Path, trust: bool) -> Vec<String> {
    let mut a = vec![
        "--lmtp".to_string(),
        format!("127.0.0.1:{lport}"),
        "--pop3".into(),
        format!("127.0.0.1:{pport}"),
        "--passwd-file".into(),
        passwd.display().to_string(),
    ];
    if trust {
        a.push("--lmtp-trust-loopback".into());
    }
    a
}

/// A running `cyrkit serve` (LMTP + POP3) over a fresh Cyrus instance. The server is
/// declared first so it stops before Cyrus does.
pub struct Served {
    pub server: Server,
    pub cy: CyrusInstance,
    pub lport: u16,
    pub pport: u16,
}

/// Cyrus with `users` (see [`cyrus_with_users`]), a passwd file with `creds`, and `cyrkit
/// serve` with [`serve_args`] plus `extra`, started as `run_as`, ready on both ports.
pub fn serve_lmtp_pop3(
    opts: CyrusOptions,
    users: &[&str],
    creds: &[(&str, &str)],
    trust: bool,
    extra: &[&str],
    run_as: RunAs,
) -> Served {
    let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    let cy = cyrus_with_users(opts, &users);
    let passwd = passwd_file(&cy, creds);
    let [lport, pport] = free_ports(2)[..] else {
        unreachable!()
    };
    let mut args = serve_args(lport, pport, &passwd, trust);
    args.extend(extra.iter().map(|a| a.to_string()));
    let server = Server::start(&cy, &args, &[], run_as, &[lport, pport]);
    Served {
        server,
        cy,
        lport,
        pport,
    }
}
