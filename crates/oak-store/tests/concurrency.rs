//! The store under concurrent use: reads never wait for the writer, concurrent writes are all
//! committed (group commit) with their own outcome, and survive a reopen.

use std::sync::Arc;

use oak_api::model::{Application, Instance, Service};
use oak_api::sla::Microservice;
use oak_store::{RootStore, SqliteStore, StoreError};

fn shop(store: &dyn RootStore) {
    let app: Application = serde_json::from_value(serde_json::json!({
        "_id": "a", "applicationID": "a", "application_name": "shop", "application_namespace": "test", "userId": "u"
    }))
    .unwrap();
    let services: Vec<Service> = [("s", "web"), ("t", "api")]
        .into_iter()
        .map(|(id, name)| {
            let spec: Microservice = serde_json::from_value(serde_json::json!({
                "microservice_name": name, "microservice_namespace": "test", "virtualization": "docker", "code": "img"
            }))
            .unwrap();
            Service {
                id: id.into(),
                job_name: format!("shop.test.{name}.test"),
                application_id: "a".into(),
                app_name: "shop".into(),
                app_ns: "test".into(),
                service_name: name.into(),
                service_ns: "test".into(),
                image: "img".into(),
                rr_ip: None,
                rr_ip_v6: None,
                closest_ip: None,
                next_instance_progressive_number: 0,
                status: None,
                status_detail: None,
                generation: 0,
                instance_list: vec![],
                spec,
            }
        })
        .collect();
    store.create_application(&app, &services).unwrap();
}

#[test]
fn a_read_during_a_write_sees_the_last_commit_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("root.db")).unwrap());
    shop(&*store);
    store.put_instance("s", &Instance::new(0, "REQUESTED", "", 0.0)).unwrap();
    let reader = store.clone();
    let mut seen_inside = None;
    store
        .update_instances(&[("s".into(), 0)], &mut |_, inst| {
            // The writer is held here: with one connection behind one lock this read would
            // deadlock; on a read connection it sees the state before this transaction.
            seen_inside = Some(reader.service("s").unwrap().unwrap().instance_list[0].status.clone());
            inst.status = "RUNNING".into();
            true
        })
        .unwrap();
    assert_eq!(seen_inside.as_deref(), Some("REQUESTED"));
    assert_eq!(store.service("s").unwrap().unwrap().instance_list[0].status, "RUNNING");
}

#[test]
fn concurrent_writes_all_commit_with_their_own_outcome_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.db");
    let (threads, per_thread) = (16, 40);
    {
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        shop(&*store);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let service = if t % 2 == 0 { "s" } else { "t" };
                    for _ in 0..per_thread {
                        let n = store.allocate_instance_number(service).unwrap();
                        store.put_instance(service, &Instance::new(n, "REQUESTED", "", 0.0)).unwrap();
                        // A change that fails in the same batches as the others: only it fails.
                        let missing = store.put_instance("nope", &Instance::new(n, "REQUESTED", "", 0.0));
                        assert!(matches!(missing, Err(StoreError::Db(_))), "{missing:?}");
                        // Reads run meanwhile and always see whole documents.
                        assert!(store.service(service).unwrap().is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let writes = (threads * per_thread * 3) as u64;
        assert!(store.group_commits() <= writes, "{} commits for {writes} writes", store.group_commits());
    }
    let store = SqliteStore::open(&path).unwrap();
    for service in ["s", "t"] {
        let s = store.service(service).unwrap().unwrap();
        let numbers: Vec<u32> = s.instance_list.iter().map(|i| i.instance_number).collect();
        let want: Vec<u32> = (0..(threads / 2 * per_thread) as u32).collect();
        assert_eq!(numbers, want, "every number once, none lost");
        assert_eq!(s.next_instance_progressive_number, want.len() as u32);
    }
}

#[test]
fn numbers_are_taken_in_runs_and_instances_stored_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("root.db")).unwrap();
    shop(&store);
    assert_eq!(store.allocate_instance_number("s").unwrap(), 0);
    assert_eq!(store.allocate_instance_numbers("s", 5).unwrap(), 1..6);
    assert_eq!(store.allocate_instance_number("s").unwrap(), 6);
    assert!(matches!(store.allocate_instance_numbers("nope", 2), Err(StoreError::NotFound(_))));
    let run: Vec<Instance> = (1..6).map(|n| Instance::new(n, "REQUESTED", "", 0.0)).collect();
    store.put_instances("s", &run).unwrap();
    let numbers: Vec<u32> =
        store.service("s").unwrap().unwrap().instance_list.iter().map(|i| i.instance_number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    // All or nothing: a run for a missing service stores none of it.
    assert!(store.put_instances("nope", &run).is_err());
    assert!(store.put_instances("t", &[Instance::new(0, "REQUESTED", "", 0.0)]).is_ok());
}

/// The callback form answers after the commit, on the writer thread, with what the waiting form
/// would return: stored instances are readable by then, a failed run stores nothing.
#[test]
fn instances_stored_without_waiting_are_answered_after_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("root.db")).unwrap();
    shop(&store);
    let run: Vec<Instance> = (0..3).map(|n| Instance::new(n, "REQUESTED", "", 0.0)).collect();
    let (done, answered) = std::sync::mpsc::channel();
    let (ok, failed) = (done.clone(), done);
    store.put_instances_then("s", &run, Box::new(move |r| ok.send(("s", r, std::thread::current().id())).unwrap()));
    store.put_instances_then(
        "nope",
        &run,
        Box::new(move |r| failed.send(("nope", r, std::thread::current().id())).unwrap()),
    );
    let mut answers: Vec<_> =
        (0..2).map(|_| answered.recv_timeout(std::time::Duration::from_secs(10)).unwrap()).collect();
    answers.sort_by_key(|a| a.0);
    assert!(matches!(answers[0], ("nope", Err(_), _)), "{:?}", answers[0]);
    assert!(matches!(answers[1], ("s", Ok(()), _)), "{:?}", answers[1]);
    assert_ne!(answers[1].2, std::thread::current().id(), "answered by the writer thread");
    let numbers: Vec<u32> =
        store.service("s").unwrap().unwrap().instance_list.iter().map(|i| i.instance_number).collect();
    assert_eq!(numbers, [0, 1, 2], "readable once answered");
}

/// Reports go into a group commit too: the edit runs on the writer thread, the answer says which
/// keys existed, and the edited documents are stored once answered.
#[test]
fn instance_updates_without_waiting_are_applied_and_answered_after_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("root.db")).unwrap();
    shop(&store);
    store
        .put_instances("s", &[Instance::new(0, "REQUESTED", "", 0.0), Instance::new(1, "REQUESTED", "", 0.0)])
        .unwrap();
    let keys = vec![("s".to_string(), 1), ("s".to_string(), 7), ("s".to_string(), 0)];
    let (done, answered) = std::sync::mpsc::channel();
    store.update_instances_then(
        keys,
        Box::new(|i, inst| {
            inst.status = "RUNNING".into();
            i == 0 // only the first key's edit is saved
        }),
        Box::new(move |found| done.send(found).unwrap()),
    );
    let found = answered.recv_timeout(std::time::Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(found, [true, false, true], "instance 7 does not exist");
    let s = store.service("s").unwrap().unwrap();
    let statuses: Vec<(u32, &str)> = s.instance_list.iter().map(|i| (i.instance_number, i.status.as_str())).collect();
    assert_eq!(statuses, [(0, "REQUESTED"), (1, "RUNNING")], "only the saved edit is stored");
}

#[test]
fn a_service_update_read_before_instances_were_added_never_hands_their_numbers_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        shop(&store);
        // A descriptor update read the service (counter 0) while a request added three instances.
        let stale = store.service("s").unwrap().unwrap();
        let taken = store.allocate_instance_numbers("s", 3).unwrap();
        let run: Vec<Instance> = taken.map(|n| Instance::new(n, "REQUESTED", "", 0.0)).collect();
        store.put_instances("s", &run).unwrap();
        store.update_service(&stale).unwrap();
        assert_eq!(store.service("s").unwrap().unwrap().next_instance_progressive_number, 3);
        assert_eq!(store.allocate_instance_number("s").unwrap(), 3, "in the same process");
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.allocate_instance_number("s").unwrap(), 3, "after a restart");
}

#[test]
fn numbers_come_from_memory_and_a_restart_continues_after_the_stored_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        shop(&store);
        let commits = store.group_commits();
        assert_eq!(store.allocate_instance_numbers("t", 4).unwrap(), 0..4);
        assert_eq!(store.group_commits(), commits, "taking numbers writes nothing");
        store.put_instances("t", &[Instance::new(2, "REQUESTED", "", 0.0)]).unwrap();
        // 4 and 5 are taken but their instances never stored.
        assert_eq!(store.allocate_instance_numbers("t", 2).unwrap(), 4..6);
        // A deleted service's counter goes with it.
        store.delete_service("t").unwrap();
        assert!(matches!(store.allocate_instance_number("t"), Err(StoreError::NotFound(_))));
    }
    let store = SqliteStore::open(&path).unwrap();
    let stored = store.allocate_instance_numbers("s", 2).unwrap();
    store.put_instances("s", &stored.map(|n| Instance::new(n, "REQUESTED", "", 0.0)).collect::<Vec<_>>()).unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.allocate_instance_number("s").unwrap(), 2);
}

#[test]
fn an_instance_requests_view_of_a_service_follows_every_change() {
    let store = SqliteStore::in_memory().unwrap();
    shop(&store);
    let (service, app) = (*store.service_spec_with_application("s").unwrap().unwrap()).clone();
    assert_eq!(app.as_ref().map(|a| a.user_id.as_str()), Some("u"));
    // Changes committed after the first read are what the next read sees.
    let mut renamed = service.clone();
    renamed.image = "img:2".into();
    store.update_service(&renamed).unwrap();
    let mut moved = app.unwrap();
    moved.user_id = "other".into();
    store.update_application(&moved).unwrap();
    let (service, app) = (*store.service_spec_with_application("s").unwrap().unwrap()).clone();
    assert_eq!(service.image, "img:2");
    assert_eq!(app.map(|a| a.user_id), Some("other".into()), "an ownership check on the old owner");
    store.delete_service("s").unwrap();
    assert!(store.service_spec_with_application("s").unwrap().is_none());
    assert!(store.service_spec_with_application("t").unwrap().is_some());
    store.delete_application("a").unwrap();
    assert!(store.service_spec_with_application("t").unwrap().is_none());
}
