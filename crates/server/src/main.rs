//! The `sluice` binary: parses configuration, opens the broker, serves the Kafka protocol and
//! shuts down cleanly (everything flushed) on SIGTERM or Ctrl-C.

mod config;

use anyhow::Context;
use clap::Parser;
use sluice_broker::Broker;
use sluice_kafka::KafkaServer;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log_filter)
                        .with_context(|| format!("invalid log filter '{}'", config.log_filter))?,
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("sluice")
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
    }
}

async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    let data_dir = config.broker.data_dir.clone();
    let broker = Broker::open(config.broker)
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let kafka = KafkaServer::bind(config.kafka_listen, broker.clone(), config.kafka)
        .await
        .with_context(|| format!("binding the Kafka listener on {}", config.kafka_listen))?;
    let kafka_address = kafka.local_addr()?;
    let data_dir_shown = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    tracing::info!(kafka = %kafka_address, data_dir = %data_dir_shown.display(), "sluice is serving");

    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let kafka_task = tokio::spawn(kafka.run(shutdown));
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = shutdown_sender.send(true);
    let _ = kafka_task.await;
    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .context("flushing on shutdown")?;
    Ok(())
}
