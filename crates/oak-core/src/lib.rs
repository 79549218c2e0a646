//! Pure decision logic of Oakestra: no I/O, no clocks, no unseeded randomness.
//!
//! Everything here is a plain function of its inputs, so it is tested by tables and reused by
//! every tier.

pub mod authz;
pub mod jobs;
pub mod placement;
pub mod sla;
