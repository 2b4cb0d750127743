//! Starting, running and stopping the whole server: the fd limit and the stream capacity that
//! follows from it, the listeners, one worker thread per core, the start-up banner and the
//! shutdown summary.
//!
//! [`Server::start`] returns once every worker is serving (or with the first worker's error), so
//! the caller knows the bound address and the drivers that actually run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::admin::{self, Admin};
use crate::config::{AdminListen, Config};
use crate::engine::Engine;
use crate::history;
use crate::hub::{Hub, Sequencer};
use crate::metrics::{Snapshot, WorkerStats};
use crate::net::{self, FdLimit};
use crate::streams::StreamCap;
use crate::worker::{self, Started};

/// A running server.
pub struct Server {
    addr: SocketAddr,
    cfg: Arc<Config>,
    fd_limit: FdLimit,
    cap: Arc<StreamCap>,
    workers: Vec<Running>,
    started: Vec<Started>,
    exited: mpsc::Receiver<usize>,
    admin: Option<Admin>,
    hub: Arc<Hub>,
    engine: Option<Arc<Engine>>,
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

/// Totals at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub totals: Snapshot,
    /// Workers that had not finished within the grace period.
    pub stragglers: usize,
}

impl Server {
    /// Raises the fd limit, binds the listeners and starts the workers.
    pub fn start(mut cfg: Config) -> Result<Server, String> {
        cfg.check()?;
        let fd_limit =
            net::raise_fd_limit().map_err(|e| format!("cannot read the fd limit: {e}"))?;
        let capacity = fd_limit.soft.saturating_sub(net::reserved_fds(cfg.workers)) as usize;
        let max_streams = match cfg.max_streams {
            Some(n) => {
                if n > capacity {
                    tracing::warn!(
                        max_streams = n,
                        capacity,
                        "--max-streams exceeds what the open-files limit allows; accepts will fail with EMFILE before the cap"
                    );
                }
                n
            }
            None => capacity,
        };
        cfg.max_streams = Some(max_streams);
        cfg.inherited = net::probe_inherited(cfg.stream_options());
        let cfg = Arc::new(cfg);

        let listeners =
            net::bind_listeners(cfg.listen, cfg.workers, cfg.backlog, cfg.stream_options())
                .map_err(|e| format!("--listen {}: {e}", cfg.listen))?;
        let addr = listeners[0]
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;

        let cores = if cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        if cfg.pin && cores.is_empty() {
            tracing::warn!("cannot list the CPU cores; workers run unpinned");
        }
        if let AdminListen::On(a) = cfg.admin {
            let clash = a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified());
            if clash && a.port() != 0 {
                return Err(format!(
                    "--admin-listen {a}: must not be the public listener ({addr})"
                ));
            }
        }
        let cap = Arc::new(StreamCap::new(max_streams));
        let sequencer = match cfg.redis {
            Some(_) => Sequencer::Engine,
            None => Sequencer::Local,
        };
        let (hub, inboxes) = Hub::with_sequencer(
            history::Limits {
                per_channel: cfg.history,
                bytes: cfg.history_bytes,
                age: cfg.history_age,
            },
            cfg.workers,
            sequencer,
        );
        let engine = match &cfg.redis {
            Some(settings) => Some(Engine::start(settings.clone(), hub.clone())?),
            None => None,
        };
        let alive = Arc::new(AtomicUsize::new(cfg.workers));
        let (started_tx, started_rx) = mpsc::channel();
        let (exited_tx, exited) = mpsc::channel();
        let mut workers = Vec::with_capacity(cfg.workers);
        for ((id, listener), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
            let (stop_tx, stop_rx) = oneshot::channel();
            let stats = Arc::new(WorkerStats::default());
            let spec = worker::Spec {
                id,
                core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
                listener,
                cfg: cfg.clone(),
                cap: cap.clone(),
                stats: stats.clone(),
                hub: hub.clone(),
                engine: engine.clone(),
                inbox,
                started: started_tx.clone(),
                stop: stop_rx,
            };
            let exited_tx = exited_tx.clone();
            let alive = alive.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringcast-w{id}"))
                .spawn(move || {
                    worker::run(spec);
                    alive.fetch_sub(1, Ordering::AcqRel);
                    let _ = exited_tx.send(id);
                })
                .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
            workers.push(Running {
                stop: Some(stop_tx),
                thread: Some(thread),
                stats,
            });
        }
        drop(started_tx);

        let mut started = Vec::with_capacity(workers.len());
        let mut server = Server {
            addr,
            cfg,
            fd_limit,
            cap,
            workers,
            started: Vec::new(),
            exited,
            admin: None,
            hub,
            engine,
        };
        for _ in 0..server.workers.len() {
            match started_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(s)) => started.push(s),
                Ok(Err(e)) => {
                    server.stop();
                    return Err(e);
                }
                Err(_) => {
                    server.stop();
                    return Err("a worker did not start within 10 s".into());
                }
            }
        }
        started.sort_by_key(|s| s.id);
        server.started = started;
        if let AdminListen::On(a) = server.cfg.admin {
            let state = admin::State {
                cfg: server.cfg.clone(),
                listen: server.addr,
                kernel: net::kernel_release(),
                fd_limit: server.fd_limit,
                workers: server.started.clone(),
                stats: server.workers.iter().map(|w| w.stats.clone()).collect(),
                cap: server.cap.clone(),
                hub: server.hub.clone(),
                engine: server.engine.clone(),
                alive,
                started_at: std::time::SystemTime::now(),
                counters: Default::default(),
            };
            match Admin::start(a, state) {
                Ok(admin) => server.admin = Some(admin),
                Err(e) => {
                    server.stop();
                    return Err(format!("--admin-listen {a}: {e}"));
                }
            }
        }
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics`, `/healthz` and `/info` are served, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    pub fn workers(&self) -> &[Started] {
        &self.started
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn fd_limit(&self) -> FdLimit {
        self.fd_limit
    }

    pub fn max_streams(&self) -> usize {
        self.cap.max()
    }

    /// Streams open now, over all workers.
    pub fn streams_open(&self) -> usize {
        self.cap.open()
    }

    /// Events published since start.
    pub fn events_published(&self) -> u64 {
        self.hub.published()
    }

    /// Counters summed over the workers, now.
    pub fn totals(&self) -> Snapshot {
        let mut t = Snapshot::default();
        for w in &self.workers {
            t += w.stats.snapshot();
        }
        t
    }

    /// Logs the start-up banner.
    pub fn log_banner(&self) {
        let cfg = &self.cfg;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            kernel = %net::kernel_release(),
            workers = cfg.workers,
            interval = %humantime::format_duration(cfg.interval),
            "ringcast starting"
        );
        for w in &self.started {
            let core = w.core.map_or("unpinned".to_string(), |c| c.to_string());
            match &w.fallback {
                Some(why) => tracing::warn!(worker = w.id, core = %core, driver = %w.driver,
                    "io_uring unavailable, fell back to epoll: {why}"),
                None => {
                    let flags = w.uring_flags.map_or("-".to_string(), |f| f.to_string());
                    tracing::info!(worker = w.id, core = %core, driver = %w.driver, uring_flags = %flags, "worker serving");
                    for why in &w.flags_refused {
                        tracing::info!(
                            worker = w.id,
                            "ring setup flags refused by this kernel: {why}"
                        );
                    }
                }
            }
        }
        let inherited = cfg.inherited;
        if inherited.all() {
            tracing::info!(%inherited, "socket options set on the listeners and inherited by every accepted stream");
        } else {
            tracing::info!(%inherited, "socket options not inherited from the listeners are set on each new stream");
        }
        tracing::info!(
            fd_soft = self.fd_limit.soft,
            fd_hard = self.fd_limit.hard,
            max_streams = self.cap.max(),
            "open-files limit raised to the hard limit; at most {} streams (raise `ulimit -Hn` for more)",
            self.cap.max()
        );
        if let Some(e) = &self.engine {
            let s = e.settings();
            tracing::info!(
                redis = %s.redacted_url(),
                stream = %s.stream,
                maxlen = s.maxlen,
                "cluster mode: events go through the redis stream"
            );
        }
        match self.admin_addr() {
            Some(a) => tracing::info!("admin endpoints on http://{a} (/metrics, /healthz, /info)"),
            None => tracing::info!("admin endpoints disabled (--admin-listen none)"),
        }
        tracing::info!("listening on http://{}", self.addr);
    }

    /// Blocks until one worker thread exits on its own (which only an error makes it do).
    pub fn wait_worker_exit(&self, timeout: Duration) -> Option<usize> {
        self.exited.recv_timeout(timeout).ok()
    }

    /// Stops accepting, closes every stream and joins the workers, waiting at most 1.5 s.
    pub fn stop(&mut self) -> Summary {
        if let Some(mut admin) = self.admin.take() {
            admin.stop();
        }
        self.hub.close();
        if let Some(engine) = &self.engine {
            engine.stop();
        }
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut stragglers = 0;
        for w in &mut self.workers {
            let Some(t) = w.thread.take() else { continue };
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stragglers += 1;
            }
        }
        Summary {
            totals: self.totals(),
            stragglers,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.workers.iter().any(|w| w.stop.is_some()) {
            self.stop();
        }
    }
}
