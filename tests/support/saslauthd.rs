//! Debian's real saslauthd (package `sasl2-bin`) for tests: a throw-away system user and a
//! saslauthd on a private socket, both removed when the [`Instance`] is dropped.
//!
//! saslauthd's `sasldb` back end always opens the compiled-in `/etc/sasldb2` (its
//! `auth_sasldb` gives libsasl no `sasldb_path` option), so this uses the `shadow` back end
//! with a user created with `useradd`, given a password with `chpasswd`, removed with
//! `userdel`. saslauthd runs in the foreground (`-d`) with its socket in a private directory
//! (`-m`) and is stopped by its pid.
//!
//! Needs root. [`require_saslauthd`] skips (saying why) when it cannot run, unless
//! `CYRKIT_REQUIRE_CYRUS=1`, which turns that into a failure, as for the real-Cyrus tests.
//!
//! Must not: leave the user or saslauthd behind, or signal any process but its own.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cyrus::REQUIRE_ENV;

pub const SASLAUTHD: &str = "/usr/sbin/saslauthd";
/// The throw-away user's password (a blank and a non-ASCII letter in it on purpose).
pub const PASSWORD: &str = "S3cret pw \u{fc}";

/// Whether the test can run; panics instead of skipping under `CYRKIT_REQUIRE_CYRUS=1`.
pub fn require_saslauthd() -> bool {
    let problem = if !Path::new(SASLAUTHD).exists() {
        Some(format!("{SASLAUTHD} is missing (install sasl2-bin)"))
    } else if !nix::unistd::Uid::effective().is_root() {
        Some("not running as root (needed to add a throw-away user)".into())
    } else if !Path::new("/usr/sbin/useradd").exists() {
        Some("useradd is missing".into())
    } else {
        None
    };
    match problem {
        None => true,
        Some(why) if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => {
            panic!("saslauthd required ({REQUIRE_ENV}=1) but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: saslauthd test: {why}; set {REQUIRE_ENV}=1 to fail instead");
            false
        }
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away user and a saslauthd on a private socket; both removed on drop.
pub struct Instance {
    pub user: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    user_added: bool,
}

impl Instance {
    /// Adds the user (`cyrkit-sa<pid>-<n>`, unique per test process and call) and starts
    /// saslauthd with the shadow back end on a private socket.
    pub fn start() -> Instance {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let user = format!("cyrkit-sa{}-{n}", std::process::id());
        let mut inst = Instance {
            user: user.clone(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            user_added: false,
        };
        run(
            Command::new("useradd")
                .args(["-M", "-N", "-s", "/usr/sbin/nologin"])
                .arg(&user),
            None,
        );
        inst.user_added = true;
        run(
            &mut Command::new("chpasswd"),
            Some(&format!("{user}:{PASSWORD}\n")),
        );
        let log = std::fs::File::create(inst.dir.path().join("saslauthd.log")).unwrap();
        let child = Command::new(SASLAUTHD)
            .args(["-a", "shadow", "-n", "0", "-d", "-m"])
            .arg(inst.dir.path())
            // On SIGTERM saslauthd kills its whole process group (`server_exit`:
            // kill(-master_pid)); give it its own so the test survives stopping it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start saslauthd");
        inst.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !inst.mux().exists() {
            if let Some(status) = inst.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("saslauthd exited at once ({status}): {}", inst.log());
            }
            assert!(
                Instant::now() < deadline,
                "saslauthd did not create its socket: {}",
                inst.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        inst
    }

    /// The socket (`mux`) to hand to `Saslauthd::new` or `cyrkit serve --saslauthd`.
    pub fn mux(&self) -> PathBuf {
        self.dir.path().join("mux")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("saslauthd.log")).unwrap_or_default()
    }

    /// SIGTERM saslauthd and wait for it; true when it exited within 10 s.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
        if self.user_added {
            let _ = Command::new("userdel").arg(&self.user).status();
        }
    }
}
