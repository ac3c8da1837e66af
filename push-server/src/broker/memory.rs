//! The embedded broker: history and fan-out inside this process. Its epoch is
//! drawn at start, so a client resuming after a restart is told it missed
//! messages (history did not survive).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sidestream_core::config::TopicSettings;

use super::{Broker, BrokerError, BrokerFuture, Published, Resume};
use crate::hub::Hub;
use crate::message::{unix_nanos, Draft, Epoch, Message, MessageId};
use crate::resume::{oldest_kept, plan_resume};

/// Idempotency keys remembered per topic at most (oldest forgotten first).
const MAX_IDEMPOTENCY_KEYS_PER_TOPIC: usize = 100_000;

/// History and ids of every topic, in memory.
#[derive(Debug)]
pub struct MemoryBroker {
    epoch: Epoch,
    hub: Arc<Hub>,
    topics: RwLock<HashMap<Arc<str>, Arc<Mutex<TopicLog>>>>,
    idempotency_window: Duration,
    max_topics: usize,
}

#[derive(Debug, Default)]
struct TopicLog {
    seq: u64,
    history: VecDeque<Arc<Message>>,
    idempotency: HashMap<String, (MessageId, Instant)>,
    idempotency_order: VecDeque<(Instant, String)>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>, idempotency_window: Duration, max_topics: usize) -> MemoryBroker {
        MemoryBroker {
            epoch: Epoch::random(),
            hub,
            topics: RwLock::new(HashMap::new()),
            idempotency_window,
            max_topics,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn log(
        &self,
        topic: &Arc<str>,
        create: bool,
    ) -> Result<Option<Arc<Mutex<TopicLog>>>, BrokerError> {
        if let Some(log) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(Some(log.clone()));
        }
        if !create {
            return Ok(None);
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if topics.len() >= self.max_topics && !topics.contains_key(topic) {
            return Err(BrokerError::TooManyTopics(self.max_topics));
        }
        Ok(Some(topics.entry(topic.clone()).or_default().clone()))
    }

    fn publish_now(
        &self,
        topic: &Arc<str>,
        settings: &TopicSettings,
        draft: Draft,
    ) -> Result<Published, BrokerError> {
        let Some(log) = self.log(topic, true)? else {
            return Err(BrokerError::Protocol("topic log vanished".into()));
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        log.expire_keys(now);
        if let Some(key) = &draft.idempotency_key {
            if let Some((id, _)) = log.idempotency.get(key) {
                return Ok(Published {
                    id: *id,
                    duplicate: true,
                });
            }
        }
        log.seq += 1;
        let id = MessageId {
            epoch: self.epoch,
            seq: log.seq,
        };
        let message = Arc::new(Message::new(
            topic.clone(),
            id,
            draft.event.map(String::into_boxed_str),
            draft.data,
            unix_nanos(),
            draft.traceparent.map(String::into_boxed_str),
        ));
        if settings.history_size > 0 {
            log.history.push_back(message.clone());
        }
        log.trim(settings, message.published_unix_nanos);
        if let Some(key) = draft.idempotency_key {
            let expires = now + self.idempotency_window;
            log.idempotency.insert(key.clone(), (id, expires));
            log.idempotency_order.push_back((expires, key));
            while log.idempotency_order.len() > MAX_IDEMPOTENCY_KEYS_PER_TOPIC {
                if let Some((_, old)) = log.idempotency_order.pop_front() {
                    log.idempotency.remove(&old);
                }
            }
        }
        // Dispatch under the topic's lock: subscribers see the topic's order.
        self.hub.dispatch(&message);
        Ok(Published {
            id,
            duplicate: false,
        })
    }

    fn resume_now(
        &self,
        topic: &Arc<str>,
        settings: &TopicSettings,
        from: Option<MessageId>,
        limit: usize,
    ) -> Result<Resume, BrokerError> {
        let log = self.log(topic, false)?;
        let Some(log) = log else {
            let (after, reset) = plan_resume(from, self.epoch, 0, 0, None);
            return Ok(Resume {
                messages: Vec::new(),
                reset,
                position: MessageId {
                    epoch: self.epoch,
                    seq: after,
                },
                head: 0,
            });
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.trim(settings, unix_nanos());
        let held = log
            .history
            .front()
            .zip(log.history.back())
            .map(|(a, b)| (a.id.seq, b.id.seq));
        let (after, reset) = plan_resume(from, self.epoch, 0, log.seq, held);
        let messages = if from.is_some() {
            log.after(after, limit)
        } else {
            Vec::new()
        };
        Ok(Resume {
            messages,
            reset,
            position: MessageId {
                epoch: self.epoch,
                seq: after,
            },
            head: log.seq,
        })
    }

    fn history_now(
        &self,
        topic: &Arc<str>,
        settings: &TopicSettings,
        epoch: Epoch,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        if epoch != self.epoch {
            return Ok(Vec::new());
        }
        let Some(log) = self.log(topic, false)? else {
            return Ok(Vec::new());
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.trim(settings, unix_nanos());
        Ok(log.after(after, limit))
    }
}

impl TopicLog {
    /// At most `limit` held messages after sequence `after`.
    fn after(&self, after: u64, limit: usize) -> Vec<Arc<Message>> {
        let start = self.history.partition_point(|m| m.id.seq <= after);
        self.history.range(start..).take(limit).cloned().collect()
    }

    fn trim(&mut self, settings: &TopicSettings, now_unix_nanos: u64) {
        while self.history.len() > settings.history_size {
            self.history.pop_front();
        }
        let oldest = oldest_kept(settings, now_unix_nanos);
        while self
            .history
            .front()
            .is_some_and(|m| m.published_unix_nanos < oldest)
        {
            self.history.pop_front();
        }
    }

    fn expire_keys(&mut self, now: Instant) {
        while self
            .idempotency_order
            .front()
            .is_some_and(|(expires, _)| *expires <= now)
        {
            if let Some((_, key)) = self.idempotency_order.pop_front() {
                self.idempotency.remove(&key);
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        draft: Draft,
    ) -> BrokerFuture<'a, Published> {
        let result = self.publish_now(topic, settings, draft);
        Box::pin(std::future::ready(result))
    }

    fn resume<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        from: Option<MessageId>,
        limit: usize,
    ) -> BrokerFuture<'a, Resume> {
        let result = self.resume_now(topic, settings, from, limit);
        Box::pin(std::future::ready(result))
    }

    fn history<'a>(
        &'a self,
        topic: &'a Arc<str>,
        settings: &'a TopicSettings,
        epoch: Epoch,
        after: u64,
        limit: usize,
    ) -> BrokerFuture<'a, Vec<Arc<Message>>> {
        let result = self.history_now(topic, settings, epoch, after, limit);
        Box::pin(std::future::ready(result))
    }

    fn watch<'a>(&'a self, _topic: &'a Arc<str>) -> BrokerFuture<'a, ()> {
        // Publishing dispatches to the hub directly.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unwatch(&self, _topic: &str) {}

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::resume::ResetReason;
    use bytes::Bytes;

    fn draft(data: &'static str, key: Option<&str>) -> Draft {
        Draft {
            data: Bytes::from_static(data.as_bytes()),
            event: None,
            idempotency_key: key.map(str::to_owned),
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn history_is_bounded_by_count_and_resumes_report_gaps() {
        let broker = MemoryBroker::new(
            Arc::new(Hub::new(Arc::new(Metrics::new()))),
            Duration::from_secs(60),
            10,
        );
        let topic: Arc<str> = Arc::from("t");
        let mut settings = TopicSettings::defaults("t");
        settings.history_size = 3;
        let mut ids = Vec::new();
        for data in ["1", "2", "3", "4", "5"] {
            ids.push(
                broker
                    .publish(&topic, &settings, draft(data, None))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let resume = broker
            .resume(&topic, &settings, Some(ids[2]), 10)
            .await
            .unwrap();
        assert_eq!(resume.reset, None);
        assert_eq!(
            resume.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[3..]
        );
        let gap = broker
            .resume(&topic, &settings, Some(ids[0]), 10)
            .await
            .unwrap();
        assert_eq!(gap.reset, Some(ResetReason::HistoryGap));
        assert_eq!(gap.messages.len(), 3);
        let other = MessageId {
            epoch: Epoch(broker.epoch().0 + 1),
            seq: 4,
        };
        let reset = broker
            .resume(&topic, &settings, Some(other), 10)
            .await
            .unwrap();
        assert_eq!(reset.reset, Some(ResetReason::EpochChanged));
        assert_eq!(reset.messages.len(), 3);
    }

    #[tokio::test]
    async fn resumes_and_history_come_in_pages() {
        let broker = MemoryBroker::new(
            Arc::new(Hub::new(Arc::new(Metrics::new()))),
            Duration::from_secs(60),
            10,
        );
        let topic: Arc<str> = Arc::from("t");
        let settings = TopicSettings::defaults("t");
        for _ in 0..10 {
            broker
                .publish(&topic, &settings, draft("x", None))
                .await
                .unwrap();
        }
        let start = MessageId {
            epoch: broker.epoch(),
            seq: 2,
        };
        let resume = broker
            .resume(&topic, &settings, Some(start), 3)
            .await
            .unwrap();
        let seqs = |page: &[Arc<Message>]| page.iter().map(|m| m.id.seq).collect::<Vec<_>>();
        assert_eq!(
            (seqs(&resume.messages), resume.position, resume.head),
            (vec![3, 4, 5], start, 10)
        );
        let page = broker
            .history(&topic, &settings, broker.epoch(), 5, 3)
            .await
            .unwrap();
        assert_eq!(seqs(&page), [6, 7, 8]);
        let last = broker
            .history(&topic, &settings, broker.epoch(), 8, 3)
            .await
            .unwrap();
        assert_eq!(seqs(&last), [9, 10]);
        let other_epoch = broker
            .history(&topic, &settings, Epoch(broker.epoch().0 + 1), 0, 3)
            .await
            .unwrap();
        assert!(other_epoch.is_empty());
    }

    #[tokio::test]
    async fn idempotency_keys_publish_once() {
        let broker = MemoryBroker::new(
            Arc::new(Hub::new(Arc::new(Metrics::new()))),
            Duration::from_secs(60),
            10,
        );
        let topic: Arc<str> = Arc::from("t");
        let settings = TopicSettings::defaults("t");
        let first = broker
            .publish(&topic, &settings, draft("a", Some("k1")))
            .await
            .unwrap();
        let again = broker
            .publish(&topic, &settings, draft("a", Some("k1")))
            .await
            .unwrap();
        assert_eq!(
            (again.id, again.duplicate, first.duplicate),
            (first.id, true, false)
        );
        let other = broker
            .publish(&topic, &settings, draft("a", Some("k2")))
            .await
            .unwrap();
        assert_ne!(other.id, first.id);
        let resume = broker
            .resume(
                &topic,
                &settings,
                Some(MessageId {
                    epoch: first.id.epoch,
                    seq: 0,
                }),
                10,
            )
            .await
            .unwrap();
        assert_eq!(resume.messages.len(), 2);
    }

    #[tokio::test]
    async fn topic_count_is_bounded() {
        let broker = MemoryBroker::new(
            Arc::new(Hub::new(Arc::new(Metrics::new()))),
            Duration::from_secs(60),
            2,
        );
        let settings = TopicSettings::defaults("t");
        for name in ["a", "b"] {
            broker
                .publish(&Arc::from(name), &settings, draft("x", None))
                .await
                .unwrap();
        }
        assert!(matches!(
            broker
                .publish(&Arc::from("c"), &settings, draft("x", None))
                .await,
            Err(BrokerError::TooManyTopics(2))
        ));
    }
}
