//! The SIP message layer of handover.
//!
//! It owns reading, rewriting and writing SIP messages, and never does I/O:
//! no sockets, no clock, no threads. The edge, the workers, the test user
//! agents and the load generator all share it.
//!
//! - [`scan`] reads one datagram in one pass without copying or allocating
//!   and returns a [`Message`] of spans with typed views ([`Via`], [`Uri`],
//!   [`NameAddr`], [`CSeq`]) or a [`ScanError`] whose [`Verdict`] says
//!   whether to answer (400/413/414/416/505, with the parts of the request an
//!   answer copies) or to drop.
//! - [`Rewrite`] splices the stateless-proxy edits of RFC 3261 §16.11 into a
//!   send buffer: a new top Via, `received`/`rport`, Max-Forwards, the top
//!   Route, URI parameters. Untouched bytes are copied, never re-serialised.
//! - [`build`] writes responses to requests (§8.2.6) and new requests.
//! - [`ids`] makes branches, tags and Call-IDs, the deterministic stateless
//!   branch of §16.11, and the affinity key that routes a call.
//!
//! Call order on the hot path: `scan` → read what routing needs →
//! `Rewrite::new` → edits → `Rewrite::write_to`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
pub mod build;
mod bundle;
mod cidr;
mod error;
mod flow;
mod header;
pub mod ids;
mod lex;
mod method;
mod rewrite;
mod scan;
mod uri;
mod via;

pub use addr::NameAddr;
pub use bundle::{
    BUNDLE_MAGIC, BUNDLE_MAX_MESSAGE, BundleMessages, Bundler, bundle_messages, is_bundle,
};
pub use cidr::Cidr;
pub use error::{Reason, ReplyParts, ScanError, Verdict};
pub use flow::{BadFlow, Flow, Transport};
pub use header::HeaderName;
pub use lex::{CommaValues, Param, Params, Span};
pub use method::{CSeq, Method};
pub use rewrite::{Rewrite, RewriteError};
pub use scan::{Field, Header, Headers, Limits, Message, StartLine, Values, scan, scan_with};
pub use uri::{Scheme, Uri, UriError};
pub use via::{MAGIC_COOKIE, Rport, Via};
