//! `crds/` must hold exactly what `stepup crdgen` prints; regenerate with `make crds`.

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = stepup_core::api::crds_yaml().expect("CRDs serialize");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stepup.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/stepup.dev.yaml exists");
    assert!(
        generated == committed,
        "crds/stepup.dev.yaml is out of date with core/src/api: run `make crds` and commit the result"
    );
}
