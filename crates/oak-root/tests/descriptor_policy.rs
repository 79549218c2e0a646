//! The descriptor policy at the API: `privileged` and reserved host ports only from Admin (or the
//! roles the operator trusts), on every path that stores a microservice; the one port grammar.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    root: Root,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn open(dir: &std::path::Path, privileged_roles: &[&str]) -> anyhow::Result<Root> {
    Root::open(RootConfig {
        api_addr: "127.0.0.1:8000".parse().unwrap(),
        channel_addr: "127.0.0.1:9000".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet: Default::default(),
        privileged_roles: privileged_roles.iter().map(|r| r.to_string()).collect(),
    })
    .await
}

impl Api {
    async fn new(privileged_roles: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = open(dir.path(), privileged_roles).await.unwrap();
        let mut api = Api { root, admin: String::new(), _dir: dir };
        api.admin = api.login("Admin", "Admin").await;
        api
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.root.service().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let body = json!({"username": user, "password": password}).to_string();
        let req = Request::post("/api/auth/login").header("content-type", "application/json").body(Body::from(body));
        let resp = self.root.service().oneshot(req.unwrap()).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["token"].as_str().unwrap_or_else(|| panic!("login {user}: {v}")).to_string()
    }

    async fn user(&self, name: &str, roles: &[&str]) -> String {
        let body = json!({"name": name, "password": "password-1", "email": "x@y", "roles": roles});
        let (s, v) = self.call(Method::POST, "/api/auth/register", &self.admin, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.login(name, "password-1").await
    }

    async fn app_count(&self) -> usize {
        let (s, v) = self.call(Method::GET, "/api/applications", &self.admin, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().unwrap().len()
    }
}

fn ms(name: &str, patch: Value) -> Value {
    let mut v = json!({
        "microservice_name": name, "microservice_namespace": "test",
        "virtualization": "container", "code": "docker.io/library/nginx:latest"
    });
    v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
    v
}

fn sla(app: &str, services: Vec<Value>) -> Value {
    json!({"sla_version": "v2.0", "customerID": "u", "applications": [
        {"application_name": app, "application_namespace": "test", "microservices": services}
    ]})
}

/// Asserts the status and the field the error names.
fn refused((s, v): (StatusCode, Value), status: StatusCode, field: &str) {
    assert_eq!(s, status, "{v}");
    assert_eq!(v["field"], field, "{v}");
    assert_eq!(v["code"], status.as_u16(), "{v}");
}

#[tokio::test]
async fn privileged_is_for_admin_on_every_path() {
    let api = Api::new(&[]).await;
    let alice = api.user("alice", &["Application_Provider"]).await;
    let privileged = || ms("web", json!({"privileged": true}));

    // create applications: second application's service
    let mut two = sla("one", vec![ms("a", json!({}))]);
    two["applications"].as_array_mut().unwrap().push(json!({
        "application_name": "two", "application_namespace": "test", "microservices": [privileged()]
    }));
    let r = api.call(Method::POST, "/api/application", &alice, Some(two)).await;
    refused(r, StatusCode::FORBIDDEN, "applications[1].microservices[0].privileged");
    assert_eq!(api.app_count().await, 0, "nothing stored");

    // an application alice may have, then add services to it
    let (s, v) = api.call(Method::POST, "/api/application", &alice, Some(sla("shop", vec![ms("a", json!({}))]))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app_id = v[0]["_id"].as_str().unwrap().to_string();
    let service_id = v[0]["microservices"][0].as_str().unwrap().to_string();
    let add = json!({"sla_version": "v2.0", "customerID": "u", "applications": [
        {"applicationID": app_id, "application_name": "", "application_namespace": "", "microservices": [ms("b", json!({})), privileged()]}
    ]});
    let r = api.call(Method::POST, "/api/service", &alice, Some(add)).await;
    refused(r, StatusCode::FORBIDDEN, "applications[0].microservices[1].privileged");

    // update: a bare microservice, and a whole SLA
    let path = format!("/api/service/{service_id}");
    let r = api.call(Method::PUT, &path, &alice, Some(ms("a", json!({"privileged": true})))).await;
    refused(r, StatusCode::FORBIDDEN, "privileged");
    let whole = sla("shop", vec![ms("a", json!({"privileged": true}))]);
    let r = api.call(Method::PUT, &path, &alice, Some(whole)).await;
    refused(r, StatusCode::FORBIDDEN, "applications[0].microservices[0].privileged");
    let (s, v) = api.call(Method::GET, &path, &alice, None).await;
    assert_eq!((s, v["privileged"].clone()), (StatusCode::OK, json!(false)), "{v}");
    let (_, v) = api.call(Method::GET, &format!("/api/services/{app_id}"), &alice, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "no service added: {v}");

    // privileged: false is anyone's
    let r = api.call(Method::PUT, &path, &alice, Some(ms("a", json!({"privileged": false})))).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // Admin may
    let r = api.call(Method::POST, "/api/application", &api.admin, Some(sla("adm", vec![privileged()]))).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
}

#[tokio::test]
async fn reserved_host_ports_are_for_admin() {
    let api = Api::new(&[]).await;
    let alice = api.user("alice", &["Application_Provider"]).await;
    let with_port = |port: &str| sla("app", vec![ms("ok", json!({"port": "8080"})), ms("web", json!({"port": port}))]);
    for port in [
        "80",
        "22:8022",
        "1023/udp",
        "8080:80;443",
        "10000",
        "10003",
        "10099",
        "10100",
        "50052",
        "50103",
        "8000",
        "9000",
    ] {
        let r = api.call(Method::POST, "/api/application", &alice, Some(with_port(port))).await;
        refused(r, StatusCode::UNPROCESSABLE_ENTITY, "applications[0].microservices[1].port");
    }
    assert_eq!(api.app_count().await, 0);
    // the container side may be anything, and 1024 is the first free host port
    let r = api.call(Method::POST, "/api/application", &alice, Some(with_port("1024:80;8081:22"))).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let service_id = r.1[0]["microservices"][1].as_str().unwrap().to_string();
    let r = api
        .call(Method::PUT, &format!("/api/service/{service_id}"), &alice, Some(ms("web", json!({"port": "22"}))))
        .await;
    refused(r, StatusCode::UNPROCESSABLE_ENTITY, "port");

    let admins = sla("adm", vec![ms("web", json!({"port": "80;10000"}))]);
    let r = api.call(Method::POST, "/api/application", &api.admin, Some(admins)).await;
    assert_eq!(r.0, StatusCode::OK, "Admin may: {}", r.1);
}

/// What the worker's parser refused on every deploy is refused when stored, for everyone.
#[tokio::test]
async fn ports_the_worker_would_refuse_are_refused_for_everyone() {
    let api = Api::new(&[]).await;
    for port in ["0", "80;80", "50103/udp"] {
        let r = api
            .call(
                Method::POST,
                "/api/application",
                &api.admin,
                Some(sla("app", vec![ms("web", json!({"port": port}))])),
            )
            .await;
        refused(r, StatusCode::UNPROCESSABLE_ENTITY, "applications[0].microservices[0].port");
    }
}

#[tokio::test]
async fn the_operator_may_trust_more_roles() {
    let api = Api::new(&["Organization_Admin"]).await;
    let olga = api.user("olga", &["Organization_Admin"]).await;
    let alice = api.user("alice", &["Application_Provider"]).await;
    let body = || sla("app", vec![ms("web", json!({"privileged": true, "port": "80"}))]);
    let r = api.call(Method::POST, "/api/application", &olga, Some(body())).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let r = api.call(Method::POST, "/api/application", &alice, Some(body())).await;
    refused(r, StatusCode::FORBIDDEN, "applications[0].microservices[0].privileged");

    let dir = tempfile::tempdir().unwrap();
    let err = open(dir.path(), &["Superuser"]).await.err().expect("an unknown role is a configuration error");
    assert!(err.to_string().contains("Superuser"), "{err}");
}
