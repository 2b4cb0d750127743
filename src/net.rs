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
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
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
            s.set_nodelay(true)?;
            s.bind(&bound.into())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {bound}: {e}")))?;
            s.listen(backlog)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .collect()
}

/// Options for a socket that becomes a long-lived stream: TCP_NODELAY so a frame leaves at once,
/// keepalive and TCP_USER_TIMEOUT so a peer that vanished without a FIN is reaped by the kernel.
pub fn tune_stream(fd: RawFd, user_timeout: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    with_socket(fd, |s| {
        let _ = s.set_nodelay(true);
        let _ = s.set_tcp_keepalive(&ka);
        let _ = s.set_tcp_user_timeout(Some(user_timeout));
    });
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

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port_and_refuse_a_taken_one() {
        let ls = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // a second server on the same port must fail, even though ours use SO_REUSEPORT
        let taken: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let err = bind_listeners(taken, 1, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
