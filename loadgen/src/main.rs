//! ringcast-loadgen: opens many EventSource-like connections to an SSE server and measures
//! what it delivers. The binary is a thin shell over the modules below.

mod cli;
mod conn;
mod engine;
mod http;
mod metrics;
mod parser;

fn main() {}
