//! The handover worker (docs/architecture.md, "The worker"): the I/O shell
//! around the sans-IO cores. [`sip`] is the SIP loop around
//! [`handover_call::B2bua`]; [`replica`] runs a [`handover_cluster::Node`]
//! on its own thread with its log on disk and its messages over gRPC
//! ([`services`], [`rpc`]); [`record`] is the call record's wire form;
//! [`peers`] the members' addresses; [`tls`] who may use the cluster
//! port; [`local`] the local admin socket (drain, and [`fault`]
//! injection in test builds); [`admin`] the HTTP port for metrics and
//! health. The `handover` binary parses flags and files into
//! [`sip::Settings`] and calls [`sip::run`].

pub mod admin;
pub mod fault;
pub mod local;
pub mod peers;
pub mod record;
pub mod records;
pub mod reload;
pub mod replica;
pub mod rpc;
pub mod services;
pub mod sip;
pub mod tls;
pub mod watch;
