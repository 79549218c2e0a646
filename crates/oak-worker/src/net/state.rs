//! The overlay's persisted state: which instance has which wiring (`<data>/overlay.json`), so a
//! restarted worker re-attaches its running instances and removes what nobody owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::names::Subnet;
use super::plumbing::Wiring;

const FILE: &str = "overlay.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub job_name: String,
    pub instance: u32,
    /// The instance's service IP: the source address of what it sends through the overlay.
    pub instance_ip: Option<Ipv4Addr>,
    pub wiring: Wiring,
}

pub type Attachments = BTreeMap<(String, u32), Attachment>;

/// The lowest instance address of `subnet` no attachment uses.
/// The lowest address of `subnet` no attachment holds and none of `releasing` (wirings being
/// removed, whose namespace and veth names the address still gives).
pub fn free_nsip(attachments: &Attachments, releasing: &BTreeSet<Ipv4Addr>, subnet: Subnet) -> Option<Ipv4Addr> {
    Subnet::HOSTS
        .map(|offset| subnet.host(offset))
        .find(|ip| !releasing.contains(ip) && !attachments.values().any(|a| a.wiring.nsip == *ip))
}

pub async fn load(data_dir: &Path) -> Attachments {
    let path = data_dir.join(FILE);
    let Ok(text) = tokio::fs::read(&path).await else { return Attachments::default() };
    match serde_json::from_slice::<Vec<Attachment>>(&text) {
        Ok(list) => list.into_iter().map(|a| ((a.job_name.clone(), a.instance), a)).collect(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable overlay state file");
            Attachments::default()
        }
    }
}

pub async fn save(data_dir: &Path, attachments: &Attachments) -> std::io::Result<()> {
    let list: Vec<&Attachment> = attachments.values().collect();
    let body = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
    // Renamed into place but not fsynced: after a crash the prefix scan at start still finds
    // every namespace and veth of this node, so a stale file costs nothing, and a deploy does
    // not wait for the disk.
    let path = data_dir.join(FILE);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    tokio::fs::write(&tmp, body).await?;
    tokio::fs::rename(&tmp, &path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(job: &str, n: u32, nsip: Ipv4Addr) -> Attachment {
        Attachment {
            job_name: job.into(),
            instance: n,
            instance_ip: None,
            wiring: Wiring { netns: format!("ns{n}"), veth: format!("v{n}"), nsip, ports: vec![] },
        }
    }

    #[test]
    fn lowest_free_address_is_reused_and_exhausts() {
        let subnet = Subnet::parse("10.18.0.64/26").unwrap();
        let mut all = Attachments::default();
        let none = BTreeSet::new();
        assert_eq!(free_nsip(&all, &none, subnet), Some(Ipv4Addr::new(10, 18, 0, 66)));
        for n in 0..61 {
            let ip = free_nsip(&all, &none, subnet).unwrap();
            all.insert(("j".into(), n), attachment("j", n, ip));
        }
        assert_eq!(free_nsip(&all, &none, subnet), None, "61 addresses per worker");
        all.remove(&("j".into(), 5));
        assert_eq!(free_nsip(&all, &none, subnet), Some(Ipv4Addr::new(10, 18, 0, 71)));
        let releasing = BTreeSet::from([Ipv4Addr::new(10, 18, 0, 71)]);
        assert_eq!(free_nsip(&all, &releasing, subnet), None, "an address being released stays taken");
    }

    #[tokio::test]
    async fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Attachments::default();
        all.insert(("a.b.c.d".into(), 2), attachment("a.b.c.d", 2, Ipv4Addr::new(10, 18, 0, 66)));
        save(dir.path(), &all).await.unwrap();
        assert_eq!(load(dir.path()).await, all);
        tokio::fs::write(dir.path().join(FILE), b"{garbage").await.unwrap();
        assert!(load(dir.path()).await.is_empty());
    }
}
