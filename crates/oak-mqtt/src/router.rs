//! Who is connected, who subscribed to what, and fan-out of messages to subscriber queues.
//!
//! All state sits behind one `RwLock`: routing (the hot path, run by the publishing connection's
//! own task) only takes the read lock and never waits for a subscriber — deliveries go into bounded
//! per-subscriber queues with `try_send`. CONNECT, SUBSCRIBE and disconnects take the write lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rumqttc::mqttbytes::QoS;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::acl::Principal;
use crate::stats::Counters;
use crate::subscriptions::{SubscriberId, SubscriptionTree};
use crate::Message;

/// One message queued for one subscriber, at the QoS it is to be delivered with.
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
}

/// Why the broker closed a connection from outside that connection's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum KickReason {
    TakenOver = 1,
    SlowConsumer = 2,
    Kicked = 3,
    Shutdown = 4,
}

impl KickReason {
    pub fn describe(self) -> &'static str {
        match self {
            KickReason::TakenOver => "a new connection with the same client id took over",
            KickReason::SlowConsumer => "its outgoing queue is full and a QoS 1 message could not be queued",
            KickReason::Kicked => "disconnected by the cluster",
            KickReason::Shutdown => "broker shutting down",
        }
    }
}

/// Tells a connection task to close, with the first reason given.
#[derive(Default)]
pub(crate) struct KillSwitch {
    notify: Notify,
    reason: AtomicU8,
}

impl KillSwitch {
    pub fn trip(&self, reason: KickReason) {
        let _ = self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// Resolves once [`trip`](Self::trip) was called (also if it was called before).
    pub async fn tripped(&self) -> KickReason {
        self.notify.notified().await;
        self.reason().unwrap_or(KickReason::Shutdown)
    }

    /// The reason given to [`trip`](Self::trip), if it was called.
    pub fn reason(&self) -> Option<KickReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            1 => Some(KickReason::TakenOver),
            2 => Some(KickReason::SlowConsumer),
            3 => Some(KickReason::Kicked),
            _ => Some(KickReason::Shutdown),
        }
    }
}

type SessionKey = (Principal, String);

struct Subscriber {
    /// For logs: who this is.
    label: Arc<str>,
    sink: mpsc::Sender<Delivery>,
    /// `None` for local clients, which cannot be disconnected.
    kill: Option<Arc<KillSwitch>>,
    /// Filters this subscriber holds, to clean the tree up when it goes away.
    filters: Vec<Box<str>>,
    session: Option<SessionKey>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    subscribers: HashMap<SubscriberId, Subscriber>,
    sessions: HashMap<SessionKey, SubscriberId>,
    tree: SubscriptionTree,
}

impl State {
    fn remove(&mut self, id: SubscriberId) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        for filter in &sub.filters {
            self.tree.remove(filter, id);
        }
        if let Some(key) = &sub.session {
            if self.sessions.get(key) == Some(&id) {
                self.sessions.remove(key);
            }
        }
        Some(sub)
    }
}

pub(crate) struct Router {
    state: RwLock<State>,
    next_id: AtomicU64,
    closed: AtomicBool,
    pub stats: Counters,
}

/// A TCP client about to be registered.
pub(crate) struct RemoteClient<'a> {
    pub principal: &'a Principal,
    pub client_id: &'a str,
    pub label: Arc<str>,
    pub sink: mpsc::Sender<Delivery>,
    pub kill: Arc<KillSwitch>,
}

impl Router {
    pub fn new() -> Self {
        Router {
            state: RwLock::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            stats: Counters::default(),
        }
    }

    // A panic elsewhere must not make the broker unusable, so lock poisoning is ignored: the state
    // is only mutated by code that cannot panic halfway through.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers an authenticated TCP client. An older connection of the same principal with the
    /// same client id is unregistered and told to close. `None` once the broker shut down.
    pub fn register_remote(&self, client: RemoteClient<'_>) -> Option<SubscriberId> {
        let mut state = self.write();
        if self.is_closed() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key: SessionKey = (client.principal.clone(), client.client_id.to_owned());
        if let Some(old_id) = state.sessions.insert(key.clone(), id) {
            if let Some(old) = state.remove(old_id) {
                info!(client = %client.label, old = %old.label, "client id taken over by a new connection");
                if let Some(kill) = &old.kill {
                    kill.trip(KickReason::TakenOver);
                }
            }
        }
        state.subscribers.insert(
            id,
            Subscriber {
                label: client.label,
                sink: client.sink,
                kill: Some(client.kill),
                filters: Vec::new(),
                session: Some(key),
                dropped: AtomicU64::new(0),
            },
        );
        Some(id)
    }

    /// Registers an in-process client. `None` once the broker shut down.
    pub fn register_local(&self, label: Arc<str>, sink: mpsc::Sender<Delivery>) -> Option<SubscriberId> {
        let mut state = self.write();
        if self.is_closed() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        state.subscribers.insert(
            id,
            Subscriber { label, sink, kill: None, filters: Vec::new(), session: None, dropped: AtomicU64::new(0) },
        );
        Some(id)
    }

    /// Forgets a subscriber and its subscriptions; returns how many deliveries it had dropped.
    pub fn unregister(&self, id: SubscriberId) -> Option<u64> {
        self.write().remove(id).map(|sub| sub.dropped.into_inner())
    }

    /// Adds (or re-QoSes) a subscription; `false` if the subscriber is gone (taken over, shut down).
    pub fn subscribe(&self, id: SubscriberId, filter: &str, qos: QoS) -> bool {
        let mut state = self.write();
        let Some(sub) = state.subscribers.get_mut(&id) else {
            return false;
        };
        if !sub.filters.iter().any(|f| &**f == filter) {
            sub.filters.push(filter.into());
        }
        state.tree.insert(filter, id, qos);
        true
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, id: SubscriberId, filter: &str) -> bool {
        let mut state = self.write();
        let Some(sub) = state.subscribers.get_mut(&id) else {
            return false;
        };
        sub.filters.retain(|f| &**f != filter);
        state.tree.remove(filter, id)
    }

    /// Queues `msg` for every matching subscriber at min(`qos`, subscription QoS); a subscriber with
    /// several matching filters gets it once, at the highest of their QoS. Never waits: a full queue
    /// drops the delivery, and closes the subscriber's connection if the delivery was QoS 1.
    /// `scratch` is reused between calls to avoid an allocation per message. Returns the number of
    /// deliveries queued.
    pub fn route(&self, msg: Arc<Message>, qos: QoS, scratch: &mut Vec<(SubscriberId, QoS)>) -> usize {
        Counters::bump(&self.stats.messages_in);
        scratch.clear();
        let state = self.read();
        state.tree.matches(&msg.topic, scratch);
        if scratch.len() > 1 {
            // Highest QoS first within each subscriber, then keep the first entry per subscriber.
            scratch.sort_unstable_by_key(|&(id, q)| (id, std::cmp::Reverse(q as u8)));
            scratch.dedup_by_key(|&mut (id, _)| id);
        }
        let mut queued = 0;
        for &(id, sub_qos) in scratch.iter() {
            let Some(sub) = state.subscribers.get(&id) else {
                continue;
            };
            let qos = if (sub_qos as u8) < (qos as u8) { sub_qos } else { qos };
            match sub.sink.try_send(Delivery { msg: msg.clone(), qos }) {
                Ok(()) => {
                    queued += 1;
                    Counters::bump(&self.stats.messages_out);
                }
                Err(TrySendError::Full(_)) => {
                    Counters::bump(&self.stats.dropped);
                    let dropped = sub.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    match &sub.kill {
                        Some(kill) if qos != QoS::AtMostOnce => {
                            warn!(client = %sub.label, topic = %msg.topic, "slow consumer: QoS 1 queue full, closing");
                            kill.trip(KickReason::SlowConsumer);
                        }
                        // Logged at 1, 2, 4, 8, … drops so that a stuck subscriber cannot flood the log.
                        _ if dropped.is_power_of_two() => {
                            warn!(client = %sub.label, dropped, "slow consumer: queue full, dropping messages");
                        }
                        _ => {}
                    }
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Tells every connection authenticated as node `node_id` to close; returns how many.
    pub fn kick_node(&self, node_id: &str) -> usize {
        let state = self.read();
        let mut kicked = 0;
        for sub in state.subscribers.values() {
            let is_node = sub.session.as_ref().is_some_and(|(p, _)| p.node_id() == Some(node_id));
            if let (true, Some(kill)) = (is_node, &sub.kill) {
                kill.trip(KickReason::Kicked);
                kicked += 1;
            }
        }
        kicked
    }

    /// Refuses new registrations, tells every connection to close and drops every queue (local
    /// clients' `recv` then returns `None`).
    pub fn shutdown(&self) {
        let mut state = self.write();
        self.closed.store(true, Ordering::Release);
        for sub in state.subscribers.values() {
            if let Some(kill) = &sub.kill {
                kill.trip(KickReason::Shutdown);
            }
        }
        *state = State::default();
    }
}
