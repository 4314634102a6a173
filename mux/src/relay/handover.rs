//! Stopping a relay, once its connection carries bulk, at a moment when
//! neither direction holds a byte, so that its sockets can move to another
//! runtime and the relay go on there from where it stopped (see
//! [`crate::placement::DataRelay`]).
//!
//! A direction is parked while it holds nothing in its conduit (or only the
//! agent's held-back answer) and waits for its source, or checks it at an
//! empty conduit in the middle of a bulk stream; and for good once it has
//! ended. When both are parked, the meter says the connection carries bulk
//! and another connection of the process does too, the relay stops: the relay holds no byte then, and what the
//! kernel still holds in the sockets moves with them. A parked direction
//! whose source is ready before that goes on, so a move never holds up a
//! byte: it waits for a quiet moment instead. (Two directions that both
//! stream bulk at once meet as soon as one waits for its source, or ends.)
//!
//! Both directions run in one task (the relay joins them), so the one that
//! decides the move wakes that task and the other sees the decision when
//! polled; no other wake-up is needed.

use std::{
    future::Future,
    io,
    pin::pin,
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
    task::Poll,
};

use super::Answer;
use crate::placement::Metered;

/// Where a stopped relay goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Bytes moved up (client -> data connection) so far, and whether that
    /// direction has ended.
    pub(super) up: Leg,
    /// The same for down.
    pub(super) down: Leg,
    /// The agent's answer still to come: [`Answer::Read`] while the host has
    /// not read it, [`Answer::Send`] while the agent has not sent it.
    pub(super) answer: Answer,
}

impl Resume {
    /// A relay from its start, with `answer` to handle.
    pub fn start(answer: Answer) -> Self {
        Self { up: Leg::default(), down: Leg::default(), answer }
    }

    /// Bytes moved so far (up, down).
    pub fn moved(&self) -> (u64, u64) {
        (self.up.moved, self.down.moved)
    }
}

/// One direction's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Leg {
    pub(super) moved: u64,
    pub(super) done: bool,
}

/// How a relay that may stop for a move came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// Both directions ended: the bytes moved (up, down).
    Ended(u64, u64),
    /// It stopped with nothing in flight: move the sockets, then go on
    /// from here.
    Stopped(Resume),
}

/// How one direction came back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LegEnd {
    /// It ended, after moving this many bytes.
    Done(u64),
    /// It stopped for a move after this many bytes; `greeting` if the
    /// agent's answer it carries has not left.
    Stopped { moved: u64, greeting: bool },
}

/// The two directions' meeting point for a move.
pub(super) struct Handover<'a> {
    meter: &'a Metered<'a>,
    parked: AtomicU8,
    moving: AtomicBool,
}

/// The directions of a relay.
const LEGS: u8 = 2;

impl<'a> Handover<'a> {
    /// A meeting point that stops the relay once `meter` says bulk.
    pub(super) fn new(meter: &'a Metered<'a>) -> Self {
        Self { meter, parked: AtomicU8::new(0), moving: AtomicBool::new(false) }
    }

    /// Whether the connection should move: it carries bulk, and so does
    /// another of this process's connections (see
    /// [`crate::placement::bulk_crowd`]).
    pub(super) fn wanted(&self) -> bool {
        self.meter.carried_bulk() && crate::placement::bulk_crowd()
    }

    /// Counts a direction in; true if the relay stops now.
    fn arrive(&self) -> bool {
        let parked = self.parked.fetch_add(1, Ordering::Relaxed) + 1;
        if parked == LEGS && self.wanted() {
            self.moving.store(true, Ordering::Relaxed);
        }
        self.moving.load(Ordering::Relaxed)
    }

    /// A direction that has ended: parked for good. Wakes the relay's task
    /// if that completes the move, for the other direction to see it.
    pub(super) async fn done(&self) {
        if self.arrive() {
            wake_own_task().await;
        }
    }

    /// Waits for `ready` (the source's readiness) as a parked direction:
    /// `Ok(true)` if the relay stops for the move, `Ok(false)` to go on.
    pub(super) async fn park(&self, ready: impl Future<Output = io::Result<()>>) -> io::Result<bool> {
        if self.arrive() {
            wake_own_task().await;
            return Ok(true);
        }
        let mut ready = pin!(ready);
        // While a move is wanted, the other direction gets one turn before
        // this one's source is looked at: two busy directions, each always
        // ready, would otherwise never be parked at the same time.
        let mut other_turn = self.wanted();
        let woken = std::future::poll_fn(|cx| {
            if self.moving.load(Ordering::Relaxed) {
                return Poll::Ready(None);
            }
            if std::mem::take(&mut other_turn) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready.as_mut().poll(cx).map(Some)
        })
        .await;
        match woken {
            None => Ok(true),
            Some(r) => {
                self.parked.fetch_sub(1, Ordering::Relaxed);
                r.map(|()| false)
            }
        }
    }
}

/// Has the calling task polled again (the other direction then sees a
/// decided move).
async fn wake_own_task() {
    std::future::poll_fn(|cx| {
        cx.waker().wake_by_ref();
        Poll::Ready(())
    })
    .await
}
