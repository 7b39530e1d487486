//! CreateAcls, DescribeAcls and DeleteAcls over the node's ACL store. Creating and deleting
//! need ALTER on the cluster, describing DESCRIBE, as in Kafka.

use std::collections::BTreeMap;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::acl::CLUSTER_RESOURCE_NAME;
use sluice_auth::{AclBinding, AclFilter, Operation, ResourceType};

use crate::RequestContext;

fn cluster_allowed(context: &RequestContext, operation: Operation) -> bool {
    context.allowed(operation, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub async fn create_acls(
    context: &RequestContext,
    _version: i16,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let result = |code: i16, message: Option<String>| {
        create_acls_response::AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    if !cluster_allowed(context, Operation::Alter) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        return CreateAclsResponse::default().with_results(
            request
                .creations
                .iter()
                .map(|_| result(code, None))
                .collect(),
        );
    }
    // Each creation is validated on its own; the valid ones are stored together.
    let parsed: Vec<Result<AclBinding, String>> = request
        .creations
        .iter()
        .map(|c| {
            AclBinding::from_codes(
                c.resource_type,
                c.resource_name.as_str(),
                c.resource_pattern_type,
                c.principal.as_str(),
                c.host.as_str(),
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclBinding> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .cloned()
        .collect();
    let stored = context.security.authorizer.store().create(&valid).await;
    if let Err(error) = &stored {
        tracing::error!(%error, "could not store ACLs");
    }
    let results = parsed
        .into_iter()
        .map(|p| match (p, &stored) {
            (Err(message), _) => result(ResponseError::InvalidRequest.code(), Some(message)),
            (Ok(_), Err(error)) => result(
                ResponseError::UnknownServerError.code(),
                Some(error.to_string()),
            ),
            (Ok(binding), Ok(())) => {
                tracing::info!(principal = %context.principal.name, ?binding, "ACL created");
                result(0, None)
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub async fn describe_acls(
    context: &RequestContext,
    _version: i16,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    if !cluster_allowed(context, Operation::Describe) {
        return DescribeAclsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let filter = AclFilter {
        resource_type: request.resource_type_filter,
        resource_name: request.resource_name_filter.map(|n| n.to_string()),
        pattern_type: request.pattern_type_filter,
        principal: request.principal_filter.map(|n| n.to_string()),
        host: request.host_filter.map(|n| n.to_string()),
        operation: request.operation,
        permission: request.permission_type,
    };
    if let Err(message) = filter.validate() {
        return DescribeAclsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(StrBytes::from_string(message)));
    }
    // Grouped by resource pattern, as Kafka answers.
    let mut resources: BTreeMap<(i8, String, i8), Vec<describe_acls_response::AclDescription>> =
        BTreeMap::new();
    for acl in context.security.authorizer.store().describe(&filter) {
        resources
            .entry((
                acl.resource_type.code(),
                acl.resource_name.clone(),
                acl.pattern_type.code(),
            ))
            .or_default()
            .push(
                describe_acls_response::AclDescription::default()
                    .with_principal(text(&acl.principal))
                    .with_host(text(&acl.host))
                    .with_operation(acl.operation.code())
                    .with_permission_type(acl.permission.code()),
            );
    }
    DescribeAclsResponse::default().with_resources(
        resources
            .into_iter()
            .map(|((resource_type, name, pattern_type), acls)| {
                describe_acls_response::DescribeAclsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(StrBytes::from_string(name))
                    .with_pattern_type(pattern_type)
                    .with_acls(acls)
            })
            .collect(),
    )
}

pub async fn delete_acls(
    context: &RequestContext,
    _version: i16,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let filter_result = |code: i16, message: Option<String>| {
        delete_acls_response::DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    if !cluster_allowed(context, Operation::Alter) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        return DeleteAclsResponse::default().with_filter_results(
            request
                .filters
                .iter()
                .map(|_| filter_result(code, None))
                .collect(),
        );
    }
    let filters: Vec<AclFilter> = request
        .filters
        .into_iter()
        .map(|f| AclFilter {
            resource_type: f.resource_type_filter,
            resource_name: f.resource_name_filter.map(|n| n.to_string()),
            pattern_type: f.pattern_type_filter,
            principal: f.principal_filter.map(|n| n.to_string()),
            host: f.host_filter.map(|n| n.to_string()),
            operation: f.operation,
            permission: f.permission_type,
        })
        .collect();
    let invalid: Vec<Option<String>> = filters.iter().map(|f| f.validate().err()).collect();
    let valid: Vec<AclFilter> = filters
        .iter()
        .zip(&invalid)
        .filter(|(_, invalid)| invalid.is_none())
        .map(|(f, _)| f.clone())
        .collect();
    let deleted = match context.security.authorizer.store().delete(&valid).await {
        Ok(deleted) => deleted,
        Err(error) => {
            tracing::error!(%error, "could not store ACLs");
            let code = ResponseError::UnknownServerError.code();
            return DeleteAclsResponse::default().with_filter_results(
                filters
                    .iter()
                    .map(|_| filter_result(code, Some(error.to_string())))
                    .collect(),
            );
        }
    };
    let mut deleted = deleted.into_iter();
    let results = invalid
        .into_iter()
        .map(|invalid| match invalid {
            Some(message) => filter_result(ResponseError::InvalidRequest.code(), Some(message)),
            None => filter_result(0, None).with_matching_acls(
                deleted
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|acl| {
                        tracing::info!(principal = %context.principal.name, binding = ?acl, "ACL deleted");
                        delete_acls_response::DeleteAclsMatchingAcl::default()
                            .with_resource_type(acl.resource_type.code())
                            .with_resource_name(text(&acl.resource_name))
                            .with_pattern_type(acl.pattern_type.code())
                            .with_principal(text(&acl.principal))
                            .with_host(text(&acl.host))
                            .with_operation(acl.operation.code())
                            .with_permission_type(acl.permission.code())
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
