//! Findings about a config that loads but may not do what its author meant: the checks users
//! of `istioctl analyze` expect from `tripline validate`. Each is a warning (the config runs
//! as written) that says what will happen and what to change.
//!
//! Pure functions over one VirtualService route and what it compiled to; the compiler
//! reports what they find at the route's place.

use std::time::Duration;

use crate::decode::format_duration;
use crate::model::HttpRoute;
use crate::plan::{RequestMatch, RetryPlan, StringMatch};
use tripline_core::outlier::CapRounding;

/// Whether a `match` entry takes every request: no condition, or only a `/` (or empty) URI
/// prefix, which every origin-form path has (`ignoreUriCase` changes nothing to that).
fn matches_everything(m: &RequestMatch) -> bool {
    let uri_all = match &m.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(_) => false,
    };
    uri_all
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.scheme.is_none()
        && m.port.is_none()
        && m.scope.is_empty()
}

/// Whether a route takes every request that reaches it: it has no `match`, or one of its
/// entries matches everything.
fn catch_all(h: &HttpRoute) -> bool {
    h.matches.is_empty() || h.matches.iter().any(matches_everything)
}

/// For each route after one that takes every request: the index of that catch-all. First
/// match wins, so these routes are never taken.
pub(crate) fn shadowed(routes: &[HttpRoute]) -> Vec<(usize, usize)> {
    let Some(first) = routes.iter().position(|h| (!h.route.is_empty() || h.answers_itself) && catch_all(h))
    else {
        return Vec::new();
    };
    (first + 1..routes.len()).map(|i| (i, first)).collect()
}

pub(crate) fn shadowed_message(by: &HttpRoute) -> String {
    format!(
        "this route is never taken: `{}` before it matches every request (first match wins); move the catch-all last or give it a narrower `match`",
        by.path
    )
}

/// The per-try timeout times the retries outlasts the route timeout: when tries time out, the
/// route timeout ends the request before its retries are used up. (The first try is not
/// counted: a route timeout that leaves room for the retries alone is a deliberate cap on the
/// worst case, common in Istio configs. A per-try timeout longer than the route timeout by
/// itself has its own finding.)
pub(crate) fn retries_outlast_timeout(timeout: Duration, per_try: Duration, attempts: u32) -> Option<String> {
    let total = per_try.saturating_mul(attempts);
    (per_try <= timeout && total > timeout).then(|| {
        format!(
            "perTryTimeout {} × {attempts} retries = {} is longer than the route timeout {}: when tries time out, the route timeout ends the request before its retries are used up; lower perTryTimeout or attempts, or raise timeout",
            format_duration(per_try),
            format_duration(total),
            format_duration(timeout)
        )
    })
}

/// A `maxEjectionPercent` that, for the cluster's endpoint count, can eject none of them, or
/// all of them at once with nothing to fall back on (no `minHealthPercent` panic mode). One
/// endpoint that can be ejected is Tripline's documented fail-fast, not a finding.
pub(crate) fn ejection_cap(
    endpoints: usize,
    percent: u32,
    rounding: CapRounding,
    min_health: u32,
) -> Option<String> {
    let n = u32::try_from(endpoints).ok().filter(|&n| n > 0)?;
    let cap = tripline_core::outlier::ejection_cap(n, percent, rounding);
    if cap == 0 {
        let least =
            if percent == 0 { "above 0".to_string() } else { format!("at least {}", 100u32.div_ceil(n)) };
        Some(format!(
            "maxEjectionPercent {percent} of {n} endpoint(s) ejects none of them ({rounding:?} rounding): outlier detection can never eject; raise it to {least}"
        ))
    } else if cap == n && n > 1 && min_health == 0 {
        Some(format!(
            "maxEjectionPercent {percent} lets all {n} endpoints be ejected at once, leaving none to serve (requests then get 503 no-healthy-upstream); lower it, or set minHealthPercent so that panic mode spreads the load over all of them"
        ))
    } else {
        None
    }
}

/// A `connectionPool.http.maxRetries` below the retry budget's floor (`minRetryConcurrency`,
/// the retries always allowed whatever the load): the pool limit refuses retries the budget
/// promises, so the floor never holds.
pub(crate) fn retries_below_budget_floor(
    max_retries: u32,
    floor: u32,
    floor_written: bool,
) -> Option<String> {
    (max_retries < floor).then(|| {
        let whose = if floor_written { "its" } else { "the default" };
        format!(
            "maxRetries {max_retries} is below the retry budget's floor (minRetryConcurrency {floor}, {whose}): at most {max_retries} retries are ever in flight, so the {floor} the budget always allows never are; raise maxRetries to {floor} or lower retryBudget.minRetryConcurrency"
        )
    })
}

/// A method that is not idempotent (RFC 9110 §9.2.2).
fn non_idempotent(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Retries on a route that takes only non-idempotent methods: Tripline resends those only when
/// the upstream never processed them, which may be less than the author expects.
pub(crate) fn non_idempotent_retries(h: &HttpRoute, retry: &RetryPlan) -> Option<String> {
    if retry.attempts == 0 {
        return None;
    }
    // Opted in (a ResiliencePolicy's `retryNonIdempotent`): the author chose it, by name.
    if retry.retry_non_idempotent {
        return None;
    }
    // Retrying only what never reached the upstream is exactly what happens: nothing to say.
    let on = &retry.retry_on;
    let unsent = crate::plan::RetryOn {
        connect_failure: on.connect_failure,
        refused_stream: on.refused_stream,
        ..Default::default()
    };
    if *on == unsent {
        return None;
    }
    let methods: Vec<&str> = h
        .matches
        .iter()
        .map(|m| match &m.method {
            Some(StringMatch::Exact(method)) if non_idempotent(method) => Some(method.as_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let first = methods.first()?;
    Some(format!(
        "this route takes only {first} requests and has {} retries: Tripline resends a {first} only when the upstream never processed it (connect failure, refused stream), not on a 5xx or a reset; set `retryNonIdempotent: true` in a ResiliencePolicy if the upstream deduplicates, or `attempts: 0` to say there are none",
        retry.attempts
    ))
}

/// A mirror that is also a destination of its route: the copies go to the service that
/// already answers the request, which then serves every mirrored request twice (writes
/// included), and nothing is compared against another version.
pub(crate) fn mirror_to_primary(host: &str, subset: Option<&str>) -> String {
    let target = match subset {
        Some(s) => format!("`{host}` subset `{s}`"),
        None => format!("`{host}`"),
    };
    format!("the mirror {target} is also a destination of this route: each mirrored request reaches it twice (a write is done twice); mirror to another version (a subset) instead")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{At, RouteDestination};
    use crate::yaml::Pos;

    fn route(path: &str, matches: Vec<RequestMatch>) -> HttpRoute {
        let host = At { value: "a.local".to_string(), pos: Pos::default(), path: "host".into() };
        let destination = RouteDestination {
            host,
            subset: None,
            port: None,
            weight: None,
            headers: Default::default(),
            pos: Pos::default(),
            path: String::new(),
        };
        HttpRoute {
            name: None,
            matches,
            route: vec![destination],
            timeout: None,
            retries: None,
            fault: None,
            mirrors: Vec::new(),
            features: Default::default(),
            answers_itself: false,
            pos: Pos::default(),
            path: path.into(),
        }
    }

    fn uri(m: StringMatch) -> RequestMatch {
        RequestMatch { uri: Some(m), ..Default::default() }
    }

    fn method(m: &str) -> RequestMatch {
        RequestMatch { method: Some(StringMatch::Exact(m.into())), ..Default::default() }
    }

    #[test]
    fn routes_after_a_catch_all_are_shadowed() {
        let api = route("spec.http[0]", vec![uri(StringMatch::Prefix("/api".into()))]);
        let all = route("spec.http[1]", vec![]);
        let slash = route("spec.http[1]", vec![uri(StringMatch::Prefix("/".into())), method("GET")]);
        let later = route("spec.http[2]", vec![uri(StringMatch::Exact("/x".into()))]);
        assert_eq!(shadowed(&[api.clone(), all.clone(), later.clone()]), vec![(2, 1)]);
        assert_eq!(shadowed(&[all.clone(), api.clone(), later.clone()]), vec![(1, 0), (2, 0)]);
        // One entry of a route that matches everything is enough.
        assert_eq!(shadowed(&[slash, later.clone()]), vec![(1, 0)]);
        // A catch-all last shadows nothing; narrower routes shadow nothing.
        assert!(shadowed(&[api.clone(), later.clone(), all]).is_empty());
        let get_only = route("spec.http[0]", vec![method("GET")]);
        assert!(shadowed(&[get_only, api.clone(), later.clone()]).is_empty());
        // A match on what must be absent, or on the query, is a condition too.
        let without = RequestMatch {
            without_headers: vec![("x-canary".into(), StringMatch::Exact("true".into()))],
            ..Default::default()
        };
        let query = RequestMatch {
            query_params: vec![("v".into(), StringMatch::Exact("2".into()))],
            ..Default::default()
        };
        for m in [without, query] {
            assert!(shadowed(&[route("spec.http[0]", vec![m]), api.clone(), later.clone()]).is_empty());
        }
        assert!(shadowed_message(&route("spec.http[1]", vec![])).contains("`spec.http[1]` before it"));
    }

    #[test]
    fn per_try_timeouts_times_the_retries_longer_than_the_route_timeout_are_named() {
        let ms = Duration::from_millis;
        let msg = retries_outlast_timeout(ms(5000), ms(2000), 3).expect("2s × 3 > 5s");
        assert!(
            msg.starts_with("perTryTimeout 2s × 3 retries = 6s is longer than the route timeout 5s"),
            "{msg}"
        );
        assert_eq!(retries_outlast_timeout(ms(5000), ms(1250), 4), None, "exactly 5s fits");
        assert_eq!(retries_outlast_timeout(ms(5000), ms(9000), 0), None, "no retries");
        assert_eq!(
            retries_outlast_timeout(ms(1000), ms(2000), 2),
            None,
            "the per-try timeout alone has its finding"
        );
        let msg = retries_outlast_timeout(ms(500), ms(250), 3).unwrap();
        assert!(msg.contains("perTryTimeout 250ms × 3 retries = 750ms"), "{msg}");
    }

    #[test]
    fn ejection_caps_that_eject_nobody_or_everybody_are_named() {
        use CapRounding::*;
        let msg = ejection_cap(9, 10, Floor, 0).expect("floor(0.9) = 0");
        assert!(
            msg.starts_with("maxEjectionPercent 10 of 9 endpoint(s) ejects none of them (Floor rounding)"),
            "{msg}"
        );
        assert!(msg.ends_with("raise it to at least 12"), "{msg}");
        assert!(ejection_cap(3, 0, AtLeastOne, 0).unwrap().ends_with("raise it to above 0"));
        assert_eq!(ejection_cap(9, 10, AtLeastOne, 0), None, "at least one");
        let msg = ejection_cap(4, 100, AtLeastOne, 0).expect("all 4");
        assert!(msg.starts_with("maxEjectionPercent 100 lets all 4 endpoints be ejected at once"), "{msg}");
        assert_eq!(ejection_cap(4, 100, AtLeastOne, 50), None, "panic mode takes over");
        assert_eq!(ejection_cap(1, 10, AtLeastOne, 0), None, "one endpoint: the documented fail-fast");
        assert_eq!(ejection_cap(4, 75, Ceil, 0), None, "3 of 4");
        assert_eq!(ejection_cap(0, 10, Floor, 0), None, "no endpoints has its own finding");
    }

    #[test]
    fn a_pool_limit_below_the_retry_floor_is_named() {
        let msg = retries_below_budget_floor(2, 3, false).expect("2 < 3");
        assert!(
            msg.starts_with(
                "maxRetries 2 is below the retry budget's floor (minRetryConcurrency 3, the default)"
            ),
            "{msg}"
        );
        assert!(retries_below_budget_floor(1, 5, true).unwrap().contains("(minRetryConcurrency 5, its)"));
        assert_eq!(retries_below_budget_floor(3, 3, false), None);
        assert_eq!(retries_below_budget_floor(u32::MAX, 3, false), None);
    }

    #[test]
    fn retries_on_non_idempotent_routes_say_what_happens() {
        let retries = RetryPlan { attempts: 2, ..Default::default() };
        let post = route("spec.http[0]", vec![method("POST")]);
        let msg = non_idempotent_retries(&post, &retries).expect("a POST-only route with retries");
        assert!(msg.contains("takes only POST requests and has 2 retries"), "{msg}");
        // A route that also takes GETs retries those as configured: nothing to say.
        let mixed = route("spec.http[0]", vec![method("POST"), method("GET")]);
        assert_eq!(non_idempotent_retries(&mixed, &retries), None);
        assert_eq!(non_idempotent_retries(&route("spec.http[0]", vec![]), &retries), None);
        assert_eq!(non_idempotent_retries(&post, &RetryPlan { attempts: 0, ..retries.clone() }), None);
        // Opted in by name in a ResiliencePolicy: the author chose it.
        let opted = RetryPlan { retry_non_idempotent: true, ..retries };
        assert_eq!(non_idempotent_retries(&post, &opted), None);
    }
}
