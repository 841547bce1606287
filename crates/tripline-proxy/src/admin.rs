//! The admin API: readiness, liveness, Prometheus metrics, the effective config and live
//! cluster state. Served on its own port (default 127.0.0.1:15000), HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::admin_guard::TokenFile;
use crate::cluster::Cluster;
use crate::Shared;

/// Binds the admin address and serves it until the process exits.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Admin connections open at once; more are closed as soon as accepted. A local process (or
/// a web page) opening connections without finishing a request must not be able to use up
/// the file descriptors the data plane accepts with.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves the admin API. Each connection gets `--header-timeout` for each request head, as
/// client connections on the data plane do. With `token`, requests that change state must
/// carry it (see [`crate::admin_guard::TokenFile`]).
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, token: Option<Arc<TokenFile>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::listener::AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                backoff.failed("admin", &e).await;
                continue;
            }
        };
        backoff.succeeded("admin");
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.global.admin_connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(max = MAX_CONNECTIONS, "admin connection refused: too many open");
            continue;
        };
        let (shared, token) = (shared.clone(), token.clone());
        tokio::spawn(async move {
            let head_timeout = shared.client_conns.header_timeout();
            let svc = service_fn(move |req| {
                let (shared, token) = (shared.clone(), token.clone());
                async move { Ok::<_, Infallible>(route(&shared, token.as_deref(), req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// `/config_dump`: the config in force, as JSON written on the first request for it (see
/// [`tripline_config::dump`]) and sent without a copy. Writing it takes most of a second for
/// 100,000 endpoints: on a blocking thread, not on the event loop, which accepts the data
/// plane's connections too.
async fn config_dump(shared: &Shared) -> Response<Full<Bytes>> {
    let dump = shared.applied.load().dump.clone();
    let written = match dump {
        // Before the first config is applied there is none.
        None => Arc::from("null"),
        Some(dump) if dump.is_written() => dump.text(),
        Some(dump) => match tokio::task::spawn_blocking(move || dump.text()).await {
            Ok(written) => written,
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the config dump was not written: {e}\n"),
                )
            }
        },
    };
    let written = with_certificates(shared, written);
    struct Text(Arc<str>);
    impl AsRef<[u8]> for Text {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    let mut r = Response::new(Full::new(Bytes::from_owner(Text(written))));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// The dump with `"certificates"` first: every certificate in force now (the files' current
/// contents once a change was read), with its expiry; never a key. The dump's own text is
/// written once per config, from the files as they were then.
fn with_certificates(shared: &Shared, written: Arc<str>) -> Arc<str> {
    let live = shared.tls_files.live();
    if live.is_empty() || !written.starts_with('{') {
        return written;
    }
    let certs: Vec<_> = live
        .iter()
        .flat_map(|c| c.expiries())
        .map(|e| {
            serde_json::json!({
                "owner": e.owner,
                "role": e.role,
                "file": e.file,
                "not_after_unix": e.not_after,
            })
        })
        .collect();
    let certs = serde_json::to_string(&certs).unwrap_or_else(|_| "[]".into());
    let rest = &written[1..];
    let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
    format!("{{\"certificates\":{certs}{sep}{rest}").into()
}

async fn route(shared: &Shared, token: Option<&TokenFile>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(refused) = crate::admin_guard::check(req.method(), req.headers()) {
        return text(refused.status, refused.why);
    }
    let path = req.uri().path();
    if req.method() == Method::POST {
        if let Some(token) = token {
            if let Err(refused) = token.authorize(req.headers()).await {
                let mut r = text(refused.status, refused.why);
                if refused.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer realm=\"tripline-admin\""),
                    );
                }
                return r;
            }
        }
        let action = path.strip_prefix("/breakers/").and_then(crate::breakers_api::Action::parse);
        return match action {
            Some(action) => {
                let applied = shared.applied.load();
                match crate::breakers_api::apply(
                    &applied.clusters,
                    &applied.route_breakers,
                    action,
                    req.uri().query().unwrap_or(""),
                ) {
                    Ok(msg) => text(StatusCode::OK, msg),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            None => text(
                StatusCode::NOT_FOUND,
                "POST /breakers/force-open|force-closed|reset?cluster=NAME[&endpoint=ADDR]\n",
            ),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET, or POST /breakers/...\n");
    }
    match path {
        "/breakers" => {
            let applied = shared.applied.load();
            json_response(&crate::breakers_api::breakers_json(&applied.clusters, &applied.route_breakers))
        }
        "/ready" => {
            if shared.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let applied = shared.applied.load();
            let rendered = crate::metrics::render(
                &shared.global,
                &applied.clusters,
                &applied.route_breakers,
                &applied.rate_limiters,
                applied.authz.as_deref(),
                shared.tls_scrape(),
                shared.istio_metrics.get(),
            );
            // OpenMetrics for a scraper that asks for it (Prometheus does); the Prometheus
            // text format (0.0.4) for everyone else, which every other tool parses.
            let openmetrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|a| a.contains("application/openmetrics-text")));
            let (body, content_type) = if openmetrics {
                (rendered, crate::metrics::OPENMETRICS_CONTENT_TYPE)
            } else {
                (crate::metrics::to_prometheus_text(&rendered), crate::metrics::PROMETHEUS_CONTENT_TYPE)
            };
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
            r
        }
        "/config_dump" => config_dump(shared).await,
        "/clusters" => json_response(&clusters_json(&shared.applied.load().clusters)),
        "/stats" => {
            let all = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "all" || p == "all=1"));
            json_response(&crate::stats_api::stats_json(&shared.applied.load().clusters, all))
        }
        "/listeners" => {
            let applied = shared.applied.load();
            let list: Vec<_> = applied
                .listeners
                .iter()
                .map(|(name, bind, protocol)| json!({"name": name, "bind": bind.to_string(), "protocol": protocol}))
                .collect();
            json_response(&json!({ "listeners": list }))
        }
        "/" => dashboard(),
        "/help" => text(
            StatusCode::OK,
            "tripline admin\n  /            the live dashboard (a browser page)\n  /ready\n  /healthz\n  /metrics\n  /config_dump\n  /clusters\n  /stats\n  /listeners\n  /breakers\n  POST /breakers/force-open|force-closed|reset?cluster=NAME[&endpoint=ADDR]\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "unknown admin path; see /\n"),
    }
}

/// Live cluster and endpoint state as JSON.
/// The live dashboard: one page, everything inline (it works offline), reading `/stats`.
/// Never framed (its buttons change breakers), and nothing but itself runs in it.
fn dashboard() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(include_bytes!("dashboard.html"))));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
}

pub fn clusters_json(clusters: &[Arc<Cluster>]) -> serde_json::Value {
    let list: Vec<_> = clusters
        .iter()
        .map(|c| {
            let set = c.endpoints.load();
            let endpoints: Vec<_> = set
                .members
                .iter()
                .map(|m| {
                    let e = &m.ep;
                    json!({
                        "address": e.address.to_string(),
                        "weight": e.weight,
                        "labels": e.labels,
                        "healthy": tripline_core::balancer::EndpointView::is_available(m),
                        "outlier": m.outlier.as_ref().map(|o| o.health().as_str()).unwrap_or("healthy"),
                        "breaker": m.breaker.as_ref().map(|b| b.state().as_str()),
                        "active_requests": e.active.load(Ordering::Relaxed),
                        "connections": e.pool.connections.load(Ordering::Relaxed),
                        "idle_connections": e.pool.idle_count(),
                        "requests_total": e.requests_total.load(Ordering::Relaxed),
                    })
                })
                .collect();
            let s = &c.state;
            json!({
                "name": c.name(),
                "host": c.plan.host,
                "port": c.plan.port,
                "subset": c.plan.subset,
                "protocol": format!("{:?}", c.plan.protocol),
                "load_balancer": format!("{:?}", c.plan.load_balancer),
                "active_requests": s.active.current(),
                "pending_requests": s.pending.current(),
                "connections": s.connections.current(),
                "limits": {
                    "max_connections": c.limits().max_connections,
                    "max_pending_requests": c.limits().max_pending_requests,
                    "max_requests": c.limits().max_requests,
                    "max_requests_per_connection": c.limits().max_requests_per_connection,
                    "connect_timeout_ms": c.limits().connect_timeout.as_millis() as u64,
                },
                "requests_total": s.stats.codes.total(),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "clusters": list })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tripline_config::{load, LoadOptions, Source};

    use super::*;
    use crate::Proxy;

    /// A Gateway on a free port of 127.0.0.1, one backend behind it.
    fn config() -> tripline_config::Loaded {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, bind: 127.0.0.1, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: 9}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: backend.local}}}}]}}]
"#
        );
        load(&[Source { name: "mesh.yaml".into(), text }], &LoadOptions::default()).expect("valid config")
    }

    /// The body of `GET path` on the admin API at `addr`.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains("content-type: application/json"), "{answer}");
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }

    /// `/config_dump` is `null` before a config is applied; then the applied config's dump,
    /// written by the first request (on a blocking thread), the same text at every request.
    #[tokio::test(flavor = "current_thread")]
    async fn the_config_dump_is_written_when_first_requested() {
        let proxy = Proxy::new();
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(proxy.shared.clone(), listener, None));
        assert_eq!(get(addr, "/config_dump").await, "null");

        let loaded = config();
        proxy.apply(&loaded).await.expect("applied");
        assert!(!loaded.dump.is_written(), "applying a config writes no dump");
        let first = get(addr, "/config_dump").await;
        assert!(loaded.dump.is_written());
        assert_eq!(first, *loaded.dump.text());
        let dump: serde_json::Value = serde_json::from_str(&first).expect("JSON");
        assert_eq!(dump["resources"].as_array().map(Vec::len), Some(3), "{dump}");
        assert_eq!(dump["plan"]["clusters"][0]["name"], "outbound|80||backend.local", "{dump}");
        assert_eq!(get(addr, "/config_dump").await, first);
    }
}
