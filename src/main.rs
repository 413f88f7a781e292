//! The `learning-hub` command: parses arguments and calls into the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use std::sync::Arc;

use learning_hub::{auth::Role, clock::SystemClock, config::Config, pki, server::PreparedHub};

#[derive(Parser)]
#[command(
    name = "learning-hub",
    version,
    about = "A gRPC hub where a fleet of ML/agent instances learns from each other"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "LEARNING_HUB_LISTEN", default_value = learning_hub::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Directory of the sled database.
        #[arg(long, env = "LEARNING_HUB_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Directory of ca.pem, server.pem and server.key; a development
        /// PKI is generated there if it has no ca.pem.
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
        /// Serve plaintext gRPC without client certificates. Development
        /// only: anyone who can reach the port can act as any instance.
        #[arg(long)]
        insecure_dev: bool,
    },
    /// Manage the development PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate the development CA, server and operator certificates
    /// (`serve` does this on first start).
    Init {
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// Issue a client certificate (<name>.pem, <name>.key) signed by the CA.
    Issue {
        /// Instance id (or operator name with --operator).
        name: String,
        /// Issue an operator certificate instead of an instance one.
        #[arg(long)]
        operator: bool,
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(
    listen: SocketAddr,
    data_dir: PathBuf,
    certs_dir: PathBuf,
    insecure_dev: bool,
) -> learning_hub::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| learning_hub::Error::Unavailable(format!("cannot listen on {listen}: {e}")))?;
    let mut config = Config::new(data_dir, certs_dir);
    config.listen = listen;
    config.insecure_dev = insecure_dev;
    let hub = PreparedHub::prepare(config, Arc::new(SystemClock)).await?;
    if let Ok(addr) = listener.local_addr() {
        // On stdout, for scripts and tests that start the hub on port 0:
        // printed once certificates exist and the store is open.
        println!("learning-hub listening on {addr}");
    }
    hub.serve(listener, shutdown_signal()).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve {
            listen,
            data_dir,
            certs_dir,
            insecure_dev,
        } => tokio::runtime::Runtime::new()
            .map_err(|e| learning_hub::Error::Internal(format!("cannot start runtime: {e}")))
            .and_then(|rt| rt.block_on(serve(listen, data_dir, certs_dir, insecure_dev))),
        Command::Certs { command } => match command {
            CertsCommand::Init { certs_dir } => match pki::ensure_dev_pki(&certs_dir) {
                Ok(true) => {
                    println!("generated a development PKI in {}", certs_dir.display());
                    Ok(())
                }
                Ok(false) => {
                    println!(
                        "{} already holds a CA; nothing generated",
                        certs_dir.display()
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            },
            CertsCommand::Issue {
                name,
                operator,
                certs_dir,
                force,
            } => {
                let role = if operator {
                    Role::Operator
                } else {
                    Role::Instance
                };
                pki::issue(&certs_dir, &pki::identity_for(&name, role), force).map(|paths| {
                    println!("{}", paths.cert.display());
                    println!("{}", paths.key.display());
                })
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("learning-hub: {e}");
            ExitCode::FAILURE
        }
    }
}
