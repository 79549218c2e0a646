//! The descriptor policy at the API edge: `privileged` only from trusted roles (403), reserved
//! host ports only from them (422), each refusal naming the field's JSON path. Called by every
//! handler that stores a microservice, after validation and before anything is written.

use oak_api::sla::{Microservice, Sla};
use oak_core::descriptor_policy::{check_microservice, check_sla as check, Refusal};
use oak_core::sla::service_update_path;
use serde_json::Value;

use crate::auth::extract::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// For a validated descriptor of new applications or services.
pub fn check_sla(st: &AppState, caller: &Caller, sla: &Sla) -> ApiResult<()> {
    check(&st.policy, &caller.principal, sla).map_err(refused)
}

/// For a validated service update: `doc` tells where its microservice is.
pub fn check_service_update(st: &AppState, caller: &Caller, doc: &Value, ms: &Microservice) -> ApiResult<()> {
    check_microservice(&st.policy, &caller.principal, service_update_path(doc), ms).map_err(refused)
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Forbidden(errors) => ApiError::ForbiddenFields(errors),
        Refusal::Invalid(errors) => ApiError::Invalid(errors),
    }
}
