//! ioxide-pg's side of `pgbulk`: one `PgConnection` (or a `PgListener`) on one reactor
//! thread (`ioxide::Runtime` on the calling thread).

use super::{
    check_rows, copy_sql, rows, spawn_sender, text_data, BulkArgs, Measured, NotifyStats, Start,
    Sums, TextSums, Ts, Workload, CHANNEL, COPY_TYPES, GRACE, INSERT_SQL, IOXIDE_OWNED, READ_SQL,
    SESSION_SQL, TEXT_CHUNK,
};
use ::ioxide_pg::types::ToSql;
use ::ioxide_pg::{
    BinaryCopyInWriter, BinaryCopyOutStream, ListenEvent, Params, PgConnection, PgError, PgListener,
};
use std::time::Duration;

/// Runs one measurement.
pub fn run(a: &BulkArgs) -> Result<Measured, String> {
    let rt = ioxide::Runtime::new().map_err(|e| format!("starting a reactor: {e}"))?;
    rt.block_on(async {
        match a.workload {
            Workload::Reads => reads(a).await,
            Workload::Insert => insert(a).await,
            Workload::NotifyBurst | Workload::NotifyPaced => listen(a).await,
            _ => copy(a).await,
        }
    })
}

fn pg(what: &'static str) -> impl Fn(PgError) -> String {
    move |e| format!("{what}: {e}")
}

/// One result read through `query_rows` (borrowed rows) or `query_params` + `into_rows`.
async fn read_once(conn: &PgConnection, owned: bool) -> Result<Sums, String> {
    let mut s = Sums::default();
    if owned {
        let rows = conn
            .query_params(READ_SQL, &[])
            .await
            .map_err(pg("query_params"))?
            .into_rows();
        for r in &rows {
            s.add(
                r.get::<i64>(0).map_err(pg("get"))?,
                r.get::<&str>(1).map_err(pg("get"))?,
                r.get::<f64>(2).map_err(pg("get"))?,
                r.get::<Ts>(3).map_err(pg("get"))?,
                r.get::<bool>(4).map_err(pg("get"))?,
            );
        }
    } else {
        conn.query_rows(READ_SQL, &[], |r| {
            s.add(
                r.get::<i64>(0)?,
                r.get::<&str>(1)?,
                r.get::<f64>(2)?,
                r.get::<Ts>(3)?,
                r.get::<bool>(4)?,
            );
            Ok(())
        })
        .await
        .map_err(pg("query_rows"))?;
    }
    Ok(s)
}

async fn reads(a: &BulkArgs) -> Result<Measured, String> {
    let conn = PgConnection::connect(&a.options)
        .await
        .map_err(pg("connecting"))?;
    let owned = a.driver == IOXIDE_OWNED;
    let want = Sums::expected(a.rows);
    // Warm-up (prepares and caches the statement), checked.
    read_once(&conn, owned).await?.check(&want)?;
    let start = Start::now();
    let mut queries = 0u64;
    while (queries as usize) < a.queries && start.elapsed().as_secs_f64() < a.seconds {
        read_once(&conn, owned).await?.check(&want)?;
        queries += 1;
    }
    let mut m = start.stop(queries * a.rows as u64);
    m.commands = queries;
    conn.close().await;
    Ok(m)
}

async fn insert(a: &BulkArgs) -> Result<Measured, String> {
    let conn = PgConnection::connect(&a.options)
        .await
        .map_err(pg("connecting"))?;
    let stmt = conn.prepare(INSERT_SQL).await.map_err(pg("prepare"))?;
    let data = rows(a.rows);
    let chunk = a.batch_rows();
    let start = Start::now();
    let (mut n, mut batches) = (0u64, 0u64);
    for part in data.chunks(chunk) {
        let params: Vec<[&(dyn ToSql + Sync); 5]> = part
            .iter()
            .map(|r| [&r.0 as _, &r.1 as _, &r.2 as _, &r.3 as _, &r.4 as _])
            .collect();
        let batch: Vec<Params<'_>> = params.iter().map(|p| &p[..]).collect();
        n += conn
            .execute_many(&stmt, &batch)
            .await
            .map_err(pg("execute_many"))?;
        batches += 1;
    }
    let mut m = start.stop(n);
    m.commands = batches;
    conn.close().await;
    Ok(m)
}

async fn listen(a: &BulkArgs) -> Result<Measured, String> {
    let mut l = PgListener::connect(&a.options)
        .await
        .map_err(pg("connecting the listener"))?;
    l.listen(CHANNEL).await.map_err(pg("LISTEN"))?;
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let sender = spawn_sender(a, go_rx)?;
    let mut stats = NotifyStats::new(a.n);
    let bound = Duration::from_secs_f64(a.seconds) + GRACE;
    let start = Start::now();
    go_tx
        .send(())
        .map_err(|_| "the sender is gone".to_string())?;
    // One timer bounds the whole receive loop (not one per `next`: an ioxide timeout is a
    // ring op, a tokio one a timer-wheel entry — the loop would measure the timers).
    let mut failure = None;
    let receive = async {
        while !stats.complete() {
            match l.next().await {
                Ok(ListenEvent::Notification(n)) => {
                    if let Err(e) = stats.record(&n.payload) {
                        failure = Some(e);
                        break;
                    }
                }
                Ok(_gap) => stats.gaps += 1,
                Err(e) => {
                    failure = Some(format!("PgListener::next: {e}"));
                    break;
                }
            }
        }
    };
    let _timed_out = ioxide::time::timeout(bound, receive).await;
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
    l.close().await;
    Ok(m)
}

/// The COPY workloads: `BinaryCopyInWriter`, `CopyIn::send`, `BinaryCopyOutStream`,
/// `CopyOut::next_chunk`.
async fn copy(a: &BulkArgs) -> Result<Measured, String> {
    let conn = PgConnection::connect(&a.options)
        .await
        .map_err(pg("connecting"))?;
    conn.batch_execute(SESSION_SQL)
        .await
        .map_err(pg("session settings"))?;
    let sql = copy_sql(a.workload).ok_or("not a COPY workload")?;
    let m = match a.workload {
        Workload::CopyInBinary => {
            let data = rows(a.rows);
            let start = Start::now();
            let copy = conn.copy_in(&sql).await.map_err(pg("copy_in"))?;
            let mut w =
                BinaryCopyInWriter::new(copy, &COPY_TYPES).map_err(pg("BinaryCopyInWriter"))?;
            for r in &data {
                w.write(&[&r.0, &r.1, &r.2, &r.3, &r.4])
                    .await
                    .map_err(pg("BinaryCopyInWriter::write"))?;
            }
            let n = w.finish().await.map_err(pg("BinaryCopyInWriter::finish"))?;
            start.stop(n)
        }
        Workload::CopyInText => {
            let data = text_data(a.rows);
            let start = Start::now();
            let mut copy = conn.copy_in(&sql).await.map_err(pg("copy_in"))?;
            for piece in data.chunks(TEXT_CHUNK) {
                copy.send(piece).await.map_err(pg("CopyIn::send"))?;
            }
            let n = copy.finish().await.map_err(pg("CopyIn::finish"))?;
            start.stop(n)
        }
        Workload::CopyOutBinary => {
            let want = Sums::expected(a.rows);
            let mut s = Sums::default();
            let start = Start::now();
            let copy = conn.copy_out(&sql).await.map_err(pg("copy_out"))?;
            let mut rows =
                BinaryCopyOutStream::new(copy, &COPY_TYPES).map_err(pg("BinaryCopyOutStream"))?;
            while let Some(r) = rows.next_row().await {
                let r = r.map_err(pg("BinaryCopyOutStream::next_row"))?;
                s.add(
                    r.get::<i64>(0).map_err(pg("get"))?,
                    r.get::<&str>(1).map_err(pg("get"))?,
                    r.get::<f64>(2).map_err(pg("get"))?,
                    r.get::<Ts>(3).map_err(pg("get"))?,
                    r.get::<bool>(4).map_err(pg("get"))?,
                );
            }
            let m = start.stop(s.rows);
            s.check(&want)?;
            check_rows(rows.rows(), a.rows)?;
            m
        }
        _ => {
            let want = TextSums::of(&text_data(a.rows));
            let mut t = TextSums::default();
            let start = Start::now();
            let mut copy = conn.copy_out(&sql).await.map_err(pg("copy_out"))?;
            while let Some(chunk) = copy.next_chunk().await {
                t.add(&chunk.map_err(pg("CopyOut::next_chunk"))?);
            }
            let m = start.stop(t.newlines);
            t.check(&want)?;
            check_rows(copy.rows(), a.rows)?;
            m
        }
    };
    conn.close().await;
    Ok(Measured { commands: 1, ..m })
}
