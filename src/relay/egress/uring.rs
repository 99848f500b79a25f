//! One frame written to many sockets with one system call: the fan-out's
//! direct writes submitted to an `io_uring` in batches (`--egress-mode
//! uring`).
//!
//! Each receiver's write is a `SEND` request with `MSG_DONTWAIT`, so the
//! kernel performs it inline during submission and never parks it: when
//! [`send_batch`] returns, every request has completed and the frame's
//! memory is no longer used by the kernel. Results come back per socket,
//! exactly what a non-blocking `send` would have returned, and the caller
//! treats them the same way (the rest of a partial write is queued).
//!
//! The ring is per thread (runtime workers each get one on first use). Where
//! `io_uring` is unavailable (other systems, a kernel without it, a
//! seccomp profile refusing it), [`send_batch`] says so once per thread and
//! the caller writes with one `send` per socket, as in `direct` mode.

use std::io;
use std::os::fd::RawFd;

/// Most sends in one submission.
pub(crate) const BATCH: usize = 256;

/// Frames (and queued bytes) up to this size are written in batches. Above
/// it, copying into the socket costs far more than the system call, and a
/// batch would hold every receiver's lock for all of its copies: larger
/// frames get one `send` each, as in `direct` mode.
pub(crate) const BATCH_MAX_BYTES: usize = 64 * 1024;

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::RawFd;

    use io_uring::{opcode, types, IoUring};

    use super::BATCH;

    /// A thread's ring: not tried yet, working, or unavailable here.
    enum Ring {
        Untried,
        Ready(Box<IoUring>),
        Unavailable,
    }

    thread_local! {
        static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
    }

    /// One request to build: a send of one buffer or a writev.
    pub(super) enum Op<'a> {
        Send(&'a [u8]),
        Writev(&'a [libc::iovec]),
    }

    pub(super) fn batch<'a>(
        op: &dyn Fn(usize) -> (RawFd, Op<'a>),
        n: usize,
        results: &mut Vec<io::Result<usize>>,
    ) -> bool {
        RING.with(|cell| {
            let mut ring = cell.borrow_mut();
            if matches!(*ring, Ring::Untried) {
                *ring = match IoUring::new((BATCH * 2) as u32) {
                    Ok(r) => Ring::Ready(Box::new(r)),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring unavailable: --egress-mode uring writes with one send per socket on this thread");
                        Ring::Unavailable
                    }
                };
            }
            let Ring::Ready(r) = &mut *ring else {
                return false;
            };
            let base = results.len();
            match submit(r, op, n, results) {
                Ok(()) => true,
                Err(Failed { error, submitted }) => {
                    tracing::warn!(%error, "io_uring failed: writing with one send per socket on this thread from now on");
                    // A ring that failed may hold stale completions: drop it
                    // (the kernel finishes what is in flight).
                    *ring = Ring::Unavailable;
                    if !submitted {
                        results.truncate(base);
                        return false;
                    }
                    // Some writes may have happened: never write those
                    // again (a frame twice would break the stream); the
                    // ones whose result is unknown count as failed.
                    results.resize_with(base + n, unknown);
                    true
                }
            }
        })
    }

    /// A batch that failed, and whether any request had been submitted.
    struct Failed {
        error: io::Error,
        submitted: bool,
    }

    /// The result of a request whose completion never came.
    fn unknown() -> io::Result<usize> {
        Err(io::Error::other("io_uring: no completion"))
    }

    fn submit<'a>(
        ring: &mut IoUring,
        op: &dyn Fn(usize) -> (RawFd, Op<'a>),
        n: usize,
        results: &mut Vec<io::Result<usize>>,
    ) -> Result<(), Failed> {
        let fail = |error: io::Error, submitted: bool| Failed { error, submitted };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let base = results.len();
        let mut from = 0;
        while from < n {
            let count = (n - from).min(BATCH);
            {
                let mut sq = ring.submission();
                for i in 0..count {
                    let e = match op(from + i) {
                        (fd, Op::Send(buf)) => {
                            let len = u32::try_from(buf.len())
                                .map_err(|_| fail(io::ErrorKind::InvalidInput.into(), from > 0))?;
                            opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
                                .flags(flags)
                                .build()
                        }
                        (fd, Op::Writev(iov)) => {
                            let len = u32::try_from(iov.len())
                                .map_err(|_| fail(io::ErrorKind::InvalidInput.into(), from > 0))?;
                            opcode::Writev::new(types::Fd(fd), iov.as_ptr(), len)
                                .rw_flags(libc::RWF_NOWAIT)
                                .build()
                        }
                    }
                    .user_data(i as u64);
                    // SAFETY: the buffers outlive the request: every request
                    // of this round completes (inline, non-blocking) before
                    // the loop below returns, and the queue has room for
                    // BATCH entries (it was made with twice that).
                    unsafe { sq.push(&e) }
                        .map_err(|_| fail(io::ErrorKind::OutOfMemory.into(), from > 0))?;
                }
            }
            let start = results.len();
            results.extend((0..count).map(|_| unknown()));
            let mut reaped = 0;
            while reaped < count {
                match ring.submit_and_wait(count - reaped) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Whether the kernel took any of them is not known.
                    Err(e) => return Err(fail(e, true)),
                }
                for c in ring.completion() {
                    let i = c.user_data() as usize;
                    let Some(slot) = results.get_mut(start + i) else {
                        return Err(fail(io::ErrorKind::InvalidData.into(), true));
                    };
                    let r = c.result();
                    *slot = if r >= 0 {
                        Ok(r as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-r))
                    };
                    reaped += 1;
                }
            }
            from += count;
        }
        debug_assert_eq!(results.len(), base + n);
        Ok(())
    }
}

/// Writes `buf` to every socket of `fds` (non-blocking), appending one
/// result per socket, in order, to `results`. `false` (nothing appended)
/// when this thread has no usable ring: the caller writes them itself.
pub(crate) fn send_batch(buf: &[u8], fds: &[RawFd], results: &mut Vec<io::Result<usize>>) -> bool {
    #[cfg(target_os = "linux")]
    {
        imp::batch(&|i| (fds[i], imp::Op::Send(buf)), fds.len(), results)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (buf, fds, results);
        false
    }
}

/// Writes each `(socket, iovecs)` of `writes` with a non-blocking `writev`
/// (a `send` when there is one iovec),
/// appending one result per write, in order, to `results`; `false`
/// (nothing appended) when this thread has no usable ring. The iovecs must
/// point to memory that stays valid until this returns.
#[cfg(target_os = "linux")]
pub(crate) fn writev_batch(
    writes: &[(RawFd, &[libc::iovec])],
    results: &mut Vec<io::Result<usize>>,
) -> bool {
    imp::batch(
        &|i| match writes[i].1 {
            // One chunk: a plain send, which skips the file layer that a
            // writev goes through (most flushes of a lap at low rates).
            [one] => (
                writes[i].0,
                // SAFETY: the caller keeps what the iovec points to valid
                // until this returns.
                imp::Op::Send(unsafe {
                    std::slice::from_raw_parts(one.iov_base as *const u8, one.iov_len)
                }),
            ),
            iov => (writes[i].0, imp::Op::Writev(iov)),
        },
        writes.len(),
        results,
    )
}

/// [`writev_batch`] where there is no io_uring: the caller writes them.
#[cfg(not(target_os = "linux"))]
pub(crate) fn writev_batch(
    writes: &[(RawFd, &[libc::iovec])],
    results: &mut Vec<io::Result<usize>>,
) -> bool {
    let _ = (writes, results);
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn every_socket_gets_the_bytes_and_a_full_one_would_block() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = Vec::new();
        for _ in 0..(BATCH + 3) {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            pairs.push((c, s));
        }
        let fds: Vec<RawFd> = pairs.iter().map(|(_, s)| s.as_raw_fd()).collect();
        let mut results = Vec::new();
        if !send_batch(b"hello", &fds, &mut results) {
            // No io_uring here (a seccomp profile, an old kernel): the
            // relay falls back the same way; nothing more to check.
            return;
        }
        assert_eq!(results.len(), fds.len());
        for (r, (c, _)) in results.iter().zip(&mut pairs) {
            assert_eq!(r.as_ref().ok(), Some(&5));
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hello");
        }
        // Fill one socket until the kernel refuses more: WouldBlock, as a
        // non-blocking send says it.
        let big = vec![7u8; 1 << 20];
        let one = [fds[0]];
        let mut saw_block = false;
        for _ in 0..256 {
            let mut r = Vec::new();
            assert!(send_batch(&big, &one, &mut r));
            if let Err(e) = &r[0] {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                saw_block = true;
                break;
            }
        }
        assert!(saw_block, "a socket nobody reads fills up");
    }

    #[test]
    fn writev_batch_writes_every_socket_its_own_chunks_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            pairs.push((c, s));
        }
        let chunks: Vec<Vec<Vec<u8>>> = (0..3u8)
            .map(|i| vec![vec![i; 3], vec![i + 10; 5], vec![i + 20; 1]])
            .collect();
        let iovs: Vec<Vec<libc::iovec>> = chunks
            .iter()
            .map(|cs| {
                cs.iter()
                    .map(|c| libc::iovec {
                        iov_base: c.as_ptr() as *mut libc::c_void,
                        iov_len: c.len(),
                    })
                    .collect()
            })
            .collect();
        let writes: Vec<(RawFd, &[libc::iovec])> = pairs
            .iter()
            .zip(&iovs)
            .map(|((_, s), iov)| (s.as_raw_fd(), &iov[..]))
            .collect();
        let mut results = Vec::new();
        if !writev_batch(&writes, &mut results) {
            return;
        }
        for ((r, (c, _)), cs) in results.iter().zip(&mut pairs).zip(&chunks) {
            assert_eq!(r.as_ref().ok(), Some(&9));
            let mut b = [0u8; 9];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b.to_vec(), cs.concat());
        }
        // A socket nobody reads fills up: short writes, then WouldBlock,
        // never a blocked thread.
        let big = vec![7u8; 1 << 20];
        let iov = [libc::iovec {
            iov_base: big.as_ptr() as *mut libc::c_void,
            iov_len: big.len(),
        }];
        let one = [(pairs[0].1.as_raw_fd(), &iov[..])];
        let mut saw_block = false;
        for _ in 0..256 {
            let mut r = Vec::new();
            assert!(writev_batch(&one, &mut r));
            match &r[0] {
                Ok(n) => assert!(*n <= big.len()),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    saw_block = true;
                    break;
                }
            }
        }
        assert!(saw_block, "a socket nobody reads fills up");
    }
}
