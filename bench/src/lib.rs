//! sidestream-bench: the benchmark harness behind `make bench`.
//!
//! Load clients (fixed-rate HTTP latency, SSE idle connections, SSE fan-out
//! with publish-to-receive latency, control-plane propagation), the small
//! upstream and GRIP origin the proxies under test talk to, and the report
//! (plots and BENCHMARKS.md). `scripts/bench.sh` starts the servers and runs
//! these; see BENCHMARKS.md for the method.

pub mod cpu;
pub mod fanout;
pub mod histogram;
pub mod http1;
pub mod latency;
pub mod memory;
pub mod mesh;
pub mod otlp_sink;
pub mod propagation;
pub mod publish;
pub mod report;
pub mod sse;
pub mod upstream;
