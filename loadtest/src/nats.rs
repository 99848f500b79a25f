//! The NATS server under a cluster of relays: found, started with
//! JetStream (the relays' source claims live in its key-value store) on
//! free loopback ports with a fresh store folder, pinned like the relays,
//! read through its monitoring endpoint (`/varz`), and stopped (its store
//! removed) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::peer::Target;
use crate::probe::http_get;
use crate::relays::{free_port, launch, RelayProc};

/// `nats-server`: the given path, else on `PATH`, else Debian's
/// `/usr/sbin/nats-server`; Err says how to get it.
pub fn find(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{} not found", p.display()))
        };
    }
    crate::relays::on_path("nats-server")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            "nats-server not found on PATH or at /usr/sbin/nats-server: install it (`apt-get install nats-server`) or pass --nats-server".into()
        })
}

/// A running `nats-server -js`.
pub struct Nats {
    /// The process (stopped when this is dropped).
    pub proc: RelayProc,
    /// `nats://127.0.0.1:PORT`, for `--nats-url`.
    pub url: String,
    /// Its HTTP monitoring endpoint.
    monitor: Target,
    store: PathBuf,
}

/// NATS traffic totals from `/varz`, all clients together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages published to the server.
    pub in_msgs: u64,
    /// Bytes published to the server (payloads).
    pub in_bytes: u64,
    /// Messages the server delivered to subscribers.
    pub out_msgs: u64,
    /// Bytes the server delivered to subscribers.
    pub out_bytes: u64,
}

impl Traffic {
    /// From a `/varz` JSON body; None if a counter is missing.
    pub fn parse(varz: &str) -> Option<Traffic> {
        let v: Value = serde_json::from_str(varz).ok()?;
        let n = |k: &str| v.get(k)?.as_u64();
        Some(Traffic {
            in_msgs: n("in_msgs")?,
            in_bytes: n("in_bytes")?,
            out_msgs: n("out_msgs")?,
            out_bytes: n("out_bytes")?,
        })
    }

    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            in_msgs: self.in_msgs.saturating_sub(earlier.in_msgs),
            in_bytes: self.in_bytes.saturating_sub(earlier.in_bytes),
            out_msgs: self.out_msgs.saturating_sub(earlier.out_msgs),
            out_bytes: self.out_bytes.saturating_sub(earlier.out_bytes),
        }
    }
}

impl Nats {
    /// Starts `bin -js` on free loopback ports (client and monitoring),
    /// pinned to `cpu` if given, its log `log`, its store in a fresh
    /// folder under the system's temporary folder.
    pub fn start(bin: &Path, cpu: Option<usize>, log: PathBuf) -> Result<Nats, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let http = free_port().map_err(|e| format!("no free port: {e}"))?;
        let store =
            std::env::temp_dir().join(format!("loadtest-nats-{}-{port}", std::process::id()));
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &http.to_string(), "-js", "-sd"])
            .arg(&store);
        let url = format!("nats://127.0.0.1:{port}");
        let proc = launch(cmd, "nats-server", port, url.clone(), cpu, log)?;
        let monitor = Target::parse(&format!("ws://127.0.0.1:{http}"))?;
        eprintln!(
            "loadtest: started nats-server -js (pid {}) at {url}",
            proc.pid
        );
        Ok(Nats {
            proc,
            url,
            monitor,
            store,
        })
    }

    /// Its traffic totals so far.
    pub async fn traffic(&self) -> Result<Traffic, String> {
        match http_get(&self.monitor, "/varz").await? {
            (200, body) => {
                Traffic::parse(&body).ok_or_else(|| "/varz without traffic counters".into())
            }
            (status, _) => Err(format!("/varz: HTTP {status}")),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[cfg(test)]
mod tests {
    use super::Traffic;

    #[test]
    fn traffic_comes_from_varz_and_a_missing_counter_is_no_traffic() {
        let a = Traffic::parse(
            r#"{"server_id":"x","in_msgs":10,"out_msgs":25,"in_bytes":1000,"out_bytes":2600}"#,
        )
        .expect("parsed");
        let b = Traffic::parse(
            r#"{"in_msgs":12,"out_msgs":31,"in_bytes":1500,"out_bytes":3800,"mem":1}"#,
        )
        .expect("parsed");
        assert_eq!(
            b.since(&a),
            Traffic {
                in_msgs: 2,
                in_bytes: 500,
                out_msgs: 6,
                out_bytes: 1200
            }
        );
        assert_eq!(
            Traffic::parse(r#"{"in_msgs":1,"out_msgs":1,"in_bytes":1}"#),
            None
        );
        assert_eq!(Traffic::parse("not json"), None);
    }
}
