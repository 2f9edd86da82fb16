//! DescribeProducers (key 61, KIP-664): the idempotent and transactional producers each
//! partition asked keeps a state for, with their epoch, last sequence and timestamp and the
//! start of a transaction they have open there (`kafka-transactions.sh describe-producers` and
//! `find-hanging`, `AdminClient.describeProducers`). The client needs Read on the topic, else
//! TOPIC_AUTHORIZATION_FAILED; an unknown partition gets UNKNOWN_TOPIC_OR_PARTITION. As in
//! Kafka every replica answers (`--broker-id`): a follower with the state its copy of the log
//! gives. The coordinator epoch is not kept: -1.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let catalog = &ctx.broker.catalog;
    let topics = super::first_of_each(req.topics, |t| {
        (t.name.clone(), t.partition_indexes.clone())
    })
    .into_iter()
    .map(|t| {
        let refused = !ctx.allowed(Operation::Read, ResourceType::Topic, &t.name);
        let topic = catalog.get(&t.name);
        let partitions = super::first_of_each(t.partition_indexes, |i| *i)
            .into_iter()
            .map(|index| {
                let out = PartitionResponse::default().with_partition_index(index);
                let error = if refused {
                    E::TopicAuthorizationFailed
                } else {
                    let Some(part) = topic.as_ref().and_then(|t| t.partition(index)) else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    let producers = part.log().active_producers();
                    return out.with_active_producers(
                        producers
                            .into_iter()
                            .map(|p| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(p.producer_id))
                                    .with_producer_epoch(i32::from(p.epoch))
                                    .with_last_sequence(p.last_sequence)
                                    .with_last_timestamp(p.last_timestamp)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(
                                        p.transaction_start.unwrap_or(-1),
                                    )
                            })
                            .collect(),
                    );
                };
                out.with_error_code(error.code())
            })
            .collect();
        TopicResponse::default()
            .with_name(t.name)
            .with_partitions(partitions)
    })
    .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
