//! docs/protocol.md must name every error code, close code, client message
//! type and event kind the code has. Names are read from the code itself, so
//! adding a variant without documenting it fails here.

use flashcast::protocol::codes::{CloseCode, ErrorCode};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The wire names in the `kind()` match of `enum_name` in src/protocol/mod.rs
/// (`ClientMsg::Chat { .. } => "chat",`).
fn kinds(source: &str, enum_name: &str) -> Vec<String> {
    let prefix = format!("{enum_name}::");
    let names: Vec<String> = source
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&prefix) && l.contains("=> \""))
        .filter_map(|l| {
            l.split("=> \"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();
    assert!(
        names.len() > 10,
        "found too few {enum_name} kinds: {names:?}"
    );
    names
}

/// True if some table row of the doc starts with `cell`.
fn has_row(doc: &str, cell: &str) -> bool {
    doc.lines().any(|l| l.starts_with(cell))
}

#[test]
fn every_code_type_and_kind_is_documented() {
    let doc = read("docs/protocol.md");
    let source = read("src/protocol/mod.rs");
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        if !has_row(&doc, &format!("| `{}` |", code.as_str())) {
            missing.push(format!("error code {}", code.as_str()));
        }
    }
    for code in CloseCode::ALL {
        if !has_row(&doc, &format!("| {} | `{}` |", code.code(), code.reason())) {
            missing.push(format!("close code {} ({})", code.code(), code.reason()));
        }
    }
    for kind in kinds(&source, "ClientMsg") {
        if kind != "unknown" && !has_row(&doc, &format!("| `{kind}` |")) {
            missing.push(format!("client message {kind}"));
        }
    }
    for kind in kinds(&source, "EventBody") {
        if !has_row(&doc, &format!("| `{kind}` |")) {
            missing.push(format!("event kind {kind}"));
        }
    }
    for server_msg in ["joined", "batch", "error", "ack", "pong"] {
        if !doc.contains(&format!("### `{server_msg}`")) {
            missing.push(format!("server message {server_msg}"));
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md lacks: {missing:#?}");
}
