//! Generators of IoTSystem-shaped input for property tests: mostly
//! plausible, often wrong in one place (names that repeat or break the
//! alphabet, ports out of range, flows to nowhere, subjects that mean
//! everybody, settings that would break out of quotes).

use proptest::prelude::*;
use serde_json::{Value, json};

/// A name from a small pool, so that duplicates and dangling references
/// happen often; sometimes one that breaks the rules.
pub fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["sensor", "gateway", "dash", "api", "a"]).prop_map(String::from),
        1 => "[A-Za-z0-9_ .\"'-]{0,50}",
    ]
}

/// Text that may carry quotes, braces, newlines and non-ASCII.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z/._~-]{0,20}",
        1 => ".{0,40}",
        1 => Just("/login\"; deny all; #".to_string()),
        1 => Just("application/ld+json".to_string()),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    (
        name(),
        prop_oneof![Just(8883i64), Just(1900), Just(22), -5i64..70000],
        prop_oneof![8 => prop::sample::select(vec!["TCP", "UDP"]), 1 => Just("SCTP")],
        any::<bool>(),
        any::<bool>(),
        prop::option::of(-5i64..70000),
    )
        .prop_map(|(name, port, protocol, tls, http, backend)| {
            let mut p =
                json!({"name": name, "port": port, "protocol": protocol, "tls": tls, "http": http});
            if let Some(b) = backend {
                p["backendPort"] = json!(b);
            }
            p
        })
}

fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (name(), name()).prop_map(|(k, v)| json!({"matchLabels": {"app": format!("{k}{v}")}})),
        1 => Just(json!({})),
        1 => (name(), prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Near"]))
            .prop_map(|(k, op)| json!({"matchExpressions": [{"key": k, "operator": op, "values": ["x"]}]})),
    ]
}

pub fn http_settings() -> impl Strategy<Value = Value> {
    (
        prop::option::of(text()),
        prop::option::of((0i64..200, text(), text())),
        -1i64..6,
        prop_oneof![
            Just("1m".to_string()),
            Just("2g".into()),
            Just("0".into()),
            text()
        ],
        prop::collection::vec(
            prop_oneof![Just("GET".to_string()), Just("post".into()), text()],
            0..4,
        ),
        prop::collection::vec(
            prop_oneof![Just("https://ui.example.com".to_string()), text()],
            0..3,
        ),
        prop::collection::vec(
            prop_oneof![Just("application/json".to_string()), text()],
            0..4,
        ),
        prop::collection::vec(-5i64..10_000_000, 0..3),
    )
        .prop_map(
            |(login, lockout, paranoia, body, methods, origins, types, exclusions)| {
                let mut h = json!({
                    "paranoiaLevel": paranoia,
                    "maxBodySize": body,
                    "allowedMethods": methods,
                    "allowedOrigins": origins,
                    "allowedContentTypes": types,
                    "ruleExclusions": exclusions,
                });
                if let Some(l) = login {
                    h["loginPath"] = json!(l);
                }
                if let Some((max, window, duration)) = lockout {
                    h["lockout"] =
                        json!({"maxFailures": max, "window": window, "duration": duration});
                }
                h
            },
        )
}

fn component() -> impl Strategy<Value = Value> {
    (
        name(),
        prop::sample::select(vec!["Sensor", "Aggregator", "EUtility", "DecisionTrigger"]),
        selector(),
        prop::collection::vec(port(), 0..3),
        prop::option::of(http_settings()),
        any::<bool>(),
    )
        .prop_map(|(name, role, selector, ports, http, upnp)| {
            let mut c = json!({"name": name, "role": role, "selector": selector, "ports": ports, "upnp": upnp});
            if let Some(h) = http {
                c["http"] = h;
            }
            c
        })
}

fn flow() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            name().prop_map(Value::String),
            name().prop_map(|n| json!({"component": n})),
            Just(json!({"ingress": true})),
            Just(json!({"component": "sensor", "ingress": true})),
            Just(json!(7)),
        ],
        name(),
        name(),
    )
        .prop_map(|(from, to, port)| json!({"from": from, "to": to, "port": port}))
}

fn subject() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["User", "Group", "ServiceAccount"]),
        prop_oneof![
            name(),
            Just("system:authenticated".to_string()),
            Just(String::new())
        ],
        prop::option::of(name()),
    )
        .prop_map(|(kind, name, ns)| {
            let mut s = json!({"kind": kind, "name": name});
            if let Some(ns) = ns {
                s["namespace"] = json!(ns);
            }
            s
        })
}

/// A whole IoTSystem as JSON, in namespace `plant` with a uid.
pub fn system() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(component(), 0..5),
        prop::collection::vec(flow(), 0..4),
        prop::collection::vec(subject(), 0..3),
        prop::sample::select(vec!["Enforce", "Audit"]),
        prop::option::of((
            "[A-Z]{1,3}-[0-9]{1,2}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}|.{0,10}",
        )),
    )
        .prop_map(|(components, flows, admins, mode, attestation)| {
            let mut spec = json!({
                "mode": mode,
                "components": components,
                "flows": flows,
                "access": {"admins": admins},
            });
            if let Some((item, expires)) = attestation {
                spec["attestations"] =
                    json!([{"item": item, "statement": "s", "by": "b", "expires": expires}]);
            }
            json!({
                "apiVersion": "iotposture.dev/v1alpha1",
                "kind": "IoTSystem",
                "metadata": {"name": "s", "namespace": "plant", "uid": "uid-s"},
                "spec": spec,
            })
        })
}
