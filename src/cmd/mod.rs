//! One module per subcommand. Each orchestrates `spool` and `format` and owns its output;
//! this module holds the command-line definition and the exit-code policy.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod admin;
pub mod dedupe;
pub mod hints;
pub mod mbcheck;
pub mod quota;
pub mod reconstruct;
pub mod reconstruct_m;
pub mod serve;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FINDINGS: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_PARTIAL: u8 = 3;
pub const EXIT_TEMPFAIL: u8 = 75;

/// A command line that names something impossible (a malformed mailbox name, ...): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How a command ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success, nothing wrong.
    Clean,
    /// Problems found (mbcheck, or a `-n` run that would change something).
    Findings,
    /// Some mailbox or file could not be processed; the rest was.
    Partial,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Clean => EXIT_OK,
            Outcome::Findings => EXIT_FINDINGS,
            Outcome::Partial => EXIT_PARTIAL,
        }
    }
}

/// Options every subcommand takes, as the Cyrus tools take them.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// imapd.conf to read
    #[arg(
        short = 'C',
        value_name = "FILE",
        default_value = "/etc/imapd.conf",
        global = true
    )]
    pub config: PathBuf,
    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Quiet: print only errors
    #[arg(short = 'q', global = true)]
    pub quiet: bool,
    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway)
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "cyrkit",
    version,
    about = "Check and repair Cyrus IMAP mail stores",
    long_about = "Check and repair Cyrus IMAP mail stores.\n\nFlags follow Cyrus's own tools. Exit codes: 0 clean, 1 problems found, 2 usage or configuration error, 3 something could not be processed (the rest was), 75 a lock was held too long."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the mailboxes database, headers, indexes, caches, message files and quota usage (read-only)
    Mbcheck(mbcheck::MbcheckArgs),
    /// Report quota roots; with -f recompute their usage from the mailboxes and fix it
    Quota(quota::QuotaArgs),
    /// Rebuild mailboxes' cyrus.index, cyrus.cache and cyrus.header from the message files and what survives; with -m, the mailboxes database from the spool
    Reconstruct(reconstruct::ReconstructArgs),
    /// Create links named reconstruct, quota and mbcheck to this binary in DIR (drop-in use)
    InstallLinks(admin::InstallLinksArgs),
    /// Print a shell completion script (bash, zsh, fish, ...)
    Completions(admin::CompletionsArgs),
    /// Re-link copies of one message (single-instance store) that a restore or copy broke apart
    #[command(name = "singleinstance-dedupe")]
    Dedupe(dedupe::DedupeArgs),
    /// Run the embedded LMTP and POP3 servers over the spool
    Serve(serve::ServeArgs),
}

/// Names under which the binary behaves as one subcommand (multi-call, like Cyrus's tools).
pub const MULTICALL: &[&str] = &["mbcheck", "quota", "reconstruct"];

/// When invoked through a link named after a subcommand, insert that subcommand.
pub fn multicall_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    if let Some(name) = name {
        if MULTICALL.contains(&name.as_str()) {
            args[0] = OsString::from("cyrkit");
            args.insert(1, OsString::from(name));
        }
    }
    args
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Mbcheck(args) => mbcheck::run(&cli.common, &args),
        Command::Quota(args) => quota::run(&cli.common, &args),
        Command::Reconstruct(args) => reconstruct::run(&cli.common, &args),
        Command::InstallLinks(args) => admin::install_links(&cli.common, &args),
        Command::Completions(args) => admin::completions(&args),
        Command::Dedupe(args) => dedupe::run(&cli.common, &args),
        Command::Serve(args) => serve::run(&cli.common, &args),
    }
}

/// Serde helpers for paths in `--json` output. A file name on disk need not be UTF-8 (an odd
/// file in a spool can have any bytes); JSON strings must be, so such names are written with
/// U+FFFD in place of the bad bytes instead of failing the whole document.
pub mod json_path {
    use std::path::{Path, PathBuf};

    pub fn serialize<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.to_string_lossy())
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: serde::Serializer>(
            p: &Option<PathBuf>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match p {
                Some(p) => super::serialize(p, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message
/// before it already carries (many typed errors print their source themselves).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The exit code for a command that failed outright.
pub fn exit_code_for_error(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause
            .downcast_ref::<crate::spool::config::ConfigError>()
            .is_some()
            || cause.downcast_ref::<UsageError>().is_some()
        {
            return EXIT_USAGE;
        }
        if let Some(crate::spool::lock::LockError::Timeout { .. }) = cause.downcast_ref() {
            return EXIT_TEMPFAIL;
        }
    }
    EXIT_PARTIAL
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn multicall_inserts_subcommand() {
        let got = multicall_args(vec!["/usr/sbin/mbcheck".into(), "-C".into(), "x".into()]);
        assert_eq!(
            got,
            vec![
                OsString::from("cyrkit"),
                "mbcheck".into(),
                "-C".into(),
                "x".into()
            ]
        );
        let same = multicall_args(vec!["cyrkit".into(), "mbcheck".into()]);
        assert_eq!(same, vec![OsString::from("cyrkit"), "mbcheck".into()]);
    }
}
