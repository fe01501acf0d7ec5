//! Load generator and benchmark driver for `cyrkit serve` against Cyrus 3.6's lmtpd and pop3d
//! (`scripts/bench-serve`; issue 9's LMTP and POP3 rows).
//!
//! Two modes:
//! * `bench_serve load lmtp|pop3 --addr HOST:PORT ...`: N client threads against one server;
//!   LMTP clients send MAIL/RCPT/DATA per message (pipelined as Postfix does, one or more
//!   recipients), POP3 clients log in (USER/PASS), RETR every message and QUIT without DELE.
//!   Prints one JSON line: operations, bytes, errors, wall time, rate, latency percentiles.
//! * `bench_serve suite ...`: starts a private Cyrus instance (tests/support/cyrus.rs), creates
//!   the users, delivers the POP3 mail once through Cyrus's lmtpd, then alternates Cyrus and
//!   `cyrkit serve` on the same spool: LMTP deliveries, POP3 retrieval, POP3 retrieval at two
//!   message sizes (memory against message size). Both servers are started fresh for each run,
//!   so each run's peak RSS is its own: for Cyrus the sum of VmHWM over the lmtpd / pop3d
//!   children of its master (sampled), for cyrkit the VmHWM of its one process. Writes JSON lines
//!   to `--out` and prints a table with medians and ratios.
//!
//! Run it as root (Cyrus runs as the cyrus user), release build:
//! `cargo run --release --example bench_serve -- suite --quick`.

#[path = "../tests/support/cyrus.rs"]
mod cyrus;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use cyrus::{CyrusInstance, CyrusOptions};

const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// The password every benchmark user has (Cyrus's harness uses `alwaystrue`; cyrkit gets a
/// `{PLAIN}` password file, the cheapest check it has, so neither side pays for hashing).
const PASSWORD: &str = "benchpw";

#[derive(Parser)]
#[command(about = "Load generator and benchmark for cyrkit serve vs Cyrus lmtpd/pop3d")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one load against one server and print a JSON line.
    Load(LoadArgs),
    /// The whole comparison with a private Cyrus instance.
    Suite(SuiteArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Lmtp,
    Pop3,
}

#[derive(Args, Clone, Debug)]
struct LoadArgs {
    proto: Proto,
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// LMTP: messages to send in total (spread over the clients).
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// LMTP: message size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// LMTP: recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// User names are PREFIX0000, PREFIX0001, ...
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Number of users (LMTP: message i goes to user i mod N; POP3: client c logs in as user c
    /// mod N).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// POP3 password.
    #[arg(long, default_value = PASSWORD)]
    password: String,
    /// LMTP: makes Message-IDs unique across runs (duplicate suppression must not fire).
    #[arg(long, default_value = "run")]
    tag: String,
}

#[derive(Args, Clone, Debug)]
struct SuiteArgs {
    /// Small sizes: the whole suite in about a minute.
    #[arg(long)]
    quick: bool,
    /// Alternating runs per server and job.
    #[arg(long)]
    runs: Option<usize>,
    /// LMTP clients.
    #[arg(long)]
    lmtp_clients: Option<usize>,
    /// LMTP messages per run.
    #[arg(long)]
    lmtp_messages: Option<usize>,
    /// LMTP message size, bytes.
    #[arg(long)]
    lmtp_size: Option<usize>,
    /// LMTP recipients per message.
    #[arg(long, default_value_t = 1)]
    lmtp_rcpts: usize,
    /// LMTP users (mailboxes delivered into).
    #[arg(long)]
    lmtp_users: Option<usize>,
    /// POP3 clients (one user each).
    #[arg(long)]
    pop3_clients: Option<usize>,
    /// POP3 messages per user.
    #[arg(long)]
    pop3_messages: Option<usize>,
    /// POP3 message size, bytes.
    #[arg(long)]
    pop3_size: Option<usize>,
    /// Memory-vs-size runs: clients (one user each).
    #[arg(long)]
    rss_clients: Option<usize>,
    /// Memory-vs-size runs: messages per user.
    #[arg(long)]
    rss_messages: Option<usize>,
    /// Memory-vs-size runs: the small and the large message size, bytes.
    #[arg(long, num_args = 2, value_delimiter = ',')]
    rss_sizes: Option<Vec<usize>>,
    /// Jobs to run (comma-separated: lmtp, pop3, rss).
    #[arg(long, value_delimiter = ',', default_value = "lmtp,pop3,rss")]
    jobs: Vec<String>,
    /// The cyrkit binary.
    #[arg(long, default_value = "target/release/cyrkit")]
    cyrkit: PathBuf,
    /// JSON lines output (appended).
    #[arg(long, default_value = "bench-serve.jsonl")]
    out: PathBuf,
    /// Extra `imapd.conf` keys for the instance, KEY=VALUE.
    #[arg(long = "conf")]
    conf: Vec<String>,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Load(a) => {
            let r = run_load(&a)?;
            println!("{}", r.to_json(&a));
            Ok(())
        }
        Cmd::Suite(a) => suite(&a),
    }
}

// ------------------------------------------------------------------------------------------
// Load

/// What one load run measured.
#[derive(Debug, Default)]
struct LoadResult {
    /// LMTP: recipients delivered (250 after DATA); POP3: messages retrieved.
    ops: u64,
    /// Message bytes moved (LMTP: sent per message, POP3: received, un-stuffed).
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    wall: f64,
    /// Per operation (LMTP: MAIL to the last DATA reply; POP3: one RETR), microseconds.
    latencies_us: Vec<u64>,
}

impl LoadResult {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }

    fn to_json(&self, a: &LoadArgs) -> Value {
        json!({
            "proto": format!("{:?}", a.proto).to_lowercase(),
            "addr": a.addr.to_string(),
            "clients": a.clients,
            "ops": self.ops,
            "bytes": self.bytes,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": self.wall,
            "ops_per_s": self.ops as f64 / self.wall,
            "mb_per_s": self.bytes as f64 / 1e6 / self.wall,
            "p50_ms": self.percentile_ms(0.50),
            "p90_ms": self.percentile_ms(0.90),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
        })
    }
}

/// Per-thread tallies, merged at the end.
#[derive(Default)]
struct Tally {
    ops: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

fn user_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

fn run_load(a: &LoadArgs) -> Result<LoadResult> {
    ensure!(a.clients > 0 && a.users > 0, "need clients and users");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let a = a.clone();
            let next = next.clone();
            thread::spawn(move || {
                let mut t = Tally::default();
                let r = match a.proto {
                    Proto::Lmtp => lmtp_client(&a, &next, &mut t),
                    Proto::Pop3 => pop3_client(&a, c, &mut t),
                };
                if let Err(e) = r {
                    t.error(format!("client {c}: {e:#}"));
                }
                t
            })
        })
        .collect();
    let mut r = LoadResult::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        r.ops += t.ops;
        r.bytes += t.bytes;
        r.errors += t.errors;
        r.first_error = r.first_error.or(t.first_error);
        r.latencies_us.extend(t.latencies_us);
    }
    r.wall = start.elapsed().as_secs_f64();
    r.latencies_us.sort_unstable();
    Ok(r)
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let writer = s.try_clone()?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, s),
            writer,
            line: Vec::with_capacity(1024),
        })
    }

    /// Reads one line (with its ending) into `self.line`.
    fn read_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            bail!("server closed the connection");
        }
        Ok(&self.line)
    }

    /// One SMTP-style reply (multi-line joined): its code and last line.
    fn smtp_reply(&mut self) -> Result<(u16, String)> {
        loop {
            let line = self.read_line()?;
            let code = line
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad reply {:?}", String::from_utf8_lossy(line)))?;
            if line.get(3) != Some(&b'-') {
                return Ok((code, String::from_utf8_lossy(line).trim_end().to_string()));
            }
        }
    }

    fn pop_ok(&mut self, what: &str) -> Result<()> {
        let line = self.read_line()?;
        if !line.starts_with(b"+OK") {
            bail!("{what}: {}", String::from_utf8_lossy(line).trim_end());
        }
        Ok(())
    }
}

/// The message body filler: 76-character lines, none starting with a dot.
fn filler(size: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n";
    let mut out = Vec::with_capacity(size + line.len());
    while out.len() < size {
        out.extend_from_slice(line);
    }
    out.truncate(size);
    // End on a line boundary.
    while out.len() >= 2 && !out.ends_with(b"\r\n") {
        out.pop();
    }
    out
}

fn lmtp_message(a: &LoadArgs, i: usize, rcpts: &[String], body: &[u8]) -> Vec<u8> {
    let head = format!(
        "From: Bench Sender <bench@example.org>\r\nTo: {}\r\nSubject: bench {} message {i}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{}.{i}@bench.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        rcpts.join(", "),
        a.tag,
        a.tag
    );
    // Cut the filler at a line end, so the message ends in CRLF before the final dot.
    let mut body_len = a.size.saturating_sub(head.len()).min(body.len());
    while body_len > 0 && body.get(body_len - 1) != Some(&b'\n') {
        body_len -= 1;
    }
    let mut m = head.into_bytes();
    m.extend_from_slice(&body[..body_len]);
    m.extend_from_slice(b".\r\n");
    m
}

fn lmtp_client(a: &LoadArgs, next: &AtomicUsize, t: &mut Tally) -> Result<()> {
    let mut c = Conn::connect(a.addr)?;
    let (code, text) = c.smtp_reply()?;
    ensure!(code == 220, "greeting {text}");
    c.writer.write_all(b"LHLO bench.example\r\n")?;
    let (code, text) = c.smtp_reply()?;
    ensure!(code == 250, "LHLO: {text}");
    let body = filler(a.size);
    let rcpts_per = a.rcpts.clamp(1, a.users);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= a.messages {
            break;
        }
        let rcpts: Vec<String> = (0..rcpts_per)
            .map(|k| user_name(&a.user_prefix, (i * rcpts_per + k) % a.users))
            .collect();
        let msg = lmtp_message(a, i, &rcpts, &body);
        let started = Instant::now();
        // PIPELINING: MAIL, every RCPT and DATA in one write, as Postfix's lmtp client does.
        let mut cmds = b"MAIL FROM:<bench@example.org>\r\n".to_vec();
        for r in &rcpts {
            cmds.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
        }
        cmds.extend_from_slice(b"DATA\r\n");
        c.writer.write_all(&cmds)?;
        let (code, text) = c.smtp_reply()?;
        if code != 250 {
            t.error(format!("MAIL: {text}"));
        }
        let mut accepted = 0;
        for _ in &rcpts {
            let (code, text) = c.smtp_reply()?;
            if code == 250 {
                accepted += 1;
            } else {
                t.error(format!("RCPT: {text}"));
            }
        }
        let (code, text) = c.smtp_reply()?;
        if code != 354 {
            t.error(format!("DATA: {text}"));
            continue;
        }
        c.writer.write_all(&msg)?;
        let mut delivered = 0;
        for _ in 0..accepted {
            let (code, text) = c.smtp_reply()?;
            if code == 250 {
                delivered += 1;
            } else {
                t.error(format!("after DATA: {text}"));
            }
        }
        t.latencies_us.push(started.elapsed().as_micros() as u64);
        t.ops += delivered;
        t.bytes += (msg.len() - 3) as u64;
    }
    c.writer.write_all(b"QUIT\r\n")?;
    let _ = c.smtp_reply();
    Ok(())
}

fn pop3_client(a: &LoadArgs, client: usize, t: &mut Tally) -> Result<()> {
    let user = user_name(&a.user_prefix, client % a.users);
    let mut c = Conn::connect(a.addr)?;
    c.pop_ok("greeting")?;
    c.writer.write_all(format!("USER {user}\r\n").as_bytes())?;
    c.pop_ok("USER")?;
    c.writer
        .write_all(format!("PASS {}\r\n", a.password).as_bytes())?;
    c.pop_ok("PASS")?;
    c.writer.write_all(b"STAT\r\n")?;
    let line = c.read_line()?;
    let stat = String::from_utf8_lossy(line).trim_end().to_string();
    let mut words = stat.split(' ').skip(1);
    let (Some(Ok(n)), Some(Ok(total))) = (
        words.next().map(str::parse::<u64>),
        words.next().map(str::parse::<u64>),
    ) else {
        bail!("STAT: {stat}");
    };
    ensure!(n > 0, "{user}: empty maildrop ({stat})");
    let mut got = 0u64;
    for i in 1..=n {
        let started = Instant::now();
        c.writer.write_all(format!("RETR {i}\r\n").as_bytes())?;
        c.pop_ok("RETR")?;
        let mut size = 0u64;
        loop {
            let line = c.read_line()?;
            if line == b".\r\n" {
                break;
            }
            size += line.len() as u64 - u64::from(line.starts_with(b"."));
        }
        t.latencies_us.push(started.elapsed().as_micros() as u64);
        t.ops += 1;
        got += size;
    }
    t.bytes += got;
    if got != total {
        t.error(format!("{user}: RETR gave {got} bytes, STAT said {total}"));
    }
    c.writer.write_all(b"QUIT\r\n")?;
    c.pop_ok("QUIT")?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Memory sampling

/// Pids of `master`'s children whose command name is `comm` (lmtpd, pop3d).
fn children_named(master: i32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|x| x.1).unwrap_or("");
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if name == comm && ppid == Some(master) {
            out.push(pid);
        }
    }
    out
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "comm)": state is field 3 of stat(5); utime and stime are 14 and 15.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// `VmHWM` and `RssAnon` of a process, KiB.
fn mem_kib(pid: i32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("RssAnon:").unwrap_or(0)))
}

/// Which processes make up a server.
#[derive(Clone)]
enum ServerProcs {
    /// Cyrus: the children of this master named so.
    Cyrus { master: i32, comm: &'static str },
    /// cyrkit: one process.
    Cyrkit { pid: i32 },
}

impl ServerProcs {
    fn pids(&self) -> Vec<i32> {
        match self {
            ServerProcs::Cyrus { master, comm } => children_named(*master, comm),
            ServerProcs::Cyrkit { pid } => vec![*pid],
        }
    }
}

/// Peak over samples of the summed VmHWM and RssAnon of a server's processes.
#[derive(Default, Clone, Copy)]
struct MemPeak {
    hwm_kib: u64,
    anon_kib: u64,
    procs: usize,
    /// CPU seconds of the server processes during the run (last sample of each).
    cpu_s: f64,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<MemPeak>,
}

impl Sampler {
    fn start(procs: ServerProcs) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak = MemPeak::default();
            let mut cpu_start: std::collections::HashMap<i32, f64> = Default::default();
            let mut cpu_last: std::collections::HashMap<i32, f64> = Default::default();
            loop {
                let done = s.load(Ordering::Relaxed);
                let pids = procs.pids();
                let (mut hwm, mut anon) = (0, 0);
                for p in &pids {
                    if let Some((h, a)) = mem_kib(*p) {
                        hwm += h;
                        anon += a;
                    }
                    if let Some(c) = cpu_secs(*p) {
                        // A process first seen in this run counts from 0; one that ran
                        // before (cyrkit is started just before) from its first sample.
                        cpu_start.entry(*p).or_insert(
                            if matches!(procs, ServerProcs::Cyrus { .. }) {
                                0.0
                            } else {
                                c
                            },
                        );
                        cpu_last.insert(*p, c);
                    }
                }
                peak.cpu_s = cpu_last
                    .iter()
                    .map(|(p, c)| c - cpu_start.get(p).copied().unwrap_or(0.0))
                    .sum();
                peak.hwm_kib = peak.hwm_kib.max(hwm);
                peak.anon_kib = peak.anon_kib.max(anon);
                peak.procs = peak.procs.max(pids.len());
                if done {
                    return peak;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> MemPeak {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

// ------------------------------------------------------------------------------------------
// Servers

/// `cyrkit serve` as a child, stopped with SIGTERM on drop.
struct Cyrkit {
    child: Child,
}

impl Cyrkit {
    fn start(bin: &Path, conf: &Path, args: &[String], port: u16, log: &Path) -> Result<Cyrkit> {
        let out = fs::File::create(log)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("-C")
            .arg(conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let mut me = Cyrkit { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = me.child.try_wait()? {
                bail!(
                    "cyrkit serve exited ({st}): {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(me);
            }
            ensure!(Instant::now() < deadline, "cyrkit serve did not listen");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Cyrkit {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn master_pid(cy: &CyrusInstance) -> Result<i32> {
    let p = cy.root().join("run/master.pid");
    fs::read_to_string(&p)
        .with_context(|| p.display().to_string())?
        .trim()
        .parse()
        .context("master.pid")
}

// ------------------------------------------------------------------------------------------
// Suite

struct Sizes {
    runs: usize,
    lmtp_clients: usize,
    lmtp_messages: usize,
    lmtp_size: usize,
    lmtp_users: usize,
    pop3_clients: usize,
    pop3_messages: usize,
    pop3_size: usize,
    rss_clients: usize,
    rss_messages: usize,
    rss_sizes: [usize; 2],
}

impl Sizes {
    fn from_args(a: &SuiteArgs) -> Sizes {
        let q = a.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let rss = a
            .rss_sizes
            .clone()
            .unwrap_or_else(|| vec![100_000, 10_000_000]);
        Sizes {
            runs: pick(a.runs, 3, 1),
            lmtp_clients: pick(a.lmtp_clients, 8, 8),
            lmtp_messages: pick(a.lmtp_messages, 10_000, 1_000),
            lmtp_size: pick(a.lmtp_size, 4096, 4096),
            lmtp_users: pick(a.lmtp_users, 100, 20),
            pop3_clients: pick(a.pop3_clients, 50, 50),
            pop3_messages: pick(a.pop3_messages, 100, 4),
            pop3_size: pick(a.pop3_size, 100_000, 100_000),
            rss_clients: pick(a.rss_clients, 10, 4),
            rss_messages: pick(a.rss_messages, 5, 2),
            rss_sizes: [rss[0], rss.get(1).copied().unwrap_or(rss[0])],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Cyrus,
    Cyrkit,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Cyrus => "cyrus",
            Server::Cyrkit => "cyrkit",
        }
    }
}

struct Suite<'a> {
    args: &'a SuiteArgs,
    cy: CyrusInstance,
    passwd: PathBuf,
    out: Mutex<fs::File>,
    rows: Vec<Value>,
    machine: Value,
}

fn machine() -> Value {
    let sh = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "nproc": sh("nproc"),
        "loadavg": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "kernel": sh("uname -r"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "cyrus": sh("dpkg-query -W -f='${Version}' cyrus-imapd 2>/dev/null"),
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    })
}

fn suite(a: &SuiteArgs) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (Cyrus runs as the cyrus user)"
    );
    ensure!(a.cyrkit.exists(), "{} not built", a.cyrkit.display());
    let z = Sizes::from_args(a);
    let mut opts = CyrusOptions::default();
    for kv in &a.conf {
        let (k, v) = kv.split_once('=').context("--conf KEY=VALUE")?;
        opts = opts.with(k, v);
    }
    eprintln!("starting Cyrus ...");
    let cy = CyrusInstance::start(&opts)?;
    let passwd = cy.root().join("bench-passwd");
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .with_context(|| a.out.display().to_string())?;
    let mut s = Suite {
        args: a,
        cy,
        passwd,
        out: Mutex::new(out),
        rows: Vec::new(),
        machine: machine(),
    };
    let jobs: Vec<&str> = a.jobs.iter().map(String::as_str).collect();
    // Users: l* for LMTP, p* for POP3, s*/t* for the small/large memory runs.
    let mut users: Vec<String> = Vec::new();
    if jobs.contains(&"lmtp") {
        users.extend((0..z.lmtp_users).map(|i| user_name("l", i)));
    }
    if jobs.contains(&"pop3") {
        users.extend((0..z.pop3_clients).map(|i| user_name("p", i)));
    }
    if jobs.contains(&"rss") {
        users.extend((0..z.rss_clients).map(|i| user_name("s", i)));
        users.extend((0..z.rss_clients).map(|i| user_name("t", i)));
    }
    s.create_users(&users)?;
    if jobs.contains(&"pop3") {
        s.fill("p", z.pop3_clients, z.pop3_messages, z.pop3_size)?;
    }
    if jobs.contains(&"rss") {
        s.fill("s", z.rss_clients, z.rss_messages, z.rss_sizes[0])?;
        s.fill("t", z.rss_clients, z.rss_messages, z.rss_sizes[1])?;
    }
    eprintln!("machine: {}", s.machine);
    for run in 0..z.runs {
        let order = if run % 2 == 0 {
            [Server::Cyrus, Server::Cyrkit]
        } else {
            [Server::Cyrkit, Server::Cyrus]
        };
        for server in order {
            if jobs.contains(&"lmtp") {
                let load = LoadArgs {
                    proto: Proto::Lmtp,
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    clients: z.lmtp_clients,
                    messages: z.lmtp_messages,
                    size: z.lmtp_size,
                    rcpts: a.lmtp_rcpts,
                    user_prefix: "l".into(),
                    users: z.lmtp_users,
                    password: PASSWORD.into(),
                    tag: format!("{}-{run}", server.name()),
                };
                s.measure("lmtp", server, run, load)?;
            }
        }
        for server in order {
            if jobs.contains(&"pop3") {
                let load = pop3_load("p", z.pop3_clients);
                s.measure("pop3", server, run, load)?;
            }
        }
        for server in order {
            if jobs.contains(&"rss") {
                s.measure("pop3-small", server, run, pop3_load("s", z.rss_clients))?;
                s.measure("pop3-large", server, run, pop3_load("t", z.rss_clients))?;
            }
        }
    }
    s.machine["loadavg_end"] = machine()["loadavg"].clone();
    print_table(&s.rows, &z, &s.machine);
    eprintln!("JSON lines appended to {}", a.out.display());
    Ok(())
}

fn pop3_load(prefix: &str, clients: usize) -> LoadArgs {
    LoadArgs {
        proto: Proto::Pop3,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        clients,
        messages: 0,
        size: 0,
        rcpts: 1,
        user_prefix: prefix.into(),
        users: clients,
        password: PASSWORD.into(),
        tag: String::new(),
    }
}

impl Suite<'_> {
    fn create_users(&mut self, users: &[String]) -> Result<()> {
        eprintln!("creating {} users ...", users.len());
        let mut imap = self.cy.imap_admin()?;
        for u in users {
            imap.create(&format!("user.{u}"))?;
        }
        imap.logout()?;
        let text: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}\n"))
            .collect();
        fs::write(&self.passwd, text)?;
        cyrus::chown_cyrus(&self.passwd)?;
        Ok(())
    }

    /// Delivers `per_user` messages of `size` bytes to each of `users` users through Cyrus's
    /// lmtpd (once, before the timed runs).
    fn fill(&mut self, prefix: &str, users: usize, per_user: usize, size: usize) -> Result<()> {
        eprintln!(
            "delivering {per_user} x {size} bytes to {users} {prefix}* users via Cyrus lmtpd ..."
        );
        let load = LoadArgs {
            proto: Proto::Lmtp,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, self.cy.lmtp_port)),
            clients: 4.min(users),
            messages: users * per_user,
            size,
            rcpts: 1,
            user_prefix: prefix.into(),
            users,
            password: PASSWORD.into(),
            tag: format!("fill-{prefix}"),
        };
        let r = run_load(&load)?;
        ensure!(
            r.errors == 0 && r.ops == (users * per_user) as u64,
            "filling {prefix}*: {} delivered, {} errors: {:?}",
            r.ops,
            r.errors,
            r.first_error
        );
        eprintln!("  {:.1} s", r.wall);
        Ok(())
    }

    /// One timed run of `load` against a freshly started server.
    fn measure(&mut self, job: &str, server: Server, run: usize, mut load: LoadArgs) -> Result<()> {
        let log = self.cy.root().join(format!("cyrkit-{job}-{run}.log"));
        let (_guard, procs) = match server {
            Server::Cyrus => {
                // A fresh master: every lmtpd/pop3d process starts with this run.
                self.cy.stop()?;
                self.cy.start_master()?;
                let port = if load.proto == Proto::Lmtp {
                    self.cy.lmtp_port
                } else {
                    self.cy.pop3_port
                };
                load.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let comm = if load.proto == Proto::Lmtp {
                    "lmtpd"
                } else {
                    "pop3d"
                };
                let master = master_pid(&self.cy)?;
                (None, ServerProcs::Cyrus { master, comm })
            }
            Server::Cyrkit => {
                let port = cyrus::free_port()?;
                let addr = format!("127.0.0.1:{port}");
                let args: Vec<String> = if load.proto == Proto::Lmtp {
                    vec!["--lmtp".into(), addr, "--lmtp-trust-loopback".into()]
                } else {
                    vec![
                        "--pop3".into(),
                        addr,
                        "--passwd-file".into(),
                        self.passwd.display().to_string(),
                    ]
                };
                let c = Cyrkit::start(&self.args.cyrkit, &self.cy.conf_path(), &args, port, &log)?;
                load.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let pid = c.pid();
                (Some(c), ServerProcs::Cyrkit { pid })
            }
        };
        let sampler = Sampler::start(procs);
        let r = run_load(&load)?;
        let mem = sampler.finish();
        drop(_guard);
        let mut row = r.to_json(&load);
        let extra = json!({
            "job": job,
            "server": server.name(),
            "run": run,
            "messages": r.ops,
            "size": if load.proto == Proto::Lmtp { load.size as u64 } else { r.bytes / r.ops.max(1) },
            "rcpts": load.rcpts,
            "peak_rss_kib": mem.hwm_kib,
            "peak_anon_kib": mem.anon_kib,
            "server_procs": mem.procs,
            "server_cpu_s": mem.cpu_s,
            "machine": self.machine,
        });
        if let (Some(row), Some(extra)) = (row.as_object_mut(), extra.as_object()) {
            row.extend(extra.clone());
        }
        eprintln!(
            "{job:<10} {:<6} run {run}: {:>8.1} ops/s {:>8.1} MB/s  errors {}  p50 {:.1} ms p99 {:.1} ms  peak RSS {} MiB ({} procs) CPU {:.1} s{}",
            server.name(),
            row["ops_per_s"].as_f64().unwrap_or(0.0),
            row["mb_per_s"].as_f64().unwrap_or(0.0),
            r.errors,
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
            mem.hwm_kib / 1024,
            mem.procs,
            mem.cpu_s,
            r.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default(),
        );
        if let Ok(mut f) = self.out.lock() {
            writeln!(f, "{row}")?;
        }
        self.rows.push(row);
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_table(rows: &[Value], z: &Sizes, machine: &Value) {
    let pick = |job: &str, server: &str, key: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["job"] == job && r["server"] == server)
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    let peak = |job: &str, server: &str, key: &str| -> u64 {
        rows.iter()
            .filter(|r| r["job"] == job && r["server"] == server)
            .filter_map(|r| r[key].as_u64())
            .max()
            .unwrap_or(0)
    };
    println!();
    println!(
        "machine: nproc {}, load {} -> {}, {}",
        machine["nproc"].as_str().unwrap_or("?"),
        machine["loadavg"].as_str().unwrap_or("?"),
        machine["loadavg_end"].as_str().unwrap_or("?"),
        machine["cpu"].as_str().unwrap_or("?"),
    );
    println!(
        "{:<11} {:<7} {:>5} {:>12} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7}",
        "job",
        "server",
        "runs",
        "median/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "anon MiB",
        "errors",
        "ratio"
    );
    let jobs = [
        (
            "lmtp",
            format!(
                "LMTP {} clients x {} msgs x {} B",
                z.lmtp_clients, z.lmtp_messages, z.lmtp_size
            ),
        ),
        (
            "pop3",
            format!(
                "POP3 {} clients x {} msgs x {} B",
                z.pop3_clients, z.pop3_messages, z.pop3_size
            ),
        ),
        (
            "pop3-small",
            format!(
                "POP3 {} clients x {} msgs x {} B",
                z.rss_clients, z.rss_messages, z.rss_sizes[0]
            ),
        ),
        (
            "pop3-large",
            format!(
                "POP3 {} clients x {} msgs x {} B",
                z.rss_clients, z.rss_messages, z.rss_sizes[1]
            ),
        ),
    ];
    for (job, desc) in jobs {
        if !rows.iter().any(|r| r["job"] == job) {
            continue;
        }
        println!("-- {desc}");
        // LMTP is compared in deliveries/s, POP3 in MB/s.
        let key = if job == "lmtp" {
            "ops_per_s"
        } else {
            "mb_per_s"
        };
        let cyrus_rate = median(pick(job, "cyrus", key));
        for server in ["cyrus", "cyrkit"] {
            let rate = median(pick(job, server, key));
            let errors: f64 = pick(job, server, "errors").iter().sum();
            println!(
                "{:<11} {:<7} {:>5} {:>12.1} {:>10.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>7} {:>6.2}x",
                job,
                server,
                pick(job, server, "wall_s").len(),
                median(pick(job, server, "ops_per_s")),
                median(pick(job, server, "mb_per_s")),
                median(pick(job, server, "p50_ms")),
                median(pick(job, server, "p99_ms")),
                peak(job, server, "peak_rss_kib") as f64 / 1024.0,
                peak(job, server, "peak_anon_kib") as f64 / 1024.0,
                errors,
                rate / cyrus_rate,
            );
        }
    }
    let _ = io::stdout().flush();
}
