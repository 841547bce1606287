//! The peers: Envoy, nginx and HAProxy, each configured to the lab's policy as closely as it
//! can say it, and found where `../shared/bench/setup-peers.sh` installs them. A peer that is
//! not installed is reported, not an error.
//!
//! What each can say of the policy (the lab's report is about what they then do):
//!
//! | | Envoy | nginx | HAProxy |
//! |---|---|---|---|
//! | retries (2, per-try timeout 1 s) | `retry_policy` | `proxy_next_upstream_tries 3` | `retries 2`, `retry-on` |
//! | ejection after 5 consecutive 5xx | `outlier_detection`, base 2 s, max 6 s, cap 30% | `max_fails=5 fail_timeout=2s` (no cap, no growth) | `observe layer7 error-limit 5 on-error mark-down`, back after two passing health checks 1 s apart (no cap, no growth) |
//! | retry budget | `retry_budget` 20% of active requests | none | none |
//! | breaker on the failure ratio | none | none | none |
//!
//! HAProxy cannot do both halves of the policy at once: with `retry-on 500`, `observe
//! layer7` does not count the 500s it retried, and never marks the server down (checked by
//! hand against a server answering only 500: with `retry-on 500` every client got a 200 and
//! the server stayed up; without it, the server was marked down after 5). The lab keeps the
//! retries, as the policy's first line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Policy;

/// A proxy the lab can run a scenario through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tripline,
    Envoy,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn parse(name: &str) -> Result<Kind, String> {
        match name {
            "tripline" => Ok(Kind::Tripline),
            "envoy" => Ok(Kind::Envoy),
            "nginx" => Ok(Kind::Nginx),
            "haproxy" => Ok(Kind::Haproxy),
            _ => Err(format!("no peer `{name}`; the peers are tripline, envoy, nginx, haproxy")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tripline => "tripline",
            Kind::Envoy => "envoy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// The peer's binary: `$ENVOY` / `$NGINX` / `$HAPROXY`, else on `PATH`, else where
    /// setup-peers.sh puts it. `None` when it is not installed (Tripline is the lab's own).
    pub fn find(self) -> Option<PathBuf> {
        let (var, name, installed): (&str, &str, &[&str]) = match self {
            Kind::Tripline => return None,
            Kind::Envoy => ("ENVOY", "envoy", &["/opt/peers-venv/bin/envoy"]),
            Kind::Nginx => ("NGINX", "nginx", &["/usr/sbin/nginx"]),
            Kind::Haproxy => ("HAPROXY", "haproxy", &["/usr/sbin/haproxy"]),
        };
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p));
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path.into_iter().chain(installed.iter().map(PathBuf::from)).find(|p| p.is_file())
    }

    /// The config file's name and text, and the arguments to run the peer with it.
    pub fn config(
        self,
        p: &Policy,
        listen: SocketAddr,
        upstreams: &[SocketAddr],
        dir: &Path,
    ) -> (String, String, Vec<String>) {
        let file = |n: &str| dir.join(n).display().to_string();
        match self {
            Kind::Tripline => unreachable!("Tripline's config is config::Policy::yaml"),
            Kind::Envoy => {
                let name = "envoy.yaml";
                let args = ["-c", &file(name), "--concurrency", "2", "--disable-hot-restart", "-l", "error"];
                (name.into(), envoy(p, listen, upstreams), args.map(String::from).to_vec())
            }
            Kind::Nginx => {
                let name = "nginx.conf";
                let args = ["-p", &dir.display().to_string(), "-c", &file(name), "-e", "stderr"];
                (name.into(), nginx(p, listen, upstreams, dir), args.map(String::from).to_vec())
            }
            Kind::Haproxy => {
                let name = "haproxy.cfg";
                let args = ["-f", &file(name), "-db"];
                (name.into(), haproxy(p, listen, upstreams), args.map(String::from).to_vec())
            }
        }
    }
}

fn ms(d: std::time::Duration) -> u128 {
    d.as_millis()
}

/// Seconds as protobuf's JSON wants a duration: `2.000s`.
fn pb(d: std::time::Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Whole seconds, rounded up: nginx's `fail_timeout` takes no milliseconds.
fn secs(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

fn envoy(p: &Policy, listen: SocketAddr, upstreams: &[SocketAddr]) -> String {
    let mut eps = String::new();
    for u in upstreams {
        let _ = writeln!(
            eps,
            "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
            u.ip(),
            u.port()
        );
    }
    format!(
        "static_resources:
  listeners:
  - name: lab
    address: {{socket_address: {{address: {ip}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: lab
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{prefix: \"/\"}}
                route:
                  cluster: lab
                  timeout: 3s
                  retry_policy: {{retry_on: \"5xx,reset,connect-failure\", num_retries: 2, per_try_timeout: 1s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: lab
    type: STATIC
    connect_timeout: 1s
    lb_policy: LEAST_REQUEST
    outlier_detection:
      consecutive_5xx: 5
      interval: 1s
      base_ejection_time: {base}
      max_ejection_time: {max}
      max_ejection_percent: {pct}
    circuit_breakers:
      thresholds:
      - retry_budget: {{budget_percent: {{value: {budget}}}, min_retry_concurrency: 3}}
    load_assignment:
      cluster_name: lab
      endpoints:
      - lb_endpoints:
{eps}",
        ip = listen.ip(),
        port = listen.port(),
        base = pb(p.base_ejection),
        max = pb(p.max_ejection),
        pct = p.max_ejection_percent,
        budget = p.retry_ratio * 100.0,
    )
}

fn nginx(p: &Policy, listen: SocketAddr, upstreams: &[SocketAddr], dir: &Path) -> String {
    let mut servers = String::new();
    for u in upstreams {
        let _ = writeln!(servers, "        server {u} max_fails=5 fail_timeout={}s;", secs(p.base_ejection));
    }
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream lab {{
        zone lab 64k;
        least_conn;
{servers}        keepalive 256;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://lab;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 1s;
            proxy_read_timeout 1s;
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 3s;
        }}
    }}
}}
"
    )
}

fn haproxy(p: &Policy, listen: SocketAddr, upstreams: &[SocketAddr]) -> String {
    let mut servers = String::new();
    for (i, u) in upstreams.iter().enumerate() {
        let _ = writeln!(servers, "    server s{i} {u}");
    }
    format!(
        "global
    nbthread 2
    maxconn 8000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 1s
    timeout http-keep-alive 30s
    option http-keep-alive
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 500 502 503 504

frontend lab
    bind {listen}
    default_backend lab

backend lab
    balance leastconn
    http-reuse always
    default-server check inter {inter}ms fastinter {inter}ms rise 2 fall 1 observe layer7 error-limit 5 on-error mark-down
{servers}",
        // Marked down, a server is back after two passing checks (TCP connects, which a
        // failing upstream passes): about the base ejection time.
        inter = ms(p.base_ejection / 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::POLICY;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_peers() {
        for k in [Kind::Tripline, Kind::Envoy, Kind::Nginx, Kind::Haproxy] {
            assert_eq!(Kind::parse(k.name()), Ok(k));
        }
        assert!(Kind::parse("traefik").unwrap_err().contains("envoy, nginx, haproxy"));
    }

    #[test]
    fn each_peer_config_names_every_upstream_and_the_policy() {
        let ups: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect();
        let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let dir = Path::new("/tmp/lab");
        for (k, policy_words) in [
            (
                Kind::Envoy,
                &["consecutive_5xx: 5", "max_ejection_percent: 30", "budget_percent: {value: 20}"][..],
            ),
            (Kind::Nginx, &["max_fails=5 fail_timeout=2s", "proxy_next_upstream_tries 3"][..]),
            (Kind::Haproxy, &["error-limit 5 on-error mark-down", "retries 2"][..]),
        ] {
            let (_, text, _) = k.config(&POLICY, listen, &ups, dir);
            for u in &ups {
                assert!(text.contains(&u.port().to_string()), "{k:?} lacks {u}:\n{text}");
            }
            for w in policy_words {
                assert!(text.contains(w), "{k:?} lacks {w}:\n{text}");
            }
        }
    }
}
