//! `parti provision plan|apply`: create the JetStream resources a Parti deployment needs ahead of
//! time, and find (and fix) those whose settings drifted from the configuration.
//!
//! The resources are the four KV buckets derived from the configuration by
//! [`parti::Config::bucket_specs`] (the specs a worker opens them with), and optionally with
//! `--stream NAME --subjects a.>,b.>` the stream a `WorkerConsumer` reads. There is no
//! `--partitions`: the library has no NATS-KV partition source, so no bucket to provision for one.
//!
//! Layout (as the library's consumer reconciler): [`plan`] decides without I/O — wanted
//! resources and observed stream configurations in, one step per resource out — and this module
//! is the shell that reads the server, prints, and carries the steps out. [`report`] renders the
//! result as a table or as JSON (the shape is in `docs/operations.md`, "Provisioning buckets").
//!
//! Exit codes (both subcommands):
//! - `0` — nothing to do (plan), or everything now matches (apply);
//! - `1` — an error, including `--policy force` without `--yes-destroy-data` (nothing is changed
//!   then);
//! - `2` — `plan --fail-on-drift`: something is missing or drifts; `apply`: drift remains
//!   (policy `warn`, or fields `adopt` cannot change in place);
//! - `3` — a bad configuration (file, `PARTI_…` variables, stream name or subjects);
//! - `4` — NATS unreachable.

pub(crate) mod plan;
mod report;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::stream::{self, StorageType};
use clap::{Args, Subcommand};
use parti::store::{NatsStore, Store};

use crate::global::Global;
use plan::{Action, Policy, Resource, Retention, Step, StreamSpec, Verdict, Want};
use report::{Outcome, Report};

/// Exit code: something is missing or drifts (see the module docs).
pub(crate) const EXIT_DRIFT: u8 = 2;
/// Exit code: the configuration is invalid.
pub(crate) const EXIT_BAD_CONFIG: u8 = 3;
/// Exit code: NATS cannot be reached.
pub(crate) const EXIT_UNREACHABLE: u8 = 4;

/// The smallest bound on a write (create, update, delete): a replicated stream takes a while.
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `parti provision`.
#[derive(Debug, Args)]
pub(crate) struct ProvisionArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: ProvisionCommand,
}

/// The subcommands of `parti provision`.
#[derive(Debug, Subcommand)]
pub(crate) enum ProvisionCommand {
    /// Compare the buckets (and stream) on the server with the configuration; change nothing.
    ///
    /// Each resource is `create` (missing), `ok`, or `drift` with every differing setting.
    /// Exit codes: 0 nothing to do (also with drift unless --fail-on-drift), 2 something is
    /// missing or drifts and --fail-on-drift is given, 1 error, 3 bad config, 4 NATS unreachable.
    Plan(PlanArgs),
    /// Create what is missing; handle drift by --policy (warn, adopt, force).
    ///
    /// Exit codes: 0 everything matches now, 2 drift remains (policy warn, or settings adopt
    /// cannot change in place), 1 error (also: force without --yes-destroy-data, nothing is
    /// changed), 3 bad config, 4 NATS unreachable. With --dry-run nothing is changed and the code
    /// is the one the real run would return.
    Apply(ApplyArgs),
}

/// Options of both subcommands.
#[derive(Debug, Args)]
pub(crate) struct Targets {
    /// Also provision this JetStream stream (the one a WorkerConsumer reads), with --subjects.
    #[arg(long, value_name = "NAME", requires = "subjects")]
    pub(crate) stream: Option<String>,
    /// Subjects of the --stream, comma-separated (`orders.>,refunds.>`).
    #[arg(
        long,
        value_name = "SUBJECTS",
        value_delimiter = ',',
        requires = "stream"
    )]
    pub(crate) subjects: Vec<String>,
    /// Retention of the --stream (default work-queue).
    #[arg(long, value_enum, requires = "stream")]
    pub(crate) retention: Option<Retention>,
    /// Print the result as JSON (shape in docs/operations.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of `parti provision plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Resources and output.
    #[command(flatten)]
    pub(crate) targets: Targets,
    /// Exit with 2 when anything is missing or drifts (for CI and pre-deploy checks).
    #[arg(long)]
    pub(crate) fail_on_drift: bool,
}

/// Options of `parti provision apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Resources and output.
    #[command(flatten)]
    pub(crate) targets: Targets,
    /// What to do with a resource whose settings differ: `warn` reports it and changes
    /// nothing; `adopt` changes in place what NATS can (replicas, max_age, history, limit
    /// markers, subjects) and reports the rest; `force` deletes and recreates it, destroying its
    /// data (only with --yes-destroy-data).
    #[arg(long, value_enum, default_value = "warn")]
    pub(crate) policy: Policy,
    /// Consent to --policy force deleting the data of the resources it recreates.
    #[arg(long)]
    pub(crate) yes_destroy_data: bool,
    /// Show what apply would do with this policy, and exit with its code; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Which subcommand runs, with what it alone needs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `plan`.
    Plan {
        /// `--fail-on-drift`.
        fail_on_drift: bool,
    },
    /// `apply`.
    Apply {
        /// `--policy`.
        policy: Policy,
        /// `--yes-destroy-data`.
        yes_destroy: bool,
        /// `--dry-run`.
        dry_run: bool,
    },
}

/// Runs `parti provision plan|apply`.
pub(crate) async fn run(args: ProvisionArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let (mode, targets) = match args.command {
        ProvisionCommand::Plan(a) => (
            Mode::Plan {
                fail_on_drift: a.fail_on_drift,
            },
            a.targets,
        ),
        ProvisionCommand::Apply(a) => (
            Mode::Apply {
                policy: a.policy,
                yes_destroy: a.yes_destroy_data,
                dry_run: a.dry_run,
            },
            a.targets,
        ),
    };
    let config = match global.load_config() {
        Ok(config) => config,
        Err(e) => return Ok(fail(EXIT_BAD_CONFIG, &e)),
    };
    let resources = match resources(&config, &targets) {
        Ok(resources) => resources,
        Err(e) => return Ok(fail(EXIT_BAD_CONFIG, &e)),
    };
    let client = match connect(global).await {
        Ok(client) => client,
        Err(Unreachable::Config(e)) => return Ok(fail(EXIT_BAD_CONFIG, &e)),
        Err(Unreachable::Nats(e)) => return Ok(fail(EXIT_UNREACHABLE, &e)),
    };
    let js = jetstream::new(client);
    let read_timeout = config.operation_timeout;
    let write_timeout = config.operation_timeout.max(MIN_WRITE_TIMEOUT);

    let policy = match mode {
        Mode::Plan { .. } => Policy::Warn,
        Mode::Apply { policy, .. } => policy,
    };
    let (existing, steps) = survey(&js, &resources, read_timeout, policy).await?;
    let mut report = Report::new(&global.connect.nats, &resources, &steps, policy);

    let code = match mode {
        Mode::Plan { fail_on_drift } => {
            report.command = "plan";
            match plan::plan_verdict(&steps) {
                Verdict::Pending if fail_on_drift => EXIT_DRIFT,
                _ => 0,
            }
        }
        Mode::Apply {
            yes_destroy,
            dry_run,
            ..
        } => {
            report.command = "apply";
            report.dry_run = dry_run;
            match plan::apply_verdict(&steps, &resources, yes_destroy) {
                Verdict::Refused(message) => {
                    report.error = Some(message);
                    1
                }
                verdict => {
                    let failed = if dry_run {
                        false
                    } else {
                        let outcomes =
                            execute(&js, &resources, &steps, &existing, write_timeout).await;
                        let failed = outcomes.iter().any(|o| o.error.is_some());
                        report.outcomes = outcomes;
                        failed
                    };
                    match verdict {
                        _ if failed => 1,
                        Verdict::Pending => EXIT_DRIFT,
                        _ => 0,
                    }
                }
            }
        }
    };
    report.exit_code = code;
    let text = if targets.json {
        report.json()?
    } else {
        report.human()
    };
    crate::output::print(&text)?;
    if let Some(error) = &report.error {
        eprintln!("error: {error}");
    }
    for (resource, outcome) in resources.iter().zip(&report.outcomes) {
        if let Some(error) = &outcome.error {
            eprintln!("error: {} {}: {error}", resource.kind(), resource.name);
        }
    }
    Ok(ExitCode::from(code))
}

/// Prints the error as `main` does and returns `code`.
fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", crate::output::error_chain(error));
    ExitCode::from(code)
}

/// The resources the configuration and the options ask for: the four buckets, then the stream.
fn resources(config: &parti::Config, targets: &Targets) -> anyhow::Result<Vec<Resource>> {
    let mut out = Resource::buckets(config);
    if let Some(name) = &targets.stream {
        check_stream_name(name)?;
        let subjects: BTreeSet<String> = targets
            .subjects
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if subjects.is_empty() {
            anyhow::bail!("--subjects is empty: give at least one subject for --stream {name}");
        }
        for subject in &subjects {
            check_subject(subject)?;
        }
        out.push(Resource {
            role: None,
            name: name.clone(),
            want: Want::Stream(StreamSpec {
                subjects,
                retention: targets.retention.unwrap_or(Retention::WorkQueue).policy(),
                replicas: config.kv_buckets.replicas,
            }),
        });
    }
    Ok(out)
}

/// A stream name NATS accepts: not empty, no whitespace, none of `. * > / \`.
fn check_stream_name(name: &str) -> anyhow::Result<()> {
    let bad = name.is_empty()
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if bad {
        anyhow::bail!(
            "--stream {name:?} is not a valid stream name (no spaces and none of . * > / \\)"
        );
    }
    Ok(())
}

/// A subject: `.`-separated non-empty tokens without whitespace, `*` and `>` only as whole
/// tokens, `>` only last.
fn check_subject(subject: &str) -> anyhow::Result<()> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ok = tokens.iter().enumerate().all(|(i, token)| {
        !token.is_empty()
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
            && (*token == "*"
                || (*token == ">" && i + 1 == tokens.len())
                || !token.contains(['*', '>']))
    });
    if !ok {
        anyhow::bail!(
            "--subjects: {subject:?} is not a valid subject (dot-separated tokens; `*` and a \
             final `>` as whole tokens)"
        );
    }
    Ok(())
}

/// Why no client could be made.
enum Unreachable {
    /// The connection options themselves are wrong (no URL, unreadable credentials).
    Config(anyhow::Error),
    /// The server could not be reached.
    Nats(anyhow::Error),
}

/// Connects, telling bad options apart from an unreachable server.
async fn connect(global: &Global) -> Result<async_nats::Client, Unreachable> {
    let urls = global.connect.urls();
    if urls.is_empty() {
        return Err(Unreachable::Config(anyhow::anyhow!(
            "--nats is empty: give at least one server URL"
        )));
    }
    let options = global
        .connect
        .options("parti provision")
        .await
        .map_err(Unreachable::Config)?;
    options
        .connect(urls)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", global.connect.nats))
        .map_err(Unreachable::Nats)
}

/// Reads what the server has for each resource and plans with `policy`: the configuration of
/// each resource's stream (`None`: it does not exist; an in-place update starts from it), and one
/// step per resource. `parti validate --live` compares the buckets through this too.
pub(crate) async fn survey(
    js: &jetstream::Context,
    resources: &[Resource],
    bound: Duration,
    policy: Policy,
) -> anyhow::Result<(Vec<Option<stream::Config>>, Vec<Step>)> {
    let mut existing = Vec::with_capacity(resources.len());
    for resource in resources {
        existing.push(crate::buckets::stream_config(js, &resource.stream_name(), bound).await?);
    }
    // A stream without a consumer limit of its own has the server's (1,000 from 2.15 on).
    let server_limit = parti::store::NatsStore::new(js.clone())
        .default_consumer_limit()
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(-1);
    let observed: Vec<_> = existing
        .iter()
        .map(|c| {
            c.as_ref().map(|c| {
                let mut observed = plan::Observed::from_config(c);
                if observed.max_consumers <= 0 {
                    observed.max_consumers = server_limit;
                }
                observed
            })
        })
        .collect();
    let steps = plan::plan(resources, &observed, policy);
    Ok((existing, steps))
}

/// Carries every writing step out, one resource after the other; a failure is recorded on its
/// resource and the others still run (they are independent).
async fn execute(
    js: &jetstream::Context,
    resources: &[Resource],
    steps: &[Step],
    existing: &[Option<stream::Config>],
    bound: Duration,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(steps.len());
    for step in steps {
        let Some(resource) = resources.get(step.index) else {
            outcomes.push(Outcome::failed("no such resource".into()));
            continue;
        };
        if !step.writes() {
            outcomes.push(Outcome::default());
            continue;
        }
        let existing = existing.get(step.index).cloned().flatten();
        let result = match step.action {
            Action::Create => create(js, resource, bound).await,
            Action::Update => match existing {
                Some(config) => update(js, resource, step, config, bound).await,
                None => Err(anyhow::anyhow!("it disappeared since it was read")),
            },
            Action::Recreate => recreate(js, resource, bound).await,
            Action::Ok | Action::Drift => Ok(()),
        };
        outcomes.push(match result {
            Ok(()) => Outcome::applied(),
            Err(e) => Outcome::failed(crate::output::error_chain(&e)),
        });
    }
    outcomes
}

/// Creates a missing resource: a bucket exactly as a worker would (through the library's
/// store), a stream with file storage and the wanted subjects, retention and replicas.
async fn create(
    js: &jetstream::Context,
    resource: &Resource,
    bound: Duration,
) -> anyhow::Result<()> {
    match &resource.want {
        Want::Bucket(spec) => {
            NatsStore::new(js.clone())
                .with_operation_timeout(bound)
                .bucket(spec)
                .await
                .context("cannot create the bucket")?;
        }
        Want::Stream(spec) => {
            let config = stream::Config {
                name: resource.name.clone(),
                subjects: spec.subjects.iter().cloned().collect(),
                retention: spec.retention,
                storage: StorageType::File,
                num_replicas: spec.replicas.max(1),
                ..Default::default()
            };
            tokio::time::timeout(bound, js.create_stream(config))
                .await
                .context("timed out creating the stream")?
                .context("cannot create the stream")?;
        }
    }
    Ok(())
}

/// Changes in place the settings of `step` that NATS can change, keeping everything else.
async fn update(
    js: &jetstream::Context,
    resource: &Resource,
    step: &Step,
    existing: stream::Config,
    bound: Duration,
) -> anyhow::Result<()> {
    let config = plan::patched(existing, &resource.want, &step.changes);
    tokio::time::timeout(bound, js.update_stream(&config))
        .await
        .context("timed out updating the stream")?
        .with_context(|| format!("cannot update the stream {}", resource.stream_name()))?;
    Ok(())
}

/// Deletes the resource's stream (and with it every value) and creates it again.
async fn recreate(
    js: &jetstream::Context,
    resource: &Resource,
    bound: Duration,
) -> anyhow::Result<()> {
    let name = resource.stream_name();
    tokio::time::timeout(bound, js.delete_stream(&name))
        .await
        .context("timed out deleting the stream")?
        .with_context(|| format!("cannot delete the stream {name}"))?;
    create(js, resource, bound).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_subjects_are_checked() {
        for good in ["events", "EV_1-x"] {
            assert!(check_stream_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a.>", "a.*.c", "orders", ">"] {
            assert!(check_subject(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a.>.c", "a b", "a*.b", ".a", "a."] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stream_comes_after_the_four_buckets() {
        use crate::buckets::Role;

        let targets = Targets {
            stream: Some("events".into()),
            subjects: vec!["b.>".into(), " a.> ".into(), "b.>".into()],
            retention: None,
            json: false,
        };
        let resources = resources(&parti::Config::default(), &targets).unwrap();
        let names: Vec<_> = resources
            .iter()
            .map(|r| (r.role, r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (Some(Role::StableId), "parti-stableid"),
                (Some(Role::Election), "parti-election"),
                (Some(Role::Heartbeat), "parti-heartbeat"),
                (Some(Role::Assignment), "parti-assignment"),
                (None, "events"),
            ]
        );
        assert_eq!(
            resources[4].want,
            Want::Stream(StreamSpec {
                subjects: BTreeSet::from(["a.>".to_owned(), "b.>".to_owned()]),
                retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                replicas: 1,
            })
        );
        let empty = Targets {
            subjects: vec![" ".into()],
            ..targets
        };
        assert!(super::resources(&parti::Config::default(), &empty).is_err());
    }
}
