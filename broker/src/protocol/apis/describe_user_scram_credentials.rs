//! DescribeUserScramCredentials (key 50, KIP-554): which users may log in with SCRAM, and with
//! which mechanisms and iteration counts, for `kafka-configs --describe --entity-type users` and
//! `AdminClient.describeUserScramCredentials`. The users are those of the listener the request
//! came in on (its `sasl_plain_file`), all of them when none are named; each has SCRAM-SHA-256 and SCRAM-SHA-512 at 4,096
//! iterations, made from the file. A listener without a users file has none. As in Kafka, a user
//! asked for who has none is RESOURCE_NOT_FOUND, and a user asked for twice DUPLICATE_RESOURCE.
//! Users made with AlterUserScramCredentials (`scram_store`) are listed too, with their own
//! mechanisms and iteration counts. The client needs Describe on the cluster
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
        // Kafka refuses at the top, and again for each user named. librdkafka (2.12 to 2.16)
        // crashes its client on any top-level error of this answer (it frees an error text it
        // did not allocate), against Kafka as well: users named are refused each on its own,
        // which every client reads, and only a request for all users at the top.
        const WHY: &str = "describing users needs Describe on the cluster";
        let refused = E::ClusterAuthorizationFailed.code();
        let asked = req.users.unwrap_or_default();
        if asked.is_empty() {
            return DescribeUserScramCredentialsResponse::default()
                .with_error_code(refused)
                .with_error_message(Some(s(WHY)));
        }
        let results = asked
            .iter()
            .map(|u| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(u.name.clone())
                    .with_error_code(refused)
                    .with_error_message(Some(s(WHY)))
            })
            .collect();
        return DescribeUserScramCredentialsResponse::default().with_results(results);
    }
    // Each user's mechanisms and iterations: the users file's, then those made with
    // AlterUserScramCredentials, which take precedence.
    let mut known: BTreeMap<String, BTreeMap<Scram, u32>> = BTreeMap::new();
    for user in ctx.session.identity.scram_users() {
        known.insert(
            user,
            BTreeMap::from([(Scram::Sha256, ITERATIONS), (Scram::Sha512, ITERATIONS)]),
        );
    }
    for ((user, mechanism), keys) in ctx.broker.scram.all().iter() {
        known
            .entry(user.clone())
            .or_default()
            .insert(*mechanism, keys.iterations());
    }
    let described = |user: &str| {
        let infos = known[user]
            .iter()
            .map(|(m, iterations)| {
                CredentialInfo::default()
                    .with_mechanism(m.kafka_type())
                    .with_iterations(*iterations as i32)
            })
            .collect();
        DescribeUserScramCredentialsResult::default()
            .with_user(s(user))
            .with_credential_infos(infos)
    };
    // Null or empty asks for every user, as in Kafka.
    let results = match req.users.filter(|u| !u.is_empty()) {
        None => known.keys().map(|u| described(u)).collect(),
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
                    } else if known.contains_key(user) {
                        described(user)
                    } else {
                        refused(E::ResourceNotFound, "the user has no SCRAM credentials")
                    }
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
