//! Task ids name an instance on a node: containers, log files and snapshots are called
//! `<job_name>.instance.<n>`, as in the original, so existing tooling finds them.

const SEPARATOR: &str = ".instance.";

/// `<job_name>.instance.<n>`.
pub fn task_id(job_name: &str, instance: u32) -> String {
    format!("{job_name}{SEPARATOR}{instance}")
}

/// Splits a task id into job name and instance number. Job names contain dots, so the last
/// `.instance.` separates them.
pub fn parse_task_id(id: &str) -> Option<(&str, u32)> {
    let (job, n) = id.rsplit_once(SEPARATOR)?;
    if job.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((job, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_job_names_with_dots() {
        let id = task_id("app.ns.svc.sns", 3);
        assert_eq!(id, "app.ns.svc.sns.instance.3");
        assert_eq!(parse_task_id(&id), Some(("app.ns.svc.sns", 3)));
    }

    #[test]
    fn uses_the_last_separator() {
        assert_eq!(parse_task_id("a.instance.b.instance.12"), Some(("a.instance.b", 12)));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "app", "app.instance.", ".instance.1", "app.instance.x", "app.instance.-1", "app.instance.+1"] {
            assert_eq!(parse_task_id(bad), None, "{bad}");
        }
        assert_eq!(parse_task_id("app.instance.99999999999"), None);
    }
}
