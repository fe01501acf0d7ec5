//! The embedded servers (`cyrkit serve`): LMTP delivery into the spool and POP3 access to
//! it.
//!
//! - [`channel`]: the byte channel sessions talk through (line limits, STARTTLS, shutdown).
//! - [`tls`]: rustls configuration from certificate and key files.
//! - [`log`]: the level-tagged stderr / journald log.
//! - this module: listeners (TCP, UNIX), the connection cap, one thread per connection,
//!   and the SIGTERM drain.
//!
//! Threads, not an async runtime: each session spends its time in blocking file I/O under
//! fcntl locks (index, cache, fsync) that an async runtime would have to push to a blocking
//! pool anyway; a thread per connection with a small stack keeps 1000 concurrent sessions
//! at a few MB of resident memory and keeps the session code straight-line.

pub mod auth;
pub mod channel;
pub mod lmtp;
pub mod log;
pub mod pop3;
pub mod sasl;
pub mod tls;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use channel::{Peer, Shutdown, SocketChannel, Transport};

/// Runs one protocol session on an accepted connection.
pub type Handler = Arc<dyn Fn(&mut SocketChannel) + Send + Sync>;

/// One protocol the server speaks.
#[derive(Clone)]
pub struct Service {
    /// For log lines: `lmtp`, `pop3`, `pop3s`.
    pub name: &'static str,
    pub handler: Handler,
    /// The reply sent (then the connection closed) when the connection cap is reached.
    pub busy_reply: &'static [u8],
    /// TLS from the first byte (POP3S).
    pub implicit_tls: bool,
    /// Idle timeout before the first command and between commands.
    pub idle: Duration,
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A bound listening socket and the service it runs.
pub struct Listener {
    socket: Socket,
    service: Service,
}

impl Listener {
    pub fn tcp(addr: &str, service: Service) -> io::Result<Listener> {
        let l = TcpListener::bind(addr)?;
        set_backlog(&l)?;
        l.set_nonblocking(true)?;
        Ok(Listener {
            socket: Socket::Tcp(l),
            service,
        })
    }

    /// Bind a UNIX socket at `path` with `mode` (and `group`, when given). A stale socket
    /// left by a crashed server is removed; a live one (something answers) is an error.
    pub fn unix(
        path: &Path,
        mode: u32,
        group: Option<u32>,
        service: Service,
    ) -> io::Result<Listener> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another server is listening", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let l = UnixListener::bind(path)?;
        set_backlog(&l)?;
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(io::Error::from)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        l.set_nonblocking(true)?;
        Ok(Listener {
            socket: Socket::Unix(l, path.to_path_buf()),
            service,
        })
    }

    /// The bound address (TCP), e.g. to learn the port of `127.0.0.1:0`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(..) => None,
        }
    }
}

/// Connections the kernel queues before `accept` (capped by `net.core.somaxconn`). The
/// standard library listens with 128: a burst of a few hundred connects (an MTA flushing
/// its queue, many POP3 clients polling on the minute) overflowed it, and the kernel then
/// silently dropped handshakes, leaving clients connected to nothing until they timed out.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Listen again on a bound socket with [`LISTEN_BACKLOG`] (Linux lets `listen(2)` change
/// the backlog of a listening socket).
fn set_backlog(l: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    // SAFETY: the descriptor is a bound, listening socket owned by the caller.
    if unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Server-wide settings.
pub struct ServerSettings {
    /// Most connections served at once, over all listeners; more are told to come back.
    pub max_connections: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Stack size of a session thread: sessions keep their buffers on the heap.
const SESSION_STACK: usize = 1024 * 1024;

/// Accept on every listener until `shutdown` is raised, then stop accepting, remove the
/// UNIX sockets, and wait for the sessions in flight to end (idle ones end at once, busy
/// ones when their transaction is done).
pub fn serve(
    listeners: Vec<Listener>,
    settings: ServerSettings,
    shutdown: Shutdown,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !shutdown.raised() {
        let mut fds: Vec<nix::poll::PollFd> = listeners
            .iter()
            .map(|l| {
                let fd = match &l.socket {
                    Socket::Tcp(s) => s.as_fd(),
                    Socket::Unix(s, _) => s.as_fd(),
                };
                nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)
            })
            .collect();
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(250u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        threads.retain(|t| !t.is_finished());
        for l in &listeners {
            loop {
                let accepted = match &l.socket {
                    Socket::Tcp(s) => s.accept().map(|(c, a)| (Transport::Tcp(c), Peer::Tcp(a))),
                    Socket::Unix(s, _) => s.accept().map(|(c, _)| (Transport::Unix(c), Peer::Unix)),
                };
                let (transport, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        ::log::warn!("{}: accept failed: {e}", l.service.name);
                        break;
                    }
                };
                if let Some(t) = start_session(transport, peer, l, &settings, &shutdown, &active) {
                    threads.push(t);
                }
            }
        }
    }
    for l in &listeners {
        if let Socket::Unix(_, path) = &l.socket {
            let _ = std::fs::remove_file(path);
        }
    }
    drop(listeners);
    let n = threads.iter().filter(|t| !t.is_finished()).count();
    if n > 0 {
        ::log::info!("shutting down: waiting for {n} session(s) to finish");
    }
    for t in threads {
        let _ = t.join();
    }
    ::log::info!("shut down");
    Ok(())
}

fn start_session(
    transport: Transport,
    peer: Peer,
    l: &Listener,
    settings: &ServerSettings,
    shutdown: &Shutdown,
    active: &Arc<AtomicUsize>,
) -> Option<std::thread::JoinHandle<()>> {
    // Accepted sockets inherit O_NONBLOCK on some systems; sessions block (with timeouts).
    // TCP_NODELAY: replies are already written in large pieces; without it the short last
    // segment of each reply waits for the client's delayed ACK (~40 ms per RETR).
    let blocking = match &transport {
        Transport::Tcp(s) => s.set_nonblocking(false).and_then(|()| s.set_nodelay(true)),
        Transport::Unix(s) => s.set_nonblocking(false),
        _ => Ok(()),
    };
    if let Err(e) = blocking {
        ::log::warn!("{}: cannot set up connection: {e}", l.service.name);
        return None;
    }
    if active.fetch_add(1, Ordering::SeqCst) >= settings.max_connections {
        active.fetch_sub(1, Ordering::SeqCst);
        ::log::warn!(
            "{}: refused {peer:?}: {} connections already",
            l.service.name,
            settings.max_connections
        );
        let mut t = transport;
        let _ = io::Write::write_all(&mut t, l.service.busy_reply);
        return None;
    }
    let service = l.service.clone();
    let tls = settings.tls.clone();
    let shutdown = shutdown.clone();
    let active2 = active.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("{}-session", service.name))
        .stack_size(SESSION_STACK)
        .spawn(move || {
            let _guard = Decrement(active2);
            let mut ch =
                match SocketChannel::new(transport, peer.clone(), tls, shutdown, service.idle) {
                    Ok(ch) => ch,
                    Err(e) => {
                        ::log::warn!("{}: {peer:?}: {e}", service.name);
                        return;
                    }
                };
            if service.implicit_tls {
                if let Err(e) = ch.accept_tls() {
                    ::log::info!("{}: {peer:?}: TLS handshake failed: {e}", service.name);
                    return;
                }
            }
            (service.handler)(&mut ch);
        });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            active.fetch_sub(1, Ordering::SeqCst);
            ::log::error!("{}: cannot start a session thread: {e}", l.service.name);
            None
        }
    }
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raise `shutdown` on SIGTERM and SIGINT.
pub fn shutdown_on_signals(shutdown: &Shutdown) -> io::Result<()> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.flag())?;
    }
    Ok(())
}
