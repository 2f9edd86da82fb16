//! DescribeUserScramCredentials (key 50, KIP-554): which users may log in with SCRAM, and with
//! which mechanisms and iteration counts, for `kafka-configs --describe --entity-type users` and
//! `AdminClient.describeUserScramCredentials`. The users are those of the listener the request
//! came in on (its `sasl_plain_file`), all of them when none are named; each has SCRAM-SHA-256 and SCRAM-SHA-512 at 4,096
//! iterations, made from the file. A listener without a users file has none. As in Kafka, a user
//! asked for who has none is RESOURCE_NOT_FOUND, and a user asked for twice DUPLICATE_RESOURCE.
//! Credentials are not altered over the protocol (AlterUserScramCredentials is not served):
//! the file is where users are added and removed. The client needs Describe on the cluster
//! (`crate::acl`), else CLUSTER_AUTHORIZATION_FAILED.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::s;
use crate::protocol::Ctx;
use crate::protocol::scram::{ITERATIONS, Scram};

pub async fn handle(
    ctx: Ctx,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    if !ctx.allowed_on_cluster(crate::acl::Operation::Describe) {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(E::ClusterAuthorizationFailed.code())
            .with_error_message(Some(s("describing users needs Describe on the cluster")));
    }
    let known = ctx.session.identity.scram_users();
    let described = |user: &str| {
        let infos = [Scram::Sha256, Scram::Sha512]
            .map(|m| {
                CredentialInfo::default()
                    .with_mechanism(m.kafka_type())
                    .with_iterations(ITERATIONS as i32)
            })
            .to_vec();
        DescribeUserScramCredentialsResult::default()
            .with_user(s(user))
            .with_credential_infos(infos)
    };
    // Null or empty asks for every user, as in Kafka.
    let results = match req.users.filter(|u| !u.is_empty()) {
        None => known.iter().map(|u| described(u)).collect(),
        Some(asked) => {
            // Each name once, in the order first asked, with how often it was asked.
            let mut times: BTreeMap<&str, usize> = BTreeMap::new();
            let mut order = Vec::new();
            for u in &asked {
                let n = times.entry(u.name.as_str()).or_default();
                if *n == 0 {
                    order.push(u.name.as_str());
                }
                *n += 1;
            }
            order
                .into_iter()
                .map(|user| {
                    let refused = |e: E, why: &str| {
                        DescribeUserScramCredentialsResult::default()
                            .with_user(s(user))
                            .with_error_code(e.code())
                            .with_error_message(Some(s(why)))
                    };
                    if times[user] > 1 {
                        refused(
                            E::DuplicateResource,
                            "the user is asked for more than once in the request",
                        )
                    } else if known.binary_search_by(|k| k.as_str().cmp(user)).is_ok() {
                        described(user)
                    } else {
                        refused(
                            E::ResourceNotFound,
                            "the user has no SCRAM credentials on this listener",
                        )
                    }
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
