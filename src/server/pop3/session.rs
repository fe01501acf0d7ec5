//! One POP3 session over a [`Channel`]: the AUTHORIZATION state (USER/PASS, APOP, AUTH,
//! STLS, CAPA, UTF8), the TRANSACTION state over a [`Maildrop`] fixed at login, and the UPDATE
//! at QUIT — with Cyrus 3.6 pop3d's replies (imap/pop3d.c `cmdloop`, `cmd_*`, `openinbox`,
//! `blat`, `uidl_msg`).
//!
//! A dropped connection, a timeout or a server shutdown end the session without the update:
//! nothing DELE'd is expunged unless the client says QUIT.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::command::{self, ArgError, Parsed, Verb};
use super::login::{self, LoginNames};
use super::stuff::Stuffer;
use super::{LoginTarget, Maildrop, MaildropStore, OpenError, Pop3Config, ServerInfo, Update};
use crate::server::auth::Authenticator;
use crate::server::channel::{Channel, ChannelError};
use crate::server::sasl::{self, Mechanism, ProxyPolicy, SaslError, SaslServer, SaslStep};
use crate::spool::config::UidlFormat;

/// Longest command line read (Cyrus reads commands into an 8192-byte buffer).
pub const LINE_LIMIT: usize = 8190;
/// Longest SASL response line (`BASE64_BUF_SIZE`).
pub const SASL_LINE_LIMIT: usize = 21848;
/// Pieces a message file is read in.
pub const READ_CHUNK: usize = 64 * 1024;
/// Cyrus sleeps this long before saying a maildrop cannot be opened.
pub const OPEN_FAIL_PAUSE: Duration = Duration::from_secs(3);

/// Everything a session needs besides its channel.
#[derive(Clone)]
pub struct SessionEnv {
    pub cfg: Arc<Pop3Config>,
    pub store: Arc<dyn MaildropStore>,
    /// The password store; `None`: none configured (every login fails).
    pub auth: Option<Arc<dyn Authenticator>>,
    /// The service name (`pop3`, `pop3s`): Cyrus's `config_ident`, checked in user_deny.db.
    pub service: &'static str,
    /// Pause before "Unable to open maildrop" replies ([`OPEN_FAIL_PAUSE`]; tests use 0).
    pub open_fail_pause: Duration,
    /// The clock (seconds since the epoch); tests fix it.
    pub now: fn() -> i64,
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

static SESSION_COUNT: AtomicU64 = AtomicU64::new(0);

/// A session id shaped as Cyrus's `session_new_id`: `<servername>-<time>-<pid>-<n>-<random>`.
pub fn new_session_id(servername: &str, now: i64) -> String {
    let n = SESSION_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let r: u64 = rand::random();
    format!("{servername}-{now}-{}-{n}-{r}", std::process::id())
}

/// The TRANSACTION state: the maildrop and what the client did to it.
struct Txn {
    drop: Box<dyn Maildrop>,
    deleted: Vec<bool>,
    seen: Vec<bool>,
    userid: String,
    login_time: i64,
}

/// The AUTHORIZATION state: the name given with USER, if any.
#[derive(Default)]
struct Authorization {
    user: Option<LoginTarget>,
}

enum State {
    Authorization(Authorization),
    Transaction(Box<Txn>),
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// QUIT (the update ran, if logged in).
    Quit,
    /// Client gone, timeout, error: no update.
    Dropped,
    /// Server shutdown: told the client, no update.
    Shutdown,
    /// Denied by user_deny.db.
    Denied,
}

struct Session<'a> {
    ch: &'a mut dyn Channel,
    env: &'a SessionEnv,
    /// The password store, asked with login names as the client sent them.
    names: Arc<LoginNames>,
    policy: Arc<ProxyPolicy>,
    session_id: String,
    apop_challenge: Option<String>,
    tls_done: bool,
}

/// Run one session to its end.
pub fn run(ch: &mut dyn Channel, env: &SessionEnv) -> End {
    let now = (env.now)();
    ch.set_idle_timeout(env.cfg.poptimeout);
    let names = Arc::new(LoginNames::new(env.auth.clone(), env.cfg.clone()));
    let apop_possible = !env.cfg.tls_required && env.cfg.allowapop && names.has_secrets();
    let mut s = Session {
        session_id: new_session_id(&env.cfg.servername, now),
        apop_challenge: apop_possible.then(|| sasl::make_challenge(&env.cfg.servername)),
        names,
        policy: Arc::new(ProxyPolicy {
            admins: env.cfg.admins.clone(),
        }),
        tls_done: ch.tls_active(),
        ch,
        env,
    };
    let end = s.run();
    let _ = s.ch.flush();
    end
}

impl Session<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.ch.write_all(bytes)
    }

    fn send_str(&mut self, s: &str) -> Result<(), ChannelError> {
        self.ch.write_all(s.as_bytes())
    }

    fn run(&mut self) -> End {
        let mut greeting = String::from("+OK");
        if self.env.cfg.serverinfo != ServerInfo::Off {
            greeting.push(' ');
            greeting.push_str(&self.env.cfg.servername);
        }
        if self.env.cfg.serverinfo == ServerInfo::On {
            greeting.push_str(" Cyrus POP3 ");
            greeting.push_str(super::VERSION);
        }
        greeting.push_str(" server ready ");
        greeting.push_str(self.apop_challenge.as_deref().unwrap_or(""));
        greeting.push_str("\r\n");
        if self.send_str(&greeting).is_err() {
            return End::Dropped;
        }
        let mut state = State::Authorization(Authorization::default());
        loop {
            // cmdloop: user_deny.db is consulted before every command once a user is named.
            let userid = match &state {
                State::Authorization(a) => a.user.as_ref().map(|u| u.userid.clone()),
                State::Transaction(t) => Some(t.userid.clone()),
            };
            if let Some(uid) = userid {
                if let Some(msg) = self.env.store.user_denied(&uid, self.env.service) {
                    let msg = msg.trim_start_matches('[');
                    let _ = self.send_str(&format!("-ERR [SYS/TEMP] {msg}\r\n"));
                    return End::Denied;
                }
            }
            let line = match self.ch.read_line(LINE_LIMIT) {
                Ok(l) => l,
                Err(ChannelError::LineTooLong { .. }) => {
                    if self.send(b"-ERR Unrecognized command\r\n").is_err() {
                        return End::Dropped;
                    }
                    continue;
                }
                Err(ChannelError::Shutdown) => {
                    let _ = self.send(b"-ERR [SYS/TEMP] Server shutting down\r\n");
                    return End::Shutdown;
                }
                Err(_) => return End::Dropped,
            };
            let (verb, arg) = match command::parse_line(&line.bytes) {
                Parsed::SyntaxError => {
                    if self.send(b"-ERR Syntax error\r\n").is_err() {
                        return End::Dropped;
                    }
                    continue;
                }
                Parsed::Command { verb, arg } => (verb, arg.map(<[u8]>::to_vec)),
            };
            let step = match state {
                State::Authorization(a) => self.authorization(a, verb, arg.as_deref()),
                State::Transaction(t) => self.transaction(*t, verb, arg.as_deref()),
            };
            match step {
                Ok(Next::Stay(s)) => state = s,
                Ok(Next::End(e)) => return e,
                Err(ChannelError::Shutdown) => return End::Shutdown,
                Err(_) => return End::Dropped,
            }
        }
    }

    fn plaintext_ok(&self) -> bool {
        !self.env.cfg.tls_required && (self.tls_done || self.env.cfg.allowplaintext)
    }

    fn mechanisms(&self) -> Vec<Mechanism> {
        login::mechanisms(self.names.as_ref(), self.plaintext_ok())
    }

    fn tls_configured(&self) -> bool {
        self.ch.tls_available() || self.ch.tls_active()
    }

    fn capa(&mut self, logged_in: bool) -> Result<(), ChannelError> {
        let cfg = self.env.cfg.clone();
        let mut out = String::from("+OK List of capabilities follows\r\n");
        let mechs = self.mechanisms();
        if !cfg.tls_required && !logged_in && !mechs.is_empty() {
            let names: Vec<&str> = mechs.iter().map(|m| m.name()).collect();
            out.push_str(&format!("SASL {}\r\n", names.join(" ")));
        }
        if self.ch.tls_available() && !self.tls_done && !logged_in {
            out.push_str("STLS\r\n");
        }
        if cfg.popexpiretime < 0 {
            out.push_str("EXPIRE NEVER\r\n");
        } else {
            out.push_str(&format!("EXPIRE {}\r\n", cfg.popexpiretime / 86_400));
        }
        out.push_str(&format!("LOGIN-DELAY {}\r\n", cfg.popminpoll));
        out.push_str("TOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n");
        if !logged_in && self.plaintext_ok() {
            out.push_str("USER\r\n");
        }
        if !logged_in {
            out.push_str("UTF8\r\n");
        }
        if logged_in || cfg.serverinfo == ServerInfo::On {
            out.push_str(&format!("IMPLEMENTATION Cyrus POP3 {}\r\n", super::VERSION));
        }
        out.push_str(".\r\n");
        self.send_str(&out)
    }

    // ---------------------------------------------------------------- AUTHORIZATION

    fn authorization(
        &mut self,
        mut a: Authorization,
        verb: Verb,
        arg: Option<&[u8]>,
    ) -> Result<Next, ChannelError> {
        let stay = |a| Ok(Next::Stay(State::Authorization(a)));
        match verb {
            Verb::Quit => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                    return stay(a);
                }
                self.send(b"+OK\r\n")?;
                Ok(Next::End(End::Quit))
            }
            Verb::Capa => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    self.capa(false)?;
                }
                stay(a)
            }
            Verb::User => {
                match arg {
                    None => self.send(ArgError::MissingArgument.reply())?,
                    Some(name) => self.cmd_user(&mut a, name)?,
                }
                stay(a)
            }
            Verb::Pass => match arg {
                None => {
                    self.send(ArgError::MissingArgument.reply())?;
                    stay(a)
                }
                Some(pass) => self.cmd_pass(a, pass),
            },
            Verb::Apop if self.apop_challenge.is_some() => match arg {
                None => {
                    self.send(ArgError::MissingArgument.reply())?;
                    stay(a)
                }
                Some(resp) => self.cmd_apop(a, resp),
            },
            Verb::Auth => self.cmd_auth(a, arg),
            Verb::Stls if self.tls_configured() => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else if self.tls_done {
                    self.send(b"-ERR Already successfully executed STLS\r\n")?;
                } else {
                    self.send(b"+OK Begin TLS negotiation now\r\n")?;
                    self.ch.flush()?;
                    self.ch.start_tls()?;
                    self.tls_done = true;
                }
                stay(a)
            }
            Verb::Utf8 => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    self.send(b"+OK\r\n")?;
                }
                stay(a)
            }
            _ => {
                self.send(b"-ERR Unrecognized command\r\n")?;
                stay(a)
            }
        }
    }

    fn peer(&self) -> String {
        self.ch.peer().received_host()
    }

    fn cmd_user(&mut self, a: &mut Authorization, name: &[u8]) -> Result<(), ChannelError> {
        if !self.plaintext_ok() {
            return self.send(b"-ERR [AUTH] USER command only available under a layer\r\n");
        }
        if a.user.is_some() {
            return self.send(b"-ERR [AUTH] Must give PASS command\r\n");
        }
        match login::parse_login_name(name, &self.env.cfg) {
            Some(t) => {
                a.user = Some(t);
                self.send(b"+OK Name is a valid mailbox\r\n")
            }
            None => {
                log::info!(
                    "badlogin: {} plaintext ({}) invalid user",
                    self.peer(),
                    String::from_utf8_lossy(name).escape_default()
                );
                self.send(b"-ERR [AUTH] Invalid user\r\n")
            }
        }
    }

    fn failed_pause(&self) {
        if !self.env.cfg.failedloginpause.is_zero() {
            std::thread::sleep(self.env.cfg.failedloginpause);
        }
    }

    fn check_password(&self, user: &str, pass: &[u8]) -> bool {
        match self.names.check_password(user, pass) {
            Ok(ok) => ok,
            Err(e) => {
                log::error!("cannot check the password of {user}: {e}");
                false
            }
        }
    }

    fn cmd_pass(&mut self, a: Authorization, pass: &[u8]) -> Result<Next, ChannelError> {
        let Some(target) = a.user else {
            self.send(b"-ERR [AUTH] Must give USER command\r\n")?;
            return Ok(Next::Stay(State::Authorization(Authorization::default())));
        };
        let anonymous = target.userid == "anonymous";
        if anonymous || !self.check_password(&target.userid, pass) {
            if anonymous {
                log::info!("badlogin: {} anonymous login refused", self.peer());
            } else {
                log::info!(
                    "badlogin: {} plaintext ({}) [authentication failure]",
                    self.peer(),
                    target.userid
                );
                self.failed_pause();
            }
            self.send(b"-ERR [AUTH] Invalid login\r\n")?;
            return Ok(Next::Stay(State::Authorization(Authorization::default())));
        }
        // cmd_pass: a password that crossed the network in the clear costs a pause.
        if !self.tls_done && !self.env.cfg.plaintextloginpause.is_zero() {
            std::thread::sleep(self.env.cfg.plaintextloginpause);
        }
        self.open_inbox(target, "plaintext")
    }

    fn cmd_apop(&mut self, a: Authorization, resp: &[u8]) -> Result<Next, ChannelError> {
        if a.user.is_some() {
            self.send(b"-ERR [AUTH] Must give PASS command\r\n")?;
            return Ok(Next::Stay(State::Authorization(a)));
        }
        let chal = self.apop_challenge.clone().unwrap_or_default();
        // `name SP digest`, split at the last blank as Cyrus SASL's APOP check does.
        let target = match resp.iter().rposition(|&b| b == b' ') {
            None => Err(login::BAD_PROTOCOL),
            Some(sp) => {
                let (name, digest) = (&resp[..sp], &resp[sp + 1..]);
                match std::str::from_utf8(name) {
                    Ok(n) if sasl::apop_check(self.names.as_ref(), n, chal.as_bytes(), digest) => {
                        login::parse_login_name(name, &self.env.cfg).ok_or(login::AUTH_FAILURE)
                    }
                    _ => Err(login::AUTH_FAILURE),
                }
            }
        };
        match target {
            Ok(t) => self.open_inbox(t, "APOP"),
            Err(text) => {
                log::info!("badlogin: {} APOP ({chal}) [{text}]", self.peer());
                self.failed_pause();
                self.send_str(&format!("-ERR [AUTH] authenticating: {text}\r\n"))?;
                Ok(Next::Stay(State::Authorization(Authorization::default())))
            }
        }
    }

    fn cmd_auth(&mut self, a: Authorization, arg: Option<&[u8]>) -> Result<Next, ChannelError> {
        if self.env.cfg.tls_required {
            self.send(b"-ERR [AUTH] AUTH command only available under a layer\r\n")?;
            return Ok(Next::Stay(State::Authorization(a)));
        }
        let Some(arg) = arg else {
            let mut out = String::from("+OK List of supported mechanisms follows\r\n");
            for m in self.mechanisms() {
                out.push_str(m.name());
                out.push_str("\r\n");
            }
            out.push_str(".\r\n");
            self.send_str(&out)?;
            return Ok(Next::Stay(State::Authorization(a)));
        };
        let sp = arg.iter().position(|&b| command::is_space(b));
        let (mech, initial) = match sp {
            Some(i) => (
                arg.get(..i).unwrap_or(&[]),
                Some(arg.get(i + 1..).unwrap_or(&[])),
            ),
            None => (arg, None),
        };
        let mech_name = String::from_utf8_lossy(mech).to_ascii_uppercase();
        match self.sasl(mech, initial)? {
            Ok(target) => self.open_inbox(target, &mech_name),
            Err(SaslEnd::Cancel) => {
                self.send(b"-ERR [AUTH] Client canceled authentication\r\n")?;
                Ok(Next::Stay(State::Authorization(Authorization::default())))
            }
            Err(SaslEnd::Failed(text, user)) => {
                log::info!(
                    "badlogin: {} {mech_name} ({}) [{text}]",
                    self.peer(),
                    user.as_deref().unwrap_or("-notset-"),
                );
                self.failed_pause();
                self.send_str(&format!("-ERR [AUTH] authenticating: {text}\r\n"))?;
                Ok(Next::Stay(State::Authorization(Authorization::default())))
            }
        }
    }

    /// Run the SASL exchange (`saslserver`): `+ ` continuations until the mechanism is done.
    fn sasl(
        &mut self,
        mech: &[u8],
        initial: Option<&[u8]>,
    ) -> Result<Result<LoginTarget, SaslEnd>, ChannelError> {
        let Some(mech) = Mechanism::parse(mech).filter(|m| self.mechanisms().contains(m)) else {
            return Ok(Err(SaslEnd::Failed(login::NO_MECHANISM, None)));
        };
        let mut server = SaslServer::new(
            mech,
            self.names.clone(),
            self.policy.clone(),
            &self.env.cfg.servername,
        );
        let mut step = server.start(initial);
        loop {
            match step {
                SaslStep::Challenge(c) => {
                    self.send_str(&format!("+ {}\r\n", sasl::encode_challenge(&c)))?;
                    let line = match self.ch.read_line(SASL_LINE_LIMIT) {
                        Ok(l) => l,
                        Err(ChannelError::LineTooLong { .. }) => {
                            return Ok(Err(SaslEnd::Failed(login::BAD_PROTOCOL, None)))
                        }
                        Err(e) => return Err(e),
                    };
                    // Cyrus cancels on any response starting with `*`.
                    if line.bytes.first() == Some(&b'*') {
                        return Ok(Err(SaslEnd::Cancel));
                    }
                    step = server.step(&line.bytes);
                }
                SaslStep::Done { authzid, .. } => {
                    return Ok(login::parse_login_name(authzid.as_bytes(), &self.env.cfg)
                        .ok_or(SaslEnd::Failed(login::AUTH_FAILURE, Some(authzid))));
                }
                SaslStep::Failed(SaslError::Cancelled) => return Ok(Err(SaslEnd::Cancel)),
                SaslStep::Failed(SaslError::NotAuthorized { authcid, authzid }) => {
                    // The password was right; acting as oneself under another spelling
                    // (`Alice` for `alice`, `recent:alice`) is no proxy login.
                    let cfg = &self.env.cfg;
                    let same = login::parse_login_name(authzid.as_bytes(), cfg).filter(|z| {
                        login::parse_login_name(authcid.as_bytes(), cfg)
                            .is_some_and(|c| c.userid == z.userid)
                    });
                    return Ok(same.ok_or(SaslEnd::Failed(login::AUTH_FAILURE, Some(authcid))));
                }
                SaslStep::Failed(e) => {
                    let user = match &e {
                        SaslError::AuthFailed { user } => Some(user.clone()),
                        _ => None,
                    };
                    return Ok(Err(SaslEnd::Failed(login::sasl_error_text(&e), user)));
                }
            }
        }
    }

    /// `openinbox`: log the login, open the maildrop, answer.
    fn open_inbox(&mut self, target: LoginTarget, mech: &str) -> Result<Next, ChannelError> {
        let sub = target
            .subfolder
            .as_ref()
            .map(|s| format!("+{s}"))
            .unwrap_or_default();
        let recent = if target.recent { " (recent mode)" } else { "" };
        let tls = if self.tls_done { "+TLS" } else { "" };
        log::info!(
            "login: {} {}{sub} {mech}{tls} User logged in SESSIONID=<{}>{recent}",
            self.peer(),
            target.userid,
            self.session_id
        );
        let login_time = (self.env.now)();
        match self.env.store.open(&target, login_time) {
            Ok(drop) => {
                let n = drop.messages().len();
                self.send_str(&format!(
                    "+OK Mailbox locked and ready SESSIONID=<{}>\r\n",
                    self.session_id
                ))?;
                Ok(Next::Stay(State::Transaction(Box::new(Txn {
                    drop,
                    deleted: vec![false; n],
                    seen: vec![false; n],
                    userid: target.userid,
                    login_time,
                }))))
            }
            Err(e) => {
                log::info!("Unable to open maildrop of {}: {e}", target.userid);
                let reply = match &e {
                    OpenError::Temp(m) => {
                        std::thread::sleep(self.env.open_fail_pause);
                        format!("-ERR [SYS/TEMP] Unable to open maildrop: {m}\r\n")
                    }
                    OpenError::Perm(m) => {
                        std::thread::sleep(self.env.open_fail_pause);
                        format!("-ERR [SYS/PERM] Unable to open maildrop: {m}\r\n")
                    }
                    OpenError::InUse(m) => {
                        format!("-ERR [IN-USE] Unable to lock maildrop: {m}\r\n")
                    }
                    OpenError::LoginDelay(secs) => {
                        let min = secs / 60;
                        let s = if min > 1 { "s" } else { "" };
                        format!(
                            "-ERR [LOGIN-DELAY] Logins must be at least {min} minute{s} apart\r\n"
                        )
                    }
                };
                self.send_str(&reply)?;
                Ok(Next::Stay(State::Authorization(Authorization::default())))
            }
        }
    }

    // ---------------------------------------------------------------- TRANSACTION

    fn transaction(
        &mut self,
        mut t: Txn,
        verb: Verb,
        arg: Option<&[u8]>,
    ) -> Result<Next, ChannelError> {
        match verb {
            Verb::Quit => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                    return Ok(Next::Stay(State::Transaction(Box::new(t))));
                }
                return self.update(t);
            }
            Verb::Capa => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    self.capa(true)?;
                }
            }
            Verb::Stat => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    let (mut n, mut size) = (0u64, 0u64);
                    for (m, d) in t.drop.messages().iter().zip(&t.deleted) {
                        if !d {
                            n += 1;
                            size = size.saturating_add(m.size);
                        }
                    }
                    self.send_str(&format!("+OK {n} {size}\r\n"))?;
                }
            }
            Verb::List | Verb::Uidl => {
                let uidl = verb == Verb::Uidl;
                match arg {
                    Some(a) => {
                        if let Some(i) = self.msgno(&t, a)? {
                            let item = self.list_item(&t, i, uidl);
                            self.send_str(&format!("+OK {item}"))?;
                        }
                    }
                    None => {
                        let mut out = String::from(if uidl {
                            "+OK unique-id listing follows\r\n"
                        } else {
                            "+OK scan listing follows\r\n"
                        });
                        for i in 0..t.deleted.len() {
                            if !t.deleted.get(i).copied().unwrap_or(true) {
                                out.push_str(&self.list_item(&t, i, uidl));
                            }
                            if out.len() > 16 * 1024 {
                                self.send_str(&out)?;
                                out.clear();
                            }
                        }
                        out.push_str(".\r\n");
                        self.send_str(&out)?;
                    }
                }
            }
            Verb::Retr => match arg {
                None => self.send(ArgError::MissingArgument.reply())?,
                Some(a) => {
                    if let Some(i) = self.msgno(&t, a)? {
                        self.blat(&mut t, i, None)?;
                        if let Some(s) = t.seen.get_mut(i) {
                            *s = true;
                        }
                    }
                }
            },
            Verb::Top => match command::parse_top(arg) {
                Err(e) => self.send(e.reply())?,
                Ok((n, lines)) => {
                    if let Some(i) = self.exists_or_err(&t, n)? {
                        self.blat(&mut t, i, Some(lines))?;
                    }
                }
            },
            Verb::Dele => {
                if arg.is_none() {
                    self.send(ArgError::MissingArgument.reply())?;
                } else if self.env.cfg.popuseacl && !t.drop.may(b't') {
                    self.send(b"-ERR [SYS/PERM] Permission denied\r\n")?;
                } else if self.env.cfg.readonly {
                    self.send(
                        b"-ERR [SYS/PERM] This connection is configured for read-only access\r\n",
                    )?;
                } else if let Some(i) = self.msgno(&t, arg.unwrap_or(&[]))? {
                    if let Some(d) = t.deleted.get_mut(i) {
                        *d = true;
                    }
                    self.send(b"+OK message deleted\r\n")?;
                }
            }
            Verb::Noop => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    self.send(b"+OK\r\n")?;
                }
            }
            Verb::Rset => {
                if arg.is_some() {
                    self.send(ArgError::ExtraArgument.reply())?;
                } else {
                    t.deleted.iter_mut().for_each(|d| *d = false);
                    t.seen.iter_mut().for_each(|s| *s = false);
                    self.send(b"+OK\r\n")?;
                }
            }
            _ => self.send(b"-ERR Unrecognized command\r\n")?,
        }
        Ok(Next::Stay(State::Transaction(Box::new(t))))
    }

    /// `parse_msgno` + `msg_exists_or_err`: the 0-based list index, or the error sent.
    fn msgno(&mut self, t: &Txn, arg: &[u8]) -> Result<Option<usize>, ChannelError> {
        match command::parse_msgno(arg) {
            Err(e) => {
                self.send(e.reply())?;
                Ok(None)
            }
            Ok(n) => self.exists_or_err(t, n),
        }
    }

    fn exists_or_err(&mut self, t: &Txn, n: u32) -> Result<Option<usize>, ChannelError> {
        let i = (n as usize).checked_sub(1);
        match i.filter(|&i| t.deleted.get(i) == Some(&false)) {
            Some(i) => Ok(Some(i)),
            None => {
                self.send(b"-ERR No such message\r\n")?;
                Ok(None)
            }
        }
    }

    /// One LIST or UIDL line (`uidl_msg`).
    fn list_item(&self, t: &Txn, i: usize, uidl: bool) -> String {
        let Some(m) = t.drop.messages().get(i) else {
            return String::new();
        };
        let n = i + 1;
        if !uidl {
            return format!("{n} {}\r\n", m.size);
        }
        format!(
            "{n} {}\r\n",
            uidl_string(
                t.drop.new_uidl(),
                self.env.cfg.uidl_format,
                t.drop.uidvalidity(),
                m.uid
            )
        )
    }

    /// `blat`: send message `i` (or its header and `lines` body lines).
    fn blat(&mut self, t: &mut Txn, i: usize, lines: Option<u32>) -> Result<(), ChannelError> {
        let mut file = match t.drop.open_message(i) {
            Ok(f) => f,
            Err(e) => {
                log::error!("IOERROR: message {} of {}: {e}", i + 1, t.userid);
                return self.send(b"-ERR [SYS/PERM] Could not read message file\r\n");
            }
        };
        self.send(b"+OK Message follows\r\n")?;
        let mut stuffer = Stuffer::new(lines);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 8);
        while !stuffer.done() {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The client already has "+OK": a truncated message must not look whole.
                    log::error!("IOERROR: reading message {} of {}: {e}", i + 1, t.userid);
                    return Err(ChannelError::Io(e));
                }
            };
            stuffer.push(buf.get(..n).unwrap_or(&[]), &mut out);
            self.ch.write_all(&out)?;
            out.clear();
        }
        stuffer.finish(&mut out);
        self.ch.write_all(&out)
    }

    // ---------------------------------------------------------------- UPDATE

    fn update(&mut self, t: Txn) -> Result<Next, ChannelError> {
        let Txn {
            drop,
            deleted,
            seen,
            userid,
            login_time,
        } = t;
        let pick = |flags: &[bool]| -> Vec<(u32, u32)> {
            drop.messages()
                .iter()
                .zip(flags)
                .filter(|(_, &f)| f)
                .map(|(m, _)| (m.recno, m.uid))
                .collect()
        };
        let update = Update {
            expunge: pick(&deleted),
            seen: if self.env.cfg.popuseimapflags && (!self.env.cfg.popuseacl || drop.may(b's')) {
                pick(&seen)
            } else {
                Vec::new()
            },
            login_time,
        };
        let n = update.expunge.len();
        self.ch.set_busy(true);
        let r = drop.commit(&update);
        self.ch.set_busy(false);
        match r {
            Ok(()) => {
                if n > 0 {
                    log::info!("Expunged {n} messages of {userid}");
                }
                self.send(b"+OK\r\n")?;
            }
            Err(e) => {
                log::error!("IOERROR: QUIT update of {userid} failed: {e}");
                self.send(b"-ERR [SYS/TEMP] Unable to update maildrop\r\n")?;
            }
        }
        Ok(Next::End(End::Quit))
    }
}

enum Next {
    Stay(State),
    End(End),
}

enum SaslEnd {
    Cancel,
    /// The `sasl_errstring` text, and the user named, for the log.
    Failed(&'static str, Option<String>),
}

/// The UIDL of a message as Cyrus's `uidl_msg` prints it.
pub fn uidl_string(new_uidl: bool, format: UidlFormat, uidvalidity: u32, uid: u32) -> String {
    if !new_uidl {
        return uid.to_string();
    }
    match format {
        UidlFormat::UidOnly => uid.to_string(),
        UidlFormat::Cyrus => format!("{uidvalidity}.{uid}"),
        UidlFormat::Dovecot => format!("{uid:08x}{uidvalidity:08x}"),
        UidlFormat::Courier => format!("{uidvalidity}-{uid}"),
    }
}

#[cfg(test)]
mod tests;
