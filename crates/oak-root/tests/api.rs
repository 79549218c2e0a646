//! The root's REST API driven in-process (no sockets) against a real SQLite data directory.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const CLIENTSRVR: &str = include_str!("../../../examples/sla/clientsrvr.json");
const NGINX_SERVICE: &str = include_str!("../../../examples/sla/nginx-service.json");

struct Api {
    root: Root,
    _dir: Option<tempfile::TempDir>,
}

impl Api {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = open(dir.path()).await;
        Api { root, _dir: Some(dir) }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(method, path, token, body.map(|b| b.to_string())).await
    }

    async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: Option<String>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.root.service().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let (s, v) = self
            .call(Method::POST, "/api/auth/login", None, Some(json!({"username": user, "password": password})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Registers `name` with `roles` (as Admin) and logs them in.
    async fn user(&self, admin: &str, name: &str, roles: &[&str]) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/auth/register",
                Some(admin),
                Some(json!({"name": name, "password": "password-1", "email": "x@y", "roles": roles})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(v.get("password_hash").is_none() && v.get("password").is_none());
        self.login(name, "password-1").await
    }
}

async fn open(dir: &std::path::Path) -> Root {
    Root::open(RootConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet: Default::default(),
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap()
}

fn sla(name: &str) -> Value {
    let mut v: Value = serde_json::from_str(CLIENTSRVR).unwrap();
    v["applications"][0]["application_name"] = json!(name);
    // round-robin IPs must be unique across the system
    v["applications"][0]["microservices"][1]["addresses"]["rr_ip"] = Value::Null;
    v["applications"][0]["microservices"][1].as_object_mut().unwrap().remove("addresses");
    // host ports below 1024 are for Admin only, and non-Admins use this too
    v["applications"][0]["microservices"][1]["port"] = json!("8080:80/tcp");
    v
}

#[tokio::test]
async fn login_and_token_errors() {
    let api = Api::new().await;
    let (s, v) =
        api.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "nope"}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["message"], "invalid username or password");
    assert_eq!(v["code"], 401);

    let (s, v) = api.call(Method::GET, "/api/applications", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["message"].as_str().unwrap().contains("missing authentication token"));
    let (s, v) = api.call(Method::GET, "/api/applications", Some("garbage"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["message"].as_str().unwrap().contains("malformed"));

    let (s, v) =
        api.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"}))).await;
    assert_eq!(s, StatusCode::OK);
    let refresh = v["refresh_token"].as_str().unwrap();
    // a refresh token does not authorize requests, but refreshes
    let (s, _) = api.call(Method::GET, "/api/applications", Some(refresh), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api.call(Method::POST, "/api/auth/refresh", Some(refresh), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call(Method::GET, "/api/applications", v["token"].as_str(), None).await;
    assert_eq!(s, StatusCode::OK);

    // unknown organization, malformed body, empty body
    let (s, _) = api
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": "Admin", "password": "Admin", "organization_name": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = api.raw(Method::POST, "/api/auth/login", None, Some("{not json".into())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("not valid JSON"));
    let (s, _) = api.raw(Method::POST, "/api/auth/login", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin"}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn login_is_rate_limited() {
    let api = Api::new().await;
    for _ in 0..5 {
        let (s, _) =
            api.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "x"}))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // even the right password is refused while blocked
    let (s, v) =
        api.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
}

#[tokio::test]
async fn application_lifecycle() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    let t = Some(admin.as_str());

    // create from the seed's descriptor, trailing slash as the original's clients send it
    let (s, v) = api.call(Method::POST, "/api/application/", t, Some(serde_json::from_str(CLIENTSRVR).unwrap())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let apps = v.as_array().unwrap();
    assert_eq!(apps.len(), 1);
    let app_id = apps[0]["_id"].as_str().unwrap().to_string();
    assert_eq!(apps[0]["applicationID"], app_id.as_str());
    assert_eq!(apps[0]["userId"], "Admin");
    assert_eq!(apps[0]["microservices"].as_array().unwrap().len(), 2);

    // duplicate name+namespace for the same user
    let (s, v) = api.call(Method::POST, "/api/application", t, Some(serde_json::from_str(CLIENTSRVR).unwrap())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("clientsrvr"));

    // invalid descriptor: every error, each naming its field
    let mut bad = sla("other");
    bad["applications"][0]["microservices"][0]["port"] = json!("80:x");
    bad["applications"][0]["microservices"][1]["memory"] = json!(-1);
    let (s, v) = api.call(Method::POST, "/api/application", t, Some(bad)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "applications[0].microservices[0].port");
    let fields: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["applications[0].microservices[0].port", "applications[0].microservices[1].memory"]);

    // same rr_ip as an existing service
    let mut clash = sla("third");
    clash["applications"][0]["microservices"][0]["addresses"] = json!({"rr_ip": "10.30.55.55"});
    let (s, v) = api.call(Method::POST, "/api/application", t, Some(clash)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("10.30.55.55"));

    // show and list
    let (s, v) = api.call(Method::GET, &format!("/api/application/{app_id}"), t, None).await;
    assert_eq!((s, v["application_name"].as_str()), (StatusCode::OK, Some("clientsrvr")));
    let (s, v) = api.call(Method::GET, &format!("/api/services/{app_id}/"), t, None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|s| s["job_name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["clientsrvr.test.curl.test", "clientsrvr.test.nginx.test"]);
    let nginx = v[1].clone();
    let svc_id = nginx["_id"].as_str().unwrap().to_string();
    assert_eq!(nginx["microserviceID"], svc_id.as_str());
    assert_eq!(nginx["virtualization"], "docker");
    assert_eq!(nginx["image"], "docker.io/library/nginx:latest");
    assert_eq!(nginx["RR_ip"], "10.30.55.55");
    assert_eq!(v[0]["RR_ip"], "10.30.0.0", "a service without rr_ip gets one from the pool");
    assert_eq!(nginx["state"], "", "unknown fields are kept");
    assert!(nginx["status"].is_null(), "no status before the first instance is requested");

    // scale: no cluster exists, so the original's negative status is stored and shown
    let (s, v) = api.call(Method::POST, &format!("/api/service/{svc_id}/instance"), t, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["instance_number"].as_u64(), v["status"].as_str()), (Some(0), Some("TargetClusterNotActive")));
    let (_, v) = api.call(Method::POST, &format!("/api/service/{svc_id}/instance"), t, None).await;
    assert_eq!(v["instance_number"], 1);
    let (_, v) = api.call(Method::GET, &format!("/api/service/{svc_id}"), t, None).await;
    assert_eq!(v["status"], "TargetClusterNotActive");
    assert_eq!(v["instance_list"].as_array().unwrap().len(), 2);
    let inst = &v["instance_list"][0];
    for key in ["cluster_id", "worker_id", "status", "status_detail", "host_ip", "host_port", "namespace_ip"] {
        assert!(inst.get(key).is_some(), "instance shows {key}");
    }
    assert_eq!(inst["instance_ip"], "10.30.0.1", "each instance has its own overlay address");
    assert_eq!(v["next_instance_progressive_number"], 2);

    // `?count=N` asks for N at once; bad counts are 400s naming `count`, and store nothing
    let (s, v) = api.call(Method::POST, &format!("/api/service/{svc_id}/instance?count=3"), t, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["instance_number"], 2, "the first of the run: {v}");
    let listed: Vec<u64> =
        v["instances"].as_array().unwrap().iter().map(|i| i["instance_number"].as_u64().unwrap()).collect();
    assert_eq!(listed, [2, 3, 4]);
    assert!(v["instances"].as_array().unwrap().iter().all(|i| i["status"] == "TargetClusterNotActive"), "{v}");
    for bad in ["0", "101", "x", "-1", "2.5", "", "1&count=2"] {
        let (s, v) = api.call(Method::POST, &format!("/api/service/{svc_id}/instance?count={bad}"), t, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "count={bad}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("count")), "count={bad}: a JSON error naming it: {v}");
    }
    let (_, v) = api.call(Method::GET, &format!("/api/service/{svc_id}"), t, None).await;
    let ips: std::collections::BTreeSet<&str> =
        v["instance_list"].as_array().unwrap().iter().map(|i| i["instance_ip"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 5, "five instances, each with its own address: {v}");
    assert_eq!(v["next_instance_progressive_number"], 5);
    for n in 2..5 {
        let (s, _) = api.call(Method::DELETE, &format!("/api/service/{svc_id}/instance/{n}"), t, None).await;
        assert_eq!(s, StatusCode::OK);
    }

    // undeploy one instance; an unknown one and a non-number are clear errors
    let (s, _) = api.call(Method::DELETE, &format!("/api/service/{svc_id}/instance/0"), t, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call(Method::DELETE, &format!("/api/service/{svc_id}/instance/0"), t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.call(Method::DELETE, &format!("/api/service/{svc_id}/instance/x"), t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // renaming is refused while instances exist, allowed once they are gone
    let rename = json!({"application_name": "shop", "application_namespace": "prod", "application_desc": "d"});
    let (s, _) = api.call(Method::PUT, &format!("/api/application/{app_id}"), t, Some(rename.clone())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    api.call(Method::DELETE, &format!("/api/service/{svc_id}/instance/1"), t, None).await;
    let (s, v) = api.call(Method::PUT, &format!("/api/application/{app_id}"), t, Some(rename)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = api.call(Method::GET, &format!("/api/service/{svc_id}"), t, None).await;
    assert_eq!(v["job_name"], "shop.prod.nginx.test");

    // update the service (the original answers 501)
    let mut ms: Value =
        serde_json::from_str::<Value>(CLIENTSRVR).unwrap()["applications"][0]["microservices"][1].clone();
    ms["code"] = json!("docker.io/library/nginx:1.27");
    ms["memory"] = json!(256);
    let (s, v) = api.call(Method::PUT, &format!("/api/service/{svc_id}"), t, Some(ms)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["image"].as_str(), v["memory"].as_u64(), v["generation"].as_u64()),
        (Some("docker.io/library/nginx:1.27"), Some(256), Some(2))
    );
    let (s, v) =
        api.call(Method::PUT, &format!("/api/service/{svc_id}"), t, Some(json!({"microservice_name": "x y"}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // add a service with the seed's service descriptor
    let add = NGINX_SERVICE.replace("REPLACE-ME", &app_id).replace("\"nginx\"", "\"web\"");
    let (s, v) = api.raw(Method::POST, "/api/service/", t, Some(add.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deployed_services"][0]["service_name"], "web");
    let (s, _) =
        api.raw(Method::POST, "/api/service/", t, Some(add.replace(&app_id, "0123456789abcdef01234567"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // delete the service, then the application with what is left
    let (s, _) = api.call(Method::DELETE, &format!("/api/service/{svc_id}"), t, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call(Method::GET, &format!("/api/service/{svc_id}"), t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.call(Method::DELETE, &format!("/api/application/{app_id}"), t, None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = api.call(Method::GET, "/api/services", t, None).await;
    assert_eq!(v, json!([]));
    let (_, v) = api.call(Method::GET, "/api/applications/", t, None).await;
    assert_eq!(v, json!([]));
}

#[tokio::test]
async fn roles_and_ownership() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    let alice = api.user(&admin, "alice", &["Application_Provider"]).await;
    let bob = api.user(&admin, "bob", &["Application_Provider"]).await;
    let ivan = api.user(&admin, "ivan", &["Infrastructure_Provider"]).await;

    let (s, v) = api.call(Method::POST, "/api/application", Some(&alice), Some(sla("alices"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app_id = v[0]["_id"].as_str().unwrap().to_string();
    // bob cannot see or change it, and it is not in his lists; the Admin can
    for (m, path) in
        [(Method::GET, format!("/api/application/{app_id}")), (Method::DELETE, format!("/api/application/{app_id}"))]
    {
        let (s, _) = api.call(m, &path, Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (_, v) = api.call(Method::GET, "/api/applications", Some(&bob), None).await;
    assert_eq!(v, json!([]));
    let (_, v) = api.call(Method::GET, "/api/applications", Some(&admin), None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, _) = api.call(Method::GET, &format!("/api/application/{app_id}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    // the same names are free for another user
    let (s, v) = api.call(Method::POST, "/api/application", Some(&bob), Some(sla("alices"))).await;
    assert_eq!(s, StatusCode::CONFLICT, "job names are unique system-wide: {v}");

    // wrong role
    let (s, v) = api.call(Method::POST, "/api/application", Some(&ivan), Some(sla("ivans"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = api.call(Method::GET, "/api/users", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.call(Method::GET, "/api/organization", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = api.call(Method::GET, "/api/user/alice", Some(&alice), None).await;
    assert_eq!((s, v["roles"].clone()), (StatusCode::OK, json!(["Application_Provider"])));
    let (s, _) = api.call(Method::GET, "/api/user/bob", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // users listed without hashes
    let (s, v) = api.call(Method::GET, "/api/users/", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 4);
    assert!(!v.to_string().contains("argon2"));

    // password change: own account only, old password checked
    let (s, _) = api
        .call(
            Method::POST,
            "/api/user/alice",
            Some(&alice),
            Some(json!({"oldPassword": "wrong", "newPassword": "password-2"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .call(
            Method::POST,
            "/api/user/alice",
            Some(&alice),
            Some(json!({"oldPassword": "password-1", "newPassword": "password-2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    api.login("alice", "password-2").await;
    let (s, _) = api
        .call(
            Method::POST,
            "/api/user/alice",
            Some(&bob),
            Some(json!({"oldPassword": "password-2", "newPassword": "password-3"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // a deleted user's token stops working
    let (s, _) = api.call(Method::DELETE, "/api/user/ivan", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call(Method::GET, "/api/clusters", Some(&ivan), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // only an Admin grants Admin; unknown roles are named
    let (s, v) = api.call(Method::PUT, "/api/user/bob", Some(&admin), Some(json!({"roles": ["Root"]}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["message"].as_str().unwrap().contains("Root"));
}

#[tokio::test]
async fn organizations_clusters_and_docs() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    let t = Some(admin.as_str());
    let (s, v) = api.call(Method::POST, "/api/organization/", t, Some(json!({"name": "lab", "member": []}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["_id"].as_str().unwrap().to_string();
    let (s, _) = api.call(Method::POST, "/api/organization", t, Some(json!({"name": "lab"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api
        .call(
            Method::PUT,
            &format!("/api/organization/{id}"),
            t,
            Some(json!({"name": "lab2", "member": [{"user_id": "nope", "roles": []}]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, v) = api.call(Method::GET, "/api/organization", t, None).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let root_id = v[0]["_id"].as_str().unwrap().to_string();
    let (s, _) = api.call(Method::DELETE, &format!("/api/organization/{root_id}"), t, None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api.call(Method::DELETE, &format!("/api/organization/{id}"), t, None).await;
    assert_eq!(s, StatusCode::OK);

    let (s, v) = api.call(Method::GET, "/api/clusters/", t, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, v) = api.call(Method::GET, "/api/clusters/active", t, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = api.call(Method::GET, "/api/clusters/active", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A cluster's workers: unknown cluster 404, no token 401 (before anything is looked up).
    let (s, v) = api.call(Method::GET, "/api/clusters/nope/workers", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["message"].as_str().unwrap().contains("cluster nope"), "{v}");
    let (s, _) = api.call(Method::GET, "/api/clusters/nope/workers/", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // generated OpenAPI document and the offline docs page
    let (s, v) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/api/application"]["post"].is_object());
    assert!(v["paths"]["/api/service/{id}/instance"]["post"].is_object());
    let params = v["paths"]["/api/service/{id}/instance"]["post"]["parameters"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "count" && p["in"] == "query"), "count is documented: {params:?}");
    let schemas = &v["components"]["schemas"];
    // A service is its descriptor (`allOf` Microservice) plus what the system adds.
    let service = &schemas["Service"]["allOf"][1]["properties"];
    for key in ["RR_ip", "closest_ip", "instance_list"] {
        assert!(service[key].is_object(), "Service.{key} is documented: {}", schemas["Service"]);
    }
    let workers = &v["paths"]["/api/clusters/{cluster_id}/workers"]["get"]["responses"];
    for status in ["200", "401", "403", "404"] {
        assert!(workers[status].is_object(), "the workers endpoint documents {status}: {workers}");
    }
    for key in ["name", "address", "architecture", "virtualization", "cpu_cores", "memory_used_mb", "active"] {
        assert!(schemas["WorkerSummary"]["properties"][key].is_object(), "WorkerSummary.{key} is documented");
    }
    for key in ["instance_ip", "namespace_ip", "host_ip", "host_port", "cluster_name", "worker_name"] {
        assert!(schemas["Instance"]["properties"][key].is_object(), "Instance.{key} is documented");
    }
    let (s, _) = api.call(Method::GET, "/docs/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.raw(Method::GET, "/api/docs/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("swagger"), "docs page is served: {v}");
    let (s, v) = api.raw(Method::GET, "/api/docs/swagger-ui-bundle.js", None, None).await;
    assert_eq!(s, StatusCode::OK, "assets are bundled, not fetched from a CDN");
    assert!(v.as_str().unwrap().len() > 100_000);
    let (s, v) = api.call(Method::GET, "/api/nothing-here", None, None).await;
    assert_eq!((s, v["code"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));
}

#[tokio::test]
async fn state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token;
    let app_id;
    {
        let api = Api { root: open(dir.path()).await, _dir: None };
        token = api.login("Admin", "Admin").await;
        let (_, v) = api
            .call(Method::POST, "/api/application", Some(&token), Some(serde_json::from_str(CLIENTSRVR).unwrap()))
            .await;
        app_id = v[0]["_id"].as_str().unwrap().to_string();
        let (_, v) = api.call(Method::GET, &format!("/api/services/{app_id}"), Some(&token), None).await;
        let svc = v[0]["_id"].as_str().unwrap();
        api.call(Method::POST, &format!("/api/service/{svc}/instance"), Some(&token), None).await;
    }
    let api = Api { root: open(dir.path()).await, _dir: None };
    // the signing key is kept: old tokens stay valid
    let (s, v) = api.call(Method::GET, &format!("/api/services/{app_id}"), Some(&token), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["instance_list"][0]["status"], "TargetClusterNotActive");
    assert_eq!(v[0]["next_instance_progressive_number"], 1);
}
