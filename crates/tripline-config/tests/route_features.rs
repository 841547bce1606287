//! `headers`, `rewrite`, `redirect`, `directResponse` and `fault` of an HTTP route: what they
//! compile to, and the mistakes refused with their place and the fix.

mod common;

use common::{ok, the_error};
use tripline_config::plan::{AbortWith, Answer, Fraction, RedirectPort, RoutePlan};

/// A ServiceEntry and a VirtualService whose one route is `route` (indented as an `http[]`
/// entry's fields).
fn with_route(route: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.local]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [backend.local]
  http:
  - {route}
"
    )
}

fn route(text: &str) -> RoutePlan {
    ok(&with_route(text)).plan.listeners[0].virtual_hosts[0].routes[0].clone()
}

const DEST: &str = "route: [{destination: {host: backend.local}}]";

#[test]
fn features_compile_into_the_route_plan() {
    let r = route(&format!(
        "{DEST}
    headers:
      request: {{set: {{X-Env: canary}}, add: {{x-a: \"1\"}}, remove: [X-Debug]}}
    rewrite: {{uri: /v2/, authority: api.internal}}
    fault:
      delay: {{fixedDelay: 5s, percentage: {{value: 0.5}}}}
      abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 10}}}}"
    ));
    let f = &r.features;
    assert_eq!(f.headers.request.set, [("x-env".to_string(), "canary".to_string())], "names lower-cased");
    assert_eq!(f.headers.request.remove, ["x-debug"]);
    let rewrite = f.rewrite.as_ref().unwrap();
    assert_eq!((rewrite.uri.as_deref(), rewrite.authority.as_deref()), (Some("/v2/"), Some("api.internal")));
    let fault = f.fault.as_ref().unwrap();
    assert_eq!(fault.delay.unwrap().share, Fraction(5_000));
    assert_eq!(fault.abort, Some((AbortWith::Grpc(14), Fraction(100_000))));

    let r = route("redirect: {uri: /new, derivePort: FROM_REQUEST_PORT, redirectCode: 302}");
    let Some(Answer::Redirect(redirect)) = &r.features.answer else { panic!("{:?}", r.features) };
    assert_eq!((redirect.status, redirect.port), (302, RedirectPort::RequestPort));
    assert!(r.destinations.is_empty());
    let r = route("directResponse: {status: 503, body: {bytes: aGk=}}");
    assert!(matches!(&r.features.answer, Some(Answer::Direct { status: 503, body }) if body == b"hi"));
    assert!(route(DEST).features.is_empty(), "a plain route has no features");
}

/// With a ServiceEntry `shadow.local` beside `backend.local`.
fn with_shadow(route: &str) -> String {
    with_route(route).replacen(
        "---",
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec:
  hosts: [shadow.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.2}]
---",
        1,
    )
}

#[test]
fn mirrors_resolve_to_clusters_with_their_share() {
    let loaded = ok(&with_shadow(&format!(
        "{DEST}\n    mirror: {{host: shadow.local}}\n    mirrorPercentage: {{value: 12.5}}"
    )));
    let r = &loaded.plan.listeners[0].virtual_hosts[0].routes[0];
    let m = r.features.mirrors[0];
    assert_eq!((loaded.plan.clusters[m.cluster].host.as_str(), m.share), ("shadow.local", Fraction(125_000)));
    let loaded = ok(&with_shadow(&format!(
        "{DEST}\n    mirrors:\n    - destination: {{host: shadow.local}}\n    - destination: {{host: shadow.local}}\n      percentage: {{value: 1}}"
    )));
    let shares: Vec<_> = loaded.plan.listeners[0].virtual_hosts[0].routes[0]
        .features
        .mirrors
        .iter()
        .map(|m| m.share)
        .collect();
    assert_eq!(shares, [Fraction(Fraction::MILLION), Fraction(10_000)], "100% by default");
    let old = ok(&with_shadow(&format!("{DEST}\n    mirror: {{host: shadow.local}}\n    mirrorPercent: 5")));
    assert_eq!(old.plan.listeners[0].virtual_hosts[0].routes[0].features.mirrors[0].share, Fraction(50_000));
}

#[test]
fn a_mirror_to_the_primary_is_a_warning_and_mirror_mistakes_are_errors() {
    let loaded = ok(&with_route(&format!("{DEST}\n    mirror: {{host: backend.local}}")));
    let w: Vec<String> = loaded.warnings.iter().map(|d| d.to_string()).collect();
    assert!(
        w.len() == 1
            && w[0].contains(
                "spec.http[0].mirror: the mirror `backend.local` is also a destination of this route"
            ),
        "{w:#?}"
    );
    for (route, want) in [
        (
            format!("{DEST}\n    mirror: {{host: shadow.local}}\n    mirrors: [{{destination: {{host: shadow.local}}}}]"),
            "spec.http[0].mirrors: `mirror` and `mirrors` both set the route's mirrors",
        ),
        (
            format!("{DEST}\n    mirrorPercentage: {{value: 5}}"),
            "spec.http[0].mirrorPercentage: `mirrorPercentage` without `mirror` mirrors nothing",
        ),
        (
            format!("{DEST}\n    mirror: {{host: nowhere.local}}"),
            "spec.http[0].mirror.host: unknown host `nowhere.local`",
        ),
    ] {
        let e = the_error(&with_shadow(&route));
        assert!(e.contains(want), "{route}\n  want: {want}\n  got:  {e}");
    }
}

#[test]
fn mistakes_are_errors_at_their_place_with_the_fix() {
    let cases = [
        (
            format!("{DEST}\n    headers: {{request: {{set: {{\"bad header\": x}}}}}}"),
            "spec.http[0].headers.request.set.bad header: `bad header` is not a valid header name",
        ),
        (
            format!("{DEST}\n    headers: {{request: {{set: {{host: x}}}}}}"),
            "`host` is managed by the proxy and cannot be edited here; use `rewrite.authority` to change it",
        ),
        (
            format!("{DEST}\n    headers: {{response: {{remove: [content-length]}}}}"),
            "spec.http[0].headers.response.remove[0]: `content-length` is managed by the proxy",
        ),
        (
            format!("{DEST}\n    headers: {{request: {{add: {{x-a: \"a\\nb\"}}}}}}"),
            "spec.http[0].headers.request.add.x-a: not a valid header value",
        ),
        (
            format!("{DEST}\n    rewrite: {{uri: v2}}"),
            "spec.http[0].rewrite.uri: `v2` is not a path: a rewritten uri starts with `/`",
        ),
        (
            format!("{DEST}\n    rewrite: {{uriRegexRewrite: {{match: \"^/(a)$\", rewrite: \"/\\\\2\"}}}}"),
            "spec.http[0].rewrite.uriRegexRewrite.rewrite: `\\2` names a group the pattern does not have (1 groups)",
        ),
        (
            format!("{DEST}\n    redirect: {{uri: /x}}"),
            "spec.http[0].redirect: an HTTP route has one of route, redirect, directResponse: found route and redirect",
        ),
        (
            "redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}".to_string(),
            "spec.http[0].redirect.derivePort: `port` and `derivePort` both set the redirect's port: keep one",
        ),
        (
            "redirect: {redirectCode: 304}".to_string(),
            "redirectCode 304 is not a redirect: expected 301, 302, 303, 307 or 308",
        ),
        (
            "directResponse: {status: 200, body: {bytes: \"not base64!\"}}".to_string(),
            "spec.http[0].directResponse.body.bytes: `bytes` is not base64",
        ),
        ("directResponse: {body: {string: x}}".to_string(), "spec.http[0].directResponse.status: `status` is required"),
        (
            format!("{DEST}\n    fault: {{abort: {{grpcStatus: Unavailable}}}}"),
            "spec.http[0].fault.abort.grpcStatus: expected one of OK, CANCELLED",
        ),
        (
            format!("{DEST}\n    fault: {{abort: {{httpStatus: 503, grpcStatus: UNAVAILABLE}}}}"),
            "an abort answers with `httpStatus` or `grpcStatus`: keep one",
        ),
        (
            format!("{DEST}\n    corsPolicy: {{allowMethods: [GET]}}"),
            "spec.http[0].corsPolicy.allowOrigins: `allowOrigins` is required",
        ),
        (
            format!("{DEST}\n    corsPolicy: {{allowOrigins: [{{exact: \"*\"}}], allowMethods: [\"GET POST\"]}}"),
            "spec.http[0].corsPolicy.allowMethods[0]: `GET POST` is not a valid method",
        ),
        (
            format!("{DEST}\n    corsPolicy: {{allowOrigins: [{{exact: \"*\"}}], unmatchedPreflights: DROP}}"),
            "spec.http[0].corsPolicy.unmatchedPreflights: expected one of FORWARD, IGNORE, UNSPECIFIED",
        ),
        (
            format!("{DEST}\n    fault: {{abort: {{http2Error: 7}}}}"),
            "`spec.http[0].fault.abort.http2Error` is not implemented yet; use `httpStatus` or `grpcStatus`",
        ),
    ];
    for (route, want) in cases {
        let e = the_error(&with_route(&route));
        assert!(e.contains(want), "{route}\n  want: {want}\n  got:  {e}");
        assert!(e.starts_with("error: mesh.yaml:"), "file, line and column first: {e}");
    }
}

/// A ResiliencePolicy on `vs/http[0]` (or on the host: `target` given) with `rest`.
fn with_policy(target: &str, rest: &str) -> String {
    format!(
        "{}---
apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: limit}}
spec:
  target: {target}
{rest}",
        with_route(DEST)
    )
}

#[test]
fn a_route_s_rate_limit_comes_from_its_policy_and_mistakes_are_errors() {
    use tripline_config::rate_limit::DescriptorKey;
    let route_target = "{virtualService: vs, route: \"http[0]\"}";
    let loaded = ok(&with_policy(
        route_target,
        "  rateLimit:
    tokenBucket: {maxTokens: 5, fillInterval: 1s}
    descriptors:
    - key: {header: X-User}
      tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 1m}",
    ));
    let r = &loaded.plan.listeners[0].virtual_hosts[0].routes[0];
    let limit = r.features.rate_limit.as_ref().expect("the route has the policy's rate limit");
    assert_eq!(
        (limit.policy.as_str(), limit.bucket.unwrap().tokens_per_fill),
        ("limit", 1),
        "tokensPerFill defaults to 1"
    );
    assert_eq!(limit.descriptors[0].key, DescriptorKey::Header("x-user".into()));

    for (target, rest, want) in [
        (
            "{host: backend.local}",
            "  rateLimit: {tokenBucket: {maxTokens: 1, fillInterval: 1s}}",
            "spec.rateLimit: `rateLimit` applies to a route",
        ),
        (route_target, "  rateLimit: {shadow: true}", "spec.rateLimit: a rate limit needs a `tokenBucket`"),
        (
            route_target,
            "  rateLimit: {tokenBucket: {maxTokens: 0, fillInterval: 1s}}",
            "spec.rateLimit.tokenBucket.maxTokens",
        ),
        (
            route_target,
            "  rateLimit: {tokenBucket: {maxTokens: 1, fillInterval: 100us}}",
            "spec.rateLimit.tokenBucket.fillInterval: expected at least 1ms",
        ),
        (
            route_target,
            "  rateLimit: {descriptors: [{key: {header: a, remoteAddress: {}}, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}",
            "expected exactly one of header, remoteAddress, pathPrefix",
        ),
    ] {
        let e = the_error(&with_policy(target, rest));
        assert!(e.contains(want), "{rest}\n  want: {want}\n  got:  {e}");
    }
}

#[test]
fn a_route_s_fallback_comes_from_its_policy_and_mistakes_are_errors() {
    use tripline_config::fallback::FallbackTo;
    let route_target = "{virtualService: vs, route: \"http[0]\"}";
    let loaded =
        ok(&with_policy(route_target, "  fallback: {on: [overflow], response: {status: 200, body: cached}}"));
    let f = loaded.plan.listeners[0].virtual_hosts[0].routes[0].features.fallback.as_ref().unwrap();
    assert!(f.on.overflow && !f.on.breaker_open && !f.on.no_healthy_upstream);
    assert!(matches!(&f.to, FallbackTo::Response { status: 200, body, .. } if body == "cached"));
    for (target, rest, want) in [
        (
            "{host: backend.local}",
            "  fallback: {response: {status: 200}}",
            "spec.fallback: `fallback` applies to a route",
        ),
        (
            route_target,
            "  fallback: {destination: {host: backend.local}, response: {status: 200}}",
            "spec.fallback.response: a fallback is a `destination` or a `response`, not both",
        ),
        (
            route_target,
            "  fallback: {on: []}",
            "spec.fallback.on: a fallback taken on nothing is never taken",
        ),
        (
            route_target,
            "  fallback: {on: [timeout], response: {status: 200}}",
            "expected one of breakerOpen, noHealthyUpstream, overflow",
        ),
        (
            route_target,
            "  fallback: {destination: {host: nowhere.local}}",
            "spec.fallback.destination.host: unknown host `nowhere.local`",
        ),
    ] {
        let e = the_error(&with_policy(target, rest));
        assert!(e.contains(want), "{rest}\n  want: {want}\n  got:  {e}");
    }
}
