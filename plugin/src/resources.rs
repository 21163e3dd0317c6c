//! The API server's resources, from aggregated discovery (two requests), and how kubectl
//! names them: plural, singular, short name or kind, optionally qualified by group.

use kube::core::discovery::v2::APIGroupDiscoveryList;

/// One served resource, in its preferred version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    /// Plural name, as in URLs and policies: `secrets`.
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub subresources: Vec<String>,
}

impl ResourceInfo {
    fn is_named(&self, name: &str) -> bool {
        self.resource == name
            || self.singular == name
            || self.kind.eq_ignore_ascii_case(name)
            || self.short_names.iter().any(|s| s == name)
    }

    /// `secrets`, `deployments.apps`: how kubectl would print it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) }
    }
}

/// Resources in discovery's priority order: core group first, then groups and versions in the
/// order the API server prefers them.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    resources: Vec<ResourceInfo>,
}

impl Catalog {
    /// From the aggregated discovery documents of `/api` and `/apis`, in that order.
    pub fn from_discovery(lists: impl IntoIterator<Item = APIGroupDiscoveryList>) -> Self {
        let mut resources = Vec::new();
        for group in lists.into_iter().flat_map(|l| l.items) {
            let group_name = group.metadata.and_then(|m| m.name).unwrap_or_default();
            for version in group.versions {
                let version_name = version.version.unwrap_or_default();
                for r in version.resources {
                    let Some(resource) = r.resource else { continue };
                    resources.push(ResourceInfo {
                        group: group_name.clone(),
                        version: version_name.clone(),
                        singular: r.singular_resource.unwrap_or_default(),
                        kind: r.response_kind.and_then(|k| k.kind).unwrap_or_default(),
                        short_names: r.short_names,
                        namespaced: r.scope.as_deref() == Some("Namespaced"),
                        subresources: r.subresources.into_iter().filter_map(|s| s.subresource).collect(),
                        resource,
                    });
                }
            }
        }
        Self { resources }
    }

    pub fn from_resources(resources: Vec<ResourceInfo>) -> Self {
        Self { resources }
    }

    /// `secret`, `secrets`, `Secret`, `deploy`, `deployments.apps`, `deployments.v1.apps`: the
    /// first match in priority order (the preferred version), as kubectl resolves them.
    pub fn resolve(&self, name: &str) -> Option<&ResourceInfo> {
        let name = name.to_ascii_lowercase();
        let mut parts = name.splitn(2, '.');
        let short = parts.next().unwrap_or_default();
        let qualifier = parts.next();
        self.resources.iter().find(|r| {
            r.is_named(short)
                && match qualifier {
                    None => true,
                    Some(q) => {
                        q == r.group || q.split_once('.').is_some_and(|(v, g)| v == r.version && g == r.group)
                            // `foo.v1` for a core resource.
                            || (r.group.is_empty() && q == r.version)
                    }
                }
        })
    }

    /// The resource of an object in a manifest (`apiVersion`, `kind`), in that very version.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resources.iter().find(|r| r.group == group && r.version == version && r.kind == kind)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kube::core::discovery::v2::{
        APIGroupDiscovery, APIResourceDiscovery, APISubresourceDiscovery, APIVersionDiscovery, GroupVersionKind,
    };

    use super::*;

    fn resource(plural: &str, singular: &str, kind: &str, short: &[&str], namespaced: bool) -> APIResourceDiscovery {
        APIResourceDiscovery {
            resource: Some(plural.into()),
            singular_resource: Some(singular.into()),
            response_kind: Some(GroupVersionKind { kind: Some(kind.into()), ..GroupVersionKind::default() }),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            scope: Some(if namespaced { "Namespaced" } else { "Cluster" }.into()),
            ..APIResourceDiscovery::default()
        }
    }

    fn group(name: &str, versions: Vec<(&str, Vec<APIResourceDiscovery>)>) -> APIGroupDiscovery {
        APIGroupDiscovery {
            metadata: Some(kube::core::ObjectMeta { name: Some(name.into()), ..Default::default() }),
            versions: versions
                .into_iter()
                .map(|(v, resources)| APIVersionDiscovery { version: Some(v.into()), resources, freshness: None })
                .collect(),
        }
    }

    /// What a real API server announces, cut down to the resources the tests use.
    pub(crate) fn catalog() -> Catalog {
        let mut pods = resource("pods", "pod", "Pod", &["po"], true);
        pods.subresources = ["exec", "attach", "portforward", "log", "status"]
            .iter()
            .map(|s| APISubresourceDiscovery { subresource: Some(s.to_string()), ..Default::default() })
            .collect();
        let core = APIGroupDiscoveryList {
            metadata: None,
            items: vec![group(
                "",
                vec![(
                    "v1",
                    vec![
                        resource("secrets", "secret", "Secret", &[], true),
                        resource("configmaps", "configmap", "ConfigMap", &["cm"], true),
                        resource("namespaces", "namespace", "Namespace", &["ns"], false),
                        pods,
                    ],
                )],
            )],
        };
        let apis = APIGroupDiscoveryList {
            metadata: None,
            items: vec![
                group(
                    "apps",
                    vec![("v1", vec![resource("deployments", "deployment", "Deployment", &["deploy"], true)])],
                ),
                group(
                    "rbac.authorization.k8s.io",
                    vec![(
                        "v1",
                        vec![resource("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", &[], false)],
                    )],
                ),
                group(
                    "stepup.dev",
                    vec![(
                        "v1alpha1",
                        vec![resource("stepuppolicies", "stepuppolicy", "StepUpPolicy", &["sup"], false)],
                    )],
                ),
                group(
                    "autoscaling",
                    vec![
                        (
                            "v2",
                            vec![resource(
                                "horizontalpodautoscalers",
                                "horizontalpodautoscaler",
                                "HorizontalPodAutoscaler",
                                &["hpa"],
                                true,
                            )],
                        ),
                        (
                            "v1",
                            vec![resource(
                                "horizontalpodautoscalers",
                                "horizontalpodautoscaler",
                                "HorizontalPodAutoscaler",
                                &["hpa"],
                                true,
                            )],
                        ),
                    ],
                ),
            ],
        };
        Catalog::from_discovery([core, apis])
    }

    #[test]
    fn resolves_names_the_way_kubectl_does() {
        let c = catalog();
        let cases = [
            ("secrets", "", "secrets"),
            ("secret", "", "secrets"),
            ("Secret", "", "secrets"),
            ("cm", "", "configmaps"),
            ("po", "", "pods"),
            ("deploy", "apps", "deployments"),
            ("deployments.apps", "apps", "deployments"),
            ("deployments.v1.apps", "apps", "deployments"),
            ("secrets.v1", "", "secrets"),
            ("clusterrolebindings", "rbac.authorization.k8s.io", "clusterrolebindings"),
            ("sup", "stepup.dev", "stepuppolicies"),
        ];
        for (name, group, resource) in cases {
            let r = c.resolve(name).unwrap_or_else(|| panic!("{name} unresolved"));
            assert_eq!((r.group.as_str(), r.resource.as_str()), (group, resource), "{name}");
        }
        assert_eq!(c.resolve("hpa").unwrap().version, "v2", "the preferred version comes first");
        assert!(c.resolve("deployments.batch").is_none());
        assert!(c.resolve("gadgets").is_none());
        assert!(c.resolve("pods").unwrap().subresources.contains(&"exec".to_owned()));
        assert!(!c.resolve("ns").unwrap().namespaced);
    }

    #[test]
    fn finds_the_resource_of_a_manifest_object() {
        let c = catalog();
        assert_eq!(c.by_kind("apps/v1", "Deployment").unwrap().resource, "deployments");
        assert_eq!(c.by_kind("v1", "Secret").unwrap().resource, "secrets");
        assert_eq!(c.by_kind("autoscaling/v1", "HorizontalPodAutoscaler").unwrap().version, "v1");
        assert!(c.by_kind("apps/v1beta1", "Deployment").is_none());
    }
}
