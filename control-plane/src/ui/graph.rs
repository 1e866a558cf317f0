//! The service graph: nodes are services (and calling workloads that are no
//! service), edges carry what the callers' sidecars measured. Laid out in
//! columns by call depth and drawn as plain SVG.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::escape;

/// One node of the graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    /// Display name: `name.namespace` for services, the workload otherwise.
    pub name: String,
    /// False for a calling workload that is no registered service.
    pub service: bool,
}

/// Traffic from one node to another, from the source reporter's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Calling node's name.
    pub from: String,
    /// Called node's name.
    pub to: String,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests without a 5xx, 0–1 (none when idle).
    pub success: Option<f64>,
    /// 99th percentile latency in milliseconds (none when idle).
    pub p99_ms: Option<f64>,
}

/// Nodes and edges.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Every node, services first.
    pub nodes: BTreeSet<Node>,
    /// Every edge.
    pub edges: Vec<Edge>,
}

const COLUMN: usize = 420;
const ROW: usize = 90;
const MARGIN: usize = 40;
const BOX_W: usize = 170;
const BOX_H: usize = 34;

// === impl Graph ===

impl Graph {
    /// Column of each node: the longest chain of calls that reaches it
    /// (cycles are cut after as many rounds as there are nodes).
    fn columns(&self) -> BTreeMap<&str, usize> {
        let mut col: BTreeMap<&str, usize> =
            self.nodes.iter().map(|n| (n.name.as_str(), 0)).collect();
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for e in &self.edges {
                if e.from == e.to {
                    continue;
                }
                let next = col.get(e.from.as_str()).copied().unwrap_or(0) + 1;
                let to = col.entry(e.to.as_str()).or_insert(0);
                if next > *to && next < self.nodes.len().max(1) {
                    *to = next;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        col
    }

    /// The graph as an SVG element: a box per node (`data-node`), an arrow
    /// per edge (`data-edge="from->to"`) labelled with rate, success and p99.
    pub fn svg(&self) -> String {
        let col = self.columns();
        let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pos: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for node in &self.nodes {
            let c = col.get(node.name.as_str()).copied().unwrap_or(0);
            let r = rows.entry(c).or_insert(0);
            pos.insert(&node.name, (MARGIN + c * COLUMN, MARGIN + *r * ROW));
            *r += 1;
        }
        let width = MARGIN * 2 + (rows.len().max(1) - 1) * COLUMN + BOX_W;
        let height = MARGIN * 2 + rows.values().max().copied().unwrap_or(1).max(1) * ROW;
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" id="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="service graph">"##
        );
        s.push_str(
            r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>"##,
        );
        for e in &self.edges {
            let (Some(&(x1, y1)), Some(&(x2, y2))) =
                (pos.get(e.from.as_str()), pos.get(e.to.as_str()))
            else {
                continue;
            };
            let (ax, ay) = (x1 + BOX_W, y1 + BOX_H / 2);
            let (bx, by) = (x2, y2 + BOX_H / 2);
            let failing = e.success.is_some_and(|s| s < 0.99);
            let class = if failing { "edge failing" } else { "edge" };
            let label = edge_label(e);
            // The label sits just before the arrow head, above the line:
            // edges into different nodes never share it.
            let _ = write!(
                s,
                r##"<g class="{class}" data-edge="{}"><line x1="{ax}" y1="{ay}" x2="{bx}" y2="{by}" marker-end="url(#arrow)"/><text x="{}" y="{}">{}</text></g>"##,
                escape(&format!("{}->{}", e.from, e.to)),
                bx.saturating_sub(8),
                by.saturating_sub(8),
                escape(&label),
            );
        }
        for node in &self.nodes {
            let (x, y) = pos[node.name.as_str()];
            let class = if node.service {
                "node"
            } else {
                "node workload"
            };
            let _ = write!(
                s,
                r##"<g class="{class}" data-node="{name}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/><text x="{}" y="{}">{name}</text></g>"##,
                x + 10,
                y + 22,
                name = escape(&node.name),
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// `12.3 rps · 99.5 % · p99 4 ms`.
pub fn edge_label(e: &Edge) -> String {
    let mut label = format!("{:.1} rps", e.rps);
    if let Some(ok) = e.success {
        let _ = write!(label, " · {:.1} %", ok * 100.0);
    }
    if let Some(p99) = e.p99_ms {
        let _ = write!(label, " · p99 {p99:.0} ms");
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            service: true,
        }
    }

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            rps: 2.0,
            success: Some(0.5),
            p99_ms: Some(12.0),
        }
    }

    #[test]
    fn callers_come_before_what_they_call_and_cycles_end() {
        let g = Graph {
            nodes: ["a", "b", "c"].into_iter().map(node).collect(),
            edges: vec![edge("a", "b"), edge("b", "c"), edge("c", "b")],
        };
        let col = g.columns();
        assert_eq!(col["a"], 0);
        assert!(col["b"] >= 1 && col["c"] >= 1);
    }

    #[test]
    fn svg_names_every_node_and_edge_escaped() {
        let g = Graph {
            nodes: ["web", "<x>"].into_iter().map(node).collect(),
            edges: vec![edge("web", "<x>")],
        };
        let svg = g.svg();
        assert!(svg.contains(r#"data-node="web""#), "{svg}");
        assert!(svg.contains(r#"data-node="&lt;x&gt;""#), "{svg}");
        assert!(svg.contains(r#"data-edge="web-&gt;&lt;x&gt;""#), "{svg}");
        assert!(svg.contains("2.0 rps · 50.0 % · p99 12 ms"), "{svg}");
        assert!(svg.contains(r#"class="edge failing""#), "{svg}");
        assert!(!svg.contains("<x>"), "{svg}");
    }
}
