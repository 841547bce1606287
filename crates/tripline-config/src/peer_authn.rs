//! Istio's `PeerAuthentication` (`security.istio.io`): whether the sidecar's inbound listeners
//! ([`crate::sidecar`]) require mutual TLS from their callers, accept it beside plaintext, or
//! take plaintext only.
//!
//! ```yaml
//! apiVersion: security.istio.io/v1
//! kind: PeerAuthentication
//! metadata: {name: default, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: checkout}}   # none: every workload of the namespace
//!   mtls: {mode: STRICT}                        # PERMISSIVE (the default), DISABLE, UNSET
//!   portLevelMtls:                              # only with a selector, as Istio validates
//!     9090: {mode: DISABLE}                     # the inbound port (the workload's own)
//! ```
//!
//! Which policy decides follows Istio ([`compose`]): the workload's own (a selector matching
//! `--workload-labels`, in its namespace), else its namespace's (no selector), else the mesh's
//! (no selector, in the root namespace `istio-system`), else `PERMISSIVE`. A policy with a
//! selector in the root namespace applies to nothing (Istio ignores it; `validate` warns).
//! `UNSET` takes the mode from the level above; a port's `UNSET` the policy's own. Of two
//! policies at one level the oldest wins in Kubernetes; in files, the first loaded, and the
//! other is reported.
//!
//! What a mode does on an inbound port:
//! - `STRICT`: TLS only, with a client certificate chained to the workload's trust bundle
//!   (its SVID from `--identity-dir`, as `ISTIO_MUTUAL`); a plaintext caller's connection is
//!   closed, counted as a handshake failure (`protocol`).
//! - `PERMISSIVE`: the first byte tells: a TLS handshake record (`0x16`) is served as
//!   `STRICT` is, anything else as plaintext. Without `--identity-dir` nothing can be
//!   terminated: plaintext only, with a warning when a policy asks for PERMISSIVE.
//! - `DISABLE`: plaintext only.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decode::{join, Cx, Schema};
use crate::yaml::{Kind, Node, Pos};

/// A `mtls.mode` or a port's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the level above.
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn name(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

/// A mode with where it was written (position, field path), to report against it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeAt {
    pub mode: MtlsMode,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

/// A PeerAuthentication's `spec`, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `selector.matchLabels`; `None` (or empty): namespace- or mesh-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// `mtls.mode`; `UNSET` when absent.
    pub mode: ModeAt,
    /// `portLevelMtls`, by port.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level: BTreeMap<u16, ModeAt>,
}

const SPEC: Schema = Schema::new("Istio's PeerAuthentication", &["selector", "mtls", "portLevelMtls"]);
const SELECTOR: Schema = Schema::new("Istio's WorkloadSelector", &["matchLabels"]);
const MTLS: Schema = Schema::new("Istio's PeerAuthentication.MutualTLS", &["mode"]);
const MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

/// Decodes a policy's `spec`.
pub fn peer_authentication(cx: &mut Cx, spec: &Node) -> Option<PeerAuthentication> {
    let f = cx.fields(spec, "spec", &SPEC)?;
    let mut ok = true;
    let selector = match f.value("selector") {
        Some((n, p)) => {
            let s = cx.fields(n, &p, &SELECTOR)?;
            let labels = s.value("matchLabels").map(|(n, p)| cx.string_map(n, &p)).unwrap_or_default();
            Some(labels).filter(|l| !l.is_empty())
        }
        None => None,
    };
    let unset = |pos: Pos, path: String| ModeAt { mode: MtlsMode::Unset, pos, path };
    let mode = match f.value("mtls") {
        Some((n, p)) => mtls(cx, n, &p).unwrap_or_else(|| {
            ok = false;
            unset(n.pos, p.clone())
        }),
        None => unset(spec.pos, "spec".into()),
    };
    let mut port_level = BTreeMap::new();
    if let Some((n, p)) = f.value("portLevelMtls") {
        if selector.is_none() {
            cx.error(n, &p, "`portLevelMtls` needs a `selector` (Istio refuses it on a namespace- or mesh-wide policy): add `selector.matchLabels` naming the workload, or set `mtls.mode` for all its ports");
            ok = false;
        }
        match &n.kind {
            Kind::Map(entries) => {
                for (key, value) in entries {
                    let name = key.as_scalar().unwrap_or("");
                    let path = join(&p, name);
                    let Some(port) = name.trim().parse::<u16>().ok().filter(|&n| n > 0) else {
                        cx.error(key, &path, format!("expected a port number between 1 and 65535 (the workload's own port), found {}", key.describe()));
                        ok = false;
                        continue;
                    };
                    if port_level.contains_key(&port) {
                        cx.error(key, &path, format!("duplicate port {port}"));
                        ok = false;
                        continue;
                    }
                    match mtls(cx, value, &path) {
                        Some(m) => {
                            port_level.insert(port, m);
                        }
                        None => ok = false,
                    }
                }
            }
            _ => {
                cx.error(
                    n,
                    &p,
                    format!("expected a mapping of port numbers to {{mode: ...}}, found {}", n.describe()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(PeerAuthentication { selector, mode, port_level })
}

/// A `{mode: ...}` mapping.
fn mtls(cx: &mut Cx, node: &Node, path: &str) -> Option<ModeAt> {
    let f = cx.fields(node, path, &MTLS)?;
    let Some((n, p)) = f.value("mode") else {
        return Some(ModeAt { mode: MtlsMode::Unset, pos: node.pos, path: path.to_string() });
    };
    let mode = match cx.one_of(n, &p, MODES, "")?.as_str() {
        "DISABLE" => MtlsMode::Disable,
        "PERMISSIVE" => MtlsMode::Permissive,
        "STRICT" => MtlsMode::Strict,
        _ => MtlsMode::Unset,
    };
    Some(ModeAt { mode, pos: n.pos, path: p })
}

/// Where a policy applies, by Istio's rules (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Mesh,
    Namespace,
    Workload,
}

/// One policy that applies to this workload, at its level, with the name it is shown by
/// (`<namespace>/<name>`) and the caller's index of it.
#[derive(Debug, Clone, Copy)]
pub struct Applicable<'a> {
    pub index: usize,
    pub name: &'a str,
    pub level: Level,
    pub policy: &'a PeerAuthentication,
}

/// What decided a port's mode: the mode and the policy that set it (`None`: Istio's default,
/// PERMISSIVE, no policy applying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    pub mode: MtlsMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The policies in force for this workload: at most one per level (the first of each level in
/// `applicable`, which is in load order); the others are returned to be reported.
#[derive(Debug, Default)]
pub struct Composed<'a> {
    chosen: [Option<Applicable<'a>>; 3],
    pub shadowed: Vec<(Applicable<'a>, &'a str)>,
}

/// Picks the policy of each level (Istio: the oldest; here, the first loaded).
pub fn compose<'a>(applicable: &[Applicable<'a>]) -> Composed<'a> {
    let mut out = Composed::default();
    for a in applicable {
        match &out.chosen[a.level as usize] {
            Some(first) => out.shadowed.push((*a, first.name)),
            None => out.chosen[a.level as usize] = Some(*a),
        }
    }
    out
}

impl Composed<'_> {
    /// The mode of inbound `port`: the workload policy's port-level mode, else the most
    /// specific level's mode that is not UNSET, else PERMISSIVE.
    pub fn mode(&self, port: u16) -> Decided {
        match self.deciding(port) {
            Some((a, m)) => Decided { mode: m.mode, by: Some(a.name.to_string()) },
            None => Decided { mode: MtlsMode::Permissive, by: None },
        }
    }

    /// The policy whose setting decides `port`'s mode, and where in it (to report against);
    /// `None`: no policy sets one, Istio's default applies.
    pub fn deciding(&self, port: u16) -> Option<(&Applicable<'_>, &ModeAt)> {
        if let Some(w) = &self.chosen[Level::Workload as usize] {
            if let Some(m) = w.policy.port_level.get(&port).filter(|m| m.mode != MtlsMode::Unset) {
                return Some((w, m));
            }
        }
        self.chosen
            .iter()
            .rev()
            .flatten()
            .find(|a| a.policy.mode.mode != MtlsMode::Unset)
            .map(|a| (a, &a.policy.mode))
    }

    /// The workload-level policy's port-level settings (with its index), to check each names
    /// an inbound port.
    pub fn port_levels(&self) -> impl Iterator<Item = (usize, u16, &ModeAt)> {
        self.chosen[Level::Workload as usize]
            .iter()
            .flat_map(|w| w.policy.port_level.iter().map(move |(p, m)| (w.index, *p, m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuthentication {
        let at = |mode| ModeAt { mode, pos: Pos::default(), path: String::new() };
        PeerAuthentication {
            selector: None,
            mode: at(mode),
            port_level: ports.iter().map(|&(p, m)| (p, at(m))).collect(),
        }
    }

    #[test]
    fn the_narrowest_level_that_sets_a_mode_decides_and_unset_inherits() {
        let mesh = policy(MtlsMode::Strict, &[]);
        let ns = policy(MtlsMode::Unset, &[]);
        let workload = policy(MtlsMode::Disable, &[(8080, MtlsMode::Unset), (9090, MtlsMode::Strict)]);
        let a = |name, level, policy| Applicable { index: 0, name, level, policy };
        // Nothing applies: PERMISSIVE, decided by no policy.
        assert_eq!(compose(&[]).mode(80), Decided { mode: MtlsMode::Permissive, by: None });
        // The namespace's UNSET inherits the mesh's STRICT.
        let c =
            compose(&[a("ns/default", Level::Namespace, &ns), a("istio-system/default", Level::Mesh, &mesh)]);
        assert_eq!(c.mode(80), Decided { mode: MtlsMode::Strict, by: Some("istio-system/default".into()) });
        // The workload's DISABLE wins; its port 9090 says STRICT; its port 8080 UNSET inherits
        // the workload's DISABLE, not the mesh's STRICT.
        let c = compose(&[
            a("istio-system/default", Level::Mesh, &mesh),
            a("ns/default", Level::Namespace, &ns),
            a("ns/checkout", Level::Workload, &workload),
        ]);
        assert_eq!(c.mode(80).mode, MtlsMode::Disable);
        assert_eq!(c.mode(8080).mode, MtlsMode::Disable);
        assert_eq!(c.mode(9090), Decided { mode: MtlsMode::Strict, by: Some("ns/checkout".into()) });
    }

    #[test]
    fn of_two_policies_at_one_level_the_first_decides_and_the_other_is_reported() {
        let strict = policy(MtlsMode::Strict, &[]);
        let disable = policy(MtlsMode::Disable, &[]);
        let a = |name, policy| Applicable { index: 0, name, level: Level::Namespace, policy };
        let c = compose(&[a("ns/first", &strict), a("ns/second", &disable)]);
        assert_eq!(c.mode(80).mode, MtlsMode::Strict);
        assert_eq!(c.shadowed.len(), 1);
        assert_eq!((c.shadowed[0].0.name, c.shadowed[0].1), ("ns/second", "ns/first"));
    }
}
