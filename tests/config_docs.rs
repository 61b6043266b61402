//! docs/configuration.md and deploy/flashcast.toml stay in step with the
//! options the binary actually has.

use clap::CommandFactory;
use flashcast::Settings;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_option_is_documented_with_its_env_var_and_default() {
    let doc = read("docs/configuration.md");
    for arg in Settings::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `--{long}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for --{long}"));
        let env = arg.get_env().unwrap().to_str().unwrap();
        assert!(row.contains(env), "--{long} row lacks {env}");
        if let Some(default) = arg.get_default_values().first() {
            let default = default.to_str().unwrap();
            assert!(
                row.contains(&format!("`{default}`")),
                "--{long} row lacks default {default}"
            );
        }
    }
}

#[test]
fn the_example_config_file_loads() {
    let path = format!("{}/deploy/flashcast.toml", env!("CARGO_MANIFEST_DIR"));
    let s = Settings::load_from(["flashcast", "--config", &path]).expect("example config is valid");
    assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
    assert!(!s.demo_room);
    assert_eq!(s.limits.joins_per_ip_burst, 2000);
}
