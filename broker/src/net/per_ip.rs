//! Connections open at once per IP address on the Kafka listeners
//! (`broker.max_connections_per_ip` and its overrides, Kafka's `max.connections.per.ip` and
//! `max.connections.per.ip.overrides`).
//!
//! The TCP and TLS listeners count together, as Kafka's listeners do; a connection over its
//! address's limit is closed as soon as it is accepted, before any byte is read. QUIC devices
//! are not counted: many devices may reach a gateway from one address behind a NAT (their
//! listener has `max_connections` and address validation).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use edge_config::BrokerConfig;

/// The limits and the connections open per address.
pub struct PerIp {
    /// 0: none, except for the overrides.
    default: usize,
    overrides: HashMap<IpAddr, usize>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address, until dropped.
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// The limits of a validated config.
    pub fn from_config(config: &BrokerConfig) -> PerIp {
        PerIp {
            default: config.max_connections_per_ip,
            // Validated at start: a bad entry never gets here.
            overrides: config
                .parsed_ip_overrides()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            open: Arc::default(),
        }
    }

    /// The limit of `ip`, if it has one.
    fn limit(&self, ip: IpAddr) -> Option<usize> {
        match self.overrides.get(&ip) {
            Some(&n) => Some(n),
            None => (self.default > 0).then_some(self.default),
        }
    }

    /// Counts a new connection from `ip`: `Ok(None)` when its address has no limit,
    /// `Err(limit)` when it already has that many open.
    pub fn take(&self, ip: IpAddr) -> Result<Option<Slot>, usize> {
        let ip = ip.to_canonical();
        let Some(limit) = self.limit(ip) else {
            return Ok(None);
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= limit {
            if *n == 0 {
                open.remove(&ip);
            }
            return Err(limit);
        }
        *n += 1;
        Ok(Some(Slot {
            ip,
            open: self.open.clone(),
        }))
    }

    /// Connections counted from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_ip(default: usize, overrides: &[&str]) -> PerIp {
        let config = BrokerConfig {
            max_connections_per_ip: default,
            max_connections_per_ip_overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..BrokerConfig::default()
        };
        PerIp::from_config(&config)
    }

    #[test]
    fn each_address_holds_its_limit_and_gets_slots_back() {
        let limits = per_ip(2, &["192.0.2.7:3", "::1:0"]);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let first = limits.take(a).unwrap().unwrap();
        let _second = limits.take(a).unwrap().unwrap();
        assert_eq!(limits.take(a).err(), Some(2));
        assert_eq!(limits.open_from(a), 2);
        drop(first);
        assert!(
            limits.take(a).unwrap().is_some(),
            "a closed connection's slot is free"
        );
        // An override, above and below the default.
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| limits.take(b).unwrap().unwrap()).collect();
        assert_eq!(limits.take(b).err(), Some(3));
        drop(held);
        assert_eq!(limits.open_from(b), 0);
        assert_eq!(limits.take("::1".parse().unwrap()).err(), Some(0));
        // The same address written as IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _m = limits.take(mapped).unwrap().unwrap();
        assert_eq!(limits.open_from(b), 1);
    }

    #[test]
    fn without_limits_nothing_is_counted() {
        let limits = per_ip(0, &["192.0.2.7:1"]);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limits.take(a).unwrap().is_none());
        assert_eq!(limits.open_from(a), 0);
        let _one = limits.take("192.0.2.7".parse().unwrap()).unwrap().unwrap();
        assert!(limits.take("192.0.2.7".parse().unwrap()).is_err());
    }
}
