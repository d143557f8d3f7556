//! The operator's verbs: `switchyard models`, `traffic`, `rollout`, `drift`,
//! `load`, `unload` and `infer`, each a client of a running server's HTTP API,
//! with the exit codes scripts read (0 ok, 1 the server said no, 2 usage,
//! 3 no server).

mod api;
mod drift;
mod infer;
mod models;
mod render;
mod rollout;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

pub use api::Connection;
use api::{Client, Outcome};
use render::Format;

/// What every client verb takes: where the server is, and how to print.
#[derive(clap::Args, Debug)]
pub struct Common {
    #[command(flatten)]
    pub connection: Connection,
    /// How to print: a table for people, JSON or YAML for scripts.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: Format,
}

#[derive(clap::Args, Debug)]
pub struct ModelsArgs {
    /// One model (default: all).
    pub model: Option<String>,
    /// Redraw every --every until interrupted.
    #[arg(long, short)]
    pub watch: bool,
    /// How often --watch redraws (100ms at least).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = interval)]
    pub every: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct TrafficArgs {
    #[command(subcommand)]
    pub verb: TrafficVerb,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Subcommand, Debug)]
pub enum TrafficVerb {
    /// The policy, and each version's share.
    Get {
        /// The model.
        model: String,
    },
    /// Sets the split: `switchyard traffic set mlp 1=90 2=10`; shows it before and after.
    Set {
        /// The model.
        model: String,
        /// VERSION=WEIGHT, non-negative integers, normalised.
        #[arg(value_name = "VERSION=WEIGHT")]
        weights: Vec<String>,
        /// A request header whose value pins a caller to a version.
        #[arg(long, value_name = "HEADER")]
        sticky_header: Option<String>,
        /// A version that gets a copy of PERCENT of the requests (all without
        /// one), e.g. 3:5%.
        #[arg(long, value_name = "VERSION[:PERCENT]")]
        shadow: Option<String>,
        /// Remove the policy: the default version takes everything.
        #[arg(long)]
        clear: bool,
        /// Print the policy that would be sent, and send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub verb: RolloutVerb,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Subcommand, Debug)]
pub enum RolloutVerb {
    /// Starts a progressive rollout of a candidate version.
    Start(rollout::StartArgs),
    /// The rollout's steps, weight and gates. With --watch, redrawn until it
    /// ends: exit 0 when promoted, 1 when rolled back or aborted.
    Status {
        /// The model.
        model: String,
        /// Redraw until the rollout ends.
        #[arg(long, short)]
        watch: bool,
        /// How often --watch redraws (100ms at least).
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = interval)]
        every: Duration,
    },
    /// Stops the rollout: the stable version gets all the traffic back.
    Abort {
        /// The model.
        model: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    /// MODEL or MODEL:VERSION (default: the default version).
    pub model: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The model (a folder of the repository).
    pub model: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// MODEL or MODEL:VERSION.
    pub model: String,
    /// A V2 JSON request (.json), or rows: CSV with a header, a .npy, a .parquet.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// `--every`: a duration, not so short that redrawing becomes a busy loop.
fn interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s} is shorter than 100ms"));
    }
    Ok(d)
}

/// A client verb, parsed.
pub enum Verb {
    Models(ModelsArgs),
    Traffic(TrafficArgs),
    Rollout(RolloutArgs),
    Drift(DriftArgs),
    Load(LoadArgs, bool),
    Infer(InferArgs),
}

/// Runs `verb`; its failure is printed to stderr and becomes the exit code.
pub fn run(verb: Verb) -> ExitCode {
    match act(verb) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn act(verb: Verb) -> Outcome {
    let common = match &verb {
        Verb::Models(a) => &a.common,
        Verb::Traffic(a) => &a.common,
        Verb::Rollout(a) => &a.common,
        Verb::Drift(a) => &a.common,
        Verb::Load(a, _) => &a.common,
        Verb::Infer(a) => &a.common,
    };
    let (client, format) = (Client::new(&common.connection)?, common.output);
    match verb {
        Verb::Models(a) => loop {
            if a.watch {
                render::frame_start(format);
            }
            models::models(&client, a.model.as_deref(), format)?;
            if !a.watch {
                return Ok(());
            }
            render::frame_end(format);
            std::thread::sleep(a.every);
        },
        Verb::Traffic(a) => match a.verb {
            TrafficVerb::Get { model } => traffic::get(&client, &model, format),
            TrafficVerb::Set {
                model,
                weights,
                sticky_header,
                shadow,
                clear,
                dry_run,
            } => traffic::set(
                &client,
                &model,
                traffic::Change {
                    weights: &weights,
                    sticky_header: sticky_header.as_deref(),
                    shadow: shadow.as_deref(),
                    clear,
                    dry_run,
                },
                format,
            ),
        },
        Verb::Rollout(a) => match a.verb {
            RolloutVerb::Start(s) => rollout::start(&client, &s, format),
            RolloutVerb::Status {
                model,
                watch,
                every,
            } => rollout::status(&client, &model, format, watch.then_some(every)),
            RolloutVerb::Abort { model } => rollout::abort(&client, &model, format),
        },
        Verb::Drift(a) => drift::drift(&client, &a.model, format),
        Verb::Load(a, unload) => models::load(&client, &a.model, unload),
        Verb::Infer(a) => infer::infer(&client, &a.model, &a.data, format),
    }
}
