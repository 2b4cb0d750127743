//! A stream's socket while it rests in a slab slot between writes.
//!
//! monoio's `TcpStream` is about 90 bytes inline (a shared fd plus cached addresses) and points to
//! a separate ~48-byte shared-fd allocation: together, most of what an idle stream costs in user
//! memory. On io_uring nothing about a socket has to live in user space between writes: an op
//! names the fd and there is no poller registration. So on io_uring the slot keeps only the owned
//! fd, and a `TcpStream` is built around it for each write and taken apart again when the write
//! has returned (one small allocation and free per frame, no syscall). The epoll driver registers
//! every socket with its poller, which a rebuild would redo per frame with two `epoll_ctl` calls,
//! so there the stream stays whole, boxed so that the slot keeps its size either way.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use monoio::net::TcpStream;

/// A socket at rest: its bare fd (io_uring) or the whole stream (epoll).
pub enum Parked {
    Fd(OwnedFd),
    Stream(Box<TcpStream>),
}

impl Parked {
    /// Parks a stream that has no operation in flight (a write or read that has returned). Must
    /// run on the core's runtime, which decides the form.
    pub fn new(stream: TcpStream) -> Parked {
        if monoio::utils::is_legacy() {
            Parked::Stream(Box::new(stream))
        } else {
            // SAFETY: `into_raw_fd` gives up the stream's ownership of the fd without closing
            // it (it requires that no op holds the fd, which is the caller's contract), so the
            // fd is owned by nothing else.
            Parked::Fd(unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) })
        }
    }

    /// The stream again, for a write. On io_uring this only wraps the fd (no registration, no
    /// syscall) and does not fail; an error (the fd is then closed) counts as a failed write.
    pub fn take(self) -> io::Result<TcpStream> {
        match self {
            Parked::Fd(fd) => TcpStream::from_std(std::net::TcpStream::from(fd)),
            Parked::Stream(s) => Ok(*s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_parked_socket_is_two_words() {
        assert!(std::mem::size_of::<Option<Parked>>() <= 16);
    }

    /// Parking and taking back keeps the same open socket on either driver: bytes written
    /// through the rebuilt stream arrive, and the fd was never closed in between.
    #[test]
    fn a_socket_survives_parking_on_both_drivers() {
        async fn scenario() {
            {
                use monoio::io::AsyncWriteRentExt;
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let mut client =
                    std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server, _) = listener.accept().unwrap();
                server.set_nonblocking(true).unwrap();
                let fd = server.as_raw_fd();
                let mut stream = TcpStream::from_std(server).unwrap();
                for round in 0..3u8 {
                    let parked = Parked::new(stream);
                    stream = parked.take().expect("rebuilt");
                    assert_eq!(stream.as_raw_fd(), fd, "the same fd comes back");
                    let (res, _) = stream.write_all(vec![b'a' + round]).await;
                    res.unwrap();
                }
                let mut got = [0u8; 3];
                client.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"abc");
                client.write_all(b"x").unwrap();
            }
        }
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(scenario());
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .build()
                .unwrap()
                .block_on(scenario());
        }
    }
}
