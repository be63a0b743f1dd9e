//! nginx as a receiver that is not ours: a process from the system's package, listening on
//! 127.0.0.1 ports, answering every webhook `200` at once and logging its arrival time
//! (`$msec`), path and `webhook-id` header, from which the bench reads back what arrived when —
//! the same (event, endpoint) identification as the bench's own receivers (`/e/<endpoint>`,
//! the event id in `webhook-id`). Killed when dropped, a failed run included.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::system::{ProcessUsage, free_port, read_usage};
use crate::workload;

/// One (event, endpoint) as a receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Times it was answered 2xx (more than one: a duplicate).
    pub count: u32,
    /// When it first arrived, Unix microseconds (millisecond precision).
    pub first_unix_us: u64,
}

/// The nginx binary: on PATH, else where Debian puts it (`/usr/sbin` is not on every PATH).
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "no nginx on PATH (nor /usr/sbin/nginx); `make bench-deps` installs it \
                 (apt-get install -y nginx)"
            )
        })
}

/// The configuration of one run: one process (no master, no daemon), so that killing the child
/// stops all of nginx; every file under `dir`, so nothing of the system's nginx is touched.
fn config(dir: &Path, ports: &[u16]) -> String {
    let dir = dir.display();
    let listens: String = ports
        .iter()
        .map(|port| format!("        listen 127.0.0.1:{port};\n"))
        .collect();
    format!(
        r#"# Written by dispatch-bench for one run: a receiver that is not ours.
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    log_format arrivals '$msec $uri $http_webhook_id $status';
    access_log {dir}/access.log arrivals;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
{listens}        location / {{
            return 200;
        }}
    }}
}}
"#
    )
}

/// One access-log line: arrival (Unix microseconds), endpoint, event seq, status.
fn parse_line(line: &str) -> Option<(u64, usize, u64, u16)> {
    let mut fields = line.split_ascii_whitespace();
    let (seconds, millis) = fields.next()?.split_once('.')?;
    let arrived_us = seconds.parse::<u64>().ok()? * 1_000_000 + millis.parse::<u64>().ok()? * 1_000;
    let endpoint = fields.next()?.strip_prefix("/e/")?.parse().ok()?;
    let seq = workload::seq_of(fields.next()?)?;
    let status = fields.next()?.parse().ok()?;
    Some((arrived_us, endpoint, seq, status))
}

/// nginx running for one run, and what its access log said so far.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    /// 127.0.0.1 and each port it listens on.
    listeners: Vec<SocketAddr>,
    access_log: PathBuf,
    /// Bytes of the access log read so far, and an incomplete last line.
    read_to: u64,
    partial: Vec<u8>,
    arrivals: HashMap<(u64, usize), Arrival>,
    answered: u64,
}

impl Nginx {
    /// Writes the configuration under `dir`, starts nginx with `listeners` ports and waits
    /// until each accepts connections.
    pub async fn start(listeners: usize, dir: &Path) -> anyhow::Result<Self> {
        let binary = binary()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let wanted = listeners.max(1);
        let mut ports = Vec::with_capacity(wanted);
        for _ in 0..wanted * 10 {
            let port = free_port();
            if ports.len() == wanted {
                break;
            }
            if port != 0 && !ports.contains(&port) {
                ports.push(port);
            }
        }
        anyhow::ensure!(ports.len() == wanted, "no {wanted} free ports on 127.0.0.1");
        let config_file = dir.join("nginx.conf");
        std::fs::write(&config_file, config(dir, &ports))
            .with_context(|| format!("writing {}", config_file.display()))?;
        let output = dir.join("nginx.out");
        let output_file = std::fs::File::create(&output)
            .with_context(|| format!("creating {}", output.display()))?;
        let child = Command::new(&binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config_file)
            // Before it reads the configuration nginx opens its compiled-in error log; this
            // keeps even that under `dir`.
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(output_file.try_clone()?)
            .stderr(output_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx {
            child: Some(child),
            dir: dir.to_owned(),
            listeners: ports
                .iter()
                .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
                .collect(),
            access_log: dir.join("access.log"),
            read_to: 0,
            partial: Vec::new(),
            arrivals: HashMap::new(),
            answered: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut waiting: Vec<u16> = ports;
        while !waiting.is_empty() {
            if let Some(child) = nginx.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "nginx exited with {status} while starting: {}{}",
                    std::fs::read_to_string(&output).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx not listening on 127.0.0.1:{waiting:?} after 10 s; see {}",
                    dir.display()
                );
            }
            let mut still = Vec::new();
            for port in waiting {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    still.push(port);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(nginx)
    }

    /// URL of endpoint `endpoint` (the endpoints spread over the ports as over the fleet's).
    pub fn url(&self, endpoint: usize) -> String {
        workload::endpoint_url(&self.listeners, endpoint)
    }

    /// Every endpoint's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        workload::endpoint_urls(&self.listeners)
    }

    /// Where its configuration and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its CPU seconds and peak RSS now, while it runs.
    pub fn usage(&self) -> Option<ProcessUsage> {
        let reading = read_usage(self.child.as_ref()?.id())?;
        Some(ProcessUsage {
            process: "nginx".to_owned(),
            ..reading
        })
    }

    /// Reads the lines the access log gained since the last call.
    fn read_log(&mut self) -> anyhow::Result<()> {
        let mut file = match std::fs::File::open(&self.access_log) {
            Ok(file) => file,
            // Nothing arrived yet.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error).with_context(|| format!("{}", self.access_log.display()));
            }
        };
        file.seek(SeekFrom::Start(self.read_to))?;
        let mut fresh = std::mem::take(&mut self.partial);
        let start = fresh.len();
        let read = file.read_to_end(&mut fresh)?;
        self.read_to += read as u64;
        let complete = match fresh[start..].iter().rposition(|&b| b == b'\n') {
            Some(at) => start + at + 1,
            None => {
                self.partial = fresh;
                return Ok(());
            }
        };
        self.partial = fresh.split_off(complete);
        for line in String::from_utf8_lossy(&fresh).lines() {
            self.take(line);
        }
        Ok(())
    }

    fn take(&mut self, line: &str) {
        let Some((arrived_us, endpoint, seq, status)) = parse_line(line) else {
            return;
        };
        if !(200..300).contains(&status) {
            // The client gave up or nginx refused it: not delivered.
            return;
        }
        self.answered += 1;
        self.arrivals
            .entry((seq, endpoint))
            .and_modify(|a| {
                a.count += 1;
                a.first_unix_us = a.first_unix_us.min(arrived_us);
            })
            .or_insert(Arrival {
                count: 1,
                first_unix_us: arrived_us,
            });
    }

    /// Webhooks answered 2xx so far, duplicates included (reads the log first).
    pub fn answered(&mut self) -> anyhow::Result<u64> {
        self.read_log()?;
        Ok(self.answered)
    }

    /// Visits every (event seq, endpoint) that arrived so far, with how many times, as of the
    /// last reading of the log.
    pub fn for_each(&self, visit: &mut dyn FnMut(u64, usize, u32)) {
        for (&(seq, endpoint), arrival) in &self.arrivals {
            visit(seq, endpoint, arrival.count);
        }
    }

    /// What arrived of `pairs` (event seq, endpoint), in order (reads the log first).
    pub fn arrivals(&mut self, pairs: &[(u64, usize)]) -> anyhow::Result<Vec<Option<Arrival>>> {
        self.read_log()?;
        Ok(pairs
            .iter()
            .map(|pair| self.arrivals.get(pair).copied())
            .collect())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_gives_arrival_endpoint_event_and_status() {
        assert_eq!(
            parse_line("1795761281.123 /e/17 evt_burst1795761_0000000050 200"),
            Some((1_795_761_281_123_000, 17, 50, 200))
        );
        // No webhook-id header (nginx logs `-`), or a path that is no endpoint.
        assert_eq!(parse_line("1795761281.123 /e/17 - 200"), None);
        assert_eq!(parse_line("1795761281.123 /favicon.ico - 404"), None);
    }

    #[test]
    fn the_configuration_listens_on_loopback_and_logs_what_identifies_a_delivery() {
        let text = config(Path::new("/tmp/x"), &[40001, 40002]);
        assert!(text.contains("listen 127.0.0.1:40001;"), "{text}");
        assert!(text.contains("listen 127.0.0.1:40002;"), "{text}");
        assert!(
            text.contains("'$msec $uri $http_webhook_id $status'"),
            "{text}"
        );
        assert!(
            text.contains("access_log /tmp/x/access.log arrivals;"),
            "{text}"
        );
        assert!(text.contains("return 200;"), "{text}");
        assert!(text.contains("master_process off;"), "{text}");
    }

    #[test]
    fn the_access_log_is_read_incrementally_and_counts_first_arrivals() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("nginx-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("access.log");
        // The second line is still being written.
        std::fs::write(&log, "1000.005 /e/3 evt_r_0000000002 200\n1000.0")?;
        let mut nginx = Nginx {
            child: None,
            dir: dir.clone(),
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            access_log: log.clone(),
            read_to: 0,
            partial: Vec::new(),
            arrivals: HashMap::new(),
            answered: 0,
        };
        assert_eq!(nginx.answered()?, 1);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log)?;
        std::io::Write::write_all(
            &mut file,
            b"07 /e/3 evt_r_0000000002 200\n1000.010 /e/4 evt_r_0000000002 499\n",
        )?;
        let seen = nginx.arrivals(&[(2, 3), (2, 4)])?;
        let first = Arrival {
            count: 2,
            first_unix_us: 1_000_005_000,
        };
        // A 499 (the client gave up) is no delivery.
        assert_eq!(seen, vec![Some(first), None]);
        assert_eq!(nginx.answered()?, 2);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
