//! The result file (`--out FILE.json`) and `merge`. The schema is versioned
//! (`schema` + `schema_version`) and documented in the README. A file holds one entry in
//! `runs` per loadgen process whose measurements it contains (environment, config, server
//! facts, resource samples), and the sums over those runs: counters, percentiles, and
//! every histogram serialized as HdrHistogram V2 in base64, so that merging files from
//! several hosts adds histograms bucket by bucket without losing precision.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::{add_ticks, Counters, FailureKind, Histograms, StormSpan, TickSpan};
use crate::probe::{Environment, Sample};

pub const SCHEMA: &str = "ringcast-loadgen/result";
/// Version 2 added publish mode (histograms `publish_*`, counters, `runs[].publish`);
/// version 3 added failover (histogram `failover`, counters `failovers*`); version 4 the
/// reconnect storm (histograms `storm_reconnect` and `storm_recovery`, counters `storm_*`,
/// the `storm` section). Files of older versions still load (what they lack reads as zero or
/// absent).
pub const SCHEMA_VERSION: u32 = 4;
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| h.value_at_quantile(q);
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: h.max(),
        }
    }
}

/// Figures derived from the resource samples (None when a sample was unavailable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    pub loadgen_rss_bytes_per_connection: Option<f64>,
    pub loadgen_cpu_us_per_event: Option<f64>,
    pub server_rss_bytes_per_stream: Option<f64>,
    /// TCP buffer pages plus slab growth; on one host it covers both ends of each stream.
    pub kernel_bytes_per_stream: Option<f64>,
    pub server_cpu_us_per_event: Option<f64>,
    /// Publish mode: CPU per published event received (between the same two samples).
    #[serde(default)]
    pub loadgen_cpu_us_per_publish_event: Option<f64>,
    #[serde(default)]
    pub server_cpu_us_per_publish_event: Option<f64>,
}

/// Samples taken before the ramp (`baseline`), when measuring starts (the hold's start plus
/// the warmup: `measure_start`) and shortly before the end (`hold_end`). Memory figures are
/// hold_end minus baseline over the streams open at hold_end; CPU figures are the CPU time
/// between measure_start and hold_end over the events received in between.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub server_pid: Option<u32>,
    pub baseline: Sample,
    pub measure_start: Option<Sample>,
    pub hold_end: Option<Sample>,
    pub derived: Derived,
}

fn per(delta: Option<f64>, count: u64) -> Option<f64> {
    (count > 0).then_some(delta? / count as f64)
}

fn diff(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b? as f64 - a? as f64)
}

impl Resources {
    pub fn derive(&mut self) {
        let (base, start, end) = (
            &self.baseline,
            self.measure_start.as_ref(),
            self.hold_end.as_ref(),
        );
        let Some(end) = end else { return };
        let events = start.map_or(0, |s| end.events.saturating_sub(s.events));
        let published = start.map_or(0, |s| end.publish_events.saturating_sub(s.publish_events));
        self.derived = Derived {
            loadgen_rss_bytes_per_connection: per(
                diff(base.loadgen_rss_bytes, end.loadgen_rss_bytes),
                end.open,
            ),
            server_rss_bytes_per_stream: per(
                diff(base.server_rss_bytes, end.server_rss_bytes),
                end.open,
            ),
            kernel_bytes_per_stream: per(diff(base.kernel.total(), end.kernel.total()), end.open),
            loadgen_cpu_us_per_event: start
                .and_then(|s| per(diff(s.loadgen_cpu_us, end.loadgen_cpu_us), events)),
            server_cpu_us_per_event: start
                .and_then(|s| per(diff(s.server_cpu_us, end.server_cpu_us), events)),
            loadgen_cpu_us_per_publish_event: start
                .and_then(|s| per(diff(s.loadgen_cpu_us, end.loadgen_cpu_us), published)),
            server_cpu_us_per_publish_event: start
                .and_then(|s| per(diff(s.server_cpu_us, end.server_cpu_us), published)),
        };
    }
}

/// One loadgen process's part of a result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub environment: Environment,
    /// The full command line config, as parsed.
    pub config: serde_json::Value,
    /// What the server told about itself (its `Server` header), when it did.
    pub server: Server,
    pub resources: Resources,
    /// Connection tasks still running when the end's grace ran out.
    pub unfinished_connections: usize,
    /// Publish mode: what was asked of the publishers and what they achieved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishSummary {
    pub url: String,
    pub channels: usize,
    pub publishers: usize,
    /// `--publish-rate`, events per second.
    pub target_rate: f64,
    /// How long the publishers ran: the hold, or less when the run was interrupted.
    pub seconds: f64,
    /// Events published with a 2xx answer per second over `seconds`.
    pub achieved_rate: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Server {
    /// The `Server` response header, when the server sends one.
    pub banner: Option<String>,
    pub urls: Vec<String>,
    /// What `--server-info` returned (JSON as JSON), when given and reachable.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub schema: String,
    pub schema_version: u32,
    pub runs: Vec<Run>,
    pub counters: Counters,
    /// By histogram name: connect, headers, first_event, delivery, gap, publish_delivery,
    /// publish_request, publish_send, failover (microseconds).
    pub percentiles: BTreeMap<String, Percentiles>,
    /// By histogram name: HdrHistogram V2 serialization, base64 (standard alphabet).
    pub histograms: BTreeMap<String, String>,
    /// Fan-out spread: per tick, first to last arrival over all streams (absent in older files).
    #[serde(default)]
    pub fanout: Fanout,
    /// The reconnect storm, when the run had one (absent otherwise and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormSummary>,
    pub notes: Vec<String>,
}

/// What a reconnect storm (`--storm-at`) did: every stream open at the storm instant was
/// closed by the loadgen and reopened with Last-Event-ID. Times are µs: `*_after_us` from the
/// storm instant, the percentiles from each stream's own drop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StormSummary {
    /// The storm instant after the end of the ramp (`--storm-at` moved on to the midpoint
    /// between two ticks), ms; merged: the largest.
    pub at_ms: f64,
    /// `--storm-rate`, reopenings per second (None: all at once).
    pub rate: Option<f64>,
    /// Streams the storm closed.
    pub dropped: u64,
    /// Connections with no open stream at the storm instant (not dropped).
    pub not_open: u64,
    /// Dropped streams whose new stream got its response head ...
    pub reconnected: u64,
    /// ... and received an event again.
    pub back: u64,
    /// Dropped streams not back when the run ended.
    pub not_back: u64,
    /// Failed attempts of dropped streams before they were back, in total and by kind.
    pub failed_attempts: u64,
    pub failed: BTreeMap<FailureKind, u64>,
    /// The last stream's drop, after the storm instant (how near "at once" the drop was).
    pub last_drop_after_us: Option<u64>,
    /// When the last dropped stream had its new response head (None unless all did; see
    /// `last_reconnect_after_us`).
    pub all_reconnected_after_us: Option<u64>,
    /// The headline: when the last dropped stream received an event again (None unless all
    /// did; see `last_back_after_us`).
    pub all_back_after_us: Option<u64>,
    /// The latest new response head and the latest stream back, whether or not all came back.
    pub last_reconnect_after_us: Option<u64>,
    pub last_back_after_us: Option<u64>,
    /// From each stream's drop to its new response head ...
    pub reconnect: Percentiles,
    /// ... and to its first event on it.
    pub recovery: Percentiles,
}

impl StormSummary {
    pub fn of(
        at_ms: f64,
        rate: Option<f64>,
        c: &Counters,
        span: &StormSpan,
        h: &Histograms,
    ) -> StormSummary {
        StormSummary {
            at_ms,
            rate,
            dropped: c.storm_dropped,
            not_open: c.storm_not_open,
            reconnected: c.storm_reconnected,
            back: c.storm_recovered,
            not_back: c.storm_dropped.saturating_sub(c.storm_recovered),
            failed_attempts: c.storm_failed.values().sum(),
            failed: c.storm_failed.clone(),
            last_drop_after_us: span.last_drop_us,
            all_reconnected_after_us: span
                .last_reconnect_us
                .filter(|_| c.storm_reconnected >= c.storm_dropped),
            all_back_after_us: span
                .last_back_us
                .filter(|_| c.storm_recovered >= c.storm_dropped),
            last_reconnect_after_us: span.last_reconnect_us,
            last_back_after_us: span.last_back_us,
            reconnect: Percentiles::of(&h.storm_reconnect),
            recovery: Percentiles::of(&h.storm_recovery),
        }
    }

    /// The span back from the summary's own figures (for merging).
    fn span(&self) -> StormSpan {
        StormSpan {
            last_drop_us: self.last_drop_after_us,
            last_reconnect_us: self.last_reconnect_after_us,
            last_back_us: self.last_back_after_us,
        }
    }
}

/// How long one tick took to reach every stream: for each tick id received in the measuring
/// window, the first and last arrival (wall clock, µs) over all streams, cores and merged hosts.
/// The spread of a tick is last − first; only ticks that reached at least 99 % of the most
/// copies any tick reached count (the window's edges cut the others short).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fanout {
    pub per_tick: BTreeMap<u64, TickSpan>,
    /// Ticks that counted.
    pub ticks: usize,
    pub spread_p50_us: Option<u64>,
    pub spread_p99_us: Option<u64>,
    pub spread_max_us: Option<u64>,
}

impl Fanout {
    pub fn of(per_tick: BTreeMap<u64, TickSpan>) -> Fanout {
        let most = per_tick.values().map(|t| t.count).max().unwrap_or(0);
        let mut spreads: Vec<u64> = per_tick
            .values()
            .filter(|t| most > 0 && t.count * 100 >= most * 99)
            .map(|t| t.last_us - t.first_us)
            .collect();
        spreads.sort_unstable();
        // nearest-rank percentile over the counted ticks
        let pct = |q: f64| -> Option<u64> {
            let n = spreads.len();
            (n > 0).then(|| spreads[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        Fanout {
            ticks: spreads.len(),
            spread_p50_us: pct(0.50),
            spread_p99_us: pct(0.99),
            spread_max_us: spreads.last().copied(),
            per_tick,
        }
    }
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))
}

impl RunResult {
    pub fn new(
        runs: Vec<Run>,
        counters: Counters,
        histograms: &Histograms,
        notes: Vec<String>,
    ) -> RunResult {
        let mut r = RunResult {
            schema: SCHEMA.into(),
            schema_version: SCHEMA_VERSION,
            runs,
            counters,
            percentiles: BTreeMap::new(),
            histograms: BTreeMap::new(),
            fanout: Fanout::default(),
            storm: None,
            notes,
        };
        r.set_histograms(histograms);
        r
    }

    fn set_histograms(&mut self, histograms: &Histograms) {
        for name in Histograms::NAMES {
            if let Some(h) = histograms.by_name(name) {
                self.percentiles.insert(name.into(), Percentiles::of(h));
                self.histograms.insert(name.into(), encode_histogram(h));
            }
        }
    }

    /// Decodes the stored histograms (names this version does not know are an error).
    pub fn decode_histograms(&self) -> Result<Histograms, String> {
        let mut out = Histograms::default();
        for (name, text) in &self.histograms {
            let h = decode_histogram(text).map_err(|e| format!("{name}: {e}"))?;
            let slot = out
                .by_name_mut(name)
                .ok_or_else(|| format!("unknown histogram {name:?}"))?;
            slot.add(&h).map_err(|e| format!("{name}: {e:?}"))?;
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<RunResult, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let r: RunResult =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if r.schema != SCHEMA
            || !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&r.schema_version)
        {
            return Err(format!(
                "{}: schema {} v{} is not {SCHEMA} v{OLDEST_SCHEMA_VERSION}..v{SCHEMA_VERSION}",
                path.display(),
                r.schema,
                r.schema_version
            ));
        }
        Ok(r)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Adds results together: runs are concatenated, counters and histograms summed.
    pub fn merge(parts: Vec<RunResult>) -> Result<RunResult, String> {
        let mut runs = Vec::new();
        let mut counters = Counters::default();
        let mut histograms = Histograms::default();
        let mut ticks = BTreeMap::new();
        let mut notes = Vec::new();
        let mut intervals = Vec::new();
        // (at_ms, rate, span) of the parts that had a storm
        let mut storm: Option<(f64, Option<f64>, StormSpan)> = None;
        for part in parts {
            if let Some(s) = &part.storm {
                let (at, rate, mut span) = storm.unwrap_or((s.at_ms, s.rate, StormSpan::default()));
                span.add(&s.span());
                storm = Some((at.max(s.at_ms), rate, span));
            }
            histograms.add(&part.decode_histograms()?);
            add_ticks(&mut ticks, &part.fanout.per_tick);
            counters.add(&part.counters);
            for note in part.notes {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
            for run in &part.runs {
                let interval = run.config.get("interval").cloned();
                if !intervals.contains(&interval) {
                    intervals.push(interval);
                }
            }
            runs.extend(part.runs);
        }
        if intervals.len() > 1 {
            notes.push(
                "merged runs used different --interval values: delivery latencies do not compare"
                    .into(),
            );
        }
        if let Some((at_ms, rate, span)) = storm {
            // Each process timed its storm from its own instant: the latest moments of the
            // parts are the whole run's only when the processes stormed together.
            if runs.len() > 1 {
                notes.push(
                    "merged storm figures take each process's times from its own storm instant"
                        .into(),
                );
            }
            let mut merged = RunResult::new(runs, counters, &histograms, notes);
            merged.fanout = Fanout::of(ticks);
            merged.storm = Some(StormSummary::of(
                at_ms,
                rate,
                &merged.counters,
                &span,
                &histograms,
            ));
            return Ok(merged);
        }
        let mut merged = RunResult::new(runs, counters, &histograms, notes);
        merged.fanout = Fanout::of(ticks);
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::record;

    fn result_with(values: std::ops::Range<u64>, events: u64) -> RunResult {
        let mut h = Histograms::default();
        for v in values {
            record(&mut h.delivery, v);
            record(&mut h.gap, v * 10);
        }
        let counters = Counters {
            events,
            ..Counters::default()
        };
        let run = Run {
            environment: Environment::default(),
            config: serde_json::json!({"interval": 100.0}),
            server: Server::default(),
            resources: Resources::default(),
            unfinished_connections: 0,
            publish: None,
        };
        RunResult::new(vec![run], counters, &h, vec![])
    }

    #[test]
    fn histograms_round_trip_through_base64() {
        let mut h = crate::metrics::new_histogram();
        for v in [1, 7, 1000, 123_456, 3_000_000] {
            record(&mut h, v);
        }
        assert_eq!(decode_histogram(&encode_histogram(&h)).unwrap(), h);
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("AAAA").is_err());
    }

    #[test]
    fn fanout_spread_counts_only_ticks_that_reached_everyone() {
        let span = |first_us, last_us, count| TickSpan {
            first_us,
            last_us,
            count,
        };
        let per_tick = BTreeMap::from([
            (10, span(1_000, 1_500, 40)), // cut by the window's start: left out
            (11, span(2_000, 2_100, 100)),
            (12, span(3_000, 3_300, 100)),
            (13, span(4_000, 4_200, 99)),
        ]);
        let f = Fanout::of(per_tick);
        assert_eq!(f.ticks, 3);
        assert_eq!(f.spread_p50_us, Some(200));
        assert_eq!(f.spread_max_us, Some(300));
        assert_eq!(f.spread_p99_us, Some(300));
        // merging two hosts' halves of one tick widens it to both ends
        let mut a = result_with(0..10, 10);
        let mut b = result_with(0..10, 10);
        a.fanout = Fanout::of(BTreeMap::from([(5, span(100, 200, 50))]));
        b.fanout = Fanout::of(BTreeMap::from([(5, span(150, 400, 50))]));
        let m = RunResult::merge(vec![a, b]).unwrap();
        assert_eq!(m.fanout.per_tick[&5], span(100, 400, 100));
        assert_eq!(m.fanout.spread_max_us, Some(300));
    }

    #[test]
    fn merge_adds_without_loss_and_round_trips_json() {
        let dir = std::env::temp_dir().join(format!("loadgen-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        result_with(1..5000, 10).save(&a).unwrap();
        result_with(5000..9000, 32).save(&b).unwrap();
        let merged = RunResult::merge(vec![
            RunResult::load(&a).unwrap(),
            RunResult::load(&b).unwrap(),
        ])
        .unwrap();
        let whole = result_with(1..9000, 42);
        assert_eq!(merged.runs.len(), 2);
        assert_eq!(merged.counters.events, 42);
        assert_eq!(merged.percentiles, whole.percentiles);
        assert_eq!(
            merged.decode_histograms().unwrap().delivery,
            whole.decode_histograms().unwrap().delivery
        );
        assert!(merged.notes.is_empty());

        let mut other = result_with(1..3, 1);
        other.runs[0].config = serde_json::json!({"interval": 2000.0});
        let mixed = RunResult::merge(vec![merged, other]).unwrap();
        assert_eq!(mixed.notes.len(), 1);

        let mut text = std::fs::read_to_string(&a).unwrap();
        text = text.replace("\"schema_version\": 4", "\"schema_version\": 999");
        std::fs::write(&a, text).unwrap();
        assert!(RunResult::load(&a).unwrap_err().contains("schema"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn publish_results_merge_and_version_1_files_still_load() {
        let dir = std::env::temp_dir().join(format!("loadgen-pubmerge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let part = |delivery: std::ops::Range<u64>, missed: u64| {
            let mut h = Histograms::default();
            for v in delivery {
                record(&mut h.publish_delivery, v);
                record(&mut h.publish_request, v * 2);
            }
            let mut counters = Counters {
                published_ok: 10,
                publish_expected: 100,
                publish_received: 100 - missed,
                publish_missed: missed,
                publish_resets: 1,
                ..Counters::default()
            };
            counters.publish_errors.insert("429".into(), 2);
            let mut r = result_with(0..0, 0);
            r.runs[0].publish = Some(PublishSummary {
                url: "http://127.0.0.1:9/publish".into(),
                channels: 5,
                publishers: 4,
                target_rate: 10.0,
                seconds: 1.0,
                achieved_rate: 10.0,
            });
            let runs = r.runs;
            RunResult::new(runs, counters, &h, vec![])
        };
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        part(1..500, 0).save(&a).unwrap();
        part(500..1000, 3).save(&b).unwrap();
        let m = RunResult::merge(vec![
            RunResult::load(&a).unwrap(),
            RunResult::load(&b).unwrap(),
        ])
        .unwrap();
        let c = &m.counters;
        assert_eq!(
            (c.published_ok, c.publish_expected, c.publish_missed),
            (20, 200, 3)
        );
        assert_eq!((c.publish_errors["429"], c.publish_resets), (4, 2));
        assert_eq!(m.percentiles["publish_delivery"].count, 999);
        assert_eq!(m.percentiles["publish_request"].count, 999);
        let whole = part(1..1000, 0).decode_histograms().unwrap();
        assert_eq!(
            m.decode_histograms().unwrap().publish_delivery,
            whole.publish_delivery
        );
        assert_eq!(m.runs.len(), 2);
        assert_eq!(m.runs[1].publish.as_ref().unwrap().channels, 5);

        // a version 1 file: no publish fields, histograms or run summary
        let mut v1: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
        v1["schema_version"] = 1.into();
        for name in [
            "publish_delivery",
            "publish_request",
            "publish_send",
            "failover",
        ] {
            v1["histograms"].as_object_mut().unwrap().remove(name);
            v1["percentiles"].as_object_mut().unwrap().remove(name);
        }
        let counters = v1["counters"].as_object_mut().unwrap();
        counters.retain(|k, _| {
            !k.starts_with("publish")
                && !k.starts_with("failover")
                && !k.contains("_reconnects")
                && !k.starts_with("connections_missing")
        });
        v1["runs"][0].as_object_mut().unwrap().remove("publish");
        std::fs::write(&a, v1.to_string()).unwrap();
        let old = RunResult::load(&a).unwrap();
        assert_eq!(old.counters.published_ok, 0);
        assert!(old.runs[0].publish.is_none());
        let m = RunResult::merge(vec![old, RunResult::load(&b).unwrap()]).unwrap();
        assert_eq!(m.schema_version, SCHEMA_VERSION);
        assert_eq!(m.counters.publish_missed, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn storm_summaries_merge_and_version_3_files_still_load() {
        use crate::metrics::StormSpan;
        let dir = std::env::temp_dir().join(format!("loadgen-storm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let part =
            |dropped: u64, back: u64, last_back: Option<u64>, values: std::ops::Range<u64>| {
                let mut h = Histograms::default();
                for v in values {
                    record(&mut h.storm_recovery, v);
                    record(&mut h.storm_reconnect, v / 2);
                }
                let counters = Counters {
                    storm_dropped: dropped,
                    storm_reconnected: dropped,
                    storm_recovered: back,
                    ..Counters::default()
                };
                let mut r = result_with(0..0, 0);
                let runs = std::mem::take(&mut r.runs);
                let mut r = RunResult::new(runs, counters, &h, vec![]);
                let span = StormSpan {
                    last_drop_us: Some(100),
                    last_reconnect_us: Some(1_000),
                    last_back_us: last_back,
                };
                r.storm = Some(StormSummary::of(10_000.0, None, &r.counters, &span, &h));
                r
            };
        let a = part(10, 10, Some(2_000_000), 1..11);
        assert_eq!(a.storm.as_ref().unwrap().all_back_after_us, Some(2_000_000));
        assert_eq!(a.storm.as_ref().unwrap().recovery.count, 10);
        let (pa, pb) = (dir.join("a.json"), dir.join("b.json"));
        a.save(&pa).unwrap();
        part(5, 4, Some(3_000_000), 11..15).save(&pb).unwrap();
        let m = RunResult::merge(vec![
            RunResult::load(&pa).unwrap(),
            RunResult::load(&pb).unwrap(),
        ])
        .unwrap();
        let s = m.storm.as_ref().unwrap();
        assert_eq!((s.dropped, s.back, s.not_back), (15, 14, 1));
        assert_eq!(s.all_back_after_us, None, "one stream never came back");
        assert_eq!(s.last_back_after_us, Some(3_000_000));
        assert_eq!(s.all_reconnected_after_us, Some(1_000));
        assert_eq!(s.recovery.count, 14);
        // a version 3 file: no storm histograms, counters or section
        let mut v3: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&pa).unwrap()).unwrap();
        v3["schema_version"] = 3.into();
        v3.as_object_mut().unwrap().remove("storm");
        for name in ["storm_recovery", "storm_reconnect"] {
            v3["histograms"].as_object_mut().unwrap().remove(name);
            v3["percentiles"].as_object_mut().unwrap().remove(name);
        }
        v3["counters"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("storm"));
        std::fs::write(&pa, v3.to_string()).unwrap();
        let old = RunResult::load(&pa).unwrap();
        assert!(old.storm.is_none());
        assert_eq!(old.counters.storm_dropped, 0);
        let plain = RunResult::merge(vec![old]).unwrap();
        assert!(plain.storm.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn derived_figures() {
        let mut r = Resources {
            baseline: Sample {
                loadgen_rss_bytes: Some(1000),
                server_rss_bytes: Some(5000),
                ..Sample::default()
            },
            measure_start: Some(Sample {
                loadgen_cpu_us: Some(100),
                server_cpu_us: Some(200),
                events: 10,
                ..Sample::default()
            }),
            hold_end: Some(Sample {
                loadgen_rss_bytes: Some(3000),
                server_rss_bytes: Some(9000),
                loadgen_cpu_us: Some(300),
                server_cpu_us: Some(1200),
                open: 4,
                events: 110,
                publish_events: 50,
                ..Sample::default()
            }),
            ..Resources::default()
        };
        r.derive();
        assert_eq!(r.derived.server_cpu_us_per_publish_event, Some(20.0));
        assert_eq!(r.derived.loadgen_cpu_us_per_publish_event, Some(4.0));
        assert_eq!(r.derived.loadgen_rss_bytes_per_connection, Some(500.0));
        assert_eq!(r.derived.server_rss_bytes_per_stream, Some(1000.0));
        assert_eq!(r.derived.loadgen_cpu_us_per_event, Some(2.0));
        assert_eq!(r.derived.server_cpu_us_per_event, Some(10.0));
        assert_eq!(r.derived.kernel_bytes_per_stream, None);
    }
}
