//! DescribeClientQuotas and AlterClientQuotas over the node's quota store, so kafka-configs
//! and the admin clients set byte-rate quotas per user and client id. Describing needs
//! DESCRIBE_CONFIGS on the cluster, altering ALTER_CONFIGS, as in Kafka.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::acl::CLUSTER_RESOURCE_NAME;
use sluice_auth::quotas::{ComponentFilter, EntityName, QuotaEntity, QuotaError, CLIENT_ID, USER};
use sluice_auth::{Operation, ResourceType};

use crate::RequestContext;

fn name(component: &Option<EntityName>) -> Option<StrBytes> {
    match component {
        Some(EntityName::Named(name)) => Some(StrBytes::from_string(name.clone())),
        _ => None,
    }
}

pub async fn describe_client_quotas(
    context: &RequestContext,
    _version: i16,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    if !context.allowed(
        Operation::DescribeConfigs,
        ResourceType::Cluster,
        CLUSTER_RESOURCE_NAME,
    ) {
        return DescribeClientQuotasResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let mut filters = Vec::new();
    for component in &request.components {
        let entity_type = component.entity_type.to_string();
        if entity_type != USER && entity_type != CLIENT_ID {
            return DescribeClientQuotasResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(StrBytes::from_string(format!(
                    "Custom entity type '{entity_type}' not supported"
                ))));
        }
        filters.push(match (component.match_type, &component._match) {
            (0, Some(name)) => ComponentFilter::Exact(entity_type, name.to_string()),
            (0, None) | (1, _) => ComponentFilter::Default(entity_type),
            (2, _) => ComponentFilter::Specified(entity_type),
            (other, _) => {
                return DescribeClientQuotasResponse::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "Unknown match type {other}"
                    ))))
            }
        });
    }
    let entries = context
        .security
        .quotas
        .describe(&filters, request.strict)
        .into_iter()
        .map(|(entity, quotas)| {
            let mut components = Vec::new();
            if entity.user.is_some() {
                components.push(
                    describe_client_quotas_response::EntityData::default()
                        .with_entity_type(StrBytes::from_static_str(USER))
                        .with_entity_name(name(&entity.user)),
                );
            }
            if entity.client_id.is_some() {
                components.push(
                    describe_client_quotas_response::EntityData::default()
                        .with_entity_type(StrBytes::from_static_str(CLIENT_ID))
                        .with_entity_name(name(&entity.client_id)),
                );
            }
            describe_client_quotas_response::EntryData::default()
                .with_entity(components)
                .with_values(
                    quotas
                        .into_iter()
                        .map(|(key, value)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(StrBytes::from_string(key))
                                .with_value(value)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

pub async fn alter_client_quotas(
    context: &RequestContext,
    _version: i16,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let allowed = context.allowed(
        Operation::AlterConfigs,
        ResourceType::Cluster,
        CLUSTER_RESOURCE_NAME,
    );
    let validate_only = request.validate_only;
    let mut entries = Vec::new();
    for entry in request.entries {
        entries.push(alter_entry(context, allowed, validate_only, entry).await);
    }
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// One entity of AlterClientQuotas.
async fn alter_entry(
    context: &RequestContext,
    allowed: bool,
    validate_only: bool,
    entry: alter_client_quotas_request::EntryData,
) -> alter_client_quotas_response::EntryData {
    let answer = |code: i16, message: Option<String>| {
        alter_client_quotas_response::EntryData::default()
            .with_entity(
                entry
                    .entity
                    .iter()
                    .map(|e| {
                        alter_client_quotas_response::EntityData::default()
                            .with_entity_type(e.entity_type.clone())
                            .with_entity_name(e.entity_name.clone())
                    })
                    .collect(),
            )
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    if !allowed {
        return answer(ResponseError::ClusterAuthorizationFailed.code(), None);
    }
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
    };
    for component in &entry.entity {
        let value = match &component.entity_name {
            Some(name) => EntityName::Named(name.to_string()),
            None => EntityName::Default,
        };
        let slot = match component.entity_type.as_str() {
            USER => &mut entity.user,
            CLIENT_ID => &mut entity.client_id,
            other => {
                return answer(
                    ResponseError::InvalidRequest.code(),
                    Some(format!("Unhandled client quota entity type: {other}")),
                )
            }
        };
        if slot.replace(value).is_some() {
            return answer(
                ResponseError::InvalidRequest.code(),
                Some("Duplicate entity type in the entity".into()),
            );
        }
    }
    let operations: Vec<(String, f64, bool)> = entry
        .ops
        .iter()
        .map(|op| (op.key.to_string(), op.value, op.remove))
        .collect();
    match context
        .security
        .quotas
        .alter(&entity, &operations, validate_only)
        .await
    {
        Ok(()) => {
            if !validate_only {
                tracing::info!(principal = %context.principal.name, ?entity, "client quotas altered");
            }
            answer(0, None)
        }
        Err(QuotaError::Invalid(message)) => {
            answer(ResponseError::InvalidRequest.code(), Some(message))
        }
        Err(QuotaError::Store(error)) => answer(
            ResponseError::UnknownServerError.code(),
            Some(error.to_string()),
        ),
    }
}
