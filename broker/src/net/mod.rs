//! Listeners. One module per transport; every transport ends in [`conn::serve`], which runs the
//! Kafka protocol over any byte stream.
//!
//! - `tcp`: accept loop for the plaintext and TLS Kafka listeners (a bound on connections, a
//!   handshake timeout for TLS, a shutdown signal).
//! - `per_ip`: the connections open per address on those listeners, and their limits.
//! - `tls`: builds the rustls server config from the PEM files named in the config, and names
//!   clients by their certificates (`principal_rules`: Kafka's `ssl.principal.mapping.rules`).
//! - `quic`: the QUIC listener for devices; each bidirectional stream is one Kafka session.
//! - `conn`: one task per connection: frames in, responses out, in request order.

pub mod conn;
pub mod per_ip;
pub mod principal_rules;
pub mod quic;
pub mod tcp;
pub mod tls;
