//! The command line as an admin meets it: `--help` of every subcommand (golden files, refreshed
//! with `CYRKIT_BLESS=1`), man pages that cover every flag and render cleanly, shell
//! completions, and drop-in use through the links named after Cyrus's tools.

use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use cyrkit::cmd::Cli;

mod support;
use support::cyrus::copy_tree;

fn cyrkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cyrkit"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every subcommand name, from the clap definition (so a new one cannot be forgotten).
fn subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

fn help_text(args: &[&str]) -> String {
    let out = cyrkit()
        .args(args)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .expect("run cyrkit");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn help_matches_the_golden_files() {
    let dir = root().join("tests/snapshots/help");
    let bless = std::env::var_os("CYRKIT_BLESS").is_some();
    let mut cases: Vec<(String, Vec<String>)> = vec![("cyrkit".into(), vec![])];
    for s in subcommands() {
        cases.push((s.clone(), vec![s]));
    }
    let mut stale = Vec::new();
    for (name, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = help_text(&args);
        let file = dir.join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != got {
            stale.push(format!(
                "{}: --help differs from the golden file\n--- want\n{want}\n--- got\n{got}",
                file.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n(refresh with CYRKIT_BLESS=1 cargo test --test cli, then update the man pages)",
        stale.join("\n")
    );
}

/// The man page text with troff's escaped minus signs turned back into `-`.
fn man_source(page: &str) -> String {
    let p = root().join("man").join(page);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .replace("\\-", "-")
}

fn man_pages_for(sub: &str) -> Vec<String> {
    match sub {
        "reconstruct" => vec![
            man_source("cyrkit-reconstruct.1"),
            man_source("cyrkit-reconstruct-m.1"),
        ],
        "install-links" | "completions" | "help" => vec![man_source("cyrkit.1")],
        other => vec![man_source(&format!("cyrkit-{other}.1"))],
    }
}

#[test]
fn man_pages_document_every_flag() {
    let cli = Cli::command();
    let mut missing = Vec::new();
    let globals: Vec<_> = cli.get_arguments().collect();
    let cyrkit_page = man_source("cyrkit.1");
    for g in &globals {
        for flag in flags_of(g) {
            if !cyrkit_page.contains(&flag) {
                missing.push(format!("cyrkit.1: {flag}"));
            }
        }
    }
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        let pages = man_pages_for(name);
        if !man_source("cyrkit.1").contains(name) {
            missing.push(format!("cyrkit.1: subcommand {name}"));
        }
        for arg in sub.get_arguments() {
            if arg.is_global_set() || arg.get_id() == "help" {
                continue;
            }
            for flag in flags_of(arg) {
                if !pages.iter().any(|p| p.contains(&flag)) {
                    missing.push(format!("{name}: {flag}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from the man pages: {missing:#?}"
    );
}

fn flags_of(arg: &clap::Arg) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(s) = arg.get_short() {
        v.push(format!("-{s}"));
    }
    if let Some(l) = arg.get_long() {
        if l != "help" && l != "version" {
            v.push(format!("--{l}"));
        }
    }
    v
}

#[test]
fn man_pages_render_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CYRKIT_REQUIRE_CYRUS").is_none(),
            "man is not installed (scripts/test installs man-db)"
        );
        eprintln!("skipped: man is not installed");
        return;
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    assert!(pages.len() >= 5, "man pages: {pages:?}");
    for p in pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&p)
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: man failed", p.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{}: {stderr}", p.display());
        // Overstrike bold (`N\x08N`) when the pager environment asks for it: drop it.
        let mut plain = Vec::new();
        for &b in out.stdout.iter() {
            if b == 8 {
                plain.pop();
            } else {
                plain.push(b);
            }
        }
        let text = String::from_utf8_lossy(&plain);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{}",
            p.display()
        );
    }
}

#[test]
fn completions_for_bash_and_zsh_name_every_subcommand() {
    for shell in ["bash", "zsh"] {
        let out = cyrkit().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for s in subcommands() {
            assert!(text.contains(&s), "{shell} completion lacks {s}");
        }
    }
}

/// A backup-restore script written for Cyrus runs unchanged with cyrkit's links first on PATH.
#[test]
fn cyrus_style_script_runs_through_the_links() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let store = tmp.path().join("legacy");
    copy_tree(&root().join("fixtures/legacy"), &store).unwrap();
    let out = cyrkit()
        .args(["install-links", "-q"])
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in cyrkit::cmd::MULTICALL {
        let link = bin.join(name);
        assert!(
            link.symlink_metadata().unwrap().file_type().is_symlink(),
            "{name}"
        );
    }
    // Installing again is a no-op; a foreign file is not replaced without --force.
    assert!(cyrkit()
        .arg("install-links")
        .arg(&bin)
        .output()
        .unwrap()
        .status
        .success());
    std::fs::remove_file(bin.join("quota")).unwrap();
    std::fs::write(bin.join("quota"), b"#!/bin/sh\n").unwrap();
    let out = cyrkit().arg("install-links").arg(&bin).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(cyrkit()
        .args(["install-links", "--force"])
        .arg(&bin)
        .output()
        .unwrap()
        .status
        .success());

    // Damage alice's cache, then run what a Cyrus admin's restore script says.
    std::fs::remove_file(store.join("spool/a/user/alice/cyrus.cache")).unwrap();
    let conf = store.join("imapd.conf");
    let script = format!(
        "set -e\nreconstruct -C {c} -r -f user.alice\nquota -C {c} -f user.alice\nmbcheck -C {c} -q\n",
        c = conf.display()
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("user.alice rewrote cache for 1"),
        "{stdout}"
    );
    assert!(store.join("spool/a/user/alice/cyrus.cache").exists());
}

#[test]
fn usage_errors_exit_2_everywhere() {
    for s in subcommands() {
        if s == "help" {
            continue;
        }
        let out = cyrkit()
            .args([s.as_str(), "--no-such-flag"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{s}");
    }
    let out = cyrkit().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no subcommand");
}
