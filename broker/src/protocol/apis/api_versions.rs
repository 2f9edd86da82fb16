//! ApiVersions (key 18): the versions of every API we serve, derived from the route table.
//!
//! A request for a version newer than we know is answered in the v0 format with
//! UNSUPPORTED_VERSION and the full list, so the client can retry with a version we speak
//! (KIP-511); the connection stays open.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::protocol::{Ctx, Reply, encode_response, frame};

pub const MAX_VERSION: i16 = 3;

pub fn handle(_ctx: Ctx, req: frame::Request, advertised: Vec<(i16, i16, i16)>) -> Reply {
    let version = req.header.request_api_version;
    let correlation_id = req.header.correlation_id;
    let api_keys = advertised
        .into_iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(api_keys);
    let reply_version = if (0..=MAX_VERSION).contains(&version) {
        version
    } else {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    };
    let frame = encode_response(
        ApiKey::ApiVersions,
        reply_version,
        correlation_id,
        &response,
    );
    Box::pin(async move { frame })
}
