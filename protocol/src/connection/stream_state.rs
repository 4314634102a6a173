//! The lifecycle of one stream: its states and every transition, in one
//! table ([`StreamState::on`]).

/// Where a live stream is in its lifecycle. A stream that has ended (both
/// halves finished, reset, refused or timed out) is no longer in the
/// connection's table: there is no `Closed` state to linger in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// This side sent OPEN and waits for OPEN_OK or OPEN_REFUSED.
    Opening,
    /// The peer sent OPEN; this side has not answered yet.
    Accepting,
    /// Established: data may flow both ways.
    Open,
    /// This side sent FIN; the peer may still send.
    SentFin,
    /// The peer sent FIN; this side may still send.
    ReceivedFin,
}

/// Something that happens to a stream: a frame from the peer, a command
/// of the application, or the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The peer answered our OPEN with OPEN_OK.
    PeerOpenOk,
    /// The peer answered our OPEN with OPEN_REFUSED.
    PeerRefused,
    /// DATA from the peer.
    PeerData,
    /// WINDOW (send credit) from the peer.
    PeerWindow,
    /// FIN from the peer.
    PeerFin,
    /// RESET from the peer.
    PeerReset,
    /// The application accepts the peer's OPEN.
    Accept,
    /// The application sends data.
    Send,
    /// The application half-closes.
    Finish,
    /// The application aborts the stream.
    Reset,
    /// The peer did not answer our OPEN in time.
    OpenTimeout,
}

/// What a transition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The stream moves to (or stays in) this state.
    To(StreamState),
    /// The stream ends and leaves the table.
    End,
    /// The peer broke the stream's rules: the stream is reset (the session
    /// goes on).
    PeerViolation(&'static str),
    /// The application asked for something the state does not allow; the
    /// stream is unchanged.
    NotAllowed,
}

impl StreamState {
    /// The transition table. Frames for a stream that is not in the table
    /// at all are late arrivals and handled by the connection, not here.
    pub fn on(self, input: Input) -> Transition {
        use Input::*;
        use StreamState::*;
        use Transition::*;
        match (self, input) {
            // Either side may abort at any time; a timed-out open is aborted.
            (_, PeerReset | Reset) => End,
            (Opening, OpenTimeout) => End,
            (_, OpenTimeout) => To(self),

            (Opening, PeerOpenOk) => To(Open),
            (Opening, PeerRefused) => End,
            (Opening, PeerData | PeerFin | PeerWindow) => PeerViolation("stream used before its OPEN was answered"),
            (Opening, Accept | Send | Finish) => NotAllowed,

            (Accepting, Accept) => To(Open),
            (Accepting, PeerData | PeerFin | PeerWindow) => PeerViolation("stream used before its OPEN was answered"),
            (Accepting, PeerOpenOk | PeerRefused) => PeerViolation("an answer to its own OPEN"),
            (Accepting, Send | Finish) => NotAllowed,

            (Open, PeerData | PeerWindow | Send) => To(Open),
            (Open, PeerFin) => To(ReceivedFin),
            (Open, Finish) => To(SentFin),

            // Our data may still be unconsumed at the peer: its credit for
            // it can arrive after our FIN.
            (SentFin, PeerData | PeerWindow) => To(SentFin),
            (SentFin, PeerFin) => End,
            (SentFin, Send | Finish) => NotAllowed,

            (ReceivedFin, PeerWindow | Send) => To(ReceivedFin),
            (ReceivedFin, Finish) => End,
            (ReceivedFin, PeerData) => PeerViolation("DATA after FIN"),
            (ReceivedFin, PeerFin) => PeerViolation("a second FIN"),

            (Open | SentFin | ReceivedFin, PeerOpenOk | PeerRefused) => {
                PeerViolation("an answer to an OPEN that was already answered")
            }
            (Open | SentFin | ReceivedFin, Accept) => NotAllowed,
        }
    }

    /// Whether this side may still send data (as the table says).
    pub fn may_send(self) -> bool {
        matches!(self.on(Input::Send), Transition::To(_))
    }
}

#[cfg(test)]
mod tests {
    use super::{Input::*, StreamState::*, Transition::*, *};

    const STATES: [StreamState; 5] = [Opening, Accepting, Open, SentFin, ReceivedFin];
    const INPUTS: [Input; 11] =
        [PeerOpenOk, PeerRefused, PeerData, PeerWindow, PeerFin, PeerReset, Accept, Send, Finish, Reset, OpenTimeout];

    #[test]
    fn a_reset_ends_every_state() {
        for s in STATES {
            assert_eq!(s.on(PeerReset), End);
            assert_eq!(s.on(Reset), End);
        }
    }

    #[test]
    fn application_commands_never_count_as_peer_violations() {
        for s in STATES {
            for i in [Accept, Send, Finish, Reset, OpenTimeout] {
                assert!(!matches!(s.on(i), PeerViolation(_)), "{s:?} on {i:?}");
            }
        }
    }

    #[test]
    fn both_halves_must_finish_for_a_clean_end() {
        let after = |s: StreamState, i| match s.on(i) {
            To(s) => Some(s),
            _ => None,
        };
        assert_eq!(after(Open, Finish).map(|s| s.on(PeerFin)), Some(End));
        assert_eq!(after(Open, PeerFin).map(|s| s.on(Finish)), Some(End));
        // Every path from Open that ends without a reset passes both FINs.
        for first in INPUTS {
            if let To(s) = Open.on(first) {
                for second in INPUTS {
                    if s.on(second) == End {
                        assert!(
                            matches!((first, second), (Finish, PeerFin) | (PeerFin, Finish))
                                || matches!(second, PeerReset | Reset)
                                || matches!(first, PeerReset | Reset),
                            "{first:?} then {second:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn peer_inputs_are_never_merely_not_allowed() {
        // A frame either moves the stream on, ends it, or is a violation:
        // the connection relies on this (`Connection::step`).
        for s in STATES {
            for i in [PeerOpenOk, PeerRefused, PeerData, PeerWindow, PeerFin, PeerReset] {
                assert_ne!(s.on(i), NotAllowed, "{s:?} on {i:?}");
            }
        }
    }

    #[test]
    fn only_open_and_received_fin_may_send() {
        for s in STATES {
            assert_eq!(s.may_send(), matches!(s, Open | ReceivedFin), "{s:?}");
        }
    }
}
