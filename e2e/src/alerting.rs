//! Alert delivery for tests: Debian's Alertmanager sending to a webhook
//! receiver the test runs, so a test sees the notification itself.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::{free_addr, http_get, plane_dir, wait_until};

/// Collects the JSON bodies POSTed to it (Alertmanager's webhook payloads).
pub struct WebhookSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookSink {
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    // One request per connection: read the head, then
                    // Content-Length bytes of body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let body = loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break buf[end + 4..end + 4 + length].to_vec();
                        }
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        store.lock().unwrap().push(v);
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Debian's Alertmanager, one receiver `team` posting to `webhook`, sending
/// at once (group_wait 1s). Stopped when dropped.
pub struct Alertmanager {
    pub addr: SocketAddr,
    child: std::process::Child,
    dir: PathBuf,
}

impl Alertmanager {
    pub async fn start(webhook: SocketAddr) -> Self {
        let dir = plane_dir().join(format!(
            "alertmanager-{}-{}",
            std::process::id(),
            webhook.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("alertmanager.yml"),
            format!(
                "route:\n  receiver: team\n  group_by: [alertname, iotsystem]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: team\n    webhook_configs:\n      - url: http://{webhook}/alerts\n        send_resolved: false\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // One instance: no gossip port.
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus-alertmanager on PATH (make test installs Debian's package)");
        let am = Self { addr, child, dir };
        wait_until("Alertmanager ready", || async {
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => http_get(addr, "/-/ready").await,
                    Err(_) => (0, String::new()),
                }
            })
            .await
            .unwrap_or((0, String::new()));
            (answer.0 == 200).then_some(())
        })
        .await;
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
