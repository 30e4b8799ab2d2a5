//! A component's `http` settings, checked and typed: the only input of the
//! configuration generator. A value that could not be written into nginx or
//! ModSecurity as meant is refused here, naming its field, so the generator
//! never has to drop or guess anything.

use std::time::Duration;

use crate::api::{HttpSettings, SameSite, duration::parse_duration};

/// Largest request body the gateway may accept: ModSecurity's own ceiling
/// for `SecRequestBodyLimit`.
pub const MAX_BODY_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq)]
pub struct Lockout {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// Everything the generator writes, in the types it writes them as.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewaySettings {
    /// A path of `[A-Za-z0-9/._~-]` starting with `/`.
    pub login_path: Option<String>,
    /// The lockout in force; only with a login path.
    pub lockout: Option<Lockout>,
    pub paranoia_level: u8,
    pub anomaly_threshold: u32,
    pub max_body_bytes: u64,
    pub requests_per_second: u32,
    pub burst: u32,
    pub connections_per_client: u32,
    /// Upper-case HTTP method tokens.
    pub allowed_methods: Vec<String>,
    /// `scheme://host[:port]`, lower-case.
    pub allowed_origins: Vec<String>,
    /// `type/subtype`, lower-case, token characters only.
    pub allowed_content_types: Vec<String>,
    pub same_site: SameSite,
    pub rule_exclusions: Vec<u32>,
    pub probe_credentials_secret: Option<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self::from_spec(&HttpSettings::default()).expect("the defaults are valid")
    }
}

/// One refused value.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[error("http.{field} {value:?}: {why}")]
pub struct SettingError {
    /// The field under `http`, e.g. `loginPath` or `allowedContentTypes[1]`.
    pub field: String,
    pub value: String,
    pub why: &'static str,
}

fn refuse(field: impl Into<String>, value: impl ToString, why: &'static str) -> SettingError {
    SettingError {
        field: field.into(),
        value: value.to_string(),
        why,
    }
}

/// An HTTP method as the gateway's regex and the CRS list take it.
fn is_method(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// RFC 6838 restricted-name characters, less `$` (nginx variables): never a
/// quote, `|` or `%`, which nginx or ModSecurity would read as syntax.
fn is_media_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#&-^_.+".contains(&b))
}

fn in_range(field: &str, value: i32, low: i32, high: i32) -> Result<u32, SettingError> {
    if (low..=high).contains(&value) {
        Ok(value as u32)
    } else {
        Err(refuse(field, value, "out of range"))
    }
}

/// `1m`, `512k`, `1048576`: nginx size syntax, in bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, scale) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1 << 10),
        b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
        b'g' | b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// `scheme://host[:port]`, as browsers send it in `Origin`.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl GatewaySettings {
    pub fn from_spec(http: &HttpSettings) -> Result<Self, SettingError> {
        let login_path = match &http.login_path {
            Some(p) => {
                let safe = p.starts_with('/')
                    && p.len() <= 256
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/._~-".contains(&b));
                if !safe {
                    return Err(refuse(
                        "loginPath",
                        p,
                        "must start with / and use only letters, digits and / . _ ~ -",
                    ));
                }
                Some(p.clone())
            }
            None => None,
        };
        let lockout = match http.effective_lockout() {
            Some(l) if login_path.is_some() => {
                let duration = |field: &str, text: &str| {
                    parse_duration(text)
                        .ok()
                        .filter(|d| d.as_secs() >= 1)
                        .ok_or_else(|| {
                            refuse(
                                format!("lockout.{field}"),
                                text,
                                "must be a duration of at least 1s, such as 30s, 5m or 1h",
                            )
                        })
                };
                Some(Lockout {
                    max_failures: in_range("lockout.maxFailures", l.max_failures, 1, 100)?,
                    window: duration("window", &l.window)?,
                    duration: duration("duration", &l.duration)?,
                })
            }
            _ => None,
        };
        let max_body_bytes = parse_size(&http.max_body_size)
            .filter(|n| (1..=MAX_BODY_BYTES).contains(n))
            .ok_or_else(|| {
                refuse(
                    "maxBodySize",
                    &http.max_body_size,
                    "must be a size from 1 to 1g, such as 512k or 1m",
                )
            })?;
        let mut allowed_methods = Vec::new();
        for (i, m) in http.allowed_methods.iter().enumerate() {
            if !is_method(m) {
                return Err(refuse(
                    format!("allowedMethods[{i}]"),
                    m,
                    "must be an upper-case HTTP method such as GET",
                ));
            }
            allowed_methods.push(m.clone());
        }
        if allowed_methods.is_empty() {
            return Err(refuse(
                "allowedMethods",
                "[]",
                "must name at least one method",
            ));
        }
        let mut allowed_origins = Vec::new();
        for (i, o) in http.allowed_origins.iter().enumerate() {
            let o = o.to_ascii_lowercase();
            if !is_origin(&o) {
                return Err(refuse(
                    format!("allowedOrigins[{i}]"),
                    o,
                    "must be an origin such as https://ui.example.com or https://ui.example.com:8443",
                ));
            }
            allowed_origins.push(o);
        }
        let mut allowed_content_types = Vec::new();
        for (i, t) in http.allowed_content_types.iter().enumerate() {
            let valid = t
                .split_once('/')
                .is_some_and(|(ty, sub)| is_media_name(ty) && is_media_name(sub));
            if !valid {
                return Err(refuse(
                    format!("allowedContentTypes[{i}]"),
                    t,
                    "must be a media type such as application/json, without parameters",
                ));
            }
            allowed_content_types.push(t.to_ascii_lowercase());
        }
        let mut rule_exclusions = Vec::new();
        for (i, id) in http.rule_exclusions.iter().enumerate() {
            rule_exclusions.push(in_range(
                &format!("ruleExclusions[{i}]"),
                *id,
                1,
                9_999_999,
            )?);
        }
        Ok(Self {
            login_path,
            lockout,
            paranoia_level: in_range("paranoiaLevel", http.paranoia_level, 1, 4)? as u8,
            anomaly_threshold: in_range("anomalyThreshold", http.anomaly_threshold, 1, 100)?,
            max_body_bytes,
            requests_per_second: in_range(
                "requestsPerSecond",
                http.requests_per_second,
                1,
                100_000,
            )?,
            burst: in_range("burst", http.burst, 0, 100_000)?,
            connections_per_client: in_range(
                "connectionsPerClient",
                http.connections_per_client,
                1,
                100_000,
            )?,
            allowed_methods,
            allowed_origins,
            allowed_content_types,
            same_site: http.same_site,
            rule_exclusions,
            probe_credentials_secret: http.probe_credentials_secret.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(edit: impl FnOnce(&mut HttpSettings)) -> SettingError {
        let mut http = HttpSettings::default();
        edit(&mut http);
        GatewaySettings::from_spec(&http).unwrap_err()
    }

    #[test]
    fn defaults_are_typed() {
        let s = GatewaySettings::default();
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.lockout, None, "no lockout without a login path");
        let with_login = GatewaySettings::from_spec(&HttpSettings {
            login_path: Some("/login".into()),
            ..HttpSettings::default()
        })
        .unwrap();
        assert_eq!(
            with_login.lockout,
            Some(Lockout {
                max_failures: 5,
                window: Duration::from_secs(300),
                duration: Duration::from_secs(900)
            })
        );
    }

    #[test]
    fn media_types_with_symbols_are_kept() {
        let s = GatewaySettings::from_spec(&HttpSettings {
            allowed_content_types: vec!["application/ld+json".into(), "Text/Plain".into()],
            ..HttpSettings::default()
        })
        .unwrap();
        assert_eq!(
            s.allowed_content_types,
            ["application/ld+json", "text/plain"]
        );
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_field() {
        let e = refused(|h| h.login_path = Some("/log in\"".into()));
        assert_eq!(e.field, "loginPath");
        assert!(
            e.to_string()
                .starts_with("http.loginPath \"/log in\\\"\": must start with /"),
            "{e}"
        );
        assert_eq!(
            refused(|h| h.max_body_size = "2g".into()).field,
            "maxBodySize"
        );
        assert_eq!(
            refused(|h| h.max_body_size = "0".into()).field,
            "maxBodySize"
        );
        assert_eq!(
            refused(|h| h.allowed_methods = vec!["GET".into(), "get".into()]).field,
            "allowedMethods[1]"
        );
        assert_eq!(
            refused(|h| h.allowed_methods = vec![]).field,
            "allowedMethods"
        );
        assert_eq!(
            refused(|h| h.allowed_content_types = vec!["json".into()]).field,
            "allowedContentTypes[0]"
        );
        assert_eq!(
            refused(|h| h.allowed_content_types = vec!["text/plain; charset=x".into()]).field,
            "allowedContentTypes[0]"
        );
        assert_eq!(
            refused(|h| h.allowed_origins = vec!["ui.example.com".into()]).field,
            "allowedOrigins[0]"
        );
        assert_eq!(
            refused(|h| h.allowed_origins = vec!["https://a\"b".into()]).field,
            "allowedOrigins[0]"
        );
        assert_eq!(refused(|h| h.paranoia_level = 5).field, "paranoiaLevel");
        assert_eq!(
            refused(|h| {
                h.login_path = Some("/login".into());
                h.lockout = Some(crate::api::Lockout {
                    max_failures: 3,
                    window: "5x".into(),
                    duration: "1m".into(),
                });
            })
            .field,
            "lockout.window"
        );
    }

    #[test]
    fn sizes_in_nginx_syntax() {
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("3M"), Some(3 << 20));
        assert_eq!(parse_size("100"), Some(100));
        for bad in ["", "k", "1.5m", "-1", "1t", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
