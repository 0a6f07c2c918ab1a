//! UDP socket loops for every part of handover that moves datagrams in
//! bulk: the edge's data plane, the load generator, the UDP floor
//! benchmark. One `SO_REUSEPORT` socket and one loop per thread, io_uring
//! or epoll + recvmmsg; the loop calls a [`Handler`] per datagram and asks
//! it for datagrams of its own. quinn-udp is the model: the platform I/O
//! here, what to do with each datagram in the caller's sans-IO code.
//!
//! This crate holds the only `unsafe` code of handover (`sys`: system
//! calls, io_uring rings, raw message headers).
#![deny(unsafe_code)]

#[expect(
    unsafe_code,
    reason = "system calls, io_uring rings and raw message headers"
)]
mod sys;

pub use sys::{
    Handler, bind_reuseport, bind_reuseport_tcp, bind_udp, free_bytes, raise_fd_limit,
    receive_drops, stop_with_parent,
};

/// How a loop does I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when the kernel and seccomp allow it, else epoll.
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Epoll,
}

impl IoMode {
    /// Name as in the configuration and the `io_mode` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Epoll => "epoll",
        }
    }
}

/// Whether this kernel (and seccomp profile) lets us set up io_uring, and
/// why not.
pub fn uring_available() -> std::io::Result<()> {
    sys::uring::available()
}

/// Runs one thread's loop over `sock` in `mode` (`Auto` picks io_uring
/// when available) until the handler's `tick` returns false.
pub fn run(sock: &socket2::Socket, mode: IoMode, h: &mut impl Handler) -> std::io::Result<()> {
    match mode {
        IoMode::Epoll => sys::mmsg::run(sock, h),
        IoMode::Uring => sys::uring::run(sock, h),
        IoMode::Auto => match sys::uring::available() {
            Ok(()) => sys::uring::run(sock, h),
            Err(_) => sys::mmsg::run(sock, h),
        },
    }
}
