//! A peer's socket: plain TCP, or TLS over TCP, behind the same
//! readiness-based, non-blocking calls (`readable`/`try_read`,
//! `writable`/`try_write`) the relay's read and write paths use.
//!
//! Plain TCP is the `TcpStream` itself, one enum tag away: its zero-copy
//! direct writes from the fan-out are unchanged. A TLS connection holds the
//! rustls session beside the socket; `try_write` encrypts what fits in the
//! session's outgoing buffer and writes what the socket takes, the rest of
//! the ciphertext waits in the session ([`Conn::flush_pending`]). TLS peers
//! are written only by their own task (queued egress), so one receiver's
//! encryption or full socket never holds up the fan-out.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::net::TcpStream;

/// A peer's connection; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) enum Conn {
    /// Plain TCP.
    Plain(Arc<TcpStream>),
    /// TLS over TCP.
    Tls(Arc<TlsConn>),
}

impl From<Arc<TcpStream>> for Conn {
    fn from(s: Arc<TcpStream>) -> Self {
        Conn::Plain(s)
    }
}

impl From<TcpStream> for Conn {
    fn from(s: TcpStream) -> Self {
        Conn::Plain(Arc::new(s))
    }
}

impl Conn {
    /// A TLS connection whose handshake is done.
    pub(crate) fn tls(tcp: TcpStream, session: ServerConnection) -> Self {
        Conn::Tls(Arc::new(TlsConn {
            tcp,
            session: Mutex::new(session),
        }))
    }

    /// Whether this is a TLS connection.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.tcp,
        }
    }

    /// Resolves when a read may make progress (for TLS: at once if the
    /// session already holds decrypted bytes).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(t) if t.has_input() => Ok(()),
            Conn::Tls(t) => t.tcp.readable().await,
        }
    }

    /// Resolves when the socket may take bytes.
    #[inline]
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// [`Conn::readable`] for a hand-written future: ready when a read may
    /// make progress; otherwise `cx` is woken when it may.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Conn::Plain(s) => s.poll_read_ready(cx),
            Conn::Tls(t) if t.has_input() => Poll::Ready(Ok(())),
            Conn::Tls(t) => t.tcp.poll_read_ready(cx),
        }
    }

    /// [`Conn::writable`] for a hand-written future.
    #[inline]
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Reads what is there without blocking (`WouldBlock` if nothing is);
    /// `Ok(0)` at the end of the stream.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_read(buf),
            Conn::Tls(t) => t.try_read(buf),
        }
    }

    /// [`Conn::try_read`] into a buffer's spare capacity.
    pub(crate) fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_read_buf(buf),
            Conn::Tls(t) => t.try_read_buf(buf),
        }
    }

    /// The socket's descriptor for writes the relay submits itself
    /// (`--egress-mode uring`); `None` for TLS, whose bytes must go through
    /// the TLS session.
    pub(crate) fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Conn::Plain(s) => Some(s.as_raw_fd()),
            Conn::Tls(_) => None,
        }
    }

    /// Writes (for TLS: encrypts) what the connection takes without
    /// blocking; `WouldBlock` if it takes nothing.
    #[inline]
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_write(buf),
            Conn::Tls(t) => t.try_write_vectored(&[IoSlice::new(buf)]),
        }
    }

    /// [`Conn::try_write`] of several buffers in one go.
    #[inline]
    pub(crate) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_write_vectored(bufs),
            Conn::Tls(t) => t.try_write_vectored(bufs),
        }
    }

    /// Writes out ciphertext a TLS session still holds; true while some
    /// remains (plain TCP holds none).
    #[inline]
    pub(crate) fn flush_pending(&self) -> io::Result<bool> {
        match self {
            Conn::Plain(_) => Ok(false),
            Conn::Tls(t) => t.flush(),
        }
    }

    /// Ends a TLS session cleanly (`close_notify`, best effort); nothing
    /// for plain TCP.
    pub(crate) fn close_notify(&self) {
        if let Conn::Tls(t) = self {
            let mut s = t.lock();
            s.send_close_notify();
            let _ = TlsConn::write_out(&t.tcp, &mut s);
        }
    }

    /// Closes the write side: `close_notify` for TLS, then a TCP half-close.
    pub(crate) fn shutdown_write(&self) {
        self.close_notify();
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }
}

/// A TLS session over a TCP socket, after its handshake.
pub(crate) struct TlsConn {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("tcp", &self.tcp).finish()
    }
}

/// The non-blocking socket calls as `Read`/`Write` for rustls.
struct Io<'a>(&'a TcpStream);

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsConn {
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the session holds decrypted bytes, the peer's close, or an
    /// error for the next read to report.
    fn has_input(&self) -> bool {
        self.lock().process_new_packets().map_or(true, |st| {
            st.plaintext_bytes_to_read() > 0 || st.peer_has_closed()
        })
    }

    /// Decrypts until the session holds plaintext: how much, 0 at the end
    /// of the stream, `WouldBlock` while the socket has no more. A session
    /// that failed says so (`readable` returned at once for it, so this
    /// must not just say `WouldBlock`).
    fn available(&self, s: &mut ServerConnection) -> io::Result<usize> {
        loop {
            let state = match s.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Tell the peer why (an alert), best effort.
                    let _ = Self::write_out(&self.tcp, s);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(state.plaintext_bytes_to_read());
            }
            if s.read_tls(&mut Io(&self.tcp))? == 0 {
                return Ok(0);
            }
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.lock();
        if self.available(&mut s)? == 0 {
            return Ok(0);
        }
        s.reader().read(buf)
    }

    /// Reads the plaintext there is into `buf`'s spare room (growing it
    /// only by what is copied: no zeroing of room left unused).
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut s = self.lock();
        let ready = self.available(&mut s)?;
        if ready == 0 {
            return Ok(0);
        }
        let start = buf.len();
        let take = ready.min((buf.capacity() - start).max(1));
        buf.resize(start + take, 0);
        let read = s.reader().read(&mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut s = self.lock();
        // Earlier ciphertext first: nothing new is encrypted while the
        // socket has not taken it (the session's buffer stays bounded).
        if Self::write_out(&self.tcp, &mut s)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = s.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match Self::write_out(&self.tcp, &mut s) {
            Ok(_) => Ok(n),
            // Accepted and encrypted: the rest goes out on the next call.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn flush(&self) -> io::Result<bool> {
        Self::write_out(&self.tcp, &mut self.lock())
    }

    /// Writes the session's ciphertext while the socket takes it; true if
    /// some remains.
    fn write_out(tcp: &TcpStream, s: &mut ServerConnection) -> io::Result<bool> {
        while s.wants_write() {
            match s.write_tls(&mut Io(tcp)) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// Sets `TCP_NOTSENT_LOWAT` (Linux, and the BSDs' equivalent is absent:
/// elsewhere nothing happens).
#[cfg(target_os = "linux")]
pub(crate) fn set_notsent_lowat(stream: &TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt on a socket this process owns, with a
    // c_int value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of!(v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn set_notsent_lowat(_: &TcpStream, _: u32) {}
