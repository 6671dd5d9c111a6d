use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(never_payloads(filter))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = aranya::config::Cli::parse();
    let result = match cli.command {
        Some(aranya::config::Command::Crd) => aranya::crd::definition_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Some(aranya::config::Command::BootstrapToken(aranya::config::TokenCommand::Create {
            device,
            ttl,
        })) => aranya::create_bootstrap_token(&cli.run, &device, ttl)
            .await
            .map(|out| print!("{out}")),
        Some(aranya::config::Command::DeviceCa(command)) => aranya::device_ca(&cli.run, &command)
            .await
            .map(|out| print!("{out}")),
        None => aranya::run(cli.run).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aranya: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Caps the libraries that print what they carry at trace level (tungstenite
/// prints every WebSocket frame: exec I/O, files copied, tokens typed), so no
/// filter an operator sets puts stream contents in the log.
fn never_payloads(filter: EnvFilter) -> EnvFilter {
    ["tungstenite=debug", "tokio_tungstenite=debug"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}
