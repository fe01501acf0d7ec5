//! `cyrkit serve` as a child process of a test: started with the flags a test gives, waited for
//! until its TCP ports answer and its UNIX sockets exist, stopped with SIGTERM (the graceful
//! drain) on Drop. The real-client tests point their clients at it exactly as at Cyrus's own
//! lmtpd and pop3d.
//!
//! Must not: leave the server running (Drop sends SIGTERM, then SIGKILL to that pid after a
//! grace period), or signal any process but the one it started.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cyrus::{cyrus_ids, CyrusInstance};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The `cyrkit` binary Cargo built for the integration tests.
pub const CYRKIT: &str = env!("CARGO_BIN_EXE_cyrkit");
/// Set to a `cyrkit` binary to serve from it instead of [`CYRKIT`] (to run the client tests
/// against another build, e.g. a branch's).
pub const BIN_ENV: &str = "CYRKIT_SERVE_BIN";

/// The binary `cyrkit serve` runs from: `$CYRKIT_SERVE_BIN` or the one Cargo built.
pub fn cyrkit_bin() -> PathBuf {
    std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CYRKIT))
}

/// What must answer before the server counts as started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ready {
    /// A loopback TCP port accepts connections.
    Tcp(u16),
    /// A UNIX socket file exists.
    Unix(PathBuf),
}

/// A running `cyrkit serve`.
pub struct CyrkitServe {
    child: Option<Child>,
    log: PathBuf,
    /// The command line, for messages.
    pub command: String,
}

impl CyrkitServe {
    /// Runs `cyrkit serve -C conf ARGS...` (as the `cyrus` user when `as_cyrus`, as Cyrus's own
    /// servers run, so files it writes have the spool's owner) with stdout and stderr in
    /// `log_dir/cyrkit-serve.log`, and waits until everything in `ready` answers. Fails with the
    /// server's output if it exits first or does not become ready in time.
    pub fn start(
        conf: &Path,
        args: &[String],
        ready: &[Ready],
        as_cyrus: bool,
        log_dir: &Path,
    ) -> io::Result<Self> {
        let log = log_dir.join("cyrkit-serve.log");
        let out = File::create(&log)?;
        let mut cmd = Command::new(cyrkit_bin());
        cmd.arg("serve").arg("-C").arg(conf).args(args);
        if as_cyrus {
            let (uid, gid) = cyrus_ids()?;
            cmd.uid(uid).gid(gid).env("USER", "cyrus");
            super::cyrus::chown_cyrus(&log)?;
        }
        let command = format!("{cmd:?}");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut serve = CyrkitServe {
            child: Some(child),
            log,
            command,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = serve.exited()? {
                return Err(io::Error::other(format!(
                    "{} exited during start-up ({status}):\n{}",
                    serve.command,
                    serve.output()
                )));
            }
            if ready.iter().all(is_ready) {
                return Ok(serve);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} not ready ({ready:?}) within {START_TIMEOUT:?}:\n{}",
                    serve.command,
                    serve.output()
                )));
            }
            sleep(POLL);
        }
    }

    /// LMTP on a free loopback port, trusting loopback clients (as Cyrus's `lmtpd -a` in the
    /// harness), over `cy`'s spool.
    pub fn lmtp_inet(cy: &CyrusInstance, port: u16) -> io::Result<Self> {
        let addr = format!("{}:{port}", Ipv4Addr::LOCALHOST);
        Self::start(
            &cy.conf_path(),
            &["--lmtp".into(), addr, "--lmtp-trust-loopback".into()],
            &[Ready::Tcp(port)],
            true,
            cy.root(),
        )
    }

    /// LMTP on the UNIX socket `path` over `cy`'s spool. The socket is made mode 0666 (as
    /// Cyrus's master makes its own 0777) inside the instance's traverse-only directories:
    /// the server runs as `cyrus`, which may not hand the socket to the MTA's group.
    pub fn lmtp_unix(cy: &CyrusInstance, path: &Path) -> io::Result<Self> {
        Self::start(
            &cy.conf_path(),
            &[
                "--lmtp-unix".into(),
                path.display().to_string(),
                "--lmtp-unix-mode".into(),
                "666".into(),
            ],
            &[Ready::Unix(path.to_path_buf())],
            true,
            cy.root(),
        )
    }

    /// POP3 on `port` (and POP3S on `pop3s_port` when given; TLS files from `cy`'s
    /// `tls_server_cert`/`tls_server_key`), checking passwords against `passwd_file`.
    pub fn pop3(
        cy: &CyrusInstance,
        port: u16,
        pop3s_port: Option<u16>,
        passwd_file: &Path,
    ) -> io::Result<Self> {
        let mut args = vec![
            "--pop3".to_string(),
            format!("{}:{port}", Ipv4Addr::LOCALHOST),
            "--passwd-file".into(),
            passwd_file.display().to_string(),
        ];
        let mut ready = vec![Ready::Tcp(port)];
        if let Some(p) = pop3s_port {
            args.push("--pop3s".into());
            args.push(format!("{}:{p}", Ipv4Addr::LOCALHOST));
            ready.push(Ready::Tcp(p));
        }
        Self::start(&cy.conf_path(), &args, &ready, true, cy.root())
    }

    /// Stops the server with SIGTERM and asserts that it drained and exited with status 0
    /// within the grace period.
    pub fn assert_clean_stop(&mut self) {
        let status = self.stop().expect("stop cyrkit serve");
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly on SIGTERM ({status:?}):\n{}",
            self.command,
            self.output()
        );
    }

    /// The server's stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the server process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a grace period). Returns the exit status.
    pub fn stop(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if child.try_wait()?.is_none() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            sleep(POLL);
        }
        if child.try_wait()?.is_none() {
            eprintln!(
                "{} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                self.command
            );
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        child.wait().map(Some)
    }
}

impl Drop for CyrkitServe {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping {}: {e}", self.command);
        }
    }
}

fn is_ready(r: &Ready) -> bool {
    match r {
        Ready::Tcp(port) => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }
        Ready::Unix(path) => path.exists(),
    }
}
