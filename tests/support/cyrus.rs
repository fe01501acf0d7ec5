//! Test harness around a real Cyrus IMAP 3.6 (the Debian build in `/usr/lib/cyrus/bin`).
//!
//! Owns: private throw-away Cyrus instances (config, spool and runtime state in one fresh
//! directory, loopback ports picked at run time), a minimal blocking IMAP client, an LMTP client
//! that reads one reply per recipient after DATA, and running Cyrus's own tools as the `cyrus`
//! user. Used by the integration tests (`mod support;`) and by `examples/make_fixtures.rs`
//! (`#[path]` include), so it must not refer to anything outside this file.
//!
//! Must not: touch any Cyrus installation outside its own directory, use fixed ports, or leave a
//! server running (stop() and Drop terminate `master` and every process started with our
//! config file). Facts about running Cyrus come from `shared/docs/real-cyrus.md`.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Group, Pid, Uid, User};

/// Where the Debian packages install the Cyrus binaries.
pub const CYRUS_BIN: &str = "/usr/lib/cyrus/bin";
/// Set to `1` to turn a missing Cyrus (or not running as root) into a test failure.
pub const REQUIRE_ENV: &str = "CYRKIT_REQUIRE_CYRUS";
/// Set to `1` to keep instance directories after the test (for debugging).
pub const KEEP_ENV: &str = "CYRKIT_KEEP_CYRUS";
/// Parent directory for instance directories (default `/tmp`; must be traversable by `cyrus`).
pub const TMPDIR_ENV: &str = "CYRKIT_CYRUS_TMPDIR";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const SYSLOG: &str = "/var/log/syslog";
/// Name of the file in a fixture listing files that were hard links of each other.
pub const HARDLINKS_FILE: &str = "expected/hardlinks.txt";

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Whether a real-Cyrus test can run here. Returns `false` (after printing why) when Cyrus is
/// not installed or we are not root, unless `CYRKIT_REQUIRE_CYRUS=1`, in which case it panics:
/// CI must never skip an interop test silently.
pub fn require_cyrus() -> bool {
    let master = Path::new(CYRUS_BIN).join("master");
    let problem = if !master.exists() {
        Some(format!(
            "{} is missing (install cyrus-imapd)",
            master.display()
        ))
    } else if !Uid::effective().is_root() {
        Some("not running as root (needed to run Cyrus as the cyrus user)".to_string())
    } else if User::from_name("cyrus").ok().flatten().is_none() {
        Some("there is no `cyrus` user".to_string())
    } else {
        None
    };
    match problem {
        None => true,
        Some(why) if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => {
            panic!("real Cyrus required ({REQUIRE_ENV}=1) but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: real-Cyrus test: {why}; set {REQUIRE_ENV}=1 to fail instead");
            false
        }
    }
}

/// The `cyrus` uid and `mail` gid.
pub fn cyrus_ids() -> io::Result<(u32, u32)> {
    let user = User::from_name("cyrus")
        .map_err(io::Error::from)?
        .ok_or_else(|| err("no `cyrus` user"))?;
    let gid = match Group::from_name("mail").map_err(io::Error::from)? {
        Some(g) => g.gid.as_raw(),
        None => user.gid.as_raw(),
    };
    Ok((user.uid.as_raw(), gid))
}

/// `chown -R cyrus:mail path`.
pub fn chown_cyrus(path: &Path) -> io::Result<()> {
    let (uid, gid) = cyrus_ids()?;
    chown_tree(path, uid, gid)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Recursive copy of files and directories (symlinks are copied as links). Hard links in the
/// source become separate files.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        fs::create_dir_all(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else {
        fs::copy(src, dst)?;
    }
    Ok(())
}

/// Re-creates the hard links listed in a fixture's `expected/hardlinks.txt` (git does not keep
/// hard links). Each line holds tab-separated paths relative to `root`; every path after the
/// first becomes a link to the first. Returns the number of links made; a fixture without the
/// file yields 0.
pub fn relink_hardlinks(root: &Path) -> io::Result<usize> {
    let list = match fs::read_to_string(root.join(HARDLINKS_FILE)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut made = 0;
    for line in list.lines().filter(|l| !l.is_empty()) {
        let mut paths = line.split('\t');
        let Some(first) = paths.next() else { continue };
        let first = root.join(first);
        for other in paths {
            let other = root.join(other);
            let tmp = other.with_extension("relink-tmp");
            fs::hard_link(&first, &tmp)?;
            fs::rename(&tmp, &other)?;
            made += 1;
        }
    }
    Ok(made)
}

/// One free loopback port (bind to port 0, read the port back, release it).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// How to lay out a new instance. `Default` is the classic layout of `real-cyrus.md`: legacy
/// directories, hashimapspool, `.` separator, no virtual domains, twoskip mailboxes.db,
/// quotalegacy quotas, singleinstancestore, delayed delete and expunge.
#[derive(Clone, Debug)]
pub struct CyrusOptions {
    /// `mailbox_legacy_dirs` (false = `spool/uuid/x/y/<uniqueid>/` layout).
    pub legacy_dirs: bool,
    pub hashimapspool: bool,
    pub fulldirhash: bool,
    pub unixhierarchysep: bool,
    pub altnamespace: bool,
    /// `off`, `userid` or `on`.
    pub virtdomains: String,
    pub defaultdomain: Option<String>,
    pub mboxlist_db: String,
    pub quota_db: String,
    /// Adds `metapartition-default: meta` with `metapartition_files: header index`.
    pub metapartition: bool,
    pub singleinstancestore: bool,
    /// Further `imapd.conf` keys; they override the ones above.
    pub extra: Vec<(String, String)>,
    /// Also run lmtpd on the UNIX socket `lmtpsocket` (trusted, as Cyrus trusts its socket),
    /// with the instance's directories made traversable so an MTA's user can reach it.
    pub lmtp_unix: bool,
    /// Also run `pop3d -s` (POP3S) on a port of its own. Needs `tls_server_cert` and
    /// `tls_server_key` (see [`CyrusOptions::with_tls`]); those alone already make pop3d
    /// offer STLS on the plain port.
    pub pop3s: bool,
}

impl Default for CyrusOptions {
    fn default() -> Self {
        CyrusOptions {
            legacy_dirs: true,
            hashimapspool: true,
            fulldirhash: false,
            unixhierarchysep: false,
            altnamespace: false,
            virtdomains: "off".into(),
            defaultdomain: None,
            mboxlist_db: "twoskip".into(),
            quota_db: "quotalegacy".into(),
            metapartition: false,
            singleinstancestore: true,
            extra: Vec::new(),
            lmtp_unix: false,
            pop3s: false,
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

impl CyrusOptions {
    /// Adds (or replaces) one extra `imapd.conf` key.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets `tls_server_cert`/`tls_server_key` (PEM files the `cyrus` user can read) and turns
    /// on the POP3S service.
    pub fn with_tls(mut self, cert: &Path, key: &Path) -> Self {
        self = self
            .with("tls_server_cert", &cert.to_string_lossy())
            .with("tls_server_key", &key.to_string_lossy());
        self.pop3s = true;
        self
    }

    /// The keys that describe the mail store (what a fixture's `imapd.conf` keeps), with paths
    /// relative to the instance directory.
    pub fn store_keys(&self) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = vec![
            ("configdirectory".into(), "conf".into()),
            ("defaultpartition".into(), "default".into()),
            ("partition-default".into(), "spool".into()),
        ];
        if self.metapartition {
            keys.push(("metapartition-default".into(), "meta".into()));
            keys.push(("metapartition_files".into(), "header index".into()));
        }
        let mut more = vec![
            ("mailbox_legacy_dirs", yes_no(self.legacy_dirs)),
            ("hashimapspool", yes_no(self.hashimapspool)),
            ("fulldirhash", yes_no(self.fulldirhash)),
            ("unixhierarchysep", yes_no(self.unixhierarchysep)),
            ("altnamespace", yes_no(self.altnamespace)),
            ("virtdomains", self.virtdomains.clone()),
            ("mboxlist_db", self.mboxlist_db.clone()),
            ("quota_db", self.quota_db.clone()),
            ("singleinstancestore", yes_no(self.singleinstancestore)),
            ("delete_mode", "delayed".into()),
            ("expunge_mode", "delayed".into()),
        ];
        if let Some(d) = &self.defaultdomain {
            more.push(("defaultdomain", d.clone()));
        }
        keys.extend(more.into_iter().map(|(k, v)| (k.to_string(), v)));
        for (k, v) in &self.extra {
            set_key(&mut keys, k, v);
        }
        keys
    }
}

fn set_key(keys: &mut Vec<(String, String)>, key: &str, value: &str) {
    match keys.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => keys.push((key.to_string(), value.to_string())),
    }
}

/// Parses `imapd.conf` text into ordered `(key, value)` pairs (comments and blanks skipped).
pub fn parse_imapd_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Renders `(key, value)` pairs as `imapd.conf` text.
pub fn render_imapd_conf(keys: &[(String, String)]) -> String {
    keys.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// Keys whose value is a filesystem path (relative ones are taken relative to the instance).
fn is_path_key(key: &str) -> bool {
    key == "configdirectory"
        || key == "sievedir"
        || key.ends_with("_path")
        || key.ends_with("socket")
        || [
            "partition-",
            "metapartition-",
            "archivepartition-",
            "searchpartition-",
            "metadir-",
        ]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Directories Cyrus needs in an instance (relative to its root).
const INSTANCE_DIRS: &[&str] = &[
    "conf/db",
    "conf/quota",
    "conf/user",
    "conf/msg",
    "conf/sync",
    "conf/log",
    "spool",
    "run/socket",
    "run/proc",
    "run/lock",
    "sieve",
];

/// A private Cyrus instance. Dropping it stops the server.
pub struct CyrusInstance {
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    keys: Vec<(String, String)>,
    pub imap_port: u16,
    pub pop3_port: u16,
    pub lmtp_port: u16,
    /// POP3S port (0 unless started with [`CyrusOptions::pop3s`]).
    pub pop3s_port: u16,
    lmtp_unix: bool,
    pop3s: bool,
    master: Option<Child>,
    syslog_prefix: String,
}

impl CyrusInstance {
    /// Creates a fresh instance from `opts` and starts it.
    pub fn start(opts: &CyrusOptions) -> io::Result<Self> {
        let mut inst = Self::prepare(opts.store_keys())?;
        inst.lmtp_unix = opts.lmtp_unix;
        inst.pop3s = opts.pop3s;
        inst.start_master()?;
        Ok(inst)
    }

    /// Creates a fresh instance directory from `opts` without starting a server (to run
    /// offline tools only).
    pub fn create_offline(opts: &CyrusOptions) -> io::Result<Self> {
        Self::prepare(opts.store_keys())
    }

    /// Copies an existing store (e.g. a fixture directory holding `imapd.conf`, `conf/` and
    /// `spool/`, with relative paths in `imapd.conf`) into a fresh directory, makes its paths
    /// absolute, adds the runtime keys, chowns it to cyrus:mail and starts Cyrus on it.
    pub fn from_spool_copy(dir: &Path) -> io::Result<Self> {
        let mut inst = Self::spool_copy_offline(dir)?;
        inst.start_master()?;
        Ok(inst)
    }

    /// [`from_spool_copy`](Self::from_spool_copy) without starting the server.
    pub fn spool_copy_offline(dir: &Path) -> io::Result<Self> {
        let conf = fs::read_to_string(dir.join("imapd.conf"))
            .map_err(|e| err(format!("{}/imapd.conf: {e}", dir.display())))?;
        let keys = parse_imapd_conf(&conf);
        Self::prepare_with(keys, Some(dir))
    }

    fn prepare(keys: Vec<(String, String)>) -> io::Result<Self> {
        Self::prepare_with(keys, None)
    }

    fn prepare_with(
        store_keys: Vec<(String, String)>,
        copy_from: Option<&Path>,
    ) -> io::Result<Self> {
        let parent = std::env::var_os(TMPDIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let tmp = tempfile::Builder::new()
            .prefix("cyrkit-cyrus-")
            .tempdir_in(&parent)?;
        let root = tmp.path().to_path_buf();
        if let Some(src) = copy_from {
            copy_tree(src, &root)?;
        }
        for d in INSTANCE_DIRS {
            fs::create_dir_all(root.join(d))?;
        }
        let mut keys: Vec<(String, String)> = store_keys
            .into_iter()
            .map(|(k, v)| {
                if is_path_key(&k) && Path::new(&v).is_relative() {
                    let abs = root.join(&v).to_string_lossy().into_owned();
                    (k, abs)
                } else {
                    (k, v)
                }
            })
            .collect();
        for (k, v) in &keys {
            if ["partition-", "metapartition-", "archivepartition-"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                fs::create_dir_all(v)?;
            }
        }
        let suffix: String = root
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("cyrkit-cyrus-")
                    .to_string()
            })
            .unwrap_or_default();
        let syslog_prefix = format!("cyrkit-{suffix}");
        let r = |p: &str| root.join(p).to_string_lossy().into_owned();
        let runtime = [
            ("proc_path", r("run/proc")),
            ("mboxname_lockpath", r("run/lock")),
            ("sievedir", r("sieve")),
            ("lmtpsocket", r("run/socket/lmtp")),
            ("idlesocket", r("run/socket/idle")),
            ("notifysocket", r("run/socket/notify")),
            ("admins", "cyrus".into()),
            ("allowplaintext", "yes".into()),
            ("sasl_pwcheck_method", "alwaystrue".into()),
            ("syslog_prefix", syslog_prefix.clone()),
        ];
        for (k, v) in runtime {
            set_key(&mut keys, k, &v);
        }
        fs::write(root.join("imapd.conf"), render_imapd_conf(&keys))?;
        chown_cyrus(&root)?;
        let tmp = if std::env::var(KEEP_ENV).as_deref() == Ok("1") {
            eprintln!("keeping Cyrus instance directory {}", root.display());
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        Ok(CyrusInstance {
            root,
            tmp,
            keys,
            imap_port: 0,
            pop3_port: 0,
            lmtp_port: 0,
            pop3s_port: 0,
            lmtp_unix: false,
            pop3s: false,
            master: None,
            syslog_prefix,
        })
    }

    /// The instance directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Absolute path of `imapd.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.root.join("imapd.conf")
    }
    /// Value of an `imapd.conf` key as written for this instance.
    pub fn conf_value(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// `configdirectory`.
    pub fn config_dir(&self) -> PathBuf {
        PathBuf::from(self.conf_value("configdirectory").unwrap_or_default())
    }
    /// `partition-default`.
    pub fn spool_dir(&self) -> PathBuf {
        PathBuf::from(self.conf_value("partition-default").unwrap_or_default())
    }
    /// The store keys (paths relative to the instance) for a fixture's `imapd.conf`.
    pub fn relative_store_keys(&self) -> Vec<(String, String)> {
        let runtime = [
            "proc_path",
            "mboxname_lockpath",
            "sievedir",
            "lmtpsocket",
            "idlesocket",
            "notifysocket",
            "admins",
            "allowplaintext",
            "sasl_pwcheck_method",
            "syslog_prefix",
        ];
        self.keys
            .iter()
            .filter(|(k, _)| !runtime.contains(&k.as_str()))
            .map(|(k, v)| {
                let rel = Path::new(v)
                    .strip_prefix(&self.root)
                    .map(|p| p.to_string_lossy().into_owned());
                match rel {
                    Ok(rel) if is_path_key(k) => (k.clone(), rel),
                    _ => (k.clone(), v.clone()),
                }
            })
            .collect()
    }

    /// Whether `master` is running.
    pub fn is_running(&mut self) -> bool {
        match self.master.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The UNIX socket lmtpd listens on (`lmtpsocket`) when started with
    /// [`CyrusOptions::lmtp_unix`].
    pub fn lmtp_socket(&self) -> PathBuf {
        PathBuf::from(self.conf_value("lmtpsocket").unwrap_or_default())
    }

    fn write_cyrus_conf(&self) -> io::Result<()> {
        let conf = self.conf_path();
        let conf = conf.display();
        let mut services = format!(
            "  imap cmd=\"{bin}/imapd -C {conf}\" listen=\"127.0.0.1:{imap}\" prefork=0\n  \
             pop3 cmd=\"{bin}/pop3d -C {conf}\" listen=\"127.0.0.1:{pop3}\" prefork=0\n  \
             lmtp cmd=\"{bin}/lmtpd -a -C {conf}\" listen=\"127.0.0.1:{lmtp}\" prefork=0\n",
            bin = CYRUS_BIN,
            imap = self.imap_port,
            pop3 = self.pop3_port,
            lmtp = self.lmtp_port,
        );
        if self.pop3s {
            services.push_str(&format!(
                "  pop3s cmd=\"{CYRUS_BIN}/pop3d -s -C {conf}\" listen=\"127.0.0.1:{}\" prefork=0\n",
                self.pop3s_port
            ));
        }
        if self.lmtp_unix {
            services.push_str(&format!(
                "  lmtpunix cmd=\"{CYRUS_BIN}/lmtpd -C {conf}\" listen=\"{}\" prefork=0\n",
                self.lmtp_socket().display()
            ));
        }
        let text = format!(
            "START {{\n  recover cmd=\"{CYRUS_BIN}/ctl_cyrusdb -r -C {conf}\"\n}}\n\
             SERVICES {{\n{services}}}\nEVENTS {{\n}}\n"
        );
        let path = self.root.join("cyrus.conf");
        fs::write(&path, text)?;
        chown_cyrus(&path)
    }

    /// Picks ports, writes `cyrus.conf` and runs `master` as cyrus; waits until IMAP and LMTP
    /// greet. On failure the error carries master's output and this instance's syslog lines.
    pub fn start_master(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        // Hold all listeners at once so the ports are distinct, release just before use.
        let listeners: Vec<TcpListener> = (0..4)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<io::Result<_>>()?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<_>>()?;
        (self.imap_port, self.pop3_port, self.lmtp_port) = (ports[0], ports[1], ports[2]);
        self.pop3s_port = if self.pop3s { ports[3] } else { 0 };
        if self.lmtp_unix {
            // The MTA (Postfix's lmtp runs as `postfix`) must reach run/socket/lmtp.
            for dir in [
                &self.root,
                &self.root.join("run"),
                &self.lmtp_socket().with_file_name(""),
            ] {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
            }
        }
        self.write_cyrus_conf()?;
        drop(listeners);
        let (uid, gid) = cyrus_ids()?;
        let out = File::create(self.root.join("run/master.out"))?;
        let child = Command::new(Path::new(CYRUS_BIN).join("master"))
            .arg("-C")
            .arg(self.conf_path())
            .arg("-M")
            .arg(self.root.join("cyrus.conf"))
            .arg("-p")
            .arg(self.root.join("run/master.pid"))
            .uid(uid)
            .gid(gid)
            .env("HOME", &self.root)
            .env("USER", "cyrus")
            .env("LOGNAME", "cyrus")
            .current_dir(&self.root)
            // master signals its whole process group when it shuts down: without a group of
            // its own it would also kill the servers of other instances started by this process.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.master = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                let msg = format!(
                    "Cyrus master exited during start-up\n{}",
                    self.diagnostics()
                );
                self.master = None;
                return Err(err(msg));
            }
            if greets(self.imap_port, b"* OK")
                && greets(self.lmtp_port, b"220")
                && (!self.pop3s || port_open(self.pop3s_port))
                && (!self.lmtp_unix || self.lmtp_socket().exists())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "Cyrus did not answer on IMAP {} / LMTP {} within {:?}\n{}",
                    self.imap_port,
                    self.lmtp_port,
                    START_TIMEOUT,
                    self.diagnostics()
                );
                let _ = self.stop();
                return Err(err(msg));
            }
            sleep(POLL);
        }
    }

    /// master's own output and the last syslog lines tagged with this instance's prefix.
    pub fn diagnostics(&self) -> String {
        let master_out = fs::read_to_string(self.root.join("run/master.out")).unwrap_or_default();
        let syslog = match fs::read(SYSLOG) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(&self.syslog_prefix))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                if tail.is_empty() {
                    format!("(no lines tagged {} in {SYSLOG})", self.syslog_prefix)
                } else {
                    tail.join("\n")
                }
            }
            Err(e) => format!(
                "({SYSLOG}: {e}; Cyrus logs only to syslog: start rsyslogd to see its errors)"
            ),
        };
        format!(
            "instance: {}\nmaster output:\n{}\nsyslog ({}):\n{}",
            self.root.display(),
            master_out.trim_end(),
            self.syslog_prefix,
            syslog
        )
    }

    /// Stops the server: SIGTERM to master, wait for it, SIGKILL if it lingers, then SIGKILL any
    /// process still running with this instance's config file, and wait until the ports close.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.master.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(POLL);
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        let ports: Vec<u16> = [
            self.imap_port,
            self.pop3_port,
            self.lmtp_port,
            self.pop3s_port,
        ]
        .into_iter()
        .filter(|p| *p != 0)
        .collect();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            self.kill_leftovers();
            if !ports.iter().any(|p| port_open(*p)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(format!("Cyrus ports {ports:?} still open after stop")));
            }
            sleep(POLL);
        }
    }

    /// SIGKILLs processes whose command line names this instance's `imapd.conf` (only ever
    /// processes this instance started).
    fn kill_leftovers(&self) {
        let conf = self.conf_path();
        let conf = conf.as_os_str().as_encoded_bytes();
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|arg| arg == conf) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Runs a Cyrus tool (`reconstruct`, `quota`, `ctl_mboxlist`, ...) as cyrus with
    /// `-C <this instance's imapd.conf>` before `args`.
    pub fn run_tool(&self, name: &str, args: &[&str]) -> io::Result<Output> {
        run_cyrus_tool(&self.conf_path(), &self.root, name, args)
    }

    /// An IMAP connection (not logged in).
    pub fn imap(&self) -> io::Result<ImapClient> {
        ImapClient::connect(self.imap_port)
    }
    /// An IMAP connection logged in as `user` (any password works: `alwaystrue`).
    pub fn imap_login(&self, user: &str) -> io::Result<ImapClient> {
        let login = || -> io::Result<ImapClient> {
            let mut c = self.imap()?;
            c.login(user, "x")?;
            Ok(c)
        };
        login().map_err(|e| err(format!("IMAP login as {user}: {e}\n{}", self.diagnostics())))
    }
    /// An IMAP connection logged in as the admin `cyrus`.
    pub fn imap_admin(&self) -> io::Result<ImapClient> {
        self.imap_login("cyrus")
    }
    /// An LMTP connection (greeting read, LHLO sent).
    pub fn lmtp(&self) -> io::Result<LmtpClient> {
        LmtpClient::connect(self.lmtp_port)
    }
}

impl Drop for CyrusInstance {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping Cyrus instance {}: {e}", self.root.display());
        }
    }
}

/// Runs `CYRUS_BIN/name -C conf args...` as cyrus:mail in `cwd`.
pub fn run_cyrus_tool(conf: &Path, cwd: &Path, name: &str, args: &[&str]) -> io::Result<Output> {
    let (uid, gid) = cyrus_ids()?;
    Command::new(Path::new(CYRUS_BIN).join(name))
        .arg("-C")
        .arg(conf)
        .args(args)
        .uid(uid)
        .gid(gid)
        .env("USER", "cyrus")
        .env("LOGNAME", "cyrus")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
}

/// A loopback connection with a read timeout, split into a buffered reader and a writer.
fn connect_stream(port: u16) -> io::Result<(BufReader<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let writer = stream.try_clone()?;
    Ok((BufReader::new(stream), writer))
}

/// Connects and checks that the first bytes the server sends start with `prefix`.
fn greets(port: u16, prefix: &[u8]) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; prefix.len()];
    s.read_exact(&mut buf).is_ok() && buf == prefix
}

// ------------------------------------------------------------------------------------------
// IMAP

/// An IMAP string argument: a quoted string (with `\` and `"` escaped).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A parsed piece of an IMAP response line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// Atom or number (including `NIL` and flags such as `\Seen`).
    Atom(String),
    /// Quoted string or literal, unescaped.
    Str(Vec<u8>),
    /// Parenthesised list (or bracketed response code, as a list).
    List(Vec<Token>),
}

impl Token {
    /// The text of an atom or string.
    pub fn text(&self) -> Option<String> {
        match self {
            Token::Atom(a) => Some(a.clone()),
            Token::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            Token::List(_) => None,
        }
    }
}

/// Tokenises one response (literals inlined as `{n}\r\n<bytes>` by the reader).
pub fn tokenize(line: &[u8]) -> Vec<Token> {
    let mut pos = 0;
    parse_tokens(line, &mut pos, None)
}

fn parse_tokens(b: &[u8], pos: &mut usize, close: Option<u8>) -> Vec<Token> {
    let mut out = Vec::new();
    while let Some(&c) = b.get(*pos) {
        match c {
            b' ' | b'\r' | b'\n' => *pos += 1,
            b')' | b']' if Some(c) == close => {
                *pos += 1;
                return out;
            }
            b'(' | b'[' => {
                *pos += 1;
                let end = if c == b'(' { b')' } else { b']' };
                out.push(Token::List(parse_tokens(b, pos, Some(end))));
            }
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                while let Some(&d) = b.get(*pos) {
                    *pos += 1;
                    match d {
                        b'\\' => {
                            if let Some(&e) = b.get(*pos) {
                                s.push(e);
                                *pos += 1;
                            }
                        }
                        b'"' => break,
                        _ => s.push(d),
                    }
                }
                out.push(Token::Str(s));
            }
            b'{' => {
                let start = *pos;
                let close_at = b[start..]
                    .iter()
                    .position(|&x| x == b'}')
                    .map(|i| start + i);
                let n = close_at.and_then(|e| {
                    std::str::from_utf8(&b[start + 1..e])
                        .ok()
                        .and_then(|t| t.trim_end_matches('+').parse::<usize>().ok())
                });
                match (close_at, n) {
                    (Some(e), Some(n)) if b.get(e + 1..e + 3) == Some(b"\r\n") => {
                        let from = e + 3;
                        let to = from.saturating_add(n).min(b.len());
                        out.push(Token::Str(b[from..to].to_vec()));
                        *pos = to;
                    }
                    _ => out.push(Token::Atom(atom(b, pos))),
                }
            }
            _ => out.push(Token::Atom(atom(b, pos))),
        }
    }
    out
}

fn atom(b: &[u8], pos: &mut usize) -> String {
    let start = *pos;
    // `[` inside an atom belongs to it (BODY[TEXT]) only after the first byte.
    let mut depth = 0usize;
    while let Some(&c) = b.get(*pos) {
        match c {
            b'[' if *pos > start => depth += 1,
            b']' if depth > 0 => depth -= 1,
            b' ' | b'(' | b')' | b'\r' | b'\n' | b']' if depth == 0 => break,
            _ => {}
        }
        *pos += 1;
    }
    if *pos == start {
        *pos += 1; // never loop on an unexpected byte
    }
    String::from_utf8_lossy(&b[start..*pos]).into_owned()
}

/// The responses to one tagged command.
#[derive(Clone, Debug)]
pub struct ImapReply {
    /// `OK`, `NO` or `BAD`.
    pub status: String,
    /// Text after the status in the tagged line.
    pub text: String,
    /// Untagged responses (`* ...` lines, literals inlined), without the trailing CRLF.
    pub untagged: Vec<Vec<u8>>,
}

impl ImapReply {
    pub fn is_ok(&self) -> bool {
        self.status == "OK"
    }
    /// All untagged responses followed by the tagged line text, CRLF-separated.
    pub fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for u in &self.untagged {
            out.extend_from_slice(u);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("{} {}\r\n", self.status, self.text).as_bytes());
        out
    }
    /// Untagged responses as tokens.
    pub fn tokens(&self) -> Vec<Vec<Token>> {
        self.untagged.iter().map(|u| tokenize(u)).collect()
    }
}

/// Counters of a mailbox (from STATUS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub messages: u64,
    pub uidnext: u64,
    pub uidvalidity: u64,
    pub highestmodseq: u64,
    /// RFC 8474 MAILBOXID: Cyrus's uniqueid.
    pub mailboxid: String,
}

impl MailboxStatus {
    /// Reads the counters from a SELECT/EXAMINE reply (`* N EXISTS`, `* OK [UIDNEXT n]`, ...).
    pub fn from_select(reply: &ImapReply) -> Self {
        let mut st = MailboxStatus::default();
        for toks in reply.tokens() {
            match (toks.get(1), toks.get(2)) {
                (Some(Token::Atom(n)), Some(Token::Atom(what))) if what == "EXISTS" => {
                    st.messages = n.parse().unwrap_or(0);
                }
                (Some(Token::Atom(ok)), Some(Token::List(code))) if ok == "OK" => {
                    if let (Some(Token::Atom(k)), Some(v)) = (code.first(), code.get(1)) {
                        st.set(k, v);
                    }
                }
                _ => {}
            }
        }
        st
    }

    fn set(&mut self, key: &str, value: &Token) {
        let num = value
            .text()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        match key.to_ascii_uppercase().as_str() {
            "MESSAGES" => self.messages = num,
            "UIDNEXT" => self.uidnext = num,
            "UIDVALIDITY" => self.uidvalidity = num,
            "HIGHESTMODSEQ" => self.highestmodseq = num,
            "MAILBOXID" => {
                self.mailboxid = match value {
                    Token::List(l) => l.first().and_then(Token::text).unwrap_or_default(),
                    other => other.text().unwrap_or_default(),
                }
            }
            _ => {}
        }
    }
}

/// One message as FETCH (UID FLAGS INTERNALDATE RFC822.SIZE) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u64,
    /// Sorted.
    pub flags: Vec<String>,
    pub internaldate: String,
    pub size: u64,
}

/// A minimal blocking IMAP client: one command at a time, LITERAL+ for uploads.
pub struct ImapClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
    /// The server greeting line.
    pub greeting: String,
}

impl ImapClient {
    pub fn connect(port: u16) -> io::Result<Self> {
        let (reader, writer) = connect_stream(port)?;
        let mut c = ImapClient {
            reader,
            writer,
            next_tag: 1,
            greeting: String::new(),
        };
        let g = c.read_response()?;
        c.greeting = String::from_utf8_lossy(&g).into_owned();
        if !c.greeting.starts_with("* OK") {
            return Err(err(format!("unexpected IMAP greeting {:?}", c.greeting)));
        }
        Ok(c)
    }

    /// Reads one response line, inlining literals; strips the final CRLF.
    fn read_response(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                return Err(err("IMAP server closed the connection"));
            }
            out.extend_from_slice(&line);
            match literal_len(&line) {
                Some(n) => {
                    let mut lit = vec![0u8; n];
                    self.reader.read_exact(&mut lit)?;
                    out.extend_from_slice(&lit);
                }
                None => break,
            }
        }
        while out.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            out.pop();
        }
        Ok(out)
    }

    /// Sends one command built from `parts` (already formatted; byte parts are sent as
    /// LITERAL+ literals) and collects its responses. A NO/BAD is returned, not an error.
    pub fn command_parts(&mut self, parts: &[Part<'_>]) -> io::Result<ImapReply> {
        let tag = format!("C{}", self.next_tag);
        self.next_tag += 1;
        let mut buf = format!("{tag} ").into_bytes();
        for p in parts {
            match p {
                Part::Text(t) => buf.extend_from_slice(t.as_bytes()),
                Part::Literal(data) => {
                    buf.extend_from_slice(format!("{{{}+}}\r\n", data.len()).as_bytes());
                    buf.extend_from_slice(data);
                }
            }
        }
        buf.extend_from_slice(b"\r\n");
        self.writer.write_all(&buf)?;
        let mut untagged = Vec::new();
        loop {
            let resp = self.read_response()?;
            if let Some(rest) = resp.strip_prefix(format!("{tag} ").as_bytes()) {
                let rest = String::from_utf8_lossy(rest).into_owned();
                let (status, text) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
                return Ok(ImapReply {
                    status: status.to_string(),
                    text: text.to_string(),
                    untagged,
                });
            }
            if resp.starts_with(b"+") {
                continue;
            }
            untagged.push(resp);
        }
    }

    /// Sends a plain-text command.
    pub fn command(&mut self, cmd: &str) -> io::Result<ImapReply> {
        self.command_parts(&[Part::Text(cmd)])
    }

    /// Sends a command and fails unless the server answers OK.
    pub fn ok(&mut self, cmd: &str) -> io::Result<ImapReply> {
        let r = self.command(cmd)?;
        check(r, cmd)
    }

    pub fn login(&mut self, user: &str, password: &str) -> io::Result<()> {
        self.ok(&format!("LOGIN {} {}", quote(user), quote(password)))
            .map(|_| ())
    }
    pub fn create(&mut self, mailbox: &str) -> io::Result<()> {
        self.ok(&format!("CREATE {}", quote(mailbox))).map(|_| ())
    }
    pub fn delete(&mut self, mailbox: &str) -> io::Result<()> {
        self.ok(&format!("DELETE {}", quote(mailbox))).map(|_| ())
    }
    pub fn setacl(&mut self, mailbox: &str, who: &str, rights: &str) -> io::Result<()> {
        self.ok(&format!(
            "SETACL {} {} {}",
            quote(mailbox),
            quote(who),
            quote(rights)
        ))
        .map(|_| ())
    }
    /// `SETQUOTA root (RES limit ...)`; limits in IMAP units (STORAGE in KiB).
    pub fn setquota(&mut self, root: &str, limits: &[(&str, u64)]) -> io::Result<()> {
        let list: Vec<String> = limits.iter().map(|(r, n)| format!("{r} {n}")).collect();
        self.ok(&format!("SETQUOTA {} ({})", quote(root), list.join(" ")))
            .map(|_| ())
    }
    pub fn getquotaroot(&mut self, mailbox: &str) -> io::Result<ImapReply> {
        self.ok(&format!("GETQUOTAROOT {}", quote(mailbox)))
    }
    /// SELECT (read-write).
    pub fn select(&mut self, mailbox: &str) -> io::Result<ImapReply> {
        self.ok(&format!("SELECT {}", quote(mailbox)))
    }
    /// EXAMINE (read-only: changes neither \Seen nor \Recent state).
    pub fn examine(&mut self, mailbox: &str) -> io::Result<ImapReply> {
        self.ok(&format!("EXAMINE {}", quote(mailbox)))
    }
    /// APPEND with flags (e.g. `\Seen`, `$Label1`) and an optional INTERNALDATE
    /// (`"01-Jan-2020 12:34:56 +0200"` form, without the quotes).
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internaldate: Option<&str>,
        message: &[u8],
    ) -> io::Result<ImapReply> {
        let mut head = format!("APPEND {}", quote(mailbox));
        if !flags.is_empty() {
            head.push_str(&format!(" ({})", flags.join(" ")));
        }
        if let Some(d) = internaldate {
            head.push_str(&format!(" {}", quote(d)));
        }
        head.push(' ');
        let r = self.command_parts(&[Part::Text(&head), Part::Literal(message)])?;
        check(r, &head)
    }
    /// `STORE set op (flags)` with op such as `+FLAGS` or `-FLAGS.SILENT`.
    pub fn store(&mut self, set: &str, op: &str, flags: &[&str]) -> io::Result<ImapReply> {
        self.ok(&format!("STORE {set} {op} ({})", flags.join(" ")))
    }
    pub fn expunge(&mut self) -> io::Result<ImapReply> {
        self.ok("EXPUNGE")
    }
    /// FETCH; returns the raw untagged responses (literals inlined) followed by the tagged
    /// status line.
    pub fn fetch(&mut self, set: &str, items: &str) -> io::Result<Vec<u8>> {
        self.ok(&format!("FETCH {set} {items}")).map(|r| r.raw())
    }
    /// UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE) of the selected mailbox.
    pub fn fetch_summary(&mut self) -> io::Result<Vec<FetchedMessage>> {
        let r = self.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE)")?;
        let mut out = Vec::new();
        for toks in r.tokens() {
            if toks.get(2) != Some(&Token::Atom("FETCH".into())) {
                continue;
            }
            let Some(Token::List(items)) = toks.get(3) else {
                continue;
            };
            let mut msg = FetchedMessage {
                uid: 0,
                flags: Vec::new(),
                internaldate: String::new(),
                size: 0,
            };
            for pair in items.chunks(2) {
                let (Some(Token::Atom(k)), Some(v)) = (pair.first(), pair.get(1)) else {
                    continue;
                };
                match (k.to_ascii_uppercase().as_str(), v) {
                    ("UID", Token::Atom(n)) => msg.uid = n.parse().unwrap_or(0),
                    ("RFC822.SIZE", Token::Atom(n)) => msg.size = n.parse().unwrap_or(0),
                    ("INTERNALDATE", v) => msg.internaldate = v.text().unwrap_or_default(),
                    ("FLAGS", Token::List(fs)) => {
                        msg.flags = fs.iter().filter_map(Token::text).collect();
                        msg.flags.sort();
                    }
                    _ => {}
                }
            }
            out.push(msg);
        }
        out.sort_by_key(|m| m.uid);
        Ok(out)
    }
    /// `STATUS mailbox (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)`. Leaves `mailboxid`
    /// empty: Cyrus 3.6.1 answers STATUS MAILBOXID with garbage bytes (EXAMINE gets it right).
    pub fn status(&mut self, mailbox: &str) -> io::Result<MailboxStatus> {
        let r = self.ok(&format!(
            "STATUS {} (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
            quote(mailbox)
        ))?;
        let mut st = MailboxStatus::default();
        for toks in r.tokens() {
            if toks.get(1) != Some(&Token::Atom("STATUS".into())) {
                continue;
            }
            let Some(Token::List(items)) = toks.last() else {
                continue;
            };
            for pair in items.chunks(2) {
                if let (Some(Token::Atom(k)), Some(v)) = (pair.first(), pair.get(1)) {
                    st.set(k, v);
                }
            }
        }
        Ok(st)
    }
    /// EXAMINE, returning the counters from its untagged responses (EXISTS, UIDVALIDITY,
    /// UIDNEXT, HIGHESTMODSEQ, MAILBOXID).
    pub fn examine_status(&mut self, mailbox: &str) -> io::Result<MailboxStatus> {
        let r = self.examine(mailbox)?;
        Ok(MailboxStatus::from_select(&r))
    }
    /// `LIST reference pattern`: the mailbox names (as the server spells them).
    pub fn list(&mut self, reference: &str, pattern: &str) -> io::Result<Vec<String>> {
        let r = self.ok(&format!("LIST {} {}", quote(reference), quote(pattern)))?;
        Ok(r.tokens()
            .into_iter()
            .filter(|t| t.get(1) == Some(&Token::Atom("LIST".into())))
            .filter_map(|t| t.get(4).and_then(Token::text))
            .collect())
    }
    pub fn logout(mut self) -> io::Result<()> {
        self.command("LOGOUT").map(|_| ())
    }
}

/// A piece of an IMAP command.
pub enum Part<'a> {
    /// Sent as is.
    Text(&'a str),
    /// Sent as a LITERAL+ literal (`{n+}` CRLF bytes).
    Literal(&'a [u8]),
}

fn check(r: ImapReply, what: &str) -> io::Result<ImapReply> {
    if r.is_ok() {
        Ok(r)
    } else {
        Err(err(format!(
            "IMAP `{what}` failed: {} {}",
            r.status, r.text
        )))
    }
}

/// `Some(n)` if the line ends with a literal announcement `{n}` CRLF.
fn literal_len(line: &[u8]) -> Option<usize> {
    let body = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let body = body.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.parse().ok()
}

// ------------------------------------------------------------------------------------------
// LMTP

/// One LMTP reply (multi-line replies joined with `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmtpReply {
    pub code: u16,
    pub text: String,
}

impl LmtpReply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// A blocking LMTP client that understands one reply per accepted recipient after DATA.
pub struct LmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LmtpClient {
    pub fn connect(port: u16) -> io::Result<Self> {
        let (reader, writer) = connect_stream(port)?;
        let mut c = LmtpClient { reader, writer };
        let greeting = c.read_reply()?;
        if greeting.code != 220 {
            return Err(err(format!("unexpected LMTP greeting {greeting:?}")));
        }
        let lhlo = c.command("LHLO localhost")?;
        if lhlo.code != 250 {
            return Err(err(format!("LHLO refused: {lhlo:?}")));
        }
        Ok(c)
    }

    fn read_reply(&mut self) -> io::Result<LmtpReply> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(err("LMTP server closed the connection"));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| err(format!("bad LMTP reply line {line:?}")))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(LmtpReply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<LmtpReply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Delivers `message` (CRLF line ends expected; dot-stuffing is done here) to each
    /// recipient. Returns one reply per recipient in order: the RCPT reply if it was refused,
    /// else that recipient's reply after DATA.
    pub fn deliver(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
    ) -> io::Result<Vec<LmtpReply>> {
        let mail = self.command(&format!("MAIL FROM:<{from}>"))?;
        if !mail.is_positive() {
            return Err(err(format!("MAIL FROM refused: {mail:?}")));
        }
        let mut replies: Vec<Option<LmtpReply>> = Vec::new();
        for r in rcpts {
            let reply = self.command(&format!("RCPT TO:<{r}>"))?;
            replies.push(if reply.is_positive() {
                None
            } else {
                Some(reply)
            });
        }
        if replies.iter().all(Option::is_some) {
            self.command("RSET")?;
            return Ok(replies.into_iter().flatten().collect());
        }
        let data = self.command("DATA")?;
        if data.code != 354 {
            return Err(err(format!("DATA refused: {data:?}")));
        }
        self.writer.write_all(&dot_stuff(message))?;
        for slot in replies.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(self.read_reply()?);
        }
        Ok(replies.into_iter().flatten().collect())
    }

    pub fn quit(mut self) -> io::Result<()> {
        self.command("QUIT").map(|_| ())
    }
}

/// The DATA payload: lines starting with `.` get another `.`, then CRLF `.` CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Converts LF line ends to CRLF (leaving existing CRLF alone).
pub fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 16);
    let mut prev = 0u8;
    for &b in text {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Inode numbers of `paths` (to check single-instance-store hard links).
pub fn inode(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Cyrus serves every mailbox as `expected/imap.json` recorded.
pub fn assert_imap_as_recorded(cy: &CyrusInstance, src: &Path, what: &str) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("expected/imap.json")).unwrap()).unwrap();
    for mb in expected["mailboxes"].as_array().unwrap() {
        let (login, view) = (
            mb["login"].as_str().unwrap(),
            mb["examined_as"].as_str().unwrap(),
        );
        let Some(want) = mb["messages"].as_array() else {
            continue;
        };
        let mut c = cy.imap_login(login).unwrap();
        let st = c.examine_status(view).unwrap();
        let ctx = format!("{what} {view}");
        assert_eq!(Some(st.uidvalidity), mb["uidvalidity"].as_u64(), "{ctx}");
        assert_eq!(Some(st.uidnext), mb["uidnext"].as_u64(), "{ctx}");
        assert_eq!(
            Some(st.highestmodseq),
            mb["highestmodseq"].as_u64(),
            "{ctx}"
        );
        assert_eq!(
            mb["mailboxid"].as_str(),
            Some(st.mailboxid.as_str()),
            "{ctx}"
        );
        let got = c.fetch_summary().unwrap();
        assert_eq!(got.len(), want.len(), "{ctx}");
        for (g, w) in got.iter().zip(want) {
            let flags: Vec<&str> = g
                .flags
                .iter()
                .map(String::as_str)
                .filter(|f| *f != "\\Recent")
                .collect();
            let want_flags: Vec<&str> = w["flags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f.as_str())
                .collect();
            assert_eq!(Some(g.uid), w["uid"].as_u64(), "{ctx}");
            assert_eq!(flags, want_flags, "{ctx} uid {}", g.uid);
            assert_eq!(Some(g.size), w["size"].as_u64(), "{ctx} uid {}", g.uid);
            assert_eq!(w["internaldate"].as_str(), Some(g.internaldate.as_str()));
        }
        c.logout().unwrap();
    }
}
