//! Host ports as a placement resource, through the whole control plane in one process (root, a
//! cluster, fake-runtime workers): two instances mapping one host port never share a worker.

mod common;

use common::{
    admin_client, embedded, eventually, one_cluster_with_one_worker, start_cluster, start_root, start_worker,
};
use oak_api::model::Instance;
use serde_json::Value;

const NGINX: &str = include_str!("../../../examples/sla/nginx.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_mapping_one_host_port_never_share_a_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root_stop) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let cluster = start_cluster("c1", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let w1 = start_worker("w1", &cluster, &tmp.path().join("w1"), None);
    let client = admin_client(&url).await;
    one_cluster_with_one_worker(&client).await;

    // nginx maps host port 80/tcp.
    let sla: Value = serde_json::from_str(NGINX).unwrap();
    assert_eq!(sla["applications"][0]["microservices"][0]["port"], "80:80/tcp");
    let apps = client.create_application(&sla).await.unwrap();
    let nginx = client.list_app_services(&apps[0].id).await.unwrap().remove(0).id;
    let instances = async || -> Vec<Instance> { client.get_service(&nginx).await.unwrap().instance_list };
    client.request_instance(&nginx).await.unwrap();
    eventually("the first instance RUNNING", async || {
        instances().await.first().is_some_and(|i| i.status == "RUNNING").then_some(())
    })
    .await;

    // The one worker has the port taken: the second waits, saying why.
    client.request_instance(&nginx).await.unwrap();
    let waiting = eventually("the second instance refused by the cluster", async || {
        instances().await.into_iter().find(|i| i.instance_number == 1 && i.status == "NO_WORKER_CAPACITY")
    })
    .await;
    let detail = waiting.status_detail.clone();
    assert!(detail.contains("host port 80/tcp is taken on every qualified worker"), "{detail}");
    assert!(waiting.worker_id.is_none(), "{waiting:?}");

    // A second worker takes it.
    let w2 = start_worker("w2", &cluster, &tmp.path().join("w2"), None);
    let placed = eventually("both instances RUNNING", async || {
        let list = instances().await;
        (list.len() == 2 && list.iter().all(|i| i.status == "RUNNING")).then_some(list)
    })
    .await;
    assert_ne!(placed[0].worker_id, placed[1].worker_id, "{placed:?}");

    for w in [w1, w2] {
        let _ = w.stop.send(true);
        let _ = w.task.await;
    }
    let _ = cluster.stop.send(true);
}
