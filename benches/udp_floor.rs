//! `udp-floor`: the edge's own I/O loop forwarding datagrams with no SIP
//! work, the floor the edge is measured against. Datagrams from the
//! backend go to the last client seen; all others go to the backend.
//!
//! `udp-floor LISTEN BACKEND [uring|epoll]` (runs until killed).

use std::net::SocketAddr;

use handover_io::{Handler, IoMode, bind_reuseport, run};

struct Forward {
    backend: SocketAddr,
    client: Option<SocketAddr>,
    count: u64,
    printed: u64,
    last: std::time::SystemTime,
}

impl Handler for Forward {
    fn datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let to = if from == self.backend {
            self.client?
        } else {
            self.client = Some(from);
            self.backend
        };
        self.count += 1;
        out[..data.len()].copy_from_slice(data);
        Some((to, data.len()))
    }
    fn rx_dropped(&mut self, _: u32) {}
    fn tick(&mut self) -> bool {
        // Report the datagrams forwarded (for benches/compare_edge.py).
        let now = std::time::SystemTime::now();
        if self.count != self.printed
            && now
                .duration_since(self.last)
                .unwrap_or_default()
                .as_millis()
                >= 200
        {
            println!("forwarded {}", self.count);
            self.printed = self.count;
            self.last = now;
        }
        true
    }
    fn send_failed(&mut self) {}
    fn enobufs(&mut self) {}
    fn truncated(&mut self) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: udp-floor LISTEN BACKEND [uring|epoll]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN is IP:PORT");
    let backend: SocketAddr = args[2].parse().expect("BACKEND is IP:PORT");
    let mode = match args.get(3).map(String::as_str) {
        Some("epoll") => IoMode::Epoll,
        Some("uring") => IoMode::Uring,
        _ => IoMode::Auto,
    };
    let sock = bind_reuseport(listen, 8 << 20, 8 << 20).expect("bind");
    println!("udp-floor on {listen} -> {backend} ({})", mode.as_str());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let mut h = Forward {
        backend,
        client: None,
        count: 0,
        printed: 0,
        last: std::time::SystemTime::now(),
    };
    run(&sock, mode, &mut h).expect("loop");
}
