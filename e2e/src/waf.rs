//! Debian's nginx with ModSecurity v3 and the OWASP CRS (make test installs
//! them), run on loopback with a configuration from the gateway generator.
use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running nginx; killed, and its folder removed, when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Nginx {
    /// Writes `nginx.conf` and the ModSecurity rules (`rules_file`) and starts
    /// nginx from `dir`; returns once `port` on 127.0.0.1 accepts.
    pub fn start(dir: &Path, nginx_conf: &str, rules_file: &Path, rules: &str, port: u16) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
        std::fs::write(rules_file, rules).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("startup.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nginx on PATH (make test installs Debian's nginx with ModSecurity and the CRS)",
            );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}{}",
                std::fs::read_to_string(dir.join("startup.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            addr,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
