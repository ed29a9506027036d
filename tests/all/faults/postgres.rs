//! A PostgreSQL server of the fault suite's own, so it can be restarted
//! mid-run (the shared test server must never be): `initdb` in a temporary
//! folder, listening on 127.0.0.1 at a free port, run as the `postgres`
//! user when the suite runs as root (initdb refuses root). Stopped and
//! removed when dropped. Found as xtask finds it: the newest
//! `/usr/lib/postgresql/<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
}

impl OwnPostgres {
    /// Starts a server, or `Err(why)` when this machine has no PostgreSQL
    /// server binaries.
    pub fn start() -> Result<OwnPostgres, String> {
        let bin = find_bin().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql")?;
        let as_root = is_root();
        let dir = std::env::temp_dir().join(format!(
            "geohost-faults-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if as_root {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let server = OwnPostgres {
            bin,
            dir,
            port,
            as_root,
        };
        run(server
            .command("initdb")
            .arg("-D")
            .arg(server.dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]))?;
        server.pg_ctl("start")?;
        Ok(server)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new empty database; its URL.
    pub async fn database(&self) -> String {
        let name = format!("faults_{}", uuid::Uuid::new_v4().simple());
        let server = geohost::db::Db::connect_with(&self.admin_url(), 1)
            .await
            .expect("the suite's PostgreSQL");
        server
            .execute_script(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        server.close().await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (connections cut) and starts it again.
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl("stop")?;
        self.pg_ctl("start")
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.dir.join("data"));
        match action {
            "start" => cmd
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "30", "-o", &options, "start"]),
            _ => cmd.args(["-m", "fast", "-w", "-t", "30", "stop"]),
        };
        run(&mut cmd)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// Whether this process runs as root (`id -u`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir(Path::new("/usr/lib/postgresql"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}
