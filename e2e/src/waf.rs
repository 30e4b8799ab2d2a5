//! Debian's nginx with ModSecurity v3 and the OWASP CRS (make test installs
//! them), run on loopback with a configuration from the gateway generator.
use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running nginx (master and worker in a process group of their own);
/// stopped, and its folder removed, when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Nginx {
    /// Writes `nginx.conf` and the ModSecurity rules (`rules_file`) and starts
    /// nginx from `dir`; returns once `port` on 127.0.0.1 accepts.
    pub fn start(dir: &Path, nginx_conf: &str, rules_file: &Path, rules: &str, port: u16) -> Self {
        Self::write(dir, nginx_conf, rules_file, rules);
        let mut command = Command::new("nginx");
        command
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("startup.log"));
        Self::launch(command, dir, port)
    }

    /// As `start`, but under the gateway container's own entry point
    /// (`supervisor_script`), which reloads nginx when its files change.
    pub fn start_supervised(
        dir: &Path,
        nginx_conf: &str,
        rules_file: &Path,
        rules: &str,
        port: u16,
    ) -> Self {
        Self::write(dir, nginx_conf, rules_file, rules);
        let script = iotposture::gateway::config::supervisor_script(
            dir.join("nginx.conf").to_str().expect("a UTF-8 path"),
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .stderr(std::fs::File::create(dir.join("startup.log")).unwrap());
        Self::launch(command, dir, port)
    }

    fn write(dir: &Path, nginx_conf: &str, rules_file: &Path, rules: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
        std::fs::write(rules_file, rules).unwrap();
    }

    fn launch(mut command: Command, dir: &Path, port: u16) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own group, so stopping it reaches the workers too.
            .process_group(0)
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

    /// The log nginx (and the supervisor) wrote at start and on reloads.
    pub fn startup_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("startup.log")).unwrap_or_default()
    }
}

/// Sends `signal` to every process of the group led by `pid`.
fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A graceful stop lets the master take its workers with it; whatever
        // is left after that is killed as a group, so nothing is orphaned.
        signal_group(self.child.id(), "-QUIT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(self.child.id(), "-KILL");
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
