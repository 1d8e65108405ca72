-- Courier outbox, schema version 1. Applied by `courier relay migrate --table NAME`, which
-- replaces {table} with the validated table name (an identifier: lower-case letters, digits,
-- underscores) and runs the whole file in one transaction. Every statement is idempotent, so a
-- file applied by hand twice does no harm either.

-- One row per notification a service wants sent. The service inserts it in the same transaction
-- as its business data; `courier relay` publishes it once that transaction has committed.
CREATE TABLE IF NOT EXISTS "{table}" (
    -- The AMQP message_id: the fleet's idempotency key (`Idempotency-Key` on HTTP delivery).
    -- A relay that crashes between the broker's confirm and the mark publishes it again with
    -- the same id, so the duplicate is recognisable.
    id              text        PRIMARY KEY,
    exchange        text        NOT NULL,
    routing_key     text        NOT NULL,
    -- AMQP headers as a JSON object (strings, integers, booleans, floats, nested objects).
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    body            bytea       NOT NULL,
    priority        smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    -- Request-reply (optional): the final outcome is published back to reply_to.
    correlation_id  text,
    reply_to        text,
    -- clock_timestamp(), not now(): rows of one transaction keep their insertion order.
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set once the broker confirmed the message (only kept with `--retention`).
    published_at    timestamptz,
    -- Publishes the broker refused (missing exchange, unroutable, nacked), and the last reason.
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    -- A refused row waits until then (exponential backoff); new rows are due at once.
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);

-- The relay's claim reads pending rows in (created_at, id) order: a partial index stays as small
-- as the backlog, whatever the retention keeps.
CREATE INDEX IF NOT EXISTS "{table}_pending" ON "{table}" (created_at, id)
    WHERE published_at IS NULL;

-- The retention sweep deletes published rows by age.
CREATE INDEX IF NOT EXISTS "{table}_published" ON "{table}" (published_at)
    WHERE published_at IS NOT NULL;

-- Wakes relays at once: one NOTIFY per inserting statement, delivered only when its transaction
-- commits (a rolled-back insert wakes nobody). Relays LISTEN on the channel named after the table;
-- polling remains the fallback.
CREATE OR REPLACE FUNCTION "{table}_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "{table}_notify" ON "{table}";
CREATE TRIGGER "{table}_notify" AFTER INSERT ON "{table}"
    FOR EACH STATEMENT EXECUTE FUNCTION "{table}_notify"();
