//! The SQLite store against a real database file: uniqueness, atomicity, cascades, reopen.

use oak_api::model::{Application, Instance, Member, Organization, Service};
use oak_api::sla::Microservice;
use oak_store::{RootStore, SqliteStore, StoreError, SubnetRecord, UserRecord};
use serde_json::Map;

fn app(id: &str, owner: &str, name: &str) -> Application {
    Application {
        id: id.into(),
        application_id: id.into(),
        application_name: name.into(),
        application_namespace: "test".into(),
        application_desc: String::new(),
        microservices: vec![],
        user_id: owner.into(),
        extra: Map::new(),
    }
}

fn service(id: &str, app: &Application, name: &str) -> Service {
    let spec: Microservice = serde_json::from_value(serde_json::json!({
        "microservice_name": name, "microservice_namespace": "test",
        "virtualization": "docker", "code": "docker.io/library/nginx:latest"
    }))
    .unwrap();
    Service {
        id: id.into(),
        job_name: format!("{}.{}.{}.test", app.application_name, app.application_namespace, name),
        application_id: app.id.clone(),
        app_name: app.application_name.clone(),
        app_ns: app.application_namespace.clone(),
        service_name: name.into(),
        service_ns: "test".into(),
        image: spec.code.clone(),
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
}

#[test]
fn state_survives_reopen_and_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .insert_user(&UserRecord {
                id: "u1".into(),
                name: "alice".into(),
                email: "a@x".into(),
                created_at: "now".into(),
                password_hash: "h".into(),
                token_generation: 0,
            })
            .unwrap();
        store
            .insert_organization(&Organization {
                id: "o1".into(),
                name: "root".into(),
                member: vec![Member { user_id: "u1".into(), roles: vec!["Admin".into()] }],
            })
            .unwrap();
        let mut a = app("a1", "alice", "shop");
        a.microservices = vec!["s1".into()];
        store.create_application(&a, &[service("s1", &a, "web")]).unwrap();
        store.put_instance("s1", &Instance::new(0, "REQUESTED", "", 1.0)).unwrap();

        // same name+namespace for the same owner: conflict, nothing written
        let dup = app("a2", "alice", "shop");
        assert!(matches!(store.create_application(&dup, &[]), Err(StoreError::Conflict(_))));
        // a second app whose service clashes on job_name: nothing of it is written
        let other = app("a3", "bob", "shop");
        let err = store.create_application(&other, &[service("s2", &other, "web")]);
        assert!(matches!(err, Err(StoreError::Conflict(m)) if m.contains("shop.test.web.test")));
        assert!(store.application("a3").unwrap().is_none());
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.user_by_name("alice").unwrap().unwrap().id, "u1");
    assert_eq!(store.organization_by_name("root").unwrap().unwrap().member.len(), 1);
    let s = store.service("s1").unwrap().unwrap();
    assert_eq!(s.instance_list.len(), 1);
    assert_eq!(store.list_applications(Some("alice")).unwrap().len(), 1);
    assert!(store.list_applications(Some("bob")).unwrap().is_empty());

    store.delete_service("s1").unwrap();
    assert!(store.application("a1").unwrap().unwrap().microservices.is_empty());
    assert!(matches!(store.delete_service("s1"), Err(StoreError::NotFound(_))));

    store.delete_user("alice").unwrap();
    assert!(store.organization_by_name("root").unwrap().unwrap().member.is_empty());
}

#[test]
fn deleting_an_application_removes_services_and_instances() {
    let store = SqliteStore::in_memory().unwrap();
    let a = app("a1", "alice", "shop");
    store.create_application(&a, &[]).unwrap();
    store.add_services("a1", &[service("s1", &a, "web"), service("s2", &a, "db")]).unwrap();
    assert_eq!(store.application("a1").unwrap().unwrap().microservices, vec!["s1", "s2"]);
    store.put_instance("s1", &Instance::new(0, "REQUESTED", "", 1.0)).unwrap();
    store.delete_application("a1").unwrap();
    assert!(store.service("s1").unwrap().is_none());
    assert!(store.list_services(None).unwrap().is_empty());
    // a new service may now reuse the job name
    let b = app("b1", "alice", "shop");
    store.create_application(&b, &[service("s3", &b, "web")]).unwrap();
}

#[test]
fn services_by_job_name_and_subnets_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.db");
    let rec = |c: &str, n: &str, s: &str| SubnetRecord { cluster_id: c.into(), node_id: n.into(), subnet: s.into() };
    {
        let store = SqliteStore::open(&path).unwrap();
        let a = app("a1", "alice", "shop");
        store.create_application(&a, &[service("s1", &a, "web")]).unwrap();
        store.put_instance("s1", &Instance::new(0, "REQUESTED", "", 1.0)).unwrap();
        let s = store.service_by_job_name("shop.test.web.test").unwrap().unwrap();
        assert_eq!((s.id.as_str(), s.instance_list.len()), ("s1", 1));
        assert!(store.service_by_job_name("shop.test.nope.test").unwrap().is_none());

        store.put_subnet(&rec("c1", "n1", "10.18.0.0/26")).unwrap();
        store.put_subnet(&rec("c1", "n2", "10.18.0.64/26")).unwrap();
        store.put_subnet(&rec("c2", "n1", "10.18.0.128/26")).unwrap();
        let clash = store.put_subnet(&rec("c2", "n9", "10.18.0.0/26"));
        assert!(matches!(clash, Err(StoreError::Conflict(m)) if m.contains("10.18.0.0/26")));
        store.put_subnet(&rec("c1", "n1", "10.18.0.0/26")).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.subnets().unwrap().len(), 3, "kept across reopen");
    store.delete_subnets("c1", &["n1".into(), "unknown".into()]).unwrap();
    assert_eq!(store.subnets().unwrap(), vec![rec("c1", "n2", "10.18.0.64/26"), rec("c2", "n1", "10.18.0.128/26")]);
}

fn user(id: &str, name: &str) -> UserRecord {
    UserRecord {
        id: id.into(),
        name: name.into(),
        email: String::new(),
        created_at: String::new(),
        password_hash: "h1".into(),
        token_generation: 0,
    }
}

fn generation(store: &SqliteStore, id: &str) -> u64 {
    store.user_by_id(id).unwrap().unwrap().token_generation
}

#[test]
fn token_generation_moves_on_password_change_and_role_loss_only() {
    let store = SqliteStore::in_memory().unwrap();
    store.insert_user(&user("u1", "alice")).unwrap();
    store.insert_user(&user("u2", "bob")).unwrap();
    let member =
        |id: &str, roles: &[&str]| Member { user_id: id.into(), roles: roles.iter().map(|r| r.to_string()).collect() };
    let mut org = Organization {
        id: "o1".into(),
        name: "lab".into(),
        member: vec![member("u1", &["Application_Provider"]), member("u2", &["Application_Provider"])],
    };
    store.insert_organization(&org).unwrap();
    assert_eq!((generation(&store, "u1"), generation(&store, "u2")), (0, 0));

    // e-mail only: tokens stay; a new password hash revokes them
    let mut alice = store.user_by_id("u1").unwrap().unwrap();
    alice.email = "a@x".into();
    store.update_user(&alice).unwrap();
    assert_eq!(generation(&store, "u1"), 0);
    alice.password_hash = "h2".into();
    store.update_user(&alice).unwrap();
    assert_eq!(generation(&store, "u1"), 1);
    assert_eq!(store.user_by_name("alice").unwrap().unwrap().token_generation, 1);

    // gaining a role keeps tokens, losing one (or the membership) revokes them
    org.member =
        vec![member("u1", &["Application_Provider", "Organization_Admin"]), member("u2", &["Application_Provider"])];
    store.update_organization(&org).unwrap();
    assert_eq!((generation(&store, "u1"), generation(&store, "u2")), (1, 0));
    assert_eq!(store.organization_by_id("o1").unwrap().unwrap().member.len(), 2);
    org.member = vec![member("u1", &["Organization_Admin"])];
    store.update_organization(&org).unwrap();
    assert_eq!((generation(&store, "u1"), generation(&store, "u2")), (2, 1));
    // Every request reads these two (kept in memory): the next one sees the change.
    assert_eq!(store.organization_by_id("o1").unwrap().unwrap().member, org.member);
    store.delete_organization("o1").unwrap();
    assert!(store.organization_by_id("o1").unwrap().is_none());
    assert_eq!((generation(&store, "u1"), generation(&store, "u2")), (3, 1));
    assert!(store.list_users().unwrap().iter().all(|u| u.token_generation == generation(&store, &u.id)));
    store.delete_user("bob").unwrap();
    assert!(store.user_by_id("u2").unwrap().is_none());
}

#[test]
fn services_by_rr_ip_and_an_owners_usage_come_from_queries() {
    let store = SqliteStore::in_memory().unwrap();
    let shop = app("a1", "alice", "shop");
    let mut web = service("s1", &shop, "web");
    web.rr_ip = Some("10.30.0.5".into());
    let mut api = service("s2", &shop, "api");
    api.rr_ip = Some("10.30.0.6".into());
    api.closest_ip = Some("10.30.0.7".into());
    store.create_application(&shop, &[web, api]).unwrap();
    let other = app("b1", "bob", "blog");
    store.create_application(&other, &[service("s3", &other, "web")]).unwrap();
    for n in 0..3 {
        store.put_instance("s1", &Instance::new(n, "RUNNING", "", 0.0)).unwrap();
    }
    store.put_instance("s3", &Instance::new(0, "RUNNING", "", 0.0)).unwrap();

    assert_eq!(store.services_with_rr_ip("10.30.0.5").unwrap(), [("s1".to_string(), "shop.test.web.test".to_string())]);
    assert!(store.services_with_rr_ip("10.30.0.7").unwrap().is_empty(), "a closest IP is not a round-robin IP");
    let alice = store.owner_usage("alice").unwrap();
    assert_eq!((alice.services, alice.instances, alice.closest_ips), (2, 3, 1));
    let bob = store.owner_usage("bob").unwrap();
    assert_eq!((bob.services, bob.instances, bob.closest_ips), (1, 1, 0));
    assert_eq!(store.owner_usage("carol").unwrap(), Default::default());
    store.delete_service("s1").unwrap();
    assert!(store.services_with_rr_ip("10.30.0.5").unwrap().is_empty());
    assert_eq!(store.owner_usage("alice").unwrap().instances, 0);
}
