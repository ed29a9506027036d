//! The one table `cargo xtask bench` ends with: every bench's headline
//! figures (JSON lines under `target/bench/`, written by
//! `host/benches/common::headline`) side by side with their peers and the
//! ratios, also written to `target/bench/summary.md`.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Where the benches write their headline figures.
pub fn dir(root: &Path) -> std::path::PathBuf {
    root.join("target/bench")
}

/// Removes the figures of an earlier run.
pub fn clear(root: &Path) -> Result<()> {
    let dir = dir(root);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "jsonl") {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Reads every headline and prints the summary table (Markdown).
pub fn print(root: &Path, machine: &str) -> Result<()> {
    let dir = dir(root);
    let mut lines = Vec::new();
    // Bench order: what the issue lists first comes first.
    for bench in ["sync", "verify", "plugin", "sites"] {
        let path = dir.join(format!("{bench}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines.push(
                serde_json::from_str::<Value>(line)
                    .with_context(|| format!("{}", path.display()))?,
            );
        }
    }
    let mut table = String::from(
        "| measure | Geohost | peers (Geohost ÷ peer, > 1 means Geohost is faster) |\n|---|--:|---|\n",
    );
    for row in &lines {
        let unit = row["unit"].as_str().unwrap_or("");
        let ours = row["geohost"].as_f64().unwrap_or(f64::NAN);
        let higher = row["higher_is_better"].as_bool().unwrap_or(true);
        let peers: Vec<String> = row["peers"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|p| Some((p[0].as_str()?, p[1].as_f64()?)))
                    .map(|(name, theirs)| {
                        // A ratio where > 1 always means "Geohost better".
                        let ratio = if higher { ours / theirs } else { theirs / ours };
                        format!("{name} {} ({ratio:.2}×)", figure(theirs, unit))
                    })
                    .collect()
            })
            .unwrap_or_default();
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            row["measure"].as_str().unwrap_or("?"),
            figure(ours, unit),
            if peers.is_empty() {
                "–".into()
            } else {
                peers.join(" · ")
            }
        ));
    }
    let scale = lines
        .iter()
        .filter_map(|l| l["scale"].as_f64())
        .find(|s| (*s - 1.0).abs() > f64::EPSILON);
    let mut text = format!("Summary of this run ({machine})\n");
    if let Some(scale) = scale {
        text.push_str(&format!("GEOHOST_BENCH_SCALE={scale}: a reduced run\n"));
    }
    text.push('\n');
    text.push_str(&table);
    println!("\n{text}");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("summary.md"), &text)?;
    Ok(())
}

/// A figure with its unit, rounded for reading.
fn figure(value: f64, unit: &str) -> String {
    let number = if value >= 100.0 {
        thousands(value.round() as u64)
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    format!("{number} {unit}")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
