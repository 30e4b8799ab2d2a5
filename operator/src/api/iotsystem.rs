//! The `IoTSystem` custom resource: one IoT application, its components (each a
//! checklist role), the flows between them and who may administer it.
//!
//! What the API server can judge alone is written here as OpenAPI bounds and CEL
//! rules, so bad specs are refused at `kubectl apply` with a readable message.
//! What needs other objects (pods, other systems) is judged in
//! `controller::validate`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest component name: child object names are `<system>-<component>-<suffix>`
/// and must stay within 63 characters together with a hash when shortened.
pub const MAX_COMPONENT_NAME: usize = 40;
pub const MAX_COMPONENTS: usize = 64;
pub const MAX_FLOWS: usize = 256;
pub const MAX_PORTS: usize = 16;
pub const MAX_SUBJECTS: usize = 32;

/// Desired state of one IoT application.
// Several printer columns share a type, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iotposture.dev",
    version = "v1alpha1",
    kind = "IoTSystem",
    plural = "iotsystems",
    namespaced,
    shortname = "iots",
    category = "iotposture",
    status = "IoTSystemStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Components",
        type_ = "integer",
        json_path = ".status.componentCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Compliant", type_ = "string", json_path = ".status.compliant"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Messages are fixed strings: message expressions that name the culprit cost more
// than the API server allows for lists this long. The controller's validation
// names it in the Ready condition.
#[x_kube(validation = Rule::new(
    "self.components.all(c, self.components.exists_one(d, d.name == c.name))"
).message("component names must be unique within the system").field_path(".components"))]
#[x_kube(validation = Rule::new(
    "self.flows.all(f, self.components.exists(c, c.name == f.to))"
).message("every flow's 'to' must name a component of spec.components").field_path(".flows"))]
#[x_kube(validation = Rule::new(
    "self.egress.all(e, self.components.exists(c, c.name == e.from))"
).message("every egress 'from' must name a component of spec.components").field_path(".egress"))]
#[x_kube(validation = Rule::new(
    "self.flows.all(f, !self.components.exists(c, c.name == f.to) || self.components.exists(c, c.name == f.to && c.ports.exists(p, p.name == f.port)))"
).message("every flow's 'port' must name a port that its target component declares in ports").field_path(".flows"))]
pub struct IoTSystemSpec {
    /// Enforce: create and keep the objects that make the checklist true.
    /// Audit: change nothing; only report what Enforce would create.
    #[serde(default)]
    pub mode: Mode,

    /// The parts of the application, each a checklist role selected by pod labels.
    #[schemars(length(min = 1, max = 64))]
    pub components: Vec<Component>,

    /// The traffic the application needs (the Communication Channel). Everything
    /// else to and from component pods is denied.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub flows: Vec<Flow>,

    /// Connections components open to destinations outside the system (a
    /// cloud MQTT endpoint, an API elsewhere in the cluster). Nothing else
    /// leaves a component but DNS and the flows to other components.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub egress: Vec<Egress>,

    /// Who administers, operates and views the system (RBAC subjects).
    #[serde(default)]
    pub access: Access,

    /// Certificates for TLS ports (checklist items III-9, VI-4). Without it no
    /// Certificate is made and III-9 fails for TLS ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsPolicy>,

    /// Which container images the components may run (checklist item II-3).
    #[serde(default)]
    pub images: ImagePolicy,

    /// What the admission webhook fills in for component pods that leave it unset.
    #[serde(default)]
    pub pod_defaults: PodDefaults,

    /// Statements by people for items no machine can check (verdict Attested).
    #[serde(default)]
    #[schemars(length(max = 39))]
    pub attestations: Vec<Attestation>,

    /// Where the components' container logs and the WAF's audit records are
    /// shipped (checklist item III-1), by the log collector the operator runs
    /// on every node. Without it nothing is shipped and III-1 fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,

    /// The edge nodes the system runs on (items IV-1…IV-4 and VI-1), judged
    /// from what the node agent (`nodeAgent.enabled` in the chart) reports
    /// of each. Without it, IV-3 and IV-4 stay Unknown and IV-1, IV-2 look
    /// at the component pods only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_nodes: Option<EdgeNodes>,
}

/// Which nodes belong to the system, and what may differ on them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeNodes {
    /// The nodes, by label. Without it: the nodes the component pods run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Remote-access default ports the nodes may listen on beyond loopback
    /// (e.g. 22 on a declared bastion); every other one fails IV-2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub allowed_remote_access_ports: Vec<u16>,
    /// The nodes may serve Wi-Fi access points (still WPA2-CCMP or WPA3 and
    /// without WPS). Without it, an access point on a node fails IV-3.
    #[serde(default)]
    pub access_point: bool,
}

/// A log store that takes OTLP/HTTP over TLS (e.g. VictoriaLogs). Both
/// Secrets live in the system's namespace and carry the label
/// `iotposture.dev/probe-credentials=true`, which lets the operator read them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// The store's OTLP/HTTP logs URL; https only, e.g.
    /// `https://logs.example:9428/insert/opentelemetry/v1/logs`.
    #[schemars(
        length(min = 9, max = 512),
        regex(pattern = r"^https://[^@/?#\s]+(/[^\s]*)?$")
    )]
    pub endpoint: String,
    /// A Secret with `ca.crt`: the CA the store's certificate must chain to.
    /// The collector trusts nothing else.
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret: String,
    /// A Secret with `username` and `password` for HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// The store's base URL for reading back (VictoriaLogs' LogsQL API, e.g.
    /// `https://logs.example:9428`), with the same CA and credentials. With
    /// it, III-1 passes only when the system's records are found there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 512), regex(pattern = r"^https://[^@/?#\s]+/?$"))]
    pub query_url: Option<String>,
    /// How long the store must keep the logs, e.g. `30d` (h, d, w or y). With
    /// `queryUrl`, a store that keeps them for less fails III-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(h|d|w|y)$"))]
    pub retention: Option<String>,
}

/// How the operator obtains certificates from cert-manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsPolicy {
    pub issuer_ref: IssuerRef,
    /// Renew this long before expiry (Go duration, e.g. `720h`).
    #[serde(default = "default_renew_before")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    pub renew_before: String,
    /// Certificate lifetime (Go duration).
    #[serde(default = "default_duration")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    pub duration: String,
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[serde(default)]
    pub kind: IssuerKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

/// ECDSA P-256 (default) or RSA 3072.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    #[default]
    ECDSA,
    RSA,
}

fn default_renew_before() -> String {
    "720h".into()
}

fn default_duration() -> String {
    "2160h".into()
}

/// Values given to component pods that do not set them (never overriding).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDefaults {
    /// Resource limits for containers without one, e.g. `{cpu: 500m, memory: 256Mi}`
    /// (checklist items II-5, II-6).
    #[serde(default = "default_limits")]
    pub limits: std::collections::BTreeMap<String, String>,
    /// UID for pods that set none, so `runAsNonRoot` holds for images built to run as root.
    #[serde(default = "default_uid")]
    #[schemars(range(min = 1))]
    pub run_as_user: i64,
}

impl Default for PodDefaults {
    fn default() -> Self {
        Self {
            limits: default_limits(),
            run_as_user: default_uid(),
        }
    }
}

fn default_limits() -> std::collections::BTreeMap<String, String> {
    [("cpu", "500m"), ("memory", "256Mi")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
}

fn default_uid() -> i64 {
    65532
}

/// Image rules for every container of every component (checklist item II-3).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicy {
    /// Registries images may come from, e.g. `registry.example.com`. Empty: any.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allowed_registries: Vec<String>,
    /// Images must be pinned by digest (`@sha256:…`).
    #[serde(default)]
    pub require_digest: bool,
    /// Tags that never pass. An image without tag or digest counts as `latest`.
    #[serde(default = "default_forbidden_tags")]
    #[schemars(length(max = 32))]
    pub forbid_tags: Vec<String>,
    /// Lowest acceptable version per image repository.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub minimum_versions: Vec<MinimumVersion>,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        Self {
            allowed_registries: Vec::new(),
            require_digest: false,
            forbid_tags: default_forbidden_tags(),
            minimum_versions: Vec::new(),
        }
    }
}

fn default_forbidden_tags() -> Vec<String> {
    vec!["latest".into()]
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinimumVersion {
    /// Repository without tag, e.g. `registry.example.com/factory/mqtt-broker`.
    #[schemars(length(min = 1, max = 255))]
    pub image: String,
    /// Dotted numeric version, e.g. `2.0.18`; tags compare number by number.
    #[schemars(regex(pattern = r"^v?[0-9]+(\.[0-9]+)*$"))]
    pub version: String,
}

/// A person's statement that an item is met where no machine can check it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// Checklist item ID, e.g. `IV-3`.
    #[schemars(regex(pattern = r"^(I|II|III|IV|V|VI|VII|VIII)-[0-9]{1,2}$"))]
    pub item: String,
    /// What is in place, in a sentence or two.
    #[schemars(length(min = 1, max = 1024))]
    pub statement: String,
    /// Who vouches for it.
    #[schemars(length(min = 1, max = 256))]
    pub by: String,
    /// Last day the statement holds (YYYY-MM-DD); after it the item fails.
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub expires: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// A checklist primitive. The Communication Channel is not a component: it is
/// described by `flows`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Role {
    Sensor,
    Aggregator,
    EUtility,
    DecisionTrigger,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sensor => "Sensor",
            Role::Aggregator => "Aggregator",
            Role::EUtility => "EUtility",
            Role::DecisionTrigger => "DecisionTrigger",
        }
    }
}

/// One part of the application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.ports.all(p, self.ports.exists_one(q, q.name == p.name))"
).message("port names must be unique within a component").field_path(".ports"))]
#[x_kube(validation = Rule::new(
    "self.ports.all(p, self.ports.exists_one(q, q.port == p.port && q.protocol == p.protocol))"
).message("port numbers must be unique per protocol within a component").field_path(".ports"))]
#[x_kube(validation = Rule::new(
    "self.upnp || !self.ports.exists(p, p.port == 1900 && p.protocol == 'UDP')"
).message("UDP port 1900 is SSDP (UPnP, checklist item V-2): set upnp: true on the component to declare it").reason(Reason::FieldValueForbidden).field_path(".ports"))]
pub struct Component {
    /// Unique within the system; names the component's ServiceAccount and policies.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Which checklist primitive this component is.
    pub role: Role,

    /// Pods of this component. Must not be empty: an empty selector would take
    /// every pod in the namespace.
    #[x_kube(validation = Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    ).message("selector must have matchLabels or matchExpressions: an empty selector would match every pod in the namespace"))]
    pub selector: LabelSelector,

    /// Ports the component serves. Only these are reachable, and only by the flows
    /// that name them.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub ports: Vec<Port>,

    /// For sensors: longest silence before the sensor counts as down.
    // Boxed, as `http`: most components have neither, and inline they were
    // 400 bytes of every cached component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Box<Heartbeat>>,

    /// For HTTP components: login endpoint and lockout policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpSettings>>,

    /// Declares that this component uses UPnP/SSDP (UDP 1900). Without it SSDP is
    /// never opened (checklist item V-2).
    #[serde(default)]
    pub upnp: bool,

    /// Mount the ServiceAccount token into the component's pods. Off unless the
    /// component talks to the Kubernetes API (checklist item I-10).
    #[serde(default)]
    pub automount_service_account_token: bool,

    /// The Service in front of the component, whose names its certificates carry.
    /// Defaults to the component's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,

    /// Paths the containers write to; with a read-only root filesystem they get an
    /// emptyDir each from the admission webhook.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub writable_paths: Vec<String>,

    /// Device resources (extended resources such as `squat.ai/serial`) the
    /// component's pods may request; any other device fails item IV-1.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub devices: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// IANA-style service name, referenced by flows.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default)]
    pub protocol: Protocol,
    /// The port speaks TLS.
    #[serde(default)]
    pub tls: bool,
    /// The port speaks HTTP and is fronted by the WAF gateway. Ports named
    /// `http`, `https`, `http-*` or `https-*` of e-Utilities and Decision
    /// Triggers are HTTP without saying so.
    #[serde(default)]
    pub http: bool,
    /// With a gateway in front: the loopback port the application itself
    /// listens on (its containers get it as IOTPOSTURE_BACKEND_PORT_<NAME>).
    /// Defaults to the port + 10000, or − 10000 above 55535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub backend_port: Option<i32>,
}

impl Port {
    /// The loopback port behind the gateway.
    pub fn backend(&self) -> i32 {
        self.backend_port.unwrap_or(if self.port <= 55535 {
            self.port + 10000
        } else {
            self.port - 10000
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// A duration such as `60s`, `5m` or `1h`: a device heard less recently is
    /// silent (checklist item VII-1).
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub max_silence: String,

    /// Devices outside the cluster that publish over MQTT, and where the
    /// operator listens to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttHeartbeat>,

    /// Devices expected to be heard (the `+` level of the topic). A declared
    /// device never heard counts as silent; others count once heard.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub devices: Vec<String>,

    /// How long a device that is not declared stays listed (and silent)
    /// after its last heartbeat, e.g. a sensor pod that was replaced.
    /// Default: 10 × maxSilence, at least 10m. Declared devices never go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub forget_after: Option<String>,
}

/// Heartbeats heard on an MQTT broker of the system. The operator subscribes
/// over TLS verified against the broker port's CA (the certificate cert-manager
/// issued for it, `spec.tls`), to the broker component's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttHeartbeat {
    /// The component running the broker (usually the Aggregator).
    #[schemars(length(min = 1, max = 40))]
    pub broker: String,
    /// The name of the broker component's port; it must be declared `tls: true`.
    #[schemars(length(min = 1, max = 15))]
    pub port: String,
    /// An MQTT topic filter with exactly one `+` level, which names the device,
    /// e.g. `plant/+/status`. Any message on a matching topic is a heartbeat.
    #[schemars(length(min = 1, max = 256))]
    pub topic: String,
    /// A Secret in the system's namespace with `username` and `password`, for
    /// brokers that require them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Path of the login endpoint, used for lockout counting: `/` followed by
    /// letters, digits and `/ . _ ~ -`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^/[A-Za-z0-9/._~-]*$"))]
    pub login_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout: Option<Lockout>,
    /// OWASP CRS paranoia level, 1 (few false positives) to 4.
    #[serde(default = "default_paranoia")]
    #[schemars(range(min = 1, max = 4))]
    pub paranoia_level: i32,
    /// CRS inbound anomaly score at which a request is blocked.
    #[serde(default = "default_anomaly_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub anomaly_threshold: i32,
    /// Largest request body, in nginx size syntax (`1m`, `512k`), at most `1g`.
    #[serde(default = "default_body_size")]
    #[schemars(regex(pattern = r"^[0-9]{1,10}[kKmMgG]?$"))]
    pub max_body_size: String,
    /// Requests per second per client, with this burst on top.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 100000))]
    pub requests_per_second: i32,
    #[serde(default = "default_burst")]
    #[schemars(range(min = 0, max = 100000))]
    pub burst: i32,
    /// Requests one client may have in flight at once; more get 429.
    #[serde(default = "default_connections")]
    #[schemars(range(min = 1, max = 100000))]
    pub connections_per_client: i32,
    /// HTTP methods let through; others get 405.
    #[serde(default = "default_methods")]
    #[schemars(length(max = 16))]
    pub allowed_methods: Vec<String>,
    /// Origins (`https://ui.example.com`) besides the component's own that may
    /// send state-changing requests (POST, PUT, PATCH, DELETE); others get 403.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allowed_origins: Vec<String>,
    /// Request body types let through (`application/json`); bodies of any
    /// other type get 415. Requests without a body are not affected.
    #[serde(default = "default_content_types")]
    #[schemars(length(max = 16))]
    pub allowed_content_types: Vec<String>,
    /// SameSite attribute given to every cookie the application sets (III-2).
    #[serde(default)]
    pub same_site: SameSite,
    /// CRS rule IDs switched off for known false positives.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rule_exclusions: Vec<i32>,
    /// A Secret in the system's namespace with `username` and `password` of a
    /// test account: the probe logs in with it to check that the session
    /// cookie changes at login (III-4). Without it III-4 needs an attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub probe_credentials_secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    #[default]
    Strict,
    Lax,
    /// Only where a cross-site embed really needs the cookie.
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "strict",
            SameSite::Lax => "lax",
            SameSite::None => "none",
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            login_path: None,
            lockout: None,
            paranoia_level: default_paranoia(),
            anomaly_threshold: default_anomaly_threshold(),
            max_body_size: default_body_size(),
            requests_per_second: default_rate(),
            burst: default_burst(),
            connections_per_client: default_connections(),
            allowed_methods: default_methods(),
            allowed_origins: Vec::new(),
            allowed_content_types: default_content_types(),
            same_site: SameSite::default(),
            rule_exclusions: Vec::new(),
            probe_credentials_secret: None,
        }
    }
}

impl HttpSettings {
    /// The lockout in force: the declared one, or 5 failures in 5 minutes
    /// lock a client out for 15 when only a login path is given.
    pub fn effective_lockout(&self) -> Option<Lockout> {
        self.login_path.as_ref()?;
        Some(self.lockout.clone().unwrap_or(Lockout {
            max_failures: 5,
            window: "5m".into(),
            duration: "15m".into(),
        }))
    }
}

fn default_paranoia() -> i32 {
    1
}
fn default_anomaly_threshold() -> i32 {
    5
}
fn default_body_size() -> String {
    "1m".into()
}
fn default_rate() -> i32 {
    10
}
fn default_burst() -> i32 {
    20
}
fn default_connections() -> i32 {
    20
}
fn default_content_types() -> Vec<String> {
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
    ]
    .map(String::from)
    .to_vec()
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .map(String::from)
        .to_vec()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lockout {
    #[schemars(range(min = 1, max = 100))]
    pub max_failures: i32,
    /// Window over which failures count, e.g. `5m`.
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub window: String,
    /// How long a locked-out client stays refused, e.g. `15m`.
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub duration: String,
}

/// Allowed traffic from a component (or from outside the system) to a named port
/// of a component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    #[schemars(schema_with = "flow_source_schema")]
    pub from: FlowSource,
    /// Name of the target component.
    #[schemars(length(min = 1, max = 40))]
    pub to: String,
    /// Name of a port the target component declares.
    #[schemars(length(min = 1, max = 15))]
    pub port: String,
}

/// Where a flow comes from: `from: NAME` (a component), `from: {component:
/// NAME}` or `from: {ingress: true}`. Reading one never fails: the schema
/// cannot hold `from` to a shape, and one bad object must not stop the
/// watch of all; what is none of these forms is kept as `malformed`, and
/// validation refuses it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FlowSource {
    pub component: Option<String>,
    /// From outside the system (any source, e.g. an ingress controller or users).
    pub ingress: Option<bool>,
    /// Pods, as a NetworkPolicy selects them: podSelector alone picks pods of
    /// the system's namespace; namespaceSelector alone, every pod of those
    /// namespaces; both, those pods in those namespaces.
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
    /// Addresses outside the cluster, e.g. the sensors' network.
    pub cidr: Option<String>,
    /// What was written, when it is none of the accepted forms.
    pub malformed: Option<serde_json::Value>,
}

impl FlowSource {
    pub fn component(name: &str) -> Self {
        Self {
            component: Some(name.into()),
            ..Self::default()
        }
    }

    pub fn ingress() -> Self {
        Self {
            ingress: Some(true),
            ..Self::default()
        }
    }
}

impl Serialize for FlowSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Some(raw) = &self.malformed {
            return raw.serialize(s);
        }
        let mut map = s.serialize_map(None)?;
        if let Some(c) = &self.component {
            map.serialize_entry("component", c)?;
        }
        if let Some(i) = &self.ingress {
            map.serialize_entry("ingress", i)?;
        }
        if let Some(n) = &self.namespace_selector {
            map.serialize_entry("namespaceSelector", n)?;
        }
        if let Some(p) = &self.pod_selector {
            map.serialize_entry("podSelector", p)?;
        }
        if let Some(c) = &self.cidr {
            map.serialize_entry("cidr", c)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for FlowSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        let malformed = || Self {
            malformed: Some(raw.clone()),
            ..Self::default()
        };
        Ok(match &raw {
            serde_json::Value::String(name) => Self::component(name),
            serde_json::Value::Object(fields) => {
                const KEYS: [&str; 5] = [
                    "component",
                    "ingress",
                    "namespaceSelector",
                    "podSelector",
                    "cidr",
                ];
                if fields.keys().any(|k| !KEYS.contains(&k.as_str())) {
                    return Ok(malformed());
                }
                let text = |k: &str| match fields.get(k) {
                    None => Ok(None),
                    Some(serde_json::Value::String(v)) => Ok(Some(v.clone())),
                    Some(_) => Err(()),
                };
                let selector = |k: &str| match fields.get(k) {
                    None => Ok(None),
                    Some(v) => serde_json::from_value::<LabelSelector>(v.clone())
                        .map(Some)
                        .map_err(|_| ()),
                };
                let ingress = match fields.get("ingress") {
                    None => Ok(None),
                    Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(()),
                };
                match (
                    text("component"),
                    ingress,
                    selector("namespaceSelector"),
                    selector("podSelector"),
                    text("cidr"),
                ) {
                    (
                        Ok(component),
                        Ok(ingress),
                        Ok(namespace_selector),
                        Ok(pod_selector),
                        Ok(cidr),
                    ) => Self {
                        component,
                        ingress,
                        namespace_selector,
                        pod_selector,
                        cidr,
                        malformed: None,
                    },
                    _ => malformed(),
                }
            }
            _ => malformed(),
        })
    }
}

/// A string or an object: a structural schema can only say "any value",
/// and CEL cannot look into a value without a type. So `from` is checked by
/// the IoTSystem admission webhook and the controller (`validate`), with the
/// same messages.
fn flow_source_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Where the flow comes from: a component's name (`from: line-sensor`), `{component: NAME}`; pods elsewhere in the cluster, `{namespaceSelector: ..., podSelector: ...}` (e.g. the ingress controller or Prometheus); addresses outside the cluster, `{cidr: 192.168.10.0/24}` (e.g. the sensor network); or `{ingress: true}` for any source.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A connection from a component to something outside the system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.to.cidr) != (has(self.to.namespaceSelector) || has(self.to.podSelector))"
).message("egress 'to' names either a cidr or pods (namespaceSelector and/or podSelector), not both").field_path(".to"))]
pub struct Egress {
    /// The component that connects.
    #[schemars(length(min = 1, max = 40))]
    pub from: String,
    pub to: Destination,
    /// The destination's ports (1–64).
    #[schemars(length(min = 1, max = 64))]
    pub ports: Vec<EgressPort>,
}

/// Addresses outside the cluster, or pods elsewhere in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// e.g. `203.0.113.10/32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 43))]
    pub cidr: Option<String>,
    /// Addresses within `cidr` that stay closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default)]
    pub protocol: Protocol,
}

/// RBAC subjects per access level (checklist items I-7, I-8, I-9).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Full control of the system's objects, Secrets included.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub admins: Vec<Subject>,
    /// Read, scale and restart; no Secrets.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub operators: Vec<Subject>,
    /// Read only; no Secrets, no logs, no exec.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub viewers: Vec<Subject>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: SubjectKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// For ServiceAccounts; defaults to the system's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
            SubjectKind::ServiceAccount => "ServiceAccount",
        }
    }
}

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IoTSystemStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Number of components in the spec (printer column).
    #[serde(default)]
    pub component_count: i32,
    /// Objects the operator keeps for this system (Enforce), or would keep (Audit).
    #[serde(default)]
    pub managed_objects: Vec<ManagedObject>,
    /// Items that pass or are attested, of the items that apply, e.g. `24/31`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant: Option<String>,
    /// Count of checklist items per verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<VerdictSummary>,
    /// One verdict per checklist item, with evidence.
    #[serde(default)]
    pub items: Vec<ItemStatus>,
    /// What the TLS probe saw at each TLS port (checklist item VI-3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
    /// Devices heard over MQTT (checklist item VII-1): the silent ones first,
    /// at most 50; `summary` counts them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<SensorStatus>,
    /// The head of this system's decision record (checklist item VII-2):
    /// every object applied or pruned and every verdict change is a line the
    /// operator logs, in a Merkle tree whose checkpoint it signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<DecisionLogStatus>,
}

/// Where a system's decision record stands; `iotposture verify` checks the
/// logged entries against `checkpoint` with `key`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionLogStatus {
    /// The log's name in its checkpoints: `iotposture.dev/<namespace>/<name>/<uid>`.
    pub origin: String,
    /// Entries so far.
    pub size: i64,
    /// The latest checkpoint: a C2SP signed note (origin, size, root hash,
    /// Ed25519 signature).
    pub checkpoint: String,
    /// The verifier key of the operator that signed it (note verifier-key format).
    pub key: String,
    /// The right edge of the tree (base64 hashes), so any replica can go on
    /// appending after a restart.
    #[serde(default)]
    pub frontier: Vec<String>,
    /// The last admission Event recorded (`<eventTime> <name>`): refusals
    /// after it are appended next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admissions_through: Option<String>,
}

/// The heartbeats of a system's external sensors.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SensorStatus {
    /// e.g. `3 of 40 devices silent`.
    pub summary: String,
    pub devices: Vec<DeviceStatus>,
}

/// One device, as last heard.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub component: String,
    pub device: String,
    pub silent: bool,
    /// RFC 3339; absent for a declared device never heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// One TLS endpoint as the probe saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub component: String,
    pub port: String,
    /// `name (address)` that was dialled.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Everything wrong with the endpoint; empty when it passes.
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerdictSummary {
    pub pass: i32,
    pub fail: i32,
    pub attested: i32,
    pub not_applicable: i32,
    pub unknown: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemStatus {
    pub id: String,
    pub verdict: Verdict,
    /// What was seen: which objects, which values.
    pub evidence: String,
    /// What to change, for failing items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// The outcome of one checklist item.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    /// Enforced or verified.
    Pass,
    /// Not met; the evidence names the offending objects.
    Fail,
    /// A person vouches for it, until the attestation expires.
    Attested,
    /// No component of a role the item applies to.
    NotApplicable,
    /// Could not be evaluated; the evidence says why.
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Pass,
        Verdict::Fail,
        Verdict::Attested,
        Verdict::NotApplicable,
        Verdict::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Attested => "Attested",
            Verdict::NotApplicable => "NotApplicable",
            Verdict::Unknown => "Unknown",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedObject {
    pub kind: String,
    pub name: String,
    /// False in Audit mode: planned, not created.
    pub applied: bool,
}
