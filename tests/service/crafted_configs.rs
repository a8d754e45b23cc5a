//! The crafted-config corpus (`tests/fixtures/crafted/configs/`): small bad `floor33.toml` files,
//! each naming in its first lines the key its error must name (`# key: …`) and, where it holds
//! one, a credential that must never be printed (`# secret: …`). Every file must be refused at
//! load with such a message, never accepted and never a panic.

use std::path::{Path, PathBuf};

use floor33::config::Config;

struct Case {
    path: PathBuf,
    key: String,
    secrets: Vec<String>,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crafted/configs");
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let header = |tag: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(&format!("# {tag}: ")))
                    .map(|v| v.trim().to_string())
                    .collect()
            };
            let key = header("key")
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("{} has no `# key:` line", path.display()));
            Case {
                key,
                secrets: header("secret"),
                path,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.path.cmp(&b.path));
    cases
}

/// Everything `serve` does with a config before it connects: load, validate, and derive the
/// service and download settings (where a bad number used to panic).
fn load(path: &Path) -> anyhow::Result<()> {
    let config = Config::from_file(path)?;
    config.validate()?;
    let _ = config.service_config();
    let _ = config.download_policy();
    Ok(())
}

#[test]
fn every_crafted_config_is_refused_naming_its_key_and_no_secret() {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus holds {} files", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.path.file_name().unwrap().to_string_lossy();
        let outcome = std::panic::catch_unwind(|| load(&case.path));
        let message = match outcome {
            Err(_) => {
                failures.push(format!("{name}: panicked"));
                continue;
            }
            Ok(Ok(())) => {
                failures.push(format!("{name}: accepted"));
                continue;
            }
            Ok(Err(e)) => format!("{e:#} / {e:?}"),
        };
        if !message.contains(&case.key) {
            failures.push(format!(
                "{name}: the message does not name `{}`: {message}",
                case.key
            ));
        }
        for secret in &case.secrets {
            if message.contains(secret.as_str()) {
                failures.push(format!("{name}: the message prints the secret: {message}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A host written with a trailing dot or in capitals is the same host: normalised, not a
/// silent refusal of every `/i2v`.
#[test]
fn cdn_hosts_are_normalised() {
    let config = Config::from_toml(
        "[discord]\ncdn_hosts = [\"CDN.DiscordApp.com.\", \" media.discordapp.net \"]\n",
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.download_policy().allowed_hosts,
        vec!["cdn.discordapp.com", "media.discordapp.net"]
    );
    let policy = config.download_policy();
    assert!(!policy.insecure_loopback_for_tests);
    let url = reqwest::Url::parse("https://cdn.discordapp.com/attachments/1/2/a.png").unwrap();
    floor33::discord::download::check_url(&url, &policy).unwrap();
}

/// The test-only allowance is a named key, off unless written.
#[test]
fn the_loopback_cdn_allowance_is_off_by_default() {
    assert!(
        !Config::default()
            .download_policy()
            .insecure_loopback_for_tests
    );
    let on = Config::from_toml(
        "[discord]\ncdn_hosts = [\"127.0.0.1\"]\ninsecure_loopback_cdn_for_tests = true\n",
    )
    .unwrap();
    on.validate().unwrap();
    assert!(on.download_policy().insecure_loopback_for_tests);
}
