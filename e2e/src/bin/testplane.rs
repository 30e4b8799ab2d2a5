//! `testplane up|down|status --dir DIR`: starts or stops a local control plane.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use iotposture_e2e::controlplane::Plane;

#[derive(Parser)]
#[command(about = "A real local Kubernetes control plane for tests and the demo")]
struct Cli {
    /// State folder: certificates, logs, pids and the kubeconfig.
    #[arg(long, default_value = "target/testplane")]
    dir: PathBuf,
    /// Where e2e/controlplane/build.sh put the binaries.
    #[arg(long, default_value = "target/testplane/bin")]
    bin_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the plane in the background (no-op when it already runs), with a
    /// node unless told otherwise.
    Up {
        /// Control plane only: pods stay Pending, nothing needs root.
        #[arg(long)]
        no_node: bool,
    },
    /// Stop the plane and delete its data.
    Down,
    /// Exit 0 when the plane runs.
    Status,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plane = Plane::new(cli.dir, cli.bin_dir);
    match cli.command {
        Cmd::Up { no_node } => {
            if no_node {
                plane.up()
            } else {
                plane.with_node().up()
            }
        }
        Cmd::Down => plane.down(),
        Cmd::Status => {
            if plane.is_running() {
                println!("running: KUBECONFIG={}", plane.kubeconfig().display());
                Ok(())
            } else {
                println!("not running");
                std::process::exit(1)
            }
        }
    }
}
