//! The operator's commands against a running cluster: `handover status`,
//! `calls`, `hangup`, `reload` and `leave` over a worker's gRPC `Admin`
//! service; `drain` (and, in tests, `fault`) over a worker's local admin
//! socket. Each is a clap `Args` and a function that runs it.

pub mod calls;
pub mod status;
