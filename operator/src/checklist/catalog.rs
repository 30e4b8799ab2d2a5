//! The 39 items of the JPCERT/CC IoT Security Checklist, as data. IDs and the
//! published Japanese item names are the checklist's; the English names and
//! remediations are our own wording.

use serde::Serialize;

use crate::api::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Chapter {
    #[serde(rename = "I")]
    UserManagement,
    #[serde(rename = "II")]
    Software,
    #[serde(rename = "III")]
    WebAndSessions,
    #[serde(rename = "IV")]
    PhysicalAndWireless,
    #[serde(rename = "V")]
    NetworkPorts,
    #[serde(rename = "VI")]
    Encryption,
    #[serde(rename = "VII")]
    LogsAndStatus,
    #[serde(rename = "VIII")]
    Alerts,
}

impl Chapter {
    pub fn title(self) -> &'static str {
        match self {
            Chapter::UserManagement => "User management",
            Chapter::Software => "Software and firewalls",
            Chapter::WebAndSessions => "Web interfaces and sessions",
            Chapter::PhysicalAndWireless => "Physical and wireless access",
            Chapter::NetworkPorts => "Network ports",
            Chapter::Encryption => "Encryption",
            Chapter::LogsAndStatus => "Logs and sensor status",
            Chapter::Alerts => "Security alerts",
        }
    }
}

/// The parts of a system an item applies to. The Communication Channel is the
/// system's flows rather than a component role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    Sensor,
    Aggregator,
    CommunicationChannel,
    EUtility,
    DecisionTrigger,
}

impl Target {
    pub fn role(self) -> Option<Role> {
        match self {
            Target::Sensor => Some(Role::Sensor),
            Target::Aggregator => Some(Role::Aggregator),
            Target::EUtility => Some(Role::EUtility),
            Target::DecisionTrigger => Some(Role::DecisionTrigger),
            Target::CommunicationChannel => None,
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Target::Sensor => "S",
            Target::Aggregator => "A",
            Target::CommunicationChannel => "CC",
            Target::EUtility => "eU",
            Target::DecisionTrigger => "DT",
        }
    }
}

/// E: the operator makes it true; V: it checks live state or probes; A: a person attests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mechanism {
    Enforce,
    Verify,
    Attest,
}

impl Mechanism {
    pub fn short(self) -> &'static str {
        match self {
            Mechanism::Enforce => "E",
            Mechanism::Verify => "V",
            Mechanism::Attest => "A",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: &'static str,
    pub chapter: Chapter,
    pub name_ja: &'static str,
    pub name_en: &'static str,
    pub targets: &'static [Target],
    pub mechanisms: &'static [Mechanism],
    pub severity: Severity,
    pub remediation: &'static str,
}

use Mechanism::{Attest as A, Enforce as E, Verify as V};
use Target::{
    Aggregator as Ag, CommunicationChannel as CC, DecisionTrigger as DT, EUtility as EU,
    Sensor as S,
};

const ALL_BUT_CC: &[Target] = &[S, Ag, EU, DT];
const SERVERS: &[Target] = &[Ag, EU, DT];
const WEB: &[Target] = &[EU, DT];
const WITH_CC: &[Target] = &[Ag, CC, EU, DT];

macro_rules! item {
    ($id:literal, $ch:ident, $ja:literal, $en:literal, $targets:expr, [$($m:ident),+], $sev:ident, $fix:literal) => {
        Item {
            id: $id,
            chapter: Chapter::$ch,
            name_ja: $ja,
            name_en: $en,
            targets: $targets,
            mechanisms: &[$($m),+],
            severity: Severity::$sev,
            remediation: $fix,
        }
    };
}

pub static CATALOG: [Item; 39] = [
    item!(
        "I-1",
        UserManagement,
        "アカウントロックアウトメカニズム",
        "Account lockout after repeated failed logins",
        ALL_BUT_CC,
        [E, V, A],
        High,
        "Declare the login path and a lockout policy under the component's http settings so the gateway refuses clients after repeated failures; attest for non-HTTP sensors."
    ),
    item!(
        "I-2",
        UserManagement,
        "一定期間利用されていないアカウントの強制失効オプション",
        "Unused accounts expire",
        SERVERS,
        [V, A],
        Medium,
        "Delete legacy service-account token Secrets and use short-lived projected tokens; attest the identity provider's inactivity policy for application accounts."
    ),
    item!(
        "I-3",
        UserManagement,
        "パスワード強度の担保機能",
        "Strong passwords",
        SERVERS,
        [E, V],
        High,
        "Use credentials of at least 128 random bits; replace guessable passwords in the Secrets the system references."
    ),
    item!(
        "I-4",
        UserManagement,
        "パスワードセキュリティオプション（二要素認証など）",
        "Second authentication factor",
        SERVERS,
        [E, V, A],
        High,
        "Serve the user interface through an OIDC authentication proxy whose provider enforces MFA, or attest how a second factor is required."
    ),
    item!(
        "I-5",
        UserManagement,
        "サービスやプロセスを起動するアカウントの権限管理",
        "Least privilege for the accounts that run services",
        SERVERS,
        [E, V],
        Critical,
        "Run every container with runAsNonRoot, allowPrivilegeEscalation: false, capabilities drop [ALL], seccomp RuntimeDefault and a read-only root filesystem (Pod Security Standard restricted)."
    ),
    item!(
        "I-6",
        UserManagement,
        "共有ユーザアカウント",
        "No shared accounts",
        SERVERS,
        [E, V],
        High,
        "Give each component its own ServiceAccount (the operator creates <system>-<component>) and its own Secrets; never run component pods as the default ServiceAccount."
    ),
    item!(
        "I-7",
        UserManagement,
        "管理ユーザへの適切な権限付与",
        "Administrators get what they need",
        SERVERS,
        [E, V],
        Medium,
        "Name the administrators in spec.access.admins and run in Enforce mode so the admin Role and its binding exist."
    ),
    item!(
        "I-8",
        UserManagement,
        "一般ユーザへの権限付与機能",
        "Ordinary users get only what they need",
        SERVERS,
        [E, V],
        Medium,
        "Name operators and viewers in spec.access so they get the operator and viewer Roles, which grant no Secrets and no exec."
    ),
    item!(
        "I-9",
        UserManagement,
        "認可制御機能",
        "Role-based authorization",
        SERVERS,
        [E, V],
        High,
        "Remove RoleBindings in the namespace that grant wildcard rules or cluster-admin to subjects who are not the system's admins."
    ),
    item!(
        "I-10",
        UserManagement,
        "サービス連携",
        "Credentials not passed beyond need",
        SERVERS,
        [E, V],
        High,
        "Turn off automountServiceAccountToken unless the component declares it, mount Secrets as files instead of environment variables, and do not mount another component's Secrets."
    ),
    item!(
        "II-1",
        Software,
        "Webアプリケーションファイアウォール",
        "A web application firewall is used",
        WEB,
        [E, V],
        High,
        "Declare HTTP ports with http: true so the WAF gateway (ModSecurity with the OWASP Core Rule Set) fronts them."
    ),
    item!(
        "II-2",
        Software,
        "製品に含まれるファイアウォール機能",
        "The built-in firewall is used",
        SERVERS,
        [E],
        High,
        "Run the system in Enforce mode so every component's pods are under a default-deny NetworkPolicy with allow rules for the declared flows only."
    ),
    item!(
        "II-3",
        Software,
        "ソフトウエアバージョン",
        "Patched software versions",
        SERVERS,
        [E, V],
        High,
        "Pin images by digest or an allowed version tag, never latest, from an allowed registry and at or above the minimum versions in spec.images."
    ),
    item!(
        "II-4",
        Software,
        "ウイルス対策機能",
        "Anti-malware",
        SERVERS,
        [E, V, A],
        Medium,
        "Use read-only root filesystems and pinned images; scan uploads with an anti-malware service or attest the measure in place."
    ),
    item!(
        "II-5",
        Software,
        "不正なデータ処理",
        "No unintended behaviour on bad data",
        SERVERS,
        [E, V],
        Medium,
        "Set CPU and memory limits on every container, and front HTTP ports with the gateway's size, method and content-type limits."
    ),
    item!(
        "II-6",
        Software,
        "データ転送量",
        "Traffic volume designed with DDoS in mind",
        WITH_CC,
        [E, V],
        Medium,
        "Set per-client request-rate and connection limits at the gateway and resource limits on every container."
    ),
    item!(
        "III-1",
        WebAndSessions,
        "ログ管理機能",
        "Logs kept for incident response",
        SERVERS,
        [E],
        Medium,
        "Declare a log destination and retention in spec.logging so container and WAF audit logs are shipped off the node."
    ),
    item!(
        "III-2",
        WebAndSessions,
        "セッション管理(Cookie設定)",
        "Cookie attributes",
        SERVERS,
        [E, V],
        Medium,
        "Front HTTP ports with the gateway, which adds Secure, HttpOnly and SameSite to every Set-Cookie."
    ),
    item!(
        "III-3",
        WebAndSessions,
        "セッション管理(URLリライティング)",
        "No session IDs in URLs",
        SERVERS,
        [E, V],
        Medium,
        "Front HTTP ports with the gateway, which refuses session identifiers in paths and query strings."
    ),
    item!(
        "III-4",
        WebAndSessions,
        "セッション管理(ログイン時や重要な確定処理の時のセッションIDの払い出し)",
        "New session ID at login",
        SERVERS,
        [V, A],
        Medium,
        "Issue a new session identifier at login; give the probe test credentials in a Secret so it can confirm it, or attest."
    ),
    item!(
        "III-5",
        WebAndSessions,
        "クライアントデータの操作のセキュリティ対策",
        "No access to other accounts' data",
        SERVERS,
        [E, V],
        High,
        "Keep one system per namespace so NetworkPolicies and namespaced Roles separate it from other systems."
    ),
    item!(
        "III-6",
        WebAndSessions,
        "システムデータの操作のセキュリティ対策",
        "System data only for restricted users",
        SERVERS,
        [E, V],
        High,
        "Let only the admin Role read Secrets and configuration; remove cluster-wide bindings that read Secrets for other subjects."
    ),
    item!(
        "III-7",
        WebAndSessions,
        "クラウドインタフェースやネットワークの脆弱性",
        "No known vulnerabilities in APIs and web interfaces",
        WEB,
        [V],
        High,
        "Scan the component images for vulnerabilities (for example with trivy-operator) and fix what it reports; disable weak TLS protocols."
    ),
    item!(
        "III-8",
        WebAndSessions,
        "XSS、SQLi、およびCSRFの脆弱性",
        "XSS, SQL injection and CSRF",
        WEB,
        [E, V],
        High,
        "Front HTTP ports with the gateway in blocking mode and declare the allowed origins for state-changing requests."
    ),
    item!(
        "III-9",
        WebAndSessions,
        "WebアプリケーションのSSL証明書",
        "A proper TLS certificate",
        WEB,
        [E, V],
        High,
        "Name a cert-manager issuer in spec.tls so each TLS port gets a certificate with the right names, a trusted chain and a strong key."
    ),
    item!(
        "IV-1",
        PhysicalAndWireless,
        "管理されていない物理手段によるアクセス",
        "No access through unmanaged physical means",
        SERVERS,
        [E, V],
        Critical,
        "Remove privileged mode, host namespaces, hostPath volumes to / or /dev and undeclared device resources from component pods; on edge nodes, block usb-storage (`install usb_storage /bin/false` in modprobe.d) and remove serial-console logins."
    ),
    item!(
        "IV-2",
        PhysicalAndWireless,
        "リモートアクセス用ポートのデフォルトポート",
        "No default remote-access ports",
        SERVERS,
        [E, V],
        High,
        "Do not expose SSH, Telnet, RDP or VNC default ports (22, 23, 2323, 3389, 5800, 5900, 5938) on containers, Services or edge nodes; reach pods with kubectl exec under RBAC, and declare a bastion's port in spec.edgeNodes.allowedRemoteAccessPorts."
    ),
    item!(
        "IV-3",
        PhysicalAndWireless,
        "無線通信におけるセキュリティ(暗号化方式)",
        "Secure wireless encryption",
        WITH_CC,
        [V, A],
        High,
        "Use WPA2 with CCMP only (proto=RSN, pairwise=CCMP) or WPA3-SAE on edge nodes' Wi-Fi, serve access points only where spec.edgeNodes.accessPoint allows, and attest it where no node agent reports."
    ),
    item!(
        "IV-4",
        PhysicalAndWireless,
        "無線通信におけるセキュリティ(WPS)",
        "WPS disabled",
        WITH_CC,
        [V, A],
        Medium,
        "Disable WPS on edge nodes' access points, and attest it while no node agent reports it."
    ),
    item!(
        "V-1",
        NetworkPorts,
        "ネットワークポートの制限",
        "Only the ports the use needs",
        SERVERS,
        [E, V],
        High,
        "Declare every port a component serves in its ports list and remove container and Service ports that are not declared."
    ),
    item!(
        "V-2",
        NetworkPorts,
        "UPnP",
        "UPnP only where intended",
        SERVERS,
        [E, V],
        Medium,
        "Do not run component pods on the host network; open SSDP (UDP 1900) only for components that declare upnp: true."
    ),
    item!(
        "VI-1",
        Encryption,
        "データの暗号化機能",
        "Data not kept in plaintext",
        WITH_CC,
        [V, A],
        High,
        "Put the edge nodes' data mounts on dm-crypt (LUKS), and attest encryption at rest of the cluster's etcd."
    ),
    item!(
        "VI-2",
        Encryption,
        "通信の暗号化機能",
        "Encrypted communication",
        WITH_CC,
        [E, V],
        High,
        "Mark every port that flows use as tls: true; attest any plaintext exception."
    ),
    item!(
        "VI-3",
        Encryption,
        "暗号化方式",
        "The encryption in use can be confirmed",
        WITH_CC,
        [V],
        Medium,
        "Let the TLS probe reach each TLS endpoint; it records protocol, cipher suite and key, and fails below TLS 1.2 or on weak ciphers."
    ),
    item!(
        "VI-4",
        Encryption,
        "証明書更新機能",
        "Certificates are renewed before they expire",
        WITH_CC,
        [E, V],
        High,
        "Issue certificates through cert-manager with renewBefore set, and alert on certificates near expiry."
    ),
    item!(
        "VII-1",
        LogsAndStatus,
        "センサの動作状況確認機能",
        "Sensor status can be checked",
        &[S],
        [E, V],
        Medium,
        "Give sensor containers liveness and readiness probes, and declare a heartbeat for sensors outside the cluster."
    ),
    item!(
        "VII-2",
        LogsAndStatus,
        "ログのセキュリティ管理",
        "Logs protected from reading and tampering",
        SERVERS,
        [E, V],
        Medium,
        "Ship logs over TLS off the node and allow pods/log to the admin and operator roles only."
    ),
    item!(
        "VIII-1",
        Alerts,
        "セキュリティイベントのアラートと通知機能（状態異常等）",
        "Alerts on abnormal sensor state",
        &[S],
        [E],
        Medium,
        "Install the alert rules for silent, crash-looping and restarting sensors and declare an alert receiver."
    ),
    item!(
        "VIII-2",
        Alerts,
        "セキュリティイベントのアラートと通知機能（認証失敗、証明書の期限切れ等）",
        "Alerts on authentication failures and certificate expiry",
        SERVERS,
        [E],
        Medium,
        "Install the alert rules for failed-login bursts, lockouts and certificates near expiry and declare an alert receiver."
    ),
];

pub fn item(id: &str) -> Option<&'static Item> {
    CATALOG.iter().find(|i| i.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn thirty_nine_distinct_items_in_eight_chapters() {
        let ids: BTreeSet<_> = CATALOG.iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), 39);
        let per_chapter = |c| CATALOG.iter().filter(|i| i.chapter == c).count();
        assert_eq!(per_chapter(Chapter::UserManagement), 10);
        assert_eq!(per_chapter(Chapter::Software), 6);
        assert_eq!(per_chapter(Chapter::WebAndSessions), 9);
        assert_eq!(per_chapter(Chapter::PhysicalAndWireless), 4);
        assert_eq!(per_chapter(Chapter::NetworkPorts), 2);
        assert_eq!(per_chapter(Chapter::Encryption), 4);
        assert_eq!(per_chapter(Chapter::LogsAndStatus), 2);
        assert_eq!(per_chapter(Chapter::Alerts), 2);
        assert!(
            CATALOG
                .iter()
                .all(|i| !i.targets.is_empty() && !i.remediation.is_empty())
        );
    }
}
