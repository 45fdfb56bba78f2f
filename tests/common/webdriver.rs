//! A minimal W3C WebDriver client over `reqwest`, driving headless Debian
//! `chromium` through `chromedriver`: enough for the browser tests (open a
//! page, find elements, type, click, upload a file, run a script, take a
//! screenshot). `Browser::start` launches chromedriver on a free port with
//! its own temporary profile; dropping the `Browser` ends the session
//! (which closes chromium) and kills chromedriver.
//!
//! The browser is found as `VITRINE_CHROMIUM` / `VITRINE_CHROMEDRIVER` or
//! `chromium` / `chromedriver` on the `PATH` (`scripts/setup.sh` installs
//! Debian's `chromium` and `chromium-driver`). Without them the tests print
//! `SKIPPED` and pass, except under `CI`, where they fail.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A reference to an element of the current page.
#[derive(Debug, Clone)]
pub struct Element(pub String);

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    /// Where `screenshot` writes.
    pub screenshots: PathBuf,
}

/// `name` as given by the environment variable `var`, else found on the PATH.
fn program(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `target/test-output/screenshots`, made if missing.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-output")
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless chromium session. `None` (with
    /// `SKIPPED` printed) when they are not installed, except under `CI`,
    /// where that fails the test.
    pub async fn start(test: &str) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (
            program("VITRINE_CHROMIUM", "chromium"),
            program("VITRINE_CHROMEDRIVER", "chromedriver"),
        ) else {
            let why = "chromium and chromedriver are not installed \
                       (Debian: apt-get install chromium chromium-driver; scripts/setup.sh does it)";
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: {why} (CI is set, so this is a failure, not a skip)"
            );
            println!("SKIPPED {test}: {why}");
            return None;
        };
        let port = super::process::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _profile: profile,
            screenshots: screenshot_dir(),
        };
        browser.wait_driver().await;
        // The flags keep chromium off the network (this machine has none):
        // no sync, component updates, QUIC or background requests.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
            "--window-size=1280,900".into(),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"implicit": 0, "pageLoad": 30000, "script": 30000},
        }}});
        let answer = browser.call("POST", "/session", caps).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Some(browser)
    }

    async fn wait_driver(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/status", self.base)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return;
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; panics on a WebDriver error.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        match self.try_call(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    /// One WebDriver command: its `value`, or the error it answered.
    async fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{status}: {} {}",
                v["value"]["error"],
                v["value"]["message"].as_str().unwrap_or("")
            ))
        }
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), json!({ "url": url }))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call("GET", &self.s("/url"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        self.try_call(
            "POST",
            &self.s("/element"),
            json!({"using": "css selector", "value": css}),
        )
        .await
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(|id| Element(id.to_string())))
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let started = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if started.elapsed() > timeout {
                self.fail(&format!("no element `{css}` after {timeout:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` asynchronously: it ends by calling the last of its
    /// `arguments` with the value to return.
    pub async fn js_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.s("/execute/async"),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` until it returns something other than null, false or
    /// undefined (then returns that), for up to `timeout`.
    pub async fn wait_js(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let v = self
                .try_call(
                    "POST",
                    &self.s("/execute/sync"),
                    json!({"script": script, "args": []}),
                )
                .await
                .unwrap_or(Value::Null);
            if !(v.is_null() || v == false) {
                return v;
            }
            if started.elapsed() > timeout {
                self.fail(&format!("waited {timeout:?} for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/click", e.0)),
            json!({}),
        )
        .await;
    }

    /// Types `text` into an element (for a file input: the file's path).
    pub async fn type_text(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/value", e.0)),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/clear", e.0)),
            json!({}),
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call(
            "GET",
            &self.s(&format!("/element/{}/text", e.0)),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Fills the input matching `css` with `text`, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(10)).await;
        self.clear(&e).await;
        self.type_text(&e, text).await;
    }

    /// Chooses the option of the `<select>` matching `css` whose value is `value`.
    pub async fn select(&self, css: &str, value: &str) {
        self.wait_for(css, Duration::from_secs(10)).await;
        let ok = self
            .js(
                "const s = document.querySelector(arguments[0]);
                 if (![...s.options].some(o => o.value === arguments[1])) return false;
                 s.value = arguments[1];
                 s.dispatchEvent(new Event('change', {bubbles: true}));
                 return true;",
                json!([css, value]),
            )
            .await;
        assert_eq!(ok, true, "`{css}` has no option `{value}`");
    }

    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.s("/window/rect"),
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Saves a PNG of the page as `<screenshots>/<name>.png` and prints its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", &self.s("/screenshot"), Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// A screenshot of the whole page (not only the window): the window is
    /// made as tall as the document first, then restored.
    pub async fn full_screenshot(&self, name: &str) -> PathBuf {
        let rect = self.call("GET", &self.s("/window/rect"), Value::Null).await;
        let (w, h) = (
            rect["width"].as_u64().unwrap_or(1280) as u32,
            rect["height"].as_u64().unwrap_or(900) as u32,
        );
        let tall = self
            .js(
                "return Math.ceil(document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight));",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap_or(h as u64) as u32;
        self.set_window_size(w, tall.clamp(h, 6000)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = self.screenshot(name).await;
        self.set_window_size(w, h).await;
        path
    }

    /// The browser console since the last call (JS errors land here).
    pub async fn console(&self) -> String {
        match self
            .try_call("POST", &self.s("/se/log"), json!({"type": "browser"}))
            .await
        {
            Ok(Value::Array(lines)) => lines
                .iter()
                .map(|l| format!("{} {}", l["level"], l["message"]))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    /// Fails the test with a screenshot, the page's text and its console.
    pub async fn fail(&self, why: &str) -> ! {
        let shot = self.screenshot("failure").await;
        let text = self
            .try_call(
                "POST",
                &self.s("/execute/sync"),
                json!({"script": "return document.body.innerText", "args": []}),
            )
            .await
            .unwrap_or_default();
        let console = self.console().await;
        panic!(
            "{why}\nurl: {}\nscreenshot: {}\npage text:\n{}\nconsole:\n{console}",
            self.url().await,
            shot.display(),
            text.as_str().unwrap_or_default()
        );
    }

    /// Ends the session (chromium exits) and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self.try_call("DELETE", &self.s(""), Value::Null).await;
        self.session.clear();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    /// A failing test drops the browser without `quit`: end the session
    /// over a plain blocking socket (no async here), then kill chromedriver.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_string();
            if let Ok(mut sock) = std::net::TcpStream::connect(&addr) {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    sock,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                    self.session
                );
                let _ = sock.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
