//! The management API (docs/api/openapi.yaml) on a running gateway: bearer tokens enforced,
//! a connection created through it comes up with strongSwan and survives a restart, bad
//! input gets a 4xx naming the field, keys are never returned, the CLI does the same through
//! the control socket, and schemathesis finds the implementation true to the document.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text, lone_ha_section};

const PSK: &str = "api-psk-0123456789abcdef";
const TOKEN: &str = "test-token-5f1e0c9a7b";
const API: &str = "http://127.0.0.1:9721";

/// Checks `value` against the schema `name` of docs/api/openapi.yaml (jsonschema_rs, which
/// schemathesis brings into target/venv; OpenAPI 3.0's `nullable` turned into JSON Schema's
/// null type). For what schemathesis never sees: SAs of a tunnel that is up.
#[track_caller]
fn assert_conforms(name: &str, value: &Value) {
    use std::io::Write as _;
    let code = r##"
import json, sys, yaml, jsonschema_rs
doc = yaml.safe_load(open(sys.argv[1]))
def convert(node):
    if isinstance(node, dict):
        node = {k: convert(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [convert(v) for v in node]
    return node
schema = {"$ref": "#/components/schemas/" + sys.argv[2], "components": convert(doc["components"])}
errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(json.loads(sys.stdin.read()))]
print("\n".join(errors))
sys.exit(1 if errors else 0)
"##;
    let python = schemathesis().with_file_name("python");
    let document = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api/openapi.yaml");
    let mut child = std::process::Command::new(&python)
        .args(["-c", code])
        .arg(&document)
        .arg(name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    child.stdin.take().unwrap().write_all(value.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not a {name}: {}\n{value}", String::from_utf8_lossy(&out.stdout));
}

/// An HTTP answer: status, headers (names in lower case), body.
struct Answer {
    status: u16,
    headers: std::collections::BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The answer as an RFC 9457 problem document of `status` and `kind` (the last segment
    /// of its type URI, or "about:blank"): media type, members and their types checked.
    #[track_caller]
    fn problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{:?}", self.headers);
        let doc: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body));
        let expected_type = match kind {
            "about:blank" => kind.to_string(),
            name => format!("https://example.invalid/vpngw/problems/{name}"),
        };
        assert_eq!(doc["type"], expected_type.as_str(), "{doc}");
        assert_eq!(doc["status"], status, "{doc}");
        assert!(doc["title"].as_str().is_some_and(|t| !t.is_empty()), "{doc}");
        assert!(doc["detail"].is_string(), "{doc}");
        assert!(doc.get("error").is_none(), "the old error member: {doc}");
        assert_conforms("Problem", &doc);
        doc
    }
}

/// One HTTP request from inside a namespace, the body sent as it is with `content_type`.
fn request(
    lab: &Lab,
    ns: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let code = r#"
import json, sys, urllib.request, urllib.error
method, url, token, content_type, body = sys.argv[1:6]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
if token:
    req.add_header("Authorization", "Bearer " + token)
if content_type:
    req.add_header("Content-Type", content_type)
try:
    r = urllib.request.urlopen(req, timeout=10)
    code, headers, text = r.status, r.headers, r.read().decode()
except urllib.error.HTTPError as e:
    code, headers, text = e.code, e.headers, e.read().decode()
print(code)
print(json.dumps({k.lower(): v for k, v in headers.items()}))
print(text, end="")
"#;
    let url = format!("{API}{path}");
    let args = ["-c", code, method, &url, token.unwrap_or(""), content_type.unwrap_or(""), body.unwrap_or("")];
    let out = lab.exec(ns, "python3", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.splitn(3, '\n');
    let (Some(status), Some(headers)) = (lines.next(), lines.next()) else {
        panic!("no answer: {text}{}", String::from_utf8_lossy(&out.stderr))
    };
    Answer {
        status: status.trim().parse().unwrap(),
        headers: serde_json::from_str(headers).unwrap(),
        body: lines.next().unwrap_or_default().to_string(),
    }
}

/// One HTTP request from inside a namespace, a body as JSON; returns (status, body).
fn http(lab: &Lab, ns: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, String) {
    let body = body.map(Value::to_string);
    let content_type = body.as_ref().map(|_| "application/json");
    let a = request(lab, ns, method, path, token, content_type, body.as_deref());
    (a.status, a.body)
}

/// The SPIs (in, out) of the connection's active child SAs, as the API shows them.
fn active_spis(lab: &Lab, name: &str) -> Vec<(String, String)> {
    let (_, body) = http(lab, &lab.left, "GET", &format!("/api/v1/connections/{name}"), Some(TOKEN), None);
    let view: Value = serde_json::from_str(&body).unwrap();
    let mut spis: Vec<(String, String)> = view["status"]["child_sas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ch| ch["state"] == "active")
        .map(|ch| (ch["spi_in"].as_str().unwrap().to_string(), ch["spi_out"].as_str().unwrap().to_string()))
        .collect();
    spis.sort();
    spis
}

fn sw_conn() -> SwConn {
    SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-256", "sha1", "dh14"), PSK)
}

/// A gateway with the API on, one connection in its file ("from-file", never up).
fn gateway(lab: &Lab, name: &str) -> (String, PathBuf) {
    let dir = lab.dir.join(format!("api-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("api.token"), format!("{TOKEN}\n")).unwrap();
    // vpngw refuses a token file that group or others can read.
    std::fs::set_permissions(dir.join("api.token"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let state = dir.join("connections.toml");
    let file_conn = format!(
        "[[connection]]\nname = \"from-file\"\nremote_address = \"198.51.100.9\"\npre_shared_key = \"file-psk-abcdef\"\n\
         local_subnets = [\"10.1.1.0/24\"]\nremote_subnets = [\"10.9.0.0/24\"]\nstart = \"passive\"\n\
         [api]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
        dir.join("api.token").display(),
        state.display()
    );
    // [api] must come after the connection in TOML terms only as its own table: put it last.
    (config_text(LEFT_WAN, &Vpngw::socket_for(lab, name), true, &file_conn), state)
}

fn the_connection() -> Value {
    json!({
        "remote_address": RIGHT_WAN,
        "pre_shared_key": PSK,
        "local_subnets": [LEFT_NET],
        "remote_subnets": [RIGHT_NET],
        "start": "active",
        "ike": {"encryption": "aes-128", "authentication": "sha1", "dh_group": "dh14"},
        "ipsec": {"encryption": "aes-256", "authentication": "sha1", "pfs": "dh14"}
    })
}

#[test]
fn a_connection_created_through_the_api_comes_up_with_strongswan_and_survives_a_restart() {
    let lab = Lab::gateways("api");
    let charon = Charon::start_with(&lab, &lab.right, true);
    charon.load(&sw_conn());
    let (config, state) = gateway(&lab, "api");
    let v = Vpngw::start(&lab, &lab.left, "api", &config, &[]);
    wait_for(Duration::from_secs(10), || {
        (http(&lab, &lab.left, "GET", "/api/v1/status", Some(TOKEN), None).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("API not answering\n{}", v.log_text()));

    // Tokens: none, wrong, right.
    for token in [None, Some("wrong-token"), Some("")] {
        let answer = request(&lab, &lab.left, "GET", "/api/v1/connections", token, None, None);
        let doc = answer.problem(401, "about:blank");
        assert_eq!(doc["title"], "Unauthorized");
        assert!(doc["detail"].as_str().unwrap().contains("bearer token"), "{doc}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{token:?}");
    }
    let (code, body) =
        http(&lab, &lab.left, "PUT", "/api/v1/connections/x", Some("wrong-token"), Some(&the_connection()));
    assert_eq!(code, 401, "{body}");

    // Rotation: a new token in the file and a reload (SIGHUP); the old one is refused from
    // then on. A file emptied by mistake keeps the token in use, and the log says so. No token
    // ever appears in the log.
    const ROTATED: &str = "rotated-token-0b7d4e2c93";
    let token_file = lab.dir.join("api-api").join("api.token");
    let hup =
        || assert!(std::process::Command::new("kill").args(["-HUP", &v.pid.to_string()]).status().unwrap().success());
    let accepted = |token: &str| http(&lab, &lab.left, "GET", "/api/v1/status", Some(token), None).0 == 200;
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    hup();
    wait_for(Duration::from_secs(5), || accepted(ROTATED).then_some(()))
        .unwrap_or_else(|| panic!("rotated token refused\n{}", v.log_text()));
    assert!(!accepted(TOKEN), "the old token still works after the rotation");
    std::fs::write(&token_file, "  \n").unwrap();
    hup();
    wait_for(Duration::from_secs(5), || v.log_text().contains("API token not re-read").then_some(()))
        .unwrap_or_else(|| panic!("an empty token file went unreported\n{}", v.log_text()));
    assert!(accepted(ROTATED), "an empty token file locked the API");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    hup();
    wait_for(Duration::from_secs(5), || accepted(TOKEN).then_some(()))
        .unwrap_or_else(|| panic!("token not rotated back\n{}", v.log_text()));
    let log = v.log_text();
    assert!(!log.contains(ROTATED) && !log.contains(TOKEN), "a token in the log");

    // Bad input: 422, every problem named by its key; nothing created.
    let mut bad = the_connection();
    bad["ike"]["encryption"] = json!("rot13");
    bad["local_subnets"] = json!(["10.1.0.1/24"]);
    bad["ipsec"]["lifetime_seconds"] = json!(5);
    let put = |name: &str, body: &Value| {
        let path = format!("/api/v1/connections/{name}");
        request(&lab, &lab.left, "PUT", &path, Some(TOKEN), Some("application/json"), Some(&body.to_string()))
    };
    let refused = put("to-right", &bad);
    let answer = refused.problem(422, "invalid-connection");
    let body = refused.body;
    let keys: Vec<&str> = answer["problems"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    for k in ["connection.ike.encryption", "connection.local_subnets[0]", "connection.ipsec.lifetime_seconds"] {
        assert!(keys.contains(&k), "{k} not named: {body}");
    }
    assert!(!body.contains(PSK), "{body}");
    for (body, what) in [(json!([1, 2]), "an array"), (json!({"remote_address": null}), "a null")] {
        let (code, text) = http(&lab, &lab.left, "PUT", "/api/v1/connections/to-right", Some(TOKEN), Some(&body));
        assert_eq!(code, 422, "{what}: {text}");
    }
    // Key files are for the configuration file, not the API.
    let mut key_file = the_connection();
    key_file["pre_shared_key_file"] = json!("/etc/shadow");
    let (code, body) = http(&lab, &lab.left, "PUT", "/api/v1/connections/to-right", Some(TOKEN), Some(&key_file));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("connection.pre_shared_key_file"), "{body}");
    let mut other_name = the_connection();
    other_name["name"] = json!("something-else");
    assert_eq!(http(&lab, &lab.left, "PUT", "/api/v1/connections/to-right", Some(TOKEN), Some(&other_name)).0, 422);
    // The file's connection is read-only here; unknown names are 404.
    put("from-file", &the_connection()).problem(409, "file-connection");
    let ask = |method: &str, path: &str| request(&lab, &lab.left, method, path, Some(TOKEN), None, None);
    ask("DELETE", "/api/v1/connections/from-file").problem(409, "file-connection");
    for (method, path) in [
        ("DELETE", "/api/v1/connections/nothing"),
        ("GET", "/api/v1/connections/nothing"),
        ("POST", "/api/v1/connections/nothing/initiate"),
        ("POST", "/api/v1/connections/nothing/rekey"),
        ("GET", "/api/v1/connections/nothing/peer-config"),
    ] {
        let doc = ask(method, path).problem(404, "unknown-connection");
        assert!(doc["detail"].as_str().unwrap().contains("\"nothing\""), "{method} {path}: {doc}");
    }
    // Nothing to rekey on a connection that is down.
    let doc = ask("POST", "/api/v1/connections/from-file/rekey").problem(409, "nothing-to-rekey");
    assert!(doc["detail"].as_str().unwrap().contains("no child SA to rekey"), "{doc}");
    // What the framework refuses on its own: problem documents too.
    ask("GET", "/api/v1/nowhere").problem(404, "about:blank");
    let not_allowed = ask("PATCH", "/api/v1/connections/from-file");
    not_allowed.problem(405, "about:blank");
    assert!(not_allowed.header("allow").is_some_and(|a| a.contains("PUT")), "{:?}", not_allowed.headers);
    let doc = ask("GET", "/api/v1/connections/from-file/peer-config?format=cisco").problem(400, "invalid-query");
    assert_eq!(doc["problems"][0]["key"], "format", "{doc}");
    let doc = ask("POST", "/api/v1/connections/from-file/rekey?ike=maybe").problem(400, "invalid-query");
    assert_eq!(
        (doc["problems"][0]["key"].as_str(), doc["problems"][0]["value"].as_str()),
        (Some("ike"), Some("maybe"))
    );
    let doc = ask("POST", "/api/v1/connections/from-file/rekey?ike=true").problem(409, "nothing-to-rekey");
    assert!(doc["detail"].as_str().unwrap().contains("no IKE SA to re-authenticate"), "{doc}");
    let path = "/api/v1/connections/to-right";
    let not_json = request(&lab, &lab.left, "PUT", path, Some(TOKEN), Some("application/json"), Some("{\"remote"));
    let doc = not_json.problem(400, "invalid-body");
    assert_eq!(doc["problems"][0]["key"], "body", "{doc}");
    let mut as_text = the_connection().to_string();
    let doc = request(&lab, &lab.left, "PUT", path, Some(TOKEN), Some("text/plain"), Some(&as_text))
        .problem(415, "invalid-body");
    assert!(!doc.to_string().contains(PSK), "{doc}");
    // A key in a broken body stays out of the answer.
    as_text.truncate(as_text.find(PSK).unwrap() + PSK.len());
    let broken = request(&lab, &lab.left, "PUT", path, Some(TOKEN), Some("application/json"), Some(&as_text));
    broken.problem(400, "invalid-body");
    assert!(!broken.body.contains(PSK), "{}", broken.body);

    // Created: 201 with its Location, listed (source api), the key nowhere in the answer; it
    // comes up. Put again: 200, no Location.
    let created = put("to-right", &the_connection());
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("location"), Some("/api/v1/connections/to-right"), "{:?}", created.headers);
    assert_eq!(created.header("content-type"), Some("application/json"));
    let body = created.body;
    assert!(!body.contains(PSK), "the key came back: {body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((view["name"].as_str(), view["source"].as_str()), (Some("to-right"), Some("api")), "{view}");
    assert_eq!(view["configured"]["ipsec"]["pfs"], "dh14", "{view}");
    let up = wait_for(Duration::from_secs(20), || {
        let (_, body) = http(&lab, &lab.left, "GET", "/api/v1/connections/to-right", Some(TOKEN), None);
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"]["state"] == "up").then_some(v)
    })
    .unwrap_or_else(|| panic!("never up\n{}\n{}", v.log_text(), charon.log()));
    assert!(!up.to_string().contains(PSK));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
    let again = put("to-right", &the_connection());
    assert_eq!((again.status, again.header("location")), (200, None), "{}", again.body);
    let sw = charon.list_sas();
    assert_eq!(sw.children.len(), 1, "{sw:?}");
    assert!(sw.children[0].algorithms.contains("AES_CBC-256"), "{sw:?}");
    let (_, list) = http(&lab, &lab.left, "GET", "/api/v1/connections", Some(TOKEN), None);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["from-file", "to-right"]);
    let (code, d) = http(&lab, &lab.left, "GET", "/api/v1/connections/to-right/diagnosis", Some(TOKEN), None);
    assert_eq!(code, 200, "{d}");
    assert!(d.contains("\"verdict\":\"up:"), "{d}");
    // Persisted (mode 0600: the key is in it).
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&state).unwrap().contains("to-right"));

    // Rekey: 202 with the message; new child SAs (other SPIs) replace the old ones, and the
    // traffic goes on.
    let before = active_spis(&lab, "to-right");
    assert_eq!(before.len(), 1, "{before:?}");
    let (code, body) = http(&lab, &lab.left, "POST", "/api/v1/connections/to-right/rekey", Some(TOKEN), None);
    assert_eq!(code, 202, "{body}");
    let said: Value = serde_json::from_str(&body).unwrap();
    assert!(said["message"].as_str().unwrap().contains("rekeying 1 child SA"), "{said}");
    wait_for(Duration::from_secs(20), || {
        let now = active_spis(&lab, "to-right");
        (now.len() == 1 && now.iter().all(|(i, o)| before.iter().all(|(bi, bo)| i != bi && o != bo))).then_some(())
    })
    .unwrap_or_else(|| panic!("no new child SA: {:?}\n{}", active_spis(&lab, "to-right"), v.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "after the rekey");
    // Re-authentication: a new IKE SA (other cookies), the same child SAs.
    let ike_cookie = |lab: &Lab| -> (String, Vec<(String, String)>) {
        let (_, body) = http(lab, &lab.left, "GET", "/api/v1/connections/to-right", Some(TOKEN), None);
        let view: Value = serde_json::from_str(&body).unwrap();
        (view["status"]["ike_sa"]["initiator_cookie"].as_str().unwrap_or("").to_string(), active_spis(lab, "to-right"))
    };
    let (cookie_before, children_before) = ike_cookie(&lab);
    let (code, body) = http(&lab, &lab.left, "POST", "/api/v1/connections/to-right/rekey?ike=true", Some(TOKEN), None);
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("re-authenticating"), "{body}");
    wait_for(Duration::from_secs(20), || {
        let (cookie, children) = ike_cookie(&lab);
        (!cookie.is_empty() && cookie != cookie_before && children == children_before).then_some(())
    })
    .unwrap_or_else(|| panic!("no re-authentication: {:?}\n{}", ike_cookie(&lab), v.log_text()));
    // The tunnel's IKE and child SAs as the document describes them.
    let (_, body) = http(&lab, &lab.left, "GET", "/api/v1/connections/to-right", Some(TOKEN), None);
    let view: Value = serde_json::from_str(&body).unwrap();
    assert!(view["status"]["ike_sa"].is_object() && !view["status"]["child_sas"].as_array().unwrap().is_empty());
    assert_conforms("ConnectionView", &view);
    let (_, body) = http(&lab, &lab.left, "GET", "/api/v1/status", Some(TOKEN), None);
    assert_conforms("Status", &serde_json::from_str(&body).unwrap());
    let (_, body) = http(&lab, &lab.left, "GET", "/api/v1/connections/to-right/diagnosis", Some(TOKEN), None);
    assert_conforms("Diagnosis", &serde_json::from_str(&body).unwrap());

    // Terminate and initiate.
    let (code, _) = http(&lab, &lab.left, "POST", "/api/v1/connections/to-right/terminate", Some(TOKEN), None);
    assert_eq!(code, 202);
    let (code, _) = http(&lab, &lab.left, "POST", "/api/v1/connections/to-right/initiate", Some(TOKEN), None);
    assert_eq!(code, 202);
    v.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}", v.log_text()));

    // A restart: the runtime connection is back and comes up again.
    assert_eq!(v.stop(&lab), Some(0));
    let v = Vpngw::start(&lab, &lab.left, "api", &config, &[]);
    v.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("not restored\n{}", v.log_text()));
    assert!(v.log_text().contains("runtime connections restored"), "{}", v.log_text());

    // Delete: SAs gone at strongSwan too, no longer listed, not in the state file.
    let (code, body) = http(&lab, &lab.left, "DELETE", "/api/v1/connections/to-right", Some(TOKEN), None);
    assert_eq!(code, 204, "{body}");
    wait_for(Duration::from_secs(5), || (charon.list_sas().ike_established == 0).then_some(()))
        .unwrap_or_else(|| panic!("strongSwan still has SAs: {:?}", charon.list_sas()));
    assert_eq!(http(&lab, &lab.left, "GET", "/api/v1/connections/to-right", Some(TOKEN), None).0, 404);
    assert!(!std::fs::read_to_string(&state).unwrap().contains("to-right"));

    // The CLI goes the same way (control socket, same validation).
    let file = lab.dir.join("to-right.toml");
    std::fs::write(
        &file,
        format!(
            "remote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\nlocal_subnets = [\"{LEFT_NET}\"]\n\
             remote_subnets = [\"{RIGHT_NET}\"]\n[ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
             [ipsec]\nencryption = \"aes-256\"\nauthentication = \"sha1\"\npfs = \"dh14\"\n"
        ),
    )
    .unwrap();
    let out = v.cli(&["connection", "add", "to-right", "--file", &file.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    v.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}", v.log_text()));
    std::fs::write(&file, "remote_address = \"nowhere\"\nlocal_subnets = []\n").unwrap();
    let out = v.cli(&["connection", "add", "bad", "--file", &file.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("connection.remote_address") && err.contains("connection.remote_subnets"), "{err}");
    let out = v.cli(&["connection", "remove", "to-right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!v.log_text().contains(PSK), "the key in the log");
    assert_eq!(v.stop(&lab), Some(0));
}

/// schemathesis, from PyPI (installed by `make test` into target/venv).
fn schemathesis() -> PathBuf {
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/st");
    assert!(st.exists(), "{} missing: run `make test` (it installs schemathesis), or `make deps-test`", st.display());
    st
}

#[test]
fn schemathesis_finds_the_api_true_to_its_openapi_document() {
    let st = schemathesis();
    let lab = Lab::gateways("api-st");
    let (config, _state) = gateway(&lab, "api-st");
    // With [ha], so that status's `ha` object is checked against the document too.
    let config = config + &lone_ha_section(&lab, "api-st");
    let v = Vpngw::start(&lab, &lab.left, "api-st", &config, &[]);
    let status = wait_for(Duration::from_secs(10), || {
        let (code, body) = http(&lab, &lab.left, "GET", "/api/v1/status", Some(TOKEN), None);
        let status: Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
        (status["ha"]["role"] == "active").then_some(status)
    })
    .unwrap_or_else(|| panic!("API not answering, or not active\n{}", v.log_text()));
    assert!(status["ha"]["last_takeover"]["took_ms"].is_u64(), "{status}");
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api/openapi.yaml");
    let out = lab.exec(
        &lab.left,
        &st.display().to_string(),
        &[
            "run",
            &schema.display().to_string(),
            "--url",
            API,
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            // Every check: each answer's body against its schema (the status's SAs, the problem
            // documents), its media type and documented headers (Location on 201,
            // WWW-Authenticate on 401), 405 for undocumented methods, invalid input refused,
            // deleted connections gone. But not "schema-valid input is accepted": validity
            // depends on what the schema cannot say (the body's name equal to the path's,
            // subnets that overlap another connection's).
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "10",
        ],
    );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{said}\n{}", v.log_text());
    assert!(v.status().is_some(), "the daemon survived");
    assert_eq!(v.stop(&lab), Some(0));
}

/// The connections the gateway lists, by name.
fn listed(lab: &Lab, ns: &str) -> Vec<String> {
    let (code, body) = http(lab, ns, "GET", "/api/v1/connections", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> =
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

#[test]
fn connections_whose_subnets_overlap_are_refused_by_the_api_and_by_reload() {
    let lab = Lab::gateways("api-overlap");
    let (config, state) = gateway(&lab, "api-overlap");
    let v = Vpngw::start(&lab, &lab.left, "api-overlap", &config, &[]);
    wait_for(Duration::from_secs(10), || {
        (http(&lab, &lab.left, "GET", "/api/v1/status", Some(TOKEN), None).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("API not answering\n{}", v.log_text()));
    let runtime = |local: &str, remote: &str| {
        json!({
            "remote_address": RIGHT_WAN,
            "pre_shared_key": PSK,
            "local_subnets": [local],
            "remote_subnets": [remote],
            "start": "passive",
        })
    };

    // The file's "from-file" protects 10.1.1.0/24 -> 10.9.0.0/24: a runtime connection whose
    // subnets take in that traffic is refused, naming it; nothing is created or saved.
    let (code, body) = http(
        &lab,
        &lab.left,
        "PUT",
        "/api/v1/connections/to-b",
        Some(TOKEN),
        Some(&runtime("10.1.0.0/16", "10.9.0.0/24")),
    );
    assert_eq!(code, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let problem = &answer["problems"][0];
    assert_eq!(problem["key"], "connection.remote_subnets", "{body}");
    assert!(problem["reason"].as_str().unwrap().contains("\"from-file\""), "{body}");
    assert!(!body.contains(PSK), "{body}");
    assert_eq!(listed(&lab, &lab.left), ["from-file"]);
    assert!(!std::fs::read_to_string(&state).unwrap_or_default().contains("to-b"));
    // Disjoint: created.
    let (code, body) = http(
        &lab,
        &lab.left,
        "PUT",
        "/api/v1/connections/to-b",
        Some(TOKEN),
        Some(&runtime("10.1.2.0/24", "10.8.0.0/24")),
    );
    assert_eq!(code, 201, "{body}");

    // A reload whose file would overlap the runtime connection is refused whole: the running
    // configuration stays (no "file-2"; "to-b" kept).
    let hup =
        || assert!(std::process::Command::new("kill").args(["-HUP", &v.pid.to_string()]).status().unwrap().success());
    let extra = |name: &str, local: &str, remote: &str| {
        format!(
            "\n[[connection]]\nname = \"{name}\"\nremote_address = \"198.51.100.7\"\npre_shared_key = \"other-psk-abcdef\"\n\
             local_subnets = [\"{local}\"]\nremote_subnets = [\"{remote}\"]\nstart = \"passive\"\n"
        )
    };
    // [api] closes the file: new connections go before it.
    let with = |conns: &str| config.replacen("[api]", &format!("{conns}\n[api]"), 1);
    std::fs::write(&v.config, with(&extra("file-2", "10.1.2.0/24", "10.8.0.0/16"))).unwrap();
    hup();
    wait_for(Duration::from_secs(5), || v.log_text().contains("reload refused: subnets overlap").then_some(()))
        .unwrap_or_else(|| panic!("the overlap went unreported\n{}", v.log_text()));
    let log = v.log_text();
    let line = log.lines().find(|l| l.contains("reload refused: subnets overlap")).unwrap();
    assert!(line.contains("file-2") && line.contains("to-b"), "{line}");
    assert_eq!(listed(&lab, &lab.left), ["from-file", "to-b"]);
    // Two of the file's connections overlapping each other: refused too, listing the pair.
    let both = extra("file-3", "10.1.3.0/24", "10.7.0.0/24") + &extra("file-4", "10.1.3.0/25", "10.7.0.0/24");
    std::fs::write(&v.config, with(&both)).unwrap();
    hup();
    wait_for(Duration::from_secs(5), || {
        v.log_text()
            .lines()
            .any(|l| l.contains("reload refused: configuration invalid") && l.contains("file-3"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the overlap went unreported\n{}", v.log_text()));
    assert_eq!(listed(&lab, &lab.left), ["from-file", "to-b"]);
    // A disjoint one: the reload applies (so the refusals above were the overlaps).
    std::fs::write(&v.config, with(&extra("file-3", "10.1.3.0/24", "10.7.0.0/24"))).unwrap();
    hup();
    wait_for(Duration::from_secs(5), || (listed(&lab, &lab.left).len() == 3).then_some(()))
        .unwrap_or_else(|| panic!("a valid reload not applied\n{}", v.log_text()));
    assert_eq!(listed(&lab, &lab.left), ["file-3", "from-file", "to-b"]);
    filters_and_pages(&lab);

    // A state file that cannot be written (a directory in its place): 500, a problem document
    // without the key.
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let body = runtime("10.1.4.0/24", "10.6.0.0/24").to_string();
    let path = "/api/v1/connections/to-c";
    let failed = request(&lab, &lab.left, "PUT", path, Some(TOKEN), Some("application/json"), Some(&body));
    let doc = failed.problem(500, "about:blank");
    assert!(doc["detail"].as_str().unwrap().contains("cannot save it"), "{doc}");
    assert!(!failed.body.contains(PSK), "{}", failed.body);
    assert_eq!(v.stop(&lab), Some(0));
}

/// The names of a JSON array of connections.
fn names_of(body: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

/// Filters and pages (issue 20) on a gateway with three connections, all down: file-3,
/// from-file, to-b. `/connections` keeps its array and says the total and the next page in
/// headers; `/status` says them in `page`; refusals name the parameter.
fn filters_and_pages(lab: &Lab) {
    let get = |path: &str| request(lab, &lab.left, "GET", path, Some(TOKEN), None, None);
    let first = get("/api/v1/connections?limit=2");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(names_of(&first.body), ["file-3", "from-file"]);
    assert_eq!(first.header("x-total-count"), Some("3"), "{:?}", first.headers);
    let link = first.header("link").unwrap_or_else(|| panic!("no Link: {:?}", first.headers));
    assert_eq!(link, "</api/v1/connections?limit=2&after=from-file>; rel=\"next\"");
    // Following the link: the last page, without a Link.
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let last = get(next);
    assert_eq!((names_of(&last.body), last.header("x-total-count")), (vec!["to-b".to_string()], Some("3")));
    assert_eq!(last.header("link"), None, "{:?}", last.headers);
    // A glob (percent-encoded, as clients send '*'), a state; nothing matching is an empty 200.
    let f = get("/api/v1/connections?name=f%2A");
    assert_eq!((names_of(&f.body), f.header("x-total-count")), (vec!["file-3".into(), "from-file".into()], Some("2")));
    let up = get("/api/v1/connections?state=up,connecting");
    assert_eq!((up.status, names_of(&up.body), up.header("x-total-count")), (200, vec![], Some("0")));
    // A cursor past the end, and one naming no connection: the pages go on from where it sorts.
    assert!(names_of(&get("/api/v1/connections?after=zzz").body).is_empty());
    assert_eq!(names_of(&get("/api/v1/connections?after=g").body), ["to-b"]);

    // /status: the page and the counts in the body, conforming to the document.
    let counted = get("/api/v1/status?limit=0");
    let status: Value = serde_json::from_str(&counted.body).unwrap();
    assert_eq!(status["connections"], json!([]), "{status}");
    assert_eq!(status["page"], json!({"matched": 3, "by_state": {"up": 0, "connecting": 0, "down": 3}}));
    assert_conforms("Status", &status);
    let paged: Value = serde_json::from_str(&get("/api/v1/status?state=down&name=*-*&limit=1").body).unwrap();
    assert_eq!(paged["connections"][0]["name"], "file-3", "{paged}");
    assert_eq!((paged["page"]["matched"].clone(), paged["page"]["next_after"].clone()), (json!(3), json!("file-3")));
    assert_conforms("Status", &paged);

    // Refused, naming the parameter: 400 invalid-query.
    for (query, key) in [
        ("/api/v1/status?state=established", "state"),
        ("/api/v1/connections?limit=-1", "limit"),
        ("/api/v1/connections?name=a%20b", "name"),
        ("/api/v1/connections?after=to-*", "after"),
        ("/api/v1/connections?offset=2", "offset"),
    ] {
        let doc = get(query).problem(400, "invalid-query");
        assert_eq!(doc["problems"][0]["key"], key, "{query}: {doc}");
        assert!(doc["detail"].as_str().unwrap().contains(key), "{query}: {doc}");
    }
}

/// `curl` in a namespace: (HTTP status, or 0 when no HTTP answer came; body). `cacert`: trust
/// this certificate.
fn curl(lab: &Lab, ns: &str, url: &str, cacert: Option<&std::path::Path>, token: Option<&str>) -> (u16, String) {
    let mut args = vec!["-sS".to_string(), "--max-time".into(), "5".into(), "-w".into(), "\n%{http_code}".into()];
    if let Some(c) = cacert {
        args.extend(["--cacert".into(), c.display().to_string()]);
    }
    if let Some(t) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    args.push(url.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec(ns, "curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn off_loopback_the_api_serves_https_only_and_needs_tls_or_the_opt_out() {
    use std::os::unix::fs::PermissionsExt as _;
    vpngw_tests::tool::require("openssl", "apt install openssl");
    vpngw_tests::tool::require("curl", "apt install curl");
    let lab = Lab::gateways("api-tls");
    let dir = lab.dir.join("api-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    // A self-signed certificate for the gateway's WAN address.
    vpngw_tests::tool::run(std::process::Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=vpngw test API",
        "-addext",
        &format!("subjectAltName=IP:{LEFT_WAN}"),
        "-keyout",
        &key.display().to_string(),
        "-out",
        &cert.display().to_string(),
    ]));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("api.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(dir.join("api.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let api = |tls: &str| {
        format!(
            "[api]\nlisten = \"{LEFT_WAN}:9721\"\ntoken_file = \"{}\"\nstate_file = \"{}\"\n{tls}",
            dir.join("api.token").display(),
            dir.join("connections.toml").display()
        )
    };
    let tls = format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n", cert.display(), key.display());
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "api-tls"), true, &api(&tls));

    // `vpngw check`: off loopback without TLS refused, with the opt-out accepted.
    let check = |text: &str| {
        let path = dir.join("check.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::process::Command::new(vpngw_tests::vpngw::binary())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let plain = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "x"), true, &api(""));
    let out = check(&plain);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("api.listen = \"{LEFT_WAN}:9721\": not a loopback address")), "{err}");
    let out = check(&config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "x"), true, &api("insecure_plaintext = true\n")));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check(&config).status.code(), Some(0));

    // Served: HTTPS with the certificate works (and the token is still required); plain HTTP
    // gets no HTTP answer at all; a client that does not trust the certificate stops.
    let v = Vpngw::start(&lab, &lab.left, "api-tls", &config, &[]);
    let url = format!("https://{LEFT_WAN}:9721/api/v1/status");
    wait_for(Duration::from_secs(10), || {
        (curl(&lab, &lab.right, &url, Some(&cert), Some(TOKEN)).0 == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("HTTPS not answering: {:?}\n{}", curl(&lab, &lab.right, &url, Some(&cert), Some(TOKEN)), v.log_text())
    });
    let (code, body) = curl(&lab, &lab.right, &url, Some(&cert), Some(TOKEN));
    assert!(body.contains("\"connections\""), "{code} {body}");
    assert_eq!(curl(&lab, &lab.right, &url, Some(&cert), None).0, 401);
    let (code, body) = curl(&lab, &lab.right, &format!("http://{LEFT_WAN}:9721/api/v1/status"), None, Some(TOKEN));
    assert_eq!(code, 0, "plain HTTP answered: {body}");
    let (code, body) = curl(&lab, &lab.right, &url, None, Some(TOKEN));
    assert_eq!(code, 0, "an untrusted certificate accepted: {body}");
    assert!(v.log_text().contains(&format!("management API at https://{LEFT_WAN}:9721/api/v1/")), "{}", v.log_text());
    // A token file made readable by others: the reload is refused (the token in use stays).
    let token_file = dir.join("api.token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&token_file, "exposed-token-9a8b7c6d\n").unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", &v.pid.to_string()]).status().unwrap().success());
    let refused = format!("{} has mode 0644", token_file.display());
    wait_for(Duration::from_secs(5), || {
        v.log_text().lines().any(|l| l.contains("reload refused") && l.contains(&refused)).then_some(())
    })
    .unwrap_or_else(|| panic!("a 0644 token file went unreported\n{}", v.log_text()));
    assert_eq!(curl(&lab, &lab.right, &url, Some(&cert), Some(TOKEN)).0, 200, "the token in use changed");
    assert_eq!(curl(&lab, &lab.right, &url, Some(&cert), Some("exposed-token-9a8b7c6d")).0, 401);
    assert!(!v.log_text().contains("exposed-token"), "a token in the log");
    assert_eq!(v.stop(&lab), Some(0));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The opt-out: plain HTTP off loopback, with a WARN at start.
    let plain = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "api-plain"), true, &api("insecure_plaintext = true\n"));
    let v = Vpngw::start(&lab, &lab.left, "api-plain", &plain, &[]);
    let http_url = format!("http://{LEFT_WAN}:9721/api/v1/status");
    wait_for(Duration::from_secs(10), || (curl(&lab, &lab.right, &http_url, None, Some(TOKEN)).0 == 200).then_some(()))
        .unwrap_or_else(|| panic!("plain HTTP not answering with the opt-out\n{}", v.log_text()));
    assert!(
        v.log_text().lines().any(|l| l.contains("WARN") && l.contains("insecure_plaintext = true")),
        "no WARN for the opt-out\n{}",
        v.log_text()
    );
    assert_eq!(v.stop(&lab), Some(0));

    // A key file others can read: the daemon does not start, and says why.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.join("run.toml");
    std::fs::write(&path, &config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out =
        std::process::Command::new(vpngw_tests::vpngw::binary()).args(["run", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{} has mode 0644", key.display())) && err.contains("chmod 600"), "{err}");
}
