//! `geohost demo`: two sites replicating Helm metadata caches on this
//! machine, on SQLite and local disk.
//!
//! It starts a primary and a secondary on loopback, seeds a group tree of
//! projects whose Helm channels carry real `index.yaml` content, registers
//! the secondary with selective sync on one group (and its subgroups), shows
//! progress while the secondary syncs and verifies, prints the per-type
//! status, and keeps serving until Ctrl-C.

use crate::catalog::InstalledType;
use crate::config::Config;
use crate::primary::{ingest, sites, topology};
use crate::site::Site;
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for both sites' data (emptied first).
    #[arg(long, default_value = "data/demo")]
    pub data_dir: PathBuf,
    /// Port of the primary (the secondary takes the next one); 0 picks free ports.
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Exit once the secondary has synced and verified everything (for scripts).
    #[arg(long)]
    pub exit_when_synced: bool,
}

/// The replicable name of the type the demo writes (shipped with the host).
const HELM: &str = "packages_helm_metadata_cache";

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("emptying {}", args.data_dir.display()))?;
    }
    let (primary_listener, secondary_listener) = listeners(args.port).await?;
    let primary_url = format!("http://{}", primary_listener.local_addr()?);
    let secondary_url = format!("http://{}", secondary_listener.local_addr()?);

    println!("Geohost demo: a primary and a secondary replicating Helm metadata caches\n");
    let primary_dir = args.data_dir.join("primary");
    let primary = crate::runtime::open(Config::from_toml(&format!(
        "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"{}\"\nurl = \"{primary_url}\"\ndata_dir = {:?}\n\
         [workers]\nidle_poll_ms = 100\n",
        primary_listener.local_addr()?,
        primary_dir.display().to_string(),
    ))?)
    .await
    .context("opening the primary")?;
    let (_, token) = crate::api::auth::create_token(&primary.db, "demo").await?;

    // A group tree: acme/{platform/{charts,infra}, apps}, community.
    let seeded = seed(&primary).await?;
    let selected = seeded.selected_group;
    let (settings, credentials) = sites::add_secondary(
        &primary,
        sites::NewSite {
            name: "secondary".into(),
            url: secondary_url.clone(),
            selective_sync_type: Some("namespaces".into()),
            namespace_ids: vec![selected],
            ..Default::default()
        },
    )
    .await?;
    println!(
        "  seeded {} Helm metadata caches in {} projects under {} groups",
        seeded.records, seeded.projects, seeded.groups
    );
    println!(
        "  registered secondary (site {}), selective sync: namespace {selected} (acme/platform) and its subgroups\n",
        settings.id
    );

    let secondary_dir = args.data_dir.join("secondary");
    let secondary = crate::runtime::open(Config::from_toml(&format!(
        "[site]\nname = \"secondary\"\nrole = \"secondary\"\nlisten = \"{}\"\nurl = \"{secondary_url}\"\ndata_dir = {:?}\n\
         [primary]\nurl = \"{primary_url}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
         [workers]\nidle_poll_ms = 100\nconsistency_interval_secs = 5\n",
        secondary_listener.local_addr()?,
        secondary_dir.display().to_string(),
        credentials.access_key,
        credentials.secret_access_key,
    ))?)
    .await
    .context("opening the secondary")?;
    let (_, secondary_token) = crate::api::auth::create_token(&secondary.db, "demo").await?;

    let primary_task = tokio::spawn(crate::runtime::serve(primary.clone(), primary_listener));
    let secondary_task = tokio::spawn(crate::runtime::serve(secondary.clone(), secondary_listener));

    let it = primary
        .installed(HELM)
        .context("the Helm type is not installed")?;
    let expected = expected_in_scope(&primary, &it, &settings).await?;
    watch_progress(&secondary, &it, expected).await?;
    print_status(&primary, &secondary).await?;

    println!("\nBoth sites keep serving:");
    println!("  primary    {primary_url}    admin token {token}");
    println!("  secondary  {secondary_url}    admin token {secondary_token}");
    println!(
        "\nIn a browser (enter that site's admin token): {primary_url}/admin/geo/sites\n  \
         and {secondary_url}/admin/geo/replication/{HELM}"
    );
    println!("\nTry:");
    println!(
        "  curl -s -H 'PRIVATE-TOKEN: {token}' {primary_url}/api/v4/geo_sites | head -c 600; echo"
    );
    println!(
        "  curl -s -H 'PRIVATE-TOKEN: {token}' '{primary_url}/api/v4/replicables/{HELM}?limit=2'; echo"
    );
    println!("  curl -s {secondary_url}/-/readiness; echo");
    println!(
        "  echo 'apiVersion: v1' | curl -s -X PUT -H 'PRIVATE-TOKEN: {token}' --data-binary @- \\\n    '{primary_url}/api/v4/replicables/{HELM}?project_id={}&channel=demo'; echo",
        seeded.selected_project
    );
    println!(
        "  curl -s -H 'PRIVATE-TOKEN: {token}' {primary_url}/api/v4/geo_sites/status | head -c 600; echo"
    );
    println!("  curl -s -H 'PRIVATE-TOKEN: {token}' {primary_url}/metrics | grep '^geo_'");
    println!(
        "  curl -s -H 'PRIVATE-TOKEN: {secondary_token}' -H 'Content-Type: application/json' {secondary_url}/api/graphql \\\n    \
         -d '{{\"query\":\"{{ geoNode {{ {}Registries(first: 3) {{ nodes {{ id state verificationState }} }} }} }}\"}}'; echo",
        it.identity.camel_name()
    );
    println!("  ls -R {}/blobs | head", secondary_dir.display());
    println!("\nPress Ctrl-C to stop.");

    if !args.exit_when_synced {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("\nStopping."),
            _ = primary.shutdown.cancelled() => {}
            _ = secondary.shutdown.cancelled() => {}
        }
    }
    primary.shutdown.cancel();
    secondary.shutdown.cancel();
    let _ = primary_task.await;
    let _ = secondary_task.await;
    Ok(())
}

/// Listeners on `port` and `port + 1`, or on free ports when those are taken
/// (or `port` is 0).
async fn listeners(port: u16) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    use tokio::net::TcpListener;
    if port != 0 {
        if let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", port)).await,
            TcpListener::bind(("127.0.0.1", port + 1)).await,
        ) {
            return Ok((a, b));
        }
        println!(
            "(ports {port} and {} are taken: using free ports)",
            port + 1
        );
    }
    Ok((
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    ))
}

struct Seeded {
    groups: usize,
    projects: usize,
    records: usize,
    selected_group: i64,
    selected_project: i64,
}

async fn seed(primary: &Arc<Site>) -> Result<Seeded> {
    let db = &primary.db;
    let acme = topology::create_namespace(db, "Acme", "acme", None).await?;
    let platform = topology::create_namespace(db, "Platform", "platform", Some(acme.id)).await?;
    let charts = topology::create_namespace(db, "Charts", "charts", Some(platform.id)).await?;
    let infra = topology::create_namespace(db, "Infra", "infra", Some(platform.id)).await?;
    let apps = topology::create_namespace(db, "Apps", "apps", Some(acme.id)).await?;
    let community = topology::create_namespace(db, "Community", "community", None).await?;
    let layout = [
        (charts.id, &["ingress", "cert-manager", "monitoring"][..]),
        (infra.id, &["postgres-operator", "redis"][..]),
        (platform.id, &["base-images"][..]),
        (apps.id, &["storefront", "checkout", "search"][..]),
        (community.id, &["awesome-charts", "sandbox"][..]),
    ];
    let mut projects = 0;
    let mut records = 0;
    let mut selected_project = 0;
    for (namespace, names) in layout {
        for name in names {
            let project = topology::create_project(db, name, name, namespace, "default").await?;
            projects += 1;
            if selected_project == 0 && namespace == charts.id {
                selected_project = project.id;
            }
            for channel in ["stable", "beta", "nightly", "devel"] {
                let yaml = helm_index(project.id, name, channel);
                let mut columns = serde_json::Map::new();
                columns.insert("project_id".into(), project.id.into());
                columns.insert("channel".into(), channel.into());
                let body =
                    futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(yaml))]);
                ingest::upsert(primary, HELM, &columns, body).await?;
                records += 1;
            }
        }
    }
    Ok(Seeded {
        groups: 6,
        projects,
        records,
        selected_group: platform.id,
        selected_project,
    })
}

/// A Helm repository index as GitLab generates it for a channel
/// (`Packages::Helm::GenerateMetadataService`): `apiVersion: v1`, entries by
/// chart name with metadata, `created`, `digest`, `urls`, then `generated`
/// and `serverInfo.contextPath`.
pub fn helm_index(project_id: i64, chart: &str, channel: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut yaml = String::from("---\napiVersion: v1\nentries:\n");
    yaml.push_str(&format!("  {chart}:\n"));
    let versions: &[&str] = match channel {
        "stable" => &["1.4.2", "1.4.1", "1.3.0"],
        "beta" => &["1.5.0-beta.2", "1.5.0-beta.1"],
        "nightly" => &["1.6.0-nightly.20261127"],
        _ => &["0.0.1-dev"],
    };
    for (i, version) in versions.iter().enumerate() {
        let file = format!("{chart}-{version}.tgz");
        let digest = hex::encode(Sha256::digest(format!("{project_id}/{channel}/{file}")));
        yaml.push_str(&format!(
            "  - name: {chart}\n    version: {version}\n    apiVersion: v2\n    appVersion: \"{}.{}\"\n    \
             description: {chart} chart packaged by project {project_id}\n    type: application\n    \
             home: https://charts.example.com/{chart}\n    maintainers:\n    - name: Platform Team\n      email: platform@example.com\n    \
             created: '2026-11-{:02}T10:{:02}:00.000000000Z'\n    digest: {digest}\n    urls:\n    - charts/{file}\n",
            2 + i,
            i,
            20 + i,
            (project_id % 60),
        ));
    }
    yaml.push_str("generated: '2026-11-28T10:00:00.000000000Z'\n");
    yaml.push_str(&format!(
        "serverInfo:\n  contextPath: \"/api/v4/projects/{project_id}/packages/helm\"\n"
    ));
    yaml
}

/// How many records the secondary's settings select, decided by the type's
/// plugin over the primary's data (what the secondary should end with).
async fn expected_in_scope(
    primary: &Site,
    it: &Arc<InstalledType>,
    settings: &crate::feed::NodeSettings,
) -> Result<u64> {
    let topology = Arc::new(topology::load(&primary.db).await?);
    let scope = settings.scope().to_settings().map_err(anyhow::Error::msg)?;
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = crate::primary::records::page(&primary.db, it, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let rows: Vec<_> = page.iter().map(|r| it.scope_row(r.id, &r.values)).collect();
        let answers = it.plugin.in_scope(&scope, topology.clone(), &rows)?;
        count += answers
            .into_iter()
            .filter(|a| matches!(a, Ok(true)))
            .count() as u64;
    }
    Ok(count)
}

async fn watch_progress(
    secondary: &Arc<Site>,
    it: &Arc<InstalledType>,
    expected: u64,
) -> Result<()> {
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("  {prefix:>9} [{bar:40.green/white}] {pos:>4}/{len:4} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
    let synced = bars.add(
        ProgressBar::new(expected)
            .with_style(style.clone())
            .with_prefix("synced"),
    );
    let verified = bars.add(
        ProgressBar::new(expected)
            .with_style(style)
            .with_prefix("verified"),
    );
    let tracking = secondary.tracking()?;
    let started = Instant::now();
    loop {
        let counts = crate::secondary::status_counts(tracking, it).await?;
        synced.set_position(counts.synced_count as u64);
        verified.set_position(counts.verified_count as u64);
        synced.set_message(if counts.failed_count > 0 {
            format!("{} failed, retrying", counts.failed_count)
        } else {
            String::new()
        });
        if counts.registry_count as u64 == expected
            && counts.synced_count as u64 == expected
            && counts.verified_count as u64 == expected
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            synced.abandon_with_message("not converged after 5 minutes: see the logs");
            verified.abandon();
            anyhow::bail!("the secondary did not converge in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    synced.finish_with_message(format!("in {:.1} s", started.elapsed().as_secs_f64()));
    verified.finish();
    Ok(())
}

async fn print_status(primary: &Site, secondary: &Site) -> Result<()> {
    println!("\nStatus per type (as `rake geo:status` shows it):");
    for it in secondary.catalog.all() {
        let counts = crate::secondary::status_counts(secondary.tracking()?, &it).await?;
        let on_primary = match primary.installed(it.name()) {
            Some(p) => crate::primary::verify::state_counts(&primary.db, &p)
                .await?
                .iter()
                .map(|(_, n)| n)
                .sum(),
            None => 0,
        };
        let pct = |n: i64| {
            if counts.registry_count == 0 {
                0.0
            } else {
                n as f64 * 100.0 / counts.registry_count as f64
            }
        };
        println!("  {}", it.identity.title_plural);
        println!(
            "    on the primary: {on_primary}   in this secondary's scope: {}",
            counts.registry_count
        );
        println!(
            "    synced:   {:>4}/{} ({:.2}%)",
            counts.synced_count,
            counts.registry_count,
            pct(counts.synced_count)
        );
        println!(
            "    verified: {:>4}/{} ({:.2}%)",
            counts.verified_count,
            counts.registry_count,
            pct(counts.verified_count)
        );
        println!("    failed:   {:>4}", counts.failed_count);
    }
    Ok(())
}
