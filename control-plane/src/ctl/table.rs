//! Resources as aligned text tables (`sanectl get … -o table`), one row per
//! resource with the columns an operator scans for.

use crate::resource::{Kind, Resource};
use std::collections::BTreeMap;

/// Column headers and rows, printed aligned by [`Table::render`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// One row per item, as many cells as `header`.
    pub rows: Vec<Vec<String>>,
}

// === impl Table ===

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text: columns padded to their widest cell, two spaces
    /// apart, the last column unpadded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    let pad = widths.get(i).copied().unwrap_or(0);
                    out.push_str(&format!("{cell:<pad$}  "));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// The table of `resources`, all of `kind`, sorted by key.
pub fn resources(kind: Kind, resources: &[Resource]) -> Table {
    let mut sorted: Vec<&Resource> = resources.iter().collect();
    sorted.sort_by_key(|r| r.key());
    let mut t = match kind {
        Kind::Service => Table::new(&["NAMESPACE", "NAME", "PORTS", "ADDRESSES"]),
        Kind::Endpoint => Table::new(&[
            "NAMESPACE",
            "SERVICE",
            "ADDRESS",
            "PORT",
            "PROXY PORT",
            "IDENTITY",
            "LABELS",
        ]),
        Kind::Route => Table::new(&["NAMESPACE", "NAME", "SERVICE", "RULES", "DESTINATIONS"]),
        Kind::Policy => Table::new(&["NAMESPACE", "NAME", "SERVICE", "LOAD BALANCER"]),
        Kind::Authz => Table::new(&[
            "NAMESPACE",
            "NAME",
            "SERVICE",
            "ACTION",
            "RULES",
            "DRY RUN",
            "SELECTOR",
        ]),
        Kind::Telemetry => Table::new(&["NAMESPACE", "NAME", "TRACING", "ACCESS LOG"]),
        Kind::PeerAuthn => Table::new(&["NAMESPACE", "NAME", "SELECTOR", "MODE", "PORTS"]),
        Kind::Gateway => Table::new(&["NAMESPACE", "NAME", "SELECTOR", "LISTENERS", "HOSTS"]),
    };
    for r in sorted {
        let ns = r.namespace().to_string();
        let row = match r {
            Resource::Service(s) => vec![
                ns,
                s.name.clone(),
                s.ports
                    .iter()
                    .map(|p| {
                        let name = if p.name.is_empty() {
                            p.protocol().name()
                        } else {
                            &p.name
                        };
                        format!("{name}:{}/{}", p.port, p.protocol().name())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                dash(s.addresses.join(",")),
            ],
            Resource::Endpoint(e) => vec![
                ns,
                e.service.clone(),
                e.address.clone(),
                e.port.to_string(),
                e.proxy_port.to_string(),
                dash(e.identity.clone()),
                labels(&e.labels),
            ],
            Resource::Route(rt) => vec![
                ns,
                rt.name.clone(),
                rt.service.clone(),
                rt.rules.len().to_string(),
                rt.rules
                    .iter()
                    .flat_map(|rule| rule.destinations.iter())
                    .map(|d| {
                        let subset = if d.subset.is_empty() {
                            String::new()
                        } else {
                            format!("[{}]", labels(&d.subset))
                        };
                        format!("{}{subset}", d.service)
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ],
            Resource::Policy(p) => vec![
                ns,
                p.name.clone(),
                p.service.clone(),
                format!("{:?}", p.load_balancer()).to_lowercase(),
            ],
            Resource::Authz(a) => vec![
                ns,
                a.name.clone(),
                dash(a.service.clone()),
                format!("{:?}", a.action()).to_lowercase(),
                a.rules.len().to_string(),
                a.dry_run.to_string(),
                dash(labels(&a.selector)),
            ],
            Resource::Telemetry(t) => {
                let v = serde_json::to_value(t).unwrap_or_default();
                vec![
                    ns,
                    t.name.clone(),
                    on_off(&v["tracing"]),
                    on_off(&v["access_log"]),
                ]
            }
            Resource::PeerAuthn(p) => {
                let v = serde_json::to_value(p).unwrap_or_default();
                let ports = v["port_modes"].as_object().map(|m| {
                    m.iter()
                        .map(|(port, mode)| format!("{port}:{}", mode.as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(",")
                });
                vec![
                    ns,
                    p.name.clone(),
                    dash(labels(&p.selector)),
                    v["mode"].as_str().unwrap_or("?").to_string(),
                    dash(ports.unwrap_or_default()),
                ]
            }
            Resource::Gateway(g) => vec![
                ns,
                g.name.clone(),
                dash(labels(&g.selector)),
                dash(
                    g.listeners
                        .iter()
                        .map(|l| {
                            format!(
                                "{}={}{}",
                                l.name,
                                l.address,
                                if l.tls { "/tls" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                dash(
                    g.hosts
                        .iter()
                        .map(|h| h.hostname.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        };
        t.push(row);
    }
    t
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn on_off(v: &serde_json::Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        "set".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_rows_sort_by_key() {
        let svc = |name: &str| {
            Resource::Service(sane_xds_proto::Service {
                name: name.into(),
                ports: vec![sane_xds_proto::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let text = resources(Kind::Service, &[svc("web"), svc("backend")]).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAMESPACE  NAME     PORTS           ADDRESSES");
        assert_eq!(lines[1], "default    backend  http:8080/http  -");
        assert_eq!(lines[2], "default    web      http:8080/http  -");
    }
}
