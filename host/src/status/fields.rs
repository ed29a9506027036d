//! The per-type status fields (`ee/app/models/geo_node_status.rb`): GitLab's twelve
//! `<replicable_name_plural>_…` fields, and the Prometheus gauges derived
//! from them.
//!
//! | field | primary | secondary |
//! |---|---|---|
//! | `_count` | model rows | registry rows, plus the records in scope on the primary that have none yet |
//! | `_checksum_total_count` | rows in `<name>_states` | `null` |
//! | `_checksummed_count` | verification succeeded | `null` |
//! | `_checksum_failed_count` | verification failed | `null` |
//! | `_synced_count`, `_failed_count` | `null` | state synced, failed |
//! | `_registry_count` | `null` | registry rows |
//! | `_verification_total_count` | `null` | synced and verification not disabled |
//! | `_verified_count`, `_verification_failed_count` | `null` | synced and verification succeeded, failed |
//! | `_synced_in_percentage`, `_verified_in_percentage` | `"0.00%"` | synced, verified over `_count`, `"x.xx%"` |
//!
//! GitLab's secondary counts registry rows only (`_count` = `_registry_count`),
//! so a record whose registry was never created (a missed event, before the
//! next consistency pass) did not show at all: "synced 192 / total 192
//! (100%)" with 200 records in scope. Here `_count` also holds the in-scope
//! records without a row (`secondary::consistency::missing_registries`), and
//! the percentages are over it; `_registry_count` stays the rows.
//!
//! A type whose replication is off (`geo_<name>_replication`) has every
//! count `null`, as GitLab leaves disabled replicators out of the status.

use crate::plugin::TypeIdentity;
use crate::secondary::RegistryCounts;
use crate::states::VerificationState;
use serde_json::{Map, Value};

/// The ten count fields: suffix after the plural name, and a description.
pub const COUNT_FIELDS: [(&str, &str); 10] = [
    ("_count", "records (primary) or registry rows (secondary)"),
    (
        "_checksum_total_count",
        "records to checksum on the primary",
    ),
    ("_checksummed_count", "records checksummed on the primary"),
    (
        "_checksum_failed_count",
        "records whose checksum failed on the primary",
    ),
    ("_synced_count", "registries synced on the secondary"),
    (
        "_failed_count",
        "registries failed to sync on the secondary",
    ),
    ("_registry_count", "registry rows on the secondary"),
    (
        "_verification_total_count",
        "synced registries to verify on the secondary",
    ),
    (
        "_verified_count",
        "synced registries verified on the secondary",
    ),
    (
        "_verification_failed_count",
        "synced registries whose verification failed on the secondary",
    ),
];

/// GitLab's Prometheus name of a status field: `geo_` and the field without
/// ONE trailing `_count` or `_total` (`…_checksum_total_count` →
/// `geo_…_checksum_total`).
pub fn gauge_name(field: &str) -> String {
    let base = field
        .strip_suffix("_count")
        .or_else(|| field.strip_suffix("_total"))
        .unwrap_or(field);
    format!("geo_{base}")
}

/// The counts of one type on one site; `None` is GitLab's `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeCounts {
    /// The type's `plural_name()`, the fields' prefix.
    pub plural: String,
    pub count: Option<i64>,
    pub checksum_total: Option<i64>,
    pub checksummed: Option<i64>,
    pub checksum_failed: Option<i64>,
    pub synced: Option<i64>,
    pub failed: Option<i64>,
    pub registry: Option<i64>,
    pub verification_total: Option<i64>,
    pub verified: Option<i64>,
    pub verification_failed: Option<i64>,
}

impl TypeCounts {
    /// A type whose replication is off: every count `null`.
    pub fn disabled(identity: &TypeIdentity) -> TypeCounts {
        TypeCounts {
            plural: identity.plural_name().to_string(),
            ..TypeCounts::default()
        }
    }

    /// The primary's counts: `records` model rows and the verification
    /// states of `<name>_states`.
    pub fn primary(
        identity: &TypeIdentity,
        records: i64,
        states: &[(VerificationState, i64)],
    ) -> TypeCounts {
        let of = |wanted: VerificationState| {
            states
                .iter()
                .filter(|(s, _)| *s == wanted)
                .map(|(_, n)| n)
                .sum::<i64>()
        };
        TypeCounts {
            plural: identity.plural_name().to_string(),
            count: Some(records),
            checksum_total: Some(states.iter().map(|(_, n)| n).sum()),
            checksummed: Some(of(VerificationState::Succeeded)),
            checksum_failed: Some(of(VerificationState::Failed)),
            ..TypeCounts::default()
        }
    }

    /// A secondary's counts, from its registry.
    pub fn secondary(identity: &TypeIdentity, counts: &RegistryCounts) -> TypeCounts {
        TypeCounts {
            plural: identity.plural_name().to_string(),
            count: Some(counts.registry_count),
            synced: Some(counts.synced_count),
            failed: Some(counts.failed_count),
            registry: Some(counts.registry_count),
            verification_total: Some(counts.verification_total_count),
            verified: Some(counts.verified_count),
            verification_failed: Some(counts.verification_failed_count),
            ..TypeCounts::default()
        }
    }

    fn values(&self) -> [Option<i64>; 10] {
        [
            self.count,
            self.checksum_total,
            self.checksummed,
            self.checksum_failed,
            self.synced,
            self.failed,
            self.registry,
            self.verification_total,
            self.verified,
            self.verification_failed,
        ]
    }

    /// A secondary's count: its registry rows and `missing` in-scope
    /// records without one.
    pub fn add_missing(&mut self, missing: i64) {
        self.count = self.registry.map(|rows| rows + missing.max(0));
    }

    /// GitLab's `synced_in_percentage`: synced over the count (registry
    /// rows and records still without one), in hundredths of a percent (0
    /// when there is none).
    pub fn synced_hundredths(&self) -> i64 {
        hundredths(self.synced, self.count)
    }

    /// GitLab's `verified_in_percentage`: verified over the count (not over
    /// `verification_total`), in hundredths of a percent.
    pub fn verified_hundredths(&self) -> i64 {
        hundredths(self.verified, self.count)
    }

    /// Writes the twelve fields into a status object.
    pub fn write(&self, status: &mut Map<String, Value>) {
        for ((suffix, _), value) in COUNT_FIELDS.iter().zip(self.values()) {
            status.insert(format!("{}{suffix}", self.plural), value.into());
        }
        status.insert(
            format!("{}_synced_in_percentage", self.plural),
            percentage_text(self.synced_hundredths()).into(),
        );
        status.insert(
            format!("{}_verified_in_percentage", self.plural),
            percentage_text(self.verified_hundredths()).into(),
        );
    }

    /// Reads the counts of `plural` back from a status object (a missing or
    /// non-integer field is `null`).
    pub fn read(plural: &str, status: &Map<String, Value>) -> TypeCounts {
        let get = |suffix: &str| status.get(&format!("{plural}{suffix}"))?.as_i64();
        TypeCounts {
            plural: plural.to_string(),
            count: get("_count"),
            checksum_total: get("_checksum_total_count"),
            checksummed: get("_checksummed_count"),
            checksum_failed: get("_checksum_failed_count"),
            synced: get("_synced_count"),
            failed: get("_failed_count"),
            registry: get("_registry_count"),
            verification_total: get("_verification_total_count"),
            verified: get("_verified_count"),
            verification_failed: get("_verification_failed_count"),
        }
    }

    /// `(field, value)` of every count that is not `null`.
    pub fn present(&self) -> Vec<(String, i64)> {
        COUNT_FIELDS
            .iter()
            .zip(self.values())
            .filter_map(|((suffix, _), value)| Some((format!("{}{suffix}", self.plural), value?)))
            .collect()
    }
}

/// `count / total` in hundredths of a percent, rounded half up (Rails'
/// `number_to_percentage`); 0 when `total` is 0 or unknown.
pub fn hundredths(count: Option<i64>, total: Option<i64>) -> i64 {
    match (count, total) {
        (Some(count), Some(total)) if total > 0 => {
            let (count, total) = (count.max(0) as i128, total as i128);
            ((count * 20_000 + total) / (2 * total)) as i64
        }
        _ => 0,
    }
}

/// GitLab's API form of a percentage: `"87.50%"`.
pub fn percentage_text(hundredths: i64) -> String {
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_names_drop_one_suffix() {
        let p = "packages_helm_metadata_caches";
        let names: Vec<String> = COUNT_FIELDS
            .iter()
            .map(|(suffix, _)| gauge_name(&format!("{p}{suffix}")))
            .collect();
        assert_eq!(
            names,
            [
                "geo_packages_helm_metadata_caches",
                "geo_packages_helm_metadata_caches_checksum_total",
                "geo_packages_helm_metadata_caches_checksummed",
                "geo_packages_helm_metadata_caches_checksum_failed",
                "geo_packages_helm_metadata_caches_synced",
                "geo_packages_helm_metadata_caches_failed",
                "geo_packages_helm_metadata_caches_registry",
                "geo_packages_helm_metadata_caches_verification_total",
                "geo_packages_helm_metadata_caches_verified",
                "geo_packages_helm_metadata_caches_verification_failed",
            ]
        );
        assert_eq!(gauge_name("last_event_id"), "geo_last_event_id");
        assert_eq!(
            gauge_name("cursor_last_event_timestamp"),
            "geo_cursor_last_event_timestamp"
        );
    }

    #[test]
    fn percentages_are_gitlab_strings() {
        assert_eq!(percentage_text(hundredths(Some(7), Some(8))), "87.50%");
        assert_eq!(percentage_text(hundredths(Some(2), Some(3))), "66.67%");
        assert_eq!(percentage_text(hundredths(Some(1), Some(3))), "33.33%");
        assert_eq!(percentage_text(hundredths(Some(1), Some(8))), "12.50%");
        // Half up, as Rails rounds: 1/800 = 0.125%.
        assert_eq!(percentage_text(hundredths(Some(1), Some(800))), "0.13%");
        assert_eq!(percentage_text(hundredths(Some(5), Some(5))), "100.00%");
        assert_eq!(percentage_text(hundredths(Some(0), Some(0))), "0.00%");
        assert_eq!(percentage_text(hundredths(None, None)), "0.00%");
        assert_eq!(percentage_text(hundredths(Some(3), None)), "0.00%");
    }

    #[test]
    fn fields_round_trip() {
        let counts = TypeCounts {
            plural: "things".into(),
            count: Some(8),
            synced: Some(7),
            failed: Some(1),
            registry: Some(8),
            verification_total: Some(7),
            verified: Some(6),
            verification_failed: Some(0),
            ..TypeCounts::default()
        };
        let mut map = Map::new();
        counts.write(&mut map);
        assert_eq!(map.len(), 12);
        assert_eq!(map["things_checksum_total_count"], Value::Null);
        assert_eq!(map["things_synced_in_percentage"], "87.50%");
        assert_eq!(map["things_verified_in_percentage"], "75.00%");
        assert_eq!(TypeCounts::read("things", &map), counts);
        assert_eq!(counts.present().len(), 7);
    }
}
