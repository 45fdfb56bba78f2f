//! The deployment files parse and say what they must: `deploy/k8s/` (an API
//! Deployment and Service, a GPU worker Deployment, a Secret, a ConfigMap,
//! probes on `/healthz` and `/readyz` for both roles) and
//! `docker/compose.cluster.yaml` (PostgreSQL, an S3 server, the bucket, an
//! API node, two workers); and every vitrine flag or `VITRINE_*` variable
//! they name exists in the `--help` of the role that gets it. YAML is read
//! by PyYAML from the venv (no YAML crate in the build).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of `file`, as JSON.
fn yaml_documents(file: &Path) -> Vec<Value> {
    let out = std::process::Command::new(crate::common::python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             print(json.dumps(docs))",
        ])
        .arg(file)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// `vitrine <role> --help`.
fn help(role: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([role, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The names in `names` that `vitrine <role> --help` does not list: flags
/// (`--x`, `--x=y`) and `VITRINE_*` variables; other variables (`AWS_*`,
/// `RUST_LOG`) are not vitrine's.
fn unknown_to(role: &str, names: &[String]) -> Vec<String> {
    let help = help(role);
    names
        .iter()
        .filter(|n| {
            if let Some(flag) = n.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                !help.contains(&format!("--{flag} ")) && !help.contains(&format!("--{flag}\n"))
            } else if n.starts_with("VITRINE_") {
                !help.contains(&format!("[env: {n}=")) && !help.contains(&format!("[env: {n}]"))
            } else {
                false
            }
        })
        .cloned()
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_hold_both_roles_with_probes_a_gpu_and_known_settings() {
    let dir = repo().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let docs: Vec<(String, Value)> = files
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            yaml_documents(f)
                .into_iter()
                .map(move |d| (name.clone(), d))
        })
        .collect();
    let of_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    };

    // kustomization.yaml applies every other file.
    let kustomization = of_kind("Kustomization");
    assert_eq!(kustomization.len(), 1);
    let listed: BTreeSet<String> = strings(&kustomization[0]["resources"])
        .into_iter()
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);

    let secrets = of_kind("Secret");
    assert_eq!(secrets.len(), 1);
    let secret = secrets[0];
    assert!(secret["stringData"]["api-token"].is_string());
    let config_maps = of_kind("ConfigMap");
    assert_eq!(config_maps.len(), 1);
    let config_map = config_maps[0];

    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), 2);
    let mut roles = Vec::new();
    for d in &deployments {
        let pod = &d["spec"]["template"];
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| pod["metadata"]["labels"][k.as_str()] != **v)
                .count(),
            0,
            "the selector matches the pod's labels"
        );
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let args = strings(&c["args"]);
        let role = args[0].clone();
        roles.push(role.clone());
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{role} {probe}");
            assert!(
                ports.contains(&get["port"].as_str().unwrap()),
                "{role} {probe} on a declared port"
            );
        }
        let gpus = &c["resources"]["limits"]["nvidia.com/gpu"];
        match role.as_str() {
            "worker" => assert!(
                gpus == 1 || gpus == "1",
                "a worker asks for one GPU: {gpus}"
            ),
            "serve" => {
                assert!(gpus.is_null(), "API nodes need no GPU");
                assert!(args.contains(&"--no-workers".to_string()));
            }
            other => panic!("unknown role {other}"),
        }

        // Every setting it names is one of its role's.
        let mut names: Vec<String> = args[1..].to_vec();
        for e in c["env"].as_array().unwrap() {
            names.push(e["name"].as_str().unwrap().into());
            if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                assert!(secret["stringData"][key].is_string(), "secret key {key}");
            }
        }
        for from in c["envFrom"].as_array().unwrap() {
            assert_eq!(from["configMapRef"]["name"], config_map["metadata"]["name"]);
            names.extend(config_map["data"].as_object().unwrap().keys().cloned());
        }
        assert!(
            names.contains(&"VITRINE_DATABASE_URL".to_string()),
            "{role} {names:?}"
        );
        assert!(names.contains(&"VITRINE_ARTIFACTS".to_string()), "{role}");
        assert_eq!(
            unknown_to(&role, &names),
            Vec::<String>::new(),
            "{role}: not in `vitrine {role} --help`"
        );
        if role == "worker" {
            assert!(
                !names.contains(&"VITRINE_API_TOKEN".to_string()),
                "workers do not get the API token"
            );
        }
    }
    roles.sort();
    assert_eq!(roles, ["serve", "worker"]);

    // The Service reaches the API pods on their HTTP port.
    let services = of_kind("Service");
    assert_eq!(services.len(), 1);
    let api = deployments
        .iter()
        .find(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"])[0] == "serve")
        .unwrap();
    let labels = &api["spec"]["template"]["metadata"]["labels"];
    for (k, v) in services[0]["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k.as_str()], v);
    }
    assert_eq!(services[0]["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn the_cluster_compose_file_runs_postgres_s3_an_api_node_and_two_workers() {
    let docs = yaml_documents(&repo().join("docker/compose.cluster.yaml"));
    assert_eq!(docs.len(), 1);
    let services = docs[0]["services"].as_object().unwrap();
    for name in ["postgres", "minio", "create-bucket", "api", "worker"] {
        assert!(services.contains_key(name), "{name}");
    }
    let api = &services["api"];
    let worker = &services["worker"];
    assert_eq!(strings(&api["command"])[..2], ["serve", "--no-workers"]);
    assert_eq!(strings(&worker["command"])[0], "worker");
    assert_eq!(worker["deploy"]["replicas"], 2);
    for (role, service) in [("serve", api), ("worker", worker)] {
        let mut names = strings(&service["command"])[1..].to_vec();
        let env = service["environment"].as_object().unwrap();
        names.extend(env.keys().cloned());
        assert!(env["VITRINE_DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("postgres://"));
        assert!(env["VITRINE_ARTIFACTS"]
            .as_str()
            .unwrap()
            .starts_with("s3://"));
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://minio:9000");
        assert_eq!(unknown_to(role, &names), Vec::<String>::new(), "{role}");
        for dep in ["postgres", "create-bucket"] {
            assert!(
                service["depends_on"][dep].is_object(),
                "{role} waits for {dep}"
            );
        }
    }
    assert!(!worker["environment"]
        .as_object()
        .unwrap()
        .contains_key("VITRINE_API_TOKEN"));
}
