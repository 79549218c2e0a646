//! Wire types of Oakestra, shared by every tier and client.
//!
//! Only data shapes live here (no I/O, no logic), so that the root, the clusters, the CLI and the
//! tests agree on one definition of every JSON document. Field names follow the original
//! Oakestra API (spec §2–§4) so that existing descriptors and clients keep working.

pub mod channel;
pub mod error;
pub mod model;
pub mod net;
pub mod node;
pub mod rest;
pub mod sla;
pub mod status;

pub use error::{ErrorBody, FieldError};
