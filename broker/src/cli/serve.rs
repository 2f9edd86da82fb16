//! `runnel serve` and `runnel config validate`.

use std::path::Path;

use anyhow::Context as _;
use edge_config::Config;

pub fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let handle = crate::start_broker(config).await?;
        if let Some(addr) = handle.kafka_addr {
            tracing::info!(bootstrap = %addr, data_dir = %handle.broker.config.broker.data_dir.display(), "runnel is serving Kafka");
        }
        if let (Some(addr), Some(fp)) = (handle.quic_addr, &handle.quic_fingerprint) {
            tracing::info!(address = %addr, fingerprint = %fp, "runnel is serving devices over QUIC (pin this SHA-256 fingerprint)");
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn validate(file: &Path) -> anyhow::Result<()> {
    Config::load(Some(file))?;
    println!("{}: ok", file.display());
    Ok(())
}
