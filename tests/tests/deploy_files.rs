//! The deployment files of `deploy/kubernetes/` and `deploy/cloud-init/`, checked by the tools
//! their users' systems apply, and by vpngw itself:
//! - every Kubernetes manifest but the custom resources (Multus' NetworkAttachmentDefinitions)
//!   against the API schemas with `kubernetes-validate --strict` (unknown fields refused);
//! - every YAML file, custom resources and user data included, with `yamllint --strict`;
//! - the gateway configurations in the ConfigMaps with `vpngw check`, as the pods see them: the
//!   projected volume (ConfigMap and Secret) written out with the modes the kubelet gives it;
//! - the pods' security settings and probes (our own policy: nothing privileged, capabilities
//!   dropped but three, read-only root, key files owner-only, probes on /healthz and /readyz);
//! - keepalived's configurations of the pair with `keepalived -t`, in a namespace with wan0
//!   and lan0;
//! - the cloud-init user data with `cloud-init schema`, and the files it writes with `vpngw check`.
//!
//! Each validator also refuses a broken copy here, so that a validator that accepts anything
//! cannot pass. kubernetes-validate and yamllint live in target/venv-deploy, cloud-init is
//! Debian's (`make test` installs both: `make deps-deploy`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn user_data() -> PathBuf {
    repo().join("deploy/cloud-init/user-data.yaml")
}

/// A tool of the deployment venv (`make deps-deploy`).
fn venv_tool(name: &str) -> PathBuf {
    let p = repo().join("target/venv-deploy/bin").join(name);
    assert!(p.exists(), "{} not found: run `make deps-deploy` (`make test` does)", p.display());
    p
}

/// Runs a command; its success and everything it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), format!("{shown}:\n{said}"))
}

/// A fresh scratch directory of this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("vpngw-tests").join(format!("deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every document of a YAML file as JSON, read by PyYAML (YAML 1.1, as Kubernetes' own reader:
/// `0400` is octal).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let out = Command::new(venv_tool("python")).args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("{other}"),
    }
}

/// The manifests: every `*.yaml` of deploy/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// A custom resource: its API group is not one of Kubernetes' own (those are unqualified, like
/// `apps`, or end in `.k8s.io`).
fn is_custom_resource(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap();
    match api.rsplit_once('/') {
        Some((group, _)) => group.contains('.') && !group.ends_with(".k8s.io"),
        None => false,
    }
}

/// Every document of every manifest (read once per test process).
fn all_documents() -> Vec<(PathBuf, Value)> {
    static ALL: OnceLock<Vec<(PathBuf, Value)>> = OnceLock::new();
    ALL.get_or_init(|| {
        manifests().into_iter().flat_map(|f| yaml_documents(&f).into_iter().map(move |d| (f.clone(), d))).collect()
    })
    .clone()
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let kv = venv_tool("kubernetes-validate");
    let mut validated = Vec::new();
    for file in manifests() {
        let docs = yaml_documents(&file);
        let custom = docs.iter().filter(|d| is_custom_resource(d)).count();
        if custom == docs.len() {
            continue; // no schema: yamllint only
        }
        assert_eq!(custom, 0, "{}: keep custom resources in files of their own", file.display());
        let (ok, said) = run(Command::new(&kv).args(["--strict", "--quiet"]).arg(&file));
        assert!(ok, "{said}");
        validated.push(file.file_name().unwrap().to_string_lossy().into_owned());
    }
    for wanted in ["namespace.yaml", "pair.yaml", "secret-example.yaml", "service.yaml", "single.yaml"] {
        assert!(validated.iter().any(|v| v == wanted), "{wanted} not validated: {validated:?}");
    }

    // A typo in a field name is refused (without --strict it would pass: unknown fields are
    // dropped by the API server, and the probe with them).
    let single = std::fs::read_to_string(kubernetes_dir().join("single.yaml")).unwrap();
    assert!(single.contains("readinessProbe:"));
    let broken = scratch("kv").join("single.yaml");
    std::fs::write(&broken, single.replace("readinessProbe:", "readinesProbe:")).unwrap();
    let (ok, said) = run(Command::new(&kv).arg("--strict").arg(&broken));
    assert!(!ok && said.contains("'readinesProbe' was unexpected"), "a typo'd field passed: {said}");
}

#[test]
fn yamllint_accepts_every_yaml_file() {
    let yamllint = venv_tool("yamllint");
    let config = kubernetes_dir().join(".yamllint");
    let (ok, said) = run(Command::new(&yamllint)
        .args(["--strict", "-f", "parsable", "-c"])
        .arg(&config)
        .arg(kubernetes_dir())
        .arg(repo().join("deploy/cloud-init")));
    assert!(ok, "{said}");

    // The same configuration refuses a custom resource with a badly indented line and a
    // trailing space, and a "yes" that YAML 1.1 reads as a boolean.
    let networks = std::fs::read_to_string(kubernetes_dir().join("networks.yaml")).unwrap();
    let broken = scratch("yamllint").join("networks.yaml");
    std::fs::write(&broken, networks.replacen("  name: vpngw-wan\n", "  name: vpngw-wan \n   foo: yes\n", 1)).unwrap();
    let (ok, said) = run(Command::new(&yamllint).args(["--strict", "-f", "parsable", "-c"]).arg(&config).arg(&broken));
    assert!(!ok && said.contains("trailing-spaces"), "{said}");
}

/// The Secret's files: key -> content (stringData of secret-example.yaml).
fn secret_files() -> BTreeMap<String, String> {
    let docs = all_documents();
    let secret = docs.iter().map(|(_, d)| d).find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(secret["metadata"]["name"], "vpngw-keys");
    secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn config_maps() -> BTreeMap<String, BTreeMap<String, String>> {
    all_documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "ConfigMap")
        .map(|(_, d)| {
            let data = d["data"].as_object().unwrap();
            let data = data.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
            (d["metadata"]["name"].as_str().unwrap().to_string(), data)
        })
        .collect()
}

/// A file of a configMap or secret volume source: its path in the volume, its content, its mode
/// (the item's, else the source's or the volume's defaultMode, else Kubernetes' 0644).
struct VolumeFile {
    path: String,
    content: String,
    mode: u32,
    secret: bool,
}

fn mode_of(v: &Value) -> Option<u32> {
    v.as_u64().map(|m| u32::try_from(m).unwrap())
}

/// The files of one volume as the kubelet writes them.
fn volume_files(volume: &Value) -> Vec<VolumeFile> {
    let maps = config_maps();
    let secrets = secret_files();
    let (sources, volume_mode): (Vec<Value>, Option<u32>) = if let Some(p) = volume.get("projected") {
        (p["sources"].as_array().unwrap().clone(), mode_of(&p["defaultMode"]))
    } else if let Some(c) = volume.get("configMap") {
        (vec![json!({ "configMap": c })], mode_of(&c["defaultMode"]))
    } else if let Some(s) = volume.get("secret") {
        let s = json!({ "name": s["secretName"], "items": s["items"], "defaultMode": s["defaultMode"] });
        (vec![json!({ "secret": s })], mode_of(&s["defaultMode"]))
    } else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for source in sources {
        let (secret, src) = match (source.get("configMap"), source.get("secret")) {
            (Some(c), _) => (false, c),
            (_, Some(s)) => (true, s),
            _ => panic!("unexpected volume source {source}"),
        };
        let name = src["name"].as_str().unwrap();
        let data: BTreeMap<String, String> = if secret {
            assert_eq!(name, "vpngw-keys", "the keys come from the Secret vpngw-keys");
            secrets.clone()
        } else {
            maps.get(name).unwrap_or_else(|| panic!("no ConfigMap {name}")).clone()
        };
        let default = mode_of(&src["defaultMode"]).or(volume_mode).unwrap_or(0o644);
        let items: Vec<(String, String, u32)> = match src["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    let key = i["key"].as_str().unwrap().to_string();
                    (key, i["path"].as_str().unwrap().to_string(), mode_of(&i["mode"]).unwrap_or(default))
                })
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone(), default)).collect(),
        };
        for (key, path, mode) in items {
            let content = data.get(&key).unwrap_or_else(|| panic!("{name} has no key {key}")).clone();
            files.push(VolumeFile { path, content, mode, secret });
        }
    }
    files
}

fn workloads() -> Vec<(PathBuf, Value)> {
    all_documents()
        .into_iter()
        .filter(|(_, d)| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet" | "DaemonSet")))
        .collect()
}

fn is_vpngw(container: &Value) -> bool {
    container["command"][0].as_str().is_some_and(|c| c.ends_with("/vpngw")) && container["args"][0] == "run"
}

/// The `--config` argument of a vpngw container.
fn config_path(container: &Value) -> String {
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let i = args.iter().position(|a| *a == "--config").expect("vpngw run --config FILE");
    args[i + 1].to_string()
}

/// The volume mounted at `dir` in `container` of pod spec `spec`.
fn volume_at<'a>(spec: &'a Value, container: &Value, dir: &str) -> &'a Value {
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == dir);
    let name = mount.unwrap_or_else(|| panic!("nothing mounted at {dir}"))["name"].clone();
    spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()
}

/// Writes the volume's files into `dir` as the kubelet lays them out (a secret's mode forced to
/// `secret_mode`): the files in a timestamped directory, `..data` a symlink to it, each name a
/// symlink through `..data`, and the volume's directory world-writable (kubernetes#125876).
fn materialize(volume: &Value, dir: &Path, secret_mode: Option<u32>) {
    let data = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", dir.join("..data")).unwrap();
    for f in volume_files(volume) {
        let path = data.join(&f.path);
        std::fs::write(&path, &f.content).unwrap();
        let mode = if f.secret { secret_mode.unwrap_or(f.mode) } else { f.mode };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{}", f.path), dir.join(&f.path)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn vpngw_check(config: &Path) -> (bool, String) {
    run(Command::new(vpngw_tests::vpngw::binary()).args(["check", "--config"]).arg(config))
}

#[test]
fn configmap_configurations_pass_vpngw_check_as_the_pods_see_them() {
    let work = scratch("check");
    let mut checked = Vec::new();
    for (file, w) in workloads() {
        let spec = &w["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().unwrap().iter().filter(|c| is_vpngw(c)) {
            let config = config_path(c);
            let (dir, name) = config.rsplit_once('/').unwrap();
            let volume = volume_at(spec, c, dir);
            let here = work.join(w["metadata"]["name"].as_str().unwrap());
            materialize(volume, &here, None);
            let (ok, said) = vpngw_check(&here.join(name));
            assert!(ok && said.contains(": OK ("), "{} {}: {said}", file.display(), w["metadata"]["name"]);
            assert!(said.contains("0 warning(s)"), "{said}");

            // The same files with the Secret at Kubernetes' default mode (no defaultMode) are
            // refused: the modes in the manifests are what makes them pass.
            let loose = work.join(format!("{}-0644", w["metadata"]["name"].as_str().unwrap()));
            materialize(volume, &loose, Some(0o644));
            let (ok, said) = vpngw_check(&loose.join(name));
            assert!(!ok && said.contains("mode 0644"), "{said}");
            checked.push(w["metadata"]["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(checked, ["vpngw-a", "vpngw-b", "vpngw"], "the gateways of pair.yaml and single.yaml");
}

/// A TOML string value `key = "..."` of a configuration (the first).
fn toml_string(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A change that breaks a workload, for the policy's own test.
type Breach = fn(&mut Value);

const ALLOWED_CAPABILITIES: [&str; 3] = ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"];
const ALLOWED_SYSCTLS: [&str; 2] = ["net.ipv4.ip_forward", "net.ipv4.ip_nonlocal_bind"];

/// Our own policy for a workload; every breach, named.
fn policy_problems(w: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |s: String| problems.push(s);
    let name = w["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let spec = &w["spec"]["template"]["spec"];
    if w["kind"] == "Deployment" {
        if w["spec"]["replicas"] != 1 {
            problem(format!("{name}: replicas must be 1 (two pods on one public address fight)"));
        }
        if w["spec"]["strategy"]["type"] != "Recreate" {
            problem(format!("{name}: strategy must be Recreate"));
        }
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            problem(format!("{name}: {host}"));
        }
    }
    if !spec["securityContext"]["fsGroup"].is_null() {
        problem(format!("{name}: fsGroup makes the key files group-readable"));
    }
    for s in spec["securityContext"]["sysctls"].as_array().into_iter().flatten() {
        if !ALLOWED_SYSCTLS.contains(&s["name"].as_str().unwrap_or("")) {
            problem(format!("{name}: sysctl {s}"));
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if v.get("hostPath").is_some() {
            problem(format!("{name}: hostPath volume {}", v["name"]));
        }
        for f in volume_files(v).iter().filter(|f| f.secret && f.mode & 0o077 != 0) {
            problem(format!("{name}: key file {} has mode {:o}", f.path, f.mode));
        }
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let init = spec["initContainers"].as_array().cloned().unwrap_or_default();
    for c in containers.iter().chain(&init) {
        let cname = format!("{name}/{}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            problem(format!("{cname}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            problem(format!("{cname}: allowPrivilegeEscalation must be false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            problem(format!("{cname}: readOnlyRootFilesystem must be true"));
        }
        if sc["capabilities"]["drop"] != json!(["ALL"]) {
            problem(format!("{cname}: capabilities must drop ALL"));
        }
        // keepalived also sets its script user's groups before running vpngw's commands.
        let keepalived = c["name"] == "keepalived" && c["image"].as_str().is_some_and(|i| i.contains("keepalived"));
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or("");
            if !(ALLOWED_CAPABILITIES.contains(&cap) || keepalived && cap == "SETGID") {
                problem(format!("{cname}: capability {cap:?}"));
            }
        }
    }
    for c in containers.iter().filter(|c| is_vpngw(c)) {
        let cname = format!("{name}/{}", c["name"].as_str().unwrap_or("?"));
        let metrics = c["ports"].as_array().into_iter().flatten().find(|p| p["containerPort"] == 9720);
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            let port_ok = get["port"] == 9720 || metrics.is_some_and(|m| m["name"] == get["port"]);
            if get["path"] != path || !port_ok {
                problem(format!("{cname}: {probe} must be httpGet {path} on port 9720"));
            }
        }
        if c["resources"]["limits"]["squat.ai/tun"] != "1" {
            problem(format!("{cname}: no /dev/net/tun (squat.ai/tun) in its limits"));
        }
    }
    problems
}

#[test]
fn pods_are_unprivileged_with_probes_and_owner_only_keys() {
    let mut seen = 0;
    for (file, w) in workloads() {
        let problems = policy_problems(&w);
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
        seen += 1;
    }
    assert_eq!(seen, 3);

    // The policy is not blind: each breach of a copy is named.
    let (_, single) = workloads().into_iter().find(|(_, w)| w["metadata"]["name"] == "vpngw").unwrap();
    let breaches: [(&str, Breach); 7] = [
        ("privileged", |w| {
            w["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true)
        }),
        ("capability \"SYS_ADMIN\"", |w| {
            w["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"][0] =
                json!("SYS_ADMIN")
        }),
        ("capability \"SETGID\"", |w| {
            w["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"][2] =
                json!("SETGID")
        }),
        ("readinessProbe", |w| {
            w["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("readinessProbe");
        }),
        ("has mode 644", |w| {
            w["spec"]["template"]["spec"]["volumes"][0]["projected"].as_object_mut().unwrap().remove("defaultMode");
        }),
        ("fsGroup", |w| w["spec"]["template"]["spec"]["securityContext"]["fsGroup"] = json!(1000)),
        ("Recreate", |w| w["spec"]["strategy"]["type"] = json!("RollingUpdate")),
    ];
    for (wanted, breach) in breaches {
        let mut w = single.clone();
        breach(&mut w);
        let problems = policy_problems(&w);
        assert!(problems.iter().any(|p| p.contains(wanted)), "{wanted}: {problems:?}");
    }
}

/// The Multus attachments of a pod template: interface -> (network, addresses).
fn attachments(w: &Value) -> BTreeMap<String, (String, Vec<String>)> {
    let text = w["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"].as_str().unwrap();
    let list: Vec<Value> = serde_json::from_str(text).unwrap();
    list.iter()
        .map(|a| {
            let ips = a["ips"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
            (a["interface"].as_str().unwrap().to_string(), (a["name"].as_str().unwrap().to_string(), ips))
        })
        .collect()
}

#[test]
fn multus_networks_and_the_public_address_agree() {
    let networks: Vec<String> = yaml_documents(&kubernetes_dir().join("networks.yaml"))
        .iter()
        .inspect(|d| assert_eq!(d["kind"], "NetworkAttachmentDefinition"))
        .map(|d| {
            let config: Value = serde_json::from_str(d["spec"]["config"].as_str().unwrap()).unwrap();
            assert_eq!(config["name"], d["metadata"]["name"], "the CNI network's name is the resource's");
            assert_eq!(config["plugins"][0]["capabilities"]["ips"], true, "pods name their addresses");
            d["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    let maps = config_maps();
    for (_, w) in workloads() {
        let name = w["metadata"]["name"].as_str().unwrap();
        let at = attachments(&w);
        for (iface, (network, _)) in &at {
            assert!(networks.contains(network), "{name}: {iface} on unknown network {network}");
        }
        let spec = &w["spec"]["template"]["spec"];
        let vpngw = spec["containers"].as_array().unwrap().iter().find(|c| is_vpngw(c)).unwrap();
        let config = config_path(vpngw);
        let volume = volume_at(spec, vpngw, config.rsplit_once('/').unwrap().0);
        let toml = volume_files(volume).into_iter().find(|f| f.path == "vpngw.toml").unwrap().content;
        let public = toml_string(&toml, "public_address").unwrap();
        let wan: Vec<&str> = at["wan0"].1.iter().map(|a| a.split('/').next().unwrap()).collect();
        assert!(at.contains_key("lan0"), "{name}: no lan0");
        let sysctls = spec["securityContext"]["sysctls"].as_array().unwrap();
        let has = |s: &str| sysctls.iter().any(|x| x["name"] == s && x["value"] == "1");
        assert!(has("net.ipv4.ip_forward"), "{name}: a gateway forwards");
        if toml.contains("\n[ha]") {
            // The pair: wan0 has the pod's own address; keepalived moves the public one.
            assert!(!wan.contains(&public.as_str()), "{name}: {wan:?}");
            let ha = toml.split("\n[ha]").nth(1).unwrap();
            let node = toml_string(ha, "node_name").unwrap();
            let keepalived = &maps["vpngw-pair"][&format!("keepalived-{}.conf", node.trim_start_matches("vpngw-"))];
            assert!(keepalived.contains(&format!("{public}/24 dev wan0")), "{name}: keepalived must move {public}");
            assert!(keepalived.contains(&format!("unicast_src_ip {}", wan[0])), "{name}");
            let listen = toml_string(ha, "listen").unwrap();
            let sync = &at["sync0"].1[0];
            assert_eq!(listen.split(':').next(), sync.split('/').next(), "{name}: [ha] listen on sync0");
            assert!(has("net.ipv4.ip_nonlocal_bind"), "{name}: the standby binds the public address");
            let anti = &spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
            assert_eq!(anti["topologyKey"], "kubernetes.io/hostname", "{name}");
            let labels = w["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
            for (k, v) in anti["labelSelector"]["matchLabels"].as_object().unwrap() {
                assert_eq!(labels.get(k), Some(v), "{name}: the anti-affinity must select the pair's pods");
            }
        } else {
            assert_eq!(wan, [public.as_str()], "{name}: wan0 holds gateway.public_address");
        }
    }
}

#[test]
fn keepalived_accepts_the_pair_configurations() {
    vpngw_tests::tool::require("/usr/sbin/keepalived", "apt-get install keepalived");
    let lab = vpngw_tests::netns::Lab::namespaces("deploy-keepalived");
    let ns = &lab.left;
    // The pod's Multus interfaces (veth pairs: no dummy driver everywhere).
    for dev in ["wan0", "lan0"] {
        lab.ip(ns, &["link", "add", dev, "type", "veth", "peer", "name", &format!("{dev}-peer")]);
        lab.ip(ns, &["link", "set", dev, "up"]);
    }
    let vpngw = vpngw_tests::vpngw::binary();
    let mut checked = 0;
    for (name, text) in &config_maps()["vpngw-pair"] {
        if !name.starts_with("keepalived-") {
            continue;
        }
        assert!(text.contains("\"/usr/bin/vpngw ha check"), "{name}: the image's vpngw");
        // The image's /usr/bin/vpngw is this build's binary here.
        let conf = lab.dir.join(name);
        std::fs::write(&conf, text.replace("/usr/bin/vpngw", &vpngw.display().to_string())).unwrap();
        let out = lab.exec(ns, "keepalived", &["-t", "-f", &conf.display().to_string()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: keepalived -t: {}\n{said}", out.status);
        checked += 1;
    }
    assert_eq!(checked, 2);

    // keepalived -t is not blind: a check script it cannot run (which keepalived would disable,
    // leaving the role with a dead daemon) fails it.
    let text = &config_maps()["vpngw-pair"]["keepalived-a.conf"];
    let conf = lab.dir.join("keepalived-broken.conf");
    std::fs::write(&conf, text.replace("/usr/bin/vpngw", "/nonexistent/vpngw")).unwrap();
    let out = lab.exec(ns, "keepalived", &["-t", "-f", &conf.display().to_string()]);
    assert!(!out.status.success(), "keepalived -t accepted a missing check script");
}

#[test]
fn cloud_init_user_data_is_valid_and_writes_a_configuration_vpngw_accepts() {
    let cloud_init = vpngw_tests::tool::require("/usr/bin/cloud-init", "apt-get install cloud-init");
    let text = std::fs::read_to_string(user_data()).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "cloud-init reads user data as cloud-config only with this line");
    let (ok, said) = run(Command::new(&cloud_init).args(["schema", "--config-file"]).arg(user_data()));
    assert!(ok && said.contains("Valid cloud-config"), "{said}");

    // cloud-init's schema does not know every key's type by heart: a mode given as a YAML
    // integer (0600 = 384) is refused.
    let broken = scratch("cloud-init").join("user-data.yaml");
    std::fs::write(&broken, text.replacen("permissions: \"0600\"", "permissions: 0600", 1)).unwrap();
    let (ok, said) = run(Command::new(&cloud_init).args(["schema", "--config-file"]).arg(&broken));
    assert!(!ok && said.contains("permissions"), "{said}");

    // Top-level keys cloud-init does not know are not refused by its schema (22.4): ours are
    // checked here.
    let doc = yaml_documents(&user_data()).remove(0);
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["package_update", "packages", "runcmd", "write_files"]);

    // The files vpngw reads, written where it reads them (in a scratch /etc/vpngw) with the
    // owner and modes of the user data, then checked.
    let etc = scratch("cloud-init-etc");
    let files = doc["write_files"].as_array().unwrap();
    let mut written = Vec::new();
    for f in files {
        let path = f["path"].as_str().unwrap();
        let Some(name) = path.strip_prefix("/etc/vpngw/") else { continue };
        assert_eq!(f["owner"], "root:root", "{path}");
        assert_eq!(f["permissions"], "0600", "{path}: keys and inline-key configurations are owner-only");
        let local = etc.join(name);
        std::fs::write(&local, f["content"].as_str().unwrap()).unwrap();
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o600)).unwrap();
        written.push(name);
    }
    assert_eq!(written, ["vpngw.toml", "branch-1.psk"]);
    let (ok, said) = vpngw_check(&etc.join("vpngw.toml"));
    assert!(ok && said.contains(": OK (") && said.contains("0 warning(s)"), "{said}");

    // IP forwarding, the package, then vpngw check gating the start, in that order.
    let sysctl = files.iter().find(|f| f["path"] == "/etc/sysctl.d/60-vpngw.conf").unwrap();
    assert!(sysctl["content"].as_str().unwrap().contains("net.ipv4.ip_forward = 1"));
    let runcmd: Vec<String> = doc["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        runcmd,
        [
            "sysctl --system",
            "/usr/local/sbin/vpngw-install",
            "sh -c vpngw check --config /etc/vpngw/vpngw.toml && systemctl enable --now vpngw.service"
        ]
    );

    // The install script: bash's syntax check and shellcheck.
    let install = files.iter().find(|f| f["path"] == "/usr/local/sbin/vpngw-install").unwrap();
    assert_eq!(install["permissions"], "0755");
    let script = scratch("cloud-init-script").join("vpngw-install");
    std::fs::write(&script, install["content"].as_str().unwrap()).unwrap();
    let (ok, said) = run(Command::new("bash").arg("-n").arg(&script));
    assert!(ok, "{said}");
    let shellcheck = vpngw_tests::tool::require("shellcheck", "apt-get install shellcheck");
    let (ok, said) = run(Command::new(shellcheck).arg(&script));
    assert!(ok, "{said}");
}
