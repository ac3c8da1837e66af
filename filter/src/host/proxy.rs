//! [`ProxyWasmHost`]: the [`Host`] and [`GrpcHost`] traits over `proxy_wasm::hostcalls`.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{GrpcStatusCode, MapType, MetricType, Status};

use super::{
    CallOwner, GrpcCode, GrpcHost, Host, HostError, MetricKind, ProxyWasmHost, SharedSetError,
};

/// The Envoy foreign function that drops the cached route of the current stream.
const CLEAR_ROUTE_CACHE: &str = "clear_route_cache";

impl Host for ProxyWasmHost {
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        crate::header_map_abi::request_header_map()
            .map_err(|status| HostError::new("get_header_map_pairs(request headers)", status))
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), HostError> {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value)
            .map_err(|status| HostError::new("set_map_value(request header)", status))
    }

    fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value)
            .map_err(|status| HostError::new("add_map_value(response header)", status))
    }

    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        hostcalls::send_http_response(status, headers.to_vec(), Some(body))
            .map_err(|status| HostError::new("send_local_response", status))
    }

    fn send_grpc_response(
        &self,
        code: GrpcCode,
        message: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), HostError> {
        let code = match code {
            GrpcCode::ResourceExhausted => GrpcStatusCode::ResourceExhausted,
            GrpcCode::Unavailable => GrpcStatusCode::Unavailable,
        };
        let metadata: Vec<(&str, &[u8])> = metadata
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        hostcalls::send_grpc_response(code, Some(message), metadata)
            .map_err(|status| HostError::new("send_local_response(grpc)", status))
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        hostcalls::get_shared_data(key).map_err(|status| HostError::new("get_shared_data", status))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedSetError::CasMismatch),
            Err(status) => Err(SharedSetError::Host(HostError::new(
                "set_shared_data",
                status,
            ))),
        }
    }

    fn clear_route_cache(&self) -> Result<(), HostError> {
        hostcalls::call_foreign_function(CLEAR_ROUTE_CACHE, None)
            .map(|_| ())
            .map_err(|status| HostError::new("call_foreign_function(clear_route_cache)", status))
    }

    fn source_address(&self) -> Result<Option<String>, HostError> {
        let value = hostcalls::get_property(vec!["source", "address"])
            .map_err(|status| HostError::new("get_property(source.address)", status))?;
        Ok(value.and_then(|bytes| String::from_utf8(bytes).ok()))
    }

    fn envoy_node_id(&self) -> Result<Option<String>, HostError> {
        // `node.id` is the documented proxy-wasm property; Envoy 1.40 answers
        // NotFound for it (in the root context too) and has the node as the
        // attribute `xds.node` instead. The first non-empty answer wins.
        let mut failure = None;
        for (path, call) in [
            (vec!["node", "id"], "get_property(node.id)"),
            (vec!["xds", "node", "id"], "get_property(xds.node.id)"),
        ] {
            match hostcalls::get_property(path) {
                Ok(Some(bytes)) => {
                    if let Some(id) = String::from_utf8(bytes).ok().filter(|id| !id.is_empty()) {
                        return Ok(Some(id));
                    }
                }
                Ok(None) => {}
                Err(status) => failure = Some(HostError::new(call, status)),
            }
        }
        failure.map_or(Ok(None), Err)
    }

    fn now_nanos(&self) -> Result<u64, HostError> {
        let now = hostcalls::get_current_time()
            .map_err(|status| HostError::new("get_current_time", status))?;
        let since_epoch = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| HostError::new("get_current_time", "before the Unix epoch"))?;
        Ok(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name)
            .map_err(|status| HostError::new("define_metric", status))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, delta)
            .map_err(|status| HostError::new("increment_metric", status))
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value)
            .map_err(|status| HostError::new("record_metric", status))
    }

    fn resume_http_request(&self) -> Result<(), HostError> {
        hostcalls::resume_http_request()
            .map_err(|status| HostError::new("resume_http_request", status))
    }

    fn dispatch_grpc_call(
        &self,
        owner: CallOwner,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: std::time::Duration,
    ) -> Result<u32, HostError> {
        let dispatch = || {
            hostcalls::dispatch_grpc_call(
                cluster,
                service,
                method,
                Vec::new(),
                Some(message),
                timeout,
            )
            .map_err(|status| HostError::new("dispatch_grpc_call", status))
        };
        match owner {
            CallOwner::Current => dispatch(),
            CallOwner::Root { root, current } => {
                // Host calls now act for the root context, which lives as long
                // as the VM, so the call is not cancelled with the HTTP stream.
                hostcalls::set_effective_context(root)
                    .map_err(|status| HostError::new("set_effective_context(root)", status))?;
                let result = dispatch();
                if let Err(status) = hostcalls::set_effective_context(current) {
                    log::warn!("sidestream: cannot switch back to context {current}: {status:?}");
                }
                result
            }
        }
    }
}

impl GrpcHost for ProxyWasmHost {
    fn open_grpc_stream(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        hostcalls::open_grpc_stream(cluster, service, method, metadata.to_vec())
            .map_err(|status| HostError::new("open_grpc_stream", status))
    }

    fn send_grpc_stream_message(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        hostcalls::send_grpc_stream_message(token, Some(message), false)
            .map_err(|status| HostError::new("send_grpc_stream_message", status))
    }

    fn cancel_grpc_stream(&self, token: u32) -> Result<(), HostError> {
        hostcalls::cancel_grpc_stream(token)
            .map_err(|status| HostError::new("cancel_grpc_stream", status))
    }
}
