//! Redis: the connection (standalone or Cluster), the three scripts, and the
//! calls the service makes. Every script runs atomically on one slot (see
//! [`crate::keys`]) and reads Redis's clock (`TIME`), so the limiter replicas
//! and the data planes need no common clock. The scripts are sent with
//! `EVALSHA` and loaded on `NOSCRIPT` (redis-rs's `Script`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{FromRedisValue, IntoConnectionInfo, Script, ScriptInvocation};

use crate::keys::KeyPrefix;
use crate::metrics::Metrics;
use crate::validate::{Acquire, Limits, Release, Sync, Target};

const COMMON: &str = include_str!("store/common.lua");
const ACQUIRE: &str = include_str!("store/acquire.lua");
const RELEASE: &str = include_str!("store/release.lua");
const SYNC: &str = include_str!("store/sync.lua");

/// Script calls one Sync keeps in flight at once.
const SYNC_CONCURRENCY: usize = 64;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis://host:port[/db]`.
    Standalone(String),
    /// Redis Cluster seed nodes, each `redis://host:port`.
    Cluster(Vec<String>),
}

/// A `--redis` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisTargetError {
    /// Nothing given.
    #[error("--redis is empty")]
    Empty,
    /// A URL redis-rs cannot read.
    #[error("--redis: '{url}' is not a Redis URL like redis://127.0.0.1:6379: {reason}")]
    BadUrl {
        /// The item.
        url: String,
        /// redis-rs's reason.
        reason: String,
    },
    /// Several URLs without `--redis-cluster`.
    #[error("--redis lists {0} URLs; a list is for Redis Cluster seed nodes, add --redis-cluster")]
    ListWithoutCluster(usize),
}

impl RedisTarget {
    /// Reads `--redis`: one URL, or with `cluster` a comma-separated list of
    /// seed node URLs.
    pub fn parse(spec: &str, cluster: bool) -> Result<RedisTarget, RedisTargetError> {
        let urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(RedisTargetError::Empty);
        }
        for url in &urls {
            url.as_str()
                .into_connection_info()
                .map_err(|e| RedisTargetError::BadUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        }
        if cluster {
            return Ok(RedisTarget::Cluster(urls));
        }
        match <[String; 1]>::try_from(urls) {
            Ok([url]) => Ok(RedisTarget::Standalone(url)),
            Err(urls) => Err(RedisTargetError::ListWithoutCluster(urls.len())),
        }
    }
}

/// How the limiter uses Redis.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Where Redis is.
    pub target: RedisTarget,
    /// Redis key prefix.
    pub prefix: KeyPrefix,
    /// The lease on an instance's slots.
    pub lease: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for one command or script call.
    pub command_timeout: Duration,
}

/// Whose clock a script reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Redis's (`TIME`): what the service uses.
    Redis,
    /// A given time in microseconds, for tests that step time (the library
    /// only; no request can choose it).
    Micros(u64),
}

impl Clock {
    fn arg(self) -> String {
        match self {
            Clock::Redis => String::new(),
            Clock::Micros(us) => us.to_string(),
        }
    }
}

/// What Acquire decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A token and a slot were taken.
    Admitted,
    /// The bucket is empty.
    RefusedRate,
    /// `max_concurrent` streams are open.
    RefusedConcurrency,
}

/// Acquire's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted or why not.
    pub verdict: Verdict,
    /// Refusals: ms until a retry can succeed.
    pub retry_after_ms: u64,
    /// Refusals: ms until the bucket is full (rate), 1000 (concurrency).
    pub reset_ms: u64,
    /// Whole tokens left.
    pub remaining: u32,
    /// Streams open for (policy, key) on live instances after this request.
    pub active: u32,
}

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection, server or cluster error.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script answered something it never returns (a bug, or not our keys).
    #[error("unexpected reply from the {script} script: {reply}")]
    Reply {
        /// Which script.
        script: &'static str,
        /// What came back.
        reply: String,
    },
}

enum Connection {
    Standalone(ConnectionManager),
    Cluster(Box<ClusterConnector>),
}

/// A Cluster connection made on first use (the cluster may be down when the
/// limiter starts); once made, redis-rs follows slot moves and reconnects.
struct ClusterConnector {
    client: ClusterClient,
    connection: Mutex<Option<ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl ClusterConnector {
    fn current(&self) -> Option<ClusterConnection> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn get(&self) -> Result<ClusterConnection, StoreError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let connection = tokio::time::timeout(self.timeout, self.client.get_async_connection())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        tracing::info!("Connected to Redis Cluster");
        Ok(connection)
    }
}

/// The limiter's state in Redis.
pub struct Store {
    connection: Connection,
    prefix: KeyPrefix,
    lease_ms: u64,
    timeout: Duration,
    acquire: Script,
    release: Script,
    sync: Script,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

/// The scripts as Redis runs them: the shared helpers, then the script.
fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Redis sockets with `TCP_NODELAY` (redis-rs leaves Nagle's algorithm on):
/// a script call written while another's bytes are unacknowledged goes out
/// at once instead of after that ACK.
fn tcp() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// What the acquire script takes: tokens, and a slot for an instance or not.
struct Take<'a> {
    instance: &'a str,
    tokens: u32,
    slot: bool,
    operation: &'static str,
}

/// A script call, or PING when there is none.
async fn send<T: FromRedisValue>(
    invocation: Option<&ScriptInvocation<'_>>,
    connection: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<T> {
    match invocation {
        Some(invocation) => invocation.invoke_async(connection).await,
        None => redis::cmd("PING").query_async(connection).await,
    }
}

impl Store {
    /// Sets up the connection; nothing is sent until the first call, so the
    /// limiter starts while Redis is down.
    pub fn new(settings: &StoreSettings, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let connection = match &settings.target {
            RedisTarget::Standalone(url) => {
                let info = url.as_str().into_connection_info()?.set_tcp_settings(tcp());
                let client = redis::Client::open(info)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Connection::Standalone(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.command_timeout)
                    .retries(2)
                    .tcp_settings(tcp())
                    .build()?;
                Connection::Cluster(Box::new(ClusterConnector {
                    client,
                    connection: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    timeout: settings.connect_timeout,
                }))
            }
        };
        Ok(Store {
            connection,
            prefix: settings.prefix.clone(),
            lease_ms: u64::try_from(settings.lease.as_millis()).unwrap_or(u64::MAX),
            timeout: settings.command_timeout,
            acquire: script(ACQUIRE),
            release: script(RELEASE),
            sync: script(SYNC),
            metrics,
        })
    }

    /// The lease on an instance's slots, in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Runs one script call (or a PING) with the command timeout, and
    /// records its round trip.
    async fn call<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: Option<ScriptInvocation<'_>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let run = async {
            match &self.connection {
                Connection::Standalone(manager) => {
                    Ok(send(invocation.as_ref(), &mut manager.clone()).await?)
                }
                Connection::Cluster(connector) => {
                    Ok(send(invocation.as_ref(), &mut connector.get().await?).await?)
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.metrics
            .redis_round_trip(operation, started.elapsed().as_secs_f64());
        result
    }

    /// Takes a token and a slot for the instance, or refuses.
    pub async fn acquire(&self, call: &Acquire, clock: Clock) -> Result<Decision, StoreError> {
        let take = Take {
            instance: &call.instance,
            tokens: 1,
            slot: true,
            operation: "acquire",
        };
        self.run_acquire(&call.target, call.limits, take, clock)
            .await
    }

    /// Takes `tokens` from the bucket of `target` without holding a slot
    /// (Envoy's RLS, which has no release), refusing at the concurrency cap
    /// as Acquire does. `tokens` must be at most the burst.
    pub async fn take_tokens(
        &self,
        target: &Target,
        limits: Limits,
        tokens: u32,
        clock: Clock,
    ) -> Result<Decision, StoreError> {
        let take = Take {
            instance: "",
            tokens,
            slot: false,
            operation: "rls",
        };
        self.run_acquire(target, limits, take, clock).await
    }

    async fn run_acquire(
        &self,
        target: &Target,
        limits: Limits,
        take: Take<'_>,
        clock: Clock,
    ) -> Result<Decision, StoreError> {
        let keys = self.prefix.keys(target);
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .key(&keys.bucket)
            .key(&keys.holders)
            .key(&keys.leases)
            .arg(take.instance)
            .arg(limits.rate_milli)
            .arg(limits.burst)
            .arg(limits.max_concurrent)
            .arg(self.lease_ms)
            .arg(clock.arg())
            .arg(take.tokens)
            .arg(if take.slot { "1" } else { "0" });
        let reply: Vec<i64> = self.call(take.operation, Some(invocation)).await?;
        let bad = || StoreError::Reply {
            script: "acquire",
            reply: format!("{reply:?}"),
        };
        let [verdict, retry_after_ms, reset_ms, remaining, active] =
            <[i64; 5]>::try_from(reply.clone()).map_err(|_| bad())?;
        let verdict = match verdict {
            1 => Verdict::Admitted,
            2 => Verdict::RefusedRate,
            3 => Verdict::RefusedConcurrency,
            _ => return Err(bad()),
        };
        Ok(Decision {
            verdict,
            retry_after_ms: u64::try_from(retry_after_ms).map_err(|_| bad())?,
            reset_ms: u64::try_from(reset_ms).map_err(|_| bad())?,
            remaining: u32::try_from(remaining).map_err(|_| bad())?,
            active: u32::try_from(active).unwrap_or(u32::MAX),
        })
    }

    /// Gives one of the instance's slots back; returns what it still holds.
    pub async fn release(&self, call: &Release) -> Result<u32, StoreError> {
        let keys = self.prefix.keys(&call.target);
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(&keys.holders)
            .key(&keys.leases)
            .arg(&call.instance);
        let held: i64 = self.call("release", Some(invocation)).await?;
        u32::try_from(held).map_err(|_| StoreError::Reply {
            script: "release",
            reply: held.to_string(),
        })
    }

    /// Sets the instance's count on every (policy, key) it reports and renews
    /// its lease there: one script call per (policy, key), up to
    /// [`SYNC_CONCURRENCY`] in flight (they may live on different Cluster
    /// nodes).
    pub async fn sync(&self, call: &Sync, clock: Clock) -> Result<(), StoreError> {
        let calls: Vec<_> = call
            .holdings
            .iter()
            .map(|(target, open)| self.sync_one(&call.instance, target, *open, clock))
            .collect();
        futures::stream::iter(calls)
            .buffer_unordered(SYNC_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn sync_one(
        &self,
        instance: &str,
        target: &Target,
        open: u32,
        clock: Clock,
    ) -> Result<(), StoreError> {
        let keys = self.prefix.keys(target);
        let mut invocation = self.sync.prepare_invoke();
        invocation
            .key(&keys.holders)
            .key(&keys.leases)
            .arg(instance)
            .arg(open)
            .arg(self.lease_ms)
            .arg(clock.arg());
        let _: i64 = self.call("sync", Some(invocation)).await?;
        self.metrics.sync_holdings.inc();
        Ok(())
    }

    /// PINGs Redis (every Cluster primary).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: redis::Value = self.call("ping", None).await?;
        Ok(())
    }
}
