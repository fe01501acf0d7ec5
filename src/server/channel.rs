//! The byte channel a protocol session talks through: line reads with a length limit and
//! the line ending reported (so DATA can refuse bare CR/LF), bounded raw reads (BDAT,
//! literals), writes, STARTTLS, the peer's identity, and the server's shutdown signal.
//!
//! Sessions are written against [`Channel`] only, so the same session code runs over a TCP
//! socket, a UNIX socket, TLS, or an in-memory script in tests ([`MemChannel`], which feeds
//! its input in chunks of any size to prove the parsers do not depend on how bytes arrive).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A UNIX-socket client: trusted by the socket's file permissions, as Cyrus trusts it.
    Unix,
    /// In-memory test channel.
    Test,
}

impl Peer {
    pub fn is_loopback(&self) -> bool {
        match self {
            Peer::Tcp(a) => a.ip().is_loopback(),
            Peer::Unix | Peer::Test => false,
        }
    }

    /// The client host as Cyrus writes it into a Received header: `localhost [127.0.0.1]`
    /// for loopback TCP, `[a.b.c.d]` for other TCP peers, `[unix socket]` for UNIX sockets.
    pub fn received_host(&self) -> String {
        match self {
            Peer::Tcp(a) if a.ip().is_loopback() => format!("localhost [{}]", a.ip()),
            Peer::Tcp(a) => format!("[{}]", a.ip()),
            Peer::Unix => "[unix socket]".into(),
            Peer::Test => "[test]".into(),
        }
    }
}

/// How a line read off the wire ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// CR LF: the only ending RFC 5321 / 1939 allow.
    CrLf,
    /// LF without CR before it (an SMTP-smuggling ingredient when it precedes a dot).
    BareLf,
}

/// One line without its ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub ending: Ending,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("client idle for more than {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the client")]
    Closed,
    #[error("server shutting down")]
    Shutdown,
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The shutdown signal shared by the listener and every session: once raised, idle
/// sessions end at their next read; busy ones (inside a transaction) finish first.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// What a session needs from its connection.
pub trait Channel {
    /// Read one line of at most `limit` bytes (ending excluded). A longer line is consumed
    /// up to its end and reported as [`ChannelError::LineTooLong`] so the session can reply
    /// and go on. EOF in the middle of a line is [`ChannelError::Closed`].
    fn read_line(&mut self, limit: usize) -> Result<Line, ChannelError>;
    /// Read exactly `n` raw bytes, handing them to `sink` in pieces (never all at once).
    fn read_exact_to(
        &mut self,
        n: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ChannelError>;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ChannelError>;
    fn flush(&mut self) -> Result<(), ChannelError>;
    /// True when the client has sent bytes not yet read (PIPELINING: replies may be held
    /// back and flushed together).
    fn has_buffered_input(&self) -> bool;
    /// Whether STARTTLS/STLS can be offered (TLS configured and not yet active).
    fn tls_available(&self) -> bool;
    fn tls_active(&self) -> bool;
    /// Switch to TLS (server side). Bytes the client pipelined after the STARTTLS command
    /// are discarded, as RFC 3207 §4.2 demands (the command-injection attack).
    fn start_tls(&mut self) -> Result<(), ChannelError>;
    fn peer(&self) -> &Peer;
    /// A session marks itself busy while a transaction is open; SIGTERM then lets it
    /// finish instead of ending it at the next read.
    fn set_busy(&mut self, busy: bool);
    /// Set the idle timeout for subsequent reads.
    fn set_idle_timeout(&mut self, timeout: Duration);
}

/// A transport: plain TCP, UNIX, or TLS over TCP.
pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    /// Placeholder while switching to TLS.
    Gone,
}

impl Transport {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.set_read_timeout(t),
            Transport::Unix(s) => s.set_read_timeout(t),
            Transport::Tls(s) => s.sock.set_read_timeout(t),
            Transport::Gone => Ok(()),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.set_write_timeout(t),
            Transport::Unix(s) => s.set_write_timeout(t),
            Transport::Tls(s) => s.sock.set_write_timeout(t),
            Transport::Gone => Ok(()),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Unix(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
            Transport::Gone => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Unix(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
            Transport::Gone => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            Transport::Unix(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
            Transport::Gone => Ok(()),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How often a blocked read wakes up to look at the shutdown flag and the idle deadline.
const POLL: Duration = Duration::from_millis(250);
const READ_BUF: usize = 16 * 1024;

/// Input buffering shared by the socket channel and the in-memory one.
#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
}

impl InBuf {
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

/// Shared line logic over a "fill" function that appends bytes to the buffer (returns
/// 0 at EOF).
fn read_line_with(
    inbuf: &mut InBuf,
    limit: usize,
    fill: &mut dyn FnMut(&mut Vec<u8>) -> Result<usize, ChannelError>,
) -> Result<Line, ChannelError> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let pending = inbuf.pending();
        if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let take = pending.get(..pos).unwrap_or(&[]);
            if !too_long {
                line.extend_from_slice(take);
            }
            inbuf.consume(pos + 1);
            if too_long || line.len() > limit.saturating_add(1) {
                return Err(ChannelError::LineTooLong { limit });
            }
            let ending = if line.last() == Some(&b'\r') {
                line.pop();
                Ending::CrLf
            } else {
                Ending::BareLf
            };
            if line.len() > limit {
                return Err(ChannelError::LineTooLong { limit });
            }
            return Ok(Line {
                bytes: line,
                ending,
            });
        }
        if !too_long {
            line.extend_from_slice(pending);
            // +1: a CR that belongs to the ending may still be in the buffer.
            if line.len() > limit.saturating_add(1) {
                too_long = true;
                line = Vec::new();
            }
        }
        let n = pending.len();
        inbuf.consume(n);
        if fill(&mut inbuf.buf)? == 0 {
            return Err(ChannelError::Closed);
        }
    }
}

fn read_exact_with(
    inbuf: &mut InBuf,
    mut n: u64,
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    fill: &mut dyn FnMut(&mut Vec<u8>) -> Result<usize, ChannelError>,
) -> Result<(), ChannelError> {
    while n > 0 {
        let pending = inbuf.pending();
        if !pending.is_empty() {
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(pending.len());
            sink(pending.get(..take).unwrap_or(&[]))?;
            inbuf.consume(take);
            n -= take as u64;
            continue;
        }
        if fill(&mut inbuf.buf)? == 0 {
            return Err(ChannelError::Closed);
        }
    }
    Ok(())
}

/// A real connection.
pub struct SocketChannel {
    transport: Transport,
    inbuf: InBuf,
    out: Vec<u8>,
    peer: Peer,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
    busy: bool,
    idle: Duration,
}

impl SocketChannel {
    pub fn new(
        transport: Transport,
        peer: Peer,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: Shutdown,
        idle: Duration,
    ) -> io::Result<SocketChannel> {
        // Writes wake up as reads do: a client that stops reading must not keep a session
        // (and the SIGTERM drain) blocked in write(2) forever.
        transport.set_read_timeout(Some(POLL))?;
        transport.set_write_timeout(Some(POLL))?;
        Ok(SocketChannel {
            transport,
            inbuf: InBuf::default(),
            out: Vec::new(),
            peer,
            tls,
            shutdown,
            busy: false,
            idle,
        })
    }

    /// Wrap an accepted TCP stream in TLS at once (POP3S, LMTPS).
    pub fn accept_tls(&mut self) -> Result<(), ChannelError> {
        self.start_tls()
    }

    /// After a read or write timed out at [`POLL`]: go on waiting, or give up because the
    /// server is shutting down (and the session is not busy) or `deadline` has passed.
    fn keep_waiting(&self, deadline: Instant) -> Result<(), ChannelError> {
        if self.shutdown.raised() && !self.busy {
            return Err(ChannelError::Shutdown);
        }
        if Instant::now() >= deadline {
            return Err(ChannelError::Timeout(self.idle));
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut Vec<u8>) -> Result<usize, ChannelError> {
        let deadline = Instant::now() + self.idle;
        let mut chunk = [0u8; READ_BUF];
        loop {
            if self.shutdown.raised() && !self.busy {
                return Err(ChannelError::Shutdown);
            }
            match self.transport.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => self.keep_waiting(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Channel for SocketChannel {
    fn read_line(&mut self, limit: usize) -> Result<Line, ChannelError> {
        self.flush()?;
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let r = read_line_with(&mut inbuf, limit, &mut |b| self.fill(b));
        self.inbuf = inbuf;
        r
    }

    fn read_exact_to(
        &mut self,
        n: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ChannelError> {
        self.flush()?;
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let r = read_exact_with(&mut inbuf, n, sink, &mut |b| self.fill(b));
        self.inbuf = inbuf;
        r
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.out.extend_from_slice(bytes);
        if self.out.len() >= READ_BUF {
            self.flush()?;
        }
        Ok(())
    }

    /// Write out everything buffered. The socket's write timeout is [`POLL`], so a client
    /// that does not read makes this give up after the idle timeout, or at once on
    /// shutdown unless the session is busy.
    fn flush(&mut self) -> Result<(), ChannelError> {
        let deadline = Instant::now() + self.idle;
        let mut done = 0;
        while let Some(rest) = self.out.get(done..).filter(|r| !r.is_empty()) {
            match self.transport.write(rest) {
                Ok(n) if n > 0 => done += n,
                // rustls takes no more plaintext while its TLS buffer is full: drain it.
                Ok(_) => match self.transport.flush() {
                    Ok(()) => {}
                    Err(e) if is_timeout(&e) => self.keep_waiting(deadline)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                },
                Err(e) if is_timeout(&e) => self.keep_waiting(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        loop {
            match self.transport.flush() {
                Ok(()) => return Ok(()),
                Err(e) if is_timeout(&e) => self.keep_waiting(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn has_buffered_input(&self) -> bool {
        !self.inbuf.pending().is_empty()
    }

    fn tls_available(&self) -> bool {
        self.tls.is_some() && matches!(self.transport, Transport::Tcp(_))
    }

    fn tls_active(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    fn start_tls(&mut self) -> Result<(), ChannelError> {
        self.flush()?;
        let config = self
            .tls
            .clone()
            .ok_or_else(|| ChannelError::Tls("no certificate configured".into()))?;
        let tcp = match std::mem::replace(&mut self.transport, Transport::Gone) {
            Transport::Tcp(s) => s,
            other => {
                self.transport = other;
                return Err(ChannelError::Tls("TLS is not possible here".into()));
            }
        };
        // RFC 3207 §4.2: nothing the client sent before the handshake may be used after it.
        self.inbuf.clear();
        let conn =
            rustls::ServerConnection::new(config).map_err(|e| ChannelError::Tls(e.to_string()))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let deadline = Instant::now() + self.idle;
        while stream.conn.is_handshaking() {
            if self.shutdown.raised() {
                return Err(ChannelError::Shutdown);
            }
            match stream.conn.complete_io(&mut stream.sock) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(ChannelError::Timeout(self.idle));
                    }
                }
                Err(e) => return Err(ChannelError::Tls(e.to_string())),
            }
        }
        self.transport = Transport::Tls(Box::new(stream));
        Ok(())
    }

    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle = timeout;
    }
}

/// An in-memory channel for session tests: the script is fed `chunk` bytes per read, and
/// everything the session writes is collected. `start_tls` just records that it happened.
pub struct MemChannel {
    input: Vec<u8>,
    pos: usize,
    chunk: usize,
    inbuf: InBuf,
    pub output: Vec<u8>,
    pub tls: bool,
    pub tls_offered: bool,
    peer: Peer,
    pub busy: bool,
}

impl MemChannel {
    pub fn new(input: &[u8], chunk: usize) -> MemChannel {
        MemChannel {
            input: input.to_vec(),
            pos: 0,
            chunk: chunk.max(1),
            inbuf: InBuf::default(),
            output: Vec::new(),
            tls: false,
            tls_offered: false,
            peer: Peer::Test,
            busy: false,
        }
    }

    pub fn with_peer(mut self, peer: Peer) -> MemChannel {
        self.peer = peer;
        self
    }

    /// Offer STARTTLS/STLS (pretend a certificate is configured).
    pub fn with_tls(mut self) -> MemChannel {
        self.tls_offered = true;
        self
    }

    pub fn output_str(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    fn fill_from(input: &[u8], pos: &mut usize, chunk: usize, buf: &mut Vec<u8>) -> usize {
        let rest = input.get(*pos..).unwrap_or(&[]);
        let n = rest.len().min(chunk);
        buf.extend_from_slice(rest.get(..n).unwrap_or(&[]));
        *pos += n;
        n
    }
}

impl Channel for MemChannel {
    fn read_line(&mut self, limit: usize) -> Result<Line, ChannelError> {
        let (input, pos, chunk) = (&self.input, &mut self.pos, self.chunk);
        read_line_with(&mut self.inbuf, limit, &mut |b| {
            Ok(MemChannel::fill_from(input, pos, chunk, b))
        })
    }

    fn read_exact_to(
        &mut self,
        n: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ChannelError> {
        let (input, pos, chunk) = (&self.input, &mut self.pos, self.chunk);
        read_exact_with(&mut self.inbuf, n, sink, &mut |b| {
            Ok(MemChannel::fill_from(input, pos, chunk, b))
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.output.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }

    fn has_buffered_input(&self) -> bool {
        !self.inbuf.pending().is_empty()
    }

    fn tls_available(&self) -> bool {
        self.tls_offered && !self.tls
    }

    fn tls_active(&self) -> bool {
        self.tls
    }

    fn start_tls(&mut self) -> Result<(), ChannelError> {
        if !self.tls_offered {
            return Err(ChannelError::Tls("no certificate configured".into()));
        }
        self.inbuf.clear();
        self.tls = true;
        Ok(())
    }

    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    fn set_idle_timeout(&mut self, _timeout: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], chunk: usize, limit: usize) -> Vec<Result<Line, String>> {
        let mut ch = MemChannel::new(input, chunk);
        let mut out = Vec::new();
        loop {
            match ch.read_line(limit) {
                Err(ChannelError::Closed) => return out,
                r => out.push(r.map_err(|e| e.to_string())),
            }
        }
    }

    #[test]
    fn lines_are_the_same_at_every_chunk_size() {
        let input = b"LHLO x\r\nbare\nAAAAAAAAAAAAAAAAAAAA\r\nok\r\n\r\n";
        let want = lines(input, 4096, 10);
        assert_eq!(want.len(), 5);
        assert_eq!(
            want[1],
            Ok(Line {
                bytes: b"bare".to_vec(),
                ending: Ending::BareLf
            })
        );
        assert!(want[2].is_err(), "over-long line is reported");
        assert_eq!(want[3].as_ref().unwrap().bytes, b"ok");
        assert_eq!(want[4].as_ref().unwrap().bytes, b"");
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(lines(input, chunk, 10), want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let got = lines(b"12345\r\n123456\r\n", 1, 5);
        assert_eq!(got[0].as_ref().unwrap().bytes, b"12345");
        assert!(got[1].is_err());
    }

    #[test]
    fn read_exact_streams_in_pieces() {
        for chunk in [1, 2, 3, 7, 64] {
            let mut ch = MemChannel::new(b"BDAT 5\r\nhelloQUIT\r\n", chunk);
            assert_eq!(ch.read_line(100).unwrap().bytes, b"BDAT 5");
            let mut got = Vec::new();
            ch.read_exact_to(5, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, b"hello");
            assert_eq!(ch.read_line(100).unwrap().bytes, b"QUIT");
        }
    }

    #[test]
    fn starttls_discards_pipelined_input() {
        let mut ch = MemChannel::new(b"STARTTLS\r\nMAIL FROM:<evil>\r\n", 4096).with_tls();
        assert_eq!(ch.read_line(100).unwrap().bytes, b"STARTTLS");
        ch.start_tls().unwrap();
        assert!(matches!(ch.read_line(100), Err(ChannelError::Closed)));
    }
}
