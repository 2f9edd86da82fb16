//! `runnel serve` and `runnel config validate`.

use std::path::Path;

use anyhow::Context as _;
use edge_config::Config;

pub fn run(config_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    let config_file = config_file.map(Path::to_path_buf);
    // As the JVM does for Kafka: the soft open-files limit (often 1024) is raised to the hard
    // one, since the broker holds a descriptor per partition and per connection.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before the data directory is opened (and recovered), so that a start that cannot
        // listen changes nothing there.
        let started = match addresses_free(&config) {
            Ok(()) => crate::start_broker_from(config, config_file.clone()).await,
            Err(e) => Err(e),
        };
        let handle = match started {
            Ok(handle) => handle,
            // A setting the broker could not use at start-up (a certificate it cannot read, a
            // federation client librdkafka refuses) is named with its line.
            Err(e) => {
                let text = format!("{e:#}");
                let line = config_file.as_deref().and_then(|f| key_line(f, &text));
                return Err(match (config_file, line) {
                    (Some(file), Some(line)) => {
                        anyhow::anyhow!("{}:{line}: {text}", file.display())
                    }
                    _ => e,
                });
            }
        };
        if let Some(addr) = handle.kafka_addr {
            tracing::info!(bootstrap = %addr, data_dir = %handle.broker.config.broker.data_dir.display(), "runnel is serving Kafka");
        }
        if let (Some(addr), Some(fp)) = (handle.quic_addr, &handle.quic_fingerprint) {
            tracing::info!(address = %addr, fingerprint = %fp, "runnel is serving devices over QUIC (pin this SHA-256 fingerprint)");
        }
        let reloader = tokio::spawn(reload_on_sighup(handle.broker.clone()));
        let mut storage = handle.broker.storage_failure.subscribe();
        // As Kafka halts when its last log directory fails: a supervisor (systemd's
        // Restart=on-failure) starts the broker again, which reads its logs back from the disk.
        let failed = tokio::select! {
            _ = wait_for_signal() => None,
            failure = storage.wait_for(Option::is_some) => failure.ok().and_then(|f| f.clone()),
        };
        reloader.abort();
        tracing::info!("shutting down");
        handle.shutdown().await;
        match failed {
            Some(failure) => Err(anyhow::anyhow!(
                "stopped: the storage failed ({failure}); start runnel again to read the logs back from the disk"
            )),
            None => Ok(()),
        }
    })
}

/// Reloads the plugins on every SIGHUP (`kill -HUP <pid>`), as daemons reload their config.
async fn reload_on_sighup(broker: std::sync::Arc<crate::Broker>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload plugins with POST /plugins/reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading plugins");
        let b = broker.clone();
        // The outcome is logged by reload_plugins.
        let _ = tokio::task::spawn_blocking(move || b.reload_plugins()).await;
    }
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

pub fn validate(file: &Path, read_files: bool) -> anyhow::Result<()> {
    let config = Config::load(Some(file))?;
    crate::federation::check_clients(&config.federation).map_err(|e| with_key_line(file, e))?;
    if read_files {
        read_named_files(file, &config)?;
    }
    out!("{}: ok", file.display());
    Ok(())
}

/// The line of `file` that sets the key an error's `text` starts with ("<key>: why").
fn key_line(file: &Path, text: &str) -> Option<usize> {
    text.split_once(": ")
        .filter(|(key, _)| {
            key.contains('.')
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c))
        })
        .and_then(|(key, _)| edge_config::key_line(file, key))
}

/// Whether the addresses of the enabled listeners can be bound: each is bound and let go
/// (port 0, which picks a free port, is not checked). An address in use or not of this host
/// is said with its key.
fn addresses_free(config: &Config) -> anyhow::Result<()> {
    let l = &config.listeners;
    let tcp = [
        (l.kafka.enabled, "listeners.kafka.address", l.kafka.address),
        (
            l.kafka_tls.enabled,
            "listeners.kafka_tls.address",
            l.kafka_tls.address,
        ),
        (l.admin.enabled, "listeners.admin.address", l.admin.address),
    ];
    for (_, key, address) in tcp.iter().filter(|(on, _, a)| *on && a.port() != 0) {
        std::net::TcpListener::bind(address)
            .map(drop)
            .with_context(|| format!("{key}: cannot listen on {address}"))?;
    }
    if l.quic.enabled && l.quic.address.port() != 0 {
        std::net::UdpSocket::bind(l.quic.address)
            .map(drop)
            .with_context(|| {
                format!(
                    "listeners.quic.address: cannot listen on udp {}",
                    l.quic.address
                )
            })?;
    }
    Ok(())
}

/// `e` with the config file and, for a "<key>: why" error, the key's line, as config errors have.
fn with_key_line(file: &Path, e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    match key_line(file, &text) {
        Some(line) => anyhow::anyhow!("{}:{line}: {text}", file.display()),
        None => anyhow::anyhow!("{}: {text}", file.display()),
    }
}

/// Reads what `config` (from `file`) names as the broker would at start-up.
fn read_named_files(file: &Path, config: &Config) -> anyhow::Result<()> {
    // The certificates, keys and CAs of the enabled listeners and of TLS between brokers, then
    // the listeners' users and device token files.
    let l = &config.listeners;
    let at = |e| with_key_line(file, e);
    if l.kafka_tls.enabled {
        crate::net::tls::acceptor(&l.kafka_tls).map_err(at)?;
    }
    if l.quic.enabled {
        // Without cert and key the broker makes its own certificate: nothing to read yet.
        if !l.quic.cert.as_os_str().is_empty() || !l.quic.key.as_os_str().is_empty() {
            crate::net::quic::server_identity(&l.quic, &config.broker.data_dir).map_err(at)?;
        }
        if l.quic.client_auth == edge_config::QuicClientAuth::Mtls {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            crate::net::tls::client_verifier(
                &l.quic.client_ca,
                "listeners.quic.client_ca",
                true,
                provider,
            )
            .map_err(at)?;
        }
    }
    if (l.kafka.enabled && l.kafka.sasl_oauthbearer)
        || (l.kafka_tls.enabled && l.kafka_tls.sasl_oauthbearer)
    {
        crate::protocol::oauth::OAuthValidator::open(crate::broker::oauth_settings(
            &config.oauthbearer,
        ))
        .map_err(at)?;
    }
    // The plugins, compiled and started as the broker would (a wrong world, a config the
    // plugin's init refuses, a file that is not a component), in a cache of their own.
    if !config.plugins.load.is_empty() {
        let cache = tempfile::tempdir().map_err(|e| at(e.into()))?;
        crate::plugins::Plugins::load(&config.plugins, cache.path().to_path_buf(), None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", e.config_place(&config.plugins, Some(file))))?;
    }
    // A follower's certificate, key and CA for TLS to its leader.
    crate::replication::Cluster::from_config(config.broker.node_id, &config.cluster).map_err(at)?;
    let quic_tokens = l.quic.enabled && l.quic.client_auth == edge_config::QuicClientAuth::Token;
    let credentials = [
        (
            l.kafka.enabled,
            "listeners.kafka.sasl_plain_file",
            &l.kafka.sasl_plain_file,
            true,
        ),
        (
            l.kafka_tls.enabled,
            "listeners.kafka_tls.sasl_plain_file",
            &l.kafka_tls.sasl_plain_file,
            true,
        ),
        (
            quic_tokens,
            "listeners.quic.token_file",
            &l.quic.token_file,
            false,
        ),
    ];
    for (used, key, path, users) in credentials {
        if used && !path.as_os_str().is_empty() {
            crate::protocol::auth::Tokens::load(path, users)
                .map_err(|e| anyhow::anyhow!("{}: {key}: {e}", file.display()))?;
        }
    }
    Ok(())
}
