-- Host failover: a host whose lease a failover took over is 'fenced' until an operator readmits it, each host may
-- publish the key its witness votes are signed with, and every failover workflow leaves one report row.

ALTER TABLE hosts DROP CONSTRAINT hosts_state_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_state_check CHECK (state IN ('up', 'down', 'fenced', 'maintenance'));

-- Base64 of the raw 32-byte Ed25519 public key the host's agent signs witness votes with; NULL: it signs none.
ALTER TABLE hosts ADD COLUMN witness_public_key text;

-- One row per failover workflow (id = workflow id). No foreign key to hosts: the report outlives the host.
-- suspect_token is the lease token the host held when it was suspected; the rest of the story is in report.
CREATE TABLE failovers (
  id            text PRIMARY KEY,
  host_id       text NOT NULL,
  suspect_token bigint NOT NULL,
  state         text NOT NULL CHECK (state IN (
                  'running', 'completed', 'not-confirmed', 'withheld', 'aborted', 'failed')),
  suspected_at  timestamptz NOT NULL,
  report        jsonb NOT NULL DEFAULT '{}'::jsonb,
  started_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz
);
CREATE INDEX failovers_host_idx ON failovers (host_id, started_at DESC);
