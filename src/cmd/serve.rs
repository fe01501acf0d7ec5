//! `cyrkit serve`: the embedded LMTP and POP3 servers over the spool named by imapd.conf.
//!
//! This module only turns flags and imapd.conf into listeners; the protocols live in
//! `server::lmtp` and `server::pop3`, the accept loop and shutdown in `server`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cmd::{Common, Outcome, UsageError};
use crate::server::{self, channel::Shutdown, Listener, ServerSettings};
use crate::spool::config::Config;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Run the embedded LMTP and POP3 servers over the spool",
    long_about = "Run the embedded LMTP and POP3 servers over the spool named by imapd.conf.\n\nLMTP delivers into the Cyrus mailboxes as Cyrus's lmtpd does (same replies, headers, single-instance store, index, cache, quota and duplicate database, under Cyrus's locks), so Cyrus's imapd and pop3d can run on the same spool. POP3 serves each user's INBOX as Cyrus's pop3d does (same UIDLs). SIGTERM or SIGINT stops accepting and lets the sessions in flight finish."
)]
pub struct ServeArgs {
    /// Listen for LMTP on this TCP address (clients must AUTH as an admin, unless --lmtp-trust-loopback)
    #[arg(long, value_name = "ADDR")]
    pub lmtp: Vec<String>,
    /// Listen for LMTP on this UNIX socket (clients are trusted, as Cyrus trusts its lmtp socket)
    #[arg(long, value_name = "PATH")]
    pub lmtp_unix: Option<PathBuf>,
    /// Permissions of the LMTP UNIX socket (octal)
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    pub lmtp_unix_mode: u32,
    /// Group of the LMTP UNIX socket (e.g. postfix's group), so only the MTA can connect
    #[arg(long, value_name = "GROUP")]
    pub lmtp_unix_group: Option<String>,
    /// Treat LMTP clients on a loopback address as pre-authenticated (as Cyrus's lmtpd -a)
    #[arg(long)]
    pub lmtp_trust_loopback: bool,
    /// Deliver mail for users with an active Sieve script into the INBOX, unfiltered (default: refuse it with 451 4.3.0 so the MTA keeps it)
    #[arg(long)]
    pub lmtp_ignore_sieve: bool,
    /// Listen for POP3 on this TCP address (STLS offered when a certificate is configured)
    #[arg(long, value_name = "ADDR")]
    pub pop3: Vec<String>,
    /// Listen for POP3 over TLS (POP3S) on this TCP address
    #[arg(long, value_name = "ADDR")]
    pub pop3s: Vec<String>,
    /// TLS certificate chain, PEM (default: imapd.conf tls_server_cert)
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (default: imapd.conf tls_server_key)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Check passwords with saslauthd at this socket (the mux file; default: /run/saslauthd/mux)
    #[arg(long, value_name = "PATH")]
    pub saslauthd: Option<PathBuf>,
    /// Check passwords against this file of `user:hash` lines (SHA512-CRYPT, bcrypt, argon2)
    #[arg(long, value_name = "FILE", conflicts_with = "saslauthd")]
    pub passwd_file: Option<PathBuf>,
    /// Most connections served at once; more are refused with a temporary error
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_connections: usize,
    /// Log level on stderr / journald: error, warn, info, debug
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: ::log::LevelFilter,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode"))
}

/// Everything the protocol modules need to build their listeners.
pub struct ServeContext {
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub args: ServeArgs,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub shutdown: Shutdown,
}

pub fn run(common: &Common, args: &ServeArgs) -> anyhow::Result<Outcome> {
    server::log::init(args.log_level);
    if args.lmtp.is_empty()
        && args.lmtp_unix.is_none()
        && args.pop3.is_empty()
        && args.pop3s.is_empty()
    {
        return Err(UsageError(
            "nothing to serve: give --lmtp, --lmtp-unix, --pop3 or --pop3s".into(),
        )
        .into());
    }
    let config = Config::load(&common.config)
        .map_err(|e| UsageError(format!("{}: {e}", common.config.display())))?;
    let cert = args
        .tls_cert
        .clone()
        .or_else(|| config.get_path("tls_server_cert"));
    let key = args
        .tls_key
        .clone()
        .or_else(|| config.get_path("tls_server_key"));
    let tls = match (cert, key) {
        (Some(c), Some(k)) => {
            Some(server::tls::server_config(&c, &k).map_err(|e| UsageError(e.to_string()))?)
        }
        (None, None) => None,
        _ => return Err(UsageError("give both a TLS certificate and a key".into()).into()),
    };
    if !args.pop3s.is_empty() && tls.is_none() {
        return Err(UsageError(
            "--pop3s needs --tls-cert and --tls-key (or tls_server_cert/tls_server_key)".into(),
        )
        .into());
    }
    let shutdown = Shutdown::default();
    server::shutdown_on_signals(&shutdown).context("cannot install signal handlers")?;
    let ctx = ServeContext {
        config: Arc::new(config),
        config_path: common.config.clone(),
        args: args.clone(),
        tls: tls.clone(),
        shutdown: shutdown.clone(),
    };
    let mut listeners = Vec::new();
    listeners.extend(lmtp_listeners(&ctx)?);
    listeners.extend(pop3_listeners(&ctx)?);
    // Bound (possibly to a privileged port) as root: now act as the spool's owner, as
    // Cyrus's services run as the cyrus user.
    let owner = ctx.config.config_directory();
    crate::spool::atomic::become_owner_of(&owner)
        .with_context(|| format!("cannot switch to the owner of {}", owner.display()))?;
    for l in &listeners {
        if let Some(a) = l.local_addr() {
            ::log::info!("listening on {a}");
        }
    }
    server::serve(
        listeners,
        ServerSettings {
            max_connections: args.max_connections,
            tls,
        },
        shutdown,
    )
    .context("server failed")?;
    Ok(Outcome::Clean)
}

/// Idle timeout for LMTP sessions (RFC 5321 §4.5.3.2 suggests 5 minutes between commands).
pub const LMTP_IDLE: Duration = Duration::from_secs(300);

fn lmtp_listeners(ctx: &ServeContext) -> anyhow::Result<Vec<Listener>> {
    if ctx.args.lmtp.is_empty() && ctx.args.lmtp_unix.is_none() {
        return Ok(Vec::new());
    }
    use server::lmtp;
    let mut settings = lmtp::Settings::from_config(&ctx.config, ctx.args.lmtp_trust_loopback)
        .map_err(|e| UsageError(format!("LMTP: {e}")))?;
    settings.ignore_sieve = ctx.args.lmtp_ignore_sieve;
    let settings = Arc::new(settings);
    let store = Arc::new(
        lmtp::SpoolStore::open(ctx.config.clone())
            .map_err(|e| UsageError(format!("LMTP: {e:#}")))?,
    );
    let auth = server::auth::from_args_for_service(&ctx.args, &ctx.config, "lmtp")
        .map_err(|e| UsageError(format!("LMTP: {e}")))?;
    let handler: server::Handler = Arc::new(move |ch| {
        lmtp::run(ch, store.as_ref(), auth.as_deref(), &settings);
    });
    let service = server::Service {
        name: "lmtp",
        handler,
        busy_reply: b"421 4.3.2 Too many connections\r\n",
        implicit_tls: false,
        idle: LMTP_IDLE,
    };
    let mut out = Vec::new();
    for addr in &ctx.args.lmtp {
        out.push(
            Listener::tcp(addr, service.clone())
                .with_context(|| format!("cannot listen for LMTP on {addr}"))?,
        );
    }
    if let Some(path) = &ctx.args.lmtp_unix {
        let gid = match &ctx.args.lmtp_unix_group {
            Some(g) => Some(
                nix::unistd::Group::from_name(g)
                    .with_context(|| format!("cannot look up group {g}"))?
                    .ok_or_else(|| UsageError(format!("--lmtp-unix-group: no group {g:?}")))?
                    .gid
                    .as_raw(),
            ),
            None => None,
        };
        out.push(
            Listener::unix(path, ctx.args.lmtp_unix_mode, gid, service.clone())
                .with_context(|| format!("cannot listen for LMTP on {}", path.display()))?,
        );
    }
    Ok(out)
}

fn pop3_listeners(ctx: &ServeContext) -> anyhow::Result<Vec<Listener>> {
    use crate::server::pop3::{self, maildrop::SpoolStore, session};
    if ctx.args.pop3.is_empty() && ctx.args.pop3s.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = Arc::new(
        pop3::Pop3Config::from_config(&ctx.config)
            .map_err(|e| UsageError(format!("{}: {e}", ctx.config_path.display())))?,
    );
    let store = Arc::new(
        SpoolStore::new(ctx.config.clone(), cfg.clone())
            .map_err(|e| UsageError(format!("{}: {e}", ctx.config_path.display())))?,
    );
    let auth = pop3_authenticator(ctx)?;
    let service = |name: &'static str, implicit_tls: bool| {
        let env = session::SessionEnv {
            cfg: cfg.clone(),
            store: store.clone(),
            auth: auth.clone(),
            service: name,
            open_fail_pause: session::OPEN_FAIL_PAUSE,
            now: session::unix_now,
        };
        server::Service {
            name,
            handler: Arc::new(move |ch: &mut server::channel::SocketChannel| {
                session::run(ch, &env);
            }),
            busy_reply: b"-ERR [SYS/TEMP] Too many connections\r\n",
            implicit_tls,
            idle: cfg.poptimeout,
        }
    };
    let mut out = Vec::new();
    for addr in &ctx.args.pop3 {
        out.push(
            Listener::tcp(addr, service("pop3", false))
                .with_context(|| format!("cannot listen for POP3 on {addr}"))?,
        );
    }
    for addr in &ctx.args.pop3s {
        out.push(
            Listener::tcp(addr, service("pop3s", true))
                .with_context(|| format!("cannot listen for POP3S on {addr}"))?,
        );
    }
    Ok(out)
}

/// The password store POP3 logins are checked against.
fn pop3_authenticator(
    ctx: &ServeContext,
) -> anyhow::Result<Option<Arc<dyn crate::server::auth::Authenticator>>> {
    let auth = crate::server::auth::from_args(&ctx.args, &ctx.config)
        .map_err(|e| UsageError(e.to_string()))?;
    if auth.is_none() {
        ::log::warn!("pop3: no password store (--passwd-file, --saslauthd): every login fails");
    }
    Ok(auth)
}
