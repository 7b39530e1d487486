//! The confirm class: confirm.select starts the task that sends basic.ack / basic.nack in
//! publish order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::{basic, confirm, AMQPClass};
use sluice_broker::DurableWait;
use tokio::sync::{mpsc, oneshot};

use super::{unimplemented, Channel};
use crate::codec::method_frame;
use crate::connection::{Connection, Outbound};
use crate::reply::*;

/// One published message waiting for its confirm.
pub(super) struct ConfirmItem {
    pub tag: u64,
    /// Each resolves once the message is stored in one durable queue or stream; any storage
    /// failure (typed `BrokerError::Storage`) or a dropped sender makes the confirm a nack.
    pub waits: Vec<DurableWait>,
    pub nack: bool,
}

pub(super) struct Confirms {
    pub next_tag: u64,
    pub sender: mpsc::UnboundedSender<ConfirmItem>,
    /// The confirm loop; it ends once `sender` is dropped and every item is answered.
    pub task: tokio::task::JoinHandle<()>,
}

impl Channel {
    pub(super) fn confirm_method(
        &mut self,
        connection: &mut Connection,
        method: confirm::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            confirm::AMQPMethod::Select(s) => {
                if self.session.in_transaction() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirms.is_none() {
                    let (sender, items) = mpsc::unbounded_channel();
                    let task = tokio::spawn(confirm_loop(
                        self.id,
                        items,
                        connection.out.clone(),
                        Arc::clone(&self.closed_flag),
                    ));
                    self.confirms = Some(Confirms {
                        next_tag: 1,
                        sender,
                        task,
                    });
                }
                if !s.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}

impl Channel {
    /// Takes no more publishes to confirm and returns the confirm loop, which ends once it
    /// has answered every publish already read: basic.ack for those that became durable,
    /// basic.nack for the others (graceful shutdown).
    pub fn finish_confirms(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.confirms.take().map(|confirms| confirms.task)
    }
}

/// Whether an item's stores have all answered: Some(true) stored, Some(false) failed, None
/// still waiting (answered receivers are dropped from the list).
fn poll_ready(item: &mut ConfirmItem) -> Option<bool> {
    if item.nack {
        return Some(false);
    }
    let mut failed = false;
    item.waits.retain_mut(|wait| match wait.try_recv() {
        Ok(Ok(())) => false,
        Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
            failed = true;
            false
        }
        Err(oneshot::error::TryRecvError::Empty) => true,
    });
    if failed {
        item.nack = true;
        return Some(false);
    }
    item.waits.is_empty().then_some(true)
}

/// Sends basic.ack / basic.nack in publish order. Consecutive confirms that are ready together
/// go out as one ack with multiple=true, as RabbitMQ does under load.
async fn confirm_loop(
    channel: u16,
    mut items: mpsc::UnboundedReceiver<ConfirmItem>,
    out: Outbound,
    closed: Arc<AtomicBool>,
) {
    let send = |method: basic::AMQPMethod| {
        if !closed.load(Ordering::Acquire) {
            out.send(method_frame(channel, AMQPClass::Basic(method)));
        }
    };
    let mut carried: Option<ConfirmItem> = None;
    loop {
        let mut item = match carried.take() {
            Some(item) => item,
            None => match items.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut stored = !item.nack;
        for wait in std::mem::take(&mut item.waits) {
            if !matches!(wait.await, Ok(Ok(()))) {
                stored = false;
            }
        }
        if !stored {
            send(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: item.tag,
                multiple: false,
                requeue: false,
            }));
            continue;
        }
        let mut last = item.tag;
        let mut multiple = false;
        while let Ok(mut next) = items.try_recv() {
            match poll_ready(&mut next) {
                Some(true) => {
                    last = next.tag;
                    multiple = true;
                }
                Some(false) | None => {
                    carried = Some(next);
                    break;
                }
            }
        }
        send(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: last,
            multiple,
        }));
    }
}
