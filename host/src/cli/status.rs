//! `geohost status`: this site's status as GitLab's `rake geo:status` prints
//! it, and `geohost registry resync|reverify`: GitLab's registry actions
//! from the command line (secondaries); `confirm-removals` and `restore`:
//! the guarded deletions (`secondary/guard.rs`, `storage/quarantine.rs`).

use super::SiteArgs;
use crate::config::Role;
use crate::secondary::Registry;
use crate::secondary::bulk::{self, BulkAction};
use crate::secondary::listing::Filter;
use crate::status::fields::TypeCounts;
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// GitLab's `GEO_STATUS_COLUMN_WIDTH`.
const WIDTH: usize = 44;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Resync registries (GitLab's RESYNC / RESYNC_ALL).
    Resync(RegistryArgs),
    /// Reverify registries (GitLab's REVERIFY / REVERIFY_ALL).
    Reverify(RegistryArgs),
    /// Confirm the registry removals held for a type (more than
    /// `deletions.max_removal_share` of its registries would go); the next
    /// consistency pass makes them, its blobs going to the quarantine.
    ConfirmRemovals(TypeArgs),
    /// Move a type's quarantined blobs back to their paths (those removed
    /// within `deletions.quarantine_secs`).
    Restore(TypeArgs),
}

#[derive(Debug, Args)]
pub struct TypeArgs {
    #[command(flatten)]
    site: SiteArgs,
    /// Replicable name of the type, e.g. `packages_helm_metadata_cache`.
    replicable_name: String,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    site: SiteArgs,
    /// Replicable name of the type, e.g. `packages_helm_metadata_cache`.
    replicable_name: String,
    /// The registry id (as GraphQL shows it), or with `--record` the model
    /// record id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<i64>,
    /// Every registry of the type (in batches of 1,000).
    #[arg(long)]
    all: bool,
    /// ID is the model record id, not the registry id.
    #[arg(long, requires = "id")]
    record: bool,
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("{:>WIDTH$}{value}", format!("{label}: "));
}

fn heading(title: &str) {
    println!();
    println!("{title:>WIDTH$}");
    println!("{}", "-".repeat(WIDTH));
}

/// Rails' `time_ago_in_words`, roughly.
pub fn time_ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    let minutes = (secs + 30) / 60;
    match secs {
        0..=29 => "less than a minute".into(),
        30..=89 => "1 minute".into(),
        _ if minutes < 45 => format!("{minutes} minutes"),
        _ if minutes < 90 => "about 1 hour".into(),
        _ if minutes < 1440 => format!("about {} hours", (minutes + 30) / 60),
        _ if minutes < 2520 => "1 day".into(),
        _ if minutes < 43_200 => format!("{} days", (minutes + 720) / 1440),
        _ if minutes < 86_400 => "about 1 month".into(),
        _ if minutes < 525_600 => format!("{} months", (minutes + 21_600) / 43_200),
        _ => format!("about {} years", minutes / 525_600),
    }
}

/// GitLab's `using_percentage`: `(87%)`, floored.
fn percentage(hundredths: i64) -> String {
    format!("({}%)", hundredths / 100)
}

fn counts_row(
    description: &str,
    failed: Option<i64>,
    succeeded: Option<i64>,
    total: Option<i64>,
    hundredths: i64,
) {
    let failed = match failed {
        Some(f) if f > 0 => format!("failed {f} / "),
        _ => String::new(),
    };
    row(
        description,
        format!(
            "{failed}succeeded {} / total {} {}",
            succeeded.unwrap_or(0),
            total.unwrap_or(0),
            percentage(hundredths)
        ),
    );
}

fn timestamp(status: &Map<String, Value>, field: &str) -> Option<DateTime<Utc>> {
    status
        .get(field)
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .and_then(|t| DateTime::from_timestamp(t, 0))
}

/// Prints a status the way `rake geo:status` does.
pub fn print(site: &crate::site::Site, status: &Map<String, Value>, now: DateTime<Utc>) {
    let role = site.role();
    heading("Geo Site Information");
    row("Name", site.name());
    row("URL", site.config.url());
    row(
        "Geo Role",
        if role == Role::Primary {
            "Primary"
        } else {
            "Secondary"
        },
    );
    let health_status = status
        .get("health_status")
        .and_then(Value::as_str)
        .unwrap_or("Unknown");
    row("Health Status", health_status);
    if status.get("healthy") != Some(&Value::Bool(true)) {
        row(
            "Health Status Summary",
            status.get("health").and_then(Value::as_str).unwrap_or(""),
        );
    }
    row(
        "This Site's Geohost Version",
        format!("{} ({})", crate::status::VERSION, crate::status::revision()),
    );

    heading("Replication Information");
    let selective = status.get("selective_sync_type").and_then(Value::as_str);
    row(
        "Sync Settings",
        match selective {
            Some(kind) => format!("Selective ({kind})"),
            None => "Full".into(),
        },
    );
    let last_id = status.get("last_event_id").and_then(Value::as_i64);
    let last_at = timestamp(status, "last_event_timestamp");
    let ago = |at: Option<DateTime<Utc>>| {
        at.map(|at| format!(" ({} ago)", time_ago(at, now)))
            .unwrap_or_default()
    };
    match last_id {
        Some(id) => {
            row(
                "Last event ID seen from primary",
                format!("{id}{}", ago(last_at)),
            );
            if role == Role::Secondary {
                let cursor_id = status.get("cursor_last_event_id").and_then(Value::as_i64);
                let cursor_at = timestamp(status, "cursor_last_event_timestamp");
                match cursor_id {
                    Some(cursor) => {
                        row(
                            "Last event ID processed",
                            format!("{cursor}{}", ago(cursor_at)),
                        );
                        let seconds = match (last_at, cursor_at) {
                            (Some(last), Some(cursor)) => (last - cursor).num_seconds().max(0),
                            _ => 0,
                        };
                        row(
                            "Cursor lag",
                            format!("{} events, {seconds} seconds", (id - cursor).max(0)),
                        );
                    }
                    None => row("Last event ID processed", "Not applicable."),
                }
            }
        }
        None => row("Last event ID seen from primary", "Not applicable."),
    }

    let types: Vec<(String, TypeCounts)> = site
        .catalog
        .all()
        .iter()
        .map(|it| {
            (
                it.identity.title_plural.clone(),
                TypeCounts::read(it.identity.plural_name(), status),
            )
        })
        .collect();
    match role {
        Role::Secondary => {
            heading("Replication Status");
            for (title, c) in &types {
                counts_row(
                    &format!("{title} replicated"),
                    c.failed,
                    c.synced,
                    c.count,
                    c.synced_hundredths(),
                );
            }
            heading("Verification Status");
            for (title, c) in &types {
                counts_row(
                    &format!("{title} verified"),
                    c.verification_failed,
                    c.verified,
                    c.count,
                    c.verified_hundredths(),
                );
            }
        }
        Role::Primary => {
            heading("Verification Status");
            for (title, c) in &types {
                let hundredths = crate::status::fields::hundredths(c.checksummed, c.checksum_total);
                counts_row(
                    &format!("{title} checksummed"),
                    c.checksum_failed,
                    c.checksummed,
                    c.checksum_total,
                    hundredths,
                );
            }
        }
    }
    println!();
}

/// `geohost status`.
pub async fn status(args: SiteArgs) -> Result<()> {
    let site = args.open_without_blobs().await?;
    let status = crate::status::own(&site)
        .await
        .context("computing the status")?;
    print(&site, &status, Utc::now());
    Ok(())
}

/// `geohost registry resync|reverify`.
pub async fn registry(command: RegistryCommand) -> Result<()> {
    let (args, action) = match command {
        RegistryCommand::Resync(args) => (args, BulkAction::ResyncAll),
        RegistryCommand::Reverify(args) => (args, BulkAction::ReverifyAll),
        RegistryCommand::ConfirmRemovals(args) => return confirm_removals(args).await,
        RegistryCommand::Restore(args) => return restore(args).await,
    };
    let site = args.site.open_without_blobs().await?;
    let tracking = site
        .tracking()
        .context("registries exist on secondary sites only")?
        .clone();
    let it = site
        .installed(&args.replicable_name)
        .with_context(|| format!("no type named {:?} is installed", args.replicable_name))?;
    if args.all {
        let pause = Duration::from_millis(site.config.workers.bulk_update_pause_ms);
        let outcome = bulk::run(
            &tracking,
            &it,
            action,
            &Filter::default(),
            pause,
            &CancellationToken::new(),
        )
        .await?;
        println!(
            "{}: {} registries changed in {} batches.",
            action.name(),
            outcome.rows,
            outcome.batches
        );
        return Ok(());
    }
    let id = args.id.context("an ID or --all")?;
    let registry_id = if args.record {
        Registry::of(&it)
            .get(&tracking, id)
            .await?
            .with_context(|| format!("record {id} has no registry on this site"))?
            .id
    } else {
        id
    };
    let row = match action {
        BulkAction::ResyncAll => bulk::resync(&tracking, &it, registry_id).await?,
        BulkAction::ReverifyAll => bulk::reverify(&tracking, &it, registry_id).await?,
    };
    let Some(row) = row else {
        bail!("no registry {registry_id} for {}", args.replicable_name);
    };
    println!(
        "registry {} (record {}): state {:?}, verification {:?}",
        row.id, row.model_id, row.state, row.verification_state
    );
    Ok(())
}

/// `geohost registry confirm-removals`.
async fn confirm_removals(args: TypeArgs) -> Result<()> {
    let site = args.site.open_without_blobs().await?;
    let tracking = site
        .tracking()
        .context("registries exist on secondary sites only")?;
    match crate::secondary::guard::confirm(tracking, &args.replicable_name).await? {
        Some(hold) => println!(
            "Confirmed: the next consistency pass removes up to {} of {} registries of {} \
             (their blobs go to the quarantine; `geohost registry restore` brings them back).",
            hold.removals, hold.registries, args.replicable_name
        ),
        None => bail!("no removals of {} are held", args.replicable_name),
    }
    Ok(())
}

/// `geohost registry restore`.
async fn restore(args: TypeArgs) -> Result<()> {
    let site = args.site.open().await?;
    let known = site.installed(&args.replicable_name).is_some()
        || !crate::swap::versions::of_type(&site.db, &args.replicable_name)
            .await?
            .is_empty();
    if !known {
        bail!(
            "no type named {:?} is known on this site",
            args.replicable_name
        );
    }
    let done = site
        .blobs
        .restore_quarantined(&args.replicable_name)
        .await?;
    println!(
        "Restored {} quarantined blobs of {}; {} left in quarantine (their path holds a blob again).",
        done.restored, args.replicable_name, done.kept
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ago_read_like_rails() {
        let now = Utc::now();
        let ago = |secs: i64| time_ago(now - chrono::Duration::seconds(secs), now);
        assert_eq!(ago(5), "less than a minute");
        assert_eq!(ago(60), "1 minute");
        assert_eq!(ago(10 * 60), "10 minutes");
        assert_eq!(ago(60 * 60), "about 1 hour");
        assert_eq!(ago(5 * 3600), "about 5 hours");
        assert_eq!(ago(30 * 3600), "1 day");
        assert_eq!(ago(3 * 86_400), "3 days");
    }
}
