//! `bulkhead graph`: the effective reachability graph as a table, JSON or DOT.

use crate::cli::GraphFormat;
use anyhow::Result;
use bulkhead_core::{EdgeView, Snapshot};
use std::fmt::Write;

/// Render the graph of `s` in `format`.
pub fn render(s: &Snapshot, format: GraphFormat) -> Result<String> {
    let view = s.graph_view();
    Ok(match format {
        GraphFormat::Json => format!("{}\n", serde_json::to_string_pretty(&view)?),
        GraphFormat::Table => table(&view.edges),
        GraphFormat::Dot => dot(&view.edges),
    })
}

fn table(edges: &[EdgeView]) -> String {
    let header = [
        "LISTENER",
        "ZONE",
        "TENANT",
        "ROUTE",
        "GROUP",
        "GROUP ZONE",
        "ALLOWED",
        "REQUIRES",
        "WHY",
    ];
    let rows: Vec<[String; 9]> = edges
        .iter()
        .map(|e| {
            let mut requires = Vec::new();
            if let Some(a) = &e.auth {
                requires.push(format!("auth:{a}"));
            }
            if let Some(svcs) = &e.requires {
                requires.push(format!("services:{}", svcs.join("|")));
            }
            [
                e.listener.clone(),
                e.zone.clone(),
                e.tenant.clone(),
                e.route
                    .clone()
                    .or_else(|| e.sni.as_ref().map(|s| format!("sni:{s}")))
                    .unwrap_or_else(|| "-".into()),
                e.group.clone(),
                e.group_zone.clone(),
                if e.allowed { "yes" } else { "NO" }.into(),
                if requires.is_empty() {
                    "-".into()
                } else {
                    requires.join(" ")
                },
                e.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(s, "{c:<w$}  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    let allowed = edges.iter().filter(|e| e.allowed).count();
    let _ = writeln!(
        out,
        "{} edges: {allowed} allowed, {} denied",
        edges.len(),
        edges.len() - allowed
    );
    out
}

fn dot(edges: &[EdgeView]) -> String {
    let mut out = String::from("digraph bulkhead {\n  rankdir=LR;\n  node [shape=box];\n");
    for e in edges {
        let label = e
            .route
            .clone()
            .or_else(|| e.sni.clone())
            .unwrap_or_else(|| "forward".into());
        let style = if e.allowed {
            "solid"
        } else {
            "dashed, color=red"
        };
        let _ = writeln!(
            out,
            "  \"listener {} ({})\" -> \"{} ({})\" [label=\"{}: {}\", style={style}];",
            esc(&e.listener),
            esc(&e.zone),
            esc(&e.group),
            esc(&e.group_zone),
            esc(&e.tenant),
            esc(&label)
        );
    }
    out.push_str("}\n");
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
