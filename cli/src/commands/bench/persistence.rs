//! `fnmesh bench persistence`: how fast the PostgreSQL metadata store records finished
//! invocations, batched (what the gateway's recorder does) against one statement per row.
//!
//! It works in a fresh schema (`bench_<random>`) of `--database-url`, migrated on the spot and
//! dropped at the end. `--rows` invocations are accepted (`queued`) for each method, then
//! their final records are written twice: records alone, then records with their logs (the
//! recorder's full write), (a) with `update_invocations`/`put_logs_batch` in batches of
//! `--batch` (one `UNNEST` statement each) and (b) with `update_invocation`/`put_logs`, one
//! statement per row. Rows/s of each, and the ratio, are printed.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use fnmesh_core::{
    Checksum, CodeInfo, Function, FunctionConfig, FunctionId, FunctionName, InvocationId,
    InvocationLogs, InvocationMetrics, InvocationRequest, InvocationResult, InvocationStatus,
    Namespace, Runtime,
};
use fnmesh_store::postgres::PostgresStore;
use fnmesh_store::InvocationStore;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::args::PersistenceBenchArgs;

/// Requests accepted concurrently while setting up (as a gateway's handlers would).
const SETUP_CONCURRENCY: usize = 16;

/// Runs the benchmark and prints its figures.
pub async fn run(args: PersistenceBenchArgs) -> Result<()> {
    ensure!(args.rows > 0, "--rows must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    let schema = format!("bench_{:016x}", rand::random::<u64>());
    let store = PostgresStore::connect_in_schema(&args.database_url, &schema)
        .await
        .context("connecting to the benchmark database (see --database-url)")?;
    let outcome = bench(&store, &args, &schema).await;
    let dropped = store.drop_schema().await;
    let figures = outcome?;
    dropped.with_context(|| format!("dropping schema {schema}"))?;
    print!("{figures}");
    Ok(())
}

async fn bench(store: &PostgresStore, args: &PersistenceBenchArgs, schema: &str) -> Result<String> {
    store
        .migrate()
        .await
        .context("migrating the benchmark schema")?;
    let namespace = Namespace::parse("bench").context("namespace")?;
    let function = function(&namespace)?;
    let mut out = format!(
        "persistence benchmark: schema {schema}, {} rows per method, batches of {}\n",
        args.rows, args.batch
    );

    let started = Instant::now();
    let batched = accept(store, &function, args.rows).await?;
    let single = accept(store, &function, args.rows).await?;
    let accept_rate = rate(2 * args.rows, started);
    out += &format!(
        "  accept (insert_invocation, {SETUP_CONCURRENCY} in flight, setup)    {accept_rate:>10.0} rows/s\n"
    );

    // Records alone: queued -> succeeded, attempt 1.
    let finals_a: Vec<_> = batched.iter().map(|r| finished(r, 1)).collect();
    let finals_b: Vec<_> = single.iter().map(|r| finished(r, 1)).collect();
    let started = Instant::now();
    for chunk in finals_a.chunks(args.batch) {
        check_all_applied(store.update_invocations(chunk).await?)?;
    }
    let records_batched = rate(args.rows, started);
    let started = Instant::now();
    for record in &finals_b {
        check_all_applied(vec![store.update_invocation(record).await?])?;
    }
    let records_single = rate(args.rows, started);

    // Records and logs, as the recorder writes a finished invocation (a retry: attempt 2).
    let logs = logs();
    let finals_a: Vec<_> = batched.iter().map(|r| finished(r, 2)).collect();
    let finals_b: Vec<_> = single.iter().map(|r| finished(r, 2)).collect();
    let started = Instant::now();
    for chunk in finals_a.chunks(args.batch) {
        check_all_applied(store.update_invocations(chunk).await?)?;
        let entries: Vec<_> = chunk.iter().map(|r| (r.id, logs.clone())).collect();
        store.put_logs_batch(&entries).await?;
    }
    let full_batched = rate(args.rows, started);
    let started = Instant::now();
    for record in &finals_b {
        check_all_applied(vec![store.update_invocation(record).await?])?;
        store.put_logs(&record.id, &logs).await?;
    }
    let full_single = rate(args.rows, started);

    // Spot check: what was written reads back.
    for record in [finals_a.last(), finals_b.last()].into_iter().flatten() {
        let stored = store.get_invocation(&namespace, &record.id).await?;
        ensure!(
            stored.as_ref() == Some(record),
            "record {} did not read back",
            record.id
        );
        ensure!(
            store.get_logs(&namespace, &record.id).await? == Some(logs.clone()),
            "logs of {} did not read back",
            record.id
        );
    }

    out += &format!(
        "  records, batched (update_invocations, UNNEST)       {records_batched:>10.0} rows/s\n\
         \x20 records, one UPDATE per row                         {records_single:>10.0} rows/s   \
         ratio {:.1}x\n\
         \x20 records+logs, batched (+ put_logs_batch)            {full_batched:>10.0} rows/s\n\
         \x20 records+logs, one statement each                    {full_single:>10.0} rows/s   \
         ratio {:.1}x\n",
        records_batched / records_single,
        full_batched / full_single,
    );
    Ok(out)
}

fn rate(rows: usize, since: Instant) -> f64 {
    rows as f64 / since.elapsed().as_secs_f64().max(1e-9)
}

fn check_all_applied(applied: Vec<bool>) -> Result<()> {
    if applied.iter().any(|a| !a) {
        bail!("a benchmark update was not applied: the store's fencing refused it");
    }
    Ok(())
}

/// Accepts `rows` requests of `function`, [`SETUP_CONCURRENCY`] at a time.
async fn accept(
    store: &PostgresStore,
    function: &Function,
    rows: usize,
) -> Result<Vec<InvocationResult>> {
    let records = stream::iter(0..rows)
        .map(|i| {
            let request = InvocationRequest {
                id: InvocationId::new(),
                function: function.clone(),
                payload: serde_json::json!({
                    "order_id": format!("ord-{i:08}"),
                    "customer": { "id": i % 977, "tier": "gold", "region": "eu-west-1" },
                    "items": [
                        { "sku": "sku-1042", "qty": 2, "unit_price_cents": 1999 },
                        { "sku": "sku-2210", "qty": 1, "unit_price_cents": 45900 },
                    ],
                    "currency": "EUR",
                }),
                created_at: Utc::now(),
                trace_id: Some(format!("{:032x}", rand::random::<u128>())),
                traceparent: None,
                secrets: None,
                registry_auth: None,
                forwarded_to: None,
                alias: None,
                priority: Default::default(),
                notify_destinations: false,
            };
            async move { store.insert_invocation(&request).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(records)
}

/// The final record of `queued`, as a node would report it.
fn finished(queued: &InvocationResult, attempt: u32) -> InvocationResult {
    let now = Utc::now();
    let mut r = queued.clone();
    r.status = InvocationStatus::Succeeded;
    r.attempt = attempt;
    r.node_id = Some("node-eu-west-1a-07".to_owned());
    r.started_at = Some(now);
    r.completed_at = Some(now);
    r.result = Some(serde_json::json!({
        "ok": true,
        "total_cents": 49897,
        "tax_cents": 8663,
        "invoice": { "number": format!("INV-{}", &r.id.to_string()[..8]), "pages": 2 },
        "warnings": [],
    }));
    r.metrics = Some(InvocationMetrics {
        queue_us: 12_000,
        init_us: 0,
        exec_us: 87_000,
        cold_start: false,
        memory_peak_bytes: 48 * 1024 * 1024,
        cpu_time_us: 0,
        pull_us: 0,
        unpack_us: 0,
        ..InvocationMetrics::default()
    });
    r
}

/// About 1 KiB of output.
fn logs() -> InvocationLogs {
    let text = (0..12)
        .map(|i| {
            format!("2026-01-01T00:00:00.{i:03}Z INFO handler step {i}: processed order items\n")
        })
        .collect::<String>();
    InvocationLogs {
        text,
        truncated: false,
    }
}

fn function(namespace: &Namespace) -> Result<Function> {
    let now = Utc::now();
    let code = b"def handle(event, context):\n    return {'ok': True}\n";
    Ok(Function {
        image: None,
        id: FunctionId::new(),
        namespace: namespace.clone(),
        name: FunctionName::parse("checkout").context("function name")?,
        version: 1,
        runtime: Runtime::Python3,
        handler: "main.handle".to_owned(),
        code: CodeInfo {
            checksum: Checksum::of(code),
            size: code.len() as u64,
            source_type: "zip".to_owned(),
        },
        config: FunctionConfig::default(),
        metadata: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
        created_at: now,
        updated_at: now,
    })
}
