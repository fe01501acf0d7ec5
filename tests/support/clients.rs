//! What the real-client tests share: the LMTP and POP3 targets a test is parameterised by
//! (Cyrus's own servers now, `cyrkit serve` later), checking that the client programs are
//! installed, running them with a time limit, a self-signed certificate for TLS, a password-file
//! line for `cyrkit serve --passwd-file`, and reading the mbox files the clients write.
//!
//! Must not: skip silently in CI (every `require_*` panics under `CYRKIT_REQUIRE_CYRUS=1`), or
//! leave a client process running (a client that overruns its time is killed by its pid).
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::cyrus::{chown_cyrus, require_cyrus, CyrusInstance, Token, REQUIRE_ENV};

/// Where a client delivers with LMTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmtpTarget {
    /// A loopback TCP port (the server trusts loopback clients: Cyrus's `lmtpd -a`, cyrkit's
    /// `--lmtp-trust-loopback`).
    Inet(u16),
    /// A UNIX socket (trusted by its permissions).
    Unix(PathBuf),
}

impl LmtpTarget {
    /// Postfix's next-hop syntax for its `lmtp` transport.
    pub fn postfix_nexthop(&self) -> String {
        match self {
            LmtpTarget::Inet(port) => format!("lmtp:inet:[{}]:{port}", Ipv4Addr::LOCALHOST),
            LmtpTarget::Unix(path) => format!("lmtp:unix:{}", path.display()),
        }
    }

    /// swaks options that reach this target.
    pub fn swaks_args(&self) -> Vec<String> {
        match self {
            LmtpTarget::Inet(port) => vec![
                "--server".into(),
                Ipv4Addr::LOCALHOST.to_string(),
                "--port".into(),
                port.to_string(),
            ],
            LmtpTarget::Unix(path) => vec!["--socket".into(), path.display().to_string()],
        }
    }

    /// `(host, port)` as Python's `smtplib.LMTP` takes them (a host starting with `/` is a
    /// UNIX socket, port ignored).
    pub fn python_host_port(&self) -> (String, u16) {
        match self {
            LmtpTarget::Inet(port) => (Ipv4Addr::LOCALHOST.to_string(), *port),
            LmtpTarget::Unix(path) => (path.display().to_string(), 0),
        }
    }
}

/// How a POP3 client secures its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop3Tls {
    /// Plain text (USER/PASS in the clear; servers allow it in these tests).
    None,
    /// STLS on the plain port (RFC 2595).
    Stls,
    /// TLS from the first byte (POP3S).
    Implicit,
}

/// One POP3 mailbox to fetch from.
#[derive(Clone, Debug)]
pub struct Pop3Target {
    pub host: String,
    pub port: u16,
    pub tls: Pop3Tls,
    pub user: String,
    pub password: String,
    /// The server certificate (self-signed), for clients to verify against.
    pub ca_file: Option<PathBuf>,
}

impl Pop3Target {
    /// Short label for messages: `user@host:port/tls`.
    pub fn label(&self) -> String {
        format!("{}@{}:{}/{:?}", self.user, self.host, self.port, self.tls)
    }
}

/// Fails (under `CYRKIT_REQUIRE_CYRUS=1`) or returns `false` after printing why, unless Cyrus
/// can run here and every program in `tools` is on PATH.
pub fn require_tools(tools: &[&str]) -> bool {
    if !require_cyrus() {
        return false;
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (scripts/test installs the real clients)",
        missing.join(", ")
    );
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("real clients required ({REQUIRE_ENV}=1) but {why}");
    }
    eprintln!("SKIPPED: real-client test: {why}; set {REQUIRE_ENV}=1 to fail instead");
    false
}

/// The full path of `program` on PATH (or in the sbin directories root has).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs `cmd` (stdin closed unless set) and kills it if it runs longer than `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "{what} ran longer than {limit:?}"
            )));
        }
        sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// stdout and stderr of a run, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A self-signed certificate and its key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed P-256 certificate for `localhost` and `127.0.0.1` in `dir`, owned by
/// the `cyrus` user (Cyrus's pop3d runs as it); the certificate is world-readable, for clients
/// that run unprivileged.
pub fn self_signed(dir: &Path) -> io::Result<TlsFiles> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("openssl req: {}", describe(&out))));
    }
    chown_cyrus(dir)?;
    Ok(files)
}

/// A `user:hash` line for `cyrkit serve --passwd-file` (SHA512-CRYPT, made by
/// `openssl passwd -6`), so cyrkit accepts the same password Cyrus's test set-up does.
pub fn passwd_line(user: &str, password: &str) -> io::Result<String> {
    let out = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(password.as_bytes())?;
            }
            child.wait_with_output()
        })?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$6$") {
        return Err(io::Error::other(format!(
            "openssl passwd -6: {}",
            describe(&out)
        )));
    }
    Ok(format!("{user}:{hash}"))
}

/// The full text of every message in `user`'s INBOX as Cyrus's imapd serves it (UID order,
/// CRLF), read with EXAMINE and BODY.PEEK so nothing changes.
pub fn inbox_messages(cy: &CyrusInstance, user: &str) -> io::Result<Vec<Vec<u8>>> {
    let mut c = cy.imap_login(user)?;
    let st = c.examine_status("INBOX")?;
    if st.messages == 0 {
        return Ok(Vec::new());
    }
    let reply = c.ok("UID FETCH 1:* (BODY.PEEK[])")?;
    c.logout()?;
    Ok(reply
        .tokens()
        .iter()
        .filter_map(|toks| match toks.get(3) {
            Some(Token::List(items)) => items
                .windows(2)
                .find(|w| w[0] == Token::Atom("BODY[]".into()))
                .and_then(|w| match &w[1] {
                    Token::Str(s) => Some(s.clone()),
                    _ => None,
                }),
            _ => None,
        })
        .collect())
}

/// Splits an mbox file into its messages (the `From ` separator lines dropped), undoing the
/// `>From ` quoting that mboxo and mboxrd writers both apply, with LF line ends. A trailing
/// blank separator line is removed from each message.
pub fn mbox_messages(mbox: &[u8]) -> Vec<Vec<u8>> {
    let text = lf(mbox);
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            messages.extend(current.take());
            current = Some(Vec::new());
            continue;
        }
        let Some(msg) = current.as_mut() else {
            continue;
        };
        let quoted = line.iter().take_while(|b| **b == b'>').count();
        if quoted > 0 && line[quoted..].starts_with(b"From ") {
            msg.extend_from_slice(&line[1..]);
        } else {
            msg.extend_from_slice(line);
        }
    }
    messages.extend(current);
    for m in &mut messages {
        if m.ends_with(b"\n\n") {
            m.pop();
        }
    }
    messages
}

/// CRLF (and bare CR before LF) to LF.
pub fn lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

/// The value of the first header field `name` (case-insensitive), unfolded and trimmed.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\n\n").next().unwrap_or("");
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if !k.trim_end().eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = v.trim().to_string();
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(next.trim());
            lines.next();
        }
        return Some(value);
    }
    None
}
