//! Every command in the man pages' EXAMPLES sections runs on a copy of the fixture store (with
//! alice's cache lost, so the repair recipes have something to repair) and ends with exit 0
//! or 1, never a usage error or a failure.
//!
//! Lines for other programs (`systemctl`, Cyrus's `relocate_by_id` through `runuser`) are not
//! run here — the README's legacy → uuid recipe runs relocate_by_id in `tests/readme.rs`; the
//! `cyrkit serve` examples, which would not return, are started and stopped with SIGTERM by
//! `serve_examples_start_and_stop_on_the_fixtures`. Every command gets the fixture's
//! imapd.conf: `/etc/imapd.conf` is replaced, and `-C` is added where a line has none, so an
//! example can never touch the machine's own Cyrus.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::cli::fixture_copy;

/// The names a command line of an example may start with.
const OURS: &[&str] = &["cyrkit", "reconstruct", "quota", "mbcheck"];

/// The example command lines of one man page, unescaped, in order.
fn example_lines(page: &str) -> Vec<String> {
    let Some(section) = page.split("\n.SH EXAMPLES\n").nth(1) else {
        return Vec::new();
    };
    let section = section.split("\n.SH ").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        match line {
            ".nf" => in_block = true,
            ".fi" => in_block = false,
            l if in_block => out.push(l.replace("\\-", "-").trim().to_string()),
            _ => {}
        }
    }
    out
}

/// The commands of one example line: a cron line loses its schedule and user, a comment is
/// dropped, `a && b` is two commands, `a || handler` runs `a` only.
fn commands(line: &str) -> Vec<String> {
    let line = line.split(" #").next().unwrap_or_default();
    let line = match line.find("cyrkit ") {
        Some(i) if line.starts_with(|c: char| c.is_ascii_digit()) => &line[i..],
        _ => line,
    };
    let line = line.split("||").next().unwrap_or_default();
    line.split("&&")
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// `cmd` with the fixture's configuration in place of the system's; None when it is not ours.
fn localise(cmd: &str, conf: &Path, bin: &Path) -> Option<String> {
    let mut words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
    let first = words.first()?.clone();
    if !OURS.contains(&first.as_str()) || words.get(1).is_some_and(|w| w == "serve") {
        return None;
    }
    for w in words.iter_mut() {
        if w == "/etc/imapd.conf" {
            *w = conf.display().to_string();
        } else if w == "/usr/local/sbin" || w == "/usr/lib/cyrkit/bin" {
            *w = bin.display().to_string();
        }
    }
    if !words.iter().any(|w| w == "-C") && words.get(1).is_some_and(|w| w != "install-links") {
        words.insert(1, conf.display().to_string());
        words.insert(1, "-C".into());
    }
    words.push("--no-progress".into());
    if first == "cyrkit" {
        words[0] = env!("CARGO_BIN_EXE_cyrkit").into();
    }
    Some(words.join(" "))
}

fn man_pages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_man_page_example_runs_on_the_fixtures() {
    let (tmp, root) = fixture_copy("legacy", "man-ex");
    std::fs::remove_file(root.join("spool/a/user/alice/cyrus.cache")).unwrap();
    let conf = root.join("imapd.conf");
    let bin = tmp.path().join("bin");
    // The drop-in names resolve to this build's links (install-links examples make them too).
    let out = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(["install-links", "-q"])
        .arg(&bin)
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = 0;
    let mut failed = Vec::new();
    for page in man_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for line in example_lines(&text) {
            for cmd in commands(&line) {
                let Some(local) = localise(&cmd, &conf, &bin) else {
                    continue;
                };
                let out = Command::new("bash")
                    .arg("-c")
                    .arg(&local)
                    .env("PATH", &path)
                    .output()
                    .unwrap();
                ran += 1;
                let code = out.status.code().unwrap_or(-1);
                if code != 0 && code != 1 {
                    failed.push(format!(
                        "{}: `{cmd}` exited {code}\n{}",
                        page.file_name().unwrap().to_string_lossy(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Five recipes and the other examples: a page losing its EXAMPLES must not pass quietly.
    eprintln!("{ran} example commands ran");
    assert!(ran >= 20, "only {ran} example commands found");
    // After the repair examples alice's cache is back.
    assert!(root.join("spool/a/user/alice/cyrus.cache").exists());
}

#[test]
fn example_lines_are_split_and_localised() {
    let page = ".TH X\n.SH EXAMPLES\nText\n.nf\n    15 3 * * *  cyrus  cyrkit quota \\-f \\-q \\-C /etc/imapd.conf\n    cyrkit mbcheck \\-q || mail root\n.fi\n.SH SEE ALSO\n.nf\nnot this\n.fi\n";
    let lines = example_lines(page);
    assert_eq!(
        lines,
        vec![
            "15 3 * * *  cyrus  cyrkit quota -f -q -C /etc/imapd.conf",
            "cyrkit mbcheck -q || mail root"
        ]
    );
    assert_eq!(
        commands(&lines[0]),
        vec!["cyrkit quota -f -q -C /etc/imapd.conf"]
    );
    assert_eq!(commands(&lines[1]), vec!["cyrkit mbcheck -q"]);
    assert_eq!(
        commands("reconstruct -r user.a && quota -f user.a # again"),
        vec!["reconstruct -r user.a", "quota -f user.a"]
    );
    let conf = Path::new("/f/imapd.conf");
    let bin = Path::new("/b");
    assert_eq!(
        localise("reconstruct -r user.a", conf, bin).unwrap(),
        "reconstruct -C /f/imapd.conf -r user.a --no-progress"
    );
    assert!(localise("systemctl stop cyrus-imapd", conf, bin).is_none());
    assert!(localise("cyrkit serve --lmtp x", conf, bin).is_none());
    assert!(localise("cyrkit quota -C /etc/imapd.conf", conf, bin)
        .unwrap()
        .ends_with("quota -C /f/imapd.conf --no-progress"));
}

/// The `cyrkit serve` examples of cyrkit-serve(1), continuation lines joined, run on the
/// fixture store with the machine's paths replaced by private ones (socket, certificate made
/// with openssl, loopback ports): each must start listening and stop cleanly (exit 0) on
/// SIGTERM.
#[test]
fn serve_examples_start_and_stop_on_the_fixtures() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/cyrkit-serve.1"))
            .unwrap();
    let mut examples: Vec<String> = Vec::new();
    let mut cont = false;
    for line in example_lines(&page) {
        let (text, more) = match line.strip_suffix("\\e") {
            Some(t) => (t.trim().to_string(), true),
            None => (line.clone(), false),
        };
        if cont {
            let last = examples.last_mut().unwrap();
            last.push(' ');
            last.push_str(&text);
        } else if text.starts_with("cyrkit serve") {
            examples.push(text);
        }
        cont = more && (cont || line.starts_with("cyrkit serve"));
    }
    assert_eq!(examples.len(), 2, "{examples:?}");
    let (tmp, root) = fixture_copy("legacy", "man-serve");
    let conf = root.join("imapd.conf");
    let cert = tmp.path().join("mail.pem");
    let key = tmp.path().join("mail.key");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=localhost")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(ok.status.success(), "{ok:?}");
    let has_postfix_group = nix::unistd::Group::from_name("postfix")
        .ok()
        .flatten()
        .is_some();
    for example in examples {
        let socket = tmp.path().join("lmtp");
        let _ = std::fs::remove_file(&socket);
        let mut ready: Vec<std::net::SocketAddr> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        let words = example.split_whitespace().skip(1);
        for w in words {
            let v = match w {
                "/etc/imapd.conf" => conf.display().to_string(),
                "/run/cyrkit/lmtp" => socket.display().to_string(),
                "/etc/ssl/mail.pem" => cert.display().to_string(),
                "/etc/ssl/private/mail.key" => key.display().to_string(),
                "postfix" if !has_postfix_group => "root".to_string(),
                a if a.starts_with("0.0.0.0:") => {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let addr = l.local_addr().unwrap();
                    ready.push(addr);
                    addr.to_string()
                }
                other => other.to_string(),
            };
            args.push(v);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let up = || {
            (example.contains("--lmtp-unix") && socket.exists())
                || (!ready.is_empty()
                    && ready
                        .iter()
                        .all(|a| std::net::TcpStream::connect(a).is_ok()))
        };
        while !up() {
            if let Ok(Some(st)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "`{example}` exited {st} at start-up:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(20),
                "`{example}` never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "`{example}` after SIGTERM: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
