//! Gateway benchmark (not a test): what the WAF gateway (Debian's nginx +
//! ModSecurity v3 + CRS with the generated configuration) adds to latency and
//! takes from throughput, against the same backend reached directly, in one
//! run on loopback so that the ratios hold on a noisy machine. Writes
//! bench/results/gateway.json. Needs nginx with the ModSecurity module and
//! the CRS (make test installs them).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use iotposture::{
    api::HttpSettings,
    gateway::{
        config::{Layout, generate},
        settings::GatewaySettings,
    },
};
use iotposture_e2e::{
    bench::{summary, timed_requests, write_report},
    waf::{Nginx, free_port},
};
use serde_json::{Value, json};

const CONCURRENCY: usize = 8;
const REQUESTS: usize = 4000;
const READING: &str =
    r#"{"sensor":"line-1","temperature":21.5,"unit":"C","at":"2026-11-26T12:00:00Z"}"#;

/// The application: answers every request with a small JSON document.
async fn backend() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .header("set-cookie", "sid=abc123; Path=/")
                            .body(Full::new(Bytes::from_static(READING.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    method: &'static str,
    body: &'static str,
}

/// One kept-alive connection sending `count` requests in a row.
async fn worker(scenario: Arc<Scenario>, count: usize) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(scenario.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    timed_requests(TokioIo::new(tcp), scenario.name, count, || {
        Request::builder()
            .method(scenario.method)
            .uri("/api/readings?line=1")
            .header("host", "dashboard.plant.svc")
            .header("user-agent", "iotposture-bench")
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(scenario.body.as_bytes())))
            .unwrap()
    })
    .await
}

async fn run(scenario: Scenario, requests: usize, concurrency: usize) -> Value {
    let scenario = Arc::new(scenario);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(scenario.clone(), requests / concurrency)))
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    summary(all, start.elapsed())
}

/// Runs nginx with the generated configuration in `dir`; `waf` false turns
/// ModSecurity off and leaves the rest.
fn start_nginx(
    dir: &std::path::Path,
    http: &HttpSettings,
    backend: SocketAddr,
    waf: bool,
) -> Nginx {
    let listen = free_port();
    let layout = Layout::debian(listen, backend.port(), dir.to_str().unwrap_or("/tmp"));
    let config = generate(
        &GatewaySettings::from_spec(http).expect("valid http settings"),
        &layout,
    );
    let nginx_conf = if waf {
        config.nginx
    } else {
        config.nginx.replace("modsecurity on;", "modsecurity off;")
    };
    Nginx::start(
        dir,
        &nginx_conf,
        layout.rules_file.as_ref(),
        &config.modsecurity,
        listen,
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/results/gateway.json".into());
    let backend = backend().await?;

    // The default settings, with the rate limit lifted: it would measure
    // itself, not the WAF.
    let http = HttpSettings {
        requests_per_second: 100_000,
        burst: 100_000,
        ..HttpSettings::default()
    };
    let dir = std::env::temp_dir().join(format!("iotposture-bench-gw-{}", std::process::id()));
    // The gateway, and the same nginx with ModSecurity off: how much of the
    // cost is the proxy and how much the rule set.
    let waf = start_nginx(&dir.join("waf"), &http, backend, true);
    let plain = start_nginx(&dir.join("proxy"), &http, backend, false);
    let (gateway, proxy) = (waf.addr, plain.addr);

    let scenarios = || {
        [
            ("direct_get", backend, "GET", ""),
            ("proxy_only_get", proxy, "GET", ""),
            ("gateway_get", gateway, "GET", ""),
            ("direct_post_json", backend, "POST", READING),
            ("gateway_post_json", gateway, "POST", READING),
        ]
        .map(|(name, addr, method, body)| Scenario {
            name,
            addr,
            method,
            body,
        })
    };
    for s in scenarios() {
        run(s, 400, CONCURRENCY).await;
    }
    let mut results = serde_json::Map::new();
    for s in scenarios() {
        let name = s.name;
        let r = run(s, REQUESTS, CONCURRENCY).await;
        eprintln!("{name}: {r}");
        results.insert(name.into(), r);
    }
    // One request at a time: the cost of one request, without queueing.
    let mut serial = serde_json::Map::new();
    for s in scenarios() {
        let name = s.name;
        let r = run(s, REQUESTS / 4, 1).await;
        eprintln!("{name} (serial): {r}");
        serial.insert(name.into(), r);
    }
    drop((waf, plain));
    let _ = std::fs::remove_dir_all(&dir);

    let figure = |name: &str, key: &str| results[name][key].as_f64().unwrap_or(0.0);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mut comparison = serde_json::Map::new();
    for kind in ["get", "post_json"] {
        let (direct, through) = (format!("direct_{kind}"), format!("gateway_{kind}"));
        comparison.insert(
            kind.into(),
            json!({
                "added_p50_us": figure(&through, "p50_us") - figure(&direct, "p50_us"),
                "p50_ratio": round(figure(&through, "p50_us") / figure(&direct, "p50_us").max(1.0)),
                "throughput_ratio": round(figure(&through, "throughput_rps") / figure(&direct, "throughput_rps").max(1.0)),
            }),
        );
    }
    let report = json!({
        "benchmark": "gateway",
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "concurrency": CONCURRENCY,
        "requests_per_scenario": REQUESTS,
        "gateway": "nginx (1 worker) + ModSecurity v3 + OWASP CRS, paranoia level 1",
        "scenarios": results,
        "gateway_against_direct": comparison,
        "serial_scenarios": serial,
        "serial_added_p50_us_get": serial["gateway_get"]["p50_us"].as_f64().unwrap_or(0.0)
            - serial["direct_get"]["p50_us"].as_f64().unwrap_or(0.0),
        "proxy_only_p50_us_of_gateway_get": figure("proxy_only_get", "p50_us"),
    });
    write_report(&out, &report)
}
