//! End-to-end tests: the real `tripline` binary between a real client and real upstream
//! servers, all on loopback. Each test starts its own upstreams and its own proxy process on
//! free ports, so tests run in parallel.
//!
//! Run: `cargo test -p tripline --test e2e`. Set `TRIPLINE_E2E_KEEP=1` to keep the proxy's
//! config and logs (they are always kept, and their tail printed, when a test fails).

mod support;

mod admin;
mod authz;
mod balancing;
mod cli;
mod client_faults;
mod dashboard;
mod grpc;
mod h2_server;
mod harness;
mod http;
mod kubernetes;
mod lifecycle;
mod limits;
mod mesh_example;
mod observability;
mod peer_authn;
mod reload;
mod resilience;
mod routing;
mod service_profile;
mod sidecar;
mod tcp;
mod tls;
mod traces;
mod traffic;
mod upgrade;
mod validate;
mod workers;
