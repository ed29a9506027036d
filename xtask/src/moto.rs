//! A throwaway S3 server for the tests: `moto_server` (PyPI `moto[server]`)
//! from a virtual environment under `target/moto-venv`, listening on a free
//! loopback port, in memory, stopped when dropped.
//!
//! Why moto: it passes `object_store`'s own S3 integration tests (multipart,
//! copy, conditional put) and starts in half a second; see
//! `shared/docs/test-services.md`. The venv is created once and reused, and
//! lives inside the repository's `target/`, so CI caches nothing outside it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Installs moto if missing and starts it.
    pub fn start(root: &Path) -> Result<Moto> {
        let venv = root.join("target").join("moto-venv");
        let server = ensure_installed(&venv)?;
        let port = free_port()?;
        let log = std::fs::File::create(venv.join("moto_server.log"))?;
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The machine's CA bundle variable means nothing to a plain-HTTP
            // server, and moto's own AWS clients must not pick it up.
            .env_remove("AWS_CA_BUNDLE")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_ready(port)?;
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's `moto_server`, installing `moto[server]` first if needed.
fn ensure_installed(venv: &Path) -> Result<PathBuf> {
    let server = venv.join("bin").join("moto_server");
    if server.exists() {
        return Ok(server);
    }
    crate::venv::create(venv)?;
    eprintln!("xtask: installing moto[server] (S3 test server)");
    crate::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", "moto[server]"])
            .env_remove("AWS_CA_BUNDLE"),
    )?;
    if !server.exists() {
        bail!("moto installed but {} is missing", server.display());
    }
    Ok(server)
}

/// Waits until the server answers HTTP on `port`.
fn wait_ready(port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("moto_server did not answer on port {port} within 30 s")
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
