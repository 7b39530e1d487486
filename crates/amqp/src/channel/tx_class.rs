//! The tx class: select, commit (publishes and acks take effect together, answered once the
//! publishes are stored), rollback.

use amq_protocol::protocol::{tx, AMQPClass};

use super::{unimplemented, Channel};
use crate::connection::Connection;
use crate::reply::*;

impl Channel {
    pub(super) async fn tx_method(
        &mut self,
        connection: &mut Connection,
        method: tx::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.session.tx_select();
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            tx::AMQPMethod::Commit(_) => {
                let committed = self.session.tx_commit()?;
                for message in &committed.returned {
                    self.send_return(connection, message);
                }
                for wait in committed.durable {
                    if !matches!(wait.await, Ok(Ok(()))) {
                        return Err(AmqpError::connection(
                            INTERNAL_ERROR,
                            "could not store a message of the transaction",
                        ));
                    }
                }
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
            }
            tx::AMQPMethod::Rollback(_) => {
                self.session.tx_rollback()?;
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}
