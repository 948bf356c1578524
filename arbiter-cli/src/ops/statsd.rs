//! statsd: the same figures as the Prometheus endpoint, pushed over UDP as gunicorn's
//! `--statsd-host` does. Counters are sent as they happen; gauges only when they change.
//! Non-blocking: a full socket buffer or an absent daemon loses a datagram, never stalls the
//! master's loop.

use std::collections::HashMap;
use std::io;
use std::net::{ToSocketAddrs, UdpSocket};

/// A connected, non-blocking UDP socket to the statsd daemon.
pub struct Statsd {
    socket: UdpSocket,
    prefix: String,
    gauges: HashMap<String, i64>,
}

impl Statsd {
    /// Resolves `host` (`HOST:PORT`) and connects; `prefix` starts every metric name.
    pub fn connect(host: &str, prefix: &str) -> io::Result<Statsd> {
        let addr = host.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )
        })?;
        let local = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Statsd {
            socket,
            prefix: prefix.trim_end_matches('.').to_owned(),
            gauges: HashMap::new(),
        })
    }

    /// `PREFIX.NAME:N|c`.
    pub fn count(&self, name: &str, n: u64) {
        self.send(&format!("{}.{name}:{n}|c", self.prefix));
    }

    /// `PREFIX.NAME:V|g`, only when the value differs from the last one sent.
    pub fn gauge(&mut self, name: &str, value: i64) {
        if self.gauges.insert(name.to_owned(), value) != Some(value) {
            self.send(&format!("{}.{name}:{value}|g", self.prefix));
        }
    }

    fn send(&self, line: &str) {
        // Lost datagrams are statsd's contract; errors (no daemon: ECONNREFUSED) are ignored.
        let _ = self.socket.send(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sends_counters_and_changed_gauges_with_the_prefix() {
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut statsd =
            Statsd::connect(&daemon.local_addr().unwrap().to_string(), "app.").unwrap();
        statsd.count("spawns", 1);
        statsd.gauge("workers.live", 3);
        statsd.gauge("workers.live", 3);
        statsd.gauge("workers.live", 2);
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            let n = daemon.recv(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            seen,
            [
                "app.spawns:1|c",
                "app.workers.live:3|g",
                "app.workers.live:2|g"
            ]
        );
        daemon
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            daemon.recv(&mut buf).is_err(),
            "an unchanged gauge is not sent again"
        );
    }

    #[test]
    fn an_absent_daemon_never_blocks_or_fails() {
        let free = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let statsd = Statsd::connect(&free.to_string(), "arbiter").unwrap();
        for _ in 0..1000 {
            statsd.count("spawns", 1);
        }
    }
}
