//! Issue 26, findings 9, 11 and 13, against the real binary: no secret in
//! `--help`, logs or start-up errors, for every secret-bearing flag; in
//! headless chromium, a page of another origin can neither read the API
//! nor change its state, and `/docs` renders ReDoc from the binary itself
//! under its Content-Security-Policy.

use std::process::{Command, Stdio};
use std::time::Duration;

use clap::CommandFactory;

use crate::common::process::{free_port, ServerProcess};
use crate::common::webdriver::Browser;

const BIN: &str = env!("CARGO_BIN_EXE_vitrine");

/// Each secret-bearing flag's environment variable, with a value that
/// holds a marker no output may repeat.
fn secret_envs() -> Vec<(String, String)> {
    let cmd = vitrine::cli::Cli::command();
    vitrine::config::SECRET_FLAGS
        .iter()
        .map(|id| {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no flag {id}"));
            let env = arg.get_env().expect("secret flags have an env var");
            let value = match *id {
                "database_url" => "postgres://vitrine:hunter2-db@127.0.0.1:1/vitrine".to_string(),
                "artifacts" => "s3://AKIAHUNTER:hunter2-s3@bucket/prefix".to_string(),
                _ => format!("hunter2-{id}"),
            };
            (env.to_string_lossy().into_owned(), value)
        })
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for marker in ["hunter2", "AKIAHUNTER"] {
        assert!(!text.contains(marker), "{what} shows a secret:\n{text}");
    }
}

#[test]
fn help_shows_no_secret_of_any_flag() {
    let envs = secret_envs();
    assert_eq!(envs.len(), vitrine::config::SECRET_FLAGS.len());
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["worker", "--help"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // The flags are there, their values are not.
        assert!(text.contains("--database-url"), "{args:?}:\n{text}");
        assert_no_secret(&format!("vitrine {}", args.join(" ")), &text);
    }
}

/// A start that fails on a secret-bearing setting names the setting, not
/// the secret.
#[test]
fn start_up_errors_show_no_secret() {
    let data = tempfile::tempdir().unwrap();
    for (env, value) in secret_envs() {
        if env.contains("TOKEN") {
            continue; // a token never fails a start
        }
        let out = Command::new(BIN)
            .args(["serve", "--devices", "cpu", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .env(&env, &value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env} should fail the start");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.trim().is_empty(), "{env}: the failure says nothing");
        assert_no_secret(&env, &text);
    }
}

/// The token, right or wrong, never reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_no_token() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("log.txt");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--devices", "cpu", "--log-format", "json"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .env("VITRINE_API_TOKEN", "hunter2-token")
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if client.get(format!("{url}/readyz")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "server did not start");
    for auth in [
        "Bearer hunter2-token",
        "Bearer hunter2-wrong",
        "hunter2-bare",
    ] {
        let _ = client
            .get(format!("{url}/datasets?x=1"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
    }
    crate::common::process::terminate(&child);
    crate::common::process::wait_exit(&mut child, Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("/datasets"), "requests are logged:\n{text}");
    assert_no_secret("the log", &text);
}

/// In a real browser: a page at `http://127.0.0.1:PORT` is another site
/// than `http://localhost:PORT`; from it, reads fail (no CORS), a DELETE
/// is never sent (its preflight gets no grant), and a form-like `no-cors`
/// POST is refused by the server. `/docs` renders under its CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origins_page_cannot_drive_the_server() {
    let _one = crate::web_page::ONE_BROWSER.lock().await;
    let test = "another_origins_page_cannot_drive_the_server";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--cpu-threads", "2"]).await;
    let port = server.port();
    let target = format!("http://localhost:{port}");

    // /docs: ReDoc renders the API's title, from the binary, with no CSP
    // violation reported.
    browser.goto(&format!("http://127.0.0.1:{port}/docs")).await;
    browser
        .wait_js(
            "ReDoc rendered the document",
            "return document.body.innerText.includes('Fine-tune Vision Transformers')",
            Duration::from_secs(30),
        )
        .await;
    // ReDoc's own "powered by" logo points at its CDN: the policy blocks
    // it (nothing is fetched from elsewhere); any other violation (a
    // script, a connection) would mean the page needs what it is denied.
    let console = browser.console().await;
    let violations: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("Content Security Policy"))
        .filter(|l| !l.contains("Loading the image"))
        .collect();
    assert!(violations.is_empty(), "CSP violations:\n{console}");

    // From the 127.0.0.1 origin, against the localhost one. A JSON answer
    // is a document without a CSP of its own (the page and /docs would
    // stop the fetches themselves, proving nothing of the server).
    browser
        .goto(&format!("http://127.0.0.1:{port}/healthz"))
        .await;
    let outcome = browser
        .js_async(
            "const [target, done] = arguments;
             const out = {};
             try { await fetch(target + '/datasets'); out.read = 'read'; }
             catch (e) { out.read = 'blocked'; }
             try { await fetch(target + '/models/x', {method: 'DELETE'}); out.del = 'sent'; }
             catch (e) { out.del = 'blocked'; }
             const form = new FormData();
             form.append('dataset', new Blob(['PK\\x03\\x04junk']), 'd.zip');
             try { await fetch(target + '/datasets', {method: 'POST', mode: 'no-cors', body: form}); out.post = 'sent'; }
             catch (e) { out.post = 'failed'; }
             done(out);",
            serde_json::json!([target]),
        )
        .await;
    assert_eq!(outcome["read"], "blocked", "{outcome}");
    assert_eq!(outcome["del"], "blocked", "{outcome}");
    assert_eq!(outcome["post"], "sent", "{outcome}");
    // The opaque POST reached the server, which refused it (403), and
    // no DELETE ever arrived.
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics.lines().find(|l| {
        l.starts_with("vitrine_http_requests_total")
            && l.contains("method=\"POST\"")
            && l.contains("route=\"/datasets\"")
    });
    assert!(
        refused.is_some_and(|l| l.contains("status=\"403\"")),
        "{metrics}"
    );
    assert!(!metrics.contains("method=\"DELETE\""), "{metrics}");
    browser.quit().await;
}
