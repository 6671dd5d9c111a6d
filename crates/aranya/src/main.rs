use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
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
