//! Which type owns each table: the host records, in `geo_table_owners`
//! (main database), every table and index a type's templates create, and
//! refuses a type whose names are another type's or the host's own (every
//! table and index of the host's migrations, [`crate::db::migrate::host_objects`]).
//!
//! Why: the model table's name comes from the type. Without a record, a
//! second type declaring the first one's model table would take it over
//! (and its deletes would cascade into the first type's rows), and a type
//! declaring a host table (`geo_leases`, `projects`) would have the host
//! reconcile it as a model table.

use crate::db::{Db, DbError, migrate, template};
use crate::plugin::TypeIdentity;
use crate::site::Site;

/// Refuses `identity` if a table or index its templates create belongs to
/// the host, to another installed type, or to another type recorded on
/// this site (installed now or not). Changes nothing.
pub async fn check(site: &Site, identity: &TypeIdentity) -> Result<(), String> {
    let names = template::type_objects(identity);
    let host = migrate::host_objects();
    if let Some(name) = names.iter().find(|n| host.contains(*n)) {
        return Err(format!(
            "its table or index `{name}` is one of Geohost's own; choose another model table name"
        ));
    }
    for other in site.catalog.all() {
        if other.name() == identity.name {
            continue;
        }
        let theirs = template::type_objects(&other.identity);
        if let Some(name) = names.iter().find(|n| theirs.contains(*n)) {
            return Err(format!(
                "its table or index `{name}` belongs to type `{}`",
                other.name()
            ));
        }
    }
    let owners = owners_of(&site.db, names.iter().map(String::as_str))
        .await
        .map_err(|e| format!("reading the table owners: {e}"))?;
    if let Some((name, owner)) = owners.iter().find(|(_, owner)| *owner != identity.name) {
        return Err(format!(
            "its table or index `{name}` belongs to type `{owner}` (recorded on this site)"
        ));
    }
    Ok(())
}

/// Records `identity`'s tables and indexes as its own (those not recorded yet).
pub async fn record(db: &Db, identity: &TypeIdentity) -> Result<(), DbError> {
    for name in template::type_objects(identity) {
        db.execute(
            "INSERT INTO geo_table_owners (name, replicable_name) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[name.into(), identity.name.as_str().into()],
        )
        .await?;
    }
    Ok(())
}

/// The recorded owners of `names`: (name, type).
async fn owners_of(
    db: &Db,
    names: impl Iterator<Item = &str>,
) -> Result<Vec<(String, String)>, DbError> {
    let mut out = Vec::new();
    for name in names {
        if let Some(row) = db
            .fetch_optional(
                "SELECT replicable_name FROM geo_table_owners WHERE name = $1",
                &[name.into()],
            )
            .await?
        {
            out.push((name.to_string(), row.text("replicable_name")?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reserves_every_table_of_its_migrations() {
        let host = migrate::host_objects();
        for table in [
            "geo_leases",
            "projects",
            "namespaces",
            "plugin_versions",
            "event_log_states",
            "geo_table_owners",
            "geo_removal_guards",
            "_sqlx_migrations",
        ] {
            assert!(host.contains(table), "{table}: {host:?}");
        }
    }

    #[test]
    fn created_objects_reads_tables_and_indexes() {
        let sql = "-- CREATE TABLE not_this (x int);\n\
                   CREATE TABLE IF NOT EXISTS \"a_states\" (id int);\n\
                   CREATE UNIQUE INDEX IF NOT EXISTS \"i1\" ON a (x);\n\
                   create index i2 on a(y); CREATE TABLE b(x int)";
        assert_eq!(
            template::created_objects(sql),
            ["a_states", "i1", "i2", "b"]
        );
    }
}
