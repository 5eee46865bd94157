//! `callcode serve`: builds every part from the configuration, serves HTTP, and shuts down in
//! order on SIGTERM/SIGINT (stop accepting → let calls finish within the grace period → write
//! every record → deliver what can be delivered → close the store).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::backend::asterisk::{Asterisk, AsteriskSettings};
use crate::backend::freeswitch::{FreeSwitch, FreeswitchSettings};
use crate::backend::sandbox::{Sandbox, SandboxSettings};
use crate::backend::Backend;
use crate::config::{backend_settings, BackendKind, Config};
use crate::engine::{Dialect, Engine, EngineParts};
use crate::sounds::Sounds;
use crate::store::Store;
use crate::webhook;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Loads the prompts of every language a route uses.
pub fn load_sounds(config: &Config) -> Result<Sounds, BoxError> {
    let mut languages: Vec<&str> = config.routes.iter().map(|r| r.language.as_str()).collect();
    languages.sort_unstable();
    languages.dedup();
    Ok(Sounds::load(&config.server.sounds, &languages)?)
}

/// Starts the configured backends and the engine over `store`. Returns the engine, the notifier
/// the webhook worker waits on, and the backends (to close at shutdown).
pub async fn start_engine(
    config: Arc<Config>,
    store: Store,
    sounds: Arc<Sounds>,
) -> Result<(Engine, Arc<Notify>, Vec<Arc<dyn Backend>>), BoxError> {
    let (events_tx, events_rx) = mpsc::channel(65_536);
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    for b in &config.backends {
        let settings_error = |e: String| format!("backends.{}.settings: {e}", b.name);
        let backend: Arc<dyn Backend> = match b.kind {
            BackendKind::Sandbox => {
                let settings: SandboxSettings =
                    backend_settings(&b.settings).map_err(settings_error)?;
                Arc::new(Sandbox::start(
                    &b.name,
                    settings,
                    sounds.clone(),
                    events_tx.clone(),
                ))
            }
            BackendKind::Asterisk => {
                let settings: AsteriskSettings =
                    backend_settings(&b.settings).map_err(settings_error)?;
                let listen = settings.fastagi.listen;
                Arc::new(
                    Asterisk::start(&b.name, settings, events_tx.clone())
                        .await
                        .map_err(|e| format!("backends.{}: FastAGI on {listen}: {e}", b.name))?,
                )
            }
            BackendKind::Freeswitch => {
                let settings: FreeswitchSettings =
                    backend_settings(&b.settings).map_err(settings_error)?;
                FreeSwitch::start(&b.name, settings, events_tx.clone())
                    .await
                    .map_err(|e| format!("backends.{}: {e}", b.name))?
            }
        };
        backends.insert(b.name.clone(), backend);
    }
    drop(events_tx);
    let started: Vec<Arc<dyn Backend>> = backends.values().cloned().collect();
    let outbox = Arc::new(Notify::new());
    let dialects: Vec<Arc<dyn Dialect>> = vec![
        Arc::new(api::voicepassword::VoicePassword {
            offset: config.server.utc_offset.0,
        }),
        Arc::new(api::mcn::McnDialect {
            offset: config.server.utc_offset.0,
            accounts: config.accounts.clone(),
        }),
    ];
    let engine = Engine::start(EngineParts {
        config,
        store,
        sounds,
        backends,
        events: events_rx,
        dialects,
        outbox: outbox.clone(),
    })
    .await?;
    Ok((engine, outbox, started))
}

/// Runs until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), BoxError> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let config = Arc::new(config);
    let sounds = Arc::new(load_sounds(&config)?);
    let store = Store::open(&config.server.database).await?;

    let (engine, outbox, backends) = start_engine(config.clone(), store.clone(), sounds).await?;

    let stop_webhooks = CancellationToken::new();
    let worker = webhook::Worker::new(store.clone(), config.webhooks, engine.clock(), outbox);
    let webhooks = tokio::spawn(worker.run(stop_webhooks.clone()));

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "callcode listening");
    // Tests and scripts read this line to find the port when `--listen` asked for port 0.
    println!("callcode listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let app = api::router(
        engine.clone(),
        Some(prometheus),
        config.server.max_body_bytes,
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    info!(?grace, "HTTP stopped; finishing calls");
    engine.shutdown(grace).await;
    for b in &backends {
        if tokio::time::timeout(Duration::from_secs(3), b.close())
            .await
            .is_err()
        {
            warn!(
                backend = b.name(),
                "backend still closing after 3 s; leaving anyway"
            );
        }
    }
    // Give pending callbacks a short chance before leaving; the rest stay in the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_webhooks.cancel();
    if tokio::time::timeout(
        Duration::from_millis(config.webhooks.timeout_ms + 1000),
        webhooks,
    )
    .await
    .is_err()
    {
        warn!("webhook deliveries still in flight at exit; they will be retried at the next start");
    }
    store.close().await;
    info!("callcode stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
}
