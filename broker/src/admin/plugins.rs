//! `GET /plugins` (what is loaded, with call counts, faults and time spent) and
//! `POST /plugins/reload` (hot reload, see `plugins::reload`). `runnel plugin list|reload` call
//! these.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::plugins::host::Stats;
use crate::plugins::{Kind, ReloadReport};

/// One loaded plugin, as `GET /plugins` lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    /// `filter`, `transform` or `quota`.
    pub kind: String,
    pub path: String,
    /// Topics whose produce chain includes it.
    pub topics: Vec<String>,
    pub calls: u64,
    pub faults: u64,
    pub instantiations: u64,
    /// Wall time spent in its calls, in microseconds.
    pub busy_us: u64,
    /// Disabled after `plugins.disable_after` failed calls in a row, until a reload or restart
    /// (its bindings apply their `on_error`).
    #[serde(default)]
    pub disabled: bool,
}

/// The body of `GET /plugins`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PluginList {
    /// Successful reloads since the broker started.
    pub reloads: u64,
    pub plugins: Vec<PluginInfo>,
}

pub async fn list(State(broker): State<Arc<Broker>>) -> Json<PluginList> {
    let set = broker.plugins.current();
    let section = broker.plugins.section();
    let info = |name: &str, kind: &str, stats: &Stats, disabled: bool| {
        let path = section
            .load
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.path.display().to_string())
            .unwrap_or_default();
        let topics = section
            .bindings
            .iter()
            .filter(|b| b.chain.iter().any(|n| n == name))
            .map(|b| b.topic.clone())
            .collect();
        PluginInfo {
            name: name.to_owned(),
            kind: kind.to_owned(),
            path,
            topics,
            calls: stats.calls.load(Ordering::Relaxed),
            faults: stats.faults.load(Ordering::Relaxed),
            instantiations: stats.instantiations.load(Ordering::Relaxed),
            busy_us: stats.busy_nanos.load(Ordering::Relaxed) / 1000,
            disabled,
        }
    };
    let mut plugins: Vec<PluginInfo> = set
        .loaded
        .iter()
        .map(|p| {
            let kind = match p.kind() {
                Kind::Filter => "filter",
                Kind::Transform => "transform",
            };
            info(p.name(), kind, &p.stats, p.is_disabled())
        })
        .collect();
    plugins.extend(
        set.quotas
            .loaded
            .iter()
            .map(|q| info(q.name(), "quota", &q.stats, false)),
    );
    Json(PluginList {
        reloads: broker.plugins.reloads(),
        plugins,
    })
}

/// The body of a failed `POST /plugins/reload`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadFailure {
    pub error: String,
}

pub async fn reload(
    State(broker): State<Arc<Broker>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<ReloadReport>, (StatusCode, Json<ReloadFailure>)> {
    // A web page in a browser on the gateway could POST here (a form needs no preflight);
    // browsers say where the request comes from, `runnel plugin reload` and curl do not.
    if headers.contains_key(axum::http::header::ORIGIN) {
        return Err((
            StatusCode::FORBIDDEN,
            Json(ReloadFailure {
                error: "a request from a web page (it has an Origin header) may not reload the \
                        config"
                    .into(),
            }),
        ));
    }
    let b = broker.clone();
    match tokio::task::spawn_blocking(move || b.reload_plugins()).await {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(e)) => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ReloadFailure {
                error: e.to_string(),
            }),
        )),
        Err(e) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ReloadFailure {
                error: format!("reload task failed: {e}"),
            }),
        )),
    }
}
