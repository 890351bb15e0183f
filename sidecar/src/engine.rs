//! The sidecar's view of the engine, independent of how it is observed.
//!
//! An adapter (the native protocol over the socket, or a poller of a stock
//! engine's HTTP endpoints) attaches to the [`EngineHub`], reports the
//! engine's status and carries out the [`EngineCommand`]s the drain sends.
//! The rest of the sidecar only reads [`EngineView`]s and sends commands.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quiesce_protocol::{Abort, DrainRequest, EngineStatus, Phase};
use tokio::sync::{mpsc, watch};

/// What the sidecar knows of the engine at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineView {
    /// An adapter is attached (for the protocol: the engine is connected).
    pub attached: bool,
    /// An adapter was attached at some point since the sidecar started.
    pub ever_attached: bool,
    /// The last status the engine reported.
    pub status: Option<EngineStatus>,
    /// When the engine last gave a sign of life.
    pub last_seen: Option<Instant>,
    /// The attached engine reported `aborting` at some point. Kept apart
    /// from `status`, which holds only the latest report: an abort that
    /// ends between two looks at the view would otherwise go unseen.
    pub reported_aborting: bool,
    /// Why the engine's work cannot be seen (a stock engine's missing
    /// metrics), as a metric label; `None` when it can.
    pub work_unknown: Option<&'static str>,
}

impl EngineView {
    /// The engine's phase, if it is attached and has reported one.
    pub fn phase(&self) -> Option<Phase> {
        self.status.filter(|_| self.attached).map(|s| s.phase)
    }

    /// When the engine stops being live unless it reports again.
    pub fn live_until(&self, window: Duration) -> Option<Instant> {
        self.last_seen
            .filter(|_| self.attached)
            .map(|seen| seen + window)
    }

    /// Whether the engine works: not yet seen (it may still be starting), or
    /// seen within `window`. A stopped engine counts as live: it is about to
    /// exit, and restarting it would only lose time.
    pub fn is_live(&self, now: Instant, window: Duration) -> bool {
        match self.last_seen {
            None => !self.ever_attached,
            Some(seen) => {
                self.phase() == Some(Phase::Stopped) || now.saturating_duration_since(seen) < window
            }
        }
    }
}

/// An order to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineCommand {
    /// Start draining.
    Drain(DrainRequest),
    /// Abort what is left.
    Abort(Abort),
}

/// Returned by [`EngineHub::attach`] while another adapter is attached.
#[derive(Debug, thiserror::Error)]
#[error("an engine is already connected to this sidecar")]
pub struct AlreadyAttached;

/// The one place the engine's state lives.
#[derive(Debug)]
pub struct EngineHub {
    view: watch::Sender<EngineView>,
    commands: Mutex<Option<(u64, mpsc::UnboundedSender<EngineCommand>)>>,
    next_id: AtomicU64,
}

impl Default for EngineHub {
    fn default() -> Self {
        Self {
            view: watch::Sender::new(EngineView::default()),
            commands: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }
}

impl EngineHub {
    /// Attaches an adapter; at most one at a time.
    pub fn attach(&self) -> Result<EngineAttachment<'_>, AlreadyAttached> {
        let mut commands = self.commands.lock().expect("engine hub lock");
        if commands.is_some() {
            return Err(AlreadyAttached);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        *commands = Some((id, tx));
        self.view.send_modify(|view| {
            view.attached = true;
            view.ever_attached = true;
            view.last_seen = Some(Instant::now());
            view.reported_aborting = false;
        });
        Ok(EngineAttachment {
            hub: self,
            id,
            commands: rx,
        })
    }

    /// The current view.
    pub fn view(&self) -> EngineView {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<EngineView> {
        self.view.subscribe()
    }

    /// Sends a command to the attached engine; false when none is attached.
    pub fn send(&self, command: EngineCommand) -> bool {
        let commands = self.commands.lock().expect("engine hub lock");
        commands
            .as_ref()
            .is_some_and(|(_, tx)| tx.send(command).is_ok())
    }
}

/// An attached adapter. Dropping it detaches the engine.
#[derive(Debug)]
pub struct EngineAttachment<'hub> {
    hub: &'hub EngineHub,
    id: u64,
    /// Commands for the engine, in order.
    pub commands: mpsc::UnboundedReceiver<EngineCommand>,
}

impl EngineAttachment<'_> {
    /// Records a status report, also a sign of life: watchers wake even when
    /// the status is unchanged, since liveness may have come back.
    pub fn report(&self, status: EngineStatus) {
        self.report_blind(status, None);
    }

    /// [`EngineAttachment::report`] from an adapter that may not see all of
    /// the engine's work: `work_unknown` says why not.
    pub fn report_blind(&self, status: EngineStatus, work_unknown: Option<&'static str>) {
        self.hub.view.send_modify(|view| {
            view.last_seen = Some(Instant::now());
            view.status = Some(status);
            view.reported_aborting |= status.phase == Phase::Aborting;
            view.work_unknown = work_unknown;
        });
    }
}

impl Drop for EngineAttachment<'_> {
    fn drop(&mut self) {
        let mut commands = self.hub.commands.lock().expect("engine hub lock");
        if commands.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *commands = None;
        }
        self.hub.view.send_modify(|view| view.attached = false);
    }
}
