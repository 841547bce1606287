//! Tripline's resilience core: pure, synchronous building blocks with no sockets and no async
//! runtime. Time comes from a [`clock::Clock`] and randomness from a seeded [`rng::Rng`], so
//! every state transition can be driven exactly in tests.
//!
//! The proxy is the main user, but every type here is usable on its own inside a Rust service.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod balancer;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod clock;
pub mod limits;
pub mod outlier;
pub mod rate_budget;
pub mod rng;
pub mod window;
