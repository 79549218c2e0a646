//! Accounts, roles, tokens, login and the Admin password, driven through the root's REST API
//! in-process against a real SQLite data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    root: Root,
    _dir: Option<tempfile::TempDir>,
}

async fn open(dir: &Path, api_addr: &str, admin_password: Option<&str>) -> Root {
    Root::open(RootConfig {
        api_addr: api_addr.parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: admin_password.map(str::to_string),
        fleet: Default::default(),
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap()
}

async fn send(
    root: &Root,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = root.service().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

impl Api {
    /// A root listening (by configuration) on loopback, so Admin/Admin is the default.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = open(dir.path(), "127.0.0.1:0", None).await;
        Api { root, _dir: Some(dir) }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let (s, _, v) = send(&self.root, method, path, token, body).await;
        (s, v)
    }

    async fn status(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> StatusCode {
        self.call(method, path, Some(token), body).await.0
    }

    /// Access and refresh token of `user` in `org` (default root).
    async fn tokens(&self, user: &str, password: &str, org: Option<&str>) -> (String, String) {
        let mut body = json!({"username": user, "password": password});
        if let Some(org) = org {
            body["organization_name"] = json!(org);
        }
        let (s, v) = self.call(Method::POST, "/api/auth/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "login of {user}: {v}");
        (v["token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
    }

    async fn login(&self, user: &str, password: &str) -> String {
        self.tokens(user, password, None).await.0
    }

    /// Registers `name` (password `password-1`) with `roles` in the organization of `by`; its id.
    async fn register(&self, by: &str, name: &str, roles: &[&str]) -> String {
        let body = json!({"name": name, "password": "password-1", "email": "x@y", "roles": roles});
        let (s, v) = self.call(Method::POST, "/api/auth/register", Some(by), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["_id"].as_str().or(v["id"].as_str()).unwrap().to_string()
    }

    async fn names(&self, path: &str, token: &str) -> Vec<String> {
        let (s, v) = self.call(Method::GET, path, Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let mut names: Vec<String> = v.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().into()).collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn an_organization_admin_cannot_take_over_the_admin() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "olga", &["Organization_Admin"]).await;
    let olga = api.login("olga", "password-1").await;

    let reset = json!({"password": "taken-over-1"});
    let (s, v) = api.call(Method::PUT, "/api/user/Admin", Some(&olga), Some(reset)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("Admin"), "{v}");
    assert_eq!(
        api.status(Method::PUT, "/api/user/Admin", &olga, Some(json!({"email": "o@x"}))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.status(Method::DELETE, "/api/user/Admin", &olga, None).await, StatusCode::FORBIDDEN);
    // nor make anyone (herself included) an Admin
    let grant = json!({"roles": ["Admin"]});
    assert_eq!(api.status(Method::PUT, "/api/user/olga", &olga, Some(grant)).await, StatusCode::FORBIDDEN);
    let body = json!({"name": "mallory", "password": "password-1", "roles": ["Admin"]});
    let (s, _) = api.call(Method::POST, "/api/auth/register", Some(&olga), Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // nor change organizations (and so roles) directly
    let (_, orgs) = api.call(Method::GET, "/api/organization", Some(&admin), None).await;
    let root_id = orgs[0]["_id"].as_str().unwrap();
    let (s, _) = api
        .call(Method::PUT, &format!("/api/organization/{root_id}"), Some(&olga), Some(json!({"name": "root"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // the Admin is untouched
    api.login("Admin", "Admin").await;
    let (s, v) = api.call(Method::GET, "/api/user/Admin", Some(&admin), None).await;
    assert_eq!((s, v["email"].as_str()), (StatusCode::OK, Some("")));
    // but she manages plain members of her organization
    api.register(&olga, "paul", &["Application_Provider"]).await;
    let reset = json!({"password": "password-2", "roles": ["Infrastructure_Provider"]});
    assert_eq!(api.status(Method::PUT, "/api/user/paul", &olga, Some(reset)).await, StatusCode::OK);
    api.login("paul", "password-2").await;
    assert_eq!(api.status(Method::DELETE, "/api/user/paul", &olga, None).await, StatusCode::OK);
}

#[tokio::test]
async fn an_organization_admin_sees_and_manages_only_their_organization() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "bob", &["Application_Provider"]).await;
    let lara_id = api.register(&admin, "lara", &[]).await;
    let carl_id = api.register(&admin, "carl", &[]).await;
    api.register(&admin, "nora", &[]).await; // in no organization
    let member = |id: &str, role: &str| json!({"user_id": id, "roles": [role]});
    let body = json!({"name": "lab", "member": [member(&lara_id, "Organization_Admin"), member(&carl_id, "Application_Provider")]});
    let (s, v) = api.call(Method::POST, "/api/organization", Some(&admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let lab = v["_id"].as_str().unwrap().to_string();
    let (_, orgs) = api.call(Method::GET, "/api/organization", Some(&admin), None).await;
    let root_id = orgs[0]["_id"].as_str().unwrap().to_string();
    let lara = api.tokens("lara", "password-1", Some("lab")).await.0;

    assert_eq!(api.names("/api/users", &lara).await, ["carl", "lara"]);
    assert_eq!(api.names(&format!("/api/users/{lab}"), &lara).await, ["carl", "lara"]);
    assert_eq!(api.status(Method::GET, &format!("/api/users/{root_id}"), &lara, None).await, StatusCode::NOT_FOUND);
    assert_eq!(api.names("/api/users", &admin).await, ["Admin", "bob", "carl", "lara", "nora"]);
    assert_eq!(api.names(&format!("/api/users/{lab}"), &admin).await, ["carl", "lara"]);

    // other organizations' users, users in none and unknown names look alike: not found
    for name in ["bob", "nora", "Admin", "nobody"] {
        for (m, path, body) in [
            (Method::GET, format!("/api/user/{name}"), None),
            (Method::GET, format!("/api/permission/{name}"), None),
            (Method::PUT, format!("/api/user/{name}"), Some(json!({"password": "password-9"}))),
            (Method::DELETE, format!("/api/user/{name}"), None),
        ] {
            let (s, v) = api.call(m.clone(), &path, Some(&lara), body).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {v}");
        }
    }
    api.login("bob", "password-1").await;

    // her own members she manages, with roles in her organization
    let (s, v) = api.call(Method::GET, "/api/permission/carl", Some(&lara), None).await;
    assert_eq!((s, v["roles"].clone()), (StatusCode::OK, json!(["Application_Provider"])));
    let update = json!({"email": "c@lab", "roles": ["Infrastructure_Provider"]});
    assert_eq!(api.status(Method::PUT, "/api/user/carl", &lara, Some(update)).await, StatusCode::OK);
    let (_, v) = api.call(Method::GET, &format!("/api/organization/{lab}"), Some(&admin), None).await;
    assert!(v.to_string().contains("Infrastructure_Provider"), "roles set in lab: {v}");
    let (_, v) = api.call(Method::GET, "/api/user/carl", Some(&admin), None).await;
    assert_eq!(v["roles"], json!([]), "carl has no roles in root: {v}");
    // a user she registers joins her organization
    api.register(&lara, "dina", &["Application_Provider"]).await;
    assert_eq!(api.names("/api/users", &lara).await, ["carl", "dina", "lara"]);

    // a member of her organization who also belongs to another is not hers to manage
    let body = json!({"name": "root", "member": [
        {"user_id": orgs[0]["member"][0]["user_id"], "roles": orgs[0]["member"][0]["roles"]},
        member(&carl_id, "Application_Provider"),
    ]});
    let (s, v) = api.call(Method::PUT, &format!("/api/organization/{root_id}"), Some(&admin), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(api.status(Method::GET, "/api/user/carl", &lara, None).await, StatusCode::OK);
    let reset = json!({"password": "password-9"});
    assert_eq!(api.status(Method::PUT, "/api/user/carl", &lara, Some(reset)).await, StatusCode::FORBIDDEN);
    assert_eq!(api.status(Method::DELETE, "/api/user/carl", &lara, None).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ordinary_roles_reach_only_their_own_account() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    for (name, roles) in
        [("alice", &["Application_Provider"][..]), ("ivan", &["Infrastructure_Provider"]), ("nemo", &[])]
    {
        api.register(&admin, name, roles).await;
        let t = api.login(name, "password-1").await;
        assert_eq!(api.status(Method::GET, &format!("/api/user/{name}"), &t, None).await, StatusCode::OK);
        assert_eq!(api.status(Method::GET, &format!("/api/permission/{name}"), &t, None).await, StatusCode::OK);
        for (m, path, body) in [
            (Method::GET, "/api/users".to_string(), None),
            (Method::GET, "/api/user/Admin".into(), None),
            (Method::GET, "/api/user/nobody".into(), None),
            (Method::GET, "/api/permission/Admin".into(), None),
            (Method::PUT, format!("/api/user/{name}"), Some(json!({"roles": ["Organization_Admin"]}))),
            (Method::PUT, "/api/user/Admin".into(), Some(json!({"password": "password-9"}))),
            (Method::DELETE, "/api/user/Admin".into(), None),
            (Method::POST, "/api/auth/register".into(), Some(json!({"name": "x", "password": "password-1"}))),
        ] {
            let (s, v) = api.call(m.clone(), &path, Some(&t), body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{name}: {m} {path}: {v}");
        }
    }
}

#[tokio::test]
async fn password_changes_and_resets_revoke_tokens() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "alice", &["Application_Provider"]).await;
    let (access, refresh) = api.tokens("alice", "password-1", None).await;
    let change = json!({"oldPassword": "password-1", "newPassword": "password-2"});
    assert_eq!(api.status(Method::POST, "/api/user/alice", &access, Some(change)).await, StatusCode::OK);
    let (s, v) = api.call(Method::GET, "/api/applications", Some(&access), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    assert_eq!(api.status(Method::POST, "/api/auth/refresh", &refresh, None).await, StatusCode::UNAUTHORIZED);

    let (access, refresh) = api.tokens("alice", "password-2", None).await;
    assert_eq!(api.status(Method::GET, "/api/applications", &access, None).await, StatusCode::OK);
    // an e-mail change keeps them, an Admin's reset revokes them
    let email = json!({"email": "a@x"});
    assert_eq!(api.status(Method::PUT, "/api/user/alice", &admin, Some(email)).await, StatusCode::OK);
    assert_eq!(api.status(Method::GET, "/api/applications", &access, None).await, StatusCode::OK);
    let reset = json!({"password": "password-3"});
    assert_eq!(api.status(Method::PUT, "/api/user/alice", &admin, Some(reset)).await, StatusCode::OK);
    assert_eq!(api.status(Method::GET, "/api/applications", &access, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.status(Method::POST, "/api/auth/refresh", &refresh, None).await, StatusCode::UNAUTHORIZED);
    api.login("alice", "password-3").await;
}

#[tokio::test]
async fn tokens_of_a_deleted_user_do_not_open_a_new_account_of_the_same_name() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "bob", &["Organization_Admin"]).await;
    let (access, refresh) = api.tokens("bob", "password-1", None).await;
    assert_eq!(api.status(Method::DELETE, "/api/user/bob", &admin, None).await, StatusCode::OK);
    api.register(&admin, "bob", &["Organization_Admin"]).await;
    let (s, v) = api.call(Method::GET, "/api/users", Some(&access), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(api.status(Method::POST, "/api/auth/refresh", &refresh, None).await, StatusCode::UNAUTHORIZED);
    let fresh = api.login("bob", "password-1").await;
    assert_eq!(api.status(Method::GET, "/api/users", &fresh, None).await, StatusCode::OK);
}

#[tokio::test]
async fn roles_are_read_per_request_and_removing_one_revokes_tokens() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "alice", &["Application_Provider"]).await;
    let (access, refresh) = api.tokens("alice", "password-1", None).await;
    assert_eq!(api.status(Method::GET, "/api/users", &access, None).await, StatusCode::FORBIDDEN);
    // a role granted counts at once, with the token issued before
    let grant = json!({"roles": ["Application_Provider", "Organization_Admin"]});
    assert_eq!(api.status(Method::PUT, "/api/user/alice", &admin, Some(grant)).await, StatusCode::OK);
    assert_eq!(api.status(Method::GET, "/api/users", &access, None).await, StatusCode::OK);
    // a role removed revokes every token of hers
    let remove = json!({"roles": ["Application_Provider"]});
    assert_eq!(api.status(Method::PUT, "/api/user/alice", &admin, Some(remove)).await, StatusCode::OK);
    assert_eq!(api.status(Method::GET, "/api/applications", &access, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.status(Method::POST, "/api/auth/refresh", &refresh, None).await, StatusCode::UNAUTHORIZED);
    // also when the organization is edited directly
    let (access, _) = api.tokens("alice", "password-1", None).await;
    let (_, orgs) = api.call(Method::GET, "/api/organization", Some(&admin), None).await;
    let root = &orgs[0];
    let kept: Vec<Value> = root["member"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["roles"].as_array().unwrap().len() > 1)
        .cloned()
        .collect();
    let body = json!({"name": "root", "member": kept});
    let path = format!("/api/organization/{}", root["_id"].as_str().unwrap());
    assert_eq!(api.status(Method::PUT, &path, &admin, Some(body)).await, StatusCode::OK);
    assert_eq!(api.status(Method::GET, "/api/applications", &access, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.status(Method::GET, "/api/applications", &admin, None).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn parallel_wrong_logins_get_no_more_than_the_limit_of_attempts() {
    let api = Api::new().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let service = api.root.service();
        tasks.push(tokio::spawn(async move {
            let body = json!({"username": "Admin", "password": "wrong-password"}).to_string();
            let req = Request::post("/api/auth/login").body(Body::from(body)).unwrap();
            let resp = service.oneshot(req).await.unwrap();
            (resp.status(), resp.headers().get("retry-after").cloned())
        }));
    }
    let (mut refused, mut limited) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::UNAUTHORIZED, _) => refused += 1,
            (StatusCode::TOO_MANY_REQUESTS, retry) => {
                let secs: u64 = retry.expect("429 carries Retry-After").to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
                limited += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((refused, limited), (5, 15), "at most the limit (5) of attempts reached the password check");
    // the right password is refused too while the limit holds, with Retry-After
    let (s, headers, _) =
        send(&api.root, Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"})))
            .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
}

/// Holding someone's token does not allow guessing their password through the change-password
/// endpoint: wrong old passwords count as failed logins.
#[tokio::test]
async fn a_stolen_token_cannot_guess_the_password_by_changing_it() {
    let api = Api::new().await;
    let admin = api.login("Admin", "Admin").await;
    api.register(&admin, "alice", &["Application_Provider"]).await;
    let alice = api.login("alice", "password-1").await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let body = json!({"oldPassword": format!("guess-{i}"), "newPassword": "password-new-1"});
        statuses.push(api.call(Method::POST, "/api/user/alice", Some(&alice), Some(body)).await.0);
    }
    let wrong = statuses.iter().filter(|s| **s == StatusCode::BAD_REQUEST).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((wrong, limited), (5, 2), "{statuses:?}");
    // the right old password is refused too while the limit holds
    let body = json!({"oldPassword": "password-1", "newPassword": "password-new-1"});
    let (s, headers, _) = send(&api.root, Method::POST, "/api/user/alice", Some(&alice), Some(body)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
}

#[tokio::test]
async fn successful_logins_do_not_use_up_attempts() {
    let api = Api::new().await;
    for _ in 0..8 {
        api.login("Admin", "Admin").await;
    }
}

/// Fastest of three logins of `user` with a wrong password.
async fn fastest_failed_login(api: &Api, user: &str) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let (s, _) = api
            .call(Method::POST, "/api/auth/login", None, Some(json!({"username": user, "password": "wrong-1"})))
            .await;
        best = best.min(start.elapsed());
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    best
}

#[tokio::test]
async fn unknown_users_take_as_long_as_known_ones() {
    let api = Api::new().await;
    let known = fastest_failed_login(&api, "Admin").await;
    let unknown = fastest_failed_login(&api, "no-such-user").await;
    // Both run one argon2 verification; without it an unknown user answers hundreds of times faster.
    assert!(unknown * 3 >= known, "unknown user {unknown:?} vs known user {known:?}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn beyond_loopback_the_first_start_generates_the_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("root");
    let file = data.join("admin-password");
    let password = {
        let api = Api { root: open(&data, "0.0.0.0:10000", None).await, _dir: None };
        assert_eq!(mode(&file), 0o600);
        let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
        assert!(password.len() >= 20, "{password:?}");
        let (s, _) = api
            .call(Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"})))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "no default password beyond loopback");
        api.login("Admin", &password).await;
        password
    };
    // a later start keeps it
    let api = Api { root: open(&data, "0.0.0.0:10000", None).await, _dir: None };
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
    assert_eq!(api.root.admin_password_file(), Some(file.clone()));
    let admin = api.login("Admin", &password).await;
    // once Admin picks a password of their own, the generated one leaves the disk
    let change = json!({"oldPassword": password, "newPassword": "admin-chosen-1"});
    assert_eq!(api.status(Method::POST, "/api/user/Admin", &admin, Some(change)).await, StatusCode::OK);
    assert!(!file.exists() && api.root.admin_password_file().is_none());
    api.login("Admin", "admin-chosen-1").await;

    // with --admin-password, or on loopback, no file is written
    let given = dir.path().join("given");
    let api = Api { root: open(&given, "0.0.0.0:10000", Some("chosen-secret")).await, _dir: None };
    api.login("Admin", "chosen-secret").await;
    assert!(!given.join("admin-password").exists() && api.root.admin_password_file().is_none());
    let local = dir.path().join("local");
    let api = Api { root: open(&local, "127.0.0.1:10000", None).await, _dir: None };
    api.login("Admin", "Admin").await;
    assert!(!local.join("admin-password").exists());
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_database_are_private_also_when_they_existed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("root");
    drop(open(&data, "127.0.0.1:0", None).await);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("root.db")), 0o600);
    // a data dir made by an older version, or by hand, is tightened at start
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["root.db", "root.db-wal", "root.db-shm"] {
        let path = data.join(name);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let root = open(&data, "127.0.0.1:0", None).await;
    assert_eq!(mode(&data), 0o700);
    for name in ["root.db", "root.db-wal", "root.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    drop(root);
}
