//! `cyrkit::server::auth::Saslauthd` against Debian's real saslauthd (package `sasl2-bin`).
//!
//! saslauthd's `sasldb` back end always opens the compiled-in `/etc/sasldb2` (its
//! `auth_sasldb` gives libsasl no `sasldb_path` option), so the test uses the `shadow` back
//! end with a throw-away system user instead: created with `useradd`, given a password with
//! `chpasswd`, removed with `userdel` when the test ends. saslauthd runs in the foreground
//! (`-d`) with its socket in a private directory (`-m`) and is stopped by its pid.
//!
//! Needs root. Skips (saying why) when it cannot run, unless `CYRKIT_REQUIRE_CYRUS=1`, which
//! turns that into a failure, as for the real-Cyrus tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyrkit::server::auth::{Authenticator, Saslauthd};
use cyrkit::server::sasl::{encode_challenge, Mechanism, ProxyPolicy, SaslServer, SaslStep};

const REQUIRE_ENV: &str = "CYRKIT_REQUIRE_CYRUS";
const SASLAUTHD: &str = "/usr/sbin/saslauthd";
const PASSWORD: &str = "S3cret pw \u{fc}";

/// Whether the test can run; panics instead of skipping under `CYRKIT_REQUIRE_CYRUS=1`.
fn require_saslauthd() -> bool {
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
struct Instance {
    user: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    user_added: bool,
}

impl Instance {
    fn start() -> Instance {
        let user = format!("cyrkit-sa{}", std::process::id());
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

    fn mux(&self) -> PathBuf {
        self.dir.path().join("mux")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("saslauthd.log")).unwrap_or_default()
    }

    /// SIGTERM saslauthd and wait for it; true when it exited within 10 s.
    fn stop(&mut self) -> bool {
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

#[test]
fn saslauthd_checks_passwords() {
    if !require_saslauthd() {
        return;
    }
    let mut inst = Instance::start();
    let auth = Saslauthd::new(inst.mux(), "pop", "");
    let user = inst.user.clone();
    assert!(
        auth.check_password(&user, PASSWORD.as_bytes()).unwrap(),
        "right password refused: {}",
        inst.log()
    );
    assert!(!auth.check_password(&user, b"wrong").unwrap());
    assert!(!auth
        .check_password(&user, &PASSWORD.as_bytes()[1..])
        .unwrap());
    assert!(!auth
        .check_password("cyrkit-no-such-user", PASSWORD.as_bytes())
        .unwrap());
    // saslauthd refuses fields over 256 bytes; the client answers `false` without asking.
    assert!(!auth.check_password(&user, &[b'x'; 300]).unwrap());
    assert_eq!(auth.secret(&user), None);

    // Several sessions at once, each on its own connection.
    let auth: Arc<dyn Authenticator> = Arc::new(auth);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (auth, user) = (auth.clone(), user.clone());
            std::thread::spawn(move || {
                let pw: &[u8] = if i % 2 == 0 {
                    PASSWORD.as_bytes()
                } else {
                    b"nope"
                };
                auth.check_password(&user, pw).unwrap() == (i % 2 == 0)
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }

    // A whole SASL PLAIN exchange as a POP3 session would run it.
    let mut sasl = SaslServer::new(
        Mechanism::Plain,
        auth.clone(),
        Arc::new(ProxyPolicy::default()),
        "localhost",
    );
    let ir = encode_challenge(format!("\0{user}\0{PASSWORD}").as_bytes());
    match sasl.start(Some(ir.as_bytes())) {
        SaslStep::Done { authcid, authzid } => {
            assert_eq!(
                (authcid.as_str(), authzid.as_str()),
                (user.as_str(), user.as_str())
            )
        }
        other => panic!("{other:?}"),
    }

    assert!(inst.stop(), "saslauthd did not stop on SIGTERM");
    // Gone: an error (temporary failure), never a yes or a plain no.
    assert!(auth.check_password(&user, PASSWORD.as_bytes()).is_err());
}
