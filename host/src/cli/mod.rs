//! The `geohost` command line: one place that parses options (clap) and
//! hands off to the library. Errors carry context (anyhow) here and only here.

pub(crate) mod admin;
pub(crate) mod demo;
pub(crate) mod plugin;
pub(crate) mod plugin_admin;
pub(crate) mod scaffold;
pub(crate) mod secrets;
pub(crate) mod status;

use crate::config::Config;
use crate::runtime::Blobs;
use crate::site::Site;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// Replicate and verify blobs between sites, GitLab Geo style.
#[derive(Debug, Parser)]
#[command(name = "geohost", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The site a command works on.
#[derive(Debug, Clone, Args)]
pub struct SiteArgs {
    /// The site's configuration file (TOML); `GEOHOST_…` variables override it.
    #[arg(long, short, env = "GEOHOST_CONFIG")]
    pub config: PathBuf,
}

impl SiteArgs {
    /// Opens the site with its blob storage (serving, and commands that
    /// read or write blobs).
    pub async fn open(&self) -> anyhow::Result<Arc<Site>> {
        self.open_with(Blobs::Open).await
    }

    /// Opens the site for a command that touches no blob: its blob storage
    /// stays closed, so the command needs neither its credentials nor its
    /// reachability.
    pub async fn open_without_blobs(&self) -> anyhow::Result<Arc<Site>> {
        self.open_with(Blobs::Closed).await
    }

    async fn open_with(&self, blobs: Blobs) -> anyhow::Result<Arc<Site>> {
        let config = Config::load(Some(&self.config))?;
        crate::runtime::open_for_command(config, blobs).await
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the demo: a primary and a secondary replicating Helm metadata caches.
    Demo(demo::DemoArgs),
    /// Run a site (primary or secondary) from its configuration.
    Serve(SiteArgs),
    /// Manage Geo sites on the primary.
    #[command(subcommand)]
    Site(admin::SiteCommand),
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Manage namespaces (groups) on the primary.
    #[command(subcommand)]
    Namespace(admin::NamespaceCommand),
    /// Manage projects on the primary.
    #[command(subcommand)]
    Project(admin::ProjectCommand),
    /// Write and delete records on the primary, as a package registry does.
    #[command(subcommand)]
    Record(admin::RecordCommand),
    /// Work with replicable type plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print this site's Geo status, as GitLab's `rake geo:status` does.
    Status(SiteArgs),
    /// Resync or reverify registries on a secondary.
    #[command(subcommand)]
    Registry(status::RegistryCommand),
    /// Make the key that seals a site's secrets at rest (`secrets.key`).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(default_log_level(&cli.command));
    match cli.command {
        Command::Plugin(command) => plugin::run(command),
        Command::Secrets(command) => secrets::run(command),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run_async(command))
        }
    }
}

async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Serve(args) => {
            let site = args.open().await?;
            let shutdown = site.shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
                shutdown.cancel();
            });
            crate::runtime::run(site).await
        }
        Command::Site(c) => admin::site(c).await,
        Command::Token(c) => admin::token(c).await,
        Command::Namespace(c) => admin::namespace(c).await,
        Command::Project(c) => admin::project(c).await,
        Command::Record(c) => admin::record(c).await,
        Command::Status(args) => status::status(args).await,
        Command::Registry(c) => status::registry(c).await,
        Command::Plugin(_) | Command::Secrets(_) => unreachable!("handled without a runtime"),
    }
}

/// The log level when `RUST_LOG` is unset: a server (`serve`) logs what it
/// does (`info`); the demo and the one-shot commands print their own
/// answer, and log only warnings and errors (their per-record and
/// type-loading lines appear with `RUST_LOG=info`).
pub fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "info",
        _ => "warn",
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (`default` when unset),
/// `GEOHOST_LOG_FORMAT=json` for JSON lines.
pub fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("GEOHOST_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
