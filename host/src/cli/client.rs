//! The CLI as a client of `couchvault daemon` (`--server`, and the schedule, job and token
//! commands). Same verbs and output as local mode; the daemon does the work.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use couchvault::config::Config;
use couchvault::daemon::instances::{self, InstanceSpec};
use couchvault::daemon::jobs::{BackupParams, Job};
use couchvault::names::escape_control;
use couchvault::scheduler::{ScheduleSpec, SourceSettings};
use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::args::{
    BackupCommand, Cli, Command, InstanceCommand, JobCommand, PolicyCommand, ScheduleAddArgs,
    ScheduleCommand, SourceArgs, TokenCommand,
};
use super::output::{bytes, print_json, progress_bar, table};

pub struct Client {
    http: Http,
    base: String,
    token: String,
    /// Sent as `?tenant=` when given (admin tokens act on any tenant).
    tenant: Option<String>,
    json: bool,
}

/// Whether this command goes to a daemon.
pub fn wants_server(cli: &Cli, config: &Config) -> bool {
    matches!(
        cli.command,
        Command::Instance(_) | Command::Schedule(_) | Command::Job(_) | Command::Token(_)
    ) || (cli.server.is_some() || config.client.server.is_some())
        && matches!(
            cli.command,
            Command::Backup(_)
                | Command::Restore(_)
                | Command::Policy(
                    PolicyCommand::Add { .. } | PolicyCommand::List | PolicyCommand::Rm { .. }
                )
        )
}

impl Client {
    pub fn new(cli: &Cli, config: &Config) -> Result<Client> {
        let base = cli
            .server
            .clone()
            .or_else(|| config.client.server.clone())
            .unwrap_or_else(|| format!("http://{}", config.daemon.listen));
        let base = base.trim_end_matches('/').to_string();
        let token = match &cli.token {
            Some(t) => t.clone(),
            None => {
                let file = config.client.token_file.clone().unwrap_or_else(|| {
                    config
                        .state_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(couchvault::config::DEFAULT_DATA_DIR))
                        .join("admin.token")
                });
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!(
                            "no token: give --token or COUCHVAULT_TOKEN, or [client] token_file (tried {})",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client {
            http: Http::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .context("building the HTTP client")?,
            base,
            token,
            tenant: cli.tenant.clone(),
            json: cli.json,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(t) = &self.tenant {
            rb = rb.query(&[("tenant", t)]);
        }
        rb
    }

    fn send<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = rb.send().map_err(|e| {
            anyhow!(
                "cannot reach the daemon at {}: {e} (is `couchvault daemon` running? see --server)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().context("reading the daemon's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            bail!("the daemon answered {status}: {msg}");
        }
        let text = if text.is_empty() { "null".into() } else { text };
        serde_json::from_str(&text).context("the daemon's answer is not the expected JSON")
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path))
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.send(self.request(Method::POST, path).json(body))
    }

    fn delete(&self, path: &str) -> Result<Value> {
        self.send(self.request(Method::DELETE, path))
    }

    /// Prints JSON with --json, else runs `human`.
    fn show(&self, v: &Value, human: impl FnOnce(&Value)) -> Result<()> {
        if self.json {
            print_json(v)
        } else {
            human(v);
            Ok(())
        }
    }

    /// Follows a job until it ends; a progress bar on a terminal. Errors unless it succeeded.
    fn watch(&self, id: &str) -> Result<Job> {
        let bar = (!self.json && std::io::stderr().is_terminal()).then(progress_bar);
        let job = loop {
            let job: Job = self.get(&format!("/v1/jobs/{id}"))?;
            if let Some(b) = &bar {
                b.set_message(format!("{} {}", job.request.kind(), job.id));
                b.set_length(job.progress.bytes_total);
                b.set_position(job.progress.bytes_done);
            }
            if job.state.is_finished() {
                break job;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(job)
    }

    /// Prints a finished job and fails unless it succeeded.
    fn report(&self, job: &Job) -> Result<()> {
        if self.json {
            print_json(job)?;
        } else {
            print_job(job);
        }
        match job.state.as_str() {
            "succeeded" => Ok(()),
            state => bail!(
                "job {} {state}: {}",
                job.id,
                job.error.as_deref().unwrap_or("no reason recorded")
            ),
        }
    }

    fn submitted(&self, job: Job, detach: bool) -> Result<()> {
        if detach {
            if self.json {
                return print_json(&job);
            }
            println!(
                "{} job {} accepted; follow it with `couchvault job watch {}`",
                job.request.kind(),
                job.id,
                job.id
            );
            return Ok(());
        }
        let done = self.watch(&job.id)?;
        self.report(&done)
    }
}

fn print_job(j: &Job) {
    let p = &j.progress;
    println!("job {} ({}) {}", j.id, j.request.kind(), j.state.as_str());
    println!("  tenant      {}", j.tenant);
    if let Some(i) = j.request.instance() {
        println!("  instance    {i}");
    }
    if let Some(s) = &j.scheduled {
        println!(
            "  schedule    {} ({}) for {}",
            s.schedule_name, s.schedule_id, s.scheduled_for
        );
    }
    if let Some(b) = &j.backup_id {
        println!("  backup      {b}");
    }
    println!("  created     {}", j.created_at.to_rfc3339());
    if let Some(t) = j.finished_at {
        println!(
            "  finished    {} ({:.1}s)",
            t.to_rfc3339(),
            j.duration_secs.unwrap_or(0.0)
        );
    }
    println!(
        "  progress    {}/{} files, {}/{} ({}/s)",
        p.files_done,
        p.files_total,
        bytes(p.bytes_done),
        bytes(p.bytes_total),
        bytes(p.rate)
    );
    for n in &j.notes {
        println!("  note        {}", escape_control(n));
    }
    if let Some(e) = &j.error {
        println!("  error       {}", escape_control(e));
    }
    if !j.retention.is_empty() {
        println!("  retention:");
        super::policy::print_verdicts(&j.retention);
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

pub fn run(cli: Cli, config: Config) -> Result<()> {
    let c = Client::new(&cli, &config)?;
    match cli.command {
        Command::Backup(BackupCommand::Create(a)) => {
            let source = source_settings(a.source)?;
            let body = BackupParams {
                instance: a.instance,
                couchdb_config: source.couchdb_config,
                data_dir: source.data_dir,
                view_index_dir: source.view_index_dir,
                policies: a.protection.into_iter().chain(a.retention).collect(),
                tags: a.tags.into_iter().collect(),
                compression_level: a.compression_level,
                allow_incomplete: a.allow_incomplete,
            };
            let job: Job = c.post("/v1/backups", &serde_json::to_value(body)?)?;
            c.submitted(job, a.detach)
        }
        Command::Backup(BackupCommand::List { instance }) => {
            let path = match instance {
                Some(i) => format!("/v1/backups?instance={i}"),
                None => "/v1/backups".into(),
            };
            let v: Value = c.get(&path)?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        vec![
                            s(b, "backup_id"),
                            s(b, "instance"),
                            s(b, "finished_at"),
                            s(b, "files"),
                            b.get("bytes")
                                .and_then(Value::as_u64)
                                .map_or("-".into(), bytes),
                            b.get("stored_bytes")
                                .and_then(Value::as_u64)
                                .map_or("-".into(), bytes),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "INSTANCE",
                        "FINISHED (UTC)",
                        "FILES",
                        "SIZE",
                        "STORED",
                    ],
                    &rows,
                );
            })
        }
        Command::Backup(BackupCommand::Show { id }) => {
            let v: Value = c.get(&format!("/v1/backups/{id}"))?;
            print_json(&v)
        }
        Command::Backup(BackupCommand::Verify { id }) => {
            let job: Job = c.post(&format!("/v1/backups/{id}/verify"), &json!({}))?;
            c.submitted(job, false)
        }
        Command::Backup(BackupCommand::Delete { id }) => {
            let job: Job = c.send(c.request(Method::DELETE, &format!("/v1/backups/{id}")))?;
            c.submitted(job, false)
        }
        Command::Restore(a) => {
            if a.owner.is_some() {
                bail!("--owner is set by the daemon's [restore] owner; leave it out with --server");
            }
            if a.rollback {
                bail!("--rollback works on the daemon's machine, without --server");
            }
            let node_name = match (&a.node_name, &a.couchdb_config) {
                (Some(n), _) => Some(n.clone()),
                (None, Some(dir)) => Some(couchvault::ops::restore::node_from_config(dir)?),
                (None, None) => None,
            };
            let body = json!({
                "node_name": node_name,
                "rename_node": a.rename_node,
                "backup_id": a.id,
                "target": a.to,
                "in_place": a.in_place,
                "view_index_target": a.view_index_to,
                "config_target": a.config_to,
                "force": a.force,
                "discard_old": a.discard_old,
            });
            let job: Job = c.post("/v1/restores", &body)?;
            c.submitted(job, a.detach)
        }
        Command::Policy(PolicyCommand::Add { name, file, params }) => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let v: Value = c.send(
                c.request(Method::PUT, &format!("/v1/policies/{name}"))
                    .query(&[("params", params)])
                    .body(wasm),
            )?;
            c.show(&v, |v| {
                println!("added policy {} ({})", s(v, "name"), s(v, "kinds"))
            })
        }
        Command::Policy(PolicyCommand::List) => {
            let v: Value = c.get("/v1/policies")?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| vec![s(p, "name"), s(p, "kinds"), s(p, "added"), s(p, "params")])
                    .collect();
                table(&["NAME", "KINDS", "ADDED (UTC)", "PARAMS"], &rows);
            })
        }
        Command::Policy(PolicyCommand::Rm { name }) => {
            c.delete(&format!("/v1/policies/{name}"))?;
            if !c.json {
                println!("removed policy {name}");
            }
            Ok(())
        }
        Command::Instance(cmd) => instance(&c, cmd, cli.tenant.clone()),
        Command::Schedule(cmd) => schedule(&c, cmd),
        Command::Job(cmd) => job(&c, cmd),
        Command::Token(cmd) => token(&c, cmd),
        _ => bail!("this command does not run against a daemon"),
    }
}

fn absolute(p: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))
}

/// The source as the daemon needs it: absolute paths.
fn source_settings(a: SourceArgs) -> Result<SourceSettings> {
    Ok(SourceSettings {
        couchdb_config: a.couchdb_config.map(absolute).transpose()?,
        data_dir: a.data_dir.map(absolute).transpose()?,
        view_index_dir: a.view_index_dir.map(absolute).transpose()?,
    })
}

fn instance(c: &Client, cmd: InstanceCommand, tenant: Option<String>) -> Result<()> {
    let print_one = |v: &Value| {
        println!(
            "instance {}/{}: backups read only inside {}{}",
            s(v, "tenant"),
            s(v, "name"),
            v.get("roots")
                .and_then(Value::as_array)
                .map(|r| r
                    .iter()
                    .map(|x| s(&json!({ "x": x }), "x"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            if v.get("restore_in_place") == Some(&Value::Bool(true)) {
                "; its tenant may restore in place"
            } else {
                ""
            }
        )
    };
    match cmd {
        InstanceCommand::Add(a) => {
            let source = source_settings(a.source)?;
            let spec = InstanceSpec {
                name: a.name,
                tenant: tenant.unwrap_or_else(|| "default".into()),
                couchdb_config: source.couchdb_config,
                data_dir: source.data_dir,
                view_index_dir: source.view_index_dir,
                couchdb_url: a.couchdb_url,
                couchdb_credentials: a.couchdb_credentials,
                stop_command: a.stop_command,
                start_command: a.start_command,
                restore_in_place: a.restore_in_place,
            };
            let v: Value = c.post("/v1/instances", &serde_json::to_value(spec)?)?;
            c.show(&v, print_one)
        }
        InstanceCommand::List => {
            let v: Value = c.get("/v1/instances")?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let src = i
                            .get("couchdb_config")
                            .or_else(|| i.get("data_dir"))
                            .map(|p| s(&json!({ "p": p }), "p"))
                            .unwrap_or_default();
                        vec![
                            s(i, "tenant"),
                            s(i, "name"),
                            src,
                            s(i, "couchdb_url"),
                            s(i, "restore_in_place"),
                        ]
                    })
                    .collect();
                table(&["TENANT", "NAME", "SOURCE", "COUCHDB", "IN-PLACE"], &rows);
            })
        }
        InstanceCommand::Show { name } => {
            let v: Value = c.get(&format!("/v1/instances/{name}"))?;
            c.show(&v, print_one)
        }
        InstanceCommand::Rm { name } => {
            c.delete(&format!("/v1/instances/{name}"))?;
            if !c.json {
                println!("unregistered instance {name} (its backups stay)");
            }
            Ok(())
        }
        InstanceCommand::Apply { dir } => {
            let specs: Vec<InstanceSpec> = instances::read_dir_specs(&dir)
                .map_err(|e| anyhow!(e))?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            let v: Value = c.post("/v1/instances/apply", &json!({ "instances": specs }))?;
            c.show(&v, |v| {
                println!(
                    "instances: {} registered, {} unchanged",
                    v["registered"].as_array().map_or(0, Vec::len),
                    v["unchanged"].as_array().map_or(0, Vec::len)
                )
            })
        }
    }
}

fn schedule_spec(a: ScheduleAddArgs) -> Result<ScheduleSpec> {
    let source = source_settings(a.source)?;
    Ok(ScheduleSpec {
        name: a.name.unwrap_or_else(|| a.instance.clone()),
        tenant: None,
        instance: a.instance,
        couchdb_config: source.couchdb_config,
        data_dir: source.data_dir,
        view_index_dir: source.view_index_dir,
        cron: a.cron,
        tz: a.tz,
        policies: a.policies,
        tags: a.tags.into_iter().collect(),
        paused: a.paused,
        jitter: a.jitter,
        starting_deadline: a.starting_deadline,
    })
}

fn print_schedule(v: &Value) {
    println!(
        "schedule {} ({}/{}): {} {} on instance {}{}",
        s(v, "id"),
        s(v, "tenant"),
        s(v, "name"),
        s(v, "cron"),
        s(v, "tz"),
        s(v, "instance"),
        if v.get("paused") == Some(&Value::Bool(true)) {
            ", paused"
        } else {
            ""
        }
    );
    if let Some(n) = v.get("next_run") {
        println!("  next run  {}", n.as_str().unwrap_or("none (paused)"));
    }
    for r in v
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "  {}  {:<8} {}",
            s(r, "scheduled_for"),
            s(r, "outcome"),
            r.get("job_id")
                .or_else(|| r.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("")
        );
    }
}

fn schedule(c: &Client, cmd: ScheduleCommand) -> Result<()> {
    match cmd {
        ScheduleCommand::Add(a) => {
            let spec = schedule_spec(*a)?;
            let v: Value = c.post("/v1/schedules", &serde_json::to_value(spec)?)?;
            c.show(&v, print_schedule)
        }
        ScheduleCommand::List => {
            let v: Value = c.get("/v1/schedules")?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        vec![
                            s(x, "id"),
                            s(x, "tenant"),
                            s(x, "name"),
                            s(x, "instance"),
                            format!("{} {}", s(x, "cron"), s(x, "tz")),
                            if x.get("paused") == Some(&Value::Bool(true)) {
                                "paused".into()
                            } else {
                                "active".into()
                            },
                        ]
                    })
                    .collect();
                table(
                    &["ID", "TENANT", "NAME", "INSTANCE", "CRON", "STATE"],
                    &rows,
                );
            })
        }
        ScheduleCommand::Show { id } => {
            let v: Value = c.get(&format!("/v1/schedules/{id}"))?;
            c.show(&v, print_schedule)
        }
        ScheduleCommand::Rm { id } => {
            c.delete(&format!("/v1/schedules/{id}"))?;
            if !c.json {
                println!("removed schedule {id} (its backups stay)");
            }
            Ok(())
        }
        ScheduleCommand::Pause { id } => {
            let v: Value = c.post(&format!("/v1/schedules/{id}/pause"), &json!({}))?;
            c.show(&v, print_schedule)
        }
        ScheduleCommand::Resume { id } => {
            let v: Value = c.post(&format!("/v1/schedules/{id}/resume"), &json!({}))?;
            c.show(&v, print_schedule)
        }
        ScheduleCommand::Apply { dir } => {
            // Read and check the files here so errors name the file and line.
            let specs =
                couchvault::daemon::schedules::read_dir_specs(&dir).map_err(|e| anyhow!(e))?;
            let mut list = Vec::new();
            for (file, mut spec) in specs {
                spec.compile().map_err(|e| anyhow!("{file}: {e}"))?;
                for p in [
                    &mut spec.couchdb_config,
                    &mut spec.data_dir,
                    &mut spec.view_index_dir,
                ]
                .into_iter()
                .flatten()
                {
                    *p = absolute(p.clone())?;
                }
                list.push(spec);
            }
            let v: Value = c.post("/v1/schedules/apply", &json!({ "schedules": list }))?;
            c.show(&v, |v| {
                for k in ["created", "updated", "unchanged"] {
                    let names: Vec<String> = v
                        .get(k)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect();
                    println!(
                        "{k:<9} {}",
                        if names.is_empty() {
                            "-".into()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            })
        }
    }
}

fn job(c: &Client, cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::List { state, kind } => {
            let mut rb = c.request(Method::GET, "/v1/jobs");
            if let Some(st) = state {
                rb = rb.query(&[("state", st)]);
            }
            if let Some(k) = kind {
                rb = rb.query(&[("kind", k)]);
            }
            let mut jobs: Vec<Job> = c.send(rb)?;
            jobs.sort_by(|a, b| b.id.cmp(&a.id));
            if c.json {
                return print_json(&jobs);
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.clone(),
                        j.request.kind().into(),
                        j.tenant.clone(),
                        j.request.instance().unwrap_or("-").into(),
                        j.state.as_str().into(),
                        j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        j.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "KIND",
                    "TENANT",
                    "INSTANCE",
                    "STATE",
                    "CREATED (UTC)",
                    "ERROR",
                ],
                &rows,
            );
            Ok(())
        }
        JobCommand::Show { id } => {
            let j: Job = c.get(&format!("/v1/jobs/{id}"))?;
            if c.json {
                return print_json(&j);
            }
            print_job(&j);
            Ok(())
        }
        JobCommand::Watch { id } => {
            let j = c.watch(&id)?;
            c.report(&j)
        }
        JobCommand::Cancel { id } => {
            let j: Job = c.post(&format!("/v1/jobs/{id}/cancel"), &json!({}))?;
            if c.json {
                return print_json(&j);
            }
            println!("asked job {id} to stop; `couchvault job watch {id}` shows when it has");
            Ok(())
        }
    }
}

fn token(c: &Client, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create { admin, label } => {
            let tenant = match (admin, &c.tenant) {
                (true, _) => None,
                (false, Some(t)) => Some(t.clone()),
                (false, None) => bail!("give --tenant T for a tenant token, or --admin"),
            };
            // The tenant goes in the body; `?tenant=` is not for admin routes.
            let rb = c
                .http
                .post(format!("{}/v1/tokens", c.base))
                .bearer_auth(&c.token)
                .json(&json!({ "tenant": tenant, "label": label }));
            let v: Value = c.send(rb)?;
            c.show(&v, |v| {
                println!("{}", s(v, "token"));
                eprintln!(
                    "token {} for {} created; it is shown only this once",
                    s(v, "id"),
                    tenant
                        .as_deref()
                        .map_or("admin".to_string(), |t| format!("tenant '{t}'"))
                );
            })
        }
        TokenCommand::List => {
            let v: Value = c.send(
                c.http
                    .get(format!("{}/v1/tokens", c.base))
                    .bearer_auth(&c.token),
            )?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            s(t, "id"),
                            t.get("tenant")
                                .and_then(Value::as_str)
                                .unwrap_or("(admin)")
                                .into(),
                            s(t, "label"),
                            s(t, "created_at"),
                        ]
                    })
                    .collect();
                table(&["ID", "TENANT", "LABEL", "CREATED"], &rows);
            })
        }
        TokenCommand::Rm { id } => {
            c.send::<Value>(
                c.http
                    .delete(format!("{}/v1/tokens/{id}", c.base))
                    .bearer_auth(&c.token),
            )?;
            if !c.json {
                println!("revoked token {id}");
            }
            Ok(())
        }
    }
}
