//! Every viewer and host feature over real WebSocket connections, in both
//! encodings, with clients of the other encoding in the same room.

mod common;

use common::*;
use flashcast_wire::{Encoding, ErrorCode, EventBody, Role, ServerMsg};
use serde_json::json;

fn other(enc: Encoding) -> Encoding {
    match enc {
        Encoding::MsgPack => Encoding::Json,
        Encoding::Json => Encoding::MsgPack,
    }
}

#[tokio::test]
async fn chat_reactions_and_viewer_count_reach_everyone() {
    let srv = TestServer::start(&[]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let mut viewer = srv
            .joined(enc, "demo", &format!("v-{enc:?}"), Role::Viewer)
            .await;
        let mut guest = srv.guest(other(enc)).await;

        viewer.chat("안녕하세요 👋 family: 👨‍👩‍👧").await;
        for c in [&mut host, &mut viewer, &mut guest] {
            let e = c
                .wait_event(
                    |e| matches!(&e.body, EventBody::Chat { text, .. } if text.starts_with("안녕")),
                )
                .await;
            match e.body {
                EventBody::Chat {
                    user,
                    text,
                    deleted,
                } => {
                    assert_eq!(user.id.as_str(), format!("v-{enc:?}"));
                    assert_eq!(user.role, Role::Viewer);
                    assert_eq!(text, "안녕하세요 👋 family: 👨‍👩‍👧");
                    assert!(!deleted);
                }
                _ => unreachable!(),
            }
        }

        for _ in 0..3 {
            guest.send(json!({"type": "react", "kind": "heart"})).await;
        }
        guest.send(json!({"type": "react", "kind": "fire"})).await;
        host.read_until(|c| {
            c.reactions.get("heart") == Some(&3) && c.reactions.get("fire") == Some(&1)
        })
        .await;
        // Reactions are aggregated, never sequenced.
        assert!(host
            .events
            .iter()
            .all(|e| !matches!(e.body, EventBody::Chat { ref text, .. } if text.is_empty())));

        host.read_until(|c| c.viewers == Some(3)).await;
        guest.send(json!({"type": "leave"})).await;
        guest.expect_close(1000).await;
        host.read_until(|c| c.viewers == Some(2)).await;
        viewer.send(json!({"type": "leave"})).await;
        host.send(json!({"type": "leave"})).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn polls_and_quizzes_count_one_vote_each_and_name_first_correct() {
    let srv = TestServer::start(&[]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let mut v1 = srv.joined(enc, "demo", "v1", Role::Viewer).await;
        let mut v2 = srv.joined(other(enc), "demo", "v2", Role::Viewer).await;
        let mut v3 = srv.joined(enc, "demo", "v3", Role::Viewer).await;

        v1.send(json!({"type": "open_poll", "question": "x?", "options": ["a", "b"], "ref": 4}))
            .await;
        assert_eq!(v1.expect_error(ErrorCode::Forbidden).await, Some(4));

        host.send(json!({
            "type": "open_poll", "question": "Which colour sells out first?",
            "options": ["red", "blue", "green"], "correct": 1, "winners": 2
        }))
        .await;
        let opened = v1
            .wait_event(|e| matches!(e.body, EventBody::PollOpened { .. }))
            .await;
        let EventBody::PollOpened { poll } = opened.body else {
            unreachable!()
        };
        assert!(poll.quiz);
        assert_eq!(poll.options, vec!["red", "blue", "green"]);
        let id = poll.id.0;

        v1.send(json!({"type": "vote", "poll_id": id, "option": 1}))
            .await;
        host.read_until(|c| c.tallies.last() == Some(&vec![0, 1, 0]))
            .await;
        v2.send(json!({"type": "vote", "poll_id": id, "option": 0}))
            .await;
        host.read_until(|c| c.tallies.last() == Some(&vec![1, 1, 0]))
            .await;
        v3.send(json!({"type": "vote", "poll_id": id, "option": 1}))
            .await;
        host.read_until(|c| c.tallies.last() == Some(&vec![1, 2, 0]))
            .await;
        v1.send(json!({"type": "vote", "poll_id": id, "option": 2, "ref": 9}))
            .await;
        assert_eq!(v1.expect_error(ErrorCode::AlreadyVoted).await, Some(9));
        v2.send(json!({"type": "vote", "poll_id": id + 100, "option": 0}))
            .await;
        v2.expect_error(ErrorCode::NotFound).await;

        // A late joiner sees the open poll with its counts in the snapshot.
        let mut late = srv.client(enc).await;
        match late.join("demo", None, None).await {
            ServerMsg::Joined { state, .. } => {
                assert_eq!(
                    state.poll.expect("open poll in snapshot").counts,
                    vec![1, 2, 0]
                )
            }
            _ => unreachable!(),
        }

        host.send(json!({"type": "close_poll", "poll_id": id}))
            .await;
        for c in [&mut v2, &mut late] {
            let closed = c
                .wait_event(|e| matches!(e.body, EventBody::PollClosed { .. }))
                .await;
            let EventBody::PollClosed {
                counts,
                correct,
                winners,
                ..
            } = closed.body
            else {
                unreachable!()
            };
            assert_eq!(counts, vec![1, 2, 0]);
            assert_eq!(correct, Some(1));
            let names: Vec<_> = winners.iter().map(|w| w.id.as_str().to_string()).collect();
            assert_eq!(names, vec!["v1", "v3"]);
        }
        for c in [&mut host, &mut v1, &mut v2, &mut v3, &mut late] {
            c.send(json!({"type": "leave"})).await;
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn questions_are_asked_upvoted_answered_and_pinned() {
    let srv = TestServer::start(&[]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let mut v1 = srv.joined(enc, "demo", "v1", Role::Viewer).await;
        let mut v2 = srv.joined(other(enc), "demo", "v2", Role::Viewer).await;

        v1.send(json!({"type": "ask", "text": "Does it come in XL?"}))
            .await;
        let asked = host
            .wait_event(|e| matches!(e.body, EventBody::QuestionAsked { .. }))
            .await;
        let EventBody::QuestionAsked { question } = asked.body else {
            unreachable!()
        };
        assert_eq!(question.text, "Does it come in XL?");
        let qid = question.id.0;

        v2.send(json!({"type": "upvote", "question_id": qid})).await;
        let up = host
            .wait_event(|e| matches!(e.body, EventBody::QuestionUpvoted { .. }))
            .await;
        assert!(matches!(
            up.body,
            EventBody::QuestionUpvoted { upvotes: 1, .. }
        ));
        v2.send(json!({"type": "upvote", "question_id": qid})).await;
        v2.expect_error(ErrorCode::AlreadyUpvoted).await;
        v1.send(json!({"type": "answer", "question_id": qid, "text": "no"}))
            .await;
        v1.expect_error(ErrorCode::Forbidden).await;

        v2.send(json!({"type": "ask", "text": "Shipping to Busan?"}))
            .await;
        host.send(json!({"type": "answer", "question_id": qid, "text": "Yes, XL and XXL."}))
            .await;
        host.send(json!({"type": "pin_question", "question_id": qid}))
            .await;
        let answered = v1
            .wait_event(|e| matches!(e.body, EventBody::QuestionAnswered { .. }))
            .await;
        assert!(
            matches!(answered.body, EventBody::QuestionAnswered { ref answer, .. } if answer == "Yes, XL and XXL.")
        );
        v1.wait_event(|e| {
            matches!(
                e.body,
                EventBody::QuestionPinned {
                    question_id: Some(_)
                }
            )
        })
        .await;

        let mut late = srv.client(other(enc)).await;
        match late.join("demo", None, None).await {
            ServerMsg::Joined { state, .. } => {
                assert_eq!(state.pinned_question.map(|q| q.0), Some(qid));
                assert!(state
                    .questions
                    .iter()
                    .any(|q| q.text == "Shipping to Busan?"));
                assert!(
                    state.questions.iter().all(|q| q.id.0 != qid),
                    "answered questions are not open"
                );
            }
            _ => unreachable!(),
        }
        for c in [&mut host, &mut v1, &mut v2, &mut late] {
            c.send(json!({"type": "leave"})).await;
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn moderators_announce_delete_mute_slow_mode_and_ban_words() {
    let srv = TestServer::start(&[]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let mut m = srv.joined(other(enc), "demo", "mod", Role::Moderator).await;
        let vid = format!("viewer-{enc:?}");
        let mut v = srv.joined(enc, "demo", &vid, Role::Viewer).await;

        m.send(json!({"type": "announce", "text": "20% off in 5 minutes"}))
            .await;
        v.wait_event(|e| matches!(&e.body, EventBody::Announcement { text, .. } if text == "20% off in 5 minutes")).await;

        v.chat("buy my stuff elsewhere").await;
        let spam = m.wait_event(|e| matches!(&e.body, EventBody::Chat { text, .. } if text == "buy my stuff elsewhere")).await;
        m.send(json!({"type": "delete_message", "seq": spam.seq}))
            .await;
        v.wait_event(|e| matches!(e.body, EventBody::MessageDeleted { target_seq, .. } if target_seq == spam.seq)).await;
        // New joiners see the message redacted.
        let mut late = srv.client(enc).await;
        match late.join("demo", None, None).await {
            ServerMsg::Joined { events, .. } => {
                let e = events
                    .iter()
                    .find(|e| e.seq == spam.seq)
                    .expect("in snapshot");
                assert!(
                    matches!(&e.body, EventBody::Chat { text, deleted: true, .. } if text.is_empty())
                );
            }
            _ => unreachable!(),
        }

        m.send(json!({"type": "mute", "user_id": vid, "seconds": 60}))
            .await;
        v.wait_event(|e| matches!(e.body, EventBody::UserMuted { .. }))
            .await;
        v.chat("am I muted?").await;
        v.expect_error(ErrorCode::Muted).await;
        match v.others.last() {
            Some(ServerMsg::Error {
                retry_after_ms: Some(ms),
                ..
            }) => assert!(*ms > 50_000),
            other => panic!("muted error carries retry_after_ms: {other:?}"),
        }
        m.send(json!({"type": "unmute", "user_id": vid})).await;
        v.wait_event(|e| matches!(e.body, EventBody::UserUnmuted { .. }))
            .await;

        host.send(json!({"type": "slow_mode", "seconds": 30})).await;
        v.wait_event(|e| matches!(e.body, EventBody::SlowMode { seconds: 30 }))
            .await;
        v.chat("first").await;
        v.chat("second").await;
        v.expect_error(ErrorCode::SlowMode).await;
        host.chat("hosts are not slowed 1").await;
        host.chat("hosts are not slowed 2").await;
        let texts = |c: &Client| chat_texts(&c.events);
        m.read_until(|c| texts(c).contains(&"hosts are not slowed 2".to_string()))
            .await;
        assert!(texts(&m).contains(&"first".to_string()));
        assert!(!texts(&m).contains(&"second".to_string()));
        host.send(json!({"type": "slow_mode", "seconds": 0})).await;

        host.send(json!({"type": "set_banned_words", "words": ["scam"], "ref": 77}))
            .await;
        match host.next_other().await {
            ServerMsg::Ack { reference } => assert_eq!(reference, Some(77)),
            other => panic!("expected ack, got {other:?}"),
        }
        v.chat("what a SCAM").await;
        v.expect_error(ErrorCode::BannedWord).await;
        host.send(json!({"type": "set_banned_words", "words": []}))
            .await;

        // Moderators cannot end the show, nor mute the host.
        m.send(json!({"type": "end_show"})).await;
        m.expect_error(ErrorCode::Forbidden).await;
        m.send(json!({"type": "mute", "user_id": "host", "seconds": 10}))
            .await;
        m.expect_error(ErrorCode::Forbidden).await;
        for c in [&mut host, &mut m, &mut v, &mut late] {
            c.send(json!({"type": "leave"})).await;
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn banned_users_are_kicked_and_cannot_rejoin_until_unbanned() {
    let srv = TestServer::start(&[]).await;
    for enc in Encoding::ALL {
        let mut host = srv.joined(enc, "demo", "host", Role::Host).await;
        let vid = format!("troll-{enc:?}");
        let mut v = srv.joined(other(enc), "demo", &vid, Role::Viewer).await;
        host.send(json!({"type": "ban", "user_id": vid})).await;
        v.wait_event(|e| matches!(e.body, EventBody::UserBanned { .. }))
            .await;
        v.expect_close(4003).await;

        let token = srv.token("demo", &vid, Role::Viewer);
        let mut again = srv.client(enc).await;
        again
            .send(json!({"type": "join", "room": "demo", "token": token}))
            .await;
        again.expect_error(ErrorCode::Forbidden).await;
        again.expect_close(4003).await;

        host.send(json!({"type": "unban", "user_id": vid})).await;
        host.wait_event(|e| matches!(e.body, EventBody::UserUnbanned { .. }))
            .await;
        let mut back = srv.client(enc).await;
        back.join("demo", Some(&token), None).await;
        back.chat("I'll behave").await;
        host.wait_event(
            |e| matches!(&e.body, EventBody::Chat { text, .. } if text == "I'll behave"),
        )
        .await;
        back.send(json!({"type": "leave"})).await;
        host.send(json!({"type": "leave"})).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn ending_the_show_tells_everyone_and_closes_the_room() {
    let srv = TestServer::start(&[]).await;
    for (i, enc) in Encoding::ALL.into_iter().enumerate() {
        let room = format!("show-{i}");
        let resp = srv
            .create_room(json!({"id": room, "title": "Night sale", "allow_guests": false}))
            .await;
        assert_eq!(resp.status(), 201);
        let mut host = srv.joined(enc, &room, "host", Role::Host).await;
        let mut v = srv.joined(other(enc), &room, "v", Role::Viewer).await;
        v.send(json!({"type": "end_show"})).await;
        v.expect_error(ErrorCode::Forbidden).await;
        host.send(json!({"type": "end_show"})).await;
        for c in [&mut host, &mut v] {
            c.wait_event(|e| matches!(e.body, EventBody::ShowEnded {}))
                .await;
            c.expect_close(4010).await;
        }
        let info: serde_json::Value = srv.admin_get(&format!("/api/v1/rooms/{room}")).await;
        assert_eq!(info["closed"], true);
        assert_eq!(info["viewers"], 0);
        let mut late = srv.client(enc).await;
        let token = srv.token(&room, "late", Role::Viewer);
        late.send(json!({"type": "join", "room": room, "token": token}))
            .await;
        late.expect_error(ErrorCode::RoomClosed).await;
        late.expect_close(4010).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn snapshot_state_never_runs_ahead_of_its_seq() {
    let srv = TestServer::start(&["--chat-per-sec", "1000", "--chat-burst", "1000"]).await;
    let mut asker = srv
        .joined(Encoding::MsgPack, "demo", "asker", Role::Viewer)
        .await;
    for i in 0..20 {
        // A question and a join race within one tick: whatever the joiner's
        // state shows must be covered by its seq, never re-sent after it.
        asker
            .send(json!({"type": "ask", "text": format!("q{i}")}))
            .await;
        let mut c = srv.client(Encoding::Json).await;
        match c.join("demo", None, None).await {
            ServerMsg::Joined { seq, state, .. } => {
                for q in &state.questions {
                    assert!(
                        q.seq <= seq,
                        "state shows question seq {} but joined.seq is {seq}",
                        q.seq
                    );
                }
            }
            _ => unreachable!(),
        }
        asker.wait_event(|e| matches!(&e.body, EventBody::QuestionAsked { question } if question.text == format!("q{i}"))).await;
        c.send(json!({"type": "leave"})).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_question_known_from_the_snapshot_can_be_deleted() {
    let srv = TestServer::start(&[]).await;
    let mut v = srv.joined(Encoding::Json, "demo", "v", Role::Viewer).await;
    v.send(json!({"type": "ask", "text": "rude question"}))
        .await;
    v.wait_event(|e| matches!(e.body, EventBody::QuestionAsked { .. }))
        .await;

    let mut host = srv.client(Encoding::MsgPack).await;
    let token = srv.token("demo", "host", Role::Host);
    let seq = match host.join("demo", Some(&token), None).await {
        ServerMsg::Joined { state, .. } => state.questions[0].seq,
        _ => unreachable!(),
    };
    host.send(json!({"type": "delete_message", "seq": seq}))
        .await;
    v.wait_event(
        |e| matches!(e.body, EventBody::MessageDeleted { target_seq, .. } if target_seq == seq),
    )
    .await;

    let mut late = srv.client(Encoding::Json).await;
    match late.join("demo", None, None).await {
        ServerMsg::Joined { state, events, .. } => {
            assert!(
                state.questions.is_empty(),
                "deleted questions leave the list"
            );
            let asked = events.iter().find(|e| e.seq == seq).expect("in snapshot");
            assert!(
                matches!(&asked.body, EventBody::QuestionAsked { question } if question.deleted && question.text.is_empty())
            );
        }
        _ => unreachable!(),
    }
    srv.stop().await;
}
