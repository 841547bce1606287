//! `headers` (Istio's `Headers`): the edits a route, or one of its destinations, makes to the
//! request sent upstream and to the response sent back. Names and values were checked when
//! the config was loaded; here they are `http` types, built once per reload.

use http::{HeaderMap, HeaderName, HeaderValue};
use tripline_config::plan::{HeaderOps, HeaderPlan};

/// One direction's edits, applied in Istio's order: remove, then set, then add.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn compile(ops: &HeaderOps) -> Option<Edits> {
        let pair = |(n, v): &(String, String)| {
            Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        };
        let edits = Edits {
            remove: ops.remove.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            set: ops.set.iter().filter_map(pair).collect(),
            add: ops.add.iter().filter_map(pair).collect(),
        };
        let empty = edits.remove.is_empty() && edits.set.is_empty() && edits.add.is_empty();
        (!empty).then_some(edits)
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Both directions of a `headers` block; `None` parts do nothing.
#[derive(Debug, Default)]
pub(crate) struct HeaderEdits {
    pub(crate) request: Option<Edits>,
    pub(crate) response: Option<Edits>,
}

impl HeaderEdits {
    /// `None` for a block that edits nothing, so a route without `headers` runs no code.
    pub(crate) fn compile(plan: &HeaderPlan) -> Option<HeaderEdits> {
        let edits =
            HeaderEdits { request: Edits::compile(&plan.request), response: Edits::compile(&plan.response) };
        (edits.request.is_some() || edits.response.is_some()).then_some(edits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
        let own = |l: &[(&str, &str)]| l.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        HeaderOps { set: own(set), add: own(add), remove: remove.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn remove_then_set_then_add() {
        let plan = HeaderPlan {
            request: ops(
                &[("x-env", "canary")],
                &[("x-env", "extra"), ("via-tripline", "1")],
                &["x-debug", "x-env"],
            ),
            response: HeaderOps::default(),
        };
        let edits = HeaderEdits::compile(&plan).unwrap();
        assert!(edits.response.is_none());
        let mut h = HeaderMap::new();
        h.append("x-env", HeaderValue::from_static("prod"));
        h.append("x-env", HeaderValue::from_static("prod2"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("keep", HeaderValue::from_static("me"));
        edits.request.as_ref().unwrap().apply(&mut h);
        let env: Vec<_> = h.get_all("x-env").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(env, ["canary", "extra"], "set replaced both values, add appended");
        assert!(!h.contains_key("x-debug"));
        assert_eq!(h["keep"], "me");
        assert_eq!(h["via-tripline"], "1");
    }

    #[test]
    fn an_empty_block_compiles_to_nothing() {
        assert!(HeaderEdits::compile(&HeaderPlan::default()).is_none());
    }
}
