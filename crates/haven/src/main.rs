//! `haven`: the one binary. Composition root (configuration, wiring) and the command line.

/// mimalloc instead of the C library's allocator: a request allocates and frees many small
/// objects on two to four threads at once (JSON values, audit records, SQL arguments), where
/// glibc's malloc spent about a tenth of the server's CPU on its free lists (`perf`, read
/// benchmark), and musl's (the container image) is slower still. Built without transparent
/// huge pages (`no_thp`): with them an idle server held twice the memory (61 MiB instead of 28).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit_cmd;
mod backup_cmd;
mod config;
mod dev_certs;
mod healthcheck;
mod hops;
mod identity_cmd;
mod keys_cmd;
mod serve;
mod telemetry;
mod tls;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Haven: a secure FHIR R4 health-record server.
#[derive(Parser, Debug)]
#[command(name = "haven", version, about, propagate_version = true)]
struct Cli {
    /// TOML configuration file (also HAVEN_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (also HAVEN_LISTEN).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory for the embedded database (also HAVEN_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create the keyring file (provider `file`) or check the provider answers.
    Init,
    /// Key versions and how many data keys each wraps.
    Status,
    /// Start a new key-encryption key version; servers re-wrap data keys in the background.
    Rotate,
    /// Re-wrap every data key under the current version now, with progress (re-runnable).
    Rewrap,
    /// Retire key versions below the current one, after checking no data key needs them.
    Retire,
}

#[derive(Subcommand, Debug)]
enum PatientCommand {
    /// Erase a patient: tombstone their records, destroy their data key, record a
    /// pseudonymous audit event; then rotate and retire the key-encryption key so copies made
    /// before no longer open. Refused under a legal hold.
    Erase {
        /// The patient's id (`123` or `Patient/123`).
        id: String,
        /// Why (10 to 500 characters; kept in the audit trail).
        #[arg(long)]
        reason: String,
        /// Do not rotate and retire the key-encryption key now (batch several erasures,
        /// then run `haven keys rotate` and `haven keys retire`).
        #[arg(long)]
        defer_key_retirement: bool,
    },
    /// Set (or with --lift, lift) a legal hold: while it is set the patient cannot be erased.
    Hold {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        lift: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// Which module(s) this process runs; `all` runs everything in one process.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// For the benchmark harness only: write no audit records, to measure what auditing
        /// costs. Never use it in service: accesses would go unrecorded.
        #[arg(long, hide = true)]
        benchmark_without_audit: bool,
        /// For the benchmark harness only: store bodies in clear, to measure what encryption
        /// at rest costs. Never use it in service.
        #[arg(long, hide = true)]
        benchmark_without_encryption: bool,
    },
    /// Encryption keys: `init` a keyring, `status` (key versions, re-wrapping progress),
    /// `rotate` the key-encryption key, `rewrap` data keys now, `retire` old versions.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Patients' rights: erase a patient (GDPR Art. 17, by destroying their data key), or set
    /// and lift the legal hold that forbids it.
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
    },
    /// The audit trail: verify its integrity, report a patient's disclosures.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Back up everything (resources with their history, the audit trail, accounts and
    /// clients) while the server runs: `haven backup --out DIR`; `haven backup verify DIR`
    /// checks a backup's signature, hashes and audit chain. Safe to re-run after an
    /// interruption.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// The directory to create (must not exist).
        #[arg(long, value_name = "DIR", conflicts_with = "into")]
        out: Option<PathBuf>,
        /// Create the backup in this directory under a name with the time,
        /// `haven-backup-YYYYMMDDTHHMMSSZ` (for scheduled backups).
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
        /// With --into: after a verified backup, keep only the N newest backups there (and
        /// remove what failed runs left), so scheduled backups do not fill the volume.
        #[arg(long, value_name = "N", requires = "into", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Restore a backup into a fresh instance (an empty data directory or database); the
    /// backup is verified as it is read and nothing is written unless all of it checks out.
    Restore {
        /// The backup directory (from `haven backup --out`).
        dir: PathBuf,
        /// Public keys (base64 Ed25519) trusted to have signed the backup, besides the
        /// configured audit keys.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Database administration (PostgreSQL).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Rebuild the search index (after an upgrade that changed search definitions). Safe to
    /// interrupt: a second run resumes where the first stopped.
    Reindex {
        /// Resources per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// Start from the beginning even if an interrupted run could be resumed.
        #[arg(long)]
        restart: bool,
    },
    /// People's accounts: add, list, disable, enable, reset MFA, set a password.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// OAuth clients (SMART apps and backend systems): add, list, revoke.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The identity provider's keys.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Get an access token for a backend client (SMART Backend Services, private_key_jwt)
    /// from a running server, and print it.
    Token {
        /// The client id (registered with `haven client add --service`).
        #[arg(long)]
        client: String,
        /// The client's private key (PKCS#8 PEM, from `haven client add --generate-key`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Ask for less than the client may have (space-separated scopes).
        #[arg(long)]
        scope: Option<String>,
        /// The server root, e.g. https://ehr.example.org (default: public_url or listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// The role policy: `haven policy check [FILE]` validates a policy file (default: the
    /// configured one) and prints what each role may do.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Make a local certificate authority, a server certificate for the hosts and client
    /// certificates (mutual TLS), to try `[tls]` on one machine; prints the configuration to
    /// use. Never overwrites files. Not for production.
    DevCerts {
        /// The directory to write into (created owner-only).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Names and addresses the server certificate is for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        /// Also a client certificate with this name (repeat for more).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Probe a running server's /healthz (for container health checks); exit 0 when healthy.
    Healthcheck {
        /// Probe /readyz instead: healthy only when the database answers (readiness probes).
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create an account. The password is asked for (hidden) on a terminal, or read as one
    /// line from stdin. The first admin: `haven user add NAME --role admin`.
    Add {
        username: String,
        /// admin, clinician, nurse, registrar, patient, auditor (repeat or comma-separate).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// The FHIR resource that is this person: Practitioner/ID or Patient/ID.
        #[arg(long)]
        fhir_user: Option<String>,
        /// The password is kept by the hospital directory (LDAP), not by Haven.
        #[arg(long)]
        directory: bool,
    },
    /// List accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: no logins, refresh tokens and access tokens refused.
    Disable { username: String },
    /// Enable a disabled account.
    Enable { username: String },
    /// Remove a user's second factor and recovery codes (audited); they enrol again at the
    /// next login.
    ResetMfa { username: String },
    /// Set a new password (asked for like `add`).
    SetPassword { username: String },
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Register a client. A SMART app used by people: `--public --redirect-uri URI` (PKCE) or
    /// confidential with `--jwks`; a backend system: `--service --generate-key FILE`.
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// An app without a secret (browser or native): authorization code with PKCE.
        #[arg(long)]
        public: bool,
        /// A backend system: client credentials with private_key_jwt, role `service`.
        #[arg(long)]
        service: bool,
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// The client's public keys (a JWKS file) for private_key_jwt.
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
        /// Generate a key pair: the private key is written to FILE (owner-only), the public
        /// key registered.
        #[arg(long, value_name = "FILE")]
        generate_key: Option<PathBuf>,
        /// The most this client may be granted, e.g. "openid fhirUser user/*.rs" or
        /// "system/*.rs".
        #[arg(long)]
        scope: String,
        /// Allow refresh tokens (offline_access / online_access).
        #[arg(long)]
        refresh: bool,
    },
    /// List clients.
    List,
    /// Revoke a client: no new tokens, existing tokens refused.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Start a new token signing key now; the old one stays published for 24 h.
    RotateKey,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy file and print what each role may do; exit status 2 if invalid.
    Check {
        /// The file to check (default: the configured policy).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Give Haven's application role what it needs to serve, and on the audit tables only
    /// SELECT and INSERT. Run as the schema owner (the role `haven migrate` ran as); Haven then
    /// connects as the application role.
    Grant {
        /// The application role (it must exist: CREATE ROLE haven_app LOGIN ...).
        #[arg(long, value_name = "ROLE")]
        app_role: String,
    },
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Check a backup: its manifest's signature, every file's hash and row count, every row,
    /// and the audit chain it holds. Exit status 1 if it does not verify.
    Verify {
        dir: PathBuf,
        /// Public keys (base64 Ed25519) trusted to have signed the backup, besides the
        /// configured audit keys.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; name the first bad record. Exit
    /// status 1 if the trail was altered.
    Verify {
        /// Further trusted public keys (base64 Ed25519), e.g. from before a key rotation.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
        /// Log files holding checkpoint copies (Haven's audit output), compared with the
        /// database's: catches checkpoints or records removed from the end.
        #[arg(long = "checkpoints-from", value_name = "FILE")]
        checkpoint_logs: Vec<PathBuf>,
    },
    /// The accounting of disclosures of one patient (HIPAA 164.528): who accessed which of
    /// their records, when, from where and why.
    Report {
        /// The Patient's id.
        #[arg(long)]
        patient: String,
        /// From this date (2026-01-31) or instant; at most six years back is kept in view.
        #[arg(long)]
        since: String,
        /// Until this date or instant (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration from every layer and print it, secrets redacted.
    Check,
}

/// A deployable module set. Each role can run as its own container from the same image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Every module in one process (the default for a single machine).
    All,
    /// The FHIR REST API (validates tokens; shares the database with the identity role).
    Fhir,
    /// The OpenID provider (login, MFA, tokens).
    Identity,
}

fn main() -> ExitCode {
    // reqwest brings rustls without a crypto provider (its only built-in one is ring): every
    // HTTP client in the process uses aws-lc-rs, the one provider Haven ships (deny.toml).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // Needs no configuration: it makes the files a configuration will name.
    if let Command::DevCerts {
        out,
        hosts,
        clients,
    } = &cli.command
    {
        return match dev_certs::run(out, hosts, clients) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("haven: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let overrides = config::Overrides {
        config_file: cli.config.clone(),
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
    };
    let config = match config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("haven: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", config.to_redacted_toml());
            eprintln!("haven: configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Healthcheck { ready } => healthcheck::run(&config, ready),
        Command::DevCerts { .. } => unreachable!("handled before the configuration is loaded"),
        Command::Migrate => run_async(async move { serve::migrate(&config).await }),
        Command::Db {
            command: DbCommand::Grant { app_role },
        } => run_async(async move {
            let Some(url) = &config.database_url else {
                anyhow::bail!(
                    "haven db grant is for PostgreSQL (set database_url); the embedded \
                     database has no roles: protect its file with the data directory's permissions"
                );
            };
            haven_store_postgres::grant_application_role(url.expose(), &app_role)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "granted {app_role}: read and write on Haven's data, SELECT and INSERT only on \
                 the audit tables"
            );
            Ok(())
        }),
        Command::User { command } => run_async(async move {
            use identity_cmd::UserChange;
            match command {
                UserCommand::Add {
                    username,
                    roles,
                    name,
                    email,
                    fhir_user,
                    directory,
                } => {
                    identity_cmd::user_add(
                        &config,
                        identity_cmd::UserAdd {
                            username,
                            roles,
                            name,
                            email,
                            fhir_user,
                            directory,
                        },
                    )
                    .await
                }
                UserCommand::List { json } => identity_cmd::user_list(&config, json).await,
                UserCommand::Disable { username } => {
                    identity_cmd::user_change(&config, &username, UserChange::Disable).await
                }
                UserCommand::Enable { username } => {
                    identity_cmd::user_change(&config, &username, UserChange::Enable).await
                }
                UserCommand::ResetMfa { username } => {
                    identity_cmd::user_change(&config, &username, UserChange::ResetMfa).await
                }
                UserCommand::SetPassword { username } => {
                    identity_cmd::user_change(&config, &username, UserChange::SetPassword).await
                }
            }
        }),
        Command::Client { command } => run_async(async move {
            match command {
                ClientCommand::Add {
                    id,
                    name,
                    public,
                    service,
                    redirect_uris,
                    jwks,
                    generate_key,
                    scope,
                    refresh,
                } => {
                    identity_cmd::client_add(
                        &config,
                        identity_cmd::ClientAdd {
                            id,
                            name,
                            public,
                            service,
                            redirect_uris,
                            jwks,
                            generate_key,
                            scope,
                            offline: refresh,
                        },
                    )
                    .await
                }
                ClientCommand::List => identity_cmd::client_list(&config).await,
                ClientCommand::Revoke { id } => identity_cmd::client_revoke(&config, &id).await,
            }
        }),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let parsed = match &file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))
                    .and_then(|t| {
                        haven_domain::policy::Policy::parse(&t).map_err(|e| e.to_string())
                    }),
                None => config.policy().map_err(|e| e.to_string()),
            };
            match parsed {
                Ok(p) => {
                    println!("policy version {}", p.version());
                    for line in p.summary() {
                        println!("  {line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("haven: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Identity {
            command: IdentityCommand::RotateKey,
        } => run_async(async move { identity_cmd::rotate_key(&config).await }),
        Command::Token {
            client,
            key,
            scope,
            url,
        } => run_async(async move {
            identity_cmd::token(&config, &client, &key, scope.as_deref(), url.as_deref()).await
        }),
        Command::Reindex { batch, restart } => {
            run_async(async move { serve::reindex(&config, batch, restart).await })
        }
        Command::Serve {
            role,
            benchmark_without_audit,
            benchmark_without_encryption,
        } => {
            let mut config = config;
            config.encryption.benchmark_off = benchmark_without_encryption;
            run_async(async move { serve::run(config, role, !benchmark_without_audit).await })
        }
        Command::Keys { command } => run_async(async move {
            match command {
                KeysCommand::Init => keys_cmd::init(&config).await,
                KeysCommand::Rotate => keys_cmd::rotate(&config).await,
                KeysCommand::Status | KeysCommand::Rewrap | KeysCommand::Retire => {
                    let store = serve::open_raw_store(&config).await?;
                    let r = match command {
                        KeysCommand::Status => keys_cmd::status(&config, store.as_ref()).await,
                        KeysCommand::Rewrap => keys_cmd::rewrap(&config, store.as_ref()).await,
                        _ => keys_cmd::retire(&config, store.as_ref()).await,
                    };
                    store.close().await;
                    r
                }
            }
        }),
        Command::Patient {
            command:
                PatientCommand::Erase {
                    id,
                    reason,
                    defer_key_retirement,
                },
        } => {
            run_async(
                async move { keys_cmd::erase(&config, &id, &reason, defer_key_retirement).await },
            )
        }
        Command::Patient {
            command: PatientCommand::Hold { id, reason, lift },
        } => run_async(async move { keys_cmd::hold(&config, &id, &reason, lift).await }),
        Command::Backup {
            command: Some(BackupCommand::Verify { dir, public_keys }),
            ..
        } => match backup_cmd::verify(&config, &dir, &public_keys) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Backup {
            command: None,
            out,
            into,
            keep,
        } => match out.or_else(|| {
            into.as_ref()
                .map(|d| d.join(backup_cmd::timestamped_name()))
        }) {
            Some(out) => run_async(async move {
                backup_cmd::create(&config, &out).await?;
                if let (Some(dir), Some(n)) = (into, keep) {
                    backup_cmd::prune(&dir, &out, n as usize)?;
                }
                Ok(())
            }),
            None => {
                eprintln!(
                    "error: give the directory to write the backup to: haven backup --out DIR \
                     (or --into PARENT for a name with the time)"
                );
                ExitCode::from(2)
            }
        },
        Command::Restore { dir, public_keys } => {
            run_async(async move { backup_cmd::restore(&config, &dir, &public_keys).await })
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    public_keys,
                    checkpoint_logs,
                },
        } => {
            let mut intact = false;
            let code = run_async(async {
                let store = serve::open_raw_store(&config).await?;
                intact = audit_cmd::verify(&config, store.clone(), &public_keys, &checkpoint_logs)
                    .await?;
                store.close().await;
                Ok(())
            });
            // 0 intact, 1 broken, 2 could not check (database, key, files).
            if code != ExitCode::SUCCESS {
                ExitCode::from(2)
            } else if !intact {
                ExitCode::from(1)
            } else {
                code
            }
        }
        Command::Audit {
            command:
                AuditCommand::Report {
                    patient,
                    since,
                    until,
                    format,
                },
        } => run_async(async move {
            let since = audit_cmd::parse_when(&since)?;
            let until = match until {
                Some(u) => audit_cmd::parse_when(&u)?,
                None => haven_domain::Timestamp::now(),
            };
            let store = serve::open_raw_store(&config).await?;
            audit_cmd::report(
                store.clone(),
                &patient,
                since,
                until,
                format == ReportFormat::Json,
            )
            .await?;
            store.close().await;
            Ok(())
        }),
    }
}

fn run_async<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haven: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haven: {e:#}");
            ExitCode::FAILURE
        }
    }
}
