//! ringcast: a thread-per-core io_uring Server-Sent-Events server.
//!
//! Each worker thread runs its own monoio runtime pinned to a core, accepts on its own
//! SO_REUSEPORT listener, and keeps its SSE streams in a slab that one timer per core walks once
//! per tick, writing a frame encoded once to every stream. See README.md for the behaviour.
//!
//! The data path, in the order a connection meets it (start reading here):
//! 1. **accept**: `worker::accept_loop` spawns one task per new connection (`conn::serve`);
//! 2. **request phase**: `conn` reads into a pooled buffer, [`session::Session`] parses with
//!    [`http::parse`] and decides: answer `ok`, refuse, or open a stream;
//! 3. **stream slab**: the socket moves into the core's slab, a tick stream in
//!    `streams::Streams`, a channel stream in `subs::Subs` (which indexes it by channel); the
//!    task ends, the stream costs a slot;
//! 4. **tick walk**: `streams::Walker::run`, one loop per core, writes each tick's frame to every
//!    tick stream, and each published event (from the [`hub`], through the core's inbox) to
//!    every subscriber of its channels.
//!
//! Modules, from the wire inwards:
//! - [`config`]: flags and their validation;
//! - [`http`]: request parsing, classification and the canned responses;
//! - [`sse`]: the tick clock, frame encoding, the stream's response head;
//! - [`session`]: the request phase as a state machine without I/O (fuzzed);
//! - [`conn`]: a connection from accept until it becomes a stream;
//! - [`streams`]: the per-core slab, the tick walk, and the core loop;
//! - [`subs`]: a core's channel streams, their index and queues;
//! - [`event`], [`history`], [`hub`]: published events, the replay history, and the event
//!   source that sequences events and hands them to every core;
//! - [`publish`]: the publish request's checks (fuzzed);
//! - [`engine`]: cluster mode, one event stream for many nodes through Redis Streams;
//! - [`worker`]: one pinned runtime (driver choice, accept loop);
//! - [`ring_flags`]: io_uring setup flags and their fallback chain;
//! - [`server`]: start-up, banner, shutdown;
//! - [`net`], [`metrics`]: sockets and fd limits, per-worker counters;
//! - [`admin`]: `POST /publish`, `/metrics`, `/healthz`, `/info` on a separate listener.

pub mod admin;
pub mod config;
pub(crate) mod conn;
pub mod engine;
pub mod event;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod net;
pub(crate) mod parked;
pub mod publish;
pub mod ring_flags;
pub mod server;
pub mod session;
pub mod sse;
pub(crate) mod streams;
pub(crate) mod subs;
pub mod uring_facts;
pub mod worker;

pub use config::{Args, Config};
pub use server::Server;
