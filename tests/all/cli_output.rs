//! What the command line shows a person: the demo and the one-shot
//! commands print their own answer, with log lines only when `RUST_LOG`
//! asks for them; `geohost serve` logs what it does, as before. And
//! `geohost secrets generate`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const GEOHOST: &str = env!("CARGO_BIN_EXE_geohost");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn geohost(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut command = Command::new(GEOHOST);
    command.args(args).env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let output = command.output().expect("geohost runs");
    assert!(
        output.status.success(),
        "geohost {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Asserts `stderr` holds no log line at all.
#[track_caller]
fn no_logs(what: &str, output: &Output) {
    let stderr = text(&output.stderr);
    for needle in [" INFO ", " DEBUG ", "type installed", "record written"] {
        assert!(
            !stderr.contains(needle),
            "{what}: {needle:?} logged on stderr:\n{stderr}"
        );
    }
}

fn primary_config(dir: &Path) -> String {
    let config = dir.join("primary.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    config.display().to_string()
}

/// The id in a one-line JSON answer.
fn id_of(output: &Output) -> String {
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    value["id"].as_i64().unwrap().to_string()
}

#[test]
fn one_shot_commands_print_their_answer_and_log_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = primary_config(dir.path());
    let c = config.as_str();
    let group = geohost(&["namespace", "create", "-c", c, "--name", "g"], None);
    no_logs("namespace create", &group);
    let project = geohost(
        &[
            "project",
            "create",
            "-c",
            c,
            "--name",
            "p",
            "--namespace",
            &id_of(&group),
        ],
        None,
    );
    no_logs("project create", &project);
    let index = dir.path().join("index.yaml");
    std::fs::write(&index, "apiVersion: v1\n").unwrap();
    let put = geohost(
        &[
            "record",
            "put",
            "-c",
            c,
            "packages_helm_metadata_cache",
            "--set",
            &format!("project_id={}", id_of(&project)),
            "--set",
            "channel=stable",
            "--file",
            &index.display().to_string(),
        ],
        None,
    );
    no_logs("record put", &put);
    assert!(
        text(&put.stdout).contains("\"created\":true"),
        "{}",
        text(&put.stdout)
    );
    let status = geohost(&["status", "-c", c], None);
    no_logs("status", &status);
    assert!(text(&status.stdout).contains("Geo Role: Primary"));
    assert!(
        text(&status.stderr).trim().is_empty(),
        "{}",
        text(&status.stderr)
    );
    let fixtures = format!("{REPO}/plugins/helm-metadata-cache/vectors.json");
    let component = format!("{REPO}/plugins/dist/helm-metadata-cache.wasm");
    let tested = geohost(
        &["plugin", "test", &component, "--fixtures", &fixtures],
        None,
    );
    no_logs("plugin test", &tested);
    assert!(!text(&tested.stdout).is_empty());

    // Asked for, the logs are there.
    let status = geohost(&["status", "-c", c], Some("info"));
    assert!(
        text(&status.stderr).contains("type installed"),
        "{}",
        text(&status.stderr)
    );
}

#[test]
fn the_demo_prints_its_summary_without_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo").display().to_string();
    let demo = geohost(
        &[
            "demo",
            "--port",
            "0",
            "--exit-when-synced",
            "--data-dir",
            &data,
        ],
        None,
    );
    no_logs("demo", &demo);
    let stdout = text(&demo.stdout);
    for needle in [
        "seeded 44 Helm metadata caches",
        "synced:     24/24 (100.00%)",
        "verified:   24/24 (100.00%)",
        "Both sites keep serving",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in\n{stdout}");
    }
}

/// `geohost serve` logs at info without `RUST_LOG`, as it always has.
#[test]
fn serve_logs_what_it_does() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = primary_config(dir.path());
    let mut child = Command::new(GEOHOST)
        .args(["serve", "-c", &config])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let serving = line.contains(" INFO ") && line.contains("serving");
        seen.push(line);
        if serving || seen.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(log.contains("type installed"), "{log}");
    assert!(seen.last().is_some_and(|l| l.contains("serving")), "{log}");
}

#[test]
fn secrets_generate_prints_or_writes_a_new_key_once() {
    let printed = geohost(&["secrets", "generate"], None);
    let key = text(&printed.stdout);
    assert_eq!(key.trim().len(), 64, "{key}");
    assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(text(&geohost(&["secrets", "generate"], None).stdout), key);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc").join("secrets.key");
    let p = path.display().to_string();
    let written = geohost(&["secrets", "generate", "--output", &p], None);
    assert!(text(&written.stdout).is_empty(), "the key is not printed");
    let contents = std::fs::read_to_string(&path).unwrap();
    assert_eq!(contents.trim().len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never over a key in use.
    let again = Command::new(GEOHOST)
        .args(["secrets", "generate", "--output", &p])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);
}
