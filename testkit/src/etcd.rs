//! Real etcd (Debian's `etcd-server`) on loopback, for the etcd watermark store's tests: one
//! member, or three forming a cluster.
//!
//! Every member binds port 0 for its client and peer listeners and is reached only through
//! fault proxies of ours, which bind port 0 first: their addresses are what members advertise
//! (`--initial-cluster`, `--advertise-client-urls`) and what gateways are given, so nothing
//! races for a port, a restarted member (new ports) keeps its addresses, and a test can freeze
//! a member's client or peer traffic the way a dead link does ([`EtcdMember::client_proxy`],
//! [`EtcdMember::peer_proxy`]). Members run with short heartbeats (50 ms) and election
//! timeouts (500 ms) so a killed leader is replaced within about a second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::fault_proxy::FaultProxy;
use crate::harness::{Lines, Proc, Run, Stderr};

/// Time for a member to bind its listeners, and for a cluster to elect a leader and serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The members' raft heartbeat and election timeout.
const HEARTBEAT_MS: u32 = 50;
const ELECTION_MS: u32 = 500;

/// `etcd`: `$ETCD_BIN`, else on `PATH`; the error says what to install.
pub fn etcd_bin() -> anyhow::Result<PathBuf> {
    tool("ETCD_BIN", "etcd", "etcd-server")
}

/// `etcdctl`: `$ETCDCTL_BIN`, else on `PATH`.
pub fn etcdctl_bin() -> anyhow::Result<PathBuf> {
    tool("ETCDCTL_BIN", "etcdctl", "etcd-client")
}

fn tool(var: &str, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{name}` not found (Debian: apt-get install {package}; scripts/install-deps.sh does)")
        })
}

/// TLS files for a member's client port ([`make_tls`]): a CA, the server's certificate for
/// 127.0.0.1 and a client certificate, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA both certificates chain to.
    pub ca: PathBuf,
    /// The member's certificate (IP SAN 127.0.0.1) and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate (CN `signer-gateway`) and key.
    pub client: (PathBuf, PathBuf),
}

/// Make a CA, a server certificate for 127.0.0.1 and a client certificate in `dir` with the
/// `openssl` command (Debian `openssl`).
pub fn make_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    let openssl = tool("OPENSSL_BIN", "openssl", "openssl")?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(&openssl).current_dir(dir).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    std::fs::create_dir_all(dir)?;
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    let client_ext = dir.join("client.ext");
    std::fs::write(&client_ext, "extendedKeyUsage=clientAuth\n")?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test etcd CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ])?;
    for (name, cn, ext) in [
        ("server", "127.0.0.1", "server.ext"),
        ("client", "signer-gateway", "client.ext"),
    ] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.crt"),
        ])?;
    }
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        server: (dir.join("server.crt"), dir.join("server.key")),
        client: (dir.join("client.crt"), dir.join("client.key")),
    })
}

/// One etcd process and the proxies in front of it.
pub struct EtcdMember {
    /// `m0`, `m1`…
    pub name: String,
    /// Clients (gateways, etcdctl) reach the member here.
    pub client_proxy: FaultProxy,
    /// Other members reach this one's peer port here.
    pub peer_proxy: FaultProxy,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    /// Client port on TLS with client certificates required, when set.
    tls: Option<TlsFiles>,
    proc: Run,
}

/// Members started together: `--initial-cluster` names all of them.
pub struct EtcdCluster {
    /// In start order.
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Start `n` members with their data under `dir` and wait until every one serves.
    pub async fn start(dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        EtcdCluster::start_with(dir, n, None).await
    }

    /// The same, every member's client port on TLS (`https://`, client certificates required).
    pub async fn start_with(dir: &Path, n: usize, tls: Option<TlsFiles>) -> anyhow::Result<EtcdCluster> {
        etcd_bin()?;
        let mut members = Vec::with_capacity(n);
        // Placeholder targets: nothing listens there yet; connections are refused until
        // each member's real ports are known.
        let nowhere: SocketAddr = ([127, 0, 0, 1], 9).into();
        for i in 0..n {
            let name = format!("m{i}");
            members.push(EtcdMember {
                data_dir: dir.join(format!("etcd-{name}")),
                log: dir.join(format!("etcd-{name}.log")),
                name,
                client_proxy: FaultProxy::start(nowhere).await?,
                peer_proxy: FaultProxy::start(nowhere).await?,
                initial_cluster: String::new(),
                tls: tls.clone(),
                proc: Run::new("etcd member"),
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer_proxy.addr()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial_cluster.clone();
            m.spawn("new")?;
        }
        for m in &mut members {
            m.wait_peer_port().await?;
        }
        for m in &mut members {
            m.wait_client_port().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// Client URLs of every member (through their client proxies), for `watermark.etcd`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// SIGKILL every member: etcd down entirely.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Start every member again on its data and wait until all serve (none can alone: a
    /// member serves only once a majority is back).
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            m.kill();
            m.spawn("existing")?;
        }
        for m in &mut self.members {
            m.wait_peer_port().await?;
        }
        for m in &mut self.members {
            m.wait_client_port().await?;
        }
        Ok(())
    }

    /// Index of the member that leads now, asked of each running member in turn.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for m in self.members.iter().filter(|m| m.proc.get().is_some()) {
            let Ok(status) = m.status().await else { continue };
            let leader = status["Status"]["leader"].as_u64();
            for (i, other) in self.members.iter().enumerate() {
                if other.proc.get().is_some()
                    && other
                        .status()
                        .await
                        .is_ok_and(|s| s["Status"]["header"]["member_id"].as_u64() == leader)
                {
                    return Ok(i);
                }
            }
        }
        anyhow::bail!("no member reports a running leader")
    }
}

impl EtcdMember {
    /// `http://<client proxy>` (`https://` on TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_proxy.addr())
    }

    /// Whether its process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self, state: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(etcd_bin()?);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:0")])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", self.peer_proxy.addr()),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "signer-gateway-tests"])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.proc.set(Proc::start(
            &format!("etcd {}", self.name),
            cmd,
            Stderr::Capture(Lines::default(), Some(log)),
        )?);
        Ok(())
    }

    /// Wait for a `… <needle><addr>` line in its log that also says `also`; returns the address.
    async fn wait_addr(&mut self, needle: &str, also: &str) -> anyhow::Result<SocketAddr> {
        let proc = self.proc.running()?;
        let found = proc
            .stderr
            .wait(None, START_TIMEOUT, |l| l.contains(needle) && l.contains(also))
            .await
            .map(|(_, line)| line);
        let line = match found {
            Some(line) => line,
            None => anyhow::bail!(
                "etcd {} printed no {needle:?} within {START_TIMEOUT:?}; log tail:\n{}",
                self.name,
                proc.stderr.tail(30).join("\n")
            ),
        };
        let addr = line
            .rsplit(needle)
            .next()
            .and_then(|rest| rest.split([' ', ',']).next())
            .with_context(|| format!("no address in {line:?}"))?;
        addr.parse()
            .with_context(|| format!("bad address {addr:?} in {line:?}"))
    }

    async fn wait_peer_port(&mut self) -> anyhow::Result<()> {
        let addr = self.wait_addr("listening for peers on ", "").await?;
        self.peer_proxy.retarget(addr);
        Ok(())
    }

    async fn wait_client_port(&mut self) -> anyhow::Result<()> {
        // "serving insecure client requests on …", or "serving client requests on …" (TLS); not
        // the earlier "listening for client requests on 127.0.0.1:0".
        let addr = self.wait_addr("client requests on ", "serving").await?;
        self.client_proxy.retarget(addr);
        Ok(())
    }

    /// SIGSTOP: the member freezes with its connections open, as behind a dead link (nothing
    /// answers, nothing is refused). [`EtcdMember::thaw`] resumes it.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.proc.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`EtcdMember::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.proc.signal(libc::SIGCONT)
    }

    /// SIGKILL: a crash or a power cut.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start it again on its data (after [`EtcdMember::kill`]) and wait until it serves (a
    /// majority of the cluster must be up for that).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn("existing")?;
        self.wait_peer_port().await?;
        self.wait_client_port().await
    }

    /// `etcdctl endpoint status` of this member, as JSON (one object).
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]).await?;
        let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("etcdctl said {out:?}"))?;
        v.get(0).cloned().with_context(|| format!("etcdctl said {out:?}"))
    }

    /// Run etcdctl against this member (5 s bound); its stdout.
    pub async fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(etcdctl_bin()?);
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(["--command-timeout", "2s", "--dial-timeout", "2s"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cacert={}", t.ca.display()),
                    format!("--cert={}", t.client.0.display()),
                    format!("--key={}", t.client.1.display()),
                ]
            }))
            .args(args)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
            .await
            .context("etcdctl took over 5 s")??;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
