//! sidestream-bench.
