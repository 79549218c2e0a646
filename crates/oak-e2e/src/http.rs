//! A minimal blocking HTTP/1.0 client: enough to poll readiness and fetch small bodies without
//! pulling an HTTP client crate (and an async runtime) into test support code.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Status and body of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET http://<addr><path>` with a 5 s connect/read timeout.
pub fn get(addr: &str, path: &str) -> Result<Response> {
    get_timeout(addr, path, Duration::from_secs(5))
}

/// `GET http://<addr><path>`. HTTP/1.0 with `Connection: close`, so servers answer without
/// chunked encoding and close when done: the body is everything after the headers.
pub fn get_timeout(addr: &str, path: &str, timeout: Duration) -> Result<Response> {
    let what = || format!("GET http://{addr}{path}");
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout).with_context(what)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` straight to the socket would send each piece as its own segment.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).with_context(what)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(what)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: malformed status line {status_line:?}", what()))?;
    if !status_line.starts_with("HTTP/") {
        bail!("{}: not an HTTP answer: {status_line:?}", what());
    }
    Ok(Response { status, body: body.to_string() })
}

/// Serves `files` (path → body) over HTTP/1.0 on a free loopback port until the process ends,
/// 404 for anything else; answers its base URL (`http://127.0.0.1:PORT`). For tests that need
/// something to download from (kernel archives).
pub fn serve_files(files: std::collections::HashMap<String, Vec<u8>>) -> Result<String> {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let files = std::sync::Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let files = files.clone();
            std::thread::spawn(move || {
                let Ok(read) = stream.try_clone() else { return };
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut stream = stream;
                let _ = match files.get(&path) {
                    Some(body) => stream
                        .write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
                        .and_then(|_| stream.write_all(body)),
                    None => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            });
        }
    });
    Ok(format!("http://{addr}"))
}
