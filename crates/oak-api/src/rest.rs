//! Request and response bodies of the public REST API that are not stored objects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Member;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// Organization to log in to; `root` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Access token (10 minutes).
    pub token: String,
    /// Refresh token (7 days), for `POST /api/auth/refresh`.
    pub refresh_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshResponse {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Roles in the caller's organization.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    #[serde(rename = "oldPassword")]
    pub old_password: String,
    #[serde(rename = "newPassword")]
    pub new_password: String,
}

/// Admin update of a user: any field left out stays as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UserUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Sets a new password (admin reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Replaces the user's roles in the caller's organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrganizationRequest {
    pub name: String,
    #[serde(default)]
    pub member: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PermissionsResponse {
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    pub message: String,
}

impl MessageResponse {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdResponse {
    pub id: String,
}

/// Answer of `POST /api/service/`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateServicesResponse {
    /// Id of the last service created.
    pub job_id: String,
    pub deployed_services: Vec<DeployedService>,
    /// Always empty: a request that cannot create all its services creates none.
    pub failed_services: Vec<DeployedService>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployedService {
    pub service_name: String,
    pub job_id: String,
    pub status: u16,
}

/// Answer of `POST /api/service/<id>/instance`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceRequested {
    pub message: String,
    /// The (first) instance's number.
    pub instance_number: u32,
    /// Status right after the request (a negative scheduling status if no cluster fits).
    pub status: String,
    /// With `?count=N`: every instance requested, in number order (absent without `count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<RequestedInstance>,
}

/// One instance of a `?count=N` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestedInstance {
    pub instance_number: u32,
    pub status: String,
}

/// A new cluster join token: `oakc.v1.<SHA-256 of the root's CA certificate, hex>.<secret>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterToken {
    pub token: String,
    /// Short id naming the token (e.g. to revoke it) without its secret.
    #[serde(default)]
    pub id: String,
    /// Unix seconds after which the token is refused; absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// May join several clusters; otherwise the first join uses it up.
    #[serde(default)]
    pub reusable: bool,
}

/// Optional body of `POST /api/clusters/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTokenRequest {
    /// Seconds until the token expires; absent = never.
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
    /// Let the token join several clusters (default: single use).
    pub reusable: bool,
}

/// Body of `POST /api/clusters/tokens/revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RevokeClusterToken {
    /// The whole token, or its short id.
    pub token: String,
}

/// `GET /api/clusters/{cluster_id}/workers`: a cluster's workers as it last reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterWorkers {
    pub cluster_id: String,
    pub cluster_name: String,
    /// The cluster's channel is open now. When it is not, the list is the last one received
    /// and every worker shows as inactive.
    pub connected: bool,
    /// Ordered by name, then id.
    pub workers: Vec<crate::channel::WorkerSummary>,
}
