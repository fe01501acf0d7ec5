//! Colour only on a terminal, never with NO_COLOR or TERM=dumb, never when piped: the
//! binary is run under a pseudo-terminal with util-linux's `script`.

use std::path::Path;
use std::process::Command;

mod support;
use support::cli::{fixture_copy, run};

/// `cyrkit ARGS` with stdout and stderr on a pseudo-terminal; what the terminal received.
fn under_pty(args: &str, env: &[(&str, &str)]) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CYRKIT_REQUIRE_CYRUS").is_none(),
            "script (util-linux) is not installed"
        );
        eprintln!("skipped: script (util-linux) is not installed");
        return None;
    }
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_cyrkit"));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Select Graphic Rendition sequences (`ESC [ ... m`): colour and bold.
fn has_sgr(text: &str) -> bool {
    text.split('\x1b').skip(1).any(|s| {
        let Some(params) = s.strip_prefix('[') else {
            return false;
        };
        let end = params.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
        end.starts_with('m')
    })
}

fn damaged_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, root) = fixture_copy("legacy", "colour");
    std::fs::remove_file(root.join("spool/a/user/alice/cyrus.cache")).unwrap();
    (tmp, root.join("imapd.conf"))
}

#[test]
fn findings_are_coloured_on_a_terminal() {
    let (_tmp, conf) = damaged_store();
    let Some(out) = under_pty(&format!("mbcheck --no-progress -C {}", conf.display()), &[]) else {
        return;
    };
    // The problem in red, the repair command in green, the count cell coloured.
    assert!(
        out.contains("\x1b[1;31mmissing, but the index has records\x1b[0m"),
        "{out:?}"
    );
    assert!(
        out.contains("\x1b[32mcyrkit reconstruct user.alice\x1b[0m"),
        "{out:?}"
    );
    assert!(has_sgr(&out));
}

#[test]
fn no_color_and_dumb_terminals_get_no_escape_sequences() {
    let (_tmp, conf) = damaged_store();
    for env in [&[("NO_COLOR", "1")][..], &[("TERM", "dumb")]] {
        let Some(out) = under_pty(&format!("mbcheck --no-progress -C {}", conf.display()), env)
        else {
            return;
        };
        assert!(
            out.contains("missing, but the index has records"),
            "{out:?}"
        );
        assert!(!out.contains('\x1b'), "{env:?}: {out:?}");
        // The error path too (stderr).
        let err = under_pty("mbcheck -C /nonexistent/imapd.conf", env).unwrap();
        assert!(err.contains("cyrkit: error: cannot read"), "{err:?}");
        assert!(!err.contains('\x1b'), "{env:?}: {err:?}");
    }
    // With progress bars drawn, the bar moves the cursor but still paints nothing.
    let out = under_pty(
        &format!("mbcheck -C {}", conf.display()),
        &[("NO_COLOR", "1")],
    )
    .unwrap();
    assert!(!has_sgr(&out), "{out:?}");
}

#[test]
fn errors_are_coloured_on_a_terminal() {
    let Some(err) = under_pty("mbcheck -C /nonexistent/imapd.conf", &[]) else {
        return;
    };
    assert!(
        err.contains("cyrkit: \x1b[1;31merror:\x1b[0m cannot read"),
        "{err:?}"
    );
    assert!(
        err.contains("cyrkit: \x1b[32mfix:\x1b[0m name the imapd.conf"),
        "{err:?}"
    );
}

#[test]
fn piped_output_is_never_coloured() {
    let (_tmp, conf) = damaged_store();
    for words in [
        &["mbcheck"][..],
        &["quota"],
        &["reconstruct", "-n", "user.alice"],
    ] {
        let r = run(words, Some(Path::new(&conf)), &[], &[("TERM", "xterm")]);
        assert!(!r.stdout.contains('\x1b'), "{words:?}: {}", r.stdout);
        assert!(!r.stderr.contains('\x1b'), "{words:?}: {}", r.stderr);
    }
    let r = run(&["mbcheck"], Some(Path::new("/nonexistent")), &[], &[]);
    assert!(r.stderr.starts_with("cyrkit: error: "), "{}", r.stderr);
}

#[test]
fn sgr_detector_finds_colour_but_not_cursor_moves() {
    assert!(has_sgr("a\x1b[1;31mb\x1b[0m"));
    assert!(has_sgr("\x1b[38;5;9m 1"));
    assert!(!has_sgr("\r\x1b[2K\x1b[1A"));
    assert!(!has_sgr("plain"));
}
