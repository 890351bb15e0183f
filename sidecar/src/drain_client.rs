//! `quiesce-sidecar drain`: the engine container's preStop hook. It asks the
//! sidecar to drain, follows the drain, and returns when it is over, so that
//! the kubelet sends SIGTERM only to an engine with nothing left to do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiesce_protocol::{
    ClientMessage, DrainReport, DrainRequest, DrainResult, FrameReader, HANDSHAKE_TIMEOUT, Hello,
    LIVENESS_MISSED_HEARTBEATS, Role, ServerMessage, write_frame,
};
use tokio::net::UnixStream;

/// Extra time the client allows beyond the drain's own bound, for the
/// sidecar to report the result.
pub const MARGIN: Duration = Duration::from_secs(3);

/// How a drain client run ended. Every outcome exits 0: a failing preStop
/// hook would only make the kubelet send SIGTERM at once, with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar reported the end of the drain.
    Finished(DrainReport),
    /// The sidecar could not be reached; the propagation delay was waited.
    Unreachable(String),
    /// The connection broke or the sidecar misbehaved mid-drain.
    Interrupted(String),
    /// The drain outlived its bound.
    TimedOut,
}

/// Runs the drain client against the sidecar at `socket`.
///
/// Unless the drain ran its course, it returns only once the propagation
/// delay has passed since it started, so that load balancers stop routing
/// before the kubelet sends SIGTERM; the engine then drains by itself.
pub async fn run(socket: PathBuf, request: DrainRequest) -> Outcome {
    let started = Instant::now();
    let deadline = started + request.max_duration() + MARGIN;
    let outcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, UnixStream::connect(&socket)).await
    {
        Ok(Ok(mut stream)) => {
            match tokio::time::timeout_at(deadline.into(), follow(&mut stream, request)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::TimedOut,
            }
        }
        Ok(Err(e)) => Outcome::Unreachable(format!(
            "cannot reach the sidecar at {}: {e}",
            socket.display()
        )),
        Err(_) => Outcome::Unreachable(format!("connecting to {} timed out", socket.display())),
    };
    let ran_its_course = match &outcome {
        Outcome::Finished(report) => report.result != DrainResult::NoEngine,
        Outcome::TimedOut => true,
        Outcome::Unreachable(_) | Outcome::Interrupted(_) => false,
    };
    match &outcome {
        Outcome::Finished(report) => eprintln!(
            "quiesce-sidecar drain: {} after {:.1} s",
            report.result,
            report.elapsed.as_secs_f64()
        ),
        Outcome::TimedOut => {
            eprintln!("quiesce-sidecar drain: the drain outlived its bound; returning")
        }
        Outcome::Unreachable(why) | Outcome::Interrupted(why) => {
            eprintln!("quiesce-sidecar drain: {why}")
        }
    }
    if !ran_its_course {
        let until = started + request.propagation;
        eprintln!(
            "quiesce-sidecar drain: waiting {:.1} s more for load balancers, then letting SIGTERM \
             through: the engine drains by itself",
            until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
        tokio::time::sleep_until(until.into()).await;
    }
    outcome
}

async fn follow(stream: &mut UnixStream, request: DrainRequest) -> Outcome {
    let (read, mut write) = stream.split();
    let mut reader = FrameReader::new(read);
    let hello = ClientMessage::Hello(Hello::new(Role::Drain, "prestop"));
    if let Err(e) = write_frame(&mut write, &hello).await {
        return Outcome::Interrupted(format!("cannot send hello: {e}"));
    }
    let heartbeat =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read::<ServerMessage>()).await {
            Ok(Ok(Some(ServerMessage::Welcome(welcome)))) => welcome.heartbeat_interval,
            Ok(Ok(Some(ServerMessage::Error(e)))) => {
                return Outcome::Interrupted(format!("refused: {e}"));
            }
            Ok(Ok(other)) => {
                return Outcome::Interrupted(format!("unexpected answer to hello: {other:?}"));
            }
            Ok(Err(e)) => return Outcome::Interrupted(e.to_string()),
            Err(_) => return Outcome::Interrupted("no answer to hello".into()),
        };
    // The sidecar sends progress every heartbeat; this much silence means it is gone.
    let silence_limit = heartbeat * LIVENESS_MISSED_HEARTBEATS;
    if let Err(e) = write_frame(&mut write, &ClientMessage::Drain(request)).await {
        return Outcome::Interrupted(format!("cannot send the drain request: {e}"));
    }
    eprintln!(
        "quiesce-sidecar drain: draining (propagation {} s, timeout {} s, abort grace {} s)",
        request.propagation.as_secs_f64(),
        request.timeout.as_secs_f64(),
        request.abort_grace.as_secs_f64()
    );
    loop {
        let Ok(frame) = tokio::time::timeout(silence_limit, reader.read::<ServerMessage>()).await
        else {
            return Outcome::Interrupted("the sidecar stopped answering".into());
        };
        match frame {
            Ok(Some(ServerMessage::Progress(p))) => eprintln!(
                "quiesce-sidecar drain: {:.1} s: engine {}, {} in flight, {} queued, {} KV transfers",
                p.elapsed.as_secs_f64(),
                p.engine.phase.as_str(),
                p.engine.in_flight,
                p.engine.queued,
                p.engine.kv_transfers
            ),
            Ok(Some(ServerMessage::DrainResult(report))) => return Outcome::Finished(report),
            Ok(Some(ServerMessage::Error(e))) => {
                return Outcome::Interrupted(format!("sidecar error: {e}"));
            }
            Ok(Some(other)) => {
                return Outcome::Interrupted(format!("unexpected message: {other:?}"));
            }
            Ok(None) => return Outcome::Interrupted("the sidecar closed the connection".into()),
            Err(e) => return Outcome::Interrupted(e.to_string()),
        }
    }
}
