//! InitProducerId: ids for idempotent producers; for a transactional id, the transaction
//! coordinator's id with a bumped epoch, which fences the old instance and aborts its open
//! transaction.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use sluice_broker::BrokerError;

use crate::error_codes::broker_error_code;
use crate::RequestContext;

/// PRODUCER_FENCED exists from InitProducerId v4 on (KIP-588); older clients get
/// INVALID_PRODUCER_EPOCH for it, as Kafka answers them.
const PRODUCER_FENCED_VERSION_MIN: i16 = 4;

pub async fn init_producer_id(
    ctx: &RequestContext,
    version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let failed = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let transactional_id = request.transactional_id.as_ref().map(|t| t.to_string());
    // KIP-360 (v3+): a client re-initialising names the id and epoch it holds; both or neither.
    let claimed = match (request.producer_id.0, request.producer_epoch) {
        (-1, -1) => None,
        (-1, _) | (_, -1) => return failed(ResponseError::InvalidRequest.code()),
        (producer_id, epoch) => Some((producer_id, epoch)),
    };
    match ctx
        .broker
        .init_producer_id(
            transactional_id.as_deref(),
            request.transaction_timeout_ms,
            claimed,
        )
        .await
    {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
        Err(BrokerError::ProducerFenced(_)) if version < PRODUCER_FENCED_VERSION_MIN => {
            failed(ResponseError::InvalidProducerEpoch.code())
        }
        Err(error) => failed(broker_error_code(&error)),
    }
}
