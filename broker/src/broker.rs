//! The running broker: shared state behind one `Arc`, start-up and shutdown.
//!
//! [`start_broker`] opens the metadata database and the partition logs (recovering any torn
//! tails), binds the listeners named in the config and spawns the background work (flush,
//! retention and compaction, group timers). It returns a [`BrokerHandle`] that reports the bound
//! addresses (tests bind port 0) and shuts everything down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use edge_config::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Metrics};
use crate::catalog::Catalog;
use crate::groups::{GroupConfig, GroupCoordinator};
use crate::log_budget::{LogBudget, within_budget};
use crate::meta::MetaStore;
use crate::net;
use crate::plugins::{PluginSet, ReloadError, ReloadReport};
use crate::protocol::{self, Dispatcher};

/// Milliseconds since the Unix epoch, the clock Kafka timestamps use.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// State shared by every connection and background task.
pub struct Broker {
    pub config: Config,
    pub node_id: i32,
    /// The id Metadata reports; a follower takes its leader's (`Broker::adopt_cluster_id`).
    cluster_id: std::sync::RwLock<String>,
    pub catalog: Catalog,
    pub meta: MetaStore,
    pub groups: GroupCoordinator,
    pub dispatcher: Dispatcher,
    pub metrics: Metrics,
    /// Loaded plugins and topic chains (`[plugins]`), swapped whole by a reload
    /// ([`Broker::reload_plugins`]); empty when none are configured.
    pub plugins: PluginSet,
    /// What the `[federation]` forwarders report.
    pub federation: crate::federation::Stats,
    /// The ACLs and the decisions made from them (`[acls]`).
    pub acls: crate::acl::Authorizer,
    /// SCRAM credentials made with AlterUserScramCredentials.
    pub scram: Arc<crate::protocol::scram_store::ScramStore>,
    /// Byte-rate quotas per user and client id, set with AlterClientQuotas.
    pub client_quotas: crate::client_quotas::ClientQuotas,
    /// Kafka connections open per address, and their limits (`broker.max_connections_per_ip`).
    pub connections_per_ip: crate::net::per_ip::PerIp,
    /// Consumers' incremental fetch sessions (KIP-227).
    pub fetch_sessions: crate::protocol::fetch_sessions::FetchSessions,
    /// The memory consumers' Fetch answers hold until written (`broker.fetch_memory_bytes`).
    pub fetch_memory: Arc<crate::protocol::memory::Budget>,
    /// The memory large requests hold while read and handled
    /// (`broker.queued_max_request_bytes`).
    pub request_memory: Arc<crate::protocol::memory::Budget>,
    /// The peer brokers (`[cluster]`); `None` for a broker alone.
    pub cluster: Option<crate::replication::Cluster>,
    /// The transaction coordinator (on a cluster's leader; a follower's stays unused).
    pub transactions: crate::transactions::Transactions,
    /// Why the storage failed, once an fsync of a partition's data did
    /// ([`Broker::storage_failed`]); `/health` reports it and `runnel serve` stops on it.
    pub storage_failure: watch::Sender<Option<String>>,
}

/// A started broker. Dropping it does not stop the broker; call [`BrokerHandle::shutdown`].
pub struct BrokerHandle {
    pub broker: Arc<Broker>,
    /// Bound address of the plaintext Kafka listener, if enabled.
    pub kafka_addr: Option<SocketAddr>,
    /// Bound address of the TLS Kafka listener, if enabled.
    pub kafka_tls_addr: Option<SocketAddr>,
    /// Bound UDP address of the QUIC listener, if enabled.
    pub quic_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint (`AB:CD:...`) of the QUIC listener's certificate, for devices to pin.
    pub quic_fingerprint: Option<String>,
    /// Bound address of the admin HTTP listener, if enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl BrokerHandle {
    /// `host:port` of the plaintext listener, for a client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.kafka_addr.map(|a| a.to_string()).unwrap_or_default()
    }

    /// [`BrokerHandle::shutdown`], but a follower does not tell its leader it stops, as one
    /// that crashes or is cut off does not: the leader counts it in sync until
    /// `cluster.replica_lag_time_max` has passed (for tests and drills).
    pub async fn shutdown_unannounced(self) {
        if let Some(c) = &self.broker.cluster {
            c.stop_unannounced();
        }
        self.shutdown().await;
    }

    /// Stops accepting, closes connections, flushes every partition log and waits for the
    /// background tasks to end. A follower tells its leader it stops, which takes it out of
    /// the in-sync set at once (`crate::replication::follower`).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Connections end on the shutdown signal, a moment after it: wait for the last of them
        // to let go of the broker (appends they finish land before the flush below, and the
        // metadata database is closed when this returns, so that a broker started again on the
        // same data directory can open it).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&self.broker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&self.broker) > 1 {
            tracing::warn!("broker still in use 5 s after the shutdown signal");
        }
        // What changed of the groups' members in the last tick.
        self.broker.groups.flush();
        let now = now_ms();
        for topic in self.broker.catalog.list() {
            for p in topic.partitions() {
                if let Err(e) = p.log().flush(now) {
                    tracing::warn!(topic = %topic.name, partition = p.index, error = %e, "flush at shutdown failed");
                }
            }
        }
        tracing::info!("broker stopped");
    }
}

impl Broker {
    /// Notes that an fsync of partition data failed (`what`): the first time, logged, and
    /// `/health` and `runnel serve` learn of it. The partition itself already refuses writes
    /// and reads (`PartitionLog::failed`).
    pub fn storage_failed(&self, what: &str) {
        let first = self.storage_failure.send_if_modified(|failure| {
            failure.is_none() && {
                *failure = Some(what.to_string());
                true
            }
        });
        if first {
            tracing::error!(failure = %what, "an fsync of partition data failed: records acknowledged since the last good one may not be on the disk, so the partition takes no more writes and serves no reads; restart the broker, which reads the log back from the disk and cuts what did not reach it (Kafka takes the log directory offline the same way)");
        }
    }
    /// The brokers that hold a replica of every partition, sorted: this one alone, or every
    /// broker of the cluster.
    pub fn replica_ids(&self) -> Vec<i32> {
        let mut ids = self
            .cluster
            .as_ref()
            .map_or_else(|| vec![self.node_id], |c| c.replicas());
        ids.sort_unstable();
        ids
    }

    /// The cluster id clients see in Metadata.
    pub fn cluster_id(&self) -> String {
        self.cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the leader's cluster id (a follower does at each sync), so that clients see one
    /// cluster whichever broker they ask, and keeps it in the data dir first (written whole or
    /// not at all: a follower that lost it would take its leader for another cluster's).
    pub fn adopt_cluster_id(&self, id: &str) -> std::io::Result<()> {
        if id.is_empty() || self.cluster_id() == id {
            return Ok(());
        }
        write_cluster_id(&self.config.broker.data_dir, id)?;
        tracing::info!(cluster_id = id, "took the leader's cluster id");
        *self.cluster_id.write().unwrap_or_else(|p| p.into_inner()) = id.to_string();
        Ok(())
    }

    /// Reloads `[plugins]` (from the config file the broker was started with, if any) and swaps
    /// the new plugins in without touching connections; logs the outcome. Blocking.
    pub fn reload_plugins(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.plugins.reload(&self.config);
        match &result {
            Ok(r) => {
                tracing::info!(
                    plugins = r.plugins,
                    bindings = r.bindings,
                    elapsed_us = r.elapsed_us,
                    "plugins reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(sections = ?r.needs_restart, "config sections changed that take effect only after a restart");
                }
            }
            Err(e) => tracing::error!(error = %e, "plugin reload failed; the running plugins stay"),
        }
        result
    }
}

/// The clock's origin for a cluster's leader epochs: 2024-01-01 UTC, in ms since 1970.
const EPOCHS_SINCE_MS: i64 = 1_704_067_200_000;

/// The seconds since 2024-01-01 UTC at `now_ms`, rounded up (0 before then): the least leader
/// epoch of a cluster's leader, or of a topic it makes, then.
pub(crate) fn epoch_from_clock(now_ms: i64) -> i32 {
    (now_ms - EPOCHS_SINCE_MS + 999)
        .div_euclid(1000)
        .clamp(0, i32::MAX as i64) as i32
}

/// The leader epoch of a cluster's leader starting now, above `seen` (every epoch this broker
/// knows of): the seconds since 2024-01-01 UTC (an i32 until 2092) rounded up, and it serves
/// only once its clock has reached that second. So a broker that starts leading after the
/// other one began to (clocks in step) leads at a larger epoch, whether or not it heard of the
/// other's: a restart of one it never heard of takes a second its own start comes after. A
/// start waits under a second for it, or longer only when `seen` is ahead of the clock (a
/// clock set back, or the other broker's ahead): up to 3 s, and beyond that it leads at
/// `seen + 1` at once, with a warning.
async fn cluster_leader_epoch(seen: i32) -> i32 {
    let now = now_ms();
    let epoch = epoch_from_clock(now).max(seen.saturating_add(1));
    let wait = EPOCHS_SINCE_MS + epoch as i64 * 1000 - now;
    if wait > 3000 {
        tracing::warn!(
            leader_epoch = epoch,
            ahead_s = wait / 1000,
            "the leader epochs known here are ahead of this broker's clock: keep the brokers' clocks in step (NTP), or a move of the lead may give clients an older epoch than one they saw"
        );
    } else if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
    }
    epoch
}

/// Starts a broker with `config` (already validated) and returns once its listeners are bound.
pub async fn start_broker(config: Config) -> anyhow::Result<BrokerHandle> {
    start_broker_from(config, None).await
}

/// [`start_broker`] for a config read from `config_file`, which a plugin reload reads again.
pub async fn start_broker_from(
    config: Config,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<BrokerHandle> {
    let data_dir = config.broker.data_dir.clone();
    if data_dir.exists() && !data_dir.is_dir() {
        anyhow::bail!(
            "broker.data_dir {} is a file, not a directory",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create broker.data_dir {}", data_dir.display()))?;
    crate::admin::process::open_early();
    let metadata_was_there = data_dir.join("meta.redb").exists();
    let meta = MetaStore::open(&data_dir.join("meta.redb"))?;
    let cluster = crate::replication::Cluster::from_config(config.broker.node_id, &config.cluster)?;
    let replicas = cluster.as_ref().map_or(1, |c| c.replication_factor());
    let catalog = Catalog::open(
        &data_dir,
        config.topic_defaults(),
        meta.clone(),
        replicas,
        now_ms(),
    )
    .context("cannot open the partition logs")?;
    // Every segment of every partition holds a file open: a data dir that grew into the share
    // of the limit kept free (under a higher limit before) starts refusing new segments.
    if let Err(no) = crate::storage::open_files::room_for(0) {
        tracing::warn!(
            open = no.open,
            limit = no.limit,
            kept = no.kept,
            "the partitions' segments hold most of the open-files limit: new segments and \
             partitions are refused; raise the limit (LimitNOFILE=, ulimit -n) or use larger \
             segment.bytes / shorter retention"
        );
    }
    if cluster.is_some() {
        let max_seen = catalog
            .list()
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| p.log().max_producer_id())
            .max();
        if let Some(max_seen) = max_seen {
            meta.raise_producer_ids(crate::replication::producer_count_above(max_seen))
                .context("cannot update the producer id counter")?;
        }
        // Builds before min.insync.replicas was a topic config took `1` (Kafka's default,
        // copied from manifests) and went on with the cluster's value: said, since it counts now.
        let cluster_value = config.cluster.min_insync_replicas;
        for topic in catalog.list() {
            let own = topic.configs().get("min.insync.replicas").cloned();
            if let Some(own) = own.filter(|v| v.parse().is_ok_and(|v: i32| v < cluster_value)) {
                tracing::warn!(topic = %topic.name, min_insync_replicas = %own, cluster_min_insync_replicas = cluster_value,
                    "the topic's own min.insync.replicas is below cluster.min_insync_replicas: acks=all writes to it need fewer brokers in sync (delete the override to use the cluster's)");
            }
        }
    }
    // A leader takes an epoch above every one it led at, heard its leader use, or finds in a
    // batch, so that a client's position never names a later epoch than the leader's; every
    // start is a new epoch, as every election is in Kafka. In a cluster no controller hands
    // epochs out, and the other broker may have led at epochs this one never heard of (it
    // restarted while the two were apart): there the epoch comes from the clock as well
    // (`cluster_leader_epoch`). A follower says none (-1) until it has read its leader's.
    let seen = meta
        .raise_leader_epoch(catalog.max_epoch_seen())
        .context("cannot read the leader epoch")?;
    if cluster.as_ref().is_none_or(|c| c.is_leader()) {
        let epoch = match &cluster {
            Some(_) => cluster_leader_epoch(seen).await,
            None => seen.saturating_add(1),
        };
        meta.raise_leader_epoch(epoch)
            .context("cannot keep the leader epoch")?;
        catalog.lead_at_epoch(epoch, cluster.is_some());
        tracing::debug!(leader_epoch = epoch, "leading the partitions");
    }
    let groups = GroupCoordinator::new(
        GroupConfig {
            min_session_timeout: config.groups.min_session_timeout,
            max_session_timeout: config.groups.max_session_timeout,
            initial_rebalance_delay: config.groups.initial_rebalance_delay,
            offsets_retention: config.groups.offsets_retention,
            consumer: crate::groups::ConsumerSettings {
                session_timeout: config.groups.consumer_session_timeout,
                heartbeat_interval: config.groups.consumer_heartbeat_interval,
            },
            consumer_bounds: crate::groups::ConsumerBounds {
                min_session_timeout: config.groups.consumer_min_session_timeout,
                max_session_timeout: config.groups.consumer_max_session_timeout,
                min_heartbeat_interval: config.groups.consumer_min_heartbeat_interval,
                max_heartbeat_interval: config.groups.consumer_max_heartbeat_interval,
            },
        },
        Arc::new(meta.clone()),
    )
    .map_err(|e| anyhow::anyhow!("cannot load committed offsets: {e}"))?;
    if cluster.as_ref().is_some_and(|c| !c.is_leader()) {
        // Members it restored from when it led would refuse the leader's offsets.
        groups.forget_members();
    }
    // Records the metadata does not know, in a data dir whose meta.redb is new: the metadata
    // was lost, and with it the topics. Such a broker is not the cluster it was (see
    // `cluster_id`).
    let metadata_lost = !metadata_was_there && catalog.unknown_dirs_at_open() > 0;
    let cluster_id = cluster_id(&data_dir, metadata_lost)?;
    let acls =
        crate::acl::Authorizer::open(&config.acls, meta.clone()).context("cannot read the ACLs")?;
    let scram = crate::protocol::scram_store::ScramStore::open(meta.clone())
        .context("cannot read the SCRAM credentials")?;
    let client_quotas = crate::client_quotas::ClientQuotas::open(meta.clone())
        .context("cannot read the client quotas")?;
    let transactions = crate::transactions::Transactions::load(&meta)
        .context("cannot read the transactions' state")?;
    let plugins = PluginSet::load(
        &config.plugins,
        data_dir.join("plugin-cache"),
        config_file.clone(),
    )
    .map_err(|e| {
        let place = e.config_place(&config.plugins, config_file.as_deref());
        anyhow::anyhow!("cannot load the plugins: {place}: {e}")
    })?;
    let broker = Arc::new(Broker {
        node_id: config.broker.node_id,
        cluster_id: std::sync::RwLock::new(cluster_id),
        catalog,
        meta,
        groups: groups.clone(),
        dispatcher: protocol::routes(),
        metrics: Metrics::default(),
        plugins,
        federation: Default::default(),
        acls,
        scram: Arc::new(scram),
        client_quotas,
        connections_per_ip: crate::net::per_ip::PerIp::from_config(&config.broker),
        fetch_sessions: crate::protocol::fetch_sessions::FetchSessions::new(
            config.broker.max_fetch_sessions,
        ),
        fetch_memory: crate::protocol::memory::Budget::new(config.broker.fetch_memory_bytes),
        request_memory: crate::protocol::memory::Budget::new(
            config.broker.queued_max_request_bytes,
        ),
        cluster,
        transactions,
        storage_failure: watch::channel(None).0,
        config,
    });

    if broker.cluster.is_some() {
        crate::replication::checkpoint::restore(&broker);
    } else {
        crate::replication::checkpoint::forget_records_leader(&broker.config.broker.data_dir);
    }
    let federation = crate::federation::connect(&broker, &broker.config.federation)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut kafka_addr = None;
    let mut kafka_tls_addr = None;
    let listeners = &broker.config.listeners;
    // One checker of OAUTHBEARER tokens for the listeners that take them.
    let oauth = if (listeners.kafka.enabled && listeners.kafka.sasl_oauthbearer)
        || (listeners.kafka_tls.enabled && listeners.kafka_tls.sasl_oauthbearer)
    {
        Some(Arc::new(crate::protocol::oauth::OAuthValidator::open(
            oauth_settings(&broker.config.oauthbearer),
        )?))
    } else {
        None
    };
    if listeners.kafka.enabled {
        let sasl = net::tcp::Sasl {
            users: net::tcp::sasl_file(
                &listeners.kafka.sasl_plain_file,
                "listeners.kafka.sasl_plain_file",
            )?,
            oauth: oauth.clone().filter(|_| listeners.kafka.sasl_oauthbearer),
        };
        let (addr, task) = net::tcp::listen(
            broker.clone(),
            listeners.kafka.address,
            None,
            sasl,
            shutdown_rx.clone(),
        )
        .await?;
        kafka_addr = Some(addr);
        tasks.push(task);
    }
    if listeners.kafka_tls.enabled {
        let acceptor = net::tls::acceptor(&listeners.kafka_tls)?;
        let sasl = net::tcp::Sasl {
            users: net::tcp::sasl_file(
                &listeners.kafka_tls.sasl_plain_file,
                "listeners.kafka_tls.sasl_plain_file",
            )?,
            oauth: oauth
                .clone()
                .filter(|_| listeners.kafka_tls.sasl_oauthbearer),
        };
        let (addr, task) = net::tcp::listen(
            broker.clone(),
            listeners.kafka_tls.address,
            Some(acceptor),
            sasl,
            shutdown_rx.clone(),
        )
        .await?;
        kafka_tls_addr = Some(addr);
        tasks.push(task);
    }
    let mut quic_addr = None;
    let mut quic_fingerprint = None;
    if listeners.quic.enabled {
        let quic = net::quic::listen(broker.clone(), shutdown_rx.clone()).await?;
        quic_addr = Some(quic.addr);
        quic_fingerprint = Some(quic.fingerprint);
        tasks.push(quic.task);
    }
    let mut admin_addr = None;
    if listeners.admin.enabled {
        let (addr, task) =
            admin::listen(broker.clone(), listeners.admin.address, shutdown_rx.clone()).await?;
        admin_addr = Some(addr);
        tasks.push(task);
    }
    if broker.cluster.as_ref().is_none_or(|c| c.is_leader()) {
        tasks.push(tokio::spawn(transaction_ticks(
            broker.clone(),
            shutdown_rx.clone(),
        )));
    }
    let timers = groups.spawn_timers();
    let mut stop_timers = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = stop_timers.changed().await;
        timers.abort();
    }));
    tasks.push(tokio::spawn(log_maintenance(
        broker.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(return_free_memory(shutdown_rx.clone())));
    // Only the leader forwards: a follower's copies would be sent twice.
    if broker.cluster.as_ref().is_none_or(|c| c.is_leader()) {
        tasks.extend(federation.spawn(&broker, &shutdown_rx));
    }
    tasks.extend(crate::replication::follower::spawn(
        broker.clone(),
        shutdown_rx.clone(),
    ));
    tasks.extend(crate::replication::spawn_tick(
        broker.clone(),
        shutdown_rx.clone(),
    ));
    Ok(BrokerHandle {
        broker,
        kafka_addr,
        kafka_tls_addr,
        quic_addr,
        quic_fingerprint,
        admin_addr,
        shutdown,
        tasks,
    })
}

/// What `[oauthbearer]` says, for the token checker.
pub fn oauth_settings(c: &edge_config::OAuthBearerConfig) -> crate::protocol::oauth::OAuthSettings {
    crate::protocol::oauth::OAuthSettings {
        jwks_file: c.jwks_file.clone(),
        expected_issuer: c.expected_issuer.clone(),
        expected_audience: c.expected_audience.clone(),
        principal_claim: c.principal_claim.clone(),
        clock_skew: c.clock_skew,
    }
}

/// Runs `f`, which waits for the disk (an fsync), off the async worker it is called on
/// (`block_in_place` on a multi-thread runtime; a plain call otherwise), so that the worker's
/// other connections are served meanwhile.
pub fn waiting_for_disk<R>(f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The transaction coordinator's start (orphaned transactions aborted, ends left halfway
/// finished) and then its check every second (timeouts).
async fn transaction_ticks(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let txns = &broker.transactions;
    waiting_for_disk(|| {
        txns.tick(&broker, now_ms());
        txns.abort_orphans(&broker, now_ms());
    });
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => waiting_for_disk(|| txns.tick(&broker, now_ms())),
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the heap's free pages are handed back to the kernel.
const RETURN_FREE_MEMORY_EVERY: Duration = Duration::from_secs(30);

/// Free heap bytes under which nothing is handed back: a trim locks each arena while it walks
/// it, and a few MiB are not worth that.
const RETURN_FREE_MEMORY_FROM: usize = 8 << 20;

/// Hands the malloc heaps' free pages back to the kernel every
/// [`RETURN_FREE_MEMORY_EVERY`], so that the broker's resident memory falls again after a burst
/// (see [`crate::alloc::return_free_memory`]). A trim runs off the async workers.
async fn return_free_memory(mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(RETURN_FREE_MEMORY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let _ = tokio::task::spawn_blocking(|| {
            let started = std::time::Instant::now();
            let before = crate::admin::process::resident_bytes();
            if crate::alloc::return_free_memory(RETURN_FREE_MEMORY_FROM) {
                let after = crate::admin::process::resident_bytes();
                tracing::debug!(
                    took_us = started.elapsed().as_micros() as u64,
                    resident_before = before,
                    resident_after = after,
                    "free heap memory returned to the kernel"
                );
            }
        })
        .await;
    }
}

/// The cluster id clients see in Metadata: made once per data dir and kept in it, and made
/// again when the metadata database was lost (`metadata_lost`): a broker that no longer knows
/// its topics is not the cluster it was, and the new id keeps followers that hold the topics
/// from following it (they would delete their copies, taking the topics for deleted).
fn cluster_id(data_dir: &std::path::Path, metadata_lost: bool) -> anyhow::Result<String> {
    let path = data_dir.join("cluster.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() && !metadata_lost {
            return Ok(id);
        }
        if !id.is_empty() {
            tracing::warn!(
                was = id,
                "meta.redb was missing and is made anew, but the data dir holds partitions: \
                 the metadata is lost, so this broker starts as a new cluster (a new cluster \
                 id), which peers that hold the topics do not follow; to keep the cluster, \
                 restore meta.redb from a backup taken after the last topic was made or deleted"
            );
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_string();
    write_cluster_id(data_dir, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Writes `cluster.id` whole or not at all: a temporary file, synced, renamed over it, and the
/// directory synced.
fn write_cluster_id(data_dir: &std::path::Path, id: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = data_dir.join("cluster.id.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(id.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join("cluster.id"))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Errors of the background storage work (seals, flushes, retention) logged per minute: on a
/// full disk every partition fails at every check.
static STORAGE_ERRORS: LogBudget = LogBudget::new(30);

/// The data directory found gone, said a minute.
static DATA_DIR_GONE: LogBudget = LogBudget::new(1);

/// Seals the segments rolled since the last check: fsyncs them and writes their index files
/// without the partition's lock, so appends go on. A failed seal is tried again next time.
fn seal_rolled(p: &crate::catalog::Partition) {
    let seals = p.log().start_seals();
    for seal in seals {
        match seal.run() {
            Ok(()) => p.log().seal_done(&seal),
            Err(e) => {
                let e = p.log().note_error(e);
                within_budget!(STORAGE_ERRORS, error, topic = %p.topic, partition = p.index, segment = seal.base_offset(), error = %e, "sealing a rolled segment failed; trying again at the next check")
            }
        }
    }
}

/// Retention (when `retention` says its check is due), then a compaction pass if one is due; the
/// pass reads and rewrites segments without the partition's lock, so producers and consumers of
/// the partition are not held up by it. Segments rolled since the seal step are sealed first, as
/// a pass waits for pending seals.
fn maintain(
    cluster: Option<&crate::replication::Cluster>,
    p: &crate::catalog::Partition,
    now: i64,
    retention: bool,
) -> Result<(), crate::storage::StorageError> {
    seal_rolled(p);
    let (retained, pass) = {
        let mut log = p.log();
        let retained = if retention {
            log.retention(now)?
        } else {
            crate::storage::MaintenanceReport::default()
        };
        // Compaction looks only below the high watermark (a record above it may yet be cut by a
        // truncation, and must not have removed the value it supersedes) and the last stable
        // offset (what read_committed consumers cannot read yet must not remove what they can).
        let hw = crate::replication::readable_end(cluster, p, log.log_end_offset());
        let limit = log.last_stable_offset(hw);
        // Deletes stay until every follower has copied them.
        let copied_below =
            cluster.map_or(i64::MAX, |c| crate::replication::copied_by_all_below(c, p));
        (retained, log.start_compaction(now, limit, copied_below)?)
    };
    if retained.segments_deleted > 0 {
        tracing::info!(
            topic = %p.topic,
            partition = p.index,
            segments = retained.segments_deleted,
            bytes = retained.bytes_deleted,
            log_start_offset = retained.log_start_offset,
            "retention deleted segments"
        );
    }
    if let Some(pass) = pass {
        let started = std::time::Instant::now();
        let outcome = pass.run(now)?;
        let ran = started.elapsed();
        let mut report = crate::storage::MaintenanceReport::default();
        let mut log = p.log();
        // The time the log is held for the swap, not the wait for it.
        let swap_started = std::time::Instant::now();
        log.finish_compaction(outcome, now, &mut report)?;
        let swap = swap_started.elapsed();
        drop(log);
        // Passes that change nothing (a new segment with no key repeated, nothing to merge)
        // are not logged.
        if report.records_removed > 0 || report.segments_deleted > 0 {
            tracing::info!(
                topic = %p.topic,
                partition = p.index,
                segments_written = report.segments_compacted,
                records_removed = report.records_removed,
                segments_merged_or_emptied = report.segments_deleted,
                pass_ms = ran.as_millis() as u64,
                swap_ms = swap.as_millis() as u64,
                "compaction cleaned the log (it was locked only for the swap)"
            );
        }
    }
    Ok(())
}

/// Seals rolled segments, flushes logs on the configured interval and runs retention and
/// compaction.
async fn log_maintenance(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let log_config = &broker.config.log;
    let retention_every = log_config
        .retention_check_interval
        .max(Duration::from_millis(100));
    // Compaction looks at least as often as retention does.
    let compaction_every = log_config
        .compaction_check_interval
        .clamp(Duration::from_millis(100), retention_every);
    let tick_every = log_config
        .flush_interval
        .clamp(Duration::from_millis(10), compaction_every);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retention = tokio::time::Instant::now();
    let mut last_compaction = last_retention;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let run_retention = last_retention.elapsed() >= retention_every;
        let run_compaction = run_retention || last_compaction.elapsed() >= compaction_every;
        if run_compaction {
            last_compaction = tokio::time::Instant::now();
        }
        if run_retention {
            last_retention = tokio::time::Instant::now();
            let meta = broker.config.broker.data_dir.join("meta.redb");
            if !meta.exists() {
                within_budget!(DATA_DIR_GONE, error, data_dir = %broker.config.broker.data_dir.display(), "the data directory or its meta.redb is gone (removed or unmounted under the running broker): what is written now is lost at the next start; /health is 503");
            }
        }
        let b = broker.clone();
        // File work (fsync, segment deletion, compaction) runs off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            for topic in b.catalog.list() {
                for p in topic.partitions() {
                    // A failed log (a failed fsync) is left as it is until the broker starts again.
                    let failed = p.log().failed().map(str::to_string);
                    if let Some(reason) = failed {
                        b.storage_failed(&format!("{}-{}: {reason}", topic.name, p.index));
                        continue;
                    }
                    // Rolled segments first, so that they are synced before the active one.
                    seal_rolled(&p);
                    // The fsync itself runs without the log's lock, so appends go on.
                    let started = {
                        let mut log = p.log();
                        if log.needs_flush(now) { log.start_flush(now) } else { Ok(None) }
                    };
                    let synced = started.and_then(|f| f.map_or(Ok(()), |f| f.sync()));
                    if let Err(e) = synced {
                        within_budget!(STORAGE_ERRORS, error, topic = %topic.name, partition = p.index, error = %e, "flush failed");
                        let mut log = p.log();
                        log.flush_failed();
                        log.note_error(e);
                    }
                    // A failed fsync here or on any write path fails the broker's storage; no
                    // retention or compaction on what is left of the log.
                    let failed = p.log().failed().map(str::to_string);
                    if let Some(reason) = failed {
                        b.storage_failed(&format!("{}-{}: {reason}", topic.name, p.index));
                        continue;
                    }
                    if run_compaction
                        && let Err(e) = maintain(b.cluster.as_ref(), &p, now, run_retention) {
                            within_budget!(STORAGE_ERRORS, error, topic = %topic.name, partition = p.index, error = %e, "retention/compaction failed");
                        }
                }
            }
        })
        .await;
    }
}
