//! The server core (`cyrkit::server`: listeners, connection cap, idle timeout, SIGTERM
//! drain, STARTTLS and implicit TLS) end to end over real sockets, with a trivial line
//! service whose replies are checked byte for byte.
//!
//! The service: greets `+OK hi`; answers `QUIT` with `+OK bye` and ends; `STLS` with
//! `+OK begin` and a TLS handshake; `WORK n` marks the session busy, announces `+OK working`,
//! works n milliseconds, answers `+OK done`; anything else is echoed as `> line` (or
//! `tls> line` under TLS). Channel errors are reported as `-ERR <what>` before the session
//! ends, so a test sees why.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cyrkit::server::channel::{Channel, ChannelError, Shutdown, SocketChannel};
use cyrkit::server::{self, Listener, ServerSettings, Service};

const BUSY: &[u8] = b"-ERR [SYS/TEMP] busy\r\n";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts the `WORK` commands started, so a test knows when one is in flight.
#[derive(Default)]
struct Probe {
    working: AtomicUsize,
}

fn service(name: &'static str, idle: Duration, implicit_tls: bool, probe: Arc<Probe>) -> Service {
    Service {
        name,
        handler: Arc::new(move |ch: &mut SocketChannel| session(ch, &probe)),
        busy_reply: BUSY,
        implicit_tls,
        idle,
    }
}

fn session(ch: &mut SocketChannel, probe: &Probe) {
    let r = (|| -> Result<(), ChannelError> {
        ch.write_all(b"+OK hi\r\n")?;
        loop {
            let line = ch.read_line(100);
            let line = match line {
                Err(ChannelError::LineTooLong { .. }) => {
                    ch.write_all(b"-ERR too long\r\n")?;
                    continue;
                }
                other => other?,
            };
            match line.bytes.as_slice() {
                b"QUIT" => {
                    ch.write_all(b"+OK bye\r\n")?;
                    return ch.flush();
                }
                b"STLS" => {
                    ch.write_all(b"+OK begin\r\n")?;
                    ch.start_tls()?;
                }
                cmd if cmd.starts_with(b"WORK ") => {
                    let ms: u64 = std::str::from_utf8(&cmd[5..]).unwrap().parse().unwrap();
                    ch.set_busy(true);
                    ch.write_all(b"+OK working\r\n")?;
                    ch.flush()?;
                    probe.working.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(ms));
                    ch.write_all(b"+OK done\r\n")?;
                    ch.set_busy(false);
                }
                other => {
                    let prefix: &[u8] = if ch.tls_active() { b"tls> " } else { b"> " };
                    ch.write_all(prefix)?;
                    ch.write_all(other)?;
                    ch.write_all(b"\r\n")?;
                }
            }
        }
    })();
    let why: &[u8] = match r {
        Ok(()) => return,
        Err(ChannelError::Shutdown) => b"-ERR shutdown\r\n",
        Err(ChannelError::Timeout(_)) => b"-ERR timeout\r\n",
        Err(_) => return,
    };
    let _ = ch.write_all(why);
    let _ = ch.flush();
}

/// A running server; raises its shutdown and joins it when dropped.
struct Running {
    shutdown: Shutdown,
    thread: Option<JoinHandle<io::Result<()>>>,
    addr: Option<SocketAddr>,
}

impl Running {
    fn start(listeners: Vec<Listener>, max_connections: usize) -> Running {
        Running::start_tls(listeners, max_connections, None)
    }

    fn start_tls(
        listeners: Vec<Listener>,
        max_connections: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Running {
        let addr = listeners.iter().find_map(|l| l.local_addr());
        let shutdown = Shutdown::default();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || {
            server::serve(
                listeners,
                ServerSettings {
                    max_connections,
                    tls,
                },
                s,
            )
        });
        Running {
            shutdown,
            thread: Some(thread),
            addr,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr.expect("a TCP listener")
    }

    fn stop(&mut self) -> io::Result<()> {
        self.shutdown.raise();
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn tcp_listener(idle: Duration, probe: &Arc<Probe>) -> Listener {
    Listener::tcp("127.0.0.1:0", service("test", idle, false, probe.clone())).unwrap()
}

/// A line-reading client over any stream.
struct Client<S: Read + Write> {
    r: BufReader<S>,
}

impl<S: Read + Write> Client<S> {
    fn new(s: S) -> Client<S> {
        Client {
            r: BufReader::new(s),
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }

    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
        self.r.get_mut().flush().unwrap();
    }

    /// Everything until the server closes.
    fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.r.read_to_string(&mut s);
        s
    }
}

fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    Client::new(s)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_exact_bytes() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(30), &probe)], 10);
    let mut c = connect(srv.addr());
    // Pipelined commands, a bare LF, and an over-long line the session survives.
    c.send(b"one\r\ntwo\nthree\r\n");
    c.send(&[b'x'; 300]);
    c.send(b"\r\nQUIT\r\n");
    assert_eq!(
        c.rest(),
        "+OK hi\r\n> one\r\n> two\r\n> three\r\n-ERR too long\r\n+OK bye\r\n"
    );
    srv.stop().unwrap();
}

fn unix_listener(path: &Path, mode: u32, probe: &Arc<Probe>) -> io::Result<Listener> {
    Listener::unix(
        path,
        mode,
        None,
        service("unix", Duration::from_secs(30), false, probe.clone()),
    )
}

#[test]
fn unix_socket_mode_stale_socket_and_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp.sock");
    // A stale socket: bound by a server that went away without removing it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let probe = Arc::new(Probe::default());
    let l = unix_listener(&path, 0o620, &probe).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o620);
    // A live socket is not taken over.
    let live = unix_listener(&path, 0o600, &probe);
    assert_eq!(live.err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
    let mut srv = Running::start(vec![l], 10);
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut c = Client::new(s);
    c.send(b"hello unix\r\nQUIT\r\n");
    assert_eq!(c.rest(), "+OK hi\r\n> hello unix\r\n+OK bye\r\n");
    srv.stop().unwrap();
    assert!(!path.exists(), "the socket is removed at shutdown");
}

#[test]
fn unix_listener_refuses_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp.sock");
    std::fs::write(&path, b"precious").unwrap();
    let probe = Arc::new(Probe::default());
    assert!(unix_listener(&path, 0o600, &probe).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn connection_cap_sends_the_busy_reply() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(30), &probe)], 2);
    let mut a = connect(srv.addr());
    let mut b = connect(srv.addr());
    assert_eq!(a.line(), "+OK hi\r\n");
    assert_eq!(b.line(), "+OK hi\r\n");
    let mut c = connect(srv.addr());
    assert_eq!(c.rest(), String::from_utf8_lossy(BUSY));
    // A freed slot is served again.
    a.send(b"QUIT\r\n");
    assert_eq!(a.rest(), "+OK bye\r\n");
    wait_until("a free slot", || {
        let mut d = connect(srv.addr());
        d.line() == "+OK hi\r\n"
    });
    b.send(b"still here\r\n");
    assert_eq!(b.line(), "> still here\r\n");
    srv.stop().unwrap();
}

#[test]
fn idle_timeout_ends_the_session() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(1), &probe)], 10);
    let mut c = connect(srv.addr());
    assert_eq!(c.line(), "+OK hi\r\n");
    // Activity restarts the clock.
    std::thread::sleep(Duration::from_millis(600));
    c.send(b"ping\r\n");
    assert_eq!(c.line(), "> ping\r\n");
    let start = Instant::now();
    assert_eq!(c.rest(), "-ERR timeout\r\n");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    srv.stop().unwrap();
}

#[test]
fn shutdown_drains_busy_sessions_and_ends_idle_ones() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(30), &probe)], 10);
    let addr = srv.addr();
    let mut idle = connect(addr);
    assert_eq!(idle.line(), "+OK hi\r\n");
    let mut busy = connect(addr);
    assert_eq!(busy.line(), "+OK hi\r\n");
    busy.send(b"WORK 1500\r\n");
    assert_eq!(busy.line(), "+OK working\r\n");
    wait_until("the work to start", || {
        probe.working.load(Ordering::SeqCst) == 1
    });
    let raised = Instant::now();
    srv.shutdown.raise();
    // The idle session ends at once (at its next poll of the flag).
    assert_eq!(idle.rest(), "-ERR shutdown\r\n");
    assert!(raised.elapsed() < Duration::from_secs(1));
    // The listener stops accepting while the busy session still works.
    wait_until("the listener to close", || {
        TcpStream::connect(addr).is_err()
    });
    assert!(raised.elapsed() < Duration::from_millis(1400));
    // The busy session finishes its work, then ends at its next read.
    assert_eq!(busy.rest(), "+OK done\r\n-ERR shutdown\r\n");
    srv.stop().unwrap();
    assert!(raised.elapsed() >= Duration::from_millis(1400));
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost`, made by the openssl CLI.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is needed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Trusts exactly one certificate (the test's self-signed one), with real signature checks.
#[derive(Debug)]
struct Pinned {
    cert: rustls::pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(cert_pem: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(cert_pem).unwrap();
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_wrap(tcp: TcpStream, config: &Arc<rustls::ClientConfig>) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

struct TlsSetup {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls_setup() -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    TlsSetup {
        server: server::tls::server_config(&cert, &key).unwrap(),
        client: client_config(&cert),
        _dir: dir,
    }
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let tls = tls_setup();
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start_tls(
        vec![tcp_listener(Duration::from_secs(30), &probe)],
        10,
        Some(tls.server.clone()),
    );
    let tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut plain = Client::new(tcp);
    assert_eq!(plain.line(), "+OK hi\r\n");
    // One write: the injected command arrives together with STLS (RFC 3207 §4.2).
    plain.send(b"plain\r\nSTLS\r\nINJECTED\r\n");
    assert_eq!(plain.line(), "> plain\r\n");
    assert_eq!(plain.line(), "+OK begin\r\n");
    assert!(plain.r.buffer().is_empty());
    let mut c = Client::new(tls_wrap(plain.r.into_inner(), &tls.client));
    c.send(b"secret\r\nQUIT\r\n");
    assert_eq!(c.rest(), "tls> secret\r\n+OK bye\r\n");
    srv.stop().unwrap();
}

#[test]
fn implicit_tls_from_the_first_byte() {
    let tls = tls_setup();
    let probe = Arc::new(Probe::default());
    let l = Listener::tcp(
        "127.0.0.1:0",
        service("pop3s", Duration::from_secs(30), true, probe.clone()),
    )
    .unwrap();
    let mut srv = Running::start_tls(vec![l], 10, Some(tls.server.clone()));
    let tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut c = Client::new(tls_wrap(tcp, &tls.client));
    assert_eq!(c.line(), "+OK hi\r\n");
    c.send(b"over tls\r\nQUIT\r\n");
    assert_eq!(c.rest(), "tls> over tls\r\n+OK bye\r\n");
    // A plaintext client gets no greeting: the server waits for a handshake and drops it.
    let tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut p = Client::new(tcp);
    p.send(b"USER bob\r\n");
    let rest = p.rest();
    assert!(!rest.contains("+OK"), "{rest:?}");
    srv.stop().unwrap();
}

/// A client that sends and never reads: the session's writes block once the socket
/// buffers are full. SIGTERM must still end it (it is not busy), and the idle timeout
/// must apply to writes too, or one such client holds a slot (and the shutdown) forever.
fn flood_without_reading(addr: SocketAddr) -> (TcpStream, JoinHandle<()>) {
    let s = TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = std::thread::spawn(move || {
        let line = [b'y'; 90];
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.extend_from_slice(&line);
            buf.extend_from_slice(b"\r\n");
        }
        while w.write_all(&buf).is_ok() {}
    });
    (s, t)
}

#[test]
fn shutdown_ends_a_session_blocked_writing_to_a_client_that_does_not_read() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(60), &probe)], 10);
    let (_s, writer) = flood_without_reading(srv.addr());
    // Let the buffers fill both ways.
    std::thread::sleep(Duration::from_millis(1500));
    let raised = Instant::now();
    srv.stop().unwrap();
    assert!(
        raised.elapsed() < Duration::from_secs(3),
        "{:?}",
        raised.elapsed()
    );
    drop(_s);
    writer.join().unwrap();
}

#[test]
fn idle_timeout_applies_to_writes() {
    let probe = Arc::new(Probe::default());
    let mut srv = Running::start(vec![tcp_listener(Duration::from_secs(1), &probe)], 1);
    let (_s, writer) = flood_without_reading(srv.addr());
    std::thread::sleep(Duration::from_millis(500));
    // The stuck session holds the only slot until its write times out.
    let start = Instant::now();
    wait_until("the stuck session to be dropped", || {
        let mut d = connect(srv.addr());
        d.line() == "+OK hi\r\n"
    });
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    drop(_s);
    writer.join().unwrap();
    srv.stop().unwrap();
}
