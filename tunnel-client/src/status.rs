//! What each supervisor is doing, in one place: the systemd STATUS line (one replica: its
//! state; several: `name: state` for each, joined by `; `), and a watch for tests.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

use crate::notify;

/// One replica's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not connected yet.
    Starting,
    /// A session is up.
    Up {
        /// Uplink name.
        uplink: String,
        /// Gateway address.
        address: String,
        /// The forward is in place (false: withdrawn while the local signer is down).
        forwarding: bool,
        /// Uplink changes so far.
        switches: u64,
        /// Sessions opened so far.
        sessions: u64,
    },
    /// The session ended; the next attempt comes after `retry_in`.
    Reconnecting {
        /// Why it ended.
        reason: String,
        /// The backoff drawn.
        retry_in: Duration,
    },
    /// No address answered on any uplink; the next attempt comes after `retry_in`.
    Unreachable {
        /// The last error.
        error: String,
        /// The backoff drawn.
        retry_in: Duration,
    },
    /// Only a wrong host key answered: retried slowly, never connected.
    HostKeyMismatch,
}

impl State {
    /// Connected with the forward in place.
    pub fn is_serving(&self) -> bool {
        matches!(self, State::Up { forwarding: true, .. })
    }
}

/// A duration as the status line shows it: `1.5s`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Starting => f.write_str("starting: connecting to the gateway"),
            State::Up {
                uplink,
                address,
                forwarding,
                switches,
                sessions,
            } => {
                let state = if *forwarding {
                    "serving"
                } else {
                    "forward withdrawn (local signer down)"
                };
                write!(
                    f,
                    "{state} via {uplink} to {address} (switches: {switches}, sessions: {sessions})"
                )
            }
            State::Reconnecting { reason, retry_in } => {
                write!(f, "reconnecting in {} ({reason})", Secs(*retry_in))
            }
            State::Unreachable { error, retry_in } => {
                write!(f, "cannot reach the gateway, retrying in {}: {error}", Secs(*retry_in))
            }
            State::HostKeyMismatch => f.write_str("host key mismatch: not connecting"),
        }
    }
}

/// Every replica's state, by replica index; each change rewrites the STATUS line.
#[derive(Clone)]
pub struct Board {
    names: std::sync::Arc<[String]>,
    states: watch::Sender<Vec<State>>,
}

impl Board {
    /// All `names` starting.
    pub fn new(names: Vec<String>) -> Board {
        let states = vec![State::Starting; names.len()];
        let board = Board {
            names: names.into(),
            states: watch::Sender::new(states),
        };
        notify::status(&board.line());
        board
    }

    /// Replica `index` is now in `state`.
    pub fn set(&self, index: usize, state: State) {
        let changed = self.states.send_if_modified(|states| match states.get_mut(index) {
            Some(s) if *s != state => {
                *s = state;
                true
            }
            _ => false,
        });
        if changed {
            notify::status(&self.line());
        }
    }

    /// The STATUS line: one replica's state alone, or `name: state; …` for several.
    pub fn line(&self) -> String {
        let states = self.states.borrow();
        if let [only] = states.as_slice() {
            return only.to_string();
        }
        self.names
            .iter()
            .zip(states.iter())
            .map(|(name, state)| format!("{name}: {state}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every state, as it changes.
    pub fn watch(&self) -> watch::Receiver<Vec<State>> {
        self.states.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(uplink: &str, forwarding: bool) -> State {
        State::Up {
            uplink: uplink.into(),
            address: "gw-a:2222".into(),
            forwarding,
            switches: 1,
            sessions: 2,
        }
    }

    #[test]
    fn one_replica_shows_its_state_alone() {
        let board = Board::new(vec!["gateway".into()]);
        assert_eq!(board.line(), "starting: connecting to the gateway");
        board.set(0, up("eth0", true));
        assert_eq!(board.line(), "serving via eth0 to gw-a:2222 (switches: 1, sessions: 2)");
        board.set(0, up("eth0", false));
        assert_eq!(
            board.line(),
            "forward withdrawn (local signer down) via eth0 to gw-a:2222 (switches: 1, sessions: 2)"
        );
    }

    #[test]
    fn several_replicas_each_by_name() {
        let board = Board::new(vec!["gw-a".into(), "gw-b".into()]);
        board.set(0, up("eth0", true));
        board.set(
            1,
            State::Reconnecting {
                reason: "keepalive timeout".into(),
                retry_in: Duration::from_millis(1960),
            },
        );
        assert_eq!(
            board.line(),
            "gw-a: serving via eth0 to gw-a:2222 (switches: 1, sessions: 2); \
             gw-b: reconnecting in 2.0s (keepalive timeout)"
        );
        board.set(1, State::HostKeyMismatch);
        assert!(board.line().ends_with("; gw-b: host key mismatch: not connecting"));
        assert!(board.watch().borrow()[0].is_serving());
    }
}
