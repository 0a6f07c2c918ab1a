//! The shell of membership changes: `--join` asks a member until this
//! worker is in Raft's configuration, and again if it is removed; `Admin.Leave` callers hear of the
//! removal; this worker's own leave drains it (see `handover_cluster`'s
//! membership for what the leader does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handover_cluster::Message;
use tokio::sync::mpsc;

use super::{Ask, Replica, sender};
use crate::peers::Peer;
use crate::rpc::pb;
use crate::tls::{TlsDir, WORKER_NAME, channel};

/// `--join`: asks a member through `via` (a name may list every worker,
/// this one included: each address is tried until another member
/// answers) to take this worker in, every 2 s until that member counts it
/// as a learner or a voter, then every 10 s whether it still does: a
/// worker removed while it was away or cut off (`remove_down_after`)
/// asks again, as a new incarnation. The members each answer names go to
/// the replica (`learnt`). Stops once this worker is leaving.
pub(super) async fn join(
    via: String,
    me: Peer,
    tls: Option<TlsDir>,
    learnt: mpsc::UnboundedSender<Vec<pb::Member>>,
    leaving: Arc<AtomicBool>,
) {
    // Random per start, and per ask after a removal: a late copy of an
    // earlier join, applied after that incarnation was removed, is
    // ignored (see MemberJoin).
    let fresh = || rand_core::TryRngCore::try_next_u64(&mut rand_core::OsRng).unwrap_or(1);
    let mut incarnation = fresh();
    let mut member = false;
    let mut first = true;
    loop {
        if !first {
            let wait = if member { 10 } else { 2 };
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        first = false;
        if leaving.load(Ordering::Relaxed) {
            return;
        }
        let req = pb::JoinRequest {
            id: me.id,
            grpc: me.grpc.clone(),
            sip: me.sip.clone(),
            incarnation,
        };
        let Some(answer) = ask_join(&via, me.id, tls.as_ref(), req).await else {
            continue;
        };
        if answer.member != member {
            if answer.member {
                tracing::info!(
                    asked = answer.id,
                    "a member of the cluster's Raft configuration"
                );
            } else {
                tracing::info!(
                    asked = answer.id,
                    "not (or no longer) a member: asked to join"
                );
            }
        }
        member = answer.member;
        if answer.removed {
            tracing::warn!(
                asked = answer.id,
                "removed from the cluster while away: joining again"
            );
            incarnation = fresh();
        }
        if learnt.send(answer.members).is_err() {
            return;
        }
    }
}

/// One `Admin.Join` to the first address of `via` whose member is not
/// this worker (`me`) and answers.
async fn ask_join(
    via: &str,
    me: u64,
    tls: Option<&TlsDir>,
    req: pb::JoinRequest,
) -> Option<pb::JoinReply> {
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(via).await {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::warn!(%via, error = %e, "cannot look up the members to join through");
            return None;
        }
    };
    for addr in addrs {
        let to = addr.to_string();
        let ch = match tls {
            None => channel(&to, None).await,
            Some(d) => match d.client_config(WORKER_NAME) {
                Ok(cfg) => channel(&to, Some(cfg)).await,
                Err(e) => Err(e),
            },
        };
        let mut client = match ch {
            Ok(ch) => pb::admin_client::AdminClient::new(ch),
            Err(e) => {
                tracing::debug!(%via, %to, error = %e, "cannot reach a member to join through");
                continue;
            }
        };
        match client.join(req.clone()).await {
            Ok(r) if r.get_ref().id != me => return Some(r.into_inner()),
            Ok(_) => {}
            Err(e) => tracing::warn!(%via, %to, error = %e, "join refused"),
        }
    }
    None
}

impl Replica {
    /// The members as this replica knows them: the `--peer`s, those learnt
    /// from a join's answer and those that joined (the table's addresses
    /// win), less those no longer in Raft's configuration (once this
    /// replica has one). This worker is always among them.
    pub(super) fn member_list(&self) -> Vec<Peer> {
        let mut all: BTreeMap<u64, Peer> = self.peers.iter().map(|p| (p.id, p.clone())).collect();
        all.extend(self.learnt.clone());
        let t = self.node.table();
        for j in t.joined() {
            all.insert(
                j.node,
                Peer {
                    id: j.node,
                    grpc: j.grpc.clone(),
                    sip: j.sip.clone(),
                },
            );
        }
        let voters = self.node.voters();
        let learners = self.node.learners();
        if !voters.is_empty() {
            let me = self.node.id();
            all.retain(|&id, _| {
                id == me
                    || voters.contains(&id)
                    || learners.contains(&id)
                    || t.joined().any(|j| j.node == id)
            });
        }
        all.into_values().collect()
    }

    /// Starts a sender for each new member and stops those of members
    /// removed; tells the SIP loop when the list changed.
    pub(super) fn sync_members(
        &mut self,
        outs: &mut BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>>,
    ) {
        let list = self.member_list();
        let me = self.node.id();
        for p in list.iter().filter(|p| p.id != me) {
            // A member's address is fixed once known (a name is looked
            // up at each connection).
            if let std::collections::btree_map::Entry::Vacant(e) = outs.entry(p.id) {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(sender(p.grpc.clone(), p.id, self.tls.clone(), rx));
                e.insert(tx);
            }
        }
        outs.retain(|id, _| list.iter().any(|p| p.id == *id));
        self.members
            .send_if_modified(|m| std::mem::replace(m, list.clone()) != list);
    }

    /// `Admin.Join` and `Admin.Leave`, on the replica's thread.
    pub(super) fn ask_membership(&mut self, a: super::Ask) {
        match a {
            Ask::Join { join, reply } => {
                let id = join.node;
                let member = self.node.voters().contains(&id) || self.node.learners().contains(&id);
                let t = self.node.table();
                let removed = t.was_removed(id, join.incarnation);
                let asked = t.joined().any(|j| *j == join);
                if !member && !removed && !asked && id != self.node.id() {
                    tracing::info!(worker = id, grpc = %join.grpc, sip = %join.sip, "a worker asks to join");
                    self.node.join(join);
                }
                let members = self
                    .member_list()
                    .into_iter()
                    .map(|p| pb::Member {
                        id: p.id,
                        grpc: p.grpc,
                        sip: p.sip,
                    })
                    .collect();
                let _ = reply.send(pb::JoinReply {
                    members,
                    id: self.node.id(),
                    member,
                    removed,
                });
            }
            Ask::Leave { id, reply } => {
                if !self.node.table().is_leaving(id) {
                    tracing::info!(worker = id, "an operator removes a worker from the cluster");
                    self.node.leave(id);
                }
                if self.leaves.len() >= 16 {
                    self.leaves.remove(0);
                }
                self.leaves.push((id, reply));
            }
            _ => {}
        }
    }
    /// After the configuration or the table changed: answers the leaves
    /// whose removal is applied, starts this worker's own drain once its
    /// leave is applied, and tells the join task when it is in.
    pub(super) fn membership_news(&mut self, leaving: &AtomicBool) {
        let voters = self.node.voters();
        let learners = self.node.learners();
        let me = self.node.id();
        let removed = |id: &u64| !voters.contains(id) && !learners.contains(id);
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaves)
            .into_iter()
            .partition(|(id, _)| removed(id) && !self.node.table().is_leaving(*id));
        self.leaves = wait;
        for (_, reply) in done {
            let _ = reply.send(voters.clone());
        }
        if !self.leaving && self.node.table().is_leaving(me) {
            self.leaving = true;
            leaving.store(true, Ordering::Relaxed);
            tracing::warn!("this worker leaves the cluster: draining, then stopping");
            let _ = self.notes.send(super::Note::Leave);
        }
    }
}
