//! The POP3 server (`cyrkit serve --pop3`): RFC 1939 with CAPA (RFC 2449), STLS (RFC 2595),
//! SASL (RFC 5034) and UTF8 (RFC 6856), answering as Cyrus 3.6's `imap/pop3d.c` does, so a
//! client cannot tell the two apart (same replies, same UIDLs, same QUIT semantics).
//!
//! - [`command`]: the sans-I/O command-line parser (keyword, argument, message numbers).
//! - [`stuff`]: the streaming dot-stuffer behind RETR and TOP (CRLF-correct, constant memory).
//! - [`login`]: login names (`user+folder`, `recent:` prefix) and the SASL / APOP checks.
//! - [`session`]: the protocol state machine over a [`crate::server::channel::Channel`],
//!   written against the [`Maildrop`]/[`MaildropStore`] traits so tests run on a fake.
//! - [`maildrop`]: the real maildrop over a Cyrus spool, under Cyrus's locks.
//! - [`userdeny`]: Cyrus's `user_deny.db` (managed by `cyr_deny`).
//!
//! This module owns the POP3 settings read from imapd.conf ([`Pop3Config`]).

pub mod command;
pub mod login;
pub mod maildrop;
pub mod session;
pub mod stuff;
pub mod userdeny;

use std::io::Read;
use std::time::Duration;

use crate::spool::config::{Config, ConfigError, UidlFormat};

/// How much of the server the greeting and CAPA reveal (`serverinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInfo {
    Off,
    Min,
    On,
}

/// Version string shown where Cyrus shows `CYRUS_VERSION`.
pub const VERSION: &str = concat!("cyrkit-", env!("CARGO_PKG_VERSION"));

/// The imapd.conf options pop3d reads (Cyrus 3.6 `lib/imapoptions`), seen as service `pop3`.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub servername: String,
    pub serverinfo: ServerInfo,
    pub allowplaintext: bool,
    pub allowapop: bool,
    pub allowanonymouslogin: bool,
    pub tls_required: bool,
    /// `popminpoll` in seconds (0 = none).
    pub popminpoll: i64,
    pub poppollpadding: i64,
    /// `popexpiretime` in seconds (negative = NEVER).
    pub popexpiretime: i64,
    /// `poptimeout`, at least 10 minutes.
    pub poptimeout: Duration,
    pub failedloginpause: Duration,
    /// `plaintextloginpause`: wait after a successful USER/PASS login outside TLS.
    pub plaintextloginpause: Duration,
    pub popsubfolders: bool,
    pub popuseimapflags: bool,
    pub popuseacl: bool,
    pub readonly: bool,
    pub uidl_format: UidlFormat,
    pub virtdomains: bool,
    /// The external hierarchy separator is `.` (`unixhierarchysep: no`).
    pub dot_separator: bool,
    pub username_tolower: bool,
    /// `admins` (or `pop3_admins`): who may log in as another user (SASL authzid), as
    /// Cyrus's `mysasl_proxy_policy` allows.
    pub admins: Vec<String>,
}

impl Default for Pop3Config {
    /// Cyrus 3.6.1 defaults.
    fn default() -> Self {
        Pop3Config {
            servername: "localhost".into(),
            serverinfo: ServerInfo::On,
            allowplaintext: false,
            allowapop: true,
            allowanonymouslogin: false,
            tls_required: false,
            popminpoll: 0,
            poppollpadding: 1,
            popexpiretime: -1,
            poptimeout: Duration::from_secs(600),
            failedloginpause: Duration::from_secs(3),
            plaintextloginpause: Duration::ZERO,
            popsubfolders: false,
            popuseimapflags: false,
            popuseacl: false,
            readonly: false,
            uidl_format: UidlFormat::Cyrus,
            virtdomains: false,
            dot_separator: false,
            username_tolower: true,
            admins: Vec::new(),
        }
    }
}

/// The minimum (and default) inactivity timeout (`poptimeout`).
pub const MIN_POPTIMEOUT: Duration = Duration::from_secs(600);

impl Pop3Config {
    /// Read the POP3 options from `config` (service overrides `pop3_<key>` applied).
    pub fn from_config(config: &Config) -> Result<Pop3Config, ConfigError> {
        let config = config.clone().with_service("pop3")?;
        let d = Pop3Config::default();
        // Durations in seconds as Cyrus's config_getduration reads them (bare numbers in
        // `unit`).
        let dur = |key: &str, default: i64, unit: u8| config.get_duration(key, unit, default);
        let timeout = dur("poptimeout", 600, b'm')?;
        let pause = dur("failedloginpause", 3, b's')?;
        let plain_pause = dur("plaintextloginpause", 0, b's')?;
        let serverinfo = match config.get("serverinfo").unwrap_or("on") {
            "off" | "no" | "0" | "false" | "f" => ServerInfo::Off,
            "min" => ServerInfo::Min,
            _ => ServerInfo::On,
        };
        Ok(Pop3Config {
            servername: config
                .get("servername")
                .map(str::to_string)
                .unwrap_or_else(hostname),
            serverinfo,
            allowplaintext: config.get_bool("allowplaintext", d.allowplaintext)?,
            allowapop: config.get_bool("allowapop", d.allowapop)?,
            allowanonymouslogin: config.get_bool("allowanonymouslogin", false)?,
            tls_required: config.get_bool("tls_required", false)?,
            popminpoll: dur("popminpoll", 0, b'm')?.max(0),
            poppollpadding: config.get_int("poppollpadding", 1)?,
            popexpiretime: dur("popexpiretime", -86_400, b'd')?,
            poptimeout: Duration::from_secs(u64::try_from(timeout).unwrap_or(0))
                .max(MIN_POPTIMEOUT),
            failedloginpause: Duration::from_secs(u64::try_from(pause).unwrap_or(0)),
            plaintextloginpause: Duration::from_secs(u64::try_from(plain_pause).unwrap_or(0)),
            popsubfolders: config.get_bool("popsubfolders", false)?,
            popuseimapflags: config.popuseimapflags(),
            popuseacl: config.get_bool("popuseacl", false)?,
            readonly: config.get_bool("readonly", false)?,
            uidl_format: config.uidl_format(),
            virtdomains: config.virtdomains().enabled(),
            dot_separator: !config.unixhierarchysep(),
            username_tolower: config.get_bool("username_tolower", true)?,
            admins: config.admins().into_iter().map(str::to_string).collect(),
        })
    }
}

/// The host name, as Cyrus's default `servername` (`gethostname`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// One message of a maildrop as listed at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub uid: u32,
    /// The stored size (CRLF octets), as LIST reports it.
    pub size: u64,
    /// Internal: the index record number (0-based) at login.
    pub recno: u32,
}

/// Why a maildrop could not be opened; each maps to one Cyrus reply.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `-ERR [SYS/TEMP] Unable to open maildrop: <msg>` (after 3 s).
    #[error("{0}")]
    Temp(String),
    /// `-ERR [SYS/PERM] Unable to open maildrop: <msg>` (after 3 s).
    #[error("{0}")]
    Perm(String),
    /// `-ERR [IN-USE] Unable to lock maildrop: <msg>`.
    #[error("{0}")]
    InUse(String),
    /// `-ERR [LOGIN-DELAY] Logins must be at least N minute(s) apart`; the value is popminpoll in seconds.
    #[error("logins must be at least {0} seconds apart")]
    LoginDelay(i64),
}

/// What the QUIT update should do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Record numbers (of [`MessageInfo::recno`]) to expunge, with their UIDs.
    pub expunge: Vec<(u32, u32)>,
    /// Record numbers retrieved (RETR), to get `\Seen` with popuseimapflags.
    pub seen: Vec<(u32, u32)>,
    /// The login time (seconds) for `pop3_last_login`.
    pub login_time: i64,
}

/// An opened maildrop: the message list fixed at login and the message files.
pub trait Maildrop: Send {
    fn messages(&self) -> &[MessageInfo];
    fn uidvalidity(&self) -> u32;
    /// The mailbox has the `POP3_NEW_UIDL` option.
    fn new_uidl(&self) -> bool;
    /// The message file of list entry `i` (0-based), read in pieces.
    fn open_message(&mut self, i: usize) -> std::io::Result<Box<dyn Read + Send>>;
    /// With `popuseacl`: whether the user holds ACL right `right` (`t` to DELE, `s` to set
    /// `\Seen`) on the mailbox.
    fn may(&self, _right: u8) -> bool {
        true
    }
    /// Apply QUIT: expunge, \Seen, pop3_last_login; durable when it returns Ok.
    fn commit(self: Box<Self>, update: &Update) -> Result<(), String>;
}

/// Who logs in and which mailbox they asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginTarget {
    /// The canonical user id (`alice`, `alice@example.com`).
    pub userid: String,
    /// The `+folder` part with popsubfolders (without the `+`).
    pub subfolder: Option<String>,
    /// `recent:` mode: list the last 30 days, ignoring `pop3_show_after`.
    pub recent: bool,
}

/// Opens maildrops (the spool in production, memory in tests).
pub trait MaildropStore: Send + Sync {
    fn open(&self, target: &LoginTarget, login_time: i64) -> Result<Box<dyn Maildrop>, OpenError>;
    /// `user_deny.db`: `Some(message)` when `userid` may not use `service`.
    fn user_denied(&self, userid: &str, service: &str) -> Option<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_minimum_timeout() {
        let c = Config::parse(
            b"configdirectory: /x\npoptimeout: 5\npopminpoll: 2\nservername: mx\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let p = Pop3Config::from_config(&c).unwrap();
        assert_eq!(p.poptimeout, MIN_POPTIMEOUT);
        assert_eq!(p.popminpoll, 120);
        assert_eq!(p.failedloginpause, Duration::from_secs(3));
        assert_eq!(p.popexpiretime, -86400);
        assert_eq!(p.servername, "mx");
        assert!(p.allowapop && !p.allowplaintext);
        let c = Config::parse(
            b"configdirectory: /x\npop3_poptimeout: 1h\nfailedloginpause: 0\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let p = Pop3Config::from_config(&c).unwrap();
        assert_eq!(p.poptimeout, Duration::from_secs(3600));
        assert_eq!(p.failedloginpause, Duration::ZERO);
        // Durations as config_getduration reads them; junk is a configuration error.
        let c = Config::parse(
            b"configdirectory: /x\npopminpoll: 1h30\npopexpiretime: 2\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let p = Pop3Config::from_config(&c).unwrap();
        assert_eq!((p.popminpoll, p.popexpiretime), (5400, 2 * 86_400));
        let c = Config::parse(
            b"configdirectory: /x\npop3_popminpoll: 5w\n",
            std::path::Path::new("/"),
        );
        assert!(c.map_or(true, |c| Pop3Config::from_config(&c).is_err()));
    }
}
