//! What one core records: HdrHistograms in microseconds and plain counters. Each core
//! owns one `Recorder` (no atomics, no sharing on the hot path); the cores' recorders are
//! added together at the end, which loses nothing since HdrHistograms of equal precision
//! add bucket by bucket.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest trackable value: one hour in microseconds (larger values are clamped to it).
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram.
pub const SIGFIGS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIGS).expect("static histogram bounds are valid")
}

/// Why a connection attempt failed. Network failures are retried only once a stream was
/// open (like a browser reconnecting); HTTP-level ones are never retried, per the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Refused,
    Reset,
    Timeout,
    BadStatus,
    BadContentType,
    /// The server closed the connection before a complete response head.
    Closed,
    /// A malformed or over-long response head.
    Protocol,
    /// Any other OS error (kept by message in `other_errors`).
    Other,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::BadStatus,
        FailureKind::BadContentType,
        FailureKind::Closed,
        FailureKind::Protocol,
        FailureKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::BadStatus => "bad_status",
            FailureKind::BadContentType => "bad_content_type",
            FailureKind::Closed => "closed",
            FailureKind::Protocol => "protocol",
            FailureKind::Other => "other",
        }
    }

    /// HTTP-level failures "fail the connection" for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            FailureKind::BadStatus | FailureKind::BadContentType | FailureKind::Protocol
        )
    }

    pub fn of_io(e: &std::io::Error) -> FailureKind {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => FailureKind::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => FailureKind::Reset,
            TimedOut => FailureKind::Timeout,
            UnexpectedEof => FailureKind::Closed,
            _ => FailureKind::Other,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connection attempts, first ones and reconnections.
    pub attempted: u64,
    /// Streams currently open (a gauge; summed over cores and hosts).
    pub open: u64,
    /// Most streams open at once on this core (summed over cores: an upper bound).
    pub peak_open: u64,
    /// Streams that got a 200 `text/event-stream` head.
    pub opened: u64,
    /// Failed attempts by kind.
    pub failed: BTreeMap<FailureKind, u64>,
    /// Messages of `other` failures, with their counts.
    pub other_errors: BTreeMap<String, u64>,
    pub events: u64,
    /// Response body bytes (after de-chunking).
    pub bytes: u64,
    /// Ids skipped between two events of one connection.
    pub missed_ids: u64,
    /// Events whose id was not above the connection's previous one.
    pub duplicates: u64,
    /// Events whose own lines set no numeric id (no delivery latency or sequence check).
    pub unnumbered_events: u64,
    /// Events received before their scheduled time (clock skew; recorded as 0 latency).
    pub early_events: u64,
    /// Streams that ended after a 200 (server closed, reset, bad body framing).
    pub streams_ended: u64,
    /// Streams still open at the end that had received nothing for two intervals plus a
    /// second (a stream that goes quiet shows no gap in its ids).
    #[serde(default)]
    pub stalled_streams: u64,
    pub reconnects: u64,
    /// Publish mode (all absent from older files): reconnections `--reconnect-every` made
    /// (they count in `reconnects` too).
    #[serde(default)]
    pub scheduled_reconnects: u64,
    /// Publish requests sent.
    #[serde(default)]
    pub publish_attempted: u64,
    /// Publish requests answered with a 2xx status.
    #[serde(default)]
    pub published_ok: u64,
    /// 2xx answers without an `id` in `<ms>-<seq>` form (their events cannot be accounted).
    #[serde(default)]
    pub published_without_id: u64,
    /// Publish requests that failed: by HTTP status ("401", "503", ...) or by network
    /// failure kind ("refused", "reset", "timeout", "closed", "protocol", "other").
    #[serde(default)]
    pub publish_errors: BTreeMap<String, u64>,
    /// Events due in the publishing window that were never sent (the publishers fell behind).
    #[serde(default)]
    pub publish_unsent: u64,
    /// Published events received on channel streams (every copy, duplicates included).
    #[serde(default)]
    pub publish_events: u64,
    /// Exactness, summed over connections: ids each connection should have received...
    #[serde(default)]
    pub publish_expected: u64,
    /// ... of them, the ones it did receive ...
    #[serde(default)]
    pub publish_received: u64,
    /// ... and the ones it did not.
    #[serde(default)]
    pub publish_missed: u64,
    /// Ids received again (not above the connection's previous id).
    #[serde(default)]
    pub publish_duplicated: u64,
    /// Ids received that no publish answer returned for the channel, or from before the
    /// connection's subscription.
    #[serde(default)]
    pub publish_unexpected: u64,
    /// Of the missed, those after the last id their connection received: still due when the
    /// run ended (late past `--drain`, or a stream that stopped delivering) rather than holes.
    #[serde(default)]
    pub publish_outstanding: u64,
    /// Connections with at least one missed event.
    #[serde(default)]
    pub connections_missing_events: u64,
    /// `ringcast-reset` events received (the server could not resume a Last-Event-ID).
    #[serde(default)]
    pub publish_resets: u64,
    /// Failover (absent from files before version 3): streams that broke on one `--url` and
    /// came back on another (their `failover` time is recorded).
    #[serde(default)]
    pub failovers: u64,
    /// The same moves by the URL the stream broke on ...
    #[serde(default)]
    pub failovers_from: BTreeMap<String, u64>,
    /// ... and by the URL it came back on.
    #[serde(default)]
    pub failovers_to: BTreeMap<String, u64>,
    /// Reconnect storm (absent from files before version 4): streams `--storm-at` closed ...
    #[serde(default)]
    pub storm_dropped: u64,
    /// ... connections that had no open stream at that instant (connecting, or waiting to
    /// reconnect), so were not dropped ...
    #[serde(default)]
    pub storm_not_open: u64,
    /// ... of the dropped, those whose new stream got its response head ...
    #[serde(default)]
    pub storm_reconnected: u64,
    /// ... and those that received an event again (back).
    #[serde(default)]
    pub storm_recovered: u64,
    /// Failed attempts of dropped streams before they were back, by kind (they count in
    /// `failed` too).
    #[serde(default)]
    pub storm_failed: BTreeMap<FailureKind, u64>,
}

impl Counters {
    pub fn fail(&mut self, kind: FailureKind, message: Option<String>) {
        *self.failed.entry(kind).or_default() += 1;
        if let Some(m) = message {
            *self.other_errors.entry(m).or_default() += 1;
        }
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn add(&mut self, o: &Counters) {
        self.attempted += o.attempted;
        self.open += o.open;
        self.peak_open += o.peak_open;
        self.opened += o.opened;
        for (k, v) in &o.failed {
            *self.failed.entry(*k).or_default() += v;
        }
        for (k, v) in &o.other_errors {
            *self.other_errors.entry(k.clone()).or_default() += v;
        }
        self.events += o.events;
        self.bytes += o.bytes;
        self.missed_ids += o.missed_ids;
        self.duplicates += o.duplicates;
        self.unnumbered_events += o.unnumbered_events;
        self.early_events += o.early_events;
        self.streams_ended += o.streams_ended;
        self.stalled_streams += o.stalled_streams;
        self.reconnects += o.reconnects;
        self.scheduled_reconnects += o.scheduled_reconnects;
        self.publish_attempted += o.publish_attempted;
        self.published_ok += o.published_ok;
        self.published_without_id += o.published_without_id;
        for (k, v) in &o.publish_errors {
            *self.publish_errors.entry(k.clone()).or_default() += v;
        }
        self.publish_unsent += o.publish_unsent;
        self.publish_events += o.publish_events;
        self.publish_expected += o.publish_expected;
        self.publish_received += o.publish_received;
        self.publish_missed += o.publish_missed;
        self.publish_outstanding += o.publish_outstanding;
        self.publish_duplicated += o.publish_duplicated;
        self.publish_unexpected += o.publish_unexpected;
        self.connections_missing_events += o.connections_missing_events;
        self.publish_resets += o.publish_resets;
        self.failovers += o.failovers;
        for (k, v) in &o.failovers_from {
            *self.failovers_from.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.failovers_to {
            *self.failovers_to.entry(k.clone()).or_default() += v;
        }
        self.storm_dropped += o.storm_dropped;
        self.storm_not_open += o.storm_not_open;
        self.storm_reconnected += o.storm_reconnected;
        self.storm_recovered += o.storm_recovered;
        for (k, v) in &o.storm_failed {
            *self.storm_failed.entry(*k).or_default() += v;
        }
    }

    /// Notes one stream that broke on `from` and came back on `to`.
    pub fn failover(&mut self, from: &str, to: &str) {
        self.failovers += 1;
        *self.failovers_from.entry(from.to_string()).or_default() += 1;
        *self.failovers_to.entry(to.to_string()).or_default() += 1;
    }

    pub fn publish_errors_total(&self) -> u64 {
        self.publish_errors.values().sum()
    }
}

/// The histograms, by the names used in reports and result files.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// TCP connect, from the attempt's start.
    pub connect: Histogram<u64>,
    /// Complete response head, from the attempt's start.
    pub headers: Histogram<u64>,
    /// First event, from the attempt's start.
    pub first_event: Histogram<u64>,
    /// Receive time minus the event's scheduled time (id x interval since the epoch).
    pub delivery: Histogram<u64>,
    /// Time between two events of one connection.
    pub gap: Histogram<u64>,
    /// Publish mode: receive time minus the event id's milliseconds (or, with
    /// `--timestamp-in-data`, minus the publisher's send time written in the data).
    pub publish_delivery: Histogram<u64>,
    /// Publish request latency from the event's scheduled time (coordinated-omission free).
    pub publish_request: Histogram<u64>,
    /// Publish request latency from the moment it was sent.
    pub publish_send: Histogram<u64>,
    /// Failover: from the moment a stream broke (end of stream, reset) to the response head
    /// of its replacement on another `--url` (the reconnection delay included).
    pub failover: Histogram<u64>,
    /// Reconnect storm: from the moment the storm closed a stream to the response head of its
    /// new stream (failed attempts and their reconnection delays included).
    pub storm_reconnect: Histogram<u64>,
    /// Reconnect storm: from the moment the storm closed a stream to the first event received
    /// on its new stream.
    pub storm_recovery: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            connect: new_histogram(),
            headers: new_histogram(),
            first_event: new_histogram(),
            delivery: new_histogram(),
            gap: new_histogram(),
            publish_delivery: new_histogram(),
            publish_request: new_histogram(),
            publish_send: new_histogram(),
            failover: new_histogram(),
            storm_reconnect: new_histogram(),
            storm_recovery: new_histogram(),
        }
    }
}

impl Histograms {
    pub const NAMES: [&'static str; 11] = [
        "connect",
        "headers",
        "first_event",
        "delivery",
        "gap",
        "publish_delivery",
        "publish_request",
        "publish_send",
        "failover",
        "storm_reconnect",
        "storm_recovery",
    ];

    pub fn by_name(&self, name: &str) -> Option<&Histogram<u64>> {
        Some(match name {
            "connect" => &self.connect,
            "headers" => &self.headers,
            "first_event" => &self.first_event,
            "delivery" => &self.delivery,
            "gap" => &self.gap,
            "publish_delivery" => &self.publish_delivery,
            "publish_request" => &self.publish_request,
            "publish_send" => &self.publish_send,
            "failover" => &self.failover,
            "storm_reconnect" => &self.storm_reconnect,
            "storm_recovery" => &self.storm_recovery,
            _ => return None,
        })
    }

    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut Histogram<u64>> {
        Some(match name {
            "connect" => &mut self.connect,
            "headers" => &mut self.headers,
            "first_event" => &mut self.first_event,
            "delivery" => &mut self.delivery,
            "gap" => &mut self.gap,
            "publish_delivery" => &mut self.publish_delivery,
            "publish_request" => &mut self.publish_request,
            "publish_send" => &mut self.publish_send,
            "failover" => &mut self.failover,
            "storm_reconnect" => &mut self.storm_reconnect,
            "storm_recovery" => &mut self.storm_recovery,
            _ => return None,
        })
    }

    pub fn add(&mut self, o: &Histograms) {
        for name in Self::NAMES {
            let (mine, theirs) = (self.by_name_mut(name), o.by_name(name));
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                mine.add(theirs).expect("histograms share bounds");
            }
        }
    }
}

/// Records a microsecond value, clamping to the trackable range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIGHEST_US));
}

/// One core's measurements.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub counters: Counters,
    pub histograms: Histograms,
    /// Per tick id (measured events only): when its first and last copies arrived. The
    /// fan-out spread of a tick is last minus first over every stream of every core and host.
    pub ticks: BTreeMap<u64, TickSpan>,
    /// Reconnect storm: the latest drop, head and first event, after the storm instant.
    pub storm: StormSpan,
}

/// The latest moments of a reconnect storm, in µs after the storm instant (None: none yet).
/// Adding keeps the latest of each, so cores and hosts merge into the whole run's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormSpan {
    /// The last stream closed by the storm (how far from "at once" the drop was).
    pub last_drop_us: Option<u64>,
    /// The last dropped stream to get its new response head.
    pub last_reconnect_us: Option<u64>,
    /// The last dropped stream to receive an event again.
    pub last_back_us: Option<u64>,
}

impl StormSpan {
    pub fn add(&mut self, o: &StormSpan) {
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        self.last_drop_us = max(self.last_drop_us, o.last_drop_us);
        self.last_reconnect_us = max(self.last_reconnect_us, o.last_reconnect_us);
        self.last_back_us = max(self.last_back_us, o.last_back_us);
    }
}

/// When the copies of one tick arrived (wall-clock µs since the epoch), and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickSpan {
    pub first_us: u64,
    pub last_us: u64,
    pub count: u64,
}

impl TickSpan {
    pub fn add(&mut self, o: &TickSpan) {
        self.first_us = self.first_us.min(o.first_us);
        self.last_us = self.last_us.max(o.last_us);
        self.count += o.count;
    }
}

impl Recorder {
    pub fn add(&mut self, o: &Recorder) {
        self.counters.add(&o.counters);
        self.histograms.add(&o.histograms);
        add_ticks(&mut self.ticks, &o.ticks);
        self.storm.add(&o.storm);
    }
}

/// Notes that a copy of tick `id` arrived at `wall_us`.
pub fn record_tick(ticks: &mut BTreeMap<u64, TickSpan>, id: u64, wall_us: u64) {
    let one = TickSpan {
        first_us: wall_us,
        last_us: wall_us,
        count: 1,
    };
    ticks.entry(id).and_modify(|s| s.add(&one)).or_insert(one);
}

/// Adds `o`'s tick spans into `into`.
pub fn add_ticks(into: &mut BTreeMap<u64, TickSpan>, o: &BTreeMap<u64, TickSpan>) {
    for (id, span) in o {
        into.entry(*id).and_modify(|s| s.add(span)).or_insert(*span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_add_without_loss() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for v in 1..=1000 {
            record(&mut a.histograms.delivery, v);
            record(&mut b.histograms.delivery, v + 1000);
        }
        a.counters.events = 1000;
        b.counters.events = 1000;
        a.counters.fail(FailureKind::Refused, None);
        b.counters.fail(FailureKind::Refused, None);
        b.counters.fail(FailureKind::Other, Some("EMFILE".into()));
        let mut all = Recorder::default();
        all.add(&a);
        all.add(&b);
        let mut direct = new_histogram();
        for v in 1..=2000 {
            record(&mut direct, v);
        }
        assert_eq!(all.histograms.delivery, direct);
        assert_eq!(all.counters.events, 2000);
        assert_eq!(all.counters.failed[&FailureKind::Refused], 2);
        assert_eq!(all.counters.failed_total(), 3);
        assert_eq!(all.counters.other_errors["EMFILE"], 1);
    }

    #[test]
    fn publish_counters_and_histograms_add_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.counters.published_ok = 3;
        a.counters.publish_errors.insert("401".into(), 2);
        b.counters.publish_errors.insert("401".into(), 1);
        b.counters.publish_errors.insert("503".into(), 4);
        b.counters.publish_missed = 5;
        b.counters.publish_resets = 1;
        record(&mut a.histograms.publish_delivery, 100);
        record(&mut b.histograms.publish_delivery, 200);
        record(&mut b.histograms.publish_request, 300);
        a.add(&b);
        assert_eq!(a.counters.published_ok, 3);
        assert_eq!(a.counters.publish_errors["401"], 3);
        assert_eq!(a.counters.publish_errors_total(), 7);
        assert_eq!(
            (a.counters.publish_missed, a.counters.publish_resets),
            (5, 1)
        );
        assert_eq!(a.histograms.publish_delivery.len(), 2);
        let mut x = Counters::default();
        x.failover("http://a/", "http://b/");
        x.failover("http://a/", "http://c/");
        let mut y = Counters::default();
        y.failover("http://b/", "http://a/");
        x.add(&y);
        assert_eq!(x.failovers, 3);
        assert_eq!(x.failovers_from["http://a/"], 2);
        assert_eq!(x.failovers_to["http://a/"], 1);
        assert_eq!(x.failovers_to["http://c/"], 1);
        assert_eq!(a.histograms.publish_request.len(), 1);
        for name in Histograms::NAMES {
            assert!(a.histograms.by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn storm_counters_add_and_spans_keep_the_latest() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.counters.storm_dropped = 10;
        a.counters.storm_recovered = 9;
        *a.counters
            .storm_failed
            .entry(FailureKind::Refused)
            .or_default() += 2;
        b.counters.storm_dropped = 5;
        b.counters.storm_recovered = 5;
        *b.counters
            .storm_failed
            .entry(FailureKind::Refused)
            .or_default() += 1;
        a.storm = StormSpan {
            last_drop_us: Some(30),
            last_reconnect_us: Some(5_000),
            last_back_us: None,
        };
        b.storm = StormSpan {
            last_drop_us: Some(10),
            last_reconnect_us: Some(7_000),
            last_back_us: Some(9_000),
        };
        record(&mut b.histograms.storm_recovery, 9_000);
        a.add(&b);
        assert_eq!(
            (a.counters.storm_dropped, a.counters.storm_recovered),
            (15, 14)
        );
        assert_eq!(a.counters.storm_failed[&FailureKind::Refused], 3);
        assert_eq!(
            a.storm,
            StormSpan {
                last_drop_us: Some(30),
                last_reconnect_us: Some(7_000),
                last_back_us: Some(9_000),
            }
        );
        assert_eq!(a.histograms.storm_recovery.len(), 1);
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= HIGHEST_US);
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            FailureKind::of_io(&Error::from(ErrorKind::ConnectionRefused)),
            FailureKind::Refused
        );
        assert_eq!(
            FailureKind::of_io(&Error::from(ErrorKind::ConnectionReset)),
            FailureKind::Reset
        );
        assert_eq!(
            FailureKind::of_io(&Error::from(ErrorKind::TimedOut)),
            FailureKind::Timeout
        );
        assert_eq!(
            FailureKind::of_io(&Error::from_raw_os_error(libc::EMFILE)),
            FailureKind::Other
        );
    }
}
