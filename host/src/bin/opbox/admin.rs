//! `opbox plugins …` and `opbox events`: the admin API of a running host,
//! over HTTP (`--url` or `OPBOX_URL`, `--token` or `OPBOX_TOKEN`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use opbox::contract::UploadSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Where the host is and who asks.
#[derive(Debug, clap::Args)]
pub struct Host {
    /// The host's HTTP gateway.
    #[arg(
        long,
        env = "OPBOX_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A bearer token holding `admin` (any plugin) or `plugins:write` (the
    /// caller's tenant's).
    #[arg(long, env = "OPBOX_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginsCommand {
    /// Install a component.
    Install {
        /// The component (.wasm).
        file: PathBuf,
        /// The namespace to mount it under [default: its own name].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// List the plugins the caller sees.
    List {
        /// The operator's choice of tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one plugin.
    Show {
        /// Its namespace.
        name: String,
        /// The operator's choice of tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Replace a plugin with a new version; calls running on the old one
    /// finish on it.
    Replace {
        /// Its namespace.
        name: String,
        /// The new component (.wasm).
        file: PathBuf,
        /// Install it even if it breaks callers of the old version.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print a plugin's last log lines (a tenant's caller: those of its
    /// own calls).
    Logs {
        /// Its namespace.
        name: String,
        /// The operator's choice of tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Keep printing new lines as they are logged.
        #[arg(long)]
        follow: bool,
    },
    /// Remove a plugin; calls running on it finish.
    Remove {
        /// Its namespace.
        name: String,
        /// The operator's choice of tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// An upload's settings: the fields of a `[[plugins]]` entry.
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// Whose plugin it is (the operator's choice) [default: shared, or the
    /// caller's tenant].
    #[arg(long)]
    tenant: Option<String>,
    /// A grant, `KEY=VALUE` (VALUE as JSON when it parses, else a string),
    /// or `KEY` alone for an empty table: `--grant keyvalue`,
    /// `--grant 'allowed_outbound_hosts=["https://api.example.com"]'`.
    #[arg(long = "grant", value_name = "KEY[=VALUE]")]
    grants: Vec<String>,
    /// A limit, `KEY=VALUE`: `--limit cpu_ms=500`.
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    limits: Vec<String>,
    /// Instance reuse (the operator's only): `--reuse` alone for the
    /// defaults, or a setting, `KEY=VALUE`: `--reuse max_calls=100`.
    #[arg(long = "reuse", value_name = "KEY=VALUE", num_args = 0..=1, default_missing_value = "")]
    reuse: Vec<String>,
    /// In a cluster, a label a host must have to hold the plugin,
    /// `LABEL=VALUE`: `--placement zone=eu`.
    #[arg(long = "placement", value_name = "LABEL=VALUE")]
    placement: Vec<String>,
}

/// What `opbox events` reads.
#[derive(Debug, clap::Args)]
pub struct Reading {
    /// Start after this cursor [default: the oldest event kept].
    #[arg(long)]
    cursor: Option<u64>,
    /// Keep following: print events as they happen.
    #[arg(long)]
    follow: bool,
    /// The operator's filter: one tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Print each event as its full JSON.
    #[arg(long)]
    json: bool,
}

/// Runs an `opbox plugins` command.
pub async fn plugins(host: Host, command: PluginsCommand) -> Result<()> {
    let client = reqwest::Client::new();
    let (method, path, tenant, upload) = match command {
        PluginsCommand::Install {
            file,
            name,
            settings,
        } => {
            let mut header = settings.to_json()?;
            if let Some(name) = name {
                header.insert("name".into(), json!(name));
            }
            let upload = (read(&file)?, header);
            (Method::POST, String::new(), settings.tenant, Some(upload))
        }
        PluginsCommand::List { tenant } => (Method::GET, String::new(), tenant, None),
        PluginsCommand::Show { name, tenant } => (Method::GET, format!("/{name}"), tenant, None),
        PluginsCommand::Replace {
            name,
            file,
            force,
            settings,
        } => {
            let upload = (read(&file)?, settings.to_json()?);
            let path = format!("/{name}{}", if force { "?force=true" } else { "" });
            (Method::PUT, path, settings.tenant, Some(upload))
        }
        PluginsCommand::Remove { name, tenant } => {
            (Method::DELETE, format!("/{name}"), tenant, None)
        }
        PluginsCommand::Logs {
            name,
            tenant,
            follow,
        } => return logs(&client, &host, &name, tenant.as_deref(), follow).await,
    };
    let listing = method == Method::GET && path.is_empty();
    let url = format!("{}/admin/v1/plugins{path}", host.url.trim_end_matches('/'));
    let mut request = client.request(method.clone(), &url);
    if let Some(tenant) = &tenant {
        request = request.query(&[("tenant", tenant)]);
    }
    if let Some(token) = &host.token {
        request = request.bearer_auth(token);
    }
    if let Some((wasm, header)) = upload {
        request = request
            .header("content-type", "application/wasm")
            .header("opbox-plugin", Value::Object(header).to_string())
            .body(wasm);
    }
    let body = answer(request).await?;
    if listing {
        print_list(&body);
    } else if method == Method::DELETE {
        println!("removed {}", body["removed"].as_str().unwrap_or_default());
    } else {
        print_plugin(&body);
    }
    Ok(())
}

/// How often `--follow` asks for new log lines.
const LOG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Prints a plugin's log tail, and with `follow` what comes after.
async fn logs(
    client: &reqwest::Client,
    host: &Host,
    name: &str,
    tenant: Option<&str>,
    follow: bool,
) -> Result<()> {
    let url = format!(
        "{}/admin/v1/plugins/{name}/logs",
        host.url.trim_end_matches('/')
    );
    let mut after = 0u64;
    loop {
        let mut query = vec![("after", after.to_string())];
        if let Some(tenant) = tenant {
            query.push(("tenant", tenant.to_owned()));
        }
        let mut request = client.get(&url).query(&query);
        if let Some(token) = &host.token {
            request = request.bearer_auth(token);
        }
        let page = answer(request).await?;
        for line in page["lines"].as_array().into_iter().flatten() {
            println!(
                "{:<5} {} {}",
                line["level"].as_str().unwrap_or("?"),
                line["request_id"].as_str().unwrap_or("?"),
                line["message"].as_str().unwrap_or_default()
            );
        }
        after = page["next"].as_u64().unwrap_or(after);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(LOG_POLL).await;
    }
}

/// Runs `opbox events`: a page at a time until the end, or following.
pub async fn events(host: Host, events: Reading) -> Result<()> {
    if events.follow {
        return follow(&host, &events).await;
    }
    let client = reqwest::Client::new();
    let mut cursor = events.cursor;
    loop {
        let url = format!("{}/admin/v1/events", host.url.trim_end_matches('/'));
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        if let Some(tenant) = &events.tenant {
            query.push(("tenant", tenant.clone()));
        }
        let mut request = client.get(&url).query(&query);
        if let Some(token) = &host.token {
            request = request.bearer_auth(token);
        }
        let page = answer(request).await?;
        let items = page["events"].as_array().cloned().unwrap_or_default();
        for event in &items {
            print_event(event, events.json);
        }
        let next = page["next_cursor"].as_u64();
        if next.is_none() || next == cursor || next >= page["last"].as_u64() {
            return Ok(());
        }
        cursor = next;
    }
}

async fn follow(host: &Host, events: &Reading) -> Result<()> {
    let mut url = format!("{}/admin/v1/events", host.url.trim_end_matches('/'))
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let mut query = Vec::new();
    if let Some(cursor) = events.cursor {
        query.push(format!("cursor={cursor}"));
    }
    if let Some(tenant) = &events.tenant {
        query.push(format!("tenant={tenant}"));
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let mut request = url.into_client_request().context("not a host URL")?;
    if let Some(token) = &host.token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token is not valid")?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            bail!("{}", refusal(response.status(), &body));
        }
        Err(e) => return Err(e).context("cannot reach the host"),
    };
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message.context("the feed broke off")? else {
            continue;
        };
        let item: Value =
            serde_json::from_str(&text).context("the host sent something that is not JSON")?;
        match item["type"].as_str() {
            Some("snapshot") => {
                let names: Vec<&str> = item["plugins"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                eprintln!("plugins now: {}", names.join(", "));
            }
            Some("event") => print_event(&item, events.json),
            Some("diagnostic") => bail!(
                "{}: {}",
                item["code"].as_str().unwrap_or("diagnostic"),
                item["message"].as_str().unwrap_or_default()
            ),
            _ => bail!(
                "{}",
                item["error"]["message"]
                    .as_str()
                    .unwrap_or("the feed ended")
            ),
        }
    }
    Ok(())
}

impl Settings {
    /// `limits`, `grants`, `reuse` and `placement` as the `opbox-plugin`
    /// header takes them (the host's `UploadSettings`).
    fn to_json(&self) -> Result<Map<String, Value>> {
        let mut header = Map::new();
        let mut grants = Map::new();
        for grant in &self.grants {
            let (key, value) = match grant.split_once('=') {
                Some((key, value)) => (
                    key,
                    serde_json::from_str(value).unwrap_or_else(|_| json!(value)),
                ),
                None => (grant.as_str(), json!({})),
            };
            grants.insert(key.to_owned(), value);
        }
        let limits = numbers("--limit", self.limits.iter())?;
        let reuse = numbers("--reuse", self.reuse.iter().filter(|r| !r.is_empty()))?;
        if !grants.is_empty() {
            header.insert("grants".into(), Value::Object(grants));
        }
        if !limits.is_empty() {
            header.insert("limits".into(), Value::Object(limits));
        }
        if !self.reuse.is_empty() {
            header.insert("reuse".into(), Value::Object(reuse));
        }
        let mut placement = Map::new();
        for label in &self.placement {
            let Some((label, value)) = label.split_once('=') else {
                bail!("--placement takes LABEL=VALUE, not `{label}`");
            };
            placement.insert(label.to_owned(), json!(value));
        }
        if !placement.is_empty() {
            header.insert("placement".into(), Value::Object(placement));
        }
        // Read as the host reads it: a setting it does not know is named
        // here, before anything is uploaded.
        let read = opbox::contract::read::<UploadSettings>(Value::Object(header.clone()));
        if let Err(refused) = read {
            bail!("{}", refused.message);
        }
        Ok(header)
    }
}

/// `KEY=N` settings of `flag` as a JSON object.
fn numbers<'a>(
    flag: &str,
    settings: impl Iterator<Item = &'a String>,
) -> Result<Map<String, Value>> {
    let mut numbers = Map::new();
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("`{flag} {setting}`: write KEY=VALUE"))?;
        let value: u64 = value
            .parse()
            .with_context(|| format!("`{flag} {setting}`: the value must be a whole number"))?;
        numbers.insert(key.to_owned(), json!(value));
    }
    Ok(numbers)
}

fn read(file: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The JSON answer of `request`, or its error as one line (and each break
/// of a compatibility refusal on a line of its own).
async fn answer(request: reqwest::RequestBuilder) -> Result<Value> {
    let response = request.send().await.context("cannot reach the host")?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("the host answered {status} without JSON"))?;
    if status.is_success() {
        return Ok(body);
    }
    let breaks = body["error"]["details"]["breaks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if breaks.is_empty() {
        bail!("{}", refusal(status, &body));
    }
    // A compatibility refusal: the line, then each break on its own.
    eprintln!("error: {}", refusal(status, &body));
    for b in &breaks {
        let at = b["path"].as_str().filter(|p| !p.is_empty());
        eprintln!(
            "  {} ({}{}): {}",
            b["operation"].as_str().unwrap_or("?"),
            b["change"].as_str().unwrap_or("?"),
            at.map(|p| format!(" at {p}")).unwrap_or_default(),
            b["reason"].as_str().unwrap_or("?")
        );
    }
    Err(Reported.into())
}

/// A failure already printed in full.
#[derive(Debug, thiserror::Error)]
#[error("(reported)")]
pub struct Reported;

fn refusal(status: StatusCode, body: &Value) -> String {
    let error = &body["error"];
    let mut line = format!(
        "{} ({}): {}",
        error["code"].as_str().unwrap_or("ERROR"),
        status.as_u16(),
        error["message"].as_str().unwrap_or("no message")
    );
    if let Some(rule) = error["details"]["rule"].as_str() {
        line.push_str(&format!(" [rule: {rule}]"));
    }
    line
}

fn print_list(body: &Value) {
    println!(
        "{:<20} {:<12} {:<10} {:<7} {:<8} OPERATIONS",
        "NAME", "TENANT", "VERSION", "SOURCE", "STATE"
    );
    for plugin in body["plugins"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<12} {:<10} {:<7} {:<8} {}",
            plugin["name"].as_str().unwrap_or("?"),
            plugin["tenant"].as_str().unwrap_or("(shared)"),
            plugin["version"].as_str().unwrap_or("?"),
            plugin["source"].as_str().unwrap_or("?"),
            plugin["state"].as_str().unwrap_or("?"),
            plugin["operations"].as_array().map_or(0, Vec::len)
        );
    }
}

fn print_plugin(plugin: &Value) {
    let text = |key: &str| plugin[key].as_str().unwrap_or("-").to_owned();
    println!("name        {}", text("name"));
    println!(
        "tenant      {}",
        plugin["tenant"].as_str().unwrap_or("(shared)")
    );
    println!("version     {}", text("version"));
    println!("digest      sha256:{}", text("digest"));
    println!("source      {}", text("source"));
    println!("state       {}", text("state"));
    println!(
        "calls       {} ({} failed), {} instances live, {} subscriptions open",
        plugin["calls"], plugin["failures"], plugin["live_instances"], plugin["open_subscriptions"]
    );
    println!("limits      {}", plugin["limits"]);
    println!("grants      {}", plugin["grants"]);
    if !plugin["reuse"].is_null() {
        println!("reuse       {}", plugin["reuse"]);
    }
    println!("operations");
    for op in plugin["operations"].as_array().into_iter().flatten() {
        println!(
            "  {:<32} {}",
            op["name"].as_str().unwrap_or("?"),
            op["op_type"].as_str().unwrap_or("?")
        );
    }
}

fn print_event(event: &Value, full: bool) {
    if full {
        println!("{event}");
        return;
    }
    let mut line = format!(
        "{:>8}  {:<18}",
        event["cursor"],
        event["kind"].as_str().unwrap_or("?")
    );
    if let Some(tenant) = event["tenant"].as_str() {
        line.push_str(&format!(" tenant={tenant}"));
    }
    if let Some(plugin) = event["plugin"].as_str() {
        line.push_str(&format!(" plugin={plugin}"));
    }
    if let Some(host) = event["host"].as_str() {
        line.push_str(&format!(" host={host}"));
    }
    println!("{line} {}", event["detail"]);
}
