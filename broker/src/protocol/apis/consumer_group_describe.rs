//! ConsumerGroupDescribe (key 69, v0-v1): groups of the consumer group protocol (KIP-848), with
//! each member's current and target assignment. A classic or unknown group gets
//! GROUP_ID_NOT_FOUND, as in Kafka; a group the client may not Describe,
//! GROUP_AUTHORIZATION_FAILED; a group whose members hold a topic the client may not Describe,
//! TOPIC_AUTHORIZATION_FAILED (the answer would name it).

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: ConsumerGroupDescribeRequest) -> ConsumerGroupDescribeResponse {
    let groups = super::first_of_each(req.group_ids, |g| g.clone())
        .into_iter()
        .map(|id| {
            let refused = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(super::OPERATIONS_NOT_ASKED);
            if let Some(code) = ctx.group_refusal(Operation::Describe, &id) {
                return refused.with_error_code(code);
            }
            match ctx.broker.groups.consumer_describe(&id) {
                Err(e) => refused
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(s(format!(
                        "group {} is not a group of the consumer protocol here",
                        id.as_str()
                    )))),
                Ok(d)
                    if d.members.iter().any(|m| {
                        let topics = m.assignment.keys().chain(m.target_assignment.keys());
                        topics.into_iter().any(|id| {
                            ctx.broker
                                .catalog
                                .get_by_id(*id)
                                .is_some_and(|t| !ctx.sees(ResourceType::Topic, &t.name))
                        })
                    }) =>
                {
                    refused.with_error_code(
                        kafka_protocol::error::ResponseError::TopicAuthorizationFailed.code(),
                    )
                }
                Ok(d) => DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_group_state(s(d.state.as_str()))
                    .with_group_epoch(d.group_epoch)
                    .with_assignment_epoch(d.assignment_epoch)
                    .with_assignor_name(s(d.assignor))
                    .with_authorized_operations(ctx.operations(
                        req.include_authorized_operations,
                        ResourceType::Group,
                        &id,
                    ))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                Member::default()
                                    .with_member_id(s(m.member_id))
                                    .with_instance_id(m.instance_id.map(s))
                                    .with_rack_id(m.rack_id.map(s))
                                    .with_member_epoch(m.member_epoch)
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_subscribed_topic_names(
                                        m.subscribed_topic_names
                                            .into_iter()
                                            .map(|n| TopicName(s(n)))
                                            .collect(),
                                    )
                                    .with_subscribed_topic_regex(m.subscribed_topic_regex.map(s))
                                    .with_assignment(assignment(&ctx, m.assignment))
                                    .with_target_assignment(assignment(&ctx, m.target_assignment))
                                    // 1: a member of the consumer protocol (v1).
                                    .with_member_type(if m.classic { 0 } else { 1 })
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

fn assignment(ctx: &Ctx, a: crate::groups::Assignment) -> Assignment {
    Assignment::default().with_topic_partitions(
        a.into_iter()
            .map(|(id, partitions)| {
                let name = ctx
                    .broker
                    .catalog
                    .get_by_id(id)
                    .map(|t| t.name.to_string())
                    .unwrap_or_default();
                TopicPartitions::default()
                    .with_topic_id(id)
                    .with_topic_name(TopicName(s(name)))
                    .with_partitions(partitions.into_iter().collect())
            })
            .collect(),
    )
}
