//! Set-up helpers: `install-links` (the multi-call names Cyrus's tools have) and
//! `completions` (shell completion scripts generated from the command-line definition).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, Common, Outcome, MULTICALL};

#[derive(Debug, Clone, clap::Args)]
pub struct InstallLinksArgs {
    /// Directory to create the links in (e.g. /usr/local/sbin)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Replace an existing file or link of the same name
    #[arg(long)]
    pub force: bool,
    /// Make hard links instead of symbolic links
    #[arg(long)]
    pub hard: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Create `DIR/reconstruct`, `DIR/quota`, `DIR/mbcheck` pointing at this binary, so that
/// scripts written for Cyrus's tools run cyrkit when DIR comes first on PATH.
pub fn install_links(common: &Common, args: &InstallLinksArgs) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("cannot find the cyrkit binary")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for name in MULTICALL {
        let link = args.dir.join(name);
        if link.symlink_metadata().is_ok() {
            if !args.force {
                if points_to(&link, &exe) {
                    continue;
                }
                return Err(super::UsageError(format!(
                    "{} exists (use --force to replace it)",
                    link.display()
                ))
                .into());
            }
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        }
        if args.hard {
            std::fs::hard_link(&exe, &link)
        } else {
            std::os::unix::fs::symlink(&exe, &link)
        }
        .with_context(|| format!("cannot create {}", link.display()))?;
        if !common.quiet && !common.json {
            println!("{} -> {}", link.display(), exe.display());
        }
    }
    if common.json {
        let links: Vec<_> = MULTICALL
            .iter()
            .map(|n| args.dir.join(n).display().to_string())
            .collect();
        let doc = serde_json::json!({ "target": exe.display().to_string(), "links": links });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(Outcome::Clean)
}

fn points_to(link: &Path, exe: &Path) -> bool {
    link.canonicalize().is_ok_and(|p| p == exe)
}

/// Print a completion script for `shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "cyrkit", &mut std::io::stdout());
    Ok(Outcome::Clean)
}
