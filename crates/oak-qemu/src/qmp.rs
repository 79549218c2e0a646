//! The QEMU Machine Protocol, as much as a clean stop needs: newline-separated JSON over a
//! unix socket; the server greets, `qmp_capabilities` enters command mode, `quit` ends QEMU.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Reads messages until one answers a command (`return` or `error`), skipping events.
async fn answer(lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>) -> Result<(), String> {
    loop {
        let line = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("QMP closed")?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))?;
        if v.get("return").is_some() || v.get("QMP").is_some() {
            return Ok(());
        }
        if let Some(e) = v.get("error") {
            return Err(format!("QMP error: {e}"));
        }
    }
}

/// Whether QMP answers on `socket` (greeting and capabilities negotiation).
pub async fn ping(socket: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    tokio::time::timeout(Duration::from_secs(5), async {
        answer(&mut lines).await?;
        write.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await.map_err(|e| e.to_string())?;
        answer(&mut lines).await
    })
    .await
    .map_err(|_| "QMP did not answer within 5 s".to_string())?
}

/// Asks QEMU to quit.
pub async fn quit(socket: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    tokio::time::timeout(Duration::from_secs(5), async {
        answer(&mut lines).await?;
        write.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await.map_err(|e| e.to_string())?;
        answer(&mut lines).await?;
        write.write_all(b"{\"execute\":\"quit\"}\n").await.map_err(|e| e.to_string())?;
        // QEMU may close the socket before or after answering.
        let _ = answer(&mut lines).await;
        Ok(())
    })
    .await
    .map_err(|_| "QMP did not answer within 5 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn quit_negotiates_then_quits_skipping_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\":{\"version\":{}}}\n").await.unwrap();
            let mut got = Vec::new();
            while let Some(l) = lines.next_line().await.unwrap() {
                got.push(l.clone());
                w.write_all(b"{\"event\":\"X\"}\n{\"return\":{}}\n").await.unwrap();
                if l.contains("quit") {
                    break;
                }
            }
            got
        });
        quit(&sock).await.unwrap();
        let got = server.await.unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].contains("qmp_capabilities") && got[1].contains("quit"));
        assert!(quit(&dir.path().join("none")).await.is_err());
    }
}
