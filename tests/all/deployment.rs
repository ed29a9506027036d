//! The deployment guide's single-host example (`docs/deployment.md`,
//! section 7), taken from the guide and run as it is written: PostgreSQL
//! and S3 are the test servers, given through the variables the script
//! documents; `geohost` is the binary under test.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deployment.md");
const MARKER: &str =
    "<!-- The test suite runs the block below as it is (tests/all/deployment.rs). -->";

/// The `sh` block after the marker.
fn example(guide: &str) -> String {
    let after = guide
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("the guide lost its marker {MARKER:?}"))
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a ```sh block right after the marker");
    body.split_once("\n```")
        .expect("the block's closing fence")
        .0
        .to_string()
}

/// A base port with the two next ones free too.
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65_000 {
            continue;
        }
        let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_host_example_of_the_guide_runs_as_written() {
    let Some(admin) = geohost::db::testing::fresh_postgres_url().await else {
        return;
    };
    let Some(s3) = geohost::storage::testing::s3_endpoint() else {
        return;
    };
    // The server's address without a database: the script adds its own.
    let server = admin.rsplit_once('/').unwrap().0.to_string();
    let script = example(&std::fs::read_to_string(GUIDE).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let name = format!("gh{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let bin = Path::new(env!("CARGO_BIN_EXE_geohost")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("PG", &server)
        .env("S3_ENDPOINT", &s3)
        .env("S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "geohost-test")
        .env("AWS_SECRET_ACCESS_KEY", "geohost-test-secret")
        .env("NAME", &name)
        .env("DIR", dir.path().join("site"))
        .env("PORT", three_free_ports().to_string())
        .env("STOP_WHEN_VERIFIED", "1")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // Its own process group, so that nothing it started outlives the test.
    command.as_std_mut().process_group(0);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash runs");
    let group = child.id().expect("a process id") as i32;
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output()).await;
    // SAFETY: signals a process group this test made; harmless if gone.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let output = output
        .expect("the example finishes within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs: String = ["primary.log", "secondary-1.log", "secondary-2.log"]
        .iter()
        .map(|log| {
            let text =
                std::fs::read_to_string(dir.path().join("site").join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            format!(
                "--- {log}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    assert!(
        output.status.success(),
        "the example failed ({:?}):\n{stdout}\n{stderr}\n{logs}",
        output.status
    );
    for line in [
        "\"created\":true",
        "Geo Role: Secondary",
        "Helm Metadata Caches replicated: succeeded 1 / total 1 (100%)",
        "Helm Metadata Caches verified: succeeded 1 / total 1 (100%)",
        "primary   http://127.0.0.1:",
    ] {
        assert!(
            stdout.contains(line),
            "{line:?} not in\n{stdout}\n{stderr}\n{logs}"
        );
    }
}

#[test]
fn the_guide_keeps_its_example() {
    let script = example(&std::fs::read_to_string(GUIDE).unwrap());
    for needle in [
        "set -euo pipefail",
        "geohost secrets generate --output primary.key",
        "geohost namespace create",
        "geohost project create",
        "geohost site add",
        "GEOHOST_SITE__LISTEN=",
        "/-/readiness",
    ] {
        assert!(script.contains(needle), "{needle:?} not in the example");
    }
}
