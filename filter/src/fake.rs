//! A fake host for the unit tests: headers, shared data with Envoy's
//! compare-and-swap semantics, metrics by name, gRPC streams, injectable failures.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::host::{CallOwner, GrpcCode, GrpcHost, Host, HostError, MetricKind, SharedSetError};

/// A unary gRPC call the filter dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    pub owner: CallOwner,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// A local response the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalResponse {
    Http {
        status: u32,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Grpc {
        code: GrpcCode,
        message: String,
        metadata: Vec<(String, String)>,
    },
}

/// What all workers of one Envoy share: shared data and metrics.
#[derive(Debug, Default)]
pub struct FakeEnvoy {
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    metrics: RefCell<Vec<(String, MetricKind, i64)>>,
    /// Samples recorded into histograms: (name, value).
    samples: RefCell<Vec<(String, u64)>>,
    /// Envoy's node id (`node.id`); `None`: not set.
    node_id: Option<String>,
}

impl FakeEnvoy {
    pub fn new() -> Rc<FakeEnvoy> {
        Rc::new(FakeEnvoy {
            next_cas: Cell::new(1),
            ..FakeEnvoy::default()
        })
    }

    /// An Envoy whose bootstrap sets `node.id`.
    pub fn with_node_id(node_id: &str) -> Rc<FakeEnvoy> {
        Rc::new(FakeEnvoy {
            next_cas: Cell::new(1),
            node_id: Some(node_id.to_owned()),
            ..FakeEnvoy::default()
        })
    }

    /// A metric's value by name (0 if undefined).
    pub fn metric(&self, name: &str) -> i64 {
        self.metrics
            .borrow()
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(0, |(_, _, v)| *v)
    }

    /// The samples recorded into the histogram `name`.
    pub fn samples(&self, name: &str) -> Vec<u64> {
        self.samples
            .borrow()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    }

    pub fn metric_names(&self) -> Vec<String> {
        self.metrics
            .borrow()
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    pub fn shared_keys(&self) -> Vec<String> {
        self.shared.borrow().keys().cloned().collect()
    }

    /// Overwrites a key as another worker would.
    pub fn write_shared(&self, key: &str, value: &[u8]) {
        let cas = self.bump();
        self.shared
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), cas));
    }

    fn bump(&self) -> u32 {
        let cas = self.next_cas.get();
        self.next_cas.set(cas.wrapping_add(1).max(1));
        cas
    }
}

/// One worker's view of the host for one request.
#[derive(Debug)]
pub struct FakeHost {
    pub envoy: Rc<FakeEnvoy>,
    pub request: RefCell<Vec<(String, String)>>,
    pub response_added: RefCell<Vec<(String, String)>>,
    pub local_response: RefCell<Option<LocalResponse>>,
    pub route_cleared: Cell<u32>,
    pub source: Option<String>,
    pub now: Cell<u64>,
    /// Host calls (by their `HostError::call` prefix) that fail.
    pub failing: RefCell<HashSet<&'static str>>,
    /// CAS mismatches to inject before writes succeed.
    pub injected_conflicts: Cell<u32>,
    /// A write another worker makes just before this host's next shared write.
    pub racing_write: RefCell<Option<(String, Vec<u8>)>>,
    /// Opened gRPC streams (cluster) and sent messages (token, bytes).
    pub grpc_opened: RefCell<Vec<String>>,
    pub grpc_sent: RefCell<Vec<(u32, Vec<u8>)>>,
    pub grpc_cancelled: RefCell<Vec<u32>>,
    /// Unary gRPC calls dispatched.
    pub grpc_calls: RefCell<Vec<GrpcCall>>,
    /// Times the request was resumed after a pause.
    pub resumed: Cell<u32>,
    /// Every host call made, in order (by its failure name).
    pub calls: RefCell<Vec<&'static str>>,
    next_token: Cell<u32>,
}

impl FakeHost {
    pub fn new(envoy: &Rc<FakeEnvoy>) -> FakeHost {
        FakeHost {
            envoy: Rc::clone(envoy),
            request: RefCell::new(Vec::new()),
            response_added: RefCell::new(Vec::new()),
            local_response: RefCell::new(None),
            route_cleared: Cell::new(0),
            source: Some("192.0.2.7:40000".to_owned()),
            now: Cell::new(1_000_000_000_000),
            failing: RefCell::new(HashSet::new()),
            injected_conflicts: Cell::new(0),
            racing_write: RefCell::new(None),
            grpc_opened: RefCell::new(Vec::new()),
            grpc_sent: RefCell::new(Vec::new()),
            grpc_cancelled: RefCell::new(Vec::new()),
            grpc_calls: RefCell::new(Vec::new()),
            resumed: Cell::new(0),
            calls: RefCell::new(Vec::new()),
            next_token: Cell::new(1),
        }
    }

    /// A host whose request carries these headers.
    pub fn with_request(envoy: &Rc<FakeEnvoy>, headers: &[(&str, &str)]) -> FakeHost {
        let host = FakeHost::new(envoy);
        host.set_request(headers);
        host
    }

    pub fn set_request(&self, headers: &[(&str, &str)]) {
        *self.request.borrow_mut() = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        *self.local_response.borrow_mut() = None;
        self.response_added.borrow_mut().clear();
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.request
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn fail(&self, call: &'static str) {
        self.failing.borrow_mut().insert(call);
    }

    fn check(&self, call: &'static str) -> Result<(), HostError> {
        self.calls.borrow_mut().push(call);
        if self.failing.borrow().contains(call) {
            Err(HostError::new(call, "InternalFailure"))
        } else {
            Ok(())
        }
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        self.check("request_headers")?;
        Ok(crate::request::serialize_pairs(&self.request.borrow()))
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), HostError> {
        self.check("set_request_header")?;
        let mut request = self.request.borrow_mut();
        request.retain(|(n, _)| n != name);
        if let Some(value) = value {
            request.push((name.to_owned(), value.to_owned()));
        }
        Ok(())
    }

    fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("add_response_header")?;
        self.response_added
            .borrow_mut()
            .push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.check("send_http_response")?;
        *self.local_response.borrow_mut() = Some(LocalResponse::Http {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
        });
        Ok(())
    }

    fn send_grpc_response(
        &self,
        code: GrpcCode,
        message: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), HostError> {
        self.check("send_grpc_response")?;
        *self.local_response.borrow_mut() = Some(LocalResponse::Grpc {
            code,
            message: message.to_owned(),
            metadata: metadata
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        });
        Ok(())
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.check("shared_get")?;
        Ok(match self.envoy.shared.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        self.check("shared_set").map_err(SharedSetError::Host)?;
        if self.injected_conflicts.get() > 0 {
            self.injected_conflicts
                .set(self.injected_conflicts.get() - 1);
            // Another worker wrote meanwhile.
            let current = self.envoy.shared.borrow().get(key).map(|(v, _)| v.clone());
            if let Some(current) = current {
                self.envoy.write_shared(key, &current);
            }
            return Err(SharedSetError::CasMismatch);
        }
        if let Some((racing_key, racing_value)) = self.racing_write.borrow_mut().take() {
            self.envoy.write_shared(&racing_key, &racing_value);
        }
        // Envoy's semantics: cas is checked only for an existing key.
        let existing = self.envoy.shared.borrow().get(key).map(|(_, c)| *c);
        if let (Some(existing), Some(cas)) = (existing, cas) {
            if cas != 0 && cas != existing {
                return Err(SharedSetError::CasMismatch);
            }
        }
        self.envoy.write_shared(key, value);
        Ok(())
    }

    fn clear_route_cache(&self) -> Result<(), HostError> {
        self.check("clear_route_cache")?;
        self.route_cleared.set(self.route_cleared.get() + 1);
        Ok(())
    }

    fn source_address(&self) -> Result<Option<String>, HostError> {
        self.check("source_address")?;
        Ok(self.source.clone())
    }

    fn envoy_node_id(&self) -> Result<Option<String>, HostError> {
        self.check("envoy_node_id")?;
        Ok(self.envoy.node_id.clone())
    }

    fn now_nanos(&self) -> Result<u64, HostError> {
        self.check("now_nanos")?;
        Ok(self.now.get())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.check("define_metric")?;
        let mut metrics = self.envoy.metrics.borrow_mut();
        if let Some(index) = metrics.iter().position(|(n, _, _)| n == name) {
            return Ok(u32::try_from(index).unwrap_or(u32::MAX));
        }
        metrics.push((name.to_owned(), kind, 0));
        Ok(u32::try_from(metrics.len() - 1).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.check("increment_metric")?;
        let mut metrics = self.envoy.metrics.borrow_mut();
        let entry = metrics
            .get_mut(id as usize)
            .ok_or_else(|| HostError::new("increment_metric", "NotFound"))?;
        entry.2 += delta;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.check("record_metric")?;
        let mut metrics = self.envoy.metrics.borrow_mut();
        let entry = metrics
            .get_mut(id as usize)
            .ok_or_else(|| HostError::new("record_metric", "NotFound"))?;
        if entry.1 == MetricKind::Histogram {
            // A histogram's value here is its sample count.
            entry.2 += 1;
            self.envoy
                .samples
                .borrow_mut()
                .push((entry.0.clone(), value));
        } else {
            entry.2 = i64::try_from(value).unwrap_or(i64::MAX);
        }
        Ok(())
    }

    fn resume_http_request(&self) -> Result<(), HostError> {
        self.check("resume_http_request")?;
        self.resumed.set(self.resumed.get() + 1);
        Ok(())
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
        self.check("dispatch_grpc_call")?;
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.grpc_calls.borrow_mut().push(GrpcCall {
            token,
            owner,
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            message: message.to_vec(),
            timeout,
        });
        Ok(token)
    }
}

impl GrpcHost for FakeHost {
    fn open_grpc_stream(
        &self,
        cluster: &str,
        _service: &str,
        _method: &str,
        _metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        self.check("open_grpc_stream")?;
        self.grpc_opened.borrow_mut().push(cluster.to_owned());
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        Ok(token)
    }

    fn send_grpc_stream_message(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        self.check("send_grpc_stream_message")?;
        self.grpc_sent.borrow_mut().push((token, message.to_vec()));
        Ok(())
    }

    fn cancel_grpc_stream(&self, token: u32) -> Result<(), HostError> {
        self.check("cancel_grpc_stream")?;
        self.grpc_cancelled.borrow_mut().push(token);
        Ok(())
    }
}
