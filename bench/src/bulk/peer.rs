//! tokio-postgres's side of `pgbulk` (one client on a current-thread runtime, the runtime the
//! pgload comparison found fastest for it), and the notify workloads' sender.

use super::{
    check_rows, copy_sql, payload, rows, spawn_sender, text_data, BulkArgs, BulkRow, Measured,
    NotifyStats, Start, Sums, TextSums, Ts, Workload, CHANNEL, COPY_SQL, COPY_TYPES, GRACE,
    INSERT_SQL, NOTIFY_SQL, READ_SQL, SESSION_SQL, SQLX, TEXT_CHUNK, TOKIO_COPY,
};
use crate::pgload::peers::tp_config_tls;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::SinkExt;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Runs one measurement.
pub fn run(a: &BulkArgs) -> Result<Measured, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    rt.block_on(async {
        match a.workload {
            Workload::Reads if a.driver == SQLX => sqlx_reads(a).await,
            Workload::Reads => reads(a).await,
            Workload::Insert => insert(a).await,
            Workload::NotifyBurst | Workload::NotifyPaced => listen(a).await,
            _ if a.driver == SQLX => sqlx_copy(a).await,
            _ => copy(a).await,
        }
    })
}

fn tp(what: &'static str) -> impl Fn(tokio_postgres::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// A client whose connection runs as a task on the current runtime.
async fn connect(a: &BulkArgs) -> Result<Client, String> {
    let (client, conn) = tp_config_tls(&a.options, false)
        .connect(NoTls)
        .await
        .map_err(tp("connecting"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn reads(a: &BulkArgs) -> Result<Measured, String> {
    let client = connect(a).await?;
    let stmt = client.prepare(READ_SQL).await.map_err(tp("prepare"))?;
    let want = Sums::expected(a.rows);
    let read_once = || async {
        let rows = client.query(&stmt, &[]).await.map_err(tp("query"))?;
        let mut s = Sums::default();
        for r in &rows {
            // `try_get` is what `get` runs (`get` panics on its error).
            s.add(
                r.try_get::<_, i64>(0).map_err(tp("get"))?,
                r.try_get::<_, &str>(1).map_err(tp("get"))?,
                r.try_get::<_, f64>(2).map_err(tp("get"))?,
                r.try_get::<_, Ts>(3).map_err(tp("get"))?,
                r.try_get::<_, bool>(4).map_err(tp("get"))?,
            );
        }
        Ok::<_, String>(s)
    };
    read_once().await?.check(&want)?;
    let start = Start::now();
    let mut queries = 0u64;
    while (queries as usize) < a.queries && start.elapsed().as_secs_f64() < a.seconds {
        read_once().await?.check(&want)?;
        queries += 1;
    }
    let mut m = start.stop(queries * a.rows as u64);
    m.commands = queries;
    Ok(m)
}

/// sqlx's `Type`/`Decode` for [`Ts`]: the same 8 bytes as the `FromSql` the other drivers use.
impl sqlx::Type<sqlx::Postgres> for Ts {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_name("timestamptz")
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Ts {
    fn decode(v: sqlx::postgres::PgValueRef<'r>) -> Result<Ts, sqlx::error::BoxDynError> {
        Ok(Ts(postgres_protocol::types::timestamp_from_sql(
            v.as_bytes()?,
        )?))
    }
}

fn sq(what: &'static str) -> impl Fn(sqlx::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// One sqlx `PgConnection` to the server of `a`.
async fn sqlx_connect(a: &BulkArgs) -> Result<sqlx::PgConnection, String> {
    use ::ioxide_pg::Host;
    use sqlx::Connection;
    let o = &a.options;
    let mut opts = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .port(o.get_port())
        .username(o.get_user())
        .database(o.get_database())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    opts = match o.get_host() {
        Host::Tcp(h) => opts.host(h),
        Host::Unix(dir) => opts.socket(dir),
        _ => opts,
    };
    if let Some(p) = o.get_password() {
        opts = opts.password(p);
    }
    sqlx::PgConnection::connect_with(&opts)
        .await
        .map_err(sq("connecting"))
}

/// sqlx: one `PgConnection`, `query(...).fetch_all` (prepared and cached by sqlx, binary
/// results), `try_get` per column.
async fn sqlx_reads(a: &BulkArgs) -> Result<Measured, String> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx_connect(a).await?;
    let want = Sums::expected(a.rows);
    let read_once = async |conn: &mut sqlx::PgConnection| {
        let rows = sqlx::query(READ_SQL)
            .fetch_all(&mut *conn)
            .await
            .map_err(sq("fetch_all"))?;
        let mut s = Sums::default();
        for r in &rows {
            s.add(
                r.try_get::<i64, _>(0).map_err(sq("try_get"))?,
                r.try_get::<&str, _>(1).map_err(sq("try_get"))?,
                r.try_get::<f64, _>(2).map_err(sq("try_get"))?,
                r.try_get::<Ts, _>(3).map_err(sq("try_get"))?,
                r.try_get::<bool, _>(4).map_err(sq("try_get"))?,
            );
        }
        Ok::<_, String>(s)
    };
    read_once(&mut conn).await?.check(&want)?;
    let start = Start::now();
    let mut queries = 0u64;
    while (queries as usize) < a.queries && start.elapsed().as_secs_f64() < a.seconds {
        read_once(&mut conn).await?.check(&want)?;
        queries += 1;
    }
    let mut m = start.stop(queries * a.rows as u64);
    m.commands = queries;
    let _ = conn.close().await;
    Ok(m)
}

/// Binary COPY of `data` with tokio-postgres's `BinaryCopyInWriter`: the rows written.
async fn copy_in_binary(client: &Client, sql: &str, data: &[BulkRow]) -> Result<u64, String> {
    let sink = client.copy_in(sql).await.map_err(tp("copy_in"))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for r in data {
        writer
            .as_mut()
            .write(&[&r.0, &r.1, &r.2, &r.3, &r.4])
            .await
            .map_err(tp("BinaryCopyInWriter::write"))?;
    }
    writer
        .finish()
        .await
        .map_err(tp("BinaryCopyInWriter::finish"))
}

async fn insert(a: &BulkArgs) -> Result<Measured, String> {
    let client = connect(a).await?;
    let data = rows(a.rows);
    if a.driver == TOKIO_COPY {
        let start = Start::now();
        let n = copy_in_binary(&client, COPY_SQL, &data).await?;
        let mut m = start.stop(n);
        m.commands = 1;
        return Ok(m);
    }
    let stmt = client.prepare(INSERT_SQL).await.map_err(tp("prepare"))?;
    let start = Start::now();
    let params: Vec<[&(dyn ToSql + Sync); 5]> = data
        .iter()
        .map(|r| [&r.0 as _, &r.1 as _, &r.2 as _, &r.3 as _, &r.4 as _])
        .collect();
    let mut next = params.iter();
    let mut inflight = FuturesUnordered::new();
    let mut n = 0u64;
    loop {
        while inflight.len() < a.depth {
            match next.next() {
                Some(p) => inflight.push(client.execute(&stmt, &p[..])),
                None => break,
            }
        }
        match inflight.next().await {
            Some(r) => n += r.map_err(tp("execute"))?,
            None => break,
        }
    }
    let mut m = start.stop(n);
    m.commands = n;
    Ok(m)
}

async fn listen(a: &BulkArgs) -> Result<Measured, String> {
    let (client, mut conn) = tp_config_tls(&a.options, false)
        .connect(NoTls)
        .await
        .map_err(tp("connecting the listener"))?;
    // The connection is polled here, not spawned: its messages, notifications among them,
    // come out of `poll_message`.
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    {
        let sql = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&sql);
        let mut listen = std::pin::pin!(listen);
        loop {
            tokio::select! {
                r = &mut listen => {
                    r.map_err(tp("LISTEN"))?;
                    break;
                }
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("the listener's connection: {e}")),
                    None => return Err("the listener's connection closed".into()),
                },
            }
        }
    }
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let sender = spawn_sender(a, go_rx)?;
    let mut stats = NotifyStats::new(a.n);
    let bound = Duration::from_secs_f64(a.seconds) + GRACE;
    let start = Start::now();
    go_tx
        .send(())
        .map_err(|_| "the sender is gone".to_string())?;
    // One timer bounds the whole receive loop, as on ioxide-pg's side.
    let mut failure = None;
    let receive = async {
        while !stats.complete() {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Err(e) = stats.record(n.payload()) {
                        failure = Some(e);
                        break;
                    }
                }
                Some(Ok(_notice)) => {}
                Some(Err(e)) => {
                    failure = Some(format!("the listener's connection: {e}"));
                    break;
                }
                None => {
                    failure = Some("the listener's connection closed".into());
                    break;
                }
            }
        }
    };
    let _timed_out = tokio::time::timeout(bound, receive).await;
    let mut m = start.stop(stats.received);
    let sent = sender
        .join()
        .map_err(|_| "the sender panicked".to_string())??;
    if let Some(e) = failure {
        return Err(e);
    }
    (stats.sent, stats.sender_cpu) = sent;
    if let Some(c) = stats.sender_cpu {
        m.cpu = m.cpu.saturating_sub(c);
    }
    m.notify = Some(stats);
    drop(client);
    Ok(m)
}

/// The COPY workloads on tokio-postgres: `copy_in` + its `BinaryCopyInWriter` or a `Sink`
/// of `Bytes` (slices of one buffer: no copy), `copy_out` + its `BinaryCopyOutStream` or
/// the raw stream.
async fn copy(a: &BulkArgs) -> Result<Measured, String> {
    let client = connect(a).await?;
    client
        .batch_execute(SESSION_SQL)
        .await
        .map_err(tp("session settings"))?;
    let sql = copy_sql(a.workload).ok_or("not a COPY workload")?;
    let m = match a.workload {
        Workload::CopyInBinary => {
            let data = rows(a.rows);
            let start = Start::now();
            let n = copy_in_binary(&client, &sql, &data).await?;
            start.stop(n)
        }
        Workload::CopyInText => {
            let data = Bytes::from(text_data(a.rows));
            let start = Start::now();
            let sink = client
                .copy_in::<_, Bytes>(&sql)
                .await
                .map_err(tp("copy_in"))?;
            let mut sink = std::pin::pin!(sink);
            let mut at = 0;
            while at < data.len() {
                let end = (at + TEXT_CHUNK).min(data.len());
                sink.send(data.slice(at..end))
                    .await
                    .map_err(tp("CopyInSink::send"))?;
                at = end;
            }
            let n = sink
                .as_mut()
                .finish()
                .await
                .map_err(tp("CopyInSink::finish"))?;
            start.stop(n)
        }
        Workload::CopyOutBinary => {
            let want = Sums::expected(a.rows);
            let mut s = Sums::default();
            let start = Start::now();
            let stream = client.copy_out(&sql).await.map_err(tp("copy_out"))?;
            let rows = BinaryCopyOutStream::new(stream, &COPY_TYPES);
            let mut rows = std::pin::pin!(rows);
            while let Some(r) = rows.next().await {
                let r = r.map_err(tp("BinaryCopyOutStream"))?;
                s.add(
                    r.try_get::<i64>(0).map_err(tp("get"))?,
                    r.try_get::<&str>(1).map_err(tp("get"))?,
                    r.try_get::<f64>(2).map_err(tp("get"))?,
                    r.try_get::<Ts>(3).map_err(tp("get"))?,
                    r.try_get::<bool>(4).map_err(tp("get"))?,
                );
            }
            let m = start.stop(s.rows);
            s.check(&want)?;
            m
        }
        _ => {
            let want = TextSums::of(&text_data(a.rows));
            let mut t = TextSums::default();
            let start = Start::now();
            let stream = client.copy_out(&sql).await.map_err(tp("copy_out"))?;
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                t.add(&chunk.map_err(tp("CopyOutStream"))?);
            }
            let m = start.stop(t.newlines);
            t.check(&want)?;
            // The stream's `rows()` appeared after 0.7.13: the newlines are the rows.
            check_rows(Some(t.newlines), a.rows)?;
            m
        }
    };
    Ok(Measured { commands: 1, ..m })
}

/// The text COPY workloads on sqlx: `copy_in_raw` + `PgCopyIn::send` (it copies each
/// piece into its buffer), `copy_out_raw` (a stream of `Bytes`).
async fn sqlx_copy(a: &BulkArgs) -> Result<Measured, String> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx_connect(a).await?;
    conn.execute(sqlx::raw_sql(SESSION_SQL))
        .await
        .map_err(sq("session settings"))?;
    let sql = copy_sql(a.workload).ok_or("not a COPY workload")?;
    let m = if a.workload == Workload::CopyInText {
        let data = text_data(a.rows);
        let start = Start::now();
        let mut copy = conn.copy_in_raw(&sql).await.map_err(sq("copy_in_raw"))?;
        for piece in data.chunks(TEXT_CHUNK) {
            copy.send(piece).await.map_err(sq("PgCopyIn::send"))?;
        }
        let n = copy.finish().await.map_err(sq("PgCopyIn::finish"))?;
        start.stop(n)
    } else {
        let want = TextSums::of(&text_data(a.rows));
        let mut t = TextSums::default();
        let start = Start::now();
        let mut stream = conn.copy_out_raw(&sql).await.map_err(sq("copy_out_raw"))?;
        while let Some(chunk) = stream.next().await {
            t.add(&chunk.map_err(sq("copy_out_raw"))?);
        }
        drop(stream);
        let m = start.stop(t.newlines);
        t.check(&want)?;
        check_rows(Some(t.newlines), a.rows)?;
        m
    };
    let _ = conn.close().await;
    Ok(Measured { commands: 1, ..m })
}

/// The sender (on its own thread and runtime): waits for `go`, then sends `n` notifications,
/// `depth` in flight (burst) or one at a time at `rate` per second (paced), until `seconds`
/// have passed. Returns how many were sent and this thread's CPU while sending.
pub async fn send(a: &BulkArgs, go: std::sync::mpsc::Receiver<()>) -> Result<super::Sent, String> {
    let client = connect(a).await?;
    let stmt = client.prepare(NOTIFY_SQL).await.map_err(tp("prepare"))?;
    go.recv().map_err(|_| "the listener is gone".to_string())?;
    let cpu0 = super::thread_cpu();
    let t0 = Instant::now();
    let bound = Duration::from_secs_f64(a.seconds);
    let mut sent = 0u64;
    if a.workload == Workload::NotifyPaced {
        let gap = Duration::from_secs_f64(1.0 / a.rate);
        for seq in 0..a.n as u64 {
            let at = t0 + gap.mul_f64(seq as f64);
            if at.duration_since(t0) > bound {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let p = payload(seq);
            client
                .execute(&stmt, &[&p])
                .await
                .map_err(tp("pg_notify"))?;
            sent += 1;
        }
    } else {
        let mut inflight = FuturesUnordered::new();
        let mut seq = 0u64;
        loop {
            while inflight.len() < a.depth && (seq as usize) < a.n && t0.elapsed() < bound {
                let (stmt, client) = (&stmt, &client);
                inflight.push(async move {
                    let p = payload(seq);
                    client.execute(stmt, &[&p]).await
                });
                seq += 1;
            }
            match inflight.next().await {
                Some(r) => {
                    r.map_err(tp("pg_notify"))?;
                    sent += 1;
                }
                None => break,
            }
        }
    }
    let cpu = super::thread_cpu()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    Ok((sent, cpu))
}
