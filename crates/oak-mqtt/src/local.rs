//! The in-process client: the cluster orchestrator runs in the same process as the broker, so its
//! own traffic goes straight into the router instead of over a loopback MQTT connection.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::mqttbytes::{valid_filter, valid_topic, QoS};
use tokio::sync::mpsc;

use crate::broker::Shared;
use crate::router::Delivery;
use crate::subscriptions::SubscriberId;

/// A message received by a [`LocalClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
}

/// Why a local publish or subscribe was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    #[error("message of {size} bytes exceeds the broker's maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("the MQTT broker has shut down")]
    Closed,
}

/// An in-process MQTT client with full rights (any topic, any filter, wildcards included).
///
/// Messages for it wait in a bounded queue ([`BrokerConfig::local_queue`](crate::BrokerConfig::local_queue));
/// when it is full, further messages are dropped and counted in [`Stats::dropped`](crate::Stats::dropped),
/// so a slow consumer never stalls the workers' connections. Dropping the client removes its
/// subscriptions.
pub struct LocalClient {
    id: SubscriberId,
    name: Arc<str>,
    publisher: LocalPublisher,
    rx: mpsc::Receiver<Delivery>,
}

impl LocalClient {
    pub(crate) fn new(shared: Arc<Shared>, name: &str) -> Self {
        let name: Arc<str> = Arc::from(name);
        let (tx, rx) = mpsc::channel(shared.config.local_queue.max(1));
        let label: Arc<str> = format!("local client {name}").into();
        // Id 0 is never handed out: a client created after shutdown is simply closed.
        let id = shared.router.register_local(label, tx).unwrap_or(0);
        LocalClient { id, name, publisher: LocalPublisher { shared }, rx }
    }

    /// The name given to [`Broker::local_client`](crate::Broker::local_client).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Subscribes to `filter` (wildcards allowed).
    pub fn subscribe(&self, filter: &str) -> Result<(), LocalError> {
        if !valid_filter(filter) || filter.len() > usize::from(u16::MAX) {
            return Err(LocalError::InvalidFilter(filter.to_owned()));
        }
        if self.publisher.shared.router.subscribe(self.id, filter, QoS::AtLeastOnce) {
            Ok(())
        } else {
            Err(LocalError::Closed)
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str) -> Result<bool, LocalError> {
        if self.publisher.shared.router.is_closed() {
            return Err(LocalError::Closed);
        }
        Ok(self.publisher.shared.router.unsubscribe(self.id, filter))
    }

    /// Publishes to every matching subscriber; each TCP subscriber gets it at the QoS of its
    /// subscription. Returns the number of subscribers it was queued for (0: nobody listens).
    pub fn publish(&self, topic: impl Into<String>, payload: impl Into<Bytes>) -> Result<usize, LocalError> {
        self.publisher.publish(topic, payload)
    }

    /// Like [`publish`](Self::publish), delivered at min(`qos`, subscription QoS).
    pub fn publish_with_qos(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<usize, LocalError> {
        self.publisher.publish_with_qos(topic, payload, qos)
    }

    /// A cloneable handle that publishes as this client, for other tasks.
    pub fn publisher(&self) -> LocalPublisher {
        self.publisher.clone()
    }

    /// The next message; `None` once the broker has shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(into_message)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok().map(into_message)
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        self.publisher.shared.router.unregister(self.id);
    }
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient").field("name", &self.name).finish_non_exhaustive()
    }
}

fn into_message(delivery: Delivery) -> Message {
    // The last subscriber to receive a message takes it without copying.
    Arc::try_unwrap(delivery.msg).unwrap_or_else(|shared| (*shared).clone())
}

/// Publishes with full rights; obtained from [`LocalClient::publisher`] or
/// [`BrokerHandle::publisher`](crate::BrokerHandle::publisher).
#[derive(Clone)]
pub struct LocalPublisher {
    pub(crate) shared: Arc<Shared>,
}

impl LocalPublisher {
    /// See [`LocalClient::publish`].
    pub fn publish(&self, topic: impl Into<String>, payload: impl Into<Bytes>) -> Result<usize, LocalError> {
        self.publish_with_qos(topic, payload, QoS::AtLeastOnce)
    }

    /// See [`LocalClient::publish_with_qos`]. QoS 2 is delivered as QoS 1.
    pub fn publish_with_qos(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<usize, LocalError> {
        let topic = topic.into();
        let payload = payload.into();
        if topic.is_empty() || !valid_topic(&topic) || topic.len() > usize::from(u16::MAX) {
            return Err(LocalError::InvalidTopic(topic));
        }
        // Same bound as for packets received from clients (remaining length of a QoS 1 PUBLISH).
        let size = 2 + topic.len() + 2 + payload.len();
        let max = self.shared.config.effective_max_packet_size();
        if size > max {
            return Err(LocalError::TooLarge { size, max });
        }
        if self.shared.router.is_closed() {
            return Err(LocalError::Closed);
        }
        let qos = if qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let mut scratch = Vec::new();
        Ok(self.shared.router.route(Arc::new(Message { topic, payload }), qos, &mut scratch))
    }
}

impl std::fmt::Debug for LocalPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPublisher").finish_non_exhaustive()
    }
}
