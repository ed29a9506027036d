//! Python virtual environments under the repository's `target/`, for what
//! the tests run from PyPI: moto (`moto.rs`) and GitLab's own clients
//! (python-gitlab and gql, pinned in `tests/clients/requirements.txt`).
//! Nothing is cached outside the repository.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Creates the venv `venv` (with pip) unless it exists.
pub fn create(venv: &Path) -> Result<()> {
    if venv.join("bin").join("pip").exists() {
        return Ok(());
    }
    // Debian's python3 needs python3-venv for `-m venv` to bring pip.
    if let Err(error) = crate::ensure_debian_packages(&["python3-venv"]) {
        eprintln!("xtask: {error:#}");
    }
    eprintln!("xtask: creating {}", venv.display());
    crate::run(Command::new("python3").args(["-m", "venv"]).arg(venv))
}

/// The venv `venv` with exactly the pinned packages of `requirements`
/// installed: installs them when the venv is new or the file changed since
/// (a copy of the installed file is kept in the venv). Returns its Python.
pub fn with_requirements(venv: &Path, requirements: &Path) -> Result<PathBuf> {
    let python = venv.join("bin").join("python");
    let wanted = std::fs::read_to_string(requirements)?;
    let stamp = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    create(venv)?;
    eprintln!("xtask: installing {}", requirements.display());
    let started = std::time::Instant::now();
    crate::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(requirements)
            .env_remove("AWS_CA_BUNDLE"),
    )?;
    eprintln!(
        "xtask: installed {} in {:.1} s",
        requirements.display(),
        started.elapsed().as_secs_f64()
    );
    if !python.exists() {
        bail!("{} is missing after the install", python.display());
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
