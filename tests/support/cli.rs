//! Running the real `cyrkit` binary from integration tests, and fixture locations.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// One run of `cyrkit`: exit code (-1 when killed by a signal) and its output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as the one JSON document `--json` promises.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }

    pub fn describe(&self) -> String {
        format!("exit {}\n{}\n{}", self.code, self.stdout, self.stderr)
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn has(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }

    pub fn assert_has(&self, line: &str) {
        assert!(
            self.has(line),
            "missing line {line:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// `cyrkit WORDS... [-C CONF --no-progress] ARGS...` with extra environment variables.
pub fn run(words: &[&str], conf: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cyrkit"));
    cmd.args(words);
    if let Some(conf) = conf {
        cmd.arg("-C").arg(conf).arg("--no-progress");
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run cyrkit");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The committed fixture `name` (fixtures/legacy, fixtures/uuid, ...).
pub fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A private copy of fixture `name` in a fresh temporary directory (named `prefix…`): the
/// directory guard (the copy goes when it is dropped) and the copy's root.
pub fn fixture_copy(name: &str, prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    let root = tmp.path().join(name);
    super::cyrus::copy_tree(&fixture_src(name), &root).expect("copy fixture");
    (tmp, root)
}
