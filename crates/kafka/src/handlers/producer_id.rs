//! InitProducerId: ids for idempotent producers (transactions are not supported yet, but a
//! transactional id gets the same id back with a bumped epoch, which fences the old instance).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

pub async fn init_producer_id(
    ctx: &RequestContext,
    _version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let transactional_id = request.transactional_id.as_ref().map(|t| t.to_string());
    // KIP-360: a producer that lost its sequence state re-initialises with its id and epoch and
    // continues with a bumped epoch.
    if transactional_id.is_none()
        && request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    match ctx.broker.init_producer_id(transactional_id.as_deref()) {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(broker_error_code(&error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
