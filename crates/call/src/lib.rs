//! The B2BUA's call state, sans-IO: dialogs (RFC 3261 §12), the basic call
//! (two legs bridged: INVITE, 1xx/2xx/errors, ACK per leg, BYE, CANCEL),
//! in-dialog relay (re-INVITE with glare, UPDATE, INFO, …) and transfer in
//! passthrough mode (REFER and NOTIFY relayed, Refer-To and Replaces
//! rewritten), on top of `handover-txn`; phones registered with
//! `handover-registrar` are called on their flows.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod b2bua;
mod dialog;
mod routing;
pub mod transfer;
pub mod trust;

pub use b2bua::{
    AuthStats, B2bua, CallDetail, CallRecord, Config, Detail, EndCause, Latency, LocalRecord,
    PendingRequest, ReferRecord, Replication, Stats, Target, TransferDetail, TransferEvent,
    TransferResult,
};
pub use dialog::{Dialog, DialogError, DialogId, DialogState, Parts};
pub use handover_registrar as registrar;
pub use routing::{Match, Route, Routes, TransferMode};
