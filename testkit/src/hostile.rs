//! Hostile HTTP clients against a server process: thousands of idle
//! connections, slowloris heads, announced huge bodies, oversized heads,
//! unknown methods and paths; with the process's memory, descriptors and a
//! probe's latency measured all along.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::PROMPT;
use crate::http::{get_status, raw_exchange};

/// What a process went through under [`assault`].
#[derive(Clone, Copy, Debug)]
pub struct Assault {
    /// Its resident memory before, KiB.
    pub rss_before: u64,
    /// The most seen during, KiB.
    pub rss_max: u64,
    /// Its open descriptors before.
    pub fds_before: usize,
    /// The most seen during.
    pub fds_max: usize,
    /// The slowest answer of the probe.
    pub probe_max: Duration,
    /// Probes sent, each answered `200`.
    pub probes: usize,
}

impl std::fmt::Display for Assault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {} -> max {} KiB, fds {} -> max {}, {} probes, the slowest {:?}",
            self.rss_before,
            self.rss_max,
            self.fds_before,
            self.fds_max,
            self.probes,
            self.probe_max
        )
    }
}

/// The resident memory in KiB and the open descriptors of process `pid`.
pub fn rss_and_fds(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// Opens `connections` hostile connections to the server of process `pid`
/// at `addr` and keeps them open, then sends 300 oversized heads and
/// unknown methods and paths, probing `probe` (which must answer 200) every
/// hundred connections and every thirty requests. Raises this process's
/// descriptor limit for the client ends.
pub async fn assault(pid: i32, addr: SocketAddr, probe: &str, connections: usize) -> Assault {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard);
    }
    let (rss_before, fds_before) = rss_and_fds(pid);
    let mut seen = Assault {
        rss_before,
        rss_max: rss_before,
        fds_before,
        fds_max: fds_before,
        probe_max: Duration::ZERO,
        probes: 0,
    };
    let check = async |seen: &mut Assault| {
        let started = Instant::now();
        let status = get_status(addr, probe, PROMPT).await;
        assert_eq!(status, Some(200), "{probe} during the assault");
        let (rss, fds) = rss_and_fds(pid);
        seen.rss_max = seen.rss_max.max(rss);
        seen.fds_max = seen.fds_max.max(fds);
        seen.probe_max = seen.probe_max.max(started.elapsed());
        seen.probes += 1;
    };
    let mut held = Vec::new();
    for i in 0..connections {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        let opening: &[u8] = match i % 3 {
            0 => b"",
            1 => b"GET / HTTP/1.1\r\nX-Slow: ",
            _ => b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n",
        };
        // The server may already have closed an old one of them.
        let _ = stream.write_all(opening).await;
        held.push(stream);
        if i % 100 == 99 {
            check(&mut seen).await;
        }
    }
    for i in 0..300 {
        let request = match i % 3 {
            0 => format!(
                "GET {probe} HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
            1 => "BREW /drain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(),
            _ => "GET /../drain?now=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(),
        };
        let answer = raw_exchange(addr, request.as_bytes()).await;
        assert!(
            !answer.starts_with("HTTP/1.1 2"),
            "{request:.40} got {answer:.80}"
        );
        if i % 30 == 29 {
            check(&mut seen).await;
        }
    }
    seen
}
