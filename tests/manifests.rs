//! The Kubernetes manifests in contrib/kubernetes (docs/scaling-out.md):
//! valid against the Kubernetes schemas (`kubernetes-validate`, offline),
//! and their configuration accepted by this binary, slice group by slice
//! group, with Mailman 3.3.10's runners.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `kubernetes-validate`, from `.ci/run`'s cached virtual environment or
/// `PATH`.
fn validator() -> PathBuf {
    let cached = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/mailman/kubernetes-validate/bin");
    require(
        cached.join("kubernetes-validate").exists()
            || Command::new("kubernetes-validate")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        "kubernetes-validate",
        "python3 -m venv ~/.cache/mailman/kubernetes-validate && ~/.cache/mailman/kubernetes-validate/bin/pip install kubernetes-validate",
    );
    if cached.join("kubernetes-validate").exists() {
        cached
    } else {
        PathBuf::new()
    }
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("contrib/kubernetes")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let dir = validator();
    let kv = dir.join("kubernetes-validate");
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new(&kv)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.matches(" passed for resource ").count(),
        files.len(),
        "{said}"
    );
    // The validator is not a formality: a wrong type fails it.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    let text = std::fs::read_to_string("contrib/kubernetes/deployment-b.yaml").unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: soon",
        ),
    )
    .unwrap();
    let out = Command::new(&kv)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The ConfigMap's files and each Deployment's environment, read with the
/// validator's own YAML reader (PyYAML, in its environment).
fn extract(python: &Path, into: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let code = r#"
import sys, yaml, json, glob, os
out = {"groups": []}
for f in sorted(glob.glob("contrib/kubernetes/*.yaml")):
    for doc in yaml.safe_load_all(open(f)):
        if doc["kind"] == "ConfigMap":
            for name, text in doc["data"].items():
                open(os.path.join(sys.argv[1], name), "w").write(text)
        if doc["kind"] == "Deployment":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            out["groups"].append([doc["metadata"]["name"], [[e["name"], e["value"]] for e in c.get("env", [])]])
print(json.dumps(out))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(code)
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g[0].as_str().unwrap().to_string(),
                g[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        (
                            e[0].as_str().unwrap().to_string(),
                            e[1].as_str().unwrap().to_string(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn each_slice_groups_configuration_is_valid_and_together_they_cover_every_slice_once() {
    let python = validator().join("python3");
    require(
        python.exists(),
        "the kubernetes-validate venv's python3",
        "see above",
    );
    let venv = std::fs::canonicalize("target/mailman-core-3.3.10/bin");
    require(
        venv.is_ok(),
        "Mailman 3.3.10 in target/mailman-core-3.3.10",
        ".ci/run installs it (pip install -c contrib/mailman-core/constraints.txt mailman==3.3.10 into that venv)",
    );
    let tmp = tempfile::tempdir().unwrap();
    let groups = extract(&python, tmp.path());
    assert_eq!(groups.len(), 2, "{groups:?}");
    let toml = tmp.path().join("mailman.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "/etc/mailman.cfg",
        &tmp.path().join("mailman.cfg").display().to_string(),
    );
    std::fs::write(&toml, text).unwrap();
    let path = format!(
        "{}:{}",
        venv.unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut slices_seen = Vec::new();
    let mut jobs_on = Vec::new();
    for (name, env) in &groups {
        let mut cmd = Command::new(BIN);
        cmd.args(["-C"]).arg(&toml).arg("check-config");
        cmd.env("PATH", &path).env_remove("MAILMAN_VAR_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let slices = env
            .iter()
            .find(|(k, _)| k == "MAILMAN__MAILMAN__SLICES")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let list: Vec<String> = serde_json::from_str(&slices).unwrap();
        slices_seen.extend(list);
        assert!(said.contains("run_dir = \"/run/mailman\""), "{said}");
        if !env
            .iter()
            .any(|(k, v)| k == "MAILMAN__JOB__DIGESTS__START" && v == "false")
        {
            jobs_on.push(name.clone());
        }
    }
    // Every Mailman runner is in one group; in and out are split in two.
    slices_seen.sort();
    let mut expected: Vec<String> = [
        "archive", "bounces", "command", "digest", "in:0:2", "in:1:2", "lmtp", "out:0:2",
        "out:1:2", "pipeline", "rest", "retry", "task", "virgin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.sort();
    assert_eq!(slices_seen, expected);
    // The scheduled jobs run under one master.
    assert_eq!(jobs_on, ["mailman-core-a"]);
}
