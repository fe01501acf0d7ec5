//! A private Postfix instance (the Debian package) that relays every recipient to one LMTP
//! target, for the real-MTA delivery tests.
//!
//! Owns: a throw-away config directory, queue and data directory, an smtpd on a free loopback
//! port (no other TCP listener, so it never clashes with a system Postfix), a log file of its own
//! (`maillog_file`, written by postlogd, Postfix ≥ 3.4) from which the per-recipient delivery
//! results are read, and a minimal SMTP client to submit mail.
//!
//! Must not: touch the system's Postfix configuration or queue, or outlive the test
//! ([`Postfix::stop`] and Drop stop the master it started, by its pid).
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use super::clients::LmtpTarget;
use super::cyrus::{dot_stuff, free_port, TMPDIR_ENV};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The services of our `master.cf`: an smtpd on the chosen port and the internal services a
/// queue needs; no `pickup` (nothing is submitted through maildrop), no `local`.
const MASTER_CF_SERVICES: &str = "\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// One delivery result line of the log (`to=<..>, relay=.., dsn=.., status=.. (text)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub queue_id: String,
    /// The recipient, without angle brackets.
    pub to: String,
    pub relay: String,
    /// Enhanced status code, e.g. `2.1.5` or `5.1.1`.
    pub dsn: String,
    /// `sent`, `bounced`, `deferred` (or `expired`, `undeliverable`).
    pub status: String,
    /// The parenthesised text: the server's reply as Postfix quotes it.
    pub text: String,
}

impl DeliveryStatus {
    /// Parses one log line; `None` for lines that are not delivery results.
    pub fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.split_once("]: ")?;
        let (queue_id, rest) = rest.split_once(": to=<")?;
        let (to, rest) = rest.split_once('>')?;
        let field = |name: &str| -> Option<String> {
            let start = rest.find(&format!(", {name}="))? + name.len() + 3;
            let value = &rest[start..];
            let end = value.find([',', ' ']).unwrap_or(value.len());
            Some(value[..end].to_string())
        };
        let text = rest
            .split_once(" (")
            .map(|(_, t)| t.strip_suffix(')').unwrap_or(t).to_string())
            .unwrap_or_default();
        Some(DeliveryStatus {
            queue_id: queue_id.to_string(),
            to: to.to_string(),
            relay: field("relay")?,
            dsn: field("dsn")?,
            status: field("status")?,
            text,
        })
    }
}

/// A running private Postfix. Dropping it stops it.
pub struct Postfix {
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    /// Port of the smtpd mail is submitted to.
    pub smtp_port: u16,
    child: Option<Child>,
}

impl Postfix {
    /// Writes a config that relays every domain to `target` and starts Postfix
    /// (`postfix -c DIR start-fg` as our child), waiting until smtpd greets.
    pub fn start(target: &LmtpTarget) -> io::Result<Self> {
        let parent = std::env::var_os(TMPDIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let tmp = tempfile::Builder::new()
            .prefix("cyrkit-postfix-")
            .tempdir_in(parent)?;
        let root = tmp.path().to_path_buf();
        // Postfix's daemons run as `postfix` and must reach the queue and config.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        for d in ["conf", "queue", "data"] {
            fs::create_dir_all(root.join(d))?;
        }
        let owner = User::from_name("postfix")
            .map_err(io::Error::from)?
            .ok_or_else(|| err("no `postfix` user (install postfix)"))?;
        std::os::unix::fs::chown(root.join("data"), Some(owner.uid.as_raw()), None)?;
        let smtp_port = free_port()?;
        let mut pf = Postfix {
            root,
            tmp: Some(tmp),
            smtp_port,
            child: None,
        };
        pf.write_config(target)?;
        if std::env::var(super::cyrus::KEEP_ENV).as_deref() == Ok("1") {
            eprintln!("keeping Postfix directory {}", pf.root.display());
            let _ = pf.tmp.take().map(tempfile::TempDir::keep);
        }
        pf.spawn()?;
        Ok(pf)
    }

    /// The config directory (`postfix -c` argument).
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("conf")
    }

    /// The log file.
    pub fn maillog_path(&self) -> PathBuf {
        self.root.join("maillog")
    }

    fn write_config(&self, target: &LmtpTarget) -> io::Result<()> {
        let r = |p: &str| self.root.join(p).display().to_string();
        let nexthop = target.postfix_nexthop();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {maillog}\n\
             maillog_file_prefixes = {root}\n\
             syslog_name = postfix-cyrkit\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.cyrkit.test\n\
             mydomain = cyrkit.test\n\
             mydestination =\n\
             relay_domains =\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtpd_peername_lookup = no\n\
             default_transport = {nexthop}\n\
             relay_transport = {nexthop}\n\
             biff = no\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n",
            queue = r("queue"),
            data = r("data"),
            maillog = r("maillog"),
            root = self.root.display(),
        );
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n{MASTER_CF_SERVICES}",
            port = self.smtp_port
        );
        fs::write(self.config_dir().join("main.cf"), main_cf)?;
        fs::write(self.config_dir().join("master.cf"), master_cf)
    }

    fn postfix_cmd(&self) -> Command {
        let mut cmd = Command::new("postfix");
        cmd.arg("-c").arg(self.config_dir());
        cmd
    }

    fn spawn(&mut self) -> io::Result<()> {
        let out = File::create(self.root.join("postfix.out"))?;
        let child = self
            .postfix_cmd()
            .arg("start-fg")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(err(format!(
                    "postfix start-fg exited ({status}) during start-up\n{}",
                    self.diagnostics()
                )));
            }
            if smtp_greets(self.smtp_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "Postfix smtpd did not greet on port {} within {START_TIMEOUT:?}\n{}",
                    self.smtp_port,
                    self.diagnostics()
                );
                let _ = self.stop();
                return Err(err(msg));
            }
            sleep(POLL);
        }
    }

    /// The start-up output and the log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = fs::read_to_string(self.root.join("postfix.out")).unwrap_or_default();
        format!(
            "postfix dir: {}\npostfix output:\n{}\nmaillog:\n{}",
            self.root.display(),
            out.trim_end(),
            self.maillog()
        )
    }

    /// The whole log so far.
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.maillog_path()).unwrap_or_default()
    }

    /// Every delivery result logged so far, in log order.
    pub fn statuses(&self) -> Vec<DeliveryStatus> {
        self.maillog()
            .lines()
            .filter_map(DeliveryStatus::parse)
            .collect()
    }

    /// Waits until the log holds a result for each of `rcpts` of message `queue_id` and returns
    /// the latest result per recipient, in the order of `rcpts`. A deferral counts as a result
    /// (the test decides whether it may happen).
    pub fn wait_results(
        &self,
        queue_id: &str,
        rcpts: &[&str],
        timeout: Duration,
    ) -> io::Result<Vec<DeliveryStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.statuses();
            let found: Vec<Option<DeliveryStatus>> = rcpts
                .iter()
                .map(|r| {
                    all.iter()
                        .rev()
                        .find(|s| s.queue_id == queue_id && s.to.eq_ignore_ascii_case(r))
                        .cloned()
                })
                .collect();
            if found.iter().all(Option::is_some) {
                return Ok(found.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "no delivery result for every one of {rcpts:?} (queue id {queue_id}) \
                     within {timeout:?}\n{}",
                    self.diagnostics()
                )));
            }
            sleep(POLL);
        }
    }

    /// `postqueue -p` output.
    pub fn queue_listing(&self) -> io::Result<String> {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-p")
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }

    /// Polls `postqueue -p` until the queue is empty (every message delivered or bounced, and
    /// every bounce notice too).
    pub fn wait_queue_empty(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listing = self.queue_listing()?;
            if listing.contains("Mail queue is empty") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "Postfix queue not empty after {timeout:?}:\n{listing}\n{}",
                    self.diagnostics()
                )));
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// Submits `message` (CRLF line ends) over SMTP and returns the queue id Postfix assigned.
    pub fn submit(&self, from: &str, rcpts: &[&str], message: &[u8]) -> io::Result<String> {
        let mut smtp = SmtpClient::connect(self.smtp_port)?;
        smtp.expect("EHLO client.cyrkit.test", 250)?;
        smtp.expect(&format!("MAIL FROM:<{from}>"), 250)?;
        for r in rcpts {
            smtp.expect(&format!("RCPT TO:<{r}>"), 250)?;
        }
        smtp.expect("DATA", 354)?;
        smtp.writer.write_all(&dot_stuff(message))?;
        let (code, text) = smtp.read_reply()?;
        if code != 250 {
            return Err(err(format!("end of DATA: {code} {text}")));
        }
        let _ = smtp.expect("QUIT", 221);
        text.rsplit_once("queued as ")
            .map(|(_, id)| id.trim().to_string())
            .ok_or_else(|| err(format!("no queue id in {text:?}")))
    }

    /// `postfix stop`, then waits for the master to exit (SIGKILL to the process we started if
    /// it lingers).
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = self.postfix_cmd().arg("stop").output();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(POLL);
        }
        if matches!(child.try_wait(), Ok(None)) {
            if let Some(pid) = self.master_pid() {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = child.kill();
        }
        child.wait()?;
        Ok(())
    }

    fn master_pid(&self) -> Option<Pid> {
        let text = fs::read_to_string(self.root.join("queue/pid/master.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping Postfix in {}: {e}", self.root.display());
        }
    }
}

fn smtp_greets(port: u16) -> bool {
    SmtpClient::connect(port).is_ok()
}

/// Just enough SMTP to submit a message.
struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    fn connect(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut c = SmtpClient {
            reader: BufReader::new(stream),
            writer,
        };
        let (code, text) = c.read_reply()?;
        if code != 220 {
            return Err(err(format!("SMTP greeting {code} {text}")));
        }
        Ok(c)
    }

    fn read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(err("SMTP server closed the connection"));
            }
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| err(format!("bad SMTP reply {line:?}")))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.join("\n")));
            }
        }
    }

    fn expect(&mut self, line: &str, want: u16) -> io::Result<String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        let (code, text) = self.read_reply()?;
        if code != want {
            return Err(err(format!("SMTP `{line}`: {code} {text}")));
        }
        Ok(text)
    }
}
