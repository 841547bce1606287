//! The compiled runtime plan: what the data plane needs, with every default applied, every
//! reference resolved to an index and every duration parsed.
//!
//! The plan is plain data (no sockets, no atomics). The proxy turns it into live objects and
//! keeps per-endpoint state across reloads by matching endpoints on `(cluster name, address)`.
//! Keeping the plan free of runtime state is what lets `tripline validate` and `tripline run`
//! share every check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use crate::route_features::{
    AbortWith, Answer, CorsPlan, FaultDelayPlan, FaultPlan, Fraction, HeaderOps, HeaderPlan, MirrorPlan,
    RedirectPlan, RedirectPort, RewritePlan, RouteFeatures,
};

/// Index of a cluster in [`Plan::clusters`].
pub type ClusterId = usize;

/// Everything the data plane runs, derived from one set of config files.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub listeners: Vec<ListenerPlan>,
    /// One cluster per (host, port, subset) that a route or the mesh listener refers to.
    pub clusters: Vec<ClusterPlan>,
    /// The AuthorizationPolicies that apply to this proxy's workload, for every listener.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<crate::authz::AuthzPolicyPlan>,
}

impl Plan {
    pub fn cluster_by_name(&self, name: &str) -> Option<ClusterId> {
        self.clusters.iter().position(|c| c.name == name)
    }
}

/// A socket Tripline accepts on: one `Gateway` server port, the mesh (sidecar outbound)
/// listener for VirtualServices that name no gateway, or a sidecar inbound port (`Sidecar`
/// `ingress`).
#[derive(Debug, Clone, Serialize)]
pub struct ListenerPlan {
    /// `<gateway name>/<port name>`, `mesh` or `inbound|<port>`.
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    /// HTTP listeners: virtual hosts in match order (most specific domain first).
    pub virtual_hosts: Vec<VirtualHostPlan>,
    /// TCP listeners: the routes in match order (first match wins; on a passthrough listener
    /// the route naming the SNI most specifically, the first of equals).
    pub tcp_routes: Vec<TcpRoutePlan>,
    /// Whether the client's `x-forwarded-proto` and `x-request-id` are passed on (Envoy's
    /// `use_remote_address: false` / `preserve_external_request_id`): the mesh listener's
    /// client is the sidecar's own application, and a Gateway trusts its clients when
    /// `gatewayTopology.numTrustedProxies` says proxies stand in front of it. A Gateway at the
    /// edge sets the first and gives every request a fresh id.
    pub trust_client: bool,
    /// `gatewayTopology.numTrustedProxies`: how many proxies in front of a Gateway append to
    /// `x-forwarded-for`, so the client is the address that many entries from its end.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub trusted_proxies: u32,
    /// TLS termination (`Gateway.servers[].tls`, protocol `HTTPS`, or `TLS` with a mode that
    /// terminates): the servers sharing this port, in the order written (no two name the same
    /// SNI host). The client's SNI chooses: the server naming it exactly, else the longest
    /// `*.suffix` covering it, else `*`. Empty: plaintext.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsServerPlan>,
    /// `tls.httpsRedirect` on a plaintext HTTP server: every request is answered with a `301`
    /// to the same URL with `https`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// `tls.mode: PASSTHROUGH` (protocol `TLS` or `HTTPS`): TLS is not terminated; the SNI of
    /// the client's ClientHello (peeked, not read) picks one of `tcp_routes` (compiled from
    /// VirtualService `tls` routes, each with its `sni_hosts`), and the still-encrypted bytes
    /// are proxied as TCP. Such a listener has `protocol: Tcp` and no `tls`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
    /// A sidecar inbound listener whose mutual TLS is PERMISSIVE: a connection that does not
    /// begin with a TLS handshake record is served in plaintext; one that does is terminated
    /// by `tls` (see [`crate::peer_authn`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plaintext_too: bool,
    /// A sidecar inbound listener ([`crate::sidecar`]): its mutual TLS mode and the
    /// PeerAuthentication that decided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<crate::peer_authn::Decided>,
    /// The mesh listener, which `tripline iptables` redirects the application's outbound TCP
    /// to: a redirected connection whose original destination is one of these service
    /// addresses (a ServiceEntry's `addresses`, a Kubernetes Service's cluster IP, with each
    /// HTTP or TCP port) is routed as HTTP, or proxied to the TCP port's cluster; one to any
    /// other destination is passed through to it untouched (Istio's `ALLOW_ANY`). `None` on
    /// other listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intercepted: Option<Vec<ServiceAddress>>,
    /// A sidecar inbound port reached through the inbound capture listener
    /// (`--inbound-capture`, where `tripline iptables` redirects inbound TCP): not bound itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub captured: bool,
    /// The inbound capture listener: each connection is served by the captured listener of its
    /// original destination port, or, for a port no Sidecar ingress has, passed through to
    /// where it was going.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inbound_capture: bool,
}

impl ListenerPlan {
    /// A listener with no routes, TLS or sidecar role yet; its clients' headers believed.
    pub fn new(name: impl Into<String>, bind: SocketAddr, protocol: ListenerProtocol) -> ListenerPlan {
        ListenerPlan {
            name: name.into(),
            bind,
            protocol,
            virtual_hosts: Vec::new(),
            tcp_routes: Vec::new(),
            trust_client: true,
            trusted_proxies: 0,
            tls: Vec::new(),
            https_redirect: false,
            passthrough: false,
            plaintext_too: false,
            mtls: None,
            intercepted: None,
            captured: false,
            inbound_capture: false,
        }
    }
}

/// A service's virtual address and one of its HTTP or TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServiceAddress {
    pub block: Cidr,
    pub port: u16,
    /// A TCP port: the cluster its connections are proxied to. `None`: an HTTP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ClusterId>,
    /// A ServiceEntry with `resolution: NONE`: its connections are passed through to where
    /// they were going, as to a destination no service has.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
}

impl ServiceAddress {
    pub fn takes(&self, to: SocketAddr) -> bool {
        self.port == to.port() && self.block.contains(to.ip())
    }
}

/// One Gateway server's TLS settings: how a connection whose SNI matches `hosts` is
/// terminated. The files are read (and re-read when they change) by the proxy; the compiler
/// checked that each holds what it should.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsServerPlan {
    /// `<gateway>/<server port name>`, for logs and metrics.
    pub name: String,
    /// SNI names this server answers: exact, `*.suffix`, or `*` (also a client sending no SNI).
    pub hosts: Vec<String>,
    pub mode: DownstreamTlsMode,
    /// PEM: the certificate chain (leaf first) and its private key.
    pub certificate: std::path::PathBuf,
    pub private_key: std::path::PathBuf,
    /// PEM: the CAs client certificates must chain to (`MUTUAL`, `OPTIONAL_MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<std::path::PathBuf>,
    /// A client certificate must name one of these (DNS, URI or IP SAN); empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    pub versions: TlsVersions,
    /// Istio/Envoy cipher suite names (TLS 1.2 only, as in Envoy), validated; empty: rustls's
    /// defaults.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DownstreamTlsMode {
    /// Server certificate only.
    Simple,
    /// A client certificate is required and verified.
    Mutual,
    /// A client certificate is verified if the client sends one.
    OptionalMutual,
}

/// `minProtocolVersion` / `maxProtocolVersion`. rustls speaks TLS 1.2 and 1.3; `TLSV1_0` and
/// `TLSV1_1` are refused by the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

impl Default for TlsVersions {
    fn default() -> Self {
        TlsVersions { tls12: true, tls13: true }
    }
}

/// How a cluster's connections to its endpoints are encrypted
/// (`DestinationRule.trafficPolicy.tls`, per subset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTlsPlan {
    /// `MUTUAL` when a client certificate is set, else `SIMPLE`.
    pub mutual: bool,
    /// The SNI sent; `None`: the cluster's host name (Istio sends none; a hostname is what
    /// an upstream behind a TLS load balancer needs, and what `subjectAltNames` default to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The server certificate must name one of these (DNS, URI or IP SAN); empty: the SNI
    /// (or the host name) is checked as a DNS name, as HTTPS clients do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// PEM: the CAs the server's chain must end at; `None`: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<std::path::PathBuf>,
    /// PEM: the client certificate chain and key (`MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<std::path::PathBuf>,
    /// No verification of the server's certificate at all (the compiler warns).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// `ISTIO_MUTUAL` without `subjectAltNames`: the server's certificate must carry a SPIFFE
    /// ID of this trust domain (the workload's own) instead of naming the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and h2c with prior knowledge on the same port (detected per connection).
    Http,
    /// HTTP/2 only (h2c prior knowledge); `HTTP2` and `GRPC` in Istio.
    Http2,
    /// Raw bytes, proxied both ways.
    Tcp,
}

/// A group of routes selected by the request's Host / `:authority`.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHostPlan {
    pub domains: Vec<HostMatch>,
    pub routes: Vec<RoutePlan>,
}

/// How a VirtualService host matches a request authority (port stripped, lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum HostMatch {
    /// `*`
    Any,
    /// `api.example.com`
    Exact(String),
    /// `*.example.com` stored as `.example.com`
    Suffix(String),
}

impl HostMatch {
    pub fn matches(&self, authority_host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(authority_host),
            HostMatch::Suffix(s) => {
                authority_host.len() > s.len()
                    && authority_host[authority_host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// One `VirtualService.http[]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct RoutePlan {
    /// `<virtual service>/http[<index>]` or the entry's `name` when it has one.
    pub name: String,
    /// Any of these matches selects the route; empty means every request.
    pub matches: Vec<RequestMatch>,
    pub destinations: Vec<WeightedCluster>,
    /// Whole-request timeout; `None` means no timeout (Istio's default).
    #[serde(serialize_with = "crate::model::ser_opt_duration")]
    pub timeout: Option<Duration>,
    /// Retry policy (Istio's default when the route has no `retries`).
    pub retry: RetryPlan,
    /// A breaker for the route itself (all its traffic, whatever the destination), from a
    /// ResiliencePolicy whose target is this route.
    #[serde(serialize_with = "ser_debug")]
    pub breaker: Option<tripline_core::breaker::BreakerConfig>,
    /// Name of the ResiliencePolicy that targets this route, if any.
    pub policy: Option<String>,
    /// What the route does besides forwarding (headers, rewrite, redirect, direct response,
    /// fault). A route with `answer` has no destinations.
    #[serde(skip_serializing_if = "RouteFeatures::is_empty")]
    pub features: RouteFeatures,
}

/// All fields present must match (Istio semantics within one `match` entry).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// Header names are lower-cased.
    pub headers: Vec<(String, StringMatch)>,
    /// Headers that must not match (`withoutHeaders`): absent, or with a value the match
    /// refuses. An empty match (`{}`) means the header must be absent.
    pub without_headers: Vec<(String, StringMatch)>,
    /// Query parameters (`queryParams`), matched against their percent-decoded values; an
    /// empty `exact` or an empty match means the parameter is present (Istio's reading).
    pub query_params: Vec<(String, StringMatch)>,
    /// `ignoreUriCase`: `uri`'s `exact` and `prefix` compare ASCII case-insensitively (a regex
    /// is unchanged, as in Istio).
    pub ignore_uri_case: bool,
    /// `scheme`: the request's scheme (`:scheme` over HTTP/2, an absolute-form target's over
    /// HTTP/1.1, else `https` on a listener that terminates TLS and `http` on a plaintext one).
    pub scheme: Option<StringMatch>,
    /// `port`: the port the request was addressed to. On a Gateway listener that is the
    /// server's port, checked when the route is attached to it (the entry is dropped there
    /// when it differs); on the mesh listener it is the authority's port (80 when it names
    /// none), checked per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `gateways`, `sourceLabels`, `sourceNamespace`: checked when the route is attached to a
    /// listener (against the listener's gateway and the workload given on the command line),
    /// and cleared; the entry is dropped where they do not hold.
    #[serde(skip_serializing_if = "MatchScope::is_empty")]
    pub scope: MatchScope,
}

/// The conditions of a match entry that do not depend on the request but on where the route
/// runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MatchScope {
    /// Gateway names (`<namespace>/<name>` or `<name>`; `mesh` for the mesh listener).
    pub gateways: Vec<String>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

impl MatchScope {
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty() && self.source_labels.is_empty() && self.source_namespace.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] regex::Regex),
}

fn ser_regex<S: serde::Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A route destination. Weights of a route's destinations sum to a positive number.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    pub cluster: ClusterId,
    pub weight: u32,
    /// The destination's own `headers` (applied before the route's, which win on `set`).
    #[serde(skip_serializing_if = "HeaderPlan::is_empty")]
    pub headers: HeaderPlan,
}

/// A VirtualService `tcp` route, or a `tls` route on a passthrough listener (a `tls` route is
/// a `tcp` route that also matches the client's SNI).
#[derive(Debug, Clone, Serialize)]
pub struct TcpRoutePlan {
    /// `<virtual service>/tcp[<index>]` or `<virtual service>/tls[<index>]`. A `tls` route
    /// whose match entries differ in `destinationSubnets` is one plan per set of subnets,
    /// all with this name, one after the other.
    pub name: String,
    /// Any entry takes a connection; an entry takes connections addressed to one of its
    /// subnets (empty: any address). No entries: every connection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Vec<Cidr>>,
    /// `tls` routes: the SNI names the route takes (exact, lower-cased, or `*.suffix`, or `*`),
    /// already narrowed to the Gateway server's hosts; a connection without an SNI, or with
    /// another, is not taken. Empty: any connection (`tcp` routes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    pub destinations: Vec<WeightedCluster>,
}

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr =
            addr.trim().parse().map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length is 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let (net, ip, bits): (u128, u128, u32) = match (self.addr, ip.to_canonical()) {
            (V4(n), V4(i)) => (u32::from(n).into(), u32::from(i).into(), 32),
            (V6(n), V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// An upstream service: one (host, port, subset) with its endpoints and traffic policy.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterPlan {
    /// Envoy-style `outbound|<port>|<subset>|<host>`, stable across reloads.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
    pub protocol: UpstreamProtocol,
    pub discovery: Discovery,
    pub load_balancer: LoadBalancer,
    pub pool: PoolLimits,
    /// Outlier ejection, breakers and the retry budget for this cluster.
    pub resilience: ResiliencePlan,
    /// TLS to the endpoints; `None`: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsPlan>,
}

/// The resilience engine's settings for one cluster (a host, or one subset of it), from
/// `DestinationRule.trafficPolicy.outlierDetection` / `retryBudget` and the Tripline
/// `ResiliencePolicy` that targets it. The types are the engine's own configs, so what is
/// validated here is exactly what runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResiliencePlan {
    /// `outlierDetection` (Istio fields), extended by a ResiliencePolicy's `outlierDetection`.
    #[serde(serialize_with = "ser_debug")]
    pub outlier: Option<tripline_core::outlier::OutlierConfig>,
    /// One breaker for the whole destination (cluster or subset).
    #[serde(serialize_with = "ser_debug")]
    pub breaker: Option<tripline_core::breaker::BreakerConfig>,
    /// One breaker per endpoint.
    #[serde(serialize_with = "ser_debug")]
    pub endpoint_breaker: Option<tripline_core::breaker::BreakerConfig>,
    /// Always on: `trafficPolicy.retryBudget {percent, minRetryConcurrency}` and
    /// `connectionPool.http.maxRetries` (default 20%, at least 3).
    #[serde(serialize_with = "ser_debug")]
    pub retry_budget: tripline_core::budget::RetryBudgetConfig,
    /// Name of the ResiliencePolicy applied, if any (for the admin API and logs).
    pub policy: Option<String>,
}

fn ser_debug<T: std::fmt::Debug, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

/// Which failures a retry is attempted for (`retries.retryOn`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, connect failure, reset or refused stream.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`: the connection or stream was reset, or the per-try timeout fired.
    pub reset: bool,
    /// `connect-failure`
    pub connect_failure: bool,
    /// `refused-stream` (HTTP/2 REFUSED_STREAM: the upstream never processed it).
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes` (the codes are in [`RetryPlan::status_codes`]).
    pub retriable_status_codes: bool,
    /// gRPC statuses.
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

/// `VirtualService.http[].retries`, with Istio's defaults when absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPlan {
    /// Retries after the first attempt (Istio `attempts`; 0 disables).
    pub attempts: u32,
    #[serde(serialize_with = "crate::model::ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// Numeric codes in `retryOn` (plus 503 for Istio's default policy).
    pub status_codes: Vec<u16>,
    /// Retry POST/PATCH and other non-idempotent methods even after they reached an upstream
    /// (opt-in through a ResiliencePolicy; default false: only never-sent requests are retried).
    pub retry_non_idempotent: bool,
    /// Exponential backoff with full jitter: base (25 ms) and cap (250 ms).
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub backoff_max: Duration,
    /// Request bodies up to this size are kept for replay; larger ones are not retried.
    pub max_replay_bytes: usize,
}

impl Default for RetryPlan {
    /// Istio's default policy: 2 retries on connect-failure, refused-stream, unavailable,
    /// cancelled and 503.
    fn default() -> Self {
        RetryPlan {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                grpc_unavailable: true,
                grpc_cancelled: true,
                retriable_status_codes: true,
                ..RetryOn::default()
            },
            status_codes: vec![503],
            retry_non_idempotent: false,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            max_replay_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// h2c with prior knowledge (ServiceEntry port protocol HTTP2 or GRPC).
    Http2,
    Tcp,
}

#[derive(Debug, Clone, Serialize)]
pub enum Discovery {
    /// Fixed addresses (`resolution: STATIC`).
    Static(Vec<EndpointPlan>),
    /// Names re-resolved every `refresh`; the last good answer is kept on failure.
    Dns {
        targets: Vec<DnsTarget>,
        #[serde(serialize_with = "crate::model::ser_duration")]
        refresh: Duration,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointPlan {
    pub address: SocketAddr,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsTarget {
    pub hostname: String,
    pub port: u16,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LoadBalancer {
    RoundRobin,
    /// Power of two choices on active requests.
    LeastRequest,
    Random,
    RingHash {
        key: HashKey,
        minimum_ring_size: u64,
    },
    Maglev {
        key: HashKey,
        table_size: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// Lower-cased header name.
    Header(String),
    /// `httpCookie`: hashes the cookie's value; `generate` when `ttl` was given.
    Cookie {
        name: String,
        generate: Option<NewCookie>,
    },
    SourceIp,
    QueryParameter(String),
}

/// The cookie Tripline sets on the response to a request that came without one
/// (`httpCookie.ttl` given), so that the client's next requests hash to the same endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewCookie {
    /// `Max-Age`, from `ttl`; `None` (`ttl: 0s`) makes a session cookie.
    #[serde(serialize_with = "crate::model::ser_opt_duration")]
    pub max_age: Option<Duration>,
    pub path: Option<String>,
    /// Extra attributes such as `SameSite=Strict` or `Secure` (no value).
    pub attributes: Vec<(String, Option<String>)>,
}

/// `DestinationRule.trafficPolicy.connectionPool`, with Istio's defaults for absent fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: connections per cluster (all endpoints together).
    pub max_connections: u32,
    /// `tcp.connectTimeout`, default 10s.
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub connect_timeout: Duration,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: concurrent requests to the cluster, any protocol.
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`; `None` means unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: concurrent retries to the cluster.
    pub max_retries: u32,
    /// `http.idleTimeout`; default 1h as in Istio.
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub idle_timeout: Duration,
}

/// Istio leaves these unlimited (2^32-1) unless set.
pub const UNLIMITED: u32 = u32::MAX;

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: UNLIMITED,
            connect_timeout: Duration::from_secs(10),
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_requests_per_connection: None,
            max_retries: UNLIMITED,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}
