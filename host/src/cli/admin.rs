//! Administrative commands that act on a site's database directly (the
//! site does not need to be running).

use super::SiteArgs;
use crate::primary::{ingest, sites, topology};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

/// A clap parser of an `i32` within `bounds` (its error names them).
fn bounded(bounds: std::ops::RangeInclusive<i32>) -> clap::builder::RangedI64ValueParser<i32> {
    clap::value_parser!(i32).range(i64::from(*bounds.start())..=i64::from(*bounds.end()))
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Register a secondary; prints its access key and secret once.
    Add {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long)]
        name: String,
        /// The secondary's URL.
        #[arg(long)]
        url: String,
        /// Replicate only these namespaces (ids) and their descendants.
        #[arg(long, value_delimiter = ',', conflicts_with = "shards")]
        namespaces: Vec<i64>,
        /// Replicate only projects on these repository storage shards.
        #[arg(long, value_delimiter = ',')]
        shards: Vec<String>,
        /// Also replicate blobs kept in object storage.
        #[arg(long)]
        sync_object_storage: bool,
        /// Downloads at once (default 10).
        #[arg(long, value_parser = bounded(sites::CAPACITY_BOUNDS))]
        files_max_capacity: Option<i32>,
        /// Verifications per round (default 100).
        #[arg(long, value_parser = bounded(sites::CAPACITY_BOUNDS))]
        verification_max_capacity: Option<i32>,
    },
    /// Change a site's settings (only those given).
    Update {
        #[command(flatten)]
        site: SiteArgs,
        /// The site's id (`geohost site list`).
        id: i64,
        #[arg(long)]
        url: Option<String>,
        /// Enable or disable the site.
        #[arg(long)]
        enabled: Option<bool>,
        /// Replicate only these namespaces (ids) and their descendants.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["shards", "everything"])]
        namespaces: Option<Vec<i64>>,
        /// Replicate only projects on these repository storage shards.
        #[arg(long, value_delimiter = ',', conflicts_with = "everything")]
        shards: Option<Vec<String>>,
        /// Replicate everything (clears selective sync).
        #[arg(long)]
        everything: bool,
        /// Whether to replicate blobs kept in object storage.
        #[arg(long)]
        sync_object_storage: Option<bool>,
        /// Downloads at once.
        #[arg(long, value_parser = bounded(sites::CAPACITY_BOUNDS))]
        files_max_capacity: Option<i32>,
        /// Verifications per round.
        #[arg(long, value_parser = bounded(sites::CAPACITY_BOUNDS))]
        verification_max_capacity: Option<i32>,
        /// Days after which the primary checksums a record again.
        #[arg(long, value_parser = bounded(sites::REVERIFICATION_DAYS_BOUNDS))]
        minimum_reverification_interval: Option<i32>,
    },
    /// List the sites.
    List {
        #[command(flatten)]
        site: SiteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an admin API token; prints it once.
    Create {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        site: SiteArgs,
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace (a group; nested under --parent).
    Create {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long)]
        name: String,
        #[arg(long)]
        parent: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project in a namespace.
    Create {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long)]
        name: String,
        #[arg(long)]
        namespace: i64,
        #[arg(long, default_value = "default")]
        repository_storage: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordCommand {
    /// Create or update a record with its blob, e.g.
    /// `geohost record put -c primary.toml packages_helm_metadata_cache --set project_id=1 --set channel=stable --file index.yaml`.
    Put {
        #[command(flatten)]
        site: SiteArgs,
        /// Replicable name of the type.
        replicable_name: String,
        /// Writer columns, `name=value` (repeat).
        #[arg(long = "set", value_parser = parse_assignment)]
        columns: Vec<(String, String)>,
        /// The blob.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a record and its blob.
    Delete {
        #[command(flatten)]
        site: SiteArgs,
        replicable_name: String,
        id: i64,
    },
}

fn parse_assignment(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("expected name=value, got {text:?}"))
}

pub async fn site(command: SiteCommand) -> Result<()> {
    match command {
        SiteCommand::Add {
            site,
            name,
            url,
            namespaces,
            shards,
            sync_object_storage,
            files_max_capacity,
            verification_max_capacity,
        } => {
            let site = site.open_without_blobs().await?;
            let selective_sync_type =
                selective_sync_type(!namespaces.is_empty(), !shards.is_empty());
            let new = sites::NewSite {
                name,
                url,
                selective_sync_type,
                namespace_ids: namespaces,
                selective_sync_shards: shards,
                sync_object_storage,
                files_max_capacity,
                verification_max_capacity,
                ..Default::default()
            };
            let (settings, credentials) = sites::add_secondary(&site, new).await?;
            // Only the TOML on stdout: `geohost site add … >> secondary.toml`.
            eprintln!(
                "Registered secondary {:?} (id {}).",
                settings.name, settings.id
            );
            eprintln!("Put this in the secondary's configuration; the secret is not shown again:");
            println!("[primary]\nurl = {:?}", site.config.url());
            println!(
                "access_key = {:?}\nsecret_access_key = {:?}",
                credentials.access_key, credentials.secret_access_key
            );
            Ok(())
        }
        SiteCommand::Update {
            site,
            id,
            url,
            enabled,
            namespaces,
            shards,
            everything,
            sync_object_storage,
            files_max_capacity,
            verification_max_capacity,
            minimum_reverification_interval,
        } => {
            let site = site.open().await?;
            let selective_sync_type = if everything {
                Some(String::new())
            } else {
                selective_sync_type(namespaces.is_some(), shards.is_some())
            };
            let change = sites::SiteUpdate {
                url,
                enabled,
                selective_sync_type,
                namespace_ids: namespaces.or(everything.then(Vec::new)),
                selective_sync_shards: shards.or(everything.then(Vec::new)),
                sync_object_storage,
                files_max_capacity,
                verification_max_capacity,
                minimum_reverification_interval,
                ..Default::default()
            };
            let settings = sites::update(&site, id, change).await?;
            println!("{}", serde_json::to_string(&settings)?);
            Ok(())
        }
        SiteCommand::List { site } => {
            let site = site.open_without_blobs().await?;
            for s in sites::list(&site.db).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(())
        }
    }
}

pub async fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { site, name } => {
            let site = site.open_without_blobs().await?;
            let (id, token) = crate::api::auth::create_token(&site.db, &name).await?;
            eprintln!("Created admin token {id} ({name}); it is not shown again:");
            println!("{token}");
            Ok(())
        }
        TokenCommand::Revoke { site, id } => {
            let site = site.open_without_blobs().await?;
            if !crate::api::auth::revoke_token(&site.db, id).await? {
                bail!("no live token with id {id}");
            }
            println!("Revoked token {id}.");
            Ok(())
        }
    }
}

pub async fn namespace(command: NamespaceCommand) -> Result<()> {
    match command {
        NamespaceCommand::Create { site, name, parent } => {
            let site = site.open_without_blobs().await?;
            let path = topology::default_path(&name);
            let ns = topology::create_namespace(&site.db, &name, &path, parent).await?;
            println!("{}", serde_json::to_string(&ns)?);
            Ok(())
        }
    }
}

pub async fn project(command: ProjectCommand) -> Result<()> {
    match command {
        ProjectCommand::Create {
            site,
            name,
            namespace,
            repository_storage,
        } => {
            let site = site.open_without_blobs().await?;
            let path = topology::default_path(&name);
            let p =
                topology::create_project(&site.db, &name, &path, namespace, &repository_storage)
                    .await?;
            println!("{}", serde_json::to_string(&p)?);
            Ok(())
        }
    }
}

pub async fn record(command: RecordCommand) -> Result<()> {
    match command {
        RecordCommand::Put {
            site,
            replicable_name,
            columns,
            file,
        } => {
            let site = site.open().await?;
            let it = ingest::installed(&site, &replicable_name)?;
            let mut json = serde_json::Map::new();
            for (name, raw) in columns {
                let column = it.identity.table.column(&name).with_context(|| {
                    format!("{} has no column `{name}`", it.identity.table.name)
                })?;
                let value =
                    crate::plugin::value::text_to_json(column, &raw).map_err(anyhow::Error::msg)?;
                json.insert(name, value);
            }
            let file = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let stream = tokio_util::io::ReaderStream::new(file);
            let outcome = ingest::upsert(&site, &replicable_name, &json, stream).await?;
            println!("{}", serde_json::to_string(&outcome)?);
            Ok(())
        }
        RecordCommand::Delete {
            site,
            replicable_name,
            id,
        } => {
            let site = site.open().await?;
            ingest::delete(&site, &replicable_name, id).await?;
            println!("Deleted {replicable_name} {id}.");
            Ok(())
        }
    }
}

/// The selective sync a site's namespaces or shards name (namespaces win).
fn selective_sync_type(namespaces: bool, shards: bool) -> Option<String> {
    if namespaces {
        Some("namespaces".into())
    } else if shards {
        Some("shards".into())
    } else {
        None
    }
}
