//! The audit trail: the record shape, its schema, segments and the report come from the core
//! ([`stepup_core::records`]); [`writer`] is the shell that writes lines to stdout and segments
//! to the API server.

pub use stepup_core::records::*;

pub mod writer;

#[cfg(test)]
mod tests {
    /// Every decision word the webhook can record is one the schema lists.
    #[test]
    fn the_schema_lists_every_decision() {
        let listed = listed("decision");
        for outcome in stepup_core::decision::Outcome::ALL {
            assert!(listed.iter().any(|v| v == outcome.as_str()), "{outcome} is missing from record.schema.json");
        }
        assert_eq!(listed.len(), stepup_core::decision::Outcome::ALL.len(), "the schema lists no other decision");
    }

    /// The values the schema's enum for `field` allows.
    fn listed(field: &str) -> Vec<String> {
        let schema: serde_json::Value =
            serde_json::from_str(stepup_core::records::JSON_SCHEMA).expect("the schema is JSON");
        schema["properties"][field]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("an enum for {field}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Every operation an admission record names and every verb an authorization record does.
    #[test]
    fn the_schema_lists_every_operation_and_verb() {
        use stepup_core::api::{Operation, Verb};
        let listed = listed("operation");
        let operations = [Operation::Create, Operation::Update, Operation::Delete, Operation::Connect];
        for word in operations.iter().map(|o| o.as_str()).chain(Verb::ALL.iter().map(|v| v.as_str())) {
            assert!(listed.iter().any(|l| l == word), "{word} is missing from record.schema.json's operation");
        }
    }

    /// Every event name the code can record (a `"<area>.<what>"` literal in `src/`) is one the
    /// schema lists, so that a new step cannot write lines its own schema rejects.
    #[test]
    fn the_schema_lists_every_event_the_code_records() {
        let listed = listed("event");
        let areas = [
            "admission",
            "authorization",
            "challenge",
            "grant",
            "enrollment",
            "bootstrap",
            "factor",
            "certificate",
            "protection",
            "records",
        ];
        let mut missing = std::collections::BTreeSet::new();
        let mut seen = 0;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("src"), root.join("core/src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for literal in text.split('"').skip(1).step_by(2) {
                    let Some((area, what)) = literal.split_once('.') else { continue };
                    if areas.contains(&area)
                        && !what.is_empty()
                        && what.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        seen += 1;
                        if !listed.iter().any(|l| l == literal) {
                            missing.insert(format!("{literal} ({})", path.display()));
                        }
                    }
                }
            }
        }
        assert!(seen > 20, "the scan found the event names ({seen})");
        assert!(missing.is_empty(), "events missing from record.schema.json: {missing:?}");
    }
}
