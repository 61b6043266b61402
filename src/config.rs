//! Configuration: flags, FLASHCAST_* environment variables and an optional
//! TOML file, in that order of precedence, over built-in defaults.
//!
//! Every bound of the system lives in `crate::limits::Limits`; the settings
//! build it (flattened below), `limits` knows nothing of them.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::limits::Limits;

/// Flashcast: a live-commerce streaming engine.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "flashcast", version, about, long_about = None, args_override_self = true)]
pub struct Settings {
    /// TOML file with any of the options below (keys as the long flag names,
    /// with '_' for '-'). Flags and environment variables win over the file.
    #[arg(long, env = "FLASHCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "FLASHCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the embedded store (created if missing).
    #[arg(long, env = "FLASHCAST_DATA_DIR", default_value = "flashcast-data")]
    pub data_dir: PathBuf,

    /// Key for the REST admin API (`Authorization: Bearer KEY`). Generated,
    /// stored in the data directory and printed when unset.
    #[arg(long, env = "FLASHCAST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// HS256 secret for signing tokens. Generated and stored in the data
    /// directory when unset; set it to share tokens between nodes.
    #[arg(long, env = "FLASHCAST_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// HMAC-SHA256 secret of the payment webhook (see docs/commerce.md).
    /// Generated and stored in the data directory when unset.
    #[arg(long, env = "FLASHCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Create the demo room `demo` (guests allowed) at start-up if missing.
    #[arg(long, env = "FLASHCAST_DEMO_ROOM", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_room: bool,

    /// Log format: `text` or `json`. Levels come from RUST_LOG (default info).
    #[arg(long, env = "FLASHCAST_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: Limits,

    /// Live video (WHIP/WHEP): the `media_*` options.
    #[command(flatten)]
    #[serde(flatten)]
    pub media: crate::media::MediaSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Reads flags and environment, then fills what they left at its default
    /// from the `--config` file.
    /// On `--help`, `--version` or a flag error, clap prints and exits.
    pub fn load() -> Result<Settings, String> {
        let matches = Settings::command().get_matches();
        Self::from_matches(&matches)
    }

    pub fn load_from<I, T>(args: I) -> Result<Settings, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Settings::command()
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        Self::from_matches(&matches)
    }

    fn from_matches(matches: &clap::ArgMatches) -> Result<Settings, String> {
        let mut settings = Settings::from_arg_matches(matches).map_err(|e| e.to_string())?;
        if let Some(path) = settings.config.clone() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let known: Vec<String> = Settings::command()
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect();
            let mut merged = toml::Table::try_from(&settings).map_err(|e| e.to_string())?;
            for (key, value) in file {
                if key == "config" || !known.contains(&key) {
                    return Err(format!("{}: unknown option `{key}`", path.display()));
                }
                let from_default = matches!(
                    matches.value_source(&key),
                    None | Some(ValueSource::DefaultValue)
                );
                if from_default {
                    merged.insert(key, value);
                }
            }
            let config = settings.config.take();
            settings = merged
                .try_into()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            settings.config = config;
        }
        settings.limits.validate()?;
        settings.media.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_from(["flashcast"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.limits.history_len, 2_000);
    }

    #[test]
    fn file_fills_defaults_but_flags_win() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "listen = \"127.0.0.1:9999\"\nhistory_len = 77\ntick_ms = 40"
        )
        .unwrap();
        let path = f.path().to_str().unwrap().to_string();
        let s = Settings::load_from(["flashcast", "--config", &path, "--tick-ms", "30"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.limits.history_len, 77);
        assert_eq!(s.limits.tick_ms, 30);
    }

    #[test]
    fn unknown_file_keys_and_bad_limits_are_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "histroy_len = 5").unwrap();
        let path = f.path().to_str().unwrap().to_string();
        let err = Settings::load_from(["flashcast", "--config", &path]).unwrap_err();
        assert!(err.contains("histroy_len"), "{err}");
        let err = Settings::load_from(["flashcast", "--outbound-queue", "0"]).unwrap_err();
        assert!(err.contains("outbound_queue"), "{err}");
    }
}
