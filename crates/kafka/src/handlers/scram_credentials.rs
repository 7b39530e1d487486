//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554) over the user store,
//! so Kafka's tools and admin clients manage SCRAM users. The client sends the salt and the
//! salted password, never the password; the store keeps the derived keys only.

use std::collections::BTreeSet;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::acl::CLUSTER_RESOURCE_NAME;
use sluice_auth::scram::{ScramCredential, ScramMechanism, ITERATIONS_MAX, ITERATIONS_MIN};
use sluice_auth::{Operation, ResourceType};

use crate::RequestContext;

pub async fn describe_user_scram_credentials(
    context: &RequestContext,
    _version: i16,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    if !context.allowed(
        Operation::Describe,
        ResourceType::Cluster,
        CLUSTER_RESOURCE_NAME,
    ) {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let users = &context.security.users;
    let describe = |name: &str| {
        let user = users.get(name).filter(|u| !u.credentials.is_empty());
        let result =
            describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(name.to_string()));
        match user {
            None => result
                .with_error_code(ResponseError::ResourceNotFound.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "Attempt to describe a user credential that does not exist",
                ))),
            Some(user) => result.with_credential_infos(
                user.credentials
                    .iter()
                    .map(|c| {
                        describe_user_scram_credentials_response::CredentialInfo::default()
                            .with_mechanism(c.mechanism.kafka_code())
                            .with_iterations(c.iterations as i32)
                    })
                    .collect(),
            ),
        }
    };
    let results = match request.users {
        None => users
            .list()
            .into_iter()
            .filter(|u| !u.credentials.is_empty())
            .map(|u| describe(&u.name))
            .collect(),
        Some(names) => {
            let mut seen = BTreeSet::new();
            let duplicated: BTreeSet<String> = names
                .iter()
                .filter(|n| !seen.insert(n.name.to_string()))
                .map(|n| n.name.to_string())
                .collect();
            let mut answered = BTreeSet::new();
            names
                .iter()
                .filter(|n| answered.insert(n.name.to_string()))
                .map(|n| {
                    if duplicated.contains(n.name.as_str()) {
                        describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                            .with_user(n.name.clone())
                            .with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(Some(StrBytes::from_static_str(
                                "Cannot describe SCRAM credentials for the same user twice in a single request",
                            )))
                    } else {
                        describe(n.name.as_str())
                    }
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

pub async fn alter_user_scram_credentials(
    context: &RequestContext,
    _version: i16,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let result = |user: &str, code: i16, message: Option<&str>| {
        alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(user.to_string()))
            .with_error_code(code)
            .with_error_message(message.map(|m| StrBytes::from_string(m.to_string())))
    };
    let names: Vec<String> = request
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(request.upsertions.iter().map(|u| u.name.to_string()))
        .collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    if !context.allowed(
        Operation::Alter,
        ResourceType::Cluster,
        CLUSTER_RESOURCE_NAME,
    ) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        return AlterUserScramCredentialsResponse::default()
            .with_results(unique.into_iter().map(|u| result(u, code, None)).collect());
    }
    // Kafka: a user may appear once per request; a second change refuses both.
    let mut seen = BTreeSet::new();
    let duplicated: BTreeSet<String> = names
        .iter()
        .filter(|name| !seen.insert(name.as_str()))
        .cloned()
        .collect();
    let users = &context.security.users;
    let mut outcome: std::collections::BTreeMap<String, (i16, Option<String>)> =
        std::collections::BTreeMap::new();
    let mut fail = |name: &str, code: ResponseError, message: &str| {
        outcome
            .entry(name.to_string())
            .or_insert((code.code(), Some(message.to_string())));
    };
    for name in &duplicated {
        fail(
            name,
            ResponseError::DuplicateResource,
            "A user credential cannot be altered twice in the same request",
        );
    }
    // Deletions (no upsertion) and upsertions, checked alike, then applied.
    let changes = request
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism, None))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.as_str(), u.mechanism, Some(u))),
        );
    for (name, mechanism, upsertion) in changes {
        if name.is_empty() {
            fail(
                name,
                ResponseError::UnacceptableCredential,
                "Username must not be empty",
            );
            continue;
        }
        let Some(mechanism) = ScramMechanism::from_kafka_code(mechanism) else {
            fail(
                name,
                ResponseError::UnsupportedSaslMechanism,
                "Unknown SCRAM mechanism",
            );
            continue;
        };
        let outcome = match upsertion {
            None if duplicated.contains(name) => continue,
            None => users.delete_scram(name, mechanism).await.map_err(|_| {
                (
                    ResponseError::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist".to_string(),
                )
            }),
            Some(upsertion) => {
                let iterations = upsertion.iterations;
                if iterations < ITERATIONS_MIN as i32 {
                    Err((
                        ResponseError::UnacceptableCredential,
                        "Too few iterations".to_string(),
                    ))
                } else if iterations > ITERATIONS_MAX as i32 {
                    Err((
                        ResponseError::UnacceptableCredential,
                        "Too many iterations".to_string(),
                    ))
                } else if duplicated.contains(name) {
                    continue;
                } else {
                    let credential = ScramCredential::from_salted_password(
                        mechanism,
                        upsertion.salt.to_vec(),
                        &upsertion.salted_password,
                        iterations as u32,
                    );
                    users
                        .upsert_scram(name, credential)
                        .await
                        .map_err(|error| (ResponseError::UnacceptableCredential, error.to_string()))
                }
            }
        };
        match outcome {
            Ok(()) => tracing::info!(
                principal = %context.principal.name,
                user = name,
                mechanism = mechanism.name(),
                deleted = upsertion.is_none(),
                "SCRAM credential changed"
            ),
            Err((code, message)) => fail(name, code, &message),
        }
    }
    AlterUserScramCredentialsResponse::default().with_results(
        unique
            .into_iter()
            .map(|name| match outcome.get(name.as_str()) {
                Some((code, message)) => result(name, *code, message.as_deref()),
                None => result(name, 0, None),
            })
            .collect(),
    )
}
