//! The pod's life, rehearsed without a cluster (issue 14): the built `arbiter` run with the
//! arguments of the Deployment in `deploy/kubernetes/app.yaml` (read from the manifest; the
//! binds moved to loopback ports, the worker command left out so the built-in worker serves),
//! driven through what the kubelet and the endpoints controller do, under load:
//!
//! - a "kubelet" thread per pod probes `/healthz` (liveness) and `/readyz` (readiness) every
//!   second; the pod joins the "endpoints" once a probe says ready;
//! - a load client (several threads, a new TCP connection per request, as kube-proxy balances
//!   per connection) sends requests only to the current endpoints, round robin, and counts every
//!   failure: a refused or failed connect, a reset, a non-200, a truncated response;
//! - on deletion the kubelet sends TERM; the endpoint removal reaches the client after a
//!   propagation delay ([`PROPAGATION`], well inside the drain); the kubelet sends KILL at
//!   `terminationGracePeriodSeconds` if the master still runs (asserted not to happen).
//!
//! The manifest's numbers are used as they are (a 5 s drain, a 35 s grace period): the drain is
//! what the test waits through, the grace period only bounds it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arbiter_tests::{get, wait_until, Fixture, Master, SOON};

/// The kubelet's probe period (the manifest's readiness probe runs every 2 s; every second is
/// stricter).
const PERIOD: Duration = Duration::from_secs(1);
/// How long the endpoint removal takes to reach the load client after the TERM.
const PROPAGATION: Duration = Duration::from_millis(500);
/// Load threads.
const CLIENTS: usize = 4;
/// Requests a pod must have served before the next step of a scenario.
const SOME: u64 = 50;

/// What the Deployment in `deploy/kubernetes/app.yaml` says about its pods.
struct Deployment {
    /// arbiter's arguments: the container's `args` up to `--`, binds on loopback.
    args: Vec<String>,
    /// `--shutdown-delay`.
    drain: Duration,
    /// `--graceful-timeout`.
    graceful: Duration,
    /// `terminationGracePeriodSeconds`.
    grace: Duration,
}

fn seconds(value: &str) -> Duration {
    let n = value
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{value:?}: expected whole seconds like 5s"));
    Duration::from_secs(n)
}

/// Reads the first Deployment of the app manifest (line by line: the manifest keeps its
/// `args` one per line, and `cargo xtask deploy` validates it against the schemas).
fn deployment() -> Deployment {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/app.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let document = text
        .split("\n---")
        .find(|d| d.lines().any(|l| l.trim() == "kind: Deployment"))
        .unwrap_or_else(|| panic!("no Deployment in {path}"));
    let lines: Vec<&str> = document.lines().map(str::trim).collect();
    let grace = lines
        .iter()
        .find_map(|l| l.strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or_else(|| panic!("no terminationGracePeriodSeconds in {path}"));
    let start = lines
        .iter()
        .position(|l| *l == "args:")
        .unwrap_or_else(|| panic!("no args in {path}"));
    let container: Vec<String> = lines[start + 1..]
        .iter()
        .map_while(|l| l.strip_prefix("- "))
        .map(|a| a.trim().trim_matches('"').to_string())
        .collect();
    let mut args = Vec::new();
    let mut rest = container.iter().take_while(|a| *a != "--");
    let (mut drain, mut graceful) = (None, None);
    while let Some(arg) = rest.next() {
        args.push(arg.clone());
        let value = match arg.as_str() {
            "--bind" | "-b" | "--metrics-bind" => {
                rest.next();
                "127.0.0.1:0".to_string()
            }
            "--shutdown-delay" | "--graceful-timeout" => {
                let value = rest.next().expect("a value").clone();
                let parsed = Some(seconds(&value));
                if arg == "--shutdown-delay" {
                    drain = parsed;
                } else {
                    graceful = parsed;
                }
                value
            }
            _ => continue,
        };
        args.push(value);
    }
    let drain = drain.unwrap_or_else(|| panic!("no --shutdown-delay in {path}: {container:?}"));
    let graceful = graceful.unwrap_or_else(|| panic!("no --graceful-timeout in {path}"));
    assert!(
        args.iter().any(|a| a == "--metrics-bind"),
        "no --metrics-bind in {path}: the probes need it"
    );
    assert!(
        grace > drain + graceful,
        "{path}: the grace period {grace:?} does not cover the drain {drain:?} + {graceful:?}"
    );
    assert!(
        PROPAGATION < drain,
        "the propagation delay must fit in the drain"
    );
    Deployment {
        args,
        drain,
        graceful,
        grace,
    }
}

/// One kubelet probe round.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// When the round started.
    at: Instant,
    /// When it ended.
    done: Instant,
    /// Whether the TERM had been sent before it started.
    after_term: bool,
    readyz: Option<u16>,
    healthz: Option<u16>,
}

/// What the kubelet thread shares with the test.
#[derive(Default)]
struct KubeletState {
    probes: Mutex<Vec<Probe>>,
    ready: AtomicBool,
    delete: AtomicBool,
    term: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

/// A pod: the master, its ports and its kubelet.
struct Pod {
    name: &'static str,
    master: Master,
    port: u16,
    kubelet: Arc<KubeletState>,
    thread: Option<JoinHandle<()>>,
}

fn metrics_port(master: &mut Master) -> u16 {
    let log = master
        .wait_log("Metrics at: http://127.0.0.1:", SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    let rest = log.split("Metrics at: http://127.0.0.1:").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

impl Pod {
    /// Starts the pod's master and its kubelet.
    fn start(fx: &Fixture, name: &'static str, deployment: &Deployment) -> Pod {
        let args: Vec<&str> = deployment.args.iter().map(String::as_str).collect();
        let mut master = fx.start(name, &args);
        let port = master.port();
        let probes = metrics_port(&mut master);
        let kubelet = Arc::new(KubeletState::default());
        let state = kubelet.clone();
        let pid = master.pid();
        let thread = std::thread::spawn(move || kubelet_loop(pid, probes, &state));
        Pod {
            name,
            master,
            port,
            kubelet,
            thread: Some(thread),
        }
    }

    /// Waits until the kubelet has seen `/readyz` 200.
    fn wait_ready(&mut self) {
        let ready = wait_until(SOON, || self.kubelet.ready.load(Ordering::Relaxed));
        assert!(ready, "{} never ready\n{}", self.name, self.master.stderr());
        self.master.track_tree();
    }

    /// Asks the kubelet to delete the pod; returns when the TERM was sent.
    fn delete(&mut self) -> Instant {
        self.master.track_tree();
        self.kubelet.delete.store(true, Ordering::Relaxed);
        let mut term = None;
        let sent = wait_until(SOON, || {
            term = *self.kubelet.term.lock().unwrap();
            term.is_some()
        });
        assert!(sent, "the kubelet never sent TERM");
        term.unwrap()
    }

    /// Waits for the exit up to the grace period after `term`; KILL (and a failure) past it.
    fn wait_stopped(&mut self, term: Instant, grace: Duration) -> (i32, Duration) {
        let left = grace.saturating_sub(term.elapsed());
        let status = self.master.wait_exit(left);
        let took = term.elapsed();
        let Some(status) = status else {
            let _ = arbiter_tests::signal(self.master.pid(), libc::SIGKILL);
            panic!(
                "{}: the kubelet's KILL was needed at the grace period {grace:?}\n{}",
                self.name,
                self.master.stderr()
            );
        };
        let code = status.code().unwrap_or_else(|| {
            panic!("{} died of {status:?}\n{}", self.name, self.master.stderr())
        });
        (code, took)
    }

    /// Stops the kubelet and returns every probe it made.
    fn probes(&mut self) -> Vec<Probe> {
        self.kubelet.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("kubelet thread");
        }
        self.kubelet.probes.lock().unwrap().clone()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kubelet.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status(port: u16, path: &str) -> Option<u16> {
    get(port, path).ok().map(|r| r.status)
}

/// Probes every [`PERIOD`]; on deletion sends TERM half a period after a round, so no round
/// straddles the signal.
fn kubelet_loop(pid: i32, port: u16, state: &KubeletState) {
    let mut next = Instant::now();
    while !state.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(10)));
            continue;
        }
        next += PERIOD;
        let term = *state.term.lock().unwrap();
        let at = Instant::now();
        let readyz = status(port, "/readyz");
        let healthz = status(port, "/healthz");
        if term.is_none() && readyz == Some(200) {
            state.ready.store(true, Ordering::Relaxed);
        }
        state.probes.lock().unwrap().push(Probe {
            at,
            done: Instant::now(),
            after_term: term.is_some(),
            readyz,
            healthz,
        });
        if term.is_none() && state.delete.load(Ordering::Relaxed) {
            let half = at + PERIOD / 2;
            while Instant::now() < half {
                std::thread::sleep(Duration::from_millis(5));
            }
            // The master is the test's unreaped child: the pid is still its own.
            arbiter_tests::signal(pid, libc::SIGTERM).expect("TERM to the master");
            *state.term.lock().unwrap() = Some(Instant::now());
        }
    }
}

/// The Service's endpoints as the load client sees them: ports on 127.0.0.1.
type Endpoints = Arc<Mutex<Vec<u16>>>;

/// Counts per endpoint, shared by the load threads.
#[derive(Default)]
struct Tally {
    /// Requests answered 200, per port.
    served: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// A few failures in full (the count is `failed`).
    failures: Mutex<Vec<String>>,
    failed: AtomicU64,
    /// The last request start per port.
    last: Mutex<std::collections::BTreeMap<u16, Instant>>,
    /// Every request's port and start: see [`Tally::after`].
    started: Mutex<Vec<(u16, Instant)>>,
}

impl Tally {
    fn served(&self, port: u16) -> u64 {
        self.served.lock().unwrap().get(&port).copied().unwrap_or(0)
    }

    /// Requests to `port` started after `at`.
    fn after(&self, port: u16, at: Instant) -> usize {
        self.started
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, t)| *p == port && *t >= at)
            .count()
    }
}

/// The load client: [`CLIENTS`] threads, round robin over the endpoints.
struct LoadClient {
    endpoints: Endpoints,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
    started: Instant,
}

impl LoadClient {
    fn start(limit: Duration) -> LoadClient {
        let endpoints: Endpoints = Arc::default();
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..CLIENTS)
            .map(|i| {
                let (endpoints, tally, stop) = (endpoints.clone(), tally.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut turn = i;
                    let mut empty = 0;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        let pick = {
                            let list = endpoints.lock().unwrap();
                            turn += 1;
                            (!list.is_empty()).then(|| list[turn % list.len()])
                        };
                        let Some(port) = pick else {
                            // No endpoint: a client of a Service with no ready pod waits.
                            empty += 1;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        let at = Instant::now();
                        tally.started.lock().unwrap().push((port, at));
                        tally.last.lock().unwrap().insert(port, at);
                        match one_request(port) {
                            Ok(()) => *tally.served.lock().unwrap().entry(port).or_default() += 1,
                            Err(e) => {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                let mut failures = tally.failures.lock().unwrap();
                                if failures.len() < 10 {
                                    failures.push(format!("port {port}: {e}"));
                                }
                            }
                        }
                    }
                    empty
                })
            })
            .collect();
        LoadClient {
            endpoints,
            tally,
            stop,
            threads,
            started,
        }
    }

    fn add(&self, port: u16) {
        self.endpoints.lock().unwrap().push(port);
    }

    fn remove(&self, port: u16) {
        self.endpoints.lock().unwrap().retain(|p| *p != port);
    }

    /// Waits until `port` served `n` more requests than `from`.
    fn wait_served(&self, port: u16, n: u64, pod: &Pod) {
        let from = self.tally.served(port);
        let ok = wait_until(SOON, || self.tally.served(port) >= from + n);
        assert!(
            ok,
            "{} served {} requests, waiting for {n} more; failures {:?}\n{}",
            pod.name,
            self.tally.served(port) - from,
            self.tally.failures.lock().unwrap(),
            pod.master.stderr()
        );
    }

    /// Stops the threads; returns (requests, failures, failure samples, ran).
    fn finish(mut self) -> (u64, u64, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("load thread");
        }
        let served: u64 = self.tally.served.lock().unwrap().values().sum();
        let failed = self.tally.failed.load(Ordering::Relaxed);
        let samples = self.tally.failures.lock().unwrap().clone();
        (served + failed, failed, samples, self.started.elapsed())
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `GET /` on a fresh connection with `Connection: close`: a complete 200 or why not.
fn one_request(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read after {} bytes: {e}", raw.len()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("truncated head: {text:?}"))?;
    let code = head.split_whitespace().nth(1);
    if code != Some("200") {
        return Err(format!("status {code:?}: {head:?}"));
    }
    let length: Option<usize> = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    match length {
        Some(n) if n == body.len() => Ok(()),
        other => Err(format!(
            "truncated: content-length {other:?}, body {} bytes",
            body.len()
        )),
    }
}

/// Asserts what the kubelet saw around the TERM at `term`: every round after it says not
/// ready; liveness says 200 through the drain and, once the probe port closes, nothing. A round
/// that ended before `term + drain` lies inside the drain for sure (the master starts the
/// drain's clock when it handles the TERM, after it was sent); a later one may meet the exit.
fn assert_probes(name: &str, probes: &[Probe], term: Instant, drain: Duration, log: &str) {
    let before: Vec<&Probe> = probes.iter().filter(|p| !p.after_term).collect();
    let after: Vec<&Probe> = probes.iter().filter(|p| p.after_term).collect();
    assert!(
        before.iter().any(|p| p.readyz == Some(200)),
        "{name}: never ready before the TERM: {before:?}"
    );
    let draining: Vec<&&Probe> = after.iter().filter(|p| p.done < term + drain).collect();
    assert!(
        !draining.is_empty(),
        "{name}: no probe during the drain: {after:?}"
    );
    for probe in &draining {
        assert_eq!(
            (probe.readyz, probe.healthz),
            (Some(503), Some(200)),
            "{name}: probe {:?} after the TERM, during the drain\n{log}",
            probe.at - term
        );
    }
    let mut closed = false;
    for probe in &after {
        assert!(
            matches!(probe.readyz, Some(503) | None),
            "{name}: /readyz {:?} at {:?} after the TERM\n{log}",
            probe.readyz,
            probe.at - term
        );
        match probe.healthz {
            Some(200) if !closed => {}
            None => closed = true,
            other => panic!(
                "{name}: /healthz {other:?} at {:?} after the TERM (closed before: {closed})\n{log}",
                probe.at - term
            ),
        }
    }
}

/// Deletes `pod` under the client's load as Kubernetes does: TERM, the endpoint removed after
/// [`PROPAGATION`], KILL at the grace period. Asserts the probes and the exit; returns (drain
/// requests served after the TERM, time from TERM to exit).
fn delete_pod(pod: &mut Pod, load: &LoadClient, deployment: &Deployment) -> (usize, Duration) {
    let term = pod.delete();
    // The endpoints controller's removal reaches the client PROPAGATION after the TERM: a
    // modelled delay, not a wait for a state.
    while term.elapsed() < PROPAGATION {
        std::thread::sleep(Duration::from_millis(5));
    }
    load.remove(pod.port);
    let removed = Instant::now();
    let (code, took) = pod.wait_stopped(term, deployment.grace);
    let log = pod.master.stderr();
    assert_eq!(code, 0, "{}: exit code\n{log}", pod.name);
    assert!(
        took >= deployment.drain,
        "{}: exited {took:?} after the TERM, before the drain {:?} was over\n{log}",
        pod.name,
        deployment.drain
    );
    assert!(log.contains("Drain over"), "{log}");
    let probes = pod.probes();
    assert_probes(pod.name, &probes, term, deployment.drain, &log);
    pod.master.assert_no_process_left();
    let while_draining = load.tally.after(pod.port, term);
    assert!(
        while_draining > 0,
        "{}: no request reached it between the TERM and the endpoint removal",
        pod.name
    );
    let last = load.tally.last.lock().unwrap().get(&pod.port).copied();
    let last = last.map(|t| t.saturating_duration_since(term));
    eprintln!(
        "[pod] {}: TERM -> endpoint removed {:?}, last request sent at TERM + {last:?}, \
         {while_draining} requests sent after the TERM, {} probes after it ({} with /readyz 503), \
         exit 0 at TERM + {took:?} (drain {:?}, grace period {:?}, KILL not needed)",
        pod.name,
        removed - term,
        probes.iter().filter(|p| p.after_term).count(),
        probes
            .iter()
            .filter(|p| p.after_term && p.readyz == Some(503))
            .count(),
        deployment.drain,
        deployment.grace
    );
    (while_draining, took)
}

#[test]
fn a_deleted_pod_drains_under_load_with_no_failed_request_and_exits_0_in_its_grace_period() {
    let deployment = deployment();
    let fx = Fixture::new();
    let load = LoadClient::start(deployment.grace + SOON * 2);
    let mut pod = Pod::start(&fx, "pod-a", &deployment);
    pod.wait_ready();
    load.add(pod.port);
    load.wait_served(pod.port, SOME, &pod);
    let (_, took) = delete_pod(&mut pod, &load, &deployment);
    let (requests, failed, samples, ran) = load.finish();
    eprintln!(
        "[pod] one pod: {requests} requests, {failed} failed, drain {:?}, exit at TERM + {took:?}, \
         load ran {ran:?} (args {:?}, graceful timeout {:?})",
        deployment.drain, deployment.args, deployment.graceful
    );
    assert_eq!(failed, 0, "failed requests: {samples:#?}");
}

#[test]
fn a_rolling_update_of_two_pods_under_load_drops_no_request() {
    let deployment = deployment();
    let fx = Fixture::new();
    let load = LoadClient::start(deployment.grace + SOON * 3);
    let mut a = Pod::start(&fx, "pod-a", &deployment);
    a.wait_ready();
    load.add(a.port);
    load.wait_served(a.port, SOME, &a);
    // maxSurge 1, maxUnavailable 0: the new pod first, in the endpoints once ready.
    let mut b = Pod::start(&fx, "pod-b", &deployment);
    assert_ne!(a.port, b.port);
    b.wait_ready();
    load.add(b.port);
    load.wait_served(b.port, SOME, &b);
    let (_, took) = delete_pod(&mut a, &load, &deployment);
    // The client failed over: B serves on after A is gone.
    load.wait_served(b.port, SOME, &b);
    let (served_a, served_b) = (load.tally.served(a.port), load.tally.served(b.port));
    let (requests, failed, samples, ran) = load.finish();
    eprintln!(
        "[pod] rolling update: {requests} requests ({served_a} by A, {served_b} by B), \
         {failed} failed, A's drain {:?}, A's exit at TERM + {took:?}, load ran {ran:?}",
        deployment.drain
    );
    assert_eq!(failed, 0, "failed requests: {samples:#?}");
    // B's own stop, with no load left: TERM, then a second TERM once draining cuts it short.
    b.master.signal(libc::SIGTERM);
    b.master
        .wait_log("Draining for", SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    b.master.signal(libc::SIGTERM);
    assert_eq!(b.master.exit_code(SOON), 0, "{}", b.master.stderr());
    b.master.assert_no_process_left();
}
