//! `geohost plugin list | install | rollback | remove | diff`: hot swap on
//! a running site, through its admin API (`/api/v4/geo/plugins`, see
//! [`crate::api::plugins`]). The site's URL comes from its configuration
//! file; the admin token from `--token` or `GEOHOST_TOKEN`.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How to reach the running site.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The site's configuration file (its `site.url` or `site.listen` is used).
    #[arg(long, short, env = "GEOHOST_CONFIG")]
    pub config: PathBuf,
    /// An admin API token (`geohost token create`).
    #[arg(long, env = "GEOHOST_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl Remote {
    fn url(&self, path: &str) -> Result<String> {
        let config = crate::config::Config::load(Some(&self.config))?;
        Ok(format!("{}{path}", config.url().trim_end_matches('/')))
    }

    fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let url = self.url(path)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut request = reqwest::Client::new()
                .request(method, &url)
                .header("PRIVATE-TOKEN", &self.token);
            if let Some(body) = body {
                request = request.body(body);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("reaching the site at {url}"))?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                let message = body["message"].as_str().unwrap_or("(no message)");
                bail!("{status}: {message}");
            }
            Ok(body)
        })
    }
}

fn read(file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

/// `geohost plugin list`.
pub fn list(remote: &Remote) -> Result<()> {
    let body = remote.send(reqwest::Method::GET, "/api/v4/geo/plugins", None)?;
    for t in body["types"].as_array().into_iter().flatten() {
        let running = match t["version"].as_str() {
            Some(v) => format!("{v} ({})", short(t["sha256"].as_str().unwrap_or(""))),
            None => "removed".into(),
        };
        println!("{}  {running}", t["name"].as_str().unwrap_or("?"));
        for v in t["versions"].as_array().into_iter().flatten() {
            let state = if v["active"].as_bool() == Some(true) {
                "active".to_string()
            } else if let Some(error) = v["last_validation_error"].as_str() {
                format!("refused: {error}")
            } else {
                "inactive".to_string()
            };
            println!(
                "    {:<10} {}  WIT {}  installed {}  {state}",
                v["version"].as_str().unwrap_or("?"),
                short(v["sha256"].as_str().unwrap_or("")),
                v["wit_version"].as_str().unwrap_or("?"),
                v["installed_at"].as_str().unwrap_or("?"),
            );
        }
    }
    for f in body["failures"].as_array().into_iter().flatten() {
        println!(
            "refused: {} from {}: {}",
            f["name"].as_str().unwrap_or("(unknown type)"),
            f["source"].as_str().unwrap_or("?"),
            f["error"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// `geohost plugin install FILE [--type NAME]`.
pub fn install(remote: &Remote, file: &Path, name: Option<&str>) -> Result<()> {
    let bytes = read(file)?;
    let report = match name {
        Some(name) => remote.send(
            reqwest::Method::PUT,
            &format!("/api/v4/geo/plugins/{name}"),
            Some(bytes),
        )?,
        None => remote.send(reqwest::Method::POST, "/api/v4/geo/plugins", Some(bytes))?,
    };
    print_report(&report);
    Ok(())
}

/// `geohost plugin rollback NAME`.
pub fn rollback(remote: &Remote, name: &str) -> Result<()> {
    let report = remote.send(
        reqwest::Method::POST,
        &format!("/api/v4/geo/plugins/{name}/rollback"),
        None,
    )?;
    print_report(&report);
    Ok(())
}

/// `geohost plugin remove NAME [--force]`.
pub fn remove(remote: &Remote, name: &str, force: bool) -> Result<()> {
    let body = remote.send(
        reqwest::Method::DELETE,
        &format!("/api/v4/geo/plugins/{name}?force={force}"),
        None,
    )?;
    println!(
        "{} {} removed (tables, records, registries and blobs kept)",
        body["name"].as_str().unwrap_or(name),
        body["version"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `geohost plugin diff FILE`.
pub fn diff(remote: &Remote, file: &Path) -> Result<()> {
    let d = remote.send(
        reqwest::Method::POST,
        "/api/v4/geo/plugins/diff",
        Some(read(file)?),
    )?;
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    println!(
        "{} {} → {} over {} live records",
        s(&d["name"]),
        s(&d["from_version"]),
        s(&d["to_version"]),
        d["records"]
    );
    for scope in d["scopes"].as_array().into_iter().flatten() {
        println!(
            "  site {}: {} records enter the scope (e.g. {}), {} leave it (e.g. {})",
            s(&scope["site"]),
            scope["enter"],
            scope["enter_examples"],
            scope["leave"],
            scope["leave_examples"]
        );
    }
    println!("  blob paths that change: {}", d["path_changes"]);
    for p in d["path_examples"].as_array().into_iter().flatten() {
        println!(
            "    record {}: {} → {}",
            p["id"],
            s(&p["from"]),
            s(&p["to"])
        );
    }
    if d["invalid_paths"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  invalid blob paths (the install would be refused): {}",
            d["invalid_paths"]
        );
        for e in d["invalid_examples"].as_array().into_iter().flatten() {
            println!("    {}", s(e));
        }
    }
    Ok(())
}

fn print_report(r: &Value) {
    println!("{}", report_headline(r));
    println!(
        "  live after {:.1} ms (compile: {}), test vectors passed: {} of its own, {} of the \
         version it replaced",
        r["swap_time"].as_f64().unwrap_or(0.0),
        r["compile"].as_str().unwrap_or("-"),
        r["test_vectors"],
        r["predecessor_vectors"]
    );
    println!(
        "  registries created {}, removed {}, held for confirmation {}; blobs moved {}",
        r["registries_created"], r["registries_removed"], r["registries_held"], r["blobs_moved"]
    );
    for w in r["warnings"].as_array().into_iter().flatten() {
        println!("  warning: {}", w.as_str().unwrap_or("-"));
    }
}

/// The first line of a swap report: what happened, in words.
fn report_headline(r: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let (name, version) = (s(&r["name"]), s(&r["version"]));
    let sha = s(&r["sha256"]);
    let sha = &sha[..12.min(sha.len())];
    let previous = s(&r["previous_version"]);
    match r["outcome"].as_str() {
        Some("installed") => format!("{name} {version} installed ({sha})"),
        Some("upgraded") => format!("{name} upgraded from {previous} to {version} ({sha})"),
        Some("rolled_back") => format!("{name} rolled back from {previous} to {version} ({sha})"),
        Some("unchanged") => {
            format!("{name} {version} unchanged: it is the running version ({sha})")
        }
        other => format!("{name} {version}: {} ({sha})", other.unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headlines_say_what_happened() {
        let report = |outcome: &str| {
            json!({"name": "t", "version": "1.0.0", "previous_version": "1.1.0",
                   "sha256": "0123456789abcdef", "outcome": outcome})
        };
        assert_eq!(
            report_headline(&report("rolled_back")),
            "t rolled back from 1.1.0 to 1.0.0 (0123456789ab)"
        );
        assert_eq!(
            report_headline(&report("upgraded")),
            "t upgraded from 1.1.0 to 1.0.0 (0123456789ab)"
        );
        assert_eq!(
            report_headline(&report("installed")),
            "t 1.0.0 installed (0123456789ab)"
        );
    }
}
