//! The B2BUA's call state, sans-IO. Today: dialogs (RFC 3261 §12). The
//! call (two legs bridged), re-INVITE and glare, and transfer (REFER,
//! NOTIFY, Replaces) come next, on top of `handover-txn`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod dialog;

pub use dialog::{Dialog, DialogError, DialogId, DialogState};
