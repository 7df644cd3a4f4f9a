//! [`Driver`]: the reference loop that routes framed backend messages to the right machine —
//! the startup machine first, then the FIFO of in-flight replies, with asynchronous messages
//! taken out before either sees them. No I/O: the caller frames the bytes and sends `out`.
//!
//! The property tests and fuzz targets drive the protocol core through this; a ring
//! connection can embed it or follow the same order (see the [`proto`](super) docs).

use std::collections::VecDeque;

use bytes::BytesMut;

use super::db_error::DbError;
use super::message::{classify_async, tag_name, AsyncMessage};
use super::reply::{Reply, ReplyEvent};
use super::startup::{ServerInfo, Startup, StartupStatus};
use crate::{PgError, PgOptions};

/// What one backend message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent<'a> {
    /// A startup step; `Ready` carries the server's parameters and cancel key.
    Startup(StartupStatus),
    /// A NoticeResponse, NotificationResponse or ParameterStatus after startup (a
    /// ParameterStatus has already been recorded in [`Driver::server_info`]).
    Async(AsyncMessage<'a>),
    /// An event of the head command; after `Done` that command has been popped.
    Reply(ReplyEvent<'a>),
}

/// Routes backend messages: startup, then in-flight commands in order.
#[derive(Debug)]
pub struct Driver {
    startup: Startup,
    info: Option<ServerInfo>,
    replies: VecDeque<Reply>,
}

impl Driver {
    /// A driver whose handshake uses `opts`; call [`Driver::start`] first.
    pub fn new(opts: &PgOptions) -> Driver {
        Driver {
            startup: Startup::new(opts),
            info: None,
            replies: VecDeque::new(),
        }
    }

    /// Appends the StartupMessage to `out`.
    pub fn start(&mut self, out: &mut BytesMut) -> Result<(), PgError> {
        self.startup.start(out)
    }

    /// The server's parameters and cancel key, once startup finished.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_ref()
    }

    /// Registers a command just written to the send buffer; its replies come after those of
    /// every command pushed before it.
    pub fn push(&mut self, reply: Reply) {
        self.replies.push_back(reply);
    }

    /// Commands whose ReadyForQuery has not arrived yet.
    pub fn in_flight(&self) -> usize {
        self.replies.len()
    }

    /// Handles one framed message. Responses (authentication) are appended to `out`. An error
    /// is final: the connection is broken (or, for a server error during startup or outside
    /// any command, the server is closing it).
    pub fn on_frame<'a>(
        &mut self,
        tag: u8,
        body: &'a [u8],
        out: &mut BytesMut,
    ) -> Result<DriverEvent<'a>, PgError> {
        let Some(info) = &mut self.info else {
            let status = self.startup.handle(tag, body, out)?;
            if let StartupStatus::Ready(info) = &status {
                self.info = Some(info.clone());
            }
            return Ok(DriverEvent::Startup(status));
        };
        if let Some(msg) = classify_async(tag, body)? {
            if let AsyncMessage::ParameterStatus { name, value } = &msg {
                info.set_parameter(name, value)?;
            }
            return Ok(DriverEvent::Async(msg));
        }
        let Some(head) = self.replies.front_mut() else {
            // Only a FATAL error (e.g. an administrator shutdown) may arrive unasked.
            if tag == b'E' {
                return Err(PgError::server(DbError::parse(body)?));
            }
            return Err(PgError::protocol(format!(
                "unexpected {} with no command in flight",
                tag_name(tag)
            )));
        };
        let event = head.on_message(tag, body)?;
        if matches!(event, ReplyEvent::Done { .. }) {
            self.replies.pop_front();
        }
        Ok(DriverEvent::Reply(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_startup_async_and_replies_in_order() -> Result<(), PgError> {
        let mut d = Driver::new(&PgOptions::new().user("u"));
        let mut out = BytesMut::new();
        d.start(&mut out)?;
        d.push(Reply::simple());
        d.push(Reply::bind_execute());
        assert!(matches!(
            d.on_frame(b'R', &[0; 4], &mut out)?,
            DriverEvent::Startup(_)
        ));
        assert!(matches!(
            d.on_frame(b'Z', b"I", &mut out)?,
            DriverEvent::Startup(StartupStatus::Ready(_))
        ));
        assert!(matches!(
            d.on_frame(b'S', b"TimeZone\0UTC\0", &mut out)?,
            DriverEvent::Async(_)
        ));
        assert_eq!(
            d.server_info().and_then(|i| i.parameter("TimeZone")),
            Some("UTC")
        );
        assert!(matches!(
            d.on_frame(b'I', b"", &mut out)?,
            DriverEvent::Reply(_)
        ));
        assert!(matches!(
            d.on_frame(b'Z', b"I", &mut out)?,
            DriverEvent::Reply(_)
        ));
        assert_eq!(d.in_flight(), 1);
        assert!(matches!(
            d.on_frame(b'2', b"", &mut out)?,
            DriverEvent::Reply(_)
        ));
        assert!(matches!(
            d.on_frame(b'I', b"", &mut out)?,
            DriverEvent::Reply(_)
        ));
        assert!(matches!(
            d.on_frame(b'Z', b"I", &mut out)?,
            DriverEvent::Reply(_)
        ));
        assert_eq!(d.in_flight(), 0);
        let e = d
            .on_frame(b'E', b"SFATAL\0C57P01\0Mbye\0\0", &mut out)
            .err();
        assert_eq!(e.as_ref().and_then(PgError::sql_state), Some("57P01"));
        assert!(
            d.on_frame(b'Z', b"I", &mut out).is_err(),
            "nothing in flight"
        );
        Ok(())
    }
}
