//! The `--json` output of every subcommand against its schema in `schemas/`: clean and
//! damaged copies of the committed fixtures, dry runs and real runs. The schemas are the
//! documentation of the shapes (see schemas/README.md), so they are checked too: every
//! property has a description, and a schema keyword the small validator below does not
//! implement is an error rather than silently unchecked.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::cli::{self, fixture_src, Run};
use support::cyrus::copy_tree;

// ---------------------------------------------------------------------------------------
// A JSON Schema (draft 2020-12) validator for exactly the keywords the schemas use.

/// Keywords that only annotate or hold definitions; they never fail a document.
const ANNOTATIONS: &[&str] = &["$schema", "title", "description", "$defs"];
/// Keywords the validator checks.
const ASSERTIONS: &[&str] = &[
    "$ref",
    "type",
    "enum",
    "minimum",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "oneOf",
];
const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Every way `doc` fails `schema` (empty: valid). `root` resolves `#/$defs/NAME` refs.
fn validate(root: &Value, schema: &Value, doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(root, schema, doc, "$", &mut errors);
    errors
}

fn check(root: &Value, schema: &Value, doc: &Value, at: &str, errors: &mut Vec<String>) {
    let obj = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errors.push(format!("{at}: not allowed here")),
        Value::Object(o) => o,
        _ => return errors.push(format!("{at}: schema is not an object or boolean")),
    };
    for key in obj.keys() {
        if !ANNOTATIONS.contains(&key.as_str()) && !ASSERTIONS.contains(&key.as_str()) {
            errors.push(format!("{at}: schema keyword {key:?} is not implemented"));
        }
    }
    if let Some(r) = obj.get("$ref") {
        match resolve(root, r) {
            Ok(target) => check(root, target, doc, at, errors),
            Err(e) => errors.push(format!("{at}: {e}")),
        }
    }
    if let Some(t) = obj.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        if !names
            .iter()
            .any(|n| n.as_str().is_some_and(|n| has_type(doc, n)))
        {
            errors.push(format!("{at}: {doc} is not of type {t}"));
        }
    }
    if let Some(e) = obj.get("enum") {
        match e.as_array() {
            Some(values) if values.contains(doc) => {}
            Some(_) => errors.push(format!("{at}: {doc} is not one of {e}")),
            None => errors.push(format!("{at}: enum is not an array")),
        }
    }
    if let (Some(min), Some(n)) = (obj.get("minimum"), doc.as_f64()) {
        match min.as_f64() {
            Some(m) if n >= m => {}
            Some(m) => errors.push(format!("{at}: {doc} is below the minimum {m}")),
            None => errors.push(format!("{at}: minimum is not a number")),
        }
    }
    if let Some(items) = obj.get("items") {
        for (i, item) in doc.as_array().into_iter().flatten().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(branches) = obj.get("oneOf") {
        let Some(branches) = branches.as_array() else {
            return errors.push(format!("{at}: oneOf is not an array"));
        };
        let failures: Vec<Vec<String>> = branches
            .iter()
            .map(|b| {
                let mut e = Vec::new();
                check(root, b, doc, at, &mut e);
                e
            })
            .collect();
        let matched = failures.iter().filter(|e| e.is_empty()).count();
        if matched != 1 {
            errors.push(format!(
                "{at}: matches {matched} of the oneOf branches, not exactly one: {failures:?}"
            ));
        }
    }
    if let Some(map) = doc.as_object() {
        check_object(root, obj, map, at, errors);
    }
}

fn check_object(
    root: &Value,
    schema: &serde_json::Map<String, Value>,
    map: &serde_json::Map<String, Value>,
    at: &str,
    errors: &mut Vec<String>,
) {
    let props = schema.get("properties").and_then(Value::as_object);
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap_or_default();
        if !map.contains_key(name) {
            errors.push(format!("{at}: required property {name:?} is missing"));
        }
    }
    for (key, value) in map {
        let here = format!("{at}.{key}");
        if let Some(names) = schema.get("propertyNames") {
            check(root, names, &Value::String(key.clone()), &here, errors);
        }
        match props.and_then(|p| p.get(key)) {
            Some(sub) => check(root, sub, value, &here, errors),
            None => {
                if let Some(extra) = schema.get("additionalProperties") {
                    check(root, extra, value, &here, errors);
                }
            }
        }
    }
}

fn has_type(doc: &Value, name: &str) -> bool {
    match name {
        "null" => doc.is_null(),
        "boolean" => doc.is_boolean(),
        "object" => doc.is_object(),
        "array" => doc.is_array(),
        "string" => doc.is_string(),
        "number" => doc.is_number(),
        "integer" => doc.is_i64() || doc.is_u64(),
        _ => false,
    }
}

/// Only local definitions: `#/$defs/NAME`.
fn resolve<'a>(root: &'a Value, r: &Value) -> Result<&'a Value, String> {
    r.as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| root.get("$defs")?.get(name))
        .ok_or_else(|| format!("$ref {r} is not a #/$defs/NAME this schema defines"))
}

/// Static checks on a whole schema, branches no document reaches included: only known
/// keywords, refs resolve, and every property (the documentation) has a description.
fn lint(root: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if root.get("$schema") != Some(&json!(DRAFT)) {
        errors.push(format!("$schema is not {DRAFT}"));
    }
    lint_at(root, root, "$", &mut errors);
    if let Some(defs) = root.get("$defs").and_then(Value::as_object) {
        for (name, def) in defs {
            lint_at(root, def, &format!("$defs.{name}"), &mut errors);
        }
    }
    errors
}

fn lint_at(root: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        if !schema.is_boolean() {
            errors.push(format!("{at}: schema is not an object or boolean"));
        }
        return;
    };
    for key in obj.keys() {
        if !ANNOTATIONS.contains(&key.as_str()) && !ASSERTIONS.contains(&key.as_str()) {
            errors.push(format!("{at}: schema keyword {key:?} is not implemented"));
        }
    }
    if let Some(r) = obj.get("$ref") {
        if let Err(e) = resolve(root, r) {
            errors.push(format!("{at}: {e}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let described = sub.get("description").is_some()
                || sub
                    .get("$ref")
                    .and_then(|r| resolve(root, r).ok())
                    .is_some_and(|t| t.get("description").is_some());
            if !described {
                errors.push(format!("{at}.{name}: no description"));
            }
            lint_at(root, sub, &format!("{at}.{name}"), errors);
        }
    }
    for key in ["additionalProperties", "propertyNames", "items"] {
        if let Some(sub) = obj.get(key) {
            lint_at(root, sub, &format!("{at}/{key}"), errors);
        }
    }
    for (i, sub) in obj
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        lint_at(root, sub, &format!("{at}/oneOf[{i}]"), errors);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

const SCHEMAS: &[&str] = &[
    "mbcheck",
    "reconstruct",
    "reconstruct-m",
    "quota",
    "singleinstance-dedupe",
    "install-links",
];

fn schema(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The run's stdout is one document that `name`'s schema accepts; returns it.
fn valid(name: &str, run: &Run) -> Value {
    let doc = run.json();
    let s = schema(name);
    let errors = validate(&s, &s, &doc);
    assert!(
        errors.is_empty(),
        "{name}: output does not match its schema:\n{}\n{}",
        errors.join("\n"),
        run.describe()
    );
    doc
}

/// A private copy of a committed fixture; returns (temp dir, its imapd.conf, its root).
fn copy(fixture: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join(fixture);
    copy_tree(&fixture_src(fixture), &root).expect("copy fixture");
    (tmp, root.join("imapd.conf"), root)
}

fn cyrkit(words: &[&str], conf: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    cli::run(words, Some(conf), &all, &[])
}

/// The legacy fixture with a message file deleted and an index header byte flipped.
fn damage_legacy(root: &Path) {
    std::fs::remove_file(root.join("spool/b/user/bob/Archive/3.")).expect("remove message");
    let index = root.join("spool/b/user/bob/cyrus.index");
    let mut bytes = std::fs::read(&index).expect("read index");
    bytes[100] ^= 0xff;
    std::fs::write(&index, bytes).expect("write index");
}

fn kinds(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f[key].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The schemas themselves, and the validator

#[test]
fn every_schema_is_documented_and_uses_only_checked_keywords() {
    for name in SCHEMAS {
        let errors = lint(&schema(name));
        assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
    }
}

fn clean_mbcheck_doc() -> Value {
    json!({
        "clean": false,
        "mailboxes_checked": 2,
        "messages_checked": 5,
        "findings": [{
            "kind": "index",
            "mailbox": "user.bob",
            "file": null,
            "problem": "p",
            "repair": "cyrkit reconstruct user.bob"
        }],
        "not_found": [],
        "summary": { "index": 1 }
    })
}

#[test]
fn validator_accepts_a_good_document_and_rejects_each_kind_of_bad_one() {
    let s = schema("mbcheck");
    assert_eq!(validate(&s, &s, &clean_mbcheck_doc()), Vec::<String>::new());
    type Spoil = fn(&mut Value);
    let bad: Vec<(&str, Spoil)> = vec![
        ("missing required", |d| {
            d.as_object_mut().map(|o| o.remove("clean"));
        }),
        ("extra property", |d| d["extra"] = json!(1)),
        ("wrong type", |d| d["clean"] = json!("yes")),
        ("null where not allowed", |d| {
            d["findings"][0]["problem"] = Value::Null
        }),
        ("integer as float", |d| d["messages_checked"] = json!(1.5)),
        ("below minimum", |d| d["mailboxes_checked"] = json!(-1)),
        ("kind not in enum", |d| {
            d["findings"][0]["kind"] = json!("bogus")
        }),
        ("extra in array item", |d| d["findings"][0]["x"] = json!(1)),
        ("unknown property name", |d| {
            d["summary"]["bogus"] = json!(1)
        }),
        ("additionalProperties schema", |d| {
            d["summary"]["index"] = json!(0)
        }),
        ("items type", |d| d["not_found"] = json!([1])),
    ];
    for (what, spoil) in bad {
        let mut doc = clean_mbcheck_doc();
        spoil(&mut doc);
        assert!(!validate(&s, &s, &doc).is_empty(), "{what}: accepted {doc}");
    }
}

#[test]
fn validator_one_of_needs_exactly_one_branch() {
    let s = schema("reconstruct");
    let header_paths = json!({ "dry_run": true, "created": ["created mbentry for x (y)"] });
    assert!(validate(&s, &s, &header_paths).is_empty());
    let both = json!({ "dry_run": true, "created": [] , "mailboxes": []});
    assert!(!validate(&s, &s, &both).is_empty());
    let two = json!({ "oneOf": [{ "type": "integer" }, { "type": "number" }] });
    assert!(!validate(&two, &two, &json!(1)).is_empty());
    assert!(validate(&two, &two, &json!(1.5)).is_empty());
}

#[test]
fn validator_rejects_keywords_it_does_not_implement() {
    let s = json!({ "$schema": DRAFT, "type": "string", "maxLength": 1 });
    assert!(!validate(&s, &s, &json!("toolong")).is_empty());
    assert!(!lint(&s).is_empty());
    let r = json!({ "$ref": "other.json#/x" });
    assert!(!validate(&r, &r, &json!(1)).is_empty());
    let undocumented = json!({ "$schema": DRAFT, "properties": { "a": { "type": "string" } } });
    assert_eq!(lint(&undocumented), vec!["$.a: no description".to_string()]);
}

// ---------------------------------------------------------------------------------------
// Real output

#[test]
fn mbcheck_clean_and_damaged() {
    for fixture in ["legacy", "uuid"] {
        let (_t, conf, _) = copy(fixture);
        let run = cyrkit(&["mbcheck"], &conf, &[]);
        let doc = valid("mbcheck", &run);
        assert_eq!(run.code, 0, "{}", run.describe());
        assert_eq!(doc["clean"], true);
        assert!(doc["mailboxes_checked"].as_u64() > Some(0));
    }
    let (_t, conf, root) = copy("legacy");
    damage_legacy(&root);
    std::fs::write(root.join("conf/quota/b/user.bob"), "99999\n").expect("quota");
    let run = cyrkit(&["mbcheck"], &conf, &["user.nobody"]);
    let doc = valid("mbcheck", &run);
    assert_eq!(doc["not_found"], json!(["user.nobody"]));
    let run = cyrkit(&["mbcheck"], &conf, &[]);
    let doc = valid("mbcheck", &run);
    assert_eq!(run.code, 1, "{}", run.describe());
    let found = kinds(&doc["findings"], "kind");
    for k in ["index", "message-file", "quota"] {
        assert!(found.iter().any(|f| f == k), "no {k} finding in {found:?}");
    }
    assert_eq!(doc["summary"]["message-file"], 1);
}

#[test]
fn reconstruct_dry_run_then_real_run_on_damaged_copy() {
    let (_t, conf, root) = copy("legacy");
    damage_legacy(&root);
    let dry = cyrkit(&["reconstruct"], &conf, &["-n"]);
    let doc = valid("reconstruct", &dry);
    assert_eq!(dry.code, 1, "{}", dry.describe());
    assert_eq!(doc["dry_run"], true);
    let changes: Vec<String> = doc["mailboxes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| kinds(&m["changes"], "kind"))
        .collect();
    assert!(changes.iter().any(|k| k == "not-found"), "{changes:?}");
    assert!(changes.iter().any(|k| k == "index-header"), "{changes:?}");

    let real = cyrkit(&["reconstruct"], &conf, &[]);
    let doc = valid("reconstruct", &real);
    assert_eq!(real.code, 0, "{}", real.describe());
    assert_eq!(doc["dry_run"], false);
    assert_eq!(doc["summary"]["mailboxes_changed"], 2);

    let again = cyrkit(&["reconstruct"], &conf, &["-n"]);
    let doc = valid("reconstruct", &again);
    assert_eq!(
        doc["summary"]["mailboxes_changed"],
        0,
        "{}",
        again.describe()
    );
}

#[test]
fn reconstruct_header_paths_dry_run() {
    let (_t, conf, root) = copy("legacy");
    let header = root.join("spool/a/user/alice/cyrus.header");
    let run = cyrkit(
        &["reconstruct"],
        &conf,
        &["-P", "-n", header.to_str().expect("utf-8 path")],
    );
    let doc = valid("reconstruct", &run);
    assert_eq!(doc["created"].as_array().map(Vec::len), Some(1));
}

#[test]
fn reconstruct_m_dry_run() {
    let (_t, conf, _) = copy("legacy");
    let run = cyrkit(&["reconstruct"], &conf, &["-m", "-n"]);
    let doc = valid("reconstruct-m", &run);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(doc["backend"], "twoskip");

    // A uuid-layout directory without its cyrus.header: an error problem, a removed entry.
    let (_t, conf, root) = copy("uuid");
    std::fs::remove_file(root.join("spool/uuid/6/l/6lw0efn1fm7u669tog75cyop/cyrus.header"))
        .expect("remove header");
    let run = cyrkit(&["reconstruct"], &conf, &["-m", "-n"]);
    let doc = valid("reconstruct-m", &run);
    assert_eq!(run.code, 3, "{}", run.describe());
    assert!(kinds(&doc["problems"], "kind").contains(&"no-name".to_string()));
    assert!(!doc["difference"]["removed"]
        .as_array()
        .is_none_or(Vec::is_empty));

    // No current database: everything is added.
    let (_t, conf, root) = copy("legacy");
    std::fs::remove_file(root.join("conf/mailboxes.db")).expect("remove db");
    let run = cyrkit(&["reconstruct"], &conf, &["-m", "-n"]);
    let doc = valid("reconstruct-m", &run);
    assert!(!doc["difference"]["added"]
        .as_array()
        .is_none_or(Vec::is_empty));
}

#[test]
fn quota_report_and_fix_dry_run_on_damaged_usage() {
    let (_t, conf, root) = copy("legacy");
    let run = cyrkit(&["quota"], &conf, &[]);
    let doc = valid("quota", &run);
    assert!(doc.get("-changes").is_none());
    assert!(doc["user.bob"]["STORAGE"]["used"].as_u64() > Some(0));

    std::fs::write(
        root.join("conf/quota/b/user.bob"),
        "%(S (1 5000) M (1 100) AS (0) NF (2) MODSEQ 19)\n",
    )
    .expect("quota");
    let run = cyrkit(&["quota"], &conf, &["-f", "-n"]);
    let doc = valid("quota", &run);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert_eq!(kinds(&doc["-changes"], "resource"), ["STORAGE", "MESSAGE"]);
    assert_eq!(doc["user.bob"]["MESSAGE"]["used"], 1, "-n stores nothing");
}

#[test]
fn singleinstance_dedupe_dry_run_then_real_run() {
    let (_t, conf, _) = copy("uuid");
    let dry = cyrkit(&["singleinstance-dedupe"], &conf, &["-n"]);
    let doc = valid("singleinstance-dedupe", &dry);
    assert_eq!(doc["dry_run"], true);
    let linked = doc["files_linked"].as_u64().unwrap_or(0);
    assert!(linked > 0, "{}", dry.describe());
    assert_eq!(doc["links"].as_array().map(Vec::len), Some(linked as usize));

    let real = cyrkit(&["singleinstance-dedupe"], &conf, &[]);
    let doc = valid("singleinstance-dedupe", &real);
    assert_eq!(real.code, 0, "{}", real.describe());
    assert_eq!(doc["files_linked"].as_u64(), Some(linked));

    let again = cyrkit(&["singleinstance-dedupe"], &conf, &["-n"]);
    let doc = valid("singleinstance-dedupe", &again);
    assert_eq!(doc["files_linked"], 0);
}

#[test]
fn install_links_into_a_temp_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bin");
    let run = cli::run(
        &["install-links"],
        None,
        &["--json", dir.to_str().expect("utf-8 path")],
        &[],
    );
    let doc = valid("install-links", &run);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(doc["links"].as_array().map(Vec::len), Some(3));
    assert!(dir.join("mbcheck").symlink_metadata().is_ok());
}

/// A file name that is not UTF-8 (an odd file in a mailbox directory) must still give one
/// valid document (regression: `mbcheck --json` panicked, serde refuses non-UTF-8 paths).
#[test]
fn mbcheck_odd_file_with_non_utf8_name() {
    use std::os::unix::ffi::OsStrExt;
    let (_t, conf, root) = copy("legacy");
    let name = std::ffi::OsStr::from_bytes(b"odd\xff");
    std::fs::write(root.join("spool/a/user/alice").join(name), b"x").expect("odd file");
    let run = cyrkit(&["mbcheck"], &conf, &[]);
    let doc = valid("mbcheck", &run);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(kinds(&doc["findings"], "kind").contains(&"odd-file".to_string()));
    assert!(run.stdout.contains("odd\u{fffd}"), "{}", run.stdout);
}
