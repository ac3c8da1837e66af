//! Redis Streams broker: several push servers share topics, ids and history.
//!
//! Per topic `t` (prefix `p`):
//! - `p:t:log`, a stream whose entry ids are `<seq>-0`, fields `x` (epoch),
//!   `e` (event, empty for none), `d` (data), `t` (publish time, unix ns),
//!   `p` (traceparent, empty for none); trimmed with `MAXLEN ~ historySize`
//!   (the exact count and the age limit are applied when reading);
//! - `p:t:meta`, a hash holding `epoch`, the last `seq` and `base` (the seq
//!   the epoch started after: the Unix time in ms when it began, or the last
//!   sequence the stream still held if that is later, so sequence numbers
//!   never go backwards and readers following the stream see the new epoch).
//!   Losing it starts a new epoch (and a new stream), so resuming clients
//!   are told;
//! - `p:t:idem:<key>`, the id a publish with that idempotency key got (expires
//!   after the idempotency window).
//!
//! One reader task per node follows, with `XREAD BLOCK`, the streams of the
//! topics that have local subscribers and hands new entries to the hub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script, Value};
use sidestream_core::backoff::Backoff;
use sidestream_core::config::TopicSettings;
use tokio::sync::Notify;

use super::{Broker, BrokerError, BrokerFuture, Published, Resume};
use crate::hub::Hub;
use crate::message::{unix_nanos, Draft, Epoch, Message, MessageId};
use crate::resume::{oldest_kept, plan_resume};

const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  -- The new epoch starts after the clock (ms) or after what the log still
  -- holds, whichever is later: readers following the stream are past the
  -- old entries and must see the new ones. (Numbers stay strings: Lua
  -- would print large ones in exponent form.)
  local base = ARGV[8]
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if last[1] then
    local held = string.match(last[1][1], '^(%d+)')
    if held and tonumber(held) > tonumber(base) then base = held end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', base, 'base', base)
end
if ARGV[7] ~= '' then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {prior, 1} end
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0',
  'x', epoch, 'e', ARGV[3], 'd', ARGV[4], 't', ARGV[5], 'p', ARGV[6])
local id = epoch .. '-' .. seq
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], id, 'PX', ARGV[7]) end
return {id, 0}
"#;

/// How often the reader compares each followed topic's epoch with Redis's.
const EPOCH_CHECK: Duration = Duration::from_millis(READ_BLOCK_MS);

/// Where the reader follows one topic's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follow {
    /// The last sequence dispatched (entries after it are read next).
    seq: u64,
    /// The epoch of that sequence (`None` before the topic's first message).
    epoch: Option<Epoch>,
}

impl Follow {
    /// Follows on after what Redis holds for the topic now: its epoch and
    /// the sequence that epoch started after (`None`: no message yet).
    ///
    /// When Redis loses a topic's log and meta together (a restart without
    /// persistence, `FLUSHALL`), the next publish starts a new epoch after
    /// the clock, and a topic that published faster than the clock ticks
    /// had sequences beyond it: the reader, still after its old sequence,
    /// would never see the new entries. A changed epoch therefore moves the
    /// reader back to the new epoch's start.
    fn realign(&mut self, current: Option<(Epoch, u64)>) {
        let Some((epoch, base)) = current else { return };
        if self.epoch != Some(epoch) {
            self.seq = self.seq.min(base);
            self.epoch = Some(epoch);
        }
    }
}

/// Entries fetched per stream per `XREAD`.
const READ_BATCH: usize = 1024;
/// How long one `XREAD` blocks.
const READ_BLOCK_MS: u64 = 5_000;

/// The Redis Streams broker.
#[derive(Debug)]
pub struct RedisBroker {
    prefix: String,
    commands: ConnectionManager,
    publish_script: Script,
    hub: Arc<Hub>,
    idempotency_window: Duration,
    reader: Arc<ReaderState>,
    ready: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct ReaderState {
    /// Topic → where this node follows its stream.
    watched: Mutex<HashMap<Arc<str>, Follow>>,
    changed: Notify,
    /// `CLIENT ID` of the reader's connection (to unblock its XREAD).
    client_id: Mutex<Option<i64>>,
}

impl RedisBroker {
    /// Starts using Redis at `url` (`redis://host:port[/db]`): connections
    /// are made lazily and re-made when lost; readiness follows a PING loop.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
        idempotency_window: Duration,
    ) -> Result<RedisBroker, BrokerError> {
        // Redis sockets with TCP_NODELAY (redis-rs leaves Nagle's algorithm
        // on): a publish written while another's bytes are unacknowledged
        // goes out at once, not after that ACK.
        let info = url
            .into_connection_info()?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let broker = RedisBroker {
            prefix: prefix.to_owned(),
            commands,
            publish_script: Script::new(PUBLISH_SCRIPT),
            hub,
            idempotency_window,
            reader: Arc::new(ReaderState::default()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(read_loop(
            client,
            broker.prefix.clone(),
            broker.reader.clone(),
            broker.hub.clone(),
        ));
        tokio::spawn(health_loop(broker.commands.clone(), broker.ready.clone()));
        Ok(broker)
    }

    fn log_key(&self, topic: &str) -> String {
        format!("{}:{topic}:log", self.prefix)
    }

    fn meta_key(&self, topic: &str) -> String {
        format!("{}:{topic}:meta", self.prefix)
    }

    async fn publish_now(
        &self,
        topic: &Arc<str>,
        settings: &TopicSettings,
        draft: Draft,
    ) -> Result<Published, BrokerError> {
        let mut conn = self.commands.clone();
        let idem_key = match &draft.idempotency_key {
            Some(key) => format!("{}:{topic}:idem:{key}", self.prefix),
            None => self.meta_key(topic),
        };
        let window_ms = if draft.idempotency_key.is_some() {
            self.idempotency_window.as_millis().max(1).to_string()
        } else {
            String::new()
        };
        let (id, duplicate): (String, i64) = self
            .publish_script
            .key(self.log_key(topic))
            .key(self.meta_key(topic))
            .key(idem_key)
            .arg(Epoch::random().to_string())
            .arg(settings.history_size.max(1))
            .arg(draft.event.as_deref().unwrap_or(""))
            .arg(&draft.data[..])
            .arg(unix_nanos())
            .arg(draft.traceparent.as_deref().unwrap_or(""))
            .arg(window_ms)
            .arg(unix_nanos() / 1_000_000)
            .invoke_async(&mut conn)
            .await?;
        let id = id
            .parse::<MessageId>()
            .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        Ok(Published {
            id,
            duplicate: duplicate != 0,
        })
    }

    /// The topic's epoch, last sequence and epoch start (`Epoch(0)`, 0, 0
    /// before its first message).
    async fn meta(
        &self,
        conn: &mut ConnectionManager,
        topic: &Arc<str>,
    ) -> Result<(Epoch, u64, u64), BrokerError> {
        type Meta = (Option<String>, Option<u64>, Option<u64>);
        let meta: Meta = redis::cmd("HMGET")
            .arg(self.meta_key(topic))
            .arg("epoch")
            .arg("seq")
            .arg("base")
            .query_async(conn)
            .await?;
        Ok(match meta {
            (Some(epoch), Some(seq), base) => (
                epoch
                    .parse::<Epoch>()
                    .map_err(|e| BrokerError::Protocol(e.to_string()))?,
                seq,
                base.unwrap_or(0),
            ),
            // No message yet: positions are "before any epoch".
            _ => (Epoch(0), 0, 0),
        })
    }

    /// At most `limit` (≥ 1) entries of `epoch` after sequence `after`,
    /// oldest first, fetched `limit` at a time. With `oldest`, leading entries
    /// published before it (aged out of history) are skipped.
    async fn page(
        &self,
        conn: &mut ConnectionManager,
        topic: &Arc<str>,
        epoch: Epoch,
        mut after: u64,
        limit: usize,
        oldest: Option<u64>,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let key = self.log_key(topic);
        let limit = limit.max(1);
        let mut skipping = oldest;
        loop {
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(conn)
                .await?;
            let before = after;
            let mut messages = Vec::with_capacity(range.ids.len());
            for entry in &range.ids {
                if let Some(seq) = entry_seq(entry) {
                    after = after.max(seq);
                }
                let message = match entry_to_message(topic, entry) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, topic = %topic, "Skipping an unreadable stream entry");
                        continue;
                    }
                };
                if message.id.epoch != epoch {
                    continue;
                }
                if let Some(oldest) = skipping {
                    if message.published_unix_nanos < oldest {
                        continue;
                    }
                    skipping = None;
                }
                messages.push(Arc::new(message));
            }
            if !messages.is_empty() || range.ids.len() < limit || after == before {
                return Ok(messages);
            }
        }
    }

    async fn resume_now(
        &self,
        topic: &Arc<str>,
        settings: &TopicSettings,
        from: Option<MessageId>,
        limit: usize,
    ) -> Result<Resume, BrokerError> {
        let mut conn = self.commands.clone();
        let (epoch, head, base) = self.meta(&mut conn, topic).await?;
        if from.is_none() {
            return Ok(Resume {
                messages: Vec::new(),
                reset: None,
                position: MessageId { epoch, seq: head },
                head,
            });
        }
        // History is the newest `historySize` sequences (the stream may hold
        // a few more: `MAXLEN ~`) not older than the age limit. Only its first
        // page after the client's position is read (at least one entry: where
        // history starts decides the reset); the rest comes page by page.
        let first_kept = head.saturating_sub(settings.history_size as u64);
        let lower = match from {
            Some(from) if from.epoch == epoch && epoch != Epoch(0) => from.seq.max(first_kept),
            _ => first_kept,
        };
        let oldest = oldest_kept(settings, unix_nanos());
        let page = self
            .page(&mut conn, topic, epoch, lower, limit, Some(oldest))
            .await?;
        let held = page
            .first()
            .zip(page.last())
            .map(|(a, b)| (a.id.seq, b.id.seq.max(head)));
        let (after, reset) = plan_resume(from, epoch, base, head, held);
        let messages = page
            .into_iter()
            .filter(|m| m.id.seq > after)
            .take(limit)
            .collect();
        Ok(Resume {
            messages,
            reset,
            position: MessageId { epoch, seq: after },
            head,
        })
    }

    async fn history_now(
        &self,
        topic: &Arc<str>,
        epoch: Epoch,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        let mut conn = self.commands.clone();
        self.page(&mut conn, topic, epoch, after, limit, None).await
    }

    async fn watch_now(&self, topic: &Arc<str>) -> Result<(), BrokerError> {
        let mut conn = self.commands.clone();
        let (epoch, head, _) = self.meta(&mut conn, topic).await?;
        let added = {
            let mut watched = self
                .reader
                .watched
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut added = false;
            watched.entry(topic.clone()).or_insert_with(|| {
                added = true;
                Follow {
                    seq: head,
                    epoch: (epoch != Epoch(0)).then_some(epoch),
                }
            });
            added
        };
        if added {
            self.wake_reader().await;
        }
        Ok(())
    }

    async fn wake_reader(&self) {
        self.reader.changed.notify_one();
        let client_id = *self
            .reader
            .client_id
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(id) = client_id {
            let mut conn = self.commands.clone();
            let unblocked: Result<i64, _> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut conn)
                .await;
            if let Err(error) = unblocked {
                tracing::debug!(%error, "CLIENT UNBLOCK failed; the reader picks the topic up after its block");
            }
        }
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        draft: Draft,
    ) -> BrokerFuture<'a, Published> {
        Box::pin(self.publish_now(topic, settings, draft))
    }

    fn resume<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        from: Option<MessageId>,
        limit: usize,
    ) -> BrokerFuture<'a, Resume> {
        Box::pin(self.resume_now(topic, settings, from, limit))
    }

    fn history<'a>(
        &'a self,
        topic: &'a Arc<str>,
        _settings: &'a TopicSettings,
        epoch: Epoch,
        after: u64,
        limit: usize,
    ) -> BrokerFuture<'a, Vec<Arc<Message>>> {
        Box::pin(self.history_now(topic, epoch, after, limit))
    }

    fn watch<'a>(&'a self, topic: &'a Arc<str>) -> BrokerFuture<'a, ()> {
        Box::pin(self.watch_now(topic))
    }

    fn unwatch(&self, topic: &str) {
        self.reader
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name) {
        Some(Value::BulkString(bytes)) => Some(bytes),
        Some(Value::SimpleString(text)) => Some(text.as_bytes()),
        _ => None,
    }
}

fn text_field(entry: &StreamId, name: &str) -> Result<String, BrokerError> {
    let bytes = field(entry, name).ok_or_else(|| {
        BrokerError::Protocol(format!("stream entry {} lacks field '{name}'", entry.id))
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        BrokerError::Protocol(format!(
            "stream entry {}: field '{name}' is not UTF-8",
            entry.id
        ))
    })
}

/// The sequence of an entry (its id is `<seq>-0`).
fn entry_seq(entry: &StreamId) -> Option<u64> {
    entry
        .id
        .split_once('-')
        .and_then(|(seq, _)| seq.parse::<u64>().ok())
}

fn entry_to_message(topic: &Arc<str>, entry: &StreamId) -> Result<Message, BrokerError> {
    let seq = entry_seq(entry)
        .ok_or_else(|| BrokerError::Protocol(format!("stream entry id '{}'", entry.id)))?;
    let epoch = text_field(entry, "x")?
        .parse::<Epoch>()
        .map_err(|e| BrokerError::Protocol(e.to_string()))?;
    let event = text_field(entry, "e")?;
    let traceparent = text_field(entry, "p")?;
    let published = text_field(entry, "t")?
        .parse::<u64>()
        .map_err(|e| BrokerError::Protocol(e.to_string()))?;
    let data = Bytes::copy_from_slice(field(entry, "d").unwrap_or_default());
    Ok(Message::new(
        topic.clone(),
        MessageId { epoch, seq },
        (!event.is_empty()).then(|| event.into_boxed_str()),
        data,
        published,
        (!traceparent.is_empty()).then(|| traceparent.into_boxed_str()),
    ))
}

/// PINGs Redis every second; readiness follows.
async fn health_loop(mut conn: ConnectionManager, ready: Arc<AtomicBool>) {
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ready.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!("Redis reachable again");
            } else {
                tracing::warn!("Redis unreachable: not ready");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reader_connection(
    client: &Client,
    state: &ReaderState,
) -> Result<MultiplexedConnection, BrokerError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_millis(READ_BLOCK_MS + 5_000)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    *state.client_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    Ok(conn)
}

/// Follows the watched streams and dispatches new entries to the hub.
async fn read_loop(client: Client, prefix: String, state: Arc<ReaderState>, hub: Arc<Hub>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut conn: Option<MultiplexedConnection> = None;
    // Epochs are compared on every (re)connection and every EPOCH_CHECK.
    let mut epochs_checked: Option<Instant> = None;
    loop {
        let connection = match &mut conn {
            Some(c) => c,
            None => match reader_connection(&client, &state).await {
                Ok(c) => {
                    backoff.reset();
                    epochs_checked = None;
                    conn.insert(c)
                }
                Err(error) => {
                    tracing::warn!(%error, "Redis reader cannot connect; retrying");
                    tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                    continue;
                }
            },
        };
        if epochs_checked.is_none_or(|at| at.elapsed() >= EPOCH_CHECK) {
            if let Err(error) = realign_epochs(connection, &prefix, &state).await {
                tracing::warn!(%error, "Redis reader cannot read the topics' epochs; reconnecting");
                conn = None;
                tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                continue;
            }
            epochs_checked = Some(Instant::now());
        }
        let watched: Vec<(Arc<str>, u64, String)> = state
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(topic, follow)| (topic.clone(), follow.seq, format!("{prefix}:{topic}:log")))
            .collect();
        if watched.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), state.changed.notified()).await;
            continue;
        }
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS");
        for (_, _, key) in &watched {
            command.arg(key);
        }
        for (_, seq, _) in &watched {
            command.arg(format!("{seq}-0"));
        }
        let reply: Result<Option<StreamReadReply>, _> = command.query_async(connection).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                if error.code() != Some("UNBLOCKED") {
                    tracing::warn!(%error, "Redis XREAD failed; reconnecting");
                    conn = None;
                    tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                }
                continue;
            }
        };
        let Some(reply) = reply else { continue };
        for stream in reply.keys {
            let Some(topic) = watched
                .iter()
                .find(|(_, _, key)| *key == stream.key)
                .map(|(t, _, _)| t.clone())
            else {
                continue;
            };
            let (mut last_seq, mut last_epoch) = (None, None);
            for entry in &stream.ids {
                last_seq = entry_seq(entry).or(last_seq);
                match entry_to_message(&topic, entry) {
                    Ok(message) => {
                        last_epoch = Some(message.id.epoch);
                        hub.dispatch(&Arc::new(message));
                    }
                    Err(error) => {
                        tracing::warn!(%error, topic = %topic, "Skipping an unreadable stream entry")
                    }
                }
            }
            if let Some(seq) = last_seq {
                if let Some(follow) = state
                    .watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&topic)
                {
                    follow.seq = follow.seq.max(seq);
                    follow.epoch = last_epoch.or(follow.epoch);
                }
            }
        }
    }
}

/// Reads every followed topic's epoch and start from its meta (one
/// pipelined round trip) and moves readers of a replaced epoch back to the
/// new one's start ([`Follow::realign`]).
async fn realign_epochs(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    state: &ReaderState,
) -> Result<(), BrokerError> {
    let topics: Vec<Arc<str>> = state
        .watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for topic in &topics {
        pipe.cmd("HMGET")
            .arg(format!("{prefix}:{topic}:meta"))
            .arg("epoch")
            .arg("base");
    }
    let metas: Vec<(Option<String>, Option<u64>)> = pipe.query_async(conn).await?;
    let mut watched = state.watched.lock().unwrap_or_else(|p| p.into_inner());
    for (topic, meta) in topics.iter().zip(metas) {
        let current = match meta {
            (Some(epoch), base) => match epoch.parse::<Epoch>() {
                Ok(epoch) => Some((epoch, base.unwrap_or(0))),
                Err(error) => {
                    tracing::warn!(%error, topic = %topic, "Unreadable epoch in the topic's meta");
                    None
                }
            },
            (None, _) => None,
        };
        if let Some(follow) = watched.get_mut(topic) {
            let before = *follow;
            follow.realign(current);
            if follow.seq != before.seq {
                tracing::info!(topic = %topic, from = before.seq, to = follow.seq, "The topic's epoch was replaced in Redis; following the new one from its start");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Epoch = Epoch(7);
    const NEW: Epoch = Epoch(9);

    #[test]
    fn a_replaced_epoch_moves_the_reader_back_to_its_start() {
        // A busy topic: the reader is past the clock the new epoch starts at.
        let mut follow = Follow {
            seq: 5_000_000,
            epoch: Some(OLD),
        };
        follow.realign(Some((NEW, 1_000)));
        assert_eq!(
            follow,
            Follow {
                seq: 1_000,
                epoch: Some(NEW)
            }
        );
    }

    #[test]
    fn the_same_epoch_leaves_the_reader_where_it_is() {
        let mut follow = Follow {
            seq: 5_000_000,
            epoch: Some(OLD),
        };
        follow.realign(Some((OLD, 1_000)));
        assert_eq!(
            follow,
            Follow {
                seq: 5_000_000,
                epoch: Some(OLD)
            }
        );
    }

    #[test]
    fn a_reader_behind_the_new_start_keeps_its_place() {
        let mut follow = Follow {
            seq: 10,
            epoch: Some(OLD),
        };
        follow.realign(Some((NEW, 1_000)));
        assert_eq!(
            follow,
            Follow {
                seq: 10,
                epoch: Some(NEW)
            }
        );
    }

    #[test]
    fn a_topic_without_messages_changes_nothing() {
        let mut follow = Follow {
            seq: 0,
            epoch: None,
        };
        follow.realign(None);
        assert_eq!(
            follow,
            Follow {
                seq: 0,
                epoch: None
            }
        );
        follow.realign(Some((NEW, 1_000)));
        assert_eq!(
            follow,
            Follow {
                seq: 0,
                epoch: Some(NEW)
            }
        );
    }
}
