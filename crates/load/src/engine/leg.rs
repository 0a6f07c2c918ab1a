//! What the engine keeps per call and per leg: a call's record (`Rec`),
//! the role a leg plays (`Kind`, `Callee`), its transactions and what it
//! waits for (`Leg`, `Nit`, `Resend`, `Wake`).

use super::*;

#[derive(Debug)]
pub(super) struct Rec {
    pub(super) scenario: Scenario,
    pub(super) started: Instant,
    pub(super) established: bool,
    pub(super) outcome: Outcome,
    /// The transferor heard a 2xx sipfrag.
    pub(super) transfer_ok: bool,
    /// The leg whose BYE ends the call (A's, or A's call to C).
    pub(super) last_leg: usize,
    /// B's leg (the transferor's, with A).
    pub(super) b_leg: Option<usize>,
    /// B's own call to C (attended).
    pub(super) b2_leg: Option<usize>,
    /// Every leg of this call (checked for retirement when it ends).
    pub(super) legs: Vec<usize>,
}

/// What a leg of ours is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A, calling.
    A,
    /// A calling the transfer target.
    A2,
    /// B calling C (attended transfer).
    B2,
    /// Answering a call for this user (`b`, `xb`, `ab`, `c`).
    Callee(Callee),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Callee {
    B,
    XferB,
    AttB,
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    Bye,
    Hold,
    Resume,
    Refer,
    CallC,
}

/// A 2xx we resend (T1 doubling to T2) until its ACK.
#[derive(Debug)]
pub(super) struct Resend {
    pub(super) bytes: Vec<u8>,
    pub(super) next: Instant,
    pub(super) interval: Duration,
    pub(super) give_up: Instant,
}

#[derive(Debug)]
pub(super) enum Nit {
    Client(Key, ClientNonInvite, &'static str),
    Server(Key, ServerNonInvite),
}

#[derive(Debug)]
pub(super) struct Leg {
    pub(super) rec: usize,
    pub(super) kind: Kind,
    pub(super) call_id: Vec<u8>,
    /// Our tag: with the Call-ID, what finds this leg (one process plays
    /// both ends of a dialog when it calls itself).
    pub(super) local_tag: Vec<u8>,
    /// A callee's: the caller's tag, which finds it before it has ours.
    pub(super) remote_tag: Option<Vec<u8>>,
    pub(super) dialog: Option<Dialog>,
    /// Our INVITE or re-INVITE: request, key, transaction, what it was for.
    pub(super) cli: Option<(Vec<u8>, Key, ClientInvite, Wake)>,
    pub(super) ack: Option<Vec<u8>>,
    pub(super) srv: Option<(Key, ServerInvite)>,
    pub(super) ok: Option<Resend>,
    pub(super) nits: Vec<Nit>,
    pub(super) wake: Option<(Instant, Wake)>,
    /// C: the leg (of ours) this call replaces, hung up after the ACK;
    /// A2: A's leg with the transferor, to NOTIFY.
    pub(super) replaces: Option<usize>,
    /// Our first 2xx was ACKed (later ACKs are of re-INVITEs).
    pub(super) acked: bool,
    pub(super) over: bool,
    /// The dialog ended as the role expects: our BYE was answered 2xx, or
    /// the peer's BYE came where the scenario has the peer hang up. A
    /// call succeeds only once every leg of it with a dialog has this.
    pub(super) ended_ok: bool,
    /// This leg sent a REFER (the transferor's): only it takes NOTIFYs.
    pub(super) referred: bool,
    /// A status other than 2xx that answered our BYE (the call fails with
    /// it unless the peer's own BYE ends the dialog meanwhile).
    pub(super) bye_refused: Option<u16>,
}

impl Leg {
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let nits = self.nits.iter().filter_map(|n| match n {
            Nit::Client(_, t, _) => t.poll_timeout(),
            Nit::Server(_, t) => t.poll_timeout(),
        });
        [
            self.cli.as_ref().and_then(|c| c.2.poll_timeout()),
            self.srv.as_ref().and_then(|s| s.1.poll_timeout()),
            self.ok.as_ref().map(|o| o.next),
            self.wake.map(|w| w.0),
        ]
        .into_iter()
        .flatten()
        .chain(nits)
        .min()
    }
}
