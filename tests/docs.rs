//! The operator guide (`docs/`) checked against the code.
//!
//! - `docs/configuration.md` lists exactly the fields the two config parsers accept. The field
//!   names come from the parsers themselves: every config struct has
//!   `#[serde(deny_unknown_fields)]`, so a field `zz_unknown` at any level is refused with
//!   "unknown field `zz_unknown`, expected one of a, b, c". Asking at the top level, and again
//!   inside every field that turns out to be a struct (or a list or map of structs), walks the
//!   whole tree. The gateway's config is parsed in-process (`Config::parse`); `signer-tunnel` is
//!   not a dependency of this package, so its config goes through the binary
//!   (`signer-tunnel --config FILE check`, which exits 64 on a config error before connecting
//!   anywhere; with an identity file that does not exist, an accepted config also stops there).
//! - The defaults written in that page are the real ones: for the gateway, a config with every
//!   documented default spelled out parses to the same `Config` as one that leaves them out; for
//!   `signer-tunnel`, such a config is accepted.
//! - `docs/metrics.md` documents every metric of `gateway/src/metrics.rs` (type and labels) and
//!   every alert of `deploy/prometheus/alerts.yaml` (with its severity), and names no metric or
//!   alert that does not exist; no page of `docs/` names a metric that does not exist.
//! - Relative links between the pages, and to files of the repository, resolve.
//! - `deploy/pi/install.sh` passes `bash -n` (and shellcheck when installed), installs into a
//!   fake root with `--prefix`, is idempotent, refuses a binary that does not run, and changes
//!   nothing with `--dry-run`.
//!
//! Needs the `signer-tunnel` binary: `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::tunnel_harness::tunnel_bin;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// A tiny YAML tree: enough to build configs with a value at any path.

#[derive(Debug, Clone)]
enum Y {
    /// YAML text written as is (`3s`, `[block]`, `""`).
    Raw(String),
    Map(Vec<(String, Y)>),
    List(Vec<Y>),
}

/// One step of a field path: `name`, `[]` (an element of a list), `<key>` (a value of a map).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Field(String),
    Item,
    Entry,
}

/// The map key used for `<key>` steps when a map has none yet: a valid tz address, so that the
/// gateway's policy validation accepts it.
const ENTRY_KEY: &str = "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx";
const PROBE: &str = "zz_unknown";

fn raw(s: &str) -> Y {
    Y::Raw(s.to_string())
}

fn map(entries: &[(&str, Y)]) -> Y {
    Y::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

/// `signers[].tunnel.keys` → [signers, [], tunnel, keys]; `policy.keys.<pkh>.kinds` →
/// [policy, keys, <>, kinds].
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        if part.starts_with('<') && part.ends_with('>') {
            segs.push(Seg::Entry);
        } else if let Some(name) = part.strip_suffix("[]") {
            segs.push(Seg::Field(name.to_string()));
            segs.push(Seg::Item);
        } else {
            segs.push(Seg::Field(part.to_string()));
        }
    }
    segs
}

/// The inverse of [`parse_path`], with `<key>` for map values (whatever the page calls them).
fn render_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Seg::Item => out.push_str("[]"),
            Seg::Entry => out.push_str(".<key>"),
        }
    }
    out
}

/// Put `value` at `path`, creating maps and lists on the way (a list gets one element, a map
/// entry is the first existing one or [`ENTRY_KEY`]); whatever was there is replaced.
fn set(node: &mut Y, path: &[Seg], value: Y) {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    let child = match first {
        Seg::Field(_) | Seg::Entry => {
            if !matches!(node, Y::Map(_)) {
                *node = Y::Map(Vec::new());
            }
            let Y::Map(entries) = node else { unreachable!() };
            let key = match first {
                Seg::Field(name) => name.clone(),
                _ => entries
                    .first()
                    .map_or_else(|| ENTRY_KEY.to_string(), |(k, _)| k.clone()),
            };
            let i = match entries.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    entries.push((key, Y::Map(Vec::new())));
                    entries.len() - 1
                }
            };
            &mut entries[i].1
        }
        Seg::Item => {
            if !matches!(node, Y::List(_)) {
                *node = Y::List(Vec::new());
            }
            let Y::List(items) = node else { unreachable!() };
            if items.is_empty() {
                items.push(Y::Map(Vec::new()));
            }
            &mut items[0]
        }
    };
    set(child, rest, value);
}

/// Is there a value at `path`?
fn has(node: &Y, path: &[Seg]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match (first, node) {
        (Seg::Field(name), Y::Map(entries)) => entries.iter().any(|(k, v)| k == name && has(v, rest)),
        (Seg::Entry, Y::Map(entries)) => entries.first().is_some_and(|(_, v)| has(v, rest)),
        (Seg::Item, Y::List(items)) => items.first().is_some_and(|v| has(v, rest)),
        _ => false,
    }
}

fn emit_map(entries: &[(String, Y)], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in entries {
        match v {
            Y::Raw(r) => writeln!(out, "{pad}{k}: {r}").unwrap(),
            Y::Map(m) if m.is_empty() => writeln!(out, "{pad}{k}: {{}}").unwrap(),
            Y::List(l) if l.is_empty() => writeln!(out, "{pad}{k}: []").unwrap(),
            Y::Map(m) => {
                writeln!(out, "{pad}{k}:").unwrap();
                emit_map(m, indent + 2, out);
            }
            Y::List(l) => {
                writeln!(out, "{pad}{k}:").unwrap();
                emit_list(l, indent + 2, out);
            }
        }
    }
}

fn emit_list(items: &[Y], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Y::Raw(r) => writeln!(out, "{pad}- {r}").unwrap(),
            Y::Map(m) if m.is_empty() => writeln!(out, "{pad}- {{}}").unwrap(),
            Y::List(l) if l.is_empty() => writeln!(out, "{pad}- []").unwrap(),
            Y::Map(m) => {
                // The map's first line goes after the dash.
                let mut body = String::new();
                emit_map(m, indent + 2, &mut body);
                write!(out, "{pad}- {}", &body[indent + 2..]).unwrap();
            }
            Y::List(l) => {
                writeln!(out, "{pad}-").unwrap();
                emit_list(l, indent + 2, out);
            }
        }
    }
}

fn to_yaml(doc: &Y) -> String {
    let Y::Map(entries) = doc else {
        panic!("a config is a map: {doc:?}")
    };
    let mut out = String::new();
    emit_map(entries, 0, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Asking the parsers for their fields.

/// A config parser: `Ok` when the text is accepted, else the error text.
type Parse<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// The field names serde lists after "unknown field `zz_unknown`, expected …", in either the
/// serde-saphyr form (`one of a, b, c`) or serde's own (`` `a` or `b` ``, `` one of `a`, `b` ``).
fn expected_fields(error: &str) -> Option<Vec<String>> {
    let marker = format!("unknown field `{PROBE}`, expected ");
    let start = error.find(&marker)? + marker.len();
    let line = error[start..].lines().next().unwrap_or_default();
    let list = line.strip_prefix("one of ").unwrap_or(line).replace('`', "");
    let fields: Vec<String> = list
        .split(", ")
        .flat_map(|s| s.split(" or "))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Some(fields)
}

/// The fields of the struct at `at`, or `None` when what lives there is not a struct.
fn fields_at(parse: Parse<'_>, base: &Y, at: &[Seg]) -> Option<Vec<String>> {
    let mut doc = base.clone();
    let mut path = at.to_vec();
    path.push(Seg::Field(PROBE.into()));
    set(&mut doc, &path, raw("1"));
    let yaml = to_yaml(&doc);
    match parse(&yaml) {
        Ok(()) => panic!(
            "a config with an unknown field at `{}` was accepted: does that struct lack \
             #[serde(deny_unknown_fields)]?\n{yaml}",
            render_path(&path)
        ),
        Err(e) => expected_fields(&e),
    }
}

/// Every field path the parser accepts, containers included (`ssh`, `signers`, `policy.keys`).
fn discover(parse: Parse<'_>, base: &Y) -> BTreeSet<String> {
    fn walk(parse: Parse<'_>, base: &Y, at: Vec<Seg>, out: &mut BTreeSet<String>) {
        let fields =
            fields_at(parse, base, &at).unwrap_or_else(|| panic!("`{}` was expected to be a struct", render_path(&at)));
        assert!(!fields.is_empty(), "no fields listed at `{}`", render_path(&at));
        for field in fields {
            let mut path = at.clone();
            path.push(Seg::Field(field));
            out.insert(render_path(&path));
            // A struct, a list of structs, or a map of structs: look inside.
            for inner in [None, Some(Seg::Item), Some(Seg::Entry)] {
                let mut sub = path.clone();
                sub.extend(inner);
                if fields_at(parse, base, &sub).is_some() {
                    walk(parse, base, sub, out);
                    break;
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(parse, base, Vec::new(), &mut out);
    out
}

fn parse_gateway(yaml: &str) -> Result<(), String> {
    signer_gateway::config::Config::parse(yaml)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `signer-tunnel --config <yaml> check`. The identity in every config used here does not exist:
/// an accepted config stops at loading it (exit 64, "identity key …"), so nothing connects.
fn parse_tunnel(dir: &Path) -> impl Fn(&str) -> Result<(), String> + '_ {
    let bin = tunnel_bin().expect("signer-tunnel binary");
    let counter = std::cell::Cell::new(0u32);
    move |yaml: &str| {
        counter.set(counter.get() + 1);
        let file = dir.join(format!("probe-{}.yaml", counter.get()));
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&file)
            .arg("check")
            .env("RUST_LOG", "error")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(64),
            "signer-tunnel check should stop at the config or the identity:\n{yaml}\n{stderr}"
        );
        if stderr.contains("signer-tunnel: config ") {
            Err(stderr)
        } else {
            assert!(
                stderr.contains("identity key"),
                "unexpected exit 64 (neither config nor identity):\n{stderr}"
            );
            Ok(())
        }
    }
}

/// A valid gateway config with every section whose fields have defaults present but empty.
fn gateway_base() -> Y {
    map(&[
        (
            "watermark",
            map(&[("dir", raw("/nonexistent/zz-docs-test/watermarks"))]),
        ),
        (
            "signers",
            Y::List(vec![map(&[("name", raw("a")), ("address", raw("'h:1'"))])]),
        ),
        ("ssh", map(&[("host_key", raw("/nonexistent/zz-docs-test/host_key"))])),
        ("socket_api", map(&[("listen", raw("'127.0.0.1:7732'"))])),
        ("policy", map(&[("keys", map(&[(ENTRY_KEY, map(&[]))]))])),
    ])
}

fn tunnel_base() -> Y {
    map(&[
        ("gateways", Y::List(vec![raw("'127.0.0.1:1'")])),
        ("host_key", raw("'SHA256:Kwu6ZfMSPMaaXmY+vMHYeSb37lRVBsLMTWXTz+6dzBE'")),
        ("identity", raw("/nonexistent/zz-docs-test/id_ed25519")),
    ])
}

// ---------------------------------------------------------------------------------------------
// Reading the pages.

/// One row of a field table: `| `path` | type | default | meaning |`.
#[derive(Debug)]
struct Row {
    path: String,
    default: String,
    line: usize,
}

const GATEWAY_SECTION: &str = "## signer-gateway: gateway.yaml";
const TUNNEL_SECTION: &str = "## signer-tunnel: config.yaml";

/// The text under the `## ` heading `heading`, up to the next `## ` heading, with the line
/// number of its first line.
fn section<'a>(doc: &'a str, heading: &str) -> (usize, Vec<&'a str>) {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading {heading:?}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    (start + 1, lines[start..end].to_vec())
}

/// Cells of a table row (without the outer pipes).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The text of a cell made of exactly one code span, e.g. `` `3s` `` → `3s`.
fn code_only(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

fn field_rows(doc: &str, heading: &str) -> Vec<Row> {
    let (first_line, lines) = section(doc, heading);
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("| `") {
            continue;
        }
        let c = cells(line);
        let line_no = first_line + i;
        assert_eq!(c.len(), 4, "line {line_no}: a field row has 4 cells: {line}");
        let path = code_only(&c[0])
            .unwrap_or_else(|| panic!("line {line_no}: the first cell is one `field.path`: {line}"))
            .to_string();
        rows.push(Row {
            path,
            default: c[2].clone(),
            line: line_no,
        });
    }
    rows
}

/// Compare the page's paths with the parser's; `<pkh>` and friends match any `<key>`.
fn assert_same_fields(what: &str, documented: &[Row], real: &BTreeSet<String>) {
    let mut seen = BTreeMap::new();
    for row in documented {
        let normal = render_path(&parse_path(&row.path));
        if let Some(before) = seen.insert(normal.clone(), row.line) {
            panic!(
                "{what}: `{}` is documented twice (lines {before} and {})",
                row.path, row.line
            );
        }
    }
    let documented: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<_> = real.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(real).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what} in docs/configuration.md does not match the parser.\n\
         fields the parser accepts but the page does not document: {missing:?}\n\
         fields the page documents but the parser does not accept: {unknown:?}\n\
         (the parser's fields: {real:?})"
    );
}

/// Set every documented default written as one code span, except where the base config already
/// has a value. Returns the config and how many defaults were set.
fn with_documented_defaults(base: &Y, rows: &[Row]) -> (Y, usize) {
    let mut doc = base.clone();
    let mut applied = 0;
    for row in rows {
        let Some(value) = code_only(&row.default) else {
            continue;
        };
        let path = parse_path(&row.path);
        // A field of an optional section the base leaves out (`watermark.etcd.*` on the file
        // store) is checked with a base that has the section.
        let absent_section = path.len() > 2 && !has(base, &path[..path.len() - 1]);
        if has(base, &path) || absent_section {
            continue;
        }
        set(&mut doc, &path, raw(value));
        applied += 1;
    }
    (doc, applied)
}

// ---------------------------------------------------------------------------------------------
// Configuration reference

#[test]
fn configuration_reference_lists_exactly_the_gateway_fields() {
    let real = discover(&parse_gateway, &gateway_base());
    for must in [
        "api.listen",
        "ssh.keepalive_interval",
        "signers[].tunnel.keys",
        "policy.keys.<key>.allow_generic",
    ] {
        assert!(real.contains(must), "discovery missed {must}: {real:?}");
    }
    let doc = read("docs/configuration.md");
    assert_same_fields("signer-gateway", &field_rows(&doc, GATEWAY_SECTION), &real);
}

#[test]
fn configuration_reference_has_the_gateway_defaults() {
    let doc = read("docs/configuration.md");
    let rows = field_rows(&doc, GATEWAY_SECTION);
    let applied = assert_documented_defaults(&gateway_base(), &rows);
    assert!(
        applied >= 25,
        "only {applied} documented defaults found: is the table format intact?"
    );
    // The etcd store's section, on a base that uses it.
    let mut etcd_base = gateway_base();
    set(
        &mut etcd_base,
        &parse_path("watermark"),
        map(&[
            ("backend", raw("etcd")),
            ("etcd", map(&[("endpoints", raw("['http://127.0.0.1:2379']"))])),
        ]),
    );
    let with_etcd = assert_documented_defaults(&etcd_base, &rows);
    // `watermark.backend` is set in this base; `etcd.prefix` and `etcd.request_timeout` are new.
    assert_eq!(
        with_etcd,
        applied + 1,
        "the watermark.etcd defaults were not all checked"
    );
}

/// Parse `base` as is and with every documented default written out: the two must be the same
/// config. Returns how many defaults were written.
fn assert_documented_defaults(base: &Y, rows: &[Row]) -> usize {
    let (full, applied) = with_documented_defaults(base, rows);
    let parsed = |y: &Y| {
        let yaml = to_yaml(y);
        match signer_gateway::config::Config::parse(&yaml) {
            Ok(s) => format!("{:#?}", s.config),
            Err(e) => panic!("{e}\n{yaml}"),
        }
    };
    let (implicit, explicit) = (parsed(base), parsed(&full));
    if implicit != explicit {
        let differ: Vec<String> = implicit
            .lines()
            .zip(explicit.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  real default: {}\n  documented:   {}", a.trim(), b.trim()))
            .collect();
        panic!(
            "a default in docs/configuration.md is not the real one:\n{}\n--- config with the documented defaults:\n{}",
            differ.join("\n"),
            to_yaml(&full)
        );
    }
    applied
}

#[test]
fn configuration_reference_lists_exactly_the_tunnel_fields() {
    let dir = tempfile::tempdir().unwrap();
    let parse = parse_tunnel(dir.path());
    let real = discover(&parse, &tunnel_base());
    for must in [
        "gateways",
        "uplinks[].interface",
        "backoff.initial",
        "health_check.fall",
    ] {
        assert!(real.contains(must), "discovery missed {must}: {real:?}");
    }
    let doc = read("docs/configuration.md");
    let rows = field_rows(&doc, TUNNEL_SECTION);
    assert_same_fields("signer-tunnel", &rows, &real);

    // The documented defaults, all spelled out, make a config the tunnel client accepts.
    let (full, applied) = with_documented_defaults(&tunnel_base(), &rows);
    assert!(
        applied >= 15,
        "only {applied} documented defaults found: is the table format intact?"
    );
    if let Err(e) = parse(&to_yaml(&full)) {
        panic!(
            "the documented signer-tunnel defaults are refused:\n{e}\n{}",
            to_yaml(&full)
        );
    }
}

#[test]
fn the_probe_format_is_what_serde_saphyr_prints() {
    // If serde-saphyr changes its message, discovery would find nothing: say so plainly.
    let e = parse_gateway(&format!("{PROBE}: 1\nwatermark: {{dir: /x}}\nsigners: []\n")).unwrap_err();
    let fields = expected_fields(&e).unwrap_or_else(|| panic!("unexpected unknown-field message: {e}"));
    assert!(
        fields.iter().any(|f| f == "watermark") && fields.iter().any(|f| f == "signers"),
        "{e}"
    );
    assert_eq!(
        expected_fields("unknown field `zz_unknown`, expected `a` or `b`"),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(
        expected_fields("x: unknown field `zz_unknown`, expected one of `a`, `b`, `c`\n  --> 1:1"),
        Some(vec!["a".to_string(), "b".to_string(), "c".to_string()])
    );
    let mut doc = gateway_base();
    set(&mut doc, &parse_path("signers[].tunnel.keys"), raw("[]"));
    set(&mut doc, &parse_path("policy.keys.<pkh>.kinds"), raw("[block]"));
    let yaml = to_yaml(&doc);
    assert!(
        yaml.contains("  - name: a\n    address: 'h:1'\n    tunnel:\n      keys: []\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("    {ENTRY_KEY}:\n      kinds: [block]\n")),
        "{yaml}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics and alerts reference

#[derive(Debug)]
struct MetricDef {
    name: String,
    kind: &'static str,
    labels: BTreeSet<String>,
}

/// Every metric registered in `gateway/src/metrics.rs`, read from its source: each
/// `"signer_gateway_…"` literal, the kind from its constructor, the labels from its `&["…"]`.
fn metric_defs() -> Vec<MetricDef> {
    let src = read("gateway/src/metrics.rs");
    let mut defs = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find("\"signer_gateway_") {
        let at = from + i + 1;
        let end = at + src[at..].find('"').unwrap();
        let name = src[at..end].to_string();
        let stmt_start = src[..at].rfind("let ").expect("metric defined in a let statement");
        let stmt_end = end + src[end..].find(")?;").expect("statement ends with `)?;`");
        let stmt = &src[stmt_start..stmt_end];
        let kind = if stmt.contains("counter(") || stmt.contains("IntCounter") {
            "counter"
        } else if stmt.contains("Histogram") {
            "histogram"
        } else if stmt.contains("Gauge") {
            "gauge"
        } else {
            panic!("cannot tell the kind of {name}: {stmt}")
        };
        let labels = match stmt.find("&[\"") {
            Some(l) => {
                let list = &stmt[l + 2..];
                let list = &list[..list.find(']').unwrap()];
                list.split(',')
                    .map(|s| s.trim().trim_matches('"').to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            None => BTreeSet::new(),
        };
        defs.push(MetricDef { name, kind, labels });
        from = stmt_end;
    }
    assert!(defs.len() >= 15, "only {} metrics found in metrics.rs", defs.len());
    defs
}

/// `(alert name, severity)` of every rule in `deploy/prometheus/alerts.yaml`.
fn alerts() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/alerts.yaml");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some(sev) = t.strip_prefix("severity:") {
            if let Some(last) = out.last_mut() {
                last.1 = sev.trim().trim_matches('"').to_string();
            }
        }
    }
    assert!(out.len() >= 5, "only {} alerts found", out.len());
    for (name, sev) in &out {
        assert!(!sev.is_empty(), "alert {name} has no severity label");
    }
    out
}

/// Words made of `[A-Za-z0-9_]` that start with `prefix`.
fn tokens_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let at = from + i;
        let before = text[..at].chars().next_back();
        let end = at
            + text[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - at);
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(text[at..end].to_string());
        }
        from = end.max(at + 1);
    }
    out
}

#[test]
fn metrics_reference_documents_every_metric() {
    let doc = read("docs/metrics.md");
    let defs = metric_defs();
    for def in &defs {
        let prefix = format!("| `{}` |", def.name);
        let row = doc
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("docs/metrics.md has no table row for {}", def.name));
        let c = cells(row);
        assert!(
            c.len() >= 4,
            "row of {}: metric | type | labels | meaning: {row}",
            def.name
        );
        assert_eq!(c[1], def.kind, "type of {} in docs/metrics.md", def.name);
        let labels = tokens_in_code(&c[2]);
        assert_eq!(labels, def.labels, "labels of {} in docs/metrics.md", def.name);
    }
    // No page names a metric that does not exist (histogram series suffixes allowed).
    let names: BTreeSet<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    for page in doc_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for token in tokens_with_prefix(&text, "signer_gateway_") {
            if token.ends_with('_') {
                continue; // "signer_gateway_*"
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| token.strip_suffix(s).filter(|b| names.contains(b)))
                .unwrap_or(&token);
            assert!(
                names.contains(base),
                "{} names a metric that does not exist: {token}",
                page.display()
            );
        }
    }
}

/// The code spans of a cell: `` `signer`, `kind` `` → {signer, kind}.
fn tokens_in_code(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

#[test]
fn metrics_reference_documents_every_alert() {
    let doc = read("docs/metrics.md");
    let alerts = alerts();
    for (name, severity) in &alerts {
        let prefix = format!("### `{name}`");
        let heading = doc
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("docs/metrics.md has no `### `{name}`` section"));
        assert!(
            heading.contains(severity.as_str()),
            "the heading of {name} should give its severity ({severity}): {heading}"
        );
    }
    let names: BTreeSet<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    for token in tokens_with_prefix(&doc, "SignerGateway") {
        assert!(
            names.contains(token.as_str()),
            "docs/metrics.md names an alert that does not exist: {token}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Links

fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    assert!(pages.len() >= 7, "docs/ has {} pages", pages.len());
    pages
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn links_between_pages_and_to_the_repository_resolve() {
    let mut broken = Vec::new();
    for page in doc_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut from = 0;
        while let Some(i) = text[from..].find("](") {
            let start = from + i + 2;
            let end = start + text[start..].find(')').unwrap();
            from = end;
            let target = &text[start..end];
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target, None),
            };
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            // Headings are checked in the guide's own pages; elsewhere only that the file exists.
            let in_docs = file.is_empty() || !file.contains('/');
            if let Some(frag) = frag.filter(|_| in_docs && resolved.extension().is_some_and(|e| e == "md")) {
                let targets = anchors(&std::fs::read_to_string(&resolved).unwrap());
                if !targets.contains(frag) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// deploy/pi/install.sh

fn install_sh() -> PathBuf {
    repo().join("deploy/pi/install.sh")
}

fn run_install(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(install_sh())
        .args(args)
        .output()
        .expect("running bash");
    eprintln!(
        "install.sh {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_is_valid_bash() {
    let out = Command::new("bash").arg("-n").arg(install_sh()).output().unwrap();
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match Command::new("shellcheck").arg(install_sh()).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => testkit::harness::skip_unless_ci(
            "install_script lint",
            "shellcheck is not installed (Debian: shellcheck): only `bash -n` was checked",
        ),
    }
}

#[test]
fn install_script_installs_into_a_prefix_and_is_idempotent() {
    let bin = tunnel_bin().expect("signer-tunnel binary");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let root_s = root.to_str().unwrap();
    let bin_s = bin.to_str().unwrap();

    let out = run_install(&["--prefix", root_s, bin_s]);
    assert!(out.status.success(), "first install failed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();

    let etc = root.join("etc/signer-tunnel");
    let installed = root.join("usr/bin/signer-tunnel");
    let identity = etc.join("id_ed25519");
    let config = etc.join("config.yaml");
    let unit = root.join("etc/systemd/system/signer-tunnel.service");
    assert_eq!(mode(&etc), 0o750, "/etc/signer-tunnel mode");
    assert_eq!(mode(&installed), 0o755, "binary mode");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&bin).unwrap(),
        "binary content"
    );
    assert_eq!(mode(&identity), 0o600, "identity mode");
    assert_eq!(mode(&config), 0o640, "config mode");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        read("deploy/systemd/signer-tunnel.service"),
        "installed unit"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        read("deploy/examples/signer-tunnel.yaml"),
        "installed config"
    );
    let public = std::fs::read_to_string(etc.join("id_ed25519.pub")).unwrap();
    let public = public.trim();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert!(
        stdout.contains(public),
        "the public line is printed for the gateway config:\n{stdout}"
    );
    let key_before = std::fs::read(&identity).unwrap();

    // Again, after the operator edited the config: nothing is overwritten, the key stays.
    let edited = format!(
        "{}\n# edited by the operator\n",
        read("deploy/examples/signer-tunnel.yaml")
    );
    std::fs::write(&config, &edited).unwrap();
    let out = run_install(&["--prefix", root_s, bin_s]);
    assert!(out.status.success(), "second install failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        std::fs::read(&identity).unwrap(),
        key_before,
        "the identity was replaced"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "the config was overwritten"
    );
    assert!(
        stdout.contains(public),
        "the existing public line is printed again:\n{stdout}"
    );
    assert!(stdout.contains("exists: kept"), "{stdout}");
}

#[test]
fn install_script_dry_run_changes_nothing() {
    let bin = tunnel_bin().expect("signer-tunnel binary");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = run_install(&["--dry-run", "--prefix", root.to_str().unwrap(), bin.to_str().unwrap()]);
    assert!(out.status.success(), "dry run failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("would run: install -D -m 0755"), "{stdout}");
    assert!(stdout.contains("keygen --out"), "{stdout}");
    assert!(!root.exists(), "--dry-run created {}", root.display());
}

#[test]
fn install_script_refuses_a_binary_that_does_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("signer-tunnel");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot execute binary file: Exec format error' >&2\nexit 126\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    let out = run_install(&["--prefix", root.to_str().unwrap(), fake.to_str().unwrap()]);
    assert!(!out.status.success(), "a binary that does not run was installed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not run on this machine"));
    assert!(!root.join("usr/bin/signer-tunnel").exists(), "installed anyway");
}
