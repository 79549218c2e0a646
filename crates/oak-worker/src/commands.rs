//! Decoding the cluster's control messages. Anything a broker delivers is untrusted input: a bad
//! payload becomes a rejection naming the problem (and, when they can be read, the job and
//! instance it was about) so the agent can answer `FAILED` instead of crashing.

use oak_api::node::{DeleteCommand, DeployCommand};
use serde_json::Value;

/// A control message that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// The job name, if the payload had one.
    pub job_name: String,
    /// The instance number, if the payload had one (0 otherwise).
    pub instance: u32,
    pub detail: String,
}

/// The deploy commands of one `control/deploy` payload: a JSON array's elements each on its own
/// (a batch), anything else as it is (one command, or garbage [`parse_deploy`] rejects).
pub(crate) fn split_deploys(payload: Vec<u8>) -> Vec<Vec<u8>> {
    if first_byte(&payload) != Some(b'[') {
        return vec![payload];
    }
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&payload) {
        // Each element's own text (valid JSON), judged by `parse_deploy` alone.
        Ok(items) => items.iter().map(|v| v.get().as_bytes().to_vec()).collect(),
        Err(_) => vec![payload],
    }
}

pub(crate) fn parse_deploy(payload: &[u8]) -> Result<DeployCommand, Rejected> {
    // The common case decodes straight into the command; only a command that fails goes
    // through a JSON value, to name its job and instance in the rejection.
    if first_byte(payload) == Some(b'{') {
        if let Ok(cmd) = serde_json::from_slice::<DeployCommand>(payload) {
            if check_deploy(&cmd).is_ok() {
                return Ok(cmd);
            }
        }
    }
    let value = parse_object(payload, "deploy")?;
    let (job_name, instance) = best_effort_ids(&value);
    let reject = |detail: String| Rejected { job_name: job_name.clone(), instance, detail };
    let cmd: DeployCommand =
        serde_json::from_value(value).map_err(|e| reject(format!("invalid deploy command: {e}")))?;
    check_deploy(&cmd).map_err(reject)?;
    Ok(cmd)
}

fn check_deploy(cmd: &DeployCommand) -> Result<(), String> {
    if cmd.job.job_name.trim().is_empty() {
        return Err("invalid deploy command: job_name is empty".into());
    }
    if cmd.job.spec.virtualization.trim().is_empty() {
        return Err("invalid deploy command: virtualization is empty".into());
    }
    Ok(())
}

fn first_byte(payload: &[u8]) -> Option<u8> {
    payload.iter().copied().find(|b| !b.is_ascii_whitespace())
}

pub(crate) fn parse_delete(payload: &[u8]) -> Result<DeleteCommand, Rejected> {
    let value = parse_object(payload, "delete")?;
    let (job_name, instance) = best_effort_ids(&value);
    let cmd: DeleteCommand = serde_json::from_value(value).map_err(|e| Rejected {
        job_name,
        instance,
        detail: format!("invalid delete command: {e}"),
    })?;
    if cmd.job_name.trim().is_empty() {
        return Err(Rejected {
            job_name: String::new(),
            instance,
            detail: "invalid delete command: job_name is empty".into(),
        });
    }
    Ok(cmd)
}

fn parse_object(payload: &[u8], kind: &str) -> Result<Value, Rejected> {
    let malformed = |detail: String| Rejected { job_name: String::new(), instance: 0, detail };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("malformed {kind} command: {e}")))?;
    if !value.is_object() {
        return Err(malformed(format!("malformed {kind} command: expected a JSON object")));
    }
    Ok(value)
}

fn best_effort_ids(value: &Value) -> (String, u32) {
    let job_name = value.get("job_name").and_then(Value::as_str).unwrap_or_default().to_string();
    let instance = value.get("instance_number").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    (job_name, instance.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deploy_json() -> Value {
        json!({
            "_id": "s1", "job_name": "app.ns.svc.ns", "image": "docker.io/library/nginx:latest",
            "instance_number": 3, "microservice_name": "svc", "microservice_namespace": "ns",
            "virtualization": "docker", "code": "docker.io/library/nginx:latest", "one_shot": false,
            "instance_list": [{"instance_number": 3}], "status": "NODE_SCHEDULED",
        })
    }

    #[test]
    fn a_batch_is_split_into_its_commands_each_judged_alone() {
        let mut second = deploy_json();
        second["instance_number"] = json!(4);
        let batch =
            serde_json::to_vec(&json!([deploy_json(), {"job_name": "x.y.z.w", "instance_number": 9}, second])).unwrap();
        let parts = split_deploys(batch);
        assert_eq!(parts.len(), 3);
        assert_eq!(parse_deploy(&parts[0]).unwrap().instance_number, 3);
        let bad = parse_deploy(&parts[1]).unwrap_err();
        assert_eq!((bad.job_name.as_str(), bad.instance), ("x.y.z.w", 9), "{bad:?}");
        assert_eq!(parse_deploy(&parts[2]).unwrap().instance_number, 4);
        // One command and garbage stay as they are, for `parse_deploy` to judge.
        let one = serde_json::to_vec(&deploy_json()).unwrap();
        assert_eq!(split_deploys(one.clone()), vec![one]);
        assert_eq!(split_deploys(b" [1, 2".to_vec()), vec![b" [1, 2".to_vec()]);
        let e = parse_deploy(&split_deploys(b"[1]".to_vec())[0]).unwrap_err();
        assert!(e.detail.contains("expected a JSON object"), "{e:?}");
        assert!(split_deploys(b"[]".to_vec()).is_empty(), "an empty batch deploys nothing");
    }

    #[test]
    fn accepts_a_cluster_job_document() {
        let cmd = parse_deploy(deploy_json().to_string().as_bytes()).unwrap();
        assert_eq!((cmd.job.job_name.as_str(), cmd.instance_number), ("app.ns.svc.ns", 3));
        assert_eq!(cmd.job.spec.virtualization, "docker");
    }

    #[test]
    fn malformed_json_is_rejected() {
        let err = parse_deploy(b"{\"job_name\": ").unwrap_err();
        assert!(err.detail.starts_with("malformed deploy command: "), "{}", err.detail);
        assert_eq!(err.job_name, "");
        let err = parse_deploy(b"[1]").unwrap_err();
        assert_eq!(err.detail, "malformed deploy command: expected a JSON object");
    }

    #[test]
    fn missing_field_names_the_field_and_keeps_ids() {
        let mut doc = deploy_json();
        doc.as_object_mut().unwrap().remove("image");
        let err = parse_deploy(doc.to_string().as_bytes()).unwrap_err();
        assert!(err.detail.contains("missing field `image`"), "{}", err.detail);
        assert_eq!((err.job_name.as_str(), err.instance), ("app.ns.svc.ns", 3));
    }

    #[test]
    fn wrong_types_and_empty_names_are_rejected() {
        let mut doc = deploy_json();
        doc["instance_number"] = json!("three");
        assert!(parse_deploy(doc.to_string().as_bytes()).unwrap_err().detail.contains("invalid type"));
        let mut doc = deploy_json();
        doc["job_name"] = json!("");
        assert_eq!(
            parse_deploy(doc.to_string().as_bytes()).unwrap_err().detail,
            "invalid deploy command: job_name is empty"
        );
    }

    #[test]
    fn delete_commands() {
        let cmd = parse_delete(br#"{"job_name":"a.b.c.d","virtualization":"docker","instance_number":1}"#).unwrap();
        assert_eq!((cmd.job_name.as_str(), cmd.instance_number), ("a.b.c.d", 1));
        let cmd = parse_delete(br#"{"job_name":"a.b.c.d","instance_number":0}"#).unwrap();
        assert_eq!(cmd.virtualization, "");
        let err = parse_delete(br#"{"job_name":"a.b.c.d"}"#).unwrap_err();
        assert!(err.detail.contains("instance_number"), "{}", err.detail);
        assert!(parse_delete(b"nope").unwrap_err().detail.starts_with("malformed delete command"));
    }
}
