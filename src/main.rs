//! The `cyrkit` binary: parse the command line, run one subcommand, map the outcome to an
//! exit code in one place (the table in docs: 0 clean, 1 findings, 2 usage or configuration,
//! 3 something could not be processed, 75 a lock was held too long).

use std::process::ExitCode;

use clap::Parser;
use cyrkit::cmd::{self, Cli};
use cyrkit::ui;

fn main() -> ExitCode {
    // Like Cyrus's tools (and every C filter), end quietly when the reader of our output goes
    // away (`cyrkit mbcheck | head`) instead of panicking on a failed print.
    // SAFETY: restoring the default disposition of a signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cmd::multicall_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { cmd::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = cli.common.config.clone();
    match cmd::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("{}{}", ui::error_prefix(), cmd::error_chain(&e));
            if let Some(fix) = cmd::hints::fix_for_error(&e, &config) {
                eprintln!("{}{fix}", ui::fix_prefix());
            }
            ExitCode::from(cmd::exit_code_for_error(&e))
        }
    }
}
