//! Every failure answers `{"error": KIND, "reason": TEXT}` with the status its kind implies.
//! Client input never gets a 5xx: only storage failures and broken invariants do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_broker::vhost::VhostError;
use sluice_broker::{BrokerError, GroupError};

use crate::model::ErrorBody;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Internal(_) => "internal",
        }
    }

    fn reason(&self) -> &str {
        match self {
            ApiError::BadRequest(r)
            | ApiError::Unauthorized(r)
            | ApiError::Forbidden(r)
            | ApiError::NotFound(r)
            | ApiError::Conflict(r)
            | ApiError::MethodNotAllowed(r)
            | ApiError::NotReady(r)
            | ApiError::Internal(r) => r,
        }
    }
}

/// The challenge sent with every 401, so browsers and curl know to send basic credentials.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"sluice\", charset=\"UTF-8\"";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "HTTP API request failed");
        }
        let body = ErrorBody {
            error: self.kind().to_string(),
            reason: self.reason().to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(BASIC_CHALLENGE),
            );
        }
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let reason = error.to_string();
        match error {
            BrokerError::UnknownTopicOrPartition(_) => ApiError::NotFound(reason),
            BrokerError::TopicAlreadyExists(_) => ApiError::Conflict(reason),
            BrokerError::InvalidTopic(_)
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidReplicationFactor(_)
            | BrokerError::InvalidConfig(_)
            | BrokerError::InvalidRecord(_)
            | BrokerError::InvalidTimestamp(_)
            | BrokerError::MessageTooLarge(_)
            | BrokerError::OffsetOutOfRange(_) => ApiError::BadRequest(reason),
            BrokerError::CorruptMessage(_)
            | BrokerError::OutOfOrderSequence(_)
            | BrokerError::InvalidProducerEpoch(_)
            | BrokerError::UnknownProducerId(_)
            | BrokerError::ProducerFenced(_)
            | BrokerError::InvalidTransactionTimeout(_)
            | BrokerError::ConcurrentTransactions(_)
            | BrokerError::InvalidTxnState(_)
            | BrokerError::InvalidProducerIdMapping(_)
            | BrokerError::Storage(_) => ApiError::Internal(reason),
            BrokerError::TransactionalIdNotFound(_) => ApiError::NotFound(reason),
            BrokerError::TransactionalIdAuthorizationFailed(_) => ApiError::Forbidden(reason),
            BrokerError::NotCoordinator(_) | BrokerError::CoordinatorNotAvailable(_) => {
                ApiError::NotReady(reason)
            }
        }
    }
}

impl From<VhostError> for ApiError {
    fn from(error: VhostError) -> Self {
        let reason = error.to_string();
        match error {
            VhostError::NotFound(_) => ApiError::NotFound(reason),
            VhostError::AccessRefused(_) => ApiError::Forbidden(reason),
            VhostError::ResourceLocked(_) => ApiError::Conflict(reason),
            VhostError::PreconditionFailed(_)
            | VhostError::NotAllowed(_)
            | VhostError::CommandInvalid(_) => ApiError::BadRequest(reason),
            VhostError::Storage(_) | VhostError::Internal(_) => ApiError::Internal(reason),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        let reason = error.to_string();
        match error {
            GroupError::GroupIdNotFound => ApiError::NotFound(reason),
            GroupError::InvalidGroupId
            | GroupError::OffsetMetadataTooLarge
            | GroupError::UnsupportedAssignor(_)
            | GroupError::InvalidRegularExpression(_)
            | GroupError::InvalidRequest(_)
            | GroupError::InvalidConfig(_) => ApiError::BadRequest(reason),
            GroupError::UnknownTopicOrPartition => ApiError::NotFound(reason),
            // An admin write to a group with members (as the Kafka tool's is refused).
            GroupError::NonEmptyGroup
            | GroupError::UnknownMemberId
            | GroupError::IllegalGeneration
            | GroupError::RebalanceInProgress
            | GroupError::MemberIdRequired
            | GroupError::FencedInstanceId
            | GroupError::InconsistentGroupProtocol
            | GroupError::InvalidSessionTimeout
            | GroupError::GroupMaxSizeReached
            | GroupError::GroupSubscribedToTopic
            | GroupError::FencedMemberEpoch
            | GroupError::StaleMemberEpoch
            | GroupError::UnreleasedInstanceId
            | GroupError::InvalidRecordState => ApiError::Conflict(reason),
            GroupError::CoordinatorNotAvailable
            | GroupError::CoordinatorLoadInProgress
            | GroupError::NotCoordinator
            | GroupError::Storage(_) => ApiError::Internal(reason),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
