//! `handover worker`: its flags and settings are
//! `handover_config::cli::worker`'s; the worker itself is the
//! `handover-worker` crate.

use handover_config::cli::worker::{WorkerArgs, settings};

/// Runs a worker until SIGINT, a drain's end, or its replica's end
/// ([`handover_worker::sip::ReplicaEnded`]).
pub(crate) fn run(args: WorkerArgs) -> anyhow::Result<()> {
    crate::init_tracing();
    handover_worker::sip::run(settings(args)?)
}
