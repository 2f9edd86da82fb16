//! Scenario tests of the coordinator on a [`ManualClock`]: time moves only through
//! `Harness::advance`, which then runs one `tick`, so every timeout is exact and repeatable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

struct Harness {
    coord: GroupCoordinator,
    clock: ManualClock,
    store: Arc<MemoryOffsetStore>,
}

fn config(initial_delay: Duration) -> GroupConfig {
    GroupConfig {
        min_session_timeout: Duration::from_secs(6),
        max_session_timeout: Duration::from_secs(300),
        initial_rebalance_delay: initial_delay,
        offsets_retention: Duration::from_secs(3600),
        consumer: ConsumerSettings::default(),
        consumer_bounds: ConsumerBounds::default(),
    }
}

fn harness(initial_delay: Duration) -> Harness {
    let store = Arc::new(MemoryOffsetStore::new());
    let clock = ManualClock::new();
    let coord = GroupCoordinator::with_clock(
        config(initial_delay),
        store.clone(),
        Clock::Manual(clock.clone()),
    )
    .unwrap();
    Harness {
        coord,
        clock,
        store,
    }
}

/// Lets spawned join/sync tasks run up to their await point.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn proto(name: &str) -> JoinProtocol {
    JoinProtocol {
        name: name.into(),
        metadata: Bytes::from(format!("meta-{name}")),
    }
}

fn join_req(group: &str, member_id: &str, client: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: client.into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: vec![proto("range")],
        require_known_member_id: false,
        supports_skip_assignment: false,
        reason: None,
    }
}

fn sync_req(
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &str)],
) -> SyncRequest {
    SyncRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assignments
            .iter()
            .map(|(m, a)| SyncAssignment {
                member_id: (*m).into(),
                assignment: Bytes::from(a.to_string()),
            })
            .collect(),
    }
}

/// A LeaveGroup of one member.
fn leave_req(group: &str, member: &str) -> LeaveRequest {
    LeaveRequest {
        group_id: group.into(),
        members: vec![LeavingMember {
            member_id: member.into(),
            group_instance_id: None,
            reason: None,
        }],
    }
}

fn hb(group: &str, generation: i32, member: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
    }
}

fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    parts: &[(i32, i64)],
) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        topics: vec![OffsetCommitTopic {
            name: topic.into(),
            partitions: parts
                .iter()
                .map(|(p, o)| OffsetCommitPartition {
                    partition: *p,
                    offset: *o,
                    leader_epoch: 3,
                    metadata: Some(format!("m{p}")),
                    commit_timestamp_ms: None,
                })
                .collect(),
        }],
    }
}

/// The single error of a commit response, asserting all partitions agree.
fn commit_result(results: &[OffsetCommitTopicResult]) -> Result<(), GroupError> {
    let all: Vec<_> = results
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.result.clone()))
        .collect();
    assert!(
        all.windows(2).all(|w| w[0] == w[1]),
        "mixed results {all:?}"
    );
    all[0].clone()
}

impl Harness {
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.coord.tick();
    }

    /// Joins and waits; fails the test instead of hanging if the join never completes.
    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.coord.join(req, &TopicView::new()),
        )
        .await
        .expect("JoinGroup never completed")
    }

    /// Syncs and waits; fails the test instead of hanging if the sync never completes.
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        tokio::time::timeout(Duration::from_secs(5), self.coord.sync(req))
            .await
            .expect("SyncGroup never completed")
    }

    fn spawn_join(&self, req: JoinRequest) -> JoinHandle<Result<JoinResponse, GroupError>> {
        let c = self.coord.clone();
        tokio::spawn(async move { c.join(req, &TopicView::new()).await })
    }

    fn spawn_sync(&self, req: SyncRequest) -> JoinHandle<Result<SyncResponse, GroupError>> {
        let c = self.coord.clone();
        tokio::spawn(async move { c.sync(req).await })
    }

    /// Advances in 1 s steps until every handle has finished (at most 60 s).
    async fn run_until_done<T>(&self, handles: &[JoinHandle<T>]) {
        settle().await;
        for _ in 0..60 {
            if handles.iter().all(|h| h.is_finished()) {
                return;
            }
            self.advance(Duration::from_secs(1));
            settle().await;
        }
        panic!("handles did not finish within 60 s of clock time");
    }

    /// Joins `n` new dynamic members concurrently and syncs them; returns (member ids, generation).
    async fn stable_group(&self, group: &str, n: usize) -> (Vec<String>, i32) {
        let handles: Vec<_> = (0..n)
            .map(|i| self.spawn_join(join_req(group, "", &format!("c{i}"))))
            .collect();
        self.run_until_done(&handles).await;
        let mut responses = Vec::new();
        for h in handles {
            responses.push(h.await.unwrap().unwrap());
        }
        let generation = responses[0].generation_id;
        let ids: Vec<String> = responses.iter().map(|r| r.member_id.clone()).collect();
        let leader = responses[0].leader.clone();
        let assignments: Vec<(String, String)> = ids
            .iter()
            .map(|m| (m.clone(), format!("assign-{m}")))
            .collect();
        let mut syncs = Vec::new();
        for id in ids.iter().filter(|id| **id != leader) {
            syncs.push(self.spawn_sync(sync_req(group, generation, id, &[])));
        }
        settle().await;
        let a: Vec<(&str, &str)> = assignments
            .iter()
            .map(|(m, a)| (m.as_str(), a.as_str()))
            .collect();
        let leader_sync = self
            .sync(sync_req(group, generation, &leader, &a))
            .await
            .unwrap();
        assert_eq!(
            leader_sync.assignment,
            Bytes::from(format!("assign-{leader}"))
        );
        for s in syncs {
            s.await.unwrap().unwrap();
        }
        (ids, generation)
    }

    fn state(&self, group: &str) -> GroupState {
        self.coord.describe_group(group).unwrap().state
    }
}

#[tokio::test]
async fn single_member_join_sync_heartbeat() {
    let h = harness(Duration::ZERO);
    let joined = h.join(join_req("g", "", "client")).await.unwrap();
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, joined.member_id);
    assert!(
        joined.member_id.starts_with("client-"),
        "{}",
        joined.member_id
    );
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata, Bytes::from("meta-range"));
    assert_eq!(h.state("g"), GroupState::CompletingRebalance);

    let me = joined.member_id.as_str();
    let synced = h
        .sync(sync_req("g", 1, me, &[(me, "p0,p1")]))
        .await
        .unwrap();
    assert_eq!(synced.assignment, Bytes::from("p0,p1"));
    assert_eq!(h.state("g"), GroupState::Stable);

    // Heartbeats keep the member alive well past its session timeout.
    for _ in 0..6 {
        h.advance(Duration::from_secs(5));
        assert_eq!(h.coord.heartbeat(&hb("g", 1, me)), Ok(()));
    }
    let d = h.coord.describe_group("g").unwrap();
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].assignment, Bytes::from("p0,p1"));
    assert_eq!(d.members[0].client_id, "client");
}

#[tokio::test]
async fn member_id_required_flow() {
    let h = harness(Duration::ZERO);
    let mut req = join_req("g", "", "app");
    req.require_known_member_id = true;
    let id = match h.join(req.clone()).await {
        Err(GroupError::MemberIdRequired { member_id }) => member_id,
        other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
    };
    assert!(
        id.starts_with("app-") && id.len() > "app-".len() + 30,
        "{id}"
    );
    assert_eq!(
        GroupError::MemberIdRequired {
            member_id: id.clone()
        }
        .kafka_code(),
        79
    );

    // An id the coordinator never handed out is unknown.
    let mut bogus = req.clone();
    bogus.member_id = "app-bogus".into();
    assert_eq!(h.join(bogus).await, Err(GroupError::UnknownMemberId));

    req.member_id = id.clone();
    let joined = h.join(req.clone()).await.unwrap();
    assert_eq!(joined.member_id, id);
    assert_eq!(joined.generation_id, 1);

    // A pending id expires after the session timeout if the client never comes back.
    let mut other = join_req("g", "", "late");
    other.require_known_member_id = true;
    let Err(GroupError::MemberIdRequired { member_id: late }) = h.join(other.clone()).await else {
        panic!("expected MEMBER_ID_REQUIRED");
    };
    h.coord.heartbeat(&hb("g", 1, &id)).unwrap();
    h.advance(Duration::from_millis(SESSION_MS as u64));
    other.member_id = late;
    assert_eq!(h.join(other).await, Err(GroupError::UnknownMemberId));
}

#[tokio::test]
async fn three_members_join_concurrently() {
    let h = harness(Duration::from_secs(3));
    let handles: Vec<_> = (0..3)
        .map(|i| h.spawn_join(join_req("g", "", &format!("c{i}"))))
        .collect();
    settle().await;
    // The initial delay (3 s) is extended once because more members arrived during it.
    h.advance(Duration::from_secs(3));
    settle().await;
    assert!(
        handles.iter().all(|j| !j.is_finished()),
        "completed before the extended delay"
    );
    h.advance(Duration::from_secs(3));
    settle().await;
    let mut responses = Vec::new();
    for j in handles {
        responses.push(j.await.unwrap().unwrap());
    }
    assert!(responses.iter().all(|r| r.generation_id == 1));
    let leader = responses[0].leader.clone();
    assert!(responses.iter().all(|r| r.leader == leader));
    let leaders: Vec<_> = responses.iter().filter(|r| !r.members.is_empty()).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0].member_id, leader);
    assert_eq!(leaders[0].members.len(), 3);

    let ids: Vec<String> = responses.iter().map(|r| r.member_id.clone()).collect();
    let followers: Vec<_> = ids
        .iter()
        .filter(|id| **id != leader)
        .map(|id| (id.clone(), h.spawn_sync(sync_req("g", 1, id, &[]))))
        .collect();
    settle().await;
    assert!(
        followers.iter().all(|(_, j)| !j.is_finished()),
        "followers must wait for the leader"
    );
    let assignments: Vec<(&str, String)> = ids
        .iter()
        .map(|id| (id.as_str(), format!("for-{id}")))
        .collect();
    let a: Vec<(&str, &str)> = assignments.iter().map(|(m, s)| (*m, s.as_str())).collect();
    let mine = h.sync(sync_req("g", 1, &leader, &a)).await.unwrap();
    assert_eq!(mine.assignment, Bytes::from(format!("for-{leader}")));
    for (id, j) in followers {
        assert_eq!(
            j.await.unwrap().unwrap().assignment,
            Bytes::from(format!("for-{id}"))
        );
    }
    assert_eq!(h.state("g"), GroupState::Stable);
}

#[tokio::test]
async fn fourth_member_triggers_rebalance() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 3).await;
    let newcomer = h.spawn_join(join_req("g", "", "c3"));
    settle().await;
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    let mut rejoins = Vec::new();
    for id in &ids {
        assert_eq!(
            h.coord.heartbeat(&hb("g", generation, id)),
            Err(GroupError::RebalanceInProgress)
        );
        rejoins.push(h.spawn_join(join_req("g", id, "c")));
    }
    settle().await;
    // Everyone known has rejoined: completes without waiting for the rebalance timeout.
    rejoins.push(newcomer);
    let mut responses = Vec::new();
    for j in rejoins {
        assert!(j.is_finished());
        responses.push(j.await.unwrap().unwrap());
    }
    assert!(responses.iter().all(|r| r.generation_id == generation + 1));
    assert_eq!(responses.iter().filter(|r| r.members.len() == 4).count(), 1);
    // The old generation is now illegal.
    assert!(matches!(
        h.coord.heartbeat(&hb("g", generation, &ids[0])),
        Err(GroupError::IllegalGeneration { .. })
    ));
}

#[tokio::test]
async fn leaving_member_triggers_rebalance_without_it() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    let leave = leave_req("g", &ids[1]);
    let results = h.coord.leave(&leave).unwrap();
    assert_eq!(results[0].result, Ok(()));
    assert_eq!(
        h.coord.leave(&leave).unwrap()[0].result,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        h.coord.heartbeat(&hb("g", generation, &ids[0])),
        Err(GroupError::RebalanceInProgress)
    );
    let rejoined = h.join(join_req("g", &ids[0], "c0")).await.unwrap();
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(rejoined.members.len(), 1);
    assert_eq!(rejoined.leader, ids[0]);

    // The last member leaving empties the group (new generation, Empty).
    let leave_all = leave_req("g", &ids[0]);
    assert_eq!(h.coord.leave(&leave_all).unwrap()[0].result, Ok(()));
    assert_eq!(h.state("g"), GroupState::Empty);
}

#[tokio::test]
async fn silent_member_expires_after_session_timeout() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    h.advance(Duration::from_secs(5));
    h.coord.heartbeat(&hb("g", generation, &ids[0])).unwrap();
    h.advance(Duration::from_millis(SESSION_MS as u64 - 5_000 - 1));
    assert_eq!(
        h.coord.describe_group("g").unwrap().members.len(),
        2,
        "expired too early"
    );
    h.advance(Duration::from_millis(1));
    let d = h.coord.describe_group("g").unwrap();
    assert_eq!(d.state, GroupState::PreparingRebalance);
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id, ids[0]);
    assert_eq!(
        h.coord.heartbeat(&hb("g", generation, &ids[1])),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        h.coord.heartbeat(&hb("g", generation, &ids[0])),
        Err(GroupError::RebalanceInProgress)
    );
}

#[tokio::test]
async fn member_not_rejoining_is_dropped_after_rebalance_timeout() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    let newcomer = h.spawn_join(join_req("g", "", "c2"));
    let rejoin = h.spawn_join(join_req("g", &ids[0], "c0"));
    settle().await;
    // ids[1] keeps heartbeating (so its session stays alive) but never rejoins.
    for _ in 0..5 {
        h.advance(Duration::from_secs(5));
        assert_eq!(
            h.coord.heartbeat(&hb("g", generation, &ids[1])),
            Err(GroupError::RebalanceInProgress)
        );
    }
    settle().await;
    assert!(
        !rejoin.is_finished(),
        "completed before the rebalance timeout"
    );
    h.advance(Duration::from_secs(5)); // 30 s since the rebalance started
    settle().await;
    let a = rejoin.await.unwrap().unwrap();
    let b = newcomer.await.unwrap().unwrap();
    assert_eq!(a.generation_id, generation + 1);
    assert_eq!(b.generation_id, generation + 1);
    let leader = if a.members.is_empty() { &b } else { &a };
    let mut members: Vec<_> = leader.members.iter().map(|m| m.member_id.clone()).collect();
    members.sort();
    let mut expected = vec![a.member_id.clone(), b.member_id.clone()];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(
        h.coord.heartbeat(&hb("g", generation, &ids[1])),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn joined_member_without_sync_expires() {
    let h = harness(Duration::from_secs(3));
    let handles: Vec<_> = (0..2)
        .map(|i| h.spawn_join(join_req("g", "", &format!("c{i}"))))
        .collect();
    h.run_until_done(&handles).await;
    let mut responses = Vec::new();
    for j in handles {
        responses.push(j.await.unwrap().unwrap());
    }
    let leader = responses[0].leader.clone();
    let follower = responses
        .iter()
        .find(|r| r.member_id != leader)
        .unwrap()
        .member_id
        .clone();
    h.sync(sync_req("g", 1, &leader, &[])).await.unwrap();
    h.advance(Duration::from_secs(5));
    h.coord.heartbeat(&hb("g", 1, &leader)).unwrap();
    h.advance(Duration::from_millis(SESSION_MS as u64 - 5_000));
    let d = h.coord.describe_group("g").unwrap();
    assert_eq!(
        d.members.len(),
        1,
        "follower without SyncGroup or heartbeat should be gone"
    );
    assert_eq!(d.members[0].member_id, leader);
    assert_eq!(d.state, GroupState::PreparingRebalance);
    assert_eq!(
        h.sync(sync_req("g", 1, &follower, &[])).await,
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn disconnected_joiner_does_not_wedge_the_group() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    // ids[1] rejoins, then its connection drops (the task and its receiver are gone).
    // (New metadata, so that the rejoin starts a rebalance whoever the leader is.)
    let mut changed = join_req("g", &ids[1], "c1");
    changed.protocols[0].metadata = Bytes::from("changed");
    let dropped = h.spawn_join(changed);
    settle().await;
    dropped.abort();
    settle().await;
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    let a = h.join(join_req("g", &ids[0], "c0")).await.unwrap();
    assert_eq!(a.generation_id, generation + 1);
    // The dropped member never syncs nor heartbeats: it expires and the group moves on.
    h.advance(Duration::from_secs(5));
    h.coord
        .heartbeat(&hb("g", generation + 1, &ids[0]))
        .unwrap();
    h.advance(Duration::from_millis(SESSION_MS as u64 - 5_000));
    let d = h.coord.describe_group("g").unwrap();
    assert_eq!(d.members.len(), 1);
    let again = h.join(join_req("g", &ids[0], "c0")).await.unwrap();
    assert_eq!(again.generation_id, generation + 2);
    assert_eq!(again.members.len(), 1);
}

#[tokio::test]
async fn generation_and_member_errors() {
    let h = harness(Duration::ZERO);
    let j = h.join(join_req("g", "", "c")).await.unwrap();
    let me = j.member_id.as_str();
    // CompletingRebalance: commits get REBALANCE_IN_PROGRESS.
    let r = h
        .coord
        .commit_offsets(&commit_req("g", 1, me, "t", &[(0, 5)]));
    assert_eq!(commit_result(&r), Err(GroupError::RebalanceInProgress));
    assert_eq!(
        h.sync(sync_req("g", 7, me, &[])).await,
        Err(GroupError::IllegalGeneration {
            given: 7,
            current: 1
        })
    );
    assert_eq!(
        h.sync(sync_req("g", 1, "nobody", &[])).await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        h.sync(sync_req("nogroup", 1, me, &[])).await,
        Err(GroupError::UnknownMemberId)
    );
    let mut wrong_type = sync_req("g", 1, me, &[]);
    wrong_type.protocol_type = Some("connect".into());
    assert_eq!(
        h.sync(wrong_type).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    let mut wrong_name = sync_req("g", 1, me, &[]);
    wrong_name.protocol_name = Some("roundrobin".into());
    assert_eq!(
        h.sync(wrong_name).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    h.sync(sync_req("g", 1, me, &[(me, "a")])).await.unwrap();

    assert_eq!(
        h.coord.heartbeat(&hb("g", 0, me)).unwrap_err().kafka_code(),
        22
    );
    assert_eq!(
        h.coord.heartbeat(&hb("g", 1, "nobody")),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        h.coord.heartbeat(&hb("nogroup", 1, me)),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        h.coord.heartbeat(&hb("", 1, me)),
        Err(GroupError::InvalidGroupId)
    );

    let r = h
        .coord
        .commit_offsets(&commit_req("g", 2, me, "t", &[(0, 5), (1, 6)]));
    assert_eq!(
        commit_result(&r),
        Err(GroupError::IllegalGeneration {
            given: 2,
            current: 1
        })
    );
    let r = h
        .coord
        .commit_offsets(&commit_req("g", 1, "nobody", "t", &[(0, 5)]));
    assert_eq!(commit_result(&r), Err(GroupError::UnknownMemberId));
    let r = h
        .coord
        .commit_offsets(&commit_req("nogroup", 3, "x", "t", &[(0, 5)]));
    assert_eq!(commit_result(&r).unwrap_err().kafka_code(), 22);
    let r = h
        .coord
        .commit_offsets(&commit_req("g", 1, me, "t", &[(0, 5)]));
    assert_eq!(commit_result(&r), Ok(()));

    // Join-time validation.
    let mut short = join_req("g", "", "c");
    short.session_timeout_ms = 1000;
    assert_eq!(h.join(short).await.unwrap_err().kafka_code(), 26);
    let mut other_type = join_req("g", "", "c");
    other_type.protocol_type = "connect".into();
    assert_eq!(
        h.join(other_type).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    assert_eq!(
        h.join(join_req("", "", "c")).await,
        Err(GroupError::InvalidGroupId)
    );
    assert_eq!(
        h.join(join_req("nogroup", "m-1", "c")).await,
        Err(GroupError::UnknownMemberId)
    );
    let mut no_protocols = join_req("fresh", "", "c");
    no_protocols.protocols.clear();
    assert_eq!(
        h.join(no_protocols).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    assert_eq!(
        h.state("fresh"),
        GroupState::Dead,
        "a failed first join must not leave a group behind"
    );

    // During PreparingRebalance: sync says rebalance; commits with the current generation pass.
    let newcomer = h.spawn_join(join_req("g", "", "c2"));
    settle().await;
    assert_eq!(
        h.sync(sync_req("g", 1, me, &[])).await,
        Err(GroupError::RebalanceInProgress)
    );
    let r = h
        .coord
        .commit_offsets(&commit_req("g", 1, me, "t", &[(0, 9)]));
    assert_eq!(commit_result(&r), Ok(()));
    newcomer.abort();
}

fn static_join(group: &str, member_id: &str, instance: &str) -> JoinRequest {
    let mut r = join_req(group, member_id, instance);
    r.group_instance_id = Some(instance.into());
    r.require_known_member_id = true;
    r
}

#[tokio::test]
async fn static_member_rejoins_without_rebalance() {
    let h = harness(Duration::from_secs(3));
    let leader_join = h.spawn_join(join_req("g", "", "dyn"));
    let static_join_1 = h.spawn_join(static_join("g", "", "inst-1"));
    let joins = [leader_join, static_join_1];
    h.run_until_done(&joins).await;
    let [leader_join, static_join_1] = joins;
    let leader_response = leader_join.await.unwrap().unwrap();
    let leader = leader_response.member_id.clone();
    assert_eq!(leader_response.leader, leader, "the first joiner leads");
    let old_static = static_join_1.await.unwrap().unwrap().member_id;
    let static_entry = leader_response
        .members
        .iter()
        .find(|m| m.member_id == old_static)
        .unwrap();
    assert_eq!(static_entry.group_instance_id.as_deref(), Some("inst-1"));
    assert!(old_static.starts_with("inst-1-"), "{old_static}");
    let follower_sync = h.spawn_sync(sync_req("g", 1, &old_static, &[]));
    settle().await;
    h.sync(sync_req(
        "g",
        1,
        &leader,
        &[(&old_static, "static-share"), (&leader, "leader-share")],
    ))
    .await
    .unwrap();
    assert_eq!(
        follower_sync.await.unwrap().unwrap().assignment,
        Bytes::from("static-share")
    );

    // The static member restarts: empty member id, same instance id. No rebalance.
    let rejoined = h.join(static_join("g", "", "inst-1")).await.unwrap();
    assert_ne!(rejoined.member_id, old_static);
    assert_eq!(rejoined.generation_id, 1);
    assert_eq!(rejoined.leader, leader);
    assert!(rejoined.members.is_empty());
    assert_eq!(h.state("g"), GroupState::Stable);
    let mut s = sync_req("g", 1, &rejoined.member_id, &[]);
    s.group_instance_id = Some("inst-1".into());
    assert_eq!(
        h.sync(s).await.unwrap().assignment,
        Bytes::from("static-share")
    );
    assert_eq!(h.coord.heartbeat(&hb("g", 1, &leader)), Ok(()));

    // The old incarnation is fenced.
    let mut stale = hb("g", 1, &old_static);
    stale.group_instance_id = Some("inst-1".into());
    assert_eq!(h.coord.heartbeat(&stale).unwrap_err().kafka_code(), 82);
    assert_eq!(
        h.join(static_join("g", &old_static, "inst-1")).await,
        Err(GroupError::FencedInstanceId)
    );

    // A restarted coordinator knows the new incarnation (saved at the next tick), not the old.
    h.advance(Duration::from_millis(100));
    let again = GroupCoordinator::with_clock(
        config(Duration::from_secs(3)),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    let mut live = hb("g", 1, &rejoined.member_id);
    live.group_instance_id = Some("inst-1".into());
    assert_eq!(again.heartbeat(&live), Ok(()));
    assert_eq!(again.heartbeat(&stale).unwrap_err().kafka_code(), 82);

    // LeaveGroup by instance id alone removes it and rebalances.
    let leave = LeaveRequest {
        group_id: "g".into(),
        members: vec![LeavingMember {
            member_id: String::new(),
            group_instance_id: Some("inst-1".into()),
            reason: None,
        }],
    };
    assert_eq!(h.coord.leave(&leave).unwrap()[0].result, Ok(()));
    assert_eq!(
        h.coord.heartbeat(&hb("g", 1, &leader)),
        Err(GroupError::RebalanceInProgress)
    );
}

#[tokio::test]
async fn offsets_commit_fetch_and_survive_restart() {
    let h = harness(Duration::ZERO);
    // Standalone commit (no generation) to a group that does not exist yet.
    let r = h
        .coord
        .commit_offsets(&commit_req("simple", -1, "", "t", &[(0, 42), (1, 7)]));
    assert_eq!(commit_result(&r), Ok(()));
    assert_eq!(h.store.len(), 2);
    let fetched = h
        .coord
        .fetch_offsets(
            "simple",
            Some(&[OffsetFetchTopic {
                name: "t".into(),
                partitions: vec![0, 2],
            }]),
        )
        .unwrap();
    assert_eq!(
        fetched[0].partitions,
        vec![
            FetchedPartition {
                partition: 0,
                offset: 42,
                leader_epoch: 3,
                metadata: "m0".into()
            },
            FetchedPartition {
                partition: 2,
                offset: -1,
                leader_epoch: -1,
                metadata: String::new()
            },
        ]
    );
    let unknown = h
        .coord
        .fetch_offsets(
            "nobody",
            Some(&[OffsetFetchTopic {
                name: "t".into(),
                partitions: vec![0],
            }]),
        )
        .unwrap();
    assert_eq!(unknown[0].partitions[0].offset, -1);
    assert!(h.coord.fetch_offsets("nobody", None).unwrap().is_empty());

    // The standalone group exists, Empty, with no protocol type.
    let listed = h.coord.list_groups(&[]);
    assert_eq!(
        listed,
        vec![ListedGroup {
            group_id: "simple".into(),
            protocol_type: String::new(),
            state: GroupState::Empty,
            group_type: "classic",
        }]
    );

    // Oversized metadata fails that partition only.
    let mut big = commit_req("simple", -1, "", "t", &[(0, 50), (1, 8)]);
    big.topics[0].partitions[1].metadata = Some("x".repeat(OFFSET_METADATA_MAX_BYTES + 1));
    let r = h.coord.commit_offsets(&big);
    assert_eq!(r[0].partitions[0].result, Ok(()));
    assert_eq!(
        r[0].partitions[1].result.as_ref().unwrap_err().kafka_code(),
        12
    );

    // A consumer group's offsets, committed by a member.
    let j = h.join(join_req("cg", "", "c")).await.unwrap();
    h.sync(sync_req("cg", 1, &j.member_id, &[])).await.unwrap();
    let r = h
        .coord
        .commit_offsets(&commit_req("cg", 1, &j.member_id, "u", &[(3, 99)]));
    assert_eq!(commit_result(&r), Ok(()));
    // Standalone commits are refused while the group has members.
    let r = h
        .coord
        .commit_offsets(&commit_req("cg", -1, "", "u", &[(3, 1)]));
    assert_eq!(commit_result(&r), Err(GroupError::UnknownMemberId));

    // A new coordinator over the same store sees everything.
    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    let all = again.fetch_offsets("simple", None).unwrap();
    assert_eq!(all.len(), 1);
    let offsets: Vec<(i32, i64)> = all[0]
        .partitions
        .iter()
        .map(|p| (p.partition, p.offset))
        .collect();
    assert_eq!(offsets, vec![(0, 50), (1, 7)]);
    let cg = again.fetch_offsets("cg", None).unwrap();
    assert_eq!(cg[0].name, "u");
    assert_eq!(cg[0].partitions[0].offset, 99);
    // And the group's members: the member goes on with its generation, no rebalance.
    assert_eq!(
        again.describe_group("cg").unwrap().state,
        GroupState::Stable
    );
    assert_eq!(again.heartbeat(&hb("cg", 1, &j.member_id)), Ok(()));
}

/// A membership the store failed to save is saved again on a later tick, so no stale one stays.
#[tokio::test]
async fn a_membership_write_that_failed_is_tried_again() {
    let h = harness(Duration::from_secs(3));
    let (ids, _) = h.stable_group("g", 1).await;
    // The groups saved with members (an emptied group is saved without them).
    let saved = |h: &Harness| -> Vec<String> {
        h.store
            .load_memberships()
            .unwrap()
            .into_iter()
            .filter(|(_, m)| !m.members.is_empty())
            .map(|(g, _)| g)
            .collect()
    };
    assert_eq!(saved(&h), ["g"]);
    h.store.set_failing(true);
    h.coord.leave(&leave_req("g", &ids[0])).unwrap();
    h.advance(Duration::from_millis(100));
    assert_eq!(saved(&h), ["g"], "the removal failed");
    h.store.set_failing(false);
    h.advance(Duration::from_millis(100));
    assert!(saved(&h).is_empty(), "and was done on a later tick");
}

/// A restarted coordinator knows the members of the last completed rebalance: their heartbeats
/// and commits go on at their generation, the assignment is the same, and a member that does
/// not come back is removed after its session timeout, as usual.
#[tokio::test]
async fn group_membership_survives_a_restart() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    let before = h.coord.describe_group("g").unwrap();
    // A group that emptied keeps nothing to restore.
    let (lone, _) = h.stable_group("gone", 1).await;
    let left = h.coord.leave(&leave_req("gone", &lone[0]));
    assert!(left.is_ok());
    h.advance(Duration::from_millis(100));

    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    let after = again.describe_group("g").unwrap();
    assert_eq!(after.state, GroupState::Stable);
    assert_eq!(after.protocol, before.protocol);
    assert_eq!(after.members, before.members);
    assert!(again.describe_group("gone").unwrap().members.is_empty());
    assert_eq!(again.heartbeat(&hb("g", generation, &ids[0])), Ok(()));
    let r = again.commit_offsets(&commit_req("g", generation, &ids[0], "t", &[(0, 5)]));
    assert_eq!(commit_result(&r), Ok(()));

    // Only the first member comes back: the other is removed when its session runs out, and
    // the group rebalances.
    for _ in 0..(SESSION_MS / 1000 + 1) {
        h.clock.advance(Duration::from_secs(1));
        again.tick();
        let _ = again.heartbeat(&hb("g", generation, &ids[0]));
    }
    assert_eq!(
        again.heartbeat(&hb("g", generation, &ids[0])),
        Err(GroupError::RebalanceInProgress)
    );
    assert_eq!(again.describe_group("g").unwrap().members.len(), 1);

    // Deleting a group removes what was saved of it.
    let (ids, _) = h.stable_group("del", 1).await;
    h.coord.leave(&leave_req("del", &ids[0])).unwrap();
    assert_eq!(h.coord.delete_group("del"), Ok(()));
    assert!(
        h.store
            .load_memberships()
            .unwrap()
            .iter()
            .all(|(g, _)| g != "del")
    );
}

/// A broker that led and restarts as a follower forgets the members it saved, so that the
/// leader's offsets, copied as commits without a generation, are taken at once; the offsets it
/// had stay, and nothing is restored after the next restart either.
#[tokio::test]
async fn a_coordinator_that_forgets_its_members_keeps_the_offsets_and_takes_generationless_commits()
{
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 2).await;
    let r = h
        .coord
        .commit_offsets(&commit_req("g", generation, &ids[0], "t", &[(0, 5)]));
    assert_eq!(commit_result(&r), Ok(()));

    let follower = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    // Restored, a copy without a generation is refused while the members are there.
    let copy = commit_req("g", -1, "", "t", &[(0, 9)]);
    assert!(commit_result(&follower.commit_offsets(&copy)).is_err());
    follower.forget_members();
    let described = follower.describe_group("g").unwrap();
    assert_eq!(described.state, GroupState::Empty);
    assert!(described.members.is_empty());
    assert_eq!(
        follower.heartbeat(&hb("g", generation, &ids[0])),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(commit_result(&follower.commit_offsets(&copy)), Ok(()));
    let saved = h.store.load_memberships().unwrap();
    assert!(saved.iter().all(|(_, m)| m.members.is_empty()), "{saved:?}");

    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    assert_eq!(again.describe_group("g").unwrap().state, GroupState::Empty);
    let offsets = again.fetch_offsets("g", None).unwrap();
    assert_eq!(offsets[0].partitions[0].offset, 9);
}

#[tokio::test]
async fn store_failure_fails_the_commit_not_the_broker() {
    let h = harness(Duration::ZERO);
    h.store.set_failing(true);
    let r = h
        .coord
        .commit_offsets(&commit_req("g", -1, "", "t", &[(0, 1), (1, 2)]));
    let err = commit_result(&r).unwrap_err();
    assert!(matches!(err, GroupError::Store(_)));
    assert_eq!(
        err.kafka_code(),
        15,
        "COORDINATOR_NOT_AVAILABLE: clients retry"
    );
    assert_eq!(h.coord.fetch_offsets("g", None).unwrap(), vec![]);
    h.store.set_failing(false);
    assert_eq!(
        commit_result(
            &h.coord
                .commit_offsets(&commit_req("g", -1, "", "t", &[(0, 1)]))
        ),
        Ok(())
    );
    h.store.set_failing(true);
    assert!(matches!(
        h.coord.delete_group("g"),
        Err(GroupError::Store(_))
    ));
    assert_eq!(
        h.state("g"),
        GroupState::Empty,
        "a failed delete keeps the group"
    );
    h.store.set_failing(false);
    assert_eq!(h.coord.delete_group("g"), Ok(()));
}

#[tokio::test]
async fn list_describe_delete_groups() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("busy", 2).await;
    commit_result(&h.coord.commit_offsets(&commit_req(
        "busy",
        generation,
        &ids[0],
        "t",
        &[(0, 10)],
    )))
    .unwrap();
    commit_result(
        &h.coord
            .commit_offsets(&commit_req("idle", -1, "", "t", &[(0, 1)])),
    )
    .unwrap();

    let all = h.coord.list_groups(&[]);
    assert_eq!(
        all.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
        vec!["busy", "idle"]
    );
    assert_eq!(all[0].protocol_type, "consumer");
    let stable = h.coord.list_groups(&["stable".into()]);
    assert_eq!(stable.len(), 1);
    assert_eq!(stable[0].group_id, "busy");
    assert_eq!(
        h.coord.list_groups(&["Empty".into(), "Bogus".into()])[0].group_id,
        "idle"
    );
    assert!(h.coord.list_groups(&["Bogus".into()]).is_empty());

    let d = h.coord.describe_group("busy").unwrap();
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 2);
    for m in &d.members {
        assert_eq!(m.metadata, Bytes::from("meta-range"));
        assert_eq!(m.assignment, Bytes::from(format!("assign-{}", m.member_id)));
        assert_eq!(m.client_host, "/127.0.0.1");
    }
    let dead = h.coord.describe_group("missing").unwrap();
    assert_eq!((dead.state, dead.members.len()), (GroupState::Dead, 0));

    assert_eq!(h.coord.delete_group("busy").unwrap_err().kafka_code(), 68);
    assert_eq!(
        h.coord.delete_group("missing").unwrap_err().kafka_code(),
        69
    );
    assert_eq!(h.coord.delete_group("idle"), Ok(()));
    assert_eq!(
        h.coord.delete_group("idle"),
        Err(GroupError::GroupIdNotFound)
    );
    assert_eq!(h.store.len(), 1, "only busy's offset is left");

    let leave = LeaveRequest {
        group_id: "busy".into(),
        members: ids
            .iter()
            .map(|id| LeavingMember {
                member_id: id.clone(),
                group_instance_id: None,
                reason: Some("bye".into()),
            })
            .collect(),
    };
    assert!(
        h.coord
            .leave(&leave)
            .unwrap()
            .iter()
            .all(|r| r.result.is_ok())
    );
    assert_eq!(h.state("busy"), GroupState::Empty);
    assert_eq!(h.coord.delete_group("busy"), Ok(()));
    assert!(h.store.is_empty());
    assert_eq!(h.coord.fetch_offsets("busy", None).unwrap(), vec![]);
    assert!(h.coord.list_groups(&[]).is_empty());
}

#[tokio::test]
async fn protocol_selection_by_votes() {
    let h = harness(Duration::from_secs(3));
    let with = |client: &str, names: &[&str]| {
        let mut r = join_req("g", "", client);
        r.protocols = names.iter().map(|n| proto(n)).collect();
        r
    };
    // "sticky" is not supported by c: out. range gets 2 votes, roundrobin 1.
    let handles = vec![
        h.spawn_join(with("a", &["sticky", "range", "roundrobin"])),
        h.spawn_join(with("b", &["range", "roundrobin"])),
        h.spawn_join(with("c", &["roundrobin", "range"])),
    ];
    h.run_until_done(&handles).await;
    for j in handles {
        let r = j.await.unwrap().unwrap();
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        for m in &r.members {
            assert_eq!(m.metadata, Bytes::from("meta-range"));
        }
    }
    // A member sharing no protocol with the group is refused.
    assert_eq!(
        h.join(with("d", &["sticky"])).await,
        Err(GroupError::InconsistentGroupProtocol)
    );

    // The majority wins over the leader's (first joiner's) preference.
    for (a, c) in [
        (&["range", "roundrobin"][..], &["roundrobin", "range"][..]),
        (&["range", "roundrobin"], &["roundrobin"]),
    ] {
        let h = harness(Duration::from_secs(3));
        let handles = vec![
            h.spawn_join(with("a", a)),
            h.spawn_join(with("b", &["roundrobin", "range"])),
            h.spawn_join(with("c", c)),
        ];
        h.run_until_done(&handles).await;
        for j in handles {
            let r = j.await.unwrap().unwrap();
            assert_eq!(r.protocol_name.as_deref(), Some("roundrobin"));
            if !r.members.is_empty() {
                assert!(r.member_id.starts_with("a-"), "a joined first and leads");
            }
        }
    }
}

#[tokio::test]
async fn empty_group_offsets_expire_after_retention() {
    let h = harness(Duration::ZERO);
    commit_result(
        &h.coord
            .commit_offsets(&commit_req("g", -1, "", "t", &[(0, 1)])),
    )
    .unwrap();
    h.advance(Duration::from_secs(3599));
    assert_eq!(h.coord.fetch_offsets("g", None).unwrap().len(), 1);
    h.advance(Duration::from_secs(1));
    assert!(h.coord.fetch_offsets("g", None).unwrap().is_empty());
    assert!(h.store.is_empty());
    assert_eq!(h.state("g"), GroupState::Dead);
}

/// A group that only commits (a standalone consumer assigning itself partitions) loses each
/// offset `retention` after its own commit, as in Kafka, even while others keep being
/// committed.
#[tokio::test]
async fn a_standalone_groups_offsets_expire_one_by_one() {
    let h = harness(Duration::ZERO);
    let commit = |partition: i32, offset: i64| {
        commit_result(&h.coord.commit_offsets(&commit_req(
            "solo",
            -1,
            "",
            "t",
            &[(partition, offset)],
        )))
        .unwrap();
    };
    commit(0, 3);
    let partitions = |h: &Harness| -> Vec<i32> {
        let mut p: Vec<i32> = h
            .coord
            .fetch_offsets("solo", None)
            .unwrap()
            .into_iter()
            .flat_map(|t| t.partitions.into_iter().map(|p| p.partition))
            .collect();
        p.sort();
        p
    };
    // Partition 1 committed every 15 minutes; partition 0 once.
    for quarter in 1..=5 {
        h.advance(Duration::from_secs(900));
        commit(1, quarter);
        if quarter == 3 {
            assert_eq!(partitions(&h), [0, 1], "kept within the retention");
        }
    }
    assert_eq!(partitions(&h), [1], "partition 0 expired on its own");
    assert_eq!(h.store.load().unwrap().len(), 1, "gone from the store too");
}

#[test]
fn kafka_codes_match_the_protocol() {
    let cases = [
        (GroupError::UnknownServerError("x".into()), -1),
        (GroupError::Store(StoreError::new("disk")), 15),
        (GroupError::OffsetMetadataTooLarge { size: 1, max: 0 }, 12),
        (GroupError::CoordinatorLoadInProgress, 14),
        (GroupError::CoordinatorNotAvailable, 15),
        (
            GroupError::IllegalGeneration {
                given: 1,
                current: 2,
            },
            22,
        ),
        (GroupError::InconsistentGroupProtocol, 23),
        (GroupError::InvalidGroupId, 24),
        (GroupError::UnknownMemberId, 25),
        (
            GroupError::InvalidSessionTimeout {
                timeout_ms: 1,
                min_ms: 2,
                max_ms: 3,
            },
            26,
        ),
        (GroupError::RebalanceInProgress, 27),
        (GroupError::NonEmptyGroup, 68),
        (GroupError::GroupIdNotFound, 69),
        (
            GroupError::MemberIdRequired {
                member_id: "m".into(),
            },
            79,
        ),
        (GroupError::FencedInstanceId, 82),
    ];
    for (e, code) in cases {
        assert_eq!(e.kafka_code(), code, "{e:?}");
    }
    assert_eq!(
        GroupState::parse("completingrebalance"),
        Some(GroupState::CompletingRebalance)
    );
    assert_eq!(GroupState::parse("AwaitingSync"), None);
}

#[tokio::test]
async fn timer_task_expires_members_on_the_tokio_clock() {
    let cfg = GroupConfig {
        min_session_timeout: Duration::from_millis(100),
        ..config(Duration::ZERO)
    };
    let coord = GroupCoordinator::new(cfg, Arc::new(MemoryOffsetStore::new())).unwrap();
    let timers = coord.spawn_timers();
    let mut req = join_req("g", "", "c");
    req.session_timeout_ms = 200;
    let joined = coord.join(req, &TopicView::new()).await.unwrap();
    assert_eq!(coord.describe_group("g").unwrap().members.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Session expiry on the real tokio clock (applied by tick or lazily by list_groups).
    let listed = coord.list_groups(&[]);
    assert_eq!(
        listed[0].state,
        GroupState::Empty,
        "{listed:?} ({})",
        joined.member_id
    );
    drop(coord);
    tokio::time::timeout(Duration::from_secs(1), timers)
        .await
        .expect("timer task ends with the coordinator")
        .unwrap();
}

/// Consumer-protocol metadata subscribing to `topics` (ConsumerProtocolSubscription v0).
fn subscription(topics: &[&str]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let sub = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from(t.to_string()))
            .collect(),
    );
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    sub.encode(&mut out, 0).unwrap();
    out.freeze()
}

/// Consumer-protocol metadata subscribing to topic `t` and saying it owns the partitions
/// `owned` of it (ConsumerProtocolSubscription v1, as a cooperative classic member sends it).
pub(super) fn subscription_owning(owned: impl IntoIterator<Item = i32>) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let owned: Vec<i32> = owned.into_iter().collect();
    let owned = match owned.is_empty() {
        true => vec![],
        false => vec![
            TopicPartition::default()
                .with_topic(StrBytes::from_static_str("t").into())
                .with_partitions(owned),
        ],
    };
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_static_str("t")])
        .with_owned_partitions(owned);
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&1i16.to_be_bytes());
    sub.encode(&mut out, 1).unwrap();
    out.freeze()
}

/// KIP-496: while a consumer group is live, the offsets of a topic none of its members subscribes
/// to any more expire `offsets_retention` after their commit; the subscribed topic's stay.
#[tokio::test]
async fn a_live_groups_offsets_of_a_topic_it_left_expire_after_retention() {
    let h = harness(Duration::ZERO);
    let mut join = join_req("g", "", "c0");
    join.protocols = vec![JoinProtocol {
        name: "range".into(),
        metadata: subscription(&["now"]),
    }];
    let handle = h.spawn_join(join);
    h.run_until_done(std::slice::from_ref(&handle)).await;
    let joined = handle.await.unwrap().unwrap();
    let (member, generation) = (joined.member_id.clone(), joined.generation_id);
    h.sync(sync_req("g", generation, &member, &[(&member, "a")]))
        .await
        .unwrap();
    assert_eq!(h.state("g"), GroupState::Stable);
    for topic in ["now", "before"] {
        let req = commit_req("g", generation, &member, topic, &[(0, 5)]);
        commit_result(&h.coord.commit_offsets(&req)).unwrap();
    }
    // A live group of another protocol (Kafka Connect's, say) keeps its offsets: only consumer
    // groups say what they subscribe to.
    let mut join = join_req("connect", "", "w0");
    join.protocol_type = "connect".into();
    let handle = h.spawn_join(join);
    h.run_until_done(std::slice::from_ref(&handle)).await;
    let worker = handle.await.unwrap().unwrap();
    let (worker_id, worker_generation) = (worker.member_id.clone(), worker.generation_id);
    let mut sync = sync_req(
        "connect",
        worker_generation,
        &worker_id,
        &[(&worker_id, "a")],
    );
    sync.protocol_type = Some("connect".into());
    h.sync(sync).await.unwrap();
    let req = commit_req(
        "connect",
        worker_generation,
        &worker_id,
        "configs",
        &[(0, 1)],
    );
    commit_result(&h.coord.commit_offsets(&req)).unwrap();
    let committed = |h: &Harness| -> Vec<String> {
        let mut topics: Vec<String> = h
            .coord
            .fetch_offsets("g", None)
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        topics.sort();
        topics
    };

    // The member stays (heartbeats) while the retention passes.
    let step = Duration::from_secs(5);
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(3600) {
        h.advance(step);
        waited += step;
        h.coord.heartbeat(&hb("g", generation, &member)).unwrap();
        h.coord
            .heartbeat(&hb("connect", worker_generation, &worker_id))
            .unwrap();
        if waited == Duration::from_secs(3540) {
            assert_eq!(
                committed(&h),
                ["before", "now"],
                "kept within the retention"
            );
        }
    }
    // Looked at once a minute: within one more minute "before" has gone.
    for _ in 0..12 {
        h.advance(step);
        h.coord.heartbeat(&hb("g", generation, &member)).unwrap();
        h.coord
            .heartbeat(&hb("connect", worker_generation, &worker_id))
            .unwrap();
    }
    assert_eq!(committed(&h), ["now"]);
    assert_eq!(h.state("g"), GroupState::Stable);
    assert_eq!(h.state("connect"), GroupState::Stable);
    assert_eq!(h.coord.fetch_offsets("connect", None).unwrap().len(), 1);
    assert_eq!(h.store.load().unwrap().len(), 2, "gone from the store too");
}

#[test]
fn a_consumer_protocol_group_is_saved_as_it_changes_and_forgotten_when_long_empty() {
    let h = harness(Duration::ZERO);
    let id = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (id, 2))]);
    let visible = |_: &str| true;
    let join = ConsumerHeartbeat {
        group_id: "cg".into(),
        member_id: "m".into(),
        member_epoch: 0,
        rebalance_timeout_ms: 5_000,
        subscribed_topic_names: Some(vec!["t".into()]),
        owned: Some(Assignment::new()),
        ..Default::default()
    };
    let joined = h.coord.consumer_heartbeat(join, &view, &visible).unwrap();
    // Saved before the answer: a restart now would know the member.
    assert_eq!(h.store.load_consumer_groups().unwrap().len(), 1);
    let leave = ConsumerHeartbeat {
        group_id: "cg".into(),
        member_id: "m".into(),
        member_epoch: -1,
        ..Default::default()
    };
    h.coord.consumer_heartbeat(leave, &view, &visible).unwrap();
    assert!(joined.member_epoch > 0);
    // Empty, it stays a group of the consumer protocol (kept for a restart too)...
    assert_eq!(h.coord.list_groups(&[])[0].group_type, "consumer");
    assert_eq!(h.store.load_consumer_groups().unwrap().len(), 1);
    // ...until an empty group without offsets is forgotten, row and all.
    h.clock
        .advance(EMPTY_GROUP_RETENTION + Duration::from_secs(1));
    h.coord.tick();
    assert!(h.coord.list_groups(&[]).is_empty());
    assert!(h.store.load_consumer_groups().unwrap().is_empty());
}

/// A classic assignment (ConsumerProtocolAssignment v0) of `partitions` of topic `t`.
fn classic_assignment(partitions: &[i32]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        TopicPartition::default()
            .with_topic(StrBytes::from_static_str("t").into())
            .with_partitions(partitions.to_vec()),
    ]);
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    a.encode(&mut out, 0).unwrap();
    out.freeze()
}

/// The partitions of `t` a classic assignment holds.
fn partitions_of(assignment: &[u8]) -> Vec<i32> {
    let mut out: Vec<i32> = consumer::read_assignment(assignment)
        .unwrap()
        .into_iter()
        .flat_map(|(_, ps)| ps)
        .collect();
    out.sort();
    out
}

/// Kafka's online upgrade: a consumer of `group.protocol=consumer` joining a live classic
/// group takes it over; the classic members keep their partitions until told (Heartbeat:
/// REBALANCE_IN_PROGRESS) to join again, then the group assigns for them (no leader), and no
/// partition is ever held by two members.
#[tokio::test]
async fn a_consumer_protocol_member_joining_a_classic_group_hosts_its_members() {
    // The initial delay lets both classic members into the first rebalance.
    let h = harness(Duration::from_secs(3));
    let topic = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (topic, 4))]);
    let visible = |_: &str| true;
    let classic = |member: &str, client: &str| {
        let mut req = join_req("mig", member, client);
        req.protocols = vec![JoinProtocol {
            name: "range".into(),
            metadata: subscription(&["t"]),
        }];
        req
    };
    // A stable classic group: one member holds t-0 and t-1, the other t-2 and t-3.
    let (leader, follower, generation) = stable_classic_pair(&h, "mig", [None, None]).await;
    assert_eq!(h.state("mig"), GroupState::Stable);
    h.coord
        .commit_offsets(&commit_req("mig", generation, &leader, "t", &[(0, 5)]))
        .iter()
        .for_each(|t| assert!(t.partitions.iter().all(|p| p.result.is_ok())));

    // A member of the consumer protocol joins: the group is now one of that protocol, with
    // all three members; the newcomer gets nothing the classic members still hold.
    let newcomer = ConsumerHeartbeat {
        group_id: "mig".into(),
        member_id: "new".into(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(vec!["t".into()]),
        owned: Some(Assignment::new()),
        ..Default::default()
    };
    let reply = h
        .coord
        .consumer_heartbeat(newcomer, &view, &visible)
        .unwrap();
    assert!(reply.member_epoch > generation);
    assert_eq!(
        reply.assignment,
        Some(Assignment::new()),
        "all four are held"
    );
    assert_eq!(h.coord.list_groups(&[])[0].group_type, "consumer");
    assert_eq!(h.coord.describe_group("mig").unwrap().members.len(), 3);
    // The classic members' commits at their generation still count until they rejoin.
    let committed =
        h.coord
            .commit_offsets(&commit_req("mig", generation, &follower, "t", &[(2, 9)]));
    assert!(committed[0].partitions[0].result.is_ok());

    // Told to rejoin; an eager member joins again holding nothing, and is answered at once
    // with its new epoch as the generation and no leader.
    for m in [&leader, &follower] {
        assert_eq!(
            h.coord.heartbeat(&hb("mig", generation, m)),
            Err(GroupError::RebalanceInProgress)
        );
    }
    let mut held: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    let mut generations: std::collections::BTreeMap<String, i32> = Default::default();
    for m in [&leader, &follower] {
        // Answered at once: no rebalance to wait for.
        let rejoined = h.coord.join(classic(m, "c"), &view).await.unwrap();
        assert_eq!(rejoined.leader, "");
        assert!(rejoined.members.is_empty());
        assert_eq!(rejoined.generation_id, reply.member_epoch);
        let synced = h
            .sync(sync_req("mig", rejoined.generation_id, m, &[]))
            .await
            .unwrap();
        held.insert(m.to_string(), partitions_of(&synced.assignment));
        generations.insert(m.to_string(), rejoined.generation_id);
        assert_eq!(
            h.coord.heartbeat(&hb("mig", rejoined.generation_id, m)),
            Ok(())
        );
    }
    // The freed partition goes to the newcomer at its next heartbeat.
    let again = ConsumerHeartbeat {
        group_id: "mig".into(),
        member_id: "new".into(),
        member_epoch: reply.member_epoch,
        owned: Some(Assignment::new()),
        ..Default::default()
    };
    let reply = h.coord.consumer_heartbeat(again, &view, &visible).unwrap();
    let newcomer: Vec<i32> = reply
        .assignment
        .unwrap()
        .get(&topic)
        .map(|p| p.iter().copied().collect())
        .unwrap_or_default();
    assert!(!newcomer.is_empty(), "the newcomer gets a share");
    let mut all: Vec<i32> = held.values().flatten().copied().chain(newcomer).collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3], "each partition held once: {held:?}");

    // An old generation is refused now; the new one commits; a leave removes the member.
    let stale = h
        .coord
        .commit_offsets(&commit_req("mig", generation, &leader, "t", &[(0, 6)]));
    assert!(matches!(
        stale[0].partitions[0].result,
        Err(GroupError::IllegalGeneration { .. })
    ));
    let fresh = h.coord.commit_offsets(&commit_req(
        "mig",
        generations[&leader],
        &leader,
        "t",
        &[(0, 6)],
    ));
    assert!(fresh[0].partitions[0].result.is_ok());
    let left = h.coord.leave(&leave_req("mig", &leader)).unwrap();
    assert_eq!(left[0].result, Ok(()));
    assert_eq!(h.coord.describe_group("mig").unwrap().members.len(), 2);
    assert_eq!(
        h.coord.heartbeat(&hb("mig", generations[&leader], &leader)),
        Err(GroupError::UnknownMemberId)
    );
}

/// A hosted classic member told to join again that keeps heartbeating but never joins is
/// removed after its rebalance timeout (Kafka's join timeout), so what it holds goes to the
/// others.
#[tokio::test]
async fn a_hosted_classic_member_that_never_joins_again_is_removed() {
    let h = harness(Duration::ZERO);
    let topic = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (topic, 2))]);
    let visible = |_: &str| true;
    let mut req = join_req("lazy", "", "c0");
    req.protocols = vec![JoinProtocol {
        name: "range".into(),
        metadata: subscription(&["t"]),
    }];
    let joined = h.join(req).await.unwrap();
    let (id, generation) = (joined.member_id, joined.generation_id);
    let mut sync = sync_req("lazy", generation, &id, &[]);
    sync.assignments = vec![SyncAssignment {
        member_id: id.clone(),
        assignment: classic_assignment(&[0, 1]),
    }];
    h.sync(sync).await.unwrap();
    let newcomer = |epoch: i32| ConsumerHeartbeat {
        group_id: "lazy".into(),
        member_id: "new".into(),
        member_epoch: epoch,
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(vec!["t".into()]),
        owned: Some(Assignment::new()),
        ..Default::default()
    };
    let first = h
        .coord
        .consumer_heartbeat(newcomer(0), &view, &visible)
        .unwrap();
    assert_eq!(first.assignment, Some(Assignment::new()));
    // Heartbeats keep its session; it is told to join again each time and never does.
    for _ in 0..(REBALANCE_MS / 5_000) {
        assert_eq!(
            h.coord.heartbeat(&hb("lazy", generation, &id)),
            Err(GroupError::RebalanceInProgress)
        );
        h.advance(Duration::from_secs(5));
    }
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.coord.heartbeat(&hb("lazy", generation, &id)),
        Err(GroupError::UnknownMemberId)
    );
    let next = h
        .coord
        .consumer_heartbeat(newcomer(first.member_epoch), &view, &visible)
        .unwrap();
    let all: Vec<i32> = next.assignment.unwrap()[&topic].iter().copied().collect();
    assert_eq!(all, vec![0, 1]);
}

/// A stable classic group of two members over t (4 partitions): one holds t-0 and t-1, the
/// other t-2 and t-3. Returns (leader, follower, generation).
async fn stable_classic_pair(
    h: &Harness,
    group: &str,
    instances: [Option<&str>; 2],
) -> (String, String, i32) {
    let classic = |client: &str, instance: Option<&str>| {
        let mut req = join_req(group, "", client);
        req.group_instance_id = instance.map(str::to_string);
        req.protocols = vec![JoinProtocol {
            name: "range".into(),
            metadata: subscription(&["t"]),
        }];
        req
    };
    let joins = [
        h.spawn_join(classic("c0", instances[0])),
        h.spawn_join(classic("c1", instances[1])),
    ];
    h.run_until_done(&joins).await;
    let mut joined = Vec::new();
    for j in joins {
        joined.push(j.await.unwrap().unwrap());
    }
    let generation = joined[0].generation_id;
    let leader = joined[0].leader.clone();
    let follower = joined
        .iter()
        .map(|j| j.member_id.clone())
        .find(|m| *m != leader)
        .unwrap();
    let mut leader_sync = sync_req(group, generation, &leader, &[]);
    leader_sync.assignments = halves(&leader, &follower);
    let mut follower_sync = sync_req(group, generation, &follower, &[]);
    follower_sync.group_instance_id = instances[1].map(str::to_string);
    leader_sync.group_instance_id = instances[0].map(str::to_string);
    let waiting = h.spawn_sync(follower_sync);
    settle().await;
    h.sync(leader_sync).await.unwrap();
    waiting.await.unwrap().unwrap();
    (leader, follower, generation)
}

/// A classic leader's assignment of `t`'s four partitions: 0 and 1 to `first`, 2 and 3 to
/// `second`.
fn halves(first: &str, second: &str) -> Vec<SyncAssignment> {
    vec![
        SyncAssignment {
            member_id: first.to_string(),
            assignment: classic_assignment(&[0, 1]),
        },
        SyncAssignment {
            member_id: second.to_string(),
            assignment: classic_assignment(&[2, 3]),
        },
    ]
}

fn newcomer_join(group: &str, member: &str, instance: Option<&str>) -> ConsumerHeartbeat {
    ConsumerHeartbeat {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: 0,
        instance_id: instance.map(str::to_string),
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(vec!["t".into()]),
        owned: Some(Assignment::new()),
        ..Default::default()
    }
}

/// Review findings of the online upgrade: a takeover while the classic group prepares a
/// rebalance keeps what its members hold (the newcomer gets none of it); a heartbeat the
/// coordinator refuses takes nothing over; a static member restarted with the consumer
/// protocol replaces its classic self, keeping its partitions; a hosted member that joins and
/// never syncs leaves after its rebalance timeout.
#[tokio::test]
async fn an_upgrade_mid_rebalance_or_by_a_static_member_moves_nothing_twice() {
    let topic = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (topic, 4))]);
    let visible = |_: &str| true;

    // Mid-rebalance: a third classic member's join starts a rebalance (the two keep what they
    // hold meanwhile, as in Kafka); the newcomer takes over then.
    let h = harness(Duration::from_secs(3));
    let (leader, follower, _) = stable_classic_pair(&h, "up", [None, None]).await;
    let mut third = join_req("up", "", "c2");
    third.protocols = vec![JoinProtocol {
        name: "range".into(),
        metadata: subscription(&["t"]),
    }];
    let pending = h.spawn_join(third);
    settle().await;
    assert_eq!(h.state("up"), GroupState::PreparingRebalance);
    let mut refused = newcomer_join("up", "new", None);
    refused.server_assignor = Some("nope".into());
    assert!(matches!(
        h.coord.consumer_heartbeat(refused, &view, &visible),
        Err(GroupError::UnsupportedAssignor(_))
    ));
    assert_eq!(
        h.coord.list_groups(&[])[0].group_type,
        "classic",
        "a refused heartbeat takes nothing over"
    );
    let reply = h
        .coord
        .consumer_heartbeat(newcomer_join("up", "new", None), &view, &visible)
        .unwrap();
    assert_eq!(
        reply.assignment,
        Some(Assignment::new()),
        "all four still held"
    );
    assert_eq!(
        pending.await.unwrap(),
        Err(GroupError::RebalanceInProgress),
        "the waiting join is told to join again"
    );
    let described = h.coord.consumer_describe("up").unwrap();
    let held: Vec<(String, Vec<i32>)> = described
        .members
        .iter()
        .map(|m| {
            let ps = m.assignment.get(&topic).cloned().unwrap_or_default();
            (m.member_id.clone(), ps.into_iter().collect())
        })
        .collect();
    assert!(held.contains(&(leader.clone(), vec![0, 1])), "{held:?}");
    assert!(held.contains(&(follower.clone(), vec![2, 3])), "{held:?}");

    // A static classic member restarted with group.protocol=consumer and its instance id
    // replaces its classic self (it sent no LeaveGroup) and takes its partitions again.
    let h = harness(Duration::from_secs(3));
    let (_, follower, generation) = stable_classic_pair(&h, "up", [Some("i0"), Some("i1")]).await;
    let back = h
        .coord
        .consumer_heartbeat(newcomer_join("up", "i1-new", Some("i1")), &view, &visible)
        .unwrap();
    let mine: Vec<i32> = back.assignment.unwrap()[&topic].iter().copied().collect();
    assert_eq!(mine, vec![2, 3], "its partitions again");
    assert_eq!(back.member_epoch, generation, "no new group epoch");
    assert_eq!(
        h.coord.heartbeat(&hb("up", generation, &follower)),
        Err(GroupError::UnknownMemberId),
        "the classic self is gone"
    );

    // Joined, never synced: out after its rebalance timeout. (The newcomer reads another
    // topic, so the classic members keep their targets and need no other rebalance.)
    let h = harness(Duration::from_secs(3));
    let (leader, follower, _) = stable_classic_pair(&h, "up", [None, None]).await;
    let view = TopicView::from([
        ("t".to_string(), (topic, 4)),
        ("u".to_string(), (uuid::Uuid::from_u128(8), 1)),
    ]);
    let mut elsewhere = newcomer_join("up", "new", None);
    elsewhere.subscribed_topic_names = Some(vec!["u".into()]);
    h.coord
        .consumer_heartbeat(elsewhere, &view, &visible)
        .unwrap();
    let mut again = join_req("up", &leader, "c0");
    again.protocols = vec![JoinProtocol {
        name: "range".into(),
        metadata: subscription(&["t"]),
    }];
    let rejoined = h.coord.join(again, &view).await.unwrap();
    // The other classic member goes on as it should: joins again and syncs.
    let mut other = join_req("up", &follower, "c1");
    other.protocols = vec![JoinProtocol {
        name: "range".into(),
        metadata: subscription(&["t"]),
    }];
    let other = h.coord.join(other, &view).await.unwrap();
    h.sync(sync_req("up", other.generation_id, &follower, &[]))
        .await
        .unwrap();
    for _ in 0..(REBALANCE_MS / 5_000) {
        for (m, generation) in [
            (&leader, rejoined.generation_id),
            (&follower, other.generation_id),
        ] {
            assert_eq!(h.coord.heartbeat(&hb("up", generation, m)), Ok(()));
        }
        h.advance(Duration::from_secs(5));
    }
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.coord
            .heartbeat(&hb("up", rejoined.generation_id, &leader)),
        Err(GroupError::UnknownMemberId)
    );
}

/// A stop between the two writes of a takeover leaves both the classic membership and the
/// consumer group saved: the restarted coordinator takes the consumer group's members, the
/// newer, and the classic membership goes.
#[tokio::test]
async fn a_takeover_cut_between_its_writes_comes_back_as_the_consumer_group() {
    let topic = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (topic, 4))]);
    let h = harness(Duration::from_secs(3));
    stable_classic_pair(&h, "up", [None, None]).await;
    let classic = h.store.load_memberships().unwrap();
    assert_eq!(classic.len(), 1);
    h.coord
        .consumer_heartbeat(newcomer_join("up", "new", None), &view, &|_| true)
        .unwrap();
    let members_saved = |h: &Harness| -> usize {
        let saved = h.store.load_memberships().unwrap();
        saved.iter().map(|(_, m)| m.members.len()).sum()
    };
    assert_eq!(members_saved(&h), 0);
    // As if the membership's removal had not reached the store.
    h.store
        .save_membership(&classic[0].0, Some(&classic[0].1))
        .unwrap();
    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    assert_eq!(again.list_groups(&[])[0].group_type, "consumer");
    assert_eq!(again.consumer_describe("up").unwrap().members.len(), 3);
    again.tick();
    assert_eq!(members_saved(&h), 0);
}

/// An emptied classic group keeps its protocol type and generation across a restart (as
/// Kafka's group record keeps them): ListGroups and DescribeGroups show "consumer", and the
/// next rebalance counts on from the generation it had.
#[tokio::test]
async fn an_emptied_group_keeps_its_protocol_type_and_generation_across_a_restart() {
    let h = harness(Duration::from_secs(3));
    let (ids, generation) = h.stable_group("g", 1).await;
    h.coord.leave(&leave_req("g", &ids[0])).unwrap();
    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    let described = again.describe_group("g").unwrap();
    assert_eq!(described.state, GroupState::Empty);
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(again.list_groups(&[])[0].protocol_type, "consumer");
    let joined = again
        .join(join_req("g", "", "c9"), &TopicView::new())
        .await
        .unwrap();
    // (The leave itself completed a rebalance of no one, as in Kafka.)
    assert!(joined.generation_id > generation, "{joined:?}");
}

/// Kafka's online downgrade: once the last member of the consumer protocol leaves a group that
/// hosts classic members, the group is a classic one again, with them as they were (their
/// partitions, the range protocol), and prepares a rebalance: they join again, their leader
/// assigns, and the group is Stable at the next generation, saved as such for a restart.
#[tokio::test]
async fn the_last_consumer_protocol_member_leaving_gives_the_group_back_to_the_classic_protocol() {
    let h = harness(Duration::from_secs(3));
    let topic = uuid::Uuid::from_u128(7);
    let view = TopicView::from([("t".to_string(), (topic, 4))]);
    let visible = |_: &str| true;
    let (leader, follower, _) = stable_classic_pair(&h, "down", [None, None]).await;
    let joined = h
        .coord
        .consumer_heartbeat(newcomer_join("down", "new", None), &view, &visible)
        .unwrap();
    // The classic members join again, hosted, and the newcomer takes a share.
    let classic = |member: &str| {
        let mut req = join_req("down", member, "c");
        req.protocols = vec![JoinProtocol {
            name: "range".into(),
            metadata: subscription(&["t"]),
        }];
        req
    };
    let mut hosted: Vec<(String, i32, Vec<i32>)> = Vec::new();
    for m in [&leader, &follower] {
        let rejoined = h.coord.join(classic(m), &view).await.unwrap();
        let synced = h
            .sync(sync_req("down", rejoined.generation_id, m, &[]))
            .await
            .unwrap();
        hosted.push((
            m.to_string(),
            rejoined.generation_id,
            partitions_of(&synced.assignment),
        ));
    }
    let beat = |epoch: i32| ConsumerHeartbeat {
        group_id: "down".into(),
        member_id: "new".into(),
        member_epoch: epoch,
        owned: Some(Assignment::new()),
        ..Default::default()
    };
    let share = h
        .coord
        .consumer_heartbeat(beat(joined.member_epoch), &view, &visible)
        .unwrap();
    assert!(share.assignment.is_some_and(|a| !a.is_empty()));

    // The newcomer leaves: at the next tick the group is classic again.
    h.coord
        .consumer_heartbeat(beat(-1), &view, &visible)
        .unwrap();
    h.advance(Duration::from_millis(100));
    let listed = h.coord.list_groups(&[]);
    assert_eq!(listed[0].group_type, "classic");
    let described = h.coord.describe_group("down").unwrap();
    assert_eq!(described.state, GroupState::PreparingRebalance);
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(described.members.len(), 2);
    // What each holds is kept (DescribeGroups shows it only once Stable; the saved membership
    // has it).
    let saved = h.store.load_memberships().unwrap();
    let (_, membership) = saved.iter().find(|(g, _)| g == "down").unwrap();
    let mut members: Vec<(String, Vec<i32>)> = membership
        .members
        .iter()
        .map(|m| (m.member_id.clone(), partitions_of(&m.assignment)))
        .collect();
    members.sort();
    let mut expected: Vec<(String, Vec<i32>)> = hosted
        .iter()
        .map(|(m, _, p)| (m.clone(), p.clone()))
        .collect();
    expected.sort();
    assert_eq!(members, expected, "each keeps what it held");
    // Restarted before they join again, the group still prepares that rebalance (the
    // partitions the newcomer held would otherwise wait for a member forever).
    let restarted = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    assert_eq!(
        restarted.describe_group("down").unwrap().state,
        GroupState::PreparingRebalance
    );
    drop(restarted);

    // Told to join again; they do, and their leader assigns.
    let generation = hosted.iter().map(|(_, g, _)| *g).max().unwrap();
    for (m, g, _) in &hosted {
        let told = h.coord.heartbeat(&hb("down", *g, m));
        assert!(
            matches!(
                told,
                Err(GroupError::RebalanceInProgress | GroupError::IllegalGeneration { .. })
            ),
            "{m}: {told:?}"
        );
    }
    let joins = [
        h.spawn_join(classic(&leader)),
        h.spawn_join(classic(&follower)),
    ];
    h.run_until_done(&joins).await;
    let mut answers = Vec::new();
    for j in joins {
        answers.push(j.await.unwrap().unwrap());
    }
    let next = answers[0].generation_id;
    assert_eq!(next, generation + 1);
    let new_leader = answers[0].leader.clone();
    assert!(
        answers
            .iter()
            .any(|a| a.member_id == new_leader && a.members.len() == 2),
        "the leader gets the members"
    );
    let other = if new_leader == leader {
        &follower
    } else {
        &leader
    };
    let mut leader_sync = sync_req("down", next, &new_leader, &[]);
    leader_sync.assignments = halves(&new_leader, other);
    let waiting = h.spawn_sync(sync_req("down", next, other, &[]));
    settle().await;
    h.sync(leader_sync).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(partitions_of(&got.assignment), vec![2, 3]);
    assert_eq!(h.state("down"), GroupState::Stable);
    assert_eq!(h.coord.heartbeat(&hb("down", next, other)), Ok(()));
    let r = h
        .coord
        .commit_offsets(&commit_req("down", next, other, "t", &[(2, 4)]));
    assert_eq!(commit_result(&r), Ok(()));

    // Saved as a classic group: a restart has it, Stable, and no consumer-protocol group.
    h.advance(Duration::from_millis(100));
    let again = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    assert_eq!(again.list_groups(&[])[0].group_type, "classic");
    assert_eq!(
        again.describe_group("down").unwrap().state,
        GroupState::Stable
    );
    assert_eq!(again.heartbeat(&hb("down", next, other)), Ok(()));
    assert!(
        h.store
            .load_consumer_groups()
            .unwrap()
            .iter()
            .all(|(g, _)| g != "down")
    );
}

fn set_config(key: &str, value: &str) -> (String, Option<String>) {
    (key.to_string(), Some(value.to_string()))
}

/// A group's own configs reach a live member at its next heartbeat (the interval it is told,
/// the session it gets), and a restart keeps them for members it restores: a member silent
/// past the broker's session timeout but within its group's stays.
#[tokio::test]
async fn a_groups_own_configs_reach_live_and_restored_members() {
    let h = harness(Duration::ZERO);
    let view = TopicView::from([("t".to_string(), (uuid::Uuid::from_u128(7), 2))]);
    let visible = |_: &str| true;
    let joined = h
        .coord
        .consumer_heartbeat(newcomer_join("own", "m", None), &view, &visible)
        .unwrap();
    assert_eq!(joined.heartbeat_interval_ms, 5000);
    let changed = h
        .coord
        .alter_group_config(
            "own",
            &[
                set_config("consumer.heartbeat.interval.ms", "7000"),
                set_config("consumer.session.timeout.ms", "60000"),
            ],
            false,
            false,
        )
        .unwrap();
    assert!(changed);
    let beat = |epoch: i32| ConsumerHeartbeat {
        group_id: "own".into(),
        member_id: "m".into(),
        member_epoch: epoch,
        ..Default::default()
    };
    let again = h
        .coord
        .consumer_heartbeat(beat(joined.member_epoch), &view, &visible)
        .unwrap();
    assert_eq!(again.heartbeat_interval_ms, 7000);
    // Past the broker's 45 s but within the group's 60 s: still a member.
    h.advance(Duration::from_secs(50));
    assert!(
        h.coord
            .consumer_heartbeat(beat(again.member_epoch), &view, &visible)
            .is_ok()
    );

    // Restarted: the member's session is the group's again.
    h.advance(Duration::from_millis(100));
    let restarted = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        h.store.clone(),
        Clock::Manual(h.clock.clone()),
    )
    .unwrap();
    h.clock.advance(Duration::from_secs(50));
    restarted.tick();
    let after = restarted
        .consumer_heartbeat(beat(again.member_epoch), &view, &visible)
        .unwrap();
    assert_eq!(after.heartbeat_interval_ms, 7000);
    h.clock.advance(Duration::from_secs(61));
    restarted.tick();
    assert_eq!(
        restarted.consumer_heartbeat(beat(after.member_epoch), &view, &visible),
        Err(GroupError::UnknownMemberId),
        "silent past its group's 60 s"
    );
}

/// Saved group configs out of the bounds a restarted broker allows are fitted to them, so
/// that the group runs and later changes are judged on what it runs with.
#[test]
fn saved_group_configs_are_fitted_to_a_restarted_brokers_bounds() {
    let store = Arc::new(MemoryOffsetStore::new());
    let clock = ManualClock::new();
    let coord = GroupCoordinator::with_clock(
        config(Duration::ZERO),
        store.clone(),
        Clock::Manual(clock.clone()),
    )
    .unwrap();
    coord
        .alter_group_config(
            "h",
            &[set_config("consumer.session.timeout.ms", "60000")],
            false,
            false,
        )
        .unwrap();
    let mut narrower = config(Duration::ZERO);
    narrower.consumer_bounds.max_session_timeout = Duration::from_secs(50);
    let restarted = GroupCoordinator::with_clock(narrower, store, Clock::Manual(clock)).unwrap();
    assert_eq!(
        restarted.consumer_settings("h").session_timeout,
        Duration::from_secs(50)
    );
    assert!(
        restarted
            .alter_group_config(
                "h",
                &[set_config("consumer.heartbeat.interval.ms", "6000")],
                false,
                false
            )
            .is_ok()
    );
}

// A randomized test of the whole coordinator across online upgrades and downgrades: four
// clients, reborn at random as eager classic, cooperative classic or consumer-protocol
// members (one static), join, leave, die and time out on a manual clock; a classic leader
// assigns with an eager or a cooperative-sticky assignor of its own; after every step no
// partition may be held by two clients. PROP_SEEDS (default 100), PROP_FIRST and
// PROP_RESTARTS (coordinator restarts from the store) widen a run by hand.
// ---------------------------------------------------------------------------------------------
mod migration_property {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const N: i32 = 6;
    const T: uuid::Uuid = uuid::Uuid::from_u128(7);
    const G: &str = "prop";

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Eager,
        Coop,
        Consumer,
    }

    enum St {
        /// Not a member: joins at its next turn (with `member_id`, "" for a new one).
        Idle(String),
        Joining(String, JoinHandle<Result<JoinResponse, GroupError>>),
        Syncing(String, i32, JoinHandle<Result<SyncResponse, GroupError>>),
        Stable(String, i32),
        Rejoin(String),
        Consumer(String, i32),
        Dead,
    }

    impl std::fmt::Debug for St {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                St::Idle(m) => write!(f, "Idle({m})"),
                St::Joining(m, _) => write!(f, "Joining({m})"),
                St::Syncing(m, g, _) => write!(f, "Syncing({m},{g})"),
                St::Stable(m, g) => write!(f, "Stable({m},{g})"),
                St::Rejoin(m) => write!(f, "Rejoin({m})"),
                St::Consumer(m, e) => write!(f, "Consumer({m},{e})"),
                St::Dead => write!(f, "Dead"),
            }
        }
    }

    struct Client {
        name: String,
        kind: Kind,
        instance: Option<String>,
        st: St,
        held: BTreeSet<i32>,
    }

    fn numbers(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1;
        move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        }
    }

    fn metadata(owned: &BTreeSet<i32>) -> Bytes {
        super::subscription_owning(owned.iter().copied())
    }

    fn owned_of(meta: &[u8]) -> BTreeSet<i32> {
        consumer::read_subscription(meta)
            .map(|s| s.owned.into_iter().flat_map(|(_, p)| p).collect())
            .unwrap_or_default()
    }

    fn held_of(assignment: &[u8]) -> BTreeSet<i32> {
        consumer::read_assignment(assignment)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, ps)| ps)
            .collect()
    }

    fn enc(ps: &BTreeSet<i32>) -> Bytes {
        use kafka_protocol::messages::ConsumerProtocolAssignment;
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(StrBytes::from_static_str("t").into())
                .with_partitions(ps.iter().copied().collect()),
        ]);
        let mut out = bytes::BytesMut::new();
        out.extend_from_slice(&0i16.to_be_bytes());
        a.encode(&mut out, 0).unwrap();
        out.freeze()
    }

    /// The leader's assignor: eager (range-like split ignoring claims), or cooperative sticky
    /// (keeps claims up to quota, never hands a claimed partition to another in one round).
    fn assign(protocol: &str, members: &[JoinMember]) -> Vec<SyncAssignment> {
        let mut ids: Vec<&str> = members.iter().map(|m| m.member_id.as_str()).collect();
        ids.sort();
        let k = ids.len() as i32;
        let mut target: BTreeMap<&str, BTreeSet<i32>> =
            ids.iter().map(|i| (*i, BTreeSet::new())).collect();
        if protocol == "range" {
            for p in 0..N {
                let i = ((p * k) / N) as usize;
                target.get_mut(ids[i]).unwrap().insert(p);
            }
        } else {
            let mut claims: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
            for m in members {
                for p in owned_of(&m.metadata) {
                    claims.entry(p).or_default().push(m.member_id.as_str());
                }
            }
            let owner: BTreeMap<i32, &str> = claims
                .iter()
                .filter(|(_, c)| c.len() == 1)
                .map(|(p, c)| (*p, c[0]))
                .collect();
            let floor = N / k;
            let mut ceil_slots = N % k;
            let mut taken = BTreeSet::new();
            for id in &ids {
                let own: Vec<i32> = owner
                    .iter()
                    .filter(|(_, o)| *o == id)
                    .map(|(p, _)| *p)
                    .collect();
                let quota = if ceil_slots > 0 && own.len() as i32 > floor {
                    ceil_slots -= 1;
                    floor + 1
                } else {
                    floor
                };
                for p in own.into_iter().take(quota as usize) {
                    target.get_mut(id).unwrap().insert(p);
                    taken.insert(p);
                }
            }
            for p in 0..N {
                if taken.contains(&p) || claims.get(&p).is_some_and(|c| c.len() > 1) {
                    continue;
                }
                let id = *target.iter().min_by_key(|(_, s)| s.len()).unwrap().0;
                target.get_mut(id).unwrap().insert(p);
            }
            // Cooperative: a partition claimed by another member is not given this round.
            for (id, set) in target.iter_mut() {
                set.retain(|p| owner.get(p).is_none_or(|o| o == id));
            }
        }
        target
            .into_iter()
            .map(|(id, ps)| SyncAssignment {
                member_id: id.to_string(),
                assignment: enc(&ps),
            })
            .collect()
    }

    fn join_request(c: &Client, member_id: &str) -> JoinRequest {
        let owned = if c.kind == Kind::Eager {
            BTreeSet::new()
        } else {
            c.held.clone()
        };
        let meta = metadata(&owned);
        let protocols = match c.kind {
            Kind::Eager => vec![
                JoinProtocol {
                    name: "range".into(),
                    metadata: meta.clone(),
                },
                JoinProtocol {
                    name: "cooperative-sticky".into(),
                    metadata: meta,
                },
            ],
            _ => vec![JoinProtocol {
                name: "cooperative-sticky".into(),
                metadata: meta,
            }],
        };
        JoinRequest {
            group_id: G.into(),
            member_id: member_id.into(),
            group_instance_id: c.instance.clone(),
            client_id: c.name.clone(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols,
            require_known_member_id: c.instance.is_none(),
            supports_skip_assignment: false,
            reason: None,
        }
    }

    fn spawn_join(
        coord: &GroupCoordinator,
        req: JoinRequest,
    ) -> JoinHandle<Result<JoinResponse, GroupError>> {
        let c = coord.clone();
        tokio::spawn(async move {
            let view = TopicView::from([("t".to_string(), (T, N))]);
            c.join(req, &view).await
        })
    }

    fn spawn_sync(
        coord: &GroupCoordinator,
        req: SyncRequest,
    ) -> JoinHandle<Result<SyncResponse, GroupError>> {
        let c = coord.clone();
        tokio::spawn(async move { c.sync(req).await })
    }

    fn prop_config() -> GroupConfig {
        let mut c = config(Duration::ZERO);
        c.consumer.session_timeout = Duration::from_secs(10);
        c.consumer.heartbeat_interval = Duration::from_secs(1);
        c
    }

    struct World {
        coord: GroupCoordinator,
        clock: ManualClock,
        store: Arc<MemoryOffsetStore>,
        clients: Vec<Client>,
        trace: Vec<String>,
        seed: u64,
        fatal: Vec<String>,
        violation: Option<String>,
    }

    impl World {
        /// Where classic client `i` goes when its SyncGroup or Heartbeat is refused with `e`.
        fn refused(&mut self, i: usize, kind: Kind, id: String, e: &GroupError) -> St {
            let held = &mut self.clients[i].held;
            match e {
                GroupError::RebalanceInProgress => {
                    // A cooperative member keeps what it holds while it joins again.
                    if kind == Kind::Eager {
                        held.clear();
                    }
                    St::Rejoin(id)
                }
                GroupError::IllegalGeneration { .. } => {
                    held.clear();
                    St::Rejoin(id)
                }
                GroupError::FencedInstanceId => {
                    held.clear();
                    St::Dead
                }
                _ => {
                    held.clear();
                    St::Idle(String::new())
                }
            }
        }

        fn log(&mut self, s: String) {
            self.trace.push(s);
        }

        fn check(&mut self) {
            if self.violation.is_some() {
                return;
            }
            let mut seen: BTreeMap<i32, &str> = BTreeMap::new();
            for c in &self.clients {
                for p in &c.held {
                    if let Some(other) = seen.insert(*p, &c.name) {
                        let tail = self.trace.len().saturating_sub(80);
                        self.violation = Some(format!(
                            "seed {}: partition {p} held by {other} and {}\nclients: {:?}\ntrace:\n{}",
                            self.seed,
                            c.name,
                            self.clients
                                .iter()
                                .map(|c| (&c.name, c.kind, &c.st, &c.held))
                                .collect::<Vec<_>>(),
                            self.trace[tail..].join("\n")
                        ));
                        return;
                    }
                }
            }
        }

        /// One action of client `i`.
        async fn step(&mut self, i: usize, next: &mut impl FnMut(u64) -> u64, churn: bool) {
            let view = TopicView::from([("t".to_string(), (T, N))]);
            let visible = |_: &str| true;
            let now = self.clock.now();
            let st = std::mem::replace(&mut self.clients[i].st, St::Dead);
            let name = self.clients[i].name.clone();
            let kind = self.clients[i].kind;
            let new_st = match st {
                St::Dead => {
                    if churn && next(8) == 0 {
                        let kind = [Kind::Eager, Kind::Coop, Kind::Consumer][next(3) as usize];
                        self.clients[i].kind = kind;
                        self.log(format!("{name}: born as {kind:?}"));
                        St::Idle(String::new())
                    } else {
                        St::Dead
                    }
                }
                St::Idle(id) if kind == Kind::Consumer => {
                    let req = ConsumerHeartbeat {
                        group_id: G.into(),
                        member_id: id.clone(),
                        member_epoch: 0,
                        instance_id: self.clients[i].instance.clone(),
                        rebalance_timeout_ms: 5_000,
                        subscribed_topic_names: Some(vec!["t".into()]),
                        owned: Some(consumer::Assignment::new()),
                        client_id: name.clone(),
                        ..Default::default()
                    };
                    self.clients[i].held.clear();
                    let r = self.coord.consumer_heartbeat(req, &view, &visible);
                    self.log(format!("{name}: CGH join -> {r:?}"));
                    match r {
                        Ok(r) => {
                            if let Some(a) = r.assignment {
                                self.clients[i].held = a.get(&T).cloned().unwrap_or_default();
                            }
                            St::Consumer(r.member_id, r.member_epoch)
                        }
                        Err(GroupError::OtherProtocol(_) | GroupError::GroupIdNotFound) => {
                            self.fatal
                                .push(format!("{name}: GROUP_ID_NOT_FOUND on join"));
                            St::Dead
                        }
                        Err(_) => St::Idle(String::new()),
                    }
                }
                St::Consumer(id, epoch) => {
                    let leave = churn && next(40) == 0;
                    let die = churn && !leave && next(80) == 0;
                    if die {
                        self.clients[i].held.clear();
                        self.log(format!("{name}: dies silently (consumer {id})"));
                        St::Dead
                    } else {
                        let epoch_sent = if leave {
                            if self.clients[i].instance.is_some() && next(2) == 0 {
                                -2
                            } else {
                                -1
                            }
                        } else {
                            epoch
                        };
                        if leave {
                            self.clients[i].held.clear();
                        }
                        let owned: consumer::Assignment = if self.clients[i].held.is_empty() {
                            Default::default()
                        } else {
                            [(T, self.clients[i].held.clone())].into()
                        };
                        let req = ConsumerHeartbeat {
                            group_id: G.into(),
                            member_id: id.clone(),
                            member_epoch: epoch_sent,
                            instance_id: self.clients[i].instance.clone(),
                            rebalance_timeout_ms: -1,
                            owned: Some(owned),
                            client_id: name.clone(),
                            ..Default::default()
                        };
                        let r = self.coord.consumer_heartbeat(req, &view, &visible);
                        self.log(format!("{name}: CGH {id}@{epoch_sent} -> {r:?}"));
                        match r {
                            _ if leave => St::Dead,
                            Ok(r) => {
                                if let Some(a) = r.assignment {
                                    self.clients[i].held = a.get(&T).cloned().unwrap_or_default();
                                }
                                St::Consumer(id, r.member_epoch)
                            }
                            Err(GroupError::OtherProtocol(_) | GroupError::GroupIdNotFound) => {
                                self.clients[i].held.clear();
                                self.fatal.push(format!("{name}: GROUP_ID_NOT_FOUND"));
                                St::Dead
                            }
                            Err(_) => {
                                self.clients[i].held.clear();
                                St::Idle(id)
                            }
                        }
                    }
                }
                St::Idle(id) | St::Rejoin(id) => {
                    if kind == Kind::Eager {
                        self.clients[i].held.clear();
                    }
                    let req = join_request(&self.clients[i], &id);
                    self.log(format!(
                        "{name}: JoinGroup id={id:?} owned={:?}",
                        self.clients[i].held
                    ));
                    St::Joining(id, spawn_join(&self.coord, req))
                }
                St::Joining(id, h) => {
                    if !h.is_finished() {
                        St::Joining(id, h)
                    } else {
                        let r = h.await.unwrap();
                        self.log(format!("{name}: JoinGroup -> {r:?}"));
                        match r {
                            Ok(resp) => {
                                let leader =
                                    resp.leader == resp.member_id && !resp.members.is_empty();
                                let assignments = if leader {
                                    assign(
                                        resp.protocol_name.as_deref().unwrap_or(""),
                                        &resp.members,
                                    )
                                } else {
                                    vec![]
                                };
                                let req = SyncRequest {
                                    group_id: G.into(),
                                    generation_id: resp.generation_id,
                                    member_id: resp.member_id.clone(),
                                    group_instance_id: self.clients[i].instance.clone(),
                                    protocol_type: Some("consumer".into()),
                                    protocol_name: resp.protocol_name.clone(),
                                    assignments,
                                };
                                St::Syncing(
                                    resp.member_id,
                                    resp.generation_id,
                                    spawn_sync(&self.coord, req),
                                )
                            }
                            Err(GroupError::MemberIdRequired { member_id }) => {
                                St::Rejoin(member_id)
                            }
                            Err(GroupError::RebalanceInProgress) => St::Rejoin(id),
                            Err(GroupError::InconsistentGroupProtocol) => {
                                self.clients[i].held.clear();
                                self.fatal
                                    .push(format!("{name}: INCONSISTENT_GROUP_PROTOCOL"));
                                St::Dead
                            }
                            Err(GroupError::FencedInstanceId) => {
                                self.clients[i].held.clear();
                                St::Dead
                            }
                            Err(GroupError::UnreleasedInstanceId { .. }) => St::Idle(String::new()),
                            Err(_) => {
                                self.clients[i].held.clear();
                                St::Idle(String::new())
                            }
                        }
                    }
                }
                St::Syncing(id, generation, h) => {
                    if !h.is_finished() {
                        St::Syncing(id, generation, h)
                    } else {
                        let r = h.await.unwrap();
                        self.log(format!(
                            "{name}: SyncGroup {id}@{generation} -> {:?}",
                            r.as_ref().map(|s| held_of(&s.assignment))
                        ));
                        match r {
                            Ok(s) => {
                                let new = held_of(&s.assignment);
                                let revoked: BTreeSet<i32> =
                                    self.clients[i].held.difference(&new).copied().collect();
                                self.clients[i].held = new;
                                if kind == Kind::Coop && !revoked.is_empty() {
                                    St::Rejoin(id)
                                } else {
                                    St::Stable(id, generation)
                                }
                            }
                            Err(e) => self.refused(i, kind, id, &e),
                        }
                    }
                }
                St::Stable(id, generation) => {
                    let leave = churn && next(40) == 0;
                    let die = churn && !leave && next(80) == 0;
                    if die || (leave && self.clients[i].instance.is_some()) {
                        self.clients[i].held.clear();
                        self.log(format!("{name}: dies silently (classic {id})"));
                        St::Dead
                    } else if leave {
                        self.clients[i].held.clear();
                        let r = self.coord.leave(&LeaveRequest {
                            group_id: G.into(),
                            members: vec![LeavingMember {
                                member_id: id.clone(),
                                group_instance_id: None,
                                reason: None,
                            }],
                        });
                        self.log(format!("{name}: LeaveGroup {id} -> {r:?}"));
                        St::Dead
                    } else {
                        let r = self.coord.heartbeat(&HeartbeatRequest {
                            group_id: G.into(),
                            generation_id: generation,
                            member_id: id.clone(),
                            group_instance_id: self.clients[i].instance.clone(),
                        });
                        if r.is_err() {
                            self.log(format!("{name}: Heartbeat {id}@{generation} -> {r:?}"));
                        }
                        match r {
                            Ok(()) => St::Stable(id, generation),
                            Err(e) => self.refused(i, kind, id, &e),
                        }
                    }
                }
            };
            let _ = now;
            self.clients[i].st = new_st;
            self.check();
        }

        /// The coordinator restarts from its store: requests in flight fail, and their
        /// clients retry (JoinGroup again with their member id).
        fn restart(&mut self) {
            for c in &mut self.clients {
                let st = std::mem::replace(&mut c.st, St::Dead);
                c.st = match st {
                    St::Joining(id, h) => {
                        h.abort();
                        St::Rejoin(id)
                    }
                    St::Syncing(id, _, h) => {
                        h.abort();
                        if c.kind == Kind::Eager {
                            c.held.clear();
                        }
                        St::Rejoin(id)
                    }
                    other => other,
                };
            }
            self.coord.flush();
            self.coord = GroupCoordinator::with_clock(
                prop_config(),
                self.store.clone(),
                Clock::Manual(self.clock.clone()),
            )
            .unwrap();
            self.trace.push("== coordinator restarted ==".into());
        }
    }

    async fn run_seed(
        seed: u64,
        steps: usize,
        restarts: bool,
    ) -> (Vec<String>, Option<String>, Option<String>) {
        let mut next = numbers(seed);
        let store = Arc::new(MemoryOffsetStore::new());
        let clock = ManualClock::new();
        let coord = GroupCoordinator::with_clock(
            prop_config(),
            store.clone(),
            Clock::Manual(clock.clone()),
        )
        .unwrap();
        let mut clients = Vec::new();
        for (n, name) in ["s0", "d1", "d2", "d3"].iter().enumerate() {
            let kind = [Kind::Eager, Kind::Coop, Kind::Consumer][next(3) as usize];
            clients.push(Client {
                name: name.to_string(),
                kind,
                instance: (n == 0).then(|| "inst-s0".to_string()),
                st: St::Idle(String::new()),
                held: BTreeSet::new(),
            });
        }
        let mut w = World {
            coord,
            clock,
            store,
            clients,
            trace: Vec::new(),
            seed,
            fatal: Vec::new(),
            violation: None,
        };
        for step in 0..steps + 400 {
            let churn = step < steps;
            let mut order: Vec<usize> = (0..w.clients.len()).collect();
            for j in (1..order.len()).rev() {
                order.swap(j, next(j as u64 + 1) as usize);
            }
            for i in order {
                w.step(i, &mut next, churn).await;
                settle().await;
            }
            if w.violation.is_some() {
                break;
            }
            let by = Duration::from_millis(50 + next(350));
            w.clock.advance(by);
            w.coord.tick();
            settle().await;
            if restarts && churn && next(150) == 0 {
                w.restart();
                settle().await;
            }
        }
        // Liveness: every partition held once all settled, if anyone is live.
        let live = w.clients.iter().any(|c| !matches!(c.st, St::Dead));
        let total: usize = w.clients.iter().map(|c| c.held.len()).sum();
        let stuck = (live && total != N as usize).then(|| {
            format!(
                "seed {seed}: after settling only {total} of {N} partitions held: {:?}\n{:?}",
                w.clients
                    .iter()
                    .map(|c| (&c.name, c.kind, &c.st, &c.held))
                    .collect::<Vec<_>>(),
                w.coord.consumer_describe(G)
            )
        });
        if w.violation.is_some() {
            return (w.fatal, None, w.violation);
        }
        (w.fatal, stuck, None)
    }

    #[tokio::test]
    async fn no_partition_is_held_twice_across_upgrades_and_downgrades() {
        let seeds: u64 = std::env::var("PROP_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        let first: u64 = std::env::var("PROP_FIRST")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let restarts = std::env::var("PROP_RESTARTS").is_ok();
        let mut fatal = 0;
        let mut stuck = Vec::new();
        let mut violations = Vec::new();
        for seed in first..first + seeds {
            let (f, s, v) = run_seed(seed, 600, restarts).await;
            if let Some(v) = v {
                violations.push(v);
            }
            if !f.is_empty() {
                fatal += 1;
                eprintln!("seed {seed}: fatal client errors {f:?}");
            }
            if let Some(s) = s {
                stuck.push(s);
            }
        }
        eprintln!(
            "seeds with fatal client errors: {fatal}; stuck: {}",
            stuck.len()
        );
        for s in stuck.iter().take(5) {
            eprintln!("{s}");
        }
        eprintln!("seeds with a partition held twice: {}", violations.len());
        for v in &violations {
            eprintln!("=====\n{v}");
        }
        assert!(violations.is_empty());
        // Without restarts (which keep only a classic member's chosen assignor, as Kafka's
        // saved group does, so some rejoins are refused), every client stays in and every
        // partition ends up held.
        if !restarts {
            assert_eq!(fatal, 0, "clients refused for good");
            assert!(stuck.is_empty(), "{}", stuck.join("\n"));
        }
    }
}

/// As in Kafka, a classic member joining a group of the consumer protocol must share a
/// protocol (assignor) with the classic members it hosts, or the group could not be a classic
/// one again once the consumer-protocol members leave: INCONSISTENT_GROUP_PROTOCOL.
#[tokio::test]
async fn hosted_classic_members_must_share_an_assignor() {
    let h = harness(Duration::ZERO);
    let view = TopicView::from([("t".to_string(), (uuid::Uuid::from_u128(7), 4))]);
    let visible = |_: &str| true;
    h.coord
        .consumer_heartbeat(newcomer_join("mix", "new", None), &view, &visible)
        .unwrap();
    let classic = |protocols: &[&str]| {
        let mut req = join_req("mix", "", "c");
        req.protocols = protocols
            .iter()
            .map(|name| JoinProtocol {
                name: name.to_string(),
                metadata: subscription(&["t"]),
            })
            .collect();
        req
    };
    h.coord.join(classic(&["range"]), &view).await.unwrap();
    assert_eq!(
        h.coord.join(classic(&["cooperative-sticky"]), &view).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    assert!(
        h.coord
            .join(classic(&["cooperative-sticky", "range"]), &view)
            .await
            .is_ok()
    );
}

/// Changes of committed offsets are counted, and the groups of the last ones named: a leader's
/// follower copies those groups alone. A change of every group's offsets (a topic deleted), or
/// one the list no longer holds, names none: the follower then copies every group.
#[test]
fn changes_of_committed_offsets_name_their_groups() {
    let h = harness(Duration::ZERO);
    let c = &h.coord;
    assert_eq!(c.offsets_changes(), 0);
    for g in ["a", "b", "a"] {
        c.commit_offsets(&commit_req(g, -1, "", "t", &[(0, 5)]));
    }
    assert_eq!(c.offsets_changes(), 3);
    assert_eq!(
        c.groups_changed_since(0, 10),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        c.groups_changed_since(1, 10),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(c.groups_changed_since(2, 10), Some(vec!["a".into()]));
    assert_eq!(c.groups_changed_since(3, 10), Some(vec![]));
    assert_eq!(c.groups_changed_since(0, 1), None, "more than asked for");
    c.delete_group("b").unwrap();
    assert_eq!(c.groups_changed_since(3, 10), Some(vec!["b".into()]));
    c.topic_deleted("t");
    assert_eq!(c.offsets_changes(), 5);
    assert_eq!(
        c.groups_changed_since(4, 10),
        None,
        "every group's offsets changed"
    );
    c.commit_offsets(&commit_req("c", -1, "", "t", &[(0, 1)]));
    assert_eq!(c.groups_changed_since(5, 10), Some(vec!["c".into()]));
    for _ in 0..RECENT_CHANGES {
        c.commit_offsets(&commit_req("d", -1, "", "t", &[(0, 1)]));
    }
    assert_eq!(c.groups_changed_since(5, 10), None, "no longer listed");
    assert_eq!(c.groups_changed_since(6, 10), Some(vec!["d".into()]));
}

/// A store whose syncs are counted, take a while, and fail while `failing` is set.
#[derive(Default)]
struct SyncedStore {
    offsets: MemoryOffsetStore,
    syncs: std::sync::atomic::AtomicU32,
    failing: std::sync::atomic::AtomicBool,
}

impl OffsetStore for SyncedStore {
    fn load(&self) -> Result<Vec<(String, String, i32, CommittedOffset)>, StoreError> {
        self.offsets.load()
    }
    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), StoreError> {
        self.offsets.commit(group, offsets)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::new("the disk is full"));
        }
        Ok(())
    }
    fn delete_group(&self, group: &str) -> Result<(), StoreError> {
        self.offsets.delete_group(group)
    }
    fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        self.offsets.delete_topic(topic)
    }
    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), StoreError> {
        self.offsets.delete_offsets(group, partitions)
    }
    fn load_memberships(&self) -> Result<Vec<(String, Membership)>, StoreError> {
        self.offsets.load_memberships()
    }
    fn save_membership(
        &self,
        group: &str,
        membership: Option<&Membership>,
    ) -> Result<(), StoreError> {
        self.offsets.save_membership(group, membership)
    }
    fn load_consumer_groups(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.offsets.load_consumer_groups()
    }
    fn save_consumer_group(&self, group: &str, saved: Option<&[u8]>) -> Result<(), StoreError> {
        self.offsets.save_consumer_group(group, saved)
    }
    fn load_group_configs(&self) -> Result<Vec<(String, config::Overrides)>, StoreError> {
        self.offsets.load_group_configs()
    }
    fn save_group_config(
        &self,
        group: &str,
        configs: &config::Overrides,
    ) -> Result<(), StoreError> {
        self.offsets.save_group_config(group, configs)
    }
}

/// Lazy commits made at once share syncs (group commit), each is answered once a sync after
/// it ended, and those a failed sync covered get its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_commits_made_at_once_share_a_sync_and_learn_of_a_failed_one() {
    let store = Arc::new(SyncedStore::default());
    let coord = Arc::new(GroupCoordinator::new(config(Duration::ZERO), store.clone()).unwrap());
    let commits: Vec<_> = (0..50)
        .map(|i| {
            let coord = coord.clone();
            tokio::spawn(async move {
                let req = commit_req(&format!("g{i}"), -1, "", "t", &[(0, i)]);
                let (results, ticket) = coord.commit_offsets_lazily(&req);
                commit_result(&results).unwrap();
                assert!(ticket > 0);
                coord.durable(ticket).await
            })
        })
        .collect();
    for c in commits {
        c.await.unwrap().unwrap();
    }
    let syncs = store.syncs.load(Ordering::SeqCst);
    assert!((1..50).contains(&syncs), "{syncs} syncs for 50 commits");
    assert_eq!(
        coord.fetch_offsets("g7", None).unwrap()[0].partitions[0].offset,
        7
    );

    store.failing.store(true, Ordering::SeqCst);
    let (_, lost) = coord.commit_offsets_lazily(&commit_req("g1", -1, "", "t", &[(0, 100)]));
    let e = coord.durable(lost).await.unwrap_err();
    assert!(e.message.contains("full"), "{e}");
    store.failing.store(false, Ordering::SeqCst);
    let (_, kept) = coord.commit_offsets_lazily(&commit_req("g1", -1, "", "t", &[(0, 101)]));
    coord.durable(kept).await.unwrap();
    assert_eq!(coord.durable(lost).await.unwrap_err(), e, "still said");
    assert_eq!(coord.durable(0).await, Ok(()));
}
