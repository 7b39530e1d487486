//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! ListGroups, DescribeGroups, DeleteGroups: translation to [`sluice_broker::GroupCoordinator`].

use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};

use crate::RequestContext;

pub async fn find_coordinator(ctx: &RequestContext, version: i16, request: FindCoordinatorRequest) -> FindCoordinatorResponse {
    todo!()
}
pub async fn join_group(ctx: &RequestContext, version: i16, request: JoinGroupRequest) -> JoinGroupResponse {
    todo!()
}
pub async fn sync_group(ctx: &RequestContext, version: i16, request: SyncGroupRequest) -> SyncGroupResponse {
    todo!()
}
pub async fn heartbeat(ctx: &RequestContext, version: i16, request: HeartbeatRequest) -> HeartbeatResponse {
    todo!()
}
pub async fn leave_group(ctx: &RequestContext, version: i16, request: LeaveGroupRequest) -> LeaveGroupResponse {
    todo!()
}
pub async fn offset_commit(ctx: &RequestContext, version: i16, request: OffsetCommitRequest) -> OffsetCommitResponse {
    todo!()
}
pub async fn offset_fetch(ctx: &RequestContext, version: i16, request: OffsetFetchRequest) -> OffsetFetchResponse {
    todo!()
}
pub async fn list_groups(ctx: &RequestContext, version: i16, request: ListGroupsRequest) -> ListGroupsResponse {
    todo!()
}
pub async fn describe_groups(ctx: &RequestContext, version: i16, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    todo!()
}
pub async fn delete_groups(ctx: &RequestContext, version: i16, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    todo!()
}
