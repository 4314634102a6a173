//! How a host connection reaches the guest: over a dedicated data
//! connection of its own where the transport can dial one (spliced), else
//! through the guest's ssh ControlMaster where one is configured (as
//! `ssh -L` would), else as a stream of the session. Shared by the ports
//! and sockets channels.

pub mod dedicated;
pub mod ssh_master;

use std::sync::{Arc, Mutex};

use ferry_mux::{placement::BulkHistory, LocalConn, OpenError, Session, Traffic};
use ferry_protocol::Target;

use crate::status::board::{Route, RouteCounts};
use dedicated::DataPath;
use ssh_master::MasterRoute;

/// The routes of one session.
pub struct Routes {
    /// The session: streams as frames (always available).
    pub session: Session,
    data: Mutex<Option<Arc<DataPath>>>,
    master: Option<Arc<MasterRoute>>,
    counts: Arc<RouteCounts>,
}

impl Routes {
    /// Routes over `session` (and `master`, if given) until a data path
    /// is set; each connection carried is counted in `counts`.
    pub fn new(session: Session, master: Option<Arc<MasterRoute>>, counts: Arc<RouteCounts>) -> Arc<Self> {
        Arc::new(Self { session, data: Mutex::new(None), master, counts })
    }

    /// Lets connections from now on use dedicated data connections.
    pub fn set_data_path(&self, data: DataPath) {
        *self.data.lock().unwrap() = Some(Arc::new(data));
    }

    /// Forwards one accepted local connection to `target` in the guest,
    /// until it ends. A refusal or a failure aborts the local socket (TCP: RST).
    /// A dedicated data connection's bytes count towards `history` (see
    /// [`ferry_mux::placement`]).
    pub async fn forward(&self, local: LocalConn, target: Target, traffic: &Arc<Traffic>, history: &Arc<BulkHistory>) {
        let data = self.data.lock().unwrap().clone();
        let local = match data {
            Some(data) => match data.forward(local, &target, traffic, &self.counts, history).await {
                Ok(()) => return,
                Err(local) => local,
            },
            None => local,
        };
        let local = match &self.master {
            Some(master) => match master.forward(local, &target, traffic, &self.counts).await {
                Ok(()) => return,
                Err(local) => local,
            },
            None => local,
        };
        let stream = match self.session.open(&target).await {
            Ok(s) => s,
            Err(e) => {
                match &e {
                    OpenError::Refused(r) => tracing::debug!("guest refused {target:?}: {r}"),
                    other => tracing::debug!("cannot forward to {target:?}: {other}"),
                }
                // The client sees a reset, as it would from a closed port.
                return local.abort();
            }
        };
        self.counts.count(Route::Multiplexed);
        if let Some(reason) = local.pump(stream, traffic).await {
            tracing::debug!("connection to guest {target:?} reset: {reason}");
        }
    }
}
