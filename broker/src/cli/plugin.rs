//! `runnel plugin list|reload`: the plugins of a running broker, through its admin HTTP
//! listener (`GET /plugins`, `POST /plugins/reload`).

use anyhow::{Context as _, bail};

use crate::admin::plugins::PluginList;

fn agent() -> ureq::Agent {
    // Non-2xx answers carry a JSON error body worth showing.
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(
    what: &str,
    admin: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<serde_json::Value> {
    let mut response = response.with_context(|| {
        format!("cannot reach the admin listener at {admin} (is the broker running with [listeners.admin] enabled?)")
    })?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{what}: cannot read the answer"))?;
    let value: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{what}: not JSON (HTTP {status}): {body}"))?;
    if !status.is_success() {
        let error = value["error"].as_str().unwrap_or(body.as_str());
        bail!("{what} failed: {error}");
    }
    Ok(value)
}

/// Prints one line per loaded plugin.
pub fn list(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/plugins");
    let value = answer("plugin list", admin, agent().get(&url).call())?;
    let list: PluginList = serde_json::from_value(value).context("unexpected /plugins answer")?;
    if list.plugins.is_empty() {
        println!("no plugins loaded");
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>8} {:>8} {:>12} {:>10}  TOPICS  PATH",
        "NAME", "CALLS", "FAULTS", "INSTANCES", "TIME", "PER CALL"
    );
    for p in &list.plugins {
        let per_call = p
            .busy_us
            .checked_div(p.calls)
            .map_or_else(|| "-".to_string(), |us| format!("{us}us"));
        println!(
            "{:<20} {:>10} {:>8} {:>8} {:>12} {:>10}  {}  {}",
            p.name,
            p.calls,
            p.faults,
            p.instantiations,
            format!("{:.3}s", p.busy_us as f64 / 1e6),
            per_call,
            if p.topics.is_empty() {
                "-".to_string()
            } else {
                p.topics.join(",")
            },
            p.path
        );
    }
    println!("reloads since start: {}", list.reloads);
    Ok(())
}

/// Asks the broker to reload `[plugins]` and prints what it did.
pub fn reload(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/plugins/reload");
    let report = answer("plugin reload", admin, agent().post(&url).send_empty())?;
    println!(
        "reloaded: {} plugins, {} bindings in {:.1} ms",
        report["plugins"],
        report["bindings"],
        report["elapsed_us"].as_f64().unwrap_or(0.0) / 1000.0
    );
    if let Some(sections) = report["needs_restart"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = sections.iter().filter_map(|s| s.as_str()).collect();
        println!(
            "note: [{}] changed too; those take effect after a restart",
            names.join("], [")
        );
    }
    Ok(())
}
