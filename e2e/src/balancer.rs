//! A readiness-aware load balancer in front of local pods: what a Service
//! (EndpointSlices and kube-proxy) or an inference gateway does, with its
//! propagation delay.
//!
//! Routing follows [`Endpoints`]: a pod becomes routable as soon as it is
//! ready, and stops being routable only `propagation` after it turned not
//! ready or terminating (or was gone): the time the EndpointSlice update
//! takes to reach every kube-proxy and external load balancer. Meanwhile
//! requests still go to it, as in a cluster, and a pod that has already
//! exited refuses the connection: the balancer answers 502 and the request
//! counts as failed, unless retrying refused connections is switched on (as
//! some gateways do; kube-proxy does not).
//!
//! A 503 with `Retry-After` (the engine's refusal before any work) is
//! retried once on another pod when `retry_rejected` is on (the default):
//! what a gateway with a retry policy does, and what the engine's
//! `Retry-After` invites. Everything else, including the response stream,
//! passes through untouched: a stream the upstream cuts is cut for the
//! client too.
//!
//! Each response carries `x-quiesce-pod` (the pod that answered, or the
//! last one tried), `x-quiesce-attempts`, and on a proxy error
//! `x-quiesce-proxy-error`, so the load generator can tell who served what.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pod::PodStatus;

/// Response header: the pod that answered (or the last one tried).
pub const POD_HEADER: &str = "x-quiesce-pod";
/// Response header: how many pods were tried.
pub const ATTEMPTS_HEADER: &str = "x-quiesce-attempts";
/// Response header: what went wrong between the balancer and the pod.
pub const PROXY_ERROR_HEADER: &str = "x-quiesce-proxy-error";
/// `x-quiesce-proxy-error` when the pod refused the connection.
pub const CONNECT_ERROR: &str = "connect";
/// `x-quiesce-proxy-error` when no pod was routable.
pub const NO_ENDPOINT_ERROR: &str = "no-endpoint";

/// The largest request body the balancer buffers (it keeps the body to be
/// able to retry).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// How the balancer picks a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// One after the other (kube-proxy picks at random, which spreads the
    /// same on average).
    #[default]
    RoundRobin,
    /// The pod with the fewest requests in flight through the balancer (an
    /// inference gateway). Beware: a dead pod answers fastest.
    LeastOutstanding,
}

/// The balancer's settings.
#[derive(Clone, Debug)]
pub struct BalancerConfig {
    /// How long a pod stays routable after it turned not ready or
    /// terminating.
    pub propagation: Duration,
    /// Retry a 503 with `Retry-After` once on another pod.
    pub retry_rejected: bool,
    /// Retry a refused connection once on another pod.
    pub retry_refused: bool,
    /// How to pick a pod.
    pub policy: Policy,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            propagation: Duration::from_secs(2),
            retry_rejected: true,
            retry_refused: false,
            policy: Policy::RoundRobin,
        }
    }
}

/// One endpoint as the balancer knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    addr: SocketAddr,
    serving: bool,
    /// When it last turned not serving; it is routable until this plus the
    /// propagation delay.
    unserving_since: Option<Instant>,
    in_flight: usize,
}

/// The endpoint bookkeeping, with the propagation delay. Pure: times are
/// passed in.
#[derive(Clone, Debug)]
pub struct Endpoints {
    propagation: Duration,
    entries: BTreeMap<String, Entry>,
    cursor: usize,
}

impl Endpoints {
    /// No endpoints yet.
    pub fn new(propagation: Duration) -> Self {
        Self {
            propagation,
            entries: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Records what the EndpointSlice says of pod `name` at `now`: serving
    /// (ready and not terminating) or not. A newly serving pod is routable
    /// at once; one that stops serving stays routable for the propagation
    /// delay.
    pub fn observe(&mut self, name: &str, addr: SocketAddr, serving: bool, now: Instant) {
        let entry = self.entries.entry(name.to_owned()).or_insert(Entry {
            addr,
            serving: false,
            unserving_since: None,
            in_flight: 0,
        });
        entry.addr = addr;
        if serving {
            entry.unserving_since = None;
        } else if entry.serving {
            entry.unserving_since = Some(now);
        }
        entry.serving = serving;
    }

    fn is_routable(&self, entry: &Entry, now: Instant) -> bool {
        entry.serving
            || entry
                .unserving_since
                .is_some_and(|since| now < since + self.propagation)
    }

    /// The routable pods at `now`, by name.
    pub fn routable(&self, now: Instant) -> Vec<(String, SocketAddr)> {
        self.entries
            .iter()
            .filter(|(_, e)| self.is_routable(e, now))
            .map(|(name, e)| (name.clone(), e.addr))
            .collect()
    }

    /// Picks a routable pod other than `exclude`, and counts a request in
    /// flight on it.
    pub fn pick(
        &mut self,
        policy: Policy,
        exclude: Option<&str>,
        now: Instant,
    ) -> Option<(String, SocketAddr)> {
        let candidates: Vec<(String, SocketAddr)> = self
            .routable(now)
            .into_iter()
            .filter(|(name, _)| Some(name.as_str()) != exclude)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = match policy {
            Policy::RoundRobin => {
                self.cursor = self.cursor.wrapping_add(1);
                candidates[self.cursor % candidates.len()].clone()
            }
            Policy::LeastOutstanding => candidates
                .iter()
                .min_by_key(|(name, _)| self.entries[name].in_flight)
                .cloned()
                .expect("not empty"),
        };
        if let Some(entry) = self.entries.get_mut(&chosen.0) {
            entry.in_flight += 1;
        }
        Some(chosen)
    }

    /// A request picked on `name` has ended.
    pub fn release(&mut self, name: &str) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

/// A running balancer.
pub struct Balancer {
    addr: SocketAddr,
    endpoints: Arc<Mutex<Endpoints>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Balancer {
    /// Listens on a free loopback port.
    pub async fn start(config: BalancerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let endpoints = Arc::new(Mutex::new(Endpoints::new(config.propagation)));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            config,
            endpoints: Arc::clone(&endpoints),
        });
        tasks.spawn(accept_loop(listener, shared, stop.clone(), tasks.clone()));
        Ok(Self {
            addr,
            endpoints,
            stop,
            tasks,
        })
    }

    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Follows pod `name` at `addr`: each change of its status becomes an
    /// EndpointSlice update. When the pod's status channel closes (its
    /// kubelet is done), the pod is no longer serving.
    pub fn track(&self, name: &str, addr: SocketAddr, mut status: watch::Receiver<PodStatus>) {
        let endpoints = Arc::clone(&self.endpoints);
        let name = name.to_owned();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                let serving = status.borrow_and_update().serving();
                endpoints
                    .lock()
                    .expect("endpoints lock")
                    .observe(&name, addr, serving, Instant::now());
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = status.changed() => if changed.is_err() {
                        endpoints.lock().expect("endpoints lock").observe(&name, addr, false, Instant::now());
                        return;
                    },
                }
            }
        });
    }

    /// The pods routable now.
    pub fn routable(&self) -> Vec<String> {
        let endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints
            .routable(Instant::now())
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// Stops accepting and ends every connection and tracker, at most
    /// `within`.
    pub async fn stop(self, within: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(within, self.tasks.wait()).await;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    config: BalancerConfig,
    endpoints: Arc<Mutex<Endpoints>>,
}

impl Shared {
    /// Whether a pod other than `pod` is routable: a retry needs one.
    fn has_other(&self, pod: &str) -> bool {
        let endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints
            .routable(Instant::now())
            .iter()
            .any(|(name, _)| name != pod)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "balancer: accept failed");
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(proxy(&shared, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

type ProxyBody = Either<InFlight, Full<Bytes>>;

/// The upstream's body, which releases its pod's in-flight count when it
/// is dropped (when the client has it all, or went away).
pub struct InFlight {
    body: Incoming,
    release: Option<(Arc<Mutex<Endpoints>>, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((endpoints, name)) = self.release.take() {
            endpoints.lock().expect("endpoints lock").release(&name);
        }
    }
}

impl hyper::body::Body for InFlight {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn own_response(
    status: StatusCode,
    message: &str,
    pod: Option<&str>,
    attempts: u32,
    error: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": {"message": message, "type": "proxy_error"}});
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(pod) = pod.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(POD_HEADER, pod);
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    headers.insert(
        PROXY_ERROR_HEADER,
        HeaderValue::from_str(error).expect("a token"),
    );
    response
}

async fn proxy(shared: &Shared, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let message = format!("reading the request body: {e}");
            return own_response(StatusCode::BAD_REQUEST, &message, None, 0, "request");
        }
    };
    let mut tried: Option<String> = None;
    let mut attempts = 0;
    loop {
        let picked = shared.endpoints.lock().expect("endpoints lock").pick(
            shared.config.policy,
            tried.as_deref(),
            Instant::now(),
        );
        let Some((pod, addr)) = picked else {
            // No pod at all (or, on a retry, the other pods went away in
            // between): like a Service without endpoints, the request fails.
            return own_response(
                StatusCode::BAD_GATEWAY,
                "no routable pod",
                tried.as_deref(),
                attempts,
                NO_ENDPOINT_ERROR,
            );
        };
        attempts += 1;
        let release = || {
            shared
                .endpoints
                .lock()
                .expect("endpoints lock")
                .release(&pod)
        };
        let retries_left = attempts < 2;
        let mut upstream = Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = parts.uri.clone();
        *upstream.headers_mut() = parts.headers.clone();
        if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
            upstream.headers_mut().insert(HOST, host);
        }
        let retries_left = retries_left && shared.has_other(&pod);
        let response = match forward(addr, upstream).await {
            Ok(response) => response,
            Err(Forward::Connect(e)) => {
                release();
                if shared.config.retry_refused && retries_left {
                    tried = Some(pod);
                    continue;
                }
                let message = format!("pod {pod} at {addr}: connect: {e}");
                return own_response(
                    StatusCode::BAD_GATEWAY,
                    &message,
                    Some(&pod),
                    attempts,
                    CONNECT_ERROR,
                );
            }
            Err(Forward::Request(e)) => {
                release();
                let message = format!("pod {pod} at {addr}: {e}");
                return own_response(
                    StatusCode::BAD_GATEWAY,
                    &message,
                    Some(&pod),
                    attempts,
                    "upstream",
                );
            }
        };
        let rejected = response.status() == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key(RETRY_AFTER);
        if rejected && shared.config.retry_rejected && retries_left {
            // Refused before any work: another pod may take it. The body
            // is small; read it so the connection ends cleanly.
            let (_, body) = response.into_parts();
            let _ = tokio::time::timeout(Duration::from_secs(1), body.collect()).await;
            release();
            tried = Some(pod);
            continue;
        }
        let (mut parts, body) = response.into_parts();
        if let Ok(value) = HeaderValue::from_str(&pod) {
            parts.headers.insert(POD_HEADER, value);
        }
        parts
            .headers
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
        let body = InFlight {
            body,
            release: Some((Arc::clone(&shared.endpoints), pod)),
        };
        return Response::from_parts(parts, Either::Left(body));
    }
}

enum Forward {
    Connect(std::io::Error),
    Request(String),
}

async fn forward(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, Forward> {
    let stream = TcpStream::connect(addr).await.map_err(Forward::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Forward::Request(format!("handshake: {e}")))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| Forward::Request(format!("request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_pod_is_routable_when_ready_and_until_the_propagation_delay_after() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut e = Endpoints::new(Duration::from_secs(2));
        e.observe("a", addr(1), false, s(0.0));
        assert!(e.routable(s(0.0)).is_empty(), "not ready yet");
        e.observe("a", addr(1), true, s(1.0));
        assert_eq!(e.routable(s(1.0)).len(), 1, "routable as soon as ready");
        e.observe("a", addr(1), false, s(5.0));
        assert_eq!(e.routable(s(5.0)).len(), 1, "stale routing starts");
        assert_eq!(e.routable(s(6.99)).len(), 1);
        assert!(e.routable(s(7.0)).is_empty(), "removed after the delay");
        // Repeated not-serving observations do not extend the delay.
        e.observe("a", addr(1), false, s(6.0));
        assert!(e.routable(s(7.0)).is_empty());
    }

    #[test]
    fn a_pod_back_to_ready_before_removal_stays_routable() {
        let t0 = Instant::now();
        let mut e = Endpoints::new(Duration::from_secs(2));
        e.observe("a", addr(1), true, t0);
        e.observe("a", addr(1), false, t0 + Duration::from_secs(1));
        e.observe("a", addr(1), true, t0 + Duration::from_secs(2));
        assert_eq!(e.routable(t0 + Duration::from_secs(10)).len(), 1);
    }

    #[test]
    fn picking_rotates_excludes_and_counts_in_flight() {
        let t0 = Instant::now();
        let mut e = Endpoints::new(Duration::ZERO);
        e.observe("a", addr(1), true, t0);
        e.observe("b", addr(2), true, t0);
        let first = e.pick(Policy::RoundRobin, None, t0).unwrap().0;
        let second = e.pick(Policy::RoundRobin, None, t0).unwrap().0;
        assert_ne!(first, second);
        assert_eq!(
            e.pick(Policy::RoundRobin, Some("a"), t0).unwrap().0,
            "b",
            "a retry goes elsewhere"
        );
        // In flight: a 1, b 2. Least outstanding picks a.
        assert_eq!(e.pick(Policy::LeastOutstanding, None, t0).unwrap().0, "a");
        e.release("b");
        e.release("b");
        assert_eq!(e.pick(Policy::LeastOutstanding, None, t0).unwrap().0, "b");
        e.observe("a", addr(1), false, t0);
        e.observe("b", addr(2), false, t0);
        assert_eq!(e.pick(Policy::RoundRobin, None, t0), None);
    }
}
