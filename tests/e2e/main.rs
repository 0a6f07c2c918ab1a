//! End-to-end tests: the real `handover` binary in real processes.
//!
//! One test binary for the whole suite (compiled as an integration test of
//! the `handover` package so Cargo hands it the binary's path). Each test
//! gets its own temporary directory; nothing uses fixed paths or ports.

#[path = "../../crates/sip/testdata/corpus_format.rs"]
mod corpus_format;

mod browser;
mod calls;
mod cli;
mod edge;
mod failover;
mod inflight;
mod kube;
mod load;
mod moves;
mod ops;
mod phones;
mod prometheus;
mod records;
mod register;
mod reload;
mod scale;
mod streams;
mod support;
mod transfer;
mod trust;
mod up;
