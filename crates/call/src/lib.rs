//! The B2BUA's call state, sans-IO: dialogs (RFC 3261 §12) and the basic
//! call (two legs bridged: INVITE, 1xx/2xx/errors, ACK per leg, BYE,
//! CANCEL), on top of `handover-txn`. Re-INVITE and glare, and transfer
//! (REFER, NOTIFY, Replaces) come next.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod b2bua;
mod dialog;
mod routing;

pub use b2bua::{B2bua, Config, Latency, Stats, TransferEvent, TransferResult};
pub use dialog::{Dialog, DialogError, DialogId, DialogState};
pub use routing::{Match, Route, Routes};
