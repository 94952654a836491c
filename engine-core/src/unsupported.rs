//! The SQL features turso, the SQL engine, has only as experimental switches, which this
//! database never turns on. turso refuses each with advice to pass a command-line flag our
//! users cannot pass; the engine answers with what is not supported instead, and what to do.

/// One experimental turso feature, as a refusal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedFeature {
    CustomTypes,
    GeneratedColumns,
    WithoutRowid,
    IndexMethods,
    MaterializedViews,
    Vacuum,
    Attach,
    AutoVacuum,
    Encryption,
}

/// What in one of turso's messages marks the refusal of each feature (its flag, and the
/// words it uses where it refuses without naming the flag, as when loading a schema).
const REFUSALS: &[(&str, UnsupportedFeature)] = &[
    ("--experimental-custom-types", UnsupportedFeature::CustomTypes),
    ("--experimental-generated-columns", UnsupportedFeature::GeneratedColumns),
    ("generated_columns feature is not enabled", UnsupportedFeature::GeneratedColumns),
    ("Stored generated columns are not supported", UnsupportedFeature::GeneratedColumns),
    ("--experimental-without-rowid", UnsupportedFeature::WithoutRowid),
    ("--experimental-index-method", UnsupportedFeature::IndexMethods),
    ("--experimental-views", UnsupportedFeature::MaterializedViews),
    ("--experimental-vacuum", UnsupportedFeature::Vacuum),
    ("--experimental-attach", UnsupportedFeature::Attach),
    ("--experimental-autovacuum", UnsupportedFeature::AutoVacuum),
    ("--experimental-encryption", UnsupportedFeature::Encryption),
];

impl UnsupportedFeature {
    /// The feature a turso error message refuses, if it is one of these refusals.
    pub fn refused_in(message: &str) -> Option<Self> {
        REFUSALS.iter().find(|(mark, _)| message.contains(mark)).map(|(_, feature)| *feature)
    }

    /// What is not supported, and what to do instead. The guard refuses VACUUM and ATTACH
    /// with these words before turso sees them.
    pub fn what(self) -> &'static str {
        match self {
            UnsupportedFeature::CustomTypes => {
                "custom types (CREATE TYPE, CREATE DOMAIN, array columns, array, struct and union values) are not supported"
            }
            UnsupportedFeature::GeneratedColumns => {
                "generated columns (GENERATED ALWAYS AS, AS (...)) are not supported: compute the value in a view or in the query"
            }
            UnsupportedFeature::WithoutRowid => {
                "WITHOUT ROWID tables cannot be created: use a rowid table with a PRIMARY KEY or a UNIQUE index"
            }
            UnsupportedFeature::IndexMethods => "index methods (CREATE INDEX ... USING) are not supported",
            UnsupportedFeature::MaterializedViews => "materialized views are not supported: use a view",
            UnsupportedFeature::Vacuum => "VACUUM is not supported",
            UnsupportedFeature::Attach => "ATTACH and DETACH are not allowed: each database is its own durable lane",
            UnsupportedFeature::AutoVacuum => "auto-vacuum is not supported",
            UnsupportedFeature::Encryption => "turso's page encryption is not supported (R2 encrypts objects at rest)",
        }
    }

    /// What a client is told when turso refuses the feature.
    pub fn refusal(self) -> String {
        format!("{} (an experimental feature of turso, the SQL engine, that this database does not turn on)", self.what())
    }
}

#[cfg(test)]
mod tests {
    use super::UnsupportedFeature;

    #[test]
    fn turso_refusals_become_ours_and_other_errors_stay_as_they_are() {
        let cases = [
            ("Custom types require --experimental-custom-types flag", Some(UnsupportedFeature::CustomTypes)),
            ("Array features require --experimental-custom-types flag", Some(UnsupportedFeature::CustomTypes)),
            ("Generated columns require --experimental-generated-columns flag", Some(UnsupportedFeature::GeneratedColumns)),
            (
                "table 'g' uses generated columns but the generated_columns feature is not enabled",
                Some(UnsupportedFeature::GeneratedColumns),
            ),
            (
                "WITHOUT ROWID tables are an experimental feature. Enable with --experimental-without-rowid flag",
                Some(UnsupportedFeature::WithoutRowid),
            ),
            ("no such table: t", None),
            ("DELETE from WITHOUT ROWID tables is not supported", None),
        ];
        for (message, feature) in cases {
            assert_eq!(UnsupportedFeature::refused_in(message), feature, "{message}");
        }
        for (_, feature) in super::REFUSALS {
            assert!(!feature.refusal().contains("--experimental"), "{feature:?}");
        }
    }
}
