//! The Kubernetes source: NodePort and LoadBalancer services, which
//! kube-proxy serves with packet rules rather than listening sockets, so a
//! socket scan never sees them. Follows
//! `kubectl get services -A --watch --output-watch-events -o json` and
//! reports each service port on 0.0.0.0 (the node port of a NodePort
//! service, the service port of a LoadBalancer one).
//!
//! Used when `kubectl` runs and reaches a cluster; if it is missing or the
//! cluster goes away, the source reports nothing and tries again later.

use std::{
    collections::BTreeMap,
    io::BufReader,
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use ferry_protocol::{Listener, Proto};
use serde::Deserialize;

use super::watcher::{PortSet, Source, SourceSink};

/// How long to wait before running kubectl again after it ended.
const RETRY: Duration = Duration::from_secs(10);

/// Follows Kubernetes services with kubectl.
pub struct KubernetesServices {
    kubectl: PathBuf,
}

impl KubernetesServices {
    /// A source that runs `kubectl` (a path or a name looked up on PATH).
    pub fn new(kubectl: PathBuf) -> Self {
        Self { kubectl }
    }

    /// Runs one watch until kubectl exits; returns why it ended.
    fn watch_once(&self, sink: &SourceSink) -> std::io::Result<String> {
        let mut cmd = Command::new(&self.kubectl);
        // kubectl must not outlive the agent, however the agent ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .args(["get", "services", "--all-namespaces", "--watch", "--output-watch-events", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut services = BTreeMap::<String, Vec<Listener>>::new();
        let events = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<WatchEvent>();
        let mut ended = String::from("kubectl exited");
        for event in events {
            match event {
                Ok(ev) => {
                    apply(&mut services, ev);
                    sink.publish(services.values().flatten().copied().collect());
                }
                Err(e) => {
                    ended = format!("unreadable kubectl output: {e}");
                    break;
                }
            }
            if sink.is_closed() {
                break;
            }
        }
        let _ = child.kill();
        let status = child.wait()?;
        Ok(format!("{ended} ({status})"))
    }
}

impl Source for KubernetesServices {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run(self: Box<Self>, sink: SourceSink) {
        let mut last = String::new();
        while !sink.is_closed() {
            let why = match self.watch_once(&sink) {
                Ok(why) => why,
                Err(e) => format!("cannot run {}: {e}", self.kubectl.display()),
            };
            // A cluster that goes away takes its services with it.
            sink.publish(PortSet::new());
            if why != last {
                tracing::debug!("kubernetes services: {why}; retrying every {RETRY:?}");
                last = why;
            }
            std::thread::sleep(RETRY);
        }
    }
}

/// One line of `--output-watch-events` output.
#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Service,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    ports: Vec<ServicePort>,
}

#[derive(Debug, Deserialize)]
struct ServicePort {
    #[serde(default)]
    port: u16,
    #[serde(rename = "nodePort", default)]
    node_port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

fn apply(services: &mut BTreeMap<String, Vec<Listener>>, ev: WatchEvent) {
    let key = format!("{}/{}", ev.object.metadata.namespace, ev.object.metadata.name);
    match ev.kind.as_str() {
        "DELETED" => {
            services.remove(&key);
        }
        "ADDED" | "MODIFIED" => {
            services.insert(key, listeners(&ev.object.spec));
        }
        _ => {}
    }
}

/// The host-visible ports of one service.
fn listeners(spec: &Spec) -> Vec<Listener> {
    spec.ports
        .iter()
        .filter_map(|p| {
            let port = match spec.kind.as_str() {
                "NodePort" => p.node_port,
                "LoadBalancer" => p.port,
                _ => return None,
            };
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                _ => return None, // SCTP
            };
            (port != 0).then(|| Listener { proto, addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> WatchEvent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn node_ports_and_load_balancers_are_reported_cluster_ips_not() {
        let mut s = BTreeMap::new();
        apply(
            &mut s,
            event(
                r#"{"type":"ADDED","object":{"metadata":{"namespace":"default","name":"web"},
            "spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30080,"protocol":"TCP"},
                                               {"port":53,"nodePort":30053,"protocol":"UDP"}]}}}"#,
            ),
        );
        apply(
            &mut s,
            event(
                r#"{"type":"ADDED","object":{"metadata":{"namespace":"kube-system","name":"lb"},
            "spec":{"type":"LoadBalancer","ports":[{"port":8443,"nodePort":31000}]}}}"#,
            ),
        );
        apply(
            &mut s,
            event(
                r#"{"type":"ADDED","object":{"metadata":{"namespace":"default","name":"kubernetes"},
            "spec":{"type":"ClusterIP","ports":[{"port":443,"protocol":"TCP"}]}}}"#,
            ),
        );
        let all: Vec<_> = s.values().flatten().map(|l| (l.proto, l.addr.to_string())).collect();
        assert_eq!(
            all,
            vec![
                (Proto::Tcp, "0.0.0.0:30080".to_string()),
                (Proto::Udp, "0.0.0.0:30053".to_string()),
                (Proto::Tcp, "0.0.0.0:8443".to_string()),
            ]
        );
    }

    #[test]
    fn deleted_services_go_away_and_modified_ones_are_replaced() {
        let mut s = BTreeMap::new();
        apply(
            &mut s,
            event(
                r#"{"type":"ADDED","object":{"metadata":{"namespace":"a","name":"x"},"spec":{"type":"NodePort","ports":[{"port":1,"nodePort":30001}]}}}"#,
            ),
        );
        apply(
            &mut s,
            event(
                r#"{"type":"MODIFIED","object":{"metadata":{"namespace":"a","name":"x"},"spec":{"type":"NodePort","ports":[{"port":1,"nodePort":30002}]}}}"#,
            ),
        );
        assert_eq!(s["a/x"][0].addr.port(), 30002);
        apply(&mut s, event(r#"{"type":"DELETED","object":{"metadata":{"namespace":"a","name":"x"},"spec":{}}}"#));
        assert!(s.is_empty());
    }
}
