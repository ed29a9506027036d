//! Helpers shared by the integration tests: the components under test, and
//! GitLab's expected values computed from first principles.

#![allow(dead_code)] // each test module uses its own subset

use geohost::plugin::{Limits, LoadedType, PluginRuntime, Row, Value, builtin};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Where `cargo xtask plugins` writes the misbehaving test components.
const COMPONENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/target/components");

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// GitLab's `object_storage_key` of a Helm metadata cache:
/// `HashedPath('packages', 'helm', 'metadata_caches', sha256(channel), root_hash: project_id)`,
/// that is `h[0..2]/h[2..4]/h/packages/helm/metadata_caches/<sha256(channel)>`
/// with `h` the SHA-256 hex of the project id written in decimal.
pub fn helm_object_storage_key(project_id: i64, channel: &str) -> String {
    let h = sha256_hex(project_id.to_string().as_bytes());
    let channel_hash = sha256_hex(channel.as_bytes());
    format!(
        "{}/{}/{h}/packages/helm/metadata_caches/{channel_hash}",
        &h[0..2],
        &h[2..4]
    )
}

/// GitLab's blob path of a Helm metadata cache: the key, then `index.yaml`.
pub fn helm_blob_path(project_id: i64, channel: &str) -> String {
    format!(
        "{}/index.yaml",
        helm_object_storage_key(project_id, channel)
    )
}

/// The shipped Helm metadata cache component.
pub fn helm_component() -> &'static [u8] {
    builtin::by_stem("helm-metadata-cache")
        .expect("helm-metadata-cache is shipped in plugins/dist; run `cargo xtask plugins` first")
        .bytes
}

/// The path of test component `fixture-<name>.wasm`.
pub fn fixture_component_path(name: &str) -> PathBuf {
    PathBuf::from(COMPONENTS).join(format!("fixture-{name}.wasm"))
}

/// The bytes of test component `fixture-<name>.wasm`.
pub fn fixture_component(name: &str) -> Vec<u8> {
    let path = fixture_component_path(name);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "test component {} is missing ({error}): run `cargo xtask plugins` first",
            path.display()
        )
    })
}

/// A runtime without a compile cache.
pub fn runtime(limits: Limits) -> PluginRuntime {
    PluginRuntime::new(limits, None).expect("building the plugin runtime")
}

/// The shipped Helm type, loaded on `runtime`.
pub fn load_helm(runtime: &PluginRuntime) -> LoadedType {
    runtime
        .load(helm_component())
        .expect("the shipped Helm component loads")
}

/// A Helm record's writer columns in table order:
/// last_downloaded_at, project_id, status, channel.
pub fn helm_writer_row(id: i64, project_id: i64, channel: &str) -> Row {
    Row {
        id,
        values: vec![
            Value::Null,
            Value::Int(project_id),
            Value::Int(0),
            Value::Text(channel.into()),
        ],
    }
}

/// The blob paths of new Helm records, as the primary computes them: `derive`
/// (derived columns in table order: file, object_storage_key), then
/// `blob_paths` (rows carry path_columns: object_storage_key, file).
pub fn helm_paths(loaded: &LoadedType, pairs: &[(i64, &str)]) -> Vec<Result<String, String>> {
    let rows: Vec<Row> = pairs
        .iter()
        .enumerate()
        .map(|(i, (project_id, channel))| helm_writer_row(i as i64 + 1, *project_id, channel))
        .collect();
    let derived = loaded.derive(&rows).expect("derive answers");
    assert_eq!(derived.len(), rows.len());
    let mut answers: Vec<Result<String, String>> = vec![Err(String::new()); rows.len()];
    let mut path_rows = Vec::new();
    let mut positions = Vec::new();
    for (i, answer) in derived.into_iter().enumerate() {
        match answer {
            Ok(values) => {
                let [file, key]: [Value; 2] = values.try_into().expect("two derived columns");
                path_rows.push(Row {
                    id: rows[i].id,
                    values: vec![key, file],
                });
                positions.push(i);
            }
            Err(error) => answers[i] = Err(error),
        }
    }
    let paths = loaded.blob_paths(&path_rows).expect("blob_paths answers");
    for (i, path) in positions.into_iter().zip(paths) {
        answers[i] = path.map(|p| p.as_str().to_string());
    }
    answers
}

/// Asserts that the good Helm type (loaded on the runtime under test) still
/// answers normally.
#[track_caller]
pub fn assert_helm_answers(loaded: &LoadedType) {
    let pairs = [(1, "stable"), (42, "dev")];
    let paths = helm_paths(loaded, &pairs);
    for ((project_id, channel), path) in pairs.iter().zip(paths) {
        assert_eq!(
            path.as_deref(),
            Ok(helm_blob_path(*project_id, channel).as_str())
        );
    }
}

/// The variable naming the Python of GitLab's clients' venv (python-gitlab,
/// gql), which `cargo xtask test` installs from `tests/clients/requirements.txt`.
pub const CLIENTS_PYTHON_VAR: &str = "GEOHOST_TEST_PYTHON";

/// The Python with GitLab's clients, or `None` (with a note) when the
/// variable is unset; on CI (`CI` set) that is a failure instead.
pub fn clients_python() -> Option<PathBuf> {
    match std::env::var(CLIENTS_PYTHON_VAR) {
        Ok(path) if !path.trim().is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{CLIENTS_PYTHON_VAR} is not set, but CI is: the tests of GitLab's own clients \
             would be skipped. Run `cargo xtask test`."
        ),
        _ => {
            eprintln!(
                "note: {CLIENTS_PYTHON_VAR} is unset: GitLab's clients (python-gitlab, gql) are \
                 not tested. Run `cargo xtask test`."
            );
            None
        }
    }
}

/// Runs `tests/clients/geo_clients.py` with `args` and `env` on `python`;
/// returns the JSON it prints.
pub fn run_clients(
    python: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/clients/geo_clients.py"
    );
    let output = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("running {} {script}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "geo_clients.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("geo_clients.py {args:?} printed no JSON ({e}):\n{stdout}"))
}
