//! The `cyrkit` binary: parse the command line, run one subcommand, map the outcome to an
//! exit code in one place (the table in docs: 0 clean, 1 findings, 2 usage or configuration,
//! 3 something could not be processed, 75 a lock was held too long).

use std::process::ExitCode;

use clap::Parser;
use cyrkit::cmd::{self, Cli};

fn main() -> ExitCode {
    let args = cmd::multicall_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { cmd::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cmd::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("cyrkit: error: {}", cmd::error_chain(&e));
            ExitCode::from(cmd::exit_code_for_error(&e))
        }
    }
}
