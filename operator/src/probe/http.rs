//! The HTTP probe of a web port (items I-1, II-1, III-2, III-3, III-4,
//! III-8): harmless requests whose answers show whether the gateway's rules
//! hold. Nothing destructive is sent: canaries go to a path of our own as
//! query parameters, the cross-site POST carries no data, and the lockout
//! check logs in as a dedicated probe account that no person uses.

use std::{
    net::SocketAddr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use hyper::{
    Request,
    body::Bytes,
    header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;

use super::tls::FixedVerdict;

/// The account the lockout check fails to log in as.
pub const PROBE_USER: &str = "iotposture-probe";
/// A path of our own, so that no request lands on a real page.
const PROBE_PATH: &str = "/.iotposture-probe";
const PROBE_ORIGIN: &str = "https://cross-site.iotposture-probe.invalid";

#[derive(Clone, Debug)]
pub struct Target {
    /// Host header and SNI: the Service's name.
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Per request, connection and TLS handshake included.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What the component declares that the probe needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub login_path: Option<String>,
    /// Run the lockout and fixation checks this round (they log in).
    pub login_checks: bool,
    /// Failures after which the gateway must lock the client out.
    pub max_failures: u32,
    /// Test account for the session fixation check: none declared, or the
    /// reason the declared one cannot be used.
    pub credentials: Result<Option<Credentials>, String>,
}

/// A test account, and the only TLS client its password may travel with:
/// one that verifies the port's certificate against the issuer's CA.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub verified_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "Credentials {{ username: {:?} }}", self.username)
    }
}

/// A TLS client that accepts only certificates chaining to `trust` and
/// carrying the name it dials.
pub fn verifying_tls(
    trust: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in trust {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the port against".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            login_path: None,
            login_checks: true,
            max_failures: 5,
            credentials: Ok(None),
        }
    }
}

/// One check's outcome, with what was seen.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "evidence")]
pub enum Observation {
    Pass(String),
    Fail(String),
    Unknown(String),
}

/// Everything one probe of a port showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub endpoint: String,
    /// III-2: Secure, HttpOnly and SameSite on every cookie.
    pub cookies: Observation,
    /// III-3: session identifiers in URLs are refused.
    pub session_in_url: Observation,
    /// II-1, III-8: SQL injection and XSS canaries are blocked.
    pub injection: Observation,
    /// III-8: a cross-site state change is refused.
    pub cross_site: Observation,
    /// I-1: repeated failed logins lock the client out.
    pub lockout: Observation,
    /// III-4: the session cookie changes at login.
    pub fixation: Observation,
}

/// One answer: its status and Set-Cookie headers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exchange {
    pub status: u16,
    pub set_cookies: Vec<String>,
}

impl Finding {
    /// Every check Unknown, for a port the probe could not reach.
    pub fn unreachable(endpoint: String, why: String) -> Self {
        Self::all(
            endpoint.clone(),
            Observation::Unknown(format!("{endpoint}: {why}")),
        )
    }

    /// Every check Fail, for a port the API already shows broken (no
    /// Service, no ready pod): nothing can be served there.
    pub fn fault(endpoint: String, why: String) -> Self {
        Self::all(
            endpoint.clone(),
            Observation::Fail(format!("{endpoint}: {why}")),
        )
    }

    fn all(endpoint: String, u: Observation) -> Self {
        Self {
            endpoint,
            cookies: u.clone(),
            session_in_url: u.clone(),
            injection: u.clone(),
            cross_site: u.clone(),
            lockout: u.clone(),
            fixation: u,
        }
    }
}

/// The probe's TLS client for its harmless requests, built once: any
/// certificate is accepted (the TLS probe judges them), only TLS 1.2 and 1.3
/// are offered. Nothing secret is ever sent with it.
static TLS_CONFIG: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(FixedVerdict::Accept))
    .with_no_client_auth();
    Ok(Arc::new(config))
});

/// Sends one harmless request on a connection of its own.
pub async fn request(
    target: &Target,
    settings: &Settings,
    method: &str,
    path: &str,
    headers: &[(hyper::header::HeaderName, String)],
    body: &str,
) -> Result<Exchange, String> {
    let config = TLS_CONFIG.clone()?;
    request_over(target, settings, &config, method, path, headers, body).await
}

/// Sends one request with the TLS client `tls` (when the port speaks TLS).
async fn request_over(
    target: &Target,
    settings: &Settings,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(hyper::header::HeaderName, String)],
    body: &str,
) -> Result<Exchange, String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, &target.name)
        .header(USER_AGENT, "iotposture-probe");
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    if !body.is_empty() || method == "POST" {
        builder = builder.header(CONTENT_LENGTH, body.len());
    }
    let body = http_body_util::Full::new(Bytes::from(body.to_string()));
    let request = builder.body(body).map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        if target.tls {
            let config = tls.clone();
            let name = ServerName::try_from(target.name.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    };
    tokio::time::timeout(settings.request_timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {:?}", settings.request_timeout))?
}

async fn send<IO>(io: IO, request: Request<http_body_util::Full<Bytes>>) -> Result<Exchange, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = sender.send_request(request).await;
    driver.abort();
    let response = result.map_err(|e| format!("no HTTP answer: {e}"))?;
    Ok(Exchange {
        status: response.status().as_u16(),
        set_cookies: response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect(),
    })
}

/// Probes one web port. Requests go one after the other, so a port sees at
/// most one probe request at a time.
pub async fn probe(target: &Target, settings: &Settings, plan: &Plan) -> Finding {
    let endpoint = format!("{} ({})", target.name, target.addr);
    let get = |path: String| async move { request(target, settings, "GET", &path, &[], "").await };
    let home = match get("/".into()).await {
        Ok(e) => e,
        Err(why) => return Finding::unreachable(endpoint, why),
    };
    let mut cookies = home.set_cookies.clone();
    if let Some(login) = &plan.login_path
        && let Ok(page) = get(login.clone()).await
    {
        cookies.extend(page.set_cookies);
    }
    let session_query = get(format!("{PROBE_PATH}?sessionid=iotposture-probe")).await;
    let session_path = get(format!("{PROBE_PATH};jsessionid=iotposture-probe")).await;
    let sqli = get(format!("{PROBE_PATH}?id=1%27%20OR%20%271%27%3D%271")).await;
    let xss = get(format!(
        "{PROBE_PATH}?q=%3Cscript%3Ealert(%27iotposture%27)%3C%2Fscript%3E"
    ))
    .await;
    let cross_site = request(
        target,
        settings,
        "POST",
        PROBE_PATH,
        &[
            (ORIGIN, PROBE_ORIGIN.into()),
            (CONTENT_TYPE, "application/x-www-form-urlencoded".into()),
        ],
        "",
    )
    .await;
    // Fixation before lockout: once locked out, the test login would fail.
    let skipped = || Observation::Unknown("not checked this round".into());
    let fixation = match (&plan.login_path, &plan.credentials) {
        (None, _) => Observation::Unknown(
            "no loginPath declared: the session fixation check has nowhere to log in".into(),
        ),
        _ if !plan.login_checks => skipped(),
        (Some(path), Ok(Some(creds))) => check_fixation(target, settings, path, creds).await,
        (_, Err(why)) => Observation::Unknown(why.clone()),
        (_, Ok(None)) => Observation::Unknown(
            "no probeCredentialsSecret: without a test account the session fixation check cannot log in; attest it".into(),
        ),
    };
    let lockout = match &plan.login_path {
        None => Observation::Unknown(
            "no loginPath declared: the gateway cannot tell failed logins from other requests"
                .into(),
        ),
        _ if !plan.login_checks => skipped(),
        Some(path) => check_lockout(target, settings, path, plan.max_failures).await,
    };
    Finding {
        cookies: judge_cookies(&endpoint, &cookies),
        session_in_url: judge_refused(
            &endpoint,
            &[
                ("a session ID in the query string", &session_query),
                ("a session ID as a path parameter", &session_path),
            ],
            &[400, 403],
        ),
        injection: judge_refused(
            &endpoint,
            &[("a SQL injection canary", &sqli), ("an XSS canary", &xss)],
            &[403],
        ),
        cross_site: judge_refused(&endpoint, &[("a cross-site POST", &cross_site)], &[403]),
        lockout,
        fixation,
        endpoint,
    }
}

/// III-2: every cookie carries Secure, HttpOnly and a SameSite attribute.
pub fn judge_cookies(endpoint: &str, set_cookies: &[String]) -> Observation {
    if set_cookies.is_empty() {
        return Observation::Unknown(format!(
            "{endpoint}: no cookie was set on GET / or the login page, so there is nothing to judge"
        ));
    }
    let mut bad = Vec::new();
    for cookie in set_cookies {
        let mut parts = cookie.split(';').map(str::trim);
        let name = parts
            .next()
            .and_then(|p| p.split('=').next())
            .unwrap_or("?");
        let attributes: Vec<String> = parts.map(|p| p.to_ascii_lowercase()).collect();
        let has = |a: &str| {
            attributes
                .iter()
                .any(|p| p == a || p.starts_with(&format!("{a}=")))
        };
        let missing: Vec<&str> = [
            ("secure", "Secure"),
            ("httponly", "HttpOnly"),
            ("samesite", "SameSite"),
        ]
        .into_iter()
        .filter(|(key, _)| !has(key))
        .map(|(_, shown)| shown)
        .collect();
        if !missing.is_empty() {
            bad.push(format!("{name} lacks {}", missing.join(", ")));
        }
    }
    if bad.is_empty() {
        Observation::Pass(format!(
            "{endpoint}: {} cookies, all Secure, HttpOnly and SameSite",
            set_cookies.len()
        ))
    } else {
        Observation::Fail(format!("{endpoint}: cookie {}", bad.join("; ")))
    }
}

/// Each request must have been answered with one of `refused`.
pub fn judge_refused(
    endpoint: &str,
    answers: &[(&str, &Result<Exchange, String>)],
    refused: &[u16],
) -> Observation {
    let mut accepted = Vec::new();
    let mut unknown = Vec::new();
    for (what, answer) in answers {
        match answer {
            Ok(e) if refused.contains(&e.status) => {}
            Ok(e) => accepted.push(format!("{what} was answered {}", e.status)),
            Err(why) => unknown.push(format!("{what}: {why}")),
        }
    }
    if !accepted.is_empty() {
        return Observation::Fail(format!("{endpoint}: {}", accepted.join("; ")));
    }
    if !unknown.is_empty() {
        return Observation::Unknown(format!("{endpoint}: {}", unknown.join("; ")));
    }
    let whats: Vec<&str> = answers.iter().map(|(w, _)| *w).collect();
    Observation::Pass(format!("{endpoint}: refused {}", whats.join(" and ")))
}

/// I-1: up to `max_failures` + 1 failed logins as the probe account; the
/// gateway must answer 429 by then.
async fn check_lockout(
    target: &Target,
    settings: &Settings,
    path: &str,
    max_failures: u32,
) -> Observation {
    let mut statuses = Vec::new();
    for attempt in 0..=max_failures {
        let body = format!(
            "username={PROBE_USER}&password=wrong-{attempt}-{}",
            std::process::id()
        );
        let answer = request(
            target,
            settings,
            "POST",
            path,
            &[(CONTENT_TYPE, "application/x-www-form-urlencoded".into())],
            &body,
        )
        .await;
        match answer {
            Ok(e) => statuses.push(e.status),
            Err(why) => return Observation::Unknown(format!("{}: {why}", target.name)),
        }
        if statuses.last() == Some(&429) {
            break;
        }
    }
    judge_lockout(&target.name, path, max_failures, &statuses)
}

/// The statuses of consecutive failed logins, judged.
pub fn judge_lockout(
    endpoint: &str,
    path: &str,
    max_failures: u32,
    statuses: &[u16],
) -> Observation {
    let shown = statuses
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match statuses {
        [429, ..] => Observation::Pass(format!(
            "{endpoint}{path}: the probe account is still locked out from an earlier round (429)"
        )),
        [failures @ .., 429] if failures.iter().all(|s| *s == 401 || *s == 403) => {
            Observation::Pass(format!(
                "{endpoint}{path}: locked out after {} failed logins ({shown})",
                failures.len()
            ))
        }
        _ if statuses.iter().all(|s| *s == 401 || *s == 403) => Observation::Fail(format!(
            "{endpoint}{path}: {} failed logins in a row and no lockout ({shown}); expected 429 after {max_failures}",
            statuses.len()
        )),
        _ => Observation::Unknown(format!(
            "{endpoint}{path}: the answers were not those of failed logins ({shown}); is this the login endpoint, taking a form with username and password?"
        )),
    }
}

/// III-4: log in with the test account; the session cookie must change.
/// Only over TLS that verified the port's certificate: the password never
/// travels in plaintext or to a peer that could not prove its name.
async fn check_fixation(
    target: &Target,
    settings: &Settings,
    path: &str,
    credentials: &Credentials,
) -> Observation {
    if !target.tls {
        return Observation::Unknown(format!(
            "{}: the port is not TLS, and the test account's password is sent only over verified TLS",
            target.name
        ));
    }
    let tls = &credentials.verified_tls;
    let before = match request_over(target, settings, tls, "GET", path, &[], "").await {
        Ok(e) => e,
        Err(why) => return Observation::Unknown(format!("{}: {why}", target.name)),
    };
    let pairs = cookie_pairs(&before.set_cookies);
    let cookie_header = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut headers = vec![(
        CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_string(),
    )];
    if !cookie_header.is_empty() {
        headers.push((COOKIE, cookie_header));
    }
    let body = format!(
        "username={}&password={}",
        form_encode(&credentials.username),
        form_encode(&credentials.password)
    );
    let after = match request_over(target, settings, tls, "POST", path, &headers, &body).await {
        Ok(e) => e,
        Err(why) => return Observation::Unknown(format!("{}: {why}", target.name)),
    };
    judge_fixation(&target.name, &pairs, &after)
}

pub fn judge_fixation(
    endpoint: &str,
    before: &[(String, String)],
    login: &Exchange,
) -> Observation {
    if !(200..400).contains(&login.status) {
        return Observation::Unknown(format!(
            "{endpoint}: the test account's login was answered {}; check probeCredentialsSecret",
            login.status
        ));
    }
    let after = cookie_pairs(&login.set_cookies);
    if after.is_empty() {
        return Observation::Fail(format!(
            "{endpoint}: the login succeeded ({}) but issued no new session cookie",
            login.status
        ));
    }
    let kept: Vec<&str> = after
        .iter()
        .filter(|pair| before.contains(pair))
        .map(|(k, _)| k.as_str())
        .collect();
    if !kept.is_empty() {
        return Observation::Fail(format!(
            "{endpoint}: the session cookie {} kept its pre-login value across the login",
            kept.join(", ")
        ));
    }
    Observation::Pass(format!(
        "{endpoint}: the login issued new values for {}",
        after
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn cookie_pairs(set_cookies: &[String]) -> Vec<(String, String)> {
    set_cookies
        .iter()
        .filter_map(|c| {
            let (k, v) = c.split(';').next()?.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// An application/x-www-form-urlencoded value.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_judged_by_their_attributes() {
        let good = ["sid=1; Path=/; Secure; HttpOnly; SameSite=Strict".to_string()];
        assert!(matches!(judge_cookies("e", &good), Observation::Pass(_)));
        let plain = ["sid=1; Path=/".to_string()];
        assert_eq!(
            judge_cookies("e", &plain),
            Observation::Fail("e: cookie sid lacks Secure, HttpOnly, SameSite".into())
        );
        assert!(matches!(judge_cookies("e", &[]), Observation::Unknown(_)));
    }

    #[test]
    fn lockout_answers_are_judged() {
        let j = |s: &[u16]| judge_lockout("e", "/login", 3, s);
        assert!(matches!(j(&[401, 401, 401, 429]), Observation::Pass(_)));
        assert!(matches!(j(&[429]), Observation::Pass(_)));
        assert!(matches!(j(&[401, 401, 401, 401]), Observation::Fail(_)));
        assert!(matches!(j(&[404, 404, 404, 404]), Observation::Unknown(_)));
    }

    #[test]
    fn fixation_needs_a_new_session_value() {
        let before = vec![("sid".to_string(), "old".to_string())];
        let renewed = Exchange {
            status: 302,
            set_cookies: vec!["sid=new; Secure".into()],
        };
        assert!(matches!(
            judge_fixation("e", &before, &renewed),
            Observation::Pass(_)
        ));
        let fixed = Exchange {
            status: 200,
            set_cookies: vec!["sid=old".into()],
        };
        assert!(matches!(
            judge_fixation("e", &before, &fixed),
            Observation::Fail(_)
        ));
        let refused = Exchange {
            status: 401,
            set_cookies: vec![],
        };
        assert!(matches!(
            judge_fixation("e", &before, &refused),
            Observation::Unknown(_)
        ));
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
