//! `handover load`: a SIP load generator that plays every party of its
//! scenarios itself over one UDP socket: the caller (A), the callee (B),
//! and the transfer target (C). The system under test routes the users it
//! calls (`b`, `xb`, `ab`, `c`) back to the generator's own address.
//!
//! Scenarios (mixed by weight):
//! - `basic`: INVITE, 180/200, ACK, hold time, BYE.
//! - `hold`: the same with re-INVITE a=sendonly (expects a=recvonly back)
//!   and a=sendrecv during the call.
//! - `blind`: B sends REFER (Refer-To: C) after answering; A obeys (202,
//!   NOTIFY 100, INVITE to C with Referred-By, NOTIFY 200 when C answers);
//!   B hangs up after the final NOTIFY; A and C talk, then A hangs up. With
//!   a B2BUA in local mode A sees a re-INVITE instead, and B the B2BUA's
//!   NOTIFYs and BYE: both are played.
//! - `attended`: B first calls C itself, then REFERs A with a Replaces
//!   naming that call; A's INVITE carries the Replaces, and C hangs up the
//!   replaced dialog once A's call is up (or, in local mode, C takes the
//!   B2BUA's re-INVITE).
//!
//! Every transaction runs through `handover-txn` (retransmissions with T1
//! doubling, absorption of the peer's retransmissions), and every dialog
//! through `handover-call`'s `Dialog`. A call succeeds when its last BYE is
//! answered 2xx (and, for transfers, the transferor heard a 2xx sipfrag,
//! judged once no NOTIFY of the call is in flight);
//! anything else fails it, once, with a cause: the status line that ended
//! it, `timeout (METHOD)`, or what was unexpected.
//!
//! The engine is sans-IO ([`Engine`]); [`run`] is the socket shell.

pub mod cli;
mod engine;
mod report;
mod run;
mod scenario;

pub use engine::{Counts, Engine, EngineConfig};
pub use handover_io::IoMode;
pub use report::{Latency, Progress, Report};
pub use run::{Options, run};
pub use scenario::{Mix, Scenario};
