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
//! in the record's error (and the record must fail). A type crate keeps its
//! vectors in `vectors.json` beside its `Cargo.toml`, and its component
//! carries them ([`SECTION`], embedded by the SDK's `test_vectors!`), so a
//! change that moves a blob or changes a scope decision fails its test, its
//! install, and the install of any later version that did not declare it.
//!
//! A record may carry `"changed": "why"`: its decision differs on purpose
//! from earlier versions'. When version B replaces version A, A's vectors
//! are run on B too ([`check_predecessor`]); a record of A is not held
//! against B when the record with its id says `changed` in either version
//! (both directions, so a rollback to A passes as well).

use super::LoadedType;
use super::fixture::{self, Fixture};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;

/// The custom section in which a component carries its test vectors: the
/// type's `vectors.json`, a fixture whose records carry `expect`. (Also
/// accepted: `{"fixture": <fixture>, "expected": [<one answer per record>]}`,
/// the first layout of this section.)
pub const SECTION: &str = "geohost-test-vectors";

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
#[cfg(test)]
pub fn check(
    records: &[serde_json::Map<String, Value>],
    answers: &[Value],
) -> Result<Checked, String> {
    check_except(records, answers, &HashSet::new())
}

/// A record's id as the vectors give it (its position from 1 when absent).
fn record_id(record: &serde_json::Map<String, Value>, index: usize) -> Value {
    record.get("id").cloned().unwrap_or(Value::from(index + 1))
}

/// [`check`], skipping the records whose id is in `skip`.
fn check_except(
    records: &[serde_json::Map<String, Value>],
    answers: &[Value],
    skip: &HashSet<String>,
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    for (index, (record, answer)) in records.iter().zip(answers).enumerate() {
        let Some(expect) = record.get("expect") else {
            continue;
        };
        let id = record_id(record, index);
        if skip.contains(&id.to_string()) {
            continue;
        }
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

/// A component's embedded test vectors.
#[derive(Debug)]
pub enum Vectors {
    /// A fixture whose records carry `expect` (a type's `vectors.json`).
    Expectations(Fixture),
    /// A fixture and the answers it must produce, record for record.
    Answers {
        fixture: Fixture,
        expected: Vec<Value>,
    },
}

impl Vectors {
    /// The vectors `component` carries, if any.
    pub fn embedded(component: &[u8]) -> Result<Option<Vectors>, String> {
        super::custom_section(component, SECTION)
            .map(|bytes| Vectors::parse(&bytes))
            .transpose()
    }

    pub fn parse(bytes: &[u8]) -> Result<Vectors, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Answers {
            fixture: Fixture,
            expected: Vec<Value>,
        }
        let invalid =
            |e: serde_json::Error| format!("its test vectors ({SECTION}) are not valid: {e}");
        let json: Value = serde_json::from_slice(bytes).map_err(invalid)?;
        if json.get("fixture").is_some() {
            let Answers { fixture, expected } = serde_json::from_value(json).map_err(invalid)?;
            return Ok(Vectors::Answers { fixture, expected });
        }
        Ok(Vectors::Expectations(
            serde_json::from_value(json).map_err(invalid)?,
        ))
    }

    pub fn fixture(&self) -> &Fixture {
        match self {
            Vectors::Expectations(f) | Vectors::Answers { fixture: f, .. } => f,
        }
    }

    /// The ids of the records marked `"changed"`.
    fn changed(&self) -> HashSet<String> {
        self.fixture()
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.contains_key("changed"))
            .map(|(i, r)| record_id(r, i).to_string())
            .collect()
    }

    /// Runs them on `loaded`, skipping the records whose id is in `skip`:
    /// the answers and what they met.
    fn run(
        &self,
        loaded: &LoadedType,
        skip: &HashSet<String>,
    ) -> Result<(Vec<Value>, Checked), String> {
        let answers = fixture::run(loaded, self.fixture())
            .map_err(|e| format!("running the test vectors failed: {e:#}"))?;
        let checked = self.verdict(&answers, skip)?;
        Ok((answers, checked))
    }

    /// What `answers` (one per record, as [`fixture::run`] gives them) meet
    /// of these vectors, but for the records whose id is in `skip`.
    pub fn verdict(&self, answers: &[Value], skip: &HashSet<String>) -> Result<Checked, String> {
        match self {
            Vectors::Expectations(fixture) => check_except(&fixture.records, answers, skip),
            Vectors::Answers { fixture, expected } => {
                if answers.len() != expected.len() {
                    return Err(format!(
                        "the test vectors expect {} answers for {} records",
                        expected.len(),
                        answers.len()
                    ));
                }
                let mut checked = Checked::default();
                for (index, (got, want)) in answers.iter().zip(expected).enumerate() {
                    let id = record_id(&fixture.records[index], index);
                    if skip.contains(&id.to_string()) {
                        continue;
                    }
                    checked.expected += 1;
                    if got != want {
                        checked
                            .failures
                            .push(format!("record {id}: expected {want}, got {got}"));
                    }
                }
                Ok(checked)
            }
        }
    }

    /// Runs them on `loaded` (every record): the answers and what they met.
    pub fn check(&self, loaded: &LoadedType) -> Result<(Vec<Value>, Checked), String> {
        self.run(loaded, &HashSet::new())
    }
}

/// Runs the vectors of the version being replaced (`old`, with its
/// component's vectors) on the new version (`new`, with its own), except
/// the records either declares `changed`. `Ok(n)`: `n` vectors held.
pub fn check_predecessor(
    old: &Vectors,
    new: Option<&Vectors>,
    loaded: &LoadedType,
) -> Result<Checked, String> {
    let mut skip = old.changed();
    if let Some(new) = new {
        skip.extend(new.changed());
    }
    Ok(old.run(loaded, &skip)?.1)
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
