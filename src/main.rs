use clap::Parser;
use kube_stepup::{
    admission,
    config::{Cli, Command},
    telemetry,
};
use stepup_core::api;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and rustls both use ring; install it as the process default once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => print!("{}", api::crds_yaml()?),
        Command::AuthorizerConfig(args) => kube_stepup::controller::authorizer_config::command(&args).await?,
        Command::Keygen => println!("{}", stepup_core::keys::MasterKey::generate().to_base64().as_str()),
        Command::Controller(args) => {
            telemetry::init(cli.log_format);
            kube_stepup::controller::run::run(*args).await?;
        }
        Command::Webhook(args) => {
            telemetry::init(cli.log_format);
            admission::run::run(*args).await?;
        }
    }
    Ok(())
}
