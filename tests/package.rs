//! Packaging: the Debian package's asset list (`[package.metadata.deb]` in Cargo.toml), the
//! checked-in shell completions, the systemd unit and the Postfix snippets.
//!
//! CI does not build the .deb from scratch: installing cargo-deb takes about 1.5 minutes and a
//! release build several more. It checks instead that every asset exists and that the files
//! the package installs say what the code does; when cargo-deb and a release binary are both
//! present (after `scripts/package`, or on a developer's machine) it also builds the package
//! from that binary and inspects it.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use cyrkit::cmd::{Cli, MULTICALL};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One entry of the `assets` list.
#[derive(Debug)]
enum Asset {
    File { source: String, dest: String },
    Link { dest: String, target: String },
}

/// The quoted strings of a line, in order (the asset list has no escapes).
fn quoted(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `[package.metadata.deb] assets`, read from Cargo.toml one entry per line.
fn deb_assets() -> Vec<Asset> {
    let toml = read("Cargo.toml");
    let section = toml
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("Cargo.toml has [package.metadata.deb]");
    let list = section
        .split("assets = [")
        .nth(1)
        .and_then(|s| s.split("\n]").next())
        .expect("an assets list");
    let mut out = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let q = quoted(line);
        if line.starts_with('{') && line.contains("link_name") {
            out.push(Asset::Link {
                dest: q[0].clone(),
                target: q[1].clone(),
            });
        } else if line.starts_with('[') && q.len() == 3 {
            out.push(Asset::File {
                source: q[0].clone(),
                dest: q[1].clone(),
            });
        } else {
            panic!("cannot read asset line {line:?}");
        }
    }
    out
}

fn glob_matches(pattern: &str) -> Vec<PathBuf> {
    let p = root().join(pattern);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let Some((pre, post)) = name.split_once('*') else {
        return if p.exists() { vec![p] } else { vec![] };
    };
    let dir = p.parent().unwrap();
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| {
            let n = f.file_name().unwrap().to_string_lossy();
            f.is_file() && n.starts_with(pre) && n.ends_with(post) && n.len() >= name.len() - 1
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_deb_asset_exists_and_the_package_has_what_the_issue_lists() {
    let assets = deb_assets();
    let mut dests = Vec::new();
    for a in &assets {
        match a {
            Asset::File { source, dest } if source.starts_with("target/release/") => {
                // Built by cargo-deb; it must be the binary Cargo.toml declares.
                assert_eq!(source, "target/release/cyrkit");
                assert_eq!(dest, "usr/bin/");
                dests.push("usr/bin/cyrkit".to_string());
            }
            Asset::File { source, dest } => {
                let found = glob_matches(source);
                assert!(!found.is_empty(), "asset {source} matches no file");
                for f in found {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    dests.push(if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        dest.clone()
                    });
                }
            }
            Asset::Link { dest, target } => {
                assert_eq!(target, "/usr/bin/cyrkit", "{dest}");
                dests.push(dest.clone());
            }
        }
    }
    // The links go beside, not into, /usr/bin: PATH=/usr/lib/cyrkit/bin:$PATH opts in.
    for name in MULTICALL {
        let link = format!("usr/lib/cyrkit/bin/{name}");
        assert!(dests.contains(&link), "no link {link}: {dests:#?}");
    }
    for page in glob_matches("man/*.1") {
        let d = format!(
            "usr/share/man/man1/{}",
            page.file_name().unwrap().to_string_lossy()
        );
        assert!(dests.contains(&d), "man page {d} not packaged");
    }
    for want in [
        "usr/bin/cyrkit",
        "usr/lib/systemd/system/cyrkit-serve.service",
        "usr/share/bash-completion/completions/cyrkit",
        "usr/share/zsh/vendor-completions/_cyrkit",
        "usr/share/doc/cyrkit/README.md",
        "usr/share/doc/cyrkit/postfix/main.cf",
    ] {
        assert!(dests.iter().any(|d| d == want), "{want} not packaged");
    }
}

#[test]
fn checked_in_completions_match_the_command_line() {
    let bless = std::env::var_os("CYRKIT_BLESS").is_some();
    for (shell, file) in [
        ("bash", "contrib/completions/cyrkit.bash"),
        ("zsh", "contrib/completions/_cyrkit"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let got = String::from_utf8(out.stdout).unwrap();
        if bless {
            std::fs::write(root().join(file), &got).unwrap();
            continue;
        }
        assert!(
            got == read(file),
            "{file} is stale: refresh with CYRKIT_BLESS=1 cargo test --test package"
        );
    }
}

/// `key=value` lines of the unit, comments and section headers left out.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

const UNIT: &str = "contrib/systemd/cyrkit-serve.service";

#[test]
fn systemd_unit_runs_serve_as_cyrus_with_a_writable_spool_only() {
    let text = read(UNIT);
    let s = unit_settings(&text);
    let get = |k: &str| -> Vec<&str> {
        s.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("User", "cyrus"),
        ("Group", "mail"),
        ("RuntimeDirectory", "cyrkit"),
        ("KillSignal", "SIGTERM"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(get(k), vec![v], "{k}");
    }
    assert_eq!(get("TimeoutStopSec").len(), 1);
    let rw = get("ReadWritePaths").join(" ");
    for dir in ["/var/lib/cyrus", "/var/spool/cyrus", "/run/cyrkit"] {
        assert!(rw.split(' ').any(|d| d == dir), "{dir} not writable: {rw}");
    }
    // The ExecStart line and the commented alternatives are command lines cyrkit accepts,
    // and the socket is in the runtime directory.
    let mut lines: Vec<String> = get("ExecStart").iter().map(|v| v.to_string()).collect();
    lines.extend(
        text.lines()
            .filter_map(|l| l.strip_prefix("#   ExecStart=/"))
            .map(|l| format!("/{l}")),
    );
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "/usr/bin/cyrkit");
        let cli = Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            matches!(cli.command, cyrkit::cmd::Command::Serve(_)),
            "{line}"
        );
        assert!(line.contains("--lmtp-unix /run/cyrkit/lmtp --lmtp-unix-group postfix"));
    }

    if !have("systemd-analyze", "--version") {
        eprintln!("systemd-analyze not installed: checked the unit's settings only");
        return;
    }
    // verify wants the ExecStart binary to exist: point it at the one just built.
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("cyrkit-serve.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/cyrkit", env!("CARGO_BIN_EXE_cyrkit")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on settings it ignores; any message about our unit is a fault.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cyrkit-serve"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// main.cf as shipped, then each commented alternative alone (switched on beside the active
/// setting it would override, postconf rightly warns).
fn postfix_variants(main_cf: &str) -> Vec<String> {
    let mut v = vec![main_cf.to_string()];
    for l in main_cf.lines() {
        if let Some(setting) = l.strip_prefix('#').filter(|s| s.contains(" = ")) {
            v.push(format!("{setting}\n"));
        }
    }
    assert!(v.len() >= 5, "{v:?}");
    v
}

#[test]
fn postfix_snippets_name_the_sockets_serve_listens_on() {
    let main_cf = read("contrib/postfix/main.cf");
    let unit = read(UNIT);
    assert!(main_cf.contains("mailbox_transport = lmtp:unix:/run/cyrkit/lmtp"));
    assert!(main_cf.contains("virtual_transport = lmtp:unix:/run/cyrkit/lmtp"));
    assert!(main_cf.contains("lmtp:inet:127.0.0.1:2003"));
    assert!(unit.contains("--lmtp 127.0.0.1:2003 --lmtp-trust-loopback"));
    if !have("postconf", "-d") {
        eprintln!("postconf not installed: checked the snippets' text only");
        return;
    }
    let master = read("contrib/postfix/master.cf");
    for variant in postfix_variants(&main_cf) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("main.cf"), &variant).unwrap();
        std::fs::write(tmp.path().join("master.cf"), &master).unwrap();
        for flag in ["-n", "-M"] {
            let out = Command::new("postconf")
                .arg("-c")
                .arg(tmp.path())
                .arg(flag)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "postconf {flag}:\n{stderr}\n{variant}"
            );
            if flag == "-M" {
                let services = String::from_utf8_lossy(&out.stdout);
                let lmtp = services.lines().find(|l| l.starts_with("lmtp ")).unwrap();
                let cols: Vec<&str> = lmtp.split_whitespace().collect();
                assert_eq!(cols[4], "n", "lmtp must not run chrooted: {lmtp}");
            }
        }
    }
}

/// Build the .deb from an existing release binary and look inside, when cargo-deb is there.
#[test]
fn deb_package_installs_binary_links_pages_and_unit() {
    let release = root().join("target/release/cyrkit");
    if !have("cargo-deb", "--version") || !release.exists() {
        eprintln!("skipped: needs cargo-deb and target/release/cyrkit (scripts/package)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("cargo-deb")
        .args(["--no-build", "--fast", "--no-separate-debug-symbols", "-o"])
        .arg(tmp.path())
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for name in MULTICALL {
        let want = format!("./usr/lib/cyrkit/bin/{name} -> ../../../bin/cyrkit");
        assert!(listing.contains(&want), "{want}\n{listing}");
    }
    for want in [
        "./usr/bin/cyrkit\n",
        "./usr/share/man/man1/cyrkit.1.gz",
        "./usr/share/man/man1/cyrkit-reconstruct.1.gz",
        "./usr/lib/systemd/system/cyrkit-serve.service",
    ] {
        assert!(listing.contains(want), "{want}\n{listing}");
    }
    // Unpacked, the link named after Cyrus's tool runs cyrkit's mbcheck.
    let unpacked = tmp.path().join("root");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(x.success());
    let run = Command::new(unpacked.join("usr/lib/cyrkit/bin/mbcheck"))
        .arg("-C")
        .arg(root().join("fixtures/legacy/imapd.conf"))
        .arg("-q")
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn asset_reader_understands_both_entry_forms() {
    assert_eq!(quoted(r#"["a", "b/", "644"],"#), vec!["a", "b/", "644"]);
    assert!(glob_matches("man/*.1").len() >= 5);
    assert!(glob_matches("man/no-such-*.1").is_empty());
}
