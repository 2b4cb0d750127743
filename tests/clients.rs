//! Clients nobody here wrote, against the real server: the npm `eventsource` package under Node
//! (tests/clients/node/sse-client.mjs prints what it sees as JSON lines) receiving events and
//! reconnecting with `Last-Event-ID` after the server restarts on the same port, and `curl` run
//! exactly as the README shows. A client that is not installed skips its test with a message,
//! unless RINGCAST_REQUIRE_CLIENTS is set (CI sets it, and installs them).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

both_drivers!(
    node_eventsource_receives_and_resumes_after_restart,
    curl_streams_as_the_readme_shows,
);

fn node_client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node")
}

/// `node`, with the client's npm dependencies installed (`npm ci` in tests/clients/node).
fn node_client(test: &str) -> Option<PathBuf> {
    let node = client_or_skip(
        test,
        find_program(&["node", "nodejs"]),
        "node is not on PATH",
    )?;
    let installed = node_client_dir()
        .join("node_modules/eventsource/package.json")
        .exists();
    client_or_skip(
        test,
        installed.then_some(node),
        "the npm client is not installed (run `npm ci --prefix tests/clients/node`)",
    )
}

/// The client's JSON lines so far.
fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn node_eventsource_receives_and_resumes_after_restart(driver: &str) {
    let test = "node_eventsource_receives_and_resumes_after_restart";
    let Some(node) = node_client(test) else {
        return;
    };
    // `retry:` makes the client come back quickly; debug logs the Last-Event-ID received.
    let args = [
        "--interval",
        "100ms",
        "--retry",
        "200",
        "--log",
        "info,ringcast=debug",
    ];
    let mut first = TestServer::start(driver, &args);
    let url = format!("http://{}/events", first.addr);
    let client = ChildLines::spawn(
        Command::new(node)
            .arg(node_client_dir().join("sse-client.mjs"))
            .arg(&url)
            .stderr(Stdio::inherit()),
    );
    let wanted = 3;
    let before = client
        .wait_until(PATIENCE, |l| {
            let ev = parse(l);
            (of_type(&ev, "message").len() >= wanted).then_some(ev)
        })
        .unwrap_or_else(|| {
            panic!(
                "{wanted} messages from the first server: {:?}",
                client.lines()
            )
        });
    let requests = of_type(&before, "request");
    assert_eq!(requests.len(), 1, "{before:?}");
    assert_eq!(
        requests[0]["lastEventId"],
        Value::Null,
        "a first connection sends none"
    );
    assert_eq!(before[1]["type"], "open", "{before:?}");
    let msgs = of_type(&before, "message");
    assert_hello_with_increasing_ids(&msgs);
    let ticks: Vec<Event> = msgs
        .iter()
        .map(|m| Event {
            id: m["lastEventId"].as_str().map(String::from),
            event: Some("message".into()),
            data: vec![m["data"].as_str().unwrap().into()],
            retry: None,
        })
        .collect();
    first.assert_no_gaps(&ticks);

    // Stop the server: the client sees the stream end and keeps trying.
    first.stop_and_summary();
    let at_error = client
        .wait_until(PATIENCE, |l| {
            let ev = parse(l);
            (!of_type(&ev, "error").is_empty()).then_some(ev)
        })
        .unwrap_or_else(|| panic!("an error once the server stopped: {:?}", client.lines()));
    let last_seen = message_id(of_type(&at_error, "message").last().unwrap());
    let error = of_type(&at_error, "error")[0].clone();
    assert_eq!(error["readyState"], 0, "CONNECTING: it will retry: {error}");

    // The same port again: the client reconnects, sending the last id it saw.
    let second = TestServer::start_on(driver, &first.addr.to_string(), &args);
    let after = client
        .wait_until(PATIENCE, |l| {
            let ev = parse(l);
            let n = of_type(&ev, "message")
                .iter()
                .filter(|m| message_id(m) > last_seen)
                .count();
            (n >= wanted).then_some(ev)
        })
        .unwrap_or_else(|| panic!("messages after the restart: {:?}", client.lines()));
    let resumed = of_type(&after, "request")
        .into_iter()
        .skip(1)
        .map(|r| r["lastEventId"].clone())
        .collect::<Vec<_>>();
    assert!(!resumed.is_empty(), "it reconnected: {after:?}");
    for id in &resumed {
        assert_eq!(id, &Value::String(last_seen.to_string()), "{after:?}");
    }
    assert_hello_with_increasing_ids(&of_type(&after, "message"));
    assert!(
        second
            .wait_log(&format!("last_event_id={last_seen}"), PATIENCE)
            .is_some(),
        "the restarted server received Last-Event-ID {last_seen}; log:\n{}",
        second.log_text()
    );
}

/// The README's example command, as written there.
const README_CURL: &str = "curl -N -H 'Accept: text/event-stream' http://127.0.0.1:8080/";

fn curl_streams_as_the_readme_shows(driver: &str) {
    let test = "curl_streams_as_the_readme_shows";
    let Some(curl) = client_or_skip(test, find_program(&["curl"]), "curl is not on PATH") else {
        return;
    };
    // The README's example output: the console block that follows the command.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example: Vec<&str> = readme
        .split_once(&format!("$ {README_CURL}\n"))
        .unwrap_or_else(|| panic!("README shows `{README_CURL}`"))
        .1
        .lines()
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(example.len() >= 4, "README example output: {example:?}");

    let server = TestServer::start(driver, &["--interval", "100ms"]);
    let out = ChildLines::spawn(
        Command::new(curl)
            .args(["-N", "-H", "Accept: text/event-stream"])
            .arg(format!("http://{}/", server.addr))
            .stderr(Stdio::null()),
    );
    let lines = out
        .wait_until(PATIENCE, |l| (l.len() >= example.len()).then(|| l.to_vec()))
        .unwrap_or_else(|| panic!("curl output: {:?}", out.lines()));
    // Line by line as in the README, the ids being whatever tick it is now.
    let mut ids = Vec::new();
    for (got, want) in lines.iter().zip(&example) {
        match want.strip_prefix("id: ") {
            Some(_) => ids.push(
                got.strip_prefix("id: ")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("an id line, got {got:?}: {lines:?}")),
            ),
            None => assert_eq!(got, want, "{lines:?}"),
        }
    }
    assert!(ids.len() >= 2, "{example:?}");
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase: {ids:?}");
}
