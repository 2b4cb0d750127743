//! Command line: the `run` flags (the default command) and the `merge` subcommand, plus the
//! parsing of the values clap cannot parse by itself (durations, source address ranges).
//! Everything here is plain data so that the result file can record the full config.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "ringcast-loadgen",
    version,
    about = "Opens many concurrent EventSource connections to an SSE server and measures delivery",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add up result files from several loadgen processes or hosts (histograms losslessly).
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Result files written with --out.
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Write the merged result here (JSON, same schema).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the merged delivery histogram's percentile distribution here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write the merged publish_delivery histogram's percentile distribution here.
    #[arg(long)]
    pub publish_hgrm: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct RunArgs {
    /// Server URL (http only); repeat to spread connections over several servers or ports
    /// (connection k starts on the (k mod U)-th); a reconnection that fails moves on to the
    /// next URL (failover).
    #[arg(long = "url", visible_alias = "target", value_name = "URL")]
    pub urls: Vec<String>,
    /// Connections to hold open.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// New connections per second during the ramp.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to hold the connections after the ramp.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// Leading part of the hold left out of the delivery and gap histograms.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub warmup: Duration,
    /// The server's tick interval: event id N was scheduled at N x interval since the epoch
    /// (ringcast's default is 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    /// Reconnection delay when the stream set none with `retry:`.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub retry_default: Duration,
    /// Limit for the TCP connect and, separately, for the response head.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub connect_timeout: Duration,
    /// Worker threads, one runtime each (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// I/O driver of the runtimes.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    pub driver: Driver,
    /// io_uring submission queue entries per thread.
    #[arg(long, default_value_t = 4096)]
    pub ring_entries: u32,
    /// Local addresses to bind outgoing connections to, round-robin:
    /// e.g. 127.0.0.2-127.0.0.9 or 127.0.0.2,127.0.0.3.
    #[arg(long, value_parser = parse_source_addrs)]
    pub source_addrs: Option<SourceAddrs>,
    /// Per-connection read buffer in bytes (events are small; keep it small).
    #[arg(long, default_value_t = 512)]
    pub read_buffer: usize,
    /// Write the result (versioned JSON schema) here.
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Write the delivery histogram's percentile distribution (.hgrm text) here.
    #[arg(long)]
    #[serde(skip)]
    pub hgrm: Option<PathBuf>,
    /// Sample this server process (same host): RSS, CPU time, kernel socket memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// URL of the server's self-description (e.g. ringcast's admin `/info`), fetched once
    /// before the ramp and stored in the result.
    #[arg(long, value_name = "URL")]
    pub server_info: Option<String>,
    /// Free text stored in the result's environment.
    #[arg(long)]
    pub label: Option<String>,
    /// Publish mode: subscribe connection k to channel `c{(k / U) mod K}`, U being the number
    /// of --url (`?channel=` added to the URL's query).
    #[arg(long, value_name = "K")]
    pub channels: Option<usize>,
    /// Publish mode: the publish endpoint (e.g. ringcast's admin http://127.0.0.1:9090/publish);
    /// events are POSTed to it with `?channel=cN` during the hold.
    #[arg(long, value_name = "URL", requires = "channels")]
    pub publish: Option<String>,
    /// Events per second published in total, round-robin over the channels.
    #[arg(long, value_name = "R", default_value_t = 10.0)]
    pub publish_rate: f64,
    /// Keep-alive connections (one thread each) that publish.
    #[arg(long, value_name = "P", default_value_t = 4)]
    pub publishers: usize,
    /// Send N consecutive events per request, as the JSON array of ringcast's
    /// `POST /publish/batch` (point --publish at it); a batch goes when its last event is due.
    /// 1: one event per request, with `?channel=cN`.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "publish",
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub publish_batch: u64,
    /// Sent as `Authorization: Bearer T` with every publish (not stored in the result).
    #[arg(long, value_name = "T", requires = "publish")]
    #[serde(serialize_with = "redacted")]
    pub publish_token: Option<String>,
    /// Publish the send time (unix µs) at the start of the data and take the publish→receive
    /// latency from it instead of from the event id (for servers that number events their
    /// own way, like nchan's `1450755280:0`).
    #[arg(long, requires = "channels")]
    pub timestamp_in_data: bool,
    /// During the hold, close and reopen each stream this often (with Last-Event-ID),
    /// staggered over the connections.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    #[serde(with = "option_duration_ms")]
    pub reconnect_every: Option<Duration>,
    /// Reconnect storm: at D after the end of the ramp, moved on to the next midpoint between
    /// two ticks (wall-clock multiples of --interval), every open stream is closed at once on
    /// every thread and reopened at once with Last-Event-ID; the time from each drop to the
    /// first event after it (`storm_recovery`) and until the last stream is back are reported.
    /// The hold must leave at least 3 intervals after the storm.
    #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "reconnect_every")]
    #[serde(with = "option_duration_ms")]
    pub storm_at: Option<Duration>,
    /// Reconnect storm: reopen the dropped streams at most this many per second in total
    /// (connection k at storm + k / R) instead of all at once.
    #[arg(long, value_name = "R", requires = "storm_at")]
    pub storm_rate: Option<f64>,
    /// Publish mode: after the hold, wait at most this long for the last events (less when
    /// every connection has them).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_ms")]
    pub drain: Duration,
    /// Write the publish_delivery histogram's percentile distribution (.hgrm text) here.
    #[arg(long)]
    #[serde(skip)]
    pub publish_hgrm: Option<PathBuf>,
    /// No status line each second.
    #[arg(long, short = 'q')]
    #[serde(skip)]
    pub quiet: bool,
}

/// A list of local addresses, expanded from ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SourceAddrs(pub Vec<IpAddr>);

/// Most addresses one `--source-addrs` may expand to (a typo like 127.0.0.1-127.255.0.0
/// should fail, not allocate millions).
pub const MAX_SOURCE_ADDRS: usize = 65_536;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 10s, 2m)"))
}

pub fn parse_source_addrs(s: &str) -> Result<SourceAddrs, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |a: &str| {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|e| format!("{a:?}: {e}"))
        };
        match part.split_once('-') {
            None => out.push(parse(part)?),
            Some((a, b)) => match (parse(a)?, parse(b)?) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let (a, b) = (u32::from(a), u32::from(b));
                    if b < a || (b - a) as usize >= MAX_SOURCE_ADDRS {
                        return Err(format!("{part:?}: empty or too large range"));
                    }
                    out.extend((a..=b).map(|n| IpAddr::from(n.to_be_bytes())));
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let (a, b) = (u128::from(a), u128::from(b));
                    if b < a || b - a >= MAX_SOURCE_ADDRS as u128 {
                        return Err(format!("{part:?}: empty or too large range"));
                    }
                    out.extend((a..=b).map(|n| IpAddr::from(n.to_be_bytes())));
                }
                _ => return Err(format!("{part:?}: range mixes IPv4 and IPv6")),
            },
        }
        if out.len() > MAX_SOURCE_ADDRS {
            return Err(format!("more than {MAX_SOURCE_ADDRS} source addresses"));
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(SourceAddrs(out))
}

/// A secret is stored only as whether it was given.
fn redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

/// Optional durations, as milliseconds or null.
pub mod option_duration_ms {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64() * 1e3),
            None => s.serialize_none(),
        }
    }
}

/// Durations are stored in the result file as milliseconds (floating, so sub-ms survive).
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    #[allow(dead_code)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Ok(Duration::from_secs_f64(ms.max(0.0) / 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_flags_and_their_errors_name_the_flag() {
        let cli = Cli::try_parse_from([
            "x",
            "--url",
            "http://127.0.0.1:1/",
            "--storm-at",
            "5s",
            "--storm-rate",
            "2000",
        ])
        .unwrap();
        assert_eq!(cli.run.storm_at, Some(Duration::from_secs(5)));
        assert_eq!(cli.run.storm_rate, Some(2000.0));
        let config = serde_json::to_value(&cli.run).unwrap();
        assert_eq!(config["storm_at"], 5000.0);
        assert_eq!(config["storm_rate"], 2000.0);
        let plain = Cli::try_parse_from(["x", "--url", "http://127.0.0.1:1/"]).unwrap();
        assert_eq!(plain.run.storm_at, None);
        assert!(serde_json::to_value(&plain.run).unwrap()["storm_at"].is_null());
        let err = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().to_string();
        let e = err(&["x", "--storm-rate", "10"]);
        assert!(e.contains("--storm-at"), "{e}");
        let e = err(&["x", "--storm-at", "soon"]);
        assert!(e.contains("--storm-at"), "{e}");
        let e = err(&["x", "--storm-at", "1s", "--reconnect-every", "1s"]);
        assert!(
            e.contains("--storm-at") && e.contains("--reconnect-every"),
            "{e}"
        );
    }

    #[test]
    fn source_addr_ranges_and_lists() {
        let got = parse_source_addrs("127.0.0.2-127.0.0.4, 127.0.0.9").unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got.0, want);
        assert_eq!(
            parse_source_addrs("::1").unwrap().0,
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_source_addrs("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_addrs("127.0.0.1-::1").is_err());
        assert!(parse_source_addrs("127.0.0.0-127.255.255.255").is_err());
        assert!(parse_source_addrs("localhost").is_err());
        assert!(parse_source_addrs(" , ").is_err());
    }

    #[test]
    fn run_is_the_default_command_and_merge_a_subcommand() {
        let cli = Cli::try_parse_from([
            "x",
            "--url",
            "http://127.0.0.1:1/",
            "-c",
            "5",
            "--duration",
            "2s",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.connections, 5);
        assert_eq!(cli.run.duration, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["x", "merge", "a.json", "b.json"]).unwrap();
        match cli.command {
            Some(Command::Merge(m)) => assert_eq!(m.files.len(), 2),
            None => panic!("merge not parsed"),
        }
        assert!(Cli::try_parse_from(["x", "--duration", "ten"]).is_err());
    }

    #[test]
    fn publish_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--url",
            "http://127.0.0.1:1/",
            "--channels",
            "5",
            "--publish",
            "http://127.0.0.1:2/publish",
            "--publish-rate",
            "50",
            "--publish-token",
            "s3cret",
            "--reconnect-every",
            "3s",
        ])
        .unwrap();
        let r = &cli.run;
        assert_eq!(r.channels, Some(5));
        assert_eq!(r.publish_rate, 50.0);
        assert_eq!(r.publishers, 4);
        assert_eq!(r.reconnect_every, Some(Duration::from_secs(3)));
        assert_eq!(r.drain, Duration::from_secs(2));
        let config = serde_json::to_value(r).unwrap();
        assert_eq!(config["publish_token"], "(set)");
        assert!(!config.to_string().contains("s3cret"));
        assert_eq!(config["reconnect_every"], 3000.0);
        // publishing needs channels; a token needs publishing
        assert!(Cli::try_parse_from(["x", "--publish", "http://127.0.0.1:2/p"]).is_err());
        assert!(Cli::try_parse_from(["x", "--channels", "2", "--publish-token", "t"]).is_err());
        let plain = Cli::try_parse_from(["x", "--url", "http://127.0.0.1:1/"]).unwrap();
        assert_eq!(plain.run.channels, None);
        assert_eq!(
            serde_json::to_value(&plain.run).unwrap()["reconnect_every"],
            serde_json::Value::Null
        );
    }
}
