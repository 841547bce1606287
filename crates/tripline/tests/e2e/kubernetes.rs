//! `tripline run --kubernetes` against a real API server (`../shared/tools/kube-test`): the
//! test creates Services, EndpointSlices and the mesh's custom resources with kube-rs, and
//! asserts on traffic through the real binary to real upstreams. Skipped (and said so) outside
//! CI when the API server is not beside the clone.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::kube::KubeApi;
use crate::support::{eventually, free_port, get, Proxy, Upstream};

const SOON: Duration = Duration::from_secs(5);

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

/// A slice of Service `svc` with one endpoint, `up`, ready or not.
fn slice(svc: &str, name: &str, up: SocketAddr, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": up.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [up.ip().to_string()], "conditions": {"ready": ready, "terminating": !ready}}],
    })
}

/// Which upstreams answer `n` requests to `host` on the mesh listener (their ids, sorted,
/// deduplicated); a failed request is `!<status or error>`.
async fn answering(mesh: SocketAddr, host: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let who = match get(mesh, host, "/").await {
            Ok(r) if r.status == 200 => r.json()["id"].as_str().unwrap_or("?").to_string(),
            Ok(r) => format!("!{}", r.status),
            Err(e) => format!("!{e}"),
        };
        seen.push(who);
    }
    seen.sort();
    seen.dedup();
    seen
}

/// Endpoints from slices (several per Service; scaling moves traffic, in place, without a
/// reload; a terminating endpoint gets nothing new), a DestinationRule applied through the API changing pool limits live,
/// an invalid object reported and skipped while the rest works, and the API server killed
/// and restarted: no request fails meanwhile, and changes after it apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_slices_and_policies_from_the_api_server() {
    let Some(k8s) = KubeApi::start("mesh").await else { return };
    k8s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).await;
    let (a, b, c) = (Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await);
    let slow = Upstream::http_delayed("slow", Duration::from_millis(300)).await;
    k8s.apply(service("checkout")).await;
    k8s.apply(slice("checkout", "checkout-a", a.addr, true)).await;
    k8s.apply(service("slow")).await;
    k8s.apply(slice("slow", "slow-1", slow.addr, true)).await;

    let mesh = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mesh_arg = mesh.to_string();
    let proxy = Proxy::start_kube(
        &k8s.env(),
        &["--mesh-bind", &mesh_arg, "--workload-namespace", "shop", "--namespace", "shop", "--report-status"],
    )
    .await;

    // The short name, as a client of the namespace writes it, and the full one.
    assert_eq!(answering(mesh, "checkout", 4).await, ["a"]);
    assert_eq!(answering(mesh, "checkout.shop.svc.cluster.local", 2).await, ["a"]);

    // A second slice: traffic spreads to it. Only endpoints moved: the live cluster is updated
    // in place, and the config is not compiled again.
    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    k8s.apply(slice("checkout", "checkout-b", b.addr, true)).await;
    eventually("the new slice's endpoint gets traffic", SOON, || async {
        answering(mesh, "checkout", 8).await == ["a", "b"]
    })
    .await;
    // `a` terminating (not ready): no new request goes to it.
    k8s.apply(slice("checkout", "checkout-a", a.addr, false)).await;
    eventually("the terminating endpoint gets nothing", SOON, || async {
        answering(mesh, "checkout", 8).await == ["b"]
    })
    .await;
    assert_eq!(
        proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await,
        reloads,
        "no reload"
    );

    // A DestinationRule through the API, by the short host, in the service's namespace: one
    // request in flight at most, so of two at once one is refused.
    let two_at_once = || async {
        let (x, y) = tokio::join!(get(mesh, "slow", "/"), get(mesh, "slow", "/"));
        let mut codes = vec![x.unwrap().status.as_u16(), y.unwrap().status.as_u16()];
        codes.sort();
        codes
    };
    assert_eq!(two_at_once().await, [200, 200]);
    let rule = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "slow", "namespace": "shop"},
        "spec": {"host": "slow", "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 1}}}},
    });
    k8s.apply(rule).await;
    eventually("the DestinationRule's limit applies", SOON, || async { two_at_once().await == [200, 503] })
        .await;

    // An invalid VirtualService: reported and left out; the rest keeps working.
    let invalid = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"hosts": ["checkout"], "http": [{"route": [{"destination": {"host": "checkout"}}], "timeoutt": "1s"}]},
    });
    k8s.apply(invalid.clone()).await;
    eventually("the invalid object is counted", SOON, || async {
        proxy.metric("tripline_kubernetes_rejected_objects", &[]).await == 1.0
    })
    .await;
    assert!(proxy.logs().contains("kubernetes:shop/VirtualService/broken"), "{}", proxy.logs());
    assert!(proxy.logs().contains("unknown field `timeoutt`"), "{}", proxy.logs());
    // `--report-status`: the object says so itself, with the field and the fix.
    let accepted = |status: Value| {
        let c =
            status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Accepted").cloned());
        c.map(|c| {
            (c["status"].as_str().unwrap_or("").to_string(), c["message"].as_str().unwrap_or("").to_string())
        })
    };
    eventually("the invalid object's Accepted condition is False", SOON, || async {
        accepted(k8s.status(&invalid).await).is_some_and(|(s, m)| {
            s == "False"
                && m.starts_with("VirtualService/broken: spec.http[0]")
                && m.contains("unknown field `timeoutt`")
        })
    })
    .await;
    assert_eq!(answering(mesh, "checkout", 4).await, ["b"]);
    assert_eq!(two_at_once().await, [200, 503], "the rule still applies");

    // The API server killed: the last state keeps serving, no request fails.
    let argv = k8s.kill();
    for _ in 0..20 {
        assert_eq!(answering(mesh, "checkout", 1).await, ["b"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back: a change made now applies.
    k8s.revive(&argv).await;
    k8s.apply(slice("checkout", "checkout-c", c.addr, true)).await;
    eventually("a change after the restart applies", Duration::from_secs(20), || async {
        answering(mesh, "checkout", 8).await == ["b", "c"]
    })
    .await;
    // Fixed: applied, and it says so.
    let mut fixed = invalid.clone();
    fixed["spec"]["http"][0] = json!({"route": [{"destination": {"host": "checkout"}}], "timeout": "1s"});
    k8s.apply(fixed.clone()).await;
    eventually("nothing is left out once the object is fixed", SOON, || async {
        proxy.metric("tripline_kubernetes_rejected_objects", &[]).await == 0.0
    })
    .await;
    eventually("the fixed object's Accepted condition is True", SOON, || async {
        accepted(k8s.status(&fixed).await).is_some_and(|(s, _)| s == "True")
    })
    .await;
    k8s.delete(fixed).await;

    // A Linkerd ServiceProfile through the API: its route's timeout applies to that route.
    let profile = json!({
        "apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
        "metadata": {"name": "slow.shop.svc.cluster.local", "namespace": "shop"},
        "spec": {"routes": [{"name": "timed", "condition": {"method": "GET", "pathRegex": "/timed"}, "timeout": "100ms"}]},
    });
    k8s.apply(profile).await;
    eventually("the profile's route timeout applies", SOON, || async {
        get(mesh, "slow", "/timed").await.unwrap().status == 504
    })
    .await;
    assert_eq!(get(mesh, "slow", "/other").await.unwrap().status, 200, "other requests are not timed");
}

/// `validate --kubernetes` checks a file's hosts against the API server's Services: one that
/// exists is fine, one that does not is an error; without `--kubernetes` both are notes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_hosts_against_the_api_server() {
    let Some(k8s) = KubeApi::start("validate").await else { return };
    k8s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).await;
    k8s.apply(service("checkout")).await;
    let dir = crate::support::proxy::unique_dir("kube-validate");
    let file = dir.join("routes.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shop, namespace: shop}\nspec:\n  hosts: [checkout]\n  http:\n  - match: [{uri: {prefix: /x}}]\n    route: [{destination: {host: checkout}}]\n  - route: [{destination: {host: missing}}]\n",
    )
    .unwrap();
    let validate = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(crate::support::binary());
        cmd.arg("validate").args(extra).arg(&file).env("KUBECONFIG", &k8s.kubeconfig);
        crate::support::proxy::run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let (code, out, err) = validate(&["--kubernetes", "--namespace", "shop"]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("spec.http[1].route[0].destination.host: unknown host `missing`"), "{err}");
    assert!(!err.contains("unknown host `checkout`"), "{err}");
    let (code, out, err) = validate(&[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("note:") && err.contains("`missing` is taken to be the Kubernetes service"),
        "{err}"
    );
}
