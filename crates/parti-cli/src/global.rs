//! The options every subcommand accepts: how to reach NATS and which configuration to load.
//!
//! A leaf: it depends only on [`crate::connect`], so every subcommand can take a [`Global`]
//! without depending on the command-line definition in `cli`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::connect::ConnectArgs;

/// Options every subcommand accepts (before or after the subcommand name).
#[derive(Debug, Args)]
pub(crate) struct Global {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Parti configuration file (YAML); bucket names and timings come from it. `PARTI_…`
    /// environment variables are laid over it (or over the defaults when no file is given).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

impl Global {
    /// The configuration: the file (if any), then environment overrides, validated.
    pub(crate) fn load_config(&self) -> anyhow::Result<parti::Config> {
        let base = match &self.config {
            Some(path) => parti::Config::from_yaml_file(path)
                .with_context(|| format!("cannot load the configuration {}", path.display()))?,
            None => parti::Config::default(),
        };
        base.with_env_overrides()
            .context("invalid PARTI_… environment variable")
    }
}
