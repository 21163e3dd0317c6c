//! Label selectors, compiled once and matched against a namespace's labels.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::PolicyError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated label selector. An empty selector matches every label set, as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Validates and compiles; `field` is the selector's path, used in error messages.
    pub fn compile(selector: &LabelSelector, field: &str) -> Result<Self, PolicyError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let path = format!("{field}.matchExpressions[{i}]");
            let values = expr.values.clone().unwrap_or_default();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(PolicyError::new(
                        format!("{path}.values"),
                        "must be non-empty for operator In or NotIn",
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(PolicyError::new(
                        format!("{path}.values"),
                        "must be empty for operator Exists or DoesNotExist",
                    ));
                }
                "In" => Requirement::In(expr.key.clone(), values),
                "NotIn" => Requirement::NotIn(expr.key.clone(), values),
                "Exists" => Requirement::Exists(expr.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(expr.key.clone()),
                other => {
                    return Err(PolicyError::new(
                        format!("{path}.operator"),
                        format!("unsupported operator {other:?}: expected In, NotIn, Exists or DoesNotExist"),
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Labels (key, value) that every label set the selector matches has: `matchLabels`
    /// entries and `In` expressions with a single value. The policy index keys on them.
    pub fn required_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requirements.iter().filter_map(|r| match r {
            Requirement::In(key, values) if values.len() == 1 => Some((key.as_str(), values[0].as_str())),
            _ => None,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn matches_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![expr("tier", "NotIn", &["sandbox"]), expr("team", "Exists", &[])]),
        };
        let s = Selector::compile(&selector, "spec.match.namespaceSelector").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "a"), ("tier", "sandbox")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::compile(&LabelSelector::default(), "x").unwrap();
        assert!(s.matches(&BTreeMap::new()));
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let cases = [
            (expr("env", "Equals", &["prod"]), "x.matchExpressions[0].operator"),
            (expr("env", "In", &[]), "x.matchExpressions[0].values"),
            (expr("env", "Exists", &["prod"]), "x.matchExpressions[0].values"),
        ];
        for (e, field) in cases {
            let selector = LabelSelector { match_labels: None, match_expressions: Some(vec![e]) };
            let err = Selector::compile(&selector, "x").unwrap_err();
            assert_eq!(err.field, field);
        }
    }
}
