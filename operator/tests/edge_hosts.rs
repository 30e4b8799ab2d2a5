//! The node agent's parsers and verdicts on fixture host roots
//! (`tests/fixtures/hosts/`), and differentially against the daemons
//! themselves: every fixture's Wi-Fi, sshd and modprobe settings must read
//! the same through our parsers as the real wpa_supplicant, hostapd,
//! NetworkManager (nmcli --offline), sshd -T and modprobe -c report them.
//! The daemons are Debian's (make test installs them); they run on `lo`
//! with no radio (`-D none`, `driver=none`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use iotposture::{
    api::{Verdict, nodeposture::Wps},
    edge::{self, Host, judge::Expectations},
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts")
}

fn host(name: &str) -> Host {
    Host::new(fixtures().join(name))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iotposture-edge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian puts the daemons in /usr/sbin, outside a non-root PATH.
fn sbin(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{tool} is missing: make test installs Debian's wpasupplicant, hostapd, network-manager, openssh-server and kmod"
    )
}

use Verdict::{Fail, Pass, Unknown};

/// Each fixture, what the system expects, and the verdicts for IV-1, IV-2,
/// IV-3, IV-4 and VI-1: for every item at least one host that passes and
/// one that fails.
fn cases() -> Vec<(&'static str, Expectations, [Verdict; 5])> {
    let ap = Expectations {
        access_point: true,
        ..Expectations::default()
    };
    let none = Expectations::default();
    let bastion = Expectations {
        allowed_remote_access_ports: vec![22],
        ..Expectations::default()
    };
    vec![
        ("good-gateway", none.clone(), [Pass, Pass, Pass, Pass, Pass]),
        (
            "bare-psk-client",
            none.clone(),
            [Fail, Unknown, Fail, Pass, Unknown],
        ),
        // hostapd turns WPS off itself without WPA2-CCMP: IV-4 passes, IV-3 fails.
        (
            "tkip-access-point",
            ap.clone(),
            [Fail, Unknown, Fail, Pass, Unknown],
        ),
        (
            "wps-access-point",
            ap.clone(),
            [Fail, Unknown, Pass, Fail, Unknown],
        ),
        (
            "transition-access-point",
            ap.clone(),
            [Fail, Unknown, Pass, Pass, Unknown],
        ),
        // The same host, where the system does not allow access points.
        (
            "transition-access-point",
            none.clone(),
            [Fail, Unknown, Fail, Pass, Unknown],
        ),
        (
            "nm-open-and-wep",
            none.clone(),
            [Fail, Unknown, Fail, Pass, Unknown],
        ),
        (
            "usb-open-serial-login",
            none.clone(),
            [Fail, Unknown, Pass, Pass, Unknown],
        ),
        (
            "kernel-console-login",
            none.clone(),
            [Fail, Unknown, Pass, Pass, Unknown],
        ),
        (
            "masked-serial-console",
            none.clone(),
            [Pass, Unknown, Pass, Pass, Unknown],
        ),
        (
            "sshd-default-port-image",
            none.clone(),
            [Fail, Fail, Pass, Pass, Fail],
        ),
        // A declared bastion may keep 22; the image's other listeners stay unknown.
        (
            "sshd-default-port-image",
            bastion,
            [Fail, Unknown, Pass, Pass, Fail],
        ),
        (
            "telnet-listening",
            none.clone(),
            [Fail, Fail, Pass, Pass, Unknown],
        ),
        ("encrypted-lvm", none, [Fail, Unknown, Pass, Pass, Pass]),
    ]
}

#[test]
fn fixture_hosts_are_judged_as_expected() {
    for (name, expect, verdicts) in cases() {
        let facts = edge::scan(&host(name));
        assert!(
            facts.unreadable.is_empty(),
            "{name}: {:?}",
            facts.unreadable
        );
        let judged = edge::judge::judge(&facts, &expect);
        let got: Vec<Verdict> = judged.iter().map(|(_, c)| c.verdict).collect();
        assert_eq!(got, verdicts, "{name} with {expect:?}: {judged:#?}");
        let json = serde_json::to_string(&facts).unwrap();
        assert!(
            !json.contains("fixture-passphrase"),
            "{name}: a passphrase leaked into the facts"
        );
    }
}

#[test]
fn evidence_names_the_fact_that_decided() {
    let evidence = |name: &str, item: &str| {
        let facts = edge::scan(&host(name));
        edge::judge::judge(&facts, &Expectations::default())
            .into_iter()
            .find(|(id, _)| *id == item)
            .unwrap()
            .1
            .evidence
    };
    assert!(evidence("bare-psk-client", "IV-3").contains("\"plant-legacy\""));
    assert!(evidence("bare-psk-client", "IV-3").contains("WPA1"));
    assert!(evidence("nm-open-and-wep", "IV-3").contains("WEP"));
    assert!(evidence("usb-open-serial-login", "IV-1").contains("1-1:1.0"));
    assert!(evidence("kernel-console-login", "IV-1").contains("ttyS0"));
    assert!(evidence("telnet-listening", "IV-2").contains("0.0.0.0:23"));
    assert!(
        !evidence("telnet-listening", "IV-2").contains("5900"),
        "loopback VNC is not remote"
    );
    assert!(evidence("sshd-default-port-image", "VI-1").contains("/data"));
    assert!(evidence("transition-access-point", "IV-3").contains("accessPoint"));
}

#[test]
fn the_offline_command_exits_by_verdict_and_on_unreadable_input() {
    let bin = env!("CARGO_BIN_EXE_iotposture");
    let run = |root: &Path, extra: &[&str]| {
        Command::new(bin)
            .args(["node-agent", "--once", "-o", "json", "--host-root"])
            .arg(root)
            .args(extra)
            .output()
            .unwrap()
    };
    let good = run(&fixtures().join("good-gateway"), &[]);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(report["items"].as_array().unwrap().len(), 5);
    assert_eq!(report["facts"]["wifi"].as_array().unwrap().len(), 3);

    let bad = run(&fixtures().join("wps-access-point"), &["--access-point"]);
    assert_eq!(bad.status.code(), Some(1));
    let bastion = run(
        &fixtures().join("telnet-listening"),
        &[
            "--allow-remote-access-port",
            "23",
            "--allow-remote-access-port",
            "3389",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&bastion.stdout).unwrap();
    assert_eq!(report["items"][1]["verdict"], "Pass", "{report}");

    let missing = run(Path::new("/nonexistent/host"), &[]);
    assert_eq!(missing.status.code(), Some(2));
    // A configuration that exists but cannot be read: unknown, exit 2.
    let root = scratch("unreadable");
    std::fs::create_dir_all(root.join("etc/hostapd/hostapd.conf")).unwrap();
    let unreadable = run(&root, &[]);
    assert_eq!(unreadable.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&unreadable.stdout).unwrap();
    assert_eq!(report["items"][2]["verdict"], "Unknown", "{report}");
    std::fs::remove_dir_all(root).unwrap();
}

/// A daemon we started, in a process group of its own; the group is killed
/// when dropped, so a failing test leaves nothing behind.
struct Daemon(Child);

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        use std::os::unix::process::CommandExt;
        Daemon(cmd.process_group(0).spawn().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sorted(words: &str) -> Vec<String> {
    let set: BTreeSet<String> = words.split_whitespace().map(str::to_string).collect();
    set.into_iter().collect()
}

/// Every fixture file below `dir` of every fixture host, as (host, host path).
fn fixture_files(dir: &str, suffix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        for file in host(&name).list(dir) {
            if file.ends_with(suffix) {
                out.push((name.clone(), format!("{dir}/{file}")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn wpa_supplicant_reads_every_fixture_network_as_we_do() {
    let files = fixture_files("/etc/wpa_supplicant", ".conf");
    assert!(files.len() >= 2, "{files:?}");
    let mut networks = 0;
    for (name, path) in files {
        let original = std::fs::read_to_string(host(&name).path(&path)).unwrap();
        let ours = edge::wpa_supplicant::parse(&path, &original).unwrap();
        let dir = scratch("wpa");
        let ctrl = dir.join("ctrl");
        // Only the control socket differs from the fixture.
        let config: String = std::iter::once(format!("ctrl_interface={}", ctrl.display()))
            .chain(
                original
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("ctrl_interface"))
                    .map(str::to_string),
            )
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("wpa.conf"), config).unwrap();
        let _daemon = Daemon::spawn(
            Command::new(sbin("wpa_supplicant"))
                .args(["-D", "none", "-i", "lo", "-c"])
                .arg(dir.join("wpa.conf"))
                .stdout(Stdio::null()),
        );
        wait_for(&ctrl.join("lo"), "wpa_supplicant");
        let get = |i: usize, field: &str| {
            text(Command::new(sbin("wpa_cli")).arg("-p").arg(&ctrl).args([
                "-i",
                "lo",
                "get_network",
                &i.to_string(),
                field,
            ]))
        };
        for (i, n) in ours.iter().enumerate() {
            let what = format!("{name}:{path} network {i}");
            assert_eq!(sorted(&get(i, "key_mgmt")), n.key_mgmt, "{what}: key_mgmt");
            assert_eq!(sorted(&get(i, "proto")), n.protocols, "{what}: proto");
            assert_eq!(sorted(&get(i, "pairwise")), n.pairwise, "{what}: pairwise");
            assert_eq!(sorted(&get(i, "group")), n.group, "{what}: group");
            assert_eq!(
                get(i, "disabled").trim() == "1",
                n.disabled,
                "{what}: disabled"
            );
            networks += 1;
        }
        let count = text(Command::new(sbin("wpa_cli")).arg("-p").arg(&ctrl).args([
            "-i",
            "lo",
            "list_networks",
        ]))
        .lines()
        .skip(1)
        .count();
        assert_eq!(count, ours.len(), "{name}:{path}: network count");
        drop(_daemon);
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(networks >= 5);
}

#[test]
fn hostapd_reports_every_fixture_access_point_as_we_do() {
    let files = fixture_files("/etc/hostapd", ".conf");
    assert!(files.len() >= 3, "{files:?}");
    for (name, path) in files {
        let original = std::fs::read_to_string(host(&name).path(&path)).unwrap();
        let ours = edge::hostapd::parse(&path, &original);
        assert_eq!(ours.len(), 1, "{name}: one BSS per fixture");
        let n = &ours[0];
        let dir = scratch("hostapd");
        let ctrl = dir.join("ctrl");
        // No radio here: the same settings on lo, with the `none` driver.
        let config: String = [
            "interface=lo".to_string(),
            "driver=none".to_string(),
            format!("ctrl_interface={}", ctrl.display()),
        ]
        .into_iter()
        .chain(
            original
                .lines()
                .filter(|l| {
                    !l.starts_with("interface=")
                        && !l.starts_with("driver=")
                        && !l.starts_with("ctrl_interface=")
                })
                .map(str::to_string),
        )
        .collect::<Vec<_>>()
        .join("\n");
        std::fs::write(dir.join("hostapd.conf"), config).unwrap();
        let _daemon = Daemon::spawn(
            Command::new(sbin("hostapd"))
                .arg(dir.join("hostapd.conf"))
                .stdout(Stdio::null()),
        );
        wait_for(&ctrl.join("lo"), "hostapd");
        let start = Instant::now();
        let config = loop {
            let out = Command::new(sbin("hostapd_cli"))
                .arg("-p")
                .arg(&ctrl)
                .args(["-i", "lo", "get_config"])
                .output()
                .unwrap();
            let t = String::from_utf8_lossy(&out.stdout).into_owned();
            if t.contains("wps_state=") {
                break t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: hostapd_cli: {t}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let value = |k: &str| {
            config
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        let what = format!("{name}:{path}");
        assert_eq!(
            value("ssid").as_deref(),
            Some(n.ssid.as_str()),
            "{what}: ssid"
        );
        assert_eq!(
            sorted(&value("key_mgmt").unwrap_or_default()),
            n.key_mgmt,
            "{what}: key_mgmt"
        );
        let wpa: i64 = value("wpa").unwrap_or_default().parse().unwrap_or(0);
        let mut protocols = Vec::new();
        if wpa & 1 != 0 {
            protocols.push("WPA".to_string());
        }
        if wpa & 2 != 0 {
            protocols.push("RSN".to_string());
        }
        assert_eq!(protocols, n.protocols, "{what}: wpa={wpa}");
        let pairwise = format!(
            "{} {}",
            if wpa & 1 != 0 {
                value("wpa_pairwise_cipher").unwrap_or_default()
            } else {
                String::new()
            },
            if wpa & 2 != 0 {
                value("rsn_pairwise_cipher").unwrap_or_default()
            } else {
                String::new()
            },
        );
        assert_eq!(sorted(&pairwise), n.pairwise, "{what}: pairwise");
        assert_eq!(
            sorted(&value("group_cipher").unwrap_or_default()),
            n.group,
            "{what}: group"
        );
        let wps = match value("wps_state").as_deref() {
            Some("disabled") => Wps::Disabled,
            Some("not configured") => Wps::Unconfigured,
            Some("configured") => Wps::Configured,
            other => panic!("{what}: wps_state {other:?}"),
        };
        assert_eq!(Some(wps), n.wps, "{what}: wps");
        drop(_daemon);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn networkmanager_normalises_every_fixture_keyfile_to_the_same_facts() {
    let files = fixture_files("/etc/NetworkManager/system-connections", ".nmconnection");
    assert!(files.len() >= 3, "{files:?}");
    let nmcli = |input: &str| {
        let mut child = Command::new(sbin("nmcli"))
            .args([
                "--offline",
                "connection",
                "modify",
                "connection.autoconnect-priority",
                "0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    for (name, path) in files {
        let original = std::fs::read_to_string(host(&name).path(&path)).unwrap();
        let out = nmcli(&original);
        assert!(
            out.status.success(),
            "{name}:{path}: nmcli refuses it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let normalised = String::from_utf8(out.stdout).unwrap();
        let ours = edge::networkmanager::parse(&path, &original).unwrap();
        let theirs = edge::networkmanager::parse(&path, &normalised).unwrap();
        assert_eq!(
            ours, theirs,
            "{name}:{path}: NetworkManager's own rewrite reads differently:\n{normalised}"
        );
    }
    // What NetworkManager refuses, we refuse too.
    let bogus =
        "[connection]\nid=x\ntype=wifi\n[wifi]\nssid=x\n[wifi-security]\nkey-mgmt=wpa-bogus\n";
    assert!(!nmcli(bogus).status.success());
    assert!(edge::networkmanager::parse("x", bogus).is_err());
}

#[test]
fn sshd_listens_on_the_ports_we_read_from_every_fixture() {
    let key = scratch("sshd-key").join("host_key");
    text(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(ours) = edge::sshd::read(&host(&name)) else {
            continue;
        };
        // sshd reads /etc/ssh, includes too: the fixture's, in a mount namespace of its own.
        let script = format!(
            "mount --bind {} /etc/ssh && exec {} -T -f /etc/ssh/sshd_config -h {}",
            fixtures().join(&name).join("etc/ssh").display(),
            sbin("sshd").display(),
            key.display()
        );
        let effective = text(Command::new("unshare").args(["-m", "sh", "-c", &script]));
        let theirs: BTreeSet<u16> = effective
            .lines()
            .filter_map(|l| l.strip_prefix("listenaddress "))
            .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            .collect();
        assert_eq!(
            ours,
            theirs.into_iter().collect::<Vec<_>>(),
            "{name}: sshd -T says\n{effective}"
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn modprobe_blocks_usb_storage_where_we_say_it_does() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let dir = fixtures().join(&name).join("etc/modprobe.d");
        if !dir.is_dir() {
            continue;
        }
        let ours = edge::usb::modprobe_rules(&host(&name));
        let effective = text(Command::new(sbin("modprobe")).arg("-c").arg("-C").arg(&dir));
        let mut theirs = edge::usb::ModprobeRules::default();
        edge::usb::parse_modprobe(&effective, &mut theirs);
        assert_eq!(
            (
                theirs.blacklisted("usb_storage"),
                theirs.install_disabled("usb_storage")
            ),
            (
                ours.blacklisted("usb_storage"),
                ours.install_disabled("usb_storage")
            ),
            "{name}: modprobe -c says\n{}",
            effective
                .lines()
                .filter(|l| l.contains("usb_storage"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 4);
}

/// sshd and a telnet-like listener in a network namespace of their own,
/// read through `proc/1` of a host root the way the DaemonSet reads the
/// host's /proc: only what listens there shows, and IV-2 names it.
#[test]
fn listening_sockets_of_real_processes_in_another_network_namespace() {
    let key = scratch("listen-key").join("host_key");
    text(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    std::fs::create_dir_all("/run/sshd").unwrap();
    let script = format!(
        "ip link set lo up; {sshd} -D -f /dev/null -h {key} -o Port=22 -o PidFile=none & \
         python3 -c 'import socket,time
t=socket.socket(); t.bind((\"0.0.0.0\",23)); t.listen()
v=socket.socket(); v.bind((\"127.0.0.1\",5900)); v.listen()
time.sleep(600)' & \
         wait",
        sshd = sbin("sshd").display(),
        key = key.display()
    );
    let namespace = Daemon::spawn(
        Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let root = scratch("listen-root");
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::os::unix::fs::symlink(format!("/proc/{}", namespace.0.id()), root.join("proc/1")).unwrap();
    let host = Host::new(&root);
    let start = Instant::now();
    let sockets = loop {
        let s = edge::sockets::read(&host).expect("the namespace's /proc/<pid>/net/tcp");
        let ports: BTreeSet<u16> = s.iter().map(|s| s.port).collect();
        if [22, 23, 5900].iter().all(|p| ports.contains(p)) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "listeners never showed: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Nothing of this machine's own network namespace shows.
    let ports: BTreeSet<u16> = sockets.iter().map(|s| s.port).collect();
    assert_eq!(ports, [22, 23, 5900].into_iter().collect(), "{sockets:?}");
    let facts = edge::scan(&host);
    let check = edge::judge::remote_access(&facts, &Expectations::default());
    assert_eq!(check.verdict, Fail);
    assert!(
        check.evidence.contains(":22") && check.evidence.contains(":23"),
        "{}",
        check.evidence
    );
    assert!(
        !check.evidence.contains("5900"),
        "loopback only: {}",
        check.evidence
    );
    drop(namespace);
    let _ = std::fs::remove_dir_all(root);
}
