//! Session tests over [`MemChannel`] with an in-memory maildrop: exact reply bytes, at every
//! input chunk size.

use std::sync::Mutex;

use super::*;
use crate::server::auth::AuthError;
use crate::server::channel::MemChannel;
use crate::server::pop3::MessageInfo;

const MSG1: &[u8] = b"From: a@b\r\nSubject: one\r\n\r\nhello\r\n.dotted\r\nbye\r\n";
const MSG2: &[u8] = b"Subject: two\n\nbare lf\n";

#[derive(Default)]
struct FakeStore {
    commits: Mutex<Vec<(String, Update)>>,
    deny: Option<(String, String)>,
    opened: Mutex<Vec<LoginTarget>>,
    fail: Option<fn() -> OpenError>,
}

struct FakeDrop {
    userid: String,
    list: Vec<MessageInfo>,
    bodies: Vec<Vec<u8>>,
    store: Arc<FakeStore>,
}

impl Maildrop for FakeDrop {
    fn messages(&self) -> &[MessageInfo] {
        &self.list
    }
    fn uidvalidity(&self) -> u32 {
        1795690632
    }
    fn new_uidl(&self) -> bool {
        true
    }
    fn open_message(&mut self, i: usize) -> std::io::Result<Box<dyn Read + Send>> {
        let b = self
            .bodies
            .get(i)
            .cloned()
            .ok_or(std::io::ErrorKind::NotFound)?;
        Ok(Box::new(std::io::Cursor::new(b)))
    }
    fn commit(self: Box<Self>, update: &Update) -> Result<(), String> {
        self.store
            .commits
            .lock()
            .unwrap()
            .push((self.userid.clone(), update.clone()));
        Ok(())
    }
}

/// The store as seen by the session (an `Arc` to itself so drops can record commits).
struct StoreRef(Arc<FakeStore>);

impl MaildropStore for StoreRef {
    fn open(&self, target: &LoginTarget, _t: i64) -> Result<Box<dyn Maildrop>, OpenError> {
        self.0.opened.lock().unwrap().push(target.clone());
        if let Some(f) = self.0.fail {
            return Err(f());
        }
        let bodies = vec![MSG1.to_vec(), MSG2.to_vec(), b"x\r\n".to_vec()];
        let list = vec![
            MessageInfo {
                uid: 1,
                size: MSG1.len() as u64,
                recno: 0,
            },
            MessageInfo {
                uid: 4,
                size: 21,
                recno: 3,
            },
            MessageInfo {
                uid: 7,
                size: 3,
                recno: 5,
            },
        ];
        Ok(Box::new(FakeDrop {
            userid: target.userid.clone(),
            list,
            bodies,
            store: self.0.clone(),
        }))
    }
    fn user_denied(&self, userid: &str, service: &str) -> Option<String> {
        match &self.0.deny {
            Some((u, m)) if u == userid && service == "pop3" => Some(m.clone()),
            _ => None,
        }
    }
}

struct FakeCreds;

impl Authenticator for FakeCreds {
    fn check_password(&self, user: &str, password: &[u8]) -> Result<bool, AuthError> {
        Ok(
            matches!(user, "alice" | "bob" | "alice@example.com" | "admin")
                && password == b"secret",
        )
    }
    fn secret(&self, user: &str) -> Option<Vec<u8>> {
        (user == "alice").then(|| b"secret".to_vec())
    }
    fn has_secrets(&self) -> bool {
        true
    }
}

fn env_with(cfg: Pop3Config, store: Arc<FakeStore>, secrets: bool) -> SessionEnv {
    struct NoSecrets;
    impl Authenticator for NoSecrets {
        fn check_password(&self, u: &str, p: &[u8]) -> Result<bool, AuthError> {
            FakeCreds.check_password(u, p)
        }
        fn secret(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn has_secrets(&self) -> bool {
            false
        }
    }
    let auth: Arc<dyn Authenticator> = if secrets {
        Arc::new(FakeCreds)
    } else {
        Arc::new(NoSecrets)
    };
    SessionEnv {
        cfg: Arc::new(cfg),
        store: Arc::new(StoreRef(store)),
        auth: Some(auth),
        service: "pop3",
        open_fail_pause: Duration::ZERO,
        now: || 1_700_000_000,
    }
}

fn base_cfg() -> Pop3Config {
    Pop3Config {
        servername: "mx.test".into(),
        allowplaintext: true,
        failedloginpause: Duration::ZERO,
        ..Pop3Config::default()
    }
}

/// Run `input` at every chunk size; all must give the same output, which is returned with
/// the session id and greeting version normalised.
fn run_all(env: &SessionEnv, input: &[u8], tls: bool) -> String {
    let mut outs = Vec::new();
    for chunk in [1, 2, 3, 7, 64, 4096] {
        let mut ch = MemChannel::new(input, chunk);
        if tls {
            ch = ch.with_tls();
        }
        run(&mut ch, env);
        outs.push(normalise(&ch.output_str()));
    }
    for o in &outs[1..] {
        assert_eq!(o, &outs[0]);
    }
    outs.swap_remove(0)
}

fn normalise(s: &str) -> String {
    let mut out = String::new();
    for line in s.split_inclusive("\r\n") {
        if let Some(i) = line.find("SESSIONID=<") {
            out.push_str(&line[..i]);
            out.push_str("SESSIONID=<ID>\r\n");
        } else if let Some(i) = line.find("server ready <") {
            out.push_str(&line[..i]);
            out.push_str("server ready <CHAL>\r\n");
        } else {
            out.push_str(line);
        }
    }
    out.replace(crate::server::pop3::VERSION, "V")
}

fn login() -> &'static str {
    "USER alice\r\nPASS secret\r\n"
}

const GREETING: &str = "+OK mx.test Cyrus POP3 V server ready \r\n";
const READY: &str =
    "+OK Name is a valid mailbox\r\n+OK Mailbox locked and ready SESSIONID=<ID>\r\n";

#[test]
fn greeting_capa_and_quit_before_login() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), false);
    let out = run_all(&env, b"CAPA\r\nCAPA x\r\nQUIT\r\n", false);
    assert_eq!(
        out,
        format!(
            "{GREETING}+OK List of capabilities follows\r\nSASL PLAIN LOGIN\r\nEXPIRE NEVER\r\n\
             LOGIN-DELAY 0\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
             USER\r\nUTF8\r\nIMPLEMENTATION Cyrus POP3 V\r\n.\r\n\
             -ERR Unexpected extra argument\r\n+OK\r\n"
        )
    );
    assert!(store.commits.lock().unwrap().is_empty());
}

#[test]
fn capa_with_tls_offer_and_no_plaintext() {
    let mut cfg = base_cfg();
    cfg.allowplaintext = false;
    cfg.popminpoll = 300;
    cfg.popexpiretime = 31 * 86400 + 5;
    let env = env_with(cfg, Arc::new(FakeStore::default()), false);
    let out = run_all(&env, b"CAPA\r\nUSER alice\r\nAUTH\r\n", true);
    assert_eq!(
        out,
        format!(
            "{GREETING}+OK List of capabilities follows\r\nSTLS\r\nEXPIRE 31\r\n\
             LOGIN-DELAY 300\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
             UTF8\r\nIMPLEMENTATION Cyrus POP3 V\r\n.\r\n\
             -ERR [AUTH] USER command only available under a layer\r\n\
             +OK List of supported mechanisms follows\r\n.\r\n"
        )
    );
    // After STLS, USER is allowed and STLS is no longer offered.
    let mut ch = MemChannel::new(b"STLS\r\nCAPA\r\nSTLS\r\n", 1).with_tls();
    run(&mut ch, &env);
    let out = normalise(&ch.output_str());
    assert!(out.contains("+OK Begin TLS negotiation now\r\n"), "{out}");
    assert!(out.contains("SASL PLAIN LOGIN\r\n"), "{out}");
    assert!(out.contains("\r\nUSER\r\n"), "{out}");
    assert!(!out.contains("\r\nSTLS\r\n"), "{out}");
    assert!(
        out.ends_with("-ERR Already successfully executed STLS\r\n"),
        "{out}"
    );
    // Commands pipelined after STLS are discarded (RFC 2595 §4, the injection attack).
    let mut ch = MemChannel::new(b"STLS\r\nCAPA\r\n", 4096).with_tls();
    run(&mut ch, &env);
    assert!(ch
        .output_str()
        .ends_with("+OK Begin TLS negotiation now\r\n"));
}

#[test]
fn transaction_commands_exact_replies() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), false);
    let input = format!(
        "{}STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 3\r\nRETR 1\r\nTOP 1 0\r\nTOP 2 1\r\n\
         RETR 2\r\nDELE 2\r\nLIST 2\r\nSTAT\r\nRSET\r\nSTAT\r\nNOOP\r\nDELE 3\r\nQUIT\r\n",
        login()
    );
    let out = run_all(&env, input.as_bytes(), false);
    let m1 = MSG1.len();
    let want = format!(
        "{GREETING}{READY}+OK 3 {total}\r\n\
         +OK scan listing follows\r\n1 {m1}\r\n2 21\r\n3 3\r\n.\r\n\
         +OK 2 21\r\n\
         +OK unique-id listing follows\r\n1 1795690632.1\r\n2 1795690632.4\r\n3 1795690632.7\r\n.\r\n\
         +OK 3 1795690632.7\r\n\
         +OK Message follows\r\nFrom: a@b\r\nSubject: one\r\n\r\nhello\r\n..dotted\r\nbye\r\n.\r\n\
         +OK Message follows\r\nFrom: a@b\r\nSubject: one\r\n\r\n.\r\n\
         +OK Message follows\r\nSubject: two\r\n\r\nbare lf\r\n.\r\n\
         +OK Message follows\r\nSubject: two\r\n\r\nbare lf\r\n.\r\n\
         +OK message deleted\r\n-ERR No such message\r\n+OK 2 {t2}\r\n+OK\r\n+OK 3 {total}\r\n\
         +OK\r\n+OK message deleted\r\n+OK\r\n",
        total = m1 + 24,
        t2 = m1 + 3,
    );
    assert_eq!(out, want);
    let commits = store.commits.lock().unwrap();
    assert_eq!(commits.len(), 6, "one per chunk size");
    let (user, u) = &commits[0];
    assert_eq!(user, "alice");
    assert_eq!(u.expunge, vec![(5, 7)]);
    assert!(u.seen.is_empty(), "no \\Seen without popuseimapflags");
    assert_eq!(u.login_time, 1_700_000_000);
}

#[test]
fn bad_arguments_and_unknown_commands() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), false);
    let input = format!(
        "LIST\r\nSTAT\r\nPASS x\r\nUSER \r\n{}USER bob\r\nLAST\r\nLIST x\r\nLIST 1 2\r\n\
         LIST 0\r\nLIST 4\r\nLIST 99999999999\r\nRETR\r\nDELE\r\nTOP\r\nTOP 1\r\nTOP 1 x\r\n\
         TOP 1 2 3\r\nTOP 9 1\r\nNOOP x\r\nSTAT x\r\nRSET x\r\nQUIT x\r\n",
        login()
    );
    let out = run_all(&env, input.as_bytes(), false);
    let want = format!(
        "{GREETING}-ERR Unrecognized command\r\n-ERR Unrecognized command\r\n\
         -ERR [AUTH] Must give USER command\r\n-ERR Syntax error\r\n{READY}\
         -ERR Unrecognized command\r\n-ERR Unrecognized command\r\n-ERR Not a number\r\n\
         -ERR Unexpected extra argument\r\n-ERR No such message\r\n-ERR No such message\r\n\
         -ERR Not a number\r\n-ERR Missing argument\r\n-ERR Missing argument\r\n\
         -ERR Missing argument\r\n-ERR Missing argument\r\n-ERR Invalid number of lines\r\n\
         -ERR Unexpected extra argument\r\n-ERR No such message\r\n\
         -ERR Unexpected extra argument\r\n-ERR Unexpected extra argument\r\n\
         -ERR Unexpected extra argument\r\n-ERR Unexpected extra argument\r\n"
    );
    assert_eq!(out, want);
    assert!(
        store.commits.lock().unwrap().is_empty(),
        "no QUIT: no update"
    );
}

#[test]
fn failed_logins_look_the_same() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), false);
    let out = run_all(
        &env,
        b"USER nobody\r\nPASS secret\r\nUSER alice\r\nPASS wrong\r\nUSER a\x01b\r\nQUIT\r\n",
        false,
    );
    assert_eq!(
        out,
        format!(
            "{GREETING}+OK Name is a valid mailbox\r\n-ERR [AUTH] Invalid login\r\n\
             +OK Name is a valid mailbox\r\n-ERR [AUTH] Invalid login\r\n\
             -ERR [AUTH] Invalid user\r\n+OK\r\n"
        )
    );
    assert!(store.opened.lock().unwrap().is_empty());
}

#[test]
fn failed_login_pauses() {
    let mut cfg = base_cfg();
    cfg.failedloginpause = Duration::from_millis(300);
    let env = env_with(cfg, Arc::new(FakeStore::default()), false);
    let start = std::time::Instant::now();
    let mut ch = MemChannel::new(b"USER alice\r\nPASS wrong\r\nQUIT\r\n", 64);
    run(&mut ch, &env);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(ch.output_str().contains("-ERR [AUTH] Invalid login\r\n"));
}

#[test]
fn plaintext_login_pause_only_outside_tls() {
    let mut cfg = base_cfg();
    cfg.plaintextloginpause = Duration::from_millis(300);
    let env = env_with(cfg, Arc::new(FakeStore::default()), false);
    for (input, tls, slow) in [
        (&b"USER alice\r\nPASS secret\r\nQUIT\r\n"[..], false, true),
        (
            b"STLS\r\nUSER alice\r\nPASS secret\r\nQUIT\r\n",
            true,
            false,
        ),
        (b"USER alice\r\nPASS wrong\r\nQUIT\r\n", false, false),
    ] {
        let mut ch = MemChannel::new(input, 1);
        if tls {
            ch = ch.with_tls();
        }
        let start = std::time::Instant::now();
        run(&mut ch, &env);
        let took = start.elapsed();
        assert_eq!(took >= Duration::from_millis(300), slow, "{took:?}");
        assert!(ch.output_str().ends_with("+OK\r\n"));
    }
}

#[test]
fn sasl_plain_login_and_cancel() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), false);
    // AGFsaWNlAHNlY3JldA== = "\0alice\0secret"
    let out = run_all(
        &env,
        b"AUTH\r\nAUTH FOO\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n\
          AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nSTAT\r\nQUIT\r\n",
        false,
    );
    assert_eq!(
        out,
        format!(
            "{GREETING}+OK List of supported mechanisms follows\r\nPLAIN\r\nLOGIN\r\n.\r\n\
             -ERR [AUTH] authenticating: no mechanism available\r\n\
             + \r\n-ERR [AUTH] Client canceled authentication\r\n\
             -ERR [AUTH] authenticating: authentication failure\r\n\
             + \r\n+OK Mailbox locked and ready SESSIONID=<ID>\r\n+OK 3 {}\r\n+OK\r\n",
            MSG1.len() + 24
        )
    );
    // LOGIN: Username:, Password:.
    let out = run_all(
        &env,
        b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nQUIT\r\n",
        false,
    );
    assert_eq!(
        out,
        format!(
            "{GREETING}+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n\
             +OK Mailbox locked and ready SESSIONID=<ID>\r\n+OK\r\n"
        )
    );
}

#[test]
fn apop_and_cram_md5_with_secrets() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), true);
    let mut ch = MemChannel::new(b"CAPA\r\n", 64);
    run(&mut ch, &env);
    let out = ch.output_str();
    let chal = out
        .lines()
        .next()
        .and_then(|l| l.split("server ready ").nth(1))
        .unwrap()
        .to_string();
    assert!(
        chal.starts_with('<') && chal.ends_with("@mx.test>"),
        "{chal}"
    );
    assert!(out.contains("SASL CRAM-MD5 PLAIN LOGIN\r\n"), "{out}");
    // APOP needs the challenge of this very session: compute it from the greeting.
    // The MemChannel input is fixed up front, so check the wrong digest is refused and the
    // digest check itself is covered in `login`.
    let out = run_all(
        &env,
        b"APOP alice 00000000000000000000000000000000\r\nQUIT\r\n",
        false,
    );
    assert_eq!(
        out,
        GREETING.replace("ready \r\n", "ready <CHAL>\r\n")
            + "-ERR [AUTH] authenticating: authentication failure\r\n+OK\r\n"
    );
    // Without secrets, APOP is not even a command.
    let env2 = env_with(base_cfg(), store, false);
    let out = run_all(&env2, b"APOP alice 00\r\n", false);
    assert!(
        out.ends_with("server ready \r\n-ERR Unrecognized command\r\n"),
        "{out}"
    );
}

#[test]
fn user_deny_ends_the_session_after_user() {
    let store = Arc::new(FakeStore {
        deny: Some(("bob".into(), "[POP is off for you".into())),
        ..Default::default()
    });
    let env = env_with(base_cfg(), store.clone(), false);
    let out = run_all(&env, b"USER bob\r\nPASS secret\r\nSTAT\r\n", false);
    assert_eq!(
        out,
        format!("{GREETING}+OK Name is a valid mailbox\r\n-ERR [SYS/TEMP] POP is off for you\r\n")
    );
    assert!(store.opened.lock().unwrap().is_empty());
}

#[test]
fn recent_and_subfolder_names_reach_the_store() {
    let store = Arc::new(FakeStore::default());
    let mut cfg = base_cfg();
    cfg.popsubfolders = true;
    let env = env_with(cfg, store.clone(), false);
    let mut ch = MemChannel::new(b"USER recent:alice+Sent\r\nPASS secret\r\nQUIT\r\n", 7);
    run(&mut ch, &env);
    assert!(ch.output_str().contains("+OK Mailbox locked and ready"));
    let opened = store.opened.lock().unwrap();
    assert_eq!(
        opened.as_slice(),
        &[LoginTarget {
            userid: "alice".into(),
            subfolder: Some("Sent".into()),
            recent: true
        }]
    );
}

#[test]
fn open_errors_and_login_delay() {
    for (f, want) in [
        (
            (|| OpenError::Temp("Mailbox does not exist".into())) as fn() -> OpenError,
            "-ERR [SYS/TEMP] Unable to open maildrop: Mailbox does not exist\r\n",
        ),
        (
            || OpenError::LoginDelay(600),
            "-ERR [LOGIN-DELAY] Logins must be at least 10 minutes apart\r\n",
        ),
        (
            || OpenError::LoginDelay(60),
            "-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n",
        ),
    ] {
        let store = Arc::new(FakeStore {
            fail: Some(f),
            ..Default::default()
        });
        let env = env_with(base_cfg(), store, false);
        let out = run_all(&env, b"USER alice\r\nPASS secret\r\nSTAT\r\n", false);
        assert_eq!(
            out,
            format!("{GREETING}+OK Name is a valid mailbox\r\n{want}-ERR Unrecognized command\r\n")
        );
    }
}

#[test]
fn seen_with_popuseimapflags_and_dropped_connection() {
    let store = Arc::new(FakeStore::default());
    let mut cfg = base_cfg();
    cfg.popuseimapflags = true;
    let env = env_with(cfg, store.clone(), false);
    let mut ch = MemChannel::new(
        b"USER alice\r\nPASS secret\r\nRETR 2\r\nTOP 1 1\r\nDELE 1\r\nQUIT\r\n",
        3,
    );
    run(&mut ch, &env);
    {
        let commits = store.commits.lock().unwrap();
        assert_eq!(
            commits[0].1.seen,
            vec![(3, 4)],
            "RETR marks seen, TOP does not"
        );
        assert_eq!(commits[0].1.expunge, vec![(0, 1)]);
    }
    // The same without QUIT: nothing is committed.
    let mut ch = MemChannel::new(b"USER alice\r\nPASS secret\r\nDELE 1\r\n", 3);
    assert_eq!(run(&mut ch, &env), End::Dropped);
    assert_eq!(store.commits.lock().unwrap().len(), 1);
}

#[test]
fn uidl_formats() {
    let v = 1795690632;
    assert_eq!(uidl_string(true, UidlFormat::Cyrus, v, 1), "1795690632.1");
    assert_eq!(uidl_string(true, UidlFormat::UidOnly, v, 12), "12");
    assert_eq!(
        uidl_string(true, UidlFormat::Dovecot, v, 1),
        "000000016b081088"
    );
    assert_eq!(uidl_string(true, UidlFormat::Courier, v, 3), "1795690632-3");
    assert_eq!(uidl_string(false, UidlFormat::Courier, v, 3), "3");
}

#[test]
fn utf8_command() {
    let env = env_with(base_cfg(), Arc::new(FakeStore::default()), false);
    let out = run_all(
        &env,
        b"UTF8\r\nUTF8 x\r\nUSER alice\r\nPASS secret\r\nUTF8\r\n",
        false,
    );
    assert_eq!(
        out,
        format!("{GREETING}+OK\r\n-ERR Unexpected extra argument\r\n{READY}-ERR Unrecognized command\r\n")
    );
}

/// A client that answers what the server said: `next` gets the output so far and gives the
/// next command line (`None`: the client hangs up). For exchanges that depend on a
/// challenge the server made up (APOP, CRAM-MD5).
struct Dialogue<F: FnMut(&str) -> Option<String>> {
    inner: MemChannel,
    next: F,
}

impl<F: FnMut(&str) -> Option<String>> Channel for Dialogue<F> {
    fn read_line(&mut self, _limit: usize) -> Result<crate::server::channel::Line, ChannelError> {
        match (self.next)(&self.inner.output_str()) {
            Some(l) => Ok(crate::server::channel::Line {
                bytes: l.into_bytes(),
                ending: crate::server::channel::Ending::CrLf,
            }),
            None => Err(ChannelError::Closed),
        }
    }
    fn read_exact_to(
        &mut self,
        n: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ChannelError> {
        self.inner.read_exact_to(n, sink)
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.inner.write_all(bytes)
    }
    fn flush(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }
    fn has_buffered_input(&self) -> bool {
        false
    }
    fn tls_available(&self) -> bool {
        false
    }
    fn tls_active(&self) -> bool {
        false
    }
    fn start_tls(&mut self) -> Result<(), ChannelError> {
        self.inner.start_tls()
    }
    fn peer(&self) -> &crate::server::channel::Peer {
        self.inner.peer()
    }
    fn set_busy(&mut self, busy: bool) {
        self.inner.set_busy(busy)
    }
    fn set_idle_timeout(&mut self, _timeout: Duration) {}
}

/// Run a dialogue: `script` turns the server's last line into the next command.
fn converse(env: &SessionEnv, mut script: impl FnMut(&str) -> Option<String>) -> String {
    let mut ch = Dialogue {
        inner: MemChannel::new(b"", 1),
        next: |out: &str| script(out.trim_end().rsplit("\r\n").next().unwrap_or("")),
    };
    run(&mut ch, env);
    normalise(&ch.inner.output_str())
}

#[test]
fn apop_with_the_greeting_challenge() {
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), true);
    for (name, digest_secret, want) in [
        (
            "alice",
            &b"secret"[..],
            "+OK Mailbox locked and ready SESSIONID=<ID>\r\n+OK\r\n",
        ),
        (
            "recent:alice",
            b"secret",
            "+OK Mailbox locked and ready SESSIONID=<ID>\r\n+OK\r\n",
        ),
        (
            "alice",
            b"wrong",
            "-ERR [AUTH] authenticating: authentication failure\r\n+OK\r\n",
        ),
        (
            "bob",
            b"secret",
            "-ERR [AUTH] authenticating: authentication failure\r\n+OK\r\n",
        ),
    ] {
        let mut sent = false;
        let out = converse(&env, |last| {
            if sent {
                return Some("QUIT".into());
            }
            sent = true;
            let chal = last.split("server ready ").nth(1)?;
            let digest = sasl::apop_digest(chal.as_bytes(), digest_secret);
            Some(format!("APOP {name} {digest}"))
        });
        assert_eq!(
            out,
            GREETING.replace("ready \r\n", "ready <CHAL>\r\n") + want,
            "{name}"
        );
    }
    let opened = store.opened.lock().unwrap();
    assert_eq!(opened.len(), 2);
    assert!(!opened[0].recent && opened[1].recent && opened[1].userid == "alice");
}

#[test]
fn cram_md5_with_its_challenge() {
    use hmac::{Hmac, Mac};
    let store = Arc::new(FakeStore::default());
    let env = env_with(base_cfg(), store.clone(), true);
    for (key, want) in [
        (
            &b"secret"[..],
            "+OK Mailbox locked and ready SESSIONID=<ID>\r\n",
        ),
        (
            b"wrong",
            "-ERR [AUTH] authenticating: authentication failure\r\n",
        ),
    ] {
        let mut step = 0;
        let out = converse(&env, |last| {
            step += 1;
            match step {
                1 => Some("AUTH CRAM-MD5".into()),
                2 => {
                    let chal = sasl::decode_response(last.strip_prefix("+ ")?.as_bytes()).ok()?;
                    let crate::server::sasl::Response::Data(chal) = chal else {
                        return None;
                    };
                    let mut mac = Hmac::<md5::Md5>::new_from_slice(key).ok()?;
                    mac.update(&chal);
                    let hex: String = mac
                        .finalize()
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    Some(sasl::encode_challenge(format!("alice {hex}").as_bytes()))
                }
                _ => None,
            }
        });
        let (head, tail) = out.split_once("\r\n+ ").unwrap();
        assert!(head.ends_with("server ready <CHAL>"), "{out}");
        assert!(tail.ends_with(&format!("\r\n{want}")), "{out}");
    }
    assert_eq!(store.opened.lock().unwrap().len(), 1);
}

#[test]
fn plain_authzid_only_for_admins_or_oneself() {
    let store = Arc::new(FakeStore::default());
    let mut cfg = base_cfg();
    cfg.admins = vec!["admin".into()];
    let env = env_with(cfg, store.clone(), false);
    let ok = "+OK Mailbox locked and ready SESSIONID=<ID>\r\n";
    let bad = "-ERR [AUTH] authenticating: authentication failure\r\n";
    for (resp, want, as_user) in [
        // An admin acts as alice.
        (&b"alice\0admin\0secret"[..], ok, Some(("alice", false))),
        // Oneself under another spelling is no proxy login.
        (b"recent:Alice\0alice\0secret", ok, Some(("alice", true))),
        (b"alice\0Alice\0secret", ok, Some(("alice", false))),
        // bob may not act as alice, even with the right password.
        (b"alice\0bob\0secret", bad, None),
        (b"admin\0alice\0secret", bad, None),
        (b"\0admin\0wrong", bad, None),
    ] {
        store.opened.lock().unwrap().clear();
        let line = format!("AUTH PLAIN {}\r\n", sasl::encode_challenge(resp));
        let out = run_all(&env, line.as_bytes(), false);
        assert_eq!(out, format!("{GREETING}{want}"), "{resp:?}");
        let opened = store.opened.lock().unwrap();
        match as_user {
            Some((u, recent)) => {
                assert_eq!(opened.len(), 6, "once per chunk size");
                assert_eq!((opened[0].userid.as_str(), opened[0].recent), (u, recent));
            }
            None => assert!(opened.is_empty(), "{resp:?}"),
        }
    }
}
