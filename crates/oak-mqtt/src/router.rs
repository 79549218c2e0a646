//! Who is connected, who subscribed to what, and fan-out of messages to subscriber queues.
//!
//! All state sits behind one `RwLock`: routing (the hot path, run by the publishing connection's
//! own task) only takes the read lock and never waits for a subscriber — deliveries go into bounded
//! per-subscriber queues with `try_send`. CONNECT, SUBSCRIBE and disconnects take the write lock.
//!
//! A client that connected with `clean_session = 0` keeps its session when it disconnects: its
//! subscriptions stay in the tree under its old id ("parked") and QoS 1 messages for them are
//! kept (at most [`PARKED_QUEUE`], oldest dropped first, for [`PARKED_TTL`]); the next
//! connection of the same principal and client id without a clean session takes the
//! subscriptions over and gets the kept messages first, after its CONNACK. So a command sent
//! while a worker reconnects (restarted, or a dropped connection) still reaches it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

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

/// When a connection last read anything from its peer (keep-alive pings included), in
/// milliseconds since its router started: how the cluster knows a quiet worker is alive.
#[derive(Default)]
pub(crate) struct Heard(AtomicU64);

impl Heard {
    pub fn now(&self, router: &Router) {
        self.0.store(router.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
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

/// Most QoS 1 messages kept for one disconnected session.
pub(crate) const PARKED_QUEUE: usize = 1024;
/// How long a disconnected session is kept.
pub(crate) const PARKED_TTL: Duration = Duration::from_secs(3600);

struct Subscriber {
    /// For logs: who this is.
    label: Arc<str>,
    sink: mpsc::Sender<Delivery>,
    /// `None` for local clients, which cannot be disconnected.
    kill: Option<Arc<KillSwitch>>,
    /// Filters this subscriber holds and their QoS, to clean the tree up when it goes away (or
    /// hand them to the session's next connection).
    filters: Vec<(Box<str>, QoS)>,
    session: Option<SessionKey>,
    /// Connected with `clean_session = 0`: parked when it disconnects.
    persistent: bool,
    dropped: AtomicU64,
    /// `None` for local clients.
    heard: Option<Arc<Heard>>,
}

/// A disconnected persistent session: its subscriptions stay in the tree under its old id.
struct Parked {
    key: SessionKey,
    label: Arc<str>,
    filters: Vec<(Box<str>, QoS)>,
    queue: Mutex<VecDeque<Delivery>>,
    since: Instant,
}

#[derive(Default)]
struct State {
    subscribers: HashMap<SubscriberId, Subscriber>,
    sessions: HashMap<SessionKey, SubscriberId>,
    parked: HashMap<SubscriberId, Parked>,
    parked_keys: HashMap<SessionKey, SubscriberId>,
    tree: SubscriptionTree,
}

impl State {
    fn remove(&mut self, id: SubscriberId) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        for (filter, _) in &sub.filters {
            self.tree.remove(filter, id);
        }
        if let Some(key) = &sub.session {
            if self.sessions.get(key) == Some(&id) {
                self.sessions.remove(key);
            }
        }
        Some(sub)
    }

    /// Forgets a parked session and its subscriptions.
    fn unpark(&mut self, id: SubscriberId) -> Option<Parked> {
        let parked = self.parked.remove(&id)?;
        for (filter, _) in &parked.filters {
            self.tree.remove(filter, id);
        }
        if self.parked_keys.get(&parked.key) == Some(&id) {
            self.parked_keys.remove(&parked.key);
        }
        Some(parked)
    }

    /// Forgets the sessions parked longer than [`PARKED_TTL`].
    fn expire_parked(&mut self, now: Instant) {
        let old: Vec<SubscriberId> =
            self.parked.iter().filter(|(_, p)| now.duration_since(p.since) > PARKED_TTL).map(|(id, _)| *id).collect();
        for id in old {
            if let Some(p) = self.unpark(id) {
                info!(client = %p.label, "forgetting a session disconnected for an hour");
            }
        }
    }
}

pub(crate) struct Router {
    /// What [`Heard`] counts from.
    epoch: Instant,
    state: RwLock<State>,
    next_id: AtomicU64,
    closed: AtomicBool,
    pub stats: Counters,
}

/// A TCP client about to be registered.
pub(crate) struct RemoteClient<'a> {
    pub principal: &'a Principal,
    pub client_id: &'a str,
    /// The CONNECT's flag: `false` asks to resume (and later keep) the session.
    pub clean_session: bool,
    pub label: Arc<str>,
    pub sink: mpsc::Sender<Delivery>,
    pub kill: Arc<KillSwitch>,
    pub heard: Arc<Heard>,
}

impl Router {
    pub fn new() -> Self {
        Router {
            epoch: Instant::now(),
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
    /// same client id is unregistered and told to close. Without a clean session, the session of
    /// that connection or the parked one is resumed: its subscriptions move to the new id and
    /// the messages kept for it are queued at once. Returns the id and whether a session was
    /// resumed (CONNACK's `session_present`); `None` once the broker shut down.
    pub fn register_remote(&self, client: RemoteClient<'_>) -> Option<(SubscriberId, bool)> {
        let mut state = self.write();
        if self.is_closed() {
            return None;
        }
        state.expire_parked(Instant::now());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key: SessionKey = (client.principal.clone(), client.client_id.to_owned());
        let mut resumed: Option<Vec<(Box<str>, QoS)>> = None;
        let mut kept = VecDeque::new();
        if let Some(old_id) = state.sessions.insert(key.clone(), id) {
            if let Some(old) = state.remove(old_id) {
                info!(client = %client.label, old = %old.label, "client id taken over by a new connection");
                if let Some(kill) = &old.kill {
                    kill.trip(KickReason::TakenOver);
                }
                if old.persistent {
                    resumed = Some(old.filters);
                }
            }
        }
        if let Some(parked_id) = state.parked_keys.get(&key).copied() {
            if let Some(parked) = state.unpark(parked_id) {
                if resumed.is_none() {
                    resumed = Some(parked.filters);
                    kept = parked.queue.into_inner().unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        let (filters, session_present) = match resumed {
            Some(filters) if !client.clean_session => (filters, true),
            _ => (Vec::new(), false),
        };
        for (filter, qos) in &filters {
            state.tree.insert(filter, id, *qos);
        }
        if session_present {
            info!(client = %client.label, kept = kept.len(), subscriptions = filters.len(), "session resumed");
        }
        let sink = client.sink;
        if session_present {
            for delivery in kept {
                // The queue is fresh and as long as the parked one; a short one drops the rest.
                if sink.try_send(delivery).is_err() {
                    Counters::bump(&self.stats.dropped);
                }
            }
        }
        state.subscribers.insert(
            id,
            Subscriber {
                label: client.label,
                sink,
                kill: Some(client.kill),
                filters,
                session: Some(key),
                persistent: !client.clean_session,
                dropped: AtomicU64::new(0),
                heard: Some(client.heard),
            },
        );
        Some((id, session_present))
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
            Subscriber {
                label,
                sink,
                kill: None,
                filters: Vec::new(),
                session: None,
                persistent: false,
                dropped: AtomicU64::new(0),
                heard: None,
            },
        );
        Some(id)
    }

    /// Forgets a subscriber and its subscriptions; returns how many deliveries it had dropped.
    /// A persistent session that no newer connection took over is parked instead: its
    /// subscriptions stay and collect QoS 1 messages until it comes back.
    pub fn unregister(&self, id: SubscriberId) -> Option<u64> {
        let mut state = self.write();
        let current_persistent = state.subscribers.get(&id).is_some_and(|sub| {
            sub.persistent && sub.session.as_ref().is_some_and(|key| state.sessions.get(key) == Some(&id))
        });
        if !current_persistent || self.is_closed() {
            return state.remove(id).map(|sub| sub.dropped.into_inner());
        }
        let sub = state.subscribers.remove(&id)?;
        let key = sub.session.clone()?;
        state.sessions.remove(&key);
        let now = Instant::now();
        state.expire_parked(now);
        if let Some(older) = state.parked_keys.insert(key.clone(), id) {
            state.unpark(older);
        }
        let parked = Parked { key, label: sub.label, filters: sub.filters, queue: Mutex::default(), since: now };
        state.parked.insert(id, parked);
        Some(sub.dropped.into_inner())
    }

    /// Adds (or re-QoSes) a subscription; `false` if the subscriber is gone (taken over, shut down).
    pub fn subscribe(&self, id: SubscriberId, filter: &str, qos: QoS) -> bool {
        let mut state = self.write();
        let Some(sub) = state.subscribers.get_mut(&id) else {
            return false;
        };
        match sub.filters.iter_mut().find(|(f, _)| &**f == filter) {
            Some((_, q)) => *q = qos,
            None => sub.filters.push((filter.into(), qos)),
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
        sub.filters.retain(|(f, _)| &**f != filter);
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
            let qos = if (sub_qos as u8) < (qos as u8) { sub_qos } else { qos };
            let Some(sub) = state.subscribers.get(&id) else {
                // A parked session keeps what it must get at least once, the newest.
                if let (Some(parked), QoS::AtLeastOnce) = (state.parked.get(&id), qos) {
                    let mut kept = parked.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    if kept.len() >= PARKED_QUEUE {
                        kept.pop_front();
                        Counters::bump(&self.stats.dropped);
                    }
                    kept.push_back(Delivery { msg: msg.clone(), qos });
                    queued += 1;
                }
                continue;
            };
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

    /// Every node with a connection open now, with when that connection last read anything
    /// (the latest of its connections).
    pub fn nodes_heard(&self) -> Vec<(String, Instant)> {
        let state = self.read();
        let mut heard: HashMap<&str, u64> = HashMap::new();
        for sub in state.subscribers.values() {
            let node = sub.session.as_ref().and_then(|(p, _)| p.node_id());
            if let (Some(node), Some(h)) = (node, &sub.heard) {
                let ms = h.0.load(Ordering::Relaxed);
                let e = heard.entry(node).or_insert(ms);
                *e = (*e).max(ms);
            }
        }
        heard.into_iter().map(|(node, ms)| (node.to_string(), self.epoch + Duration::from_millis(ms))).collect()
    }

    /// Tells every connection authenticated as node `node_id` to close; returns how many. Its
    /// persistent sessions are parked as usual (a re-registered worker resumes them).
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
