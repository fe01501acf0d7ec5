//! Session tests over [`MemChannel`] with an in-memory [`Mailstore`]: exact reply bytes
//! at every input chunking.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::address::{self, AddressConfig, Target};
use super::session::{self, Settings};
use super::store::{Delivered, DeliveryError, Mailstore, Rcpt, Staged};
use crate::format::header::Acl;
use crate::server::auth::{AuthError, Authenticator};
use crate::server::channel::{MemChannel, Peer};
use crate::spool::names::NameConfig;

struct Fake {
    dir: tempfile::TempDir,
    /// internal name → (ACL string, over quota)
    boxes: BTreeMap<String, (String, bool)>,
    /// (mailbox, file bytes)
    delivered: RefCell<Vec<(String, Vec<u8>)>>,
    fail: Option<DeliveryError>,
    /// Users with an active Sieve script.
    sieve: Vec<&'static str>,
}

impl Fake {
    fn new() -> Fake {
        let mut boxes = BTreeMap::new();
        for (n, acl, q) in [
            ("user.bob", "bob\tlrswipkxtecdan\t", false),
            ("user.bob.lists", "bob\tlrswipkxtecdan\tanyone\tp\t", false),
            ("user.bob.private", "bob\tlrswipkxtecdan\t", false),
            ("user.full", "full\tlrswipkxtecdan\t", true),
            ("shared.news", "anyone\tlp\t", false),
            ("shared.closed", "anyone\tl\t", false),
            ("shared.hidden", "", false),
        ] {
            boxes.insert(n.to_string(), (acl.to_string(), q));
        }
        Fake {
            dir: tempfile::tempdir().unwrap(),
            boxes,
            delivered: RefCell::new(Vec::new()),
            fail: None,
            sieve: Vec::new(),
        }
    }

    fn check(
        &self,
        name: &str,
        sender: &[u8],
        post: bool,
        ignorequota: bool,
    ) -> Result<(), DeliveryError> {
        let (acl, over) = self.boxes.get(name).ok_or(DeliveryError::Unknown)?;
        if post {
            let r = address::rights(&Acl::parse_cyrus_string(acl.as_bytes()), sender);
            if r & address::ACL_POST == 0 {
                return Err(if r & address::ACL_LOOKUP != 0 {
                    DeliveryError::PermissionDenied
                } else {
                    DeliveryError::Unknown
                });
            }
        }
        if *over && !ignorequota {
            return Err(DeliveryError::OverQuota);
        }
        Ok(())
    }
}

impl Mailstore for Fake {
    fn verify(&self, rcpt: &Rcpt, sender: &[u8], _size: u64) -> Result<(), DeliveryError> {
        match &rcpt.target {
            Target::User { inbox, .. } => {
                self.check(&inbox.to_string(), sender, false, rcpt.ignorequota)
            }
            Target::Shared { mailbox } => {
                self.check(&mailbox.to_string(), sender, true, rcpt.ignorequota)
            }
        }
    }

    fn active_sieve(&self, rcpt: &Rcpt) -> Option<PathBuf> {
        match &rcpt.target {
            Target::User { userid, .. } if self.sieve.iter().any(|u| u.as_bytes() == userid) => {
                Some(PathBuf::from("/sieve/script.bc"))
            }
            _ => None,
        }
    }

    fn stage_dir(&self, _rcpt: &Rcpt) -> Result<PathBuf, DeliveryError> {
        Ok(self.dir.path().to_path_buf())
    }

    fn deliver(
        &self,
        msg: &Staged<'_>,
        rcpts: &[Rcpt],
        sender: &[u8],
    ) -> Vec<Result<Delivered, DeliveryError>> {
        rcpts
            .iter()
            .map(|r| self.deliver_one(msg, r, sender))
            .collect()
    }
}

impl Fake {
    fn deliver_one(
        &self,
        msg: &Staged<'_>,
        rcpt: &Rcpt,
        sender: &[u8],
    ) -> Result<Delivered, DeliveryError> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let name = match &rcpt.target {
            Target::User { inbox, folder, .. } => match folder {
                Some(f)
                    if self
                        .check(&f.to_string(), sender, true, rcpt.ignorequota)
                        .is_ok() =>
                {
                    f.to_string()
                }
                _ => {
                    self.check(&inbox.to_string(), sender, false, rcpt.ignorequota)?;
                    inbox.to_string()
                }
            },
            Target::Shared { mailbox } => {
                self.check(&mailbox.to_string(), sender, true, rcpt.ignorequota)?;
                mailbox.to_string()
            }
        };
        let bytes = std::fs::read(msg.path).map_err(|e| DeliveryError::System(e.to_string()))?;
        assert_eq!(bytes.len() as u64, msg.size);
        let dup = self
            .delivered
            .borrow()
            .iter()
            .any(|(n, b)| *n == name && b == &bytes);
        self.delivered.borrow_mut().push((name.clone(), bytes));
        Ok(if dup {
            Delivered::Duplicate { mailbox: name }
        } else {
            Delivered::Appended {
                mailbox: name,
                uid: 1,
            }
        })
    }
}

struct Pw;

impl Authenticator for Pw {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
        Ok(matches!(
            (user, password),
            ("admin", b"secret") | ("bob", b"bobpw")
        ))
    }
    fn secret(&self, _user: &str) -> Option<Vec<u8>> {
        None
    }
}

fn settings() -> Settings {
    Settings {
        session_base: "mx.test".into(),
        servername: "mx.test".into(),
        serverinfo: false,
        max_message_size: i32::MAX as u64,
        over_quota_perm: false,
        strict_rfc2821: true,
        postmaster: "postmaster".into(),
        address: AddressConfig {
            names: NameConfig::default(),
            downcase: true,
            postuser: Vec::new(),
        },
        munge8bit: true,
        reject8bit: false,
        admins: vec!["admin".into()],
        allowplaintext: false,
        soft_noauth: true,
        shutdown_file: None,
        trust_loopback: false,
        catchall: None,
        failed_login_pause: std::time::Duration::ZERO,
        ignore_sieve: false,
    }
}

/// Replace the variable parts (session ids) so replies compare exactly.
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("SESSIONID=<") {
        out.push_str(&rest[..i + 11]);
        rest = &rest[i + 11..];
        let end = rest.find('>').unwrap();
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    // The stage size depends on the session id's length.
    if let Some(i) = out.find("Message size (") {
        let j = out[i..].find(')').unwrap() + i;
        out.replace_range(i + 14..j, "*");
    }
    out
}

struct Run {
    out: String,
    delivered: Vec<(String, Vec<u8>)>,
    busy: bool,
    stage_left: usize,
}

fn run_with(input: &[u8], chunk: usize, peer: Peer, tls: bool, s: &Settings, store: &Fake) -> Run {
    let mut ch = MemChannel::new(input, chunk).with_peer(peer);
    if tls {
        ch = ch.with_tls();
    }
    session::run(&mut ch, store, Some(&Pw), s);
    Run {
        out: normalize(&ch.output_str()),
        delivered: store.delivered.borrow().clone(),
        busy: ch.busy,
        stage_left: std::fs::read_dir(store.dir.path()).unwrap().count(),
    }
}

/// Run `input` at every chunk size and check they all give `want`; returns the last run.
fn script(input: &[u8], want: &str) -> Run {
    script_with(input, want, Peer::Unix, &settings(), Fake::new)
}

fn script_with(
    input: &[u8],
    want: &str,
    peer: Peer,
    s: &Settings,
    store: impl Fn() -> Fake,
) -> Run {
    let mut last = None;
    for chunk in [1, 2, 3, 7, 64] {
        let st = store();
        let r = run_with(input, chunk, peer.clone(), false, s, &st);
        assert_eq!(r.out, want, "chunk {chunk}");
        assert!(!r.busy, "transaction left open");
        assert_eq!(r.stage_left, 0, "stage file left behind");
        last = Some(r);
    }
    last.unwrap()
}

const GREETING: &str = "220 mx.test server ready\r\n";
const OK: &str = "250 2.1.5 Success SESSIONID=<*>\r\n";
const UNKNOWN: &str = "550-Mailbox unknown.  Either there is no mailbox associated with this\r\n\
550-name or you do not have authorization to see it.\r\n550 5.1.1 User unknown\r\n";

#[test]
fn lhlo_on_a_unix_socket() {
    let r = script(
        b"LHLO mta.example\r\nQUIT\r\n",
        &format!(
            "{GREETING}250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
             250-SIZE\r\n250-AUTH EXTERNAL\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n\
             221 2.0.0 bye\r\n"
        ),
    );
    assert!(r.delivered.is_empty());
}

#[test]
fn lhlo_on_tcp_with_tls_and_size() {
    let mut s = settings();
    s.max_message_size = 1000;
    let st = Fake::new();
    let peer = Peer::Tcp("192.0.2.1:4000".parse().unwrap());
    let r = run_with(b"LHLO x\r\nSTARTTLS\r\n", 7, peer, true, &s, &st);
    assert_eq!(
        r.out,
        format!(
            "{GREETING}250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
             250-SIZE 1000\r\n250-STARTTLS\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n\
             220 Begin TLS negotiation now\r\n"
        )
    );
}

#[test]
fn delivery_to_several_recipients_with_per_recipient_replies() {
    let input = b"LHLO mta\r\nMAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=100\r\n\
        RCPT TO:<bob@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\nRCPT TO:<Bob+lists@mx.test>\r\n\
        RCPT TO:<bob+private>\r\nRCPT TO:<+shared/news>\r\nRCPT TO:<+shared/closed>\r\n\
        RCPT TO:<+shared/hidden>\r\nRCPT TO:<full>\r\nRCPT TO:<full> IGNOREQUOTA\r\nDATA\r\n\
        Subject: hi\r\nMessage-ID: <m1@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n\
        ..dot\r\nbody\r\n.\r\nQUIT\r\n";
    let denied = "550-You do not have permission to post a message to this mailbox.\r\n\
        550-Please contact the owner of this mailbox in order to submit\r\n\
        550-your message, or postmaster if you believe you\r\n\
        550-received this message in error.\r\n550 5.7.1 Permission denied\r\n";
    let lhlo_end = "250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n";
    let want = format!(
        "{GREETING}250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
         250-SIZE\r\n250-AUTH EXTERNAL\r\n{lhlo_end}250 2.1.0 ok\r\n250 2.1.5 ok\r\n{UNKNOWN}\
         250 2.1.5 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n{denied}{UNKNOWN}\
         452 4.2.2 Over quota SESSIONID=<*>\r\n250 2.1.5 ok\r\n354 go ahead\r\n\
         {OK}{OK}{OK}{OK}{OK}221 2.0.0 bye\r\n"
    );
    let r = script(input, &want);
    let names: Vec<&str> = r.delivered.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "user.bob",
            "user.bob.lists",
            "user.bob",
            "shared.news",
            "user.full"
        ]
    );
    let msg = String::from_utf8(r.delivered[0].1.clone()).unwrap();
    assert!(msg.starts_with("Return-Path: <alice@example.org>\r\nReceived: from mta ([unix socket])\r\n\t by mx.test with LMTPA;\r\n\t "), "{msg}");
    assert!(msg.contains("\r\nX-Cyrus-Session-Id: mx.test-"));
    assert!(msg.ends_with("\r\nSubject: hi\r\nMessage-ID: <m1@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n.dot\r\nbody\r\n"), "{msg}");
}

#[test]
fn replies_for_protocol_errors() {
    let input = b"HELO x\r\nRCPT TO:<bob>\r\nDATA\r\nMAIL FROM:<a> SIZE=\r\nMAIL FROM:<b>\r\nRSET\r\n\
        MAIL FROM:a\r\nMAIL FROM:<a> FOO=1\r\nRSET\r\nMAIL FROM:<a> BODY=9\r\nRSET\r\nMAIL FROM:<a>\r\n\
        DATA\r\nRCPT TO:bob\r\nRCPT TO:<bob> NOTIFY=NEVER\r\nRCPT TO:<>\r\nVRFY bob\r\nNOOP\r\nSTARTTLS\r\n\
        AUTH PLAIN AGFkbWluAHNlY3JldA==\r\nAUTH FOO\r\nQUIT\r\n";
    let rset = "250 2.0.0 Ok SESSIONID=<*>\r\n";
    let want = format!(
        "{GREETING}500 5.5.2 Syntax error\r\n503 5.5.1 Need MAIL command\r\n503 5.5.1 No recipients\r\n\
         501 5.5.2 SIZE requires a value\r\n503 5.5.1 Nested MAIL command\r\n{rset}\
         501 5.5.4 Syntax error in parameters\r\n501 5.5.4 Unrecognized parameters\r\n{rset}\
         501 5.5.4 Unrecognized BODY type\r\n{rset}250 2.1.0 ok\r\n503 5.5.1 No recipients\r\n\
         501 5.5.4 Syntax error in parameters\r\n501 5.5.4 Unrecognized parameters\r\n{UNKNOWN}\
         252 2.3.3 try RCPT to attempt delivery\r\n250 2.0.0 ok\r\n500 5.5.2 Syntax error\r\n\
         504 Unrecognized authentication type.\r\n504 Unrecognized authentication type.\r\n\
         221 2.0.0 bye\r\n"
    );
    script(input, &want);
}

#[test]
fn tcp_clients_must_authenticate_as_an_admin() {
    let tcp = Peer::Tcp("192.0.2.1:4000".parse().unwrap());
    let mut s = settings();
    s.allowplaintext = true;
    let input = b"LHLO x\r\nMAIL FROM:<a>\r\nAUTH PLAIN AGJvYgBib2Jwdw==\r\nAUTH PLAIN AGFkbWluAHdyb25n\r\n\
        AUTH LOGIN\r\nYWRtaW4=\r\nc2VjcmV0\r\nAUTH PLAIN\r\nMAIL FROM:<a>\r\nRCPT TO:<bob>\r\nDATA\r\n\
        Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let want = format!(
        "{GREETING}250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-SIZE\r\n\
         250-AUTH PLAIN LOGIN\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n\
         430 Authentication required\r\n501 5.5.4 undefined error!\r\n501 5.5.4 authentication failure\r\n\
         334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 Authenticated!\r\n503 5.5.0 already authenticated\r\n\
         250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n{OK}221 2.0.0 bye\r\n"
    );
    let r = script_with(input, &want, tcp.clone(), &s, Fake::new);
    let msg = String::from_utf8(r.delivered[0].1.clone()).unwrap();
    assert!(
        msg.contains("Received: from x ([192.0.2.1])\r\n\t by mx.test with LMTPA;"),
        "{msg}"
    );
    // Without TLS and without allowplaintext, no password mechanism is offered at all.
    let want = format!(
        "{GREETING}504 Unrecognized authentication type.\r\n430 Authentication required\r\n221 2.0.0 bye\r\n"
    );
    script_with(
        b"AUTH PLAIN AGFkbWluAHNlY3JldA==\r\nMAIL FROM:<a>\r\nQUIT\r\n",
        &want,
        tcp.clone(),
        &settings(),
        Fake::new,
    );
    // A trusted loopback client is pre-authenticated.
    let mut s = settings();
    s.trust_loopback = true;
    let want = format!("{GREETING}250 2.1.0 ok\r\n221 2.0.0 bye\r\n");
    script_with(
        b"MAIL FROM:<a>\r\nQUIT\r\n",
        &want,
        Peer::Tcp("127.0.0.1:5".parse().unwrap()),
        &s,
        Fake::new,
    );
    script_with(
        b"MAIL FROM:<a>\r\nQUIT\r\n",
        &format!("{GREETING}430 Authentication required\r\n221 2.0.0 bye\r\n"),
        Peer::Tcp("127.0.0.1:5".parse().unwrap()),
        &settings(),
        Fake::new,
    );
}

fn one_message(body: &[u8]) -> Vec<u8> {
    let mut v =
        b"LHLO x\r\nMAIL FROM:<a>\r\nRCPT TO:<bob>\r\nRCPT TO:<+shared/news>\r\nDATA\r\n".to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(b"QUIT\r\n");
    v
}

fn lhlo_unix() -> String {
    format!(
        "{GREETING}250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-SIZE\r\n\
         250-AUTH EXTERNAL\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n"
    )
}

#[test]
fn smuggling_inputs_are_refused_and_never_delivered() {
    let head = format!(
        "{}250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n",
        lhlo_unix()
    );
    let nl = "554 5.6.0 Message contains bare newlines\r\n";
    for body in [
        &b"S: x\r\n\r\nhi\n.\nMAIL FROM:<evil>\r\n.\r\n"[..],
        b"S: x\r\n\r\nhi\r.\r\nMAIL FROM:<evil>\r\n.\r\n",
        b"S: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil>\r\n.\r\n",
        b"S: x\r\n\r\nhi\r\n.\n\r\n.\r\n",
        b"S: x\n\r\nhi\r\n.\r\n",
    ] {
        let r = script(
            &one_message(body),
            &format!("{head}{nl}{nl}221 2.0.0 bye\r\n"),
        );
        assert!(r.delivered.is_empty());
    }
    let nul = "554 5.6.0 Message contains NUL characters\r\n";
    script(
        &one_message(b"S: x\r\n\r\nh\0i\r\n.\r\n"),
        &format!("{head}{nul}{nul}221 2.0.0 bye\r\n"),
    );
    let bad = "554 5.6.0 Message contains invalid header\r\n";
    script(
        &one_message(b"From x\r\n\r\nhi\r\n.\r\n"),
        &format!("{head}{bad}{bad}221 2.0.0 bye\r\n"),
    );
}

#[test]
fn size_limit_while_streaming() {
    let mut s = settings();
    s.max_message_size = 200;
    let big = format!("S: x\r\n\r\n{}\r\n.\r\n", "y".repeat(300));
    let input = format!(
        "MAIL FROM:<a> SIZE=201\r\nMAIL FROM:<a>\r\nRCPT TO:<bob>\r\nDATA\r\n{big}RSET\r\nQUIT\r\n"
    );
    let r = script_with(
        input.as_bytes(),
        &format!(
            "{GREETING}552 5.2.3 Message SIZE exceeds fixed maximum message size (200)\r\n\
             503 5.5.1 Nested MAIL command\r\n250 2.1.5 ok\r\n354 go ahead\r\n\
             552 5.2.3 Message size (SIZE) exceeds fixed maximum message size (200)\r\n\
             250 2.0.0 Ok SESSIONID=<*>\r\n221 2.0.0 bye\r\n"
        )
        .replace("(SIZE)", "(*)"),
        Peer::Unix,
        &s,
        Fake::new,
    );
    let _ = r;
}

#[test]
fn bdat_chunks() {
    let input = b"LHLO x\r\nMAIL FROM:<a>\r\nRCPT TO:<bob>\r\nBDAT 14\r\nSubject: x\r\n\r\nBDAT 8 LAST\r\n.hi\r\n.\r\n\
        BDAT 3 LAST\r\nabcQUIT\r\n";
    let want = format!(
        "{}250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 14 octets received\r\n{OK}503 5.5.1 No recipients\r\n\
         221 2.0.0 bye\r\n",
        lhlo_unix()
    );
    let r = script(input, &want);
    let msg = String::from_utf8(r.delivered[0].1.clone()).unwrap();
    // BDAT data are raw: no dot-unstuffing, and a lone "." line is content.
    assert!(
        msg.contains("\r\nSubject: x\r\nMessage-ID: <cyrkit-lmtpd-"),
        "{msg}"
    );
    assert!(
        msg.ends_with(" +0000\r\n\r\n.hi\r\n.\r\n") || msg.ends_with("\r\n\r\n.hi\r\n.\r\n"),
        "{msg}"
    );
}

#[test]
fn pipelined_transaction_and_duplicates() {
    let msg = b"MAIL FROM:<a>\r\nRCPT TO:<bob>\r\nDATA\r\nMessage-ID: <same@x>\r\n\r\nx\r\n.\r\n";
    let mut input = msg.to_vec();
    input.extend_from_slice(msg);
    input.extend_from_slice(b"QUIT\r\n");
    let one = "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n250 2.1.5 Success SESSIONID=<*>\r\n";
    let r = script(&input, &format!("{GREETING}{one}{one}221 2.0.0 bye\r\n"));
    assert_eq!(r.delivered.len(), 2);
}

#[test]
fn delivery_failures_are_temporary() {
    let input = one_message(b"S: x\r\n\r\nhi\r\n.\r\n");
    let head = format!(
        "{}250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n",
        lhlo_unix()
    );
    let e = "451 4.3.0 System I/O error\r\n";
    script_with(
        &input,
        &format!("{head}{e}{e}221 2.0.0 bye\r\n"),
        Peer::Unix,
        &settings(),
        || {
            let mut f = Fake::new();
            f.fail = Some(DeliveryError::System("System I/O error".into()));
            f
        },
    );
}

#[test]
fn shutdown_file_and_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shutdown");
    std::fs::write(&f, "Maintenance until noon\nmore").unwrap();
    let mut s = settings();
    s.shutdown_file = Some(f);
    script_with(
        b"NOOP\r\nMAIL FROM:<a>\r\nNOOP\r\n",
        &format!("{GREETING}250 2.0.0 ok\r\n421 4.3.2 Maintenance until noon\r\n"),
        Peer::Unix,
        &s,
        Fake::new,
    );
    let long = format!("NOOP{}\r\nNOOP\r\n", " ".repeat(5000));
    script(
        long.as_bytes(),
        &format!("{GREETING}500 5.5.2 Syntax error\r\n250 2.0.0 ok\r\n"),
    );
}

#[test]
fn recipients_with_a_sieve_script_are_refused_unless_ignored() {
    let input = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob+lists>\r\nRCPT TO:<+shared/news>\r\n\
        DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n";
    let with_script = || {
        let mut f = Fake::new();
        f.sieve = vec!["bob"];
        f
    };
    let lhlo = "250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
        250-SIZE\r\n250-AUTH EXTERNAL\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n\
        250 2.1.0 ok\r\n";
    let refused = format!(
        "{GREETING}{lhlo}451 4.3.0 Recipient has a Sieve script this server cannot run\r\n\
         250 2.1.5 ok\r\n354 go ahead\r\n{OK}221 2.0.0 bye\r\n"
    );
    let r = script_with(input, &refused, Peer::Unix, &settings(), with_script);
    assert_eq!(r.delivered.len(), 1);
    assert_eq!(r.delivered[0].0, "shared.news");
    let mut s = settings();
    s.ignore_sieve = true;
    let accepted = format!(
        "{GREETING}{lhlo}250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n{OK}{OK}221 2.0.0 bye\r\n"
    );
    let r = script_with(input, &accepted, Peer::Unix, &s, with_script);
    let names: Vec<&str> = r.delivered.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, ["user.bob.lists", "shared.news"]);
}

#[test]
fn failed_recipients_fall_back_to_the_catchall_user() {
    let input = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<nobody>\r\nRCPT TO:<full>\r\n\
        RCPT TO:<bob>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n";
    let mut s = settings();
    s.catchall = Some(b"bob".to_vec());
    let lhlo = "250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
        250-SIZE\r\n250-AUTH EXTERNAL\r\n250-IGNOREQUOTA\r\n250-CHUNKING\r\n250 Ok SESSIONID=<*>\r\n\
        250 2.1.0 ok\r\n";
    let want = format!(
        "{GREETING}{lhlo}250 2.1.5 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n\
         {OK}{OK}{OK}221 2.0.0 bye\r\n"
    );
    let r = script_with(input, &want, Peer::Unix, &s, Fake::new);
    let names: Vec<&str> = r.delivered.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, ["user.bob", "user.bob", "user.bob"]);
    // A catch-all that fails too: its own error is the answer.
    s.catchall = Some(b"full".to_vec());
    let input = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<nobody>\r\nQUIT\r\n";
    let want = format!("{GREETING}{lhlo}452 4.2.2 Over quota SESSIONID=<*>\r\n221 2.0.0 bye\r\n");
    script_with(input, &want, Peer::Unix, &s, Fake::new);
}
