//! When the root gives up on a cluster and moves its instances (issue 16, resilience).
//!
//! A cluster's unreachability counts from the last frame the root received from it (reports,
//! instance updates, keepalives: clusters send something at least every second), not from
//! the moment its connection was noticed closed, so a cut link (packets dropped, no FIN) is
//! lost after the cluster timeout just like a cluster that hung up. A lost cluster's instances
//! are placed on other clusters by the usual rules, keeping their instance IPs; when the
//! cluster comes back its full resync holds none of them any more, so its copies are removed.

use std::time::Duration;

use oak_api::model::Instance;
use oak_api::status;

/// What the root knows of a cluster's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Connected, and heard from within the report freshness: placement may use it.
    Active,
    /// Silent, or its last report too old, but for less than the cluster timeout: its
    /// instances stay where they are (a short outage moves nothing).
    Unreachable,
    /// Silent for the cluster timeout or longer: its instances go elsewhere.
    Lost,
}

impl Reach {
    /// The word `GET /api/clusters` shows in a cluster's `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Active => "active",
            Reach::Unreachable => "unreachable",
            Reach::Lost => "lost",
        }
    }
}

/// A cluster's state from how long it has been silent (`silent_for`, since the last frame; since
/// the root started for a cluster not heard since), whether it is connected with a fresh
/// report, and the cluster timeout.
pub fn reach(silent_for: Duration, fresh: bool, timeout: Duration) -> Reach {
    if silent_for >= timeout {
        Reach::Lost
    } else if fresh {
        Reach::Active
    } else {
        Reach::Unreachable
    }
}

/// Whether an instance held by a lost cluster is moved: everything but finished instances.
pub fn must_move(instance: &Instance) -> bool {
    instance.status != status::COMPLETED && instance.status != status::UNDEPLOYED
}

/// The note an instance moved off a lost cluster carries in its `status_detail`.
pub fn moved_note(cluster_name: &str, silent_for: Duration) -> String {
    format!("re-placed from cluster {cluster_name}: lost {} s ago", silent_for.as_secs())
}

/// The `status_detail` of an instance that carries a note, given its cluster's detail.
pub fn with_note(note: &str, detail: &str) -> String {
    match (note.is_empty(), detail.is_empty()) {
        (true, _) => detail.to_string(),
        (false, true) => note.to_string(),
        (false, false) => format!("{detail} ({note})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_table() {
        let t = Duration::from_secs(30);
        let s = Duration::from_secs;
        let cases = [
            (s(0), true, Reach::Active),
            (s(29), true, Reach::Active),
            // The last frame 30 s ago: lost, even if the connection still looks open and its
            // last report was within the freshness window of an earlier check.
            (s(30), true, Reach::Lost),
            (s(3), false, Reach::Unreachable),
            (s(29), false, Reach::Unreachable),
            (s(31), false, Reach::Lost),
        ];
        for (silent, fresh, want) in cases {
            assert_eq!(reach(silent, fresh, t), want, "{silent:?} {fresh}");
        }
        assert_eq!(Reach::Lost.as_str(), "lost");
        assert_eq!(reach(Duration::ZERO, true, Duration::from_secs(1)).as_str(), "active");
    }

    #[test]
    fn finished_instances_stay_and_notes_read_well() {
        for (st, moves) in [
            (status::RUNNING, true),
            (status::CLUSTER_SCHEDULED, true),
            (status::NODE_SCHEDULED, true),
            (status::NO_WORKER_CAPACITY, true),
            (status::FAILED, true),
            (status::COMPLETED, false),
            (status::UNDEPLOYED, false),
        ] {
            assert_eq!(must_move(&Instance::new(0, st, "", 0.0)), moves, "{st}");
        }
        let note = moved_note("alpha", Duration::from_millis(30_900));
        assert_eq!(note, "re-placed from cluster alpha: lost 30 s ago");
        assert_eq!(with_note(&note, ""), note);
        assert_eq!(with_note("", "running"), "running");
        assert_eq!(with_note(&note, "running"), "running (re-placed from cluster alpha: lost 30 s ago)");
    }
}
