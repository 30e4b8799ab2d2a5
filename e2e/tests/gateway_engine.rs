//! The generated gateway configuration on the real engine: Debian's nginx with
//! ModSecurity v3 and the OWASP Core Rule Set, on loopback in front of a small
//! backend (make test installs the packages).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use iotposture::{
    api::HttpSettings,
    gateway::{
        config::{Layout, generate},
        exporter::{Counters, Tail},
        settings::GatewaySettings,
    },
};
use iotposture_e2e::waf::{Nginx, free_port};

/// A backend that answers every request with 200 and a plain session cookie,
/// 401 to a wrong password, and slowly at /slow.
fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 65536];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                if request.starts_with("GET /slow") {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                let response: &[u8] = if request.contains("password=wrong") {
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                } else {
                    b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc123; Path=/\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = stream.write_all(response);
            });
        }
    });
    port
}

type Gateway = Nginx;

fn gateway(http: &HttpSettings) -> Gateway {
    // ModSecurity's rule parser takes paths without spaces or brackets.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("iotposture-gw-{}-{n}", std::process::id()));
    let listen = free_port();
    let layout = Layout::debian(listen, backend(), dir.to_str().unwrap());
    let config = generate(
        &GatewaySettings::from_spec(http).expect("valid http settings"),
        &layout,
    );
    Nginx::start(
        &dir,
        &config.nginx,
        layout.rules_file.as_ref(),
        &config.modsecurity,
        listen,
    )
}

/// Asserts that the exporter, reading the gateway's audit log, shows these
/// series. nginx writes the entry in its log phase, after the response, so
/// the last entries may land a moment later.
fn assert_exported(gw: &Gateway, series: &[&str]) {
    let counters = Counters::default();
    let mut tail = Tail::new(&gw.dir.join("modsecurity-audit.log"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for line in tail.read_lines().unwrap() {
            counters.record_line(&line);
        }
        let text = counters.encode();
        let missing: Vec<_> = series.iter().filter(|s| !text.contains(*s)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one request; returns the status code and the raw response head.
fn send(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    send_from("127.0.0.1", gw, method, target, headers, body)
}

/// As `send`, from another loopback address: another client to the gateway.
fn send_from(
    source: &str,
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&gw.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: gateway.plant.svc\r\nConnection: close\r\nUser-Agent: iotposture-test\r\nAccept: */*\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    (code, head)
}

#[test]
fn benign_traffic_passes_untouched_and_cookies_are_hardened() {
    let gw = gateway(&HttpSettings::default());
    let (code, head) = send(&gw, "GET", "/static/app.js", &[], "");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Set-Cookie: sid=abc123; Path=/; Secure; HttpOnly; SameSite=Strict"),
        "{head}"
    );
    let json = r#"{"sensor":"line-1","temperature":21.5,"unit":"C"}"#;
    assert_eq!(
        send(
            &gw,
            "POST",
            "/api/readings",
            &[("Content-Type", "application/json")],
            json
        )
        .0,
        200
    );
    let form = "username=operator&password=correct-horse-battery";
    assert_eq!(
        send(
            &gw,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form
        )
        .0,
        200
    );
}

#[test]
fn injection_is_blocked() {
    let gw = gateway(&HttpSettings::default());
    assert_eq!(
        send(&gw, "GET", "/api/readings?id=1%27%20OR%201=1--", &[], "").0,
        403,
        "SQL injection"
    );
    assert_eq!(
        send(
            &gw,
            "GET",
            "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
            &[],
            ""
        )
        .0,
        403,
        "XSS"
    );
    let form = "comment=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E";
    assert_eq!(
        send(
            &gw,
            "POST",
            "/comments",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form
        )
        .0,
        403,
        "XSS in a form body"
    );
    assert_exported(
        &gw,
        &[
            "iotposture_gateway_blocked_attacks_total{attack=\"sqli\"} 1",
            "iotposture_gateway_blocked_attacks_total{attack=\"xss\"} 2",
            "iotposture_gateway_audit_lines_unreadable_total 0",
        ],
    );
}

#[test]
fn session_ids_in_urls_and_unknown_methods_are_refused() {
    let gw = gateway(&HttpSettings::default());
    assert_eq!(send(&gw, "GET", "/account?sid=abc123", &[], "").0, 400);
    assert_eq!(
        send(&gw, "GET", "/account;jsessionid=abc123", &[], "").0,
        400
    );
    assert_eq!(
        send(&gw, "GET", "/account?PHPSESSID=abc123", &[], "").0,
        400
    );
    assert_eq!(
        send(&gw, "GET", "/account?side=left", &[], "").0,
        200,
        "a parameter that merely starts like one"
    );
    assert_eq!(send(&gw, "TRACE", "/", &[], "").0, 405);
}

#[test]
fn oversized_bodies_and_floods_are_refused() {
    let http = HttpSettings {
        max_body_size: "1k".into(),
        requests_per_second: 1,
        burst: 2,
        ..HttpSettings::default()
    };
    let gw = gateway(&http);
    let big = "a".repeat(5000);
    assert_eq!(
        send(
            &gw,
            "POST",
            "/upload",
            &[("Content-Type", "text/plain")],
            &big
        )
        .0,
        413
    );
    let codes: Vec<u16> = (0..8).map(|_| send(&gw, "GET", "/", &[], "").0).collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(codes[0], 200, "{codes:?}");
}

#[test]
fn cross_site_state_changes_are_refused() {
    let http = HttpSettings {
        allowed_origins: vec!["https://ui.example.com".into()],
        ..HttpSettings::default()
    };
    let gw = gateway(&http);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let with_origin = |origin: &'static str| {
        let mut h = form.to_vec();
        h.push(("Origin", origin));
        h
    };
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(
            send(
                &gw,
                method,
                "/settings",
                &with_origin("https://evil.example"),
                "a=1"
            )
            .0,
            403,
            "{method}"
        );
    }
    assert_eq!(
        send(
            &gw,
            "GET",
            "/settings",
            &[("Origin", "https://evil.example")],
            ""
        )
        .0,
        200,
        "reads are not state changes"
    );
    assert_eq!(
        send(
            &gw,
            "POST",
            "/settings",
            &with_origin("https://ui.example.com"),
            "a=1"
        )
        .0,
        200,
        "an allowed origin"
    );
    assert_eq!(
        send(
            &gw,
            "POST",
            "/settings",
            &with_origin("http://gateway.plant.svc"),
            "a=1"
        )
        .0,
        200,
        "the same origin"
    );
    assert_eq!(
        send(&gw, "POST", "/settings", &form, "a=1").0,
        200,
        "no Origin: not a browser's cross-site request"
    );
}

#[test]
fn repeated_failed_logins_lock_out_that_client_only() {
    let http: HttpSettings = serde_saphyr::from_str(
        "{loginPath: /login, lockout: {maxFailures: 3, window: 1m, duration: 3s}}",
    )
    .unwrap();
    let gw = gateway(&http);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let login = |source: &str, password: &str| {
        send_from(
            source,
            &gw,
            "POST",
            "/login",
            &form,
            &format!("username=operator&password={password}"),
        )
        .0
    };
    let failures: Vec<u16> = (0..3).map(|_| login("127.0.0.1", "wrong")).collect();
    assert_eq!(failures, [401, 401, 401]);
    assert_eq!(
        login("127.0.0.1", "right"),
        429,
        "locked out, even with the right password"
    );
    let log = std::fs::read_to_string(gw.dir.join("error.log")).unwrap();
    assert!(
        log.contains("client locked out of login"),
        "the lockout rule refused it, not the rate limit: {log}"
    );
    assert_eq!(
        send(&gw, "GET", "/dashboard", &[], "").0,
        200,
        "only the login is refused"
    );
    assert_eq!(
        login("127.0.0.2", "right"),
        200,
        "another client still logs in"
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        login("127.0.0.1", "right"),
        200,
        "the lockout ends after its duration"
    );
    // Two failures, a success does not reset the count, and a third locks.
    assert_eq!(login("127.0.0.3", "wrong"), 401);
    assert_eq!(login("127.0.0.3", "wrong"), 401);
    assert_eq!(login("127.0.0.3", "wrong"), 401);
    assert_eq!(login("127.0.0.3", "wrong"), 429);
    assert_exported(
        &gw,
        &[
            "iotposture_gateway_failed_logins_total 6",
            "iotposture_gateway_lockouts_total 2",
            "iotposture_gateway_locked_out_requests_total 2",
        ],
    );
}

#[test]
fn unlisted_body_types_are_refused_and_samesite_follows_the_spec() {
    let http: HttpSettings =
        serde_saphyr::from_str("{allowedContentTypes: [application/json], sameSite: Lax}").unwrap();
    let gw = gateway(&http);
    let json = [("Content-Type", "application/json; charset=utf-8")];
    assert_eq!(send(&gw, "POST", "/api/readings", &json, "{}").0, 200);
    let xml = [("Content-Type", "application/xml")];
    assert_eq!(send(&gw, "POST", "/api/readings", &xml, "<a/>").0, 415);
    assert_eq!(
        send(&gw, "POST", "/api/ping", &[], "").0,
        200,
        "no body, no type needed"
    );
    let (code, head) = send(&gw, "GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(head.contains("SameSite=Lax"), "{head}");
}

#[test]
fn one_worker_keeps_the_lockout_count_in_one_place() {
    // ModSecurity v3 keeps collections in each worker's memory; with two
    // workers a guesser's attempts would be split between counts.
    let config = generate(
        &GatewaySettings::from_spec(&serde_saphyr::from_str("{loginPath: /login}").unwrap())
            .unwrap(),
        &Layout::debian(8080, 18080, "/tmp/x"),
    );
    assert!(config.nginx.contains("\nworker_processes 1;\n"));
    assert!(
        config.modsecurity.contains("id:10105"),
        "the default lockout applies"
    );
}

#[test]
fn one_client_cannot_hold_more_requests_open_than_allowed() {
    let http: HttpSettings = serde_saphyr::from_str("{connectionsPerClient: 2}").unwrap();
    let gw = gateway(&http);
    let gw = std::sync::Arc::new(gw);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || send(&gw, "GET", "/slow", &[], "").0)
        })
        .collect();
    // While those are in flight, another client is served.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        send_from("127.0.0.2", &gw, "GET", "/", &[], "").0,
        200,
        "per client: others are not affected"
    );
    let mut codes: Vec<u16> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    codes.sort();
    assert_eq!(
        codes,
        [200, 200, 429],
        "the third request in flight is refused"
    );
}

#[test]
fn media_types_with_symbols_pass_as_declared() {
    let http: HttpSettings =
        serde_saphyr::from_str("{allowedContentTypes: [application/ld+json]}").unwrap();
    let gw = gateway(&http);
    let ld = [("Content-Type", "application/ld+json")];
    assert_eq!(send(&gw, "POST", "/api/things", &ld, "{}").0, 200);
    // `+` is taken literally, not as "one or more d".
    let other = [("Content-Type", "application/lddjson")];
    assert_eq!(send(&gw, "POST", "/api/things", &other, "{}").0, 415);
}

#[test]
fn a_changed_lockout_takes_effect_without_a_restart() {
    // The gateway container's own entry point, on the real engine: the
    // configuration files change in place, as the kubelet updates a ConfigMap.
    let dir = std::env::temp_dir().join(format!("iotposture-gw-reload-{}", std::process::id()));
    let listen = free_port();
    let layout = Layout::debian(listen, backend(), dir.to_str().unwrap());
    let lockout = |max: u32| {
        let http: HttpSettings = serde_saphyr::from_str(&format!(
            "{{loginPath: /login, lockout: {{maxFailures: {max}, window: 1m, duration: 1m}}}}"
        ))
        .unwrap();
        generate(&GatewaySettings::from_spec(&http).unwrap(), &layout)
    };
    let first = lockout(10);
    let gw = Nginx::start_supervised(
        &dir,
        &first.nginx,
        layout.rules_file.as_ref(),
        &first.modsecurity,
        listen,
    );
    let login = [("Content-Type", "application/x-www-form-urlencoded")];
    let fail = |from: &str| send_from(from, &gw, "POST", "/login", &login, "password=wrong").0;
    assert_eq!([fail("127.0.0.2"), fail("127.0.0.2")], [401, 401]);
    assert_eq!(fail("127.0.0.2"), 401, "ten failures allowed at first");

    let second = lockout(2);
    std::fs::write(&layout.rules_file, &second.modsecurity).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.startup_log().contains("nginx reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", gw.startup_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The same nginx master (no restart) now locks out after two failures,
    // once its new worker has taken over from the old one.
    let master = || std::fs::read_to_string(dir.join("nginx.pid")).unwrap();
    let before = master();
    let mut client = 3;
    loop {
        let from = format!("127.0.0.{client}");
        let codes: Vec<u16> = (0..3).map(|_| fail(&from)).collect();
        if codes == [401, 401, 429] {
            break;
        }
        assert!(Instant::now() < deadline, "{codes:?}: {}", gw.startup_log());
        client += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(master(), before, "nginx was restarted, not reloaded");
    let locked = format!("127.0.0.{client}");

    // A broken file is not loaded: the running configuration stays.
    std::fs::write(&layout.rules_file, "SecRuleEngine Sideways\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.startup_log().contains("fails nginx -t") {
        assert!(Instant::now() < deadline, "{}", gw.startup_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(send(&gw, "GET", "/", &[], "").0, 200);
    assert_eq!(fail(&locked), 429, "still the second configuration");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Mostly what a user means, sometimes what breaks out of quotes.
    fn sometimes_wrong(
        good: impl Strategy<Value = String> + 'static,
    ) -> impl Strategy<Value = String> {
        prop_oneof![
            8 => good,
            1 => ".{0,30}",
            1 => prop::sample::select(vec![
                "a\"b", "x;deny all;", "$host", "%{tx.x}", "/login'", "2g", "0", "{}",
            ]).prop_map(String::from),
        ]
    }

    fn settings() -> impl Strategy<Value = HttpSettings> {
        let path = sometimes_wrong("/[a-z0-9._~-]{1,10}(/[a-z0-9]{1,8})?");
        let duration = || sometimes_wrong("[1-9][0-9]{0,2}[smh]|[1-9]h[1-5][0-9]m");
        let size = sometimes_wrong("[1-9][0-9]{0,3}[kKmM]?|1g");
        let method = sometimes_wrong(
            prop::sample::select(vec![
                "GET", "POST", "PUT", "PATCH", "DELETE", "M-SEARCH", "PROPFIND",
            ])
            .prop_map(String::from),
        );
        let origin = sometimes_wrong("https?://[a-z0-9.-]{1,20}(:[1-9][0-9]{1,4})?");
        let media = sometimes_wrong(
            "(application|text|image|multipart)/[a-z0-9]{1,10}([.+-][a-z0-9]{1,6})?",
        );
        (
            prop::option::of(path),
            prop::option::of((1i32..101, duration(), duration())),
            (1i32..5, 1i32..101),
            size,
            prop::collection::vec(method, 1..4),
            prop::collection::vec(origin, 0..3),
            prop::collection::vec(media, 1..4),
            prop::collection::vec(900_000i32..1_000_000, 0..2),
        )
            .prop_map(
                |(login, lockout, (paranoia, threshold), body, methods, origins, types, rules)| {
                    HttpSettings {
                        login_path: login,
                        lockout: lockout.map(|(max, window, duration)| iotposture::api::Lockout {
                            max_failures: max,
                            window,
                            duration,
                        }),
                        paranoia_level: paranoia,
                        anomaly_threshold: threshold,
                        max_body_size: body,
                        allowed_methods: methods,
                        allowed_origins: origins,
                        allowed_content_types: types,
                        rule_exclusions: rules,
                        ..HttpSettings::default()
                    }
                },
            )
    }

    proptest! {
        // Each case runs nginx -t with ModSecurity and the CRS loaded
        // (a fraction of a second); 64 cases keep make test quick.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every configuration the generator writes passes nginx -t, with the
        /// ModSecurity module and the CRS loaded; what it cannot write
        /// as meant is refused before it gets there.
        #[test]
        fn every_configuration_passes_nginx_t_or_is_refused(http in settings()) {
            // Refused settings never reach nginx; the cases counted are those accepted.
            let settings = GatewaySettings::from_spec(&http);
            prop_assume!(settings.is_ok());
            let settings = settings.unwrap();
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("iotposture-gw-prop-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let layout = Layout::debian(free_port(), free_port(), dir.to_str().unwrap());
            let config = generate(&settings, &layout);
            std::fs::write(dir.join("nginx.conf"), &config.nginx).unwrap();
            std::fs::write(&layout.rules_file, &config.modsecurity).unwrap();
            let out = std::process::Command::new("nginx")
                .arg("-t").arg("-q")
                .arg("-c").arg(dir.join("nginx.conf"))
                .arg("-e").arg(dir.join("test.log"))
                .output()
                .expect("nginx on PATH");
            let log = std::fs::read_to_string(dir.join("test.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            prop_assert!(
                out.status.success(),
                "nginx -t refused the configuration for {:?}: {}{}",
                http,
                String::from_utf8_lossy(&out.stderr),
                log
            );
        }
    }
}
