//! `bulkhead demo`: segmented load balancing on loopback in one command, with
//! no external services — a sample config (two tenants; public, internal and
//! admin zones; an mTLS admin listener; a TCP listener), fresh certificates,
//! backends that say who they are, and the curl commands that show each
//! segmentation rule at work.

use crate::backend::{self, Backend};
use crate::pki::Ca;
use anyhow::{Context, Result};
use bulkhead_core::Snapshot;
use bulkhead_proxy::Proxy;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A running demo: its folder, backends and proxy.
pub struct Demo {
    /// Where the config, certificates and access log live.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The proxy.
    pub proxy: Proxy,
    /// The backends, by name.
    pub backends: Vec<(String, Backend)>,
    _temp: Option<tempfile::TempDir>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The demo's ports.
struct Ports {
    web: u16,
    web_tls: u16,
    ops: u16,
    reports: u16,
}

fn config_text(p: &Ports, b: &[(String, Backend)], access_log: &Path) -> String {
    let t = |name: &str| {
        b.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.addr.to_string())
            .unwrap_or_default()
    };
    format!(
        r#"# Written by `bulkhead demo`. Try: bulkhead graph -c THIS_FILE
version: 1
log:
  access: "{log}"
zones:
  public:   {{ strip_headers: [X-Internal-User] }}
  internal: {{}}
  admin:    {{ trusted: true }}
flows:
  - {{ from: public,   to: [public] }}
  - {{ from: internal, to: [internal, public] }}
  - {{ from: admin,    to: [admin, internal] }}
listeners:
  web:     {{ bind: "127.0.0.1:{web}", zone: public, protocol: http }}
  web-tls:
    bind: "127.0.0.1:{web_tls}"
    zone: public
    protocol: https
    tls:
      certificates:
        - {{ cert: certs/shop.pem, key: certs/shop.key }}
        - {{ cert: certs/blog.pem, key: certs/blog.key }}
  ops:
    bind: "127.0.0.1:{ops}"
    zone: admin
    protocol: https
    allow_sources: ["127.0.0.0/8"]
    tls:
      certificates: [{{ cert: certs/ops.pem, key: certs/ops.key }}]
      client_auth: {{ ca: certs/ca.pem, required: true }}
  reports: {{ bind: "127.0.0.1:{reports}", zone: internal, protocol: tcp, forward: shop/reports }}
tenants:
  shop:
    hosts: [shop.test, "*.shop.test"]
    listeners: [web, web-tls, ops]
    target_groups:
      storefront:
        zone: public
        targets: ["{s1}", "{s2}"]
        health: {{ path: /healthz, interval: 2s, timeout: 1s, healthy: 1, unhealthy: 2 }}
      admin-panel: {{ zone: admin, targets: ["{admin}"], identity_header: X-Client-Identity }}
      reports:     {{ zone: internal, targets: ["{reports_b}"] }}
    routes:
      - {{ name: admin, match: {{ path_prefix: /admin/ }}, forward: admin-panel, profile: admin-strict }}
      - {{ name: robots, match: {{ path_exact: /robots.txt }}, respond: {{ status: 200, body: "User-agent: *\nDisallow: /admin/\n", content_type: text/plain }} }}
      - {{ name: site, match: {{ path_prefix: / }}, forward: storefront }}
  blog:
    hosts: [blog.test]
    listeners: [web, web-tls]
    target_groups:
      app: {{ zone: public, targets: ["{blog}"] }}
    routes:
      - {{ name: site, match: {{ path_prefix: / }}, forward: app }}
invariants:
  - never: {{ from: public, to: admin }}
  - never: {{ from: public, to: internal }}
  - tenants_isolated: true
  - require: {{ zone: admin, auth: mtls }}
"#,
        log = access_log.display(),
        web = p.web,
        web_tls = p.web_tls,
        ops = p.ops,
        reports = p.reports,
        s1 = t("storefront-1"),
        s2 = t("storefront-2"),
        admin = t("admin-panel"),
        reports_b = t("reports"),
        blog = t("blog"),
    )
}

impl Demo {
    /// Set everything up in `dir` (a fresh temporary folder when `None`) and start.
    pub async fn start(dir: Option<PathBuf>) -> Result<Demo> {
        let (dir, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("bulkhead-demo-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)?;
        let ca = Ca::new("bulkhead demo CA")?;
        write(&certs.join("ca.pem"), &ca.cert_pem())?;
        for (name, hosts) in [
            ("shop", &["shop.test", "*.shop.test"][..]),
            ("blog", &["blog.test"][..]),
            ("ops", &["ops.shop.test"][..]),
        ] {
            let pem = ca.server(hosts)?;
            write(&certs.join(format!("{name}.pem")), &pem.cert)?;
            write(&certs.join(format!("{name}.key")), &pem.key)?;
        }
        let operator = ca.client("operator", Some("spiffe://demo.test/operator"), &[])?;
        write(&certs.join("operator.pem"), &operator.cert)?;
        write(&certs.join("operator.key"), &operator.key)?;

        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut backends = Vec::new();
        for name in [
            "storefront-1",
            "storefront-2",
            "admin-panel",
            "reports",
            "blog",
        ] {
            backends.push((name.to_string(), backend::start(name, any).await?));
        }
        let ports = Ports {
            web: free_port()?,
            web_tls: free_port()?,
            ops: free_port()?,
            reports: free_port()?,
        };
        let config = dir.join("bulkhead.yaml");
        write(
            &config,
            &config_text(&ports, &backends, &dir.join("access.log")),
        )?;
        let snapshot = Snapshot::load(&config)
            .map_err(|e| anyhow::anyhow!("the demo config does not load:\n{e}"))?;
        let proxy = Proxy::start(Arc::new(snapshot)).await?;
        Ok(Demo {
            dir,
            config,
            proxy,
            backends,
            _temp: temp,
        })
    }

    /// The copy-paste walkthrough.
    pub fn instructions(&self) -> String {
        let port = |name: &str| self.proxy.addr(name).map_or(0, |a| a.port());
        let (web, tls, ops, reports) = (port("web"), port("web-tls"), port("ops"), port("reports"));
        let certs = self.dir.join("certs");
        let c = certs.display();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bulkhead demo: segmented load balancing on 127.0.0.1\n"
        );
        let _ = writeln!(out, "  config      {}", self.config.display());
        let _ = writeln!(
            out,
            "  access log  tail -f {}",
            self.dir.join("access.log").display()
        );
        let _ = writeln!(
            out,
            "  prove it    bulkhead graph -c {}\n",
            self.config.display()
        );
        let _ = writeln!(out, "Try these in another terminal:\n");
        let steps = [
            ("forwarded to the shop's storefront (two targets, round robin)", format!("curl -s -H 'Host: shop.test' http://127.0.0.1:{web}/products/42")),
            ("403: the public listener may not reach the admin zone", format!("curl -si -H 'Host: shop.test' http://127.0.0.1:{web}/admin/users")),
            ("...however the path is spelled (400 or 403, never the admin panel)", format!("curl -si -H 'Host: shop.test' --path-as-is 'http://127.0.0.1:{web}/products/%2e%2e/admin/users'")),
            ("421: TLS says blog.test, Host says shop.test", format!("curl -si --cacert {c}/ca.pem --resolve blog.test:{tls}:127.0.0.1 -H 'Host: shop.test' https://blog.test:{tls}/")),
            ("404: no tenant owns this host", format!("curl -si -H 'Host: nobody.test' http://127.0.0.1:{web}/")),
            ("the admin panel, over mTLS on the ops listener", format!("curl -s --cacert {c}/ca.pem --cert {c}/operator.pem --key {c}/operator.key --resolve ops.shop.test:{ops}:127.0.0.1 https://ops.shop.test:{ops}/admin/users")),
            ("...and without a client certificate the handshake is refused", format!("curl -s --cacert {c}/ca.pem --resolve ops.shop.test:{ops}:127.0.0.1 https://ops.shop.test:{ops}/admin/users")),
            ("raw TCP from the internal zone, spliced to the reports service", format!("curl -s http://127.0.0.1:{reports}/daily")),
        ];
        for (i, (what, cmd)) in steps.iter().enumerate() {
            let _ = writeln!(out, "  # {}. {what}\n  {cmd}\n", i + 1);
        }
        let _ = writeln!(out, "Press Ctrl-C to stop.");
        out
    }
}

/// Run `bulkhead demo`.
pub async fn run(dir: Option<PathBuf>) -> Result<()> {
    let demo = Demo::start(dir).await?;
    println!("{}", demo.instructions());
    crate::run::wait_for_stop().await?;
    let drained = demo.proxy.shutdown(std::time::Duration::from_secs(5)).await;
    let logger = demo.proxy.logger().clone();
    let _ =
        tokio::task::spawn_blocking(move || logger.flush(std::time::Duration::from_secs(5))).await;
    println!(
        "stopped{}",
        if drained {
            ""
        } else {
            " (some connections were cut at the drain timeout)"
        }
    );
    Ok(())
}
