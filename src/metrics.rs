//! Per-worker counters.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so the counters are plain relaxed
//! atomics on the worker's own cache lines: no contention on the hot path, and other threads (the
//! shutdown summary, later an admin endpoint) can still read them at any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a stream was closed.
#[derive(Clone, Copy, Debug)]
pub enum CloseReason {
    /// The peer closed or reset the connection (EPIPE, ECONNRESET).
    ClientGone,
    /// Any other write error (including TCP_USER_TIMEOUT).
    WriteError,
    /// `--max-skips` consecutive ticks skipped: the client does not read.
    SkipsExceeded,
    /// The server is shutting down.
    Shutdown,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters of one worker (see the module docs).
        #[derive(Debug, Default)]
        pub struct WorkerStats { $(pub $name: AtomicU64,)* }

        /// A plain copy of [`WorkerStats`], for summing and printing.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl WorkerStats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl std::ops::AddAssign for Snapshot {
            fn add_assign(&mut self, o: Snapshot) { $(self.$name += o.$name;)* }
        }
    };
}

counters! {
    connections_accepted,
    accept_errors,
    streams_open,
    streams_opened,
    closed_client_gone,
    closed_write_error,
    closed_skips,
    closed_shutdown,
    rejected_busy,
    rejected_timeout,
    rejected_bad_request,
    rejected_too_large,
    rejected_other,
    ok_requests,
    ticks,
    ticks_missed,
    tick_late_us_max,
    walk_us_total,
    walk_us_max,
    frames_sent,
    bytes_sent,
    frames_skipped,
}

impl WorkerStats {
    #[inline]
    pub fn add(&self, c: &AtomicU64, n: u64) {
        // Single writer: a load and a store, no locked read-modify-write.
        c.store(c.load(Relaxed) + n, Relaxed);
    }

    #[inline]
    pub fn inc(&self, c: &AtomicU64) {
        self.add(c, 1);
    }

    #[inline]
    pub fn max(&self, c: &AtomicU64, v: u64) {
        if v > c.load(Relaxed) {
            c.store(v, Relaxed);
        }
    }

    pub fn stream_opened(&self) {
        self.inc(&self.streams_opened);
        self.inc(&self.streams_open);
    }

    pub fn stream_closed(&self, why: CloseReason) {
        self.streams_open
            .store(self.streams_open.load(Relaxed).saturating_sub(1), Relaxed);
        self.inc(match why {
            CloseReason::ClientGone => &self.closed_client_gone,
            CloseReason::WriteError => &self.closed_write_error,
            CloseReason::SkipsExceeded => &self.closed_skips,
            CloseReason::Shutdown => &self.closed_shutdown,
        });
    }
}

impl Snapshot {
    pub fn streams_closed(&self) -> u64 {
        self.closed_client_gone + self.closed_write_error + self.closed_skips + self.closed_shutdown
    }

    pub fn rejected(&self) -> u64 {
        self.rejected_busy
            + self.rejected_timeout
            + self.rejected_bad_request
            + self.rejected_too_large
            + self.rejected_other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_up() {
        let a = WorkerStats::default();
        a.stream_opened();
        a.stream_opened();
        a.stream_closed(CloseReason::SkipsExceeded);
        a.add(&a.frames_sent, 10);
        let mut total = a.snapshot();
        total += a.snapshot();
        assert_eq!(total.streams_opened, 4);
        assert_eq!(total.streams_open, 2);
        assert_eq!(total.closed_skips, 2);
        assert_eq!(total.streams_closed(), 2);
        assert_eq!(total.frames_sent, 20);
    }
}
