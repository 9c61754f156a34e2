//! The container files, checked against ragd itself. Docker does not run
//! where the tests do, so `Dockerfile` and `docker-compose.yml` are parsed
//! and what they would run is fed to ragd's own command line and config
//! loader: the commands must be subcommands the black-box tests run, and
//! every setting must be a configuration key that loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use figment::Jail;
use serde_norway::{Mapping, Value};

use crate::config::{self, Config};
use crate::{Cli, Command};

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)
}

#[derive(Debug, Default)]
struct Dockerfile {
    stages: usize,
    env: Vec<(String, String)>,
    copies: Vec<String>,
    user: Option<String>,
    healthcheck: Option<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut file = Self::default();
        let mut instruction = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && instruction.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(start) => {
                    instruction.push_str(start);
                    instruction.push(' ');
                }
                None => {
                    instruction.push_str(line);
                    file.add(&std::mem::take(&mut instruction));
                }
            }
        }
        file
    }

    fn add(&mut self, instruction: &str) {
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        let rest = rest.trim().to_owned();
        let exec_form = |rest: &str| -> Vec<String> {
            serde_json::from_str(rest).unwrap_or_else(|e| panic!("{keyword} {rest} is not in exec form: {e}"))
        };
        match keyword {
            "FROM" => self.stages += 1,
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair.split_once('=').expect("ENV KEY=VALUE");
                    self.env.push((key.to_owned(), value.to_owned()));
                }
            }
            "COPY" => self.copies.push(rest),
            "USER" => self.user = Some(rest),
            "HEALTHCHECK" => self.healthcheck = Some(rest),
            "ENTRYPOINT" => self.entrypoint = exec_form(&rest),
            "CMD" => self.cmd = exec_form(&rest),
            _ => {}
        }
    }
}

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&std::fs::read_to_string(repo_file("Dockerfile")).expect("Dockerfile"))
}

fn compose() -> Mapping {
    let text = std::fs::read_to_string(repo_file("docker-compose.yml")).expect("docker-compose.yml");
    let compose: Value = serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    compose.as_mapping().expect("a mapping at the top").clone()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {value:?}"))
        .iter()
        .map(text)
        .collect()
}

/// `ragd`'s command line for `args` run through the image's entrypoint.
fn command_line(image: &Dockerfile, args: &[String]) -> Cli {
    let argv: Vec<String> = image.entrypoint.iter().chain(args).cloned().collect();
    assert_eq!(argv[0], "ragd", "the entrypoint runs the ragd binary");
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} is not a ragd command line: {e}"))
}

/// The configuration a container of the image loads with `environment`.
// `Jail` fixes its closure's error type (figment's large one).
#[allow(clippy::result_large_err)]
fn load_config(image: &Dockerfile, cli: &Cli, environment: &BTreeMap<String, String>) -> Config {
    let in_image = cli.config.as_deref().expect("the entrypoint names its config file");
    assert!(
        image.copies.iter().any(|copy| copy == &format!("config {}", in_image.parent().unwrap().display())),
        "the image does not hold {}",
        in_image.display()
    );
    let file = repo_file("config").join(in_image.file_name().unwrap());
    let mut env: BTreeMap<String, String> = image.env.iter().cloned().collect();
    env.extend(environment.clone());
    for key in env.keys() {
        let key = key.strip_prefix("RAGD_").unwrap_or_else(|| panic!("{key} is not a ragd setting"));
        assert!(config::is_config_key(&key.replace("__", ".")), "RAGD_{key} is not a configuration key");
    }
    let mut loaded = None;
    Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in &env {
            jail.set_env(key, value);
        }
        let config = config::load(Some(file.as_path()), &config::Overrides::default())
            .map_err(|e| format!("{e:#}"))?;
        loaded = Some(config);
        Ok(())
    });
    loaded.expect("loaded")
}

fn service<'a>(compose: &'a Mapping, name: &str) -> &'a Mapping {
    compose["services"].get(name).and_then(Value::as_mapping).unwrap_or_else(|| panic!("no service {name}"))
}

fn environment(service: &Mapping) -> BTreeMap<String, String> {
    let Some(environment) = service.get("environment") else { return BTreeMap::new() };
    environment
        .as_mapping()
        .expect("environment as a mapping")
        .iter()
        .map(|(k, v)| (text(k), unset_interpolation(&text(v))))
        .collect()
}

/// A value as compose interpolates it when the variables it names are not
/// set: `${NAME:-default}` becomes `default`.
fn unset_interpolation(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|end| start + end).expect("closed ${...}");
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Named volume -> mount path.
fn volumes(service: &Mapping) -> BTreeMap<String, String> {
    strings(&service["volumes"])
        .iter()
        .map(|mount| {
            let (volume, path) = mount.split_once(':').expect("VOLUME:PATH");
            (volume.to_owned(), path.to_owned())
        })
        .collect()
}

/// Compose's `mem_limit`, written in MiB (`1536m`) or GiB (`2g`).
fn memory_limit_mib(service: &Mapping) -> Option<u64> {
    let limit = text(service.get("mem_limit")?);
    let (number, unit) = limit.split_at(limit.len() - 1);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("mem_limit {limit}: expected a whole number"));
    match unit {
        "m" => Some(number),
        "g" => Some(number * 1024),
        _ => panic!("mem_limit {limit}: write it in m or g"),
    }
}

fn healthcheck(service: &Mapping) -> Vec<String> {
    let check = service.get("healthcheck").unwrap_or_else(|| panic!("{service:?} has no healthcheck"));
    let test = strings(&check["test"]);
    assert!(
        matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() > 1,
        "{test:?}"
    );
    test
}

#[test]
fn dockerfile_is_multi_stage_unprivileged_and_runs_ragd_serve() {
    let image = dockerfile();
    assert!(image.stages >= 2, "a build stage and a runtime stage");
    let user = image.user.as_deref().expect("USER");
    assert!(!matches!(user, "root" | "0" | "0:0"), "runs as {user}");
    assert!(
        image
            .copies
            .iter()
            .any(|copy| copy.starts_with("--from=build") && copy.ends_with("/usr/local/bin/ragd")),
        "the runtime stage holds the built binary: {:?}",
        image.copies
    );
    let cli = command_line(&image, &image.cmd);
    assert!(matches!(cli.command, Command::Serve { .. }), "the default command is `ragd serve`");
    let config = load_config(&image, &cli, &BTreeMap::new());
    let port = config.server.listen.rsplit(':').next().unwrap().to_owned();
    assert!(config.server.listen.starts_with("0.0.0.0:"), "{}", config.server.listen);
    let check = image.healthcheck.expect("HEALTHCHECK");
    assert!(check.contains(&format!("127.0.0.1:{port}/healthz")), "{check}");
    assert!(image.copies.iter().any(|copy| copy.ends_with(&format!(" {}", config.models.dir.display()))));
}

#[test]
fn compose_runs_the_api_and_a_worker_on_postgres_with_shared_blobs() {
    let compose = compose();
    let image = dockerfile();
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<String> = services.keys().map(text).collect();
    assert_eq!(names, ["postgres", "qdrant", "api", "worker"]);
    for name in &names {
        healthcheck(service(&compose, name));
    }
    let declared: Vec<String> = compose["volumes"].as_mapping().expect("volumes").keys().map(text).collect();
    for name in &names {
        for volume in volumes(service(&compose, name)).keys() {
            assert!(declared.contains(volume), "{name} mounts undeclared volume {volume}");
        }
    }

    let postgres = environment(service(&compose, "postgres"));
    let database_url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    );

    let mut loaded = BTreeMap::new();
    for name in ["api", "worker"] {
        let ragd = service(&compose, name);
        assert_eq!(text(&ragd["build"]), ".", "{name} is built from this repository's Dockerfile");
        assert_eq!(text(&ragd["image"]), "ragd:latest");
        let depends = ragd["depends_on"].as_mapping().expect("depends_on");
        assert_eq!(text(&depends["postgres"]["condition"]), "service_healthy", "{name} waits for PostgreSQL");

        let cli = command_line(&image, &strings(&ragd["command"]));
        let config = load_config(&image, &cli, &environment(ragd));
        assert_eq!(config.store_url(), database_url, "{name} uses the compose PostgreSQL");
        let mounts = volumes(ragd);
        let mounted =
            |path: &Path| mounts.iter().find(|(_, at)| Path::new(at) == path).map(|(v, _)| v.clone());
        let data =
            mounted(&config.data_dir).unwrap_or_else(|| panic!("{name}'s data_dir is not on a volume"));
        let blobs =
            mounted(&config.blobs_dir()).unwrap_or_else(|| panic!("{name}'s blobs_dir is not on a volume"));

        let check = healthcheck(ragd).join(" ");
        match (name, &cli.command) {
            ("api", Command::Serve { listen: None, data_dir: None }) => {
                let port = config.server.listen.rsplit(':').next().unwrap().to_owned();
                assert!(check.contains(&format!("127.0.0.1:{port}/readyz")), "{check}");
                assert!(strings(&ragd["ports"]).iter().any(|p| p.ends_with(&format!(":{port}"))));
            }
            ("worker", Command::Worker(args)) => {
                assert!(!args.private_index, "a compose worker must not index into a private Edge index");
                assert!(config.jobs.workers >= 1);
                // The budget counts only anonymous memory; the margin is for
                // the code and index pages the limit also counts.
                let limit = memory_limit_mib(ragd).expect("the worker has a mem_limit");
                let budget = config.memory.budget_mib;
                assert!(budget > 0 && budget + 128 <= limit, "budget {budget} MiB under a {limit} MiB limit");
                let port =
                    args.listen.as_deref().expect("the worker serves its health port").rsplit(':').next();
                assert!(check.contains(&format!("127.0.0.1:{}/readyz", port.unwrap())), "{check}");
            }
            (name, _) => panic!("{name} runs an unexpected ragd command"),
        }
        loaded.insert(name, (data, blobs));
    }
    let (api_data, api_blobs) = &loaded["api"];
    let (worker_data, worker_blobs) = &loaded["worker"];
    assert_eq!(api_blobs, worker_blobs, "the worker reads the uploads the API stores");
    assert_ne!(api_data, worker_data, "an Edge index belongs to one process");
}
