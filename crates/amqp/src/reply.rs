//! AMQP reply codes and how broker errors map onto them (channel or connection level, as
//! RabbitMQ does).

use sluice_broker::vhost::VhostError;

pub const CONNECTION_FORCED: u16 = 320;
pub const NO_ROUTE: u16 = 312;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

/// An error that ends a channel or the whole connection.
#[derive(Debug, Clone)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
    /// Connection-level ("hard") error: connection.close rather than channel.close.
    pub hard: bool,
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            hard: false,
        }
    }
    pub fn connection(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError {
            hard: true,
            ..AmqpError::channel(code, text)
        }
    }
    pub fn on(mut self, class_id: u16, method_id: u16) -> AmqpError {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }
    /// The reply text as RabbitMQ words it: the code's name, a dash, the detail.
    pub fn reply_text(&self) -> String {
        let name = match self.code {
            CONNECTION_FORCED => "CONNECTION_FORCED",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            _ => "ERROR",
        };
        let mut text = format!("{name} - {}", self.text);
        // A short string holds at most 255 bytes.
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text
    }
}

impl From<VhostError> for AmqpError {
    fn from(error: VhostError) -> Self {
        match error {
            VhostError::NotFound(t) => AmqpError::channel(NOT_FOUND, t),
            VhostError::AccessRefused(t) => AmqpError::channel(ACCESS_REFUSED, t),
            VhostError::ResourceLocked(t) => AmqpError::channel(RESOURCE_LOCKED, t),
            VhostError::PreconditionFailed(t) => AmqpError::channel(PRECONDITION_FAILED, t),
            VhostError::NotAllowed(t) => AmqpError::connection(NOT_ALLOWED, t),
            VhostError::CommandInvalid(t) => AmqpError::connection(COMMAND_INVALID, t),
            VhostError::Storage(failure) => AmqpError::connection(INTERNAL_ERROR, failure.detail),
            VhostError::Internal(t) => AmqpError::connection(INTERNAL_ERROR, t),
        }
    }
}
