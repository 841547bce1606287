//! The proxy library started from a config in the test's runtime, as one worker of
//! `tripline run` runs it (single-threaded, small writes deferred to the end of the event
//! loop's tick), with its housekeeping task; and its state read as the admin API shows it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tripline_config::{load, LoadOptions, Loaded, Source};
use tripline_proxy::Proxy;

use super::client::{empty, Conn, Proto};

/// The cluster [`super::config`]'s builders route to.
pub const CLUSTER: &str = "outbound|80||backend.local";

/// The housekeeping task's period (`Proxy::run_housekeeping`). Its first tick runs at once, at
/// [`InProcess::t0`], so tick `n` (from 1) runs at `(n - 1) × TICK`: breaker ticks and outlier
/// sweeps at every tick, client-connection sweeps every tick or every few (a tenth of the
/// request-head timeout, at most ten ticks), upstream idle sweeps every 50th, from 4.9 s.
pub const TICK: Duration = Duration::from_millis(100);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A running in-process proxy. Dropping it stops its housekeeping; its listeners and
/// connections go with the test's runtime.
pub struct InProcess {
    pub proxy: Proxy,
    /// The listener of the config's Gateway.
    pub addr: SocketAddr,
    /// Virtual time 0: the config was applied and housekeeping started.
    pub t0: Instant,
    housekeeping: JoinHandle<()>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.housekeeping.abort();
    }
}

/// Compiles a config; panics with the diagnostics if it is invalid.
pub fn loaded(yaml: &str) -> Loaded {
    let sources = [Source { name: "mesh.yaml".into(), text: yaml.to_owned() }];
    load(&sources, &LoadOptions::default()).unwrap_or_else(|e| panic!("invalid test config: {e:?}\n{yaml}"))
}

impl InProcess {
    /// Starts a proxy with the config `yaml(port)`, its Gateway on a free port of 127.0.0.1.
    pub async fn start(yaml: impl Fn(u16) -> String) -> InProcess {
        Self::start_with(Proxy::new(), yaml).await
    }

    /// [`InProcess::start`] for a proxy made by the test (an access log, other timeouts).
    pub async fn start_with(proxy: Proxy, yaml: impl Fn(u16) -> String) -> InProcess {
        tripline_proxy::net_io::defer_writes_on_this_thread();
        let mut taken = 0;
        let port = loop {
            let port = super::free_port();
            match proxy.apply(&loaded(&yaml(port))).await {
                Ok(()) => break port,
                // Another process took the port between the pick and the bind.
                Err(e) if e.contains("cannot bind") && taken < 10 => taken += 1,
                Err(e) => panic!("the proxy refused the config: {e}"),
            }
        };
        let t0 = Instant::now();
        let housekeeping = tokio::spawn(proxy.clone().run_housekeeping());
        InProcess { proxy, addr: SocketAddr::from(([127, 0, 0, 1], port)), t0, housekeeping }
    }

    /// Virtual time since [`InProcess::t0`].
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// `at` as virtual time since [`InProcess::t0`].
    pub fn time_of(&self, at: Instant) -> Duration {
        at.duration_since(self.t0)
    }

    /// Lets the runtime run until `at` after [`InProcess::t0`]: every timer due before then
    /// has fired and what it set off has run as far as it can without more time.
    pub async fn run_until(&self, at: Duration) {
        assert!(self.now() <= at, "already {:?}, past {at:?}", self.now());
        tokio::time::sleep_until(self.t0 + at).await;
    }

    /// A GET of `path` on a new `proto` connection: the response, its body still to read, and
    /// the connection, to keep while reading it.
    pub async fn open_get(&self, proto: Proto, path: &str) -> (Conn, Response<Incoming>) {
        let mut conn = Conn::connect(self.addr, proto).await.unwrap();
        let req = conn.request(Method::GET, "backend.local", path).body(empty()).unwrap();
        let resp = conn.send(req).await.unwrap_or_else(|e| panic!("GET {path} over {proto:?}: {e}"));
        (conn, resp)
    }

    /// [`CLUSTER`] as `/clusters` shows it.
    pub fn cluster(&self) -> Value {
        let applied = self.proxy.shared.applied.load();
        let all = tripline_proxy::admin::clusters_json(&applied.clusters);
        find(&all["clusters"], "name", CLUSTER)
    }

    /// Endpoint `ep` of [`CLUSTER`] as `/clusters` shows it.
    pub fn endpoint(&self, ep: SocketAddr) -> Value {
        find(&self.cluster()["endpoints"], "address", &ep.to_string())
    }

    /// `"healthy"`, `"ejected"` or `"probing"`: endpoint `ep`'s outlier state in `/clusters`.
    pub fn outlier_state(&self, ep: SocketAddr) -> String {
        self.endpoint(ep)["outlier"].as_str().unwrap_or("<none>").to_owned()
    }

    /// [`CLUSTER`] as `/breakers` shows it.
    pub fn breakers(&self) -> Value {
        let applied = self.proxy.shared.applied.load();
        let all = tripline_proxy::breakers_api::breakers_json(&applied.clusters, &applied.route_breakers);
        find(&all["clusters"], "cluster", CLUSTER)
    }

    /// Endpoint `ep` of [`CLUSTER`] as `/breakers` shows it.
    pub fn breaker_endpoint(&self, ep: SocketAddr) -> Value {
        find(&self.breakers()["endpoints"], "address", &ep.to_string())
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        let shared = &self.proxy.shared;
        let applied = shared.applied.load();
        tripline_proxy::metrics::render(
            &shared.global,
            &applied.clusters,
            &applied.route_breakers,
            &applied.rate_limiters,
            applied.authz.as_deref(),
            shared.tls_scrape(),
            shared.istio_metrics.get(),
        )
    }

    /// The sum of the samples of `name` in `/metrics` with every one of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        super::metrics::metric_sum(&self.metrics(), name, labels)
    }

    /// `tripline_local_responses_total` for `reason`.
    pub fn local_responses(&self, reason: &str) -> f64 {
        self.metric("tripline_local_responses_total", &[("reason", reason)])
    }
}

/// The element of the JSON array `list` whose `key` is `value`.
fn find(list: &Value, key: &str, value: &str) -> Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| e[key] == value))
        .unwrap_or_else(|| panic!("no {key} = {value} in {list}"))
        .clone()
}

/// A proxy writing its access log to a new file, and the file's path.
pub fn with_access_log(name: &str) -> (Proxy, PathBuf) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tripline-in-process-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let target = tripline_proxy::access_log::Target::File(path.clone());
    let log = tripline_proxy::access_log::AccessLog::open(&target).expect("access log");
    (Proxy::with_access_log(Some(log)), path)
}

/// The first `n` lines of the access log at `path`, parsed. The log's writer is a thread of its
/// own, so this waits for it in real time (blocking the runtime: virtual time stands still),
/// for 5 s at most.
pub fn access_log_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= n {
            return lines[..n]
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} access log lines of {n} after 5 s: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
