//! The CLI as a client of `couchvault daemon` (`--server`, and the schedule, job and token
//! commands). Same verbs and output as local mode; the daemon does the work.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use couchvault::config::Config;
use couchvault::couchdb::http::CouchClient;
use couchvault::daemon::instances::{
    self, ApplyReport as InstancesApplied, Instance, InstanceSpec,
};
use couchvault::daemon::schedules::ApplyReport as SchedulesApplied;
use couchvault::format::BackupMetadata;
use couchvault::names::escape_control;
use couchvault::ops::databases::{DatabasesReport, DbRestoreReport};
use couchvault::ops::keys::{KeyUsage, RewrapReport};
use couchvault::ops::restore::RestoreOutcome;
use couchvault::ops::{Deleted, GcReport, VerifyReport};
use couchvault::policy::registry::Entry;
use couchvault::scheduler::{Schedule, ScheduleSpec};
use couchvault::wire::{
    BackupParams, BackupRow, DbRestoreParams, ErrorBody, InstanceApply, Job, KeyRotateParams,
    RestoreParams, ScheduleApply, ScheduleShown, TokenCreated, TokenInfo, TokenParams,
};
use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::args::{
    BackupCommand, Cli, Command, InstanceCommand, JobCommand, KeyCommand, PolicyCommand,
    ScheduleAddArgs, ScheduleCommand, TokenCommand,
};
use super::output::{bytes, print_json, progress_bar, table};
use super::render;

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
                | Command::Key(KeyCommand::List | KeyCommand::Rotate(_) | KeyCommand::Rewrap)
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
            let msg = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
            bail!("the daemon answered {status}: {msg}");
        }
        let text = if text.is_empty() { "null".into() } else { text };
        serde_json::from_str(&text).context("the daemon's answer is not the expected JSON")
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path))
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.send(self.request(Method::POST, path).json(body))
    }

    /// A POST whose route reads no body.
    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::POST, path))
    }

    /// A DELETE answered with 204 (no content).
    fn delete(&self, path: &str) -> Result<()> {
        self.send::<Option<serde::de::IgnoredAny>>(self.request(Method::DELETE, path))
            .map(|_| ())
    }

    /// Prints JSON with --json, else runs `human`.
    fn show<T: Serialize>(&self, v: &T, human: impl FnOnce(&T)) -> Result<()> {
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
        } else if !print_result(job) {
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
        render::verdicts(&j.retention);
    }
}

/// A succeeded job's result as local mode prints it; false when there is none to print.
fn print_result(j: &Job) -> bool {
    use couchvault::wire::{JobRequest, JobState};
    if j.state != JobState::Succeeded {
        return false;
    }
    let Some(result) = j.result.clone() else {
        return false;
    };
    let parsed = match &j.request {
        JobRequest::Verify { deep: true, .. } | JobRequest::Databases { .. } => {
            serde_json::from_value::<DatabasesReport>(result).map(|r| render::databases(&r))
        }
        JobRequest::Verify { .. } => {
            serde_json::from_value::<VerifyReport>(result).map(|r| render::verified(&r))
        }
        JobRequest::Delete { .. } => {
            serde_json::from_value::<Vec<Deleted>>(result).map(|d| render::deleted(&d))
        }
        JobRequest::Restore { .. } => {
            serde_json::from_value::<RestoreOutcome>(result).map(|o| render::restored(&o, None))
        }
        JobRequest::Gc { grace } => serde_json::from_value::<GcReport>(result)
            .map(|r| render::gc(&r, false, &grace.to_string())),
        JobRequest::RestoreDatabase { .. } => {
            serde_json::from_value::<DbRestoreReport>(result).map(|r| render::database_restored(&r))
        }
        JobRequest::KeyRotate { .. } => {
            serde_json::from_value::<RewrapReport>(result).map(|r| render::rewrapped(&r))
        }
        JobRequest::Backup(_) => return false,
    };
    parsed.is_ok()
}

pub fn run(cli: Cli, config: Config) -> Result<()> {
    let c = Client::new(&cli, &config)?;
    match cli.command {
        Command::Backup(BackupCommand::Create(a)) => {
            let body = BackupParams {
                instance: a.instance,
                source: a.source.absolute()?,
                policies: a.protection.into_iter().chain(a.retention).collect(),
                tags: a.tags.into_iter().collect(),
                compression_level: a.compression_level,
                allow_incomplete: a.allow_incomplete,
                backup_kind: a.kind.kind(),
                prefix_check: a.kind.prefix_check(),
                ..Default::default()
            };
            let job: Job = c.post("/v1/backups", &body)?;
            c.submitted(job, a.detach)
        }
        Command::Backup(BackupCommand::List { instance }) => {
            let mut rb = c.request(Method::GET, "/v1/backups");
            if let Some(i) = &instance {
                rb = rb.query(&[("instance", i)]);
            }
            let rows: Vec<BackupRow> = c.send(rb)?;
            let tenant = c.tenant.clone().unwrap_or_else(|| "default".into());
            c.show(&rows, |rows| render::backup_list(rows, &tenant, &c.base))
        }
        Command::Backup(BackupCommand::Show { id }) => {
            let meta: BackupMetadata = c.get(&format!("/v1/backups/{id}"))?;
            c.show(&meta, render::backup)
        }
        Command::Backup(BackupCommand::Verify { id, chain, deep }) => {
            let path = format!("/v1/backups/{id}/verify?chain={chain}&deep={deep}");
            let job: Job = c.post_empty(&path)?;
            c.submitted(job, false)
        }
        Command::Backup(BackupCommand::Databases { id }) => {
            let path = format!("/v1/backups/{id}/databases");
            let job: Job = c.post_empty(&path)?;
            c.submitted(job, false)
        }
        Command::Backup(BackupCommand::Delete {
            id,
            with_dependents,
        }) => {
            let path = format!("/v1/backups/{id}?with_dependents={with_dependents}");
            let job: Job = c.send(c.request(Method::DELETE, &path))?;
            c.submitted(job, false)
        }
        Command::Restore(a) if a.database.is_some() => {
            if a.to_url
                .as_deref()
                .is_some_and(CouchClient::url_has_credentials)
            {
                bail!("--to-url must not hold credentials: the daemon names them ([couchdb.credentials.NAME])");
            }
            let body = DbRestoreParams {
                backup_id: a.id.unwrap_or_default(),
                database: a.database.unwrap_or_default(),
                as_name: a.as_name,
                include_deleted: a.include_deleted,
                to_url: a.to_url,
                couchdb_credentials: None,
            };
            let job: Job = c.post("/v1/restores/database", &body)?;
            c.submitted(job, a.detach)
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
            let body = RestoreParams {
                backup_id: a.id.unwrap_or_default(),
                target: a.to,
                instance: None,
                in_place: a.in_place,
                view_index_target: a.view_index_to,
                config_target: a.config_to,
                force: a.force,
                discard_old: a.discard_old,
                node_name,
                rename_node: a.rename_node,
            };
            let job: Job = c.post("/v1/restores", &body)?;
            c.submitted(job, a.detach)
        }
        Command::Policy(PolicyCommand::Add { name, file, params }) => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let entry: Entry = c.send(
                c.request(Method::PUT, &format!("/v1/policies/{name}"))
                    .query(&[("params", params)])
                    .body(wasm),
            )?;
            c.show(&entry, render::policy_added)
        }
        Command::Policy(PolicyCommand::List) => {
            let entries: Vec<Entry> = c.get("/v1/policies")?;
            let tenant = c.tenant.clone().unwrap_or_else(|| "default".into());
            c.show(&entries, |e| render::policies(e, &tenant))
        }
        Command::Policy(PolicyCommand::Rm { name }) => {
            c.delete(&format!("/v1/policies/{name}"))?;
            if !c.json {
                println!("removed policy {name}");
            }
            Ok(())
        }
        Command::Key(KeyCommand::List) => {
            let keys: Vec<KeyUsage> = c.get("/v1/keys")?;
            c.show(&keys, |k| render::keys(k))
        }
        Command::Key(KeyCommand::Rotate(place)) => {
            let body = KeyRotateParams {
                barbican: place.barbican,
                rewrap_only: false,
            };
            let job: Job = c.post("/v1/keys/rotate", &body)?;
            c.submitted(job, false)
        }
        Command::Key(KeyCommand::Rewrap) => {
            let body = KeyRotateParams {
                barbican: false,
                rewrap_only: true,
            };
            let job: Job = c.post("/v1/keys/rotate", &body)?;
            c.submitted(job, false)
        }
        Command::Instance(cmd) => instance(&c, cmd, cli.tenant.clone()),
        Command::Schedule(cmd) => schedule(&c, cmd),
        Command::Job(cmd) => job(&c, cmd),
        Command::Token(cmd) => token(&c, cmd),
        _ => bail!("this command does not run against a daemon"),
    }
}

fn print_instance(i: &Instance) {
    let roots: Vec<String> = i.roots.iter().map(|r| r.display().to_string()).collect();
    println!(
        "instance {}/{}: backups read only inside {}{}",
        i.spec.tenant,
        i.spec.name,
        roots.join(", "),
        if i.spec.restore_in_place {
            "; its tenant may restore in place"
        } else {
            ""
        }
    )
}

fn instance(c: &Client, cmd: InstanceCommand, tenant: Option<String>) -> Result<()> {
    match cmd {
        InstanceCommand::Add(a) => {
            let spec = InstanceSpec {
                name: a.name,
                tenant: tenant.unwrap_or_else(|| "default".into()),
                source: a.source.absolute()?,
                couchdb_url: a.couchdb_url,
                couchdb_credentials: a.couchdb_credentials,
                stop_command: a.stop_command,
                start_command: a.start_command,
                restore_in_place: a.restore_in_place,
                other: Default::default(),
            };
            let inst: Instance = c.post("/v1/instances", &spec)?;
            c.show(&inst, print_instance)
        }
        InstanceCommand::List => {
            let list: Vec<Instance> = c.get("/v1/instances")?;
            c.show(&list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        let src = i.spec.source.couchdb_config.as_ref();
                        let src = src.or(i.spec.source.data_dir.as_ref());
                        vec![
                            i.spec.tenant.clone(),
                            i.spec.name.clone(),
                            src.map(|p| p.display().to_string()).unwrap_or_default(),
                            i.spec.couchdb_url.clone().unwrap_or_else(|| "-".into()),
                            i.spec.restore_in_place.to_string(),
                        ]
                    })
                    .collect();
                table(&["TENANT", "NAME", "SOURCE", "COUCHDB", "IN-PLACE"], &rows);
            })
        }
        InstanceCommand::Show { name } => {
            let inst: Instance = c.get(&format!("/v1/instances/{name}"))?;
            c.show(&inst, print_instance)
        }
        InstanceCommand::Rm { name } => {
            c.delete(&format!("/v1/instances/{name}"))?;
            if !c.json {
                println!("unregistered instance {name} (its backups stay)");
            }
            Ok(())
        }
        InstanceCommand::Apply { dir } => {
            let instances = instances::read_dir_specs(&dir)?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            let report: InstancesApplied =
                c.post("/v1/instances/apply", &InstanceApply { instances })?;
            c.show(&report, |r| {
                println!(
                    "instances: {} registered, {} unchanged",
                    r.registered.len(),
                    r.unchanged.len()
                )
            })
        }
    }
}

fn schedule_spec(a: ScheduleAddArgs) -> Result<ScheduleSpec> {
    Ok(ScheduleSpec {
        name: a.name.unwrap_or_else(|| a.instance.clone()),
        tenant: None,
        instance: a.instance,
        source: a.source.absolute()?,
        cron: a.cron,
        tz: a.tz,
        policies: a.policies,
        tags: a.tags.into_iter().collect(),
        paused: a.paused,
        backup_kind: a.kind.kind(),
        prefix_check: a.kind.prefix_check(),
        cluster: a.cluster,
        jitter: a.jitter,
        starting_deadline: a.starting_deadline,
        other: Default::default(),
    })
}

/// A schedule, with its next run when the daemon said (`schedule show`).
fn print_schedule(s: &Schedule, next_run: Option<Option<chrono::DateTime<chrono::Utc>>>) {
    use couchvault::scheduler::Outcome;
    let spec = &s.spec;
    println!(
        "schedule {} ({}/{}): {} {} on instance {}{}",
        s.id,
        s.tenant,
        spec.name,
        spec.cron,
        spec.tz,
        spec.instance,
        if spec.paused { ", paused" } else { "" }
    );
    if let Some(n) = next_run {
        match n {
            Some(t) => println!("  next run  {}", t.to_rfc3339()),
            None => println!("  next run  none (paused)"),
        }
    }
    for r in &s.history {
        let (outcome, what) = match &r.outcome {
            Outcome::Started { job_id } => ("started", job_id.as_str()),
            Outcome::Skipped { reason } => ("skipped", reason.as_str()),
            Outcome::Missed { reason, .. } => ("missed", reason.as_str()),
        };
        println!(
            "  {}  {:<8} {}",
            r.scheduled_for.to_rfc3339(),
            outcome,
            escape_control(what)
        );
    }
}

fn schedule(c: &Client, cmd: ScheduleCommand) -> Result<()> {
    let one = |s: &Schedule| print_schedule(s, None);
    match cmd {
        ScheduleCommand::Add(a) => {
            let spec = schedule_spec(*a)?;
            let s: Schedule = c.post("/v1/schedules", &spec)?;
            c.show(&s, one)
        }
        ScheduleCommand::List => {
            let list: Vec<Schedule> = c.get("/v1/schedules")?;
            c.show(&list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|x| {
                        vec![
                            x.id.clone(),
                            x.tenant.clone(),
                            x.spec.name.clone(),
                            x.spec.instance.clone(),
                            format!("{} {}", x.spec.cron, x.spec.tz),
                            if x.spec.paused { "paused" } else { "active" }.into(),
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
            let s: ScheduleShown = c.get(&format!("/v1/schedules/{id}"))?;
            c.show(&s, |s| print_schedule(&s.schedule, Some(s.next_run)))
        }
        ScheduleCommand::Rm { id } => {
            c.delete(&format!("/v1/schedules/{id}"))?;
            if !c.json {
                println!("removed schedule {id} (its backups stay)");
            }
            Ok(())
        }
        ScheduleCommand::Pause { id } => {
            let s: Schedule = c.post_empty(&format!("/v1/schedules/{id}/pause"))?;
            c.show(&s, one)
        }
        ScheduleCommand::Resume { id } => {
            let s: Schedule = c.post_empty(&format!("/v1/schedules/{id}/resume"))?;
            c.show(&s, one)
        }
        ScheduleCommand::Apply { dir } => {
            // Read and check the files here so errors name the file and line.
            let specs = couchvault::daemon::schedules::read_dir_specs(&dir)?;
            let mut schedules = Vec::new();
            for (file, mut spec) in specs {
                spec.compile().map_err(|e| anyhow!("{file}: {e}"))?;
                spec.source = spec.source.absolute()?;
                schedules.push(spec);
            }
            let report: SchedulesApplied =
                c.post("/v1/schedules/apply", &ScheduleApply { schedules })?;
            c.show(&report, |r| {
                for (k, names) in [
                    ("created", &r.created),
                    ("updated", &r.updated),
                    ("unchanged", &r.unchanged),
                ] {
                    let names = if names.is_empty() {
                        "-".into()
                    } else {
                        names.join(", ")
                    };
                    println!("{k:<9} {names}");
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
            c.show(&j, print_job)
        }
        JobCommand::Watch { id } => {
            let j = c.watch(&id)?;
            c.report(&j)
        }
        JobCommand::Cancel { id } => {
            let j: Job = c.post_empty(&format!("/v1/jobs/{id}/cancel"))?;
            c.show(&j, |_| {
                println!("asked job {id} to stop; `couchvault job watch {id}` shows when it has")
            })
        }
    }
}

fn token(c: &Client, cmd: TokenCommand) -> Result<()> {
    // Admin routes: `?tenant=` is not for them (the tenant goes in the body).
    let admin = |method: Method, path: &str| {
        c.http
            .request(method, format!("{}{path}", c.base))
            .bearer_auth(&c.token)
    };
    match cmd {
        TokenCommand::Create {
            admin: for_admin,
            label,
        } => {
            let tenant = match (for_admin, &c.tenant) {
                (true, _) => None,
                (false, Some(t)) => Some(t.clone()),
                (false, None) => bail!("give --tenant T for a tenant token, or --admin"),
            };
            let body = TokenParams { tenant, label };
            let created: TokenCreated = c.send(admin(Method::POST, "/v1/tokens").json(&body))?;
            c.show(&created, |t| {
                println!("{}", t.token);
                eprintln!(
                    "token {} for {} created; it is shown only this once",
                    t.info.id,
                    t.info
                        .tenant
                        .as_deref()
                        .map_or("admin".to_string(), |t| format!("tenant '{t}'"))
                );
            })
        }
        TokenCommand::List => {
            let list: Vec<TokenInfo> = c.send(admin(Method::GET, "/v1/tokens"))?;
            c.show(&list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.tenant.clone().unwrap_or_else(|| "(admin)".into()),
                            t.label.clone(),
                            t.created_at.to_rfc3339(),
                        ]
                    })
                    .collect();
                table(&["ID", "TENANT", "LABEL", "CREATED"], &rows);
            })
        }
        TokenCommand::Rm { id } => {
            c.send::<Option<serde::de::IgnoredAny>>(admin(
                Method::DELETE,
                &format!("/v1/tokens/{id}"),
            ))?;
            if !c.json {
                println!("revoked token {id}");
            }
            Ok(())
        }
    }
}
