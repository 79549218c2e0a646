//! The subscription table: a tree of topic levels, so routing a message costs one walk down the
//! topic's levels instead of matching it against every filter (1,000 nodes each holding their own
//! `nodes/<id>/control/+` filter would otherwise mean 1,000 matches per message).
//!
//! Matching follows MQTT 3.1.1 §4.7: `+` matches exactly one level (possibly empty), `#` matches the
//! rest including its parent level, and filters starting with a wildcard don't match topics starting
//! with `$`. Filters must have been checked with [`rumqttc::mqttbytes::valid_filter`].

use std::collections::HashMap;
use std::str::Split;

use rumqttc::mqttbytes::QoS;

/// Identifies one subscriber (a TCP connection or a local client).
pub(crate) type SubscriberId = u64;

#[derive(Default)]
pub(crate) struct SubscriptionTree {
    root: Level,
}

#[derive(Default)]
struct Level {
    /// Children by literal level name.
    children: Children,
    /// The `+` child.
    plus: Option<Box<Level>>,
    /// Filters ending at this level.
    here: Vec<(SubscriberId, QoS)>,
    /// Filters ending in `/#` below this level (or `#` at the root).
    rest: Vec<(SubscriberId, QoS)>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.here.is_empty() && self.rest.is_empty()
    }
}

/// Levels with more children than this keep them in a hash map.
const FEW_CHILDREN: usize = 8;

/// A level's children by literal name: a short list while there are few, a hash map beyond.
/// Most levels have one to three children (a worker's `nodes/<id>/control/{deploy,delete,logs}`),
/// and a cluster's broker holds a thousand workers' levels: hash maps there cost about a
/// kilobyte per worker, lists a few hundred bytes. Only `nodes/` itself has many.
enum Children {
    Few(Vec<(Box<str>, Level)>),
    /// Boxed: a map is twice a list's size, and every level holds one of the two.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, Level>>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(few) => few.is_empty(),
            Children::Many(many) => many.is_empty(),
        }
    }

    fn get(&self, name: &str) -> Option<&Level> {
        match self {
            Children::Few(few) => few.iter().find(|(n, _)| &**n == name).map(|(_, level)| level),
            Children::Many(many) => many.get(name),
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Level> {
        match self {
            Children::Few(few) => few.iter_mut().find(|(n, _)| &**n == name).map(|(_, level)| level),
            Children::Many(many) => many.get_mut(name),
        }
    }

    /// The child named `name`, added empty if there is none.
    fn entry(&mut self, name: &str) -> &mut Level {
        if let Children::Few(few) = self {
            if few.len() >= FEW_CHILDREN && !few.iter().any(|(n, _)| &**n == name) {
                *self = Children::Many(Box::new(std::mem::take(few).into_iter().collect()));
            }
        }
        match self {
            Children::Few(few) => {
                let at = match few.iter().position(|(n, _)| &**n == name) {
                    Some(at) => at,
                    None => {
                        few.push((name.into(), Level::default()));
                        few.shrink_to_fit();
                        few.len() - 1
                    }
                };
                &mut few[at].1
            }
            Children::Many(many) => many.entry(name.into()).or_default(),
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Children::Few(few) => few.retain(|(n, _)| &**n != name),
            Children::Many(many) => {
                many.remove(name);
            }
        }
    }
}

/// Subscription lists change rarely and are mostly one entry long: they are kept exact.
fn upsert(subs: &mut Vec<(SubscriberId, QoS)>, id: SubscriberId, qos: QoS) {
    match subs.iter_mut().find(|(s, _)| *s == id) {
        Some(entry) => entry.1 = qos,
        None => {
            subs.push((id, qos));
            subs.shrink_to_fit();
        }
    }
}

fn remove_from(subs: &mut Vec<(SubscriberId, QoS)>, id: SubscriberId) -> bool {
    let before = subs.len();
    subs.retain(|(s, _)| *s != id);
    subs.len() != before
}

impl SubscriptionTree {
    /// Adds `id`'s subscription to `filter`, or updates its QoS if it already has one.
    pub(crate) fn insert(&mut self, filter: &str, id: SubscriberId, qos: QoS) {
        let mut level = &mut self.root;
        for name in filter.split('/') {
            match name {
                "#" => {
                    upsert(&mut level.rest, id, qos);
                    return;
                }
                "+" => level = level.plus.get_or_insert_with(Box::default),
                _ => level = level.children.entry(name),
            }
        }
        upsert(&mut level.here, id, qos);
    }

    /// Removes `id`'s subscription to `filter`; returns whether it existed.
    pub(crate) fn remove(&mut self, filter: &str, id: SubscriberId) -> bool {
        remove_at(&mut self.root, filter.split('/'), id)
    }

    /// Appends every subscription matching `topic` to `out` (a subscriber may appear more than once
    /// if several of its filters match).
    pub(crate) fn matches(&self, topic: &str, out: &mut Vec<(SubscriberId, QoS)>) {
        let system = topic.starts_with('$');
        collect(&self.root, topic.split('/'), system, out);
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

fn remove_at(level: &mut Level, mut names: Split<'_, char>, id: SubscriberId) -> bool {
    let Some(name) = names.next() else {
        return remove_from(&mut level.here, id);
    };
    match name {
        "#" => remove_from(&mut level.rest, id),
        "+" => {
            let Some(plus) = level.plus.as_deref_mut() else {
                return false;
            };
            let removed = remove_at(plus, names, id);
            if plus.is_empty() {
                level.plus = None;
            }
            removed
        }
        _ => {
            let Some(child) = level.children.get_mut(name) else {
                return false;
            };
            let removed = remove_at(child, names, id);
            if child.is_empty() {
                level.children.remove(name);
            }
            removed
        }
    }
}

/// `first_is_system`: we are at the root and the topic starts with `$`, so wildcards don't match here.
fn collect(level: &Level, mut names: Split<'_, char>, first_is_system: bool, out: &mut Vec<(SubscriberId, QoS)>) {
    if !first_is_system {
        out.extend_from_slice(&level.rest);
    }
    let Some(name) = names.next() else {
        out.extend_from_slice(&level.here);
        return;
    };
    if let Some(child) = level.children.get(name) {
        collect(child, names.clone(), false, out);
    }
    if let (Some(plus), false) = (level.plus.as_deref(), first_is_system) {
        collect(plus, names, false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::matches as spec_matches;

    /// rumqttc's `matches` refuses every `$` topic; per the spec only leading wildcards must not match it.
    fn reference(topic: &str, filter: &str) -> bool {
        match topic.strip_prefix('$') {
            None => spec_matches(topic, filter),
            Some(_) if filter.starts_with(['+', '#']) => false,
            Some(rest) => filter.strip_prefix('$').is_some_and(|f| spec_matches(&format!("D{rest}"), &format!("D{f}"))),
        }
    }

    fn ids(tree: &SubscriptionTree, topic: &str) -> Vec<SubscriberId> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut ids: Vec<_> = out.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a/b/c",
        "a/+/c",
        "a/b/#",
        "+/b/#",
        "a/",
        "a/+/+/d",
        "$SYS/#",
        "$SYS/x",
        "nodes/+/information",
        "nodes/n1/control/#",
    ];

    const TOPICS: &[&str] = &[
        "a",
        "a/",
        "a/b",
        "a/b/c",
        "a/x/c",
        "a/b/c/d",
        "a/x/y/d",
        "b",
        "x/b",
        "x/b/y",
        "$SYS/x",
        "$SYS",
        "nodes/n1/information",
        "nodes/n1/control/deploy",
        "nodes/n2/control/deploy",
        "/a",
        "/",
    ];

    #[test]
    fn agrees_with_the_reference_matcher() {
        let mut tree = SubscriptionTree::default();
        for (i, f) in FILTERS.iter().enumerate() {
            tree.insert(f, i as SubscriberId, QoS::AtMostOnce);
        }
        for topic in TOPICS {
            let expected: Vec<SubscriberId> = FILTERS
                .iter()
                .enumerate()
                .filter(|(_, f)| reference(topic, f))
                .map(|(i, _)| i as SubscriberId)
                .collect();
            assert_eq!(ids(&tree, topic), expected, "topic {topic:?}");
        }
    }

    #[test]
    fn system_topics_are_not_matched_by_leading_wildcards() {
        let mut tree = SubscriptionTree::default();
        tree.insert("#", 1, QoS::AtMostOnce);
        tree.insert("+/x", 2, QoS::AtMostOnce);
        tree.insert("$SYS/+", 3, QoS::AtMostOnce);
        assert_eq!(ids(&tree, "$SYS/x"), vec![3]);
        assert_eq!(ids(&tree, "SYS/x"), vec![1, 2]);
    }

    /// Past [`FEW_CHILDREN`] a level's children move to a hash map: routing and removal agree
    /// across the switch, for a cluster's worth of nodes.
    #[test]
    fn levels_with_many_children_route_and_prune_the_same() {
        let mut tree = SubscriptionTree::default();
        let filters: Vec<String> =
            (0..1000).flat_map(|i| ["deploy", "delete", "logs"].map(|c| format!("nodes/n{i}/control/{c}"))).collect();
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, i as SubscriberId, QoS::AtLeastOnce);
        }
        tree.insert("nodes/+/control/deploy", 5000, QoS::AtMostOnce);
        assert_eq!(ids(&tree, "nodes/n0/control/deploy"), vec![0, 5000]);
        assert_eq!(ids(&tree, "nodes/n7/control/logs"), vec![23]);
        assert_eq!(ids(&tree, "nodes/n999/control/delete"), vec![2998]);
        assert_eq!(ids(&tree, "nodes/n1000/control/deploy"), vec![5000]);
        assert_eq!(ids(&tree, "nodes/n1/control"), Vec::<SubscriberId>::new());
        for (i, f) in filters.iter().enumerate() {
            assert!(tree.remove(f, i as SubscriberId), "{f}");
        }
        assert!(tree.remove("nodes/+/control/deploy", 5000));
        assert!(tree.is_empty());
    }

    #[test]
    fn upsert_and_remove_prune_the_tree() {
        let mut tree = SubscriptionTree::default();
        tree.insert("nodes/+/information", 7, QoS::AtMostOnce);
        tree.insert("nodes/+/information", 7, QoS::AtLeastOnce);
        tree.insert("nodes/n1/#", 8, QoS::AtLeastOnce);
        let mut out = Vec::new();
        tree.matches("nodes/n1/information", &mut out);
        assert_eq!(out, vec![(8, QoS::AtLeastOnce), (7, QoS::AtLeastOnce)]);

        assert!(!tree.remove("nodes/+/information", 8));
        assert!(!tree.remove("nodes/n2/#", 8));
        assert!(tree.remove("nodes/+/information", 7));
        assert!(!tree.remove("nodes/+/information", 7));
        assert!(tree.remove("nodes/n1/#", 8));
        assert!(tree.is_empty());
    }
}
