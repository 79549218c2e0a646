//! Pure decision logic of Oakestra: no I/O, no clocks, no unseeded randomness.
//!
//! Everything here is a plain function of its inputs, so it is tested by tables and reused by
//! every tier.

pub mod addresses;
pub mod authz;
/// When the root gives up on a silent cluster and moves its instances.
pub mod cluster_loss;
/// Who may ask for privileged containers and reserved host ports.
pub mod descriptor_policy;
/// Where workers may fetch from on a tenant's behalf: public addresses and operator allowances.
pub mod egress;
pub mod jobs;
pub mod log_budget;
/// The cluster tier's scheduler and resource report: which worker runs an instance, a node's
/// free capacity after its placed instances, and the totals a cluster sends the root. Pure so
/// both the cluster and the tests run exactly the same rules.
pub mod node_placement;
pub mod placement;
/// The `port` grammar, shared by the root's validation, the cluster's scheduler and the worker.
pub mod ports;
pub mod quotas;
/// Capacity the root promised to clusters since their last report, so a burst of root placements
/// cannot over-commit a cluster between two reports.
pub mod reservations;
/// Route tables of the overlay: what a table query answers and what changes push.
pub mod routes;
pub mod sla;
pub mod stats;
pub mod utc;

/// The id a deploy carries through the logs of root, cluster and worker (the `deploy_id` field
/// of their `deploy` spans): the service id and the instance number, which every tier knows
/// from the messages it already gets, so `grep deploy_id=<id>` follows one instance's deploys
/// across the tiers' logs.
pub fn deploy_id(service_id: &str, instance_number: u32) -> String {
    format!("{service_id}.{instance_number}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_deploy_id_names_the_service_and_the_instance() {
        assert_eq!(super::deploy_id("65f0c1", 3), "65f0c1.3");
        assert_ne!(super::deploy_id("a", 12), super::deploy_id("a1", 2));
    }
}
