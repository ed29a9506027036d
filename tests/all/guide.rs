//! The authoring guide's tour (`docs/authoring-a-type.md`, chapter 0), run
//! as written: its ```` ```sh guide ```` blocks are executed line by line and
//! its ```` ```toml guide FILE ```` blocks written to FILE, in a copy of the
//! repository under `target/guide-tour/` (scaffold → build one crate → `plugin test` with the embedded
//! vectors → two running sites → install on both → a record replicates).
//! So the guide cannot drift from the tools.
//!
//! How lines run: `cd DIR` changes the folder; `VAR=$(command)` runs the
//! command and keeps its output as `$VAR` for the lines after; `geohost
//! serve -c FILE` starts the site in the background (a terminal of its own,
//! the guide says) and waits until it answers; anything else runs with
//! `bash -c` and must succeed. `geohost` is this build's binary. The only
//! change made to the guide's text: its ports (3000, 3001) become free ones.

use crate::authoring::{copy_dir, repo, sdk_only_workspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One fenced block the tour is made of.
#[derive(Debug)]
enum Step {
    Commands(Vec<String>),
    File { name: String, text: String },
}

/// The guide's ```` ```sh guide ```` and ```` ```toml guide FILE ```` blocks, in order.
fn tour(guide: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let words: Vec<&str> = info.split_whitespace().collect();
        let body: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .map(String::from)
            .collect();
        match words.as_slice() {
            ["sh", "guide"] => steps.push(Step::Commands(
                body.into_iter()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .collect(),
            )),
            ["toml", "guide", name] => steps.push(Step::File {
                name: name.to_string(),
                text: body.join("\n") + "\n",
            }),
            _ => {}
        }
    }
    steps
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A copy of the repository with what the tour touches: the root workspace
/// (to run `cargo xtask`), the WIT and the plugins workspace with only the SDK.
fn checkout(root: &Path) {
    let repo = repo();
    std::fs::create_dir_all(root).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo.join(file), root.join(file)).unwrap();
    }
    for dir in [".cargo", "xtask", "host", "tests", "migrations"] {
        copy_dir(&repo.join(dir), &root.join(dir));
    }
    sdk_only_workspace(root);
}

/// Where the tour runs: one folder under `target/`, emptied first but for
/// `plugins/target`. The guest build (`-Zbuild-std`) compiles the wasm32
/// standard library and the SDK's dependencies, nearly all of the tour's
/// time (about 110 s on two busy cores; the scaffolded crate itself takes
/// 2 s), and its flags name the plugins folder, so only a folder at the same
/// path reuses that build: a fresh temporary folder paid it at every run.
/// What a failed run leaves (the sites' logs and data) stays there to read.
fn tour_root() -> PathBuf {
    let root = repo().join("target/guide-tour/geohost");
    let remove = |path: PathBuf| {
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    };
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name() != "plugins" {
            remove(entry.path());
            continue;
        }
        for inner in std::fs::read_dir(entry.path()).unwrap().flatten() {
            if inner.file_name() != "target" {
                remove(inner.path());
            }
        }
    }
    root
}

/// Runs commands as the tour's reader would, keeping `VAR=$(…)` outputs.
struct Shell {
    cwd: PathBuf,
    vars: BTreeMap<String, String>,
    servers: Vec<Child>,
    path: String,
    target_dir: PathBuf,
}

impl Shell {
    fn command(&self, line: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", line]).current_dir(&self.cwd);
        // What the tests' own cargo set must not leak into the reader's.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("PATH", &self.path)
            .env("RUST_LOG", "warn")
            // `cargo xtask` builds xtask into the tests' target folder
            // (only the xtask crate itself is compiled again).
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .envs(&self.vars);
        cmd
    }

    fn run(&mut self, line: &str) {
        if let Some(dir) = line.strip_prefix("cd ") {
            self.cwd = self.cwd.join(dir.trim()).canonicalize().unwrap();
            return;
        }
        if let Some((var, rest)) = line.split_once("=$(")
            && var.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            let command = rest.strip_suffix(')').expect("VAR=$(command)");
            let output = self.command(command).output().unwrap();
            assert!(output.status.success(), "{line}: {}", text(&output.stderr));
            self.vars
                .insert(var.into(), text(&output.stdout).trim().to_string());
            return;
        }
        if line.starts_with("geohost serve ") {
            let log =
                std::fs::File::create(self.cwd.join(format!("serve-{}.log", self.servers.len())))
                    .unwrap();
            let child = self
                .command(line)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            self.servers.push(child);
            let config = line.rsplit(' ').next().unwrap();
            self.wait_until_up(&self.cwd.join(config));
            return;
        }
        let output = self.command(line).output().unwrap();
        assert!(
            output.status.success(),
            "{line}:\n{}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }

    /// Waits until the site of `config` answers HTTP.
    fn wait_until_up(&self, config: &Path) {
        let text = std::fs::read_to_string(config).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} did not start",
                config.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_guides_tour_runs_as_written() {
    let guide = std::fs::read_to_string(repo().join("docs/authoring-a-type.md")).unwrap();
    let (primary_port, secondary_port) = (free_port(), free_port());
    let ports = |s: &str| {
        s.replace("127.0.0.1:3000", &format!("127.0.0.1:{primary_port}"))
            .replace("127.0.0.1:3001", &format!("127.0.0.1:{secondary_port}"))
    };
    let steps = tour(&guide);
    let commands: Vec<&String> = steps
        .iter()
        .flat_map(|s| match s {
            Step::Commands(c) => c.iter().collect(),
            Step::File { .. } => Vec::new(),
        })
        .collect();
    for wanted in [
        "geohost plugin new ",
        "cargo xtask plugins -p ",
        "geohost plugin test ",
        "cp plugins/target/components/",
        "geohost record put ",
    ] {
        assert!(
            commands.iter().any(|c| c.starts_with(wanted)),
            "the tour lost `{wanted}`: {commands:?}"
        );
    }

    let root = tour_root();
    let started = std::time::Instant::now();
    checkout(&root);
    let copied = started.elapsed();
    let geohost = PathBuf::from(env!("CARGO_BIN_EXE_geohost"));
    let mut shell = Shell {
        cwd: root.clone(),
        vars: BTreeMap::new(),
        servers: Vec::new(),
        path: format!(
            "{}:{}",
            geohost.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        target_dir: repo().join("target"),
    };
    // How long each command took, printed (and in a failure's message):
    // where the tour's time goes.
    let mut timings = vec![format!("{copied:>7.1?}  (the copy of the repository)")];
    for step in &steps {
        match step {
            Step::File { name, text } => std::fs::write(shell.cwd.join(name), ports(text)).unwrap(),
            Step::Commands(lines) => {
                for line in lines {
                    let started = std::time::Instant::now();
                    shell.run(&ports(line));
                    timings.push(format!("{:>7.1?}  {line}", started.elapsed()));
                }
            }
        }
    }

    // The record reaches the secondary, verified, as `geohost status` says.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let done = |out: &str, what: &str| {
        out.lines().any(|l| {
            l.contains(&format!("Conan Recipe Caches {what}"))
                && l.contains("succeeded 1 / total 1")
        })
    };
    let mut last = String::new();
    let mut waited = Duration::ZERO;
    let converged = runtime.block_on(async {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(180) {
            waited = started.elapsed();
            let output = shell
                .command("geohost status -c secondary.toml")
                .output()
                .unwrap();
            last = text(&output.stdout) + &text(&output.stderr);
            if done(&last, "replicated") && done(&last, "verified") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    });
    timings.push(format!(
        "{waited:>7.1?}  (until `geohost status` shows it replicated and verified)"
    ));
    let timings = timings.join("\n");
    eprintln!("the tour's steps:\n{timings}");
    let logs: Vec<String> = (0..shell.servers.len())
        .map(|i| std::fs::read_to_string(root.join(format!("serve-{i}.log"))).unwrap_or_default())
        .collect();
    assert!(
        converged,
        "the record did not replicate; last `geohost status`:\n{last}\nsteps:\n{timings}\nsite logs:\n{}",
        logs.join("\n---\n")
    );
    let blobs = root.join("data/secondary/blobs/conan_recipe_cache");
    assert!(blobs.is_dir(), "{}", blobs.display());
}
