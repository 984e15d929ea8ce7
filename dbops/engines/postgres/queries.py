"""SQL text for the PostgreSQL adapter. Every statement here runs on a primary and on a standby
(pg_current_wal_lsn() is only reached when the server is not in recovery) and on PostgreSQL 13-16.

One poll is OVERVIEW (one round trip: every scalar plus replicas, walreceiver, slots,
connections, sessions, VACUUM progress and what holds the xmin horizon back as JSON arrays;
its one parameter says whether to read the tables nearest wraparound this time) and, when pg_stat_statements is installed,
STATEMENT_TOTALS (plus STATEMENT_TEXTS only for top statements whose text is not cached yet).
"""

# dbops' own connections identify themselves with this application_name and are left out of the
# activity list and the per-state counts (they still count against max_connections).
APPLICATION_NAME = "dbops"


def _age(ts: str) -> str:
    """Seconds from a timestamp to now(), never negative, NULL when the timestamp is NULL.

    (greatest() ignores NULLs, so greatest(0, NULL) would turn "no value" into 0.)
    """
    return f"CASE WHEN {ts} IS NOT NULL THEN greatest(0, extract(epoch FROM now() - {ts}))::float8 END"


# OVERVIEW column, and key of PgMemberData.extra on a standby: True when the standby's startup
# process is idle waiting for WAL, i.e. it has replayed every complete WAL record it received.
# What it received but has not replayed is then the unfinished tail of a record: the primary
# writes out WAL only up to the last full page until a commit, a full page or the bgwriter's
# running-xacts record (every 15 s) forces more out, so during a transaction that pauses after
# writing, a standby can hold a partial record for up to ~15 s (seen in the sandbox: 13 s). The
# primary's pg_stat_replication.replay_lag counts that as growing lag; assess.replica_lag does not.
REPLAY_WAITING_FOR_WAL = "replay_waiting_for_wal"
# Not a query column: when (wall clock) the adapter last saw this standby replay all it had
# received; absent when unknown (behind since before dbops started). Set by
# adapter.bound_standby_lag, read by assess.replica_lag to bound the primary's replay_lag.
CAUGHT_UP_AT = "caught_up_at"
# OVERVIEW column: the server is fenced read-only (PgMemberData.read_only_fence).
READ_ONLY_FENCE = "read_only_fence"
# The startup process's wait events while it waits for WAL from the walreceiver
# (RecoveryWalStream) or for WAL from any source before retrying (RecoveryRetrieveRetryInterval).
_WAITING_FOR_WAL = "('RecoveryWalStream', 'RecoveryRetrieveRetryInterval')"


# Bounds of the poll's lists: the horizon's holders, connection groups, the tables nearest wraparound.
HORIZON_ROWS = 10
CONNECTION_GROUPS = 200
WRAPAROUND_TABLES = 5

# One pg_stat_activity row (alias a) as JSON. pg_blocking_pids() is costly (it takes the lock
# manager's partition locks), so it runs only for sessions that wait on a heavyweight lock.
_SESSION_JSON = f"""
json_build_object(
    'pid', a.pid,
    'usename', a.usename,
    'application_name', coalesce(a.application_name, ''),
    'client_addr', host(a.client_addr),
    'database', a.datname,
    'state', a.state,
    'wait_event_type', a.wait_event_type,
    'wait_event', a.wait_event,
    'query', coalesce(a.query, ''),
    'query_age', {_age('a.query_start')},
    'xact_age', {_age('a.xact_start')},
    'state_age', {_age('a.state_change')},
    'blocked_by', CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END,
    'backend_type', a.backend_type
)"""

OVERVIEW = f"""
-- pg_stat_activity is read once: every reference to the view builds its whole table again
-- (a row per backend, query texts included), and a fleet's pollers are hundreds of backends.
WITH activity AS MATERIALIZED (SELECT * FROM pg_stat_activity)
SELECT
    current_setting('server_version') AS server_version,
    r.rec AS in_recovery,
    -- The timeline WAL is written (primary) or received (standby) on now. A primary's comes from
    -- the name of its current WAL file: pg_control_checkpoint()'s lags a promotion until the
    -- next checkpoint. A standby's is its walreceiver's, else its last restartpoint's.
    CASE WHEN r.rec
         THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))
         ELSE ('x' || substr(pg_walfile_name(h.head), 1, 8))::bit(32)::bigint
    END AS timeline,
    -- Fenced read-only for every session: default_transaction_read_only = on set server-wide
    -- (ALTER SYSTEM / postgresql.conf / command line), as switchover.fence_primary does. A value
    -- set for dbops' own role or database says nothing about other clients: not a fence.
    -- pg_settings builds all of its ~360 rows: read only when this session's value is on.
    CASE WHEN current_setting('default_transaction_read_only') = 'on'
         THEN (SELECT source IN ('configuration file', 'command line', 'environment variable')
                 FROM pg_settings WHERE name = 'default_transaction_read_only')
         ELSE false
    END AS {READ_ONLY_FENCE},
    (CASE WHEN r.rec THEN pg_last_wal_replay_lsn() ELSE h.head END)::text AS current_lsn,
    current_setting('max_connections')::int AS max_connections,
    (SELECT count(*) FROM activity WHERE backend_type = 'client backend')::int AS connections_total,
    (SELECT coalesce(json_agg(json_build_array(s.state, s.n) ORDER BY s.state), '[]')
       FROM (SELECT coalesce(state, 'unknown') AS state, count(*)::int AS n
               FROM activity
              WHERE backend_type = 'client backend'
                AND application_name IS DISTINCT FROM '{APPLICATION_NAME}'
              GROUP BY 1) s) AS connections_by_state,
    (SELECT coalesce(json_agg(json_build_object(
                'pid', sr.pid,
                'application_name', sr.application_name,
                'client_addr', host(sr.client_addr),
                'state', sr.state,
                'sync_state', sr.sync_state,
                'sent_lsn', sr.sent_lsn::text,
                'replay_lsn', sr.replay_lsn::text,
                'write_lag_bytes', pg_wal_lsn_diff(h.head, sr.write_lsn)::bigint,
                'flush_lag_bytes', pg_wal_lsn_diff(h.head, sr.flush_lsn)::bigint,
                'replay_lag_bytes', pg_wal_lsn_diff(h.head, sr.replay_lsn)::bigint,
                'write_lag_seconds', extract(epoch FROM sr.write_lag)::float8,
                'flush_lag_seconds', extract(epoch FROM sr.flush_lag)::float8,
                'replay_lag_seconds', extract(epoch FROM sr.replay_lag)::float8,
                'slot_name', sl.slot_name
            ) ORDER BY sr.application_name, sr.pid), '[]')
       FROM pg_stat_replication sr
       LEFT JOIN pg_replication_slots sl ON sl.active_pid = sr.pid) AS replicas,
    CASE WHEN r.rec THEN (
        SELECT json_build_object(
            'status', w.status,
            'sender_host', w.sender_host,
            'sender_port', w.sender_port,
            'slot_name', w.slot_name,
            'last_msg_age', {_age('w.last_msg_receipt_time')})
          FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver w ON true
         LIMIT 1)
    END AS wal_receiver,
    CASE WHEN r.rec THEN pg_last_wal_receive_lsn()::text END AS received_lsn,
    CASE WHEN r.rec THEN pg_last_wal_replay_lsn()::text END AS replayed_lsn,
    CASE WHEN r.rec AND pg_last_wal_receive_lsn() IS NOT NULL
         THEN greatest(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::bigint
    END AS standby_replay_lag_bytes,
    -- The standby's own seconds estimate: only a fallback for when no primary's
    -- pg_stat_replication row is at hand (assess.replica_lag). It is wrong during one long
    -- transaction (no commit to replay, so it grows with the transaction). 0 when the standby
    -- has nothing it could replay: all received WAL replayed, or the startup process waiting
    -- for more (what is left is the unfinished tail of a record).
    CASE WHEN r.rec THEN
        CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() OR sw.waiting THEN 0::float8
             ELSE {_age('pg_last_xact_replay_timestamp()')}
        END
    END AS standby_replay_lag_seconds,
    sw.waiting AS {REPLAY_WAITING_FOR_WAL},
    CASE WHEN r.rec THEN pg_is_wal_replay_paused() ELSE false END AS replay_paused,
    (SELECT coalesce(json_agg(json_build_object(
                'slot_name', s.slot_name,
                'slot_type', s.slot_type,
                'active', s.active,
                'wal_status', s.wal_status,
                'retained_bytes', pg_wal_lsn_diff(h.head, s.restart_lsn)::bigint,
                'database', s.database
            ) ORDER BY s.slot_name), '[]')
       FROM pg_replication_slots s) AS slots,
    (SELECT coalesce(json_agg({_SESSION_JSON}
            ORDER BY coalesce(a.xact_start, a.query_start), a.pid), '[]')
       FROM (SELECT * FROM activity
              WHERE backend_type IN ('client backend', 'autovacuum worker')
                AND state IS DISTINCT FROM 'idle'
                AND application_name IS DISTINCT FROM '{APPLICATION_NAME}'
                AND pid <> pg_backend_pid()
              ORDER BY coalesce(xact_start, query_start) NULLS LAST
              LIMIT 500) a) AS sessions,
    (SELECT coalesce(json_agg(json_build_object(
                'pid', v.pid,
                'database', v.datname,
                -- relid names a table only in the database this connection is in; elsewhere the
                -- worker's query text says which (autovacuum: VACUUM public.t).
                'relation', CASE WHEN v.datname = current_database() THEN v.relid::regclass::text END,
                'phase', v.phase,
                'heap_blks_total', v.heap_blks_total,
                'heap_blks_scanned', v.heap_blks_scanned,
                'heap_blks_vacuumed', v.heap_blks_vacuumed,
                'index_vacuum_count', v.index_vacuum_count,
                'autovacuum', a.backend_type = 'autovacuum worker',
                'query', coalesce(a.query, ''),
                'elapsed', {_age('coalesce(a.xact_start, a.query_start)')}
            ) ORDER BY v.pid), '[]')
       FROM pg_stat_progress_vacuum v LEFT JOIN pg_stat_activity a ON a.pid = v.pid) AS vacuums,
    -- What holds the xmin horizon back (VACUUM cannot remove rows deleted after it), oldest
    -- first: sessions with a transaction id or a snapshot (walsenders report their standby's
    -- feedback, listed as replicas; a VACUUM's own snapshot does not hold the horizon back),
    -- prepared transactions, replication slots' xmin and catalog_xmin, standbys' hot_standby_feedback.
    (SELECT coalesce(json_agg(h ORDER BY h.xmin_age DESC NULLS LAST, h.age_seconds DESC NULLS LAST), '[]')
       FROM (SELECT * FROM (
                SELECT 'session' AS kind, a.pid::text AS name, a.usename AS owner, a.datname AS database,
                       coalesce(a.application_name, '') AS application, a.state AS state,
                       greatest(age(a.backend_xmin), age(a.backend_xid))::bigint AS xmin_age,
                       {_age('a.xact_start')} AS age_seconds
                  FROM activity a
                 WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
                   AND a.backend_type <> 'walsender'
                   AND a.pid <> pg_backend_pid()
                   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v WHERE v.pid = a.pid)
                UNION ALL
                SELECT 'prepared', p.gid, p.owner, p.database, '', 'prepared',
                       age(p.transaction)::bigint, {_age('p.prepared')}
                  FROM pg_prepared_xacts p
                UNION ALL
                SELECT 'slot', s.slot_name, NULL, s.database, '', CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
                       greatest(age(s.xmin), age(s.catalog_xmin))::bigint, NULL
                  FROM pg_replication_slots s
                 WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL
                UNION ALL
                SELECT 'replica', coalesce(sr.application_name, ''), NULL, NULL, '', sr.state,
                       age(sr.backend_xmin)::bigint, NULL
                  FROM pg_stat_replication sr
                 WHERE sr.backend_xmin IS NOT NULL
             ) u
             ORDER BY xmin_age DESC NULLS LAST
             LIMIT {HORIZON_ROWS}) h) AS horizon,
    -- Client connections by database, user, application and state (dbops' own included: they
    -- count against every limit), and the limits they count against.
    (SELECT coalesce(json_agg(json_build_array(g.datname, g.usename, g.app, g.state, g.n) ORDER BY g.n DESC), '[]')
       FROM (SELECT datname, usename, coalesce(application_name, '') AS app, coalesce(state, 'unknown') AS state,
                    count(*)::int AS n
               FROM activity
              WHERE backend_type = 'client backend'
              GROUP BY 1, 2, 3, 4
              ORDER BY 5 DESC
              LIMIT {CONNECTION_GROUPS}) g) AS connection_groups,
    current_setting('superuser_reserved_connections')::int
      + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved_connections,
    (SELECT coalesce(json_agg(json_build_array(d.datname, d.datconnlimit,
                (SELECT count(*) FROM activity a WHERE a.datid = d.oid AND a.backend_type = 'client backend'))), '[]')
       FROM pg_database d WHERE d.datconnlimit >= 0) AS database_limits,
    (SELECT coalesce(json_agg(json_build_array(r.rolname, r.rolconnlimit,
                (SELECT count(*) FROM activity a WHERE a.usesysid = r.oid AND a.backend_type = 'client backend'))), '[]')
       FROM pg_roles r WHERE r.rolconnlimit >= 0 AND r.rolcanlogin) AS role_limits,
    m.datname AS max_mxid_age_database,
    m.mxid_age AS max_mxid_age,
    -- The tables of this connection's database nearest wraparound: pg_class is read whole, so
    -- only when asked ($1; the adapter asks every WRAPAROUND_TABLES_EVERY seconds).
    CASE WHEN $1::bool THEN (
        SELECT coalesce(json_agg(json_build_object('relation', t.rel, 'xid_age', t.xid_age, 'mxid_age', t.mxid_age)
                        ORDER BY t.xid_age DESC), '[]')
          FROM (SELECT c.oid::regclass::text AS rel, age(c.relfrozenxid)::bigint AS xid_age,
                       mxid_age(c.relminmxid)::bigint AS mxid_age
                  FROM pg_class c
                 WHERE c.relkind IN ('r', 'm', 't')
                 ORDER BY age(c.relfrozenxid) DESC
                 LIMIT {WRAPAROUND_TABLES}) t)
    END AS wraparound_tables,
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS has_pg_stat_statements,
    (SELECT sum(blks_hit) FROM pg_stat_database)::float8 AS blks_hit,
    (SELECT sum(blks_read) FROM pg_stat_database)::float8 AS blks_read,
    x.datname AS max_xid_age_database,
    x.xid_age AS max_xid_age,
    ar.archived_count,
    ar.failed_count,
    ar.last_archived_wal,
    {_age('ar.last_archived_time')} AS last_archived_age,
    ar.last_failed_wal,
    {_age('ar.last_failed_time')} AS last_failed_age,
    current_setting('archive_mode') AS archive_mode
FROM (SELECT pg_is_in_recovery() AS rec) r
CROSS JOIN LATERAL (
    -- the head of WAL this server knows: written on a primary, received on a standby
    SELECT CASE WHEN r.rec THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END AS head
) h
LEFT JOIN LATERAL (
    SELECT datname, age(datfrozenxid)::bigint AS xid_age FROM pg_database ORDER BY 2 DESC LIMIT 1
) x ON true
LEFT JOIN LATERAL (
    SELECT datname, mxid_age(datminmxid)::bigint AS mxid_age FROM pg_database ORDER BY 2 DESC LIMIT 1
) m ON true
CROSS JOIN LATERAL (
    -- A standby whose startup process waits for WAL to arrive has replayed every complete
    -- record it received (NULL on a primary; false when this role may not see the startup
    -- process's wait event: grant pg_monitor or pg_read_all_stats).
    SELECT CASE WHEN r.rec THEN EXISTS (
        SELECT 1 FROM activity
         WHERE backend_type = 'startup' AND wait_event IN {_WAITING_FOR_WAL}
    ) END AS waiting
) sw
CROSS JOIN pg_stat_archiver ar
"""

# One backend by pid, to re-read it just before acting on it (any state, any backend type).
SESSION = f"""
SELECT {_SESSION_JSON}
  FROM pg_stat_activity a
 WHERE a.pid = $1
"""

# pg_stat_statements keys rows by (userid, dbid, queryid, toplevel); the pane shows one row per
# queryid, so totals are summed over users and databases. showtext => false: texts are fetched
# separately and only for the top statements whose text is not cached yet.
STATEMENT_TOTALS = """
SELECT queryid,
       sum(calls)::bigint AS calls,
       sum(total_exec_time)::float8 AS total_ms,
       sum(rows)::bigint AS rows
  FROM pg_stat_statements(false)
 WHERE queryid IS NOT NULL
 GROUP BY queryid
"""

STATEMENT_TEXTS = """
SELECT queryid, min(query) AS query
  FROM pg_stat_statements
 WHERE queryid = any(string_to_array($1::text, ',')::bigint[])
 GROUP BY queryid
"""
# (The ids travel as one comma-separated text: a bigint[] parameter would make asyncpg spend a
# round trip introspecting the array type on every new connection.)

CANCEL_BACKEND = "SELECT pg_cancel_backend($1)"
TERMINATE_BACKEND = "SELECT pg_terminate_backend($1)"
