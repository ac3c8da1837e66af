//! sidestream-filter: proxy-wasm glue.
