//! The FreeSWITCH backend end to end: the real binary and HTTP API, with a test FreeSWITCH
//! (tests/common/freeswitch.rs) that replays and follows the captured ESL transcripts. One test
//! per outcome; each checks the callback and what "FreeSWITCH" received.

mod common;

use common::freeswitch::{freeswitch_config, Peer};
use common::{db_value, Receiver, Server, FAST};
use serde_json::{json, Value};

async fn start(peer: &Peer, settings: &str) -> Server {
    let server = Server::start(&freeswitch_config(&[peer.addr], "", settings, FAST)).await;
    // Calls are refused until the ESL connection is up.
    peer.wait_until(10, "callcode subscribes", |p| {
        !p.sent_containing("event plain").is_empty()
    })
    .await;
    server
}

/// Sends one VoicePassword request with a callback; returns (reply, callback).
async fn call(server: &Server, receiver: &Receiver, mut body: Value) -> (Value, Value) {
    body["callback_url"] = json!(receiver.url());
    let (status, reply) = server.send(body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"], "ok", "{reply}");
    let cb = receiver.next(20).await.body;
    assert_eq!(cb["id"], reply["id"], "callback for another request: {cb}");
    (reply, cb)
}

fn id_of(reply: &Value) -> i64 {
    reply["id"].as_str().unwrap().parse().unwrap()
}

async fn outcome(server: &Server, id: i64) -> String {
    db_value(
        &server.db_path(),
        "SELECT outcome FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap_or_default()
}

/// FreeSWITCH's own events ended the call (callcode did not have to close it on its timer).
async fn assert_confirmed(server: &Server, id: i64) {
    let v = server.call_record(id, "hangup_unconfirmed").await;
    assert_eq!(
        v.as_deref(),
        Some("0"),
        "verification {id}: hang-up not confirmed"
    );
}

/// The channel callcode originated for `number`.
fn channel(peer: &Peer, number: &str) -> String {
    peer.originated()
        .into_iter()
        .find(|(n, _)| n == number)
        .map(|(_, u)| u)
        .unwrap_or_else(|| panic!("{number} was not originated"))
}

#[tokio::test]
async fn answered_voice_with_repeat_plays_every_prompt_in_order_then_hangs_up() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000010", "voice": {"code": "4821", "repeat": "1"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    let id = id_of(&reply);
    assert_eq!(outcome(&server, id).await, "answered");
    assert_confirmed(&server, id).await;
    let uuid = channel(&peer, "79990000010");
    let dir = "/usr/share/callcode/sounds/ru";
    let one_round: Vec<String> = ["your_code_is", "4", "8", "2", "1"]
        .iter()
        .map(|s| format!("{dir}/{s}.wav"))
        .collect();
    let expected: Vec<String> = one_round.iter().chain(&one_round).cloned().collect();
    assert_eq!(peer.playbacks(&uuid), expected);
    let played = server.call_record(id, "prompts_played").await;
    assert_eq!(played.as_deref(), Some("10"));
    // Hung up after answer with a cause name, over sendmsg (fact 14).
    let hangups = peer.sent_containing(&format!("sendmsg {uuid}\ncall-command: hangup"));
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert!(hangups[0].ends_with("hangup-cause: NORMAL_CLEARING"));
    // One subscription (fact 15), forwarding reports included (README, "How forwarding and
    // redirection show up").
    let subscriptions = peer.sent_containing("event ");
    assert_eq!(
        subscriptions,
        ["event plain CHANNEL_CREATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB HEARTBEAT CUSTOM sofia::notify_watched_header"]
    );
    // The originate carried our ids, the ANI, the watched headers and the early-media choice.
    let originate = &peer.sent_containing("bgapi originate")[0];
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap();
    for part in [
        format!("origination_uuid={uuid}"),
        format!("origination_caller_id_number={ani}"),
        format!("callcode_verification_id={id}"),
        "sip_watch_headers=^^:Diversion:History-Info:Contact".to_string(),
        "ignore_early_media=true".to_string(),
        "}sofia/gateway/carrier/79990000010 &park()".to_string(),
        "\nJob-UUID: ".to_string(),
    ] {
        assert!(originate.contains(&part), "{part} missing in {originate}");
    }
}

#[tokio::test]
async fn flash_call_is_cancelled_after_ringing_and_counts_as_delivered() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000070", "flashcall": {"code": "0427"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(outcome(&server, id_of(&reply)).await, "delivered");
    assert_confirmed(&server, id_of(&reply)).await;
    let uuid = channel(&peer, "79990000070");
    assert_eq!(
        peer.sent_containing("uuid_kill"),
        vec![format!("api uuid_kill {uuid} ORIGINATOR_CANCEL")]
    );
    let originate = &peer.sent_containing("bgapi originate")[0];
    assert!(
        originate.contains("origination_caller_id_number=74951090427"),
        "{originate}"
    );
}

/// Voice calls whose capture ends on its own: (dialled, VoicePassword state, stored outcome).
#[tokio::test]
async fn failures_map_through_the_cause_table() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    for (number, state, stored) in [
        ("79990000020", "BUSY", "busy"),
        ("79990000030", "NO ANSWER", "no_answer"),
        ("79990000040", "FAIL", "rejected"),
        ("79990000041", "FAIL", "rejected"),
        ("79990000044", "FAIL", "invalid_number"),
        // -45-: a locally made 503 is "unreachable", not the billing failure its q850 41 says.
        ("79990000045", "FAIL", "unreachable"),
        ("79990000062", "BUSY", "busy"),
    ] {
        let (reply, cb) = call(&server, &receiver, json!({"number": number, "voice": {}})).await;
        assert_eq!(cb["state"], state, "{number}: {cb}");
        assert_eq!(outcome(&server, id_of(&reply)).await, stored, "{number}");
        assert_confirmed(&server, id_of(&reply)).await;
        let uuid = channel(&peer, number);
        // The far end (or FreeSWITCH's own timer) ended these: callcode sent no hang-up.
        assert!(
            peer.sent_containing(&format!("uuid_kill {uuid}"))
                .is_empty(),
            "{number}"
        );
        assert!(peer.playbacks(&uuid).is_empty(), "{number}");
    }
}

#[tokio::test]
async fn busy_records_the_sip_status_and_cause() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000020", "voice": {}}),
    )
    .await;
    assert_eq!(cb["state"], "BUSY");
    let id = id_of(&reply);
    let q850 = server.call_record(id, "q850").await;
    assert_eq!(q850.as_deref(), Some("17"));
    let sip = server.call_record(id, "sip_status").await;
    assert_eq!(sip.as_deref(), Some("486"));
}

async fn passwordcall(server: &Server, body: Value) -> Value {
    let (s, v) = server
        .post_raw(
            "/api/protected/api/auth/passwordcall",
            Some("Bearer mcn-token"),
            "application/json",
            body.to_string(),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

fn mcn_account(url: &str) -> String {
    format!(
        "[[accounts]]\nid = \"400004\"\napi_keys = [\"mcn-token\"]\nbalance = \"10.00\"\nwebhook_url = \"{url}\"\n"
    )
}

#[tokio::test]
async fn forwarding_by_181_and_by_302_is_caught_by_the_redirect_guard() {
    let peer = Peer::start().await;
    let receiver = Receiver::start(0).await;
    let server = Server::start(&freeswitch_config(
        &[peer.addr],
        &mcn_account(&receiver.url()),
        "",
        FAST,
    ))
    .await;
    peer.wait_until(10, "subscribe", |p| {
        !p.sent_containing("event plain").is_empty()
    })
    .await;
    for (n, number) in ["79990000053", "79990000051"].into_iter().enumerate() {
        let r = passwordcall(
            &server,
            json!({"phone_number": number, "is_with_redirect": true}),
        )
        .await;
        assert_eq!(r["is_redirect"], true, "{number}: {r}");
        let cb = receiver.next(20).await.body;
        assert_eq!(cb["final_status"], "CANCEL", "{number}: {cb}");
        assert_eq!(cb["reason"], "redirected", "{number}: {cb}");
        assert_eq!(cb["duration"], 0, "{number}: no code was spoken");
        // Verifications are numbered from 1 in a fresh database.
        assert_confirmed(&server, n as i64 + 1).await;
        let uuid = channel(&peer, number);
        assert!(peer.playbacks(&uuid).is_empty(), "{number}");
    }
    // Without the guard the forwarded call is answered, and the target is recorded.
    let (reply, cb) = {
        let mut body = json!({"number": "79990000053", "voice": {}});
        body["callback_url"] = json!(receiver.url());
        let (s, reply) = server.send(body).await;
        assert_eq!(s, 200);
        let cb = loop {
            let cb = receiver.next(20).await.body;
            if cb["id"] == reply["id"] {
                break cb;
            }
        };
        (reply, cb)
    };
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    let to = server.call_record(id_of(&reply), "redirect_to").await;
    assert_eq!(to.as_deref(), Some("79990003344"));
}

#[tokio::test]
async fn remote_hangup_during_playback_ends_the_call_cleanly() {
    use common::freeswitch::{BYE_AT_PROMPT, BYE_DURING_PLAYBACK};
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let number = format!("7999000{BYE_DURING_PLAYBACK}");
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": number, "voice": {"code": "4821", "repeat": "1"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    let id = id_of(&reply);
    assert_eq!(outcome(&server, id).await, "answered");
    assert_confirmed(&server, id).await;
    // The far end hung up while the third prompt played: nothing after it was asked for.
    let uuid = channel(&peer, &number);
    let dir = "/usr/share/callcode/sounds/ru";
    let expected: Vec<String> = ["your_code_is", "4", "8"][..BYE_AT_PROMPT]
        .iter()
        .map(|s| format!("{dir}/{s}.wav"))
        .collect();
    assert_eq!(peer.playbacks(&uuid), expected);
    // The far end hung up: callcode neither cancels nor clears the channel.
    assert!(peer
        .sent_containing(&format!("uuid_kill {uuid}"))
        .is_empty());
    assert!(peer
        .sent_containing(&format!("sendmsg {uuid}\ncall-command: hangup"))
        .is_empty());
    assert!(receiver.quiet_for(500).await, "a second callback");
    let played_db = server.call_record(id, "prompts_played").await;
    assert_eq!(played_db, Some((BYE_AT_PROMPT - 1).to_string()));
}

#[tokio::test]
async fn gateway_down_fails_at_once_without_a_channel() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000609", "voice": {}}),
    )
    .await;
    assert_eq!(cb["state"], "FAIL", "{cb}");
    assert_eq!(outcome(&server, id_of(&reply)).await, "unreachable");
    assert!(peer.sent_containing("uuid_kill").is_empty());
    assert!(receiver.quiet_for(500).await, "reported twice");
}

#[tokio::test]
async fn three_interleaved_calls_each_get_their_own_outcome() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let bodies = [
        json!({"number": "79990000020", "voice": {}, "callback_url": receiver.url()}),
        json!({"number": "79990000010", "voice": {"code": "5566"}, "callback_url": receiver.url()}),
        json!({"number": "79990000070", "flashcall": {"code": "1234"}, "callback_url": receiver.url()}),
    ];
    let (a, b, c) = tokio::join!(
        server.send(bodies[0].clone()),
        server.send(bodies[1].clone()),
        server.send(bodies[2].clone())
    );
    let ids: Vec<Value> = [a, b, c]
        .into_iter()
        .map(|(s, r)| {
            assert_eq!(s, 200, "{r}");
            r["id"].clone()
        })
        .collect();
    let cbs = receiver.collect(3, 20).await;
    let state_of = |id: &Value| {
        cbs.iter()
            .find(|r| &r.body["id"] == id)
            .map(|r| r.body["state"].clone())
            .unwrap()
    };
    assert_eq!(state_of(&ids[0]), "BUSY");
    assert_eq!(state_of(&ids[1]), "ANSWERED");
    assert_eq!(state_of(&ids[2]), "ANSWERED");
    for id in &ids {
        assert_confirmed(&server, id.as_str().unwrap().parse().unwrap()).await;
    }
    assert_eq!(peer.playbacks(&channel(&peer, "79990000010")).len(), 5);
    assert_eq!(peer.sent_containing("uuid_kill").len(), 1);
    assert_eq!(peer.originated().len(), 3);
}

#[tokio::test]
async fn socket_cut_mid_call_reconnects_and_reconciles() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    // Two voice calls ringing (the flash-cancel capture rings until cancelled).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, r) = server
            .send(json!({"number": "79990000070", "voice": {}, "callback_url": receiver.url()}))
            .await;
        assert_eq!(s, 200, "{r}");
        ids.push(r["id"].clone());
    }
    peer.wait_until(5, "both calls originated", |p| p.originated().len() == 2)
        .await;
    let channels: Vec<String> = peer.originated().into_iter().map(|(_, u)| u).collect();
    peer.wait_until(5, "both calls ringing", |p| {
        channels.iter().all(|c| p.emitted(c, "CHANNEL_PROGRESS"))
    })
    .await;
    // The first channel ends while the socket is down; the second survives.
    peer.cut(&channels[..1]);
    let cbs = receiver.collect(2, 20).await;
    let state_of = |id: &Value| {
        cbs.iter()
            .find(|r| &r.body["id"] == id)
            .map(|r| r.body["state"].clone())
            .unwrap()
    };
    let first = if channels[0] == channel_of(&server, &ids[0]).await {
        0
    } else {
        1
    };
    assert_eq!(state_of(&ids[first]), "CANCEL", "lost channel");
    assert_eq!(
        outcome(&server, ids[first].as_str().unwrap().parse().unwrap()).await,
        "interrupted"
    );
    assert_eq!(state_of(&ids[1 - first]), "NO ANSWER", "surviving channel");
    assert_eq!(peer.auths(), 2, "one reconnect");
    for c in &channels {
        assert_eq!(
            peer.sent_containing(&format!("api uuid_exists {c}")).len(),
            1
        );
    }
    // The survivor was cancelled over the new connection when its answer time ran out.
    let kills = peer.sent_containing("uuid_kill");
    assert_eq!(
        kills,
        vec![format!("api uuid_kill {} ORIGINATOR_CANCEL", channels[1])]
    );
}

async fn channel_of(server: &Server, id: &Value) -> String {
    db_value(
        &server.db_path(),
        "SELECT call_id FROM verifications WHERE id = ?",
        id.as_str().unwrap().parse().unwrap(),
    )
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn answered_call_handed_to_the_outbound_socket_plays_over_it() {
    let peer = Peer::start().await;
    let server = start(
        &peer,
        "answered_calls = \"socket\"\noutbound_listen = \"127.0.0.1:0\"",
    )
    .await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000095", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(outcome(&server, id_of(&reply)).await, "answered");
    let originate = &peer.sent_containing("bgapi originate")[0];
    // Quoted, or FreeSWITCH runs the socket in static mode (-03-).
    assert!(
        originate.contains("}sofia/gateway/carrier/79990000095 '&socket(127.0.0.1:"),
        "{originate}"
    );
    assert!(originate.contains(" async full)'\n"), "{originate}");
    let out = peer.outbound_commands();
    assert_eq!(out[..3], ["connect", "myevents", "linger"], "{out:#?}");
    let plays: Vec<String> = out
        .iter()
        .filter(|c| c.starts_with("sendmsg\ncall-command: execute\nexecute-app-name: playback"))
        .map(|c| c.lines().nth(3).unwrap().to_string())
        .collect();
    let dir = "execute-app-arg: /usr/share/callcode/sounds/ru";
    assert_eq!(
        plays,
        ["your_code_is", "4", "8", "2", "1"].map(|s| format!("{dir}/{s}.wav"))
    );
    assert_eq!(
        out.last().unwrap(),
        "sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING"
    );
    // Nothing was played or hung up over the inbound connection.
    let uuid = channel(&peer, "79990000095");
    assert!(peer.playbacks(&uuid).is_empty());
    assert!(peer.sent_containing(&format!("sendmsg {uuid}")).is_empty());
    assert!(receiver.quiet_for(300).await);
    assert!(
        !server.log().contains("quote the socket"),
        "async full mode expected"
    );
}

#[tokio::test]
async fn calls_spread_over_connected_servers_and_skip_a_dead_one() {
    let (a, b) = (Peer::start().await, Peer::start().await);
    // A third address where nothing listens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = Server::start(&freeswitch_config(&[a.addr, dead, b.addr], "", "", FAST)).await;
    for p in [&a, &b] {
        p.wait_until(10, "subscribe", |p| {
            !p.sent_containing("event plain").is_empty()
        })
        .await;
    }
    let receiver = Receiver::start(0).await;
    // Ringing voice calls stay in flight until their answer time runs out.
    for _ in 0..4 {
        let (s, r) = server
            .send(json!({"number": "79990000070", "voice": {}, "callback_url": receiver.url()}))
            .await;
        assert_eq!(s, 200, "{r}");
    }
    let cbs = receiver.collect(4, 20).await;
    assert!(cbs.iter().all(|c| c.body["state"] == "NO ANSWER"));
    assert_eq!(a.originated().len(), 2, "{:?}", a.originated());
    assert_eq!(b.originated().len(), 2, "{:?}", b.originated());
}

#[tokio::test]
async fn a_wrong_password_keeps_the_backend_unavailable() {
    let peer = Peer::start().await;
    let config = freeswitch_config(&[peer.addr], "", "", FAST).replace(
        &format!("password = \"{}\"", common::freeswitch::PASSWORD),
        "password = \"wrong\"",
    );
    let server = Server::start(&config).await;
    // Refused (fact 2), retried with backoff, never subscribed.
    peer.wait_until(10, "two auth attempts", |p| {
        p.sent_containing("auth wrong").len() >= 2
    })
    .await;
    assert_eq!(peer.auths(), 0);
    assert!(peer.sent_containing("event plain").is_empty());
    let (status, reply) = server
        .send(json!({"number": "79990000010", "voice": {}}))
        .await;
    assert_ne!(status, 200, "{reply}");
    assert!(peer.originated().is_empty());
}

#[tokio::test]
async fn an_idle_connection_is_probed_and_a_silent_one_replaced() {
    let peer = Peer::start().await;
    let _server = start(&peer, "ping_interval_ms = 100\nliveness_timeout_ms = 400").await;
    peer.wait_until(10, "a status probe", |p| {
        !p.sent_containing("api status").is_empty()
    })
    .await;
    assert_eq!(peer.auths(), 1, "probes answered: no reconnect");
    peer.mute(true);
    // Silence past the liveness timeout: callcode gives the connection up and dials again.
    peer.wait_until(10, "a second connection", |p| {
        p.received()
            .iter()
            .any(|r| r.connection >= 2 && r.text.starts_with("auth "))
    })
    .await;
    peer.mute(false);
    peer.wait_until(10, "a reconnect after silence", |p| p.auths() >= 2)
        .await;
}

#[tokio::test]
async fn calls_of_a_server_that_stays_away_are_closed_as_interrupted() {
    let peer = Peer::start().await;
    let server = start(&peer, "lost_after_ms = 300").await;
    let receiver = Receiver::start(0).await;
    let (s, r) = server
        .send(json!({"number": "79990000070", "voice": {}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(s, 200, "{r}");
    peer.wait_until(5, "ringing", |p| p.originated().len() == 1)
        .await;
    peer.stop();
    let cb = receiver.next(10).await.body;
    assert_eq!(cb["id"], r["id"]);
    assert_eq!(cb["state"], "CANCEL", "{cb}");
    assert_eq!(outcome(&server, id_of(&r)).await, "interrupted");
    // While it is away the backend takes no calls.
    let (status, reply) = server
        .send(json!({"number": "79990000010", "voice": {}}))
        .await;
    assert_ne!(status, 200, "{reply}");
}

#[tokio::test]
async fn shutdown_says_exit_and_closes_the_outbound_listener() {
    let peer = Peer::start().await;
    let server = start(
        &peer,
        "answered_calls = \"socket\"\noutbound_listen = \"127.0.0.1:0\"",
    )
    .await;
    let receiver = Receiver::start(0).await;
    let (_, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000095", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED");
    let originate = &peer.sent_containing("bgapi originate")[0];
    let listen: std::net::SocketAddr = originate
        .split("'&socket(")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(listen).await.is_ok());
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(peer.sent_containing("exit"), vec!["exit".to_string()]);
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
}

#[tokio::test]
async fn outbound_sessions_beyond_the_limit_are_refused() {
    let peer = Peer::start().await;
    let server = start(
        &peer,
        "answered_calls = \"socket\"\noutbound_listen = \"127.0.0.1:0\"\noutbound_max_sessions = 1",
    )
    .await;
    let receiver = Receiver::start(0).await;
    let body =
        json!({"number": "79990000095", "voice": {"code": "4821"}, "callback_url": receiver.url()});
    let (a, b) = tokio::join!(server.send(body.clone()), server.send(body));
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 200);
    let cbs = receiver.collect(2, 20).await;
    let mut states: Vec<String> = cbs
        .iter()
        .map(|c| c.body["state"].as_str().unwrap().to_string())
        .collect();
    states.sort();
    // The refused session's call is never handed over, so it is not answered for callcode.
    assert_eq!(states, ["ANSWERED", "NO ANSWER"]);
    let connects = peer
        .outbound_commands()
        .iter()
        .filter(|c| *c == "connect")
        .count();
    assert_eq!(connects, 1, "{:#?}", peer.outbound_commands());
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("callcode_freeswitch_outbound_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_shutdown_notice_is_followed_by_a_reconnect_and_the_call_goes_on() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    let (s, r) = server
        .send(json!({"number": "79990000070", "voice": {}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(s, 200, "{r}");
    peer.wait_until(5, "ringing", |p| p.originated().len() == 1)
        .await;
    let uuid = channel(&peer, "79990000070");
    peer.restart();
    peer.wait_until(10, "a reconnect", |p| p.auths() == 2).await;
    let cb = receiver.next(10).await.body;
    assert_eq!(cb["state"], "NO ANSWER", "{cb}");
    assert_eq!(
        peer.sent_containing(&format!("api uuid_exists {uuid}"))
            .len(),
        1
    );
    assert_confirmed(&server, id_of(&r)).await;
    assert!(
        server.log().contains("FreeSWITCH disconnected us"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_socket_session_in_static_mode_still_plays_and_is_reported() {
    // -03-/-97-: what FreeSWITCH does with an unquoted socket argument (linger and api refused,
    // replies held back until each app ends). callcode quotes it; should a dialplan not, the
    // call still works and the log says what to fix.
    let peer = Peer::start().await;
    let server = start(
        &peer,
        "answered_calls = \"socket\"\noutbound_listen = \"127.0.0.1:0\"",
    )
    .await;
    let receiver = Receiver::start(0).await;
    let (_, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000097", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    let plays = peer
        .outbound_commands()
        .iter()
        .filter(|c| c.contains("execute-app-name: playback"))
        .count();
    assert_eq!(plays, 5);
    assert!(
        server
            .log()
            .contains("quote the socket application's argument"),
        "{}",
        server.log()
    );
}

/// A verification stored but never dialled before a crash is dialled at the restart once the
/// event socket is up: not failed for a connection that was still being made.
#[tokio::test]
async fn an_undialled_verification_is_dialled_after_a_restart_once_connected() {
    let peer = Peer::start().await;
    let server = start(&peer, "connect_timeout_ms = 500").await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000020", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "BUSY");
    let id = id_of(&reply);
    let originates = peer.sent_containing("bgapi originate").len();
    let crashed = server.crash();
    let db = crashed.db.clone();
    crashed.rewind_to_undialled().await;
    // FreeSWITCH is slow to accept the login after the restart: the first connection of the new
    // process gets no answer to `auth`, gives up after connect_timeout_ms and tries again.
    peer.mute(true);
    let _server = crashed.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    peer.mute(false);
    let cb = receiver.next(20).await.body;
    assert_eq!(cb["id"], reply["id"]);
    assert_eq!(cb["state"], "BUSY", "dialled again, not failed: {cb}");
    assert_eq!(
        db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("busy")
    );
    assert_eq!(
        peer.sent_containing("bgapi originate").len(),
        originates + 1,
        "one more originate, on the new connection"
    );
}

/// A call cut by a crash is not left ringing (or parked) on FreeSWITCH: at the restart callcode
/// kills its channel by its UUID once the event socket is up, and reports it interrupted.
#[tokio::test]
async fn a_call_cut_by_a_crash_is_released_on_freeswitch_at_the_restart() {
    let peer = Peer::start().await;
    let server = start(&peer, "").await;
    let receiver = Receiver::start(0).await;
    // 0070 rings until it is killed (-70-).
    let (status, reply) = server
        .send(json!({"number": "79990000070", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200, "{reply}");
    peer.wait_until(10, "the call rings", |p| p.originated().len() == 1)
        .await;
    let crashed = server.crash();
    let db = crashed.db.clone();
    let id = id_of(&reply);
    let uuid = db_value(&db, "SELECT call_id FROM verifications WHERE id = ?", id)
        .await
        .unwrap();
    crashed.mark_dialled(id).await;
    assert!(
        peer.sent_containing("uuid_kill").is_empty(),
        "not killed before the crash"
    );
    let _server = crashed.restart().await;
    let kill = format!("api uuid_kill {uuid} NORMAL_CLEARING");
    peer.wait_until(10, "the orphan channel is killed", |p| {
        !p.sent_containing(&kill).is_empty()
    })
    .await;
    let cb = receiver.next(20).await.body;
    assert_eq!(cb["id"], reply["id"]);
    assert_eq!(
        db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("interrupted")
    );
}
