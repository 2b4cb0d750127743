//! Sockets: the per-worker SO_REUSEPORT listeners, the options every stream gets, and the
//! process's fd limit (which decides how many streams fit).
//!
//! monoio's own `TcpListener::bind` sets SO_REUSEPORT unconditionally, so binding a port that
//! another process already serves would silently share its traffic. We bind through socket2
//! instead, after a probe without SO_REUSEPORT that fails with EADDRINUSE if anyone holds the port.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` listeners on `addr` sharing one port through SO_REUSEPORT. With port 0, the
/// kernel picks the port once and every listener gets the same one.
/// The listeners carry the stream options, which accepted sockets inherit (see [`Inherited`]).
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    opts: StreamOptions,
) -> io::Result<Vec<TcpListener>> {
    let domain = Domain::for_address(addr);
    // The probe: SO_REUSEADDR (so TIME_WAIT leftovers do not block a restart) but not
    // SO_REUSEPORT, so any listener already on the port, reuseport or not, makes it fail.
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("{addr} is already in use by another socket (is another server running?)"),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot bind {addr}: {e}"))
        }
    })?;
    let bound = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an inet address"))?;
    drop(probe);

    (0..count)
        .map(|_| {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            opts.apply(&socket2::SockRef::from(&s))?;
            s.bind(&bound.into())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {bound}: {e}")))?;
            s.listen(backlog)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .collect()
}

/// The options every connection gets: TCP_NODELAY so a frame leaves at once, keepalive and
/// TCP_USER_TIMEOUT so a peer that vanished without a FIN is reaped by the kernel.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    pub user_timeout: Duration,
}

impl StreamOptions {
    fn keepalive() -> socket2::TcpKeepalive {
        socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_TIME)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES)
    }

    /// Sets every option on `s` (a listener or a connection).
    fn apply(&self, s: &socket2::SockRef<'_>) -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_tcp_keepalive(&Self::keepalive())?;
        s.set_tcp_user_timeout(Some(self.user_timeout))
    }

    /// Which options `s` carries as `apply` set them.
    fn carried(&self, s: &socket2::SockRef<'_>) -> Inherited {
        Inherited {
            nodelay: s.nodelay().unwrap_or(false),
            keepalive: s.keepalive().unwrap_or(false)
                && s.keepalive_time().ok() == Some(KEEPALIVE_TIME)
                && s.keepalive_interval().ok() == Some(KEEPALIVE_INTERVAL)
                && s.keepalive_retries().ok() == Some(KEEPALIVE_RETRIES),
            user_timeout: s.tcp_user_timeout().ok().flatten() == Some(self.user_timeout),
        }
    }
}

const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Which of the stream options an accepted socket takes over from its listener. Linux copies
/// them when it clones the listener into the new socket, so all three are expected; the server
/// checks it once at start ([`probe_inherited`]) and sets per stream only what did not carry
/// over, instead of five `setsockopt` calls on every new stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inherited {
    pub nodelay: bool,
    pub keepalive: bool,
    pub user_timeout: bool,
}

impl Inherited {
    pub fn all(&self) -> bool {
        self.nodelay && self.keepalive && self.user_timeout
    }

    /// `{"nodelay": true, ...}` for `/info` and `--probe-uring`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodelay": self.nodelay,
            "keepalive": self.keepalive,
            "user_timeout": self.user_timeout,
        })
    }
}

impl std::fmt::Display for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.nodelay, "nodelay"),
            (self.keepalive, "keepalive"),
            (self.user_timeout, "user_timeout"),
        ];
        let got: Vec<&str> = names.iter().filter(|(y, _)| *y).map(|(_, n)| *n).collect();
        if got.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&got.join(","))
        }
    }
}

/// Finds out which stream options an accepted socket inherits from its listener: a loopback
/// listener with the options set, one connection, and a look at the accepted end. Any failure
/// (no loopback, say) answers "none", which only costs the per-stream calls.
pub fn probe_inherited(opts: StreamOptions) -> Inherited {
    let probe = || -> io::Result<Inherited> {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        opts.apply(&socket2::SockRef::from(&listener))?;
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        listener.listen(1)?;
        let addr = listener
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no inet address"))?;
        let _client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        let (accepted, _) = listener.accept()?;
        Ok(opts.carried(&socket2::SockRef::from(&accepted)))
    };
    probe().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "socket option inheritance probe failed; setting every option per stream");
        Inherited::default()
    })
}

/// Sets on a new connection the stream options it did not inherit from the listener (nothing
/// at all when it inherited every one, the usual case).
pub fn tune_stream(fd: RawFd, opts: StreamOptions, inherited: Inherited) {
    if inherited.all() {
        return;
    }
    with_socket(fd, |s| {
        if !inherited.nodelay {
            let _ = s.set_nodelay(true);
        }
        if !inherited.keepalive {
            let _ = s.set_tcp_keepalive(&StreamOptions::keepalive());
        }
        if !inherited.user_timeout {
            let _ = s.set_tcp_user_timeout(Some(opts.user_timeout));
        }
    });
}

/// What a non-blocking `recv` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were appended.
    Got(usize),
    /// The peer closed (or the socket failed).
    Closed,
    /// Nothing there yet.
    WouldBlock,
}

/// Appends what the socket already holds to `buf`'s spare capacity (at most `max` bytes) with one
/// non-blocking `recv(2)`, without the ring: on io_uring a new connection's request is usually
/// there by the time its accept completes, and reading it directly saves the poll and recv round
/// trips through the ring. Only for io_uring sockets: the epoll driver tracks readiness itself.
pub fn try_recv(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> Recv {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    if len == 0 {
        return Recv::WouldBlock;
    }
    // SAFETY: `recv` writes at most `len` bytes into the vector's spare capacity, which is
    // allocated; `set_len` then covers exactly the bytes it wrote.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    match n {
        n if n > 0 => {
            unsafe { buf.set_len(buf.len() + n as usize) };
            Recv::Got(n as usize)
        }
        0 => Recv::Closed,
        _ => match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Recv::WouldBlock,
            _ => Recv::Closed,
        },
    }
}

/// Sends as much of `bytes` as the socket takes now with one non-blocking `send(2)` (no
/// SIGPIPE); returns how many went. A response head fits an empty send buffer, so a new stream's
/// head normally leaves here without a ring round trip; the caller writes any rest through the
/// runtime.
pub fn try_send(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: `send` reads at most `bytes.len()` bytes from a live slice.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n.max(0) as usize
}

/// Makes the socket's close send RST and drop unsent data, then shuts it down both ways. A write
/// parked on a full send buffer wakes up with EPIPE, so its future completes and the stream can be
/// dropped without cancelling anything.
///
/// Returns whether the shutdown took. A failure is logged (a peer that is already gone, ENOTCONN,
/// only at debug level): the write it was meant to end may then never return, which is why the
/// tick slab removes an aborted stream at the next tick whatever happened (`streams.rs`).
pub fn abort(fd: RawFd) -> bool {
    with_socket(fd, |s| {
        if let Err(e) = s.set_linger(Some(Duration::ZERO)) {
            tracing::warn!(fd, error = %e, "abort: cannot set SO_LINGER 0; the close will not reset");
        }
        match s.shutdown(std::net::Shutdown::Both) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                tracing::debug!(fd, error = %e, "abort: the peer is already gone");
                false
            }
            Err(e) => {
                tracing::warn!(fd, error = %e, "abort: cannot shut the socket down");
                false
            }
        }
    })
}

/// Whether the peer of an idle stream has gone: a FIN (or a reset) is waiting on the socket. One
/// non-blocking `recv(MSG_PEEK)` of a byte, which consumes nothing; a stream whose client is alive
/// and silent answers EAGAIN.
pub fn peer_gone(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a local.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false, // the client sent something: alive (odd, but not ours to judge)
        _ => !matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN | libc::EINTR)
        ),
    }
}

/// Half-closes our side (FIN after the queued response) so that a lingering close can drain.
pub fn shutdown_write(fd: RawFd) {
    with_socket(fd, |s| {
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
}

/// Runs `f` on a borrowed view of a raw socket fd.
fn with_socket<R>(fd: RawFd, f: impl FnOnce(&socket2::SockRef<'_>) -> R) -> R {
    // SAFETY: callers pass the fd of a socket they own and keep open for the call's duration.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(&socket2::SockRef::from(&fd))
}

/// The process's open-files limit after raising the soft limit to the hard one.
#[derive(Clone, Copy, Debug)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(FdLimit { soft, hard })
}

/// File descriptors kept back from the stream capacity: listeners, rings, eventfds, logs, and
/// connections still sending their request (including those told 503).
pub fn reserved_fds(workers: usize) -> u64 {
    64 + 8 * workers as u64
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). mimalloc asks for
/// huge pages on its arenas (`MADV_HUGEPAGE`), so with THP on (`always` or `madvise`) the heap
/// faults in 2 MiB at a time and a core's few hundred KiB of stream slots pin megabytes: an idle
/// stream measured 198 B of RSS with THP and 82 B without (results/fastpath). Nothing here gains
/// from huge pages (the hot data is small), so this costs nothing. Best effort: a kernel without
/// the call keeps THP.
pub fn disable_huge_pages() {
    // SAFETY: prctl with these arguments only sets a flag on the calling process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Logging is not up yet; the memory figure will say it.
        eprintln!(
            "ringcast: cannot disable transparent huge pages: {}",
            io::Error::last_os_error()
        );
    }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: StreamOptions = StreamOptions {
        user_timeout: Duration::from_secs(17),
    };

    #[test]
    fn listeners_share_one_port_and_refuse_a_taken_one() {
        let ls = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128, OPTS).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // a second server on the same port must fail, even though ours use SO_REUSEPORT
        let taken: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let err = bind_listeners(taken, 1, 128, OPTS).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");
    }

    /// On Linux an accepted socket carries the listener's options; whatever the probe says,
    /// a connection accepted from our listeners and then tuned ends up with all of them.
    #[test]
    fn accepted_streams_end_up_with_every_option() {
        let inherited = probe_inherited(OPTS);
        let ls = bind_listeners("127.0.0.1:0".parse().unwrap(), 1, 16, OPTS).unwrap();
        ls[0].set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(ls[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = ls[0].accept().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&accepted);
        tune_stream(fd, OPTS, inherited);
        let carried = OPTS.carried(&socket2::SockRef::from(&accepted));
        assert!(
            carried.all(),
            "after tuning: {carried:?} (probe said {inherited:?})"
        );
        // And a plain socket has none of them, so the check above can fail.
        let plain = std::net::TcpStream::connect(ls[0].local_addr().unwrap()).unwrap();
        assert!(!OPTS.carried(&socket2::SockRef::from(&plain)).all());
    }

    /// A loopback pair: (client, accepted server end, non-blocking).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (c, s)
    }

    /// Polls `f` until it holds (the peer's FIN crosses loopback at once, but do not assume it).
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn direct_recv_sees_nothing_then_bytes_then_the_close() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut c, s) = pair();
        let fd = s.as_raw_fd();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(try_recv(fd, &mut buf, 64), Recv::WouldBlock);
        c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(eventually(|| matches!(
            try_recv(fd, &mut buf, 64),
            Recv::Got(_)
        )));
        assert_eq!(buf, b"GET / HTTP/1.1\r\n");
        // `max` bounds what one call takes.
        c.write_all(b"abcdef").unwrap();
        assert!(eventually(|| try_recv(fd, &mut buf, 2) == Recv::Got(2)));
        assert!(buf.ends_with(b"ab"));
        drop(c);
        let mut rest = Vec::with_capacity(64);
        assert!(eventually(|| try_recv(fd, &mut rest, 64) == Recv::Closed
            || {
                rest.clear();
                false
            }));
    }

    #[test]
    fn direct_send_delivers_a_head_at_once() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (mut c, s) = pair();
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(try_send(s.as_raw_fd(), head), head.len());
        let mut got = vec![0u8; head.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, head);
    }

    #[test]
    fn a_gone_peer_is_seen_without_consuming_anything() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut c, s) = pair();
        let fd = s.as_raw_fd();
        assert!(!peer_gone(fd), "a silent live client");
        c.write_all(b"x").unwrap();
        assert!(eventually(|| {
            let mut b = Vec::with_capacity(1);
            // peeked data is not consumed: it is still there for a real read
            !peer_gone(fd) && try_recv(fd, &mut b, 1) == Recv::Got(1)
        }));
        drop(c);
        assert!(eventually(|| peer_gone(fd)), "the FIN is seen");
    }
}
