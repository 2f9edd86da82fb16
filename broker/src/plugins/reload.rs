//! Hot reload: the broker's current [`Plugins`] behind an atomic pointer, swapped whole.
//!
//! A reload (SIGHUP to `runnel serve`, or `POST /plugins/reload` on the admin listener) reads
//! the `[plugins]` section again (from the config file the broker was started with, else the
//! section it started with), loads every plugin anew (a component whose bytes did not change
//! comes from the on-disk cache, so no recompilation) and runs each `init`. Only when all of that
//! succeeds is the new set swapped in; on any error the old set stays and the error is returned.
//!
//! Invariants:
//! - Connections are never touched. A produce call takes a snapshot (`Arc`) of the set once and
//!   finishes with it, so batches in flight during a swap run through the old plugins whole and
//!   are stored as usual; the old instances are dropped when the last such call ends.
//! - Reloads are serialized; readers never wait (an `ArcSwap` load is a few atomic operations).
//! - Only `[plugins]` is reloaded. Other sections that differ in the file are named in a warning
//!   and take effect at the next restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use edge_config::{Config, ConfigError, PluginsConfig};

use super::{PluginError, Plugins};

/// Why a reload did not happen (the running plugins are unchanged).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot reload the config file: {0}")]
    Config(#[from] ConfigError),
    /// A plugin did not load; `key` is where the new `[plugins]` section names it
    /// (`plugins.load[i]`), when it does.
    #[error("{}{source}", key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Plugin {
        key: Option<String>,
        #[source]
        source: PluginError,
    },
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Plugins now loaded: filters and transforms, and quota policies.
    pub plugins: usize,
    /// Topic bindings and quota bindings now in force.
    pub bindings: usize,
    /// Time from reading the config to the swap, in microseconds.
    pub elapsed_us: u64,
    /// Sections of the config file that changed but need a restart (`broker`, `log`, ...).
    pub needs_restart: Vec<&'static str>,
}

/// The plugins in force, swappable while the broker runs.
pub struct PluginSet {
    current: ArcSwap<Plugins>,
    /// Held during a reload (serializes them) and the `[plugins]` section last loaded.
    section: Mutex<PluginsConfig>,
    cache_dir: PathBuf,
    config_file: Option<PathBuf>,
    reloads: AtomicU64,
}

impl PluginSet {
    /// Loads `config` at start-up. `config_file`, when given, is what a reload reads again.
    pub fn load(
        config: &PluginsConfig,
        cache_dir: PathBuf,
        config_file: Option<PathBuf>,
    ) -> Result<PluginSet, PluginError> {
        let plugins = Plugins::load(config, cache_dir.clone(), None)?;
        Ok(PluginSet {
            current: ArcSwap::from_pointee(plugins),
            section: Mutex::new(config.clone()),
            cache_dir,
            config_file,
            reloads: AtomicU64::new(0),
        })
    }

    /// The plugins in force now; hold the snapshot for the whole of one request.
    pub fn current(&self) -> Arc<Plugins> {
        self.current.load_full()
    }

    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The `[plugins]` section in force.
    pub fn section(&self) -> PluginsConfig {
        self.section
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads `[plugins]` and swaps the new set in; `running` is the config the broker started
    /// with (to tell which other sections changed). Blocking: plugin files are read, maybe
    /// compiled, and instantiated.
    pub fn reload(&self, running: &Config) -> Result<ReloadReport, ReloadError> {
        let mut section = self.section.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let (new_section, needs_restart) = match &self.config_file {
            Some(file) => {
                let file_config = Config::load(Some(file))?;
                let changed = changed_sections(running, &file_config);
                (file_config.plugins, changed)
            }
            None => (section.clone(), Vec::new()),
        };
        let plugins = Plugins::load(&new_section, self.cache_dir.clone(), Some(&self.current()))
            .map_err(|source| ReloadError::Plugin {
                key: source.config_key(&new_section),
                source,
            })?;
        let report = ReloadReport {
            plugins: plugins.loaded.len() + plugins.quotas.loaded.len(),
            bindings: new_section.bindings.len() + new_section.quotas.len(),
            elapsed_us: 0,
            needs_restart,
        };
        self.current.store(Arc::new(plugins));
        *section = new_section;
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(ReloadReport {
            elapsed_us: duration_us(started.elapsed()),
            ..report
        })
    }
}

fn duration_us(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Sections other than `[plugins]` in which `new` differs from `running`.
fn changed_sections(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if running.broker != new.broker {
        out.push("broker");
    }
    if running.listeners != new.listeners {
        out.push("listeners");
    }
    if running.log != new.log {
        out.push("log");
    }
    if running.groups != new.groups {
        out.push("groups");
    }
    if running.acls != new.acls {
        out.push("acls");
    }
    if running.oauthbearer != new.oauthbearer {
        out.push("oauthbearer");
    }
    if running.cluster != new.cluster {
        out.push("cluster");
    }
    if running.federation != new.federation {
        out.push("federation");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_sections_names_only_what_differs() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changed_sections(&a, &b).is_empty());
        b.log.segment_bytes += 1;
        b.plugins.call_timeout = Duration::from_secs(1);
        assert_eq!(changed_sections(&a, &b), vec!["log"]);
        b.federation.retry_backoff_max = Duration::from_secs(60);
        assert_eq!(changed_sections(&a, &b), vec!["log", "federation"]);
        b.cluster.min_insync_replicas = 2;
        assert_eq!(
            changed_sections(&a, &b),
            vec!["log", "cluster", "federation"]
        );
    }

    #[test]
    fn a_set_without_plugins_reloads_from_its_own_section() {
        let dir = tempfile::tempdir().unwrap();
        let set = PluginSet::load(&PluginsConfig::default(), dir.path().join("c"), None).unwrap();
        let before = set.current();
        let report = set.reload(&Config::default()).unwrap();
        assert_eq!((report.plugins, report.bindings), (0, 0));
        assert!(
            !Arc::ptr_eq(&before, &set.current()),
            "a new set is swapped in"
        );
        assert_eq!(set.reloads(), 1);
    }
}
