//! One LMTP session over a [`Channel`], with Cyrus 3.6 lmtpd's replies (`lmtpmode` in
//! `imap/lmtpengine.c`) plus CHUNKING (BDAT).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;

use super::address::{self, AddressConfig, Target};
use super::command::{self, Bdat, Command};
use super::message::{LineSplitter, MessageOptions, Outcome, StageWriter, Written, DATA_LINE_MAX};
use super::store::{Delivered, DeliveryError, Mailstore, Rcpt, Staged};
use crate::server::auth::Authenticator;
use crate::server::channel::{Channel, ChannelError, Ending, Peer};

/// Longest command line (Cyrus reads commands into `char buf[4096]`).
pub const COMMAND_LINE_MAX: usize = 4096;
/// Most recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
pub const MAX_RECIPIENTS: usize = 1000;

/// Everything the session reads from imapd.conf and the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub servername: String,
    /// What session ids start with: `syslog_prefix` if set, else the servername
    /// (`session_new_id`).
    pub session_base: String,
    /// `serverinfo: on` (the default): the version in the greeting and Received.
    pub serverinfo: bool,
    /// `maxmessagesize`; 0 in imapd.conf means `i32::MAX`, as Cyrus.
    pub max_message_size: u64,
    pub over_quota_perm: bool,
    pub strict_rfc2821: bool,
    pub postmaster: String,
    pub address: AddressConfig,
    pub munge8bit: bool,
    pub reject8bit: bool,
    /// `lmtp_admins` (else `admins`): who may AUTH.
    pub admins: Vec<String>,
    pub allowplaintext: bool,
    pub soft_noauth: bool,
    /// `{configdirectory}/msg/shutdown`.
    pub shutdown_file: Option<PathBuf>,
    /// Loopback TCP clients are pre-authenticated (`--lmtp-trust-loopback`).
    pub trust_loopback: bool,
    /// `lmtp_catchall_mailbox`: the user whose INBOX gets mail for recipients that fail
    /// the RCPT check (for any reason, as Cyrus's `process_recipient`).
    pub catchall: Option<Vec<u8>>,
    /// `failedloginpause`: the wait before answering a failed AUTH. (Cyrus's lmtpd does
    /// not pause; its imapd and pop3d do. cyrkit slows password guessing on TCP alike.)
    pub failed_login_pause: std::time::Duration,
    /// Deliver to recipients with an active Sieve script as if they had none
    /// (`--lmtp-ignore-sieve`); by default they are refused with `451 4.3.0`.
    pub ignore_sieve: bool,
}

impl Settings {
    /// Settings from the configuration as seen by the `lmtp` service.
    pub fn from_config(
        config: &crate::spool::config::Config,
        trust_loopback: bool,
    ) -> Result<Settings, anyhow::Error> {
        let config = config.clone().with_service("lmtp")?;
        let names = crate::spool::names::NameConfig::from_config(&config)?;
        let servername = match config.get("servername") {
            Some(s) => s.to_string(),
            None => hostname(),
        };
        let max = config.get_int("maxmessagesize", 0)?;
        Ok(Settings {
            session_base: config
                .get("syslog_prefix")
                .map_or_else(|| servername.clone(), str::to_string),
            servername,
            serverinfo: config
                .get("serverinfo")
                .map_or(true, |v| v.eq_ignore_ascii_case("on")),
            max_message_size: if max <= 0 {
                i32::MAX as u64
            } else {
                max as u64
            },
            over_quota_perm: config.get_bool("lmtp_over_quota_perm_failure", false)?,
            strict_rfc2821: config.get_bool("lmtp_strict_rfc2821", true)?,
            postmaster: config.get("postmaster").unwrap_or("postmaster").to_string(),
            address: AddressConfig {
                names,
                downcase: config.get_bool("lmtp_downcase_rcpt", true)?,
                postuser: config.get("postuser").unwrap_or("").as_bytes().to_vec(),
            },
            munge8bit: config.munge8bit(),
            reject8bit: config.get_bool("reject8bit", false)?,
            admins: config.admins().into_iter().map(str::to_string).collect(),
            allowplaintext: config.get_bool("allowplaintext", false)?,
            soft_noauth: config.get_bool("soft_noauth", true)?,
            shutdown_file: Some(config.config_directory().join("msg").join("shutdown")),
            trust_loopback,
            catchall: config
                .get("lmtp_catchall_mailbox")
                .filter(|v| !v.is_empty())
                .map(|v| v.as_bytes().to_vec()),
            failed_login_pause: crate::server::auth::failed_login_pause(&config),
            ignore_sieve: false,
        })
    }
}

/// The version shown with `serverinfo: on`.
fn version() -> String {
    format!("cyrkit-{}", env!("CARGO_PKG_VERSION"))
}

static SESSION_COUNT: AtomicU64 = AtomicU64::new(0);
static STAGE_COUNT: AtomicU64 = AtomicU64::new(0);
static MSGID_COUNT: AtomicU64 = AtomicU64::new(0);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `session_new_id`: `<servername>-<time>-<pid>-<count>-<random>`.
fn new_session_id(base: &str) -> String {
    let n = SESSION_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    format!(
        "{}-{}-{}-{}-{}",
        base.get(..base.len().min(128)).unwrap_or(base),
        now(),
        std::process::id(),
        n,
        rand::random::<u64>()
    )
}

/// `time_to_rfc5322`: `Thu, 04 Jan 2024 10:00:00 +0100` in local time.
pub fn rfc5322_date(t: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tt = t as libc::time_t;
    // SAFETY: an all-zero tm is a valid value; localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    if unsafe { libc::localtime_r(&tt, &mut tm) }.is_null() {
        return "Thu, 01 Jan 1970 00:00:00 +0000".into();
    }
    let off = tm.tm_gmtoff / 60;
    let sign = if off < 0 { '-' } else { '+' };
    let off = off.abs();
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} {}{:02}{:02}",
        DAYS.get(tm.tm_wday as usize).unwrap_or(&"Sun"),
        tm.tm_mday,
        MONTHS.get(tm.tm_mon as usize).unwrap_or(&"Jan"),
        i64::from(tm.tm_year) + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        sign,
        off / 60,
        off % 60
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    /// UNIX socket or trusted loopback: "postman", EXTERNAL only.
    Preauth,
    Did,
}

/// An open MAIL transaction.
struct Txn {
    return_path: Vec<u8>,
    /// `MAIL AUTH=` identity.
    authuser: Option<Vec<u8>>,
    size: u64,
    rcpts: Vec<Rcpt>,
}

/// A BDAT transfer in progress.
struct Chunks {
    writer: StageWriter<BufWriter<File>>,
    splitter: LineSplitter,
    path: PathBuf,
    /// The time written into the Received header (the internaldate).
    now: i64,
}

struct Session<'a> {
    ch: &'a mut dyn Channel,
    store: &'a dyn Mailstore,
    passwords: Option<&'a dyn Authenticator>,
    s: &'a Settings,
    auth: Auth,
    tls_done: bool,
    lhlo: Vec<u8>,
    sid: String,
    txn: Option<Txn>,
    chunks: Option<Chunks>,
    /// A BDAT transfer failed to start: its chunks are read and dropped until LAST.
    bdat_failed: bool,
    /// Users whose Sieve script was logged about in this session.
    sieve_logged: HashSet<Vec<u8>>,
}

enum Flow {
    Continue,
    End,
}

/// Run one session to its end.
pub fn run(
    ch: &mut dyn Channel,
    store: &dyn Mailstore,
    passwords: Option<&dyn Authenticator>,
    settings: &Settings,
) {
    let auth = match ch.peer() {
        Peer::Unix => Auth::Preauth,
        p if settings.trust_loopback && p.is_loopback() => Auth::Preauth,
        _ => Auth::None,
    };
    let mut s = Session {
        ch,
        store,
        passwords,
        s: settings,
        auth,
        tls_done: false,
        lhlo: Vec::new(),
        sid: new_session_id(&settings.session_base),
        txn: None,
        chunks: None,
        bdat_failed: false,
        sieve_logged: HashSet::new(),
    };
    let greeting = if settings.serverinfo {
        format!(
            "220 {} Cyrus LMTP {} server ready\r\n",
            settings.servername,
            version()
        )
    } else {
        format!("220 {} server ready\r\n", settings.servername)
    };
    if s.send(greeting.as_bytes()).is_err() {
        return;
    }
    loop {
        match s.next() {
            Ok(Flow::Continue) => {}
            Ok(Flow::End) => break,
            Err(ChannelError::Shutdown) => {
                let _ = s.send(b"421 4.3.2 Server shutting down\r\n");
                break;
            }
            Err(e) => {
                log::debug!("lmtp: {:?}: session ends: {e}", s.ch.peer());
                break;
            }
        }
    }
    s.end_transaction();
    let _ = s.ch.flush();
}

impl Session<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.ch.write_all(bytes)?;
        if !self.ch.has_buffered_input() {
            self.ch.flush()?;
        }
        Ok(())
    }

    fn end_transaction(&mut self) {
        if let Some(c) = self.chunks.take() {
            let _ = std::fs::remove_file(&c.path);
        }
        self.txn = None;
        self.bdat_failed = false;
        self.ch.set_busy(false);
    }

    fn next(&mut self) -> Result<Flow, ChannelError> {
        let line = match self.ch.read_line(COMMAND_LINE_MAX) {
            Ok(l) => l.bytes,
            Err(ChannelError::LineTooLong { .. }) => {
                self.send(command::SYNTAX_ERROR)?;
                return Ok(Flow::Continue);
            }
            Err(e) => return Err(e),
        };
        if !matches!(line.first(), Some(b'L' | b'l' | b'N' | b'n' | b'Q' | b'q')) {
            if let Some(msg) = self.shutdown_message() {
                self.send(format!("421 4.3.2 {msg}\r\n").as_bytes())?;
                return Ok(Flow::End);
            }
        }
        if matches!(line.first(), Some(b'M' | b'm')) && self.auth == Auth::None {
            let code = if self.s.soft_noauth { 430 } else { 530 };
            self.send(format!("{code} Authentication required\r\n").as_bytes())?;
            return Ok(Flow::Continue);
        }
        // A BDAT transfer is a sequence of BDAT commands; anything else but RSET/NOOP/QUIT
        // in between is out of sequence (RFC 3030 §2).
        let cmd = command::parse_command(&line, self.s.strict_rfc2821);
        if (self.chunks.is_some() || self.bdat_failed)
            && !matches!(
                cmd,
                Command::Bdat(_) | Command::Rset | Command::Noop | Command::Quit
            )
        {
            self.send(b"503 5.5.1 BDAT transfer in progress\r\n")?;
            return Ok(Flow::Continue);
        }
        match cmd {
            Command::Lhlo(param) => self.lhlo(param)?,
            Command::Mail(m) => self.mail(m)?,
            Command::Rcpt(r) => self.rcpt(r)?,
            Command::Data => self.data()?,
            Command::Bdat(b) => self.bdat(b)?,
            Command::Rset => {
                self.sid = new_session_id(&self.s.session_base);
                self.end_transaction();
                let r = format!("250 2.0.0 Ok SESSIONID=<{}>\r\n", self.sid);
                self.send(r.as_bytes())?;
            }
            Command::Noop => self.send(b"250 2.0.0 ok\r\n")?,
            Command::Vrfy => self.send(b"252 2.3.3 try RCPT to attempt delivery\r\n")?,
            Command::Quit => {
                self.send(b"221 2.0.0 bye\r\n")?;
                return Ok(Flow::End);
            }
            Command::Starttls => return self.starttls(),
            Command::Auth { mech, initial } => self.authenticate(&mech, initial)?,
            Command::OtherM | Command::Unknown => self.send(command::SYNTAX_ERROR)?,
        }
        Ok(Flow::Continue)
    }

    fn shutdown_message(&self) -> Option<String> {
        let text = std::fs::read(self.s.shutdown_file.as_ref()?).ok()?;
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        Some(
            String::from_utf8_lossy(first)
                .trim_end_matches('\r')
                .to_string(),
        )
    }

    fn plaintext_ok(&self) -> bool {
        self.ch.tls_active() || self.s.allowplaintext
    }

    fn lhlo(&mut self, param: Vec<u8>) -> Result<(), ChannelError> {
        let mut r = format!(
            "250-{}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n",
            self.s.servername
        );
        if self.s.max_message_size < i32::MAX as u64 {
            r.push_str(&format!("250-SIZE {}\r\n", self.s.max_message_size));
        } else {
            r.push_str("250-SIZE\r\n");
        }
        if self.ch.tls_available() && !self.tls_done && self.auth == Auth::None {
            r.push_str("250-STARTTLS\r\n");
        }
        match self.auth {
            Auth::Preauth => r.push_str("250-AUTH EXTERNAL\r\n"),
            Auth::None if self.plaintext_ok() && self.passwords.is_some() => {
                r.push_str("250-AUTH PLAIN LOGIN\r\n")
            }
            _ => {}
        }
        r.push_str("250-IGNOREQUOTA\r\n250-CHUNKING\r\n");
        r.push_str(&format!("250 Ok SESSIONID=<{}>\r\n", self.sid));
        self.lhlo = param;
        self.sid = new_session_id(&self.s.session_base);
        self.send(r.as_bytes())
    }

    fn mail(
        &mut self,
        m: Result<command::MailFrom, command::ParamError>,
    ) -> Result<(), ChannelError> {
        if self.txn.is_some() {
            return self.send(b"503 5.5.1 Nested MAIL command\r\n");
        }
        let m = match m {
            Ok(m) => m,
            Err(e) => return self.send(e.reply()),
        };
        // Cyrus stores the return path before it reads the parameters.
        self.ch.set_busy(true);
        let mut txn = Txn {
            return_path: m.path,
            authuser: None,
            size: 0,
            rcpts: Vec::new(),
        };
        let reply: Vec<u8> = match m.params {
            Err(e) => e.reply().to_vec(),
            Ok(p) => {
                txn.authuser = p.auth.flatten();
                txn.size = p.size.unwrap_or(0);
                if txn.size > self.s.max_message_size {
                    format!(
                        "552 5.2.3 Message SIZE exceeds fixed maximum message size ({})\r\n",
                        self.s.max_message_size
                    )
                    .into_bytes()
                } else {
                    b"250 2.1.0 ok\r\n".to_vec()
                }
            }
        };
        self.txn = Some(txn);
        self.send(&reply)
    }

    fn rcpt(
        &mut self,
        r: Result<command::RcptTo, command::ParamError>,
    ) -> Result<(), ChannelError> {
        let Some(txn) = &self.txn else {
            return self.send(b"503 5.5.1 Need MAIL command\r\n");
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => return self.send(e.reply()),
        };
        if let Err(e) = r.params {
            return self.send(e.reply());
        }
        if txn.rcpts.len() >= MAX_RECIPIENTS {
            return self.send(b"452 4.5.3 Too many recipients\r\n");
        }
        let ignorequota = r.ignorequota();
        let verify = |target| {
            let rcpt = Rcpt {
                target,
                ignorequota,
            };
            self.store
                .verify(&rcpt, sender(&txn.authuser), txn.size)
                .map(|()| rcpt)
        };
        let mut result = address::resolve(&r.path, &self.s.address)
            .map_err(|_| DeliveryError::Unknown)
            .and_then(verify);
        if let (Err(_), Some(catchall)) = (&result, &self.s.catchall) {
            // `process_recipient`: any failure falls back to the catch-all user's INBOX,
            // whose own failure is then the answer.
            result = address::user_target(catchall, &self.s.address)
                .map_err(|_| DeliveryError::Unknown)
                .and_then(verify);
        }
        let result = result.and_then(|rcpt| self.check_sieve(rcpt));
        match result {
            Ok(rcpt) => {
                if let Some(t) = &mut self.txn {
                    t.rcpts.push(rcpt);
                }
                self.send(b"250 2.1.5 ok\r\n")
            }
            Err(e) => {
                log::debug!("lmtp: RCPT {}: {e:?}", String::from_utf8_lossy(&r.path));
                let reply = e.reply(&self.sid, &self.s.postmaster, self.s.over_quota_perm);
                self.send(reply.as_bytes())
            }
        }
    }

    fn starttls(&mut self) -> Result<Flow, ChannelError> {
        let configured = self.ch.tls_available() || self.tls_done;
        if !configured || self.auth == Auth::Preauth {
            self.send(command::SYNTAX_ERROR)?;
            return Ok(Flow::Continue);
        }
        if self.tls_done {
            self.send(b"454 4.3.3 Already successfully executed STARTTLS\r\n")?;
            return Ok(Flow::Continue);
        }
        if self.txn.as_ref().is_some_and(|t| !t.rcpts.is_empty()) {
            self.send(b"503 5.5.0 STARTTLS not permitted now\r\n")?;
            return Ok(Flow::Continue);
        }
        self.ch.write_all(b"220 Begin TLS negotiation now\r\n")?;
        self.ch.flush()?;
        match self.ch.start_tls() {
            Ok(()) => {
                self.tls_done = true;
                Ok(Flow::Continue)
            }
            Err(e) => {
                log::info!("lmtp: {:?}: STARTTLS failed: {e}", self.ch.peer());
                Ok(Flow::End)
            }
        }
    }

    /// `AUTH` (SASL PLAIN and LOGIN over TLS or with `allowplaintext`, EXTERNAL on a
    /// pre-authenticated connection). Only `lmtp_admins`/`admins` may deliver.
    fn authenticate(&mut self, mech: &[u8], initial: Option<Vec<u8>>) -> Result<(), ChannelError> {
        if self.auth == Auth::Did {
            return self.send(b"503 5.5.0 already authenticated\r\n");
        }
        if self.txn.as_ref().is_some_and(|t| !t.rcpts.is_empty()) {
            return self.send(b"503 5.5.0 AUTH not permitted now\r\n");
        }
        let mech = String::from_utf8_lossy(mech).to_ascii_uppercase();
        let creds = match (mech.as_str(), self.auth) {
            ("EXTERNAL", Auth::Preauth) => {
                self.auth = Auth::Did;
                return self.send(b"235 Authenticated!\r\n");
            }
            ("PLAIN", Auth::None) if self.plaintext_ok() && self.passwords.is_some() => {
                let Some(resp) = self.sasl_step(initial, "")? else {
                    return Ok(());
                };
                let mut parts = resp.split(|&b| b == 0);
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(authz), Some(user), Some(pass), None) => {
                        if !authz.is_empty() && authz != user {
                            return self.send(b"501 5.5.4 authorization failure\r\n");
                        }
                        (user.to_vec(), pass.to_vec())
                    }
                    _ => return self.send(b"501 5.5.4 bad protocol / cancel\r\n"),
                }
            }
            ("LOGIN", Auth::None) if self.plaintext_ok() && self.passwords.is_some() => {
                let Some(user) = self.sasl_step(initial, "VXNlcm5hbWU6")? else {
                    return Ok(());
                };
                let Some(pass) = self.sasl_step(None, "UGFzc3dvcmQ6")? else {
                    return Ok(());
                };
                (user, pass)
            }
            _ => return self.send(b"504 Unrecognized authentication type.\r\n"),
        };
        let (user, pass) = (String::from_utf8_lossy(&creds.0).into_owned(), creds.1);
        let ok = match self.passwords {
            Some(p) => p.check_password(&user, &pass).unwrap_or_else(|e| {
                log::warn!("lmtp: cannot check the password of {user}: {e}");
                false
            }),
            None => false,
        };
        let host = self.ch.peer().received_host();
        if !ok {
            log::error!("badlogin: {host} {mech} ({user}) [authentication failure]");
            std::thread::sleep(self.s.failed_login_pause);
            return self.send(b"501 5.5.4 authentication failure\r\n");
        }
        if !self.s.admins.contains(&user) {
            log::error!("badlogin: {host} {mech} ({user}) [{user} is not an admin]");
            return self.send(b"501 5.5.4 undefined error!\r\n");
        }
        let tls = if self.tls_done { "+TLS" } else { "" };
        log::info!("login: {host} {user} {mech}{tls} User logged in");
        self.auth = Auth::Did;
        self.send(b"235 Authenticated!\r\n")
    }

    /// One SASL round: the initial response if given (`=` is empty), else a `334`
    /// challenge and the client's line. `None` when the exchange ended with a reply sent.
    fn sasl_step(
        &mut self,
        initial: Option<Vec<u8>>,
        challenge: &str,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let text = match initial {
            Some(i) => i,
            None => {
                self.send(format!("334 {challenge}\r\n").as_bytes())?;
                match self.ch.read_line(COMMAND_LINE_MAX) {
                    Ok(l) => l.bytes,
                    Err(ChannelError::LineTooLong { .. }) => {
                        self.send(b"501 5.5.4 bad protocol / cancel\r\n")?;
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if text == b"*" {
            self.send(b"501 5.5.4 client canceled authentication\r\n")?;
            return Ok(None);
        }
        if text == b"=" {
            return Ok(Some(Vec::new()));
        }
        match base64::engine::general_purpose::STANDARD.decode(&text) {
            Ok(v) => Ok(Some(v)),
            Err(_) => {
                self.send(b"501 5.5.4 bad protocol / cancel\r\n")?;
                Ok(None)
            }
        }
    }

    /// A recipient whose owner has an active Sieve script: refused with `451 4.3.0` (the
    /// MTA keeps the message, e.g. for Cyrus's lmtpd), or with `ignore_sieve` accepted for
    /// the INBOX rules. Logged once per user per session.
    fn check_sieve(&mut self, rcpt: Rcpt) -> Result<Rcpt, DeliveryError> {
        let Target::User { userid, .. } = &rcpt.target else {
            return Ok(rcpt);
        };
        let Some(script) = self.store.active_sieve(&rcpt) else {
            return Ok(rcpt);
        };
        let user = String::from_utf8_lossy(userid).into_owned();
        if self.sieve_logged.insert(userid.clone()) {
            let action = if self.s.ignore_sieve {
                "delivering without it (--lmtp-ignore-sieve)"
            } else {
                "refusing with 451 so the MTA keeps the message"
            };
            log::warn!(
                "lmtp: {user} has an active Sieve script {} that cyrkit cannot run: {action}",
                script.display()
            );
        }
        if self.s.ignore_sieve {
            Ok(rcpt)
        } else {
            Err(DeliveryError::System(
                "Recipient has a Sieve script this server cannot run".into(),
            ))
        }
    }

    /// The header lines Cyrus writes before the client's (`savemsg`).
    fn prefix(&self, txn: &Txn, now: i64) -> Vec<u8> {
        let mut out = Vec::new();
        let rp = txn
            .return_path
            .strip_prefix(b"<")
            .unwrap_or(&txn.return_path);
        let rp = rp.strip_suffix(b">").unwrap_or(rp);
        out.extend_from_slice(b"Return-Path: <");
        out.extend_from_slice(rp);
        if !rp.is_empty() && !rp.contains(&b'@') {
            out.push(b'@');
            out.extend_from_slice(self.s.servername.as_bytes());
        }
        out.extend_from_slice(b">\r\n");
        out.extend_from_slice(b"Received: from ");
        out.extend_from_slice(&self.lhlo);
        out.extend_from_slice(format!(" ({})", self.ch.peer().received_host()).as_bytes());
        if let Some(u) = &txn.authuser {
            let bits = if self.ch.tls_active() {
                256
            } else if self.auth == Auth::Preauth {
                2
            } else {
                0
            };
            out.extend_from_slice(b"\r\n\t (authenticated user=");
            out.extend_from_slice(u);
            out.extend_from_slice(format!(" bits={bits})").as_bytes());
        }
        out.extend_from_slice(format!("\r\n\t by {}", self.s.servername).as_bytes());
        if self.s.serverinfo {
            out.extend_from_slice(format!(" (Cyrus {})", version()).as_bytes());
        }
        let s = if self.tls_done { "S" } else { "" };
        let a = if self.auth != Auth::None { "A" } else { "" };
        out.extend_from_slice(
            format!(" with LMTP{s}{a};\r\n\t {}\r\n", rfc5322_date(now)).as_bytes(),
        );
        out.extend_from_slice(format!("X-Cyrus-Session-Id: {}\r\n", self.sid).as_bytes());
        // No `X-Sieve: CMU Sieve 3.0`: Cyrus's lmtpd adds it to every message when built
        // with Sieve (`mylmtp.addheaders` in `imap/lmtpd.c` main), naming the Sieve
        // interpreter of the delivery agent. cyrkit has none (recipients with an active
        // script are refused, see `SpoolStore::verify`), so the header would be false.
        out
    }

    /// Create the stage file and its writer (`spoolfile`): in the stage directory of the
    /// first recipient whose mailbox can be found.
    fn open_stage(&mut self, now: i64) -> Result<(StageWriter<BufWriter<File>>, PathBuf), String> {
        let Some(txn) = &self.txn else {
            return Err("451 4.3.0 no transaction\r\n".into());
        };
        let dir = txn
            .rcpts
            .iter()
            .find_map(|r| self.store.stage_dir(r).ok())
            .ok_or_else(|| {
                "451 4.3.2 cannot create temporary file: no stage directory\r\n".to_string()
            })?;
        let n = STAGE_COUNT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{}-{}", std::process::id(), now, n));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                format!(
                    "451 4.3.{} cannot create temporary file: {e}\r\n",
                    space_digit(&e)
                )
            })?;
        let opts = MessageOptions {
            munge8bit: self.s.munge8bit,
            reject8bit: self.s.reject8bit,
            max_size: self.s.max_message_size,
        };
        let msgid = format!(
            "<cyrkit-lmtpd-{}-{}-{}@{}>",
            std::process::id(),
            now,
            MSGID_COUNT.fetch_add(1, Ordering::Relaxed),
            self.s.servername
        );
        let prefix = self.prefix(txn, now);
        let w = StageWriter::new(
            BufWriter::new(file),
            &prefix,
            opts,
            msgid.into_bytes(),
            rfc5322_date(now).into_bytes(),
        );
        Ok((w, path))
    }

    fn data(&mut self) -> Result<(), ChannelError> {
        if self.txn.as_ref().map_or(true, |t| t.rcpts.is_empty()) {
            return self.send(b"503 5.5.1 No recipients\r\n");
        }
        let now = now();
        let (mut w, path) = match self.open_stage(now) {
            Ok(x) => x,
            Err(reply) => {
                self.end_transaction();
                return self.send(reply.as_bytes());
            }
        };
        self.send(b"354 go ahead\r\n")?;
        // Only CRLF "." CRLF ends the data: the DATA line itself counts as the first CRLF.
        let mut after_crlf = true;
        let read = loop {
            match self.ch.read_line(DATA_LINE_MAX) {
                Ok(line) => {
                    let crlf = line.ending == Ending::CrLf;
                    if after_crlf && crlf && line.bytes == b"." {
                        break Ok(());
                    }
                    let bytes = match line.bytes.split_first() {
                        Some((b'.', rest)) => rest,
                        _ => &line.bytes[..],
                    };
                    w.line(bytes, crlf);
                    after_crlf = crlf;
                }
                Err(ChannelError::LineTooLong { .. }) => {
                    w.line_too_long();
                    after_crlf = false;
                }
                Err(e) => break Err(e),
            }
        };
        let (_, outcome) = w.finish();
        if let Err(e) = read {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.finish_message(outcome, &path, now)
    }

    fn bdat(&mut self, b: Result<Bdat, command::ParamError>) -> Result<(), ChannelError> {
        let b = match b {
            Ok(b) => b,
            Err(e) => return self.send(e.reply()),
        };
        let no_rcpts = self.txn.as_ref().map_or(true, |t| t.rcpts.is_empty());
        if (no_rcpts && self.chunks.is_none()) || self.bdat_failed {
            // The chunk must be read anyway, or its bytes would be taken as commands.
            self.ch.read_exact_to(b.size, &mut |_| Ok(()))?;
            if b.last {
                self.bdat_failed = false;
            }
            if no_rcpts {
                return self.send(b"503 5.5.1 No recipients\r\n");
            }
            return self.send(b"451 4.3.2 cannot create temporary file\r\n");
        }
        let now = now();
        if self.chunks.is_none() {
            match self.open_stage(now) {
                Ok((writer, path)) => {
                    self.chunks = Some(Chunks {
                        writer,
                        splitter: LineSplitter::default(),
                        path,
                        now,
                    })
                }
                Err(reply) => {
                    self.ch.read_exact_to(b.size, &mut |_| Ok(()))?;
                    self.bdat_failed = !b.last;
                    if b.last {
                        self.end_transaction();
                    }
                    return self.send(reply.as_bytes());
                }
            }
        }
        let Some(c) = &mut self.chunks else {
            return Ok(());
        };
        let (writer, splitter) = (&mut c.writer, &mut c.splitter);
        if let Err(e) = self.ch.read_exact_to(b.size, &mut |data| {
            splitter.push(data, writer);
            Ok(())
        }) {
            self.end_transaction();
            return Err(e);
        }
        if !b.last {
            let r = format!("250 2.0.0 {} octets received\r\n", b.size);
            return self.send(r.as_bytes());
        }
        let Some(Chunks {
            mut writer,
            splitter,
            path,
            now,
        }) = self.chunks.take()
        else {
            return Ok(());
        };
        splitter.finish(&mut writer);
        let (_, outcome) = writer.finish();
        self.finish_message(outcome, &path, now)
    }

    /// After the last byte: refuse, or deliver to every recipient and reply for each.
    fn finish_message(
        &mut self,
        outcome: Outcome,
        path: &Path,
        now: i64,
    ) -> Result<(), ChannelError> {
        let nrcpts = self.txn.as_ref().map_or(0, |t| t.rcpts.len());
        let written: Written = match outcome {
            Outcome::Invalid(e) => {
                let _ = std::fs::remove_file(path);
                self.end_transaction();
                let reply = format!("554 5.6.0 {}\r\n", e.text()).repeat(nrcpts);
                return self.send(reply.as_bytes());
            }
            Outcome::Io(e) => {
                let _ = std::fs::remove_file(path);
                self.end_transaction();
                log::error!("lmtp: cannot write {}: {e}", path.display());
                let reply = format!(
                    "451 4.3.{} cannot copy message to temporary file: {e}\r\n",
                    space_digit(&e)
                )
                .repeat(nrcpts);
                return self.send(reply.as_bytes());
            }
            Outcome::Ok(w) => w,
        };
        if written.over_limit {
            let _ = std::fs::remove_file(path);
            // Cyrus does not reset the transaction here.
            let reply = format!(
                "552 5.2.3 Message size ({}) exceeds fixed maximum message size ({})\r\n",
                written.size, self.s.max_message_size
            );
            return self.send(reply.as_bytes());
        }
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let staged = Staged {
            path,
            size: written.size,
            internaldate: now,
            message_id: &written.message_id,
            date: &written.date,
        };
        let sender = sender(&txn.authuser);
        let mut replies = String::new();
        let msgid = String::from_utf8_lossy(&written.message_id);
        let results = self.store.deliver(&staged, &txn.rcpts, sender);
        for (i, rcpt) in txn.rcpts.iter().enumerate() {
            let result = results
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err(DeliveryError::System("System I/O error".into())));
            match result {
                Ok(Delivered::Appended { mailbox, .. }) => {
                    log::info!("Delivered: {msgid} to mailbox: {mailbox}");
                    replies.push_str(&format!("250 2.1.5 Success SESSIONID=<{}>\r\n", self.sid));
                }
                Ok(Delivered::Duplicate { mailbox }) => {
                    log::info!(
                        "dupelim: eliminated duplicate message to {mailbox} id {msgid} date {}",
                        String::from_utf8_lossy(&written.date)
                    );
                    replies.push_str(&format!("250 2.1.5 Success SESSIONID=<{}>\r\n", self.sid));
                }
                Err(e) => {
                    log::error!(
                        "lmtp: delivery of {msgid} to {:?} failed: {e:?}",
                        rcpt.target
                    );
                    replies.push_str(&e.reply(
                        &self.sid,
                        &self.s.postmaster,
                        self.s.over_quota_perm,
                    ));
                }
            }
        }
        let _ = std::fs::remove_file(path);
        self.end_transaction();
        self.send(replies.as_bytes())
    }
}

/// The identity ACLs are checked for: `MAIL AUTH=`, else `anonymous`.
fn sender(authuser: &Option<Vec<u8>>) -> &[u8] {
    authuser.as_deref().unwrap_or(b"anonymous")
}

/// `1` for a full disk or quota (ENOSPC, EDQUOT), else `2`, as Cyrus's `451 4.3.x`.
fn space_digit(e: &std::io::Error) -> char {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => '1',
        _ => '2',
    }
}

/// The host name (`gethostname`), the default `servername`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match (r, std::str::from_utf8(buf.get(..len).unwrap_or_default())) {
        (0, Ok(h)) if !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}
