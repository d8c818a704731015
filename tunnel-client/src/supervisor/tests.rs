//! The supervisor on paused time: the unit rules (backoff, uplink order, overlapping attempts)
//! alone, then whole supervisors over the scripted network of [`crate::testing`]: backoff growth,
//! cap and reset, uplink preference, failover and the switch back (make-before-break),
//! overlapping attempts, a session ending while an attempt is pending, host key mismatch pacing,
//! the forward following the local signer, and replicas that do not disturb each other. Times
//! are asserted exactly on the paused clock, or within the bounds the design promises.

use tokio::task::JoinHandle;

use super::*;
use crate::notify::Watchdog;
use crate::testing::{self, Event, FakeNet, Path, HANDSHAKE, RTT};

#[test]
fn backoff_is_jittered_capped_and_resets() {
    let mut b = Backoff::new(BackoffConfig {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(10),
        reset_after: Duration::from_secs(30),
    });
    let first = b.next_delay();
    assert!(
        first >= Duration::from_millis(250) && first <= Duration::from_millis(500),
        "{first:?}"
    );
    let mut last = first;
    for _ in 0..20 {
        last = b.next_delay();
        assert!(last <= Duration::from_secs(10));
    }
    assert!(
        last >= Duration::from_secs(5),
        "capped delays stay near the cap: {last:?}"
    );
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(500));
}

/// Attempts that hang (a handshake frozen mid-way) until `hang_until`, then answer at once.
fn attempts<'a>(
    hang_until: tokio::time::Instant,
    started: &'a std::sync::Mutex<Vec<Duration>>,
    t0: tokio::time::Instant,
) -> impl FnMut() -> Pin<Box<dyn Future<Output = Result<usize, SessionError>> + Send>> + 'a {
    let mut n = 0;
    move || {
        n += 1;
        let id = n;
        let begun = tokio::time::Instant::now();
        started.lock().unwrap().push(begun - t0);
        Box::pin(async move {
            if begun < hang_until {
                // Begun while the link was down: frozen for good.
                std::future::pending::<()>().await;
            }
            Ok(id)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_attempt_every_second_while_the_first_is_stuck_and_the_first_to_finish_wins() {
    let t0 = tokio::time::Instant::now();
    let started = std::sync::Mutex::new(Vec::new());
    // The link comes back 3.5 s in: attempts begun before stay frozen.
    let back = t0 + Duration::from_millis(3500);
    let winner = first_of_overlapping(attempts(back, &started, t0), Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(winner, 5, "the first attempt begun after the link returned");
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(4),
        "within a second of the link's return"
    );
    let started = started.lock().unwrap().clone();
    assert_eq!(started, (0..5).map(Duration::from_secs).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn attempts_in_flight_are_capped_and_failures_end_the_wait() {
    let t0 = tokio::time::Instant::now();
    let started = std::sync::Mutex::new(Vec::new());
    // Never comes back: at most `max` attempts, then it waits on them (their own timeouts
    // end them in real life).
    let never = t0 + Duration::from_secs(3600);
    let wait = first_of_overlapping(attempts(never, &started, t0), Duration::from_secs(1), 3);
    assert!(tokio::time::timeout(Duration::from_secs(30), wait).await.is_err());
    assert_eq!(started.lock().unwrap().len(), 3);
    // When every attempt has failed the wait ends (the backoff takes over), and a host key
    // mismatch seen by any attempt is the error reported, even if later ones failed
    // otherwise: the first attempt (a mismatch) fails after 1.5 s, the others (timeouts)
    // 1 s after they start.
    let mut n = 0u64;
    let e = first_of_overlapping(
        || {
            n += 1;
            let (after, e) = if n == 1 {
                (
                    Duration::from_millis(1500),
                    SessionError::HostKeyMismatch("pinned x, got y".into()),
                )
            } else {
                (Duration::from_millis(1000), SessionError::Timeout("handshake"))
            };
            async move {
                tokio::time::sleep(after).await;
                Err::<(), _>(e)
            }
        },
        Duration::from_secs(1),
        2,
    )
    .await
    .unwrap_err();
    assert!(e.is_host_key_mismatch(), "{e}");
    assert!(n >= 2, "the stuck first attempt was overlapped");
}

#[test]
fn failed_uplink_goes_last() {
    assert_eq!(uplink_order(3, None), vec![0, 1, 2]);
    assert_eq!(uplink_order(3, Some(0)), vec![1, 2, 0]);
    assert_eq!(uplink_order(2, Some(1)), vec![0, 1]);
    assert_eq!(uplink_order(1, Some(0)), vec![0]);
    assert_eq!(uplink_order(2, Some(7)), vec![0, 1]);
}

// ---------------------------------------------------------------------------------------------
// Whole supervisors over the scripted network.

/// Test timings: keepalive 500 ms × 3 (a silent path ends a session 2 s after it went silent),
/// connect_timeout 3 s, backoff 500 ms to 4 s reset after 10 s, uplink_retry 10 s.
const TIMINGS: &str = "connect_timeout: 3s\nkeepalive_interval: 500ms\nkeepalive_max: 3\nuplink_retry: 10s\n\
     host_key_mismatch_retry: 60s\nbackoff: {initial: 500ms, max: 4s, reset_after: 10s}\n";
const TWO_UPLINKS: &str = "uplinks: [{source: 127.0.0.2, name: eth0}, {source: 127.0.0.3, name: lte}]\n";
const ETH0: usize = 0;
const LTE: usize = 1;

fn one_gateway(extra: &str) -> Arc<Settings> {
    testing::settings(&format!(
        "gateways: ['gw:2222']\nhost_key: 'SHA256:abc'\n{TIMINGS}{extra}"
    ))
}

/// One supervisor for replica 0 over its own network, running until dropped.
struct One {
    net: FakeNet,
    board: Board,
    signer: watch::Sender<bool>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for One {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(settings: Arc<Settings>, signer_up: bool) -> One {
    let net = FakeNet::new(&settings, 0);
    let board = Board::new(settings.replicas.iter().map(|r| r.name.clone()).collect());
    let (signer, health) = watch::channel(signer_up);
    let shutdown = CancellationToken::new();
    let (_, mut hearts) = Watchdog::every(None, 1);
    let replica = Arc::new(settings.replicas[0].clone());
    let supervisor = Supervisor {
        settings,
        replica,
        slot: 0,
        connector: net.clone(),
        signer: health,
        board: board.clone(),
    };
    let task = tokio::spawn(supervisor.run(hearts.remove(0), shutdown.clone()));
    One {
        net,
        board,
        signer,
        shutdown,
        task,
    }
}

/// Wait (paused time, at most `within`) until `found` finds something in the events.
async fn wait_event<T>(net: &FakeNet, within: Duration, found: impl Fn(&[(Duration, Event)]) -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = found(&net.events()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}; events: {:#?}",
            net.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first session opened after `after`: (when, id, uplink).
async fn opened_after(net: &FakeNet, after: Duration, within: Duration) -> (Duration, usize, usize) {
    wait_event(net, within, |_| net.opened().into_iter().find(|(at, _, _)| *at > after)).await
}

/// The first connection attempt begun after `after`: (when, address, uplink).
async fn attempt_after(net: &FakeNet, after: Duration, within: Duration) -> (Duration, String, usize) {
    wait_event(net, within, |_| net.attempts().into_iter().find(|a| a.0 > after)).await
}

/// When session `id` ended on the network's side.
async fn ended(net: &FakeNet, id: usize, within: Duration) -> Duration {
    wait_event(net, within, |ev| {
        ev.iter()
            .find_map(|(at, e)| matches!(e, Event::Ended { id: i, .. } if *i == id).then_some(*at))
    })
    .await
}

/// Sleep until `at` on the network's clock.
async fn until(net: &FakeNet, at: Duration) {
    tokio::time::sleep(at.saturating_sub(net.now())).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_jittered_to_the_cap_and_resets_after_a_healthy_session() {
    let one = start(one_gateway(""), true);
    let net = &one.net;
    net.set_address("gw:2222", Path::Refuse);
    // Refused: each attempt fails after one round trip, then waits its backoff: drawn in
    // [d/2, d] with d = 500 ms, 1 s, 2 s, then capped at 4 s.
    wait_event(net, Duration::from_secs(60), |_| {
        (net.attempts().len() >= 8).then_some(())
    })
    .await;
    let at: Vec<Duration> = net.attempts().iter().map(|a| a.0).collect();
    let caps = [500, 1000, 2000, 4000, 4000, 4000, 4000].map(Duration::from_millis);
    for (k, cap) in caps.iter().enumerate() {
        let waited = at[k + 1] - at[k] - RTT;
        assert!(
            waited >= *cap / 2 && waited <= *cap,
            "delay {k}: {waited:?} not in [{:?}, {cap:?}]: {at:?}",
            *cap / 2
        );
    }
    assert!(matches!(&one.board.watch().borrow()[0], State::Unreachable { .. }));

    // A session that stays up less than reset_after (10 s) keeps the grown delay.
    net.set_address("gw:2222", Path::Up);
    let (up_at, first, _) = opened_after(net, Duration::ZERO, Duration::from_secs(10)).await;
    until(net, up_at + Duration::from_secs(5)).await;
    net.set_address("gw:2222", Path::Refuse);
    let end = ended(net, first, Duration::from_secs(1)).await;
    let next = attempt_after(net, end, Duration::from_secs(10)).await;
    assert!(
        next.0 - end >= Duration::from_secs(2),
        "a short session did not reset the backoff: the next delay is drawn from the 4 s cap, \
         waited {:?}",
        next.0 - end
    );
    // One that stays up reset_after does: the next delay is the first one again.
    net.set_address("gw:2222", Path::Up);
    let (up_at, second, _) = opened_after(net, next.0, Duration::from_secs(10)).await;
    until(net, up_at + Duration::from_secs(10)).await;
    net.set_address("gw:2222", Path::Refuse);
    let end = ended(net, second, Duration::from_secs(1)).await;
    let next = attempt_after(net, end, Duration::from_secs(10)).await;
    let waited = next.0 - end;
    assert!(
        waited >= Duration::from_millis(250) && waited <= Duration::from_millis(500),
        "after a healthy session the backoff starts over: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn prefers_the_first_uplink_fails_over_make_before_break_and_switches_back() {
    let one = start(one_gateway(TWO_UPLINKS), true);
    let net = &one.net;
    let (at, first, uplink) = opened_after(net, Duration::ZERO, Duration::from_secs(1)).await;
    assert_eq!((at, uplink), (HANDSHAKE, ETH0), "the preferred uplink, at once");

    // eth0 goes silent. A ping goes out every 250 ms and counts as missed after 500 ms: a
    // session over lte is up within 250 + 500 ms + a handshake, long before the keepalives
    // would end the eth0 one (2 s), and it is up before the old one goes.
    let cut = Duration::from_secs(5);
    until(net, cut).await;
    net.set_uplink(ETH0, Path::Blackhole);
    let (moved, second, uplink) = opened_after(net, cut, Duration::from_secs(3)).await;
    assert_eq!(uplink, LTE);
    let bound = cut + Duration::from_millis(250 + 500) + HANDSHAKE;
    assert!(moved <= bound, "failover at {moved:?}, promised by {bound:?}");
    net.wait_live(Duration::from_secs(2), |live| live == [(second, LTE, true)])
        .await;
    let gone = net.dropped(first).unwrap_or_default();
    assert!(
        gone >= moved,
        "make-before-break: the eth0 session went at {gone:?}, lte was up at {moved:?}"
    );
    assert!(
        !net.events()
            .iter()
            .any(|(_, e)| matches!(e, Event::Ended { id, .. } if *id == second)),
        "no reconnect"
    );

    // While eth0 stays silent, every uplink_retry (counted from when the supervisor started
    // serving) an attempt over it hangs and gives up; the lte session is kept.
    let heal = moved + Duration::from_secs(25);
    until(net, heal).await;
    assert_eq!(net.live(), [(second, LTE, true)]);
    let tries: Vec<Duration> = net
        .attempts()
        .iter()
        .filter(|a| a.0 > moved && a.2 == ETH0)
        .map(|a| a.0)
        .collect();
    let every: Vec<Duration> = (1..=3).map(|k| at + Duration::from_secs(10) * k).collect();
    assert_eq!(tries, every, "an attempt over eth0 every uplink_retry");

    // eth0 heals: back on it within uplink_retry, the new session up before the lte one goes,
    // without a reconnect (still one session opened from scratch).
    net.set_uplink(ETH0, Path::Up);
    let (back, third, uplink) = opened_after(net, heal, Duration::from_secs(11)).await;
    assert_eq!(uplink, ETH0);
    let bound = heal + Duration::from_secs(10) + HANDSHAKE;
    assert!(back <= bound, "switched back at {back:?}, promised by {bound:?}");
    net.wait_live(Duration::from_secs(2), |live| live == [(third, ETH0, true)])
        .await;
    let gone = net.dropped(second).unwrap_or_default();
    assert!(
        gone >= back,
        "make-before-break: lte went at {gone:?}, eth0 was up at {back:?}"
    );
    let state = one.board.watch().borrow()[0].clone();
    assert!(
        matches!(&state, State::Up { uplink, forwarding: true, sessions: 1, switches: 2, .. } if uplink == "eth0"),
        "{state:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_link_failure_the_failed_uplink_goes_last_after_a_gateway_close_the_preferred_first() {
    let one = start(one_gateway(TWO_UPLINKS), true);
    let net = &one.net;
    let (_, first, _) = opened_after(net, Duration::ZERO, Duration::from_secs(1)).await;
    // Both paths die: the failover attempt hangs, the eth0 session ends on its keepalives.
    net.set_uplink(ETH0, Path::Blackhole);
    net.set_uplink(LTE, Path::Blackhole);
    let end = ended(net, first, Duration::from_secs(5)).await;
    // The pending failover attempt over lte (begun before the end) fails at connect_timeout;
    // then the reconnect.
    let retry = attempt_after(net, end, Duration::from_secs(10)).await;
    assert_eq!(
        retry.2,
        LTE,
        "the failed uplink (eth0) is tried last: {:?}",
        net.attempts()
    );
    net.set_uplink(ETH0, Path::Up);
    net.set_uplink(LTE, Path::Up);
    let healed = net.now();
    let (_, second, _) = opened_after(net, healed, Duration::from_secs(10)).await;

    // The gateway closes the session (a restart): says nothing about the path, so eth0 first.
    net.wait_live(Duration::from_secs(20), |live| live.len() == 1 && live[0].1 == ETH0)
        .await;
    let id = net.live()[0].0;
    assert!(id >= second);
    net.set_address("gw:2222", Path::Refuse);
    let end = ended(net, id, Duration::from_secs(1)).await;
    let retry = attempt_after(net, end, Duration::from_secs(10)).await;
    assert_eq!(retry.2, ETH0, "after a gateway close the preferred uplink comes first");
}

#[tokio::test(start_paused = true)]
async fn while_an_attempt_is_frozen_another_starts_every_second_and_the_first_to_finish_wins() {
    let one = start(one_gateway(""), true);
    let net = &one.net;
    let (_, first, _) = opened_after(net, Duration::ZERO, Duration::from_secs(1)).await;
    net.set_address("gw:2222", Path::Blackhole);
    let end = ended(net, first, Duration::from_secs(5)).await;
    // The reconnect after the backoff hangs (the path is silent): connect_timeout is 3 s.
    let a1 = attempt_after(net, end, Duration::from_secs(2)).await.0;
    // The link returns 1.5 s in: the two attempts begun so far stay frozen (their flows are
    // gone), the one begun a second later wins.
    let back = a1 + Duration::from_millis(1500);
    until(net, back).await;
    net.set_address("gw:2222", Path::Up);
    let (up, id, _) = opened_after(net, back, Duration::from_secs(3)).await;
    let since: Vec<Duration> = net.attempts().iter().filter(|a| a.0 >= a1).map(|a| a.0).collect();
    assert_eq!(
        since,
        [a1, a1 + ATTEMPT_EVERY, a1 + ATTEMPT_EVERY * 2],
        "an attempt every second while the others hang"
    );
    assert_eq!(
        up,
        a1 + ATTEMPT_EVERY * 2 + HANDSHAKE,
        "within a second of the link's return"
    );
    net.wait_live(Duration::from_secs(1), |live| live == [(id, 0, true)])
        .await;
    // The frozen attempts were dropped with the winner: nothing else opens later.
    until(net, up + Duration::from_secs(5)).await;
    assert_eq!(net.opened().len(), 2, "{:?}", net.events());
}

#[tokio::test(start_paused = true)]
async fn a_session_ending_while_a_better_uplink_attempt_is_pending() {
    // The attempt succeeds and the gateway closes the old session as the new one takes the
    // route, before the attempt reports back: the new session is adopted, no reconnect.
    let one = start(one_gateway(TWO_UPLINKS), true);
    let net = &one.net;
    net.set_uplink(ETH0, Path::Refuse);
    let (on_lte, lte, uplink) = opened_after(net, Duration::ZERO, Duration::from_secs(2)).await;
    assert_eq!(uplink, LTE);
    net.set_uplink(ETH0, Path::Up);
    let (back, eth0, _) = opened_after(net, on_lte, Duration::from_secs(11)).await;
    let replaced = ended(net, lte, Duration::from_secs(1)).await;
    assert!(
        replaced < back,
        "the gateway closed the lte session before the eth0 attempt reported"
    );
    net.wait_live(Duration::from_secs(1), |live| live == [(eth0, ETH0, true)])
        .await;
    assert_eq!(
        net.attempts().iter().filter(|a| a.0 > on_lte).count(),
        1,
        "no reconnect"
    );
    assert!(matches!(
        one.board.watch().borrow()[0],
        State::Up {
            sessions: 1,
            switches: 1,
            ..
        }
    ));

    // The attempt hangs (eth0 silent) and the lte session ends meanwhile (the gateway closes
    // it): the end waits for the attempt's outcome (a failure at connect_timeout), then the
    // supervisor reconnects, preferred uplink first.
    let one = start(one_gateway(TWO_UPLINKS), true);
    let net = &one.net;
    net.set_uplink(ETH0, Path::Blackhole);
    let (on_lte, lte, _) = opened_after(net, Duration::ZERO, Duration::from_secs(5)).await;
    let pending = wait_event(net, Duration::from_secs(11), |_| {
        net.attempts().into_iter().find(|a| a.0 > on_lte && a.2 == ETH0)
    })
    .await;
    until(net, pending.0 + Duration::from_secs(1)).await;
    net.set_uplink(LTE, Path::Refuse);
    let end = ended(net, lte, Duration::from_secs(1)).await;
    let mut states = one.board.watch();
    states
        .wait_for(|s| matches!(s[0], State::Reconnecting { .. }))
        .await
        .unwrap();
    assert_eq!(
        net.now(),
        pending.0 + Duration::from_secs(3),
        "the end is handled once the pending attempt failed (connect_timeout after it began)"
    );
    let retry = attempt_after(net, end, Duration::from_secs(5)).await;
    assert_eq!(retry.2, ETH0);
    net.set_uplink(ETH0, Path::Up);
    let healed = net.now();
    let (_, _, uplink) = opened_after(net, healed, Duration::from_secs(10)).await;
    assert_eq!(uplink, ETH0);
}

#[tokio::test(start_paused = true)]
async fn a_host_key_mismatch_is_retried_every_host_key_mismatch_retry_and_never_connects() {
    let one = start(
        testing::settings(&format!(
            "gateways: ['gw1:2222', 'gw2:2222']\nhost_key: 'SHA256:abc'\n{TIMINGS}"
        )),
        true,
    );
    let net = &one.net;
    // The first address answers with another key, the second is down: the mismatch sets the
    // pace (60 s), not the backoff.
    net.set_address("gw1:2222", Path::WrongKey);
    net.set_address("gw2:2222", Path::Refuse);
    wait_event(net, Duration::from_secs(200), |_| {
        (net.attempts().len() >= 6).then_some(())
    })
    .await;
    let round = HANDSHAKE + RTT;
    let retry = Duration::from_secs(60);
    let want: Vec<(Duration, String)> = (0..3u32)
        .flat_map(|k| {
            let start = (retry + round) * k;
            [
                (start, "gw1:2222".to_string()),
                (start + HANDSHAKE, "gw2:2222".to_string()),
            ]
        })
        .collect();
    let got: Vec<(Duration, String)> = net.attempts().into_iter().map(|a| (a.0, a.1)).collect();
    assert_eq!(got, want, "both addresses in order, one round a minute");
    assert!(net.opened().is_empty());
    assert_eq!(one.board.watch().borrow()[0], State::HostKeyMismatch);
    // The second address comes up with the right key: the next round connects there.
    net.set_address("gw2:2222", Path::Up);
    let (at, _, _) = opened_after(net, Duration::ZERO, Duration::from_secs(61)).await;
    assert_eq!(at, (retry + round) * 3 + HANDSHAKE * 2);
}

#[tokio::test(start_paused = true)]
async fn the_forward_follows_the_local_signer() {
    let mut one = start(one_gateway(""), false);
    let net = &one.net;
    let (_, id, _) = opened_after(net, Duration::ZERO, Duration::from_secs(1)).await;
    assert_eq!(
        net.live(),
        [(id, 0, false)],
        "connected without the forward while the signer is down"
    );
    one.signer.send_replace(true);
    net.wait_live(Duration::from_millis(100), |live| live == [(id, 0, true)])
        .await;
    assert!(one.board.watch().borrow()[0].is_serving());
    one.signer.send_replace(false);
    net.wait_live(Duration::from_millis(100), |live| live == [(id, 0, false)])
        .await;
    assert!(
        one.board.line().starts_with("forward withdrawn"),
        "{}",
        one.board.line()
    );
    one.shutdown.cancel();
    (&mut one.task).await.unwrap();
    assert!(net.events().iter().any(|(_, e)| *e
        == Event::Closed {
            id,
            why: "tunnel client stopping"
        }));
}

#[tokio::test(start_paused = true)]
async fn replicas_do_not_disturb_each_other() {
    let settings = testing::settings(&format!(
        "replicas:\n  - {{name: gw-a, addresses: ['a:2222']}}\n  - {{name: gw-b, addresses: ['b1:2222', 'b2:2222']}}\n\
         host_key: 'SHA256:abc'\n{TIMINGS}"
    ));
    let (a, b) = (FakeNet::new(&settings, 0), FakeNet::new(&settings, 1));
    let board = Board::new(vec!["gw-a".into(), "gw-b".into()]);
    let shutdown = CancellationToken::new();
    let local_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe_local = {
        let local_up = Arc::clone(&local_up);
        move || {
            let up = local_up.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("refused".to_string())
                }
            }
        }
    };
    let running = tokio::spawn(run_with(
        Arc::clone(&settings),
        board.clone(),
        vec![a.clone(), b.clone()],
        probe_local,
        shutdown.clone(),
    ));
    let (_, a1, _) = opened_after(&a, Duration::ZERO, Duration::from_secs(1)).await;
    let (_, b1, _) = opened_after(&b, Duration::ZERO, Duration::from_secs(1)).await;
    let mut states = board.watch();
    states.wait_for(|s| s.iter().all(State::is_serving)).await.unwrap();

    // gw-a's path goes silent: its session ends, it reconnects with backoff; gw-b's session
    // is untouched the whole time (same session, forwarding, no attempt, no forward change).
    let cut = a.now();
    a.set_address("a:2222", Path::Blackhole);
    ended(&a, a1, Duration::from_secs(3)).await;
    states
        .wait_for(|s| matches!(s[0], State::Reconnecting { .. }))
        .await
        .unwrap();
    assert!(board.line().starts_with("gw-a: reconnecting in "), "{}", board.line());
    assert!(
        board.line().contains("; gw-b: serving via default to b1:2222"),
        "{}",
        board.line()
    );
    until(&a, cut + Duration::from_secs(20)).await;
    a.set_address("a:2222", Path::Up);
    let healed = a.now();
    opened_after(&a, healed, Duration::from_secs(5)).await;
    states.wait_for(|s| s.iter().all(State::is_serving)).await.unwrap();
    assert_eq!(b.live(), [(b1, 0, true)], "gw-b kept its session");
    assert_eq!(b.attempts().len(), 1, "gw-b never reconnected: {:?}", b.events());
    // Its forward was asked once, on the adopted session, and never moved.
    let moves: Vec<_> = b
        .events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Forward { .. } | Event::Closed { .. }))
        .collect();
    assert!(
        matches!(moves[..], [(_, Event::Forward { on: true, .. })]),
        "gw-b's forward never moved: {:?}",
        b.events()
    );

    // The local signer is shared: when it stops answering (fall 2 at 1 s), both withdraw.
    local_up.store(false, std::sync::atomic::Ordering::Relaxed);
    states
        .wait_for(|s| s.iter().all(|s| matches!(s, State::Up { forwarding: false, .. })))
        .await
        .unwrap();

    // Shutdown closes both.
    shutdown.cancel();
    running.await.unwrap().unwrap();
    for net in [&a, &b] {
        assert!(net.live().is_empty(), "{:?}", net.events());
    }
}
