//! Text for people: the status line printed each second, the ramp's progress bar, the end
//! report (percentile table, counters, resource figures, notes) and the standard
//! HdrHistogram percentile-distribution (`.hgrm`) text. Pure formatting: every function
//! returns a String so tests can read it.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::metrics::{Counters, FailureKind, Histograms};
use crate::result::{Percentiles, RunResult};

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn bytes(b: f64) -> String {
    let abs = b.abs();
    if abs >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if abs >= 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), f)
}

fn failures(c: &Counters) -> String {
    let parts: Vec<String> = FailureKind::ALL
        .iter()
        .map(|k| format!("{} {}", k.name(), c.failed.get(k).copied().unwrap_or(0)))
        .collect();
    parts.join(", ")
}

/// One status line: phase, open/target, events per second, p99 delivery so far, errors
/// (and, in publish mode, the events published so far).
pub fn status_line(
    elapsed_s: f64,
    phase: &str,
    c: &Counters,
    target: usize,
    events_per_s: f64,
    delivery: &Histogram<u64>,
    published: Option<u64>,
) -> String {
    let p99 = if delivery.is_empty() {
        "-".to_string()
    } else {
        format!("{} ms", ms(delivery.value_at_quantile(0.99)))
    };
    let mut line = format!(
        "[{elapsed_s:7.1}s {phase:<5}] open {}/{target}  events/s {events_per_s:.0}  p99 delivery {p99}  failed {}  reconnects {}  missed ids {}",
        c.open,
        c.failed_total(),
        c.reconnects,
        c.missed_ids,
    );
    if let Some(n) = published {
        let _ = write!(line, "  published {n}  resets {}", c.publish_resets);
    }
    if c.failovers > 0 {
        let _ = write!(line, "  failovers {}", c.failovers);
    }
    if c.storm_dropped > 0 {
        let _ = write!(
            line,
            "  storm back {}/{}",
            c.storm_recovered, c.storm_dropped
        );
    }
    line
}

/// A terminal progress bar for the ramp (drawn over itself with `\r`).
pub fn progress_bar(open: u64, target: usize, width: usize) -> String {
    let done = (open as usize * width)
        .checked_div(target)
        .map_or(width, |d| d.min(width));
    format!(
        "\rramp [{}{}] {open}/{target}",
        "#".repeat(done),
        ".".repeat(width - done)
    )
}

fn table(out: &mut String, percentiles: &std::collections::BTreeMap<String, Percentiles>) {
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "(ms)", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for name in Histograms::NAMES {
        let Some(p) = percentiles.get(name) else {
            continue;
        };
        let optional =
            name.starts_with("publish_") || name.starts_with("storm_") || name == "failover";
        if optional && p.count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{name:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            p.count,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p99_9),
            ms(p.p99_99),
            ms(p.max)
        );
    }
}

/// Characters of `--server-info` shown in the report (the result file has all of it).
const INFO_SHOWN: usize = 300;

/// The end report.
pub fn final_report(r: &RunResult) -> String {
    let mut out = String::new();
    let c = &r.counters;
    for run in &r.runs {
        let env = &run.environment;
        let cfg = &run.config;
        let _ = writeln!(
            out,
            "ringcast-loadgen {} on {} ({} threads, {}): {} connections to {} at {}/s, hold {} ms, warmup {} ms, interval {} ms",
            env.loadgen_version,
            env.hostname.as_deref().unwrap_or("?"),
            env.loadgen_threads,
            env.loadgen_driver,
            cfg["connections"],
            run.server.urls.join(" "),
            cfg["rate"],
            cfg["duration"],
            cfg["warmup"],
            cfg["interval"],
        );
        if let Some(p) = &run.publish {
            let reconnect = cfg["reconnect_every"]
                .as_f64()
                .map_or(String::new(), |ms| format!(", reconnect every {ms} ms"));
            let _ = writeln!(
                out,
                "publishing {}/s to {} over {} channels with {} publishers{reconnect}",
                p.target_rate, p.url, p.channels, p.publishers,
            );
        }
        if let Some(banner) = &run.server.banner {
            let _ = writeln!(out, "server: {banner}");
        }
        if let Some(info) = &run.server.info {
            let text = info.to_string();
            let shown: String = text.chars().take(INFO_SHOWN).collect();
            let more = if shown.len() < text.len() { " ..." } else { "" };
            let _ = writeln!(out, "server info: {shown}{more}");
        }
    }
    let _ = writeln!(out);
    table(&mut out, &r.percentiles);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "connections: attempted {}, opened {}, peak open {}, failed {} ({})",
        c.attempted,
        c.opened,
        c.peak_open,
        c.failed_total(),
        failures(c)
    );
    for (message, n) in &c.other_errors {
        let _ = writeln!(out, "  other error x{n}: {message}");
    }
    let _ = writeln!(
        out,
        "events: {}, bytes {}, missed ids {}, duplicates {}, unnumbered {}, early {}, streams ended {}, stalled {}, reconnects {}",
        c.events, c.bytes, c.missed_ids, c.duplicates, c.unnumbered_events, c.early_events, c.streams_ended, c.stalled_streams, c.reconnects
    );
    let publish = publish_lines(r);
    if let Some(lines) = &publish {
        out.push_str(lines);
    }
    let several_urls = r.runs.iter().any(|run| run.server.urls.len() > 1);
    if several_urls || c.failovers > 0 {
        let moves = |m: &std::collections::BTreeMap<String, u64>| {
            let parts: Vec<String> = m.iter().map(|(url, n)| format!("{url} x{n}")).collect();
            if parts.is_empty() {
                "-".to_string()
            } else {
                parts.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "failover: {} streams came back on another URL (from {}; to {})",
            c.failovers,
            moves(&c.failovers_from),
            moves(&c.failovers_to)
        );
    }
    let ms_of = |v: Option<u64>| v.map_or("n/a".to_string(), |us| format!("{} ms", ms(us)));
    if let Some(s) = &r.storm {
        out.push_str(&storm_lines(s));
    }
    let f = &r.fanout;
    // Channel streams get no ticks: no fan-out line for them.
    if publish.is_none() || !f.per_tick.is_empty() {
        let _ = writeln!(
            out,
            "fan-out spread (first to last stream of one tick, {} ticks): p50 {}, p99 {}, max {}",
            f.ticks,
            ms_of(f.spread_p50_us),
            ms_of(f.spread_p99_us),
            ms_of(f.spread_max_us)
        );
    }
    for run in &r.runs {
        let d = &run.resources.derived;
        let open = run.resources.hold_end.map_or(0, |s| s.open);
        let _ = writeln!(
            out,
            "loadgen: {} RSS per connection, {} CPU per event ({} open at the end of the hold)",
            opt(d.loadgen_rss_bytes_per_connection, bytes),
            opt(d.loadgen_cpu_us_per_event, |v| format!("{v:.2} us")),
            open
        );
        if let Some(pid) = run.resources.server_pid {
            let _ = writeln!(
                out,
                "server (pid {pid}): {} RSS per stream, {} kernel memory per stream (both ends when on one host), {} CPU per event",
                opt(d.server_rss_bytes_per_stream, bytes),
                opt(d.kernel_bytes_per_stream, bytes),
                opt(d.server_cpu_us_per_event, |v| format!("{v:.2} us")),
            );
        }
        if run.publish.is_some() {
            let server = if run.resources.server_pid.is_some() {
                format!(
                    ", server {}",
                    opt(d.server_cpu_us_per_publish_event, |v| format!("{v:.2} us"))
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "CPU per published event received: loadgen {}{server}",
                opt(d.loadgen_cpu_us_per_publish_event, |v| format!("{v:.2} us")),
            );
        }
        if run.unfinished_connections > 0 {
            let _ = writeln!(
                out,
                "warning: {} connections had not wound down at the end",
                run.unfinished_connections
            );
        }
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// The reconnect storm's lines of the end report.
fn storm_lines(s: &crate::result::StormSummary) -> String {
    let mut out = String::new();
    let ms_of = |v: Option<u64>| v.map_or("n/a".to_string(), |us| format!("{} ms", ms(us)));
    let rate = s
        .rate
        .map_or("at once".to_string(), |r| format!("at most {r}/s"));
    let failed: Vec<String> = s
        .failed
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    let failed = if failed.is_empty() {
        String::new()
    } else {
        format!(" ({})", failed.join(", "))
    };
    let _ = writeln!(
        out,
        "storm at {:.3} s into the hold: dropped {} (the last {} after the storm instant; {} not open then), \
         reopened {rate}: reconnected {}, back {}, not back {}, failed reconnect attempts {}{failed}",
        s.at_ms / 1e3,
        s.dropped,
        ms_of(s.last_drop_after_us),
        s.not_open,
        s.reconnected,
        s.back,
        s.not_back,
        s.failed_attempts,
    );
    let all_back = match s.all_back_after_us {
        Some(us) => format!("{} ms", ms(us)),
        None => format!(
            "never ({} not back; the last one back after {})",
            s.not_back,
            ms_of(s.last_back_after_us)
        ),
    };
    let _ = writeln!(
        out,
        "storm: every stream back (an event received) after {all_back}; every stream reconnected after {}; \
         recovery per stream p50 {} p90 {} p99 {} max {} ms",
        ms_of(s.all_reconnected_after_us),
        ms(s.recovery.p50),
        ms(s.recovery.p90),
        ms(s.recovery.p99),
        ms(s.recovery.max),
    );
    out
}

/// The publish mode lines of the end report (None when no run published or subscribed to
/// channels).
fn publish_lines(r: &RunResult) -> Option<String> {
    let c = &r.counters;
    let runs: Vec<_> = r
        .runs
        .iter()
        .filter_map(|run| run.publish.as_ref())
        .collect();
    let channel_mode = r.runs.iter().any(|run| !run.config["channels"].is_null());
    if runs.is_empty() && !channel_mode {
        return None;
    }
    let mut out = String::new();
    if !runs.is_empty() {
        let target: f64 = runs.iter().map(|p| p.target_rate).sum();
        let achieved: f64 = runs.iter().map(|p| p.achieved_rate).sum();
        let errors = if c.publish_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", crate::publish::describe_errors(&c.publish_errors))
        };
        let _ = writeln!(
            out,
            "publish: attempted {}, ok {}, errors {}{errors}, unsent {}, without id {}; {achieved:.1} events/s of {target:.1} asked",
            c.publish_attempted,
            c.published_ok,
            c.publish_errors_total(),
            c.publish_unsent,
            c.published_without_id,
        );
    }
    let _ = writeln!(
        out,
        "published events received: {}; expected {}, received {}, missed {} (in {} connections, {} still outstanding at the end), duplicated {}, unexpected {}, resets {}, scheduled reconnects {}",
        c.publish_events,
        c.publish_expected,
        c.publish_received,
        c.publish_missed,
        c.connections_missing_events,
        c.publish_outstanding,
        c.publish_duplicated,
        c.publish_unexpected,
        c.publish_resets,
        c.scheduled_reconnects,
    );
    Some(out)
}

/// The standard HdrHistogram percentile distribution text, values in milliseconds
/// (recorded in microseconds, so the unit ratio is 1000).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let scale = 1000.0;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    // Sub-buckets per bucket, as HdrHistogram derives them from the significant digits.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{new_histogram, record};

    #[test]
    fn hgrm_has_the_standard_shape() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            record(&mut h, v * 100);
        }
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        let rows: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .skip(1)
            .collect();
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(
            text.contains("#[Max     =      100.031") || text.contains("#[Max     =      100.0"),
            "{text}"
        );
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        // Counts never go down along the distribution.
        let counts: Vec<u64> = rows
            .iter()
            .map(|r| r.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn the_report_has_the_publish_lines_in_publish_mode_only() {
        use crate::result::{PublishSummary, Run, RunResult, Server};
        let mut counters = Counters {
            publish_attempted: 1000,
            published_ok: 997,
            publish_expected: 5000,
            publish_received: 4997,
            publish_missed: 3,
            publish_outstanding: 1,
            connections_missing_events: 1,
            publish_resets: 2,
            ..Counters::default()
        };
        counters.publish_errors.insert("503".into(), 3);
        let run = |publish: Option<PublishSummary>, config| Run {
            environment: Default::default(),
            config,
            server: Server::default(),
            resources: Default::default(),
            unfinished_connections: 0,
            publish,
        };
        let summary = PublishSummary {
            url: "http://127.0.0.1:9090/publish".into(),
            channels: 5,
            publishers: 4,
            target_rate: 200.0,
            seconds: 5.0,
            achieved_rate: 199.4,
        };
        let config = serde_json::json!({"channels": 5, "reconnect_every": 2000.0});
        let r = RunResult::new(
            vec![run(Some(summary), config)],
            counters,
            &Histograms::default(),
            vec![],
        );
        let text = final_report(&r);
        for want in [
            "publishing 200/s to http://127.0.0.1:9090/publish over 5 channels with 4 publishers, reconnect every 2000 ms",
            "publish: attempted 1000, ok 997, errors 3 (503 x3), unsent 0, without id 0; 199.4 events/s of 200.0 asked",
            "expected 5000, received 4997, missed 3 (in 1 connections, 1 still outstanding at the end)",
            "resets 2",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(!text.contains("fan-out"), "{text}");
        let plain = RunResult::new(
            vec![run(None, serde_json::json!({"channels": null}))],
            Counters::default(),
            &Histograms::default(),
            vec![],
        );
        let text = final_report(&plain);
        assert!(
            !text.contains("publish") && text.contains("fan-out"),
            "{text}"
        );
    }

    #[test]
    fn the_report_has_the_storm_lines_when_the_run_had_a_storm() {
        use crate::metrics::{record, FailureKind, StormSpan};
        use crate::result::{Run, RunResult, Server, StormSummary};
        let run = Run {
            environment: Default::default(),
            config: serde_json::json!({"channels": null}),
            server: Server::default(),
            resources: Default::default(),
            unfinished_connections: 0,
            publish: None,
        };
        let mut counters = Counters {
            storm_dropped: 100,
            storm_not_open: 2,
            storm_reconnected: 100,
            storm_recovered: 99,
            ..Counters::default()
        };
        counters.storm_failed.insert(FailureKind::Refused, 4);
        let mut h = Histograms::default();
        for v in 1..=99 {
            record(&mut h.storm_recovery, v * 10_000);
            record(&mut h.storm_reconnect, v * 1_000);
        }
        let span = StormSpan {
            last_drop_us: Some(1_500),
            last_reconnect_us: Some(99_000),
            last_back_us: Some(990_000),
        };
        let mut r = RunResult::new(vec![run.clone()], counters.clone(), &h, vec![]);
        r.storm = Some(StormSummary::of(10_500.0, None, &r.counters, &span, &h));
        let text = final_report(&r);
        for want in [
            "storm at 10.500 s into the hold: dropped 100 (the last 1.500 ms after the storm instant; 2 not open then)",
            "reopened at once: reconnected 100, back 99, not back 1, failed reconnect attempts 4 (refused 4)",
            "every stream back (an event received) after never (1 not back; the last one back after 990.000 ms)",
            "every stream reconnected after 99.000 ms",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("storm_recovery ")),
            "{text}"
        );
        counters.storm_recovered = 100;
        let mut r = RunResult::new(vec![run], counters, &h, vec![]);
        r.storm = Some(StormSummary::of(
            10_500.0,
            Some(500.0),
            &r.counters,
            &span,
            &h,
        ));
        let text = final_report(&r);
        assert!(
            text.contains("every stream back (an event received) after 990.000 ms"),
            "{text}"
        );
        assert!(text.contains("reopened at most 500/s"), "{text}");
        let plain = RunResult::new(vec![], Counters::default(), &Histograms::default(), vec![]);
        let text = final_report(&plain);
        assert!(!text.contains("storm"), "{text}");
    }

    #[test]
    fn the_report_has_the_failover_line_with_several_urls() {
        use crate::result::{Run, RunResult, Server};
        let run = |urls: &[&str]| Run {
            environment: Default::default(),
            config: serde_json::json!({"channels": null}),
            server: Server {
                urls: urls.iter().map(|u| u.to_string()).collect(),
                ..Server::default()
            },
            resources: Default::default(),
            unfinished_connections: 0,
            publish: None,
        };
        let mut counters = Counters::default();
        for _ in 0..3 {
            counters.failover("http://a/", "http://b/");
        }
        let mut h = Histograms::default();
        crate::metrics::record(&mut h.failover, 1_500_000);
        let r = RunResult::new(vec![run(&["http://a/", "http://b/"])], counters, &h, vec![]);
        let text = final_report(&r);
        assert!(
            text.contains(
                "failover: 3 streams came back on another URL (from http://a/ x3; to http://b/ x3)"
            ),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("failover ")),
            "histogram row: {text}"
        );
        let quiet = RunResult::new(
            vec![run(&["http://a/", "http://b/"])],
            Counters::default(),
            &Histograms::default(),
            vec![],
        );
        let text = final_report(&quiet);
        assert!(
            text.contains("failover: 0 streams came back on another URL (from -; to -)"),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("failover ")), "{text}");
        let single = RunResult::new(
            vec![run(&["http://a/"])],
            Counters::default(),
            &Histograms::default(),
            vec![],
        );
        assert!(!final_report(&single).contains("failover"));
    }

    #[test]
    fn status_line_shows_the_live_figures() {
        let mut h = new_histogram();
        record(&mut h, 2500);
        let c = Counters {
            open: 7,
            reconnects: 2,
            ..Counters::default()
        };
        let line = status_line(3.0, "hold", &c, 10, 70.0, &h, None);
        assert!(!line.contains("published") && !line.contains("failovers"));
        let mut moved = c.clone();
        moved.failover("http://a/", "http://b/");
        let failing = status_line(3.0, "hold", &moved, 10, 70.0, &h, None);
        assert!(failing.contains("failovers 1"), "{failing}");
        let publishing = status_line(3.0, "hold", &c, 10, 70.0, &h, Some(12));
        assert!(publishing.contains("published 12"), "{publishing}");
        assert!(
            line.contains("open 7/10")
                && line.contains("events/s 70")
                && line.contains("p99 delivery 2.50"),
            "{line}"
        );
        assert!(progress_bar(5, 10, 10).ends_with("[#####.....] 5/10"));
        assert!(progress_bar(0, 0, 4).contains("[####]"));
    }
}
