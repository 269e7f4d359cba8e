//! The command line: argument parsing, and for each subcommand, calling into `app` and printing
//! the result (human text, or one JSON document on stdout with `--json`).
//!
//! - here: the argument definitions, exit codes and the dispatch to each subcommand;
//! - `commands`: the subcommands with logic of their own (`enqueue --wait`, `retention`,
//!   `cron next`, `validate`); `print`: the human-readable reports.
//!
//! Exit codes: 0 ok, 78 configuration error (EX_CONFIG; the systemd unit does not restart on
//! it), 1 any other failure. Subcommands whose issue has not landed yet say so and exit 1; none
//! pretends to succeed.

mod commands;
mod print;
mod status;
mod webhooks;

use commands::{cron_next, enqueue, retention, validate, NewBuild, NewRun};
use print::{error_chain, print_check_report, print_migrate_report};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::{Config, ConfigError, Overrides};
use crate::telemetry::LogFormat;

/// EX_CONFIG from sysexits.h.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "app-executor",
    version,
    about = "Runs user-submitted Node.js apps from Supabase in hardened Docker containers",
    after_help = "Configuration: executor.toml (see --config) plus APP_EXECUTOR_<SECTION>__<KEY> \
                  environment overrides; the database URL from --database-url, \
                  APP_EXECUTOR_DATABASE__URL or DATABASE_URL."
)]
pub struct Cli {
    /// Config file [default: ./executor.toml, then /etc/app-executor/executor.toml]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL; wins over APP_EXECUTOR_DATABASE__URL and DATABASE_URL
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format; overrides telemetry.format
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: claim pending runs and execute them
    #[command(
        after_help = "Examples:\n  app-executor run\n  app-executor run --until-idle   # drain the queue once, then exit 0"
    )]
    Run {
        /// Exit 0 once no runnable run is left
        #[arg(long)]
        until_idle: bool,
        /// Tests only (debug builds): a trivial execution, e.g. sleep=100ms,record=/path
        #[arg(long, hide = true)]
        test_execution: Option<String>,
    },
    /// Apply pending database migrations (Supabase CLI compatible)
    #[command(
        after_help = "Examples:\n  app-executor migrate --database-url postgres://postgres@localhost/postgres\n  app-executor migrate --dry-run --json"
    )]
    Migrate {
        /// Only report what would be applied
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration and every dependency; print the effective config (secrets redacted)
    #[command(
        after_help = "Examples:\n  app-executor check\n  app-executor check --json | jq .checks"
    )]
    Check {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Validate an app directory (manifest, paths, limits); exit 1 listing every problem
    #[command(
        after_help = "Examples:\n  app-executor validate examples/hello\n  app-executor validate ./my-app --json | jq .problems"
    )]
    Validate {
        /// The app directory (holding manifest.json)
        dir: PathBuf,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Upload an app directory to storage and register its files and permissions
    #[command(
        after_help = "Examples:\n  app-executor publish ./my-app --app <app-id>\n  app-executor publish ./my-app --app <app-id> --build --wait   # then build it once for every host"
    )]
    Publish {
        dir: PathBuf,
        #[arg(long)]
        app: String,
        /// Version to publish as [default: the manifest's version]
        #[arg(long = "version", id = "app_version", value_name = "VERSION")]
        app_version: Option<String>,
        /// Then create a build of the published version (see `build`)
        #[arg(long)]
        build: bool,
        /// With --build: follow the build to its end
        #[arg(long, requires = "build")]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create a build of an app version: dependencies installed and the build script run once,
    /// packed into one archive every host's runs start from; --wait follows it to the end
    #[command(
        after_help = "Examples:\n  app-executor build <app-id> --wait\n  app-executor build <app-id> --version 1.2.0 --build-config '{\"script\": \"build:prod\", \"timeout\": 900}'\n  app-executor logs <build-id>"
    )]
    Build {
        /// The application's id
        app: String,
        /// Version to build [default: the newest published version]
        #[arg(long = "version", id = "build_version", value_name = "VERSION")]
        build_version: Option<String>,
        /// `build_config` as a JSON object: `script` (package.json script to run), `env`
        /// (extra environment), `timeout` (seconds)
        #[arg(long, value_name = "JSON")]
        build_config: Option<String>,
        /// Follow the build to its end; exit 0 success, 1 failed, 130 cancelled
        #[arg(long)]
        wait: bool,
        /// Print JSON on stdout (the id, or with --wait the final state)
        #[arg(long)]
        json: bool,
    },
    /// Create a run; --wait follows it to the end
    Enqueue {
        #[arg(long)]
        app: String,
        #[arg(long)]
        company: Option<String>,
        #[arg(long)]
        input: Option<String>,
        /// `app_runs.run_type` (the app sees it as RUN_TYPE)
        #[arg(long, default_value = "manual",
              value_parser = ["manual", "cron", "webhook", "test", "api"])]
        run_type: String,
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a run's or a build's logs from storage (stdout to stdout, stderr to stderr)
    #[command(
        after_help = "Examples:\n  app-executor logs 0b6c1a1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b\n  app-executor logs <run-id> --follow   # until the run ends\n  app-executor logs <build-id>"
    )]
    Logs {
        /// The run's (or build's) id
        run: String,
        /// Keep printing new output until the run ends
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cron tools
    #[command(subcommand)]
    Cron(CronCommand),
    /// The fleet at a glance: executors, queue by company, runs in flight, last hour's failures
    #[command(
        after_help = "Examples:\n  app-executor status\n  app-executor status --watch\n  app-executor status --json"
    )]
    Status {
        /// Print one JSON document (with --watch, one line per refresh)
        #[arg(long)]
        json: bool,
        /// Redraw in place until Ctrl-C
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes
        #[arg(long, default_value = "2s")]
        interval: String,
    },
    /// Webhook triggers: URLs whose signed requests become webhook runs of an app
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Delete old logs, outputs, builds and versions now, as the daemons do every
    /// retention.interval (see [retention] in executor.toml)
    #[command(
        after_help = "Examples:\n  app-executor retention --dry-run          # list what a pass would delete\n  app-executor retention --dry-run --json | jq '.planned | length'\n  app-executor retention                    # one pass now"
    )]
    Retention {
        /// Delete nothing; print what would be deleted
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Run the whole system once on an embedded database and local storage
    #[command(
        after_help = "Examples:\n  scripts/demo                     # builds what is missing (runtime image) and runs this\n  app-executor demo --app-dir my-app\n\nWith no database configured, a private PostgreSQL cluster is started in <state_dir>/postgres and stopped at the end."
    )]
    Demo {
        /// The app to publish and run [default: examples/hello]
        #[arg(long)]
        app_dir: Option<PathBuf>,
    },
    /// Started by `run` itself: removes the daemon's containers when the daemon dies
    #[command(hide = true)]
    Reaper {
        /// The daemon's executor id
        #[arg(long)]
        executor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Print the next fire times of a cron expression, local and UTC
    #[command(
        after_help = "Examples:\n  app-executor cron next '30 2 * * *' --tz America/New_York --after 2026-03-07T00:00:00Z -n 3\n  app-executor cron next @daily --tz Europe/London --json"
    )]
    Next {
        /// 5 fields (minute first), 6 with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly
        expression: String,
        /// IANA time zone the expression is evaluated in
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start after this RFC 3339 instant [default: now]
        #[arg(long)]
        after: Option<String>,
        /// How many fire times to print
        #[arg(short = 'n', default_value_t = 10)]
        count: usize,
        /// Print a JSON array of {"utc", "local"}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook for an app and company; prints its URL and its secret (only this once)
    #[command(
        after_help = "Example:\n  app-executor webhook create --app 7d9f... --company 1b2c... --description 'GitHub pushes'"
    )]
    Create {
        /// Application id
        #[arg(long)]
        app: String,
        /// Company id [default: the app's only company]
        #[arg(long)]
        company: Option<String>,
        /// Also accept `Authorization: Bearer <secret>` from senders that cannot sign
        #[arg(long)]
        bearer: bool,
        /// Requests per minute accepted (per listening daemon)
        #[arg(long, default_value_t = 600)]
        rate_limit: i32,
        /// A note for the company's admins
        #[arg(long)]
        description: Option<String>,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Give a webhook a new secret (printed once); the old one stays valid for the grace period
    Rotate {
        /// Webhook id
        id: String,
        /// How long the old secret is still accepted
        #[arg(long, default_value = "24h")]
        grace: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// List webhooks (never their secrets)
    List {
        /// Only this application's
        #[arg(long)]
        app: Option<String>,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting requests for a webhook (they get 404, like an unknown one)
    Disable {
        /// Webhook id
        id: String,
    },
    /// Accept requests for a disabled webhook again
    Enable {
        /// Webhook id
        id: String,
    },
}

/// An error that ends the process with a specific status (after printing its message).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

/// Parses the config, runs the subcommand and returns the process exit code. Errors are printed
/// here, once, with their whole chain.
pub fn main(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            if let Some(exit) = error.downcast_ref::<ExitWith>() {
                ExitCode::from(exit.code)
            } else if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        config_path: cli.config.clone(),
        database_url: cli.database_url.clone(),
    };
    let mut config = Config::load(&overrides)?;
    if let Some(format) = cli.log_format {
        config.telemetry.format = format;
    }
    crate::telemetry::init(config.telemetry.format, &config.telemetry.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(cli.command, config))
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate { dry_run, json } => {
            let report = app::migrate(&config, dry_run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_migrate_report(&report);
            }
            Ok(())
        }
        Command::Check { json } => {
            let report = app::check(&config).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_check_report(&report);
            }
            match report.failed() {
                Some(name) => anyhow::bail!("check failed: {name}"),
                None => Ok(()),
            }
        }
        Command::Run {
            until_idle,
            test_execution,
        } => {
            let shutdown = crate::shutdown::on_signals()?;
            let options = app::RunOptions {
                until_idle,
                test_execution,
            };
            app::run(&config, options, shutdown).await
        }
        Command::Validate { dir, json } => validate(&dir, &config, json),
        Command::Reaper { executor } => app::reap(&config, &executor).await,
        Command::Publish {
            dir,
            app,
            app_version,
            build,
            wait,
            json,
        } => {
            let report = app::publish(&config, &dir, &app, app_version.as_deref(), !json).await?;
            if json && !build {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if json {
                // One JSON document: the build's line (or state, with --wait) follows alone.
            } else if report.already_published {
                println!(
                    "version {} of app {} is already published with exactly these {} files; nothing changed",
                    report.version, report.app, report.files
                );
            } else {
                println!(
                    "published version {} of app {}: {} files, {} bytes",
                    report.version, report.app, report.files, report.bytes
                );
            }
            for skipped in &report.skipped {
                eprintln!("warning: not published: {skipped}");
            }
            if !build {
                return Ok(());
            }
            let new = NewBuild {
                app: &app,
                version: Some(&report.version),
                config: None,
            };
            commands::build(&config, new, wait, json).await
        }
        Command::Build {
            app,
            build_version,
            build_config,
            wait,
            json,
        } => {
            let new = NewBuild {
                app: &app,
                version: build_version.as_deref(),
                config: build_config.as_deref(),
            };
            commands::build(&config, new, wait, json).await
        }
        Command::Enqueue {
            app,
            company,
            input,
            run_type,
            wait,
            json,
        } => {
            let run = NewRun {
                app: &app,
                company: company.as_deref(),
                input: input.as_deref(),
                run_type: &run_type,
            };
            enqueue(&config, run, wait, json).await
        }
        Command::Logs { run, follow } => app::logs(&config, &run, follow).await,
        Command::Retention { dry_run, json } => retention(&config, dry_run, json).await,
        Command::Webhook(command) => webhooks::run(&config, command).await,
        Command::Status {
            json,
            watch,
            interval,
        } => {
            let interval = humantime::parse_duration(&interval).map_err(|e| {
                anyhow::anyhow!("--interval {interval:?} is not a duration ({e}); use e.g. 2s")
            })?;
            status::run(&config, json, watch, interval).await
        }
        Command::Cron(CronCommand::Next {
            expression,
            tz,
            after,
            count,
            json,
        }) => cron_next(&expression, &tz, after.as_deref(), count, json),
        Command::Demo { app_dir } => {
            let interrupt = crate::shutdown::on_signals()?;
            let options = crate::demo::DemoOptions {
                app_dir: app_dir.unwrap_or_else(crate::demo::default_app_dir),
            };
            if crate::demo::demo(&config, options, interrupt).await? {
                println!("\ndemo finished: the run succeeded");
                Ok(())
            } else {
                Err(ExitWith {
                    code: 1,
                    message: "demo finished, but the run did not succeed (see above)".into(),
                }
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
