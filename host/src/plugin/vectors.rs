//! Test vectors: a fixture record's `expect` key, checked by
//! `geohost plugin test` against the type's answer.
//!
//! ```json
//! {"id": 1, "project_id": 10, "package_name": "left-pad",
//!  "expect": {"path": "6b/86/…/metadata.json", "in_scope": true}}
//! {"id": 2, "project_id": 10, "package_name": "no good",
//!  "expect": {"error": "invalid npm package name"}}
//! ```
//!
//! `path` and `in_scope` must equal the answer's; `error` must be contained
//! in the record's error (and the record must fail). A type crate ships its
//! vectors (`vectors.json` beside its `Cargo.toml`), so a change that moves a
//! blob or changes a scope decision fails its test.

use serde::Deserialize;
use serde_json::Value;

/// What one record expects.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The blob path the type must give.
    pub path: Option<String>,
    /// The scope decision the type must give.
    pub in_scope: Option<bool>,
    /// Text the record's error must contain (the record must be refused).
    pub error: Option<String>,
}

/// The outcome of checking a fixture's expectations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Records that carried an `expect`.
    pub expected: usize,
    /// One message per record whose answer differs, naming the record.
    pub failures: Vec<String>,
}

/// Checks each record's `expect` against the answer at the same position
/// (`answers` as [`super::fixture::run`] returns them). A malformed `expect`
/// is an error naming the record.
pub fn check(
    records: &[serde_json::Map<String, Value>],
    answers: &[Value],
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    for (index, (record, answer)) in records.iter().zip(answers).enumerate() {
        let Some(expect) = record.get("expect") else {
            continue;
        };
        let id = record.get("id").cloned().unwrap_or(Value::from(index + 1));
        let expect: Expect = serde_json::from_value(expect.clone())
            .map_err(|e| format!("record {id}: `expect` is malformed: {e}"))?;
        if expect == Expect::default() {
            return Err(format!(
                "record {id}: `expect` names none of path, in_scope, error"
            ));
        }
        checked.expected += 1;
        if let Some(problem) = compare(&expect, answer) {
            checked.failures.push(format!("record {id}: {problem}"));
        }
    }
    Ok(checked)
}

fn compare(expect: &Expect, answer: &Value) -> Option<String> {
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return match &expect.error {
            Some(wanted) if error.contains(wanted.as_str()) => None,
            Some(wanted) => Some(format!("error {error:?} does not contain {wanted:?}")),
            None => Some(format!("refused ({error}), expected an answer")),
        };
    }
    if let Some(wanted) = &expect.error {
        return Some(format!(
            "answered {answer}, expected an error containing {wanted:?}"
        ));
    }
    let mut problems = Vec::new();
    if let Some(path) = &expect.path
        && answer.get("path").and_then(Value::as_str) != Some(path.as_str())
    {
        problems.push(format!("path {} expected {path:?}", answer["path"]));
    }
    if let Some(in_scope) = expect.in_scope
        && answer.get("in_scope").and_then(Value::as_bool) != Some(in_scope)
    {
        problems.push(format!(
            "in_scope {} expected {in_scope}",
            answer["in_scope"]
        ));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records(list: Value) -> Vec<serde_json::Map<String, Value>> {
        serde_json::from_value(list).unwrap()
    }

    #[test]
    fn met_and_unmet_expectations() {
        let records = records(json!([
            {"id": 1, "expect": {"path": "a/b", "in_scope": true}},
            {"id": 2, "expect": {"path": "a/c"}},
            {"id": 3, "expect": {"error": "bad name"}},
            {"id": 4, "expect": {"in_scope": false}},
            {"id": 5},
            {"id": 6, "expect": {"error": "bad name"}},
        ]));
        let answers = [
            json!({"id": 1, "path": "a/b", "in_scope": true}),
            json!({"id": 2, "path": "a/x", "in_scope": true}),
            json!({"id": 3, "error": "a bad name here"}),
            json!({"id": 4, "error": "no project"}),
            json!({"id": 5, "path": "z", "in_scope": true}),
            json!({"id": 6, "path": "z", "in_scope": true}),
        ];
        let checked = check(&records, &answers).unwrap();
        assert_eq!(checked.expected, 5);
        assert_eq!(checked.failures.len(), 3, "{:?}", checked.failures);
        assert!(checked.failures[0].starts_with("record 2: path \"a/x\""));
        assert!(checked.failures[1].starts_with("record 4: refused (no project)"));
        assert!(checked.failures[2].starts_with("record 6: answered"));
    }

    #[test]
    fn malformed_expectations_are_refused() {
        for expect in [json!({"colour": 1}), json!({}), json!("a/b")] {
            let records = records(json!([{"id": 9, "expect": expect}]));
            let error =
                check(&records, &[json!({"id": 9, "path": "p", "in_scope": true})]).unwrap_err();
            assert!(error.starts_with("record 9: "), "{error}");
        }
    }
}
