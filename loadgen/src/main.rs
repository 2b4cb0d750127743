//! ringcast-loadgen: opens many EventSource-like connections to an SSE server and measures
//! what it delivers. This file is the orchestration only: check the config, start the
//! cores, let `monitor` watch the run, then add the cores' recorders up, report and write
//! the result file (or, for `merge`, add result files up). In publish mode it also starts
//! the publishers and, once everything has ended, makes the exactness count.

mod channels;
mod cli;
mod conn;
mod engine;
mod http;
mod metrics;
mod monitor;
mod parser;
mod probe;
mod publish;
mod report;
mod result;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;

use channels::Channels;
use cli::{Cli, Command, MergeArgs, RunArgs};
use engine::{Live, Plan, StormPlan};
use metrics::{Counters, Recorder};
use publish::PublishPlan;
use result::{Fanout, PublishSummary, Resources, Run, RunResult, Server, StormSummary};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Merge(args)) => merge(args),
        None => run(cli.run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_outputs(
    result: &RunResult,
    out: Option<&Path>,
    hgrm: Option<&Path>,
    publish_hgrm: Option<&Path>,
) -> Result<(), String> {
    if let Some(path) = out {
        result.save(path)?;
    }
    if hgrm.is_some() || publish_hgrm.is_some() {
        let histograms = result.decode_histograms()?;
        for (path, h) in [
            (hgrm, &histograms.delivery),
            (publish_hgrm, &histograms.publish_delivery),
        ] {
            if let Some(path) = path {
                std::fs::write(path, report::hgrm(h))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn merge(args: MergeArgs) -> Result<(), String> {
    let parts = args
        .files
        .iter()
        .map(|f| RunResult::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = RunResult::merge(parts)?;
    print!("{}", report::final_report(&merged));
    write_outputs(
        &merged,
        args.out.as_deref(),
        args.hgrm.as_deref(),
        args.publish_hgrm.as_deref(),
    )
}

/// Raises the open-files soft limit to the hard limit; returns the limit in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft),
    }
}

fn validate(args: &RunArgs) -> Result<(), String> {
    if args.urls.is_empty() {
        return Err("give at least one --url (for example --url http://127.0.0.1:8080/)".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.interval.is_zero() {
        return Err("--interval must be positive".into());
    }
    if args.read_buffer < 64 {
        return Err("--read-buffer must be at least 64 bytes".into());
    }
    if args.warmup >= args.duration {
        return Err(
            "--warmup must be shorter than --duration (it is the start of the hold)".into(),
        );
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    if args.channels == Some(0) {
        return Err("--channels must be at least 1".into());
    }
    if args.publish.is_some() {
        if !(args.publish_rate.is_finite() && args.publish_rate > 0.0) {
            return Err("--publish-rate must be a positive number".into());
        }
        if args.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
    }
    if args.reconnect_every.is_some_and(|d| d.is_zero()) {
        return Err("--reconnect-every must be positive".into());
    }
    if let Some(at) = args.storm_at {
        // The storm moves on to the next midpoint between two ticks (up to one interval),
        // and the streams need time to come back and show it.
        let needed = at.saturating_add(args.interval.saturating_mul(STORM_INTERVALS_AFTER + 1));
        if needed > args.duration {
            return Err(format!(
                "--storm-at {} leaves less than {STORM_INTERVALS_AFTER} intervals (--interval {}) of the \
                 --duration {} hold after the storm (which can move up to one interval later, to \
                 fall between two ticks): use a --duration of at least {}",
                humantime::format_duration(at),
                humantime::format_duration(args.interval),
                humantime::format_duration(args.duration),
                humantime::format_duration(needed),
            ));
        }
    }
    if args.storm_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--storm-rate must be a positive number".into());
    }
    Ok(())
}

/// Tick intervals the hold must leave after the reconnect storm.
const STORM_INTERVALS_AFTER: u32 = 3;

/// The kernel's ephemeral port range size, when readable.
fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

/// The exactness count: every connection's tally against its channel's final list.
fn account(channels: &Channels, tallies: Vec<channels::Tally>, c: &mut Counters) {
    for mut tally in tallies {
        let f = tally.finish(&channels.list(tally.channel as usize));
        c.publish_expected += f.expected;
        c.publish_received += f.received;
        c.publish_missed += f.missed;
        c.publish_outstanding += f.outstanding;
        c.publish_duplicated += f.duplicated;
        c.publish_unexpected += f.unexpected;
        c.connections_missing_events += u64::from(f.missed > 0);
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    validate(&args)?;
    let targets = args
        .urls
        .iter()
        .map(|u| http::Target::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let publish_target = args
        .publish
        .as_deref()
        .map(http::Target::parse)
        .transpose()?;
    let nofile = raise_nofile();
    // Leave room for the runtime's own descriptors (rings, eventfds, files).
    let headroom = 64;
    if (args.connections as u64).saturating_add(headroom) > nofile {
        eprintln!(
            "ringcast-loadgen: warning: {} connections need more open files than the limit {nofile} allows; \
             expect 'other' failures (Too many open files)",
            args.connections
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = threads.min(args.connections);
    let mut environment = probe::environment(args.label.clone());
    let mut notes = Vec::new();
    let server_info = args.server_info.as_deref().and_then(|url| {
        http::fetch_info(url, Duration::from_secs(3))
            .map_err(|e| {
                eprintln!("ringcast-loadgen: --server-info: {e}");
                notes.push(format!("--server-info could not be read: {e}"));
            })
            .ok()
    });
    // A server that states its interval (ringcast's /info has `interval_ms`) can be checked.
    if let Some(server_ms) = server_info.as_ref().and_then(|i| i["interval_ms"].as_f64()) {
        let ours = args.interval.as_secs_f64() * 1e3;
        if (server_ms - ours).abs() > f64::EPSILON {
            let warning = format!(
                "the server's interval is {server_ms} ms but --interval is {ours} ms: delivery latencies are wrong"
            );
            eprintln!("ringcast-loadgen: warning: {warning}");
            notes.push(warning);
        }
    }

    // Ctrl-C (or SIGTERM) ends the run early with a report; a second one exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone());
        let _ = signal_hook::flag::register(signal, interrupted.clone());
    }

    let too_long = || "the ramp and hold are too long to schedule".to_string();
    let start = Instant::now() + Duration::from_millis(200);
    let ramp =
        Duration::try_from_secs_f64(args.connections as f64 / args.rate).map_err(|_| too_long())?;
    let ramp_end = start.checked_add(ramp).ok_or_else(too_long)?;
    let end = ramp_end.checked_add(args.duration).ok_or_else(too_long)?;
    let channels = args.channels.map(|k| Arc::new(Channels::new(k)));
    if let (Some(ch), None) = (&channels, &publish_target) {
        // Subscribing without publishing: nothing is expected, nothing to wait for.
        ch.mark_done();
    }
    let drain = if channels.is_some() {
        end.checked_add(args.drain).ok_or_else(too_long)?;
        args.drain
    } else {
        Duration::ZERO
    };
    let storm = args.storm_at.map(|at| {
        let now = Instant::now();
        let wall_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let interval_us = u64::try_from(args.interval.as_micros()).unwrap_or(u64::MAX);
        StormPlan {
            at: engine::align_storm(ramp_end + at, now, wall_us, interval_us),
            rate: args.storm_rate,
        }
    });
    if let Some(s) = &storm {
        if s.at + args.interval.saturating_mul(STORM_INTERVALS_AFTER) > end {
            return Err("--storm-at: the storm would come too late in the hold".into());
        }
        // The loadgen closes first, so each dropped stream's old port sits in TIME_WAIT
        // while its new one is open: twice the ports per source address and destination.
        let sources = args.source_addrs.as_ref().map_or(1, |s| s.0.len()) as u64;
        if let Some(ports) = ephemeral_ports() {
            let per_source = (2 * args.connections as u64).div_ceil(sources * targets.len() as u64);
            if per_source > ports {
                eprintln!(
                    "ringcast-loadgen: warning: the storm needs about {per_source} local ports per source \
                     address and server (open streams plus TIME_WAIT) but the ephemeral range has {ports}: \
                     give more --source-addrs (e.g. 127.0.0.2-127.0.0.9) or expect failed reconnections"
                );
            }
        }
    }
    let plan = Arc::new(Plan {
        targets,
        sources: args.source_addrs.clone().map(|s| s.0).unwrap_or_default(),
        connections: args.connections,
        rate: args.rate,
        threads,
        driver: args.driver,
        ring_entries: args.ring_entries,
        start,
        ramp_end,
        measure_from: ramp_end + args.warmup,
        end,
        interval_us: u64::try_from(args.interval.as_micros()).unwrap_or(u64::MAX),
        retry_default: args.retry_default,
        connect_timeout: args.connect_timeout,
        read_buffer: args.read_buffer,
        channels: channels.clone(),
        timestamp_in_data: args.timestamp_in_data,
        reconnect_every: args.reconnect_every,
        drain,
        storm,
    });
    let live = Arc::new(Live::new(threads));
    let handles = engine::start(plan.clone(), live.clone())?;
    let publish_plan = publish_target.map(|target| {
        Arc::new(PublishPlan {
            target,
            rate: args.publish_rate,
            publishers: args.publishers,
            batch: args.publish_batch,
            token: args.publish_token.clone(),
            timestamp_in_data: args.timestamp_in_data,
            start: ramp_end,
            end,
            measure_from: plan.measure_from,
            timeout: args.connect_timeout,
        })
    });
    // Started (waiting for the ramp's end) before the baseline sample, like the cores, so
    // that their fixed allocations are not counted per connection.
    let publishers = match (&publish_plan, &channels) {
        (Some(pp), Some(ch)) => Some(publish::start(pp.clone(), ch.clone(), live.clone())?),
        _ => None,
    };

    let mut resources = Resources {
        server_pid: args.server_pid,
        baseline: probe::sample(args.server_pid, 0, 0),
        ..Resources::default()
    };

    let early = monitor::watch(&args, &plan, &live, &mut resources, &interrupted);

    let mut recorder = Recorder::default();
    if let Some(publishers) = publishers {
        recorder.add(&publishers.join()?);
    }
    let mut drivers = Vec::new();
    let mut banner = None;
    let mut unfinished = 0;
    let mut tallies = Vec::new();
    for h in handles {
        let core = h.join().map_err(|_| "a core thread panicked".to_string())?;
        recorder.add(&core.recorder);
        drivers.push(core.driver);
        banner = banner.or(core.server_banner);
        unfinished += core.unfinished;
        tallies.extend(core.tallies);
    }
    if let Some(ch) = &channels {
        account(ch, tallies, &mut recorder.counters);
    }
    let publish_summary = publish_plan.as_ref().map(|pp| {
        let stopped = early.map_or(pp.end, |at| at.clamp(pp.start, pp.end));
        let seconds = stopped.saturating_duration_since(pp.start).as_secs_f64();
        let c = &mut recorder.counters;
        c.publish_unsent = pp.due_before(stopped).saturating_sub(c.publish_attempted);
        PublishSummary {
            url: args.publish.clone().unwrap_or_default(),
            channels: args.channels.unwrap_or(0),
            publishers: pp.publishers,
            target_rate: pp.rate,
            seconds,
            achieved_rate: if seconds > 0.0 {
                c.published_ok as f64 / seconds
            } else {
                0.0
            },
        }
    });
    drivers.dedup();
    environment.loadgen_driver = if drivers.len() == 1 {
        drivers[0].to_string()
    } else {
        "mixed".into()
    };
    environment.loadgen_threads = threads;
    resources.derive();

    notes.insert(0, format!(
        "delivery latency is receive time minus the event's scheduled time (id x {} ms since the Unix epoch); \
         it is only meaningful when the server and the loadgen share a clock (one host, or synced clocks) \
         and --interval matches the server's",
        args.interval.as_secs_f64() * 1e3
    ));
    if channels.is_some() {
        notes.push(if args.timestamp_in_data {
            "publish_delivery latency is receive time minus the send time the publisher wrote in the data \
             (both the loadgen's clock)"
                .to_string()
        } else {
            "publish_delivery latency is receive time minus the event id's milliseconds (the server's clock \
             when it took the event, 1 ms resolution): meaningful only when the clocks are shared or synced"
                .to_string()
        });
        if recorder.counters.publish_outstanding > 0 {
            notes.push(format!(
                "{} expected events had not arrived when the drain (--drain {}) ended: late or lost; \
                 a longer --drain tells which",
                recorder.counters.publish_outstanding,
                humantime::format_duration(args.drain)
            ));
        }
        if recorder.counters.published_without_id > 0 {
            notes.push(format!(
                "{} publish answers carried no <ms>-<seq> id: their events are outside the exactness count",
                recorder.counters.published_without_id
            ));
        }
    }
    if let Some(at) = early {
        let held = at.saturating_duration_since(plan.ramp_end).as_secs_f64();
        notes.push(format!(
            "interrupted: the run ended early, after {held:.1} s of the {:.1} s hold",
            args.duration.as_secs_f64()
        ));
    }
    let config = serde_json::to_value(&args).map_err(|e| e.to_string())?;
    let run = Run {
        environment,
        config,
        server: Server {
            banner,
            urls: args.urls.clone(),
            info: server_info,
        },
        resources,
        unfinished_connections: unfinished,
        publish: publish_summary,
    };
    let mut result = RunResult::new(vec![run], recorder.counters, &recorder.histograms, notes);
    result.fanout = Fanout::of(recorder.ticks);
    if let Some(s) = &plan.storm {
        let summary = StormSummary::of(
            s.at.saturating_duration_since(plan.ramp_end).as_secs_f64() * 1e3,
            s.rate,
            &result.counters,
            &recorder.storm,
            &recorder.histograms,
        );
        if early.is_some_and(|at| at < s.at) {
            result
                .notes
                .push("interrupted before the storm: it never came".into());
        } else if summary.not_back > 0 {
            result.notes.push(format!(
                "{} of the {} streams the storm dropped had not received an event again when the run ended \
                 (no 'all back' time): see the failures and a longer --duration",
                summary.not_back, summary.dropped
            ));
        }
        result.storm = Some(summary);
    }
    print!("{}", report::final_report(&result));
    write_outputs(
        &result,
        args.out.as_deref(),
        args.hgrm.as_deref(),
        args.publish_hgrm.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut all = vec!["x", "--url", "http://127.0.0.1:1/"];
        all.extend_from_slice(extra);
        Cli::try_parse_from(all).unwrap().run
    }

    #[test]
    fn a_storm_needs_three_intervals_of_the_hold_after_it() {
        // 10 s + 4 x 2 s (up to one interval of alignment, three after) fits a 20 s hold
        assert!(validate(&args(&["--storm-at", "10s", "--duration", "20s"])).is_ok());
        let e = validate(&args(&["--storm-at", "13s", "--duration", "20s"])).unwrap_err();
        assert!(
            e.contains("--storm-at 13s") && e.contains("--duration"),
            "{e}"
        );
        assert!(e.contains("at least 21s"), "{e}");
        let e = validate(&args(&["--storm-at", "1s", "--storm-rate", "0"])).unwrap_err();
        assert!(e.contains("--storm-rate"), "{e}");
        let e = validate(&args(&["--storm-at", "1s", "--storm-rate", "NaN"])).unwrap_err();
        assert!(e.contains("--storm-rate"), "{e}");
        assert!(validate(&args(&[
            "--storm-at",
            "0s",
            "--interval",
            "100ms",
            "--duration",
            "1s"
        ]))
        .is_ok());
    }
}
