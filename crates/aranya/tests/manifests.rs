//! The checked-in CRD is the one aranya generates (regenerate with `aranya crd > deploy/crd.yaml`).

#[test]
fn deploy_crd_matches_the_code() {
    // Cargo's run-time value: the binary may have been built in another checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let path = format!("{manifest}/../../deploy/crd.yaml");
    let checked_in = std::fs::read_to_string(path).expect("deploy/crd.yaml");
    let generated = aranya::crd::definition_yaml().expect("yaml");
    assert!(
        checked_in == generated,
        "deploy/crd.yaml is stale: run `cargo run -p aranya -- crd > deploy/crd.yaml`"
    );
}
