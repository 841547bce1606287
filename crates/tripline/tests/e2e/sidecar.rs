//! The sidecar's interception, in a network namespace the test makes (a "pod"): `tripline
//! iptables install` redirects the pod's outbound TCP to the mesh listener, where the proxy
//! (running as uid 1337, whose own connections the rules leave alone) routes a connection to
//! a service's cluster IP by its Host, and passes one to any other destination through to it
//! untouched. The application is curl inside the pod; the upstreams run out here, on the
//! veth's address. Needs root: skipped (and said so) without it outside CI.

use std::net::SocketAddr;

use crate::support::netns::Pod;
use crate::support::{binary, config, Proxy, Upstream};

/// curl inside the pod; `None` (skipped, said) outside CI where curl is missing.
fn curl(pod: &Pod, args: &[&str]) -> Option<(bool, String)> {
    let mut all = vec!["-s", "--max-time", "5"];
    all.extend_from_slice(args);
    let out = std::process::Command::new("ip").args(["netns", "exec", &pod.name, "curl"]).args(&all).output();
    match out {
        Ok(o) => Some((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("curl not run ({e}): skipped outside CI");
            None
        }
        Err(e) => panic!("curl is needed under CI=true: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_sends_the_pod_s_traffic_through_the_proxy_and_unknown_destinations_pass_through() {
    let Some(pod) = Pod::new("sc") else { return };
    let backend = Upstream::http_at("backend", SocketAddr::new(pod.host_ip.into(), 0)).await;
    let elsewhere = Upstream::http_at("elsewhere", SocketAddr::new(pod.host_ip.into(), 0)).await;
    let db = Upstream::tcp_echo_at("db", SocketAddr::new(pod.host_ip.into(), 0)).await;

    // The service: cluster IP 10.96.0.10, port 80, its endpoint the backend out here.
    let yaml = config::join(&[
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend.shop.svc.cluster.local]\n  addresses: [10.96.0.10]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {}, ports: {{http: {}}}}}]\n",
            backend.addr.ip(),
            backend.addr.port()
        ),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend}\nspec:\n  hosts: [backend.shop.svc.cluster.local]\n  http:\n  - route: [{destination: {host: backend.shop.svc.cluster.local}}]\n    headers: {request: {set: {x-via: tripline}}}\n".to_string(),
        // A TCP service (cluster IP 10.96.0.20, port 5432) with one connection at most.
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db}}\nspec:\n  hosts: [db.shop.svc.cluster.local]\n  addresses: [10.96.0.20]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints: [{{address: {}, ports: {{tcp: {}}}}}]\n",
            db.addr.ip(),
            db.addr.port()
        ),
        config::destination_rule("db.shop.svc.cluster.local", "    connectionPool: {tcp: {maxConnections: 1}}\n"),
        // `elsewhere` declared with Istio's default resolution (NONE): passed through.
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: elsewhere}}\nspec:\n  hosts: [elsewhere.example.com]\n  addresses: [{}]\n  ports: [{{number: {}, name: http, protocol: HTTP}}]\n",
            elsewhere.addr.ip(),
            elsewhere.addr.port()
        ),
    ]);
    let install = pod.run(binary(), &["iptables", "install", "--inbound-port", "0"]);
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    let mut wrapper = pod.exec_prefix();
    wrapper.extend(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"].map(String::from));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let admin = SocketAddr::new(pod.pod_ip.into(), 15000);
    let proxy = Proxy::start_wrapped_at(&yaml, admin, &["--mesh-bind", "127.0.0.1:15001"], &wrapper).await;

    // To the service's cluster IP: routed by Host, through the VirtualService.
    let Some((ok, body)) =
        curl(&pod, &["-H", "Host: backend.shop.svc.cluster.local", "http://10.96.0.10/orders"])
    else {
        return;
    };
    assert!(ok, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["id"], "backend");
    assert_eq!(seen["headers"]["x-via"], "tripline", "routed by the proxy");
    // Anywhere else, and to a ServiceEntry of resolution NONE (`elsewhere`): passed through
    // untouched, and counted.
    let (ok, body) = curl(&pod, &[&format!("http://{}/x", elsewhere.addr)]).unwrap();
    assert!(ok, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["id"], "elsewhere");
    assert!(seen["headers"].get("x-via").is_none(), "not rewritten: {seen}");
    assert_eq!(proxy.metric("tripline_passthrough_connections_total", &[("result", "connected")]).await, 1.0);
    // The proxy's own connections left the pod as they were (its uid is excluded): the
    // backend saw the proxy, once.
    assert_eq!(backend.requests(), 1);

    // To the TCP service's cluster IP: proxied to its endpoint with its DestinationRule, so
    // while one connection is open a second is refused (maxConnections: 1), not passed through.
    let script = "exec 3<>/dev/tcp/10.96.0.20/5432; printf ping >&3; head -c 4 <&3; \
                  exec 4<>/dev/tcp/10.96.0.20/5432; printf pong >&4; timeout 3 head -c 4 <&4; echo \" rc=$?\"";
    let out = pod.run("bash", &["-c", script]);
    // The first is echoed; the second is closed (reset: its "pong" was never read).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("ping rc=") && !said.contains("pong"),
        "{said}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = "outbound|5432||db.shop.svc.cluster.local";
    let refused = [("cluster", cluster), ("reason", "overflow-connections")];
    assert_eq!(
        proxy.metric("tripline_local_responses_total", &refused).await,
        1.0,
        "{}",
        proxy.metrics().await
    );
    assert_eq!(db.connections(), 1, "the refused connection never reached the service");
    assert_eq!(proxy.metric("tripline_passthrough_connections_total", &[("result", "connected")]).await, 1.0);

    // Uninstalled: curl reaches the address directly, the proxy sees nothing more.
    let out = pod.run(binary(), &["iptables", "uninstall"]);
    assert!(out.status.success());
    let (ok, _) = curl(&pod, &[&format!("http://{}/y", elsewhere.addr)]).unwrap();
    assert!(ok);
    assert_eq!(proxy.metric("tripline_passthrough_connections_total", &[("result", "connected")]).await, 1.0);
    let saved = pod.run("iptables-save", &["-t", "nat"]);
    assert!(!String::from_utf8_lossy(&saved.stdout).contains("TRIPLINE"), "rules left behind");
}

/// Inbound: with `--inbound-capture`, what comes to the pod's port 8080 is redirected to the
/// capture port and served by the Sidecar ingress port 8080 (which binds nothing itself),
/// then sent to the application; a port no ingress has goes on to where it was going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_served_by_the_ingress_port_they_were_for() {
    let Some(pod) = Pod::new("in") else { return };
    // The "application": an upstream out here, as the ingress port's defaultEndpoint.
    let app = Upstream::http_at("app", SocketAddr::new(pod.host_ip.into(), 0)).await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: app}}\nspec:\n  ingress:\n  - port: {{number: 8080, protocol: HTTP, name: http}}\n    defaultEndpoint: {}\n",
        app.addr
    );
    let install = pod.run(binary(), &["iptables", "install"]);
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    let mut wrapper = pod.exec_prefix();
    wrapper.extend(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"].map(String::from));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let admin = SocketAddr::new(pod.pod_ip.into(), 15000);
    let proxy =
        Proxy::start_wrapped_at(&yaml, admin, &["--inbound-capture", "0.0.0.0:15006"], &wrapper).await;

    // From out here to the pod's port 8080: through the capture port to the ingress port.
    let r = crate::support::get(SocketAddr::new(pod.pod_ip.into(), 8080), "app", "/hello").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "app");
    assert!(r.seen_header("x-request-id").is_some(), "the proxy's request path gave it an id");
    let served = proxy.metric("tripline_requests_total", &[("cluster", "inbound|8080||")]).await;
    assert_eq!(served, 1.0, "{}", proxy.metrics().await);
    // A port no ingress has: on to where it was going (nothing listens there).
    assert!(crate::support::get(SocketAddr::new(pod.pod_ip.into(), 9999), "app", "/").await.is_err());
    crate::support::eventually("the passthrough is counted", std::time::Duration::from_secs(5), || async {
        proxy.metric("tripline_passthrough_connections_total", &[("result", "failed")]).await == 1.0
    })
    .await;
}
