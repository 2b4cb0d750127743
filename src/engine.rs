//! Cluster mode: many nodes share one event stream through Redis Streams.
//!
//! Three plain threads, each with its own blocking connection (the synchronous `redis` crate
//! needs no async runtime beside monoio):
//! - the **writer** takes publishes from the admin listener and appends them with `XADD … MAXLEN ~`
//!   (as a pipeline when several wait), answering each with the Redis entry id once Redis has
//!   acknowledged it;
//! - the **reader** follows the stream with `XREAD BLOCK` from the last id it handed on and feeds
//!   every entry, local or not, into the hub, which hands it to the cores exactly like a local
//!   publish: every node delivers the same events in the same (Redis id) order;
//! - the **replayer** answers the cores' replays that the node's own history cannot complete, with
//!   `XRANGE` after the client's id, or says why it cannot.
//!
//! An epoch (a random value created once in Redis with `SET NX`, beside the stream) tells a Redis
//! that lost its data from one that came back with it: when it changes, every id from before the
//! new epoch gets `ringcast-reset`. Redis unavailable: publishes fail fast (503), streams stay,
//! the reader reconnects with backoff and resumes from its last id, so everything appended
//! meanwhile is still delivered. Every change of state is logged once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures::channel::{mpsc as fmpsc, oneshot};
use redis::Value;

use crate::event::{unix_ms, Event, EventId};
use crate::history::{Replay, ResetReason};
use crate::hub::Hub;

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub stream: String,
    /// `XADD … MAXLEN ~ N`.
    pub maxlen: usize,
}

impl Settings {
    /// The URL without its password, for logs and the admin endpoints.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.url[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }
}

/// Entries one replay may read from Redis; a resume further behind gets `ringcast-reset`.
pub const MAX_REPLAY: usize = 10_000;
/// Entries one `XREAD` takes.
const READ_BATCH: usize = 1000;
/// Publishes sent in one pipeline.
const WRITE_BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the engine is doing, for `/healthz`, `/info` and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Up,
    Down(String),
}

/// Why a publish failed.
#[derive(Debug)]
pub enum PublishError {
    /// Redis cannot be reached (or refused the command): 503.
    Unavailable(String),
}

struct Job {
    channels: Box<[Box<str>]>,
    event: String,
    data: String,
    reply: oneshot::Sender<Result<EventId, PublishError>>,
}

/// A replay the node's history could not complete.
pub struct ReplayJob {
    pub channels: Vec<Box<str>>,
    pub after: EventId,
    pub upto: EventId,
    /// What the local history has (sent back, with a reset, when Redis cannot do better).
    pub local: Replay,
    pub key: usize,
    pub serial: u64,
    pub reply: fmpsc::UnboundedSender<ReplayDone>,
}

/// The answer to a [`ReplayJob`], for the core that asked.
pub struct ReplayDone {
    pub key: usize,
    pub serial: u64,
    pub after: EventId,
    pub upto: EventId,
    pub replay: Replay,
}

/// Counters and gauges of the engine (single writers: its threads).
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicBool,
    pub reconnects: AtomicU64,
    pub events_read: AtomicU64,
    pub lag_ms: AtomicU64,
    pub lag_entries: AtomicU64,
    pub publish_errors: AtomicU64,
    pub replays: AtomicU64,
    pub epoch_changes: AtomicU64,
}

/// See the module docs.
pub struct Engine {
    settings: Settings,
    client: redis::Client,
    hub: Arc<Hub>,
    pub counters: Counters,
    state: Mutex<(State, Option<String>)>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    replayer: Mutex<Option<mpsc::Sender<ReplayJob>>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Checks the URL and starts the threads (Redis may be down: the reader keeps trying).
    pub fn start(settings: Settings, hub: Arc<Hub>) -> Result<Arc<Engine>, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("--redis {}: {e}", settings.redacted_url()))?;
        let (wtx, wrx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        let engine = Arc::new(Engine {
            settings,
            client,
            hub,
            counters: Counters::default(),
            state: Mutex::new((State::Connecting, None)),
            writer: Mutex::new(Some(wtx)),
            replayer: Mutex::new(Some(rtx)),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| format!("cannot start the {name} thread: {e}"))
        };
        let (e1, e2, e3) = (engine.clone(), engine.clone(), engine.clone());
        let threads = vec![
            spawn("ringcast-redis-r", Box::new(move || e1.read_loop()))?,
            spawn("ringcast-redis-w", Box::new(move || e2.write_loop(wrx)))?,
            spawn("ringcast-redis-x", Box::new(move || e3.replay_loop(rrx)))?,
        ];
        *engine.threads.lock().unwrap() = threads;
        Ok(engine)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// (state, epoch).
    pub fn state(&self) -> (State, Option<String>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a state and logs it once per change.
    fn set_state(&self, new: State) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match (&st.0, &new) {
            (State::Down(_), State::Down(_)) => false,
            (a, b) => a != b,
        };
        if changed {
            match &new {
                State::Up => tracing::info!(
                    url = %self.settings.redacted_url(),
                    stream = %self.settings.stream,
                    epoch = st.1.as_deref().unwrap_or("?"),
                    "redis up: publishing and following the stream"
                ),
                State::Down(why) => tracing::warn!(
                    url = %self.settings.redacted_url(),
                    error = %why,
                    "redis unavailable: publishes get 503, streams stay open; reconnecting with backoff"
                ),
                State::Connecting => {}
            }
        }
        self.counters.up.store(new == State::Up, Relaxed);
        st.0 = new;
    }

    /// Appends an event; resolves with its Redis id once Redis acknowledged it.
    pub fn publish(
        &self,
        channels: Box<[Box<str>]>,
        event: String,
        data: String,
    ) -> oneshot::Receiver<Result<EventId, PublishError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            channels,
            event,
            data,
            reply,
        };
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if let Err(mpsc::SendError(job)) = w.send(job) {
                let _ = job
                    .reply
                    .send(Err(PublishError::Unavailable("shutting down".into())));
            }
        }
        rx
    }

    /// Asks Redis for a replay the local history cannot complete.
    pub fn replay(&self, job: ReplayJob) {
        let guard = self.replayer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(r) => {
                if let Err(mpsc::SendError(job)) = r.send(job) {
                    job.answer_locally(ResetReason::Unavailable);
                }
            }
            None => job.answer_locally(ResetReason::Unavailable),
        }
    }

    /// Stops the threads (bounded: blocking calls time out within a couple of seconds; threads
    /// still busy are left behind, the process is exiting).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + Duration::from_millis(300);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.settings.stream)
    }

    /// Creates the epoch if Redis has none (`SET NX`) and returns it with the id its events
    /// start after.
    fn epoch(&self, con: &mut redis::Connection) -> redis::RedisResult<(String, EventId)> {
        let fresh = format!("{:016x}:{}", rand_u64(), unix_ms(SystemTime::now()));
        let key = self.epoch_key();
        let _: Value = redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .query(con)?;
        let epoch: String = redis::cmd("GET").arg(&key).query(con)?;
        let start_ms = epoch
            .rsplit(':')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        Ok((epoch, EventId::new(start_ms, 0)))
    }

    // ---- the reader ----

    fn read_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut epoch: Option<String> = None;
        let mut connected_once = false;
        while !self.stop.load(Relaxed) {
            let con = self.connect().and_then(|mut con| {
                let e = self.epoch(&mut con)?;
                Ok((con, e))
            });
            let (mut con, (now_epoch, epoch_start)) = match con {
                Ok(c) => c,
                Err(e) => {
                    self.set_state(State::Down(e.to_string()));
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if connected_once {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            connected_once = true;
            match &epoch {
                Some(old) if *old != now_epoch => {
                    self.counters.epoch_changes.fetch_add(1, Relaxed);
                    tracing::warn!(
                        old = %old,
                        new = %now_epoch,
                        "redis lost its data (new epoch): resumes from ids before it get ringcast-reset"
                    );
                    self.hub.set_epoch_floor(epoch_start);
                }
                _ => {}
            }
            epoch = Some(now_epoch.clone());
            self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(now_epoch);
            self.set_state(State::Up);
            if let Err(e) = self.follow(&mut con) {
                if !self.stop.load(Relaxed) {
                    self.set_state(State::Down(e.to_string()));
                }
            }
        }
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `XREAD BLOCK` from the hub's last id until an error.
    fn follow(&self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        let mut last_lag = Instant::now();
        while !self.stop.load(Relaxed) {
            let after = self.hub.last_id();
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(500)
                .arg("STREAMS")
                .arg(&self.settings.stream)
                .arg(after.to_string())
                .query(con)?;
            let entries = stream_entries(reply);
            let n = entries.len();
            for (id, fields) in entries {
                let Some(ev) = decode(id, &fields) else {
                    tracing::warn!(id = %id, "skipping a stream entry that is not a ringcast event");
                    continue;
                };
                self.counters.events_read.fetch_add(1, Relaxed);
                if self.hub.ingest(Arc::new(ev)).is_err() {
                    return Ok(()); // shutting down
                }
            }
            if last_lag.elapsed() >= Duration::from_secs(1) || n == READ_BATCH {
                self.measure_lag(con)?;
                last_lag = Instant::now();
            }
        }
        Ok(())
    }

    /// Reader lag: how far the last id handed on is behind the stream's last entry.
    fn measure_lag(&self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        let ours = self.hub.last_id();
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(&self.settings.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(con)?;
        let newest = range_entries(newest).first().map(|(id, _)| *id);
        let (ms, entries) = match newest {
            Some(n) if n > ours => {
                let behind: Value = redis::cmd("XRANGE")
                    .arg(&self.settings.stream)
                    .arg(format!("({ours}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_BATCH * 10)
                    .query(con)?;
                (
                    n.ms.saturating_sub(ours.ms),
                    range_entries(behind).len() as u64,
                )
            }
            _ => (0, 0),
        };
        self.counters.lag_ms.store(ms, Relaxed);
        self.counters.lag_entries.store(entries, Relaxed);
        Ok(())
    }

    // ---- the writer ----

    fn write_loop(self: Arc<Self>, jobs: mpsc::Receiver<Job>) {
        let mut con: Option<redis::Connection> = None;
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            if !self.counters.up.load(Relaxed) {
                let why = match self.state().0 {
                    State::Down(e) => e,
                    _ => "not connected yet".into(),
                };
                self.fail(batch, &why);
                continue;
            }
            if con.is_none() {
                match self.connect() {
                    Ok(c) => con = Some(c),
                    Err(e) => {
                        self.fail(batch, &e.to_string());
                        continue;
                    }
                }
            }
            let Some(c) = con.as_mut() else { continue };
            let mut pipe = redis::pipe();
            for j in &batch {
                pipe.cmd("XADD")
                    .arg(&self.settings.stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.settings.maxlen)
                    .arg("*")
                    .arg("c")
                    .arg(j.channels.join(","))
                    .arg("e")
                    .arg(&j.event)
                    .arg("d")
                    .arg(&j.data);
            }
            match pipe.query::<Vec<String>>(c) {
                Ok(ids) if ids.len() == batch.len() => {
                    for (j, id) in batch.into_iter().zip(ids) {
                        let r = EventId::parse(id.as_bytes()).map_err(|_| {
                            PublishError::Unavailable(format!("redis answered {id:?}"))
                        });
                        let _ = j.reply.send(r);
                    }
                }
                Ok(_) => self.fail(batch, "redis answered a short pipeline"),
                Err(e) => {
                    con = None;
                    self.fail(batch, &e.to_string());
                }
            }
        }
    }

    fn fail(&self, batch: Vec<Job>, why: &str) {
        self.counters
            .publish_errors
            .fetch_add(batch.len() as u64, Relaxed);
        for j in batch {
            let _ = j.reply.send(Err(PublishError::Unavailable(why.to_owned())));
        }
    }

    // ---- the replayer ----

    fn replay_loop(self: Arc<Self>, jobs: mpsc::Receiver<ReplayJob>) {
        let mut con: Option<redis::Connection> = None;
        while let Ok(job) = jobs.recv() {
            self.counters.replays.fetch_add(1, Relaxed);
            if !self.counters.up.load(Relaxed) {
                job.answer_locally(ResetReason::Unavailable);
                continue;
            }
            if con.is_none() {
                con = self.connect().ok();
            }
            let Some(c) = con.as_mut() else {
                job.answer_locally(ResetReason::Unavailable);
                continue;
            };
            match self.replay_from_redis(c, &job) {
                Ok(replay) => job.answer(replay),
                Err(e) => {
                    tracing::debug!(error = %e, "replay from redis failed");
                    con = None;
                    job.answer_locally(ResetReason::Unavailable);
                }
            }
        }
    }

    /// Entries after `job.after` up to `job.upto` on the job's channels, if Redis still has all
    /// of them (nothing after the id trimmed: `max-deleted-entry-id` of `XINFO STREAM`).
    fn replay_from_redis(
        &self,
        con: &mut redis::Connection,
        job: &ReplayJob,
    ) -> redis::RedisResult<Replay> {
        let info: Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.settings.stream)
            .query(con)
            .or_else(|e| {
                // No stream yet: nothing was ever published, nothing was lost.
                if e.to_string().contains("no such key") {
                    Ok(Value::Nil)
                } else {
                    Err(e)
                }
            })?;
        let deleted = info_field(&info, "max-deleted-entry-id")
            .and_then(|v| EventId::parse(v.as_bytes()).ok())
            .unwrap_or(EventId::ZERO);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.settings.stream)
            .arg(format!("({}", job.after))
            .arg(job.upto.to_string())
            .arg("COUNT")
            .arg(MAX_REPLAY + 1)
            .query(con)?;
        let entries = range_entries(reply);
        if job.after < deleted || entries.len() > MAX_REPLAY {
            return Ok(Replay {
                reset: Some(ResetReason::Evicted),
                events: job.local.events.clone(),
            });
        }
        let mut events = Vec::new();
        for (id, fields) in entries {
            if let Some(ev) = decode(id, &fields) {
                if ev.channels.iter().any(|c| job.channels.contains(c)) {
                    events.push(Arc::new(ev));
                }
            }
        }
        Ok(Replay {
            reset: None,
            events,
        })
    }
}

impl ReplayJob {
    fn answer(self, replay: Replay) {
        let _ = self.reply.unbounded_send(ReplayDone {
            key: self.key,
            serial: self.serial,
            after: self.after,
            upto: self.upto,
            replay,
        });
    }

    /// Redis cannot help: what the local history has, with a reset saying why.
    fn answer_locally(mut self, why: ResetReason) {
        let events = std::mem::take(&mut self.local.events);
        self.answer(Replay {
            reset: Some(why),
            events,
        });
    }
}

/// A stream entry: its id and its field/value pairs.
type Entry = (EventId, Vec<(Vec<u8>, Vec<u8>)>);

/// `XREAD` reply → entries of our one stream.
fn stream_entries(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => range_entries(kv.pop().unwrap_or(Value::Nil)),
            _ => Vec::new(),
        })
        .collect()
}

/// `XRANGE` reply → (id, field/value pairs).
fn range_entries(reply: Value) -> Vec<Entry> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = EventId::parse(&bytes(parts.pop()?)?).ok()?;
            let flat = match fields {
                Value::Array(f) => f,
                _ => Vec::new(),
            };
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((bytes(k)?, bytes(v)?));
            }
            Some((id, pairs))
        })
        .collect()
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A field of an `XINFO STREAM` reply, as text.
fn info_field(info: &Value, name: &str) -> Option<String> {
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    pairs.into_iter().find_map(|(k, v)| {
        let k = bytes(k.clone())?;
        (k == name.as_bytes())
            .then(|| bytes(v.clone()))
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    })
}

/// A stream entry written by a ringcast writer (`c`, `e`, `d`) → an event with its Redis id.
fn decode(id: EventId, fields: &[(Vec<u8>, Vec<u8>)]) -> Option<Event> {
    let get = |k: &[u8]| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    let channels = std::str::from_utf8(get(b"c")?).ok()?;
    let channels: Box<[Box<str>]> = channels
        .split(',')
        .filter(|c| crate::event::valid_channel(c.as_bytes()))
        .map(Box::from)
        .collect();
    if channels.is_empty() {
        return None;
    }
    let event = std::str::from_utf8(get(b"e")?).ok()?;
    if !crate::event::valid_event_type(event) {
        return None;
    }
    let data = std::str::from_utf8(get(b"d")?).ok()?;
    Some(Event::new(id, channels, event, data))
}

/// A random value for the epoch (no cryptographic need: it only has to differ between epochs).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
