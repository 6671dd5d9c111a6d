//! The binary refuses a bad configuration with a non-zero exit naming the key.

use std::process::Command;

fn run(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("arhat.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_arhat"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run arhat");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn documented_example_is_accepted() {
    let (ok, stderr) = run(include_str!("../config.example.yaml"));
    assert!(ok, "{stderr}");
}

#[test]
fn bad_configs_exit_non_zero_naming_the_key() {
    let cases = [
        (
            "device:\n  name: a\nconnectivity:\n  methods: []\n",
            "connectivity.methods",
        ),
        (
            "device:\n  name: a\nconnectivity:\n  methods:\n    - name: smoke-signals\n",
            "connectivity.methods[0].name",
        ),
        (
            "device:\n  name: a\nconnectivity:\n  bakoff: {}\n  methods: []\n",
            "connectivity.bakoff",
        ),
        ("connectivity:\n  methods: []\n", "device"),
        (
            "device:\n  name: a\nconnectivity:\n  backoff:\n    max: forever\n  methods: []\n",
            "connectivity.backoff.max",
        ),
    ];
    for (config, key) in cases {
        let (ok, stderr) = run(config);
        assert!(!ok, "accepted: {config}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "expected key `{key}` in: {stderr}"
        );
    }
}

#[test]
fn missing_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_arhat"))
        .args(["--config", "/nonexistent/arhat.yaml"])
        .output()
        .expect("run arhat");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/arhat.yaml"));
}
