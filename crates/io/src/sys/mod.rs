//! Platform UDP I/O for the edge: the only module of handover with
//! `unsafe` code (system calls, io_uring rings, raw message headers). Each
//! backend runs one thread's loop over one `SO_REUSEPORT` socket and calls a
//! [`Handler`] per datagram; the kernel spreads flows over the sockets by
//! their 4-tuple, so one flow always lands on one thread and nothing is
//! reordered inside the edge.
//!
//! - [`mmsg`]: epoll + `recvmmsg`/`sendmmsg`, batches of 64.
//! - [`uring`]: io_uring with a multishot `RecvMsg` on a provided-buffer
//!   ring and `SendMsg`s submitted per completion round.

pub(crate) mod mmsg;
pub(crate) mod uring;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Largest datagram handled (the UDP maximum plus slack).
pub(crate) const DGRAM_MAX: usize = 65_536;

/// Room for the control messages we ask for (`SO_RXQ_OVFL`).
pub(crate) const CONTROL_LEN: usize = 64;

/// What a loop calls.
pub trait Handler {
    /// One datagram in. Writes what to send into `out` and returns the
    /// destination and length, or `None` to send nothing.
    fn datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)>;
    /// The kernel's cumulative count of datagrams it dropped on this
    /// socket because the receive buffer was full (`SO_RXQ_OVFL`).
    fn rx_dropped(&mut self, total: u32);
    /// Called at least every 100 ms; returning false ends the loop.
    fn tick(&mut self) -> bool;
    /// A send failed or could not be queued.
    fn send_failed(&mut self);
    /// io_uring's provided buffers ran out (`ENOBUFS`); the receive is re-armed.
    fn enobufs(&mut self);
    /// A datagram larger than the buffers was cut.
    fn truncated(&mut self);
    /// How long the loop may wait for a datagram before calling `tick`
    /// again (rounded up to whole milliseconds under epoll).
    fn tick_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }
    /// A datagram of the handler's own, not an answer to one received (a
    /// load generator's new calls and timer resends), written into `out`.
    /// Polled after each `tick` and each round of received datagrams until
    /// it returns `None` or no send buffer is free (then the rest waits for
    /// the next round). The edge's are the messages of a worker's bundle
    /// after its first.
    fn poll_transmit(&mut self, _out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        None
    }
}

/// Opens one UDP socket of a `SO_REUSEPORT` group on `addr`.
pub fn bind_reuseport(addr: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // The kernel caps these at net.core.{r,w}mem_max; the effective size is logged.
    s.set_recv_buffer_size(rcvbuf)?;
    s.set_send_buffer_size(sndbuf)?;
    let one: libc::c_int = 1;
    // SAFETY: `s` is an open socket; the option value is a live c_int whose
    // size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Opens a UDP socket of its own on `addr` (no `SO_REUSEPORT`: a second
/// process on the address is an error, not a silent share), non-blocking,
/// with the buffers asked for (the kernel caps them at
/// net.core.{r,w}mem_max; read the effective sizes back to log them).
pub fn bind_udp(addr: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_recv_buffer_size(rcvbuf)?;
    s.set_send_buffer_size(sndbuf)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Datagrams the kernel dropped at `fd` since it was opened, its receive
/// buffer full (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`; a counter that wraps at
/// 2^32). For sockets read without `SO_RXQ_OVFL` ancillary data.
pub fn receive_drops(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut info = [0u32; VARS];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is an open socket; `info` is a live, writable array
    // whose size is passed in `len` (the kernel writes at most that much).
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < size_of_val(&info) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_MEMINFO without a drop count",
        ));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// Makes the process `cmd` starts get `sig` when the thread that starts
/// it ends (Linux `PR_SET_PDEATHSIG`, kept across exec): `handover up`'s
/// edge and workers stop with it even when it is killed by SIGKILL, which
/// leaves no chance to stop them. A parent already gone when the child
/// asks (the race between fork and prctl) is caught by its parent's pid.
pub fn stop_with_parent(cmd: &mut std::process::Command, sig: libc::c_int) {
    use std::os::unix::process::CommandExt as _;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let arg = libc::c_ulong::try_from(sig).unwrap_or(0);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid, raise); it
    // allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, arg) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(sig);
            }
            Ok(())
        });
    }
}

/// A listening TCP socket of a `SO_REUSEPORT` group on `addr` (one per
/// thread: the kernel spreads new connections over the group), non-blocking.
pub fn bind_reuseport_tcp(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Raises this process's soft limit of open files to its hard limit (a
/// stream listener holds one per connection); returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a live, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: `l` is a live, initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

/// Bytes an unprivileged process may still write on the file system that
/// holds `path` (statvfs: available blocks times the fragment size).
pub fn free_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `s` a live, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Reads a `sockaddr_in`/`sockaddr_in6` from raw bytes.
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Finds `SO_RXQ_OVFL` in a control-message buffer (Linux `cmsghdr`
/// layout: `size_t len; int level; int type;` then data, 8-byte aligned).
pub(crate) fn rxq_ovfl(control: &[u8]) -> Option<u32> {
    const HDR: usize = size_of::<usize>() + 8;
    let mut off = 0;
    while off + HDR <= control.len() {
        let len = usize::from_ne_bytes(control[off..off + size_of::<usize>()].try_into().ok()?);
        let at = off + size_of::<usize>();
        let level = i32::from_ne_bytes(control[at..at + 4].try_into().ok()?);
        let ty = i32::from_ne_bytes(control[at + 4..at + 8].try_into().ok()?);
        if len < HDR || off + len > control.len() {
            return None;
        }
        if level == libc::SOL_SOCKET && ty == libc::SO_RXQ_OVFL && len >= HDR + 4 {
            return Some(u32::from_ne_bytes(
                control[off + HDR..off + HDR + 4].try_into().ok()?,
            ));
        }
        off += (len + 7) & !7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_reads_the_file_system_and_names_a_missing_path() {
        let tmp = std::env::temp_dir();
        assert!(free_bytes(&tmp).unwrap() > 0, "room in {}", tmp.display());
        let e = free_bytes(std::path::Path::new("/no/such/dir")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_full_receive_buffer_counts_its_drops_and_a_second_bind_is_refused() {
        use std::os::fd::AsFd as _;
        // The smallest buffer the kernel grants (it doubles and floors the
        // request), filled by a burst nobody reads.
        let rx = bind_udp("127.0.0.1:0".parse().unwrap(), 1, 1 << 20).unwrap();
        let at = rx.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(receive_drops(rx.as_fd()).unwrap(), 0);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[7u8; 1000], at).unwrap();
        }
        let drops = receive_drops(rx.as_fd()).unwrap();
        assert!(drops > 0 && drops < 200, "{drops} of 200 dropped");
        // Without SO_REUSEPORT the address is this socket's alone.
        let e = bind_udp(at, 1 << 16, 1 << 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn sockaddr_bytes() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5060u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(
            sockaddr_from_bytes(&v4),
            Some("192.0.2.7:5060".parse().unwrap())
        );
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&5070u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            sockaddr_from_bytes(&v6),
            Some("[2001:db8::1]:5070".parse().unwrap())
        );
        assert_eq!(sockaddr_from_bytes(&v6[..10]), None);
    }

    #[test]
    fn cmsg_parse() {
        let mut c = vec![0u8; 32];
        c[..8].copy_from_slice(&20usize.to_ne_bytes());
        c[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c[12..16].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        c[16..20].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(rxq_ovfl(&c), Some(7));
        assert_eq!(rxq_ovfl(&c[..10]), None);
        assert_eq!(rxq_ovfl(&[]), None);
    }
}
