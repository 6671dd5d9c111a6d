//! The checked-in CRD is the one aranya generates (regenerate with `aranya crd > deploy/crd.yaml`).

#[test]
fn deploy_crd_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crd.yaml");
    let checked_in = std::fs::read_to_string(path).expect("deploy/crd.yaml");
    let generated = aranya::crd::definition_yaml().expect("yaml");
    assert!(
        checked_in == generated,
        "deploy/crd.yaml is stale: run `cargo run -p aranya -- crd > deploy/crd.yaml`"
    );
}
