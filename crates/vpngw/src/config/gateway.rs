//! The gateway-wide sections of the configuration file: `[gateway]`, `[metrics]`, `[api]` and
//! `[tuning]` (docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::walker::{NAME_CHARS, Walker, valid_name};
use super::{
    Api, ApiTls, DEFAULT_API_LISTEN, DEFAULT_API_STATE, DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN, EspOutput,
    Gateway, Metrics, TcpMssClamp, Tuning,
};

impl Walker {
    pub(super) fn gateway(&mut self, g: &Table) -> Option<Gateway> {
        self.unknown_keys(
            "gateway.",
            g,
            &[
                "name",
                "public_address",
                "tun",
                "tun_mtu",
                "path_mtu",
                "workers",
                "worker_cores",
                "esp_output",
                "control_socket",
                "tcp_mss_clamp",
            ],
        );
        let name = self.string("gateway.name", g, "name").unwrap_or_else(|| "vpngw".into());
        if !valid_name(&name) {
            self.problem("gateway.name", g.get("name"), format!("1-64 characters: {NAME_CHARS}"));
        }
        let public_address = self.ipv4("gateway.public_address", g, "public_address", true);
        let tun = self.string("gateway.tun", g, "tun").unwrap_or_else(|| "vpngw0".into());
        if tun.is_empty() || tun.len() > 15 || !tun.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.problem("gateway.tun", g.get("tun"), "interface name: 1-15 characters, letters, digits, '-', '_'");
        }
        let workers = self.integer("gateway.workers", g, "workers", 0, 1024).unwrap_or(0) as usize;
        let worker_cores = self.worker_cores(g);
        let esp_output = self.word(
            "gateway.esp_output",
            g,
            "esp_output",
            EspOutput::Link,
            &[("link", EspOutput::Link), ("ip", EspOutput::Ip)],
        );
        let path_mtu = self.integer("gateway.path_mtu", g, "path_mtu", 576, 9216).unwrap_or(1500) as u16;
        // ESP worst case: outer IPv4 20 + UDP 8 + SPI/seq 8 + IV 16 + padding 15 + trailer 2 +
        // ICV 12 = 81 bytes; rounded to 100 for headroom.
        let tun_mtu =
            self.integer("gateway.tun_mtu", g, "tun_mtu", 576, 9216).unwrap_or(i64::from(path_mtu) - 100) as u16;
        if u32::from(tun_mtu) + 81 > u32::from(path_mtu) {
            self.problem(
                "gateway.tun_mtu",
                g.get("tun_mtu"),
                format!("must leave 81 bytes of ESP overhead below path_mtu {path_mtu}"),
            );
        }
        let control_socket = self
            .string("gateway.control_socket", g, "control_socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into());
        if !control_socket.is_absolute() {
            self.problem("gateway.control_socket", g.get("control_socket"), "must be an absolute path");
        }
        let tcp_mss_clamp = self.tcp_mss_clamp(g);
        Some(Gateway {
            name,
            public_address: public_address?,
            tun,
            tun_mtu,
            path_mtu,
            workers,
            worker_cores,
            esp_output,
            control_socket,
            tcp_mss_clamp,
        })
    }

    /// `gateway.tcp_mss_clamp`: "auto" (the default), "off", or an MSS between 536 (what
    /// every IPv4 host accepts) and 9176 (a 9216-byte jumbo path less 40 bytes of headers).
    fn tcp_mss_clamp(&mut self, g: &Table) -> TcpMssClamp {
        const KEY: &str = "gateway.tcp_mss_clamp";
        const RANGE: std::ops::RangeInclusive<i64> = 536..=9176;
        match g.get("tcp_mss_clamp") {
            None => TcpMssClamp::Auto,
            Some(Value::String(s)) if s == "auto" => TcpMssClamp::Auto,
            Some(Value::String(s)) if s == "off" => TcpMssClamp::Off,
            Some(Value::Integer(mss)) if RANGE.contains(mss) => TcpMssClamp::Fixed(*mss as u16),
            Some(v) => {
                self.problem(KEY, Some(v), "\"auto\", \"off\", or an MSS between 536 and 9176");
                TcpMssClamp::Auto
            }
        }
    }

    /// `gateway.worker_cores`: CPU numbers, each once. Whether this process may use them is
    /// known only where it runs: the dataplane checks that at start.
    fn worker_cores(&mut self, g: &Table) -> Vec<usize> {
        const KEY: &str = "gateway.worker_cores";
        let Some(v) = g.get("worker_cores") else { return Vec::new() };
        let Value::Array(items) = v else {
            self.problem(KEY, Some(v), "must be a list of CPU numbers, e.g. [0, 1]");
            return Vec::new();
        };
        let mut cores = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(c) if (0..=4095).contains(c) => {
                    let c = *c as usize;
                    if cores.contains(&c) {
                        self.problem(KEY, Some(item), "listed twice");
                    } else {
                        cores.push(c);
                    }
                }
                other => self.problem(KEY, Some(other), "a CPU number: an integer between 0 and 4095"),
            }
        }
        cores
    }
    pub(super) fn api(&mut self, t: &Table) -> Option<Api> {
        self.unknown_keys(
            "api.",
            t,
            &["enabled", "listen", "token_file", "state_file", "tls_cert_file", "tls_key_file", "insecure_plaintext"],
        );
        let enabled = self.boolean("api.enabled", t, "enabled", true);
        let listen = match self.string("api.listen", t, "listen") {
            None => DEFAULT_API_LISTEN.parse().ok(),
            Some(s) => s.parse::<SocketAddr>().ok().or_else(|| {
                self.problem("api.listen", t.get("listen"), "must be ADDRESS:PORT, e.g. \"127.0.0.1:9721\"");
                None
            }),
        };
        let token_file = match self.string("api.token_file", t, "token_file") {
            Some(p) => {
                let path = self.base.join(p);
                self.secret_file("api.token_file", t.get("token_file"), &path);
                Some(path)
            }
            None => {
                self.problem("api.token_file", None, "required: a file holding the bearer token");
                None
            }
        };
        let state = self.string("api.state_file", t, "state_file").unwrap_or(DEFAULT_API_STATE.into());
        let state_file = self.base.join(state);
        let tls = self.api_tls(t);
        let insecure_plaintext = self.boolean("api.insecure_plaintext", t, "insecure_plaintext", false);
        if let Some(listen) = listen
            && !listen.ip().is_loopback()
            && matches!(tls, Some(None))
            && !insecure_plaintext
        {
            self.problem(
                "api.listen",
                t.get("listen"),
                "not a loopback address, and every request carries the bearer token: set tls_cert_file and \
                 tls_key_file (PEM) to serve HTTPS, or insecure_plaintext = true to accept the token in the clear",
            );
        }
        if insecure_plaintext && matches!(tls, Some(Some(_))) {
            self.warn(
                "api.insecure_plaintext",
                "true",
                "has no effect: tls_cert_file and tls_key_file are set (HTTPS)",
            );
        }
        let api = Api { listen: listen?, token_file: token_file?, state_file, tls: tls.flatten(), insecure_plaintext };
        enabled.then_some(api)
    }

    /// `api.tls_cert_file` and `api.tls_key_file`: both or neither. Some(None): neither given;
    /// None: a problem recorded.
    fn api_tls(&mut self, t: &Table) -> Option<Option<ApiTls>> {
        let cert = self.string("api.tls_cert_file", t, "tls_cert_file").map(|p| self.base.join(p));
        let key = self.string("api.tls_key_file", t, "tls_key_file").map(|p| self.base.join(p));
        let (cert_file, key_file) = match (cert, key) {
            (None, None) if !t.contains_key("tls_cert_file") && !t.contains_key("tls_key_file") => return Some(None),
            (Some(c), Some(k)) => (c, k),
            (c, k) => {
                for (name, given) in [("tls_cert_file", c.is_some()), ("tls_key_file", k.is_some())] {
                    if !given && !t.contains_key(name) {
                        self.problem(
                            &format!("api.{name}"),
                            None,
                            "required with the other tls_* key (a PEM file; both serve HTTPS)",
                        );
                    }
                }
                return None;
            }
        };
        let mut ok = true;
        for (name, path) in [("tls_cert_file", &cert_file), ("tls_key_file", &key_file)] {
            if let Err(e) = std::fs::File::open(path) {
                self.problem(&format!("api.{name}"), t.get(name), format!("cannot read {}: {e}", path.display()));
                ok = false;
            }
        }
        self.secret_file("api.tls_key_file", t.get("tls_key_file"), &key_file);
        ok.then_some(Some(ApiTls { cert_file, key_file }))
    }

    pub(super) fn metrics(&mut self, t: Table) -> Metrics {
        self.unknown_keys("metrics.", &t, &["enabled", "listen"]);
        let enabled = self.boolean("metrics.enabled", &t, "enabled", true);
        let listen = match self.string("metrics.listen", &t, "listen") {
            None => DEFAULT_METRICS_LISTEN.parse().ok(),
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem("metrics.listen", t.get("listen"), "must be ADDRESS:PORT, e.g. \"127.0.0.1:9720\"");
                    None
                }
            },
        };
        Metrics { listen: listen.filter(|_| enabled) }
    }

    pub(super) fn tuning(&mut self, t: &Table) -> Tuning {
        self.unknown_keys(
            "tuning.",
            t,
            &["retransmit_initial_ms", "retransmit_tries", "dh_per_second", "half_open", "dh_threads"],
        );
        let d = Tuning::default();
        let ms = self.integer("tuning.retransmit_initial_ms", t, "retransmit_initial_ms", 100, 60_000).unwrap_or(2000);
        let tries = self.integer("tuning.retransmit_tries", t, "retransmit_tries", 0, 20).unwrap_or(5);
        let dh = self.integer("tuning.dh_per_second", t, "dh_per_second", 1, 100_000);
        let half_open = self.integer("tuning.half_open", t, "half_open", 16, 1_000_000);
        let dh_threads = self.integer("tuning.dh_threads", t, "dh_threads", 0, super::MAX_DH_THREADS as i64);
        Tuning {
            retransmit_initial: Duration::from_millis(ms as u64),
            retransmit_tries: tries as u32,
            dh_per_second: dh.map_or_else(
                || super::default_dh_per_second(dh_threads.map_or(d.dh_threads, |n| n as usize)),
                |n| n as u32,
            ),
            half_open: half_open.map_or(d.half_open, |n| n as usize),
            dh_threads: dh_threads.map_or(d.dh_threads, |n| n as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::MINIMAL;
    use super::super::{Config, EspOutput, ParseError, TcpMssClamp};

    /// MINIMAL with `line` added to its `[gateway]`.
    fn with(line: &str) -> String {
        MINIMAL.replace("[[connection]]", &format!("{line}\n\n[[connection]]"))
    }

    #[test]
    fn esp_output_is_link_unless_set_to_ip() {
        assert_eq!(Config::parse(MINIMAL, Path::new(".")).unwrap().gateway.esp_output, EspOutput::Link);
        let c = Config::parse(&with("esp_output = \"ip\""), Path::new(".")).unwrap();
        assert_eq!(c.gateway.esp_output, EspOutput::Ip);
        let Err(ParseError::Invalid(problems)) = Config::parse(&with("esp_output = \"xdp\""), Path::new(".")) else {
            panic!("esp_output = xdp accepted")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "gateway.esp_output");
        assert!(problems[0].to_string().contains("must be one of: link, ip"), "{}", problems[0]);
    }

    #[test]
    fn tcp_mss_clamp_is_auto_off_or_a_value_in_range() {
        let clamp = |line: &str| Config::parse(&with(line), Path::new(".")).map(|c| c.gateway.tcp_mss_clamp);
        assert_eq!(Config::parse(MINIMAL, Path::new(".")).unwrap().gateway.tcp_mss_clamp, TcpMssClamp::Auto);
        assert_eq!(clamp("tcp_mss_clamp = \"auto\"").unwrap(), TcpMssClamp::Auto);
        assert_eq!(clamp("tcp_mss_clamp = \"off\"").unwrap(), TcpMssClamp::Off);
        assert_eq!(clamp("tcp_mss_clamp = 536").unwrap(), TcpMssClamp::Fixed(536));
        assert_eq!(clamp("tcp_mss_clamp = 9176").unwrap(), TcpMssClamp::Fixed(9176));
        for bad in ["535", "9177", "-1", "\"on\"", "true", "1360.5", "\"1360\""] {
            let Err(ParseError::Invalid(problems)) = clamp(&format!("tcp_mss_clamp = {bad}")) else {
                panic!("tcp_mss_clamp = {bad} accepted")
            };
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].key, "gateway.tcp_mss_clamp", "{bad}");
            assert!(problems[0].to_string().contains("between 536 and 9176"), "{}", problems[0]);
        }
    }

    /// A fresh directory with the given files (name, content, mode).
    fn dir_with(test: &str, files: &[(&str, &str, u32)]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vpngw-api-config-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text, mode) in files {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    fn problems(text: &str, base: &Path) -> Vec<String> {
        match Config::parse(text, base) {
            Ok(_) => Vec::new(),
            Err(ParseError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn api_off_loopback_needs_tls_or_the_explicit_opt_out() {
        let dir =
            dir_with("tls", &[("t", "token-1234567890\n", 0o600), ("c.pem", "cert", 0o644), ("k.pem", "key", 0o600)]);
        let api = |lines: &str| format!("{MINIMAL}[api]\ntoken_file = \"t\"\n{lines}\n");
        // Loopback: plain HTTP by default.
        let c = Config::parse(&api(""), &dir).unwrap();
        let a = c.api.unwrap();
        assert_eq!((a.tls.clone(), a.insecure_plaintext, a.scheme()), (None, false, "http"));
        // Anything else without TLS: refused, with what to do.
        for listen in ["192.0.2.10:9721", "0.0.0.0:9721", "[::]:9721"] {
            let p = problems(&api(&format!("listen = \"{listen}\"")), &dir);
            assert_eq!(p.len(), 1, "{listen}: {p:?}");
            assert!(p[0].starts_with("api.listen = ") && p[0].contains("tls_cert_file and tls_key_file"), "{p:?}");
            assert!(p[0].contains("insecure_plaintext = true"), "{p:?}");
        }
        // The opt-out, written out.
        let c = Config::parse(&api("listen = \"192.0.2.10:9721\"\ninsecure_plaintext = true"), &dir).unwrap();
        assert!(c.api.unwrap().insecure_plaintext);
        let p = problems(&api("listen = \"192.0.2.10:9721\"\ninsecure_plaintext = \"yes\""), &dir);
        assert!(p.iter().any(|p| p.starts_with("api.insecure_plaintext")), "{p:?}");
        // TLS: both files, readable, the key private.
        let tls = "listen = \"192.0.2.10:9721\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"";
        let a = Config::parse(&api(tls), &dir).unwrap().api.unwrap();
        assert_eq!(a.tls.as_ref().map(|t| t.key_file.clone()), Some(dir.join("k.pem")));
        assert_eq!(a.scheme(), "https");
        let p = problems(&api("listen = \"192.0.2.10:9721\"\ntls_cert_file = \"c.pem\""), &dir);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("api.tls_key_file: required"), "{p:?}");
        let p = problems(&api(&tls.replace("k.pem", "missing.pem")), &dir);
        assert!(p.len() == 1 && p[0].starts_with("api.tls_key_file") && p[0].contains("cannot read"), "{p:?}");
    }

    #[test]
    fn token_and_tls_key_files_that_others_may_read_are_refused() {
        let dir = dir_with(
            "modes",
            &[
                ("t-open", "secret-token-value\n", 0o644),
                ("t-group", "secret-token-value\n", 0o640),
                ("t", "secret-token-value\n", 0o600),
                ("c.pem", "cert", 0o644),
                ("k-open", "secret-key-value", 0o604),
                ("k", "secret-key-value", 0o400),
            ],
        );
        let api = |token: &str, key: &str| {
            format!("{MINIMAL}[api]\ntoken_file = \"{token}\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"{key}\"\n")
        };
        assert!(Config::parse(&api("t", "k"), &dir).is_ok(), "0600 token, 0400 key refused");
        for (token, key, bad, mode) in
            [("t-open", "k", "t-open", "0644"), ("t-group", "k", "t-group", "0640"), ("t", "k-open", "k-open", "0604")]
        {
            let p = problems(&api(token, key), &dir);
            assert_eq!(p.len(), 1, "{p:?}");
            let path = dir.join(bad).display().to_string();
            assert!(p[0].contains(&format!("{path} has mode {mode}")), "{p:?}");
            assert!(p[0].contains(&format!("chmod 600 {path}")), "{p:?}");
            assert!(!p[0].contains("secret-"), "a secret in {p:?}");
        }
    }

    #[test]
    fn worker_cores_are_a_list_of_distinct_cpu_numbers() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!((c.gateway.workers, c.gateway.worker_cores.clone()), (0, vec![]), "default: the allowed cores");
        let c = Config::parse(&with("worker_cores = [2, 0, 3]"), Path::new(".")).unwrap();
        assert_eq!(c.gateway.worker_cores, [2, 0, 3], "in the order given");
        for (line, shown) in [
            ("worker_cores = [1, 1]", "1"),
            ("worker_cores = [0, -1]", "-1"),
            ("worker_cores = [4096]", "4096"),
            ("worker_cores = [\"0\"]", "\"0\""),
            ("worker_cores = 3", "3"),
        ] {
            let Err(ParseError::Invalid(problems)) = Config::parse(&with(line), Path::new(".")) else {
                panic!("{line} accepted")
            };
            let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["gateway.worker_cores"], "{line}");
            assert_eq!(problems[0].value, shown, "{line}: the offending value is shown");
        }
    }
}
