//! The gateway-wide sections of the configuration file: `[gateway]`, `[metrics]`, `[api]` and
//! `[tuning]` (docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::walker::{NAME_CHARS, Walker, valid_name};
use super::{
    Api, DEFAULT_API_LISTEN, DEFAULT_API_STATE, DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN, EspOutput, Gateway,
    Metrics, Tuning,
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
        })
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
        self.unknown_keys("api.", t, &["enabled", "listen", "token_file", "state_file"]);
        let enabled = self.boolean("api.enabled", t, "enabled", true);
        let listen = match self.string("api.listen", t, "listen") {
            None => DEFAULT_API_LISTEN.parse().ok(),
            Some(s) => s.parse::<SocketAddr>().ok().or_else(|| {
                self.problem("api.listen", t.get("listen"), "must be ADDRESS:PORT, e.g. \"127.0.0.1:9721\"");
                None
            }),
        };
        let token_file = match self.string("api.token_file", t, "token_file") {
            Some(p) => Some(self.base.join(p)),
            None => {
                self.problem("api.token_file", None, "required: a file holding the bearer token");
                None
            }
        };
        let state = self.string("api.state_file", t, "state_file").unwrap_or(DEFAULT_API_STATE.into());
        let state_file = self.base.join(state);
        let api = Api { listen: listen?, token_file: token_file?, state_file };
        enabled.then_some(api)
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
        self.unknown_keys("tuning.", t, &["retransmit_initial_ms", "retransmit_tries"]);
        let ms = self.integer("tuning.retransmit_initial_ms", t, "retransmit_initial_ms", 100, 60_000).unwrap_or(2000);
        let tries = self.integer("tuning.retransmit_tries", t, "retransmit_tries", 0, 20).unwrap_or(5);
        Tuning { retransmit_initial: Duration::from_millis(ms as u64), retransmit_tries: tries as u32 }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::MINIMAL;
    use super::super::{Config, EspOutput, ParseError};

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
