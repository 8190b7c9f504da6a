//! Options shared by every subcommand.

use std::path::PathBuf;

/// Global options.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Directory holding the datasets (`fashion-mnist/`, `mnist/`, `digits/`).
    /// Default: `../shared/data` relative to the repository if present, else `./data`.
    #[arg(long, global = true, env = "MAMORI_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding all gateway state (keys, audit database, detector state, ledgers).
    #[arg(long, global = true, env = "MAMORI_HOME")]
    pub home: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Global {
    /// The data directory to use.
    pub fn data_dir(&self) -> PathBuf {
        mamori_data::resolve_data_dir(self.data_dir.as_deref())
    }

    /// The home directory to use (created on demand by the commands that write to it).
    #[allow(dead_code)]
    pub fn home(&self) -> PathBuf {
        if let Some(h) = &self.home {
            return h.clone();
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(d).join("mamori");
        }
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(".local/share/mamori");
        }
        PathBuf::from(".mamori")
    }
}

/// Sets up `tracing` logs on stderr (`RUST_LOG` filters, default `info`).
pub fn init_tracing(g: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if g.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
