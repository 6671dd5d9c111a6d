use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "arhat", version, about = "Edge device agent for aranya")]
struct Cli {
    /// Path of the YAML configuration file.
    #[arg(short, long, env = "ARHAT_CONFIG")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Announce another protocol version (for compatibility tests).
    #[arg(long, hide = true)]
    protocol_version: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match arhat::config::Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("arhat: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("arhat: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(never_payloads(filter))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = arhat::agent::Options::default();
    if let Some(v) = cli.protocol_version {
        options.protocol_version = v;
    }
    let agent = match arhat::agent::Agent::new(config, options).await {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("arhat: {e}");
            return ExitCode::from(2);
        }
    };
    let cleanup = agent.cleanup();
    let code = tokio::select! {
        result = agent.run() => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("arhat: {e}");
                ExitCode::FAILURE
            }
        },
        () = stopped() => ExitCode::SUCCESS,
    };
    cleanup.run().await;
    code
}

/// SIGINT or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Caps the libraries that print what they carry at debug level and below
/// (bollard prints every Docker API body: containers' environments, with
/// their Secret values), so no filter an operator sets puts them in the log.
fn never_payloads(filter: EnvFilter) -> EnvFilter {
    ["bollard=info"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}
