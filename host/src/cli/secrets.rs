//! `geohost secrets generate`: a new key for `secrets.key`, the file that
//! seals a site's Geo secrets at rest ([`crate::auth::SecretBox`]). Every
//! process of a site must read the same key file; a site creates one on its
//! first start if there is none, but a site run by several processes (or
//! on several hosts) should have it made once and handed to each.

use crate::auth::SecretBox;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Make a new secrets key: 32 random bytes as 64 hex characters.
    Generate {
        /// Write it to this file (mode 0600, never overwriting one that
        /// exists) instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub fn run(command: SecretsCommand) -> Result<()> {
    match command {
        SecretsCommand::Generate { output: None } => {
            println!("{}", SecretBox::generate_hex());
            Ok(())
        }
        SecretsCommand::Generate { output: Some(path) } => {
            SecretBox::create_key_file(&path)
                .with_context(|| format!("writing a new key to {}", path.display()))?;
            eprintln!(
                "Wrote a new secrets key to {} (mode 0600). Point [secrets] key_file at it \
                 in the configuration of every process of the site.",
                path.display()
            );
            Ok(())
        }
    }
}
