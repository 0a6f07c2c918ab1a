//! io_uring: one ring per thread (`SINGLE_ISSUER` + `DEFER_TASKRUN`, so
//! completions run only when this thread asks), a multishot `RecvMsg` on a
//! ring of provided buffers, and a `SendMsg` per outgoing datagram, all
//! submitted once per completion round.
//!
//! Buffers: `NBUF` slots of `SLOT` bytes, enough for the largest UDP
//! datagram after the recvmsg header, the source address and the control
//! message. They are zero-allocated, so only pages the kernel writes to cost
//! memory. When the ring runs dry the kernel ends the multishot receive
//! with `ENOBUFS`; it is counted and re-armed at once.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, types};
use socket2::{SockAddr, Socket};

use super::{CONTROL_LEN, DGRAM_MAX, Handler, rxq_ovfl, sockaddr_from_bytes};

const NBUF: u16 = 512;
const NAME_LEN: usize = size_of::<libc::sockaddr_storage>();
/// `struct io_uring_recvmsg_out` (four u32) precedes name, control and payload.
const RECVMSG_OUT: usize = 16;
const SLOT: usize = RECVMSG_OUT + NAME_LEN + CONTROL_LEN + DGRAM_MAX;
const NSEND: usize = 256;
const BGID: u16 = 0;
const RECV: u64 = u64::MAX;

/// The page-aligned ring of buffer descriptors shared with the kernel.
struct BufRing {
    ptr: *mut BufRingEntry,
    layout: Layout,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<Self> {
        let layout = Layout::from_size_align(usize::from(NBUF) * size_of::<BufRingEntry>(), 4096)
            .map_err(|_| io::Error::other("buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Self {
            ptr,
            layout,
            tail: 0,
        })
    }

    /// Queues buffer `bid` (at `addr`) for the kernel; visible after `publish`.
    fn push(&mut self, bid: u16, addr: *mut u8) {
        let i = usize::from(self.tail & (NBUF - 1));
        // SAFETY: `i < NBUF`, inside the allocation; entries are plain data
        // the kernel reads only up to the published tail.
        let e = unsafe { &mut *self.ptr.add(i) };
        e.set_addr(addr as u64);
        e.set_len(SLOT as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes queued buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `ptr` is the first entry of the ring, so `tail` points at
        // the shared tail field, which is a u16 the kernel reads atomically.
        let tail = unsafe { &*BufRingEntry::tail(self.ptr).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it
        // is dropped first (see `run`).
        unsafe { dealloc(self.ptr.cast(), self.layout) };
    }
}

/// One outgoing datagram's buffer and headers; they must not move while the
/// kernel holds a `SendMsg` for them, so slots live in a boxed slice.
struct SendSlot {
    buf: Box<[u8]>,
    addr: SockAddr,
    iov: libc::iovec,
    hdr: libc::msghdr,
}

impl SendSlot {
    /// Points the header at this slot's first `len` bytes, to `to`.
    fn prepare(&mut self, to: std::net::SocketAddr, len: usize) {
        self.addr = SockAddr::from(to);
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: len.min(self.buf.len()),
        };
        self.hdr.msg_name = self.addr.as_ptr() as *mut libc::c_void;
        self.hdr.msg_namelen = self.addr.len();
        self.hdr.msg_iov = &raw mut self.iov;
        self.hdr.msg_iovlen = 1;
    }
}

/// Creates a ring, preferring `DEFER_TASKRUN` (kernel 6.1+).
pub(crate) fn new_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)
        .or_else(|_| IoUring::builder().build(1024))
}

/// Checks that io_uring and the operations we need work here (kernel,
/// seccomp): a ring, a provided-buffer ring, and the probe of RecvMsg.
pub(crate) fn available() -> io::Result<()> {
    let ring = new_ring()?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::RecvMsgMulti::CODE) || !probe.is_supported(opcode::SendMsg::CODE)
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "RecvMsg/SendMsg not supported",
        ));
    }
    let br = BufRing::new()?;
    // SAFETY: `br` outlives the registration, which is removed just below.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(br.ptr as u64, NBUF, BGID, 0)?
    };
    ring.submitter().unregister_buf_ring(BGID)?;
    Ok(())
}

/// Runs the loop until the handler's `tick` says stop.
pub(crate) fn run(sock: &Socket, h: &mut impl Handler) -> io::Result<()> {
    let fd = types::Fd(sock.as_raw_fd());
    // Declared before the ring so they are dropped after it: the kernel
    // may write into them until the ring is gone.
    let mut bufs = vec![0u8; usize::from(NBUF) * SLOT].into_boxed_slice();
    let mut br = BufRing::new()?;
    let mut slots: Box<[SendSlot]> = (0..NSEND)
        .map(|_| SendSlot {
            buf: vec![0u8; DGRAM_MAX].into_boxed_slice(),
            addr: SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: msghdr is plain old data; all-zero is valid.
            hdr: unsafe { std::mem::zeroed() },
        })
        .collect();
    let mut free: Vec<usize> = (0..NSEND).rev().collect();
    // SAFETY: as above.
    let mut rhdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    rhdr.msg_namelen = NAME_LEN as libc::socklen_t;
    rhdr.msg_controllen = CONTROL_LEN;

    let mut ring = new_ring()?;
    for bid in 0..NBUF {
        let addr = bufs[usize::from(bid) * SLOT..].as_mut_ptr();
        br.push(bid, addr);
    }
    br.publish();
    // SAFETY: `br` and `bufs` outlive `ring` (declared earlier, dropped later).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(br.ptr as u64, NBUF, BGID, 0)?
    };

    let recv = opcode::RecvMsgMulti::new(fd, &raw const *rhdr, BGID)
        .build()
        .user_data(RECV);
    // SAFETY: `rhdr` is boxed and lives until the ring is dropped.
    unsafe { ring.submission().push(&recv) }
        .map_err(|_| io::Error::other("submission queue full"))?;

    let mut pending: Vec<usize> = Vec::with_capacity(NSEND);
    while h.tick() {
        let wait = h.tick_interval();
        let ts = Timespec::new()
            .sec(wait.as_secs())
            .nsec(wait.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut rearm = false;
        let mut returned = false;
        for cqe in ring.completion() {
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if ud != RECV {
                let slot = ud as usize;
                if res < 0 {
                    h.send_failed();
                }
                free.push(slot);
                continue;
            }
            if !cqueue::more(flags) {
                rearm = true;
            }
            if res < 0 {
                if -res == libc::ENOBUFS {
                    h.enobufs();
                } else {
                    return Err(io::Error::from_raw_os_error(-res));
                }
                continue;
            }
            let Some(bid) = cqueue::buffer_select(flags) else {
                continue;
            };
            let start = usize::from(bid) * SLOT;
            {
                let data = &bufs[start..start + res as usize];
                if let Ok(msg) = RecvMsgOut::parse(data, &rhdr) {
                    if let Some(total) = rxq_ovfl(msg.control_data()) {
                        h.rx_dropped(total);
                    }
                    let name_len = (msg.incoming_name_len() as usize).min(NAME_LEN);
                    let from = sockaddr_from_bytes(&msg.name_data()[..name_len]);
                    if msg.is_payload_truncated() {
                        h.truncated();
                    } else if let Some(from) = from {
                        match free.pop() {
                            Some(slot) => {
                                let s = &mut slots[slot];
                                match h.datagram(from, msg.payload_data(), &mut s.buf) {
                                    Some((to, len)) => {
                                        s.prepare(to, len);
                                        pending.push(slot);
                                    }
                                    None => free.push(slot),
                                }
                            }
                            None => h.send_failed(),
                        }
                    }
                }
            }
            let addr = bufs[start..].as_mut_ptr();
            br.push(bid, addr);
            returned = true;
        }
        if returned {
            br.publish();
        }
        // The handler's own datagrams, as long as send slots are free.
        while let Some(slot) = free.pop() {
            let s = &mut slots[slot];
            match h.poll_transmit(&mut s.buf) {
                Some((to, len)) => {
                    s.prepare(to, len);
                    pending.push(slot);
                }
                None => {
                    free.push(slot);
                    break;
                }
            }
        }
        let mut sq = ring.submission();
        for slot in pending.drain(..) {
            let e = opcode::SendMsg::new(fd, &raw const slots[slot].hdr)
                .build()
                .user_data(slot as u64);
            // SAFETY: the slot's buffer, address, iovec and header live in
            // `slots` (not moved, not reused) until its completion arrives.
            if unsafe { sq.push(&e) }.is_err() {
                h.send_failed();
                free.push(slot);
            }
        }
        if rearm {
            // SAFETY: as for the first receive.
            if unsafe { sq.push(&recv) }.is_err() {
                return Err(io::Error::other("submission queue full"));
            }
        }
    }
    // Let the kernel finish with our buffers before they are freed.
    drop(ring);
    drop(slots);
    drop(br);
    drop(bufs);
    Ok(())
}
