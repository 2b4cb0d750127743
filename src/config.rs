//! Command-line flags and the validated configuration every worker shares.
//!
//! Flags are parsed by clap; everything that can be wrong with a value is checked here, once,
//! so that the hot path never has to. Errors name the flag, the way clap's own errors do.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which io driver the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// io_uring when a ring can be built, epoll otherwise (and say why).
    Auto,
    /// io_uring or a clear error: never falls back.
    Uring,
    /// epoll (monoio's legacy driver), even where io_uring works.
    Epoll,
}

/// ringcast: a thread-per-core io_uring Server-Sent-Events server.
///
/// A GET whose Accept header names text/event-stream becomes an SSE stream that receives one
/// event per tick; every other request is answered `ok`.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringcast", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on (each worker binds its own SO_REUSEPORT socket).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Worker threads, one monoio runtime each (default: available cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Do not pin workers to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// io driver: auto falls back to epoll when io_uring is unavailable.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    pub driver: DriverChoice,

    /// io_uring submission queue entries per worker (at least 256; the kernel caps it at 32768).
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u32).range(256..))]
    pub ring_entries: u32,

    /// io_uring setup flags: auto takes the first set the kernel accepts of defer
    /// (SINGLE_ISSUER|DEFER_TASKRUN), coop (COOP_TASKRUN|TASKRUN_FLAG), none.
    #[arg(long, value_enum, default_value_t = crate::ring_flags::Choice::Auto, value_name = "FLAGS")]
    pub uring_flags: crate::ring_flags::Choice,

    /// Tick interval: every stream gets one event per interval, at wall-clock multiples of it.
    #[arg(long, default_value = "2s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,

    /// Event name sent with each tick (the `event:` field).
    #[arg(long, default_value = "message", value_parser = parse_event_name, value_name = "NAME")]
    pub event: String,

    /// Event data sent with each tick; several lines become several `data:` lines.
    #[arg(long, default_value = "hello", value_name = "TEXT")]
    pub data: String,

    /// Send `retry: MS` once when a stream opens (the client's reconnection delay).
    #[arg(long, value_name = "MS")]
    pub retry: Option<u64>,

    /// Allowed CORS origin (repeatable). Without it every origin is allowed (`*`); with a list,
    /// a listed Origin is echoed with credentials allowed and other origins are refused.
    #[arg(long = "cors-origin", value_name = "ORIGIN", value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Most streams held at once, over all workers (default: what the fd limit allows).
    #[arg(long, value_name = "N")]
    pub max_streams: Option<usize>,

    /// Consecutive ticks a stream may skip (its previous write still pending) before it is closed.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub max_skips: u8,

    /// Time a client has to send a complete request header section.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// Largest request body (Content-Length) drained on the `ok` path; larger gets 413.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body: u64,

    /// Writes in flight at once per worker during a tick walk (bounds memory; batches submissions).
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight: u32,

    /// TCP_USER_TIMEOUT for streams: a peer that stops acknowledging for this long is reaped.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub user_timeout: Duration,

    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub backlog: i32,

    /// Admin listener for /metrics, /healthz and /info (`none` to disable). Never the public one.
    #[arg(long, default_value = "127.0.0.1:9090", value_parser = parse_admin, value_name = "ADDR|none")]
    pub admin_listen: AdminListen,

    /// Heartbeat comment (`:`) sent to channel streams this often when idle (`off` to disable).
    #[arg(long, default_value = "15s", value_parser = parse_heartbeat, value_name = "DURATION|off")]
    pub heartbeat: Heartbeat,

    /// Most channels one stream may subscribe to.
    #[arg(long, default_value_t = 32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_channels_per_stream: u32,

    /// Published events kept per channel for replay.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub history: u32,

    /// Most memory the history may hold over all channels (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub history_bytes: u64,

    /// Published events older than this are dropped from the history.
    #[arg(long, default_value = "10m", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub history_age: Duration,

    /// Largest event (its data) a publish may carry; larger gets 413.
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_event_bytes: u64,

    /// Bytes a channel stream may have queued behind a pending write before it is closed.
    #[arg(long, default_value = "256KiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_queued_bytes: u64,

    /// After a core has handed out published events, how long it lets further events gather
    /// before it takes them (one wake-up and one batch of writes for all of them). An event
    /// after a quiet spell is handed out at once; `0` hands out every event on arrival.
    #[arg(long, default_value = "2ms", value_parser = parse_duration_upto_1s, value_name = "DURATION")]
    pub publish_batch: Duration,

    /// Bearer token publishers must send (`Authorization: Bearer TOKEN`); required when the
    /// admin listener is not on a loopback address.
    #[arg(
        long,
        env = "RINGCAST_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub publish_token: Option<String>,

    /// Most admin connections open at once (publishers and scrapers); more are refused.
    #[arg(long, default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub admin_max_connections: u32,

    /// Cluster mode: share one event stream with other nodes through Redis Streams, e.g.
    /// redis://127.0.0.1:6379/0.
    #[arg(long, env = "RINGCAST_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// The Redis stream key (its epoch lives beside it, at KEY:epoch).
    #[arg(long, default_value = "ringcast:events", value_name = "KEY")]
    pub redis_stream: String,

    /// Entries the Redis stream keeps (`XADD … MAXLEN ~ N`), over all channels.
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_maxlen: u64,

    /// Return the allocator's freed pages to the OS every N tick walks (0: never). A tuning knob
    /// for the memory benchmark (bench/collect.sh, results/collect): after every walk cost ~5 %
    /// more CPU per frame and saved no memory over every 8th walk or never; 8 keeps a periodic
    /// collection for long runs at an eighth of the cost.
    #[arg(long, default_value_t = 8, value_name = "N", hide = true)]
    pub collect_every: u32,

    /// Print what this kernel's io_uring offers (setup, FEAT flags, opcodes) as JSON, and exit.
    #[arg(long)]
    pub probe_uring: bool,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log: String,
}

/// Where the admin endpoints listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    On(SocketAddr),
}

fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(AdminListen::Off);
    }
    s.parse()
        .map(AdminListen::On)
        .map_err(|e| format!("{e} (an address such as 127.0.0.1:9090, or none)"))
}

/// `--heartbeat`: a period, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat(pub Option<Duration>);

fn parse_heartbeat(s: &str) -> Result<Heartbeat, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Heartbeat(None));
    }
    parse_positive_duration(s).map(|d| Heartbeat(Some(d)))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let n =
        parse_size::parse_size(s).map_err(|e| format!("{e} (examples: 65536, 64KiB, 64MiB)"))?;
    if n == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(n)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 2s, 250ms)"))?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be a whole number of milliseconds".into());
    }
    Ok(d)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_duration_upto_1s(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0, 2ms)"))?;
    if d > Duration::from_secs(1) {
        return Err("must be at most 1s: events wait up to this long".into());
    }
    Ok(d)
}

fn parse_event_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '\r' | '\n' | '\0')) {
        return Err(format!(
            "must not contain CR, LF or NUL (found {:?}): they would end the field",
            c
        ));
    }
    Ok(s.to_owned())
}

fn parse_origin(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Who may read our responses from a browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// `Access-Control-Allow-Origin: *` (the seed's behaviour).
    Any,
    /// Echo a listed Origin, with `Access-Control-Allow-Credentials: true`.
    List(Vec<String>),
}

impl Cors {
    pub fn from_origins(origins: &[String]) -> Self {
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            Cors::Any
        } else {
            Cors::List(origins.to_vec())
        }
    }
}

/// The validated settings shared (read-only) by all workers.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub pin: bool,
    pub driver: DriverChoice,
    pub ring_entries: u32,
    pub uring_flags: crate::ring_flags::Choice,
    pub interval: Duration,
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
    pub cors: Cors,
    /// Filled in by the server once the fd limit is known, unless given.
    pub max_streams: Option<usize>,
    pub max_skips: u8,
    pub header_timeout: Duration,
    pub max_body: u64,
    pub max_inflight: usize,
    pub user_timeout: Duration,
    pub backlog: i32,
    pub admin: AdminListen,
    pub heartbeat: Option<Duration>,
    pub max_channels: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub history_age: Duration,
    pub max_event_bytes: usize,
    pub max_queued_bytes: usize,
    pub publish_batch: Duration,
    pub publish_token: Option<String>,
    pub admin_max_connections: usize,
    pub redis: Option<crate::engine::Settings>,
    pub collect_every: u32,
    /// Which stream options accepted sockets inherit from the listeners: found by the server's
    /// start-up probe (`net::probe_inherited`); none until then.
    pub inherited: crate::net::Inherited,
}

impl Config {
    pub fn from_args(args: &Args) -> Self {
        let workers = args.workers.map(|w| w as usize).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Config {
            listen: args.listen,
            workers,
            pin: !args.no_pin,
            driver: args.driver,
            ring_entries: args.ring_entries,
            uring_flags: args.uring_flags,
            interval: args.interval,
            event: args.event.clone(),
            data: args.data.clone(),
            retry: args.retry,
            cors: Cors::from_origins(&args.cors_origins),
            max_streams: args.max_streams,
            max_skips: args.max_skips,
            header_timeout: args.header_timeout,
            max_body: args.max_body,
            max_inflight: args.max_inflight as usize,
            user_timeout: args.user_timeout,
            backlog: args.backlog,
            admin: args.admin_listen,
            heartbeat: args.heartbeat.0,
            max_channels: args.max_channels_per_stream as usize,
            history: args.history as usize,
            history_bytes: args.history_bytes as usize,
            history_age: args.history_age,
            max_event_bytes: args.max_event_bytes as usize,
            max_queued_bytes: args.max_queued_bytes as usize,
            publish_batch: args.publish_batch,
            publish_token: args.publish_token.clone().filter(|t| !t.is_empty()),
            admin_max_connections: args.admin_max_connections as usize,
            redis: args.redis.as_ref().filter(|u| !u.is_empty()).map(|url| {
                crate::engine::Settings {
                    url: url.clone(),
                    stream: args.redis_stream.clone(),
                    maxlen: args.redis_maxlen as usize,
                }
            }),
            collect_every: args.collect_every,
            inherited: Default::default(),
        }
    }

    /// The options every connection gets (through the listener when inherited).
    pub fn stream_options(&self) -> crate::net::StreamOptions {
        crate::net::StreamOptions {
            user_timeout: self.user_timeout,
        }
    }

    /// Checks what one flag's parser cannot: how flags relate to each other and to the admin
    /// address. The error names the flags.
    pub fn check(&self) -> Result<(), String> {
        if self.max_queued_bytes < self.max_event_bytes + 256 {
            return Err(format!(
                "--max-queued-bytes {} must hold at least one event of --max-event-bytes {} (plus 256 bytes of framing)",
                self.max_queued_bytes, self.max_event_bytes
            ));
        }
        if self.history_bytes < self.max_event_bytes + 1024 {
            return Err(format!(
                "--history-bytes {} must hold at least one event of --max-event-bytes {}",
                self.history_bytes, self.max_event_bytes
            ));
        }
        if let AdminListen::On(a) = self.admin {
            if !a.ip().is_loopback() && self.publish_token.is_none() {
                return Err(format!(
                    "--admin-listen {a} is not a loopback address: anyone who reaches it could publish; set --publish-token (or RINGCAST_PUBLISH_TOKEN), or listen on 127.0.0.1"
                ));
            }
        }
        Ok(())
    }

    /// Seconds a client told 503 should wait: one tick, at least one second.
    pub fn retry_after_secs(&self) -> u64 {
        self.interval.as_secs().max(1)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_args(&Args::parse_from(["ringcast"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ringcast").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::from_args(&parse(&[]).unwrap());
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.event, "message");
        assert_eq!(c.data, "hello");
        assert_eq!(c.cors, Cors::Any);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin, AdminListen::On("127.0.0.1:9090".parse().unwrap()));
        let c = Config::from_args(&parse(&["--admin-listen", "none"]).unwrap());
        assert_eq!(c.admin, AdminListen::Off);
        assert!(parse(&["--admin-listen", "nowhere"]).is_err());
    }

    #[test]
    fn interval_takes_humantime() {
        let a = parse(&["--interval", "250ms"]).unwrap();
        assert_eq!(a.interval, Duration::from_millis(250));
        assert!(parse(&["--interval", "0s"]).is_err());
        assert!(parse(&["--interval", "soon"]).is_err());
    }

    #[test]
    fn event_name_rejects_line_breaks_and_names_the_flag() {
        for bad in ["a\nb", "a\rb", "a\0b", ""] {
            let err = parse(&["--event", bad]).unwrap_err().to_string();
            assert!(err.contains("--event"), "{err}");
        }
        assert_eq!(parse(&["--event", "tick"]).unwrap().event, "tick");
    }

    #[test]
    fn origins_make_a_list_and_star_means_any() {
        let a = parse(&[
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "http://b:3000/",
        ]);
        let c = Config::from_args(&a.unwrap());
        assert_eq!(
            c.cors,
            Cors::List(vec!["https://a.example".into(), "http://b:3000".into()])
        );
        let c = Config::from_args(&parse(&["--cors-origin", "*"]).unwrap());
        assert_eq!(c.cors, Cors::Any);
    }
}
