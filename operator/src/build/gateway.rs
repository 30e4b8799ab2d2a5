//! One ConfigMap per component with HTTP ports: the nginx and ModSecurity
//! configuration of its WAF gateway (items I-1, II-1, II-6, III-2, III-3,
//! III-8), generated for the paths of the gateway image. The admission
//! webhook mounts it into the injected gateway container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::meta::{child_meta, child_name};
use crate::{
    controller::validate::{ValidComponent, ValidatedSystem},
    gateway::config::{Layout, generate},
};

pub const NGINX_CONF: &str = "nginx.conf";
pub const MODSECURITY_CONF: &str = "modsecurity.conf";

/// `<system>-<component>-gateway`.
pub fn gateway_config_name(system: &ValidatedSystem, component: &ValidComponent) -> String {
    child_name(&system.name, &[&component.name, "gateway"])
}

pub fn build_gateway_configs(system: &ValidatedSystem) -> Vec<ConfigMap> {
    system
        .components
        .iter()
        .filter(|c| c.http_ports().next().is_some())
        .map(|component| {
            let config = generate(&component.http, &Layout::crs_image(component));
            ConfigMap {
                metadata: child_meta(
                    system,
                    gateway_config_name(system, component),
                    Some(&component.name),
                ),
                data: Some(BTreeMap::from([
                    (NGINX_CONF.to_string(), config.nginx),
                    (MODSECURITY_CONF.to_string(), config.modsecurity),
                ])),
                ..ConfigMap::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::validated;

    #[test]
    fn web_components_get_their_gateway_configuration() {
        let system = validated(
            r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: factory, namespace: plant, uid: uid-factory}
spec:
  components:
   - name: dashboard
     role: EUtility
     selector: {matchLabels: {app: dashboard}}
     ports:
       - {name: https, port: 8443, tls: true}
       - {name: metrics, port: 9100}
     http: {loginPath: /login, maxBodySize: 64k}
   - name: line-sensor
     role: Sensor
     selector: {matchLabels: {app: sensor}}
     ports: [{name: mqtt, port: 1883}]
"#,
        );
        let configs = build_gateway_configs(&system);
        assert_eq!(configs.len(), 1, "only the component with an HTTP port");
        let config = &configs[0];
        assert_eq!(
            config.metadata.name.as_deref(),
            Some("factory-dashboard-gateway")
        );
        let data = config.data.as_ref().unwrap();
        let nginx = &data[NGINX_CONF];
        assert!(nginx.contains("listen 8443 ssl;"), "{nginx}");
        assert!(nginx.contains("server 127.0.0.1:18443;"));
        assert!(nginx.contains("ssl_certificate /etc/iotposture-tls/https/tls.crt;"));
        assert!(nginx.contains("client_max_body_size 65536;"));
        assert!(
            !nginx.contains("9100"),
            "the metrics port is not HTTP-fronted"
        );
        assert!(data[MODSECURITY_CONF].contains("@streq /login"));
        assert!(data[MODSECURITY_CONF].contains("Include /opt/owasp-crs/rules/*.conf"));
    }
}
