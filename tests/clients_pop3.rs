//! Real POP3 clients against a POP3 server over a Cyrus spool: fetchmail, mpop, getmail6, curl
//! and Python's poplib, in clear text, over STLS and over POP3S (certificates verified against a
//! self-signed CA). Every client must fetch exactly the messages Cyrus's imapd serves (same
//! body, every header field kept); with keep-on-server a second run fetches nothing (UIDL state:
//! fetchmail's idfile, mpop's uidls file, getmail's oldmail file); without it the messages are
//! gone from the server afterwards.
//!
//! Each check is a function of a [`Pop3Target`] inside a [`Pop3Env`]: the `*_cyrus` tests use
//! Cyrus's own pop3d; `real_clients_against_cyrkit_pop3` runs the same functions against
//! `cyrkit serve --pop3/--pop3s` with a `--passwd-file` holding the same passwords.
//! Requires root, Cyrus and the clients (`scripts/test` installs them).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::clients::{
    describe, header_value, inbox_messages, lf, mbox_messages, passwd_line, require_tools,
    run_with_timeout, self_signed, Pop3Target, Pop3Tls, TlsFiles,
};
use support::cyrus::{crlf, free_port, CyrusInstance, CyrusOptions};
use support::serve::CyrkitServe;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// A normal getmail run takes 1-3 s; see `getmail_run` for why it gets a second chance.
const GETMAIL_TIMEOUT: Duration = Duration::from_secs(30);
const MODES: [Pop3Tls; 3] = [Pop3Tls::None, Pop3Tls::Stls, Pop3Tls::Implicit];
/// Unprivileged user for clients that refuse to deliver as root (getmail).
const UNPRIVILEGED: &str = "nobody";

/// The password each test user has (Cyrus's test set-up accepts any; cyrkit's password file
/// holds exactly this).
fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// One user per TLS mode in `modes`, so that clients never share a maildrop (pop3d locks it).
fn users(client: &str, modes: &[Pop3Tls]) -> Vec<(String, Pop3Tls)> {
    modes
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{client}{i}"), *m))
        .collect()
}

/// The messages every user starts with: one with a line starting with a dot and one starting
/// with `From ` (dot-stuffing and mbox quoting), a multi-line header, and a 100 KB one.
fn fixture_messages(user: &str) -> Vec<Vec<u8>> {
    let big: String = (0..1500)
        .map(|i| format!("line {i:05} of a long message body, enough to span many reads\n"))
        .collect();
    let bodies = [
        "first message\n.a line starting with a dot\n..two dots\nFrom the desk of nobody\nend\n"
            .to_string(),
        "second message\n>From quoted already\n".to_string(),
        big,
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            crlf(
                format!(
                    "From: Sender <sender@example.test>\nTo: {user}@example.test\n\
                     Subject: message {i} for {user}\n\tfolded subject line\n\
                     Message-ID: <{user}.{i}@clients.cyrkit.test>\n\
                     Date: Thu, 26 Nov 2026 12:00:0{i} +0000\n\n{body}"
                )
                .as_bytes(),
            )
        })
        .collect()
}

/// A POP3 server over a Cyrus spool whose users each hold [`fixture_messages`].
struct Pop3Env {
    // Field order matters: cyrkit (if any) stops before Cyrus, both before the directory goes.
    cyrkit: Option<CyrkitServe>,
    cy: CyrusInstance,
    tls: TlsFiles,
    pop3_port: u16,
    pop3s_port: u16,
    work: tempfile::TempDir,
}

impl Pop3Env {
    /// Cyrus's pop3d on its plain port (STLS offered) and a POP3S port. SASL mechanisms are
    /// limited to PLAIN and LOGIN, as a site checking passwords with saslauthd has them.
    fn cyrus(users: &[(String, Pop3Tls)]) -> Self {
        let work = tempfile::Builder::new()
            .prefix("cyrkit-pop3-clients-")
            .tempdir()
            .unwrap();
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let tls = self_signed(&work.path().join("tls")).unwrap();
        let opts = CyrusOptions::default()
            .with_tls(&tls.cert, &tls.key)
            .with("sasl_mech_list", "PLAIN LOGIN");
        let cy = CyrusInstance::start(&opts).expect("start Cyrus");
        let mut admin = cy.imap_admin().unwrap();
        let mut lmtp = cy.lmtp().unwrap();
        for (user, _) in users {
            admin.create(&format!("user.{user}")).unwrap();
            for m in fixture_messages(user) {
                let r = lmtp.deliver("sender@example.test", &[user], &m).unwrap();
                assert!(r[0].is_positive(), "{r:?}");
            }
        }
        admin.logout().unwrap();
        lmtp.quit().unwrap();
        Pop3Env {
            pop3_port: cy.pop3_port,
            pop3s_port: cy.pop3s_port,
            cyrkit: None,
            cy,
            tls,
            work,
        }
    }

    /// `cyrkit serve --pop3 --pop3s` over the same kind of spool (Cyrus keeps running for IMAP
    /// and delivery), checking the passwords of `users` in a SHA512-CRYPT password file.
    fn cyrkit(users: &[(String, Pop3Tls)]) -> Self {
        let mut env = Self::cyrus(users);
        let passwd = env.work.path().join("passwd");
        let lines: Vec<String> = users
            .iter()
            .map(|(u, _)| passwd_line(u, &password(u)).unwrap())
            .collect();
        fs::write(&passwd, lines.join("\n") + "\n").unwrap();
        support::cyrus::chown_cyrus(&passwd).unwrap();
        let (port, pop3s) = (free_port().unwrap(), free_port().unwrap());
        env.cyrkit = Some(
            CyrkitServe::pop3(&env.cy, port, Some(pop3s), &passwd)
                .expect("start cyrkit serve --pop3"),
        );
        (env.pop3_port, env.pop3s_port) = (port, pop3s);
        env
    }

    fn target(&self, user: &str, tls: Pop3Tls) -> Pop3Target {
        Pop3Target {
            host: "127.0.0.1".into(),
            port: if tls == Pop3Tls::Implicit {
                self.pop3s_port
            } else {
                self.pop3_port
            },
            tls,
            user: user.into(),
            password: password(user),
            ca_file: Some(self.tls.cert.clone()),
        }
    }

    /// The messages in `user`'s INBOX as Cyrus's imapd serves them (UID order, CRLF).
    fn reference(&self, user: &str) -> Vec<Vec<u8>> {
        inbox_messages(&self.cy, user).unwrap()
    }

    /// How many messages `user`'s INBOX holds now.
    fn server_count(&self, user: &str) -> usize {
        self.reference(user).len()
    }

    /// A fresh empty working directory (world-readable) for one client run.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.work.path().join(name);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        d
    }
}

/// Header fields of a message (LF line ends), each unfolded onto one line.
fn header_fields(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\n\n").next().unwrap_or("");
    let mut fields: Vec<String> = Vec::new();
    for line in head.lines() {
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => fields.push(line.trim_end().to_string()),
        }
    }
    fields
}

fn body(message: &[u8]) -> &[u8] {
    message
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(&[][..], |i| &message[i + 2..])
}

/// `got` (as a client stored them, any line ends, extra header fields allowed) are the
/// `reference` messages: same number, matched by Message-ID, identical bodies, and every header
/// field of the reference present.
fn assert_same_messages(got: &[Vec<u8>], reference: &[Vec<u8>], ctx: &str) {
    assert_eq!(got.len(), reference.len(), "{ctx}: message count");
    for r in reference {
        let r = lf(r);
        let id = header_value(&r, "Message-ID").expect("reference has a Message-ID");
        let matching: Vec<Vec<u8>> = got
            .iter()
            .map(|g| lf(g))
            .filter(|g| header_value(g, "Message-ID").as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(matching.len(), 1, "{ctx}: copies of {id}");
        let g = &matching[0];
        assert!(
            body(g) == body(&r),
            "{ctx}: body of {id} differs:\n--- got ---\n{}\n--- want ---\n{}",
            String::from_utf8_lossy(body(g)),
            String::from_utf8_lossy(body(&r))
        );
        let have = header_fields(g);
        for f in header_fields(&r) {
            assert!(have.contains(&f), "{ctx}: {id} lost header field {f:?}");
        }
    }
}

/// Byte-for-byte equality with the reference, in order (for clients that hand over RETR's
/// bytes unchanged: curl and poplib).
fn assert_identical(got: &[Vec<u8>], reference: &[Vec<u8>], ctx: &str) {
    assert_eq!(got.len(), reference.len(), "{ctx}: message count");
    for (i, (g, r)) in got.iter().zip(reference).enumerate() {
        assert!(
            g == r,
            "{ctx}: message {} differs ({} bytes, want {})",
            i + 1,
            g.len(),
            r.len()
        );
    }
}

/// Every regular file in `dir`, read and then removed (so the next run sees only new ones).
fn take_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let bytes = fs::read(p).unwrap();
            fs::remove_file(p).unwrap();
            bytes
        })
        .collect()
}

/// The messages in an mbox file, which is then truncated.
fn take_mbox(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap_or_default();
    fs::write(path, b"").unwrap();
    mbox_messages(&bytes)
}

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, CLIENT_TIMEOUT).unwrap()
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

// ------------------------------------------------------------------------------------------
// fetchmail

/// One fetchmail run (MDA writing one file per message into `dir/new`, UIDs in `idfile`).
/// Returns the run and the messages it delivered.
fn fetchmail_run(t: &Pop3Target, dir: &Path, idfile: &str, keep: bool) -> (Output, Vec<Vec<u8>>) {
    let new = dir.join("new");
    fs::create_dir_all(&new).unwrap();
    let ca = t.ca_file.as_ref().map(|p| p.display().to_string());
    let tls = match (t.tls, ca) {
        (Pop3Tls::None, _) => "sslproto ''".to_string(),
        // A TLS protocol without `ssl` makes fetchmail require STLS.
        (Pop3Tls::Stls, Some(ca)) => {
            format!("sslproto 'tls1.2+' sslcertck sslcertfile '{ca}' sslcommonname localhost")
        }
        (Pop3Tls::Implicit, Some(ca)) => {
            format!("ssl sslcertck sslcertfile '{ca}' sslcommonname localhost")
        }
        (_, None) => panic!("TLS needs a CA file"),
    };
    let rc = dir.join("fetchmailrc");
    write_private(
        &rc,
        &format!(
            "set no syslog\n\
             poll {host} service {port} protocol pop3 uidl auth password\n  \
             user \"{user}\" there with password \"{pw}\" is \"root\" here\n  \
             {keep} {tls}\n  mda \"cat > {new}/msg-$$.eml\"\n",
            host = t.host,
            port = t.port,
            user = t.user,
            pw = t.password,
            keep = if keep { "keep" } else { "no keep" },
            new = new.display(),
        ),
    );
    let out = run(Command::new("fetchmail")
        .args(["-v", "-N", "-f"])
        .arg(&rc)
        .arg("-i")
        .arg(dir.join(idfile))
        .env("HOME", dir));
    (out, take_files(&new))
}

/// fetchmail with `keep` fetches everything, a second run nothing (exit 1: no mail), then
/// without `keep` (fresh UID list) everything again and the server is empty.
fn fetchmail_fetches(env: &Pop3Env, t: &Pop3Target) {
    let ctx = format!("fetchmail {}", t.label());
    let reference = env.reference(&t.user);
    let dir = env.dir(&format!("fetchmail-{}", t.user));
    let (out, got) = fetchmail_run(t, &dir, "ids", true);
    assert_eq!(out.status.code(), Some(0), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    if t.tls == Pop3Tls::Stls {
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("> STLS"), "{ctx}: STLS not used:\n{log}");
    }
    let (out, got) = fetchmail_run(t, &dir, "ids", true);
    assert_eq!(out.status.code(), Some(1), "{ctx}: {}", describe(&out));
    assert!(got.is_empty(), "{ctx}: second run fetched {}", got.len());
    assert_eq!(env.server_count(&t.user), reference.len(), "{ctx}: kept");
    let (out, got) = fetchmail_run(t, &dir, "ids-nokeep", false);
    assert_eq!(out.status.code(), Some(0), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    assert_eq!(env.server_count(&t.user), 0, "{ctx}: not deleted");
}

// ------------------------------------------------------------------------------------------
// mpop

/// One mpop run delivering to `dir/mbox`, UIDs in `uidls`.
fn mpop_run(t: &Pop3Target, dir: &Path, uidls: &str, keep: bool) -> (Output, Vec<Vec<u8>>) {
    let mbox = dir.join("mbox");
    let ca = t.ca_file.as_ref().map(|p| p.display().to_string());
    let tls = match (t.tls, ca) {
        (Pop3Tls::None, _) => "tls off\n".to_string(),
        (Pop3Tls::Stls, Some(ca)) => format!("tls on\ntls_starttls on\ntls_trust_file {ca}\n"),
        (Pop3Tls::Implicit, Some(ca)) => {
            format!("tls on\ntls_starttls off\ntls_trust_file {ca}\n")
        }
        (_, None) => panic!("TLS needs a CA file"),
    };
    let rc = dir.join("mpoprc");
    write_private(
        &rc,
        &format!(
            "account {user}\nhost {host}\nport {port}\nuser {user}\npassword {pw}\n\
             auth plain\nkeep {keep}\nuidls_file {uidls}\ndelivery mbox {mbox}\n{tls}",
            host = t.host,
            port = t.port,
            user = t.user,
            pw = t.password,
            keep = if keep { "on" } else { "off" },
            uidls = dir.join(uidls).display(),
            mbox = mbox.display(),
        ),
    );
    let out = run(Command::new("mpop")
        .arg("-C")
        .arg(&rc)
        .args(["--quiet", &t.user])
        .env("HOME", dir));
    (out, take_mbox(&mbox))
}

/// mpop (AUTH PLAIN) with `keep on` fetches everything, a second run nothing, then with
/// `keep off` (fresh uidls file) everything again and the server is empty.
fn mpop_fetches(env: &Pop3Env, t: &Pop3Target) {
    let ctx = format!("mpop {}", t.label());
    let reference = env.reference(&t.user);
    let dir = env.dir(&format!("mpop-{}", t.user));
    let (out, got) = mpop_run(t, &dir, "uidls", true);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    let (out, got) = mpop_run(t, &dir, "uidls", true);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert!(got.is_empty(), "{ctx}: second run fetched {}", got.len());
    assert_eq!(env.server_count(&t.user), reference.len(), "{ctx}: kept");
    let (out, got) = mpop_run(t, &dir, "uidls-nokeep", false);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    assert_eq!(env.server_count(&t.user), 0, "{ctx}: not deleted");
}

// ------------------------------------------------------------------------------------------
// getmail6

/// One getmail run (as an unprivileged user: getmail refuses to deliver as root) into an
/// mboxrd file; its oldmail file lives in `getmaildir`.
fn getmail_run(t: &Pop3Target, getmaildir: &Path, delete: bool) -> (Output, Vec<Vec<u8>>) {
    let mbox = getmaildir.join("mbox");
    if !mbox.exists() {
        fs::write(&mbox, b"").unwrap();
    }
    let nobody = nix::unistd::User::from_name(UNPRIVILEGED)
        .unwrap()
        .expect("user nobody");
    for p in [getmaildir, mbox.as_path()] {
        std::os::unix::fs::chown(p, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    }
    let retriever = match (t.tls, &t.ca_file) {
        (Pop3Tls::None, _) => "type = SimplePOP3Retriever\n".to_string(),
        (Pop3Tls::Implicit, Some(ca)) => format!(
            "type = SimplePOP3SSLRetriever\nca_certs = {}\n",
            ca.display()
        ),
        (mode, _) => panic!("getmail6 has no POP3 {mode:?} retriever"),
    };
    let rc = getmaildir.join("getmailrc");
    fs::write(
        &rc,
        format!(
            "[retriever]\n{retriever}server = {host}\nport = {port}\nusername = {user}\n\
             password = {pw}\n\n[destination]\ntype = Mboxrd\npath = {mbox}\n\n\
             [options]\nread_all = false\ndelete = {delete}\nreceived = false\ndelivered_to = false\n",
            host = t.host,
            port = t.port,
            user = t.user,
            pw = t.password,
            mbox = mbox.display(),
        ),
    )
    .unwrap();
    // getmail6 6.18 sometimes never returns from delivering a message into the mbox: it
    // forks a child per delivery, the child exits (a zombie) and the parent sits in a read
    // while its POP3 server (Cyrus's pop3d as well as cyrkit, seen with both) waits for the
    // next command with nothing queued on the socket. Such a run never sent QUIT, so the
    // server changed nothing: it is killed and run once more from the same state.
    for attempt in 0..2 {
        let r = run_with_timeout(
            Command::new("runuser")
                .args(["-u", UNPRIVILEGED, "--", "getmail", "--getmaildir"])
                .arg(getmaildir)
                .arg("--rcfile")
                .arg(&rc),
            GETMAIL_TIMEOUT,
        );
        match r {
            Ok(out) => return (out, take_mbox(&mbox)),
            Err(e) if attempt == 0 => {
                eprintln!("getmail hung ({e}); killing it and running it again");
                let _ = Command::new("pkill")
                    .arg("-KILL")
                    .arg("-f")
                    .arg(getmaildir.as_os_str())
                    .status();
                let _ = take_mbox(&mbox);
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// getmail with `delete = false` fetches everything, a second run nothing (its oldmail file),
/// then with `delete = true` (fresh getmaildir) everything again and the server is empty.
/// getmail6 speaks POP3 and POP3S, not STLS.
fn getmail_fetches(env: &Pop3Env, t: &Pop3Target) {
    let ctx = format!("getmail {}", t.label());
    let reference = env.reference(&t.user);
    let dir = env.dir(&format!("getmail-{}", t.user));
    let (out, got) = getmail_run(t, &dir, false);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    let oldmail = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("oldmail-"));
    assert!(oldmail, "{ctx}: no oldmail file");
    let (out, got) = getmail_run(t, &dir, false);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert!(got.is_empty(), "{ctx}: second run fetched {}", got.len());
    assert_eq!(env.server_count(&t.user), reference.len(), "{ctx}: kept");
    let dir = env.dir(&format!("getmail-{}-delete", t.user));
    let (out, got) = getmail_run(t, &dir, true);
    assert!(out.status.success(), "{ctx}: {}", describe(&out));
    assert_same_messages(&got, &reference, &ctx);
    assert_eq!(env.server_count(&t.user), 0, "{ctx}: not deleted");
}

// ------------------------------------------------------------------------------------------
// curl

/// curl on `t`'s mailbox: `path` after the host (`""` lists, `"1"` retrieves), extra args.
fn curl(t: &Pop3Target, path: &str, extra: &[&str]) -> Output {
    let scheme = if t.tls == Pop3Tls::Implicit {
        "pop3s"
    } else {
        "pop3"
    };
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "20"])
        .arg("--user")
        .arg(format!("{}:{}", t.user, t.password))
        .arg(format!("{scheme}://{}:{}/{path}", t.host, t.port))
        .args(extra);
    if t.tls != Pop3Tls::None {
        let ca = t.ca_file.as_ref().expect("TLS needs a CA file");
        cmd.arg("--cacert").arg(ca);
    }
    if t.tls == Pop3Tls::Stls {
        cmd.arg("--ssl-reqd");
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "curl {} /{path} {extra:?}: {}",
        t.label(),
        describe(&out)
    );
    out
}

/// `n size` lines of a LIST (or `n uid` of UIDL) reply as curl prints it.
fn listing(out: &Output) -> Vec<(usize, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, v) = l.trim_end().split_once(' ')?;
            Some((n.parse().ok()?, v.to_string()))
        })
        .collect()
}

/// curl: LIST sizes are the stored sizes, UIDL gives distinct ids that do not change, RETR of
/// each message returns the stored bytes exactly, and `DELE` removes one message.
fn curl_fetches(env: &Pop3Env, t: &Pop3Target) {
    let ctx = format!("curl {}", t.label());
    let reference = env.reference(&t.user);
    let list = listing(&curl(t, "", &[]));
    let sizes: Vec<(usize, String)> = reference
        .iter()
        .enumerate()
        .map(|(i, m)| (i + 1, m.len().to_string()))
        .collect();
    assert_eq!(list, sizes, "{ctx}: LIST");
    let uidl = listing(&curl(t, "", &["--request", "UIDL"]));
    assert_eq!(uidl.len(), reference.len(), "{ctx}: UIDL {uidl:?}");
    let mut ids: Vec<&String> = uidl.iter().map(|(_, u)| u).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), reference.len(), "{ctx}: UIDs not distinct");
    let got: Vec<Vec<u8>> = (1..=reference.len())
        .map(|n| curl(t, &n.to_string(), &[]).stdout)
        .collect();
    assert_identical(&got, &reference, &ctx);
    assert_eq!(
        listing(&curl(t, "", &["--request", "UIDL"])),
        uidl,
        "{ctx}: UIDL changed between sessions"
    );
    curl(t, "1", &["--request", "DELE", "--head"]);
    assert_eq!(
        env.server_count(&t.user),
        reference.len() - 1,
        "{ctx}: DELE"
    );
    let after = listing(&curl(t, "", &["--request", "UIDL"]));
    assert_eq!(
        after,
        uidl[1..]
            .iter()
            .enumerate()
            .map(|(i, (_, u))| (i + 1, u.clone()))
            .collect::<Vec<_>>(),
        "{ctx}: UIDL after DELE"
    );
}

// ------------------------------------------------------------------------------------------
// Python poplib

/// `python3 -c POPLIB host port tls ca user password action outdir [seenfile]`: `new` retrieves
/// the messages whose UIDL is not in seenfile (and adds them), `all-delete` retrieves and
/// deletes every message. Each retrieved message goes to `outdir/NNN.eml` as RETR's bytes
/// (lines joined with CRLF). Prints the UIDL listing.
const POPLIB: &str = r#"
import os, poplib, ssl, sys
host, port, tls, ca, user, pw, action, outdir = sys.argv[1:9]
seenfile = sys.argv[9] if len(sys.argv) > 9 else None
ctx = ssl.create_default_context(cafile=ca) if tls != "None" else None
if tls == "Implicit":
    c = poplib.POP3_SSL(host, int(port), context=ctx, timeout=20)
else:
    c = poplib.POP3(host, int(port), timeout=20)
    if tls == "Stls":
        c.stls(context=ctx)
c.user(user)
c.pass_(pw)
count, size = c.stat()
uidl = {}
for line in c.uidl()[1]:
    n, u = line.decode().split(" ", 1)
    uidl[int(n)] = u
print("stat", count, size)
for n in sorted(uidl):
    print("uidl", n, uidl[n])
seen = set()
if seenfile and os.path.exists(seenfile):
    seen = set(open(seenfile).read().split())
for n in sorted(uidl):
    if action == "new" and uidl[n] in seen:
        continue
    lines = c.retr(n)[1]
    with open(os.path.join(outdir, "%03d.eml" % n), "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")
    if action == "new":
        seen.add(uidl[n])
    elif action == "all-delete":
        c.dele(n)
if seenfile:
    with open(seenfile, "w") as f:
        f.write("\n".join(sorted(seen)) + "\n")
c.quit()
"#;

fn poplib_run(t: &Pop3Target, dir: &Path, action: &str) -> (Output, Vec<Vec<u8>>) {
    let out_dir = dir.join("new");
    fs::create_dir_all(&out_dir).unwrap();
    let ca = t
        .ca_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let out = run(Command::new("python3").args([
        "-c",
        POPLIB,
        &t.host,
        &t.port.to_string(),
        &format!("{:?}", t.tls),
        &ca,
        &t.user,
        &t.password,
        action,
        &out_dir.display().to_string(),
        &dir.join("seen").display().to_string(),
    ]));
    assert!(
        out.status.success(),
        "poplib {}: {}",
        t.label(),
        describe(&out)
    );
    (out, take_files(&out_dir))
}

/// poplib: RETR returns the stored bytes; fetching only unseen UIDLs a second time fetches
/// nothing; retrieving with DELE empties the server.
fn poplib_fetches(env: &Pop3Env, t: &Pop3Target) {
    let ctx = format!("poplib {}", t.label());
    let reference = env.reference(&t.user);
    let dir = env.dir(&format!("poplib-{}", t.user));
    let (out, got) = poplib_run(t, &dir, "new");
    let total: usize = reference.iter().map(Vec::len).sum();
    let stat = format!("stat {} {total}", reference.len());
    assert!(
        String::from_utf8_lossy(&out.stdout).lines().next() == Some(stat.as_str()),
        "{ctx}: want {stat}: {}",
        describe(&out)
    );
    assert_identical(&got, &reference, &ctx);
    let (_, got) = poplib_run(t, &dir, "new");
    assert!(got.is_empty(), "{ctx}: second run fetched {}", got.len());
    let (_, got) = poplib_run(t, &dir, "all-delete");
    assert_identical(&got, &reference, &ctx);
    assert_eq!(env.server_count(&t.user), 0, "{ctx}: not deleted");
}

// ------------------------------------------------------------------------------------------
// Against Cyrus's pop3d.

/// Runs `check` for each of `client`'s users (one per TLS mode in `modes`) against Cyrus.
fn against_cyrus(client: &str, modes: &[Pop3Tls], check: fn(&Pop3Env, &Pop3Target)) {
    let users = users(client, modes);
    let env = Pop3Env::cyrus(&users);
    for (user, mode) in &users {
        check(&env, &env.target(user, *mode));
    }
}

#[test]
fn fetchmail_cyrus() {
    if require_tools(&["fetchmail", "openssl"]) {
        against_cyrus("fetchmail", &MODES, fetchmail_fetches);
    }
}

#[test]
fn mpop_cyrus() {
    if require_tools(&["mpop", "openssl"]) {
        against_cyrus("mpop", &MODES, mpop_fetches);
    }
}

#[test]
fn getmail_cyrus() {
    if require_tools(&["getmail", "runuser", "openssl"]) {
        against_cyrus(
            "getmail",
            &[Pop3Tls::None, Pop3Tls::Implicit],
            getmail_fetches,
        );
    }
}

#[test]
fn curl_cyrus() {
    if require_tools(&["curl", "openssl"]) {
        against_cyrus("curl", &MODES, curl_fetches);
    }
}

#[test]
fn poplib_cyrus() {
    if require_tools(&["python3", "openssl"]) {
        against_cyrus("poplib", &MODES, poplib_fetches);
    }
}

// ------------------------------------------------------------------------------------------
// Against `cyrkit serve --pop3` (same checks, same clients).

#[test]
fn real_clients_against_cyrkit_pop3() {
    let tools = [
        "fetchmail",
        "mpop",
        "getmail",
        "runuser",
        "curl",
        "python3",
        "openssl",
    ];
    if !require_tools(&tools) {
        return;
    }
    type Check = fn(&Pop3Env, &Pop3Target);
    let clients: [(&str, Check, &[Pop3Tls]); 5] = [
        ("fetchmail", fetchmail_fetches, &MODES),
        ("mpop", mpop_fetches, &MODES),
        (
            "getmail",
            getmail_fetches,
            &[Pop3Tls::None, Pop3Tls::Implicit],
        ),
        ("curl", curl_fetches, &MODES),
        ("poplib", poplib_fetches, &MODES),
    ];
    let all_users: Vec<(String, Pop3Tls)> = clients
        .iter()
        .flat_map(|(name, _, modes)| users(name, modes))
        .collect();
    let mut env = Pop3Env::cyrkit(&all_users);
    for (name, check, modes) in clients {
        for (user, mode) in users(name, modes) {
            check(&env, &env.target(&user, mode));
        }
    }
    env.cyrkit
        .as_mut()
        .expect("cyrkit runs")
        .assert_clean_stop();
}

#[test]
fn mbox_split_unquotes_and_drops_separators() {
    let mbox = b"From a@b Thu Jan  1 00:00:00 2020\nSubject: one\n\n>From here\n>>From there\n\n\
                 From c@d Thu Jan  1 00:00:00 2020\r\nSubject: two\r\n\tfolded\r\n\r\nbody\r\n";
    let msgs = mbox_messages(mbox);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0], b"Subject: one\n\nFrom here\n>From there\n");
    assert_eq!(msgs[1], b"Subject: two\n\tfolded\n\nbody\n");
    assert_eq!(
        header_value(&msgs[1], "subject").as_deref(),
        Some("two folded")
    );
    assert_eq!(header_fields(&msgs[1]), ["Subject: two folded"]);
    assert_eq!(body(&msgs[1]), b"body\n");
}
