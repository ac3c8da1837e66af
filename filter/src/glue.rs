//! The proxy-wasm entry points: Envoy's root and HTTP contexts, delegating to
//! [`crate::request`], [`crate::config_stream`] and [`crate::vm`]. Only built for
//! Wasm; everything it calls is unit-tested natively.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config_stream::{ConfigStream, Phase, TICK_PERIOD};
use crate::configure;
use crate::host::{Host, ProxyWasmHost};
use crate::metrics::{Metrics, FLUSH_PERIOD};
use crate::request::{RequestFlow, Verdict};
use crate::vm::{entropy_seed, VmState};

#[allow(unsafe_code)] // proxy_wasm::main! exports `_initialize` with #[no_mangle].
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::SidestreamRoot {
                context_id,
                ..super::SidestreamRoot::default()
            })
        });
    }}
}

/// The root context of one VM: configuration, the config stream, the tick.
#[derive(Default)]
pub struct SidestreamRoot {
    context_id: u32,
    vm: Option<Rc<VmState>>,
    config_stream: Option<ConfigStream>,
}

/// The body of a unary gRPC answer (empty for a failure or when unreadable).
fn grpc_call_body(vm: &VmState, status_code: u32, size: usize) -> Vec<u8> {
    if status_code != 0 || size == 0 {
        return Vec::new();
    }
    match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size) {
        Ok(body) => body.unwrap_or_default(),
        Err(status) => {
            vm.metrics.host_failure(
                &ProxyWasmHost,
                &crate::host::HostError::new("get_buffer(grpc receive)", status),
            );
            Vec::new()
        }
    }
}

impl Context for SidestreamRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(vm) = &self.vm else {
            return;
        };
        let body = grpc_call_body(vm, status_code, response_size);
        let now = ProxyWasmHost.now_nanos().unwrap_or(0);
        vm.mesh.on_root_call_answer(
            &ProxyWasmHost,
            &vm.metrics,
            token_id,
            status_code,
            &body,
            now,
        );
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        let (Some(vm), Some(stream)) = (&self.vm, &mut self.config_stream) else {
            return;
        };
        let message = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, message_size) {
            Ok(message) => message.unwrap_or_default(),
            Err(status) => {
                vm.metrics.host_failure(
                    &ProxyWasmHost,
                    &crate::host::HostError::new("get_buffer(grpc receive)", status),
                );
                return;
            }
        };
        stream.on_message(&ProxyWasmHost, vm, token_id, &message);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        let (Some(vm), Some(stream)) = (&self.vm, &mut self.config_stream) else {
            return;
        };
        let now = ProxyWasmHost.now_nanos().unwrap_or(0);
        // The status message is not read: the SDK's get_grpc_status panics on a
        // message that is not UTF-8, and the code says enough for the log.
        stream.on_close(vm, token_id, status_code, "", now);
    }
}

impl RootContext for SidestreamRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("sidestream: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let bootstrap = match configure::parse_bootstrap(&bytes) {
            Ok(bootstrap) => bootstrap,
            Err(error) => {
                log::error!("sidestream: invalid plugin configuration: {error}");
                return false;
            }
        };
        let seed = match entropy_seed() {
            Ok(seed) => seed,
            Err(error) => {
                log::error!(
                    "sidestream: no entropy for trace ids (WASI random_get failed): {error}"
                );
                return false;
            }
        };
        let host = ProxyWasmHost;
        // A reconfigured plugin starts over: drop the old config stream.
        if let Some(Phase::Open { token }) = self.config_stream.as_ref().map(ConfigStream::phase) {
            if let Err(status) = hostcalls::cancel_grpc_stream(token) {
                log::warn!("sidestream: cannot cancel the old config stream: {status:?}");
            }
        }
        let metrics = Metrics::define(&host);
        let vm = Rc::new(VmState::new(bootstrap, metrics, seed));
        vm.metrics.set(&host, vm.metrics.config_version, 0);
        // One name per VM for the control plane and the limiter alike.
        let node_id = (vm.bootstrap.control_plane.is_some() || vm.bootstrap.limiter.is_some())
            .then(|| configure::stream_node_id(&host, &vm.bootstrap.node_id, vm.random_u64()));
        if let Some(node_id) = &node_id {
            vm.mesh.set_instance(node_id, vm.random_u64());
        }
        vm.mesh.set_root_context(self.context_id);
        self.config_stream = vm
            .bootstrap
            .control_plane
            .clone()
            .zip(node_id)
            .map(|(settings, node_id)| ConfigStream::new(settings, node_id));
        // The tick drives the config stream and the limiter's Sync, and
        // flushes the batched per-request counters, so it runs without a
        // control plane too.
        let tick = if self.config_stream.is_some() {
            TICK_PERIOD
        } else {
            FLUSH_PERIOD
        };
        if let Err(status) = hostcalls::set_tick_period(tick) {
            log::error!("sidestream: cannot set the tick period: {status:?}");
            return false;
        }
        log::info!(
            "sidestream: configured (node {}, control plane {}, limiter {})",
            vm.bootstrap.node_id,
            vm.bootstrap
                .control_plane
                .as_ref()
                .map_or("none: embedded defaults only", |cp| cp.cluster.as_str()),
            vm.bootstrap
                .limiter
                .as_ref()
                .map_or("none: mesh-scoped policies fall back", |l| l
                    .cluster
                    .as_str())
        );
        self.vm = Some(vm);
        true
    }

    fn on_tick(&mut self) {
        let host = ProxyWasmHost;
        let Some(vm) = &self.vm else {
            return;
        };
        vm.metrics.flush(&host);
        let now = match host.now_nanos() {
            Ok(now) => now,
            Err(error) => {
                vm.metrics.host_failure(&host, &error);
                return;
            }
        };
        vm.mesh.on_tick(&host, &vm.metrics, now);
        if let Some(stream) = &mut self.config_stream {
            stream.on_tick(&host, vm, now);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.vm.as_ref().map(|vm| -> Box<dyn HttpContext> {
            Box::new(SidestreamHttp {
                vm: Rc::clone(vm),
                flow: RequestFlow::for_context(context_id),
            })
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct SidestreamHttp {
    vm: Rc<VmState>,
    flow: RequestFlow,
}

impl Context for SidestreamHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let body = grpc_call_body(&self.vm, status_code, response_size);
        self.flow
            .on_limiter_answer(&ProxyWasmHost, &self.vm, token_id, status_code, &body);
    }

    // The stream's end. Envoy calls on_done whenever it destroys the stream
    // (finished, reset, client gone); on_log is not exported (filter/exports.txt).
    fn on_done(&mut self) -> bool {
        self.flow.on_stream_end(&ProxyWasmHost, &self.vm);
        true
    }
}

impl HttpContext for SidestreamHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.flow.on_request_headers(&ProxyWasmHost, &self.vm) {
            Verdict::Continue => Action::Continue,
            Verdict::Stop | Verdict::Pause => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.flow.on_response_headers(&ProxyWasmHost, &self.vm);
        Action::Continue
    }
}
