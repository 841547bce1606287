//! Test support for running the proxy library in-process under tokio's paused time
//! (`#[tokio::test(start_paused = true)]`): the proxy, its upstreams and its clients on
//! loopback sockets in the test's one runtime, whose clock the test moves.
//!
//! The proxy reads all its time from that clock (`resilience::now`, `tokio::time::Instant`),
//! so timeouts, open durations, ejections and sweeps happen at exact virtual times, and a test
//! of a 5 s sweep takes milliseconds. Loopback delivers a write to the peer's socket at once,
//! so the runtime always sees bytes in flight as ready work and advances the clock only when
//! every task waits on a timer: nothing here races the clock.
//!
//! The upstreams, the client and the config builders are the end-to-end suite's own
//! (`crates/tripline/tests/e2e/support`), included by path so that both suites drive the same
//! servers with the same requests; their delays are tokio sleeps and their times the runtime's
//! clock, so they are virtual here. [`in_process`] is what this suite adds: the proxy started
//! from a config in this runtime, with its housekeeping, and its state as the admin API shows it.

// Each test binary uses a part of this.
#![allow(dead_code, unused_imports)]

#[path = "../../../tripline/tests/e2e/support/client.rs"]
pub mod client;
#[path = "../../../tripline/tests/e2e/support/config.rs"]
pub mod config;
#[path = "../../../tripline/tests/e2e/support/faulty.rs"]
pub mod faulty;
pub mod in_process;
#[path = "../../../tripline/tests/e2e/support/metrics.rs"]
pub mod metrics;
#[path = "../../../tripline/tests/e2e/support/upstream.rs"]
pub mod upstream;

pub use client::{Conn, Proto, Resp};
pub use faulty::{Fault, Faulty};
pub use in_process::{InProcess, CLUSTER};
pub use upstream::Upstream;

/// A port on 127.0.0.1 where nothing listened a moment ago (for an address that refuses
/// connections; the proxy's own listener retries on a taken port, see [`InProcess::start`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What the socket itself says of a connection, asked with a raw non-blocking `peek`: tokio's
/// `try_read` answers `WouldBlock` from its cached readiness without a system call, so it cannot
/// tell "nothing yet" from "the event loop has not looked yet".
#[derive(Debug, PartialEq, Eq)]
pub enum Socket {
    /// Open, nothing to read.
    Quiet,
    /// This many bytes are waiting (up to 64 KiB looked at).
    Unread(usize),
    /// The peer closed it (or it failed).
    Closed,
}

pub fn socket_state(s: &tokio::net::TcpStream) -> Socket {
    use std::os::fd::AsFd;
    // A duplicate of the descriptor: the same socket, non-blocking as tokio made it.
    let socket = std::net::TcpStream::from(s.as_fd().try_clone_to_owned().unwrap());
    match socket.peek(&mut [0u8; 64 * 1024]) {
        Ok(0) => Socket::Closed,
        Ok(n) => Socket::Unread(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Socket::Quiet,
        Err(_) => Socket::Closed,
    }
}
