//! The open connections by flow, shared by every stream thread and read
//! by the UDP threads: where an answer for a flow goes, and the limits
//! on connections in all and per source address.

use super::*;

/// Open connections by flow, with the counts the limits need. Shared by
/// every stream thread and read by the UDP threads.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Conns>,
}

#[derive(Debug, Default)]
pub(super) struct Conns {
    by_flow: HashMap<Flow, mpsc::Sender<Box<[u8]>>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    Total,
    Source,
}

impl Registry {
    /// Queues `bytes` for the connection of `flow`. False when the edge
    /// holds no such connection (the caller answers 430 or drops); a full
    /// queue drops the message and counts it.
    ///
    /// A flow read from a Via names the transport its sender wrote, which
    /// is not always the connection's (a client behind a TLS-terminating
    /// shim writes TCP): when no connection of that transport has the
    /// address, one of another stream transport with it is taken.
    pub fn send(&self, flow: Flow, bytes: &[u8]) -> bool {
        if !flow.transport.is_stream() {
            return false;
        }
        let tx = {
            let c = self.inner.lock();
            c.by_flow.get(&flow).cloned().or_else(|| {
                Transport::ALL
                    .iter()
                    .filter(|t| t.is_stream() && **t != flow.transport)
                    .find_map(|t| c.by_flow.get(&Flow::new(*t, flow.addr)).cloned())
            })
        };
        let Some(tx) = tx else {
            return false;
        };
        match tx.try_send(bytes.into()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                counter!(QUEUE_FULL).increment(1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.inner.lock().by_flow.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn admit(
        &self,
        flow: Flow,
        tx: mpsc::Sender<Box<[u8]>>,
        cfg: &StreamConfig,
    ) -> Result<(), Refusal> {
        self.admit_as(flow, tx, cfg, true)
    }

    /// [`Registry::admit`]; `inbound: false` for a connection the edge
    /// opens (not charged to the far end's per-source budget, and never
    /// two to one target: one that exists is kept).
    pub(super) fn admit_as(
        &self,
        flow: Flow,
        tx: mpsc::Sender<Box<[u8]>>,
        cfg: &StreamConfig,
        inbound: bool,
    ) -> Result<(), Refusal> {
        let mut c = self.inner.lock();
        if c.by_flow.len() >= cfg.max_connections {
            return Err(Refusal::Total);
        }
        if !inbound && c.by_flow.contains_key(&flow) {
            return Err(Refusal::Total);
        }
        let n = c.per_ip.entry(flow.addr.ip()).or_insert(0);
        if inbound && *n >= cfg.max_per_source {
            return Err(Refusal::Source);
        }
        *n += 1;
        c.by_flow.insert(flow, tx);
        Ok(())
    }

    pub(super) fn remove(&self, flow: Flow) {
        let mut c = self.inner.lock();
        if c.by_flow.remove(&flow).is_some()
            && let Some(n) = c.per_ip.get_mut(&flow.addr.ip())
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&flow.addr.ip());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_limits_connections_and_finds_a_flow_by_its_address() {
        let cfg = StreamConfig {
            max_connections: 3,
            max_per_source: 2,
            ..StreamConfig::default()
        };
        let r = Registry::default();
        let f = |s: &str| s.parse::<Flow>().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        assert_eq!(r.admit(f("tls:192.0.2.1:40000"), tx.clone(), &cfg), Ok(()));
        assert_eq!(r.admit(f("tcp:192.0.2.1:40001"), tx.clone(), &cfg), Ok(()));
        assert_eq!(
            r.admit(f("tcp:192.0.2.1:40002"), tx.clone(), &cfg),
            Err(Refusal::Source),
            "two per address"
        );
        assert_eq!(r.admit(f("tcp:192.0.2.2:40000"), tx.clone(), &cfg), Ok(()));
        assert_eq!(
            r.admit(f("tcp:192.0.2.3:40000"), tx.clone(), &cfg),
            Err(Refusal::Total)
        );
        // A Via that says TCP for what came on TLS still finds it.
        assert!(r.send(f("tcp:192.0.2.1:40000"), b"SIP/2.0 200 OK\r\n\r\n"));
        assert_eq!(&*rx.try_recv().unwrap(), b"SIP/2.0 200 OK\r\n\r\n");
        assert!(
            !r.send(f("tcp:192.0.2.9:40000"), b"x"),
            "no such connection"
        );
        assert!(
            !r.send(f("192.0.2.1:40000"), b"x"),
            "UDP is not a connection"
        );
        r.remove(f("tls:192.0.2.1:40000"));
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.admit(f("tcp:192.0.2.1:40003"), tx, &cfg),
            Ok(()),
            "room again"
        );
    }
}
