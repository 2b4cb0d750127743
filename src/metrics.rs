//! Per-worker counters and histograms.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so the counters are plain relaxed
//! atomics on the worker's own cache lines: no contention on the hot path, and other threads (the
//! shutdown summary, the admin endpoint) can read them at any time and add them up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a stream was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed or reset the connection (EPIPE, ECONNRESET).
    ClientGone,
    /// Any other write error (including TCP_USER_TIMEOUT).
    WriteError,
    /// `--max-skips` consecutive ticks skipped: the client does not read.
    SkipsExceeded,
    /// The server is shutting down.
    Shutdown,
    /// A channel stream's queue passed `--max-queued-bytes`: the client reads too slowly.
    QueueFull,
}

impl CloseReason {
    /// Why a failed write ends a stream.
    pub fn from_write_error(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted => CloseReason::ClientGone,
            _ => CloseReason::WriteError,
        }
    }
}

macro_rules! counters {
    (sum: $($name:ident),* ; max: $($mname:ident),* $(,)?) => {
        /// Counters of one worker (see the module docs).
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $(pub $name: AtomicU64,)*
            $(pub $mname: AtomicU64,)*
            /// Duration of each tick walk.
            pub walk: Histogram,
            /// How late each tick started after its wall-clock boundary.
            pub lateness: Histogram,
        }

        /// A plain copy of [`WorkerStats`], for summing and printing.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* $(pub $mname: u64,)* }

        impl WorkerStats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Relaxed),)*
                    $($mname: self.$mname.load(Relaxed),)*
                }
            }
        }

        impl std::ops::AddAssign for Snapshot {
            fn add_assign(&mut self, o: Snapshot) {
                $(self.$name += o.$name;)*
                $(self.$mname = self.$mname.max(o.$mname);)*
            }
        }
    };
}

counters! {
    sum:
    connections_accepted,
    accept_errors,
    streams_open,
    streams_opened,
    closed_client_gone,
    closed_write_error,
    closed_skips,
    closed_shutdown,
    closed_queue_full,
    channel_streams_open,
    events_delivered,
    event_handouts,
    events_replayed,
    replay_resets,
    heartbeats_skipped,
    heartbeats_not_needed,
    rejected_busy,
    rejected_timeout,
    rejected_bad_request,
    rejected_too_large,
    rejected_other,
    ok_requests,
    ticks,
    ticks_missed,
    frames_sent,
    frames_sent_direct,
    bytes_sent,
    frames_skipped,
    stuck_writes_reaped,
    reclaim_sweeps,
    streams_reclaimed;
    max:
    walk_us_max,
}

/// Upper bounds (µs) of the histogram buckets: 100 µs to 10 s, then +Inf.
pub const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket histogram with a single writer (Prometheus-style, cumulative when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record_us(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        let b = &self.buckets[i];
        b.store(b.load(Relaxed) + 1, Relaxed);
        self.sum_us.store(self.sum_us.load(Relaxed) + us, Relaxed);
    }

    /// (cumulative counts per bucket incl. +Inf, sum in µs).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS_US.len() + 1];
        let mut acc = 0;
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            acc += b.load(Relaxed);
            *c = acc;
        }
        HistogramSnapshot {
            cumulative: counts,
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A copy of a [`Histogram`]: cumulative bucket counts (the last is the total count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[BUCKETS_US.len()]
    }
}

impl std::ops::AddAssign for HistogramSnapshot {
    fn add_assign(&mut self, o: HistogramSnapshot) {
        for (a, b) in self.cumulative.iter_mut().zip(o.cumulative) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }
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

    #[inline]
    pub fn dec(&self, c: &AtomicU64) {
        c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
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
            CloseReason::QueueFull => &self.closed_queue_full,
        });
    }
}

impl Snapshot {
    pub fn streams_closed(&self) -> u64 {
        self.closed_client_gone
            + self.closed_write_error
            + self.closed_skips
            + self.closed_shutdown
            + self.closed_queue_full
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

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for us in [50, 100, 101, 3_000, 20_000_000] {
            h.record_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2); // <= 100 µs
        assert_eq!(s.cumulative[1], 3); // <= 250 µs
        assert_eq!(s.cumulative[4], 3); // <= 2.5 ms
        assert_eq!(s.cumulative[5], 4); // <= 5 ms
        assert_eq!(s.cumulative[BUCKETS_US.len() - 1], 4); // <= 10 s
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_us, 50 + 100 + 101 + 3_000 + 20_000_000);
    }
}
