//! The `iotposture` command line. Only argument handling lives here.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "iotposture",
    version,
    about = "Enforce and prove the IoT security checklist on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of KUBECONFIG (or the in-cluster config).
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "IOTPOSTURE_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the /metrics, /healthz and /readyz endpoints.
        #[arg(long, env = "IOTPOSTURE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "IOTPOSTURE_LOG_JSON")]
        log_json: bool,
    },
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", iotposture::api::crd_yaml()?),
        Command::Run {
            namespace,
            http_addr,
            log_json,
        } => {
            iotposture::telemetry::init(log_json);
            let client = kube::Client::try_default().await?;
            iotposture::controller::run_with_http(client, namespace, http_addr).await?;
        }
    }
    Ok(())
}
