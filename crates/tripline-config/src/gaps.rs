//! Every Istio field Tripline reads but does not act on yet, in one place, sorted by the rule
//! that decides how it is reported: a field may be **ignored** (a warning saying why) only if
//! ignoring it cannot change which requests a route takes or what they get; every other one
//! is **refused** (an error saying what to do) until it is implemented.
//!
//! Each list goes to the [`Schema`](crate::decode::Schema) of the mapping that holds the
//! fields (`refusing` / `ignoring`); the messages read
//! `` `<path>` is not implemented yet; <what to do> `` and `` `<path>` is ignored: <why> ``.
//! Where only some values of a field are what Tripline does, the decoder checks the value
//! (`exportTo`, `h2UpgradePolicy`, `useClientProtocol`, `retryIgnorePreviousHosts` in
//! `model.rs`); the `retryOn` words are listed here. docs/configuration.md lists the same
//! fields for users: change both together.

/// `(field, what to do)`: an error until implemented.
pub type Refused = &'static [(&'static str, &'static str)];
/// `(field, why ignoring it is harmless)`: a warning.
pub type Ignored = &'static [(&'static str, &'static str)];

const NO_LOCALITY: &str = "remove it: every endpoint has the same priority for now";

/// Gateway `servers[]`.
pub const SERVER: Refused = &[(
    "defaultEndpoint",
    "remove it: requests go to the routes of the VirtualServices bound to this Gateway",
)];

/// Gateway `servers[].tls` (see [`crate::tls`]).
pub const SERVER_TLS: Refused = &[
    (
        "verifyCertificateSpki",
        "remove it, and let `caCertificates` (and `subjectAltNames`) say which client certificates are accepted: Tripline does not pin client certificates by key",
    ),
    (
        "verifyCertificateHash",
        "remove it, and let `caCertificates` (and `subjectAltNames`) say which client certificates are accepted: Tripline does not pin client certificates by hash",
    ),
    (
        "credentialNames",
        "give one certificate with `credentialName` (or `serverCertificate` and `privateKey`): Tripline serves one certificate per server for now",
    ),
    (
        "tlsCertificates",
        "give one certificate with `credentialName` (or `serverCertificate` and `privateKey`): Tripline serves one certificate per server for now",
    ),
    ("caCrl", "remove it: Tripline does not check client certificates against a revocation list yet"),
];

/// Gateway `servers[].port`.
pub const GATEWAY_PORT: Ignored =
    &[("targetPort", "Istio ignores it on a Gateway server too (it applies to ServiceEntry ports); the listener binds `number`")];

/// ServiceEntry.
pub const SERVICE_ENTRY: Refused = &[(
    "workloadSelector",
    "list the endpoints under `endpoints` instead: Tripline does not discover workloads by their labels",
)];

/// ServiceEntry `endpoints[]` (WorkloadEntry).
pub const WORKLOAD_ENTRY: Refused = &[
    ("network", "remove it: Tripline connects to every endpoint directly, never through a network's gateway"),
    ("locality", NO_LOCALITY),
    (
        "serviceAccount",
        "remove it, and list the names the endpoints' certificates carry in the DestinationRule's `tls.subjectAltNames` (or the ServiceEntry's `subjectAltNames`): Tripline has no mesh identities yet",
    ),
];

/// VirtualService.
pub const VIRTUAL_SERVICE: Refused = &[];

/// VirtualService `http[]`.
pub const HTTP_ROUTE: Refused = &[(
    "delegate",
    "put the delegate VirtualService's routes here instead: Tripline would not follow the delegation",
)];
/// VirtualService `http[].match[]`.
pub const MATCH: Refused = &[];
pub const MATCH_IGNORED: Ignored = &[("statPrefix", "it only names statistics")];

/// VirtualService `http[].fault.abort`.
pub const FAULT_ABORT: Refused = &[(
    "http2Error",
    "use `httpStatus` or `grpcStatus`: Tripline does not reset streams with an HTTP/2 error code",
)];

/// VirtualService `tcp[].match[]`.
pub const L4_MATCH: Refused = &[(
    "sourceSubnet",
    "remove it (Istio deprecated it): Tripline does not route TCP by the client's address",
)];

/// VirtualService `http[].retries`.
pub const RETRIES_IGNORED: Ignored =
    &[("retryRemoteLocalities", "Tripline has no localities, so a retry may go to any endpoint either way")];

/// DestinationRule.
pub const DESTINATION_RULE: Refused = &[(
    "workloadSelector",
    "remove it: Tripline has no workload labels, and applies the rule to all of its own traffic",
)];

/// DestinationRule `trafficPolicy` (top level and subsets).
pub const TRAFFIC_POLICY: Refused = &[
    ("portLevelSettings", "move the settings to the top level or to a subset: Tripline applies one policy to every port of a host"),
    ("tunnel", "remove it: Tripline connects to the endpoints directly"),
    ("proxyProtocol", "remove it: Tripline sends no PROXY protocol header, so the upstream would not see the client's address"),
];

/// DestinationRule `trafficPolicy.tls` (see [`crate::tls`]).
pub const CLIENT_TLS: Refused = &[(
    "caCrl",
    "remove it: Tripline does not check the upstream's certificate against a revocation list yet",
)];

/// DestinationRule `trafficPolicy.loadBalancer`.
pub const LOAD_BALANCER: Refused = &[
    ("localityLbSetting", NO_LOCALITY),
    ("warmupDurationSecs", "remove it: a new endpoint gets its full share of requests at once"),
    ("warmup", "remove it: a new endpoint gets its full share of requests at once"),
];

/// DestinationRule `trafficPolicy.connectionPool.tcp`.
pub const TCP_POOL: Refused = &[
    ("tcpKeepalive", "remove it: upstream connections get no keepalive probes for now"),
    ("maxConnectionDuration", "remove it: upstream connections have no maximum lifetime for now"),
    ("idleTimeout", "remove it (`http.idleTimeout` closes idle HTTP upstream connections): proxied TCP connections are never closed for being idle for now"),
];

/// DestinationRule `trafficPolicy.connectionPool.http`.
pub const HTTP_POOL: Refused = &[(
    "maxConcurrentStreams",
    "remove it: Tripline keeps one HTTP/2 connection per endpoint and worker, limited only by the upstream's own SETTINGS_MAX_CONCURRENT_STREAMS",
)];

/// Envoy conditions Istio passes through that Tripline does not read, and why ignoring each
/// changes no retry (a warning).
pub const RETRY_ON_IGNORED: Ignored = &[
    (
        "reset-before-request",
        "Tripline always sends a request again on another connection when its connection closed before the request went out",
    ),
    ("retriable-headers", "Istio cannot set the headers it needs, so it retries nothing in Envoy either"),
    ("http3-post-connect-failure", "Tripline has no HTTP/3 upstreams"),
];

/// Envoy conditions that would retry responses Tripline does not retry yet (an error).
pub const RETRY_ON_REFUSED: Refused =
    &[("envoy-ratelimited", "remove it: Tripline does not retry responses that carry `x-envoy-ratelimited`")];
