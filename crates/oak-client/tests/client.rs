//! The client against a one-shot fake HTTP server: what it sends, and how it reads answers.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use oak_client::{Client, ClientError};

/// Serves one request with a canned answer; the handle yields the request as received.
fn serve_once(status: &str, body: &str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                if request.len() >= end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        stream.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, handle)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn sends_the_token_and_decodes_lists() {
    let (url, server) = serve_once("200 OK", "[]");
    let client = Client::new(url).with_token("tok");
    let apps = runtime().block_on(client.list_applications()).unwrap();
    assert!(apps.is_empty());
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /api/applications/ HTTP/1.1\r\n"), "{request}");
    assert!(request.to_ascii_lowercase().contains("authorization: bearer tok\r\n"), "{request}");
}

#[test]
fn refresh_uses_the_refresh_token() {
    let (url, server) = serve_once("200 OK", r#"{"token": "new"}"#);
    let client = Client::new(url).with_token("old-access");
    let answer = runtime().block_on(client.refresh("refresh-tok")).unwrap();
    assert_eq!(answer.token, "new");
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /api/auth/refresh HTTP/1.1\r\n"), "{request}");
    assert!(request.to_ascii_lowercase().contains("authorization: bearer refresh-tok\r\n"), "{request}");
}

#[test]
fn login_posts_credentials() {
    let (url, server) = serve_once("200 OK", r#"{"token": "a", "refresh_token": "r"}"#);
    let answer = runtime().block_on(Client::new(url).login("Admin", "pw", None)).unwrap();
    assert_eq!((answer.token.as_str(), answer.refresh_token.as_str()), ("a", "r"));
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /api/auth/login HTTP/1.1\r\n"), "{request}");
    assert!(request.ends_with(r#"{"username":"Admin","password":"pw"}"#), "{request}");
}

#[test]
fn error_bodies_become_api_errors() {
    let body = r#"{"code": 422, "message": "invalid deployment descriptor", "errors": [
        {"field": "applications[0].microservices[0].port", "message": "\"80:x\" is not a port mapping"}]}"#;
    let (url, server) = serve_once("422 Unprocessable Entity", body);
    let err = runtime().block_on(Client::new(url).create_application(&serde_json::json!({}))).unwrap_err();
    server.join().unwrap();
    assert_eq!(err.status(), Some(422));
    assert_eq!(err.to_string(), r#"422: applications[0].microservices[0].port: "80:x" is not a port mapping"#);
}

#[test]
fn unexpected_success_bodies_are_decode_errors() {
    let (url, server) = serve_once("200 OK", r#"{"not": "a list"}"#);
    let err = runtime().block_on(Client::new(url).with_token("t").list_services()).unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, ClientError::Decode(_)), "{err:?}");
    assert!(err.to_string().starts_with("unexpected answer to GET /api/services/: "), "{err}");
}

#[test]
fn refused_connections_name_the_url() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let err = runtime().block_on(Client::new(url.clone()).list_active_clusters()).unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("cannot reach {url}: connection refused"));
}
