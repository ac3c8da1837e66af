//! sidestream's protobuf messages. With the default `grpc` feature the tonic
//! clients and servers are generated too; the Wasm filter turns it off and uses
//! the messages with prost alone.

/// Config discovery (control plane → data planes).
pub mod config {
    /// Version 1 of the config discovery protocol.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/sidestream.config.v1.rs"));

        /// Full gRPC method path of `ConfigDiscovery.StreamConfig`, for clients
        /// that frame calls themselves (the Wasm filter).
        pub const STREAM_CONFIG_SERVICE: &str = "sidestream.config.v1.ConfigDiscovery";
        /// Method name of the config stream within [`STREAM_CONFIG_SERVICE`].
        pub const STREAM_CONFIG_METHOD: &str = "StreamConfig";
    }
}

/// Push server API (subscribe, publish).
pub mod push {
    /// Version 1 of the push API.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/sidestream.push.v1.rs"));
    }
}

/// Mesh-wide stream limits (filter → sidestream-limiter).
pub mod limits {
    /// Version 1 of the limits protocol.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/sidestream.limits.v1.rs"));

        /// Full gRPC service name of `StreamLimiter`, for clients that frame
        /// calls themselves (the Wasm filter).
        pub const STREAM_LIMITER_SERVICE: &str = "sidestream.limits.v1.StreamLimiter";
    }
}
