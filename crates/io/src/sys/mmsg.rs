//! epoll + `recvmmsg`/`sendmmsg`: the fallback where io_uring is refused
//! (old kernels, the default seccomp profiles of Docker and containerd),
//! and the default until benchmarks say otherwise (FACTS: io_uring ≈ mmsg
//! on loopback).

use std::io;
use std::os::fd::AsRawFd;

use socket2::{SockAddr, Socket};

use super::{CONTROL_LEN, DGRAM_MAX, Handler, rxq_ovfl, sockaddr_from_bytes};

const BATCH: usize = 64;

/// Runs the loop until the handler's `tick` says stop.
pub(crate) fn run(sock: &Socket, h: &mut impl Handler) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    // SAFETY: plain system call, no pointers.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let _close = CloseOnDrop(ep);
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: `ep` and `fd` are open; `ev` is a live epoll_event.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &raw mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }

    // Receive side: BATCH buffers, names and control areas. Large buffers
    // are zero-allocated, so untouched pages cost no memory.
    let mut rbufs = vec![0u8; BATCH * DGRAM_MAX];
    let mut names: Vec<libc::sockaddr_storage> =
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut ctrl = vec![[0u64; CONTROL_LEN / 8]; BATCH];
    let mut riov: Vec<libc::iovec> = rbufs
        .chunks_exact_mut(DGRAM_MAX)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: c.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; all-zero is valid and filled below.
    let mut rmsgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();

    let mut batch = SendBatch::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
    while h.tick() {
        own(fd, h, &mut batch);
        let wait = h.tick_interval().as_micros().div_ceil(1000).clamp(1, 1000) as libc::c_int;
        // SAFETY: `ep` is open; `events` has room for one event.
        let r = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 1, wait) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        loop {
            for i in 0..BATCH {
                let m = &mut rmsgs[i].msg_hdr;
                m.msg_name = (&raw mut names[i]).cast();
                m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_iov = &raw mut riov[i];
                m.msg_iovlen = 1;
                m.msg_control = ctrl[i].as_mut_ptr().cast();
                m.msg_controllen = CONTROL_LEN;
                m.msg_flags = 0;
                rmsgs[i].msg_len = 0;
            }
            // SAFETY: every header points at live buffers of the stated
            // lengths, owned by this frame and not otherwise borrowed.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    rmsgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            for i in 0..n {
                let hdr = &rmsgs[i].msg_hdr;
                let len = rmsgs[i].msg_len as usize;
                let truncated = hdr.msg_flags & libc::MSG_TRUNC != 0;
                let namelen = hdr.msg_namelen as usize;
                let ctl_len = hdr.msg_controllen;
                // SAFETY: names[i] is plain old data of at least `namelen` bytes.
                let name = unsafe {
                    std::slice::from_raw_parts(
                        (&raw const names[i]).cast::<u8>(),
                        namelen.min(size_of::<libc::sockaddr_storage>()),
                    )
                };
                // SAFETY: ctrl[i] is CONTROL_LEN initialised bytes.
                let control = unsafe {
                    std::slice::from_raw_parts(
                        ctrl[i].as_ptr().cast::<u8>(),
                        ctl_len.min(CONTROL_LEN),
                    )
                };
                if let Some(total) = rxq_ovfl(control) {
                    h.rx_dropped(total);
                }
                if truncated {
                    h.truncated();
                    continue;
                }
                let Some(from) = sockaddr_from_bytes(name) else {
                    continue;
                };
                let data = &rbufs[i * DGRAM_MAX..i * DGRAM_MAX + len];
                if let Some((to, slen)) = h.datagram(from, data, batch.next_buf()) {
                    batch.commit(to, slen);
                }
            }
            // The answers of this round (at most BATCH, one per datagram)
            // and the handler's own datagrams, in as few sendmmsg calls as
            // fit.
            own(fd, h, &mut batch);
            if n < BATCH {
                break;
            }
        }
    }
    Ok(())
}

/// Up to BATCH prepared outgoing datagrams: buffers, addresses, iovecs and
/// the headers that point at them (the vectors never grow, so the
/// pointers stay valid).
struct SendBatch {
    bufs: Vec<u8>,
    addrs: Vec<SockAddr>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    n: usize,
}

impl SendBatch {
    fn new() -> Self {
        Self {
            bufs: vec![0u8; BATCH * DGRAM_MAX],
            addrs: (0..BATCH)
                .map(|_| SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0))))
                .collect(),
            iov: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain old data; all-zero is valid and
            // filled by `commit`.
            msgs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            n: 0,
        }
    }

    fn full(&self) -> bool {
        self.n == BATCH
    }

    /// The buffer the next datagram is written into (not full).
    fn next_buf(&mut self) -> &mut [u8] {
        &mut self.bufs[self.n * DGRAM_MAX..(self.n + 1) * DGRAM_MAX]
    }

    /// Takes the datagram written into `next_buf` (`len` bytes, to `to`).
    fn commit(&mut self, to: std::net::SocketAddr, len: usize) {
        let i = self.n;
        self.addrs[i] = SockAddr::from(to);
        self.iov[i] = libc::iovec {
            iov_base: self.bufs[i * DGRAM_MAX..].as_mut_ptr().cast(),
            iov_len: len.min(DGRAM_MAX),
        };
        let m = &mut self.msgs[i].msg_hdr;
        m.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
        m.msg_namelen = self.addrs[i].len();
        m.msg_iov = &raw mut self.iov[i];
        m.msg_iovlen = 1;
        m.msg_control = std::ptr::null_mut();
        m.msg_controllen = 0;
        self.n += 1;
    }

    fn flush(&mut self, fd: libc::c_int, h: &mut impl Handler) {
        send_all(fd, &mut self.msgs[..self.n], h);
        self.n = 0;
    }
}

/// Adds the handler's own datagrams to `batch` and sends everything,
/// a full batch at a time.
fn own(fd: libc::c_int, h: &mut impl Handler, batch: &mut SendBatch) {
    loop {
        if batch.full() {
            batch.flush(fd, h);
        }
        match h.poll_transmit(batch.next_buf()) {
            Some((to, len)) => batch.commit(to, len),
            None => break,
        }
    }
    if batch.n > 0 {
        batch.flush(fd, h);
    }
}

/// Sends every prepared message, waiting briefly for room when the socket
/// buffer is full; what still cannot go is counted as failed.
fn send_all(fd: libc::c_int, msgs: &mut [libc::mmsghdr], h: &mut impl Handler) {
    let mut off = 0;
    let mut waits = 0;
    while off < msgs.len() {
        // SAFETY: each header points at buffers, addresses and iovecs that
        // live in the caller's frame for the duration of the call.
        let r =
            unsafe { libc::sendmmsg(fd, msgs[off..].as_mut_ptr(), (msgs.len() - off) as u32, 0) };
        if r > 0 {
            off += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock if waits < 10 => {
                waits += 1;
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&raw mut p, 1, 10) };
            }
            _ => {
                // Skip the message the kernel refused (e.g. unreachable).
                h.send_failed();
                off += 1;
            }
        }
    }
}

struct CloseOnDrop(libc::c_int);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}
